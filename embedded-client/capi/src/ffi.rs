//! The `extern "C"` functions.
//!
//! Safety model: C owns every buffer, so each function checks what it can (null pointers,
//! lengths, overlapping buffers, alignment, UTF-8, enum ranges) and documents what it cannot
//! (that a pointer really addresses `len` octets, that config strings outlive the enrollment).
//!
//! The state is self-referential: the [`Enrollment`] inside it borrows the keys, identifiers and
//! signer stored next to it. It lives in the caller's [`IiotEnrollment`], which must not move
//! after `iiot_enrollment_init`, and it is only ever reached field by field through raw
//! pointers (`addr_of_mut!`): a `&mut` to the whole state would alias the borrows the
//! enrollment holds.

use core::ffi::{c_char, c_void, CStr};
use core::mem::{align_of, size_of};
use core::ptr::{self, addr_of, addr_of_mut};

use embedded_client::http::{self, Framing};
use embedded_client::{
    AccountKey, CertificateKey, Config, DeviceKey, Eab, Enrollment, Error, Event, Identifier,
    IdevidSigner, SignerError, MAX_AUTHORIZATIONS,
};

use crate::types::{
    IiotConfig, IiotEnrollment, IiotErrorInfo, IiotEvent, IiotEventKind, IiotIdevidSigner,
    IiotProblem, IiotRngFn, IiotSignFn, IiotStatus, IIOT_IDENTIFIER_DNS, IIOT_IDENTIFIER_IP,
    IIOT_IDENTIFIER_PERMANENT, IIOT_MAX_CHAIN,
};

/// `State::magic` of an initialised state.
const READY: u64 = 0x4949_4f54_5245_4144; // "IIOTREAD"
/// `State::magic` after a failed init: only `last_error` is valid.
const FAILED: u64 = 0x4949_4f54_4641_494c; // "IIOTFAIL"

struct State {
    magic: u64,
    last_error: IiotErrorInfo,
    account: AccountKey,
    cert_key: CertificateKey,
    signer: CSigner,
    identifiers: [Identifier<'static>; MAX_AUTHORIZATIONS],
    enrollment: Enrollment<'static>,
}

// The header's opaque block must hold the state on every target this is built for.
const _: () = assert!(size_of::<State>() <= size_of::<IiotEnrollment>());
const _: () = assert!(align_of::<State>() <= align_of::<IiotEnrollment>());

/// The C signer behind [`IdevidSigner`], with the chain's pointers copied in.
#[derive(Clone, Copy)]
struct CSigner {
    alg: i32,
    chain: [(*const u8, usize); IIOT_MAX_CHAIN],
    count: usize,
    sign: IiotSignFn,
    ctx: *mut c_void,
}

impl IdevidSigner for CSigner {
    fn cose_alg(&self) -> i32 {
        self.alg
    }

    fn certificate(&self, index: usize) -> Option<&[u8]> {
        let &(p, len) = self.chain.get(..self.count)?.get(index)?;
        // SAFETY: checked non-null with a length below isize::MAX at init; the caller keeps
        // the certificates valid until iiot_enrollment_clear (documented on IiotIdevidSigner).
        Some(unsafe { core::slice::from_raw_parts(p, len) })
    }

