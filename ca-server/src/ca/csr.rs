//! CSR parsing and policy: PKCS#10 (RFC 2986) as RFC 8555 §7.4 uses it.
//!
//! To this CA a CSR carries exactly two things: a public key, with proof that the client holds
//! the private half (the signature), and the identifiers the client asks for. Everything else a
//! CSR can request (subject attributes, key usage, basic constraints, other extensions) is
//! ignored, because `ca::CertificateAuthority::issue` builds every certificate from CA policy
//! alone. That keeps the checks here few: strict DER, an accepted signature algorithm, an
//! accepted key, a signature that verifies, and `dns`/`ip`/`permanent-identifier` names only.
//!
//! The order of the checks decides which error a client sees: the signature algorithm first (a
//! SHA-1 CSR is `badCSR` whatever its key), then the key (`badPublicKey`), then the signature,
//! then the names.
//!
//! The algorithm policy (which keys and signature algorithms) is `key::policy`'s, shared with
//! device attestation.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ring::signature as ring_sig;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME;
use x509_parser::prelude::FromDer;

use crate::key::policy::public_key_from_spki;
use crate::key::policy::refused_key_type;
use crate::key::policy::signature_algorithm;
use crate::key::policy::verification_algorithm;
use crate::key::policy::weak_signature_name;
use crate::key::PublicKey;
use crate::types::{Identifier, IdentifierType};
use crate::{Error, Result};

/// What the rest of the server needs from a CSR that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsrInfo {
    /// SubjectPublicKeyInfo DER of the requested key (what `CertificateAuthority::issue` takes).
    pub spki_der: Vec<u8>,
    /// The requested key, normalised so it compares with JWK keys (RFC 8555 §11.1).
    pub public_key: PublicKey,
    /// Identifiers the CSR asks for: every SAN dNSName (lowercased) as `dns`, every SAN
    /// iPAddress as `ip` (canonical text), every SAN otherName PermanentIdentifier as
    /// `permanent-identifier` (octet for octet), plus the subject CN if present (an IP-literal
    /// CN counts as `ip`, a CN equal to the serial or the whole value of a PermanentIdentifier
    /// in the SAN counts as that identifier, anything else as `dns`); sorted and deduplicated. May be empty: a
    /// CSR for an order of permanent identifiers only may name nothing (SPEC §7.4).
    pub identifiers: Vec<Identifier>,
    /// The CSR's URI subjectAltNames, as written. They are not identifiers: only a profile
    /// that certifies an OPC UA ApplicationUri accepts one (`profiles`, SPEC §8.3); every
    /// other profile refuses a CSR that has any.
    pub uris: Vec<String>,
}

/// Parses a DER PKCS#10 CSR (RFC 2986) and applies this CA's policy. RFC 8555 §7.4.
///
/// Errors: `BadCsr` for anything wrong with the request itself (encoding, signature algorithm,
/// signature, names), `BadPublicKey` for a key this CA does not certify.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>
pub fn parse_and_verify(der: &[u8]) -> Result<CsrInfo> {
    // > csr (required, string): A CSR encoding the parameters for the certificate being
    // > requested [RFC2986].  The CSR is sent in the base64url-encoded version of the DER
    // > format.
    // <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| Error::BadCsr(format!("CSR is not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::BadCsr(format!(
            "CSR has {} trailing bytes after the DER request",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    // RFC 2986 §4.1: `version INTEGER { v1(0) } (v1,...)`.
    if info.version.0 != 0 {
        return Err(Error::BadCsr(format!(
            "CSR version {} is not supported: PKCS#10 defines only v1 (0)",
            info.version.0
        )));
    }

    let signature_alg = signature_algorithm(&csr.signature_algorithm)?;
    let public_key = public_key_from_spki(&info.subject_pki)?;
    public_key.check_point()?;

    // > 2. The result of step 1 is signed with the certification request subject's private
    // > key under the specified signature algorithm, yielding a bit string, the signature.
    // <https://www.rfc-editor.org/rfc/rfc2986#section-4.2>
    let verifier = verification_algorithm(signature_alg, &public_key)?;
    if csr.signature_value.unused_bits != 0 {
        return Err(Error::BadCsr(
            "CSR signature BIT STRING has unused bits".to_owned(),
        ));
    }
    ring_sig::UnparsedPublicKey::new(verifier, &info.subject_pki.subject_public_key.data)
        .verify(info.raw, &csr.signature_value.data)
        .map_err(|_| {
            Error::BadCsr(
                "CSR signature does not verify: the request was altered or was not signed \
                 by the key it contains"
                    .to_owned(),
            )
        })?;

    let (identifiers, uris) = requested_identifiers(&csr)?;
    Ok(CsrInfo {
        spki_der: info.subject_pki.raw.to_vec(),
        public_key,
        identifiers,
        uris,
    })
}

