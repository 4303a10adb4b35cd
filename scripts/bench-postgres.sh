#!/usr/bin/env bash
# Load figures of the PostgreSQL store: ca-server (release build) on sled, on PostgreSQL, and
# as two instances on one PostgreSQL database, with the same load generator.
#
# PostgreSQL is a throwaway cluster (initdb in a temporary directory, Debian's server binaries,
# its default durability: fsync and synchronous_commit on) on a loopback port. The two
# instances share the database and a copy of one CA directory; the load generator alternates
# devices between their directories (a device's whole enrollment goes to one instance).
# Challenge validation is skipped (validation.lab_always_valid) and rate limits are off, as in
# bench-vs-pebble.sh, so the figures are the CA's and the store's.
#
# Usage: scripts/bench-postgres.sh [DEVICES] [CONCURRENCY...]   (default: 300  8 32)
set -euo pipefail
cd "$(dirname "$0")/.."

devices=${1:-300}
shift || true
levels=("${@:-8 32}")
# shellcheck disable=SC2206
levels=(${levels[*]})

./scripts/install-test-deps.sh >/dev/null
cargo build --release --locked -q -p ca-server -p iiot-acme-tests --bin ca-server --bin loadgen
bin=target/release
work=$(mktemp -d /tmp/iiot-bench-pg.XXXXXX)
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "${pg_up:-}" ] && runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg/data" -m fast stop >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=scripts/lab-ca.sh
. scripts/lab-ca.sh

# --- PostgreSQL -------------------------------------------------------------------------------
mkdir -p "$work/pg"
chown postgres "$work/pg"
chmod 755 "$work"
pg_port=$(free_port)
runuser -u postgres -- "$pg_bin/initdb" -D "$work/pg/data" -A trust -U postgres -E UTF8 \
    --locale=C >/dev/null
runuser -u postgres -- "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $work/pg -c max_connections=200" start >/dev/null
pg_up=1
for db in one two; do
    "$pg_bin/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "CREATE DATABASE $db"
done
# Instances side by side: no operator console or metrics listener (their fixed default ports).
side_toml=$'[admin]\nenabled = false\n[metrics]\nenabled = false\n'
pg_toml() {
    printf '%s[storage]\nbackend = "postgres"\nurl = "postgres://postgres@127.0.0.1:%s/%s"\n' \
        "$side_toml" "$pg_port" "$1"
}

run() { # name concurrency pid directory...
    local name=$1 c=$2 pid=$3
    shift 3
    local dirs=()
    for d in "$@"; do dirs+=(--directory "$d"); done
    timeout 300 "$bin/loadgen" "${dirs[@]}" --ca-file "$ca_root" --devices "$devices" \
        --concurrency "$c" --server-pid "$pid" --timeout-secs 60 \
        --suffix "$name-c$c.bench.test" --json || echo '{"stalled": true}'
}

# --- sled, one instance -------------------------------------------------------------------------
mkdir -p "$work/sled"
start_lab_ca "$bin" "$work/sled" "$side_toml"
pids+=("$ca_pid")
ca_root="$work/sled/ca/ca/root.pem"
for c in "${levels[@]}"; do
    run sled "$c" "$ca_pid" "https://127.0.0.1:$ca_port/directory" >"$work/res-sled-$c.json"
done
kill "$ca_pid"

# --- PostgreSQL, one instance -------------------------------------------------------------------
mkdir -p "$work/one"
start_lab_ca "$bin" "$work/one" "$(pg_toml one)"
pids+=("$ca_pid")
ca_root="$work/one/ca/ca/root.pem"
for c in "${levels[@]}"; do
    run pg1 "$c" "$ca_pid" "https://127.0.0.1:$ca_port/directory" >"$work/res-pg1-$c.json"
done
kill "$ca_pid"

# --- PostgreSQL, two instances of one CA --------------------------------------------------------
mkdir -p "$work/a" "$work/b/ca"
start_lab_ca "$bin" "$work/a" "$(pg_toml two)"
pids+=("$ca_pid")
a_pid=$ca_pid a_port=$ca_port
cp -a "$work/a/ca/ca" "$work/b/ca/ca"
start_lab_ca "$bin" "$work/b" "$(pg_toml two)"
pids+=("$ca_pid")
ca_root="$work/a/ca/ca/root.pem"
for c in "${levels[@]}"; do
    run pg2 "$c" "$a_pid" "https://127.0.0.1:$a_port/directory" \
        "https://127.0.0.1:$ca_port/directory" >"$work/res-pg2-$c.json"
done

PYTHONPATH=scripts python3 - "$work" "${levels[@]}" <<'PY'
import sys
import bench_results
work, levels = sys.argv[1], sys.argv[2:]
def load(name, c):
    return bench_results.load(work, name, c)
names = {"sled": "sled, 1 instance", "pg1": "PostgreSQL, 1 instance", "pg2": "PostgreSQL, 2 instances"}
print(f"{'C':>4} | {'store':<24} {'certs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>6}")
for c in levels:
    for n, label in names.items():
        r = load(n, c)
        if r is None:
            print(f"{c:>4} | {label:<24} STALLED: no answer within the run timeout")
            continue
        e = r["enrollment"]; errs = sum(r["errors"].values())
        print(f"{c:>4} | {label:<24} {r['certs_per_s']:>8.1f} {e['p50_ms']:>8.1f} {e['p99_ms']:>8.1f} {e['max_ms']:>8.1f} {errs:>6}")
PY
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}'), both CA instances and loadgen on the same machine"
