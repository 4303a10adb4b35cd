//! The CA hierarchy on disk: creating the root and the issuing intermediates on first start,
//! and loading and checking them (key files mode 0600, certificates matching their keys,
//! chains and lifetimes) on every later one. Nothing is ever regenerated over a file that
//! exists: a missing or damaged file is an error that names it.

use super::*;

impl CertificateAuthority {
    /// Loads the CA hierarchy from `dir` (e.g. `<data_dir>/ca`), creating it on first start: a
    /// self-signed root (`cfg.root_key`, 10 years, CA:true pathlen 1, keyCertSign + cRLSign)
    /// and an issuing intermediate signed by it (`cfg.intermediate_key`, 5 years, pathlen 0).
    /// The RSA intermediate (`cfg.rsa_intermediate_key`, 5 years, pathlen 0) is created when
    /// neither of its files exists, on first start or later, unless the config says `none`.
    ///
    /// With `root.pem` and the EC intermediate present but no `root.key`, the root key is
    /// offline (`offline`): everything else is loaded and checked as usual, and nothing that
    /// needs the root key is created, so a missing RSA intermediate is then an error.
    ///
    /// Restarting reuses everything; the key types in `cfg` only matter when a key is created.
    /// A missing or corrupt file gives `Error::Internal` naming the file; a root or an
    /// intermediate is never regenerated because one file of its set is missing.
    ///
    /// With `cfg.intermediate_key_uri` the issuing key (and with `cfg.root_key_uri` the root
    /// key, with `cfg.rsa_intermediate_key_uri` the RSA intermediate's) is in a PKCS #11 token
    /// instead: nothing is created, see [`token`].
    pub fn load_or_init(dir: &Path, cfg: &IssuanceConfig) -> Result<Self> {
        ensure_private_dir(dir)?;
        match token::configured(
            token::INTERMEDIATE_KEY_URI,
            cfg.intermediate_key_uri.as_deref(),
        )? {
            Some(uri) => return Self::load_with_token(dir, cfg, &uri),
            None => {
                if let Some(e) = token::without_intermediate(cfg) {
                    return Err(Error::Internal(e));
                }
            }
        }
        // The root key last: with the others all there, its absence means an offline root,
        // and any other missing file is the one to name.
        let files = [ROOT_CERT, INTERMEDIATE_CERT, INTERMEDIATE_KEY, ROOT_KEY];
        let mut present = Vec::with_capacity(files.len());
        for name in files {
            let path = dir.join(name);
            let exists = path
                .try_exists()
                .map_err(|e| file_error(&path, format!("cannot be checked: {e}")))?;
            present.push((name, exists));
        }
        let new_ca = present.iter().all(|(_, exists)| !exists);
        let root_key_offline = present
            .iter()
            .all(|(name, exists)| *exists == (*name != ROOT_KEY));
        if new_ca {
            if let Some(pending) = offline::pending_key(dir)? {
                return Err(file_error(
                    &pending,
                    "is an issuing key waiting for its certificate from an offline root \
                     (`ca-server intermediate request`); refusing to create a self-signed CA \
                     beside it. Finish with `ca-server root sign` on the root's machine and \
                     `ca-server intermediate install` here, or remove the file to let the CA \
                     create its own root",
                ));
            }
            create_hierarchy(dir, cfg)?;
            tracing::info!(dir = %dir.display(), "created a new CA root and issuing intermediate");
        } else if !root_key_offline {
            if let Some((missing, _)) = present.iter().find(|(_, exists)| !exists) {
                return Err(file_error(
                    &dir.join(missing),
                    "is missing while other CA files exist; refusing to create a new CA over an \
                     existing one (every device trusting the old root would stop validating). \
                     Restore the file from a backup, or empty the directory to start a new CA",
                ));
            }
        }
        let mut ca = Self::load(dir, !root_key_offline)?;
        ca.rsa = Self::load_or_init_rsa(
            dir,
            &ca.root_der,
            cfg.rsa_intermediate_key,
            new_ca,
            !root_key_offline,
        )?;
        if root_key_offline {
            tracing::info!(dir = %dir.display(), "the root key is offline (no root.key in the CA directory): new intermediates are signed on the root's machine and installed with `ca-server intermediate install`. If root.key was lost rather than taken offline, restore it from a backup");
        }
        tracing::info!(root = %ca.root_path.display(), fingerprint = %ca.root_fingerprint(), rsa_intermediate = ca.rsa.is_some(), root_key_offline, "CA loaded");
        Ok(ca)
    }

