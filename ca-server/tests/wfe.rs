//! Request-level tests of the web front end: every rule of RFC 8555 §6 and the account and
//! order endpoints, through the real router without a socket.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use ca_server::ra::eab::NewCredential;
use common::{b64, csr, ready_order, Key, TestServer};
use serde_json::{json, Value};

#[tokio::test]
async fn directory_lists_resources_and_every_response_has_acme_headers() {
    let s = TestServer::new();
    let r = s.get(&s.url("/directory")).await;
    assert_eq!(r.status, StatusCode::OK);
    let d = r.json();
    for k in [
        "newNonce",
        "newAccount",
        "newOrder",
        "revokeCert",
        "keyChange",
    ] {
        assert!(
            d[k].as_str().is_some_and(|u| u.starts_with("https://")),
            "{k}: {d}"
        );
    }
    assert_eq!(d["meta"]["externalAccountRequired"], false);
    assert!(r.header("replay-nonce").is_some());
    assert_eq!(
        r.header("link").as_deref(),
        Some(format!("<{}>;rel=\"index\"", s.url("/directory")).as_str())
    );
}

#[tokio::test]
async fn new_nonce_head_and_get() {
    let s = TestServer::new();
    let h = s.send_empty(Method::HEAD, &s.url("/acme/new-nonce")).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("cache-control").as_deref(), Some("no-store"));
    let g = s.get(&s.url("/acme/new-nonce")).await;
    assert_eq!(g.status, StatusCode::NO_CONTENT);
    assert_eq!(g.header("cache-control").as_deref(), Some("no-store"));
    assert_ne!(h.header("replay-nonce"), g.header("replay-nonce"));
}

#[tokio::test]
async fn unknown_paths_and_methods_get_problem_documents() {
    let s = TestServer::new();
    let r = s.get(&s.url("/nope")).await;
    r.assert_problem(404, "malformed");
    let r = s.get(&s.url("/acme/new-order")).await;
    r.assert_problem(405, "malformed");
}

