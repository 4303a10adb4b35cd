//! The embedded default backend: sled, one tree per table, in `<data_dir>/db`.

use std::path::Path;

use super::{FlushFuture, Store, Table};
use crate::{Error, Result};

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    trees: Vec<(Table, sled::Tree)>,
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
        Ok(Self { db, trees })
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
        // sled's synchronous flush on the blocking pool rather than `flush_async`: under
        // concurrent load `flush_async` was seen to never complete here (a whole server stalled
        // with eight clients), while `flush` from several threads coalesces safely.
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || db.flush())
                .await
                .map_err(|e| Error::Storage(format!("flush task failed: {e}")))??;
            Ok(())
        })
    }
}
