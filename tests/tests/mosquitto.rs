//! Certificate profiles against a real MQTT broker (SPEC §8.3): mosquitto (Debian package) with
//! mutual TLS, `require_certificate` and `use_identity_as_username`.
//!
//! instant-acme enrolls over http-01 against the `ca-server` binary: the broker's certificate
//! from the `tls-server` profile (127.0.0.1 and localhost) and a device certificate from the
//! `mqtt-client` profile. Then:
//!
//! - `mosquitto_pub` with the device certificate is accepted (the CN is the MQTT username);
//! - a certificate from another CA, with the same CN, is refused;
//! - the broker's own `tls-server` certificate (serverAuth only) is refused as a client;
//! - after the device certificate is revoked, mosquitto restarted with `crlfile` =
//!   `<data_dir>/crl.pem` (written by the CA when it records the revocation) refuses it.
//!
//! And with device-attest-01 (SPEC §5.10): two manufacturers' devices that share the serial
//! `0042` are two MQTT clients, because the username is the whole `serial/assigner`.

#[path = "common/acme.rs"]
mod acme;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use acme::Tokens;
use anyhow::{ensure, Context as _, Result};
use iiot_acme_tests::idevid::{attestation_object, Manufacturer};
use iiot_acme_tests::mosquitto::{self, Broker};
use iiot_acme_tests::process::run_with_timeout;
use iiot_acme_tests::{CaServer, CaServerOpts};
use instant_acme::{Account, Identifier, RevocationRequest};

const DEVICE: &str = "sensor-17.plant.example";

/// A key and certificate chain as PEM files.
struct Issued {
    key: PathBuf,
    chain: PathBuf,
    leaf_der: Vec<u8>,
}

/// Enrolls a fresh P-256 key for `ids` under `profile`; writes `<name>.key` and `<name>.pem`.
async fn enroll(
    account: &Account,
    tokens: &Tokens,
    ids: &[Identifier],
    profile: &str,
    dir: &Path,
    name: &str,
) -> Result<Issued> {
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(acme::names(ids))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    let chain = acme::issue(
        account,
        tokens,
        ids,
        profile,
        p.serialize_request(&key)?.der(),
    )
    .await?;
    let key_path = dir.join(format!("{name}.key"));
    let chain_path = dir.join(format!("{name}.pem"));
    fs::write(&key_path, key.serialize_pem())?;
    fs::write(&chain_path, &chain)?;
    Ok(Issued {
        key: key_path,
        chain: chain_path,
        leaf_der: acme::first_cert_der(&chain)?,
    })
}

/// A self-signed CA and a client certificate from it with the device's CN: what a device
/// enrolled elsewhere (or an attacker) would present.
fn foreign_client(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Other CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(vec![DEVICE.to_owned()])?;
    p.distinguished_name.push(rcgen::DnType::CommonName, DEVICE);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer)?;
    let chain = dir.join("foreign.pem");
    let key_path = dir.join("foreign.key");
    fs::write(&chain, cert.pem() + &ca_cert.pem())?;
    fs::write(&key_path, key.serialize_pem())?;
    Ok((chain, key_path))
}

/// Starts the broker with its `tls-server` certificate, trusting `cafile` for clients.
fn start_broker(dir: &Path, cafile: &Path, server: &Issued, crl: Option<&Path>) -> Result<Broker> {
    mosquitto::start_broker(dir, cafile, &server.chain, &server.key, crl)
}

/// `mosquitto_pub` with a client certificate; Ok(true) when the broker took the message.
fn publish(
    dir: &Path,
    broker: &Broker,
    root: &Path,
    cert: &Path,
    key: &Path,
    label: &str,
) -> Result<bool> {
    let out = run_with_timeout(
        &format!("mosquitto_pub-{label}"),
        Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port.to_string(),
                "-t",
                "plant/t",
                "-m",
                "1",
            ])
            .arg("--cafile")
            .arg(root)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key),
        dir,
        Duration::from_secs(20),
    )?;
    Ok(out.status.success())
}

