//! ACME wire types (RFC 8555 §7.1), as far as a device needs them.
//!
//! Unknown members are ignored, as RFC 8555 §7.1 asks of clients, so the same types read
//! Pebble's and other servers' answers. Statuses are enums: a status this client does not know
//! is a protocol error, never silently "pending".

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The directory (RFC 8555 §7.1.1).
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.1.1>
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    /// `newNonce`.
    pub new_nonce: String,
    /// `newAccount`.
    pub new_account: String,
    /// `newOrder`.
    pub new_order: String,
    /// `revokeCert`.
    #[serde(default)]
    pub revoke_cert: Option<String>,
    /// `keyChange`.
    #[serde(default)]
    pub key_change: Option<String>,
    /// `renewalInfo` (RFC 9773 §3): where ACME Renewal Information is served.
    #[serde(default)]
    pub renewal_info: Option<String>,
    /// `meta`.
    #[serde(default)]
    pub meta: DirectoryMeta,
}

/// The directory's `meta` object (RFC 8555 §7.1.1).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryMeta {
    /// Terms the client must agree to.
    #[serde(default)]
    pub terms_of_service: Option<String>,
    /// Whether newAccount needs an external account binding (RFC 8555 §7.3.4).
    #[serde(default)]
    pub external_account_required: bool,
    /// The certificate profiles the CA offers, name → description (draft-ietf-acme-profiles
    /// §3; SPEC §8.3). Empty when the CA has none.
    ///
    /// <https://datatracker.ietf.org/doc/draft-ietf-acme-profiles/>
    ///
    /// Read leniently: an entry whose description is not a string is left out, and a
    /// `profiles` that is not an object reads as empty, so a CA's extension there does not
    /// break the directory for every device; only a device that asks for a profile the CA does
    /// not list fails ([`crate::acme::AcmeClient::check_profile`]).
    #[serde(default, deserialize_with = "lenient_profiles")]
    pub profiles: std::collections::BTreeMap<String, String>,
}

fn lenient_profiles<'de, D>(
    deserializer: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    let serde_json::Value::Object(entries) = value else {
        return Ok(std::collections::BTreeMap::new());
    };
    Ok(entries
        .into_iter()
        .filter_map(|(name, description)| match description {
            serde_json::Value::String(d) => Some((name, d)),
            _ => None,
        })
        .collect())
}

/// An identifier object (RFC 8555 §7.1.4, RFC 8738 §3).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identifier {
    /// `dns`, `ip` or `permanent-identifier` (SPEC §4.5).
    #[serde(rename = "type")]
    pub kind: String,
    /// The value, in the canonical form of SPEC §4.
    pub value: String,
}

impl Identifier {
    /// A `dns` identifier, normalised and checked as the CA will (SPEC §4.2).
    pub fn dns(name: &str) -> Result<Self, Error> {
        let mut buf = [0u8; protocol_spec::identifier::DNS_NAME_MAX];
        let value = protocol_spec::identifier::normalize_dns(name, &mut buf)
            .map_err(|e| Error::Config(format!("dns identifier {name:?}: {e}")))?;
        Ok(Self {
            kind: "dns".into(),
            value: value.to_owned(),
        })
    }

    /// An `ip` identifier for `addr`, written in canonical form (SPEC §4.3). Unspecified and
    /// multicast addresses are refused.
    pub fn ip(addr: IpAddr) -> Result<Self, Error> {
        // Rust writes IPv6 in RFC 5952 form, including the §5 mixed form for IPv4-mapped
        // addresses, which is what SPEC §4.3 requires on the wire; check_ip confirms it.
        let text = addr.to_string();
        Self::ip_text(&text)
    }

    /// An `ip` identifier from text that must already be canonical (SPEC §4.3).
    pub fn ip_text(text: &str) -> Result<Self, Error> {
        protocol_spec::identifier::check_ip(text)
            .map_err(|e| Error::Config(format!("ip identifier {text:?}: {e}")))?;
        Ok(Self {
            kind: "ip".into(),
            value: text.to_owned(),
        })
    }

    /// A `permanent-identifier` (SPEC §4.5): `SERIAL` or `SERIAL/ASSIGNER-OID`, kept octet for
    /// octet (never normalised). Values the CA would refuse (`malformed` or
    /// `rejectedIdentifier`) are refused here, with the reason.
    pub fn permanent(value: &str) -> Result<Self, Error> {
        check_permanent(value)
            .map_err(|e| Error::Config(format!("permanent-identifier {value:?}: {e}")))?;
        Ok(Self {
            kind: "permanent-identifier".into(),
            value: value.to_owned(),
        })
    }

    /// For a `permanent-identifier`, its serial (the part before `/`).
    pub fn serial(&self) -> Option<&str> {
        (self.kind == "permanent-identifier").then(|| self.value.split('/').next().unwrap_or(""))
    }

