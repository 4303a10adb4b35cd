//! The HTTP/1.1 the client speaks (RFC 9112): it writes requests into the caller's buffer and
//! reads responses from it. Only what an ACME exchange needs: `GET` and `POST`, responses framed
//! by `Content-Length` or `chunked`, or (with `Connection: close`) by the end of the stream.

use crate::text::{move_down, Writer};
use crate::Error;

/// Room left at the start of the transmit buffer while the body is written, so the request line
/// and headers can go in front of it without a second buffer. Path and host are bounded by the
/// state machine's storage, so the head always fits.
pub(crate) const HEADROOM: usize = 320;

/// Writes `GET {path}` into `tx` and returns its length.
pub(crate) fn get(tx: &mut [u8], host: &str, path: &str) -> Result<usize, Error> {
    let mut w = Writer::new(tx);
    head(&mut w, "GET", host, path);
    w.str("\r\n");
    w.finish()
}

/// Puts the head of `POST {path}` in front of a `application/jose+json` body of `body_len`
/// octets that the caller wrote at `tx[HEADROOM..]`, and returns the request's length.
pub(crate) fn post_jose(
    tx: &mut [u8],
    host: &str,
    path: &str,
    body_len: usize,
) -> Result<usize, Error> {
    let head_len = {
        let room = tx.get_mut(..HEADROOM).ok_or(Error::BufferTooSmall {
            needed: HEADROOM + body_len,
        })?;
        let mut w = Writer::new(room);
        head(&mut w, "POST", host, path);
        w.str("Content-Type: application/jose+json\r\nContent-Length: ");
        w.decimal(body_len);
        w.str("\r\n\r\n");
        w.finish()?
    };
    let end = HEADROOM + body_len;
    if end > tx.len() {
        return Err(Error::BufferTooSmall { needed: end });
    }
    move_down(tx, HEADROOM..end, head_len);
    Ok(head_len + body_len)
}

fn head(w: &mut Writer<'_>, method: &str, host: &str, path: &str) {
    w.str(method);
    w.byte(b' ');
    w.str(path);
    w.str(" HTTP/1.1\r\nHost: ");
    w.str(host);
    w.str("\r\nUser-Agent: iiot-acme-embedded/");
    w.str(env!("CARGO_PKG_VERSION"));
    w.str("\r\nAccept: */*\r\n");
}

/// How much of the receive buffer is the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Read more.
    Partial,
    /// The response is the first `n` octets.
    Complete(usize),
}

/// Whether `buf` (what was read so far) holds a whole response. `eof`: the peer closed the
/// stream, which completes a response that has neither `Content-Length` nor `chunked`.
pub fn framing(buf: &[u8], eof: bool) -> Result<Framing, Error> {
    let Some(head_end) = find(buf, b"\r\n\r\n").map(|i| i + 4) else {
        if eof {
            return Err(Error::Truncated);
        }
        return Ok(Framing::Partial);
    };
    let head = Head::parse(buf.get(..head_end).unwrap_or_default())?;
    let body = buf.get(head_end..).unwrap_or_default();
    let done = match head.body_length()? {
        BodyLength::None => Some(0),
        BodyLength::Exact(n) => (body.len() >= n).then_some(n),
        BodyLength::Chunked => chunked_len(body)?,
        BodyLength::UntilClose => eof.then_some(body.len()),
    };
    match done {
        Some(n) => Ok(Framing::Complete(head_end + n)),
        None if eof => Err(Error::Truncated),
        None => Ok(Framing::Partial),
    }
}

/// A parsed response; the body is decoded (de-chunked) in the buffer it came in.
#[derive(Debug)]
pub struct Response<'a> {
    pub status: u16,
    headers: &'a [u8],
    pub body: &'a [u8],
    /// Where `body` starts in the buffer passed to [`parse`].
    pub body_offset: usize,
}

