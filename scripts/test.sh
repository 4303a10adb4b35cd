#!/usr/bin/env bash
# The whole test suite, exactly as README.md tells a newcomer and as CI runs it (.ci/run).
# Installs what the tests need beyond cargo (certbot, lego, openssl, ...) first.
set -euo pipefail
cd "$(dirname "$0")/.."
# One build of everything, usually from clean: incremental caches would only add disk (3.5 GB)
# and time.
export CARGO_INCREMENTAL=0

./scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== embedded client: no_std link (thumbv7em firmware, or the host staticlib without the target)"
./scripts/embedded-footprint.sh --check
echo "== build binaries used by end-to-end tests"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
