//! The operator's channel to a running CA: a small HTTP API on a Unix socket,
//! `<data_dir>/admin.sock`, readable by the CA's user only (mode 0600 in a 0700 directory).
//!
//! sled admits one process per store, so commands that need the store (revocation, audit,
//! renewal) cannot open it while the CA runs; they ask the CA instead. File-based state that
//! the operator owns (EAB credentials, trust anchors, approval decisions) stays in files.

mod backup;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ca::cert::{Certificate, RevokedBy};
use crate::ra::revocation::record_revocation;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::now;
use crate::types::rfc3339;
use crate::wire::parse_identifier;
use crate::{Error, Result};

/// The socket's path in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Which certificates an operator command acts on.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// One certificate by serial (hex).
    #[serde(default)]
    pub serial: Option<String>,
    /// Every certificate naming this identifier (`type:value`, e.g. `dns:plc-1`).
    #[serde(default)]
    pub identifier: Option<String>,
    /// Every certificate of this account id.
    #[serde(default)]
    pub account: Option<String>,
}

impl Selector {
    fn matches(&self, c: &Certificate) -> Result<bool> {
        let id = match &self.identifier {
            Some(text) => Some(parse_identifier(text)?),
            None => None,
        };
        Ok(self
            .serial
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case(&c.id))
            && id.as_ref().is_none_or(|i| c.identifiers.contains(i))
            && self.account.as_deref().is_none_or(|a| a == c.account_id))
    }

    fn is_empty(&self) -> bool {
        self.serial.is_none() && self.identifier.is_none() && self.account.is_none()
    }
}

fn certificates(app: &Ra) -> Result<Vec<Certificate>> {
    app.db.values_with_prefix(Table::Certificates, "")
}

/// RFC 5280 §5.3.1 reason names an operator may give.
pub fn reason_code(name: &str) -> Result<u8> {
    Ok(match name {
        "unspecified" => 0,
        "keyCompromise" => 1,
        "cACompromise" => 2,
        "affiliationChanged" => 3,
        "superseded" => 4,
        "cessationOfOperation" => 5,
        "privilegeWithdrawn" => 9,
        "aACompromise" => 10,
        other => {
            return Err(Error::BadRevocationReason(format!(
                "unknown or unsupported reason {other:?}"
            )))
        }
    })
}

#[derive(Deserialize)]
struct RevokeRequest {
    #[serde(flatten)]
    select: Selector,
    reason: u8,
}

/// Revokes every matching certificate that is not revoked yet.
async fn revoke(State(app): State<Ra>, Json(r): Json<RevokeRequest>) -> Result<Json<Value>> {
    if r.select.is_empty() {
        return Err(Error::Malformed(
            "say which certificates: serial, identifier or account".into(),
        ));
    }
    let mut revoked = Vec::new();
    let mut issuers = std::collections::BTreeSet::new();
    for c in certificates(&app)? {
        if c.revoked.is_none() && r.select.matches(&c)? {
            match record_revocation(&app, &c.id, r.reason, RevokedBy::Operator) {
                Ok(issuer) => {
                    issuers.insert(issuer);
                    revoked.push(c.id);
                }
                Err(Error::AlreadyRevoked) => revoked.push(c.id),
                Err(e) => return Err(e),
            }
        }
    }
    app.db.flush().await?;
    tracing::info!(
        count = revoked.len(),
        reason = r.reason,
        "operator revoked certificates"
    );
    crate::ra::crl::publish(&app, issuers).await;
    Ok(Json(json!({"revoked": revoked})))
}

/// Makes the renewal window of every matching certificate start now (RFC 9773): devices that
/// ask for renewal information renew at once, e.g. after a key incident.
async fn renew_early(State(app): State<Ra>, Json(select): Json<Selector>) -> Result<Json<Value>> {
    if select.is_empty() {
        return Err(Error::Malformed(
            "say which certificates: serial, identifier or account".into(),
        ));
    }
    let at = now();
    let mut marked = Vec::new();
    for c in certificates(&app)? {
        if c.revoked.is_none() && c.not_after > at && select.matches(&c)? {
            app.db
                .update(Table::Certificates, &c.id, |mut c: Certificate| {
                    c.renew_after = Some(at);
                    Ok(c)
                })?;
            marked.push(c.id);
        }
    }
    app.db.flush().await?;
    Ok(Json(json!({"renewNow": marked})))
}

