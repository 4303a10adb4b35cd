# Shared by the benchmark scripts (sourced, not run): a free loopback port, waiting for an HTTPS
# URL, and a release ca-server for load runs.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_https() { # url cafile
    for _ in $(seq 1 100); do
        curl -fsS --cacert "$2" "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "server at $1 did not come up" >&2; return 1
}

# start_lab_ca BIN WORK [TOML]: starts BIN/ca-server on WORK/ca with challenge validation
# skipped (validation.lab_always_valid) and no rate limits, so load figures are the CA's own
# and not the network's, and TOML (more sections) appended to its configuration; logs to
# WORK/ca.log. Sets ca_pid and ca_port and waits for its directory.
start_lab_ca() {
    ca_port=$(free_port)
    cat >"$2/ca.toml" <<TOML
data_dir = "$2/ca"
listen = "127.0.0.1:$ca_port"
[validation]
lab_always_valid = true
# The load generator opens every account from one address, far past the default limits.
[rate_limits]
enabled = false
${3:-}
TOML
    "$1/ca-server" --config "$2/ca.toml" >"$2/ca.log" 2>&1 &
    ca_pid=$!
    for _ in $(seq 1 100); do [ -f "$2/ca/ca/root.pem" ] && break; sleep 0.1; done
    wait_https "https://127.0.0.1:$ca_port/directory" "$2/ca/ca/root.pem"
}
