//! `kill -9` at seeded random points while several instant-acme clients enroll continuously.
//!
//! After each kill the server is restarted on the same data directory and every order any
//! client saw is settled, as a client following RFC 8555 §7.1.6 would: a `pending` order gets
//! its http-01 challenges answered (again, if need be), a `ready` one is finalized, a
//! `processing` one is polled. "Not stuck" means each order reaches `valid` (its certificate
//! downloadable) or `invalid` within [`SETTLE`] of the restart by those steps alone. Then:
//!
//! - every certificate a client received (order `valid`, certificate downloaded) is served
//!   byte for byte from its order's certificate URL, after this restart and after the last;
//! - no serial number belongs to two orders, over every certificate seen in the whole run;
//! - the CRL is served and current, and names the certificates revoked so far (one per round).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use iiot_acme_tests::{CaServer, CaServerOpts};
use instant_acme::{Account, AccountCredentials, OrderStatus, RevocationReason, RevocationRequest};
use rustls_pki_types::CertificateDer;

use crate::acme::{first_cert_der, serve_http01, Tokens};
use crate::common::{answer_challenges, csr, enroll, Attempt};

/// Concurrent enrolling clients.
const CLIENTS: usize = 6;
/// How long after a restart every order must have reached `valid` or `invalid`.
const SETTLE: Duration = Duration::from_secs(30);

type Attempts = Arc<Mutex<Vec<Arc<Mutex<Attempt>>>>>;

/// A certificate seen valid, for the checks after later restarts.
pub(crate) struct Issued {
    pub(crate) credentials: String,
    pub(crate) order_url: String,
    pub(crate) chain_pem: String,
    /// A client received it (rather than the settling after a restart).
    pub(crate) received: bool,
}

/// xorshift64*: the kill points, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            let v = v.trim();
            v.strip_prefix("0x")
                .map_or_else(|| v.parse().ok(), |hex| u64::from_str_radix(hex, 16).ok())
        })
        .unwrap_or(default)
}

async fn account(root: &Path, credentials: &str) -> Result<Account> {
    let creds: AccountCredentials = serde_json::from_str(credentials)?;
    Ok(Account::builder_with_root(root)?
        .from_credentials(creds)
        .await?)
}

/// How an order ended.
enum Settled {
    Valid(String),
    /// With the order's `error` detail, if it has one.
    Invalid(String),
}

/// Drives the order at `order_url` to `valid` or `invalid` with a client's own steps only
/// (answer challenges, finalize, poll), within [`SETTLE`].
async fn settle(
    root: &Path,
    tokens: &Tokens,
    credentials: &str,
    order_url: &str,
    name: &str,
) -> Result<(OrderStatus, Settled)> {
    let account = account(root, credentials)
        .await
        .context("the account a client was told it has")?;
    let mut order = account
        .order(order_url.to_owned())
        .await
        .context("an order a client was told it has")?;
    let deadline = Instant::now() + SETTLE;
    let mut finalized = false;
    let mut path = Vec::new();
    let first = order.state().status;
    loop {
        let status = order.state().status;
        if path.last() != Some(&status) {
            path.push(status);
        }
        match status {
            OrderStatus::Valid => {
                let chain = order
                    .certificate()
                    .await?
                    .context("a valid order without a certificate")?;
                return Ok((first, Settled::Valid(chain)));
            }
            OrderStatus::Invalid => {
                let why = order.state().error.as_ref().map_or_else(
                    || "no error (expired, or an authorization failed)".to_owned(),
                    |p| p.detail.clone().unwrap_or_default(),
                );
                return Ok((first, Settled::Invalid(why)));
            }
            OrderStatus::Pending => answer_challenges(&mut order, tokens).await?,
            OrderStatus::Ready if !finalized => {
                order.finalize_csr(&csr(name)).await?;
                finalized = true;
            }
            OrderStatus::Ready | OrderStatus::Processing => {}
        }
        if Instant::now() > deadline {
            bail!("order {order_url} stuck: went {path:?} in {SETTLE:?} after the restart");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        order.refresh().await?;
    }
}

/// The leaf's serial number, as encoded.
pub(crate) fn serial(chain_pem: &str) -> Result<Vec<u8>> {
    let der = first_cert_der(chain_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("cannot parse an issued certificate: {e}"))?;
    Ok(cert.raw_serial().to_vec())
}

/// GET the CRL (on the blocking pool): it must be current and name every serial in `revoked`.
async fn check_crl(server: &CaServer, revoked: &[Vec<u8>]) -> Result<()> {
    let url = server.directory_url().replace("/directory", "/crl");
    let (root, revoked) = (server.root_pem_path(), revoked.to_vec());
    tokio::task::spawn_blocking(move || crl_lists(&url, &root, &revoked)).await?
}

pub(crate) fn crl_lists(url: &str, root: &Path, revoked: &[Vec<u8>]) -> Result<()> {
    let resp = iiot_acme_tests::https::client_trusting(root)?
        .get(url)
        .send()
        .with_context(|| format!("GET {url}"))?;
    ensure!(resp.status() == 200, "GET {url}: {}", resp.status());
    let der = resp.bytes()?;
    let (_, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| anyhow::anyhow!("the CRL does not parse: {e}"))?;
    let now = x509_parser::time::ASN1Time::now();
    ensure!(crl.last_update() <= now, "CRL thisUpdate in the future");
    let next = crl.next_update().context("CRL without nextUpdate")?;
    ensure!(next > now, "a stale CRL: nextUpdate {next}");
    let listed: Vec<&[u8]> = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial())
        .collect();
    for s in revoked {
        ensure!(
            listed.contains(&s.as_slice()),
            "revoked serial {s:02x?} missing from the CRL"
        );
    }
    Ok(())
}

