//! The little DER (X.690) the client needs: writing a CSR, and reading a certificate's serial,
//! validity and authority key identifier for renewal.

use crate::text::Writer;
use crate::Error;

pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const SET: u8 = 0x31;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const OID: u8 = 0x06;
pub(crate) const UTF8_STRING: u8 = 0x0c;

/// Writes DER into a caller buffer. Nested values reserve a 3-octet length and move their
/// content down once its size is known, so nothing is encoded twice. Failures are recorded,
/// as in [`Writer`], and reported once by [`DerWriter::finish`].
pub(crate) struct DerWriter<'o>(Writer<'o>);

impl<'o> DerWriter<'o> {
    pub(crate) fn new(buf: &'o mut [u8]) -> Self {
        Self(Writer::new(buf))
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.0.push(bytes);
    }

    // Out of line, as the hints in enrollment.rs: one call per failure site is smaller.
    #[inline(never)]
    pub(crate) fn fail(&mut self, e: Error) {
        self.0.fail(e);
    }

    pub(crate) fn tlv(&mut self, tag: u8, content: &[u8]) {
        self.nested(tag, |w| w.raw(content));
    }

    /// Writes `tag`, then whatever `content` writes, then fixes up the length. Only this
    /// wrapper is generic: inlined, it costs each caller two calls, while the length encoding
    /// (about 150 octets of code) exists once rather than once per closure.
    #[inline(always)]
    pub(crate) fn nested(&mut self, tag: u8, content: impl FnOnce(&mut Self)) {
        let start = self.open(tag);
        content(self);
        self.close(start);
    }

    /// Starts a value with a placeholder 3-octet length; returns where it starts.
    fn open(&mut self, tag: u8) -> usize {
        let start = self.0.offset();
        self.raw(&[tag, 0x82, 0, 0]);
        start
    }

    /// Ends the value `open` started at `start`: writes the real length and moves the content
    /// down to follow it.
    fn close(&mut self, start: usize) {
        let placeholder = start + 1..start + 4;
        // Short when the placeholder did not fit (and then nothing after it was written).
        let Some(n) = self.0.offset().checked_sub(placeholder.end) else {
            return;
        };
        // X.690 §8.1.3: short form under 128, else 0x8N and N big-endian octets.
        let (length, used) = match n {
            0..=0x7f => ([n as u8, 0, 0], 1),
            0x80..=0xff => ([0x81, n as u8, 0], 2),
            0x100..=0xffff => ([0x82, (n >> 8) as u8, n as u8], 3),
            _ => return self.fail(Error::BufferTooSmall { needed: 0x10000 }),
        };
        self.0
            .replace(placeholder, length.get(..used).unwrap_or_default());
    }

    /// A non-negative INTEGER from big-endian magnitude octets.
    pub(crate) fn unsigned_integer(&mut self, magnitude: &[u8]) {
        let first = magnitude
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(magnitude.len());
        let m = magnitude.get(first..).unwrap_or_default();
        self.nested(INTEGER, |w| {
            if m.first().is_none_or(|&b| b & 0x80 != 0) {
                w.raw(&[0]);
            }
            w.raw(m);
        });
    }

    /// An OBJECT IDENTIFIER from dotted-decimal text (already checked by the caller).
    pub(crate) fn oid_text(&mut self, dotted: &str) {
        const BAD: Error = Error::Config("assigner OID");
        let mut arcs = dotted
            .as_bytes()
            .split(|&b| b == b'.')
            .map(protocol_spec::identifier::oid_arc);
        let (Some(Some(a)), Some(Some(b))) = (arcs.next(), arcs.next()) else {
            return self.fail(BAD);
        };
        let Some(first) = a.checked_mul(40).and_then(|v| v.checked_add(b)) else {
            return self.fail(BAD);
        };
        self.nested(OID, |w| {
            w.base128(first);
            for arc in arcs {
                match arc {
                    Some(arc) => w.base128(arc),
                    None => w.fail(BAD),
                }
            }
        });
    }

    fn base128(&mut self, v: u64) {
        let mut octets = [0u8; 10];
        let mut i = octets.len();
        let mut v = v;
        loop {
            i -= 1;
            octets[i] = (v & 0x7f) as u8 | if i == octets.len() - 1 { 0 } else { 0x80 };
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        self.raw(&octets[i..]);
    }

    /// Where the next value goes (see [`Writer::offset`]).
    pub(crate) fn offset(&self) -> usize {
        self.0.offset()
    }

    pub(crate) fn written(&self) -> &[u8] {
        self.0.written()
    }

    /// The length written, or the first failure.
    pub(crate) fn finish(&self) -> Result<usize, Error> {
        self.0.finish()
    }
}

/// One DER element: its tag, its content and what follows it.
pub(crate) fn read(input: &[u8]) -> Result<(u8, &[u8], &[u8]), Error> {
    const BAD: Error = Error::BadJson("certificate DER");
    let (&tag, rest) = input.split_first().ok_or(BAD)?;
    let (&first, rest) = rest.split_first().ok_or(BAD)?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x83 => {
            let n = usize::from(first & 0x7f);
            let octets = rest.get(..n).ok_or(BAD)?;
            let len = octets
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        }
        _ => return Err(BAD),
    };
    let content = rest.get(..len).ok_or(BAD)?;
    Ok((tag, content, &rest[len..]))
}

