//! Just enough DER (X.690) for the names of SPEC §8.2 that rcgen cannot write and x509-parser
//! does not decode: otherName PermanentIdentifier (RFC 4043) and HardwareModuleName (RFC 4108).
//!
//! The reader accepts single-octet tags and minimal (DER) lengths only, which is all these
//! structures use; anything else is refused rather than guessed at.

/// `UTF8String`.
pub(crate) const UTF8_STRING: u8 = 0x0c;
/// `OBJECT IDENTIFIER`.
pub(crate) const OID: u8 = 0x06;
/// `OCTET STRING`.
pub(crate) const OCTET_STRING: u8 = 0x04;
/// `SEQUENCE` (constructed).
pub(crate) const SEQUENCE: u8 = 0x30;
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
