//! A corpus of generated hostile requests against the `ca-server` binary: truncated, oversized
//! and duplicate-key JSON, wrong content types, bad base64url, malformed and oversized keys,
//! deep nesting, invalid UTF-8, odd HTTP framing and headers, JWS rule breaking, replayed
//! nonces, junk paths, and a second account asking for the first one's orders, authorizations,
//! challenges and certificate.
//!
//! Every answer must be a 4xx problem document (RFC 8555 §6.7, RFC 7807), none a 5xx; a
//! connection may close without an answer only where the HTTP framing itself is broken. Requests
//! for another account's objects must be refused without any of their data, and must change
//! nothing (the victim's orders keep their status). At the end the server is still running,
//! serves the directory, has logged no panic and no ERROR line, and its resident memory has
//! grown by less than [`RSS_GROWTH_LIMIT`].
//!
//! The corpus comes from a seeded generator (xorshift64*), so a failure can be replayed: each
//! case is generated from the seed and its index alone. Set `IIOT_HOSTILE_SEED` (decimal or
//! `0x` hex) to run another corpus; the seed is printed with the summary and with every failure.
//! Each request goes over a TLS connection of its own, written byte by byte as the case says,
//! so framing faults reach the server's HTTP parser as they are.

#[path = "common/acme.rs"]
mod acme;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use iiot_acme_tests::{https, CaServer, CaServerOpts};
use instant_acme::{
    Account, ChallengeType, Identifier, NewOrder, Order, OrderStatus, RetryPolicy,
    RevocationRequest,
};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::{json, Value};

/// Environment variable with the corpus seed.
const SEED_ENV: &str = "IIOT_HOSTILE_SEED";

/// The corpus run by default.
const DEFAULT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Connections sending the corpus at once.
const WORKERS: usize = 4;

/// How much the server's resident memory may grow over the corpus.
const RSS_GROWTH_LIMIT: u64 = 64 * 1024 * 1024;

/// Short deadlines, so the cases that announce more body than they send get their 408 in
/// seconds rather than after the default 30 s.
const LIMITS: &str = "[limits]\nheader_read_timeout = \"2s\"\nrequest_timeout = \"3s\"\n";

/// Longest wait for one answer: the 408 comes after `request_timeout` (3 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// The problem type namespace of every problem document the server sends.
const ACME_ERROR: &str = "urn:ietf:params:acme:error:";

/// The kinds of hostile request, each with how many of the corpus it makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    Truncated,
    Oversized,
    DuplicateKeys,
    ContentType,
    BadBase64,
    BadJwk,
    DeepNesting,
    InvalidUtf8,
    OddHeaders,
    JwsRules,
    Nonces,
    OtherAccounts,
    Paths,
}

impl Category {
    const ALL: [Self; 13] = [
        Self::Truncated,
        Self::Oversized,
        Self::DuplicateKeys,
        Self::ContentType,
        Self::BadBase64,
        Self::BadJwk,
        Self::DeepNesting,
        Self::InvalidUtf8,
        Self::OddHeaders,
        Self::JwsRules,
        Self::Nonces,
        Self::OtherAccounts,
        Self::Paths,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Truncated => "truncated-json",
            Self::Oversized => "oversized",
            Self::DuplicateKeys => "duplicate-keys",
            Self::ContentType => "content-type",
            Self::BadBase64 => "bad-base64url",
            Self::BadJwk => "bad-jwk",
            Self::DeepNesting => "deep-nesting",
            Self::InvalidUtf8 => "invalid-utf8",
            Self::OddHeaders => "odd-headers",
            Self::JwsRules => "jws-rules",
            Self::Nonces => "nonces",
            Self::OtherAccounts => "other-accounts",
            Self::Paths => "paths",
        }
    }

    fn count(self) -> usize {
        match self {
            Self::Truncated => 150,
            Self::Oversized => 60,
            Self::DeepNesting | Self::Nonces => 70,
            Self::ContentType | Self::InvalidUtf8 | Self::Paths => 80,
            Self::DuplicateKeys
            | Self::BadBase64
            | Self::BadJwk
            | Self::OddHeaders
            | Self::JwsRules
            | Self::OtherAccounts => 100,
        }
    }

    /// Whether the connection may close without an answer: only when the HTTP framing is
    /// broken, or the body is so large that the server stops reading it.
    fn may_close(self) -> bool {
        matches!(self, Self::OddHeaders | Self::Oversized | Self::InvalidUtf8)
    }
}

/// xorshift64* (Vigna): the same sequence on every platform and with every crate version, so a
/// seed names one corpus for good.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // The state must not be zero.
        Self(seed | 1)
    }

    /// The generator for case `index` of the corpus `seed`.
    fn for_case(seed: u64, index: usize) -> Self {
        let mut rng = Self::new(seed ^ (index as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
        // Mix the seed in before the first use.
        for _ in 0..4 {
            rng.next();
        }
        rng
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next().to_le_bytes()[0]).collect()
    }

    /// `lo..=hi` random bytes.
    fn bytes_in(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let n = self.range(lo, hi);
        self.bytes(n)
    }

    /// `lo..=hi` characters of the base64url alphabet.
    fn b64_in(&mut self, lo: usize, hi: usize) -> String {
        let n = self.range(lo, hi);
        self.b64_text(n)
    }

    /// `n` characters of the base64url alphabet.
    fn b64_text(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..n).map(|_| char::from(*self.pick(ALPHABET))).collect()
    }
}

/// A random RSA modulus of `lo..=hi` bytes, its top bit set (so no leading zero octet).
fn modulus(rng: &mut Rng, lo: usize, hi: usize) -> Vec<u8> {
    let mut n = rng.bytes_in(lo.max(1), hi.max(1));
    n[0] |= 0x80;
    n
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A P-256 account key.
struct Key {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Key {
    fn generate() -> Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow!("cannot generate a P-256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow!("cannot load the generated P-256 key"))?;
        Ok(Self { pair, rng })
    }

    fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({"crv": "P-256", "kty": "EC", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&self.rng, input)
            .map(|s| s.as_ref().to_vec())
            .unwrap_or_default()
    }

    /// A flattened JWS whose protected header is `header` as written (so it may repeat a
    /// member), signed over its base64url and the payload's.
    fn jws_text(&self, header: &[u8], payload: &[u8]) -> Value {
        let protected = b64(header);
        let payload = b64(payload);
        let signature = b64(&self.sign(format!("{protected}.{payload}").as_bytes()));
        json!({"protected": protected, "payload": payload, "signature": signature})
    }

    fn jws(&self, header: &Value, payload: &[u8]) -> Value {
        self.jws_text(header.to_string().as_bytes(), payload)
    }
}

/// An HTTP/1.1 answer.
#[derive(Debug)]
struct Response {
    status: u16,
    /// Header names lowercased, in the order received.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.headers(name).next()
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What came back for a request.
#[derive(Debug)]
enum Outcome {
    Answer(Response),
    /// The connection closed without a whole answer; what did arrive, and why the request
    /// could not be written if it could not.
    Closed {
        got: Vec<u8>,
        write_error: Option<String>,
    },
}

/// The first final answer in `data` (skipping 1xx interim ones); `None` while incomplete.
/// Without a length, the body runs to the end of the connection (`at_eof`).
fn parse_response(data: &[u8], at_eof: bool) -> Option<Response> {
    let mut rest = data;
    loop {
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&rest[..end]);
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (name, value) = l.split_once(':')?;
                Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            })
            .collect();
        if (100..200).contains(&status) {
            rest = &rest[end..];
            continue;
        }
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let after = &rest[end..];
        let body = if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            dechunk(after)?
        } else if let Some(len) = value("content-length") {
            after.get(..len.parse::<usize>().ok()?)?.to_vec()
        } else if status == 204 || status == 304 || at_eof {
            after.to_vec()
        } else {
            return None;
        };
        return Some(Response {
            status,
            headers,
            body,
        });
    }
}