/// Collects the identifiers a CSR asks for, from its subject CN and subjectAltName extension.
fn requested_identifiers(
    csr: &X509CertificationRequest<'_>,
) -> Result<(Vec<Identifier>, Vec<String>)> {
    // > The CSR MUST indicate the exact same set of requested identifiers as the initial
    // > newOrder request.  Identifiers of type "dns" MUST appear either in the commonName
    // > portion of the requested subject name or in an extensionRequest attribute [RFC2985]
    // > requesting a subjectAltName extension, or both.
    // <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>
    // The comparison with the order is the finalize handler's job; this collects the set.
    let info = &csr.certification_request_info;
    let mut ids = BTreeSet::new();
    let mut uris = Vec::new();

    let mut extension_requests =
        info.iter_attributes()
            .filter_map(|attr| match attr.parsed_attribute() {
                ParsedCriAttribute::ExtensionRequest(req) => Some(req),
                _ => None,
            });
    let request = extension_requests.next();
    if extension_requests.next().is_some() {
        return Err(Error::BadCsr(
            "CSR has more than one extensionRequest attribute".to_owned(),
        ));
    }
    let mut sans = request
        .into_iter()
        .flat_map(|req| req.extensions.iter())
        .filter(|ext| ext.oid == OID_X509_EXT_SUBJECT_ALT_NAME);
    let san = sans.next();
    // RFC 5280 §4.2: a certificate MUST NOT include more than one instance of an extension,
    // so a request for two cannot be honoured as written.
    if sans.next().is_some() {
        return Err(Error::BadCsr(
            "CSR requests more than one subjectAltName extension".to_owned(),
        ));
    }
    if let Some(ext) = san {
        let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
            return Err(Error::BadCsr(
                "CSR subjectAltName extension is malformed".to_owned(),
            ));
        };
        for name in &san.general_names {
            if let GeneralName::URI(uri) = name {
                uris.push((*uri).to_owned());
                continue;
            }
            ids.insert(identifier_from_san(name)?);
        }
    }
    for cn in info.subject.iter_common_name() {
        let text = cn
            .as_str()
            .map_err(|_| Error::BadCsr("subject commonName is not a text string".to_owned()))?;
        // A device CSR may name its device in the CN: by the whole value, as issued
        // certificates do (SPEC §8.2), or by the serial alone.
        let names_device = ids.iter().any(|id: &Identifier| {
            id.kind == IdentifierType::PermanentIdentifier
                && (id.value == text || id.value.split('/').next() == Some(text))
        });
        if !names_device {
            ids.insert(identifier_from_common_name(text)?);
        }
    }
    // An empty set is not refused here: finalize compares it with the order (`matches_order`),
    // and an order of permanent identifiers only may be finalized with a CSR naming nothing.
    Ok((ids.into_iter().collect(), uris))
}

/// Whether the identifiers a CSR requests fit an order (SPEC §7.4).
///
/// RFC 8555 §7.4 wants the exact same set. draft-ietf-acme-device-attest §3.2 relaxes this for
/// `permanent-identifier`: a CSR SHOULD carry them and MAY leave them out. So the CSR must name
/// every `dns` and `ip` identifier of the order and nothing else, and either all of the order's
/// permanent identifiers (octet for octet) or none of them. The certificate carries them either
/// way, because names come from the order (SPEC §8.2).
///
/// <https://datatracker.ietf.org/doc/html/draft-ietf-acme-device-attest#section-3.2>
pub fn matches_order(requested: &[Identifier], ordered: &[Identifier]) -> bool {
    let is_device = |id: &&Identifier| id.kind == IdentifierType::PermanentIdentifier;
    if requested == ordered {
        return true;
    }
    !requested.iter().any(|id| is_device(&id))
        && requested
            .iter()
            .eq(ordered.iter().filter(|id| !is_device(id)))
}

