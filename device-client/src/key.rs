//! Keys made on the device: the ACME account key and the certificate key.
//!
//! The account key ([`KeyPair`]) is ECDSA (P-256 by default, the `ES256` every ACME server
//! supports, SPEC §3.3; or P-384). The certificate key ([`CertKey`]) is ECDSA P-256 or P-384,
//! Ed25519, or RSA 2048 or 3072 bits (exponent 65537), what the CA's key policy certifies
//! (SPEC §7.4) and what OPC UA's RSA security policies need. Every key is generated on the
//! device from the operating system's CSPRNG (ring; the `rsa` crate with `OsRng` for RSA, which
//! ring cannot generate), stored as PKCS #8 PEM in files created with mode 0600 (never widened
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
    EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair as _, RsaKeyPair,
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::Serialize;

use crate::error::Error;
use crate::{b64, files};

/// Key algorithms (SPEC §3.3, §7.4). Account keys are ECDSA ([`KeyAlgorithm::is_ecdsa`]);
/// certificate keys may be any of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// ECDSA P-256 with SHA-256, JWS `ES256`. The default.
    #[default]
    P256,
    /// ECDSA P-384 with SHA-384, JWS `ES384`.
    P384,
    /// Ed25519 (RFC 8410); certificate keys only.
    Ed25519,
    /// RSA, 2048-bit modulus, exponent 65537; the CSR is signed with PKCS #1 v1.5 SHA-256.
    /// Certificate keys only.
    Rsa2048,
    /// RSA, 3072-bit modulus, exponent 65537; certificate keys only.
    Rsa3072,
}

impl KeyAlgorithm {
    fn ring(self) -> Option<&'static EcdsaSigningAlgorithm> {
        match self {
            Self::P256 => Some(&ECDSA_P256_SHA256_FIXED_SIGNING),
            Self::P384 => Some(&ECDSA_P384_SHA384_FIXED_SIGNING),
            Self::Ed25519 | Self::Rsa2048 | Self::Rsa3072 => None,
        }
    }

    /// Whether this is an ECDSA algorithm, the only kind an account key may be.
    pub fn is_ecdsa(self) -> bool {
        self.ring().is_some()
    }

    /// The JWS `alg` (RFC 7518 §3.1, RFC 8037 §3.1).
    pub fn jws_alg(self) -> &'static str {
        match self {
            Self::P256 => "ES256",
            Self::P384 => "ES384",
            Self::Ed25519 => "EdDSA",
            Self::Rsa2048 | Self::Rsa3072 => "RS256",
        }
    }

    fn curve(self) -> protocol_spec::jwk::Curve {
        match self {
            Self::P384 => protocol_spec::jwk::Curve::P384,
            _ => protocol_spec::jwk::Curve::P256,
        }
    }

    /// The RSA modulus size in bits, for the RSA algorithms.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            _ => None,
        }
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "es256" => Ok(Self::P256),
            "p384" | "p-384" | "es384" => Ok(Self::P384),
            "ed25519" => Ok(Self::Ed25519),
            "rsa2048" | "rsa-2048" => Ok(Self::Rsa2048),
            "rsa3072" | "rsa-3072" => Ok(Self::Rsa3072),
            _ => Err(format!(
                "unknown key algorithm {s:?}: use p256, p384, ed25519, rsa2048 or rsa3072"
            )),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::P256 => "p256",
            Self::P384 => "p384",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa2048",
            Self::Rsa3072 => "rsa3072",
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