    /// The RSA intermediate: loaded if both its files exist, created if neither does (unless
    /// `want` is `none`), refused if only one does. `new_ca`: the root was created just now;
    /// `root_key_online`: `root.key` is in `dir`, so the CA can create the RSA intermediate.
    pub(super) fn load_or_init_rsa(
        dir: &Path,
        root_der: &[u8],
        want: RsaIntermediateKey,
        new_ca: bool,
        root_key_online: bool,
    ) -> Result<Option<Intermediate>> {
        let cert_path = dir.join(RSA_INTERMEDIATE_CERT);
        let key_path = dir.join(RSA_INTERMEDIATE_KEY);
        let exists = |path: &Path| {
            path.try_exists()
                .map_err(|e| file_error(path, format!("cannot be checked: {e}")))
        };
        match (exists(&cert_path)?, exists(&key_path)?, want.bits()) {
            (false, false, None) => return Ok(None),
            (false, false, Some(_)) if !root_key_online => {
                let pending = dir.join(offline::RSA_INTERMEDIATE_PENDING_KEY);
                let next = if pending.exists() {
                    "A request is pending: sign it with `ca-server root sign` on the root's \
                     machine and install the certificate with `ca-server intermediate install`"
                } else {
                    "Make one with `ca-server intermediate request --kind rsa`, sign it with \
                     `ca-server root sign` on the root's machine and install it with \
                     `ca-server intermediate install`"
                };
                return Err(file_error(
                    &cert_path,
                    format!(
                        "is missing and the root key is offline, so the CA cannot create its \
                         RSA intermediate. {next}; or set issuance.rsa_intermediate_key = \
                         \"none\" to run without one"
                    ),
                ));
            }
            (false, false, Some(bits)) => {
                create_rsa_intermediate(dir, root_der, bits)?;
                if new_ca {
                    tracing::info!(dir = %dir.display(), bits, "created an RSA issuing intermediate");
                } else {
                    // An upgrade from a version without it, or both files were lost: the
                    // operator must be able to tell the two apart, so this is not quiet.
                    tracing::warn!(dir = %dir.display(), bits, "created a NEW RSA issuing intermediate for an existing CA root. Expected once after an upgrade; otherwise rsa-intermediate.pem/.key were lost, and certificates the old one issued can no longer be checked against its CRL");
                }
            }
            (true, true, _) => {}
            (cert, _, _) => {
                let (missing, present) = if cert {
                    (&key_path, &cert_path)
                } else {
                    (&cert_path, &key_path)
                };
                return Err(file_error(
                    missing,
                    format!(
                        "is missing while {} exists; refusing to replace the RSA intermediate \
                         (certificates it issued could no longer be checked against its CRL). \
                         Restore the file from a backup, or remove {} too to create a new RSA \
                         intermediate",
                        present.display(),
                        present.display()
                    ),
                ));
            }
        }
        let key = CaKey::File(read_key(&key_path)?);
        let key_name = format!("CA file {}", key_path.display());
        Intermediate::load_rsa(dir, root_der, key, &key_name, want).map(Some)
    }

    /// Reads and cross-checks the root and EC files (the RSA intermediate comes after);
    /// `root.key` too when `with_root_key`.
    pub(super) fn load(dir: &Path, with_root_key: bool) -> Result<Self> {
        let root_key_path = dir.join(ROOT_KEY);
        Self::load_with(
            dir,
            |root| match with_root_key {
                true => check_root_key(&root_key_path, &read_key(&root_key_path)?, root),
                false => Ok(()),
            },
            || {
                let key_path = dir.join(INTERMEDIATE_KEY);
                let key = CaKey::File(read_key(&key_path)?);
                Ok((key, format!("CA file {}", key_path.display())))
            },
        )
    }

