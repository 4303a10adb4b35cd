//! Keys made on the device: the ACME account key and the certificate key.
//!
//! Both are ECDSA (P-256 by default, the `ES256` every ACME server supports, SPEC §3.3), generated
//! with ring's CSPRNG, stored as PKCS #8 PEM in files created with mode 0600 (never widened
//! afterwards by a chmod), and never sent anywhere: only signatures and public keys leave the
//! device.
//!
//! [`Signer`] is what the JWS layer needs from a key. The account key implements it here. The
//! IDevID key of device-attest-01 has its own trait, [`crate::attest::Signer`] (DER signatures
//! over the key authorization), which a secure element or TPM can implement.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::Serialize;

use crate::error::Error;
use crate::{b64, files};

/// Key algorithms for account and certificate keys (SPEC §3.3, §7.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// ECDSA P-256 with SHA-256, JWS `ES256`. The default.
    #[default]
    P256,
    /// ECDSA P-384 with SHA-384, JWS `ES384`.
    P384,
}

impl KeyAlgorithm {
    fn ring(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            Self::P256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
            Self::P384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
        }
    }

    /// The JWS `alg` (RFC 7518 §3.1).
    pub fn jws_alg(self) -> &'static str {
        match self {
            Self::P256 => "ES256",
            Self::P384 => "ES384",
        }
    }

    fn curve(self) -> protocol_spec::jwk::Curve {
        match self {
            Self::P256 => protocol_spec::jwk::Curve::P256,
            Self::P384 => protocol_spec::jwk::Curve::P384,
        }
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "es256" => Ok(Self::P256),
            "p384" | "p-384" | "es384" => Ok(Self::P384),
            _ => Err(format!("unknown key algorithm {s:?}: use p256 or p384")),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::P256 => "p256",
            Self::P384 => "p384",
        })
    }
}

/// A public EC key as a JWK (RFC 7518 §6.2.1). Members are in RFC 7638 order, so the JSON
/// serialization of an EC key is also its canonical thumbprint input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Jwk {
    /// `crv`: `P-256` or `P-384`.
    pub crv: &'static str,
    /// `kty`: always `EC`.
    pub kty: &'static str,
    /// `x`, base64url, fixed length for the curve.
    pub x: String,
    /// `y`, base64url, fixed length for the curve.
    pub y: String,
}

impl Jwk {
    /// The RFC 7638 thumbprint, base64url (SPEC §5.2).
    pub fn thumbprint(&self) -> Result<String, Error> {
        let curve = match self.crv {
            "P-256" => protocol_spec::jwk::Curve::P256,
            "P-384" => protocol_spec::jwk::Curve::P384,
            other => return Err(Error::Crypto(format!("unsupported curve {other}"))),
        };
        let jwk = protocol_spec::jwk::Jwk::Ec {
            crv: curve,
            x: &self.x,
            y: &self.y,
        };
        let mut buf = vec![0u8; jwk.canonical_len()];
        let canonical = protocol_spec::jwk::canonical_json(&jwk, &mut buf)
            .map_err(|e| Error::Crypto(format!("cannot thumbprint the key: {e}")))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        let mut out = [0u8; protocol_spec::jwk::THUMBPRINT_LEN];
        let digest: &[u8; 32] = digest
            .as_ref()
            .try_into()
            .map_err(|_| Error::Crypto("SHA-256 digest is not 32 octets".into()))?;
        Ok(protocol_spec::jwk::thumbprint_text(digest, &mut out).to_owned())
    }
}

/// What the JWS layer needs from a key: its algorithm, its public JWK and signatures.
///
/// Implemented by [`KeyPair`]. A secure element or TPM implements it for keys whose private half
/// never enters this process. (The IDevID key of device-attest-01 uses [`crate::attest::Signer`].)
pub trait Signer: Send + Sync {
    /// The JWS `alg`.
    fn jws_alg(&self) -> &'static str;
    /// The public key.
    fn public_jwk(&self) -> Jwk;
    /// Signs `message` and returns the signature in JWS form (r ‖ s for ECDSA, RFC 7518 §3.4).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error>;
}

/// An ECDSA key pair held in memory, with its PKCS #8 encoding for storage.
pub struct KeyPair {
    alg: KeyAlgorithm,
    pkcs8: Vec<u8>,
    ring: EcdsaKeyPair,
}

impl fmt::Debug for KeyPair {
    // Never print key material (STYLE: logging).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair").field("alg", &self.alg).finish()
    }
}

