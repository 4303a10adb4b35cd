//! iiot-acme device client: the library a device or gateway runs at boot to get and keep a
//! certificate from the plant's iiot-acme CA (or any RFC 8555 CA, for http-01).
//!
//! | module        | role                                                           | SPEC / RFC           |
//! |---------------|----------------------------------------------------------------|----------------------|
//! | [`trust`]     | one pinned root (file or SHA-256 fingerprint), rustls verifier  | SPEC §2.3            |
//! | `transport`   | HTTPS, nonces, `badNonce` retry, problem documents, Retry-After | RFC 8555 §6          |
//! | `jws`         | flattened JWS, EAB binding, key authorizations                  | RFC 8555 §6.2, §7.3.4 |
//! | [`key`]       | account and certificate keys, [`key::Signer`]                   | SPEC §3.3            |
//! | [`acme`]      | directory, account, order flow driven by the order's status    | RFC 8555 §7          |
//! | [`enroll`]    | how identifiers are proven ([`enroll::Enrollment`]), EAB, pairing code | SPEC §5, §6.2 |
//! | [`attest`]    | device-attest-01: IDevID chain, [`attest::Signer`], attestation object | SPEC §5.10 |
//! | [`pkcs11`]    | certificate and IDevID keys in a PKCS #11 token (RFC 7512 URIs) | RFC 7512             |
//! | [`http01`]    | the built-in http-01 responder                                  | SPEC §5.3            |
//! | [`tlsalpn01`] | the built-in tls-alpn-01 responder                              | RFC 8737, RFC 8738 §6 |
//! | [`cert`]      | installed certificate: status, renewal time                     |                      |
//! | [`device`]    | enroll / install / post-install / run-forever                   |                      |
//! | [`files`]     | atomic writes with modes, the state file                       |                      |
//! | [`output`]    | DER, PKCS #12, the OPC UA PKI directory and its CRLs            | OPC 10000-12 F, SPEC §9.1 |
//! | [`schedule`]  | backoff with jitter, durations                                  |                      |
//! | [`config`]    | TOML + flags → checked [`config::Settings`]                     |                      |
//!
//! # Design
//!
//! **Own ACME layer rather than instant-acme.** The JWS/ACME layer here is small (a few hundred
//! lines) and written against this profile: it uses protocol-spec's strict base64url,
//! thumbprint and key-authorization helpers, so the device client, the embedded client and the
//! server agree byte for byte and run the same vectors. It owns the TLS setup (reqwest is handed
//! a rustls config with [`trust::PinnedVerifier`]; no root store is compiled in), and its
//! challenge handling is an enum ([`enroll::Enrollment`]: http-01, tls-alpn-01,
//! operator-approval-01 and device-attest-01) that the profile's own challenge types extend with new
//! variants, which a general-purpose client would not let us do without forking it. The embedded
//! client (`embedded-client`: no_std, no heap, sans-IO, with a C ABI) mirrors this structure
//! without allocation.
//!
//! **Trust.** Exactly one anchor (SPEC §2.3). With a fingerprint, the root comes from the end
//! of the server's own chain and is checked against the pin inside the TLS handshake, before
//! any HTTP request. Never a system store, never a fallback.
//!
//! **Keys.** Made on the device from the system CSPRNG, P-256 by default (ring; RSA certificate
//! keys with the `rsa` crate), stored as PKCS #8 PEM in files created 0600, never sent. A new
//! certificate key per certificate unless `reuse_key`. Or in a PKCS #11 token named by an
//! RFC 7512 URI ([`pkcs11`]): generated there, non-extractable, signing the CSR and the
//! device-attest-01 statement inside the token.
//!
//! **Files are the truth.** At every start the installed certificate and key are read back and
//! checked (parse, key match, identifiers, validity, renewal point). A still-good certificate
//! is kept and only its renewal is scheduled, so reboots never cause needless enrollments.
//! The state file only remembers the account URL and which CA it belongs to.
//!
//! **Failures.** Every error maps to one [`error::ErrorKind`], which the CLI maps to one exit
//! code. `run` retries everything except configuration errors, with exponential backoff, jitter
//! and the CA's Retry-After, while the old certificate stays in use.

pub mod acme;
pub mod attest;
mod b64;
pub mod cert;
pub mod config;
mod der;
pub mod device;
pub mod enroll;
pub mod error;
pub mod files;
// Entry points of the fuzz targets (`fuzz/`) and of the corpus replay test; not API.
#[doc(hidden)]
pub mod fuzzing;
pub mod http01;
pub mod jws;
pub mod key;
pub mod output;
pub mod pkcs11;
pub mod schedule;
pub mod tlsalpn01;
mod transport;
pub mod trust;
pub mod types;

pub use transport::{parse_retry_after, MAX_RETRY_AFTER};

pub use config::{FileConfig, Settings};
pub use device::{Device, EnrollOutcome};
pub use error::{Error, ErrorKind, Problem, ProblemType};
pub use trust::TrustAnchor;
pub use types::Identifier;
