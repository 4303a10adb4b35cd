//! Just enough DER (X.690) for the names rcgen cannot write and x509-parser does not decode:
//! otherName PermanentIdentifier (RFC 4043, SPEC §8.2) in CSRs and issued certificates.

pub(crate) const UTF8_STRING: u8 = 0x0c;
pub(crate) const OID: u8 = 0x06;
pub(crate) const SEQUENCE: u8 = 0x30;
/// `[0]` constructed: GeneralName otherName, and the EXPLICIT tag around its value.
pub(crate) const CONTEXT_0: u8 = 0xa0;
/// GeneralName `[2] dNSName`.
pub(crate) const DNS_NAME: u8 = 0x82;
/// GeneralName `[7] iPAddress`.
pub(crate) const IP_ADDRESS: u8 = 0x87;
/// GeneralName `[6] uniformResourceIdentifier` IA5String (RFC 5280 §4.2.1.6), implicit.
pub(crate) const URI: u8 = 0x86;

/// `id-on-permanentIdentifier` (RFC 4043 §3), 1.3.6.1.5.5.7.8.3.
pub(crate) const PERMANENT_IDENTIFIER_ARCS: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 8, 3];

/// Appends one TLV.
pub(crate) fn write(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let octets: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | octets.len() as u8);
        out.extend_from_slice(&octets);
    }
    out.extend_from_slice(content);
}

/// One TLV as a new vector.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 4);
    write(&mut out, tag, content);
    out
}

/// The content octets of an OBJECT IDENTIFIER with these arcs (at least two).
pub(crate) fn oid_content(arcs: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let first = arcs.first().copied().unwrap_or(0) * 40 + arcs.get(1).copied().unwrap_or(0);
    for arc in std::iter::once(first).chain(arcs.iter().skip(2).copied()) {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push(0x80 | (rest & 0x7f) as u8);
            rest >>= 7;
        }
        out.extend(groups.into_iter().rev());
    }
    out
}

/// The dotted text of OID content octets.
pub(crate) fn oid_text(content: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    let mut started = false;
    for &b in content {
        if !started && b == 0x80 {
            return None;
        }
        started = true;
        acc = acc.checked_mul(128)?.checked_add(u64::from(b & 0x7f))?;
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let (a, b) = match acc {
                    0..=39 => (0, acc),
                    40..=79 => (1, acc - 40),
                    _ => (2, acc - 80),
                };
                arcs.push(a);
                arcs.push(b);
            } else {
                arcs.push(acc);
            }
            acc = 0;
            started = false;
        }
    }
    if started || arcs.is_empty() {
        return None;
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// Reads one TLV (single-octet tag, definite length) from the front of `input`.
pub(crate) fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let (octets, after) = rest.split_at(n);
        rest = after;
        octets
            .iter()
            .fold(0usize, |acc, &b| acc << 8 | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

/// The `serial["/"assigner]` value of an otherName PermanentIdentifier, given the `[0]
/// EXPLICIT` value x509-parser hands over after the type-id.
pub(crate) fn permanent_identifier(explicit_value: &[u8]) -> Option<String> {
    let (tag, inner, []) = read(explicit_value)? else {
        return None;
    };
    if tag != CONTEXT_0 {
        return None;
    }
    let (SEQUENCE, seq, []) = read(inner)? else {
        return None;
    };
    let (UTF8_STRING, serial, rest) = read(seq)? else {
        return None;
    };
    let serial = std::str::from_utf8(serial).ok()?;
    if rest.is_empty() {
        return Some(serial.to_owned());
    }
    let (OID, oid, []) = read(rest)? else {
        return None;
    };
    Some(format!("{serial}/{}", oid_text(oid)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_round_trip() {
        for text in ["1.3.6.1.4.1.32473", "2.999.1", "0.39", "1.2.840.10045.2.1"] {
            let arcs: Vec<u64> = text.split('.').map(|a| a.parse().expect("arc")).collect();
            assert_eq!(oid_text(&oid_content(&arcs)).as_deref(), Some(text));
        }
        // SPEC §8.2: 1.3.6.1.4.1.32473 is 2b 06 01 04 01 81 fd 59.
        assert_eq!(
            oid_content(&[1, 3, 6, 1, 4, 1, 32473]),
            [0x2b, 0x06, 0x01, 0x04, 0x01, 0x81, 0xfd, 0x59]
        );
        let long = tlv(0x04, &[7u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (tag, content, rest) = read(&long).expect("tlv");
        assert_eq!((tag, content.len(), rest.len()), (0x04, 300, 0));
    }
}
