//! HTTPS to the CA: the pinned TLS config, nonces, signed POSTs with `badNonce` retry, problem
//! documents and `Retry-After` (RFC 8555 §6).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::StatusCode;
use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

use crate::error::{Error, Problem, ProblemType};
use crate::jws::{self, KeyRef};
use crate::key::Signer;
use crate::trust::{self, PinnedVerifier, TrustAnchor};
use crate::types::Directory;

/// How often a request is sent again after `badNonce`, each time with the nonce that came with
/// the refusal. SPEC §3.5 says to retry once; two more tries also ride out a server that
/// rejects nonces at random, as Pebble does by default.
const BAD_NONCE_RETRIES: usize = 3;

/// Largest response body read (a certificate chain is a few KiB).
const MAX_BODY: usize = 1 << 20;

/// Longest Retry-After honoured. A CA asking for more is asked again after a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// What a successful response carried.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) location: Option<String>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) content_type: Option<String>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The body as JSON of type `T`.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self, request: &str) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::protocol(
                request,
                format!(
                    "HTTP {}: body is not the expected JSON ({e}): {}",
                    self.status,
                    snippet(&self.body)
                ),
            )
        })
    }

    /// The `Location` header, which the request must carry.
    pub(crate) fn location(&self, request: &str) -> Result<String, Error> {
        self.location
            .clone()
            .ok_or_else(|| Error::protocol(request, "the response has no Location header"))
    }
}

/// The HTTPS client for one CA.
pub(crate) struct Transport {
    http: reqwest::Client,
    verifier: Arc<PinnedVerifier>,
    nonce: Mutex<Option<String>>,
}

impl Transport {
    /// A client that trusts only `anchor`, with `timeout` per request.
    pub(crate) fn new(anchor: TrustAnchor, timeout: Duration) -> Result<Self, Error> {
        let verifier = Arc::new(PinnedVerifier::new(anchor)?);
        let tls = trust::client_config(verifier.clone())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            // ACME never redirects, and a redirect could only lead away from the CA.
            .redirect(reqwest::redirect::Policy::none())
            // Plant networks are reached directly; a proxy from the environment would be a
            // surprise route for key-bearing requests.
            .no_proxy()
            .connect_timeout(timeout.min(Duration::from_secs(15)))
            .timeout(timeout)
            .user_agent(concat!(
                "iiot-acme-device-client/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| Error::Crypto(format!("cannot build the HTTPS client: {e}")))?;
        Ok(Self {
            http,
            verifier,
            nonce: Mutex::new(None),
        })
    }

    /// The pinned root the connection was validated to, once a handshake has been made.
    pub(crate) fn pinned_root(&self) -> Option<rustls_pki_types::CertificateDer<'static>> {
        self.verifier.root()
    }

    fn send_error(&self, url: &str, e: &reqwest::Error) -> Error {
        if let Some(why) = self.verifier.take_failure() {
            return Error::Trust(why);
        }
        Error::Unreachable {
            url: url.to_owned(),
            detail: error_chain(e),
        }
    }

    fn remember_nonce(&self, headers: &HeaderMap) {
        if let Some(n) = headers
            .get("replay-nonce")
            .and_then(|v| v.to_str().ok())
            // SPEC §3.5: a nonce is base64url; anything else would be refused anyway.
            .filter(|n| !n.is_empty() && protocol_spec::base64url::validate(n).is_ok())
        {
            *self.nonce.lock().unwrap_or_else(PoisonError::into_inner) = Some(n.to_owned());
        }
    }

    async fn read(&self, url: &str, resp: reqwest::Response) -> Result<Response, Error> {
        self.read_limited(url, resp, MAX_BODY).await
    }

    /// Reads a response whose body may hold at most `limit` bytes; a longer one is refused as
    /// soon as it is known to be (by its Content-Length, or while it is read).
    async fn read_limited(
        &self,
        url: &str,
        mut resp: reqwest::Response,
        limit: usize,
    ) -> Result<Response, Error> {
        let status = resp.status();
        let headers = resp.headers().clone();
        self.remember_nonce(&headers);
        let too_large = || {
            Error::protocol(
                url,
                format!("response body is too large (more than {limit} bytes)"),
            )
        };
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.send_error(url, &e))? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let header = |name| {
            headers
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Response {
            status,
            location: header(LOCATION),
            retry_after: header(RETRY_AFTER).and_then(|v| parse_retry_after(&v, SystemTime::now())),
            content_type: header(CONTENT_TYPE),
            body,
        })
    }

