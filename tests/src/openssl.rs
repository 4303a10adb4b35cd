//! Chain checks with the `openssl` command line tool: an implementation nobody here wrote.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::process::run_with_timeout;

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// `openssl verify` is local work; more than this means something hangs.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

/// The PEM `CERTIFICATE` blocks of `pem`, in order, each with its BEGIN/END lines.
pub fn split_pem_certs(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// Checks that the first certificate of `chain_pem` (the leaf) chains to the root in
/// `root_pem` through the certificates after it (the intermediates):
/// `openssl verify -CAfile root -untrusted intermediates leaf` must print `OK`.
pub fn openssl_verify(root_pem: &Path, chain_pem: &Path) -> Result<()> {
    verify(root_pem, chain_pem, Check::Chain).map(drop)
}

/// [`openssl_verify`], and also that the leaf is valid for `host` (`-verify_hostname`).
pub fn openssl_verify_host(root_pem: &Path, chain_pem: &Path, host: &str) -> Result<()> {
    verify(root_pem, chain_pem, Check::Host(host)).map(drop)
}

/// `openssl verify -crl_check` of the leaf of `chain_pem` against `root_pem`, with the CRL of
/// its issuer in `crl_pem`: Ok(true) if it verifies, Ok(false) if openssl reports it revoked,
/// an error for any other failure (the chain itself, a CRL that does not verify).
pub fn openssl_verify_crl(root_pem: &Path, chain_pem: &Path, crl_pem: &Path) -> Result<bool> {
    verify(root_pem, chain_pem, Check::Crl(crl_pem))
}

/// `openssl x509 -noout -text` of the first certificate of `pem`.
pub fn openssl_text(pem: &str) -> Result<String> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let path = dir.path().join("cert.pem");
    fs::write(&path, pem).context("cannot write cert.pem")?;
    let mut cmd = Command::new("openssl");
    cmd.args(["x509", "-noout", "-text", "-in"]).arg(&path);
    let out = run_with_timeout("openssl-x509", &mut cmd, dir.path(), OPENSSL_TIMEOUT)?;
    ensure!(out.status.success(), "openssl x509 failed\n{}", out.tails());
    Ok(out.stdout)
}

/// What `verify` checks beyond the chain.
enum Check<'a> {
    Chain,
    Host(&'a str),
    Crl(&'a Path),
}

/// Ok(true) if openssl verifies the chain, Ok(false) if it reports the leaf revoked (only
/// with `Check::Crl`), an error otherwise.
fn verify(root_pem: &Path, chain_pem: &Path, check: Check<'_>) -> Result<bool> {
    let chain = fs::read_to_string(chain_pem)
        .with_context(|| format!("cannot read chain {}", chain_pem.display()))?;
    let certs = split_pem_certs(&chain);
    let Some((leaf, intermediates)) = certs.split_first() else {
        bail!("{} holds no PEM certificate", chain_pem.display());
    };
    ensure!(
        root_pem.is_file(),
        "root certificate {} does not exist",
        root_pem.display()
    );

    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let leaf_path = dir.path().join("leaf.pem");
    fs::write(&leaf_path, leaf).context("cannot write leaf.pem")?;
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(root_pem);
    if !intermediates.is_empty() {
        let inter_path = dir.path().join("intermediates.pem");
        fs::write(&inter_path, intermediates.concat()).context("cannot write intermediates")?;
        cmd.arg("-untrusted").arg(inter_path);
    }
    let what = match check {
        Check::Chain => String::new(),
        Check::Host(host) => {
            cmd.args(["-verify_hostname", host]);
            format!(" for host {host}")
        }
        Check::Crl(crl) => {
            cmd.arg("-crl_check").arg("-CRLfile").arg(crl);
            format!(" with CRL {}", crl.display())
        }
    };
    cmd.arg(&leaf_path);

    let out = run_with_timeout("openssl-verify", &mut cmd, dir.path(), OPENSSL_TIMEOUT)?;
    let expected = format!("{}: OK", leaf_path.display());
    if out.status.success() && out.stdout.lines().any(|l| l.trim() == expected) {
        return Ok(true);
    }
    // "error 23 at 0 depth lookup: certificate revoked" (X509_V_ERR_CERT_REVOKED).
    let revoked = format!("{}{}", out.stdout, out.stderr).contains("certificate revoked");
    if matches!(check, Check::Crl(_)) && revoked {
        return Ok(false);
    }
    bail!(
        "openssl verify rejected {} ({} intermediate(s)) against root {}{what}: {}\n{}",
        chain_pem.display(),
        intermediates.len(),
        root_pem.display(),
        out.status,
        out.tails()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_blocks_in_order() {
        let pem = format!("junk\n{BEGIN}\nAAA\n{END}\n\n{BEGIN}\nBBB\n{END}\ntrailer");
        let certs = split_pem_certs(&pem);
        assert_eq!(certs.len(), 2);
        assert!(certs[0].contains("AAA") && certs[1].contains("BBB"));
        assert!(certs
            .iter()
            .all(|c| c.starts_with(BEGIN) && c.ends_with(&format!("{END}\n"))));
        assert!(split_pem_certs("nothing").is_empty());
    }
}
