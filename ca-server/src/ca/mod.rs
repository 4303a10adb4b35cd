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

pub mod cert;
pub mod crl;
pub mod csr;
pub mod profiles;

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

/// Root lifetime: ten years (3652 days covers the leap days).
const ROOT_LIFETIME: time::Duration = time::Duration::days(3652);
/// Intermediate lifetime: five years, well inside the root's.
const INTERMEDIATE_LIFETIME: time::Duration = time::Duration::days(1826);
/// Lifetime of the server's own HTTPS certificate.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// notBefore is backdated by this much, for devices whose clocks run a little slow.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(1);
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
    issuer: Issuer<'static, KeyPair>,
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
    /// Loads the CA hierarchy from `dir` (e.g. `<data_dir>/ca`), creating it on first start: a
    /// self-signed root (`cfg.root_key`, 10 years, CA:true pathlen 1, keyCertSign + cRLSign)
    /// and an issuing intermediate signed by it (`cfg.intermediate_key`, 5 years, pathlen 0).
    /// The RSA intermediate (`cfg.rsa_intermediate_key`, 5 years, pathlen 0) is created when
    /// neither of its files exists, on first start or later, unless the config says `none`.
    ///
    /// Restarting reuses everything; the key types in `cfg` only matter when a key is created.
    /// A missing or corrupt file gives `Error::Internal` naming the file; a root or an
    /// intermediate is never regenerated because one file of its set is missing.
    pub fn load_or_init(dir: &Path, cfg: &IssuanceConfig) -> Result<Self> {
        ensure_private_dir(dir)?;
        let files = [ROOT_CERT, ROOT_KEY, INTERMEDIATE_CERT, INTERMEDIATE_KEY];
        let mut present = Vec::with_capacity(files.len());
        for name in files {
            let path = dir.join(name);
            let exists = path
                .try_exists()
                .map_err(|e| file_error(&path, format!("cannot be checked: {e}")))?;
            present.push((name, exists));
        }
        let new_ca = present.iter().all(|(_, exists)| !exists);
        if new_ca {
            create_hierarchy(dir, cfg)?;
            tracing::info!(dir = %dir.display(), "created a new CA root and issuing intermediate");
        } else if let Some((missing, _)) = present.iter().find(|(_, exists)| !exists) {
            return Err(file_error(
                &dir.join(missing),
                "is missing while other CA files exist; refusing to create a new CA over an \
                 existing one (every device trusting the old root would stop validating). \
                 Restore the file from a backup, or empty the directory to start a new CA",
            ));
        }
        let mut ca = Self::load(dir)?;
        ca.rsa = Self::load_or_init_rsa(dir, &ca.root_der, cfg.rsa_intermediate_key, new_ca)?;
        tracing::info!(root = %ca.root_path.display(), fingerprint = %ca.root_fingerprint(), rsa_intermediate = ca.rsa.is_some(), "CA loaded");
        Ok(ca)
    }

    /// The RSA intermediate: loaded if both its files exist, created if neither does (unless
    /// `want` is `none`), refused if only one does. `new_ca`: the root was created just now.
    fn load_or_init_rsa(
        dir: &Path,
        root_der: &[u8],
        want: RsaIntermediateKey,
        new_ca: bool,
    ) -> Result<Option<Intermediate>> {
        let cert_path = dir.join(RSA_INTERMEDIATE_CERT);
        let key_path = dir.join(RSA_INTERMEDIATE_KEY);
        let exists = |path: &Path| {
            path.try_exists()
                .map_err(|e| file_error(path, format!("cannot be checked: {e}")))
        };
        match (exists(&cert_path)?, exists(&key_path)?, want.bits()) {
            (false, false, None) => return Ok(None),
            (false, false, Some(bits)) => {
                create_rsa_intermediate(dir, root_der, bits)?;
                if new_ca {
                    tracing::info!(dir = %dir.display(), bits, "created an RSA issuing intermediate");
                } else {
                    // An upgrade from a version without it, or both files were lost: the
                    // operator must be able to tell the two apart, so this is not quiet.
                    tracing::warn!(dir = %dir.display(), bits, "created a NEW RSA issuing intermediate for an existing CA root. Expected once after an upgrade; otherwise rsa-intermediate.pem/.key were lost, and certificates the old one issued can no longer be checked against its CRL");
                }
            }
            (true, true, _) => {}
            (cert, _, _) => {
                let (missing, present) = if cert {
                    (&key_path, &cert_path)
                } else {
                    (&cert_path, &key_path)
                };
                return Err(file_error(
                    missing,
                    format!(
                        "is missing while {} exists; refusing to replace the RSA intermediate \
                         (certificates it issued could no longer be checked against its CRL). \
                         Restore the file from a backup, or remove {} too to create a new RSA \
                         intermediate",
                        present.display(),
                        present.display()
                    ),
                ));
            }
        }
        let root_path = dir.join(ROOT_CERT);
        let root = parse_cert(&root_path, root_der)?;
        let rsa = Intermediate::load(&cert_path, &key_path, &root, &root_path)?;
        if rsa.issuer.key().algorithm() != &rcgen::PKCS_RSA_SHA256 {
            return Err(file_error(&key_path, "is not an RSA key"));
        }
        let intermediate = parse_cert(&cert_path, &rsa.der)?;
        let size = match intermediate.public_key().parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(key)) => key.key_size(),
            _ => 0,
        };
        if !(2048..=4096).contains(&size) {
            return Err(file_error(
                &cert_path,
                format!("has a {size}-bit key; the RSA intermediate needs 2048 to 4096 bits"),
            ));
        }
        if want.bits().is_some_and(|bits| bits != size) {
            tracing::warn!(file = %cert_path.display(), size, wanted = ?want, "the existing RSA intermediate is kept; issuance.rsa_intermediate_key only applies when one is created");
        }
        Ok(Some(rsa))
    }

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

    /// The CA server's own HTTPS certificate, issued by the EC intermediate for `names` (an IP
    /// literal, optionally in brackets, becomes an iPAddress SAN, anything else a dNSName),
    /// with EKU serverAuth, stored as `server.pem` (leaf + intermediate) and `server.key` in
    /// `dir`. The stored one is reused while its names equal `names` and more than a third of
    /// its lifetime remains; otherwise a new key and certificate (90 days) replace it.
    ///
    /// Returns (chain PEM, PKCS#8 key PEM).
    pub fn server_tls_identity(&self, dir: &Path, names: &[String]) -> Result<(String, String)> {
        self.server_tls_identity_with(dir, names, SERVER_CERT_VALIDITY)
    }

    /// Issues an end-entity certificate for `spki_der`, a SubjectPublicKeyInfo taken from a
    /// verified CSR (`csr::parse_and_verify`).
    ///
    /// Built from CA policy only: subject CN = the value (`serial["/"assigner]`) of the first
    /// `permanent-identifier`, or else the first identifier, if it fits in 64 characters (else an empty subject and a
    /// critical SAN), SANs = `identifiers` (SPEC §8.2), a random
    /// 128-bit serial, AKI + SKI, keyUsage digitalSignature (+ keyEncipherment for RSA), EKU
    /// serverAuth + clientAuth, CA:false, notBefore = now - 1 minute, notAfter = now +
    /// `validity` (never past the intermediate's notAfter), signed by the EC intermediate.
    pub fn issue(
        &self,
        spki_der: &[u8],
        identifiers: &[Identifier],
        validity: Duration,
    ) -> Result<IssuedCert> {
        let rsa = matches!(
            crate::key::policy::parse_spki(spki_der)?,
            PublicKey::Rsa { .. }
        );
        self.issue_leaf(spki_der, identifiers, &Leaf::spec_default(validity, rsa))
    }

    /// Issues from a certificate profile (SPEC §8.3): the names and serial as in `issue`, the
    /// rest (lifetime, CN or not, O, key usages, EKUs, a URI SAN after the order's names,
    /// extra extensions, the signing intermediate) from `leaf`.
    pub fn issue_leaf(
        &self,
        spki_der: &[u8],
        identifiers: &[Identifier],
        leaf: &Leaf,
    ) -> Result<IssuedCert> {
        let Some(first) = identifiers.first() else {
            return Err(Error::BadCsr("no identifiers to certify".to_owned()));
        };
        // The key policy runs again here, at the last point before a signature, so nothing
        // can reach it without passing.
        crate::key::policy::parse_spki(spki_der)?;
        let subject_key = rcgen::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| Error::BadPublicKey(format!("unusable SubjectPublicKeyInfo: {e}")))?;
        // rcgen re-encodes the key from its parts. Make sure what it writes is byte for byte
        // what the client proved possession of.
        if subject_key.subject_public_key_info() != spki_der {
            return Err(Error::BadPublicKey(
                "SubjectPublicKeyInfo is not in canonical DER form".to_owned(),
            ));
        }
        let mut sans = identifiers
            .iter()
            .map(san_for_identifier)
            .collect::<Result<Vec<_>>>()?;
        if let Some(uri) = &leaf.uri {
            let uri = Ia5String::try_from(uri.as_str())
                .map_err(|_| Error::BadCsr(format!("URI {uri:?} is not ASCII")))?;
            sans.push(San::Rcgen(SanType::URI(uri)));
        }
        // rcgen writes dNSName and iPAddress itself; an otherName PermanentIdentifier it
        // cannot (its otherName values are bare UTF8Strings), so with one of those the whole
        // extension is written here.
        let (subject_alt_names, san_der) = if sans.iter().all(|s| matches!(s, San::Rcgen(_))) {
            let rcgen = sans
                .into_iter()
                .filter_map(|s| match s {
                    San::Rcgen(san) => Some(san),
                    San::Der(_) => None,
                })
                .collect();
            (rcgen, None)
        } else {
            (Vec::new(), Some(general_names_der(&sans)?))
        };
        // A device's certificate is named after the device, not a network name: the whole
        // `serial/assigner` value, because a serial alone is unique only per manufacturer and
        // the CN becomes identities such as the MQTT username (SPEC §8.2, §8.3).
        let device = identifiers
            .iter()
            .find(|i| i.kind == IdentifierType::PermanentIdentifier);
        let cn_source = device.map_or(first.value.as_str(), |d| d.value.as_str());
        self.sign_leaf(
            &subject_key,
            LeafProfile {
                common_name: common_name(cn_source).filter(|_| leaf.common_name),
                organization: leaf.organization.as_deref(),
                subject_alt_names,
                san_der,
                key_usages: leaf.key_usages.clone(),
                extended_key_usages: leaf.extended_key_usages.clone(),
                extensions: leaf.extensions.clone(),
            },
            leaf.validity,
            leaf.issuer,
        )
    }

    /// Sets the CRL distribution point URL written into certificates `kind` issues from now
    /// on (nothing if the CA has no such intermediate).
    pub fn set_crl_url(&mut self, kind: IssuerKind, url: String) {
        let intermediate = match kind {
            IssuerKind::Ec => Some(&mut self.ec),
            IssuerKind::Rsa => self.rsa.as_mut(),
        };
        if let Some(i) = intermediate {
            i.crl_url = Some(url);
        }
    }

    /// Signs a CRL (RFC 5280 §5) over `revoked` (serial bytes, revocation time, reason code)
    /// with the issuing intermediate `kind`, numbered `number`, and returns its DER.
    ///
    /// > The CRL issuer is either the CA or an entity that has been authorized by the CA to
    /// > issue CRLs.
    ///
    /// <https://www.rfc-editor.org/rfc/rfc5280#section-5>: each intermediate signs the CRL of
    /// the certificates it issued, so `revoked` must hold only those.
    pub fn sign_crl(
        &self,
        kind: IssuerKind,
        number: u64,
        this_update: i64,
        next_update: i64,
        revoked: &[(Vec<u8>, i64, u8)],
    ) -> Result<Vec<u8>> {
        let time = |t: i64| {
            OffsetDateTime::from_unix_timestamp(t)
                .map_err(|e| Error::Internal(format!("CRL time {t} out of range: {e}")))
        };
        let revoked_certs = revoked
            .iter()
            .map(|(serial, at, reason)| {
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: time(*at)?,
                    reason_code: crl_reason(*reason),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: time(this_update)?,
            next_update: time(next_update)?,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.intermediate(kind)?.issuer)
            .map_err(|e| Error::Internal(format!("cannot sign the CRL: {e}")))?;
        Ok(crl.der().to_vec())
    }

    /// `server_tls_identity` with the lifetime of a new certificate as a parameter (tests use
    /// a short one to exercise renewal).
    fn server_tls_identity_with(
        &self,
        dir: &Path,
        names: &[String],
        validity: Duration,
    ) -> Result<TlsIdentity> {
        let parsed = names
            .iter()
            .map(|n| SanName::parse(n))
            .collect::<Result<Vec<_>>>()?;
        let Some(first) = parsed.first() else {
            return Err(Error::Internal(
                "the server's HTTPS certificate needs at least one name".to_owned(),
            ));
        };
        let common_name = common_name(&first.text()).map(str::to_owned);
        let wanted: BTreeSet<SanName> = parsed.iter().cloned().collect();

        let cert_path = dir.join(SERVER_CERT);
        let key_path = dir.join(SERVER_KEY);
        match self.stored_server_identity(&cert_path, &key_path, &wanted) {
            Ok(identity) => return Ok(identity),
            Err(reason) => {
                tracing::info!(%reason, "issuing a new HTTPS certificate for the CA server");
            }
        }

        ensure_private_dir(dir)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::Internal(format!("cannot generate the server key: {e}")))?;
        let issued = self.sign_leaf(
            &key,
            LeafProfile {
                common_name: common_name.as_deref(),
                organization: None,
                extensions: Vec::new(),
                subject_alt_names: wanted.iter().map(SanName::to_san).collect::<Result<_>>()?,
                san_der: None,
                key_usages: vec![KeyUsagePurpose::DigitalSignature],
                extended_key_usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
            },
            validity,
            // Clients of the CA's own API verify it with the EC chain, as they always have.
            IssuerKind::Ec,
        )?;
        let key_pem = key.serialize_pem();
        // Key first: a crash between the two writes leaves a key that does not match the old
        // certificate, which the next start detects and repairs.
        write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
        write_atomic(&cert_path, issued.chain_pem.as_bytes(), 0o644)?;
        Ok((issued.chain_pem, key_pem))
    }

    /// The stored server identity if it can be reused, else why not.
    fn stored_server_identity(
        &self,
        cert_path: &Path,
        key_path: &Path,
        wanted: &BTreeSet<SanName>,
    ) -> std::result::Result<TlsIdentity, String> {
        let der = read_pem_cert(cert_path).map_err(|e| e.to_string())?;
        let key = read_key(key_path).map_err(|e| e.to_string())?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| format!("{} does not parse: {e}", cert_path.display()))?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(format!(
                "{} does not match the certificate",
                key_path.display()
            ));
        }
        let (_, intermediate) = X509Certificate::from_der(&self.ec.der)
            .map_err(|e| format!("the intermediate does not parse: {e}"))?;
        if cert.issuer().as_raw() != intermediate.subject().as_raw()
            || cert
                .verify_signature(Some(intermediate.public_key()))
                .is_err()
        {
            return Err("it was issued by another intermediate".to_owned());
        }
        let mut have = BTreeSet::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => {
                        have.insert(SanName::Dns(dns.to_ascii_lowercase()));
                    }
                    GeneralName::IPAddress(octets) => {
                        have.insert(SanName::Ip(ip_from_octets(octets).ok_or("bad iPAddress")?));
                    }
                    other => return Err(format!("it has an unexpected SAN {other:?}")),
                }
            }
        }
        if have != *wanted {
            return Err("its names differ from the configured ones".to_owned());
        }
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if now < not_before {
            return Err("it is not valid yet".to_owned());
        }
        // Renew with a third of the lifetime left, as ACME clients commonly do, so a server
        // that restarts rarely still never serves an expired certificate.
        if (not_after - now).saturating_mul(3) <= not_after - not_before {
            return Err("less than a third of its lifetime remains".to_owned());
        }
        Ok((
            pem_encode("CERTIFICATE", &der) + &self.ec.pem,
            key.serialize_pem(),
        ))
    }

    /// Signs an end-entity certificate with the intermediate `kind`.
    fn sign_leaf(
        &self,
        subject_key: &impl PublicKeyData,
        profile: LeafProfile<'_>,
        validity: Duration,
        kind: IssuerKind,
    ) -> Result<IssuedCert> {
        let intermediate = self.intermediate(kind)?;
        let serial = random_serial()?;
        let now = now_whole_seconds()?;
        let validity = time::Duration::try_from(validity)
            .map_err(|_| Error::Internal(format!("validity {validity:?} is out of range")))?;
        // A certificate that outlives its issuer fails path validation after the issuer
        // expires, so the intermediate's notAfter caps every leaf.
        let not_after = now
            .checked_add(validity)
            .unwrap_or(intermediate.not_after)
            .min(intermediate.not_after);
        if not_after <= now {
            return Err(Error::Internal(format!(
                "the issuing intermediate {} has expired: replace it and its key",
                intermediate.path.display()
            )));
        }

        let mut params = CertificateParams::default();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = not_after;
        // > The serial number MUST be a positive integer assigned by the CA to each
        // > certificate.  It MUST be unique for each certificate issued by a given CA
        // <https://www.rfc-editor.org/rfc/rfc5280#section-4.1.2.2>
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let mut subject = DistinguishedName::new();
        if let Some(cn) = profile.common_name {
            subject.push(DnType::CommonName, cn);
        }
        if let Some(o) = profile.organization {
            subject.push(DnType::OrganizationName, o);
        }
        // With an empty subject rcgen marks the SAN extension critical, as RFC 5280 §4.1.2.6
        // requires; a SAN written here follows the same rule.
        let empty_subject = profile.common_name.is_none() && profile.organization.is_none();
        params.distinguished_name = subject;
        params.subject_alt_names = profile.subject_alt_names;
        if let Some(der) = profile.san_der {
            let mut san = CustomExtension::from_oid_content(&[2, 5, 29, 17], der);
            san.set_criticality(empty_subject);
            params.custom_extensions.push(san);
        }
        // ExplicitNoCa writes basicConstraints CA:false and, with it, the SKI.
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = profile.key_usages;
        params.extended_key_usages = profile.extended_key_usages;
        params.custom_extensions.extend(profile.extensions);
        // > The keyIdentifier field of the authorityKeyIdentifier extension MUST be included
        // > in all certificates generated by conforming CAs to facilitate certification path
        // > construction.
        // <https://www.rfc-editor.org/rfc/rfc5280#section-4.2.1.1>
        params.use_authority_key_identifier_extension = true;
        // RFC 5280 §4.2.1.13: where the CRL covering this certificate is published.
        if let Some(url) = &intermediate.crl_url {
            params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: vec![url.clone()],
            }];
        }

        let cert = params
            .signed_by(subject_key, &intermediate.issuer)
            .map_err(|e| Error::Internal(format!("cannot sign the certificate: {e}")))?;
        Ok(IssuedCert {
            serial_hex: hex::encode(serial),
            der: cert.der().to_vec(),
            // > The default format of the certificate is application/pem-certificate-chain
            // <https://www.rfc-editor.org/rfc/rfc8555#section-7.4.2>
            chain_pem: pem_encode("CERTIFICATE", cert.der()) + &intermediate.pem,
            issuer: kind,
            not_before: params.not_before.unix_timestamp(),
            not_after: params.not_after.unix_timestamp(),
        })
    }

    /// Reads and cross-checks the root and EC files (the RSA intermediate comes after).
    fn load(dir: &Path) -> Result<Self> {
        let root_path = dir.join(ROOT_CERT);
        let root_key_path = dir.join(ROOT_KEY);
        let root_der = read_pem_cert(&root_path)?;
        let root_key = read_key(&root_key_path)?;

        let root = parse_cert(&root_path, &root_der)?;
        if !root.is_ca() {
            return Err(file_error(&root_path, "is not a CA certificate"));
        }
        if root.verify_signature(None).is_err() {
            return Err(file_error(
                &root_path,
                "is not self-signed (its signature does not verify with its own key)",
            ));
        }
        if root_key.subject_public_key_info() != root.public_key().raw {
            return Err(file_error(&root_key_path, "does not match root.pem"));
        }
        let ec = Intermediate::load(
            &dir.join(INTERMEDIATE_CERT),
            &dir.join(INTERMEDIATE_KEY),
            &root,
            &root_path,
        )?;
        Ok(Self {
            root_pem: pem_encode("CERTIFICATE", &root_der),
            root_path,
            root_der,
            ec,
            rsa: None,
        })
    }
}

