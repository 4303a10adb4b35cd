//! ACME problem types (RFC 8555 §6.7) and the extension types this profile uses. SPEC §3.8.
//!
//! One table of every type the server sends or a client may meet: [`Type`] names each, and
//! [`Type::urn`], [`Type::name`], [`Type::from_urn`] and [`Type::from_name`] convert between the
//! value and its text. Unknown and foreign types map to `None`; implementations keep their own
//! "other" case for those.
//!
//! ```text
//! urn:ietf:params:acme:error:badNonce  <->  Type::BadNonce  <->  "badNonce"
//! ```
//!
//! Types are compared octet for octet, as the table writes them: `badnonce` is not `badNonce`.
//! The HTTP status that goes with a type is not here: several types go with more than one
//! status (the table of SPEC §3.8), and the server picks it.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-6.7>

// The namespace as a literal, for `concat!` in the table below.
macro_rules! namespace {
    () => {
        "urn:ietf:params:acme:error:"
    };
}

/// What every ACME problem type URN starts with (RFC 8555 §6.7).
pub const NAMESPACE: &str = namespace!();

// One list makes the enum, `ALL`, the URNs and the compact name table, so they cannot drift
// apart.
macro_rules! problem_types {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// An ACME problem type.
        ///
        /// Not `#[non_exhaustive]`, on purpose: a crate that maps these to its own errors gets a
        /// compile error, not a silent "other", when the profile adds a type.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Type {
            $($(#[$doc])* $variant,)*
        }

        impl Type {
            /// Every type, in the order of the table (alphabetical by name).
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// The full URN, e.g. `urn:ietf:params:acme:error:badNonce`.
            pub fn urn(self) -> &'static str {
                match self {
                    $(Self::$variant => concat!(namespace!(), $name),)*
                }
            }
        }

        /// The names, in the order of [`Type::ALL`], each followed by `;`. One string rather
        /// than a `match` over strings or a table of `(&str, Type)` pairs keeps
        /// [`Type::from_name`] small on a microcontroller, and leaves the URNs out of an image
        /// that never calls [`Type::urn`].
        const NAMES: &str = concat!($($name, ";",)*);
    };
}

problem_types! {
    /// `accountDoesNotExist`: unknown account, or `onlyReturnExisting` with an unknown key
    /// (RFC 8555).
    AccountDoesNotExist = "accountDoesNotExist",
    /// `alreadyReplaced`: the certificate a newOrder `replaces` was already replaced (RFC 9773
    /// §5).
    AlreadyReplaced = "alreadyReplaced",
    /// `alreadyRevoked`: the certificate is already revoked (RFC 8555).
    AlreadyRevoked = "alreadyRevoked",
    /// `badAttestationStatement`: a device-attest-01 attestation did not verify
    /// (draft-ietf-acme-device-attest, SPEC §5.10.5).
    BadAttestationStatement = "badAttestationStatement",
    /// `badCSR`: the CSR is unacceptable (RFC 8555).
    BadCsr = "badCSR",
    /// `badNonce`: the nonce was refused; retry with the fresh one (RFC 8555 §6.5).
    BadNonce = "badNonce",
    /// `badPublicKey`: the JWS or CSR key is not acceptable (RFC 8555).
    BadPublicKey = "badPublicKey",
    /// `badRevocationReason`: the revocation reason is not allowed (RFC 8555).
    BadRevocationReason = "badRevocationReason",
    /// `badSignatureAlgorithm`: the JWS algorithm is not supported (RFC 8555 §6.2).
    BadSignatureAlgorithm = "badSignatureAlgorithm",
    /// `caa`: CAA records forbid issuance (RFC 8555). This server never sends it.
    Caa = "caa",
    /// `compound`: several problems; see `subproblems` (RFC 8555 §6.7.1).
    Compound = "compound",
    /// `connection`: validation could not connect (RFC 8555).
    Connection = "connection",
    /// `dns`: validation failed a DNS lookup (RFC 8555).
    Dns = "dns",
    /// `externalAccountRequired`: newAccount needs external account binding (RFC 8555 §7.3.4).
    ExternalAccountRequired = "externalAccountRequired",
    /// `incorrectResponse`: the challenge response did not match (RFC 8555).
    IncorrectResponse = "incorrectResponse",
    /// `invalidContact`: a contact URL is invalid (RFC 8555).
    InvalidContact = "invalidContact",
    /// `invalidProfile`: the newOrder `profile` is not offered (draft-ietf-acme-profiles).
    InvalidProfile = "invalidProfile",
    /// `malformed`: the request is malformed (RFC 8555).
    Malformed = "malformed",
    /// `orderNotReady`: finalize on an order that is not `ready` (RFC 8555 §7.4).
    OrderNotReady = "orderNotReady",
    /// `rateLimited`: a rate limit; see `Retry-After` (RFC 8555 §6.6).
    RateLimited = "rateLimited",
    /// `rejectedIdentifier`: the server will not issue for the identifier (RFC 8555).
    RejectedIdentifier = "rejectedIdentifier",
    /// `serverInternal`: the server failed (RFC 8555).
    ServerInternal = "serverInternal",
    /// `tls`: validation failed in TLS (RFC 8555).
    Tls = "tls",
    /// `unauthorized`: the client may not do this (RFC 8555).
    Unauthorized = "unauthorized",
    /// `unsupportedContact`: the contact URL scheme is not supported (RFC 8555).
    UnsupportedContact = "unsupportedContact",
    /// `unsupportedIdentifier`: the identifier type is not supported (RFC 8555).
    UnsupportedIdentifier = "unsupportedIdentifier",
    /// `userActionRequired`: visit the `instance` URL, e.g. for new terms of service
    /// (RFC 8555 §7.3.3). This server never sends it.
    UserActionRequired = "userActionRequired",
}

impl Type {
    /// The name after [`NAMESPACE`], e.g. `badNonce`: how SPEC.md writes the type.
    pub fn name(self) -> &'static str {
        self.urn().strip_prefix(NAMESPACE).unwrap_or_default()
    }

    /// The type of a problem document's `type` member; `None` for any other text.
    pub fn from_urn(urn: &str) -> Option<Self> {
        Self::from_name(urn.strip_prefix(NAMESPACE)?)
    }

    /// The type named `name` (the part after [`NAMESPACE`]); `None` for any other text.
    pub fn from_name(name: &str) -> Option<Self> {
        // `NAMES` ends with `;`, so splitting it gives one empty piece after the last name. An
        // empty `name` finds that piece, whose index is past the end of `ALL`: `None`.
        let i = NAMES
            .as_bytes()
            .split(|&b| b == b';')
            .position(|n| n == name.as_bytes())?;
        Self::ALL.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_urns_and_the_table_agree() {
        assert_eq!(NAMES.split(';').count(), Type::ALL.len() + 1);
        for (i, &t) in Type::ALL.iter().enumerate() {
            assert_eq!(t.urn(), [NAMESPACE, t.name()].concat());
            assert_eq!(NAMES.split(';').nth(i), Some(t.name()));
            assert_eq!(Type::from_urn(t.urn()), Some(t));
            assert_eq!(Type::from_name(t.name()), Some(t));
        }
        // Alphabetical by name, case aside, so the table reads like RFC 8555's.
        let names: std::vec::Vec<std::string::String> =
            Type::ALL.iter().map(|t| t.name().to_lowercase()).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        assert_eq!(Type::from_name(""), None);
        assert_eq!(Type::from_urn(NAMESPACE), None);
    }
}
