//! Manufacturer trust anchors for device-attest-01 (SPEC §5.10.4): the CA certificates whose
//! IDevIDs (IEEE 802.1AR) this CA accepts as proof of a device's serial number.
//!
//! Each anchor is one PEM file `<data_dir>/trust-anchors/<name>.pem`, written atomically by
//! `ca-server trust-anchor add`. The server reads the directory on every verification instead
//! of caching it: attestations are rare (one per enrollment), the directory holds a handful of
//! certificates, and so an operator's change takes effect at once, with nothing to reload and
//! no stale state to reason about.
//!
//! A file is RFC 7468 text: explanatory lines, then one `CERTIFICATE` block. Of the explanatory
//! lines only `Assigner: <OID>` is read back (SPEC §5.10.4); `Subject:` and `SHA-256:` are
//! written for the operator's benefit. `openssl x509 -in <name>.pem` reads the files as they are.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

use super::identifier;
use crate::fsutil::{ensure_private_dir, write_atomic};
use crate::{Error, Result};

/// The directory under the data directory.
pub const DIR: &str = "trust-anchors";

/// Longest anchor name.
const NAME_MAX: usize = 64;

/// One configured manufacturer trust anchor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustAnchor {
    /// The file name without `.pem`.
    pub name: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The assigner OID this manufacturer's serial numbers are qualified with, if configured.
    pub assigner: Option<String>,
}

impl TrustAnchor {
    /// Parses the text of an anchor file and checks that it holds a usable CA certificate.
    pub fn from_file_text(name: &str, text: &[u8]) -> std::result::Result<Self, String> {
        let der = single_certificate(text)?;
        check_ca_certificate(&der)?;
        let mut assigner = None;
        for line in String::from_utf8_lossy(text).lines() {
            if line.starts_with("-----BEGIN") {
                break;
            }
            if let Some((key, value)) = line.split_once(':') {
                if key.trim().eq_ignore_ascii_case("assigner") {
                    let value = value.trim();
                    identifier::check_assigner(value)?;
                    assigner = Some(value.to_owned());
                }
            }
        }
        Ok(Self {
            name: name.to_owned(),
            der,
            assigner,
        })
    }

    /// SHA-256 of the certificate DER, as uppercase hex pairs joined by `:` (SPEC §2.3 form).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.der)
    }

    /// The subject, e.g. `CN=Example Devices IDevID Root CA, O=Example`.
    pub fn subject(&self) -> String {
        parse(&self.der)
            .map(|c| c.subject().to_string())
            .unwrap_or_default()
    }

    /// notAfter, Unix seconds.
    pub fn not_after(&self) -> i64 {
        parse(&self.der)
            .map(|c| c.validity().not_after.timestamp())
            .unwrap_or_default()
    }

    /// The file text: informational header lines, `Assigner:` if set, then the PEM block.
    fn file_text(&self) -> String {
        let mut text = format!(
            "Manufacturer trust anchor for iiot-acme device-attest-01 (SPEC 5.10.4)\n\
             Subject: {}\nSHA-256: {}\n",
            self.subject(),
            self.fingerprint()
        );
        if let Some(a) = &self.assigner {
            text.push_str(&format!("Assigner: {a}\n"));
        }
        text + &pem_encode(&self.der)
    }
}

/// The anchor directory of a data directory.
pub struct TrustAnchorStore {
    dir: PathBuf,
}

impl TrustAnchorStore {
    /// Anchors live in `<data_dir>/trust-anchors`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(DIR),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a CA certificate (PEM with exactly one `CERTIFICATE` block, or DER) as an anchor
    /// named `name` (default: the first 16 hex digits of its SHA-256 fingerprint), optionally
    /// bound to an assigner OID. Refuses anything that is not a usable, unexpired CA
    /// certificate, a name already in use, and a certificate that is already an anchor.
    ///
    /// Returns the anchor and the file written.
    pub fn add(
        &self,
        input: &[u8],
        name: Option<&str>,
        assigner: Option<&str>,
    ) -> std::result::Result<(TrustAnchor, PathBuf), String> {
        let der = if input.starts_with(&[0x30]) {
            input.to_vec()
        } else {
            single_certificate(input)?
        };
        check_ca_certificate(&der)?;
        let cert = parse(&der)?;
        let now = crate::app::now();
        let not_after = cert.validity().not_after.timestamp();
        if not_after < now {
            return Err(format!(
                "the certificate expired at {}",
                crate::app::rfc3339(not_after)
            ));
        }
        if let Some(a) = assigner {
            identifier::check_assigner(a)?;
        }
        let name = match name {
            Some(n) => n.to_owned(),
            None => fingerprint(&der).replace(':', "")[..16].to_ascii_lowercase(),
        };
        check_name(&name)?;
        let anchor = TrustAnchor {
            name,
            der,
            assigner: assigner.map(str::to_owned),
        };
        for (existing, loaded) in self.list().map_err(|e| e.to_string())? {
            if existing == anchor.name {
                return Err(format!(
                    "a trust anchor named {existing:?} exists already: choose another --name, or \
                     delete {} first",
                    self.path(&existing).display()
                ));
            }
            if loaded.is_ok_and(|a| a.der == anchor.der) {
                return Err(format!(
                    "this certificate is already a trust anchor, named {existing:?}"
                ));
            }
        }
        ensure_private_dir(&self.dir).map_err(|e| e.to_string())?;
        let path = self.path(&anchor.name);
        write_atomic(&path, anchor.file_text().as_bytes(), 0o644).map_err(|e| e.to_string())?;
        Ok((anchor, path))
    }

