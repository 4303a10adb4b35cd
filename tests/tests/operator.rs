//! Operator commands against a running CA (over its admin socket): revocation by device
//! identifier, serial and account, the audit report, pulling renewal forward (RFC 9773), and a
//! clear error when no CA is running.

use std::process::Command;

use std::path::{Path, PathBuf};

use iiot_acme_tests::{
    ca_server_bin, openssl_verify, openssl_verify_crl, temp_dir, AcmeClient, CaServer,
    CaServerOpts, ClientRun,
};

fn ca(server: &CaServer, args: &[&str]) -> (bool, String) {
    let out = Command::new(ca_server_bin().expect("binary"))
        .args(args)
        .arg("--data-dir")
        .arg(server.data_dir())
        .output()
        .expect("ca-server runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn serial_of(chain: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(chain)
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

/// A certificate for `name` from lego, whose state (and so its ACME account) lives in `work`:
/// runs with the same `work` share one account.
fn lego_issue(server: &CaServer, name: &str, work: &Path) -> iiot_acme_tests::IssuedCert {
    let run = ClientRun::new(
        server.directory_url(),
        server.root_pem_path(),
        &[name],
        server.http_port(),
        work,
    );
    let issued = AcmeClient::Lego
        .run(&run)
        .unwrap_or_else(|e| panic!("lego: {e:#}\n{}", server.logs()));
    openssl_verify(&server.root_pem_path(), &issued.chain_pem).expect("verifies");
    issued
}

/// The account id (last part of the account URL) lego registered under `work`.
fn lego_account_id(work: &Path) -> String {
    let mut dirs = vec![work.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == "account.json") {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
                let uri = v["registration"]["uri"].as_str().expect("account URI");
                return uri.rsplit('/').next().expect("id").to_owned();
            }
        }
    }
    panic!("no lego account under {}", work.display());
}

/// The CA's P-256 CRL file, `<data_dir>/crl.pem`. Read with no GET /crl first: the CA writes
/// it before `revoke` returns, which is what a broker's `crlfile` relies on.
fn crl_file(server: &CaServer) -> PathBuf {
    server.data_dir().join("crl.pem")
}

/// Whether `openssl verify -crl_check` reports the leaf of `chain` revoked.
fn revoked_on_crl(server: &CaServer, chain: &Path) -> bool {
    !openssl_verify_crl(&server.root_pem_path(), chain, &crl_file(server)).expect("verify")
}

