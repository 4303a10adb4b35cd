//! device-attest-01 (SPEC §5.10): the device proves its `permanent-identifier` (its serial,
//! SPEC §4.5) with the IEEE 802.1AR IDevID its manufacturer installed.
//!
//! For each challenge the device signs the key authorization (token `.` account thumbprint, as
//! UTF-8) with its IDevID key and sends `{"attObj": base64url(CBOR)}` where the CBOR is
//!
//! ```text
//! {"fmt": "iiot-idevid",
//!  "attStmt": {"alg": -7 / -35, "sig": DER Ecdsa-Sig-Value, "x5c": [IDevID DER, issuers…]}}
//! ```
//!
//! The IDevID key is used for nothing else: the certificate key stays a fresh key made on the
//! device. The key sits behind [`Signer`], so a secure element or TPM can hold it and only
//! signatures enter this process; [`FileSigner`] is the implementation for a PKCS #8 file,
//! [`crate::pkcs11::TokenKey`] the one for a key in a PKCS #11 token.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use protocol_spec::attestation;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
    ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_ASN1_SIGNING,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::b64;
use crate::error::Error;
use crate::pkcs11::{self, TokenKey};

/// The attestation statement format (SPEC §5.10.2).
pub use protocol_spec::attestation::FORMAT;

/// Most certificates `x5c` may hold (SPEC §5.10.2): the IDevID and four issuers.
pub use protocol_spec::attestation::X5C_MAX;

/// The signature algorithm of an IDevID key, named as COSE does (RFC 9053 §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttestAlgorithm {
    /// ECDSA P-256 with SHA-256, COSE `-7`.
    Es256,
    /// ECDSA P-384 with SHA-384, COSE `-35`.
    Es384,
}

impl AttestAlgorithm {
    /// The COSE algorithm identifier written into `attStmt.alg`.
    pub fn cose(self) -> i64 {
        match self {
            Self::Es256 => attestation::COSE_ES256,
            Self::Es384 => attestation::COSE_ES384,
        }
    }

    fn verification(self) -> &'static ring::signature::EcdsaVerificationAlgorithm {
        match self {
            Self::Es256 => &ECDSA_P256_SHA256_ASN1,
            Self::Es384 => &ECDSA_P384_SHA384_ASN1,
        }
    }
}

impl fmt::Display for AttestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
        })
    }
}

/// The IDevID private key, wherever it lives.
///
/// Implement it for a secure element or TPM so that the private key never enters this process.
pub trait Signer: Send + Sync {
    /// The algorithm [`Signer::sign`] uses, matching the IDevID certificate's key.
    fn algorithm(&self) -> AttestAlgorithm;
    /// Signs `msg` (hashing it as the algorithm says) and returns an ASN.1 DER
    /// `Ecdsa-Sig-Value` (not r ‖ s).
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, Error>;
}

/// An IDevID key in a PKCS #8 file (P-256 or P-384).
pub struct FileSigner {
    alg: AttestAlgorithm,
    key: EcdsaKeyPair,
}

impl fmt::Debug for FileSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSigner")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl FileSigner {
    /// Reads a PKCS #8 `PRIVATE KEY` PEM block.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| format!("no PKCS #8 PRIVATE KEY PEM block: {e}"))?;
        let rng = SystemRandom::new();
        for (alg, ring_alg) in [
            (AttestAlgorithm::Es256, &ECDSA_P256_SHA256_ASN1_SIGNING),
            (AttestAlgorithm::Es384, &ECDSA_P384_SHA384_ASN1_SIGNING),
        ] {
            if let Ok(key) = EcdsaKeyPair::from_pkcs8(ring_alg, der.secret_pkcs8_der(), &rng) {
                return Ok(Self { alg, key });
            }
        }
        Err("not a PKCS #8 ECDSA P-256 or P-384 private key".into())
    }

    /// Reads the key file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let pem = std::fs::read(path).map_err(|e| Error::io("read the IDevID key", path, e))?;
        Self::from_pem(&pem).map_err(|e| Error::bad_file(path, e))
    }
}

