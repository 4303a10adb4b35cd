//! Compaction: sled 0.34 does not give the space of removed or overwritten records back, so a
//! store whose contents retention keeps the same size still grows on disk with every renewal.
//! A compaction writes the live records into a new database beside the store and swaps the two.
//!
//! 1. **Copy**, while requests go on: every table is copied into `<store>.compacting`, and every
//!    key written meanwhile is recorded ([`Dirty`]). The copy is then closed and opened again,
//!    so sled writes its snapshot now rather than during the pause.
//! 2. **Swap**, with every store call waiting (as for a checkpoint): the recorded keys are
//!    copied again from the store (or removed from the copy), both databases are flushed and
//!    synced, and the copy is renamed `<store>.compacted` (complete), the store
//!    `<store>.retired`, and the copy takes the store's name. The pause costs the keys written
//!    during the copy, not the size of the store.
//!
//! [`settle`] finishes or undoes an interrupted compaction when the store is opened: a
//! `.compacting` copy is incomplete and removed; a `.compacted` one is complete, and takes the
//! store's place if a crash came between the two renames; a `.retired` store is removed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{sync, Open, SledStore};
use crate::storage::Table;
use crate::{Error, Result};

/// Compact when sled's files have grown to this many halves of their size after the last
/// compaction: 3, so the files stay within 1.5 times what a fresh copy takes.
const GROWTH_HALVES: u64 = 3;
/// Never compact files smaller than this: the space a compaction gives back is not worth it.
pub(super) const FLOOR_BYTES: u64 = 64 << 20;
/// Where the size after the last compaction is kept, in sled's default tree.
const SIZE_KEY: &[u8] = b"iiot-acme:size-after-compaction";
/// sled's page cache for the copy: it is written once, in key order.
const COPY_CACHE_BYTES: u64 = 16 << 20;
/// Records per sled batch while copying.
const BATCH: usize = 1000;

/// Keys written while a compaction copies the store, per table.
pub(super) struct Dirty(Vec<HashSet<Vec<u8>>>);

impl Dirty {
    fn new() -> Self {
        Self(vec![HashSet::new(); Table::ALL.len()])
    }

    pub(super) fn insert(&mut self, table: Table, key: &[u8]) {
        if let Some(keys) = self.0.get_mut(table as usize) {
            keys.insert(key.to_vec());
        }
    }

    fn iter(&self) -> impl Iterator<Item = (Table, &Vec<u8>)> {
        Table::ALL
            .iter()
            .filter_map(|t| Some((*t, self.0.get(*t as usize)?)))
            .flat_map(|(t, keys)| keys.iter().map(move |k| (t, k)))
    }

    fn len(&self) -> usize {
        self.0.iter().map(HashSet::len).sum()
    }
}

/// The size of sled's files after the last compaction.
#[derive(Default)]
pub(super) struct Baseline {
    after_last: Option<u64>,
}

impl Baseline {
    pub(super) fn read(db: &sled::Db) -> Self {
        let after_last = db
            .get(SIZE_KEY)
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes);
        Self { after_last }
    }
}

/// Whether files of `size` bytes are due for compaction, given their size after the last one
/// (unknown for a store never compacted: then any store above the floor is).
pub(super) fn due(size: u64, after_last: Option<u64>) -> bool {
    size >= FLOOR_BYTES
        && after_last
            .is_none_or(|base| size.saturating_mul(2) >= base.saturating_mul(GROWTH_HALVES))
}

/// What one compaction did.
#[derive(Clone, Copy, Debug)]
pub struct Compacted {
    /// sled's files before and after, in bytes.
    pub before: u64,
    pub after: u64,
    /// Records copied.
    pub records: u64,
    /// Keys written during the copy, copied again during the pause.
    pub rewritten: usize,
    /// How long store calls waited (the swap).
    pub paused: Duration,
    /// The whole compaction.
    pub took: Duration,
}

struct Paths {
    copying: PathBuf,
    compacted: PathBuf,
    retired: PathBuf,
}

fn paths(dir: &Path) -> Paths {
    let with = |suffix: &str| {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        dir.with_file_name(name)
    };
    Paths {
        copying: with(".compacting"),
        compacted: with(".compacted"),
        retired: with(".retired"),
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("compaction: cannot {what} {}: {e}", path.display()))
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", path, e)),
        _ => Ok(()),
    }
}

