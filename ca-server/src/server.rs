//! Wiring: store, then issuance, then validation, then the router and the TLS listener
//! (in that order, as Pebble's `cmd/pebble/main.go`).

pub mod metrics;

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca::{CertificateAuthority, IssuerKind};
use crate::config::tls_names;
use crate::config::Config;
use crate::fsutil::ensure_private_dir;
use crate::ra::approval::ApprovalQueue;
use crate::ra::audit::AuditLog;
use crate::ra::eab::EabStore;
use crate::ra::operator::OperatorStore;
use crate::ra::{Inner, Ra};
use crate::storage::Db;
use crate::va::attest::anchors::TrustAnchorStore;
use crate::va::Validator;
use crate::wfe::nonce::NonceStore;
use crate::wfe::{self, AppState};
use crate::{Error, Result};

/// What an operator needs to know after start.
pub struct StartInfo {
    /// Directory URL.
    pub directory_url: String,
    /// Path of the root certificate (PEM).
    pub root_path: std::path::PathBuf,
    /// SHA-256 fingerprint of the root certificate.
    pub root_fingerprint: String,
}

/// Opens (or on first start creates) everything under `cfg.data_dir` and builds the state.
pub fn init(cfg: Config) -> Result<AppState> {
    ensure_private_dir(&cfg.data_dir)?;
    let store = cfg.storage.open(&cfg.data_dir)?;
    if cfg.storage.durability == crate::storage::Durability::ProcessCrash {
        tracing::warn!("storage.durability = \"process-crash\": responses do not wait for the disk's write cache; a power cut can lose issued certificates and revocations");
    }
    let mut ca = CertificateAuthority::load_or_init(&cfg.data_dir.join("ca"), &cfg.issuance)?;
    for kind in IssuerKind::ALL {
        ca.set_crl_url(
            kind,
            format!("{}{}", cfg.base_url(), crate::ca::crl::path(kind)),
        );
    }
    if let Some(addr) = cfg.validation.lab_resolve_all_to {
        tracing::warn!(%addr, "LAB SETTING validation.lab_resolve_all_to is on: every dns identifier is validated against {addr}, not its DNS address. Never use this in production.");
    }
    if cfg.lab_clock {
        tracing::warn!("LAB SETTING lab_clock is on: `ca-server lab clock-step` can step this CA's clock, which decides expiry, certificate validity and CRL dates. For tests only; never in production.");
    }
    if cfg.validation.lab_always_valid {
        tracing::warn!("LAB SETTING validation.lab_always_valid is on: http-01 and tls-alpn-01 challenges pass WITHOUT validation. For benchmarks only; never in production.");
    }
    if cfg.validation.redirects == crate::va::Redirects::Any {
        tracing::warn!("validation.redirects = \"any\": http-01 redirects are followed to other hosts, so an account can make the CA send GETs to any host it may dial. The default is \"same-host\".");
    }
    if cfg.validation.allow_loopback {
        tracing::warn!("LAB SETTING validation.allow_loopback is on: validation dials loopback addresses and loopback identifiers can be certified. For tests only; never in production.");
    }
    if cfg.storage.retention < crate::storage::RETENTION_WARN_BELOW {
        tracing::warn!(retention = ?cfg.storage.retention, "storage.retention is under an hour: orders and authorizations are removed that long after they end, so a client that polls one later gets 404. For labs and tests.");
    }
    if cfg.storage.backend == crate::storage::Backend::Postgres
        && cfg.storage.takeover_after < crate::storage::TAKEOVER_AFTER
    {
        tracing::warn!(takeover_after = ?cfg.storage.takeover_after, "storage.takeover_after is under 30 s, three times the longest a database call may take: an instance whose calls stall that long is taken for gone, and the orders it is issuing are made invalid.");
    }
    if !cfg.rate_limits.enabled {
        tracing::warn!("BENCHMARK SETTING rate_limits.enabled is off: no request rate limit applies. For load benchmarks only; never in production.");
    }
    let own_names = crate::va::policy::OwnNames::of_host(&cfg);
    let va = Validator::new(cfg.validation.clone())?.with_own_names(own_names.clone());
    let mut profiles =
        crate::ca::profiles::Profiles::from_config(&cfg.profiles, cfg.issuance.cert_validity)
            .map_err(|e| Error::Internal(e.to_string()))?;
    if let Some(validity) = cfg.issuance.lab_cert_validity {
        tracing::warn!(?validity, "LAB SETTING issuance.lab_cert_validity is set: every certificate is issued for {validity:?}, whatever cert_validity and the profiles say. For tests only; never in production.");
        profiles.lab_set_validity(validity);
    }
    // Config::check refuses this combination; a Config built in code may skip the check.
    if !ca.has(IssuerKind::Rsa) {
        if let Some(name) = profiles.rsa_issuer_profiles().next() {
            return Err(Error::Internal(format!(
                "profile {name:?} has issuer = \"rsa\" but the CA has no RSA intermediate \
                 (issuance.rsa_intermediate_key = \"none\")"
            )));
        }
    }
    // Credentials made before a name became the CA's, or by hand, may cover one; newOrder
    // refuses such names whatever the credential says.
    let db = Db::new(store);
    // Several instances on one database count the limits together.
    let (va, limits) = match cfg.storage.backend {
        crate::storage::Backend::Postgres => (
            va.with_shared_slots(db.clone()),
            crate::ratelimit::RateLimiter::shared(
                cfg.rate_limits.clone(),
                Box::new(crate::storage::limits::SharedBuckets::new(db.clone())),
            ),
        ),
        crate::storage::Backend::Sled => (
            va,
            crate::ratelimit::RateLimiter::new(cfg.rate_limits.clone()),
        ),
    };
    let (eab, approvals, anchors, operators, audit) = match cfg.storage.backend {
        crate::storage::Backend::Postgres => {
            crate::fsutil::write_atomic(
                &cfg.data_dir.join(crate::storage::SHARED_MARKER),
                crate::storage::SHARED_MARKER_TEXT,
                0o644,
            )?;
            (
                EabStore::in_store(&cfg.data_dir, db.clone())?,
                ApprovalQueue::open_in_store(&cfg.data_dir, db.clone())?,
                TrustAnchorStore::in_store(&cfg.data_dir, db.clone())?,
                OperatorStore::in_store(&cfg.data_dir, db.clone())?,
                AuditLog::in_store(&cfg.data_dir, db.clone())?,
            )
        }
        crate::storage::Backend::Sled => {
            // A CA moved back from PostgreSQL: the operator commands work on files again.
            match std::fs::remove_file(cfg.data_dir.join(crate::storage::SHARED_MARKER)) {
                Ok(()) => tracing::info!(
                    "the data directory's records are files again (storage.backend = \"sled\")"
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Internal(format!(
                        "cannot remove {}: {e}",
                        cfg.data_dir.join(crate::storage::SHARED_MARKER).display()
                    )))
                }
            }
            (
                EabStore::new(&cfg.data_dir),
                ApprovalQueue::open(&cfg.data_dir)?,
                TrustAnchorStore::new(&cfg.data_dir),
                OperatorStore::new(&cfg.data_dir),
                AuditLog::file(&cfg.data_dir),
            )
        }
    };
    for cred in eab.list().unwrap_or_default() {
        if let Err(e) = crate::ra::eab::check_rules(&cred.allow, &own_names) {
            tracing::warn!(kid = %cred.kid, "enrollment credential: {e}; newOrder refuses those names");
        }
        // What an allow-listed credential pre-authorizes ends with it (SPEC §6.6).
        if !cred.allow.is_empty()
            && !cred.revoked
            && cred.expires.is_some_and(|e| e < crate::types::now())
        {
            let accounts = eab.uses(&db, &cred.kid).unwrap_or(0);
            if accounts > 0 {
                tracing::warn!(kid = %cred.kid, accounts,
                    "enrollment credential has expired: the accounts it bound can no longer order \
                     what it pre-authorized; give them a credential without expiry (or a later one) \
                     if they are to keep renewing");
            }
        }
    }
    let ra = Ra::new(Inner {
        profiles,
        base_url: cfg.base_url(),
        db,
        eab,
        approvals,
        anchors,
        operators,
        audit,
        account_keys: tokio::sync::Mutex::new(()),
        crl: crate::ca::crl::CrlCache::default(),
        limits,
        own_names,
        ca,
        va,
        instances: crate::ra::instances::Liveness::new(cfg.storage.takeover_after),
        cfg,
        metrics: crate::metrics::Metrics::default(),
    });
    ra.metrics
        .register_profiles(ra.profiles.directory_meta().into_keys());
    // A store from before identities were indexed gets its index once (`identity`).
    crate::ra::identity::index_existing(&ra)?;
    // Several instances on one database accept each other's nonces.
    let nonces = match ra.cfg.storage.backend {
        crate::storage::Backend::Postgres => NonceStore::shared(ra.db.clone())?,
        crate::storage::Backend::Sled => NonceStore::new()?,
    };
    Ok(AppState::new(ra, nonces))
}