impl Intermediate {
    /// Reads an intermediate and its key and checks them against each other and the root.
    fn load(
        cert_path: &Path,
        key_path: &Path,
        root: &X509Certificate<'_>,
        root_path: &Path,
    ) -> Result<Self> {
        let der = read_pem_cert(cert_path)?;
        let key = read_key(key_path)?;
        let cert = parse_cert(cert_path, &der)?;
        if !cert.is_ca() {
            return Err(file_error(cert_path, "is not a CA certificate"));
        }
        if cert.issuer().as_raw() != root.subject().as_raw()
            || cert.verify_signature(Some(root.public_key())).is_err()
        {
            return Err(file_error(
                cert_path,
                format!("was not issued by {}", root_path.display()),
            ));
        }
        if key.subject_public_key_info() != cert.public_key().raw {
            let name = cert_path.file_name().unwrap_or_default().to_string_lossy();
            return Err(file_error(key_path, format!("does not match {name}")));
        }
        let not_after = cert.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            tracing::error!(
                file = %cert_path.display(),
                "the issuing intermediate has expired: issuance will fail"
            );
        }
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(der.as_slice()), key)
            .map_err(|e| file_error(cert_path, format!("cannot be used to issue: {e}")))?;
        Ok(Self {
            path: cert_path.to_path_buf(),
            pem: pem_encode("CERTIFICATE", &der),
            der,
            not_after,
            issuer,
            crl_url: None,
        })
    }
}

