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
//! With the embedded store, pending requests and decisions are files under
//! `<data_dir>/approvals/`, like EAB credentials, so the operator commands work while the server
//! runs (sled locks the store to one process). The server applies decisions and expiry to the
//! store, which stays the authority on the challenge's state.
//!
//! The server does not read the pending files once it runs: it loads them at start into an
//! in-memory index (by id, expiry, account, source address and identifier) and keeps the index
//! and the files in step as requests come and go. Applying decisions, which happens before
//! every answer about an authorization, a challenge or an order, lists `decisions/` and looks
//! at the front of the expiry index, so it costs in proportion to the decisions waiting, not to
//! the length of the queue. The caps on waiting requests per account and per source address
//! (SPEC §5.8) are counted in the index, and a request is counted and added under one lock so
//! that racing requests cannot overshoot a cap.
//!
//! With a store that several CA instances share (PostgreSQL), requests and decisions are
//! records of that store ([`Table::Approvals`]), which the operator commands reach through the
//! CA's configuration, so every instance lists, decides and applies every request:
//!
//! - One record, the ledger, names the waiting requests with their expiry, account and source
//!   address. A request is counted against the caps and added to it in one compare-and-swap,
//!   so two instances racing for the last place cannot both admit; the request itself is a
//!   record of its own.
//! - How a request ended is a record inserted only if absent: the operator's decision, or its
//!   expiry, whichever comes first, from any instance. A second decision is refused.
//! - Applying that outcome to the authorization is a compare-and-swap that changes a
//!   challenge still waiting, so when two instances apply one outcome at once, one changes the
//!   authorization and the other finds it done. The instance that takes the request off the
//!   ledger logs it.
//! - The in-memory index is a cache of the ledger, for the pending-requests gauge and the
//!   warning about requests for one identifier. Applying decisions reads the ledger at most
//!   twice a second, to bring the index in line and to record the expiry of requests past
//!   their time; otherwise a poll costs a prefix scan of the outcomes waiting to be applied.
//!   Reading the ledger costs in proportion to the queue, which `pending_approvals_total`
//!   caps.
//! - Request files found in `<data_dir>/approvals/` when the server starts (made before the CA
//!   moved to the shared store) are copied into it and then removed: left in place, a request
//!   decided since would be copied in again, as waiting, at the next start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fsutil::{ensure_private_dir, write_atomic};
use crate::ra::account::Account;
use crate::ra::authz::{record_outcome, start_processing, Authz};
use crate::ra::Ra;
use crate::ratelimit::LimitName;
use crate::ratelimit::{address_key, Key, RateLimiter};
use crate::storage::{Db, Table};
use crate::types::now;
use crate::types::{AuthzStatus, ChallengeStatus, ChallengeType, Identifier};
use crate::wire::pairing_code;
use crate::{Error, Result};

const KIND: ChallengeType = ChallengeType::OperatorApproval01;

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

    /// What the caps count for a request of `account_id` from `address` (a `source_key`).
    fn counts(&self, account_id: &str, address: Option<&str>) -> Counts {
        let of = |set: Option<&BTreeSet<(i64, String)>>| Waiting {
            count: set.map_or(0, BTreeSet::len),
            first_expires: set.and_then(BTreeSet::first).map(|(expires, _)| *expires),
        };
        Counts {
            total: Waiting {
                count: self.requests.len(),
                first_expires: self.by_expiry.first().map(|(expires, _)| *expires),
            },
            account: of(self.by_account.get(account_id)),
            address: address.map(|a| of(self.by_address.get(a))),
        }
    }
}

/// The requests one cap counts, and the soonest expiry among them.
#[derive(Debug, Default)]
struct Waiting {
    count: usize,
    first_expires: Option<i64>,
}

impl Waiting {
    fn add(&mut self, expires: i64) {
        self.count += 1;
        self.first_expires = Some(self.first_expires.map_or(expires, |e| e.min(expires)));
    }
}

/// What the caps on waiting requests count for a new request (SPEC §5.8): every request, the
/// account's, and those from its source address if it is known.
#[derive(Debug, Default)]
struct Counts {
    total: Waiting,
    account: Waiting,
    address: Option<Waiting>,
}

