//! How a device proves its identifiers to the CA, and how its account is bound.
//!
//! Two independent choices:
//!
//! - [`Enrollment`]: the challenge the device answers for each pending authorization:
//!   `http-01` (SPEC §5.3), `tls-alpn-01` (RFC 8737, for a device that answers on 443 but not
//!   on 80), `operator-approval-01` (SPEC §5.8: the device shows its pairing
//!   code and waits for an operator), or `device-attest-01` (SPEC §5.10: an IEEE 802.1AR
//!   IDevID, from files or a [`Signer`] in a secure element, signs the key authorization). The
//!   order flow in [`crate::acme`] asks the variant for the method of each authorization
//!   ([`Enrollment::for_identifier`]), the challenge type it answers, and calls
//!   [`Enrollment::prepare`] / [`Enrollment::respond_payload`]; everything else (orders,
//!   polling, finalize, install, renewal) is shared.
//! - [`EabCredential`]: an operator-issued external account binding for newAccount (RFC 8555
//!   §7.3.4, SPEC §6.2). An authorization that the CA hands out already `valid` (an EAB
//!   credential with pre-authorization, issue 3) needs no challenge at all, whatever the
//!   enrollment method.
//!
//! [`Signer`]: crate::attest::Signer

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::attest::Idevid;
use crate::b64;
use crate::error::Error;
use crate::http01::Http01Responder;
use crate::jws;
use crate::key::Jwk;
use crate::tlsalpn01::TlsAlpn01Responder;
use crate::types::{Challenge, Identifier};

/// The challenge type a device answers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Enrollment {
    /// `http-01` (RFC 8555 §8.3, SPEC §5.3): the built-in responder listens on `listen` while
    /// authorizations are pending. The CA dials its configured `http_port` (80 unless the
    /// operator says otherwise, SPEC §5.5), so `listen` must be reachable there.
    Http01 {
        /// Address and port to listen on, e.g. `0.0.0.0:80`.
        listen: SocketAddr,
    },
    /// `tls-alpn-01` (RFC 8737; RFC 8738 §6 for `ip`): the built-in responder listens on
    /// `listen` while authorizations are pending and presents the validation certificate for
    /// ALPN `acme-tls/1`. The CA dials its configured `tls_alpn_port` (443 unless the operator
    /// says otherwise), so `listen` must be reachable there.
    TlsAlpn01 {
        /// Address and port to listen on, e.g. `0.0.0.0:443`.
        listen: SocketAddr,
    },
    /// `operator-approval-01` (SPEC §5.8): the device triggers the challenge, shows the pairing
    /// code of that request (SPEC §5.9: from its account key and the challenge's token, so each
    /// identifier and each run has its own) and waits, up to `wait`, until an operator who
    /// compared the code approves or rejects it.
    OperatorApproval {
        /// How long to wait for the operator's decision.
        wait: Duration,
    },
    /// `device-attest-01` (SPEC §5.10): each `permanent-identifier` is proven with the IDevID
    /// (chain and a [`crate::attest::Signer`] for its key), which signs the key authorization.
    /// The `dns` and `ip` identifiers of the same order answer `http-01` on `http01_listen`.
    DeviceAttest {
        /// The IDevID chain and key.
        idevid: Idevid,
        /// Where the http-01 responder listens for the order's `dns` and `ip` identifiers.
        http01_listen: SocketAddr,
    },
}

