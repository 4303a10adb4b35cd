//! The operator console's web UI in a real browser, end to end: a real `ca-server` (with
//! operator approval on), operators made with the real command line, real devices
//! (`device-client`), and headless Chromium logging in with the operator's client certificate.
//!
//! How it works:
//!
//! - `ca-server operator add NAME --role ROLE --out DIR --p12-passphrase-file F` issues the
//!   operator's certificate (subject CN=NAME) from the operator CA and writes `NAME.p12`
//!   ([`Operator::add`]).
//! - `tests/console/journeys.py JOURNEY ...` runs one journey of one operator in one browser
//!   session ([`run_journey`]): selenium drives `/usr/bin/chromium` through
//!   `/usr/bin/chromedriver` (Debian packages; selenium is pinned in `.venv-tests`, all from
//!   `scripts/install-test-deps.sh`). Chromium on Linux takes client certificates and extra
//!   trust only from `$HOME/.pki/nssdb`, so each run makes a temporary HOME whose NSS database
//!   trusts the CA root (the console's HTTPS chains to it) and holds the operator's PKCS#12
//!   (`certutil`, `pk12util`), and a user-data-dir whose `Default/Preferences` auto-selects the
//!   certificate with subject CN=NAME for `https://127.0.0.1:*`. Headless Chromium never shows
//!   the certificate dialog: without that entry a page load would hang, which the driver's page
//!   load timeout (30 s) turns into a failure.
//! - The driver clicks through the pages as an operator would (nav links, forms, buttons),
//!   saves a full-page screenshot of every page it visits, and prints what the pages showed as
//!   JSON. The assertions are here, against what the device, the CA's CRL, its audit log and
//!   its command line really show, never against the driver's word alone.
//!
//! Screenshots: `target/console-screenshots/<test>/<journey>-<operator>/NN-page.png` (the
//! cargo target directory, not committed), next to the driver's stdout and stderr, replaced on
//! every run.
//!
//! Each test is one CA and two browser sessions (5-10 s each on 2 cores with the two tests in
//! parallel, of which 1-3 s is the browser's start); the file takes 20-25 s.
//! Without Chromium the tests fail, unless `IIOT_ACME_SKIP_BROWSER=1` (then they are skipped,
//! with a line on stderr). `IIOT_KEEP_TEST_DIRS=1` keeps the browser profiles and CA data.

use std::fs;
use std::path::Path;
use std::process::Command;

use iiot_acme_tests::cli::{operator, pending_request};
use iiot_acme_tests::console::{browser_available, run_journey, serial_key, JourneyRun, Operator};
use iiot_acme_tests::device_client::{
    printed_pairing_code, verify_issued, Device, Pin, RUN_TIMEOUT,
};
use iiot_acme_tests::{https, openssl_verify_crl, CaServer, CaServerOpts};
use serde_json::Value;

const APPROVAL_TOML: &str = "[enrollment]\noperator_approval = true\n";

