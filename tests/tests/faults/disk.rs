//! A full disk: the CA's data directory on a small tmpfs, filled while clients enroll.
//!
//! While the disk is full every failing request must get a 503 `serverInternal` problem
//! document with `Retry-After`, and the server must keep running (no panic). When space
//! returns, service resumes without a restart. After a `kill -9` on a full disk and a restart
//! with space again, every certificate issued before is served byte for byte.
//!
//! The test mounts a tmpfs, so it needs root (or CAP_SYS_ADMIN). Where `mount` fails it says so
//! on stderr and passes without testing anything, unless `IIOT_FAULTS_REQUIRE_TMPFS=1`, where
//! it fails. There is no fault-injecting store wrapper to fall back on: the point is sled's own
//! behaviour on `ENOSPC`, which a wrapper would not show.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use iiot_acme_tests::{CaServer, CaServerOpts};
use instant_acme::{Account, AccountCredentials, OrderStatus};

use crate::acme::{serve_http01, Tokens};
use crate::common::{enroll, Attempt};

/// Size of the tmpfs: room for the CA and a few dozen enrollments, small enough to fill fast.
const TMPFS_MIB: u32 = 64;

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u32) -> Result<Self> {
        let dir = iiot_acme_tests::temp_dir("iiot-faults-tmpfs-")?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .context("cannot run mount")?;
        ensure!(
            out.status.success(),
            "mount -t tmpfs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> Result<u64> {
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => return Err(e).context("filling the tmpfs"),
        }
    }
    // The last pages: smaller writes until not one byte more fits.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {
        written += 512;
    }
    let _ = f.flush();
    Ok(written)
}

/// What the server answered with a 5xx, as the client saw it.
#[derive(Debug, Clone)]
struct ServerError {
    status: u16,
    retry_after: Option<String>,
    content_type: Option<String>,
}

/// Passes requests to the real client and records every 5xx response's status and headers.
struct Watch {
    inner: Box<dyn instant_acme::HttpClient>,
    errors: Arc<Mutex<Vec<ServerError>>>,
}

impl instant_acme::HttpClient for Watch {
    fn request(
        &self,
        req: axum::http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> iiot_acme_tests::https::AcmeResponseFuture {
        let fut = self.inner.request(req);
        let errors = self.errors.clone();
        Box::pin(async move {
            let rsp = fut.await?;
            let status = rsp.parts.status.as_u16();
            if status >= 500 {
                let header = |name: axum::http::HeaderName| {
                    rsp.parts
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                errors.lock().expect("lock").push(ServerError {
                    status,
                    retry_after: header(axum::http::header::RETRY_AFTER),
                    content_type: header(axum::http::header::CONTENT_TYPE),
                });
            }
            Ok(rsp)
        })
    }
}

/// A certificate a client holds, to look up again later.
struct Held {
    credentials: String,
    order_url: String,
    chain_pem: String,
}

struct Clients {
    directory: String,
    root: PathBuf,
    tokens: Tokens,
    errors: Arc<Mutex<Vec<ServerError>>>,
}

impl Clients {
    fn builder(&self) -> Result<instant_acme::AccountBuilder> {
        Ok(Account::builder_with_http(Box::new(Watch {
            inner: iiot_acme_tests::https::acme_http_client(&self.root)?,
            errors: self.errors.clone(),
        })))
    }

    /// A new account and one certificate for `name`.
    async fn enroll(&self, name: &str) -> Result<Held> {
        let at = Mutex::new(Attempt {
            name: name.to_owned(),
            ..Attempt::default()
        });
        enroll(self.builder()?, &self.directory, &self.tokens, name, &at).await?;
        let at = at.into_inner().expect("lock");
        Ok(Held {
            credentials: at.credentials.context("no credentials")?,
            order_url: at.order_url.context("no order")?,
            chain_pem: at.chain_pem.context("no certificate")?,
        })
    }

    /// The certificate of `held`'s order, which must be the one the client holds.
    async fn check(&self, held: &Held) -> Result<()> {
        let creds: AccountCredentials = serde_json::from_str(&held.credentials)?;
        let account = self.builder()?.from_credentials(creds).await?;
        let mut order = account.order(held.order_url.clone()).await?;
        ensure!(
            order.state().status == OrderStatus::Valid,
            "order {} is {:?}",
            held.order_url,
            order.state().status
        );
        let chain = order.certificate().await?.context("no certificate")?;
        ensure!(
            chain == held.chain_pem,
            "order {} serves another certificate",
            held.order_url
        );
        Ok(())
    }
}

/// Enrolls with `clients` concurrent clients until `until` says stop or `limit` passes;
/// returns the certificates received and the number of failed enrollments. Failures other than
/// a 503 problem document (a connection closed without an answer, say) are counted in
/// `unanswered`.
async fn load(
    clients: &Arc<Clients>,
    tag: &str,
    workers: usize,
    unanswered: &AtomicUsize,
    limit: Duration,
    until: impl Fn(&[Held], usize) -> bool,
) -> (Vec<Held>, usize) {
    let others = Arc::new(AtomicUsize::new(0));
    let held: Arc<Mutex<Vec<Held>>> = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (clients, held, failed, others, stop, tag) = (
            clients.clone(),
            held.clone(),
            failed.clone(),
            others.clone(),
            stop.clone(),
            tag.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                match clients.enroll(&format!("{tag}-{w}-{i}.plant.test")).await {
                    Ok(h) => held.lock().expect("lock").push(h),
                    Err(e) => {
                        let unavailable = matches!(
                            e.downcast_ref::<instant_acme::Error>(),
                            Some(instant_acme::Error::Api(p)) if p.status == Some(503)
                        );
                        if !unavailable {
                            eprintln!("faults/disk: {tag}: enrollment failed: {e:#}");
                            others.fetch_add(1, Ordering::Relaxed);
                        }
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                i += 1;
            }
        }));
    }
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline
        && !until(&held.lock().expect("lock"), failed.load(Ordering::Relaxed))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }
    let held = std::mem::take(&mut *held.lock().expect("lock"));
    unanswered.fetch_add(others.load(Ordering::Relaxed), Ordering::Relaxed);
    (held, failed.load(Ordering::Relaxed))
}

