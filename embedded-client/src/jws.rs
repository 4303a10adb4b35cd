//! Flattened JWS (RFC 7515 §7.2.2) with ES256, as SPEC §3.2 requires, and the HS256 external
//! account binding of SPEC §6.2. Everything is written straight into caller buffers; the
//! signature is computed over the base64url text where it already lies.

use crate::http::HEADROOM;
use crate::key::{hmac_sha256, AccountKey};
use crate::text::Writer;
use crate::Error;

/// How the request names its key (SPEC §3.4).
pub(crate) enum KeyRef<'a> {
    /// newAccount: the public key itself.
    Jwk,
    /// Every other request: the account URL.
    Kid(Url<'a>),
}

/// The `url` a request is for: the server's origin and a path on it.
#[derive(Clone, Copy)]
pub(crate) struct Url<'a> {
    pub(crate) origin: &'a str,
    pub(crate) path: &'a str,
}

/// Writes the JWS over `payload` at `tx[HEADROOM..]` and returns its length. `header` is
/// scratch space for the protected header's JSON.
pub(crate) fn write(
    tx: &mut [u8],
    header: &mut [u8],
    account: &AccountKey,
    key_ref: KeyRef<'_>,
    nonce: &str,
    url: Url<'_>,
    payload: &[u8],
) -> Result<usize, Error> {
    let header = {
        let mut h = Writer::new(header);
        h.str("{\"alg\":\"ES256\",");
        match key_ref {
            KeyRef::Jwk => {
                h.str("\"jwk\":");
                jwk_json(&mut h, account)?;
            }
            KeyRef::Kid(kid) => {
                h.str("\"kid\":\"");
                h.json_str(kid.origin);
                h.json_str(kid.path);
                h.byte(b'"');
            }
        }
        h.str(",\"nonce\":\"");
        h.json_str(nonce);
        end_with_url(&mut h, url);
        h.into_written()?
    };
    let body = tx.get_mut(HEADROOM..).ok_or(Error::BufferTooSmall {
        needed: HEADROOM + 1,
    })?;
    let mut w = Writer::new(body);
    flattened(&mut w, header, payload, SignWith::Es256(account))?;
    w.finish()
}

/// Ends a protected header (the last member open is a string) with its `url` member.
fn end_with_url(h: &mut Writer<'_>, url: Url<'_>) {
    h.str("\",\"url\":\"");
    h.json_str(url.origin);
    h.json_str(url.path);
    h.str("\"}");
}

/// The key a JWS is signed with. An enum rather than a closure, so that [`flattened`] exists
/// once in the image instead of once per caller.
enum SignWith<'k> {
    Es256(&'k AccountKey),
    /// The EAB credential's HMAC key.
    Hs256(&'k [u8]),
}

/// Writes `{"protected":…,"payload":…,"signature":…}`, signing the base64url text where it
/// already lies in `w` (RFC 7515 §5.1: the signing input is `protected.payload`).
fn flattened(
    w: &mut Writer<'_>,
    header: &[u8],
    payload: &[u8],
    key: SignWith<'_>,
) -> Result<(), Error> {
    w.str("{\"protected\":\"");
    let h0 = w.offset();
    w.base64url(header);
    let h1 = w.offset();
    w.str("\",\"payload\":\"");
    let p0 = w.offset();
    w.base64url(payload);
    let p1 = w.offset();
    // Not worth signing a text that did not fit.
    w.finish()?;
    let mut mac = [0u8; 64];
    let mac = {
        let text = w.written();
        let input = [&text[h0..h1], b".", &text[p0..p1]];
        match key {
            SignWith::Es256(account) => {
                mac = account.key().sign(&input)?;
                &mac[..]
            }
            SignWith::Hs256(hmac_key) => {
                mac[..32].copy_from_slice(&hmac_sha256(hmac_key, &input));
                &mac[..32]
            }
        }
    };
    w.str("\",\"signature\":\"");
    w.base64url(mac);
    w.str("\"}");
    Ok(())
}

/// The account key as a JWK object, members in RFC 7638 order.
pub(crate) fn jwk_json(w: &mut Writer<'_>, account: &AccountKey) -> Result<(), Error> {
    let mut canonical = [0u8; 128];
    let json = protocol_spec::jwk::canonical_json(&account.jwk(), &mut canonical)
        .map_err(|_| Error::Key)?;
    w.str(json);
    Ok(())
}

/// Room [`eab`] needs for the JSON it signs: the protected header and the JWK.
pub(crate) const EAB_SCRATCH: usize = EAB_HEADER_MAX + 128;
const EAB_HEADER_MAX: usize = 384;

/// Writes the `externalAccountBinding` JWS object (SPEC §6.2): HS256 under the operator's
/// credential over the account JWK, for the newAccount `url`. `scratch` (at least
/// [`EAB_SCRATCH`] octets) holds the JSON that is signed while it is encoded.
pub(crate) fn eab(
    w: &mut Writer<'_>,
    account: &AccountKey,
    kid: &str,
    hmac_key: &[u8],
    url: Url<'_>,
    scratch: &mut [u8],
) -> Result<(), Error> {
    let (header, jwk) =
        scratch
            .split_at_mut_checked(EAB_HEADER_MAX)
            .ok_or(Error::BufferTooSmall {
                needed: EAB_SCRATCH,
            })?;
    let header = {
        let mut h = Writer::new(header);
        h.str("{\"alg\":\"HS256\",\"kid\":\"");
        h.json_str(kid);
        end_with_url(&mut h, url);
        h.into_written()?
    };
    let jwk = protocol_spec::jwk::canonical_json(&account.jwk(), jwk).map_err(|_| Error::Key)?;
    flattened(w, header, jwk.as_bytes(), SignWith::Hs256(hmac_key))
}
