//! iiot-acme CA server: an on-site RFC 8555 (ACME) certificate authority for industrial IoT.
//!
//! Modules follow protocol roles, as Pebble's wfe/va/ca/db split, and depend on each other in
//! one direction only (checked by `tests/roles.rs`):
//!
//! ```text
//! cli ─▶ server ─▶ wfe, admin ─▶ ra ─▶ config ─▶ ca, va ─▶ storage ─▶ shared modules
//! ```
//!
//! | role       | what                                                                     |
//! |------------|--------------------------------------------------------------------------|
//! | [`wfe`]    | web front end: HTTPS listener, routes, JWS requests, nonces, problem documents; the only ACME user of axum |
//! | [`cli`]    | the `ca-server` command line: runs the server, or the operator's commands |
//! | [`server`] | starts everything; [`server::metrics`]: `/metrics`, `/health`, `/ready` (plain HTTP) |
//! | [`admin`]  | the operator's channels: the socket the commands talk to, and the HTTPS console (REST API, OpenAPI), with roles and the audit log |
//! | [`ra`]     | registration authority: the rules over the store, no HTTP               |
//! | [`config`] | the configuration file, composed of the roles' settings                  |
//! | [`ca`]     | CA hierarchy and keys, issuance, profiles, CSRs, CRL signing             |
//! | [`va`]     | validation: http-01, tls-alpn-01, device attestation, refused addresses   |
//! | [`storage`]| the store (sled, or memory in tests)                                     |
//!
//! Shared by every role: [`error`] (the one error type and its problem types), [`types`]
//! (identifiers, statuses, times, ids), [`wire`] (the protocol-spec helpers), [`jose`] and
//! [`jwk`] (JWS and keys), [`key`] (key and signature algorithm policy), [`der`] (DER and
//! PEM), [`ratelimit`], [`text`], [`fsutil`], [`metrics`] (the counters, gauges and histograms
//! every role records, and their Prometheus text).
//!
//! Where each part of RFC 8555 is:
//!
//! | RFC 8555                         | HTTP (`wfe`)            | rules (`ra`, `va`, `ca`)            |
//! |----------------------------------|-------------------------|-------------------------------------|
//! | §6.2–6.5 JWS, nonces, replay     | [`wfe::jws`], [`wfe::nonce`] | [`jose`], [`jwk`]              |
//! | §6.7 errors                      | [`wfe::problem`]        | [`error`]                           |
//! | §7.1.1 directory, §7.2 newNonce  | [`wfe::directory`]      |                                     |
//! | §7.3 accounts, §7.3.4 EAB, §7.3.5 key change | [`wfe::account`] | [`ra::account`], [`ra::eab`]   |
//! | §7.4 orders, finalize            | [`wfe::order`]          | [`ra::order`], [`ca::csr`], [`ra::keycheck`], [`ca`] |
//! | §7.5 authorizations, challenges  | [`wfe::authz`]          | [`ra::authz`], [`ra::approval`]     |
//! | §7.4.2 download, §7.6 revocation | [`wfe::cert`]           | [`ra::revocation`], [`ra::crl`]     |
//! | §8.3 http-01, RFC 8737 tls-alpn-01 |                       | [`va`], [`va::policy`]              |
//! | device-attest-01                 |                         | [`va::attest`]                      |
//! | RFC 9773 renewal information     | [`wfe::renewal`]        | [`ra::renewal`]                     |

pub mod admin;
pub mod ca;
pub mod cli;
pub mod config;
pub mod der;
pub mod error;
pub mod fsutil;
// Entry points of the fuzz targets (`fuzz/`) and of the corpus replay test; not API.
#[doc(hidden)]
pub mod fuzzing;
pub mod jose;
pub mod jwk;
pub mod key;
pub mod metrics;
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