/// Every 5xx seen so far must be a 503 problem document with `Retry-After`; returns how many.
fn check_server_errors(clients: &Clients) -> usize {
    let errors = clients.errors.lock().expect("lock");
    for e in errors.iter() {
        assert_eq!(e.status, 503, "{e:?}");
        assert!(
            e.retry_after
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|s| s > 0),
            "503 without a Retry-After in seconds: {e:?}"
        );
        assert_eq!(
            e.content_type.as_deref(),
            Some("application/problem+json"),
            "{e:?}"
        );
    }
    errors.len()
}

async fn check_all(clients: &Clients, held: &[Held], when: &str, server: &CaServer) {
    for h in held {
        if let Err(e) = clients.check(h).await {
            panic!("{when}: {e:#}\n{}", server.logs());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_503_with_retry_after_and_service_resumes_when_space_returns() {
    let tmpfs = match Tmpfs::mount(TMPFS_MIB) {
        Ok(t) => t,
        Err(e) if std::env::var_os("IIOT_FAULTS_REQUIRE_TMPFS").is_some_and(|v| v == "1") => {
            panic!("IIOT_FAULTS_REQUIRE_TMPFS=1 but {e:#}")
        }
        Err(e) => {
            eprintln!(
                "faults/disk: NOT TESTED: cannot mount a tmpfs for the data directory ({e:#}); \
                 run as root, or set IIOT_FAULTS_REQUIRE_TMPFS=1 to make this a failure"
            );
            return;
        }
    };
    let data_dir = tmpfs.path().join("ca");
    let filler = tmpfs.path().join("filler");
    // The server's stdout and stderr go to the data directory too, so the log disk is full as
    // well, as where /var/lib and /var/log share a file system.
    let opts = CaServerOpts {
        data_dir: Some(data_dir),
        rate_limits: false,
        ..CaServerOpts::default()
    };
    let mut server = tokio::task::spawn_blocking(|| CaServer::start(opts))
        .await
        .expect("join")
        .expect("ca-server starts on the tmpfs");
    let pid = server.pid();
    let tokens: Tokens = Arc::default();
    serve_http01(server.http_port(), tokens.clone())
        .await
        .expect("http-01 responder");
    let clients = Arc::new(Clients {
        directory: server.directory_url(),
        root: server.root_pem_path(),
        tokens,
        errors: Arc::default(),
    });

    let unanswered = AtomicUsize::new(0);
    // Before: certificates issued while there is room.
    let (before, _) = load(
        &clients,
        "before",
        4,
        &unanswered,
        Duration::from_secs(60),
        |h, _| h.len() >= 12,
    )
    .await;
    assert!(before.len() >= 12, "{}", server.logs());
    assert_eq!(check_server_errors(&clients), 0, "errors with room on disk");

    // Full: every failure is a 503 with Retry-After; the server keeps running.
    let filled = fill(&filler).expect("fill the tmpfs");
    let (during, failed) = load(
        &clients,
        "full",
        4,
        &unanswered,
        Duration::from_secs(30),
        |_, failed| failed >= 8,
    )
    .await;
    let full_503 = check_server_errors(&clients);
    assert!(
        full_503 > 0,
        "no 503 while the disk was full ({} enrollments went through)\n{}",
        during.len(),
        server.logs()
    );
    assert_eq!(
        unanswered.load(Ordering::Relaxed),
        0,
        "requests failed other than with a 503 while the disk was full (see above)"
    );
    server
        .check_running()
        .expect("the server survives a full disk");
    let (url, root) = (clients.directory.clone(), clients.root.clone());
    let (status, _) = tokio::task::spawn_blocking(move || iiot_acme_tests::https::get(&url, &root))
        .await
        .expect("join")
        .expect("directory while full");
    assert_eq!(
        status, 200,
        "the directory is served while the disk is full"
    );

    // Space again: service resumes without a restart.
    std::fs::remove_file(&filler).expect("free the space");
    let freed = Instant::now();
    let (resumed, _) = load(
        &clients,
        "resumed",
        2,
        &unanswered,
        Duration::from_secs(60),
        |h, _| !h.is_empty(),
    )
    .await;
    let recovery = freed.elapsed();
    assert!(
        !resumed.is_empty(),
        "service did not resume within 60 s of freeing space\n{}",
        server.logs()
    );
    assert_eq!(server.pid(), pid, "resumed without a restart");
    check_all(&clients, &before, "after space returned", &server).await;
    check_all(&clients, &during, "after space returned", &server).await;

    // A crash on a full disk, then a restart with space: nothing stored is lost.
    fill(&filler).expect("fill the tmpfs again");
    let _ = load(
        &clients,
        "crash",
        2,
        &AtomicUsize::new(0),
        Duration::from_secs(20),
        |_, failed| failed >= 2,
    )
    .await;
    server.kill_9().expect("kill -9 on a full disk");
    std::fs::remove_file(&filler).expect("free the space");
    let server = tokio::task::spawn_blocking(move || server.restart().map(|()| server))
        .await
        .expect("join")
        .expect("restart after a crash on a full disk");
    check_all(&clients, &before, "after the restart", &server).await;
    check_all(&clients, &during, "after the restart", &server).await;
    check_all(&clients, &resumed, "after the restart", &server).await;
    let (after, _) = load(
        &clients,
        "after",
        2,
        &unanswered,
        Duration::from_secs(60),
        |h, _| h.len() >= 2,
    )
    .await;
    assert!(after.len() >= 2, "{}", server.logs());
    let errors_total = check_server_errors(&clients);
    let log = std::fs::read_to_string(server.data_dir().join("ca-server.stderr.log"))
        .unwrap_or_default()
        + &std::fs::read_to_string(server.data_dir().join("ca-server.stdout.log"))
            .unwrap_or_default();
    assert!(!log.contains("panicked"), "a panic in the log\n{log}");
    eprintln!(
        "faults/disk: tmpfs {TMPFS_MIB} MiB, filler {filled} bytes; {} certificates before, \
         {} while full; {failed} enrollments failed while full, {full_503} 503s with Retry-After \
         (no other 5xx, no request unanswered); first certificate {recovery:?} after space returned, without a restart; \
         {} more after a kill -9 on a full disk and a restart; {errors_total} 503s in all; all \
         {} certificates served identically after the restart",
        before.len(),
        during.len(),
        after.len(),
        before.len() + during.len() + resumed.len(),
    );
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("join");
    drop(tmpfs);
}
