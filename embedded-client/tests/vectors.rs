//! Runs the shared test vectors (`protocol-spec/vectors`, SPEC §1.5) against the embedded
//! client's own functions: the same bytes the server and the std client run.
//!
//! A vector the client cannot run is listed in `vectors-skip.toml` with the reason.

use embedded_client::attest::{attestation_object, IdevidSigner, SignerError};
use embedded_client::key::{pairing_code, thumbprint};
use embedded_client::renewal::RenewalCheck;
use embedded_client::{Error, Identifier, ProblemKind};
use protocol_spec::jwk::{Curve, Jwk};
use protocol_spec::runner::{field, hex, hex_field, Runner, Vector};
use serde_json::Value;
use sha2::{Digest, Sha256};

const RUN: &[&str] = &[
    "ari_cert_id",
    "attestation_object",
    "identifiers",
    "key_authorization",
    "pairing_code",
    "problem_types",
    "problems",
    "thumbprint",
];

fn run(stem: &str, check: impl Fn(&Vector) -> Result<(), String>) {
    Runner::new(include_str!("vectors-skip.toml"), RUN).run(stem, check);
}

#[test]
fn every_file_is_run_or_skipped() {
    Runner::new(include_str!("vectors-skip.toml"), RUN).check_coverage();
}

fn jwk(v: &Value) -> Result<Jwk<'_>, String> {
    match (field(v, "kty")?, v["crv"].as_str()) {
        ("EC", Some(crv)) => Ok(Jwk::Ec {
            crv: match crv {
                "P-256" => Curve::P256,
                "P-384" => Curve::P384,
                other => return Err(format!("curve {other}")),
            },
            x: field(v, "x")?,
            y: field(v, "y")?,
        }),
        ("OKP", Some("Ed25519")) => Ok(Jwk::Ed25519 { x: field(v, "x")? }),
        ("RSA", _) => Ok(Jwk::Rsa {
            n: field(v, "n")?,
            e: field(v, "e")?,
        }),
        (kty, crv) => Err(format!("kty {kty} crv {crv:?}")),
    }
}

fn text(t: &[u8]) -> String {
    String::from_utf8_lossy(t).into_owned()
}

/// SPEC §5.2: the thumbprint the key authorization and the pairing code are built from.
#[test]
fn thumbprints() {
    run("thumbprint", |v| {
        let got = thumbprint(&jwk(&v.input["jwk"])?).map_err(|e| e.to_string())?;
        (text(&got) == field(&v.expect, "thumbprint")?)
            .then_some(())
            .ok_or_else(|| format!("thumbprint {}", text(&got)))
    });
}

