//! Operator-approval pairing codes (SPEC §5.9).
//!
//! The code is the first 40 bits of `SHA-256("iiot-acme pairing code" ‖ 0x00 ‖
//! keyAuthorization)` in Crockford's base32, written `XXXX-XXXX`. The key authorization
//! (SPEC §5.2) is the operator-approval-01 challenge's token, `.`, and the account key
//! thumbprint, so the code is fresh for every request: the server picks the token at random
//! when it creates the authorization. A code that depended on the account key alone could be
//! printed on a label, and anyone who read it there could search offline for an account key of
//! their own with the same code.
//!
//! As elsewhere in this crate the caller brings SHA-256: [`PairingCode::compute`] takes it as a
//! function over the parts of [`digest_input`].

use crate::challenge::{check_thumbprint, check_token, KeyAuthorizationError};
use crate::write::ascii;

/// What the digest starts with: the purpose of the hash, so it can collide with no other use
/// of SHA-256 over a key authorization (tls-alpn-01 hashes the key authorization alone).
pub const LABEL: &[u8] = b"iiot-acme pairing code\0";

/// Length of the code text: 8 symbols and the `-` between the two groups of 4.
pub const CODE_LEN: usize = 9;

/// Crockford's base32 alphabet: no I, L, O or U, so a code read aloud or off a small display is
/// not misread.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The parts to hash, in order, for the code of the request with challenge token `token` from
/// the account whose key has thumbprint `thumbprint` (base64url text, RFC 7638): `LABEL`, then
/// the key authorization `token.thumbprint`. Both are checked as for a key authorization, so a
/// token with `.` or `/` in it is refused rather than hashed.
pub fn digest_input<'a>(
    token: &'a str,
    thumbprint: &'a str,
) -> Result<[&'a [u8]; 4], KeyAuthorizationError> {
    check_token(token)?;
    check_thumbprint(thumbprint)?;
    Ok([LABEL, token.as_bytes(), b".", thumbprint.as_bytes()])
}

/// A pairing code, `XXXX-XXXX`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PairingCode([u8; CODE_LEN]);

impl PairingCode {
    /// The code of the request with challenge token `token` from the account whose key has
    /// thumbprint `thumbprint`, given `sha256`, which hashes its parts in order.
    pub fn compute(
        token: &str,
        thumbprint: &str,
        sha256: impl FnOnce(&[&[u8]]) -> [u8; 32],
    ) -> Result<Self, KeyAuthorizationError> {
        let parts = digest_input(token, thumbprint)?;
        Ok(Self::from_digest(&sha256(&parts)))
    }

    /// The code for the SHA-256 digest of [`digest_input`]'s parts: its first 40 bits, 5 at a
    /// time from the most significant, one symbol each.
    pub fn from_digest(digest: &[u8; 32]) -> Self {
        let mut code = [b'-'; CODE_LEN];
        for i in 0..8 {
            // Each group of 5 bits is read from the two octets it falls in: 16-bit arithmetic,
            // no 64-bit shifts on a 32-bit microcontroller.
            let bit = 5 * i;
            let pair = u16::from_be_bytes([digest[bit / 8], digest[bit / 8 + 1]]);
            let symbol = (pair >> (11 - bit % 8)) & 0x1f;
            code[if i < 4 { i } else { i + 1 }] = ALPHABET[usize::from(symbol)];
        }
        Self(code)
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        ascii(&self.0)
    }
}

impl core::fmt::Display for PairingCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}