/// Start information for printing.
pub fn start_info(app: &AppState) -> StartInfo {
    StartInfo {
        directory_url: app.url(crate::wire::paths::DIRECTORY),
        root_path: app.ca.root_path().to_path_buf(),
        root_fingerprint: app.ca.root_fingerprint(),
    }
}

/// Serves HTTPS on `cfg.listen`, and the console on `admin.listen` if it is enabled, until
/// Ctrl-C (see `serve_with_console`).
pub async fn serve(app: AppState) -> Result<()> {
    let listener = bind(app.cfg.listen, "the ACME server")?;
    let console = bind_console(&app.cfg)?;
    serve_with_console(app, listener, console).await
}

/// Binds `addr` for `what`.
pub fn bind(addr: std::net::SocketAddr, what: &str) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
        .map_err(|e| Error::Internal(format!("cannot listen on {addr} for {what}: {e}")))
}

/// Binds the console's `admin.listen`, if the console is enabled.
pub fn bind_console(cfg: &Config) -> Result<Option<std::net::TcpListener>> {
    cfg.admin
        .enabled
        .then(|| bind(cfg.admin.listen, "the operator console ([admin] listen)"))
        .transpose()
}

/// Serves HTTPS on an already bound listener, without the console (see `serve_with_console`).
pub async fn serve_on(app: AppState, listener: std::net::TcpListener) -> Result<()> {
    serve_with_console(app, listener, None).await
}