impl Enrollment {
    /// The ACME challenge type this method answers.
    pub fn challenge_type(&self) -> &'static str {
        match self {
            Self::Http01 { .. } => "http-01",
            Self::TlsAlpn01 { .. } => "tls-alpn-01",
            Self::OperatorApproval { .. } => "operator-approval-01",
            Self::DeviceAttest { .. } => "device-attest-01",
        }
    }

    /// The method that answers for `identifier`: with device attestation, a `dns` or `ip`
    /// identifier of a mixed order is proven by http-01 (SPEC §5.1 offers device-attest-01 for
    /// `permanent-identifier` only). Otherwise the method itself.
    pub fn for_identifier(&self, identifier: &Identifier) -> Self {
        match self {
            Self::DeviceAttest { http01_listen, .. }
                if identifier.kind != "permanent-identifier" =>
            {
                Self::Http01 {
                    listen: *http01_listen,
                }
            }
            other => other.clone(),
        }
    }

    /// How long to wait for one authorization: the configured poll limit, or for approval the
    /// (longer) time an operator may take.
    pub(crate) fn wait_limit(&self, poll_timeout: Duration) -> Duration {
        match self {
            Self::Http01 { .. } | Self::TlsAlpn01 { .. } | Self::DeviceAttest { .. } => {
                poll_timeout
            }
            Self::OperatorApproval { wait } => *wait,
        }
    }

    /// What the device is waiting for, for progress messages.
    pub(crate) fn waiting_for(&self, identifier: &str, session: &ChallengeSession) -> String {
        match (self, session.pairing_codes.get(identifier)) {
            (Self::OperatorApproval { .. }, Some(code)) => {
                format!("operator approval of {identifier} (pairing code {code})")
            }
            _ => format!("validation of {identifier}"),
        }
    }

    /// Makes the device ready to answer `challenge`, the chosen challenge for `identifier`
    /// (before the client POSTs to it).
    pub(crate) async fn prepare(
        &self,
        session: &mut ChallengeSession,
        identifier: &Identifier,
        challenge: &Challenge,
        account_jwk: &Jwk,
    ) -> Result<(), Error> {
        match self {
            Self::TlsAlpn01 { listen } => {
                // The token is checked to be base64url (SPEC §5.2) on the way.
                let ka = jws::key_authorization(token(challenge)?, account_jwk)?;
                if session.tls_alpn01.is_none() {
                    let r = TlsAlpn01Responder::bind(*listen).await?;
                    tracing::info!(listen = %r.local_addr(), "answering tls-alpn-01 challenges");
                    session.tls_alpn01 = Some(r);
                }
                if let Some(r) = &session.tls_alpn01 {
                    r.add(identifier, &ka)?;
                }
                Ok(())
            }
            Self::Http01 { listen } => {
                let token = token(challenge)?;
                let ka = jws::key_authorization(token, account_jwk)?;
                if session.http01.is_none() {
                    let r = Http01Responder::bind(*listen).await?;
                    tracing::info!(listen = %r.local_addr(), "answering http-01 challenges");
                    session.http01 = Some(r);
                }
                if let Some(r) = &session.http01 {
                    r.add(token, &ka)?;
                }
                Ok(())
            }
            Self::OperatorApproval { .. } => {
                // SPEC §5.9: the code comes from our own key and the token, never from the
                // server.
                let code = pairing_code(token(challenge)?, account_jwk)?;
                let identifier = identifier.to_string();
                if session.pairing_codes.get(&identifier) != Some(&code) {
                    // Printed, not only logged, so it shows on a console whatever the log level.
                    eprintln!(
                        "device-client: operator approval of {identifier} needed; pairing code \
                         {code}\n\
                         device-client: ask the operator to check this code in \
                         `ca-server approval list` and approve it"
                    );
                    session.pairing_codes.insert(identifier, code);
                }
                Ok(())
            }
            // Nothing to run: the proof travels in the response payload.
            Self::DeviceAttest { .. } => Ok(()),
        }
    }

    /// The payload POSTed to the challenge URL to ask for validation. `{}` for http-01
    /// (RFC 8555 §7.5.1); device-attest-01 sends its attestation object over the key
    /// authorization (SPEC §5.10.1).
    pub(crate) fn respond_payload(
        &self,
        challenge: &Challenge,
        account_jwk: &Jwk,
    ) -> Result<Vec<u8>, Error> {
        match self {
            Self::Http01 { .. } | Self::TlsAlpn01 { .. } | Self::OperatorApproval { .. } => {
                Ok(b"{}".to_vec())
            }
            Self::DeviceAttest { idevid, .. } => {
                let ka = jws::key_authorization(token(challenge)?, account_jwk)?;
                idevid.response_payload(&ka)
            }
        }
    }
}

/// The token of `challenge`, which every challenge type this client answers has.
fn token(challenge: &Challenge) -> Result<&str, Error> {
    challenge.token.as_deref().ok_or_else(|| {
        Error::protocol(
            "authorization",
            format!("a {} challenge without a token", challenge.kind),
        )
    })
}

