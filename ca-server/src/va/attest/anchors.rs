//! Manufacturer trust anchors for device-attest-01 (SPEC §5.10.4): the CA certificates whose
//! IDevIDs (IEEE 802.1AR) this CA accepts as proof of a device's serial number.
//!
//! With the embedded store each anchor is one PEM file `<data_dir>/trust-anchors/<name>.pem`,
//! written atomically by `ca-server trust-anchor add` (or the console). With a store that
//! several CA instances share (PostgreSQL), each anchor is a record of that store
//! ([`Table::TrustAnchors`], the name its key, the same file text its value), which the command
//! reaches through the CA's configuration, so an anchor added at one instance is trusted by
//! every instance; anchor files found in the data directory at start are copied into it once
//! ([`TrustAnchorStore::in_store`]). Either way [`TrustAnchorStore`] reads the anchors on every
//! verification instead of caching them: attestations are rare (one per enrollment), there is a
//! handful of anchors, and so an operator's change takes effect at once, with nothing to reload
//! and no stale state to reason about.
//!
//! An anchor is RFC 7468 text: explanatory lines, then one `CERTIFICATE` block. Of the
//! explanatory lines the server reads back `Assigner: <OID>` (exactly one) and
//! `Hardware-Type: <OID>` (any number); `Subject:` and `SHA-256:` are written for the operator's
//! benefit. `openssl x509 -in <name>.pem` reads the files as they are.
//!
//! Why every anchor needs an assigner: a serial number is unique only within its manufacturer
//! (and, for RFC 4108 hardware module names, its product type). Two manufacturers may both ship
//! a device "0042", and the certificate's identity must tell them apart, so a device proves
//! `serial/assigner`, and the assigner is the one the operator gave its manufacturer's anchor
//! (SPEC §5.10.3 check 10, §10.8). An anchor without one is listed as unusable and skipped.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

use crate::fsutil::{ensure_private_dir, write_atomic};
use crate::storage::{Db, Table};
use crate::{Error, Result};

/// The directory under the data directory.
pub const DIR: &str = "trust-anchors";
/// The extension an anchor file gets once it is copied into the shared store
/// (`<name>.pem` → `<name>.imported`).
const IMPORTED: &str = "imported";

/// Longest anchor name.
const NAME_MAX: usize = 64;

/// The explanatory line naming the assigner.
const ASSIGNER_LINE: &str = "Assigner";
/// The explanatory line naming an accepted hardware type (RFC 4108 hwType).
const HW_TYPE_LINE: &str = "Hardware-Type";

/// Why a certificate or an anchor file cannot be a trust anchor, or why adding one failed;
/// `Display` is the reason, as the operator reads it from `trust-anchor add` and `list`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AnchorError(String);

/// One configured manufacturer trust anchor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustAnchor {
    /// The file name without `.pem`.
    pub name: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The assigner OID this manufacturer's serial numbers are qualified with: a device proves
    /// `serial/assigner` through this anchor and no other value (SPEC §5.10.3 check 10).
    pub assigner: String,
    /// The RFC 4108 hardware types (hwType OIDs) whose IDevIDs this anchor accepts, in the
    /// order configured. An IDevID naming a hwType outside this list is refused (SPEC §5.10.3
    /// check 11); one naming none is not affected.
    pub hw_types: Vec<String>,
}

impl TrustAnchor {
    /// An anchor from its parts, with the checks a file gets: a usable CA certificate, an
    /// assigner (required), and OIDs in dotted-decimal form.
    pub fn from_parts(
        name: &str,
        der: Vec<u8>,
        assigner: Option<&str>,
        hw_types: &[&str],
    ) -> std::result::Result<Self, AnchorError> {
        check_ca_certificate(&der)?;
        let assigner = assigner.ok_or_else(|| {
            AnchorError(
                "it names no assigner, so it is not used: serial numbers are unique only per \
                 manufacturer, and devices prove serial/assigner with the assigner of their \
                 manufacturer's anchor"
                    .to_owned(),
            )
        })?;
        crate::der::names::check_assigner(assigner)
            .map_err(|e| AnchorError(format!("assigner: {e}")))?;
        let mut types: Vec<String> = Vec::new();
        for t in hw_types {
            crate::der::names::check_assigner(t)
                .map_err(|e| AnchorError(format!("hardware type: {e}")))?;
            if !types.iter().any(|known| known == t) {
                types.push((*t).to_owned());
            }
        }
        Ok(Self {
            name: name.to_owned(),
            der,
            assigner: assigner.to_owned(),
            hw_types: types,
        })
    }

