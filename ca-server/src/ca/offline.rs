//! An offline root: the root key lives on a machine that is not the CA host, and the CA host
//! never holds it.
//!
//! Four steps replace the first start's self-initialisation:
//!
//! 1. [`create_root`] on the offline machine writes `root.key` and `root.pem`, with the profile
//!    the CA gives a root it creates itself.
//! 2. [`request_intermediate`] on the CA host generates an issuing key in the CA directory as a
//!    pending key file, which the running CA does not use, and returns a PKCS#10 request for it.
//!    With `issuance.intermediate_key_uri` the EC issuing key (and with
//!    `issuance.rsa_intermediate_key_uri` the RSA one) is generated in that PKCS #11 token
//!    instead (see [`super::token`]) and signs the request there; no key file is written.
//! 3. [`sign_intermediate`] on the offline machine checks the request and certifies its key
//!    with the intermediate profile (pathlen 0, keyCertSign + cRLSign), within the root's life.
//! 4. [`install_intermediate`] on the CA host checks the certificate against the root and the
//!    pending key (or the token's key), and installs the certificate, the key file if there is
//!    one and the root certificate under the names a self-initialised CA uses. The CA then
//!    starts with the root key offline (`CertificateAuthority::load_or_init`), and with a token
//!    the issuing key found by its URI.
//!
//! Files in the CA directory besides those of `mod.rs`:
//!
//! | file                           | contents                                        | mode |
//! |--------------------------------|-------------------------------------------------|------|
//! | `intermediate.pending.key`     | EC issuing key waiting for its certificate      | 0600 |
//! | `rsa-intermediate.pending.key` | RSA issuing key waiting for its certificate     | 0600 |
//!
//! Installing never replaces an installed intermediate or a root: certificates an intermediate
//! issued could no longer be checked against its CRL, and devices trust the root.

use x509_parser::certification_request::X509CertificationRequest;

use super::*;

/// The EC issuing key between `intermediate request` and `intermediate install`.
pub(super) const INTERMEDIATE_PENDING_KEY: &str = "intermediate.pending.key";
/// The RSA issuing key between `intermediate request --kind rsa` and `intermediate install`.
pub(super) const RSA_INTERMEDIATE_PENDING_KEY: &str = "rsa-intermediate.pending.key";

/// The most days `sign_intermediate` certifies for: the root's own lifetime (the root's
/// notAfter caps it further).
pub const MAX_INTERMEDIATE_DAYS: u32 = 3652;

/// The file names of the intermediate `kind`: certificate, key, pending key.
fn slot(kind: IssuerKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        IssuerKind::Ec => (
            INTERMEDIATE_CERT,
            INTERMEDIATE_KEY,
            INTERMEDIATE_PENDING_KEY,
        ),
        IssuerKind::Rsa => (
            RSA_INTERMEDIATE_CERT,
            RSA_INTERMEDIATE_KEY,
            RSA_INTERMEDIATE_PENDING_KEY,
        ),
    }
}

/// The first pending key file in the CA directory `dir`, if there is one.
pub(super) fn pending_key(dir: &Path) -> Result<Option<PathBuf>> {
    for name in [INTERMEDIATE_PENDING_KEY, RSA_INTERMEDIATE_PENDING_KEY] {
        let path = dir.join(name);
        if exists(&path)? {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn exists(path: &Path) -> Result<bool> {
    path.try_exists()
        .map_err(|e| file_error(path, format!("cannot be checked: {e}")))
}

/// What [`create_root`] wrote.
#[derive(Debug)]
pub struct CreatedRoot {
    /// `root.pem`.
    pub cert_path: PathBuf,
    /// `root.key`.
    pub key_path: PathBuf,
    /// SHA-256 of the certificate, `AB:CD:…`.
    pub fingerprint: String,
    /// The certificate's subject.
    pub subject: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

/// Creates a root in `out` (made 0700 if missing): `root.key` (PKCS#8, 0600) and `root.pem`,
/// with the profile of a root the CA creates on first start (10 years, pathlen 1,
/// keyCertSign + cRLSign, a per-installation tag in its name). Refuses to overwrite either file.
pub fn create_root(out: &Path, key_type: CaKeyType) -> Result<CreatedRoot> {
    ensure_private_dir(out)?;
    let cert_path = out.join(ROOT_CERT);
    let key_path = out.join(ROOT_KEY);
    for path in [&key_path, &cert_path] {
        if exists(path)? {
            return Err(file_error(
                path,
                "exists; refusing to overwrite a root (every device trusting it would stop \
                 validating). Choose another directory",
            ));
        }
    }
    let tag = hex::encode(random_bytes::<4>()?);
    let now = now_whole_seconds()?;
    let key = generate_ca_key(key_type)?;
    let params = root_params(&tag, now)?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::Internal(format!("cannot self-sign the root: {e}")))?;
    // Key first, as on first start: a crash leaves no certificate without its key.
    write_key(&key_path, &key)?;
    write_cert(&cert_path, cert.der())?;
    Ok(CreatedRoot {
        fingerprint: crate::wire::fingerprint(cert.der()),
        subject: format!("O=iiot-acme, CN={ROOT_CN_PREFIX}{tag}"),
        not_after: params.not_after.unix_timestamp(),
        cert_path,
        key_path,
    })
}

/// Where the issuing key of an [`IntermediateRequest`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKey {
    /// A pending key file in the CA directory.
    File(PathBuf),
    /// A key in a PKCS #11 token, by its URI and the setting that gives it
    /// (`issuance.intermediate_key_uri` or `issuance.rsa_intermediate_key_uri`).
    Token {
        /// The setting.
        setting: &'static str,
        /// The URI, without a PIN.
        uri: String,
    },
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Token { setting, uri } => write!(f, "{setting} {uri}"),
        }
    }
}

/// What [`request_intermediate`] made.
#[derive(Debug)]
pub struct IntermediateRequest {
    /// The PKCS#10 request, PEM.
    pub csr_pem: String,
    /// The issuing key the request is for.
    pub key: RequestKey,
    /// The key was there already (an earlier request), and this request is for it.
    pub reused: bool,
}

/// Refuses an offline-root step for a CA whose root key is in a token: `init --hsm` made its
/// intermediate with it.
fn refuse_root_in_token(cfg: &IssuanceConfig) -> Result<()> {
    if cfg.root_key_uri.is_some() {
        return Err(Error::Internal(format!(
            "{} is set: this CA's root key is in a token, and the CA's intermediate is made with \
             it (`ca-server init --hsm`). For an offline root, leave the setting out and keep \
             only {} in the configuration",
            token::ROOT_KEY_URI,
            token::INTERMEDIATE_KEY_URI
        )));
    }
    Ok(())
}

