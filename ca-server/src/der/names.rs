//! The `permanent-identifier` identifier type (SPEC §4.5; draft-ietf-acme-device-attest §3) and
//! its X.509 form, otherName PermanentIdentifier (RFC 4043).
//!
//! Values are compared octet for octet and never normalised: serial numbering schemes may be
//! case-sensitive, and the certificate must carry exactly what was proven.

use crate::der::{self, DerError};

/// `id-on-permanentIdentifier` (RFC 4043 §3).
pub const OID_PERMANENT_IDENTIFIER: &str = "1.3.6.1.5.5.7.8.3";
/// `id-on-hardwareModuleName` (RFC 4108 §5).
pub const OID_HARDWARE_MODULE_NAME: &str = "1.3.6.1.5.5.7.8.4";

const OID_PERMANENT_IDENTIFIER_ARCS: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 8, 3];

/// Longest serial and assigner this CA certifies, in octets (SPEC §4.5).
pub use protocol_spec::identifier::{ASSIGNER_MAX, SERIAL_MAX};

/// Why a value is refused, and as which problem type (SPEC §4.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The value breaks the draft's ABNF: `malformed`.
    Malformed(String),
    /// The value is well-formed but against this CA's policy: `rejectedIdentifier`.
    Rejected(String),
}

impl Refusal {
    /// The explanation.
    pub fn detail(&self) -> &str {
        match self {
            Self::Malformed(d) | Self::Rejected(d) => d,
        }
    }
}

/// A `permanent-identifier` value split into its parts: `serial["/"assignerOID]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermanentId<'a> {
    /// The device identifier (serial number): identifierValue in the certificate.
    pub serial: &'a str,
    /// The assigner OID in dotted-decimal form, if given: assigner in the certificate.
    pub assigner: Option<&'a str>,
    arcs: Vec<u64>,
}

