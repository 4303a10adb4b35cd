//! The C-visible types: everything here appears in `iiot_acme.h`.
//!
//! Values C passes in (identifier types, flags) are plain integers checked on use, because an
//! out-of-range value in a Rust enum is undefined behaviour. Values Rust hands out (statuses,
//! events) are `#[repr(C)]` enums, so C gets named constants and `switch` warnings.

use core::ffi::{c_char, c_void};

use embedded_client::{Error, ProblemKind};

/// Size of `IiotEnrollment` in 8-octet words: enough for the state on 64-bit hosts (1,392
/// octets in this version; 32-bit MCUs need less). The library asserts at compile time that
/// its state fits.
pub const IIOT_ENROLLMENT_WORDS: usize = 192;

/// One enrollment's state: allocate it (static, stack or heap) and pass it to
/// `iiot_enrollment_init`. Opaque; do not move or copy it after `iiot_enrollment_init` (it
/// points into itself), and call `iiot_enrollment_clear` when done to wipe the keys.
#[repr(C)]
pub struct IiotEnrollment {
    pub opaque: [u64; IIOT_ENROLLMENT_WORDS],
}

/// `IiotIdentifier.type`: a DNS name in normal form (lowercase, no trailing dot; SPEC §4).
pub const IIOT_IDENTIFIER_DNS: u32 = 0;
/// `IiotIdentifier.type`: an IPv4 or IPv6 address in text form.
pub const IIOT_IDENTIFIER_IP: u32 = 1;
/// `IiotIdentifier.type`: `serial[/assignerOID]` (SPEC §4.5), answered by device-attest-01 or
/// operator approval.
pub const IIOT_IDENTIFIER_PERMANENT: u32 = 2;

/// An identifier to enroll.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IiotIdentifier {
    /// `IIOT_IDENTIFIER_DNS`, `IIOT_IDENTIFIER_IP` or `IIOT_IDENTIFIER_PERMANENT`.
    pub r#type: u32,
    /// NUL-terminated UTF-8.
    pub value: *const c_char,
}

/// What to enroll. Every string is NUL-terminated UTF-8 and, like the identifier array, must
/// stay valid and unchanged until `iiot_enrollment_clear` (the enrollment keeps pointers to
/// them, as firmware constants usually are).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IiotConfig {
    /// `https://host[:port]`, no path.
    pub base_url: *const c_char,
    /// 1 to 4 identifiers; all go into the CSR.
    pub identifiers: *const IiotIdentifier,
    pub identifier_count: usize,
    /// External account binding key id, or NULL for none.
    pub eab_kid: *const c_char,
    /// The EAB HMAC key, base64url as `ca-server eab create` prints it; required with `eab_kid`.
    pub eab_hmac_key: *const c_char,
    /// A certificate profile from the directory's `meta.profiles`, or NULL.
    pub profile: *const c_char,
    /// Renewal: the ARI certificate ID of the certificate this one replaces, or NULL.
    pub replaces: *const c_char,
    /// Nonzero: send `termsOfServiceAgreed` (when the operator configured terms).
    pub terms_of_service_agreed: u8,
}

/// Fills `buf` with `len` octets from a cryptographically secure RNG; returns 0 on success.
pub type IiotRngFn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, buf: *mut u8, len: usize) -> i32>;

/// Signs `message` with the IDevID key as `cose_alg` says, writing an ECDSA signature as DER
/// `Ecdsa-Sig-Value` (not r‖s) into `out` (`out_cap` octets) and its length into `*out_len`;
/// returns 0 on success.
pub type IiotSignFn = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        message: *const u8,
        message_len: usize,
        out: *mut u8,
        out_cap: usize,
        out_len: *mut usize,
    ) -> i32,
>;

/// Most certificates in an IDevID chain (SPEC §5.10.2).
pub const IIOT_MAX_CHAIN: usize = 5;

/// Access to the manufacturer's IDevID for device-attest-01 (SPEC §5.10), e.g. in a secure
/// element. The struct is copied by `iiot_enrollment_init`; the certificates it points to must
/// stay valid until `iiot_enrollment_clear`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IiotIdevidSigner {
    /// COSE algorithm of `sign`: -7 (ES256), -35 (ES384) or -257 (RS256).
    pub cose_alg: i32,
    /// DER certificates, the IDevID first, then its issuers: `chain_count` (1 to 5) pointers.
    pub chain: *const *const u8,
    /// Length of each certificate in `chain`.
    pub chain_lens: *const usize,
    pub chain_count: usize,
    /// Required.
    pub sign: IiotSignFn,
    /// Passed to `sign` as is.
    pub ctx: *mut c_void,
}

