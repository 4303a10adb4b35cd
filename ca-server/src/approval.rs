//! operator-approval-01: an operator on site approves the device in front of them (SPEC §5.8).
//!
//! For devices with neither a manufacturer identity nor an enrollment credential. The device
//! triggers the challenge; it stays `processing` until an operator approves or rejects it, or
//! until it expires. Device and operator both see a pairing code derived from the challenge
//! token and the account key (SPEC §5.9: the device computes it from its own key, the operator
//! reads it from `ca-server approval list`), so the operator can tell that the request they
//! approve is the one from the device in front of them and not a look-alike request from
//! elsewhere on the network. The token makes the code fresh for every request.
//!
//! Pending requests and decisions are files under `<data_dir>/approvals/`, like EAB
//! credentials, so the operator commands work while the server runs (sled locks the store to
//! one process). The server applies decisions and expiry to the store, which stays the
//! authority on the challenge's state.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::app::{now, AppState};
use crate::authz::{record_outcome, start_processing, Authz};
use crate::fsutil::{ensure_private_dir, write_atomic};
use crate::jws::AccountRequest;
use crate::storage::Table;
use crate::types::{ChallengeType, Identifier};
use crate::{Error, Result};

const KIND: ChallengeType = ChallengeType::OperatorApproval01;

/// The pairing code of a request (SPEC §5.9): the first 40 bits of
/// SHA-256("iiot-acme pairing code" ‖ 0x00 ‖ token ‖ "." ‖ thumbprint) in Crockford base32,
/// as `XXXX-XXXX`. `token` is the operator-approval-01 challenge's token, `thumbprint` the
/// account key's RFC 7638 thumbprint.
pub fn pairing_code(token: &str, thumbprint: &str) -> Result<String> {
    let parts = protocol_spec::pairing::digest_input(token, thumbprint)
        .map_err(|e| Error::Internal(format!("no pairing code: {e}")))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ctx.finish().as_ref());
    Ok(protocol_spec::pairing::PairingCode::from_digest(&digest)
        .as_str()
        .to_owned())
}

/// A request waiting for the operator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    /// The authorization id; also the request id the operator uses.
    pub id: String,
    /// What the device asks to be certified for.
    pub identifier: Identifier,
    /// Account id.
    pub account_id: String,
    /// Account key thumbprint (RFC 7638).
    pub thumbprint: String,
    /// The pairing code the device shows.
    pub pairing_code: String,
    /// The address the request came from, if known.
    pub source: Option<String>,
    /// Unix time of the request.
    pub requested: i64,
    /// Unix time after which it fails unless decided.
    pub expires: i64,
}

/// An operator's decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "decision")]
pub enum Decision {
    /// Certify the device.
    Approve,
    /// Refuse it.
    Reject {
        /// Shown to the device in the challenge error.
        reason: Option<String>,
    },
}

/// The files under `<data_dir>/approvals/`.
pub struct ApprovalQueue {
    pending: PathBuf,
    decisions: PathBuf,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Internal(format!("corrupt file {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Internal(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Internal(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
    }
}

impl ApprovalQueue {
    /// The queue of a data directory.
    pub fn new(data_dir: &Path) -> Self {
        let root = data_dir.join("approvals");
        Self {
            pending: root.join("pending"),
            decisions: root.join("decisions"),
        }
    }

    fn file(dir: &Path, id: &str) -> Result<PathBuf> {
        if !valid_id(id) {
            return Err(Error::Malformed(format!("{id:?} is not a request id")));
        }
        Ok(dir.join(format!("{id}.json")))
    }

    fn ids(dir: &Path) -> Result<Vec<String>> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Internal(format!(
                    "cannot list {}: {e}",
                    dir.display()
                )))
            }
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .filter(|id| valid_id(id))
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Requests waiting for a decision, oldest first.
    pub fn list_pending(&self) -> Result<Vec<Pending>> {
        let mut out = Vec::new();
        for id in Self::ids(&self.pending)? {
            if let Some(p) = read_json::<Pending>(&Self::file(&self.pending, &id)?)? {
                out.push(p);
            }
        }
        out.sort_by_key(|p| p.requested);
        Ok(out)
    }

    /// Records the operator's decision on a pending request; the server applies it.
    pub fn decide(&self, id: &str, decision: &Decision) -> Result<Pending> {
        let pending = read_json::<Pending>(&Self::file(&self.pending, id)?)?
            .ok_or_else(|| Error::Malformed(format!("no pending approval request {id:?}")))?;
        ensure_private_dir(&self.decisions)?;
        let data = serde_json::to_vec_pretty(decision)
            .map_err(|e| Error::Internal(format!("cannot encode decision: {e}")))?;
        write_atomic(&Self::file(&self.decisions, id)?, &data, 0o600)?;
        Ok(pending)
    }

    fn add(&self, p: &Pending) -> Result<()> {
        ensure_private_dir(&self.pending)?;
        let data = serde_json::to_vec_pretty(p)
            .map_err(|e| Error::Internal(format!("cannot encode request: {e}")))?;
        write_atomic(&Self::file(&self.pending, &p.id)?, &data, 0o600)
    }
}

