//! RFC 7638 JWK thumbprints without allocation. SPEC §5.2.
//!
//! A thumbprint is the SHA-256 of the key's required members, sorted and written as JSON with no
//! whitespace. [`canonical_json`] writes those bytes, the caller hashes them with the SHA-256 it
//! already has for JWS, and [`thumbprint_text`] turns the digest into the base64url text that
//! goes into key authorizations.
//!
//! The members must be exactly as they appear in the key's JWK. RFC 7638 §3.3 relies on every
//! implementation writing a key the same way, so members that break RFC 7518 (padding, wrong
//! coordinate length, RSA integers with leading zero octets) are refused here rather than
//! hashed into a thumbprint no server would compute.

use crate::base64url::{self, DecodeError};
use crate::write::Cursor;
use crate::BufferTooSmall;

/// Length of a thumbprint in base64url: 32 octets of SHA-256.
pub const THUMBPRINT_LEN: usize = 43;

/// An EC curve this profile accepts for account keys (SPEC §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256, `ES256`.
    P256,
    /// NIST P-384, `ES384`.
    P384,
}

impl Curve {
    /// The JWK `crv` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }

    /// Octets per coordinate (RFC 7518 §6.2.1.2).
    pub fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

/// The required members of a public JWK, as base64url text taken from the JWK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jwk<'a> {
    /// `kty` `EC` (RFC 7518 §6.2.1).
    Ec {
        /// `crv`.
        crv: Curve,
        /// `x`.
        x: &'a str,
        /// `y`.
        y: &'a str,
    },
    /// `kty` `OKP`, `crv` `Ed25519` (RFC 8037 §2).
    Ed25519 {
        /// `x`, the 32-octet public key.
        x: &'a str,
    },
    /// `kty` `RSA` (RFC 7518 §6.3.1).
    Rsa {
        /// `n`, the modulus.
        n: &'a str,
        /// `e`, the public exponent.
        e: &'a str,
    },
}

/// Why a JWK cannot be thumbprinted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwkError {
    /// A member is not strict base64url.
    Encoding(DecodeError),
    /// An EC coordinate or Ed25519 key has the wrong length.
    Length,
    /// An RSA member is empty or starts with a zero octet (RFC 7518 §2, Base64urlUInt).
    NotMinimal,
    /// The output buffer is too small.
    BufferTooSmall(BufferTooSmall),
}

impl core::fmt::Display for JwkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Encoding(e) => write!(f, "JWK member is not strict base64url: {e}"),
            Self::Length => f.write_str("JWK key member has the wrong length for its curve"),
            Self::NotMinimal => f.write_str("JWK RSA member is empty or has a leading zero octet"),
            Self::BufferTooSmall(e) => e.fmt(f),
        }
    }
}

impl From<BufferTooSmall> for JwkError {
    fn from(e: BufferTooSmall) -> Self {
        Self::BufferTooSmall(e)
    }
}

fn fixed(member: &str, len: usize) -> Result<(), JwkError> {
    if base64url::validate(member).map_err(JwkError::Encoding)? != len {
        return Err(JwkError::Length);
    }
    Ok(())
}

fn minimal_uint(member: &str) -> Result<(), JwkError> {
    if base64url::validate(member).map_err(JwkError::Encoding)? == 0 {
        return Err(JwkError::NotMinimal);
    }
    // At least one octet, so at least two characters, all in the alphabet: the first octet is
    // the first sextet and the top two bits of the second.
    let b = member.as_bytes();
    let first = (base64url::sextet(b[0]) << 2) | (base64url::sextet(b[1]) >> 4);
    // Zero is written as one zero octet; it is never a usable n or e either.
    if first == 0 {
        return Err(JwkError::NotMinimal);
    }
    Ok(())
}

