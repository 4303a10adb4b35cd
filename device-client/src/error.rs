//! One error enum for the crate, the problem documents the CA sends (RFC 7807, RFC 8555 §6.7,
//! SPEC §3.8), and the coarse [`ErrorKind`] the CLI turns into exit codes.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use protocol_spec::problem;
use serde::Deserialize;

use crate::types::Identifier;

/// Everything that can go wrong while enrolling or renewing.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is incomplete or inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The CA's TLS certificate does not chain to the pinned root, or its root does not match
    /// the pinned fingerprint (SPEC §2.3). Nothing was sent to the CA.
    #[error("the CA's TLS certificate is not trusted: {0}")]
    Trust(String),
    /// The CA could not be reached, or the connection failed or timed out.
    #[error("cannot reach the CA at {url}: {detail}")]
    Unreachable {
        /// What was being requested.
        url: String,
        /// The transport error, with its causes.
        detail: String,
    },
    /// The CA answered with a problem document (RFC 8555 §6.7).
    #[error("the CA refused {request}: {problem}")]
    Problem {
        /// What was being requested (`newAccount`, `finalize`, …).
        request: String,
        /// The problem document.
        problem: Box<Problem>,
        /// The response's Retry-After, if any (`rateLimited`, maintenance).
        retry_after: Option<Duration>,
    },
    /// The CA answered something that is not valid ACME.
    #[error("unexpected answer from the CA to {request}: {detail}")]
    Protocol {
        /// What was being requested.
        request: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// An authorization became `invalid`: the CA could not validate the challenge.
    #[error("authorization of {identifier} failed{}", fmt_problem(.problem))]
    AuthorizationFailed {
        /// The identifier, as `type:value`.
        identifier: String,
        /// The challenge's `error`, if the CA gave one.
        problem: Option<Box<Problem>>,
    },
    /// The order became `invalid` for a reason other than a failed authorization.
    #[error("order {url} became invalid{}", fmt_problem(.problem))]
    OrderInvalid {
        /// The order URL.
        url: String,
        /// The order's `error`, if any.
        problem: Option<Box<Problem>>,
    },
    /// Waiting for the CA took longer than the configured limit.
    #[error("gave up waiting for {what} after {}s", .waited.as_secs())]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// An authorization offers no challenge of the type this device answers.
    #[error("the CA offers no {wanted} challenge for {identifier} (offered: {})", .offered.join(", "))]
    NoChallenge {
        /// The identifier, as `type:value`.
        identifier: String,
        /// The challenge type the device answers.
        wanted: String,
        /// The types the authorization offers.
        offered: Vec<String>,
    },
    /// The configured certificate profile is not in the directory's `meta.profiles`
    /// (draft-ietf-acme-profiles §3); checked before any order is placed.
    #[error("{}", profile_not_offered(.profile, .offered))]
    ProfileNotOffered {
        /// The configured profile.
        profile: String,
        /// What the CA offers, `name (description)`; empty if it advertises no profiles.
        offered: Vec<String>,
    },
    /// The http-01 responder could not listen on its address.
    #[error("cannot listen for http-01 on {addr}: {source}")]
    Http01Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The tls-alpn-01 responder could not listen on its address.
    #[error("cannot listen for tls-alpn-01 on {addr}: {source}")]
    TlsAlpn01Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A local file could not be read or written.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// `read`, `write`, `create`, …
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key, certificate or state file exists but cannot be used.
    #[error("{}: {detail}", .path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A cryptographic operation failed (key generation, signing, CSR).
    #[error("crypto: {0}")]
    Crypto(String),
    /// A PKCS #11 token could not be used for now: not present (yet), its slot or device
    /// failing, a session lost. Tried again by `run`; a wrong PIN is [`Error::Config`].
    #[error("{0}")]
    Token(String),
    /// The certificate was installed but the post-install command failed.
    #[error("post-install command `{command}` {detail}")]
    PostInstall {
        /// The command line.
        command: String,
        /// How it failed.
        detail: String,
    },
}

fn profile_not_offered(profile: &str, offered: &[String]) -> String {
    if offered.is_empty() {
        format!(
            "configuration: the CA offers no certificate profiles (its directory has no \
             meta.profiles), so profile {profile:?} cannot be used: remove --profile"
        )
    } else {
        format!(
            "configuration: the CA does not offer profile {profile:?}; it offers: {}",
            offered.join(", ")
        )
    }
}

/// `text` from the CA (a problem detail, a profile description, an identifier) made safe to
/// print on a terminal or into a log line: control characters, including ESC and line breaks,
/// and the bidirectional overrides that reorder what a reader sees, are written as escapes
/// (`\u{1b}`, `\n`, `\u{202e}`), the rest as it is.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

