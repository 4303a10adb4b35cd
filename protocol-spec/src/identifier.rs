//! Identifier rules of SPEC §4: normalisation and checks for `dns`, canonical form for `ip`,
//! syntax and policy for `permanent-identifier`.
//!
//! A client runs these before newOrder so that it never sends a value the server will refuse, and
//! so that the names in its CSR match the order exactly (SPEC §7.4).

use core::net::IpAddr;

use crate::{ip, punycode};

/// Longest `dns` name after normalisation, in octets.
pub const DNS_NAME_MAX: usize = 253;

/// Longest canonical `ip` value: a full IPv4-mapped IPv6 address.
pub const IP_TEXT_MAX: usize = 45;

/// Longest `permanent-identifier` serial the server certifies, in octets (SPEC §4.5).
pub const SERIAL_MAX: usize = 128;

/// Longest `permanent-identifier` assigner OID text the server accepts, in octets (SPEC §4.5).
pub const ASSIGNER_MAX: usize = 128;

/// Which rule an identifier breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The `dns` name is empty or longer than 253 octets.
    NameLength,
    /// A label is empty or longer than 63 octets.
    LabelLength,
    /// A character other than `a`–`z`, `0`–`9`, `-` and the `.` between labels.
    Character,
    /// A label starts or ends with `-`.
    Hyphen,
    /// `--` in positions 3–4 of a label that does not start with `xn--` (RFC 5891 §4.2.3.1).
    ReservedLabel,
    /// An `xn--` label that is not well-formed Punycode (RFC 8555 §7.1.4).
    ALabel,
    /// The last label is all digits.
    NumericLastLabel,
    /// A `dns` value that is an IP address: it must be sent as type `ip`.
    IpAddressAsDns,
    /// A wildcard name (`*.` prefix): this CA offers no dns-01.
    Wildcard,
    /// An `ip` value that is not an IP address at all.
    NotAnAddress,
    /// An `ip` value that is an address but not in canonical text form.
    NotCanonical,
    /// The unspecified address (`0.0.0.0`, `::`).
    Unspecified,
    /// A multicast address.
    Multicast,
    /// A `permanent-identifier` with nothing before the `/` (or nothing at all).
    EmptySerial,
    /// A `permanent-identifier` whose part after the `/` is not a dotted-decimal OID.
    AssignerSyntax,
    /// A `permanent-identifier` serial with a control character (U+0000–U+001F, U+007F–U+009F).
    ControlCharacter,
    /// A `permanent-identifier` serial longer than [`SERIAL_MAX`] octets.
    SerialLength,
    /// An assigner longer than [`ASSIGNER_MAX`] octets, or with an arc beyond 64 bits.
    AssignerRange,
}

/// An identifier the server would refuse, with the problem type it would use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentifierError {
    /// Refused as `malformed`.
    Malformed(Reason),
    /// Refused as `rejectedIdentifier`: well-formed, but against CA policy.
    Rejected(Reason),
}

impl IdentifierError {
    /// The problem type name (after `urn:ietf:params:acme:error:`).
    pub fn problem_type(self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Rejected(_) => "rejectedIdentifier",
        }
    }

    /// The rule that was broken.
    pub fn reason(self) -> Reason {
        match self {
            Self::Malformed(r) | Self::Rejected(r) => r,
        }
    }
}

impl Reason {
    /// The rule, in words, for a problem detail or a log line.
    pub fn explain(self) -> &'static str {
        match self {
            Self::NameLength => "name must be 1-253 octets",
            Self::LabelLength => "each label must be 1-63 octets",
            Self::Character => "only a-z, 0-9, '-' and '.' are allowed",
            Self::Hyphen => "a label must not start or end with '-'",
            Self::ReservedLabel => "'--' in positions 3-4 is reserved for xn-- labels",
            Self::ALabel => "xn-- label is not well-formed Punycode",
            Self::NumericLastLabel => "the last label must not be all digits",
            Self::IpAddressAsDns => "an IP address must be sent as type ip",
            Self::Wildcard => "wildcard names are not issued",
            Self::NotAnAddress => "not an IP address",
            Self::NotCanonical => "IP address is not in canonical text form",
            Self::Unspecified => "the unspecified address cannot be certified",
            Self::Multicast => "a multicast address cannot be certified",
            Self::EmptySerial => "the serial before the '/' must not be empty",
            Self::AssignerSyntax => "the part after '/' must be a dotted-decimal OID",
            Self::ControlCharacter => "the serial must not contain control characters",
            Self::SerialLength => "the serial must be at most 128 octets",
            Self::AssignerRange => "the assigner OID is too long or has an arc over 64 bits",
        }
    }
}

