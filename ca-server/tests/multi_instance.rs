//! Two CA instances on one PostgreSQL database, in one process: what one instance does, the
//! other sees and honours. Each instance has its own data directory holding a copy of the same
//! CA files, as an operator sets them up (docs/operating.md, "Several instances").

mod common;

use axum::http::{Request, StatusCode};
use ca_server::ra::eab::NewCredential;
use ca_server::storage::postgres::test_cluster::{copy_dir, TestCluster};
use ca_server::storage::Backend;
use common::idevid::{Manufacturer, PEN};
use common::*;
use serde_json::{json, Value};
use tower::ServiceExt;

/// Runs the `ca-server` command with `args`: whether it succeeded, its stdout and stderr.
fn ca_server_command(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ca-server"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run ca-server");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two instances of one CA on a fresh database of the shared test cluster.
fn pair() -> (TestServer, TestServer) {
    pair_with(|_| {})
}

/// [`pair`], with `f` applied to both configurations.
fn pair_with(f: impl Fn(&mut ca_server::config::Config)) -> (TestServer, TestServer) {
    let cluster = TestCluster::shared().unwrap_or_else(|e| panic!("{e}"));
    let db = cluster.fresh_database().unwrap_or_else(|e| panic!("{e}"));
    let url = cluster.url(&db);
    let on_postgres = |cfg: &mut ca_server::config::Config| {
        cfg.storage.backend = Backend::Postgres;
        cfg.storage.url = Some(url.clone());
        f(cfg);
    };
    let a = TestServer::with(on_postgres);
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&a.dir.path().join("ca"), &dir.path().join("ca")).expect("copy the CA");
    let b = TestServer::with_dir(dir, on_postgres);
    assert_eq!(a.app.ca.root_pem(), b.app.ca.root_pem(), "one CA");
    (a, b)
}

/// One instance with the data directory `dir`, on a fresh database of the shared test cluster.
fn alone_on_postgres(dir: tempfile::TempDir) -> TestServer {
    let cluster = TestCluster::shared().unwrap_or_else(|e| panic!("{e}"));
    let db = cluster.fresh_database().unwrap_or_else(|e| panic!("{e}"));
    let url = cluster.url(&db);
    TestServer::with_dir(dir, |cfg| {
        cfg.storage.backend = Backend::Postgres;
        cfg.storage.url = Some(url);
    })
}

/// A certificate for `name` issued by `s` to a new account: its DER.
async fn issued(s: &TestServer, name: &str) -> Vec<u8> {
    let acct = s.new_account().await;
    let order = ready_order(s, &acct, &[name]).await;
    let key = rcgen::KeyPair::generate().expect("key");
    let done = s.finalize(&acct, &order, &csr(&[name], &key)).await.json();
    leaf_der(&s.certificate_chain(&acct, &done).await)
}

/// The CRL number of the CRL `der`.
fn crl_number(der: &[u8]) -> String {
    let (_, crl) = x509_parser::parse_x509_crl(der).expect("CRL");
    crl.crl_number().map(|n| n.to_string()).expect("number")
}

/// Whether the CRL `crl` (DER) lists the certificate with the serial `serial`.
fn lists(crl: &[u8], serial: &[u8]) -> bool {
    let (_, crl) = x509_parser::parse_x509_crl(crl).expect("CRL");
    let found = crl
        .iter_revoked_certificates()
        .any(|r| r.raw_serial() == serial);
    found
}

/// A nonce fetched from one instance is spent at the other, and then at neither again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_from_one_instance_is_good_at_the_other_once() {
    let (a, b) = pair();
    let key = Key::generate();
    let url = b.url("/acme/new-account");
    let protected = json!({"alg": "ES256", "nonce": a.nonce().await, "url": url, "jwk": key.jwk()});
    let body = key
        .jws(&protected, Some(&json!({"termsOfServiceAgreed": true})))
        .to_string();
    b.post_raw(&url, body.clone())
        .await
        .assert_status(StatusCode::CREATED);
    let replay = a.post_raw(&a.url("/acme/new-account"), body.clone()).await;
    replay.assert_problem(400, "badNonce");
    let replay = b.post_raw(&url, body).await;
    replay.assert_problem(400, "badNonce");
}

/// Six newAccount requests for one new key at once, alternating between `a` and `b`, each
/// with the payload `payload` makes for its instance and the key.
async fn race_registrations(
    a: &std::sync::Arc<TestServer>,
    b: &std::sync::Arc<TestServer>,
    payload: impl Fn(&TestServer, &Key) -> Value,
) -> Vec<Reply> {
    let key = std::sync::Arc::new(Key::generate());
    let racers: Vec<_> = (0..6)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            let payload = payload(&s, &key);
            let key = key.clone();
            tokio::spawn(async move { s.post_new_account(&key, &payload).await })
        })
        .collect();
    let mut replies = Vec::new();
    for r in racers {
        replies.push(r.await.expect("join"));
    }
    replies
}

/// RFC 8555 §7.3: one account per key, also when the instances register one key at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_registers_one_account_however_the_instances_race() {
    let (a, b) = pair();
    let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
    for round in 0..30 {
        let replies =
            race_registrations(&a, &b, |_, _| json!({"termsOfServiceAgreed": true})).await;
        let created = replies
            .iter()
            .filter(|r| r.status == StatusCode::CREATED)
            .count();
        let statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
        assert_eq!(created, 1, "round {round}: {statuses:?}");
        let locations: std::collections::BTreeSet<_> =
            replies.iter().map(|r| r.header("location")).collect();
        assert_eq!(locations.len(), 1, "round {round}: {locations:?}");
    }
}

/// An order made at one instance is finalized at the other; the certificate is served by both,
/// and its revocation at one is on the CRL the other serves at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_moves_between_instances_and_a_revocation_reaches_both_crls() {
    let (a, b) = pair();
    let acct = a.new_account().await;
    let order = ready_order(&a, &acct, &["line-1.plant.example"]).await;
    // A CRL before the revocation: A signs it, B serves the one A stored.
    let serials = |der: &[u8]| -> (String, Vec<Vec<u8>>) {
        let (_, crl) = x509_parser::parse_x509_crl(der).expect("CRL parses");
        let n = crl.crl_number().map(|n| n.to_string()).unwrap_or_default();
        (
            n,
            crl.iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec())
                .collect(),
        )
    };
    let (n_a, before) = serials(&a.get(&a.url("/crl")).await.body);
    assert!(before.is_empty());
    let (n_b, _) = serials(&b.get(&b.url("/crl")).await.body);
    assert!(n_b.parse::<u64>().expect("n") >= n_a.parse::<u64>().expect("n"));

    let key = rcgen::KeyPair::generate().expect("key");
    let r = b
        .finalize(&acct, &order, &csr(&["line-1.plant.example"], &key))
        .await;
    r.assert_status(StatusCode::OK);
    let done: Value = b
        .post_as(&acct, order["url"].as_str().expect("url"), None)
        .await
        .json();
    assert_eq!(done["status"], "valid", "{done}");
    let from_b = b.certificate_chain(&acct, &done).await;
    let from_a = a.certificate_chain(&acct, &done).await;
    assert_eq!(from_a, from_b, "both instances serve the one certificate");
    let der = leaf_der(&from_a);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert");
    let serial = cert.raw_serial().to_vec();

    let r = b
        .post_as(
            &acct,
            &b.url("/acme/revoke-cert"),
            Some(&json!({"certificate": b64(&der), "reason": 4})),
        )
        .await;
    r.assert_status(StatusCode::OK);
    let (n_after, listed) = serials(&a.get(&a.url("/crl")).await.body);
    assert_eq!(
        listed,
        vec![serial.clone()],
        "instance a serves b's revocation"
    );
    let (n_b_after, listed_b) = serials(&b.get(&b.url("/crl")).await.body);
    assert_eq!(listed_b, vec![serial]);
    assert_eq!(n_after, n_b_after, "one current CRL");
    assert!(n_after.parse::<u64>().expect("n") > n_b.parse::<u64>().expect("n"));
}

