//! ACME wire types (RFC 8555 §7.1) shared by the handlers, storage and validation.
//!
//! Behaviour lives in the role modules; this module only describes what goes over the wire.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// Identifier types this CA accepts in orders.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-9.7.7>,
/// <https://www.rfc-editor.org/rfc/rfc8738#section-3>
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentifierType {
    /// A DNS name (RFC 8555).
    Dns,
    /// An IPv4 or IPv6 address in its textual form (RFC 8738).
    Ip,
    /// A device serial number, `serial["/"assignerOID]` (draft-ietf-acme-device-attest §3;
    /// SPEC §4).
    PermanentIdentifier,
}

impl fmt::Display for IdentifierType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dns => "dns",
            Self::Ip => "ip",
            Self::PermanentIdentifier => "permanent-identifier",
        })
    }
}

/// An ACME identifier object.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.1.3>
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identifier {
    /// The identifier type.
    #[serde(rename = "type")]
    pub kind: IdentifierType,
    /// The identifier value, in canonical form once validated by `order::normalize_identifier`.
    pub value: String,
}

impl Identifier {
    /// A `dns` identifier.
    pub fn dns(value: impl Into<String>) -> Self {
        Self {
            kind: IdentifierType::Dns,
            value: value.into(),
        }
    }

    /// An `ip` identifier from an address (canonical RFC 5952 text form).
    pub fn ip(addr: IpAddr) -> Self {
        Self {
            kind: IdentifierType::Ip,
            value: addr.to_string(),
        }
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Account status, RFC 8555 §7.1.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AccountStatus {
    /// Usable.
    Valid,
    /// Deactivated by the client (§7.3.6); final.
    Deactivated,
    /// Revoked by the server; final.
    Revoked,
}

/// Order status, RFC 8555 §7.1.6. There is deliberately no `Deactivated` (pebble#300).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OrderStatus {
    /// Some authorization is still pending.
    Pending,
    /// All authorizations are valid; the order may be finalized.
    Ready,
    /// Finalize accepted; the certificate is being issued.
    Processing,
    /// The certificate has been issued.
    Valid,
    /// An authorization failed, the order expired, or issuance failed.
    Invalid,
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Processing => "processing",
            Self::Valid => "valid",
            Self::Invalid => "invalid",
        })
    }
}

/// Authorization status, RFC 8555 §7.1.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthzStatus {
    /// Waiting for a challenge to succeed.
    Pending,
    /// A challenge succeeded.
    Valid,
    /// A challenge failed.
    Invalid,
    /// Deactivated by the client.
    Deactivated,
    /// Passed its `expires` time.
    Expired,
    /// Revoked by the server.
    Revoked,
}

/// Challenge status, RFC 8555 §7.1.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChallengeStatus {
    /// Not yet triggered by the client.
    Pending,
    /// Triggered; validation is running.
    Processing,
    /// Validation succeeded.
    Valid,
    /// Validation failed; `error` says why.
    Invalid,
}

/// Challenge types this CA validates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChallengeType {
    /// RFC 8555 §8.3.
    #[serde(rename = "http-01")]
    Http01,
    /// RFC 8737.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// draft-ietf-acme-device-attest §5: an attestation by the device's manufacturer identity.
    #[serde(rename = "device-attest-01")]
    DeviceAttest01,
    /// SPEC: an operator approves the device, comparing a pairing code.
    #[serde(rename = "operator-approval-01")]
    OperatorApproval01,
}

impl ChallengeType {
    /// The wire name of this type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
            Self::DeviceAttest01 => "device-attest-01",
            Self::OperatorApproval01 => "operator-approval-01",
        }
    }
}

impl fmt::Display for ChallengeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Current Unix time in seconds: the system clock plus the lab clock's offset (zero unless
/// `lab_clock` is on and an operator stepped it). Every decision the protocol makes from the
/// time (expiry of orders, authorizations and approvals, certificate validity, CRL dates,
/// renewal windows) reads it here.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc()
        .unix_timestamp()
        .saturating_add(LAB_CLOCK_OFFSET.load(std::sync::atomic::Ordering::Relaxed))
}

/// Seconds the lab clock runs ahead of the system clock (negative: behind). Not persisted: a
/// restart runs on the system clock again.
static LAB_CLOCK_OFFSET: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Steps [`now`] by `seconds` (forward if positive) and returns the new offset from the
/// system clock. Only the admin socket's `/lab/clock-step` calls this, and only with
/// `lab_clock = true` in the configuration, so the clock steps of a test lab can be played
/// without touching the machine's clock.
pub fn lab_clock_step(seconds: i64) -> i64 {
    use std::sync::atomic::Ordering;
    let before = LAB_CLOCK_OFFSET
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
            Some(o.saturating_add(seconds))
        })
        .unwrap_or_else(|o| o);
    before.saturating_add(seconds)
}

/// RFC 3339 text for a Unix time, as ACME's timestamp fields use.
pub fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// A new random identifier for a resource: 128 bits, base64url.
pub fn new_id() -> crate::Result<String> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| crate::Error::Internal("system RNG failed".into()))?;
    Ok(crate::wire::b64u(b))
}

/// A duration that [`parse_duration`] cannot read; `Display` says what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

/// Parses `"90s"`, `"30m"`, `"12h"`, `"7d"` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| {
        DurationError(format!(
            "invalid duration {s:?}: expected e.g. 90s, 30m, 12h, 7d"
        ))
    })?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(DurationError(format!(
                "invalid duration unit in {s:?}: use s, m, h or d"
            )))
        }
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| DurationError(format!("duration {s:?} is too large")))
}

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

pub(crate) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// `d` as [`parse_duration`] reads it, in the largest unit that divides it exactly (`"7d"`,
/// `"36h"`, `"90s"`), or `None` when it has a fraction of a second, which the configuration's
/// syntax cannot express.
pub fn format_duration(d: Duration) -> Option<String> {
    if d.subsec_nanos() != 0 {
        return None;
    }
    let s = d.as_secs();
    let (n, unit) = [(86_400, "d"), (3600, "h"), (60, "m")]
        .into_iter()
        .find(|(mult, _)| s != 0 && s % mult == 0)
        .map_or((s, "s"), |(mult, unit)| (s / mult, unit));
    Some(format!("{n}{unit}"))
}

/// Writes a duration as [`format_duration`] does; a fraction of a second is an error rather
/// than a rounded value.
pub(crate) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    match format_duration(*d) {
        Some(text) => s.serialize_str(&text),
        None => Err(serde::ser::Error::custom(format!(
            "duration {d:?} has a fraction of a second, which a configuration cannot express"
        ))),
    }
}

/// [`ser_duration`] for an optional duration.
pub(crate) fn ser_opt_duration<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}
