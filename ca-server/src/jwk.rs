//! JSON Web Keys (RFC 7517/7518/8037): parsing into [`PublicKey`], RFC 7638 thumbprints and
//! signature verification for the JWS algorithms ACME accepts.

use protocol_spec::jwk::{Curve, Jwk};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use crate::key::{rsa_bits, PublicKey};
use crate::wire::{b64u, b64u_decode};
use crate::{wire, Error, Result};

fn member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::BadPublicKey(format!("JWK has no string member {name:?}")))
}

/// Parses a public JWK. Private members are refused: a client that sends its private key has
/// leaked it, and accepting it would hide the mistake.
pub fn parse(jwk: &Value) -> Result<PublicKey> {
    let obj = jwk
        .as_object()
        .ok_or_else(|| Error::BadPublicKey("JWK is not a JSON object".into()))?;
    if obj.contains_key("d") || obj.contains_key("p") {
        return Err(Error::BadPublicKey(
            "JWK contains private key material".into(),
        ));
    }
    let coord = |name: &str, len: usize| -> Result<Vec<u8>> {
        let v = b64u_decode(&format!("JWK {name}"), member(obj, name)?)?;
        if v.len() != len {
            return Err(Error::BadPublicKey(format!(
                "JWK {name} must be {len} bytes, got {}",
                v.len()
            )));
        }
        Ok(v)
    };
    let key = match member(obj, "kty")? {
        "EC" => {
            let (len, p384) = match member(obj, "crv")? {
                "P-256" => (32, false),
                "P-384" => (48, true),
                other => {
                    return Err(Error::BadPublicKey(format!(
                        "unsupported EC curve {other:?}: use P-256 or P-384"
                    )))
                }
            };
            let mut point = vec![0x04];
            point.extend(coord("x", len)?);
            point.extend(coord("y", len)?);
            if p384 {
                PublicKey::P384(point)
            } else {
                PublicKey::P256(point)
            }
        }
        "OKP" => match member(obj, "crv")? {
            "Ed25519" => PublicKey::Ed25519(coord("x", 32)?),
            other => {
                return Err(Error::BadPublicKey(format!(
                    "unsupported OKP curve {other:?}: use Ed25519"
                )))
            }
        },
        "RSA" => {
            let n = b64u_decode("JWK n", member(obj, "n")?)?;
            let e = b64u_decode("JWK e", member(obj, "e")?)?;
            // > The octet sequence MUST utilize the minimum number of octets needed to
            // > represent the value.  (RFC 7518 §6.3.1.1-2) Accepting a zero-padded key would
            // > let the client's thumbprint differ from ours for the same key.
            if n.first() == Some(&0) || e.first() == Some(&0) {
                return Err(Error::BadPublicKey(
                    "RSA JWK n and e must not have leading zero octets (RFC 7518 §6.3.1)".into(),
                ));
            }
            // RFC 8017 §3.1: an RSA public exponent is odd and at least 3. RS256 verification
            // (ring) also caps it at 2^33 - 1, so a larger one could never sign a request.
            let exponent = (e.len() <= 8)
                .then(|| e.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
                .filter(|v| (3..1 << 33).contains(v) && v % 2 == 1);
            if exponent.is_none() {
                return Err(Error::BadPublicKey(
                    "RSA JWK e must be an odd public exponent from 3 to 2^33 - 1 (RFC 8017 §3.1)"
                        .into(),
                ));
            }
            let key = PublicKey::rsa(&n, &e);
            if let PublicKey::Rsa { n, .. } = &key {
                let bits = rsa_bits(n);
                if !(2048..=8192).contains(&bits) {
                    return Err(Error::BadPublicKey(format!(
                        "RSA account keys must be 2048-8192 bits, got {bits}"
                    )));
                }
            }
            key
        }
        other => {
            return Err(Error::BadPublicKey(format!(
                "unsupported JWK kty {other:?}"
            )))
        }
    };
    key.check_point()?;
    Ok(key)
}

/// The RFC 7638 canonical JSON of a key (SPEC §5.2): only the required members, sorted, no
/// white space. Written by the shared helper, so the server, the clients and the vectors
/// agree octet for octet.
pub fn canonical_text(key: &PublicKey) -> String {
    let (a, b) = match key {
        PublicKey::P256(p) | PublicKey::P384(p) => {
            let half = (p.len() - 1) / 2;
            (b64u(&p[1..1 + half]), b64u(&p[1 + half..]))
        }
        PublicKey::Ed25519(x) => (b64u(x), String::new()),
        PublicKey::Rsa { n, e } => (b64u(n), b64u(e)),
    };
    let jwk = match key {
        PublicKey::P256(_) => Jwk::Ec {
            crv: Curve::P256,
            x: &a,
            y: &b,
        },
        PublicKey::P384(_) => Jwk::Ec {
            crv: Curve::P384,
            x: &a,
            y: &b,
        },
        PublicKey::Ed25519(_) => Jwk::Ed25519 { x: &a },
        PublicKey::Rsa { .. } => Jwk::Rsa { n: &a, e: &b },
    };
    // A parsed key always has a canonical form: the members are base64url the server wrote.
    wire::canonical_jwk(&jwk).unwrap_or_default()
}

/// The canonical JWK of a key as JSON, to show the account key back to the client.
pub fn canonical(key: &PublicKey) -> Value {
    serde_json::from_str(&canonical_text(key)).unwrap_or(Value::Null)
}

/// RFC 7638 thumbprint: base64url(SHA-256(canonical JWK with members in lexicographic order)).
pub fn thumbprint(key: &PublicKey) -> String {
    wire::thumbprint_of_canonical(&canonical_text(key))
}

/// Verifies a JWS signature made with `alg` by `key` over `signing_input`.
///
/// An EC key on the other curve than `alg` names (a P-384 key under ES256, a P-256 key under
/// ES384) is `badPublicKey`: the algorithm is one the server supports, and what it cannot use
/// is the key, which RFC 8555 §6.7 defines as "The JWS was signed by a public key the server
/// does not support". Any other mismatch of key type and `alg` (an RSA key under ES256, an EC
/// key under EdDSA) stays `badSignatureAlgorithm`, whose list of algorithms tells the client
/// what its key type needs (SPEC §3.3).
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-6.7>
pub fn verify(alg: &str, key: &PublicKey, signing_input: &[u8], sig: &[u8]) -> Result<()> {
    let mismatch = || {
        Error::BadSignatureAlgorithm(format!("{alg} (does not match the {} key)", key.describe()))
    };
    let wrong_curve = |curve: &str| {
        Error::BadPublicKey(format!(
            "the JWS alg {alg} needs a {curve} key, and this key is {}: sign with the \
             algorithm of the key's curve (ES256 for P-256, ES384 for P-384)",
            key.describe()
        ))
    };
    let bad_sig = || Error::Unauthorized("JWS signature does not verify".into());
    match (alg, key) {
        ("ES256", PublicKey::P256(p)) => {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p)
                .verify(signing_input, sig)
                .map_err(|_| bad_sig())
        }
        ("ES384", PublicKey::P384(p)) => {
            UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p)
                .verify(signing_input, sig)
                .map_err(|_| bad_sig())
        }
        ("EdDSA", PublicKey::Ed25519(x)) => UnparsedPublicKey::new(&signature::ED25519, x)
            .verify(signing_input, sig)
            .map_err(|_| bad_sig()),
        ("RS256", PublicKey::Rsa { n, e }) => RsaPublicKeyComponents { n, e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signing_input, sig)
            .map_err(|_| bad_sig()),
        ("ES256", PublicKey::P384(_)) => Err(wrong_curve("P-256")),
        ("ES384", PublicKey::P256(_)) => Err(wrong_curve("P-384")),
        ("ES256" | "ES384" | "EdDSA" | "RS256", _) => Err(mismatch()),
        (other, _) => Err(Error::BadSignatureAlgorithm(other.to_owned())),
    }
}

