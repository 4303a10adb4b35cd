//! The ACME requests the test files send over and over, each with the checks that every caller
//! makes of the reply, and the assertions they share about problem documents.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{b64, Account, Key, Reply, TestServer};

/// A POST of `body` to `url` with the JOSE content type, to send later.
pub fn jose_post(url: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(url)
        .header(header::CONTENT_TYPE, "application/jose+json")
        .body(body.into())
        .expect("req")
}

/// Sends `requests` all at once, each on its own task and held at a barrier until every task
/// is ready, so they race at the server; returns the replies in the order of `requests`.
pub async fn send_concurrently(s: &TestServer, requests: Vec<Request<Body>>) -> Vec<Reply> {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|req| {
            let (router, start) = (s.router.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                Reply::read(router.oneshot(req).await.expect("infallible")).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.expect("join"));
    }
    replies
}

/// The leaf certificate (DER) of a PEM chain: its first block.
pub fn leaf_der(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .expect("PEM")
        .1
        .contents
}

/// Asserts that `doc` (a problem document or a challenge's `error`) has a `detail` string that
/// contains `needle`.
pub fn assert_detail_contains(doc: &Value, needle: &str) {
    assert!(
        doc["detail"].as_str().is_some_and(|d| d.contains(needle)),
        "detail lacks {needle:?}: {doc}"
    );
}

impl Reply {
    /// Asserts an RFC 7807 problem of `kind` with `status` (see [`Reply::assert_problem`]) whose
    /// detail contains `needle`; returns the problem document.
    pub fn assert_problem_detail(&self, status: u16, kind: &str, needle: &str) -> Value {
        let p = self.assert_problem(status, kind);
        assert_detail_contains(&p, needle);
        p
    }
}

impl TestServer {
    /// Sends a request with an empty body.
    pub async fn send_empty(&self, method: Method, url: &str) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(url)
            .body(Body::empty())
            .expect("req");
        self.send(req).await
    }

    /// A GET of `url` (unauthenticated: the directory, the CRL, renewal information).
    pub async fn get(&self, url: &str) -> Reply {
        self.send_empty(Method::GET, url).await
    }

    /// A POST of `payload` to `url` as `acct`, signed now with a fresh nonce, to send later
    /// (with [`send_concurrently`], say).
    pub async fn signed_post(
        &self,
        acct: &Account,
        url: &str,
        payload: Option<&Value>,
    ) -> Request<Body> {
        let protected =
            json!({"alg": "ES256", "nonce": self.nonce().await, "url": url, "kid": acct.kid});
        jose_post(url, acct.key.jws(&protected, payload).to_string())
    }

    /// POSTs `payload` to newAccount, signed with `key` and carrying it as `jwk`.
    pub async fn post_new_account(&self, key: &Key, payload: &Value) -> Reply {
        self.post(key, None, &self.url("/acme/new-account"), Some(payload))
            .await
    }

    /// POSTs `payload` to newOrder as `acct`.
    pub async fn post_new_order(&self, acct: &Account, payload: &Value) -> Reply {
        self.post_as(acct, &self.url("/acme/new-order"), Some(payload))
            .await
    }

    /// POSTs `payload` to newOrder as `acct` and asserts 201 Created; returns the order's URL
    /// (its Location) and the order object.
    pub async fn create_order(&self, acct: &Account, payload: &Value) -> (String, Value) {
        let r = self.post_new_order(acct, payload).await;
        r.assert_status(StatusCode::CREATED);
        (r.header("location").expect("location"), r.json())
    }

    /// Answers the `kind` challenge of `order`'s first authorization as `acct`: the reply.
    pub async fn answer(&self, acct: &Account, order: &Value, kind: &str) -> Reply {
        let authz_url = order["authorizations"][0].as_str().expect("authz");
        let authz = self.post_as(acct, authz_url, None).await.json();
        let chall = authz["challenges"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == kind))
            .and_then(|c| c["url"].as_str())
            .unwrap_or_else(|| panic!("no {kind} challenge in {authz}"))
            .to_owned();
        self.post_as(acct, &chall, Some(&json!({}))).await
    }

    /// POSTs `{"csr": …}` with the DER CSR `csr` to the finalize URL of `order` as `acct`.
    pub async fn finalize(&self, acct: &Account, order: &Value, csr: &[u8]) -> Reply {
        self.post_as(
            acct,
            order["finalize"].as_str().expect("finalize"),
            Some(&json!({"csr": b64(csr)})),
        )
        .await
    }

    /// Downloads the certificate of the valid order object `order` as `acct` and asserts
    /// 200 OK; returns the PEM chain.
    pub async fn certificate_chain(&self, acct: &Account, order: &Value) -> String {
        let r = self
            .post_as(acct, order["certificate"].as_str().expect("cert url"), None)
            .await;
        r.assert_status(StatusCode::OK);
        String::from_utf8(r.body).expect("PEM is UTF-8")
    }
}
