//! Trust hardening at the request level, through the router (docs/security.md): the CA's own
//! names and unroutable addresses are refused, every identity is bound to one account, an
//! enrollment credential's vouching ends with the credential, vouched-for authorizations give
//! no power over other accounts' certificates, and request rates are bounded.

mod common;

use axum::http::StatusCode;
use ca_server::ca::profiles::ProfilesConfig;
use ca_server::ra::eab::Credential;
use ca_server::storage::Table;
use common::{b64, Key, Reply, TestServer};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use serde_json::{json, Value};

use common::{bound_account as bound, credential};

fn identifiers(names: &[&str]) -> Value {
    let ids: Vec<Value> = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(_) => json!({"type": "ip", "value": n}),
            Err(_) => json!({"type": "dns", "value": n}),
        })
        .collect();
    json!({ "identifiers": ids })
}

async fn new_order(s: &TestServer, acct: &common::Account, payload: &Value) -> Reply {
    s.post_as(acct, &s.url("/acme/new-order"), Some(payload))
        .await
}

/// A ready order's object with its `url`: pre-authorized, or else with its authorizations
/// marked valid as a passed http-01 challenge would (`common::validate_all`).
async fn ready(s: &TestServer, acct: &common::Account, names: &[&str]) -> Value {
    let (url, mut o) = s.create_order(acct, &identifiers(names)).await;
    if o["status"] == "pending" {
        common::validate_all(s, &o);
        o = s.post_as(acct, &url, None).await.json();
    }
    o["url"] = json!(url);
    assert_eq!(o["status"], "ready", "{o}");
    o
}

/// A ready order that an allow-listed credential pre-authorized: no challenge was needed.
async fn pre_authorized(s: &TestServer, acct: &common::Account, names: &[&str]) -> Value {
    let (url, mut o) = s.create_order(acct, &identifiers(names)).await;
    assert_eq!(o["status"], "ready", "not pre-authorized: {o}");
    o["url"] = json!(url);
    o
}

/// Finalizes `order` with a new P-256 key for `names` (plus URI SANs), returning the reply
/// and the key.
async fn finalize(
    s: &TestServer,
    acct: &common::Account,
    order: &Value,
    names: &[&str],
    uris: &[&str],
) -> (Reply, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .expect("params");
    p.distinguished_name = DistinguishedName::new();
    for uri in uris {
        p.subject_alt_names
            .push(SanType::URI((*uri).try_into().expect("ia5")));
    }
    let csr = p.serialize_request(&key).expect("csr");
    (s.finalize(acct, order, csr.der()).await, key)
}

/// The DER of the leaf a valid order's certificate URL serves.
async fn leaf_der(s: &TestServer, acct: &common::Account, order: &Value) -> Vec<u8> {
    common::leaf_der(&s.certificate_chain(acct, order).await)
}

/// Issues a certificate for `names` to `acct` through a ready order.
async fn issue(s: &TestServer, acct: &common::Account, names: &[&str]) -> (Vec<u8>, KeyPair) {
    let o = ready(s, acct, names).await;
    let (r, key) = finalize(s, acct, &o, names, &[]).await;
    r.assert_status(StatusCode::OK);
    let o = r.json();
    assert_eq!(o["status"], "valid", "{o}");
    (leaf_der(s, acct, &o).await, key)
}

/// Problems about one identifier carry it in a subproblem, never at the top level
/// (RFC 8555 §6.7.1).
fn assert_about(p: &Value, kind: &str, identifier: &str) {
    assert!(p.get("identifier").is_none(), "top-level identifier: {p}");
    let subs = p["subproblems"].as_array().expect("subproblems");
    assert!(
        subs.iter().any(|sp| sp["identifier"]["value"] == identifier
            && sp["type"] == format!("urn:ietf:params:acme:error:{kind}")),
        "{identifier} not in {p}"
    );
}