/// `alg` values accepted on JWS requests, also sent with `badSignatureAlgorithm`.
pub const SUPPORTED_ALGORITHMS: &[&str] = &["ES256", "ES384", "EdDSA", "RS256"];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // RFC 7638 §3.1 example key and its thumbprint.
    // <https://www.rfc-editor.org/rfc/rfc7638#section-3.1>
    #[test]
    fn rfc7638_example_thumbprint() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let key = parse(&jwk).expect("parse");
        assert_eq!(
            thumbprint(&key),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn es256_roundtrip_and_tamper() {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("gen");
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("kp");
        let key = PublicKey::P256(kp.public_key().as_ref().to_vec());
        let jwk = canonical(&key);
        assert_eq!(parse(&jwk).expect("reparse"), key);
        let sig = kp.sign(&rng, b"hello").expect("sign");
        assert!(verify("ES256", &key, b"hello", sig.as_ref()).is_ok());
        assert!(verify("ES256", &key, b"hellO", sig.as_ref()).is_err());
        // A P-256 key under ES384: the key is on the wrong curve for the algorithm.
        assert!(matches!(
            verify("ES384", &key, b"hello", sig.as_ref()),
            Err(Error::BadPublicKey(_))
        ));
        assert!(matches!(
            verify("HS256", &key, b"hello", sig.as_ref()),
            Err(Error::BadSignatureAlgorithm(_))
        ));
        assert!(matches!(
            verify("none", &key, b"hello", b""),
            Err(Error::BadSignatureAlgorithm(_))
        ));
    }

    /// ES256/ES384 with a key of the other curve is `badPublicKey`; every other pairing of a
    /// supported alg with the wrong key type is `badSignatureAlgorithm`.
    #[test]
    fn wrong_curve_for_alg_is_bad_public_key_other_mismatches_bad_signature_algorithm() {
        use ring::signature::{
            EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
            ECDSA_P384_SHA384_FIXED_SIGNING,
        };
        let rng = ring::rand::SystemRandom::new();
        let ec = |alg| {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("gen");
            let kp = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("kp");
            kp.public_key().as_ref().to_vec()
        };
        let p256 = PublicKey::P256(ec(&ECDSA_P256_SHA256_FIXED_SIGNING));
        let p384 = PublicKey::P384(ec(&ECDSA_P384_SHA384_FIXED_SIGNING));
        let ed =
            Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).expect("gen").as_ref())
                .expect("kp");
        let ed25519 = PublicKey::Ed25519(ed.public_key().as_ref().to_vec());
        let rsa = PublicKey::rsa(&[0xc5; 256], &[1, 0, 1]);
        for (alg, key, curve) in [("ES256", &p384, "P-256"), ("ES384", &p256, "P-384")] {
            match verify(alg, key, b"x", &[0; 96]) {
                Err(Error::BadPublicKey(detail)) => assert!(
                    detail.starts_with(&format!("the JWS alg {alg} needs a {curve} key")),
                    "{detail}"
                ),
                other => panic!("{alg} with {}: {other:?}", key.describe()),
            }
        }
        for (alg, key) in [
            ("ES256", &ed25519),
            ("ES256", &rsa),
            ("ES384", &ed25519),
            ("ES384", &rsa),
            ("EdDSA", &p256),
            ("EdDSA", &p384),
            ("EdDSA", &rsa),
            ("RS256", &p256),
            ("RS256", &p384),
            ("RS256", &ed25519),
        ] {
            assert!(
                matches!(
                    verify(alg, key, b"x", &[0; 96]),
                    Err(Error::BadSignatureAlgorithm(_))
                ),
                "{alg} with {}",
                key.describe()
            );
        }
    }

    #[test]
    fn es384_and_eddsa_verify_through_their_jwks() {
        use ring::signature::{
            EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING,
        };
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).expect("gen");
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("kp");
        let key = parse(&canonical(&PublicKey::P384(
            kp.public_key().as_ref().to_vec(),
        )))
        .expect("P-384 JWK");
        let sig = kp.sign(&rng, b"msg").expect("sign");
        assert!(verify("ES384", &key, b"msg", sig.as_ref()).is_ok());
        assert!(matches!(
            verify("ES256", &key, b"msg", sig.as_ref()),
            Err(Error::BadPublicKey(_))
        ));

        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("gen");
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("kp");
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64u(kp.public_key().as_ref())});
        let key = parse(&jwk).expect("Ed25519 JWK");
        let sig = kp.sign(b"msg");
        assert!(verify("EdDSA", &key, b"msg", sig.as_ref()).is_ok());
        assert!(verify("EdDSA", &key, b"msG", sig.as_ref()).is_err());
    }

    /// ring cannot generate RSA keys, so openssl (installed by the test setup) makes one and
    /// signs; the JWK is built from the modulus openssl prints.
    #[test]
    fn rs256_verifies_through_its_jwk() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = dir.path().join("k.pem");
        let msg = dir.path().join("m");
        let sig = dir.path().join("s");
        let run = |args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl is installed by scripts/install-test-deps.sh");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let os = |s: &str| std::ffi::OsString::from(s);
        run(&[&os("genrsa"), &os("-out"), key.as_os_str(), &os("2048")]);
        std::fs::write(&msg, b"signing input").expect("write");
        run(&[
            &os("dgst"),
            &os("-sha256"),
            &os("-sign"),
            key.as_os_str(),
            &os("-out"),
            sig.as_os_str(),
            msg.as_os_str(),
        ]);
        let modulus = String::from_utf8(run(&[
            &os("rsa"),
            &os("-in"),
            key.as_os_str(),
            &os("-noout"),
            &os("-modulus"),
        ]))
        .expect("utf8");
        let n = hex::decode(modulus.trim().trim_start_matches("Modulus=")).expect("hex");
        let jwk = json!({"kty": "RSA", "n": b64u(&n), "e": "AQAB"});
        let key = parse(&jwk).expect("RSA JWK");
        let sig = std::fs::read(&sig).expect("sig");
        assert!(verify("RS256", &key, b"signing input", &sig).is_ok());
        assert!(verify("RS256", &key, b"signing inpuT", &sig).is_err());
        assert!(matches!(
            verify("ES256", &key, b"signing input", &sig),
            Err(Error::BadSignatureAlgorithm(_))
        ));
    }

    /// An Ed25519 account key of small order is refused before any signature is checked:
    /// under the identity point, R = identity and s = 0 verify every message.
    #[test]
    fn small_order_ed25519_jwks_are_refused() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let key = PublicKey::Ed25519(identity.to_vec());
        // What the check stands between: ring accepts this forged signature.
        let forged = [identity.as_slice(), &[0; 32]].concat();
        assert!(verify("EdDSA", &key, b"any message", &forged).is_ok());
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64u(identity)});
        match parse(&jwk) {
            Err(Error::BadPublicKey(detail)) => {
                assert!(detail.contains("small order"), "{detail}");
            }
            other => panic!("expected badPublicKey, got {other:?}"),
        }
        // An x that is no point at all (y = 2 has no x on the curve).
        let mut y2 = [0u8; 32];
        y2[0] = 2;
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64u(y2)});
        assert!(
            matches!(parse(&jwk), Err(Error::BadPublicKey(d)) if d.contains("not a point")),
            "{jwk}"
        );
    }

    #[test]
    fn bad_jwks_are_refused() {
        for jwk in [
            json!("x"),
            json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}),
            json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
            json!({"kty": "oct", "k": "AAAA"}),
            json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
            // A 2048-bit n with exponents that are empty (0), 1, even, or above 2^33 - 1.
            json!({"kty": "RSA", "n": b64u([0xc5; 256]), "e": ""}),
            json!({"kty": "RSA", "n": b64u([0xc5; 256]), "e": "AQ"}),
            json!({"kty": "RSA", "n": b64u([0xc5; 256]), "e": "AQAA"}),
            json!({"kty": "RSA", "n": b64u([0xc5; 256]), "e": b64u([2, 0, 0, 0, 1])}),
            // A point not on the curve: x = y = 1.
            json!({"kty": "EC", "crv": "P-256",
                   "x": b64u([[0u8; 31].as_slice(), &[1]].concat()),
                   "y": b64u([[0u8; 31].as_slice(), &[1]].concat())}),
        ] {
            assert!(parse(&jwk).is_err(), "{jwk}");
        }
    }
}
