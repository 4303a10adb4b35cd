//! Issuance: certificates for devices from a verified CSR, shaped by the profile (SPEC §8.2,
//! §8.3): random positive 128-bit serials, the ordered identifiers as subjectAltNames (with
//! the `permanent-identifier` otherName), CN from the first identifier when it fits, and a
//! lifetime that never outlives the issuing intermediate.

use super::*;

impl CertificateAuthority {
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

    /// Signs an end-entity certificate with the intermediate `kind`.
    pub(super) fn sign_leaf(
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
            .map_err(|e| {
                intermediate
                    .issuer
                    .key()
                    .signing_error("cannot sign the certificate", &e)
            })?;
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
}

/// What distinguishes one kind of end-entity certificate from another.
pub(super) struct LeafProfile<'a> {
    pub(super) common_name: Option<&'a str>,
    pub(super) organization: Option<&'a str>,
    /// Extensions from the certificate profile (e.g. the Modbus role).
    pub(super) extensions: Vec<CustomExtension>,
    pub(super) subject_alt_names: Vec<SanType>,
    /// A complete subjectAltName extension value (GeneralNames DER), used instead of
    /// `subject_alt_names` when it holds names rcgen cannot write.
    pub(super) san_der: Option<Vec<u8>>,
    pub(super) key_usages: Vec<KeyUsagePurpose>,
    pub(super) extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
}

/// A subjectAltName entry: one rcgen writes, or the DER of a GeneralName it cannot write.
pub(super) enum San {
    Rcgen(SanType),
    Der(Vec<u8>),
}

/// The SAN for an order identifier: `dns` -> dNSName, `ip` -> iPAddress (RFC 8738 §7),
/// `permanent-identifier` -> otherName PermanentIdentifier (RFC 4043; SPEC §8.2).
pub(super) fn san_for_identifier(identifier: &Identifier) -> Result<San> {
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
pub(super) fn general_names_der(sans: &[San]) -> Result<Vec<u8>> {
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
pub(super) fn common_name(name: &str) -> Option<&str> {
    (name.chars().count() <= CN_MAX_CHARS).then_some(name)
}

/// A 16-byte serial: 128 random bits with the top bit cleared so the DER INTEGER is positive.
pub(super) fn random_serial() -> Result<[u8; 16]> {
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

pub(super) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Error::Internal("the system random number generator failed".to_owned()))?;
    Ok(buf)
}

/// Now, truncated to whole seconds: certificates carry seconds only, and the Unix times
/// returned in `IssuedCert` must equal what is in the certificate.
pub(super) fn now_whole_seconds() -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(crate::types::now())
        .map_err(|e| Error::Internal(format!("system clock out of range: {e}")))
}