#[tokio::test]
async fn new_account_create_reuse_and_only_return_existing() {
    let s = TestServer::new();
    let key = Key::generate();
    let r = s
        .post_new_account(&key, &json!({"onlyReturnExisting": true}))
        .await;
    r.assert_problem(400, "accountDoesNotExist");

    let r = s
        .post_new_account(&key, &json!({"contact": ["mailto:ops@plant.example"]}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let loc = r.header("location").expect("location");
    assert!(loc.starts_with(&s.url("/acme/acct/")));
    assert_eq!(r.json()["status"], "valid");
    assert_eq!(r.json()["contact"], json!(["mailto:ops@plant.example"]));

    // Same key again: 200 and the same Location (RFC 8555 §7.3.1).
    let r = s.post_new_account(&key, &json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("location"), Some(loc.clone()));
    let r = s
        .post_new_account(&key, &json!({"onlyReturnExisting": true}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("location"), Some(loc));
}

#[tokio::test]
async fn bad_contacts_are_refused() {
    let s = TestServer::new();
    let r = s
        .post_new_account(&Key::generate(), &json!({"contact": ["tel:+123"]}))
        .await;
    r.assert_problem(400, "unsupportedContact");
    let r = s
        .post_new_account(
            &Key::generate(),
            &json!({"contact": ["mailto:a@b.example,c@d.example"]}),
        )
        .await;
    r.assert_problem(400, "invalidContact");
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let s = TestServer::new();
    let r = s
        .send(
            Request::post(s.url("/acme/new-account"))
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .expect("req"),
        )
        .await;
    r.assert_problem(415, "malformed");
}

#[tokio::test]
async fn bad_nonce_gets_bad_nonce_and_a_fresh_nonce() {
    let s = TestServer::new();
    let key = Key::generate();
    let url = s.url("/acme/new-account");
    let protected = json!({"alg": "ES256", "nonce": "AAAA", "url": url, "jwk": key.jwk()});
    let r = s
        .post_raw(&url, key.jws(&protected, Some(&json!({}))).to_string())
        .await;
    r.assert_problem(400, "badNonce");

    // Replay: the same nonce twice.
    let nonce = s.nonce().await;
    let protected = json!({"alg": "ES256", "nonce": nonce, "url": url, "jwk": key.jwk()});
    let body = key.jws(&protected, Some(&json!({}))).to_string();
    assert_eq!(
        s.post_raw(&url, body.clone()).await.status,
        StatusCode::CREATED
    );
    s.post_raw(&url, body).await.assert_problem(400, "badNonce");

    // No nonce at all.
    let protected = json!({"alg": "ES256", "url": url, "jwk": key.jwk()});
    s.post_raw(&url, key.jws(&protected, Some(&json!({}))).to_string())
        .await
        .assert_problem(400, "badNonce");
}

#[tokio::test]
async fn url_must_match_request_url() {
    let s = TestServer::new();
    let key = Key::generate();
    let url = s.url("/acme/new-account");
    let protected = json!({"alg": "ES256", "nonce": s.nonce().await, "url": s.url("/acme/new-order"), "jwk": key.jwk()});
    let r = s
        .post_raw(&url, key.jws(&protected, Some(&json!({}))).to_string())
        .await;
    r.assert_problem(403, "unauthorized");
}

#[tokio::test]
async fn jwk_where_kid_is_required_and_kid_where_jwk_is_required() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let r = s
        .post(
            &acct.key,
            None,
            &s.url("/acme/new-order"),
            Some(&json!({"identifiers": [{"type": "dns", "value": "a.example"}]})),
        )
        .await;
    r.assert_problem_detail(400, "malformed", "kid");

    let r = s
        .post(
            &acct.key,
            Some(&acct.kid),
            &s.url("/acme/new-account"),
            Some(&json!({})),
        )
        .await;
    r.assert_problem(400, "malformed");

    // Both jwk and kid.
    let url = s.url("/acme/new-order");
    let protected = json!({"alg": "ES256", "nonce": s.nonce().await, "url": url, "jwk": acct.key.jwk(), "kid": acct.kid});
    s.post_raw(&url, acct.key.jws(&protected, Some(&json!({}))).to_string())
        .await
        .assert_problem(400, "malformed");
}

#[tokio::test]
async fn unknown_account_is_account_does_not_exist() {
    let s = TestServer::new();
    let key = Key::generate();
    let kid = s.url("/acme/acct/doesnotexist");
    let r = s
        .post(
            &key,
            Some(&kid),
            &s.url("/acme/new-order"),
            Some(&json!({"identifiers": []})),
        )
        .await;
    r.assert_problem(400, "accountDoesNotExist");
}

#[tokio::test]
async fn padded_base64_is_malformed() {
    let s = TestServer::new();
    let key = Key::generate();
    let url = s.url("/acme/new-account");
    let protected = json!({"alg": "ES256", "nonce": s.nonce().await, "url": url, "jwk": key.jwk()});
    let mut jws = key.jws(&protected, Some(&json!({"a": 1})));
    // `{"a":1}` is 7 bytes: unpadded base64url has 10 chars; padded adds "==".
    let padded = format!("{}==", jws["payload"].as_str().expect("payload"));
    jws["payload"] = json!(padded);
    let r = s.post_raw(&url, jws.to_string()).await;
    r.assert_problem_detail(400, "malformed", "base64url");
}

#[tokio::test]
async fn unsupported_algorithms_are_bad_signature_algorithm_with_the_list() {
    let s = TestServer::new();
    let key = Key::generate();
    for alg in ["none", "HS256", "ES512"] {
        assert_bad_signature_algorithm(&post_with_alg(&s, &key, alg).await);
    }
}

/// POSTs `{}` to newAccount signed with `key` (a P-256 key) but naming `alg` as its algorithm.
async fn post_with_alg(s: &TestServer, key: &Key, alg: &str) -> common::Reply {
    let url = s.url("/acme/new-account");
    let protected = json!({"alg": alg, "nonce": s.nonce().await, "url": url, "jwk": key.jwk()});
    s.post_raw(&url, key.jws(&protected, Some(&json!({}))).to_string())
        .await
}

/// Asserts a badSignatureAlgorithm problem whose `algorithms` list ES256.
fn assert_bad_signature_algorithm(r: &common::Reply) {
    let p = r.assert_problem(400, "badSignatureAlgorithm");
    assert!(
        p["algorithms"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("ES256"))),
        "{p}"
    );
}

/// A P-256 key under ES384 is on the wrong curve for a supported algorithm: `badPublicKey`.
/// A P-256 key under EdDSA or RS256 is the wrong key type: `badSignatureAlgorithm`, with the
/// list of algorithms.
#[tokio::test]
async fn wrong_curve_for_alg_is_bad_public_key_and_wrong_key_type_bad_signature_algorithm() {
    let s = TestServer::new();
    let key = Key::generate();
    let p = post_with_alg(&s, &key, "ES384")
        .await
        .assert_problem_detail(400, "badPublicKey", "ES384 needs a P-384 key");
    assert!(p.get("algorithms").is_none(), "{p}");
    for alg in ["EdDSA", "RS256"] {
        assert_bad_signature_algorithm(&post_with_alg(&s, &key, alg).await);
    }
}

#[tokio::test]
async fn bad_signatures_and_garbage_never_panic() {
    let s = TestServer::new();
    let key = Key::generate();
    let url = s.url("/acme/new-account");
    let protected = json!({"alg": "ES256", "nonce": s.nonce().await, "url": url, "jwk": key.jwk()});
    let mut jws = key.jws(&protected, Some(&json!({})));
    jws["signature"] = json!(b64([0u8; 64]));
    s.post_raw(&url, jws.to_string())
        .await
        .assert_problem(403, "unauthorized");

    for body in [
        "".to_owned(),
        "null".to_owned(),
        "[]".to_owned(),
        "{\"protected\":1,\"payload\":\"\",\"signature\":\"\"}".to_owned(),
        json!({"protected": b64("not json"), "payload": "", "signature": ""}).to_string(),
        json!({"protected": b64("{}"), "payload": "", "signature": ""}).to_string(),
        json!({"protected": b64("{\"alg\":\"ES256\"}"), "payload": "", "signature": "", "header": {}}).to_string(),
        json!({"signatures": []}).to_string(),
        "\u{0}\u{ff}".to_owned(),
    ] {
        let r = s.post_raw(&url, body.clone()).await;
        assert!(r.status.is_client_error(), "{body:?} -> {}", r.status);
        assert_eq!(r.header("content-type").as_deref(), Some("application/problem+json"));
    }
    let big = "x".repeat(200 * 1024);
    s.post_raw(&url, big).await.assert_problem(413, "malformed");
}

#[tokio::test]
async fn account_update_and_deactivation() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let r = s.post_as(&acct, &acct.kid, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "valid");

    let r = s
        .post_as(
            &acct,
            &acct.kid,
            Some(&json!({"contact": ["mailto:new@plant.example"]})),
        )
        .await;
    assert_eq!(r.json()["contact"], json!(["mailto:new@plant.example"]));

    let other = s.new_account().await;
    s.post_as(&other, &acct.kid, None)
        .await
        .assert_problem(403, "unauthorized");

    let r = s
        .post_as(&acct, &acct.kid, Some(&json!({"status": "valid"})))
        .await;
    r.assert_problem(400, "malformed");
    let r = s
        .post_as(&acct, &acct.kid, Some(&json!({"status": "deactivated"})))
        .await;
    assert_eq!(r.json()["status"], "deactivated");
    // > … MUST NOT accept further requests authorized by that account's key (401)
    let r = s
        .post_new_order(
            &acct,
            &json!({"identifiers": [{"type": "dns", "value": "a.example"}]}),
        )
        .await;
    r.assert_problem(401, "unauthorized");
}

