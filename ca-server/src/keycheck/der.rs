//! Just enough DER (ITU-T X.690 §8, §10) to read the key containers the blocklist tool accepts
//! (PKCS#1, SEC 1, PKCS#8) and to write a canonical SubjectPublicKeyInfo.
//!
//! Only low-tag-number, definite-length encodings are read: DER allows nothing else, and every
//! tag the key formats use (SEQUENCE, INTEGER, BIT STRING, OCTET STRING, OID, NULL, `[0]`,
//! `[1]`) is a single octet.

/// Universal tags used here.
pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const NULL: u8 = 0x05;
pub(crate) const OID: u8 = 0x06;

/// Reads one TLV from the front of `input`, advancing it; returns the tag and the contents.
pub(crate) fn read<'a>(input: &mut &'a [u8]) -> Result<(u8, &'a [u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("truncated DER: missing tag")?;
    if tag & 0x1f == 0x1f {
        return Err("unsupported DER: multi-octet tag".into());
    }
    let (&first, mut rest) = rest.split_first().ok_or("truncated DER: missing length")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err("invalid DER length".into());
        }
        let (bytes, tail) = rest.split_at(count);
        rest = tail;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return Err("truncated DER: contents shorter than their length".into());
    }
    let (value, tail) = rest.split_at(len);
    *input = tail;
    Ok((tag, value))
}

/// Reads one TLV that must have `tag`.
pub(crate) fn expect<'a>(input: &mut &'a [u8], tag: u8, what: &str) -> Result<&'a [u8], String> {
    match read(input)? {
        (t, v) if t == tag => Ok(v),
        (t, _) => Err(format!(
            "{what}: expected DER tag 0x{tag:02x}, found 0x{t:02x}"
        )),
    }
}

/// The contents of a SEQUENCE that must fill `input` exactly.
pub(crate) fn sequence<'a>(input: &'a [u8], what: &str) -> Result<&'a [u8], String> {
    let mut rest = input;
    let body = expect(&mut rest, SEQUENCE, what)?;
    if !rest.is_empty() {
        return Err(format!("{what}: trailing bytes after the SEQUENCE"));
    }
    Ok(body)
}

/// A TLV with `tag` around `contents`.
pub(crate) fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_short_and_long_lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let body = vec![0xAB; len];
            let enc = tlv(OCTET_STRING, &body);
            let mut input = enc.as_slice();
            assert_eq!(read(&mut input), Ok((OCTET_STRING, body.as_slice())));
            assert!(input.is_empty());
        }
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
            assert!(read(&mut input).is_err(), "{bad:?}");
        }
    }
}
