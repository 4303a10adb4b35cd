//! Anti-replay nonces (RFC 8555 §6.5), for one CA process or for several sharing a database.
//!
//! **One process** ([`NonceStore::new`]): a nonce is
//! `base64url(counter ‖ HMAC-SHA256(key, counter)[..16])`. The server remembers only which of
//! the last [`WINDOW`] counters are still unused, as one bit each, so memory is fixed (128 KiB)
//! however many nonces clients fetch and never use. The MAC stops clients from minting
//! counters; the window bounds a nonce's life. Nonces die with the process (a fresh key at each
//! start): clients get `badNonce` with a new nonce and retry, as §6.5 expects.
//!
//! **Several instances** ([`NonceStore::shared`]): a client may fetch a nonce from one instance
//! and spend it at another, so the design is a shared key and a redemption table rather than
//! routing by prefix (which needs a load balancer that reads JWS bodies). A nonce is
//! `base64url(issued ‖ random ‖ HMAC-SHA256(key, issued ‖ random)[..16])` with `issued` in Unix
//! seconds and 8 random bytes. Issuing touches no database; the key is created once in the
//! store and read by every instance at start. Redeeming checks the MAC and the age
//! ([`SHARED_LIFETIME`]) and then inserts `issued ‖ random` into [`Table::Nonces`] with
//! compare-and-swap: only the first redemption, at any instance, succeeds. Redemption records
//! sort by issue time, and [`NonceStore::prune`] removes those past the lifetime.

use std::sync::Mutex;
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::storage::{Db, Table};
use crate::types::now;
use crate::{Error, Result};

/// How long a nonce of the shared design stays redeemable.
pub const SHARED_LIFETIME: Duration = Duration::from_secs(600);
/// How far ahead of this instance's clock an issue time may be (another instance's clock).
const CLOCK_SKEW: i64 = 60;
const SHARED_LEN: usize = 16 + TAG_LEN;
/// The store's record of the shared key.
const KEY_RECORD: &str = "nonce_key";
/// The store's record of the issue time (Unix seconds) below which redemption records may have
/// been pruned, and so below which no nonce is accepted, whatever a redeeming instance's clock
/// says.
const PRUNED_BELOW: &str = "nonce_pruned_below";

/// How many most recently issued nonces stay redeemable.
pub const WINDOW: u64 = 1 << 20;

const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 8 + TAG_LEN;

/// Issues and redeems nonces.
pub struct NonceStore {
    key: hmac::Key,
    state: Mutex<State>,
    /// The database shared with other instances; `None` for one process.
    shared: Option<Db>,
}

struct State {
    /// The counter the next nonce gets.
    next: u64,
    /// Bit `c % WINDOW` set: counter `c` (within the window) was issued and not yet used.
    unused: Vec<u64>,
}

