//! Durable storage behind a small key-value trait.
//!
//! The protocol code only sees [`Db`], a typed layer over [`Store`]. A backend needs five
//! operations: get, put, compare-and-swap, prefix scan and a durability barrier, so another
//! backend (PostgreSQL for several CA instances: `UPDATE … WHERE value = $old`) can be added
//! without touching the handlers. State transitions use compare-and-swap, never
//! read-modify-write, so two requests racing on one object (two finalizes) cannot both win.

pub mod limits;
mod memory;
pub mod postgres;
mod sled;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use self::memory::MemoryStore;
pub use self::postgres::{PgLoad, PgStore, PostgresConfig};
pub use self::sled::{Compacted, SledStore};
use crate::{Error, Result};
use std::time::Duration;

/// The logical tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// account id → `Account`.
    Accounts,
    /// JWK thumbprint → account id (one account per key, RFC 8555 §7.3).
    AccountKeys,
    /// order id → `Order`.
    Orders,
    /// account id ‖ 0x00 ‖ order id → empty (the account's orders list, §7.1.2.1).
    AccountOrders,
    /// authorization id → `Authz`.
    Authzs,
    /// certificate id (serial hex) → `Certificate`.
    Certificates,
    /// EAB key id → usage record.
    EabUsage,
    /// Server metadata (schema version, CRL number).
    Meta,
    /// serial hex → `Revocation`, so the CRL is built without scanning every certificate.
    Revocations,
    /// SHA-256 of a certified key's SubjectPublicKeyInfo (hex) → `keycheck::KeyUse`.
    KeyUse,
    /// `{unix nanoseconds}.{id}` → `keycheck::KeyReuseAttempt` (refused key reuse).
    KeyReuseAttempts,
    /// `{unix nanoseconds}.{id}` → `keycheck::WeakKeyAttempt` (refused weak keys and weak CSR
    /// signatures; bounded, see `keycheck::attempts`).
    WeakKeyAttempts,
    /// `type:value` of an identifier, or `uri:` and an ApplicationUri → `identity::Holding`
    /// (which account holds it).
    Identities,
    /// `hex(issue time ‖ random)` → empty: nonces redeemed, when several instances share the
    /// store (`wfe::nonce`), until they expire.
    Nonces,
    /// EAB key id → `eab::Credential`, when several instances share the store (with the
    /// embedded store credentials are files, `ra::eab`).
    Credentials,
    /// Binary records retention keeps for good once a certificate is reduced
    /// (`ra::history`): `h` ‖ device id → a device's reduced certificates, `s` ‖ serial bytes
    /// → device id, `k` ‖ SHA-256 of a key's SubjectPublicKeyInfo → its retired key use.
    History,
    /// Operator-approval requests, when several instances share the store (with the embedded
    /// store they are files, `ra::approval`): `queue` → the requests waiting and what the caps
    /// count of each, `request/` ‖ id → `approval::Pending`, `decision/` ‖ id → how the
    /// request ended (the operator's decision, or its expiry).
    Approvals,
    /// Trust anchor name → the anchor's RFC 7468 file text, when several instances share the
    /// store (with the embedded store anchors are files, `va::attest::anchors`).
    TrustAnchors,
    /// Audit log entry number, 20 zero-padded decimal digits → the entry's JSON bytes, when
    /// several instances share the store (with the embedded store the log is a file,
    /// `ra::audit`).
    AuditLog,
    /// Rate-limit buckets and validation slots, when several instances share the store (with
    /// the embedded store they live in memory): see `storage::limits`.
    RateLimits,
    /// Console operator name → `operator::Operator` (the record JSON), when several instances
    /// share the store (with the embedded store operators are files, `ra::operator`).
    Operators,
}

impl Table {
    /// Every table, for backends that create them up front.
    pub const ALL: [Self; 21] = [
        Self::Accounts,
        Self::AccountKeys,
        Self::Orders,
        Self::AccountOrders,
        Self::Authzs,
        Self::Certificates,
        Self::EabUsage,
        Self::Meta,
        Self::Revocations,
        Self::KeyUse,
        Self::KeyReuseAttempts,
        Self::WeakKeyAttempts,
        Self::Identities,
        Self::Nonces,
        Self::Credentials,
        Self::History,
        Self::Approvals,
        Self::TrustAnchors,
        Self::AuditLog,
        Self::RateLimits,
        Self::Operators,
    ];

    /// A stable name for the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Accounts => "accounts",
            Self::AccountKeys => "account_keys",
            Self::Orders => "orders",
            Self::AccountOrders => "account_orders",
            Self::Authzs => "authzs",
            Self::Certificates => "certificates",
            Self::EabUsage => "eab_usage",
            Self::Meta => "meta",
            Self::Revocations => "revocations",
            Self::KeyUse => "key_use",
            Self::KeyReuseAttempts => "key_reuse_attempts",
            Self::WeakKeyAttempts => "weak_key_attempts",
            Self::Identities => "identities",
            Self::Nonces => "nonces",
            Self::Credentials => "credentials",
            Self::History => "history",
            Self::Approvals => "approvals",
            Self::TrustAnchors => "trust_anchors",
            Self::AuditLog => "audit_log",
            Self::RateLimits => "rate_limits",
            Self::Operators => "operators",
        }
    }
}

