//! Runs every vector that concerns this crate's helpers, and checks that all vector files are
//! well formed and cite sections that exist in SPEC.md.

use std::collections::BTreeSet;
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use serde_json::Value;

use crate::{
    ari, attestation, base64url, challenge, fingerprint, identifier, jwk, pairing, problem, vectors,
};

const SPEC: &str = include_str!("../SPEC.md");

struct Vector {
    id: String,
    input: Value,
    expect: Value,
}

fn load(file: &str) -> Vec<Vector> {
    let (_, text) = vectors::ALL
        .iter()
        .find(|(name, _)| *name == file)
        .unwrap_or_else(|| panic!("no vector file {file}"));
    let entries: Vec<Value> = serde_json::from_str(text).expect("vector file is a JSON array");
    entries
        .into_iter()
        .map(|e| Vector {
            id: e["id"].as_str().expect("id").to_string(),
            input: e["input"].clone(),
            expect: e["expect"].clone(),
        })
        .collect()
}

fn str_of<'v>(v: &'v Value, field: &str, id: &str) -> &'v str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{id}: {field} is not a string"))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The section numbers SPEC.md defines: "§2" for "## 2.", "§2.3" for "### 2.3" and "§5.10.2"
/// for "#### 5.10.2".
fn spec_sections() -> BTreeSet<String> {
    SPEC.lines()
        .filter_map(|l| {
            let rest = ["## ", "### ", "#### "]
                .iter()
                .find_map(|h| l.strip_prefix(h))?;
            let num = rest.split_whitespace().next()?.trim_end_matches('.');
            num.chars()
                .all(|c| c.is_ascii_digit() || c == '.')
                .then(|| format!("§{num}"))
        })
        .collect()
}

#[test]
fn vector_files_are_well_formed_and_cite_real_sections() {
    let sections = spec_sections();
    assert!(
        sections.contains("§3.7") && sections.contains("§11"),
        "{sections:?}"
    );
    for (file, text) in vectors::ALL {
        let entries: Vec<Value> = serde_json::from_str(text).expect("JSON array");
        assert!(!entries.is_empty(), "{file} is empty");
        let mut ids = BTreeSet::new();
        for e in &entries {
            let obj = e.as_object().expect("entry is an object");
            let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                BTreeSet::from(["id", "rfc", "spec", "provenance", "input", "expect"]),
                "{file}: {e}"
            );
            let id = str_of(e, "id", "?");
            assert!(ids.insert(id.to_string()), "{file}: duplicate id {id}");
            for field in ["rfc", "provenance"] {
                assert!(
                    !str_of(e, field, id).is_empty(),
                    "{file}/{id}: empty {field}"
                );
            }
            for cite in str_of(e, "spec", id).split(", ") {
                assert!(
                    sections.contains(cite),
                    "{file}/{id}: no section {cite} in SPEC.md"
                );
            }
        }
    }
}

#[test]
fn problem_vectors_use_only_types_from_the_spec_table() {
    for v in load("problems") {
        let urn = str_of(&v.expect, "type", &v.id);
        let name = urn
            .strip_prefix("urn:ietf:params:acme:error:")
            .unwrap_or_else(|| panic!("{}: {urn} is not an ACME error URN", v.id));
        let status = v.expect["status"].as_u64().expect("status");
        let listed = SPEC.lines().any(|l| {
            l.starts_with('|')
                && l.contains(&format!("`{name}`"))
                && l.contains(&format!("| {status} "))
        });
        assert!(
            listed,
            "{}: {name} {status} is not in the SPEC §3.8 table",
            v.id
        );
    }
}

