//! The C API's own checks: what C can get wrong gives a status, never UB or a panic. The whole
//! flow is tested from C against the real CA (tests/tests/embedded_capi.rs).

use core::ffi::{c_char, c_void};
use core::ptr;
use std::boxed::Box;
use std::ffi::CStr;

use crate::ffi::*;
use crate::types::*;

const BASE: &CStr = c"https://127.0.0.1:14000";
const NAME: &CStr = c"plc-1.line-9.plant.test";

fn block() -> Box<IiotEnrollment> {
    Box::new(IiotEnrollment {
        opaque: [0; IIOT_ENROLLMENT_WORDS],
    })
}

fn config(ids: &[IiotIdentifier]) -> IiotConfig {
    IiotConfig {
        base_url: BASE.as_ptr(),
        identifiers: ids.as_ptr(),
        identifier_count: ids.len(),
        eab_kid: ptr::null(),
        eab_hmac_key: ptr::null(),
        profile: ptr::null(),
        replaces: ptr::null(),
        terms_of_service_agreed: 0,
    }
}

fn dns(name: &CStr) -> IiotIdentifier {
    IiotIdentifier {
        r#type: IIOT_IDENTIFIER_DNS,
        value: name.as_ptr(),
    }
}

unsafe extern "C" fn counting_rng(ctx: *mut c_void, buf: *mut u8, len: usize) -> i32 {
    let n = &mut *ctx.cast::<u8>();
    *n += 1;
    ptr::write_bytes(buf, *n, len);
    0
}

unsafe extern "C" fn failing_rng(_: *mut c_void, _: *mut u8, _: usize) -> i32 {
    -1
}

fn keys() -> ([u8; 32], [u8; 32]) {
    let mut n = 0u8;
    let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
    let ctx = ptr::addr_of_mut!(n).cast();
    unsafe {
        assert_eq!(
            iiot_key_generate(Some(counting_rng), ctx, a.as_mut_ptr()),
            IiotStatus::Ok
        );
        assert_eq!(
            iiot_key_generate(Some(counting_rng), ctx, b.as_mut_ptr()),
            IiotStatus::Ok
        );
    }
    assert_ne!(a, b);
    (a, b)
}

fn last_error(e: &IiotEnrollment) -> IiotErrorInfo {
    let mut info = IiotErrorInfo::new(IiotStatus::Ok);
    assert_eq!(unsafe { iiot_last_error(e, &mut info) }, IiotStatus::Ok);
    info
}

fn detail(info: &IiotErrorInfo) -> &str {
    unsafe { CStr::from_ptr(info.detail.as_ptr()) }
        .to_str()
        .expect("ascii")
}

#[test]
fn key_generation_reports_a_failing_rng_and_null_pointers() {
    let mut out = [0u8; 32];
    unsafe {
        assert_eq!(
            iiot_key_generate(Some(failing_rng), ptr::null_mut(), out.as_mut_ptr()),
            IiotStatus::Key
        );
        assert_eq!(
            iiot_key_generate(None, ptr::null_mut(), out.as_mut_ptr()),
            IiotStatus::NullPointer
        );
        assert_eq!(
            iiot_key_generate(Some(failing_rng), ptr::null_mut(), ptr::null_mut()),
            IiotStatus::NullPointer
        );
    }
}

