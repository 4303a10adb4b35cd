//! IIoT enrollment paths without network validation: allow-listed enrollment credentials
//! (pre-authorization, SPEC §6.6) and operator approval (SPEC §5.8).

mod common;

use axum::http::StatusCode;
use ca_server::ra::approval::{mark_duplicates, ApprovalQueue, Decision};
use ca_server::ra::eab::{AllowRule, NewCredential};
use ca_server::wire::pairing_code;
use common::{Key, TestServer};
use serde_json::{json, Value};

async fn bound_account(s: &TestServer, kid: &str, hmac: &str) -> Result<common::Account, Value> {
    let key = Key::generate();
    let binding = common::eab_binding(&key, kid, hmac, &s.url("/acme/new-account"));
    let r = s
        .post_new_account(&key, &json!({"externalAccountBinding": binding}))
        .await;
    if r.status != StatusCode::CREATED {
        return Err(r.json());
    }
    let kid = r.header("location").expect("location");
    Ok(common::Account { key, kid })
}

fn rules(texts: &[&str]) -> Vec<AllowRule> {
    texts
        .iter()
        .map(|t| AllowRule::parse(t).expect("rule"))
        .collect()
}

fn ids(values: &[(&str, &str)]) -> Value {
    json!({"identifiers": values.iter().map(|(t, v)| json!({"type": t, "value": v})).collect::<Vec<_>>()})
}

#[test]
fn allow_rules_parse_and_match() {
    use ca_server::types::Identifier;
    let dns = AllowRule::parse("dns:.Plant.Example").expect("dns");
    assert!(dns.matches(&Identifier::dns("plant.example")));
    assert!(dns.matches(&Identifier::dns("plc-1.line-2.plant.example")));
    assert!(!dns.matches(&Identifier::dns("evilplant.example")));
    let net = AllowRule::parse("ip:10.20.0.0/16").expect("ip");
    assert!(net.matches(&Identifier::ip("10.20.255.1".parse().expect("ip"))));
    assert!(!net.matches(&Identifier::ip("10.21.0.1".parse().expect("ip"))));
    let v6 = AllowRule::parse("ip:2001:db8::/33").expect("ip6");
    assert!(v6.matches(&Identifier::ip("2001:db8:7fff::1".parse().expect("ip"))));
    assert!(!v6.matches(&Identifier::ip("2001:db8:8000::1".parse().expect("ip"))));
    assert!(AllowRule::parse("ip:10.0.0.0/33").is_err());
    assert!(AllowRule::parse("mac:00:11").is_err());
    assert!(AllowRule::parse("dns:bad_name").is_err());
    assert_eq!(
        AllowRule::parse("ip:192.0.2.1").expect("ip").to_string(),
        "ip:192.0.2.1/32"
    );
}

#[tokio::test]
async fn allow_listed_credential_pre_authorizes_and_refuses_the_rest() {
    let s = TestServer::with(|c| c.eab.required = true);
    let cred = s
        .app
        .eab
        .create(&NewCredential {
            max_uses: Some(2),
            allow: rules(&["dns:plant.example", "ip:10.20.0.0/16"]),
            ..NewCredential::default()
        })
        .expect("create");
    let acct = bound_account(&s, &cred.kid, &cred.hmac_key)
        .await
        .expect("account");

    // Allowed identifiers: authorizations are valid at once, the order is ready.
    let (_, o) = s
        .create_order(
            &acct,
            &ids(&[("dns", "plc-1.plant.example"), ("ip", "10.20.3.4")]),
        )
        .await;
    assert_eq!(o["status"], "ready", "{o}");
    for a in o["authorizations"].as_array().expect("authzs") {
        let a = s
            .post_as(&acct, a.as_str().expect("url"), None)
            .await
            .json();
        assert_eq!(a["status"], "valid");
        assert_eq!(a["challenges"], json!([]));
    }
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(vec![
        "plc-1.plant.example".to_owned(),
        "10.20.3.4".to_owned(),
    ])
    .expect("params");
    p.distinguished_name = rcgen::DistinguishedName::new();
    let csr = p.serialize_request(&key).expect("csr");
    let fin = s.finalize(&acct, &o, csr.der()).await;
    assert_eq!(
        fin.json()["status"],
        "valid",
        "{}",
        String::from_utf8_lossy(&fin.body)
    );

    // Outside the allow-list: rejectedIdentifier, one subproblem per identifier.
    let r = s
        .post_new_order(&acct, &ids(&[("dns", "plc-1.other.example")]))
        .await;
    r.assert_problem(400, "rejectedIdentifier");
    let r = s
        .post_new_order(
            &acct,
            &ids(&[
                ("dns", "x.other.example"),
                ("ip", "10.30.0.1"),
                ("dns", "ok.plant.example"),
            ]),
        )
        .await;
    let p = r.assert_problem(400, "compound");
    let subs = p["subproblems"].as_array().expect("subproblems");
    assert_eq!(subs.len(), 2, "{p}");
    assert!(
        subs.iter()
            .all(|s| s["type"] == "urn:ietf:params:acme:error:rejectedIdentifier"),
        "{p}"
    );

    // Use count: two accounts, then refused.
    bound_account(&s, &cred.kid, &cred.hmac_key)
        .await
        .expect("second account");
    let p = bound_account(&s, &cred.kid, &cred.hmac_key)
        .await
        .err()
        .expect("third refused");
    assert_eq!(p["type"], "urn:ietf:params:acme:error:unauthorized", "{p}");
    common::assert_detail_contains(&p, "2 allowed account");

    // Revoking the credential stops its accounts from ordering.
    assert!(s.app.eab.revoke(&cred.kid).expect("revoke"));
    let r = s
        .post_new_order(&acct, &ids(&[("dns", "plc-1.plant.example")]))
        .await;
    r.assert_problem_detail(403, "unauthorized", "revoked");
}

