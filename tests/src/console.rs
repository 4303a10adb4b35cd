//! The operator console's web UI in a real browser: operators made with the real command line
//! (`ca-server operator add`), and journeys run by `tests/console/journeys.py` (selenium,
//! headless Chromium presenting the operator's client certificate), whose JSON answer the
//! test asserts on. `tests/tests/console_browser.rs` explains the whole.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use rand::Rng as _;
use serde_json::Value;
use tempfile::TempDir;

use crate::cli::operator;
use crate::process::{run_with_timeout, tail};
use crate::CaServer;

/// Set to `1` to skip the browser tests on a machine without Chromium. Without it a missing
/// browser fails them: CI installs one (`scripts/install-test-deps.sh`).
pub const SKIP_BROWSER_ENV: &str = "IIOT_ACME_SKIP_BROWSER";

/// What the journeys run: Debian's chromium and chromedriver, and NSS's tools for the profile.
const PROGRAMS: &[&str] = &[
    "/usr/bin/chromium",
    "/usr/bin/chromedriver",
    "/usr/bin/certutil",
    "/usr/bin/pk12util",
];

/// One journey: browser start (~1-2 s), a handful of pages, quit. Generous for a loaded CI
/// machine; the driver's own page-load timeout (30 s) fires first on a hang.
const JOURNEY_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether the browser tests can run: `Ok(true)` when Chromium, chromedriver, the NSS tools and
/// selenium (in [`crate::python`]) are all there. When something is missing, `Ok(false)` with a
/// line on stderr if [`SKIP_BROWSER_ENV`] is `1`, else an error naming what is missing.
pub fn browser_available(test: &str) -> Result<bool> {
    let mut missing: Vec<String> = PROGRAMS
        .iter()
        .filter(|p| !Path::new(p).is_file())
        .map(|p| (*p).to_owned())
        .collect();
    let python = crate::python();
    let selenium = Command::new(&python)
        .args(["-c", "import selenium"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !selenium {
        missing.push(format!("selenium for {}", python.display()));
    }
    if missing.is_empty() {
        return Ok(true);
    }
    if env::var_os(SKIP_BROWSER_ENV).is_some_and(|v| v == "1") {
        eprintln!(
            "{test}: skipped, {SKIP_BROWSER_ENV}=1 and missing: {}",
            missing.join(", ")
        );
        return Ok(false);
    }
    bail!(
        "the console's browser tests need {} (run scripts/install-test-deps.sh, or set \
         {SKIP_BROWSER_ENV}=1 to skip them)",
        missing.join(", ")
    )
}

/// An operator of the console, made by `ca-server operator add` on the server's data directory:
/// its PKCS#12 file (key and client certificate from the operator CA) and its passphrase.
pub struct Operator {
    /// The name, which is also the certificate's subject CN.
    pub name: String,
    /// viewer, approver or admin.
    pub role: String,
    /// `NAME.p12`.
    pub p12: PathBuf,
    /// A file holding the PKCS#12 passphrase.
    pub passphrase_file: PathBuf,
    _dir: TempDir,
}

impl Operator {
    /// `ca-server operator add NAME --role ROLE --out DIR --p12-passphrase-file F --data-dir D`,
    /// with a new random passphrase.
    pub fn add(server: &CaServer, name: &str, role: &str) -> Result<Self> {
        let dir = crate::temp_dir(&format!("iiot-operator-{name}-"))?;
        let passphrase: String = rand::thread_rng()
            .sample_iter(rand::distributions::Alphanumeric)
            .take(20)
            .map(char::from)
            .collect();
        let passphrase_file = dir.path().join("passphrase");
        fs::write(&passphrase_file, &passphrase)?;
        let out = dir.path().join("out");
        let printed = operator(
            server,
            &[
                "operator",
                "add",
                name,
                "--role",
                role,
                "--out",
                path_str(&out)?,
                "--p12-passphrase-file",
                path_str(&passphrase_file)?,
            ],
        );
        ensure!(
            !printed.contains(&passphrase) && !printed.contains("passphrase:"),
            "operator add printed the passphrase it was given:\n{printed}"
        );
        let p12 = out.join(format!("{name}.p12"));
        ensure!(p12.is_file(), "operator add wrote no {}", p12.display());
        Ok(Self {
            name: name.to_owned(),
            role: role.to_owned(),
            p12,
            passphrase_file,
            _dir: dir,
        })
    }

    /// What the console's `#whoami` should show for this operator.
    pub fn whoami(&self) -> String {
        format!("{} ({})", self.name, self.role)
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// `<target>/console-screenshots/<test>/<label>/`, emptied: where a journey saves its pages.
pub fn screenshot_dir(test: &str, label: &str) -> Result<PathBuf> {
    let (_, target, _) = crate::cargo::build_dirs()?;
    let dir = target.join("console-screenshots").join(test).join(label);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A journey's answer: the JSON `journeys.py` printed, and where its screenshots are.
pub struct JourneyRun {
    /// The driver's JSON object (what the pages showed).
    pub result: Value,
    /// The directory of `NN-page.png` screenshots.
    pub screenshots: PathBuf,
    /// The driver's stderr (selenium's and Chromium's complaints), for assertion messages.
    pub stderr: String,
}

impl JourneyRun {
    /// The field `key` of the result.
    pub fn get(&self, key: &str) -> &Value {
        &self.result[key]
    }

    /// The string at JSON pointer `ptr` (e.g. `/dashboard/whoami`), or "" if there is none.
    pub fn str_at(&self, ptr: &str) -> &str {
        self.result
            .pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Context for a failed assertion: the result, the screenshots, the driver's stderr.
    pub fn context(&self) -> String {
        format!(
            "journey result: {:#}\nscreenshots: {}\n--- journeys.py stderr ---\n{}",
            self.result,
            self.screenshots.display(),
            tail(&self.stderr, 30)
        )
    }
}

/// Runs `journeys.py JOURNEY` as `op` against `server`'s console, saving screenshots under
/// [`screenshot_dir`]`(test, "<journey>-<operator>")`. Errors if the driver fails (an element
/// missing, a browser error page, a timeout), quoting its answer and the server's logs.
pub fn run_journey(
    server: &CaServer,
    op: &Operator,
    test: &str,
    journey: &str,
    args: &[&str],
) -> Result<JourneyRun> {
    let screenshots = screenshot_dir(test, &format!("{journey}-{}", op.name))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("console/journeys.py");
    let mut cmd = Command::new(crate::python());
    cmd.arg(&script)
        .arg(journey)
        .args([
            "--url",
            &format!("https://127.0.0.1:{}", server.admin_port()),
        ])
        .arg("--root")
        .arg(server.root_pem_path())
        .arg("--p12")
        .arg(&op.p12)
        .arg("--p12-passphrase-file")
        .arg(&op.passphrase_file)
        .args(["--cn", &op.name])
        .arg("--screenshots")
        .arg(&screenshots)
        .args(args);
    let out = run_with_timeout(
        &format!("journey-{journey}-{}", op.name),
        &mut cmd,
        &screenshots,
        JOURNEY_TIMEOUT,
    )?;
    let result: Value = out
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| {
            format!(
                "journeys.py {journey} printed no JSON ({}):\n{}{}",
                out.status,
                out.tails(),
                server.logs()
            )
        })?;
    let run = JourneyRun {
        result,
        screenshots,
        stderr: out.stderr,
    };
    ensure!(
        out.status.success() && run.get("error").is_null(),
        "journey {journey} as {} failed ({}): {}\n{}\n{}",
        op.name,
        out.status,
        run.get("error"),
        run.context(),
        server.logs()
    );
    Ok(run)
}

/// A certificate serial as hex digits alone: upper case, no colons, no leading zeros, so that
/// the device's, the console's and openssl's spellings compare.
pub fn serial_key(serial: &str) -> String {
    let hex: String = serial
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_ascii_uppercase();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::serial_key;

    #[test]
    fn serial_spellings_compare() {
        assert_eq!(serial_key("0a:1B:ff"), "A1BFF");
        assert_eq!(serial_key("0A1BFF"), "A1BFF");
        assert_eq!(serial_key("00"), "0");
    }
}
