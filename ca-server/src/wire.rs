//! The wire profile (SPEC §3–§5) as the server uses it: owned-value adapters over the
//! `protocol_spec` helpers, which the device and embedded clients run too. Nothing here encodes
//! or checks a wire value itself; each function sizes a buffer, calls the shared helper and
//! turns its refusal into the server's [`Error`].

use std::net::IpAddr;

use protocol_spec::{ari, base64url, challenge, fingerprint, jwk as spec_jwk};
use ring::digest::{digest, SHA256};

use crate::types::Identifier;
use crate::types::IdentifierType;
use crate::{Error, Result};

/// Paths of the ACME resources. Clients must discover them from the directory; they are
/// listed here once so every module builds URLs the same way.
pub mod paths {
    /// RFC 8555 §7.1.1.
    pub const DIRECTORY: &str = "/directory";
    /// RFC 8555 §7.2.
    pub const NEW_NONCE: &str = "/acme/new-nonce";
    /// RFC 8555 §7.3.
    pub const NEW_ACCOUNT: &str = "/acme/new-account";
    /// RFC 8555 §7.4.
    pub const NEW_ORDER: &str = "/acme/new-order";
    /// RFC 8555 §7.6.
    pub const REVOKE_CERT: &str = "/acme/revoke-cert";
    /// RFC 8555 §7.3.5.
    pub const KEY_CHANGE: &str = "/acme/key-change";
    /// Prefix of account URLs.
    pub const ACCOUNT: &str = "/acme/acct/";
    /// Prefix of order URLs.
    pub const ORDER: &str = "/acme/order/";
    /// Prefix of authorization URLs.
    pub const AUTHZ: &str = "/acme/authz/";
    /// Prefix of challenge URLs.
    pub const CHALLENGE: &str = "/acme/chall/";
    /// Prefix of certificate URLs.
    pub const CERT: &str = "/acme/cert/";
    /// RFC 9773 renewal information; the certificate identifier follows.
    pub const RENEWAL_INFO: &str = "/acme/renewal-info";
    /// The CRL (RFC 5280 §5), named in every certificate's CRL distribution point.
    pub const CRL: &str = "/crl";
    /// The RSA intermediate's CRL, named in the CRL distribution point of what it issues.
    pub const CRL_RSA: &str = "/crl/rsa";
}

/// Encodes unpadded base64url (SPEC §3.7).
pub fn b64u(bytes: impl AsRef<[u8]>) -> String {
    let bytes = bytes.as_ref();
    let mut out = vec![0u8; base64url::encoded_len(bytes.len())];
    match base64url::encode(bytes, &mut out) {
        Ok(text) => text.to_owned(),
        // encoded_len is the exact length encode writes.
        Err(_) => unreachable!("base64url::encoded_len sized the buffer"),
    }
}

/// Decodes unpadded base64url strictly: padding, whitespace and non-zero trailing bits are
/// `malformed` (RFC 8555 §6.1; SPEC §3.7). `field` names the value in the problem detail.
pub fn b64u_decode(field: &str, text: &str) -> Result<Vec<u8>> {
    let refused = |e: base64url::DecodeError| {
        Error::Malformed(format!("{field} is not unpadded base64url: {e}"))
    };
    let len = base64url::validate(text).map_err(refused)?;
    let mut out = vec![0u8; len];
    let n = base64url::decode(text, &mut out).map_err(refused)?.len();
    out.truncate(n);
    Ok(out)
}

/// The RFC 7638 canonical JSON of a JWK (SPEC §5.2): required members only, sorted, no
/// white space.
pub fn canonical_jwk(jwk: &spec_jwk::Jwk<'_>) -> Result<String> {
    let mut out = vec![0u8; jwk.canonical_len()];
    spec_jwk::canonical_json(jwk, &mut out)
        .map(str::to_owned)
        .map_err(|e| Error::BadPublicKey(format!("JWK has no canonical form: {e}")))
}

/// The RFC 7638 thumbprint text of a canonical JWK: base64url(SHA-256(canonical JSON)).
pub fn thumbprint_of_canonical(canonical: &str) -> String {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest(&SHA256, canonical.as_bytes()).as_ref());
    let mut out = [0u8; spec_jwk::THUMBPRINT_LEN];
    spec_jwk::thumbprint_text(&hash, &mut out).to_owned()
}

/// `keyAuthorization = token || '.' || base64url(Thumbprint(accountKey))` (RFC 8555 §8.1,
/// SPEC §5.2). A token or thumbprint of the wrong shape is an internal error: the server made
/// both.
pub fn key_authorization(token: &str, thumbprint: &str) -> Result<String> {
    let mut out = vec![0u8; challenge::key_authorization_len(token.len())];
    challenge::key_authorization(token, thumbprint, &mut out)
        .map(str::to_owned)
        .map_err(|e| Error::Internal(format!("cannot form a key authorization: {e}")))
}