/// The key of the ledger in [`Table::Approvals`].
const LEDGER: &str = "queue";
/// The prefix of request records in [`Table::Approvals`].
const REQUEST: &str = "request/";
/// The prefix of outcome records in [`Table::Approvals`].
const DECISION: &str = "decision/";
/// How often applying decisions reads the ledger of a shared store at most.
const REFRESH: Duration = Duration::from_millis(500);

/// The requests waiting in a shared store, by id, with what the caps count of each: one
/// record, so that counting a request against the caps and adding it is one compare-and-swap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Ledger {
    waiting: BTreeMap<String, Place>,
}

/// A request's place in the [`Ledger`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Place {
    /// Unix time after which it fails unless decided.
    expires: i64,
    /// Account id.
    account: String,
    /// The source address as the index keys it (`source_key`), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<String>,
}

impl Ledger {
    /// What the caps count for a request of `account_id` from `address`.
    fn counts(&self, account_id: &str, address: Option<&str>) -> Counts {
        let mut counts = Counts {
            address: address.map(|_| Waiting::default()),
            ..Counts::default()
        };
        for place in self.waiting.values() {
            counts.total.add(place.expires);
            if place.account == account_id {
                counts.account.add(place.expires);
            }
            if let (Some(waiting), Some(a)) = (counts.address.as_mut(), address) {
                if place.address.as_deref() == Some(a) {
                    waiting.add(place.expires);
                }
            }
        }
        counts
    }
}

/// How a request ended, in a shared store: the operator's decision, or `None` when it expired
/// first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Outcome {
    decision: Option<Decision>,
}

/// Reads and changes the ledger of `db` with compare-and-swap (see `Db::update`); a store
/// without one starts with an empty ledger.
fn update_ledger(db: &Db, mut f: impl FnMut(Ledger) -> Result<Ledger>) -> Result<Ledger> {
    match db.update(Table::Approvals, LEDGER, &mut f) {
        Err(Error::NotFound(_)) => {
            db.insert_new(Table::Approvals, LEDGER, &Ledger::default())?;
            db.update(Table::Approvals, LEDGER, f)
        }
        done => done,
    }
}

fn read_ledger(db: &Db) -> Result<Ledger> {
    Ok(db
        .get::<Ledger>(Table::Approvals, LEDGER)?
        .unwrap_or_default())
}

/// Refuses a new request of `account_id` (and from `source`, if known) when a cap on waiting
/// requests is reached (SPEC §5.8), given what the caps count.
fn check_caps(
    limits: &RateLimiter,
    account_id: &str,
    source: Option<IpAddr>,
    ttl: i64,
    counts: &Counts,
) -> Result<()> {
    // A request expires in the first sweep after its `expires` second; with a cap of zero
    // nothing waits, and a client is told to come back after one request's time.
    let retry = |waiting: &Waiting| {
        let secs = waiting
            .first_expires
            .map_or(ttl, |expires| expires - now() + 1)
            .max(1);
        Duration::from_secs(secs.unsigned_abs())
    };
    let total = limits.cap(
        LimitName::PendingApprovalsTotal,
        &Key::Account(String::new()),
    );
    if u32::try_from(counts.total.count).unwrap_or(u32::MAX) >= total {
        return Err(Error::RateLimited {
            detail: format!(
                "rate limit pending_approvals_total reached: {total} requests wait for an \
                 operator, the most this CA keeps at once"
            ),
            retry_after: retry(&counts.total),
        });
    }
    let mut counted = vec![(
        LimitName::PendingApprovalsPerAccount,
        Key::Account(account_id.to_owned()),
        &counts.account,
    )];
    if let (Some(ip), Some(waiting)) = (source, &counts.address) {
        counted.push((
            LimitName::PendingApprovalsPerAddress,
            Key::address(ip),
            waiting,
        ));
    }
    for (limit, key, waiting) in counted {
        let cap = limits.cap(limit, &key);
        if u32::try_from(waiting.count).unwrap_or(u32::MAX) < cap {
            continue;
        }
        return Err(RateLimiter::cap_reached(limit, &key, cap, retry(waiting)));
    }
    Ok(())
}

