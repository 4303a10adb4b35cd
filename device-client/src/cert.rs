//! The installed certificate: what it is, whether it still fits the device, and when to renew.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use protocol_spec::ari;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::config::LocalSettings;
use crate::error::Error;
use crate::files;
use crate::key::CertKey;
use crate::pkcs11::{Pkcs11Uri, TokenKey};
use crate::types::Identifier;

/// What the client reads from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Subject, as text.
    pub subject: String,
    /// Issuer, as text.
    pub issuer: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The `dns`, `ip` and `permanent-identifier` (otherName PermanentIdentifier)
    /// subjectAltNames, sorted.
    pub identifiers: Vec<Identifier>,
    /// The uniformResourceIdentifier subjectAltNames as written (the OPC UA ApplicationUri).
    pub uris: Vec<String>,
    /// The DER SubjectPublicKeyInfo's public key bits (for comparing with the key file).
    pub public_key: Vec<u8>,
    /// The ACME Renewal Information certificate identifier (RFC 9773 §4.1):
    /// `base64url(AKI keyIdentifier) "." base64url(serial)`; `None` without an AKI key
    /// identifier, or with an empty one.
    pub cert_id: Option<String>,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let mut identifiers = Vec::new();
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    GeneralName::DNSName(d) => identifiers.push(Identifier {
                        kind: "dns".into(),
                        value: d.to_ascii_lowercase(),
                    }),
                    GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            identifiers.push(Identifier {
                                kind: "ip".into(),
                                value: ip.to_string(),
                            });
                        }
                    }
                    GeneralName::OtherName(oid, value)
                        if oid.to_id_string() == "1.3.6.1.5.5.7.8.3" =>
                    {
                        if let Some(value) = crate::der::permanent_identifier(value) {
                            identifiers.push(Identifier {
                                kind: "permanent-identifier".into(),
                                value,
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        identifiers.sort();
        identifiers.dedup();
        let aki = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            });
        let cert_id = aki.and_then(|aki| ari_cert_id(&aki, cert.raw_serial()));
        Ok(Self {
            serial: hex(cert.raw_serial()),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            identifiers,
            uris,
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            cert_id,
        })
    }

    /// The moment at `fraction` of the lifetime (RFC 8555 leaves renewal to the client; the
    /// issue asks for 2/3 by default).
    pub fn renewal_time(&self, fraction: f64) -> OffsetDateTime {
        let lifetime = self.not_after - self.not_before;
        let at = self.not_before + lifetime * fraction.clamp(0.0, 1.0);
        // Whole seconds, like the certificate's own times.
        at.replace_nanosecond(0).unwrap_or(at)
    }
}

/// The ARI certificate identifier (RFC 9773 §4.1, SPEC §9.2) from the AKI keyIdentifier and
/// the serial's DER content octets (a leading zero octet included); `None` if either is empty,
/// which no server would accept.
pub fn ari_cert_id(aki_key_id: &[u8], serial_content: &[u8]) -> Option<String> {
    let mut out = vec![0u8; ari::cert_id_len(aki_key_id.len(), serial_content.len())];
    ari::cert_id(aki_key_id, serial_content, &mut out)
        .ok()
        .map(str::to_owned)
}

/// Where the installed certificate stands.
#[derive(Clone, Debug, PartialEq)]
pub enum CertStatus {
    /// No certificate file.
    Missing,
    /// A certificate is there but cannot be kept: it does not parse, does not match the key,
    /// or names other identifiers than configured.
    Unusable {
        /// Why.
        reason: String,
        /// What was read, if it parsed.
        info: Option<Box<CertInfo>>,
    },
    /// Valid, and not yet at its renewal time.
    Valid {
        /// The certificate.
        info: Box<CertInfo>,
        /// When to renew.
        renew_at: OffsetDateTime,
    },
    /// Still valid, but past its renewal time.
    RenewalDue {
        /// The certificate.
        info: Box<CertInfo>,
        /// When renewal was due.
        renew_at: OffsetDateTime,
    },
    /// Expired (or not yet valid: a clock far behind, SPEC §10.6).
    Expired {
        /// The certificate.
        info: Box<CertInfo>,
    },
}

impl CertStatus {
    /// Whether a new certificate is needed now.
    pub fn needs_issuance(&self) -> bool {
        !matches!(self, Self::Valid { .. })
    }

    /// The certificate, if one parsed.
    pub fn info(&self) -> Option<&CertInfo> {
        match self {
            Self::Missing => None,
            Self::Unusable { info, .. } => info.as_deref(),
            Self::Valid { info, .. } | Self::RenewalDue { info, .. } | Self::Expired { info } => {
                Some(info)
            }
        }
    }
}

