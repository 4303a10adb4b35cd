//! The CA's root and issuing keys in a PKCS #11 token (SoftHSM2), end to end with the real
//! binary: `ca-server init --hsm` generates the root's and both issuing intermediates' keys (EC
//! and RSA) in a fresh token and writes only the certificates, the CA enrolls a device with
//! instant-acme and a device with an RSA key (each chain verifies to root.pem with openssl, the
//! RSA one through the RSA intermediate), revokes one and serves a CRL whose signature verifies with the intermediate's key,
//! restarts with the keys only in the token and enrolls again. No file under the data directory
//! holds a CA private key; a wrong PIN stops the CA at start with a message that says so; a key
//! gone from the token under the running CA makes a finalize a 503 that leaves the order ready.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use iiot_acme_tests::process::run_with_timeout;
use iiot_acme_tests::softhsm::{destroy_objects, object_count, public_point, SoftHsm};
use iiot_acme_tests::{
    ca_server_bin, ensure_no_ca_key_files, https, openssl_verify, openssl_verify_crl, CaServer,
    CaServerOpts, NON_CA_KEY_FILES,
};
use instant_acme::{Identifier, OrderStatus};
use x509_parser::prelude::FromDer as _;

#[path = "common/acme.rs"]
mod acme;

const TOKEN: &str = "iiot-ca";

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary paths")
}

/// The `[issuance]` and `[profiles]` settings of a CA with its keys in `hsm`'s token: as
/// (name, value) for the harness, and as TOML.
fn token_settings(hsm: &SoftHsm) -> (Vec<(String, String)>, String) {
    let issuance = vec![
        ("root_key_uri".to_owned(), hsm.uri(TOKEN, "root")),
        (
            "intermediate_key_uri".to_owned(),
            hsm.uri(TOKEN, "issuing-p256"),
        ),
        (
            "rsa_intermediate_key_uri".to_owned(),
            hsm.uri(TOKEN, "issuing-rsa"),
        ),
        // SoftHSM2 makes a 2048-bit key in a fraction of the time of a 3072-bit one.
        ("rsa_intermediate_key".to_owned(), "rsa2048".to_owned()),
    ];
    let mut toml = "[issuance]\n".to_owned();
    for (name, value) in &issuance {
        toml.push_str(&format!("{name} = \"{value}\"\n"));
    }
    (issuance, toml)
}

/// The DER of the first certificate of a PEM text.
fn first_der(pem: &str) -> Result<Vec<u8>> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).context("PEM")?;
    Ok(block.contents)
}

/// The public key (uncompressed point) of the first certificate of a PEM file.
fn cert_point(file: &Path) -> Result<Vec<u8>> {
    let der = first_der(&std::fs::read_to_string(file)?)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).context("X.509")?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// One OPC UA application `name` with a 2048-bit RSA key (made by openssl) and the