/// Every type SPEC §3.8's table lists, and every type problems.json expects, is in the one
/// table of `problem::Type`, and so are the types the identifier checks name.
#[test]
fn problem_types_of_the_spec_and_the_vectors_are_in_the_table() {
    let section = SPEC
        .split("### 3.8 Errors")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("SPEC §3.8");
    let mut listed = 0;
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).expect("first cell");
        for name in first.split('`').skip(1).step_by(2) {
            assert!(
                problem::Type::from_name(name).is_some(),
                "SPEC §3.8 lists {name}, which problem::Type lacks"
            );
            listed += 1;
        }
    }
    assert!(listed > 25, "read only {listed} types from SPEC §3.8");
    for v in load("problems") {
        let urn = str_of(&v.expect, "type", &v.id);
        assert!(problem::Type::from_urn(urn).is_some(), "{}: {urn}", v.id);
    }
    for e in [
        identifier::IdentifierError::Malformed(identifier::Reason::NameLength),
        identifier::IdentifierError::Rejected(identifier::Reason::NameLength),
    ] {
        assert!(problem::Type::from_name(e.problem_type()).is_some(), "{e}");
    }
}

/// SPEC §3.8: each URN maps to its type and back; other text maps to none.
#[test]
fn problem_type_vectors() {
    let mut seen = BTreeSet::new();
    for v in load("problem_types") {
        let urn = str_of(&v.input, "urn", &v.id);
        let got = problem::Type::from_urn(urn);
        assert_eq!(
            got.map(problem::Type::name),
            v.expect["name"].as_str(),
            "{}",
            v.id
        );
        if let Some(t) = got {
            assert_eq!(t.urn(), urn, "{}", v.id);
            seen.insert(t);
        }
    }
    // The file lists every type of the table.
    assert_eq!(seen.len(), problem::Type::ALL.len());
}

/// SPEC §9.2 (RFC 9773 §4.1): identifiers written from their octets, and malformed ones
/// refused for the reason the vector names.
#[test]
fn ari_cert_id_vectors() {
    for v in load("ari_cert_id") {
        let mut out = [0u8; 128];
        if let Some(want) = v.expect.get("cert_id") {
            let aki = unhex(str_of(&v.input, "aki_hex", &v.id));
            let serial = unhex(str_of(&v.input, "serial_hex", &v.id));
            let id =
                ari::cert_id(&aki, &serial, &mut out).unwrap_or_else(|e| panic!("{}: {e}", v.id));
            assert_eq!(Some(id), want.as_str(), "{}", v.id);
            assert_eq!(
                id.len(),
                ari::cert_id_len(aki.len(), serial.len()),
                "{}",
                v.id
            );
            let id = id.to_string();
            let mut back = [0u8; 128];
            let (a, s) = ari::decode(&id, &mut back).unwrap_or_else(|e| panic!("{}: {e}", v.id));
            assert_eq!((a, s), (&aki[..], &serial[..]), "{}", v.id);
            continue;
        }
        let id = str_of(&v.input, "cert_id", &v.id);
        let err = ari::CertId::parse(id).expect_err(&v.id);
        assert_eq!(ari::decode(id, &mut out), Err(err), "{}", v.id);
        assert_eq!(err.name(), str_of(&v.expect, "error", &v.id), "{}", v.id);
        assert_eq!(
            err.part().map(ari::Part::name),
            v.expect["part"].as_str(),
            "{}",
            v.id
        );
        let b64 = match err {
            ari::CertIdError::Encoding(_, e) => Some(e.name()),
            _ => None,
        };
        assert_eq!(b64, v.expect["base64url"].as_str(), "{}", v.id);
    }
}

/// The statement of a vector: `fmt`, `alg`, and the octets of `sig` and `x5c` decoded by
/// `octets` from the members named with `suffix`.
fn statement_parts(
    stmt: &Value,
    suffix: &str,
    octets: impl Fn(&str) -> Vec<u8>,
) -> (String, i64, Vec<u8>, Vec<Vec<u8>>) {
    let sig = octets(stmt[format!("sig_{suffix}")].as_str().expect("sig"));
    let x5c = stmt[format!("x5c_{suffix}")]
        .as_array()
        .expect("x5c")
        .iter()
        .map(|c| octets(c.as_str().expect("certificate")))
        .collect();
    let fmt = stmt["fmt"].as_str().expect("fmt").to_string();
    (fmt, stmt["alg"].as_i64().expect("alg"), sig, x5c)
}