/// The result of every call. `IIOT_STATUS_OK` is 0; 1 to 20 are the client's errors (one per
/// `embedded_client::Error` variant); 100 and up are misuse of the C API.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IiotStatus {
    Ok = 0,
    /// A buffer is too small; `IiotErrorInfo.needed` octets would do (0 when unknown).
    BufferTooSmall = 1,
    /// The configuration cannot work (bad base URL, identifier, EAB key); see the detail.
    Config = 2,
    /// The response is not complete HTTP/1.1 (the connection closed early).
    Truncated = 3,
    /// The response is not HTTP/1.1 as the client reads it.
    Http = 4,
    /// The response is larger than the receive buffer.
    ResponseTooLarge = 5,
    /// A status the protocol does not allow here; `IiotErrorInfo.http_status` has it.
    UnexpectedStatus = 6,
    WrongContentType = 7,
    /// The body is not the JSON the step needs; the detail names the part.
    BadJson = 8,
    /// A server URL off the CA's origin, or too long.
    BadUrl = 9,
    /// The server answered with a problem document: `IiotErrorInfo.problem` says which.
    Problem = 10,
    /// A challenge or authorization ended invalid: `IiotErrorInfo.problem` says why.
    AuthorizationFailed = 11,
    /// The order ended invalid.
    OrderFailed = 12,
    /// No challenge this device can answer (e.g. device-attest-01 without a signer).
    NoUsableChallenge = 13,
    TooManyAuthorizations = 14,
    NonceRetriesExhausted = 15,
    /// The server requires external account binding and none was configured.
    EabRequired = 16,
    /// The IDevID signer failed.
    Signer = 17,
    /// A key is not a valid P-256 private key, or the RNG failed.
    Key = 18,
    /// Called out of order (a response without a request, or after the end).
    UnexpectedCall = 19,
    Transport = 20,
    /// A required pointer is NULL.
    NullPointer = 100,
    /// A string is not UTF-8.
    BadUtf8 = 101,
    /// An argument is out of range: identifier type, chain count, overlapping or misaligned
    /// buffers.
    InvalidArgument = 102,
    /// The `IiotEnrollment` was not initialised (or init failed, or it was cleared).
    NotInitialized = 103,
}

/// ACME problem types (SPEC §3.8) of `IIOT_STATUS_PROBLEM`, `IIOT_STATUS_AUTHORIZATION_FAILED`
/// and `IIOT_STATUS_ORDER_FAILED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IiotProblem {
    /// The error is not a problem document.
    None = 0,
    Malformed = 1,
    BadNonce = 2,
    BadSignatureAlgorithm = 3,
    BadPublicKey = 4,
    AccountDoesNotExist = 5,
    /// E.g. an EAB credential that is unknown, expired or whose MAC does not verify.
    Unauthorized = 6,
    ExternalAccountRequired = 7,
    OrderNotReady = 8,
    BadCsr = 9,
    RejectedIdentifier = 10,
    UnsupportedIdentifier = 11,
    Compound = 12,
    InvalidContact = 13,
    UnsupportedContact = 14,
    BadRevocationReason = 15,
    AlreadyRevoked = 16,
    AlreadyReplaced = 17,
    InvalidProfile = 18,
    Connection = 19,
    Dns = 20,
    Tls = 21,
    IncorrectResponse = 22,
    BadAttestationStatement = 23,
    ServerInternal = 24,
    /// A type outside SPEC §3.8.
    Other = 25,
    /// A rate limit the client waited out too often in a row (SPEC §7.6).
    RateLimited = 26,
}

/// Details of the last failed call on an enrollment.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IiotErrorInfo {
    pub status: IiotStatus,
    pub problem: IiotProblem,
    /// HTTP status of `IIOT_STATUS_PROBLEM` and `IIOT_STATUS_UNEXPECTED_STATUS`, else 0.
    pub http_status: u16,
    /// Octets needed, for `IIOT_STATUS_BUFFER_TOO_SMALL` (0 when unknown).
    pub needed: usize,
    /// What failed, NUL-terminated ASCII (may be empty).
    pub detail: [c_char; 64],
}