    /// The subjectAltName GeneralName for this identifier (DER), as SPEC §8.2 puts it into
    /// certificates: `[2] dNSName`, `[7] iPAddress`, or `[0] otherName` PermanentIdentifier
    /// (RFC 4043: `SEQUENCE { identifierValue UTF8String, assigner OID OPTIONAL }`).
    pub(crate) fn general_name_der(&self) -> Result<Vec<u8>, Error> {
        use crate::der;
        match self.kind.as_str() {
            "dns" => Ok(der::tlv(der::DNS_NAME, self.value.as_bytes())),
            "ip" => {
                let ip: IpAddr = self
                    .value
                    .parse()
                    .map_err(|_| Error::Config(format!("{self}: not an IP address")))?;
                let octets = match ip {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                };
                Ok(der::tlv(der::IP_ADDRESS, &octets))
            }
            "permanent-identifier" => {
                let (serial, assigner) = match self.value.split_once('/') {
                    Some((s, a)) => (s, Some(a)),
                    None => (self.value.as_str(), None),
                };
                let mut fields = der::tlv(der::UTF8_STRING, serial.as_bytes());
                if let Some(a) = assigner {
                    let arcs = a
                        .split('.')
                        .map(str::parse)
                        .collect::<Result<Vec<u64>, _>>()
                        .map_err(|_| Error::Config(format!("{self}: bad assigner OID")))?;
                    der::write(&mut fields, der::OID, &der::oid_content(&arcs));
                }
                let value = der::tlv(der::SEQUENCE, &fields);
                let mut other =
                    der::tlv(der::OID, &der::oid_content(&der::PERMANENT_IDENTIFIER_ARCS));
                der::write(&mut other, der::CONTEXT_0, &value);
                Ok(der::tlv(der::CONTEXT_0, &other))
            }
            other => Err(Error::Config(format!(
                "identifier type {other} cannot go into a CSR"
            ))),
        }
    }

    /// Parses the CLI/config form: `dns:NAME`, `ip:ADDR`, `permanent-identifier:SERIAL[/OID]`,
    /// or a bare value (an address is `ip`,
    /// anything else `dns`).
    pub fn parse(text: &str) -> Result<Self, Error> {
        if let Some(name) = text.strip_prefix("dns:") {
            return Self::dns(name);
        }
        if let Some(value) = text.strip_prefix("permanent-identifier:") {
            return Self::permanent(value);
        }
        if let Some(addr) = text.strip_prefix("ip:") {
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| Error::Config(format!("ip identifier {addr:?}: not an IP address")))?;
            return Self::ip(ip);
        }
        match text.parse::<IpAddr>() {
            Ok(ip) => Self::ip(ip),
            Err(_) => Self::dns(text),
        }
    }
}

/// Checks a `permanent-identifier` value against SPEC §4.5: the draft's ABNF (else
/// `malformed`), then what the CA certifies (no control characters, serial and assigner at most
/// 128 octets, 64-bit arcs; else `rejectedIdentifier`). The error starts with the problem the CA
/// would answer.
fn check_permanent(value: &str) -> Result<(), String> {
    let malformed = |why: String| Err(format!("malformed: {why}"));
    let rejected = |why: String| Err(format!("rejectedIdentifier: {why}"));
    let (serial, assigner) = match value.split_once('/') {
        Some((s, a)) => (s, Some(a)),
        None => (value, None),
    };
    if serial.is_empty() {
        return malformed("the serial is empty".into());
    }
    if let Some(a) = assigner {
        let parts: Vec<&str> = a.split('.').collect();
        let grammar = parts.len() >= 2
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && !(p.len() > 1 && p.starts_with('0'))
            })
            && match parts[0] {
                "0" | "1" => parts[1].len() <= 2 && parts[1].parse::<u8>().is_ok_and(|n| n <= 39),
                "2" => true,
                _ => false,
            };
        if !grammar {
            return malformed(format!(
                "the part after \"/\" must be a dotted-decimal assigner OID such as \
                 1.3.6.1.4.1.32473, not {a:?}"
            ));
        }
    }
    if let Some(c) = serial.chars().find(|c| c.is_control()) {
        return rejected(format!(
            "the serial contains the control character U+{:04X}",
            u32::from(c)
        ));
    }
    if serial.len() > 128 {
        return rejected(format!(
            "the serial is {} octets; the CA certifies at most 128",
            serial.len()
        ));
    }
    if let Some(a) = assigner {
        if a.len() > 128 {
            return rejected(format!(
                "the assigner is {} octets; the CA accepts at most 128",
                a.len()
            ));
        }
        let parts: Vec<&str> = a.split('.').collect();
        let fits = parts.iter().all(|p| p.parse::<u64>().is_ok())
            && (parts[0] != "2" || parts[1].parse::<u64>().is_ok_and(|n| n <= u64::MAX - 80));
        if !fits {
            return rejected(format!(
                "the assigner {a} has an arc above 2^64-1, which the CA does not support"
            ));
        }
    }
    Ok(())
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Account status (RFC 8555 §7.1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AccountStatus {
    /// Usable.
    Valid,
    /// Deactivated by the client.
    Deactivated,
    /// Revoked by the server.
    Revoked,
}

/// An account object (RFC 8555 §7.1.2).
#[derive(Clone, Debug, Deserialize)]
pub struct Account {
    /// Its status.
    pub status: AccountStatus,
}

/// Order status (RFC 8555 §7.1.6). There is no `deactivated` order (SPEC §7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OrderStatus {
    /// Some authorization is still pending.
    Pending,
    /// All authorizations are valid: finalize.
    Ready,
    /// The CA is issuing.
    Processing,
    /// Issued: download `certificate`.
    Valid,
    /// Failed for good.
    Invalid,
}

