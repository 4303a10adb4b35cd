//! The certificate revocation list (RFC 5280 §5) of the issuing intermediate.
//!
//! Served at `GET /crl` (DER, `application/pkix-crl`), the URL every certificate carries in its
//! CRL distribution point, and also written to `<data_dir>/crl.pem` for relying parties that
//! read a file (mosquitto's `crlfile`, `openssl verify -CRLfile`). A new CRL, with the next CRL
//! number, is signed after each revocation (on the next request) and at least every
//! [`REFRESH`], well before `nextUpdate`.

use std::sync::Mutex;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::{now, AppState};
use crate::cert::Revocation;
use crate::fsutil::write_atomic;
use crate::storage::Table;
use crate::{Error, Result};

/// How long a signed CRL is served before a fresh one is signed.
pub const REFRESH: i64 = 3600;
/// `nextUpdate` − `thisUpdate`: relying parties treat the CRL as stale after this.
pub const LIFETIME: i64 = 24 * 3600;

/// The current CRL, cached.
#[derive(Default)]
pub struct CrlCache {
    current: Mutex<Option<Signed>>,
}

#[derive(Clone)]
struct Signed {
    der: Vec<u8>,
    this_update: i64,
}

impl CrlCache {
    /// Forgets the cached CRL, so the next request signs one that includes a new revocation.
    pub fn invalidate(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn cached(&self, now: i64) -> Option<Vec<u8>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|s| now - s.this_update < REFRESH)
            .map(|s| s.der.clone())
    }
}

/// The current CRL in DER, signing a new one if the cached one is missing or due.
pub fn current(app: &AppState) -> Result<Vec<u8>> {
    let now = now();
    if let Some(der) = app.crl.cached(now) {
        return Ok(der);
    }
    refresh(app, now)
}

/// Signs and publishes a new CRL.
pub fn refresh(app: &AppState, now: i64) -> Result<Vec<u8>> {
    // The CRL number MUST increase with every CRL (RFC 5280 §5.2.3), across restarts too, so
    // it lives in the store.
    if !app.db.insert_new(Table::Meta, "crl_number", &1u64)? {
        app.db
            .update(Table::Meta, "crl_number", |n: u64| Ok(n.saturating_add(1)))?;
    }
    let number: u64 = app
        .db
        .get(Table::Meta, "crl_number")?
        .ok_or_else(|| Error::Storage("CRL number vanished".into()))?;
    let mut revoked = Vec::new();
    for (serial, value) in app.db.store().scan_prefix(Table::Revocations, b"")? {
        let entry: Revocation = serde_json::from_slice(&value)
            .map_err(|e| Error::Storage(format!("corrupt revocation record: {e}")))?;
        let serial = hex::decode(&serial)
            .map_err(|e| Error::Storage(format!("corrupt revocation key: {e}")))?;
        revoked.push((serial, entry.at, entry.reason));
    }
    let der = app.ca.sign_crl(number, now, now + LIFETIME, &revoked)?;
    let pem = pem_encode("X509 CRL", &der);
    write_atomic(&app.cfg.data_dir.join("crl.pem"), pem.as_bytes(), 0o644)?;
    *app.crl.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Signed {
        der: der.clone(),
        this_update: now,
    });
    tracing::info!(number, entries = revoked.len(), "CRL signed");
    Ok(der)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// `GET /crl` — the current CRL, DER (RFC 5280 §5; media type per RFC 2585 §4.2).
pub async fn get(State(app): State<AppState>) -> Result<Response> {
    let der = current(&app)?;
    let mut resp = (StatusCode::OK, der).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pkix-crl"),
    );
    Ok(resp)
}
