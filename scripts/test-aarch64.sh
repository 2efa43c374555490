#!/usr/bin/env bash
# The aarch64 build and its NEON kernels, on this x86-64 machine: cross-compile the library's
# unit tests and run them under qemu-user — all of them with `-cpu max` (NEON + sdot, so both
# kernel sets meet the scalar reference), then the kernel tests again with `-cpu cortex-a72`
# (NEON without sdot: the detection falls back). Called by scripts/test.sh.
#
# Needs a cross linker and qemu-user (Debian: gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu,
# libc6-dev-arm64-cross, qemu-user; installed here with apt-get when missing) and rustup's aarch64 standard library.
# Where those cannot be installed the run says so and is skipped; a failing test fails it.
# Set SMELT_TEST_AARCH64=0 to leave it out.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ "${SMELT_TEST_AARCH64:-1}" == 0 ]] && { echo "aarch64 tests: left out (SMELT_TEST_AARCH64=0)"; exit 0; }
TARGET=aarch64-unknown-linux-gnu
skip() { echo "================ aarch64 tests SKIPPED: $* ================"; exit 0; }

if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    command -v apt-get >/dev/null || skip "no cross compiler or qemu-user, and no apt-get to install them"
    SUDO=$([[ $(id -u) == 0 ]] && echo || echo sudo)
    echo "aarch64 tests: installing the cross linker and qemu-user (apt-get)"
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; } >/tmp/smelt-apt.log 2>&1 \
        || skip "apt-get could not install the aarch64 cross compilers and qemu-user (log: /tmp/smelt-apt.log)"
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    rustup target add "$TARGET" || skip "rustup could not add $TARGET"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
QEMU="qemu-aarch64 -L /usr/aarch64-linux-gnu"

echo "aarch64 tests: library unit tests under qemu (-cpu max: NEON + sdot)"
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$QEMU -cpu max" \
    cargo test --locked -p smelt --lib --target "$TARGET"
echo "aarch64 tests: kernel tests under qemu (-cpu cortex-a72: NEON without sdot)"
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$QEMU -cpu cortex-a72" \
    cargo test --locked -p smelt --lib --target "$TARGET" -- kernels::tests
