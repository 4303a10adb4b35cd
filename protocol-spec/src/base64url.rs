//! Strict base64url without padding (RFC 4648 §5, as RFC 8555 §6.1 uses it). SPEC §3.7.
//!
//! "Strict" means that every accepted string is the one an encoder would write for its octets:
//! no padding, no characters outside the alphabet, no impossible lengths and no stray bits in the
//! last character. Two different strings therefore never decode to the same octets, so a value
//! can be compared in either form.

use crate::write::ascii;
use crate::BufferTooSmall;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Why a string is not strict base64url.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A `=` at `index`: padding is not allowed (RFC 8555 §6.1).
    Padding {
        /// Octet offset in the input.
        index: usize,
    },
    /// An octet outside the base64url alphabet at `index` (`+`, `/`, whitespace, non-ASCII…).
    InvalidByte {
        /// Octet offset in the input.
        index: usize,
    },
    /// The length leaves a single character after the last group of four, which no encoder
    /// produces.
    Length,
    /// The unused low bits of the last character are not zero, so the string is not the
    /// encoding of what it decodes to.
    TrailingBits,
    /// The output buffer is too small.
    BufferTooSmall(BufferTooSmall),
}

impl DecodeError {
    /// A short stable name, as used in the vectors: `padding`, `alphabet`, `length`,
    /// `trailing-bits` or `buffer`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Padding { .. } => "padding",
            Self::InvalidByte { .. } => "alphabet",
            Self::Length => "length",
            Self::TrailingBits => "trailing-bits",
            Self::BufferTooSmall(_) => "buffer",
        }
    }
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Padding { index } => write!(f, "padding '=' at offset {index}"),
            Self::InvalidByte { index } => {
                write!(
                    f,
                    "octet at offset {index} is outside the base64url alphabet"
                )
            }
            Self::Length => f.write_str("length is 1 more than a multiple of 4"),
            Self::TrailingBits => f.write_str("non-zero bits after the last octet"),
            Self::BufferTooSmall(e) => e.fmt(f),
        }
    }
}

/// Length of the encoding of `n` octets.
pub const fn encoded_len(n: usize) -> usize {
    n / 3 * 4 + [0, 2, 3][n % 3]
}

/// Number of octets a string of `encoded` characters decodes to, or `None` for an impossible
/// length.
pub const fn decoded_len(encoded: usize) -> Option<usize> {
    match encoded % 4 {
        1 => None,
        r => Some(encoded / 4 * 3 + [0, 0, 1, 2][r]),
    }
}

/// The 6-bit value of an alphabet character; 0 for anything else (call [`validate`] first).
pub(crate) fn sextet(c: u8) -> u8 {
    value(c).unwrap_or(0)
}

fn value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Encodes `input` into `out` and returns the text written.
pub fn encode<'o>(input: &[u8], out: &'o mut [u8]) -> Result<&'o str, BufferTooSmall> {
    let needed = encoded_len(input.len());
    let Some(out) = out.get_mut(..needed) else {
        return Err(BufferTooSmall { needed });
    };
    // Each group of up to 3 octets as a 24-bit number, written 6 bits at a time from the top:
    // n octets give n + 1 characters. Plain indexing, no iterator adapters: this runs on
    // microcontrollers, where they cost code.
    let mut at = 0;
    for group in input.chunks(3) {
        let bits = group
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for k in 0..=group.len() {
            if let Some(d) = out.get_mut(at) {
                *d = ALPHABET[(bits >> (18 - 6 * k)) as usize & 0x3f];
            }
            at += 1;
        }
    }
    Ok(ascii(out))
}

/// Checks that `input` is strict base64url and returns how many octets it decodes to, without
/// writing them anywhere. Errors come in the same order as from [`decode`].
pub fn validate(input: &str) -> Result<usize, DecodeError> {
    let bytes = input.as_bytes();
    if let Some(index) = bytes.iter().position(|&c| value(c).is_none()) {
        return Err(if bytes[index] == b'=' {
            DecodeError::Padding { index }
        } else {
            DecodeError::InvalidByte { index }
        });
    }
    let len = decoded_len(bytes.len()).ok_or(DecodeError::Length)?;
    // Only the last character can carry unused bits: 4 of them after 2 characters, 2 after 3.
    let unused_mask = match bytes.len() % 4 {
        2 => 0x0f,
        3 => 0x03,
        _ => 0,
    };
    if let Some(&last) = bytes.last() {
        if value(last).unwrap_or(0) & unused_mask != 0 {
            return Err(DecodeError::TrailingBits);
        }
    }
    Ok(len)
}

/// Decodes strict base64url `input` into `out` and returns the octets written.
///
/// Checks, in this order: alphabet (with `=` reported as [`DecodeError::Padding`]), length,
/// trailing bits, output size.
pub fn decode<'o>(input: &str, out: &'o mut [u8]) -> Result<&'o [u8], DecodeError> {
    let needed = validate(input)?;
    let Some(out) = out.get_mut(..needed) else {
        return Err(DecodeError::BufferTooSmall(BufferTooSmall { needed }));
    };
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut n = 0;
    for &c in input.as_bytes() {
        acc = (acc << 6) | u32::from(value(c).unwrap_or(0));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            // `validate` fixed the output length, so `n` stays in range.
            if let Some(o) = out.get_mut(n) {
                *o = (acc >> bits) as u8;
            }
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        for n in 0..10 {
            assert_eq!(decoded_len(encoded_len(n)), Some(n));
        }
        assert_eq!(decoded_len(5), None);
    }

    #[test]
    fn every_octet_round_trips() {
        let all: [u8; 256] = core::array::from_fn(|i| i as u8);
        let mut text = [0u8; 342];
        let mut back = [0u8; 256];
        for len in 0..=256 {
            let t = encode(&all[..len], &mut text).expect("encode");
            assert_eq!(decode(t, &mut back).expect("decode"), &all[..len]);
        }
    }

    #[test]
    fn small_buffers_are_reported() {
        let mut out = [0u8; 3];
        assert_eq!(encode(b"foo!", &mut out), Err(BufferTooSmall { needed: 6 }));
        let mut out = [0u8; 2];
        assert_eq!(
            decode("Zm9v", &mut out),
            Err(DecodeError::BufferTooSmall(BufferTooSmall { needed: 3 }))
        );
    }
}
