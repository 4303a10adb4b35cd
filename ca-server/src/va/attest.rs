//! device-attest-01 (draft-ietf-acme-device-attest §5) with IEEE 802.1AR IDevID attestations:
//! enrollment path 1 of SPEC §5.10, "manufacturer identity".
//!
//! A device orders a `permanent-identifier` (its serial number, SPEC §4.5) and answers the
//! challenge with an attestation object (SPEC §5.10.2) whose statement carries its IDevID chain
//! and a signature by the IDevID key over the challenge's key authorization. The CA accepts it
//! when the chain leads to a manufacturer trust anchor the operator configured ([`anchors`]),
//! the IDevID names exactly the ordered serial, the identifier carries that anchor's assigner
//! (serials are unique only per manufacturer), the anchor accepts the IDevID's hardware type
//! if it names one, and the signature verifies (SPEC §5.10.3).
//!
//! | module         | what                                                        |
//! |----------------|-------------------------------------------------------------|
//! | [`object`]     | the CBOR attestation object, format `iiot-idevid`           |
//! | [`anchors`]    | manufacturer trust anchors: files, or the shared store       |
//! | `chain`        | the certification path from the IDevID to an anchor         |
//!
//! The `permanent-identifier` otherName forms are in [`crate::der::names`]; the key and
//! signature algorithms it accepts are [`crate::key::policy`]'s.
//!
//! What a success proves, and what it does not, is in SPEC §10.8: possession of a
//! manufacturer-issued IDevID key at enrollment time, bound to the ACME account by the key
//! authorization. It does not prove the device is uncompromised, and the certificate key
//! (from the CSR) is not attested.

pub mod anchors;
mod chain;
pub mod object;

use ring::signature::{self as ring_sig, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::Value;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::der::names::PermanentId;
use crate::key::PublicKey;
use crate::types::{Identifier, IdentifierType};
use crate::{Error, Result};
use anchors::{TrustAnchor, TrustAnchorStore};
use object::{COSE_ES256, COSE_ES384, COSE_RS256};

/// `id-at-serialNumber` (X.520), where 802.1AR and RFC 8995 §2.3.1 put the device serial.
const OID_AT_SERIAL_NUMBER: &str = "2.5.4.5";

/// What a verified attestation established, for the log and the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attested {
    /// The trust anchor the IDevID chain leads to.
    pub anchor: String,
    /// The IDevID's subject.
    pub idevid_subject: String,
    /// Where the serial was found: `"subject serialNumber"` or `"hardwareModuleName"`.
    pub serial_source: &'static str,
}

/// Verifies a device-attest-01 challenge response (`payload`, the JWS payload object) for
/// `identifier` (SPEC §5.10.3), with the trust anchors `anchors` holds now; `enabled` is
/// `[enrollment] device_attestation`. Every failure is `badAttestationStatement` with a detail
/// naming what did not match.
pub fn verify(
    enabled: bool,
    anchors: &TrustAnchorStore,
    identifier: &Identifier,
    _token: &str,
    key_authorization: &str,
    payload: &Value,
) -> Result<()> {
    let bad = Error::BadAttestationStatement;
    if !enabled {
        return Err(bad(
            "device attestation has been turned off on this CA".to_owned()
        ));
    }
    // > Clients MAY include additional fields beyond attObj in the response object.  Servers
    // > MUST ignore unrecognized fields in the challenge response.
    // <https://datatracker.ietf.org/doc/html/draft-ietf-acme-device-attest#section-5>
    let encoded = payload.get("attObj").and_then(Value::as_str).ok_or_else(|| {
        bad("the challenge response has no \"attObj\" string: send {\"attObj\": base64url(CBOR attestation object)}".to_owned())
    })?;
    let att_obj = crate::wire::b64u_decode("attObj", encoded).map_err(|e| {
        bad(match e {
            Error::Malformed(d) => d,
            other => other.to_string(),
        })
    })?;
    let anchors = anchors.load()?;
    let outcome = verify_attestation(
        &att_obj,
        identifier,
        key_authorization,
        &anchors,
        crate::types::now(),
    );
    match &outcome {
        Ok(a) => tracing::info!(
            identifier = %identifier, anchor = %a.anchor, idevid = %a.idevid_subject,
            serial_source = a.serial_source, "device attestation verified"
        ),
        // At info, not debug like other client mistakes: a refused device is what an operator
        // comes to the log for, and the detail says which manufacturer or serial was wrong.
        Err(e) => {
            tracing::info!(identifier = %identifier, error = %e, "device attestation refused")
        }
    }
    outcome.map(|_| ())
}