impl fmt::Display for CertStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("missing"),
            Self::Unusable { reason, .. } => write!(f, "unusable: {reason}"),
            Self::Valid { renew_at, .. } => {
                write!(f, "valid, renewal due at {}", rfc3339(*renew_at))
            }
            Self::RenewalDue { renew_at, .. } => {
                write!(f, "renewal due since {}", rfc3339(*renew_at))
            }
            Self::Expired { info } => write!(
                f,
                "expired or not yet valid (valid {} to {})",
                rfc3339(info.not_before),
                rfc3339(info.not_after)
            ),
        }
    }
}

/// Reads the certificate at `cert_path` and the key at `key_path` and decides what they are
/// worth at `now` for `identifiers`, renewing at `fraction` of the lifetime.
pub fn status(
    cert_path: &Path,
    key_path: &Path,
    identifiers: &[Identifier],
    fraction: f64,
    now: OffsetDateTime,
) -> Result<CertStatus, Error> {
    let key = |_: &[u8]| match files::read_optional(key_path)? {
        None => Ok(Err(format!("key file {} is missing", key_path.display()))),
        Some(pem) => Ok(CertKey::from_pem(&pem)
            .map(|k| k.public_key_bits().to_vec())
            .map_err(|e| format!("key file {}: {e}", key_path.display()))),
    };
    status_with_key(cert_path, key, identifiers, fraction, now)
}

/// [`status`] for the configured certificate and key, the key in a file or in a PKCS #11
/// token. In a token, the key under the current label ([`token_key_labels`]) or, where a
/// rotation was interrupted after the certificate was installed, the new key under the other
/// label.
pub fn local_status(local: &LocalSettings, now: OffsetDateTime) -> Result<CertStatus, Error> {
    let Some(uri) = &local.key_uri else {
        return status(
            &local.cert_path,
            &local.key_path,
            &local.identifiers,
            local.renew_at,
            now,
        );
    };
    let (current, next) = token_key_labels(uri, &files::State::load(&local.state_dir)?);
    let key = |certified: &[u8]| {
        if let Some(next) = &next {
            if crate::pkcs11::public_key_labelled(uri, next)?.as_deref() == Some(certified) {
                return Ok(Ok(certified.to_vec()));
            }
        }
        match TokenKey::find_labelled(uri, current.as_deref())? {
            None => Ok(Err(format!("the token has no key {uri}"))),
            Some(k) => Ok(k
                .public_key_sec1()
                .map(<[u8]>::to_vec)
                .ok_or_else(|| format!("the token has no public key for {uri}"))),
        }
    };
    status_with_key(
        &local.cert_path,
        key,
        &local.identifiers,
        local.renew_at,
        now,
    )
}

/// The public key (subjectPublicKey bits) of the certificate at `cert_path`, `None` if there
/// is none or it does not parse.
pub fn installed_public_key(cert_path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let Some(pem) = files::read_optional(cert_path)? else {
        return Ok(None);
    };
    Ok(match CertificateDer::pem_slice_iter(&pem).next() {
        Some(Ok(der)) => CertInfo::from_der(&der).ok().map(|i| i.public_key),
        _ => None,
    })
}

/// The CKA_LABELs of the certificate key in a token: the current key's (the URI's `object`,
/// or the one the state records) and the one a new key is generated under, until its
/// certificate is installed (`None` for a URI without `object`, whose key is not rotated).
pub fn token_key_labels(uri: &Pkcs11Uri, state: &files::State) -> (Option<String>, Option<String>) {
    let Some(object) = &uri.object else {
        return (None, None);
    };
    match &state.token_key_label {
        Some(current) if current != object => (Some(current.clone()), Some(object.clone())),
        _ => (
            Some(object.clone()),
            Some(format!("{object}{}", crate::pkcs11::NEXT_SUFFIX)),
        ),
    }
}