    /// Reads `root.pem` and checks it (`check_root_key` checks its key, wherever that is),
    /// then `intermediate.pem` against the root and the EC issuing key `ec_key` gives (with its
    /// name for messages).
    pub(super) fn load_with(
        dir: &Path,
        check_root_key: impl FnOnce(&X509Certificate<'_>) -> Result<()>,
        ec_key: impl FnOnce() -> Result<(CaKey, String)>,
    ) -> Result<Self> {
        let root_path = dir.join(ROOT_CERT);
        let root_der = read_pem_cert(&root_path)?;
        let root = parse_cert(&root_path, &root_der)?;
        check_root(&root_path, &root)?;
        check_root_key(&root)?;
        let (key, key_name) = ec_key()?;
        let ec = Intermediate::load(
            &dir.join(INTERMEDIATE_CERT),
            key,
            &key_name,
            &root,
            &root_path,
        )?;
        Ok(Self {
            root_pem: pem_encode("CERTIFICATE", &root_der),
            root_path,
            root_der,
            ec,
            rsa: None,
        })
    }
}

impl Intermediate {
    /// Reads `rsa-intermediate.pem` in `dir` and checks it against its key (a key file's or a
    /// token's; `key_name` names it in messages) and the root: an RSA key of 2048 to 4096 bits
    /// that the root certified. `want` is the configured size, which only a new one gets.
    pub(super) fn load_rsa(
        dir: &Path,
        root_der: &[u8],
        key: CaKey,
        key_name: &str,
        want: RsaIntermediateKey,
    ) -> Result<Self> {
        let cert_path = dir.join(RSA_INTERMEDIATE_CERT);
        let root_path = dir.join(ROOT_CERT);
        let root = parse_cert(&root_path, root_der)?;
        let rsa = Self::load(&cert_path, key, key_name, &root, &root_path)?;
        if rsa.issuer.key().algorithm() != &rcgen::PKCS_RSA_SHA256 {
            return Err(Error::Internal(format!("{key_name}: is not an RSA key")));
        }
        let intermediate = parse_cert(&cert_path, &rsa.der)?;
        let size = match intermediate.public_key().parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(key)) => key.key_size(),
            _ => 0,
        };
        if !(2048..=4096).contains(&size) {
            return Err(file_error(
                &cert_path,
                format!("has a {size}-bit key; the RSA intermediate needs 2048 to 4096 bits"),
            ));
        }
        if want.bits().is_some_and(|bits| bits != size) {
            tracing::warn!(file = %cert_path.display(), size, wanted = ?want, "the existing RSA intermediate is kept; issuance.rsa_intermediate_key only applies when one is created");
        }
        Ok(rsa)
    }

    /// Reads an intermediate and checks it against its key (a key file's, or a token's;
    /// `key_name` names it in messages) and the root.
    pub(super) fn load(
        cert_path: &Path,
        key: CaKey,
        key_name: &str,
        root: &X509Certificate<'_>,
        root_path: &Path,
    ) -> Result<Self> {
        let der = read_pem_cert(cert_path)?;
        let cert = parse_cert(cert_path, &der)?;
        if !cert.is_ca() {
            return Err(file_error(cert_path, "is not a CA certificate"));
        }
        if cert.issuer().as_raw() != root.subject().as_raw()
            || cert.verify_signature(Some(root.public_key())).is_err()
        {
            return Err(file_error(
                cert_path,
                format!("was not issued by {}", root_path.display()),
            ));
        }
        if key.subject_public_key_info() != cert.public_key().raw {
            let name = cert_path.file_name().unwrap_or_default().to_string_lossy();
            return Err(Error::Internal(format!(
                "{key_name}: does not match {name}"
            )));
        }
        let not_after = cert.validity().not_after.to_datetime();
        if not_after.unix_timestamp() <= crate::types::now() {
            tracing::error!(
                file = %cert_path.display(),
                "the issuing intermediate has expired: issuance will fail"
            );
        }
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(der.as_slice()), key)
            .map_err(|e| file_error(cert_path, format!("cannot be used to issue: {e}")))?;
        Ok(Self {
            path: cert_path.to_path_buf(),
            pem: pem_encode("CERTIFICATE", &der),
            der,
            not_after,
            issuer,
            crl_url: None,
        })
    }
}

/// Refuses a root certificate that is not a self-signed CA.
pub(super) fn check_root(path: &Path, root: &X509Certificate<'_>) -> Result<()> {
    if !root.is_ca() {
        return Err(file_error(path, "is not a CA certificate"));
    }
    if root.issuer().as_raw() != root.subject().as_raw() || root.verify_signature(None).is_err() {
        return Err(file_error(
            path,
            "is not self-signed (its signature does not verify with its own key)",
        ));
    }
    Ok(())
}

/// Refuses a root key that is not the key of `root`.
pub(super) fn check_root_key(path: &Path, key: &KeyPair, root: &X509Certificate<'_>) -> Result<()> {
    if key.subject_public_key_info() != root.public_key().raw {
        return Err(file_error(path, "does not match root.pem"));
    }
    Ok(())
}

/// The per-installation tag in a root's name (`iiot-acme Root CA <tag>`), if it has one.
pub(super) fn root_tag(root: &X509Certificate<'_>) -> Option<String> {
    root.subject().iter_common_name().find_map(|cn| {
        cn.as_str()
            .ok()?
            .strip_prefix(ROOT_CN_PREFIX)
            .map(str::to_owned)
    })
}

