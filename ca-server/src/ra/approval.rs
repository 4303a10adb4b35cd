//! operator-approval-01: an operator on site approves the device in front of them (SPEC §5.8).
//!
//! For devices with neither a manufacturer identity nor an enrollment credential. The device
//! triggers the challenge; it stays `processing` until an operator approves or rejects it, or
//! until it expires. Device and operator both see a pairing code derived from the challenge
//! token and the account key (SPEC §5.9: the device computes it from its own key, the operator
//! reads it from `ca-server approval list`), so the operator can tell that the request they
//! approve is the one from the device in front of them and not a look-alike request from
//! elsewhere on the network. The token makes the code fresh for every request. Requests that
//! name the same identifier are marked in the list and logged, since at most one of them is
//! that device.
//!
//! Pending requests and decisions are files under `<data_dir>/approvals/`, like EAB
//! credentials, so the operator commands work while the server runs (sled locks the store to
//! one process). The server applies decisions and expiry to the store, which stays the
//! authority on the challenge's state.
//!
//! The server does not read the pending files once it runs: it loads them at start into an
//! in-memory index (by id, expiry, account, source address and identifier) and keeps the index
//! and the files in step as requests come and go. Applying decisions, which happens before
//! every answer about an authorization, a challenge or an order, lists `decisions/` and looks
//! at the front of the expiry index, so it costs in proportion to the decisions waiting, not to
//! the length of the queue. The caps on waiting requests per account and per source address
//! (SPEC §5.8) are counted in the index, and a request is counted and added under one lock so
//! that racing requests cannot overshoot a cap.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fsutil::{ensure_private_dir, write_atomic};
use crate::ra::account::Account;
use crate::ra::authz::{record_outcome, start_processing, Authz};
use crate::ra::Ra;
use crate::ratelimit::LimitName;
use crate::ratelimit::{address_key, Key, RateLimiter};
use crate::storage::Table;
use crate::types::now;
use crate::types::{AuthzStatus, ChallengeStatus, ChallengeType, Identifier};
use crate::wire::pairing_code;
use crate::{Error, Result};

const KIND: ChallengeType = ChallengeType::OperatorApproval01;

/// The pairing code of a request (SPEC §5.9): the first 40 bits of
/// A request waiting for the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// A pending request as `approval list` shows it: with the other pending requests for the same
/// identifier, at most one of which comes from the device in front of the operator.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// The request.
    #[serde(flatten)]
    pub request: Pending,
    /// Other pending requests that name the same identifier, oldest first.
    pub also_requested: Vec<OtherRequest>,
}

/// Another pending request for the same identifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OtherRequest {
    /// Its request id.
    pub id: String,
    /// The address it came from, if known.
    pub source: Option<String>,
    /// Its account.
    pub account_id: String,
}

impl OtherRequest {
    fn of(p: &Pending) -> Self {
        Self {
            id: p.id.clone(),
            source: p.source.clone(),
            account_id: p.account_id.clone(),
        }
    }
}

/// `pending`, each with the others that name the same identifier.
pub fn mark_duplicates(pending: Vec<Pending>) -> Vec<Listed> {
    let mut by_identifier: HashMap<&Identifier, Vec<&Pending>> = HashMap::new();
    for p in &pending {
        by_identifier.entry(&p.identifier).or_default().push(p);
    }
    let others: Vec<Vec<OtherRequest>> = pending
        .iter()
        .map(|p| {
            by_identifier
                .get(&p.identifier)
                .into_iter()
                .flatten()
                .filter(|o| o.id != p.id)
                .map(|o| OtherRequest::of(o))
                .collect()
        })
        .collect();
    pending
        .into_iter()
        .zip(others)
        .map(|(request, also_requested)| Listed {
            request,
            also_requested,
        })
        .collect()
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

/// Pending requests by expiry, account, source address and identifier. Each set holds
/// `(expires, id)`, so its first entry is the one that expires first.
#[derive(Debug, Default)]
struct Index {
    requests: HashMap<String, Pending>,
    by_expiry: BTreeSet<(i64, String)>,
    by_account: HashMap<String, BTreeSet<(i64, String)>>,
    by_address: HashMap<String, BTreeSet<(i64, String)>>,
    by_identifier: HashMap<Identifier, BTreeSet<(i64, String)>>,
}

/// The key of a source address in the index: as rate limits key it (`ratelimit::address_key`),
/// so IPv4 behind an IPv6 listener and the addresses of one IPv6 /64 count together.
fn source_key(source: &str) -> String {
    source
        .parse::<IpAddr>()
        .map_or_else(|_| source.to_owned(), |ip| address_key(ip).to_string())
}

fn add_to<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, BTreeSet<(i64, String)>>,
    key: K,
    entry: (i64, String),
) {
    map.entry(key).or_default().insert(entry);
}

