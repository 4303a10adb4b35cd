//! Keys generated on the device: the ACME account key and the certificate key, both ECDSA P-256
//! with RFC 6979 deterministic signatures (so signing needs no RNG), and the pairing code of an
//! approval request, derived from the account key and the challenge's token (SPEC §5.9).

use p256::elliptic_curve::group::Group as _;
use p256::elliptic_curve::ops::{Invert as _, Reduce as _};
use p256::elliptic_curve::point::AffineCoordinates as _;
use p256::elliptic_curve::rand_core::CryptoRngCore;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::elliptic_curve::subtle::{Choice, ConditionallySelectable as _};
use p256::elliptic_curve::zeroize::Zeroize as _;
use p256::elliptic_curve::{Field as _, PrimeField as _};
use p256::{NonZeroScalar, ProjectivePoint, Scalar};
use protocol_spec::jwk::{self, Curve, Jwk, THUMBPRINT_LEN};
pub use protocol_spec::pairing::PairingCode;
use sha2::{Digest, Sha256};

use crate::Error;

/// A P-256 private key. Generate it on the device; persist [`DeviceKey::to_bytes`] in the
/// device's own protected storage and never send it anywhere.
///
/// The scalar alone rather than p256's `SigningKey`: that one multiplies by the generator with
/// a table of 16 points (1.5 KiB of stack, 2 KiB with its frame), the deepest part of an
/// enrollment's stack; [`base_mul`] needs a fraction of it.
#[derive(Clone)]
pub struct DeviceKey(NonZeroScalar);

impl DeviceKey {
    /// A new key from the integrator's cryptographically secure RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self(NonZeroScalar::random(rng))
    }

    /// A key from its 32-octet big-endian scalar, as [`DeviceKey::to_bytes`] wrote it.
    pub fn from_bytes(secret: &[u8; 32]) -> Result<Self, Error> {
        Option::from(NonZeroScalar::from_repr((*secret).into()))
            .map(Self)
            .ok_or(Error::Key)
    }

    /// The private scalar, for the device's own persistent storage.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_repr().into()
    }

    /// The uncompressed public point coordinates (x, y).
    // Out of line, as `public_point` and `thumbprint`: this runs under the caller's frame before
    // an enrollment, and inlined, their buffers sat in the frames above base_mul's.
    #[inline(never)]
    pub fn public_xy(&self) -> ([u8; 32], [u8; 32]) {
        // SEC 1 §2.3.3 uncompressed form: 0x04 ‖ x ‖ y, always 65 octets for P-256.
        let point = public_point(&self.0).to_encoded_point(false);
        let xy = point.as_bytes().get(1..65).unwrap_or(&[0; 64]);
        let (x, y) = xy.split_at(32);
        let mut out = ([0u8; 32], [0u8; 32]);
        out.0.copy_from_slice(x);
        out.1.copy_from_slice(y);
        out
    }

    /// ES256 over the concatenation of `parts` (RFC 7518 §3.4): r ‖ s, 64 octets. ECDSA as
    /// FIPS 186-5 §6.4.1 with k from RFC 6979 §3.2, so the signature is the one p256's
    /// `SigningKey` gives (a test checks that).
    pub fn sign(&self, parts: &[&[u8]]) -> Result<[u8; 64], Error> {
        let digest = digest(parts);
        let k = rfc6979_k(&self.0, &digest).ok_or(Error::Key)?;
        let r = r_of(&k);
        s_of(&self.0, &k, &r, &digest)
    }
}

// Each step of the signature in a function of its own: inlined into `sign`, the scalar
// inversion's temporaries stayed in the frame under base_mul (0.4 KiB).
#[inline(never)]
fn r_of(k: &NonZeroScalar) -> Scalar {
    Scalar::reduce_bytes(&base_mul(k).to_affine().x())
}

#[inline(never)]
fn s_of(
    d: &NonZeroScalar,
    k: &NonZeroScalar,
    r: &Scalar,
    digest: &p256::FieldBytes,
) -> Result<[u8; 64], Error> {
    let z = Scalar::reduce_bytes(digest);
    let s = *k.invert() * (z + *r * **d);
    if bool::from(r.is_zero() | s.is_zero()) {
        return Err(Error::Key);
    }
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&r.to_repr());
    sig[32..].copy_from_slice(&s.to_repr());
    Ok(sig)
}