#[test]
fn operator_revokes_by_identifier_audits_and_pulls_renewal_forward() {
    // Certificates live 2 h, so every valid one is in the audit's "expiring within 24 h".
    let server = CaServer::start(CaServerOpts {
        cert_validity: "2h".to_owned(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let mut serials = Vec::new();
    for name in ["dev-a.plant.test", "dev-b.plant.test"] {
        let work = temp_dir("iiot-op-").expect("work");
        let run = ClientRun::new(
            server.directory_url(),
            server.root_pem_path(),
            &[name],
            server.http_port(),
            work.path(),
        );
        let issued = AcmeClient::Lego
            .run(&run)
            .unwrap_or_else(|e| panic!("lego: {e:#}\n{}", server.logs()));
        openssl_verify(&server.root_pem_path(), &issued.chain_pem).expect("verifies");
        serials.push((serial_of(&issued.chain_pem), issued.chain_pem, work));
    }

    // Another device (another lego account) asks for dev-b's key: refused as key reuse, and
    // recorded with both identities.
    let thief = temp_dir("iiot-op-").expect("work");
    let csr = thief.path().join("dev-c.csr");
    let out = Command::new("openssl")
        .args(["req", "-new", "-subj", "/CN=dev-c.plant.test"])
        .args(["-addext", "subjectAltName=DNS:dev-c.plant.test", "-key"])
        .arg(serials[1].1.with_extension("key"))
        .arg("-out")
        .arg(&csr)
        .output()
        .expect("openssl req");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = ClientRun::new(
        server.directory_url(),
        server.root_pem_path(),
        &["dev-c.plant.test"],
        server.http_port(),
        thief.path(),
    )
    .with_csr(&csr);
    let refused = AcmeClient::Lego
        .run(&run)
        .expect_err("a key certified for another device is refused");
    assert!(format!("{refused:#}").contains("badCSR"), "{refused:#}");

    let (ok, out) = ca(
        &server,
        &[
            "revoke",
            "--identifier",
            "dns:dev-a.plant.test",
            "--reason",
            "keyCompromise",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("revoked 1 certificate"), "{out}");
    assert!(out.contains(&serials[0].0), "{out}");

    // The CRL file the CA wrote before answering lists it.
    let crl = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(crl_file(&server))
        .output()
        .expect("openssl crl");
    let crl_text = String::from_utf8_lossy(&crl.stdout).to_ascii_lowercase();
    assert!(crl_text.contains(&serials[0].0), "{crl_text}");
    assert!(crl_text.contains("key compromise"), "{crl_text}");

    let (ok, out) = ca(&server, &["audit", "--json"]);
    assert!(ok, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("audit JSON");
    assert_eq!(report["certificates"]["revoked"], 1, "{report}");
    assert_eq!(report["certificates"]["valid"], 1, "{report}");
    // lego names no profile, so its certificates are from the default one (SPEC §8.3).
    assert_eq!(
        report["profiles"],
        serde_json::json!({"default": 1}),
        "{report}"
    );
    // Key types of the certificates in use: dev-a's is revoked, so only dev-b's counts.
    assert_eq!(
        report["keyTypes"],
        serde_json::json!({"ECDSA P-256": 1}),
        "{report}"
    );
    // 2 h certificates: the valid one expires within 24 h; the revoked one is not listed.
    let expiring = report["expiringWithin24h"].as_array().expect("list");
    assert_eq!(expiring.len(), 1, "{report}");
    assert_eq!(expiring[0]["serial"], serials[1].0, "{report}");
    assert_eq!(
        expiring[0]["identifiers"],
        serde_json::json!([{"type": "dns", "value": "dev-b.plant.test"}]),
        "{report}"
    );
    // Nothing has expired, so no device has stopped renewing (the in-process audit test in
    // ca-server/tests/keycheck.rs ages a certificate to cover that list).
    assert_eq!(report["stoppedRenewing"], serde_json::json!([]), "{report}");
    // lego's keys are sound: no weak-key attempt is on record.
    assert_eq!(report["weakKeyAttempts"], serde_json::json!([]), "{report}");
    // The reuse attempt, camelCase like the weak-key attempts, with both identities.
    let reuse = report["keyReuseAttempts"].as_array().expect("list");
    assert_eq!(reuse.len(), 1, "{report}");
    let attempt = &reuse[0];
    assert_eq!(attempt["kind"], "other-account", "{report}");
    assert_eq!(
        attempt["spkiSha256"].as_str().map(str::len),
        Some(64),
        "{report}"
    );
    assert_eq!(
        attempt["attempted"]["identifiers"],
        serde_json::json!([{"type": "dns", "value": "dev-c.plant.test"}]),
        "{report}"
    );
    assert_eq!(attempt["holder"]["serial"], serials[1].0, "{report}");
    assert_eq!(
        attempt["holder"]["identifiers"],
        serde_json::json!([{"type": "dns", "value": "dev-b.plant.test"}]),
        "{report}"
    );
    let thief_account = lego_account_id(thief.path());
    let holder_account = lego_account_id(serials[1].2.path());
    assert_eq!(attempt["attempted"]["accountId"], thief_account, "{report}");
    assert_eq!(attempt["holder"]["accountId"], holder_account, "{report}");
    assert!(
        !report.to_string().contains("_sha256") && !report.to_string().contains("account_id"),
        "JSON names are camelCase: {report}"
    );

    let (ok, human) = ca(&server, &["audit"]);
    assert!(ok && human.contains("1 revoked"), "{human}");
    assert!(
        human.contains("refused weak keys and CSR signatures: 0"),
        "{human}"
    );
    // The text line of the refused reuse names both sides.
    let line = human
        .lines()
        .find(|l| l.contains("other-account"))
        .unwrap_or_else(|| panic!("no reuse line: {human}"));
    for part in [
        format!("account {thief_account}"),
        "dns:dev-c.plant.test".to_owned(),
        format!("held by account {holder_account}"),
        "dns:dev-b.plant.test".to_owned(),
        format!("certificate {}", serials[1].0),
    ] {
        assert!(line.contains(&part), "{part:?} missing from {line:?}");
    }
    assert!(human.contains("expiring within 24 h: 1"), "{human}");

    let (ok, out) = ca(&server, &["renew-early", "--serial", &serials[1].0]);
    assert!(ok && out.contains("1 certificate(s) are due"), "{out}");
    let (ok, out) = ca(&server, &["revoke", "--reason", "keyCompromise"]);
    assert!(
        !ok && out.contains("--serial, --identifier or --account"),
        "{out}"
    );
}

#[test]
fn operator_revokes_by_serial_and_by_account() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    // One device on its own account, two on a second account (one lego state directory).
    let solo = temp_dir("iiot-op-").expect("work");
    let fleet = temp_dir("iiot-op-").expect("work");
    let s1 = lego_issue(&server, "dev-s.plant.test", solo.path());
    let t1 = lego_issue(&server, "dev-t.plant.test", fleet.path());
    let u1 = lego_issue(&server, "dev-u.plant.test", fleet.path());
    let fleet_account = lego_account_id(fleet.path());
    assert_ne!(lego_account_id(solo.path()), fleet_account);
    for chain in [&s1.chain_pem, &t1.chain_pem, &u1.chain_pem] {
        assert!(!revoked_on_crl(&server, chain));
    }

    // --serial revokes that certificate only.
    let serial = serial_of(&s1.chain_pem);
    let (ok, out) = ca(
        &server,
        &["revoke", "--serial", &serial, "--reason", "superseded"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("revoked 1 certificate") && out.contains(&serial),
        "{out}"
    );
    assert!(revoked_on_crl(&server, &s1.chain_pem));
    assert!(!revoked_on_crl(&server, &t1.chain_pem));
    assert!(!revoked_on_crl(&server, &u1.chain_pem));
    // Revoking it again finds nothing left to revoke.
    let (ok, out) = ca(&server, &["revoke", "--serial", &serial]);
    assert!(ok && out.contains("revoked 0 certificate"), "{out}");

    // --account revokes every certificate of the account, and nothing else.
    let (ok, out) = ca(
        &server,
        &[
            "revoke",
            "--account",
            &fleet_account,
            "--reason",
            "cessationOfOperation",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("revoked 2 certificate"), "{out}");
    for chain in [&t1.chain_pem, &u1.chain_pem] {
        assert!(out.contains(&serial_of(chain)), "{out}");
        assert!(revoked_on_crl(&server, chain));
    }
    let (ok, out) = ca(&server, &["audit", "--json"]);
    assert!(ok, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("audit JSON");
    assert_eq!(report["certificates"]["revoked"], 3, "{report}");
    assert_eq!(report["certificates"]["valid"], 0, "{report}");
    let reasons: Vec<(String, u64)> = report["revoked"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| {
            (
                r["serial"].as_str().expect("serial").to_owned(),
                r["reason"].as_u64().expect("reason"),
            )
        })
        .collect();
    assert!(reasons.contains(&(serial.clone(), 4)), "{report}");
    assert!(reasons.contains(&(serial_of(&u1.chain_pem), 5)), "{report}");

    // Revocation by account revokes the certificates it has, not the account: as the CA
    // defines it, the account stays valid and a new certificate for it is not revoked.
    let u2 = lego_issue(&server, "dev-u.plant.test", fleet.path());
    assert_eq!(lego_account_id(fleet.path()), fleet_account);
    assert!(!revoked_on_crl(&server, &u2.chain_pem));
}

#[test]
fn operator_commands_say_when_no_ca_is_running() {
    let dir = temp_dir("iiot-op-none-").expect("dir");
    let out = Command::new(ca_server_bin().expect("binary"))
        .args(["audit", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is ca-server running"), "{err}");
}
