//! Entry points of the fuzz targets in `ca-server/fuzz` and of the corpus replay test
//! (`tests/fuzz_corpus.rs`), which runs the committed corpus through the same functions on the
//! stable toolchain. Not part of the API.
//!
//! Each function takes arbitrary octets, as a client on the plant network could send them, runs
//! the server's real parsers and checks on them and asserts what holds for every input: no
//! panic, and results that agree with each other (a key parsed from a JWK is the key parsed
//! from its canonical JWK and from its SubjectPublicKeyInfo; an attestation object decodes to
//! the statement it re-encodes to).

use serde_json::Value;

use crate::ca::csr;
use crate::jose::Parsed;
use crate::key::{self, PublicKey};
use crate::ra::keycheck;
use crate::types::{Identifier, IdentifierType};
use crate::va::attest::{self, anchors::TrustAnchor, object};
use crate::{jwk, Error};

/// The JWS envelope and protected header (RFC 8555 §6.2) as `wfe::jws` reads them: the flattened
/// serialization, `alg`, the key references, an inline `jwk` and the signature over the signing
/// input, then the payload as each request body.
pub fn jws(data: &[u8]) {
    let Ok(jws) = Parsed::from_json(data) else {
        return;
    };
    assert!(!jws.header.contains_key("b64") && !jws.header.contains_key("crit"));
    for name in ["kid", "url", "nonce"] {
        let _ = jws.header_str(name);
    }
    let alg = jws.alg();
    if let Ok(alg) = alg {
        assert!(jwk::SUPPORTED_ALGORITHMS.contains(&alg));
    }
    if let Some(raw) = jws.header.get("jwk") {
        if let Ok(key) = jwk::parse(raw) {
            check_key(&key);
            if let Ok(alg) = alg {
                let _ = jwk::verify(alg, &key, &jws.signing_input, &jws.signature);
            }
        }
    }
    request_bodies(&jws);
}

/// The payload as every JSON request body of RFC 8555 §7.
fn request_bodies(jws: &Parsed) {
    use crate::ra::account::{AccountUpdate, KeyChange, NewAccount};
    use crate::ra::order::NewOrder;
    let _ = jws.json::<NewAccount>();
    let _ = jws.json::<AccountUpdate>();
    let _ = jws.json::<KeyChange>();
    let _ = jws.json::<NewOrder>();
    let _ = jws.json::<crate::wfe::authz::AuthzUpdate>();
    let _ = jws.json::<crate::wfe::cert::Revoke>();
    let _ = jws.json::<crate::wfe::order::Finalize>();
    let _ = jws
        .json::<Identifier>()
        .map(|id| crate::wire::normalize_identifier(&id));
}

/// A JWK (RFC 7517, SPEC §5.2): a key that parses is the key its canonical JWK and its
/// SubjectPublicKeyInfo parse to, and the key checks run on it.
pub fn jwk(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(key) = jwk::parse(&value) {
        check_key(&key);
    }
}

fn check_key(key: &PublicKey) {
    assert_eq!(jwk::parse(&jwk::canonical(key)).ok().as_ref(), Some(key));
    assert_eq!(
        jwk::thumbprint(key).len(),
        protocol_spec::jwk::THUMBPRINT_LEN
    );
    // The certificate key policy is the account key policy, but narrower for RSA: 2048-4096
    // bits with exponent 65537 in a CSR (SPEC §7.4), any RSA key of 2048-8192 bits as a JWK
    // (SPEC §3.4). Any other key must come back from its SubjectPublicKeyInfo unchanged.
    let spki = key::spki_der(key);
    match key::policy::parse_spki(&spki) {
        Ok(back) => assert_eq!(&back, key),
        Err(e) => assert!(matches!(key, PublicKey::Rsa { .. }), "{key:?}: {e}"),
    }
    let _ = keycheck::check_key(key, None);
    let _ = key.describe();
}

/// A PKCS#10 CSR (RFC 2986) as finalize reads it (RFC 8555 §7.4): one that passes every check
/// has a key that passes the JWK round trip and its identifiers sorted and without duplicates;
/// the descriptions finalize records for refused CSRs never fail on one that parses.
pub fn csr(data: &[u8]) {
    let weak = csr::weak_signature_algorithm(data);
    let refused = csr::refused_key(data);
    let Ok(info) = csr::parse_and_verify(data) else {
        return;
    };
    assert_eq!(weak, None);
    assert!(refused.is_some());
    assert_eq!(
        key::policy::parse_spki(&info.spki_der).ok().as_ref(),
        Some(&info.public_key)
    );
    check_key(&info.public_key);
    assert!(info.identifiers.windows(2).all(|w| w[0] < w[1]));
    let _ = csr::matches_order(&info.identifiers, &info.identifiers);
}

