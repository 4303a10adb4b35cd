//! The certificate authority: a two-level hierarchy on disk and issuance from it.
//!
//! A self-signed root (pathlen 1) certifies an online EC issuing intermediate (pathlen 0),
//! which signs end-entity certificates and the server's own HTTPS certificate, and, unless the
//! operator turns it off, an online RSA issuing intermediate (pathlen 0) for profiles whose RSA
//! keys need an RSA signature on the certificate (OPC UA Basic256Sha256). The root signs both
//! intermediates with its own algorithm, so under the default P-384 root the RSA intermediate
//! is signed with ecdsa-with-SHA384: the chain is RSA below the root only. Devices trust the
//! root, so an intermediate can be replaced without touching them.
//!
//! Files in the CA directory (`<data_dir>/ca`, mode 0700):
//!
//! | file                   | contents                                     | mode |
//! |------------------------|----------------------------------------------|------|
//! | `root.pem`             | root certificate                             | 0644 |
//! | `root.key`             | root private key, PKCS#8                     | 0600 |
//! | `intermediate.pem`     | EC issuing intermediate certificate          | 0644 |
//! | `intermediate.key`     | EC issuing intermediate private key, PKCS#8  | 0600 |
//! | `rsa-intermediate.pem` | RSA issuing intermediate certificate         | 0644 |
//! | `rsa-intermediate.key` | RSA issuing intermediate private key, PKCS#8 | 0600 |
//! | `server.pem`           | the server's HTTPS leaf + EC intermediate    | 0644 |
//! | `server.key`           | the server's HTTPS private key, PKCS#8       | 0600 |
//!
//! The four root and EC files are created together on first start and never again: if some are
//! present and others missing, loading fails and names the missing file. Silently creating a new
//! root would orphan every device that trusts the old one, which is far worse than refusing to
//! start. The two RSA files are created on the first start that finds neither of them (the first
//! start of a new CA, or the first after an upgrade), unless `issuance.rsa_intermediate_key` is
//! `none`; after that they are reused, and one without the other is refused the same way.
//! Without `root.key` (and with the rest of the root and EC files there) the root key is
//! offline: the CA loads and checks everything else and never creates what needs the root key;
//! [`offline`] makes and installs intermediates for it.
//! With `issuance.intermediate_key_uri` (and `root_key_uri`, `rsa_intermediate_key_uri`) the
//! keys are in a PKCS #11 token instead, and the directory holds only their certificates
//! (`token`).
//! The server certificate is different: it is derived state, so it is re-issued whenever it is
//! missing, unreadable, for other names, or past two thirds of its life.
//!
//! Every write goes to a temporary file created with its final mode, is fsynced, then renamed
//! over the target, and the directory is fsynced: a crash leaves either the old file or the new
//! one, never half of one, and a private key is never readable by others even for an instant.
//!
//! Certificates are built from CA policy only (the CSR contributes the key and the names):
//! random 128-bit serials, AKI and SKI on everything (RFC 9773 ARI needs the AKI), a one-minute
//! backdate for devices whose clocks run slow, and no lifetime beyond the intermediate's.
//!
//! | module       | what                                                            |
//! |--------------|-----------------------------------------------------------------|
//! | `keystore`   | creating and loading the hierarchy and its key files            |
//! | `issue`      | device certificates from a CSR and a profile                    |
//! | [`offline`]  | an offline root: root, intermediate requests, signing, install  |
//! | `tls`        | the server's own HTTPS certificate                              |
//! | `token`      | root and issuing keys in a PKCS #11 token; `init --hsm`         |
//! | [`crl`]      | CRL signing, the cache, where each issuer's CRL is served       |
//! | [`csr`]      | PKCS#10 parsing and the names a CSR asks for                    |
//! | [`profiles`] | certificate profiles (SPEC §8.3)                                |
//! | [`cert`]     | the stored certificate record and its revocation                |
//! | [`operator`] | the operator CA and the console's client certificates           |

pub mod cert;
pub mod crl;
pub mod csr;
mod issue;
mod keystore;
pub mod offline;
pub mod operator;
pub mod profiles;
mod tls;
mod token;

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber, SignatureAlgorithm,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use self::issue::*;
use self::keystore::*;
pub use self::token::check_key_uris;
use self::token::CaKey;
use crate::ca::csr::ip_from_octets;
use crate::ca::profiles::Leaf;
use crate::der;
use crate::der::names::PermanentId;
use crate::der::pem_encode;
use crate::fsutil::{ensure_private_dir, write_atomic};
use crate::key::PublicKey;
use crate::types::{Identifier, IdentifierType};
use crate::{Error, Result};

const ROOT_CERT: &str = "root.pem";
const ROOT_KEY: &str = "root.key";
const INTERMEDIATE_CERT: &str = "intermediate.pem";
const INTERMEDIATE_KEY: &str = "intermediate.key";
const RSA_INTERMEDIATE_CERT: &str = "rsa-intermediate.pem";
const RSA_INTERMEDIATE_KEY: &str = "rsa-intermediate.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";
/// The root's common name is this and the installation's tag.
const ROOT_CN_PREFIX: &str = "iiot-acme Root CA ";

/// Root lifetime: ten years (3652 days covers the leap days).
const ROOT_LIFETIME: time::Duration = time::Duration::days(3652);
/// Intermediate lifetime: five years, well inside the root's.
const INTERMEDIATE_LIFETIME: time::Duration = time::Duration::days(1826);
/// Lifetime of the server's own HTTPS certificate.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// notBefore is backdated by this much, for devices whose clocks run a little slow.
pub(crate) const CLOCK_SKEW: time::Duration = time::Duration::minutes(1);
/// `ub-common-name` (RFC 5280 Appendix A.1): a longer CN cannot be encoded.
const CN_MAX_CHARS: usize = 64;

