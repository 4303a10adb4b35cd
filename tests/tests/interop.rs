//! Real third-party ACME clients (Debian's certbot and lego) against `ca-server`, with real
//! http-01 validation (`lab_resolve_all_to = 127.0.0.1`), each issued chain checked by
//! `openssl verify` against the CA's `root.pem`.
//!
//! Each test starts its own server on its own data directory and ports, so they run in
//! parallel. The same drivers are proven against Pebble in `pebble_harness.rs`.

use std::fs;
use std::time::Duration;

use iiot_acme_tests::{
    ca_server_bin, openssl_verify, openssl_verify_host, temp_dir, AcmeClient, CaServer,
    CaServerOpts, ClientRun,
};

/// How the account is bound (RFC 8555 §7.3.4).
#[derive(Clone, Copy, Debug)]
enum Eab {
    /// No binding; the server does not require one.
    None,
    /// Required by the server; a reusable key from `ca-server eab create`.
    Reusable,
    /// Required by the server; a key from `ca-server eab create --single-use`.
    SingleUse,
}

fn issue_and_verify(client: AcmeClient, eab: Eab, domains: &[&str]) {
    let mut server = CaServer::start(CaServerOpts {
        eab_required: !matches!(eab, Eab::None),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let creds = match eab {
        Eab::None => None,
        Eab::Reusable => Some(server.eab_create(false).expect("eab create")),
        Eab::SingleUse => Some(server.eab_create(true).expect("eab create --single-use")),
    };

    let work = temp_dir("iiot-client-").expect("work dir");
    let run = ClientRun::new(
        server.directory_url(),
        server.root_pem_path(),
        domains,
        server.http_port(),
        work.path(),
    )
    .with_eab(creds);
    let issued = client.run(&run).unwrap_or_else(|e| {
        panic!(
            "{client} ({eab:?}) against ca-server: {e:#}\n{}",
            server.logs()
        )
    });

    let root = server.root_pem_path();
    openssl_verify(&root, &issued.chain_pem).expect("chain verifies against the CA root");
    for domain in domains {
        openssl_verify_host(&root, &issued.chain_pem, domain).expect("leaf covers every domain");
    }
    server
        .check_running()
        .expect("server still running after issuance");
    eprintln!("{client} ({eab:?}): issued in {:?}", issued.elapsed);
}

#[test]
fn certbot_issues() {
    issue_and_verify(
        AcmeClient::Certbot,
        Eab::None,
        &["certbot.plant.test", "www.certbot.plant.test"],
    );
}

#[test]
fn certbot_issues_with_eab() {
    issue_and_verify(
        AcmeClient::Certbot,
        Eab::SingleUse,
        &["certbot-eab.plant.test"],
    );
}

#[test]
fn lego_issues() {
    issue_and_verify(
        AcmeClient::Lego,
        Eab::None,
        &["lego.plant.test", "www.lego.plant.test"],
    );
}

#[test]
fn lego_issues_with_eab() {
    issue_and_verify(AcmeClient::Lego, Eab::Reusable, &["lego-eab.plant.test"]);
}

/// tls-alpn-01 (RFC 8737) end to end: lego answers on the port the CA dials for it.
#[test]
fn lego_issues_by_tls_alpn_01() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let work = temp_dir("iiot-client-").expect("work dir");
    let run = ClientRun::new(
        server.directory_url(),
        server.root_pem_path(),
        &["alpn.plant.test"],
        server.http_port(),
        work.path(),
    )
    .with_tls_alpn(server.tls_alpn_port());
    let issued = AcmeClient::Lego
        .run(&run)
        .unwrap_or_else(|e| panic!("lego tls-alpn-01: {e:#}\n{}", server.logs()));
    openssl_verify(&server.root_pem_path(), &issued.chain_pem).expect("chain verifies");
    let logs = server.logs();
    assert!(
        logs.contains("tls-alpn-01"),
        "the CA validated by tls-alpn-01:\n{logs}"
    );
}

/// A SIGKILLed server comes back on the same data directory with the same root, and issues.
#[test]
fn issues_after_kill_9_and_restart() {
    let mut server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let root_before = fs::read(server.root_pem_path()).expect("root.pem");
    server.kill_9().expect("kill -9");
    server.restart().expect("restart on the same data dir");
    let root_after = fs::read(server.root_pem_path()).expect("root.pem");
    assert_eq!(root_before, root_after, "the root must survive a restart");

    let work = temp_dir("iiot-client-").expect("work dir");
    let run = ClientRun::new(
        server.directory_url(),
        server.root_pem_path(),
        &["restart.plant.test"],
        server.http_port(),
        work.path(),
    );
    let issued = AcmeClient::Lego
        .run(&run)
        .unwrap_or_else(|e| panic!("lego after restart: {e:#}\n{}", server.logs()));
    openssl_verify(&server.root_pem_path(), &issued.chain_pem).expect("chain verifies");
}

/// The server checkpoints its store by itself once it is idle (storage.checkpoint_writes and
/// checkpoint_idle, here tiny): sled writes a newer snapshot, the log says so, and the state
/// survives a kill -9 and a restart after it.
#[test]
fn server_checkpoints_its_store_when_idle() {
    let mut server = CaServer::start(CaServerOpts {
        extra_toml: "[storage]\ncheckpoint_writes = 5\ncheckpoint_idle = \"1s\"\n".into(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let db = server.data_dir().join("db");
    let newest_snapshot = || {
        fs::read_dir(&db)
            .expect("db dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("snap.") && !n.ends_with(".generating"))
            .max()
    };
    let before = newest_snapshot();
    let work = temp_dir("iiot-client-").expect("work dir");
    let run = ClientRun::new(
        server.directory_url(),
        server.root_pem_path(),
        &["checkpoint.plant.test"],
        server.http_port(),
        work.path(),
    );
    let issued = AcmeClient::Lego
        .run(&run)
        .unwrap_or_else(|e| panic!("lego: {e:#}\n{}", server.logs()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !server.logs().contains("storage checkpoint") {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint within 20 s:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = newest_snapshot();
    assert!(after > before, "no newer snapshot: {before:?} -> {after:?}");
    // The store still works after the reopen, and what it holds survives a kill -9.
    server.kill_9().expect("kill -9");
    server.restart().expect("restart");
    openssl_verify(&server.root_pem_path(), &issued.chain_pem).expect("chain verifies");
    // The certificate record is there: the operator can revoke it.
    let out = std::process::Command::new(ca_server_bin().expect("bin"))
        .args([
            "revoke",
            "--identifier",
            "dns:checkpoint.plant.test",
            "--data-dir",
        ])
        .arg(server.data_dir())
        .output()
        .expect("ca-server revoke");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}\n{}", server.logs());
    assert!(text.contains("revoked 1 certificate"), "{text}");
}

/// The harness finds (building if needed) the server binary it runs.
#[test]
fn ca_server_binary_is_found() {
    let bin = ca_server_bin().expect("ca-server binary");
    assert!(bin.is_file(), "{}", bin.display());
    assert_eq!(bin.file_name().and_then(|n| n.to_str()), Some("ca-server"));
}

/// SPEC §2.2-2.3: the handshake ends with the root, so a device holding only the root's
/// SHA-256 fingerprint can take the root from it, check the pin and validate the chain.
#[test]
fn tls_chain_ends_with_the_root_that_the_fingerprint_pins() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-showcerts", "-connect"])
        .arg(format!("127.0.0.1:{}", server.listen_port()))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let presented = iiot_acme_tests::openssl::split_pem_certs(&text);
    assert_eq!(presented.len(), 3, "leaf, intermediate, root:\n{text}");
    let root = fs::read_to_string(server.root_pem_path()).expect("root.pem");
    assert_eq!(
        presented[2].trim(),
        root.trim(),
        "the last certificate is the root"
    );
}

/// First start prints what an operator needs: where it listens, the directory URL, the root
/// certificate path and its SHA-256 fingerprint (the value devices pin), and the private keys
/// are readable by the owner only.
#[test]
fn first_start_prints_directory_root_and_fingerprint() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let stdout =
        fs::read_to_string(server.data_dir().join("ca-server.stdout.log")).expect("stdout log");
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(server.root_pem_path())
        .output()
        .expect("openssl");
    let fp = String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit('=')
        .next()
        .expect("fingerprint")
        .to_owned();
    assert!(
        stdout.contains(&format!(
            "listening on https://127.0.0.1:{}",
            server.listen_port()
        )),
        "{stdout}"
    );
    assert!(stdout.contains(&server.directory_url()), "{stdout}");
    assert!(
        stdout.contains(&server.root_pem_path().display().to_string()),
        "{stdout}"
    );
    assert!(stdout.contains(&fp), "fingerprint {fp} missing:\n{stdout}");
    use std::os::unix::fs::PermissionsExt;
    for key in ["root.key", "intermediate.key", "server.key"] {
        let mode = fs::metadata(server.data_dir().join("ca").join(key))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
}
