//! Limits counted in the store, for several CA instances on one database
//! (`storage.backend = "postgres"`): a client that spreads its requests over every instance
//! gets each limit once, not once per instance.
//!
//! Both kinds of record live in [`Table::RateLimits`] and change only by compare-and-swap, so
//! two instances drawing from one bucket at once take two tokens or refuse one request:
//!
//! - `b` ‖ limit ‖ 0x00 ‖ key → a token bucket ([`SharedBuckets`]): the tokens it held, when,
//!   and when it is full again (16 + 8 bytes, little-endian `f64`, `i64`, `i64`; times in Unix
//!   milliseconds of the instance that wrote it). A full bucket is the same as no record, so the
//!   sweep removes records past their full time.
//! - `v` ‖ kind ‖ 0x00 ‖ key → the validations under way for an account or a source address
//!   ([`SharedSlots`]): 16 bytes per validation, its slot id and the time its hold ends. A slot
//!   is given back when the validation ends; one whose instance died ends with its hold, which
//!   is no shorter than any validation can run.
//!
//! The instances' clocks need to agree to within a small part of a limit's period (NTP does).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Db, Table};
use crate::ratelimit::{Key, LimitName, SharedBuckets as Buckets};
use crate::{Error, Result};

/// Compare-and-swap attempts on one record before a request gives up on it.
const ATTEMPTS: usize = 64;
/// Records the sweep reads at a time.
const SWEEP_PAGE: usize = 1000;

/// Milliseconds since the Unix epoch by this instance's clock.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The record key of `limit`'s bucket for `key`.
fn bucket_key(limit: LimitName, key: &Key) -> Vec<u8> {
    let whose = match key {
        Key::Address(ip) => format!("a{ip}"),
        Key::Account(id) => format!("c{id}"),
        Key::AccountIdentifier(id, identifier) => format!("i{id}\0{identifier}"),
    };
    [b"b", limit.as_str().as_bytes(), b"\0", whose.as_bytes()].concat()
}

/// A bucket as stored.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stored {
    tokens: f64,
    at: i64,
    full_at: i64,
}

impl Stored {
    const LEN: usize = 24;

    fn encode(self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[..8].copy_from_slice(&self.tokens.to_le_bytes());
        out[8..16].copy_from_slice(&self.at.to_le_bytes());
        out[16..].copy_from_slice(&self.full_at.to_le_bytes());
        out
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        let raw: &[u8; Self::LEN] = raw.try_into().ok()?;
        let (tokens, rest) = raw.split_at(8);
        let (at, full_at) = rest.split_at(8);
        let tokens = f64::from_le_bytes(tokens.try_into().ok()?);
        tokens.is_finite().then_some(Self {
            tokens,
            at: i64::from_le_bytes(at.try_into().ok()?),
            full_at: i64::from_le_bytes(full_at.try_into().ok()?),
        })
    }

    /// The tokens it holds at `now`; a clock behind the writer's refills nothing.
    fn level(self, now: i64, capacity: f64, per_token: f64) -> f64 {
        let elapsed = now.saturating_sub(self.at).max(0) as f64 / 1000.0;
        (self.tokens + elapsed / per_token).min(capacity)
    }
}

/// Token buckets in the store.
#[derive(Clone)]
pub struct SharedBuckets {
    db: Db,
}

impl fmt::Debug for SharedBuckets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBuckets").finish_non_exhaustive()
    }
}

impl SharedBuckets {
    /// Buckets in `db`'s [`Table::RateLimits`].
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

impl Buckets for SharedBuckets {
    /// The tokens `limit`'s bucket for `key` held, taking one if `take` and there was one. A
    /// bucket other requests keep changing through [`ATTEMPTS`] tries is `rateLimited` with a
    /// `Retry-After` of 1 s.
    fn draw(
        &self,
        limit: LimitName,
        key: &Key,
        capacity: f64,
        per_token: f64,
        take: bool,
    ) -> Result<f64> {
        let store = self.db.store();
        let record = bucket_key(limit, key);
        for _ in 0..ATTEMPTS {
            let now = now_ms();
            let old = store.get(Table::RateLimits, &record)?;
            // An unreadable record is only a count: read it as a full bucket and replace it.
            let stored = old.as_deref().and_then(Stored::decode);
            let level = stored.map_or(capacity, |b| b.level(now, capacity, per_token));
            if level < 1.0 || !take {
                return Ok(level);
            }
            // A clock behind the last writer's keeps the writer's time, so that instances
            // whose clocks disagree cannot refill a bucket twice over the same span.
            let now = stored.map_or(now, |b| now.max(b.at));
            let tokens = level - 1.0;
            let refill = millis(Duration::from_secs_f64(
                ((capacity - tokens) * per_token).clamp(0.0, 1e9),
            ));
            let new = Stored {
                tokens,
                at: now,
                full_at: now.saturating_add(refill),
            };
            if store.compare_and_swap(
                Table::RateLimits,
                &record,
                old.as_deref(),
                Some(&new.encode()),
            )? {
                return Ok(level);
            }
        }
        Err(busy())
    }

