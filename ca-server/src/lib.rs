//! iiot-acme CA server: an on-site RFC 8555 (ACME) certificate authority for industrial IoT.
//!
//! Modules follow protocol roles (as Pebble's wfe/va/ca/db split): the web front end
//! (`app`, `jws`, `nonce`, one module per resource), validation (`va`), issuance (`ca`, `csr`)
//! and the store (`storage`).

pub mod admin;
pub mod ca;
pub mod config;
pub mod der;
pub mod error;
pub mod fsutil;
pub mod jose;
pub mod jwk;
pub mod key;
pub mod ra;
pub mod ratelimit;
pub mod server;
pub mod storage;
#[cfg(test)]
mod testutil;
pub mod text;
pub mod types;
pub mod va;
pub mod wfe;
pub mod wire;

pub use error::{Error, Problem, ProblemType, Result};
