//! The one error type of the crate. Small and `Copy`, so firmware can store, log and compare it
//! without an allocator; each variant says which side failed.

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
    /// A type outside the `urn:ietf:params:acme:error:` namespace or not listed in SPEC §3.8.
    Other,
}

impl ProblemKind {
    const NAMESPACE: &'static str = "urn:ietf:params:acme:error:";

    /// Maps a problem document's `type` member.
    pub fn from_type(problem_type: &str) -> Self {
        let Some(name) = problem_type.strip_prefix(Self::NAMESPACE) else {
            return Self::Other;
        };
        position_in(PROBLEM_NAMES, name)
            .and_then(|i| PROBLEM_KINDS.get(i).copied())
            .unwrap_or(Self::Other)
    }
}

/// The names after [`ProblemKind::NAMESPACE`], `;`-separated, in the order of
/// [`PROBLEM_KINDS`]. One string and a kind per name rather than a `match` (a comparison per
/// arm) or a table of `(&str, kind)` pairs (12 octets an entry) keeps this small on a
/// microcontroller; a unit test checks the two lists agree.
const PROBLEM_NAMES: &str = "malformed;badNonce;badSignatureAlgorithm;badPublicKey;accountDoesNotExist;unauthorized;externalAccountRequired;orderNotReady;badCSR;rejectedIdentifier;unsupportedIdentifier;compound;invalidContact;unsupportedContact;badRevocationReason;alreadyRevoked;alreadyReplaced;invalidProfile;connection;dns;tls;incorrectResponse;badAttestationStatement;serverInternal;rateLimited";

const PROBLEM_KINDS: [ProblemKind; 25] = [
    ProblemKind::Malformed,
    ProblemKind::BadNonce,
    ProblemKind::BadSignatureAlgorithm,
    ProblemKind::BadPublicKey,
    ProblemKind::AccountDoesNotExist,
    ProblemKind::Unauthorized,
    ProblemKind::ExternalAccountRequired,
    ProblemKind::OrderNotReady,
    ProblemKind::BadCsr,
    ProblemKind::RejectedIdentifier,
    ProblemKind::UnsupportedIdentifier,
    ProblemKind::Compound,
    ProblemKind::InvalidContact,
    ProblemKind::UnsupportedContact,
    ProblemKind::BadRevocationReason,
    ProblemKind::AlreadyRevoked,
    ProblemKind::AlreadyReplaced,
    ProblemKind::InvalidProfile,
    ProblemKind::Connection,
    ProblemKind::Dns,
    ProblemKind::Tls,
    ProblemKind::IncorrectResponse,
    ProblemKind::BadAttestationStatement,
    ProblemKind::ServerInternal,
    ProblemKind::RateLimited,
];

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
    fn every_problem_name_maps_to_its_kind() {
        let expect = [
            ("malformed", ProblemKind::Malformed),
            ("badNonce", ProblemKind::BadNonce),
            ("badSignatureAlgorithm", ProblemKind::BadSignatureAlgorithm),
            ("badPublicKey", ProblemKind::BadPublicKey),
            ("accountDoesNotExist", ProblemKind::AccountDoesNotExist),
            ("unauthorized", ProblemKind::Unauthorized),
            (
                "externalAccountRequired",
                ProblemKind::ExternalAccountRequired,
            ),
            ("orderNotReady", ProblemKind::OrderNotReady),
            ("badCSR", ProblemKind::BadCsr),
            ("rejectedIdentifier", ProblemKind::RejectedIdentifier),
            ("unsupportedIdentifier", ProblemKind::UnsupportedIdentifier),
            ("compound", ProblemKind::Compound),
            ("invalidContact", ProblemKind::InvalidContact),
            ("unsupportedContact", ProblemKind::UnsupportedContact),
            ("badRevocationReason", ProblemKind::BadRevocationReason),
            ("alreadyRevoked", ProblemKind::AlreadyRevoked),
            ("alreadyReplaced", ProblemKind::AlreadyReplaced),
            ("invalidProfile", ProblemKind::InvalidProfile),
            ("connection", ProblemKind::Connection),
            ("dns", ProblemKind::Dns),
            ("tls", ProblemKind::Tls),
            ("incorrectResponse", ProblemKind::IncorrectResponse),
            (
                "badAttestationStatement",
                ProblemKind::BadAttestationStatement,
            ),
            ("serverInternal", ProblemKind::ServerInternal),
            ("rateLimited", ProblemKind::RateLimited),
        ];
        for (name, kind) in expect {
            let urn = [ProblemKind::NAMESPACE, name].concat();
            assert_eq!(ProblemKind::from_type(&urn), kind, "{name}");
        }
        assert_eq!(PROBLEM_NAMES.split(';').count(), PROBLEM_KINDS.len());
        for other in [
            "",
            "urn:ietf:params:acme:error:",
            "urn:ietf:params:acme:error:badnonce",
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
