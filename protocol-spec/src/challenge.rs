//! Challenge helpers: key authorizations (RFC 8555 §8.1), the tls-alpn-01 acmeIdentifier
//! extension (RFC 8737 §3) and the reverse-mapping names that tls-alpn-01 uses as SNI for `ip`
//! identifiers (RFC 8738 §6). SPEC §5.2, §5.4.

use core::fmt::Write as _;
use core::net::IpAddr;

use crate::base64url;
use crate::jwk::THUMBPRINT_LEN;
use crate::write::Cursor;
use crate::BufferTooSmall;

/// The ALPN protocol name of tls-alpn-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN_PROTOCOL: &[u8] = b"acme-tls/1";

/// Content octets of the DER OBJECT IDENTIFIER `1.3.6.1.5.5.7.1.31`, id-pe-acmeIdentifier
/// (RFC 8737 §6.1), without the tag and length.
pub const ACME_IDENTIFIER_OID: [u8; 8] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];

/// Longest reverse-mapping name: 32 nibbles and dots, then `ip6.arpa`.
pub const REVERSE_DNS_NAME_MAX: usize = 72;

/// Why a key authorization cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAuthorizationError {
    /// The token is empty or has a character outside the base64url alphabet. Such a token must
    /// never reach a file path or URL (SPEC §5.2).
    Token,
    /// The thumbprint is not 43 characters of strict base64url.
    Thumbprint,
    /// The output buffer is too small.
    BufferTooSmall(BufferTooSmall),
}

impl core::fmt::Display for KeyAuthorizationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Token => f.write_str("challenge token is empty or not base64url"),
            Self::Thumbprint => f.write_str("thumbprint is not 43 base64url characters"),
            Self::BufferTooSmall(e) => e.fmt(f),
        }
    }
}

/// Length of the key authorization for a token of `token_len` characters.
pub const fn key_authorization_len(token_len: usize) -> usize {
    token_len + 1 + THUMBPRINT_LEN
}

/// Checks a challenge token: non-empty and base64url characters only.
///
/// The token is only ever compared and copied, never decoded, so its length need not be a valid
/// encoding length; what matters is that it cannot carry `/`, `.` or anything else with a
/// meaning in a path.
pub fn check_token(token: &str) -> Result<(), KeyAuthorizationError> {
    let ok = !token.is_empty()
        && token
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(KeyAuthorizationError::Token)
    }
}

/// Checks a thumbprint text: 43 characters of strict base64url.
pub(crate) fn check_thumbprint(thumbprint: &str) -> Result<(), KeyAuthorizationError> {
    if thumbprint.len() == THUMBPRINT_LEN && base64url::validate(thumbprint).is_ok() {
        Ok(())
    } else {
        Err(KeyAuthorizationError::Thumbprint)
    }
}

/// Writes `token.thumbprint` into `out` (RFC 8555 §8.1) after checking both parts.
///
/// `thumbprint` is the base64url RFC 7638 thumbprint of the account key
/// (see [`crate::jwk::thumbprint_text`]).
pub fn key_authorization<'o>(
    token: &str,
    thumbprint: &str,
    out: &'o mut [u8],
) -> Result<&'o str, KeyAuthorizationError> {
    check_token(token)?;
    check_thumbprint(thumbprint)?;
    let mut w = Cursor::new(out);
    for part in [token, ".", thumbprint] {
        w.push(part.as_bytes()).map_err(|_| {
            KeyAuthorizationError::BufferTooSmall(BufferTooSmall {
                needed: key_authorization_len(token.len()),
            })
        })?;
    }
    Ok(w.written_str())
}

/// The extnValue of the acmeIdentifier extension for the SHA-256 `digest` of a key
/// authorization: the DER OCTET STRING `04 20 ‖ digest` (RFC 8737 §3). The extension itself must
/// be marked critical.
pub fn acme_identifier_value(digest: &[u8; 32]) -> [u8; 34] {
    let mut v = [0u8; 34];
    v[0] = 0x04;
    v[1] = 0x20;
    v[2..].copy_from_slice(digest);
    v
}

/// The reverse-mapping name of `ip`, without the trailing root dot: `7.2.0.192.in-addr.arpa`
/// or the 32-nibble `….ip6.arpa` name. tls-alpn-01 puts it in the SNI for an `ip` identifier
/// (RFC 8738 §6).
pub fn reverse_dns_name(ip: IpAddr, out: &mut [u8; REVERSE_DNS_NAME_MAX]) -> &str {
    let mut w = Cursor::new(out);
    // At most 72 octets, which `out` always holds, so the writes cannot fail.
    let _ = match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            write!(w, "{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut r = Ok(());
            for octet in v6.octets().iter().rev() {
                let nibbles = [
                    HEX[usize::from(octet & 0x0f)],
                    b'.',
                    HEX[usize::from(octet >> 4)],
                    b'.',
                ];
                r = r.and(w.push(&nibbles).map_err(|_| core::fmt::Error));
            }
            r.and(w.write_str("ip6.arpa"))
        }
    };
    w.written_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_authorization_checks_its_parts() {
        let tp = "VJfSzL4hUAWCLxLmyqlEzZifphbmhOkF0nOyxVIRMXg";
        let mut out = [0u8; 128];
        assert_eq!(
            key_authorization("tok", tp, &mut out),
            Ok("tok.VJfSzL4hUAWCLxLmyqlEzZifphbmhOkF0nOyxVIRMXg")
        );
        let mut small = [0u8; 10];
        assert_eq!(
            key_authorization("tok", tp, &mut small),
            Err(KeyAuthorizationError::BufferTooSmall(BufferTooSmall {
                needed: 47
            }))
        );
        assert_eq!(
            key_authorization("a b", tp, &mut out),
            Err(KeyAuthorizationError::Token)
        );
    }

    #[test]
    fn oid_is_id_pe_acme_identifier() {
        // 1.3 -> 43, then 6.1.5.5.7 (id-pkix), 1 (id-pe), 31.
        assert_eq!(ACME_IDENTIFIER_OID[0], 40 + 3);
        assert_eq!(ACME_IDENTIFIER_OID[7], 31);
    }
}
