//! An offline root, end to end with the real binary: `ca-server root create` in a directory of
//! its own (the offline machine), `intermediate request`, `root sign` and `intermediate
//! install` for the EC and the RSA intermediate, then the CA started on that data directory
//! enrolls a device with instant-acme. The device's chain verifies to the offline root.pem
//! (openssl), the CA says at start that its root key is offline, and no file under the data
//! directory holds the root's private key.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context as _, Result};
use iiot_acme_tests::{ca_server_bin, openssl_verify, CaServer, CaServerOpts};

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
    let chain =
        tokio::runtime::Runtime::new()?.block_on(enroll(&server, "device-1.plant.example"))?;
    let chain_file = work.join("device-1.pem");
    std::fs::write(&chain_file, &chain)?;
    openssl_verify(&offline.join("root.pem"), &chain_file)?;
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