fn encode_statement(fmt: &str, alg: i64, sig: &[u8], x5c: &[Vec<u8>]) -> Vec<u8> {
    let x5c: Vec<&[u8]> = x5c.iter().map(Vec::as_slice).collect();
    let stmt = attestation::Statement {
        fmt,
        alg,
        sig,
        x5c: &x5c,
    };
    let mut out = std::vec![0u8; stmt.encoded_len()];
    let n = attestation::encode(&stmt, &mut out).expect("sized").len();
    assert_eq!(n, out.len());
    out
}

/// SPEC §5.10.2: the encoder writes each vector's object octet for octet.
#[test]
fn attestation_object_vectors() {
    for v in load("attestation_object") {
        let (fmt, alg, sig, x5c) = statement_parts(&v.input, "hex", unhex);
        assert_eq!(
            hex(&encode_statement(&fmt, alg, &sig, &x5c)),
            str_of(&v.expect, "att_obj_hex", &v.id),
            "{}",
            v.id
        );
    }
}

#[test]
fn base64url_vectors() {
    for v in load("base64url") {
        let input = str_of(&v.input, "encoded", &v.id);
        let mut out = [0u8; 64];
        let got = base64url::decode(input, &mut out);
        match v.expect.get("decoded_hex") {
            Some(h) => {
                let want = unhex(h.as_str().expect("hex"));
                assert_eq!(got.map(<[u8]>::to_vec), Ok(want.clone()), "{}", v.id);
                let mut text = [0u8; 88];
                assert_eq!(base64url::encode(&want, &mut text), Ok(input), "{}", v.id);
            }
            None => {
                let want = str_of(&v.expect, "error", &v.id);
                assert_eq!(
                    got.map_err(base64url::DecodeError::name),
                    Err(want),
                    "{}",
                    v.id
                );
                assert!(base64url::validate(input).is_err(), "{}", v.id);
            }
        }
    }
}

/// The helper's view of a JWK object from a vector.
fn jwk_of(v: &Value) -> jwk::Jwk<'_> {
    let s = |k: &str| v[k].as_str().expect("JWK member");
    match s("kty") {
        "EC" => jwk::Jwk::Ec {
            crv: match s("crv") {
                "P-256" => jwk::Curve::P256,
                "P-384" => jwk::Curve::P384,
                other => panic!("curve {other}"),
            },
            x: s("x"),
            y: s("y"),
        },
        "OKP" => jwk::Jwk::Ed25519 { x: s("x") },
        "RSA" => jwk::Jwk::Rsa {
            n: s("n"),
            e: s("e"),
        },
        other => panic!("kty {other}"),
    }
}

fn thumbprint(jwk: &jwk::Jwk<'_>) -> String {
    let mut buf = [0u8; 1024];
    let canonical = jwk::canonical_json(jwk, &mut buf).expect("canonical JSON");
    let mut tp = [0u8; jwk::THUMBPRINT_LEN];
    jwk::thumbprint_text(&sha256(canonical.as_bytes()), &mut tp).to_string()
}

#[test]
fn thumbprint_vectors() {
    for v in load("thumbprint") {
        let key = jwk_of(&v.input["jwk"]);
        let mut buf = [0u8; 1024];
        assert_eq!(
            jwk::canonical_json(&key, &mut buf),
            Ok(str_of(&v.expect, "canonical", &v.id)),
            "{}",
            v.id
        );
        assert_eq!(
            thumbprint(&key),
            str_of(&v.expect, "thumbprint", &v.id),
            "{}",
            v.id
        );
    }
}