impl Signer for FileSigner {
    fn algorithm(&self) -> AttestAlgorithm {
        self.alg
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        self.key
            .sign(&SystemRandom::new(), msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Error::Crypto("IDevID signing failed".into()))
    }
}

/// The IDevID certificate chain and its key: what a device needs for device-attest-01.
#[derive(Clone)]
pub struct Idevid {
    chain: Vec<Vec<u8>>,
    serial: Option<String>,
    signer: Arc<dyn Signer>,
}

impl fmt::Debug for Idevid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idevid")
            .field("certificates", &self.chain.len())
            .field("serial", &self.serial)
            .field("alg", &self.signer.algorithm())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Idevid {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain && Arc::ptr_eq(&self.signer, &other.signer)
    }
}

impl Eq for Idevid {}

impl Idevid {
    /// The chain (IDevID DER first, then its issuers) with the signer for the IDevID key.
    /// Checks that the signer's key belongs to the IDevID certificate (by signing a test message
    /// and verifying it with the certificate's key, so it works for keys that cannot be read).
    pub fn new(chain: Vec<Vec<u8>>, signer: Arc<dyn Signer>) -> Result<Self, Error> {
        let Some(leaf) = chain.first() else {
            return Err(Error::Config(
                "the IDevID chain holds no certificate".into(),
            ));
        };
        if chain.len() > X5C_MAX {
            return Err(Error::Config(format!(
                "the IDevID chain holds {} certificates; at most {X5C_MAX} (the IDevID and its \
                 issuers; leave out the manufacturer root)",
                chain.len()
            )));
        }
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| Error::Config(format!("the IDevID certificate does not parse: {e}")))?;
        let serial = cert
            .subject()
            .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        let point = cert.public_key().subject_public_key.data.to_vec();
        let probe = b"iiot-acme device-client: IDevID key check";
        let sig = signer.sign(probe)?;
        let alg = signer.algorithm();
        if UnparsedPublicKey::new(alg.verification(), &point)
            .verify(probe, &sig)
            .is_err()
        {
            return Err(Error::Config(format!(
                "the IDevID key does not belong to the IDevID certificate (subject {}): the \
                 first certificate of the chain must be the one for this {alg} key",
                cert.subject()
            )));
        }
        Ok(Self {
            chain,
            serial,
            signer,
        })
    }

    /// Reads the chain (PEM, IDevID first, then intermediates) from a file, and the key from a
    /// PKCS #8 file or, when `key_path` is a `pkcs11:` URI, a token ([`TokenKey`]).
    pub fn from_files(chain_path: &Path, key_path: &Path) -> Result<Self, Error> {
        let pem = std::fs::read(chain_path)
            .map_err(|e| Error::io("read the IDevID chain", chain_path, e))?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::bad_file(chain_path, format!("bad PEM: {e}")))?;
        if chain.is_empty() {
            return Err(Error::bad_file(chain_path, "no CERTIFICATE PEM block"));
        }
        let signer: Arc<dyn Signer> = match pkcs11::key_location(key_path, "IDevID key")? {
            Some(uri) => Arc::new(TokenKey::open(&uri)?),
            None => Arc::new(FileSigner::from_file(key_path)?),
        };
        Self::new(chain, signer)
    }

    /// The subject serialNumber of the IDevID, if it has one (what the CA compares with the
    /// ordered identifier's serial, SPEC §5.10.3 check 9).
    pub fn serial(&self) -> Option<&str> {
        self.serial.as_deref()
    }

    /// The attestation object (CBOR) for a key authorization: its UTF-8 octets are signed.
    pub fn attestation_object(&self, key_authorization: &str) -> Result<Vec<u8>, Error> {
        let sig = self.signer.sign(key_authorization.as_bytes())?;
        let x5c: Vec<&[u8]> = self.chain.iter().map(Vec::as_slice).collect();
        let stmt = attestation::Statement::iiot_idevid(self.signer.algorithm().cose(), &sig, &x5c);
        let mut obj = vec![0u8; stmt.encoded_len()];
        // The buffer has exactly the encoded length, so this cannot fail.
        attestation::encode(&stmt, &mut obj)
            .map_err(|e| Error::Crypto(format!("cannot encode the attestation object: {e}")))?;
        Ok(obj)
    }

    /// The challenge response payload: `{"attObj": base64url(CBOR)}` (SPEC §5.10.1).
    pub fn response_payload(&self, key_authorization: &str) -> Result<Vec<u8>, Error> {
        let obj = self.attestation_object(key_authorization)?;
        serde_json::to_vec(&serde_json::json!({ "attObj": b64::encode(&obj) }))
            .map_err(|e| Error::Crypto(format!("cannot encode the challenge response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idevid(serial: &str, alg: &'static rcgen::SignatureAlgorithm) -> (Vec<u8>, String) {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "test IDevID");
        p.distinguished_name.push(
            rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]),
            rcgen::DnValue::PrintableString(serial.try_into().expect("printable")),
        );
        let cert = p.self_signed(&key).expect("cert");
        (cert.der().to_vec(), key.serialize_pem())
    }

    /// A file key that keeps its last signature, so a test can rebuild the object it went into
    /// (ECDSA signatures are randomised).
    struct Recording {
        key: FileSigner,
        last: std::sync::Mutex<Vec<u8>>,
    }

    impl Signer for Recording {
        fn algorithm(&self) -> AttestAlgorithm {
            self.key.algorithm()
        }

        fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
            let sig = self.key.sign(msg)?;
            sig.clone_into(&mut self.last.lock().expect("not poisoned"));
            Ok(sig)
        }
    }

    #[test]
    fn attestation_object_is_the_spec_encoding_of_a_signature_over_the_key_authorization() {
        for (alg, verify, cose) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, &ECDSA_P256_SHA256_ASN1, -7),
            (&rcgen::PKCS_ECDSA_P384_SHA384, &ECDSA_P384_SHA384_ASN1, -35),
        ] {
            let (der, key_pem) = idevid("SN-1", alg);
            let signer = Arc::new(Recording {
                key: FileSigner::from_pem(key_pem.as_bytes()).expect("key"),
                last: std::sync::Mutex::default(),
            });
            let id = Idevid::new(vec![der.clone()], signer.clone()).expect("idevid");
            assert_eq!(id.serial(), Some("SN-1"));
            let obj = id.attestation_object("tok.thumb").expect("obj");
            let sig = signer.last.lock().expect("not poisoned").clone();
            // a2 63 "fmt" 6b "iiot-idevid" 67 "attStmt" a3 63 "alg" ...
            assert_eq!(&obj[..17], b"\xa2\x63fmt\x6biiot-idevid");
            let x5c = [der.as_slice()];
            let stmt = attestation::Statement::iiot_idevid(cose, &sig, &x5c);
            let mut want = vec![0u8; stmt.encoded_len()];
            attestation::encode(&stmt, &mut want).expect("sized");
            assert_eq!(obj, want);
            let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert");
            UnparsedPublicKey::new(verify, &cert.public_key().subject_public_key.data)
                .verify(b"tok.thumb", &sig)
                .expect("signature over the key authorization");
            let payload: serde_json::Value =
                serde_json::from_slice(&id.response_payload("tok.thumb").expect("payload"))
                    .expect("json");
            assert!(payload["attObj"].as_str().is_some_and(|s| !s.contains('=')));
        }
    }

    #[test]
    fn a_key_that_is_not_the_idevids_is_refused() {
        let (der, _) = idevid("SN-1", &rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, other_key) = idevid("SN-2", &rcgen::PKCS_ECDSA_P256_SHA256);
        let signer = FileSigner::from_pem(other_key.as_bytes()).expect("key");
        let err = Idevid::new(vec![der], Arc::new(signer)).expect_err("mismatch");
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(FileSigner::from_pem(b"nothing").is_err());
        assert!(Idevid::new(
            vec![],
            Arc::new(FileSigner::from_pem(other_key.as_bytes()).expect("key"))
        )
        .is_err());
    }
}