async fn key_change_request(
    s: &TestServer,
    acct: &common::Account,
    new_key: &Key,
    inner_url: Option<&str>,
) -> common::Reply {
    let url = s.url("/acme/key-change");
    let inner_protected =
        json!({"alg": "ES256", "jwk": new_key.jwk(), "url": inner_url.unwrap_or(&url)});
    let inner = new_key.jws(
        &inner_protected,
        Some(&json!({"account": acct.kid, "oldKey": acct.key.jwk()})),
    );
    s.post_as(acct, &url, Some(&inner)).await
}

#[tokio::test]
async fn key_change_rolls_the_key_over() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let new_key = Key::generate();
    let r = key_change_request(&s, &acct, &new_key, None).await;
    r.assert_status(StatusCode::OK);

    // The old key no longer works; the new one does, for the same account.
    s.post_as(&acct, &acct.kid, None)
        .await
        .assert_problem(403, "unauthorized");
    let r = s.post(&new_key, Some(&acct.kid), &acct.kid, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .post_new_account(&new_key, &json!({"onlyReturnExisting": true}))
        .await;
    assert_eq!(r.header("location"), Some(acct.kid.clone()));
    let r = s
        .post_new_account(&acct.key, &json!({"onlyReturnExisting": true}))
        .await;
    r.assert_problem(400, "accountDoesNotExist");
}

#[tokio::test]
async fn key_change_to_a_key_in_use_is_409_with_location() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let other = s.new_account().await;
    let r = key_change_request(&s, &acct, &other.key, None).await;
    r.assert_problem(409, "malformed");
    assert_eq!(r.header("location"), Some(other.kid.clone()));

    let r = key_change_request(
        &s,
        &acct,
        &Key::generate(),
        Some("https://elsewhere.example/x"),
    )
    .await;
    r.assert_problem(400, "malformed");
}

#[tokio::test]
async fn new_order_identifier_checks() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let order = |ids: Value| json!({"identifiers": ids});

    // A dns identifier holding an IP address is refused (RFC 8738 has type ip for that).
    let r = s
        .post_new_order(
            &acct,
            &order(json!([{"type": "dns", "value": "127.0.0.1"}])),
        )
        .await;
    r.assert_problem(400, "malformed");
    let r = s
        .post_new_order(
            &acct,
            &order(json!([{"type": "email", "value": "a@b.example"}])),
        )
        .await;
    r.assert_problem(400, "unsupportedIdentifier");
    let r = s.post_new_order(&acct, &order(json!([]))).await;
    r.assert_problem(400, "malformed");
    let r = s
        .post_new_order(
            &acct,
            &order(json!([{"type": "dns", "value": "*.example.com"}])),
        )
        .await;
    r.assert_problem(400, "rejectedIdentifier");
    let r = s
        .post_new_order(
            &acct,
            &order(
                json!([{"type": "dns", "value": "bad_name"}, {"type": "ip", "value": "::FFFF"}]),
            ),
        )
        .await;
    let p = r.assert_problem(400, "compound");
    assert_eq!(p["subproblems"].as_array().map(Vec::len), Some(2), "{p}");
    assert!(p["subproblems"][0]["identifier"].is_object(), "{p}");
}

#[tokio::test]
async fn new_order_creates_pending_order_with_authorizations() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let (order_url, o) = s
        .create_order(
            &acct,
            &json!({"identifiers": [{"type": "dns", "value": "PLC-1.Plant.Example"}, {"type": "ip", "value": "192.0.2.7"}]}),
        )
        .await;
    assert_eq!(o["status"], "pending");
    assert_eq!(
        o["identifiers"],
        json!([{"type": "dns", "value": "plc-1.plant.example"}, {"type": "ip", "value": "192.0.2.7"}])
    );
    let authzs = o["authorizations"].as_array().expect("authzs").clone();
    assert_eq!(authzs.len(), 2);

    let a = s
        .post_as(&acct, authzs[1].as_str().expect("url"), None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = a.json();
    assert_eq!(a["status"], "pending");
    assert_eq!(a["identifier"], json!({"type": "ip", "value": "192.0.2.7"}));
    let types: Vec<_> = a["challenges"]
        .as_array()
        .expect("ch")
        .iter()
        .map(|c| c["type"].clone())
        .collect();
    assert_eq!(types, vec![json!("http-01"), json!("tls-alpn-01")]);
    for c in a["challenges"].as_array().expect("ch") {
        // Token: at least 128 bits of entropy, base64url (RFC 8555 §8.3).
        assert!(c["token"].as_str().is_some_and(|t| t.len() >= 22), "{c}");
    }

    // Orders list and order fetch.
    let acct_obj = s.post_as(&acct, &acct.kid, None).await.json();
    let list = s
        .post_as(&acct, acct_obj["orders"].as_str().expect("orders"), None)
        .await
        .json();
    assert_eq!(list["orders"], json!([order_url]));
    let o2 = s.post_as(&acct, &order_url, None).await;
    assert_eq!(o2.json()["status"], "pending");

    // Another account sees nothing.
    let other = s.new_account().await;
    s.post_as(&other, &order_url, None)
        .await
        .assert_problem(404, "malformed");
    s.post_as(&other, authzs[0].as_str().expect("url"), None)
        .await
        .assert_problem(404, "malformed");

    // Finalize before ready.
    let r = s.finalize(&acct, &o, b"whatever").await;
    r.assert_problem(403, "orderNotReady");

    // Deactivating an authorization makes the order invalid (never "deactivated").
    let r = s
        .post_as(
            &acct,
            authzs[0].as_str().expect("url"),
            Some(&json!({"status": "deactivated"})),
        )
        .await;
    assert_eq!(r.json()["status"], "deactivated");
    let o3 = s.post_as(&acct, &order_url, None).await.json();
    assert_eq!(o3["status"], "invalid");
    let list = s
        .post_as(&acct, acct_obj["orders"].as_str().expect("orders"), None)
        .await
        .json();
    assert_eq!(list["orders"], json!([]));
}