/// The checks of SPEC §5.10.3 on a decoded `attObj`, against `anchors`, at `now` (Unix
/// seconds): everything [`verify`] does apart from reading the request and the configuration.
/// The shared vectors (`device_attest.json`) run through this.
pub fn verify_attestation(
    att_obj: &[u8],
    identifier: &Identifier,
    key_authorization: &str,
    anchors: &[TrustAnchor],
    now: i64,
) -> Result<Attested> {
    let bad = Error::BadAttestationStatement;
    if identifier.kind != IdentifierType::PermanentIdentifier {
        return Err(bad(format!(
            "device-attest-01 proves permanent-identifier identifiers only, not {identifier}"
        )));
    }
    let ordered = PermanentId::parse(&identifier.value)
        .map_err(|r| bad(format!("ordered identifier: {}", r.detail())))?;

    // Checks 2-5: the object, its format and statement.
    let obj = object::decode(att_obj)?;
    // Checks 6-8: the chain to a configured anchor, valid now.
    let path = chain::build(&obj.x5c, anchors, now)?;
    let idevid = &path.idevid;
    let anchor = path.anchor;
    let modules = hardware_modules(idevid)?;

    // Check 9: the serial, octet for octet.
    let (source, serial) = idevid_serial(idevid, &modules)?;
    if serial != ordered.serial.as_bytes() {
        return Err(bad(format!(
            "IDevID serial {} ({source}) does not match the ordered identifier {:?}",
            show(serial),
            ordered.serial
        )));
    }
    // Check 10: the identifier names the assigner of the anchor that vouched for the serial.
    // A serial is unique only per manufacturer, so a bare serial, or another manufacturer's
    // assigner, would let this device take another manufacturer's device's identity.
    let wanted = format!("{}/{}", ordered.serial, anchor.assigner);
    match ordered.assigner {
        Some(assigner) if assigner == anchor.assigner => {}
        Some(assigner) => {
            return Err(bad(format!(
                "the ordered identifier names assigner {assigner}, but the IDevID chain leads \
                 to trust anchor {:?}, whose assigner is {}: order {wanted:?}",
                anchor.name, anchor.assigner
            )))
        }
        None => {
            return Err(bad(format!(
                "device-attest-01 proves a serial qualified by its manufacturer's assigner, and \
                 the ordered identifier {:?} has none: the IDevID chain leads to trust anchor \
                 {:?}, whose assigner is {}, so order {wanted:?}",
                identifier.value, anchor.name, anchor.assigner
            )))
        }
    }
    // Check 11: every hardware type the IDevID names is one the anchor accepts. RFC 4108
    // serials are unique only per hwType, so a manufacturer's other product lines stay out
    // until the operator accepts them.
    for (hw_type, _) in &modules {
        if !anchor.hw_types.iter().any(|t| t == hw_type) {
            return Err(bad(format!(
                "the IDevID's hardwareModuleName has hwType {hw_type}, which trust anchor {:?} \
                 does not accept (accepted: {}); the operator accepts it by adding the anchor \
                 again: ca-server trust-anchor add --name {} --assigner {}{} --hw-type \
                 {hw_type} FILE",
                anchor.name,
                anchor.describe_hw_types(),
                anchor.name,
                anchor.assigner,
                anchor
                    .hw_types
                    .iter()
                    .map(|t| format!(" --hw-type {t}"))
                    .collect::<String>(),
            )));
        }
    }

    // Check 12: the IDevID key signed this challenge's key authorization.
    let key = crate::key::policy::public_key_from_spki(idevid.public_key()).map_err(|e| {
        bad(format!(
            "the IDevID key is not accepted: {}",
            e.to_problem().detail
        ))
    })?;
    let verifier = signature_verifier(obj.alg, &key).ok_or_else(|| {
        bad(format!(
            "attStmt alg {} ({}) does not fit the IDevID key ({})",
            obj.alg,
            object::alg_name(obj.alg),
            key.describe()
        ))
    })?;
    UnparsedPublicKey::new(verifier, &idevid.public_key().subject_public_key.data)
        .verify(key_authorization.as_bytes(), obj.sig)
        .map_err(|_| {
            bad(
                "signature does not verify over this challenge's key authorization: the \
                 attestation was made for another challenge or account, or by another key"
                    .to_owned(),
            )
        })?;

    Ok(Attested {
        anchor: anchor.name.clone(),
        idevid_subject: idevid.subject().to_string(),
        serial_source: source,
    })
}