/// A registration that loses the race for its key to another instance gives back the use of
/// its enrollment credential: one account per key, one use per account.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registration_that_loses_the_race_for_its_key_spends_no_credential_use() {
    let (a, b) = pair();
    let cred = credential(&a, &[], None);
    let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
    for round in 0..10 {
        let replies = race_registrations(&a, &b, |s, key| {
            let url = s.url("/acme/new-account");
            json!({"externalAccountBinding": eab_binding(key, &cred.kid, &cred.hmac_key, &url)})
        })
        .await;
        let statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
        let created = statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        assert_eq!(created, 1, "round {round}: {statuses:?}");
        assert_eq!(
            a.app.eab.uses(&a.app.db, &cred.kid).expect("uses"),
            round + 1,
            "round {round}: one use per account ({statuses:?})"
        );
    }
}

/// An enrollment credential made at one instance binds accounts at the other, and a
/// single-use one is spent once across both; a revocation at one holds at the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_made_at_one_instance_holds_at_the_other() {
    let (a, b) = pair();
    let bind = |s: &TestServer, kid: &str, hmac: &str| {
        let key = Key::generate();
        let binding = eab_binding(&key, kid, hmac, &s.url("/acme/new-account"));
        (key, json!({"externalAccountBinding": binding}))
    };
    let once = a
        .app
        .eab
        .create(&NewCredential {
            max_uses: Some(1),
            ..NewCredential::default()
        })
        .expect("create");
    let (key, payload) = bind(&b, &once.kid, &once.hmac_key);
    b.post_new_account(&key, &payload)
        .await
        .assert_status(StatusCode::CREATED);
    let (key, payload) = bind(&a, &once.kid, &once.hmac_key);
    let spent = a.post_new_account(&key, &payload).await;
    let doc = spent.assert_problem(403, "unauthorized");
    assert_detail_contains(&doc, "already used");

    let many = b.app.eab.create(&NewCredential::default()).expect("create");
    assert!(a.app.eab.revoke(&many.kid).expect("revoke"));
    let (key, payload) = bind(&b, &many.kid, &many.hmac_key);
    let revoked = b.post_new_account(&key, &payload).await;
    let doc = revoked.assert_problem(403, "unauthorized");
    assert_detail_contains(&doc, "revoked");
    assert_eq!(a.app.eab.list().expect("list").len(), 2);
    assert_eq!(b.app.eab.list().expect("list").len(), 2);
}

/// Credential files a CA made before it moved to PostgreSQL are in force once it has.
#[tokio::test]
async fn credential_files_are_copied_into_the_shared_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = ca_server::ra::eab::EabStore::new(dir.path())
        .create(&NewCredential::default())
        .expect("file credential");
    let s = alone_on_postgres(dir);
    let kept = s.app.eab.get(&old.kid).expect("get").expect("copied");
    assert_eq!(kept.hmac_key, old.hmac_key);
    let marker = s.dir.path().join(ca_server::storage::SHARED_MARKER);
    assert!(marker.exists());
    // Moved back to the embedded store, the CA takes the marker away: the operator commands
    // work on its files again.
    let TestServer { app, dir, .. } = s;
    drop(app);
    let back = TestServer::with_dir(dir, |_| {});
    assert!(!back
        .dir
        .path()
        .join(ca_server::storage::SHARED_MARKER)
        .exists());
}

/// One key, two devices, two instances at once: one certificate, never two (the key-reuse
/// check holds across instances, however the finalizes interleave).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_is_certified_once_when_two_instances_finalize_with_it_at_once() {
    let (a, b) = pair();
    let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
    let accounts = std::sync::Arc::new((a.new_account().await, b.new_account().await));
    for round in 0..8 {
        let (name_a, name_b) = (
            format!("a-{round}.plant.example"),
            format!("b-{round}.plant.example"),
        );
        let order_a = ready_order(&a, &accounts.0, &[&name_a]).await;
        let order_b = ready_order(&b, &accounts.1, &[&name_b]).await;
        let key = rcgen::KeyPair::generate().expect("key");
        let (csr_a, csr_b) = (csr(&[&name_a], &key), csr(&[&name_b], &key));
        // Each finalize on a task of its own, so they run on two workers at once.
        let fa = {
            let (a, accounts) = (a.clone(), accounts.clone());
            tokio::spawn(async move { a.finalize(&accounts.0, &order_a, &csr_a).await })
        };
        let fb = {
            let (b, accounts) = (b.clone(), accounts.clone());
            tokio::spawn(async move { b.finalize(&accounts.1, &order_b, &csr_b).await })
        };
        let (ra, rb) = (fa.await.expect("join"), fb.await.expect("join"));
        let issued = [&ra, &rb]
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count();
        assert_eq!(
            issued,
            1,
            "round {round}: {} {} / {} {}",
            ra.status,
            String::from_utf8_lossy(&ra.body),
            rb.status,
            String::from_utf8_lossy(&rb.body)
        );
        let refused = if ra.status == StatusCode::OK {
            &rb
        } else {
            &ra
        };
        refused.assert_problem(400, "badCSR");
    }
}

/// A revocation whose instance did not get to sign the next CRL (it died, or signing failed)
/// still makes every instance's CRL list it: the stored CRL is stale once a revocation is
/// counted after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_the_crl_even_when_its_instance_never_signs() {
    let (a, b) = pair();
    let der = issued(&a, "line-2.plant.example").await;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert");
    let listed = |crl: &[u8]| lists(crl, cert.raw_serial());
    assert!(!listed(&a.get(&a.url("/crl")).await.body));
    // B records the revocation but publishes nothing, as if it died right after.
    ca_server::ra::revocation::record_revocation(
        &b.app,
        &hex::encode(cert.raw_serial()),
        1,
        ca_server::ca::cert::RevokedBy::Account,
    )
    .expect("revocation recorded");
    assert!(
        listed(&a.get(&a.url("/crl")).await.body),
        "A's CRL lists it"
    );
    assert!(listed(&b.get(&b.url("/crl")).await.body), "B's too");
}