impl core::fmt::Display for IdentifierError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.problem_type(), self.reason().explain())
    }
}

/// Normalises and checks a `dns` value (SPEC §4.2) and writes the canonical value into `out`.
///
/// `out` needs at most [`DNS_NAME_MAX`] octets; if it is shorter than the name, the name is
/// refused as too long for it, so give it at least that much.
pub fn normalize_dns<'o>(value: &str, out: &'o mut [u8]) -> Result<&'o str, IdentifierError> {
    use IdentifierError::{Malformed, Rejected};
    // Step 1 and 2: lower-case ASCII, drop one trailing dot.
    let v = value.strip_suffix('.').unwrap_or(value).as_bytes();
    let Some(name) = out.get_mut(..v.len()).filter(|_| v.len() <= DNS_NAME_MAX) else {
        return Err(Malformed(Reason::NameLength));
    };
    for (o, c) in name.iter_mut().zip(v) {
        *o = c.to_ascii_lowercase();
    }
    let name: &[u8] = name;
    let text = core::str::from_utf8(name).map_err(|_| Malformed(Reason::Character))?;
    if ip::parse(name).is_some() {
        return Err(Malformed(Reason::IpAddressAsDns));
    }
    if name.starts_with(b"*.") {
        return Err(Rejected(Reason::Wildcard));
    }
    if name.is_empty() {
        return Err(Malformed(Reason::NameLength));
    }
    for label in name.split(|&c| c == b'.') {
        check_label(label).map_err(Malformed)?;
    }
    let last = name.rsplit(|&c| c == b'.').next().unwrap_or(name);
    if last.iter().all(u8::is_ascii_digit) {
        return Err(Malformed(Reason::NumericLastLabel));
    }
    Ok(text)
}

// Not inlined into normalize_dns: 50 octets smaller in the embedded firmware
// (scripts/embedded-footprint.sh).
#[inline(never)]
fn check_label(label: &[u8]) -> Result<(), Reason> {
    if label.is_empty() || label.len() > 63 {
        return Err(Reason::LabelLength);
    }
    if !label
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(Reason::Character);
    }
    if label.starts_with(b"-") || label.ends_with(b"-") {
        return Err(Reason::Hyphen);
    }
    if label.get(2..4) == Some(b"--") {
        match label.strip_prefix(b"xn--") {
            Some(encoded) if punycode::is_canonical(encoded) => {}
            Some(_) => return Err(Reason::ALabel),
            None => return Err(Reason::ReservedLabel),
        }
    }
    Ok(())
}

/// Checks an `ip` value (SPEC §4.3). The value is never rewritten: it must already be the
/// canonical text, and the address is returned.
pub fn check_ip(value: &str) -> Result<IpAddr, IdentifierError> {
    use IdentifierError::{Malformed, Rejected};
    let addr = ip::parse(value.as_bytes()).ok_or(Malformed(Reason::NotAnAddress))?;
    // RFC 5952 §4 text, with the §5 mixed form for IPv4-mapped addresses: what `core`'s
    // `Display` writes (see `ip`).
    let mut buf = [0u8; IP_TEXT_MAX];
    let n = ip::write(&addr, &mut buf);
    if buf.get(..n) != Some(value.as_bytes()) {
        return Err(Malformed(Reason::NotCanonical));
    }
    if addr.is_unspecified() {
        return Err(Rejected(Reason::Unspecified));
    }
    if addr.is_multicast() {
        return Err(Rejected(Reason::Multicast));
    }
    Ok(addr)
}