// The hash and the HMAC_DRBG state in functions of their own, so that their frames are gone
// before base_mul's begins.
#[inline(never)]
fn digest(parts: &[&[u8]]) -> p256::FieldBytes {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    // A SHA-256 digest is as long as the P-256 order, so it is used whole (bits2int).
    h.finalize()
}

/// The nonce k of RFC 6979 §3.2 for HMAC-SHA256 and P-256 (qlen = hlen = 256, so bits2int is
/// the identity), with `h1` passed as the digest itself, not reduced mod q, as p256's
/// `SigningKey` did: signatures stay the same, and k is as secret either way. Written out
/// rather than the rfc6979 crate: its HMAC_DRBG keeps whole SimpleHmac states (1.5 KiB of
/// stack); two 32-octet values and one pad block are all the algorithm needs.
#[inline(never)]
fn rfc6979_k(x: &NonZeroScalar, h1: &p256::FieldBytes) -> Option<NonZeroScalar> {
    let x = x.to_repr();
    // Steps b to g.
    let mut v = [0x01u8; 32];
    let mut k = hmac_sha256(&[0; 32], &[&v, &[0x00], &x, h1]);
    v = hmac_sha256(&k, &[&v]);
    k = hmac_sha256(&k, &[&v, &[0x01], &x, h1]);
    v = hmac_sha256(&k, &[&v]);
    // Step h: a candidate in [1, q-1] is k; another one is needed with probability 2^-32.
    for _ in 0..64 {
        v = hmac_sha256(&k, &[&v]);
        if let Some(nonce) = Option::from(NonZeroScalar::from_repr(v.into())) {
            return Some(nonce);
        }
        k = hmac_sha256(&k, &[&v, &[0x00]]);
        v = hmac_sha256(&k, &[&v]);
    }
    None
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`: the RFC 6979 nonces and the EAB's
/// HS256. Written out rather than the hmac crate's, whose state took up to 1 KiB of stack
/// where a 64-octet pad block is enough.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const IPAD: u8 = 0x36;
    const OPAD: u8 = 0x5c;
    // RFC 2104 §2: a key longer than the block is hashed first.
    let hashed;
    let key = if key.len() > 64 {
        hashed = Sha256::digest(key);
        &hashed[..]
    } else {
        key
    };
    let mut pad = [IPAD; 64];
    for (p, k) in pad.iter_mut().zip(key) {
        *p ^= k;
    }
    let mut inner = Sha256::new();
    inner.update(pad);
    for part in parts {
        inner.update(part);
    }
    let inner = inner.finalize();
    for p in &mut pad {
        *p ^= IPAD ^ OPAD;
    }
    Sha256::new()
        .chain_update(pad)
        .chain_update(inner)
        .finalize()
        .into()
}

#[inline(never)]
fn public_point(d: &NonZeroScalar) -> p256::AffinePoint {
    base_mul(d).to_affine()
}

/// `k`×G by double-and-add over every bit of `k`, the sum kept or not by a constant-time
/// select, so time and memory accesses do not depend on the secret. p256's addition formulas
/// are complete, so the identity and doubling need no special case.
fn base_mul(k: &Scalar) -> ProjectivePoint {
    let mut acc = ProjectivePoint::IDENTITY;
    for byte in k.to_repr() {
        for bit in (0..8).rev() {
            acc = double(&acc);
            let sum = add_generator(&acc);
            acc.conditional_assign(&sum, Choice::from((byte >> bit) & 1));
        }
    }
    acc
}

// Out of line: inlined, the two formulas' temporaries share base_mul's frame (1.4 KiB).
#[inline(never)]
fn double(p: &ProjectivePoint) -> ProjectivePoint {
    p.double()
}

#[inline(never)]
fn add_generator(p: &ProjectivePoint) -> ProjectivePoint {
    p + &ProjectivePoint::GENERATOR
}

impl Drop for DeviceKey {
    // As p256's SigningKey did: no copy of the secret is left in memory that is reused.
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl core::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

/// The key of the certified end entity (the CSR key).
pub type CertificateKey = DeviceKey;

/// The account key with its JWK members and thumbprint computed once.
#[derive(Clone, Debug)]
pub struct AccountKey {
    key: DeviceKey,
    x: [u8; 43],
    y: [u8; 43],
    thumbprint: [u8; THUMBPRINT_LEN],
}

impl AccountKey {
    // Not inlined into its caller: 62 octets smaller in the firmware (footprint script).
    #[inline(never)]
    pub fn new(key: DeviceKey) -> Self {
        let (x, y) = key.public_xy();
        let mut xb = [0u8; 43];
        let mut yb = [0u8; 43];
        // 32 octets always encode to 43 characters.
        let _ = protocol_spec::base64url::encode(&x, &mut xb);
        let _ = protocol_spec::base64url::encode(&y, &mut yb);
        let mut k = Self {
            key,
            x: xb,
            y: yb,
            thumbprint: [0; THUMBPRINT_LEN],
        };
        // A P-256 JWK always fits and always validates.
        k.thumbprint = thumbprint(&k.jwk()).unwrap_or([0; THUMBPRINT_LEN]);
        k
    }

    pub fn key(&self) -> &DeviceKey {
        &self.key
    }

    /// The public JWK (RFC 7517) of the account key.
    pub fn jwk(&self) -> Jwk<'_> {
        Jwk::Ec {
            crv: Curve::P256,
            x: ascii(&self.x),
            y: ascii(&self.y),
        }
    }

    /// The RFC 7638 thumbprint, base64url (43 characters).
    pub fn thumbprint(&self) -> &str {
        ascii(&self.thumbprint)
    }

    /// The pairing code an operator compares before approving the request whose
    /// operator-approval-01 challenge has `token` (SPEC §5.9).
    pub fn pairing_code(&self, token: &str) -> Result<PairingCode, Error> {
        pairing_code(token, self.thumbprint())
    }
}

/// The RFC 7638 thumbprint of `jwk` as base64url text: SHA-256 over its canonical JSON. EC and
/// OKP keys only: the canonical JSON of an RSA key would need a kilobyte of stack, and the
/// device never holds one.
#[inline(never)]
pub fn thumbprint(jwk: &Jwk<'_>) -> Result<[u8; THUMBPRINT_LEN], Error> {
    // A P-384 JWK, the largest accepted here, is 168 octets of canonical JSON.
    let mut canonical = [0u8; 192];
    let json = jwk::canonical_json(jwk, &mut canonical).map_err(|_| Error::Key)?;
    let digest: [u8; 32] = Sha256::digest(json.as_bytes()).into();
    let mut t = [0u8; THUMBPRINT_LEN];
    jwk::thumbprint_text(&digest, &mut t);
    Ok(t)
}

fn ascii(b: &[u8]) -> &str {
    core::str::from_utf8(b).unwrap_or_default()
}

/// The pairing code (SPEC §5.9) of the request with challenge token `token` from the account
/// whose key has thumbprint `thumbprint`: SHA-256 over the label and the key authorization,
/// whose first 40 bits are the code. A token that is not base64url is refused.
pub fn pairing_code(token: &str, thumbprint: &str) -> Result<PairingCode, Error> {
    PairingCode::compute(token, thumbprint, |parts| {
        let mut h = Sha256::new();
        for part in parts {
            h.update(part);
        }
        h.finalize().into()
    })
    .map_err(|e| match e {
        protocol_spec::challenge::KeyAuthorizationError::Token => Error::BadJson("challenge token"),
        _ => Error::Key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6979_signatures_are_deterministic_and_verify() {
        use p256::ecdsa::signature::Verifier;
        use p256::ecdsa::{Signature, SigningKey};
        let key = DeviceKey::from_bytes(&[7; 32]).expect("valid scalar");
        let a = key.sign(&[b"ab", b"c"]).expect("sign");
        let b = key.sign(&[b"abc"]).expect("sign");
        assert_eq!(a, b);
        let sig = Signature::from_slice(&a).expect("r||s");
        let reference = SigningKey::from_bytes(&[7; 32].into()).expect("valid scalar");
        reference
            .verifying_key()
            .verify(b"abc", &sig)
            .expect("verifies");
        assert!(DeviceKey::from_bytes(&[0; 32]).is_err());
        assert!(DeviceKey::from_bytes(&[0xff; 32]).is_err());
    }

    /// The same signatures and public keys as p256's SigningKey, which uses its own scalar
    /// multiplication, for keys and messages from a simple generator.
    #[test]
    fn signatures_and_public_keys_match_p256() {
        use p256::ecdsa::signature::Signer;
        use p256::ecdsa::{Signature, SigningKey};
        let mut seed = [0u8; 32];
        let mut compared = 0;
        for i in 0..24u8 {
            for (j, b) in seed.iter_mut().enumerate() {
                *b = b
                    .wrapping_mul(31)
                    .wrapping_add(i ^ j as u8)
                    .wrapping_add(17);
            }
            // Small and large scalars too, where the leading bits are zero or one.
            if i == 0 {
                seed = [0; 32];
                seed[31] = 1;
            }
            if i == 1 {
                seed = [0xff; 32];
                seed[0] = 0x7f;
            }
            let (Ok(key), Ok(reference)) = (
                DeviceKey::from_bytes(&seed),
                SigningKey::from_bytes(&seed.into()),
            ) else {
                continue;
            };
            let point = reference.verifying_key().to_encoded_point(false);
            let (x, y) = key.public_xy();
            assert_eq!(&point.as_bytes()[1..33], &x, "x of key {i}");
            assert_eq!(&point.as_bytes()[33..], &y, "y of key {i}");
            let message = [i; 40];
            let expected: Signature = reference.sign(&message[..usize::from(i)]);
            let got = key.sign(&[&message[..usize::from(i)]]).expect("sign");
            assert_eq!(&got[..], &expected.to_bytes()[..], "signature {i}");
            compared += 1;
        }
        assert!(compared >= 20, "{compared} keys compared");
    }

    fn hex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
        }
        out
    }

    /// RFC 6979 §A.2.5, ECDSA P-256 with SHA-256, message "sample": k, r and s.
    #[test]
    fn rfc6979_appendix_a_2_5() {
        let x = hex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721");
        let key = DeviceKey::from_bytes(&x).expect("valid");
        let k = rfc6979_k(&key.0, &digest(&[b"sample"])).expect("k");
        assert_eq!(
            k.to_repr()[..],
            hex("A6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60")
        );
        let sig = key.sign(&[b"sample"]).expect("sign");
        assert_eq!(
            sig[..32],
            hex("EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716")
        );
        assert_eq!(
            sig[32..],
            hex("F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8")
        );
    }

    /// RFC 4231 §4.3 (test case 2) and §4.7 (test case 6: a key longer than the block).
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        assert_eq!(
            hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        assert_eq!(
            hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            ),
            hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
    }

    #[test]
    fn key_round_trips_through_its_bytes() {
        let key = DeviceKey::from_bytes(&[9; 32]).expect("valid");
        assert_eq!(key.to_bytes(), [9; 32]);
        let account = AccountKey::new(key);
        assert_eq!(account.thumbprint().len(), 43);
        assert_eq!(account.pairing_code("tok").expect("code").as_str().len(), 9);
    }

    #[test]
    fn pairing_codes_follow_the_token() {
        let account = AccountKey::new(DeviceKey::from_bytes(&[9; 32]).expect("valid"));
        let a = account
            .pairing_code("hAuW5Ak5pwOYj9bWGSUbgA")
            .expect("code");
        let b = account
            .pairing_code("70JfMqfX-uRXMPCUc97GHQ")
            .expect("code");
        assert_ne!(a, b, "another request, another code");
        assert_eq!(
            a,
            pairing_code("hAuW5Ak5pwOYj9bWGSUbgA", account.thumbprint()).expect("code")
        );
        assert_eq!(
            account.pairing_code("../x"),
            Err(Error::BadJson("challenge token"))
        );
        assert_eq!(
            pairing_code("tok", "short"),
            Err(Error::Key),
            "not a thumbprint"
        );
    }
}