/// The audit report: what an operator checks on a fleet.
async fn audit(State(app): State<Ra>) -> Result<Json<Value>> {
    let at = now();
    let certs = certificates(&app)?;
    let soon = at + 24 * 3600;
    let (mut valid, mut expired, mut revoked) = (0, 0, 0);
    // Profiles and key types in use: of valid certificates only (neither expired nor
    // revoked). Certificates issued before profiles are `default`.
    let mut profiles: BTreeMap<&str, usize> = BTreeMap::new();
    let mut key_types: BTreeMap<String, usize> = BTreeMap::new();
    let mut expiring = Vec::new();
    let mut revoked_list = Vec::new();
    // Newest certificate per identifier set: a device whose newest certificate has expired
    // stopped renewing.
    let mut newest: BTreeMap<String, &Certificate> = BTreeMap::new();
    for c in &certs {
        match (&c.revoked, c.not_after <= at) {
            (Some(r), _) => {
                revoked += 1;
                revoked_list.push(json!({"serial": c.id, "identifiers": c.identifiers,
                    "reason": r.reason, "at": rfc3339(r.at)}));
            }
            (None, true) => expired += 1,
            (None, false) => {
                valid += 1;
                *profiles
                    .entry(
                        c.profile
                            .as_deref()
                            .unwrap_or(crate::ca::profiles::DEFAULT_PROFILE),
                    )
                    .or_default() += 1;
                *key_types.entry(key_type(c)?).or_default() += 1;
                if c.not_after <= soon {
                    expiring.push(json!({"serial": c.id, "identifiers": c.identifiers,
                        "notAfter": rfc3339(c.not_after)}));
                }
            }
        }
        let key = c
            .identifiers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if newest.get(&key).is_none_or(|n| n.not_before < c.not_before) {
            newest.insert(key, c);
        }
    }
    let stopped: Vec<Value> = newest
        .iter()
        .filter(|(_, c)| c.not_after <= at && c.revoked.is_none())
        .map(|(ids, c)| {
            json!({"identifiers": ids, "lastCertificate": c.id,
            "expired": rfc3339(c.not_after)})
        })
        .collect();
    let reuse = crate::ra::keycheck::KeyReuseAttempt::list(&app)?;
    let weak = crate::ra::keycheck::WeakKeyAttempt::list(&app)?;
    Ok(Json(json!({
        "generated": rfc3339(at),
        "certificates": {"total": certs.len(), "valid": valid, "expired": expired, "revoked": revoked},
        "expiringWithin24h": expiring,
        "stoppedRenewing": stopped,
        "revoked": revoked_list,
        "keyReuseAttempts": reuse,
        "weakKeyAttempts": weak,
        "keyTypes": key_types,
        "profiles": profiles,
    })))
}

/// The type of a stored certificate's key, e.g. "ECDSA P-256".
fn key_type(c: &Certificate) -> Result<String> {
    let der = crate::wire::b64u_decode("stored certificate", &c.der)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Error::Storage(format!("stored certificate {} unparsable: {e}", c.id)))?;
    Ok(crate::key::policy::key_type(cert.public_key()))
}

#[derive(Deserialize)]
struct IdentityRequest {
    /// `type:value` or `uri:` + an ApplicationUri.
    identity: String,
}

/// Who holds an identity (`identity` module).
async fn identity_show(
    State(app): State<Ra>,
    Json(r): Json<IdentityRequest>,
) -> Result<Json<Value>> {
    let key = crate::ra::identity::parse_key(&r.identity)?;
    let held = crate::ra::identity::get(&app, &key)?;
    Ok(Json(json!({"identity": key, "holder": held})))
}

/// The operator releases an identity, so another account may be certified for it.
async fn identity_release(
    State(app): State<Ra>,
    Json(r): Json<IdentityRequest>,
) -> Result<Json<Value>> {
    let key = crate::ra::identity::parse_key(&r.identity)?;
    let released = crate::ra::identity::release(&app, &key)?;
    app.db.flush().await?;
    if let Some(h) = &released {
        tracing::info!(identity = %key, holder = %h.account_id, "operator released an identity");
    }
    Ok(Json(json!({"identity": key, "released": released})))
}

