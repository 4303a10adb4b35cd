//! Runs the shared test vectors (`protocol-spec/vectors`, SPEC §1.5) against the server's own
//! code: the same bytes the device and embedded clients run.
//!
//! A vector the server cannot run, or does not pass yet, is listed in `vectors-skip.toml` with
//! the reason. Listing a whole file uses the key `"*"`. An entry for a single id records a known
//! failure, so the run fails as soon as that vector passes, and the stale entry must go.

use axum::http::header;
use axum::response::IntoResponse;
use ca_server::jose::Parsed;
use ca_server::key::PublicKey;
use ca_server::ra::account::Account;
use ca_server::types::{AccountStatus, Identifier, IdentifierType};
use ca_server::wfe::nonce::NonceStore;
use ca_server::wire::normalize_identifier;
use ca_server::{jwk, wire, Error, Problem, ProblemType};
use protocol_spec::runner::{field, hex_field, load, Runner, Vector};
use serde_json::{json, Value};

/// The vector files this binary runs; every other file must be skipped as a whole.
const RUN: &[&str] = &[
    "ari_cert_id",
    "attestation_object",
    "base64url",
    "device_attest",
    "fingerprint",
    "identifiers",
    "key_authorization",
    "pairing_code",
    "problem_types",
    "problems",
    "reverse_dns",
    "thumbprint",
];

fn run(stem: &str, check: impl Fn(&Vector) -> Result<(), String>) {
    Runner::new(include_str!("vectors-skip.toml"), RUN).run(stem, check);
}

#[test]
fn every_vector_file_is_run_or_skipped_and_every_skip_names_a_vector() {
    Runner::new(include_str!("vectors-skip.toml"), RUN).check_coverage();
}

