//! The server's one DER (ITU-T X.690) and PEM (RFC 7468) toolkit, for what rcgen cannot write
//! and x509-parser does not decode: the otherName forms of SPEC §8.2 (`der::names`), the key
//! containers the blocklist reads (PKCS#1, SEC 1, PKCS#8) and a canonical SubjectPublicKeyInfo,
//! and the PEM text of certificates and CRLs.
//!
//! The reader accepts single-octet tags and minimal (DER) lengths only, which is all these
//! structures use; anything else is refused rather than guessed at.

pub mod names;

/// `UTF8String`.
pub(crate) const UTF8_STRING: u8 = 0x0c;
/// `OBJECT IDENTIFIER`.
pub(crate) const OID: u8 = 0x06;
/// `OCTET STRING`.
pub(crate) const OCTET_STRING: u8 = 0x04;
/// `SEQUENCE` (constructed).
pub(crate) const SEQUENCE: u8 = 0x30;
/// `INTEGER`.
pub(crate) const INTEGER: u8 = 0x02;
/// `BIT STRING`.
pub(crate) const BIT_STRING: u8 = 0x03;
/// `NULL`.
pub(crate) const NULL: u8 = 0x05;
/// `[0]` constructed, context-specific: GeneralName otherName, and the EXPLICIT tag around its
/// value.
pub(crate) const CONTEXT_0: u8 = 0xa0;
/// GeneralName `[2] dNSName` (primitive, IMPLICIT IA5String).
pub(crate) const DNS_NAME: u8 = 0x82;
/// GeneralName `[7] iPAddress` (primitive, IMPLICIT OCTET STRING).
pub(crate) const IP_ADDRESS: u8 = 0x87;

/// One tag-length-value with its tag octet and contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) content: &'a [u8],
}

/// Reads one TLV from the front of `input` and returns it with the rest.
pub(crate) fn read(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // High tag numbers (0x1f) never occur in the structures read here.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        // 0x80 is the indefinite form (BER only); more than 3 length octets would describe
        // more than 16 MiB, far beyond any certificate.
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let (octets, after) = rest.split_at(n);
        rest = after;
        let len = octets
            .iter()
            .fold(0usize, |acc, &b| acc << 8 | usize::from(b));
        // DER: the shortest form, so no leading zero octet and no long form below 128.
        if octets[0] == 0 || len < 0x80 {
            return None;
        }
        len
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((Tlv { tag, content }, rest))
}

/// Reads exactly one TLV with tag `tag` that fills all of `input`.
pub(crate) fn read_only(input: &[u8], tag: u8) -> Option<&[u8]> {
    match read(input)? {
        (tlv, []) if tlv.tag == tag => Some(tlv.content),
        _ => None,
    }
}

/// Appends a TLV to `out`.
pub(crate) fn write(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        // Fits in seven bits: the short form.
        out.push(len as u8);
    } else {
        let octets = len.to_be_bytes();
        let skip = octets.iter().take_while(|&&b| b == 0).count();
        let significant = &octets[skip..];
        // At most size_of::<usize>() octets, so the count fits in the low seven bits.
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
}

/// A TLV as a new vector.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 4);
    write(&mut out, tag, content);
    out
}

/// Why DER input, or a value carried in it, could not be read; `Display` names what was being
/// read and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DerError(pub(crate) String);

/// Reads the next TLV from `input` and advances it; the error names `what` was being read.
pub(crate) fn next<'a>(input: &mut &'a [u8], what: &str) -> Result<Tlv<'a>, DerError> {
    let (tlv, rest) = read(input).ok_or_else(|| DerError(format!("{what}: not valid DER")))?;
    *input = rest;
    Ok(tlv)
}

/// Reads the next TLV from `input`, which must have `tag`, and returns its contents.
pub(crate) fn expect<'a>(input: &mut &'a [u8], tag: u8, what: &str) -> Result<&'a [u8], DerError> {
    match next(input, what)? {
        t if t.tag == tag => Ok(t.content),
        t => Err(DerError(format!(
            "{what}: expected DER tag 0x{tag:02x}, found 0x{:02x}",
            t.tag
        ))),
    }
}

/// The contents of a SEQUENCE that must fill `input` exactly.
pub(crate) fn sequence<'a>(input: &'a [u8], what: &str) -> Result<&'a [u8], DerError> {
    let mut rest = input;
    let body = expect(&mut rest, SEQUENCE, what)?;
    if !rest.is_empty() {
        return Err(DerError(format!(
            "{what}: trailing bytes after the SEQUENCE"
        )));
    }
    Ok(body)
}

/// A non-negative INTEGER from big-endian magnitude bytes: minimal, with a 0x00 octet where the
/// top bit would otherwise make it negative (X.690 §8.3.2).
pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let start = magnitude
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(magnitude.len());
    let m = &magnitude[start..];
    let mut contents = Vec::with_capacity(m.len() + 1);
    if m.first().is_none_or(|&b| b & 0x80 != 0) {
        contents.push(0);
    }
    contents.extend_from_slice(m);
    tlv(INTEGER, &contents)
}

