//! The `device-client` binary against the real `ca-server` (and once against Pebble), on
//! loopback, with real http-01 validation: the CA dials the client's built-in responder.
//!
//! Each test starts its own server on its own data directory and ports, so they run in
//! parallel. Set `IIOT_DEVICE_CLIENT_BIN` to test a prebuilt client instead of building one
//! (the simulated device is `iiot_acme_tests::device_client`).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use iiot_acme_tests::cli::{operator, pending_request};
use iiot_acme_tests::device_client::{
    printed_pairing_code, printed_pairing_codes, verify_issued, Device, Pin, CLIENT_TIMEOUT,
    RUN_TIMEOUT,
};
use iiot_acme_tests::idevid::Manufacturer;
use iiot_acme_tests::process::{poll_until, run_with_timeout, RunOutput};
use iiot_acme_tests::{
    openssl_verify, openssl_verify_host, temp_dir, CaServer, CaServerOpts, Pebble, PebbleOpts,
};

/// Turns on operator-approval-01 in the server's config file and restarts it (same data, ports
/// and root).
fn enable_operator_approval(server: &mut CaServer) {
    let mut config = fs::read_to_string(server.config_path()).expect("config");
    config.push_str("\n[enrollment]\noperator_approval = true\n");
    fs::write(server.config_path(), config).expect("write config");
    server
        .restart()
        .expect("ca-server restarts with approval on");
}

/// Everything the server logged so far (the harness's `logs` shows only the tail).
fn server_log(server: &CaServer) -> String {
    ["ca-server.stdout.log", "ca-server.stderr.log"]
        .iter()
        .map(|f| fs::read_to_string(server.data_dir().join(f)).unwrap_or_default())
        .collect()
}

fn code(out: &RunOutput) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn expect_code(out: &RunOutput, want: i32, what: &str, server_logs: &str) {
    assert_eq!(
        code(out),
        want,
        "{what}: expected exit {want}\n{}{server_logs}",
        out.tails()
    );
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// How many times the server's log says `what` (its whole stderr log, not a tail).
fn server_log_count(server: &CaServer, what: &str) -> usize {
    fs::read_to_string(server.data_dir().join("ca-server.stderr.log"))
        .unwrap_or_default()
        .matches(what)
        .count()
}

/// `openssl x509 -fingerprint -sha256` of the CA root: what an operator copies to a device.
fn root_fingerprint(server: &CaServer) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(server.root_pem_path())
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl x509 -fingerprint failed");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let fp = text
        .trim()
        .rsplit('=')
        .next()
        .expect("fingerprint")
        .to_owned();
    assert_eq!(fp.len(), 95, "{text}");
    fp
}

#[test]
fn enrolls_by_http01_pinning_the_root_file_and_does_not_re_enroll() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let mut device = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["device-1.plant.test"],
    );
    device.ip.push("127.0.0.1".to_owned());

    let show = device.run("show", &[]);
    expect_code(&show, 10, "show without a certificate", "");
    assert!(
        show.stdout.contains("status       missing"),
        "{}",
        show.stdout
    );

    let out = device.run("enroll", &[]);
    expect_code(&out, 0, "enroll", &server.logs());
    assert!(
        out.stdout.contains("installed certificate"),
        "{}",
        out.stdout
    );
    verify_issued(&server, &device);

    // Private material is created 0600, never chmod-ed later; certificates are public.
    assert_eq!(mode(&device.key()), 0o600, "certificate key");
    assert_eq!(mode(&device.state_dir().join("account.key.pem")), 0o600);
    assert_eq!(mode(&device.state_dir().join("state.json")), 0o600);
    assert_eq!(mode(&device.state_dir()), 0o700);
    assert_eq!(mode(&device.cert()), 0o644);
    assert!(fs::read_to_string(device.key())
        .expect("key")
        .starts_with("-----BEGIN PRIVATE KEY-----"));

    // The post-install command ran once, and saw the installed certificate's serial.
    let serial = device.shown_serial();
    assert_eq!(device.post_install_runs(), std::slice::from_ref(&serial));

    // A second enroll with a still-valid certificate changes nothing and asks the CA nothing.
    let orders = server_log_count(&server, "order created");
    let accounts = server_log_count(&server, "account created");
    let cert_before = fs::read(device.cert()).expect("cert");
    let out = device.run("enroll", &[]);
    expect_code(&out, 0, "second enroll", &server.logs());
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);
    assert_eq!(fs::read(device.cert()).expect("cert"), cert_before);
    assert_eq!(server_log_count(&server, "order created"), orders);
    assert_eq!(server_log_count(&server, "account created"), accounts);
    assert_eq!(device.post_install_runs().len(), 1);

    let show = device.run("show", &[]);
    expect_code(&show, 0, "show", "");
    assert!(
        show.stdout.contains("status       valid"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout
            .contains("identifiers  dns:device-1.plant.test, ip:127.0.0.1"),
        "{}",
        show.stdout
    );

    // --force gets a new certificate with a new key, on the same account.
    let key_before = fs::read(device.key()).expect("key");
    let out = device.run("enroll", &["--force"]);
    expect_code(&out, 0, "enroll --force", &server.logs());
    assert_ne!(fs::read(device.key()).expect("key"), key_before, "new key");
    assert_ne!(device.shown_serial(), serial);
    assert_eq!(server_log_count(&server, "account created"), accounts);
    assert_eq!(device.post_install_runs().len(), 2);
    verify_issued(&server, &device);
}

