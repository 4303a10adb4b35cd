//! The bounded audit tables ([`Table::WeakKeyAttempts`], [`Table::KeyReuseAttempts`]): records
//! keyed `{unix time in nanoseconds, 20 digits}.{random id}`, so a scan lists them in time
//! order, each charged to the account that made the request.
//!
//! Each account keeps at most `per_account` records and the table at most `total`. The point is
//! that a flood cannot erase anyone else's trail, whether it comes from one account or from
//! many:
//!
//! - An account at its own cap replaces its own oldest record.
//! - When the table is full, the record that goes is the oldest one of the account holding
//!   the most records; among accounts holding equally many, of the one that wrote last, the
//!   inserting account counting as the last writer. So the inserting account gives up its own
//!   record whenever it holds as many as anyone, and a quiet account loses a record only when
//!   it holds more than anyone else, that is more than its share of the table. A client with
//!   twenty accounts at their caps, or with hundreds of accounts, only displaces its own
//!   records.
//!
//! Which account holds what lives in memory, read from the table once per process (one scan)
//! and kept up to date by every insert and eviction, so an insert costs a few index operations,
//! at most one eviction (a get and a compare-and-swap) and the put, however large the table. The
//! CA is one process per store (sled admits one), so no other writer can invalidate the index;
//! the data directory keeps the instances of one process (tests) apart, as for the key
//! reservations in `keycheck`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ra::Ra;
use crate::storage::{Store, Table};
use crate::types::new_id;
use crate::{Error, Result};

/// A record of a bounded audit table.
pub(crate) trait Audited: Serialize + DeserializeOwned {
    /// The table the records go to.
    const TABLE: Table;
    /// The account the record is charged to: the one that made the request.
    fn account(&self) -> &str;
}

/// The limits of one table; both at least 1.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    /// Newest records kept per account.
    pub(crate) per_account: usize,
    /// Records kept in all.
    pub(crate) total: usize,
}

/// Appends `record` to its table in `app`'s store, evicting as the module docs say.
pub(crate) fn append<T: Audited>(app: &Ra, caps: Caps, record: &T) -> Result<()> {
    let log = log_for(app.cfg.data_dir.clone(), T::TABLE);
    let mut guard = lock(&log);
    let store = app.db.store();
    let index = match &mut *guard {
        Some(index) => index,
        empty => empty.insert(Index::load::<T>(store, caps)?),
    };
    index.append(store, T::TABLE, caps, record)
}

/// The index of each (data directory, table), `None` until the first insert loads it.
type Logs = BTreeMap<(PathBuf, &'static str), Arc<Mutex<Option<Index>>>>;
static LOGS: Mutex<Logs> = Mutex::new(BTreeMap::new());

fn log_for(data_dir: PathBuf, table: Table) -> Arc<Mutex<Option<Index>>> {
    let mut logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    logs.entry((data_dir, table.name())).or_default().clone()
}

/// Locks one index. A panic while it was held may have left it half updated, so it is then
/// dropped and read again from the table.
fn lock(log: &Mutex<Option<Index>>) -> MutexGuard<'_, Option<Index>> {
    match log.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            let mut guard = poisoned.into_inner();
            *guard = None;
            log.clear_poison();
            guard
        }
    }
}

/// Which records each account holds.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Account → its record keys (time order, so the first is the oldest).
    by_account: HashMap<String, BTreeSet<String>>,
    /// (record count, newest key, account) for every account with records: the last entry is
    /// the account holding the most, and among equals the one that wrote last.
    by_size: BTreeSet<(usize, String, String)>,
    /// Records in all.
    total: usize,
}

impl Index {
    /// Reads the table once, then evicts down to `caps` (a table written before the caps, or
    /// under larger ones, may hold more).
    pub(crate) fn load<T: Audited>(store: &dyn Store, caps: Caps) -> Result<Self> {
        let mut index = Self::default();
        for (key, raw) in store.scan_prefix(T::TABLE, b"")? {
            // A record that does not read is charged to no account (""), so it still counts.
            let account = serde_json::from_slice::<T>(&raw)
                .map(|r| r.account().to_owned())
                .unwrap_or_default();
            index.add(&account, String::from_utf8_lossy(&key).into_owned());
        }
        let over: Vec<String> = index
            .by_account
            .iter()
            .filter(|(_, keys)| keys.len() > caps.per_account)
            .map(|(account, _)| account.clone())
            .collect();
        for account in over {
            while index.count(&account) > caps.per_account {
                index.evict_oldest(store, T::TABLE, &account)?;
            }
        }
        while index.total > caps.total {
            let Some(largest) = index.largest() else {
                break;
            };
            index.evict_oldest(store, T::TABLE, &largest)?;
        }
        Ok(index)
    }

