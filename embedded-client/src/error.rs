//! The one error type of the crate. Small and `Copy`, so firmware can store, log and compare it
//! without an allocator; each variant says which side failed.

use protocol_spec::problem;

/// The ACME problem types this profile uses (SPEC §3.8), as a `Copy` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    Malformed,
    BadNonce,
    BadSignatureAlgorithm,
    BadPublicKey,
    AccountDoesNotExist,
    Unauthorized,
    ExternalAccountRequired,
    OrderNotReady,
    BadCsr,
    RejectedIdentifier,
    UnsupportedIdentifier,
    Compound,
    InvalidContact,
    UnsupportedContact,
    BadRevocationReason,
    AlreadyRevoked,
    AlreadyReplaced,
    InvalidProfile,
    Connection,
    Dns,
    Tls,
    IncorrectResponse,
    BadAttestationStatement,
    ServerInternal,
    /// A rate limit (SPEC §7.6); the client waits out `Retry-After` and asks again.
    RateLimited,
    /// A type outside the `urn:ietf:params:acme:error:` namespace, one the profile does not
    /// list (SPEC §3.8), or `caa` or `userActionRequired`, which this server never sends.
    Other,
}

impl ProblemKind {
    /// Maps a problem document's `type` member, through the profile's one table of types.
    pub fn from_type(problem_type: &str) -> Self {
        problem::Type::from_urn(problem_type).map_or(Self::Other, Self::from)
    }
}

impl From<problem::Type> for ProblemKind {
    fn from(t: problem::Type) -> Self {
        use problem::Type as T;
        match t {
            T::Malformed => Self::Malformed,
            T::BadNonce => Self::BadNonce,
            T::BadSignatureAlgorithm => Self::BadSignatureAlgorithm,
            T::BadPublicKey => Self::BadPublicKey,
            T::AccountDoesNotExist => Self::AccountDoesNotExist,
            T::Unauthorized => Self::Unauthorized,
            T::ExternalAccountRequired => Self::ExternalAccountRequired,
            T::OrderNotReady => Self::OrderNotReady,
            T::BadCsr => Self::BadCsr,
            T::RejectedIdentifier => Self::RejectedIdentifier,
            T::UnsupportedIdentifier => Self::UnsupportedIdentifier,
            T::Compound => Self::Compound,
            T::InvalidContact => Self::InvalidContact,
            T::UnsupportedContact => Self::UnsupportedContact,
            T::BadRevocationReason => Self::BadRevocationReason,
            T::AlreadyRevoked => Self::AlreadyRevoked,
            T::AlreadyReplaced => Self::AlreadyReplaced,
            T::InvalidProfile => Self::InvalidProfile,
            T::Connection => Self::Connection,
            T::Dns => Self::Dns,
            T::Tls => Self::Tls,
            T::IncorrectResponse => Self::IncorrectResponse,
            T::BadAttestationStatement => Self::BadAttestationStatement,
            T::ServerInternal => Self::ServerInternal,
            T::RateLimited => Self::RateLimited,
            // RFC 8555 types this server never sends (SPEC §3.8), so the client has no kind of
            // its own for them.
            T::Caa | T::UserActionRequired => Self::Other,
        }
    }
}

/// Where `name` is in `names`, a `;`-separated list.
pub(crate) fn position_in(names: &str, name: &str) -> Option<usize> {
    names
        .as_bytes()
        .split(|&b| b == b';')
        .position(|n| n == name.as_bytes())
}