#[tokio::test]
async fn the_cas_own_names_and_unroutable_addresses_are_rejected_identifiers() {
    let s = TestServer::with(|c| {
        c.public_url = Some("https://ca.plant.example:8443".into());
        c.tls_names = vec!["ca-backup.plant.example".into(), "10.20.0.5".into()];
        c.validation.allow_loopback = false;
    });
    let acct = s.new_account().await;
    for name in [
        "ca.plant.example",
        "CA-Backup.Plant.Example.",
        "localhost",
        "10.20.0.5",
        "127.0.0.1",
        "::1",
        "169.254.169.254",
        "fe80::1",
        "255.255.255.255",
        "::ffff:127.0.0.1",
    ] {
        let r = new_order(&s, &acct, &identifiers(&[name])).await;
        let p = r.assert_problem(400, "rejectedIdentifier");
        let shown = name.trim_end_matches('.').to_ascii_lowercase();
        assert_about(&p, "rejectedIdentifier", &shown);
    }
    // Names next to the CA's are fine.
    let r = new_order(
        &s,
        &acct,
        &identifiers(&["plc-1.plant.example", "10.20.0.6"]),
    )
    .await;
    r.assert_status(StatusCode::CREATED);

    // In a lab, loopback may be certified, and still never the CA's other names.
    let lab = TestServer::with(|c| {
        c.tls_names = vec!["ca.plant.example".into()];
    });
    let acct = lab.new_account().await;
    new_order(&lab, &acct, &identifiers(&["127.0.0.1", "localhost"]))
        .await
        .assert_status(StatusCode::CREATED);
    new_order(&lab, &acct, &identifiers(&["ca.plant.example"]))
        .await
        .assert_problem(400, "rejectedIdentifier");
}

#[tokio::test]
async fn problem_identifiers_appear_only_in_subproblems() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let p = new_order(&s, &acct, &identifiers(&["*.plant.example"]))
        .await
        .assert_problem(400, "rejectedIdentifier");
    assert_about(&p, "rejectedIdentifier", "*.plant.example");
    let p = new_order(&s, &acct, &identifiers(&["*.a.example", "0.0.0.0"]))
        .await
        .assert_problem(400, "compound");
    assert_about(&p, "rejectedIdentifier", "*.a.example");
    assert_about(&p, "rejectedIdentifier", "0.0.0.0");
}

fn opcua(c: &mut ca_server::config::Config) {
    let profiles: ProfilesConfig = toml::from_str(
        "[opcua]\napplication_uri_prefixes = [\"urn:plant.example:\"]\norganization = \"Plant\"",
    )
    .expect("profiles");
    c.profiles = profiles;
}

#[tokio::test]
async fn an_application_uri_is_bound_to_the_first_account_until_released() {
    let s = TestServer::with(opcua);
    let cred = credential(&s, &["ip:10.20.0.0/16"], None);
    let uri = "urn:plant.example:scada-1";
    let order_for = |ip: &'static str| {
        let mut p = identifiers(&[ip]);
        p["profile"] = json!("opcua");
        p
    };

    // The SCADA server gets its certificate first and holds its ApplicationUri.
    let scada = bound(&s, &cred).await;
    let o = new_order(&s, &scada, &order_for("10.20.0.1")).await.json();
    let (r, _) = finalize(&s, &scada, &o, &["10.20.0.1"], &[uri]).await;
    r.assert_status(StatusCode::OK);

    // A PLC that proved only its own address cannot claim the SCADA server's URI.
    let plc = bound(&s, &cred).await;
    let o = new_order(&s, &plc, &order_for("10.20.0.7")).await.json();
    let (r, _) = finalize(&s, &plc, &o, &["10.20.0.7"], &[uri]).await;
    let scada_id = scada.kid.rsplit('/').next().expect("id");
    let p = r.assert_problem_detail(400, "badCSR", scada_id);
    common::assert_detail_contains(&p, "identity release");
    // Its own URI is fine, and the order stayed ready for it.
    let (r, _) = finalize(&s, &plc, &o, &["10.20.0.7"], &["urn:plant.example:plc-7"]).await;
    r.assert_status(StatusCode::OK);

    // The holder renews with its URI; after the operator releases the URI another account
    // may take it.
    let o = new_order(&s, &scada, &order_for("10.20.0.1")).await.json();
    let (r, _) = finalize(&s, &scada, &o, &["10.20.0.1"], &[uri]).await;
    r.assert_status(StatusCode::OK);
    let key = ca_server::ra::identity::parse_key(&format!("uri:{uri}")).expect("key");
    let released = ca_server::ra::identity::release(&s.app, &key).expect("release");
    assert_eq!(
        released.map(|h| h.account_id).as_deref(),
        Some(scada_id),
        "the holder was the SCADA account"
    );
    let o = new_order(&s, &plc, &order_for("10.20.0.7")).await.json();
    let (r, _) = finalize(&s, &plc, &o, &["10.20.0.7"], &[uri]).await;
    r.assert_status(StatusCode::OK);
}

