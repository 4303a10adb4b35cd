//! JWS request verification (RFC 8555 §6.2-6.5), done once for every POST in the extractors
//! below so handlers only ever see an authenticated, replay-checked request.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use crate::jose::Parsed;
use crate::jwk;
use crate::key::PublicKey;
use crate::ra::account::Account;
use crate::wfe::AppState;
use crate::{Error, Result};

/// Who signed a request.
pub enum Signer {
    /// A registered account, named by `kid`.
    Account(Box<Account>),
    /// A bare key, given as `jwk`.
    Key {
        /// The key.
        key: PublicKey,
        /// Its RFC 7638 thumbprint.
        thumbprint: String,
    },
}

/// A verified request: signature, nonce and URL checked.
pub struct Verified {
    /// The client's address, when the server knows it (shown to operators with approvals).
    pub peer: Option<std::net::SocketAddr>,
    /// The decoded JWS.
    pub jws: Parsed,
    /// The URL the request was made to (equal to the JWS `url`).
    pub url: String,
}

impl Verified {
    /// True for POST-as-GET (RFC 8555 §6.3): the payload is the empty string.
    pub fn is_post_as_get(&self) -> bool {
        self.jws.payload.is_empty()
    }

    /// The payload as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        self.jws.json()
    }

    /// The payload as JSON, where `{}` and POST-as-GET both mean "no change".
    pub fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T> {
        if self.is_post_as_get() {
            Ok(T::default())
        } else {
            self.json()
        }
    }
}

/// Which key reference a route accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyMode {
    /// `kid` only: everything but newAccount and revokeCert.
    Kid,
    /// `jwk` only: newAccount.
    Jwk,
    /// Either: revokeCert (by account or by the certificate's key).
    Either,
}

async fn verify_request(req: Request, app: &AppState, mode: KeyMode) -> Result<(Signer, Verified)> {
    // > … they must have the Content-Type header field set to "application/jose+json". If a
    // > request does not meet this requirement, then the server MUST return a response with
    // > status code 415 (Unsupported Media Type).
    // <https://www.rfc-editor.org/rfc/rfc8555#section-6.2>
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Media type names are case-insensitive (RFC 9110 §8.3.1).
    if !ctype
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/jose+json"))
    {
        return Err(Error::UnsupportedMediaType(format!(
            "Content-Type must be application/jose+json, got {ctype:?}"
        )));
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let url = format!("{}{path}", app.base_url);
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let body: Bytes = axum::body::to_bytes(req.into_body(), app.cfg.max_body_bytes)
        .await
        .map_err(body_error)?;
    let jws = Parsed::from_json(&body)?;
    let alg = jws.alg()?.to_owned();

    // > The "jwk" and "kid" fields are mutually exclusive. Servers MUST reject requests that
    // > contain both.
    // <https://www.rfc-editor.org/rfc/rfc8555#section-6.2>
    let signer = match (jws.header.get("jwk"), jws.header_str("kid")?, mode) {
        (Some(_), Some(_), _) => {
            return Err(Error::Malformed(
                "JWS header must not contain both \"jwk\" and \"kid\"".into(),
            ))
        }
        (None, None, _) => {
            return Err(Error::Malformed(
                "JWS header must contain \"jwk\" or \"kid\"".into(),
            ))
        }
        (Some(_), None, KeyMode::Kid) => {
            return Err(Error::Malformed(
                "this request must be signed by an account key named with \"kid\", not \"jwk\""
                    .into(),
            ))
        }
        (None, Some(_), KeyMode::Jwk) => {
            return Err(Error::Malformed(
                "newAccount requests must carry the account key as \"jwk\", not \"kid\"".into(),
            ))
        }
        (Some(raw), None, _) => {
            let key = jwk::parse(raw)?;
            let thumbprint = jwk::thumbprint(&key);
            Signer::Key { key, thumbprint }
        }
        (None, Some(kid), _) => Signer::Account(Box::new(app.account_by_kid(kid)?)),
    };
    let key = match &signer {
        Signer::Account(acct) => acct.public_key()?,
        Signer::Key { key, .. } => key.clone(),
    };
    jwk::verify(&alg, &key, &jws.signing_input, &jws.signature)?;

    // > The server MUST … reject the request as unauthorized if the "url" header does not
    // > match the URL the request was sent to.
    // <https://www.rfc-editor.org/rfc/rfc8555#section-6.4>
    match jws.header_str("url")? {
        Some(u) if u == url => {}
        Some(u) => {
            return Err(Error::Unauthorized(format!(
                "JWS url {u:?} does not match the request URL {url:?}"
            )))
        }
        None => return Err(Error::Malformed("JWS header has no \"url\"".into())),
    }

    // Checked after the signature so that forged requests cannot burn other clients' nonces.
    // <https://www.rfc-editor.org/rfc/rfc8555#section-6.5>
    match jws.header_str("nonce")? {
        Some(n) => app.nonces().redeem(n)?,
        None => return Err(Error::BadNonce("JWS header has no \"nonce\"")),
    }

    Ok((signer, Verified { peer, jws, url }))
}

/// A request signed by a registered, valid account (`kid`).
pub struct AccountRequest {
    /// The account.
    pub account: Account,
    /// The verified request.
    pub req: Verified,
}

/// A request signed by a key given inline (`jwk`): newAccount.
pub struct KeyRequest {
    /// The key.
    pub key: PublicKey,
    /// Its thumbprint.
    pub thumbprint: String,
    /// The verified request.
    pub req: Verified,
}

/// A request signed either way: revokeCert.
pub struct AnyRequest(pub Signer, pub Verified);

impl FromRequest<AppState> for AccountRequest {
    type Rejection = Error;

    async fn from_request(req: Request, app: &AppState) -> Result<Self> {
        match verify_request(req, app, KeyMode::Kid).await? {
            (Signer::Account(account), req) => Ok(Self {
                account: *account,
                req,
            }),
            (Signer::Key { .. }, _) => Err(Error::Internal("kid request without account".into())),
        }
    }
}

impl FromRequest<AppState> for KeyRequest {
    type Rejection = Error;

    async fn from_request(req: Request, app: &AppState) -> Result<Self> {
        match verify_request(req, app, KeyMode::Jwk).await? {
            (Signer::Key { key, thumbprint }, req) => Ok(Self {
                key,
                thumbprint,
                req,
            }),
            (Signer::Account(_), _) => Err(Error::Internal("jwk request without key".into())),
        }
    }
}

impl FromRequest<AppState> for AnyRequest {
    type Rejection = Error;

    async fn from_request(req: Request, app: &AppState) -> Result<Self> {
        let (signer, req) = verify_request(req, app, KeyMode::Either).await?;
        Ok(Self(signer, req))
    }
}

/// A body that could not be read: too large, or cut off by the client or the connection.
fn body_error(e: axum::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return Error::PayloadTooLarge;
        }
        source = cause.source();
    }
    Error::Malformed(format!("the request body could not be read: {e}"))
}
