//! Drivers for real third-party ACME clients (Debian's certbot and lego).
//!
//! Each run gets its own directories under [`ClientRun::work_dir`], listens for http-01 on
//! `127.0.0.1:<http_port>` (the port the CA under test dials), trusts only the given CA bundle
//! for the ACME server's HTTPS, and is killed if it runs past its timeout.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::process::{labelled_tail, run_with_timeout};

/// Default limit for one client run: issuance against a loopback CA takes seconds, so this only
/// has to cover a slow CI machine, not a real retry schedule.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Contact address given to clients that insist on one (lego). Never mailed.
pub const CONTACT_EMAIL: &str = "interop@example.org";

/// External account binding credentials (RFC 8555 §7.3.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eab {
    /// Key identifier, as handed out by the CA.
    pub kid: String,
    /// The MAC key, base64url without padding: the form both certbot and lego take.
    pub hmac_b64url: String,
}

/// One request for a certificate, for any client.
#[derive(Clone, Debug)]
pub struct ClientRun {
    /// ACME directory URL (`https://127.0.0.1:PORT/...`).
    pub directory_url: String,
    /// PEM file with the certificate(s) to trust for the ACME server's HTTPS.
    pub ca_bundle: PathBuf,
    /// DNS names to put in the order; the first names the output files.
    pub domains: Vec<String>,
    /// Port the client listens on (127.0.0.1) for http-01: the port the CA dials.
    pub http_port: u16,
    /// Answer tls-alpn-01 on this port (127.0.0.1) instead of http-01 (lego only).
    pub tls_alpn_port: Option<u16>,
    /// Register the account with this external account binding.
    pub eab: Option<Eab>,
    /// Directory for the client's state, logs and output; created if missing.
    pub work_dir: PathBuf,
    /// The client is killed after this long.
    pub timeout: Duration,
    /// Send this CSR (PEM or DER) instead of generating a key (lego only); the domains come
    /// from the CSR, `domains` then only names the output files.
    pub csr: Option<PathBuf>,
}

impl ClientRun {
    /// A run without EAB and with [`DEFAULT_CLIENT_TIMEOUT`].
    pub fn new(
        directory_url: impl Into<String>,
        ca_bundle: impl Into<PathBuf>,
        domains: &[&str],
        http_port: u16,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            directory_url: directory_url.into(),
            ca_bundle: ca_bundle.into(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            http_port,
            tls_alpn_port: None,
            eab: None,
            work_dir: work_dir.into(),
            timeout: DEFAULT_CLIENT_TIMEOUT,
            csr: None,
        }
    }

    /// The same run with external account binding.
    #[must_use]
    pub fn with_eab(mut self, eab: Option<Eab>) -> Self {
        self.eab = eab;
        self
    }

    /// The same run answering tls-alpn-01 (RFC 8737) on `port` instead of http-01.
    #[must_use]
    pub fn with_tls_alpn(mut self, port: u16) -> Self {
        self.tls_alpn_port = Some(port);
        self
    }

    /// The same run sending an external CSR, e.g. one for a key another device holds (lego
    /// only).
    #[must_use]
    pub fn with_csr(mut self, csr: impl Into<PathBuf>) -> Self {
        self.csr = Some(csr.into());
        self
    }

    /// The same run with another timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn first_domain(&self) -> Result<&str> {
        self.domains
            .first()
            .map(String::as_str)
            .context("a client run needs at least one domain")
    }
}

/// Files a client wrote after a successful issuance.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// Leaf first, then intermediates, PEM.
    pub chain_pem: PathBuf,
    /// The certificate's private key, PEM.
    pub key_pem: PathBuf,
    /// Wall-clock time of the client run.
    pub elapsed: Duration,
}

/// The third-party clients the harness can drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeClient {
    /// EFF's certbot, standalone http-01 mode.
    Certbot,
    /// go-acme/lego, built-in http-01 server.
    Lego,
}

impl AcmeClient {
    /// Runs this client for `run`.
    pub fn run(self, run: &ClientRun) -> Result<IssuedCert> {
        match self {
            Self::Certbot => run_certbot(run),
            Self::Lego => run_lego(run),
        }
    }
}

impl fmt::Display for AcmeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Certbot => "certbot",
            Self::Lego => "lego",
        })
    }
}