#[tokio::test]
async fn credential_without_allow_list_still_requires_challenges() {
    let s = TestServer::with(|c| c.eab.required = true);
    let cred = s.app.eab.create(&NewCredential::default()).expect("create");
    let acct = bound_account(&s, &cred.kid, &cred.hmac_key)
        .await
        .expect("account");
    let o = s
        .post_new_order(&acct, &ids(&[("dns", "anything.example")]))
        .await
        .json();
    assert_eq!(o["status"], "pending");
}

async fn approval_order(s: &TestServer) -> (common::Account, Value, String) {
    let acct = s.new_account().await;
    let (_, o) = s.create_order(&acct, &ids(&[("dns", "plc-9")])).await;
    let authz_url = o["authorizations"][0].as_str().expect("authz").to_owned();
    (acct, o, authz_url)
}

fn approval_server(ttl: &str) -> TestServer {
    let ttl = ca_server::types::parse_duration(ttl).expect("ttl");
    TestServer::with(|c| {
        c.enrollment.operator_approval = true;
        c.enrollment.network_challenges = false;
        c.enrollment.approval_ttl = ttl;
    })
}

#[tokio::test]
async fn operator_approval_with_pairing_code() {
    let s = approval_server("1h");
    let (acct, o, authz_url) = approval_order(&s).await;
    let a = s.post_as(&acct, &authz_url, None).await.json();
    assert_eq!(a["challenges"].as_array().map(Vec::len), Some(1), "{a}");
    assert_eq!(a["challenges"][0]["type"], "operator-approval-01");
    let chall = a["challenges"][0]["url"].as_str().expect("url").to_owned();

    let r = s.post_as(&acct, &chall, Some(&json!({}))).await;
    assert_eq!(r.json()["status"], "processing");
    assert!(r.header("retry-after").is_some());

    let q = ApprovalQueue::new(s.dir.path());
    let pending = q.list_pending().expect("list");
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].identifier,
        ca_server::types::Identifier::dns("plc-9")
    );
    // The operator's code is the one the device derives from its own key and the token.
    let token = a["challenges"][0]["token"].as_str().expect("token");
    assert_eq!(
        pending[0].pairing_code,
        pairing_code(token, &acct.key.thumbprint()).expect("code")
    );

    // Still processing until decided; then valid, order ready, queue empty.
    assert_eq!(
        s.post_as(&acct, &chall, None).await.json()["status"],
        "processing"
    );
    q.decide(&pending[0].id, &Decision::Approve)
        .expect("approve");
    assert_eq!(
        s.post_as(&acct, &chall, None).await.json()["status"],
        "valid"
    );
    let order = s
        .post_as(
            &acct,
            &s.url(&format!(
                "/acme/order/{}",
                o["finalize"]
                    .as_str()
                    .expect("fin")
                    .rsplit('/')
                    .nth(1)
                    .expect("id")
            )),
            None,
        )
        .await
        .json();
    assert_eq!(order["status"], "ready", "{order}");
    assert!(q.list_pending().expect("list").is_empty());
}

