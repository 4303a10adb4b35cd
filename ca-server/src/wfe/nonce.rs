//! Anti-replay nonces (RFC 8555 §6.5) in bounded memory.
//!
//! A nonce is `base64url(counter ‖ HMAC-SHA256(key, counter)[..16])`. The server remembers only
//! which of the last [`WINDOW`] counters are still unused, as one bit each, so memory is fixed
//! (128 KiB) however many nonces clients fetch and never use. The MAC stops clients from minting
//! counters; the window bounds a nonce's life. Nonces die with the process (a fresh key at each
//! start): clients get `badNonce` with a new nonce and retry, as §6.5 expects.

use std::sync::Mutex;

use ring::hmac;
use ring::rand::SystemRandom;

use crate::{Error, Result};

/// How many most recently issued nonces stay redeemable.
pub const WINDOW: u64 = 1 << 20;

const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 8 + TAG_LEN;

/// Issues and redeems nonces.
pub struct NonceStore {
    key: hmac::Key,
    state: Mutex<State>,
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
        })
    }

    /// A new single-use nonce.
    pub fn issue(&self) -> String {
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

    #[test]
    fn nonces_redeem_in_any_order() {
        let s = NonceStore::new().expect("store");
        let ns: Vec<_> = (0..100).map(|_| s.issue()).collect();
        for n in ns.iter().rev() {
            assert!(s.redeem(n).is_ok());
        }
    }
}
