//! The `device-client` binary as a simulated device: its own directory, identifiers and http-01
//! port, one-shot runs, `run` in the background, and waits for an operator's approval.
//!
//! Set `IIOT_DEVICE_CLIENT_BIN` to test a prebuilt client instead of building one.

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _, Result};
use tempfile::TempDir;

use crate::process::{poll_until, run_with_timeout, Daemon, RunOutput};
use crate::{ca_server_bin, openssl_verify, openssl_verify_host, temp_dir, CaServer};

/// Environment variable naming a prebuilt `device-client` binary.
pub const DEVICE_CLIENT_BIN_ENV: &str = "IIOT_DEVICE_CLIENT_BIN";
/// Limit for one `device-client enroll`/`show`.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
/// Limit for `run` to do what a test waits for.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The `device-client` binary, built like `ca_server_bin` builds the server: next to it, with
/// `cargo build --workspace --bin device-client`, once per test process.
pub fn device_client_bin() -> Result<PathBuf> {
    if let Some(path) = env::var_os(DEVICE_CLIENT_BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_device_client().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_device_client() -> Result<PathBuf> {
    // The server's binary sits in <target>/<profile>/, where ours will be.
    let server = ca_server_bin()?;
    let profile_dir = server.parent().context("ca-server has no directory")?;
    let bin = profile_dir.join("device-client");
    if env::var_os("IIOT_CA_SERVER_BIN").is_some() {
        ensure!(
            bin.is_file(),
            "IIOT_CA_SERVER_BIN is set: set {DEVICE_CLIENT_BIN_ENV} too"
        );
        return Ok(bin);
    }
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("profile directory name")?;
    let target_dir = profile_dir.parent().context("target directory")?;
    // Like the server build: without cargo's per-crate variables, so ring's build script does
    // not see a changed environment and rebuild half the tree.
    let mut cmd = crate::cargo::workspace_cargo("build", target_dir)?;
    cmd.args(["--workspace", "--bin", "device-client"]);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let logs = tempfile::tempdir()?;
    let out = run_with_timeout(
        "cargo-build-device-client",
        &mut cmd,
        logs.path(),
        Duration::from_secs(900),
    )?;
    ensure!(
        out.status.success(),
        "building device-client failed: {cmd:?}\n{}",
        out.tails()
    );
    ensure!(bin.is_file(), "{} was not built", bin.display());
    Ok(bin)
}

/// How the simulated device pins the CA.
pub enum Pin {
    RootFile(PathBuf),
    Fingerprint(String),
}

/// One simulated device: its own directory, identifiers and http-01 port.
pub struct Device {
    /// Its directory: state, key, certificates and the logs of each run.
    pub dir: TempDir,
    directory_url: String,
    pin: Pin,
    /// `--http01-listen`: 127.0.0.1 on the port the CA dials.
    pub listen: String,
    /// `--dns` identifiers.
    pub dns: Vec<String>,
    /// `--ip` identifiers.
    pub ip: Vec<String>,
    /// Extra flags for every command.
    pub extra: Vec<String>,
    /// `--key` instead of the key file [`Device::key`], e.g. a `pkcs11:` URI.
    pub key_arg: Option<String>,
    /// `--post-install` instead of the one that logs serials to [`Self::post_install_log`].
    pub post_install: Option<String>,
    runs: AtomicUsize,
}

impl Device {
    pub fn new(directory_url: String, pin: Pin, http_port: u16, dns: &[&str]) -> Self {
        Self {
            dir: temp_dir("iiot-device-").expect("device directory"),
            directory_url,
            pin,
            listen: format!("127.0.0.1:{http_port}"),
            dns: dns.iter().map(|s| (*s).to_owned()).collect(),
            ip: Vec::new(),
            extra: Vec::new(),
            key_arg: None,
            post_install: None,
            runs: AtomicUsize::new(0),
        }
    }

    pub fn for_server(server: &CaServer, pin: Pin, dns: &[&str]) -> Self {
        Self::new(server.directory_url(), pin, server.http_port(), dns)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    pub fn cert(&self) -> PathBuf {
        self.path("tls/cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.path("tls/key.pem")
    }

    pub fn fullchain(&self) -> PathBuf {
        self.path("tls/fullchain.pem")
    }

    pub fn post_install_log(&self) -> PathBuf {
        self.path("post-install.log")
    }

    /// Serials the post-install command saw, one per run.
    pub fn post_install_runs(&self) -> Vec<String> {
        fs::read_to_string(self.post_install_log())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn command(&self, sub: &str, flags: &[&str]) -> Command {
        let mut cmd = Command::new(device_client_bin().expect("device-client binary"));
        cmd.arg(sub)
            .arg("--directory")
            .arg(&self.directory_url)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--key")
            .arg(
                self.key_arg
                    .clone()
                    .map_or_else(|| self.key(), PathBuf::from),
            )
            .arg("--cert")
            .arg(self.cert())
            .arg("--chain")
            .arg(self.path("tls/chain.pem"))
            .arg("--fullchain")
            .arg(self.fullchain())
            .arg("--http01-listen")
            .arg(&self.listen)
            .arg("--post-install")
            .arg(self.post_install.clone().unwrap_or_else(|| {
                format!(
                    "printf '%s\\n' \"$DEVICE_CLIENT_SERIAL\" >> '{}'",
                    self.post_install_log().display()
                )
            }))
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        match &self.pin {
            Pin::RootFile(p) => cmd.arg("--root").arg(p),
            Pin::Fingerprint(fp) => cmd.arg("--root-fingerprint").arg(fp),
        };
        for d in &self.dns {
            cmd.arg("--dns").arg(d);
        }
        for ip in &self.ip {
            cmd.arg("--ip").arg(ip);
        }
        cmd.args(&self.extra).args(flags);
        cmd
    }

    /// Runs a one-shot subcommand to completion.
    pub fn run(&self, sub: &str, flags: &[&str]) -> RunOutput {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let mut cmd = self.command(sub, flags);
        run_with_timeout(
            &format!("device-client-{n}-{sub}"),
            &mut cmd,
            self.dir.path(),
            CLIENT_TIMEOUT,
        )
        .expect("device-client runs")
    }

    /// Starts `run` in the background.
    pub fn spawn_run(&self, name: &str, flags: &[&str]) -> Daemon {
        let mut cmd = self.command("run", flags);
        Daemon::spawn(name, &mut cmd, self.dir.path()).expect("device-client run starts")
    }

    /// Starts a one-shot subcommand that will wait (for an operator) in the background.
    pub fn spawn_oneshot(&self, name: &str, sub: &str, flags: &[&str]) -> Waiting {
        let stdout = self.path(&format!("{name}.stdout.log"));
        let stderr = self.path(&format!("{name}.stderr.log"));
        let child = self
            .command(sub, flags)
            .stdin(std::process::Stdio::null())
            .stdout(fs::File::create(&stdout).expect("stdout log"))
            .stderr(fs::File::create(&stderr).expect("stderr log"))
            .spawn()
            .expect("device-client starts");
        Waiting {
            child,
            stdout,
            stderr,
        }
    }

    /// The serial `show` reports.
    pub fn shown_serial(&self) -> String {
        let out = self.run("show", &[]);
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("serial"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| panic!("show printed no serial\n{}", out.tails()))
    }
}

/// A one-shot client running in the background; killed on drop.
pub struct Waiting {
    child: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Waiting {
    /// Its exit code once it has exited (-1 for a signal), `None` while it still runs.
    pub fn exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .expect("device-client can be polled")
            .map(|s| s.code().unwrap_or(-1))
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the exit code, then returns it with stdout and stderr.
    pub fn finish(&mut self) -> (i32, String, String) {
        let status = poll_until(
            "device-client exit",
            RUN_TIMEOUT,
            Duration::from_millis(100),
            |_| Ok(self.child.try_wait()?),
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.stderr()));
        (
            status.code().unwrap_or(-1),
            fs::read_to_string(&self.stdout).unwrap_or_default(),
            self.stderr(),
        )
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pairing code a waiting device printed, once it has.
pub fn printed_pairing_code(waiting: &Waiting) -> String {
    poll_until(
        "pairing code on the device",
        RUN_TIMEOUT,
        Duration::from_millis(100),
        |why| {
            let err = waiting.stderr();
            *why = err.clone();
            Ok(err
                .split("pairing code ")
                .nth(1)
                .map(|rest| rest.chars().take(9).collect::<String>()))
        },
    )
    .expect("the device shows its pairing code")
}

/// The pairing codes a waiting device printed for each identifier ("operator approval of ID
/// needed; pairing code CODE"), once it has printed `n`.
pub fn printed_pairing_codes(waiting: &Waiting, n: usize) -> Vec<(String, String)> {
    poll_until(
        "pairing codes on the device",
        RUN_TIMEOUT,
        Duration::from_millis(100),
        |why| {
            let err = waiting.stderr();
            *why = err.clone();
            let codes: Vec<(String, String)> = err
                .lines()
                .filter_map(|l| {
                    let rest = l.strip_prefix("device-client: operator approval of ")?;
                    let (id, code) = rest.split_once(" needed; pairing code ")?;
                    Some((id.to_owned(), code.chars().take(9).collect()))
                })
                .collect();
            Ok((codes.len() >= n).then_some(codes))
        },
    )
    .expect("the device shows its pairing codes")
}

/// Fails the test unless `out` exited with `want`, showing the client's and the server's logs.
pub fn expect_exit(out: &RunOutput, want: i32, what: &str, server: &CaServer) {
    assert_eq!(
        out.status.code(),
        Some(want),
        "{what}: expected exit {want}\n{}{}",
        out.tails(),
        server.logs()
    );
}

/// The device's full chain verifies against the CA root, and its leaf names each of its DNS
/// identifiers (`openssl verify`, with `-verify_hostname`).
pub fn verify_issued(server: &CaServer, device: &Device) {
    let root = server.root_pem_path();
    openssl_verify(&root, &device.fullchain()).expect("chain verifies against the CA root");
    for name in &device.dns {
        openssl_verify_host(&root, &device.fullchain(), name).expect("leaf names the device");
    }
}
