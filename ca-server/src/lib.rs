//! iiot-acme CA server: an on-site RFC 8555 (ACME) certificate authority for industrial IoT.
//!
//! Modules follow protocol roles (as Pebble's wfe/va/ca/db split): the web front end
//! (`app`, `jws`, `nonce`, one module per resource), validation (`va`), issuance (`ca`, `csr`)
//! and the store (`storage`).

pub mod account;
pub mod admin;
pub mod app;
pub mod approval;
pub mod attest;
pub mod authz;
pub mod ca;
pub mod cert;
pub mod config;
pub mod crl;
pub mod csr;
pub mod der;
pub mod directory;
pub mod eab;
pub mod error;
pub mod fsutil;
pub mod identity;
pub mod jwk;
pub mod jws;
pub mod key;
pub mod keycheck;
pub mod listener;
pub mod nonce;
pub mod order;
pub mod policy;
pub mod profiles;
pub mod ra;
pub mod ratelimit;
pub mod renewal;
pub mod server;
pub mod storage;
#[cfg(test)]
mod testutil;
pub mod text;
pub mod types;
pub mod va;
pub mod wire;

pub use error::{Error, Problem, ProblemType, Result};
