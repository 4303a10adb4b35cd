//! iiot-acme embedded client: RFC 8555 enrollment for microcontrollers.
//!
//! `#![no_std]`, no `alloc`, no global allocator. The client is a sans-IO state machine
//! ([`Enrollment`]): it writes each HTTP/1.1 request into a buffer the caller owns, and reads
//! the response bytes the caller received. The integrator supplies the transport (its TCP/TLS
//! stack, which must pin the CA root as SPEC §2.3 requires), the RNG for key generation and
//! persistence for keys and certificates. [`driver`] runs a whole enrollment over
//! `embedded_io` `Read`/`Write` for integrators who want one call.
//!
//! Every failure is an [`Error`], a small `Copy` enum: a hostile or broken server response can
//! make an enrollment fail, never panic.
#![no_std]

pub mod attest;
pub mod csr;
pub mod der;
pub mod driver;
mod enrollment;
mod error;
// Entry points of the fuzz targets (`fuzz/`) and of the corpus replay test; not API.
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod json;
mod jws;
pub mod key;
pub mod renewal;
mod text;

pub use attest::{IdevidSigner, SignerError};
pub use enrollment::{Config, Eab, Enrollment, Event, Identifier, MAX_AUTHORIZATIONS};
pub use error::{Error, ProblemKind};
pub use key::{AccountKey, CertificateKey, DeviceKey, PairingCode};
pub use text::Text;