/// What distinguishes one kind of end-entity certificate from another.
struct LeafProfile<'a> {
    common_name: Option<&'a str>,
    organization: Option<&'a str>,
    /// Extensions from the certificate profile (e.g. the Modbus role).
    extensions: Vec<CustomExtension>,
    subject_alt_names: Vec<SanType>,
    /// A complete subjectAltName extension value (GeneralNames DER), used instead of
    /// `subject_alt_names` when it holds names rcgen cannot write.
    san_der: Option<Vec<u8>>,
    key_usages: Vec<KeyUsagePurpose>,
    extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
}

/// One name in the server certificate, in the form used to compare name sets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SanName {
    Dns(String),
    Ip(IpAddr),
}

impl SanName {
    /// `"10.0.0.1"`, `"::1"` and `"[::1]"` are addresses, anything else a DNS name.
    fn parse(name: &str) -> Result<Self> {
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Internal(format!(
                "{name:?} is not a DNS name or IP address for the server certificate"
            )));
        }
        Ok(Self::Dns(name.to_ascii_lowercase()))
    }

    fn text(&self) -> String {
        match self {
            Self::Dns(name) => name.clone(),
            Self::Ip(ip) => ip.to_string(),
        }
    }

    fn to_san(&self) -> Result<SanType> {
        match self {
            Self::Dns(name) => Ia5String::try_from(name.as_str())
                .map(SanType::DnsName)
                .map_err(|e| Error::Internal(format!("server name {name:?}: {e}"))),
            Self::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        }
    }
}

