//! An offline root, end to end with the real binary: `ca-server root create` in a directory of
//! its own (the offline machine), `intermediate request`, `root sign` and `intermediate
//! install` for the EC and the RSA intermediate, then the CA started on that data directory
//! enrolls a device with instant-acme. The device's chain verifies to the offline root.pem
//! (openssl), the CA says at start that its root key is offline, and no file under the data
//! directory holds the root's private key.
//!
//! The same four steps with the issuing keys in a PKCS #11 token (SoftHSM2): `intermediate
//! request --config` generates the EC key in the token and prints a request signed there (asked
//! again, for the same key), `intermediate install --config` refuses a certificate for another
//! key and installs the token key's without a key file; `--kind rsa` does the same for the RSA
//! intermediate's key (`rsa_intermediate_key_uri`). The CA started on that directory loads both
//! keys from the token and enrolls a device with the EC one; no file under the data directory
//! holds a CA key.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context as _, Result};
use iiot_acme_tests::softhsm::SoftHsm;
use iiot_acme_tests::{ca_server_bin, openssl_verify, CaServer, CaServerOpts};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer as _;

#[path = "common/acme.rs"]
mod acme;

use acme::enroll_dns as enroll;
use iiot_acme_tests::files_under as files;

/// Runs `ca-server ARGS` in `cwd` and returns its output, whatever its exit status.
fn ca_server_in(cwd: &Path, args: &[&str]) -> Result<Output> {
    Command::new(ca_server_bin()?)
        .args(args)
        .current_dir(cwd)
        .output()
        .with_context(|| format!("ca-server {args:?}"))
}

/// Runs `ca-server ARGS` and returns its output, whatever its exit status.
fn ca_server(args: &[&str]) -> Result<Output> {
    ca_server_in(Path::new("."), args)
}

/// Runs `ca-server ARGS` in `cwd`, which must succeed, and returns its stdout.
fn ok_in(cwd: &Path, args: &[&str]) -> Result<String> {
    let out = ca_server_in(cwd, args)?;
    ensure!(
        out.status.success(),
        "ca-server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `ca-server ARGS`, which must succeed, and returns its stdout.
fn ok(args: &[&str]) -> Result<String> {
    ok_in(Path::new("."), args)
}

/// Runs `ca-server ARGS`, which must fail, and returns its stderr.
fn refused(args: &[&str]) -> Result<String> {
    let out = ca_server(args)?;
    ensure!(!out.status.success(), "ca-server {args:?} succeeded");
    Ok(String::from_utf8(out.stderr)?)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary paths")
}

/// The request, signature and install of one intermediate.
fn intermediate(data: &Path, root: &Path, work: &Path, kind: &str) -> Result<()> {
    let csr = work.join(format!("{kind}.csr"));
    let cert = work.join(format!("{kind}.pem"));
    ok(&[
        "intermediate",
        "request",
        "--data-dir",
        path(data),
        "--kind",
        kind,
        "--out",
        path(&csr),
    ])?;
    // `--out` a bare file name, as an operator types it where the files go.
    let signed = ok_in(
        work,
        &[
            "root",
            "sign",
            "--root",
            path(root),
            "--csr",
            path(&csr),
            "--out",
            &format!("{kind}.pem"),
        ],
    )?;
    ensure!(signed.contains("SHA-256:"), "{signed}");
    let installed = ok(&[
        "intermediate",
        "install",
        "--data-dir",
        path(data),
        "--cert",
        path(&cert),
        "--root",
        path(&root.join("root.pem")),
    ])?;
    ensure!(installed.contains("intermediate installed"), "{installed}");
    Ok(())
}

/// Enrolls device-1 on `server` and checks its chain (written to `work`) against `root`.
fn enroll_and_verify(server: &CaServer, work: &Path, root: &Path) -> Result<()> {
    let chain =
        tokio::runtime::Runtime::new()?.block_on(enroll(server, "device-1.plant.example"))?;
    let chain_file = work.join("device-1.pem");
    std::fs::write(&chain_file, &chain)?;
    openssl_verify(root, &chain_file)
}

/// The secret scalar of a PKCS#8 EC private key: the OCTET STRING after ECPrivateKey's
/// version 1 (RFC 5915).
fn ec_scalar(pkcs8: &[u8]) -> Option<&[u8]> {
    let at = pkcs8
        .windows(4)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04])?;
    let len = usize::from(*pkcs8.get(at + 4)?);
    pkcs8.get(at + 5..at + 5 + len)
}

