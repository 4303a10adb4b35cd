//! The iiot-acme CA (`ca-server`) as a child process, on its own data directory and ports.

use std::env;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

use crate::clients::Eab;
use crate::https;
use crate::ports::free_port;
use crate::process::{labelled_tail, run_with_timeout, Daemon};

/// Environment variable naming a prebuilt `ca-server` binary to test instead of building one.
pub const CA_SERVER_BIN_ENV: &str = "IIOT_CA_SERVER_BIN";

/// Limit for the `cargo build` of `ca-server` (a cold debug build of the workspace on 2 cores).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// Limit for one-shot `ca-server` subcommands such as `eab create`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The `ca-server` binary under test.
///
/// `$IIOT_CA_SERVER_BIN` if set. Otherwise `<target>/<profile>/ca-server`, next to this test
/// executable (`<target>/<profile>/deps/<test>`), after running
/// `cargo build --workspace --bin ca-server` once per test process with the same profile and
/// target directory. That build is a no-op when the binary is fresh, and it is done even when
/// the binary exists, because `cargo test -p iiot-acme-tests` does not rebuild another
/// package's binary: without it a test would silently run a stale server. It is
/// `--workspace` rather than `-p ca-server` so dependency features unify as in
/// `cargo build --workspace`; otherwise the two builds would keep relinking different variants.
pub fn ca_server_bin() -> Result<PathBuf> {
    if let Some(path) = env::var_os(CA_SERVER_BIN_ENV) {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "{CA_SERVER_BIN_ENV}={} is not a file",
            path.display()
        );
        return Ok(path);
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_ca_server().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_ca_server() -> Result<PathBuf> {
    let (profile_dir, target_dir, profile) = crate::cargo::build_dirs()?;
    let bin = profile_dir.join("ca-server");
    let mut cmd = crate::cargo::workspace_cargo("build", &target_dir)?;
    cmd.args(["--workspace", "--bin", "ca-server"]);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let log_dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let out = match run_with_timeout(
        "cargo-build-ca-server",
        &mut cmd,
        log_dir.path(),
        BUILD_TIMEOUT,
    ) {
        Ok(out) => out,
        // No cargo here (e.g. test binaries copied to another machine): use what is there.
        Err(e) if bin.is_file() => {
            eprintln!(
                "iiot-acme-tests: cannot run cargo ({e:#}); using the existing {}",
                bin.display()
            );
            return Ok(bin);
        }
        Err(e) => return Err(e),
    };
    ensure!(
        out.status.success(),
        "building ca-server failed ({}): {cmd:?}\n{}",
        out.status,
        out.tails()
    );
    ensure!(
        bin.is_file(),
        "cargo built ca-server but {} does not exist",
        bin.display()
    );
    Ok(bin)
}

/// How to start a [`CaServer`].
#[derive(Clone, Debug)]
pub struct CaServerOpts {
    /// Data directory to use (for example, one kept from an earlier server); a new temporary one,
    /// removed on drop, when `None`.
    pub data_dir: Option<PathBuf>,
    /// Port the HTTPS listener binds on 127.0.0.1; a free one when `None`.
    pub listen_port: Option<u16>,
    /// `validation.http_port`: where the CA dials for http-01, and so where the client under
    /// test must listen. A free one when `None`.
    pub http_port: Option<u16>,
    /// `validation.tls_alpn_port`; a free one when `None`.
    pub tls_alpn_port: Option<u16>,
    /// `validation.lab_resolve_all_to`: every DNS name resolves here. 127.0.0.1 by default,
    /// because test clients listen on loopback for names that exist nowhere.
    pub lab_resolve_all_to: Option<IpAddr>,
    /// `validation.lab_always_valid`: challenges pass without validation (load benchmarks).
    pub lab_always_valid: bool,
    /// `validation.allow_loopback`: the CA may dial and certify loopback addresses. On by
    /// default, because every test client listens on loopback.
    pub allow_loopback: bool,
    /// `rate_limits.enabled`; on by default, off for load tests. When on, the harness writes no
    /// `[rate_limits]` table, so `extra_toml` may bring one with settings of its own.
    pub rate_limits: bool,
    /// `tls_names`: further names the CA serves as (and so refuses to certify).
    pub tls_names: Vec<String>,
    /// `issuance.cert_validity`, e.g. `"7d"`.
    pub cert_validity: String,
    /// Further `[issuance]` settings as (name, TOML string value), e.g.
    /// `("lab_cert_validity", "20s")`. Empty by default.
    pub issuance_extra: Vec<(String, String)>,
    /// `eab.required`.
    pub eab_required: bool,
    /// `lab_clock`: `ca-server lab clock-step` may step the server's clock.
    pub lab_clock: bool,
    /// `public_url`: what the CA puts in its URLs, e.g. a front several instances share.
    pub public_url: Option<String>,
    /// Give up waiting for the directory after this long.
    pub startup_timeout: Duration,
    /// TOML appended to the config file as written, for sections the harness does not model
    /// (e.g. `[profiles.opcua]` tables). Empty by default.
    pub extra_toml: String,
}

impl Default for CaServerOpts {
    fn default() -> Self {
        Self {
            data_dir: None,
            listen_port: None,
            http_port: None,
            tls_alpn_port: None,
            lab_resolve_all_to: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            lab_always_valid: false,
            allow_loopback: true,
            rate_limits: true,
            tls_names: Vec::new(),
            cert_validity: "7d".to_owned(),
            issuance_extra: Vec::new(),
            eab_required: false,
            lab_clock: false,
            public_url: None,
            startup_timeout: Duration::from_secs(30),
            extra_toml: String::new(),
        }
    }
}

/// The config file `ca-server serve --config` reads. The server rejects unknown keys, so this
/// must stay a subset of `ca_server::config::Config`.
#[derive(Serialize)]
struct ConfigFile<'a> {
    data_dir: &'a Path,
    listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_url: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tls_names: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    lab_clock: bool,
    issuance: IssuanceSection<'a>,
    validation: ValidationSection,
    eab: EabSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limits: Option<RateLimitsSection>,
    admin: AdminSection,
    metrics: MetricsSection,
}