#[tokio::test]
async fn a_shared_credential_does_not_pre_authorize_a_siblings_name() {
    let s = TestServer::new();
    let cred = credential(&s, &["dns:line2.plant.example"], None);
    let first = bound(&s, &cred).await;
    issue(&s, &first, &["plc-1.line2.plant.example"]).await;

    // Another device with the same credential: its own name is pre-authorized, its
    // sibling's needs a challenge.
    let second = bound(&s, &cred).await;
    pre_authorized(&s, &second, &["plc-2.line2.plant.example"]).await;
    let r = new_order(&s, &second, &identifiers(&["plc-1.line2.plant.example"])).await;
    r.assert_status(StatusCode::CREATED);
    let o = r.json();
    assert_eq!(o["status"], "pending", "{o}");
    let authz = first_authz(&s, &second, &o).await;
    assert_eq!(authz["status"], "pending");
    assert!(
        authz["challenges"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "http-01")),
        "{authz}"
    );

    // With no challenge to fall back on, the order is refused, naming the way out.
    let closed = TestServer::with(|c| c.enrollment.network_challenges = false);
    let cred = credential(&closed, &["dns:line2.plant.example"], None);
    let first = bound(&closed, &cred).await;
    issue(&closed, &first, &["plc-1.line2.plant.example"]).await;
    let second = bound(&closed, &cred).await;
    new_order(
        &closed,
        &second,
        &identifiers(&["plc-1.line2.plant.example"]),
    )
    .await
    .assert_problem_detail(400, "rejectedIdentifier", "identity release");
    // Once the operator releases it, the credential vouches for it again.
    let key = ca_server::ra::identity::parse_key("dns:plc-1.line2.plant.example").expect("key");
    ca_server::ra::identity::release(&closed.app, &key).expect("release");
    pre_authorized(&closed, &second, &["plc-1.line2.plant.example"]).await;
}

/// Rewrites a stored credential, as an operator's edit or time would.
fn edit_credential(s: &TestServer, kid: &str, f: impl FnOnce(&mut Credential)) {
    let mut cred = s.app.eab.get(kid).expect("read").expect("exists");
    f(&mut cred);
    let path = s.dir.path().join("eab").join(format!("{kid}.json"));
    std::fs::write(&path, serde_json::to_vec(&cred).expect("json")).expect("write");
}

#[tokio::test]
async fn finalize_stops_once_the_pre_authorizing_credential_no_longer_stands() {
    let s = TestServer::new();
    type Withdraw = fn(&TestServer, &Credential, &str);
    let cases: [(&str, Withdraw); 3] = [
        ("was revoked", |s, c, _| {
            assert!(s.app.eab.revoke(&c.kid).expect("revoke"));
        }),
        ("expired", |s, c, _| {
            edit_credential(s, &c.kid, |c| c.expires = Some(1));
        }),
        ("used up", |s, c, acct| {
            // Its one use went to another account first (a race the count lost).
            edit_credential(s, &c.kid, |c| c.max_uses = Some(1));
            let usage = ca_server::ra::eab::Usage {
                accounts: vec!["someone-else".into(), acct.to_owned()],
                last_used: 0,
            };
            s.app
                .db
                .put(Table::EabUsage, &c.kid, &usage)
                .expect("usage");
        }),
    ];
    for (i, (why, withdraw)) in cases.into_iter().enumerate() {
        let cred = credential(&s, &["dns:plant.example"], None);
        let acct = bound(&s, &cred).await;
        let name = format!("plc-{i}.plant.example");
        let o = pre_authorized(&s, &acct, &[&name]).await;
        let acct_id = acct.kid.rsplit('/').next().expect("id").to_owned();
        withdraw(&s, &cred, &acct_id);
        let (r, _) = finalize(&s, &acct, &o, &[&name], &[]).await;
        r.assert_problem_detail(403, "unauthorized", why);
        // The authorization is withdrawn: the order is invalid, not ready.
        let now = s
            .post_as(&acct, o["url"].as_str().expect("url"), None)
            .await
            .json();
        assert_eq!(now["status"], "invalid", "{why}: {now}");
        // And no new order is pre-authorized either.
        new_order(&s, &acct, &identifiers(&[&name]))
            .await
            .assert_problem(403, "unauthorized");
    }
}