    /// Every anchor file by name, parsed or with the reason it cannot be used; sorted by name.
    /// A missing directory means no anchors.
    pub fn list(&self) -> Result<Vec<(String, std::result::Result<TrustAnchor, String>)>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Internal(format!(
                    "{} cannot be read: {e}",
                    self.dir.display()
                )))
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                Error::Internal(format!("{} cannot be read: {e}", self.dir.display()))
            })?;
            let file_name = entry.file_name();
            let Some(name) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(".pem"))
                .filter(|n| !n.starts_with('.'))
            else {
                // Temporary files of write_atomic start with "."; anything else is not ours.
                continue;
            };
            let loaded = fs::read(entry.path())
                .map_err(|e| format!("cannot be read: {e}"))
                .and_then(|text| TrustAnchor::from_file_text(name, &text));
            out.push((name.to_owned(), loaded));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The usable anchors. A file that cannot be used is left out and logged, so one broken
    /// file does not stop devices of every other manufacturer from enrolling.
    pub fn load(&self) -> Result<Vec<TrustAnchor>> {
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|(name, loaded)| {
                loaded
                    .map_err(|why| {
                        tracing::warn!(file = %self.path(&name).display(), %why, "trust anchor file ignored");
                    })
                    .ok()
            })
            .collect())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
}

/// Names become file names: keep them to a portable, unambiguous set.
fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "trust anchor name {name:?} must be 1-{NAME_MAX} characters of A-Z, a-z, 0-9, '-', \
             '_' and '.', not starting with '.'"
        ))
    }
}

fn parse(der: &[u8]) -> std::result::Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".to_owned()),
        Err(e) => Err(format!("not a DER X.509 certificate: {e}")),
    }
}

/// The one `CERTIFICATE` block of a PEM text.
fn single_certificate(text: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut blocks = Vec::new();
    for pem in Pem::iter_from_buffer(text) {
        blocks.push(pem.map_err(|e| format!("not valid PEM: {e}"))?);
    }
    match blocks.as_slice() {
        [one] if one.label == "CERTIFICATE" => Ok(one.contents.clone()),
        [one] => Err(format!(
            "the PEM block is a {:?}, not a CERTIFICATE",
            one.label
        )),
        [] => Err("no PEM CERTIFICATE block found".to_owned()),
        more => Err(format!(
            "{} PEM blocks found: give one CA certificate per trust anchor",
            more.len()
        )),
    }
}

/// What makes a certificate usable as an anchor, whatever its validity period: a v3 CA
/// certificate (basicConstraints cA TRUE) that may sign certificates (keyUsage keyCertSign, if
/// keyUsage is present) with a key this CA accepts.
pub(crate) fn check_ca_certificate(der: &[u8]) -> std::result::Result<(), String> {
    let cert = parse(der)?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| format!("basicConstraints: {e}"))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(format!(
            "{} is not a CA certificate (no basicConstraints cA TRUE)",
            cert.subject()
        ));
    }
    let key_usage = cert.key_usage().map_err(|e| format!("keyUsage: {e}"))?;
    if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(format!(
            "{}: its keyUsage does not allow keyCertSign",
            cert.subject()
        ));
    }
    crate::csr::public_key_from_spki(cert.public_key())
        .map_err(|e| format!("{}: {}", cert.subject(), e.to_problem().detail))?;
    Ok(())
}

