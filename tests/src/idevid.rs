//! A test manufacturer: a self-signed IDevID CA that issues IEEE 802.1AR device identities
//! (subject serialNumber = the device serial), made fresh for each test, and installed in a
//! [`CaServer`] as a trust anchor the way an operator does it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context as _, Result};

use crate::{ca_server_bin, CaServer};

/// A manufacturer's IDevID root.
pub struct Manufacturer {
    root_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Manufacturer {
    pub fn new(cn: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "Example Devices Test");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(9999, 1, 1);
        let root = p.self_signed(&key).expect("manufacturer root");
        Self {
            root_pem: root.pem(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// An IDevID certificate for `serial` over `public_key` (a key generated elsewhere, e.g. on
    /// the device under test).
    pub fn issue(
        &self,
        serial: &str,
        public_key: &impl rcgen::PublicKeyData,
    ) -> rcgen::Certificate {
        use rcgen::{CertificateParams, DnType, DnValue, IsCa, KeyUsagePurpose};
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "Example Devices Test");
        p.distinguished_name.push(DnType::CommonName, "PLC IDevID");
        p.distinguished_name.push(
            DnType::CustomDnType(vec![2, 5, 4, 5]),
            DnValue::PrintableString(serial.try_into().expect("printable serial")),
        );
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(9999, 12, 31);
        p.use_authority_key_identifier_extension = true;
        p.signed_by(public_key, &self.issuer).expect("IDevID")
    }

    /// Writes an IDevID for `serial` with a new key of `alg` into `dir`, and returns the chain
    /// and key files.
    pub fn idevid(
        &self,
        dir: &Path,
        serial: &str,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        let cert = self.issue(serial, &key);
        fs::create_dir_all(dir).expect("idevid dir");
        let chain = dir.join("idevid-chain.pem");
        let key_path = dir.join("idevid-key.pem");
        fs::write(&chain, cert.pem()).expect("write chain");
        fs::write(&key_path, key.serialize_pem()).expect("write key");
        (chain, key_path)
    }

    /// Installs the root with `ca-server trust-anchor add`, as an operator does, with the
    /// manufacturer's `assigner` (its devices then order `SERIAL/ASSIGNER`, SPEC §5.10.4).
    pub fn trust(&self, server: &CaServer, name: &str, assigner: &str) -> Result<()> {
        self.trust_with(server, name, assigner, &[])
    }

    /// [`Manufacturer::trust`], accepting the RFC 4108 hardware types `hw_types` too. Run again
    /// under the same name, it replaces the anchor's assigner and hardware types.
    pub fn trust_with(
        &self,
        server: &CaServer,
        name: &str,
        assigner: &str,
        hw_types: &[&str],
    ) -> Result<()> {
        let path = server.data_dir().join(format!("{name}-root.pem"));
        fs::write(&path, &self.root_pem).context("write manufacturer root")?;
        let mut cmd = Command::new(ca_server_bin()?);
        cmd.args([
            "trust-anchor",
            "add",
            "--name",
            name,
            "--assigner",
            assigner,
        ]);
        for t in hw_types {
            cmd.args(["--hw-type", t]);
        }
        cmd.arg(&path).arg("--data-dir").arg(server.data_dir());
        let out = cmd.output().context("ca-server trust-anchor add runs")?;
        ensure!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(name),
            "ca-server trust-anchor add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

/// The device-attest-01 attestation object (SPEC §5.10.2, format `iiot-idevid`, ES256) for
/// `key_authorization`, signed by the P-256 IDevID key, with `x5c` = the IDevID alone: what a
/// device sends as `attObj`.
pub fn attestation_object(
    idevid: &rcgen::Certificate,
    idevid_key: &rcgen::KeyPair,
    key_authorization: &str,
) -> Vec<u8> {
    use rcgen::SigningKey as _;
    /// A CBOR head (RFC 8949 §3): major type and argument, in the shortest form.
    fn head(out: &mut Vec<u8>, major: u8, n: usize) {
        let major = major << 5;
        match n {
            0..=23 => out.push(major | n as u8),
            24..=0xff => out.extend([major | 24, n as u8]),
            _ => {
                let n = u16::try_from(n).expect("attestation fields are under 64 KiB");
                out.push(major | 25);
                out.extend(n.to_be_bytes());
            }
        }
    }
    fn text(out: &mut Vec<u8>, s: &str) {
        head(out, 3, s.len());
        out.extend_from_slice(s.as_bytes());
    }
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        head(out, 2, b.len());
        out.extend_from_slice(b);
    }
    // rcgen signs ECDSA as an ASN.1 DER Ecdsa-Sig-Value, the form the statement carries.
    let sig = idevid_key
        .sign(key_authorization.as_bytes())
        .expect("IDevID signature");
    let mut out = Vec::new();
    head(&mut out, 5, 2);
    text(&mut out, "fmt");
    text(&mut out, "iiot-idevid");
    text(&mut out, "attStmt");
    head(&mut out, 5, 3);
    text(&mut out, "alg");
    out.push(0x26); // -7, ES256: major type 1, argument 6
    text(&mut out, "sig");
    bytes(&mut out, &sig);
    text(&mut out, "x5c");
    head(&mut out, 4, 1);
    bytes(&mut out, idevid.der());
    out
}