/// The CRL entry reason (RFC 5280 §5.3.1) for a stored reason code; unspecified (0) is left
/// out, as RFC 5280 recommends.
fn crl_reason(code: u8) -> Option<rcgen::RevocationReason> {
    use rcgen::RevocationReason as R;
    match code {
        1 => Some(R::KeyCompromise),
        2 => Some(R::CaCompromise),
        3 => Some(R::AffiliationChanged),
        4 => Some(R::Superseded),
        5 => Some(R::CessationOfOperation),
        6 => Some(R::CertificateHold),
        8 => Some(R::RemoveFromCrl),
        9 => Some(R::PrivilegeWithdrawn),
        10 => Some(R::AaCompromise),
        _ => None,
    }
}

/// A subjectAltName entry: one rcgen writes, or the DER of a GeneralName it cannot write.
enum San {
    Rcgen(SanType),
    Der(Vec<u8>),
}

/// The SAN for an order identifier: `dns` -> dNSName, `ip` -> iPAddress (RFC 8738 §7),
/// `permanent-identifier` -> otherName PermanentIdentifier (RFC 4043; SPEC §8.2).
fn san_for_identifier(identifier: &Identifier) -> Result<San> {
    let rejected = |detail: &str| Error::RejectedIdentifier {
        identifier: identifier.clone(),
        detail: detail.to_owned(),
    };
    match identifier.kind {
        IdentifierType::Dns => {
            if identifier.value.is_empty() {
                return Err(rejected("empty DNS name"));
            }
            Ia5String::try_from(identifier.value.as_str())
                .map(|name| San::Rcgen(SanType::DnsName(name)))
                .map_err(|_| rejected("DNS name is not ASCII"))
        }
        IdentifierType::Ip => identifier
            .value
            .parse::<IpAddr>()
            .map(|ip| San::Rcgen(SanType::IpAddress(ip)))
            .map_err(|_| rejected("not an IP address")),
        IdentifierType::PermanentIdentifier => PermanentId::parse(&identifier.value)
            .map(|id| San::Der(id.general_name_der()))
            .map_err(|r| rejected(r.detail())),
    }
}

