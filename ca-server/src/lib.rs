//! iiot-acme CA server: an on-site RFC 8555 (ACME) certificate authority for industrial IoT.
//!
//! Modules follow protocol roles (as Pebble's wfe/va/ca/db split): the web front end
//! (`app`, `jws`, `nonce`, handlers per resource), validation (`va`), issuance (`ca`, `csr`)
//! and the store (`storage`).

pub mod ca;
pub mod config;
pub mod csr;
pub mod error;
pub mod jws;
pub mod key;
pub mod types;
pub mod va;

pub use error::{Error, Problem, ProblemType, Result};
