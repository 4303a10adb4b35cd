//! The embedded default backend: sled, one tree per table, in `<data_dir>/db`.

use std::path::Path;

use super::{FlushFuture, Store, Table};
use crate::{Error, Result};

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    trees: Vec<(Table, sled::Tree)>,
    group: std::sync::Arc<GroupCommit>,
}

/// Group commit: one sled flush serves every caller waiting when it starts.
///
/// Every response waits for a flush, and a flush per response cost more CPU than the
/// signatures (thread hand-offs to the blocking pool, one fsync each; see issue #6's profile).
/// A caller takes a ticket; if no flush is running it leads one that covers every ticket taken
/// so far, otherwise it waits for the running one and, if that did not cover its ticket, for
/// the next. A flush covers a ticket because the ticket was taken after the caller's writes
/// completed and before the flush started.
#[derive(Default)]
struct GroupCommit {
    state: std::sync::Mutex<GroupState>,
    done: tokio::sync::Notify,
}

#[derive(Default)]
struct GroupState {
    /// Tickets handed out.
    requested: u64,
    /// Every ticket up to this one is durable.
    completed: u64,
    /// A flush is under way.
    running: bool,
}

impl SledStore {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
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
        Ok(Self {
            db,
            trees,
            group: std::sync::Arc::default(),
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

    async fn group_flush(&self) -> Result<()> {
        let ticket = {
            let mut st = self.lock();
            st.requested += 1;
            st.requested
        };
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
                    Some(st.requested)
                }
            };
            let Some(target) = lead else {
                finished.await;
                continue;
            };
            // The flush runs in its own task, so a request whose future is dropped (its client
            // went away) cannot leave `running` set and every later caller waiting.
            // sled's synchronous flush on the blocking pool rather than `flush_async`: under
            // concurrent load `flush_async` was seen to never complete (a whole server stalled
            // with eight clients).
            let (db, group) = (self.db.clone(), self.group.clone());
            let flush = tokio::spawn(async move {
                let result = tokio::task::spawn_blocking(move || db.flush())
                    .await
                    .map_err(|e| Error::Storage(format!("flush task failed: {e}")))
                    .and_then(|r| r.map(|_| ()).map_err(Error::from));
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
        Ok(())
    }

    fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        Ok(self.tree(table).compare_and_swap(key, old, new)?.is_ok())
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