#[test]
fn init_checks_what_c_passes() {
    let (a, b) = keys();
    let ids = [dns(NAME)];
    let mut e = block();
    unsafe {
        let cfg = config(&ids);
        assert_eq!(
            iiot_enrollment_init(ptr::null_mut(), &cfg, a.as_ptr(), b.as_ptr(), ptr::null()),
            IiotStatus::NullPointer
        );
        for (cfg_ptr, ak, ck) in [
            (ptr::null(), a.as_ptr(), b.as_ptr()),
            (&raw const cfg, ptr::null(), b.as_ptr()),
            (&raw const cfg, a.as_ptr(), ptr::null()),
        ] {
            assert_eq!(
                iiot_enrollment_init(&mut *e, cfg_ptr, ak, ck, ptr::null()),
                IiotStatus::NullPointer
            );
            assert_eq!(last_error(&e).status, IiotStatus::NullPointer);
        }

        let mut bad = config(&ids);
        bad.base_url = ptr::null();
        assert_eq!(
            iiot_enrollment_init(&mut *e, &bad, a.as_ptr(), b.as_ptr(), ptr::null()),
            IiotStatus::NullPointer
        );
        let not_utf8 = [b'h', 0xff, 0xfe, 0];
        bad.base_url = not_utf8.as_ptr().cast();
        assert_eq!(
            iiot_enrollment_init(&mut *e, &bad, a.as_ptr(), b.as_ptr(), ptr::null()),
            IiotStatus::BadUtf8
        );

        let mut eab = config(&ids);
        eab.eab_kid = c"kid-1".as_ptr();
        assert_eq!(
            iiot_enrollment_init(&mut *e, &eab, a.as_ptr(), b.as_ptr(), ptr::null()),
            IiotStatus::NullPointer,
            "an EAB kid without its HMAC key"
        );

        let odd = [IiotIdentifier {
            r#type: 7,
            value: NAME.as_ptr(),
        }];
        assert_eq!(
            iiot_enrollment_init(&mut *e, &config(&odd), a.as_ptr(), b.as_ptr(), ptr::null()),
            IiotStatus::InvalidArgument
        );
        let mut no_ids = config(&ids);
        no_ids.identifiers = ptr::null();
        assert_eq!(
            iiot_enrollment_init(&mut *e, &no_ids, a.as_ptr(), b.as_ptr(), ptr::null()),
            IiotStatus::NullPointer
        );
        let five = [dns(NAME); 5];
        assert_eq!(
            iiot_enrollment_init(&mut *e, &config(&five), a.as_ptr(), b.as_ptr(), ptr::null()),
            IiotStatus::Config
        );

        // What the client itself refuses comes with its detail.
        let upper = [dns(c"PLC-1.plant.test")];
        assert_eq!(
            iiot_enrollment_init(
                &mut *e,
                &config(&upper),
                a.as_ptr(),
                b.as_ptr(),
                ptr::null()
            ),
            IiotStatus::Config
        );
        assert_eq!(detail(&last_error(&e)), "dns identifier not in normal form");
        assert_eq!(
            iiot_enrollment_init(&mut *e, &cfg, a.as_ptr(), a.as_ptr(), ptr::null()),
            IiotStatus::Config
        );
        let zero = [0u8; 32];
        assert_eq!(
            iiot_enrollment_init(&mut *e, &cfg, zero.as_ptr(), b.as_ptr(), ptr::null()),
            IiotStatus::Key
        );

        // A failed init leaves nothing to drive.
        let mut tx = [0u8; 64];
        let mut scratch = [0u8; 64];
        let mut n = 0;
        assert_eq!(
            iiot_next_request(
                &mut *e,
                tx.as_mut_ptr(),
                64,
                scratch.as_mut_ptr(),
                64,
                &mut n
            ),
            IiotStatus::NotInitialized
        );
        iiot_enrollment_clear(&mut *e);
    }
}

#[test]
fn signer_is_checked() {
    let (a, b) = keys();
    let ids = [IiotIdentifier {
        r#type: IIOT_IDENTIFIER_PERMANENT,
        value: c"SN-0001".as_ptr(),
    }];
    let cert = [0x30u8, 0];
    let chain = [cert.as_ptr()];
    let lens = [cert.len()];
    let mut signer = IiotIdevidSigner {
        cose_alg: -7,
        chain: chain.as_ptr(),
        chain_lens: lens.as_ptr(),
        chain_count: 1,
        sign: None,
        ctx: ptr::null_mut(),
    };
    let mut e = block();
    unsafe {
        let cfg = config(&ids);
        assert_eq!(
            iiot_enrollment_init(&mut *e, &cfg, a.as_ptr(), b.as_ptr(), &signer),
            IiotStatus::NullPointer
        );
        unsafe extern "C" fn sign(
            _: *mut c_void,
            _: *const u8,
            _: usize,
            _: *mut u8,
            _: usize,
            _: *mut usize,
        ) -> i32 {
            -1
        }
        signer.sign = Some(sign);
        signer.chain_count = 6;
        assert_eq!(
            iiot_enrollment_init(&mut *e, &cfg, a.as_ptr(), b.as_ptr(), &signer),
            IiotStatus::InvalidArgument
        );
        signer.chain_count = 1;
        assert_eq!(
            iiot_enrollment_init(&mut *e, &cfg, a.as_ptr(), b.as_ptr(), &signer),
            IiotStatus::Ok
        );
        iiot_enrollment_clear(&mut *e);
    }
}