    fn sign(&mut self, message: &[u8], out: &mut [u8]) -> Result<usize, SignerError> {
        let sign = self.sign.ok_or(SignerError::Device)?;
        let mut len = 0usize;
        // SAFETY: the callback gets valid pointers with their lengths, as its contract says.
        let rc = unsafe {
            sign(
                self.ctx,
                message.as_ptr(),
                message.len(),
                out.as_mut_ptr(),
                out.len(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(SignerError::Device);
        }
        if len > out.len() {
            return Err(SignerError::BufferTooSmall);
        }
        Ok(len)
    }
}

impl CSigner {
    const NONE: Self = Self {
        alg: 0,
        chain: [(ptr::null(), 0); IIOT_MAX_CHAIN],
        count: 0,
        sign: None,
        ctx: ptr::null_mut(),
    };

    /// # Safety
    /// `s.chain` and `s.chain_lens` address `s.chain_count` elements when not null.
    unsafe fn from_c(s: &IiotIdevidSigner) -> Result<Self, IiotStatus> {
        if s.sign.is_none() || s.chain.is_null() || s.chain_lens.is_null() {
            return Err(IiotStatus::NullPointer);
        }
        if s.chain_count == 0 || s.chain_count > IIOT_MAX_CHAIN {
            return Err(IiotStatus::InvalidArgument);
        }
        let mut out = Self {
            alg: s.cose_alg,
            count: s.chain_count,
            sign: s.sign,
            ctx: s.ctx,
            ..Self::NONE
        };
        for (i, slot) in out.chain.iter_mut().take(s.chain_count).enumerate() {
            let (p, len) = (*s.chain.add(i), *s.chain_lens.add(i));
            if p.is_null() {
                return Err(IiotStatus::NullPointer);
            }
            if len > isize::MAX as usize {
                return Err(IiotStatus::InvalidArgument);
            }
            *slot = (p, len);
        }
        Ok(out)
    }
}

/// A NUL-terminated UTF-8 string from C, or `None` for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that stays valid as long as the result is used (the
/// `'static` is the caller's promise, documented on `IiotConfig`).
unsafe fn c_str(p: *const c_char) -> Result<Option<&'static str>, IiotStatus> {
    if p.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(p)
        .to_str()
        .map(Some)
        .map_err(|_| IiotStatus::BadUtf8)
}

/// # Safety
/// See [`c_str`].
unsafe fn required_str(p: *const c_char) -> Result<&'static str, IiotStatus> {
    c_str(p)?.ok_or(IiotStatus::NullPointer)
}

/// `len` octets at `p` as a slice; NULL is only accepted for an empty one.
///
/// # Safety
/// `p` addresses `len` writable octets that nothing else references during `'a`.
unsafe fn buf_mut<'a>(p: *mut u8, len: usize) -> Result<&'a mut [u8], IiotStatus> {
    if p.is_null() {
        return if len == 0 {
            Ok(&mut [])
        } else {
            Err(IiotStatus::NullPointer)
        };
    }
    if len > isize::MAX as usize {
        return Err(IiotStatus::InvalidArgument);
    }
    Ok(core::slice::from_raw_parts_mut(p, len))
}

fn overlaps(a: *const u8, a_len: usize, b: *const u8, b_len: usize) -> bool {
    let (a, b) = (a as usize, b as usize);
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// The state behind `e` if it was initialised.
fn state(e: *mut IiotEnrollment) -> Result<*mut State, IiotStatus> {
    if e.is_null() {
        return Err(IiotStatus::NullPointer);
    }
    let p = e.cast::<State>();
    if !p.is_aligned() {
        return Err(IiotStatus::InvalidArgument);
    }
    // SAFETY: non-null and aligned; a caller-allocated IiotEnrollment is at least as large as
    // State (asserted above), and `magic` is the first field written by init.
    if unsafe { addr_of!((*p).magic).read() } == READY {
        Ok(p)
    } else {
        Err(IiotStatus::NotInitialized)
    }
}

/// Records the outcome of a call on an initialised state and returns its status.
///
/// # Safety
/// `p` comes from [`state`].
unsafe fn finish(p: *mut State, result: Result<(), Error>) -> IiotStatus {
    match result {
        Ok(()) => IiotStatus::Ok,
        Err(e) => {
            let info = IiotErrorInfo::of(&e);
            addr_of_mut!((*p).last_error).write(info);
            info.status
        }
    }
}

/// Records a C API misuse on an initialised state.
///
/// # Safety
/// `p` comes from [`state`].
unsafe fn misuse(p: *mut State, status: IiotStatus, what: &str) -> IiotStatus {
    let mut info = IiotErrorInfo::new(status);
    info.set_detail(what);
    addr_of_mut!((*p).last_error).write(info);
    status
}

/// Size of `IiotEnrollment` as this library was built; compare with `sizeof(IiotEnrollment)`
/// to catch a header from another version.
#[no_mangle]
pub extern "C" fn iiot_enrollment_size() -> usize {
    size_of::<IiotEnrollment>()
}

/// Generates a P-256 private key from `rng` into `out` (32 octets, big-endian scalar). Persist
/// it in the device's protected storage; it never needs to leave the device.
///
/// # Safety
/// `out` is NULL or addresses 32 writable octets; `rng` behaves as `IiotRngFn` says.
#[no_mangle]
pub unsafe extern "C" fn iiot_key_generate(
    rng: IiotRngFn,
    ctx: *mut c_void,
    out: *mut u8,
) -> IiotStatus {
    let Some(rng) = rng else {
        return IiotStatus::NullPointer;
    };
    if out.is_null() {
        return IiotStatus::NullPointer;
    }
    // Rejection sampling, as p256's own `SigningKey::random`: a random 256-bit string is not a
    // valid scalar with probability about 2^-32, so a second draw almost never happens and a
    // failing RNG cannot loop forever.
    let mut secret = [0u8; 32];
    let mut status = IiotStatus::Key;
    for _ in 0..8 {
        if rng(ctx, secret.as_mut_ptr(), secret.len()) != 0 {
            break;
        }
        if DeviceKey::from_bytes(&secret).is_ok() {
            ptr::copy_nonoverlapping(secret.as_ptr(), out, secret.len());
            status = IiotStatus::Ok;
            break;
        }
    }
    // Not left on the stack.
    ptr::write_volatile(&mut secret, [0; 32]);
    status
}

/// Prepares an enrollment in the caller's `e`. `account_key` and `certificate_key` are 32-octet
/// keys from `iiot_key_generate` (they must differ). `signer` is NULL, or the IDevID for
/// device-attest-01. On failure `iiot_last_error` on `e` tells why.
///
/// # Safety
/// `e` addresses a writable `IiotEnrollment` that does not move until `iiot_enrollment_clear`;
/// `config` and `signer` (when not NULL) address valid structs whose strings, identifier array
/// and certificates stay valid until then; the keys address 32 octets each. Re-initialising a
/// live enrollment without `iiot_enrollment_clear` leaves the old keys unwiped.
#[no_mangle]
pub unsafe extern "C" fn iiot_enrollment_init(
    e: *mut IiotEnrollment,
    config: *const IiotConfig,
    account_key: *const u8,
    certificate_key: *const u8,
    signer: *const IiotIdevidSigner,
) -> IiotStatus {
    if e.is_null() {
        return IiotStatus::NullPointer;
    }
    let p = e.cast::<State>();
    if !p.is_aligned() {
        return IiotStatus::InvalidArgument;
    }
    addr_of_mut!((*p).magic).write(FAILED);
    addr_of_mut!((*p).last_error).write(IiotErrorInfo::new(IiotStatus::Ok));
    match init(p, config, account_key, certificate_key, signer) {
        Ok(()) => {
            addr_of_mut!((*p).magic).write(READY);
            IiotStatus::Ok
        }
        Err(Ok(status)) => {
            addr_of_mut!((*p).last_error).write(IiotErrorInfo::new(status));
            status
        }
        Err(Err(e)) => {
            addr_of_mut!((*p).last_error).write(IiotErrorInfo::of(&e));
            IiotStatus::of(&e)
        }
    }
}

/// The fallible part of init: `Err(Ok(status))` for C API misuse, `Err(Err(error))` for what
/// the client refused.
///
/// # Safety
/// As [`iiot_enrollment_init`]; `p` is aligned and writable.
unsafe fn init(
    p: *mut State,
    config: *const IiotConfig,
    account_key: *const u8,
    certificate_key: *const u8,
    signer: *const IiotIdevidSigner,
) -> Result<(), Result<IiotStatus, Error>> {
    if config.is_null() || account_key.is_null() || certificate_key.is_null() {
        return Err(Ok(IiotStatus::NullPointer));
    }
    let c = &*config;
    let base_url = required_str(c.base_url).map_err(Ok)?;
    let eab = match c_str(c.eab_kid).map_err(Ok)? {
        Some(kid) => Some(Eab {
            kid,
            hmac_key: required_str(c.eab_hmac_key).map_err(Ok)?,
        }),
        None => None,
    };
    let profile = c_str(c.profile).map_err(Ok)?;
    let replaces = c_str(c.replaces).map_err(Ok)?;

    if c.identifier_count > MAX_AUTHORIZATIONS {
        return Err(Err(Error::Config("1 to 4 identifiers")));
    }
    if c.identifiers.is_null() && c.identifier_count > 0 {
        return Err(Ok(IiotStatus::NullPointer));
    }
    let mut identifiers = [Identifier::Dns(""); MAX_AUTHORIZATIONS];
    for (i, slot) in identifiers.iter_mut().take(c.identifier_count).enumerate() {
        let id = *c.identifiers.add(i);
        let value = required_str(id.value).map_err(Ok)?;
        *slot = match id.r#type {
            IIOT_IDENTIFIER_DNS => Identifier::Dns(value),
            IIOT_IDENTIFIER_IP => Identifier::Ip(value),
            IIOT_IDENTIFIER_PERMANENT => Identifier::Permanent(value),
            _ => return Err(Ok(IiotStatus::InvalidArgument)),
        };
    }
    let c_signer = match signer.as_ref() {
        Some(s) => Some(CSigner::from_c(s).map_err(Ok)?),
        None => None,
    };

    let key = |k: *const u8| DeviceKey::from_bytes(&*k.cast::<[u8; 32]>()).map_err(Err);
    let account = AccountKey::new(key(account_key)?);
    let cert_key = key(certificate_key)?;

    addr_of_mut!((*p).account).write(account);
    addr_of_mut!((*p).cert_key).write(cert_key);
    addr_of_mut!((*p).signer).write(c_signer.unwrap_or(CSigner::NONE));
    addr_of_mut!((*p).identifiers).write(identifiers);
    // From here on the fields are only borrowed, never written, until clear.
    let ids: &'static [Identifier<'static>] = &*ptr::slice_from_raw_parts(
        addr_of!((*p).identifiers).cast::<Identifier<'static>>(),
        c.identifier_count,
    );
    let signer: Option<&'static mut dyn IdevidSigner> = match c_signer {
        Some(_) => Some(&mut *addr_of_mut!((*p).signer)),
        None => None,
    };
    let cfg = Config {
        base_url,
        identifiers: ids,
        eab,
        profile,
        replaces,
        terms_of_service_agreed: c.terms_of_service_agreed != 0,
    };
    let enrollment = Enrollment::new(
        cfg,
        &*addr_of!((*p).account),
        &*addr_of!((*p).cert_key),
        signer,
    );
    match enrollment {
        Ok(en) => {
            addr_of_mut!((*p).enrollment).write(en);
            Ok(())
        }
        Err(e) => {
            // The keys were written: wipe them now, the state is not usable.
            ptr::drop_in_place(addr_of_mut!((*p).account));
            ptr::drop_in_place(addr_of_mut!((*p).cert_key));
            Err(Err(e))
        }
    }
}

