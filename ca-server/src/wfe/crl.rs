//! The CRL resources (RFC 5280 §5; media type per RFC 2585 §4.2): each issuing intermediate's
//! current CRL, signed on demand by `ra::crl` when the cached one is due.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::ca::IssuerKind;
use crate::wfe::AppState;
use crate::{Error, Result};

/// `GET /crl` — the EC intermediate's current CRL, DER (RFC 5280 §5; media type per RFC 2585
/// §4.2).
pub async fn get(State(app): State<AppState>) -> Result<Response> {
    serve(&app, IssuerKind::Ec).await
}

/// `GET /crl/rsa` — the RSA intermediate's current CRL, DER; 404 if the CA has none.
pub async fn get_rsa(State(app): State<AppState>) -> Result<Response> {
    serve(&app, IssuerKind::Rsa).await
}

async fn serve(app: &AppState, kind: IssuerKind) -> Result<Response> {
    if !app.ca.has(kind) {
        return Err(Error::NotFound("CRL"));
    }
    let der = crate::ra::crl::current(app, kind).await?;
    let mut resp = (StatusCode::OK, der).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pkix-crl"),
    );
    Ok(resp)
}