/// A revocation cut off between its record and its count (the instance died, a statement
/// timed out) is counted when the device asks again, at any instance, so every CRL lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_revocation_that_was_never_counted_reaches_the_crl() {
    let (a, b) = pair();
    let acct = a.new_account().await;
    let order = ready_order(&a, &acct, &["line-4.plant.example"]).await;
    let key = rcgen::KeyPair::generate().expect("key");
    let done = a
        .finalize(&acct, &order, &csr(&["line-4.plant.example"], &key))
        .await
        .json();
    let der = leaf_der(&a.certificate_chain(&acct, &done).await);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert");
    let listed = |crl: &[u8]| lists(crl, cert.raw_serial());
    assert!(!listed(&a.get(&a.url("/crl")).await.body));
    // B records the revocation; its count is lost, as if B died between the two writes.
    let counted = |s: &TestServer| -> u64 {
        s.app
            .db
            .get(ca_server::storage::Table::Meta, "revocations_recorded")
            .expect("get")
            .unwrap_or(0)
    };
    let before = counted(&b);
    ca_server::ra::revocation::record_revocation(
        &b.app,
        &hex::encode(cert.raw_serial()),
        1,
        ca_server::ca::cert::RevokedBy::Account,
    )
    .expect("revocation recorded");
    b.app
        .db
        .put(
            ca_server::storage::Table::Meta,
            "revocations_recorded",
            &before,
        )
        .expect("count lost");
    assert!(
        !listed(&a.get(&a.url("/crl")).await.body),
        "A's CRL misses it"
    );
    // The device asks again at A, a second later: already revoked, and now on the CRL.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = a
        .post_as(
            &acct,
            &a.url("/acme/revoke-cert"),
            Some(&json!({"certificate": b64(&der), "reason": 1})),
        )
        .await;
    again.assert_problem(400, "alreadyRevoked");
    assert!(
        listed(&a.get(&a.url("/crl")).await.body),
        "A's CRL lists it"
    );
    assert!(listed(&b.get(&b.url("/crl")).await.body), "B's too");
    // Asking once more counts nothing: a CRL signed after the revocation is stored.
    let now_counted = counted(&a);
    a.post_as(
        &acct,
        &a.url("/acme/revoke-cert"),
        Some(&json!({"certificate": b64(&der), "reason": 1})),
    )
    .await
    .assert_problem(400, "alreadyRevoked");
    assert_eq!(counted(&a), now_counted);
}

/// Work another instance has under way is its own: an order it is issuing reads `processing`
/// here, not `invalid`, and a validation it runs is not started again by a poll here, until
/// the work is older than any live attempt could be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_under_way_at_one_instance_is_not_taken_for_abandoned_at_the_other() {
    let (a, b) = pair();
    let acct = a.new_account().await;
    let now = ca_server::types::now();

    let order = ready_order(&a, &acct, &["line-3.plant.example"]).await;
    let url = order["url"].as_str().expect("url");
    issuing_elsewhere(&a, url, now, "another-instance");
    let seen: Value = b.post_as(&acct, url, None).await.json();
    assert_eq!(seen["status"], "processing", "{seen}");
    issuing_elsewhere(&a, url, now - 3600, "another-instance");
    let seen: Value = b.post_as(&acct, url, None).await.json();
    assert_eq!(
        seen["status"], "invalid",
        "an issuance an hour old is abandoned"
    );

    let (_, pending) = dns_order(&a, &acct, "line-4.plant.example").await;
    let authz_url = pending["authorizations"][0].as_str().expect("authz");
    validating_elsewhere(&a, authz_url, now, "another-instance");
    b.post_as(&acct, authz_url, None).await;
    assert_eq!(
        validated_by(&a, authz_url).as_deref(),
        Some("another-instance"),
        "the poll at the other instance started the validation again"
    );
}

/// Records the order at `url` as being issued since `since` by the instance `by`.
fn issuing_elsewhere(s: &TestServer, url: &str, since: i64, by: &str) {
    use ca_server::ra::order::{Order, Stage};
    let id = url.rsplit('/').next().expect("id");
    s.app
        .db
        .update(ca_server::storage::Table::Orders, id, |mut o: Order| {
            o.stage = Stage::Processing {
                since,
                by: Some(by.into()),
            };
            Ok(o)
        })
        .expect("processing");
}

/// Records the http-01 challenge of the authorization at `url` as being validated since
/// `since` by the instance `by`.
fn validating_elsewhere(s: &TestServer, url: &str, since: i64, by: &str) {
    use ca_server::types::{ChallengeStatus, ChallengeType};
    let id = url.rsplit('/').next().expect("id");
    s.app
        .db
        .update(
            ca_server::storage::Table::Authzs,
            id,
            |mut z: ca_server::ra::authz::Authz| {
                let c = z
                    .challenges
                    .iter_mut()
                    .find(|c| c.kind == ChallengeType::Http01)
                    .expect("http-01");
                c.status = ChallengeStatus::Processing;
                c.processing_since = Some(since);
                c.processing_by = Some(by.into());
                Ok(z)
            },
        )
        .expect("processing");
}

/// The instance validating the http-01 challenge of the authorization at `url`, if any.
fn validated_by(s: &TestServer, url: &str) -> Option<String> {
    let id = url.rsplit('/').next().expect("id");
    let z: ca_server::ra::authz::Authz = s
        .app
        .db
        .get(ca_server::storage::Table::Authzs, id)
        .expect("get")
        .expect("authz");
    z.challenges
        .iter()
        .find(|c| c.kind == ca_server::types::ChallengeType::Http01)
        .and_then(|c| c.processing_by.clone())
}

/// An instance whose hourly CRL tick comes after another instance signed serves and writes
/// that CRL rather than signing one more; its `crl.pem` follows the CRL it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_tick_after_another_instance_signed_writes_that_crl() {
    use ca_server::ca::IssuerKind;
    let (a, b) = pair();
    let signed = crl_number(&a.get(&a.url("/crl")).await.body);
    ca_server::ra::crl::publish(&b.app, [IssuerKind::Ec]).await;
    let file = std::fs::read(b.dir.path().join("crl.pem")).expect("b's crl.pem");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&file).expect("PEM");
    assert_eq!(
        crl_number(&pem.contents),
        signed,
        "b wrote a's CRL, not a new one"
    );
    assert!(
        b.app.crl.published(IssuerKind::Ec).is_some(),
        "b counts as published"
    );
}

/// An instance serves its own copy of the stored CRL while the store's head record names it:
/// the CRL crosses from the database once per instance and CRL, not on every fetch. A newer
/// CRL signed by the other instance replaces the copy at the next fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serves_its_copy_of_the_stored_crl_until_a_newer_one_is_signed() {
    use ca_server::ca::IssuerKind;
    use ca_server::storage::Table;
    let (a, b) = pair();
    let first = a.get(&a.url("/crl")).await.body;
    // The head record lost (a signer cut off before writing it): the first fetch brings it up.
    let head = format!("crl_head.{}", ca_server::ca::crl::file_name(IssuerKind::Ec));
    assert!(b.app.db.remove(Table::Meta, &head).expect("remove"));
    assert_eq!(b.get(&b.url("/crl")).await.body, first, "b serves a's CRL");
    // The stored CRL is unreadable now; b does not read it while the head names its copy.
    let stored = format!(
        "crl_signed.{}",
        ca_server::ca::crl::file_name(IssuerKind::Ec)
    );
    let original: Value = b
        .app
        .db
        .get(Table::Meta, &stored)
        .expect("get")
        .expect("stored");
    b.app
        .db
        .put(Table::Meta, &stored, &json!({"unreadable": true}))
        .expect("put");
    for _ in 0..3 {
        let got = b.get(&b.url("/crl")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, first, "b's own copy");
    }
    b.app
        .db
        .put(Table::Meta, &stored, &original)
        .expect("restore");
    // A revocation counted makes the stored CRL stale: a signs a newer one, which b serves.
    ca_server::ra::crl::count_revocation(&a.app).expect("counted");
    let newer = a.get(&a.url("/crl")).await.body;
    assert_ne!(crl_number(&newer), crl_number(&first));
    assert_eq!(b.get(&b.url("/crl")).await.body, newer, "b follows");
}

/// Devices wait for an operator; no network challenge is offered.
fn with_approval(cfg: &mut ca_server::config::Config) {
    cfg.enrollment.operator_approval = true;
    cfg.enrollment.network_challenges = false;
}