/// Wipes the keys and the state (after a successful or failed init; a no-op otherwise).
///
/// # Safety
/// `e` is NULL or addresses an `IiotEnrollment`.
#[no_mangle]
pub unsafe extern "C" fn iiot_enrollment_clear(e: *mut IiotEnrollment) {
    if e.is_null() {
        return;
    }
    let p = e.cast::<State>();
    if !p.is_aligned() {
        return;
    }
    if addr_of!((*p).magic).read() == READY {
        // The enrollment goes first: it borrows the keys, which zeroize on drop.
        ptr::drop_in_place(addr_of_mut!((*p).enrollment));
        ptr::drop_in_place(addr_of_mut!((*p).account));
        ptr::drop_in_place(addr_of_mut!((*p).cert_key));
    }
    ptr::write_bytes(e, 0, 1);
}

/// Writes the next request into `tx` (`tx_len` octets, 4096 fit every request) and its length
/// into `*out_len`. `scratch` is working space (the receive buffer can serve: it is free
/// between a response and the next request); it must not overlap `tx`.
///
/// # Safety
/// `e` comes from `iiot_enrollment_init`; `tx` and `scratch` address `tx_len` and
/// `scratch_len` writable octets; `out_len` is writable.
#[no_mangle]
pub unsafe extern "C" fn iiot_next_request(
    e: *mut IiotEnrollment,
    tx: *mut u8,
    tx_len: usize,
    scratch: *mut u8,
    scratch_len: usize,
    out_len: *mut usize,
) -> IiotStatus {
    let p = match state(e) {
        Ok(p) => p,
        Err(s) => return s,
    };
    if tx.is_null() || scratch.is_null() || out_len.is_null() {
        return misuse(p, IiotStatus::NullPointer, "tx, scratch or out_len");
    }
    let state_len = size_of::<IiotEnrollment>();
    if overlaps(tx, tx_len, scratch, scratch_len)
        || overlaps(tx, tx_len, e.cast(), state_len)
        || overlaps(scratch, scratch_len, e.cast(), state_len)
    {
        return misuse(p, IiotStatus::InvalidArgument, "buffers overlap");
    }
    let (tx, scratch) = match (buf_mut(tx, tx_len), buf_mut(scratch, scratch_len)) {
        (Ok(t), Ok(s)) => (t, s),
        (Err(s), _) | (_, Err(s)) => return misuse(p, s, "buffer length"),
    };
    let enrollment = &mut *addr_of_mut!((*p).enrollment);
    let result = enrollment.next_request(tx, scratch).map(|n| {
        out_len.write(n);
    });
    finish(p, result)
}