/// `GeneralNames ::= SEQUENCE SIZE (1..MAX) OF GeneralName` (RFC 5280 §4.2.1.6), in order.
fn general_names_der(sans: &[San]) -> Result<Vec<u8>> {
    let mut names = Vec::new();
    for san in sans {
        match san {
            San::Der(der) => names.extend_from_slice(der),
            San::Rcgen(SanType::DnsName(name)) => {
                der::write(&mut names, der::DNS_NAME, name.as_str().as_bytes());
            }
            San::Rcgen(SanType::IpAddress(IpAddr::V4(ip))) => {
                der::write(&mut names, der::IP_ADDRESS, &ip.octets());
            }
            San::Rcgen(SanType::IpAddress(IpAddr::V6(ip))) => {
                der::write(&mut names, der::IP_ADDRESS, &ip.octets());
            }
            // uniformResourceIdentifier [6] IA5String (RFC 5280 §4.2.1.6).
            San::Rcgen(SanType::URI(uri)) => {
                der::write(&mut names, 0x86, uri.as_str().as_bytes());
            }
            San::Rcgen(other) => {
                return Err(Error::Internal(format!(
                    "no DER writer for subjectAltName {other:?}"
                )))
            }
        }
    }
    Ok(der::tlv(der::SEQUENCE, &names))
}

