//! Renewal (SPEC §9.2, RFC 9773): the ARI certificate ID of the current certificate, the
//! server's suggested renewal window, and when to renew without one (2/3 of the lifetime, as
//! the std client does). A renewal is a new [`crate::Enrollment`] with a fresh certificate key
//! and [`crate::Config::replaces`] set to the certificate ID.

use protocol_spec::ari::{self, CertId, CertIdError};

use crate::der::{self, digits, unix_seconds, CertInfo};
use crate::http::{self, Response};
use crate::json::{self, Value};
use crate::text::{Text, Writer};
use crate::Error;

/// Decodes the first `CERTIFICATE` block of a PEM chain (RFC 7468) into `out`.
pub fn first_certificate_der<'o>(pem: &[u8], out: &'o mut [u8]) -> Result<&'o [u8], Error> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    const BAD: Error = Error::BadJson("PEM certificate");
    let start = find(pem, BEGIN).ok_or(BAD)? + BEGIN.len();
    let len = find(&pem[start..], END).ok_or(BAD)?;
    let mut acc = 0u32;
    let mut bits = 0;
    let mut n = 0;
    for &c in &pem[start..start + len] {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' | b' ' | b'\t' => continue,
            _ => return Err(BAD),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)
                .ok_or(Error::BufferTooSmall { needed: n + 1 })? = (acc >> bits) as u8;
            n += 1;
        }
    }
    Ok(&out[..n])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The ARI certificate ID (RFC 9773 §4.1, SPEC §9.2): base64url(AKI keyIdentifier) `.`
/// base64url(serial).
pub fn cert_id<'o>(cert_der: &[u8], out: &'o mut [u8]) -> Result<&'o str, Error> {
    let info = der::cert_info(cert_der)?;
    let aki = info.authority_key_id.ok_or(Error::BadJson(
        "certificate has no authority key identifier",
    ))?;
    ari::cert_id(aki, info.serial, out).map_err(|e| match e {
        CertIdError::BufferTooSmall(e) => e.into(),
        _ => Error::BadJson("certificate has an empty authority key identifier or serial"),
    })
}

/// The certificate's validity, for renewal without ARI.
pub fn certificate_info(cert_der: &[u8]) -> Result<CertInfo<'_>, Error> {
    der::cert_info(cert_der)
}

/// When to renew a certificate without a server window: after 2/3 of its lifetime.
pub fn renew_after_fallback(info: &CertInfo<'_>) -> u64 {
    let life = info.not_after.saturating_sub(info.not_before);
    info.not_before + life / 3 * 2
}

/// A suggested renewal window, Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub end: u64,
    /// The server's `Retry-After`: when to ask again.
    pub retry_after: Option<u32>,
}

impl Window {
    /// A time in the window chosen with `random` (any value from the RNG), so a fleet does not
    /// renew in the same second (RFC 9773 §4.2).
    pub fn pick(&self, random: u32) -> u64 {
        let span = self.end.saturating_sub(self.start);
        if span == 0 {
            return self.start;
        }
        self.start + u64::from(random) % span
    }
}

/// Asks the server for a certificate's renewal window: `GET /directory`, then
/// `GET {renewalInfo}/{certID}`. Same calling pattern as [`crate::Enrollment`].
pub struct RenewalCheck<'a> {
    host: &'a str,
    origin: &'a str,
    cert_id: &'a str,
    renewal_info: Option<Text<128>>,
}

impl<'a> RenewalCheck<'a> {
    pub fn new(base_url: &'a str, cert_id: &'a str) -> Result<Self, Error> {
        let host = base_url
            .strip_prefix("https://")
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .ok_or(Error::Config("base URL must be https://host[:port]"))?;
        if CertId::parse(cert_id).is_err() {
            return Err(Error::Config("certificate ID"));
        }
        Ok(Self {
            host,
            origin: base_url,
            cert_id,
            renewal_info: None,
        })
    }

    pub fn next_request(&self, tx: &mut [u8]) -> Result<usize, Error> {
        match &self.renewal_info {
            None => http::get(tx, self.host, "/directory"),
            Some(base) => {
                let mut path = [0u8; 256];
                let mut w = Writer::new(&mut path);
                w.str(base.as_str());
                w.byte(b'/');
                w.str(self.cert_id);
                let n = w.finish()?;
                http::get(
                    tx,
                    self.host,
                    core::str::from_utf8(&path[..n]).unwrap_or_default(),
                )
            }
        }
    }

    /// `Ok(None)`: call [`RenewalCheck::next_request`] again. `Ok(Some(window))`: done. A
    /// server without ARI gives [`Error::BadJson`]`("renewalInfo")`: fall back to
    /// [`renew_after_fallback`].
    pub fn handle_response(&mut self, rx: &mut [u8]) -> Result<Option<Window>, Error> {
        let resp = http::parse(rx)?;
        if resp.status != 200 {
            return Err(Error::UnexpectedStatus(resp.status));
        }
        let body = body(&resp)?;
        if self.renewal_info.is_none() {
            let url = body
                .get_str("renewalInfo")
                .ok_or(Error::BadJson("renewalInfo"))?;
            let path = url
                .strip_prefix(self.origin)
                .filter(|p| p.starts_with('/'))
                .ok_or(Error::BadUrl)?;
            self.renewal_info = Some(Text::copy_from(path).map_err(|_| Error::BadUrl)?);
            return Ok(None);
        }
        let w = body
            .get("suggestedWindow")
            .ok_or(Error::BadJson("suggestedWindow"))?;
        let start = w
            .get_str("start")
            .and_then(rfc3339)
            .ok_or(Error::BadJson("window start"))?;
        let end = w
            .get_str("end")
            .and_then(rfc3339)
            .ok_or(Error::BadJson("window end"))?;
        if end < start {
            return Err(Error::BadJson("window ends before it starts"));
        }
        Ok(Some(Window {
            start,
            end,
            retry_after: resp.retry_after(),
        }))
    }
}

fn body<'r>(resp: &Response<'r>) -> Result<Value<'r>, Error> {
    if resp.content_type() != Some("application/json") {
        return Err(Error::WrongContentType);
    }
    json::parse(resp.body).map_err(|_| Error::BadJson("body"))
}

/// An RFC 3339 UTC timestamp (`2026-11-25T12:00:00Z`, optional fraction, `Z` or `+00:00`) as
/// Unix seconds.
pub fn rfc3339(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    if rest != b"Z" && rest != b"z" && rest != b"+00:00" {
        return None;
    }
    let d = |r: core::ops::Range<usize>| digits(&b[r]);
    unix_seconds(
        d(0..4)?,
        d(5..7)?,
        d(8..10)?,
        d(11..13)?,
        d(14..16)?,
        d(17..19)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339("2026-11-25T12:30:15Z"), Some(1_795_609_815));
        assert_eq!(rfc3339("2026-11-25T12:30:15.250Z"), Some(1_795_609_815));
        assert_eq!(rfc3339("2026-11-25T12:30:15+00:00"), Some(1_795_609_815));
        assert_eq!(rfc3339("2026-11-25T12:30:15+01:00"), None);
        assert_eq!(rfc3339("2026-13-25T12:30:15Z"), None);
        assert_eq!(rfc3339("2026-11-25 12:30"), None);
    }

    #[test]
    fn window_pick_stays_inside() {
        let w = Window {
            start: 100,
            end: 200,
            retry_after: None,
        };
        for r in [0, 1, 99, 100, 12345, u32::MAX] {
            let t = w.pick(r);
            assert!((100..200).contains(&t));
        }
    }
}
