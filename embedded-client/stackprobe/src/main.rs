//! Stack high-water mark of one complete enrollment with the embedded client, on an emulated
//! Cortex-M4 (`qemu-system-arm -M mps2-an386`, run by `scripts/embedded-stack.sh`).
//!
//! It paints the free RAM between .bss and the stack pointer, runs `driver::enroll` against a
//! canned server transcript (`transcript.rs`: EAB, a badNonce retry, device-attest-01 with a
//! 1.1 kB IDevID chain, Retry-After polling, a CSR with its signature, a chunked download),
//! then finds the lowest word the stack overwrote and prints over semihosting. The client
//! checks the responses only as a client can (syntax, status, URLs on the origin), so a
//! replayed transcript takes it down the same code paths as a live CA.
#![no_std]
#![no_main]

mod transcript;

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use embedded_client::attest::SoftwareIdevid;
use embedded_client::driver::{self, Platform, RX_BUFFER, TX_BUFFER};
use embedded_client::{
    AccountKey, Config, DeviceKey, Eab, Enrollment, Error, Identifier, PairingCode,
};
use embedded_io::{ErrorKind, ErrorType, Read, Write};

struct Static<T>(UnsafeCell<T>);

// SAFETY: single core, and `Reset` takes each one exactly once.
unsafe impl<T> Sync for Static<T> {}
static TX: Static<[u8; TX_BUFFER]> = Static(UnsafeCell::new([0; TX_BUFFER]));
static RX: Static<[u8; RX_BUFFER]> = Static(UnsafeCell::new([0; RX_BUFFER]));

/// The transcript entry the next request gets (a reconnect must not restart it).
static NEXT: AtomicUsize = AtomicUsize::new(0);
static REQUESTS: AtomicUsize = AtomicUsize::new(0);

struct Connection {
    response: &'static [u8],
}

impl ErrorType for Connection {
    type Error = ErrorKind;
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        self.response = transcript::RESPONSES.get(i).copied().unwrap_or(b"");
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        // Short reads, as a TLS stack gives them.
        let n = self.response.len().min(buf.len()).min(300);
        buf[..n].copy_from_slice(&self.response[..n]);
        self.response = &self.response[n..];
        Ok(n)
    }
}

struct Board;

impl Platform for Board {
    type Connection = Connection;
    fn connect(&mut self) -> Result<Connection, Error> {
        Ok(Connection { response: b"" })
    }
    fn sleep(&mut self, _seconds: u32) -> Result<(), Error> {
        Ok(())
    }
    fn show_pairing_code(&mut self, code: &PairingCode) {
        print(code.as_str().as_bytes());
    }
}

/// xorshift32: a stand-in for the TRNG (keys only need to be valid scalars here).
struct Trng(u32);

