//! The directory (RFC 8555 §7.1.1) and newNonce (§7.2).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::wfe::jws::AccountRequest;
use crate::wfe::AppState;
use crate::wire::paths;

/// `GET /directory` — RFC 8555 §7.1.1.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.1.1>
pub async fn directory(State(app): State<AppState>) -> impl IntoResponse {
    let mut meta = json!({
        "externalAccountRequired": app.cfg.eab.required,
    });
    // draft-ietf-acme-profiles: "profiles" maps each profile name to a human-readable
    // description.
    meta["profiles"] = json!(app.profiles.directory_meta());
    if let Some(tos) = &app.cfg.terms_of_service {
        meta["termsOfService"] = json!(tos);
    }
    Json(json!({
        "newNonce": app.url(paths::NEW_NONCE),
        "newAccount": app.url(paths::NEW_ACCOUNT),
        "newOrder": app.url(paths::NEW_ORDER),
        "revokeCert": app.url(paths::REVOKE_CERT),
        "keyChange": app.url(paths::KEY_CHANGE),
        "renewalInfo": app.url(paths::RENEWAL_INFO),
        "meta": meta,
    }))
}

/// POST-as-GET on the directory (RFC 8555 §6.3 requires servers to allow it).
pub async fn directory_post(app: State<AppState>, _req: AccountRequest) -> impl IntoResponse {
    directory(app).await
}

fn no_store() -> HeaderMap {
    // > The server MUST include a Cache-Control header field with the "no-store" directive in
    // > responses for the newNonce resource, in addition to the Replay-Nonce header field.
    // <https://www.rfc-editor.org/rfc/rfc8555#section-7.2>
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h
}

/// `HEAD /acme/new-nonce` — 200 with a Replay-Nonce (added by the middleware).
pub async fn new_nonce_head() -> impl IntoResponse {
    (StatusCode::OK, no_store())
}

/// `GET /acme/new-nonce` — 204 with a Replay-Nonce.
pub async fn new_nonce_get() -> impl IntoResponse {
    (StatusCode::NO_CONTENT, no_store())
}

/// POST-as-GET on newNonce (§6.3 allows it); the JWS is verified like any other.
pub async fn new_nonce_post(_req: AccountRequest) -> impl IntoResponse {
    (StatusCode::NO_CONTENT, no_store())
}