#[tokio::test]
async fn eab_required_refuses_unbound_accounts() {
    let s = TestServer::with(|c| c.eab.required = true);
    assert_eq!(s.directory().await["meta"]["externalAccountRequired"], true);
    let r = s.post_new_account(&Key::generate(), &json!({})).await;
    r.assert_problem(403, "externalAccountRequired");
}

#[tokio::test]
async fn eab_binding_single_use_expiry_and_wrong_key() {
    let s = TestServer::with(|c| c.eab.required = true);
    let url = s.url("/acme/new-account");
    let cred = s
        .app
        .eab
        .create(&NewCredential {
            max_uses: Some(1),
            ..NewCredential::default()
        })
        .expect("create");

    // Wrong HMAC key.
    let key = Key::generate();
    let bad = common::eab_binding(&key, &cred.kid, &b64([7u8; 32]), &url);
    s.post_new_account(&key, &json!({"externalAccountBinding": bad}))
        .await
        .assert_problem(403, "unauthorized");

    // Binding made for another account key.
    let other = Key::generate();
    let wrong = common::eab_binding(&other, &cred.kid, &cred.hmac_key, &url);
    s.post_new_account(&key, &json!({"externalAccountBinding": wrong}))
        .await
        .assert_problem(403, "unauthorized");

    // Good, then spent.
    let good = common::eab_binding(&key, &cred.kid, &cred.hmac_key, &url);
    let r = s
        .post_new_account(&key, &json!({"externalAccountBinding": good}))
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let key2 = Key::generate();
    let again = common::eab_binding(&key2, &cred.kid, &cred.hmac_key, &url);
    s.post_new_account(&key2, &json!({"externalAccountBinding": again}))
        .await
        .assert_problem_detail(403, "unauthorized", "already used");

    // Expired.
    let short = s
        .app
        .eab
        .create(&NewCredential {
            expires_in: Some(std::time::Duration::from_secs(0)),
            ..NewCredential::default()
        })
        .expect("create");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let key3 = Key::generate();
    let b = common::eab_binding(&key3, &short.kid, &short.hmac_key, &url);
    s.post_new_account(&key3, &json!({"externalAccountBinding": b}))
        .await
        .assert_problem_detail(403, "unauthorized", "expired");

    // Revoked.
    let multi = s.app.eab.create(&NewCredential::default()).expect("create");
    assert!(s.app.eab.revoke(&multi.kid).expect("revoke"));
    let key4 = Key::generate();
    let b = common::eab_binding(&key4, &multi.kid, &multi.hmac_key, &url);
    s.post_new_account(&key4, &json!({"externalAccountBinding": b}))
        .await
        .assert_problem(403, "unauthorized");
}

/// Sends `n` copies of one request at once, each pre-signed with its own nonce so they race at
/// the server, not at the client.
async fn race(
    s: &TestServer,
    acct: &common::Account,
    url: &str,
    body: &Value,
    n: usize,
) -> Vec<common::Reply> {
    let mut requests = Vec::new();
    for _ in 0..n {
        requests.push(s.signed_post(acct, url, Some(body)).await);
    }
    common::send_concurrently(s, requests).await
}

/// A certificate issued for one name through a ready order.
struct Issued {
    pem: String,
    der: Vec<u8>,
    key: rcgen::KeyPair,
}

async fn issue(s: &TestServer, acct: &common::Account, name: &str) -> Issued {
    let o = ready_order(s, acct, &[name]).await;
    let key = rcgen::KeyPair::generate().expect("key");
    let fin = s.finalize(acct, &o, &csr(&[name], &key)).await.json();
    let pem = s.certificate_chain(acct, &fin).await;
    let der = common::leaf_der(&pem);
    Issued { pem, der, key }
}

#[tokio::test]
async fn finalize_issues_and_certificate_downloads_as_pem_chain() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let o = ready_order(&s, &acct, &["plc-1.plant.example"]).await;
    let key = rcgen::KeyPair::generate().expect("key");
    let r = s
        .finalize(&acct, &o, &csr(&["plc-1.plant.example"], &key))
        .await;
    r.assert_status(StatusCode::OK);
    let fin = r.json();
    assert_eq!(fin["status"], "valid");
    let cert_url = fin["certificate"].as_str().expect("certificate url");

    let c = s.post_as(&acct, cert_url, None).await;
    assert_eq!(c.status, StatusCode::OK);
    assert_eq!(
        c.header("content-type").as_deref(),
        Some("application/pem-certificate-chain")
    );
    let pem = String::from_utf8(c.body).expect("utf8");
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);

    // Someone else's account cannot download it; GET is not allowed.
    let other = s.new_account().await;
    s.post_as(&other, cert_url, None)
        .await
        .assert_problem(404, "malformed");
    s.get(cert_url).await.assert_problem(405, "malformed");
    // A second finalize of a valid order is orderNotReady.
    let r = s
        .finalize(&acct, &o, &csr(&["plc-1.plant.example"], &key))
        .await;
    r.assert_problem(403, "orderNotReady");
}

