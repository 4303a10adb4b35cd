//! Self-check of the harness: the certbot and lego drivers against Pebble, with real http-01
//! validation, each issued chain checked by `openssl verify` against Pebble's issuing root.
//!
//! Ignored by default so the suite does not depend on Pebble; run with
//! `cargo test -p iiot-acme-tests --test pebble_harness -- --ignored`.
//! Every test starts its own Pebble on its own ports (including the http-01 port it dials),
//! so they run in parallel.

use std::time::Instant;

use iiot_acme_tests::{
    openssl_verify, openssl_verify_host, temp_dir, AcmeClient, ClientRun, Pebble, PebbleOpts,
};

fn issue_and_verify(client: AcmeClient, eab: bool, domains: &[&str]) {
    let started = Instant::now();
    let pebble = Pebble::start(PebbleOpts {
        eab,
        ..PebbleOpts::default()
    })
    .expect("Pebble starts");
    let pebble_ready = started.elapsed();
    let eab_creds = pebble.eab();
    assert_eq!(eab_creds.is_some(), eab);

    let work = temp_dir("iiot-client-").expect("work dir");
    let run = ClientRun::new(
        pebble.directory_url(),
        pebble.tls_ca_pem(),
        domains,
        pebble.http_port(),
        work.path(),
    )
    .with_eab(eab_creds);
    let issued = client
        .run(&run)
        .unwrap_or_else(|e| panic!("{client} against Pebble: {e:#}\n{}", pebble.logs()));

    let root = pebble.write_root_pem().expect("Pebble's issuing root");
    openssl_verify(&root, &issued.chain_pem).expect("chain verifies against Pebble's root");
    for domain in domains {
        openssl_verify_host(&root, &issued.chain_pem, domain).expect("leaf covers every domain");
    }
    // A root that did not issue the chain must be refused, or the check above proves nothing.
    let err = openssl_verify(pebble.tls_ca_pem(), &issued.chain_pem)
        .expect_err("chain must not verify against an unrelated root");
    assert!(
        format!("{err:#}").contains("openssl verify rejected"),
        "{err:#}"
    );

    eprintln!(
        "{client} eab={eab}: Pebble ready in {pebble_ready:?}, {client} took {:?}, total {:?}",
        issued.elapsed,
        started.elapsed()
    );
}

#[test]
#[ignore = "harness self-check against Pebble; run with --ignored"]
fn certbot_against_pebble() {
    issue_and_verify(
        AcmeClient::Certbot,
        false,
        &["certbot.example", "www.certbot.example"],
    );
}

#[test]
#[ignore = "harness self-check against Pebble; run with --ignored"]
fn certbot_with_eab_against_pebble() {
    issue_and_verify(AcmeClient::Certbot, true, &["certbot-eab.example"]);
}

#[test]
#[ignore = "harness self-check against Pebble; run with --ignored"]
fn lego_against_pebble() {
    issue_and_verify(
        AcmeClient::Lego,
        false,
        &["lego.example", "www.lego.example"],
    );
}

#[test]
#[ignore = "harness self-check against Pebble; run with --ignored"]
fn lego_with_eab_against_pebble() {
    issue_and_verify(AcmeClient::Lego, true, &["lego-eab.example"]);
}

/// With EAB required, a client that brings none must be refused, and the driver's error must
/// carry the client's own explanation.
#[test]
#[ignore = "harness self-check against Pebble; run with --ignored"]
fn missing_eab_is_refused_and_reported() {
    let pebble = Pebble::start(PebbleOpts {
        eab: true,
        ..PebbleOpts::default()
    })
    .expect("Pebble starts");
    let work = temp_dir("iiot-client-").expect("work dir");
    let run = ClientRun::new(
        pebble.directory_url(),
        pebble.tls_ca_pem(),
        &["no-eab.example"],
        pebble.http_port(),
        work.path(),
    );
    let err = AcmeClient::Lego
        .run(&run)
        .expect_err("Pebble requires EAB, so lego without it must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("lego failed"), "{msg}");
    assert!(
        msg.to_lowercase().contains("external"),
        "error should quote lego's reason: {msg}"
    );
}

/// Validation is real: a client listening on a port other than the one Pebble dials is refused,
/// and the driver's error carries the client's explanation.
#[test]
#[ignore = "harness self-check against Pebble; run with --ignored"]
fn wrong_http_port_fails_validation() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("Pebble starts");
    let work = temp_dir("iiot-client-").expect("work dir");
    let wrong_port = iiot_acme_tests::free_port().expect("free port");
    let run = ClientRun::new(
        pebble.directory_url(),
        pebble.tls_ca_pem(),
        &["wrong-port.example"],
        wrong_port,
        work.path(),
    );
    let started = Instant::now();
    let err = AcmeClient::Certbot
        .run(&run)
        .expect_err("nothing answers on the port Pebble dials, so validation must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("certbot failed"), "{msg}");
    assert!(msg.contains("wrong-port.example"), "{msg}");
    eprintln!(
        "certbot wrong port: failed in {:?}: {msg}",
        started.elapsed()
    );
}
