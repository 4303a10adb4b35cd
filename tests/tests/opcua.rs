//! The `opcua` certificate profile against a real OPC UA stack (SPEC §8.3): an asyncua
//! (PyPI, `scripts/install-test-deps.sh` puts it in `.venv-tests`) server and client connect
//! with Basic256Sha256 SignAndEncrypt, each checking the other's certificate against a trust
//! store holding only this CA (chain, ApplicationUri, key usage, EKU).
//!
//! instant-acme enrolls both RSA-2048 application instance certificates over http-01 with CSRs
//! that carry the ApplicationUri as a URI SAN. Then the same client fails when it claims another
//! ApplicationUri than its certificate's, and when it presents an `mqtt-client` certificate of
//! the same CA (it has no ApplicationUri: BadCertificateUriInvalid), so the profile is what makes
//! the certificate usable.

#[path = "common/acme.rs"]
mod acme;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use acme::Tokens;
use anyhow::{ensure, Context as _, Result};
use iiot_acme_tests::process::run_with_timeout;
use iiot_acme_tests::{free_port, CaServer, CaServerOpts};
use instant_acme::{Account, Identifier};

const SERVER_URI: &str = "urn:plant.example:line1:server";
const CLIENT_URI: &str = "urn:plant.example:line1:hmi";

/// The Python with asyncua: `$IIOT_PYTHON`, else the repository's `.venv-tests`, else `python3`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("IIOT_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-tests/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

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

/// Enrolls an RSA key under `profile`, the CSR carrying `uri` if given; writes the leaf alone
/// (what an OPC UA application loads) and returns (leaf path, key path, intermediate PEM).
async fn enroll(
    account: &Account,
    tokens: &Tokens,
    ids: &[Identifier],
    profile: &str,
    uri: Option<&str>,
    dir: &Path,
    name: &str,
) -> Result<(PathBuf, PathBuf, String)> {
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
    Ok((leaf, key_path, blocks[1].clone()))
}

struct Run<'a> {
    dir: &'a Path,
    trust: &'a Path,
    server: &'a (PathBuf, PathBuf),
}

impl Run<'_> {
    /// Runs the asyncua server and client once; Ok(output) with whether the read succeeded.
    fn connect(
        &self,
        client: &(PathBuf, PathBuf),
        client_uri: &str,
        label: &str,
    ) -> Result<(bool, String)> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("opcua/interop.py");
        let out = run_with_timeout(
            &format!("asyncua-{label}"),
            Command::new(python())
                .arg(script)
                .args(["--port", &free_port()?.to_string()])
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
    let server = CaServer::start(CaServerOpts {
        extra_toml: "[profiles.opcua]\napplication_uri_prefixes = [\"urn:plant.example:\"]\n\
                     organization = \"Plant Example Ltd\"\n"
            .to_owned(),
        ..CaServerOpts::default()
    })?;
    let dir = iiot_acme_tests::temp_dir("iiot-opcua-")?;
    let dir = dir.path();
    let root = server.root_pem_path();
    let rt = tokio::runtime::Runtime::new()?;
    let tokens = Tokens::default();
    let (ua_server, ua_client, mqtt, intermediate) = rt
        .block_on(async {
            acme::serve_http01(server.http_port(), tokens.clone()).await?;
            let account = acme::account(server.directory_url(), &root).await?;
            let (s_cert, s_key, intermediate) = enroll(
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
            let (c_cert, c_key, _) = enroll(
                &account,
                &tokens,
                &client_ids,
                "opcua",
                Some(CLIENT_URI),
                dir,
                "client",
            )
            .await?;
            let (m_cert, m_key, _) = enroll(
                &account,
                &tokens,
                &client_ids,
                "mqtt-client",
                None,
                dir,
                "mqtt",
            )
            .await?;
            anyhow::Ok((
                (s_cert, s_key),
                (c_cert, c_key),
                (m_cert, m_key),
                intermediate,
            ))
        })
        .with_context(|| server.logs())?;

    // The trust store: this CA's root and issuing intermediate, nothing else.
    let trust = dir.join("trusted");
    fs::create_dir(&trust)?;
    fs::copy(&root, trust.join("root.pem"))?;
    fs::write(trust.join("intermediate.pem"), intermediate)?;

    let run = Run {
        dir,
        trust: &trust,
        server: &ua_server,
    };
    let (ok, log) = run.connect(&ua_client, CLIENT_URI, "opcua")?;
    ensure!(
        ok,
        "SignAndEncrypt with opcua-profile certificates failed\n{log}"
    );

    let (ok, log) = run.connect(&ua_client, "urn:plant.example:line1:other", "wrong-uri")?;
    ensure!(
        !ok,
        "a client claiming another ApplicationUri was accepted\n{log}"
    );
    ensure!(log.contains("BadCertificateUriInvalid"), "{log}");

    let (ok, log) = run.connect(&mqtt, CLIENT_URI, "mqtt-client")?;
    ensure!(
        !ok,
        "an mqtt-client certificate was accepted as an OPC UA client\n{log}"
    );
    ensure!(log.contains("BadCertificate"), "{log}");
    Ok(())
}
