//! A minimal in-process ACME client for request-level tests: builds JWS requests by hand so
//! tests can break every rule on purpose, and sends them through the router without a socket.

#![allow(dead_code, unreachable_pub)]

mod acme;
pub mod bench;
pub mod idevid;

pub use acme::*;

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ca_server::config::Config;
use ca_server::wfe::{self, AppState};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use tower::ServiceExt;

/// The CRL distribution points extension of a certificate (DER), in its Debug form.
pub fn crl_distribution_points(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate");
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::CRLDistributionPoints(p) => {
                Some(format!("{p:?}"))
            }
            _ => None,
        })
        .expect("CRL distribution points")
}

pub fn b64(b: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// DER TLV, for the few structures rcgen cannot write.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if content.len() < 0x80 {
        out.push(content.len() as u8);
    } else if content.len() < 0x100 {
        out.extend([0x81, content.len() as u8]);
    } else {
        out.extend([0x82, (content.len() >> 8) as u8, content.len() as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// Runs `openssl ARGS` in `dir` and asserts that it succeeds, quoting its stderr if not;
/// returns its stdout.
pub fn openssl(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed by scripts/install-test-deps.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openssl {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `ca-server.toml` in `dir`: the configuration of a CA with the data directory
/// `data_dir` on the PostgreSQL database at `url`, for the commands' `--config`. Returns its
/// path.
pub fn postgres_config_file(
    dir: &std::path::Path,
    data_dir: &std::path::Path,
    url: &str,
) -> std::path::PathBuf {
    let path = dir.join("ca-server.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[storage]\nbackend = \"postgres\"\nurl = {url:?}\n",
            data_dir.display().to_string()
        ),
    )
    .expect("config");
    path
}

/// A server instance with its own temporary data directory.
pub struct TestServer {
    pub app: AppState,
    pub router: Router,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(f: impl FnOnce(&mut Config)) -> Self {
        Self::with_dir(tempfile::tempdir().expect("tempdir"), f)
    }

    /// As [`TestServer::with`], in a data directory the test has prepared.
    pub fn with_dir(dir: tempfile::TempDir, f: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        cfg.validation.timeout = std::time::Duration::from_secs(5);
        // Test peers listen on loopback; tests of the refusal turn this off.
        cfg.validation.allow_loopback = true;
        f(&mut cfg);
        let app = ca_server::server::init(cfg).expect("init");
        let router = wfe::router(app.clone());
        Self { app, router, dir }
    }

    pub fn url(&self, path: &str) -> String {
        self.app.url(path)
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        Reply::read(resp).await
    }

    pub async fn nonce(&self) -> String {
        let r = self
            .send_empty(Method::HEAD, &self.url("/acme/new-nonce"))
            .await;
        r.header("replay-nonce").expect("nonce")
    }

    pub async fn directory(&self) -> Value {
        self.get(&self.url("/directory")).await.json()
    }

    /// POSTs a raw body with the JOSE content type.
    pub async fn post_raw(&self, url: &str, body: impl Into<Body>) -> Reply {
        self.send(jose_post(url, body)).await
    }
}

/// A response, read fully.
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub async fn read(resp: Response<Body>) -> Self {
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .expect("body")
            .to_vec();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Asserts the status, quoting the body when it differs.
    pub fn assert_status(&self, status: StatusCode) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
    }

    /// Asserts an RFC 7807 problem of `kind` with `status`.
    pub fn assert_problem(&self, status: u16, kind: &str) -> Value {
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let p = self.json();
        assert_eq!(
            p["type"],
            format!("urn:ietf:params:acme:error:{kind}"),
            "{p}"
        );
        assert_eq!(self.status.as_u16(), status, "{p}");
        assert_eq!(p["status"], status, "{p}");
        assert!(
            self.header("replay-nonce").is_some(),
            "problem without Replay-Nonce"
        );
        p
    }
}

/// An ES256 account key.
pub struct Key {
    pair: EcdsaKeyPair,
    pub pkcs8: Vec<u8>,
}

impl Key {
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("gen")
            .as_ref()
            .to_vec();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).expect("key");
        Self { pair, pkcs8 }
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Self {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .expect("P-256 PKCS#8");
        Self {
            pair,
            pkcs8: pkcs8.to_vec(),
        }
    }

    pub fn jwk(&self) -> Value {
        let p = self.pair.public_key().as_ref();
        json!({"crv": "P-256", "kty": "EC", "x": b64(&p[1..33]), "y": b64(&p[33..])})
    }

    pub fn thumbprint(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, self.jwk().to_string().as_bytes());
        b64(d)
    }

    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&SystemRandom::new(), data)
            .expect("sign")
            .as_ref()
            .to_vec()
    }

    /// A flattened JWS with the given protected header and payload (None = POST-as-GET).
    pub fn jws(&self, protected: &Value, payload: Option<&Value>) -> Value {
        let p = b64(protected.to_string());
        let pl = payload.map(|v| b64(v.to_string())).unwrap_or_default();
        let sig = self.sign(format!("{p}.{pl}").as_bytes());
        json!({"protected": p, "payload": pl, "signature": b64(sig)})
    }
}

