//! Clock steps, played on the CA's lab clock (`lab_clock = true`, `ca-server lab clock-step`):
//! forward two hours, forward five days, then back to the system time (-7320m).
//!
//! - Nonces are counted, not timed (`wfe::nonce`): a client's nonce from before each step is
//!   still accepted after it, and enrollments go on across every step.
//! - A pending operator approval expires when the clock passes its `approval_ttl` (1 h).
//! - The CRL: a new one is signed once the clock passes the cached one's refresh time, and after
//!   the step back the CA does not go on serving a CRL dated in the future: it signs one with the
//!   current time and a higher CRL number.
//! - Certificates issued after a step carry the stepped time in notBefore.
//! - ARI: a certificate's suggested window is the same after every step (it comes from the
//!   certificate, not the clock), and once the clock passes its start the CA's time is inside
//!   or past it, so a client asking then is told to renew.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use iiot_acme_tests::cli::{operator, pending_request};
use iiot_acme_tests::device_client::{printed_pairing_code, Device, Pin};
use iiot_acme_tests::process::poll_until;
use iiot_acme_tests::{ca_server_bin, CaServer, CaServerOpts};
use instant_acme::Account;

use crate::acme::{first_cert_der, serve_http01, Tokens};
use crate::common::{issue_with, Attempt};

/// `ca-server lab clock-step STEP`; returns the CA's time after the step (Unix seconds).
fn step(server: &CaServer, by: &str) -> i64 {
    let out = operator(server, &["lab", "clock-step", by]);
    // "lab clock: 2026-12-09T17:03:00Z (offset 180000 s from the system clock)"
    let at = out
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no time in {out:?}"));
    rfc3339(at)
}

fn rfc3339(text: &str) -> i64 {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .unix_timestamp()
}

fn system_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// thisUpdate, nextUpdate and CRL number of the CA's current CRL.
fn crl(server: &CaServer) -> (i64, i64, u64) {
    let url = server.directory_url().replace("/directory", "/crl");
    let der = iiot_acme_tests::https::client_trusting(&server.root_pem_path())
        .expect("client")
        .get(&url)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.bytes())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let (_, crl) = x509_parser::parse_x509_crl(&der).expect("a CRL");
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n.clone()).ok())
        .expect("a CRL number");
    (
        crl.last_update().timestamp(),
        crl.next_update().expect("nextUpdate").timestamp(),
        number,
    )
}

/// The ARI suggested window of the certificate in `chain_pem` (RFC 9773 §4.2).
fn ari_window(server: &CaServer, chain_pem: &str) -> (i64, i64) {
    use base64::Engine as _;
    let der = first_cert_der(chain_pem).expect("der");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("an AKI key identifier");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let id = format!("{}.{}", b64.encode(aki), b64.encode(cert.raw_serial()));
    let client = iiot_acme_tests::https::client_trusting(&server.root_pem_path()).expect("client");
    let json = |url: &str| -> serde_json::Value {
        let text = client
            .get(url)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: {e}: {text}"))
    };
    let directory = json(&server.directory_url());
    let base = directory["renewalInfo"].as_str().expect("renewalInfo URL");
    let info = json(&format!("{base}/{id}"));
    let w = &info["suggestedWindow"];
    (
        rfc3339(w["start"].as_str().expect("start")),
        rfc3339(w["end"].as_str().expect("end")),
    )
}

/// notBefore of the leaf, plus the CA's backdating (`ca::CLOCK_SKEW`, a minute): the
/// CA's time at issuance.
fn issued_at(chain_pem: &str) -> i64 {
    let der = first_cert_der(chain_pem).expect("der");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    cert.validity().not_before.timestamp() + 60
}

/// One client (one account, so its nonces cross the steps) enrolling a name at a time.
struct Client {
    rt: tokio::runtime::Runtime,
    account: Account,
    tokens: Tokens,
}

