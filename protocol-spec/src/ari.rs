//! The ACME Renewal Information certificate identifier (RFC 9773 §4.1). SPEC §9.2.
//!
//! ```text
//! certID = base64url(AKI keyIdentifier) "." base64url(serial)
//! ```
//!
//! where the key identifier is the `keyIdentifier` of the certificate's Authority Key Identifier
//! extension and the serial is the content octets of its DER `serialNumber` INTEGER, a leading
//! zero octet included. Both parts are strict base64url (SPEC §3.7), so `=` padding is refused.
//!
//! A device writes the identifier of its certificate with [`cert_id`] (for `GET
//! {renewalInfo}/{certID}` and a newOrder `replaces`); the server takes one apart with
//! [`CertId::parse`] and [`decode`]. Every identifier [`cert_id`] writes parses, and every
//! identifier that parses is the one [`cert_id`] writes for the octets it decodes to.
//!
//! Finding the key identifier and the serial in a certificate is left to the caller, who already
//! parses X.509. The parts are not checked as DER: an identifier that names no certificate of the
//! server is a lookup miss (404), not a syntax error.
//!
//! <https://www.rfc-editor.org/rfc/rfc9773#section-4.1>

use crate::base64url::{self, DecodeError};
use crate::write::ascii;
use crate::BufferTooSmall;

/// One of the two parts of an identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The Authority Key Identifier's `keyIdentifier`, before the `.`.
    Aki,
    /// The serial's DER content octets, after the `.`.
    Serial,
}

impl Part {
    /// `aki` or `serial`, as in the vectors.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aki => "aki",
            Self::Serial => "serial",
        }
    }
}

/// Why an identifier cannot be written or is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertIdError {
    /// The text does not have exactly one `.`.
    Separator,
    /// A part is empty: no certificate has an empty key identifier or serial.
    Empty(Part),
    /// A part is not strict base64url.
    Encoding(Part, DecodeError),
    /// The output buffer is too small.
    BufferTooSmall(BufferTooSmall),
}

impl CertIdError {
    /// A short stable name, as used in the vectors: `separator`, `empty`, `encoding` or
    /// `buffer`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Separator => "separator",
            Self::Empty(_) => "empty",
            Self::Encoding(..) => "encoding",
            Self::BufferTooSmall(_) => "buffer",
        }
    }

    /// The part at fault, if the error concerns one.
    pub fn part(self) -> Option<Part> {
        match self {
            Self::Empty(p) | Self::Encoding(p, _) => Some(p),
            Self::Separator | Self::BufferTooSmall(_) => None,
        }
    }
}

impl core::fmt::Display for CertIdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let part = |p: Part| match p {
            Part::Aki => "key identifier",
            Part::Serial => "serial",
        };
        match self {
            Self::Separator => {
                f.write_str("a certificate identifier is two base64url parts joined by one '.'")
            }
            Self::Empty(p) => write!(f, "the certificate identifier's {} is empty", part(*p)),
            Self::Encoding(p, e) => write!(
                f,
                "the certificate identifier's {} is not strict base64url: {e}",
                part(*p)
            ),
            Self::BufferTooSmall(e) => e.fmt(f),
        }
    }
}

impl From<BufferTooSmall> for CertIdError {
    fn from(e: BufferTooSmall) -> Self {
        Self::BufferTooSmall(e)
    }
}

/// Length of the identifier of a key identifier of `aki_len` octets and a serial of
/// `serial_len` octets, for sizing the buffer.
pub const fn cert_id_len(aki_len: usize, serial_len: usize) -> usize {
    base64url::encoded_len(aki_len) + 1 + base64url::encoded_len(serial_len)
}

/// Writes the identifier of the certificate whose Authority Key Identifier has `keyIdentifier`
/// `aki` and whose serial has the DER content octets `serial` into `out`.
///
/// Refuses an empty part, which [`CertId::parse`] would refuse.
pub fn cert_id<'o>(aki: &[u8], serial: &[u8], out: &'o mut [u8]) -> Result<&'o str, CertIdError> {
    if aki.is_empty() {
        return Err(CertIdError::Empty(Part::Aki));
    }
    if serial.is_empty() {
        return Err(CertIdError::Empty(Part::Serial));
    }
    let needed = cert_id_len(aki.len(), serial.len());
    let Some(out) = out.get_mut(..needed) else {
        return Err(BufferTooSmall { needed }.into());
    };
    let (aki_text, rest) = out.split_at_mut(base64url::encoded_len(aki.len()));
    base64url::encode(aki, aki_text)?;
    // `out` holds exactly the identifier, so there is room for the `.` and the serial.
    let Some((dot, serial_text)) = rest.split_first_mut() else {
        return Err(BufferTooSmall { needed }.into());
    };
    *dot = b'.';
    base64url::encode(serial, serial_text)?;
    Ok(ascii(out))
}