/// The identifier for one subjectAltName entry; only dNSName, iPAddress and otherName
/// PermanentIdentifier are accepted.
fn identifier_from_san(name: &GeneralName<'_>) -> Result<Identifier> {
    let kind = match name {
        GeneralName::OtherName(oid, value)
            if oid.to_id_string() == crate::der::names::OID_PERMANENT_IDENTIFIER =>
        {
            return crate::der::names::from_other_name(value)
                .map(|value| Identifier {
                    kind: IdentifierType::PermanentIdentifier,
                    value,
                })
                .map_err(|why| Error::BadCsr(format!("CSR subjectAltName otherName: {why}")));
        }
        GeneralName::DNSName(dns) => return dns_identifier(dns, "subjectAltName dNSName"),
        GeneralName::IPAddress(octets) => {
            return ip_from_octets(octets).map(Identifier::ip).ok_or_else(|| {
                Error::BadCsr(format!(
                    "subjectAltName iPAddress has {} octets: expected 4 (IPv4) or 16 (IPv6)",
                    octets.len()
                ))
            });
        }
        GeneralName::RFC822Name(_) => "rfc822Name (email)".to_owned(),
        GeneralName::URI(_) => "uniformResourceIdentifier (URI)".to_owned(),
        GeneralName::OtherName(oid, _) => format!("otherName ({})", oid.to_id_string()),
        GeneralName::DirectoryName(_) => "directoryName".to_owned(),
        GeneralName::X400Address(_) => "x400Address".to_owned(),
        GeneralName::EDIPartyName(_) => "ediPartyName".to_owned(),
        GeneralName::RegisteredID(_) => "registeredID".to_owned(),
        GeneralName::Invalid(tag, _) => format!("malformed entry (tag {})", tag.0),
    };
    Err(Error::BadCsr(format!(
        "CSR subjectAltName {kind} is not accepted: this CA certifies DNS names, IP addresses \
         and permanent identifiers (otherName PermanentIdentifier) only"
    )))
}

/// The address in an iPAddress GeneralName: 4 octets for IPv4, 16 for IPv6 (RFC 5280 §4.2.1.6).
pub(crate) fn ip_from_octets(octets: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(octets) {
        Some(IpAddr::from(v4))
    } else {
        <[u8; 16]>::try_from(octets).ok().map(IpAddr::from)
    }
}

/// The identifier a subject commonName stands for: an IP literal is `ip`, anything else `dns`.
fn identifier_from_common_name(text: &str) -> Result<Identifier> {
    match text.parse::<IpAddr>() {
        Ok(ip) => Ok(Identifier::ip(ip)),
        Err(_) => dns_identifier(text, "subject commonName"),
    }
}

/// A `dns` identifier from CSR text, lowercased. Full name syntax is checked against the order
/// (`order::normalize_identifier`); this only refuses what could never be a host name.
fn dns_identifier(text: &str, origin: &str) -> Result<Identifier> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::BadCsr(format!(
            "{origin} {text:?} is not a DNS name or IP address"
        )));
    }
    Ok(Identifier::dns(text.to_ascii_lowercase()))
}

/// The weak signature algorithm a CSR is signed with, if any: what finalize records as a
/// weak-signature attempt (`keycheck::attempts`) when `parse_and_verify` refused the CSR.
pub fn weak_signature_algorithm(der: &[u8]) -> Option<&'static str> {
    let (_, csr) = X509CertificationRequest::from_der(der).ok()?;
    weak_signature_name(&csr.signature_algorithm.algorithm.to_id_string())
}

