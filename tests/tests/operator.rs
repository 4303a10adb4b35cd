//! Operator commands against a running CA (over its admin socket): revocation by device
//! identifier, the audit report, pulling renewal forward (RFC 9773), and a clear error when no
//! CA is running.

use std::process::Command;

use iiot_acme_tests::{
    ca_server_bin, openssl_verify, temp_dir, AcmeClient, CaServer, CaServerOpts, ClientRun,
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

fn serial_of(chain: &std::path::Path) -> String {
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

#[test]
fn operator_revokes_by_identifier_audits_and_pulls_renewal_forward() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
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

    // The CRL the CA publishes now lists it (GET /crl refreshes crl.pem).
    let (status, _) = iiot_acme_tests::https::get(
        &format!("https://127.0.0.1:{}/crl", server.listen_port()),
        &server.root_pem_path(),
    )
    .expect("GET /crl");
    assert_eq!(status, 200);
    let crl = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(server.data_dir().join("crl.pem"))
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
    // lego's keys are sound: no weak-key or key-reuse attempt is on record.
    assert_eq!(report["weakKeyAttempts"], serde_json::json!([]), "{report}");
    assert_eq!(
        report["keyReuseAttempts"],
        serde_json::json!([]),
        "{report}"
    );
    let (ok, human) = ca(&server, &["audit"]);
    assert!(ok && human.contains("1 revoked"), "{human}");
    assert!(
        human.contains("refused weak keys and CSR signatures: 0"),
        "{human}"
    );

    let (ok, out) = ca(&server, &["renew-early", "--serial", &serials[1].0]);
    assert!(ok && out.contains("1 certificate(s) are due"), "{out}");
    let (ok, out) = ca(&server, &["revoke", "--reason", "keyCompromise"]);
    assert!(
        !ok && out.contains("--serial, --identifier or --account"),
        "{out}"
    );
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