/// Serves HTTPS on an already bound listener (tests bind port 0 first, then build the config
/// with the real port so URLs are right), and the operator console on `console` if given,
/// both under `[limits]` (see `listener`), until Ctrl-C; then open requests get up to 5 s to
/// finish.
pub async fn serve_with_console(
    app: AppState,
    listener: std::net::TcpListener,
    console: Option<std::net::TcpListener>,
) -> Result<()> {
    let names = tls_names(&app.cfg);
    let (chain, key) = app
        .ca
        .server_tls_identity(&app.cfg.data_dir.join("ca"), &names)?;
    // The root goes at the end of the presented chain (RFC 8446 §4.4.2 allows it): a device
    // pinned to the root's fingerprint (SPEC §2.3) can then take the root from the handshake,
    // check its hash against the pin and validate the chain, with no other provisioning.
    let chain = format!("{chain}{}", app.ca.root_pem());
    let tls = tls_config(&chain, &key, None)?;
    if let Some(console) = console {
        // Operators only: client certificates are checked against the operator CA alone, so
        // no device certificate can open a session.
        let operators = app.operators.operator_ca(&app.cfg.data_dir)?;
        let tls = Arc::new(tls_config(&chain, &key, Some(operators.cert_der()))?);
        let router = crate::admin::api::router(Ra::clone(&app));
        let limits = app.cfg.limits.clone();
        let addr = console
            .local_addr()
            .map_err(|e| Error::Internal(format!("console listener: {e}")))?;
        tracing::info!(%addr, "operator console listening (client certificates from the operator CA)");
        tokio::spawn(async move {
            if let Err(e) = wfe::listener::serve(console, tls, router, &limits, stop_signal()).await
            {
                tracing::error!(error = %e, "operator console stopped");
            }
        });
    }
    {
        // Fresh CRLs at start and every REFRESH, so crl.pem and crl-rsa.pem never pass their
        // nextUpdate.
        let signer = app.clone();
        tokio::spawn(async move {
            let period = std::time::Duration::from_secs(crate::ca::crl::REFRESH.unsigned_abs());
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                crate::ra::crl::publish(&signer, IssuerKind::ALL).await;
            }
        });
    }
    if app.shared_store() {
        // A heartbeat, so that the other instances take up this one's work once it stops.
        let state = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(state.instances.interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let beater = state.clone();
                let beat =
                    tokio::task::spawn_blocking(move || beater.instances.beat(&beater.db)).await;
                if let Ok(Err(e)) = beat {
                    tracing::warn!(error = %e, "writing this instance's heartbeat failed; the others take up its work if it stays silent");
                }
            }
        });
    }
    {
        // Redemption records of shared nonces (several instances) end with the nonces' life,
        // and shared rate-limit buckets once they are full again.
        let state = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let pruner = state.clone();
                let pruned =
                    tokio::task::spawn_blocking(move || pruner.nonces().prune(crate::types::now()))
                        .await;
                if let Ok(Err(e)) = pruned {
                    tracing::warn!(error = %e, "pruning used nonces failed; the next minute retries");
                }
                let sweeper = state.clone();
                let swept = tokio::task::spawn_blocking(move || sweeper.limits.sweep()).await;
                if let Ok(Err(e)) = swept {
                    tracing::warn!(error = %e, "sweeping refilled rate-limit buckets failed; the next minute retries");
                }
            }
        });
    }
    {
        // sled replays its log since the last open at every start; a checkpoint when the CA is
        // idle (or the replay would pass its budget) keeps a restart after a power cut short.
        let (store, policy, ra) = (app.db.clone(), app.cfg.storage.clone(), Ra::clone(&app));
        let period = policy.checkpoint_idle.clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(5),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                // A store that failed (a full disk) is reopened here once it can be, so
                // service resumes without a restart; meanwhile requests get 503.
                if let Err(e) = store.recover().await {
                    tracing::error!(error = %e, "storage failed and cannot be reopened yet");
                    continue;
                }
                let started = std::time::Instant::now();
                match store
                    .checkpoint_if(|w, idle| policy.checkpoint_due(w, idle))
                    .await
                {
                    Ok(true) => ra.metrics.checkpoint_taken(started.elapsed()),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "storage checkpoint failed"),
                }
                if let Err(e) = store.compact_if_grown().await {
                    tracing::error!(error = %e, "storage compaction failed");
                }
            }
        });
    }
    // Retention (`ra::retention`): once at start, then every `storage.prune_interval()`.
    tokio::spawn(crate::ra::retention::run(Ra::clone(&app)));
    {
        let admin = Ra::clone(&app);
        tokio::spawn(async move {
            if let Err(e) = crate::admin::socket::serve(admin).await {
                tracing::error!(error = %e, "operator admin socket unavailable");
            }
        });
    }
    if app.cfg.enrollment.operator_approval {
        // Decisions and expiry also take effect while no device polls, so `approval list`
        // shows only what still waits.
        let sweeper = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = crate::ra::approval::apply(&sweeper).await {
                    tracing::error!(error = %e, "applying operator decisions failed");
                }
            }
        });
    }
    let limits = app.cfg.limits.clone();
    let router = wfe::router(app);
    wfe::listener::serve(listener, Arc::new(tls), router, &limits, stop_signal()).await
}

