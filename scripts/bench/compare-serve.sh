#!/usr/bin/env bash
# Serving throughput side by side: `smelt serve` and llama.cpp's `llama-server` on the same
# GGUF, each alone on the machine, driven by serve_bench.py at 1, 4 and 8 streams.
#
#   LLAMA_SERVER=/path/to/llama-server scripts/bench/compare-serve.sh MODEL.gguf [ROUNDS]
#
# Env: SMELT (default target/release/smelt), THREADS (2), MAX_TOKENS (128).
set -euo pipefail
model=$1; rounds=${2:-2}
SMELT=${SMELT:-target/release/smelt}
LLAMA_SERVER=${LLAMA_SERVER:?set LLAMA_SERVER to a llama-server binary}
THREADS=${THREADS:-2}; MAX_TOKENS=${MAX_TOKENS:-128}
here=$(cd "$(dirname "$0")" && pwd)
wait_up() { for _ in $(seq 120); do curl -sf "$1/health" >/dev/null 2>&1 && return 0; sleep 1; done; echo "server at $1 did not start" >&2; return 1; }
run() { python3 "$here/serve_bench.py" --url "$1" --streams 1 4 8 --requests 1 --max-tokens "$MAX_TOKENS"; }
for r in $(seq 1 "$rounds"); do
  "$SMELT" -t "$THREADS" serve "$model" --port 8090 --parallel 8 --ctx 2048 >/dev/null 2>&1 & pid=$!
  wait_up http://127.0.0.1:8090 && { echo "smelt serve, round $r"; run http://127.0.0.1:8090; }
  kill $pid; wait $pid 2>/dev/null || true
  LD_LIBRARY_PATH="$(dirname "$LLAMA_SERVER"):${LD_LIBRARY_PATH:-}" "$LLAMA_SERVER" -m "$model" -t "$THREADS" -np 8 -c 16384 --port 8091 >/dev/null 2>&1 & pid=$!
  wait_up http://127.0.0.1:8091 && { echo "llama-server, round $r"; run http://127.0.0.1:8091; }
  kill $pid; wait $pid 2>/dev/null || true
done