    /// Removes the buckets that are full again, and the validation records whose every hold
    /// has ended; returns how many. A record changed since it was read is left for the next
    /// sweep.
    fn sweep(&self) -> Result<usize> {
        let store = self.db.store();
        let now = now_ms();
        let mut after = Vec::new();
        let mut removed = 0;
        loop {
            let page = store.scan_after(Table::RateLimits, &after, SWEEP_PAGE)?;
            let Some((last, _)) = page.last() else {
                return Ok(removed);
            };
            after.clone_from(last);
            for (k, v) in &page {
                let done = match k.first() {
                    Some(b'b') => Stored::decode(v).is_none_or(|b| b.full_at <= now),
                    Some(b'v') => Slots::decode(v).live(now).next().is_none(),
                    _ => false,
                };
                if done && store.compare_and_swap(Table::RateLimits, k, Some(v), None)? {
                    removed += 1;
                }
            }
            if page.len() < SWEEP_PAGE {
                return Ok(removed);
            }
        }
    }
}

/// Whose validations a [`SharedSlots`] record counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotKey {
    /// An account's.
    Account(String),
    /// Those asked for from a source address (keyed as rate limits key addresses).
    Address(std::net::IpAddr),
}

impl SlotKey {
    fn record(&self) -> Vec<u8> {
        match self {
            Self::Account(id) => [b"vc\0", id.as_bytes()].concat(),
            Self::Address(ip) => [b"va\0".as_slice(), ip.to_string().as_bytes()].concat(),
        }
    }
}

/// The validations under way in one record: (slot id, end of hold in Unix milliseconds).
struct Slots(Vec<(u64, i64)>);

impl Slots {
    fn decode(raw: &[u8]) -> Self {
        Self(
            raw.chunks_exact(16)
                .filter_map(|c| {
                    let (id, until) = c.split_at(8);
                    Some((
                        u64::from_le_bytes(id.try_into().ok()?),
                        i64::from_le_bytes(until.try_into().ok()?),
                    ))
                })
                .collect(),
        )
    }

    fn encode<'a>(slots: impl Iterator<Item = &'a (u64, i64)>) -> Vec<u8> {
        slots
            .flat_map(|(id, until)| {
                let mut c = [0u8; 16];
                c[..8].copy_from_slice(&id.to_le_bytes());
                c[8..].copy_from_slice(&until.to_le_bytes());
                c
            })
            .collect()
    }

    fn live(&self, now: i64) -> impl Iterator<Item = &(u64, i64)> {
        self.0.iter().filter(move |(_, until)| *until > now)
    }
}

/// Validation slots in the store: how many validations an account or an address has under
/// way at all instances together.
#[derive(Clone)]
pub struct SharedSlots {
    db: Db,
    hold: Duration,
}

impl fmt::Debug for SharedSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSlots")
            .field("hold", &self.hold)
            .finish_non_exhaustive()
    }
}

impl SharedSlots {
    /// Slots in `db`'s [`Table::RateLimits`], each held at most `hold` (no shorter than a
    /// validation can run) unless given back.
    pub fn new(db: Db, hold: Duration) -> Self {
        Self { db, hold }
    }

