//! Entry points of the fuzz targets in `embedded-client/fuzz` and of the corpus replay test
//! (`tests/fuzz_corpus.rs`), which runs the committed corpus through the same functions on the
//! stable toolchain. Not part of the API.
//!
//! Each function takes arbitrary octets, as a hostile or broken server would send them, runs
//! the client's real parsers on them and asserts what holds for every input: no panic, and
//! results that agree with each other (a response [`http::framing`] calls complete is one
//! [`http::parse`] accepts; a JSON member's text parses to the same value on its own; an ARI
//! identifier written from a certificate decodes to its key identifier and serial). No
//! allocation, like the rest of the crate.

use crate::http::{self, Framing};
use crate::json::{self, Value};
use crate::renewal::{self, RenewalCheck};
use crate::{AccountKey, Config, DeviceKey, Enrollment, Event, Identifier};

/// Largest input the functions below copy into their buffers; the rest is cut.
const MAX_INPUT: usize = 8192;

/// Splits a fuzz input into the responses of a scripted exchange.
pub const SEPARATOR: &[u8] = b"\0\0\0\0";

/// The HTTP/1.1 response parser: framing and parsing agree, a response framed as the first `n`
/// octets is framed the same without what follows it, and every part of a parsed response lies
/// inside the buffer.
pub fn http(data: &[u8]) {
    let data = data.get(..MAX_INPUT).unwrap_or(data);
    let mut buf = [0u8; MAX_INPUT];
    for eof in [false, true] {
        let Ok(Framing::Complete(n)) = http::framing(data, eof) else {
            continue;
        };
        assert!(n <= data.len());
        let response = &data[..n];
        assert_eq!(http::framing(response, eof), Ok(Framing::Complete(n)));
        let buf = &mut buf[..n];
        buf.copy_from_slice(response);
        let parsed = http::parse(buf);
        let Ok(resp) = parsed else {
            panic!("framed as {n} octets (eof {eof}) but not parsed: {parsed:?}");
        };
        check_response(&resp, n);
    }
    let buf = &mut buf[..data.len()];
    buf.copy_from_slice(data);
    let n = buf.len();
    if let Ok(resp) = http::parse(buf) {
        check_response(&resp, n);
    }
}

fn check_response(resp: &http::Response<'_>, len: usize) {
    assert!((200..600).contains(&resp.status), "{}", resp.status);
    assert!(resp.body_offset + resp.body.len() <= len);
    for name in ["replay-nonce", "location", "link", "content-length", ""] {
        if let Some(v) = resp.header(name) {
            assert_eq!(v, v.trim_matches([' ', '\t']));
        }
    }
    let _ = (resp.content_type(), resp.retry_after());
}

/// The JSON scanner: every value found in a document is walked, each nested object or array
/// is itself a document that parses to the same value, and an unescaped string equals the
/// plain one when it has no escapes.
pub fn json(data: &[u8]) {
    if let Ok(v) = json::parse(data) {
        walk(v, 0);
    }
}

fn walk(v: Value<'_>, depth: usize) {
    assert!(depth <= json::MAX_DEPTH, "deeper than the scanner allows");
    match v {
        Value::Object(text) | Value::Array(text) => {
            assert_eq!(json::parse(text), Ok(v));
            for item in v.items() {
                walk(item, depth + 1);
            }
            for key in ["status", "type", "url", "token", "challenges", "a", ""] {
                if let Some(member) = v.get(key) {
                    walk(member, depth + 1);
                }
            }
        }
        Value::Str(s) => {
            let mut out = [0u8; MAX_INPUT];
            let unescaped = s.unescape(&mut out);
            if let Some(plain) = s.plain() {
                assert_eq!(unescaped, Ok(plain));
            }
        }
        Value::Number(n) => assert!(!n.is_empty()),
        Value::Bool(_) | Value::Null => {}
    }
}

