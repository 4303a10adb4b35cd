//! The formats other software on the device reads, written beside the PEM files: DER, PKCS #12
//! and the OPC UA PKI directory with its trust lists and CRLs.
//!
//! Every file is written atomically ([`files::write_atomic`]), private keys with mode 0600 in
//! directories created 0700. Nothing here talks to the CA: the device fetches CRLs
//! ([`crate::acme::AcmeClient::fetch_crl`]) and hands the bytes to [`OpcuaPki::write_crl`],
//! which checks them first.
//!
//! # The OPC UA PKI directory
//!
//! OPC 10000-12 (GDS) Annex F recommends one directory layout for applications that keep their
//! certificates in files; the OPC Foundation .NET stack (`DirectoryCertificateStore`),
//! open62541 (its file certificate group, below `<root>/ApplCerts`) and asyncua (its
//! `TrustStore`, given folders) read it:
//!
//! ```text
//! DIR/own/certs/device.der           the device's certificate, DER
//! DIR/own/private/device.pem         its key, PKCS #8 PEM, 0600 (directory 0700)
//! DIR/trusted/certs/root-<id>.der    the pinned CA root: the one trust anchor
//! DIR/trusted/crl/                   the root's CRL, if an intermediate names one
//! DIR/issuer/certs/ca-<id>.der       the issuing intermediate(s) of the installed chain
//! DIR/issuer/crl/ca-<id>.crl         each intermediate's CRL, DER
//! DIR/issuer/crl/ca-<id>.crl.der     the same bytes, for readers that pick files by `.der`
//! DIR/rejected/certs/                created empty; stacks put refused certificates there
//! DIR/.tmp/                          0700: temporary files, renamed into place from here
//! ```
//!
//! `<id>` is the first 8 octets of the certificate's SHA-256, in hex. The root goes to `trusted`
//! and the intermediates to `issuer`: a trusted CA certificate trusts everything below it, so
//! trusting the root trusts every certificate of this CA and nothing else, while the
//! intermediates are only needed to build the chain from a peer's certificate (which a peer
//! may send alone) up to the root. Putting an intermediate in `trusted` would make it
//! an anchor of its own that stays trusted whatever the root says.
//!
//! Certificates are DER with a `.der` extension and CRLs DER with a `.crl` extension, as Annex F
//! says; the .NET stack reads only `crl/*.crl`. asyncua reads only files whose names contain
//! `der` or `pem` and picks the parser by the extension, so each CRL is also written as
//! `.crl.der` (open62541 reads every file of the folder, so it reads the CRL twice). The file
//! names are fixed or derived from hashes, never from certificate names, so a renewal replaces
//! files instead of adding new ones.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::error::Error;
use crate::files::{self, PRIVATE_MODE, PUBLIC_MODE};
use crate::key::CertKey;

/// The OPC UA PKI directory's folder for temporary files, outside every folder a stack reads.
const TMP_DIR: &str = ".tmp";

/// The base name of the device's own certificate and key in the OPC UA PKI directory.
pub const OPCUA_OWN_NAME: &str = "device";

/// PBKDF2-HMAC-SHA256 iterations of the PKCS #12 file's key encryption and MAC: OWASP's
/// 2023 recommendation for PBKDF2-SHA256 (the file may be copied off the device and attacked
/// offline). It costs a fraction of a second once per certificate.
const PKCS12_ITERATIONS: u32 = 600_000;

/// The outputs besides the PEM key, certificate, chain and full chain.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// Also write the certificate and the key as DER, next to their PEM files.
    pub der: bool,
    /// A PKCS #12 file with key, certificate and chain.
    pub pkcs12: Option<Pkcs12Output>,
    /// An OPC UA PKI directory.
    pub opcua_pki: Option<OpcuaPki>,
}

/// Where the PKCS #12 file goes, and its passphrase.
#[derive(Clone)]
pub struct Pkcs12Output {
    /// The file (mode 0600).
    pub path: PathBuf,
    passphrase: String,
}

impl fmt::Debug for Pkcs12Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs12Output")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Pkcs12Output {
    /// The output at `path`, protected with the passphrase in `passphrase_file` (its first
    /// line, without the line break). A missing or empty passphrase is a configuration error:
    /// a PKCS #12 file without one would hold the key in the clear. A passphrase file that
    /// group or others may read is logged as a warning.
    pub fn from_passphrase_file(path: PathBuf, passphrase_file: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(passphrase_file) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "the PKCS #12 passphrase file {} has mode {:o}: group and others should not read it (chmod 600)",
                    passphrase_file.display(),
                    meta.permissions().mode() & 0o777
                );
            }
        }
        let text = std::fs::read_to_string(passphrase_file).map_err(|e| {
            Error::Config(format!(
                "cannot read the PKCS #12 passphrase file {}: {e}",
                passphrase_file.display()
            ))
        })?;
        let passphrase = text.lines().next().unwrap_or("");
        if passphrase.is_empty() {
            return Err(Error::Config(format!(
                "the PKCS #12 passphrase file {} is empty: put the passphrase on its first line",
                passphrase_file.display()
            )));
        }
        Ok(Self {
            path,
            passphrase: passphrase.to_owned(),
        })
    }
}

/// The DER certificate and key files next to the PEM ones: the same names with the extension
/// `.der` (`cert.pem` → `cert.der`, `cert.key.pem` → `cert.key.der`).
pub fn der_paths(cert_path: &Path, key_path: &Path) -> (PathBuf, PathBuf) {
    (
        cert_path.with_extension("der"),
        key_path.with_extension("der"),
    )
}

/// Writes every configured output for a newly issued certificate. `certs` is the chain as the
/// CA sent it (leaf first), `root` the pinned root.
pub fn write(
    outputs: &Outputs,
    cert_path: &Path,
    key_path: &Path,
    key: &CertKey,
    certs: &[CertificateDer<'_>],
    root: Option<&CertificateDer<'_>>,
) -> Result<(), Error> {
    let Some((leaf, issuers)) = certs.split_first() else {
        return Err(Error::protocol(
            "certificate",
            "the chain holds no certificate",
        ));
    };
    if outputs.der {
        let (cert_der, key_der) = der_paths(cert_path, key_path);
        files::write_atomic(&key_der, key.pkcs8_der(), PRIVATE_MODE)?;
        files::write_atomic(&cert_der, leaf, PUBLIC_MODE)?;
    }
    if let Some(p) = &outputs.pkcs12 {
        let der = pkcs12(key.pkcs8_der(), certs, &p.passphrase)?;
        files::write_atomic(&p.path, &der, PRIVATE_MODE)?;
    }
    if let Some(pki) = &outputs.opcua_pki {
        pki.install(key, leaf, issuers, root)?;
    }
    Ok(())
}

/// A PKCS #12 file as found to hold a certificate and key: its inode, modification time and
/// content hash, and theirs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs12Stamp {
    inode: u64,
    modified: Option<std::time::SystemTime>,
    digest: [u8; 32],
}

impl Pkcs12Stamp {
    fn of(path: &Path, der: &[u8], key: &CertKey, leaf: &[u8]) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        let mut all = Vec::with_capacity(96);
        all.extend(crate::trust::sha256(der));
        all.extend(crate::trust::sha256(key.pkcs8_der()));
        all.extend(crate::trust::sha256(leaf));
        Some(Self {
            inode: meta.ino(),
            modified: meta.modified().ok(),
            digest: crate::trust::sha256(&all),
        })
    }
}

