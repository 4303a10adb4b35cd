#!/usr/bin/env bash
# Soak: one ca-server (release build, sled store, as shipped) takes ENROLLMENTS complete RFC 8555
# enrollments from the project's load generator at CONCURRENCY, each with a new account, as a
# fleet of new devices would. Every REPORT_EVERY enrollments loadgen prints the interval's
# certificates/s and p99, the server's RSS and the store's bytes on disk per enrollment; at the
# end, each figure's least-squares slope per 100,000 enrollments (flat is the goal).
#
# The server skips challenge validation (validation.lab_always_valid) and rate limits, as in
# scripts/bench-vs-pebble.sh, so the figures are the CA's own, not the network's.
#
# Usage: scripts/soak.sh [ENROLLMENTS] [CONCURRENCY] [REPORT_EVERY]   (default: 200000 32 10000)
# SOAK_DIR puts the data directory under that directory (default: the system temporary one).
# SOAK_STORAGE: settings of the server's [storage] section, one per line (e.g. "cache_mib = 64").
set -euo pipefail
cd "$(dirname "$0")/.."

enrollments=${1:-200000}
concurrency=${2:-32}
every=${3:-10000}

./scripts/install-test-deps.sh >/dev/null
cargo build --release --locked -q -p ca-server -p iiot-acme-tests --bin ca-server --bin loadgen
bin=target/release
work=$(mktemp -d "${SOAK_DIR:-${TMPDIR:-/tmp}}/iiot-soak.XXXXXX")
ca_pid=
cleanup() { [ -n "$ca_pid" ] && kill "$ca_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# shellcheck source=scripts/lab-ca.sh
. scripts/lab-ca.sh
start_lab_ca "$bin" "$work" "${SOAK_STORAGE:+[storage]
$SOAK_STORAGE}"

echo "soak: $enrollments enrollments at concurrency $concurrency on $(git rev-parse --short HEAD)," \
    "[storage] $(printf '%s' "${SOAK_STORAGE:-defaults}" | tr '\n' ';'), $(nproc) cores," \
    "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), loadgen on the same machine"
"$bin/loadgen" --directory "https://127.0.0.1:$ca_port/directory" --ca-file "$work/ca/ca/root.pem" \
    --devices "$enrollments" --concurrency "$concurrency" --server-pid "$ca_pid" \
    --server-data-dir "$work/ca" --report-every "$every" --timeout-secs 60 --suffix soak.test
# Once the load stops the server checkpoints after checkpoint_idle (10 s by default), which
# closes and reopens sled: the RSS then is the server's with sled's page cache empty.
sleep 20
echo "soak: server RSS 20 s after the load, past its idle checkpoint:" \
    "$(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$ca_pid/status")"
if grep -E "panicked|ERROR" "$work/ca.log"; then
    echo "soak: the server logged the lines above" >&2
    exit 1
fi
