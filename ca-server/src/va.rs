//! Challenge validation.