/// Generates the root and intermediate and writes the four files.
pub(super) fn create_hierarchy(dir: &Path, cfg: &IssuanceConfig) -> Result<()> {
    let root_key = generate_ca_key(cfg.root_key)?;
    let intermediate_key = generate_ca_key(cfg.intermediate_key)?;
    let (root_der, intermediate_der) = sign_hierarchy(&root_key, &intermediate_key, |what, e| {
        Error::Internal(format!("{what}: {e}"))
    })?;
    // Keys before certificates; if a crash interrupts this, the next start finds an
    // incomplete set and refuses to run instead of guessing.
    write_key(&dir.join(ROOT_KEY), &root_key)?;
    write_key(&dir.join(INTERMEDIATE_KEY), &intermediate_key)?;
    write_cert(&dir.join(ROOT_CERT), &root_der)?;
    write_cert(&dir.join(INTERMEDIATE_CERT), &intermediate_der)
}

/// A new root self-signed with `root_key` and the EC intermediate for `intermediate_key`
/// signed by it: their DER. `failed` makes the error of a signature that failed.
pub(super) fn sign_hierarchy(
    root_key: &impl rcgen::SigningKey,
    intermediate_key: &impl PublicKeyData,
    failed: impl Fn(&str, &rcgen::Error) -> Error,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let now = now_whole_seconds()?;
    // A per-installation tag in the names, so two sites' CAs are told apart in a trust store
    // or a log, and path builders matching on names never confuse them.
    let tag = hex::encode(random_bytes::<4>()?);
    let root_params = root_params(&tag, now)?;
    let root_cert = root_params
        .self_signed(root_key)
        .map_err(|e| failed("cannot self-sign the root", &e))?;
    let intermediate_params = intermediate_params(intermediate_cn(IssuerKind::Ec, &tag), now)?;
    let root_issuer = Issuer::from_params(&root_params, root_key);
    let intermediate_cert = intermediate_params
        .signed_by(intermediate_key, &root_issuer)
        .map_err(|e| failed("cannot sign the intermediate", &e))?;
    Ok((root_cert.der().to_vec(), intermediate_cert.der().to_vec()))
}

/// Writes a private key, PKCS#8 PEM, mode 0600 from the start.
pub(super) fn write_key(path: &Path, key: &KeyPair) -> Result<()> {
    write_atomic(path, key.serialize_pem().as_bytes(), 0o600)
}

/// Writes a certificate, PEM, mode 0644.
pub(super) fn write_cert(path: &Path, der: &[u8]) -> Result<()> {
    write_atomic(path, pem_encode("CERTIFICATE", der).as_bytes(), 0o644)
}

/// Generates the RSA intermediate (`bits`, signed by the root in `dir`) and writes its two
/// files, key first, as `create_hierarchy` does.
pub(super) fn create_rsa_intermediate(dir: &Path, root_der: &[u8], bits: usize) -> Result<()> {
    let root_path = dir.join(ROOT_CERT);
    let root_key = read_key(&dir.join(ROOT_KEY))?;
    let key = generate_rsa_key(bits)?;
    let cert = sign_rsa_intermediate(&root_path, root_der, &root_key, &key, |what, e| {
        Error::Internal(format!("{what}: {e}"))
    })?;
    write_key(&dir.join(RSA_INTERMEDIATE_KEY), &key)?;
    write_cert(&dir.join(RSA_INTERMEDIATE_CERT), &cert)
}

/// The RSA intermediate's certificate (DER) for `key`, signed by the root `root_der` (read from
/// `root_path`) with `root_key`, named with the root's per-installation tag like its siblings.
/// `failed` makes the error of a signature that failed.
pub(super) fn sign_rsa_intermediate(
    root_path: &Path,
    root_der: &[u8],
    root_key: &impl rcgen::SigningKey,
    key: &impl PublicKeyData,
    failed: impl Fn(&str, &rcgen::Error) -> Error,
) -> Result<Vec<u8>> {
    let root = parse_cert(root_path, root_der)?;
    // The root's per-installation tag, so the RSA intermediate is named like its siblings.
    let tag = match root_tag(&root) {
        Some(tag) => tag,
        None => hex::encode(random_bytes::<4>()?),
    };
    let root_issuer = Issuer::from_ca_cert_der(&CertificateDer::from(root_der), root_key)
        .map_err(|e| file_error(root_path, format!("cannot be used to issue: {e}")))?;
    let params = intermediate_params(intermediate_cn(IssuerKind::Rsa, &tag), now_whole_seconds()?)?;
    let cert = params
        .signed_by(key, &root_issuer)
        .map_err(|e| failed("cannot sign the RSA intermediate", &e))?;
    Ok(cert.der().to_vec())
}