    /// Parses the text of an anchor file (SPEC §5.10.4) and checks that it holds a usable CA
    /// certificate and an assigner.
    pub fn from_file_text(name: &str, text: &[u8]) -> std::result::Result<Self, AnchorError> {
        let file = AnchorFile::parse(text)?;
        let hw_types: Vec<&str> = file.hw_types.iter().map(String::as_str).collect();
        Self::from_parts(name, file.der, file.assigner.as_deref(), &hw_types)
    }

    /// SHA-256 of the certificate DER, as uppercase hex pairs joined by `:` (SPEC §2.3 form).
    pub fn fingerprint(&self) -> String {
        crate::wire::fingerprint(&self.der)
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

    /// The accepted hardware types for a listing: the OIDs joined by `,`, or `none`.
    pub fn describe_hw_types(&self) -> String {
        if self.hw_types.is_empty() {
            "none".to_owned()
        } else {
            self.hw_types.join(",")
        }
    }

    /// The file text: informational header lines, `Assigner:`, one `Hardware-Type:` per
    /// accepted type, then the PEM block.
    fn file_text(&self) -> String {
        let mut text = format!(
            "Manufacturer trust anchor for iiot-acme device-attest-01 (SPEC 5.10.4)\n\
             Subject: {}\nSHA-256: {}\n{ASSIGNER_LINE}: {}\n",
            self.subject(),
            self.fingerprint(),
            self.assigner
        );
        for t in &self.hw_types {
            text.push_str(&format!("{HW_TYPE_LINE}: {t}\n"));
        }
        text + &crate::der::pem_encode("CERTIFICATE", &self.der)
    }
}

/// What an anchor file says, before the checks that make it usable.
struct AnchorFile {
    der: Vec<u8>,
    assigner: Option<String>,
    hw_types: Vec<String>,
}

impl AnchorFile {
    /// The certificate and the `Assigner:` and `Hardware-Type:` lines before it. Keys are
    /// matched without regard to case; other lines are the operator's.
    fn parse(text: &[u8]) -> std::result::Result<Self, AnchorError> {
        let der = single_certificate(text)?;
        let mut assigner = None;
        let mut hw_types = Vec::new();
        for line in String::from_utf8_lossy(text).lines() {
            if line.starts_with("-----BEGIN") {
                break;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            if key.eq_ignore_ascii_case(ASSIGNER_LINE) {
                if assigner.is_some() {
                    return Err(AnchorError(format!(
                        "it has more than one {ASSIGNER_LINE}: line; an anchor has one assigner"
                    )));
                }
                assigner = Some(value.to_owned());
            } else if key.eq_ignore_ascii_case(HW_TYPE_LINE) {
                hw_types.push(value.to_owned());
            }
        }
        Ok(Self {
            der,
            assigner,
            hw_types,
        })
    }
}

/// What `trust-anchor add` did.
#[derive(Debug)]
pub struct Added {
    /// The anchor as written.
    pub anchor: TrustAnchor,
    /// The file; `None` when the anchor is a record of the shared store.
    pub path: Option<PathBuf>,
    /// Whether an anchor of the same name and certificate was there before and its settings
    /// (assigner, hardware types) were replaced.
    pub replaced: bool,
}

/// Where the anchors are: the anchor directory of a data directory, or the shared store.
pub struct TrustAnchorStore {
    dir: PathBuf,
    /// The store several CA instances share; `None`: files in `dir`.
    shared: Option<Db>,
}

impl TrustAnchorStore {
    /// Anchors live in `<data_dir>/trust-anchors`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(DIR),
            shared: None,
        }
    }