impl rand_core::RngCore for Trng {
    fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_u32(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core::impls::fill_bytes_via_next(self, dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl rand_core::CryptoRng for Trng {}

static CHAIN_0: [u8; 600] = [0x30; 600];
static CHAIN_1: [u8; 500] = [0x31; 500];

#[inline(never)]
fn enroll(tx: &mut [u8], rx: &mut [u8]) -> Result<usize, Error> {
    let mut rng = Trng(0x1234_5678);
    let account = AccountKey::new(DeviceKey::generate(&mut rng));
    let cert_key = DeviceKey::generate(&mut rng);
    let idevid_key = DeviceKey::from_bytes(&[7; 32])?;
    let chain: [&[u8]; 2] = [&CHAIN_0, &CHAIN_1];
    let mut idevid = SoftwareIdevid::new(idevid_key, &chain);
    let identifiers = [Identifier::Permanent("SN-0042/1.3.6.1.4.1.32473")];
    let cfg = Config {
        base_url: "https://ca.test",
        identifiers: &identifiers,
        eab: Some(Eab {
            kid: "kid-1",
            hmac_key: "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA",
        }),
        profile: None,
        replaces: None,
        terms_of_service_agreed: true,
    };
    let mut enrollment = Enrollment::new(cfg, &account, &cert_key, Some(&mut idevid))?;
    let pem = driver::enroll(&mut Board, &mut enrollment, tx, rx)?;
    Ok(pem.len())
}

/// ARM semihosting call (`bkpt 0xab` on M-profile); QEMU implements it with
/// `-semihosting-config enable=on`.
fn semihost(op: u32, arg: usize) -> u32 {
    let r: u32;
    // SAFETY: a breakpoint the emulator handles; it reads `arg` as the operation defines.
    unsafe {
        core::arch::asm!("bkpt #0xab", inout("r0") op => r, in("r1") arg, options(nostack));
    }
    r
}

fn print(s: &[u8]) {
    let mut buf = [0u8; 128];
    let n = s.len().min(127);
    buf[..n].copy_from_slice(&s[..n]);
    semihost(0x04, buf.as_ptr() as usize);
}

fn print_num(label: &[u8], mut v: usize) {
    let mut buf = [0u8; 64];
    let n = label.len().min(40);
    buf[..n].copy_from_slice(&label[..n]);
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let d = &digits[i..];
    buf[n..n + d.len()].copy_from_slice(d);
    buf[n + d.len()] = b'\n';
    semihost(0x04, buf.as_ptr() as usize);
}

const PAINT: u32 = 0xa5a5_a5a5;

/// # Safety
/// The reset handler, called once through the vector table.
#[no_mangle]
pub unsafe extern "C" fn Reset() -> ! {
    extern "C" {
        static mut _sbss: u32;
        static mut _ebss: u32;
        static mut _sdata: u32;
        static _edata: u32;
        static _sidata: u32;
        static _stack_start: u32;
    }
    // CPACR: full access to the FPU, which hard-float code may use.
    (0xE000_ED88 as *mut u32)
        .write_volatile((0xE000_ED88 as *const u32).read_volatile() | (0xF << 20));
    let mut p = &raw mut _sbss;
    while p < &raw mut _ebss {
        p.write_volatile(0);
        p = p.add(1);
    }
    let (mut d, mut s) = (&raw mut _sdata, &raw const _sidata);
    while d.cast_const() < &raw const _edata {
        d.write_volatile(s.read());
        d = d.add(1);
        s = s.add(1);
    }
    let sp: usize;
    core::arch::asm!("mov {}, sp", out(reg) sp);
    // Paint from the end of .bss up to 64 octets below this frame's stack pointer.
    let mut q = &raw mut _ebss;
    while (q as usize) < sp - 64 {
        q.write_volatile(PAINT);
        q = q.add(1);
    }
    let (tx, rx) = (&mut *TX.0.get(), &mut *RX.0.get());
    let result = enroll(tx, rx);
    // The lowest word the stack reached is the first one above .bss that lost its paint.
    let mut q = &raw const _ebss;
    while q.read_volatile() == PAINT {
        q = q.add(1);
    }
    let top = &raw const _stack_start as usize;
    match result {
        Ok(pem) => print_num(b"enrolled; PEM octets: ", pem),
        Err(_) => print(b"enrollment FAILED\n\0"),
    }
    print_num(b"requests: ", REQUESTS.load(Ordering::Relaxed));
    print_num(b"stack high-water: ", top - q as usize);
    print_num(b"stack room painted: ", top - &raw const _ebss as usize);
    print_num(
        b".bss: ",
        &raw const _ebss as usize - &raw const _sbss as usize,
    );
    // The state the caller keeps for the whole enrollment (in the stack figure above).
    print_num(b"size_of Enrollment: ", core::mem::size_of::<Enrollment>());
    print_num(b"size_of AccountKey: ", core::mem::size_of::<AccountKey>());
    semihost(0x18, 0x20026);
    loop {}
}

#[link_section = ".vector_table.reset_vector"]
#[no_mangle]
pub static RESET_VECTOR: unsafe extern "C" fn() -> ! = Reset;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    print(b"panic\n\0");
    semihost(0x18, 0x20026);
    loop {}
}