/// The operator console listens on a free port of its own, so CAs started side by side do not
/// compete for the default one.
#[derive(Serialize)]
struct AdminSection {
    listen: String,
}

/// `[metrics]`: a port of its own, so servers running side by side do not all bind the
/// default 127.0.0.1:9090.
#[derive(Serialize)]
struct MetricsSection {
    listen: String,
}

#[derive(Serialize)]
struct RateLimitsSection {
    enabled: bool,
}

#[derive(Serialize)]
struct IssuanceSection<'a> {
    cert_validity: &'a str,
    #[serde(flatten)]
    extra: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct ValidationSection {
    http_port: u16,
    tls_alpn_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    lab_resolve_all_to: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    lab_always_valid: bool,
    allow_loopback: bool,
}

#[derive(Serialize)]
struct EabSection {
    required: bool,
}

/// `ca-server eab create --json` output.
#[derive(Deserialize)]
struct EabCreated {
    kid: String,
    hmac: String,
}

/// A running `ca-server serve`, killed (SIGKILL) on drop.
///
/// Its stdout/stderr go to `ca-server.stdout.log`/`ca-server.stderr.log` in the data directory,
/// appended across restarts; errors quote their tails.
#[derive(Debug)]
pub struct CaServer {
    // Dropped first: the process goes before its temporary directory.
    child: Option<Daemon>,
    bin: PathBuf,
    config_path: PathBuf,
    data_dir: PathBuf,
    listen_port: u16,
    admin_port: u16,
    http_port: u16,
    tls_alpn_port: u16,
    startup_timeout: Duration,
    _temp: Option<TempDir>,
}

