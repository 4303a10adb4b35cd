//! The embedded default backend: sled, one tree per table, in `<data_dir>/db`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{note_ticket, scoped_ticket, FlushFuture, SnapshotSink, Store, Table};
use crate::storage::Durability;
use crate::{Error, Result};

mod compact;

pub use self::compact::Compacted;

/// sled-backed [`Store`].
pub struct SledStore {
    dir: PathBuf,
    /// sled's page cache, kept for the reopen at each checkpoint.
    cache_bytes: u64,
    /// The open database. `None` only if a [`SledStore::checkpoint`] could not reopen it.
    /// Lock order: this, then `GroupCommit::pending`.
    open: std::sync::RwLock<Option<Open>>,
    group: std::sync::Arc<GroupCommit>,
    /// The write sequence number at the last checkpoint (or open).
    checkpointed: AtomicU64,
    /// When the last write completed, in nanoseconds since `opened`.
    last_write: AtomicU64,
    opened: Instant,
    /// sled's data file, for `fdatasync` after each flush under [`Durability::PowerLoss`].
    ///
    /// sled 0.34 makes its log durable with `sync_file_range` on Linux, which waits for the
    /// write to reach the disk but does not flush the disk's volatile write cache or sync the
    /// file's metadata (`man 2 sync_file_range`: "provides no guarantees of data integrity
    /// after a crash"). A CA that forgets an issued certificate or a revocation after a power
    /// cut cannot revoke the one and serves the other as good, so by default the flush ends
    /// with an `fdatasync` of the same file (any descriptor of the file will do).
    /// Replaced when a compaction swaps the database for its copy.
    sync_file: std::sync::Mutex<Option<std::sync::Arc<std::fs::File>>>,
    /// Durability, for reopening `sync_file` after a compaction.
    durability: Durability,
    /// Keys written while a compaction copies the database (`compact`); `None` otherwise.
    dirty: std::sync::Mutex<Option<compact::Dirty>>,
    /// The size of sled's files after the last compaction.
    compaction: std::sync::Mutex<compact::Baseline>,
    /// Held by a compaction, a checkpoint and a recovery: one at a time.
    maintenance: std::sync::Mutex<()>,
    /// Test hook: the next [`SledStore::checkpoint`] panics after closing the database, as
    /// sled does on some I/O failures while a log is dropped.
    #[cfg(test)]
    panic_after_close: std::sync::atomic::AtomicBool,
}

/// Group commit: one sled flush serves every caller waiting when it starts, and a caller with
/// nothing new to make durable waits for no flush at all.
///
/// Every response waits for a flush, and a flush per response cost more CPU than the
/// signatures (thread hand-offs to the blocking pool, one fsync each, in a perf profile).
/// Every completed write takes the next number of a write sequence. A caller's ticket is the
/// highest sequence number it depends on: inside a request ([`super::request_scope`]), that of
/// its own writes and of the not-yet-durable writes it read; outside one, the sequence number
/// when it asks. If the flushes so far covered the ticket, the caller returns at once (the
/// directory, nonces, polls of state already on disk). Otherwise, if no flush is running it
/// leads one that covers the sequence as it was when that flush started, else it waits for the
/// running one and, if that did not cover its ticket, for the next.
struct GroupCommit {
    /// Writes completed so far.
    writes: AtomicU64,
    /// sled flushes started, for the tests that check reads cost none.
    flushes: AtomicU64,
    /// `fdatasync`s completed, for the test of [`Durability`].
    syncs: AtomicU64,
    /// An `fdatasync` failed. Linux may have dropped the dirty pages it could not write and
    /// report success on the next sync, so no later flush can vouch for earlier writes: every
    /// flush fails from then on, and the operator restarts the CA (sled then recovers from
    /// what is on disk).
    sync_failed: std::sync::atomic::AtomicBool,
    /// A sled call or flush failed. sled 0.34 keeps the first I/O error of its log writer
    /// (`ENOSPC` on a full disk, say) and fails every later call with it until the database
    /// is opened again, so [`SledStore::recover`] reopens it.
    failed: std::sync::atomic::AtomicBool,
    state: std::sync::Mutex<GroupState>,
    done: tokio::sync::Notify,
    /// Writes not yet known to be durable, per table (`Table as usize`): key → sequence number
    /// of the key's last write. A writer holds the lock from before its sled write until its
    /// entry is in, so a reader that saw the new value and then takes the lock finds it.
    pending: std::sync::Mutex<Vec<HashMap<Vec<u8>, u64>>>,
}