/// An order object (RFC 8555 §7.1.3).
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.1.3>
#[derive(Clone, Debug, Deserialize)]
pub struct Order {
    /// Its status.
    pub status: OrderStatus,
    /// The identifiers it covers.
    pub identifiers: Vec<Identifier>,
    /// One authorization URL per identifier.
    #[serde(default)]
    pub authorizations: Vec<String>,
    /// Where to POST the CSR.
    pub finalize: String,
    /// Where to download the certificate, once `valid`.
    #[serde(default)]
    pub certificate: Option<String>,
    /// Why it is `invalid`.
    #[serde(default)]
    pub error: Option<crate::error::Problem>,
}

/// Authorization status (RFC 8555 §7.1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthorizationStatus {
    /// Waiting for a challenge to succeed.
    Pending,
    /// Done.
    Valid,
    /// A challenge failed.
    Invalid,
    /// Deactivated by the client.
    Deactivated,
    /// Expired.
    Expired,
    /// Revoked by the server.
    Revoked,
}

/// An authorization object (RFC 8555 §7.1.4).
#[derive(Clone, Debug, Deserialize)]
pub struct Authorization {
    /// What it authorizes.
    pub identifier: Identifier,
    /// Its status.
    pub status: AuthorizationStatus,
    /// The challenges offered (only the valid one once it is valid).
    #[serde(default)]
    pub challenges: Vec<Challenge>,
}

/// Challenge status (RFC 8555 §7.1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChallengeStatus {
    /// Not yet triggered.
    Pending,
    /// The CA is validating.
    Processing,
    /// Validated.
    Valid,
    /// Validation failed.
    Invalid,
}

/// A challenge object (RFC 8555 §7.1.5, §8).
#[derive(Clone, Debug, Deserialize)]
pub struct Challenge {
    /// `http-01`, `tls-alpn-01`, `device-attest-01`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Where to POST to trigger it.
    pub url: String,
    /// Its status.
    pub status: ChallengeStatus,
    /// The token, for the challenge types that have one.
    #[serde(default)]
    pub token: Option<String>,
    /// Why validation failed.
    #[serde(default)]
    pub error: Option<crate::error::Problem>,
}

/// newAccount payload (RFC 8555 §7.3).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NewAccount<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub(crate) contact: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) terms_of_service_agreed: Option<bool>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) only_return_existing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) external_account_binding: Option<serde_json::Value>,
}

/// newOrder payload (RFC 8555 §7.4). SPEC §7.1: no `notBefore`/`notAfter`.
#[derive(Debug, Serialize)]
pub(crate) struct NewOrder<'a> {
    pub(crate) identifiers: &'a [Identifier],
    /// The ARI certificate identifier of the certificate this order replaces (RFC 9773 §5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) replaces: Option<&'a str>,
    /// The certificate profile, a name from the directory's `meta.profiles`
    /// (draft-ietf-acme-profiles §4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) profile: Option<&'a str>,
}

/// A renewal information response (RFC 9773 §4.2).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RenewalInfo {
    pub(crate) suggested_window: SuggestedWindow,
}

/// The `suggestedWindow` object (RFC 9773 §4.2), RFC 3339 times.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct SuggestedWindow {
    pub(crate) start: String,
    pub(crate) end: String,
}