/// What [`Store::snapshot`] calls with each entry: its table, key and value.
pub type SnapshotSink<'a> = dyn FnMut(Table, &[u8], &[u8]) -> Result<()> + 'a;

/// A future returned by [`Store::flush`].
pub type FlushFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// What a storage backend provides.
pub trait Store: Send + Sync + 'static {
    /// The value under `key`, if any.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Writes `value` under `key` unconditionally.
    fn put(&self, table: Table, key: &[u8], value: &[u8]) -> Result<()>;
    /// Atomically replaces `old` (`None`: absent) by `new` (`None`: delete). `Ok(false)` when
    /// the current value is not `old`; nothing is written then.
    fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool>;
    /// All entries whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// At most `limit` entries whose key sorts after `after` (from the first with an empty
    /// `after`), in key order: for walking a large table a page at a time.
    fn scan_after(
        &self,
        table: Table,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Removes every entry of `table` whose key sorts before `end`; returns how many. A page
    /// at a time by compare-and-swap, unless the backend does it in one statement.
    fn remove_before(&self, table: Table, end: &[u8]) -> Result<usize> {
        const PAGE: usize = 1000;
        let mut removed = 0;
        loop {
            let page = self.scan_after(table, b"", PAGE)?;
            let mut last = page.len() < PAGE;
            for (key, value) in &page {
                if key.as_slice() >= end {
                    last = true;
                    break;
                }
                if self.compare_and_swap(table, key, Some(value), None)? {
                    removed += 1;
                }
            }
            if last {
                return Ok(removed);
            }
        }
    }
    /// Writes since the last [`Store::checkpoint`] (or since the store was opened), and the
    /// time since the last write. A backend with no restart work to bound reports none.
    fn write_activity(&self) -> (u64, Duration) {
        (0, Duration::MAX)
    }
    /// Bounds the work the next start must do (sled: replaying its log). Blocking, and other
    /// store calls may wait while it runs; `StorageConfig::checkpoint_due` says when the server
    /// calls it.
    fn checkpoint(&self) -> Result<()> {
        Ok(())
    }
    /// Gives back the space of removed records if the backend's files have grown enough
    /// since it last did (sled: a copy and a swap, see `storage::sled::compact`); `Ok(None)`
    /// when it did nothing. Blocking; the server calls it from its storage tick.
    fn compact_if_grown(&self) -> Result<Option<Compacted>> {
        Ok(None)
    }
    /// Brings a backend that failed (an I/O error, a full disk) back into service once the
    /// cause is gone, without a restart; `Ok(false)` when nothing had failed. Blocking; the
    /// server calls it from its storage tick ([`Db::recover`]).
    fn recover(&self) -> Result<bool> {
        Ok(false)
    }
    /// Durability barrier. Inside [`request_scope`]: resolves once every write the request
    /// made, and every write whose result it read, is on stable storage. Outside one: once
    /// every write that completed before the call is.
    fn flush(&self) -> FlushFuture<'_>;
    /// Calls `each` with every entry of every table (in [`Table::ALL`] order, then key order)
    /// as of one instant: no write lands while it runs, store calls wait for it. Blocking; for
    /// backups ([`Db::snapshot`]).
    fn snapshot(&self, each: &mut SnapshotSink<'_>) -> Result<()>;
}

/// Default of `storage.cache_mib`. sled's own default, 1 GiB, let the server grow to 1.3 GiB
/// of RSS in a soak; the store's hot records (recent orders, nonces aside) fit in far less.
/// sled holds memory beyond its cache too, growing with the writes since it was opened
/// (docs/reliability.md, "Where the memory goes").
pub const CACHE_MIB: u64 = 256;
/// The smallest `storage.cache_mib`: below it sled evicts pages it is still writing.
pub const CACHE_MIB_MIN: u64 = 16;

/// Default of `storage.checkpoint_writes`: a checkpoint is not worth a pause below this many
/// writes (a replay of about 50 ms).
pub const CHECKPOINT_MIN_WRITES: u64 = 50_000;
/// Default of `storage.checkpoint_idle`: how long the store must have seen no write before a
/// checkpoint is taken.
pub const CHECKPOINT_IDLE: Duration = Duration::from_secs(10);
/// Default of `storage.checkpoint_max_writes`: past this many writes a checkpoint is taken
/// even under load, so a restart after a power cut
/// replays at most this many records. With a million devices in the store, an ordinary start
/// took 0.5-1.1 s and a checkpoint after 700,000 writes 1.6 s (`benches/scale.rs`):
/// this keeps the worst restart within the 2 s target, at the price of a pause of about a
/// second every ~70,000 enrollments of a sustained load.
pub const CHECKPOINT_MAX_WRITES: u64 = 500_000;

tokio::task_local! {
    /// The write sequence number a request's response must wait for (see [`request_scope`]).
    static TICKET: std::cell::Cell<u64>;
}

/// Runs one request with its own durability ticket.
///
/// A response must not report state a crash could take back, but it need not wait for the
/// writes of other requests it never saw. Within the scope, the store raises the ticket to the
/// sequence number of each write the request makes and of each not-yet-durable write whose key
/// it reads, and [`Db::flush`] waits for that ticket only: a directory, a nonce or a poll of
/// state already on disk answers without waiting for anyone's flush. Tasks spawned by the
/// request run outside the scope and flush conservatively.
pub async fn request_scope<F: Future>(f: F) -> F::Output {
    TICKET.scope(std::cell::Cell::new(0), f).await
}

/// Raises the current request's ticket to `seq`; a no-op outside [`request_scope`].
fn note_ticket(seq: u64) {
    // Err only outside a scope, where the flush falls back to the global sequence.
    let _ = TICKET.try_with(|t| t.set(t.get().max(seq)));
}

/// The current request's ticket, or `None` outside [`request_scope`].
fn scoped_ticket() -> Option<u64> {
    TICKET.try_with(std::cell::Cell::get).ok()
}

/// Typed access to a [`Store`]: values are JSON documents.
#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
    /// Shared by each [`Db::write_group`], exclusive during a [`Db::snapshot`].
    groups: Arc<std::sync::RwLock<()>>,
}