/// How often the broker has logged a failed certificate verification so far.
fn verify_failures(broker: &Broker) -> usize {
    fs::read_to_string(broker.daemon.stderr_path())
        .unwrap_or_default()
        .matches("certificate verify failed")
        .count()
}

/// A client certificate the broker must refuse, and refuse for its certificate (not, say,
/// because the broker is down).
fn assert_refused(
    dir: &Path,
    broker: &Broker,
    root: &Path,
    cert: &Path,
    key: &Path,
    label: &str,
) -> Result<()> {
    let before = verify_failures(broker);
    ensure!(
        !publish(dir, broker, root, cert, key, label)?,
        "{label}: the broker accepted the certificate\n{}",
        broker.daemon.logs()
    );
    ensure!(
        verify_failures(broker) > before,
        "{label}: refused, but not by certificate verification\n{}",
        broker.daemon.logs()
    );
    Ok(())
}

#[test]
fn mosquitto_accepts_the_device_certificate_and_refuses_others() -> Result<()> {
    let server = CaServer::start(CaServerOpts::default())?;
    let dir = iiot_acme_tests::temp_dir("iiot-mosquitto-")?;
    let dir = dir.path();
    let root = server.root_pem_path();
    let rt = tokio::runtime::Runtime::new()?;
    let tokens = Tokens::default();
    let (broker_cert, device, account) = rt
        .block_on(async {
            acme::serve_http01(server.http_port(), tokens.clone()).await?;
            let account = acme::account(server.directory_url(), &root).await?;
            let broker_cert = enroll(
                &account,
                &tokens,
                &[
                    Identifier::Ip("127.0.0.1".parse()?),
                    Identifier::Dns("localhost".to_owned()),
                ],
                "tls-server",
                dir,
                "broker",
            )
            .await?;
            let device = enroll(
                &account,
                &tokens,
                &[Identifier::Dns(DEVICE.to_owned())],
                "mqtt-client",
                dir,
                "device",
            )
            .await?;
            anyhow::Ok((broker_cert, device, account))
        })
        .with_context(|| server.logs())?;

    // The broker trusts the CA: root plus issuing intermediate, so it can check the CRL the
    // intermediate signs.
    let cafile = dir.join("ca-bundle.pem");
    let intermediate = acme::split_chain(&fs::read_to_string(&broker_cert.chain)?)
        .into_iter()
        .nth(1)
        .context("chain without intermediate")?;
    fs::write(&cafile, fs::read_to_string(&root)? + &intermediate)?;

    let mut broker = start_broker(dir, &cafile, &broker_cert, None)?;
    ensure!(
        publish(dir, &broker, &root, &device.chain, &device.key, "device")?,
        "the device certificate was refused\n{}",
        broker.daemon.logs()
    );
    // use_identity_as_username: the broker names the client by its certificate's CN.
    let logs = broker.daemon.logs();
    ensure!(
        logs.contains(&format!("u'{DEVICE}'")),
        "the broker did not log the CN as the username:\n{logs}"
    );

    let (foreign_chain, foreign_key) = foreign_client(dir)?;
    assert_refused(
        dir,
        &broker,
        &root,
        &foreign_chain,
        &foreign_key,
        "another CA",
    )?;
    // The profile matters: the broker's own tls-server certificate (serverAuth only) is no
    // client certificate.
    assert_refused(
        dir,
        &broker,
        &root,
        &broker_cert.chain,
        &broker_cert.key,
        "tls-server as client",
    )?;

    // Revocation: revoke, restart the broker with the CRL file. The CA writes crl.pem before it
    // answers the revocation, so nothing has to fetch /crl first.
    rt.block_on(account.revoke(&RevocationRequest {
        certificate: &device.leaf_der.clone().into(),
        reason: None,
    }))
    .context("revoke")?;
    broker.daemon.kill()?;
    let broker = start_broker(
        dir,
        &cafile,
        &broker_cert,
        Some(&server.data_dir().join("crl.pem")),
    )?;
    assert_refused(dir, &broker, &root, &device.chain, &device.key, "revoked")?;
    // The CRL check itself works: a fresh device certificate still gets in.
    let fresh = rt.block_on(async {
        let account = acme::account(server.directory_url(), &root).await?;
        enroll(
            &account,
            &tokens,
            &[Identifier::Dns(DEVICE.to_owned())],
            "mqtt-client",
            dir,
            "device2",
        )
        .await
    })?;
    ensure!(
        publish(dir, &broker, &root, &fresh.chain, &fresh.key, "fresh")?,
        "a valid device certificate was refused with the CRL loaded\n{}",
        broker.daemon.logs()
    );
    Ok(())
}