impl NonceStore {
    /// A store with a fresh random key.
    pub fn new() -> Result<Self> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| Error::Internal("cannot generate nonce key".into()))?;
        Ok(Self {
            key,
            state: Mutex::new(State {
                next: 0,
                unused: vec![0; (WINDOW / 64) as usize],
            }),
            shared: None,
        })
    }

    /// Nonces that every instance on `db` accepts, once in all: the key is read from the store,
    /// or created there by the first instance to start.
    pub fn shared(db: Db) -> Result<Self> {
        let mut fresh = [0u8; 32];
        SystemRandom::new()
            .fill(&mut fresh)
            .map_err(|_| Error::Internal("cannot generate nonce key".into()))?;
        db.insert_new(Table::Meta, KEY_RECORD, &hex::encode(fresh))?;
        let stored: String = db
            .get(Table::Meta, KEY_RECORD)?
            .ok_or_else(|| Error::Storage("the shared nonce key vanished".into()))?;
        let key = hex::decode(&stored)
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| Error::Storage("corrupt shared nonce key".into()))?;
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            state: Mutex::new(State {
                next: 0,
                unused: Vec::new(),
            }),
            shared: Some(db),
        })
    }

    /// A new single-use nonce.
    pub fn issue(&self) -> String {
        if self.shared.is_some() {
            return self.issue_shared();
        }
        let counter = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let c = st.next;
            st.next += 1;
            let (word, bit) = slot(c);
            st.unused[word] |= bit;
            c
        };
        let mut raw = [0u8; NONCE_LEN];
        raw[..8].copy_from_slice(&counter.to_be_bytes());
        let tag = hmac::sign(&self.key, &raw[..8]);
        raw[8..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        crate::wire::b64u(raw)
    }

    /// Consumes `nonce`; fails with `badNonce` if it is forged, unknown, expired or used.
    pub fn redeem(&self, nonce: &str) -> Result<()> {
        // > If the value of a "nonce" header parameter is not valid according to this
        // > encoding, then the server MUST reject the JWS as malformed.
        // <https://www.rfc-editor.org/rfc/rfc8555#section-6.5.2>
        let raw = crate::wire::b64u_decode("JWS nonce (RFC 8555 §6.5.2)", nonce)?;
        if let Some(db) = &self.shared {
            return self.redeem_shared(db, &raw, now());
        }
        if raw.len() != NONCE_LEN {
            return Err(Error::BadNonce("not issued by this server"));
        }
        let expected = hmac::sign(&self.key, &raw[..8]);
        if !constant_time_eq(&expected.as_ref()[..TAG_LEN], &raw[8..]) {
            return Err(Error::BadNonce("not issued by this server"));
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&raw[..8]);
        let counter = u64::from_be_bytes(c);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if counter >= st.next || st.next - counter > WINDOW {
            return Err(Error::BadNonce("expired"));
        }
        let (word, bit) = slot(counter);
        if st.unused[word] & bit == 0 {
            return Err(Error::BadNonce("already used"));
        }
        st.unused[word] &= !bit;
        Ok(())
    }

    fn issue_shared(&self) -> String {
        let mut raw = [0u8; SHARED_LEN];
        raw[..8].copy_from_slice(&now().to_be_bytes());
        // SystemRandom fails only without a kernel random source, which the key needed too;
        // the issue time keeps nonces distinct even then.
        let _ = SystemRandom::new().fill(&mut raw[8..16]);
        let tag = hmac::sign(&self.key, &raw[..16]);
        raw[16..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        crate::wire::b64u(raw)
    }

    fn redeem_shared(&self, db: &Db, raw: &[u8], now: i64) -> Result<()> {
        if raw.len() != SHARED_LEN {
            return Err(Error::BadNonce("not issued by this server"));
        }
        let expected = hmac::sign(&self.key, &raw[..16]);
        if !constant_time_eq(&expected.as_ref()[..TAG_LEN], &raw[16..]) {
            return Err(Error::BadNonce("not issued by this server"));
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&raw[..8]);
        let issued = i64::from_be_bytes(t);
        let lifetime = SHARED_LIFETIME.as_secs() as i64;
        if issued > now + CLOCK_SKEW || now.saturating_sub(issued) > lifetime {
            return Err(Error::BadNonce("expired"));
        }
        // Big-endian time first: records sort by issue time, for `prune`.
        let key = hex::encode(&raw[..16]);
        if !db
            .store()
            .compare_and_swap(Table::Nonces, key.as_bytes(), None, Some(b""))?
        {
            return Err(Error::BadNonce("already used"));
        }
        // Read after the insert: a pruner raises the mark before it deletes, so a nonce whose
        // record may be gone (an instance with a clock far ahead pruned it) is refused here.
        if db
            .get::<i64>(Table::Meta, PRUNED_BELOW)?
            .is_some_and(|below| issued < below)
        {
            return Err(Error::BadNonce("expired"));
        }
        Ok(())
    }

    /// Removes redemption records of nonces past their lifetime (one statement with
    /// PostgreSQL); returns how many. Nothing to do for one process.
    pub fn prune(&self, now: i64) -> Result<usize> {
        let Some(db) = &self.shared else {
            return Ok(0);
        };
        let cutoff = now.saturating_sub(SHARED_LIFETIME.as_secs() as i64 + CLOCK_SKEW);
        // The mark first, then the deletions below it (see `redeem_shared`).
        let cutoff = if db.insert_new(Table::Meta, PRUNED_BELOW, &cutoff)? {
            cutoff
        } else {
            db.update(
                Table::Meta,
                PRUNED_BELOW,
                |below: i64| Ok(below.max(cutoff)),
            )?
        };
        // Keys start with the issue time in 16 hex digits: the stale ones sort first.
        let end = format!("{:016x}", u64::try_from(cutoff).unwrap_or(0));
        db.store().remove_before(Table::Nonces, end.as_bytes())
    }
}