/// The setting that puts the issuing key of the intermediate `kind` in a token.
fn uri_setting(kind: IssuerKind) -> &'static str {
    match kind {
        IssuerKind::Ec => token::INTERMEDIATE_KEY_URI,
        IssuerKind::Rsa => token::RSA_INTERMEDIATE_KEY_URI,
    }
}

/// The issuing key's URI when the intermediate `kind`'s key is in a token
/// (`issuance.intermediate_key_uri`, `issuance.rsa_intermediate_key_uri`).
fn token_uri(kind: IssuerKind, cfg: &IssuanceConfig) -> Result<Option<pkcs11_key::Pkcs11Uri>> {
    let text = match kind {
        IssuerKind::Ec => &cfg.intermediate_key_uri,
        IssuerKind::Rsa => &cfg.rsa_intermediate_key_uri,
    };
    token::configured(uri_setting(kind), text.as_deref())
}

/// Refuses a key file of the intermediate `kind` in `dir` (pending or installed) beside a URI
/// that says the key is in a token: which one is the CA's would be a guess.
fn refuse_key_files_beside_token(dir: &Path, kind: IssuerKind) -> Result<()> {
    let (_, key_name, pending_name) = slot(kind);
    for name in [pending_name, key_name] {
        let path = dir.join(name);
        if exists(&path)? {
            return Err(file_error(
                &path,
                format!(
                    "exists, but {} says the issuing key is in a token; remove the file (keep \
                     a copy offline if it is the only one) or the setting",
                    uri_setting(kind)
                ),
            ));
        }
    }
    Ok(())
}

/// The error for an RSA intermediate asked for with `issuance.rsa_intermediate_key = "none"`.
fn no_rsa_size() -> Error {
    Error::Internal(
        "issuance.rsa_intermediate_key is \"none\": set the RSA intermediate's size (rsa2048, \
         rsa3072 or rsa4096) to request one"
            .to_owned(),
    )
}

/// Generates the issuing key of the intermediate `kind` and returns a request for it, named
/// like the intermediates of a self-initialised CA. The key is a pending key file in the CA
/// directory `dir` (0600; the key type from `cfg`: `intermediate_key`, or
/// `rsa_intermediate_key`'s size), or with `intermediate_key_uri` (for the EC intermediate) or
/// `rsa_intermediate_key_uri` (for the RSA one) a key of that type generated in the token under
/// the URI's object and id (sensitive and never extractable, as `init --hsm` makes it), which
/// signs the request; no key file is written then. A key already
/// there (a pending file, or the token's key under that URI) is reused, so a lost request can
/// be made again.
///
/// Refuses a CA that holds its root key (it creates its intermediates itself), in `root.key`
/// or in a token (`root_key_uri`), and one that has this intermediate installed already.
pub fn request_intermediate(
    dir: &Path,
    kind: IssuerKind,
    cfg: &IssuanceConfig,
) -> Result<IntermediateRequest> {
    refuse_root_in_token(cfg)?;
    let token_uri = token_uri(kind, cfg)?;
    ensure_private_dir(dir)?;
    let (cert_name, key_name, pending_name) = slot(kind);
    let root_key = dir.join(ROOT_KEY);
    if exists(&root_key)? {
        return Err(file_error(
            &root_key,
            "exists: this CA holds its root key and creates its intermediates itself. To take \
             the root offline, move root.key to the offline machine first (with a copy of \
             root.pem)",
        ));
    }
    let cert_path = dir.join(cert_name);
    let setting = uri_setting(kind);
    if exists(&cert_path)? {
        let (whose, replace) = match &token_uri {
            Some(uri) => {
                let der = read_pem_cert(&cert_path)?;
                let cert = parse_cert(&cert_path, &der)?;
                let its = token::find(setting, uri)?
                    .is_some_and(|key| key.subject_public_key_info() == cert.public_key().raw);
                (
                    if its {
                        format!(", and the token's key {uri} is its key")
                    } else {
                        String::new()
                    },
                    format!(
                        "move {cert_name} out of {}, name a new key (object=) in {setting}",
                        dir.display(),
                    ),
                )
            }
            None => (
                String::new(),
                format!("move {cert_name} and {key_name} out of {}", dir.display()),
            ),
        };
        return Err(file_error(
            &cert_path,
            format!(
                "exists: the CA has its {kind} intermediate already{whose}. Replacing an \
                 installed intermediate is not supported, because certificates it issued could \
                 no longer be checked against its CRL; to replace it anyway, stop the CA, \
                 {replace} and run this command again"
            ),
        ));
    }
    let (key, place, reused) = match &token_uri {
        Some(uri) => {
            refuse_key_files_beside_token(dir, kind)?;
            let place = RequestKey::Token {
                setting,
                uri: uri.to_string(),
            };
            let (key, reused) = match token::find(setting, uri)? {
                Some(key) => (key, true),
                None => {
                    let key_kind = match kind {
                        IssuerKind::Ec => token::ec_kind(cfg.intermediate_key),
                        IssuerKind::Rsa => {
                            token::rsa_kind(cfg.rsa_intermediate_key).ok_or_else(no_rsa_size)?
                        }
                    };
                    (token::generate(setting, uri, key_kind)?, false)
                }
            };
            if is_rsa(&key) != (kind == IssuerKind::Rsa) {
                return Err(Error::Internal(format!(
                    "{setting} {uri}: the token's key is not a key for the {kind} intermediate"
                )));
            }
            (key, place, reused)
        }
        None => {
            let key_path = dir.join(pending_name);
            let (key, reused) = pending_file_key(&key_path, kind, cfg)?;
            (CaKey::File(key), RequestKey::File(key_path), reused)
        }
    };
    // The installed root's tag if there is one (a root certificate is there before the first
    // intermediate is installed only when another intermediate was installed first), else one
    // derived from the key, so a repeated request asks for the same name.
    let root_path = dir.join(ROOT_CERT);
    let root_tag = if exists(&root_path)? {
        let der = read_pem_cert(&root_path)?;
        root_tag(&parse_cert(&root_path, &der)?)
    } else {
        None
    };
    let tag = root_tag.unwrap_or_else(|| {
        let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
        hex::encode(&digest.as_ref()[..4])
    });
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "iiot-acme");
    subject.push(DnType::CommonName, intermediate_cn(kind, &tag));
    params.distinguished_name = subject;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| key.signing_error("cannot make the request", &e))?;
    let csr_pem = csr
        .pem()
        .map_err(|e| Error::Internal(format!("cannot make the request: {e}")))?;
    Ok(IntermediateRequest {
        csr_pem,
        key: place,
        reused,
    })
}

