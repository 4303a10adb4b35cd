//! The key and signature algorithm policy (SPEC §7.4, §8.1): which public keys this CA
//! certifies (RSA 2048–4096 with exponent 65537, ECDSA P-256/P-384 on uncompressed points,
//! Ed25519) and which signature algorithms it verifies (SHA-256/384/512 with RSA PKCS#1 v1.5 or
//! ECDSA, and Ed25519), in CSRs and in device attestation chains alike. SHA-1 and MD5 are
//! refused by name, so an operator sees why.
//!
//! Signatures are verified with ring directly rather than through x509-parser's `verify`
//! feature, because that one accepts SHA-1 and chooses the ring algorithm itself; here the
//! policy table below is the only thing that decides.

use ring::signature::{self as ring_sig, VerificationAlgorithm};
use x509_parser::der_parser::asn1_rs::{Any, Tag};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as X509PublicKey;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use super::{rsa_bits, PublicKey};
use crate::{Error, Result};

/// The key types this CA certifies, for error details.
pub(crate) const ACCEPTED_KEYS: &str = "use RSA 2048-4096, ECDSA P-256/P-384 or Ed25519";

/// The signature algorithms this CA verifies, for error details.
pub(crate) const ACCEPTED_SIGNATURES: &str = "use sha256/384/512WithRSAEncryption, \
     ecdsa-with-SHA256/384 or Ed25519";

/// Accepted RSA modulus sizes, in bits.
pub(crate) const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// The only accepted RSA public exponent, F4 = 65537, big-endian without leading zeros.
pub(crate) const RSA_EXPONENT_F4: &[u8] = &[0x01, 0x00, 0x01];

// Object identifiers in dotted form, compared with `Oid::to_id_string`.
pub(crate) const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
pub(crate) const OID_RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
pub(crate) const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
pub(crate) const OID_ED25519: &str = "1.3.101.112";
pub(crate) const OID_ED448: &str = "1.3.101.113";
pub(crate) const OID_CURVE_P256: &str = "1.2.840.10045.3.1.7";
pub(crate) const OID_CURVE_P384: &str = "1.3.132.0.34";
pub(crate) const OID_CURVE_P521: &str = "1.3.132.0.35";

/// Parses a DER SubjectPublicKeyInfo and applies the key policy (type, curve, size, exponent).
///
/// `CertificateAuthority::issue` runs this on the key it is about to certify, so no caller can
/// get a key signed that skipped the policy. It leaves out the on-curve check: that costs an
/// ECDH, `parse_and_verify` has already done it, and the CSR signature could not have verified
/// with an invalid point anyway.
pub fn parse_spki(der: &[u8]) -> Result<PublicKey> {
    let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
        .map_err(|e| Error::BadPublicKey(format!("SubjectPublicKeyInfo is not valid DER: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::BadPublicKey(
            "SubjectPublicKeyInfo has trailing bytes".to_owned(),
        ));
    }
    public_key_from_spki(&spki)
}

/// The hash inside an accepted signature algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// A signature algorithm this CA verifies, in CSRs and in device attestation chains (`attest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignatureAlg {
    /// RSASSA-PKCS1-v1_5 (RFC 8017 §8.2).
    RsaPkcs1(Hash),
    /// ECDSA (RFC 5758 §3.2).
    Ecdsa(Hash),
    /// Ed25519 (RFC 8410).
    Ed25519,
}

impl SignatureAlg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::RsaPkcs1(Hash::Sha256) => "sha256WithRSAEncryption",
            Self::RsaPkcs1(Hash::Sha384) => "sha384WithRSAEncryption",
            Self::RsaPkcs1(Hash::Sha512) => "sha512WithRSAEncryption",
            Self::Ecdsa(Hash::Sha256) => "ecdsa-with-SHA256",
            Self::Ecdsa(Hash::Sha384) => "ecdsa-with-SHA384",
            Self::Ecdsa(Hash::Sha512) => "ecdsa-with-SHA512",
            Self::Ed25519 => "Ed25519",
        }
    }
}