impl Jwk<'_> {
    /// Checks the members: strict base64url, the right coordinate lengths, minimal RSA integers.
    pub fn validate(&self) -> Result<(), JwkError> {
        match *self {
            Self::Ec { crv, x, y } => {
                fixed(x, crv.coordinate_len())?;
                fixed(y, crv.coordinate_len())
            }
            Self::Ed25519 { x } => fixed(x, 32),
            Self::Rsa { n, e } => {
                minimal_uint(n)?;
                minimal_uint(e)
            }
        }
    }

    /// Length of the canonical JSON, for sizing the buffer.
    pub fn canonical_len(&self) -> usize {
        match *self {
            // {"crv":"P-256","kty":"EC","x":"","y":""}
            Self::Ec { crv, x, y } => 35 + crv.name().len() + x.len() + y.len(),
            // {"crv":"Ed25519","kty":"OKP","x":""}
            Self::Ed25519 { x } => 36 + x.len(),
            // {"e":"","kty":"RSA","n":""}
            Self::Rsa { n, e } => 27 + n.len() + e.len(),
        }
    }
}

/// Writes the RFC 7638 §3.2 canonical JSON of `jwk` into `out`: the required members in
/// lexicographic order, no whitespace. Hash the result with SHA-256 for the thumbprint.
pub fn canonical_json<'o>(jwk: &Jwk<'_>, out: &'o mut [u8]) -> Result<&'o str, JwkError> {
    jwk.validate()?;
    let mut w = Cursor::new(out);
    match *jwk {
        Jwk::Ec { crv, x, y } => {
            for part in [
                "{\"crv\":\"",
                crv.name(),
                "\",\"kty\":\"EC\",\"x\":\"",
                x,
                "\",\"y\":\"",
                y,
                "\"}",
            ] {
                w.push(part.as_bytes())?;
            }
        }
        Jwk::Ed25519 { x } => {
            for part in ["{\"crv\":\"Ed25519\",\"kty\":\"OKP\",\"x\":\"", x, "\"}"] {
                w.push(part.as_bytes())?;
            }
        }
        Jwk::Rsa { n, e } => {
            for part in ["{\"e\":\"", e, "\",\"kty\":\"RSA\",\"n\":\"", n, "\"}"] {
                w.push(part.as_bytes())?;
            }
        }
    }
    Ok(w.written_str())
}

/// The thumbprint text for a SHA-256 digest of [`canonical_json`].
pub fn thumbprint_text<'o>(digest: &[u8; 32], out: &'o mut [u8; THUMBPRINT_LEN]) -> &'o str {
    // 32 octets always encode to exactly 43 characters.
    base64url::encode(digest, out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_len_matches_output() {
        let x = "hL5BwMHApvjhBVvjwdLPaKdIFtZ1TEFCbkVH1XKy8GE";
        let y = "OnZIwyeSX2ap3rtpjIdOpvndkU8MDoRMI99fdkT3dEg";
        let mut buf = [0u8; 256];
        for jwk in [
            Jwk::Ec {
                crv: Curve::P256,
                x,
                y,
            },
            Jwk::Ed25519 { x: y },
            Jwk::Rsa { n: x, e: "AQAB" },
        ] {
            let text = canonical_json(&jwk, &mut buf).expect("canonical");
            assert_eq!(text.len(), jwk.canonical_len(), "{text}");
        }
    }

    #[test]
    fn bad_members_are_refused() {
        let ok = "hL5BwMHApvjhBVvjwdLPaKdIFtZ1TEFCbkVH1XKy8GE";
        let mut buf = [0u8; 256];
        let cases = [
            (
                Jwk::Ec {
                    crv: Curve::P384,
                    x: ok,
                    y: ok,
                },
                JwkError::Length,
            ),
            (
                Jwk::Ed25519 { x: "AAAA=" },
                JwkError::Encoding(DecodeError::Padding { index: 4 }),
            ),
            (
                Jwk::Rsa {
                    n: "AKAA",
                    e: "AQAB",
                },
                JwkError::NotMinimal,
            ),
            (Jwk::Rsa { n: ok, e: "" }, JwkError::NotMinimal),
            (Jwk::Rsa { n: ok, e: "AA" }, JwkError::NotMinimal),
        ];
        for (jwk, err) in cases {
            assert_eq!(canonical_json(&jwk, &mut buf), Err(err), "{jwk:?}");
        }
        let mut small = [0u8; 10];
        assert!(matches!(
            canonical_json(&Jwk::Rsa { n: ok, e: "AQAB" }, &mut small),
            Err(JwkError::BufferTooSmall(_))
        ));
    }
}
