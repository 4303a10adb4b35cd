//! iiot-acme protocol profile: the normative text (`SPEC.md`), the shared test vectors
//! (`vectors/*.json`) and small wire helpers that every implementation needs.
//!
//! The helpers are `#![no_std]` and never allocate: each writes into a buffer the caller owns and
//! returns the written part, so the embedded client can use the same code as the server and the
//! device client. They leave hashing to the caller, who already has SHA-256 for JWS.
//!
//! | module          | what                                                        | SPEC       |
//! |-----------------|-------------------------------------------------------------|------------|
//! | [`base64url`]   | strict unpadded base64url                                   | §3.7       |
//! | [`problem`]     | problem type URNs and names, one table                      | §3.8       |
//! | [`jwk`]         | RFC 7638 canonical JWK JSON, thumbprint text                | §5.2       |
//! | [`challenge`]   | key authorization, tls-alpn-01 extension, reverse names     | §5.2, §5.4 |
//! | [`identifier`]  | `dns` normalisation, `ip` and `permanent-identifier` checks | §4         |
//! | [`fingerprint`] | root certificate fingerprint text                           | §2.3       |
//! | [`pairing`]     | operator-approval pairing codes                             | §5.9       |
//! | [`attestation`] | device-attest-01 attestation object (CBOR) encoder          | §5.10.2    |
//! | [`ari`]         | ARI certificate identifier: write, split, decode            | §9.2       |
//!
//! With the `vectors` feature, [`vectors`] exposes the vector files as strings so that other
//! crates' tests run the same bytes.
#![no_std]

// std only for the crate's own tests and the test-only `runner` feature; the helpers above it
// build without std or an allocator.
#[cfg(any(test, feature = "runner"))]
extern crate std;

pub mod ari;
pub mod attestation;
pub mod base64url;
pub mod challenge;
pub mod fingerprint;
// Entry points of the fuzz targets (`fuzz/`) and of the corpus replay test; not API.
#[doc(hidden)]
pub mod fuzzing;
pub mod identifier;
mod ip;
pub mod jwk;
pub mod pairing;
pub mod problem;
mod punycode;
#[cfg(feature = "runner")]
pub mod runner;
mod write;

/// The shared test vectors, one JSON array per file (SPEC §1.5).
///
/// Each entry is `{id, rfc, spec, provenance, input, expect}`. A consumer that cannot run an
/// entry lists its id, with the reason, in its own skip file.
#[cfg(any(test, feature = "vectors"))]
pub mod vectors {
    /// ARI certificate identifiers from key identifiers and serials, and malformed ones
    /// (SPEC §9.2).
    pub const ARI_CERT_ID: &str = include_str!("../vectors/ari_cert_id.json");
    /// device-attest-01 attestation objects from their statements, octet for octet
    /// (SPEC §5.10.2).
    pub const ATTESTATION_OBJECT: &str = include_str!("../vectors/attestation_object.json");
    /// Strict base64url decoding and encoding (SPEC §3.7).
    pub const BASE64URL: &str = include_str!("../vectors/base64url.json");
    /// device-attest-01 attestation objects and their verification outcome (SPEC §4.5, §5.10).
    pub const DEVICE_ATTEST: &str = include_str!("../vectors/device_attest.json");
    /// Root certificate fingerprints (SPEC §2.3).
    pub const FINGERPRINT: &str = include_str!("../vectors/fingerprint.json");
    /// `dns`, `ip` and `permanent-identifier` identifiers and their canonical values or problem
    /// types (SPEC §4).
    pub const IDENTIFIERS: &str = include_str!("../vectors/identifiers.json");
    /// Key authorizations and tls-alpn-01 digests (SPEC §5.2, §5.4).
    pub const KEY_AUTHORIZATION: &str = include_str!("../vectors/key_authorization.json");
    /// Operator-approval pairing codes from challenge tokens and account key thumbprints
    /// (SPEC §5.9).
    pub const PAIRING_CODE: &str = include_str!("../vectors/pairing_code.json");
    /// Problem type URNs and their names, and URNs that name no type (SPEC §3.8).
    pub const PROBLEM_TYPES: &str = include_str!("../vectors/problem_types.json");
    /// Situations and the problem type and HTTP status they produce (SPEC §3.8).
    pub const PROBLEMS: &str = include_str!("../vectors/problems.json");
    /// Reverse-mapping names used as tls-alpn-01 SNI for `ip` identifiers (SPEC §5.4).
    pub const REVERSE_DNS: &str = include_str!("../vectors/reverse_dns.json");
    /// RFC 7638 JWK thumbprints (SPEC §5.2).
    pub const THUMBPRINT: &str = include_str!("../vectors/thumbprint.json");

    /// Every vector file as (file stem, contents).
    pub const ALL: &[(&str, &str)] = &[
        ("ari_cert_id", ARI_CERT_ID),
        ("attestation_object", ATTESTATION_OBJECT),
        ("base64url", BASE64URL),
        ("device_attest", DEVICE_ATTEST),
        ("fingerprint", FINGERPRINT),
        ("identifiers", IDENTIFIERS),
        ("key_authorization", KEY_AUTHORIZATION),
        ("pairing_code", PAIRING_CODE),
        ("problem_types", PROBLEM_TYPES),
        ("problems", PROBLEMS),
        ("reverse_dns", REVERSE_DNS),
        ("thumbprint", THUMBPRINT),
    ];
}

/// The caller's buffer cannot hold the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferTooSmall {
    /// How many octets the result needs.
    pub needed: usize,
}

impl core::fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "output buffer too small: {} octets needed", self.needed)
    }
}

#[cfg(test)]
mod tests;