#[test]
fn requests_and_responses_refuse_bad_buffers() {
    let (a, b) = keys();
    let ids = [dns(NAME)];
    let mut e = block();
    unsafe {
        assert_eq!(
            iiot_enrollment_init(&mut *e, &config(&ids), a.as_ptr(), b.as_ptr(), ptr::null()),
            IiotStatus::Ok
        );
        // The code belongs to an approval request, and there is none before the enrollment
        // has chosen an operator-approval-01 challenge (SPEC §5.9).
        let mut code = [b'x' as c_char; 10];
        assert_eq!(
            iiot_pairing_code(&mut *e, code.as_mut_ptr()),
            IiotStatus::UnexpectedCall
        );
        assert_eq!(code, [b'x' as c_char; 10], "out is left as it was");
        assert_eq!(last_error(&e).status, IiotStatus::UnexpectedCall);
        assert!(detail(&last_error(&e)).contains("pairing code"));
        assert_eq!(
            iiot_pairing_code(&mut *e, ptr::null_mut()),
            IiotStatus::NullPointer
        );

        let mut tx = [0u8; 4096];
        let mut n = 0;
        let t = tx.as_mut_ptr();
        assert_eq!(
            iiot_next_request(&mut *e, t, 4096, t.add(100), 100, &mut n),
            IiotStatus::InvalidArgument,
            "scratch inside tx"
        );
        assert_eq!(last_error(&e).status, IiotStatus::InvalidArgument);
        assert_eq!(
            iiot_next_request(&mut *e, ptr::null_mut(), 0, t, 4096, &mut n),
            IiotStatus::NullPointer
        );
        let mut scratch = [0u8; 4096];
        assert_eq!(
            iiot_next_request(&mut *e, t, 10, scratch.as_mut_ptr(), 4096, &mut n),
            IiotStatus::BufferTooSmall
        );
        assert_eq!(
            iiot_next_request(&mut *e, t, 4096, scratch.as_mut_ptr(), 4096, &mut n),
            IiotStatus::Ok
        );
        assert!(tx[..n].starts_with(b"GET /directory HTTP/1.1\r\n"));

        let mut ev = IiotEvent {
            kind: IiotEventKind::Wait,
            seconds: 9,
            pairing_code: [0; 10],
            pem_offset: 0,
            pem_len: 0,
        };
        assert_eq!(
            iiot_handle_response(&mut *e, ptr::null_mut(), 0, &mut ev),
            IiotStatus::Truncated
        );
        let mut rx = *b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            iiot_handle_response(&mut *e, rx.as_mut_ptr(), rx.len(), ptr::null_mut()),
            IiotStatus::NullPointer
        );
        assert_eq!(
            iiot_handle_response(&mut *e, rx.as_mut_ptr(), rx.len(), &mut ev),
            IiotStatus::UnexpectedStatus
        );
        assert_eq!(last_error(&e).http_status, 500);
        iiot_enrollment_clear(&mut *e);
        assert_eq!(
            iiot_handle_response(&mut *e, rx.as_mut_ptr(), rx.len(), &mut ev),
            IiotStatus::NotInitialized
        );
        let mut info = IiotErrorInfo::new(IiotStatus::Ok);
        assert_eq!(iiot_last_error(&*e, &mut info), IiotStatus::NotInitialized);
    }
}

#[test]
fn framing_reports_partial_complete_and_truncated() {
    let resp = b"HTTP/1.1 204 No Content\r\nReplay-Nonce: abc\r\n\r\nextra";
    let mut total = 99;
    unsafe {
        assert_eq!(
            iiot_response_complete(resp.as_ptr(), 10, 0, &mut total),
            IiotStatus::Ok
        );
        assert_eq!(total, 0);
        assert_eq!(
            iiot_response_complete(resp.as_ptr(), resp.len(), 0, &mut total),
            IiotStatus::Ok
        );
        assert_eq!(total, resp.len() - "extra".len());
        assert_eq!(
            iiot_response_complete(resp.as_ptr(), 10, 1, &mut total),
            IiotStatus::Truncated
        );
        assert_eq!(
            iiot_response_complete(ptr::null(), 0, 0, &mut total),
            IiotStatus::Ok
        );
        assert_eq!(
            iiot_response_complete(ptr::null(), 5, 0, &mut total),
            IiotStatus::NullPointer
        );
        assert_eq!(
            iiot_response_complete(resp.as_ptr(), 5, 0, ptr::null_mut()),
            IiotStatus::NullPointer
        );
    }
}

#[test]
fn names_cover_every_value() {
    let name = |p: *const c_char| unsafe { CStr::from_ptr(p) }.to_str().expect("ascii");
    assert_eq!(
        name(iiot_status_str(IiotStatus::Problem as i32)),
        "IIOT_STATUS_PROBLEM"
    );
    assert_eq!(name(iiot_status_str(-5)), "unknown status");
    assert_eq!(
        name(iiot_problem_str(IiotProblem::Unauthorized as i32)),
        "unauthorized"
    );
    assert_eq!(name(iiot_problem_str(1000)), "other");
    assert_eq!(iiot_enrollment_size(), IIOT_ENROLLMENT_WORDS * 8);
}

/// The C names of the problem codes are the profile's names of the types (SPEC §3.8); a type
/// the client has no kind for is `IIOT_PROBLEM_OTHER`.
#[test]
fn problem_names_are_the_profiles() {
    let name = |p: *const c_char| unsafe { CStr::from_ptr(p) }.to_str().expect("ascii");
    for &t in protocol_spec::problem::Type::ALL {
        let kind = embedded_client::ProblemKind::from(t);
        let code = IiotProblem::of(&embedded_client::Error::Problem { kind, status: 400 });
        let want = match code {
            IiotProblem::Other => "other",
            _ => t.name(),
        };
        assert_eq!(name(iiot_problem_str(code as i32)), want, "{t:?}");
    }
}