#[test]
fn a_ca_with_an_offline_root_enrolls_and_never_holds_the_root_key() -> Result<()> {
    let tmp = iiot_acme_tests::temp_dir("iiot-offline-root-")?;
    let offline = tmp.path().join("offline");
    let data = tmp.path().join("data");
    let work = tmp.path().join("transfer");
    std::fs::create_dir(&work)?;

    let created = ok(&["root", "create", "--out", path(&offline)])?;
    ensure!(created.contains("root created"), "{created}");
    let again = refused(&["root", "create", "--out", path(&offline)])?;
    ensure!(again.contains("refusing to overwrite"), "{again}");

    intermediate(&data, &offline, &work, "ec")?;
    intermediate(&data, &offline, &work, "rsa")?;
    // Installed once; a second install of the same certificate is refused.
    let twice = refused(&[
        "intermediate",
        "install",
        "--data-dir",
        path(&data),
        "--cert",
        path(&work.join("ec.pem")),
        "--root",
        path(&offline.join("root.pem")),
    ])?;
    ensure!(twice.contains("intermediate already"), "{twice}");
    ensure!(
        std::fs::read(data.join("ca/root.pem"))? == std::fs::read(offline.join("root.pem"))?,
        "the installed root.pem is the offline one"
    );

    let server = CaServer::start(CaServerOpts {
        data_dir: Some(data.clone()),
        lab_always_valid: true,
        ..CaServerOpts::default()
    })?;
    enroll_and_verify(&server, &work, &offline.join("root.pem"))?;
    let log = std::fs::read_to_string(data.join("ca-server.stderr.log"))?;
    ensure!(log.contains("the root key is offline"), "{}", server.logs());

    // The root key, as the offline machine holds it, in no file of the data directory, store
    // and logs included: not its DER, not its secret scalar, not the PEM line that carries
    // most of the scalar (the lines after it also carry the public key, which root.pem has).
    let pem = std::fs::read_to_string(offline.join("root.key"))?;
    let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body.concat())?;
    let scalar = ec_scalar(&der).context("an EC private key")?;
    ensure!(
        scalar.len() == 48,
        "a P-384 scalar, not {} bytes",
        scalar.len()
    );
    let line = body.get(1).context("a PEM body of several lines")?;
    let mut checked = 0;
    for file in files(&data)? {
        let bytes = std::fs::read(&file)?;
        for (what, needle) in [
            ("PEM", line.as_bytes()),
            ("DER", der.as_slice()),
            ("scalar", scalar),
        ] {
            ensure!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the root key ({what})",
                file.display()
            );
        }
        checked += 1;
    }
    ensure!(
        !data.join("ca/root.key").exists(),
        "root.key on the CA host"
    );
    ensure!(
        checked > 10,
        "only {checked} files under the data directory"
    );
    Ok(())
}

/// The subject public key info of a PEM request file.
fn csr_spki(file: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(file)?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).context("PEM")?;
    let (_, csr) = X509CertificationRequest::from_der(&block.contents).context("PKCS#10")?;
    Ok(csr.certification_request_info.subject_pki.raw.to_vec())
}

/// The subject public key info of the PEM certificate `file`.
fn cert_spki(file: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(file)?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).context("PEM")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&block.contents).context("X.509")?;
    Ok(cert.public_key().raw.to_vec())
}