/// A device of `acct` orders `name` at `s` and asks for operator approval there: the order's
/// URL and object, the challenge URL and the pairing code the device shows.
async fn waiting_device(
    s: &TestServer,
    acct: &Account,
    name: &str,
) -> (String, Value, String, String) {
    let (url, order) = dns_order(s, acct, name).await;
    let (chall, code) = ask_operator(s, acct, &order).await.unwrap_or_else(|r| {
        panic!(
            "the request does not wait: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )
    });
    (url, order, chall, code)
}

/// `acct`'s new order for the DNS name `name` at `s`: its URL and object.
async fn dns_order(s: &TestServer, acct: &Account, name: &str) -> (String, Value) {
    s.create_order(
        acct,
        &json!({"identifiers": [{"type": "dns", "value": name}]}),
    )
    .await
}

/// Triggers the operator-approval-01 challenge of `order`'s authorization at `s`: the challenge
/// URL and pairing code if the request waits, else the refusal.
async fn ask_operator(
    s: &TestServer,
    acct: &Account,
    order: &Value,
) -> Result<(String, String), Reply> {
    let authz_url = order["authorizations"][0].as_str().expect("authz");
    let authz = s.post_as(acct, authz_url, None).await.json();
    let chall = authz["challenges"][0]["url"]
        .as_str()
        .expect("url")
        .to_owned();
    let token = authz["challenges"][0]["token"].as_str().expect("token");
    let code = ca_server::wire::pairing_code(token, &acct.key.thumbprint()).expect("code");
    let r = s.post_as(acct, &chall, Some(&json!({}))).await;
    if r.status != StatusCode::OK {
        return Err(r);
    }
    assert_eq!(r.json()["status"], "processing");
    Ok((chall, code))
}

/// A device that asked at one instance is listed at the other with its pairing code, approved
/// there, and the decision reaches the device polling the first, which gets its certificate.
/// The decision is final at both: a second one at the first instance is refused, and the
/// gauge of waiting requests counts the request once at each instance while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_waiting_at_one_instance_is_approved_at_the_other() {
    use ca_server::ra::approval::{apply, Decision};
    let (a, b) = pair_with(with_approval);
    let acct = a.new_account().await;
    let (order_url, order, chall, code) = waiting_device(&a, &acct, "plc-1").await;

    let listed = b.app.approvals.list_pending().expect("list at b");
    assert_eq!(listed.len(), 1, "b lists the request made at a");
    assert_eq!(listed[0].pairing_code, code);
    apply(&b.app).await.expect("apply at b");
    apply(&a.app).await.expect("apply at a");
    assert_eq!(b.app.approvals.pending_count(), 1, "b counts a's request");
    assert_eq!(a.app.approvals.pending_count(), 1, "a counts it once");

    let id = listed[0].id.clone();
    // A decision whose audit entry cannot be written is not made.
    let unrecorded = b
        .app
        .approvals
        .decide_recorded(&id, &Decision::Approve, |_| {
            Err(ca_server::Error::Storage(
                "the audit log is unreachable".into(),
            ))
        });
    assert!(unrecorded.is_err(), "{unrecorded:?}");
    let mut recorded = false;
    b.app
        .approvals
        .decide_recorded(&id, &Decision::Approve, |p| {
            recorded = p.id == id;
            Ok(())
        })
        .expect("approved at b");
    assert!(recorded, "the audit entry was written with the decision");
    let second = a.app.approvals.decide(
        &id,
        &Decision::Reject {
            reason: Some("not ours".into()),
        },
    );
    assert!(
        matches!(second, Err(ca_server::Error::Exists(_))),
        "a second decision at a: {second:?}"
    );

    let c = a.post_as(&acct, &chall, None).await.json();
    assert_eq!(
        c["status"], "valid",
        "the device polling a sees b's decision: {c}"
    );
    let ready = a.post_as(&acct, &order_url, None).await.json();
    assert_eq!(ready["status"], "ready", "{ready}");
    let key = rcgen::KeyPair::generate().expect("key");
    a.finalize(&acct, &order, &csr(&["plc-1"], &key))
        .await
        .assert_status(StatusCode::OK);
    let done = a.post_as(&acct, &order_url, None).await.json();
    assert_eq!(done["status"], "valid", "{done}");
    assert!(a
        .certificate_chain(&acct, &done)
        .await
        .contains("CERTIFICATE"));

    // Each instance reads the list of waiting requests at most twice a second.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    for s in [&a, &b] {
        apply(&s.app).await.expect("apply");
        assert!(s.app.approvals.list_pending().expect("list").is_empty());
        assert_eq!(s.app.approvals.pending_count(), 0);
    }
    let late = b.app.approvals.decide(&id, &Decision::Approve);
    assert!(late.is_err(), "nothing waits any more: {late:?}");
}

/// The caps on waiting requests count the requests at every instance: with two allowed per
/// account, one at each instance fills them, and a third is refused at either; and when
/// requests race at both instances for the last places, no more than the cap wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_caps_on_waiting_requests_count_every_instance() {
    let (a, b) = pair_with(|cfg| {
        with_approval(cfg);
        cfg.rate_limits.pending_approvals_per_account = 2;
    });
    let acct = a.new_account().await;
    waiting_device(&a, &acct, "plc-1").await;
    waiting_device(&b, &acct, "plc-2").await;
    for (s, name) in [(&a, "plc-3"), (&b, "plc-4")] {
        let (_, order) = dns_order(s, &acct, name).await;
        let refused = ask_operator(s, &acct, &order)
            .await
            .expect_err("over the cap");
        refused.assert_problem_detail(429, "rateLimited", "pending_approvals_per_account");
    }

    // Another account, eight requests signed ahead, four at each instance, sent together.
    let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
    let other = a.new_account().await;
    let mut posts = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 { &a } else { &b };
        let (_, order) = s
            .create_order(
                &other,
                &json!({"identifiers": [{"type": "dns", "value": format!("rtu-{i}")}]}),
            )
            .await;
        let authz_url = order["authorizations"][0].as_str().expect("authz");
        let authz = s.post_as(&other, authz_url, None).await.json();
        let chall = authz["challenges"][0]["url"].as_str().expect("url");
        posts.push((
            s.clone(),
            s.signed_post(&other, chall, Some(&json!({}))).await,
        ));
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(posts.len()));
    let tasks: Vec<_> = posts
        .into_iter()
        .map(|(s, req)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                s.send(req).await.status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("join"));
    }
    let count = |status: StatusCode| statuses.iter().filter(|s| **s == status).count();
    assert_eq!(
        (count(StatusCode::OK), count(StatusCode::TOO_MANY_REQUESTS)),
        (2, 6),
        "{statuses:?}"
    );
    assert_eq!(a.app.approvals.list_pending().expect("list").len(), 4);
}