/// One configuration of the device-attest-01 check: the anchors, the ordered identifier, the
/// key authorization and the time, from one entry of the shared `device_attest.json` vectors.
pub struct AttestationCase {
    anchors: Vec<TrustAnchor>,
    identifier: Identifier,
    key_authorization: String,
    now: i64,
}

/// The cases of `device_attest.json` (`protocol_spec::vectors::DEVICE_ATTEST`); entries the
/// server would not load are skipped.
pub fn attestation_cases(vectors: &str) -> Vec<AttestationCase> {
    let all: Vec<Value> = serde_json::from_str(vectors).unwrap_or_default();
    all.iter()
        .filter_map(|v| attestation_case(&v["input"]))
        .collect()
}

fn attestation_case(input: &Value) -> Option<AttestationCase> {
    let b64 = |v: &Value| crate::wire::b64u_decode("vector", v.as_str()?).ok();
    let mut anchors = Vec::new();
    for a in input["trust_anchors"].as_array()? {
        let hw: Vec<&str> = a["hardware_types"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let der = b64(&a["certificate_der_b64url"])?;
        if let Ok(anchor) =
            TrustAnchor::from_parts(a["name"].as_str()?, der, a["assigner"].as_str(), &hw)
        {
            anchors.push(anchor);
        }
    }
    let time = input["verification_time"].as_str()?;
    let now = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .ok()?
        .unix_timestamp();
    Some(AttestationCase {
        anchors,
        identifier: serde_json::from_value(input["identifier"].clone()).ok()?,
        key_authorization: input["key_authorization"].as_str()?.to_owned(),
        now,
    })
}

/// The attestation object (CBOR, SPEC §5.10.2) and the IDevID chain (SPEC §5.10.3): the first
/// octet picks one of `cases`, the rest is the object. An object that decodes re-encodes, with
/// the shared encoder, to an object that decodes to the same statement; the full check runs
/// against the case's anchors and fails, if it fails, with `badAttestationStatement`.
pub fn attestation(data: &[u8], cases: &[AttestationCase]) {
    assert!(!cases.is_empty(), "no attestation cases");
    let Some((&pick, att_obj)) = data.split_first() else {
        return;
    };
    if let Ok(obj) = object::decode(att_obj) {
        assert_eq!(obj.fmt, object::FORMAT);
        let stmt = protocol_spec::attestation::Statement::iiot_idevid(obj.alg, obj.sig, &obj.x5c);
        let mut buf = vec![0u8; stmt.encoded_len()];
        let encoded = protocol_spec::attestation::encode(&stmt, &mut buf);
        let Ok(encoded) = encoded else {
            panic!("re-encoding a decoded object: {encoded:?}");
        };
        assert_eq!(object::decode(encoded).ok().as_ref(), Some(&obj));
    }
    let case = &cases[usize::from(pick) % cases.len()];
    assert_eq!(case.identifier.kind, IdentifierType::PermanentIdentifier);
    match attest::verify_attestation(
        att_obj,
        &case.identifier,
        &case.key_authorization,
        &case.anchors,
        case.now,
    ) {
        Ok(_) | Err(Error::BadAttestationStatement(_)) => {}
        Err(e) => panic!("attestation refused with another error: {e:?}"),
    }
}

/// A server for [`requests`]: the real router over a store in a temporary directory, with one
/// account, one order of a `permanent-identifier` and its authorization, the URLs the fuzzer
/// can post to, and the account key that signs every request. Validation never dials
/// (`network_challenges` off); rate limits are off so that the fuzzer's requests are not all
/// refused as `rateLimited` after the first few.
pub struct Server {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    app: crate::wfe::AppState,
    key: ring::signature::EcdsaKeyPair,
    jwk: Value,
    kid: String,
    urls: Vec<String>,
    dir: std::path::PathBuf,
}

impl Server {
    /// Starts the server in a fresh directory under the system's temporary directory, which
    /// is removed on drop.
    pub fn new() -> Self {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let dir = std::env::temp_dir().join(format!("ca-server-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = crate::config::Config {
            data_dir: dir.clone(),
            ..Default::default()
        };
        cfg.storage.durability = crate::storage::Durability::ProcessCrash;
        cfg.enrollment.network_challenges = false;
        cfg.enrollment.operator_approval = true;
        cfg.rate_limits.enabled = false;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let app = rt
            .block_on(async { crate::server::init(cfg) })
            .expect("server init");
        let router = crate::wfe::router(app.clone());
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("account key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("account key");
        let point = key.public_key().as_ref();
        let jwk = serde_json::json!({
            "crv": "P-256", "kty": "EC",
            "x": crate::wire::b64u(&point[1..33]), "y": crate::wire::b64u(&point[33..]),
        });
        let mut server = Self {
            rt,
            router,
            app,
            key,
            jwk,
            kid: String::new(),
            urls: Vec::new(),
            dir,
        };
        let dir_url = server.app.url(crate::wire::paths::DIRECTORY);
        let directory = server.send(http::Method::GET, &dir_url, Vec::new()).2;
        let url = |name: &str| directory[name].as_str().unwrap_or_default().to_owned();
        let (new_account, new_order) = (url("newAccount"), url("newOrder"));
        let (_, headers, _) = server.post(&new_account, true, br#"{"termsOfServiceAgreed":true}"#);
        server.kid = headers.get("location").cloned().unwrap_or_default();
        let order_payload =
            br#"{"identifiers":[{"type":"permanent-identifier","value":"FUZZ-0001/1.3.6.1.4.1.32473"}]}"#;
        let (_, headers, order) = server.post(&new_order, false, order_payload);
        let authz = order["authorizations"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (_, _, authz_body) = server.post(&authz, false, b"");
        let mut urls = vec![
            new_account,
            new_order,
            server.kid.clone(),
            url("keyChange"),
            url("revokeCert"),
            headers.get("location").cloned().unwrap_or_default(),
            order["finalize"].as_str().unwrap_or_default().to_owned(),
            authz,
        ];
        for c in authz_body["challenges"].as_array().into_iter().flatten() {
            urls.extend(c["url"].as_str().map(str::to_owned));
        }
        assert!(
            urls.iter().all(|u| u.starts_with("https://")),
            "setup failed: {urls:?}"
        );
        server.urls = urls;
        server
    }

    /// Signs `payload` (sent as is: the octets are the JSON text) for `url` with a fresh nonce,
    /// by `jwk` or by `kid`, posts it and returns the status, the headers and the body as JSON
    /// (`Null` if it is not).
    fn post(
        &self,
        url: &str,
        by_jwk: bool,
        payload: &[u8],
    ) -> (u16, std::collections::HashMap<String, String>, Value) {
        let mut protected =
            serde_json::json!({"alg": "ES256", "nonce": self.app.nonces().issue(), "url": url});
        if by_jwk {
            protected["jwk"] = self.jwk.clone();
        } else {
            protected["kid"] = Value::String(self.kid.clone());
        }
        let protected = crate::wire::b64u(protected.to_string());
        let payload = crate::wire::b64u(payload);
        let signed = format!("{protected}.{payload}");
        let rng = ring::rand::SystemRandom::new();
        let sig = self.key.sign(&rng, signed.as_bytes()).expect("sign");
        let body = serde_json::json!({
            "protected": protected, "payload": payload, "signature": crate::wire::b64u(sig.as_ref()),
        });
        self.send(http::Method::POST, url, body.to_string().into_bytes())
    }

    fn send(
        &self,
        method: http::Method,
        url: &str,
        body: Vec<u8>,
    ) -> (u16, std::collections::HashMap<String, String>, Value) {
        use tower::ServiceExt;
        let req = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/jose+json")
            .body(axum::body::Body::from(body))
            .expect("request");
        self.rt.block_on(async {
            let resp = self.router.clone().oneshot(req).await.expect("infallible");
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    let v = v.to_str().unwrap_or_default().to_owned();
                    (k.as_str().to_owned(), v)
                })
                .collect();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (status, headers, json)
        })
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A signed request to one of the server's endpoints (RFC 8555 §7): the first octet picks the
/// URL (newAccount, newOrder, the account, keyChange, revokeCert, the order, its finalize URL,
/// its authorization and its challenges) and whether the request is signed with `jwk` rather
/// than `kid`; the rest is the JWS payload, octet for octet (empty: POST-as-GET). Every answer
/// is a success or a problem document with a 4xx status: never a 5xx. Payloads that would
/// deactivate the account are not sent.
pub fn requests(data: &[u8], server: &Server) {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let url = &server.urls[usize::from(pick & 0x7f) % server.urls.len()];
    // Deactivating the one account would turn every later request into `unauthorized`.
    if *url == server.kid
        && serde_json::from_slice::<Value>(payload).is_ok_and(|v| v["status"] == "deactivated")
    {
        return;
    }
    let (status, headers, body) = server.post(url, pick & 0x80 != 0, payload);
    assert!(status < 500, "{url}: {status} {body}");
    if status >= 400 {
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/problem+json"),
            "{url}: {status}"
        );
        let kind = body["type"].as_str().unwrap_or_default();
        assert!(
            kind.starts_with(protocol_spec::problem::NAMESPACE),
            "{url}: {status} {body}"
        );
    }
}