/// The pending key file `key_path` of the intermediate `kind`, generated and written now
/// unless it is there already (then `true`).
fn pending_file_key(
    key_path: &Path,
    kind: IssuerKind,
    cfg: &IssuanceConfig,
) -> Result<(KeyPair, bool)> {
    let reused = exists(key_path)?;
    let key = if reused {
        read_key(key_path)?
    } else {
        let key = match kind {
            IssuerKind::Ec => generate_ca_key(cfg.intermediate_key)?,
            IssuerKind::Rsa => {
                generate_rsa_key(cfg.rsa_intermediate_key.bits().ok_or_else(no_rsa_size)?)?
            }
        };
        write_key(key_path, &key)?;
        key
    };
    if is_rsa(&key) != (kind == IssuerKind::Rsa) {
        return Err(file_error(
            key_path,
            format!("is not a key for the {kind} intermediate"),
        ));
    }
    Ok((key, reused))
}

/// Whether `key` signs with RSA (the RSA intermediate's key).
fn is_rsa(key: &impl PublicKeyData) -> bool {
    key.algorithm() == &rcgen::PKCS_RSA_SHA256
}

/// An intermediate certificate [`sign_intermediate`] issued.
#[derive(Debug)]
pub struct SignedIntermediate {
    /// The certificate, PEM.
    pub pem: String,
    /// SHA-256 of the certificate, `AB:CD:…`.
    pub fingerprint: String,
    /// The subject, as in the request.
    pub subject: String,
    /// The certified key: `EC P-256`, `EC P-384` or `RSA-<bits>`.
    pub key: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

/// Certifies the key of the PKCS#10 request `csr` (PEM or DER) as an issuing intermediate
/// under the root in `root_dir` (`root.pem` and `root.key`): the intermediate profile (pathlen
/// 0, keyCertSign + cRLSign + digitalSignature, EKU serverAuth + clientAuth, AKI), the
/// request's subject, `days` days (default 5 years) but never past the root's notAfter.
///
/// The request's key must be one the CA issues with (EC P-256 or P-384, or RSA of 2048 to 4096
/// bits with exponent 65537: `key::policy`) and its signature must verify. Nothing else in the
/// request is used.
pub fn sign_intermediate(
    root_dir: &Path,
    csr: &[u8],
    days: Option<u32>,
) -> Result<SignedIntermediate> {
    let root_path = root_dir.join(ROOT_CERT);
    let root_key_path = root_dir.join(ROOT_KEY);
    let root_der = read_pem_cert(&root_path)?;
    let root = parse_cert(&root_path, &root_der)?;
    check_root(&root_path, &root)?;
    let root_key = read_key(&root_key_path)?;
    check_root_key(&root_key_path, &root_key, &root)?;

    let bad = |what: String| Error::Internal(format!("the request {what}"));
    let csr_der = match x509_parser::pem::parse_x509_pem(csr) {
        Ok((_, pem)) if pem.label == "CERTIFICATE REQUEST" => pem.contents,
        Ok((_, pem)) => {
            return Err(bad(format!(
                "holds a {:?} PEM block, not a CERTIFICATE REQUEST",
                pem.label
            )))
        }
        // Not PEM: DER, as `openssl req -outform DER` writes it.
        Err(_) => csr.to_vec(),
    };
    let request = match X509CertificationRequest::from_der(&csr_der) {
        Ok(([], request)) => request,
        Ok(_) => return Err(bad("has trailing bytes".to_owned())),
        Err(e) => return Err(bad(format!("is not a PKCS#10 request: {e}"))),
    };
    let spki = request.certification_request_info.subject_pki.raw;
    let key = match crate::key::policy::parse_spki(spki) {
        Ok(key) => key,
        Err(e) => return Err(bad(format!("has a key the CA does not issue with: {e}"))),
    };
    key.check_point()
        .map_err(|e| bad(format!("has an unusable key: {e}")))?;
    let key_name = match &key {
        PublicKey::P256(_) => "EC P-256".to_owned(),
        PublicKey::P384(_) => "EC P-384".to_owned(),
        // The policy has refused sizes outside 2048 to 4096 bits.
        PublicKey::Rsa { n, .. } => format!("RSA-{}", crate::key::rsa_bits(n)),
        PublicKey::Ed25519(_) => {
            return Err(bad(
                "has an Ed25519 key; an issuing intermediate needs EC P-256 or P-384, or RSA"
                    .to_owned(),
            ))
        }
    };
    // After the key, as for device requests: ring checks no signature made with an RSA key
    // under 2048 bits, and the operator should learn about the key, not a failed signature.
    request.verify_signature().map_err(|_| {
        bad("signature does not verify: it was altered or not signed by its own key".to_owned())
    })?;
    if spki == root.public_key().raw {
        return Err(bad("is for the root's own key".to_owned()));
    }
    let subject_key = rcgen::SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| bad(format!("has an unusable key: {e}")))?;
    if subject_key.subject_public_key_info() != spki {
        return Err(bad("has a key that is not in canonical DER form".to_owned()));
    }
    // The subject as the request writes it (rcgen parses it; the request's signature was
    // checked above). A request asking for extensions is refused by rcgen: none are needed.
    let subject = rcgen::CertificateSigningRequestParams::from_der(&csr_der.as_slice().into())
        .map_err(|e| bad(format!("cannot be used: {e} (make it without extensions)")))?
        .params
        .distinguished_name;
    if subject.iter().next().is_none() {
        return Err(bad("has an empty subject".to_owned()));
    }

    let now = now_whole_seconds()?;
    let mut params = intermediate_params(String::new(), now)?;
    params.distinguished_name = subject;
    if let Some(days) = days {
        if !(1..=MAX_INTERMEDIATE_DAYS).contains(&days) {
            return Err(Error::Internal(format!(
                "--days {days}: give 1 to {MAX_INTERMEDIATE_DAYS}"
            )));
        }
        params.not_after = now + time::Duration::days(i64::from(days));
    }
    // An intermediate that outlives its root fails path validation after the root expires.
    let root_not_after = root.validity().not_after.to_datetime();
    params.not_after = params.not_after.min(root_not_after);
    if params.not_after <= now {
        return Err(file_error(&root_path, "has expired"));
    }
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(root_der.as_slice()), root_key)
        .map_err(|e| file_error(&root_path, format!("cannot be used to issue: {e}")))?;
    let cert = params
        .signed_by(&subject_key, &issuer)
        .map_err(|e| Error::Internal(format!("cannot sign the intermediate: {e}")))?;
    let parsed = parse_cert(Path::new("the new certificate"), cert.der())?;
    Ok(SignedIntermediate {
        pem: pem_encode("CERTIFICATE", cert.der()),
        fingerprint: crate::wire::fingerprint(cert.der()),
        subject: parsed.subject().to_string(),
        key: key_name,
        not_before: params.not_before.unix_timestamp(),
        not_after: params.not_after.unix_timestamp(),
    })
}

