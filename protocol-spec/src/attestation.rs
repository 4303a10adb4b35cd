//! The device-attest-01 attestation object (SPEC §5.10.2): a CBOR (RFC 8949) map in the shape
//! of a WebAuthn attestation object, with the `iiot-idevid` statement format.
//!
//! ```text
//! {"fmt": "iiot-idevid",
//!  "attStmt": {"alg": -7 / -35 / -257, "sig": bstr, "x5c": [IDevID DER, issuers…]}}
//! ```
//!
//! [`encode`] writes a [`Statement`] in this shape: definite lengths, arguments in their
//! shortest form (RFC 8949 §4.2.1), members in CTAP2 canonical order (`fmt`, `attStmt`; `alg`,
//! `sig`, `x5c`), and `authData` left out, as SPEC §5.10.2 asks of encoders. The device signs the
//! key authorization and encodes the result; the server's tests encode objects to verify.
//!
//! [`encode`] is [`encode_before_sig`], the signature octets and [`encode_x5c`]. A device short of
//! RAM (the embedded client) calls the two parts itself around a signature made straight into
//! its output buffer, and writes the same octets without a buffer for the signature.
//!
//! The encoder writes what it is given: another `fmt`, any `alg`, an empty or overlong `x5c`.
//! Verification (SPEC §5.10.3) refuses those; writing them lets tests check that it does.
//!
//! ```
//! use protocol_spec::attestation::{encode, Statement, COSE_ES256};
//!
//! let sig = [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02]; // DER Ecdsa-Sig-Value
//! let x5c: [&[u8]; 1] = [&[0x30, 0x00]]; // the IDevID's DER
//! let stmt = Statement::iiot_idevid(COSE_ES256, &sig, &x5c);
//! let mut out = [0u8; 64];
//! let obj = encode(&stmt, &mut out).expect("64 octets are enough");
//! assert_eq!(obj.len(), stmt.encoded_len());
//! assert_eq!(&obj[..5], b"\xa2\x63fmt");
//! ```

use crate::write::Cursor;
use crate::BufferTooSmall;

/// The attestation statement format this profile defines (SPEC §5.10.2).
pub const FORMAT: &str = "iiot-idevid";

/// Most certificates `x5c` may hold (SPEC §5.10.2): the IDevID and up to four issuers.
pub const X5C_MAX: usize = 5;

/// COSE algorithm ES256: ECDSA P-256 with SHA-256 (RFC 9053 §2.1).
pub const COSE_ES256: i64 = -7;
/// COSE algorithm ES384: ECDSA P-384 with SHA-384 (RFC 9053 §2.1).
pub const COSE_ES384: i64 = -35;
/// COSE algorithm RS256: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8812 §2).
pub const COSE_RS256: i64 = -257;

/// What goes into an attestation object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statement<'a> {
    /// `fmt`: [`FORMAT`] for this profile.
    pub fmt: &'a str,
    /// `attStmt.alg`: the COSE algorithm of `sig`.
    pub alg: i64,
    /// `attStmt.sig`: the IDevID key's signature over the key authorization (an ECDSA signature
    /// as a DER `Ecdsa-Sig-Value`, not r ‖ s).
    pub sig: &'a [u8],
    /// `attStmt.x5c`: DER certificates, the IDevID first, then its issuers.
    pub x5c: &'a [&'a [u8]],
}

impl<'a> Statement<'a> {
    /// An `iiot-idevid` statement.
    pub fn iiot_idevid(alg: i64, sig: &'a [u8], x5c: &'a [&'a [u8]]) -> Self {
        Self {
            fmt: FORMAT,
            alg,
            sig,
            x5c,
        }
    }

    /// Length of the encoded object, for sizing the buffer.
    pub fn encoded_len(&self) -> usize {
        let string = |len: usize| head_len(len as u64) + len;
        // The two map heads, one octet each.
        2 + string(3) // "fmt"
            + string(self.fmt.len())
            + string(7) // "attStmt"
            + string(3) // "alg"
            + head_len(int_arg(self.alg).1)
            + string(3) // "sig"
            + string(self.sig.len())
            + string(3) // "x5c"
            + head_len(self.x5c.len() as u64)
            + self.x5c.iter().map(|c| string(c.len())).sum::<usize>()
    }
}

/// Writes the attestation object of `stmt` into `out` and returns it.
pub fn encode<'o>(stmt: &Statement<'_>, out: &'o mut [u8]) -> Result<&'o [u8], BufferTooSmall> {
    // Checked up front so that a short buffer reports the whole length, not the first write
    // that did not fit.
    let needed = stmt.encoded_len();
    let Some(out) = out.get_mut(..needed) else {
        return Err(BufferTooSmall { needed });
    };
    let before = encode_before_sig(stmt.fmt, stmt.alg, stmt.sig.len(), out)?.len();
    let (_, rest) = out.split_at_mut(before);
    let (sig, rest) = rest.split_at_mut(stmt.sig.len());
    sig.copy_from_slice(stmt.sig);
    encode_x5c(stmt.x5c.iter().copied(), rest)?;
    Ok(out)
}

/// Writes the part of the object before the signature octets: the map, `fmt`, the `attStmt`
/// map, `alg`, the `sig` key and the head of a byte string of `sig_len` octets. With
/// [`encode_x5c`], for a device that signs straight into its output buffer: it writes this,
/// then the signature, then the rest, and the octets are those of [`encode`].
pub fn encode_before_sig<'o>(
    fmt: &str,
    alg: i64,
    sig_len: usize,
    out: &'o mut [u8],
) -> Result<&'o [u8], BufferTooSmall> {
    let mut w = Cursor::new(out);
    head(&mut w, MAP, 2)?;
    text(&mut w, "fmt")?;
    text(&mut w, fmt)?;
    text(&mut w, "attStmt")?;
    head(&mut w, MAP, 3)?;
    text(&mut w, "alg")?;
    let (major, arg) = int_arg(alg);
    head(&mut w, major, arg)?;
    text(&mut w, "sig")?;
    head(&mut w, BYTES, sig_len as u64)?;
    Ok(w.written())
}