/// The certificate readers used for renewal: the PEM chain's first block, the DER reader on it
/// and on the raw input, and the ARI identifier made from what it read.
pub fn certificate(data: &[u8]) {
    let mut der = [0u8; MAX_INPUT];
    if let Ok(cert) = renewal::first_certificate_der(data, &mut der) {
        assert!(cert.len() <= data.len());
        check_der(cert);
    }
    check_der(data);
}

fn check_der(der: &[u8]) {
    let Ok(info) = renewal::certificate_info(der) else {
        return;
    };
    let renew = renewal::renew_after_fallback(&info);
    if info.not_before <= info.not_after {
        assert!((info.not_before..=info.not_after).contains(&renew));
    }
    let mut text = [0u8; MAX_INPUT];
    let Ok(id) = renewal::cert_id(der, &mut text) else {
        return;
    };
    let mut back = [0u8; MAX_INPUT];
    let decoded = protocol_spec::ari::decode(id, &mut back);
    assert_eq!(
        decoded.map(|(aki, serial)| (Some(aki), serial)),
        Ok((info.authority_key_id, info.serial))
    );
}

/// The ARI check against scripted responses ([`SEPARATOR`] between them): the directory, then
/// the renewal information, whose window must not end before it starts.
pub fn renewal(data: &[u8]) {
    let Ok(mut check) = RenewalCheck::new(
        "https://ca.plant.test:8443",
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE",
    ) else {
        panic!("fixed configuration refused");
    };
    let mut tx = [0u8; 1024];
    let mut rx = [0u8; MAX_INPUT];
    for resp in responses(data) {
        if check.next_request(&mut tx).is_err() {
            return;
        }
        let rx = &mut rx[..resp.len()];
        rx.copy_from_slice(resp);
        match check.handle_response(rx) {
            Ok(None) => {}
            Ok(Some(window)) => {
                assert!(window.start <= window.end);
                let at = window.pick(u32::MAX);
                assert!(at == window.start || (window.start..window.end).contains(&at));
                return;
            }
            Err(_) => return,
        }
    }
}

/// A whole enrollment against scripted responses ([`SEPARATOR`] between them): the client
/// answers each with its next request until it fails cleanly or is issued a chain that lies in
/// the buffer it was given.
pub fn enrollment(data: &[u8]) {
    let (Ok(account), Ok(cert_key)) = (
        DeviceKey::from_bytes(&[0x11; 32]),
        DeviceKey::from_bytes(&[0x22; 32]),
    ) else {
        panic!("fixed keys refused");
    };
    let account = AccountKey::new(account);
    let ids = [Identifier::Dns("plc-1.plant.test")];
    let cfg = Config {
        base_url: "https://ca.plant.test:8443",
        identifiers: &ids,
        eab: None,
        profile: None,
        replaces: None,
        terms_of_service_agreed: true,
    };
    let Ok(mut e) = Enrollment::new(cfg, &account, &cert_key, None) else {
        panic!("fixed configuration refused");
    };
    let mut tx = [0u8; 4096];
    let mut rx = [0u8; 4096];
    for resp in responses(data).take(40) {
        if e.next_request(&mut tx, &mut rx).is_err() {
            return;
        }
        let n = resp.len().min(rx.len());
        rx[..n].copy_from_slice(&resp[..n]);
        match e.handle_response(&mut rx[..n]) {
            Ok(Event::Issued { pem }) => {
                assert!(pem.start <= pem.end && pem.end <= n);
                assert!(e.is_done());
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// The responses of a scripted exchange, at most [`MAX_INPUT`] octets each.
fn responses(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    core::iter::from_fn(move || {
        let r = rest?;
        let (this, next) = match r.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(i) => (&r[..i], Some(&r[i + SEPARATOR.len()..])),
            None => (r, None),
        };
        rest = next;
        Some(this.get(..MAX_INPUT).unwrap_or(this))
    })
}
