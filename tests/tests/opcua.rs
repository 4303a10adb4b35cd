//! The `opcua` certificate profile against a real OPC UA stack (SPEC §8.3): an asyncua
//! (PyPI, `scripts/install-test-deps.sh` puts it in `.venv-tests`) server and client connect
//! with Basic256Sha256 SignAndEncrypt, each checking the other's certificate against a trust
//! store holding only this CA (chain, ApplicationUri, key usage, EKU).
//!
//! instant-acme enrolls both RSA-2048 application instance certificates over http-01 with CSRs
//! that carry the ApplicationUri as a URI SAN. The `opcua` profile has them signed by the CA's
//! RSA intermediate (SPEC §8.1), so the chain is sha256WithRSAEncryption below the root, as
//! Basic256Sha256 wants; openssl and the asyncua script both check that. Then the same client
//! fails when it claims another ApplicationUri than its certificate's, and when it presents an
//! `mqtt-client` certificate of the same CA (signed by the EC intermediate, also in the trust
//! store; it has no ApplicationUri: BadCertificateUriInvalid), so the profile is what makes the
//! certificate usable.
//!
//! A second test needs openssl only: the RSA-issued chain verifies, and after revocation
//! `openssl verify -crl_check` with the RSA intermediate's CRL (SPEC §9.1) reports it revoked.

#[path = "common/acme.rs"]
mod acme;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use acme::Tokens;
use anyhow::{ensure, Context as _, Result};
use iiot_acme_tests::process::run_with_timeout;
use iiot_acme_tests::{
    free_port, openssl_text, openssl_verify, openssl_verify_crl, CaServer, CaServerOpts,
};
use instant_acme::{Account, Identifier, RevocationRequest};

const SERVER_URI: &str = "urn:plant.example:line1:server";
const CLIENT_URI: &str = "urn:plant.example:line1:hmi";
const OPCUA_TOML: &str = "[profiles.opcua]\napplication_uri_prefixes = [\"urn:plant.example:\"]\n\
                          organization = \"Plant Example Ltd\"\n";

/// An RSA-2048 key (asyncua 2.1 has no ECC policies; ring cannot generate RSA keys).
fn rsa_key(dir: &Path, name: &str) -> Result<(rcgen::KeyPair, PathBuf)> {
    // asyncua picks PEM or DER by the file extension.
    let path = dir.join(format!("{name}.key.pem"));
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .output()
        .context("openssl genpkey")?;
    ensure!(out.status.success(), "openssl genpkey: {out:?}");
    let pem = fs::read_to_string(&path)?;
    Ok((
        rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)?,
        path,
    ))
}

/// An enrolled application: its files and the chain as downloaded.
struct Enrolled {
    /// The leaf alone, what an OPC UA application loads.
    leaf: PathBuf,
    key: PathBuf,
    /// Leaf + issuing intermediate, as downloaded (SPEC §7.5).
    chain: PathBuf,
    chain_pem: String,
    intermediate: String,
}

impl Enrolled {
    fn cert_and_key(&self) -> (PathBuf, PathBuf) {
        (self.leaf.clone(), self.key.clone())
    }
}

/// Enrolls an RSA key under `profile`, the CSR carrying `uri` if given.
async fn enroll(
    account: &Account,
    tokens: &Tokens,
    ids: &[Identifier],
    profile: &str,
    uri: Option<&str>,
    dir: &Path,
    name: &str,
) -> Result<Enrolled> {
    let (key, key_path) = rsa_key(dir, name)?;
    let mut p = rcgen::CertificateParams::new(acme::names(ids))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(uri) = uri {
        p.subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into()?));
    }
    let chain = acme::issue(
        account,
        tokens,
        ids,
        profile,
        p.serialize_request(&key)?.der(),
    )
    .await?;
    let blocks = acme::split_chain(&chain);
    ensure!(blocks.len() == 2, "expected leaf + intermediate: {chain}");
    let leaf = dir.join(format!("{name}.pem"));
    fs::write(&leaf, &blocks[0])?;
    let chain_path = dir.join(format!("{name}.chain.pem"));
    fs::write(&chain_path, &chain)?;
    Ok(Enrolled {
        leaf,
        key: key_path,
        chain: chain_path,
        intermediate: blocks[1].clone(),
        chain_pem: chain,
    })
}