#[tokio::test]
async fn a_credentials_role_applies_only_while_it_stands() {
    let s = TestServer::with(|c| c.eab.required = true);
    let cred = credential(&s, &[], Some("operator"));
    let acct = bound(&s, &cred).await;
    let mut order = identifiers(&["hmi-1.plant.example"]);
    order["profile"] = json!("modbus");
    new_order(&s, &acct, &order)
        .await
        .assert_status(StatusCode::CREATED);
    // Expired: the account may still order (the credential has no allow-list), but the
    // Modbus role it granted is gone, and the modbus profile grants none of its own.
    edit_credential(&s, &cred.kid, |c| c.expires = Some(1));
    new_order(&s, &acct, &order)
        .await
        .assert_problem(400, "invalidProfile");
    new_order(&s, &acct, &identifiers(&["hmi-1.plant.example"]))
        .await
        .assert_status(StatusCode::CREATED);
}

#[tokio::test]
async fn vouched_for_authorizations_do_not_entitle_revocation() {
    let s = TestServer::with(|c| c.enrollment.operator_approval = true);
    let url = s.url("/acme/revoke-cert");

    // A credential pre-authorized plc-1 for the intruder before the device was certified.
    let cred = credential(&s, &["dns:plant.example"], None);
    let intruder = bound(&s, &cred).await;
    pre_authorized(&s, &intruder, &["plc-1.plant.example"]).await;
    let device = s.new_account().await;
    let o = new_order(&s, &device, &identifiers(&["plc-1.plant.example"]))
        .await
        .json();
    common::validate_all(&s, &o);
    let (r, _) = finalize(&s, &device, &o, &["plc-1.plant.example"], &[]).await;
    r.assert_status(StatusCode::OK);
    let der = leaf_der(&s, &device, &r.json()).await;
    s.post_as(&intruder, &url, Some(&json!({"certificate": b64(&der)})))
        .await
        .assert_problem(403, "unauthorized");

    // An operator-approved authorization does not either.
    let approved = s.new_account().await;
    let o = new_order(&s, &approved, &identifiers(&["plc-1.plant.example"]))
        .await
        .json();
    let authz_id = o["authorizations"][0]
        .as_str()
        .and_then(|u| u.rsplit('/').next())
        .expect("authz id");
    s.app
        .db
        .update(
            Table::Authzs,
            authz_id,
            |mut a: ca_server::ra::authz::Authz| {
                a.status = ca_server::types::AuthzStatus::Valid;
                for c in &mut a.challenges {
                    if c.kind == ca_server::types::ChallengeType::OperatorApproval01 {
                        c.status = ca_server::types::ChallengeStatus::Valid;
                    }
                }
                Ok(a)
            },
        )
        .expect("approve");
    s.post_as(&approved, &url, Some(&json!({"certificate": b64(&der)})))
        .await
        .assert_problem(403, "unauthorized");

    // An account that proved control by a challenge may (RFC 8555 §7.6).
    let prover = s.new_account().await;
    let o = new_order(&s, &prover, &identifiers(&["plc-1.plant.example"]))
        .await
        .json();
    common::validate_all(&s, &o);
    s.post_as(&prover, &url, Some(&json!({"certificate": b64(&der)})))
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn key_compromise_blocks_the_key_only_when_its_holder_or_the_operator_says_so() {
    let s = TestServer::with(|c| c.keys.allow_renewal_key_reuse = true);
    let url = s.url("/acme/revoke-cert");
    let acct = s.new_account().await;
    let name = "plc-9.plant.example";
    let (der, key) = issue(&s, &acct, &[name]).await;
    s.post_as(
        &acct,
        &url,
        Some(&json!({"certificate": b64(&der), "reason": 1})),
    )
    .await
    .assert_status(StatusCode::OK);
    // The account's word does not put the key on the compromised list.
    let o = ready(&s, &acct, &[name]).await;
    let csr = {
        let mut p = CertificateParams::new(vec![name.to_owned()]).expect("params");
        p.distinguished_name = DistinguishedName::new();
        p.serialize_request(&key).expect("csr").der().to_vec()
    };
    let r = s.finalize(&acct, &o, &csr).await;
    r.assert_status(StatusCode::OK);
    let der = leaf_der(&s, &acct, &r.json()).await;

    // Signed with the key itself, keyCompromise does.
    let cert_key = Key::from_pkcs8(&key.serialize_der());
    s.post(
        &cert_key,
        None,
        &url,
        Some(&json!({"certificate": b64(&der), "reason": 1})),
    )
    .await
    .assert_status(StatusCode::OK);
    let o = ready(&s, &acct, &[name]).await;
    let r = s.finalize(&acct, &o, &csr).await;
    r.assert_problem_detail(400, "badPublicKey", "compromised");
}

#[tokio::test]
async fn the_account_object_carries_its_external_account_binding() {
    let s = TestServer::new();
    let cred = credential(&s, &[], None);
    let key = Key::generate();
    let url = s.url("/acme/new-account");
    let binding = common::eab_binding(&key, &cred.kid, &cred.hmac_key, &url);
    let r = s
        .post_new_account(&key, &json!({"externalAccountBinding": binding}))
        .await;
    r.assert_status(StatusCode::CREATED);
    assert_eq!(r.json()["externalAccountBinding"], binding);
    let acct = common::Account {
        kid: r.header("location").expect("location"),
        key,
    };
    let again = s.post_as(&acct, &acct.kid.clone(), None).await.json();
    assert_eq!(again["externalAccountBinding"], binding);
    // An account without one shows none.
    let plain = s.new_account().await;
    let v = s.post_as(&plain, &plain.kid.clone(), None).await.json();
    assert!(v.get("externalAccountBinding").is_none(), "{v}");
}

#[tokio::test]
async fn new_orders_are_rate_limited_per_account() {
    let s = TestServer::with(|c| {
        c.rate_limits.new_order_per_account =
            ca_server::ratelimit::Rate::new(2, std::time::Duration::from_secs(3600));
    });
    let acct = s.new_account().await;
    for _ in 0..2 {
        new_order(&s, &acct, &identifiers(&["plc-1.plant.example"]))
            .await
            .assert_status(StatusCode::CREATED);
    }
    let r = new_order(&s, &acct, &identifiers(&["plc-1.plant.example"])).await;
    r.assert_problem_detail(429, "rateLimited", "new_order_per_account");
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1700..=1800).contains(&wait), "{wait}");
    // Another account has its own budget.
    let other = s.new_account().await;
    new_order(&s, &other, &identifiers(&["plc-1.plant.example"]))
        .await
        .assert_status(StatusCode::CREATED);
}