fn sync_parent(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", parent, e))
}

/// Finishes or undoes a compaction a crash interrupted (see the module docs). Run before the
/// store is opened.
pub(super) fn settle(dir: &Path) -> Result<()> {
    let p = paths(dir);
    remove(&p.copying)?;
    if p.compacted.exists() {
        if dir.exists() {
            // The crash came before the store was renamed: both hold the same records.
            remove(&p.compacted)?;
        } else {
            std::fs::rename(&p.compacted, dir).map_err(|e| io("rename", &p.compacted, e))?;
            sync_parent(dir)?;
            tracing::warn!(store = %dir.display(), "storage: finished a compaction that a crash interrupted");
        }
    }
    remove(&p.retired)
}

impl SledStore {
    /// Compacts the store if its files have grown enough since the last compaction ([`due`]).
    /// Measuring them costs a `stat` and a directory listing. Blocking; the server calls it
    /// from its storage tick.
    pub fn compact_if_grown(&self) -> Result<Option<Compacted>> {
        let after_last = self
            .compaction
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .after_last;
        let size = self.with_open(|o| Ok(o.db.size_on_disk()?))?;
        if !due(size, after_last) {
            return Ok(None);
        }
        self.compact().map(Some)
    }

    /// Compacts the store now (see the module docs). Blocking: the copy runs on the calling
    /// thread while other store calls go on; they wait only for the swap.
    pub fn compact(&self) -> Result<Compacted> {
        let started = Instant::now();
        let _maintenance = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let p = paths(&self.dir);
        remove(&p.copying)?;
        remove(&p.compacted)?;
        {
            // Under the lock every write takes: each write is either in the copy or recorded.
            let _pending = self.pending();
            *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = Some(Dirty::new());
        }
        let result = self.copy(&p).and_then(|(copy, before, records)| {
            self.swap(copy, &p)
                .map(|(after, rewritten, paused)| Compacted {
                    before,
                    after,
                    records,
                    rewritten,
                    paused,
                    took: started.elapsed(),
                })
        });
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if result.is_err() {
            let _ = remove(&p.copying);
        }
        if let Ok(done) = &result {
            let mut baseline = self.compaction.lock().unwrap_or_else(|e| e.into_inner());
            baseline.after_last = Some(done.after);
        }
        result
    }

    /// Copies every table into `p.copying`; returns the open copy, the store's size before
    /// and the records copied.
    fn copy(&self, p: &Paths) -> Result<(Open, u64, u64)> {
        let (db, trees) = self.with_open(|o| Ok((o.db.clone(), o.trees.clone())))?;
        let before = db.size_on_disk()?;
        private_dir(&p.copying)?;
        let copy = Open::new(&p.copying, COPY_CACHE_BYTES)?;
        let mut records = 0;
        for (table, tree) in &trees {
            let into = copy.tree(*table);
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for entry in tree.iter() {
                let (key, value) = entry?;
                batch.insert(key, value);
                n += 1;
                if n == BATCH {
                    into.apply_batch(std::mem::take(&mut batch))?;
                    records += n as u64;
                    n = 0;
                }
            }
            into.apply_batch(batch)?;
            records += n as u64;
        }
        copy.db.flush()?;
        // Let go of the store before the swap closes it (sled's file lock lasts as long as a
        // handle does).
        drop((db, trees));
        drop(copy);
        // Opened again, sled writes the copy's snapshot now, not while store calls wait.
        let copy = Open::when_released(&p.copying, COPY_CACHE_BYTES)?;
        Ok((copy, before, records))
    }