/// finalize payload (RFC 8555 §7.4).
#[derive(Debug, Serialize)]
pub(crate) struct Finalize {
    pub(crate) csr: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_profiles_with_non_string_values_still_parse() {
        let json = r#"{
            "newNonce": "https://ca/nonce", "newAccount": "https://ca/acct",
            "newOrder": "https://ca/order", "revokeCert": "https://ca/revoke",
            "meta": {"profiles": {
                "opcua": "OPC UA application instance",
                "fancy": {"description": "an extension", "maxLifetime": 90},
                "number": 7
            }}
        }"#;
        let d: Directory = serde_json::from_str(json).expect("parses");
        assert_eq!(
            d.meta.profiles.into_iter().collect::<Vec<_>>(),
            [("opcua".to_owned(), "OPC UA application instance".to_owned())]
        );
        let list: Directory = serde_json::from_str(
            r#"{"newNonce": "n", "newAccount": "a", "newOrder": "o",
                "meta": {"profiles": ["opcua"]}}"#,
        )
        .expect("parses");
        assert!(list.meta.profiles.is_empty());
    }

    /// RFC 8555 §7.1.3: the example order object.
    #[test]
    fn rfc8555_order_example() {
        let json = r#"{
            "status": "valid",
            "expires": "2016-01-20T14:09:07.99Z",
            "identifiers": [
                { "type": "dns", "value": "www.example.org" },
                { "type": "dns", "value": "example.org" }
            ],
            "notBefore": "2016-01-01T00:00:00Z",
            "notAfter": "2016-01-08T00:00:00Z",
            "authorizations": [
                "https://example.com/acme/authz/PAniVnsZcis",
                "https://example.com/acme/authz/r4HqLzrSrpI"
            ],
            "finalize": "https://example.com/acme/order/TOlocE8rfgo/finalize",
            "certificate": "https://example.com/acme/cert/mAt3xBGaobw"
        }"#;
        let order: Order = serde_json::from_str(json).expect("parses");
        assert_eq!(order.status, OrderStatus::Valid);
        assert_eq!(order.authorizations.len(), 2);
        assert_eq!(
            order.certificate.as_deref(),
            Some("https://example.com/acme/cert/mAt3xBGaobw")
        );
    }

    /// RFC 8555 §7.1.4: the example authorization object.
    #[test]
    fn rfc8555_authorization_example() {
        let json = r#"{
            "status": "valid",
            "expires": "2015-03-01T14:09:07.99Z",
            "identifier": { "type": "dns", "value": "www.example.org" },
            "challenges": [
                {
                    "url": "https://example.com/acme/chall/prV_B7yEyA4",
                    "type": "http-01",
                    "status": "valid",
                    "token": "DGyRejmCefe7v4NfDGDKfA",
                    "validated": "2014-12-01T12:05:58.16Z"
                }
            ],
            "wildcard": false
        }"#;
        let authz: Authorization = serde_json::from_str(json).expect("parses");
        assert_eq!(authz.status, AuthorizationStatus::Valid);
        assert_eq!(authz.challenges[0].kind, "http-01");
        assert_eq!(
            authz.challenges[0].token.as_deref(),
            Some("DGyRejmCefe7v4NfDGDKfA")
        );
    }

    /// RFC 8555 §7.1.1: the example directory.
    #[test]
    fn rfc8555_directory_example() {
        let json = r#"{
            "newNonce": "https://example.com/acme/new-nonce",
            "newAccount": "https://example.com/acme/new-account",
            "newOrder": "https://example.com/acme/new-order",
            "newAuthz": "https://example.com/acme/new-authz",
            "revokeCert": "https://example.com/acme/revoke-cert",
            "keyChange": "https://example.com/acme/key-change",
            "meta": {
                "termsOfService": "https://example.com/acme/terms/2017-5-30",
                "website": "https://www.example.com/",
                "caaIdentities": ["example.com"],
                "externalAccountRequired": false
            }
        }"#;
        let dir: Directory = serde_json::from_str(json).expect("parses");
        assert_eq!(dir.new_nonce, "https://example.com/acme/new-nonce");
        assert!(!dir.meta.external_account_required);
    }

    #[test]
    fn unknown_status_is_an_error() {
        let json = r#"{"status":"deactivated","identifiers":[],"finalize":"x"}"#;
        assert!(serde_json::from_str::<Order>(json).is_err());
    }

    #[test]
    fn identifiers_from_cli_text() {
        assert_eq!(
            Identifier::parse("PLC-7.Plant.").expect("dns").to_string(),
            "dns:plc-7.plant"
        );
        assert_eq!(
            Identifier::parse("2001:DB8:0:0::1").expect("ip").value,
            "2001:db8::1"
        );
        assert_eq!(
            Identifier::parse("ip:::ffff:192.0.2.1")
                .expect("mapped")
                .value,
            "::ffff:192.0.2.1"
        );
        assert_eq!(
            Identifier::parse("dns:10.0.0.1")
                .expect_err("address as dns")
                .to_string(),
            "configuration: dns identifier \"10.0.0.1\": malformed: an IP address must be sent as type ip"
        );
        assert!(Identifier::parse("0.0.0.0").is_err());
        assert!(Identifier::parse("*.plant").is_err());
    }
}