/// Sorts a CSR's signature algorithm into accepted or refused (with the reason).
pub(crate) fn signature_algorithm(alg: &AlgorithmIdentifier<'_>) -> Result<SignatureAlg> {
    let oid = alg.algorithm.to_id_string();
    let accepted =
        signature_algorithm_by_oid(&oid).ok_or_else(|| refused_signature_algorithm(&oid))?;
    // RFC 4055 §5 wants NULL parameters for the RSA algorithms and says implementations MUST
    // accept them absent too; RFC 5758 §3.2 and RFC 8410 §3 want them absent for ECDSA and
    // Ed25519. The OID alone fixes the algorithm, so NULL is tolerated everywhere (some older
    // stacks write it); any real parameter is refused rather than ignored.
    if !absent_or_null(alg.parameters.as_ref()) {
        return Err(Error::BadCsr(format!(
            "CSR signature algorithm {} has unexpected parameters",
            accepted.name()
        )));
    }
    Ok(accepted)
}

/// The accepted signature algorithms by OID (dotted form); parameters are checked separately.
pub(crate) fn signature_algorithm_by_oid(oid: &str) -> Option<SignatureAlg> {
    Some(match oid {
        "1.2.840.113549.1.1.11" => SignatureAlg::RsaPkcs1(Hash::Sha256),
        "1.2.840.113549.1.1.12" => SignatureAlg::RsaPkcs1(Hash::Sha384),
        "1.2.840.113549.1.1.13" => SignatureAlg::RsaPkcs1(Hash::Sha512),
        "1.2.840.10045.4.3.2" => SignatureAlg::Ecdsa(Hash::Sha256),
        "1.2.840.10045.4.3.3" => SignatureAlg::Ecdsa(Hash::Sha384),
        OID_ED25519 => SignatureAlg::Ed25519,
        _ => return None,
    })
}

/// The name of a signature algorithm refused for its weak digest (MD2/4/5, SHA-1, SHA-224).
pub(crate) fn weak_signature_name(oid: &str) -> Option<&'static str> {
    // Digests older or shorter than SHA-256: collisions are practical for MD5 and SHA-1, and
    // OPC UA's SHA-1 policies were deprecated for that reason.
    match oid {
        "1.2.840.113549.1.1.2" => Some("md2WithRSAEncryption"),
        "1.2.840.113549.1.1.3" => Some("md4WithRSAEncryption"),
        "1.2.840.113549.1.1.4" => Some("md5WithRSAEncryption"),
        "1.2.840.113549.1.1.5" => Some("sha1WithRSAEncryption"),
        "1.2.840.113549.1.1.14" => Some("sha224WithRSAEncryption"),
        "1.3.14.3.2.3" => Some("md5WithRSA"),
        "1.3.14.3.2.29" => Some("sha1WithRSASignature"),
        "1.2.840.10045.4.1" => Some("ecdsa-with-SHA1"),
        "1.2.840.10045.4.3.1" => Some("ecdsa-with-SHA224"),
        "1.2.840.10040.4.3" => Some("dsa-with-sha1"),
        _ => None,
    }
}

/// The type of a key already certified, e.g. "ECDSA P-256" (for the operator's `audit`),
/// described even if today's key policy would refuse it.
pub fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> String {
    public_key_from_spki(spki).map_or_else(|_| refused_key_type(spki), |key| key.describe())
}

/// Describes a key the key policy refused.
pub(crate) fn refused_key_type(spki: &SubjectPublicKeyInfo<'_>) -> String {
    match (
        spki.algorithm.algorithm.to_id_string().as_str(),
        spki.parsed(),
    ) {
        (OID_RSA_ENCRYPTION, Ok(X509PublicKey::RSA(rsa))) => {
            format!("RSA {}", rsa_bits(rsa.modulus))
        }
        (OID_EC_PUBLIC_KEY, _) => match spki.algorithm.parameters.as_ref().map(Any::as_oid) {
            Some(Ok(curve)) if curve.to_id_string() == OID_CURVE_P521 => "ECDSA P-521".to_owned(),
            Some(Ok(curve)) => format!("EC curve {}", curve.to_id_string()),
            _ => "EC (no named curve)".to_owned(),
        },
        (OID_ED448, _) => "Ed448".to_owned(),
        (OID_RSASSA_PSS, _) => "RSASSA-PSS".to_owned(),
        (other, _) => format!("key algorithm {other}"),
    }
}