/// The subject CN for a name, if it fits (RFC 5280 `ub-common-name`).
fn common_name(name: &str) -> Option<&str> {
    (name.chars().count() <= CN_MAX_CHARS).then_some(name)
}

/// Generates the root and intermediate and writes the four files.
fn create_hierarchy(dir: &Path, cfg: &IssuanceConfig) -> Result<()> {
    let now = now_whole_seconds()?;
    // A per-installation tag in the names, so two sites' CAs are told apart in a trust store
    // or a log, and path builders matching on names never confuse them.
    let tag = hex::encode(random_bytes::<4>()?);

    let root_key = generate_ca_key(cfg.root_key)?;
    let root_params = ca_params(format!("iiot-acme Root CA {tag}"), now, ROOT_LIFETIME, 1)?;
    let root_cert = root_params
        .self_signed(&root_key)
        .map_err(|e| Error::Internal(format!("cannot self-sign the root: {e}")))?;

    let intermediate_key = generate_ca_key(cfg.intermediate_key)?;
    let intermediate_params = intermediate_params(format!("iiot-acme Issuing CA {tag}"), now)?;
    let root_issuer = Issuer::from_params(&root_params, &root_key);
    let intermediate_cert = intermediate_params
        .signed_by(&intermediate_key, &root_issuer)
        .map_err(|e| Error::Internal(format!("cannot sign the intermediate: {e}")))?;

    // Keys before certificates; if a crash interrupts this, the next start finds an
    // incomplete set and refuses to run instead of guessing.
    write_key(&dir.join(ROOT_KEY), &root_key)?;
    write_key(&dir.join(INTERMEDIATE_KEY), &intermediate_key)?;
    write_cert(&dir.join(ROOT_CERT), root_cert.der())?;
    write_cert(&dir.join(INTERMEDIATE_CERT), intermediate_cert.der())
}