#[test]
fn enrolls_by_http01_pinning_the_root_fingerprint() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let device = Device::for_server(
        &server,
        Pin::Fingerprint(root_fingerprint(&server)),
        &["device-2.plant.test", "opcua.device-2.plant.test"],
    );
    let out = device.run("enroll", &[]);
    expect_code(&out, 0, "enroll", &server.logs());
    verify_issued(&server, &device);
}

#[test]
fn a_wrong_fingerprint_is_refused_before_any_acme_request() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let good = root_fingerprint(&server);
    // Change the last hex digit: a pin that differs in a single bit must fail.
    let mut wrong = good.clone();
    let last = wrong.pop().expect("digit");
    wrong.push(if last == '0' { '1' } else { '0' });
    let device = Device::for_server(&server, Pin::Fingerprint(wrong.clone()), &["device-3"]);
    let out = device.run("enroll", &[]);
    expect_code(&out, 3, "enroll with a wrong fingerprint", &server.logs());
    assert!(
        out.stderr.contains(&format!("not the pinned {wrong}")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&good),
        "names the presented root: {}",
        out.stderr
    );
    // Refused inside the TLS handshake: no account key was even made, and the CA saw nothing.
    assert!(!device.state_dir().join("account.key.pem").exists());
    assert!(!device.state_dir().join("state.json").exists());
    assert_eq!(server_log_count(&server, "account created"), 0);
    assert_eq!(server_log_count(&server, "order created"), 0);
    assert!(!device.cert().exists());
}