    /// Takes a slot of `key` if fewer than `cap` are held: `Ok(Ok(id))`, or `Ok(Err(held))`
    /// with how many are. Holds that ended are dropped from the record on the way.
    pub fn take(&self, key: &SlotKey, cap: usize) -> Result<std::result::Result<u64, usize>> {
        let store = self.db.store();
        let record = key.record();
        let id = slot_id()?;
        for _ in 0..ATTEMPTS {
            let now = now_ms();
            let old = store.get(Table::RateLimits, &record)?;
            let slots = old.as_deref().map_or(Slots(Vec::new()), Slots::decode);
            let live: Vec<(u64, i64)> = slots.live(now).copied().collect();
            if live.len() >= cap {
                return Ok(Err(live.len()));
            }
            let mine = (id, now.saturating_add(millis(self.hold)));
            let new = Slots::encode(live.iter().chain(std::iter::once(&mine)));
            if store.compare_and_swap(Table::RateLimits, &record, old.as_deref(), Some(&new))? {
                return Ok(Ok(id));
            }
        }
        Err(busy())
    }

    /// Gives slot `id` of `key` back (and drops holds that ended). A slot that cannot be given
    /// back (the store is down) ends with its hold.
    pub fn give_back(&self, key: &SlotKey, id: u64) {
        let store = self.db.store();
        let record = key.record();
        for _ in 0..ATTEMPTS {
            let now = now_ms();
            let old = match store.get(Table::RateLimits, &record) {
                Ok(Some(old)) => old,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "a validation slot was not given back; it ends with its hold");
                    return;
                }
            };
            let slots = Slots::decode(&old);
            let rest: Vec<&(u64, i64)> = slots.live(now).filter(|(s, _)| *s != id).collect();
            let new = (!rest.is_empty()).then(|| Slots::encode(rest.into_iter()));
            match store.compare_and_swap(Table::RateLimits, &record, Some(&old), new.as_deref()) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "a validation slot was not given back; it ends with its hold");
                    return;
                }
            }
        }
    }
}

/// `rateLimited` for a record that other requests kept changing through every attempt.
fn busy() -> Error {
    Error::RateLimited {
        detail: "too many requests are counted against the same limit at this moment; retry \
                 after Retry-After"
            .into(),
        retry_after: Duration::from_secs(1),
    }
}