/// The first authorization of `order`, fetched by POST-as-GET.
async fn first_authz(s: &TestServer, acct: &common::Account, order: &Value) -> Value {
    s.post_as(
        acct,
        order["authorizations"][0].as_str().expect("authz"),
        None,
    )
    .await
    .json()
}

/// Polls the first authorization of `order` until it leaves `pending`.
async fn settled(s: &TestServer, acct: &common::Account, order: &Value) -> Value {
    for _ in 0..200 {
        let a = first_authz(s, acct, order).await;
        if a["status"] != "pending" {
            return a;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("authorization stayed pending");
}

#[tokio::test]
async fn failed_validations_limit_new_orders_for_the_identifier() {
    // Nothing listens where the CA dials, so every validation fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let s = TestServer::with(|c| {
        c.validation.http_port = port;
        c.validation.lab_resolve_all_to = Some("127.0.0.1".parse().expect("ip"));
        c.rate_limits.failed_validations_per_identifier =
            ca_server::ratelimit::Rate::new(2, std::time::Duration::from_secs(3600));
    });
    let acct = s.new_account().await;
    let payload = identifiers(&["flaky.plant.example"]);
    for _ in 0..2 {
        let o = new_order(&s, &acct, &payload).await.json();
        s.answer(&acct, &o, "http-01")
            .await
            .assert_status(StatusCode::OK);
        assert_eq!(settled(&s, &acct, &o).await["status"], "invalid");
    }
    let r = new_order(&s, &acct, &payload).await;
    let p = r.assert_problem_detail(429, "rateLimited", "failed_validations_per_identifier");
    common::assert_detail_contains(&p, "flaky.plant.example");
    assert!(r.header("retry-after").is_some());
    // Other identifiers are not held back.
    new_order(&s, &acct, &identifiers(&["steady.plant.example"]))
        .await
        .assert_status(StatusCode::CREATED);
}