/// `certbot certonly --standalone` with ECDSA keys and its own config/work/logs directories.
/// Trust comes from `REQUESTS_CA_BUNDLE`. Returns `live/<first domain>/fullchain.pem`.
pub fn run_certbot(run: &ClientRun) -> Result<IssuedCert> {
    anyhow::ensure!(
        run.tls_alpn_port.is_none(),
        "certbot has no tls-alpn-01 solver; use lego"
    );
    anyhow::ensure!(
        run.csr.is_none(),
        "the harness sends external CSRs with lego only"
    );
    let first = run.first_domain()?;
    let base = run.work_dir.join("certbot");
    let (config, work, logs) = (base.join("config"), base.join("work"), base.join("logs"));
    for dir in [&config, &work, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut cmd = Command::new("certbot");
    cmd.args([
        "certonly",
        "--standalone",
        "--non-interactive",
        "--agree-tos",
    ])
    .arg("--register-unsafely-without-email")
    .args(["--server", &run.directory_url])
    .args(["--preferred-challenges", "http-01"])
    .args(["--http-01-address", "127.0.0.1"])
    .args(["--http-01-port", &run.http_port.to_string()])
    .args(["--key-type", "ecdsa"])
    .arg("--config-dir")
    .arg(&config)
    .arg("--work-dir")
    .arg(&work)
    .arg("--logs-dir")
    .arg(&logs);
    for d in &run.domains {
        cmd.args(["-d", d]);
    }
    if let Some(eab) = &run.eab {
        // `--flag=value`: a base64url key or id may start with '-' (1 in 64), which argparse
        // would take for an option ("--eab-hmac-key: expected one argument").
        cmd.arg(format!("--eab-kid={}", eab.kid))
            .arg(format!("--eab-hmac-key={}", eab.hmac_b64url));
    }
    // requests uses this bundle instead of certifi's for every HTTPS request certbot makes.
    cmd.env("REQUESTS_CA_BUNDLE", &run.ca_bundle);
    // certbot also reads $XDG_CONFIG_HOME/letsencrypt/cli.ini; keep a user's settings out. (It
    // reads /etc/letsencrypt/cli.ini too, which Debian ships with two harmless lines.)
    cmd.env("XDG_CONFIG_HOME", &base);
    loopback_without_proxy(&mut cmd);

    let live = config.join("live").join(first);
    finish(
        "certbot",
        &mut cmd,
        run,
        &base,
        live.join("fullchain.pem"),
        live.join("privkey.pem"),
        Some(&logs.join("letsencrypt.log")),
    )
}

/// `lego ... run` with an EC P-256 key and its built-in http-01 server. Trust comes from
/// `LEGO_CA_CERTIFICATES`. Returns `<path>/certificates/<first domain>.crt` (a bundle: leaf and
/// intermediates).
pub fn run_lego(run: &ClientRun) -> Result<IssuedCert> {
    let first = run.first_domain()?;
    let base = run.work_dir.join("lego");
    fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let mut cmd = Command::new("lego");
    cmd.args(["--server", &run.directory_url])
        .args(["--email", CONTACT_EMAIL])
        .arg("--accept-tos")
        .args(["--key-type", "ec256"]);
    match run.tls_alpn_port {
        Some(port) => cmd
            .arg("--tls")
            .args(["--tls.port", &format!("127.0.0.1:{port}")]),
        None => cmd
            .arg("--http")
            .args(["--http.port", &format!("127.0.0.1:{}", run.http_port)]),
    };
    cmd.arg("--path").arg(&base);
    match &run.csr {
        Some(csr) => {
            cmd.arg("--csr").arg(csr);
        }
        None => {
            for d in &run.domains {
                cmd.args(["--domains", d]);
            }
        }
    }
    if let Some(eab) = &run.eab {
        // `--flag=value`, as for certbot: values may start with '-'.
        cmd.arg("--eab")
            .arg(format!("--kid={}", eab.kid))
            .arg(format!("--hmac={}", eab.hmac_b64url));
    }
    cmd.arg("run");
    cmd.env("LEGO_CA_CERTIFICATES", &run.ca_bundle);
    loopback_without_proxy(&mut cmd);

    // lego names files after the domain, with `*` replaced by `_`.
    let stem = first.replace('*', "_");
    let certs = base.join("certificates");
    finish(
        "lego",
        &mut cmd,
        run,
        &base,
        certs.join(format!("{stem}.crt")),
        certs.join(format!("{stem}.key")),
        // lego logs to stderr only, which finish() already quotes.
        None,
    )
}

/// Any proxy settings from the environment must not divert loopback traffic.
fn loopback_without_proxy(cmd: &mut Command) {
    for var in ["NO_PROXY", "no_proxy"] {
        cmd.env(var, "127.0.0.1,localhost,::1");
    }
}

fn finish(
    name: &str,
    cmd: &mut Command,
    run: &ClientRun,
    log_dir: &Path,
    chain_pem: PathBuf,
    key_pem: PathBuf,
    extra_log: Option<&Path>,
) -> Result<IssuedCert> {
    let extra = || extra_log.map(labelled_tail).unwrap_or_default();
    let out = run_with_timeout(name, cmd, log_dir, run.timeout)
        .with_context(|| format!("{name} for {:?}\n{}", run.domains, extra()))?;
    if !out.status.success() {
        bail!(
            "{name} failed with {} for {:?} against {}{}\n{}{}",
            out.status,
            run.domains,
            run.directory_url,
            if run.eab.is_some() { " (with EAB)" } else { "" },
            out.tails(),
            extra()
        );
    }
    ensure!(
        chain_pem.is_file() && key_pem.is_file(),
        "{name} exited 0 but did not write {} and {}\n{}{}",
        chain_pem.display(),
        key_pem.display(),
        out.tails(),
        extra()
    );
    Ok(IssuedCert {
        chain_pem,
        key_pem,
        elapsed: out.elapsed,
    })
}