fn remove_from<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, BTreeSet<(i64, String)>>,
    key: &K,
    entry: &(i64, String),
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(entry);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl Index {
    fn insert(&mut self, p: Pending) {
        self.remove(&p.id);
        let entry = (p.expires, p.id.clone());
        self.by_expiry.insert(entry.clone());
        add_to(&mut self.by_account, p.account_id.clone(), entry.clone());
        if let Some(source) = &p.source {
            add_to(&mut self.by_address, source_key(source), entry.clone());
        }
        add_to(&mut self.by_identifier, p.identifier.clone(), entry);
        self.requests.insert(p.id.clone(), p);
    }

    fn remove(&mut self, id: &str) -> Option<Pending> {
        let p = self.requests.remove(id)?;
        let entry = (p.expires, p.id.clone());
        self.by_expiry.remove(&entry);
        remove_from(&mut self.by_account, &p.account_id, &entry);
        if let Some(source) = &p.source {
            remove_from(&mut self.by_address, &source_key(source), &entry);
        }
        remove_from(&mut self.by_identifier, &p.identifier, &entry);
        Some(p)
    }

    /// Requests whose time ran out before `now`.
    fn expired(&self, now: i64) -> Vec<Pending> {
        self.by_expiry
            .iter()
            .take_while(|(expires, _)| *expires < now)
            .filter_map(|(_, id)| self.requests.get(id).cloned())
            .collect()
    }

    /// The other pending requests for `identifier`, oldest first.
    fn same_identifier(&self, identifier: &Identifier, except: &str) -> Vec<&Pending> {
        let mut others: Vec<&Pending> = self
            .by_identifier
            .get(identifier)
            .into_iter()
            .flatten()
            .filter(|(_, id)| id != except)
            .filter_map(|(_, id)| self.requests.get(id))
            .collect();
        others.sort_by(|a, b| (a.requested, &a.id).cmp(&(b.requested, &b.id)));
        others
    }
}