/// A request that expired at one instance is failed by the other, where the device polls; when
/// both instances apply the expiry at once it is applied once; and an operator can no longer
/// decide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_is_failed_once_by_any_instance() {
    use ca_server::ra::approval::{apply, Decision};
    let (a, b) = pair_with(|cfg| {
        with_approval(cfg);
        cfg.enrollment.approval_ttl = std::time::Duration::from_secs(1);
    });
    let failed = |s: &TestServer| {
        s.app
            .metrics
            .render()
            .lines()
            .find(|l| {
                l.starts_with("iiot_acme_validations_total")
                    && l.contains("operator-approval-01")
                    && l.contains("invalid")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let acct = a.new_account().await;

    let (_, _, chall, _) = waiting_device(&a, &acct, "plc-1").await;
    let id = a.app.approvals.list_pending().expect("list")[0].id.clone();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let c = b.post_as(&acct, &chall, None).await.json();
    assert_eq!(c["status"], "invalid", "b fails a's request: {c}");
    assert_detail_contains(&c["error"], "expired");
    assert_eq!((failed(&a), failed(&b)), (0, 1));
    assert!(a.app.approvals.decide(&id, &Decision::Approve).is_err());

    let (_, _, chall, _) = waiting_device(&a, &acct, "plc-2").await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (ra, rb) = tokio::join!(apply(&a.app), apply(&b.app));
    ra.expect("apply at a");
    rb.expect("apply at b");
    let c = a.post_as(&acct, &chall, None).await.json();
    assert_eq!(c["status"], "invalid", "{c}");
    assert_eq!(failed(&a) + failed(&b), 2, "the expiry is applied once");
    assert!(b.app.approvals.list_pending().expect("list").is_empty());
}

/// A decision comes too late once the request's time has run out, even before any instance
/// has swept it: the operator is told, and the device's challenge fails as expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_after_the_request_expired_is_refused() {
    use ca_server::ra::approval::Decision;
    let (a, b) = pair_with(|cfg| {
        with_approval(cfg);
        cfg.enrollment.approval_ttl = std::time::Duration::from_secs(1);
    });
    let acct = a.new_account().await;
    let (_, _, chall, _) = waiting_device(&a, &acct, "plc-late").await;
    let id = a.app.approvals.list_pending().expect("list")[0].id.clone();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let err = b
        .app
        .approvals
        .decide(&id, &Decision::Approve)
        .expect_err("too late")
        .to_string();
    assert!(err.contains("expired"), "{err}");
    let c = a.post_as(&acct, &chall, None).await.json();
    assert_eq!(c["status"], "invalid", "{c}");
    assert_detail_contains(&c["error"], "expired");
}

/// An approval outcome decides only a challenge that waits for an operator: one recorded for
/// a challenge the device never triggered is dropped, and the challenge stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_for_a_challenge_that_waits_for_nobody_decides_nothing() {
    let (a, _b) = pair_with(with_approval);
    let acct = a.new_account().await;
    let (_, order) = dns_order(&a, &acct, "plc-stray").await;
    let authz_url = order["authorizations"][0].as_str().expect("authz");
    let authz_id = authz_url.rsplit('/').next().expect("id");
    a.app
        .db
        .put(
            ca_server::storage::Table::Approvals,
            &format!("decision/{authz_id}"),
            &json!({"decision": {"decision": "approve"}}),
        )
        .expect("stray outcome");
    ca_server::ra::approval::apply(&a.app).await.expect("apply");
    let authz = a.post_as(&acct, authz_url, None).await.json();
    assert_eq!(authz["status"], "pending", "{authz}");
    assert_eq!(authz["challenges"][0]["status"], "pending", "{authz}");
}

/// `ca-server approval list|approve` with `--config` reach the requests in PostgreSQL; without
/// it they refuse, since the data directory says the CA keeps them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approval_commands_reach_the_shared_store_with_the_configuration() {
    let (a, _b) = pair_with(with_approval);
    let acct = a.new_account().await;
    let (_, _, chall, code) = waiting_device(&a, &acct, "plc-1").await;
    let url = a.app.cfg.storage.url.clone().expect("url");
    let config = postgres_config_file(a.dir.path(), a.dir.path(), &url);
    let run = ca_server_command;
    let dir = a.dir.path().to_str().expect("utf-8 path");
    let config = config.to_str().expect("utf-8 path");

    let (ok, _, err) = run(&["approval", "list", "--data-dir", dir]);
    assert!(!ok && err.contains("--config"), "{err}");
    let (ok, out, err) = run(&["approval", "list", "--config", config, "--json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(listed[0]["pairing_code"], code.as_str(), "{listed}");
    let id = listed[0]["id"].as_str().expect("id");
    let (ok, _, err) = run(&["approval", "approve", "--data-dir", dir, id]);
    assert!(!ok && err.contains("--config"), "{err}");
    let (ok, out, err) = run(&["approval", "approve", "--config", config, id]);
    assert!(ok, "{err}");
    assert!(out.contains("approved"), "{out}");

    let c = a.post_as(&acct, &chall, None).await.json();
    assert_eq!(c["status"], "valid", "{c}");
}

/// Request files a CA made before it moved to PostgreSQL are copied into the store at start
/// and removed; a file whose authorization no longer waits for an operator is dropped, and
/// one whose authorization the database does not hold (the wrong or a not yet restored
/// database) is left in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_files_are_moved_into_the_shared_store() {
    use ca_server::ra::authz::Authz;
    use ca_server::storage::Table;
    use ca_server::types::{ChallengeStatus, ChallengeType};
    let (a, _b) = pair_with(with_approval);
    let acct = a.new_account().await;
    let (order_url, order) = dns_order(&a, &acct, "plc-1").await;
    let authz_id = order["authorizations"][0]
        .as_str()
        .and_then(|u| u.rsplit('/').next())
        .expect("authz id")
        .to_owned();
    // What a CA on the embedded store recorded: the challenge processing, the request a file.
    a.app
        .db
        .update(Table::Authzs, &authz_id, |mut z: Authz| {
            let c = z
                .challenges
                .iter_mut()
                .find(|c| c.kind == ChallengeType::OperatorApproval01)
                .expect("operator-approval-01");
            c.status = ChallengeStatus::Processing;
            Ok(z)
        })
        .expect("processing");
    let now = ca_server::types::now();
    let request = |id: &str| {
        json!({"id": id, "identifier": {"type": "dns", "value": "plc-1"},
            "account_id": acct.kid.rsplit('/').next(), "thumbprint": acct.key.thumbprint(),
            "pairing_code": "GKPJ-92D8", "source": null, "requested": now, "expires": now + 3600})
    };
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&a.dir.path().join("ca"), &dir.path().join("ca")).expect("copy the CA");
    let pending = dir.path().join("approvals/pending");
    std::fs::create_dir_all(&pending).expect("mkdir");
    for id in [authz_id.as_str(), "no-such-authorization"] {
        std::fs::write(pending.join(format!("{id}.json")), request(id).to_string())
            .expect("request file");
    }
    let url = a.app.cfg.storage.url.clone().expect("url");
    let c = TestServer::with_dir(dir, |cfg| {
        cfg.storage.backend = Backend::Postgres;
        cfg.storage.url = Some(url.clone());
        with_approval(cfg);
    });
    let ids = |s: &TestServer| -> Vec<String> {
        s.app
            .approvals
            .list_pending()
            .expect("list")
            .into_iter()
            .map(|p| p.id)
            .collect()
    };
    assert_eq!(ids(&c), [authz_id.as_str()]);
    assert_eq!(ids(&a), [authz_id.as_str()], "every instance sees it");
    assert_eq!(c.app.approvals.pending_count(), 1);
    let left: Vec<_> = std::fs::read_dir(&pending)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left,
        ["no-such-authorization.json"],
        "the imported file is gone; one for an authorization this database does not hold \
         stays for a start on the right database"
    );
    a.app
        .approvals
        .decide(&authz_id, &ca_server::ra::approval::Decision::Approve)
        .expect("approve");
    let ready = c.post_as(&acct, &order_url, None).await.json();
    assert_eq!(ready["status"], "ready", "{ready}");
}