/// The COSE algorithm's verifier for `key`, if they fit: ECDSA signatures are ASN.1 DER
/// `Ecdsa-Sig-Value`, as in WebAuthn packed attestation (WebAuthn §6.5.6).
fn signature_verifier(alg: i64, key: &PublicKey) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match (alg, key) {
        (COSE_ES256, PublicKey::P256(_)) => &ring_sig::ECDSA_P256_SHA256_ASN1,
        (COSE_ES384, PublicKey::P384(_)) => &ring_sig::ECDSA_P384_SHA384_ASN1,
        (COSE_RS256, PublicKey::Rsa { .. }) => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        _ => return None,
    })
}

/// The `(hwType, hwSerialNum)` of every subjectAltName otherName hardwareModuleName
/// (RFC 4108 §5) of the IDevID, in order. A malformed one is refused: its serial and type could
/// not be checked.
fn hardware_modules<'c>(cert: &'c X509Certificate<'c>) -> Result<Vec<(String, &'c [u8])>> {
    let mut modules = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::OtherName(oid, value) = name {
                if oid.to_id_string() == crate::der::names::OID_HARDWARE_MODULE_NAME {
                    modules.push(crate::der::names::hardware_module_name(value).ok_or_else(
                        || {
                            Error::BadAttestationStatement(format!(
                                "the IDevID ({}) has a malformed hardwareModuleName",
                                cert.subject()
                            ))
                        },
                    )?);
                }
            }
        }
    }
    Ok(modules)
}

/// The IDevID's serial number and where it was found (SPEC §5.10.3 check 9): the subject
/// serialNumber attribute (IEEE 802.1AR; RFC 8995 §2.3.1) if there is one, otherwise the
/// hwSerialNum of its hardwareModuleName (`modules`, RFC 4108 §5). More than one value in the
/// deciding place is ambiguous and refused.
fn idevid_serial<'c>(
    cert: &'c X509Certificate<'c>,
    modules: &[(String, &'c [u8])],
) -> Result<(&'static str, &'c [u8])> {
    let mut attributes = Vec::new();
    for rdn in cert.subject().iter() {
        for atv in rdn.iter() {
            if atv.attr_type().to_id_string() == OID_AT_SERIAL_NUMBER {
                // The string's content octets, whatever its string type (PrintableString per
                // X.520, UTF8String in some IDevIDs), so the comparison is octet for octet.
                attributes.push(atv.attr_value().data.as_ref());
            }
        }
    }
    match attributes.as_slice() {
        [one] => return Ok(("subject serialNumber", one)),
        [] => {}
        _ => {
            return Err(Error::BadAttestationStatement(format!(
                "the IDevID ({}) has {} serialNumber attributes; which one is the device serial \
                 is ambiguous",
                cert.subject(),
                attributes.len()
            )))
        }
    }
    match modules {
        [(_, serial)] => Ok(("hardwareModuleName", serial)),
        [] => Err(Error::BadAttestationStatement(format!(
            "the IDevID ({}) carries no serial number: expected a subject serialNumber attribute \
             (2.5.4.5) or a subjectAltName otherName hardwareModuleName (1.3.6.1.5.5.7.8.4)",
            cert.subject()
        ))),
        more => Err(Error::BadAttestationStatement(format!(
            "the IDevID ({}) has {} hardwareModuleName entries; which one is the device serial \
             is ambiguous",
            cert.subject(),
            more.len()
        ))),
    }
}

/// A serial for a problem detail: quoted text if UTF-8, hex otherwise.
fn show(serial: &[u8]) -> String {
    match std::str::from_utf8(serial) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("0x{}", hex::encode(serial)),
    }
}