impl Default for GroupCommit {
    fn default() -> Self {
        Self {
            writes: Default::default(),
            flushes: Default::default(),
            syncs: Default::default(),
            sync_failed: Default::default(),
            failed: Default::default(),
            state: Default::default(),
            done: Default::default(),
            pending: std::sync::Mutex::new(vec![HashMap::new(); Table::ALL.len()]),
        }
    }
}

type Pending<'a> = std::sync::MutexGuard<'a, Vec<HashMap<Vec<u8>, u64>>>;

#[derive(Default)]
struct GroupState {
    /// Every write up to this sequence number is durable.
    completed: u64,
    /// A flush (or a checkpoint) is under way.
    running: bool,
    /// Checkpoints waiting for the running flush to end: no new flush starts meanwhile, so
    /// under load a checkpoint cannot be starved by one flush leader after another.
    checkpoints_waiting: u32,
    /// Write sequence ranges `(after, up_to]` that a failed database lost when
    /// [`SledStore::recover`] reopened it: a caller whose ticket falls in one gets an error,
    /// never an answer that vouches for a lost write. One entry per recovery.
    lost: Vec<(u64, u64)>,
}

impl SledStore {
    /// The entries of a scan, copied out. A scan also sees what is absent (a deleted entry), so
    /// it depends on every write so far; taking the lock first lets any write it saw finish
    /// counting itself.
    fn scanned(
        &self,
        entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let entries = entries
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect::<Result<Vec<_>>>()?;
        let _pending = self.pending();
        note_ticket(self.group.writes.load(Ordering::SeqCst));
        Ok(entries)
    }