    /// `GET` the directory (RFC 8555 §7.1.1).
    pub(crate) async fn directory(&self, url: &str) -> Result<Directory, Error> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.send_error(url, &e))?;
        let resp = self.read(url, resp).await?;
        if !resp.status.is_success() {
            return Err(failure("directory", resp));
        }
        resp.json("directory")
    }

    /// An unauthenticated `GET` (RFC 9773 §4.2: renewal information); errors as for POSTs.
    pub(crate) async fn get(&self, url: &str, request: &str) -> Result<Response, Error> {
        self.get_limited(url, request, MAX_BODY).await
    }

    /// [`Self::get`] for a body of at most `limit` bytes.
    pub(crate) async fn get_limited(
        &self,
        url: &str,
        request: &str,
        limit: usize,
    ) -> Result<Response, Error> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.send_error(url, &e))?;
        let resp = self.read_limited(url, resp, limit).await?;
        if !resp.status.is_success() {
            return Err(failure(request, resp));
        }
        Ok(resp)
    }

    /// A fresh nonce from `newNonce` (RFC 8555 §7.2).
    async fn fresh_nonce(&self, new_nonce: &str) -> Result<String, Error> {
        let resp = self
            .http
            .head(new_nonce)
            .send()
            .await
            .map_err(|e| self.send_error(new_nonce, &e))?;
        let resp = self.read(new_nonce, resp).await?;
        if !resp.status.is_success() {
            return Err(failure("newNonce", resp));
        }
        self.take_nonce().ok_or_else(|| {
            Error::protocol("newNonce", "the response carries no usable Replay-Nonce")
        })
    }

    fn take_nonce(&self) -> Option<String> {
        self.nonce
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// A signed POST (or POST-as-GET with `payload` `None`), retried with the fresh nonce after
    /// `badNonce`. Errors carry the problem document and Retry-After.
    pub(crate) async fn post(
        &self,
        dir: &Directory,
        signer: &dyn Signer,
        key: KeyRef<'_>,
        url: &str,
        payload: Option<&[u8]>,
        request: &str,
    ) -> Result<Response, Error> {
        let mut attempt = 0;
        loop {
            let nonce = match self.take_nonce() {
                Some(n) => n,
                None => self.fresh_nonce(&dir.new_nonce).await?,
            };
            let body = jws::sign(signer, key, &nonce, url, payload)?;
            let body = serde_json::to_vec(&body)
                .map_err(|e| Error::Crypto(format!("cannot serialize JWS: {e}")))?;
            let resp = self
                .http
                .post(url)
                .header(CONTENT_TYPE, "application/jose+json")
                .body(body)
                .send()
                .await
                .map_err(|e| self.send_error(url, &e))?;
            let resp = self.read(url, resp).await?;
            if resp.status.is_success() {
                return Ok(resp);
            }
            let err = failure(request, resp);
            // > When a server rejects a request because its nonce value was unacceptable (or
            // > not present), it MUST provide HTTP status code 400 … and indicate the ACME
            // > error type "urn:ietf:params:acme:error:badNonce". An error response with the
            // > "badNonce" error type MUST include a Replay-Nonce header field with a fresh
            // > nonce … On receiving such a response, a client SHOULD retry the request using
            // > the new nonce.
            // <https://www.rfc-editor.org/rfc/rfc8555#section-6.5>
            let bad_nonce = err
                .problem()
                .is_some_and(|p| p.kind() == Some(ProblemType::BadNonce));
            if bad_nonce && attempt < BAD_NONCE_RETRIES {
                attempt += 1;
                tracing::debug!(request, attempt, "badNonce: retrying with the fresh nonce");
                continue;
            }
            return Err(err);
        }
    }
}

/// Turns an error response into an [`Error`]: its problem document if it has one; a 5xx without
/// one (a proxy, a restarting CA) is treated like an unreachable CA, anything else as a
/// protocol error.
fn failure(request: &str, resp: Response) -> Error {
    let is_problem = resp
        .content_type
        .as_deref()
        .is_some_and(|ct| ct.starts_with("application/problem+json"));
    let problem = if is_problem {
        serde_json::from_slice::<Problem>(&resp.body).ok()
    } else {
        None
    };
    match problem {
        Some(mut problem) => {
            problem.status.get_or_insert(resp.status.as_u16());
            Error::Problem {
                request: request.to_owned(),
                problem: Box::new(problem),
                retry_after: resp.retry_after,
            }
        }
        None if resp.status.is_server_error() => Error::Unreachable {
            url: request.to_owned(),
            detail: format!("HTTP {}: {}", resp.status, snippet(&resp.body)),
        },
        None => Error::protocol(
            request,
            format!(
                "HTTP {} without a problem document: {}",
                resp.status,
                snippet(&resp.body)
            ),
        ),
    }
}

/// Parses `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date. A date in the past is
/// zero; values are capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = OffsetDateTime::parse(value, &Rfc2822).ok()?;
        let now = OffsetDateTime::from(now);
        let d = at - now;
        if d.is_negative() {
            Duration::ZERO
        } else {
            d.unsigned_abs()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// An error with its causes, `a: b: c`, so that "connection refused" and TLS alerts show.
/// reqwest's and hyper's wrappers ("error sending request for url (…)", "client error
/// (Connect)") repeat the URL or say nothing, so they are left out when a cause follows.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    let last = parts.len() - 1;
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        let wrapper = p.starts_with("error sending request") || p.starts_with("client error (");
        if (wrapper && i < last) || out.contains(p.as_str()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(p);
    }
    out
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06 08:49:37
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn error_responses() {
        let resp = |status: u16, ct: &str, body: &str| Response {
            status: StatusCode::from_u16(status).expect("status"),
            location: None,
            retry_after: Some(Duration::from_secs(7)),
            content_type: Some(ct.to_owned()),
            body: body.as_bytes().to_vec(),
        };
        let e = failure(
            "newOrder",
            resp(
                429,
                "application/problem+json",
                r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"slow down"}"#,
            ),
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(
            e.to_string(),
            "the CA refused newOrder: rateLimited (429): slow down"
        );
        let e = failure("newOrder", resp(503, "text/html", "<h1>down</h1>"));
        assert!(matches!(e, Error::Unreachable { .. }), "{e}");
        let e = failure("newOrder", resp(404, "text/plain", ""));
        assert_eq!(
            e.to_string(),
            "unexpected answer from the CA to newOrder: HTTP 404 Not Found without a problem document: (empty body)"
        );
    }
}
