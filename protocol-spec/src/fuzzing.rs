//! Entry points of the fuzz targets in `protocol-spec/fuzz` and of the corpus replay test
//! (`tests/fuzz_corpus.rs`), which runs the committed corpus through the same functions on the
//! stable toolchain. Not part of the API.
//!
//! Each function takes arbitrary octets, runs the real parser on them and asserts what holds for
//! every input: no panic, a result consistent with the other functions of the module, and the
//! round trip where the format has one (decode then encode gives the input back; encode then
//! decode gives the octets back). A failed assertion is a finding, like a panic.
//!
//! No allocation, like the rest of the crate: fixed buffers sized for libFuzzer's default
//! 4096-octet inputs, with longer inputs cut or reported as too long by the code under test.

use core::fmt::Write as _;
use core::net::IpAddr;

use crate::base64url::{self, DecodeError};
use crate::identifier::{
    self, IdentifierError, Reason, ASSIGNER_MAX, DNS_NAME_MAX, IP_TEXT_MAX, SERIAL_MAX,
};
use crate::write::Cursor;
use crate::{ari, challenge, fingerprint, ip, problem, punycode};

/// Longest input the round trips below use in full.
const MAX_INPUT: usize = 4096;

/// Strict base64url: [`base64url::validate`] and [`base64url::decode`] agree, whatever decodes
/// is the canonical encoding of its octets, and any octets encode and decode back.
pub fn base64url(data: &[u8]) {
    let mut octets = [0u8; MAX_INPUT];
    let mut text = [0u8; base64url::encoded_len(MAX_INPUT)];
    if let Ok(input) = core::str::from_utf8(data) {
        let checked = base64url::validate(input);
        match base64url::decode(input, &mut octets) {
            Ok(decoded) => {
                assert_eq!(checked, Ok(decoded.len()));
                assert_eq!(base64url::encode(decoded, &mut text), Ok(input));
            }
            Err(DecodeError::BufferTooSmall(e)) => {
                assert_eq!(checked, Ok(e.needed));
                assert!(e.needed > octets.len());
            }
            Err(e) => assert_eq!(checked, Err(e)),
        }
    }
    let data = data.get(..MAX_INPUT).unwrap_or(data);
    let encoded = base64url::encode(data, &mut text);
    let Ok(encoded) = encoded else {
        panic!("encoding {} octets: {encoded:?}", data.len());
    };
    assert_eq!(encoded.len(), base64url::encoded_len(data.len()));
    assert_eq!(base64url::decoded_len(encoded.len()), Some(data.len()));
    assert_eq!(base64url::decode(encoded, &mut octets), Ok(data));
}

/// The three identifier checks of SPEC §4 on the same text: a canonical `dns` name is its own
/// canonical form and is never an address, an accepted `ip` value is refused as a `dns` name,
/// and an accepted `permanent-identifier` splits into parts that make up the value.
pub fn identifier(data: &[u8]) {
    // Identifier values arrive as JSON strings: always UTF-8.
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    let mut out = [0u8; DNS_NAME_MAX];
    match identifier::normalize_dns(text, &mut out) {
        Ok(name) => {
            assert!(!name.is_empty() && name.len() <= DNS_NAME_MAX, "{name:?}");
            assert!(
                name.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-.".contains(&c)),
                "{name:?}"
            );
            let mut again = [0u8; DNS_NAME_MAX];
            assert_eq!(identifier::normalize_dns(name, &mut again), Ok(name));
            assert!(identifier::check_ip(name).is_err(), "{name:?}");
        }
        Err(e) => explained(e),
    }
    match identifier::check_ip(text) {
        Ok(addr) => {
            assert!(!addr.is_unspecified() && !addr.is_multicast(), "{addr}");
            assert!(text.len() <= IP_TEXT_MAX);
            let mut out = [0u8; DNS_NAME_MAX];
            assert_eq!(
                identifier::normalize_dns(text, &mut out),
                Err(IdentifierError::Malformed(Reason::IpAddressAsDns))
            );
        }
        Err(e) => explained(e),
    }
    match identifier::check_permanent_identifier(text) {
        Ok(id) => {
            assert!(!id.serial.is_empty() && id.serial.len() <= SERIAL_MAX);
            assert!(!id.serial.contains('/'));
            assert!(!id.serial.chars().any(char::is_control), "{:?}", id.serial);
            match id.assigner {
                Some(a) => {
                    assert!(a.len() <= ASSIGNER_MAX);
                    assert_eq!(text.len(), id.serial.len() + 1 + a.len());
                    assert!(text.starts_with(id.serial) && text.ends_with(a));
                }
                None => assert_eq!(id.serial, text),
            }
        }
        Err(e) => explained(e),
    }
}

fn explained(e: IdentifierError) {
    assert!(problem::Type::from_name(e.problem_type()).is_some());
    assert!(!e.reason().explain().is_empty());
}