/// The root's parameters: 10 years, pathlen 1, named with the installation's `tag`.
pub(super) fn root_params(tag: &str, now: OffsetDateTime) -> Result<CertificateParams> {
    ca_params(format!("{ROOT_CN_PREFIX}{tag}"), now, ROOT_LIFETIME, 1)
}

/// The common name of the intermediate `kind` under a root tagged `tag`.
pub(super) fn intermediate_cn(kind: IssuerKind, tag: &str) -> String {
    match kind {
        IssuerKind::Ec => format!("iiot-acme Issuing CA {tag}"),
        IssuerKind::Rsa => format!("iiot-acme RSA Issuing CA {tag}"),
    }
}

/// An issuing intermediate's parameters: 5 years, pathlen 0, AKI, EKU serverAuth + clientAuth.
pub(super) fn intermediate_params(
    common_name: String,
    now: OffsetDateTime,
) -> Result<CertificateParams> {
    let mut params = ca_params(common_name, now, INTERMEDIATE_LIFETIME, 0)?;
    params.use_authority_key_identifier_extension = true;
    // digitalSignature lets the intermediate sign OCSP responses itself later.
    params.key_usages.push(KeyUsagePurpose::DigitalSignature);
    // An EKU on the intermediate limits what anything it signs can be used for, even if the
    // online key leaks.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// Parameters shared by the root and the intermediates.
pub(super) fn ca_params(
    common_name: String,
    now: OffsetDateTime,
    lifetime: time::Duration,
    path_len: u8,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + lifetime;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "iiot-acme");
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

pub(super) fn generate_ca_key(kind: CaKeyType) -> Result<KeyPair> {
    let alg: &'static SignatureAlgorithm = match kind {
        CaKeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        CaKeyType::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
    };
    KeyPair::generate_for(alg)
        .map_err(|e| Error::Internal(format!("cannot generate a CA key: {e}")))
}

/// A new RSA key (public exponent 65537) that signs with sha256WithRSAEncryption. ring signs
/// with RSA but cannot generate RSA keys, so the `rsa` crate generates it and hands it over as
/// PKCS#8; only ring ever signs with it.
pub(super) fn generate_rsa_key(bits: usize) -> Result<KeyPair> {
    use rsa::pkcs8::EncodePrivateKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
        .map_err(|e| Error::Internal(format!("cannot generate an RSA-{bits} key: {e}")))?;
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|e| Error::Internal(format!("cannot encode the RSA key: {e}")))?;
    KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
        &rcgen::PKCS_RSA_SHA256,
    )
    .map_err(|e| Error::Internal(format!("the generated RSA key is unusable: {e}")))
}

pub(super) fn file_error(path: &Path, what: impl fmt::Display) -> Error {
    Error::Internal(format!("CA file {}: {what}", path.display()))
}

pub(super) fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => file_error(path, "is missing"),
        _ => file_error(path, format!("cannot be read: {e}")),
    })
}

/// The DER of the first `CERTIFICATE` block of a PEM file.
pub(super) fn read_pem_cert(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_file(path)?;
    match x509_parser::pem::parse_x509_pem(&bytes) {
        Ok((_, pem)) if pem.label == "CERTIFICATE" => Ok(pem.contents),
        Ok((_, pem)) => Err(file_error(
            path,
            format!("holds a {:?} PEM block, not a CERTIFICATE", pem.label),
        )),
        Err(e) => Err(file_error(path, format!("is not PEM: {e}"))),
    }
}

pub(super) fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(file_error(path, "has trailing bytes after the certificate")),
        Err(e) => Err(file_error(path, format!("is not a valid certificate: {e}"))),
    }
}

/// A PKCS#8 private key PEM file.
pub(super) fn read_key(path: &Path) -> Result<KeyPair> {
    let bytes = read_file(path)?;
    warn_if_exposed(path);
    let text = String::from_utf8(bytes).map_err(|_| file_error(path, "is not PEM text"))?;
    KeyPair::from_pem(&text)
        .map_err(|e| file_error(path, format!("is not a usable PKCS#8 private key: {e}")))
}

/// Logs a warning if a key file is readable by group or others (e.g. restored from a backup
/// with the wrong mode). Not fatal: the operator may have reasons, but should know.
#[cfg(unix)]
pub(super) fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "private key file is readable by others");
        }
    }
}

#[cfg(not(unix))]
pub(super) fn warn_if_exposed(_: &Path) {}