/// Parses one complete response (see [`framing`]) from `buf`. A chunked body is decoded in
/// place, which is why the buffer is `mut`.
pub fn parse(buf: &mut [u8]) -> Result<Response<'_>, Error> {
    let head_end = find(buf, b"\r\n\r\n").ok_or(Error::Truncated)? + 4;
    let length = Head::parse(buf.get(..head_end).unwrap_or_default())?.body_length()?;
    let body_len = match length {
        BodyLength::None => 0,
        BodyLength::Exact(n) => {
            if buf.len() < head_end + n {
                return Err(Error::Truncated);
            }
            n
        }
        BodyLength::UntilClose => buf.len() - head_end,
        BodyLength::Chunked => dechunk(buf.get_mut(head_end..).unwrap_or_default())?,
    };
    let (head, rest) = buf.split_at(head_end);
    let parsed = Head::parse(head)?;
    Ok(Response {
        status: parsed.status,
        headers: parsed.headers,
        body: rest.get(..body_len).ok_or(Error::Truncated)?,
        body_offset: head_end,
    })
}

impl<'a> Response<'a> {
    /// The value of header `name` (case-insensitive), trimmed; the first if repeated.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        header(self.headers, name)
    }

    /// The media type of `Content-Type`, without parameters.
    pub fn content_type(&self) -> Option<&'a str> {
        let v = self.header("content-type")?;
        // RFC 9110 §8.3.1: `type "/" subtype *( OWS ";" OWS parameter )`.
        Some(trim_ows(before(v, b';')))
    }

    /// `Retry-After` in seconds (RFC 9110 §10.2.3). An HTTP-date, which a device without a
    /// clock cannot use, counts as absent.
    pub fn retry_after(&self) -> Option<u32> {
        short_decimal(self.header("retry-after")?)
    }
}

enum BodyLength {
    None,
    Exact(usize),
    Chunked,
    UntilClose,
}

struct Head<'a> {
    status: u16,
    headers: &'a [u8],
}

impl<'a> Head<'a> {
    /// `head` ends with the blank line.
    fn parse(head: &'a [u8]) -> Result<Self, Error> {
        let line_end = find(head, b"\r\n").ok_or(Error::Http("status line"))?;
        let line = head.get(..line_end).unwrap_or_default();
        let status = match line {
            [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'0' | b'1', b' ', a, b, c, rest @ ..]
                if a.is_ascii_digit()
                    && b.is_ascii_digit()
                    && c.is_ascii_digit()
                    && (rest.is_empty() || rest[0] == b' ') =>
            {
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
            }
            _ => return Err(Error::Http("status line")),
        };
        if !(200..600).contains(&status) {
            return Err(Error::Http("informational or invalid status"));
        }
        let headers = head.get(line_end + 2..).unwrap_or_default();
        // Every header line is `name: value`; obsolete line folding is refused (RFC 9112 §5.2).
        for l in lines(headers) {
            let colon = l
                .iter()
                .position(|&b| b == b':')
                .ok_or(Error::Http("header line"))?;
            if colon == 0 || l[..colon].iter().any(|b| !is_token(*b)) {
                return Err(Error::Http("header name"));
            }
            if core::str::from_utf8(&l[colon + 1..]).is_err() {
                return Err(Error::Http("header value"));
            }
        }
        Ok(Self { status, headers })
    }