#[tokio::test]
async fn operator_rejection_and_expiry_fail_the_authorization() {
    let s = approval_server("1h");
    let (acct, _, authz_url) = approval_order(&s).await;
    let a = s.post_as(&acct, &authz_url, None).await.json();
    let chall = a["challenges"][0]["url"].as_str().expect("url").to_owned();
    s.post_as(&acct, &chall, Some(&json!({}))).await;
    let q = ApprovalQueue::new(s.dir.path());
    let id = q.list_pending().expect("list")[0].id.clone();
    q.decide(
        &id,
        &Decision::Reject {
            reason: Some("not on the commissioning list".into()),
        },
    )
    .expect("reject");
    let c = s.post_as(&acct, &chall, None).await.json();
    assert_eq!(c["status"], "invalid");
    assert_eq!(
        c["error"]["type"],
        "urn:ietf:params:acme:error:unauthorized"
    );
    common::assert_detail_contains(&c["error"], "commissioning list");
    assert!(
        q.decide(&id, &Decision::Approve).is_err(),
        "decided requests are gone"
    );

    let s = approval_server("1s");
    let (acct, _, authz_url) = approval_order(&s).await;
    let a = s.post_as(&acct, &authz_url, None).await.json();
    let chall = a["challenges"][0]["url"].as_str().expect("url").to_owned();
    s.post_as(&acct, &chall, Some(&json!({}))).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let c = s.post_as(&acct, &chall, None).await.json();
    assert_eq!(c["status"], "invalid", "{c}");
    common::assert_detail_contains(&c["error"], "expired");
}

#[tokio::test]
async fn no_enabled_path_is_rejected_identifier() {
    let s = TestServer::with(|c| c.enrollment.network_challenges = false);
    let acct = s.new_account().await;
    let r = s.post_new_order(&acct, &ids(&[("dns", "plc-1")])).await;
    r.assert_problem(400, "rejectedIdentifier");
}

/// Triggers the operator-approval-01 challenge of authorization `authz_url`, with the request
/// coming from `from` when given; returns the reply and the challenge URL.
async fn trigger(
    s: &TestServer,
    acct: &common::Account,
    authz_url: &str,
    from: Option<std::net::SocketAddr>,
) -> (common::Reply, String, Value) {
    let a = s.post_as(acct, authz_url, None).await.json();
    let chall = a["challenges"][0]["url"].as_str().expect("url").to_owned();
    let r = match from {
        None => s.post_as(acct, &chall, Some(&json!({}))).await,
        Some(addr) => post_from(s, acct, &chall, addr).await,
    };
    (r, chall, a)
}

/// POSTs `{}` to `url` as `acct`, as if from `addr` (what the server's listener records).
async fn post_from(
    s: &TestServer,
    acct: &common::Account,
    url: &str,
    addr: std::net::SocketAddr,
) -> common::Reply {
    let mut req = s.signed_post(acct, url, Some(&json!({}))).await;
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    s.send(req).await
}

/// An order for `name` from `acct`; the URL of its one authorization.
async fn approval_authz(s: &TestServer, acct: &common::Account, name: &str) -> String {
    let (_, o) = s.create_order(acct, &ids(&[("dns", name)])).await;
    o["authorizations"][0].as_str().expect("authz").to_owned()
}

/// The challenge's status, read back with POST-as-GET.
async fn challenge_status(s: &TestServer, acct: &common::Account, chall: &str) -> Value {
    s.post_as(acct, chall, None).await.json()["status"].clone()
}

/// SPEC §5.9: the code depends on the request's token, so one account's requests each get
/// their own, and each is the one the device computes from its key and that token.
#[tokio::test]
async fn each_request_of_one_account_gets_its_own_pairing_code() {
    let s = approval_server("1h");
    let acct = s.new_account().await;
    let (_, o) = s
        .create_order(&acct, &ids(&[("dns", "plc-9"), ("dns", "plc-10")]))
        .await;
    let mut expected = Vec::new();
    for authz_url in o["authorizations"].as_array().expect("authzs") {
        let (reply, _, a) = trigger(&s, &acct, authz_url.as_str().expect("url"), None).await;
        assert_eq!(reply.json()["status"], "processing");
        let token = a["challenges"][0]["token"].as_str().expect("token");
        expected.push(pairing_code(token, &acct.key.thumbprint()).expect("code"));
    }
    let mut listed: Vec<String> = ApprovalQueue::new(s.dir.path())
        .list_pending()
        .expect("list")
        .into_iter()
        .map(|p| p.pairing_code)
        .collect();
    assert_eq!(listed.len(), 2);
    assert_ne!(listed[0], listed[1], "one account, two requests, two codes");
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
}

