//! The metrics listener over a real socket: what `/metrics` counts after an enrollment, a
//! refusal and a failed validation, and when `/ready` says the CA is ready.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use ca_server::ca::crl::{LIFETIME, REFRESH};
use ca_server::ca::IssuerKind;
use ca_server::server::metrics::{not_ready, CRL_GRACE};
use common::{bound_account, credential, csr, ready_order, Key, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts the metrics listener of `s` on a free loopback port.
fn metrics_listener(s: &TestServer) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    ca_server::server::metrics::spawn(&s.app, listener);
    addr
}

/// `GET path` over HTTP/1.1; the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "a plain body: {head}"
    );
    (status, body.to_owned())
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `series` (its name and labels as written, e.g.
/// `iiot_acme_problems_total{type="badNonce"}`), if the text has it.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

fn issued(text: &str, enrollment: &str) -> f64 {
    let series = format!(
        "iiot_acme_certificates_issued_total{{profile=\"default\",enrollment=\"{enrollment}\"}}"
    );
    sample(text, &series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

const BAD_NONCE: &str = "iiot_acme_problems_total{type=\"badNonce\"}";
const FINALIZE_COUNT: &str =
    "iiot_acme_request_duration_seconds_count{endpoint=\"/acme/order/{id}/finalize\"}";
const HTTP01_INVALID: &str =
    "iiot_acme_validations_total{challenge=\"http-01\",result=\"invalid\"}";

#[tokio::test]
async fn metrics_count_enrollments_refusals_validations_and_latency() {
    // Nothing listens on the port http-01 dials, so a validation fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let s = TestServer::with(|c| {
        c.validation.http_port = closed;
        c.issuance.cert_validity = Duration::from_secs(12 * 3600);
    });
    let addr = metrics_listener(&s);
    let before = scrape(addr).await;
    assert_eq!(issued(&before, "eab_preauthorized"), 0.0);
    assert_eq!(sample(&before, BAD_NONCE), Some(0.0));
    assert_eq!(sample(&before, HTTP01_INVALID), Some(0.0));

    // A device pre-authorized by its enrollment credential.
    let cred = credential(&s, &["dns:plant.example"], None);
    let device = bound_account(&s, &cred).await;
    let (_, order) = s
        .create_order(
            &device,
            &json!({"identifiers": [{"type": "dns", "value": "plc-1.plant.example"}]}),
        )
        .await;
    let key = rcgen::KeyPair::generate().expect("key");
    let fin = s
        .finalize(&device, &order, &csr(&["plc-1.plant.example"], &key))
        .await;
    assert_eq!(fin.json()["status"], "valid", "{}", fin.json());
    let order_id = order["finalize"]
        .as_str()
        .and_then(|u| u.rsplit('/').nth(1))
        .expect("order id")
        .to_owned();

    // A refusal: a nonce the server never issued.
    let url = s.url("/acme/new-account");
    let stranger = Key::generate();
    let protected = json!({"alg": "ES256", "nonce": "AAAA", "url": url, "jwk": stranger.jwk()});
    s.post_raw(&url, stranger.jws(&protected, Some(&json!({}))).to_string())
        .await
        .assert_problem(400, "badNonce");

    let after = scrape(addr).await;
    assert_eq!(
        issued(&after, "eab_preauthorized") - issued(&before, "eab_preauthorized"),
        1.0,
        "{after}"
    );
    assert_eq!(issued(&after, "network_challenge"), 0.0);
    assert_eq!(sample(&after, BAD_NONCE), Some(1.0), "{after}");
    assert!(
        sample(&after, FINALIZE_COUNT).is_some_and(|n| n >= 1.0),
        "{after}"
    );
    assert!(
        sample(
            &after,
            "iiot_acme_request_duration_seconds_bucket{endpoint=\"/acme/order/{id}/finalize\",le=\"+Inf\"}"
        ) == sample(&after, FINALIZE_COUNT)
    );
    assert!(
        !after.contains(&order_id),
        "series are labelled by route template, never by a request's ids"
    );

    // A certificate through a challenge: the enrollment label follows the authorization.
    // The device's key, certified already, is refused for another account first.
    let acct = s.new_account().await;
    let o = ready_order(&s, &acct, &["line2.plant.example"]).await;
    s.finalize(&acct, &o, &csr(&["line2.plant.example"], &key))
        .await
        .assert_problem(400, "badCSR");
    let fresh = rcgen::KeyPair::generate().expect("key");
    let fin = s
        .finalize(&acct, &o, &csr(&["line2.plant.example"], &fresh))
        .await;
    assert_eq!(fin.json()["status"], "valid", "{}", fin.json());
    let text = scrape(addr).await;
    assert_eq!(
        sample(&text, "iiot_acme_key_reuse_refused_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "iiot_acme_problems_total{type=\"badCSR\"}"),
        Some(1.0)
    );
    assert_eq!(issued(&text, "network_challenge"), 1.0, "{text}");
    assert_eq!(issued(&text, "eab_preauthorized"), 1.0, "{text}");

    // The expiry gauge reports the last scan: both 12-hour certificates after a scan.
    assert_eq!(
        sample(&text, "iiot_acme_certificates_expiring_24h"),
        Some(0.0)
    );
    ca_server::server::metrics::scan(&s.app).await;
    let text = scrape(addr).await;
    assert_eq!(
        sample(&text, "iiot_acme_certificates_expiring_24h"),
        Some(2.0),
        "{text}"
    );
    assert!(
        sample(&text, "iiot_acme_store_size_bytes").is_some_and(|b| b > 0.0),
        "{text}"
    );

    // A failed http-01 validation, decided in the background.
    let (_, o) = s
        .create_order(
            &acct,
            &json!({"identifiers": [{"type": "ip", "value": "127.0.0.1"}]}),
        )
        .await;
    let authz = s
        .post_as(&acct, o["authorizations"][0].as_str().expect("authz"), None)
        .await
        .json();
    let chall = authz["challenges"]
        .as_array()
        .expect("challenges")
        .iter()
        .find(|c| c["type"] == "http-01")
        .and_then(|c| c["url"].as_str())
        .expect("http-01")
        .to_owned();
    s.post_as(&acct, &chall, Some(&json!({})))
        .await
        .assert_status(http::StatusCode::OK);
    let mut counted = None;
    for _ in 0..100 {
        counted = sample(&scrape(addr).await, HTTP01_INVALID);
        if counted == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, Some(1.0), "the failed validation is counted once");
}

#[tokio::test]
async fn health_always_and_ready_once_the_ca_has_a_fresh_crl() {
    let s = TestServer::new();
    let addr = metrics_listener(&s);
    assert_eq!(get(addr, "/health").await.0, 200);

    // Built but not started: no CRL has been signed yet.
    let (status, body) = get(addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["ready"], false);
    let reasons = v["notReady"].to_string();
    assert!(reasons.contains("ec CRL has not been published"), "{v}");
    assert!(reasons.contains("rsa CRL has not been published"), "{v}");

    // Started: serving publishes the CRLs at once.
    let https = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let serving = s.app.clone();
    tokio::spawn(async move { ca_server::server::serve_on(serving, https).await });
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = get(addr, "/ready").await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(get(addr, "/health").await.0, 200);
    let text = scrape(addr).await;
    let age = sample(&text, "iiot_acme_crl_age_seconds{issuer=\"ec\"}").expect("CRL age");
    assert!((0.0..60.0).contains(&age), "{age}");

    // The same CRL later: missed refreshes, then past its nextUpdate.
    let published = s.app.crl.published(IssuerKind::Ec).expect("published");
    assert!(not_ready(&s.app, published + REFRESH).is_empty());
    let late = not_ready(&s.app, published + REFRESH + CRL_GRACE + 1);
    assert!(
        late.iter().any(|r| r.contains("ec CRL was published")),
        "{late:?}"
    );
    let stale = not_ready(&s.app, published + LIFETIME);
    assert!(
        stale
            .iter()
            .any(|r| r.contains("ec CRL is past its nextUpdate")),
        "{stale:?}"
    );
}

#[tokio::test]
async fn unknown_paths_are_counted_under_one_label() {
    let s = TestServer::new();
    let addr = metrics_listener(&s);
    for id in ["a1", "b2", "c3"] {
        s.get(&s.url(&format!("/no/such/{id}"))).await;
    }
    let text = scrape(addr).await;
    assert_eq!(
        sample(
            &text,
            "iiot_acme_request_duration_seconds_count{endpoint=\"unmatched\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert!(!text.contains("/no/such"), "{text}");
    let (status, _) = get(addr, "/metrics/other").await;
    assert_eq!(status, 404);
}