/// ApplicationUri `urn:{name}`, enrolled under the `opcua` profile over http-01 on a CA that
/// passes it without dialing; its PEM chain.
async fn enroll_rsa(server: &CaServer, work: &Path, name: &str) -> Result<String> {
    let (key, csr) = (work.join("rsa-device.key"), work.join("rsa-device.csr"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/"])
        .args([
            "-addext",
            &format!("subjectAltName=DNS:{name},URI:urn:{name}"),
        ])
        .args(["-keyout", path(&key), "-outform", "DER", "-out", path(&csr)]);
    let out = run_with_timeout("openssl-req", &mut cmd, work, Duration::from_secs(60))?;
    ensure!(out.status.success(), "openssl req\n{}", out.tails());
    let account = acme::account(server.directory_url(), &server.root_pem_path()).await?;
    let ids = [Identifier::Dns(name.to_owned())];
    let tokens = acme::Tokens::default();
    acme::issue(&account, &tokens, &ids, "opcua", &std::fs::read(&csr)?).await
}

/// GET /crl; the CRL, DER.
fn fetch_crl(server: &CaServer) -> Result<Vec<u8>> {
    let url = format!("https://127.0.0.1:{}/crl", server.listen_port());
    let resp = https::client_trusting(&server.root_pem_path())?
        .get(&url)
        .send()?
        .error_for_status()?;
    Ok(resp.bytes()?.to_vec())
}

#[test]
fn the_ca_signs_in_the_token_and_keeps_no_key_file() -> Result<()> {
    let hsm = SoftHsm::new(&[TOKEN])?;
    // The CA processes started below inherit it.
    hsm.use_in_this_process();
    let tmp = iiot_acme_tests::temp_dir("iiot-ca-hsm-")?;
    let data = tmp.path().join("data");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work)?;
    let (issuance, toml) = token_settings(&hsm);
    let config = work.join("ca-server.toml");
    std::fs::write(&config, format!("data_dir = \"{}\"\n{toml}", path(&data)))?;

    // init --hsm: the keys in the token, the certificates in the data directory.
    let init = |log: &str| {
        let mut cmd = Command::new(ca_server_bin()?);
        cmd.args(["init", "--hsm", "--config", path(&config)]);
        run_with_timeout(log, &mut cmd, &work, Duration::from_secs(60))
    };
    let out = init("init")?;
    ensure!(out.status.success(), "init --hsm failed\n{}", out.tails());
    ensure!(out.stdout.contains("root SHA-256:"), "{}", out.tails());
    let mut created: Vec<String> = std::fs::read_dir(data.join("ca"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    created.sort();
    ensure!(
        created == ["intermediate.pem", "root.pem", "rsa-intermediate.pem"],
        "init wrote {created:?}"
    );
    ensure!(
        object_count(TOKEN, "issuing-rsa")? == 2,
        "the token holds the RSA intermediate's private and public key"
    );
    for (label, cert) in [("root", "root.pem"), ("issuing-p256", "intermediate.pem")] {
        ensure!(
            object_count(TOKEN, label)? == 2,
            "the token holds {label}'s private and public key"
        );
        ensure!(
            public_point(TOKEN, label)? == cert_point(&data.join("ca").join(cert))?,
            "{cert} certifies the token's key {label}"
        );
    }
    let again = init("init-again")?;
    ensure!(!again.status.success(), "a second init succeeded");
    ensure!(
        again.stderr.contains("holds a CA already"),
        "{}",
        again.tails()
    );

    let mut server = CaServer::start(CaServerOpts {
        data_dir: Some(data.clone()),
        lab_always_valid: true,
        issuance_extra: issuance.clone(),
        extra_toml:
            "[profiles.opcua]\napplication_uri_prefixes = [\"urn:\"]\norganization = \"Plant\"\n"
                .to_owned(),
        ..CaServerOpts::default()
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    let root = data.join("ca/root.pem");
    let chain = rt.block_on(acme::enroll_dns(&server, "device-1.plant.example"))?;
    let chain_file = work.join("device-1.pem");
    std::fs::write(&chain_file, &chain)?;
    openssl_verify(&root, &chain_file)?;
    ensure!(
        server
            .logs()
            .contains("its issuing key is in a PKCS #11 token"),
        "{}",
        server.logs()
    );
    // An OPC UA application with an RSA key gets its certificate from the RSA intermediate,
    // signed in the token with SHA-256 and RSA (as Basic256Sha256 wants).
    let rsa_chain = rt.block_on(enroll_rsa(&server, &work, "rsa-device.plant.example"))?;
    let rsa_chain_file = work.join("rsa-device.pem");
    std::fs::write(&rsa_chain_file, &rsa_chain)?;
    openssl_verify(&root, &rsa_chain_file)?;
    let leaf_der = first_der(&rsa_chain)?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der)?;
    let rsa_intermediate_der = first_der(&std::fs::read_to_string(
        data.join("ca/rsa-intermediate.pem"),
    )?)?;
    let (_, rsa_intermediate) = x509_parser::parse_x509_certificate(&rsa_intermediate_der)?;
    ensure!(
        leaf.issuer() == rsa_intermediate.subject()
            && leaf
                .verify_signature(Some(rsa_intermediate.public_key()))
                .is_ok(),
        "the RSA device's certificate is signed by the RSA intermediate"
    );
    ensure!(
        leaf.signature_algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_SHA256WITHRSA,
        "signed with {}",
        leaf.signature_algorithm.algorithm
    );

    // A revocation, and the CRL the token signed: its signature verifies with the
    // intermediate's key (x509-parser) and openssl finds the device's certificate revoked.
    let mut cmd = Command::new(ca_server_bin()?);
    cmd.args(["revoke", "--data-dir", path(&data)])
        .args(["--identifier", "dns:device-1.plant.example"])
        .args(["--reason", "keyCompromise"]);
    let revoked = run_with_timeout("revoke", &mut cmd, &work, Duration::from_secs(30))?;
    ensure!(revoked.status.success(), "revoke\n{}", revoked.tails());
    let crl = fetch_crl(&server)?;
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl).context("CRL")?;
    let intermediate_der = first_der(&std::fs::read_to_string(data.join("ca/intermediate.pem"))?)?;
    let (_, intermediate) = x509_parser::parse_x509_certificate(&intermediate_der)?;
    ensure!(
        parsed.verify_signature(intermediate.public_key()).is_ok(),
        "the CRL's signature verifies with the intermediate's key"
    );
    ensure!(parsed.iter_revoked_certificates().count() == 1, "one entry");
    let crl_pem = work.join("crl.pem");
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &crl);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    std::fs::write(
        &crl_pem,
        format!(
            "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
            lines.join("\n")
        ),
    )?;
    ensure!(
        !openssl_verify_crl(&root, &chain_file, &crl_pem)?,
        "openssl reports the device's certificate revoked"
    );

    // A restart finds the keys in the token again, and the CA issues as before.
    server.restart()?;
    let chain = rt.block_on(acme::enroll_dns(&server, "device-2.plant.example"))?;
    let chain_file = work.join("device-2.pem");
    std::fs::write(&chain_file, &chain)?;
    openssl_verify(&root, &chain_file)?;
    // The server's HTTPS certificate was signed in the token too: the client above verified it
    // against root.pem, and its issuer is the intermediate.
    let server_pem = std::fs::read_to_string(data.join("ca/server.pem"))?;
    let server_der = first_der(&server_pem)?;
    let (_, server_cert) = x509_parser::parse_x509_certificate(&server_der)?;
    ensure!(
        server_cert
            .verify_signature(Some(intermediate.public_key()))
            .is_ok(),
        "server.pem is signed by the intermediate"
    );
    server.stop()?;

    // No key of the device PKI in any file of the data directory. The private keys there
    // (NON_CA_KEY_FILES) are neither the root's nor the intermediate's.
    let checked = ensure_no_ca_key_files(&data)?;
    ensure!(
        checked > 10,
        "only {checked} files under the data directory"
    );
    for other in NON_CA_KEY_FILES {
        let key = std::fs::read_to_string(data.join("ca").join(other))?;
        let key = rcgen::KeyPair::from_pem(&key)?;
        for label in ["root", "issuing-p256"] {
            ensure!(
                public_point(TOKEN, label)? != key.public_key_raw(),
                "{other} is the CA key {label}"
            );
        }
    }

    // A wrong PIN: the CA does not start, and says why. Its file is 0644 here, which the CA
    // warns about.
    let wrong = work.join("wrong.pin");
    std::fs::write(&wrong, "0000\n")?;
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    // The stopped server's configuration (its own free ports) with the other PIN file.
    let wrong_config = work.join("wrong-pin.toml");
    let text = std::fs::read_to_string(server.config_path())?;
    let pin_source = format!("pin-source=file:{}", path(hsm.pin_file()));
    ensure!(text.contains(&pin_source), "{text}");
    std::fs::write(
        &wrong_config,
        text.replace(&pin_source, &format!("pin-source=file:{}", path(&wrong))),
    )?;
    let mut cmd = Command::new(ca_server_bin()?);
    cmd.args(["serve", "--config", path(&wrong_config)]);
    let out = run_with_timeout("wrong-pin", &mut cmd, &work, Duration::from_secs(60))?;
    ensure!(!out.status.success(), "the CA started with a wrong PIN");
    ensure!(
        out.stderr.contains("wrong PIN") && !out.stderr.contains("panicked"),
        "{}",
        out.tails()
    );
    ensure!(
        out.stderr
            .contains("has mode 0644: other users can read it"),
        "{}",
        out.tails()
    );

    // The token fails under the running CA: another application of the token destroys the
    // issuing key. A finalize gets a 503 (serverInternal) and its order stays ready, for the
    // client to send again; without the key, the CA does not start.
    server.restart()?;
    let account = rt.block_on(acme::account(server.directory_url(), &root))?;
    let name = "device-3.plant.example";
    let ids = [Identifier::Dns(name.to_owned())];
    let mut order = rt.block_on(acme::ready_order(
        &account,
        &acme::Tokens::default(),
        &ids,
        "default",
    ))?;
    ensure!(
        destroy_objects(TOKEN, "issuing-p256")? == 2,
        "the key's two halves"
    );
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    match rt.block_on(order.finalize_csr(csr.der())) {
        Err(instant_acme::Error::Api(problem)) => ensure!(
            problem.status == Some(503)
                && problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:serverInternal"),
            "{problem:?}"
        ),
        other => anyhow::bail!("finalize without the CA's key: {other:?}"),
    }
    let status = rt.block_on(order.refresh())?.status;
    ensure!(status == OrderStatus::Ready, "the order is {status:?}");
    server.stop()?;
    let mut cmd = Command::new(ca_server_bin()?);
    cmd.args(["serve", "--config", path(server.config_path())]);
    let out = run_with_timeout("no-key", &mut cmd, &work, Duration::from_secs(60))?;
    ensure!(!out.status.success(), "the CA started without its key");
    ensure!(
        out.stderr.contains("has no such private key") && !out.stderr.contains("panicked"),
        "{}",
        out.tails()
    );
    Ok(())
}
