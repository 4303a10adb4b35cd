//! Public keys in one normalised form, whichever way they arrived (JWK, CSR SPKI).
//!
//! Comparing keys across encodings (the account JWK against a CSR's SPKI, RFC 8555 §11.1) only
//! works if both sides reduce to the same bytes, so every parser in the crate produces this type.

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

    /// Refuses EC points that are not on their curve (or are the identity); other keys pass.
    ///
    /// ring would refuse such a point only when a signature is checked with it, as a failed
    /// signature; decoding it here names the actual problem for the client. A SEC1 decode is
    /// a few field multiplications, far cheaper than the throwaway ECDH agreement it replaces.
    pub fn check_point(&self) -> crate::Result<()> {
        let valid = match self {
            Self::P256(point) => p256::PublicKey::from_sec1_bytes(point).is_ok(),
            Self::P384(point) => p384::PublicKey::from_sec1_bytes(point).is_ok(),
            Self::Ed25519(_) | Self::Rsa { .. } => return Ok(()),
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
        assert!(PublicKey::Ed25519(vec![0; 32]).check_point().is_ok());
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