/// Compares without an early exit, so timing does not reveal how much of a tag matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn slot(counter: u64) -> (usize, u64) {
    let i = counter % WINDOW;
    ((i / 64) as usize, 1u64 << (i % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_single_use() {
        let s = NonceStore::new().expect("store");
        let n = s.issue();
        assert!(s.redeem(&n).is_ok());
        assert!(matches!(s.redeem(&n), Err(Error::BadNonce("already used"))));
    }

    #[test]
    fn forged_and_foreign_nonces_are_refused() {
        let a = NonceStore::new().expect("store");
        let b = NonceStore::new().expect("store");
        let n = a.issue();
        assert!(b.redeem(&n).is_err(), "other server's nonce");
        let mut raw = crate::wire::b64u_decode("n", &n).expect("b64");
        raw[7] ^= 1;
        assert!(a.redeem(&crate::wire::b64u(raw)).is_err());
        assert!(a.redeem("").is_err());
        assert!(matches!(a.redeem("!!!"), Err(Error::Malformed(_))));
        assert!(
            matches!(a.redeem(&format!("{n}=")), Err(Error::Malformed(_))),
            "padding"
        );
        assert!(
            a.redeem(&n).is_ok(),
            "tampering did not consume the real one"
        );
    }

    #[test]
    fn nonces_older_than_the_window_expire() {
        let s = NonceStore::new().expect("store");
        let old = s.issue();
        // Fast-forward the counter instead of issuing a million nonces.
        s.state.lock().expect("lock").next += WINDOW;
        assert!(matches!(s.redeem(&old), Err(Error::BadNonce("expired"))));
        let fresh = s.issue();
        assert!(s.redeem(&fresh).is_ok());
    }

    fn shared_pair() -> (NonceStore, NonceStore, Db) {
        let db = Db::new(std::sync::Arc::new(crate::storage::MemoryStore::default()));
        let a = NonceStore::shared(db.clone()).expect("a");
        let b = NonceStore::shared(db.clone()).expect("b");
        (a, b, db)
    }

    /// Two instances on one store: a nonce from either is good at both, once in all.
    #[test]
    fn a_shared_nonce_is_good_at_any_instance_once() {
        let (a, b, _db) = shared_pair();
        let n = a.issue();
        assert!(b.redeem(&n).is_ok(), "issued by a, redeemed at b");
        assert!(matches!(a.redeem(&n), Err(Error::BadNonce("already used"))));
        assert!(matches!(b.redeem(&n), Err(Error::BadNonce("already used"))));
        let m = b.issue();
        assert_ne!(m, n);
        assert!(a.redeem(&m).is_ok());
        let own = NonceStore::new().expect("one process");
        assert!(own.redeem(&a.issue()).is_err(), "another CA's nonce");
        assert!(a.redeem(&own.issue()).is_err(), "a one-process nonce");
        let mut raw = crate::wire::b64u_decode("n", &a.issue()).expect("b64");
        raw[3] ^= 1;
        assert!(matches!(
            a.redeem(&crate::wire::b64u(raw)),
            Err(Error::BadNonce("not issued by this server"))
        ));
    }

    #[test]
    fn shared_nonces_expire_and_their_records_are_pruned() {
        let (a, b, db) = shared_pair();
        let n = a.issue();
        let raw = crate::wire::b64u_decode("n", &n).expect("b64");
        let life = SHARED_LIFETIME.as_secs() as i64;
        let late = now() + life + 5;
        assert!(matches!(
            b.redeem_shared(&db, &raw, late),
            Err(Error::BadNonce("expired"))
        ));
        assert!(
            matches!(
                b.redeem_shared(&db, &raw, now() - 2 * CLOCK_SKEW),
                Err(Error::BadNonce("expired")),
            ),
            "issued in this instance's future beyond the skew"
        );
        let used: Vec<String> = (0..3).map(|_| a.issue()).collect();
        for n in &used {
            b.redeem(n).expect("redeem");
        }
        assert_eq!(a.prune(now()).expect("prune"), 0, "all still live");
        assert_eq!(a.prune(late + CLOCK_SKEW).expect("prune"), 3);
        assert!(db
            .store()
            .scan_prefix(Table::Nonces, b"")
            .expect("scan")
            .is_empty());
        // The pruner's clock was far ahead: the records are gone, and a redeemer whose clock
        // still accepts the nonces must refuse them all the same.
        for n in &used {
            let raw = crate::wire::b64u_decode("n", n).expect("b64");
            assert!(matches!(
                b.redeem_shared(&db, &raw, now()),
                Err(Error::BadNonce("expired"))
            ));
        }
    }

    #[test]
    fn nonces_redeem_in_any_order() {
        let s = NonceStore::new().expect("store");
        let ns: Vec<_> = (0..100).map(|_| s.issue()).collect();
        for n in ns.iter().rev() {
            assert!(s.redeem(n).is_ok());
        }
    }
}