/// A chunked body's data; `None` until the last chunk is in.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// What a case's answer must be, besides a 4xx problem document.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Any 4xx problem document.
    Problem,
    /// A problem document with one of these statuses.
    Status(&'static [u16]),
    /// A problem document of this type (the name after `urn:ietf:params:acme:error:`).
    Type(&'static str),
    /// Another account's object: refused with 401, 403 or 404 and none of its data.
    Foreign,
}

/// One generated request.
struct Case {
    label: String,
    request: Vec<u8>,
    expect: Expect,
}

impl Case {
    fn new(label: impl Into<String>, request: Vec<u8>, expect: Expect) -> Self {
        Self {
            label: label.into(),
            request,
            expect,
        }
    }
}

/// A POST of `body` to `path` with `headers` (each a whole header line without CRLF), a Host
/// and `Connection: close`.
fn post_with(path: &str, headers: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n").into_bytes();
    for h in headers {
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// A POST of `body` to `path` as `application/jose+json`.
fn jose(path: &str, body: &[u8]) -> Vec<u8> {
    post_with(path, &[b"Content-Type: application/jose+json"], body)
}

/// `depth` nested arrays (or objects) around `core`.
fn nested(depth: usize, objects: bool, core: &str) -> String {
    let (open, close) = if objects {
        ("{\"a\":", "}")
    } else {
        ("[", "]")
    };
    format!("{}{core}{}", open.repeat(depth), close.repeat(depth))
}

/// The first account's objects, which the second account asks for.
struct Victim {
    account: String,
    /// The order with a certificate, one still pending, one ready.
    orders: [String; 3],
    /// The authorizations of the first two.
    authzs: [String; 2],
    /// Their http-01 challenges.
    challenges: [String; 2],
    /// The finalize URLs of the first and the third order.
    finalize: [String; 2],
    cert: String,
    cert_der: Vec<u8>,
    /// A CSR for the ready order's name.
    csr_der: Vec<u8>,
    /// Strings of its data that no answer to another account may contain.
    secrets: Vec<String>,
}

/// Everything the cases need.
struct Ctx {
    port: u16,
    tls: Arc<ClientConfig>,
    base: String,
    directory: Value,
    seed: u64,
    /// The second account, which attacks the first.
    attacker: Key,
    attacker_kid: String,
    /// A key with no account.
    stranger: Key,
    victim: Victim,
    /// Nonces the server has already accepted once.
    spent_nonces: Vec<String>,
}

impl Ctx {
    /// A URL of the directory (`newNonce`, `newOrder`, …).
    fn dir_url(&self, name: &str) -> String {
        self.directory[name].as_str().unwrap_or_default().to_owned()
    }

    fn path_of<'a>(&self, url: &'a str) -> &'a str {
        url.strip_prefix(self.base.as_str()).unwrap_or(url)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn kid_header(&self, url: &str, nonce: &str) -> Value {
        json!({"alg": "ES256", "kid": self.attacker_kid, "nonce": nonce, "url": url})
    }

    /// The second account's request to `url`.
    fn attacker_jws(&self, url: &str, nonce: &str, payload: &[u8]) -> Vec<u8> {
        self.attacker
            .jws(&self.kid_header(url, nonce), payload)
            .to_string()
            .into_bytes()
    }

    /// Sends `request` over a new TLS connection and reads the answer.
    fn exchange(&self, request: &[u8]) -> Result<Outcome> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).context("connect")?;
        tcp.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        tcp.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        let name = ServerName::try_from("localhost")?;
        let conn = ClientConnection::new(Arc::clone(&self.tls), name)?;
        let mut tls = StreamOwned::new(conn, tcp);
        // A server that answers early (a body over the limit) and closes makes the write fail;
        // its answer is still there to read.
        let write_error = tls.write_all(request).and_then(|()| tls.flush()).err();
        let mut data = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(r) = parse_response(&data, false) {
                return Ok(Outcome::Answer(r));
            }
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    bail!(
                        "no answer within {ANSWER_TIMEOUT:?}; got {:?}",
                        String::from_utf8_lossy(&data)
                    )
                }
                // Closed without close_notify, or reset: the connection is over.
                Err(_) => break,
            }
        }
        Ok(match parse_response(&data, true) {
            Some(r) => Outcome::Answer(r),
            None => Outcome::Closed {
                got: data,
                write_error: write_error.map(|e| e.to_string()),
            },
        })
    }
}

/// One sending connection's state: the next nonce to use.
struct Worker<'a> {
    ctx: &'a Ctx,
    nonce: Option<String>,
}

