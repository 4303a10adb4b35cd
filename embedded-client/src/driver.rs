//! A blocking driver for integrators who want one call: it runs an [`Enrollment`] over a
//! connection that implements `embedded_io` `Read` + `Write` (the integrator's TLS stream, which
//! must pin the CA root, SPEC §2.3).

use core::ops::Range;

use embedded_io::{Read, Write};

use crate::http::{self, Framing};
use crate::key::PairingCode;
use crate::{Enrollment, Error, Event};

/// What the driver needs from the platform.
pub trait Platform {
    type Connection: Read + Write;

    /// Opens a TLS connection to the CA (a new one whenever the previous one closed).
    fn connect(&mut self) -> Result<Self::Connection, Error>;

    /// Waits `seconds` (the server's `Retry-After`). Returning an error stops the enrollment,
    /// e.g. when the device gives up waiting for approval.
    fn sleep(&mut self, seconds: u32) -> Result<(), Error>;

    /// Shows the pairing code to the person at the device (display, log, serial console) while
    /// an operator approval is pending (SPEC §5.8).
    fn show_pairing_code(&mut self, code: &PairingCode) {
        let _ = code;
    }
}

/// Buffer sizes that fit every request and response of an enrollment against ca-server with
/// P-256 keys and an IDevID chain of up to about 1.4 KB: see the footprint report in
/// embedded-client/README.md.
/// The largest request is the device-attest-01 answer (the chain, base64url twice: about 3.4 KB
/// for a 1.4 KB chain). The receive buffer holds the responses, the largest being the
/// certificate chain (1.85 KB with its head from ca-server), and serves as scratch, where the
/// attestation object is encoded in place (about 2 KB for a 1.4 KB chain).
pub const TX_BUFFER: usize = 4096;
pub const RX_BUFFER: usize = 3072;

/// Runs `enrollment` to the end. Returns the range of `rx` that holds the PEM chain.
pub fn enroll<P: Platform>(
    platform: &mut P,
    enrollment: &mut Enrollment<'_>,
    tx: &mut [u8],
    rx: &mut [u8],
) -> Result<Range<usize>, Error> {
    let mut conn: Option<P::Connection> = None;
    loop {
        let n = enrollment.next_request(tx, rx)?;
        let len = exchange(platform, &mut conn, tx.get(..n).unwrap_or_default(), rx)?;
        match enrollment.handle_response(rx.get_mut(..len).unwrap_or_default())? {
            Event::Continue => {}
            Event::Wait { seconds } => platform.sleep(seconds)?,
            Event::AwaitingApproval { code, seconds } => {
                platform.show_pairing_code(&code);
                platform.sleep(seconds)?;
            }
            Event::Issued { pem } => return Ok(pem),
        }
    }
}

/// Sends `request` and reads one whole response into `rx`; returns its length. A reused
/// connection that the server closed meanwhile is replaced once.
fn exchange<P: Platform>(
    platform: &mut P,
    conn: &mut Option<P::Connection>,
    request: &[u8],
    rx: &mut [u8],
) -> Result<usize, Error> {
    for attempt in 0..2 {
        let reused = conn.is_some();
        let c = match conn {
            Some(c) => c,
            None => conn.insert(platform.connect()?),
        };
        match round_trip(c, request, rx) {
            Ok((len, keep)) => {
                if !keep {
                    *conn = None;
                }
                return Ok(len);
            }
            Err(RoundTrip::Stale) if reused && attempt == 0 => *conn = None,
            Err(RoundTrip::Stale) => {
                *conn = None;
                return Err(Error::Transport);
            }
            Err(RoundTrip::Failed(e)) => {
                *conn = None;
                return Err(e);
            }
        }
    }
    Err(Error::Transport)
}

enum RoundTrip {
    /// The connection failed before any response octet: worth one retry on a fresh one.
    Stale,
    Failed(Error),
}

fn round_trip<C: Read + Write>(
    c: &mut C,
    request: &[u8],
    rx: &mut [u8],
) -> Result<(usize, bool), RoundTrip> {
    c.write_all(request).map_err(|_| RoundTrip::Stale)?;
    c.flush().map_err(|_| RoundTrip::Stale)?;
    let mut len = 0;
    loop {
        let free = rx.get_mut(len..).unwrap_or_default();
        if free.is_empty() {
            return Err(RoundTrip::Failed(Error::ResponseTooLarge));
        }
        let n = match c.read(free) {
            Ok(n) => n,
            Err(_) if len == 0 => return Err(RoundTrip::Stale),
            Err(_) => return Err(RoundTrip::Failed(Error::Transport)),
        };
        if n == 0 && len == 0 {
            return Err(RoundTrip::Stale);
        }
        len += n;
        let data = rx.get(..len).unwrap_or_default();
        match http::framing(data, n == 0).map_err(RoundTrip::Failed)? {
            Framing::Complete(total) => {
                let keep = n != 0 && !http::closes(data);
                return Ok((total, keep));
            }
            Framing::Partial => {}
        }
    }
}