/// A registered test account.
pub struct Account {
    pub key: Key,
    pub kid: String,
}

impl TestServer {
    /// Signs and posts `payload` to `url` with a fresh nonce, `kid` or `jwk` as given.
    pub async fn post(
        &self,
        key: &Key,
        kid: Option<&str>,
        url: &str,
        payload: Option<&Value>,
    ) -> Reply {
        let mut protected = json!({"alg": "ES256", "nonce": self.nonce().await, "url": url});
        match kid {
            Some(k) => protected["kid"] = json!(k),
            None => protected["jwk"] = key.jwk(),
        }
        self.post_raw(url, key.jws(&protected, payload).to_string())
            .await
    }

    pub async fn new_account(&self) -> Account {
        let key = Key::generate();
        let r = self
            .post_new_account(&key, &json!({"termsOfServiceAgreed": true}))
            .await;
        r.assert_status(StatusCode::CREATED);
        let kid = r.header("location").expect("location");
        Account { key, kid }
    }

    pub async fn post_as(&self, acct: &Account, url: &str, payload: Option<&Value>) -> Reply {
        self.post(&acct.key, Some(&acct.kid), url, payload).await
    }
}

/// An external account binding (RFC 8555 §7.3.4) of `key` made with an EAB credential.
pub fn eab_binding(key: &Key, kid: &str, hmac_b64: &str, url: &str) -> Value {
    let protected = b64(json!({"alg": "HS256", "kid": kid, "url": url}).to_string());
    let payload = b64(key.jwk().to_string());
    let mac_key = URL_SAFE_NO_PAD
        .decode(hmac_b64)
        .expect("base64url HMAC key");
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &mac_key),
        format!("{protected}.{payload}").as_bytes(),
    );
    json!({"protected": protected, "payload": payload, "signature": b64(tag)})
}

/// Marks every authorization of an order valid in the store, standing in for a successful
/// challenge so finalize and what follows can be tested on their own (validation has its own
/// tests).
pub fn validate_all(s: &TestServer, order: &Value) {
    use ca_server::ra::authz::Authz;
    use ca_server::storage::Table;
    use ca_server::types::{AuthzStatus, ChallengeStatus};
    for url in order["authorizations"].as_array().expect("authzs") {
        let id = url.as_str().expect("url").rsplit('/').next().expect("id");
        s.app
            .db
            .update(Table::Authzs, id, |mut a: Authz| {
                a.status = AuthzStatus::Valid;
                a.challenges[0].status = ChallengeStatus::Valid;
                Ok(a)
            })
            .expect("validate");
    }
}

/// A ready order for `names` (dns identifiers); returns the order object with its `url`.
pub async fn ready_order(s: &TestServer, acct: &Account, names: &[&str]) -> Value {
    let ids: Vec<Value> = names
        .iter()
        .map(|n| json!({"type": "dns", "value": n}))
        .collect();
    let (loc, mut o) = s.create_order(acct, &json!({ "identifiers": ids })).await;
    validate_all(s, &o);
    o["url"] = json!(loc);
    let now = s.post_as(acct, &loc, None).await.json();
    assert_eq!(now["status"], "ready");
    o
}

/// A DER CSR for `names` with an empty subject.
pub fn csr(names: &[&str], key: &rcgen::KeyPair) -> Vec<u8> {
    let mut p =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.serialize_request(key).expect("csr").der().to_vec()
}

/// An enrollment credential with allow rules (`serial:…`, `dns:…`, `ip:…`) and a Modbus
/// `role`, made as `ca-server eab create` makes it.
pub fn credential(
    s: &TestServer,
    allow: &[&str],
    role: Option<&str>,
) -> ca_server::ra::eab::Credential {
    s.app
        .eab
        .create(&ca_server::ra::eab::NewCredential {
            allow: allow
                .iter()
                .map(|t| ca_server::ra::eab::AllowRule::parse(t).expect("rule"))
                .collect(),
            role: role.map(str::to_owned),
            ..ca_server::ra::eab::NewCredential::default()
        })
        .expect("credential")
}

/// A new account bound with `cred` (RFC 8555 §7.3.4); panics unless it is created.
pub async fn bound_account(s: &TestServer, cred: &ca_server::ra::eab::Credential) -> Account {
    let key = Key::generate();
    let binding = eab_binding(&key, &cred.kid, &cred.hmac_key, &s.url("/acme/new-account"));
    let r = s
        .post_new_account(&key, &json!({"externalAccountBinding": binding}))
        .await;
    r.assert_status(StatusCode::CREATED);
    Account {
        kid: r.header("location").expect("location"),
        key,
    }
}