#[tokio::test]
async fn finalize_with_wrong_identifiers_is_bad_csr_and_order_stays_ready() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let o = ready_order(&s, &acct, &["a.plant.example", "b.plant.example"]).await;
    let key = rcgen::KeyPair::generate().expect("key");
    let fin = o["finalize"].as_str().expect("fin");
    for names in [
        &["a.plant.example"][..],
        &["a.plant.example", "b.plant.example", "c.plant.example"],
        &["a.plant.example", "x.plant.example"],
    ] {
        let r = s.finalize(&acct, &o, &csr(names, &key)).await;
        r.assert_problem(400, "badCSR");
    }
    s.post_as(&acct, fin, Some(&json!({"csr": "!!"})))
        .await
        .assert_problem(400, "badCSR");
    s.finalize(&acct, &o, b"garbage")
        .await
        .assert_problem(400, "badCSR");
    assert_eq!(
        s.post_as(&acct, o["url"].as_str().expect("url"), None)
            .await
            .json()["status"],
        "ready"
    );
}

#[tokio::test]
async fn finalize_refuses_the_account_key_as_certificate_key() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let o = ready_order(&s, &acct, &["plc-2.plant.example"]).await;
    let account_key =
        rcgen::KeyPair::try_from(acct.key.pkcs8.as_slice()).expect("same key in rcgen");
    let r = s
        .finalize(&acct, &o, &csr(&["plc-2.plant.example"], &account_key))
        .await;
    r.assert_problem_detail(400, "badCSR", "account key");
}

#[tokio::test]
async fn finalize_refuses_sha1_signed_csr() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let o = ready_order(&s, &acct, &["plc-3.plant.example"]).await;
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("k.pem");
    let out = dir.path().join("r.der");
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-sha1",
            "-subj",
            "/CN=plc-3.plant.example",
            "-outform",
            "DER",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&out)
        .status()
        .expect("openssl is installed by scripts/install-test-deps.sh");
    assert!(st.success());
    let der = std::fs::read(&out).expect("csr");
    let r = s.finalize(&acct, &o, &der).await;
    let p = r.assert_problem(400, "badCSR");
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("sha1"),
        "{p}"
    );
}

#[tokio::test]
async fn concurrent_finalizes_issue_exactly_one_certificate() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let o = ready_order(&s, &acct, &["plc-4.plant.example"]).await;
    let fin = o["finalize"].as_str().expect("fin").to_owned();
    let key = rcgen::KeyPair::generate().expect("key");
    let body = json!({"csr": b64(csr(&["plc-4.plant.example"], &key))});
    let replies = race(&s, &acct, &fin, &body, 8).await;
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    for r in replies.iter().filter(|r| r.status != StatusCode::OK) {
        r.assert_problem(403, "orderNotReady");
    }
    assert_eq!(ok, 1, "exactly one finalize wins");
    let certs = s
        .app
        .db
        .store()
        .scan_prefix(ca_server::storage::Table::Certificates, b"")
        .expect("scan");
    assert_eq!(certs.len(), 1, "exactly one certificate issued");
}

#[tokio::test]
async fn revocation_by_owner_by_certificate_key_and_refusals() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let Issued { der, key, .. } = issue(&s, &acct, "plc-5.plant.example").await;
    let url = s.url("/acme/revoke-cert");

    // Reason 6 (certificateHold) is not for subscribers.
    s.post_as(
        &acct,
        &url,
        Some(&json!({"certificate": b64(&der), "reason": 6})),
    )
    .await
    .assert_problem(400, "badRevocationReason");
    // An unrelated account may not revoke.
    let other = s.new_account().await;
    s.post_as(&other, &url, Some(&json!({"certificate": b64(&der)})))
        .await
        .assert_problem(403, "unauthorized");
    // A certificate we never issued.
    s.post_as(&acct, &url, Some(&json!({"certificate": b64(b"junk")})))
        .await
        .assert_problem(400, "malformed");

    // Signed with the certificate's own key (jwk), reason keyCompromise.
    let cert_key = Key::from_pkcs8(&key.serialize_der());
    let r = s
        .post(
            &cert_key,
            None,
            &url,
            Some(&json!({"certificate": b64(&der), "reason": 1})),
        )
        .await;
    r.assert_status(StatusCode::OK);
    s.post_as(&acct, &url, Some(&json!({"certificate": b64(&der)})))
        .await
        .assert_problem(400, "alreadyRevoked");
}

#[tokio::test]
async fn directory_allows_post_as_get_and_405_names_allowed_methods() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let r = s.post_as(&acct, &s.url("/directory"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["newOrder"].is_string());
    let r = s.send_empty(Method::PUT, &s.url("/directory")).await;
    r.assert_problem(405, "malformed");
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD, POST"));
    let r = s.get(&s.url("/acme/new-order")).await;
    assert_eq!(r.header("allow").as_deref(), Some("POST"));
}