/// Why the configured outputs do not hold `leaf` and `key` (the installed PEM certificate and
/// key), or `None` when every one does: a missing file, or one that holds another certificate
/// or key (left by a failed write or a power cut between two renames, or replaced by hand).
/// The PKCS #12 file is opened with its passphrase and compared; in the OPC UA directory the
/// certificate and the key are compared with each other and with the PEM files. `checked`
/// remembers the PKCS #12 file last found current, so it is opened again only when it changed.
pub fn stale(
    outputs: &Outputs,
    cert_path: &Path,
    key_path: &Path,
    key: &CertKey,
    leaf: &[u8],
    checked: &mut Option<Pkcs12Stamp>,
) -> Result<Option<String>, Error> {
    let differs = |path: &Path, what: &str| Some(format!("{} holds {what}", path.display()));
    let missing = |path: &Path| Some(format!("{} is missing", path.display()));
    if outputs.der {
        let (cert_der, key_der) = der_paths(cert_path, key_path);
        match files::read_optional(&cert_der)? {
            None => return Ok(missing(&cert_der)),
            Some(d) if d != leaf => return Ok(differs(&cert_der, "another certificate")),
            Some(_) => {}
        }
        match files::read_optional(&key_der)? {
            None => return Ok(missing(&key_der)),
            Some(d) if d != key.pkcs8_der() => return Ok(differs(&key_der, "another key")),
            Some(_) => {}
        }
    }
    if let Some(p) = &outputs.pkcs12 {
        let Some(der) = files::read_optional(&p.path)? else {
            return Ok(missing(&p.path));
        };
        // Opening the file costs its 600,000 iterations twice: skip it while the file is the
        // one already found to hold this certificate and key.
        let stamp = Pkcs12Stamp::of(&p.path, &der, key, leaf);
        if stamp.is_some() && *checked == stamp {
            return Ok(None);
        }
        let store = p12_keystore::KeyStore::from_pkcs12(
            &der,
            &p.passphrase,
            p12_keystore::Pkcs12ImportPolicy::default(),
        );
        let same = store.ok().is_some_and(|store| {
            store.private_key_chain().is_some_and(|(_, chain)| {
                chain.key().as_der() == key.pkcs8_der()
                    && chain.certs().first().is_some_and(|c| c.as_der() == leaf)
            })
        });
        if !same {
            return Ok(differs(
                &p.path,
                "another key or certificate, or does not open with the passphrase",
            ));
        }
        *checked = stamp;
    }
    if let Some(pki) = &outputs.opcua_pki {
        match files::read_optional(&pki.own_cert())? {
            None => return Ok(missing(&pki.own_cert())),
            Some(d) if d != leaf => return Ok(differs(&pki.own_cert(), "another certificate")),
            Some(_) => {}
        }
        match files::read_optional(&pki.own_key())? {
            None => return Ok(missing(&pki.own_key())),
            Some(pem) => {
                let same = CertKey::from_pem(&pem)
                    .is_ok_and(|k| k.public_key_bits() == key.public_key_bits());
                if !same {
                    return Ok(differs(
                        &pki.own_key(),
                        "a key that does not match the certificate",
                    ));
                }
            }
        }
    }
    Ok(None)
}

/// A PKCS #12 file (RFC 7292) holding the key and the chain (leaf first): PBES2 with
/// PBKDF2-HMAC-SHA256 and AES-256-CBC for the key and the certificates, and an HMAC-SHA256
/// integrity MAC. No legacy RC2/3DES/SHA-1 algorithms.
pub fn pkcs12(
    key_pkcs8: &[u8],
    certs: &[CertificateDer<'_>],
    passphrase: &str,
) -> Result<Vec<u8>, Error> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let bad = |e: p12_keystore::error::Error| {
        Error::Crypto(format!("cannot build the PKCS #12 file: {e}"))
    };
    let chain = certs
        .iter()
        .map(|c| Certificate::from_der(c).map_err(bad))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = certs
        .first()
        .ok_or_else(|| Error::Crypto("a PKCS #12 file needs a certificate".into()))?;
    let key = PrivateKey::from_der(key_pkcs8).map_err(bad)?;
    // The localKeyId pairs the key with its certificate (RFC 7292 §4.2); the certificate's
    // SHA-256 is unique and stable.
    let local_key_id = crate::trust::sha256(leaf).to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        OPCUA_OWN_NAME,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, chain)),
    );
    store
        .writer(passphrase)
        .encryption_algorithm(p12_keystore::EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha256)
        .encryption_iterations(PKCS12_ITERATIONS)
        .mac_iterations(PKCS12_ITERATIONS)
        .write()
        .map_err(bad)
}

/// The file stem of a CA certificate in the PKI directory: `prefix-` and the first 8 octets of
/// its SHA-256 in hex (hex cannot spell `der` or `pem`, which matters to asyncua).
fn ca_stem(prefix: &str, der: &[u8]) -> String {
    let digest = crate::trust::sha256(der);
    let mut out = format!("{prefix}-");
    for b in &digest[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// An OPC UA PKI directory (see the module documentation for the layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpcuaPki {
    dir: PathBuf,
}

/// What the device fetches to keep one CRL of the PKI directory current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlTarget {
    /// The CRL distribution point URLs of the certificate below the issuer, in order.
    pub urls: Vec<String>,
    /// The CA certificate that signs the CRL (DER).
    pub issuer: Vec<u8>,
    /// The issuer's subject, for messages.
    pub issuer_name: String,
    /// The `.crl` file; the `.crl.der` copy sits beside it.
    pub path: PathBuf,
}

/// What a checked CRL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// The cRLNumber, decimal, if present.
    pub number: Option<String>,
    /// How many certificates it lists as revoked.
    pub revoked: usize,
    /// Its nextUpdate, if present.
    pub next_update: Option<time::OffsetDateTime>,
    /// Whether installing it replaced other bytes (false: the same CRL was fetched again).
    pub changed: bool,
}

impl OpcuaPki {
    /// The PKI directory at `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device's certificate (DER).
    pub fn own_cert(&self) -> PathBuf {
        self.dir
            .join("own/certs")
            .join(format!("{OPCUA_OWN_NAME}.der"))
    }

    /// The device's key (PKCS #8 PEM).
    pub fn own_key(&self) -> PathBuf {
        self.dir
            .join("own/private")
            .join(format!("{OPCUA_OWN_NAME}.pem"))
    }

    fn sub(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Writes a file of the directory atomically, with the temporary file in `DIR/.tmp`
    /// (0700): open62541 reads every regular file of a trust-list folder and asyncua every
    /// name containing `der`, so a temporary must never appear in those folders, even for a
    /// moment or after a power cut.
    fn write(&self, path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
        files::write_atomic_via(path, data, mode, Some(&self.sub(TMP_DIR)))
    }

    /// Removes left-over temporary files: everything in `DIR/.tmp`, and `.<name>.tmp-<nonce>`
    /// files in the folders (which earlier versions wrote there). A power cut during a write
    /// leaves them; nothing else writes there.
    fn remove_temporaries(&self) -> Result<(), Error> {
        for rel in [
            TMP_DIR,
            "own/certs",
            "own/private",
            "trusted/certs",
            "trusted/crl",
            "issuer/certs",
            "issuer/crl",
        ] {
            let dir = self.sub(rel);
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read directory", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let temporary = name.starts_with('.') && name.contains(".tmp-");
                if (rel == TMP_DIR || temporary) && entry.file_type().is_ok_and(|t| t.is_file()) {
                    let path = entry.path();
                    tracing::info!(file = %path.display(), "removing a left-over temporary file");
                    std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                }
            }
        }
        Ok(())
    }

