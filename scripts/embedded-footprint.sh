#!/usr/bin/env bash
# Footprint report of the embedded client: builds the minimal firmware
# (embedded-client/firmware: one complete enrollment, EAB and IDevID paths reachable, no heap)
# for thumbv7em-none-eabihf at opt-level "z" with LTO, and prints
#   flash      = .vector_table + .text + .rodata + .data (its load image)
#   static RAM = .data + .bss (the transmit and receive buffers, driver::TX_BUFFER and
#                RX_BUFFER, live in .bss)
# and the largest contributors by crate. Then, unless --check, the buffer use of a real
# enrollment against ca-server, measured by the C API test (tests/tests/embedded_capi.rs).
#
#   scripts/embedded-footprint.sh            full report (builds ca-server and the tests: minutes)
#   scripts/embedded-footprint.sh --check    the no_std link and the size figures only (test.sh);
#                                            fails if flash or static RAM outgrow the budget
#
# Where the target cannot be installed (rustup reaches static.rust-lang.org, which a machine
# limited to package registries may not), it falls back to the host no_std staticlib build of
# embedded-client/capi, which proves the same link on the host but gives no MCU figures. A
# missing target never fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=thumbv7em-none-eabihf
check_only=0
[ "${1:-}" = "--check" ] && check_only=1
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
log() { printf 'footprint: %s\n' "$*"; }

have_target() { command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; }

if ! have_target && command -v rustup >/dev/null 2>&1; then
    log "installing the $TARGET standard library (rustup target add)"
    rustup target add "$TARGET" >/dev/null 2>&1 || true
fi

if have_target; then
    log "building embedded-client/firmware for $TARGET (opt-level z, LTO, panic=abort)"
    cargo build --quiet --locked --release --target "$TARGET" \
        --manifest-path embedded-client/firmware/Cargo.toml \
        --target-dir "$target_dir/firmware"
    elf="$target_dir/firmware/$TARGET/release/iiot-acme-embedded-firmware"
    python3 - "$elf" <<'PY'
import struct, sys
# ELF32 little-endian section headers (the image is ARM, so no host tool is assumed).
data = open(sys.argv[1], "rb").read()
assert data[:4] == b"\x7fELF" and data[4] == 1 and data[5] == 1, "not an ELF32 LE file"
shoff, = struct.unpack_from("<I", data, 0x20)
shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
sections = []
for i in range(shnum):
    name, _type, _flags, _addr, off, size = struct.unpack_from("<IIIIII", data, shoff + i * shentsize)
    sections.append((name, size))
stroff = struct.unpack_from("<IIIIII", data, shoff + shstrndx * shentsize)[4]
def name_of(n):
    return data[stroff + n:data.index(b"\0", stroff + n)].decode()
size = {name_of(n): s for n, s in sections}
get = lambda s: size.get(s, 0)
flash = get(".vector_table") + get(".text") + get(".rodata") + get(".data")
ram = get(".data") + get(".bss")
for s in (".vector_table", ".text", ".rodata", ".data", ".bss"):
    print(f"footprint:   {s:<14} {get(s):>7} B")
print(f"footprint: flash      {flash:>7} B ({flash / 1024:.1f} KiB; target 40 KiB)")
print(f"footprint: static RAM {ram:>7} B ({ram / 1024:.1f} KiB, of which 4096 + 3072 B are the tx/rx buffers;"
      " the enrollment state and call frames are on the stack, not counted here)")
# Issue #4's budget, so a change that outgrows it fails the suite rather than a later
# measurement: flash <= 40 KiB; static RAM <= 7,168 B, the buffers that leave the measured
# 4,776 B stack (scripts/embedded-stack.sh) within the 12 KiB RAM target.
over = [f"{what} {got} B > {limit} B" for what, got, limit in
        (("flash", flash, 40 * 1024), ("static RAM", ram, 7168)) if got > limit]
if over:
    sys.exit("footprint: over the budget: " + "; ".join(over))
PY
    if command -v nm >/dev/null 2>&1; then
        log "code by crate (nm --size-sort; functions inlined into another are counted there):"
        nm -S -C "$elf" | python3 -c '
import re, sys, collections
by = collections.Counter()
for line in sys.stdin:
    p = line.split(None, 3)
    if len(p) < 4 or p[2] not in "tTrR":
        continue
    m = re.match(r"<?&?(?:mut )?([A-Za-z_][A-Za-z0-9_]*)", p[3])
    by[m.group(1) if m else "?"] += int(p[1], 16)
for name, n in by.most_common(10):
    print(f"footprint:   {n:>7} B  {name}")
'
    fi
else
    log "$TARGET is not installed and cannot be added (no rustup, or no network to its server):"
    log "falling back to the host no_std staticlib build of embedded-client/capi (no MCU figures)"
    cargo rustc --quiet --locked -p iiot-acme-embedded-capi --profile capi \
        --crate-type staticlib --features panic-handler
    log "ok: the client builds into a no_std staticlib with its own panic handler and no allocator"
fi

if [ "$check_only" = 1 ]; then
    exit 0
fi
log "measuring buffer use of a real enrollment (C API against ca-server; builds the tests)"
cargo test --quiet --locked -p iiot-acme-tests --test embedded_capi c_program_enrolls_over_openssl \
    -- --nocapture 2>&1 | sed -n 's/^enroll: buffers used: /footprint: buffers used (pre-authorized path): /p'
