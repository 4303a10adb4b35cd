//! Public keys in one normalised form, whichever way they arrived (JWK, CSR SPKI).
//!
//! Comparing keys across encodings (the account JWK against a CSR's SPKI, RFC 8555 §11.1) only
//! works if both sides reduce to the same bytes, so every parser in the crate produces this type.
//! The submodules hold what is decided about a key alone: the algorithm policy, factorable RSA
//! moduli, and the compromised-key blocklist.

pub mod blocklist;
pub mod policy;
pub mod weak;

use crate::der;

/// A public key this CA understands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PublicKey {
    /// ECDSA P-256; the uncompressed SEC1 point (65 bytes, leading 0x04).
    P256(Vec<u8>),
    /// ECDSA P-384; the uncompressed SEC1 point (97 bytes, leading 0x04).
    P384(Vec<u8>),
    /// Ed25519; the 32-byte public key.
    Ed25519(Vec<u8>),
    /// RSA; big-endian modulus and exponent without leading zero bytes.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
}

impl PublicKey {
    /// An RSA key, with leading zeros stripped so equal keys compare equal.
    pub fn rsa(n: &[u8], e: &[u8]) -> Self {
        Self::Rsa {
            n: strip_leading_zeros(n).to_vec(),
            e: strip_leading_zeros(e).to_vec(),
        }
    }

    /// Refuses EC points that are not on their curve (or are the identity), and Ed25519 keys
    /// that are not the canonical encoding of a curve point or whose point has small order;
    /// RSA keys pass.
    ///
    /// ring would refuse such a point only when a signature is checked with it, as a failed
    /// signature; decoding it here names the actual problem for the client. A SEC1 decode is
    /// a few field multiplications, far cheaper than the throwaway ECDH agreement it replaces.
    ///
    /// An Ed25519 key of small order (one of the eight torsion points: order 1, 2, 4 or 8) is
    /// not a key at all: ring verifies a signature by comparing R with sB - hA, and hA takes
    /// at most eight values, so anyone can make "signatures" that verify under it for any
    /// message (with A the identity, R = the identity and s = 0 verify everything). A
    /// non-canonical encoding (y >= p, or a sign bit set on x = 0) is refused as RFC 8032
    /// §5.1.3 says, so one key cannot enter the key-reuse index and the thumbprints under two
    /// encodings.
    pub fn check_point(&self) -> crate::Result<()> {
        let valid = match self {
            Self::P256(point) => p256::PublicKey::from_sec1_bytes(point).is_ok(),
            Self::P384(point) => p384::PublicKey::from_sec1_bytes(point).is_ok(),
            Self::Ed25519(raw) => return check_ed25519(raw),
            Self::Rsa { .. } => return Ok(()),
        };
        if valid {
            Ok(())
        } else {
            Err(crate::Error::BadPublicKey(format!(
                "EC public key is not a point on {}",
                self.describe().trim_start_matches("ECDSA ")
            )))
        }
    }

    /// Short human-readable description, e.g. `"ECDSA P-256"` or `"RSA 2048"`.
    pub fn describe(&self) -> String {
        match self {
            Self::P256(_) => "ECDSA P-256".to_owned(),
            Self::P384(_) => "ECDSA P-384".to_owned(),
            Self::Ed25519(_) => "Ed25519".to_owned(),
            Self::Rsa { n, .. } => format!("RSA {}", rsa_bits(n)),
        }
    }
}

/// The Ed25519 half of [`PublicKey::check_point`]: decode (RFC 8032 §5.1.3), then refuse
/// small order, then refuse a non-canonical encoding.
///
/// <https://www.rfc-editor.org/rfc/rfc8032#section-5.1.3>
fn check_ed25519(raw: &[u8]) -> crate::Result<()> {
    use curve25519_dalek::edwards::CompressedEdwardsY;
    let refuse = |why: &str| {
        Err(crate::Error::BadPublicKey(format!(
            "Ed25519 public key {why}"
        )))
    };
    let Ok(encoded) = CompressedEdwardsY::from_slice(raw) else {
        return refuse(&format!("is {} bytes, not 32", raw.len()));
    };
    let Some(point) = encoded.decompress() else {
        return refuse("is not a point on the curve");
    };
    // Checked before canonicity, so every encoding of a torsion point gets this detail.
    if point.is_small_order() {
        return refuse(
            "is a point of small order (order 1, 2, 4 or 8): signatures under it can be \
             forged without a private key; generate a new key",
        );
    }
    // decompress reads y modulo p and accepts a sign bit on x = 0; re-encoding shows both.
    if point.compress() != encoded {
        return refuse("is not canonically encoded (y must be below 2^255 - 19, RFC 8032 §5.1.2)");
    }
    Ok(())
}