#[tokio::test]
async fn validations_beyond_the_in_flight_bound_are_rate_limited_and_stay_pending() {
    // A peer that accepts and never answers keeps a validation running.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = silent.accept().await {
            keep.lock().await.push(tcp);
        }
    });
    let s = TestServer::with(|c| {
        c.validation.http_port = port;
        c.validation.lab_resolve_all_to = Some("127.0.0.1".parse().expect("ip"));
        c.validation.max_in_flight_per_account = 1;
    });
    let acct = s.new_account().await;
    let first = new_order(&s, &acct, &identifiers(&["a.plant.example"]))
        .await
        .json();
    s.answer(&acct, &first, "http-01")
        .await
        .assert_status(StatusCode::OK);
    let second = new_order(&s, &acct, &identifiers(&["b.plant.example"]))
        .await
        .json();
    let r = s.answer(&acct, &second, "http-01").await;
    r.assert_problem_detail(429, "rateLimited", "max_in_flight_per_account");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    let authz = first_authz(&s, &acct, &second).await;
    assert_eq!(authz["status"], "pending");
    assert!(
        authz["challenges"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["status"] == "pending")),
        "{authz}"
    );
    // Another account is not held back by this one.
    let other = s.new_account().await;
    let o = new_order(&s, &other, &identifiers(&["c.plant.example"]))
        .await
        .json();
    s.answer(&other, &o, "http-01")
        .await
        .assert_status(StatusCode::OK);
}

/// A pairing code is a function of the request's token and the account key. An account that
/// rolls its key over after its order exists could grind a key whose code matches the one a
/// waiting device shows; so the approval must be requested with the key the order was made
/// with.
#[tokio::test]
async fn operator_approval_needs_the_key_the_order_was_made_with() {
    let s = TestServer::with(|c| {
        c.enrollment.operator_approval = true;
        c.enrollment.network_challenges = false;
    });
    let acct = s.new_account().await;
    let order = new_order(&s, &acct, &identifiers(&["plc-1.plant.example"]))
        .await
        .json();
    let authz = first_authz(&s, &acct, &order).await;
    let chall = authz["challenges"][0]["url"]
        .as_str()
        .expect("challenge")
        .to_owned();

    // keyChange (RFC 8555 §7.3.5) to a key chosen after the token was known.
    let new_key = Key::generate();
    let url = s.url("/acme/key-change");
    let inner = new_key.jws(
        &json!({"alg": "ES256", "jwk": new_key.jwk(), "url": url}),
        Some(&json!({"account": acct.kid, "oldKey": acct.key.jwk()})),
    );
    s.post_as(&acct, &url, Some(&inner))
        .await
        .assert_status(StatusCode::OK);
    let rolled = common::Account {
        kid: acct.kid.clone(),
        key: new_key,
    };
    s.post_as(&rolled, &chall, Some(&json!({})))
        .await
        .assert_problem_detail(403, "unauthorized", "key changed");
    let c = s.post_as(&rolled, &chall, None).await.json();
    assert_eq!(c["status"], "pending", "{c}");
    assert!(ca_server::ra::approval::ApprovalQueue::new(s.dir.path())
        .list_pending()
        .expect("list")
        .is_empty());

    // A new order made with the new key may ask.
    let order = new_order(&s, &rolled, &identifiers(&["plc-1.plant.example"]))
        .await
        .json();
    let authz = first_authz(&s, &rolled, &order).await;
    let chall = authz["challenges"][0]["url"].as_str().expect("challenge");
    let c = s.post_as(&rolled, chall, Some(&json!({}))).await.json();
    assert_eq!(c["status"], "processing", "{c}");
}

/// Deletes every identity record and the mark that the store was indexed, as in a store from
/// before the index.
fn forget_identities(s: &TestServer) {
    for key in s
        .app
        .db
        .keys_with_prefix(Table::Identities, "")
        .expect("keys")
    {
        s.app.db.remove(Table::Identities, &key).expect("remove");
    }
    s.app
        .db
        .remove(Table::Meta, "identities_indexed")
        .expect("remove mark");
}

