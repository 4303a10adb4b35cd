//! The metrics listener (`[metrics]`): `/metrics` in the Prometheus text format, `/health` and
//! `/ready`, on plain HTTP and apart from the ACME listener, so a scraper or a load balancer
//! needs neither the CA's TLS trust nor an ACME account. No authentication, as Boulder's and
//! step-ca's metrics addresses: it binds loopback by default, and a warning says so when it
//! does not (the numbers tell the size of the fleet).
//!
//! - `/health`: 200 while the process runs (a liveness probe).
//! - `/ready`: 200 when the CA can do its work ([`not_ready`] is empty), else 503 with a JSON
//!   body listing what is not ready (a readiness probe: take the CA out of a load balancer).
//!
//! Most gauges cost O(1) and are read at each scrape: pending approvals (the approval queue's
//! index), the CRL ages, the store's size on disk (a `stat` of each of its few files).
//! Certificates expiring within 24 h need a scan of the certificates table, O(n) in the fleet
//! (a million records of a few kB each), so it is not done per scrape: a background task scans
//! every `metrics.scan_interval` (5 min by default) and the gauge reports the last scan.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::ca::crl::{LIFETIME, REFRESH};
use crate::ca::IssuerKind;
use crate::metrics::MetricsConfig;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::now;
use crate::{Error, Result};

/// How long past [`REFRESH`] a CRL may go unrefreshed before `/ready` fails: the refresh tick
/// comes every `REFRESH`, and signing a large CRL takes a few seconds.
pub const CRL_GRACE: i64 = 300;

/// The media type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Certificates read per page by the expiry scan, so the scan never holds a million records.
const SCAN_PAGE: usize = 1000;

/// The routes of the metrics listener.
pub fn router(app: Ra) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(app)
}

/// Binds `metrics.listen`, or nothing when `metrics.enabled` is off. Done before the start
/// is reported, so a port that cannot be bound stops the start.
pub fn bind(cfg: &MetricsConfig) -> Result<Option<TcpListener>> {
    if !cfg.enabled {
        return Ok(None);
    }
    TcpListener::bind(cfg.listen).map(Some).map_err(|e| {
        Error::Internal(format!(
            "cannot listen for metrics on {}: {e} (set [metrics] listen, or enabled = false)",
            cfg.listen
        ))
    })
}

/// Runs [`serve`] in the background; a failure is logged.
pub fn spawn(app: &Ra, listener: TcpListener) {
    let app = app.clone();
    tokio::spawn(async move {
        if let Err(e) = serve(app, listener).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
}

/// Serves the metrics listener on `listener`, and scans the store for the expiry gauge every
/// `metrics.scan_interval`.
pub async fn serve(app: Ra, listener: TcpListener) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("metrics listener: {e}")))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the metrics listener is not on loopback: /metrics has no authentication and tells anyone who reaches it the size of the fleet; restrict it with a firewall");
    }
    let scanner = app.clone();
    tokio::spawn(async move {
        // Config::check refuses 0; a Config built in code may skip the check.
        let period = scanner
            .cfg
            .metrics
            .scan_interval
            .max(Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            scan(&scanner).await;
        }
    });
    let bad = |e: std::io::Error| Error::Internal(format!("metrics listener on {addr}: {e}"));
    listener.set_nonblocking(true).map_err(bad)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(bad)?;
    serve_bounded(listener, router(app)).await;
    Ok(())
}

/// Connections the metrics listener serves at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// How long a metrics connection may stay open, request and response included.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `router` one request per connection, at most [`MAX_CONNECTIONS`] at once, each
/// closed after [`CONNECTION_DEADLINE`]: the listener has no authentication, so whoever
/// reaches it must not be able to hold connections (and the process's file descriptors)
/// open.
async fn serve_bounded(listener: tokio::net::TcpListener, router: Router) {
    use tower::ServiceExt as _;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = std::sync::Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                router.clone().oneshot(request.map(axum::body::Body::new))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
            drop(permit);
        });
    }
}

/// Recomputes the gauges that need a scan of the store (certificates expiring within 24 h), on
/// the blocking pool. A failure is logged and leaves the last value.
pub async fn scan(app: &Ra) {
    let reader = app.clone();
    match tokio::task::spawn_blocking(move || expiring_within_24h(&reader, now())).await {
        Ok(Ok(n)) => app.metrics.set_expiring_within_24h(n),
        Ok(Err(e)) => tracing::error!(error = %e, "scanning certificates for metrics failed"),
        Err(e) => tracing::error!(error = %e, "the metrics scan task failed"),
    }
}