/// A trust anchor added at one instance is the one the other verifies a device attestation
/// against, and its name is taken at both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_anchor_added_at_one_instance_verifies_devices_at_the_other() {
    let (a, b) = pair();
    let maker = Manufacturer::new("Example IDevID Root", &rcgen::PKCS_ECDSA_P256_SHA256);
    let root_pem = &maker.root_pem;
    let added = a
        .app
        .anchors
        .add(root_pem.as_bytes(), Some("example"), PEN, &[])
        .expect("added at a");

    let acct = b.new_account().await;
    let id = json!({"type": "permanent-identifier", "value": format!("SN-0042/{PEN}")});
    let (_, order) = b.create_order(&acct, &json!({"identifiers": [id]})).await;
    let authz_url = order["authorizations"][0].as_str().expect("authz");
    let authz = b.post_as(&acct, authz_url, None).await.json();
    let challenge = authz["challenges"]
        .as_array()
        .expect("challenges")
        .iter()
        .find(|c| c["type"] == "device-attest-01")
        .expect("device-attest-01")
        .clone();
    let key_authz = format!(
        "{}.{}",
        challenge["token"].as_str().expect("token"),
        acct.key.thumbprint()
    );
    let att = maker
        .device("SN-0042", &rcgen::PKCS_ECDSA_P256_SHA256)
        .attest(&key_authz);
    let r = b
        .post_as(
            &acct,
            challenge["url"].as_str().expect("url"),
            Some(&json!({"attObj": b64(&att)})),
        )
        .await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json()["status"], "valid", "{}", r.json());

    let other_pem = Manufacturer::new("Other Root", &rcgen::PKCS_ECDSA_P256_SHA256).root_pem;
    let err = b
        .app
        .anchors
        .add(other_pem.as_bytes(), Some("example"), PEN, &[])
        .expect_err("the name is taken")
        .to_string();
    assert!(err.contains("exists already"), "{err}");
    assert!(added.path.is_none(), "a record of the shared store");
    assert!(!b.dir.path().join("trust-anchors").exists());
}

/// One audit log for every instance: what an operator does at one instance is in the log the
/// other reads, and appends from both at once make one gap-free chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_one_chain_for_every_instance() {
    let (a, b) = pair();
    let der = issued(&a, "line-5.plant.example").await;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert");
    let serial = hex::encode(cert.raw_serial());

    // An operator at B makes the certificate renew early, through B's admin socket API.
    let socket = ca_server::admin::socket::router(ca_server::ra::Ra::clone(&b.app));
    let request = Request::post("/renew-early")
        .header("content-type", "application/json")
        .header(ca_server::admin::socket::ACTOR_HEADER, "cli:bob")
        .body(axum::body::Body::from(
            json!({ "serial": serial }).to_string(),
        ))
        .expect("request");
    let reply = Reply::read(socket.oneshot(request).await.expect("call")).await;
    reply.assert_status(StatusCode::OK);
    let (entries, chain) = a.app.audit.read_checked().expect("read at a");
    assert_eq!(chain, Ok(()));
    let last = entries.last().expect("an entry");
    assert_eq!(
        (
            last.action.as_str(),
            last.target.as_str(),
            last.actor.as_str()
        ),
        ("certificate.renew-early", serial.as_str(), "cli:bob")
    );
    let before = entries.len();

    std::thread::scope(|s| {
        for t in 0..4 {
            let log = if t % 2 == 0 {
                &a.app.audit
            } else {
                &b.app.audit
            };
            s.spawn(move || {
                let actor = ca_server::ra::audit::Actor {
                    name: format!("op-{t}"),
                    from: "local".into(),
                };
                for i in 0..25 {
                    log.append(&actor, "test", &format!("{t}-{i}"), Value::Null)
                        .expect("append");
                }
            });
        }
    });
    let (entries, chain) = b.app.audit.read_checked().expect("read at b");
    assert_eq!(chain, Ok(()));
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    let want: Vec<u64> = (1..=u64::try_from(before + 100).expect("n")).collect();
    assert_eq!(seqs, want);
    assert_eq!(a.app.audit.read_all().expect("read at a"), entries);
}

/// Trust anchor files and the audit log a CA made before it moved to PostgreSQL are in the
/// shared store once it has: the anchors in force, the log with its numbers and chain, new
/// entries after it.
#[tokio::test]
async fn trust_anchor_files_and_the_audit_log_are_copied_into_the_shared_store() {
    use ca_server::ra::audit::{Actor, AuditLog};
    use ca_server::va::attest::anchors::TrustAnchorStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let root_pem =
        Manufacturer::new("Example IDevID Root", &rcgen::PKCS_ECDSA_P256_SHA256).root_pem;
    TrustAnchorStore::new(dir.path())
        .add(root_pem.as_bytes(), Some("example"), PEN, &[])
        .expect("file anchor");
    let file_log = AuditLog::file(dir.path());
    let actor = Actor::local_user();
    for target in ["one", "two"] {
        file_log
            .append(&actor, "credential.create", target, Value::Null)
            .expect("file entry");
    }
    let (old, _) = file_log.read_checked().expect("read the file");
    let s = alone_on_postgres(dir);
    let anchors = s.app.anchors.load().expect("anchors");
    assert_eq!(anchors.len(), 1);
    assert_eq!(anchors[0].name, "example");
    let (entries, chain) = s.app.audit.read_checked().expect("read");
    assert_eq!((entries, chain), (old.clone(), Ok(())));
    let third = s
        .app
        .audit
        .append(&actor, "credential.revoke", "one", Value::Null)
        .expect("append");
    assert_eq!(third.seq, 3);
    let (entries, chain) = s.app.audit.read_checked().expect("read");
    assert_eq!(chain, Ok(()));
    assert_eq!(entries.len(), 3);
    // The file stays as it was; the store's log is the one in force.
    assert_eq!(file_log.read_all().expect("file"), old);
}

/// `ca-server trust-anchor` and `audit --log` reach the shared store with the CA's
/// configuration, and refuse to work on files beside a CA on PostgreSQL without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_reach_the_shared_anchors_and_audit_log_with_the_configuration() {
    let (a, b) = pair();
    let dir = b.dir.path();
    let url = b.app.cfg.storage.url.clone().expect("url");
    let config = postgres_config_file(dir, dir, &url);
    let root_pem = Manufacturer::new("CLI Devices Root", &rcgen::PKCS_ECDSA_P256_SHA256).root_pem;
    let root = dir.join("root.pem");
    std::fs::write(&root, root_pem).expect("root");
    let run = ca_server_command;
    let (config, root, data) = (
        config.to_str().expect("utf8"),
        root.to_str().expect("utf8"),
        dir.to_str().expect("utf8"),
    );

    let (ok, _, stderr) = run(&["trust-anchor", "list", "--data-dir", data]);
    assert!(
        !ok && stderr.contains("pass its configuration file with --config"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&[
        "trust-anchor",
        "add",
        "--data-dir",
        data,
        "--name",
        "cli",
        "--assigner",
        PEN,
        root,
    ]);
    assert!(!ok && stderr.contains("--config"), "{stderr}");

    let (ok, stdout, stderr) = run(&[
        "trust-anchor",
        "add",
        "--config",
        config,
        "--name",
        "cli",
        "--assigner",
        PEN,
        root,
    ]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("trust anchor added: in the shared store"),
        "{stdout}"
    );
    let names: Vec<String> = a
        .app
        .anchors
        .list()
        .expect("list at a")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["cli"]);
    let (ok, stdout, stderr) = run(&["trust-anchor", "list", "--config", config]);
    assert!(
        ok && stdout.starts_with("cli  O=Example Devices Test, CN=CLI Devices Root"),
        "{stdout}{stderr}"
    );

    // What the last entry at A records: action, target and who.
    let last_at_a = || {
        let all = a.app.audit.read_all().expect("read at a");
        let last = all.last().expect("an entry");
        (last.action.clone(), last.target.clone(), last.actor.clone())
    };
    let (action, target, actor) = last_at_a();
    assert_eq!(
        (action.as_str(), target.as_str()),
        ("trust-anchor.add", "cli")
    );
    assert!(actor.starts_with("cli:"), "{actor}");
    let (ok, stdout, stderr) = run(&["audit", "--log", "--config", config]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("trust-anchor.add  cli")
            && stdout.contains("hash chain intact (1 entries)"),
        "{stdout}"
    );
    let (ok, _, stderr) = run(&["audit", "--log", "--data-dir", data]);
    assert!(!ok && stderr.contains("--config"), "{stderr}");

    // Removed at B's command line, the anchor is gone at A too, and the removal is audited.
    let (ok, _, stderr) = run(&[
        "trust-anchor",
        "remove",
        "--data-dir",
        data,
        "--name",
        "cli",
    ]);
    assert!(!ok && stderr.contains("--config"), "{stderr}");
    let (ok, stdout, stderr) = run(&[
        "trust-anchor",
        "remove",
        "--config",
        config,
        "--name",
        "cli",
    ]);
    assert!(ok, "{stdout}{stderr}");
    assert!(a.app.anchors.load().expect("load at a").is_empty());
    let (action, target, _) = last_at_a();
    assert_eq!(
        (action.as_str(), target.as_str()),
        ("trust-anchor.remove", "cli")
    );
    let (ok, _, stderr) = run(&[
        "trust-anchor",
        "remove",
        "--config",
        config,
        "--name",
        "cli",
    ]);
    assert!(!ok && stderr.contains("no trust anchor named"), "{stderr}");
}

