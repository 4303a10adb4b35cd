//! OPC UA end to end through device-client only: device-client enrolls an asyncua server and
//! an asyncua client under the `opcua` profile with RSA-2048 keys made on the device and their
//! ApplicationUris (`--profile opcua --key-algorithm rsa2048 --application-uri URI`), each into
//! an OPC UA PKI directory (`--opcua-pki`). The asyncua server starts from its directory with
//! Basic256Sha256 SignAndEncrypt and trust-list validation, and the client, started from its
//! own, connects (`tests/opcua/pki_interop.py`).
//!
//! Then the operator revokes the client (`ca-server revoke`), the server's device-client
//! (`run --crl-refresh 1s`) installs the RSA intermediate's new CRL in the server's directory,
//! and the server refuses the client: BadCertificateRevoked.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use iiot_acme_tests::cli::operator;
use iiot_acme_tests::device_client::{Device, Pin, RUN_TIMEOUT};
use iiot_acme_tests::process::{poll_until, run_with_timeout};
use iiot_acme_tests::{free_port, CaServer, CaServerOpts};

const SERVER_URI: &str = "urn:plant.example:line1:server";
const CLIENT_URI: &str = "urn:plant.example:line1:hmi";
const CLIENT_NAME: &str = "hmi-1.plant.test";
const OPCUA_TOML: &str = "[profiles.opcua]\napplication_uri_prefixes = [\"urn:plant.example:\"]\n\
                          organization = \"Plant Example Ltd\"\n";

/// The flags that make an OPC UA application's certificate and PKI directory.
fn opcua_flags(uri: &str, pki: &Path) -> Vec<String> {
    [
        "--profile",
        "opcua",
        "--key-algorithm",
        "rsa2048",
        "--application-uri",
        uri,
        "--opcua-pki",
        pki.to_str().expect("utf-8 path"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Runs the asyncua server and client once: whether the client read a value, and the output.
fn connect(
    dir: &Path,
    server_pki: &Path,
    client_pki: &Path,
    label: &str,
) -> Result<(bool, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("opcua/interop.py");
    let mut cmd = Command::new(iiot_acme_tests::python());
    cmd.arg(script)
        .args(["--port", &free_port()?.to_string()])
        .arg("--server-pki")
        .arg(server_pki)
        .args(["--server-uri", SERVER_URI])
        .arg("--client-pki")
        .arg(client_pki)
        .args(["--client-uri", CLIENT_URI]);
    let out = run_with_timeout(
        &format!("asyncua-{label}"),
        &mut cmd,
        dir,
        Duration::from_secs(60),
    )?;
    ensure!(
        out.stdout.contains("OK ") || out.stdout.contains("FAILED "),
        "{label}: the asyncua script did not run (is asyncua installed? run scripts/install-test-deps.sh)\n{}",
        out.tails()
    );
    Ok((out.status.success(), out.tails()))
}

/// `openssl crl -text` of the one `.crl` file in `dir` (empty while there is none).
fn crl_text(dir: &Path) -> Result<String> {
    let crls: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "crl"))
        .collect();
    ensure!(
        crls.len() <= 1,
        "more than one CRL in {}: {crls:?}",
        dir.display()
    );
    let Some(crl) = crls.first() else {
        return Ok(String::new());
    };
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(crl)
        .output()
        .context("openssl crl")?;
    ensure!(out.status.success(), "openssl crl: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether every `.crl` file in `dir` has a `.crl.der` copy with the same bytes.
fn crl_copies_agree(dir: &Path) -> Result<bool> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "crl") {
            let copy = path.with_extension("crl.der");
            if !copy.is_file() || fs::read(&copy)? != fs::read(&path)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The serial of a PEM certificate file, uppercase hex as openssl prints it.
fn serial(cert: &Path) -> Result<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(cert)
        .output()
        .context("openssl x509")?;
    ensure!(out.status.success(), "openssl x509 -serial: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .trim()
        .strip_prefix("serial=")
        .context("serial line")?
        .to_owned())
}

#[test]
fn asyncua_from_device_client_pki_directories_and_revocation() -> Result<()> {
    let server = CaServer::start(CaServerOpts {
        extra_toml: OPCUA_TOML.to_owned(),
        ..CaServerOpts::default()
    })?;
    let root = Pin::RootFile(server.root_pem_path());
    let mut ua_server = Device::for_server(&server, root, &["localhost"]);
    ua_server.ip.push("127.0.0.1".to_owned());
    let server_pki = ua_server.path("pki");
    ua_server.extra = opcua_flags(SERVER_URI, &server_pki);
    let mut ua_client = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &[CLIENT_NAME],
    );
    let client_pki = ua_client.path("pki");
    ua_client.extra = opcua_flags(CLIENT_URI, &client_pki);
    for (device, what) in [(&ua_server, "server"), (&ua_client, "client")] {
        let out = device.run("enroll", &[]);
        ensure!(
            out.status.success(),
            "enroll the OPC UA {what}\n{}{}",
            out.tails(),
            server.logs()
        );
    }
    let dir = ua_server.dir.path();

    let (ok, log) = connect(dir, &server_pki, &client_pki, "connect")?;
    ensure!(ok, "SignAndEncrypt from the PKI directories failed\n{log}");

    // The server's device-client keeps its CRLs current; the operator revokes the client.
    let client_serial = serial(&ua_client.cert())?;
    let crl_dir = server_pki.join("issuer/crl");
    ensure!(
        !crl_text(&crl_dir)?.contains(&client_serial),
        "the client is on the CRL before it was revoked"
    );
    let mut run = ua_server.spawn_run("run-crl", &["--crl-refresh", "1s"]);
    let text = operator(
        &server,
        &["revoke", "--identifier", &format!("dns:{CLIENT_NAME}")],
    );
    ensure!(text.contains("revoked 1 certificate"), "{text}");
    poll_until(
        "the server's CRL lists the revoked client",
        RUN_TIMEOUT,
        Duration::from_millis(300),
        |why| {
            let text = crl_text(&crl_dir)?;
            *why = text.clone();
            // asyncua reads the `.crl.der` copy: it must hold the same CRL.
            Ok((text.contains(&client_serial) && crl_copies_agree(&crl_dir)?).then_some(()))
        },
    )
    .with_context(|| run.logs())?;
    run.check_running()?;
    run.kill()?;

    let (ok, log) = connect(dir, &server_pki, &client_pki, "revoked")?;
    ensure!(!ok, "the revoked client still connected\n{log}");
    ensure!(
        log.contains("SERVER REJECTED") && log.contains("BadCertificateRevoked"),
        "the server did not refuse the client for its revocation\n{log}"
    );
    Ok(())
}