/// A group of writes under way that a [`Db::snapshot`] sees whole or not at all.
pub struct WriteGroup<'a> {
    _held: std::sync::RwLockReadGuard<'a, ()>,
}

impl Db {
    /// Wraps a backend.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            groups: Arc::default(),
        }
    }

    /// Starts a group of writes that a [`Db::snapshot`] must see whole or not at all, such as
    /// an issuance (the certificate, its key and identity records, the order's new state) or
    /// a revocation (the certificate's state and the record the CRL is built from). Waits
    /// while a snapshot runs. Hold it over store calls only, never across an `.await`, and
    /// never take a second one while holding one (a waiting snapshot would deadlock them).
    pub fn write_group(&self) -> WriteGroup<'_> {
        let held = match self.groups.try_read() {
            Ok(held) => held,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            // As a store call waiting for a checkpoint: free the worker for other tasks.
            Err(std::sync::TryLockError::WouldBlock) => {
                let wait = || self.groups.read().unwrap_or_else(|p| p.into_inner());
                if sled::on_multi_thread_runtime() {
                    tokio::task::block_in_place(wait)
                } else {
                    wait()
                }
            }
        };
        WriteGroup { _held: held }
    }

    /// Calls `each` with every entry of every table as of one instant. Blocking; for backups.
    ///
    /// Two locks make it consistent. The store's own ([`Store::snapshot`]; for sled the lock
    /// a checkpoint takes) keeps every single write out while the tables are read, so the
    /// tables agree with each other at one write. A write made of several store calls (an
    /// issuance writes the certificate, its key-use and identity records and the order) could
    /// still be cut in two between its calls, so the snapshot first waits until no
    /// [`Db::write_group`] is open and keeps new ones waiting until it ends.
    ///
    /// The alternatives were weighed: sled 0.34's `Db::export` iterates each tree lazily
    /// without any isolation, so it needs the same lock; copying sled's files after a
    /// checkpoint needs it as well, plus a reopen of the copy to read it. Writers wait while
    /// the tables are read (and the backup written), which the server's callers already
    /// handle, as they do during a checkpoint.
    pub fn snapshot(&self, each: &mut SnapshotSink<'_>) -> Result<()> {
        let _no_group_open = self.groups.write().unwrap_or_else(|p| p.into_inner());
        self.store.snapshot(each)
    }

    /// The raw backend.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Reads and decodes one value.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>> {
        self.store
            .get(table, key.as_bytes())?
            .map(|v| decode(table, &v))
            .transpose()
    }

    /// Encodes and writes one value unconditionally (for objects only their creator knows).
    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<()> {
        self.store.put(table, key.as_bytes(), &encode(value)?)
    }

    /// Inserts `value` only if `key` is absent; `Ok(false)` if it exists.
    pub fn insert_new<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<bool> {
        self.store
            .compare_and_swap(table, key.as_bytes(), None, Some(&encode(value)?))
    }

    /// Read-modify-write under compare-and-swap: `f` sees the current value and returns the new
    /// one (or an error, which aborts without writing). Retries when another writer got in
    /// between, so `f` must be a pure function of its input. Returns the value written.
    pub fn update<T, F>(&self, table: Table, key: &str, mut f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(T) -> Result<T>,
    {
        loop {
            let raw = self
                .store
                .get(table, key.as_bytes())?
                .ok_or(Error::NotFound(table.name()))?;
            let new = f(decode(table, &raw)?)?;
            let new_raw = encode(&new)?;
            if new_raw == raw {
                return Ok(new);
            }
            if self
                .store
                .compare_and_swap(table, key.as_bytes(), Some(&raw), Some(&new_raw))?
            {
                return Ok(new);
            }
        }
    }

    /// Deletes `key`; `Ok(false)` if it was absent.
    pub fn remove(&self, table: Table, key: &str) -> Result<bool> {
        loop {
            let Some(raw) = self.store.get(table, key.as_bytes())? else {
                return Ok(false);
            };
            if self
                .store
                .compare_and_swap(table, key.as_bytes(), Some(&raw), None)?
            {
                return Ok(true);
            }
        }
    }

    /// Keys (as text) under a prefix.
    pub fn keys_with_prefix(&self, table: Table, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .store
            .scan_prefix(table, prefix.as_bytes())?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect())
    }

    /// Decoded values under a prefix.
    pub fn values_with_prefix<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<T>> {
        self.store
            .scan_prefix(table, prefix.as_bytes())?
            .iter()
            .map(|(_, v)| decode(table, v))
            .collect()
    }

    /// Waits until every write completed so far is durable, whatever the current request's
    /// ticket: for work whose reads ran outside the request's task (on the blocking pool).
    pub async fn flush_all(&self) -> Result<()> {
        let store = self.store.clone();
        // A task of its own runs outside any request scope, where a flush covers every write.
        tokio::spawn(async move { store.flush().await })
            .await
            .map_err(|e| Error::Storage(format!("flush task failed: {e}")))?
    }

    /// Takes a checkpoint (on the blocking pool) if `due` says so given the store's
    /// [`Store::write_activity`]; the server passes `StorageConfig::checkpoint_due`. Returns
    /// whether it did.
    pub async fn checkpoint_if(&self, due: impl Fn(u64, Duration) -> bool) -> Result<bool> {
        let (writes, idle) = self.store.write_activity();
        if !due(writes, idle) {
            return Ok(false);
        }
        let store = self.store.clone();
        let start = std::time::Instant::now();
        tokio::task::spawn_blocking(move || store.checkpoint())
            .await
            .map_err(|e| Error::Storage(format!("checkpoint task failed: {e}")))??;
        tracing::info!(
            writes,
            took_ms = start.elapsed().as_millis(),
            "storage checkpoint: the next start replays nothing written before it"
        );
        Ok(true)
    }

    /// [`Store::compact_if_grown`] on the blocking pool.
    pub async fn compact_if_grown(&self) -> Result<Option<Compacted>> {
        let store = self.store.clone();
        let done = tokio::task::spawn_blocking(move || store.compact_if_grown())
            .await
            .map_err(|e| Error::Storage(format!("compaction task failed: {e}")))??;
        if let Some(c) = &done {
            tracing::info!(
                before_bytes = c.before,
                after_bytes = c.after,
                records = c.records,
                rewritten = c.rewritten,
                paused_ms = c.paused.as_millis(),
                took_ms = c.took.as_millis(),
                "storage compacted: the space of removed records is free again"
            );
        }
        Ok(done)
    }

    /// [`Store::recover`] on the blocking pool: whether the store had failed and is back.
    pub async fn recover(&self) -> Result<bool> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.recover())
            .await
            .map_err(|e| Error::Storage(format!("recovery task failed: {e}")))?
    }

    /// Waits until everything this request wrote or read is durable (everything written so
    /// far, outside a [`request_scope`]). Handlers call this before answering, so a client
    /// never sees state a crash could take back.
    pub async fn flush(&self) -> Result<()> {
        self.store.flush().await
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(format!("cannot encode record: {e}")))
}