fn slot_id() -> Result<u64> {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Error::Internal("system RNG failed".into()))?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;
    use std::sync::Arc;

    fn db() -> Db {
        Db::new(Arc::new(MemoryStore::default()))
    }

    #[test]
    fn a_bucket_record_roundtrips_and_odd_bytes_are_not_a_bucket() {
        let b = Stored {
            tokens: 2.5,
            at: 1_700_000_000_123,
            full_at: 1_700_000_009_000,
        };
        assert_eq!(Stored::decode(&b.encode()), Some(b));
        assert_eq!(Stored::decode(&b.encode()[..23]), None);
        let mut nan = b.encode();
        nan[..8].copy_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(Stored::decode(&nan), None);
    }

    #[test]
    fn two_handles_on_one_store_share_a_bucket() {
        let store = db();
        let (a, b) = (
            SharedBuckets::new(store.clone()),
            SharedBuckets::new(store.clone()),
        );
        let key = Key::Account("acct".into());
        let limit = LimitName::NewOrderPerAccount;
        // 3 tokens, one per hour.
        let per_token = 1200.0;
        let mut taken = 0;
        for i in 0..6 {
            let from = if i % 2 == 0 { &a } else { &b };
            if from.draw(limit, &key, 3.0, per_token, true).expect("draw") >= 1.0 {
                taken += 1;
            }
        }
        assert_eq!(taken, 3, "one bucket across both handles");
        // Another key and another limit have buckets of their own.
        let other = Key::Account("other".into());
        assert!(a.draw(limit, &other, 3.0, per_token, true).expect("draw") >= 1.0);
        let failed = LimitName::FailedValidationsPerIdentifier;
        assert!(a.draw(failed, &key, 3.0, per_token, true).expect("draw") >= 1.0);
        // Nothing is full yet, so the sweep keeps all three.
        assert_eq!(a.sweep().expect("sweep"), 0);
    }

    #[test]
    fn a_writer_with_a_clock_ahead_does_not_refill_the_bucket_for_one_behind() {
        let store = db();
        let buckets = SharedBuckets::new(store.clone());
        let limit = LimitName::NewOrderPerAccount;
        let key = Key::Account("skew".into());
        // One token left, last taken by an instance whose clock is an hour ahead.
        let ahead = now_ms() + 3_600_000;
        let record = bucket_key(limit, &key);
        let stored = Stored {
            tokens: 1.0,
            at: ahead,
            full_at: ahead,
        };
        store
            .store()
            .put(Table::RateLimits, &record, &stored.encode())
            .expect("put");
        // 1 token per minute: this instance takes the last one, and its write keeps the
        // time of the clock ahead, so that instance finds the bucket empty, not an hour fuller.
        assert!(buckets.draw(limit, &key, 60.0, 60.0, true).expect("draw") >= 1.0);
        let raw = store.store().get(Table::RateLimits, &record).expect("get");
        let now = Stored::decode(&raw.expect("record")).expect("bucket");
        assert_eq!(now.at, ahead);
        assert!(now.level(ahead, 60.0, 60.0) < 1.0);
    }

    #[test]
    fn the_sweep_removes_refilled_buckets_only() {
        let store = db();
        let buckets = SharedBuckets::new(store.clone());
        let limit = LimitName::NewAccountPerAddress;
        let fast = Key::address("192.0.2.1".parse().expect("ip"));
        let slow = Key::address("192.0.2.2".parse().expect("ip"));
        buckets.draw(limit, &fast, 1.0, 0.001, true).expect("draw");
        buckets.draw(limit, &slow, 1.0, 3600.0, true).expect("draw");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(buckets.sweep().expect("sweep"), 1);
        let left = store
            .store()
            .scan_prefix(Table::RateLimits, b"")
            .expect("scan");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, bucket_key(limit, &slow));
    }

    #[test]
    fn slots_are_capped_given_back_and_end_with_their_hold() {
        let store = db();
        let (a, b) = (
            SharedSlots::new(store.clone(), Duration::from_secs(60)),
            SharedSlots::new(store.clone(), Duration::from_secs(60)),
        );
        let key = SlotKey::Account("acct".into());
        let first = a.take(&key, 2).expect("take").expect("1st");
        let _second = b.take(&key, 2).expect("take").expect("2nd");
        assert_eq!(
            a.take(&key, 2).expect("take"),
            Err(2),
            "the cap counts both"
        );
        // Another account, and an address, count apart.
        let address = SlotKey::Address("192.0.2.9".parse().expect("ip"));
        assert!(b
            .take(&SlotKey::Account("x".into()), 2)
            .expect("take")
            .is_ok());
        assert!(b.take(&address, 1).expect("take").is_ok());
        b.give_back(&key, first);
        assert!(a.take(&key, 2).expect("take").is_ok(), "a slot came back");

        // A hold that ended frees its slot without being given back (an instance that died).
        let short = SharedSlots::new(store.clone(), Duration::from_millis(1));
        let key = SlotKey::Account("died".into());
        short.take(&key, 1).expect("take").expect("1st");
        std::thread::sleep(Duration::from_millis(10));
        assert!(a.take(&key, 1).expect("take").is_ok());
        // And the sweep drops records whose holds all ended, and only those.
        let gone = SlotKey::Account("gone".into());
        short.take(&gone, 1).expect("take").expect("taken");
        std::thread::sleep(Duration::from_millis(10));
        let before = store
            .store()
            .scan_prefix(Table::RateLimits, b"")
            .expect("scan")
            .len();
        assert_eq!(SharedBuckets::new(store.clone()).sweep().expect("sweep"), 1);
        let after = store
            .store()
            .scan_prefix(Table::RateLimits, b"")
            .expect("scan")
            .len();
        assert_eq!(after, before - 1);
        assert!(store
            .store()
            .get(Table::RateLimits, &gone.record())
            .expect("get")
            .is_none());
    }

    #[test]
    fn racing_threads_take_exactly_the_cap() {
        let store = db();
        let slots = SharedSlots::new(store.clone(), Duration::from_secs(60));
        let buckets = SharedBuckets::new(store);
        let key = SlotKey::Account("race".into());
        let account = Key::Account("race".into());
        let (slots_taken, tokens_taken): (Vec<bool>, Vec<bool>) = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let slot = matches!(slots.take(&key, 3), Ok(Ok(_)));
                        let token = buckets
                            .draw(LimitName::NewOrderPerAccount, &account, 5.0, 3600.0, true)
                            .is_ok_and(|level| level >= 1.0);
                        (slot, token)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .unzip()
        });
        assert_eq!(slots_taken.iter().filter(|t| **t).count(), 3);
        assert_eq!(tokens_taken.iter().filter(|t| **t).count(), 5);
    }
}