impl Client {
    fn new(server: &CaServer) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let tokens: Tokens = Arc::default();
        let root = server.root_pem_path();
        let account = rt.block_on(async {
            serve_http01(server.http_port(), tokens.clone())
                .await
                .expect("http-01 responder");
            crate::acme::account(server.directory_url(), &root)
                .await
                .expect("account")
        });
        Self {
            rt,
            account,
            tokens,
        }
    }

    /// A certificate for `name`, ordered with this client's account.
    fn issue(&self, name: &str) -> Result<String> {
        self.rt.block_on(async {
            let at = Mutex::new(Attempt {
                name: name.to_owned(),
                ..Attempt::default()
            });
            issue_with(&self.account, &self.tokens, name, &at).await?;
            at.into_inner()
                .expect("lock")
                .chain_pem
                .context("no certificate")
        })
    }
}

#[test]
fn clock_steps_forward_and_back() {
    let server = CaServer::start(CaServerOpts {
        lab_clock: true,
        extra_toml: "[enrollment]\noperator_approval = true\n".to_owned(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let client = Client::new(&server);
    let first = client.issue("clock-0.plant.test").expect("certificate");
    let window = ari_window(&server, &first);
    let (t0, _, n0) = crl(&server);

    // A device waits for an operator, who does not come within approval_ttl (1 h).
    let device = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["clock-approval.plant.test"],
    );
    let mut waiting = device.spawn_oneshot(
        "clock-approval",
        "enroll",
        &["--challenge", "operator-approval-01"],
    );
    let code = printed_pairing_code(&waiting);
    pending_request(&server, &code, Duration::from_secs(60));

    // +2 h.
    let now = step(&server, "+2h");
    poll_until(
        "the approval request to expire",
        Duration::from_secs(30),
        Duration::from_millis(200),
        |why| {
            let list = operator(&server, &["approval", "list", "--json"]);
            *why = list.clone();
            Ok((!list.contains(&code)).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", server.logs()));
    let (status, _, stderr) = waiting.finish();
    assert_ne!(status, 0, "the device's request expired: {stderr}");
    let (t1, next1, n1) = crl(&server);
    assert!(
        t1 >= t0 + 7200 - 5 && t1 <= now + 5,
        "a new CRL: {t0} -> {t1}"
    );
    assert!(
        next1 > now && n1 > n0,
        "current and numbered on: {next1} {n1}"
    );
    let second = client
        .issue("clock-1.plant.test")
        .expect("enrolls after +2h");
    assert!(
        (issued_at(&second) - now).abs() <= 5,
        "issued on the CA's clock"
    );
    assert_eq!(ari_window(&server, &first), window);

    // +5 d: past the start of the first certificate's renewal window (2/3 of 7 days).
    let now = step(&server, "+5d");
    assert_eq!(ari_window(&server, &first), window);
    assert!(window.0 <= now, "the CA's time is past the window's start");
    let (t2, next2, n2) = crl(&server);
    assert!(t2 > t1 + 5 * 86_400 - 5 && next2 > now && n2 > n1);
    client
        .issue("clock-2.plant.test")
        .expect("enrolls after +5d");

    // Back to the system clock.
    let now = step(&server, "-7320m");
    assert!((now - system_now()).abs() <= 5, "back on the system clock");
    let (t3, next3, n3) = crl(&server);
    assert!(
        t3 <= now + 5,
        "the CRL after the step back is dated {t3}, after the CA's time {now}"
    );
    assert!(
        next3 > now && n3 > n2,
        "a new CRL number after the step back"
    );
    let third = client
        .issue("clock-3.plant.test")
        .expect("enrolls after the step back");
    assert!((issued_at(&third) - now).abs() <= 5);
    assert_eq!(ari_window(&server, &first), window);
    eprintln!(
        "faults/clock: +2h, +5d, -7320m: approval expired, CRLs {n0}->{n1}->{n2}->{n3} dated \
         {t0}->{t1}->{t2}->{t3}, enrollments across every step, ARI window unchanged"
    );
}

#[test]
fn the_lab_clock_cannot_be_stepped_unless_configured() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let out = Command::new(ca_server_bin().expect("binary"))
        .args(["lab", "clock-step", "+1h", "--data-dir"])
        .arg(server.data_dir())
        .output()
        .expect("ca-server runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lab clock is off"), "{stderr}");
}