fn decode<T: DeserializeOwned>(table: Table, raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw)
        .map_err(|e| Error::Storage(format!("corrupt record in table {}: {e}", table.name())))
}

/// The store (`[storage]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where records live: `sled` in `<data_dir>/db`, or a `postgres` database that several
    /// CA instances share.
    pub backend: Backend,
    /// With `backend = "postgres"`: `postgres://user@host:port/database`, without a password.
    pub url: Option<String>,
    /// With `backend = "postgres"`: a file holding the database password (else `PGPASSWORD`).
    pub password_file: Option<std::path::PathBuf>,
    /// With `backend = "postgres"`: connections each CA instance keeps.
    pub pool_size: usize,
    /// With `backend = "postgres"`: TLS to the database, required once this is set. PEM file
    /// of the certificates that may sign the database's certificate, which must also name the
    /// URL's host. Without it the database must be on a Unix socket or a loopback address.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// With `tls_ca_file`: the CA's client certificate chain (PEM), for a database that
    /// authenticates clients by certificate.
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// With `tls_cert_file`: its private key (PEM).
    pub tls_key_file: Option<std::path::PathBuf>,
    /// What a response waits for before it reports new state.
    pub durability: Durability,
    /// The sled page cache, in MiB (at least [`CACHE_MIB_MIN`]). It bounds one part of the
    /// process's memory: sled fills the cache under a sustained load, and uses some multiple
    /// of it, since it counts a page by its serialized size. The rest sled holds grows with
    /// the writes since it was opened, and an idle checkpoint (a reopen) gives most of it back.
    pub cache_mib: u64,
    /// Checkpoint the store (bound what the next start replays) once this many writes are in
    /// and it has been idle for `checkpoint_idle`. 0: never when idle.
    pub checkpoint_writes: u64,
    /// How long without a write counts as idle for a checkpoint.
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
    pub checkpoint_idle: Duration,
    /// Checkpoint after this many writes even under load, so a restart after a power cut
    /// replays at most this many records (about 1.5 s for 500,000 with a million devices in
    /// the store). 0: never under load.
    pub checkpoint_max_writes: u64,
    /// How long orders and authorizations are kept after they expired or completed, and a
    /// certificate's full record after its notAfter, before the pruner removes them (the
    /// certificate is reduced to an index entry; `ra::retention`).
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
    pub retention: Duration,
    /// With `backend = "postgres"`: how long an instance's heartbeat may stand still before
    /// the others take up the work it had under way (`ra::instances`).
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
    pub takeover_after: Duration,
}