/// Where requests and decisions are kept: the files under `<data_dir>/approvals/`, or the
/// records of a store that several CA instances share; and in the server the index of pending
/// requests.
pub struct ApprovalQueue {
    pending: PathBuf,
    decisions: PathBuf,
    /// The store several CA instances share; `None`: the files above.
    shared: Option<Db>,
    index: Mutex<Index>,
    /// When the index was last brought in line with the shared store's ledger.
    refreshed: Mutex<Option<Instant>>,
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

fn request_key(id: &str) -> String {
    format!("{REQUEST}{id}")
}

fn outcome_key(id: &str) -> String {
    format!("{DECISION}{id}")
}

impl Place {
    fn of(p: &Pending) -> Self {
        Self {
            expires: p.expires,
            account: p.account_id.clone(),
            address: p.source.as_deref().map(source_key),
        }
    }
}

impl ApprovalQueue {
    /// The files of a data directory, for the operator commands, which read them directly.
    /// The index stays empty: the server uses [`ApprovalQueue::open`].
    pub fn new(data_dir: &Path) -> Self {
        let root = data_dir.join("approvals");
        Self {
            pending: root.join("pending"),
            decisions: root.join("decisions"),
            shared: None,
            index: Mutex::new(Index::default()),
            refreshed: Mutex::new(None),
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

    /// The requests and decisions in `db`, which several CA instances share, for the operator
    /// commands. The index stays empty: the server uses [`ApprovalQueue::open_in_store`].
    pub fn in_store(data_dir: &Path, db: Db) -> Self {
        Self {
            shared: Some(db),
            ..Self::new(data_dir)
        }
    }

    /// The queue in `db` for the server, with its index loaded from the store. Request files
    /// under `<data_dir>/approvals/` (made before the CA moved to the shared store) are copied
    /// into the store, with their decisions, and removed.
    pub fn open_in_store(data_dir: &Path, db: Db) -> Result<Self> {
        let q = Self::in_store(data_dir, db.clone());
        q.import_files(&db)?;
        q.sync(&db, &read_ledger(&db)?)?;
        Ok(q)
    }

    /// Copies the request files into `db` and removes them. A request whose authorization no
    /// longer waits for an operator (decided or expired meanwhile) is not copied: it would
    /// wait again. The files go once copied, or they would be copied again at the next start,
    /// as waiting, after the request was decided in the store. A request whose authorization
    /// the database does not hold stays, with its decision, for a start on the right database.
    fn import_files(&self, db: &Db) -> Result<()> {
        let mut imported = 0usize;
        for id in Self::ids(&self.pending)? {
            let file = Self::file(&self.pending, &id)?;
            let decision_file = Self::file(&self.decisions, &id)?;
            let Some(authz) = db.get::<Authz>(Table::Authzs, &id)? else {
                // Not in this database (one restored later, or the wrong one): the file stays
                // for a start on the right one.
                tracing::warn!(request = %id, file = %file.display(), "operator approval request file names an authorization this database does not hold; left in place");
                continue;
            };
            if let (true, Some(p)) = (waits_for_operator(&authz), read_json::<Pending>(&file)?) {
                let place = Place::of(&p);
                db.insert_new(Table::Approvals, &request_key(&p.id), &p)?;
                update_ledger(db, |mut l| {
                    l.waiting
                        .entry(p.id.clone())
                        .or_insert_with(|| place.clone());
                    Ok(l)
                })?;
                if let Some(decision) = read_json::<Decision>(&decision_file)? {
                    let outcome = Outcome {
                        decision: Some(decision),
                    };
                    db.insert_new(Table::Approvals, &outcome_key(&p.id), &outcome)?;
                }
                imported += 1;
            }
            remove(&decision_file)?;
            remove(&file)?;
        }
        for id in Self::ids(&self.decisions)? {
            if !Self::file(&self.pending, &id)?.exists() {
                remove(&Self::file(&self.decisions, &id)?)?;
            }
        }
        if imported > 0 {
            tracing::info!(imported, dir = %self.pending.display(), "operator approval requests copied from files into the shared store, and the files removed");
        }
        Ok(())
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

    /// How many requests wait for a decision, from the server's index (nothing is read; with
    /// a shared store the index follows the store within a second).
    pub fn pending_count(&self) -> usize {
        lock(&self.index).requests.len()
    }

    /// Requests waiting for a decision, oldest first, read from the files or the shared store.
    /// A request decided but not applied yet (the server applies decisions within a second) is
    /// not listed.
    pub fn list_pending(&self) -> Result<Vec<Pending>> {
        let mut out = Vec::new();
        if let Some(db) = &self.shared {
            let ledger = read_ledger(db)?;
            let decided: std::collections::HashSet<String> = db
                .keys_with_prefix(Table::Approvals, DECISION)?
                .into_iter()
                .filter_map(|k| k.strip_prefix(DECISION).map(str::to_owned))
                .collect();
            out = db
                .values_with_prefix::<Pending>(Table::Approvals, REQUEST)?
                .into_iter()
                .filter(|p| ledger.waiting.contains_key(&p.id) && !decided.contains(&p.id))
                .collect();
        } else {
            for id in Self::ids(&self.pending)? {
                if Self::file(&self.decisions, &id)?.exists() {
                    continue;
                }
                if let Some(p) = read_json::<Pending>(&Self::file(&self.pending, &id)?)? {
                    out.push(p);
                }
            }
        }
        out.sort_by(|a, b| (a.requested, &a.id).cmp(&(b.requested, &b.id)));
        Ok(out)
    }

    /// Records the operator's decision on a pending request; the server applies it. A
    /// decision is final: a second one for the same request is refused, so an approval cannot
    /// turn into a rejection (or the reverse) before the server has applied it. With a shared
    /// store this holds across instances (the decision is inserted only if none is there), and
    /// a request that expired meanwhile cannot be decided.
    pub fn decide(&self, id: &str, decision: &Decision) -> Result<Pending> {
        self.decide_recorded(id, decision, |_| Ok(()))
    }

    /// [`Self::decide`], calling `record` (the audit log's append) once the request is found
    /// decidable and before the decision is written: a decision that could not be recorded is
    /// not made. Only a decision that another one beat by a hair (two operators at once) can be
    /// recorded and then refused.
    pub fn decide_recorded(
        &self,
        id: &str,
        decision: &Decision,
        record: impl FnOnce(&Pending) -> Result<()>,
    ) -> Result<Pending> {
        let not_pending = || Error::Malformed(format!("no pending approval request {id:?}"));
        let already = || {
            Error::Exists(format!(
                "request {id:?} is already decided; the CA applies the decision within a second"
            ))
        };
        if let Some(db) = &self.shared {
            if !valid_id(id) {
                return Err(Error::Malformed(format!("{id:?} is not a request id")));
            }
            if !read_ledger(db)?.waiting.contains_key(id) {
                return Err(not_pending());
            }
            let pending = db
                .get::<Pending>(Table::Approvals, &request_key(id))?
                .ok_or_else(not_pending)?;
            if pending.expires < now() {
                // Its time ran out before any instance's sweep recorded it: record it now, so
                // that no decision can take its place.
                db.insert_new(
                    Table::Approvals,
                    &outcome_key(id),
                    &Outcome { decision: None },
                )?;
                return Err(Self::expired(id));
            }
            match db.get::<Outcome>(Table::Approvals, &outcome_key(id))? {
                Some(Outcome { decision: None }) => return Err(Self::expired(id)),
                Some(_) => return Err(already()),
                None => record(&pending)?,
            }
            let outcome = Outcome {
                decision: Some(decision.clone()),
            };
            if db.insert_new(Table::Approvals, &outcome_key(id), &outcome)? {
                return Ok(pending);
            }
            return match db.get::<Outcome>(Table::Approvals, &outcome_key(id))? {
                Some(Outcome { decision: None }) => Err(Self::expired(id)),
                _ => Err(already()),
            };
        }
        let pending =
            read_json::<Pending>(&Self::file(&self.pending, id)?)?.ok_or_else(not_pending)?;
        if Self::file(&self.decisions, id)?.exists() {
            return Err(already());
        }
        if pending.expires < now() {
            return Err(Self::expired(id));
        }
        record(&pending)?;
        ensure_private_dir(&self.decisions)?;
        let data = serde_json::to_vec_pretty(decision)
            .map_err(|e| Error::Internal(format!("cannot encode decision: {e}")))?;
        write_atomic(&Self::file(&self.decisions, id)?, &data, 0o600)?;
        Ok(pending)
    }

    /// The refusal of a decision on request `id`, whose time ran out.
    fn expired(id: &str) -> Error {
        Error::Malformed(format!(
            "request {id:?} has expired; the device must ask again with a new order"
        ))
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

    /// Forgets requests whose outcomes are applied, in the shared store: their places in the
    /// ledger, in one compare-and-swap however many there are, then their records and their
    /// outcomes (the outcome last, so a request cannot look undecided again). Returns those
    /// this call took off the ledger (another instance applying the same outcomes at once
    /// finds them gone).
    fn finish_in_store(&self, db: &Db, ids: &[String]) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut removed = Vec::new();
        update_ledger(db, |mut l| {
            removed = ids
                .iter()
                .filter(|id| l.waiting.remove(id.as_str()).is_some())
                .cloned()
                .collect();
            Ok(l)
        })?;
        for id in ids {
            db.remove(Table::Approvals, &request_key(id))?;
            db.remove(Table::Approvals, &outcome_key(id))?;
            lock(&self.index).remove(id);
        }
        Ok(removed)
    }

    /// Takes request `id` off the ledger; whether it was there.
    fn unplace(&self, db: &Db, id: &str) -> Result<bool> {
        let mut removed = false;
        update_ledger(db, |mut l| {
            removed = l.waiting.remove(id).is_some();
            Ok(l)
        })?;
        Ok(removed)
    }

    /// Brings the index in line with the shared store's `ledger`: drops what left it, and
    /// reads the records of requests it gained (one by one when they are few, else in one scan).
    fn sync(&self, db: &Db, ledger: &Ledger) -> Result<()> {
        let missing: Vec<String> = {
            let mut index = lock(&self.index);
            let gone: Vec<String> = index
                .requests
                .keys()
                .filter(|id| !ledger.waiting.contains_key(*id))
                .cloned()
                .collect();
            for id in gone {
                index.remove(&id);
            }
            ledger
                .waiting
                .keys()
                .filter(|id| !index.requests.contains_key(*id))
                .cloned()
                .collect()
        };
        let found: Vec<Pending> = if missing.len() <= 8 {
            let mut found = Vec::new();
            for id in &missing {
                found.extend(db.get::<Pending>(Table::Approvals, &request_key(id))?);
            }
            found
        } else {
            db.values_with_prefix::<Pending>(Table::Approvals, REQUEST)?
                .into_iter()
                .filter(|p| ledger.waiting.contains_key(&p.id))
                .collect()
        };
        let mut index = lock(&self.index);
        for p in found {
            if !index.requests.contains_key(&p.id) {
                index.insert(p);
            }
        }
        Ok(())
    }

    /// Whether applying decisions should read the shared store's ledger now: at most once per
    /// [`REFRESH`].
    fn refresh_due(&self) -> bool {
        let mut last = lock(&self.refreshed);
        let due = last.is_none_or(|t| t.elapsed() >= REFRESH);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// The request `id` if it is pending: from the index, or else from its file or record
    /// (one the index has not seen: with files, e.g. restored by hand while the server ran, and
    /// then indexed; with a shared store, one another instance added since the last refresh).
    fn pending_request(&self, id: &str) -> Result<Option<Pending>> {
        if let Some(p) = lock(&self.index).requests.get(id) {
            return Ok(Some(p.clone()));
        }
        if let Some(db) = &self.shared {
            return db.get::<Pending>(Table::Approvals, &request_key(id));
        }
        let p = read_json::<Pending>(&Self::file(&self.pending, id)?)?;
        if let Some(p) = &p {
            lock(&self.index).insert(p.clone());
        }
        Ok(p)
    }

    /// Starts the approval of authorization `authz_id` for `r` if its challenge is still
    /// `pending` and the caps allow: the challenge becomes `processing` and the request is
    /// recorded and indexed, all under the admission lock (and with a shared store, counted
    /// and placed in the ledger in one compare-and-swap). Returns the authorization and the
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
        let address = source.map(|ip| address_key(ip).to_string());
        if self.shared.is_none() {
            let counts = lock(&self.index).counts(&account.id, address.as_deref());
            check_caps(&app.limits, &account.id, source, ttl, &counts)?;
        }
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
        if let Some(db) = &self.shared {
            return self.admit_in_store(app, db, pending, source, ttl);
        }
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

    /// [`ApprovalQueue::admit`] with a shared store: the request takes its place in the ledger
    /// if the caps, counted over every instance's requests, allow; then the challenge becomes
    /// `processing` and the request's record is written. Each later step that fails gives the
    /// place back.
    fn admit_in_store(
        &self,
        app: &Ra,
        db: &Db,
        pending: Pending,
        source: Option<IpAddr>,
        ttl: i64,
    ) -> Result<(Authz, Option<Pending>)> {
        let id = pending.id.clone();
        let place = Place::of(&pending);
        let mut placed = false;
        let ledger = update_ledger(db, |mut l| {
            placed = false;
            if l.waiting.contains_key(&id) {
                return Ok(l);
            }
            let counts = l.counts(&place.account, place.address.as_deref());
            check_caps(&app.limits, &place.account, source, ttl, &counts)?;
            l.waiting.insert(id.clone(), place.clone());
            placed = true;
            Ok(l)
        })?;
        let give_back = |why: &str| {
            if let Err(e) = self.unplace(db, &id) {
                tracing::error!(request = %id, error = %e, "{why}, and its place among the waiting requests could not be given back; it counts against the caps until it expires");
            }
        };
        if !placed {
            // Another instance is starting this very request.
            let authz = app
                .db
                .get::<Authz>(Table::Authzs, &id)?
                .ok_or(Error::NotFound("authorization"))?;
            return Ok((authz, None));
        }
        let (authz, triggered) = match start_processing(app, &id, KIND) {
            Ok(started) => started,
            Err(e) => {
                give_back("the approval request could not start");
                return Err(e);
            }
        };
        if !triggered {
            give_back("the approval request was started elsewhere");
            return Ok((authz, None));
        }
        if let Err(e) = db.put(Table::Approvals, &request_key(&id), &pending) {
            // Without its record no operator can see the request: put the challenge back to
            // `pending` so that the device can ask again.
            give_back("the approval request could not be recorded");
            undo_start(app, &id)?;
            return Err(e);
        }
        self.sync(db, &ledger)?;
        Ok((authz, Some(pending)))
    }
}

/// Whether `authz` waits for an operator: its operator-approval-01 challenge is `processing`.
fn waits_for_operator(authz: &Authz) -> bool {
    authz.status() == AuthzStatus::Pending
        && authz
            .challenges
            .iter()
            .any(|c| c.kind == KIND && c.status == ChallengeStatus::Processing)
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
    if let Some(db) = &q.shared {
        return apply_in_store(app, q, db).await;
    }
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
        let outcome = outcome_of(decision.as_ref());
        record(app, &p.id, &outcome).await?;
        tracing::info!(request = %p.id, identifier = %p.identifier, approved = outcome.is_ok(),
            expired = decision.is_none(), "approval request decided");
        // The store holds the outcome now; the files have done their job.
        q.finish(&p.id)?;
    }
    Ok(())
}

/// What a decision, or the expiry (`None`), makes of the challenge.
fn outcome_of(decision: Option<&Decision>) -> Result<()> {
    match decision {
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
    }
}

/// Records `outcome` on the challenge of authorization `id`, if it still exists; a challenge
/// no longer waiting is left as it is (`record_outcome`).
async fn record(app: &Ra, id: &str, outcome: &Result<()>) -> Result<()> {
    match app.db.get::<Authz>(Table::Authzs, id)? {
        // Only a challenge the device triggered waits for an operator: an outcome for any
        // other (a stray record, a request finished meanwhile) decides nothing.
        Some(a) if waits_for_operator(&a) => {
            record_outcome(app, id, KIND, outcome)?;
            app.db.flush().await?;
        }
        Some(_) => {
            tracing::warn!(request = %id, "approval outcome for a challenge that waits for no operator dropped");
        }
        None => tracing::warn!(request = %id, "approval for an unknown authorization"),
    }
    Ok(())
}

/// [`apply`] with a shared store. Reading the ledger (at most once per [`REFRESH`]) brings the
/// index in line and records the expiry of each request past its time, unless an outcome is
/// there already; then every recorded outcome is applied, whichever instance recorded it.
async fn apply_in_store(app: &Ra, q: &ApprovalQueue, db: &Db) -> Result<()> {
    if q.refresh_due() {
        let ledger = read_ledger(db)?;
        q.sync(db, &ledger)?;
        let now = now();
        for (id, place) in &ledger.waiting {
            if place.expires < now {
                // First come: an operator's decision recorded earlier stands.
                db.insert_new(
                    Table::Approvals,
                    &outcome_key(id),
                    &Outcome { decision: None },
                )?;
            }
        }
    }
    let mut applied = Vec::new();
    for (key, raw) in db
        .store()
        .scan_prefix(Table::Approvals, DECISION.as_bytes())?
    {
        let key = String::from_utf8_lossy(&key);
        let Some(id) = key.strip_prefix(DECISION).filter(|id| valid_id(id)) else {
            continue;
        };
        let decision = serde_json::from_slice::<Outcome>(&raw)
            .map_err(|e| Error::Storage(format!("corrupt approval outcome {id}: {e}")))?
            .decision;
        let request = q.pending_request(id)?;
        let outcome = outcome_of(decision.as_ref());
        // Another instance may apply the same outcome at once: one of the two changes the
        // challenge, the other finds it decided.
        record(app, id, &outcome).await?;
        applied.push((id.to_owned(), request, outcome.is_ok(), decision.is_none()));
    }
    let ids: Vec<String> = applied.iter().map(|(id, ..)| id.clone()).collect();
    let removed = q.finish_in_store(db, &ids)?;
    for (id, request, approved, expired) in applied {
        if removed.contains(&id) {
            tracing::info!(request = %id,
                identifier = %request.map(|p| p.identifier.to_string()).unwrap_or_default(),
                approved, expired, "approval request decided");
        }
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
        q.add(&pending("abc", "plc-1", "acct", "10.0.0.1", now() + 60))
            .expect("add");
        q.add(&pending("old", "plc-2", "acct", "10.0.0.1", now() - 1))
            .expect("add");
        assert_eq!(q.list_pending().expect("list").len(), 2);
        let late = q.decide("old", &Decision::Approve).expect_err("expired");
        assert!(late.to_string().contains("expired"), "{late}");
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
    fn a_decision_that_cannot_be_recorded_is_not_made() {
        let dir = tempfile::tempdir().expect("tmp");
        let q = ApprovalQueue::new(dir.path());
        q.add(&pending("abc", "plc-1", "acct", "10.0.0.1", now() + 60))
            .expect("add");
        let down = || Error::Storage("the audit log is unreachable".into());
        let e = q
            .decide_recorded("abc", &Decision::Approve, |_| Err(down()))
            .expect_err("not recorded");
        assert!(e.to_string().contains("audit log"), "{e}");
        assert!(!ApprovalQueue::file(&q.decisions, "abc")
            .expect("path")
            .exists());
        // Still pending: decided, and recorded, once the log takes the entry.
        let mut calls = 0;
        q.decide_recorded("abc", &Decision::Approve, |p| {
            calls += 1;
            assert_eq!(p.id, "abc");
            Ok(())
        })
        .expect("decided");
        // A request that cannot be decided is never recorded.
        q.decide_recorded("abc", &Decision::Approve, |_| {
            calls += 1;
            Ok(())
        })
        .expect_err("already decided");
        assert_eq!(calls, 1);
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