#[test]
fn an_offline_root_certifies_an_issuing_key_in_a_token_and_the_ca_keeps_no_key_file() -> Result<()>
{
    const TOKEN: &str = "iiot-offline";
    let hsm = SoftHsm::new(&[TOKEN])?;
    // The ca-server processes started below inherit it; nothing else in this process uses a
    // token.
    hsm.use_in_this_process();
    let tmp = iiot_acme_tests::temp_dir("iiot-offline-root-hsm-")?;
    let offline = tmp.path().join("offline");
    let data = tmp.path().join("data");
    let work = tmp.path().join("transfer");
    std::fs::create_dir(&work)?;
    let issuance = vec![
        (
            "intermediate_key_uri".to_owned(),
            hsm.uri(TOKEN, "issuing-p256"),
        ),
        (
            "rsa_intermediate_key_uri".to_owned(),
            hsm.uri(TOKEN, "issuing-rsa"),
        ),
        // The smallest size keeps the test quick.
        ("rsa_intermediate_key".to_owned(), "rsa2048".to_owned()),
    ];
    let mut toml = format!("data_dir = \"{}\"\n[issuance]\n", path(&data));
    for (name, value) in &issuance {
        toml.push_str(&format!("{name} = \"{value}\"\n"));
    }
    let config = work.join("ca-server.toml");
    std::fs::write(&config, toml)?;
    let config = path(&config);

    ok(&["root", "create", "--out", path(&offline)])?;
    let request = |csr: &Path, kind: &str| -> Result<String> {
        let out = ca_server(&[
            "intermediate",
            "request",
            "--config",
            config,
            "--kind",
            kind,
            "--out",
            path(csr),
        ])?;
        let stderr = String::from_utf8(out.stderr)?;
        ensure!(out.status.success(), "intermediate request: {stderr}");
        Ok(stderr)
    };
    let csr = work.join("ec.csr");
    let first = request(&csr, "ec")?;
    ensure!(
        first.contains("issuing key generated: issuance.intermediate_key_uri pkcs11:"),
        "{first}"
    );
    // Asked again (the request was lost): the token's key is reused.
    let csr_again = work.join("ec-again.csr");
    let again = request(&csr_again, "ec")?;
    ensure!(again.contains("issuing key reused"), "{again}");
    let spki = csr_spki(&csr)?;
    ensure!(
        csr_spki(&csr_again)? == spki,
        "a repeated request is for another key"
    );
    let ca_files: Vec<_> = std::fs::read_dir(data.join("ca"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    ensure!(ca_files.is_empty(), "the request wrote {ca_files:?}");

    let sign = |csr: &Path, out: &str| {
        let args = ["root", "sign", "--root", path(&offline), "--csr", path(csr)];
        ok_in(&work, &[&args[..], &["--out", out]].concat())
    };
    sign(&csr, "ec.pem")?;
    // A certificate the same root issued for another CA's key file: refused, naming the
    // token's key.
    let other = tmp.path().join("other");
    let other_csr = work.join("other.csr");
    ok(&[
        "intermediate",
        "request",
        "--data-dir",
        path(&other),
        "--out",
        path(&other_csr),
    ])?;
    sign(&other_csr, "other.pem")?;
    let root_pem = offline.join("root.pem");
    let install = |cert: &Path| {
        ca_server(&[
            "intermediate",
            "install",
            "--config",
            config,
            "--cert",
            path(cert),
            "--root",
            path(&root_pem),
        ])
    };
    let wrong = install(&work.join("other.pem"))?;
    let stderr = String::from_utf8(wrong.stderr)?;
    ensure!(
        !wrong.status.success(),
        "the other key's certificate was installed"
    );
    ensure!(
        stderr.contains("does not certify the token's key issuance.intermediate_key_uri"),
        "{stderr}"
    );
    ensure!(
        !data.join("ca/intermediate.pem").exists(),
        "intermediate.pem written"
    );
    let installed = install(&work.join("ec.pem"))?;
    ensure!(
        installed.status.success(),
        "intermediate install: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    // The RSA intermediate: its key generated in the token, its certificate installed alone.
    let rsa_csr = work.join("rsa.csr");
    let generated = request(&rsa_csr, "rsa")?;
    ensure!(
        generated.contains("issuing key generated: issuance.rsa_intermediate_key_uri pkcs11:"),
        "{generated}"
    );
    sign(&rsa_csr, "rsa.pem")?;
    let installed = install(&work.join("rsa.pem"))?;
    ensure!(
        installed.status.success(),
        "intermediate install (RSA): {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    ensure!(
        csr_spki(&rsa_csr)? == cert_spki(&data.join("ca/rsa-intermediate.pem"))?,
        "rsa-intermediate.pem certifies the token's RSA key"
    );

    let mut server = CaServer::start(CaServerOpts {
        data_dir: Some(data.clone()),
        lab_always_valid: true,
        issuance_extra: issuance,
        ..CaServerOpts::default()
    })?;
    enroll_and_verify(&server, &work, &root_pem)?;
    let logs = server.logs();
    ensure!(
        logs.contains("its issuing key is in a PKCS #11 token")
            && logs.contains("root_key_offline=true"),
        "{logs}"
    );
    server.stop()?;

    // No CA key in any file of the data directory; the private keys there (NON_CA_KEY_FILES)
    // are not the token's key.
    let checked = iiot_acme_tests::ensure_no_ca_key_files(&data)?;
    ensure!(
        checked > 10,
        "only {checked} files under the data directory"
    );
    for name in iiot_acme_tests::NON_CA_KEY_FILES {
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(data.join("ca").join(name))?)?;
        ensure!(
            rcgen::PublicKeyData::subject_public_key_info(&key) != spki,
            "{name} is the issuing key"
        );
    }
    Ok(())
}