fn fmt_problem(p: &Option<Box<Problem>>) -> String {
    p.as_ref().map_or_else(String::new, |p| format!(": {p}"))
}

/// Coarse classes of [`Error`], one per CLI exit code (see `device-client --help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad configuration or usage.
    Config,
    /// The CA is not the one pinned.
    Trust,
    /// The CA could not be reached or did not answer in time: try again later.
    Unreachable,
    /// The CA refused a request or answered with something that is not ACME.
    Refused,
    /// The CA could not validate the device's challenge.
    Validation,
    /// A local file, key or port problem.
    Local,
    /// The certificate is installed, but the post-install command failed.
    PostInstall,
    /// A bug or an unexpected failure.
    Internal,
}

/// A token key's error as this crate's, with the same text: a configuration problem stays one
/// (exit 2), a token not there for now is tried again.
impl From<pkcs11_key::Error> for Error {
    fn from(e: pkcs11_key::Error) -> Self {
        match e {
            pkcs11_key::Error::Config(m) => Self::Config(m),
            pkcs11_key::Error::Token(m) => Self::Token(m),
            pkcs11_key::Error::Crypto(m) => Self::Crypto(m),
            // The enum is non_exhaustive: anything newer is the token's for now.
            other => Self::Token(other.to_string()),
        }
    }
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config(_) | Self::ProfileNotOffered { .. } => ErrorKind::Config,
            Self::Trust(_) => ErrorKind::Trust,
            Self::Unreachable { .. } | Self::Timeout { .. } => ErrorKind::Unreachable,
            Self::Problem { .. } | Self::Protocol { .. } | Self::NoChallenge { .. } => {
                ErrorKind::Refused
            }
            Self::AuthorizationFailed { .. } | Self::OrderInvalid { .. } => ErrorKind::Validation,
            Self::Http01Listen { .. }
            | Self::TlsAlpn01Listen { .. }
            | Self::Io { .. }
            | Self::BadFile { .. }
            | Self::Token(_) => ErrorKind::Local,
            Self::PostInstall { .. } => ErrorKind::PostInstall,
            Self::Crypto(_) => ErrorKind::Internal,
        }
    }

    /// The Retry-After the CA sent with this error, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Problem { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The problem document, if the CA sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Problem { problem, .. } => Some(problem),
            Self::AuthorizationFailed { problem, .. } | Self::OrderInvalid { problem, .. } => {
                problem.as_deref()
            }
            _ => None,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, detail: impl fmt::Display) -> Self {
        Self::BadFile {
            path: path.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn protocol(request: impl Into<String>, detail: impl fmt::Display) -> Self {
        Self::Protocol {
            request: request.into(),
            detail: detail.to_string(),
        }
    }
}

/// The prefix of every ACME problem type (RFC 8555 §6.7).
pub const ACME_ERROR_PREFIX: &str = problem::NAMESPACE;

/// ACME problem types (RFC 8555 §6.7) and this profile's extension types: the profile's one
/// table (SPEC §3.8), which the server and the embedded client map through too.
pub use protocol_spec::problem::Type as ProblemType;

/// A problem document (RFC 7807) as ACME uses it (RFC 8555 §6.7, SPEC §3.8).
///
/// The client acts on [`Problem::kind`] and `status`, never on `detail`, which is for people
/// (SPEC §3.8).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// The type URI, e.g. `urn:ietf:params:acme:error:badNonce`.
    #[serde(rename = "type", default)]
    pub type_uri: String,
    /// Text for people.
    #[serde(default)]
    pub detail: Option<String>,
    /// The HTTP status the server meant.
    #[serde(default)]
    pub status: Option<u16>,
    /// The identifier this (sub)problem is about (RFC 8555 §6.7.1).
    #[serde(default)]
    pub identifier: Option<Identifier>,
    /// Per-identifier problems of a `compound` problem (RFC 8555 §6.7.1).
    #[serde(default)]
    pub subproblems: Vec<Self>,
    /// The `alg` values the server accepts, with `badSignatureAlgorithm` (RFC 8555 §6.2).
    #[serde(default)]
    pub algorithms: Vec<String>,
}