    /// Opens (creating if needed) the database in `dir`, durable against power loss.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, Durability::PowerLoss, super::CACHE_MIB)
    }

    /// For tests that open a store again right after dropping it in the same process: sled's
    /// background threads may hold the file lock a moment longer, as the store's own reopens
    /// expect (`Open::when_released`).
    #[cfg(test)]
    pub(crate) fn reopen_in_test(dir: &Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Self::open(dir) {
                Ok(store) => return store,
                Err(e) if Instant::now() > deadline => panic!("reopen {}: {e}", dir.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Opens (creating if needed) the database in `dir` with the given durability and a page
    /// cache of `cache_mib` MiB.
    pub fn open_with(dir: &Path, durability: Durability, cache_mib: u64) -> Result<Self> {
        let cache_bytes = cache_mib.saturating_mul(1 << 20);
        compact::settle(dir)?;
        let open = Open::new(dir, cache_bytes)?;
        let baseline = compact::Baseline::read(&open.db);
        let sync_file = open_sync_file(dir, durability)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cache_bytes,
            open: std::sync::RwLock::new(Some(open)),
            group: std::sync::Arc::default(),
            checkpointed: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            opened: Instant::now(),
            sync_file: std::sync::Mutex::new(sync_file),
            durability,
            dirty: std::sync::Mutex::new(None),
            compaction: std::sync::Mutex::new(baseline),
            maintenance: std::sync::Mutex::new(()),
            #[cfg(test)]
            panic_after_close: Default::default(),
        })
    }

    /// Runs `f` on the open database; store calls made during a checkpoint wait for it.
    fn with_open<R>(&self, f: impl FnOnce(&Open) -> Result<R>) -> Result<R> {
        let open = match self.open.try_read() {
            Ok(open) => open,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            // A checkpoint holds the database for up to a second with a million devices. On
            // a worker of the multi-threaded runtime, wait in `block_in_place` so the worker's
            // other tasks move to another thread: TLS handshakes, the directory and requests
            // already past their store calls go on meanwhile.
            Err(std::sync::TryLockError::WouldBlock) => {
                let wait = || self.open.read().unwrap_or_else(|p| p.into_inner());
                if on_multi_thread_runtime() {
                    tokio::task::block_in_place(wait)
                } else {
                    wait()
                }
            }
        };
        match open.as_ref() {
            Some(o) => {
                // `f` makes sled calls only: any error is the database's.
                let result = f(o);
                if result.is_err() {
                    self.group.failed.store(true, Ordering::SeqCst);
                }
                result
            }
            None => Err(Error::Storage(format!(
                "the database {} is closed: a checkpoint could not reopen it (see the log)",
                self.dir.display()
            ))),
        }
    }

    /// Checkpoint: closes and reopens sled, which makes sled write a snapshot of its page
    /// table, so the next start replays only what is written after this.
    ///
    /// sled 0.34 writes that snapshot only when a database is opened (`snapshot_after_ops`
    /// has done nothing since 0.31), so a CA that ran for months would replay months of log at
    /// its next start: 7.4 s for a million devices written since the last open (`benches/scale.rs`).
    /// Reopening is the only way to get a snapshot. It costs what the replay would have cost,
    /// paid now: every store call waits meanwhile, which is why the server does this when idle
    /// (see `StorageConfig::checkpoint_due`). Blocking; run it off the async workers.
    pub fn checkpoint(&self) -> Result<()> {
        let _maintenance = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        self.exclusive("checkpoint", || self.reopen(true))
            .map(|_| ())
    }

    /// Reopens the database after a failed sled call or flush, as a server does from its
    /// storage tick; `Ok(false)` when nothing failed. Blocking.
    ///
    /// After an I/O error sled fails every call until the database is opened again (see
    /// `GroupCommit::failed`). Reopening reads what is on disk, which holds every write a
    /// flush vouched for; writes after the last good flush may be gone, so callers waiting for
    /// them get an error (`GroupState::lost`). While the cause lasts (the disk is still full)
    /// the reopen fails, the database stays closed and every call is a storage error, and the
    /// next call of this tries again.
    pub fn recover(&self) -> Result<bool> {
        let closed = self
            .open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if !closed && !self.group.failed.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let _maintenance = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let mut lost = 0;
        self.exclusive("recovery", || {
            let target = self.reopen(false)?;
            // Recorded before `exclusive` releases the flush: no waiter may see its ticket
            // settled without seeing it lost.
            let mut st = self.lock();
            if target > st.completed {
                lost = target - st.completed;
                let range = (st.completed, target);
                st.lost.push(range);
            }
            Ok(target)
        })?;
        tracing::warn!(
            lost_writes = lost,
            "storage recovered: the database was reopened after a failure"
        );
        Ok(true)
    }

    /// Runs `work` (a close and reopen) with no flush running and none starting, and marks the
    /// writes up to the sequence number it returns as settled.
    fn exclusive(&self, what: &str, work: impl FnOnce() -> Result<u64>) -> Result<u64> {
        // Lead the flush, so no flush holds a handle on the database being closed (sled's file
        // lock lasts as long as any handle does).
        self.lock().checkpoints_waiting += 1;
        loop {
            {
                let mut st = self.lock();
                if !st.running {
                    st.running = true;
                    st.checkpoints_waiting -= 1;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // sled panics on some I/O failures (`sync_all().unwrap()` when a log is dropped);
        // `running` must be released whatever happens, or every later flush waits forever.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|_| {
                tracing::error!("{what}: sled panicked while closing or reopening the database");
                Err(Error::Storage(format!(
                    "the database panicked during a {what}"
                )))
            });
        {
            let mut st = self.lock();
            st.running = false;
            if let Ok(target) = result {
                st.completed = st.completed.max(target);
            }
        }
        self.group.done.notify_waiters();
        result
    }

    /// Closes and reopens the database, flushing it first if `flush`; returns the write
    /// sequence settled: durable after a flush, durable or lost after a failure.
    fn reopen(&self, flush: bool) -> Result<u64> {
        let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
        // No store call is under way and new ones wait: the sequence is final.
        let target = self.group.writes.load(Ordering::SeqCst);
        if let Some(o) = open.as_ref().filter(|_| flush) {
            o.db.flush()?;
            sync(self.sync_file().as_deref(), &self.group)?;
        }
        drop(open.take());
        #[cfg(test)]
        if self.panic_after_close.swap(false, Ordering::SeqCst) {
            panic!("test hook: sled panicked while closing the database");
        }
        self.reopen_closed(&mut open, target)?;
        Ok(target)
    }

    /// Opens the closed database again (into `open`, which the caller holds locked) and
    /// marks the writes up to `target` as checkpointed.
    fn reopen_closed(&self, open: &mut Option<Open>, target: u64) -> Result<()> {
        let reopened = Open::when_released(&self.dir, self.cache_bytes)
            .inspect_err(|e| tracing::error!(error = %e, "storage: cannot reopen the database"))?;
        // A compaction replaces the data file; the same file after a checkpoint.
        *self.sync_file.lock().unwrap_or_else(|p| p.into_inner()) =
            open_sync_file(&self.dir, self.durability)?;
        *open = Some(reopened);
        self.group.failed.store(false, Ordering::SeqCst);
        for map in self.pending().iter_mut() {
            map.clear();
        }
        self.checkpointed.store(target, Ordering::SeqCst);
        Ok(())
    }
}

/// One opening of the sled database.
struct Open {
    db: sled::Db,
    trees: Vec<(Table, sled::Tree)>,
}

impl Open {
    fn new(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Durability comes from explicit flushes before each response, not from a timer.
            .flush_every_ms(None)
            .open()
            .map_err(|e| Error::Storage(format!("cannot open database {}: {e}", dir.display())))?;
        let trees = Table::ALL
            .iter()
            .map(|t| Ok((*t, db.open_tree(t.name())?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { db, trees })
    }

    /// Opens the database in `dir`, retrying while sled's file lock from the last handle is
    /// released (a moment after the handle is dropped).
    fn when_released(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Self::new(dir, cache_bytes) {
                Ok(o) => return Ok(o),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        // Every table is opened in `new`, so the lookup cannot miss; fall back to the default
        // tree rather than panic if a new table is ever added without opening it.
        self.trees
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(&*self.db, |(_, tree)| tree)
    }
}

/// Whether `tokio::task::block_in_place` may be called here: on a multi-threaded runtime's
/// thread (a worker or its blocking pool), not on a current-thread runtime, where it panics.
pub(super) fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// sled's data file, opened for `fdatasync` under [`Durability::PowerLoss`] (see `sync_file`).
fn open_sync_file(
    dir: &Path,
    durability: Durability,
) -> Result<Option<std::sync::Arc<std::fs::File>>> {
    match durability {
        Durability::PowerLoss => {
            let path = dir.join("db");
            let file = std::fs::File::open(&path).map_err(|e| {
                Error::Storage(format!("cannot open {} to sync it: {e}", path.display()))
            })?;
            Ok(Some(std::sync::Arc::new(file)))
        }
        Durability::ProcessCrash => Ok(None),
    }
}

/// `fdatasync` of sled's data file under [`Durability::PowerLoss`] (see `sync_file`).
fn sync(file: Option<&std::fs::File>, group: &GroupCommit) -> Result<()> {
    if let Some(file) = file {
        if let Err(e) = file.sync_data() {
            group.sync_failed.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, "cannot sync the database to disk; every later write fails until the CA is restarted");
            return Err(Error::Storage(format!(
                "cannot sync the database to disk: {e}"
            )));
        }
        group.syncs.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// The error of every flush after a failed sync (see `GroupCommit::sync_failed`).
fn fenced(group: &GroupCommit) -> Result<()> {
    if group.sync_failed.load(Ordering::SeqCst) {
        return Err(Error::Storage(
            "an earlier sync of the database to disk failed, so recent writes may be lost: \
             restart the CA"
                .into(),
        ));
    }
    Ok(())
}

impl SledStore {
    fn sync_file(&self) -> Option<std::sync::Arc<std::fs::File>> {
        self.sync_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        lock_state(&self.group)
    }

    fn pending(&self) -> Pending<'_> {
        lock_pending(&self.group)
    }

    /// Records a completed write (after sled applied it, under the `pending` lock).
    fn wrote(&self, pending: &mut Pending<'_>, table: Table, key: &[u8]) {
        let seq = self.group.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(map) = pending.get_mut(table as usize) {
            map.insert(key.to_vec(), seq);
        }
        note_ticket(seq);
        if let Some(dirty) = self
            .dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            dirty.insert(table, key);
        }
        let now = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_write.store(now, Ordering::Relaxed);
    }

    /// Makes the current request depend on the last write of `key`, if it is not durable yet.
    fn read(&self, pending: &Pending<'_>, table: Table, key: &[u8]) {
        if let Some(seq) = pending.get(table as usize).and_then(|m| m.get(key)) {
            note_ticket(*seq);
        }
    }

    /// sled flushes started since the store was opened.
    #[cfg(test)]
    pub(crate) fn flush_count(&self) -> u64 {
        self.group.flushes.load(Ordering::SeqCst)
    }

    /// `fdatasync`s completed since the store was opened.
    #[cfg(test)]
    pub(crate) fn sync_count(&self) -> u64 {
        self.group.syncs.load(Ordering::SeqCst)
    }

    async fn group_flush(&self) -> Result<()> {
        let ticket = scoped_ticket().unwrap_or_else(|| self.group.writes.load(Ordering::SeqCst));
        loop {
            // Registered before the state is read, so a flush finishing in between still wakes us.
            let finished = self.group.done.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let lead = {
                let mut st = self.lock();
                if st
                    .lost
                    .iter()
                    .any(|&(after, up_to)| ticket > after && ticket <= up_to)
                {
                    return Err(Error::Storage(
                        "a storage failure lost a write this request depends on".into(),
                    ));
                }
                if st.completed >= ticket {
                    return Ok(());
                }
                // Reads of what was durable before a failed sync still answer; anything newer
                // cannot be vouched for.
                fenced(&self.group)?;
                if st.running || st.checkpoints_waiting > 0 {
                    None
                } else {
                    st.running = true;
                    // Read after `running` is set and before the flush starts: every write
                    // counted here completed before sled's flush begins, so it is covered.
                    Some(self.group.writes.load(Ordering::SeqCst))
                }
            };
            let Some(target) = lead else {
                finished.await;
                continue;
            };
            // The whole flush, state update included, runs on the blocking pool, which runs a
            // task to completion even when its handle is dropped: a request whose future is
            // dropped (its client went away) cannot leave `running` set and every later caller
            // waiting. One hand-off per flush: a perf profile under load counted thread wake-ups
            // as the largest cost after the signatures. sled's synchronous flush rather than
            // `flush_async`: under concurrent load `flush_async` was seen to never complete (a
            // whole server stalled with eight clients).
            let group = self.group.clone();
            let db = match self.with_open(|o| Ok(o.db.clone())) {
                Ok(db) => db,
                Err(e) => {
                    lock_state(&group).running = false;
                    group.done.notify_waiters();
                    return Err(e);
                }
            };
            let sync_file = self.sync_file();
            group.flushes.fetch_add(1, Ordering::SeqCst);
            let flush = tokio::task::spawn_blocking(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.flush()))
                    .map_err(|_| Error::Storage("the database flush panicked".into()))
                    .and_then(|r| r.map(|_| ()).map_err(Error::from))
                    .inspect_err(|_| group.failed.store(true, Ordering::SeqCst))
                    .and_then(|()| sync(sync_file.as_deref(), &group));
                // Let go of the database before another flush or a checkpoint may start.
                drop(db);
                {
                    let mut st = lock_state(&group);
                    st.running = false;
                    if result.is_ok() {
                        st.completed = st.completed.max(target);
                    }
                }
                if result.is_ok() {
                    for map in lock_pending(&group).iter_mut() {
                        map.retain(|_, seq| *seq > target);
                    }
                }
                group.done.notify_waiters();
                result
            });
            // On failure the leader reports it; waiters try again by leading the next flush.
            return flush
                .await
                .map_err(|e| Error::Storage(format!("flush task failed: {e}")))?;
        }
    }
}