/// Writes a private key, PKCS#8 PEM, mode 0600 from the start.
fn write_key(path: &Path, key: &KeyPair) -> Result<()> {
    write_atomic(path, key.serialize_pem().as_bytes(), 0o600)
}

/// Writes a certificate, PEM, mode 0644.
fn write_cert(path: &Path, der: &[u8]) -> Result<()> {
    write_atomic(path, pem_encode("CERTIFICATE", der).as_bytes(), 0o644)
}

/// Generates the RSA intermediate (`bits`, signed by the root in `dir`) and writes its two
/// files, key first, as `create_hierarchy` does.
fn create_rsa_intermediate(dir: &Path, root_der: &[u8], bits: usize) -> Result<()> {
    let root_path = dir.join(ROOT_CERT);
    let root = parse_cert(&root_path, root_der)?;
    // The root's per-installation tag, so the RSA intermediate is named like its siblings.
    let tag = root.subject().iter_common_name().find_map(|cn| {
        cn.as_str()
            .ok()?
            .strip_prefix("iiot-acme Root CA ")
            .map(str::to_owned)
    });
    let tag = match tag {
        Some(tag) => tag,
        None => hex::encode(random_bytes::<4>()?),
    };
    let root_issuer = Issuer::from_ca_cert_der(
        &CertificateDer::from(root_der),
        read_key(&dir.join(ROOT_KEY))?,
    )
    .map_err(|e| file_error(&root_path, format!("cannot be used to issue: {e}")))?;
    let key = generate_rsa_key(bits)?;
    let params = intermediate_params(
        format!("iiot-acme RSA Issuing CA {tag}"),
        now_whole_seconds()?,
    )?;
    let cert = params
        .signed_by(&key, &root_issuer)
        .map_err(|e| Error::Internal(format!("cannot sign the RSA intermediate: {e}")))?;
    write_key(&dir.join(RSA_INTERMEDIATE_KEY), &key)?;
    write_cert(&dir.join(RSA_INTERMEDIATE_CERT), cert.der())
}

/// An issuing intermediate's parameters: 5 years, pathlen 0, AKI, EKU serverAuth + clientAuth.
fn intermediate_params(common_name: String, now: OffsetDateTime) -> Result<CertificateParams> {
    let mut params = ca_params(common_name, now, INTERMEDIATE_LIFETIME, 0)?;
    params.use_authority_key_identifier_extension = true;
    // digitalSignature lets the intermediate sign OCSP responses itself later.
    params.key_usages.push(KeyUsagePurpose::DigitalSignature);
    // An EKU on the intermediate limits what anything it signs can be used for, even if the
    // online key leaks.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// Parameters shared by the root and the intermediates.
fn ca_params(
    common_name: String,
    now: OffsetDateTime,
    lifetime: time::Duration,
    path_len: u8,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + lifetime;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "iiot-acme");
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn generate_ca_key(kind: CaKeyType) -> Result<KeyPair> {
    let alg: &'static SignatureAlgorithm = match kind {
        CaKeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        CaKeyType::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
    };
    KeyPair::generate_for(alg)
        .map_err(|e| Error::Internal(format!("cannot generate a CA key: {e}")))
}