/// Why an enrollment step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A caller buffer is too small; `needed` octets would do (0 when unknown).
    BufferTooSmall { needed: usize },
    /// The configuration cannot work: a base URL that is not `https://host[:port]`, an
    /// identifier the spec refuses (SPEC §4), an EAB key that is not base64url.
    Config(&'static str),
    /// The response is not complete HTTP/1.1 yet (the transport closed early or the caller
    /// passed a partial read).
    Truncated,
    /// The response is not HTTP/1.1 as this client reads it: bad status line, header or framing.
    Http(&'static str),
    /// The response is larger than the receive buffer.
    ResponseTooLarge,
    /// A status the protocol does not allow at this step (and no problem document explains it).
    UnexpectedStatus(u16),
    /// A `Content-Type` other than the one the step needs.
    WrongContentType,
    /// The body is not the JSON the step needs; names the member or part that failed.
    BadJson(&'static str),
    /// A server URL that is not on the server's origin, or longer than the client stores.
    BadUrl,
    /// The server answered with a problem document (SPEC §3.8).
    Problem { kind: ProblemKind, status: u16 },
    /// A challenge or authorization ended `invalid`; `kind` is its error's problem type.
    AuthorizationFailed(ProblemKind),
    /// The order ended `invalid` (e.g. the server failed to issue).
    OrderFailed(ProblemKind),
    /// No challenge of an authorization is one this client can answer with what it was given
    /// (e.g. `device-attest-01` without an IDevID signer).
    NoUsableChallenge,
    /// More authorizations than [`crate::MAX_AUTHORIZATIONS`].
    TooManyAuthorizations,
    /// The server keeps refusing nonces.
    NonceRetriesExhausted,
    /// The server requires external account binding and none was configured.
    EabRequired,
    /// The IDevID signer failed (secure element error, buffer too small).
    Signer,
    /// A key is not a valid P-256 private key, or the RNG failed.
    Key,
    /// The state machine was driven out of order (a response without a request, or after the
    /// end). A bug in the caller, reported instead of panicking.
    UnexpectedCall,
    /// The transport failed (from the blocking driver).
    Transport,
}

impl From<protocol_spec::BufferTooSmall> for Error {
    fn from(e: protocol_spec::BufferTooSmall) -> Self {
        Self::BufferTooSmall { needed: e.needed }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => {
                write!(f, "buffer too small ({needed} octets needed)")
            }
            Self::Config(what) => write!(f, "configuration: {what}"),
            Self::Truncated => f.write_str("response truncated"),
            Self::Http(what) => write!(f, "bad HTTP response: {what}"),
            Self::ResponseTooLarge => f.write_str("response larger than the receive buffer"),
            Self::UnexpectedStatus(s) => write!(f, "unexpected HTTP status {s}"),
            Self::WrongContentType => f.write_str("unexpected Content-Type"),
            Self::BadJson(what) => write!(f, "bad JSON in response: {what}"),
            Self::BadUrl => f.write_str("server URL off the CA's origin or too long"),
            Self::Problem { kind, status } => write!(f, "server problem {kind:?} (HTTP {status})"),
            Self::AuthorizationFailed(kind) => write!(f, "authorization failed: {kind:?}"),
            Self::OrderFailed(kind) => write!(f, "order failed: {kind:?}"),
            Self::NoUsableChallenge => f.write_str("no challenge this device can answer"),
            Self::TooManyAuthorizations => f.write_str("order has too many authorizations"),
            Self::NonceRetriesExhausted => f.write_str("server refused nonces repeatedly"),
            Self::EabRequired => f.write_str("server requires external account binding"),
            Self::Signer => f.write_str("IDevID signer failed"),
            Self::Key => f.write_str("invalid key or RNG failure"),
            Self::UnexpectedCall => f.write_str("state machine driven out of order"),
            Self::Transport => f.write_str("transport failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_type_maps_to_its_kind() {
        for &t in problem::Type::ALL {
            let kind = ProblemKind::from_type(t.urn());
            assert_eq!(kind, ProblemKind::from(t), "{t:?}");
            let never_sent = matches!(t, problem::Type::Caa | problem::Type::UserActionRequired);
            assert_eq!(kind == ProblemKind::Other, never_sent, "{t:?} is {kind:?}");
        }
        assert_eq!(
            ProblemKind::from_type("urn:ietf:params:acme:error:badCSR"),
            ProblemKind::BadCsr
        );
        for other in [
            "",
            "urn:ietf:params:acme:error:",
            "urn:ietf:params:acme:error:badnonce",
            "urn:ietf:params:acme:error:caa",
            "badNonce",
        ] {
            assert_eq!(
                ProblemKind::from_type(other),
                ProblemKind::Other,
                "{other:?}"
            );
        }
    }
}