/// The chain of an RSA key under `opcua`: the leaf signed sha256WithRSAEncryption by the CA's
/// RSA intermediate (`<data_dir>/ca/rsa-intermediate.pem`), an RSA key, as `openssl x509
/// -text` shows them; and `openssl verify -CAfile root -untrusted chain` accepts it.
fn check_rsa_chain(server: &CaServer, app: &Enrolled) -> Result<()> {
    let rsa_intermediate = fs::read_to_string(server.data_dir().join("ca/rsa-intermediate.pem"))?;
    ensure!(
        app.intermediate == rsa_intermediate,
        "the chain's intermediate is not the RSA intermediate:\n{}",
        app.chain_pem
    );
    let leaf = openssl_text(&app.chain_pem)?;
    ensure!(
        leaf.contains("Signature Algorithm: sha256WithRSAEncryption")
            && !leaf.contains("ecdsa-with"),
        "the leaf is not signed sha256WithRSAEncryption:\n{leaf}"
    );
    let intermediate = openssl_text(&app.intermediate)?;
    ensure!(
        intermediate.contains("Public Key Algorithm: rsaEncryption")
            && intermediate.contains("CA:TRUE, pathlen:0"),
        "the intermediate is not an RSA CA with pathlen 0:\n{intermediate}"
    );
    openssl_verify(&server.root_pem_path(), &app.chain)
}

/// A CA whose `opcua` profile accepts `urn:plant.example:` ApplicationUris.
fn start_ca() -> Result<CaServer> {
    CaServer::start(CaServerOpts {
        extra_toml: OPCUA_TOML.to_owned(),
        ..CaServerOpts::default()
    })
}

struct Run<'a> {
    dir: &'a Path,
    trust: &'a Path,
    server: &'a (PathBuf, PathBuf),
}

impl Run<'_> {
    /// Runs the asyncua server and client once; Ok(output) with whether the read succeeded.
    /// `rsa_chain`: the script also checks that both certificates are signed
    /// sha256WithRSAEncryption by an RSA issuer in the trust store.
    fn connect(
        &self,
        client: &(PathBuf, PathBuf),
        client_uri: &str,
        rsa_chain: bool,
        label: &str,
    ) -> Result<(bool, String)> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("opcua/interop.py");
        let mut cmd = Command::new(iiot_acme_tests::python());
        cmd.arg(script);
        if rsa_chain {
            cmd.arg("--expect-rsa-chain");
        }
        let out = run_with_timeout(
            &format!("asyncua-{label}"),
            cmd.args(["--port", &free_port()?.to_string()])
                .arg("--trust")
                .arg(self.trust)
                .arg("--server-cert")
                .arg(&self.server.0)
                .arg("--server-key")
                .arg(&self.server.1)
                .args(["--server-uri", SERVER_URI])
                .arg("--client-cert")
                .arg(&client.0)
                .arg("--client-key")
                .arg(&client.1)
                .args(["--client-uri", client_uri]),
            self.dir,
            Duration::from_secs(60),
        )?;
        ensure!(
            out.stdout.contains("OK ") || out.stdout.contains("FAILED "),
            "{label}: the asyncua script did not run (is asyncua installed? run scripts/install-test-deps.sh)\n{}",
            out.tails()
        );
        Ok((out.status.success(), out.tails()))
    }
}

