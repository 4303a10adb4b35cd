//! The authorization and challenge resources (RFC 8555 §7.5). What answering a challenge does
//! is `ra::authz`'s.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use crate::ra::authz;
use crate::types::{ChallengeStatus, ChallengeType};
use crate::wfe::jws::AccountRequest;
use crate::wfe::AppState;
use crate::wire::paths;
use crate::{Error, Result};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthzUpdate {
    #[serde(default)]
    status: Option<String>,
}

/// `POST /acme/authz/{id}` — fetch (POST-as-GET) or deactivate (RFC 8555 §7.5.2).
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.5.2>
pub async fn authz(
    State(app): State<AppState>,
    Path(id): Path<String>,
    r: AccountRequest,
) -> Result<Response> {
    let status = r.req.json_or_default().map(|u: AuthzUpdate| u.status);
    let authz = authz::fetch_or_deactivate(&app, &r.account, &id, status).await?;
    let mut resp = Json(authz.to_json(&app)).into_response();
    if authz
        .challenges
        .iter()
        .any(|c| c.status == ChallengeStatus::Processing)
    {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(resp)
}

/// `POST /acme/chall/{authz}/{type}` — respond to a challenge (RFC 8555 §7.5.1) or fetch it.
///
/// > The client indicates to the server that it is ready for the challenge validation by
/// > sending an empty JSON body ("{}") carried in a POST request to the challenge URL
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.5.1>
pub async fn challenge(
    State(app): State<AppState>,
    Path((authz_id, kind)): Path<(String, String)>,
    r: AccountRequest,
) -> Result<Response> {
    let kind: ChallengeType =
        serde_json::from_value(Value::String(kind)).map_err(|_| Error::NotFound("challenge"))?;
    let answer = (!r.req.is_post_as_get()).then(|| r.req.json());
    let authz = authz::respond(&app, &r.account, &authz_id, kind, answer, r.req.peer).await?;
    let c = authz
        .challenges
        .iter()
        .find(|c| c.kind == kind)
        .ok_or(Error::NotFound("challenge"))?;
    let mut resp = (StatusCode::OK, Json(authz.challenge_json(&app, c))).into_response();
    let h = resp.headers_mut();
    // > The server MUST … include a Link header field with relation "up" to the authorization
    if let Ok(v) = HeaderValue::from_str(&format!(
        "<{}>;rel=\"up\"",
        app.url(&format!("{}{}", paths::AUTHZ, authz.id))
    )) {
        h.append(header::LINK, v);
    }
    if c.status == ChallengeStatus::Processing {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(resp)
}
