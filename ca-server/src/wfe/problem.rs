//! Problem documents on the wire (RFC 7807, RFC 8555 §6.7): how an [`Error`] becomes an HTTP
//! response. This is the only place an error is turned into one, so every failure of every
//! route has the same shape.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::error::InternalCause;
use crate::{Error, ProblemType};

/// The type of the problem document a response carries, attached as an extension so the
/// middleware counts it (`iiot_acme_problems_total`).
#[derive(Clone, Copy, Debug)]
pub struct ProblemSent(pub ProblemType);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let problem = self.to_problem();
        let status = self.status();
        let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (status, body).into_response();
        resp.extensions_mut()
            .insert(ProblemSent(self.problem_type()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        // > The 408 (Request Timeout) status code indicates that the server did not receive
        // > a complete request message within the time that it was prepared to wait.
        // <https://www.rfc-editor.org/rfc/rfc9110#section-15.5.9>
        // The rest of the body may still arrive, so the connection cannot carry another
        // request: `Connection: close` makes hyper close it after this response.
        if let Self::RequestTimeout(_) = &self {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Self::Conflict { location, .. } = &self {
            if let Ok(v) = HeaderValue::from_str(location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
        }
        // > … the server … MAY include a Retry-After header field indicating how long to wait
        // > before making the request again.  (RFC 8555 §6.6)
        // Whole seconds, rounded up, so a client that waits that long finds a token.
        if let Self::RateLimited { retry_after, .. } = &self {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        // > The server is currently unable to handle the request due to a temporary overload
        // > or scheduled maintenance … The server MAY send a Retry-After header field …
        // <https://www.rfc-editor.org/rfc/rfc9110#section-15.6.4>
        if let Self::Storage(_) | Self::SigningKey(_) = &self {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::error::STORAGE_RETRY_AFTER.as_secs()),
            );
        }
        if matches!(
            self,
            Self::Storage(_) | Self::SigningKey(_) | Self::Internal(_)
        ) {
            resp.extensions_mut()
                .insert(InternalCause(self.to_string()));
        } else {
            tracing::debug!(error = %self, "client error");
        }
        resp
    }
}