    fn body_length(&self) -> Result<BodyLength, Error> {
        if self.status == 204 || self.status == 304 {
            return Ok(BodyLength::None);
        }
        let mut length = None;
        let mut chunked = false;
        for l in lines(self.headers) {
            let (name, value) = split_header(l);
            if name.eq_ignore_ascii_case("content-length") {
                let n = short_decimal(value).ok_or(Error::Http("Content-Length"))? as usize;
                if length.is_some_and(|m| m != n) {
                    return Err(Error::Http("conflicting Content-Length"));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                if !value.eq_ignore_ascii_case("chunked") {
                    return Err(Error::Http("Transfer-Encoding other than chunked"));
                }
                chunked = true;
            }
        }
        match (chunked, length) {
            (true, Some(_)) => Err(Error::Http("both Content-Length and chunked")),
            (true, None) => Ok(BodyLength::Chunked),
            (false, Some(n)) => Ok(BodyLength::Exact(n)),
            (false, None) => Ok(BodyLength::UntilClose),
        }
    }
}

fn is_token(b: u8) -> bool {
    // A `matches!`, not `[u8]::contains`: that one is core's memchr, 200 octets on an MCU.
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn lines(headers: &[u8]) -> impl Iterator<Item = &[u8]> {
    headers.split(|&b| b == b'\n').filter_map(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        (!l.is_empty()).then_some(l)
    })
}

fn split_header(line: &[u8]) -> (&str, &str) {
    let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
    let name = core::str::from_utf8(&line[..colon]).unwrap_or_default();
    let value = core::str::from_utf8(line.get(colon + 1..).unwrap_or_default()).unwrap_or_default();
    (name, trim_ows(value))
}

/// Without optional whitespace (SP, HTAB) around it (RFC 9110 §5.6.3).
// By octets, as `before`: `str` patterns decode UTF-8, which costs a microcontroller image
// more code. SP, HTAB and the delimiters are ASCII, so every cut is on a character boundary.
fn trim_ows(s: &str) -> &str {
    let (start, end) = ows_bounds(s.as_bytes());
    s.get(start..end).unwrap_or_default()
}

fn trim_ows_octets(s: &[u8]) -> &[u8] {
    let (start, end) = ows_bounds(s);
    s.get(start..end).unwrap_or_default()
}

fn ows_bounds(s: &[u8]) -> (usize, usize) {
    let not_ows = |&b: &u8| b != b' ' && b != b'\t';
    let start = s.iter().position(not_ows).unwrap_or(s.len());
    let end = s.iter().rposition(not_ows).map_or(start, |i| i + 1);
    (start, end)
}

/// `s` up to the first `delimiter` (an ASCII octet), or all of it.
fn before(s: &str, delimiter: u8) -> &str {
    let end = s.bytes().position(|b| b == delimiter).unwrap_or(s.len());
    s.get(..end).unwrap_or_default()
}

/// 1 to 9 decimal digits, so that the value fits a `u32` (and a 32-bit `usize`) and cannot
/// overflow.
fn short_decimal(v: &str) -> Option<u32> {
    if v.is_empty() || v.len() > 9 {
        return None;
    }
    v.bytes().try_fold(0u32, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
    })
}

/// Whether the response says `Connection: close` (RFC 9112 §9.6).
pub(crate) fn closes(response: &[u8]) -> bool {
    let head = find(response, b"\r\n\r\n").map_or(response, |end| &response[..end]);
    lines(head).map(split_header).any(|(name, value)| {
        name.eq_ignore_ascii_case("connection")
            && value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| trim_ows_octets(t).eq_ignore_ascii_case(b"close"))
    })
}

fn header<'a>(headers: &'a [u8], name: &str) -> Option<&'a str> {
    lines(headers)
        .map(split_header)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a chunk-size line at `at`: (size, offset of the chunk data).
fn chunk_header(body: &[u8], at: usize) -> Result<Option<(usize, usize)>, Error> {
    let rest = body.get(at..).unwrap_or_default();
    let Some(end) = find(rest, b"\r\n") else {
        if rest.len() > 64 {
            return Err(Error::Http("chunk size line"));
        }
        return Ok(None);
    };
    let line = &rest[..end];
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    if digits.is_empty() || digits.len() > 6 {
        return Err(Error::Http("chunk size"));
    }
    let mut size = 0usize;
    for &d in digits {
        size = size * 16
            + char::from(d)
                .to_digit(16)
                .ok_or(Error::Http("chunk size"))? as usize;
    }
    Ok(Some((size, at + end + 2)))
}

/// Length of a complete chunked body, or `None` if more is needed.
fn chunked_len(body: &[u8]) -> Result<Option<usize>, Error> {
    let mut at = 0;
    loop {
        let Some((size, data)) = chunk_header(body, at)? else {
            return Ok(None);
        };
        if size == 0 {
            // Trailer fields, then the blank line.
            let mut t = data;
            loop {
                let rest = body.get(t..).unwrap_or_default();
                let Some(end) = find(rest, b"\r\n") else {
                    return Ok(None);
                };
                t += end + 2;
                if end == 0 {
                    return Ok(Some(t));
                }
            }
        }
        let next = data + size;
        match body.get(next..next + 2) {
            None => return Ok(None),
            Some(b"\r\n") => at = next + 2,
            Some(_) => return Err(Error::Http("chunk framing")),
        }
    }
}

