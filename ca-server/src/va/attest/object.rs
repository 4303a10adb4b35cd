//! The attestation object of SPEC §5.10.2: a CBOR map in the shape of a WebAuthn attestation
//! object (WebAuthn §6.5.4), as draft-ietf-acme-device-attest §5 borrows it, with the
//! `iiot-idevid` statement format.
//!
//! ```text
//! attObj = {
//!   "fmt": "iiot-idevid",
//!   "attStmt": {
//!     "alg": -7 / -35 / -257,          ; COSE algorithm of sig
//!     "sig": bstr,                     ; over attToBeSigned = the key authorization
//!     "x5c": [ 1*5 bstr ]              ; IDevID DER first, then its issuers
//!   },
//!   ? "authData": h''                  ; SHOULD be omitted (draft §5); empty if present
//! }
//! ```
//!
//! Decoding is strict: definite lengths only, text keys, no duplicate or unknown keys, no bytes
//! after the map. Key order is free (CTAP2 canonical order is what
//! `protocol_spec::attestation::encode` writes).

use minicbor::Decoder;

use crate::{Error, Result};

/// The format identifier, the COSE algorithms and the certificate count limit (SPEC §5.10.2),
/// from the shared profile.
pub use protocol_spec::attestation::{COSE_ES256, COSE_ES384, COSE_RS256, FORMAT, X5C_MAX};

/// A decoded attestation object; the byte slices borrow from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestationObject<'a> {
    /// `fmt`.
    pub fmt: &'a str,
    /// `attStmt.alg`.
    pub alg: i64,
    /// `attStmt.sig`.
    pub sig: &'a [u8],
    /// `attStmt.x5c`: the IDevID first.
    pub x5c: Vec<&'a [u8]>,
}

/// Decodes an attestation object. The error, a `badAttestationStatement`, says what is wrong.
///
/// The format is checked first, so that an object of another format is reported as such
/// rather than as a malformed `iiot-idevid` statement.
pub fn decode(bytes: &[u8]) -> Result<AttestationObject<'_>> {
    let mut d = Decoder::new(bytes);
    let cbor = |e: minicbor::decode::Error| {
        Error::BadAttestationStatement(format!("attObj is not valid CBOR: {e}"))
    };
    let n = d.map().map_err(cbor)?.ok_or_else(|| {
        Error::BadAttestationStatement("attObj must be a definite-length CBOR map".to_owned())
    })?;
    let (mut fmt, mut stmt, mut auth_data) = (None, None, None);
    for _ in 0..n {
        let key = d.str().map_err(cbor)?;
        let at = d.position();
        let seen = match key {
            "fmt" => fmt.replace(d.str().map_err(cbor)?).is_some(),
            "attStmt" => {
                let start = d.position();
                d.skip().map_err(cbor)?;
                stmt.replace(&bytes[start..d.position()]).is_some()
            }
            "authData" => auth_data.replace(d.bytes().map_err(cbor)?).is_some(),
            other => {
                return Err(Error::BadAttestationStatement(format!(
                    "attObj has an unknown member {other:?} at {at}"
                )))
            }
        };
        if seen {
            return Err(Error::BadAttestationStatement(format!(
                "attObj has member {key:?} twice"
            )));
        }
    }
    if d.position() != bytes.len() {
        return Err(Error::BadAttestationStatement(format!(
            "attObj has {} bytes after the CBOR map",
            bytes.len() - d.position()
        )));
    }
    let fmt =
        fmt.ok_or_else(|| Error::BadAttestationStatement("attObj has no \"fmt\"".to_owned()))?;
    if fmt != FORMAT {
        return Err(Error::BadAttestationStatement(format!(
            "attestation format {fmt:?} is not supported: this CA verifies {FORMAT:?} \
             (IEEE 802.1AR IDevID) attestations only"
        )));
    }
    if auth_data.is_some_and(|a| !a.is_empty()) {
        return Err(Error::BadAttestationStatement(
            "attObj authData must be omitted or empty: the key authorization is signed, not \
             WebAuthn authenticator data"
                .to_owned(),
        ));
    }
    let stmt =
        stmt.ok_or_else(|| Error::BadAttestationStatement("attObj has no \"attStmt\"".to_owned()))?;
    let (alg, sig, x5c) = decode_statement(stmt)?;
    Ok(AttestationObject { fmt, alg, sig, x5c })
}

type Statement<'a> = (i64, &'a [u8], Vec<&'a [u8]>);

