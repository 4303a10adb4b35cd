//! JSON Web Signature (RFC 7515) as ACME restricts it (RFC 8555 §6.2): the flattened JSON
//! serialization, its protected header, and signature verification. Used for every request
//! (`wfe::jws`), for the inner JWS of a key change, and for external account bindings.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::jwk;
use crate::jwk::SUPPORTED_ALGORITHMS;
use crate::key::PublicKey;
use crate::{Error, Result};

/// A JWS in flattened JSON serialization.
///
/// > The JWS MUST NOT have multiple signatures
/// > The JWS Unencoded Payload Option [RFC7797] MUST NOT be used
/// > The JWS Unprotected Header [RFC7515] MUST NOT be used
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-6.2>
///
/// `deny_unknown_fields` turns `header` and `signatures` into `malformed`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flattened {
    /// base64url(protected header JSON).
    pub protected: String,
    /// base64url(payload); empty for POST-as-GET.
    pub payload: String,
    /// base64url(signature).
    pub signature: String,
}

/// The decoded parts of a flattened JWS, before the signature is checked.
pub struct Parsed {
    /// The protected header as a JSON object.
    pub header: serde_json::Map<String, Value>,
    /// The decoded payload bytes.
    pub payload: Vec<u8>,
    /// The decoded signature.
    pub signature: Vec<u8>,
    /// `protected.payload`, the bytes the signature covers.
    pub signing_input: Vec<u8>,
}

impl Parsed {
    /// Decodes a flattened JWS from JSON bytes.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        let jws: Flattened = serde_json::from_slice(body)
            .map_err(|e| Error::Malformed(format!("request is not a flattened JWS: {e}")))?;
        Self::from_flattened(&jws)
    }

    /// Decodes a flattened JWS already parsed from JSON.
    pub fn from_flattened(jws: &Flattened) -> Result<Self> {
        let header_bytes = crate::wire::b64u_decode("JWS protected header", &jws.protected)?;
        let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&header_bytes) else {
            return Err(Error::Malformed(
                "JWS protected header is not a JSON object".into(),
            ));
        };
        // > The JWS Unencoded Payload Option [RFC7797] MUST NOT be used
        if header.contains_key("b64") || header.contains_key("crit") {
            return Err(Error::Malformed(
                "JWS must not use the unencoded payload option or crit".into(),
            ));
        }
        Ok(Self {
            payload: crate::wire::b64u_decode("JWS payload", &jws.payload)?,
            signature: crate::wire::b64u_decode("JWS signature", &jws.signature)?,
            signing_input: format!("{}.{}", jws.protected, jws.payload).into_bytes(),
            header,
        })
    }

    /// A string member of the protected header.
    pub fn header_str(&self, name: &str) -> Result<Option<&str>> {
        match self.header.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Error::Malformed(format!(
                "JWS header {name:?} must be a string"
            ))),
        }
    }

    /// The `alg` member, checked against the accepted list.
    ///
    /// > The "alg" Header Parameter MUST NOT be "none" … MUST NOT be a MAC-based algorithm
    ///
    /// <https://www.rfc-editor.org/rfc/rfc8555#section-6.2>
    pub fn alg(&self) -> Result<&str> {
        let alg = self
            .header_str("alg")?
            .ok_or_else(|| Error::Malformed("JWS header has no \"alg\"".into()))?;
        if !SUPPORTED_ALGORITHMS.contains(&alg) {
            return Err(Error::BadSignatureAlgorithm(alg.to_owned()));
        }
        Ok(alg)
    }

    /// Verifies the signature with `key`.
    pub fn verify(&self, key: &PublicKey) -> Result<()> {
        jwk::verify(self.alg()?, key, &self.signing_input, &self.signature)
    }

    /// The payload as JSON of type `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        if self.payload.is_empty() {
            return Err(Error::Malformed(
                "expected a JSON payload, got an empty one (POST-as-GET)".into(),
            ));
        }
        serde_json::from_slice(&self.payload)
            .map_err(|e| Error::Malformed(format!("invalid request payload: {e}")))
    }
}
