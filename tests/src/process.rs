//! Child processes: long-running servers ([`Daemon`]) and one-shot tools ([`run_with_timeout`]).
//!
//! Output goes to files, not pipes: a pipe nobody reads fills up and blocks the child, and a file
//! is still there to read when something fails.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How many lines of a log an error message quotes.
pub const TAIL_LINES: usize = 60;

/// A server child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdin closed and stdout/stderr appended to `<log_dir>/<name>.stdout.log`
    /// and `<log_dir>/<name>.stderr.log` (appended, so a restarted server keeps one history).
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Result<Self> {
        let stdout = log_dir.join(format!("{name}.stdout.log"));
        let stderr = log_dir.join(format!("{name}.stderr.log"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(append(&stdout)?)
            .stderr(append(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            stdout,
            stderr,
        })
    }

    /// Process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Errors, quoting the logs, if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running (killed)", self.name);
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.child = None;
                bail!("{} exited early with {status}\n{}", self.name, self.logs())
            }
            Err(e) => bail!("cannot poll {}: {e}\n{}", self.name, self.logs()),
        }
    }

    /// Polls until `probe` returns `Ok(Some(_))` (ready), checking first each time that this
    /// process still runs. `probe` returns `Ok(None)` for "not yet" and may say why in its
    /// `&mut String`. Errors if the process exits, `probe` fails, or `timeout` passes; each error
    /// quotes this process's output once.
    pub fn wait_ready<T>(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut(&mut String) -> Result<Option<T>>,
    ) -> Result<T> {
        let name = self.name.clone();
        let mut exited = false;
        let result = poll_until(&name, timeout, Duration::from_millis(50), |why| {
            if let Err(e) = self.check_running() {
                exited = true;
                return Err(e);
            }
            probe(why)
        });
        match result {
            Err(e) if !exited => Err(anyhow!("{e:#}\n{}", self.logs())),
            other => other,
        }
    }

    /// Sends SIGKILL and waits for the process to be gone. Does nothing if it already is.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // kill() fails only when the process has already exited; wait() reaps it either way.
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("cannot reap {}", self.name))?;
        }
        Ok(())
    }

    /// SIGTERM, as systemd stops a service, and wait up to `timeout` for the process to exit;
    /// returns its exit status. SIGKILL and an error if it is still running then.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running (killed)", self.name);
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("cannot run kill -TERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within {timeout:?} of SIGTERM (kill: {sent})\n{}",
                    self.name,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The tails of the captured stdout and stderr, labelled, for error messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "{}", labelled_tail(&self.stdout));
        let _ = write!(out, "{}", labelled_tail(&self.stderr));
        out
    }

    /// Path of the captured stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// Path of the captured stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// What a one-shot tool did.
#[derive(Debug)]
pub struct RunOutput {
    /// How it exited.
    pub status: ExitStatus,
    /// Captured stdout, whole.
    pub stdout: String,
    /// Captured stderr, whole.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl RunOutput {
    /// Tails of stdout and stderr for error messages.
    pub fn tails(&self) -> String {
        format!(
            "--- stdout (last {TAIL_LINES} lines) ---\n{}\n--- stderr (last {TAIL_LINES} lines) ---\n{}\n",
            tail(&self.stdout, TAIL_LINES),
            tail(&self.stderr, TAIL_LINES)
        )
    }
}

/// Runs `cmd` to completion with stdin closed and output captured to
/// `<log_dir>/<name>.stdout.log` / `.stderr.log`. Past `timeout` the process is killed and the
/// error quotes what it printed so far. A non-zero exit is *not* an error here: callers decide.
pub fn run_with_timeout(
    name: &str,
    cmd: &mut Command,
    log_dir: &Path,
    timeout: Duration,
) -> Result<RunOutput> {
    let stdout_path = log_dir.join(format!("{name}.stdout.log"));
    let stderr_path = log_dir.join(format!("{name}.stderr.log"));
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(create(&stdout_path)?)
        .stderr(create(&stderr_path)?)
        .spawn()
        .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("cannot poll {name}"))?
        {
            break status;
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{name} did not finish within {timeout:?} and was killed: {cmd:?}\n{}{}",
                labelled_tail(&stdout_path),
                labelled_tail(&stderr_path)
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    Ok(RunOutput {
        status,
        stdout: read_lossy(&stdout_path),
        stderr: read_lossy(&stderr_path),
        elapsed: start.elapsed(),
    })
}

/// Runs `cmd` like [`run_with_timeout`] and errors, quoting its output, unless it exits 0.
pub fn run_ok(
    name: &str,
    cmd: &mut Command,
    log_dir: &Path,
    timeout: Duration,
) -> Result<RunOutput> {
    let out = run_with_timeout(name, cmd, log_dir, timeout)?;
    if !out.status.success() {
        bail!(
            "{name} failed with {}: {cmd:?}\n{}",
            out.status,
            out.tails()
        );
    }
    Ok(out)
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> &str {
    let trimmed = text.trim_end();
    match trimmed.rmatch_indices('\n').nth(lines.saturating_sub(1)) {
        Some((i, _)) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// `--- <file> (last N lines) ---` followed by the tail of the file, or a note if unreadable.
pub fn labelled_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => format!(
            "--- {} (last {TAIL_LINES} lines) ---\n{}\n",
            path.display(),
            tail(&String::from_utf8_lossy(&bytes), TAIL_LINES)
        ),
        Err(e) => format!("--- {}: cannot read: {e} ---\n", path.display()),
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn create(path: &Path) -> Result<File> {
    File::create(path).with_context(|| format!("cannot create {}", path.display()))
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Polls `probe` every `interval` until it returns `Ok(Some(_))`, it fails, or `deadline`
/// passes; `Ok(None)` means "not yet". On timeout the error names `what` and the last
/// "not yet" reason given by `probe` through `last_reason`.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut(&mut String) -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last_reason = String::from("(no attempt finished)");
    loop {
        if let Some(v) = probe(&mut last_reason)? {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            bail!("{what}: not ready after {timeout:?}; last attempt: {last_reason}");
        }
        thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb\nc", 5), "a\nb\nc");
        assert_eq!(tail("", 3), "");
        assert_eq!(tail("only", 1), "only");
    }

    #[test]
    fn timeout_kills_and_reports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = run_with_timeout(
            "sleeper",
            Command::new("sh").args(["-c", "echo started; sleep 30"]),
            dir.path(),
            Duration::from_millis(300),
        )
        .expect_err("must time out");
        let msg = format!("{err:#}");
        assert!(msg.contains("did not finish"), "{msg}");
        assert!(msg.contains("started"), "{msg}");
    }

    #[test]
    fn daemon_exit_is_reported_with_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Daemon::spawn(
            "quitter",
            Command::new("sh").args(["-c", "echo bye >&2; exit 3"]),
            dir.path(),
        )
        .expect("spawn");
        let msg = poll_until(
            "quitter exit",
            Duration::from_secs(10),
            Duration::from_millis(20),
            |_| Ok(d.check_running().err()),
        )
        .expect("exits");
        let msg = format!("{msg:#}");
        assert!(msg.contains("exited early"), "{msg}");
        assert!(msg.contains("bye"), "{msg}");
    }
}
