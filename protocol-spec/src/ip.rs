//! IP address text, parsed and printed without `core::net`'s `FromStr` and `Display`.
//!
//! Those two cost a microcontroller image about 5 KiB of flash (the `core::fmt` machinery comes
//! with them), for what [`crate::identifier::check_ip`] does on a few dozen octets. The grammar
//! accepted and the text written are exactly `core::net`'s, because SPEC §4.3 is stated as
//! "what `IpAddr` parses and prints" for every implementation; the unit tests below hold this
//! code to that against `core::net` itself.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::identifier::IP_TEXT_MAX as TEXT_MAX;

/// The address `text` spells, with the grammar of `core`'s `IpAddr: FromStr`: dotted-quad IPv4
/// without leading zeros, or RFC 4291 §2.2 IPv6 (1-4 hex digits of either case per group, at
/// most one `::`, a dotted-quad tail in place of the last two groups).
pub(crate) fn parse(text: &[u8]) -> Option<IpAddr> {
    if let Some(octets) = parse_v4(text) {
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    parse_v6(text).map(|segments| IpAddr::V6(Ipv6Addr::from(segments)))
}

fn parse_v4(text: &[u8]) -> Option<[u8; 4]> {
    let mut octets = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for octet in &mut octets {
        let part = parts.next()?;
        // No leading zeros: "010" would read as octal in other parsers (RFC 6943 §3.1.1).
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let mut n = 0u16;
        for &b in part {
            n = n * 10 + u16::from(digit(b, 10)?);
        }
        *octet = u8::try_from(n).ok()?;
    }
    parts.next().is_none().then_some(octets)
}

fn parse_v6(text: &[u8]) -> Option<[u16; 8]> {
    let mut segments = [0u16; 8];
    match find_double_colon(text) {
        None => (groups(text, &mut segments)? == 8).then_some(segments),
        Some(at) => {
            let (head, tail) = (text.get(..at)?, text.get(at + 2..)?);
            // `::` stands for at least one zero group, so the two sides share seven.
            if has_dot(head) {
                return None; // the dotted quad may only end the address
            }
            let mut both = [0u16; 7];
            let n = groups(head, &mut both)?;
            let (head_groups, rest) = both.split_at_mut(n);
            let m = groups(tail, rest)?;
            segments[..n].copy_from_slice(head_groups);
            segments[8 - m..].copy_from_slice(rest.get(..m)?);
            Some(segments)
        }
    }
}

fn find_double_colon(text: &[u8]) -> Option<usize> {
    text.windows(2).position(|w| matches!(w, [b':', b':']))
}

/// Reads `text`, colon-separated groups, into the front of `out`; returns how many it filled.
/// Empty text is no groups. The last group may be a dotted quad, which fills two.
fn groups(text: &[u8], out: &mut [u16]) -> Option<usize> {
    if text.is_empty() {
        return Some(0);
    }
    let mut n = 0;
    let mut parts = text.split(|&b| b == b':').peekable();
    while let Some(part) = parts.next() {
        if has_dot(part) {
            if parts.peek().is_some() {
                return None;
            }
            let [a, b, c, d] = parse_v4(part)?;
            let pair = out.get_mut(n..n + 2)?;
            pair[0] = u16::from_be_bytes([a, b]);
            pair[1] = u16::from_be_bytes([c, d]);
            return Some(n + 2);
        }
        if part.is_empty() || part.len() > 4 {
            return None;
        }
        let mut g = 0u16;
        for &b in part {
            g = (g << 4) | u16::from(digit(b, 16)?);
        }
        *out.get_mut(n)? = g;
        n += 1;
    }
    Some(n)
}

// Not `contains(&b'.')`, which clippy prefers: that is core's memchr, about 200 octets of a
// microcontroller image, to search a few characters.
#[allow(clippy::manual_contains)]
fn has_dot(text: &[u8]) -> bool {
    text.iter().any(|&b| b == b'.')
}

fn digit(b: u8, radix: u8) -> Option<u8> {
    let d = match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => return None,
    };
    (d < radix).then_some(d)
}

/// Writes `addr` as `core`'s `Display` does: dotted quad; RFC 5952 §4 for IPv6 (lowercase, no
/// leading zeros, the first longest run of two or more zero groups as `::`), with the §5 mixed
/// form for IPv4-mapped addresses. Returns the length written.
pub(crate) fn write(addr: &IpAddr, out: &mut [u8; TEXT_MAX]) -> usize {
    let mut w = Out { buf: out, len: 0 };
    match addr {
        IpAddr::V4(a) => w.numbers(&a.octets().map(u16::from), 10, b'.'),
        IpAddr::V6(a) => {
            let s = a.segments();
            if s[..5] == [0; 5] && s[5] == 0xffff {
                w.push(b"::ffff:");
                let [.., a, b, c, d] = a.octets();
                w.numbers(&[a, b, c, d].map(u16::from), 10, b'.');
            } else {
                let (start, len) = longest_zero_run(&s);
                if len > 1 {
                    w.numbers(&s[..start], 16, b':');
                    w.push(b"::");
                    w.numbers(&s[start + len..], 16, b':');
                } else {
                    w.numbers(&s, 16, b':');
                }
            }
        }
    }
    w.len
}

/// Start and length of the first longest run of zero groups.
fn longest_zero_run(s: &[u16; 8]) -> (usize, usize) {
    let (mut best, mut best_len, mut len) = (0, 0, 0);
    for (i, &g) in s.iter().enumerate() {
        len = if g == 0 { len + 1 } else { 0 };
        if len > best_len {
            best_len = len;
            best = i + 1 - len;
        }
    }
    (best, best_len)
}