/// A store from before identities were indexed is indexed at start, so the certificates issued
/// before still bind their identities.
#[tokio::test]
async fn certificates_issued_before_the_index_still_bind_their_identities() {
    let s = TestServer::with(opcua);
    let cred = credential(&s, &["dns:line2.plant.example", "ip:10.20.0.0/16"], None);
    let first = bound(&s, &cred).await;
    issue(&s, &first, &["plc-1.line2.plant.example"]).await;
    let mut p = identifiers(&["10.20.0.1"]);
    p["profile"] = json!("opcua");
    let o = new_order(&s, &first, &p).await.json();
    let uri = "urn:plant.example:scada-1";
    finalize(&s, &first, &o, &["10.20.0.1"], &[uri])
        .await
        .0
        .assert_status(StatusCode::OK);

    forget_identities(&s);
    ca_server::ra::identity::index_existing(&s.app).expect("index");

    let second = bound(&s, &cred).await;
    let o = new_order(&s, &second, &identifiers(&["plc-1.line2.plant.example"]))
        .await
        .json();
    assert_eq!(o["status"], "pending", "{o}");
    let mut p = identifiers(&["10.20.0.7"]);
    p["profile"] = json!("opcua");
    let o = new_order(&s, &second, &p).await.json();
    let (r, _) = finalize(&s, &second, &o, &["10.20.0.7"], &[uri]).await;
    r.assert_problem(400, "badCSR");
    // Indexing again changes nothing: it ran once.
    ca_server::ra::identity::release(&s.app, &ca_server::ra::identity::uri_key(uri))
        .expect("release");
    ca_server::ra::identity::index_existing(&s.app).expect("index");
    let (r, _) = finalize(&s, &second, &o, &["10.20.0.7"], &[uri]).await;
    r.assert_status(StatusCode::OK);
}

/// Devices sharing a credential finalize pre-authorized orders for the same name at the same
/// moment: one certificate is issued. (Without the claim under compare-and-swap, two or more
/// were issued in most runs of this test with 8 racers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_finalizes_for_one_pre_authorized_name_issue_once() {
    let s = TestServer::new();
    let cred = credential(&s, &["dns:line2.plant.example"], None);
    let name = "plc-5.line2.plant.example";
    let mut requests = Vec::new();
    for _ in 0..8 {
        let acct = bound(&s, &cred).await;
        let o = pre_authorized(&s, &acct, &[name]).await;
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec![name.to_owned()]).expect("params");
        p.distinguished_name = DistinguishedName::new();
        let csr = p.serialize_request(&key).expect("csr");
        let url = o["finalize"].as_str().expect("finalize");
        let payload = json!({"csr": b64(csr.der())});
        requests.push(s.signed_post(&acct, url, Some(&payload)).await);
    }
    let replies = common::send_concurrently(&s, requests).await;
    let statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
    let issued = statuses.iter().filter(|st| **st == StatusCode::OK).count();
    assert_eq!(issued, 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|st| *st == StatusCode::OK || *st == StatusCode::FORBIDDEN),
        "{statuses:?}"
    );
}

/// A claim whose certificate never came lapses, so a crash between claim and issuance does not
/// bind an ApplicationUri for good.
#[tokio::test]
async fn a_lapsed_claim_gives_way() {
    let s = TestServer::with(opcua);
    let uri = "urn:plant.example:hmi-2";
    s.app
        .db
        .put(
            Table::Identities,
            &ca_server::ra::identity::uri_key(uri),
            &ca_server::ra::identity::Holding {
                account_id: "crashed".into(),
                serial: None,
                not_after: 0,
                since: ca_server::types::now() - ca_server::ra::identity::CLAIM_LAPSES - 1,
            },
        )
        .expect("put");
    let cred = credential(&s, &["ip:10.20.0.0/16"], None);
    let acct = bound(&s, &cred).await;
    let mut p = identifiers(&["10.20.0.9"]);
    p["profile"] = json!("opcua");
    let o = new_order(&s, &acct, &p).await.json();
    let (r, _) = finalize(&s, &acct, &o, &["10.20.0.9"], &[uri]).await;
    r.assert_status(StatusCode::OK);
}