/// A certificate chain and its private key, both PEM.
type TlsIdentity = (String, String);

/// Which issuing intermediate signs a certificate (and its CRL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerKind {
    /// The EC intermediate (P-256 by default): every certificate unless a profile says otherwise.
    #[default]
    Ec,
    /// The RSA intermediate: RSA keys of profiles with `issuer = "rsa"`.
    Rsa,
}

impl IssuerKind {
    /// Both, EC first.
    pub const ALL: [Self; 2] = [Self::Ec, Self::Rsa];
}

impl fmt::Display for IssuerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ec => "EC",
            Self::Rsa => "RSA",
        })
    }
}

/// The CA hierarchy, loaded once at start. The issuing keys stay in memory, so signing a
/// certificate never reads a file.
pub struct CertificateAuthority {
    root_path: PathBuf,
    root_pem: String,
    root_der: Vec<u8>,
    ec: Intermediate,
    rsa: Option<Intermediate>,
}

/// One issuing intermediate, loaded and checked.
struct Intermediate {
    /// The certificate file, for messages.
    path: PathBuf,
    pem: String,
    der: Vec<u8>,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, CaKey>,
    /// Where relying parties fetch this intermediate's CRL; written into every certificate it
    /// issues.
    crl_url: Option<String>,
}

/// An end-entity certificate as issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    /// Lowercase hex of the serial number's bytes (16 bytes, so 32 characters).
    pub serial_hex: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The leaf PEM followed by the intermediate PEM: the `application/pem-certificate-chain`
    /// body of RFC 8555 §7.4.2.
    pub chain_pem: String,
    /// The intermediate that signed it.
    pub issuer: IssuerKind,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

impl fmt::Debug for CertificateAuthority {
    // Hand-written so no key material can ever reach a log line through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("root_path", &self.root_path)
            .field("root_fingerprint", &self.root_fingerprint())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Where the root certificate is stored (to hand to operators and clients).
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// SHA-256 over the root certificate DER as uppercase hex pairs joined by `:`, the way
    /// `openssl x509 -fingerprint -sha256` prints it.
    pub fn root_fingerprint(&self) -> String {
        crate::wire::fingerprint(&self.root_der)
    }

    /// The EC intermediate certificate, PEM: what follows a leaf it issued in a chain.
    pub fn intermediate_pem(&self) -> &str {
        &self.ec.pem
    }

    /// The RSA intermediate certificate, PEM, if the CA has one.
    pub fn rsa_intermediate_pem(&self) -> Option<&str> {
        self.rsa.as_ref().map(|i| i.pem.as_str())
    }

    /// Whether the CA has the intermediate `kind`.
    pub fn has(&self, kind: IssuerKind) -> bool {
        self.intermediate(kind).is_ok()
    }

    fn intermediate(&self, kind: IssuerKind) -> Result<&Intermediate> {
        match kind {
            IssuerKind::Ec => Ok(&self.ec),
            IssuerKind::Rsa => self.rsa.as_ref().ok_or_else(|| {
                Error::Internal(
                    "this CA has no RSA intermediate (issuance.rsa_intermediate_key = \"none\")"
                        .to_owned(),
                )
            }),
        }
    }
}

impl Intermediate {}

/// Key algorithm for a CA key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaKeyType {
    /// ECDSA P-256 with SHA-256.
    P256,
    /// ECDSA P-384 with SHA-384.
    P384,
}

/// Key of the RSA issuing intermediate (SPEC §8.1), or `none` for no RSA intermediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RsaIntermediateKey {
    /// RSA 2048 bits.
    Rsa2048,
    /// RSA 3072 bits (the default).
    Rsa3072,
    /// RSA 4096 bits.
    Rsa4096,
    /// No RSA intermediate: every certificate is signed by the EC intermediate.
    None,
}

impl RsaIntermediateKey {
    /// The modulus size, or `None` for no RSA intermediate.
    pub fn bits(self) -> Option<usize> {
        match self {
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
            Self::None => None,
        }
    }
}

/// Issuance policy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuanceConfig {
    /// Lifetime of issued end-entity certificates. Short by default: devices renew.
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
    pub cert_validity: Duration,
    /// Root CA key type (generated on first start only, or by `init --hsm` in a token).
    pub root_key: CaKeyType,
    /// Issuing intermediate key type (generated on first start only, or by `init --hsm`).
    pub intermediate_key: CaKeyType,
    /// RSA issuing intermediate (for profiles with `issuer = "rsa"`): created when the CA
    /// starts without one, unless `none`; the size only matters then.
    pub rsa_intermediate_key: RsaIntermediateKey,
    /// The root key in a PKCS #11 token (an RFC 7512 `pkcs11:` URI with `module-path` and
    /// `pin-source`) instead of `root.key`; `ca-server init --hsm` generates it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_key_uri: Option<String>,
    /// The EC issuing key in a PKCS #11 token instead of `intermediate.key` (see
    /// `root_key_uri`). Needs `rsa_intermediate_key_uri` too, or `rsa_intermediate_key =
    /// "none"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_key_uri: Option<String>,
    /// The RSA issuing key in a PKCS #11 token instead of `rsa-intermediate.key` (see
    /// `root_key_uri`; `rsa_intermediate_key` gives its size when it is generated). Needs
    /// `intermediate_key_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsa_intermediate_key_uri: Option<String>,
    /// How long a new order stays usable.
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
    pub order_lifetime: Duration,
    /// How long a pending authorization stays usable.
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
    pub authz_lifetime: Duration,
    /// LAB/TEST ONLY: every certificate is issued for this long, whatever `cert_validity` and
    /// the profiles say, down to a second (for tests of expiry and retention).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::types::ser_opt_duration",
        deserialize_with = "crate::types::de_opt_duration"
    )]
    pub lab_cert_validity: Option<Duration>,
}

