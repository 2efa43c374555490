#!/usr/bin/env bash
# Side-by-side inference speed: llama-bench and `smelt bench` on the same GGUF files,
# alternating, with peak RSS from /usr/bin/time -v. Not niced (give both the CPU).
#
#   scripts/bench/compare-llamacpp.sh OUT_DIR ROUNDS MODEL.gguf... 
#
# Env: LLAMA_BENCH (default ~/llamacpp/build/bin/llama-bench), SMELT (default
# target/release/smelt), ARGS (default "-p 512 -n 128 -t 2 -r 3"; llama-bench and smelt
# bench take the same -p -n -d -t -r flags).
set -euo pipefail
out=$1; rounds=$2; shift 2
LLAMA_BENCH=${LLAMA_BENCH:-$HOME/llamacpp/build/bin/llama-bench}
SMELT=${SMELT:-target/release/smelt}
ARGS=${ARGS:--p 512 -n 128 -t 2 -r 3}
mkdir -p "$out"
for m in "$@"; do
  name=$(basename "$m" .gguf)
  for r in $(seq 1 "$rounds"); do
    for tool in llama smelt; do
      log="$out/$name.$tool.$r"
      echo "== $(date -u +%H:%M:%S) $name round $r $tool (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$out/summary.txt"
      if [ $tool = llama ]; then
        /usr/bin/time -v "$LLAMA_BENCH" -m "$m" $ARGS >"$log.out" 2>"$log.err" || true
        grep -E '^\| llama' "$log.out" | tee -a "$out/summary.txt" || true
      else
        /usr/bin/time -v "$SMELT" bench "$m" $ARGS >"$log.out" 2>"$log.err" || true
        grep -E '^\| (pp|tg)|weights read' "$log.out" | tee -a "$out/summary.txt" || true
      fi
      grep -E 'Maximum resident' "$log.err" | sed 's/^\s*/    /' | tee -a "$out/summary.txt" || true
    done
  done
done