/// The error for a signature algorithm that is not in the accepted table.
pub(crate) fn refused_signature_algorithm(oid: &str) -> Error {
    if let Some(name) = weak_signature_name(oid) {
        return Error::BadCsr(format!(
            "CSR signature algorithm {name} is not accepted: use SHA-256 or stronger"
        ));
    }
    Error::BadCsr(match oid {
        OID_RSASSA_PSS => "CSR signature algorithm RSASSA-PSS is not supported: sign the CSR \
                           with sha256WithRSAEncryption (PKCS#1 v1.5)"
            .to_owned(),
        // ring has no ECDSA verifier with SHA-512, and no common client picks it for P-256
        // or P-384.
        "1.2.840.10045.4.3.4" => "CSR signature algorithm ecdsa-with-SHA512 is not supported: \
                                  sign the CSR with ecdsa-with-SHA256 or ecdsa-with-SHA384"
            .to_owned(),
        OID_ED448 => {
            format!("CSR signature algorithm Ed448 is not supported: {ACCEPTED_SIGNATURES}")
        }
        other => format!("CSR signature algorithm {other} is not supported: {ACCEPTED_SIGNATURES}"),
    })
}

/// The ring verifier for a signature algorithm and the key it must be used with.
pub(crate) fn verification_algorithm(
    alg: SignatureAlg,
    key: &PublicKey,
) -> Result<&'static dyn VerificationAlgorithm> {
    ring_verifier(alg, key).ok_or_else(|| {
        Error::BadCsr(format!(
            "CSR is signed with {} but its key is {}",
            alg.name(),
            key.describe()
        ))
    })
}

/// The ring verifier for a signature algorithm used with `key`, if the two fit together.
pub(crate) fn ring_verifier(
    alg: SignatureAlg,
    key: &PublicKey,
) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match (alg, key) {
        // ring's own lower bound (2048) equals ours, and its upper bound (8192) is above ours.
        (SignatureAlg::RsaPkcs1(Hash::Sha256), PublicKey::Rsa { .. }) => {
            &ring_sig::RSA_PKCS1_2048_8192_SHA256
        }
        (SignatureAlg::RsaPkcs1(Hash::Sha384), PublicKey::Rsa { .. }) => {
            &ring_sig::RSA_PKCS1_2048_8192_SHA384
        }
        (SignatureAlg::RsaPkcs1(Hash::Sha512), PublicKey::Rsa { .. }) => {
            &ring_sig::RSA_PKCS1_2048_8192_SHA512
        }
        (SignatureAlg::Ecdsa(Hash::Sha256), PublicKey::P256(_)) => {
            &ring_sig::ECDSA_P256_SHA256_ASN1
        }
        (SignatureAlg::Ecdsa(Hash::Sha384), PublicKey::P256(_)) => {
            &ring_sig::ECDSA_P256_SHA384_ASN1
        }
        (SignatureAlg::Ecdsa(Hash::Sha256), PublicKey::P384(_)) => {
            &ring_sig::ECDSA_P384_SHA256_ASN1
        }
        (SignatureAlg::Ecdsa(Hash::Sha384), PublicKey::P384(_)) => {
            &ring_sig::ECDSA_P384_SHA384_ASN1
        }
        (SignatureAlg::Ed25519, PublicKey::Ed25519(_)) => &ring_sig::ED25519,
        _ => return None,
    })
}

/// True if an AlgorithmIdentifier's parameters are absent or an ASN.1 NULL.
pub(crate) fn absent_or_null(params: Option<&Any<'_>>) -> bool {
    params.is_none_or(is_null)
}

pub(crate) fn is_null(value: &Any<'_>) -> bool {
    value.tag() == Tag::Null && value.data.is_empty()
}

