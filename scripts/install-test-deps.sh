#!/usr/bin/env bash
# Installs the third-party programs the end-to-end tests drive (tests/, iiot-acme-tests):
#   certbot, lego   real ACME clients run against the CA
#   pebble          Let's Encrypt's test CA (and pebble-challtestsrv), for the harness self-check
#   openssl         test certificates for Pebble and `openssl verify` of issued chains
#   mosquitto       MQTT broker with mutual TLS, for the certificate-profile interop test and
#                   device-client's renewal with reconnect (tests/tests/device_client_mqtt.rs)
#   mosquitto-clients  mosquitto_pub, the device side of those tests; mosquitto_sub, the
#                   subscriber that sees the renewed device's messages arrive
#   python3-venv    for .venv-tests: asyncua (PyPI, pinned) for the OPC UA interop test, and
#                   selenium (PyPI, pinned), which drives the browser of the console tests
#   chromium chromium-driver  headless Chromium and chromedriver: the operator console's web UI
#                   in a real browser (tests/tests/console_browser.rs)
#   libnss3-tools   certutil and pk12util: the browser's NSS database with the CA root and the
#                   operator's PKCS#12 client certificate
#   gcc libssl-dev  the C program that enrolls through the embedded client's C API over OpenSSL
#                   (tests/c/enroll.c); python3 also reads the firmware ELF for the footprint
#   dpkg-dev        dpkg-shlibdeps, with which cargo-deb works out the packages' library
#                   dependencies (tests/tests/packages.rs)
#   systemd adduser systemd-analyze, which verifies the packages' units (systemd need not run),
#                   and adduser, which the packages' postinst scripts call
#   cargo-deb       (crates.io, a build tool, not a Debian package) `cargo deb`, which builds the
#                   Debian packages of ca-server and device-client; pinned, built by
#                   `cargo install` (about a minute on 2 cores) only when missing or at another
#                   version
#   softhsm2        a software PKCS #11 token (module /usr/lib/softhsm/libsofthsm2.so and
#                   softhsm2-util): device-client's certificate and IDevID keys in a token
#                   (device-client/tests/pkcs11_softhsm.rs, tests/tests/device_client_pkcs11.rs)
#   postgresql      the PostgreSQL server binaries (/usr/lib/postgresql/N/bin): the tests make a
#                   throwaway cluster with initdb in a temporary directory, on a loopback port
#                   (ca-server's storage tests, tests/tests/postgres*.rs); the cluster the
#                   package itself may create is not used
#
# Idempotent: installs only what is missing, and runs `apt-get update` only then. Works as root
# (CI on a bare Debian 12 machine) or through sudo when not root.
set -euo pipefail

PACKAGES=(certbot lego pebble openssl ca-certificates mosquitto mosquitto-clients python3 python3-venv
    gcc libc6-dev libssl-dev chromium chromium-driver libnss3-tools dpkg-dev systemd adduser softhsm2 postgresql)
# What the tests run by name; checked at the end so a broken install fails here, not in a test.
BINARIES=(certbot lego pebble pebble-challtestsrv openssl mosquitto mosquitto_pub mosquitto_sub cc python3
    chromium chromedriver certutil pk12util dpkg-deb dpkg-shlibdeps systemd-analyze setpriv runuser
    adduser softhsm2-util)

log() { printf 'install-test-deps: %s\n' "$*"; }
die() { log "error: $*" >&2; exit 1; }

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

version_of() { dpkg-query -W -f='${Version}' "$1"; }

install_missing() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 ||
            die "not root and sudo is not available; cannot install: $*"
        sudo=(sudo)
    fi
    log "missing: $*; running apt-get update"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    log "installing: $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
    local pkg
    for pkg in "$@"; do
        is_installed "$pkg" || die "$pkg is still not installed"
        log "installed: $pkg ($(version_of "$pkg"))"
    done
}

command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 ||
    die "this script needs a Debian-like system (dpkg-query and apt-get)"

missing=()
for pkg in "${PACKAGES[@]}"; do
    if is_installed "$pkg"; then
        log "already installed: $pkg ($(version_of "$pkg"))"
    else
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    log "nothing to install"
else
    install_missing "${missing[@]}"
fi

for bin in "${BINARIES[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || die "$bin is not on PATH"
done
# The PostgreSQL server binaries are not on PATH; the tests look for them here.
for bin in initdb postgres pg_isready psql; do
    compgen -G "/usr/lib/postgresql/*/bin/$bin" >/dev/null || die "no /usr/lib/postgresql/*/bin/$bin"
done
id -u postgres >/dev/null 2>&1 || die "no postgres user (the tests run PostgreSQL as it when root)"
# cargo-deb: 3.8.0 declares rust-version 1.85, as this workspace does. `--locked`: the
# dependency versions its authors released it with.
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null || true)" = "cargo-deb ${CARGO_DEB_VERSION}" ]; then
    log "already installed: cargo-deb ${CARGO_DEB_VERSION}"
else
    log "installing cargo-deb ${CARGO_DEB_VERSION} (cargo install, about a minute)"
    cargo install cargo-deb --locked --version "${CARGO_DEB_VERSION}"
    [ "$(cargo deb --version)" = "cargo-deb ${CARGO_DEB_VERSION}" ] ||
        die "cargo-deb ${CARGO_DEB_VERSION} is still not what \`cargo deb\` runs"
fi
# asyncua is not packaged by Debian, and Debian's selenium is older: a virtualenv in the
# repository (git-ignored), which tests/tests/opcua.rs and console_browser.rs find by path.
# $IIOT_PYTHON overrides it for all of them.
ASYNCUA_VERSION=2.1.0
SELENIUM_VERSION=4.51.0
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/.venv-tests"
python="${IIOT_PYTHON:-${venv}/bin/python}"
if [ -z "${IIOT_PYTHON:-}" ] && [ ! -x "$python" ]; then
    log "creating ${venv}"
    python3 -m venv "$venv"
fi
if "$python" -c "import asyncua, sys; sys.exit(asyncua.__version__ != '${ASYNCUA_VERSION}')" 2>/dev/null; then
    log "already installed: asyncua ${ASYNCUA_VERSION} (${python})"
else
    log "installing asyncua ${ASYNCUA_VERSION} into ${python}"
    "$python" -m pip install -q "asyncua==${ASYNCUA_VERSION}"
fi
if "$python" -c "import selenium, sys; sys.exit(selenium.__version__ != '${SELENIUM_VERSION}')" 2>/dev/null; then
    log "already installed: selenium ${SELENIUM_VERSION} (${python})"
else
    log "installing selenium ${SELENIUM_VERSION} into ${python}"
    "$python" -m pip install -q "selenium==${SELENIUM_VERSION}"
fi
log "done: ${BINARIES[*]}, cargo-deb, asyncua and selenium available"