/// Default of `storage.takeover_after`: three times the longest a store call may take
/// ([`postgres::STATEMENT_DEADLINE`]), so that an instance whose heartbeat is only held up by
/// a slow database is not taken for gone.
pub const TAKEOVER_AFTER: Duration = Duration::from_secs(30);

/// Default of `storage.retention`.
pub const RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// The longest `storage.retention` accepted: past this nothing is ever pruned in practice, and
/// a typo (`"30000d"`) should not pass silently.
pub const RETENTION_MAX: Duration = Duration::from_secs(100 * 365 * 86_400);
/// Below this `storage.retention` is for labs: a client polling an order or an authorization
/// later than that gets 404 (the server warns at start).
pub const RETENTION_WARN_BELOW: Duration = Duration::from_secs(3600);

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: Backend::default(),
            url: None,
            password_file: None,
            pool_size: postgres::POOL_SIZE,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            durability: Durability::default(),
            cache_mib: CACHE_MIB,
            checkpoint_writes: CHECKPOINT_MIN_WRITES,
            checkpoint_idle: CHECKPOINT_IDLE,
            checkpoint_max_writes: CHECKPOINT_MAX_WRITES,
            retention: RETENTION,
            takeover_after: TAKEOVER_AFTER,
        }
    }
}

impl StorageConfig {
    /// The PostgreSQL settings with `backend = "postgres"`; refuses them with `sled`, where
    /// they would be silently ignored, and a `postgres` backend without a URL.
    pub fn postgres(&self) -> std::result::Result<Option<PostgresConfig>, String> {
        match (self.backend, &self.url) {
            (Backend::Postgres, Some(url)) => Ok(Some(PostgresConfig {
                url: url.clone(),
                password_file: self.password_file.clone(),
                pool_size: self.pool_size,
                tls: self.postgres_tls()?,
            })),
            (Backend::Postgres, None) => Err(
                "storage.backend = \"postgres\" needs storage.url = \"postgres://user@host:port/database\""
                    .to_owned(),
            ),
            (Backend::Sled, _)
                if self.url.is_some()
                    || self.password_file.is_some()
                    || self.tls_ca_file.is_some()
                    || self.tls_cert_file.is_some()
                    || self.tls_key_file.is_some() =>
            {
                Err(
                    "storage.url, storage.password_file and storage.tls_* are for \
                     storage.backend = \"postgres\"; the backend is \"sled\""
                        .to_owned(),
                )
            }
            (Backend::Sled, _) => Ok(None),
        }
    }