/// Decodes a complete chunked body in place; returns the decoded length.
// Out of line: 26 octets smaller in the firmware (scripts/embedded-footprint.sh).
#[inline(never)]
fn dechunk(body: &mut [u8]) -> Result<usize, Error> {
    chunked_len(body)?.ok_or(Error::Truncated)?;
    let mut at = 0;
    let mut out = 0;
    loop {
        let (size, data) = chunk_header(body, at)?.ok_or(Error::Truncated)?;
        if size == 0 {
            return Ok(out);
        }
        move_down(body, data..data + size, out);
        out += size;
        at = data + size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_post_with_its_body_after_the_head() {
        let mut tx = [0u8; 512];
        let body = b"{\"protected\":\"x\"}";
        tx[HEADROOM..HEADROOM + body.len()].copy_from_slice(body);
        let n = post_jose(&mut tx, "ca.plant:8443", "/acme/new-order", body.len()).expect("fits");
        let text = core::str::from_utf8(&tx[..n]).expect("ascii");
        assert!(text.starts_with("POST /acme/new-order HTTP/1.1\r\nHost: ca.plant:8443\r\n"));
        assert!(
            text.contains("\r\nContent-Type: application/jose+json\r\nContent-Length: 17\r\n\r\n")
        );
        assert!(text.ends_with("\r\n\r\n{\"protected\":\"x\"}"));
    }

    #[test]
    fn frames_by_content_length_chunked_and_close() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(framing(&r[..r.len() - 1], false), Ok(Framing::Partial));
        assert_eq!(framing(&r[..r.len() - 1], true), Err(Error::Truncated));
        assert_eq!(framing(r, false), Ok(Framing::Complete(r.len())));

        let mut c = *b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\nNEXT";
        assert_eq!(framing(&c, false), Ok(Framing::Complete(c.len() - 4)));
        let n = c.len() - 4;
        let resp = parse(&mut c[..n]).expect("chunked");
        assert_eq!(resp.body, b"abcde");

        let mut close = *b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close";
        assert_eq!(framing(&close, false), Ok(Framing::Partial));
        assert_eq!(framing(&close, true), Ok(Framing::Complete(close.len())));
        let resp = parse(&mut close).expect("close-delimited");
        assert_eq!(resp.body, b"until close");
        assert_eq!(resp.content_type(), Some("text/plain"));
    }

    #[test]
    fn reads_headers_case_insensitively() {
        let mut r = *b"HTTP/1.1 201 Created\r\nreplay-nonce:  abc \r\nRetry-After: 7\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 0\r\n\r\n";
        let resp = parse(&mut r).expect("valid");
        assert_eq!(resp.status, 201);
        assert_eq!(resp.header("Replay-Nonce"), Some("abc"));
        assert_eq!(resp.retry_after(), Some(7));
        assert_eq!(resp.content_type(), Some("application/json"));
    }

    #[test]
    fn numbers_whitespace_and_connection_close() {
        assert_eq!(short_decimal("0"), Some(0));
        assert_eq!(short_decimal("999999999"), Some(999_999_999));
        for bad in ["", "1000000000", "+1", "1 ", "\u{661}"] {
            assert_eq!(short_decimal(bad), None, "{bad:?}");
        }
        assert_eq!(trim_ows(" \t a b\t "), "a b");
        assert_eq!(trim_ows(" \t "), "");
        assert_eq!(trim_ows("\u{a0}x\u{a0}"), "\u{a0}x\u{a0}");
        assert!(closes(
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive,\tClose \r\n\r\n"
        ));
        assert!(!closes(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\nConnection: close"
        ));
        assert!(!closes(b"HTTP/1.1 200 OK\r\nX-Connection: close\r\n\r\n"));
    }

    #[test]
    fn refuses_broken_framing() {
        for bad in [
            &b"HTTP/1.1 20 OK\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n",
        ] {
            assert!(
                framing(bad, true).is_err(),
                "{:?}",
                core::str::from_utf8(bad)
            );
        }
    }
}