    /// Anchors live in `db`, which several CA instances share. Anchor files found in
    /// `<data_dir>/trust-anchors` (made before the CA moved to the shared store) are copied
    /// into it as they are; an anchor already in the store under that name is kept as it is
    /// there. Each file is then renamed `<name>.imported`, so it is copied once: an anchor
    /// removed from the store stays removed.
    pub fn in_store(data_dir: &Path, db: Db) -> Result<Self> {
        let files = Self::new(data_dir);
        let mut imported = 0;
        for name in files.names()? {
            let path = files.path(&name);
            let text = match fs::read(&path) {
                Ok(text) => text,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "trust anchor file cannot be read; not copied into the shared store");
                    continue;
                }
            };
            if db.store().compare_and_swap(
                Table::TrustAnchors,
                name.as_bytes(),
                None,
                Some(&text),
            )? {
                imported += 1;
            }
            // Out of the way, so that an anchor removed from the store later does not come back
            // from this file at the next start; kept for the operator's reference.
            let moved = path.with_extension(IMPORTED);
            if let Err(e) = fs::rename(&path, &moved) {
                tracing::warn!(file = %path.display(), error = %e, "trust anchor file copied into the shared store but not renamed; it is copied again at each start");
            }
        }
        if imported > 0 {
            tracing::info!(imported, dir = %files.dir.display(), "trust anchor files copied into the shared store; the store's copy is the one in force from now on");
        }
        Ok(Self {
            shared: Some(db),
            ..files
        })
    }

    /// Removes the anchor `name`, so devices whose IDevIDs chain only to it no longer enroll by
    /// attestation; `Ok(false)` when there is no such anchor. Certificates already issued stay
    /// valid: revoke them separately.
    pub fn remove(&self, name: &str) -> std::result::Result<bool, AnchorError> {
        check_name(name)?;
        let failed = |e: Error| AnchorError(e.to_string());
        match &self.shared {
            Some(db) => db.remove(Table::TrustAnchors, name).map_err(failed),
            None => match fs::remove_file(self.path(name)) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(AnchorError(format!(
                    "{} cannot be removed: {e}",
                    self.path(name).display()
                ))),
            },
        }
    }

    /// The directory of the anchor files (with the shared store, of those copied in at start).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a CA certificate (PEM with exactly one `CERTIFICATE` block, or DER) as an anchor
    /// named `name` (default: the first 16 hex digits of its SHA-256 fingerprint), bound to the
    /// manufacturer's `assigner` OID and accepting the RFC 4108 hardware types `hw_types`.
    /// Refuses anything that is not a usable, unexpired CA certificate, a name in use by
    /// another certificate, and a certificate that is already an anchor under another name.
    /// In the shared store the anchor is written by compare-and-swap against what was read,
    /// so of two instances adding one name at once, the second sees the first's anchor.
    ///
    /// Adding the certificate of an existing anchor under the same name replaces that anchor's
    /// settings: this is how an operator gives an anchor without an assigner its assigner,
    /// or changes the hardware types, and the anchor file itself may be the input.
    pub fn add(
        &self,
        input: &[u8],
        name: Option<&str>,
        assigner: &str,
        hw_types: &[&str],
    ) -> std::result::Result<Added, AnchorError> {
        let der = certificate_der(input)?;
        check_ca_certificate(&der)?;
        let cert = parse(&der)?;
        let now = crate::types::now();
        let not_after = cert.validity().not_after.timestamp();
        if not_after < now {
            return Err(AnchorError(format!(
                "the certificate expired at {}",
                crate::types::rfc3339(not_after)
            )));
        }
        let name = match name {
            Some(n) => n.to_owned(),
            None => crate::wire::fingerprint(&der).replace(':', "")[..16].to_ascii_lowercase(),
        };
        check_name(&name)?;
        let anchor = TrustAnchor::from_parts(&name, der, Some(assigner), hw_types)?;
        let failed = |e: Error| AnchorError(e.to_string());
        loop {
            let mut replaced = None;
            for existing in self.names().map_err(failed)? {
                let raw = self.read(&existing).map_err(failed)?.ok();
                let held = raw
                    .as_deref()
                    .and_then(|text| AnchorFile::parse(text).ok())
                    .map(|f| f.der);
                let same_certificate = held.as_deref() == Some(anchor.der.as_slice());
                if existing == anchor.name {
                    if !same_certificate {
                        return Err(AnchorError(format!(
                            "a trust anchor named {existing:?} exists already and does not hold \
                             this certificate: {}",
                            match &self.shared {
                                Some(_) => "choose another --name".to_owned(),
                                None => format!(
                                    "choose another --name, or delete {} first",
                                    self.path(&existing).display()
                                ),
                            }
                        )));
                    }
                    replaced = raw;
                } else if same_certificate {
                    return Err(AnchorError(format!(
                        "this certificate is already a trust anchor, named {existing:?}: to \
                         change its assigner or hardware types, add it again with --name \
                         {existing}"
                    )));
                }
            }
            let text = anchor.file_text();
            let path = match &self.shared {
                Some(db) => {
                    let written = db
                        .store()
                        .compare_and_swap(
                            Table::TrustAnchors,
                            anchor.name.as_bytes(),
                            replaced.as_deref(),
                            Some(text.as_bytes()),
                        )
                        .map_err(failed)?;
                    if !written {
                        // Another instance wrote this name meanwhile: judge against its anchor.
                        continue;
                    }
                    None
                }
                None => {
                    ensure_private_dir(&self.dir).map_err(failed)?;
                    let path = self.path(&anchor.name);
                    write_atomic(&path, text.as_bytes(), 0o644).map_err(failed)?;
                    Some(path)
                }
            };
            return Ok(Added {
                anchor,
                path,
                replaced: replaced.is_some(),
            });
        }
    }

    /// Every anchor by name, parsed or with the reason it cannot be used; sorted by name.
    /// A missing directory means no anchors.
    pub fn list(&self) -> Result<Vec<(String, std::result::Result<TrustAnchor, AnchorError>)>> {
        let mut out = Vec::new();
        for name in self.names()? {
            let loaded = self.read(&name)?.and_then(|text| {
                let file = AnchorFile::parse(&text)?;
                if file.assigner.is_none() {
                    return Err(self.no_assigner(&name));
                }
                TrustAnchor::from_file_text(&name, &text)
            });
            out.push((name, loaded));
        }
        Ok(out)
    }

    /// The usable anchors. An anchor that cannot be used is left out and logged, so one broken
    /// anchor does not stop devices of every other manufacturer from enrolling.
    pub fn load(&self) -> Result<Vec<TrustAnchor>> {
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|(name, loaded)| {
                loaded
                    .map_err(|why| {
                        tracing::warn!(anchor = %self.describe(&name), %why, "trust anchor ignored");
                    })
                    .ok()
            })
            .collect())
    }

    /// The names of the anchors, sorted.
    fn names(&self) -> Result<Vec<String>> {
        if let Some(db) = &self.shared {
            return db.keys_with_prefix(Table::TrustAnchors, "");
        }
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
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                Error::Internal(format!("{} cannot be read: {e}", self.dir.display()))
            })?;
            let file_name = entry.file_name();
            // Temporary files of write_atomic start with "."; anything else is not ours.
            if let Some(name) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(".pem"))
                .filter(|n| !n.starts_with('.'))
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// The text of the anchor `name`: `Err` for the store when it cannot be read, the inner
    /// `Err` when a file cannot be read (that anchor is unusable, the others are not).
    fn read(&self, name: &str) -> Result<std::result::Result<Vec<u8>, AnchorError>> {
        if let Some(db) = &self.shared {
            return Ok(db
                .store()
                .get(Table::TrustAnchors, name.as_bytes())?
                .ok_or_else(|| AnchorError("was removed while it was read".to_owned())));
        }
        Ok(fs::read(self.path(name)).map_err(|e| AnchorError(format!("cannot be read: {e}"))))
    }

    /// Where the anchor `name` is, for the log.
    fn describe(&self, name: &str) -> String {
        match &self.shared {
            Some(_) => format!("{name} (shared store)"),
            None => self.path(name).display().to_string(),
        }
    }

    /// Why an anchor without an `Assigner:` line is not used, and the command that fixes it.
    fn no_assigner(&self, name: &str) -> AnchorError {
        let data_dir = self.dir.parent().unwrap_or(&self.dir);
        let path = self.path(name);
        let (reach, input) = match &self.shared {
            Some(_) if path.exists() => ("--config FILE".to_owned(), path.display().to_string()),
            Some(_) => ("--config FILE".to_owned(), "CERTIFICATE-FILE".to_owned()),
            None => (
                format!("--data-dir {}", data_dir.display()),
                path.display().to_string(),
            ),
        };
        AnchorError(format!(
            "no {ASSIGNER_LINE}: line, so it is not used (serial numbers are unique only per \
             manufacturer, and devices prove serial/assigner). Add it again with its \
             manufacturer's assigner OID: ca-server trust-anchor add {reach} --name {name} \
             --assigner OID [--hw-type OID]... {input}"
        ))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
}

