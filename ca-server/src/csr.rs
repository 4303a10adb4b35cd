//! CSR parsing and policy. (placeholder until the pki branch lands)
use crate::key::PublicKey;
use crate::types::Identifier;
use crate::{Error, Result};
/// info
pub struct CsrInfo {
    /// spki
    pub spki_der: Vec<u8>,
    /// key
    pub public_key: PublicKey,
    /// ids
    pub identifiers: Vec<Identifier>,
}
/// parse
pub fn parse_and_verify(_der: &[u8]) -> Result<CsrInfo> {
    Err(Error::BadCsr("placeholder".into()))
}
/// spki
pub fn public_key_from_spki(_der: &[u8]) -> Result<PublicKey> {
    Err(Error::BadPublicKey("placeholder".into()))
}
