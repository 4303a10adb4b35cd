//! A minimal Cortex-M4F image that runs one complete enrollment with the embedded client: the
//! proof that it links with no std, no allocator and its own panic handler, and what
//! `scripts/embedded-footprint.sh` measures.
//!
//! The network, RNG and provisioning data are opaque to the optimizer (`black_box`), so every
//! path the server's responses can choose stays in the image: EAB, pre-authorized,
//! device-attest-01 with the IDevID signer, operator approval, polling and download. Nothing
//! here talks to real hardware: it is built and measured, not flashed.
#![no_std]
#![no_main]

use core::cell::UnsafeCell;
use core::hint::black_box;

use embedded_client::attest::SoftwareIdevid;
use embedded_client::driver::{self, Platform, RX_BUFFER, TX_BUFFER};
use embedded_client::{
    AccountKey, Config, DeviceKey, Eab, Enrollment, Error, Identifier, PairingCode,
};
use embedded_io::{ErrorKind, ErrorType, Read, Write};

/// A static the reset handler hands out once, so buffers live in .bss and count as static RAM.
struct Static<T>(UnsafeCell<T>);

// SAFETY: single core, and `Reset` takes each one exactly once before anything else runs.
unsafe impl<T> Sync for Static<T> {}

static TX: Static<[u8; TX_BUFFER]> = Static(UnsafeCell::new([0; TX_BUFFER]));
static RX: Static<[u8; RX_BUFFER]> = Static(UnsafeCell::new([0; RX_BUFFER]));

/// The TLS connection to the CA. A real port wraps the integrator's TLS stack (mbedTLS,
/// embedded-tls, a modem's socket API); here the bytes come from and go to `black_box`.
struct Connection;

impl ErrorType for Connection {
    type Error = ErrorKind;
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        let n = black_box(buf.len());
        black_box(&mut *buf);
        Ok(n.min(buf.len()))
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        black_box(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

struct Board;

impl Platform for Board {
    type Connection = Connection;

    fn connect(&mut self) -> Result<Connection, Error> {
        if black_box(false) {
            return Err(Error::Transport);
        }
        Ok(Connection)
    }

    fn sleep(&mut self, seconds: u32) -> Result<(), Error> {
        black_box(seconds);
        Ok(())
    }

    fn show_pairing_code(&mut self, code: &PairingCode) {
        black_box(code.as_str());
    }
}

/// The MCU's true RNG peripheral.
struct Trng;

impl rand_core::RngCore for Trng {
    fn next_u32(&mut self) -> u32 {
        black_box(0)
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

/// Factory-provisioned data (read from flash or a secure element on a real device).
static PROVISIONED: [u8; 4] = [0; 4];

fn provisioned_str() -> &'static str {
    black_box("")
}

fn enroll(tx: &mut [u8], rx: &mut [u8]) -> Result<(), Error> {
    let account = AccountKey::new(DeviceKey::generate(&mut Trng));
    let cert_key = DeviceKey::generate(&mut Trng);
    let idevid_key = DeviceKey::from_bytes(black_box(&[1; 32]))?;
    let chain: [&[u8]; 2] = [black_box(&PROVISIONED[..]), black_box(&PROVISIONED[..])];
    let mut idevid = SoftwareIdevid::new(idevid_key, &chain);
    let identifiers = black_box([
        Identifier::Permanent(provisioned_str()),
        Identifier::Dns(provisioned_str()),
    ]);
    let cfg = black_box(Config {
        base_url: provisioned_str(),
        identifiers: &identifiers,
        eab: Some(Eab {
            kid: provisioned_str(),
            hmac_key: provisioned_str(),
        }),
        profile: None,
        replaces: None,
        terms_of_service_agreed: true,
    });
    let mut enrollment = Enrollment::new(cfg, &account, &cert_key, Some(&mut idevid))?;
    let pem = driver::enroll(&mut Board, &mut enrollment, tx, rx)?;
    // Persist the chain and the keys (flash, secure element).
    black_box(rx.get(pem).unwrap_or_default());
    black_box(cert_key.to_bytes());
    black_box(account.key().to_bytes());
    Ok(())
}

/// The reset handler: initialise RAM, enroll, then sleep.
///
/// # Safety
/// Called once by the hardware at reset, through the vector table.
#[no_mangle]
pub unsafe extern "C" fn Reset() -> ! {
    extern "C" {
        static mut _sbss: u32;
        static mut _ebss: u32;
        static mut _sdata: u32;
        static _edata: u32;
        static _sidata: u32;
    }
    // Zero .bss and copy .data from flash, word by word (the linker script aligns both to 4).
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
    // SAFETY: taken once, here, after RAM initialisation.
    let (tx, rx) = (&mut *TX.0.get(), &mut *RX.0.get());
    black_box(enroll(tx, rx).is_ok());
    loop {
        core::hint::spin_loop();
    }
}

#[link_section = ".vector_table.reset_vector"]
#[no_mangle]
pub static RESET_VECTOR: unsafe extern "C" fn() -> ! = Reset;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