/// Names become file names: keep them to a portable, unambiguous set.
fn check_name(name: &str) -> std::result::Result<(), AnchorError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(AnchorError(format!(
            "trust anchor name {name:?} must be 1-{NAME_MAX} characters of A-Z, a-z, 0-9, '-', \
             '_' and '.', not starting with '.'"
        )))
    }
}

fn parse(der: &[u8]) -> std::result::Result<X509Certificate<'_>, AnchorError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(AnchorError(
            "trailing bytes after the certificate".to_owned(),
        )),
        Err(e) => Err(AnchorError(format!("not a DER X.509 certificate: {e}"))),
    }
}

/// The one `CERTIFICATE` block of a PEM text.
fn single_certificate(text: &[u8]) -> std::result::Result<Vec<u8>, AnchorError> {
    let mut blocks = Vec::new();
    for pem in Pem::iter_from_buffer(text) {
        blocks.push(pem.map_err(|e| AnchorError(format!("not valid PEM: {e}")))?);
    }
    match blocks.as_slice() {
        [one] if one.label == "CERTIFICATE" => Ok(one.contents.clone()),
        [one] => Err(AnchorError(format!(
            "the PEM block is a {:?}, not a CERTIFICATE",
            one.label
        ))),
        [] => Err(AnchorError("no PEM CERTIFICATE block found".to_owned())),
        more => Err(AnchorError(format!(
            "{} PEM blocks found: give one CA certificate per trust anchor",
            more.len()
        ))),
    }
}