/// Rate limits are counted in the shared store: an account that spreads its new orders over
/// both instances gets the limit once, not once per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_counts_the_requests_at_every_instance() {
    let (a, b) = pair_with(|c| {
        c.rate_limits.new_order_per_account =
            ca_server::ratelimit::Rate::new(3, std::time::Duration::from_secs(3600));
    });
    let acct = a.new_account().await;
    let payload = json!({"identifiers": [{"type": "dns", "value": "plc-1.plant.example"}]});
    for i in 0..3 {
        let s = if i % 2 == 0 { &a } else { &b };
        s.post_new_order(&acct, &payload)
            .await
            .assert_status(StatusCode::CREATED);
    }
    for s in [&a, &b] {
        let r = s.post_new_order(&acct, &payload).await;
        r.assert_problem_detail(429, "rateLimited", "new_order_per_account");
        let wait: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in seconds");
        assert!((1100..=1200).contains(&wait), "{wait}");
    }
    // Another account has its own budget, at either instance.
    let other = b.new_account().await;
    a.post_new_order(&other, &payload)
        .await
        .assert_status(StatusCode::CREATED);
}

/// Validations under way are counted per account across the instances: with one allowed at a
/// time, a second challenge answered at the other instance waits, and goes ahead once the
/// first validation has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validations_under_way_are_counted_across_the_instances() {
    // A peer that holds each connection for a second and then drops it, so that one
    // validation runs for about a second and fails.
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = peer.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = peer.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                drop(tcp);
            });
        }
    });
    let (a, b) = pair_with(|c| {
        c.validation.http_port = port;
        c.validation.lab_resolve_all_to = Some("127.0.0.1".parse().expect("ip"));
        c.validation.max_in_flight_per_account = 1;
    });
    let acct = a.new_account().await;
    let (_, first) = dns_order(&a, &acct, "a.plant.example").await;
    let (_, second) = dns_order(&b, &acct, "b.plant.example").await;
    a.answer(&acct, &first, "http-01")
        .await
        .assert_status(StatusCode::OK);
    let r = b.answer(&acct, &second, "http-01").await;
    r.assert_problem_detail(429, "rateLimited", "running at the CA's instances");
    r.assert_problem_detail(429, "rateLimited", "max_in_flight_per_account");
    // Once the first validation has ended, its slot is free at both instances.
    let mut started = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let r = b.answer(&acct, &second, "http-01").await;
        if r.status == StatusCode::OK {
            started = true;
            break;
        }
        r.assert_problem_detail(429, "rateLimited", "max_in_flight_per_account");
    }
    assert!(started, "the second validation never started");
}

/// An instance whose heartbeat stops has its work taken up at once by the others: an order it
/// was issuing reads `invalid` and a validation it ran is started again, long before the work
/// would be old enough to count as abandoned. While its heartbeat goes on, its work is left
/// alone, however long it has been seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_of_an_instance_whose_heartbeat_stopped_is_taken_up_at_once() {
    let (a, b) = pair_with(|c| c.storage.takeover_after = std::time::Duration::from_secs(1));
    let acct = a.new_account().await;
    let now = ca_server::types::now();
    let other = "another-instance";
    // The other instance's heartbeat: the Unix milliseconds of its clock.
    let heartbeat = || {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .expect("clock");
        a.app
            .db
            .store()
            .put(
                ca_server::storage::Table::Meta,
                ca_server::ra::instances::key(other).as_bytes(),
                &n.to_le_bytes(),
            )
            .expect("heartbeat");
    };

    let order = ready_order(&a, &acct, &["line-5.plant.example"]).await;
    let url = order["url"].as_str().expect("url");
    issuing_elsewhere(&a, url, now, other);
    let (_, pending) = dns_order(&a, &acct, "line-6.plant.example").await;
    let authz_url = pending["authorizations"][0].as_str().expect("authz");
    validating_elsewhere(&a, authz_url, now, other);

    // Beating for twice `takeover_after`: its work stays its own.
    for _ in 0..10 {
        heartbeat();
        b.app.instances.beat(&b.app.db).expect("beat");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let seen: Value = b.post_as(&acct, url, None).await.json();
    assert_eq!(seen["status"], "processing", "{seen}");
    b.post_as(&acct, authz_url, None).await;
    assert_eq!(validated_by(&a, authz_url).as_deref(), Some(other));

    // Silent for longer than `takeover_after`: taken up, seconds after the work began.
    for _ in 0..8 {
        b.app.instances.beat(&b.app.db).expect("beat");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The age limit of a validation, in these tests, is 15 s.
    assert!(
        ca_server::types::now() - now < 10,
        "the test ran too slowly to tell the heartbeat from the age limit"
    );
    let seen: Value = b.post_as(&acct, url, None).await.json();
    assert_eq!(seen["status"], "invalid", "{seen}");
    assert_eq!(
        seen["error"]["detail"], "issuance was interrupted; create a new order",
        "{seen}"
    );
    // Stored, so that the issuance, were it only slow, could not make the order valid later.
    let id = url.rsplit('/').next().expect("id");
    let stored: ca_server::ra::order::Order = a
        .app
        .db
        .get(ca_server::storage::Table::Orders, id)
        .expect("get")
        .expect("order");
    assert!(
        matches!(stored.stage, ca_server::ra::order::Stage::Invalid { .. }),
        "{:?}",
        stored.stage
    );
    b.post_as(&acct, authz_url, None).await;
    assert_ne!(
        validated_by(&a, authz_url).as_deref(),
        Some(other),
        "the validation was started again"
    );
}

/// A console request to `s`'s API from the operator whose client certificate is `cert` (DER),
/// as the console's TLS listener hands it on after the handshake.
async fn as_operator(
    s: &TestServer,
    cert: &[u8],
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let builder = Request::builder().method(method).uri(path);
    let mut request = match body {
        Some(body) => builder
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string())),
        None => builder.body(axum::body::Body::empty()),
    }
    .expect("request");
    request
        .extensions_mut()
        .insert(ca_server::ca::operator::ClientCertificate(
            std::sync::Arc::new(rustls::pki_types::CertificateDer::from(cert.to_vec())),
        ));
    let console = ca_server::admin::api::router(ca_server::ra::Ra::clone(&s.app));
    Reply::read(console.oneshot(request).await.expect("call")).await
}

