//! Runs the shared test vectors (`protocol-spec/vectors`, SPEC §1.5) against the device
//! client's own functions: the same bytes the server and the embedded client run.
//!
//! A vector the client cannot run is listed in `vectors-skip.toml` with the reason. Listing a
//! whole file uses the key `"*"`. An entry for a single id records a known failure, so the run
//! fails as soon as that vector passes, and the stale entry must go.

use device_client::cert::ari_cert_id;
use device_client::enroll::pairing_code_for_thumbprint;
use device_client::jws::{key_authorization, key_authorization_for_thumbprint};
use device_client::key::Jwk;
use device_client::trust::{fingerprint_text, sha256};
use device_client::{Identifier, ProblemType, TrustAnchor};
use protocol_spec::runner::{field, hex_field, Runner, Vector};
use serde_json::Value;

/// The vector files this binary runs; every other file must be skipped as a whole.
const RUN: &[&str] = &[
    "ari_cert_id",
    "fingerprint",
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64url_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .expect("vector base64url")
}

/// The client's JWK type from a vector's JWK: EC only, other members ignored.
fn ec_jwk(v: &Value) -> Result<Jwk, String> {
    if v["kty"] != "EC" {
        return Err(format!("kty {} is not EC", v["kty"]));
    }
    let crv = match field(v, "crv")? {
        "P-256" => "P-256",
        "P-384" => "P-384",
        other => return Err(format!("curve {other}")),
    };
    Ok(Jwk {
        crv,
        kty: "EC",
        x: field(v, "x")?.to_owned(),
        y: field(v, "y")?.to_owned(),
    })
}

#[test]
fn every_file_is_run_or_skipped() {
    Runner::new(include_str!("vectors-skip.toml"), RUN).check_coverage();
}

/// SPEC §2.3: fingerprints computed from a certificate, and parsed from operator text.
#[test]
fn fingerprint() {
    run("fingerprint", |v| {
        if let Some(der) = v.input["certificate_der_b64url"].as_str() {
            let der = b64url_decode(der);
            let got = fingerprint_text(&sha256(&der));
            if got != field(&v.expect, "fingerprint")? {
                return Err(format!("computed {got}"));
            }
            let anchor = TrustAnchor::from_root_bytes(&der)?;
            if anchor.fingerprint_text() != got {
                return Err("root file anchor has another fingerprint".into());
            }
            return Ok(());
        }
        let text = field(&v.input, "text")?;
        match (
            TrustAnchor::from_fingerprint(text),
            v.expect["error"].as_str(),
        ) {
            (Ok(TrustAnchor::Fingerprint(fp)), None) => (hex(&fp)
                == field(&v.expect, "sha256_hex")?)
            .then_some(())
            .ok_or_else(|| format!("parsed {}", hex(&fp))),
            (Err(e), Some(kind)) => {
                let want = match kind {
                    "length" => "32 hex pairs",
                    "digit" => "hex digit",
                    "separator" => "separated",
                    other => return Err(format!("unknown error kind {other}")),
                };
                e.to_string()
                    .contains(want)
                    .then_some(())
                    .ok_or_else(|| format!("refused with {e}, expected {kind}"))
            }
            (got, want) => Err(format!("got {got:?}, expected error {want:?}")),
        }
    });
}

/// SPEC §5.2: thumbprints of EC account keys; the JWK's JSON is already canonical.
#[test]
fn thumbprint() {
    run("thumbprint", |v| {
        let jwk = ec_jwk(&v.input["jwk"])?;
        let canonical = serde_json::to_string(&jwk).map_err(|e| e.to_string())?;
        if canonical != field(&v.expect, "canonical")? {
            return Err(format!("canonical JSON {canonical}"));
        }
        let tp = jwk.thumbprint().map_err(|e| e.to_string())?;
        (tp == field(&v.expect, "thumbprint")?)
            .then_some(())
            .ok_or_else(|| format!("thumbprint {tp}"))
    });
}

