//! In-memory backend for unit tests and experiments; nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{FlushFuture, SnapshotSink, Store, Table};
use crate::Result;

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// A [`Store`] held in process memory.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<HashMap<Table, Tree>>,
}

impl MemoryStore {
    fn with<R>(&self, table: Table, f: impl FnOnce(&mut Tree) -> R) -> R {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        f(tables.entry(table).or_default())
    }
}

impl Store for MemoryStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.with(table, |t| t.get(key).cloned()))
    }

    fn put(&self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.with(table, |t| t.insert(key.to_vec(), value.to_vec()));
        Ok(())
    }

    fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        Ok(self.with(table, |t| {
            if t.get(key).map(Vec::as_slice) != old {
                return false;
            }
            match new {
                Some(v) => t.insert(key.to_vec(), v.to_vec()),
                None => t.remove(key),
            };
            true
        }))
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self.with(table, |t| {
            t.range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    fn scan_after(
        &self,
        table: Table,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        Ok(self.with(table, |t| {
            let start = if after.is_empty() {
                Bound::Unbounded
            } else {
                Bound::Excluded(after.to_vec())
            };
            t.range((start, Bound::Unbounded))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    fn flush(&self) -> FlushFuture<'_> {
        Box::pin(async { Ok(()) })
    }

    fn snapshot(&self, each: &mut SnapshotSink<'_>) -> Result<()> {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        for table in Table::ALL {
            for (key, value) in tables.get(&table).into_iter().flatten() {
                each(table, key, value)?;
            }
        }
        Ok(())
    }
}