/// SPEC §3.7, through the decoder every request field goes through.
#[test]
fn base64url() {
    run("base64url", |v| {
        let encoded = field(&v.input, "encoded")?;
        let got = wire::b64u_decode("vector", encoded);
        match v.expect.get("decoded_hex") {
            Some(h) => {
                let want =
                    hex::decode(h.as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
                let bytes = got.map_err(|e| format!("refused: {e}"))?;
                if bytes != want {
                    return Err(format!("decoded {}", hex::encode(bytes)));
                }
                if wire::b64u(&want) != encoded {
                    return Err(format!("re-encodes to {}", wire::b64u(&want)));
                }
                Ok(())
            }
            None => match got {
                Ok(b) => Err(format!("accepted as {}", hex::encode(b))),
                Err(e) if e.problem_type() == ProblemType::Malformed => Ok(()),
                Err(e) => Err(format!(
                    "refused as {}, not malformed",
                    e.problem_type().name()
                )),
            },
        }
    });
}

/// SPEC §5.2: the server's JWK parser and RFC 7638 thumbprint.
#[test]
fn thumbprint() {
    run("thumbprint", |v| {
        let key = jwk::parse(&v.input["jwk"]).map_err(|e| format!("JWK refused: {e}"))?;
        let canonical = jwk::canonical(&key).to_string();
        if canonical != field(&v.expect, "canonical")? {
            return Err(format!("canonical JSON {canonical}"));
        }
        let tp = jwk::thumbprint(&key);
        if tp != field(&v.expect, "thumbprint")? {
            return Err(format!("thumbprint {tp}"));
        }
        Ok(())
    });
}

/// SPEC §2.3: the fingerprint the server prints for its root and its trust anchors, and the
/// parser `trust-anchor add --sha256` reads an operator's copy with.
#[test]
fn fingerprint() {
    run("fingerprint", |v| {
        if let Some(cert) = v.input.get("certificate_der_b64url") {
            let der = wire::b64u_decode("vector", cert.as_str().unwrap_or_default())
                .map_err(|e| e.to_string())?;
            let got = wire::fingerprint(&der);
            return match got == field(&v.expect, "fingerprint")? {
                true => Ok(()),
                false => Err(format!("fingerprint {got}")),
            };
        }
        let got = wire::parse_fingerprint(field(&v.input, "text")?);
        match (got, v.expect.get("sha256_hex")) {
            (Ok(d), Some(want)) if want.as_str() == Some(hex::encode_upper(d).as_str()) => Ok(()),
            (Ok(d), Some(want)) if want.as_str() == Some(hex::encode(d).as_str()) => Ok(()),
            (Ok(d), _) => Err(format!("parsed as {}", hex::encode(d))),
            (Err(e), Some(_)) => Err(format!("refused: {e}")),
            (Err(_), None) => Ok(()),
        }
    });
}

/// SPEC §5.2, §5.4: the key authorization the validator expects, and the acmeIdentifier
/// extension value it compares a tls-alpn-01 certificate's with.
#[test]
fn key_authorization() {
    run("key_authorization", |v| {
        let token = field(&v.input, "token")?;
        let thumbprint = match v.input.get("jwk") {
            Some(j) => jwk::thumbprint(&jwk::parse(j).map_err(|e| format!("JWK refused: {e}"))?),
            None => field(&v.input, "thumbprint")?.to_owned(),
        };
        let got = wire::key_authorization(token, &thumbprint);
        let Some(want) = v.expect.get("key_authorization") else {
            return match got {
                Ok(ka) => Err(format!("accepted as {ka}")),
                Err(_) => Ok(()),
            };
        };
        let ka = got.map_err(|e| format!("refused: {e}"))?;
        if want.as_str() != Some(ka.as_str()) {
            return Err(format!("key authorization {ka}"));
        }
        let ext = hex::encode(wire::acme_identifier_value(&ka));
        if ext != field(&v.expect, "acme_identifier_der_hex")? {
            return Err(format!("acmeIdentifier {ext}"));
        }
        Ok(())
    });
}

/// SPEC §5.4: the SNI the validator sends for an `ip` identifier's tls-alpn-01 challenge.
#[test]
fn reverse_dns() {
    run("reverse_dns", |v| {
        let ip = field(&v.input, "ip")?
            .parse()
            .map_err(|e| format!("vector address: {e}"))?;
        let got = wire::reverse_dns_name(ip);
        match got == field(&v.expect, "name")? {
            true => Ok(()),
            false => Err(format!("name {got}")),
        }
    });
}

/// SPEC §9.2: the identifier the server computes for `replaces`, and the parser renewalInfo
/// requests and `replaces` values go through.
#[test]
fn ari_cert_id() {
    run("ari_cert_id", |v| {
        if let Some(id) = v.input.get("cert_id") {
            let id = id.as_str().ok_or("cert_id is not a string")?;
            return match wire::parse_ari_cert_id(id) {
                Ok((aki, serial)) => Err(format!(
                    "accepted as {}.{}",
                    hex::encode(aki),
                    hex::encode(serial)
                )),
                Err(e) if e.problem_type() == ProblemType::Malformed => Ok(()),
                Err(e) => Err(format!("refused as {}: {e}", e.problem_type().name())),
            };
        }
        let (aki, serial) = (
            hex_field(&v.input, "aki_hex")?,
            hex_field(&v.input, "serial_hex")?,
        );
        let id = wire::ari_cert_id(&aki, &serial).map_err(|e| format!("refused: {e}"))?;
        if id != field(&v.expect, "cert_id")? {
            return Err(format!("wrote {id}"));
        }
        match wire::parse_ari_cert_id(&id) {
            Ok(back) if back == (aki, serial) => Ok(()),
            other => Err(format!("reads its own identifier back as {other:?}")),
        }
    });
}

/// SPEC §5.10.2: what the server's decoder makes of the shared encoder's octets. It reads back
/// every statement it verifies (format `iiot-idevid`, ES256, ES384 or RS256, one to
/// `X5C_MAX` certificates) and refuses the others.
#[test]
fn attestation_object() {
    use ca_server::va::attest::object::{
        self, COSE_ES256, COSE_ES384, COSE_RS256, FORMAT, X5C_MAX,
    };
    run("attestation_object", |v| {
        let fmt = field(&v.input, "fmt")?;
        let alg = v.input["alg"].as_i64().ok_or("no alg")?;
        let sig = hex_field(&v.input, "sig_hex")?;
        let x5c = v.input["x5c_hex"]
            .as_array()
            .ok_or("no x5c_hex")?
            .iter()
            .map(|c| protocol_spec::runner::hex(c.as_str().unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = hex_field(&v.expect, "att_obj_hex")?;
        let verified = fmt == FORMAT
            && [COSE_ES256, COSE_ES384, COSE_RS256].contains(&alg)
            && (1..=X5C_MAX).contains(&x5c.len());
        match (object::decode(&bytes), verified) {
            (Ok(got), true) => {
                let same = got.fmt == fmt
                    && got.alg == alg
                    && got.sig == sig.as_slice()
                    && got.x5c.iter().copied().eq(x5c.iter().map(Vec::as_slice));
                match same {
                    true => Ok(()),
                    false => Err(format!("decoded as {got:?}")),
                }
            }
            (Ok(got), false) => Err(format!("accepted as {got:?}")),
            (Err(e), true) => Err(format!("refused: {e}")),
            (Err(_), false) => Ok(()),
        }
    });
}

/// SPEC §3.8: the problem-type names the server writes into problem documents.
#[test]
fn problem_types() {
    run("problem_types", |v| {
        let urn = field(&v.input, "urn")?;
        match (ProblemType::from_urn(urn), v.expect["name"].as_str()) {
            (Some(kind), Some(name)) if kind.name() == name => {
                let doc = Problem::new(kind, "vector");
                match doc.kind == urn {
                    true => Ok(()),
                    false => Err(format!("problem document type {}", doc.kind)),
                }
            }
            (None, None) => Ok(()),
            (got, _) => Err(format!("read as {got:?}")),
        }
    });
}

/// SPEC §4: `order::normalize_identifier`, which newOrder applies to every identifier.
#[test]
fn identifiers() {
    run("identifiers", |v| {
        let kind = match field(&v.input, "type")? {
            "dns" => IdentifierType::Dns,
            "ip" => IdentifierType::Ip,
            "permanent-identifier" => IdentifierType::PermanentIdentifier,
            other => return Err(format!("identifier type {other} cannot be built")),
        };
        let id = Identifier {
            kind,
            value: field(&v.input, "value")?.to_owned(),
        };
        match (normalize_identifier(&id), v.expect.get("value")) {
            (Ok(got), Some(want)) if want.as_str() == Some(got.value.as_str()) => Ok(()),
            (Ok(got), Some(_)) => Err(format!("normalised to {:?}", got.value)),
            (Ok(got), None) => Err(format!("accepted as {:?}", got.value)),
            (Err(e), Some(_)) => Err(format!("refused: {e}")),
            (Err(e), None) if e.problem_type().name() == field(&v.expect, "problem")? => Ok(()),
            (Err(e), None) => Err(format!("refused as {}: {e}", e.problem_type().name())),
        }
    });
}

/// SPEC §4.5, §5.10: `attest::verify_attestation` (everything device-attest-01 checks apart from
/// reading the request and the configuration), plus the reference encoder, which must write
/// the vector's `attObj` byte for byte from its statement.
#[test]
fn device_attest() {
    use ca_server::va::attest::anchors::TrustAnchor;
    run("device_attest", |v| {
        let b64 = |s: &Value| wire::b64u_decode("vector", s.as_str().unwrap_or_default());
        // Each anchor goes through the checks an anchor file gets; one the server cannot use
        // (no assigner, SPEC §5.10.4) is skipped, as the server skips its file.
        let mut anchors = Vec::new();
        for a in v.input["trust_anchors"]
            .as_array()
            .ok_or("no trust_anchors")?
        {
            let hw_types: Vec<&str> = a["hardware_types"]
                .as_array()
                .ok_or("no hardware_types")?
                .iter()
                .map(|t| t.as_str().ok_or("a hardware type is not a string"))
                .collect::<Result<_, _>>()?;
            let name = field(a, "name")?;
            match TrustAnchor::from_parts(
                name,
                b64(&a["certificate_der_b64url"]).map_err(|e| e.to_string())?,
                a["assigner"].as_str(),
                &hw_types,
            ) {
                Ok(anchor) => anchors.push(anchor),
                Err(_) if a["assigner"].is_null() => {}
                Err(e) => return Err(format!("trust anchor {name}: {e}")),
            }
        }
        let stmt = &v.input["att_stmt"];
        let sig = b64(&stmt["sig_b64url"]).map_err(|e| e.to_string())?;
        let x5c = stmt["x5c_b64url"]
            .as_array()
            .ok_or("no x5c")?
            .iter()
            .map(|c| b64(c).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let x5c: Vec<&[u8]> = x5c.iter().map(Vec::as_slice).collect();
        let att_obj = b64(&v.input["att_obj_b64url"]).map_err(|e| e.to_string())?;
        let alg = stmt["alg"].as_i64().ok_or("no alg")?;
        if protocol_spec::runner::attestation_object(field(stmt, "fmt")?, alg, &sig, &x5c)
            != att_obj
        {
            return Err("the reference encoder writes other bytes".to_owned());
        }
        let key_authorization = field(&v.input, "key_authorization")?;
        if key_authorization
            != format!(
                "{}.{}",
                field(&v.input, "token")?,
                field(&v.input, "account_thumbprint")?
            )
        {
            return Err("key_authorization is not token.thumbprint".to_owned());
        }
        let at = time::OffsetDateTime::parse(
            field(&v.input, "verification_time")?,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| e.to_string())?
        .unix_timestamp();
        let identifier = Identifier {
            kind: IdentifierType::PermanentIdentifier,
            value: field(&v.input["identifier"], "value")?.to_owned(),
        };
        let got = ca_server::va::attest::verify_attestation(
            &att_obj,
            &identifier,
            key_authorization,
            &anchors,
            at,
        );
        match (got, v.expect["valid"].as_bool()) {
            (Ok(a), Some(true)) => {
                if a.anchor != field(&v.expect, "anchor")?
                    || a.serial_source != field(&v.expect, "serial_source")?
                {
                    return Err(format!("verified, but as {a:?}"));
                }
                Ok(())
            }
            (Ok(a), _) => Err(format!("accepted: {a:?}")),
            (Err(e), Some(true)) => Err(format!("refused: {e}")),
            (Err(e), _) => {
                let detail = e.to_problem().detail;
                if e.problem_type().name() != field(&v.expect, "problem")?
                    || !detail.contains(field(&v.expect, "detail_contains")?)
                {
                    return Err(format!("refused as {}: {detail}", e.problem_type().name()));
                }
                Ok(())
            }
        }
    });
}

/// A key from the thumbprint vectors, for the problem vectors that need a valid one.
fn p256_key() -> PublicKey {
    let v = load("thumbprint")
        .into_iter()
        .find(|v| v.id == "p256-device-key")
        .expect("p256-device-key vector");
    jwk::parse(&v.input["jwk"]).expect("P-256 key")
}

fn flattened(jws: &Value) -> Result<Parsed, Error> {
    Parsed::from_json(&serde_json::to_vec(jws).unwrap_or_default())
}

fn refused<T>(r: Result<T, Error>) -> Result<Error, String> {
    match r {
        Ok(_) => Err("the server accepted it".to_owned()),
        Err(e) => Ok(e),
    }
}

fn account(status: AccountStatus) -> Account {
    Account {
        id: "vector".into(),
        key: jwk::canonical(&p256_key()),
        thumbprint: jwk::thumbprint(&p256_key()),
        status,
        contact: Vec::new(),
        terms_of_service_agreed: false,
        eab_kid: None,
        external_account_binding: None,
        created: 0,
    }
}

/// The server's error for a problem vector. Where a public function of the server decides the
/// outcome, it is called with the vector's input; otherwise the variant that the handler
/// returns in that situation is built, and only the mapping to the wire is checked.
fn problem_for(v: &Vector) -> Result<Error, String> {
    let s = |m: &str| m.to_owned();
    Ok(match v.id.as_str() {
        // Decided by NonceStore::redeem.
        "nonce-unknown" | "nonce-not-base64url" | "nonce-padded" => {
            let store = NonceStore::new().map_err(|e| e.to_string())?;
            refused(store.redeem(field(&v.input, "nonce")?))?
        }
        "nonce-reused" => {
            let store = NonceStore::new().map_err(|e| e.to_string())?;
            let n = store.issue();
            store
                .redeem(&n)
                .map_err(|e| format!("first use refused: {e}"))?;
            refused(store.redeem(&n))?
        }
        "nonce-missing" => Error::BadNonce("JWS header has no \"nonce\""),
        // Decided by jws::Parsed and jwk::{parse, verify}.
        "alg-none" | "alg-hs256" | "alg-es512" => {
            let protected = wire::b64u(json!({"alg": field(&v.input, "alg")?}).to_string());
            let jws = flattened(&json!({"protected": protected, "payload": "", "signature": ""}))
                .map_err(|e| format!("JWS refused before alg: {e}"))?;
            refused(jws.alg())?
        }
        "alg-key-mismatch" | "alg-key-mismatch-es256-p384" | "alg-key-type-mismatch" => {
            let key = jwk::parse(&v.input["jwk"]).map_err(|e| e.to_string())?;
            refused(jwk::verify(field(&v.input, "alg")?, &key, b"x", &[0; 96]))?
        }
        "jws-padded-protected"
        | "jws-unprotected-header"
        | "jws-multiple-signatures"
        | "jws-unencoded-payload" => refused(flattened(&v.input["jws"]))?,
        "jws-signature-invalid" => refused(jwk::verify("ES256", &p256_key(), b"x", &[1; 64]))?,
        "jwk-private-key"
        | "jwk-point-not-on-curve"
        | "jwk-ed25519-small-order"
        | "jwk-ed25519-small-order-non-canonical"
        | "jwk-ed25519-not-on-curve"
        | "jwk-p256-short-coordinate"
        | "jwk-unsupported-curve"
        | "jwk-symmetric"
        | "jwk-rsa-1024"
        | "jwk-rsa-exponent-empty"
        | "jwk-member-padded" => refused(jwk::parse(&v.input["jwk"]))?,
        // Decided by Account::require_valid.
        "account-deactivated" => refused(account(AccountStatus::Deactivated).require_valid())?,
        "account-revoked" => refused(account(AccountStatus::Revoked).require_valid())?,
        // Built as the handlers build them.
        "jws-both-jwk-and-kid" | "jws-jwk-where-kid-required" | "jws-kid-on-new-account" => {
            Error::Malformed(s("wrong key reference"))
        }
        "url-missing" => Error::Malformed(s("JWS header has no \"url\"")),
        "url-mismatch" => Error::Unauthorized(s("JWS url does not match the request URL")),
        "kid-unknown" | "only-return-existing-unknown" => Error::AccountDoesNotExist,
        "content-type-wrong" => Error::UnsupportedMediaType(s("application/json")),
        "body-too-large" => Error::PayloadTooLarge,
        "method-get-on-post-resource" => Error::MethodNotAllowed(s("GET")),
        "resource-unknown" => Error::NotFound("order"),
        "account-other" => Error::Unauthorized(s("signed by a different account")),
        "terms-not-agreed" => Error::Malformed(s("terms of service must be agreed to")),
        "contact-not-mailto" => Error::UnsupportedContact(s("tel:+49")),
        "contact-invalid" => Error::InvalidContact(s("two addresses")),
        "eab-required" => Error::ExternalAccountRequired(s("EAB required")),
        "eab-mac-invalid" | "eab-expired" | "eab-single-use-spent" => {
            Error::Unauthorized(s("EAB refused"))
        }
        "eab-with-nonce" | "eab-alg-not-mac" => Error::Malformed(s("bad EAB JWS")),
        "key-change-key-in-use" => Error::Conflict {
            detail: s("the new key is already in use by another account"),
            location: s("https://ca.plant.example/acme/acct/other"),
        },
        "key-change-old-key-wrong" => Error::Malformed(s("oldKey is not the account key")),
        "order-unsupported-identifier-type" => Error::UnsupportedIdentifier(s("email")),
        "order-several-identifiers-refused" => Error::Compound {
            detail: s("2 identifiers were refused"),
            subproblems: vec![
                Problem::new(ProblemType::Malformed, "a"),
                Problem::new(ProblemType::RejectedIdentifier, "b"),
            ],
        },
        "order-not-before" | "order-no-identifiers" => Error::Malformed(s("bad newOrder")),
        "finalize-not-ready" => Error::OrderNotReady(s("pending")),
        "csr-identifiers-mismatch" | "csr-key-is-account-key" | "csr-sha1-signature" => {
            Error::BadCsr(s("refused CSR"))
        }
        "csr-key-unsupported" => Error::BadPublicKey(s("RSA 1024")),
        "revoke-reason-not-allowed" => Error::BadRevocationReason(s("2")),
        "revoke-already-revoked" => Error::AlreadyRevoked,
        "revoke-not-permitted" => Error::Unauthorized(s("not permitted")),
        "challenge-connection" => Error::Connection(s("refused")),
        "challenge-dns" => Error::Dns(s("NXDOMAIN")),
        "challenge-tls" => Error::Tls(s("handshake failed")),
        "challenge-incorrect-response" => Error::IncorrectResponse(s("wrong body")),
        "challenge-bad-attestation" => Error::BadAttestationStatement(s("unknown manufacturer")),
        // Decided by approval::request through the limiter's caps.
        "approval-cap-reached" => ca_server::ratelimit::RateLimiter::cap_reached(
            ca_server::ratelimit::LimitName::PendingApprovalsPerAccount,
            &ca_server::ratelimit::Key::Account(s("acct")),
            5,
            std::time::Duration::from_secs(3000),
        ),
        // Decided by order::normalize_identifier.
        "order-permanent-identifier-malformed" => {
            let id: Identifier =
                serde_json::from_value(v.input["identifier"].clone()).map_err(|e| e.to_string())?;
            refused(normalize_identifier(&id))?
        }
        "server-internal" => Error::Internal(s("secret cause /var/lib/iiot-acme")),
        other => {
            return Err(format!(
                "no mapping for problem vector {other} in vectors.rs"
            ))
        }
    })
}

/// SPEC §3.8: problem type URN and HTTP status for each situation.
#[test]
fn problems() {
    run("problems", |v| {
        let e = problem_for(v)?;
        let (urn, status) = (e.problem_type().urn(), e.status().as_u16());
        if urn != field(&v.expect, "type")?
            || Some(u64::from(status)) != v.expect["status"].as_u64()
        {
            return Err(format!("got {urn} {status} ({e})"));
        }
        let problem = e.to_problem();
        if problem.status != status || problem.kind != urn {
            return Err(format!(
                "problem document says {} {}",
                problem.kind, problem.status
            ));
        }
        if let Some(algs) = v.expect.get("algorithms") {
            let want: Vec<String> = serde_json::from_value(algs.clone()).unwrap_or_default();
            if problem.algorithms.as_ref() != Some(&want) {
                return Err(format!("algorithms {:?}", problem.algorithms));
            }
        }
        if v.expect.get("detail_is_generic").is_some() && problem.detail.contains("secret") {
            return Err(format!("detail leaks the cause: {}", problem.detail));
        }
        let resp = e.into_response();
        if v.expect.get("location").is_some() && resp.headers().get(header::LOCATION).is_none() {
            return Err("no Location header".to_owned());
        }
        if v.expect.get("retry_after").is_some()
            && resp.headers().get(header::RETRY_AFTER).is_none()
        {
            return Err("no Retry-After header".to_owned());
        }
        Ok(())
    });
}

#[test]
fn pairing_code() {
    run("pairing_code", |v| {
        let got = wire::pairing_code(field(&v.input, "token")?, field(&v.input, "thumbprint")?);
        match (got, v.expect.get("error")) {
            (Err(_), Some(_)) => Ok(()),
            (Ok(code), None) if code == field(&v.expect, "pairing_code")? => Ok(()),
            (got, _) => Err(format!("got {got:?}")),
        }
    });
}
