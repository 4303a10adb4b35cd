#!/usr/bin/env bash
# Side-by-side load benchmark: Debian's Pebble vs iiot-acme's ca-server (release build, sled
# store with its per-response flush, as shipped), same load generator, same request sequence.
#
# Both servers skip challenge validation for the run (Pebble: PEBBLE_VA_ALWAYS_VALID=1,
# ca-server: validation.lab_always_valid = true), so the figures compare the CAs, not the
# network. Each loadgen run has a timeout: Pebble is known to stall under concurrency, and a
# stall is reported as such instead of hanging the script.
#
# Usage: scripts/bench-vs-pebble.sh [DEVICES] [CONCURRENCY...]   (default: 300  1 8 32 128)
# BENCH_LOADGEN_ARGS adds loadgen options to every run (e.g. --sleep-first); BENCH_RUN_TIMEOUT
# (seconds, default 180) bounds each run.
set -euo pipefail
cd "$(dirname "$0")/.."

devices=${1:-300}
shift || true
levels=("${@:-1 8 32 128}")
# shellcheck disable=SC2206
levels=(${levels[*]})
run_timeout=${BENCH_RUN_TIMEOUT:-180}

./scripts/install-test-deps.sh >/dev/null
cargo build --release --locked -q -p ca-server -p iiot-acme-tests --bin ca-server --bin loadgen
bin=target/release
work=$(mktemp -d /tmp/iiot-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}" ${ca_pid:-}; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# shellcheck source=scripts/lab-ca.sh
. scripts/lab-ca.sh

# --- Pebble -----------------------------------------------------------------------------------
mkdir -p "$work/pebble"
# Pebble ships no TLS certificate: a throwaway CA and a server certificate for 127.0.0.1 (a
# self-signed CA:TRUE certificate cannot be the server's own, webpki refuses it as end entity).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$work/pebble/ca.key" -out "$work/pebble/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$work/pebble/key.pem" -out "$work/pebble/req.pem" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >"$work/pebble/ext.cnf"
openssl x509 -req -in "$work/pebble/req.pem" -CA "$work/pebble/ca.pem" -CAkey "$work/pebble/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/pebble/ext.cnf" -out "$work/pebble/cert.pem" 2>/dev/null
pp=$(free_port); pm=$(free_port)
cat >"$work/pebble/config.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$pp", "managementListenAddress": "127.0.0.1:$pm",
  "certificate": "$work/pebble/cert.pem", "privateKey": "$work/pebble/key.pem",
  "httpPort": $(free_port), "tlsPort": $(free_port), "ocspResponderURL": "",
  "externalAccountBindingRequired": false}}
JSON
PEBBLE_VA_ALWAYS_VALID=1 PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 \
    pebble -config "$work/pebble/config.json" >"$work/pebble/log" 2>&1 &
pebble_pid=$!; pids+=("$pebble_pid")
wait_https "https://127.0.0.1:$pp/dir" "$work/pebble/ca.pem"

# --- ca-server ----------------------------------------------------------------------------------
start_lab_ca "$bin" "$work"
cp_=$ca_port

run() { # name directory cafile pid concurrency
    timeout "$run_timeout" "$bin/loadgen" --directory "$2" --ca-file "$3" --devices "$devices" \
        --concurrency "$5" --server-pid "$4" --timeout-secs 60 --suffix "$1-c$5.bench.test" --json \
        ${BENCH_LOADGEN_ARGS:-} \
        || echo '{"stalled": true}'
}

for c in "${levels[@]}"; do
    run pebble "https://127.0.0.1:$pp/dir" "$work/pebble/ca.pem" "$pebble_pid" "$c" >"$work/res-pebble-$c.json"
    run iiot "https://127.0.0.1:$cp_/directory" "$work/ca/ca/root.pem" "$ca_pid" "$c" >"$work/res-iiot-$c.json"
done
PYTHONPATH=scripts python3 - "$work" "${levels[@]}" <<'PY'
import sys
import bench_results
work, levels = sys.argv[1], sys.argv[2:]
def load(name, c):
    return bench_results.load(work, name, c)
# POSTs: signed requests per enrollment; more than 7 means the client looked at an order that
# was not done yet (and backed off 5 ms, x1.5, before looking again). loadgen: its own CPU.
print(f"{'C':>4} | {'server':<8} {'certs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU ms/cert':>11} {'errors':>6} {'POSTs':>5} {'loadgen':>7} | {'iiot/pebble certs/s':>19} {'CPU ratio':>9}")
for c in levels:
    rows = {n: load(n, c) for n in ("pebble", "iiot")}
    for n, r in rows.items():
        if r is None:
            print(f"{c:>4} | {n:<8} STALLED: no answer within the run timeout")
            continue
        e = r["enrollment"]; errs = sum(r["errors"].values())
        cpu = r.get("server_cpu_ms_per_cert") or float("nan")
        ratio = ""
        if n == "iiot" and rows["pebble"] and rows["pebble"]["certs_per_s"] > 0:
            p = rows["pebble"]
            ratio = f"{r['certs_per_s'] / p['certs_per_s']:>19.2f} {cpu / (p.get('server_cpu_ms_per_cert') or float('nan')):>9.2f}"
        posts = r.get("posts_per_enrollment") or float("nan")
        lg = r.get("loadgen_cpu_ms_per_cert") or float("nan")
        print(f"{c:>4} | {n:<8} {r['certs_per_s']:>8.1f} {e['p50_ms']:>8.1f} {e['p99_ms']:>8.1f} {e['max_ms']:>8.1f} {cpu:>11.2f} {errs:>6} {posts:>5.2f} {lg:>7.2f} | {ratio}")
PY
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); loadgen on the same machine"
