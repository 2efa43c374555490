#!/usr/bin/env bash
# Run every test: fetch the real models and reference data (cached between runs), then the
# whole Rust test suite, then (with no arguments) the aarch64 build's unit tests under qemu
# (scripts/test-aarch64.sh). This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-test-data.sh
cargo test --workspace --locked "$@"
if [[ $# -eq 0 ]]; then
    scripts/test-aarch64.sh
fi