/// Bit length of a big-endian unsigned integer.
pub fn rsa_bits(n: &[u8]) -> usize {
    let n = strip_leading_zeros(n);
    match n.first() {
        Some(&b) => n.len() * 8 - b.leading_zeros() as usize,
        None => 0,
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// The key's SubjectPublicKeyInfo in its one DER form (RFC 5280 §4.1.2.7 with the algorithm
/// identifiers of RFC 3279 §2.3.1, RFC 5480 §2.1.1 and RFC 8410 §3). Built from the
/// normalised key rather than copied from the CSR, so two encodings of one key cannot get two
/// index entries.
pub fn spki_der(key: &PublicKey) -> Vec<u8> {
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    let (algorithm, key_bits) = match key {
        PublicKey::Rsa { n, e } => (
            [der::tlv(der::OID, RSA_ENCRYPTION), der::tlv(der::NULL, &[])].concat(),
            der::tlv(
                der::SEQUENCE,
                &[der::unsigned_integer(n), der::unsigned_integer(e)].concat(),
            ),
        ),
        PublicKey::P256(point) => (
            [der::tlv(der::OID, EC_PUBLIC_KEY), der::tlv(der::OID, P256)].concat(),
            point.clone(),
        ),
        PublicKey::P384(point) => (
            [der::tlv(der::OID, EC_PUBLIC_KEY), der::tlv(der::OID, P384)].concat(),
            point.clone(),
        ),
        PublicKey::Ed25519(raw) => (der::tlv(der::OID, ED25519), raw.clone()),
    };
    der::tlv(
        der::SEQUENCE,
        &[
            der::tlv(der::SEQUENCE, &algorithm),
            der::bit_string(&key_bits),
        ]
        .concat(),
    )
}

/// Lowercase hex SHA-256 of [`spki_der`]: the key of [`Table::KeyUse`](crate::storage::Table::KeyUse), and the same value as
/// `openssl pkey -pubin -outform DER | sha256sum` for the key.
pub fn spki_sha256(key: &PublicKey) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &spki_der(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_point(alg: &'static ring::signature::EcdsaSigningAlgorithm) -> Vec<u8> {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("keygen");
        let pair =
            ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("parse");
        pair.public_key().as_ref().to_vec()
    }

    #[test]
    fn ec_points_are_checked_against_their_curve() {
        let p256 = ec_point(&ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING);
        let p384 = ec_point(&ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING);
        assert!(PublicKey::P256(p256.clone()).check_point().is_ok());
        assert!(PublicKey::P384(p384.clone()).check_point().is_ok());
        let flip_y = |p: &[u8]| {
            let mut p = p.to_vec();
            if let Some(last) = p.last_mut() {
                *last ^= 1;
            }
            p
        };
        let refused = [
            PublicKey::P256(flip_y(&p256)),
            PublicKey::P384(flip_y(&p384)),
            // Points of the other curve's length, the all-zero encoding, a coordinate >= p.
            PublicKey::P256(p384.clone()),
            PublicKey::P384(p256.clone()),
            PublicKey::P256([&[4u8][..], &[0; 64]].concat()),
            PublicKey::P256([&[4u8][..], &[0xff; 64]].concat()),
        ];
        for key in refused {
            let err = key.check_point().expect_err("off-curve point accepted");
            assert!(
                matches!(&err, crate::Error::BadPublicKey(m) if m.starts_with("EC public key is not a point on P-")),
                "{err:?}"
            );
        }
    }

    fn ed25519_detail(raw: &[u8]) -> String {
        match PublicKey::Ed25519(raw.to_vec()).check_point() {
            Err(crate::Error::BadPublicKey(detail)) => detail,
            other => panic!("{}: expected badPublicKey, got {other:?}", hex::encode(raw)),
        }
    }

    /// `y + p` for an encoding whose y is below 19, keeping the sign bit: the only other
    /// 255-bit value that reads as the same y modulo p = 2^255 - 19.
    fn plus_p(encoding: &[u8; 32]) -> Option<[u8; 32]> {
        let small_y = encoding[1..31].iter().all(|&b| b == 0) && encoding[31] & 0x7f == 0;
        (small_y && encoding[0] < 19).then(|| {
            let mut out = [0xff; 32];
            out[0] = 0xed + encoding[0];
            out[31] = 0x7f | (encoding[31] & 0x80);
            out
        })
    }

    /// Every encoding of the eight torsion points, canonical or not, is refused as small
    /// order; a generated key passes.
    #[test]
    fn ed25519_small_order_keys_are_refused_in_every_encoding() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        let mut encodings = std::collections::BTreeSet::new();
        for point in EIGHT_TORSION {
            let canonical = point.compress().to_bytes();
            let mut sign_flipped = canonical;
            sign_flipped[31] ^= 0x80;
            for e in [Some(canonical), Some(sign_flipped), plus_p(&canonical)]
                .into_iter()
                .flatten()
                .chain(plus_p(&sign_flipped))
            {
                // Keep only the encodings that decode to a torsion point at all (flipping the
                // sign of a point with x != 0 gives its negation, another torsion point).
                let decoded = curve25519_dalek::edwards::CompressedEdwardsY(e).decompress();
                if decoded.is_some_and(|p| p.is_small_order()) {
                    encodings.insert(e);
                }
            }
        }
        // 8 canonical encodings, plus: the identity (y = 1) with the sign bit, as y = p + 1,
        // and as y = p + 1 with the sign bit; (0, -1) with the sign bit; the two points of
        // order 4 (y = 0) as y = p.
        assert_eq!(encodings.len(), 14, "{encodings:x?}");
        for e in &encodings {
            let detail = ed25519_detail(e);
            assert!(
                detail.starts_with("Ed25519 public key is a point of small order"),
                "{}: {detail}",
                hex::encode(e)
            );
        }

        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse");
        let public = ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec();
        assert!(PublicKey::Ed25519(public).check_point().is_ok());
    }

    /// A y with no x on the curve, and a large-order point written as y + p, are refused
    /// with their own details.
    #[test]
    fn ed25519_off_curve_and_non_canonical_keys_are_refused() {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        let small_y = |y: u8| {
            let mut e = [0u8; 32];
            e[0] = y;
            e
        };
        let off_curve = (2..=u8::MAX)
            .map(small_y)
            .find(|e| CompressedEdwardsY(*e).decompress().is_none())
            .expect("some small y is not on the curve");
        assert_eq!(
            ed25519_detail(&off_curve),
            "Ed25519 public key is not a point on the curve"
        );
        let on_curve = (2..19)
            .map(small_y)
            .find(|e| {
                CompressedEdwardsY(*e)
                    .decompress()
                    .is_some_and(|p| !p.is_small_order())
            })
            .expect("some y below 19 is on the curve");
        assert!(PublicKey::Ed25519(on_curve.to_vec()).check_point().is_ok());
        let non_canonical = plus_p(&on_curve).expect("y + p");
        assert!(
            ed25519_detail(&non_canonical).starts_with("Ed25519 public key is not canonically"),
            "{}",
            ed25519_detail(&non_canonical)
        );
        assert_eq!(
            ed25519_detail(&[0; 31]),
            "Ed25519 public key is 31 bytes, not 32"
        );
    }

    #[test]
    fn rsa_keys_compare_equal_across_zero_padding() {
        assert_eq!(
            PublicKey::rsa(&[0, 0xC0, 1], &[1, 0, 1]),
            PublicKey::rsa(&[0xC0, 1], &[0, 1, 0, 1])
        );
        assert_eq!(rsa_bits(&[0, 0x80, 0]), 16);
        assert_eq!(rsa_bits(&[0x01, 0]), 9);
    }
}
