//! The account resources: newAccount (RFC 8555 §7.3), the account URL (§7.3.2, §7.3.6),
//! keyChange (§7.3.5) and the orders list (§7.1.2.1). The rules are `ra::account`'s.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::jose::Parsed;
use crate::jwk;
use crate::ra::account::{self, Account, AccountUpdate, Applicant, KeyChange, NewAccount};
use crate::ra::Ra;
use crate::wfe::jws::{AccountRequest, KeyRequest};
use crate::wfe::AppState;
use crate::wire::paths;
use crate::{Error, Result};

fn account_response(app: &Ra, acct: &Account, status: StatusCode) -> Response {
    let mut resp = (status, Json(acct.to_json(app))).into_response();
    if let Ok(v) = HeaderValue::from_str(&app.url(&format!("{}{}", paths::ACCOUNT, acct.id))) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `POST /acme/new-account` — RFC 8555 §7.3.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3>
pub async fn new_account(State(app): State<AppState>, r: KeyRequest) -> Result<Response> {
    let p: NewAccount = r.req.json()?;
    let applicant = Applicant {
        key: &r.key,
        thumbprint: &r.thumbprint,
        url: &r.req.url,
        peer: r.req.peer,
    };
    let (acct, created) = account::register(&app, applicant, p).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(account_response(&app, &acct, status))
}

/// `POST /acme/acct/{id}` — fetch (POST-as-GET), update contacts, or deactivate.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.2>
pub async fn account(
    State(app): State<AppState>,
    Path(id): Path<String>,
    r: AccountRequest,
) -> Result<Response> {
    account::check_own_account(&r.account, &id)?;
    let p: AccountUpdate = r.req.json_or_default()?;
    let acct = account::update(&app, &r.account, &id, p).await?;
    Ok(account_response(&app, &acct, StatusCode::OK))
}

/// `POST /acme/key-change` — RFC 8555 §7.3.5.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.5>
pub async fn key_change(State(app): State<AppState>, r: AccountRequest) -> Result<Response> {
    // > 1. Validate the POST request belongs to a currently active account, as described in
    // >    Section 6.  (done by the extractor)
    // > 2. Check that the payload of the JWS is a well-formed JWS object (the "inner JWS").
    let inner = Parsed::from_json(&r.req.jws.payload)?;
    // > 3. Check that the JWS protected header of the inner JWS has a "jwk" field.
    let new_jwk = inner.header.get("jwk").ok_or_else(|| {
        Error::Malformed("keyChange inner JWS must carry the new key as \"jwk\"".into())
    })?;
    if inner.header.contains_key("kid") || inner.header.contains_key("nonce") {
        return Err(Error::Malformed(
            "keyChange inner JWS must not contain \"kid\" or \"nonce\"".into(),
        ));
    }
    let new_key = jwk::parse(new_jwk)?;
    // > 4. Check that the inner JWS verifies using the key in its "jwk" field.
    inner.verify(&new_key)?;
    // > 6. Check that the "url" parameters of the inner and outer JWSs are the same.
    if inner.header_str("url")? != Some(r.req.url.as_str()) {
        return Err(Error::Malformed(
            "keyChange inner JWS url must equal the outer url".into(),
        ));
    }
    let kc: KeyChange = inner.json()?;
    let acct = account::change_key(&app, &r.account, &new_key, kc).await?;
    Ok(account_response(&app, &acct, StatusCode::OK))
}

/// Orders-list paging cursor.
#[derive(Debug, Deserialize)]
pub struct Cursor {
    #[serde(default)]
    after: Option<String>,
}

/// `POST /acme/acct/{id}/orders` — RFC 8555 §7.1.2.1.
///
/// > The server SHOULD include pending orders and SHOULD NOT include orders that are invalid
/// > in the array of URLs. The server MAY return an incomplete list, along with a Link header
/// > field with a "next" link relation indicating where further entries can be acquired.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.1.2.1>
pub async fn orders(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(cursor): Query<Cursor>,
    r: AccountRequest,
) -> Result<Response> {
    account::check_own_account(&r.account, &id)?;
    if !r.req.is_post_as_get() {
        return Err(Error::Malformed(
            "the orders list is fetched with POST-as-GET".into(),
        ));
    }
    let (ids, next) = account::order_page(&app, &id, cursor.after.as_deref())?;
    let urls: Vec<String> = ids
        .iter()
        .map(|oid| app.url(&format!("{}{oid}", paths::ORDER)))
        .collect();
    let mut resp = Json(json!({"orders": urls})).into_response();
    if let Some(after) = next {
        let link = format!(
            "<{}>;rel=\"next\"",
            app.url(&format!("{}{id}/orders?after={after}", paths::ACCOUNT))
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().append(header::LINK, v);
        }
    }
    Ok(resp)
}