/// Whether `buf` (the `len` octets read so far) holds a whole response: `*total` is its length,
/// or 0 when more must be read. `eof` nonzero: the server closed the connection (which ends a
/// response without a length). Returns an error status for a malformed or truncated response.
///
/// # Safety
/// `buf` addresses `len` readable octets (may be NULL when `len` is 0); `total` is writable.
#[no_mangle]
pub unsafe extern "C" fn iiot_response_complete(
    buf: *const u8,
    len: usize,
    eof: u8,
    total: *mut usize,
) -> IiotStatus {
    if total.is_null() {
        return IiotStatus::NullPointer;
    }
    let data: &[u8] = if len == 0 {
        &[]
    } else if buf.is_null() {
        return IiotStatus::NullPointer;
    } else if len > isize::MAX as usize {
        return IiotStatus::InvalidArgument;
    } else {
        core::slice::from_raw_parts(buf, len)
    };
    match http::framing(data, eof != 0) {
        Ok(Framing::Complete(n)) => {
            total.write(n);
            IiotStatus::Ok
        }
        Ok(Framing::Partial) => {
            total.write(0);
            IiotStatus::Ok
        }
        Err(e) => IiotStatus::of(&e),
    }
}

/// Reads the complete response (`rx_len` from `iiot_response_complete`) to the last request
/// and fills `*event`. `rx` is modified: a chunked body is decoded in place.
///
/// # Safety
/// `e` comes from `iiot_enrollment_init`; `rx` addresses `rx_len` writable octets; `event` is
/// writable.
#[no_mangle]
pub unsafe extern "C" fn iiot_handle_response(
    e: *mut IiotEnrollment,
    rx: *mut u8,
    rx_len: usize,
    event: *mut IiotEvent,
) -> IiotStatus {
    let p = match state(e) {
        Ok(p) => p,
        Err(s) => return s,
    };
    if event.is_null() {
        return misuse(p, IiotStatus::NullPointer, "event");
    }
    if overlaps(rx, rx_len, e.cast(), size_of::<IiotEnrollment>()) {
        return misuse(p, IiotStatus::InvalidArgument, "buffers overlap");
    }
    let rx = match buf_mut(rx, rx_len) {
        Ok(rx) => rx,
        Err(s) => return misuse(p, s, "rx"),
    };
    let enrollment = &mut *addr_of_mut!((*p).enrollment);
    let result = enrollment.handle_response(rx).map(|ev| {
        let mut out = IiotEvent {
            kind: IiotEventKind::Continue,
            seconds: 0,
            pairing_code: [0; 10],
            pem_offset: 0,
            pem_len: 0,
        };
        match ev {
            Event::Continue => {}
            Event::Wait { seconds } => {
                out.kind = IiotEventKind::Wait;
                out.seconds = seconds;
            }
            Event::AwaitingApproval { code, seconds } => {
                out.kind = IiotEventKind::AwaitingApproval;
                out.seconds = seconds;
                copy_code(code.as_str(), &mut out.pairing_code);
            }
            Event::Issued { pem } => {
                out.kind = IiotEventKind::Issued;
                out.pem_offset = pem.start;
                out.pem_len = pem.len();
            }
        }
        event.write(out);
    });
    finish(p, result)
}

