//! JWS request verification (RFC 8555 §6.2-6.4).

/// `alg` values accepted on JWS requests, also sent with `badSignatureAlgorithm`.
pub const SUPPORTED_ALGORITHMS: &[&str] = &["ES256", "ES384", "EdDSA", "RS256"];