#[test]
fn asyncua_connects_with_opcua_profile_certificates() -> Result<()> {
    let server = start_ca()?;
    let dir = iiot_acme_tests::temp_dir("iiot-opcua-")?;
    let dir = dir.path();
    let root = server.root_pem_path();
    let rt = tokio::runtime::Runtime::new()?;
    let tokens = Tokens::default();
    let (ua_server, ua_client, mqtt) = rt
        .block_on(async {
            acme::serve_http01(server.http_port(), tokens.clone()).await?;
            let account = acme::account(server.directory_url(), &root).await?;
            let ua_server = enroll(
                &account,
                &tokens,
                &[
                    Identifier::Ip("127.0.0.1".parse()?),
                    Identifier::Dns("localhost".to_owned()),
                ],
                "opcua",
                Some(SERVER_URI),
                dir,
                "server",
            )
            .await?;
            let client_ids = [Identifier::Dns("hmi-1.plant.example".to_owned())];
            let ua_client = enroll(
                &account,
                &tokens,
                &client_ids,
                "opcua",
                Some(CLIENT_URI),
                dir,
                "client",
            )
            .await?;
            let mqtt = enroll(
                &account,
                &tokens,
                &client_ids,
                "mqtt-client",
                None,
                dir,
                "mqtt",
            )
            .await?;
            anyhow::Ok((ua_server, ua_client, mqtt))
        })
        .with_context(|| server.logs())?;
    check_rsa_chain(&server, &ua_server)?;
    check_rsa_chain(&server, &ua_client)?;
    ensure!(
        mqtt.intermediate != ua_client.intermediate,
        "mqtt-client certificates come from the EC intermediate"
    );

    // The trust store: this CA's root and both issuing intermediates, nothing else; the
    // mqtt-client certificate then fails for what it is, not for an unknown issuer.
    let trust = dir.join("trusted");
    fs::create_dir(&trust)?;
    fs::copy(&root, trust.join("root.pem"))?;
    fs::write(trust.join("rsa-intermediate.pem"), &ua_server.intermediate)?;
    fs::write(trust.join("ec-intermediate.pem"), &mqtt.intermediate)?;

    let ua_server = ua_server.cert_and_key();
    let ua_client = ua_client.cert_and_key();
    let run = Run {
        dir,
        trust: &trust,
        server: &ua_server,
    };
    let (ok, log) = run.connect(&ua_client, CLIENT_URI, true, "opcua")?;
    ensure!(
        ok,
        "SignAndEncrypt with opcua-profile certificates failed\n{log}"
    );
    ensure!(
        log.contains("CHAIN server sha256WithRSAEncryption")
            && log.contains("CHAIN client sha256WithRSAEncryption"),
        "the script did not check the RSA chains\n{log}"
    );

    let (ok, log) = run.connect(
        &ua_client,
        "urn:plant.example:line1:other",
        true,
        "wrong-uri",
    )?;
    ensure!(
        !ok,
        "a client claiming another ApplicationUri was accepted\n{log}"
    );
    ensure!(log.contains("BadCertificateUriInvalid"), "{log}");

    let (ok, log) = run.connect(&mqtt.cert_and_key(), CLIENT_URI, false, "mqtt-client")?;
    ensure!(
        !ok,
        "an mqtt-client certificate was accepted as an OPC UA client\n{log}"
    );
    ensure!(log.contains("BadCertificateUriInvalid"), "{log}");
    Ok(())
}

#[test]
fn opcua_rsa_chain_verifies_and_is_revoked_on_the_rsa_crl() -> Result<()> {
    let server = start_ca()?;
    let dir = iiot_acme_tests::temp_dir("iiot-opcua-crl-")?;
    let dir = dir.path();
    let root = server.root_pem_path();
    let rt = tokio::runtime::Runtime::new()?;
    let tokens = Tokens::default();
    let crl_url = format!("https://127.0.0.1:{}/crl/rsa", server.listen_port());
    let crl = server.data_dir().join("crl-rsa.pem");
    let (account, plc) = rt
        .block_on(async {
            acme::serve_http01(server.http_port(), tokens.clone()).await?;
            let account = acme::account(server.directory_url(), &root).await?;
            let plc = enroll(
                &account,
                &tokens,
                &[Identifier::Dns("plc-7.plant.example".to_owned())],
                "opcua",
                Some("urn:plant.example:line1:plc7"),
                dir,
                "plc",
            )
            .await?;
            anyhow::Ok((account, plc))
        })
        .with_context(|| server.logs())?;
    check_rsa_chain(&server, &plc)?;

    // GET /crl/rsa signs a fresh CRL and writes crl-rsa.pem (SPEC §9.1). The harness's HTTPS
    // client is blocking, so it runs outside the runtime.
    let (status, _) = iiot_acme_tests::https::get(&crl_url, &root)?;
    ensure!(status == 200, "GET /crl/rsa: {status}");
    ensure!(
        openssl_verify_crl(&root, &plc.chain, &crl)?,
        "a valid certificate failed the CRL check"
    );

    let der = acme::first_cert_der(&plc.chain_pem)?;
    rt.block_on(account.revoke(&RevocationRequest {
        certificate: &der.into(),
        reason: None,
    }))
    .context("revoke")?;
    let (status, _) = iiot_acme_tests::https::get(&crl_url, &root)?;
    ensure!(status == 200, "GET /crl/rsa: {status}");
    ensure!(
        !openssl_verify_crl(&root, &plc.chain, &crl)?,
        "openssl verify -crl_check did not report the revoked certificate"
    );
    Ok(())
}