    /// The swap (see the module docs); returns the new size, the keys copied again and how
    /// long store calls waited.
    fn swap(&self, copy: Open, p: &Paths) -> Result<(u64, usize, Duration)> {
        let mut result = None;
        self.exclusive("compaction", || {
            let paused = Instant::now();
            let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
            // No store call is under way and new ones wait: the sequence is final.
            let target = self.group.writes.load(Ordering::SeqCst);
            let Some(store) = open.as_ref() else {
                return Err(Error::Storage(
                    "compaction: the database is closed (see the log)".into(),
                ));
            };
            let dirty = self
                .dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_else(Dirty::new);
            for (table, key) in dirty.iter() {
                match store.tree(table).get(key)? {
                    Some(value) => copy.tree(table).insert(key.as_slice(), value)?,
                    None => copy.tree(table).remove(key.as_slice())?,
                };
            }
            // The store made durable first: if anything below fails, it is reopened whole.
            store.db.flush()?;
            sync(self.sync_file().as_deref(), &self.group)?;
            let after = copy.db.size_on_disk()?;
            copy.db.insert(SIZE_KEY, &after.to_be_bytes())?;
            copy.db.flush()?;
            let copy_file = p.copying.join("db");
            std::fs::File::open(&copy_file)
                .and_then(|f| f.sync_all())
                .map_err(|e| io("sync", &copy_file, e))?;
            drop(copy);
            drop(open.take());
            // Whatever the renames did, the directory holds a whole database to reopen.
            let swapped = rename_into_place(&self.dir, p);
            self.reopen_closed(&mut open, target)?;
            swapped?;
            result = Some((after, dirty.len(), paused.elapsed()));
            Ok(target)
        })?;
        result.ok_or_else(|| Error::Internal("compaction: the swap did not run".into()))
    }
}

/// The copy takes the store's place; on failure the store keeps (or gets back) its name.
fn rename_into_place(dir: &Path, p: &Paths) -> Result<()> {
    std::fs::rename(&p.copying, &p.compacted).map_err(|e| io("rename", &p.copying, e))?;
    if let Err(e) = std::fs::rename(dir, &p.retired) {
        let _ = remove(&p.compacted);
        return Err(io("rename", dir, e));
    }
    if let Err(e) = std::fs::rename(&p.compacted, dir) {
        let _ = std::fs::rename(&p.retired, dir);
        return Err(io("rename", &p.compacted, e));
    }
    sync_parent(dir)?;
    remove(&p.retired)
}