/// The key of a CSR that may have been refused: its type, described even when the key policy
/// refuses it (e.g. "RSA 1024", "EC curve 1.3.132.0.35"), and the hex SHA-256 of its
/// SubjectPublicKeyInfo (`keycheck::spki_sha256` for an acceptable key, else of the DER as
/// sent). `None` when the CSR does not parse.
pub fn refused_key(der: &[u8]) -> Option<(String, String)> {
    let (_, csr) = X509CertificationRequest::from_der(der).ok()?;
    let spki = &csr.certification_request_info.subject_pki;
    Some(match public_key_from_spki(spki) {
        Ok(key) => (key.describe(), crate::key::spki_sha256(&key)),
        Err(_) => (
            refused_key_type(spki),
            hex::encode(ring::digest::digest(&ring::digest::SHA256, spki.raw)),
        ),
    })
}

#[cfg(test)]
mod tests {
    use crate::key::policy::parse_spki;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use rcgen::{CustomExtension, KeyPair, OtherNameValue, PublicKeyData, SanType, SigningKey};
    use tempfile::TempDir;

    use super::*;
    use crate::key::policy::{rsa_public_key, RSA_EXPONENT_F4};
    use crate::key::rsa_bits;
    use crate::testutil::{dns, openssl, openssl_csr, openssl_rsa_key, rcgen_csr};
    use crate::types::IdentifierType;

    fn bad_csr(der: &[u8]) -> String {
        match parse_and_verify(der) {
            Err(Error::BadCsr(detail)) => detail,
            other => panic!("expected badCSR, got {other:?}"),
        }
    }

    fn bad_public_key(der: &[u8]) -> String {
        match parse_and_verify(der) {
            Err(Error::BadPublicKey(detail)) => detail,
            other => panic!("expected badPublicKey, got {other:?}"),
        }
    }

