//! The web front end: the whole route table in one place, the rules every response follows
//! (Replay-Nonce, `Link: rel="index"`, problem documents for every failure), and one module
//! per resource that reads the verified request, calls the RA and writes the response.

pub mod account;
pub mod authz;
pub mod cert;
pub mod crl;
pub mod directory;
pub mod jws;
pub mod listener;
pub mod nonce;
pub mod order;
pub mod problem;
pub mod renewal;

use std::ops::Deref;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::error::InternalCause;
use crate::ra::Ra;
use crate::wfe::nonce::NonceStore;
use crate::wfe::problem::ProblemSent;
use crate::wire::paths;
use crate::Error;

/// The web front end's state: the registration authority it serves and the nonces it issues.
pub struct Inner {
    /// Accounts, orders, authorizations and everything behind them.
    pub ra: Ra,
    /// Replay nonces (RFC 8555 §6.5).
    pub nonces: NonceStore,
}

/// Cheaply cloneable handle on [`Inner`]; dereferences to the [`Ra`], so handlers read
/// `app.db`, `app.cfg` and so on directly and pass `&app` wherever the RA is wanted.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl Deref for AppState {
    type Target = Ra;
    fn deref(&self) -> &Ra {
        &self.0.ra
    }
}

impl AppState {
    /// Wraps the parts.
    pub fn new(ra: Ra, nonces: NonceStore) -> Self {
        Self(Arc::new(Inner { ra, nonces }))
    }

    /// The nonce store.
    pub fn nonces(&self) -> &NonceStore {
        &self.0.nonces
    }
}

/// The router: every route of the server in one table.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            paths::DIRECTORY,
            get(directory::directory).post(directory::directory_post),
        )
        .route(
            paths::NEW_NONCE,
            get(directory::new_nonce_get)
                .head(directory::new_nonce_head)
                .post(directory::new_nonce_post),
        )
        .route(paths::NEW_ACCOUNT, post(account::new_account))
        .route(paths::KEY_CHANGE, post(account::key_change))
        .route("/acme/acct/{id}", post(account::account))
        .route("/acme/acct/{id}/orders", post(account::orders))
        .route(paths::NEW_ORDER, post(order::new_order))
        .route("/acme/order/{id}", post(order::get_order))
        .route("/acme/order/{id}/finalize", post(order::finalize))
        .route("/acme/authz/{id}", post(authz::authz))
        .route("/acme/chall/{authz}/{kind}", post(authz::challenge))
        .route("/acme/cert/{id}", post(cert::download))
        .route(paths::REVOKE_CERT, post(cert::revoke))
        .route(paths::CRL, get(crl::get))
        .route(paths::CRL_RSA, get(crl::get_rsa))
        .route("/acme/renewal-info/{id}", get(renewal::get))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), acme_headers))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let matched = req
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str);
            tracing::debug_span!("request", method = %req.method(), matched_path = matched)
        }))
        .with_state(state)
}

async fn not_found() -> Error {
    Error::NotFound("resource")
}

/// > … the server MUST allow GET requests for the directory and newNonce resources … in
/// > addition to POST-as-GET requests for these resources.
///
/// Every other resource is fetched by POST-as-GET only.
/// <https://www.rfc-editor.org/rfc/rfc8555#section-6.3>
async fn method_not_allowed(method: Method, uri: http::Uri) -> Response {
    let allow = if uri.path() == paths::DIRECTORY || uri.path() == paths::NEW_NONCE {
        "GET, HEAD, POST"
    } else {
        "POST"
    };
    let mut resp = Error::MethodNotAllowed(method.to_string()).into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Adds the headers every ACME response carries and logs internal errors once.
///
/// > The server MUST include a Replay-Nonce header field in every successful response to a
/// > POST request and SHOULD provide it in error responses as well.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-6.5>
///
/// The directory `Link` with `rel="index"` goes on every response (§7.1), so clients can always
/// find their way back.
///
/// It also times each request by its route template (never the request path, whose ids would
/// make a series per order) and counts the problem documents sent.
async fn acme_headers(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    // The request's durability ticket covers the handler and the flush below (storage docs).
    let resp = crate::storage::request_scope(respond(app.clone(), req, next)).await;
    if let Some(ProblemSent(kind)) = resp.extensions().get::<ProblemSent>() {
        app.metrics.problem_sent(*kind);
    }
    let endpoint = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    app.metrics.request_answered(endpoint, started.elapsed());
    resp
}

/// The `endpoint` label of requests no route matched.
const UNMATCHED: &str = "unmatched";

async fn respond(app: AppState, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    // Extractor rejections (a bad path segment or query string) come as plain text; every
    // error this server sends is a problem document (RFC 8555 §6.7).
    if resp.status().is_client_error()
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"))
    {
        let status = resp.status();
        let body = axum::body::to_bytes(std::mem::take(resp.body_mut()), 4096)
            .await
            .unwrap_or_default();
        let mut problem =
            Error::Malformed(String::from_utf8_lossy(&body).into_owned()).into_response();
        *problem.status_mut() = status;
        resp = problem;
    }
    // A read can race a write whose flush is still under way (a validation result, an issued
    // certificate): flush before answering so no response reports state a crash could undo.
    // Only the writes this request made or read are waited for.
    if let Err(e) = app.db.flush().await {
        resp = e.into_response();
    }
    if let Some(cause) = resp.extensions().get::<InternalCause>() {
        tracing::error!(cause = %cause.0, "internal error");
    }
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&app.nonces().issue()) {
        headers.insert("replay-nonce", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("<{}>;rel=\"index\"", app.url(paths::DIRECTORY)))
    {
        headers.append(header::LINK, v);
    }
    resp
}
