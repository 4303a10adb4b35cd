//! Which CA instances sharing the store are still alive, so that work an instance left under
//! way when it died (a validation, an issuance) is taken up at once rather than once it is
//! older than any live attempt could be.
//!
//! Every instance on a shared store writes a heartbeat, `instance/` ‖ its [`process_id`] →
//! the Unix milliseconds of its clock, in [`Table::Meta`] a few times per
//! `storage.takeover_after`, and reads everyone's. An instance is gone when its heartbeat has
//! not changed for `takeover_after` between the reader's first sight of it and the reader's
//! last read of the heartbeats, by the reader's own clock: clocks that disagree do not matter,
//! a reader that has just started waits that long before it calls anyone gone, and a reader
//! whose own reads have fallen behind (its database calls stall) calls nobody gone. An
//! instance that wrote no heartbeat (a version without them, or a record removed) is never
//! called gone: its work is taken up by age only. A heartbeat written more than a day ago that
//! has not changed since is removed.
//!
//! Taking up the work of an instance that was only slow (its database calls stalled for
//! `takeover_after`) is safe: every state change is a compare-and-swap, so a restarted
//! validation and the slow one record one outcome, and an order reported interrupted stays
//! so (`ra::order`): the slow issuance hands nothing out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::process_id;
use crate::storage::{Db, Table};
use crate::Result;

/// The prefix of heartbeat keys in [`Table::Meta`].
const PREFIX: &str = "instance/";
/// Heartbeats unchanged this long, by the writer's clock and the reader's, are removed.
const FORGET_AFTER: Duration = Duration::from_secs(86_400);

/// A heartbeat as last read, and when this process saw it change.
#[derive(Debug)]
struct Seen {
    beat: Vec<u8>,
    changed: Instant,
}

/// The heartbeats this process has seen.
#[derive(Debug)]
pub struct Liveness {
    takeover_after: Duration,
    seen: Mutex<Sightings>,
}

/// What [`Liveness::beat`] last read.
#[derive(Debug, Default)]
struct Sightings {
    beats: HashMap<String, Seen>,
    /// When the heartbeats were last read whole.
    read: Option<Instant>,
}

impl Liveness {
    /// Calls an instance gone once its heartbeat has not changed for `takeover_after`.
    pub fn new(takeover_after: Duration) -> Self {
        Self {
            takeover_after,
            seen: Mutex::default(),
        }
    }

    /// How often to [`Self::beat`]: five times per `takeover_after`, at most every 2 s.
    pub fn interval(&self) -> Duration {
        (self.takeover_after / 5).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// Writes this process's heartbeat and reads everyone's; removes those written more than a
    /// day ago and unchanged since. The heartbeats are read even when the write fails.
    pub fn beat(&self, db: &Db) -> Result<()> {
        let store = db.store();
        let now_ms = unix_ms();
        let written = store.put(
            Table::Meta,
            key(process_id()).as_bytes(),
            &now_ms.to_le_bytes(),
        );
        let beats = store.scan_prefix(Table::Meta, PREFIX.as_bytes())?;
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut current = HashMap::with_capacity(beats.len());
        for (record, beat) in beats {
            let Some(id) = record
                .strip_prefix(PREFIX.as_bytes())
                .and_then(|id| std::str::from_utf8(id).ok())
            else {
                continue;
            };
            let changed = match seen.beats.remove(id) {
                Some(before) if before.beat == beat => before.changed,
                _ => now,
            };
            let at = <[u8; 8]>::try_from(beat.as_slice()).map_or(0, u64::from_le_bytes);
            let old = Duration::from_millis(now_ms.saturating_sub(at));
            if old > FORGET_AFTER && now.duration_since(changed) > self.takeover_after {
                // A heartbeat that changed since it was read is an instance back at work: kept.
                let _ = store.compare_and_swap(Table::Meta, &record, Some(&beat), None);
                continue;
            }
            current.insert(id.to_owned(), Seen { beat, changed });
        }
        seen.beats = current;
        seen.read = Some(now);
        written
    }

    /// Whether the instance `id` is gone: its heartbeat, once seen, had not changed for
    /// `takeover_after` when this process last read the heartbeats, and that read is recent
    /// (within two intervals). One this process has not seen yet is looked up; one without a
    /// heartbeat is never gone.
    pub fn is_gone(&self, db: &Db, id: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let read = seen.read;
        if let Some(s) = seen.beats.get(id) {
            return read.is_some_and(|read| {
                now.duration_since(read) <= self.interval() * 2
                    && read.duration_since(s.changed) > self.takeover_after
            });
        }
        // An instance that started after the last read: alive until seen silent.
        if let Ok(Some(beat)) = db.store().get(Table::Meta, key(id).as_bytes()) {
            seen.beats
                .insert(id.to_owned(), Seen { beat, changed: now });
        }
        false
    }
}

/// The [`Table::Meta`] key of the heartbeat of the instance `id`.
pub fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;
    use std::sync::Arc;