/// The files under `<data_dir>/approvals/`, and in the server the index of pending requests.
pub struct ApprovalQueue {
    pending: PathBuf,
    decisions: PathBuf,
    index: Mutex<Index>,
    /// Held while a request is counted against the caps and added, so two racing requests
    /// cannot both see room for one.
    admission: Mutex<()>,
    /// Held while decisions are applied, so a decision is applied once and a poll that comes
    /// in meanwhile waits for it rather than answering with the old state.
    applying: tokio::sync::Mutex<()>,
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

/// Locks `m`; a panic elsewhere while it was held leaves nothing half-done that matters here
/// (each critical section updates the index in one step), so a poisoned lock is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ApprovalQueue {
    /// The files of a data directory, for the operator commands, which read them directly.
    /// The index stays empty: the server uses [`ApprovalQueue::open`].
    pub fn new(data_dir: &Path) -> Self {
        let root = data_dir.join("approvals");
        Self {
            pending: root.join("pending"),
            decisions: root.join("decisions"),
            index: Mutex::new(Index::default()),
            admission: Mutex::new(()),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    /// The queue of a data directory with its index loaded from the pending requests on disk,
    /// for the server. Fails on a pending request file that cannot be read.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let q = Self::new(data_dir);
        {
            let mut index = lock(&q.index);
            for p in q.list_pending()? {
                index.insert(p);
            }
        }
        Ok(q)
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

    /// How many requests wait for a decision, from the server's index (no file is read).
    pub fn pending_count(&self) -> usize {
        lock(&self.index).requests.len()
    }

    /// Requests waiting for a decision, oldest first, read from the files. A request decided
    /// but not applied yet (the server applies decisions within a second) is not listed.
    pub fn list_pending(&self) -> Result<Vec<Pending>> {
        let mut out = Vec::new();
        for id in Self::ids(&self.pending)? {
            if Self::file(&self.decisions, &id)?.exists() {
                continue;
            }
            if let Some(p) = read_json::<Pending>(&Self::file(&self.pending, &id)?)? {
                out.push(p);
            }
        }
        out.sort_by(|a, b| (a.requested, &a.id).cmp(&(b.requested, &b.id)));
        Ok(out)
    }

    /// Records the operator's decision on a pending request; the server applies it. A
    /// decision is final: a second one for the same request is refused, so an approval cannot
    /// turn into a rejection (or the reverse) before the server has applied it.
    pub fn decide(&self, id: &str, decision: &Decision) -> Result<Pending> {
        let pending = read_json::<Pending>(&Self::file(&self.pending, id)?)?
            .ok_or_else(|| Error::Malformed(format!("no pending approval request {id:?}")))?;
        if Self::file(&self.decisions, id)?.exists() {
            return Err(Error::Exists(format!(
                "request {id:?} is already decided; the CA applies the decision within a second"
            )));
        }
        ensure_private_dir(&self.decisions)?;
        let data = serde_json::to_vec_pretty(decision)
            .map_err(|e| Error::Internal(format!("cannot encode decision: {e}")))?;
        write_atomic(&Self::file(&self.decisions, id)?, &data, 0o600)?;
        Ok(pending)
    }

    /// Writes the request's file, then indexes it.
    fn add(&self, p: &Pending) -> Result<()> {
        ensure_private_dir(&self.pending)?;
        let data = serde_json::to_vec_pretty(p)
            .map_err(|e| Error::Internal(format!("cannot encode request: {e}")))?;
        write_atomic(&Self::file(&self.pending, &p.id)?, &data, 0o600)?;
        lock(&self.index).insert(p.clone());
        Ok(())
    }

    /// Forgets a decided or expired request: its files and its index entries.
    fn finish(&self, id: &str) -> Result<()> {
        remove(&Self::file(&self.decisions, id)?)?;
        remove(&Self::file(&self.pending, id)?)?;
        lock(&self.index).remove(id);
        Ok(())
    }

    /// The request `id` if it is pending: from the index, or else from its file (one the
    /// index has not seen, e.g. restored by hand while the server ran), which is then indexed.
    fn pending_request(&self, id: &str) -> Result<Option<Pending>> {
        if let Some(p) = lock(&self.index).requests.get(id) {
            return Ok(Some(p.clone()));
        }
        let p = read_json::<Pending>(&Self::file(&self.pending, id)?)?;
        if let Some(p) = &p {
            lock(&self.index).insert(p.clone());
        }
        Ok(p)
    }

    /// Refuses a new request from `account_id` (and `source`, if known) when either already
    /// has as many requests waiting as its cap allows (SPEC §5.8). The caller holds the
    /// admission lock.
    fn check_caps(
        &self,
        limits: &RateLimiter,
        account_id: &str,
        source: Option<IpAddr>,
        ttl: i64,
    ) -> Result<()> {
        let index = lock(&self.index);
        let total = limits.cap(
            LimitName::PendingApprovalsTotal,
            &Key::Account(String::new()),
        );
        if u32::try_from(index.requests.len()).unwrap_or(u32::MAX) >= total {
            let retry = index
                .by_expiry
                .first()
                .map_or(ttl, |(expires, _)| expires - now() + 1)
                .max(1);
            return Err(Error::RateLimited {
                detail: format!(
                    "rate limit pending_approvals_total reached: {total} requests wait for an \
                     operator, the most this CA keeps at once"
                ),
                retry_after: Duration::from_secs(retry.unsigned_abs()),
            });
        }
        let mut counted = vec![(
            LimitName::PendingApprovalsPerAccount,
            Key::Account(account_id.to_owned()),
            index.by_account.get(account_id),
        )];
        if let Some(ip) = source {
            counted.push((
                LimitName::PendingApprovalsPerAddress,
                Key::address(ip),
                index.by_address.get(&address_key(ip).to_string()),
            ));
        }
        for (limit, key, waiting) in counted {
            let cap = limits.cap(limit, &key);
            let count = waiting.map_or(0, BTreeSet::len);
            if u32::try_from(count).unwrap_or(u32::MAX) < cap {
                continue;
            }
            // A request expires in the first sweep after its `expires` second; with a cap of
            // zero nothing waits, and a client is told to come back after one request's time.
            let retry = waiting
                .and_then(|w| w.first())
                .map_or(ttl, |(expires, _)| expires - now() + 1)
                .max(1);
            return Err(RateLimiter::cap_reached(
                limit,
                &key,
                cap,
                Duration::from_secs(retry.unsigned_abs()),
            ));
        }
        Ok(())
    }

    /// Starts the approval of authorization `authz_id` for `r` if its challenge is still
    /// `pending` and the caps allow: the challenge becomes `processing` and the request is
    /// written and indexed, all under the admission lock. Returns the authorization and the
    /// request, if this call made one.
    fn admit(
        &self,
        app: &Ra,
        authz_id: &str,
        account: &Account,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(Authz, Option<Pending>)> {
        let _admission = lock(&self.admission);
        let authz = app
            .db
            .get::<Authz>(Table::Authzs, authz_id)?
            .ok_or(Error::NotFound("authorization"))?;
        let Some(token) = would_start(&authz) else {
            // Already triggered or decided: answering again records nothing and counts nothing.
            return Ok((authz, None));
        };
        let ttl = i64::try_from(app.cfg.enrollment.approval_ttl.as_secs()).unwrap_or(3600);
        let source = peer.map(|a| a.ip().to_canonical());
        self.check_caps(&app.limits, &account.id, source, ttl)?;
        let requested = now();
        let pending = Pending {
            id: authz.id.clone(),
            identifier: authz.identifier.clone(),
            account_id: account.id.clone(),
            thumbprint: account.thumbprint.clone(),
            pairing_code: pairing_code(&token, &account.thumbprint)?,
            source: source.map(|ip| ip.to_string()),
            requested,
            expires: requested + ttl,
        };
        let (authz, triggered) = start_processing(app, authz_id, KIND)?;
        if !triggered {
            return Ok((authz, None));
        }
        if let Err(e) = self.add(&pending) {
            // Without its file no operator can see the request: put the challenge back to
            // `pending` so that the device can ask again.
            undo_start(app, authz_id)?;
            return Err(e);
        }
        Ok((authz, Some(pending)))
    }
}

/// The token of `authz`'s operator-approval-01 challenge if a POST to it now would start an
/// approval (the rules of `start_processing`): the authorization and the challenge are
/// `pending` and no other challenge is being validated.
fn would_start(authz: &Authz) -> Option<String> {
    if authz.status() != AuthzStatus::Pending
        || authz
            .challenges
            .iter()
            .any(|c| c.status == ChallengeStatus::Processing)
    {
        return None;
    }
    authz
        .challenges
        .iter()
        .find(|c| c.kind == KIND && c.status == ChallengeStatus::Pending)
        .map(|c| c.token.clone())
}

/// Moves the challenge from `processing` back to `pending`.
fn undo_start(app: &Ra, authz_id: &str) -> Result<()> {
    app.db.update(Table::Authzs, authz_id, |mut a: Authz| {
        if let Some(c) = a
            .challenges
            .iter_mut()
            .find(|c| c.kind == KIND && c.status == ChallengeStatus::Processing)
        {
            c.status = ChallengeStatus::Pending;
            c.processing_since = None;
            c.processing_by = None;
        }
        Ok(a)
    })?;
    Ok(())
}

/// The device triggers its operator-approval-01 challenge (POST `{}`). Beyond a cap on waiting
/// requests the answer is `rateLimited` and the challenge stays `pending` (SPEC §5.8).
pub async fn request(
    app: &Ra,
    authz_id: &str,
    account: &Account,
    peer: Option<std::net::SocketAddr>,
) -> Result<Authz> {
    // The pairing code is a function of the token and the account key. A key chosen after the
    // token is known could be ground offline until its code matches the one a waiting device
    // shows; so the request must come from the key the authorization was created with.
    if let Some(created_with) = app
        .db
        .get::<Authz>(Table::Authzs, authz_id)?
        .and_then(|a| a.account_thumbprint)
    {
        if created_with != account.thumbprint {
            return Err(Error::Unauthorized(
                "the account key changed after this authorization was created; an operator \
                 approval must be requested with the key the order was made with: create a \
                 new order"
                    .into(),
            ));
        }
    }
    let (authz, added) = app.approvals.admit(app, authz_id, account, peer)?;
    if let Some(p) = added {
        tracing::info!(request = %p.id, identifier = %p.identifier,
            pairing_code = %p.pairing_code, source = ?p.source, account = %p.account_id,
            "device waits for operator approval");
        let others: Vec<OtherRequest> = lock(&app.approvals.index)
            .same_identifier(&p.identifier, &p.id)
            .into_iter()
            .map(OtherRequest::of)
            .collect();
        for o in others {
            tracing::warn!(request = %p.id, identifier = %p.identifier, source = ?p.source,
                account = %p.account_id, other_request = %o.id, other_source = ?o.source,
                other_account = %o.account_id,
                "approval requested for an identifier that another pending request names; \
                 at most one of them is the device");
        }
    }
    app.db.flush().await?;
    Ok(authz)
}

/// Applies operator decisions and expiry to the store. Runs periodically and before the
/// server reports an authorization, so a device polling sees a decision at once.
pub async fn apply(app: &Ra) -> Result<()> {
    let q = &app.approvals;
    let _applying = q.applying.lock().await;
    let now = now();
    let mut due: Vec<(Pending, Option<Decision>)> = Vec::new();
    for id in ApprovalQueue::ids(&q.decisions)? {
        let Some(decision) = read_json::<Decision>(&ApprovalQueue::file(&q.decisions, &id)?)?
        else {
            continue;
        };
        match q.pending_request(&id)? {
            Some(p) => due.push((p, Some(decision))),
            None => {
                // Decided while it expired, or a stray file: nothing waits for it.
                tracing::warn!(request = %id, "decision for no pending approval request dropped");
                remove(&ApprovalQueue::file(&q.decisions, &id)?)?;
            }
        }
    }
    let expired = lock(&q.index).expired(now);
    for p in expired {
        if !due.iter().any(|(d, _)| d.id == p.id) {
            due.push((p, None));
        }
    }
    for (p, decision) in due {
        let outcome = match &decision {
            Some(Decision::Approve) => Ok(()),
            Some(Decision::Reject { reason }) => Err(Error::Unauthorized(format!(
                "the operator rejected this device{}",
                reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ))),
            None => Err(Error::Unauthorized(
                "no operator approved this request before it expired".into(),
            )),
        };
        match app.db.get::<Authz>(Table::Authzs, &p.id)? {
            Some(_) => {
                record_outcome(app, &p.id, KIND, &outcome)?;
                app.db.flush().await?;
            }
            None => tracing::warn!(request = %p.id, "approval for an unknown authorization"),
        }
        tracing::info!(request = %p.id, identifier = %p.identifier, approved = outcome.is_ok(),
            expired = decision.is_none(), "approval request decided");
        // The store holds the outcome now; the files have done their job.
        q.finish(&p.id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pairing_code;

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

    fn pending(id: &str, identifier: &str, account: &str, source: &str, expires: i64) -> Pending {
        Pending {
            id: id.into(),
            identifier: Identifier::dns(identifier),
            account_id: account.into(),
            thumbprint: THUMBPRINT.into(),
            pairing_code: pairing_code(TOKEN, THUMBPRINT).expect("code"),
            source: Some(source.into()),
            requested: expires - 10,
            expires,
        }
    }

    #[test]
    fn decisions_need_a_pending_request_and_a_safe_id() {
        let dir = tempfile::tempdir().expect("tmp");
        let q = ApprovalQueue::new(dir.path());
        assert!(q.decide("nope", &Decision::Approve).is_err());
        assert!(q.decide("../etc/passwd", &Decision::Approve).is_err());
        q.add(&pending("abc", "plc-1", "acct", "10.0.0.1", 2))
            .expect("add");
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

    #[test]
    fn the_index_follows_adds_and_removals_and_loads_at_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let q = ApprovalQueue::new(dir.path());
        q.add(&pending("a", "plc-1", "acct-1", "10.0.0.1", 30))
            .expect("add");
        q.add(&pending("b", "plc-1", "acct-2", "10.0.0.2", 20))
            .expect("add");
        q.add(&pending("c", "plc-2", "acct-1", "10.0.0.1", 40))
            .expect("add");

        let reopened = ApprovalQueue::open(dir.path()).expect("open");
        for q in [&q, &reopened] {
            let index = lock(&q.index);
            assert_eq!(index.requests.len(), 3);
            assert_eq!(index.by_account["acct-1"].len(), 2);
            assert_eq!(index.by_address["10.0.0.1"].len(), 2);
            assert_eq!(index.by_account["acct-1"].first(), Some(&(30, "a".into())));
            let expired: Vec<String> = index.expired(31).into_iter().map(|p| p.id).collect();
            assert_eq!(expired, ["b", "a"], "soonest first, and only those past");
            assert!(index.expired(20).is_empty(), "expires is the last second");
            let same: Vec<&str> = index
                .same_identifier(&Identifier::dns("plc-1"), "a")
                .iter()
                .map(|p| p.id.as_str())
                .collect();
            assert_eq!(same, ["b"]);
        }

        q.finish("a").expect("finish");
        let index = lock(&q.index);
        assert_eq!(index.requests.len(), 2);
        assert_eq!(index.by_account["acct-1"].len(), 1);
        assert!(!index.by_expiry.contains(&(30, "a".into())));
        assert!(index
            .same_identifier(&Identifier::dns("plc-1"), "b")
            .is_empty());
        drop(index);
        assert_eq!(q.list_pending().expect("list").len(), 2);
        q.finish("b").expect("finish");
        q.finish("c").expect("finish");
        let index = lock(&q.index);
        assert!(index.by_account.is_empty() && index.by_address.is_empty());
        assert!(index.by_identifier.is_empty() && index.by_expiry.is_empty());
    }

    #[test]
    fn open_refuses_a_corrupt_request_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let pending = dir.path().join("approvals/pending");
        fs::create_dir_all(&pending).expect("mkdir");
        fs::write(pending.join("abc.json"), b"{not json").expect("write");
        let e = ApprovalQueue::open(dir.path())
            .err()
            .expect("corrupt file refused");
        assert!(e.to_string().contains("abc.json"), "{e}");
    }

    #[test]
    fn duplicates_are_marked_with_the_other_requests() {
        let listed = mark_duplicates(vec![
            pending("a", "plc-1", "acct-1", "10.0.0.1", 30),
            pending("b", "plc-2", "acct-1", "10.0.0.1", 31),
            pending("c", "plc-1", "acct-2", "10.0.0.9", 32),
        ]);
        assert_eq!(
            listed[0].also_requested,
            [OtherRequest {
                id: "c".into(),
                source: Some("10.0.0.9".into()),
                account_id: "acct-2".into()
            }]
        );
        assert!(listed[1].also_requested.is_empty());
        assert_eq!(listed[2].also_requested[0].id, "a");
        let json = serde_json::to_value(&listed[2]).expect("json");
        assert_eq!(json["pairing_code"], listed[2].request.pairing_code);
        assert_eq!(json["also_requested"][0]["account_id"], "acct-1");
    }
}