/// The extnValue of the tls-alpn-01 acmeIdentifier extension for `key_authorization`: the DER
/// OCTET STRING of its SHA-256 digest (RFC 8737 §3, SPEC §5.4).
pub fn acme_identifier_value(key_authorization: &str) -> [u8; 34] {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest(&SHA256, key_authorization.as_bytes()).as_ref());
    challenge::acme_identifier_value(&hash)
}

/// The `in-addr.arpa` / `ip6.arpa` name of `ip`, without a trailing dot: the tls-alpn-01 SNI
/// for an `ip` identifier (RFC 8738 §6, SPEC §5.4).
pub fn reverse_dns_name(ip: IpAddr) -> String {
    let mut out = [0u8; challenge::REVERSE_DNS_NAME_MAX];
    challenge::reverse_dns_name(ip, &mut out).to_owned()
}

/// SHA-256 over a certificate's DER as uppercase hex pairs joined by `:`, the way
/// `openssl x509 -fingerprint -sha256` prints it (SPEC §2.3).
pub fn fingerprint(der: &[u8]) -> String {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest(&SHA256, der).as_ref());
    let mut out = [0u8; fingerprint::FINGERPRINT_TEXT_LEN];
    fingerprint::format(&hash, &mut out).to_owned()
}

/// The ARI certificate identifier, `base64url(AKI keyIdentifier) "." base64url(serial)`, where
/// the serial is the DER INTEGER's content octets (RFC 9773 §4.1, SPEC §9.2). An empty part is
/// `malformed`: no certificate of this CA has one.
pub fn ari_cert_id(aki: &[u8], serial: &[u8]) -> Result<String> {
    let mut out = vec![0u8; ari::cert_id_len(aki.len(), serial.len())];
    ari::cert_id(aki, serial, &mut out)
        .map(str::to_owned)
        .map_err(|e| Error::Malformed(format!("no ARI certificate identifier: {e}")))
}

/// The key identifier and serial an ARI certificate identifier names; `malformed` unless it is
/// two non-empty strict base64url parts joined by one `.` (SPEC §9.2).
pub fn parse_ari_cert_id(id: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let refused = |e: ari::CertIdError| {
        Error::Malformed(format!(
            "{id:?} is not an ARI certificate identifier (base64url AKI \".\" base64url serial): {e}"
        ))
    };
    let parts = ari::CertId::parse(id).map_err(refused)?;
    let mut out = vec![0u8; parts.decoded_len()];
    let (aki, serial) = ari::decode(id, &mut out).map_err(refused)?;
    Ok((aki.to_vec(), serial.to_vec()))
}

