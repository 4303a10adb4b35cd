//! The text form of a root certificate fingerprint (SPEC §2.3): SHA-256 over the certificate's
//! DER, as 32 uppercase hex pairs joined by `:`. This is what the server prints and what an
//! operator types into a device.

use crate::write::ascii;

/// Length of the canonical text: 32 pairs and 31 separators.
pub const FINGERPRINT_TEXT_LEN: usize = 95;

/// Why a fingerprint text is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FingerprintError {
    /// Not 95 characters (with separators) or 64 (without): not a SHA-256 fingerprint.
    Length,
    /// A character in a digit position is not a hex digit.
    Digit,
    /// A separator position does not hold `:`, or a `:` stands where a digit belongs.
    Separator,
}

impl core::fmt::Display for FingerprintError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Length => "a SHA-256 fingerprint has 32 hex pairs",
            Self::Digit => "fingerprint has a character that is not a hex digit",
            Self::Separator => "fingerprint pairs must all be separated by ':' or none",
        })
    }
}

/// Writes the canonical text of `digest` into `out`.
pub fn format<'o>(digest: &[u8; 32], out: &'o mut [u8; FINGERPRINT_TEXT_LEN]) -> &'o str {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for (i, b) in digest.iter().enumerate() {
        out[3 * i] = HEX[usize::from(b >> 4)];
        out[3 * i + 1] = HEX[usize::from(b & 0x0f)];
        if let Some(sep) = out.get_mut(3 * i + 2) {
            *sep = b':';
        }
    }
    ascii(out)
}

/// Parses a fingerprint typed by an operator. Accepts the canonical form, lowercase digits, and
/// the 64 digits without separators (the leniency SPEC §2.3 allows); all 32 octets must be
/// there.
pub fn parse(text: &str) -> Result<[u8; 32], FingerprintError> {
    let t = text.as_bytes();
    let stride = match t.len() {
        FINGERPRINT_TEXT_LEN => 3,
        64 => 2,
        _ => return Err(FingerprintError::Length),
    };
    let mut digest = [0u8; 32];
    for (i, d) in digest.iter_mut().enumerate() {
        let at = i * stride;
        if stride == 3 && i < 31 && t[at + 2] != b':' {
            return Err(FingerprintError::Separator);
        }
        let hi = hex(t[at])?;
        let lo = hex(t[at + 1])?;
        *d = (hi << 4) | lo;
    }
    Ok(digest)
}

fn hex(c: u8) -> Result<u8, FingerprintError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        b':' => Err(FingerprintError::Separator),
        _ => Err(FingerprintError::Digit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_then_parse() {
        let digest: [u8; 32] = core::array::from_fn(|i| (i * 37) as u8);
        let mut out = [0u8; FINGERPRINT_TEXT_LEN];
        let text = format(&digest, &mut out);
        assert!(text.starts_with("00:25:4A:"), "{text}");
        assert_eq!(parse(text), Ok(digest));
    }
}
