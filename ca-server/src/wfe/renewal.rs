//! ACME Renewal Information (RFC 9773 §4.2): the renewalInfo resource. The window itself is
//! the RA's (`ra::renewal`).

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::types::rfc3339;
use crate::wfe::AppState;
use crate::Result;

/// How often clients should ask again (RFC 9773 §4.3: Retry-After on every response).
const POLL_SECS: u64 = 6 * 3600;

/// `GET {renewalInfo}/{certID}` — RFC 9773 §4.2. Unauthenticated, as the RFC specifies.
pub async fn get(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    let (start, end) = crate::ra::renewal::window(&app, &id)?;
    let mut resp = (
        StatusCode::OK,
        Json(json!({"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(POLL_SECS));
    Ok(resp)
}