    /// `tls_ca_file` and the client certificate, which come as a pair and only with it.
    fn postgres_tls(&self) -> std::result::Result<Option<postgres::PostgresTls>, String> {
        let client = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => {
                return Err(
                    "storage.tls_cert_file and storage.tls_key_file go together: set both or \
                     neither"
                        .to_owned(),
                )
            }
        };
        match (&self.tls_ca_file, client) {
            (Some(ca_file), client) => Ok(Some(postgres::PostgresTls {
                ca_file: ca_file.clone(),
                client,
            })),
            (None, None) => Ok(None),
            (None, Some(_)) => Err(
                "storage.tls_cert_file needs storage.tls_ca_file: the database's certificate \
                 is verified whenever the CA presents its own"
                    .to_owned(),
            ),
        }
    }

    /// Opens the configured backend (`data_dir` holds sled's files).
    pub fn open(&self, data_dir: &std::path::Path) -> Result<Arc<dyn Store>> {
        match self.postgres().map_err(Error::Internal)? {
            Some(pg) => Ok(Arc::new(PgStore::open(&pg, self.durability)?)),
            None => Ok(Arc::new(SledStore::open_with(
                &data_dir.join("db"),
                self.durability,
                self.cache_mib,
            )?)),
        }
    }

    /// Refuses a retention that is zero, has a fraction of a second, or is longer than
    /// [`RETENTION_MAX`].
    pub fn check_retention(&self) -> std::result::Result<(), String> {
        let r = self.retention;
        if r < Duration::from_secs(1) || r.subsec_nanos() != 0 || r > RETENTION_MAX {
            return Err(format!(
                "storage.retention must be whole seconds between 1s and 36500d (100 years), \
                 e.g. \"30d\"; it is {r:?}"
            ));
        }
        Ok(())
    }

    /// Refuses a `takeover_after` under 1 s or over 10 minutes.
    pub fn check_takeover(&self) -> std::result::Result<(), String> {
        let t = self.takeover_after;
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&t) {
            return Err(format!(
                "storage.takeover_after must be between 1s and 10m, e.g. \"10s\"; it is {t:?}"
            ));
        }
        Ok(())
    }

    /// How often the pruner runs: a tenth of the retention, between 1 s and 5 minutes.
    pub fn prune_interval(&self) -> Duration {
        (self.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(300))
    }

    /// Whether the server should checkpoint the store now, given [`crate::storage::Store::write_activity`]:
    /// when enough was written and the store has been idle for a while (a line finished
    /// enrolling), or, under sustained load, when the replay would otherwise grow past the
    /// restart budget.
    pub fn checkpoint_due(&self, writes: u64, idle: Duration) -> bool {
        let idle_due = self.checkpoint_writes > 0
            && writes >= self.checkpoint_writes
            && idle >= self.checkpoint_idle;
        let load_due = self.checkpoint_max_writes > 0 && writes >= self.checkpoint_max_writes;
        idle_due || load_due
    }
}

/// A file in the data directory of a CA that keeps its records in PostgreSQL, so commands
/// that would otherwise read or write files there (`ca-server eab`, `trust-anchor`,
/// `audit --log`, and those that record to the audit log) know to ask for the configuration.
pub const SHARED_MARKER: &str = "storage-is-postgres";

/// What the [`SHARED_MARKER`] file says, for the operator who finds it.
pub const SHARED_MARKER_TEXT: &[u8] =
    b"This CA keeps its records, enrollment credentials, operator \
    approvals, trust anchors and audit log included, in PostgreSQL (storage.backend = \
    \"postgres\"). Give `ca-server eab`, `approval`, `trust-anchor`, `audit --log` and the \
    commands that record to the audit log their --config.\n";

/// The storage backend (`storage.backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The embedded store in `<data_dir>/db`, for one CA process.
    #[default]
    Sled,
    /// A PostgreSQL database several CA instances share ([`PgStore`]).
    Postgres,
}

