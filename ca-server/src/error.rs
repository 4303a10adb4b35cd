//! The crate's one error type and its single mapping to RFC 7807 problem documents: each
//! variant's `urn:ietf:params:acme:error:*` type and HTTP status are decided here
//! ([`Error::to_problem`], [`Error::status`]); `wfe::problem` writes the response.
//! <https://www.rfc-editor.org/rfc/rfc8555#section-6.7>

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::types::Identifier;

/// Everything that can go wrong in the CA server.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is not well-formed or breaks a protocol rule.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The request body is not `application/jose+json` (RFC 8555 §6.2: 415).
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The request body is larger than the server accepts.
    #[error("request body too large")]
    PayloadTooLarge,
    /// The request was not complete within `limits.request_timeout` (RFC 9110 §15.5.9: 408).
    #[error("the request was not complete within {0:?} (limits.request_timeout)")]
    RequestTimeout(std::time::Duration),
    /// The nonce is unknown, used or expired (RFC 8555 §6.5).
    #[error("bad nonce: {0}")]
    BadNonce(&'static str),
    /// The JWS `alg` is not one we accept (RFC 8555 §6.2).
    #[error("unsupported signature algorithm {0:?}")]
    BadSignatureAlgorithm(String),
    /// A public key (JWS or CSR) is unusable or not accepted by policy.
    #[error("bad public key: {0}")]
    BadPublicKey(String),
    /// The CSR is unacceptable (RFC 8555 §7.4).
    #[error("bad CSR: {0}")]
    BadCsr(String),
    /// The signature does not verify, or the account may not do this.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The console needs an operator's client certificate and got none it knows (401).
    #[error("operator certificate required: {0}")]
    OperatorRequired(String),
    /// The operator's role may not do this (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// What the request would create exists already (409).
    #[error("{0}")]
    Exists(String),
    /// The account is deactivated or revoked (RFC 8555 §7.3.6: 401 unauthorized).
    #[error("account is not valid: {0}")]
    AccountNotValid(String),
    /// `onlyReturnExisting` or a `kid` named an account that does not exist.
    #[error("account does not exist")]
    AccountDoesNotExist,
    /// New accounts must carry an external account binding (RFC 8555 §7.3.4).
    #[error("external account binding required: {0}")]
    ExternalAccountRequired(String),
    /// Finalize on an order that is not `ready` (RFC 8555 §7.4).
    #[error("order is not ready: status is {0}")]
    OrderNotReady(String),
    /// The CA will not issue for this identifier.
    #[error("rejected identifier {identifier}: {detail}")]
    RejectedIdentifier {
        /// The identifier concerned.
        identifier: Identifier,
        /// Why it was refused.
        detail: String,
    },
    /// The identifier type is not supported.
    #[error("unsupported identifier: {0}")]
    UnsupportedIdentifier(String),
    /// newOrder asked for a profile the server does not offer, or one this account may not
    /// use (draft-ietf-acme-profiles).
    #[error("invalid profile: {0}")]
    InvalidProfile(String),
    /// Several identifiers failed; each carries its own problem (RFC 8555 §6.7.1).
    #[error("{detail}")]
    Compound {
        /// Summary.
        detail: String,
        /// Per-identifier problems.
        subproblems: Vec<Problem>,
    },
    /// A `contact` URL is invalid or its scheme unsupported.
    #[error("invalid contact: {0}")]
    InvalidContact(String),
    /// A `contact` URL scheme is not supported.
    #[error("unsupported contact: {0}")]
    UnsupportedContact(String),
    /// The HTTP method is not allowed on this resource (RFC 8555 §6.3: POST-as-GET).
    #[error("method {0} is not allowed here; ACME resources are fetched with POST-as-GET")]
    MethodNotAllowed(String),
    /// No such resource (or not visible to the requesting account).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The resource exists under another key (keyChange, RFC 8555 §7.3.5: 409 + Location).
    #[error("conflict: {detail}")]
    Conflict {
        /// What conflicts.
        detail: String,
        /// The URL of the conflicting resource.
        location: String,
    },
    /// newOrder `replaces` names a certificate another order replaced (RFC 9773 §5).
    #[error("already replaced: {0}")]
    AlreadyReplaced(String),
    /// The certificate was already revoked.
    #[error("certificate already revoked")]
    AlreadyRevoked,
    /// The revocation reason code is not allowed.
    #[error("bad revocation reason: {0}")]
    BadRevocationReason(String),
    /// A rate limit was hit (RFC 8555 §6.6): 429 with `Retry-After`.
    #[error("rate limited: {detail}")]
    RateLimited {
        /// Which limit, and what it allows.
        detail: String,
        /// When the client may try again.
        retry_after: std::time::Duration,
    },
    /// A device attestation did not verify (draft-ietf-acme-device-attest §5).
    #[error("bad attestation statement: {0}")]
    BadAttestationStatement(String),
    /// Validation could not connect to the identifier.
    #[error("connection failed: {0}")]
    Connection(String),
    /// Validation got an answer that did not match the challenge.
    #[error("incorrect response: {0}")]
    IncorrectResponse(String),
    /// Validation failed in the TLS layer (tls-alpn-01).
    #[error("tls error: {0}")]
    Tls(String),
    /// Validation could not resolve the name.
    #[error("dns error: {0}")]
    Dns(String),
    /// The persistent store failed (a full disk, an I/O error, an unreadable record): 503 with
    /// `Retry-After` ([`STORAGE_RETRY_AFTER`]), because the store may recover without a
    /// restart (see `storage::Store::recover`).
    #[error("storage error: {0}")]
    Storage(String),
    /// The CA's signing key in its PKCS #11 token failed (token removed, session lost, the
    /// token busy or failing): 503 with `Retry-After` ([`STORAGE_RETRY_AFTER`]), like
    /// [`Error::Storage`], because the token may come back without a restart.
    #[error("signing key: {0}")]
    SigningKey(String),
    /// Any other failure on our side; the cause is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// `Retry-After` of a storage error's 503: how often the server tries to recover the store.
pub const STORAGE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The cause of a `serverInternal` response, attached to the response as an extension so a
/// logging middleware can record it without the response body revealing it.
#[derive(Clone, Debug)]
pub struct InternalCause(pub String);

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The problem type this error maps to on the wire.
    pub fn problem_type(&self) -> ProblemType {
        match self {
            Self::Malformed(_)
            | Self::UnsupportedMediaType(_)
            | Self::PayloadTooLarge
            | Self::RequestTimeout(_)
            | Self::NotFound(_)
            | Self::MethodNotAllowed(_)
            | Self::Conflict { .. }
            | Self::Exists(_) => ProblemType::Malformed,
            Self::BadNonce(_) => ProblemType::BadNonce,
            Self::BadSignatureAlgorithm(_) => ProblemType::BadSignatureAlgorithm,
            Self::BadPublicKey(_) => ProblemType::BadPublicKey,
            Self::BadCsr(_) => ProblemType::BadCsr,
            Self::Unauthorized(_)
            | Self::AccountNotValid(_)
            | Self::OperatorRequired(_)
            | Self::Forbidden(_) => ProblemType::Unauthorized,
            Self::AccountDoesNotExist => ProblemType::AccountDoesNotExist,
            Self::ExternalAccountRequired(_) => ProblemType::ExternalAccountRequired,
            Self::OrderNotReady(_) => ProblemType::OrderNotReady,
            Self::RejectedIdentifier { .. } => ProblemType::RejectedIdentifier,
            Self::UnsupportedIdentifier(_) => ProblemType::UnsupportedIdentifier,
            Self::InvalidProfile(_) => ProblemType::InvalidProfile,
            Self::Compound { .. } => ProblemType::Compound,
            Self::InvalidContact(_) => ProblemType::InvalidContact,
            Self::UnsupportedContact(_) => ProblemType::UnsupportedContact,
            Self::AlreadyRevoked => ProblemType::AlreadyRevoked,
            Self::AlreadyReplaced(_) => ProblemType::AlreadyReplaced,
            Self::BadRevocationReason(_) => ProblemType::BadRevocationReason,
            Self::BadAttestationStatement(_) => ProblemType::BadAttestationStatement,
            Self::RateLimited { .. } => ProblemType::RateLimited,
            Self::Connection(_) => ProblemType::Connection,
            Self::IncorrectResponse(_) => ProblemType::IncorrectResponse,
            Self::Tls(_) => ProblemType::Tls,
            Self::Dns(_) => ProblemType::Dns,
            Self::Storage(_) | Self::SigningKey(_) | Self::Internal(_) => {
                ProblemType::ServerInternal
            }
        }
    }

    /// The HTTP status for this error; the problem type's default except where the RFC or
    /// HTTP semantics ask for a more precise one.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::AccountNotValid(_) | Self::OperatorRequired(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Exists(_) => StatusCode::CONFLICT,
            Self::Storage(_) | Self::SigningKey(_) => StatusCode::SERVICE_UNAVAILABLE,
            other => default_status(other.problem_type()),
        }
    }

    /// The problem document for this error. Internal causes are replaced by a generic detail.
    pub fn to_problem(&self) -> Problem {
        let kind = self.problem_type();
        let detail = match self {
            Self::Storage(_) => {
                "the server cannot use its store at the moment; try again later".to_owned()
            }
            Self::SigningKey(_) => {
                "the server cannot use its signing key at the moment; try again later".to_owned()
            }
            Self::Internal(_) => "the server hit an internal error".to_owned(),
            Self::BadNonce(why) => format!("JWS has an invalid anti-replay nonce: {why}"),
            Self::Malformed(d)
            | Self::BadPublicKey(d)
            | Self::BadCsr(d)
            | Self::Unauthorized(d)
            | Self::AccountNotValid(d)
            | Self::ExternalAccountRequired(d)
            | Self::UnsupportedIdentifier(d)
            | Self::InvalidProfile(d)
            | Self::InvalidContact(d)
            | Self::UnsupportedContact(d)
            | Self::BadRevocationReason(d)
            | Self::BadAttestationStatement(d)
            | Self::AlreadyReplaced(d)
            | Self::Connection(d)
            | Self::IncorrectResponse(d)
            | Self::Tls(d)
            | Self::Dns(d)
            | Self::UnsupportedMediaType(d)
            | Self::OperatorRequired(d)
            | Self::Forbidden(d)
            | Self::Exists(d)
            | Self::RateLimited { detail: d, .. } => d.clone(),
            other => other.to_string(),
        };
        let mut problem = Problem::new(kind, detail);
        problem.status = self.status().as_u16();
        match self {
            Self::BadSignatureAlgorithm(_) => {
                problem.algorithms = Some(
                    crate::jwk::SUPPORTED_ALGORITHMS
                        .iter()
                        .map(|a| (*a).to_owned())
                        .collect(),
                );
            }
            // > … the server MAY use the "identifier" field of a subproblem … (§6.7.1): the
            // field belongs to subproblems, so the identifier goes into one.
            // <https://www.rfc-editor.org/rfc/rfc8555#section-6.7.1>
            Self::RejectedIdentifier { identifier, .. } => {
                problem.subproblems = vec![problem.clone().about(identifier.clone())];
            }
            Self::Compound { subproblems, .. } => problem.subproblems = subproblems.clone(),
            _ => {}
        }
        problem
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

impl From<tokio_postgres::Error> for Error {
    /// The database's own message when it sent one (tokio-postgres's `Display` says only
    /// "db error"), else the client's with its cause (a refused or dropped connection).
    fn from(e: tokio_postgres::Error) -> Self {
        let why = match (e.as_db_error(), std::error::Error::source(&e)) {
            (Some(db), _) => format!("PostgreSQL: {} ({})", db.message(), db.code().code()),
            (None, Some(cause)) => format!("PostgreSQL: {e}: {cause}"),
            (None, None) => format!("PostgreSQL: {e}"),
        };
        Self::Storage(why)
    }
}

/// The ACME problem types (RFC 8555 §6.7 and the extensions this profile uses, SPEC §3.8): the
/// shared table, so the server, the clients and the vectors spell every URN alike.
pub use protocol_spec::problem::Type as ProblemType;

/// The HTTP status a problem of type `kind` gets when nothing more specific applies
/// (SPEC §3.8).
pub fn default_status(kind: ProblemType) -> StatusCode {
    match kind {
        ProblemType::Unauthorized
        | ProblemType::OrderNotReady
        | ProblemType::ExternalAccountRequired => StatusCode::FORBIDDEN,
        ProblemType::ServerInternal => StatusCode::INTERNAL_SERVER_ERROR,
        ProblemType::AlreadyReplaced => StatusCode::CONFLICT,
        ProblemType::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// An RFC 7807 problem document as ACME uses it (RFC 8555 §6.7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `urn:ietf:params:acme:error:*`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Human-readable explanation.
    pub detail: String,
    /// HTTP status.
    pub status: u16,
    /// The identifier a subproblem concerns (RFC 8555 §6.7.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
    /// Per-identifier problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subproblems: Vec<Self>,
    /// Supported `alg` values, sent with `badSignatureAlgorithm` (RFC 8555 §6.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
}

impl Problem {
    /// This problem as a subproblem about `identifier` (RFC 8555 §6.7.1): the `identifier`
    /// field is for subproblems only.
    pub fn about(mut self, identifier: Identifier) -> Self {
        self.identifier = Some(identifier);
        self.subproblems.clear();
        self
    }

    /// A top-level problem for a failure about one identifier: the same type, status and
    /// detail, with the identifier in a subproblem.
    pub fn wrapping(sub: Self) -> Self {
        let mut top = sub.clone();
        top.identifier = None;
        top.subproblems = vec![sub];
        top
    }

    /// A problem of `kind` with `detail` and the type's default status.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind: kind.urn().to_owned(),
            detail: detail.into(),
            status: default_status(kind).as_u16(),
            identifier: None,
            subproblems: Vec::new(),
            algorithms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_types_have_rfc_urns_and_statuses() {
        assert_eq!(
            ProblemType::BadNonce.urn(),
            "urn:ietf:params:acme:error:badNonce"
        );
        assert_eq!(
            ProblemType::BadCsr.urn(),
            "urn:ietf:params:acme:error:badCSR"
        );
        assert_eq!(
            Error::OrderNotReady("pending".into()).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            Error::UnsupportedMediaType("text/plain".into()).status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let p = Error::Internal("secret path /var/lib/x".into()).to_problem();
        assert_eq!(p.kind, "urn:ietf:params:acme:error:serverInternal");
        assert!(!p.detail.contains("secret"));
        assert_eq!(p.status, 500);
    }

    #[test]
    fn storage_errors_are_503_server_internal_without_their_cause() {
        let e = Error::Storage("No space left on device (os error 28)".into());
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let p = e.to_problem();
        assert_eq!(p.kind, "urn:ietf:params:acme:error:serverInternal");
        assert_eq!(p.status, 503);
        assert!(!p.detail.contains("space"), "{}", p.detail);
    }

    #[test]
    fn bad_signature_algorithm_lists_algorithms() {
        let p = Error::BadSignatureAlgorithm("none".into()).to_problem();
        let algs = p.algorithms.unwrap_or_default();
        assert!(algs.iter().any(|a| a == "ES256"));
    }
}