impl KeyPair {
    /// Generates a new key with the system CSPRNG.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(alg.ring(), &rng)
            .map_err(|_| Error::Crypto(format!("cannot generate a {alg} key")))?;
        Self::from_pkcs8_der(doc.as_ref())
    }

    /// Reads a PKCS #8 DER key of either supported curve.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        for alg in [KeyAlgorithm::P256, KeyAlgorithm::P384] {
            if let Ok(ring) = EcdsaKeyPair::from_pkcs8(alg.ring(), der, &rng) {
                return Ok(Self {
                    alg,
                    pkcs8: der.to_vec(),
                    ring,
                });
            }
        }
        Err(Error::Crypto(
            "not a PKCS #8 ECDSA P-256 or P-384 private key".into(),
        ))
    }

    /// Reads a `PRIVATE KEY` PEM block (PKCS #8).
    pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| Error::Crypto(format!("no PKCS #8 PRIVATE KEY PEM block: {e}")))?;
        Self::from_pkcs8_der(der.secret_pkcs8_der())
    }

    /// The PKCS #8 `PRIVATE KEY` PEM text.
    pub fn to_pem(&self) -> String {
        pem("PRIVATE KEY", &self.pkcs8)
    }

    /// The PKCS #8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.alg
    }

    /// The public key as an uncompressed SEC1 point (`04 ‖ x ‖ y`).
    pub fn public_key_sec1(&self) -> &[u8] {
        self.ring.public_key().as_ref()
    }

    /// Loads the key at `path`, or generates one of `alg` and stores it there (mode 0600) if
    /// the file does not exist. Returns the key and whether it was generated.
    pub fn load_or_generate(path: &Path, alg: KeyAlgorithm) -> Result<(Self, bool), Error> {
        match std::fs::read(path) {
            Ok(pem) => {
                let key = Self::from_pem(&pem).map_err(|e| Error::bad_file(path, e))?;
                Ok((key, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate(alg)?;
                key.store(path)?;
                Ok((key, true))
            }
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// Writes the key to `path` atomically, in a file created with mode 0600.
    pub fn store(&self, path: &Path) -> Result<(), Error> {
        files::write_atomic(path, self.to_pem().as_bytes(), files::PRIVATE_MODE)
    }
}

impl Signer for KeyPair {
    fn jws_alg(&self) -> &'static str {
        self.alg.jws_alg()
    }

    fn public_jwk(&self) -> Jwk {
        let point = self.public_key_sec1();
        let n = self.alg.curve().coordinate_len();
        // ring returns the uncompressed point: 0x04, then x and y of n octets each.
        let (x, y) = point[1..].split_at(n);
        Jwk {
            crv: self.alg.curve().name(),
            kty: "EC",
            x: b64::encode(x),
            y: b64::encode(y),
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let rng = SystemRandom::new();
        self.ring
            .sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Error::Crypto("ECDSA signing failed".into()))
    }
}

/// PEM armour (RFC 7468): standard base64 in 64-character lines.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED};

    #[test]
    fn generate_sign_verify_reload() {
        for (alg, verify) in [
            (KeyAlgorithm::P256, &ECDSA_P256_SHA256_FIXED),
            (KeyAlgorithm::P384, &ECDSA_P384_SHA384_FIXED),
        ] {
            let key = KeyPair::generate(alg).expect("generate");
            let sig = key.sign(b"hello").expect("sign");
            assert_eq!(sig.len(), if alg == KeyAlgorithm::P256 { 64 } else { 96 });
            UnparsedPublicKey::new(verify, key.public_key_sec1())
                .verify(b"hello", &sig)
                .expect("verifies");
            let again = KeyPair::from_pem(key.to_pem().as_bytes()).expect("reload");
            assert_eq!(again.algorithm(), alg);
            assert_eq!(again.public_jwk(), key.public_jwk());
            let jwk = key.public_jwk();
            assert_eq!(jwk.x.len(), jwk.y.len());
            assert_eq!(jwk.thumbprint().expect("thumbprint").len(), 43);
        }
    }

    #[test]
    fn stored_key_is_private_and_reloads() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("account.key.pem");
        let (key, created) = KeyPair::load_or_generate(&path, KeyAlgorithm::P256).expect("gen");
        assert!(created);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = KeyPair::load_or_generate(&path, KeyAlgorithm::P384).expect("load");
        assert!(!created);
        assert_eq!(again.public_jwk(), key.public_jwk());
        assert!(format!("{again:?}").contains("P256"));
    }

    #[test]
    fn jwk_json_is_canonical_order() {
        let key = KeyPair::generate(KeyAlgorithm::P256).expect("generate");
        let json = serde_json::to_string(&key.public_jwk()).expect("json");
        assert!(
            json.starts_with("{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":"),
            "{json}"
        );
    }
}