/// A BIT STRING with no unused bits.
pub(crate) fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut contents = Vec::with_capacity(bytes.len() + 1);
    contents.push(0);
    contents.extend_from_slice(bytes);
    tlv(BIT_STRING, &contents)
}

/// PEM text (RFC 7468 §2): `label` between the encapsulation boundaries, base64 in lines of 64
/// characters.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // Base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The contents octets of an OBJECT IDENTIFIER (X.690 §8.19). `arcs` has at least two arcs,
/// the first 0, 1 or 2, and the second below 40 unless the first is 2 (the caller checked).
pub(crate) fn oid_content(arcs: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let first = u128::from(arcs.first().copied().unwrap_or(0)) * 40
        + u128::from(arcs.get(1).copied().unwrap_or(0));
    push_base128(&mut out, first);
    for &arc in arcs.iter().skip(2) {
        push_base128(&mut out, u128::from(arc));
    }
    out
}

fn push_base128(out: &mut Vec<u8>, mut v: u128) {
    let mut groups = [0u8; 19];
    let mut n = 0;
    loop {
        groups[n] = (v & 0x7f) as u8;
        n += 1;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        out.push(groups[i] | if i > 0 { 0x80 } else { 0 });
    }
}

/// The dotted-decimal text of OBJECT IDENTIFIER contents, or `None` if they are not minimal
/// base-128 or an arc does not fit in 64 bits.
pub(crate) fn oid_text(content: &[u8]) -> Option<String> {
    let mut values = Vec::new();
    let mut acc: u128 = 0;
    let mut fresh = true;
    for &b in content {
        // A sub-identifier must not start with 0x80 (X.690 §8.19.2: the fewest octets).
        if fresh && b == 0x80 {
            return None;
        }
        acc = acc.checked_mul(128)? | u128::from(b & 0x7f);
        fresh = b & 0x80 == 0;
        if fresh {
            values.push(acc);
            acc = 0;
        }
    }
    if !fresh || values.is_empty() {
        return None;
    }
    let first = values[0];
    let (a, b) = match first {
        0..=39 => (0, first),
        40..=79 => (1, first - 40),
        _ => (2, first - 80),
    };
    let mut text = format!("{a}.{}", u64::try_from(b).ok()?);
    for v in &values[1..] {
        text.push('.');
        text.push_str(&u64::try_from(*v).ok()?.to_string());
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_round_trip_through_their_contents() {
        for (text, hex) in [
            ("1.3.6.1.5.5.7.8.3", "2b06010505070803"),
            ("2.5.4.5", "550405"),
            ("2.999.3", "883703"),
            ("1.2.840.113549", "2a864886f70d"),
            ("0.0", "00"),
            (
                "1.3.6.1.4.1.18446744073709551615",
                "2b0601040181ffffffffffffffff7f",
            ),
        ] {
            let arcs: Vec<u64> = text.split('.').map(|a| a.parse().expect("arc")).collect();
            assert_eq!(hex::encode(oid_content(&arcs)), hex, "{text}");
            assert_eq!(
                oid_text(&hex::decode(hex).expect("hex")).as_deref(),
                Some(text)
            );
        }
        assert_eq!(oid_text(&[0x80, 0x01]), None, "non-minimal");
        assert_eq!(oid_text(&[0x2b, 0x86]), None, "truncated");
        assert_eq!(oid_text(&[]), None);
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(unsigned_integer(&[0, 0, 0x7f]), vec![2, 1, 0x7f]);
        assert_eq!(unsigned_integer(&[0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(unsigned_integer(&[]), vec![2, 1, 0]);
    }

    #[test]
    fn truncation_and_bad_lengths_are_errors() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 1, 2],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x1f, 0x01, 0x00],
        ] {
            let mut input = bad;
            assert!(next(&mut input, "t").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lengths_are_minimal_both_ways() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![0x55; len];
            let encoded = tlv(OCTET_STRING, &content);
            let (got, rest) = read(&encoded).expect("reads back");
            assert!(rest.is_empty());
            assert_eq!(got.content.len(), len);
        }
        // Long form for a short length, a leading zero length octet, indefinite length.
        assert!(read(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5]).is_none());
        assert!(read(&[0x04, 0x82, 0x00, 0x80]).is_none());
        assert!(read(&[0x30, 0x80, 0, 0]).is_none());
        assert!(read(&[0x04, 0x03, 1, 2]).is_none(), "truncated");
        assert_eq!(read_only(&[0x04, 0x01, 9, 0], OCTET_STRING), None);
        assert_eq!(read_only(&[0x04, 0x01, 9], OCTET_STRING), Some(&[9u8][..]));
    }
}
