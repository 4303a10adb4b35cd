//! Which CA instances sharing the store are still alive, so that work an instance left under
//! way when it died (a validation, an issuance) is taken up at once rather than once it is
//! older than any live attempt could be.
//!
//! Every instance on a shared store writes a heartbeat, `instance/` ‖ its [`process_id`] →
//! the Unix milliseconds of its clock, in [`Table::Meta`] a few times per
//! `storage.takeover_after`, and reads everyone's. An instance is gone when its heartbeat has
//! not changed for `takeover_after` by the reader's own clock: clocks that disagree do not
//! matter, and a reader that has just started waits that long before it calls anyone gone.
//! An instance that wrote no heartbeat (a version without them, or a record removed) is never
//! called gone: its work is taken up by age only, as before. Heartbeats of instances gone for a
//! day are removed.
//!
//! Taking up the work of an instance that was only slow (a database that did not answer for
//! `takeover_after`) is safe: every state change is a compare-and-swap, so a restarted
//! validation and the slow one record one outcome, and an issuance that completes after its
//! order was reported interrupted still stores its certificate once.

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
    seen: Mutex<HashMap<String, Seen>>,
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

    /// Writes this process's heartbeat and reads everyone's; removes those gone for a day.
    pub fn beat(&self, db: &Db) -> Result<()> {
        let store = db.store();
        let now_ms = unix_ms();
        store.put(
            Table::Meta,
            key(process_id()).as_bytes(),
            &now_ms.to_le_bytes(),
        )?;
        let beats = store.scan_prefix(Table::Meta, PREFIX.as_bytes())?;
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|id, _| {
            beats
                .iter()
                .any(|(k, _)| k.strip_prefix(PREFIX.as_bytes()) == Some(id.as_bytes()))
        });
        for (key, beat) in beats {
            let Some(id) = key
                .strip_prefix(PREFIX.as_bytes())
                .and_then(|id| std::str::from_utf8(id).ok())
            else {
                continue;
            };
            let entry = seen.entry(id.to_owned()).or_insert_with(|| Seen {
                beat: beat.clone(),
                changed: now,
            });
            if entry.beat != beat {
                entry.beat = beat;
                entry.changed = now;
                continue;
            }
            let written = <[u8; 8]>::try_from(beat.as_slice()).map_or(0, u64::from_le_bytes);
            let old = Duration::from_millis(now_ms.saturating_sub(written));
            if now.duration_since(entry.changed) > FORGET_AFTER && old > FORGET_AFTER {
                // Changed since it was read: a beat of an instance back at work; kept.
                let _ = store.compare_and_swap(Table::Meta, &key, Some(&entry.beat), None);
            }
        }
        Ok(())
    }

    /// Whether the instance `id` is gone: its heartbeat, once seen, has not changed for
    /// `takeover_after`. One this process has not seen yet is looked up; one without a
    /// heartbeat is never gone.
    pub fn is_gone(&self, db: &Db, id: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = seen.get(id) {
            return now.duration_since(s.changed) > self.takeover_after;
        }
        // An instance that started after the last beat: alive until seen silent.
        if let Ok(Some(beat)) = db.store().get(Table::Meta, key(id).as_bytes()) {
            seen.insert(id.to_owned(), Seen { beat, changed: now });
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

    #[test]
    fn an_instance_is_gone_once_its_heartbeat_stops_changing() {
        let db = Db::new(Arc::new(MemoryStore::default()));
        let watcher = Liveness::new(Duration::from_millis(300));
        // Another instance's heartbeat, as it would write it.
        let other = format!("{PREFIX}other");
        let beat = |n: u64| {
            db.store()
                .put(Table::Meta, other.as_bytes(), &n.to_le_bytes())
                .expect("put");
        };
        assert!(!watcher.is_gone(&db, "other"), "no heartbeat: never gone");
        beat(1);
        watcher.beat(&db).expect("beat");
        for n in 2..6 {
            std::thread::sleep(Duration::from_millis(100));
            beat(n);
            watcher.beat(&db).expect("beat");
            assert!(!watcher.is_gone(&db, "other"), "beating");
        }
        // It stops.
        std::thread::sleep(Duration::from_millis(200));
        watcher.beat(&db).expect("beat");
        assert!(
            !watcher.is_gone(&db, "other"),
            "silent for less than 300 ms"
        );
        std::thread::sleep(Duration::from_millis(200));
        watcher.beat(&db).expect("beat");
        assert!(watcher.is_gone(&db, "other"), "silent for 400 ms");
        // This process beats and is never gone to itself.
        assert!(!watcher.is_gone(&db, process_id()));
    }

    #[test]
    fn an_instance_first_seen_between_beats_is_alive() {
        let db = Db::new(Arc::new(MemoryStore::default()));
        let watcher = Liveness::new(Duration::from_millis(50));
        watcher.beat(&db).expect("beat");
        db.store()
            .put(Table::Meta, format!("{PREFIX}new").as_bytes(), &[0; 8])
            .expect("put");
        assert!(!watcher.is_gone(&db, "new"), "looked up, alive");
        std::thread::sleep(Duration::from_millis(100));
        assert!(watcher.is_gone(&db, "new"), "then silent");
    }
}