/// What makes a certificate usable as an anchor, whatever its validity period: a v3 CA
/// certificate (basicConstraints cA TRUE) that may sign certificates (keyUsage keyCertSign, if
/// keyUsage is present) with a key this CA accepts.
pub(crate) fn check_ca_certificate(der: &[u8]) -> std::result::Result<(), AnchorError> {
    let cert = parse(der)?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| AnchorError(format!("basicConstraints: {e}")))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(AnchorError(format!(
            "{} is not a CA certificate (no basicConstraints cA TRUE)",
            cert.subject()
        )));
    }
    let key_usage = cert
        .key_usage()
        .map_err(|e| AnchorError(format!("keyUsage: {e}")))?;
    if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(AnchorError(format!(
            "{}: its keyUsage does not allow keyCertSign",
            cert.subject()
        )));
    }
    crate::key::policy::public_key_from_spki(cert.public_key())
        .map_err(|e| AnchorError(format!("{}: {}", cert.subject(), e.to_problem().detail)))?;
    Ok(())
}

/// Checks that `input` (PEM or DER) is the certificate whose SHA-256 fingerprint the
/// manufacturer published out of band (`AB:CD:…` or plain hex), before it is trusted.
/// `given_as` says where the operator gave it, for the message (e.g. `with --sha256`).
pub fn check_published_fingerprint(
    input: &[u8],
    published: &str,
    given_as: &str,
) -> std::result::Result<(), AnchorError> {
    let expected =
        crate::wire::parse_fingerprint(published).map_err(|e| AnchorError(e.to_string()))?;
    let got = crate::wire::fingerprint(&certificate_der(input)?);
    if crate::wire::parse_fingerprint(&got).map_err(|e| AnchorError(e.to_string()))? != expected {
        return Err(AnchorError(format!(
            "its SHA-256 fingerprint is {got}, not the one given {given_as}: this is not the \
             certificate the manufacturer published"
        )));
    }
    Ok(())
}