fn copy_code(code: &str, out: &mut [c_char; 10]) {
    for (d, &b) in out.iter_mut().zip(code.as_bytes().iter().take(9)) {
        *d = b as c_char;
    }
}

/// The pairing code (`XXXX-XXXX` and a NUL) of the approval the enrollment is waiting for
/// (SPEC §5.9), as the last `IIOT_EVENT_KIND_AWAITING_APPROVAL` event carried it. The code is
/// fresh for every request, from the account key and the challenge's token, so there is none
/// before the enrollment has chosen an operator-approval-01 challenge: then
/// `IIOT_STATUS_UNEXPECTED_CALL`, and `out` is left as it was.
///
/// # Safety
/// `e` comes from `iiot_enrollment_init`; `out` addresses 10 writable chars.
#[no_mangle]
pub unsafe extern "C" fn iiot_pairing_code(e: *mut IiotEnrollment, out: *mut c_char) -> IiotStatus {
    let p = match state(e) {
        Ok(p) => p,
        Err(s) => return s,
    };
    if out.is_null() {
        return misuse(p, IiotStatus::NullPointer, "out");
    }
    let Some(code) = (*addr_of!((*p).enrollment)).pairing_code() else {
        return misuse(
            p,
            IiotStatus::UnexpectedCall,
            "no approval request yet, so no pairing code",
        );
    };
    let mut text = [0; 10];
    copy_code(code.as_str(), &mut text);
    out.cast::<[c_char; 10]>().write_unaligned(text);
    IiotStatus::Ok
}

