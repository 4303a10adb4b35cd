//! Keys generated on the device: the ACME account key and the certificate key, both ECDSA P-256
//! with RFC 6979 deterministic signatures (so signing needs no RNG), and the pairing code
//! derived from the account key (SPEC §5.9).

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::rand_core::CryptoRngCore;
use protocol_spec::jwk::{self, Curve, Jwk, THUMBPRINT_LEN};
use sha2::{Digest, Sha256};

use crate::Error;

/// A P-256 private key. Generate it on the device; persist [`DeviceKey::to_bytes`] in the
/// device's own protected storage and never send it anywhere.
#[derive(Clone)]
pub struct DeviceKey(SigningKey);

impl DeviceKey {
    /// A new key from the integrator's cryptographically secure RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self(SigningKey::random(rng))
    }

    /// A key from its 32-octet big-endian scalar, as [`DeviceKey::to_bytes`] wrote it.
    pub fn from_bytes(secret: &[u8; 32]) -> Result<Self, Error> {
        SigningKey::from_bytes(secret.into())
            .map(Self)
            .map_err(|_| Error::Key)
    }

    /// The private scalar, for the device's own persistent storage.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes().into()
    }

    /// The uncompressed public point coordinates (x, y).
    pub fn public_xy(&self) -> ([u8; 32], [u8; 32]) {
        // SEC 1 §2.3.3 uncompressed form: 0x04 ‖ x ‖ y, always 65 octets for P-256.
        let point = self.0.verifying_key().to_encoded_point(false);
        let xy = point.as_bytes().get(1..65).unwrap_or(&[0; 64]);
        let (x, y) = xy.split_at(32);
        let mut out = ([0u8; 32], [0u8; 32]);
        out.0.copy_from_slice(x);
        out.1.copy_from_slice(y);
        out
    }

    /// ES256 over the concatenation of `parts` (RFC 7518 §3.4): r ‖ s, 64 octets.
    pub fn sign(&self, parts: &[&[u8]]) -> Result<[u8; 64], Error> {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        let sig: Signature = self.0.sign_prehash(&h.finalize()).map_err(|_| Error::Key)?;
        Ok(sig.to_bytes().into())
    }
}

impl core::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

/// The key of the certified end entity (the CSR key).
pub type CertificateKey = DeviceKey;

/// The account key with its JWK members and thumbprint computed once.
#[derive(Clone, Debug)]
pub struct AccountKey {
    key: DeviceKey,
    x: [u8; 43],
    y: [u8; 43],
    thumbprint: [u8; THUMBPRINT_LEN],
}

impl AccountKey {
    // Not inlined into its caller: 62 octets smaller in the firmware (footprint script).
    #[inline(never)]
    pub fn new(key: DeviceKey) -> Self {
        let (x, y) = key.public_xy();
        let mut xb = [0u8; 43];
        let mut yb = [0u8; 43];
        // 32 octets always encode to 43 characters.
        let _ = protocol_spec::base64url::encode(&x, &mut xb);
        let _ = protocol_spec::base64url::encode(&y, &mut yb);
        let mut k = Self {
            key,
            x: xb,
            y: yb,
            thumbprint: [0; THUMBPRINT_LEN],
        };
        // A P-256 JWK always fits and always validates.
        k.thumbprint = thumbprint(&k.jwk()).unwrap_or([0; THUMBPRINT_LEN]);
        k
    }

    pub fn key(&self) -> &DeviceKey {
        &self.key
    }

    /// The public JWK (RFC 7517) of the account key.
    pub fn jwk(&self) -> Jwk<'_> {
        Jwk::Ec {
            crv: Curve::P256,
            x: ascii(&self.x),
            y: ascii(&self.y),
        }
    }

    /// The RFC 7638 thumbprint, base64url (43 characters).
    pub fn thumbprint(&self) -> &str {
        ascii(&self.thumbprint)
    }

    /// The pairing code an operator compares before approving this device (SPEC §5.9).
    pub fn pairing_code(&self) -> PairingCode {
        PairingCode::for_thumbprint(self.thumbprint())
    }
}

/// The RFC 7638 thumbprint of `jwk` as base64url text: SHA-256 over its canonical JSON. EC and
/// OKP keys only: the canonical JSON of an RSA key would need a kilobyte of stack, and the
/// device never holds one.
pub fn thumbprint(jwk: &Jwk<'_>) -> Result<[u8; THUMBPRINT_LEN], Error> {
    // A P-384 JWK, the largest accepted here, is 168 octets of canonical JSON.
    let mut canonical = [0u8; 192];
    let json = jwk::canonical_json(jwk, &mut canonical).map_err(|_| Error::Key)?;
    let digest: [u8; 32] = Sha256::digest(json.as_bytes()).into();
    let mut t = [0u8; THUMBPRINT_LEN];
    jwk::thumbprint_text(&digest, &mut t);
    Ok(t)
}

fn ascii(b: &[u8]) -> &str {
    core::str::from_utf8(b).unwrap_or_default()
}

/// `XXXX-XXXX` in Crockford's base32 (SPEC §5.9).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PairingCode([u8; 9]);

impl PairingCode {
    pub fn for_thumbprint(thumbprint: &str) -> Self {
        const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let digest = Sha256::new()
            .chain_update(b"iiot-acme pairing code\0")
            .chain_update(thumbprint.as_bytes())
            .finalize();
        // The first 40 bits, 5 at a time from the most significant. Each group is read from
        // the two octets it falls in: 16-bit arithmetic, no 64-bit shifts on a 32-bit MCU.
        let mut code = [b'-'; 9];
        for i in 0..8 {
            let bit = 5 * i;
            let pair = u16::from_be_bytes([digest[bit / 8], digest[bit / 8 + 1]]);
            let symbol = (pair >> (11 - bit % 8)) & 0x1f;
            code[if i < 4 { i } else { i + 1 }] = CROCKFORD[usize::from(symbol)];
        }
        Self(code)
    }

    pub fn as_str(&self) -> &str {
        ascii(&self.0)
    }
}

impl core::fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6979_signatures_are_deterministic_and_verify() {
        use p256::ecdsa::signature::Verifier;
        let key = DeviceKey::from_bytes(&[7; 32]).expect("valid scalar");
        let a = key.sign(&[b"ab", b"c"]).expect("sign");
        let b = key.sign(&[b"abc"]).expect("sign");
        assert_eq!(a, b);
        let sig = Signature::from_slice(&a).expect("r||s");
        key.0
            .verifying_key()
            .verify(b"abc", &sig)
            .expect("verifies");
        assert!(DeviceKey::from_bytes(&[0; 32]).is_err());
        assert!(DeviceKey::from_bytes(&[0xff; 32]).is_err());
    }

    #[test]
    fn key_round_trips_through_its_bytes() {
        let key = DeviceKey::from_bytes(&[9; 32]).expect("valid");
        assert_eq!(key.to_bytes(), [9; 32]);
        let account = AccountKey::new(key);
        assert_eq!(account.thumbprint().len(), 43);
        assert_eq!(account.pairing_code().as_str().len(), 9);
    }
}