#[test]
fn enrolls_with_external_account_binding() {
    let server = CaServer::start(CaServerOpts {
        eab_required: true,
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let mut device = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["device-4.plant.test"],
    );

    let out = device.run("enroll", &[]);
    expect_code(&out, 2, "enroll without EAB", &server.logs());
    assert!(
        out.stderr.contains("requires external account binding"),
        "{}",
        out.stderr
    );

    // A MAC key the CA did not issue: refused by the CA as unauthorized.
    let creds = server.eab_create(true).expect("eab create --single-use");
    let out = device.run(
        "enroll",
        &[
            &format!("--eab-kid={}", creds.kid),
            "--eab-hmac",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ],
    );
    expect_code(&out, 5, "enroll with a wrong HMAC key", &server.logs());
    assert!(out.stderr.contains("unauthorized"), "{}", out.stderr);

    // The HMAC key from a file, the key id from the environment.
    let hmac_file = device.path("eab.hmac");
    fs::write(&hmac_file, format!("{}\n", creds.hmac_b64url)).expect("write hmac");
    device.extra = vec!["--eab-hmac-file".into(), hmac_file.display().to_string()];
    let mut cmd = device.command("enroll", &[]);
    cmd.env("DEVICE_CLIENT_EAB_KID", &creds.kid);
    let out =
        run_with_timeout("enroll-eab", &mut cmd, device.dir.path(), CLIENT_TIMEOUT).expect("runs");
    expect_code(&out, 0, "enroll with EAB", &server.logs());
    verify_issued(&server, &device);
    assert_eq!(server_log_count(&server, "account created"), 1);

    // Renewal reuses the bound account: the single-use credential is not needed again.
    device.extra.clear();
    let out = device.run("enroll", &["--force"]);
    expect_code(&out, 0, "renewal on the bound account", &server.logs());
    assert_eq!(server_log_count(&server, "account created"), 1);
}

#[test]
fn run_keeps_a_valid_certificate_and_renews_one_past_its_renewal_point() {
    let server = CaServer::start(CaServerOpts {
        cert_validity: "1h".to_owned(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let device = Device::for_server(
        &server,
        Pin::Fingerprint(root_fingerprint(&server)),
        &["device-5.plant.test"],
    );
    let out = device.run("enroll", &[]);
    expect_code(&out, 0, "enroll", &server.logs());
    let first = device.shown_serial();
    let first_key = fs::read(device.key()).expect("key");

    // Like a reboot with a good certificate: `run` only schedules the renewal (at 2/3 of the
    // hour), it does not enroll again.
    let orders = server_log_count(&server, "order created");
    let mut run = device.spawn_run("run-default", &[]);
    let stderr = run.stderr_path().to_owned();
    run.wait_ready(RUN_TIMEOUT, |why| {
        let log = fs::read_to_string(&stderr).unwrap_or_default();
        *why = format!("no 'next renewal at' yet: {log}");
        Ok(log.contains("next renewal at").then_some(()))
    })
    .expect("run announces the next renewal");
    std::thread::sleep(Duration::from_secs(2));
    run.check_running().expect("run keeps running");
    assert_eq!(server_log_count(&server, "order created"), orders);
    assert_eq!(device.shown_serial(), first);
    run.kill().expect("stop run");

    // With the renewal point at 1% of the lifetime, the same certificate is past it (the CA
    // backdates notBefore by a minute), so `run` renews at once, with a new key, and runs the
    // post-install command. retry_min keeps it from renewing the next, equally due,
    // certificate again while the test looks.
    let mut run = device.spawn_run("run-renew", &["--renew-at", "0.01", "--retry-min", "1h"]);
    let renewed = poll_until(
        "renewal by run",
        RUN_TIMEOUT,
        Duration::from_millis(200),
        |why| {
            run.check_running()?;
            let runs = device.post_install_runs();
            *why = format!("post-install runs so far: {runs:?}");
            Ok((runs.len() == 2).then(|| runs[1].clone()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", run.logs(), server.logs()));
    assert_ne!(renewed, first);
    assert_eq!(device.shown_serial(), renewed);
    assert_ne!(fs::read(device.key()).expect("key"), first_key);
    verify_issued(&server, &device);
    let log = fs::read_to_string(run.stderr_path()).expect("log");
    assert!(log.contains("already due for renewal"), "{log}");
    run.kill().expect("stop run");
}

#[test]
fn run_waits_out_ca_downtime() {
    let mut server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let device = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["device-6.plant.test"],
    );
    server.kill_9().expect("CA goes down");

    let mut run = device.spawn_run("run-downtime", &["--retry-min", "1s", "--retry-max", "2s"]);
    let stderr = run.stderr_path().to_owned();
    run.wait_ready(RUN_TIMEOUT, |why| {
        let log = fs::read_to_string(&stderr).unwrap_or_default();
        *why = format!("no retry yet: {log}");
        Ok((log.matches("trying again").count() >= 2).then_some(()))
    })
    .expect("run retries while the CA is down");
    assert!(!device.cert().exists());

    server.restart().expect("CA comes back");
    poll_until(
        "enrollment after the CA returns",
        RUN_TIMEOUT,
        Duration::from_millis(200),
        |why| {
            run.check_running()?;
            *why = "no certificate yet".into();
            Ok((device.post_install_runs().len() == 1).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", run.logs(), server.logs()));
    verify_issued(&server, &device);
    let log = fs::read_to_string(run.stderr_path()).expect("log");
    assert!(log.contains("cannot reach the CA"), "{log}");
    run.kill().expect("stop run");
}

#[test]
fn enrolls_by_http01_with_pebble() {
    let pebble = Pebble::start(PebbleOpts::default()).expect("Pebble starts");
    let device = Device::new(
        pebble.directory_url(),
        Pin::RootFile(pebble.tls_ca_pem().to_owned()),
        pebble.http_port(),
        &["device-7.pebble.test"],
    );
    // Pebble publishes terms of service: without agreement the client stops with exit 2.
    let out = device.run("enroll", &[]);
    expect_code(&out, 2, "enroll without --agree-terms", &pebble.logs());
    assert!(out.stderr.contains("terms of service"), "{}", out.stderr);
    // Pebble has no certificate profiles: --profile fails before any account or order.
    let out = device.run("enroll", &["--agree-terms", "--profile", "opcua"]);
    expect_code(&out, 2, "enroll --profile against Pebble", &pebble.logs());
    assert!(
        out.stderr.contains("the CA offers no certificate profiles"),
        "{}",
        out.stderr
    );
    assert!(!device.state_dir().join("state.json").exists());

    let out = device.run("enroll", &["--agree-terms"]);
    expect_code(&out, 0, "enroll against Pebble", &pebble.logs());
    let root = pebble.write_root_pem().expect("Pebble's issuing root");
    openssl_verify(&root, &device.fullchain()).expect("chain verifies against Pebble's root");
    openssl_verify_host(&root, &device.fullchain(), "device-7.pebble.test")
        .expect("leaf names the device");
    assert_eq!(device.post_install_runs().len(), 1);
}

#[test]
fn enrolls_by_operator_approval_and_stops_on_rejection() {
    let mut server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    enable_operator_approval(&mut server);

    // Approved: the operator finds the request by the code the device shows.
    let device = Device::for_server(
        &server,
        Pin::Fingerprint(root_fingerprint(&server)),
        &["device-8.plant.test"],
    );
    let mut waiting = device.spawn_oneshot(
        "approve",
        "enroll",
        &["--challenge", "operator-approval-01"],
    );
    let code = printed_pairing_code(&waiting);
    let request = pending_request(&server, &code, RUN_TIMEOUT);
    assert!(
        request["identifier"]
            .to_string()
            .contains("device-8.plant.test"),
        "{request}"
    );
    let id = request["id"].as_str().expect("request id");
    operator(&server, &["approval", "approve", id]);
    let (status, stdout, stderr) = waiting.finish();
    assert_eq!(status, 0, "{stdout}\n{stderr}\n{}", server.logs());
    assert!(
        stderr.contains("operator approval of dns:device-8.plant.test"),
        "{stderr}"
    );
    verify_issued(&server, &device);
    assert_eq!(device.post_install_runs().len(), 1);

    // Rejected: the device stops with exit 6 and the operator's reason.
    let device = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["device-9.plant.test"],
    );
    let mut waiting =
        device.spawn_oneshot("reject", "enroll", &["--challenge", "operator-approval-01"]);
    let code = printed_pairing_code(&waiting);
    let request = pending_request(&server, &code, RUN_TIMEOUT);
    let id = request["id"].as_str().expect("request id");
    operator(
        &server,
        &[
            "approval",
            "reject",
            id,
            "--reason",
            "not on the asset list",
        ],
    );
    let (status, _, stderr) = waiting.finish();
    assert_eq!(status, 6, "{stderr}\n{}", server.logs());
    assert!(stderr.contains("not on the asset list"), "{stderr}");
    assert!(!device.cert().exists());
}

/// SPEC §5.9: the code mixes in each request's token, so one device (one account) asking for
/// two identifiers shows two codes, and each is the code the operator sees for that request.
#[test]
fn each_request_of_one_device_shows_its_own_pairing_code() {
    let mut server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    enable_operator_approval(&mut server);
    let device = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["device-10.plant.test", "device-11.plant.test"],
    );
    let mut waiting = device.spawn_oneshot(
        "two-codes",
        "enroll",
        &["--challenge", "operator-approval-01"],
    );
    let codes = printed_pairing_codes(&waiting, 2);
    assert_eq!(codes.len(), 2, "{codes:?}");
    assert_ne!(
        codes[0].1, codes[1].1,
        "one account, two requests, two codes"
    );
    let mut accounts = Vec::new();
    for (identifier, code) in &codes {
        let request = pending_request(&server, code, RUN_TIMEOUT);
        let name = identifier.strip_prefix("dns:").expect("dns identifier");
        assert_eq!(request["identifier"]["value"], name, "{request}");
        accounts.push(request["account_id"].clone());
        operator(
            &server,
            &["approval", "approve", request["id"].as_str().expect("id")],
        );
    }
    assert_eq!(
        accounts[0], accounts[1],
        "both requests come from one account"
    );
    let (status, _, stderr) = waiting.finish();
    assert_eq!(status, 0, "{stderr}\n{}", server.logs());
    verify_issued(&server, &device);
}

/// Two devices (two accounts) ask for the same identifier: `approval list` marks each request
/// with the other, in text and JSON, and the server logs a warning when the second arrives.
#[test]
fn look_alike_requests_for_one_identifier_are_flagged() {
    let mut server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    enable_operator_approval(&mut server);
    let mut requests = Vec::new();
    let mut running = Vec::new();
    for name in ["first", "second"] {
        let device = Device::for_server(
            &server,
            Pin::RootFile(server.root_pem_path()),
            &["device-12.plant.test"],
        );
        let waiting =
            device.spawn_oneshot(name, "enroll", &["--challenge", "operator-approval-01"]);
        let code = printed_pairing_code(&waiting);
        requests.push(pending_request(&server, &code, RUN_TIMEOUT));
        running.push((device, waiting));
    }
    let (a, b) = (&requests[0], &requests[1]);
    assert_ne!(a["account_id"], b["account_id"]);

    let list: Vec<serde_json::Value> =
        serde_json::from_str(&operator(&server, &["approval", "list", "--json"])).expect("JSON");
    for (this, other) in [(a, b), (b, a)] {
        let listed = list.iter().find(|p| p["id"] == this["id"]).expect("listed");
        assert_eq!(
            listed["also_requested"],
            serde_json::json!([{
                "id": other["id"],
                "source": "127.0.0.1",
                "account_id": other["account_id"],
            }]),
            "{listed}"
        );
    }
    let text = operator(&server, &["approval", "list"]);
    for other in [a, b] {
        let flag = format!(
            "ALSO REQUESTED by request {} from 127.0.0.1, account {}",
            other["id"].as_str().expect("id"),
            other["account_id"].as_str().expect("account")
        );
        assert!(text.contains(&flag), "{flag}\n{text}");
    }
    let log = server_log(&server);
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("another pending request names")
            && l.contains(b["id"].as_str().expect("id"))
            && l.contains(a["id"].as_str().expect("id"))),
        "{log}"
    );
    for r in &requests {
        operator(
            &server,
            &["approval", "reject", r["id"].as_str().expect("id")],
        );
    }
    for (_, mut waiting) in running {
        assert_eq!(waiting.finish().0, 6);
    }
}

/// SPEC §5.8: a device over the cap of waiting requests from its address is told so by name
/// (the test lowers the cap for loopback to 1 rather than making 51 requests).
#[test]
fn a_device_over_the_address_cap_is_refused_with_the_limit_named() {
    let mut server = CaServer::start(CaServerOpts {
        extra_toml: "[[rate_limits.overrides]]\nlimit = \"pending_approvals_per_address\"\n\
                     key = \"127.0.0.0/8\"\ncount = 1\n"
            .to_owned(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    enable_operator_approval(&mut server);
    let first = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["device-13.plant.test"],
    );
    let mut waiting =
        first.spawn_oneshot("first", "enroll", &["--challenge", "operator-approval-01"]);
    let shown = printed_pairing_code(&waiting);
    let request = pending_request(&server, &shown, RUN_TIMEOUT);

    let second = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["device-14.plant.test"],
    );
    let out = second.run("enroll", &["--challenge", "operator-approval-01"]);
    assert_ne!(code(&out), 0, "{}", out.tails());
    assert!(
        out.stderr.contains("rateLimited") && out.stderr.contains("pending_approvals_per_address"),
        "{}",
        out.stderr
    );
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&operator(&server, &["approval", "list", "--json"])).expect("JSON");
    assert_eq!(
        list.len(),
        1,
        "nothing recorded for the refused device: {list:?}"
    );

    operator(
        &server,
        &["approval", "approve", request["id"].as_str().expect("id")],
    );
    assert_eq!(waiting.finish().0, 0);
}

#[test]
fn a_pre_authorizing_credential_needs_no_challenge() {
    let server = CaServer::start(CaServerOpts {
        eab_required: true,
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let created: serde_json::Value = serde_json::from_str(&operator(
        &server,
        &[
            "eab",
            "create",
            "--json",
            "--allow",
            "dns:line-9.plant.test",
        ],
    ))
    .expect("eab create --json");
    let kid = created["kid"].as_str().expect("kid");
    let hmac = created["hmac"].as_str().expect("hmac");

    // The responder address cannot be bound here (TEST-NET-1, not on this host): the client
    // would fail with exit 7 if it tried to answer a challenge.
    let mut device = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["plc-1.line-9.plant.test"],
    );
    device.listen = "192.0.2.1:80".to_owned();
    // `--flag=value`: a base64url key or id may start with `-`, which clap would take for a flag.
    let eab = [format!("--eab-kid={kid}"), format!("--eab-hmac={hmac}")];
    let eab: Vec<&str> = eab.iter().map(String::as_str).collect();
    let out = device.run("enroll", &eab);
    expect_code(
        &out,
        0,
        "enroll with a pre-authorizing credential",
        &server.logs(),
    );
    assert!(!out.stderr.contains("answering http-01"), "{}", out.stderr);
    verify_issued(&server, &device);

    // A name outside the allow-list is refused by type.
    let mut other = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["plc-1.line-10.plant.test"],
    );
    other.listen = "192.0.2.1:80".to_owned();
    let out = other.run("enroll", &eab);
    expect_code(&out, 5, "identifier outside the allow-list", &server.logs());
    assert!(out.stderr.contains("rejectedIdentifier"), "{}", out.stderr);
}

/// A device that proves the permanent identifier `value` (`SERIAL/ASSIGNER`, or anything a
/// test wants refused) with device-attest-01 using the IDevID files.
fn attesting_device(server: &CaServer, value: &str, idevid: &(PathBuf, PathBuf)) -> Device {
    let mut device = Device::for_server(server, Pin::RootFile(server.root_pem_path()), &[]);
    device.extra = vec![
        "--challenge".into(),
        "device-attest-01".into(),
        "--idevid-chain".into(),
        idevid.0.display().to_string(),
        "--idevid-key".into(),
        idevid.1.display().to_string(),
        "--permanent-id".into(),
        value.into(),
    ];
    device
}

/// The DER of the first certificate in a PEM file.
fn first_cert_der(path: &Path) -> Vec<u8> {
    use base64::Engine as _;
    let pem = fs::read_to_string(path).expect("certificate");
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("base64")
}

/// SPEC §8.2: GeneralName otherName PermanentIdentifier { identifierValue UTF8String, assigner
/// OID (given as its DER content) if any } for a short serial.
fn permanent_identifier_general_name(serial: &str, assigner: Option<&[u8]>) -> Vec<u8> {
    let mut value = [&[0x0c, serial.len() as u8], serial.as_bytes()].concat();
    if let Some(oid) = assigner {
        value.extend([0x06, oid.len() as u8]);
        value.extend_from_slice(oid);
    }
    let seq = [&[0x30, value.len() as u8], &value[..]].concat();
    let explicit = [&[0xa0, seq.len() as u8], &seq[..]].concat();
    let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x03];
    let other = [&oid[..], &explicit[..]].concat();
    [&[0xa0, other.len() as u8], &other[..]].concat()
}

fn openssl_text(path: &Path) -> String {
    let out = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
            "-in",
        ])
        .arg(path)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl x509 failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test manufacturers' assigner: the RFC 5612 documentation enterprise number.
const PEN: &str = "1.3.6.1.4.1.32473";
/// Its DER content, for the expected PermanentIdentifier.
const PEN_DER: [u8; 8] = [0x2b, 0x06, 0x01, 0x04, 0x01, 0x81, 0xfd, 0x59];

#[test]
fn enrolls_by_device_attestation_alone_and_mixed_with_an_ip() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let maker = Manufacturer::new("Example Devices Root");
    maker
        .trust(&server, "example-devices", PEN)
        .expect("trust anchor added");

    // permanent-identifier alone, IDevID key P-256.
    let serial = "SN-4711";
    let value = format!("{serial}/{PEN}");
    let scratch = temp_dir("iiot-idevid-").expect("idevid dir");
    let idevid = maker.idevid(scratch.path(), serial, &rcgen::PKCS_ECDSA_P256_SHA256);
    let device = attesting_device(&server, &value, &idevid);
    let out = device.run("enroll", &[]);
    expect_code(&out, 0, "enroll by device-attest-01", &server.logs());
    verify_issued(&server, &device);
    let der = first_cert_der(&device.cert());
    let general_name = permanent_identifier_general_name(serial, Some(&PEN_DER));
    assert!(
        der.windows(general_name.len()).any(|w| w == general_name),
        "the certificate carries the PermanentIdentifier otherName with the assigner"
    );
    let text = openssl_text(&device.cert());
    assert!(text.contains(&format!("CN = {value}\n")), "{text}");
    // The certificate key is new, not the IDevID key.
    assert_ne!(
        fs::read(device.key()).expect("key"),
        fs::read(&idevid.1).expect("idevid key")
    );
    let show = device.run("show", &[]);
    expect_code(&show, 0, "show", "");
    assert!(
        show.stdout
            .contains(&format!("identifiers  permanent-identifier:{value}")),
        "{}",
        show.stdout
    );
    // A valid certificate for the permanent identifier is kept.
    let out = device.run("enroll", &[]);
    expect_code(&out, 0, "second enroll", &server.logs());
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);

    // Mixed with an ip identifier (answered by http-01), IDevID key P-384.
    let serial = "SN-4712";
    let value = format!("{serial}/{PEN}");
    let idevid = maker.idevid(scratch.path(), serial, &rcgen::PKCS_ECDSA_P384_SHA384);
    let mut device = attesting_device(&server, &value, &idevid);
    device.ip.push("127.0.0.1".to_owned());
    let out = device.run("enroll", &[]);
    expect_code(&out, 0, "enroll mixed", &server.logs());
    verify_issued(&server, &device);
    let der = first_cert_der(&device.cert());
    let general_name = permanent_identifier_general_name(serial, Some(&PEN_DER));
    assert!(der.windows(general_name.len()).any(|w| w == general_name));
    let text = openssl_text(&device.cert());
    assert!(text.contains(&format!("CN = {value}\n")), "{text}");
    assert!(text.contains("IP Address:127.0.0.1"), "{text}");
    let show = device.run("show", &[]);
    expect_code(&show, 0, "show mixed", "");
    assert!(
        show.stdout.contains(&format!(
            "identifiers  ip:127.0.0.1, permanent-identifier:{value}"
        )),
        "{}",
        show.stdout
    );
}

/// SPEC §5.10.3 check 10, §5.10.4, §8.2: vendor A and vendor B both ship a device with serial
/// "0042". B's device cannot enroll as A's, nor as the bare serial; each enrolls as its own
/// manufacturer's `0042/ASSIGNER`, and the certificates' CNs differ. An anchor file without an
/// assigner admits nobody.
#[test]
fn devices_of_two_manufacturers_with_the_same_serial_are_two_devices() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let vendor_a = Manufacturer::new("Vendor A Devices Root");
    vendor_a
        .trust(&server, "vendor-a", PEN)
        .expect("trust anchor added");
    let vendor_b = Manufacturer::new("Vendor B Devices Root");
    vendor_b
        .trust(&server, "vendor-b", "2.999.2")
        .expect("trust anchor added");
    let scratch = temp_dir("iiot-idevid-").expect("idevid dir");
    let idevid_a = vendor_a.idevid(
        &scratch.path().join("a"),
        "0042",
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let idevid_b = vendor_b.idevid(
        &scratch.path().join("b"),
        "0042",
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );

    // B's device claiming A's device's identifier: refused, validation failed (6), and the
    // CA's detail names what B's device may order.
    let device = attesting_device(&server, "0042/1.3.6.1.4.1.32473", &idevid_b);
    let out = device.run("enroll", &[]);
    expect_code(&out, 6, "vendor B's device as vendor A's", &server.logs());
    assert!(
        out.stderr.contains("badAttestationStatement")
            && out.stderr.contains(
                "trust anchor \"vendor-b\", whose assigner is 2.999.2: order \"0042/2.999.2\""
            ),
        "{}",
        out.tails()
    );
    assert!(!device.cert().exists());
    // The bare serial is refused as well.
    let device = attesting_device(&server, "0042", &idevid_b);
    let out = device.run("enroll", &[]);
    expect_code(&out, 6, "bare serial", &server.logs());
    assert!(
        out.stderr.contains("has none") && out.stderr.contains("so order \"0042/2.999.2\""),
        "{}",
        out.tails()
    );

    // Each as its own manufacturer's device: two certificates, two names.
    let mut cns = Vec::new();
    for (value, idevid) in [
        ("0042/1.3.6.1.4.1.32473", &idevid_a),
        ("0042/2.999.2", &idevid_b),
    ] {
        let device = attesting_device(&server, value, idevid);
        let out = device.run("enroll", &[]);
        expect_code(&out, 0, value, &server.logs());
        verify_issued(&server, &device);
        let text = openssl_text(&device.cert());
        let cn = text
            .lines()
            .find_map(|l| l.strip_prefix("subject=CN = "))
            .unwrap_or_else(|| panic!("no CN: {text}"))
            .to_owned();
        assert_eq!(cn, value, "{text}");
        cns.push(cn);
    }
    assert_ne!(cns[0], cns[1]);

    // A manufacturer root in an anchor file without an Assigner: line is not used.
    let vendor_c = Manufacturer::new("Vendor C Devices Root");
    let legacy = server.data_dir().join("trust-anchors/vendor-c.pem");
    fs::write(&legacy, vendor_c.root_pem()).expect("write anchor file");
    let list = operator(&server, &["trust-anchor", "list"]);
    assert!(
        list.contains("vendor-c  UNUSABLE: no Assigner: line")
            && list.contains("--name vendor-c --assigner OID"),
        "{list}"
    );
    let idevid_c = vendor_c.idevid(
        &scratch.path().join("c"),
        "0042",
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    for value in ["0042", "0042/1.3.6.1.4.1.32473"] {
        let device = attesting_device(&server, value, &idevid_c);
        let out = device.run("enroll", &[]);
        expect_code(&out, 6, "anchor file without an assigner", &server.logs());
        assert!(
            out.stderr
                .contains("does not lead to a configured manufacturer trust anchor"),
            "{}",
            out.tails()
        );
    }
}

#[test]
fn device_attestation_failures_are_reported_with_the_cas_detail() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let trusted = Manufacturer::new("Trusted Devices Root");
    trusted
        .trust(&server, "trusted", PEN)
        .expect("trust anchor added");
    let untrusted = Manufacturer::new("Unknown Devices Root");
    let scratch = temp_dir("iiot-idevid-").expect("idevid dir");

    // An IDevID from a manufacturer the CA does not trust: validation failed (6).
    let idevid = untrusted.idevid(
        &scratch.path().join("untrusted"),
        "SN-1",
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let device = attesting_device(&server, "SN-1/1.3.6.1.4.1.32473", &idevid);
    let out = device.run("enroll", &[]);
    expect_code(&out, 6, "untrusted manufacturer", &server.logs());
    assert!(
        out.stderr.contains("badAttestationStatement"),
        "{}",
        out.tails()
    );
    assert!(out.stderr.contains("trust anchor"), "{}", out.tails());
    assert!(!device.cert().exists());

    // An IDevID for another serial than the ordered identifier.
    let idevid = trusted.idevid(
        &scratch.path().join("other-serial"),
        "SN-2",
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let device = attesting_device(&server, "SN-3/1.3.6.1.4.1.32473", &idevid);
    let out = device.run("enroll", &[]);
    expect_code(&out, 6, "serial mismatch", &server.logs());
    assert!(
        out.stderr.contains("does not match the ordered identifier"),
        "{}",
        out.tails()
    );

    // Local mistakes are caught before the CA is asked: a key that is not the IDevID's (2),
    // a missing chain file (7).
    let other = trusted.idevid(
        &scratch.path().join("another"),
        "SN-3",
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let device = attesting_device(
        &server,
        "SN-3/1.3.6.1.4.1.32473",
        &(idevid.0.clone(), other.1.clone()),
    );
    let out = device.run("enroll", &[]);
    expect_code(&out, 2, "key of another IDevID", "");
    assert!(out.stderr.contains("does not belong"), "{}", out.tails());
    let device = attesting_device(
        &server,
        "SN-3/1.3.6.1.4.1.32473",
        &(scratch.path().join("missing.pem"), other.1.clone()),
    );
    let out = device.run("enroll", &[]);
    expect_code(&out, 7, "missing IDevID chain", "");
    assert!(out.stderr.contains("missing.pem"), "{}", out.tails());
}

/// Issue #5: with a long certificate (a day: the 2/3 rule would wait 16 hours) only the CA's
/// renewal information can make `run` renew. After `ca-server renew-early` the window starts
/// now, and a restarted `run` (a reboot: the first thing it does is ask) renews at once, naming
/// the old certificate in `replaces`. That `replaces` was sent is proven by the CA: ordering
/// again with the old certificate installed gets `alreadyReplaced`, after which the client
/// orders without `replaces` and still gets a certificate.
#[test]
fn run_renews_when_the_renewal_information_window_opens() {
    let server = CaServer::start(CaServerOpts {
        cert_validity: "1d".to_owned(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let device = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["device-ari.plant.test"],
    );
    let out = device.run("enroll", &[]);
    expect_code(&out, 0, "enroll", &server.logs());
    let first = device.shown_serial();
    let out = device.run("show", &[]);
    assert!(
        out.stdout.contains("ari window") && out.stdout.contains("renewal information"),
        "show prints the CA's window\n{}",
        out.tails()
    );
    let old_cert = fs::read(device.cert()).expect("cert");
    let old_key = fs::read(device.key()).expect("key");

    // The window is 2/3 to 5/6 of the day: `run` schedules in it and does not order.
    let orders = server_log_count(&server, "order created");
    let mut run = device.spawn_run("run-ari-wait", &[]);
    let stderr = run.stderr_path().to_owned();
    run.wait_ready(RUN_TIMEOUT, |why| {
        let log = fs::read_to_string(&stderr).unwrap_or_default();
        *why = format!("no renewal scheduled by renewal information yet: {log}");
        Ok(log
            .contains("by the CA's renewal information")
            .then_some(()))
    })
    .expect("run schedules by the renewal information");
    std::thread::sleep(Duration::from_secs(2));
    run.check_running().expect("run keeps running");
    assert_eq!(server_log_count(&server, "order created"), orders);
    assert_eq!(device.shown_serial(), first);
    run.kill().expect("stop run");

    let said = operator(&server, &["renew-early", "--serial", &first]);
    assert!(said.starts_with("1 certificate"), "{said}");

    let mut run = device.spawn_run("run-ari-renew", &["--retry-min", "1h"]);
    let renewed = poll_until(
        "renewal by run after renew-early",
        RUN_TIMEOUT,
        Duration::from_millis(200),
        |why| {
            run.check_running()?;
            let runs = device.post_install_runs();
            *why = format!("post-install runs so far: {runs:?}");
            Ok((runs.len() == 2).then(|| runs[1].clone()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", run.logs(), server.logs()));
    assert_ne!(renewed, first);
    assert_eq!(device.shown_serial(), renewed);
    verify_issued(&server, &device);
    // The new certificate is not due: run goes back to waiting for its window.
    let stderr = run.stderr_path().to_owned();
    run.wait_ready(RUN_TIMEOUT, |why| {
        let log = fs::read_to_string(&stderr).unwrap_or_default();
        *why = log.clone();
        Ok((log.matches("by the CA's renewal information").count() >= 2).then_some(()))
    })
    .expect("run schedules the new certificate");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(device.post_install_runs().len(), 2, "{}", run.logs());
    run.kill().expect("stop run");

    // Put the old certificate back and force an order: it names the old certificate again,
    // which the CA refuses as already replaced; the client orders once more without it.
    fs::write(device.cert(), &old_cert).expect("restore cert");
    fs::write(device.key(), &old_key).expect("restore key");
    assert_eq!(device.shown_serial(), first);
    let out = device.run("enroll", &["--force"]);
    expect_code(
        &out,
        0,
        "enroll --force over a replaced certificate",
        &server.logs(),
    );
    assert!(
        out.stderr.contains("already replaced"),
        "the CA refused the second replaces\n{}",
        out.tails()
    );
    let third = device.shown_serial();
    assert!(third != first && third != renewed, "{third}");
    verify_issued(&server, &device);
}

/// Issue #5: a device that was offline longer than its certificate's lifetime enrolls again
/// without manual steps. The CA issues at least an hour, so expiry is made real on the device:
/// after a normal enrollment, the certificate file is replaced by one for the same key and
/// names whose validity ended in 2020 (self-signed: the client judges the installed certificate
/// by its dates, key and names). `show` says expired; `run`, and `enroll`, get a new one from
/// the CA with the stored account.
#[test]
fn an_expired_certificate_is_enrolled_again() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let name = "device-offline.plant.test";
    let device = Device::for_server(&server, Pin::RootFile(server.root_pem_path()), &[name]);
    let out = device.run("enroll", &[]);
    expect_code(&out, 0, "enroll", &server.logs());
    let first = device.shown_serial();
    let accounts = server_log_count(&server, "account created");

    let expire = || {
        let key_pem = fs::read_to_string(device.key()).expect("key");
        let key = rcgen::KeyPair::from_pem(&key_pem).expect("key parses");
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
        let cert = params.self_signed(&key).expect("self-signed");
        fs::write(device.cert(), cert.pem()).expect("write expired cert");
    };
    expire();
    let out = device.run("show", &[]);
    assert_eq!(code(&out), 10, "show: not usable\n{}", out.tails());
    assert!(out.stdout.contains("expired"), "{}", out.tails());

    let mut run = device.spawn_run("run-expired", &[]);
    let renewed = poll_until(
        "re-enrollment by run",
        RUN_TIMEOUT,
        Duration::from_millis(200),
        |why| {
            run.check_running()?;
            let runs = device.post_install_runs();
            *why = format!("post-install runs so far: {runs:?}");
            Ok((runs.len() == 2).then(|| runs[1].clone()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", run.logs(), server.logs()));
    run.kill().expect("stop run");
    assert_ne!(renewed, first);
    assert_eq!(device.shown_serial(), renewed);
    verify_issued(&server, &device);
    let out = device.run("show", &[]);
    assert_eq!(code(&out), 0, "show: valid again\n{}", out.tails());

    // The one-shot path too.
    expire();
    let out = device.run("enroll", &[]);
    expect_code(
        &out,
        0,
        "enroll over an expired certificate",
        &server.logs(),
    );
    assert!(
        out.stdout.contains("installed certificate"),
        "{}",
        out.tails()
    );
    verify_issued(&server, &device);
    assert_eq!(
        server_log_count(&server, "account created"),
        accounts,
        "the stored account is used again"
    );
}

/// The number after `prefix` in `text`, up to the first character that is no part of it.
fn number_after(text: &str, prefix: &str) -> Option<f64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches('.').parse().ok()
}

/// SPEC §7.6: a device that meets a rate limit waits at least the CA's Retry-After, then
/// enrolls.
#[test]
fn run_waits_out_a_rate_limit_and_enrolls() {
    let server = CaServer::start(CaServerOpts {
        extra_toml: "[rate_limits]\nnew_account_per_address = { count = 1, period = \"8s\" }\n"
            .into(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    // The first device from this address takes the one account the limit allows.
    let first = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["device-8.plant.test"],
    );
    let out = first.run("enroll", &[]);
    expect_code(&out, 0, "first enroll", &server.logs());

    let second = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["device-9.plant.test"],
    );
    let started = std::time::Instant::now();
    let mut run = second.spawn_run(
        "run-rate-limited",
        &["--retry-min", "1s", "--retry-max", "2s"],
    );
    poll_until(
        "enrollment after the rate limit",
        RUN_TIMEOUT,
        Duration::from_millis(200),
        |why| {
            run.check_running()?;
            *why = "no certificate yet".into();
            Ok((second.post_install_runs().len() == 1).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", run.logs(), server.logs()));
    verify_issued(&server, &second);
    let log = fs::read_to_string(run.stderr_path()).expect("log");
    assert!(log.contains("new_account_per_address"), "{log}");
    // It waited what the CA asked, not its own 1-2 s back-off.
    let asked = number_after(&log, "retry after ").unwrap_or_else(|| panic!("{log}"));
    let waited = number_after(&log, "trying again in ").unwrap_or_else(|| panic!("{log}"));
    assert!(
        asked >= 2.0 && waited >= asked,
        "asked {asked} s, waited {waited} s: {log}"
    );
    assert!(started.elapsed().as_secs_f64() >= asked, "{log}");
    run.kill().expect("stop run");
}