/// The two parts of a well-formed identifier, as base64url text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertId<'a> {
    /// base64url of the key identifier.
    pub aki: &'a str,
    /// base64url of the serial's content octets.
    pub serial: &'a str,
}

impl<'a> CertId<'a> {
    /// Splits `id` at its one `.` and checks both parts.
    ///
    /// Checks, in this order: exactly one `.`; the key identifier part is not empty; the serial
    /// part is not empty; the key identifier part is strict base64url; the serial part is.
    pub fn parse(id: &'a str) -> Result<Self, CertIdError> {
        let Some((aki, serial)) = id.split_once('.') else {
            return Err(CertIdError::Separator);
        };
        if serial.contains('.') {
            return Err(CertIdError::Separator);
        }
        for (part, text) in [(Part::Aki, aki), (Part::Serial, serial)] {
            if text.is_empty() {
                return Err(CertIdError::Empty(part));
            }
        }
        for (part, text) in [(Part::Aki, aki), (Part::Serial, serial)] {
            base64url::validate(text).map_err(|e| CertIdError::Encoding(part, e))?;
        }
        Ok(Self { aki, serial })
    }

    /// Octets the two parts decode to, together: the size of [`decode`]'s buffer.
    pub fn decoded_len(&self) -> usize {
        // Both parts passed `validate`, so their lengths are possible ones.
        let len = |t: &str| base64url::decoded_len(t.len()).unwrap_or(0);
        len(self.aki) + len(self.serial)
    }
}

/// Parses `id` and decodes both parts into `out`: returns the key identifier and the serial's
/// content octets, which lie next to each other in `out`.
pub fn decode<'o>(id: &str, out: &'o mut [u8]) -> Result<(&'o [u8], &'o [u8]), CertIdError> {
    let parts = CertId::parse(id)?;
    let needed = parts.decoded_len();
    if out.len() < needed {
        return Err(BufferTooSmall { needed }.into());
    }
    let aki_len = base64url::decoded_len(parts.aki.len()).unwrap_or(0);
    let (aki_out, serial_out) = out.split_at_mut(aki_len);
    let decode = |part, text, buf| {
        base64url::decode(text, buf).map_err(|e| match e {
            DecodeError::BufferTooSmall(e) => CertIdError::BufferTooSmall(e),
            e => CertIdError::Encoding(part, e),
        })
    };
    let aki = decode(Part::Aki, parts.aki, aki_out)?;
    let serial = decode(Part::Serial, parts.serial, serial_out)?;
    Ok((aki, serial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_it_parses() {
        let mut out = [0u8; 64];
        let id = cert_id(&[0x69, 0x88], &[0x00, 0x87], &mut out).expect("fits");
        assert_eq!(id, "aYg.AIc");
        assert_eq!(id.len(), cert_id_len(2, 2));
        let mut buf = [0u8; 4];
        assert_eq!(
            decode(id, &mut buf),
            Ok((&[0x69, 0x88][..], &[0x00, 0x87][..]))
        );
    }

    #[test]
    fn small_buffers_and_empty_parts_are_reported() {
        let mut out = [0u8; 6];
        assert_eq!(
            cert_id(&[1, 2], &[3, 4], &mut out),
            Err(CertIdError::BufferTooSmall(BufferTooSmall { needed: 7 }))
        );
        assert_eq!(
            cert_id(&[], &[3], &mut out),
            Err(CertIdError::Empty(Part::Aki))
        );
        assert_eq!(
            cert_id(&[1], &[], &mut out),
            Err(CertIdError::Empty(Part::Serial))
        );
        let mut buf = [0u8; 3];
        assert_eq!(
            decode("aYg.AIc", &mut buf),
            Err(CertIdError::BufferTooSmall(BufferTooSmall { needed: 4 }))
        );
    }
}
