#!/usr/bin/env bash
# The issue-4 acceptance recipe: a 4096-token byte-level BPE tokenizer and a ~7M-parameter
# Llama trained from scratch on Jane Austen's six novels (last 5% held out) for a fixed wall
# time on 2 threads, then exported to GGUF and a Hugging Face folder.
#
#   scripts/recipes/austen.sh [CORPUS] [OUT]
#
#   CORPUS    default <repository>/../shared/data/austen_6novels.txt
#   OUT       default <repository>/runs/austen (tokenizer/, data/, run/, austen.gguf, austen-hf/)
#   MINUTES   training wall time (default 30)
#   THREADS   default 2
#   STEPS     optimizer steps; default: measured — a 10-step timing run sets how many steps
#             fit in MINUTES, so the cosine schedule ends when the time does
#   SMELT     the smelt binary (default target/release/smelt, built if missing)
#
# The held-out loss curve is OUT/run/loss.svg (data in OUT/run/metrics.jsonl), samples after
# every evaluation in OUT/run/samples.txt. Re-running continues an unfinished run (--resume).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Paths given are relative to where the script is called from; defaults to the repository.
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
CORPUS="$(abs "${1:-$ROOT/../shared/data/austen_6novels.txt}")"
OUT="$(abs "${2:-$ROOT/runs/austen}")"
MINUTES="${MINUTES:-30}"
THREADS="${THREADS:-2}"
SMELT="$(abs "${SMELT:-$ROOT/target/release/smelt}")"
cd "$ROOT"
CONFIG="$ROOT/scripts/recipes/austen.toml"

[ -f "$CORPUS" ] || { echo "austen.sh: corpus $CORPUS not found (give its path as the first argument)" >&2; exit 1; }
if [ ! -x "$SMELT" ]; then
  cargo build --release --bin smelt
fi
mkdir -p "$OUT"
if [ ! -f "$OUT/tokenizer/tokenizer.json" ]; then
  "$SMELT" -t "$THREADS" tokenizer train -i "$CORPUS" --vocab-size 4096 -o "$OUT/tokenizer"
fi
if [ ! -f "$OUT/data/meta.json" ]; then
  "$SMELT" -t "$THREADS" data prepare -i "$CORPUS" --tokenizer "$OUT/tokenizer" -o "$OUT/data" --val-fraction 0.05
fi

RESUME=()
if [ -f "$OUT/run/checkpoints/latest" ]; then
  RESUME=(--resume)
  STEPS="$(sed -n 's/^steps = //p' "$OUT/run/config.toml")"
elif [ -z "${STEPS:-}" ]; then
  # Time 10 steps of the real model and data (in a scratch folder), then size the schedule
  # to MINUTES, leaving 4% for evaluations, samples and checkpoints.
  rm -rf "$OUT/timing"
  "$SMELT" -t "$THREADS" train -c "$CONFIG" --data "$OUT/data" -o "$OUT/timing" --steps 10 --quiet \
    --set run.eval_every=0 --set run.eval_tokens=256 --set run.sample_tokens=0 >/dev/null
  TOKS="$(tail -n 2 "$OUT/timing/metrics.jsonl" | sed -n 's/.*"tok_per_s":\([0-9.]*\).*/\1/p' | head -n 1)"
  rm -rf "$OUT/timing"
  STEPS="$(awk -v t="$TOKS" -v m="$MINUTES" 'BEGIN { s = int(t * m * 60 * 0.96 / 4096); if (s < 100) s = 100; print s }')"
  echo "measured ${TOKS} tok/s: ${STEPS} steps of 4096 tokens fit in ${MINUTES} minutes"
fi

"$SMELT" -t "$THREADS" train -c "$CONFIG" --data "$OUT/data" -o "$OUT/run" --steps "$STEPS" \
  --set "run.time_limit_minutes=$MINUTES" "${RESUME[@]}"
"$SMELT" export "$OUT/run" --format gguf -o "$OUT/austen.gguf"
"$SMELT" export "$OUT/run" --format hf -o "$OUT/austen-hf"
# The held-out text as `data prepare` cut it (from the first line break after 95% of the bytes).
SIZE="$(wc -c < "$CORPUS")"
tail -c "$((SIZE - $(awk -v s="$SIZE" 'BEGIN { printf "%d", 0.95 * s }')))" "$CORPUS" | sed 1d > "$OUT/heldout.txt"
echo "--- perplexity of the held-out text (smelt; compare llama.cpp's llama-perplexity -c 256 on the same file) ---"
"$SMELT" -t "$THREADS" perplexity "$OUT/austen.gguf" -f "$OUT/heldout.txt" -c 256 2>/dev/null | tail -n 1
echo "--- sample ---"
"$SMELT" run "$OUT/austen.gguf" --raw "Elizabeth" -n 200 --temp 0.8 --seed 1
