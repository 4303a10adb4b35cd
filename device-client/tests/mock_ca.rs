//! The transport against a fake CA over real TLS: root pinning by fingerprint and by file
//! (SPEC §2.3), nothing sent to a server that fails the pin, and `badNonce` retry (RFC 8555
//! §6.5). The fake serves a chain made here with rcgen: leaf, intermediate and, last, the root,
//! as ca-server does (SPEC §2.2).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use device_client::acme::AcmeClient;
use device_client::key::{KeyAlgorithm, KeyPair};
use device_client::trust::{fingerprint_text, sha256};
use device_client::{Error, TrustAnchor};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer};
use serde_json::{json, Value};

struct Pki {
    root_der: Vec<u8>,
    root_pem: String,
    inter_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
}

fn make_pki() -> Pki {
    make_pki_named("mock")
}

fn make_pki_named(name: &str) -> Pki {
    let ca = |cn: &str, constraint| {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(constraint);
        p.distinguished_name.push(DnType::CommonName, cn);
        p
    };
    let root_key = rcgen::KeyPair::generate().expect("key");
    let root_params = ca(&format!("{name} root"), BasicConstraints::Constrained(1));
    let root = root_params.self_signed(&root_key).expect("root");
    let root_issuer = Issuer::new(root_params, &root_key);
    let inter_key = rcgen::KeyPair::generate().expect("key");
    let inter_params = ca(
        &format!("{name} intermediate"),
        BasicConstraints::Constrained(0),
    );
    let inter = inter_params
        .signed_by(&inter_key, &root_issuer)
        .expect("intermediate");
    let inter_issuer = Issuer::new(inter_params, &inter_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params")
        .signed_by(&leaf_key, &inter_issuer)
        .expect("leaf");
    Pki {
        root_der: root.der().to_vec(),
        root_pem: root.pem(),
        inter_pem: inter.pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}

#[derive(Default)]
struct Seen {
    /// Every HTTP request that reached a handler.
    requests: usize,
    /// Nonces handed out, in order.
    nonces: Vec<String>,
    /// newAccount attempts, with the nonce each carried.
    new_account_nonces: Vec<String>,
}

#[derive(Clone)]
struct Mock {
    base: String,
    seen: Arc<Mutex<Seen>>,
}

impl Mock {
    fn fresh_nonce(&self) -> (HeaderMap, String) {
        let mut seen = self.seen.lock().expect("lock");
        let n = URL_SAFE_NO_PAD.encode(format!("nonce-{}", seen.nonces.len()));
        seen.nonces.push(n.clone());
        let mut h = HeaderMap::new();
        h.insert("replay-nonce", HeaderValue::from_str(&n).expect("header"));
        (h, n)
    }
}

async fn directory(State(m): State<Mock>) -> Json<Value> {
    m.seen.lock().expect("lock").requests += 1;
    Json(json!({
        "newNonce": format!("{}/nonce", m.base),
        "newAccount": format!("{}/new-acct", m.base),
        "newOrder": format!("{}/new-order", m.base),
        "meta": {"externalAccountRequired": false}
    }))
}

async fn nonce(State(m): State<Mock>) -> Response {
    m.seen.lock().expect("lock").requests += 1;
    let (h, _) = m.fresh_nonce();
    (StatusCode::OK, h).into_response()
}

/// Refuses the first newAccount with `badNonce`, and any request whose nonce is not the last one
/// handed out; accepts the rest.
async fn new_account(State(m): State<Mock>, Json(body): Json<Value>) -> Response {
    let protected = body["protected"].as_str().expect("protected");
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(protected).expect("b64")).expect("json");
    let used = header["nonce"].as_str().expect("nonce").to_owned();
    let (first, expected) = {
        let mut seen = m.seen.lock().expect("lock");
        seen.requests += 1;
        seen.new_account_nonces.push(used.clone());
        (
            seen.new_account_nonces.len() == 1,
            seen.nonces.last().cloned(),
        )
    };
    let (mut h, _) = m.fresh_nonce();
    if first || Some(&used) != expected.as_ref() {
        h.insert(
            "content-type",
            HeaderValue::from_static("application/problem+json"),
        );
        let body = json!({"type": "urn:ietf:params:acme:error:badNonce", "detail": "stale"});
        return (StatusCode::BAD_REQUEST, h, body.to_string()).into_response();
    }
    h.insert(
        "location",
        HeaderValue::from_str(&format!("{}/acct/1", m.base)).expect("header"),
    );
    (StatusCode::CREATED, h, Json(json!({"status": "valid"}))).into_response()
}

/// Serves the mock on a free loopback port, presenting `chain_pem`.
async fn serve(chain_pem: String, key_pem: String) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let base = format!("https://127.0.0.1:{}", addr.port());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mock = Mock {
        base: base.clone(),
        seen: seen.clone(),
    };
    let app = Router::new()
        .route("/directory", get(directory))
        .route("/nonce", get(nonce).head(nonce))
        .route("/new-acct", post(new_account))
        // CRL downloads: larger than an ACME response may be, and larger than a CRL may be.
        .route("/crl/3mib", get(|| async { vec![0x30u8; 3 << 20] }))
        .route("/crl/17mib", get(|| async { vec![0x30u8; 17 << 20] }))
        .with_state(mock);
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        chain_pem.into_bytes(),
        key_pem.into_bytes(),
    )
    .await
    .expect("tls config");
    let server = axum_server::from_tcp_rustls(listener, tls).expect("server");
    tokio::spawn(async move {
        let _ = server.serve(app.into_make_service()).await;
    });
    (base, seen)
}

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn fingerprint_pin_takes_the_root_from_the_chain_and_bad_nonce_is_retried() {
    let pki = make_pki();
    let chain = format!("{}{}{}", pki.leaf_pem, pki.inter_pem, pki.root_pem);
    let (base, seen) = serve(chain, pki.leaf_key_pem.clone()).await;
    let pin = TrustAnchor::from_fingerprint(&fingerprint_text(&sha256(&pki.root_der)))
        .expect("fingerprint");
    let client = AcmeClient::connect(&format!("{base}/directory"), pin, TIMEOUT)
        .await
        .expect("connects: the chain's last certificate matches the pin");
    let key = KeyPair::generate(KeyAlgorithm::P256).expect("key");
    let account = client
        .new_account(&key, None, false)
        .await
        .expect("newAccount succeeds after one badNonce");
    assert_eq!(account, format!("{base}/acct/1"));
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.new_account_nonces.len(), 2, "exactly one retry");
    // The retry used the nonce that came with the badNonce response.
    assert_eq!(seen.new_account_nonces[1], seen.nonces[1]);
}