fn lock_state(group: &GroupCommit) -> std::sync::MutexGuard<'_, GroupState> {
    group.state.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_pending(group: &GroupCommit) -> Pending<'_> {
    group.pending.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store for SledStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with_open(|o| {
            let value = o.tree(table).get(key)?.map(|v| v.to_vec());
            self.read(&self.pending(), table, key);
            Ok(value)
        })
    }

    fn put(&self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.with_open(|o| {
            let mut pending = self.pending();
            o.tree(table).insert(key, value)?;
            self.wrote(&mut pending, table, key);
            Ok(())
        })
    }

    fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        self.with_open(|o| {
            let mut pending = self.pending();
            let swapped = o.tree(table).compare_and_swap(key, old, new)?.is_ok();
            if swapped {
                self.wrote(&mut pending, table, key);
            } else {
                // The value that made it fail may not be durable yet.
                self.read(&pending, table, key);
            }
            Ok(swapped)
        })
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.with_open(|o| self.scanned(o.tree(table).scan_prefix(prefix)))
    }

    fn scan_after(
        &self,
        table: Table,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after)
        };
        self.with_open(|o| {
            self.scanned(
                o.tree(table)
                    .range::<&[u8], _>((start, Bound::Unbounded))
                    .take(limit),
            )
        })
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(self.group_flush())
    }

    fn write_activity(&self) -> (u64, Duration) {
        let writes = self
            .group
            .writes
            .load(Ordering::SeqCst)
            .saturating_sub(self.checkpointed.load(Ordering::SeqCst));
        let last = Duration::from_nanos(self.last_write.load(Ordering::Relaxed));
        (writes, self.opened.elapsed().saturating_sub(last))
    }

    fn checkpoint(&self) -> Result<()> {
        Self::checkpoint(self)
    }

    fn recover(&self) -> Result<bool> {
        Self::recover(self)
    }

    fn compact_if_grown(&self) -> Result<Option<Compacted>> {
        Self::compact_if_grown(self)
    }

    fn snapshot(&self, each: &mut SnapshotSink<'_>) -> Result<()> {
        // The lock a checkpoint takes: no store call runs while this holds it, new ones wait.
        let open = self.open.write().unwrap_or_else(|p| p.into_inner());
        let Some(o) = open.as_ref() else {
            return Err(Error::Storage(format!(
                "the database {} is closed: a checkpoint could not reopen it (see the log)",
                self.dir.display()
            )));
        };
        for (table, tree) in &o.trees {
            for entry in tree.iter() {
                let (key, value) = entry?;
                each(*table, &key, &value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn power_loss_durability_syncs_the_data_file_after_each_flush() {
        for (durability, syncs) in [(Durability::PowerLoss, 2), (Durability::ProcessCrash, 0)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SledStore::open_with(dir.path(), durability, super::super::CACHE_MIB)
                .expect("open");
            for value in [&b"1"[..], b"2"] {
                store.put(Table::Orders, b"k", value).expect("put");
                store.flush().await.expect("flush");
            }
            assert_eq!(store.flush_count(), 2, "{durability:?}");
            assert_eq!(store.sync_count(), syncs, "{durability:?}");
        }
    }

    /// The newest sled snapshot in `dir`, by its name (`snap.{stable LSN in hex}`).
    fn newest_snapshot(dir: &Path) -> Option<String> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("snap.") && !n.ends_with(".generating"))
            .max()
    }

    #[tokio::test]
    async fn checkpoint_writes_a_snapshot_and_keeps_every_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        for i in 0..2000u32 {
            store
                .put(Table::Orders, &i.to_be_bytes(), &[7; 100])
                .expect("put");
        }
        // Not flushed: the checkpoint itself makes the writes durable.
        let (writes, _) = store.write_activity();
        assert_eq!(writes, 2000);
        let before = newest_snapshot(dir.path());
        store.checkpoint().expect("checkpoint");
        let after = newest_snapshot(dir.path());
        assert!(after > before, "no newer snapshot: {before:?} -> {after:?}");
        assert_eq!(store.write_activity().0, 0);
        store.flush().await.expect("flush");
        assert_eq!(
            store.flush_count(),
            0,
            "the checkpoint made everything durable"
        );
        for i in 0..2000u32 {
            let v = store.get(Table::Orders, &i.to_be_bytes()).expect("get");
            assert_eq!(v.as_deref(), Some(&[7u8; 100][..]));
        }
        // The reopened database takes writes, flushes, and opens again with them.
        store.put(Table::Orders, b"after", b"1").expect("put");
        assert_eq!(store.write_activity().0, 1);
        store.flush().await.expect("flush");
        assert_eq!(store.flush_count(), 1);
        drop(store);
        let store = SledStore::reopen_in_test(dir.path());
        assert_eq!(
            store.scan_prefix(Table::Orders, b"").expect("scan").len(),
            2001
        );
    }

    #[test]
    fn checkpoint_under_concurrent_writers_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        std::thread::scope(|s| {
            for w in 0..4u32 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..500u32 {
                        let key = [w.to_be_bytes(), i.to_be_bytes()].concat();
                        store.put(Table::Authzs, &key, b"v").expect("put");
                        let got = store.get(Table::Authzs, &key).expect("get");
                        assert_eq!(got.as_deref(), Some(&b"v"[..]));
                    }
                });
            }
            for _ in 0..3 {
                store.checkpoint().expect("checkpoint");
            }
        });
        store.checkpoint().expect("checkpoint");
        drop(store);
        let store = SledStore::reopen_in_test(dir.path());
        assert_eq!(
            store.scan_prefix(Table::Authzs, b"").expect("scan").len(),
            2000
        );
    }

    #[tokio::test]
    async fn a_request_waits_only_for_writes_it_made_or_read() {
        use crate::storage::request_scope;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        // Another request's write, not yet durable.
        store.put(Table::Orders, b"theirs", b"1").expect("put");
        request_scope(async {
            store.get(Table::Orders, b"mine").expect("get");
            store.get(Table::Authzs, b"theirs").expect("get");
            store.flush().await.expect("flush");
        })
        .await;
        assert_eq!(
            store.flush_count(),
            0,
            "it read nothing that is not durable"
        );
        request_scope(async {
            let v = store.get(Table::Orders, b"theirs").expect("get");
            assert_eq!(v.as_deref(), Some(&b"1"[..]));
            store.flush().await.expect("flush");
        })
        .await;
        assert_eq!(
            store.flush_count(),
            1,
            "it read a write that was not durable"
        );
        request_scope(async {
            store.get(Table::Orders, b"theirs").expect("get");
            store.flush().await.expect("flush");
        })
        .await;
        assert_eq!(store.flush_count(), 1, "that write is durable now");
        request_scope(async {
            store.put(Table::Orders, b"mine", b"1").expect("put");
            store.flush().await.expect("flush");
        })
        .await;
        assert_eq!(store.flush_count(), 2, "its own write");
        // A compare-and-swap that fails on a value not yet durable depends on that value.
        store.put(Table::Orders, b"theirs", b"2").expect("put");
        request_scope(async {
            assert!(!store
                .compare_and_swap(Table::Orders, b"theirs", Some(b"1"), Some(b"3"))
                .expect("cas"));
            store.flush().await.expect("flush");
        })
        .await;
        assert_eq!(store.flush_count(), 3, "a failed compare-and-swap");
        // A scan depends on every write so far, present or deleted.
        assert!(store
            .compare_and_swap(Table::Orders, b"theirs", Some(b"2"), None)
            .expect("cas"));
        request_scope(async {
            let all = store.scan_prefix(Table::Orders, b"").expect("scan");
            assert_eq!(all.len(), 1);
            store.flush().await.expect("flush");
        })
        .await;
        assert_eq!(store.flush_count(), 4, "a scan");
    }

    #[tokio::test]
    async fn after_a_failed_sync_every_flush_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = SledStore::open(dir.path()).expect("open");
        // fdatasync on a socket fails (EINVAL): a stand-in for a disk that reports an I/O error.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        *store.sync_file.get_mut().expect("lock") = Some(std::sync::Arc::new(std::fs::File::from(
            std::os::fd::OwnedFd::from(socket),
        )));
        store.put(Table::Orders, b"k", b"1").expect("put");
        let first = store.flush().await.expect_err("the sync fails");
        assert!(first.to_string().contains("cannot sync"), "{first}");
        // Nothing new to flush, or a later sync that might succeed: still refused, because
        // the kernel may have dropped the pages the failed sync could not write.
        let again = store.flush().await.expect_err("fenced");
        assert!(again.to_string().contains("restart the CA"), "{again}");
        store.put(Table::Orders, b"k", b"2").expect("put");
        assert!(store.flush().await.is_err());
        assert_eq!(store.sync_count(), 0);
        // A request that depends on nothing unsynced still gets its answer.
        crate::storage::request_scope(async {
            store.get(Table::Authzs, b"other").expect("get");
            store.flush().await.expect("nothing to vouch for");
        })
        .await;
    }

    #[tokio::test]
    async fn recover_reopens_a_failed_database_and_fails_callers_of_lost_writes() {
        use crate::storage::request_scope;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        assert!(!store.recover().expect("recover"), "nothing failed");
        store.put(Table::Orders, b"durable", b"1").expect("put");
        store.flush().await.expect("flush");
        // A request writes; before its flush the database fails (as sled does on ENOSPC)
        // and the server's tick reopens it.
        let answered = request_scope(async {
            store.put(Table::Orders, b"unflushed", b"1").expect("put");
            store.group.failed.store(true, Ordering::SeqCst);
            assert!(store.recover().expect("recover"), "reopened");
            store.flush().await
        })
        .await;
        let err = answered.expect_err("the write was not vouched for before the failure");
        assert!(err.to_string().contains("lost"), "{err}");
        assert!(matches!(err, Error::Storage(_)));
        // What was durable is there, and the store takes and flushes new writes.
        assert_eq!(
            store.get(Table::Orders, b"durable").expect("get"),
            Some(b"1".to_vec())
        );
        request_scope(async {
            store.put(Table::Orders, b"after", b"1").expect("put");
            store.flush().await.expect("flush after recovery");
        })
        .await;
        assert!(!store.recover().expect("recover"), "healthy again");
        drop(store);
        // sled lets go of its file lock when its last I/O job ends, a moment after the drop
        // (`Open::when_released` waits for it the same way).
        let deadline = Instant::now() + Duration::from_secs(5);
        let store = loop {
            match SledStore::open(dir.path()) {
                Ok(store) => break store,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("reopen: {e:?}"),
            }
        };
        assert_eq!(
            store.get(Table::Orders, b"after").expect("get"),
            Some(b"1".to_vec())
        );
    }

    #[tokio::test]
    async fn reads_wait_for_no_flush_and_writes_for_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        store.flush().await.expect("flush");
        assert_eq!(store.flush_count(), 0, "nothing written: no flush");
        store.put(Table::Orders, b"k", b"v").expect("put");
        store.flush().await.expect("flush");
        assert_eq!(store.flush_count(), 1);
        // Reads, and a compare-and-swap that does not swap, leave nothing to flush.
        store.get(Table::Orders, b"k").expect("get");
        assert!(!store
            .compare_and_swap(Table::Orders, b"k", Some(b"other"), Some(b"w"))
            .expect("cas"));
        store.flush().await.expect("flush");
        store.flush().await.expect("flush");
        assert_eq!(store.flush_count(), 1);
        assert!(store
            .compare_and_swap(Table::Orders, b"k", Some(b"v"), Some(b"w"))
            .expect("cas"));
        store.flush().await.expect("flush");
        assert_eq!(store.flush_count(), 2);
    }

    #[tokio::test]
    async fn a_checkpoint_that_panics_fails_cleanly_and_the_next_one_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        for i in 0..100u32 {
            store
                .put(Table::Orders, &i.to_be_bytes(), b"kept")
                .expect("put");
        }
        store.panic_after_close.store(true, Ordering::SeqCst);
        let err = store.checkpoint().expect_err("the checkpoint panicked");
        assert!(err.to_string().contains("panicked"), "{err}");

        // The database stays closed, and every call says so instead of hanging.
        let err = store
            .get(Table::Orders, &0u32.to_be_bytes())
            .expect_err("closed");
        assert!(err.to_string().contains("closed"), "{err}");
        assert!(store.put(Table::Orders, b"new", b"1").is_err());
        let flushed = tokio::time::timeout(Duration::from_secs(10), store.flush())
            .await
            .expect("a flush after the failed checkpoint returns");
        assert!(flushed.is_err(), "nothing can be vouched for while closed");
        // The writes still count against the last checkpoint, so the server's next tick
        // (`StorageConfig::checkpoint_due`) tries again.
        assert_eq!(store.write_activity().0, 100);

        store.checkpoint().expect("the next checkpoint reopens");
        assert_eq!(store.write_activity().0, 0);
        store.flush().await.expect("flush");
        assert_eq!(store.flush_count(), 0, "the checkpoint made them durable");
        for i in 0..100u32 {
            let v = store.get(Table::Orders, &i.to_be_bytes()).expect("get");
            assert_eq!(v.as_deref(), Some(&b"kept"[..]), "record {i}");
        }
        store.put(Table::Orders, b"new", b"1").expect("put");
        store.flush().await.expect("flush");
        drop(store);
        let store = SledStore::reopen_in_test(dir.path());
        assert_eq!(
            store.get(Table::Orders, &99u32.to_be_bytes()).expect("get"),
            Some(b"kept".to_vec())
        );
        assert_eq!(
            store.get(Table::Orders, b"new").expect("get"),
            Some(b"1".to_vec())
        );
    }

    #[test]
    fn a_store_call_waiting_for_a_checkpoint_frees_its_worker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = std::sync::Arc::new(SledStore::open(dir.path()).expect("open"));
        store.put(Table::Orders, b"k", b"v").expect("put");
        // One worker: if the waiting store call held it, nothing else could run.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        // What a checkpoint holds while it closes and reopens the database.
        let checkpoint = store.open.write().expect("lock");
        let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiting = rt.spawn({
            let (store, started) = (store.clone(), started.clone());
            async move {
                started.store(true, Ordering::SeqCst);
                store.get(Table::Orders, b"k")
            }
        });
        while !started.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("another task ran while a store call waited for the checkpoint");
        assert!(!waiting.is_finished());
        // The blocking pool (CRL scans, checkpoints) waits in place too, without panicking.
        let blocking = rt.spawn_blocking({
            let store = store.clone();
            move || store.get(Table::Orders, b"k")
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!blocking.is_finished());
        drop(checkpoint);
        for task in [waiting, blocking] {
            let value = rt.block_on(task).expect("join").expect("get");
            assert_eq!(value, Some(b"v".to_vec()));
        }
    }
}