/// SPEC §5.8: beyond `pending_approvals_per_account` (5) waiting requests, the challenge POST
/// is refused with rateLimited and Retry-After, and the challenge stays pending, so the device
/// can ask again once a request is decided.
#[tokio::test]
async fn the_sixth_waiting_request_of_an_account_is_rate_limited() {
    let s = approval_server("1h");
    let acct = s.new_account().await;
    for i in 0..5 {
        let authz = approval_authz(&s, &acct, &format!("plc-{i}")).await;
        let (r, _, _) = trigger(&s, &acct, &authz, None).await;
        assert_eq!(r.json()["status"], "processing", "request {i}");
    }
    let authz = approval_authz(&s, &acct, "plc-5").await;
    let (r, chall, _) = trigger(&s, &acct, &authz, None).await;
    r.assert_problem_detail(429, "rateLimited", "pending_approvals_per_account");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(
        (3000..=3601).contains(&retry),
        "until the first request expires: {retry}"
    );
    assert_eq!(challenge_status(&s, &acct, &chall).await, "pending");
    let q = ApprovalQueue::new(s.dir.path());
    let pending = q.list_pending().expect("list");
    assert_eq!(pending.len(), 5, "nothing recorded for the refused request");

    // Another account is not held back by this one's cap.
    let other = s.new_account().await;
    let authz_other = approval_authz(&s, &other, "plc-5").await;
    let (r, _, _) = trigger(&s, &other, &authz_other, None).await;
    assert_eq!(r.json()["status"], "processing");

    // Once one is decided there is room again, and the same challenge can be triggered.
    q.decide(&pending[0].id, &Decision::Approve)
        .expect("approve");
    let r = s.post_as(&acct, &chall, Some(&json!({}))).await;
    assert_eq!(
        r.json()["status"],
        "processing",
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// SPEC §5.8: the per-address cap counts requests of every account from one address; the
/// test lowers it from 50 to 3 rather than making 51 requests.
#[tokio::test]
async fn waiting_requests_from_one_address_are_capped() {
    let s = TestServer::with(|c| {
        c.enrollment.operator_approval = true;
        c.enrollment.network_challenges = false;
        c.rate_limits.pending_approvals_per_address = 3;
    });
    let addr: std::net::SocketAddr = "192.0.2.7:40000".parse().expect("addr");
    for i in 0..3 {
        let acct = s.new_account().await;
        let authz = approval_authz(&s, &acct, &format!("hmi-{i}")).await;
        let (r, _, _) = trigger(&s, &acct, &authz, Some(addr)).await;
        assert_eq!(r.json()["status"], "processing", "request {i}");
    }
    let acct = s.new_account().await;
    let authz = approval_authz(&s, &acct, "hmi-3").await;
    let (r, chall, _) = trigger(&s, &acct, &authz, Some(addr)).await;
    let p = r.assert_problem_detail(429, "rateLimited", "pending_approvals_per_address");
    common::assert_detail_contains(&p, "192.0.2.7");
    assert!(r.header("retry-after").is_some());
    assert_eq!(challenge_status(&s, &acct, &chall).await, "pending");
    let pending = ApprovalQueue::new(s.dir.path())
        .list_pending()
        .expect("list");
    assert_eq!(pending.len(), 3);
    assert!(pending
        .iter()
        .all(|p| p.source.as_deref() == Some("192.0.2.7")));

    // The same account from another address is within both caps.
    let r = post_from(&s, &acct, &chall, "192.0.2.8:40000".parse().expect("addr")).await;
    assert_eq!(r.json()["status"], "processing");
}

/// Racing challenge POSTs are counted and added under one lock: with a cap of 2, exactly two
/// of eight concurrent requests of one account wait, whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_requests_do_not_overshoot_the_cap() {
    let s = TestServer::with(|c| {
        c.enrollment.operator_approval = true;
        c.enrollment.network_challenges = false;
        c.rate_limits.pending_approvals_per_account = 2;
    });
    let acct = s.new_account().await;
    let mut posts = Vec::new();
    for i in 0..8 {
        let authz = approval_authz(&s, &acct, &format!("rtu-{i}")).await;
        let a = s.post_as(&acct, &authz, None).await.json();
        let chall = a["challenges"][0]["url"].as_str().expect("url").to_owned();
        // Signed ahead, so that the POSTs themselves start together.
        posts.push(s.signed_post(&acct, &chall, Some(&json!({}))).await);
    }
    let replies = common::send_concurrently(&s, posts).await;
    let statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((ok, limited), (2, 6), "{statuses:?}");
    assert_eq!(
        ApprovalQueue::new(s.dir.path())
            .list_pending()
            .expect("list")
            .len(),
        2
    );
}

/// `approval list` marks requests that name the same identifier as another, with the other's
/// id, address and account.
#[tokio::test]
async fn requests_for_the_same_identifier_are_marked() {
    let s = approval_server("1h");
    let device = s.new_account().await;
    let lookalike = s.new_account().await;
    for acct in [&device, &lookalike] {
        let authz = approval_authz(&s, acct, "plc-9").await;
        trigger(&s, acct, &authz, None).await;
    }
    let other = s.new_account().await;
    let authz = approval_authz(&s, &other, "plc-10").await;
    trigger(&s, &other, &authz, None).await;

    let listed = mark_duplicates(
        ApprovalQueue::new(s.dir.path())
            .list_pending()
            .expect("list"),
    );
    assert_eq!(listed.len(), 3);
    let of = |name: &str| {
        listed
            .iter()
            .filter(|l| l.request.identifier == ca_server::types::Identifier::dns(name))
            .collect::<Vec<_>>()
    };
    let plc9 = of("plc-9");
    assert_eq!(plc9.len(), 2);
    assert_eq!(plc9[0].also_requested.len(), 1);
    assert_eq!(plc9[0].also_requested[0].id, plc9[1].request.id);
    assert_eq!(
        plc9[0].also_requested[0].account_id,
        plc9[1].request.account_id
    );
    assert_eq!(plc9[1].also_requested[0].id, plc9[0].request.id);
    assert!(of("plc-10")[0].also_requested.is_empty());
}

/// Applying decisions reads `decisions/` and the in-memory index, never the queue of pending
/// files: a poll does not depend on how many requests wait, and the server still decides a
/// request whose file it no longer reads.
#[tokio::test]
async fn applying_decisions_does_not_read_the_pending_files() {
    let s = approval_server("1h");
    let acct = s.new_account().await;
    let authz = approval_authz(&s, &acct, "plc-9").await;
    let (_, chall, _) = trigger(&s, &acct, &authz, None).await;
    let q = ApprovalQueue::new(s.dir.path());
    let request = q.list_pending().expect("list").remove(0);

    let approvals = s.dir.path().join("approvals");
    std::fs::write(
        approvals.join(format!("pending/{}.json", request.id)),
        b"unreadable",
    )
    .expect("overwrite");
    assert_eq!(challenge_status(&s, &acct, &chall).await, "processing");

    // What `approval approve` writes; it reads the request's file first, so write it here.
    std::fs::create_dir_all(approvals.join("decisions")).expect("mkdir");
    std::fs::write(
        approvals.join(format!("decisions/{}.json", request.id)),
        br#"{"decision":"approve"}"#,
    )
    .expect("decision");
    assert_eq!(challenge_status(&s, &acct, &chall).await, "valid");
    assert!(!approvals
        .join(format!("pending/{}.json", request.id))
        .exists());
    assert!(!approvals
        .join(format!("decisions/{}.json", request.id))
        .exists());
}

/// A permanent identifier may hold a bidirectional override (SPEC §4.5 refuses only the C0
/// and C1 controls). `ca-server approval list` prints it escaped, so the operator reads the
/// serial the device sent and not a reordered one; `--json` keeps the character as it is.
#[tokio::test]
async fn approval_list_escapes_bidi_controls_in_a_stored_identifier() {
    let s = approval_server("1h");
    let acct = s.new_account().await;
    // Shown as "SN-TSET-0042" by a terminal that applies the override.
    let serial = "SN-\u{202e}2400-TEST";
    let (_, o) = s
        .create_order(&acct, &ids(&[("permanent-identifier", serial)]))
        .await;
    let authz_url = o["authorizations"][0].as_str().expect("authz").to_owned();
    let a = s.post_as(&acct, &authz_url, None).await.json();
    let chall = a["challenges"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "operator-approval-01"))
        .and_then(|c| c["url"].as_str())
        .expect("operator-approval-01 offered")
        .to_owned();
    s.post_as(&acct, &chall, Some(&json!({}))).await;

    let list = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ca-server"));
        cmd.args(["approval", "list", "--data-dir"])
            .arg(s.dir.path());
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("ca-server runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let text = list(false);
    assert!(
        text.contains("permanent-identifier:SN-\\u{202e}2400-TEST"),
        "{text:?}"
    );
    assert!(!text.contains('\u{202e}'), "{text:?}");
    let pending: Value = serde_json::from_str(&list(true)).expect("JSON");
    assert_eq!(pending[0]["identifier"]["value"], serial, "{pending}");
}