#[tokio::test]
async fn new_account_with_a_deactivated_key_is_401() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    s.post_as(&acct, &acct.kid, Some(&json!({"status": "deactivated"})))
        .await;
    let r = s
        .post_new_account(&acct.key, &json!({"onlyReturnExisting": true}))
        .await;
    r.assert_problem(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_new_accounts_with_one_key_create_one_account() {
    let s = TestServer::new();
    let url = s.url("/acme/new-account");
    // Several rounds: the race window is small, one round alone rarely hits it.
    for _ in 0..20 {
        let key = Key::generate();
        let mut reqs = Vec::new();
        for _ in 0..12 {
            let protected =
                json!({"alg": "ES256", "nonce": s.nonce().await, "url": url, "jwk": key.jwk()});
            let jws = key.jws(&protected, Some(&json!({})));
            reqs.push(common::jose_post(&url, jws.to_string()));
        }
        let mut locations = std::collections::BTreeSet::new();
        let mut created = 0;
        for r in common::send_concurrently(&s, reqs).await {
            created += usize::from(r.status == StatusCode::CREATED);
            locations.insert(r.header("location").expect("location"));
        }
        assert_eq!(created, 1, "exactly one 201");
        assert_eq!(locations.len(), 1, "every reply names the same account");
    }
}

#[tokio::test]
async fn malformed_paths_and_queries_get_problem_documents() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let orders = format!("{}/orders?after=a&after=b", acct.kid);
    s.post_as(&acct, &orders, None)
        .await
        .assert_problem(400, "malformed");
}

#[tokio::test]
async fn orders_cannot_be_posted_to_and_deactivation_cancels_them() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let r = s
        .post_new_order(
            &acct,
            &json!({"identifiers": [{"type": "dns", "value": "a.example"}]}),
        )
        .await;
    let order_url = r.header("location").expect("location");
    s.post_as(&acct, &order_url, Some(&json!({"status": "valid"})))
        .await
        .assert_problem(400, "malformed");
    s.post_as(&acct, &acct.kid, Some(&json!({"status": "deactivated"})))
        .await;
    let order: ca_server::ra::order::Order = s
        .app
        .db
        .get(
            ca_server::storage::Table::Orders,
            order_url.rsplit('/').next().expect("id"),
        )
        .expect("get")
        .expect("order");
    assert_eq!(
        order.status(&s.app).expect("status"),
        ca_server::types::OrderStatus::Invalid
    );
}