#[test]
fn key_authorization_vectors() {
    for v in load("key_authorization") {
        let token = str_of(&v.input, "token", &v.id);
        let tp = match v.input.get("jwk") {
            Some(j) => thumbprint(&jwk_of(j)),
            None => str_of(&v.input, "thumbprint", &v.id).to_string(),
        };
        let mut out = [0u8; 256];
        let got = challenge::key_authorization(token, &tp, &mut out);
        if let Some(err) = v.expect.get("error") {
            let want = match err.as_str() {
                Some("token") => challenge::KeyAuthorizationError::Token,
                Some("thumbprint") => challenge::KeyAuthorizationError::Thumbprint,
                other => panic!("{}: unknown error {other:?}", v.id),
            };
            assert_eq!(got, Err(want), "{}", v.id);
            continue;
        }
        let ka = got.unwrap_or_else(|e| panic!("{}: {e}", v.id));
        assert_eq!(
            ka,
            str_of(&v.expect, "key_authorization", &v.id),
            "{}",
            v.id
        );
        assert_eq!(ka.len(), challenge::key_authorization_len(token.len()));
        let digest = sha256(ka.as_bytes());
        assert_eq!(
            hex(&digest),
            str_of(&v.expect, "sha256_hex", &v.id),
            "{}",
            v.id
        );
        assert_eq!(
            hex(&challenge::acme_identifier_value(&digest)),
            str_of(&v.expect, "acme_identifier_der_hex", &v.id),
            "{}",
            v.id
        );
    }
}

#[test]
fn identifier_vectors() {
    for v in load("identifiers") {
        let value = str_of(&v.input, "value", &v.id);
        let got: Result<String, identifier::IdentifierError> = match str_of(&v.input, "type", &v.id)
        {
            "dns" => {
                let mut out = [0u8; identifier::DNS_NAME_MAX];
                identifier::normalize_dns(value, &mut out).map(str::to_string)
            }
            "ip" => identifier::check_ip(value).map(|a| a.to_string()),
            "permanent-identifier" => {
                identifier::check_permanent_identifier(value).map(|p| match p.assigner {
                    Some(a) => format!("{}/{a}", p.serial),
                    None => p.serial.to_string(),
                })
            }
            other => panic!("{}: type {other}", v.id),
        };
        match v.expect.get("value") {
            Some(want) => assert_eq!(got.as_deref().ok(), want.as_str(), "{}: {got:?}", v.id),
            None => assert_eq!(
                got.map_err(identifier::IdentifierError::problem_type),
                Err(str_of(&v.expect, "problem", &v.id)),
                "{}",
                v.id
            ),
        }
    }
}