/// A new RSA key (public exponent 65537) that signs with sha256WithRSAEncryption. ring signs
/// with RSA but cannot generate RSA keys, so the `rsa` crate generates it and hands it over as
/// PKCS#8; only ring ever signs with it.
fn generate_rsa_key(bits: usize) -> Result<KeyPair> {
    use rsa::pkcs8::EncodePrivateKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
        .map_err(|e| Error::Internal(format!("cannot generate an RSA-{bits} key: {e}")))?;
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|e| Error::Internal(format!("cannot encode the RSA key: {e}")))?;
    KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
        &rcgen::PKCS_RSA_SHA256,
    )
    .map_err(|e| Error::Internal(format!("the generated RSA key is unusable: {e}")))
}

/// A 16-byte serial: 128 random bits with the top bit cleared so the DER INTEGER is positive.
fn random_serial() -> Result<[u8; 16]> {
    // DER drops leading zero octets, which would make the serial shorter than 16 bytes and
    // `serial_hex` disagree with what parsers print, so a zero first octet is drawn again
    // (1 time in 128; 32 draws all failing would mean a broken random number generator).
    for _ in 0..32 {
        let mut serial = random_bytes::<16>()?;
        serial[0] &= 0x7f;
        if serial[0] != 0 {
            return Ok(serial);
        }
    }
    Err(Error::Internal(
        "the random number generator keeps returning zeros".to_owned(),
    ))
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Error::Internal("the system random number generator failed".to_owned()))?;
    Ok(buf)
}

/// Now, truncated to whole seconds: certificates carry seconds only, and the Unix times
/// returned in `IssuedCert` must equal what is in the certificate.
fn now_whole_seconds() -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
        .map_err(|e| Error::Internal(format!("system clock out of range: {e}")))
}

fn file_error(path: &Path, what: impl fmt::Display) -> Error {
    Error::Internal(format!("CA file {}: {what}", path.display()))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => file_error(path, "is missing"),
        _ => file_error(path, format!("cannot be read: {e}")),
    })
}

/// The DER of the first `CERTIFICATE` block of a PEM file.
fn read_pem_cert(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_file(path)?;
    match x509_parser::pem::parse_x509_pem(&bytes) {
        Ok((_, pem)) if pem.label == "CERTIFICATE" => Ok(pem.contents),
        Ok((_, pem)) => Err(file_error(
            path,
            format!("holds a {:?} PEM block, not a CERTIFICATE", pem.label),
        )),
        Err(e) => Err(file_error(path, format!("is not PEM: {e}"))),
    }
}

fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(file_error(path, "has trailing bytes after the certificate")),
        Err(e) => Err(file_error(path, format!("is not a valid certificate: {e}"))),
    }
}

/// A PKCS#8 private key PEM file.
fn read_key(path: &Path) -> Result<KeyPair> {
    let bytes = read_file(path)?;
    warn_if_exposed(path);
    let text = String::from_utf8(bytes).map_err(|_| file_error(path, "is not PEM text"))?;
    KeyPair::from_pem(&text)
        .map_err(|e| file_error(path, format!("is not a usable PKCS#8 private key: {e}")))
}

/// Logs a warning if a key file is readable by group or others (e.g. restored from a backup
/// with the wrong mode). Not fatal: the operator may have reasons, but should know.
#[cfg(unix)]
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "private key file is readable by others");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_: &Path) {}

/// Key algorithm for a CA key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaKeyType {
    /// ECDSA P-256 with SHA-256.
    P256,
    /// ECDSA P-384 with SHA-384.
    P384,
}

/// Key of the RSA issuing intermediate (SPEC §8.1), or `none` for no RSA intermediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
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
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuanceConfig {
    /// Lifetime of issued end-entity certificates. Short by default: devices renew.
    #[serde(deserialize_with = "crate::types::de_duration")]
    pub cert_validity: Duration,
    /// Root CA key type (generated on first start only).
    pub root_key: CaKeyType,
    /// Issuing intermediate key type (generated on first start only).
    pub intermediate_key: CaKeyType,
    /// RSA issuing intermediate (for profiles with `issuer = "rsa"`): created when the CA
    /// starts without one, unless `none`; the size only matters then.
    pub rsa_intermediate_key: RsaIntermediateKey,
    /// How long a new order stays usable.
    #[serde(deserialize_with = "crate::types::de_duration")]
    pub order_lifetime: Duration,
    /// How long a pending authorization stays usable.
    #[serde(deserialize_with = "crate::types::de_duration")]
    pub authz_lifetime: Duration,
}

impl Default for IssuanceConfig {
    fn default() -> Self {
        Self {
            cert_validity: Duration::from_secs(7 * 86_400),
            root_key: CaKeyType::P384,
            intermediate_key: CaKeyType::P256,
            rsa_intermediate_key: RsaIntermediateKey::Rsa3072,
            order_lifetime: Duration::from_secs(86_400),
            authz_lifetime: Duration::from_secs(86_400),
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
