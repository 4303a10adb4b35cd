//! C ABI of the iiot-acme embedded client, for C firmware (Zephyr, FreeRTOS, bare metal).
//!
//! The header is `include/iiot_acme.h`, generated from this crate by cbindgen (the test
//! `c_header_is_current` in the `tests` crate fails when it is stale). The library is a no_std
//! staticlib with its own panic handler and no allocator, so it needs nothing from the C side
//! but `memcpy`/`memset`-class symbols the compiler emits anyway:
//!
//! ```sh
//! cargo rustc -p iiot-acme-embedded-capi --profile capi --crate-type staticlib --features panic-handler
//! cc app.c -Iembedded-client/capi/include target/capi/libiiot_acme_embedded_capi.a
//! ```
//!
//! The flow, in C: generate and persist two keys with `iiot_key_generate`; fill an
//! `IiotConfig`; `iiot_enrollment_init` a caller-allocated `IiotEnrollment`; then loop
//! `iiot_next_request` → send over TLS → read until `iiot_response_complete` → pass the response
//! to `iiot_handle_response`, acting on the `IiotEvent` until `IIOT_EVENT_KIND_ISSUED`.
//! Every call returns an `IiotStatus`; `iiot_last_error` adds the problem type and detail.
//!
//! Nothing from C is trusted to be well formed: a null pointer, a string that is not UTF-8, an
//! enum value out of range or overlapping buffers give an error status, never a panic.
#![no_std]

#[cfg(test)]
extern crate std;

// The extern "C" functions take raw pointers from C: dereferencing them needs `unsafe`, and
// this module is the only place that does (the workspace denies unsafe_code elsewhere).
#[allow(unsafe_code)]
pub mod ffi;
pub mod types;

#[cfg(test)]
#[allow(unsafe_code)] // Calls the extern "C" functions as C would.
mod tests;

/// A panic is a bug in this crate (every input error is a status), so stop where it happened:
/// a trap instruction gives the debugger or the fault handler the spot.
///
/// Only with the `panic-handler` feature, which the staticlib build turns on: in a workspace
/// build, features unify, so crates below this one may link std, which has its own handler.
#[cfg(feature = "panic-handler")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        trap();
    }
}

#[cfg(feature = "panic-handler")]
#[allow(unsafe_code)] // One instruction that only raises an exception.
fn trap() {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    unsafe {
        core::arch::asm!("ud2", options(nomem, nostack))
    };
    #[cfg(any(target_arch = "arm", target_arch = "aarch64"))]
    unsafe {
        core::arch::asm!("udf #0", options(nomem, nostack))
    };
}