/// What this crate can check of the device-attest-01 vectors without X.509: the key
/// authorization each signature covers, that every base64url field decodes strictly, and that
/// the encoder writes each object from its statement. The verification itself runs in ca-server
/// (tests/vectors.rs).
#[test]
fn device_attest_vectors() {
    for v in load("device_attest") {
        let mut out = [0u8; 256];
        let ka = challenge::key_authorization(
            str_of(&v.input, "token", &v.id),
            str_of(&v.input, "account_thumbprint", &v.id),
            &mut out,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", v.id));
        assert_eq!(ka, str_of(&v.input, "key_authorization", &v.id), "{}", v.id);
        let value = str_of(&v.input["identifier"], "value", &v.id);
        assert!(
            identifier::check_permanent_identifier(value).is_ok(),
            "{}: {value}",
            v.id
        );
        let att_obj = str_of(&v.input, "att_obj_b64url", &v.id);
        let mut buf = std::vec![0u8; att_obj.len()];
        let cbor = base64url::decode(att_obj, &mut buf).unwrap_or_else(|e| panic!("{}: {e}", v.id));
        // The encoder writes the vector's object from its statement.
        let (fmt, alg, sig, x5c) = statement_parts(&v.input["att_stmt"], "b64url", |t| {
            let mut out = std::vec![0u8; t.len()];
            let n = base64url::decode(t, &mut out).expect("base64url").len();
            out.truncate(n);
            out
        });
        assert_eq!(encode_statement(&fmt, alg, &sig, &x5c), cbor, "{}", v.id);
        let valid = v.expect["valid"].as_bool() == Some(true);
        assert!(
            valid || v.expect["problem"] == "badAttestationStatement",
            "{}",
            v.id
        );
    }
}

#[test]
fn fingerprint_vectors() {
    for v in load("fingerprint") {
        if let Some(cert) = v.input.get("certificate_der_b64url") {
            let mut der = [0u8; 2048];
            let der = base64url::decode(cert.as_str().expect("b64"), &mut der).expect("DER");
            let digest = sha256(der);
            assert_eq!(hex(&digest), str_of(&v.expect, "sha256_hex", &v.id));
            let mut text = [0u8; fingerprint::FINGERPRINT_TEXT_LEN];
            assert_eq!(
                fingerprint::format(&digest, &mut text),
                str_of(&v.expect, "fingerprint", &v.id),
                "{}",
                v.id
            );
            continue;
        }
        let got = fingerprint::parse(str_of(&v.input, "text", &v.id));
        match v.expect.get("sha256_hex") {
            Some(h) => assert_eq!(
                got.map(|d| hex(&d)).as_deref(),
                Ok(h.as_str().expect("hex")),
                "{}",
                v.id
            ),
            None => {
                let want = match str_of(&v.expect, "error", &v.id) {
                    "length" => fingerprint::FingerprintError::Length,
                    "digit" => fingerprint::FingerprintError::Digit,
                    "separator" => fingerprint::FingerprintError::Separator,
                    other => panic!("{}: unknown error {other}", v.id),
                };
                assert_eq!(got, Err(want), "{}", v.id);
            }
        }
    }
}

#[test]
fn reverse_dns_vectors() {
    for v in load("reverse_dns") {
        let ip = str_of(&v.input, "ip", &v.id).parse().expect("address");
        let mut out = [0u8; challenge::REVERSE_DNS_NAME_MAX];
        assert_eq!(
            challenge::reverse_dns_name(ip, &mut out),
            str_of(&v.expect, "name", &v.id),
            "{}",
            v.id
        );
    }
}

/// SPEC §5.9: the code is the helper's encoding of SHA-256 over the parts it names.
#[test]
fn pairing_code_vectors() {
    for v in load("pairing_code") {
        let token = str_of(&v.input, "token", &v.id);
        let tp = str_of(&v.input, "thumbprint", &v.id);
        let got = pairing::digest_input(token, tp);
        if let Some(err) = v.expect.get("error") {
            let want = match err.as_str() {
                Some("token") => challenge::KeyAuthorizationError::Token,
                Some("thumbprint") => challenge::KeyAuthorizationError::Thumbprint,
                other => panic!("{}: unknown error {other:?}", v.id),
            };
            assert_eq!(got, Err(want), "{}", v.id);
            continue;
        }
        let parts = got.unwrap_or_else(|e| panic!("{}: {e}", v.id));
        let input: Vec<u8> = parts.concat();
        // The input is the label and the key authorization of §5.2.
        let mut ka = [0u8; 128];
        let ka = challenge::key_authorization(token, tp, &mut ka).expect("key authorization");
        assert_eq!(input, [pairing::LABEL, ka.as_bytes()].concat(), "{}", v.id);
        let code = pairing::PairingCode::from_digest(&sha256(&input));
        assert_eq!(
            code.as_str(),
            str_of(&v.expect, "pairing_code", &v.id),
            "{}",
            v.id
        );
        let computed = pairing::PairingCode::compute(token, tp, |parts| sha256(&parts.concat()));
        assert_eq!(computed, Ok(code), "{}", v.id);
    }
}

#[test]
fn pairing_codes_use_every_symbol_position_and_only_the_alphabet() {
    // All-ones and all-zeros digests: each of the 8 symbols reads its own 5 bits.
    assert_eq!(
        pairing::PairingCode::from_digest(&[0xff; 32]).as_str(),
        "ZZZZ-ZZZZ"
    );
    assert_eq!(
        pairing::PairingCode::from_digest(&[0; 32]).as_str(),
        "0000-0000"
    );
    // 40 bits 00001 00010 … 01000: symbol i is i + 1.
    let mut d = [0u8; 32];
    d[..5].copy_from_slice(&[0x08, 0x86, 0x42, 0x98, 0xe8]);
    assert_eq!(pairing::PairingCode::from_digest(&d).as_str(), "1234-5678");
    // Only the first 40 bits count.
    d[5..].fill(0xff);
    assert_eq!(pairing::PairingCode::from_digest(&d).as_str(), "1234-5678");
    assert_eq!(
        std::format!("{}", pairing::PairingCode::from_digest(&d)),
        "1234-5678"
    );
}