/// The HTTPS server's TLS configuration: `chain_pem` (leaf first) and its PKCS#8 key, TLS 1.2
/// and 1.3 with ring. With `client_ca`, clients may present a certificate, which must chain to
/// that CA; a client without one still connects (and the console answers 401).
fn tls_config(
    chain_pem: &str,
    key_pem: &str,
    client_ca: Option<&[u8]>,
) -> Result<rustls::ServerConfig> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::Internal(format!("cannot load the server TLS certificate: {e}"))
    };
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // The console speaks TLS 1.3 only: there the client certificate, which names the
    // operator, travels encrypted (TLS 1.2 sends it in the clear).
    let versions: &[&rustls::SupportedProtocolVersion] = match client_ca {
        None => rustls::DEFAULT_VERSIONS,
        Some(_) => &[&rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| bad(&e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from(ca.to_vec()))
                .map_err(|e| bad(&e))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| bad(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| bad(&e))?;
    // HTTP/1.1 only. An ACME client sends a short sequence of dependent requests (each needs
    // the previous response's nonce), so HTTP/2's multiplexing and header compression buy
    // nothing, and its framing cost 10-17 % of the server's CPU per certificate and as much of
    // the client's (measured with the loadgen at C=8 and C=32, ALPN h2 against http/1.1).
    // Every ACME client we test, and the embedded client, speaks HTTP/1.1. The listener serves
    // nothing else either, whatever ALPN says.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Completes at SIGTERM (how systemd, Docker and Kubernetes stop a service) or SIGINT (Ctrl-C).
/// A signal that cannot be watched is logged, and the server then stops only on the other one.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch for SIGTERM; stop the server with SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot watch for SIGINT; stop the server with SIGTERM");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => {}
        () = int => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_names_cover_loopback_public_host_and_extras() {
        let mut cfg = Config {
            listen: "0.0.0.0:443".parse().expect("addr"),
            public_url: Some("https://CA.Plant.Example:8443".into()),
            tls_names: vec!["10.20.0.5".into()],
            ..Config::default()
        };
        let names = tls_names(&cfg);
        for n in [
            "localhost",
            "127.0.0.1",
            "::1",
            "ca.plant.example",
            "10.20.0.5",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert!(!names.iter().any(|x| x == "0.0.0.0"), "{names:?}");
        cfg.public_url = Some("https://[2001:db8::1]:8443".into());
        assert!(tls_names(&cfg).iter().any(|x| x == "2001:db8::1"));
    }
}