impl Problem {
    /// The problem type; `None` for a type the profile does not list (SPEC §3.8).
    pub fn kind(&self) -> Option<ProblemType> {
        ProblemType::from_urn(&self.type_uri)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self
            .type_uri
            .strip_prefix(ACME_ERROR_PREFIX)
            .unwrap_or(&self.type_uri);
        let short = if short.is_empty() { "problem" } else { short };
        // Everything here comes from the CA: printed with its control characters escaped.
        f.write_str(&printable(short))?;
        if let Some(status) = self.status {
            write!(f, " ({status})")?;
        }
        if let Some(id) = &self.identifier {
            write!(f, " for {}", printable(&id.to_string()))?;
        }
        if let Some(detail) = self.detail.as_deref().filter(|d| !d.is_empty()) {
            write!(f, ": {}", printable(detail))?;
        }
        for sub in &self.subproblems {
            write!(f, "; {sub}")?;
        }
        if !self.algorithms.is_empty() {
            write!(
                f,
                " (the CA accepts {})",
                printable(&self.algorithms.join(", "))
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8555 §6.7.1: the example compound problem, parsed and printed.
    #[test]
    fn rfc8555_compound_example() {
        let json = r#"{
            "type": "urn:ietf:params:acme:error:malformed",
            "detail": "Some of the identifiers requested were rejected",
            "subproblems": [
                {
                    "type": "urn:ietf:params:acme:error:malformed",
                    "detail": "Invalid underscore in DNS name \"_example.org\"",
                    "identifier": {"type": "dns", "value": "_example.org"}
                },
                {
                    "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                    "detail": "This CA will not issue for \"example.net\"",
                    "identifier": {"type": "dns", "value": "example.net"}
                }
            ]
        }"#;
        let p: Problem = serde_json::from_str(json).expect("parses");
        assert_eq!(p.kind(), Some(ProblemType::Malformed));
        assert_eq!(
            p.subproblems[1].kind(),
            Some(ProblemType::RejectedIdentifier)
        );
        let text = p.to_string();
        assert!(
            text.starts_with("malformed: Some of the identifiers"),
            "{text}"
        );
        assert!(
            text.contains("; rejectedIdentifier for dns:example.net: This CA will not"),
            "{text}"
        );
    }

    #[test]
    fn unknown_and_foreign_types() {
        let kind = |uri: &str| {
            Problem {
                type_uri: uri.into(),
                ..Problem::default()
            }
            .kind()
        };
        assert_eq!(kind("about:blank"), None);
        assert_eq!(kind("urn:ietf:params:acme:error:nope"), None);
        assert_eq!(
            kind("urn:ietf:params:acme:error:badCSR"),
            Some(ProblemType::BadCsr)
        );
        let p = Problem {
            type_uri: "urn:ietf:params:acme:error:badSignatureAlgorithm".into(),
            algorithms: vec!["ES256".into(), "EdDSA".into()],
            status: Some(400),
            ..Problem::default()
        };
        assert_eq!(
            p.to_string(),
            "badSignatureAlgorithm (400) (the CA accepts ES256, EdDSA)"
        );
    }

    #[test]
    fn profile_not_offered_lists_the_offer_or_says_there_is_none() {
        let e = Error::ProfileNotOffered {
            profile: "opc-ua".into(),
            offered: vec!["default (TLS)".into(), "opcua (OPC UA)".into()],
        };
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(
            e.to_string(),
            "configuration: the CA does not offer profile \"opc-ua\"; it offers: default (TLS), \
             opcua (OPC UA)"
        );
        let none = Error::ProfileNotOffered {
            profile: "opcua".into(),
            offered: Vec::new(),
        };
        assert!(
            none.to_string()
                .contains("the CA offers no certificate profiles"),
            "{none}"
        );
    }

    #[test]
    fn text_from_the_ca_is_printed_with_control_characters_escaped() {
        let p = Problem {
            type_uri: "urn:ietf:params:acme:error:malformed\u{1b}[31m".into(),
            detail: Some("line one\nline two \u{1b}]0;owned\u{7} \u{202e}txt".into()),
            identifier: Some(Identifier {
                kind: "dns".into(),
                value: "a\rb".into(),
            }),
            ..Problem::default()
        };
        let text = p.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert_eq!(
            text,
            "malformed\\u{1b}[31m for dns:a\\rb: line one\\nline two \\u{1b}]0;owned\\u{7} \
             \\u{202e}txt"
        );
        assert_eq!(printable("Zähler (OPC UA)"), "Zähler (OPC UA)");
    }

    #[test]
    fn kinds_for_exit_codes() {
        assert_eq!(Error::Trust("x".into()).kind(), ErrorKind::Trust);
        assert_eq!(
            Error::Timeout {
                what: "order".into(),
                waited: Duration::from_secs(3)
            }
            .to_string(),
            "gave up waiting for order after 3s"
        );
        let e = Error::AuthorizationFailed {
            identifier: "dns:plc-7".into(),
            problem: None,
        };
        assert_eq!(e.kind(), ErrorKind::Validation);
        assert_eq!(e.to_string(), "authorization of dns:plc-7 failed");
    }
}