    /// Writes `record` under a new key after making room for it.
    pub(crate) fn append<T: Audited>(
        &mut self,
        store: &dyn Store,
        table: Table,
        caps: Caps,
        record: &T,
    ) -> Result<()> {
        let account = record.account();
        // `load` brought the table within the caps and every insert keeps it there, so one
        // eviction always makes room.
        if self.count(account) >= caps.per_account {
            self.evict_oldest(store, table, account)?;
        } else if self.total >= caps.total {
            let victim = match self.largest() {
                Some(largest) if self.count(&largest) > self.count(account) => largest,
                _ => account.to_owned(),
            };
            self.evict_oldest(store, table, &victim)?;
        }
        let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let key = format!("{nanos:020}.{}", new_id()?);
        let value = serde_json::to_vec(record)
            .map_err(|e| Error::Internal(format!("cannot encode audit record: {e}")))?;
        store.put(table, key.as_bytes(), &value)?;
        self.add(account, key);
        Ok(())
    }

    fn count(&self, account: &str) -> usize {
        self.by_account.get(account).map_or(0, BTreeSet::len)
    }

    /// The account holding the most records (among equals, the one that wrote last).
    fn largest(&self) -> Option<String> {
        self.by_size.last().map(|(_, _, account)| account.clone())
    }

    fn size_entry(&self, account: &str) -> Option<(usize, String, String)> {
        let keys = self.by_account.get(account)?;
        Some((keys.len(), keys.last()?.clone(), account.to_owned()))
    }

    fn add(&mut self, account: &str, key: String) {
        if let Some(entry) = self.size_entry(account) {
            self.by_size.remove(&entry);
        }
        if self
            .by_account
            .entry(account.to_owned())
            .or_default()
            .insert(key)
        {
            self.total += 1;
        }
        if let Some(entry) = self.size_entry(account) {
            self.by_size.insert(entry);
        }
    }