impl Worker<'_> {
    /// An unused nonce: the last answer's, or a new one from newNonce.
    fn nonce(&mut self) -> Result<String> {
        if let Some(n) = self.nonce.take() {
            return Ok(n);
        }
        let path = self.ctx.path_of(&self.ctx.dir_url("newNonce")).to_owned();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        match self.ctx.exchange(request.as_bytes())? {
            Outcome::Answer(r) => r
                .header("replay-nonce")
                .map(str::to_owned)
                .with_context(|| format!("GET newNonce answered {} without a nonce", r.status)),
            Outcome::Closed { .. } => bail!("GET newNonce: closed without an answer"),
        }
    }

    fn send(&mut self, request: &[u8]) -> Result<Outcome> {
        let outcome = self.ctx.exchange(request)?;
        if let Outcome::Answer(r) = &outcome {
            if let Some(n) = r.header("replay-nonce") {
                self.nonce = Some(n.to_owned());
            }
        }
        Ok(outcome)
    }

    /// A well-formed request of the second account for the first one's pending order: the
    /// base that header and framing faults are applied to. Refused even if it got through.
    fn foreign_probe(&mut self) -> Result<(String, Vec<u8>)> {
        let ctx = self.ctx;
        let url = ctx.victim.orders[1].clone();
        let body = ctx.attacker_jws(&url, &self.nonce()?, b"");
        Ok((ctx.path_of(&url).to_owned(), body))
    }

    /// A signed newOrder of the second account (valid as it stands: cases only send it
    /// broken).
    fn new_order_body(&mut self, rng: &mut Rng) -> Result<(String, Vec<u8>)> {
        let ctx = self.ctx;
        let url = ctx.dir_url("newOrder");
        let name = format!("h{}.plant.example", rng.below(1_000_000));
        let payload = json!({"identifiers": [{"type": "dns", "value": name}]}).to_string();
        let body = ctx.attacker_jws(&url, &self.nonce()?, payload.as_bytes());
        Ok((ctx.path_of(&url).to_owned(), body))
    }

    fn case(&mut self, category: Category, rng: &mut Rng) -> Result<Case> {
        match category {
            Category::Truncated => self.truncated(rng),
            Category::Oversized => self.oversized(rng),
            Category::DuplicateKeys => self.duplicate_keys(rng),
            Category::ContentType => self.content_type(rng),
            Category::BadBase64 => self.bad_base64(rng),
            Category::BadJwk => self.bad_jwk(rng),
            Category::DeepNesting => self.deep_nesting(rng),
            Category::InvalidUtf8 => self.invalid_utf8(rng),
            Category::OddHeaders => self.odd_headers(rng),
            Category::JwsRules => self.jws_rules(rng),
            Category::Nonces => self.nonces(rng),
            Category::OtherAccounts => self.other_accounts(rng),
            Category::Paths => self.paths(rng),
        }
    }

    /// A signed request cut short, or one announcing more body than it sends.
    fn truncated(&mut self, rng: &mut Rng) -> Result<Case> {
        let ctx = self.ctx;
        let (path, body) = match rng.below(3) {
            0 => self.new_order_body(rng)?,
            1 => {
                let url = ctx.dir_url("newAccount");
                let header = json!({"alg": "ES256", "jwk": ctx.stranger.jwk(),
                    "nonce": self.nonce()?, "url": url});
                let body = ctx
                    .stranger
                    .jws(&header, br#"{"termsOfServiceAgreed":true}"#)
                    .to_string();
                (ctx.path_of(&url).to_owned(), body.into_bytes())
            }
            _ => self.foreign_probe()?,
        };
        let cut = rng.below(body.len());
        // One case in 25 announces the whole body and stalls after the cut: a 408.
        if rng.below(25) == 0 {
            let mut request = jose(&path, &body);
            let missing = body.len() - cut;
            request.truncate(request.len() - missing);
            return Ok(Case::new(
                format!("stalled after {cut} of {} body bytes", body.len()),
                request,
                Expect::Status(&[408]),
            ));
        }
        Ok(Case::new(
            format!("{path} body cut at {cut} of {}", body.len()),
            jose(&path, &body[..cut]),
            Expect::Problem,
        ))
    }

    /// Bodies over `max_body_bytes` (64 KiB), announced or chunked.
    fn oversized(&mut self, rng: &mut Rng) -> Result<Case> {
        let ctx = self.ctx;
        let size = rng.range(64 * 1024 + 1, 400 * 1024);
        let path = ctx.path_of(&ctx.dir_url("newOrder")).to_owned();
        let body = match rng.below(3) {
            0 => rng.bytes(size),
            1 => {
                let filler = rng.b64_text(size);
                json!({"protected": filler, "payload": "", "signature": ""})
                    .to_string()
                    .into_bytes()
            }
            _ => {
                let (_, signed) = self.new_order_body(rng)?;
                let mut v: Value = serde_json::from_slice(&signed)?;
                v["payload"] = Value::String(rng.b64_text(size));
                v.to_string().into_bytes()
            }
        };
        let (label, request) = match rng.below(3) {
            0 => ("announced", jose(&path, &body)),
            1 => {
                let mut request = format!(
                    "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                     Content-Type: application/jose+json\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                .into_bytes();
                for chunk in body.chunks(rng.range(1024, 32 * 1024)) {
                    request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    request.extend_from_slice(chunk);
                    request.extend_from_slice(b"\r\n");
                }
                request.extend_from_slice(b"0\r\n\r\n");
                ("chunked", request)
            }
            _ => {
                // A length far beyond what is sent: refused on what arrives.
                let mut request = format!(
                    "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                     Content-Type: application/jose+json\r\nContent-Length: 1000000000000\r\n\r\n"
                )
                .into_bytes();
                request.extend_from_slice(&body);
                ("announced 10^12 bytes", request)
            }
        };
        Ok(Case::new(
            format!("{label} body of {size} bytes"),
            request,
            Expect::Status(&[413]),
        ))
    }

    /// Repeated members, the last one bad, in the JWS, its header, its key or its payload.
    fn duplicate_keys(&mut self, rng: &mut Rng) -> Result<Case> {
        let ctx = self.ctx;
        let nonce = self.nonce()?;
        let probe_url = ctx.victim.orders[1].clone();
        let probe_path = ctx.path_of(&probe_url).to_owned();
        let kid = &ctx.attacker_kid;
        let variant = rng.below(8);
        let (label, path, body) = match variant {
            0..=2 => {
                let signed = ctx.attacker_jws(&probe_url, &nonce, b"");
                let v: Value = serde_json::from_slice(&signed)?;
                let member = ["protected", "payload", "signature"][variant];
                let text = format!(
                    r#"{{"protected":{},"payload":{},"signature":{},"{member}":"{}"}}"#,
                    v["protected"],
                    v["payload"],
                    v["signature"],
                    rng.b64_in(0, 40)
                );
                (format!("JWS {member} twice"), probe_path, text.into_bytes())
            }
            3..=6 => {
                let (member, first, last) = match variant {
                    3 => ("alg", "\"ES256\"".to_owned(), "\"none\"".to_owned()),
                    4 => (
                        "url",
                        format!("\"{probe_url}\""),
                        format!("\"{}\"", ctx.url("/acme/new-order")),
                    ),
                    5 => (
                        "nonce",
                        format!("\"{nonce}\""),
                        format!("\"{}\"", rng.b64_text(22)),
                    ),
                    _ => (
                        "kid",
                        format!("\"{kid}\""),
                        format!("\"{}\"", ctx.victim.account),
                    ),
                };
                let mut members = vec![
                    r#""alg":"ES256""#.to_owned(),
                    format!(r#""kid":"{kid}""#),
                    format!(r#""nonce":"{nonce}""#),
                    format!(r#""url":"{probe_url}""#),
                ];
                members.retain(|m| !m.starts_with(&format!("\"{member}\"")));
                members.push(format!("\"{member}\":{first}"));
                members.push(format!("\"{member}\":{last}"));
                let header = format!("{{{}}}", members.join(","));
                let body = ctx.attacker.jws_text(header.as_bytes(), b"").to_string();
                (
                    format!("header {member} twice"),
                    probe_path,
                    body.into_bytes(),
                )
            }
            _ => {
                let url = ctx.dir_url("newOrder");
                let payload = format!(
                    r#"{{"identifiers":[{{"type":"dns","value":"dup{}.plant.example"}}],"identifiers":[{{"type":"dns","value":"{}"}}]}}"#,
                    rng.below(1000),
                    rng.b64_text(8)
                );
                let body = ctx.attacker_jws(&url, &nonce, payload.as_bytes());
                (
                    "newOrder identifiers twice".to_owned(),
                    ctx.path_of(&url).to_owned(),
                    body,
                )
            }
        };
        Ok(Case::new(label, jose(&path, &body), Expect::Problem))
    }

    /// A well-formed JWS under a media type other than `application/jose+json`.
    fn content_type(&mut self, rng: &mut Rng) -> Result<Case> {
        let (path, body) = self.foreign_probe()?;
        let types: [&[u8]; 14] = [
            b"application/json",
            b"text/plain",
            b"application/jose",
            b"application/jose+jsonx",
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=x",
            b"application/problem+json",
            b"*/*",
            b"",
            b"application/jose json",
            b"application/jose+json\xff",
            b"\xc3\x28application/jose+json",
            b"jose+json",
            b"application/pem-certificate-chain",
        ];
        let ctype = *rng.pick(&types);
        let request = if rng.below(8) == 0 {
            post_with(&path, &[], &body)
        } else {
            let mut line = b"Content-Type: ".to_vec();
            line.extend_from_slice(ctype);
            post_with(&path, &[line.as_slice()], &body)
        };
        Ok(Case::new(
            format!("Content-Type {:?}", String::from_utf8_lossy(ctype)),
            request,
            Expect::Status(&[415]),
        ))
    }

    /// The protected header, payload or signature as something other than base64url.
    fn bad_base64(&mut self, rng: &mut Rng) -> Result<Case> {
        let (path, body) = if rng.below(2) == 0 {
            self.foreign_probe()?
        } else {
            self.new_order_body(rng)?
        };
        let mut v: Value = serde_json::from_slice(&body)?;
        let member = *rng.pick(&["protected", "payload", "signature"]);
        let good = v[member].as_str().unwrap_or_default().to_owned();
        let at = rng.below(good.len() + 1);
        let (label, bad) = match rng.below(9) {
            0 => {
                let junk = *rng.pick(&["+", "/", "=", "==", " ", "\n", ".", "é", "\u{0}", "%2B"]);
                let mut s = good.clone();
                s.insert_str(at.min(s.len()), junk);
                (format!("{junk:?} inserted"), Value::String(s))
            }
            1 => {
                let standard = STANDARD.encode(URL_SAFE_NO_PAD.decode(&good).unwrap_or_default());
                // Where both alphabets agree and no padding is due, add some anyway.
                let standard = if standard == good {
                    format!("{good}==")
                } else {
                    standard
                };
                ("standard base64".to_owned(), Value::String(standard))
            }
            2 => (
                "one extra character".to_owned(),
                Value::String(format!("{good}A")),
            ),
            3 => ("empty".to_owned(), Value::String(String::new())),
            4 => ("a number".to_owned(), json!(rng.below(1000))),
            5 => ("null".to_owned(), Value::Null),
            6 => ("an array".to_owned(), json!([good])),
            7 => ("an object".to_owned(), json!({"b64": good})),
            _ => (
                "random text".to_owned(),
                Value::String(String::from_utf8_lossy(&rng.bytes_in(1, 200)).into_owned()),
            ),
        };
        v[member] = bad;
        Ok(Case::new(
            format!("{member}: {label}"),
            jose(&path, v.to_string().as_bytes()),
            Expect::Problem,
        ))
    }

    /// newAccount with a key that is no usable public key.
    fn bad_jwk(&mut self, rng: &mut Rng) -> Result<Case> {
        let ctx = self.ctx;
        let coord = |rng: &mut Rng, n: usize| b64(&rng.bytes(n));
        let good = ctx.stranger.jwk();
        let (label, jwk) = match rng.below(16) {
            0 => ("kty oct", json!({"kty": "oct", "k": coord(rng, 32)})),
            1 => (
                "crv P-521",
                json!({"kty": "EC", "crv": "P-521", "x": coord(rng, 66), "y": coord(rng, 66)}),
            ),
            2 => (
                "crv secp256k1",
                json!({"kty": "EC", "crv": "secp256k1", "x": good["x"], "y": good["y"]}),
            ),
            3 => (
                "OKP X25519",
                json!({"kty": "OKP", "crv": "X25519", "x": coord(rng, 32)}),
            ),
            4 => (
                "point off the curve",
                json!({"kty": "EC", "crv": "P-256", "x": coord(rng, 32), "y": coord(rng, 32)}),
            ),
            5 => (
                "all-zero point",
                json!({"kty": "EC", "crv": "P-256", "x": b64(&[0; 32]), "y": b64(&[0; 32])}),
            ),
            6 => {
                let n = *rng.pick(&[0, 1, 31, 33, 64, 1000]);
                (
                    "coordinate of the wrong length",
                    json!({"kty": "EC", "crv": "P-256", "x": coord(rng, n), "y": good["y"]}),
                )
            }
            7 => {
                let mut jwk = good.clone();
                jwk["d"] = Value::String(coord(rng, 32));
                ("private key included", jwk)
            }
            // Up to ~40 KB, so the whole request stays under the body limit.
            8 => (
                "giant RSA n",
                json!({"kty": "RSA", "n": b64(&modulus(rng, 1100, 30_000)), "e": "AQAB"}),
            ),
            9 => {
                let n = modulus(rng, 256, 256);
                let mut e = rng.bytes_in(4, 20_000);
                e[0] |= 1;
                (
                    "giant RSA e",
                    json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)}),
                )
            }
            10 => (
                "small RSA n",
                json!({"kty": "RSA", "n": b64(&modulus(rng, 16, 128)), "e": "AQAB"}),
            ),
            11 => {
                let mut n = modulus(rng, 256, 256);
                n[255] &= 0xfe;
                (
                    "RSA e = 1, n even",
                    json!({"kty": "RSA", "n": b64(&n), "e": "AQ"}),
                )
            }
            12 => (
                "RSA with leading zero",
                json!({"kty": "RSA", "n": b64(&[0; 257]), "e": "AAEAAQ"}),
            ),
            13 => {
                let junk = rng
                    .pick(&[json!("EC"), json!(null), json!([1, 2]), json!(42)])
                    .clone();
                ("JWK not an object", junk)
            }
            14 => {
                let mut jwk = good.clone();
                jwk["kty"] = rng
                    .pick(&[json!(1), json!("ec"), json!(""), json!(null)])
                    .clone();
                ("kty not \"EC\"", jwk)
            }
            _ => {
                let mut jwk = good.clone();
                let member = *rng.pick(&["x", "y", "crv", "kty"]);
                if let Some(obj) = jwk.as_object_mut() {
                    obj.remove(member);
                }
                ("a member missing", jwk)
            }
        };
        let url = ctx.dir_url("newAccount");
        let header = json!({"alg": "ES256", "jwk": jwk, "nonce": self.nonce()?, "url": url});
        let body = ctx
            .stranger
            .jws(&header, br#"{"termsOfServiceAgreed":true}"#)
            .to_string();
        Ok(Case::new(
            label,
            jose(ctx.path_of(&url), body.as_bytes()),
            Expect::Problem,
        ))
    }

    /// Deeply nested JSON in the body, the protected header or the payload.
    fn deep_nesting(&mut self, rng: &mut Rng) -> Result<Case> {
        let ctx = self.ctx;
        let objects = rng.below(2) == 0;
        let per_level = if objects { 6 } else { 2 };
        // Kept under the body limit once base64url-encoded.
        let depth = rng.range(100, 40_000 / per_level);
        let (label, path, body) = match rng.below(4) {
            0 => {
                let (path, _) = self.foreign_probe()?;
                ("body", path, nested(depth, objects, "1"))
            }
            1 => {
                let (path, body) = self.foreign_probe()?;
                let v: Value = serde_json::from_slice(&body)?;
                let text = format!(
                    r#"{{"protected":{},"payload":{},"signature":{}}}"#,
                    nested(depth, objects, &v["protected"].to_string()),
                    v["payload"],
                    v["signature"]
                );
                ("JWS member", path, text)
            }
            2 => {
                let url = ctx.victim.orders[1].clone();
                let header = format!(
                    r#"{{"alg":"ES256","kid":"{}","nonce":"{}","url":"{url}","x":{}}}"#,
                    ctx.attacker_kid,
                    self.nonce()?,
                    nested(depth, objects, "0")
                );
                let body = ctx.attacker.jws_text(header.as_bytes(), b"").to_string();
                ("protected header", ctx.path_of(&url).to_owned(), body)
            }
            _ => {
                let url = ctx.dir_url("newOrder");
                let payload = format!(r#"{{"identifiers":{}}}"#, nested(depth, objects, "{}"));
                let body = ctx.attacker_jws(&url, &self.nonce()?, payload.as_bytes());
                (
                    "newOrder payload",
                    ctx.path_of(&url).to_owned(),
                    String::from_utf8_lossy(&body).into_owned(),
                )
            }
        };
        Ok(Case::new(
            format!("{label} nested {depth} deep"),
            jose(&path, body.as_bytes()),
            Expect::Problem,
        ))
    }

    /// Invalid UTF-8 in the body, a JSON string, the header, the payload or the path.
    fn invalid_utf8(&mut self, rng: &mut Rng) -> Result<Case> {
        let ctx = self.ctx;
        let junk = |rng: &mut Rng| -> Vec<u8> {
            let mut b = rng.bytes_in(1, 64);
            b.push(*rng.pick(&[0xff, 0xfe, 0xc0, 0x80, 0xed]));
            b.extend_from_slice(&[0xed, 0xa0, 0x80]); // an encoded UTF-16 surrogate
            b
        };
        let (label, request) = match rng.below(6) {
            0 => {
                let (path, _) = self.foreign_probe()?;
                ("raw body", jose(&path, &junk(rng)))
            }
            1 => {
                let (path, body) = self.foreign_probe()?;
                let v: Value = serde_json::from_slice(&body)?;
                let mut text = br#"{"protected":""#.to_vec();
                text.extend_from_slice(&junk(rng));
                text.extend_from_slice(
                    format!(
                        r#"","payload":{},"signature":{}}}"#,
                        v["payload"], v["signature"]
                    )
                    .as_bytes(),
                );
                ("inside a JSON string", jose(&path, &text))
            }
            2 => {
                let url = ctx.victim.orders[1].clone();
                let mut header = format!(
                    r#"{{"alg":"ES256","kid":"{}","nonce":"{}","url":"{url}","x":""#,
                    ctx.attacker_kid,
                    self.nonce()?
                )
                .into_bytes();
                header.extend_from_slice(&junk(rng));
                header.extend_from_slice(b"\"}");
                let body = ctx.attacker.jws_text(&header, b"").to_string();
                ("protected header", jose(ctx.path_of(&url), body.as_bytes()))
            }
            3 => {
                let url = ctx.dir_url("newOrder");
                let mut payload = br#"{"identifiers":[{"type":"dns","value":""#.to_vec();
                payload.extend_from_slice(&junk(rng));
                payload.extend_from_slice(b"\"}]}");
                let body = ctx.attacker_jws(&url, &self.nonce()?, &payload);
                ("newOrder payload", jose(ctx.path_of(&url), &body))
            }
            4 => {
                let id: String = junk(rng).iter().map(|b| format!("%{b:02X}")).collect();
                let path = format!("/acme/order/{id}");
                let body = ctx.attacker_jws(&ctx.url(&path), &self.nonce()?, b"");
                ("percent-encoded in the path", jose(&path, &body))
            }
            _ => {
                let (_, body) = self.foreign_probe()?;
                let mut request = b"POST /acme/order/".to_vec();
                request.extend_from_slice(&junk(rng));
                request.extend_from_slice(&jose("", &body)[b"POST ".len()..]);
                ("raw in the request line", request)
            }
        };
        Ok(Case::new(label, request, Expect::Problem))
    }

    /// HTTP framing and header faults around a well-formed request.
    fn odd_headers(&mut self, rng: &mut Rng) -> Result<Case> {
        let (path, body) = self.foreign_probe()?;
        let len = body.len();
        let chunked = {
            let mut c = format!("{len:x}\r\n").into_bytes();
            c.extend_from_slice(&body);
            c.extend_from_slice(b"\r\n0\r\n\r\n");
            c
        };
        let with_head = |head: String, tail: &[u8]| {
            let mut r = head.into_bytes();
            r.extend_from_slice(tail);
            r
        };
        let ct = "Content-Type: application/jose+json";
        let start = format!("POST {path} HTTP/1.1\r\n");
        let (label, request): (String, Vec<u8>) = match rng.below(20) {
            0 => {
                let (a, b) = if rng.below(2) == 0 {
                    (ct, "Content-Type: text/plain")
                } else {
                    ("Content-Type: text/plain", ct)
                };
                (
                    "Content-Type twice".into(),
                    post_with(&path, &[a.as_bytes(), b.as_bytes()], &body),
                )
            }
            1 => {
                let n = rng.range(8 * 1024, 600 * 1024);
                let line = format!("X-Filler: {}", "a".repeat(n));
                (
                    format!("a {n}-byte header value"),
                    post_with(&path, &[ct.as_bytes(), line.as_bytes()], &body),
                )
            }
            2 => {
                let n = rng.range(90, 400);
                let lines: Vec<String> = (0..n).map(|i| format!("X-H{i}: {i}")).collect();
                let mut refs: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
                refs.push(ct.as_bytes());
                (format!("{n} headers"), post_with(&path, &refs, &body))
            }
            3 => (
                "chunked and Content-Length".into(),
                with_head(
                    format!("{start}Host: localhost\r\nConnection: close\r\n{ct}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
                    &chunked,
                ),
            ),
            4 => {
                let te = *rng.pick(&[
                    "chunked, chunked",
                    "gzip, chunked",
                    "chunked, gzip",
                    "identity",
                    "gzip",
                    "Chunked",
                    "chunked;q=1",
                    "\tchunked",
                ]);
                (
                    format!("Transfer-Encoding {te:?}"),
                    with_head(
                        format!("{start}Host: localhost\r\nConnection: close\r\n{ct}\r\nTransfer-Encoding: {te}\r\n\r\n"),
                        &chunked,
                    ),
                )
            }
            5 => {
                let size = *rng.pick(&["zz", "-1", "ffffffffffffffffffff", "1;ext=\"x", " 10", "0x10"]);
                (
                    format!("chunk size {size:?}"),
                    with_head(
                        format!("{start}Host: localhost\r\nConnection: close\r\n{ct}\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n"),
                        &chunked,
                    ),
                )
            }
            6 => (
                "chunked body without its last chunk".into(),
                with_head(
                    format!("{start}Host: localhost\r\nConnection: close\r\n{ct}\r\nTransfer-Encoding: chunked\r\n\r\n{len:x}\r\n"),
                    &body,
                ),
            ),
            7 => (
                "no Host".into(),
                with_head(
                    format!("{start}Connection: close\r\n{ct}\r\nContent-Length: {len}\r\n\r\n"),
                    &body,
                ),
            ),
            8 => (
                "Host twice".into(),
                post_with(&path, &[b"Host: evil.example".as_slice(), ct.as_bytes()], &body),
            ),
            9 => (
                "HTTP/1.0 and chunked".into(),
                with_head(
                    format!("POST {path} HTTP/1.0\r\nHost: localhost\r\n{ct}\r\nTransfer-Encoding: chunked\r\n\r\n"),
                    &chunked,
                ),
            ),
            10 => {
                let version = *rng.pick(&["HTTP/1.2", "HTTP/2.0", "HTTP/3", "HTTP/1", "HTTPS/1.1", "http/1.1"]);
                (
                    format!("version {version}"),
                    with_head(
                        format!("POST {path} {version}\r\nHost: localhost\r\nConnection: close\r\n{ct}\r\nContent-Length: {len}\r\n\r\n"),
                        &body,
                    ),
                )
            }
            11 => {
                let method = *rng.pick(&["post", "PUT", "DELETE", "PATCH", "FOO", "CONNECT", "TRACE", "OPTIONS"]);
                (
                    format!("method {method}"),
                    with_head(
                        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{ct}\r\nContent-Length: {len}\r\n\r\n"),
                        &body,
                    ),
                )
            }
            12 => {
                let cl = *rng.pick(&["+5", "-1", "99999999999999999999999", "5, 6", "0x10", "", "1 2"]);
                (
                    format!("Content-Length {cl:?}"),
                    with_head(
                        format!("{start}Host: localhost\r\nConnection: close\r\n{ct}\r\nContent-Length: {cl}\r\n\r\n"),
                        &body,
                    ),
                )
            }
            13 => (
                "Content-Length twice, different".into(),
                with_head(
                    format!("{start}Host: localhost\r\nConnection: close\r\n{ct}\r\nContent-Length: {len}\r\nContent-Length: {}\r\n\r\n", len + 1),
                    &body,
                ),
            ),
            14 => {
                let bad = *rng.pick(&[
                    "Transfer-Encoding : chunked",
                    " Transfer-Encoding: chunked",
                    "X-Folded: a\r\n b",
                    "X-Nul: a\0b",
                    "No-Colon",
                    ": empty-name",
                    "X-Bad\u{7f}Name: 1",
                ]);
                (
                    format!("header line {bad:?}"),
                    with_head(
                        format!("{start}Host: localhost\r\nConnection: close\r\n{ct}\r\n{bad}\r\nContent-Length: {len}\r\n\r\n"),
                        &body,
                    ),
                )
            }
            15 => (
                "bare LF line ends".into(),
                with_head(
                    format!("POST {path} HTTP/1.1\nHost: localhost\nConnection: close\n{ct}\nContent-Length: {len}\n\n"),
                    &body,
                ),
            ),
            16 => (
                "Expect: 100-continue".into(),
                post_with(&path, &[ct.as_bytes(), b"Expect: 100-continue"], &body),
            ),
            17 => (
                "Upgrade: h2c".into(),
                post_with(
                    &path,
                    &[ct.as_bytes(), b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA"],
                    &body,
                ),
            ),
            18 => {
                let target = *rng.pick(&["*", "//acme//order", "acme/order/1", "/acme/order/1#frag", "/%", "/a b"]);
                (
                    format!("request target {target:?}"),
                    with_head(
                        format!("POST {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{ct}\r\nContent-Length: {len}\r\n\r\n"),
                        &body,
                    ),
                )
            }
            _ => {
                let n = rng.range(9 * 1024, 200 * 1024);
                let target = format!("{path}?{}", "q".repeat(n));
                (
                    format!("a {n}-byte query"),
                    with_head(
                        format!("POST {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{ct}\r\nContent-Length: {len}\r\n\r\n"),
                        &body,
                    ),
                )
            }
        };
        Ok(Case::new(label, request, Expect::Problem))
    }

    /// JWS that break RFC 8555 §6.2-6.4: algorithms, URLs, key references, signatures,
    /// extensions, unprotected members.
    fn jws_rules(&mut self, rng: &mut Rng) -> Result<Case> {
        let ctx = self.ctx;
        let nonce = self.nonce()?;
        let url = ctx.victim.orders[1].clone();
        let path = ctx.path_of(&url).to_owned();
        let mut header = ctx.kid_header(&url, &nonce);
        let mut signer = &ctx.attacker;
        let mut payload: &[u8] = b"";
        let label = match rng.below(12) {
            0 => {
                let alg = rng
                    .pick(&[
                        json!("none"),
                        json!("HS256"),
                        json!("RS256"),
                        json!("ES384"),
                        json!("ES512"),
                        json!("EdDSA"),
                        json!(""),
                        json!("es256"),
                        json!("ES256 "),
                        json!(256),
                        json!(null),
                    ])
                    .clone();
                header["alg"] = alg.clone();
                format!("alg {alg}")
            }
            1 => {
                let bad = rng
                    .pick(&[
                        ctx.dir_url("newOrder"),
                        url.replace("https://", "http://"),
                        format!("{url}/"),
                        format!("{url}?x=1"),
                        url.replace("127.0.0.1", "localhost"),
                        ctx.victim.orders[0].clone(),
                        String::new(),
                    ])
                    .clone();
                header["url"] = Value::String(bad.clone());
                format!("url {bad:?}")
            }
            2 => {
                if let Some(h) = header.as_object_mut() {
                    h.remove("url");
                }
                "no url".into()
            }
            3 => {
                header["url"] = json!(42);
                "url a number".into()
            }
            4 => {
                let kid = rng
                    .pick(&[
                        ctx.url("/acme/acct/999999999"),
                        ctx.victim.account.clone(),
                        ctx.attacker_kid.replace("127.0.0.1", "evil.example"),
                        String::new(),
                        format!("{}/", ctx.attacker_kid),
                    ])
                    .clone();
                header["kid"] = Value::String(kid.clone());
                format!("kid {kid:?}")
            }
            5 => {
                header["jwk"] = ctx.attacker.jwk();
                "both jwk and kid".into()
            }
            6 => {
                if let Some(h) = header.as_object_mut() {
                    h.remove("kid");
                }
                "neither jwk nor kid".into()
            }
            7 => {
                signer = &ctx.stranger;
                "signed by another key".into()
            }
            8 => {
                header["b64"] = json!(false);
                header["crit"] = json!(["b64"]);
                "unencoded payload option".into()
            }
            9 => {
                payload = b"{}";
                "payload for a POST-as-GET".into()
            }
            10 => {
                let signed = ctx.attacker.jws(&header, b"");
                let mut v = signed;
                let extra = *rng.pick(&["header", "signatures"]);
                v[extra] = json!({"alg": "none"});
                return Ok(Case::new(
                    format!("unprotected {extra}"),
                    jose(&path, v.to_string().as_bytes()),
                    Expect::Problem,
                ));
            }
            _ => {
                let mut v = ctx.attacker.jws(&header, b"");
                let sig = match rng.below(4) {
                    0 => String::new(),
                    1 => b64(&rng.bytes(64)),
                    2 => b64(&rng.bytes_in(1, 63)),
                    _ => b64(&rng.bytes_in(65, 600)),
                };
                v["signature"] = Value::String(sig);
                return Ok(Case::new(
                    "forged signature",
                    jose(&path, v.to_string().as_bytes()),
                    Expect::Problem,
                ));
            }
        };
        let body = signer.jws(&header, payload).to_string();
        Ok(Case::new(
            label,
            jose(&path, body.as_bytes()),
            Expect::Problem,
        ))
    }

    /// Replayed, missing, made-up and malformed nonces on otherwise valid requests.
    fn nonces(&mut self, rng: &mut Rng) -> Result<Case> {
        let ctx = self.ctx;
        let url = ctx.victim.orders[1].clone();
        let path = ctx.path_of(&url).to_owned();
        let mut header = ctx.kid_header(&url, "");
        let (label, expect) = match rng.below(7) {
            0 | 1 => {
                header["nonce"] = json!(rng.pick(&ctx.spent_nonces));
                ("replayed nonce", Expect::Type("badNonce"))
            }
            2 => {
                if let Some(h) = header.as_object_mut() {
                    h.remove("nonce");
                }
                ("no nonce", Expect::Type("badNonce"))
            }
            3 => {
                header["nonce"] = json!(b64(&rng.bytes_in(1, 48)));
                ("made-up nonce", Expect::Type("badNonce"))
            }
            4 => {
                header["nonce"] = json!(b64(&rng.bytes_in(1000, 15_000)));
                ("huge nonce", Expect::Type("badNonce"))
            }
            5 => {
                // RFC 8555 §6.5.2: a nonce that is not base64url is malformed.
                let junk = *rng.pick(&["A", "AAAAB", "a+b/", "a=", "n o", "é"]);
                header["nonce"] = json!(junk);
                ("nonce not base64url", Expect::Type("malformed"))
            }
            _ => {
                header["nonce"] = rng
                    .pick(&[json!(1), json!(null), json!([]), json!({})])
                    .clone();
                ("nonce not a string", Expect::Problem)
            }
        };
        let body = ctx.attacker.jws(&header, b"").to_string();
        Ok(Case::new(label, jose(&path, body.as_bytes()), expect))
    }

    /// The second account asks for, changes or finalizes the first one's objects.
    fn other_accounts(&mut self, rng: &mut Rng) -> Result<Case> {
        let ctx = self.ctx;
        let v = &ctx.victim;
        let nonce = self.nonce()?;
        let csr = json!({"csr": b64(&v.csr_der)}).to_string();
        let revoke = json!({"certificate": b64(&v.cert_der)}).to_string();
        let (label, url, payload): (&str, String, &str) = match rng.below(16) {
            0..=2 => {
                let i = rng.below(3);
                let what = ["issued order", "pending order", "ready order"][i];
                (what, v.orders[i].clone(), "")
            }
            3 | 4 => {
                let i = rng.below(2);
                let what = ["valid authorization", "pending authorization"][i];
                (what, v.authzs[i].clone(), "")
            }
            5 => (
                "deactivate authorization",
                v.authzs[1].clone(),
                r#"{"status":"deactivated"}"#,
            ),
            6 | 7 => {
                let i = rng.below(2);
                let what = ["valid challenge", "pending challenge"][i];
                (what, v.challenges[i].clone(), "")
            }
            8 => ("answer challenge", v.challenges[1].clone(), "{}"),
            9 => ("finalize ready order", v.finalize[1].clone(), csr.as_str()),
            10 => ("finalize issued order", v.finalize[0].clone(), csr.as_str()),
            11 => ("download certificate", v.cert.clone(), ""),
            12 => ("fetch account", v.account.clone(), ""),
            13 => {
                let p = *rng.pick(&[
                    r#"{"status":"deactivated"}"#,
                    r#"{"contact":["mailto:attacker@example.com"]}"#,
                ]);
                ("update account", v.account.clone(), p)
            }
            14 => ("account's orders", format!("{}/orders", v.account), ""),
            _ => (
                "revoke certificate",
                ctx.dir_url("revokeCert"),
                revoke.as_str(),
            ),
        };
        // Mostly as the second account; sometimes claiming the first one's kid with the
        // wrong key, or, for revocation, with a key that is no account's.
        let body = match rng.below(6) {
            0 => {
                let mut header = ctx.kid_header(&url, &nonce);
                header["kid"] = Value::String(v.account.clone());
                ctx.attacker
                    .jws(&header, payload.as_bytes())
                    .to_string()
                    .into_bytes()
            }
            1 if label == "revoke certificate" => {
                let header =
                    json!({"alg": "ES256", "jwk": ctx.stranger.jwk(), "nonce": nonce, "url": url});
                ctx.stranger
                    .jws(&header, payload.as_bytes())
                    .to_string()
                    .into_bytes()
            }
            _ => ctx.attacker_jws(&url, &nonce, payload.as_bytes()),
        };
        Ok(Case::new(
            format!("{label} of the other account"),
            jose(ctx.path_of(&url), &body),
            Expect::Foreign,
        ))
    }

    /// Junk resource ids and paths, signed for the path they are sent to, and GETs of
    /// POST-as-GET resources.
    fn paths(&mut self, rng: &mut Rng) -> Result<Case> {
        let ctx = self.ctx;
        let id = match rng.below(9) {
            0 => rng.b64_in(1, 40),
            1 => rng.b64_in(2000, 12_000),
            2 => "..%2F..%2F..%2Fetc%2Fpasswd".to_owned(),
            3 => "%00".to_owned(),
            4 => "99999999999999999999999999".to_owned(),
            5 => "-1".to_owned(),
            6 => "%zz".to_owned(),
            7 => "%E2%80%AE%F0%9F%98%80".to_owned(),
            _ => format!("{}%2F{}", rng.b64_text(8), rng.b64_text(8)),
        };
        let prefix = *rng.pick(&[
            "/acme/order/",
            "/acme/authz/",
            "/acme/cert/",
            "/acme/acct/",
            "/acme/chall/x/",
            "/acme/chall/",
            "/acme/renewal-info/",
            "/acme/",
            "/",
            "/crl/",
        ]);
        let path = format!("{prefix}{id}");
        let request = if rng.below(3) == 0 || prefix == "/acme/renewal-info/" {
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .into_bytes()
        } else {
            let body = ctx.attacker_jws(&ctx.url(&path), &self.nonce()?, b"");
            jose(&path, &body)
        };
        let label = format!(
            "{} {prefix}<{} bytes>",
            String::from_utf8_lossy(&request[..4]).trim(),
            id.len()
        );
        Ok(Case::new(label, request, Expect::Problem))
    }
}

/// What was sent and what came back, for the checks and the summary.
struct Record {
    index: usize,
    category: Category,
    label: String,
    request_head: String,
    outcome: Result<Outcome>,
    expect: Expect,
}

impl Record {
    /// Why this answer breaks the rules, if it does.
    fn fault(&self, secrets: &[String]) -> Option<String> {
        let r = match &self.outcome {
            Err(e) => return Some(format!("{e:#}")),
            Ok(Outcome::Closed { got, write_error }) => {
                if self.category.may_close() && got.is_empty() {
                    return None;
                }
                return Some(format!(
                    "closed without a whole answer (write error: {write_error:?}); got {:?}",
                    String::from_utf8_lossy(got)
                ));
            }
            Ok(Outcome::Answer(r)) => r,
        };
        if !(400..500).contains(&r.status) {
            return Some(format!("status {}", r.status));
        }
        let types: Vec<&str> = r.headers("content-type").collect();
        if types != ["application/problem+json"] {
            return Some(format!("Content-Type {types:?}, not a problem document"));
        }
        let Ok(doc) = serde_json::from_slice::<Value>(&r.body) else {
            return Some("body is not JSON".into());
        };
        let kind = doc["type"].as_str().unwrap_or_default();
        let Some(name) = kind.strip_prefix(ACME_ERROR) else {
            return Some(format!("problem type {kind:?}"));
        };
        if doc["detail"].as_str().is_none_or(str::is_empty) {
            return Some("problem document without a detail".into());
        }
        if doc["status"] != json!(r.status) {
            return Some(format!(
                "problem status {} on a {}",
                doc["status"], r.status
            ));
        }
        match self.expect {
            Expect::Problem => None,
            Expect::Status(allowed) => (!allowed.contains(&r.status))
                .then(|| format!("status {}, want {allowed:?}", r.status)),
            Expect::Type(want) => {
                (name != want).then(|| format!("problem type {name}, want {want}"))
            }
            Expect::Foreign => {
                if ![401, 403, 404].contains(&r.status)
                    || !["unauthorized", "malformed"].contains(&name)
                {
                    return Some(format!(
                        "status {} type {name} for another account's object",
                        r.status
                    ));
                }
                let text = r.body_text();
                secrets
                    .iter()
                    .find(|s| text.contains(s.as_str()))
                    .map(|s| format!("the answer shows the other account's {s:?}"))
            }
        }
    }

    fn status_name(&self) -> String {
        match &self.outcome {
            Ok(Outcome::Answer(r)) => r.status.to_string(),
            Ok(Outcome::Closed { .. }) => "closed".into(),
            Err(_) => "error".into(),
        }
    }
}

/// The server's resident set size in bytes (`VmRSS`).
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn retry() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .timeout(Duration::from_secs(20))
}

/// An order for `name`; its authorization and http-01 challenge URLs and the token. With
/// `answer`, the challenge is answered (the CA passes it: `lab_always_valid`) and the order
/// is ready.
async fn order_for(account: &Account, name: &str, answer: bool) -> Result<(Order, [String; 3])> {
    let ids = [Identifier::Dns(name.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let found = {
        let mut authzs = order.authorizations();
        let mut authz = authzs.next().await.context("no authorization")??;
        let authz_url = authz.url().to_owned();
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .context("no http-01 challenge")?;
        let found = [authz_url, challenge.url.clone(), challenge.token.clone()];
        if answer {
            challenge.set_ready().await?;
        }
        found
    };
    if answer {
        order.poll_ready(&retry()).await?;
    }
    Ok((order, found))
}

/// The first account: an order with a certificate, one pending, one ready.
async fn make_victim(server: &CaServer) -> Result<(Victim, Owner)> {
    let account = acme::account(server.directory_url(), &server.root_pem_path()).await?;
    let names = [
        "victim-1.plant.example",
        "victim-2.plant.example",
        "victim-3.plant.example",
    ];
    let csr = |name: &str| -> Result<Vec<u8>> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        Ok(params.serialize_request(&key)?.der().to_vec())
    };
    let (mut issued, [authz0, chall0, token0]) = order_for(&account, names[0], true).await?;
    issued.finalize_csr(&csr(names[0])?).await?;
    let pem = issued.poll_certificate(&retry()).await?;
    let cert = issued
        .state()
        .certificate
        .clone()
        .context("no certificate URL")?;
    let (pending, [authz1, chall1, token1]) = order_for(&account, names[1], false).await?;
    let (mut ready, _) = order_for(&account, names[2], true).await?;
    let cert_der = acme::first_cert_der(&pem)?;
    let pem_line = pem
        .lines()
        .nth(1)
        .context("certificate PEM has no body")?
        .to_owned();
    let mut secrets: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    secrets.extend([token0, token1, pem_line, "BEGIN CERTIFICATE".to_owned()]);
    let victim = Victim {
        account: account.id().to_owned(),
        orders: [
            issued.url().to_owned(),
            pending.url().to_owned(),
            ready.url().to_owned(),
        ],
        authzs: [authz0, authz1],
        challenges: [chall0, chall1],
        finalize: [
            issued.state().finalize.clone(),
            ready.state().finalize.clone(),
        ],
        cert,
        cert_der,
        csr_der: csr(names[2])?,
        secrets,
    };
    let owner = Owner {
        account,
        orders: [issued, pending, ready],
    };
    Ok((victim, owner))
}

/// The first account's own handles on its objects, to check afterwards that the other
/// account's requests changed none of them.
struct Owner {
    account: Account,
    /// The issued, pending and ready orders.
    orders: [Order; 3],
}

impl Owner {
    /// The orders have the status they had before the corpus, and the certificate is still
    /// unrevoked (its owner can revoke it now).
    async fn check_unchanged(mut self, victim: &Victim) -> Result<()> {
        let want = [OrderStatus::Valid, OrderStatus::Pending, OrderStatus::Ready];
        for (order, want) in self.orders.iter_mut().zip(want) {
            let status = order.refresh().await?.status;
            ensure!(
                status == want,
                "the first account's order {} is {status:?}, was {want:?}",
                order.url()
            );
        }
        let der = CertificateDer::from(victim.cert_der.clone());
        self.account
            .revoke(&RevocationRequest {
                certificate: &der,
                reason: None,
            })
            .await
            .context("the first account revoking its own certificate")?;
        Ok(())
    }
}

/// The corpus, in a deterministic order that interleaves the categories.
fn plan(seed: u64) -> Vec<Category> {
    let mut plan: Vec<Category> = Category::ALL
        .iter()
        .flat_map(|c| std::iter::repeat_n(*c, c.count()))
        .collect();
    // Fisher-Yates with the corpus seed.
    let mut rng = Rng::new(seed);
    for i in (1..plan.len()).rev() {
        let j = rng.below(i + 1);
        plan.swap(i, j);
    }
    plan
}

fn seed() -> Result<u64> {
    match std::env::var(SEED_ENV) {
        Err(_) => Ok(DEFAULT_SEED),
        Ok(s) => match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .with_context(|| format!("{SEED_ENV}={s:?} is not a number")),
    }
}

#[test]
fn hostile_requests_get_problem_documents_and_leave_the_server_healthy() -> Result<()> {
    let seed = seed()?;
    let server = CaServer::start(CaServerOpts {
        // Challenges pass when answered, so the first account gets a certificate without an
        // http-01 responder.
        lab_always_valid: true,
        // Every request reaches the parsers instead of a 429.
        rate_limits: false,
        extra_toml: LIMITS.into(),
        ..CaServerOpts::default()
    })?;
    let outcome = run_corpus(&server, seed);
    outcome.with_context(|| format!("seed {seed:#x}\n{}", server.logs()))
}

/// Creates the second account; returns its URL (`kid`) and nonces the server has accepted.
fn register_attacker(ctx: &Ctx) -> Result<(String, Vec<String>)> {
    let mut setup = Worker { ctx, nonce: None };
    let url = ctx.dir_url("newAccount");
    let nonce = setup.nonce()?;
    let header = json!({"alg": "ES256", "jwk": ctx.attacker.jwk(), "nonce": nonce, "url": url});
    let body = ctx
        .attacker
        .jws(&header, br#"{"termsOfServiceAgreed":true}"#)
        .to_string();
    let kid = match setup.send(&jose(ctx.path_of(&url), body.as_bytes()))? {
        Outcome::Answer(r) if r.status == 201 => r
            .header("location")
            .context("newAccount without Location")?
            .to_owned(),
        other => bail!("newAccount of the second account: {other:?}"),
    };
    let mut spent = vec![nonce];
    for _ in 0..8 {
        let nonce = setup.nonce()?;
        let header = json!({"alg": "ES256", "kid": kid, "nonce": nonce, "url": kid});
        let body = ctx.attacker.jws(&header, b"").to_string();
        match setup.send(&jose(ctx.path_of(&kid), body.as_bytes()))? {
            Outcome::Answer(r) if r.status == 200 => spent.push(nonce),
            other => bail!("POST-as-GET of the second account: {other:?}"),
        }
    }
    Ok((kid, spent))
}

fn run_corpus(server: &CaServer, seed: u64) -> Result<()> {
    let pid = server.pid().context("server pid")?;
    let rt = tokio::runtime::Runtime::new()?;
    let (victim, owner) = rt.block_on(make_victim(server))?;
    let (_, directory) = https::get(&server.directory_url(), &server.root_pem_path())?;
    let directory: Value = serde_json::from_str(&directory)?;
    let new_nonce = directory["newNonce"].as_str().context("no newNonce")?;
    let base = new_nonce
        .strip_suffix("/acme/new-nonce")
        .context("newNonce URL")?
        .to_owned();

    let attacker = Key::generate()?;
    let mut ctx = Ctx {
        port: server.listen_port(),
        tls: https::rustls_client(&server.root_pem_path(), &[b"http/1.1"])?,
        base,
        directory,
        seed,
        attacker,
        attacker_kid: String::new(),
        stranger: Key::generate()?,
        victim,
        spent_nonces: Vec::new(),
    };
    // The second account, and nonces the server has accepted once.
    let (kid, spent) = register_attacker(&ctx)?;
    ctx.attacker_kid = kid;
    ctx.spent_nonces = spent;
    let ctx = ctx;

    let rss_before = rss_bytes(pid)?;
    let plan = plan(seed);
    let next = AtomicUsize::new(0);
    let records = Mutex::new(Vec::with_capacity(plan.len()));
    let started = Instant::now();
    thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                let mut worker = Worker {
                    ctx: &ctx,
                    nonce: None,
                };
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&category) = plan.get(index) else {
                        break;
                    };
                    let mut rng = Rng::for_case(seed, index);
                    let record = match worker.case(category, &mut rng) {
                        Ok(case) => {
                            let head_len = case.request.len().min(300);
                            Record {
                                index,
                                category,
                                request_head: String::from_utf8_lossy(&case.request[..head_len])
                                    .into_owned(),
                                outcome: worker.send(&case.request),
                                label: case.label,
                                expect: case.expect,
                            }
                        }
                        Err(e) => Record {
                            index,
                            category,
                            label: "(not generated)".into(),
                            request_head: String::new(),
                            outcome: Err(e.context("generating the case")),
                            expect: Expect::Problem,
                        },
                    };
                    records
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(record);
                }
            });
        }
    });
    let took = started.elapsed();
    let mut records = records.into_inner().unwrap_or_else(PoisonError::into_inner);
    records.sort_by_key(|r| r.index);
    let rss_after = rss_bytes(pid)?;

    // The summary first, so a failing run still shows the whole picture.
    let mut by_category: BTreeMap<Category, BTreeMap<String, usize>> = BTreeMap::new();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        *by_category
            .entry(r.category)
            .or_default()
            .entry(r.status_name())
            .or_default() += 1;
        *by_status.entry(r.status_name()).or_default() += 1;
    }
    let categories: Vec<String> = by_category
        .iter()
        .map(|(c, statuses)| {
            let n: usize = statuses.values().sum();
            let s: Vec<String> = statuses.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{} {n} ({})", c.name(), s.join(" "))
        })
        .collect();
    let statuses: Vec<String> = by_status.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    eprintln!(
        "hostile corpus, seed {seed:#x}: {} requests in {:.1} s over {WORKERS} connections at a \
         time; by status: {}; by category: {}; ca-server RSS {} before, {} after",
        records.len(),
        took.as_secs_f64(),
        statuses.join(" "),
        categories.join(", "),
        mib(rss_before),
        mib(rss_after),
    );

    let faults: Vec<String> = records
        .iter()
        .filter_map(|r| {
            r.fault(&ctx.victim.secrets).map(|why| {
                let answer = match &r.outcome {
                    Ok(Outcome::Answer(a)) => format!(
                        "{} {:?} {}",
                        a.status,
                        a.headers,
                        a.body_text().chars().take(300).collect::<String>()
                    ),
                    _ => String::new(),
                };
                format!(
                    "case {} ({}, {}): {why}\n  request: {:?}\n  answer: {answer}",
                    r.index,
                    r.category.name(),
                    r.label,
                    r.request_head
                )
            })
        })
        .collect();
    ensure!(
        faults.is_empty(),
        "{} of {} answers break the rules (seed {:#x}):\n{}",
        faults.len(),
        records.len(),
        ctx.seed,
        faults
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(records.len() >= 1000, "only {} requests", records.len());

    rt.block_on(owner.check_unchanged(&ctx.victim))?;
    let (status, body) = https::get(&server.directory_url(), &server.root_pem_path())
        .context("the directory after the corpus")?;
    ensure!(
        status == 200 && body.contains("newNonce"),
        "GET /directory after the corpus: {status} {body}"
    );
    let mut log = String::new();
    for name in ["ca-server.stdout.log", "ca-server.stderr.log"] {
        let path = server.data_dir().join(name);
        log.push_str(&fs::read_to_string(&path).unwrap_or_default());
    }
    let alarming: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("panicked") || l.contains(" ERROR "))
        .take(10)
        .collect();
    ensure!(
        alarming.is_empty(),
        "the server log shows a panic or an error:\n{}",
        alarming.join("\n")
    );
    ensure!(
        rss_after < rss_before + RSS_GROWTH_LIMIT,
        "RSS grew from {} to {}",
        mib(rss_before),
        mib(rss_after)
    );
    Ok(())
}