/// The operator-approval pairing code (SPEC §5.9): SHA-256("iiot-acme pairing code" ‖ 0x00 ‖
/// token ‖ "." ‖ thumbprint) in Crockford base32, as `XXXX-XXXX`. `token` is the
/// operator-approval-01 challenge's token, `thumbprint` the account key's RFC 7638 thumbprint.
pub fn pairing_code(token: &str, thumbprint: &str) -> Result<String> {
    let sha256 = |parts: &[&[u8]]| {
        let mut ctx = ring::digest::Context::new(&SHA256);
        for part in parts {
            ctx.update(part);
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(ctx.finish().as_ref());
        hash
    };
    protocol_spec::pairing::PairingCode::compute(token, thumbprint, sha256)
        .map(|code| code.as_str().to_owned())
        .map_err(|e| Error::Internal(format!("no pairing code: {e}")))
}

/// Reads a SHA-256 fingerprint in the form [`fingerprint`] writes (colons optional, either
/// case), as an operator copies it from a manufacturer's documentation (SPEC §2.3).
pub fn parse_fingerprint(text: &str) -> std::result::Result<[u8; 32], BadFingerprint> {
    fingerprint::parse(text).map_err(|reason| BadFingerprint {
        text: text.to_owned(),
        reason,
    })
}

/// Text that [`parse_fingerprint`] cannot read as a SHA-256 fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a SHA-256 fingerprint: {reason}")]
pub struct BadFingerprint {
    /// The text as given.
    pub text: String,
    /// What is wrong with it.
    pub reason: fingerprint::FingerprintError,
}

/// Checks one requested identifier and returns its canonical form, by the shared profile
/// rules (SPEC §4; `protocol_spec::identifier`, which the clients and the vectors run too).
///
/// `dns`: LDH labels (RFC 1123), at most 253 octets, lower-cased, one trailing dot dropped;
/// single-label plant names (`plc-7`) are allowed because devices on a plant network often
/// have nothing else. An `xn--` label must be well-formed Punycode (RFC 5890 §2.3.2.1). A `dns`
/// value that is an IP address is refused: RFC 8738 gives addresses their own type.
/// `ip`: the RFC 8738 §3 textual form (RFC 1123 for IPv4, RFC 5952 for IPv6).
/// `permanent-identifier`: `serial["/"assignerOID]`, never rewritten (SPEC §4.5).
pub fn normalize_identifier(id: &Identifier) -> Result<Identifier> {
    use protocol_spec::identifier::{self as rules, IdentifierError};
    let refused = |e: IdentifierError| {
        let detail = format!("{} {:?}: {}", id.kind, id.value, e.reason().explain());
        match e {
            IdentifierError::Malformed(_) => Error::Malformed(detail),
            IdentifierError::Rejected(_) => Error::RejectedIdentifier {
                identifier: id.clone(),
                detail,
            },
        }
    };
    match id.kind {
        IdentifierType::Dns => {
            let mut out = [0u8; rules::DNS_NAME_MAX];
            let name = rules::normalize_dns(&id.value, &mut out).map_err(refused)?;
            Ok(Identifier::dns(name))
        }
        IdentifierType::Ip => rules::check_ip(&id.value)
            .map(Identifier::ip)
            .map_err(refused),
        IdentifierType::PermanentIdentifier => {
            rules::check_permanent_identifier(&id.value).map_err(refused)?;
            Ok(id.clone())
        }
    }
}

/// `dns:plc-1`, `ip:10.0.0.7`, `permanent-identifier:SN-1` → an identifier, as the CA stores it.
pub fn parse_identifier(text: &str) -> Result<Identifier> {
    let (kind, value) = text.split_once(':').ok_or_else(|| {
        Error::Malformed(format!(
            "identifier {text:?} must be type:value, e.g. dns:plc-1"
        ))
    })?;
    let id: Identifier = serde_json::from_value(serde_json::json!({"type": kind, "value": value}))
        .map_err(|_| Error::Malformed(format!("unknown identifier type {kind:?}")))?;
    normalize_identifier(&id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips_and_refuses_padding() {
        for n in 0..8 {
            let bytes: Vec<u8> = (0..n).map(|i| i * 37).collect();
            assert_eq!(b64u_decode("t", &b64u(&bytes)).expect("decodes"), bytes);
        }
        assert!(matches!(b64u_decode("t", "AA=="), Err(Error::Malformed(_))));
        assert!(matches!(b64u_decode("t", "A+"), Err(Error::Malformed(_))));
    }

    // RFC 9773 §4.1 example: AKI keyIdentifier 69:88:5B:…:C8:D4, serial 00:87:65:43:21.
    // <https://www.rfc-editor.org/rfc/rfc9773#section-4.1>
    #[test]
    fn rfc9773_cert_id_example() {
        let aki = hex::decode("69885B6B87464041E1B37B847BA0AE2CDE01C8D4").expect("hex");
        let serial = hex::decode("0087654321").expect("hex");
        assert_eq!(
            ari_cert_id(&aki, &serial).ok().as_deref(),
            Some("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
        );
    }

    fn dns(v: &str) -> Result<Identifier> {
        normalize_identifier(&Identifier::dns(v))
    }

    fn permanent(v: &str) -> Result<Identifier> {
        normalize_identifier(&Identifier {
            kind: IdentifierType::PermanentIdentifier,
            value: v.into(),
        })
    }

    fn ip(v: &str) -> Result<Identifier> {
        normalize_identifier(&Identifier {
            kind: IdentifierType::Ip,
            value: v.into(),
        })
    }

    #[test]
    fn dns_identifiers() {
        assert_eq!(
            dns("PLC-7.Plant.Example.").ok(),
            Some(Identifier::dns("plc-7.plant.example"))
        );
        assert!(dns("plc-7").is_ok(), "single-label plant names");
        assert!(dns("xn--bcher-kva.example").is_ok());
        // RFC 3492 §7.1 sample (L): "3年B組金八先生".
        assert!(dns("xn--3b-ww4c5e180e575a65lsy2b.example").is_ok());
        for bad in [
            "xn--.example",
            "xn--abc.example",
            "xn--a-.example",
            "xn--zzzzzzzzzzzzzz.example",
        ] {
            assert!(dns(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "a..b",
            "-a.example",
            "a_b.example",
            "ab--cd.example",
            "1.2.3.4",
            "::1",
            "example.123",
            &"a".repeat(64),
        ] {
            assert!(dns(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            dns("*.example.com"),
            Err(Error::RejectedIdentifier { .. })
        ));
        assert!(matches!(dns("10.0.0.1"), Err(Error::Malformed(_))));
    }

    #[test]
    fn ip_identifiers_must_be_canonical() {
        assert!(ip("192.0.2.7").is_ok());
        assert!(ip("2001:db8::1").is_ok());
        assert!(ip("2001:DB8::1").is_err());
        assert!(ip("2001:db8:0:0:0:0:0:1").is_err());
        assert!(ip("192.0.2.07").is_err());
        assert!(ip("plc.example").is_err());
        assert!(matches!(
            ip("0.0.0.0"),
            Err(Error::RejectedIdentifier { .. })
        ));
    }

    #[test]
    fn normalize_keeps_values_octet_for_octet() {
        for v in [
            "SN-0001",
            "sn-0001",
            "ABCDEF123456/1.2.3.4",
            " spaced ",
            "Gerät-7",
        ] {
            assert_eq!(permanent(v).ok().map(|i| i.value).as_deref(), Some(v));
        }
        assert!(matches!(permanent("A/B/C"), Err(Error::Malformed(_))));
        assert!(matches!(
            permanent("A\u{1}"),
            Err(Error::RejectedIdentifier { .. })
        ));
    }
}
