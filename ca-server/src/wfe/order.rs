//! The order resources: newOrder and finalize (RFC 8555 §7.4) and the order URL (§7.1.3).
//! What an order may contain and how it is finalized are `ra::order`'s rules.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::ra::order::{self, NewOrder, Order};
use crate::ra::Ra;
use crate::types::OrderStatus;
use crate::wfe::jws::AccountRequest;
use crate::wfe::AppState;
use crate::{Error, Result};

fn order_response(app: &Ra, order: &Order, status: StatusCode) -> Result<Response> {
    let body = order.to_json(app)?;
    let processing = body["status"] == json!(OrderStatus::Processing);
    let mut resp = (status, Json(body)).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&order.url(app)) {
        h.insert(header::LOCATION, v);
    }
    // > … the server … SHOULD include a Retry-After header field in "processing" responses
    // <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>
    if processing {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(resp)
}

/// `POST /acme/new-order` — RFC 8555 §7.4.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>
pub async fn new_order(State(app): State<AppState>, r: AccountRequest) -> Result<Response> {
    let p: NewOrder = r.req.json()?;
    let order = order::create(&app, &r.account, p).await?;
    order_response(&app, &order, StatusCode::CREATED)
}

/// `POST /acme/order/{id}` (POST-as-GET) — RFC 8555 §7.1.3.
pub async fn get_order(
    State(app): State<AppState>,
    Path(id): Path<String>,
    r: AccountRequest,
) -> Result<Response> {
    crate::ra::authz::apply_operator_decisions(&app).await?;
    if !r.req.is_post_as_get() {
        return Err(Error::Malformed(
            "orders are fetched with POST-as-GET (empty payload); they cannot be updated".into(),
        ));
    }
    let order = order::own_order(&app, &r.account, &id)?;
    order_response(&app, &order, StatusCode::OK)
}

/// finalize payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Finalize {
    csr: String,
}

/// `POST /acme/order/{id}/finalize` — RFC 8555 §7.4.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>
pub async fn finalize(
    State(app): State<AppState>,
    Path(id): Path<String>,
    r: AccountRequest,
) -> Result<Response> {
    let csr = r.req.json().map(|p: Finalize| p.csr);
    let source = r.req.peer.map(|p| p.ip());
    let order = order::finalize(&app, &r.account, &id, csr, source).await?;
    order_response(&app, &order, StatusCode::OK)
}
