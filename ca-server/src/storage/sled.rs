//! The embedded default backend: sled, one tree per table, in `<data_dir>/db`.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::{FlushFuture, Store, Table};
use crate::config::Durability;
use crate::{Error, Result};

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    trees: Vec<(Table, sled::Tree)>,
    group: std::sync::Arc<GroupCommit>,
    /// sled's data file, for `fdatasync` after each flush under [`Durability::PowerLoss`].
    ///
    /// sled 0.34 makes its log durable with `sync_file_range` on Linux, which waits for the
    /// write to reach the disk but does not flush the disk's volatile write cache or sync the
    /// file's metadata (`man 2 sync_file_range`: "provides no guarantees of data integrity
    /// after a crash"). A CA that forgets an issued certificate or a revocation after a power
    /// cut cannot revoke the one and serves the other as good, so by default the flush ends
    /// with an `fdatasync` of the same file (any descriptor of the file will do).
    sync_file: Option<std::sync::Arc<std::fs::File>>,
}

/// Group commit: one sled flush serves every caller waiting when it starts, and a caller with
/// nothing new to make durable waits for no flush at all.
///
/// Every response waits for a flush, and a flush per response cost more CPU than the
/// signatures (thread hand-offs to the blocking pool, one fsync each; see issue #6's profile).
/// Every completed write takes the next number of a write sequence. A caller's ticket is the
/// sequence number when it asks: everything it may have written or read is at or below it.
/// If the flushes so far covered the ticket, the caller returns at once (most reads: polls,
/// downloads, the directory). Otherwise, if no flush is running it leads one that covers the
/// sequence as it was when that flush started, else it waits for the running one and, if that
/// did not cover its ticket, for the next.
#[derive(Default)]
struct GroupCommit {
    /// Writes completed so far.
    writes: std::sync::atomic::AtomicU64,
    /// sled flushes started, for the tests that check reads cost none.
    flushes: std::sync::atomic::AtomicU64,
    /// `fdatasync`s completed, for the test of [`Durability`].
    syncs: std::sync::atomic::AtomicU64,
    state: std::sync::Mutex<GroupState>,
    done: tokio::sync::Notify,
}

#[derive(Default)]
struct GroupState {
    /// Every write up to this sequence number is durable.
    completed: u64,
    /// A flush is under way.
    running: bool,
}

impl SledStore {
    /// Opens (creating if needed) the database in `dir`, durable against power loss.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, Durability::PowerLoss)
    }

    /// Opens (creating if needed) the database in `dir` with the given durability.
    pub fn open_with(dir: &Path, durability: Durability) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            // Durability comes from explicit flushes before each response, not from a timer.
            .flush_every_ms(None)
            .open()
            .map_err(|e| Error::Storage(format!("cannot open database {}: {e}", dir.display())))?;
        let trees = Table::ALL
            .iter()
            .map(|t| Ok((*t, db.open_tree(t.name())?)))
            .collect::<Result<Vec<_>>>()?;
        let sync_file = match durability {
            Durability::PowerLoss => {
                let path = dir.join("db");
                let file = std::fs::File::open(&path).map_err(|e| {
                    Error::Storage(format!("cannot open {} to sync it: {e}", path.display()))
                })?;
                Some(std::sync::Arc::new(file))
            }
            Durability::ProcessCrash => None,
        };
        Ok(Self {
            db,
            trees,
            group: std::sync::Arc::default(),
            sync_file,
        })
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        // Every table is opened in `open`, so the lookup cannot miss; fall back to the default
        // tree rather than panic if a new table is ever added without opening it.
        self.trees
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(&*self.db, |(_, tree)| tree)
    }
}

impl SledStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        lock_state(&self.group)
    }

    /// Records a completed write (after sled applied it).
    fn wrote(&self) {
        self.group.writes.fetch_add(1, Ordering::SeqCst);
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
        let ticket = self.group.writes.load(Ordering::SeqCst);
        loop {
            // Registered before the state is read, so a flush finishing in between still wakes us.
            let finished = self.group.done.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let lead = {
                let mut st = self.lock();
                if st.completed >= ticket {
                    return Ok(());
                }
                if st.running {
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
            // waiting. One hand-off per flush: the profile of issue #6 counted thread wake-ups
            // as the largest cost after the signatures. sled's synchronous flush rather than
            // `flush_async`: under concurrent load `flush_async` was seen to never complete (a
            // whole server stalled with eight clients).
            let (db, group) = (self.db.clone(), self.group.clone());
            let sync_file = self.sync_file.clone();
            group.flushes.fetch_add(1, Ordering::SeqCst);
            let flush = tokio::task::spawn_blocking(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.flush()))
                    .map_err(|_| Error::Storage("the database flush panicked".into()))
                    .and_then(|r| r.map(|_| ()).map_err(Error::from))
                    .and_then(|()| match &sync_file {
                        Some(file) => {
                            file.sync_data().map_err(|e| {
                                Error::Storage(format!("cannot sync the database to disk: {e}"))
                            })?;
                            group.syncs.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        }
                        None => Ok(()),
                    });
                {
                    let mut st = lock_state(&group);
                    st.running = false;
                    if result.is_ok() {
                        st.completed = st.completed.max(target);
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

impl Store for SledStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(table).get(key)?.map(|v| v.to_vec()))
    }

    fn put(&self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree(table).insert(key, value)?;
        self.wrote();
        Ok(())
    }

    fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        let swapped = self.tree(table).compare_and_swap(key, old, new)?.is_ok();
        if swapped {
            self.wrote();
        }
        Ok(swapped)
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tree(table)
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(self.group_flush())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn power_loss_durability_syncs_the_data_file_after_each_flush() {
        for (durability, syncs) in [(Durability::PowerLoss, 2), (Durability::ProcessCrash, 0)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SledStore::open_with(dir.path(), durability).expect("open");
            for value in [&b"1"[..], b"2"] {
                store.put(Table::Orders, b"k", value).expect("put");
                store.flush().await.expect("flush");
            }
            assert_eq!(store.flush_count(), 2, "{durability:?}");
            assert_eq!(store.sync_count(), syncs, "{durability:?}");
        }
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
}
