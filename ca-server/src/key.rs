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
