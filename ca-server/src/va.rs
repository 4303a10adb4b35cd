//! Challenge validation. (placeholder until the va branch lands)
use crate::config::ValidationConfig;
use crate::types::{ChallengeType, Identifier};
use crate::{Error, Result};
/// validator
pub struct Validator;
impl Validator {
    /// new
    pub fn new(_cfg: ValidationConfig) -> Result<Self> {
        Ok(Self)
    }
    /// validate
    pub async fn validate(
        &self,
        _i: &Identifier,
        _k: ChallengeType,
        _t: &str,
        _ka: &str,
    ) -> Result<()> {
        Err(Error::Internal("placeholder".into()))
    }
}
