//! A throwaway PostgreSQL cluster for tests: `initdb` in a temporary directory, the server on
//! a loopback port and a private socket directory, run as the `postgres` user when the tests
//! run as root (PostgreSQL refuses root).
//!
//! The server runs under a small shell that holds the test process's end of a pipe: when the
//! test process exits, however it exits, the pipe closes and the shell stops the server and
//! removes its directory. [`TestCluster::stop`] does the same on demand, and
//! [`TestCluster::start_again`] brings the same cluster back on the same port, for tests of a
//! database that goes away for a while.
//!
//! The server binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/N/bin`,
//! installed by `scripts/install-test-deps.sh`), or from the directory in `PG_BIN`.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The superuser the cluster is created with; it trusts loopback connections.
pub const SUPERUSER: &str = "postgres";

/// The shell that runs the server: it stops the server once its standard input closes.
/// Arguments: postgres binary, data directory, port, socket directory, directory to remove
/// afterwards (empty: none), then extra server arguments.
const SUPERVISOR: &str = r#"
bin=$1; data=$2; port=$3; sock=$4; remove=$5; shift 5
"$bin" -D "$data" -p "$port" -c listen_addresses=127.0.0.1 -k "$sock" "$@" >>"$data/../server.log" 2>&1 &
pid=$!
read _closed
kill -INT "$pid" 2>/dev/null
wait "$pid"
[ -n "$remove" ] && rm -rf "$remove"
exit 0
"#;

/// A running (or stopped) throwaway cluster.
pub struct TestCluster {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    extra: Vec<String>,
    running: Mutex<Option<(Child, ChildStdin)>>,
    /// Whether the supervisor removes `root` when the process exits (the shared cluster).
    remove_on_exit: bool,
}

fn fail(what: impl std::fmt::Display) -> String {
    format!("test PostgreSQL cluster: {what}")
}

/// The directory with `initdb` and `postgres`.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            fail(format!(
                "/usr/lib/postgresql: {e}; install PostgreSQL with scripts/install-test-deps.sh"
            ))
        })?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        fail("no /usr/lib/postgresql/N/bin/postgres; install PostgreSQL with scripts/install-test-deps.sh")
    })
}

/// The `postgres` account's uid and gid when running as root.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, SUPERUSER])
            .output()
            .map_err(|e| fail(format!("id: {e}")))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                fail("no `postgres` user; install PostgreSQL with scripts/install-test-deps.sh")
            })
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    Ok(listener.local_addr().map_err(fail)?.port())
}

impl TestCluster {
    /// Creates and starts a cluster with PostgreSQL's defaults plus `settings` (`name=value`,
    /// e.g. `fsync=off`), stopped and removed when dropped.
    pub fn start(settings: &[&str]) -> Result<Self, String> {
        Self::create(settings, &[], false)
    }

    /// As [`TestCluster::start`], with `files` (name, contents) written into the data directory
    /// first, readable only by the server: a server certificate and key for `ssl=on`, or a
    /// `pg_hba.conf` that replaces initdb's. Settings name them relative to the data directory.
    pub fn start_with_files(settings: &[&str], files: &[(&str, &[u8])]) -> Result<Self, String> {
        Self::create(settings, files, false)
    }

    /// One cluster for the whole test process (`fsync=off`: its tests are about semantics, not
    /// durability), stopped and removed when the process exits. Each test takes a database of
    /// its own with [`TestCluster::fresh_database`].
    pub fn shared() -> Result<&'static Self, String> {
        static SHARED: OnceLock<Result<TestCluster, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::create(&["fsync=off"], &[], true))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn create(
        settings: &[&str],
        files: &[(&str, &[u8])],
        remove_on_exit: bool,
    ) -> Result<Self, String> {
        let bin = bin_dir()?;
        let run_as = run_as()?;
        let root = tempfile::Builder::new()
            .prefix("iiot-pg-")
            .tempdir()
            .map_err(fail)?
            .keep();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).map_err(fail)?;
        }
        let data = root.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().map_err(|e| fail(format!("initdb: {e}")))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&root);
            return Err(fail(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        for (name, contents) in files {
            use std::os::unix::fs::PermissionsExt as _;
            let path = data.join(name);
            std::fs::write(&path, contents).map_err(fail)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(fail)?;
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(fail)?;
            }
        }
        let cluster = Self {
            root,
            bin,
            port: free_port()?,
            run_as,
            extra: settings.iter().map(|s| format!("-c{s}")).collect(),
            running: Mutex::new(None),
            remove_on_exit,
        };
        cluster.start_again()?;
        Ok(cluster)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log, for a failing test's message.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// A URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub fn start_again(&self) -> Result<(), String> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_some() {
            return Ok(());
        }
        let remove = if self.remove_on_exit {
            self.root.as_os_str().to_owned()
        } else {
            Default::default()
        };
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(SUPERVISOR)
            .arg("iiot-pg-supervisor")
            .arg(self.bin.join("postgres"))
            .arg(self.root.join("data"))
            .arg(self.port.to_string())
            .arg(&self.root)
            .arg(remove)
            .args(&self.extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            sh.uid(uid).gid(gid);
        }
        let mut child = sh.spawn().map_err(|e| fail(format!("sh: {e}")))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| fail("no pipe to the server"))?;
        *running = Some((child, stdin));
        drop(running);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-U", SUPERUSER, "-p"])
                .arg(self.port.to_string())
                .status()
                .map_err(|e| fail(format!("pg_isready: {e}")))?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                return Err(fail(format!(
                    "the server did not start within 30 s:\n{log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (a fast shutdown: sessions are closed) and waits until it has exited.
    pub fn stop(&self) {
        let taken = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Creates an empty database with a name no other test of this process uses.
    pub fn fresh_database(&self) -> Result<String, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(name)
    }

    /// Runs `sql` with `psql` in `database` as the superuser; returns what it printed
    /// (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args(["-U", SUPERUSER, "-p"])
            .arg(self.port.to_string())
            .args(["-d", database, "-c", sql])
            .output()
            .map_err(|e| fail(format!("psql: {e}")))?;
        if !out.status.success() {
            return Err(fail(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The cluster's directory (data directory, socket, log).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Copies the directory `from` into `to`, recursively: a second CA instance's data directory
/// gets the first one's `ca` directory this way, as an operator copies it.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