/// Writes the part of the object after the signature octets: the `x5c` key and the array of
/// the certificates (DER, the IDevID first). See [`encode_before_sig`].
pub fn encode_x5c<'c, 'o>(
    x5c: impl ExactSizeIterator<Item = &'c [u8]>,
    out: &'o mut [u8],
) -> Result<&'o [u8], BufferTooSmall> {
    let mut w = Cursor::new(out);
    text(&mut w, "x5c")?;
    head(&mut w, ARRAY, x5c.len() as u64)?;
    for cert in x5c {
        bytes(&mut w, cert)?;
    }
    Ok(w.written())
}

// RFC 8949 §3.1 major types.
const UNSIGNED: u8 = 0;
const NEGATIVE: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;

/// The major type and argument of an integer: `n` itself, or `-1 - n` for a negative one
/// (RFC 8949 §3.1), which is `!n` in two's complement and cannot overflow.
fn int_arg(n: i64) -> (u8, u64) {
    if n < 0 {
        (NEGATIVE, !n as u64)
    } else {
        (UNSIGNED, n as u64)
    }
}

/// Octets of a head with argument `arg` in its shortest form (RFC 8949 §3, §4.2.1).
fn head_len(arg: u64) -> usize {
    match arg {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

fn head(w: &mut Cursor<'_>, major: u8, arg: u64) -> Result<(), BufferTooSmall> {
    let follow = head_len(arg) - 1;
    // Additional information: the argument itself below 24, else 24 to 27 for 1, 2, 4 or 8
    // octets following.
    let info = match follow {
        0 => arg as u8,
        1 => 24,
        2 => 25,
        4 => 26,
        _ => 27,
    };
    w.push(&[(major << 5) | info])?;
    w.push(&arg.to_be_bytes()[8 - follow..])
}

fn text(w: &mut Cursor<'_>, s: &str) -> Result<(), BufferTooSmall> {
    head(w, TEXT, s.len() as u64)?;
    w.push(s.as_bytes())
}

fn bytes(w: &mut Cursor<'_>, b: &[u8]) -> Result<(), BufferTooSmall> {
    head(w, BYTES, b.len() as u64)?;
    w.push(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_take_the_shortest_form() {
        let cases: [(u8, u64, &[u8]); 9] = [
            (UNSIGNED, 0, &[0x00]),
            (UNSIGNED, 23, &[0x17]),
            (UNSIGNED, 24, &[0x18, 0x18]),
            (BYTES, 0xff, &[0x58, 0xff]),
            (BYTES, 0x100, &[0x59, 0x01, 0x00]),
            (TEXT, 0xffff, &[0x79, 0xff, 0xff]),
            (ARRAY, 0x1_0000, &[0x9a, 0x00, 0x01, 0x00, 0x00]),
            (MAP, 0x1_0000_0000, &[0xbb, 0, 0, 0, 1, 0, 0, 0, 0]),
            (
                NEGATIVE,
                u64::MAX,
                &[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
        ];
        for (major, arg, want) in cases {
            let mut buf = [0u8; 9];
            let mut w = Cursor::new(&mut buf);
            head(&mut w, major, arg).expect("fits");
            assert_eq!(w.written(), want, "{major} {arg}");
            assert_eq!(head_len(arg), want.len());
        }
        assert_eq!(int_arg(-1), (NEGATIVE, 0));
        assert_eq!(int_arg(i64::MIN), (NEGATIVE, i64::MAX as u64));
        assert_eq!(int_arg(i64::MAX), (UNSIGNED, i64::MAX as u64));
    }

    #[test]
    fn a_short_buffer_reports_the_whole_length() {
        let x5c: [&[u8]; 1] = [&[0x30, 0x00]];
        let stmt = Statement::iiot_idevid(COSE_ES256, &[1, 2, 3], &x5c);
        let mut out = [0u8; 16];
        assert_eq!(
            encode(&stmt, &mut out),
            Err(BufferTooSmall {
                needed: stmt.encoded_len()
            })
        );
    }
}