/// The fields of a stored certificate the expiry scan reads.
#[derive(Deserialize)]
struct Validity {
    not_after: i64,
    #[serde(default)]
    revoked: Option<serde::de::IgnoredAny>,
}

/// Certificates neither revoked nor expired at `now` whose notAfter is within 24 h of it, as
/// `ca-server audit` lists them.
fn expiring_within_24h(app: &Ra, now: i64) -> Result<usize> {
    let soon = now + 24 * 3600;
    let mut count = 0;
    let mut after = Vec::new();
    loop {
        let page = app
            .db
            .store()
            .scan_after(Table::Certificates, &after, SCAN_PAGE)?;
        for (_, value) in &page {
            let v: Validity = serde_json::from_slice(value)
                .map_err(|e| Error::Storage(format!("corrupt certificate record: {e}")))?;
            if v.revoked.is_none() && now < v.not_after && v.not_after <= soon {
                count += 1;
            }
        }
        match page.last() {
            Some((key, _)) if page.len() == SCAN_PAGE => after.clone_from(key),
            _ => return Ok(count),
        }
    }
}

/// `GET /metrics`: the O(1) gauges are read now, then every metric is written out.
async fn metrics(State(app): State<Ra>) -> Response {
    let at = now();
    app.metrics
        .set_pending_approvals(app.approvals.pending_count());
    for kind in IssuerKind::ALL {
        if let Some(published) = app.crl.published(kind) {
            app.metrics.set_crl_age(issuer_label(kind), at - published);
        }
    }
    let db_dir = app.cfg.data_dir.join("db");
    if let Ok(bytes) = tokio::task::spawn_blocking(move || dir_size(&db_dir)).await {
        app.metrics.set_store_size(bytes);
    }
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], app.metrics.render()).into_response()
}

fn issuer_label(kind: IssuerKind) -> &'static str {
    match kind {
        IssuerKind::Ec => "ec",
        IssuerKind::Rsa => "rsa",
    }
}

/// The bytes of the files under `dir` (the store's directory: a few files, and sled's blob
/// directory). Files that vanish meanwhile count nothing.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// `GET /health`: the process runs.
async fn health() -> &'static str {
    "ok\n"
}

/// `GET /ready`: 200 `{"ready": true}`, or 503 with what is not ready.
async fn ready(State(app): State<Ra>) -> Response {
    let reasons = not_ready(&app, now());
    if reasons.is_empty() {
        Json(json!({"ready": true})).into_response()
    } else {
        let body = Json(json!({"ready": false, "notReady": reasons}));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// What keeps the CA from doing its work at `now`, empty when it is ready:
///
/// - the store answers a read;
/// - the CA keys are loaded (they are before the server answers at all: `init` fails
///   without them, so this holds by construction);
/// - each intermediate's CRL is fresh: published, not past its nextUpdate, and refreshed
///   within [`REFRESH`] (plus [`CRL_GRACE`]). Before the first CRL of a start is signed the CA
///   is not ready either.
pub fn not_ready(app: &Ra, now: i64) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Err(e) = app.db.get::<serde_json::Value>(Table::Meta, "crl_number") {
        reasons.push(format!("the store does not answer: {e}"));
    }
    if !app.ca.has(IssuerKind::Ec) {
        reasons.push("the CA keys are not loaded".to_owned());
    }
    for kind in IssuerKind::ALL.into_iter().filter(|k| app.ca.has(*k)) {
        let issuer = issuer_label(kind);
        match app.crl.published(kind) {
            None => reasons.push(format!("the {issuer} CRL has not been published yet")),
            Some(at) if now >= at + LIFETIME => reasons.push(format!(
                "the {issuer} CRL is past its nextUpdate ({} s ago)",
                now - at - LIFETIME
            )),
            Some(at) if now - at > REFRESH + CRL_GRACE => reasons.push(format!(
                "the {issuer} CRL was published {} s ago; it is refreshed every {REFRESH} s",
                now - at
            )),
            Some(_) => {}
        }
    }
    reasons
}