/// Never overflows: [`TEXT_MAX`] fits the longest text, so writes past it are dropped only in
/// theory, and without a panic path.
struct Out<'o> {
    buf: &'o mut [u8; TEXT_MAX],
    len: usize,
}

impl Out<'_> {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    /// `values` in `radix` (10 or 16, lowercase), without leading zeros, between separators.
    /// One routine for dotted quads and hex groups keeps the image small.
    fn numbers(&mut self, values: &[u16], radix: u16, separator: u8) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, &v) in values.iter().enumerate() {
            if i > 0 {
                self.push(&[separator]);
            }
            // At most 5 digits (65535); written from the right.
            let mut digits = [0u8; 5];
            let mut at = digits.len();
            let mut v = v;
            loop {
                at -= 1;
                digits[at] = DIGITS[usize::from(v % radix)];
                v /= radix;
                if v == 0 {
                    break;
                }
            }
            self.push(digits.get(at..).unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Whether `core` accepted `text`, so that callers can check their inputs are not all noise.
    fn same_as_core(text: &str) -> bool {
        let ours = parse(text.as_bytes());
        let core = text.parse::<IpAddr>().ok();
        assert_eq!(ours, core, "parse {text:?}");
        if let Some(addr) = core {
            let mut out = [0u8; TEXT_MAX];
            let n = write(&addr, &mut out);
            assert_eq!(
                core::str::from_utf8(&out[..n]).expect("ascii"),
                addr.to_string(),
                "write {text:?}"
            );
        }
        core.is_some()
    }

    #[test]
    fn edge_cases_match_core() {
        for text in [
            "",
            ".",
            ":",
            "::",
            ":::",
            "::::",
            "0.0.0.0",
            "255.255.255.255",
            "256.0.0.0",
            "1.2.3",
            "1.2.3.4.",
            ".1.2.3.4",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.02.3.4",
            "1.2.3.00",
            "0000.1.1.1",
            "1..2.3",
            "1.2.3.4 ",
            " 1.2.3.4",
            "+1.2.3.4",
            "1.2.3.-4",
            "::1",
            "1::",
            "1::1",
            "::1:",
            ":1::",
            ":1",
            "1:",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8::",
            "::1:2:3:4:5:6:7:8",
            "1::2::3",
            "1:::2",
            "12345::",
            "00000::",
            "0000::",
            "fFfF::",
            "g::",
            "::ffff:1.2.3.4",
            "::ffff:01.2.3.4",
            "::1.2.3.4",
            "1.2.3.4::",
            "1:2:3:4:5:6:1.2.3.4",
            "1:2:3:4:5:6:7:1.2.3.4",
            "1:2:3:4:5:1.2.3.4",
            "1:2:3:4:5::1.2.3.4",
            "1:2:3:4:5:6::1.2.3.4",
            "1:2:3:4:5:1.2.3.4::",
            "::1.2.3.4:5",
            "::1.2.3.4.5",
            "::1.2.3",
            "1.2.3.4:1::",
            "::ffff:c000:207",
            "2001:db8::7",
            "2001:DB8::7",
            "2001:0db8::7",
            "fe80::1:2",
            "2001:db8::1:0:0:1",
            "2001:0:0:1::1",
            "2001:db8:0:1:1:1:1:1",
            "ff02::1",
            "::ffff:0.0.0.0",
            "0:0:0:0:0:ffff:1.2.3.4",
            "::0:1.2.3.4",
            "1:0:0:2:0:0:0:3",
            "1:0:0:0:2:0:0:3",
            "0:0:1:0:0:1:0:0",
            "1.2.3.4%eth0",
            "fe80::1%1",
            "[::1]",
            "\u{b2}.1.1.1",
            "1.1.1.\u{661}",
            "::\u{ff11}",
        ] {
            let _ = same_as_core(text);
        }
    }

    #[test]
    fn random_text_matches_core() {
        const ALPHABET: &[u8] = b"0123456789abcdefABCDEFg:.::..";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut addresses = 0;
        for _ in 0..300_000 {
            let len = rng.below(24);
            let text: String = (0..len)
                .map(|_| char::from(ALPHABET[rng.below(ALPHABET.len())]))
                .collect();
            addresses += usize::from(same_as_core(&text));
        }
        assert!(
            addresses > 1_000,
            "only {addresses} random texts were addresses"
        );
    }

    #[test]
    fn random_addresses_and_their_mutations_match_core() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut mutants = 0;
        for _ in 0..100_000 {
            // Mostly zero groups, so that every shape of `::` compression comes up.
            let mut segments = [0u16; 8];
            for s in &mut segments {
                *s = match rng.below(4) {
                    0 | 1 => 0,
                    2 => rng.next() as u16 & 0xf,
                    _ => rng.next() as u16,
                };
            }
            if rng.below(8) == 0 {
                segments[..5].fill(0);
                segments[5] = 0xffff;
            }
            let addr = if rng.below(4) == 0 {
                IpAddr::V4(Ipv4Addr::from(rng.next() as u32 >> (rng.below(4) * 8)))
            } else {
                IpAddr::V6(Ipv6Addr::from(segments))
            };
            let text = addr.to_string();
            assert!(same_as_core(&text));
            // One edit: delete, duplicate or replace an octet.
            let mut bytes: Vec<u8> = text.into_bytes();
            let i = rng.below(bytes.len());
            match rng.below(3) {
                0 => {
                    bytes.remove(i);
                }
                1 => bytes.insert(i, bytes[i]),
                _ => bytes[i] = b"0:.aF"[rng.below(5)],
            }
            mutants += usize::from(same_as_core(&String::from_utf8(bytes).expect("ascii")));
        }
        // Many edits still spell an address (a digit more or less), many do not.
        assert!(
            (10_000..90_000).contains(&mutants),
            "{mutants} mutants were addresses"
        );
    }
}