/// Fetches the certificate of an order seen valid, which must be byte for byte the same.
pub(crate) async fn check_served(root: &Path, issued: &Issued) -> Result<()> {
    let account = account(root, &issued.credentials).await?;
    let mut order = account.order(issued.order_url.clone()).await?;
    ensure!(
        order.state().status == OrderStatus::Valid,
        "order {} was valid, now {:?}",
        issued.order_url,
        order.state().status
    );
    let chain = order.certificate().await?.context("certificate gone")?;
    ensure!(
        chain == issued.chain_pem,
        "order {}: another certificate after the restart",
        issued.order_url
    );
    Ok(())
}

pub(crate) async fn start(opts: CaServerOpts) -> CaServer {
    tokio::task::spawn_blocking(|| CaServer::start(opts))
        .await
        .expect("join")
        .expect("ca-server starts")
}

async fn restart(mut server: CaServer) -> CaServer {
    tokio::task::spawn_blocking(move || {
        let r = server.restart();
        (server, r)
    })
    .await
    .map(|(server, r)| {
        if let Err(e) = r {
            panic!("restart on the same data directory: {e:#}");
        }
        server
    })
    .expect("join")
}

/// Figures for the summary line.
#[derive(Default, Debug)]
struct Figures {
    attempts: usize,
    received: usize,
    /// Orders found at a restart in each state, before settling: pending, ready, processing.
    open_at_restart: [usize; 3],
    settled_valid: usize,
    settled_invalid: usize,
    revoked: usize,
    recovery_max: Duration,
    recovery_total: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_no_certificate_and_leaves_no_order_stuck() {
    let kills = env_u64("IIOT_FAULTS_KILLS", 20);
    let seed = env_u64("IIOT_FAULTS_SEED", 0x5eed_fa17);
    let mut rng = Rng(seed | 1);
    let mut server = start(CaServerOpts {
        rate_limits: false,
        ..CaServerOpts::default()
    })
    .await;
    let tokens: Tokens = Arc::default();
    serve_http01(server.http_port(), tokens.clone())
        .await
        .expect("http-01 responder");
    let directory = server.directory_url();
    let root: PathBuf = server.root_pem_path();

    let mut issued: Vec<Issued> = Vec::new();
    let mut serials: HashMap<Vec<u8>, String> = HashMap::new();
    let mut revoked: Vec<Vec<u8>> = Vec::new();
    let mut fig = Figures::default();
    let started = Instant::now();
    for round in 0..kills {
        let attempts: Attempts = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..CLIENTS {
            let (directory, root, tokens, attempts, stop) = (
                directory.clone(),
                root.clone(),
                tokens.clone(),
                attempts.clone(),
                stop.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("dev-{round}-{w}-{i}.plant.test");
                    i += 1;
                    let at = Arc::new(Mutex::new(Attempt {
                        name: name.clone(),
                        ..Attempt::default()
                    }));
                    attempts.lock().expect("lock").push(at.clone());
                    if let Ok(builder) = Account::builder_with_root(&root) {
                        let _ = enroll(builder, &directory, &tokens, &name, &at).await;
                    }
                }
            }));
        }
        let point = Duration::from_millis(rng.between(200, 2500));
        tokio::time::sleep(point).await;
        server.kill_9().expect("kill -9");
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            // In-flight requests fail at once against the dead server.
            let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
        }
        let t0 = Instant::now();
        server = restart(server).await;
        let recovery = t0.elapsed();
        fig.recovery_max = fig.recovery_max.max(recovery);
        fig.recovery_total += recovery;

        check_crl(&server, &revoked)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:#}\n{}", server.logs()));

        let attempts = std::mem::take(&mut *attempts.lock().expect("lock"));
        fig.attempts += attempts.len();
        let mut this_round = Vec::new();
        for at in attempts {
            // Taken out: a worker that outlived its join timeout cannot change it any more.
            let at = std::mem::take(&mut *at.lock().expect("lock"));
            let (Some(credentials), Some(order_url)) = (&at.credentials, &at.order_url) else {
                continue;
            };
            let (first, settled) = settle(&root, &tokens, credentials, order_url, &at.name)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "round {round} (killed {point:?} in): {e:#}\n{}",
                        server.logs()
                    )
                });
            match first {
                OrderStatus::Pending => fig.open_at_restart[0] += 1,
                OrderStatus::Ready => fig.open_at_restart[1] += 1,
                OrderStatus::Processing => fig.open_at_restart[2] += 1,
                OrderStatus::Valid | OrderStatus::Invalid => {}
            }
            match settled {
                Settled::Valid(chain) => {
                    if let Some(got) = &at.chain_pem {
                        assert_eq!(
                            &chain, got,
                            "round {round}: {order_url} serves another certificate than the one its client received"
                        );
                        fig.received += 1;
                    } else {
                        fig.settled_valid += 1;
                    }
                    let s = serial(&chain).expect("serial");
                    if let Some(other) = serials.insert(s.clone(), order_url.clone()) {
                        assert_eq!(
                            &other, order_url,
                            "round {round}: serial {s:02x?} used by two orders"
                        );
                    }
                    this_round.push(issued.len());
                    issued.push(Issued {
                        credentials: credentials.clone(),
                        order_url: order_url.clone(),
                        chain_pem: chain,
                        received: at.chain_pem.is_some(),
                    });
                }
                Settled::Invalid(why) => {
                    eprintln!("round {round}: {order_url} found {first:?}, ended invalid: {why}");
                    assert!(
                        at.chain_pem.is_none(),
                        "round {round}: {order_url} is invalid but its client received a certificate"
                    );
                    fig.settled_invalid += 1;
                }
            }
        }
        // One revocation a round, which the CRL after the next restart must list.
        if let Some(&i) = this_round.first() {
            let cert = CertificateDer::from(first_cert_der(&issued[i].chain_pem).expect("der"));
            account(&root, &issued[i].credentials)
                .await
                .expect("account")
                .revoke(&RevocationRequest {
                    certificate: &cert,
                    reason: Some(RevocationReason::KeyCompromise),
                })
                .await
                .unwrap_or_else(|e| panic!("round {round}: revoke: {e:#}"));
            revoked.push(serial(&issued[i].chain_pem).expect("serial"));
            fig.revoked += 1;
        }
        eprintln!(
            "round {round}: killed {point:?} in, {} issued so far, restart {recovery:?}",
            issued.len()
        );
    }

    // Every certificate seen in the run, after the last restart.
    for i in &issued {
        check_served(&root, i)
            .await
            .unwrap_or_else(|e| panic!("after the last restart: {e:#}\n{}", server.logs()));
    }
    check_crl(&server, &revoked)
        .await
        .unwrap_or_else(|e| panic!("after the last restart: {e:#}"));
    let received_total = issued.iter().filter(|i| i.received).count();
    eprintln!(
        "faults/kill: seed {seed:#x}, {kills} kills in {:?}: {} enrollment attempts, {received_total} \
         certificates received by clients and {} more found valid after a restart, all served \
         identically after the last restart; {} distinct serials, none twice; {} orders invalid; \
         {} revoked and listed in the CRL; orders open at a restart (pending, ready, processing) \
         {:?}, all settled; restart max {:?}, mean {:?}",
        started.elapsed(),
        fig.attempts,
        fig.settled_valid,
        serials.len(),
        fig.settled_invalid,
        fig.revoked,
        fig.open_at_restart,
        fig.recovery_max,
        fig.recovery_total / u32::try_from(kills.max(1)).unwrap_or(1),
    );
    assert!(kills == 0 || !issued.is_empty(), "the load issued nothing");
    assert_eq!(serials.len(), issued.len());
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("join");
}