impl Default for IssuanceConfig {
    fn default() -> Self {
        Self {
            cert_validity: Duration::from_secs(7 * 86_400),
            root_key: CaKeyType::P384,
            intermediate_key: CaKeyType::P256,
            rsa_intermediate_key: RsaIntermediateKey::Rsa3072,
            root_key_uri: None,
            intermediate_key_uri: None,
            rsa_intermediate_key_uri: None,
            order_lifetime: Duration::from_secs(86_400),
            authz_lifetime: Duration::from_secs(86_400),
            lab_cert_validity: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rcgen::KeyPair;
    use tempfile::TempDir;
    use x509_parser::extensions::ParsedExtension;

    use super::*;
    use crate::testutil::{dns, openssl, openssl_csr, openssl_rsa_key, rcgen_csr};

    const WEEK: Duration = Duration::from_secs(7 * 86_400);

    fn new_ca() -> (TempDir, PathBuf, CertificateAuthority) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data").join("ca");
        let ca =
            CertificateAuthority::load_or_init(&dir, &IssuanceConfig::default()).expect("new CA");
        (tmp, dir, ca)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    fn internal(result: Result<CertificateAuthority>) -> String {
        match result {
            Err(Error::Internal(detail)) => detail,
            other => panic!("expected an internal error, got {other:?}"),
        }
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        let (rest, cert) = X509Certificate::from_der(der).expect("certificate parses");
        assert!(rest.is_empty());
        cert
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .expect("PEM")
            .1
            .contents
    }

    /// `openssl verify` of `leaf_pem` against the CA, in strict RFC 5280 mode.
    fn openssl_verify(ca: &CertificateAuthority, leaf_pem: &str, extra: &[&str]) {
        openssl_verify_with(ca, ca.intermediate_pem(), leaf_pem, extra);
    }

    /// `openssl verify` of `leaf_pem` against the root, with `untrusted` as the only other
    /// certificates, in strict RFC 5280 mode.
    fn openssl_verify_with(
        ca: &CertificateAuthority,
        untrusted: &str,
        leaf_pem: &str,
        extra: &[&str],
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("root.pem"), ca.root_pem()).expect("write");
        fs::write(tmp.path().join("intermediate.pem"), untrusted).expect("write");
        fs::write(tmp.path().join("leaf.pem"), leaf_pem).expect("write");
        let mut args = vec![
            "verify",
            "-x509_strict",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "intermediate.pem",
        ];
        args.extend_from_slice(extra);
        args.push("leaf.pem");
        let out = openssl(tmp.path(), &args);
        assert_eq!(out.trim(), "leaf.pem: OK");
    }

    fn key_identifiers(cert: &X509Certificate<'_>) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let mut aki = None;
        let mut ski = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    aki = a.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
                ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0.to_vec()),
                _ => {}
            }
        }
        (aki, ski)
    }

    #[test]
    fn ca_handle_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CertificateAuthority>();
    }

    #[test]
    fn first_start_creates_the_hierarchy_with_private_modes() {
        let (_tmp, dir, ca) = new_ca();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(ROOT_KEY)), 0o600);
        assert_eq!(mode(&dir.join(INTERMEDIATE_KEY)), 0o600);
        assert_eq!(mode(&dir.join(RSA_INTERMEDIATE_KEY)), 0o600);
        assert_eq!(mode(&dir.join(ROOT_CERT)), 0o644);
        assert_eq!(mode(&dir.join(RSA_INTERMEDIATE_CERT)), 0o644);
        assert_eq!(ca.root_path(), dir.join(ROOT_CERT));
        // No temporary files are left behind.
        let names: BTreeSet<String> = fs::read_dir(&dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "intermediate.key",
                "intermediate.pem",
                "root.key",
                "root.pem",
                "rsa-intermediate.key",
                "rsa-intermediate.pem",
            ]
            .map(str::to_owned)
            .into()
        );

        let root_der = pem_der(ca.root_pem());
        let root = parse(&root_der);
        let bc = root
            .basic_constraints()
            .expect("bc")
            .expect("present")
            .value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(1));
        let ku = root.key_usage().expect("ku").expect("present").value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        let life = root.validity().not_after.timestamp() - root.validity().not_before.timestamp();
        assert_eq!(life, 3652 * 86_400 + 60);
        assert_eq!(
            root.public_key().raw,
            pem_der(
                &KeyPair::from_pem(&fs::read_to_string(dir.join(ROOT_KEY)).expect("root.key"))
                    .expect("key")
                    .public_key_pem()
            )
            .as_slice()
        );
        // Default config: P-384 root, P-256 intermediate.
        assert!(ca_key_is(&root, "1.3.132.0.34"));

        let int_der = pem_der(ca.intermediate_pem());
        let int = parse(&int_der);
        let bc = int.basic_constraints().expect("bc").expect("present").value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert!(ca_key_is(&int, "1.2.840.10045.3.1.7"));
        assert_eq!(int.issuer().as_raw(), root.subject().as_raw());
        assert!(int.verify_signature(Some(root.public_key())).is_ok());
        let (aki, _) = key_identifiers(&int);
        let (_, root_ski) = key_identifiers(&root);
        assert!(aki.is_some());
        assert_eq!(aki, root_ski);
        let life = int.validity().not_after.timestamp() - int.validity().not_before.timestamp();
        assert_eq!(life, 1826 * 86_400 + 60);
    }

    fn ca_key_is(cert: &X509Certificate<'_>, curve_oid: &str) -> bool {
        cert.public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|oid| oid.to_id_string() == curve_oid)
    }

    #[test]
    fn restart_reuses_the_hierarchy_and_fingerprint_matches_openssl() {
        let (_tmp, dir, first) = new_ca();
        let again =
            CertificateAuthority::load_or_init(&dir, &IssuanceConfig::default()).expect("reload");
        assert_eq!(first.root_fingerprint(), again.root_fingerprint());
        assert_eq!(first.root_pem(), again.root_pem());
        assert_eq!(first.intermediate_pem(), again.intermediate_pem());

        let out = openssl(
            &dir,
            &[
                "x509",
                "-in",
                "root.pem",
                "-noout",
                "-fingerprint",
                "-sha256",
            ],
        );
        let printed = out.trim().split_once('=').expect("fingerprint line").1;
        assert_eq!(first.root_fingerprint(), printed);
        // The stored file is what root_pem() returns.
        assert_eq!(
            fs::read_to_string(dir.join(ROOT_CERT)).expect("root.pem"),
            first.root_pem()
        );
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it_and_nothing_is_regenerated() {
        let (_tmp, dir, ca) = new_ca();
        let root_before = fs::read(dir.join(ROOT_CERT)).expect("root.pem");
        for name in [INTERMEDIATE_KEY, ROOT_CERT] {
            let saved = fs::read(dir.join(name)).expect("read");
            fs::remove_file(dir.join(name)).expect("remove");
            let detail = internal(CertificateAuthority::load_or_init(
                &dir,
                &IssuanceConfig::default(),
            ));
            assert!(detail.contains(name), "{detail}");
            assert!(detail.contains("is missing"), "{detail}");
            fs::write(dir.join(name), saved).expect("restore");
        }
        assert_eq!(
            fs::read(dir.join(ROOT_CERT)).expect("root.pem"),
            root_before
        );
        let again =
            CertificateAuthority::load_or_init(&dir, &IssuanceConfig::default()).expect("restored");
        assert_eq!(again.root_fingerprint(), ca.root_fingerprint());
    }

    #[test]
    fn a_corrupt_or_mismatched_file_is_an_error_naming_it() {
        let (_tmp, dir, _ca) = new_ca();
        let cfg = IssuanceConfig::default();

        let saved = fs::read(dir.join(INTERMEDIATE_CERT)).expect("read");
        fs::write(dir.join(INTERMEDIATE_CERT), b"garbage").expect("write");
        let detail = internal(CertificateAuthority::load_or_init(&dir, &cfg));
        assert!(detail.contains("intermediate.pem"), "{detail}");
        fs::write(dir.join(INTERMEDIATE_CERT), saved).expect("restore");

        let saved = fs::read(dir.join(INTERMEDIATE_KEY)).expect("read");
        fs::write(
            dir.join(INTERMEDIATE_KEY),
            KeyPair::generate().expect("key").serialize_pem(),
        )
        .expect("write");
        let detail = internal(CertificateAuthority::load_or_init(&dir, &cfg));
        assert!(
            detail.contains("intermediate.key") && detail.contains("does not match"),
            "{detail}"
        );
        fs::write(dir.join(INTERMEDIATE_KEY), saved).expect("restore");

        fs::write(
            dir.join(ROOT_KEY),
            b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let detail = internal(CertificateAuthority::load_or_init(&dir, &cfg));
        assert!(detail.contains("root.key"), "{detail}");
    }

    #[test]
    fn issues_a_leaf_with_policy_extensions_that_openssl_verifies() {
        let (_tmp, _dir, ca) = new_ca();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let ids = vec![
            Identifier::dns("device-1.plant.example"),
            Identifier::ip("10.0.0.7".parse().expect("ip")),
            Identifier::ip("2001:db8::1".parse().expect("ip")),
        ];
        let before = OffsetDateTime::now_utc().unix_timestamp();
        let issued = ca
            .issue(&key.subject_public_key_info(), &ids, WEEK)
            .expect("issued");
        let after = OffsetDateTime::now_utc().unix_timestamp();
        let cert = parse(&issued.der);

        // Serial: 16 bytes, positive, reported as lowercase hex.
        let serial = cert.raw_serial();
        assert_eq!(serial.len(), 16);
        assert_eq!(serial[0] & 0x80, 0);
        assert_eq!(issued.serial_hex, hex::encode(serial));
        assert_eq!(issued.serial_hex, issued.serial_hex.to_lowercase());

        // Validity: backdated one minute, `validity` long from now.
        assert_eq!(cert.validity().not_before.timestamp(), issued.not_before);
        assert_eq!(cert.validity().not_after.timestamp(), issued.not_after);
        assert!((before - 60..=after - 60).contains(&issued.not_before));
        assert_eq!(
            issued.not_after - issued.not_before,
            60 + WEEK.as_secs() as i64
        );

        // Names.
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().expect("cn"))
            .collect();
        assert_eq!(cn, ["device-1.plant.example"]);
        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        assert!(!san.critical);
        assert_eq!(
            san.value.general_names,
            vec![
                GeneralName::DNSName("device-1.plant.example"),
                GeneralName::IPAddress(&[10, 0, 0, 7]),
                GeneralName::IPAddress(&[
                    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1
                ]),
            ]
        );

        // Usage and constraints.
        let bc = cert.basic_constraints().expect("bc").expect("present");
        assert!(bc.critical && !bc.value.ca);
        let ku = cert.key_usage().expect("ku").expect("present").value;
        assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.server_auth && eku.client_auth && !eku.any);

        // Identifiers and chain.
        let int_der = pem_der(ca.intermediate_pem());
        let int = parse(&int_der);
        let (aki, ski) = key_identifiers(&cert);
        let (_, int_ski) = key_identifiers(&int);
        assert!(ski.is_some());
        assert_eq!(aki, int_ski);
        assert_eq!(cert.issuer().as_raw(), int.subject().as_raw());
        assert!(cert.verify_signature(Some(int.public_key())).is_ok());
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );

        // The chain is leaf then intermediate, PEM.
        assert!(issued.chain_pem.ends_with(ca.intermediate_pem()));
        assert_eq!(pem_der(&issued.chain_pem), issued.der);
        openssl_verify(&ca, &issued.chain_pem, &["-purpose", "sslclient"]);
        openssl_verify(&ca, &issued.chain_pem, &["-purpose", "sslserver"]);
    }

    #[test]
    fn issues_for_every_accepted_key_type_from_a_verified_csr() {
        let (tmp, _dir, ca) = new_ca();
        let mut csrs = Vec::new();
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            csrs.push(rcgen_csr(alg, Some("dev.example"), vec![dns("dev.example")]).1);
        }
        openssl_rsa_key(tmp.path(), "rsa.pem", 2048);
        csrs.push(openssl_csr(tmp.path(), &["-key", "rsa.pem"], &[]));

        for der in csrs {
            let info = csr::parse_and_verify(&der).expect("CSR accepted");
            let issued = ca
                .issue(&info.spki_der, &info.identifiers, WEEK)
                .expect("issued");
            let cert = parse(&issued.der);
            // The certified key is exactly the CSR's.
            assert_eq!(cert.public_key().raw, info.spki_der.as_slice());
            let ku = cert.key_usage().expect("ku").expect("present").value;
            let is_rsa = matches!(info.public_key, PublicKey::Rsa { .. });
            assert!(ku.digital_signature());
            assert_eq!(
                ku.key_encipherment(),
                is_rsa,
                "{}",
                info.public_key.describe()
            );
            openssl_verify(&ca, &issued.chain_pem, &[]);
        }
    }

    fn device(value: &str) -> Identifier {
        Identifier {
            kind: IdentifierType::PermanentIdentifier,
            value: value.to_owned(),
        }
    }

    #[test]
    fn a_device_certificate_carries_a_permanent_identifier_and_its_value_as_cn() {
        let (_tmp, _dir, ca) = new_ca();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let ids = vec![
            Identifier::dns("plc-7.plant.example"),
            Identifier::ip("10.0.0.7".parse().expect("ip")),
            device("Sn-0042/1.3.6.1.4.1.32473"),
        ];
        let issued = ca
            .issue(&key.subject_public_key_info(), &ids, WEEK)
            .expect("issued");
        let cert = parse(&issued.der);
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().expect("cn"))
            .collect();
        // The whole value: another manufacturer's "Sn-0042" is another device (SPEC §8.2).
        assert_eq!(cn, ["Sn-0042/1.3.6.1.4.1.32473"]);
        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        assert!(!san.critical);
        let names = &san.value.general_names;
        assert_eq!(names.len(), 3);
        assert_eq!(names[0], GeneralName::DNSName("plc-7.plant.example"));
        assert_eq!(names[1], GeneralName::IPAddress(&[10, 0, 0, 7]));
        let GeneralName::OtherName(oid, value) = &names[2] else {
            panic!("not an otherName: {:?}", names[2]);
        };
        assert_eq!(oid.to_id_string(), "1.3.6.1.5.5.7.8.3");
        // [0] { SEQUENCE { UTF8String "Sn-0042", OID 1.3.6.1.4.1.32473 } }
        assert_eq!(
            hex::encode(value),
            format!(
                "a0{:02x}30{:02x}0c07{}0608{}",
                2 + (2 + 7) + (2 + 8),
                (2 + 7) + (2 + 8),
                hex::encode("Sn-0042"),
                "2b0601040181fd59"
            )
        );
        assert_eq!(
            der::names::from_other_name(value).as_deref(),
            Ok("Sn-0042/1.3.6.1.4.1.32473")
        );
        openssl_verify(&ca, &issued.chain_pem, &["-purpose", "sslclient"]);

        // A device-only certificate, and a serial too long for the CN: critical SAN.
        let long = "S".repeat(65);
        let issued = ca
            .issue(&key.subject_public_key_info(), &[device(&long)], WEEK)
            .expect("issued");
        let cert = parse(&issued.der);
        assert_eq!(cert.subject().iter().count(), 0);
        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        assert!(san.critical);
        assert_eq!(san.value.general_names.len(), 1);
        openssl_verify(&ca, &issued.chain_pem, &[]);

        // A serial that would fit, but whose value with the assigner does not: no CN rather
        // than the bare serial, which another manufacturer's device may share.
        let value = format!("{}/1.3.6.1.4.1.32473", "S".repeat(50));
        let issued = ca
            .issue(&key.subject_public_key_info(), &[device(&value)], WEEK)
            .expect("issued");
        assert_eq!(parse(&issued.der).subject().iter().count(), 0);
        // Without an assigner (proven by EAB or operator approval) the value is the serial.
        let issued = ca
            .issue(&key.subject_public_key_info(), &[device("Sn-0042")], WEEK)
            .expect("issued");
        let cert = parse(&issued.der);
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().expect("cn"))
            .collect();
        assert_eq!(cn, ["Sn-0042"]);
    }

    #[test]
    fn a_name_too_long_for_cn_leaves_the_subject_empty_and_the_san_critical() {
        let (_tmp, _dir, ca) = new_ca();
        let long = format!("{}.example", "a".repeat(60));
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let issued = ca
            .issue(
                &key.subject_public_key_info(),
                &[
                    Identifier::dns(long.clone()),
                    Identifier::dns("short.example"),
                ],
                WEEK,
            )
            .expect("issued");
        let cert = parse(&issued.der);
        assert_eq!(cert.subject().iter().count(), 0);
        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        assert!(san.critical);
        assert_eq!(san.value.general_names.len(), 2);
        openssl_verify(&ca, &issued.chain_pem, &[]);
    }

    #[test]
    fn issue_refuses_bad_input() {
        let (_tmp, _dir, ca) = new_ca();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let spki = key.subject_public_key_info();
        assert!(matches!(ca.issue(&spki, &[], WEEK), Err(Error::BadCsr(_))));
        assert!(matches!(
            ca.issue(b"not a key", &[Identifier::dns("a.example")], WEEK),
            Err(Error::BadPublicKey(_))
        ));
        let bad_ip = Identifier {
            kind: IdentifierType::Ip,
            value: "not-an-ip".to_owned(),
        };
        assert!(matches!(
            ca.issue(&spki, &[bad_ip], WEEK),
            Err(Error::RejectedIdentifier { .. })
        ));
    }

    #[test]
    fn leaves_never_outlive_the_intermediate() {
        let (_tmp, _dir, ca) = new_ca();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let issued = ca
            .issue(
                &key.subject_public_key_info(),
                &[Identifier::dns("a.example")],
                Duration::from_secs(20 * 365 * 86_400),
            )
            .expect("issued");
        assert_eq!(issued.not_after, ca.ec.not_after.unix_timestamp());
    }

    #[test]
    fn serials_are_16_bytes_and_positive() {
        let mut seen = BTreeSet::new();
        for _ in 0..2000 {
            let serial = random_serial().expect("serial");
            assert!(serial[0] != 0 && serial[0] & 0x80 == 0);
            assert!(seen.insert(serial));
        }
    }

    #[test]
    fn server_identity_is_reused_until_names_change_or_it_ages() {
        let (_tmp, dir, ca) = new_ca();
        let names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "[::1]".to_owned(),
        ];
        let (chain, key) = ca.server_tls_identity(&dir, &names).expect("issued");
        assert_eq!(mode(&dir.join(SERVER_KEY)), 0o600);
        assert_eq!(fs::read_to_string(dir.join(SERVER_KEY)).expect("key"), key);
        assert_eq!(
            fs::read_to_string(dir.join(SERVER_CERT)).expect("chain"),
            chain
        );
        openssl_verify(&ca, &chain, &["-purpose", "sslserver", "-verify_ip", "::1"]);

        let leaf_der = pem_der(&chain);
        let leaf = parse(&leaf_der);
        let eku = leaf
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.server_auth && !eku.client_auth);
        let san = leaf
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        assert_eq!(
            san.value.general_names,
            vec![
                GeneralName::DNSName("localhost"),
                GeneralName::IPAddress(&[127, 0, 0, 1]),
                GeneralName::IPAddress(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            ]
        );
        let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert_eq!(life, 90 * 86_400 + 60);

        // Same names, any order and case: reused, key and all.
        let reordered = vec![
            "::1".to_owned(),
            "LOCALHOST".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        assert_eq!(
            ca.server_tls_identity(&dir, &reordered).expect("reused"),
            (chain.clone(), key.clone())
        );

        // Another name: a new key and certificate.
        let more = vec!["localhost".to_owned(), "ca.plant.example".to_owned()];
        let (chain2, key2) = ca.server_tls_identity(&dir, &more).expect("re-issued");
        assert_ne!(key2, key);
        assert_ne!(chain2, chain);
        assert_eq!(fs::read_to_string(dir.join(SERVER_KEY)).expect("key"), key2);

        // Less than a third of its life left: re-issued.
        fs::remove_file(dir.join(SERVER_CERT)).expect("remove");
        let (short, _) = ca
            .server_tls_identity_with(&dir, &more, Duration::from_secs(1))
            .expect("short-lived");
        let (renewed, _) = ca.server_tls_identity(&dir, &more).expect("renewed");
        assert_ne!(renewed, short);

        // A corrupt file is replaced, not fatal.
        fs::write(dir.join(SERVER_CERT), b"junk").expect("write");
        let (repaired, _) = ca.server_tls_identity(&dir, &more).expect("repaired");
        openssl_verify(&ca, &repaired, &["-purpose", "sslserver"]);
    }

    #[test]
    fn server_identity_needs_a_usable_name() {
        let (_tmp, dir, ca) = new_ca();
        assert!(matches!(
            ca.server_tls_identity(&dir, &[]),
            Err(Error::Internal(_))
        ));
        assert!(matches!(
            ca.server_tls_identity(&dir, &["bad name".to_owned()]),
            Err(Error::Internal(_))
        ));
    }

    #[test]
    fn pem_lines_are_64_characters() {
        let pem = pem_encode("CERTIFICATE", &[0xab; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN CERTIFICATE-----"));
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
        assert_eq!(lines[1].len(), 64);
        assert_eq!(pem_der(&pem), vec![0xab; 100]);
    }

    const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
    const ECDSA_WITH_SHA384: &str = "1.2.840.10045.4.3.3";

    fn without_rsa() -> IssuanceConfig {
        IssuanceConfig {
            rsa_intermediate_key: RsaIntermediateKey::None,
            ..IssuanceConfig::default()
        }
    }

    fn rsa_key_bits(cert: &X509Certificate<'_>) -> usize {
        match cert.public_key().parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(key)) => key.key_size(),
            other => panic!("not an RSA key: {other:?}"),
        }
    }

    /// The CRL distribution points extension, in its Debug form.
    fn crl_distribution_points(cert: &X509Certificate<'_>) -> String {
        cert.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::CRLDistributionPoints(p) => Some(format!("{p:?}")),
                _ => None,
            })
            .expect("CRL distribution points")
    }

    fn rsa_leaf() -> Leaf {
        Leaf {
            issuer: IssuerKind::Rsa,
            ..Leaf::spec_default(WEEK, true)
        }
    }

    #[test]
    fn the_rsa_intermediate_is_rsa_3072_certified_by_the_root_with_pathlen_0() {
        let (_tmp, dir, ca) = new_ca();
        let root_der = pem_der(ca.root_pem());
        let root = parse(&root_der);
        let rsa_pem = ca.rsa_intermediate_pem().expect("created on first start");
        assert_eq!(
            fs::read_to_string(dir.join(RSA_INTERMEDIATE_CERT)).expect("file"),
            rsa_pem
        );
        let int_der = pem_der(rsa_pem);
        let int = parse(&int_der);
        assert_eq!(rsa_key_bits(&int), 3072);
        let bc = int.basic_constraints().expect("bc").expect("present");
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = int.key_usage().expect("ku").expect("present").value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        // Certified by the same root: its signature is the root's (ECDSA P-384).
        assert_eq!(int.issuer().as_raw(), root.subject().as_raw());
        assert!(int.verify_signature(Some(root.public_key())).is_ok());
        assert_eq!(
            int.signature_algorithm.algorithm.to_id_string(),
            ECDSA_WITH_SHA384
        );
        let (aki, ski) = key_identifiers(&int);
        assert!(ski.is_some());
        assert_eq!(aki, key_identifiers(&root).1);
        // Named like its siblings, and told apart from the EC intermediate.
        let cn = |c: &X509Certificate<'_>| {
            c.subject()
                .iter_common_name()
                .map(|a| a.as_str().expect("cn").to_owned())
                .collect::<String>()
        };
        let tag = cn(&root).rsplit(' ').next().expect("tag").to_owned();
        assert_eq!(cn(&int), format!("iiot-acme RSA Issuing CA {tag}"));
        let ec_der = pem_der(ca.intermediate_pem());
        assert_ne!(parse(&ec_der).subject().as_raw(), int.subject().as_raw());
        // The key file is PKCS#8, private, and matches.
        let key = KeyPair::from_pem(
            &fs::read_to_string(dir.join(RSA_INTERMEDIATE_KEY)).expect("rsa-intermediate.key"),
        )
        .expect("PKCS#8");
        assert_eq!(key.subject_public_key_info(), int.public_key().raw);
        assert_eq!(mode(&dir.join(RSA_INTERMEDIATE_KEY)), 0o600);
        openssl_verify_with(&ca, ca.root_pem(), rsa_pem, &[]);
    }

    #[test]
    fn rsa_issuer_leaves_are_signed_sha256_with_rsa_by_the_rsa_intermediate() {
        let (tmp, _dir, mut ca) = new_ca();
        ca.set_crl_url(IssuerKind::Ec, "https://ca.example/crl".to_owned());
        ca.set_crl_url(IssuerKind::Rsa, "https://ca.example/crl/rsa".to_owned());
        openssl_rsa_key(tmp.path(), "rsa.pem", 2048);
        let der = openssl_csr(tmp.path(), &["-key", "rsa.pem"], &[]);
        let info = csr::parse_and_verify(&der).expect("CSR accepted");
        let issued = ca
            .issue_leaf(&info.spki_der, &info.identifiers, &rsa_leaf())
            .expect("issued");
        assert_eq!(issued.issuer, IssuerKind::Rsa);
        let cert = parse(&issued.der);
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            SHA256_WITH_RSA
        );
        let rsa_pem = ca.rsa_intermediate_pem().expect("rsa");
        let int_der = pem_der(rsa_pem);
        let int = parse(&int_der);
        assert_eq!(cert.issuer().as_raw(), int.subject().as_raw());
        assert!(cert.verify_signature(Some(int.public_key())).is_ok());
        assert_eq!(key_identifiers(&cert).0, key_identifiers(&int).1);
        // The chain is the leaf and the RSA intermediate, and it alone verifies.
        assert!(issued.chain_pem.ends_with(rsa_pem));
        assert!(!issued.chain_pem.contains(ca.intermediate_pem()));
        openssl_verify_with(&ca, &issued.chain_pem, &issued.chain_pem, &[]);
        let cdp = crl_distribution_points(&cert);
        assert!(cdp.contains("https://ca.example/crl/rsa"), "{cdp}");

        // The same key under an `ec` leaf: the EC intermediate, ECDSA, its own CRL.
        let issued = ca
            .issue(&info.spki_der, &info.identifiers, WEEK)
            .expect("issued");
        assert_eq!(issued.issuer, IssuerKind::Ec);
        let cert = parse(&issued.der);
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2"
        );
        assert!(issued.chain_pem.ends_with(ca.intermediate_pem()));
        let cdp = crl_distribution_points(&cert);
        assert!(
            cdp.contains("https://ca.example/crl\"") && !cdp.contains("/crl/rsa"),
            "{cdp}"
        );
    }

    #[test]
    fn each_intermediate_signs_its_own_crl() {
        let (_tmp, _dir, ca) = new_ca();
        let serial = random_serial().expect("serial").to_vec();
        for (kind, pem) in [
            (IssuerKind::Ec, ca.intermediate_pem()),
            (IssuerKind::Rsa, ca.rsa_intermediate_pem().expect("rsa")),
        ] {
            let der = ca
                .sign_crl(
                    kind,
                    7,
                    1_700_000_000,
                    1_700_086_400,
                    &[(serial.clone(), 1_699_999_000, 1)],
                )
                .expect("signed");
            let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
                .expect("CRL parses");
            let int_der = pem_der(pem);
            let int = parse(&int_der);
            assert_eq!(crl.issuer().as_raw(), int.subject().as_raw(), "{kind}");
            assert!(crl.verify_signature(int.public_key()).is_ok(), "{kind}");
            let listed: Vec<_> = crl
                .iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec())
                .collect();
            assert_eq!(listed, std::slice::from_ref(&serial));
        }
        let der = ca
            .sign_crl(IssuerKind::Rsa, 8, 1_700_000_000, 1_700_086_400, &[])
            .expect("signed");
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
            .expect("CRL parses");
        assert_eq!(
            crl.signature_algorithm.algorithm.to_id_string(),
            SHA256_WITH_RSA
        );
    }

    #[test]
    fn restart_reuses_the_rsa_intermediate_whatever_size_is_configured() {
        let (_tmp, dir, first) = new_ca();
        let key_before = fs::read(dir.join(RSA_INTERMEDIATE_KEY)).expect("key");
        for size in [RsaIntermediateKey::Rsa3072, RsaIntermediateKey::Rsa2048] {
            let cfg = IssuanceConfig {
                rsa_intermediate_key: size,
                ..IssuanceConfig::default()
            };
            let again = CertificateAuthority::load_or_init(&dir, &cfg).expect("reload");
            assert_eq!(again.rsa_intermediate_pem(), first.rsa_intermediate_pem());
        }
        // Turning it off later keeps the files (certificates it issued still need its CRL)
        // and loads it, so nothing it issued is orphaned.
        let again = CertificateAuthority::load_or_init(&dir, &without_rsa()).expect("reload");
        assert_eq!(again.rsa_intermediate_pem(), first.rsa_intermediate_pem());
        assert_eq!(
            fs::read(dir.join(RSA_INTERMEDIATE_KEY)).expect("key"),
            key_before
        );
    }

    #[test]
    fn a_later_start_creates_the_rsa_intermediate_when_the_config_asks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        let ec_only = CertificateAuthority::load_or_init(&dir, &without_rsa()).expect("new CA");
        assert!(ec_only.rsa_intermediate_pem().is_none());
        assert!(!ec_only.has(IssuerKind::Rsa));
        assert!(!dir.join(RSA_INTERMEDIATE_KEY).exists());
        // Without it, asking for an RSA signature is an error, not an EC signature.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        assert!(matches!(
            ec_only.issue_leaf(
                &key.subject_public_key_info(),
                &[Identifier::dns("a.example")],
                &rsa_leaf()
            ),
            Err(Error::Internal(_))
        ));
        assert!(ec_only.sign_crl(IssuerKind::Rsa, 1, 0, 1, &[]).is_err());

        let cfg = IssuanceConfig {
            rsa_intermediate_key: RsaIntermediateKey::Rsa2048,
            ..IssuanceConfig::default()
        };
        let both = CertificateAuthority::load_or_init(&dir, &cfg).expect("upgraded");
        assert_eq!(both.root_fingerprint(), ec_only.root_fingerprint());
        assert_eq!(both.intermediate_pem(), ec_only.intermediate_pem());
        let int_der = pem_der(both.rsa_intermediate_pem().expect("created"));
        assert_eq!(rsa_key_bits(&parse(&int_der)), 2048);
        assert_eq!(mode(&dir.join(RSA_INTERMEDIATE_KEY)), 0o600);
        openssl_verify_with(
            &both,
            both.root_pem(),
            both.rsa_intermediate_pem().expect("rsa"),
            &[],
        );
    }

    #[test]
    fn a_missing_or_wrong_rsa_file_is_an_error_and_nothing_is_regenerated() {
        let (_tmp, dir, ca) = new_ca();
        let cfg = IssuanceConfig::default();
        for (gone, other) in [
            (RSA_INTERMEDIATE_KEY, RSA_INTERMEDIATE_CERT),
            (RSA_INTERMEDIATE_CERT, RSA_INTERMEDIATE_KEY),
        ] {
            let saved = fs::read(dir.join(gone)).expect("read");
            let kept = fs::read(dir.join(other)).expect("read");
            fs::remove_file(dir.join(gone)).expect("remove");
            let detail = internal(CertificateAuthority::load_or_init(&dir, &cfg));
            assert!(
                detail.contains(gone) && detail.contains("is missing") && detail.contains(other),
                "{detail}"
            );
            assert!(!dir.join(gone).exists(), "{gone} was recreated");
            assert_eq!(fs::read(dir.join(other)).expect("read"), kept);
            fs::write(dir.join(gone), saved).expect("restore");
        }

        // The EC intermediate in the RSA slot: refused, so RSA keys never get ECDSA chains.
        let rsa_cert = fs::read(dir.join(RSA_INTERMEDIATE_CERT)).expect("read");
        let rsa_key = fs::read(dir.join(RSA_INTERMEDIATE_KEY)).expect("read");
        fs::copy(dir.join(INTERMEDIATE_CERT), dir.join(RSA_INTERMEDIATE_CERT)).expect("copy");
        fs::copy(dir.join(INTERMEDIATE_KEY), dir.join(RSA_INTERMEDIATE_KEY)).expect("copy");
        let detail = internal(CertificateAuthority::load_or_init(&dir, &cfg));
        assert!(
            detail.contains("rsa-intermediate.key") && detail.contains("not an RSA key"),
            "{detail}"
        );
        // A key that does not match the certificate.
        fs::write(dir.join(RSA_INTERMEDIATE_CERT), &rsa_cert).expect("write");
        let detail = internal(CertificateAuthority::load_or_init(&dir, &cfg));
        assert!(
            detail.contains("rsa-intermediate.key") && detail.contains("does not match"),
            "{detail}"
        );
        fs::write(dir.join(RSA_INTERMEDIATE_KEY), &rsa_key).expect("write");
        let again = CertificateAuthority::load_or_init(&dir, &cfg).expect("restored");
        assert_eq!(again.rsa_intermediate_pem(), ca.rsa_intermediate_pem());
    }
}
