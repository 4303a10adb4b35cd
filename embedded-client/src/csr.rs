//! The PKCS #10 certificate request (RFC 2986) the device sends to finalize (SPEC §7.4), written
//! in DER by hand: an empty subject, the P-256 public key, and a subjectAltName extension
//! request naming every identifier of the order (dNSName, iPAddress, otherName
//! PermanentIdentifier per SPEC §8.2), signed ecdsa-with-SHA256.

use crate::der::{DerWriter, BIT_STRING, OCTET_STRING, OID, SEQUENCE, SET, UTF8_STRING};
use crate::key::CertificateKey;
use crate::{Error, Identifier};

/// `SubjectPublicKeyInfo` of a P-256 key up to the point's coordinates (RFC 5480 §2): every
/// length in it is fixed, so it is a constant rather than nested writes.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, // SEQUENCE
    0x30, 0x13, // AlgorithmIdentifier
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // id-ecPublicKey
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, // prime256v1
    0x03, 0x42, 0x00, // BIT STRING, no unused bits
    0x04, // uncompressed point: x ‖ y follow
];
/// `AlgorithmIdentifier` of ecdsa-with-SHA256, no parameters (RFC 5758 §3.2).
const ECDSA_WITH_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
const EXTENSION_REQUEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const PERMANENT_IDENTIFIER: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x03];

/// Writes the DER CSR for `key` and `identifiers` into `out`; returns its length.
// Not inlined into its one caller: that made the firmware 344 octets larger.
#[inline(never)]
pub fn build(
    key: &CertificateKey,
    identifiers: &[Identifier<'_>],
    out: &mut [u8],
) -> Result<usize, Error> {
    let mut w = DerWriter::new(out);
    w.nested(SEQUENCE, |w| {
        let info_start = w.offset();
        w.nested(SEQUENCE, |w| request_info(w, key, identifiers));
        match key.sign(&[w.written().get(info_start..).unwrap_or_default()]) {
            Ok(signature) => {
                w.raw(ECDSA_WITH_SHA256);
                w.nested(BIT_STRING, |w| {
                    w.raw(&[0]);
                    ecdsa_sig_value(w, &signature);
                });
            }
            Err(e) => w.fail(e),
        }
    });
    w.finish()
}

/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 3279 §2.2.3) from r ‖ s.
pub(crate) fn ecdsa_sig_value(w: &mut DerWriter<'_>, rs: &[u8; 64]) {
    let (r, s) = rs.split_at(32);
    w.nested(SEQUENCE, |w| {
        w.unsigned_integer(r);
        w.unsigned_integer(s);
    });
}

fn request_info(w: &mut DerWriter<'_>, key: &CertificateKey, identifiers: &[Identifier<'_>]) {
    w.raw(&[0x02, 0x01, 0x00]); // version v1(0)
    w.raw(&[SEQUENCE, 0x00]); // empty subject: the names are in the subjectAltName
    let (x, y) = key.public_xy();
    w.raw(P256_SPKI_PREFIX);
    w.raw(&x);
    w.raw(&y);
    // attributes [0] IMPLICIT SET OF Attribute
    w.nested(0xa0, |w| {
        if identifiers.is_empty() {
            return;
        }
        w.nested(SEQUENCE, |w| {
            w.tlv(OID, EXTENSION_REQUEST);
            w.nested(SET, |w| {
                w.nested(SEQUENCE, |w| {
                    w.nested(SEQUENCE, |w| {
                        w.tlv(OID, SUBJECT_ALT_NAME);
                        // Critical: the subject is empty (RFC 5280 §4.2.1.6).
                        w.raw(&[0x01, 0x01, 0xff]);
                        w.nested(OCTET_STRING, |w| {
                            w.nested(SEQUENCE, |w| general_names(w, identifiers));
                        });
                    });
                });
            });
        });
    });
}

fn general_names(w: &mut DerWriter<'_>, identifiers: &[Identifier<'_>]) {
    use protocol_spec::identifier::{check_ip, check_permanent_identifier};
    for id in identifiers {
        match *id {
            Identifier::Dns(name) => w.tlv(0x82, name.as_bytes()),
            Identifier::Ip(text) => match check_ip(text) {
                Ok(core::net::IpAddr::V4(a)) => w.tlv(0x87, &a.octets()),
                Ok(core::net::IpAddr::V6(a)) => w.tlv(0x87, &a.octets()),
                Err(_) => w.fail(Error::Config("ip identifier")),
            },
            Identifier::Permanent(value) => match check_permanent_identifier(value) {
                Ok(p) => w.nested(0xa0, |w| {
                    w.tlv(OID, PERMANENT_IDENTIFIER);
                    w.nested(0xa0, |w| {
                        w.nested(SEQUENCE, |w| {
                            w.tlv(UTF8_STRING, p.serial.as_bytes());
                            if let Some(a) = p.assigner {
                                w.oid_text(a);
                            }
                        });
                    });
                }),
                Err(_) => w.fail(Error::Config("permanent-identifier")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::DeviceKey;
    use x509_parser::prelude::*;

    #[test]
    fn the_csr_parses_verifies_and_names_every_identifier() {
        let key = DeviceKey::from_bytes(&[3; 32]).expect("valid");
        let ids = [
            Identifier::Permanent("Sn-0042/1.3.6.1.4.1.32473"),
            Identifier::Dns("plc-1.plant.example"),
            Identifier::Ip("192.0.2.7"),
            Identifier::Ip("2001:db8::1"),
        ];
        let mut out = [0u8; 1024];
        let n = build(&key, &ids, &mut out).expect("fits");
        let (rest, csr) = X509CertificationRequest::from_der(&out[..n]).expect("DER CSR");
        assert!(rest.is_empty());
        csr.verify_signature().expect("signature verifies");
        let mut names = 0;
        for ext in csr.requested_extensions().expect("extension request") {
            let ParsedExtension::SubjectAlternativeName(san) = ext else {
                continue;
            };
            names = san.general_names.len();
            assert!(matches!(
                san.general_names[1],
                GeneralName::DNSName("plc-1.plant.example")
            ));
            assert!(matches!(
                san.general_names[2],
                GeneralName::IPAddress([192, 0, 2, 7])
            ));
            let GeneralName::OtherName(oid, value) = &san.general_names[0] else {
                panic!("otherName first");
            };
            assert_eq!(oid.to_id_string(), "1.3.6.1.5.5.7.8.3");
            // The SPEC §8.2 example encoding of this identifier.
            let expect = [
                0xa0, 0x15, 0x30, 0x13, 0x0c, 0x07, b'S', b'n', b'-', b'0', b'0', b'4', b'2', 0x06,
                0x08, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x81, 0xfd, 0x59,
            ];
            assert_eq!(*value, &expect[..]);
        }
        assert_eq!(names, 4);
    }

    #[test]
    fn too_small_a_buffer_is_an_error() {
        let key = DeviceKey::from_bytes(&[3; 32]).expect("valid");
        let mut out = [0u8; 100];
        assert!(matches!(
            build(&key, &[Identifier::Dns("a.example")], &mut out),
            Err(Error::BufferTooSmall { .. })
        ));
    }
}