    fn db() -> Db {
        Db::new(Arc::new(MemoryStore::default()))
    }

    /// Writes the heartbeat `n` of the instance `id`, as that instance would.
    fn heartbeat(db: &Db, id: &str, n: u64) {
        db.store()
            .put(Table::Meta, key(id).as_bytes(), &n.to_le_bytes())
            .expect("put");
    }

    fn sleep(ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }

    #[test]
    fn an_instance_is_gone_once_its_heartbeat_stops_changing() {
        let db = db();
        // Reads every 100 ms (a fifth of 500 ms).
        let watcher = Liveness::new(Duration::from_millis(500));
        assert!(!watcher.is_gone(&db, "other"), "no heartbeat: never gone");
        heartbeat(&db, "other", unix_ms());
        watcher.beat(&db).expect("beat");
        for _ in 0..8 {
            sleep(100);
            heartbeat(&db, "other", unix_ms());
            watcher.beat(&db).expect("beat");
            assert!(!watcher.is_gone(&db, "other"), "beating");
        }
        // It stops: not gone after 100 ms of silence, gone after more than 500 ms.
        sleep(100);
        watcher.beat(&db).expect("beat");
        assert!(!watcher.is_gone(&db, "other"), "silent for 100 ms");
        for _ in 0..6 {
            sleep(100);
            watcher.beat(&db).expect("beat");
        }
        assert!(watcher.is_gone(&db, "other"), "silent for 700 ms");
        // This process beats and is never gone to itself.
        assert!(!watcher.is_gone(&db, process_id()));
    }

    #[test]
    fn a_reader_whose_reads_fell_behind_calls_nobody_gone() {
        let db = db();
        let watcher = Liveness::new(Duration::from_millis(200));
        heartbeat(&db, "other", unix_ms());
        watcher.beat(&db).expect("beat");
        sleep(300);
        watcher.beat(&db).expect("beat");
        assert!(
            watcher.is_gone(&db, "other"),
            "silent for 300 ms, read just now"
        );
        // No read for longer than two intervals (2 × 100 ms): the reader cannot tell.
        sleep(300);
        assert!(!watcher.is_gone(&db, "other"), "the last read is stale");
        watcher.beat(&db).expect("beat");
        assert!(watcher.is_gone(&db, "other"), "read again");
    }

    #[test]
    fn an_instance_first_seen_between_reads_is_alive_until_seen_silent() {
        let db = db();
        let watcher = Liveness::new(Duration::from_millis(200));
        watcher.beat(&db).expect("beat");
        heartbeat(&db, "new", unix_ms());
        assert!(!watcher.is_gone(&db, "new"), "looked up, alive");
        sleep(300);
        assert!(!watcher.is_gone(&db, "new"), "not read since");
        watcher.beat(&db).expect("beat");
        sleep(300);
        watcher.beat(&db).expect("beat");
        assert!(watcher.is_gone(&db, "new"), "then silent");
    }

    #[test]
    fn heartbeats_written_a_day_ago_and_unchanged_are_removed() {
        let db = db();
        let watcher = Liveness::new(Duration::from_millis(100));
        let day_ago = unix_ms() - FORGET_AFTER.as_millis() as u64 - 1000;
        heartbeat(&db, "long-gone", day_ago);
        heartbeat(&db, "recent", unix_ms());
        watcher.beat(&db).expect("beat");
        sleep(200);
        watcher.beat(&db).expect("beat");
        let left: std::collections::BTreeSet<Vec<u8>> = db
            .store()
            .scan_prefix(Table::Meta, PREFIX.as_bytes())
            .expect("scan")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let kept = [key(process_id()), key("recent")].map(String::into_bytes);
        assert_eq!(left, kept.into_iter().collect());
    }
}