    /// Deletes the oldest record of `account` from the store, then from the index.
    fn evict_oldest(&mut self, store: &dyn Store, table: Table, account: &str) -> Result<()> {
        let Some(entry) = self.size_entry(account) else {
            return Ok(());
        };
        let Some(key) = self
            .by_account
            .get(account)
            .and_then(|k| k.first())
            .cloned()
        else {
            return Ok(());
        };
        // Records are never rewritten, so the value read is the one to delete; a record
        // already gone (removed by hand, or a store replaced under the same data directory)
        // only leaves the index.
        if let Some(old) = store.get(table, key.as_bytes())? {
            store.compare_and_swap(table, key.as_bytes(), Some(&old), None)?;
        }
        self.by_size.remove(&entry);
        if let Some(keys) = self.by_account.get_mut(account) {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_account.remove(account);
            }
        }
        self.total -= 1;
        if let Some(entry) = self.size_entry(account) {
            self.by_size.insert(entry);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde::Deserialize;

    use super::*;
    use crate::storage::{Db, MemoryStore};

    #[derive(Debug, Serialize, Deserialize)]
    struct Rec {
        account: String,
        n: u32,
    }

    impl Audited for Rec {
        const TABLE: Table = Table::WeakKeyAttempts;
        fn account(&self) -> &str {
            &self.account
        }
    }

    /// Small caps, where each step can be followed by hand.
    const SMALL: Caps = Caps {
        per_account: 3,
        total: 6,
    };

    /// The production caps of `attempts` scaled down ten times (20 accounts at their caps fill
    /// the table).
    const SCALED: Caps = Caps {
        per_account: 10,
        total: 200,
    };

    struct Log {
        db: Db,
        caps: Caps,
        index: Index,
        n: u32,
    }

    impl Log {
        fn new(caps: Caps) -> Self {
            let db = Db::new(Arc::new(MemoryStore::default()));
            let index = Index::load::<Rec>(db.store(), caps).expect("load");
            Self {
                db,
                caps,
                index,
                n: 0,
            }
        }

        fn append(&mut self, account: &str) {
            self.n += 1;
            let rec = Rec {
                account: account.into(),
                n: self.n,
            };
            self.index
                .append(self.db.store(), Rec::TABLE, self.caps, &rec)
                .expect("append");
        }

        /// `account:n` for every stored record, oldest first.
        fn stored(&self) -> Vec<String> {
            self.db
                .values_with_prefix::<Rec>(Rec::TABLE, "")
                .expect("list")
                .into_iter()
                .map(|r| format!("{}:{}", r.account, r.n))
                .collect()
        }

        fn of(&self, account: &str) -> Vec<String> {
            let prefix = format!("{account}:");
            self.stored()
                .into_iter()
                .filter(|r| r.starts_with(&prefix))
                .collect()
        }

        /// The index agrees with the table, and both respect the caps.
        fn check(&self) {
            let stored = self.stored();
            assert_eq!(self.index.total, stored.len());
            assert!(stored.len() <= self.caps.total, "{stored:?}");
            let mut counted = 0;
            for (account, keys) in &self.index.by_account {
                assert_eq!(self.of(account).len(), keys.len(), "{account}");
                assert!(keys.len() <= self.caps.per_account, "{account}");
                counted += keys.len();
            }
            assert_eq!(counted, stored.len());
            assert_eq!(self.index.by_size.len(), self.index.by_account.len());
        }
    }

    #[test]
    fn an_account_keeps_its_newest_and_the_table_its_cap() {
        let mut log = Log::new(SMALL);
        for _ in 0..10 {
            log.append("noisy");
        }
        assert_eq!(log.stored(), ["noisy:8", "noisy:9", "noisy:10"]);
        log.append("a");
        log.append("b");
        log.append("c");
        assert_eq!(
            log.stored(),
            ["noisy:8", "noisy:9", "noisy:10", "a:11", "b:12", "c:13"]
        );
        // Full: the next record pushes out the oldest of the account holding the most.
        log.append("d");
        assert_eq!(
            log.stored(),
            ["noisy:9", "noisy:10", "a:11", "b:12", "c:13", "d:14"]
        );
        log.check();
    }

    /// Among accounts holding equally many, the last writer gives way, the inserting account
    /// counting as the last.
    #[test]
    fn the_largest_account_gives_way_and_among_equals_the_last_writer() {
        let mut log = Log::new(SMALL);
        for account in ["q1", "q2", "x", "x", "x", "y"] {
            log.append(account);
        }
        log.append("y");
        assert_eq!(log.stored(), ["q1:1", "q2:2", "x:4", "x:5", "y:6", "y:7"]);
        // y holds as many as x: it gives up its own oldest.
        log.append("y");
        assert_eq!(log.stored(), ["q1:1", "q2:2", "x:4", "x:5", "y:7", "y:8"]);
        // A newcomer: of x and y, holding two each, y wrote last.
        log.append("z");
        assert_eq!(log.stored(), ["q1:1", "q2:2", "x:4", "x:5", "y:8", "z:9"]);
        log.check();
    }

    /// One account in a retry loop replaces only its own records.
    #[test]
    fn a_flood_from_one_account_leaves_a_quiet_account_alone() {
        let mut log = Log::new(SMALL);
        log.append("quiet");
        log.append("quiet");
        for _ in 0..500 {
            log.append("flood");
        }
        assert_eq!(log.of("quiet"), ["quiet:1", "quiet:2"]);
        assert_eq!(log.of("flood"), ["flood:500", "flood:501", "flood:502"]);
        log.check();
    }

    /// A client with twenty accounts flooding in turn (enough to fill the table at their caps),
    /// or with three hundred, only ever displaces its own records.
    #[test]
    fn a_flood_from_many_accounts_leaves_a_quiet_account_alone() {
        let mut log = Log::new(SCALED);
        for _ in 0..5 {
            log.append("quiet");
        }
        let quiet = log.of("quiet");
        for _ in 0..30 {
            for i in 0..20 {
                log.append(&format!("flood{i:02}"));
            }
        }
        assert_eq!(log.of("quiet"), quiet);
        assert_eq!(log.stored().len(), SCALED.total);
        log.check();

        let mut log = Log::new(SCALED);
        log.append("quiet");
        for _ in 0..3 {
            for i in 0..300 {
                log.append(&format!("flood{i:03}"));
            }
        }
        assert_eq!(log.of("quiet"), ["quiet:1"]);
        log.check();
    }

    /// Loading a table written under larger caps (or none) evicts down to the caps, and a
    /// record that does not read still counts.
    #[test]
    fn load_trims_an_oversized_table() {
        let db = Db::new(Arc::new(MemoryStore::default()));
        let mut n = 0;
        let mut put = |account: &str| {
            n += 1;
            let rec = Rec {
                account: account.into(),
                n,
            };
            db.put(Rec::TABLE, &format!("{n:020}.x"), &rec)
                .expect("put");
        };
        for _ in 0..5 {
            put("big");
        }
        put("small");
        for i in 0..4 {
            put(&format!("other{i}"));
        }
        db.store()
            .put(Rec::TABLE, b"00000000000000000099.x", b"not json")
            .expect("put");
        let index = Index::load::<Rec>(db.store(), SMALL).expect("load");
        let left: Vec<String> = db
            .keys_with_prefix(Rec::TABLE, "")
            .expect("keys")
            .into_iter()
            .map(|k| k.trim_start_matches('0').to_owned())
            .collect();
        // big is cut to its newest three, then the table to six: big gives up two more, and
        // of the eight accounts then holding one record each, the last writer (the unreadable
        // record, charged to no account) goes.
        assert_eq!(left, ["5.x", "6.x", "7.x", "8.x", "9.x", "10.x"]);
        assert_eq!(index.total, 6);
        assert_eq!(index.count("big"), 1);
    }
}