    /// Creates the layout: public folders 0755, `own/private` 0700. Existing folders are left
    /// as they are, but those below the directory must be real directories (not symbolic
    /// links) owned by the user the client runs as: otherwise someone else decides where the
    /// key and the trust lists go. (The directory itself may be a link, e.g. to a data
    /// partition.)
    fn create_dirs(&self) -> Result<(), Error> {
        let uid = rustix::process::geteuid().as_raw();
        for rel in [
            "own",
            "own/certs",
            "own/private",
            "trusted",
            "trusted/certs",
            "trusted/crl",
            "issuer",
            "issuer/certs",
            "issuer/crl",
            "rejected",
            "rejected/certs",
            TMP_DIR,
        ] {
            check_own_dir(&self.sub(rel), uid)?;
        }
        for rel in [
            "own/certs",
            "trusted/certs",
            "trusted/crl",
            "issuer/certs",
            "issuer/crl",
            "rejected/certs",
        ] {
            files::create_public_dir(&self.sub(rel))?;
        }
        files::create_private_dir(&self.sub("own/private"))?;
        // The temporaries hold private keys before their rename: 0700 even if it existed.
        let tmp = self.sub(TMP_DIR);
        files::create_private_dir(&tmp)?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| Error::io("chmod 0700", &tmp, e))?;
        self.remove_temporaries()
    }

    /// Writes the key, the certificate, the intermediates and the pinned root.
    pub fn install(
        &self,
        key: &CertKey,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        root: Option<&CertificateDer<'_>>,
    ) -> Result<(), Error> {
        self.create_dirs()?;
        self.write(&self.own_key(), key.to_pem().as_bytes(), PRIVATE_MODE)?;
        self.write(&self.own_cert(), leaf, PUBLIC_MODE)?;
        let stems: Vec<String> = intermediates.iter().map(|ca| ca_stem("ca", ca)).collect();
        for (ca, stem) in intermediates.iter().zip(&stems) {
            let path = self.sub("issuer/certs").join(format!("{stem}.der"));
            self.write(&path, ca, PUBLIC_MODE)?;
        }
        // The intermediates of an earlier chain, and their CRLs, go: a chain builder could
        // otherwise pick an old intermediate of the same name.
        self.remove_own_except("issuer/certs", &stems, &[".der"])?;
        self.remove_own_except("issuer/crl", &stems, &[".crl", ".crl.der"])?;
        match root {
            Some(root) => {
                let path = self
                    .sub("trusted/certs")
                    .join(format!("{}.der", ca_stem("root", root)));
                self.write(&path, root, PUBLIC_MODE)?;
            }
            // Rebuilding the outputs without a connection, with a fingerprint pin: the root
            // written at enrollment stays.
            None if self.has_root()? => {}
            None => tracing::warn!(
                "the pinned root is not known yet, so {} has no trusted root",
                self.dir.display()
            ),
        }
        Ok(())
    }

    /// Removes the files in `rel` that this client names (`ca-<16 hex digits>` and one of
    /// `suffixes`) whose stem is not in `keep`. Other files are the operator's and stay.
    fn remove_own_except(
        &self,
        rel: &str,
        keep: &[String],
        suffixes: &[&str],
    ) -> Result<(), Error> {
        let dir = self.sub(rel);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("read directory", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = suffixes.iter().find_map(|s| name.strip_suffix(s)) else {
                continue;
            };
            let ours = stem.strip_prefix("ca-").is_some_and(|h| {
                h.len() == 16
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
            if ours && !keep.iter().any(|k| k == stem) {
                let path = entry.path();
                tracing::info!(file = %path.display(), "removing a CA file of an earlier chain");
                std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            }
        }
        Ok(())
    }

    /// Whether `trusted/certs` holds a root this client wrote.
    fn has_root(&self) -> Result<bool, Error> {
        let dir = self.sub("trusted/certs");
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("read directory", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("root-") && name.ends_with(".der") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The certificates in the directory that the CRLs belong to: the device's certificate,
    /// the intermediates this client wrote, and `root`.
    fn installed(&self) -> Result<(Vec<u8>, Vec<Vec<u8>>), Error> {
        let leaf_path = self.own_cert();
        let leaf = files::read_optional(&leaf_path)?
            .ok_or_else(|| Error::bad_file(&leaf_path, "no certificate is installed yet"))?;
        let dir = self.sub("issuer/certs");
        let mut cas = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((leaf, cas)),
            Err(e) => return Err(Error::io("read directory", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("ca-") && name.ends_with(".der") {
                let path = entry.path();
                if let Some(der) = files::read_optional(&path)? {
                    cas.push(der);
                }
            }
        }
        Ok((leaf, cas))
    }

    /// The CRLs to keep current: for the device's certificate and each CA certificate above it
    /// (up to `root`) that names a CRL distribution point, the CRL of its issuer, stored with
    /// the issuer (`issuer/crl` for an intermediate, `trusted/crl` for the root).
    pub fn crl_targets(&self, root: Option<&[u8]>) -> Result<Vec<CrlTarget>, Error> {
        let (leaf, cas) = self.installed()?;
        let parse = |der: &[u8], path: &Path| -> Result<(), Error> {
            X509Certificate::from_der(der)
                .map(|_| ())
                .map_err(|e| Error::bad_file(path, format!("not a DER certificate: {e}")))
        };
        parse(&leaf, &self.own_cert())?;
        for ca in &cas {
            parse(ca, &self.sub("issuer/certs"))?;
        }
        let mut targets = Vec::new();
        let mut current = leaf;
        // A chain of this CA is leaf, intermediate, root; the bound only stops a loop.
        for _ in 0..8 {
            let (issuer, folder, prefix) = {
                let (_, cert) = X509Certificate::from_der(&current)
                    .map_err(|e| Error::Crypto(format!("certificate: {e}")))?;
                // The CA certificate that signed this one, not just one with its issuer's name:
                // an earlier intermediate may have the same subject.
                let is_issuer = |der: &[u8]| {
                    der != current
                        && X509Certificate::from_der(der).is_ok_and(|(_, c)| signed_by(&cert, &c))
                };
                if let Some(ca) = cas.iter().find(|ca| is_issuer(ca)) {
                    (ca.clone(), "issuer/crl", "ca")
                } else if let Some(root) = root.filter(|r| is_issuer(r)) {
                    (root.to_vec(), "trusted/crl", "root")
                } else {
                    break;
                }
            };
            let urls = crl_urls(&current)?;
            if !urls.is_empty() {
                let issuer_name = X509Certificate::from_der(&issuer)
                    .map(|(_, c)| c.subject().to_string())
                    .unwrap_or_default();
                targets.push(CrlTarget {
                    urls,
                    path: self
                        .sub(folder)
                        .join(format!("{}.crl", ca_stem(prefix, &issuer))),
                    issuer: issuer.clone(),
                    issuer_name,
                });
            }
            if prefix == "root" {
                break;
            }
            current = issuer;
        }
        Ok(targets)
    }

    /// Checks `crl` against the target's issuer and the clock ([`check_crl`]) and against the
    /// CRL already installed (not an older cRLNumber or thisUpdate; the same cRLNumber only
    /// with the same bytes), then writes it as `.crl` and `.crl.der`. A CRL that fails a check
    /// is not written, and the installed one stays.
    pub fn write_crl(&self, target: &CrlTarget, crl: &[u8]) -> Result<CrlInfo, Error> {
        let for_issuer =
            |e: String| Error::protocol("CRL", format!("for {}: {e}", target.issuer_name));
        let mut info =
            check_crl(crl, &target.issuer, time::OffsetDateTime::now_utc()).map_err(for_issuer)?;
        let installed = files::read_optional(&target.path)?;
        info.changed = installed.as_deref() != Some(crl);
        if let Some(old) = &installed {
            check_crl_succession(old, crl).map_err(for_issuer)?;
        }
        self.create_dirs()?;
        // The copy first: the `.crl` file is what the next refresh compares against, so a
        // stop between the two writes leaves an old `.crl` and the next refresh writes both.
        let mut copy = target.path.clone().into_os_string();
        copy.push(".der");
        self.write(Path::new(&copy), crl, PUBLIC_MODE)?;
        self.write(&target.path, crl, PUBLIC_MODE)?;
        Ok(info)
    }
}

/// Whether `issuer` issued `cert`: its subject is `cert`'s issuer, its subject key identifier
/// is `cert`'s authority key identifier when both are present, it is a CA whose key usage (if
/// it has one) includes keyCertSign, and `cert`'s signature verifies with its key.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        });
    let ski = issuer
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        });
    let may_sign = match issuer.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    };
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && !matches!((aki, ski), (Some(a), Some(s)) if a != s)
        && issuer.is_ca()
        && may_sign
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Checks the chain the CA returned (leaf first) before anything of it is installed: each
/// certificate is signed by the next ([`signed_by`]), and the last by `root`, the pinned root,
/// when it is known.
pub fn verify_chain(certs: &[CertificateDer<'_>], root: Option<&[u8]>) -> Result<(), Error> {
    let parsed = certs
        .iter()
        .map(|c| {
            X509Certificate::from_der(c)
                .map(|(_, c)| c)
                .map_err(|e| Error::protocol("certificate", format!("bad chain: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let root = root
        .map(|r| {
            X509Certificate::from_der(r)
                .map(|(_, c)| c)
                .map_err(|e| Error::protocol("certificate", format!("the pinned root: {e}")))
        })
        .transpose()?;
    for (i, cert) in parsed.iter().enumerate() {
        let issuer = match parsed.get(i + 1) {
            Some(next) => next,
            None => match &root {
                Some(root) => root,
                None => break,
            },
        };
        if !signed_by(cert, issuer) {
            return Err(Error::protocol(
                "certificate",
                format!(
                    "the chain does not verify: {} is not signed by {}",
                    cert.subject(),
                    issuer.subject()
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses an existing `dir` that is a symbolic link, not a directory, or owned by another user
/// than `uid`; a missing one is fine (it is created). The link itself is looked at, never
/// followed.
fn check_own_dir(dir: &Path, uid: u32) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("inspect", dir, e)),
    };
    if meta.file_type().is_symlink() {
        return Err(Error::bad_file(
            dir,
            "is a symbolic link; the OPC UA PKI directory's folders must be real directories",
        ));
    }
    if !meta.is_dir() {
        return Err(Error::bad_file(dir, "is not a directory"));
    }
    if meta.uid() != uid {
        return Err(Error::bad_file(
            dir,
            format!(
                "is owned by uid {}, not by the user device-client runs as (uid {uid})",
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// The URIs of a certificate's CRL distribution points, in order.
pub fn crl_urls(cert_der: &[u8]) -> Result<Vec<String>, Error> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| Error::Crypto(format!("certificate: {e}")))?;
    let mut urls = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
            for point in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &point.distribution_point {
                    for name in names {
                        if let GeneralName::URI(uri) = name {
                            urls.push((*uri).to_owned());
                        }
                    }
                }
            }
        }
    }
    Ok(urls)
}

/// How far a CRL's thisUpdate may lie ahead of the device clock (clock skew).
const CRL_CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// The CRL signature algorithms accepted: ecdsa-with-SHA256/384 and
/// sha256/384/512WithRSAEncryption (no SHA-1, no MD5).
const CRL_SIGNATURE_ALGORITHMS: [&str; 5] = [
    "1.2.840.10045.4.3.2",
    "1.2.840.10045.4.3.3",
    "1.2.840.113549.1.1.11",
    "1.2.840.113549.1.1.12",
    "1.2.840.113549.1.1.13",
];

/// CRL extensions understood here (RFC 5280 §5.2): authorityKeyIdentifier and cRLNumber. A
/// critical extension outside these is refused, and so are the deltaCRLIndicator (a delta CRL
/// lists only changes since a base CRL) and the issuingDistributionPoint (a partitioned or
/// indirect CRL covers another scope than "every certificate of this issuer").
const CRL_EXTENSIONS: [&str; 2] = ["2.5.29.35", "2.5.29.20"];
const DELTA_CRL_INDICATOR: &str = "2.5.29.27";
const ISSUING_DISTRIBUTION_POINT: &str = "2.5.29.28";
/// CRL entry extensions understood here: reasonCode and invalidityDate. A certificateIssuer
/// entry (2.5.29.29) belongs to an indirect CRL and is refused like any unknown critical one.
const CRL_ENTRY_EXTENSIONS: [&str; 2] = ["2.5.29.21", "2.5.29.24"];
const CERTIFICATE_ISSUER: &str = "2.5.29.29";

/// Checks a CRL (RFC 5280 §5) before it is installed, at time `now`: it parses as DER, its
/// issuer is the subject of `issuer_der`, which may sign CRLs (cRLSign, when the certificate
/// has a key usage), its signature algorithm is one of [`CRL_SIGNATURE_ALGORITHMS`] and
/// verifies with that certificate's key, it is a complete CRL of its issuer (no delta CRL, no
/// issuing distribution point, no indirect entries, no unknown critical extension), it has a
/// cRLNumber and a nextUpdate, nextUpdate has not passed, and thisUpdate is not more than
/// [`CRL_CLOCK_SKEW`] ahead.
pub fn check_crl(
    crl: &[u8],
    issuer_der: &[u8],
    now: time::OffsetDateTime,
) -> Result<CrlInfo, String> {
    let (rest, parsed) =
        CertificateRevocationList::from_der(crl).map_err(|e| format!("not a DER CRL: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the CRL".into());
    }
    let (_, issuer) = X509Certificate::from_der(issuer_der)
        .map_err(|e| format!("the issuer certificate does not parse: {e}"))?;
    if parsed.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(format!(
            "it is issued by {}, not by {}",
            parsed.issuer(),
            issuer.subject()
        ));
    }
    match issuer.key_usage() {
        Ok(Some(ku)) if !ku.value.crl_sign() => {
            return Err(format!(
                "{} has a key usage without cRLSign, so it may not sign CRLs",
                issuer.subject()
            ))
        }
        Ok(_) => {}
        Err(e) => return Err(format!("the issuer's key usage does not parse: {e}")),
    }
    let alg = parsed.signature_algorithm.algorithm.to_id_string();
    if !CRL_SIGNATURE_ALGORITHMS.contains(&alg.as_str())
        || parsed.tbs_cert_list.signature.algorithm != parsed.signature_algorithm.algorithm
    {
        return Err(format!(
            "its signature algorithm {alg} is not one of ecdsa-with-SHA256/384 or \
             sha256/384/512WithRSAEncryption"
        ));
    }
    parsed.verify_signature(issuer.public_key()).map_err(|e| {
        format!(
            "its signature does not verify with {}: {e}",
            issuer.subject()
        )
    })?;
    for ext in parsed.extensions() {
        let oid = ext.oid.to_id_string();
        if oid == DELTA_CRL_INDICATOR {
            return Err("it is a delta CRL; only complete CRLs are installed".into());
        }
        if oid == ISSUING_DISTRIBUTION_POINT {
            return Err(
                "it has an issuing distribution point (a partitioned or indirect CRL); only \
                 complete CRLs of the issuer are installed"
                    .into(),
            );
        }
        if ext.critical && !CRL_EXTENSIONS.contains(&oid.as_str()) {
            return Err(format!("it has an unknown critical extension {oid}"));
        }
    }
    for entry in parsed.iter_revoked_certificates() {
        for ext in entry.extensions() {
            let oid = ext.oid.to_id_string();
            if oid == CERTIFICATE_ISSUER {
                return Err("it is an indirect CRL (an entry names a certificate issuer)".into());
            }
            if ext.critical && !CRL_ENTRY_EXTENSIONS.contains(&oid.as_str()) {
                return Err(format!("an entry has an unknown critical extension {oid}"));
            }
        }
    }
    let number = parsed
        .crl_number()
        .ok_or("it has no cRLNumber, so a replayed older CRL could not be told apart")?;
    let this_update = parsed.last_update().to_datetime();
    let next_update = parsed
        .next_update()
        .ok_or("it has no nextUpdate")?
        .to_datetime();
    if next_update < now {
        return Err(format!(
            "it expired: its nextUpdate {} has passed",
            crate::cert::rfc3339(next_update)
        ));
    }
    if this_update > now + CRL_CLOCK_SKEW {
        return Err(format!(
            "its thisUpdate {} is in the future (check the device clock)",
            crate::cert::rfc3339(this_update)
        ));
    }
    Ok(CrlInfo {
        number: Some(number.to_string()),
        revoked: parsed.iter_revoked_certificates().count(),
        next_update: Some(next_update),
        changed: false,
    })
}

/// Checks a new CRL against the one installed at the same place: its cRLNumber is not lower,
/// an equal cRLNumber comes with the same bytes (a CRL number names one CRL), and its
/// thisUpdate is not earlier. An installed CRL that does not parse is simply replaced.
fn check_crl_succession(old: &[u8], new: &[u8]) -> Result<(), String> {
    let (Ok((_, old_crl)), Ok((_, new_crl))) = (
        CertificateRevocationList::from_der(old),
        CertificateRevocationList::from_der(new),
    ) else {
        return Ok(());
    };
    if let (Some(o), Some(n)) = (old_crl.crl_number(), new_crl.crl_number()) {
        if n < o {
            return Err(format!("cRLNumber {n} is older than the installed {o}"));
        }
        if n == o && old != new {
            return Err(format!(
                "cRLNumber {n} is the installed CRL's, but its contents differ"
            ));
        }
    }
    if new_crl.last_update() < old_crl.last_update() {
        return Err(format!(
            "its thisUpdate {} is older than the installed CRL's {}",
            crate::cert::rfc3339(new_crl.last_update().to_datetime()),
            crate::cert::rfc3339(old_crl.last_update().to_datetime())
        ));
    }
    Ok(())
}

/// The nextUpdate of an installed CRL, if it has one and parses.
pub fn crl_next_update(crl: &[u8]) -> Option<time::OffsetDateTime> {
    let (_, parsed) = CertificateRevocationList::from_der(crl).ok()?;
    parsed.next_update().map(|t| t.to_datetime())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
        DnType, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };

    use super::*;
    use crate::key::KeyAlgorithm;

    /// A root, an intermediate that signs CRLs, and a device certificate naming the
    /// intermediate's CRL, like the CA's hierarchy (SPEC §8.1, §9.1).
    struct TestCa {
        root: CertificateDer<'static>,
        intermediate: CertificateDer<'static>,
        intermediate_params: CertificateParams,
        intermediate_key: rcgen::KeyPair,
        leaf: CertificateDer<'static>,
        key: CertKey,
    }

    impl TestCa {
        /// Installs the device certificate, the intermediate and the root into `pki`.
        fn install(&self, pki: &OpcuaPki) -> Result<(), Error> {
            pki.install(
                &self.key,
                &self.leaf,
                std::slice::from_ref(&self.intermediate),
                Some(&self.root),
            )
        }
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    }

    fn test_ca() -> TestCa {
        let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let root_params = ca_params("Test Root");
        let root = root_params.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(root_params, root_key);
        let intermediate_key = rcgen::KeyPair::generate().expect("key");
        let intermediate_params = ca_params("Test Issuing CA");
        let intermediate = intermediate_params
            .signed_by(&intermediate_key, &root_issuer)
            .expect("intermediate");
        let key = CertKey::generate(KeyAlgorithm::P256).expect("device key");
        let mut leaf_params =
            CertificateParams::new(vec!["plc-7.plant.test".to_owned()]).expect("params");
        leaf_params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec!["https://ca.plant.test/crl".to_owned()],
        }];
        let leaf_key = rcgen::KeyPair::try_from(key.pkcs8_der()).expect("rcgen key");
        let issuer = Issuer::from_params(&intermediate_params, &intermediate_key);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
        TestCa {
            root: root.der().clone(),
            intermediate: intermediate.der().clone(),
            intermediate_params,
            intermediate_key,
            leaf: leaf.der().clone(),
            key,
        }
    }

    /// CRL parameters: `number`, issued now (thisUpdate `this_update`), valid for a day,
    /// listing `revoked`.
    fn crl_params(
        number: u64,
        this_update: time::OffsetDateTime,
        revoked: &[u64],
    ) -> CertificateRevocationListParams {
        let now = time::OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update,
            next_update: now + time::Duration::hours(24),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
    }

    /// `p` signed by the CA of `params` and `key`, DER.
    fn sign_crl(
        p: &CertificateRevocationListParams,
        params: &CertificateParams,
        key: &rcgen::KeyPair,
    ) -> Vec<u8> {
        p.signed_by(&Issuer::from_params(params, key))
            .expect("crl")
            .der()
            .to_vec()
    }

    fn crl(
        params: &CertificateParams,
        key: &rcgen::KeyPair,
        number: u64,
        revoked: &[u64],
    ) -> Vec<u8> {
        let p = crl_params(number, time::OffsetDateTime::now_utc(), revoked);
        sign_crl(&p, params, key)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("meta").permissions().mode() & 0o777
    }

    #[test]
    fn opcua_pki_layout_modes_and_crls() {
        let ca = test_ca();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = OpcuaPki::new(dir.path().join("pki"));
        ca.install(&pki).expect("install");

        assert_eq!(
            fs::read(pki.own_cert()).expect("own cert"),
            ca.leaf.as_ref()
        );
        assert_eq!(
            CertKey::from_pem(&fs::read(pki.own_key()).expect("own key"))
                .expect("PEM key")
                .public_key_bits(),
            ca.key.public_key_bits()
        );
        assert_eq!(mode(&pki.own_key()), 0o600);
        assert_eq!(mode(&dir.path().join("pki/own/private")), 0o700);
        let root_file = dir
            .path()
            .join("pki/trusted/certs")
            .join(format!("{}.der", ca_stem("root", &ca.root)));
        let ca_file = dir
            .path()
            .join("pki/issuer/certs")
            .join(format!("{}.der", ca_stem("ca", &ca.intermediate)));
        assert_eq!(fs::read(&root_file).expect("root"), ca.root.as_ref());
        assert_eq!(
            fs::read(&ca_file).expect("intermediate"),
            ca.intermediate.as_ref()
        );
        for rel in ["own/certs", "trusted/crl", "issuer/crl", "rejected/certs"] {
            assert!(dir.path().join("pki").join(rel).is_dir(), "{rel}");
        }
        // Names never spell "der" or "pem" before the extension (asyncua picks files by that).
        let stem = ca_stem("ca", &ca.intermediate);
        assert!(stem.len() == 19 && !stem.contains("der") && !stem.contains("pem"));

        // The device certificate's distribution point, for the intermediate's CRL.
        let targets = pki.crl_targets(Some(&ca.root)).expect("targets");
        assert_eq!(targets.len(), 1, "{targets:?}");
        let t = &targets[0];
        assert_eq!(t.urls, ["https://ca.plant.test/crl"]);
        assert_eq!(t.issuer, ca.intermediate.as_ref());
        assert_eq!(
            t.path,
            dir.path()
                .join("pki/issuer/crl")
                .join(format!("{stem}.crl"))
        );

        let good = crl(&ca.intermediate_params, &ca.intermediate_key, 7, &[0x42]);
        let info = pki.write_crl(t, &good).expect("a good CRL is installed");
        assert!(info.changed);
        assert!(
            !pki.write_crl(t, &good).expect("again").changed,
            "the same bytes"
        );
        assert_eq!(info.number.as_deref(), Some("7"));
        assert_eq!(info.revoked, 1);
        assert!(info.next_update.is_some());
        assert_eq!(fs::read(&t.path).expect("crl"), good);
        let copy = t.path.with_extension("crl.der");
        assert_eq!(fs::read(&copy).expect("crl.der"), good);
        assert_eq!(mode(&t.path), 0o644);

        // Refused, each leaving the installed CRL as it was: an older CRL, garbage, a CRL of
        // the same name signed by another key, and one from another issuer.
        let older = crl(&ca.intermediate_params, &ca.intermediate_key, 6, &[]);
        let e = pki.write_crl(t, &older).expect_err("older").to_string();
        assert!(e.contains("older than the installed 7"), "{e}");
        let e = pki
            .write_crl(t, b"not a crl")
            .expect_err("garbage")
            .to_string();
        assert!(e.contains("not a DER CRL"), "{e}");
        let forger = rcgen::KeyPair::generate().expect("key");
        let forged = crl(&ca.intermediate_params, &forger, 8, &[]);
        let e = pki.write_crl(t, &forged).expect_err("forged").to_string();
        assert!(e.contains("signature does not verify"), "{e}");
        let other_params = ca_params("Another CA");
        let other = crl(&other_params, &forger, 9, &[]);
        let e = pki
            .write_crl(t, &other)
            .expect_err("other issuer")
            .to_string();
        assert!(e.contains("not by"), "{e}");
        assert_eq!(fs::read(&t.path).expect("crl"), good);
        assert_eq!(fs::read(&copy).expect("crl.der"), good);

        // A newer one replaces it.
        let newer = crl(
            &ca.intermediate_params,
            &ca.intermediate_key,
            8,
            &[0x42, 0x43],
        );
        assert_eq!(pki.write_crl(t, &newer).expect("newer").revoked, 2);
        assert_eq!(fs::read(&t.path).expect("crl"), newer);
    }

    #[test]
    fn the_crl_issuer_is_the_intermediate_that_signed_the_certificate() {
        let ca = test_ca();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = OpcuaPki::new(dir.path().join("pki"));
        ca.install(&pki).expect("install");
        let old_stem = ca_stem("ca", &ca.intermediate);
        let old_crl = dir.path().join(format!("pki/issuer/crl/{old_stem}.crl"));
        fs::write(&old_crl, b"crl").expect("old crl");
        fs::write(old_crl.with_extension("crl.der"), b"crl").expect("old crl");
        let operators = dir.path().join("pki/issuer/certs/operator-ca.der");
        fs::write(&operators, b"kept").expect("operator's file");

        // The intermediate is rotated: a new key under the same name (and a root of the same
        // name, to show the pinned root is checked by its key), and a new
        // device certificate from it.
        let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let root_params = ca_params("Test Root");
        let root = root_params.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(root_params, root_key);
        let new_key = rcgen::KeyPair::generate().expect("key");
        let new_params = ca_params("Test Issuing CA");
        let new_ca = new_params
            .signed_by(&new_key, &root_issuer)
            .expect("new ca");
        let mut leaf_params =
            CertificateParams::new(vec!["plc-7.plant.test".to_owned()]).expect("params");
        leaf_params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec!["https://ca.plant.test/crl".to_owned()],
        }];
        let leaf_key = rcgen::KeyPair::try_from(ca.key.pkcs8_der()).expect("rcgen key");
        let leaf = leaf_params
            .signed_by(&leaf_key, &Issuer::from_params(&new_params, &new_key))
            .expect("leaf");
        let chain = [leaf.der().clone(), new_ca.der().clone()];
        // Against another root, or with the old intermediate, the chain does not verify.
        let e = verify_chain(&chain, Some(&ca.root)).expect_err("other root");
        assert!(e.to_string().contains("not signed by"), "{e}");
        let mixed = [leaf.der().clone(), ca.intermediate.clone()];
        assert!(verify_chain(&mixed, Some(root.der())).is_err());
        verify_chain(&chain, Some(root.der())).expect("chain verifies");

        pki.install(&ca.key, &chain[0], &chain[1..], Some(root.der()))
            .expect("install");
        // Our earlier intermediate and its CRLs are gone; the operator's file stays.
        let certs_dir = dir.path().join("pki/issuer/certs");
        assert!(!certs_dir.join(format!("{old_stem}.der")).exists());
        assert!(!old_crl.exists() && !old_crl.with_extension("crl.der").exists());
        assert!(operators.exists());

        // Even with the old intermediate back under another name, the CRL issuer is the one
        // that signed the certificate, whatever the directory order.
        for name in ["ca-0000000000000000.der", "ca-ffffffffffffffff.der"] {
            fs::write(certs_dir.join(name), &ca.intermediate).expect("old intermediate");
            let targets = pki.crl_targets(Some(root.der())).expect("targets");
            assert_eq!(targets.len(), 1, "{targets:?}");
            assert_eq!(targets[0].issuer, new_ca.der().as_ref());
            fs::remove_file(certs_dir.join(name)).expect("remove");
        }
    }

    #[test]
    fn symlinked_or_foreign_folders_are_refused() {
        let ca = test_ca();
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).expect("mkdir");
        let pki = OpcuaPki::new(dir.path().join("pki"));
        fs::create_dir_all(dir.path().join("pki/own")).expect("mkdir");
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("pki/own/private"))
            .expect("symlink");
        let install = || ca.install(&pki);
        let e = install().expect_err("symlink").to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        assert_eq!(
            fs::read_dir(&elsewhere).expect("dir").count(),
            0,
            "nothing written there"
        );
        fs::remove_file(dir.path().join("pki/own/private")).expect("unlink");
        install().expect("real directories");

        // Another user's folder (only testable as root: chown it to nobody).
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(dir.path().join("pki/issuer/certs"), Some(65534), None)
                .expect("chown");
            let e = install().expect_err("foreign owner").to_string();
            assert!(e.contains("is owned by uid 65534"), "{e}");
        } else {
            let e = check_own_dir(dir.path(), rustix::process::geteuid().as_raw() + 1)
                .expect_err("another uid")
                .to_string();
            assert!(e.contains("not by the user device-client runs as"), "{e}");
        }
    }

    #[test]
    fn temporaries_stay_out_of_the_folders_stacks_read() {
        let ca = test_ca();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = OpcuaPki::new(dir.path().join("pki"));
        // Left over by a power cut: one in .tmp, one of the old kind in a trust-list folder.
        fs::create_dir_all(dir.path().join("pki/.tmp")).expect("mkdir");
        fs::create_dir_all(dir.path().join("pki/issuer/certs")).expect("mkdir");
        let old_tmp = dir.path().join("pki/.tmp/.device.der.tmp-AAAAAAAA");
        let old_in_folder = dir.path().join("pki/issuer/certs/.ca-1.der.tmp-AAAAAAAA");
        let operators = dir.path().join("pki/issuer/certs/.hidden-operator.der");
        for f in [&old_tmp, &old_in_folder, &operators] {
            fs::write(f, b"half").expect("write");
        }
        ca.install(&pki).expect("install");
        assert!(!old_tmp.exists() && !old_in_folder.exists());
        assert!(operators.exists(), "only temporaries are removed");
        assert_eq!(mode(&dir.path().join("pki/.tmp")), 0o700);
        assert_eq!(
            fs::read_dir(dir.path().join("pki/.tmp"))
                .expect("dir")
                .count(),
            0
        );
        // No folder a stack reads holds anything but the installed files.
        for rel in ["own/certs", "own/private", "trusted/certs", "issuer/certs"] {
            for entry in fs::read_dir(dir.path().join("pki").join(rel)).expect("dir") {
                let name = entry.expect("entry").file_name();
                let name = name.to_string_lossy();
                assert!(!name.contains(".tmp-"), "{rel}/{name}");
            }
        }
    }

    /// A CRL of the test intermediate whose extensions are replaced by `extensions` (each a
    /// whole Extension TLV), signed again: what rcgen cannot make (no cRLNumber, a delta CRL,
    /// an unknown critical extension).
    fn crl_with_extensions(ca: &TestCa, extensions: &[Vec<u8>]) -> Vec<u8> {
        use rcgen::SigningKey as _;
        let base = crl(&ca.intermediate_params, &ca.intermediate_key, 9, &[]);
        let (_, outer, _) = crate::der::read(&base).expect("CRL");
        let (_, tbs, rest) = crate::der::read(outer).expect("tbs");
        let (_, alg, _) = crate::der::read(rest).expect("algorithm");
        let mut fields = Vec::new();
        let mut input = tbs;
        while let Some((tag, content, after)) = crate::der::read(input) {
            if tag != 0xa0 {
                crate::der::write(&mut fields, tag, content);
            }
            input = after;
        }
        let exts = crate::der::tlv(0x30, &extensions.concat());
        fields.extend(crate::der::tlv(0xa0, &exts));
        let tbs = crate::der::tlv(0x30, &fields);
        let sig = ca.intermediate_key.sign(&tbs).expect("sign");
        let mut body = tbs;
        crate::der::write(&mut body, 0x30, alg);
        crate::der::write(&mut body, 0x03, &[&[0u8][..], &sig].concat());
        crate::der::tlv(0x30, &body)
    }

    /// One Extension TLV: `arcs`, critical or not, and the DER `value`.
    fn extension(arcs: &[u64], critical: bool, value: &[u8]) -> Vec<u8> {
        let mut ext = crate::der::tlv(0x06, &crate::der::oid_content(arcs));
        if critical {
            ext.extend([0x01, 0x01, 0xff]);
        }
        crate::der::write(&mut ext, 0x04, value);
        crate::der::tlv(0x30, &ext)
    }

    #[test]
    fn crls_that_are_not_current_complete_and_well_signed_are_refused() {
        let ca = test_ca();
        let now = time::OffsetDateTime::now_utc();
        let check = |crl: &[u8], issuer: &[u8]| check_crl(crl, issuer, now);
        let refused = |crl: &[u8], want: &str| {
            let e = check(crl, &ca.intermediate).expect_err(want);
            assert!(e.contains(want), "{e}");
        };
        let with = |f: &dyn Fn(&mut CertificateRevocationListParams)| {
            let mut p = crl_params(5, now, &[]);
            f(&mut p);
            sign_crl(&p, &ca.intermediate_params, &ca.intermediate_key)
        };
        check(&with(&|_| {}), &ca.intermediate).expect("a current CRL");

        // Time: expired, or issued in the future beyond the clock skew.
        refused(
            &with(&|p| {
                p.this_update = now - time::Duration::days(2);
                p.next_update = now - time::Duration::days(1);
            }),
            "nextUpdate",
        );
        refused(
            &with(&|p| p.this_update = now + time::Duration::minutes(10)),
            "is in the future",
        );
        check(
            &with(&|p| p.this_update = now + time::Duration::minutes(4)),
            &ca.intermediate,
        )
        .expect("within the clock skew");

        // Scope: a partitioned CRL (issuing distribution point), a delta CRL, an unknown
        // critical extension, no cRLNumber.
        refused(
            &with(&|p| {
                p.issuing_distribution_point = Some(rcgen::CrlIssuingDistributionPoint {
                    distribution_point: CrlDistributionPoint {
                        uris: vec!["https://ca.plant.test/crl/part1".to_owned()],
                    },
                    scope: None,
                });
            }),
            "issuing distribution point",
        );
        let number = extension(&[2, 5, 29, 20], false, &[0x02, 0x01, 0x09]);
        let crafted = crl_with_extensions(&ca, std::slice::from_ref(&number));
        check(&crafted, &ca.intermediate).expect("the crafting itself is sound");
        let delta = extension(&[2, 5, 29, 27], true, &[0x02, 0x01, 0x08]);
        refused(
            &crl_with_extensions(&ca, &[number.clone(), delta]),
            "delta CRL",
        );
        let unknown = extension(&[1, 3, 6, 1, 4, 1, 99999, 1], true, &[0x05, 0x00]);
        refused(
            &crl_with_extensions(&ca, &[number, unknown]),
            "unknown critical extension 1.3.6.1.4.1.99999.1",
        );
        let unknown = extension(&[1, 3, 6, 1, 4, 1, 99999, 1], false, &[0x05, 0x00]);
        refused(&crl_with_extensions(&ca, &[unknown]), "no cRLNumber");

        // The issuer: a certificate of the same name and key whose key usage lacks cRLSign.
        let mut params = ca.intermediate_params.clone();
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let no_crl_sign = params
            .self_signed(&ca.intermediate_key)
            .expect("certificate");
        let e = check(&with(&|_| {}), no_crl_sign.der()).expect_err("no cRLSign");
        assert!(e.contains("without cRLSign"), "{e}");
        // Likewise a CA certificate without keyCertSign signs no certificates.
        params.key_usages = vec![KeyUsagePurpose::CrlSign];
        let no_cert_sign = params
            .self_signed(&ca.intermediate_key)
            .expect("certificate");
        verify_chain(&[ca.leaf.clone(), ca.intermediate.clone()], None).expect("chain");
        assert!(verify_chain(&[ca.leaf.clone(), no_cert_sign.der().clone()], None).is_err());

        // The signature algorithm: Ed25519 is not among those accepted.
        let ed_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let ed_params = ca_params("Ed CA");
        let ed_ca = ed_params.self_signed(&ed_key).expect("ca");
        let ed_crl = sign_crl(&crl_params(1, now, &[]), &ed_params, &ed_key);
        let e = check(&ed_crl, ed_ca.der()).expect_err("ed25519");
        assert!(e.contains("signature algorithm 1.3.101.112"), "{e}");
    }

    #[test]
    fn a_crl_must_succeed_the_installed_one() {
        let ca = test_ca();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = OpcuaPki::new(dir.path().join("pki"));
        ca.install(&pki).expect("install");
        let targets = pki.crl_targets(Some(&ca.root)).expect("targets");
        let t = &targets[0];
        let now = time::OffsetDateTime::now_utc();
        let at = |number: u64, this_update: time::OffsetDateTime, revoked: &[u64]| {
            let p = crl_params(number, this_update, revoked);
            sign_crl(&p, &ca.intermediate_params, &ca.intermediate_key)
        };
        let installed = at(7, now - time::Duration::minutes(10), &[1]);
        pki.write_crl(t, &installed).expect("first");
        // The same number with other contents, and a higher number with an older thisUpdate.
        let e = pki
            .write_crl(t, &at(7, now - time::Duration::minutes(10), &[1, 2]))
            .expect_err("same number")
            .to_string();
        assert!(e.contains("contents differ"), "{e}");
        let e = pki
            .write_crl(t, &at(8, now - time::Duration::hours(1), &[1, 2]))
            .expect_err("older thisUpdate")
            .to_string();
        assert!(e.contains("older than the installed CRL's"), "{e}");
        assert_eq!(fs::read(&t.path).expect("crl"), installed);
        // The same bytes again, and a real successor, are fine.
        assert!(!pki.write_crl(t, &installed).expect("same").changed);
        assert!(
            pki.write_crl(t, &at(8, now, &[1, 2]))
                .expect("next")
                .changed
        );
    }

    #[test]
    fn crl_targets_need_an_installed_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = OpcuaPki::new(dir.path().to_path_buf());
        let e = pki
            .crl_targets(None)
            .expect_err("nothing installed")
            .to_string();
        assert!(e.contains("no certificate is installed yet"), "{e}");
    }

    /// DER and PKCS #12 outputs in `dir` (passphrase "correct horse"), and `opcua_pki`.
    fn der_and_pkcs12(dir: &Path, opcua_pki: Option<OpcuaPki>) -> Outputs {
        let pass = dir.join("p12.pass");
        fs::write(&pass, "correct horse\n").expect("pass");
        Outputs {
            der: true,
            pkcs12: Some(
                Pkcs12Output::from_passphrase_file(dir.join("device.p12"), &pass)
                    .expect("passphrase"),
            ),
            opcua_pki,
        }
    }

    #[test]
    fn der_and_pkcs12_outputs() {
        let ca = test_ca();
        let dir = tempfile::tempdir().expect("tempdir");
        let outputs = der_and_pkcs12(dir.path(), None);
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("cert.key.pem");
        let chain = [ca.leaf.clone(), ca.intermediate.clone()];
        write(
            &outputs,
            &cert_path,
            &key_path,
            &ca.key,
            &chain,
            Some(&ca.root),
        )
        .expect("write");

        let (cert_der, key_der) = der_paths(&cert_path, &key_path);
        assert_eq!(cert_der, dir.path().join("cert.der"));
        assert_eq!(key_der, dir.path().join("cert.key.der"));
        assert_eq!(fs::read(&cert_der).expect("cert.der"), ca.leaf.as_ref());
        assert_eq!(fs::read(&key_der).expect("key.der"), ca.key.pkcs8_der());
        assert_eq!(mode(&key_der), 0o600);

        let p12_path = dir.path().join("device.p12");
        assert_eq!(mode(&p12_path), 0o600);
        let p12 = fs::read(&p12_path).expect("p12");
        let store = p12_keystore::KeyStore::from_pkcs12(
            &p12,
            "correct horse",
            p12_keystore::Pkcs12ImportPolicy::default(),
        )
        .expect("opens with the passphrase");
        let (_, chain_entry) = store.private_key_chain().expect("a key with its chain");
        assert_eq!(chain_entry.key().as_der(), ca.key.pkcs8_der());
        let certs: Vec<&[u8]> = chain_entry.certs().iter().map(|c| c.as_der()).collect();
        assert_eq!(certs, [ca.leaf.as_ref(), ca.intermediate.as_ref()]);
        assert!(p12_keystore::KeyStore::from_pkcs12(
            &p12,
            "wrong",
            p12_keystore::Pkcs12ImportPolicy::default()
        )
        .is_err());
    }

    #[test]
    fn stale_outputs_are_found() {
        let ca = test_ca();
        let dir = tempfile::tempdir().expect("tempdir");
        let outputs = der_and_pkcs12(dir.path(), Some(OpcuaPki::new(dir.path().join("pki"))));
        let pki = outputs.opcua_pki.clone().expect("pki");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("cert.key.pem");
        let chain = [ca.leaf.clone(), ca.intermediate.clone()];
        let stale = || {
            stale(
                &outputs, &cert_path, &key_path, &ca.key, &ca.leaf, &mut None,
            )
            .expect("stale")
        };
        assert!(stale().expect("nothing written").contains("is missing"));
        let write_all = || {
            write(
                &outputs,
                &cert_path,
                &key_path,
                &ca.key,
                &chain,
                Some(&ca.root),
            )
            .expect("write")
        };
        write_all();
        assert_eq!(stale(), None);

        // Each output holding another certificate or key is found.
        let (cert_der, key_der) = der_paths(&cert_path, &key_path);
        let other = CertKey::generate(KeyAlgorithm::P256).expect("key");
        for (path, bytes) in [
            (cert_der.clone(), ca.intermediate.to_vec()),
            (key_der.clone(), other.pkcs8_der().to_vec()),
            (pki.own_cert(), ca.intermediate.to_vec()),
            (pki.own_key(), other.to_pem().into_bytes()),
        ] {
            fs::write(&path, bytes).expect("tamper");
            let why = stale().expect("stale");
            assert!(why.starts_with(&path.display().to_string()), "{why}");
            write_all();
            assert_eq!(stale(), None);
        }
        let p12 = pkcs12(other.pkcs8_der(), &chain, "correct horse").expect("p12");
        fs::write(dir.path().join("device.p12"), p12).expect("tamper");
        assert!(stale().expect("stale").contains("device.p12 holds"));
    }

    #[test]
    fn pkcs12_passphrase_file_must_hold_a_passphrase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let e = Pkcs12Output::from_passphrase_file("x.p12".into(), &missing)
            .expect_err("missing")
            .to_string();
        assert!(
            e.contains("cannot read the PKCS #12 passphrase file"),
            "{e}"
        );
        let empty = dir.path().join("empty");
        fs::write(&empty, "\n").expect("write");
        let e = Pkcs12Output::from_passphrase_file("x.p12".into(), &empty)
            .expect_err("empty")
            .to_string();
        assert!(e.contains("is empty"), "{e}");
        // The passphrase is never printed.
        fs::write(&empty, "s3cret\n").expect("write");
        let out = Pkcs12Output::from_passphrase_file("x.p12".into(), &empty).expect("ok");
        assert!(!format!("{out:?}").contains("s3cret"));
    }
}