/// SHA-256 as uppercase hex pairs joined by `:`.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn pem_encode(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = "-----BEGIN CERTIFICATE-----\n".to_owned();
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out + "-----END CERTIFICATE-----\n"
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

    use super::*;

    fn ca_cert(cn: &str) -> rcgen::Certificate {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.not_after = rcgen::date_time_ymd(9999, 12, 31);
        p.self_signed(&KeyPair::generate().expect("key"))
            .expect("cert")
    }

    #[test]
    fn add_list_and_reload_with_assigner() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = TrustAnchorStore::new(tmp.path());
        assert!(store.load().expect("empty").is_empty());

        let root = ca_cert("Example IDevID Root");
        let (anchor, path) = store
            .add(
                root.pem().as_bytes(),
                Some("example"),
                Some("1.3.6.1.4.1.32473"),
            )
            .expect("added");
        assert_eq!(path, tmp.path().join("trust-anchors/example.pem"));
        assert_eq!(anchor.subject(), "CN=Example IDevID Root");
        assert_eq!(anchor.fingerprint().len(), 95);
        let text = fs::read_to_string(&path).expect("file");
        assert!(text.contains("Assigner: 1.3.6.1.4.1.32473\n"), "{text}");

        // DER input and the default name.
        let other = ca_cert("Other Root");
        let (anchor2, _) = store.add(other.der(), None, None).expect("added");
        assert_eq!(anchor2.name.len(), 16);

        let loaded = store.load().expect("load");
        assert_eq!(loaded.len(), 2);
        let example = loaded
            .iter()
            .find(|a| a.name == "example")
            .expect("example");
        assert_eq!(example.assigner.as_deref(), Some("1.3.6.1.4.1.32473"));
        assert_eq!(example.der, root.der().to_vec());

        // Duplicates by name and by certificate are refused.
        let err = store
            .add(root.pem().as_bytes(), Some("again"), None)
            .expect_err("same certificate");
        assert!(
            err.contains("already a trust anchor, named \"example\""),
            "{err}"
        );
        let err = store
            .add(ca_cert("Third").pem().as_bytes(), Some("example"), None)
            .expect_err("same name");
        assert!(err.contains("exists already"), "{err}");
    }

    #[test]
    fn refuses_what_cannot_be_an_anchor() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = TrustAnchorStore::new(tmp.path());
        let leaf = CertificateParams::new(vec!["device.example".to_owned()])
            .expect("params")
            .self_signed(&KeyPair::generate().expect("key"))
            .expect("cert");
        let err = store
            .add(leaf.pem().as_bytes(), None, None)
            .expect_err("not a CA");
        assert!(err.contains("is not a CA certificate"), "{err}");

        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let no_cert_sign = p
            .self_signed(&KeyPair::generate().expect("key"))
            .expect("cert");
        let err = store
            .add(no_cert_sign.pem().as_bytes(), None, None)
            .expect_err("no keyCertSign");
        assert!(err.contains("keyCertSign"), "{err}");

        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
        let expired = p
            .self_signed(&KeyPair::generate().expect("key"))
            .expect("cert");
        let err = store
            .add(expired.pem().as_bytes(), None, None)
            .expect_err("expired");
        assert!(err.contains("expired at 2002-01-01"), "{err}");

        let two = ca_cert("A").pem() + &ca_cert("B").pem();
        let err = store.add(two.as_bytes(), None, None).expect_err("bundle");
        assert!(err.contains("2 PEM blocks"), "{err}");
        assert!(store.add(b"nonsense", None, None).is_err());
        let err = store
            .add(ca_cert("C").pem().as_bytes(), Some("../x"), None)
            .expect_err("name");
        assert!(err.contains("must be 1-64 characters"), "{err}");
        let err = store
            .add(ca_cert("D").pem().as_bytes(), None, Some("1.2.x"))
            .expect_err("assigner");
        assert!(err.contains("not a dotted-decimal OID"), "{err}");
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn a_broken_file_is_listed_with_its_reason_and_skipped_by_load() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = TrustAnchorStore::new(tmp.path());
        store
            .add(ca_cert("Good").pem().as_bytes(), Some("good"), None)
            .expect("added");
        fs::write(store.dir().join("broken.pem"), "not a certificate").expect("write");
        fs::write(store.dir().join(".good.pem.1234.tmp"), "partial").expect("write");
        fs::write(store.dir().join("README"), "notes").expect("write");
        let list = store.list().expect("list");
        let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["broken", "good"]);
        assert!(list[0].1.is_err());
        let loaded = store.load().expect("load");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].name, "good");
    }
}