/// IP address text, against `core::net`, which SPEC §4.3 names as the reference: the same
/// addresses parse, and the canonical text written is what `core` writes and parses back.
pub fn ip(data: &[u8]) {
    let ours = ip::parse(data);
    let reference = core::str::from_utf8(data)
        .ok()
        .and_then(|t| t.parse::<IpAddr>().ok());
    assert_eq!(ours, reference);
    let Some(addr) = ours else {
        return;
    };
    let mut out = [0u8; IP_TEXT_MAX];
    let n = ip::write(&addr, &mut out);
    let written = out.get(..n).unwrap_or_default();
    let mut core_text = [0u8; 64];
    let mut cursor = Cursor::new(&mut core_text);
    assert!(write!(cursor, "{addr}").is_ok());
    assert_eq!(written, cursor.written());
    assert_eq!(ip::parse(written), Some(addr));
}

/// Punycode (RFC 3492): what decodes encodes to a text that decodes to the same code points, an
/// A-label accepted as canonical is exactly the encoding of what it decodes to, and any list of
/// Unicode scalar values that encodes within a label decodes back.
pub fn punycode(data: &[u8]) {
    let mut points = [0u32; punycode::MAX_POINTS];
    let decoded = punycode::decode(data, &mut points);
    let mut text = [0u8; punycode::MAX_POINTS];
    if let Some(len) = decoded {
        let points = points.get(..len).unwrap_or_default();
        assert!(points.iter().all(|&c| char::from_u32(c).is_some()));
        if let Some(encoded) = punycode::encode(points, &mut text) {
            let mut again = [0u32; punycode::MAX_POINTS];
            let n = punycode::decode(encoded, &mut again);
            assert_eq!(n.and_then(|n| again.get(..n)), Some(points));
        }
    }
    if punycode::is_canonical(data) {
        let len = decoded.unwrap_or_default();
        let points = points.get(..len).unwrap_or_default();
        assert_eq!(punycode::encode(points, &mut text), Some(data));
    }

    // Three octets per code point, reduced to the Unicode range; surrogates are skipped.
    let mut scalars = [0u32; punycode::MAX_POINTS];
    let mut len = 0;
    for chunk in data.chunks_exact(3).take(punycode::MAX_POINTS) {
        let v = u32::from_be_bytes([0, chunk[0], chunk[1], chunk[2]]) % 0x11_0000;
        if char::from_u32(v).is_some() {
            scalars[len] = v;
            len += 1;
        }
    }
    let scalars = &scalars[..len];
    if let Some(encoded) = punycode::encode(scalars, &mut text) {
        let mut again = [0u32; punycode::MAX_POINTS];
        let n = punycode::decode(encoded, &mut again);
        assert_eq!(n.and_then(|n| again.get(..n)), Some(scalars));
    }
}

/// ARI certificate identifiers (SPEC §9.2): whatever decodes is written back as the same text,
/// and any key identifier and serial are written as an identifier that decodes to them.
pub fn ari(data: &[u8]) {
    let mut octets = [0u8; MAX_INPUT];
    let mut text = [0u8; ari::cert_id_len(MAX_INPUT, 1)];
    if let Ok(id) = core::str::from_utf8(data) {
        let parsed = ari::CertId::parse(id);
        match ari::decode(id, &mut octets) {
            Ok((aki, serial)) => {
                assert!(parsed.is_ok());
                assert_eq!(ari::cert_id(aki, serial, &mut text), Ok(id));
            }
            Err(ari::CertIdError::BufferTooSmall(_)) => assert!(parsed.is_ok()),
            Err(e) => assert_eq!(parsed, Err(e)),
        }
    }
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let rest = rest.get(..MAX_INPUT).unwrap_or(rest);
    let (aki, serial) = rest.split_at(usize::from(split).min(rest.len()));
    match ari::cert_id(aki, serial, &mut text) {
        Ok(id) => {
            let mut back = [0u8; MAX_INPUT];
            assert_eq!(ari::decode(id, &mut back), Ok((aki, serial)));
        }
        Err(e) => assert!(
            matches!(e, ari::CertIdError::Empty(_)) && (aki.is_empty() || serial.is_empty()),
            "{e:?}"
        ),
    }
}

/// The small text parsers: root fingerprints (SPEC §2.3) print and parse back, problem type
/// URNs and names name exactly one type, challenge tokens hold only base64url characters.
pub fn small_text(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    if let Ok(digest) = fingerprint::parse(text) {
        let mut out = [0u8; fingerprint::FINGERPRINT_TEXT_LEN];
        let canonical = fingerprint::format(&digest, &mut out);
        assert!(canonical.eq_ignore_ascii_case(text) || text.len() == 64);
        assert_eq!(fingerprint::parse(canonical), Ok(digest));
    }
    if let Some(t) = problem::Type::from_urn(text) {
        assert_eq!(t.urn(), text);
    }
    if let Some(t) = problem::Type::from_name(text) {
        assert_eq!(t.name(), text);
    }
    if challenge::check_token(text).is_ok() {
        assert!(!text.is_empty());
        // The base64url alphabet, but not necessarily a length or final character that decodes.
        assert!(!matches!(
            base64url::validate(text),
            Err(DecodeError::InvalidByte { .. } | DecodeError::Padding { .. })
        ));
    }
}