/// Creates `dir` readable by its owner only, as the data directory is.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("create", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Store;

    fn key(i: u32) -> [u8; 4] {
        i.to_be_bytes()
    }

    fn records(store: &SledStore, table: Table) -> Vec<(Vec<u8>, Vec<u8>)> {
        store.scan_prefix(table, b"").expect("scan")
    }

    #[tokio::test]
    async fn compaction_gives_the_space_back_and_keeps_every_record() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        let store = SledStore::open(&dir).expect("open");
        // What retention leaves: records overwritten, then most of them removed.
        for round in 0..8u8 {
            for i in 0..3000 {
                store
                    .put(Table::Orders, &key(i), &[round; 2000])
                    .expect("put");
            }
        }
        for i in (0..3000).filter(|i| i % 3 != 0) {
            assert!(store
                .compare_and_swap(Table::Orders, &key(i), Some(&[7; 2000]), None)
                .expect("remove"));
        }
        store.put(Table::Certificates, b"kept", b"1").expect("put");
        store.flush().await.expect("flush");
        let expected = records(&store, Table::Orders);
        assert_eq!(expected.len(), 1000);

        let done = store.compact().expect("compact");
        assert_eq!(done.records, 1001, "{done:?}");
        // 48 MB written, 2 MB live: sled reclaims some of it as it goes, and a fresh
        // database takes a few MB of segments.
        assert!(
            done.after * 2 < done.before,
            "files not half their size: {done:?}"
        );
        assert_eq!(records(&store, Table::Orders), expected);
        assert!(!tmp.path().join("db.compacting").exists());
        assert!(!tmp.path().join("db.retired").exists());
        // The store takes writes, and syncs the new data file.
        store.put(Table::Orders, b"after", b"2").expect("put");
        let syncs = store.sync_count();
        store.flush().await.expect("flush");
        assert_eq!(store.sync_count(), syncs + 1);
        // Everything is there after a restart, and so is the size the next check compares.
        drop(store);
        let store = SledStore::reopen_in_test(&dir);
        assert_eq!(records(&store, Table::Orders).len(), 1001);
        assert_eq!(
            store
                .get(Table::Certificates, b"kept")
                .expect("get")
                .as_deref(),
            Some(&b"1"[..])
        );
        let after_last = store.compaction.lock().expect("lock").after_last;
        assert_eq!(after_last, Some(done.after));
    }

    #[test]
    fn writes_during_the_copy_are_in_the_compacted_store() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        let store = SledStore::open(&dir).expect("open");
        for i in 0..20_000 {
            store.put(Table::Authzs, &key(i), &[1; 200]).expect("put");
        }
        let copying = std::sync::atomic::AtomicBool::new(true);
        let mut done = None;
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..4u32)
                .map(|w| {
                    let (store, copying) = (&store, &copying);
                    s.spawn(move || {
                        // Each writer owns the keys equal to `w` mod 4 and knows their end state.
                        let mut expect = std::collections::BTreeMap::new();
                        let mut n = 0u32;
                        while copying.load(Ordering::SeqCst) || n < 2000 {
                            let k = key((n * 4 + w) % 20_000);
                            if n % 3 == 0 {
                                store.put(Table::Authzs, &k, &[2; 200]).expect("put");
                                expect.insert(k, true);
                            } else if n % 3 == 1 {
                                store
                                    .compare_and_swap(Table::Authzs, &k, None, None)
                                    .expect("cas");
                                let _ = store.get(Table::Authzs, &k).expect("get");
                            } else {
                                let old = store.get(Table::Authzs, &k).expect("get");
                                let swapped = store
                                    .compare_and_swap(Table::Authzs, &k, old.as_deref(), None)
                                    .expect("remove");
                                assert!(swapped, "only this writer writes its keys");
                                expect.insert(k, false);
                            }
                            n += 1;
                        }
                        expect
                    })
                })
                .collect();
            done = Some(store.compact().expect("compact"));
            copying.store(false, Ordering::SeqCst);
            let mut expect = std::collections::BTreeMap::new();
            for w in writers {
                expect.extend(w.join().expect("writer"));
            }
            for (k, present) in expect {
                let got = store.get(Table::Authzs, &k).expect("get");
                assert_eq!(got.is_some(), present, "key {k:?}");
            }
        });
        let done = done.expect("compacted");
        assert!(
            done.rewritten > 0,
            "no write landed during the copy: {done:?}"
        );
        let live = records(&store, Table::Authzs);
        drop(store);
        let store = SledStore::reopen_in_test(&dir);
        assert_eq!(records(&store, Table::Authzs), live);
    }

    fn store_with(dir: &Path, value: &[u8]) {
        let store = SledStore::open(dir).expect("open");
        store.put(Table::Orders, b"k", value).expect("put");
        store.checkpoint().expect("checkpoint");
    }

    fn value_at(dir: &Path) -> Option<Vec<u8>> {
        SledStore::open(dir)
            .expect("open")
            .get(Table::Orders, b"k")
            .expect("get")
    }

    #[test]
    fn an_interrupted_compaction_is_finished_or_undone_at_open() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        let p = paths(&dir);
        // Killed during the copy: the copy is incomplete and goes.
        store_with(&dir, b"store");
        store_with(&p.copying, b"partial copy");
        assert_eq!(value_at(&dir).as_deref(), Some(&b"store"[..]));
        assert!(!p.copying.exists());
        // Killed after the copy was complete, before the store was renamed: the store stays.
        store_with(&p.compacted, b"copy");
        assert_eq!(value_at(&dir).as_deref(), Some(&b"store"[..]));
        assert!(!p.compacted.exists());
        // Killed between the two renames: the complete copy takes the store's place.
        std::fs::rename(&dir, &p.retired).expect("rename");
        store_with(&p.compacted, b"copy");
        assert_eq!(value_at(&dir).as_deref(), Some(&b"copy"[..]));
        assert!(!p.compacted.exists() && !p.retired.exists());
    }

    #[test]
    fn compaction_is_due_once_the_files_grew_by_half() {
        assert!(!due(FLOOR_BYTES - 1, None), "below the floor");
        assert!(due(FLOOR_BYTES, None), "never compacted");
        let base = 100 << 20;
        assert!(!due(base * 3 / 2 - 1, Some(base)));
        assert!(due(base * 3 / 2, Some(base)));
        assert!(!due(FLOOR_BYTES - 1, Some(1 << 20)), "small stores never");
    }
}