/// The device triggers its operator-approval-01 challenge (POST `{}`).
pub async fn request(app: &AppState, authz_id: &str, r: &AccountRequest) -> Result<Authz> {
    let (authz, triggered) = start_processing(app, authz_id, KIND)?;
    if triggered {
        let token = authz
            .challenges
            .iter()
            .find(|c| c.kind == KIND)
            .map(|c| c.token.as_str())
            .ok_or(Error::NotFound("challenge"))?;
        let ttl = i64::try_from(app.cfg.enrollment.approval_ttl.as_secs()).unwrap_or(3600);
        let pending = Pending {
            id: authz.id.clone(),
            identifier: authz.identifier.clone(),
            account_id: r.account.id.clone(),
            thumbprint: r.account.thumbprint.clone(),
            pairing_code: pairing_code(token, &r.account.thumbprint)?,
            source: r.req.peer.map(|a| a.ip().to_string()),
            requested: now(),
            expires: now() + ttl,
        };
        app.approvals.add(&pending)?;
        tracing::info!(request = %pending.id, identifier = %pending.identifier,
            pairing_code = %pending.pairing_code, source = ?pending.source,
            "device waits for operator approval");
    }
    app.db.flush().await?;
    Ok(authz)
}

/// Applies operator decisions and expiry to the store. Runs periodically and before the
/// server reports an authorization, so a device polling sees a decision at once.
pub async fn apply(app: &AppState) -> Result<()> {
    let q = &app.approvals;
    let now = now();
    for p in q.list_pending()? {
        let decision = read_json::<Decision>(&ApprovalQueue::file(&q.decisions, &p.id)?)?;
        let outcome = match &decision {
            Some(Decision::Approve) => Ok(()),
            Some(Decision::Reject { reason }) => Err(Error::Unauthorized(format!(
                "the operator rejected this device{}",
                reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ))),
            None if now > p.expires => Err(Error::Unauthorized(
                "no operator approved this request before it expired".into(),
            )),
            None => continue,
        };
        match app.db.get::<Authz>(Table::Authzs, &p.id)? {
            Some(_) => {
                record_outcome(app, &p.id, KIND, &outcome)?;
                app.db.flush().await?;
            }
            None => tracing::warn!(request = %p.id, "approval for an unknown authorization"),
        }
        tracing::info!(request = %p.id, identifier = %p.identifier, approved = outcome.is_ok(),
            "approval request decided");
        // The store holds the outcome now; the files have done their job.
        remove(&ApprovalQueue::file(&q.decisions, &p.id)?)?;
        remove(&ApprovalQueue::file(&q.pending, &p.id)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "hAuW5Ak5pwOYj9bWGSUbgA";
    const THUMBPRINT: &str = "VJfSzL4hUAWCLxLmyqlEzZifphbmhOkF0nOyxVIRMXg";

    #[test]
    fn pairing_codes_are_readable_and_depend_on_token_and_key() {
        let a = pairing_code(TOKEN, THUMBPRINT).expect("code");
        assert_eq!(a, "GKPJ-92D8", "SPEC vector p256-account");
        assert_eq!(a, pairing_code(TOKEN, THUMBPRINT).expect("code"));
        // Another request of the same account: another token, another code.
        assert_ne!(
            a,
            pairing_code("70JfMqfX-uRXMPCUc97GHQ", THUMBPRINT).expect("code")
        );
        assert_ne!(
            a,
            pairing_code(TOKEN, "VJfSzL4hUAWCLxLmyqlEzZifphbmhOkF0nOyxVIRMXw").expect("code")
        );
        assert_eq!(a.len(), 9);
        assert_eq!(a.as_bytes()[4], b'-');
        assert!(a
            .chars()
            .filter(|c| *c != '-')
            .all(|c| protocol_spec::pairing::ALPHABET.contains(&(c as u8))));
        assert!(pairing_code("../x", THUMBPRINT).is_err());
        assert!(pairing_code(TOKEN, "short").is_err());
    }

    #[test]
    fn decisions_need_a_pending_request_and_a_safe_id() {
        let dir = tempfile::tempdir().expect("tmp");
        let q = ApprovalQueue::new(dir.path());
        assert!(q.decide("nope", &Decision::Approve).is_err());
        assert!(q.decide("../etc/passwd", &Decision::Approve).is_err());
        let p = Pending {
            id: "abc".into(),
            identifier: Identifier::dns("plc-1"),
            account_id: "acct".into(),
            thumbprint: THUMBPRINT.into(),
            pairing_code: pairing_code(TOKEN, THUMBPRINT).expect("code"),
            source: None,
            requested: 1,
            expires: 2,
        };
        q.add(&p).expect("add");
        assert_eq!(q.list_pending().expect("list").len(), 1);
        q.decide(
            "abc",
            &Decision::Reject {
                reason: Some("unknown device".into()),
            },
        )
        .expect("decide");
        let d: Option<Decision> =
            read_json(&ApprovalQueue::file(&q.decisions, "abc").expect("path")).expect("read");
        assert_eq!(
            d,
            Some(Decision::Reject {
                reason: Some("unknown device".into())
            })
        );
    }
}
