//! JWS in flattened JSON serialization (RFC 7515 §7.2.2) as ACME uses it (RFC 8555 §6.2),
//! external account binding (RFC 8555 §7.3.4) and key authorizations (RFC 8555 §8.1).
//!
//! SPEC §3.2: the body has exactly `protected`, `payload` and `signature`; the protected header
//! carries `alg`, exactly one of `jwk`/`kid`, `nonce` and `url`, and never `b64` or `crit`.

use ring::hmac;
use serde::Serialize;
use serde_json::{json, Value};

use crate::b64;
use crate::error::Error;
use crate::key::{Jwk, Signer};

/// How the protected header names the key (RFC 8555 §6.2, SPEC §3.4).
#[derive(Clone, Copy, Debug)]
pub(crate) enum KeyRef<'a> {
    /// `jwk`: newAccount only.
    Jwk,
    /// `kid`: the account URL, for everything else.
    Kid(&'a str),
}

/// The flattened JWS body.
#[derive(Debug, Serialize)]
pub(crate) struct Flattened {
    pub(crate) protected: String,
    pub(crate) payload: String,
    pub(crate) signature: String,
}

/// Signs `payload` (`None` for POST-as-GET, whose payload is the empty string, RFC 8555 §6.3).
pub(crate) fn sign(
    signer: &dyn Signer,
    key: KeyRef<'_>,
    nonce: &str,
    url: &str,
    payload: Option<&[u8]>,
) -> Result<Flattened, Error> {
    // > The protected header MUST include … "alg" … "nonce" … "url" … either "jwk" or "kid"
    // <https://www.rfc-editor.org/rfc/rfc8555#section-6.2>
    let mut header = json!({ "alg": signer.jws_alg(), "nonce": nonce, "url": url });
    match key {
        KeyRef::Jwk => header["jwk"] = jwk_value(&signer.public_jwk())?,
        KeyRef::Kid(kid) => header["kid"] = Value::from(kid),
    }
    let protected = b64::encode(&to_vec(&header)?);
    let payload = payload.map(b64::encode).unwrap_or_default();
    let signature = signer.sign(format!("{protected}.{payload}").as_bytes())?;
    Ok(Flattened {
        protected,
        payload,
        signature: b64::encode(&signature),
    })
}

/// The `externalAccountBinding` value for newAccount (RFC 8555 §7.3.4, SPEC §6.2): a JWS over the
/// account's public JWK, MACed with the operator's HMAC key, with `alg` HS256, `kid` the
/// credential's key identifier, `url` the newAccount URL, and no `nonce`.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4>
pub(crate) fn external_account_binding(
    eab_kid: &str,
    hmac_key: &[u8],
    account_jwk: &Jwk,
    url: &str,
) -> Result<Value, Error> {
    let header = json!({ "alg": "HS256", "kid": eab_kid, "url": url });
    let protected = b64::encode(&to_vec(&header)?);
    let payload = b64::encode(&to_vec(account_jwk)?);
    let key = hmac::Key::new(hmac::HMAC_SHA256, hmac_key);
    let tag = hmac::sign(&key, format!("{protected}.{payload}").as_bytes());
    Ok(json!({
        "protected": protected,
        "payload": payload,
        "signature": b64::encode(tag.as_ref()),
    }))
}

/// `token.thumbprint` (RFC 8555 §8.1), after checking that the token is base64url only, so that
/// it can never reach a path or URL with a `/` or `..` in it (SPEC §5.2).
pub fn key_authorization(token: &str, account_jwk: &Jwk) -> Result<String, Error> {
    key_authorization_for_thumbprint(token, &account_jwk.thumbprint()?)
}

/// [`key_authorization`] for a known thumbprint (base64url, 43 characters).
pub fn key_authorization_for_thumbprint(token: &str, thumbprint: &str) -> Result<String, Error> {
    let mut buf = vec![0u8; protocol_spec::challenge::key_authorization_len(token.len())];
    protocol_spec::challenge::key_authorization(token, thumbprint, &mut buf)
        .map(str::to_owned)
        .map_err(|e| Error::protocol("challenge", e))
}

fn jwk_value(jwk: &Jwk) -> Result<Value, Error> {
    serde_json::to_value(jwk).map_err(|e| Error::Crypto(format!("cannot serialize JWK: {e}")))
}

fn to_vec(v: &impl Serialize) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::Crypto(format!("cannot serialize JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyAlgorithm, KeyPair};
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    fn decode_json(part: &str) -> Value {
        serde_json::from_slice(&b64::decode(part).expect("b64")).expect("json")
    }

    #[test]
    fn signed_request_has_profile_shape() {
        let key = KeyPair::generate(KeyAlgorithm::P256).expect("key");
        let jws = sign(
            &key,
            KeyRef::Jwk,
            "bm9uY2U",
            "https://ca/acme/new-acct",
            Some(b"{}"),
        )
        .expect("sign");
        let body = serde_json::to_value(&jws).expect("json");
        let members: Vec<_> = body.as_object().expect("object").keys().cloned().collect();
        assert_eq!(members, ["payload", "protected", "signature"]);
        let header = decode_json(&jws.protected);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["nonce"], "bm9uY2U");
        assert_eq!(header["url"], "https://ca/acme/new-acct");
        assert_eq!(header["jwk"]["kty"], "EC");
        assert!(header.get("kid").is_none());
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key_sec1())
            .verify(
                format!("{}.{}", jws.protected, jws.payload).as_bytes(),
                &b64::decode(&jws.signature).expect("b64"),
            )
            .expect("signature verifies");

        let get = sign(
            &key,
            KeyRef::Kid("https://ca/acct/1"),
            "n",
            "https://ca/x",
            None,
        )
        .expect("sign");
        assert_eq!(get.payload, "", "POST-as-GET has an empty payload");
        let header = decode_json(&get.protected);
        assert_eq!(header["kid"], "https://ca/acct/1");
        assert!(header.get("jwk").is_none());
    }

    #[test]
    fn eab_binding_macs_the_account_key() {
        let key = KeyPair::generate(KeyAlgorithm::P256).expect("key");
        let hmac_key = [7u8; 32];
        let eab = external_account_binding("kid-1", &hmac_key, &key.public_jwk(), "https://u")
            .expect("eab");
        let protected = eab["protected"].as_str().expect("protected");
        let payload = eab["payload"].as_str().expect("payload");
        let header = decode_json(protected);
        assert_eq!(
            header,
            json!({"alg": "HS256", "kid": "kid-1", "url": "https://u"})
        );
        assert_eq!(
            decode_json(payload),
            serde_json::to_value(key.public_jwk()).expect("jwk")
        );
        let mac = b64::decode(eab["signature"].as_str().expect("sig")).expect("b64");
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, &hmac_key),
            format!("{protected}.{payload}").as_bytes(),
            &mac,
        )
        .expect("MAC verifies");
    }

    #[test]
    fn key_authorization_refuses_path_tokens() {
        let key = KeyPair::generate(KeyAlgorithm::P256).expect("key");
        let jwk = key.public_jwk();
        let ka = key_authorization("abc_-", &jwk).expect("ok");
        assert_eq!(ka, format!("abc_-.{}", jwk.thumbprint().expect("tp")));
        assert!(key_authorization("../etc", &jwk).is_err());
        assert!(key_authorization("", &jwk).is_err());
    }
}