    fn tmp() -> TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn accepts_p256_p384_and_ed25519() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let (key, der) = rcgen_csr(alg, Some("Dev.Example"), vec![dns("dev.example")]);
            let info = parse_and_verify(&der).expect("accepted");
            assert_eq!(info.spki_der, key.subject_public_key_info(), "{alg:?}");
            let raw = key.public_key_raw().to_vec();
            let expected = match alg {
                a if *a == rcgen::PKCS_ECDSA_P256_SHA256 => PublicKey::P256(raw),
                a if *a == rcgen::PKCS_ECDSA_P384_SHA384 => PublicKey::P384(raw),
                _ => PublicKey::Ed25519(raw),
            };
            assert_eq!(info.public_key, expected);
            assert_eq!(info.identifiers, vec![Identifier::dns("dev.example")]);
        }
    }

    #[test]
    fn accepts_rsa_2048_with_sha256_384_512() {
        let dir = tmp();
        openssl_rsa_key(dir.path(), "rsa.pem", 2048);
        for digest in ["-sha256", "-sha384", "-sha512"] {
            let der = openssl_csr(dir.path(), &["-key", "rsa.pem"], &[digest]);
            let info = parse_and_verify(&der).expect("accepted");
            let PublicKey::Rsa { n, e } = &info.public_key else {
                panic!("not RSA: {:?}", info.public_key);
            };
            assert_eq!(rsa_bits(n), 2048);
            assert_eq!(e.as_slice(), RSA_EXPONENT_F4);
            assert_eq!(info.identifiers, vec![Identifier::dns("device.example")]);
        }
    }

    #[test]
    fn refuses_sha1_and_md5_signatures_with_bad_csr() {
        let dir = tmp();
        openssl_rsa_key(dir.path(), "rsa.pem", 2048);
        let sha1 = openssl_csr(dir.path(), &["-key", "rsa.pem"], &["-sha1"]);
        assert_eq!(
            bad_csr(&sha1),
            "CSR signature algorithm sha1WithRSAEncryption is not accepted: use SHA-256 or stronger"
        );
        let md5 = openssl_csr(dir.path(), &["-key", "rsa.pem"], &["-md5"]);
        assert_eq!(
            bad_csr(&md5),
            "CSR signature algorithm md5WithRSAEncryption is not accepted: use SHA-256 or stronger"
        );
        let ecdsa_sha1 = openssl_csr(
            dir.path(),
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-keyout",
                "ec.pem",
            ],
            &["-sha1"],
        );
        assert!(bad_csr(&ecdsa_sha1).contains("ecdsa-with-SHA1 is not accepted"));
    }

    #[test]
    fn refuses_rsa_pss_and_ecdsa_sha512_with_a_clear_reason() {
        let dir = tmp();
        openssl_rsa_key(dir.path(), "rsa.pem", 2048);
        let pss = openssl_csr(
            dir.path(),
            &["-key", "rsa.pem"],
            &["-sha256", "-sigopt", "rsa_padding_mode:pss"],
        );
        assert!(bad_csr(&pss).contains("RSASSA-PSS is not supported"));
        let sha512 = openssl_csr(
            dir.path(),
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-keyout",
                "ec.pem",
            ],
            &["-sha512"],
        );
        assert!(bad_csr(&sha512).contains("ecdsa-with-SHA512 is not supported"));
    }

    #[test]
    fn refuses_small_rsa_odd_exponents_and_other_curves_with_bad_public_key() {
        let dir = tmp();
        openssl_rsa_key(dir.path(), "rsa1024.pem", 1024);
        let small = openssl_csr(dir.path(), &["-key", "rsa1024.pem"], &[]);
        assert_eq!(
            bad_public_key(&small),
            "RSA 1024-bit keys are not accepted: use RSA 2048-4096, ECDSA P-256/P-384 or Ed25519"
        );

        openssl(
            dir.path(),
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-pkeyopt",
                "rsa_keygen_pubexp:3",
                "-out",
                "rsa_e3.pem",
            ],
        );
        let e3 = openssl_csr(dir.path(), &["-key", "rsa_e3.pem"], &[]);
        assert!(bad_public_key(&e3).contains("exponent must be 65537"));

        let p521 = openssl_csr(
            dir.path(),
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-521",
                "-keyout",
                "p521.pem",
            ],
            &[],
        );
        assert!(bad_public_key(&p521).starts_with("ECDSA P-521 keys are not accepted"));
    }

    #[test]
    fn rsa_size_and_exponent_limits() {
        // Synthetic moduli: only the bit length matters to the policy.
        let modulus = |bits: usize| {
            let mut n = vec![0xff; bits.div_ceil(8)];
            if bits % 8 != 0 {
                n[0] = 0xff >> (8 - bits % 8);
            }
            // DER INTEGER content: a leading zero keeps the number positive.
            let mut der = vec![0];
            der.extend(n);
            der
        };
        let f4 = [0x01, 0x00, 0x01];
        assert!(rsa_public_key(&modulus(2048), &f4).is_ok());
        assert!(rsa_public_key(&modulus(3072), &f4).is_ok());
        assert!(rsa_public_key(&modulus(4096), &f4).is_ok());
        assert!(rsa_public_key(&modulus(2047), &f4).is_err());
        assert!(rsa_public_key(&modulus(4097), &f4).is_err());
        assert!(rsa_public_key(&modulus(2048), &[0x03]).is_err());
        assert!(rsa_public_key(&modulus(2048), &[0x00, 0x01, 0x00, 0x01]).is_ok());
        // Top bit set without a leading zero: a negative INTEGER.
        assert!(rsa_public_key(&modulus(2048)[1..], &f4).is_err());
    }

    /// A P-256 key whose advertised public point is not on the curve.
    struct OffCurveKey {
        signer: KeyPair,
        point: Vec<u8>,
    }

    impl PublicKeyData for OffCurveKey {
        fn der_bytes(&self) -> &[u8] {
            &self.point
        }

        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            &rcgen::PKCS_ECDSA_P256_SHA256
        }
    }

    impl SigningKey for OffCurveKey {
        fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
            self.signer.sign(msg)
        }
    }

    #[test]
    fn refuses_an_ec_point_that_is_not_on_the_curve() {
        let real = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut point = real.public_key_raw().to_vec();
        // Changing y by one leaves (x, y) off the curve: the only other valid y is p - y.
        if let Some(last) = point.last_mut() {
            *last ^= 1;
        }
        let compressed = [&[0x02], &point[1..33]].concat();
        let csr_with_point = |point: Vec<u8>| {
            // Signed by some real key: the point check comes before the signature check.
            let key = OffCurveKey {
                signer: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key"),
                point,
            };
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.subject_alt_names = vec![dns("dev.example")];
            params.serialize_request(&key).expect("CSR").der().to_vec()
        };
        assert_eq!(
            bad_public_key(&csr_with_point(point)),
            "EC public key is not a point on P-256"
        );
        assert!(bad_public_key(&csr_with_point(compressed)).starts_with("compressed P-256 points"));
    }

    /// An Ed25519 "key" that is the identity point, with the signature that verifies under it
    /// for every message: R = the identity, s = 0.
    struct IdentityPointKey;

    const ED25519_IDENTITY: [u8; 32] = {
        let mut e = [0u8; 32];
        e[0] = 1;
        e
    };

    impl PublicKeyData for IdentityPointKey {
        fn der_bytes(&self) -> &[u8] {
            &ED25519_IDENTITY
        }

        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            &rcgen::PKCS_ED25519
        }
    }

    impl SigningKey for IdentityPointKey {
        fn sign(&self, _msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
            Ok([ED25519_IDENTITY.as_slice(), &[0; 32]].concat())
        }
    }

    #[test]
    fn refuses_a_small_order_ed25519_key_whose_forged_signature_verifies() {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![dns("dev.example")];
        let der = params
            .serialize_request(&IdentityPointKey)
            .expect("CSR")
            .der()
            .to_vec();
        // The signature itself verifies: only the key check stands in the way.
        let (_, csr) = X509CertificationRequest::from_der(&der).expect("DER");
        let info = &csr.certification_request_info;
        assert!(ring_sig::UnparsedPublicKey::new(
            &ring_sig::ED25519,
            &info.subject_pki.subject_public_key.data
        )
        .verify(info.raw, &csr.signature_value.data)
        .is_ok());
        let detail = bad_public_key(&der);
        assert!(
            detail.starts_with("Ed25519 public key is a point of small order"),
            "{detail}"
        );
    }

    #[test]
    fn refuses_tampered_csrs() {
        let (_, der) = rcgen_csr(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            Some("dev.example"),
            vec![dns("dev.example")],
        );
        // Flip a bit in the last byte of the signature (the end of the DER).
        let mut sig = der.clone();
        if let Some(last) = sig.last_mut() {
            *last ^= 0x01;
        }
        assert!(bad_csr(&sig).contains("does not verify"));
        // Change a name inside the signed part.
        let at = der
            .windows(11)
            .position(|w| w == b"dev.example")
            .expect("name in CSR");
        let mut body = der.clone();
        body[at] = b'x';
        assert!(bad_csr(&body).contains("does not verify"));

        let (_, ed) = rcgen_csr(&rcgen::PKCS_ED25519, None, vec![dns("dev.example")]);
        let mut ed_sig = ed.clone();
        if let Some(last) = ed_sig.last_mut() {
            *last ^= 0x80;
        }
        assert!(bad_csr(&ed_sig).contains("does not verify"));
    }

    #[test]
    fn refuses_garbage_truncation_and_trailing_bytes() {
        assert!(bad_csr(b"").starts_with("CSR is not a DER PKCS#10 request"));
        assert!(bad_csr(b"definitely not a CSR").starts_with("CSR is not a DER PKCS#10 request"));
        let (_, der) = rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, None, vec![dns("a.example")]);
        assert!(bad_csr(&der[..der.len() - 1]).starts_with("CSR is not a DER PKCS#10 request"));
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(
            bad_csr(&trailing),
            "CSR has 1 trailing bytes after the DER request"
        );
        // A certificate is DER but not a CSR.
        let cert = rcgen::CertificateParams::new(vec!["a.example".to_owned()])
            .expect("params")
            .self_signed(&KeyPair::generate().expect("key"))
            .expect("cert");
        assert!(bad_csr(cert.der()).starts_with("CSR is not a DER PKCS#10 request"));
    }

    #[test]
    fn collects_cn_and_san_identifiers_sorted_and_deduplicated() {
        let (_, der) = rcgen_csr(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            Some("Device-1.Example.COM"),
            vec![
                dns("device-1.example.com"),
                dns("B.example"),
                SanType::IpAddress(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
            ],
        );
        let info = parse_and_verify(&der).expect("accepted");
        let got: Vec<(IdentifierType, &str)> = info
            .identifiers
            .iter()
            .map(|i| (i.kind, i.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (IdentifierType::Dns, "b.example"),
                (IdentifierType::Dns, "device-1.example.com"),
                (IdentifierType::Ip, "10.0.0.7"),
                // RFC 5952 canonical text.
                (IdentifierType::Ip, "2001:db8::1"),
            ]
        );
    }

    #[test]
    fn an_ip_literal_common_name_is_an_ip_identifier() {
        let (_, der) = rcgen_csr(&rcgen::PKCS_ED25519, Some("2001:DB8:0::5"), vec![]);
        let info = parse_and_verify(&der).expect("accepted");
        assert_eq!(
            info.identifiers,
            vec![Identifier::ip("2001:db8::5".parse().expect("ip"))]
        );
        let (_, der) = rcgen_csr(&rcgen::PKCS_ED25519, Some("192.0.2.10"), vec![]);
        let info = parse_and_verify(&der).expect("accepted");
        assert_eq!(
            info.identifiers,
            vec![Identifier::ip("192.0.2.10".parse().expect("ip"))]
        );
    }

    #[test]
    fn refuses_other_san_types_by_name() {
        let cases = [
            (
                SanType::Rfc822Name("ops@example.com".try_into().expect("ia5")),
                "rfc822Name (email)",
            ),
            (
                // A Microsoft UPN (1.3.6.1.4.1.311.20.2.3).
                SanType::OtherName((
                    vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
                    OtherNameValue::Utf8String("plc@plant.example".to_owned()),
                )),
                "otherName (1.3.6.1.4.1.311.20.2.3)",
            ),
        ];
        for (san, name) in cases {
            let (_, der) = rcgen_csr(
                &rcgen::PKCS_ECDSA_P256_SHA256,
                Some("dev.example"),
                vec![dns("dev.example"), san],
            );
            let detail = bad_csr(&der);
            assert!(detail.contains(name), "{detail}");
            assert!(
                detail.contains("DNS names, IP addresses and permanent identifiers"),
                "{detail}"
            );
        }
    }

    #[test]
    fn a_csr_without_identifiers_names_nothing_and_fits_only_device_orders() {
        let (_, der) = rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, None, vec![]);
        let info = parse_and_verify(&der).expect("accepted");
        assert!(info.identifiers.is_empty());
        assert!(matches_order(&[], &[device("SN1")]));
        assert!(!matches_order(&[], &[Identifier::dns("a.example")]));
        assert!(!matches_order(
            &[],
            &[Identifier::dns("a.example"), device("SN1")]
        ));
    }

    fn device(value: &str) -> Identifier {
        Identifier {
            kind: IdentifierType::PermanentIdentifier,
            value: value.to_owned(),
        }
    }

    /// A SAN extension holding `names` (GeneralName DER each), as a custom extension: rcgen
    /// writes otherName values as a bare UTF8String, which is not a PermanentIdentifier.
    fn csr_with_general_names(cn: Option<&str>, names: &[Vec<u8>]) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let san = crate::der::tlv(crate::der::SEQUENCE, &names.concat());
        params.custom_extensions = vec![CustomExtension::from_oid_content(&[2, 5, 29, 17], san)];
        params.serialize_request(&key).expect("CSR").der().to_vec()
    }

    fn permanent(value: &str) -> Vec<u8> {
        crate::der::names::PermanentId::parse(value)
            .expect("valid")
            .general_name_der()
    }

    #[test]
    fn permanent_identifiers_are_read_octet_for_octet_and_may_repeat_as_cn() {
        let dns_name = crate::der::tlv(crate::der::DNS_NAME, b"plc-9.example");
        let der = csr_with_general_names(
            Some("Sn-0001"),
            &[permanent("Sn-0001/1.3.6.1.4.1.32473"), dns_name],
        );
        let info = parse_and_verify(&der).expect("accepted");
        assert_eq!(
            info.identifiers,
            vec![
                Identifier::dns("plc-9.example"),
                device("Sn-0001/1.3.6.1.4.1.32473")
            ]
        );
        // So may the whole value, as issued certificates carry it.
        let der = csr_with_general_names(
            Some("Sn-0001/1.3.6.1.4.1.32473"),
            &[permanent("Sn-0001/1.3.6.1.4.1.32473")],
        );
        let info = parse_and_verify(&der).expect("accepted");
        assert_eq!(info.identifiers, vec![device("Sn-0001/1.3.6.1.4.1.32473")]);
        // A CN that is not the serial (here: differing in case) is a dns name as before.
        let der = csr_with_general_names(Some("SN-0001"), &[permanent("Sn-0001")]);
        let info = parse_and_verify(&der).expect("accepted");
        assert_eq!(
            info.identifiers,
            vec![Identifier::dns("sn-0001"), device("Sn-0001")]
        );
        assert!(!matches_order(&info.identifiers, &[device("Sn-0001")]));
    }

    #[test]
    fn device_orders_take_all_or_none_of_their_permanent_identifiers() {
        let a = device("SN-A");
        let b = device("SN-B");
        let d = Identifier::dns("plc.example");
        let (da, dab) = ([d.clone(), a.clone()], [d.clone(), a.clone(), b.clone()]);
        assert!(matches_order(&da, &da));
        assert!(matches_order(std::slice::from_ref(&d), &da));
        assert!(matches_order(std::slice::from_ref(&d), &dab));
        assert!(!matches_order(&da, &dab));
        assert!(!matches_order(std::slice::from_ref(&a), &da));
        assert!(!matches_order(&[d, device("sn-a")], &da));
    }

    #[test]
    fn malformed_permanent_identifiers_in_a_csr_are_bad_csr() {
        // identifierValue with a "/" cannot be an ACME value.
        let mut value = crate::der::tlv(crate::der::UTF8_STRING, b"A/B");
        value = crate::der::tlv(crate::der::SEQUENCE, &value);
        value = crate::der::tlv(crate::der::CONTEXT_0, &value);
        let mut other = crate::der::tlv(
            crate::der::OID,
            &crate::der::oid_content(&[1, 3, 6, 1, 5, 5, 7, 8, 3]),
        );
        other.extend(value);
        let name = crate::der::tlv(crate::der::CONTEXT_0, &other);
        let detail = bad_csr(&csr_with_general_names(None, &[name]));
        assert!(detail.contains("otherName"), "{detail}");
        // rcgen's bare UTF8String otherName.
        let (_, der) = rcgen_csr(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            None,
            vec![SanType::OtherName((
                vec![1, 3, 6, 1, 5, 5, 7, 8, 3],
                OtherNameValue::Utf8String("SN-0001".to_owned()),
            ))],
        );
        assert!(bad_csr(&der).contains("not a DER SEQUENCE"));
    }

    #[test]
    fn refuses_two_subject_alt_name_extensions() {
        let (key, _) = rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, None, vec![]);
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![dns("a.example")];
        // SEQUENCE { [2] "x.example" }: a second SAN extension.
        let mut second = vec![0x30, 0x0b, 0x82, 0x09];
        second.extend_from_slice(b"x.example");
        params.custom_extensions = vec![CustomExtension::from_oid_content(&[2, 5, 29, 17], second)];
        let der = params.serialize_request(&key).expect("CSR").der().to_vec();
        let detail = bad_csr(&der);
        assert!(detail.contains("more than one subjectAltName"), "{detail}");
    }

    #[test]
    fn parse_spki_applies_the_key_policy() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        assert_eq!(
            parse_spki(&key.subject_public_key_info()).expect("P-384"),
            PublicKey::P384(key.public_key_raw().to_vec())
        );
        assert!(matches!(
            parse_spki(b"\x30\x00"),
            Err(Error::BadPublicKey(_))
        ));
        let mut trailing = key.subject_public_key_info();
        trailing.push(0);
        assert!(matches!(parse_spki(&trailing), Err(Error::BadPublicKey(_))));
    }
}
