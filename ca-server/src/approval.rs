//! operator-approval-01: an operator approves a device in front of them (SPEC §5).
//! (placeholder: the implementation lands with issue #3)

use crate::app::AppState;
use crate::authz::Authz;
use crate::jws::AccountRequest;
use crate::{Error, Result};

/// The device asks for approval: the challenge becomes `processing` until an operator decides.
pub async fn request(_app: &AppState, _authz_id: &str, _r: &AccountRequest) -> Result<Authz> {
    Err(Error::Malformed(
        "operator approval is not supported yet".into(),
    ))
}