/// The admin API's routes.
pub fn router(app: Ra) -> Router {
    Router::new()
        .route("/identity/show", post(identity_show))
        .route("/identity/release", post(identity_release))
        .route("/revoke", post(revoke))
        .route("/renew-early", post(renew_early))
        .route("/audit", get(audit))
        .route("/backup", post(backup::backup))
        .with_state(app)
}

/// Serves the admin API on `<data_dir>/admin.sock` until the process ends.
pub async fn serve(app: Ra) -> Result<()> {
    let path = socket_path(&app.cfg.data_dir);
    // A socket file left by a killed server would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = bind_private(&path)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        })
        .map_err(|e| Error::Internal(format!("cannot bind {}: {e}", path.display())))?;
    axum::serve(listener, router(app))
        .await
        .map_err(|e| Error::Internal(format!("admin socket failed: {e}")))
}

/// Binds a Unix socket at `path`, owner-only from the moment it exists and mode 0600 once this
/// returns.
///
/// bind(2) gives the socket file mode 0777 minus the umask, so binding under a loose umask and
/// tightening with chmod afterwards would leave a moment in which another local user could
/// connect. So the socket is created under [`BIND_UMASK`], which is put back at once, and then
/// loses the execute bit that umask leaves (meaningless on a socket: connecting needs write
/// permission). The umask belongs to the process: a file or directory another thread creates in
/// that window gets at most owner permissions, and a directory keeps its owner's search bit.
pub fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;

    let listener = under_umask(BIND_UMASK, || std::os::unix::net::UnixListener::bind(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The process umask while the admin socket is bound: no group or other permissions, the
/// owner's kept.
const BIND_UMASK: u32 = 0o077;

/// Runs `f` with the process umask set to `mask`, then puts the previous umask back.
fn under_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    use rustix::fs::Mode;
    let previous = rustix::process::umask(Mode::from_raw_mode(mask));
    let result = f();
    rustix::process::umask(previous);
    result
}

/// Why the CLI's admin request got no answer it can read: the socket cannot be reached or the
/// exchange failed. `Display` is the message printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CallError(String);

/// Client side, for the CLI: one request over the socket, HTTP/1.1 with `Connection: close`.
/// Returns the status code and the JSON body.
pub fn call(
    data_dir: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::result::Result<(u16, Value), CallError> {
    let sock = socket_path(data_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&sock).map_err(|e| {
        CallError(format!(
            "cannot reach the CA at {}: {e} (is ca-server running with --data-dir {}?)",
            sock.display(),
            data_dir.display()
        ))
    })?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(req.as_bytes())
        .map_err(|e| CallError(format!("admin request failed: {e}")))?;
    let mut resp = Vec::new();
    stream
        .read_to_end(&mut resp)
        .map_err(|e| CallError(format!("admin response failed: {e}")))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| CallError("malformed admin response".to_owned()))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CallError("malformed admin status line".to_owned()))?;
    // axum answers with a fixed Content-Length here, so the body is not chunked.
    let json = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    Ok((status, json))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The process umask, read without changing it: the mode a new 0777 directory gets.
    fn umask() -> u32 {
        let probe = tempfile::tempdir().expect("tempdir");
        let dir = probe.path().join("d");
        std::fs::DirBuilder::new().create(&dir).expect("mkdir");
        0o777 & !std::fs::metadata(&dir).expect("meta").permissions().mode()
    }

    /// The socket is 0600 once `bind_private` returns (nothing else touched it), whatever the
    /// process umask, and the umask is back as it was. While the socket is bound, a directory
    /// another thread creates gets no group or other permissions but keeps its owner's
    /// permissions, search included.
    #[test]
    fn the_socket_is_created_owner_only_and_the_umask_is_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.sock");
        let before = umask();
        let _listener = bind_private(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        assert_eq!(umask(), before);

        let made = dir.path().join("made-meanwhile");
        under_umask(BIND_UMASK, || std::fs::DirBuilder::new().create(&made)).expect("mkdir");
        let mode = std::fs::metadata(&made).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "directory mode {mode:o}");
        assert_eq!(umask(), before);
    }
}