/// Details of the last failed call on `e` (also after a failed `iiot_enrollment_init`).
///
/// # Safety
/// `e` is NULL or addresses an `IiotEnrollment`; `info` is writable.
#[no_mangle]
pub unsafe extern "C" fn iiot_last_error(
    e: *const IiotEnrollment,
    info: *mut IiotErrorInfo,
) -> IiotStatus {
    if e.is_null() || info.is_null() {
        return IiotStatus::NullPointer;
    }
    let p = e.cast::<State>();
    if !p.is_aligned() {
        return IiotStatus::InvalidArgument;
    }
    match addr_of!((*p).magic).read() {
        READY | FAILED => {
            info.write(addr_of!((*p).last_error).read());
            IiotStatus::Ok
        }
        _ => IiotStatus::NotInitialized,
    }
}

/// The name of an `IiotStatus` value (`"IIOT_STATUS_PROBLEM"`), static and NUL-terminated.
#[no_mangle]
pub extern "C" fn iiot_status_str(status: i32) -> *const c_char {
    IiotStatus::name(status).as_ptr()
}

/// The ACME name of an `IiotProblem` value (`"unauthorized"`), static and NUL-terminated.
#[no_mangle]
pub extern "C" fn iiot_problem_str(problem: i32) -> *const c_char {
    IiotProblem::name(problem).as_ptr()
}