impl<'a> PermanentId<'a> {
    /// Splits and checks a value (SPEC §4.5):
    ///
    /// ```text
    /// permanent-identifier-value = device-identifier-value ["/" assigner-value]
    /// device-identifier-value    = 1*(%x00-2E / %x30-FF)
    /// assigner-value             = first-and-second-components *("." component)
    /// first-and-second-components = (("0" / "1") "." (*1(%x31-33) %x30-39))
    ///                               / ("2" "." component)
    /// component                  = "0" / (%x31-39 *%x30-39)
    /// ```
    ///
    /// Breaking the grammar is `Malformed`. Control characters, a serial over
    /// [`SERIAL_MAX`] octets, and an assigner too long or with an arc beyond 64 bits are
    /// `Rejected`: well-formed, but not certified by this CA.
    ///
    /// <https://datatracker.ietf.org/doc/html/draft-ietf-acme-device-attest#section-3.1>
    pub fn parse(value: &'a str) -> Result<Self, Refusal> {
        use protocol_spec::identifier::{check_permanent_identifier, oid_arc, IdentifierError};
        let parts = check_permanent_identifier(value).map_err(|e| {
            let detail = format!("permanent-identifier {value:?}: {}", e.reason().explain());
            match e {
                IdentifierError::Malformed(_) => Refusal::Malformed(detail),
                IdentifierError::Rejected(_) => Refusal::Rejected(detail),
            }
        })?;
        // The shared check has proven every arc a dotted-decimal number that fits 64 bits.
        let arcs = parts
            .assigner
            .map(|a| {
                a.split('.')
                    .filter_map(|arc| oid_arc(arc.as_bytes()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            serial: parts.serial,
            assigner: parts.assigner,
            arcs,
        })
    }

    /// GeneralName `[0] otherName` holding this identifier as a PermanentIdentifier, for a
    /// subjectAltName (RFC 4043 §2; draft-ietf-acme-device-attest §3.2):
    ///
    /// ```text
    /// PermanentIdentifier ::= SEQUENCE {
    ///     identifierValue    UTF8String             OPTIONAL,
    ///     assigner           OBJECT IDENTIFIER      OPTIONAL }
    /// ```
    ///
    /// identifierValue is always present and carries the serial octet for octet; assigner is
    /// present exactly when the identifier has one.
    pub fn general_name_der(&self) -> Vec<u8> {
        let mut fields = der::tlv(der::UTF8_STRING, self.serial.as_bytes());
        if self.assigner.is_some() {
            der::write(&mut fields, der::OID, &der::oid_content(&self.arcs));
        }
        let value = der::tlv(der::SEQUENCE, &fields);
        let mut other_name = der::tlv(der::OID, &der::oid_content(&OID_PERMANENT_IDENTIFIER_ARCS));
        der::write(&mut other_name, der::CONTEXT_0, &value);
        der::tlv(der::CONTEXT_0, &other_name)
    }
}

/// Checks an assigner OID as [`PermanentId::parse`] does (the grammar, 64-bit arcs, length),
/// for configuration such as a trust anchor's assigner.
pub fn check_assigner(text: &str) -> Result<(), DerError> {
    PermanentId::parse(&format!("x/{text}"))
        .map(|_| ())
        .map_err(|r| {
            DerError(match r {
                Refusal::Malformed(_) => {
                    format!("{text:?} is not a dotted-decimal OID such as 1.3.6.1.4.1.32473")
                }
                Refusal::Rejected(d) => d,
            })
        })
}

/// The identifier value (`serial["/"oid]`) carried by an otherName PermanentIdentifier whose
/// `[0] EXPLICIT` value is `explicit_value` (what x509-parser hands over after the type-id).
///
/// Per draft-ietf-acme-device-attest §3.2 identifierValue MUST be present; the value must also
/// be a valid `permanent-identifier` (no "/" in the serial, and so on).
pub fn from_other_name(explicit_value: &[u8]) -> Result<String, DerError> {
    let seq = der::read_only(explicit_value, der::CONTEXT_0)
        .and_then(|inner| der::read_only(inner, der::SEQUENCE))
        .ok_or_else(|| {
            DerError("PermanentIdentifier is not a DER SEQUENCE in an explicit [0] tag".to_owned())
        })?;
    let (first, rest) = der::read(seq)
        .ok_or_else(|| DerError("PermanentIdentifier is not valid DER".to_owned()))?;
    if first.tag != der::UTF8_STRING {
        return Err(DerError(
            "PermanentIdentifier has no identifierValue (UTF8String)".to_owned(),
        ));
    }
    let serial = std::str::from_utf8(first.content)
        .map_err(|_| DerError("PermanentIdentifier identifierValue is not UTF-8".to_owned()))?;
    let value = match rest {
        [] => serial.to_owned(),
        _ => {
            let oid = der::read_only(rest, der::OID)
                .and_then(der::oid_text)
                .ok_or_else(|| {
                    DerError(
                        "PermanentIdentifier assigner is not a single valid OBJECT IDENTIFIER"
                            .to_owned(),
                    )
                })?;
            format!("{serial}/{oid}")
        }
    };
    PermanentId::parse(&value).map_err(|r| DerError(r.detail().to_owned()))?;
    Ok(value)
}

/// `(hwType, hwSerialNum)` of an otherName HardwareModuleName (RFC 4108 §5), given its
/// `[0] EXPLICIT` value:
///
/// ```text
/// HardwareModuleName ::= SEQUENCE {
///     hwType OBJECT IDENTIFIER,
///     hwSerialNum OCTET STRING }
/// ```
pub fn hardware_module_name(explicit_value: &[u8]) -> Option<(String, &[u8])> {
    let seq = der::read_only(explicit_value, der::CONTEXT_0)
        .and_then(|inner| der::read_only(inner, der::SEQUENCE))?;
    let (kind, rest) = der::read(seq)?;
    if kind.tag != der::OID {
        return None;
    }
    let serial = der::read_only(rest, der::OCTET_STRING)?;
    Some((der::oid_text(kind.content)?, serial))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn malformed(v: &str) -> bool {
        matches!(PermanentId::parse(v), Err(Refusal::Malformed(_)))
    }

    fn rejected(v: &str) -> bool {
        matches!(PermanentId::parse(v), Err(Refusal::Rejected(_)))
    }

    #[test]
    fn values_split_into_serial_and_assigner() {
        let id = PermanentId::parse("ABCDEF123456/1.2.3.4").expect("valid");
        assert_eq!(id.serial, "ABCDEF123456");
        assert_eq!(id.assigner, Some("1.2.3.4"));
        let id = PermanentId::parse("sn 0001-ä").expect("valid");
        assert_eq!((id.serial, id.assigner), ("sn 0001-ä", None));
        for ok in ["0.39", "1.0", "2.999", "2.0.1", "1.3.6.1.4.1.32473"] {
            assert!(PermanentId::parse(&format!("X/{ok}")).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_grammar_is_enforced() {
        for bad in [
            "", "/1.2", "A/", "A/1", "A/3.1", "A/0.40", "A/1.100", "A/01.2", "A/1.02", "A/1..2",
            "A/1.2.", "A/.1.2", "A/1.2/3", "A/B/1.2", "A/1.2 ", "A/x.y", "A/+1.2",
        ] {
            assert!(malformed(bad), "{bad:?}");
        }
    }

    #[test]
    fn policy_refusals_are_rejected_identifier() {
        assert!(rejected("SN\u{0}1"));
        assert!(rejected("SN\n1"));
        assert!(rejected("SN\u{7f}"));
        assert!(rejected(&"x".repeat(SERIAL_MAX + 1)));
        assert!(PermanentId::parse(&"x".repeat(SERIAL_MAX)).is_ok());
        assert!(rejected("A/1.3.18446744073709551616"));
        assert!(rejected("A/2.18446744073709551600"));
        assert!(PermanentId::parse("A/1.3.18446744073709551615").is_ok());
    }

    #[test]
    fn general_name_encodes_rfc4043() {
        let id = PermanentId::parse("SN1/1.2.3").expect("valid");
        // [0] { OID 1.3.6.1.5.5.7.8.3, [0] { SEQUENCE { UTF8String "SN1", OID 1.2.3 } } }
        assert_eq!(
            hex::encode(id.general_name_der()),
            "a01706082b06010505070803a00b30090c03534e3106022a03"
        );
        let der = id.general_name_der();
        let (outer, rest) = der::read(&der).expect("TLV");
        assert!(rest.is_empty());
        assert_eq!(outer.tag, der::CONTEXT_0);
        let (oid, value) = der::read(outer.content).expect("type-id");
        assert_eq!(oid.tag, der::OID);
        assert_eq!(
            der::oid_text(oid.content).as_deref(),
            Some(OID_PERMANENT_IDENTIFIER)
        );
        assert_eq!(from_other_name(value).as_deref(), Ok("SN1/1.2.3"));
        let plain = PermanentId::parse("SN1").expect("valid").general_name_der();
        let (outer, _) = der::read(&plain).expect("TLV");
        let (_, value) = der::read(outer.content).expect("type-id");
        assert_eq!(hex::encode(value), "a00730050c03534e31");
    }

    #[test]
    fn other_names_without_identifier_value_or_with_bad_serials_are_refused() {
        // [0] { SEQUENCE { OID 1.2.3 } }: assigner only.
        assert!(from_other_name(&[0xa0, 0x06, 0x30, 0x04, 0x06, 0x02, 0x2a, 0x03]).is_err());
        // identifierValue "A/B" would make an ambiguous ACME value.
        let mut v = der::tlv(der::UTF8_STRING, b"A/B");
        v = der::tlv(der::SEQUENCE, &v);
        assert!(from_other_name(&der::tlv(der::CONTEXT_0, &v)).is_err());
        // A bare UTF8String, as rcgen writes otherNames, is not a PermanentIdentifier.
        let bare = der::tlv(der::CONTEXT_0, &der::tlv(der::UTF8_STRING, b"SN1"));
        assert!(from_other_name(&bare).is_err());
    }
}