impl CaServer {
    /// Writes the config, starts `ca-server serve --config <file>`, and waits until an HTTPS GET
    /// of the directory, trusting `<data_dir>/ca/root.pem`, returns 200.
    pub fn start(opts: CaServerOpts) -> Result<Self> {
        let bin = ca_server_bin()?;
        let (temp, data_dir) = match opts.data_dir {
            Some(dir) => {
                fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                (None, dir)
            }
            None => {
                let temp = crate::temp_dir("iiot-ca-server-")?;
                let dir = temp.path().to_owned();
                (Some(temp), dir)
            }
        };
        let pick = |p: Option<u16>| p.map_or_else(free_port, Ok);
        let listen_port = pick(opts.listen_port)?;
        let http_port = pick(opts.http_port)?;
        let tls_alpn_port = pick(opts.tls_alpn_port)?;
        let admin_port = free_port()?;
        let metrics_port = free_port()?;

        let config = ConfigFile {
            data_dir: &data_dir,
            listen: format!("127.0.0.1:{listen_port}"),
            public_url: opts.public_url.as_deref(),
            tls_names: &opts.tls_names,
            lab_clock: opts.lab_clock,
            issuance: IssuanceSection {
                cert_validity: &opts.cert_validity,
                extra: opts.issuance_extra.iter().cloned().collect(),
            },
            validation: ValidationSection {
                http_port,
                tls_alpn_port,
                lab_resolve_all_to: opts.lab_resolve_all_to.map(|ip| ip.to_string()),
                lab_always_valid: opts.lab_always_valid,
                allow_loopback: opts.allow_loopback,
            },
            eab: EabSection {
                required: opts.eab_required,
            },
            rate_limits: (!opts.rate_limits).then_some(RateLimitsSection { enabled: false }),
            admin: AdminSection {
                listen: format!("127.0.0.1:{admin_port}"),
            },
            metrics: MetricsSection {
                listen: format!("127.0.0.1:{metrics_port}"),
            },
        };
        let config_path = data_dir.join("ca-server.test.toml");
        let mut text = toml::to_string(&config).context("cannot serialize the server config")?;
        text.push('\n');
        text.push_str(&opts.extra_toml);
        fs::write(&config_path, text)
            .with_context(|| format!("cannot write {}", config_path.display()))?;

        let mut server = Self {
            child: None,
            bin,
            config_path,
            data_dir,
            listen_port,
            admin_port,
            http_port,
            tls_alpn_port,
            startup_timeout: opts.startup_timeout,
            _temp: temp,
        };
        server.spawn_and_wait()?;
        Ok(server)
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            // Plain text in the log files that error messages quote.
            .env("NO_COLOR", "1");
        // Client mistakes are logged at debug: an interop failure needs them. $RUST_LOG wins.
        if env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "ca_server=debug,tower_http=info");
        }
        let mut child = Daemon::spawn("ca-server", &mut cmd, &self.data_dir)?;
        let url = self.directory_url();
        let root = self.root_pem_path();
        let ready = child.wait_ready(self.startup_timeout, |why| {
            if !root.is_file() {
                *why = format!("{} does not exist yet", root.display());
                return Ok(None);
            }
            match https::get(&url, &root) {
                Ok((200, _)) => Ok(Some(())),
                Ok((status, body)) => {
                    *why = format!("GET {url}: {status} {body}");
                    Ok(None)
                }
                Err(e) => {
                    *why = format!("{e:#}");
                    Ok(None)
                }
            }
        });
        if let Err(e) = ready {
            // Kill now, so the port and the data directory are free for whatever comes next.
            let _ = child.kill();
            bail!(
                "ca-server did not become ready (config {}): {e:#}",
                self.config_path.display()
            );
        }
        self.child = Some(child);
        Ok(())
    }

    /// `https://127.0.0.1:PORT/directory`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/directory", self.listen_port)
    }

    /// `<data_dir>/ca/root.pem`: the root to trust, for both the server's HTTPS and what it
    /// issues.
    pub fn root_pem_path(&self) -> PathBuf {
        self.data_dir.join("ca").join("root.pem")
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The config file the server was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Port of the HTTPS listener.
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// Port of the operator console (HTTPS with client certificates).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Port the CA dials for http-01: the client under test must listen there.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Port the CA dials for tls-alpn-01.
    pub fn tls_alpn_port(&self) -> u16 {
        self.tls_alpn_port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Daemon::pid)
    }

    /// Tails of the server's stdout and stderr.
    pub fn logs(&self) -> String {
        match &self.child {
            Some(child) => child.logs(),
            None => format!(
                "{}{}",
                labelled_tail(&self.data_dir.join("ca-server.stdout.log")),
                labelled_tail(&self.data_dir.join("ca-server.stderr.log"))
            ),
        }
    }

    /// Errors, quoting the logs, if the server has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.as_mut() {
            Some(child) => child.check_running(),
            None => bail!("ca-server is not running (killed)"),
        }
    }

    /// SIGKILL, as a crash or power cut would, and wait until the process is gone.
    pub fn kill_9(&mut self) -> Result<()> {
        match self.child.take() {
            Some(mut child) => child.kill(),
            None => Ok(()),
        }
    }

    /// SIGTERM, as systemd stops the service, and wait (up to 30 s) until the process is gone.
    /// Errors if it does not exit in time or exits with a failure.
    pub fn stop(&mut self) -> Result<()> {
        match self.child.as_mut() {
            Some(child) => {
                let status = child.terminate(Duration::from_secs(30))?;
                self.child = None;
                ensure!(
                    status.success(),
                    "ca-server exited with {status} after SIGTERM\n{}",
                    self.logs()
                );
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Starts the server again on the same data directory, config and ports, and waits until it
    /// is ready. Kills the running one first (SIGKILL) if there is one.
    pub fn restart(&mut self) -> Result<()> {
        self.kill_9()?;
        self.spawn_and_wait()
    }

    /// `ca-server eab create --data-dir <dir> --json [--single-use]`: a new EAB key.
    pub fn eab_create(&self, single_use: bool) -> Result<Eab> {
        self.eab_create_with(if single_use { &["--single-use"] } else { &[] })
    }

    /// `ca-server eab create --data-dir <dir> --json ARGS…`, e.g. `["--allow", "dns:NAME"]`
    /// for a credential that pre-authorizes NAME.
    pub fn eab_create_with(&self, args: &[&str]) -> Result<Eab> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["eab", "create", "--data-dir"])
            .arg(&self.data_dir)
            .arg("--json")
            .args(args);
        let out = run_with_timeout(
            "ca-server-eab-create",
            &mut cmd,
            &self.data_dir,
            COMMAND_TIMEOUT,
        )?;
        ensure!(
            out.status.success(),
            "ca-server eab create failed with {}: {cmd:?}\n{}",
            out.status,
            out.tails()
        );
        let created: EabCreated = serde_json::from_str(out.stdout.trim()).with_context(|| {
            format!(
                "ca-server eab create printed no {{\"kid\": …, \"hmac\": …}} JSON\n{}",
                out.tails()
            )
        })?;
        Ok(Eab {
            kid: created.kid,
            hmac_b64url: created.hmac,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server parses its config with `deny_unknown_fields`, so the harness must write
    /// exactly the agreed keys (ca-server's `config.rs`), with paths quoted as TOML strings.
    #[test]
    fn config_has_exactly_the_agreed_keys() {
        let config = ConfigFile {
            data_dir: Path::new("/tmp/iiot \"quoted\" dir"),
            listen: "127.0.0.1:14000".to_owned(),
            public_url: Some("https://ca.plant.example:14000"),
            tls_names: &["ca.plant.example".to_owned()],
            lab_clock: true,
            issuance: IssuanceSection {
                cert_validity: "7d",
                extra: Default::default(),
            },
            validation: ValidationSection {
                http_port: 5002,
                tls_alpn_port: 5001,
                lab_resolve_all_to: Some("127.0.0.1".to_owned()),
                lab_always_valid: true,
                allow_loopback: true,
            },
            eab: EabSection { required: true },
            rate_limits: Some(RateLimitsSection { enabled: false }),
            admin: AdminSection {
                listen: "127.0.0.1:9443".to_owned(),
            },
            metrics: MetricsSection {
                listen: "127.0.0.1:9191".to_owned(),
            },
        };
        let text = toml::to_string(&config).expect("serializes");
        let value: toml::Table = text.parse().expect("valid TOML");
        let expected: toml::Table = r#"
            data_dir = '/tmp/iiot "quoted" dir'
            listen = "127.0.0.1:14000"
            public_url = "https://ca.plant.example:14000"
            tls_names = ["ca.plant.example"]
            lab_clock = true
            [issuance]
            cert_validity = "7d"
            [validation]
            http_port = 5002
            tls_alpn_port = 5001
            lab_resolve_all_to = "127.0.0.1"
            lab_always_valid = true
            allow_loopback = true
            [eab]
            required = true
            [rate_limits]
            enabled = false
            [admin]
            listen = "127.0.0.1:9443"
            [metrics]
            listen = "127.0.0.1:9191"
        "#
        .parse()
        .expect("valid TOML");
        assert_eq!(value, expected, "{text}");
    }
}