#[tokio::test]
async fn revoked_certificates_appear_on_the_crl_named_in_every_certificate() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let Issued { pem, der, .. } = issue(&s, &acct, "plc-6.plant.example").await;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert");
    let cdp = common::crl_distribution_points(&der);
    assert!(cdp.contains(&s.url("/crl")), "{cdp}");

    let crl_number = |der: &[u8]| {
        let (_, crl) = x509_parser::parse_x509_crl(der).expect("CRL parses");
        let serials: Vec<Vec<u8>> = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        (crl.crl_number().map(|n| n.to_string()), serials)
    };
    let get_crl = || async {
        let r = s.get(&s.url("/crl")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/pkix-crl")
        );
        r.body
    };
    let (n1, before) = crl_number(&get_crl().await);
    assert!(before.is_empty());

    let r = s
        .post_as(
            &acct,
            &s.url("/acme/revoke-cert"),
            Some(&json!({"certificate": b64(&der), "reason": 4})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // By the time the revocation is answered the CRL file lists it, with no GET /crl in
    // between: mosquitto's `crlfile` reads only the file.
    let crl_pem = s.dir.path().join("crl.pem");
    let file = std::fs::read(&crl_pem).expect("crl.pem");
    let (_, file) = x509_parser::pem::parse_x509_pem(&file).expect("crl.pem is PEM");
    let (n_file, in_file) = crl_number(&file.contents);
    assert_eq!(in_file, vec![cert.raw_serial().to_vec()]);
    let (_, crl) = x509_parser::parse_x509_crl(&file.contents).expect("CRL parses");
    let next = crl.next_update().expect("nextUpdate (RFC 5280 §5.1.2.5)");
    assert_eq!(
        next.timestamp() - crl.last_update().timestamp(),
        24 * 3600,
        "nextUpdate is thisUpdate + 24 h"
    );
    let (n2, after) = crl_number(&get_crl().await);
    assert_eq!(after, vec![cert.raw_serial().to_vec()]);
    assert_ne!(n1, n2, "a new CRL has a new number");
    assert_eq!(n_file, n2, "the file and the URL serve the same CRL");

    // openssl, given the CRL file the server writes, reports the certificate revoked.
    let dir = tempfile::tempdir().expect("tmp");
    let chain = dir.path().join("chain.pem");
    std::fs::write(&chain, &pem).expect("write");
    let inter = dir.path().join("inter.pem");
    std::fs::write(&inter, s.app.ca.intermediate_pem()).expect("write");
    let out = std::process::Command::new("openssl")
        .args(["verify", "-crl_check", "-CAfile"])
        .arg(s.app.ca.root_path())
        .arg("-untrusted")
        .arg(&inter)
        .arg("-CRLfile")
        .arg(&crl_pem)
        .arg(&chain)
        .output()
        .expect("openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("certificate revoked"), "{text}");
}

#[tokio::test]
async fn renewal_info_windows_and_replaces() {
    let s = TestServer::new();
    let d = s.directory().await;
    let ri = d["renewalInfo"]
        .as_str()
        .expect("renewalInfo in the directory")
        .to_owned();
    let acct = s.new_account().await;
    let Issued { der, .. } = issue(&s, &acct, "plc-8.plant.example").await;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert");
    let id = ari_id(&der);

    // RFC 9773 §4.2: unauthenticated GET, suggestedWindow inside the validity, Retry-After.
    let r = s.get(&format!("{ri}/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("retry-after").is_some());
    let w = &r.json()["suggestedWindow"];
    let t = |v: &Value| {
        time::OffsetDateTime::parse(
            v.as_str().expect("time"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("rfc3339")
    };
    let (start, end) = (t(&w["start"]), t(&w["end"]));
    assert!(start < end);
    assert!(start > cert.validity().not_before.to_datetime());
    assert!(end < cert.validity().not_after.to_datetime());
    // Unknown certificate: 404; malformed identifier: 400.
    // Same AKI, serial 01 02 03 (base64url "AQID").
    let other = format!("{}.AQID", id.split_once('.').expect("AKI.serial").0);
    s.get(&format!("{ri}/{other}"))
        .await
        .assert_problem(404, "malformed");
    s.get(&format!("{ri}/nodot"))
        .await
        .assert_problem(400, "malformed");

    // One order may replace it; a second one is 409 alreadyReplaced.
    let new_order = |replaces: String| json!({"identifiers": [{"type": "dns", "value": "plc-8.plant.example"}], "replaces": replaces});
    s.post_new_order(&acct, &new_order(id.clone()))
        .await
        .assert_status(StatusCode::CREATED);
    s.post_new_order(&acct, &new_order(id.clone()))
        .await
        .assert_problem(409, "alreadyReplaced");
    // Another account cannot claim it.
    let stranger = s.new_account().await;
    s.post_new_order(&stranger, &new_order(id.clone()))
        .await
        .assert_problem(403, "unauthorized");

    // The operator pulls renewal forward (ca-server renew-early, over the admin API): the
    // window starts now.
    let admin = ca_server::admin::socket::router(ca_server::ra::Ra::clone(&s.app));
    let req = Request::post("/renew-early")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"serial": hex::encode(cert.raw_serial())}).to_string(),
        ))
        .expect("req");
    let r = common::Reply::read(
        tower::ServiceExt::oneshot(admin, req)
            .await
            .expect("infallible"),
    )
    .await;
    assert_eq!(
        r.json()["renewNow"].as_array().map(Vec::len),
        Some(1),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let w = s.get(&format!("{ri}/{id}")).await.json();
    assert!(
        t(&w["suggestedWindow"]["start"]) <= time::OffsetDateTime::now_utc(),
        "{w}"
    );

    // Revoked: the window moves into the past, so clients renew now.
    s.post_as(
        &acct,
        &s.url("/acme/revoke-cert"),
        Some(&json!({"certificate": b64(&der)})),
    )
    .await;
    let w = s.get(&format!("{ri}/{id}")).await.json();
    assert!(t(&w["suggestedWindow"]["end"]) < time::OffsetDateTime::now_utc());
}

/// The RFC 9773 §4.1 certificate identifier of an issued leaf.
fn ari_id(der: &[u8]) -> String {
    ca_server::ra::renewal::cert_id_of(der).expect("ARI certificate id")
}

/// A newOrder replacing `replaces`.
async fn replacing_order(
    s: &TestServer,
    acct: &common::Account,
    ids: Value,
    replaces: &str,
) -> common::Reply {
    s.post_new_order(acct, &json!({"identifiers": ids, "replaces": replaces}))
        .await
}

fn assert_created(r: &common::Reply) {
    r.assert_status(StatusCode::CREATED);
}

#[tokio::test]
async fn a_refused_replacing_order_does_not_claim_the_certificate() {
    // No enrollment path for device identifiers, so an order naming one is refused.
    let s = TestServer::with(|c| {
        c.enrollment.device_attestation = false;
        c.enrollment.operator_approval = false;
    });
    let acct = s.new_account().await;
    let Issued { der, .. } = issue(&s, &acct, "plc-20.plant.example").await;
    let id = ari_id(&der);
    let name = json!({"type": "dns", "value": "plc-20.plant.example"});
    let device = json!({"type": "permanent-identifier", "value": "PLC-0020"});
    replacing_order(&s, &acct, json!([name, device]), &id)
        .await
        .assert_problem(400, "rejectedIdentifier");
    // The refused order left no claim: a real replacement is accepted, and only once.
    assert_created(&replacing_order(&s, &acct, json!([name]), &id).await);
    replacing_order(&s, &acct, json!([name]), &id)
        .await
        .assert_problem(409, "alreadyReplaced");
}

#[tokio::test]
async fn replacement_by_an_invalid_or_missing_order_is_ignored() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let Issued { der, .. } = issue(&s, &acct, "plc-21.plant.example").await;
    let id = ari_id(&der);
    let name = json!([{"type": "dns", "value": "plc-21.plant.example"}]);
    let first = replacing_order(&s, &acct, name.clone(), &id).await;
    assert_created(&first);
    // RFC 9773 §5: the accepted `replaces` is reflected in the response and later fetches.
    assert_eq!(first.json()["replaces"], id);
    let fetched = s
        .post_as(&acct, &first.header("location").expect("location"), None)
        .await
        .json();
    assert_eq!(fetched["replaces"], id, "{fetched}");
    // The replacing order becomes invalid (its authorization is deactivated, RFC 8555 §7.5.2).
    let authz = first.json()["authorizations"][0]
        .as_str()
        .expect("authz url")
        .to_owned();
    let r = s
        .post_as(&acct, &authz, Some(&json!({"status": "deactivated"})))
        .await;
    r.assert_status(StatusCode::OK);
    let order = s
        .post_as(&acct, &first.header("location").expect("location"), None)
        .await
        .json();
    assert_eq!(order["status"], "invalid", "{order}");
    // > … has not already been marked as replaced by a different Order that is not "invalid".
    // <https://www.rfc-editor.org/rfc/rfc9773#section-5>
    assert_created(&replacing_order(&s, &acct, name.clone(), &id).await);
    replacing_order(&s, &acct, name.clone(), &id)
        .await
        .assert_problem(409, "alreadyReplaced");

    // A claim by an order that was never stored (left by earlier releases) is ignored too.
    let serial = id.rsplit('.').next().expect("serial");
    let serial = hex::encode(
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, serial)
            .expect("serial"),
    );
    s.app
        .db
        .update(
            ca_server::storage::Table::Certificates,
            &serial,
            |mut c: ca_server::ca::cert::Certificate| {
                c.replaced_by = Some("no-such-order".into());
                Ok(c)
            },
        )
        .expect("update");
    assert_created(&replacing_order(&s, &acct, name, &id).await);
}

#[tokio::test]
async fn a_replacing_order_must_share_an_identifier() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let Issued { der, .. } = issue(&s, &acct, "plc-22.plant.example").await;
    let id = ari_id(&der);
    let p = replacing_order(
        &s,
        &acct,
        json!([{"type": "dns", "value": "hmi-3.plant.example"}]),
        &id,
    )
    .await
    .assert_problem(400, "malformed");
    let detail = p["detail"].as_str().expect("detail");
    assert!(
        detail.contains("shares no identifier") && detail.contains("plc-22.plant.example"),
        "{detail}"
    );
    // One shared identifier is enough; the refusal claimed nothing.
    assert_created(
        &replacing_order(
            &s,
            &acct,
            json!([
                {"type": "dns", "value": "plc-22.plant.example"},
                {"type": "dns", "value": "hmi-3.plant.example"}
            ]),
            &id,
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replacing_orders_claim_the_certificate_once() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let Issued { der, .. } = issue(&s, &acct, "plc-23.plant.example").await;
    let id = ari_id(&der);
    let name = json!([{"type": "dns", "value": "plc-23.plant.example"}]);
    let url = s.url("/acme/new-order");
    let body = json!({"identifiers": name, "replaces": id});
    let replies = race(&s, &acct, &url, &body, 8).await;
    let won = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(won, 1, "exactly one order may replace the certificate");
    for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        r.assert_problem(409, "alreadyReplaced");
    }
}

#[tokio::test]
async fn lab_always_valid_passes_challenges_without_dialing() {
    let s = TestServer::with(|c| {
        c.validation.lab_always_valid = true;
        // Nothing listens here: a real validation would fail with a connection error.
        c.validation.http_port = 9;
    });
    let acct = s.new_account().await;
    let r = s
        .post_new_order(
            &acct,
            &json!({"identifiers": [{"type": "dns", "value": "bench.plant.test"}]}),
        )
        .await;
    let order_url = r.header("location").expect("location");
    let authz_url = r.json()["authorizations"][0]
        .as_str()
        .expect("authz")
        .to_owned();
    let chall = s.post_as(&acct, &authz_url, None).await.json()["challenges"][0]["url"]
        .as_str()
        .expect("url")
        .to_owned();
    s.post_as(&acct, &chall, Some(&json!({}))).await;
    let mut status = Value::Null;
    for _ in 0..50 {
        status = s.post_as(&acct, &order_url, None).await.json()["status"].clone();
        if status == "ready" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, "ready");
}

/// A data directory that group or others may open is restricted to 0700 at start, and the
/// admin socket in it is the CA user's only.
#[tokio::test]
async fn the_data_directory_and_the_admin_socket_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777;
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = ca_server::config::Config {
        data_dir: data.clone(),
        ..ca_server::config::Config::default()
    };
    let app = ca_server::server::init(cfg).expect("init");
    assert_eq!(mode(&data), 0o700);

    let server = tokio::spawn(ca_server::admin::socket::serve(ca_server::ra::Ra::clone(
        &app,
    )));
    let sock = ca_server::admin::socket::socket_path(&data);
    // Owner-only from the moment it exists (0700 for the instant between bind and chmod),
    // then 0600.
    for _ in 0..500 {
        if sock.exists() {
            let m = mode(&sock);
            assert_eq!(m & 0o077, 0, "mode {m:o}");
            if m == 0o600 {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(mode(&sock), 0o600);
    server.abort();
}

/// A revocation cut off between marking the certificate and writing the record the CRL is made
/// from (a crash, a store call that timed out) is completed by the client's retry: the retry
/// gets `alreadyRevoked`, and the certificate is on the CRL.
#[tokio::test]
async fn a_retried_revocation_puts_a_half_recorded_one_on_the_crl() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let Issued { der, .. } = issue(&s, &acct, "plc-7.plant.example").await;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert");
    let serial_hex = hex::encode(cert.raw_serial());
    let url = s.url("/acme/revoke-cert");
    let body = json!({"certificate": b64(&der), "reason": 1});
    let revoke = || s.post_as(&acct, &url, Some(&body));
    revoke().await.assert_status(StatusCode::OK);
    // The second write lost.
    assert!(s
        .app
        .db
        .remove(ca_server::storage::Table::Revocations, &serial_hex)
        .expect("remove"));
    s.app.crl.invalidate();
    let listed = |crl: &[u8]| {
        let (_, crl) = x509_parser::parse_x509_crl(crl).expect("CRL");
        let found = crl
            .iter_revoked_certificates()
            .any(|r| r.raw_serial() == cert.raw_serial());
        found
    };
    assert!(
        !listed(&s.get(&s.url("/crl")).await.body),
        "the cut-off state"
    );
    revoke().await.assert_problem(400, "alreadyRevoked");
    assert!(
        listed(&s.get(&s.url("/crl")).await.body),
        "on the CRL after the retry"
    );
}