/// The certificate DER of an anchor input: DER as it is, or PEM with exactly one
/// `CERTIFICATE` block.
pub fn certificate_der(input: &[u8]) -> std::result::Result<Vec<u8>, AnchorError> {
    if input.starts_with(&[0x30]) {
        Ok(input.to_vec())
    } else {
        single_certificate(input)
    }
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

    const PEN: &str = "1.3.6.1.4.1.32473";

    #[test]
    fn add_list_and_reload_with_assigner_and_hardware_types() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = TrustAnchorStore::new(tmp.path());
        assert!(store.load().expect("empty").is_empty());

        let root = ca_cert("Example IDevID Root");
        let added = store
            .add(
                root.pem().as_bytes(),
                Some("example"),
                PEN,
                &[
                    "1.3.6.1.4.1.32473.1",
                    "1.3.6.1.4.1.32473.2",
                    "1.3.6.1.4.1.32473.1",
                ],
            )
            .expect("added");
        assert!(!added.replaced);
        let path = added.path.expect("a file");
        assert_eq!(path, tmp.path().join("trust-anchors/example.pem"));
        assert_eq!(added.anchor.subject(), "CN=Example IDevID Root");
        assert_eq!(added.anchor.fingerprint().len(), 95);
        let text = fs::read_to_string(&path).expect("file");
        assert!(
            text.contains(
                "Assigner: 1.3.6.1.4.1.32473\nHardware-Type: 1.3.6.1.4.1.32473.1\n\
                 Hardware-Type: 1.3.6.1.4.1.32473.2\n-----BEGIN CERTIFICATE-----"
            ),
            "{text}"
        );

        // DER input and the default name.
        let other = ca_cert("Other Root");
        let added2 = store.add(other.der(), None, "2.999.7", &[]).expect("added");
        assert_eq!(added2.anchor.name.len(), 16);
        assert_eq!(added2.anchor.describe_hw_types(), "none");

        let loaded = store.load().expect("load");
        assert_eq!(loaded.len(), 2);
        let example = loaded
            .iter()
            .find(|a| a.name == "example")
            .expect("example");
        assert_eq!(example.assigner, PEN);
        assert_eq!(
            example.hw_types,
            ["1.3.6.1.4.1.32473.1", "1.3.6.1.4.1.32473.2"]
        );
        assert_eq!(example.der, root.der().to_vec());

        // Duplicates by name and by certificate are refused.
        let err = store
            .add(root.pem().as_bytes(), Some("again"), PEN, &[])
            .expect_err("same certificate")
            .to_string();
        assert!(
            err.contains("already a trust anchor, named \"example\"")
                && err.contains("--name example"),
            "{err}"
        );
        let err = store
            .add(ca_cert("Third").pem().as_bytes(), Some("example"), PEN, &[])
            .expect_err("same name")
            .to_string();
        assert!(err.contains("exists already"), "{err}");

        // The same certificate under the same name replaces the settings; the anchor file
        // itself is a valid input.
        let again = store
            .add(text.as_bytes(), Some("example"), "2.999.8", &[])
            .expect("replaced");
        assert!(again.replaced);
        let loaded = store.load().expect("load");
        let example = loaded
            .iter()
            .find(|a| a.name == "example")
            .expect("example");
        assert_eq!(
            (example.assigner.as_str(), example.hw_types.len()),
            ("2.999.8", 0)
        );
    }

    /// With a shared store: anchor files are copied in at start, and two instances (two
    /// handles on one store) see one set of anchors; a name in use stays refused at the other.
    /// A removed anchor is gone for every instance, and stays gone when an instance whose
    /// data directory held its file starts again: the file was copied once and set aside.
    #[test]
    fn a_removed_anchor_stays_removed_in_the_shared_store_and_in_files() {
        let db = Db::new(std::sync::Arc::new(crate::storage::MemoryStore::default()));
        let dir = tempfile::tempdir().expect("dir");
        let root = ca_cert("Example IDevID Root");
        let files = TrustAnchorStore::new(dir.path());
        files
            .add(root.pem().as_bytes(), Some("example"), PEN, &[])
            .expect("file anchor");
        let shared = TrustAnchorStore::in_store(dir.path(), db.clone()).expect("import");
        assert!(dir.path().join(DIR).join("example.imported").exists());
        assert!(!files.path("example").exists(), "set aside");
        assert_eq!(shared.load().expect("load").len(), 1);
        assert!(shared.remove("example").expect("remove"));
        assert!(!shared.remove("example").expect("again"), "nothing left");
        let restarted = TrustAnchorStore::in_store(dir.path(), db).expect("restart");
        assert!(restarted.load().expect("load").is_empty(), "not back");
        assert!(restarted.remove("../x").is_err(), "names are checked");

        files
            .add(root.pem().as_bytes(), Some("example"), PEN, &[])
            .expect("file anchor");
        assert!(files.remove("example").expect("remove"));
        assert!(files.load().expect("load").is_empty());
        assert!(!files.remove("example").expect("again"));
    }

    #[test]
    fn anchors_in_a_shared_store_are_the_same_for_every_instance() {
        let db = Db::new(std::sync::Arc::new(crate::storage::MemoryStore::default()));
        let (dir_a, dir_b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let root = ca_cert("Example IDevID Root");
        let file = TrustAnchorStore::new(dir_a.path())
            .add(root.pem().as_bytes(), Some("example"), PEN, &[])
            .expect("file anchor");
        let text = fs::read(file.path.expect("file")).expect("read");
        let a = TrustAnchorStore::in_store(dir_a.path(), db.clone()).expect("a");
        let b = TrustAnchorStore::in_store(dir_b.path(), db.clone()).expect("b");
        assert_eq!(
            db.store()
                .get(Table::TrustAnchors, b"example")
                .expect("get")
                .as_deref(),
            Some(text.as_slice()),
            "the file text, as it is"
        );
        let loaded = b.load().expect("load");
        assert_eq!(loaded.len(), 1);
        assert_eq!(
            (loaded[0].name.as_str(), loaded[0].der.as_slice()),
            ("example", root.der().as_ref())
        );

        let err = b
            .add(ca_cert("Other").pem().as_bytes(), Some("example"), PEN, &[])
            .expect_err("name in use")
            .to_string();
        assert!(
            err.contains("exists already") && !err.contains("delete"),
            "{err}"
        );
        let replaced = b
            .add(root.pem().as_bytes(), Some("example"), "2.999.8", &[])
            .expect("replaced");
        assert!(replaced.replaced && replaced.path.is_none());
        assert_eq!(a.load().expect("load")[0].assigner, "2.999.8");
        let other = a
            .add(ca_cert("Second").pem().as_bytes(), Some("second"), PEN, &[])
            .expect("added");
        assert!(!other.replaced);
        let names: Vec<String> = b
            .list()
            .expect("list")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["example", "second"]);
        assert!(
            !dir_b.path().join(DIR).exists(),
            "no files beside a shared store"
        );
    }

    /// Two instances adding different certificates under one name at the same moment: one
    /// anchor is written, the other add is refused, never overwritten.
    #[test]
    fn of_two_instances_adding_one_name_at_once_one_wins() {
        let db = Db::new(std::sync::Arc::new(crate::storage::MemoryStore::default()));
        let dirs = [
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        ];
        let stores: Vec<TrustAnchorStore> = dirs
            .iter()
            .map(|d| TrustAnchorStore::in_store(d.path(), db.clone()).expect("store"))
            .collect();
        for round in 0..20 {
            let name = format!("race-{round}");
            let certs = [ca_cert("One").pem(), ca_cert("Two").pem()];
            let outcomes = crate::testutil::race(2, |i| {
                stores[i]
                    .add(certs[i].as_bytes(), Some(&name), PEN, &[])
                    .is_ok()
            });
            assert_eq!(
                outcomes.iter().filter(|ok| **ok).count(),
                1,
                "round {round}"
            );
            let winner = usize::from(outcomes[1]);
            let held = stores[0].load().expect("load");
            let held = held.iter().find(|a| a.name == name).expect("held");
            assert_eq!(
                held.der,
                certificate_der(certs[winner].as_bytes()).expect("der"),
                "round {round}: the winner's certificate"
            );
        }
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
            .add(leaf.pem().as_bytes(), None, PEN, &[])
            .expect_err("not a CA")
            .to_string();
        assert!(err.contains("is not a CA certificate"), "{err}");

        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let no_cert_sign = p
            .self_signed(&KeyPair::generate().expect("key"))
            .expect("cert");
        let err = store
            .add(no_cert_sign.pem().as_bytes(), None, PEN, &[])
            .expect_err("no keyCertSign")
            .to_string();
        assert!(err.contains("keyCertSign"), "{err}");

        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
        let expired = p
            .self_signed(&KeyPair::generate().expect("key"))
            .expect("cert");
        let err = store
            .add(expired.pem().as_bytes(), None, PEN, &[])
            .expect_err("expired")
            .to_string();
        assert!(err.contains("expired at 2002-01-01"), "{err}");

        let two = ca_cert("A").pem() + &ca_cert("B").pem();
        let err = store
            .add(two.as_bytes(), None, PEN, &[])
            .expect_err("bundle")
            .to_string();
        assert!(err.contains("2 PEM blocks"), "{err}");
        assert!(store.add(b"nonsense", None, PEN, &[]).is_err());
        let err = store
            .add(ca_cert("C").pem().as_bytes(), Some("../x"), PEN, &[])
            .expect_err("name")
            .to_string();
        assert!(err.contains("must be 1-64 characters"), "{err}");
        let err = store
            .add(ca_cert("D").pem().as_bytes(), None, "1.2.x", &[])
            .expect_err("assigner")
            .to_string();
        assert!(
            err.contains("assigner: \"1.2.x\" is not a dotted-decimal OID"),
            "{err}"
        );
        let err = store
            .add(
                ca_cert("E").pem().as_bytes(),
                None,
                PEN,
                &["1.3.6.1.4.1.32473.1", "x"],
            )
            .expect_err("hardware type")
            .to_string();
        assert!(
            err.contains("hardware type: \"x\" is not a dotted-decimal OID"),
            "{err}"
        );
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn a_broken_file_is_listed_with_its_reason_and_skipped_by_load() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = TrustAnchorStore::new(tmp.path());
        store
            .add(ca_cert("Good").pem().as_bytes(), Some("good"), PEN, &[])
            .expect("added");
        fs::write(store.dir().join("broken.pem"), "not a certificate").expect("write");
        fs::write(store.dir().join(".good.pem.1234.tmp"), "partial").expect("write");
        fs::write(store.dir().join("README"), "notes").expect("write");
        let twice = format!(
            "Assigner: {PEN}\nAssigner: 2.999.1\n{}",
            ca_cert("Twice").pem()
        );
        fs::write(store.dir().join("twice.pem"), twice).expect("write");
        let bad_type = format!(
            "Assigner: {PEN}\nHardware-Type: 1.2.3.\n{}",
            ca_cert("Bad type").pem()
        );
        fs::write(store.dir().join("bad-type.pem"), bad_type).expect("write");
        let list = store.list().expect("list");
        let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["bad-type", "broken", "good", "twice"]);
        let why = |i: usize| list[i].1.clone().expect_err("unusable").to_string();
        assert!(why(0).contains("hardware type: \"1.2.3.\""), "{}", why(0));
        assert!(why(1).contains("PEM"), "{}", why(1));
        assert!(
            why(3).contains("more than one Assigner: line"),
            "{}",
            why(3)
        );
        let loaded = store.load().expect("load");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].name, "good");
    }

    /// A file without an `Assigner:` line, as `trust-anchor add` wrote them when the assigner
    /// was optional: listed as unusable with the command that fixes it, skipped by `load`, and
    /// fixed by adding the same certificate again under the same name with an assigner.
    #[test]
    fn an_anchor_file_without_an_assigner_is_not_used_until_it_is_added_again() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = TrustAnchorStore::new(tmp.path());
        fs::create_dir_all(store.dir()).expect("dir");
        let root = ca_cert("Legacy Root");
        let path = store.dir().join("legacy.pem");
        let text = format!(
            "Manufacturer trust anchor for iiot-acme device-attest-01 (SPEC 5.10.4)\n\
             Subject: CN=Legacy Root\n{}",
            root.pem()
        );
        fs::write(&path, &text).expect("write");

        let list = store.list().expect("list");
        assert_eq!(list.len(), 1);
        let why = list[0].1.clone().expect_err("unusable").to_string();
        assert!(
            why.starts_with("no Assigner: line, so it is not used")
                && why.contains(&format!(
                    "ca-server trust-anchor add --data-dir {} --name legacy --assigner OID",
                    tmp.path().display()
                ))
                && why.ends_with(&path.display().to_string()),
            "{why}"
        );
        assert!(store.load().expect("load").is_empty());
        assert!(TrustAnchor::from_file_text("legacy", text.as_bytes())
            .expect_err("no assigner")
            .to_string()
            .contains("names no assigner"));

        // Adding the certificate under another name would leave two files for one anchor.
        let err = store
            .add(root.pem().as_bytes(), Some("renamed"), PEN, &[])
            .expect_err("another name")
            .to_string();
        assert!(err.contains("--name legacy"), "{err}");
        // The fix the listing names: the file itself as input, the same name, an assigner.
        let added = store
            .add(text.as_bytes(), Some("legacy"), PEN, &[])
            .expect("fixed");
        assert!(added.replaced);
        let loaded = store.load().expect("load");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].assigner, PEN);
    }
}
