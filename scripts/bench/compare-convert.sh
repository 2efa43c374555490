#!/usr/bin/env bash
# `smelt quantize HF_FOLDER` against llama.cpp, for every architecture smelt converts:
# random-weight Hugging Face folders (scripts/bench/make_hf_folders.py, with a byte-level
# tokenizer trained here) are converted to GGUF by smelt, then both smelt and llama.cpp's
# llama-perplexity score the same text with each file. Equal perplexities mean llama.cpp
# reads the file as the same model smelt does (smelt's own GGUF reading matches the folder:
# tests/parity.rs `every_architecture_converts_to_gguf`).
#
#   scripts/bench/compare-convert.sh LLAMA_CPP_BIN_DIR [WORK_DIR]
#
# LLAMA_CPP_BIN_DIR holds llama-perplexity, built outside this repository.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:?usage: compare-convert.sh LLAMA_CPP_BIN_DIR [WORK_DIR]}
W=${2:-/tmp/smelt-convert-check}
SMELT=target/release/smelt
[ -x "$SMELT" ] || cargo build --release -p smelt
mkdir -p "$W"
head -c 400000 ../shared/data/austen_6novels.txt > "$W/train.txt"
tail -c 60000 ../shared/data/austen_6novels.txt > "$W/eval.txt"
[ -f "$W/tok/tokenizer.json" ] || "$SMELT" tokenizer train -i "$W/train.txt" --vocab-size 2000 -o "$W/tok" > /dev/null
python3 scripts/bench/make_hf_folders.py "$W/tok" "$W/hf" > /dev/null
printf '%-15s %-6s %12s %12s\n' arch type smelt llama.cpp
for dir in "$W"/hf/*/; do
    arch=$(basename "$dir")
    for ty in f16 q8_0; do
        out="$W/$arch.$ty.gguf"
        "$SMELT" quantize "$dir" "$out" --type "$ty" > "$W/$arch.$ty.log"
        ours=$("$SMELT" perplexity "$out" -f "$W/eval.txt" -c 128 --chunks 8 -t 2 --json | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])')
        # -nr: llama.cpp's AMX matmul (CPUs with AMX) crashes on these small Q8_0 matrices,
        # its own llama-quantize output included; without repacking it runs its AVX-512 code.
        rc=0
        "$BIN/llama-perplexity" -m "$out" -f "$W/eval.txt" -c 128 --chunks 8 -t 2 -nr > "$W/$arch.$ty.llama.log" 2>&1 || rc=$?
        theirs=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$W/$arch.$ty.llama.log")
        printf '%-15s %-6s %12s %12s\n' "$arch" "$ty" "$ours" "${theirs:-FAILED (exit $rc, $W/$arch.$ty.llama.log)}"
    done
done
