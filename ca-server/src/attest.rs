//! device-attest-01 (draft-ietf-acme-device-attest) with IEEE 802.1AR IDevID attestations.
//! (placeholder: the implementation lands with issue #3)

use serde_json::Value;

use crate::app::AppState;
use crate::types::Identifier;
use crate::{Error, Result};

/// Checks the syntax of a `permanent-identifier` value and returns it unchanged (identifiers
/// are compared octet for octet, never normalised).
pub fn normalize_permanent_identifier(value: &str) -> Result<String> {
    Err(Error::UnsupportedIdentifier(format!(
        "permanent-identifier {value:?}: device attestation is not supported yet"
    )))
}

/// Verifies a device-attest-01 challenge response (`payload`) for `identifier`.
pub fn verify(
    _app: &AppState,
    _identifier: &Identifier,
    _token: &str,
    _key_authorization: &str,
    _payload: &Value,
) -> Result<()> {
    Err(Error::BadAttestationStatement(
        "device attestation is not supported yet".into(),
    ))
}