/// SPEC §5.2: key authorizations as device-attest-01 signs them.
#[test]
fn key_authorizations() {
    run("key_authorization", |v| {
        let token = field(&v.input, "token")?;
        let tp = match v.input.get("jwk") {
            Some(j) => text(&thumbprint(&jwk(j)?).map_err(|e| e.to_string())?),
            None => field(&v.input, "thumbprint")?.to_owned(),
        };
        let mut out = [0u8; 128];
        let got = protocol_spec::challenge::key_authorization(token, &tp, &mut out);
        match (got, v.expect["error"].as_str()) {
            (Ok(ka), None) => {
                if ka != field(&v.expect, "key_authorization")? {
                    return Err(format!("key authorization {ka}"));
                }
                let digest: String = Sha256::digest(ka.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                (digest == field(&v.expect, "sha256_hex")?)
                    .then_some(())
                    .ok_or_else(|| "digest differs".to_owned())
            }
            (Err(e), Some(kind)) => format!("{e:?}")
                .to_lowercase()
                .contains(kind)
                .then_some(())
                .ok_or_else(|| format!("refused with {e:?}, expected {kind}")),
            (got, want) => Err(format!("got {got:?}, expected error {want:?}")),
        }
    });
}

/// SPEC §5.9: the code the device shows is the one the operator sees.
#[test]
fn pairing_codes() {
    run("pairing_code", |v| {
        let got = pairing_code(field(&v.input, "token")?, field(&v.input, "thumbprint")?);
        match (got, v.expect.get("error")) {
            (Err(_), Some(_)) => Ok(()),
            (Ok(code), None) if code.as_str() == field(&v.expect, "pairing_code")? => Ok(()),
            (got, _) => Err(format!("code {got:?}")),
        }
    });
}

/// SPEC §3.8: every problem type the server uses is one the client tells apart.
#[test]
fn problems() {
    run("problems", |v| {
        let t = field(&v.expect, "type")?;
        match ProblemKind::from_type(t) {
            ProblemKind::Other => Err(format!("{t} is unknown to the client")),
            _ => Ok(()),
        }
    });
}

/// SPEC §4: the client accepts exactly the identifiers the server keeps as written, and refuses
/// the ones the server would refuse or rewrite, before sending anything.
#[test]
fn identifiers() {
    run("identifiers", |v| {
        let value = field(&v.input, "value")?;
        let id = match field(&v.input, "type")? {
            "dns" => Identifier::Dns(value),
            "ip" => Identifier::Ip(value),
            "permanent-identifier" => Identifier::Permanent(value),
            other => return Err(format!("type {other}")),
        };
        let got = id.validate();
        match (got, v.expect["value"].as_str()) {
            (Ok(()), Some(want)) if want == value => Ok(()),
            (Err(Error::Config(_)), Some(want)) if want != value => Ok(()),
            (Err(Error::Config(_)), None) => Ok(()),
            (got, want) => Err(format!("got {got:?}, server keeps {want:?}")),
        }
    });
}

/// SPEC §3.8: each type URN maps to its kind, and any other text to `Other`.
#[test]
fn problem_types() {
    run("problem_types", |v| {
        let kind = ProblemKind::from_type(field(&v.input, "urn")?);
        match (kind, v.expect["name"].as_str()) {
            (ProblemKind::Other, None) => Ok(()),
            (ProblemKind::Other, Some(name)) => Err(format!("{name} is unknown to the client")),
            (kind, None) => Err(format!("mapped to {kind:?}")),
            (_, Some(_)) => Ok(()),
        }
    });
}

/// SPEC §9.2: [`RenewalCheck`] takes exactly the well-formed certificate identifiers.
#[test]
fn ari_cert_ids() {
    run("ari_cert_id", |v| {
        let id = match v.expect["cert_id"].as_str() {
            Some(id) => id,
            None => field(&v.input, "cert_id")?,
        };
        let got = RenewalCheck::new("https://ca.example:14000", id).map(|_| ());
        match (got, v.expect.get("cert_id")) {
            (Ok(()), Some(_)) | (Err(Error::Config(_)), None) => Ok(()),
            (got, _) => Err(format!("RenewalCheck::new gives {got:?}")),
        }
    });
}

/// A signer that hands out a vector's statement.
struct Fixed {
    alg: i32,
    sig: Vec<u8>,
    x5c: Vec<Vec<u8>>,
}

impl IdevidSigner for Fixed {
    fn cose_alg(&self) -> i32 {
        self.alg
    }

    fn certificate(&self, index: usize) -> Option<&[u8]> {
        self.x5c.get(index).map(Vec::as_slice)
    }

    fn sign(&mut self, _: &[u8], out: &mut [u8]) -> Result<usize, SignerError> {
        let dst = out
            .get_mut(..self.sig.len())
            .ok_or(SignerError::BufferTooSmall)?;
        dst.copy_from_slice(&self.sig);
        Ok(self.sig.len())
    }
}

/// SPEC §5.10.2: the client's CBOR writer produces each vector's object octet for octet.
#[test]
fn attestation_objects() {
    run("attestation_object", |v| {
        if field(&v.input, "fmt")? != "iiot-idevid" {
            return Err("the client writes only the iiot-idevid format".into());
        }
        let alg = v.input["alg"].as_i64().ok_or("no alg")?;
        let x5c = v.input["x5c_hex"]
            .as_array()
            .ok_or("no x5c_hex")?
            .iter()
            .map(|c| {
                c.as_str()
                    .ok_or("a certificate is not a string")
                    .map_err(String::from)
                    .and_then(hex)
            })
            .collect::<Result<_, _>>()?;
        let mut signer = Fixed {
            alg: i32::try_from(alg).map_err(|e| e.to_string())?,
            sig: hex_field(&v.input, "sig_hex")?,
            x5c,
        };
        let mut out = vec![0u8; 2048];
        let n = attestation_object(&mut signer, "token.thumbprint", &mut out)
            .map_err(|e| format!("refused: {e:?}"))?;
        let want = hex_field(&v.expect, "att_obj_hex")?;
        (out[..n] == want[..])
            .then_some(())
            .ok_or_else(|| "the client writes other octets".to_owned())
    });
}