/// What [`install_intermediate`] installed.
#[derive(Debug)]
pub struct InstalledIntermediate {
    /// Which intermediate (by its key type).
    pub kind: IssuerKind,
    /// The installed certificate file.
    pub cert_path: PathBuf,
    /// SHA-256 of the certificate.
    pub fingerprint: String,
    /// SHA-256 of the root.
    pub root_fingerprint: String,
    /// `root.pem` was written now (the first intermediate installed).
    pub root_installed: bool,
    /// notAfter of the intermediate, Unix seconds.
    pub not_after: i64,
}

/// Installs the intermediate certificate `cert_file` (PEM), issued by the root `root_file`
/// (PEM) for the key of an earlier [`request_intermediate`], into the CA directory `dir`: the
/// pending key under the intermediate's name, then the certificate, and `root.pem` if it is
/// not there yet. Each file is written atomically, the root first and the certificate last,
/// so the CA starts only with a complete set; a crash midway is finished by running this again.
/// With the intermediate's key in a token (`cfg.intermediate_key_uri`, or
/// `cfg.rsa_intermediate_key_uri` for the RSA one) there is no key file: only the certificates
/// are written.
///
/// Checks first: the root is a self-signed CA and, if `dir` has a root already, the same one;
/// the certificate verifies under it, is a CA with pathlen 0, keyCertSign and cRLSign, has not
/// expired, and certifies the pending key or the token's key; its key type says which
/// intermediate it is (EC or RSA), and that one is not installed yet.
pub fn install_intermediate(
    dir: &Path,
    cert_file: &Path,
    root_file: &Path,
    cfg: &IssuanceConfig,
) -> Result<InstalledIntermediate> {
    refuse_root_in_token(cfg)?;
    ensure_private_dir(dir)?;
    let root_der = read_pem_cert(root_file)?;
    let root = parse_cert(root_file, &root_der)?;
    check_root(root_file, &root)?;
    let root_key = dir.join(ROOT_KEY);
    if exists(&root_key)? {
        return Err(file_error(
            &root_key,
            "exists: this CA holds its root key and creates its intermediates itself",
        ));
    }
    let installed_root = dir.join(ROOT_CERT);
    let root_installed = !exists(&installed_root)?;
    if !root_installed {
        let installed = read_pem_cert(&installed_root)?;
        if installed != root_der {
            return Err(file_error(
                &installed_root,
                format!(
                    "is another root (SHA-256 {}) than {} (SHA-256 {}); refusing to replace \
                     the root the CA's devices trust",
                    crate::wire::fingerprint(&installed),
                    root_file.display(),
                    crate::wire::fingerprint(&root_der)
                ),
            ));
        }
    }

    let cert_der = read_pem_cert(cert_file)?;
    let cert = parse_cert(cert_file, &cert_der)?;
    if cert.issuer().as_raw() != root.subject().as_raw()
        || cert.verify_signature(Some(root.public_key())).is_err()
    {
        return Err(file_error(
            cert_file,
            format!("was not issued by {}", root_file.display()),
        ));
    }
    let constraints = cert.basic_constraints().ok().flatten().map(|bc| bc.value);
    match constraints {
        Some(bc) if bc.ca && bc.path_len_constraint == Some(0) => {}
        Some(bc) if bc.ca => {
            return Err(file_error(
                cert_file,
                format!(
                    "is a CA certificate with path length {:?}; an issuing intermediate needs \
                     pathlen 0",
                    bc.path_len_constraint
                ),
            ))
        }
        _ => return Err(file_error(cert_file, "is not a CA certificate")),
    }
    let usage = cert.key_usage().ok().flatten().map(|ku| ku.value);
    if !usage.is_some_and(|ku| ku.key_cert_sign() && ku.crl_sign()) {
        return Err(file_error(
            cert_file,
            "lacks keyCertSign or cRLSign in its key usage: an issuing intermediate signs \
             certificates and CRLs",
        ));
    }
    let not_after = cert.validity().not_after.timestamp();
    if not_after <= crate::types::now() {
        return Err(file_error(cert_file, "has expired"));
    }
    let kind = match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(_)) => IssuerKind::Rsa,
        Ok(x509_parser::public_key::PublicKey::EC(_)) => IssuerKind::Ec,
        _ => {
            return Err(file_error(
                cert_file,
                "certifies neither an EC nor an RSA key",
            ))
        }
    };
    let (cert_name, key_name, pending_name) = slot(kind);
    let cert_path = dir.join(cert_name);
    if exists(&cert_path)? {
        return Err(file_error(
            &cert_path,
            format!("exists: the CA has its {kind} intermediate already"),
        ));
    }
    let pending = dir.join(pending_name);
    // The pending key file's text, to install under the intermediate's name; none when the key
    // is in a token.
    let key_pem = match token_uri(kind, cfg)? {
        Some(uri) => {
            refuse_key_files_beside_token(dir, kind)?;
            let key = token::open(uri_setting(kind), &uri)?;
            let token_spki = key.subject_public_key_info();
            if token_spki != cert.public_key().raw {
                return Err(file_error(
                    cert_file,
                    format!(
                        "does not certify the token's key {} {uri}: it certifies the key with \
                         SHA-256 {}, the token's key has SHA-256 {} (SubjectPublicKeyInfo); it \
                         answers another request",
                        uri_setting(kind),
                        crate::wire::fingerprint(cert.public_key().raw),
                        crate::wire::fingerprint(&token_spki)
                    ),
                ));
            }
            None
        }
        None => {
            if !exists(&pending)? {
                return Err(file_error(
                    &pending,
                    format!(
                        "is missing: no request is pending for the {kind} intermediate. Make \
                         one with `ca-server intermediate request --kind {}` (with the issuing \
                         key in a PKCS #11 token, pass the configuration that names it with \
                         --config, here too)",
                        kind.to_string().to_lowercase()
                    ),
                ));
            }
            let key_pem = read_file(&pending)?;
            let key = read_key(&pending)?;
            if key.subject_public_key_info() != cert.public_key().raw {
                return Err(file_error(
                    cert_file,
                    format!(
                        "does not certify the pending key {}: it answers another request",
                        pending.display()
                    ),
                ));
            }
            Some(key_pem)
        }
    };

    if root_installed {
        write_cert(&installed_root, &root_der)?;
    }
    if let Some(key_pem) = &key_pem {
        write_atomic(&dir.join(key_name), key_pem, 0o600)?;
    }
    write_cert(&cert_path, &cert_der)?;
    if key_pem.is_some() {
        fs::remove_file(&pending).map_err(|e| {
            file_error(
                &pending,
                format!("is installed but cannot be removed: {e}; remove it by hand"),
            )
        })?;
    }
    Ok(InstalledIntermediate {
        kind,
        cert_path,
        fingerprint: crate::wire::fingerprint(&cert_der),
        root_fingerprint: crate::wire::fingerprint(&root_der),
        root_installed,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use tempfile::TempDir;

    use super::*;
    use crate::testutil::openssl;

    fn no_rsa() -> IssuanceConfig {
        IssuanceConfig {
            rsa_intermediate_key: RsaIntermediateKey::None,
            ..IssuanceConfig::default()
        }
    }

    fn rsa_2048() -> IssuanceConfig {
        IssuanceConfig {
            rsa_intermediate_key: RsaIntermediateKey::Rsa2048,
            ..IssuanceConfig::default()
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    fn detail<T: fmt::Debug>(result: Result<T>) -> String {
        match result {
            Err(Error::Internal(detail)) => detail,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// The names of the files in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn der_of(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .expect("PEM")
            .1
            .contents
    }

    /// A temporary directory with a root in `root/` and an empty CA directory `data/ca`.
    struct Setup {
        tmp: TempDir,
        root: PathBuf,
        ca: PathBuf,
    }

    impl Setup {
        fn new() -> Self {
            let tmp = tempfile::tempdir().expect("tempdir");
            let root = tmp.path().join("root");
            create_root(&root, CaKeyType::P384).expect("root");
            let ca = tmp.path().join("data").join("ca");
            Self { tmp, root, ca }
        }

        fn root_pem(&self) -> PathBuf {
            self.root.join(ROOT_CERT)
        }

        /// Requests, signs and writes the certificate of the intermediate `kind`; returns its
        /// file.
        fn signed(&self, kind: IssuerKind, cfg: &IssuanceConfig) -> PathBuf {
            let request = request_intermediate(&self.ca, kind, cfg).expect("request");
            let cert =
                sign_intermediate(&self.root, request.csr_pem.as_bytes(), None).expect("signed");
            let file = self.tmp.path().join(format!("{kind}.pem"));
            fs::write(&file, cert.pem).expect("write");
            file
        }

        /// Signs `params` over `key` with the root, as a root holder could by mistake.
        fn sign_with_root(&self, params: &CertificateParams, key: &KeyPair) -> PathBuf {
            let root_der = read_pem_cert(&self.root_pem()).expect("root");
            let issuer = Issuer::from_ca_cert_der(
                &CertificateDer::from(root_der.as_slice()),
                read_key(&self.root.join(ROOT_KEY)).expect("key"),
            )
            .expect("issuer");
            let cert = params.signed_by(key, &issuer).expect("signed");
            let file = self.tmp.path().join("odd.pem");
            fs::write(&file, cert.pem()).expect("write");
            file
        }
    }

    #[test]
    fn root_create_writes_the_self_initialised_profile_and_never_overwrites() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("offline");
        let created = create_root(&out, CaKeyType::P256).expect("created");
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&out.join(ROOT_KEY)), 0o600);
        assert_eq!(mode(&out.join(ROOT_CERT)), 0o644);
        assert_eq!(names(&out), ["root.key", "root.pem"]);
        let der = read_pem_cert(&created.cert_path).expect("pem");
        let root = parse_cert(&created.cert_path, &der).expect("parses");
        check_root(&created.cert_path, &root).expect("self-signed CA");
        let key = read_key(&created.key_path).expect("key");
        check_root_key(&created.key_path, &key, &root).expect("matches");
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        let bc = root
            .basic_constraints()
            .expect("bc")
            .expect("present")
            .value;
        assert_eq!(bc.path_len_constraint, Some(1));
        let ku = root.key_usage().expect("ku").expect("present").value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        let life = root.validity().not_after.timestamp() - root.validity().not_before.timestamp();
        assert_eq!(life, 3652 * 86_400 + 60);
        let tag = root_tag(&root).expect("tagged");
        assert_eq!(tag.len(), 8);
        assert_eq!(root.subject().to_string(), created.subject);
        assert_eq!(created.fingerprint, crate::wire::fingerprint(&der));

        // A second root over it, or over either file alone, is refused and nothing changes.
        let before = (fs::read(&created.key_path).expect("key"), der.clone());
        let err = detail(create_root(&out, CaKeyType::P384));
        assert!(err.contains("refusing to overwrite"), "{err}");
        fs::remove_file(&created.cert_path).expect("rm");
        let err = detail(create_root(&out, CaKeyType::P384));
        assert!(err.contains("root.key") && err.contains("exists"), "{err}");
        assert_eq!(fs::read(&created.key_path).expect("key"), before.0);
        assert_eq!(names(&out), ["root.key"]);
    }

    #[test]
    fn request_refuses_a_ca_holding_its_root_key_and_reuses_a_pending_key() {
        let s = Setup::new();
        // A self-initialised CA makes its intermediates itself.
        let own = s.tmp.path().join("own");
        CertificateAuthority::load_or_init(&own, &no_rsa()).expect("self-initialised");
        let err = detail(request_intermediate(&own, IssuerKind::Rsa, &rsa_2048()));
        assert!(
            err.contains("root.key") && err.contains("holds its root key"),
            "{err}"
        );
        assert!(!own.join(RSA_INTERMEDIATE_PENDING_KEY).exists());

        let first = request_intermediate(&s.ca, IssuerKind::Ec, &no_rsa()).expect("request");
        assert!(!first.reused);
        let pending = s.ca.join(INTERMEDIATE_PENDING_KEY);
        assert_eq!(first.key, RequestKey::File(pending.clone()));
        assert_eq!(mode(&pending), 0o600);
        assert_eq!(mode(&s.ca), 0o700);
        let again = request_intermediate(&s.ca, IssuerKind::Ec, &no_rsa()).expect("again");
        assert!(again.reused);
        // The same key and the same name: the request can be made again if it was lost.
        let spki = |pem: &str| {
            let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .expect("pem")
                .1
                .contents;
            let (_, csr) = X509CertificationRequest::from_der(&der).expect("csr");
            let info = &csr.certification_request_info;
            (info.subject_pki.raw.to_vec(), info.subject.to_string())
        };
        assert_eq!(spki(&first.csr_pem), spki(&again.csr_pem));
        assert!(spki(&first.csr_pem).1.contains("CN=iiot-acme Issuing CA "));

        // No RSA intermediate configured: no RSA request.
        let err = detail(request_intermediate(&s.ca, IssuerKind::Rsa, &no_rsa()));
        assert!(err.contains("rsa_intermediate_key is \"none\""), "{err}");
        assert!(!s.ca.join(RSA_INTERMEDIATE_PENDING_KEY).exists());

        // Installed: a second request for it is refused.
        let cert = sign_intermediate(&s.root, first.csr_pem.as_bytes(), None).expect("signed");
        let file = s.tmp.path().join("ec.pem");
        fs::write(&file, cert.pem).expect("write");
        install_intermediate(&s.ca, &file, &s.root_pem(), &no_rsa()).expect("installed");
        let err = detail(request_intermediate(&s.ca, IssuerKind::Ec, &no_rsa()));
        assert!(
            err.contains("intermediate.pem") && err.contains("not supported"),
            "{err}"
        );
        assert!(!s.ca.join(INTERMEDIATE_PENDING_KEY).exists());
    }

    #[test]
    fn sign_checks_the_request_and_the_root_and_caps_the_validity() {
        let s = Setup::new();
        let request = request_intermediate(&s.ca, IssuerKind::Ec, &no_rsa()).expect("request");
        let csr = request.csr_pem.as_bytes();

        let cert = sign_intermediate(&s.root, csr, None).expect("signed");
        let der = der_of(&cert.pem);
        let parsed = parse_cert(Path::new("new"), &der).expect("parses");
        let bc = parsed.basic_constraints().expect("bc").expect("present");
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = parsed.key_usage().expect("ku").expect("present").value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        assert_eq!(cert.not_after - cert.not_before, 1826 * 86_400 + 60);
        assert_eq!(cert.key, "EC P-256");
        assert!(cert
            .subject
            .starts_with("O=iiot-acme, CN=iiot-acme Issuing CA "));
        let root_der = read_pem_cert(&s.root_pem()).expect("root");
        let root = parse_cert(&s.root_pem(), &root_der).expect("root");
        assert!(parsed.verify_signature(Some(root.public_key())).is_ok());
        // DER requests are read too.
        let csr_der = der_of(&request.csr_pem);
        sign_intermediate(&s.root, &csr_der, Some(30)).expect("DER request");

        // Never past the root's notAfter, however many days are asked for.
        let long = sign_intermediate(&s.root, csr, Some(MAX_INTERMEDIATE_DAYS)).expect("signed");
        assert_eq!(long.not_after, root.validity().not_after.timestamp());
        for days in [0, MAX_INTERMEDIATE_DAYS + 1] {
            let err = detail(sign_intermediate(&s.root, csr, Some(days)));
            assert!(err.contains("--days"), "{err}");
        }

        // An altered request: its signature no longer verifies.
        let mut altered = csr_der.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        let err = detail(sign_intermediate(&s.root, &altered, None));
        assert!(err.contains("signature does not verify"), "{err}");

        // Keys the CA does not issue with, and the root's own key.
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        let root_key = read_key(&s.root.join(ROOT_KEY)).expect("root key");
        for (key, want) in [(&ed, "Ed25519"), (&root_key, "root's own key")] {
            let csr = CertificateParams::new(vec!["x.example".to_owned()])
                .expect("params")
                .serialize_request(key)
                .expect("csr");
            let err = detail(sign_intermediate(&s.root, csr.der(), None));
            assert!(err.contains(want), "{want}: {err}");
        }
        // ring signs with no RSA key under 2048 bits, so openssl makes this request.
        let dir = s.tmp.path();
        crate::testutil::openssl_rsa_key(dir, "small.pem", 1024);
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                "small.pem",
                "-subj",
                "/CN=small",
                "-outform",
                "DER",
                "-out",
                "small.der",
            ],
        );
        let small = fs::read(dir.join("small.der")).expect("small.der");
        let err = detail(sign_intermediate(&s.root, &small, None));
        assert!(err.contains("1024-bit"), "{err}");

        // A root directory whose key is not the root's.
        fs::write(
            s.root.join(ROOT_KEY),
            generate_ca_key(CaKeyType::P384)
                .expect("key")
                .serialize_pem(),
        )
        .expect("write");
        let err = detail(sign_intermediate(&s.root, csr, None));
        assert!(err.contains("does not match root.pem"), "{err}");
    }

    #[test]
    fn install_refuses_a_wrong_root_key_or_profile_and_writes_nothing() {
        let s = Setup::new();
        let good = s.signed(IssuerKind::Ec, &no_rsa());
        let pending = read_key(&s.ca.join(INTERMEDIATE_PENDING_KEY)).expect("pending");
        let only_pending = || assert_eq!(names(&s.ca), [INTERMEDIATE_PENDING_KEY]);

        // Another root.
        let other = s.tmp.path().join("other");
        create_root(&other, CaKeyType::P384).expect("root");
        let err = detail(install_intermediate(
            &s.ca,
            &good,
            &other.join(ROOT_CERT),
            &no_rsa(),
        ));
        assert!(err.contains("was not issued by"), "{err}");
        only_pending();
        // A certificate that is not a self-signed root given as the root.
        let err = detail(install_intermediate(&s.ca, &good, &good, &no_rsa()));
        assert!(err.contains("not self-signed"), "{err}");
        only_pending();

        // A certificate for another request's key.
        let elsewhere = Setup {
            tmp: tempfile::tempdir().expect("tempdir"),
            root: s.root.clone(),
            ca: s.tmp.path().join("elsewhere"),
        };
        let foreign = elsewhere.signed(IssuerKind::Ec, &no_rsa());
        let err = detail(install_intermediate(
            &s.ca,
            &foreign,
            &s.root_pem(),
            &no_rsa(),
        ));
        assert!(err.contains("does not certify the pending key"), "{err}");
        only_pending();

        // Not a CA, a CA that may certify further CAs, a CA that may not sign CRLs.
        let mut leaf = CertificateParams::new(vec!["x.example".to_owned()]).expect("params");
        leaf.is_ca = IsCa::ExplicitNoCa;
        let mut deep = intermediate_params("deep".to_owned(), now_whole_seconds().expect("now"))
            .expect("params");
        deep.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        let mut no_crl =
            intermediate_params("no crl".to_owned(), now_whole_seconds().expect("now"))
                .expect("params");
        no_crl.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        for (params, want) in [
            (leaf, "is not a CA certificate"),
            (deep, "pathlen 0"),
            (no_crl, "cRLSign"),
        ] {
            let file = s.sign_with_root(&params, &pending);
            let err = detail(install_intermediate(&s.ca, &file, &s.root_pem(), &no_rsa()));
            assert!(err.contains(want), "{want}: {err}");
            only_pending();
        }

        // A CA directory with another root installed.
        fs::copy(other.join(ROOT_CERT), s.ca.join(ROOT_CERT)).expect("copy");
        let err = detail(install_intermediate(&s.ca, &good, &s.root_pem(), &no_rsa()));
        assert!(err.contains("is another root"), "{err}");
        fs::remove_file(s.ca.join(ROOT_CERT)).expect("rm");

        // Then the right one: installed, the pending key gone, and not installed twice.
        let installed =
            install_intermediate(&s.ca, &good, &s.root_pem(), &no_rsa()).expect("installed");
        assert_eq!(installed.kind, IssuerKind::Ec);
        assert!(installed.root_installed);
        assert_eq!(
            names(&s.ca),
            [INTERMEDIATE_KEY, INTERMEDIATE_CERT, ROOT_CERT]
        );
        assert_eq!(mode(&s.ca.join(INTERMEDIATE_KEY)), 0o600);
        assert_eq!(
            read_key(&s.ca.join(INTERMEDIATE_KEY))
                .expect("key")
                .subject_public_key_info(),
            pending.subject_public_key_info()
        );
        let err = detail(install_intermediate(&s.ca, &good, &s.root_pem(), &no_rsa()));
        assert!(err.contains("has its EC intermediate already"), "{err}");
    }

    /// A certificate `ca` issues for a new device key.
    fn issue_to_a_device(ca: &CertificateAuthority) -> IssuedCert {
        let device = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        ca.issue(
            &device.subject_public_key_info(),
            &[Identifier::dns("device-1.plant.example")],
            Duration::from_secs(86_400),
        )
        .expect("issued")
    }

    /// The subject public key info of a PEM request.
    fn csr_spki(pem: &str) -> Vec<u8> {
        let der = der_of(pem);
        let (_, csr) = X509CertificationRequest::from_der(&der).expect("csr");
        csr.certification_request_info.subject_pki.raw.to_vec()
    }

    #[test]
    fn the_issuing_key_in_a_token_is_generated_there_reused_and_installed_without_a_key_file() {
        let s = Setup::new();
        let pin = &token::tests::softhsm().1;
        let text = token::tests::uri("ca-offline", "issuing", pin);
        let cfg = IssuanceConfig {
            intermediate_key_uri: Some(text.clone()),
            ..no_rsa()
        };
        let uri = token::configured(token::INTERMEDIATE_KEY_URI, Some(&text))
            .expect("uri")
            .expect("set");

        // The key is generated in the token and signs the request; no key file is written.
        let first = request_intermediate(&s.ca, IssuerKind::Ec, &cfg).expect("request");
        assert!(!first.reused);
        assert_eq!(
            first.key,
            RequestKey::Token {
                setting: token::INTERMEDIATE_KEY_URI,
                uri: uri.to_string()
            }
        );
        assert!(names(&s.ca).is_empty(), "{:?}", names(&s.ca));
        let in_token = token::open(token::INTERMEDIATE_KEY_URI, &uri).expect("in the token");
        assert_eq!(csr_spki(&first.csr_pem), in_token.subject_public_key_info());
        // Asked again: the same key.
        let again = request_intermediate(&s.ca, IssuerKind::Ec, &cfg).expect("again");
        assert!(again.reused);
        assert_eq!(csr_spki(&again.csr_pem), csr_spki(&first.csr_pem));
        // A root key in the token is not an offline root.
        let root_in_token = IssuanceConfig {
            root_key_uri: Some(token::tests::uri("ca-offline", "root", pin)),
            ..cfg.clone()
        };
        let err = detail(request_intermediate(&s.ca, IssuerKind::Ec, &root_in_token));
        assert!(err.contains("root_key_uri is set"), "{err}");

        // A certificate for another key (a file key's, under the same root): refused, naming
        // both keys, and nothing is written.
        let elsewhere = Setup {
            tmp: tempfile::tempdir().expect("tempdir"),
            root: s.root.clone(),
            ca: s.tmp.path().join("elsewhere"),
        };
        let foreign = elsewhere.signed(IssuerKind::Ec, &no_rsa());
        let foreign_key = read_key(&elsewhere.ca.join(INTERMEDIATE_PENDING_KEY)).expect("key");
        let err = detail(install_intermediate(&s.ca, &foreign, &s.root_pem(), &cfg));
        assert!(err.contains("does not certify the token's key"), "{err}");
        assert!(err.contains(&text), "{err}");
        for spki in [
            foreign_key.subject_public_key_info(),
            in_token.subject_public_key_info(),
        ] {
            let fingerprint = crate::wire::fingerprint(&spki);
            assert!(err.contains(&fingerprint), "{fingerprint}: {err}");
        }
        assert!(names(&s.ca).is_empty(), "{:?}", names(&s.ca));
        // A key file beside the URI: which key is the CA's would be a guess.
        fs::copy(
            elsewhere.ca.join(INTERMEDIATE_PENDING_KEY),
            s.ca.join(INTERMEDIATE_PENDING_KEY),
        )
        .expect("copy");
        let good = s.tmp.path().join("token.pem");
        let cert = sign_intermediate(&s.root, first.csr_pem.as_bytes(), None).expect("signed");
        fs::write(&good, cert.pem).expect("write");
        let err = detail(install_intermediate(&s.ca, &good, &s.root_pem(), &cfg));
        assert!(
            err.contains(INTERMEDIATE_PENDING_KEY) && err.contains("says the issuing key"),
            "{err}"
        );
        fs::remove_file(s.ca.join(INTERMEDIATE_PENDING_KEY)).expect("rm");

        // The token's key's certificate: the certificates only.
        let installed = install_intermediate(&s.ca, &good, &s.root_pem(), &cfg).expect("installed");
        assert!(installed.root_installed);
        assert_eq!(names(&s.ca), [INTERMEDIATE_CERT, ROOT_CERT]);

        // The CA starts with the offline root and the token's key, and issues with it.
        let ca = CertificateAuthority::load_or_init(&s.ca, &cfg).expect("loads");
        let leaf = issue_to_a_device(&ca);
        let int_der = read_pem_cert(&s.ca.join(INTERMEDIATE_CERT)).expect("intermediate");
        let int = parse_cert(Path::new("intermediate"), &int_der).expect("parses");
        let (_, leaf) = X509Certificate::from_der(&leaf.der).expect("leaf");
        assert!(leaf.verify_signature(Some(int.public_key())).is_ok());

        // Installed: another request is refused, saying the token's key is the installed one's.
        let err = detail(request_intermediate(&s.ca, IssuerKind::Ec, &cfg));
        assert!(
            err.contains("intermediate already") && err.contains("the token's key"),
            "{err}"
        );
        assert_eq!(names(&s.ca), [INTERMEDIATE_CERT, ROOT_CERT]);
    }

    #[test]
    fn the_rsa_issuing_key_in_a_token_is_requested_and_installed_without_a_key_file() {
        let s = Setup::new();
        let cfg = IssuanceConfig {
            root_key_uri: None,
            ..token::tests::rsa_in_token("ca-offline-rsa")
        };
        let rsa_uri = token::configured(
            token::RSA_INTERMEDIATE_KEY_URI,
            cfg.rsa_intermediate_key_uri.as_deref(),
        )
        .expect("uri")
        .expect("set");

        // A request for the RSA intermediate from another RSA key of the token: its
        // certificate does not certify the configured key, and is not installed.
        let elsewhere = s.tmp.path().join("elsewhere");
        let other = IssuanceConfig {
            rsa_intermediate_key_uri: Some(token::tests::uri(
                "ca-offline-rsa",
                "rsa-other",
                &token::tests::softhsm().1,
            )),
            ..cfg.clone()
        };
        let request = request_intermediate(&elsewhere, IssuerKind::Rsa, &other).expect("other");
        let cert = sign_intermediate(&s.root, request.csr_pem.as_bytes(), None).expect("signed");
        let foreign = s.tmp.path().join("foreign.pem");
        fs::write(&foreign, cert.pem).expect("write");

        // Both issuing keys are generated in the token and certified by the offline root.
        for kind in IssuerKind::ALL {
            let request = request_intermediate(&s.ca, kind, &cfg).expect("request");
            assert!(!request.reused);
            assert!(
                matches!(&request.key, RequestKey::Token { setting, .. } if *setting == uri_setting(kind)),
                "{:?}",
                request.key
            );
            let cert =
                sign_intermediate(&s.root, request.csr_pem.as_bytes(), None).expect("signed");
            if kind == IssuerKind::Rsa {
                assert_eq!(cert.key, "RSA-2048");
                let err = detail(install_intermediate(&s.ca, &foreign, &s.root_pem(), &cfg));
                assert!(
                    err.contains(
                        "does not certify the token's key issuance.rsa_intermediate_key_uri"
                    ),
                    "{err}"
                );
            }
            let file = s.tmp.path().join(format!("{kind}.pem"));
            fs::write(&file, cert.pem).expect("write");
            let installed =
                install_intermediate(&s.ca, &file, &s.root_pem(), &cfg).expect("installed");
            assert_eq!(installed.kind, kind);
        }
        assert_eq!(
            names(&s.ca),
            [INTERMEDIATE_CERT, ROOT_CERT, RSA_INTERMEDIATE_CERT]
        );
        let in_token = token::open(token::RSA_INTERMEDIATE_KEY_URI, &rsa_uri).expect("RSA key");
        let rsa_der = read_pem_cert(&s.ca.join(RSA_INTERMEDIATE_CERT)).expect("RSA cert");
        let rsa = parse_cert(Path::new("rsa"), &rsa_der).expect("parses");
        assert_eq!(in_token.subject_public_key_info(), rsa.public_key().raw);

        // The CA starts with the offline root and both issuing keys in the token.
        let ca = CertificateAuthority::load_or_init(&s.ca, &cfg).expect("loads");
        let crl = ca.sign_crl(IssuerKind::Rsa, 1, 0, 1, &[]).expect("RSA CRL");
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&crl).expect("CRL");
        assert!(crl.verify_signature(rsa.public_key()).is_ok());
    }

    #[test]
    fn an_offline_root_ca_loads_without_its_root_key_and_creates_nothing_that_needs_it() {
        let s = Setup::new();
        let ec = s.signed(IssuerKind::Ec, &rsa_2048());
        // Started before the install: refused, and no self-signed root appears.
        let err = detail(CertificateAuthority::load_or_init(&s.ca, &no_rsa()));
        assert!(
            err.contains(INTERMEDIATE_PENDING_KEY) && err.contains("waiting"),
            "{err}"
        );
        assert_eq!(names(&s.ca), [INTERMEDIATE_PENDING_KEY]);

        // A crash midway through the install: the start names the missing certificate, and
        // running the install again finishes it.
        let root_der = read_pem_cert(&s.root_pem()).expect("root");
        write_cert(&s.ca.join(ROOT_CERT), &root_der).expect("write");
        fs::copy(
            s.ca.join(INTERMEDIATE_PENDING_KEY),
            s.ca.join(INTERMEDIATE_KEY),
        )
        .expect("copy");
        let err = detail(CertificateAuthority::load_or_init(&s.ca, &no_rsa()));
        assert!(err.contains("intermediate.pem: is missing"), "{err}");
        install_intermediate(&s.ca, &ec, &s.root_pem(), &no_rsa()).expect("finished");

        // The RSA intermediate is wanted but the root key is offline: a start error that says
        // what to do, and nothing is created.
        let err = detail(CertificateAuthority::load_or_init(&s.ca, &rsa_2048()));
        assert!(
            err.contains("rsa-intermediate.pem")
                && err.contains("root key is offline")
                && err.contains("--kind rsa")
                && err.contains("rsa_intermediate_key = \"none\""),
            "{err}"
        );
        let ca = CertificateAuthority::load_or_init(&s.ca, &no_rsa()).expect("EC only");
        assert!(!ca.has(IssuerKind::Rsa));
        assert_eq!(ca.root_fingerprint(), crate::wire::fingerprint(&root_der));

        // The RSA intermediate through the same four steps.
        let rsa = s.signed(IssuerKind::Rsa, &rsa_2048());
        let err = detail(CertificateAuthority::load_or_init(&s.ca, &rsa_2048()));
        assert!(err.contains("A request is pending"), "{err}");
        let installed =
            install_intermediate(&s.ca, &rsa, &s.root_pem(), &no_rsa()).expect("installed");
        assert_eq!(installed.kind, IssuerKind::Rsa);
        assert!(!installed.root_installed);
        let ca = CertificateAuthority::load_or_init(&s.ca, &rsa_2048()).expect("both");
        assert!(ca.has(IssuerKind::Rsa));
        assert!(!s.ca.join(ROOT_KEY).exists());
        assert_eq!(
            names(&s.ca),
            [
                INTERMEDIATE_KEY,
                INTERMEDIATE_CERT,
                ROOT_CERT,
                RSA_INTERMEDIATE_KEY,
                RSA_INTERMEDIATE_CERT
            ]
        );

        // What it issues verifies to the offline root, through either intermediate.
        let leaf = issue_to_a_device(&ca);
        let dir = s.tmp.path();
        fs::write(dir.join("chain.pem"), &leaf.chain_pem).expect("write");
        fs::write(
            dir.join("rsa-int.pem"),
            ca.rsa_intermediate_pem().expect("rsa"),
        )
        .expect("write");
        let root = s.root_pem().display().to_string();
        let ok = openssl(
            dir,
            &[
                "verify",
                "-x509_strict",
                "-CAfile",
                &root,
                "-untrusted",
                "chain.pem",
                "chain.pem",
            ],
        );
        assert_eq!(ok.trim(), "chain.pem: OK");
        let ok = openssl(
            dir,
            &["verify", "-x509_strict", "-CAfile", &root, "rsa-int.pem"],
        );
        assert_eq!(ok.trim(), "rsa-int.pem: OK");
    }
}