/// SPEC §5.2: key authorizations, and the tokens that must never reach a path.
#[test]
fn key_authorization_vectors() {
    run("key_authorization", |v| {
        let token = field(&v.input, "token")?;
        let got = if v.input.get("jwk").is_some() {
            key_authorization(token, &ec_jwk(&v.input["jwk"])?)
        } else {
            key_authorization_for_thumbprint(token, field(&v.input, "thumbprint")?)
        };
        match (got, v.expect["error"].as_str()) {
            (Ok(ka), None) => {
                if ka != field(&v.expect, "key_authorization")? {
                    return Err(format!("key authorization {ka}"));
                }
                let digest = sha256(ka.as_bytes());
                (hex(&digest) == field(&v.expect, "sha256_hex")?)
                    .then_some(())
                    .ok_or_else(|| "digest differs".to_owned())
            }
            (Err(e), Some(kind)) => e
                .to_string()
                .contains(kind)
                .then_some(())
                .ok_or_else(|| format!("refused with {e}, expected {kind}")),
            (got, want) => Err(format!("got {got:?}, expected error {want:?}")),
        }
    });
}

/// SPEC §4: the client normalises and checks identifiers as the server will, so it never sends
/// one the server refuses.
#[test]
fn identifiers() {
    run("identifiers", |v| {
        let value = field(&v.input, "value")?;
        let got = match field(&v.input, "type")? {
            "dns" => Identifier::dns(value),
            "ip" => Identifier::ip_text(value),
            "permanent-identifier" => Identifier::permanent(value),
            other => return Err(format!("type {other}")),
        };
        match (
            got,
            v.expect["value"].as_str(),
            v.expect["problem"].as_str(),
        ) {
            (Ok(id), Some(want), _) => {
                if id.value != want {
                    return Err(format!("normalised to {}", id.value));
                }
                // The lenient CLI form gives the same canonical value.
                let again = Identifier::parse(&format!("{}:{value}", id.kind))
                    .map_err(|e| e.to_string())?;
                (again == id)
                    .then_some(())
                    .ok_or_else(|| format!("CLI form gives {again}"))
            }
            (Err(e), None, Some(problem)) => {
                let short = problem.trim_start_matches("urn:ietf:params:acme:error:");
                e.to_string()
                    .contains(&format!(": {short}:"))
                    .then_some(())
                    .ok_or_else(|| format!("refused with {e}, expected {short}"))
            }
            (got, want, problem) => Err(format!("got {got:?}, expected {want:?}/{problem:?}")),
        }
    });
}

/// SPEC §3.8: every problem type the server uses is one the client knows by name.
#[test]
fn problems() {
    run("problems", |v| {
        let uri = field(&v.expect, "type")?;
        match ProblemType::from_urn(uri) {
            Some(t) if t.urn() == uri => Ok(()),
            t => Err(format!("{uri} is {t:?} to the client")),
        }
    });
}

/// SPEC §5.9: the pairing code the device shows for operator approval.
#[test]
fn pairing_code() {
    run("pairing_code", |v| {
        let got =
            pairing_code_for_thumbprint(field(&v.input, "token")?, field(&v.input, "thumbprint")?);
        match (got, v.expect.get("error")) {
            (Err(_), Some(_)) => Ok(()),
            (Ok(code), None) if code == field(&v.expect, "pairing_code")? => Ok(()),
            (got, _) => Err(format!("pairing code {got:?}")),
        }
    });
}

/// SPEC §3.8: the client reads each type URN as its type, and any other text as no type.
#[test]
fn problem_types() {
    run("problem_types", |v| {
        let problem = device_client::Problem {
            type_uri: field(&v.input, "urn")?.to_owned(),
            ..Default::default()
        };
        let got = problem.kind().map(ProblemType::name);
        (got == v.expect["name"].as_str())
            .then_some(())
            .ok_or_else(|| format!("the client reads it as {got:?}"))
    });
}

/// SPEC §9.2: the certificate identifier the client asks the CA about and puts in `replaces`.
#[test]
fn ari_cert_id_vectors() {
    run("ari_cert_id", |v| {
        let Some(want) = v.expect["cert_id"].as_str() else {
            return Err("the client writes certificate identifiers and never reads one".into());
        };
        let aki = hex_field(&v.input, "aki_hex")?;
        let serial = hex_field(&v.input, "serial_hex")?;
        match ari_cert_id(&aki, &serial) {
            Some(id) if id == want => Ok(()),
            got => Err(format!("certificate identifier {got:?}")),
        }
    });
}