/// Whatever a method keeps running while authorizations are pending; dropped (and so stopped)
/// when the order leaves `pending`.
#[derive(Debug, Default)]
pub(crate) struct ChallengeSession {
    http01: Option<Http01Responder>,
    tls_alpn01: Option<TlsAlpn01Responder>,
    /// The pairing code shown for each identifier awaiting approval.
    pairing_codes: HashMap<String, String>,
}

/// The pairing code of the approval request whose operator-approval-01 challenge has `token`,
/// from the account with key `account_jwk` (SPEC §5.9): SHA-256 over
/// `"iiot-acme pairing code" ‖ 0x00 ‖ token ‖ "." ‖ thumbprint`, its first 40 bits as 8
/// Crockford base32 symbols, written `XXXX-XXXX`. The operator compares it with what the CA
/// lists.
pub fn pairing_code(token: &str, account_jwk: &Jwk) -> Result<String, Error> {
    pairing_code_for_thumbprint(token, &account_jwk.thumbprint()?)
}

/// [`pairing_code`] for a known thumbprint (the base64url text). A token that is not
/// base64url (SPEC §5.2) is refused.
pub fn pairing_code_for_thumbprint(token: &str, thumbprint: &str) -> Result<String, Error> {
    protocol_spec::pairing::PairingCode::compute(token, thumbprint, sha256)
        .map(|code| code.as_str().to_owned())
        .map_err(|e| Error::protocol("challenge", e))
}

/// SHA-256 over `parts` in order, with ring.
fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ctx.finish().as_ref());
    digest
}

/// An operator-issued EAB credential (SPEC §6.2): a key identifier and an HMAC key.
#[derive(Clone, PartialEq, Eq)]
pub struct EabCredential {
    /// The key identifier.
    pub kid: String,
    /// The HMAC key (HS256).
    pub hmac_key: Vec<u8>,
}

impl fmt::Debug for EabCredential {
    // The HMAC key is a bearer secret (SPEC §10.2): never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EabCredential")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl EabCredential {
    /// A credential from the key identifier and the base64url HMAC key, as `ca-server eab
    /// create` prints them. Trailing `=` padding, which some CAs print, is tolerated.
    pub fn new(kid: &str, hmac_b64url: &str) -> Result<Self, Error> {
        let kid = kid.trim();
        if kid.is_empty() {
            return Err(Error::Config("EAB key identifier is empty".into()));
        }
        let hmac_key = b64::decode(hmac_b64url.trim().trim_end_matches('='))
            .map_err(|e| Error::Config(format!("EAB HMAC key is not base64url: {e}")))?;
        if hmac_key.len() < 16 {
            return Err(Error::Config(format!(
                "EAB HMAC key has {} octets; expected at least 16",
                hmac_key.len()
            )));
        }
        Ok(Self {
            kid: kid.to_owned(),
            hmac_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairing_code_shape() {
        let code = pairing_code_for_thumbprint(
            "hAuW5Ak5pwOYj9bWGSUbgA",
            "0000000000000000000000000000000000000000000",
        )
        .expect("code");
        assert_eq!(code, "SB61-BQ72", "SPEC vector zero-thumbprint");
        let key = crate::key::KeyPair::generate(crate::key::KeyAlgorithm::P256).expect("key");
        let jwk = crate::key::Signer::public_jwk(&key);
        let code = pairing_code("hAuW5Ak5pwOYj9bWGSUbgA", &jwk).expect("code");
        assert_ne!(
            code,
            pairing_code("70JfMqfX-uRXMPCUc97GHQ", &jwk).expect("code"),
            "another request, another code"
        );
        assert!(pairing_code("../x", &jwk).is_err());
        assert_eq!(code.len(), 9);
        assert_eq!(code.as_bytes()[4], b'-');
        assert!(code
            .chars()
            .all(|c| c == '-' || "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c)));
    }

    #[test]
    fn eab_credential_parsing_and_redaction() {
        let key = b64::encode(&[9u8; 32]);
        let c = EabCredential::new(" kid-1 ", &format!("{key}=")).expect("ok");
        assert_eq!(c.kid, "kid-1");
        assert_eq!(c.hmac_key, vec![9u8; 32]);
        assert!(!format!("{c:?}").contains(&key));
        assert!(EabCredential::new("", &key).is_err());
        assert!(EabCredential::new("k", "a+b/").is_err());
        assert!(EabCredential::new("k", "AAAA").is_err());
    }
}
