//! The device-attest-01 answer (SPEC §5.10): an `iiot-idevid` attestation object carrying the
//! IDevID chain and the IDevID key's signature over the key authorization.
//!
//! The IDevID key usually lives in a secure element, so signing goes through [`IdevidSigner`].
//! [`SoftwareIdevid`] is the implementation for an IDevID P-256 key held in memory.

use protocol_spec::attestation;

use crate::der::DerWriter;
use crate::key::DeviceKey;
use crate::text::move_down;
use crate::Error;

/// Why the IDevID signer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignerError {
    /// The secure element or key store refused or failed.
    Device,
    /// The signature does not fit the buffer offered.
    BufferTooSmall,
}

/// Access to the manufacturer's IDevID: its certificate chain and its private key.
pub trait IdevidSigner {
    /// The COSE algorithm of [`IdevidSigner::sign`]: `-7` (ES256), `-35` (ES384) or `-257`
    /// (RS256), SPEC §5.10.2.
    fn cose_alg(&self) -> i32;

    /// The DER certificate at `index` of the chain: 0 is the IDevID, then its issuer and so on
    /// (1 to 5 certificates). `None` past the end.
    fn certificate(&self, index: usize) -> Option<&[u8]>;

    /// Signs `message` with the IDevID key as [`IdevidSigner::cose_alg`] says, writing the
    /// signature into `out` (an ECDSA signature as a DER `Ecdsa-Sig-Value`, not r ‖ s) and
    /// returning its length.
    fn sign(&mut self, message: &[u8], out: &mut [u8]) -> Result<usize, SignerError>;
}

/// An IDevID whose P-256 key is in memory (development boards, or a key the firmware reads
/// from protected flash).
pub struct SoftwareIdevid<'a> {
    key: DeviceKey,
    chain: &'a [&'a [u8]],
}

impl<'a> SoftwareIdevid<'a> {
    /// `chain`: the IDevID certificate first, then its issuers (DER).
    pub fn new(key: DeviceKey, chain: &'a [&'a [u8]]) -> Self {
        Self { key, chain }
    }
}

impl IdevidSigner for SoftwareIdevid<'_> {
    fn cose_alg(&self) -> i32 {
        -7
    }

    fn certificate(&self, index: usize) -> Option<&[u8]> {
        self.chain.get(index).copied()
    }

    fn sign(&mut self, message: &[u8], out: &mut [u8]) -> Result<usize, SignerError> {
        let rs = self.key.sign(&[message]).map_err(|_| SignerError::Device)?;
        let mut w = DerWriter::new(out);
        crate::csr::ecdsa_sig_value(&mut w, &rs);
        w.finish().map_err(|_| SignerError::BufferTooSmall)
    }
}

/// Most certificates SPEC §5.10.2 allows in `x5c`.
pub const MAX_CHAIN: usize = 5;

/// Writes the CBOR attestation object for `key_authorization` into `out` and returns its
/// length. Members in CTAP2 canonical order, definite lengths (SPEC §5.10.2).
pub fn attestation_object(
    signer: &mut dyn IdevidSigner,
    key_authorization: &str,
    out: &mut [u8],
) -> Result<usize, Error> {
    // The signer writes into `out`, past the room the CBOR before the signature needs, and the
    // signature is then moved down into place: no buffer of its own on the stack (an RS256
    // signature of a 4096-bit key is 512 octets).
    let room = out
        .get_mut(SIG_AT..)
        .ok_or(Error::BufferTooSmall { needed: SIG_AT })?;
    let room_len = room.len();
    let sig_len = signer
        .sign(key_authorization.as_bytes(), room)
        .map_err(|_| Error::Signer)?;
    if sig_len > room_len {
        return Err(Error::Signer);
    }
    let count = (0..=MAX_CHAIN)
        .take_while(|&i| signer.certificate(i).is_some())
        .count();
    if count == 0 || count > MAX_CHAIN {
        return Err(Error::Signer);
    }
    // The shared encoder writes what goes around the signature (SPEC §5.10.2).
    let head = attestation::encode_before_sig(
        attestation::FORMAT,
        i64::from(signer.cose_alg()),
        sig_len,
        out.get_mut(..SIG_AT).unwrap_or_default(),
    )
    .map_err(|_| Error::BufferTooSmall { needed: SIG_AT })?
    .len();
    move_down(out, SIG_AT..SIG_AT + sig_len, head);
    let done = head + sig_len;
    let signer = &*signer;
    let chain = (0..count).map(|i| signer.certificate(i).unwrap_or_default());
    match attestation::encode_x5c(chain, out.get_mut(done..).unwrap_or_default()) {
        Ok(tail) => Ok(done + tail.len()),
        Err(e) => Err(Error::BufferTooSmall {
            needed: done + e.needed,
        }),
    }
}

/// Where the signer writes: after the longest CBOR that precedes the signature (44 octets:
/// the map and text heads, an `alg` of up to 5 octets and a 5-octet byte-string head).
const SIG_AT: usize = 48;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_shape_matches_spec() {
        let chain: [&[u8]; 2] = [&[0x30, 0x01, 0xaa], &[0x30, 0x00]];
        let mut signer = SoftwareIdevid::new(DeviceKey::from_bytes(&[5; 32]).expect("key"), &chain);
        let mut out = [0u8; 256];
        let n = attestation_object(&mut signer, "tok.thumb", &mut out).expect("fits");
        let o = &out[..n];
        // {"fmt": "iiot-idevid", "attStmt": {"alg": -7, "sig": h'30…', ...
        assert_eq!(&o[..5], &[0xa2, 0x63, b'f', b'm', b't']);
        assert_eq!(&o[5..17], b"\x6biiot-idevid");
        assert_eq!(&o[17..26], b"\x67attStmt\xa3");
        assert_eq!(&o[26..31], &[0x63, b'a', b'l', b'g', 0x26]);
        assert_eq!(&o[31..35], &[0x63, b's', b'i', b'g']);
        let sig_len = usize::from(o[36]);
        assert_eq!(o[35], 0x58);
        assert_eq!(o[37], 0x30);
        let x5c = 37 + sig_len;
        assert_eq!(
            &o[x5c..],
            &[0x63, b'x', b'5', b'c', 0x82, 0x43, 0x30, 0x01, 0xaa, 0x42, 0x30, 0x00]
        );
    }
}