/// What the caller does next.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IiotEventKind {
    /// Call `iiot_next_request` now.
    Continue = 0,
    /// Wait `seconds`, then call `iiot_next_request`.
    Wait = 1,
    /// Show `pairing_code` to the person at the device, wait `seconds`, then call
    /// `iiot_next_request` to poll (SPEC §5.8). The code is that of this approval request
    /// (SPEC §5.9): each authorization, and each enrollment, has its own.
    AwaitingApproval = 2,
    /// Done: the PEM chain is `rx[pem_offset .. pem_offset + pem_len]` of the buffer just
    /// passed to `iiot_handle_response`. Persist it before reusing the buffer.
    Issued = 3,
}

/// Filled by `iiot_handle_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IiotEvent {
    pub kind: IiotEventKind,
    pub seconds: u32,
    /// `XXXX-XXXX` and a NUL, the code of the request waiting for approval, for
    /// `IIOT_EVENT_KIND_AWAITING_APPROVAL`; else empty.
    pub pairing_code: [c_char; 10],
    pub pem_offset: usize,
    pub pem_len: usize,
}

impl IiotStatus {
    pub(crate) fn of(e: &Error) -> Self {
        match e {
            Error::BufferTooSmall { .. } => Self::BufferTooSmall,
            Error::Config(_) => Self::Config,
            Error::Truncated => Self::Truncated,
            Error::Http(_) => Self::Http,
            Error::ResponseTooLarge => Self::ResponseTooLarge,
            Error::UnexpectedStatus(_) => Self::UnexpectedStatus,
            Error::WrongContentType => Self::WrongContentType,
            Error::BadJson(_) => Self::BadJson,
            Error::BadUrl => Self::BadUrl,
            Error::Problem { .. } => Self::Problem,
            Error::AuthorizationFailed(_) => Self::AuthorizationFailed,
            Error::OrderFailed(_) => Self::OrderFailed,
            Error::NoUsableChallenge => Self::NoUsableChallenge,
            Error::TooManyAuthorizations => Self::TooManyAuthorizations,
            Error::NonceRetriesExhausted => Self::NonceRetriesExhausted,
            Error::EabRequired => Self::EabRequired,
            Error::Signer => Self::Signer,
            Error::Key => Self::Key,
            Error::UnexpectedCall => Self::UnexpectedCall,
            Error::Transport => Self::Transport,
        }
    }

    /// The constant's name, for logs.
    pub(crate) fn name(code: i32) -> &'static core::ffi::CStr {
        match code {
            0 => c"IIOT_STATUS_OK",
            1 => c"IIOT_STATUS_BUFFER_TOO_SMALL",
            2 => c"IIOT_STATUS_CONFIG",
            3 => c"IIOT_STATUS_TRUNCATED",
            4 => c"IIOT_STATUS_HTTP",
            5 => c"IIOT_STATUS_RESPONSE_TOO_LARGE",
            6 => c"IIOT_STATUS_UNEXPECTED_STATUS",
            7 => c"IIOT_STATUS_WRONG_CONTENT_TYPE",
            8 => c"IIOT_STATUS_BAD_JSON",
            9 => c"IIOT_STATUS_BAD_URL",
            10 => c"IIOT_STATUS_PROBLEM",
            11 => c"IIOT_STATUS_AUTHORIZATION_FAILED",
            12 => c"IIOT_STATUS_ORDER_FAILED",
            13 => c"IIOT_STATUS_NO_USABLE_CHALLENGE",
            14 => c"IIOT_STATUS_TOO_MANY_AUTHORIZATIONS",
            15 => c"IIOT_STATUS_NONCE_RETRIES_EXHAUSTED",
            16 => c"IIOT_STATUS_EAB_REQUIRED",
            17 => c"IIOT_STATUS_SIGNER",
            18 => c"IIOT_STATUS_KEY",
            19 => c"IIOT_STATUS_UNEXPECTED_CALL",
            20 => c"IIOT_STATUS_TRANSPORT",
            100 => c"IIOT_STATUS_NULL_POINTER",
            101 => c"IIOT_STATUS_BAD_UTF8",
            102 => c"IIOT_STATUS_INVALID_ARGUMENT",
            103 => c"IIOT_STATUS_NOT_INITIALIZED",
            _ => c"unknown status",
        }
    }
}

