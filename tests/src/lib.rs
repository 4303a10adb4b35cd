//! Harness for the end-to-end tests: start the CA (or Pebble, to prove the harness itself), run
//! real third-party ACME clients against it, and check what they were issued with `openssl`.
//!
//! Everything here is synchronous and drives child processes, so tests are plain `#[test]`
//! functions. Every child is killed when its owner is dropped, and every error carries the tail
//! of the child's output, because a failing interop test is only as useful as its log.
//!
//! Each server instance gets its own temporary directory and its own loopback ports (including
//! the http-01 port the CA dials), so tests can run in parallel.
//!
//! The third-party programs come from Debian packages: `scripts/install-test-deps.sh`.
//!
//! - `tests/interop.rs`: certbot and lego against [`CaServer`].
//! - `tests/pebble_harness.rs`: the same drivers against [`Pebble`], proving the harness; ignored
//!   by default, run with `cargo test -p iiot-acme-tests --test pebble_harness -- --ignored`.
//! - `tests/device_client.rs`: the `device-client` binary as a simulated device
//!   ([`device_client::Device`]); `device_client_profiles.rs`, `device_client_tls_alpn.rs` and
//!   `device_client_mqtt.rs` (with [`mosquitto`]) for its profiles, key algorithms,
//!   tls-alpn-01 and an MQTT device renewing while connected.
//! - `tests/device_client_pkcs11.rs`: `device-client` with its keys in SoftHSM2 ([`softhsm`]).
//! - `tests/console_browser.rs`: the operator console's web UI in headless Chromium
//!   ([`console`]).
//!
//! Set `IIOT_KEEP_TEST_DIRS=1` to keep every temporary directory (data directories, logs,
//! client state) after the test, for post-mortems; their paths appear in error messages.

pub mod ca_server;
pub mod cargo;
pub mod cli;
pub mod clients;
pub mod console;
pub mod device_client;
pub mod https;
pub mod idevid;
pub mod mosquitto;
pub mod openssl;
pub mod pebble;
pub mod ports;
pub mod process;
pub mod softhsm;

pub use ca_server::{ca_server_bin, CaServer, CaServerOpts};
pub use clients::{run_certbot, run_lego, AcmeClient, ClientRun, Eab, IssuedCert};
pub use openssl::{openssl_text, openssl_verify, openssl_verify_crl, openssl_verify_host};
pub use pebble::{Pebble, PebbleOpts};
pub use ports::{free_port, free_tcp_udp_port};

/// Environment variable that keeps temporary directories when set to anything but `0`.
pub const KEEP_DIRS_ENV: &str = "IIOT_KEEP_TEST_DIRS";

/// The Python with the test virtualenv's packages (asyncua, selenium): `$IIOT_PYTHON`, else the
/// repository's `.venv-tests` (`scripts/install-test-deps.sh`), else `python3`.
pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("IIOT_PYTHON") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-tests/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// A new temporary directory named `<prefix>XXXXXX`, removed on drop unless
/// [`KEEP_DIRS_ENV`] is set.
pub fn temp_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    use anyhow::Context as _;
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .with_context(|| format!("cannot create a temporary directory {prefix}*"))?;
    if std::env::var_os(KEEP_DIRS_ENV).is_some_and(|v| v != "0") {
        dir.disable_cleanup(true);
    }
    Ok(dir)
}

/// The private key files a CA's data directory holds besides the CA's own keys: the server's
/// HTTPS key (a leaf, re-made at will) and the operator CA's, which only certifies the
/// console's operators (a CA of its own that devices never trust).
pub const NON_CA_KEY_FILES: [&str; 2] = ["server.key", "operator-ca.key"];

/// Fails if a file under `dir` holds a PEM private key or is named `*.key`, unless it is one of
/// [`NON_CA_KEY_FILES`]; returns how many files were read.
pub fn ensure_no_ca_key_files(dir: &std::path::Path) -> anyhow::Result<usize> {
    let mut checked = 0;
    for file in files_under(dir)? {
        let bytes = std::fs::read(&file)?;
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let pem_key = bytes.windows(11).any(|w| w == b"PRIVATE KEY");
        anyhow::ensure!(
            !(pem_key || name.ends_with(".key")) || NON_CA_KEY_FILES.contains(&name.as_ref()),
            "{} holds a private key",
            file.display()
        );
        checked += 1;
    }
    Ok(checked)
}

/// Every regular file under `dir`, in every subdirectory (for scans of a data directory).
pub fn files_under(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            out.extend(files_under(&entry.path())?);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(out)
}