/// [`status`] with the key's public point from `key`, given the certificate's: `Err(reason)`
/// inside makes the certificate unusable, an outer error is returned.
fn status_with_key(
    cert_path: &Path,
    key: impl FnOnce(&[u8]) -> Result<Result<Vec<u8>, String>, Error>,
    identifiers: &[Identifier],
    fraction: f64,
    now: OffsetDateTime,
) -> Result<CertStatus, Error> {
    let Some(pem) = files::read_optional(cert_path)? else {
        return Ok(CertStatus::Missing);
    };
    let der = match CertificateDer::pem_slice_iter(&pem).next() {
        Some(Ok(der)) => der,
        Some(Err(e)) => return Ok(unusable(format!("{}: {e}", cert_path.display()), None)),
        None => {
            return Ok(unusable(
                format!("{} holds no PEM certificate", cert_path.display()),
                None,
            ))
        }
    };
    let info = match CertInfo::from_der(&der) {
        Ok(i) => i,
        Err(e) => return Ok(unusable(format!("{}: {e}", cert_path.display()), None)),
    };
    let public_key = match key(&info.public_key)? {
        Ok(k) => k,
        Err(reason) => return Ok(unusable(reason, Some(info))),
    };
    // Keys and certificates are installed one rename after the other; a power cut in between
    // leaves a pair that does not match, and this is where it is noticed and repaired.
    if public_key != info.public_key {
        return Ok(unusable(
            "the certificate does not belong to the key".into(),
            Some(info),
        ));
    }
    let mut wanted = identifiers.to_vec();
    wanted.sort();
    wanted.dedup();
    if info.identifiers != wanted {
        let names = |ids: &[Identifier]| {
            ids.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Ok(unusable(
            format!(
                "the certificate names {} but the configuration asks for {}",
                names(&info.identifiers),
                names(&wanted)
            ),
            Some(info),
        ));
    }
    if now < info.not_before || now >= info.not_after {
        return Ok(CertStatus::Expired {
            info: Box::new(info),
        });
    }
    let renew_at = info.renewal_time(fraction);
    let info = Box::new(info);
    Ok(if now >= renew_at {
        CertStatus::RenewalDue { info, renew_at }
    } else {
        CertStatus::Valid { info, renew_at }
    })
}

fn unusable(reason: String, info: Option<CertInfo>) -> CertStatus {
    CertStatus::Unusable {
        reason,
        info: info.map(Box::new),
    }
}

/// RFC 3339 text of a time, for messages.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyAlgorithm, KeyPair};
    use time::Duration;

    fn issue(key: &KeyPair, names: &[&str], nb: OffsetDateTime, na: OffsetDateTime) -> String {
        let kp = rcgen::KeyPair::try_from(key.pkcs8_der()).expect("rcgen key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.not_before = nb;
        params.not_after = na;
        params.self_signed(&kp).expect("cert").pem()
    }

    #[test]
    fn token_key_labels_alternate_when_the_token_keeps_the_next_label() {
        let uri =
            Pkcs11Uri::parse("pkcs11:token=t;object=cert-key?module-path=/m.so").expect("uri");
        let mut state = files::State::default();
        let labels = |s: &files::State| token_key_labels(&uri, s);
        let pair = |a: &str, b: &str| (Some(a.to_owned()), Some(b.to_owned()));
        assert_eq!(labels(&state), pair("cert-key", "cert-key.next"));
        // A token that refused the relabelling: the key stays cert-key.next, the next is
        // generated as cert-key.
        state.token_key_label = Some("cert-key.next".into());
        assert_eq!(labels(&state), pair("cert-key.next", "cert-key"));
        state.token_key_label = Some("cert-key".into());
        assert_eq!(labels(&state), pair("cert-key", "cert-key.next"));
        let by_id = Pkcs11Uri::parse("pkcs11:token=t;id=%01?module-path=/m.so").expect("uri");
        assert_eq!(token_key_labels(&by_id, &state), (None, None));
    }

    #[test]
    fn status_covers_every_case() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let keyf = dir.path().join("key.pem");
        let ids = [
            Identifier::parse("plc-7").expect("dns"),
            Identifier::parse("10.0.0.7").expect("ip"),
        ];
        // Whole seconds, as X.509 times are.
        let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
            .expect("now");
        let st = |f: f64| status(&cert, &keyf, &ids, f, now).expect("status");
        assert_eq!(st(0.66), CertStatus::Missing);

        let key = KeyPair::generate(KeyAlgorithm::P256).expect("key");
        key.store(&keyf).expect("store");
        let nb = now - Duration::hours(1);
        let na = now + Duration::hours(2);
        std::fs::write(&cert, issue(&key, &["plc-7", "10.0.0.7"], nb, na)).expect("write");
        match st(0.66) {
            CertStatus::Valid { info, renew_at } => {
                assert_eq!(info.identifiers, {
                    let mut v = ids.to_vec();
                    v.sort();
                    v
                });
                assert_eq!(
                    renew_at,
                    nb + Duration::minutes(118) + Duration::seconds(48)
                );
                assert_eq!(info.renewal_time(0.5001).nanosecond(), 0);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(st(0.2), CertStatus::RenewalDue { .. }));

        std::fs::write(&cert, issue(&key, &["plc-7"], nb, na)).expect("write");
        let s = st(0.66);
        assert!(
            s.to_string()
                .contains("names dns:plc-7 but the configuration asks for dns:plc-7, ip:10.0.0.7"),
            "{s}"
        );

        std::fs::write(
            &cert,
            issue(&key, &["plc-7", "10.0.0.7"], nb, now - Duration::minutes(1)),
        )
        .expect("write");
        assert!(matches!(st(0.66), CertStatus::Expired { .. }));

        let other = KeyPair::generate(KeyAlgorithm::P256).expect("key");
        std::fs::write(&cert, issue(&other, &["plc-7", "10.0.0.7"], nb, na)).expect("write");
        assert_eq!(
            st(0.66).to_string(),
            "unusable: the certificate does not belong to the key"
        );

        std::fs::write(&cert, "junk").expect("write");
        assert!(matches!(st(0.66), CertStatus::Unusable { info: None, .. }));
    }
}