/// Who `s`'s console takes the holder of `cert` for: the operator's name, or the status.
async fn whoami(s: &TestServer, cert: &[u8]) -> Result<String, StatusCode> {
    let r = as_operator(s, cert, "GET", "/api/whoami", None).await;
    if r.status == StatusCode::OK {
        Ok(r.json()["name"].as_str().expect("name").to_owned())
    } else {
        Err(r.status)
    }
}

/// An operator added through the console of one instance gets into the console of the other,
/// and once revoked through the console of either, neither lets it in with its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_added_at_one_instance_gets_in_at_the_other_and_a_revocation_holds_at_both() {
    use ca_server::ra::operator::{self, Role};
    let (a, b) = pair();
    // The first admin, as `ca-server operator add --config` makes it at A's host.
    let (_, ada) = operator::create(
        &a.app.operators,
        a.dir.path(),
        "ada",
        Role::Admin,
        std::time::Duration::from_secs(3600),
        "test",
    )
    .expect("first admin");
    assert_eq!(whoami(&b, &ada.cert_der).await, Ok("ada".to_owned()));

    let added = as_operator(
        &a,
        &ada.cert_der,
        "POST",
        "/api/operators",
        Some(json!({"name": "olga", "role": "approver"})),
    )
    .await;
    added.assert_status(StatusCode::OK);
    let olga = leaf_der(added.json()["certificatePem"].as_str().expect("PEM"));
    assert_eq!(whoami(&b, &olga).await, Ok("olga".to_owned()));
    let listed = as_operator(&b, &olga, "GET", "/api/operators", None)
        .await
        .json();
    let names: Vec<&str> = listed["operators"]
        .as_array()
        .expect("operators")
        .iter()
        .map(|o| o["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["ada", "olga"]);

    // The name is taken at B as well.
    let again = as_operator(
        &b,
        &ada.cert_der,
        "POST",
        "/api/operators",
        Some(json!({"name": "olga", "role": "viewer"})),
    )
    .await;
    again.assert_status(StatusCode::CONFLICT);

    // Revoked at A: B refuses her next request.
    as_operator(
        &a,
        &ada.cert_der,
        "POST",
        "/api/operators/olga/revoke",
        None,
    )
    .await
    .assert_status(StatusCode::OK);
    assert_eq!(whoami(&b, &olga).await, Err(StatusCode::UNAUTHORIZED));
    assert_eq!(whoami(&a, &olga).await, Err(StatusCode::UNAUTHORIZED));

    // Revoked at B: A refuses the admin at once too.
    as_operator(&b, &ada.cert_der, "POST", "/api/operators/ada/revoke", None)
        .await
        .assert_status(StatusCode::OK);
    assert_eq!(
        whoami(&a, &ada.cert_der).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    assert!(!a.dir.path().join("operators").exists());
    assert!(!b.dir.path().join("operators").exists());
}

/// `ca-server operator add|list|revoke --config` reach the shared store: an operator added on
/// B's host gets into A's console, and revoked on B's host it is refused by A at once; the
/// commands record what they did in the shared audit log. Without `--config` they refuse, since
/// the data directory says the CA keeps its records in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_commands_reach_the_shared_store_with_the_configuration() {
    let (a, b) = pair();
    let dir = b.dir.path();
    let url = b.app.cfg.storage.url.clone().expect("url");
    let config = postgres_config_file(dir, dir, &url);
    let out = dir.join("out");
    let run = ca_server_command;
    let (config, out, data) = (
        config.to_str().expect("utf8"),
        out.to_str().expect("utf8"),
        dir.to_str().expect("utf8"),
    );

    let refused = "keeps its records (enrollment credentials, operator approvals, trust \
                   anchors, console operators, the audit log) in PostgreSQL";
    let (ok, _, stderr) = run(&[
        "operator",
        "add",
        "otto",
        "--role",
        "admin",
        "--out",
        out,
        "--data-dir",
        data,
    ]);
    assert!(!ok && stderr.contains(refused), "{stderr}");
    assert!(!dir.join("operators").exists(), "nothing written");
    let (ok, _, stderr) = run(&["operator", "list", "--data-dir", data]);
    assert!(!ok && stderr.contains("--config"), "{stderr}");

    let (ok, stdout, stderr) = run(&[
        "operator", "add", "otto", "--role", "admin", "--out", out, "--config", config,
    ]);
    assert!(ok, "{stdout}{stderr}");
    let otto = leaf_der(&std::fs::read_to_string(dir.join("out/otto.pem")).expect("PEM"));
    assert_eq!(whoami(&a, &otto).await, Ok("otto".to_owned()));
    let (ok, _, stderr) = run(&[
        "operator", "add", "otto", "--role", "viewer", "--out", out, "--config", config,
    ]);
    assert!(!ok && stderr.contains("exists"), "{stderr}");
    let (ok, stdout, stderr) = run(&["operator", "list", "--config", config]);
    assert!(
        ok && stdout.starts_with("otto  admin  active"),
        "{stdout}{stderr}"
    );

    let (ok, _, stderr) = run(&["operator", "revoke", "--data-dir", data, "otto"]);
    assert!(!ok && stderr.contains("--config"), "{stderr}");
    assert_eq!(
        whoami(&a, &otto).await,
        Ok("otto".to_owned()),
        "not revoked"
    );
    let (ok, stdout, stderr) = run(&["operator", "revoke", "--config", config, "otto"]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(whoami(&a, &otto).await, Err(StatusCode::UNAUTHORIZED));
    assert_eq!(whoami(&b, &otto).await, Err(StatusCode::UNAUTHORIZED));
    let (ok, stdout, stderr) = run(&["operator", "list", "--config", config]);
    assert!(
        ok && stdout.starts_with("otto  admin  REVOKED"),
        "{stdout}{stderr}"
    );

    let actions: Vec<(String, String)> = a
        .app
        .audit
        .read_all()
        .expect("read at a")
        .into_iter()
        .map(|e| (e.action, e.target))
        .collect();
    assert_eq!(
        actions,
        [
            ("operator.add".to_owned(), "otto".to_owned()),
            ("operator.revoke".to_owned(), "otto".to_owned())
        ]
    );
}

/// Operator files of a CA from before its move to PostgreSQL are in the store once it starts,
/// and a revocation made in the store later is not undone by them at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_files_are_copied_into_the_shared_store_and_set_aside() {
    use ca_server::ra::operator::{self, OperatorStore, Role};
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, old) = operator::create(
        &OperatorStore::new(dir.path()),
        dir.path(),
        "olaf",
        Role::Viewer,
        std::time::Duration::from_secs(3600),
        "test",
    )
    .expect("file operator");
    let s = alone_on_postgres(dir);
    assert_eq!(whoami(&s, &old.cert_der).await, Ok("olaf".to_owned()));
    let ops = s.dir.path().join("operators");
    assert!(ops.join("olaf.json.imported").exists() && !ops.join("olaf.json").exists());

    s.app.operators.revoke("olaf", "test").expect("revoke");
    // Another start on this data directory (the file put back by hand, say).
    std::fs::copy(ops.join("olaf.json.imported"), ops.join("olaf.json")).expect("copy back");
    let again = OperatorStore::in_store(s.dir.path(), s.app.db.clone()).expect("restart");
    assert!(again
        .authenticate(&hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &old.cert_der
        )))
        .expect("auth")
        .is_none());
    assert_eq!(
        whoami(&s, &old.cert_der).await,
        Err(StatusCode::UNAUTHORIZED)
    );
}