/// SPEC §8.3, §10.8: vendor A's and vendor B's devices both carry serial `0042` in their
/// IDevIDs. Each enrolls by device-attest-01 under `mqtt-client` as its own manufacturer's
/// `0042/ASSIGNER`, and the broker sees two usernames, so neither device can act as the other.
#[test]
fn same_serial_from_two_manufacturers_gives_two_mqtt_usernames() -> Result<()> {
    let server = CaServer::start(CaServerOpts::default())?;
    let dir = iiot_acme_tests::temp_dir("iiot-mosquitto-")?;
    let dir = dir.path();
    let root = server.root_pem_path();
    let vendors = [("vendor-a", "1.3.6.1.4.1.32473"), ("vendor-b", "2.999.2")];
    let mut idevids = Vec::new();
    for (name, assigner) in vendors {
        let maker = Manufacturer::new(&format!("{name} IDevID Root"));
        maker.trust(&server, name, assigner)?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = maker.issue("0042", &key);
        idevids.push((format!("0042/{assigner}"), cert, key));
    }
    let rt = tokio::runtime::Runtime::new()?;
    let tokens = Tokens::default();
    let (broker_cert, devices) = rt
        .block_on(async {
            acme::serve_http01(server.http_port(), tokens.clone()).await?;
            let account = acme::account(server.directory_url(), &root).await?;
            let broker_cert = enroll(
                &account,
                &tokens,
                &[
                    Identifier::Ip("127.0.0.1".parse()?),
                    Identifier::Dns("localhost".to_owned()),
                ],
                "tls-server",
                dir,
                "broker",
            )
            .await?;
            let mut devices = Vec::new();
            for (i, (value, idevid, idevid_key)) in idevids.iter().enumerate() {
                let account = acme::account(server.directory_url(), &root).await?;
                let key = rcgen::KeyPair::generate()?;
                let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
                p.distinguished_name = rcgen::DistinguishedName::new();
                let chain = acme::issue_attested(
                    &account,
                    value,
                    "mqtt-client",
                    p.serialize_request(&key)?.der(),
                    |ka| attestation_object(idevid, idevid_key, ka),
                )
                .await
                .with_context(|| format!("enroll {value}"))?;
                let label = format!("device-{i}");
                let key_path = dir.join(format!("{label}.key"));
                let chain_path = dir.join(format!("{label}.pem"));
                fs::write(&key_path, key.serialize_pem())?;
                fs::write(&chain_path, &chain)?;
                devices.push((label, key_path, chain_path));
            }
            anyhow::Ok((broker_cert, devices))
        })
        .with_context(|| server.logs())?;

    let cafile = dir.join("ca-bundle.pem");
    let intermediate = acme::split_chain(&fs::read_to_string(&broker_cert.chain)?)
        .into_iter()
        .nth(1)
        .context("chain without intermediate")?;
    fs::write(&cafile, fs::read_to_string(&root)? + &intermediate)?;
    let broker = start_broker(dir, &cafile, &broker_cert, None)?;
    for (label, key, chain) in &devices {
        ensure!(
            publish(dir, &broker, &root, chain, key, label)?,
            "{label}: the device certificate was refused\n{}",
            broker.daemon.logs()
        );
    }
    let logs = broker.daemon.logs();
    for username in ["0042/1.3.6.1.4.1.32473", "0042/2.999.2"] {
        ensure!(
            logs.contains(&format!("u'{username}'")),
            "the broker did not log the username {username}:\n{logs}"
        );
    }
    ensure!(
        !logs.contains("u'0042'"),
        "a device was named by its bare serial:\n{logs}"
    );
    Ok(())
}