/// A `permanent-identifier` value split into its parts (SPEC §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermanentIdentifier<'a> {
    /// The device serial: what goes into identifierValue, octet for octet.
    pub serial: &'a str,
    /// The assigner OID, dotted-decimal, if the value has one.
    pub assigner: Option<&'a str>,
}

/// Checks a `permanent-identifier` value (SPEC §4.5): `serial["/"assignerOID]` by the ABNF of
/// draft-ietf-acme-device-attest §3.1 (breaches are `malformed`), then the server's policy
/// (control characters, lengths and arcs beyond 64 bits are `rejectedIdentifier`). The value is
/// never rewritten.
pub fn check_permanent_identifier(value: &str) -> Result<PermanentIdentifier<'_>, IdentifierError> {
    use IdentifierError::{Malformed, Rejected};
    // By octets, here and below: `str` patterns and `char` iteration cost a microcontroller
    // image about a kilobyte, and every delimiter is ASCII (so every split is on a character
    // boundary).
    let (serial, assigner) = match value.bytes().position(|b| b == b'/') {
        Some(i) => (value.get(..i).unwrap_or_default(), value.get(i + 1..)),
        None => (value, None),
    };
    if serial.is_empty() {
        return Err(Malformed(Reason::EmptySerial));
    }
    let mut arcs_fit = true;
    if let Some(a) = assigner {
        arcs_fit = check_assigner(a.as_bytes()).map_err(Malformed)?;
    }
    if has_control_character(serial.as_bytes()) {
        return Err(Rejected(Reason::ControlCharacter));
    }
    if serial.len() > SERIAL_MAX {
        return Err(Rejected(Reason::SerialLength));
    }
    if assigner.is_some_and(|a| a.len() > ASSIGNER_MAX) || !arcs_fit {
        return Err(Rejected(Reason::AssignerRange));
    }
    Ok(PermanentIdentifier { serial, assigner })
}

/// Whether UTF-8 `text` has a character of general category Cc (`char::is_control`):
/// U+0000–U+001F and U+007F, one octet each, or U+0080–U+009F, encoded as C2 80–C2 9F.
fn has_control_character(text: &[u8]) -> bool {
    text.iter().enumerate().any(|(i, &b)| {
        b < 0x20
            || b == 0x7f
            || (b == 0xc2 && text.get(i + 1).is_some_and(|n| (0x80..0xa0).contains(n)))
    })
}