impl IiotProblem {
    pub(crate) fn of(e: &Error) -> Self {
        match *e {
            Error::Problem { kind, .. }
            | Error::AuthorizationFailed(kind)
            | Error::OrderFailed(kind) => Self::from_kind(kind),
            _ => Self::None,
        }
    }

    fn from_kind(kind: ProblemKind) -> Self {
        match kind {
            ProblemKind::Malformed => Self::Malformed,
            ProblemKind::BadNonce => Self::BadNonce,
            ProblemKind::BadSignatureAlgorithm => Self::BadSignatureAlgorithm,
            ProblemKind::BadPublicKey => Self::BadPublicKey,
            ProblemKind::AccountDoesNotExist => Self::AccountDoesNotExist,
            ProblemKind::Unauthorized => Self::Unauthorized,
            ProblemKind::ExternalAccountRequired => Self::ExternalAccountRequired,
            ProblemKind::OrderNotReady => Self::OrderNotReady,
            ProblemKind::BadCsr => Self::BadCsr,
            ProblemKind::RejectedIdentifier => Self::RejectedIdentifier,
            ProblemKind::UnsupportedIdentifier => Self::UnsupportedIdentifier,
            ProblemKind::Compound => Self::Compound,
            ProblemKind::InvalidContact => Self::InvalidContact,
            ProblemKind::UnsupportedContact => Self::UnsupportedContact,
            ProblemKind::BadRevocationReason => Self::BadRevocationReason,
            ProblemKind::AlreadyRevoked => Self::AlreadyRevoked,
            ProblemKind::AlreadyReplaced => Self::AlreadyReplaced,
            ProblemKind::InvalidProfile => Self::InvalidProfile,
            ProblemKind::Connection => Self::Connection,
            ProblemKind::Dns => Self::Dns,
            ProblemKind::Tls => Self::Tls,
            ProblemKind::IncorrectResponse => Self::IncorrectResponse,
            ProblemKind::BadAttestationStatement => Self::BadAttestationStatement,
            ProblemKind::ServerInternal => Self::ServerInternal,
            ProblemKind::RateLimited => Self::RateLimited,
            ProblemKind::Other => Self::Other,
        }
    }

    /// The problem type's name as in the URN (`urn:ietf:params:acme:error:NAME`).
    pub(crate) fn name(code: i32) -> &'static core::ffi::CStr {
        match code {
            0 => c"none",
            1 => c"malformed",
            2 => c"badNonce",
            3 => c"badSignatureAlgorithm",
            4 => c"badPublicKey",
            5 => c"accountDoesNotExist",
            6 => c"unauthorized",
            7 => c"externalAccountRequired",
            8 => c"orderNotReady",
            9 => c"badCSR",
            10 => c"rejectedIdentifier",
            11 => c"unsupportedIdentifier",
            12 => c"compound",
            13 => c"invalidContact",
            14 => c"unsupportedContact",
            15 => c"badRevocationReason",
            16 => c"alreadyRevoked",
            17 => c"alreadyReplaced",
            18 => c"invalidProfile",
            19 => c"connection",
            20 => c"dns",
            21 => c"tls",
            22 => c"incorrectResponse",
            23 => c"badAttestationStatement",
            24 => c"serverInternal",
            26 => c"rateLimited",
            _ => c"other",
        }
    }
}

impl IiotErrorInfo {
    pub(crate) const fn new(status: IiotStatus) -> Self {
        Self {
            status,
            problem: IiotProblem::None,
            http_status: 0,
            needed: 0,
            detail: [0; 64],
        }
    }

    pub(crate) fn of(e: &Error) -> Self {
        let mut info = Self::new(IiotStatus::of(e));
        info.problem = IiotProblem::of(e);
        match *e {
            Error::BufferTooSmall { needed } => info.needed = needed,
            Error::Problem { status, .. } | Error::UnexpectedStatus(status) => {
                info.http_status = status;
            }
            Error::Config(what) | Error::Http(what) | Error::BadJson(what) => {
                info.set_detail(what);
            }
            _ => {}
        }
        info
    }

    /// Copies `text` (ASCII: the client's details are) truncated to fit, NUL-terminated.
    pub(crate) fn set_detail(&mut self, text: &str) {
        let room = self.detail.len() - 1;
        for (d, &b) in self
            .detail
            .iter_mut()
            .zip(text.as_bytes().iter().take(room))
        {
            *d = b as c_char;
        }
        let end = text.len().min(room);
        self.detail[end] = 0;
    }
}