/// An ECDSA key pair held in memory, with its PKCS #8 encoding for storage: the account key.
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
    /// Generates a new ECDSA key with the system CSPRNG; other algorithms are refused.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, Error> {
        let Some(ring_alg) = alg.ring() else {
            return Err(Error::Config(format!(
                "account keys are ECDSA: use p256 or p384, not {alg} (RSA and Ed25519 are for \
                 certificate keys, --key-algorithm)"
            )));
        };
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(ring_alg, &rng)
            .map_err(|_| Error::Crypto(format!("cannot generate a {alg} key")))?;
        Self::from_pkcs8_der(doc.as_ref())
    }

    /// Reads a PKCS #8 DER key of either supported curve.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        for (alg, ring_alg) in [
            (KeyAlgorithm::P256, &ECDSA_P256_SHA256_FIXED_SIGNING),
            (KeyAlgorithm::P384, &ECDSA_P384_SHA384_FIXED_SIGNING),
        ] {
            if let Ok(ring) = EcdsaKeyPair::from_pkcs8(ring_alg, der, &rng) {
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
        Self::from_pkcs8_der(pkcs8_from_pem(pem)?.secret_pkcs8_der())
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

/// The certificate key: any [`KeyAlgorithm`], held as its PKCS #8 encoding with the public key
/// it certifies. The CSR is signed from the PKCS #8 by rcgen (ring): ECDSA with the curve's
/// hash, Ed25519, or RSA PKCS #1 v1.5 with SHA-256.
pub struct CertKey {
    alg: KeyAlgorithm,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl fmt::Debug for CertKey {
    // Never print key material (STYLE: logging).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKey").field("alg", &self.alg).finish()
    }
}

impl CertKey {
    /// Generates a new key of `alg` from the system CSPRNG.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let failed =
            |e: &dyn fmt::Display| Error::Crypto(format!("cannot generate a {alg} key: {e}"));
        let pkcs8 = match alg {
            KeyAlgorithm::P256 | KeyAlgorithm::P384 => {
                return KeyPair::generate(alg).map(Self::from_ecdsa)
            }
            KeyAlgorithm::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|e| failed(&e))?
                .as_ref()
                .to_vec(),
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => {
                use rsa::pkcs8::EncodePrivateKey as _;
                let bits = alg.rsa_bits().unwrap_or(2048);
                // RsaPrivateKey::new uses the exponent 65537, the one the CA accepts.
                let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
                    .map_err(|e| failed(&e))?;
                key.to_pkcs8_der()
                    .map_err(|e| failed(&e))?
                    .as_bytes()
                    .to_vec()
            }
        };
        let key = Self::from_pkcs8_der(&pkcs8)?;
        if key.alg != alg {
            return Err(Error::Crypto(format!(
                "generated a {} key instead of {alg}",
                key.alg
            )));
        }
        Ok(key)
    }

    fn from_ecdsa(key: KeyPair) -> Self {
        Self {
            alg: key.alg,
            public: key.public_key_sec1().to_vec(),
            pkcs8: key.pkcs8,
        }
    }

    /// Reads a PKCS #8 DER key of any supported algorithm. RSA keys must have 2048 or 3072
    /// bits.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, Error> {
        if let Ok(k) = KeyPair::from_pkcs8_der(der) {
            return Ok(Self::from_ecdsa(k));
        }
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Ok(Self {
                alg: KeyAlgorithm::Ed25519,
                public: k.public_key().as_ref().to_vec(),
                pkcs8: der.to_vec(),
            });
        }
        if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
            let bits = k.public().modulus_len() * 8;
            let alg = match bits {
                2048 => KeyAlgorithm::Rsa2048,
                3072 => KeyAlgorithm::Rsa3072,
                other => {
                    return Err(Error::Crypto(format!(
                        "an RSA key of {other} bits; certificate keys are RSA 2048 or 3072"
                    )))
                }
            };
            return Ok(Self {
                alg,
                public: k.public_key().as_ref().to_vec(),
                pkcs8: der.to_vec(),
            });
        }
        Err(Error::Crypto(
            "not a PKCS #8 ECDSA P-256/P-384, Ed25519 or RSA 2048/3072 private key".into(),
        ))
    }

    /// Reads a `PRIVATE KEY` PEM block (PKCS #8).
    pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        Self::from_pkcs8_der(pkcs8_from_pem(pem)?.secret_pkcs8_der())
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

    /// The subjectPublicKey bits of the key's SubjectPublicKeyInfo: the uncompressed SEC1
    /// point for ECDSA, the 32 octets for Ed25519, the DER RSAPublicKey for RSA. What a
    /// certificate for the key carries.
    pub fn public_key_bits(&self) -> &[u8] {
        &self.public
    }

    /// The key as rcgen signs with it (CSRs, self-signed certificates).
    pub fn rcgen(&self) -> Result<rcgen::KeyPair, Error> {
        rcgen::KeyPair::try_from(self.pkcs8.as_slice())
            .map_err(|e| Error::Crypto(format!("cannot sign with the {} key: {e}", self.alg)))
    }

    /// Writes the key to `path` atomically, in a file created with mode 0600.
    pub fn store(&self, path: &Path) -> Result<(), Error> {
        files::write_atomic(path, self.to_pem().as_bytes(), files::PRIVATE_MODE)
    }
}

/// The DER of the `PRIVATE KEY` PEM block (PKCS #8) in `pem`.
fn pkcs8_from_pem(pem: &[u8]) -> Result<PrivatePkcs8KeyDer<'static>, Error> {
    PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map_err(|e| Error::Crypto(format!("no PKCS #8 PRIVATE KEY PEM block: {e}")))
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
    fn certificate_keys_of_every_algorithm() {
        use x509_parser::prelude::FromDer as _;
        for alg in [
            KeyAlgorithm::P256,
            KeyAlgorithm::P384,
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::Rsa2048,
        ] {
            let key = CertKey::generate(alg).expect("generate");
            assert_eq!(key.algorithm(), alg);
            let again = CertKey::from_pem(key.to_pem().as_bytes()).expect("reload");
            assert_eq!(again.algorithm(), alg);
            assert_eq!(again.public_key_bits(), key.public_key_bits());
            // The public key rcgen signs with is the one this key reports.
            let spki_der =
                rcgen::PublicKeyData::subject_public_key_info(&key.rcgen().expect("rcgen"));
            let (_, spki) =
                x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki_der).expect("spki");
            assert_eq!(spki.subject_public_key.data.as_ref(), key.public_key_bits());
            if alg == KeyAlgorithm::Rsa2048 {
                let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
                    panic!("not RSA");
                };
                assert_eq!(rsa.key_size(), 2048);
                assert_eq!(rsa.exponent, [1, 0, 1]);
            }
        }
        let err =
            CertKey::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .expect_err("garbage");
        assert!(err.to_string().contains("RSA 2048/3072"), "{err}");
    }

    #[test]
    fn account_keys_are_ecdsa_only() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::Rsa2048] {
            let err = KeyPair::generate(alg).expect_err("not ECDSA");
            assert!(err.to_string().contains("account keys are ECDSA"), "{err}");
        }
        assert_eq!("RSA3072".parse(), Ok(KeyAlgorithm::Rsa3072));
        assert_eq!("ed25519".parse(), Ok(KeyAlgorithm::Ed25519));
        assert!("rsa1024".parse::<KeyAlgorithm>().is_err());
        assert_eq!(KeyAlgorithm::Rsa2048.to_string(), "rsa2048");
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