/// How far a write has gone before the response that reports it is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// On stable storage: sled's flush, then `fdatasync` of its data file, which also empties
    /// the disk's volatile write cache. Survives a power cut, a kernel crash and a killed process.
    #[default]
    PowerLoss,
    /// Handed to the disk: sled's flush alone (Linux `sync_file_range`, which waits for the
    /// write but neither flushes the disk's write cache nor syncs file metadata). Survives a
    /// killed or crashed server process, not necessarily a power cut. For storage with a
    /// battery- or capacitor-backed cache, or benchmarks.
    ProcessCrash,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Vec<(&'static str, Db, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let sled = SledStore::open(dir.path()).expect("open sled");
        vec![
            ("memory", Db::new(Arc::new(MemoryStore::default())), None),
            ("sled", Db::new(Arc::new(sled)), Some(dir)),
            (
                "postgres",
                Db::new(Arc::new(postgres::tests::fresh_store())),
                None,
            ),
        ]
    }

    /// The raw operations, the same on every backend: compare-and-swap in its four forms,
    /// prefix scans up to keys ending in 0xff, and paging.
    #[test]
    fn every_backend_implements_the_same_store() {
        for (name, db, _dir) in backends() {
            let s = db.store();
            let t = Table::Orders;
            assert!(
                s.compare_and_swap(t, b"k", None, None).expect("cas"),
                "{name}"
            );
            assert!(
                s.compare_and_swap(t, b"k", None, Some(b"1")).expect("cas"),
                "{name}"
            );
            assert!(
                !s.compare_and_swap(t, b"k", None, Some(b"2")).expect("cas"),
                "{name}"
            );
            assert!(
                !s.compare_and_swap(t, b"k", None, None).expect("cas"),
                "{name}"
            );
            assert!(
                !s.compare_and_swap(t, b"k", Some(b"2"), Some(b"3"))
                    .expect("cas"),
                "{name}"
            );
            assert!(
                s.compare_and_swap(t, b"k", Some(b"1"), Some(b"3"))
                    .expect("cas"),
                "{name}"
            );
            assert!(
                !s.compare_and_swap(t, b"k", Some(b"1"), None).expect("cas"),
                "{name}"
            );
            assert_eq!(
                s.get(t, b"k").expect("get").as_deref(),
                Some(&b"3"[..]),
                "{name}"
            );
            assert!(
                s.compare_and_swap(t, b"k", Some(b"3"), None).expect("cas"),
                "{name}"
            );
            assert_eq!(s.get(t, b"k").expect("get"), None, "{name}");
            for key in [&b"a\xff"[..], b"a\xff\xff", b"a\xfe", b"b", b"a", b"ab"] {
                s.put(t, key, key).expect("put");
            }
            s.put(Table::Authzs, b"a1", b"other table").expect("put");
            let keys = |pairs: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<Vec<u8>> {
                pairs.into_iter().map(|(k, _)| k).collect()
            };
            let want: Vec<Vec<u8>> = [&b"a\xff"[..], b"a\xff\xff"].map(<[u8]>::to_vec).to_vec();
            assert_eq!(
                keys(s.scan_prefix(t, b"a\xff").expect("scan")),
                want,
                "{name}"
            );
            assert_eq!(
                keys(s.scan_prefix(t, b"").expect("scan")).len(),
                6,
                "{name}"
            );
            let page = keys(s.scan_after(t, b"a", 2).expect("page"));
            assert_eq!(page, [b"ab".to_vec(), b"a\xfe".to_vec()], "{name}");
            let first = keys(s.scan_after(t, b"", 1).expect("page"));
            assert_eq!(first, [b"a".to_vec()], "{name}");
            assert!(
                s.scan_after(t, b"b", 10).expect("page").is_empty(),
                "{name}"
            );
            assert_eq!(s.remove_before(t, b"a\xfe").expect("remove"), 2, "{name}");
            assert_eq!(
                keys(s.scan_prefix(t, b"").expect("scan")),
                [&b"a\xfe"[..], b"a\xff", b"a\xff\xff", b"b"].map(<[u8]>::to_vec),
                "{name}: a and ab went, the rest stayed"
            );
            assert_eq!(s.remove_before(t, b"").expect("remove"), 0, "{name}");
            assert_eq!(
                s.get(Table::Authzs, b"a1").expect("get").as_deref(),
                Some(&b"other table"[..]),
                "{name}: other tables are untouched"
            );
        }
    }

    #[tokio::test]
    async fn checkpoint_if_asks_the_policy_with_the_writes_since_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::new(Arc::new(SledStore::open(dir.path()).expect("open")));
        let seen = std::sync::Mutex::new(Vec::new());
        let due = |writes: u64, _idle: Duration| {
            seen.lock().expect("lock").push(writes);
            writes >= 3
        };
        for i in 0..3u32 {
            assert!(!db.checkpoint_if(due).await.expect("checkpoint"));
            db.put(Table::Orders, &i.to_string(), &i).expect("put");
        }
        assert!(db.checkpoint_if(due).await.expect("checkpoint"));
        assert!(!db.checkpoint_if(due).await.expect("checkpoint"));
        assert_eq!(*seen.lock().expect("lock"), [0, 1, 2, 3, 0]);
        assert_eq!(db.get::<u32>(Table::Orders, "2").expect("get"), Some(2));
    }

    #[tokio::test]
    async fn flush_all_covers_writes_outside_the_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sled = Arc::new(SledStore::open(dir.path()).expect("open"));
        let db = Db::new(sled.clone());
        db.put(Table::Revocations, "r", &1u32).expect("put");
        request_scope(async {
            db.flush().await.expect("flush");
            assert_eq!(sled.flush_count(), 0, "the request read and wrote nothing");
            db.flush_all().await.expect("flush all");
            assert_eq!(sled.flush_count(), 1, "flush_all covers every write");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoints_amid_a_stream_of_flushes_finish_and_lose_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::new(Arc::new(SledStore::open(dir.path()).expect("open")));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (db, stop) = (db.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        db.put(Table::Orders, &format!("{w}-{n}"), &n).expect("put");
                        db.flush().await.expect("flush");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..3 {
            let checkpointed =
                tokio::time::timeout(Duration::from_secs(60), db.checkpoint_if(|_, _| true))
                    .await
                    .expect("the checkpoint finished while writers kept flushing");
            assert!(checkpointed.expect("checkpoint"));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut written = 0;
        for w in writers {
            written += w.await.expect("writer");
        }
        let stored = db.keys_with_prefix(Table::Orders, "").expect("scan");
        assert_eq!(stored.len(), written as usize);
    }

    #[test]
    fn a_snapshot_sees_every_table_in_order() {
        for (name, db, _dir) in backends() {
            db.put(Table::Orders, "o2", &2u32).expect("put");
            db.put(Table::Accounts, "a", &1u32).expect("put");
            db.put(Table::Orders, "o1", &1u32).expect("put");
            let mut seen = Vec::new();
            db.snapshot(&mut |t, k, _| {
                seen.push((t.name(), String::from_utf8_lossy(k).into_owned()));
                Ok(())
            })
            .expect("snapshot");
            let want = [("accounts", "a"), ("orders", "o1"), ("orders", "o2")];
            let want: Vec<_> = want.iter().map(|(t, k)| (*t, (*k).to_owned())).collect();
            assert_eq!(seen, want, "{name}");
        }
    }

    /// A snapshot taken while a write group is open waits for it, so it holds both writes of
    /// the group, never one of them.
    #[test]
    fn a_snapshot_waits_for_an_open_write_group_and_sees_it_whole() {
        for (name, db, _dir) in backends() {
            let group = db.write_group();
            db.put(Table::Certificates, "c", &1u32).expect("put");
            let (tx, rx) = std::sync::mpsc::channel();
            let snapshotter = {
                let db = db.clone();
                std::thread::spawn(move || {
                    let mut keys = Vec::new();
                    db.snapshot(&mut |t, k, _| {
                        keys.push(format!("{}/{}", t.name(), String::from_utf8_lossy(k)));
                        Ok(())
                    })
                    .expect("snapshot");
                    tx.send(keys).expect("send");
                })
            };
            assert!(
                rx.recv_timeout(Duration::from_millis(200)).is_err(),
                "{name}: the snapshot ran while a write group was open"
            );
            db.put(Table::Revocations, "c", &1u32).expect("put");
            drop(group);
            let keys = rx.recv_timeout(Duration::from_secs(10)).expect("snapshot");
            snapshotter.join().expect("join");
            assert_eq!(keys, ["certificates/c", "revocations/c"], "{name}");
        }
    }

    #[test]
    fn the_memory_store_has_nothing_to_checkpoint() {
        let (writes, _) = MemoryStore::default().write_activity();
        assert_eq!(writes, 0);
    }

    #[tokio::test]
    async fn typed_roundtrip_and_insert_new() {
        for (name, db, _dir) in backends() {
            assert!(
                db.insert_new(Table::Accounts, "a", &1u32).expect("ins"),
                "{name}"
            );
            assert!(
                !db.insert_new(Table::Accounts, "a", &2u32).expect("ins"),
                "{name}"
            );
            assert_eq!(db.get::<u32>(Table::Accounts, "a").expect("get"), Some(1));
            assert_eq!(
                db.get::<u32>(Table::Orders, "a").expect("get"),
                None,
                "{name}"
            );
            db.flush().await.expect("flush");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_flushes_all_complete_and_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = Db::new(Arc::new(SledStore::open(dir.path()).expect("open")));
            let tasks: Vec<_> = (0..64u32)
                .map(|i| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        db.put(Table::Orders, &format!("k{i:02}"), &i).expect("put");
                        db.flush().await
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("join").expect("flush");
            }
        }
        // Reopened: every value a flush reported durable is there.
        let db = Db::new(Arc::new(SledStore::reopen_in_test(dir.path())));
        for i in 0..64u32 {
            assert_eq!(
                db.get::<u32>(Table::Orders, &format!("k{i:02}"))
                    .expect("get"),
                Some(i)
            );
        }
    }

    #[test]
    fn update_applies_and_aborts() {
        for (name, db, _dir) in backends() {
            db.put(Table::Orders, "o", &10u32).expect("put");
            let v = db
                .update(Table::Orders, "o", |v: u32| Ok(v + 1))
                .expect("update");
            assert_eq!(v, 11, "{name}");
            let err = db.update(Table::Orders, "o", |_: u32| -> Result<u32> {
                Err(Error::OrderNotReady("x".into()))
            });
            assert!(matches!(err, Err(Error::OrderNotReady(_))), "{name}");
            assert_eq!(db.get::<u32>(Table::Orders, "o").expect("get"), Some(11));
            assert!(matches!(
                db.update(Table::Orders, "missing", |v: u32| Ok(v)),
                Err(Error::NotFound(_))
            ));
        }
    }

    #[test]
    fn concurrent_updates_do_not_lose_writes() {
        for (name, db, _dir) in backends() {
            db.put(Table::Certificates, "c", &0u64).expect("put");
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        for _ in 0..200 {
                            db.update(Table::Certificates, "c", |v: u64| Ok(v + 1))
                                .expect("update");
                        }
                    });
                }
            });
            assert_eq!(
                db.get::<u64>(Table::Certificates, "c").expect("get"),
                Some(800),
                "{name}"
            );
        }
    }

    #[test]
    fn prefix_scan_is_ordered_and_bounded() {
        for (name, db, _dir) in backends() {
            for k in ["acct1\0b", "acct1\0a", "acct10\0c", "acct2\0d"] {
                db.put(Table::AccountOrders, k, &()).expect("put");
            }
            assert_eq!(
                db.keys_with_prefix(Table::AccountOrders, "acct1\0")
                    .expect("scan"),
                vec!["acct1\0a", "acct1\0b"],
                "{name}"
            );
        }
    }

    #[test]
    fn corrupt_records_are_storage_errors_not_panics() {
        let db = Db::new(Arc::new(MemoryStore::default()));
        db.store()
            .put(Table::Accounts, b"x", b"{not json")
            .expect("put");
        assert!(matches!(
            db.get::<u32>(Table::Accounts, "x"),
            Err(Error::Storage(_))
        ));
    }
}
