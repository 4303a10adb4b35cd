//! The operator CA: a self-signed CA of its own that issues the client certificates operators
//! log in to the console with, and nothing else.
//!
//! It is separate from the device hierarchy on purpose. The console's TLS listener trusts this
//! CA only, so no device certificate (whatever an attacker manages to get issued through ACME)
//! can ever authenticate as an operator, and an operator certificate is useless to a device.
//!
//! Files, in the CA directory next to the device hierarchy, created on first use:
//!
//! | file              | contents                          | mode |
//! |-------------------|-----------------------------------|------|
//! | `operator-ca.pem` | the operator CA certificate       | 0644 |
//! | `operator-ca.key` | its private key, PKCS#8           | 0600 |

use super::*;

const OPERATOR_CA_CERT: &str = "operator-ca.pem";
const OPERATOR_CA_KEY: &str = "operator-ca.key";

/// The longest an operator certificate may be valid: people leave, and revocation depends on
/// the operator records being intact.
pub const MAX_OPERATOR_VALIDITY: Duration = Duration::from_secs(825 * 86_400);

/// The client certificate (leaf) a TLS connection presented and its server's client verifier
/// accepted, attached to each of the connection's requests by the listener.
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub std::sync::Arc<CertificateDer<'static>>);

/// The operator CA, loaded.
pub struct OperatorCa {
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// An operator's new certificate and key.
pub struct OperatorCredential {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The certificate's serial number, hex.
    pub serial: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

impl OperatorCredential {
    /// The certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.key_der)
    }

    /// A PKCS#12 file with the key, the certificate and the operator CA, for browsers:
    /// PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC, and an HMAC-SHA256 integrity MAC.
    pub fn pkcs12(&self, ca: &OperatorCa, name: &str, passphrase: &str) -> Result<Vec<u8>> {
        use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
        let bad = |e: p12_keystore::error::Error| {
            Error::Internal(format!("cannot build the PKCS#12 file: {e}"))
        };
        let certs = [
            Certificate::from_der(&self.cert_der).map_err(bad)?,
            Certificate::from_der(&ca.cert_der).map_err(bad)?,
        ];
        let key = PrivateKey::from_der(&self.key_der).map_err(bad)?;
        let local_key_id = ring::digest::digest(&ring::digest::SHA256, &self.cert_der)
            .as_ref()
            .to_vec();
        let mut store = KeyStore::new();
        store.add_entry(
            name,
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs)),
        );
        store
            .writer(passphrase)
            .encryption_algorithm(p12_keystore::EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
            .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha256)
            .encryption_iterations(PKCS12_ITERATIONS)
            .mac_iterations(PKCS12_ITERATIONS)
            .write()
            .map_err(bad)
    }
}

/// PBKDF2 iterations in the PKCS#12 file: what OpenSSL 3 uses by default for its own.
const PKCS12_ITERATIONS: u32 = 2048;

impl OperatorCa {
    /// Loads the operator CA from `dir` (`<data_dir>/ca`), creating it when neither of its
    /// files exists. One file without the other is refused, as for the device hierarchy.
    pub fn load_or_init(dir: &Path) -> Result<Self> {
        ensure_private_dir(dir)?;
        let (cert_path, key_path) = (dir.join(OPERATOR_CA_CERT), dir.join(OPERATOR_CA_KEY));
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => {
                let key = generate_ca_key(CaKeyType::P256)?;
                let tag = hex::encode(random_bytes::<4>()?);
                let params = ca_params(
                    format!("iiot-acme Operator CA {tag}"),
                    now_whole_seconds()?,
                    ROOT_LIFETIME,
                    0,
                )?;
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| Error::Internal(format!("cannot sign the operator CA: {e}")))?;
                write_key(&key_path, &key)?;
                write_cert(&cert_path, cert.der())?;
                tracing::info!(path = %cert_path.display(), "created the operator CA");
            }
            (true, true) => {}
            (cert, _) => {
                let missing = if cert { &key_path } else { &cert_path };
                return Err(file_error(
                    missing,
                    "is missing while the other operator CA file exists; restore it from a \
                     backup (a new operator CA would lock out every operator)",
                ));
            }
        }
        Self::load(dir)
    }

    /// Loads the operator CA from `dir`; an error if it was never created.
    pub fn load(dir: &Path) -> Result<Self> {
        let cert_path = dir.join(OPERATOR_CA_CERT);
        let cert_der = read_pem_cert(&cert_path)?;
        let key = read_key(&dir.join(OPERATOR_CA_KEY))?;
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key)
            .map_err(|e| file_error(&cert_path, format!("cannot be used to issue: {e}")))?;
        Ok(Self { cert_der, issuer })
    }

    /// The operator CA certificate, DER: the only trust anchor of the console's listener.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues a client certificate for operator `name` (its CN), on a new P-256 key, valid for
    /// `validity` (at most [`MAX_OPERATOR_VALIDITY`]), with EKU clientAuth only.
    pub fn issue(&self, name: &str, validity: Duration) -> Result<OperatorCredential> {
        let validity = validity.min(MAX_OPERATOR_VALIDITY);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::Internal(format!("cannot generate the operator key: {e}")))?;
        let now = now_whole_seconds()?;
        let not_after = now + validity;
        let serial = random_serial()?;
        let mut params = CertificateParams::default();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "iiot-acme operators");
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| Error::Internal(format!("cannot sign the operator certificate: {e}")))?;
        Ok(OperatorCredential {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            serial: hex::encode(serial),
            not_after: not_after.unix_timestamp(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_certificates_are_client_only_and_chain_to_the_operator_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = OperatorCa::load_or_init(dir.path()).expect("init");
        let again = OperatorCa::load_or_init(dir.path()).expect("reload");
        assert_eq!(ca.cert_der(), again.cert_der(), "created once, then reused");

        let cred = ca
            .issue("alice", Duration::from_secs(10 * 365 * 86_400))
            .expect("issue");
        let (_, cert) = x509_parser::parse_x509_certificate(&cred.cert_der).expect("parse");
        let (_, root) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("parse");
        cert.verify_signature(Some(root.public_key()))
            .expect("signed by the operator CA");
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok()),
            Some("alice")
        );
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!cert.is_ca());
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(
            lifetime <= MAX_OPERATOR_VALIDITY.as_secs() as i64 + 60,
            "validity capped: {lifetime}"
        );

        let p12 = cred.pkcs12(&ca, "alice", "correct horse").expect("p12");
        let store = p12_keystore::KeyStore::from_pkcs12(
            &p12,
            "correct horse",
            p12_keystore::Pkcs12ImportPolicy::default(),
        )
        .expect("reads back");
        let (_, chain) = store.private_key_chain().expect("key entry");
        assert_eq!(chain.key().as_der(), cred.key_der.as_slice());
        assert_eq!(chain.certs()[0].as_der(), cred.cert_der.as_slice());
        assert!(p12_keystore::KeyStore::from_pkcs12(
            &p12,
            "wrong",
            p12_keystore::Pkcs12ImportPolicy::default()
        )
        .is_err());
    }

    #[test]
    fn a_lone_operator_ca_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        OperatorCa::load_or_init(dir.path()).expect("init");
        fs::remove_file(dir.path().join(OPERATOR_CA_KEY)).expect("rm");
        let err = OperatorCa::load_or_init(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("operator-ca.key"), "{err}");
    }
}