fn decode_statement(bytes: &[u8]) -> Result<Statement<'_>> {
    let mut d = Decoder::new(bytes);
    let cbor = |e: minicbor::decode::Error| {
        Error::BadAttestationStatement(format!("attStmt is not valid: {e}"))
    };
    let n = d.map().map_err(cbor)?.ok_or_else(|| {
        Error::BadAttestationStatement("attStmt must be a definite-length CBOR map".to_owned())
    })?;
    let (mut alg, mut sig, mut x5c) = (None, None, None);
    for _ in 0..n {
        let key = d.str().map_err(cbor)?;
        let seen = match key {
            "alg" => alg.replace(d.i64().map_err(cbor)?).is_some(),
            "sig" => sig.replace(d.bytes().map_err(cbor)?).is_some(),
            "x5c" => {
                let len = d.array().map_err(cbor)?.ok_or_else(|| {
                    Error::BadAttestationStatement(
                        "attStmt x5c must be a definite-length array".to_owned(),
                    )
                })?;
                if len == 0 || len > X5C_MAX as u64 {
                    return Err(Error::BadAttestationStatement(format!(
                        "attStmt x5c holds {len} certificates: send the IDevID and its issuers, \
                         1 to {X5C_MAX} certificates"
                    )));
                }
                let certs = (0..len)
                    .map(|_| d.bytes().map_err(cbor))
                    .collect::<Result<Vec<_>, _>>()?;
                x5c.replace(certs).is_some()
            }
            other => {
                return Err(Error::BadAttestationStatement(format!(
                    "attStmt has an unknown member {other:?}"
                )))
            }
        };
        if seen {
            return Err(Error::BadAttestationStatement(format!(
                "attStmt has member {key:?} twice"
            )));
        }
    }
    let alg =
        alg.ok_or_else(|| Error::BadAttestationStatement("attStmt has no \"alg\"".to_owned()))?;
    if ![COSE_ES256, COSE_ES384, COSE_RS256].contains(&alg) {
        return Err(Error::BadAttestationStatement(format!(
            "attStmt alg {alg} is not supported: use -7 (ES256), -35 (ES384) or -257 (RS256)"
        )));
    }
    let sig =
        sig.ok_or_else(|| Error::BadAttestationStatement("attStmt has no \"sig\"".to_owned()))?;
    let x5c = x5c.ok_or_else(|| {
        Error::BadAttestationStatement(
            "attStmt has no \"x5c\": the IDevID certificate chain is required".to_owned(),
        )
    })?;
    Ok((alg, sig, x5c))
}

/// The COSE name of a supported algorithm.
pub fn alg_name(alg: i64) -> &'static str {
    match alg {
        COSE_ES256 => "ES256",
        COSE_ES384 => "ES384",
        COSE_RS256 => "RS256",
        _ => "unsupported",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minicbor::Encoder;

    use protocol_spec::runner::attestation_object as encode;

    #[test]
    fn round_trips_and_reports_each_defect() {
        let obj = encode(FORMAT, COSE_ES256, &[1, 2, 3], &[&[0x30, 0], &[0x30, 1]]);
        // a2 63 "fmt" 6b "iiot-idevid" 67 "attStmt" a3 63 "alg" 26 ...
        assert_eq!(&obj[..5], &[0xa2, 0x63, b'f', b'm', b't']);
        let got = decode(&obj).expect("decodes");
        assert_eq!(got.fmt, FORMAT);
        assert_eq!(got.alg, -7);
        assert_eq!(got.sig, &[1, 2, 3]);
        assert_eq!(got.x5c, vec![&[0x30, 0][..], &[0x30, 1][..]]);

        let err = |bytes: &[u8]| decode(bytes).expect_err("refused").to_problem().detail;
        assert!(
            err(&encode("packed", -7, &[1], &[&[0x30]])).contains("\"packed\" is not supported")
        );
        assert!(err(&encode(FORMAT, -8, &[1], &[&[0x30]])).contains("alg -8 is not supported"));
        assert!(err(&encode(FORMAT, -7, &[1], &[])).contains("holds 0 certificates"));
        assert!(err(&[0xff]).contains("not valid CBOR"));
        assert!(err(&[0x80]).contains("not valid CBOR"), "an array");
        assert!(err(&[0xbf, 0xff]).contains("definite-length"));
        let mut trailing = obj.clone();
        trailing.push(0);
        assert!(err(&trailing).contains("1 bytes after"));
        assert!(err(&obj[..obj.len() - 1]).contains("not valid CBOR"));

        // Hand-built maps: duplicate, unknown, non-empty authData, missing members.
        let mut e = Encoder::new(Vec::new());
        e.map(2)
            .and_then(|e| e.str("fmt")?.str(FORMAT)?.str("fmt")?.str(FORMAT))
            .expect("cbor");
        assert!(err(e.writer()).contains("twice"));
        let mut e = Encoder::new(Vec::new());
        e.map(1).and_then(|e| e.str("extra")?.u8(1)).expect("cbor");
        assert!(err(e.writer()).contains("unknown member \"extra\""));
        let mut e = Encoder::new(Vec::new());
        e.map(2)
            .and_then(|e| e.str("fmt")?.str(FORMAT)?.str("authData")?.bytes(&[0; 37]))
            .expect("cbor");
        assert!(err(e.writer()).contains("authData must be omitted or empty"));
        let mut e = Encoder::new(Vec::new());
        e.map(2)
            .and_then(|e| e.str("fmt")?.str(FORMAT)?.str("authData")?.bytes(&[]))
            .expect("cbor");
        assert!(err(e.writer()).contains("no \"attStmt\""));
        let mut e = Encoder::new(Vec::new());
        e.map(0).expect("cbor");
        assert!(err(e.writer()).contains("no \"fmt\""));
    }
}