/// The value of one dotted-decimal OID arc: `None` if it is empty, has anything but ASCII
/// digits or does not fit in 64 bits. Leading zeros are the caller's to refuse.
pub fn oid_arc(arc: &[u8]) -> Option<u64> {
    if arc.is_empty() {
        return None;
    }
    arc.iter().try_fold(0u64, |n, &b| {
        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

/// The assigner-value production; `Ok(false)` if it holds but an arc (or 80 plus the second
/// arc under 2) does not fit in 64 bits.
// Out of line: 12 octets smaller in the embedded firmware (scripts/embedded-footprint.sh).
#[inline(never)]
fn check_assigner(text: &[u8]) -> Result<bool, Reason> {
    let mut fits = true;
    let mut count = 0;
    let mut first: &[u8] = b"";
    for (i, arc) in text.split(|&b| b == b'.').enumerate() {
        count += 1;
        if arc.is_empty()
            || !arc.iter().all(u8::is_ascii_digit)
            || (arc.len() > 1 && arc[0] == b'0')
        {
            return Err(Reason::AssignerSyntax);
        }
        let n = oid_arc(arc);
        match i {
            0 if !matches!(arc, b"0" | b"1" | b"2") => return Err(Reason::AssignerSyntax),
            0 => first = arc,
            1 if first != b"2" && n.is_none_or(|n| n > 39) => return Err(Reason::AssignerSyntax),
            1 => fits &= n.is_some_and(|n| n <= u64::MAX - 80),
            _ => fits &= n.is_some(),
        }
    }
    if count < 2 {
        return Err(Reason::AssignerSyntax);
    }
    Ok(fits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_identifiers_split_and_are_kept_as_sent() {
        assert_eq!(
            check_permanent_identifier("Sn-0042/1.3.6.1.4.1.32473"),
            Ok(PermanentIdentifier {
                serial: "Sn-0042",
                assigner: Some("1.3.6.1.4.1.32473")
            })
        );
        fn r(v: &str) -> Result<Option<&str>, Reason> {
            check_permanent_identifier(v)
                .map(|p| p.assigner)
                .map_err(IdentifierError::reason)
        }
        assert_eq!(r("/1.2"), Err(Reason::EmptySerial));
        assert_eq!(r("A/1.40"), Err(Reason::AssignerSyntax));
        assert_eq!(r("A/2.40"), Ok(Some("2.40")));
        assert_eq!(r("A\u{85}"), Err(Reason::ControlCharacter));
        assert_eq!(r("A/2.18446744073709551600"), Err(Reason::AssignerRange));
    }

    /// `check_ip` as it was written over `core::net` (parse, print, compare), which `ip`
    /// replaced to keep `core::fmt` out of microcontroller images: same results on every input.
    #[test]
    fn check_ip_is_unchanged_from_core_net() {
        use std::string::ToString;
        fn reference(value: &str) -> Result<IpAddr, IdentifierError> {
            use IdentifierError::{Malformed, Rejected};
            let addr: IpAddr = value.parse().map_err(|_| Malformed(Reason::NotAnAddress))?;
            if addr.to_string() != value {
                return Err(Malformed(Reason::NotCanonical));
            }
            if addr.is_unspecified() {
                return Err(Rejected(Reason::Unspecified));
            }
            if addr.is_multicast() {
                return Err(Rejected(Reason::Multicast));
            }
            Ok(addr)
        }
        // Short texts over the characters of addresses (xorshift, so a failure reproduces).
        let mut seed = 0x5eed_u64;
        let mut outcomes = std::collections::BTreeSet::new();
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 16) as usize;
            let text: std::string::String = (0..len)
                .map(|k| char::from(b"0f:.1F:2:.e"[((seed >> (4 + 4 * k)) % 11) as usize]))
                .collect();
            let (ours, theirs) = (check_ip(&text), reference(&text));
            assert_eq!(ours, theirs, "{text:?}");
            outcomes.insert(std::format!("{:?}", ours.map(|_| ())));
        }
        for text in [
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "::ffff:224.0.0.1",
            "::ffff:0.0.0.0",
        ] {
            assert_eq!(check_ip(text), reference(text), "{text:?}");
        }
        // Accepted, not an address, not canonical, unspecified and multicast all came up.
        assert_eq!(outcomes.len(), 5, "{outcomes:?}");
    }

    /// `check_permanent_identifier` as it was written over `str` patterns, `chars()` and
    /// `str::parse`: same results on every input.
    #[test]
    fn permanent_identifier_check_is_unchanged_from_the_str_version() {
        fn reference(value: &str) -> Result<PermanentIdentifier<'_>, IdentifierError> {
            use IdentifierError::{Malformed, Rejected};
            let (serial, assigner) = match value.split_once('/') {
                Some((serial, assigner)) => (serial, Some(assigner)),
                None => (value, None),
            };
            if serial.is_empty() {
                return Err(Malformed(Reason::EmptySerial));
            }
            let mut arcs_fit = true;
            if let Some(a) = assigner {
                arcs_fit = reference_assigner(a).map_err(Malformed)?;
            }
            if serial.chars().any(char::is_control) {
                return Err(Rejected(Reason::ControlCharacter));
            }
            if serial.len() > SERIAL_MAX {
                return Err(Rejected(Reason::SerialLength));
            }
            if assigner.is_some_and(|a| a.len() > ASSIGNER_MAX) || !arcs_fit {
                return Err(Rejected(Reason::AssignerRange));
            }
            Ok(PermanentIdentifier { serial, assigner })
        }
        fn reference_assigner(text: &str) -> Result<bool, Reason> {
            let mut fits = true;
            let mut count = 0;
            let mut first = "";
            for (i, arc) in text.split('.').enumerate() {
                count += 1;
                if arc.is_empty()
                    || !arc.bytes().all(|b| b.is_ascii_digit())
                    || (arc.len() > 1 && arc.starts_with('0'))
                {
                    return Err(Reason::AssignerSyntax);
                }
                let n = arc.parse::<u64>().ok();
                match i {
                    0 if !matches!(arc, "0" | "1" | "2") => return Err(Reason::AssignerSyntax),
                    0 => first = arc,
                    1 if first != "2" && n.is_none_or(|n| n > 39) => {
                        return Err(Reason::AssignerSyntax)
                    }
                    1 => fits &= n.is_some_and(|n| n <= u64::MAX - 80),
                    _ => fits &= n.is_some(),
                }
            }
            if count < 2 {
                return Err(Reason::AssignerSyntax);
            }
            Ok(fits)
        }
        // Pieces that reach every branch: serial characters (controls of one and two octets,
        // their neighbours, other non-ASCII), separators, arcs near the 64-bit limit.
        const PIECES: [&str; 20] = [
            "A",
            "/",
            ".",
            "0",
            "1",
            "2",
            "39",
            "40",
            "07",
            "18446744073709551535",
            "18446744073709551615",
            "18446744073709551616",
            "\u{0}",
            "\u{1f}",
            "\u{7f}",
            "\u{80}",
            "\u{9f}",
            "\u{a0}",
            "\u{100}",
            "+1",
        ];
        let mut seed = 0x0bad_5eed_u64;
        let mut outcomes = std::collections::BTreeSet::new();
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let text: std::string::String = (0..(seed % 8) as usize)
                .map(|k| PIECES[((seed >> (4 + 5 * k)) % 20) as usize])
                .collect();
            let (ours, theirs) = (check_permanent_identifier(&text), reference(&text));
            assert_eq!(ours, theirs, "{text:?}");
            outcomes.insert(std::format!("{:?}", ours.map(|p| p.assigner.is_some())));
        }
        // Accepted with and without an assigner, and every reason but the serial's length.
        assert_eq!(outcomes.len(), 6, "{outcomes:?}");
        let long = "S".repeat(SERIAL_MAX + 1);
        let long_assigner = std::format!("A/1.{}", "1".repeat(ASSIGNER_MAX));
        for text in [long.as_str(), long_assigner.as_str()] {
            assert_eq!(check_permanent_identifier(text), reference(text));
        }
        assert_eq!(
            check_permanent_identifier(&long).map_err(IdentifierError::reason),
            Err(Reason::SerialLength)
        );
    }

    #[test]
    fn normalises_into_small_buffers_or_says_why_not() {
        let mut out = [0u8; 8];
        assert_eq!(normalize_dns("PLC-7.", &mut out), Ok("plc-7"));
        assert_eq!(
            normalize_dns("plc-7.example", &mut out),
            Err(IdentifierError::Malformed(Reason::NameLength))
        );
    }

    #[test]
    fn reasons_are_specific() {
        let mut out = [0u8; DNS_NAME_MAX];
        let r = |v: &str, out: &mut [u8]| {
            normalize_dns(v, out)
                .map(|_| ())
                .map_err(IdentifierError::reason)
        };
        assert_eq!(r("ab--cd.example", &mut out), Err(Reason::ReservedLabel));
        assert_eq!(r("xn--zz.example", &mut out), Err(Reason::ALabel));
        assert_eq!(r("plc.123", &mut out), Err(Reason::NumericLastLabel));
        assert_eq!(r("10.0.0.1", &mut out), Err(Reason::IpAddressAsDns));
        assert_eq!(
            check_ip("::ffff:c000:207").map_err(IdentifierError::reason),
            Err(Reason::NotCanonical)
        );
    }
}
