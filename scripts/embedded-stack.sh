#!/usr/bin/env bash
# Stack high-water mark of one complete enrollment (the RAM budget counts it with the
# buffers): builds embedded-client/stackprobe for thumbv7em-none-eabihf with the firmware's
# profile and runs it on QEMU's mps2-an386 (Cortex-M4), which prints the figures.
#
#   scripts/embedded-stack.sh
#
# Needs the thumbv7em-none-eabihf target and qemu-system-arm (Debian: apt-get install
# qemu-system-arm); without them it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=thumbv7em-none-eabihf
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
log() { printf 'stack: %s\n' "$*"; }

if ! command -v qemu-system-arm >/dev/null 2>&1; then
    log "qemu-system-arm is not installed: nothing measured"
    exit 0
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    log "$TARGET is not installed: nothing measured"
    exit 0
fi
cargo build --quiet --locked --release --target "$TARGET" \
    --manifest-path embedded-client/stackprobe/Cargo.toml --target-dir "$target_dir/stackprobe"
timeout 120 qemu-system-arm -M mps2-an386 -nographic -monitor none -serial none \
    -semihosting-config enable=on,target=native \
    -kernel "$target_dir/stackprobe/$TARGET/release/iiot-acme-embedded-stackprobe" 2>&1 |
    sed 's/^/stack: /'