/// What renewal needs from a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertInfo<'a> {
    /// The serial number's content octets (RFC 9773 §4.1 uses them as they are).
    pub serial: &'a [u8],
    /// The keyIdentifier of the authority key identifier extension, if present.
    pub authority_key_id: Option<&'a [u8]>,
    /// notBefore and notAfter, seconds since 1970-01-01T00:00:00Z.
    pub not_before: u64,
    pub not_after: u64,
}

/// Reads [`CertInfo`] from a DER X.509 certificate (RFC 5280 §4.1).
pub fn cert_info(der: &[u8]) -> Result<CertInfo<'_>, Error> {
    const BAD: Error = Error::BadJson("certificate DER");
    let (SEQUENCE, cert, _) = read(der)? else {
        return Err(BAD);
    };
    let (SEQUENCE, tbs, _) = read(cert)? else {
        return Err(BAD);
    };
    let (mut tag, mut content, mut rest) = read(tbs)?;
    if tag == 0xa0 {
        (tag, content, rest) = read(rest)?;
    }
    if tag != INTEGER {
        return Err(BAD);
    }
    let serial = content;
    let (_, _, rest) = read(rest)?; // signature algorithm
    let (_, _, rest) = read(rest)?; // issuer
    let (SEQUENCE, validity, rest) = read(rest)? else {
        return Err(BAD);
    };
    let (t1, nb, after) = read(validity)?;
    let (t2, na, _) = read(after)?;
    let not_before = asn1_time(t1, nb).ok_or(BAD)?;
    let not_after = asn1_time(t2, na).ok_or(BAD)?;
    let (_, _, mut rest) = read(rest)?; // subject
    (_, _, rest) = read(rest)?; // subjectPublicKeyInfo
    let mut authority_key_id = None;
    while !rest.is_empty() {
        let (tag, content, next) = read(rest)?;
        rest = next;
        if tag != 0xa3 {
            continue;
        }
        let (SEQUENCE, mut exts, _) = read(content)? else {
            return Err(BAD);
        };
        while !exts.is_empty() {
            let (_, ext, next) = read(exts)?;
            exts = next;
            let (OID, oid, mut body) = read(ext)? else {
                return Err(BAD);
            };
            // 2.5.29.35 authorityKeyIdentifier
            if oid != [0x55, 0x1d, 0x23] {
                continue;
            }
            let (mut tag, mut value, after) = read(body)?;
            if tag == 0x01 {
                body = after;
                (tag, value, _) = read(body)?;
            }
            if tag != OCTET_STRING {
                return Err(BAD);
            }
            let (SEQUENCE, aki, _) = read(value)? else {
                return Err(BAD);
            };
            if let Ok((0x80, key_id, _)) = read(aki) {
                authority_key_id = Some(key_id);
            }
        }
    }
    Ok(CertInfo {
        serial,
        authority_key_id,
        not_before,
        not_after,
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as Unix seconds.
fn asn1_time(tag: u8, text: &[u8]) -> Option<u64> {
    let (year, rest) = match (tag, text.len()) {
        (0x17, 13) => {
            let yy = digits(text.get(..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (0x18, 15) => (digits(text.get(..4)?)?, &text[4..]),
        _ => return None,
    };
    if rest.get(10) != Some(&b'Z') {
        return None;
    }
    let f = |i: usize| digits(rest.get(i..i + 2)?);
    unix_seconds(year, f(0)?, f(2)?, f(4)?, f(6)?, f(8)?)
}

pub(crate) fn digits(d: &[u8]) -> Option<u64> {
    d.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// Seconds since the Unix epoch for a UTC date and time (proleptic Gregorian calendar).
pub(crate) fn unix_seconds(y: u64, mo: u64, d: u64, h: u64, mi: u64, s: u64) -> Option<u64> {
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from civil (H. Hinnant's algorithm), shifted so March is the first month.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_lengths_use_the_shortest_form() {
        let mut buf = [0u8; 400];
        let mut w = DerWriter::new(&mut buf);
        w.nested(SEQUENCE, |w| {
            w.tlv(OCTET_STRING, &[7; 3]);
            w.tlv(OCTET_STRING, &[9; 200]);
        });
        w.finish().expect("fits");
        let out = w.written();
        assert_eq!(&out[..7], &[0x30, 0x81, 0xd0, 0x04, 0x03, 7, 7]);
        assert_eq!(&out[8..11], &[0x04, 0x81, 0xc8]);
        assert_eq!(out.len(), 3 + 5 + 3 + 200);
    }

    #[test]
    fn integers_and_oids() {
        let mut buf = [0u8; 64];
        let mut w = DerWriter::new(&mut buf);
        w.unsigned_integer(&[0, 0, 0x80, 1]);
        w.unsigned_integer(&[0, 0]);
        w.oid_text("1.3.6.1.4.1.32473");
        w.finish().expect("fits");
        assert_eq!(
            w.written(),
            &[
                0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x01, 0x00, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x04,
                0x01, 0x81, 0xfd, 0x59
            ]
        );
    }

    #[test]
    fn dates() {
        assert_eq!(unix_seconds(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(unix_seconds(2000, 3, 1, 0, 0, 0), Some(951_868_800));
        assert_eq!(unix_seconds(2026, 11, 25, 12, 30, 15), Some(1_795_609_815));
        assert_eq!(asn1_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(asn1_time(0x18, b"99991231235959Z"), Some(253_402_300_799));
        assert_eq!(asn1_time(0x17, b"4912312359Z"), None);
    }
}