/// Applies the key policy to a parsed SubjectPublicKeyInfo.
pub(crate) fn public_key_from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<PublicKey> {
    if spki.subject_public_key.unused_bits != 0 {
        return Err(Error::BadPublicKey(
            "subjectPublicKey BIT STRING has unused bits".to_owned(),
        ));
    }
    let key_bytes: &[u8] = &spki.subject_public_key.data;
    let params = spki.algorithm.parameters.as_ref();
    match spki.algorithm.algorithm.to_id_string().as_str() {
        OID_RSA_ENCRYPTION => {
            // > The rsaEncryption OID is intended to be used in the algorithm field of a value
            // > of type AlgorithmIdentifier.  The parameters field MUST have ASN.1 type NULL
            // > for this algorithm identifier.
            // <https://www.rfc-editor.org/rfc/rfc3279#section-2.3.1>
            if !params.is_some_and(is_null) {
                return Err(Error::BadPublicKey(
                    "rsaEncryption key parameters must be NULL (RFC 3279 §2.3.1)".to_owned(),
                ));
            }
            match spki.parsed() {
                Ok(X509PublicKey::RSA(rsa)) => rsa_public_key(rsa.modulus, rsa.exponent),
                _ => Err(Error::BadPublicKey(
                    "RSA public key is not a DER RSAPublicKey".to_owned(),
                )),
            }
        }
        OID_EC_PUBLIC_KEY => {
            // RFC 5480 §2.1.1: only namedCurve is allowed in PKIX; explicit curve parameters
            // would let a client pick its own (weak) curve.
            let curve = params
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string())
                .ok_or_else(|| {
                    Error::BadPublicKey(format!(
                        "EC keys must name their curve (namedCurve): {ACCEPTED_KEYS}"
                    ))
                })?;
            match curve.as_str() {
                OID_CURVE_P256 => {
                    uncompressed_point("P-256", 65, key_bytes)?;
                    Ok(PublicKey::P256(key_bytes.to_vec()))
                }
                OID_CURVE_P384 => {
                    uncompressed_point("P-384", 97, key_bytes)?;
                    Ok(PublicKey::P384(key_bytes.to_vec()))
                }
                OID_CURVE_P521 => Err(Error::BadPublicKey(format!(
                    "ECDSA P-521 keys are not accepted: {ACCEPTED_KEYS}"
                ))),
                other => Err(Error::BadPublicKey(format!(
                    "EC keys on curve {other} are not accepted: {ACCEPTED_KEYS}"
                ))),
            }
        }
        OID_ED25519 => {
            // > For all of the OIDs, the parameters MUST be absent.
            // <https://www.rfc-editor.org/rfc/rfc8410#section-3>
            if params.is_some() {
                return Err(Error::BadPublicKey(
                    "Ed25519 key algorithm parameters must be absent (RFC 8410 §3)".to_owned(),
                ));
            }
            if key_bytes.len() != 32 {
                return Err(Error::BadPublicKey(format!(
                    "Ed25519 public key is {} bytes, not 32",
                    key_bytes.len()
                )));
            }
            Ok(PublicKey::Ed25519(key_bytes.to_vec()))
        }
        OID_RSASSA_PSS => Err(Error::BadPublicKey(format!(
            "RSASSA-PSS-only keys (id-RSASSA-PSS) are not accepted: {ACCEPTED_KEYS}"
        ))),
        OID_ED448 => Err(Error::BadPublicKey(format!(
            "Ed448 keys are not accepted: {ACCEPTED_KEYS}"
        ))),
        other => Err(Error::BadPublicKey(format!(
            "public key algorithm {other} is not accepted: {ACCEPTED_KEYS}"
        ))),
    }
}

/// RSA key policy: modulus size and exponent. `n` and `e` are DER INTEGER contents.
pub(crate) fn rsa_public_key(n: &[u8], e: &[u8]) -> Result<PublicKey> {
    // A set top bit without a leading zero octet makes a DER INTEGER negative.
    if n.first().is_none_or(|b| b & 0x80 != 0) || e.first().is_none_or(|b| b & 0x80 != 0) {
        return Err(Error::BadPublicKey(
            "RSA modulus and exponent must be positive integers".to_owned(),
        ));
    }
    let bits = rsa_bits(n);
    if !RSA_BITS.contains(&bits) {
        return Err(Error::BadPublicKey(format!(
            "RSA {bits}-bit keys are not accepted: {ACCEPTED_KEYS}"
        )));
    }
    let key = PublicKey::rsa(n, e);
    if let PublicKey::Rsa { e, .. } = &key {
        // Small exponents have a history of padding attacks, and very large ones are only
        // seen in broken generators; everything mainstream uses F4.
        if e.as_slice() != RSA_EXPONENT_F4 {
            return Err(Error::BadPublicKey(format!(
                "RSA keys with public exponent 0x{} are not accepted: the exponent must be 65537",
                hex::encode(e)
            )));
        }
    }
    Ok(key)
}

/// Checks that `point` has the form of an uncompressed SEC1 point of `len` bytes.
pub(crate) fn uncompressed_point(curve: &str, len: usize, point: &[u8]) -> Result<()> {
    if matches!(point.first(), Some(0x02 | 0x03)) {
        return Err(Error::BadPublicKey(format!(
            "compressed {curve} points are not accepted: send the uncompressed form"
        )));
    }
    if point.len() != len || point.first() != Some(&0x04) {
        return Err(Error::BadPublicKey(format!(
            "EC public key is not an uncompressed {curve} point"
        )));
    }
    Ok(())
}