#[tokio::test]
async fn a_wrong_fingerprint_is_refused_in_the_handshake_before_any_request() {
    let pki = make_pki();
    let chain = format!("{}{}{}", pki.leaf_pem, pki.inter_pem, pki.root_pem);
    let (base, seen) = serve(chain, pki.leaf_key_pem.clone()).await;
    let mut wrong = sha256(&pki.root_der);
    wrong[31] ^= 1;
    let pin = TrustAnchor::Fingerprint(wrong);
    let err = AcmeClient::connect(&format!("{base}/directory"), pin, TIMEOUT)
        .await
        .err()
        .expect("refused");
    match &err {
        Error::Trust(why) => {
            assert!(why.contains(&fingerprint_text(&wrong)), "{why}");
            assert!(
                why.contains(&fingerprint_text(&sha256(&pki.root_der))),
                "{why}"
            );
        }
        other => panic!("expected a trust error, got {other}"),
    }
    assert_eq!(
        seen.lock().expect("lock").requests,
        0,
        "no request reached it"
    );
}

#[tokio::test]
async fn a_chain_without_the_root_at_the_end_fails_a_fingerprint_pin() {
    let pki = make_pki();
    // Leaf and intermediate only: the last certificate is not the pinned root.
    let chain = format!("{}{}", pki.leaf_pem, pki.inter_pem);
    let (base, seen) = serve(chain, pki.leaf_key_pem.clone()).await;
    let pin = TrustAnchor::Fingerprint(sha256(&pki.root_der));
    let err = AcmeClient::connect(&format!("{base}/directory"), pin, TIMEOUT)
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, Error::Trust(_)), "{err}");
    assert_eq!(seen.lock().expect("lock").requests, 0);
}

#[tokio::test]
async fn root_file_pin_accepts_its_own_ca_only() {
    let pki = make_pki();
    let chain = format!("{}{}{}", pki.leaf_pem, pki.inter_pem, pki.root_pem);
    let (base, seen) = serve(chain, pki.leaf_key_pem.clone()).await;
    let url = format!("{base}/directory");
    let good = TrustAnchor::from_root_bytes(pki.root_pem.as_bytes()).expect("root");
    AcmeClient::connect(&url, good, TIMEOUT)
        .await
        .expect("pinned root validates the chain");
    // Another CA with its own name (with the same name, webpki reports BadSignature instead).
    let other = make_pki_named("other");
    let bad = TrustAnchor::from_root_bytes(other.root_pem.as_bytes()).expect("root");
    let err = AcmeClient::connect(&url, bad, TIMEOUT)
        .await
        .err()
        .expect("another root is refused");
    assert!(
        matches!(&err, Error::Trust(why) if why.contains("UnknownIssuer")),
        "{err}"
    );
    assert_eq!(seen.lock().expect("lock").requests, 1, "only the good GET");
}

#[tokio::test]
async fn plain_http_directory_is_refused() {
    let pin = TrustAnchor::Fingerprint([0; 32]);
    let err = AcmeClient::connect("http://127.0.0.1:1/directory", pin, TIMEOUT)
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[tokio::test]
async fn crl_downloads_may_exceed_the_acme_body_limit_up_to_16_mib() {
    let pki = make_pki();
    let chain = format!("{}{}{}", pki.leaf_pem, pki.inter_pem, pki.root_pem);
    let (base, _) = serve(chain, pki.leaf_key_pem.clone()).await;
    let pin = TrustAnchor::from_root_bytes(pki.root_pem.as_bytes()).expect("root");
    let client = AcmeClient::connect(&format!("{base}/directory"), pin, TIMEOUT)
        .await
        .expect("connects");
    let crl = client
        .fetch_crl(&format!("{base}/crl/3mib"))
        .await
        .expect("3 MiB is within the CRL limit");
    assert_eq!(crl.len(), 3 << 20);
    let e = client
        .fetch_crl(&format!("{base}/crl/17mib"))
        .await
        .expect_err("17 MiB is not")
        .to_string();
    assert!(e.contains("too large"), "{e}");
}
