//! The certificate resources: download (RFC 8555 §7.4.2) and revokeCert (RFC 8555 §7.6, whose
//! rules are `ra::revocation`'s).

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::ra::revocation::{self, Revoker};
use crate::wfe::jws::{AccountRequest, AnyRequest, Signer};
use crate::wfe::AppState;
use crate::{Error, Result};

/// `POST /acme/cert/{id}` (POST-as-GET) — RFC 8555 §7.4.2.
///
/// > The default format of the certificate is application/pem-certificate-chain
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.4.2>
pub async fn download(
    State(app): State<AppState>,
    Path(id): Path<String>,
    r: AccountRequest,
) -> Result<Response> {
    if !r.req.is_post_as_get() {
        return Err(Error::Malformed(
            "certificates are fetched with POST-as-GET".into(),
        ));
    }
    let cert = revocation::certificate_of(&app, &r.account.id, &id)?;
    let mut resp = (StatusCode::OK, cert.chain_pem).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pem-certificate-chain"),
    );
    Ok(resp)
}

/// revokeCert payload (RFC 8555 §7.6).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Revoke {
    certificate: String,
    #[serde(default)]
    reason: Option<i64>,
}

/// `POST /acme/revoke-cert` — RFC 8555 §7.6, signed by an account (`kid`) or by the
/// certificate's key (`jwk`).
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.6>
pub async fn revoke(
    State(app): State<AppState>,
    AnyRequest(signer, req): AnyRequest,
) -> Result<Response> {
    let p: Revoke = req.json()?;
    let der = crate::wire::b64u_decode("certificate", &p.certificate)?;
    let revoker = match &signer {
        Signer::Account(acct) => Revoker::Account(acct),
        Signer::Key { key, .. } => Revoker::Key(key),
    };
    revocation::revoke(&app, revoker, &der, p.reason).await?;
    Ok(StatusCode::OK.into_response())
}