/// An issuance that stalled past its claim's lapse while another account was certified for
/// the ApplicationUri records nothing and hands out nothing: the other account keeps it.
#[tokio::test]
async fn an_issuance_that_lost_its_claim_while_stalled_records_nothing() {
    use ca_server::ra::identity::{self, Hold, Holding};
    let s = TestServer::with(opcua);
    let uri = "urn:plant.example:hmi-3";
    let key = identity::uri_key(uri);
    // A finalize of account "stalled" claims the URI, then stalls past the lapse.
    let stalled = identity::claim(&s.app, &key, "stalled", Hold::UntilReleased)
        .expect("claim")
        .expect("free");
    s.app
        .db
        .update(Table::Identities, &key, |mut h: Holding| {
            h.since -= identity::CLAIM_LAPSES + 1;
            Ok(h)
        })
        .expect("backdate");
    // Meanwhile another account is certified for it.
    let cred = credential(&s, &["ip:10.20.0.0/16"], None);
    let acct = bound(&s, &cred).await;
    let mut p = identifiers(&["10.20.0.10"]);
    p["profile"] = json!("opcua");
    let o = new_order(&s, &acct, &p).await.json();
    let (r, _) = finalize(&s, &acct, &o, &["10.20.0.10"], &[uri]).await;
    r.assert_status(StatusCode::OK);
    let holder = identity::get(&s.app, &key).expect("get").expect("held");
    assert_ne!(holder.account_id, "stalled");
    // The stalled finalize wakes up with its certificate signed: recording it fails.
    let theirs: ca_server::ca::cert::Certificate = s
        .app
        .db
        .get(
            Table::Certificates,
            holder.serial.as_deref().expect("serial"),
        )
        .expect("get")
        .expect("certificate");
    let mut late = theirs.clone();
    late.account_id = "stalled".into();
    late.id = "0badc0de".into();
    let err = identity::record_issued(&s.app, &late, Some(uri), std::slice::from_ref(&stalled))
        .expect_err("the claim was lost");
    assert!(err.to_string().contains("finalize again"), "{err}");
    assert_eq!(
        identity::get(&s.app, &key).expect("get"),
        Some(holder),
        "the certified account still holds the URI"
    );
}

/// A certificate recorded for an identity but never stored (its issuing process died between
/// the two writes) may have been signed: it holds the identity until its notAfter, and a
/// sibling's pre-authorization does not cover it.
#[tokio::test]
async fn a_recorded_certificate_that_was_never_stored_still_holds_its_identity() {
    use ca_server::ra::identity::{self, Holding};
    let s = TestServer::new();
    let name = "plc-8.plant.example";
    let now = ca_server::types::now();
    s.app
        .db
        .put(
            Table::Identities,
            &identity::key(&ca_server::types::Identifier::dns(name)),
            &Holding {
                account_id: "crashed".into(),
                serial: Some("0badc0de".into()),
                not_after: now + 3600,
                since: now,
            },
        )
        .expect("put");
    let cred = credential(&s, &["dns:plant.example"], None);
    let acct = bound(&s, &cred).await;
    let (_, o) = s.create_order(&acct, &identifiers(&[name])).await;
    assert_eq!(o["status"], "pending", "a challenge is needed: {o}");
}

/// An authorization pre-authorized before authorizations recorded their credential is checked
/// against the account's credential.
#[tokio::test]
async fn a_pre_authorization_from_before_its_credential_was_recorded_is_checked() {
    let s = TestServer::new();
    let cred = credential(&s, &["dns:plant.example"], None);
    let acct = bound(&s, &cred).await;
    let o = pre_authorized(&s, &acct, &["plc-3.plant.example"]).await;
    let authz_id = o["authorizations"][0]
        .as_str()
        .and_then(|u| u.rsplit('/').next())
        .expect("authz id");
    s.app
        .db
        .update(
            Table::Authzs,
            authz_id,
            |mut a: ca_server::ra::authz::Authz| {
                a.pre_authorized_by = None;
                Ok(a)
            },
        )
        .expect("strip");
    assert!(s.app.eab.revoke(&cred.kid).expect("revoke"));
    let (r, _) = finalize(&s, &acct, &o, &["plc-3.plant.example"], &[]).await;
    r.assert_problem(403, "unauthorized");
}