/// A CA with operator approval on, or `None` (the test skipped) if there is no browser and
/// `IIOT_ACME_SKIP_BROWSER=1`.
fn start_ca(test: &str, eab_required: bool) -> Option<CaServer> {
    if !browser_available(test).expect("browser") {
        return None;
    }
    let server = CaServer::start(CaServerOpts {
        eab_required,
        extra_toml: APPROVAL_TOML.to_owned(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    Some(server)
}

/// The audit log's entries (`<data_dir>/audit.log`, one JSON object a line).
fn audit_entries(server: &CaServer) -> Vec<Value> {
    fs::read_to_string(server.data_dir().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// The waiting devices `approval list --json` shows.
fn pending_codes(server: &CaServer) -> Vec<String> {
    let list: Vec<Value> =
        serde_json::from_str(&operator(server, &["approval", "list", "--json"])).expect("JSON");
    list.iter()
        .filter_map(|p| p["pairing_code"].as_str().map(str::to_owned))
        .collect()
}

/// Every page the journey visited, but for error pages, shows the operator in `#whoami`, and
/// the dashboard links every section.
fn assert_frame(run: &JourneyRun, op: &Operator) {
    let ctx = run.context();
    for page in run.get("pages").as_array().into_iter().flatten() {
        if page["error"].is_null() {
            assert_eq!(
                page["whoami"].as_str(),
                Some(op.whoami().as_str()),
                "#whoami on {}: {ctx}",
                page["url"]
            );
        }
    }
    let nav = run.get("dashboard")["nav"].as_object().expect("nav");
    assert!(
        !nav.is_empty() && nav.values().all(|v| v == true),
        "the nav links every section: {ctx}"
    );
}

/// Journeys (d) and (a): a device waits with operator-approval-01 and shows its pairing code. A
/// viewer sees it on /approvals with no buttons, and a POST that approves anyway is refused
/// with 403, the device still waiting. An approver finds it by the same code and approves it;
/// the device gets its certificate.
#[test]
fn a_viewer_may_not_approve_and_an_approver_approves_the_device_by_its_pairing_code() {
    const TEST: &str = "approvals";
    let Some(server) = start_ca(TEST, false) else {
        return;
    };
    let device = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["plc-7.plant.test"],
    );
    let mut waiting = device.spawn_oneshot(
        "approval",
        "enroll",
        &["--challenge", "operator-approval-01"],
    );
    let code = printed_pairing_code(&waiting);
    // The CA's own view of the request, for the pages to match.
    let request = pending_request(&server, &code, RUN_TIMEOUT);
    let id = request["id"].as_str().expect("request id").to_owned();

    // (d) The viewer.
    let vera = Operator::add(&server, "vera", "viewer").expect("operator add vera");
    let v = run_journey(&server, &vera, TEST, "viewer-approvals", &["--code", &code])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ctx = v.context();
    assert_frame(&v, &vera);
    assert!(
        v.get("dashboard")["counts"]["pending"].as_u64() >= Some(1),
        "the dashboard counts the waiting device: {ctx}"
    );
    assert_eq!(v.str_at("/id"), id, "the page's request is the CA's: {ctx}");
    let shown = v.get("before")[0].clone();
    assert_eq!(
        v.get("before").as_array().map(Vec::len),
        Some(1),
        "one waiting device: {ctx}"
    );
    assert_eq!(shown["pairing_code"], code.as_str(), "{ctx}");
    assert!(
        shown["identifier"]
            .as_str()
            .is_some_and(|i| i.contains("plc-7.plant.test")),
        "{ctx}"
    );
    assert!(
        shown["source"]
            .as_str()
            .is_some_and(|s| s.contains("127.0.0.1")),
        "the source address is the device's: {ctx}"
    );
    assert_eq!(
        v.get("buttons_on_page"),
        &Value::from(0),
        "a viewer sees no approve/reject buttons: {ctx}"
    );
    assert_eq!(
        v.get("fetch")["status"],
        403,
        "a viewer's POST is refused: {ctx}"
    );
    let refusal = v.str_at("/form_post/error");
    assert!(
        refusal.contains("viewer"),
        "the error page says why (the role): {refusal:?}\n{ctx}"
    );
    assert_eq!(waiting.exited(), None, "the device still waits: {ctx}");
    assert!(!device.cert().exists());
    assert!(
        pending_codes(&server).contains(&code),
        "the CA still lists the request after the viewer's attempts: {ctx}"
    );
    assert!(
        v.get("after")
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["pairing_code"] == code.as_str())),
        "the page still lists it: {ctx}"
    );

    // (a) The approver.
    let arno = Operator::add(&server, "arno", "approver").expect("operator add arno");
    let a = run_journey(
        &server,
        &arno,
        TEST,
        "approve",
        &["--code", &code, "--wait-gone", "20"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let ctx = a.context();
    assert_frame(&a, &arno);
    assert_eq!(a.str_at("/id"), id, "{ctx}");
    assert!(
        a.get("before")[0]["approve_buttons"] == 1 && a.get("before")[0]["reject_buttons"] == 1,
        "an approver sees the buttons: {ctx}"
    );
    assert!(
        a.str_at("/flash").contains(&id),
        "a flash says what happened: {ctx}"
    );
    assert!(a.get("error").is_null(), "{ctx}");
    // The decision is a file the CA applies when the device next asks (or on its timer), so
    // the page the POST leads to may still list the request ("after_post"); once applied, it
    // is gone from the page.
    assert!(
        a.get("after")
            .as_array()
            .is_some_and(|l| l.iter().all(|x| x["pairing_code"] != code.as_str())),
        "the device no longer waits on the page: {ctx}"
    );
    let (status, stdout, stderr) = waiting.finish();
    assert_eq!(
        status,
        0,
        "the approved device enrolls\n{stdout}\n{stderr}\n{ctx}\n{}",
        server.logs()
    );
    verify_issued(&server, &device);
    let audit = audit_entries(&server);
    assert!(
        audit
            .iter()
            .any(|e| e["actor"] == "arno"
                && e["action"].as_str().is_some_and(|a| a.contains("approv"))),
        "the audit log names the approver: {audit:#?}"
    );
    assert!(
        audit.iter().all(|e| e["actor"] != "vera"),
        "the viewer changed nothing: {audit:#?}"
    );
}

/// Journeys (b) and (c): an admin creates a pre-authorizing credential in the UI; a device
/// enrolls with the key id and HMAC key read off the page. Then the admin finds the device,
/// revokes its certificate on the confirmation page, and the CA's CRL lists the serial.
#[test]
fn an_admin_creates_a_credential_a_device_enrolls_with_it_and_the_admin_revokes_it() {
    const TEST: &str = "credential-and-revocation";
    let Some(server) = start_ca(TEST, true) else {
        return;
    };
    let name = "plc-8.plant.test";
    let ada = Operator::add(&server, "ada", "admin").expect("operator add ada");

    // (b) The credential.
    let c = run_journey(
        &server,
        &ada,
        TEST,
        "create-credential",
        &[
            "--allow",
            &format!("dns:{name}"),
            "--max-uses",
            "1",
            "--expires",
            "1d",
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let ctx = c.context();
    assert_frame(&c, &ada);
    let (kid, hmac) = (c.str_at("/kid"), c.str_at("/hmac"));
    assert!(!kid.is_empty() && !hmac.is_empty(), "{ctx}");
    assert!(
        c.get("qr")["present"] == true && c.get("qr")["elements"].as_u64() > Some(0),
        "the secret comes with a QR code: {ctx}"
    );
    assert!(
        c.get("listed_kids")
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == kid)),
        "the new credential is listed: {ctx}"
    );

    // The responder address cannot be bound (TEST-NET-1): the device would fail with exit 7
    // if the CA asked it to answer a challenge, and it would wait if it needed approval.
    let mut device = Device::for_server(&server, Pin::RootFile(server.root_pem_path()), &[name]);
    device.listen = "192.0.2.1:80".to_owned();
    let eab = [format!("--eab-kid={kid}"), format!("--eab-hmac={hmac}")];
    let out = device.run("enroll", &[&eab[0], &eab[1]]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "enroll with the credential from the page\n{}{ctx}\n{}",
        out.tails(),
        server.logs()
    );
    verify_issued(&server, &device);
    let serial = device.shown_serial();

    // (c) Revocation.
    let r = run_journey(
        &server,
        &ada,
        TEST,
        "revoke",
        &["--query", name, "--reason", "keyCompromise"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let ctx = r.context();
    assert_frame(&r, &ada);
    let rows: Vec<String> = r
        .get("rows")
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(serial_key).collect())
        .unwrap_or_default();
    assert_eq!(
        rows,
        [serial_key(&serial)],
        "the search finds the device: {ctx}"
    );
    assert!(r.str_at("/identifiers").contains(name), "{ctx}");
    assert_eq!(r.str_at("/status_before"), "valid", "{ctx}");
    assert!(
        r.str_at("/confirm_url").ends_with("/revoke"),
        "revocation asks for confirmation first: {ctx}"
    );
    assert_eq!(r.str_at("/status_after"), "revoked", "{ctx}");
    assert!(
        r.str_at("/url_after")
            .contains(&format!("/devices/{}", r.str_at("/serial"))),
        "back on the device's page: {ctx}"
    );
    assert!(
        r.str_at("/flash")
            .split_whitespace()
            .any(|w| serial_key(w) == serial_key(&serial)),
        "a flash names the revoked certificate: {ctx}"
    );

    // The audit page shows the revocation by the admin, newest first; the configuration page
    // shows the running configuration.
    let first_row = r.str_at("/audit_rows/0");
    assert!(
        first_row.contains("certificate.revoke") && first_row.contains("ada"),
        "the audit page's newest row: {first_row}\n{ctx}"
    );
    assert!(
        r.str_at("/config_text").contains("[admin]"),
        "the configuration page: {ctx}"
    );

    // The CRL, as a relying party fetches it, lists the serial with the reason chosen.
    let crl_url = format!("https://127.0.0.1:{}/crl", server.listen_port());
    let resp = https::client_trusting(&server.root_pem_path())
        .expect("client")
        .get(&crl_url)
        .send()
        .expect("GET /crl");
    assert_eq!(resp.status().as_u16(), 200, "GET {crl_url}");
    let der = resp.bytes().expect("CRL body");
    let crl_der = device.path("crl.der");
    fs::write(&crl_der, &der).expect("write CRL");
    let text = openssl_crl(&crl_der, &["-noout", "-text"]);
    let listed: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number:"))
        .map(serial_key)
        .collect();
    assert!(
        listed.contains(&serial_key(&serial)),
        "the CRL lists {serial}:\n{text}\n{ctx}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    let crl_pem = device.path("crl.pem");
    openssl_crl(
        &crl_der,
        &[
            "-outform",
            "PEM",
            "-out",
            crl_pem.to_str().expect("UTF-8 path"),
        ],
    );
    assert!(
        !openssl_verify_crl(&server.root_pem_path(), &device.fullchain(), &crl_pem)
            .expect("openssl verify -crl_check"),
        "openssl reports the device's certificate revoked"
    );
    assert!(
        audit_entries(&server)
            .iter()
            .any(|e| e["actor"] == "ada"
                && e["action"].as_str().is_some_and(|a| a.contains("revoke"))),
        "the audit log names the admin"
    );
}

/// `openssl crl -inform DER -in DER ARGS…`, its stdout.
fn openssl_crl(der: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(der)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl crl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}
