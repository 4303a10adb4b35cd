//! CA keys in a PKCS #11 token (an HSM, a smart card, a TPM through tpm2-pkcs11) instead of
//! files in the CA directory: `issuance.root_key_uri` and `issuance.intermediate_key_uri` name
//! them with RFC 7512 URIs.
//!
//! `ca-server init --hsm` ([`CertificateAuthority::init_in_token`]) generates both keys in the
//! token (CKA_SENSITIVE, CKA_EXTRACTABLE false: the token never lets them out), self-signs the
//! root and signs the intermediate through the token, and writes only `root.pem` and
//! `intermediate.pem`. Every start finds the keys again by their URIs, checks that each has
//! never left the token and that it is the key of its certificate, and from then on every
//! certificate, CRL and the server's own HTTPS certificate is signed in the token ([`CaKey`] is
//! rcgen's signing key).
//!
//! Without `root_key_uri` and without `root.key` the root is offline (see [`super::offline`]);
//! only the issuing key is then in the token: `ca-server intermediate request` generates it
//! there as `init --hsm` does and prints a request signed by it, and `ca-server intermediate
//! install` writes the certificate the offline root issued for it, after checking that it
//! certifies the token's key. The RSA intermediate has no token form: with a key in a token,
//! `issuance.rsa_intermediate_key` must be `none`.
//!
//! The token's session is one per key, behind a mutex ([`pkcs11_key::TokenKey`]); a session
//! the token lost is opened again once. A token failing at request time is
//! [`Error::SigningKey`] (503 with Retry-After); at start, every token or PIN problem is a start
//! error naming the setting.

use std::sync::Mutex;

use pkcs11_key::{Curve, Pkcs11Uri, TokenKey};

use super::*;

/// The settings that name CA keys in a token.
pub(crate) const ROOT_KEY_URI: &str = "issuance.root_key_uri";
pub(crate) const INTERMEDIATE_KEY_URI: &str = "issuance.intermediate_key_uri";

/// A CA key: a PKCS#8 file loaded into memory, or a key in a PKCS #11 token.
// A CA has two or three of these for its whole life: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum CaKey {
    /// A key file's key.
    File(KeyPair),
    /// A key in a token; its private half never enters this process.
    Token(TokenSigner),
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::File(k) => k.der_bytes(),
            Self::Token(t) => &t.public,
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            Self::File(k) => PublicKeyData::algorithm(k),
            Self::Token(t) => t.algorithm(),
        }
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::File(k) => rcgen::SigningKey::sign(k, msg),
            Self::Token(t) => t.key.sign_der(msg).map_err(|e| {
                *t.error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                rcgen::Error::RemoteKeyError
            }),
        }
    }
}

impl CaKey {
    /// The error for a signature `what` that failed with `e`: the token's own message when
    /// the token failed ([`Error::SigningKey`]), else an internal error.
    pub(crate) fn signing_error(&self, what: &str, e: &rcgen::Error) -> Error {
        match (self, e) {
            (Self::Token(t), rcgen::Error::RemoteKeyError) => {
                let cause = t
                    .error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
                    .unwrap_or_else(|| "the token refused to sign".to_owned());
                Error::SigningKey(format!("{what}: {cause}"))
            }
            _ => Error::Internal(format!("{what}: {e}")),
        }
    }
}

/// A key in a token with its public key, as rcgen signs with it. rcgen's error for a failed
/// signature carries no text, so the token's is kept here for [`CaKey::signing_error`].
pub(crate) struct TokenSigner {
    key: TokenKey,
    /// The public key as rcgen wants it: an EC key's uncompressed point, an RSA key's
    /// `RSAPublicKey`.
    public: Vec<u8>,
    error: Mutex<Option<String>>,
}

impl TokenSigner {
    fn new(key: TokenKey, setting: &str) -> Result<Self> {
        let public = key.public_key_der().map(<[u8]>::to_vec).ok_or_else(|| {
            Error::Internal(format!(
                "{setting} {}: the token has the private key but no public key with the same \
                 label and id, so it cannot be checked against its certificate",
                key.uri()
            ))
        })?;
        Ok(Self {
            key,
            public,
            error: Mutex::new(None),
        })
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.key.signature_algorithm()
    }
}

/// Parses a CA key's URI (the setting `setting`), refusing what the CA cannot use: a PIN in the
/// URI itself (the configuration is shown in the console and copied into backups; give
/// `pin-source=file:`), an object of another type than a private key, a key named by neither
/// `object` nor `id`, no `module-path`.
pub(crate) fn parse_ca_key_uri(setting: &str, text: &str) -> Result<Pkcs11Uri, String> {
    // The text is never quoted: it may hold a PIN.
    if pkcs11_key::holds_pin_value(text) {
        return Err(format!(
            "{setting} holds a pin-value: the CA's configuration is shown in the console and \
             goes into backups, so give the PIN in a file (pin-source=file:/etc/iiot-acme/pin, \
             mode 0600) instead"
        ));
    }
    let uri = Pkcs11Uri::parse(text).map_err(|e| format!("{setting}: {e}"))?;
    if uri
        .object_type
        .is_some_and(|t| t != pkcs11_key::uri::ObjectType::Private)
    {
        return Err(format!(
            "{setting} {uri}: type= must be private (or left out)"
        ));
    }
    if uri.object.is_none() && uri.id.is_none() {
        return Err(format!(
            "{setting} {uri}: name the key with object= (its label)"
        ));
    }
    uri.module().map_err(|e| format!("{setting} {uri}: {e}"))?;
    Ok(uri)
}

/// Checks `[issuance]`'s key URIs when the configuration is read: each parses and names a
/// key, the root's comes with the issuing key's, and there is no RSA intermediate beside them.
pub fn check_key_uris(cfg: &IssuanceConfig) -> std::result::Result<(), String> {
    for (setting, text) in [
        (ROOT_KEY_URI, &cfg.root_key_uri),
        (INTERMEDIATE_KEY_URI, &cfg.intermediate_key_uri),
    ] {
        if let Some(text) = text {
            parse_ca_key_uri(setting, text)?;
        }
    }
    match (&cfg.root_key_uri, &cfg.intermediate_key_uri) {
        (Some(_), None) => Err(root_without_intermediate()),
        (_, Some(_)) if cfg.rsa_intermediate_key != RsaIntermediateKey::None => {
            Err(rsa_with_token())
        }
        _ => Ok(()),
    }
}

/// The configured URI of `setting`, if any, parsed (the configuration was checked at start, so
/// an error here is one for the operator all the same).
pub(crate) fn configured(setting: &str, text: Option<&str>) -> Result<Option<Pkcs11Uri>> {
    text.map(|t| parse_ca_key_uri(setting, t))
        .transpose()
        .map_err(Error::Internal)
}

/// The key `uri` names (`setting` for messages), which must have been generated in the token
/// and never have left it.
pub(crate) fn open(setting: &str, uri: &Pkcs11Uri) -> Result<CaKey> {
    find(setting, uri)?.ok_or_else(|| {
        Error::Internal(format!(
            "{setting} {uri}: the token has no such private key. Create the CA's keys with \
             `ca-server init --hsm` (or, with an offline root, the issuing key with `ca-server \
             intermediate request`), or correct object=/id= or token="
        ))
    })
}

/// The key `uri` names, if the token holds one under its label and id; like [`open`], it must
/// have been generated in the token and never have left it.
pub(crate) fn find(setting: &str, uri: &Pkcs11Uri) -> Result<Option<CaKey>> {
    for name in &uri.ignored {
        tracing::warn!("{setting} {uri}: ignoring the unknown query attribute {name}");
    }
    TokenKey::find_labelled(uri, uri.object.as_deref())
        .map_err(|e| Error::Internal(format!("{setting}: {e}")))?
        .map(|key| Ok(CaKey::Token(TokenSigner::new(key, setting)?)))
        .transpose()
}

/// Generates a new key of `kind` in the token under `uri`'s object and id, refusing to if the
/// token holds one there already (a CA's key is never replaced by accident).
pub(crate) fn generate(setting: &str, uri: &Pkcs11Uri, kind: CaKeyType) -> Result<CaKey> {
    let fail = |e: pkcs11_key::Error| Error::Internal(format!("{setting}: {e}"));
    if TokenKey::find_labelled(uri, uri.object.as_deref())
        .map_err(fail)?
        .is_some()
    {
        return Err(Error::Internal(format!(
            "{setting} {uri}: the token already holds a private key under this label and id; \
             refusing to create another (a CA whose certificates it signed may still need it). \
             Name a new object=, or delete the old key with the token's tools"
        )));
    }
    let curve = match kind {
        CaKeyType::P256 => Curve::P256,
        CaKeyType::P384 => Curve::P384,
    };
    let key = TokenKey::generate(uri, uri.object.as_deref(), curve).map_err(fail)?;
    Ok(CaKey::Token(TokenSigner::new(key, setting)?))
}

impl CertificateAuthority {
    /// `ca-server init --hsm`: a new CA in `dir` whose root and issuing keys are generated in
    /// the token `cfg`'s URIs name. Writes `root.pem` and `intermediate.pem` only; refuses a
    /// directory that holds a CA already. Returns the root's SHA-256 fingerprint.
    pub fn init_in_token(dir: &Path, cfg: &IssuanceConfig) -> Result<String> {
        let (Some(root_uri), Some(intermediate_uri)) = (
            configured(ROOT_KEY_URI, cfg.root_key_uri.as_deref())?,
            configured(INTERMEDIATE_KEY_URI, cfg.intermediate_key_uri.as_deref())?,
        ) else {
            return Err(Error::Internal(format!(
                "init --hsm needs both {ROOT_KEY_URI} and {INTERMEDIATE_KEY_URI} in the \
                 configuration"
            )));
        };
        if cfg.rsa_intermediate_key != RsaIntermediateKey::None {
            return Err(rsa_with_token_error());
        }
        ensure_private_dir(dir)?;
        for name in [ROOT_CERT, ROOT_KEY, INTERMEDIATE_CERT, INTERMEDIATE_KEY] {
            let path = dir.join(name);
            if path
                .try_exists()
                .map_err(|e| file_error(&path, format!("cannot be checked: {e}")))?
            {
                return Err(file_error(
                    &path,
                    "exists: this directory holds a CA already; init --hsm makes a new one in \
                     an empty directory",
                ));
            }
        }
        let root_key = generate(ROOT_KEY_URI, &root_uri, cfg.root_key)?;
        let intermediate_key = generate(
            INTERMEDIATE_KEY_URI,
            &intermediate_uri,
            cfg.intermediate_key,
        )?;
        let (root_der, intermediate_der) =
            sign_hierarchy(&root_key, &intermediate_key, |what, e| {
                root_key.signing_error(what, e)
            })?;
        write_cert(&dir.join(ROOT_CERT), &root_der)?;
        write_cert(&dir.join(INTERMEDIATE_CERT), &intermediate_der)?;
        tracing::info!(dir = %dir.display(), root_key = %root_uri, intermediate_key = %intermediate_uri, "created a new CA with its keys in a PKCS #11 token");
        Ok(crate::wire::fingerprint(&root_der))
    }

    /// Loads a CA whose issuing key (and root key, unless offline) is in a token: the
    /// certificates from `dir`, the keys by their URIs. A key file beside a URI for the same
    /// key is refused: which one is the CA's would be a guess.
    pub(super) fn load_with_token(
        dir: &Path,
        cfg: &IssuanceConfig,
        intermediate_uri: &Pkcs11Uri,
    ) -> Result<Self> {
        if cfg.rsa_intermediate_key != RsaIntermediateKey::None {
            return Err(rsa_with_token_error());
        }
        let root_uri = configured(ROOT_KEY_URI, cfg.root_key_uri.as_deref())?;
        let exists = |name: &str| {
            let path = dir.join(name);
            path.try_exists()
                .map_err(|e| file_error(&path, format!("cannot be checked: {e}")))
        };
        for (name, setting, in_token) in [
            (INTERMEDIATE_KEY, INTERMEDIATE_KEY_URI, true),
            (ROOT_KEY, ROOT_KEY_URI, root_uri.is_some()),
        ] {
            if in_token && exists(name)? {
                return Err(file_error(
                    &dir.join(name),
                    format!(
                        "exists, but {setting} says the key is in a token; remove the file \
                         (keep a copy offline if it is the only one) or the setting"
                    ),
                ));
            }
        }
        if !exists(ROOT_CERT)? || !exists(INTERMEDIATE_CERT)? {
            return Err(file_error(
                &dir.join(ROOT_CERT),
                format!(
                    "or {INTERMEDIATE_CERT} is missing: with {INTERMEDIATE_KEY_URI} set, the CA \
                     is created by `ca-server init --hsm` (or, with an offline root, `ca-server \
                     intermediate request` and `install`), not on first start"
                ),
            ));
        }
        let mut root_key_offline = false;
        let ca = Self::load_with(
            dir,
            |root| {
                match &root_uri {
                    Some(uri) => {
                        let key = open(ROOT_KEY_URI, uri)?;
                        if key.subject_public_key_info() != root.public_key().raw {
                            return Err(Error::Internal(format!(
                                "{ROOT_KEY_URI} {uri}: the key is not the key of {ROOT_CERT}"
                            )));
                        }
                    }
                    None if exists(ROOT_KEY)? => {
                        let path = dir.join(ROOT_KEY);
                        check_root_key(&path, &read_key(&path)?, root)?;
                    }
                    None => root_key_offline = true,
                }
                Ok(())
            },
            || {
                let key = open(INTERMEDIATE_KEY_URI, intermediate_uri)?;
                Ok((key, format!("{INTERMEDIATE_KEY_URI} {intermediate_uri}")))
            },
        )?;
        tracing::info!(root = %ca.root_path.display(), fingerprint = %ca.root_fingerprint(), intermediate_key = %intermediate_uri, root_key_offline, "CA loaded; its issuing key is in a PKCS #11 token");
        Ok(ca)
    }
}

fn rsa_with_token_error() -> Error {
    Error::Internal(rsa_with_token())
}

fn rsa_with_token() -> String {
    format!(
        "with CA keys in a PKCS #11 token ({INTERMEDIATE_KEY_URI}), issuance.rsa_intermediate_key \
         must be \"none\": the RSA intermediate has no token form, and its key file would be \
         the one CA key left on disk"
    )
}

pub(super) fn root_without_intermediate() -> String {
    format!(
        "{ROOT_KEY_URI} is set without {INTERMEDIATE_KEY_URI}: a root key in a token needs the \
         issuing key there too"
    )
}

#[cfg(test)]
pub(super) mod tests {
    use std::process::Command;
    use std::sync::OnceLock;

    use x509_parser::revocation_list::CertificateRevocationList;

    use super::*;
    use crate::types::Identifier;

    const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
    /// One token per test, so that the tests run at the same time.
    const TOKENS: &[&str] = &["ca-sign", "ca-refuse", "ca-pin", "ca-gone", "ca-offline"];

    /// SoftHSM reads `SOFTHSM2_CONF` and its tokens once per process: one directory for the
    /// whole test process, set up before any test loads the module. Returns the directory and
    /// the PIN file.
    pub(in crate::ca) fn softhsm() -> &'static (tempfile::TempDir, PathBuf) {
        static HSM: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
        HSM.get_or_init(|| {
            assert!(
                Path::new(MODULE).exists(),
                "{MODULE} is missing: run scripts/install-test-deps.sh (softhsm2)"
            );
            let dir = tempfile::tempdir().expect("tempdir");
            fs::create_dir(dir.path().join("tokens")).expect("tokens");
            let conf = dir.path().join("softhsm2.conf");
            let text = format!(
                "directories.tokendir = {}/tokens\nobjectstore.backend = file\n",
                dir.path().display()
            );
            fs::write(&conf, text).expect("conf");
            for label in TOKENS {
                let init = Command::new("softhsm2-util")
                    .env("SOFTHSM2_CONF", &conf)
                    .args(["--init-token", "--free", "--label", label])
                    .args(["--so-pin", "5678", "--pin", "1234"])
                    .output()
                    .expect("softhsm2-util runs (scripts/install-test-deps.sh)");
                assert!(init.status.success(), "{init:?}");
            }
            let pin = dir.path().join("pin");
            write_atomic(&pin, b"1234\n", 0o600).expect("pin");
            std::env::set_var("SOFTHSM2_CONF", &conf);
            (dir, pin)
        })
    }

    /// The URI of `object` in `token`, with the PIN in the file `pin`.
    pub(in crate::ca) fn uri(token: &str, object: &str, pin: &Path) -> String {
        format!(
            "pkcs11:token={token};object={object}?module-path={MODULE}&pin-source=file:{}",
            pin.display()
        )
    }

    /// `[issuance]` with both keys in `token`, P-256 or P-384, no RSA intermediate.
    fn in_token(token: &str, kind: CaKeyType) -> IssuanceConfig {
        let pin = &softhsm().1;
        IssuanceConfig {
            root_key: kind,
            intermediate_key: kind,
            rsa_intermediate_key: RsaIntermediateKey::None,
            root_key_uri: Some(uri(token, &format!("root-{kind:?}"), pin)),
            intermediate_key_uri: Some(uri(token, &format!("issuing-{kind:?}"), pin)),
            ..IssuanceConfig::default()
        }
    }

    fn message<T>(r: Result<T>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(Error::Internal(m)) => m,
            Err(other) => panic!("expected a start error, got {other:?}"),
        }
    }

    #[test]
    fn uris_the_ca_cannot_use_are_refused_by_the_configuration() {
        let base = "pkcs11:token=t;object=k?module-path=/m.so&pin-source=file:/p";
        for (issuance, why) in [
            (
                "intermediate_key_uri = \"pkcs11:token=t;object=k?module-path=/m.so&pin-value=s3cret\"",
                "pin-source=file:",
            ),
            (
                "intermediate_key_uri = \"pkcs11:token=t;object=k;type=cert?module-path=/m.so\"",
                "type= must be private",
            ),
            (
                "intermediate_key_uri = \"pkcs11:token=t?module-path=/m.so\"",
                "object=",
            ),
            (
                "intermediate_key_uri = \"pkcs11:token=t;object=k\"",
                "module-path",
            ),
            ("intermediate_key_uri = \"pkcs11:token=t;x=1\"", "matches no object"),
            (&format!("root_key_uri = \"{base}\""), "without"),
            (&format!("intermediate_key_uri = \"{base}\""), "rsa_intermediate_key"),
        ] {
            let toml = format!("[issuance]\n{issuance}\n");
            let e = crate::config::Config::from_toml(&toml)
                .expect_err(issuance)
                .to_string();
            assert!(e.contains(why), "{issuance}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        let ok = format!(
            "[issuance]\nrsa_intermediate_key = \"none\"\nroot_key_uri = \"{base}\"\n\
             intermediate_key_uri = \"{base}\"\n[profiles.opcua]\nissuer = \"ec\"\n"
        );
        let cfg = crate::config::Config::from_toml(&ok).expect("both keys in a token");
        assert_eq!(cfg.issuance.intermediate_key_uri.as_deref(), Some(base));
    }

    /// Verifies `der` (a certificate) with the key of the certificate `issuer_pem`.
    fn issued_by(der: &[u8], issuer_pem: &str) -> bool {
        let issuer_der = x509_parser::pem::parse_x509_pem(issuer_pem.as_bytes())
            .expect("pem")
            .1
            .contents;
        let (_, issuer) = X509Certificate::from_der(&issuer_der).expect("issuer");
        let (_, cert) = X509Certificate::from_der(der).expect("cert");
        cert.verify_signature(Some(issuer.public_key())).is_ok()
    }

    #[test]
    fn init_creates_keys_in_the_token_and_certificates_crls_and_tls_are_signed_there() {
        for kind in [CaKeyType::P256, CaKeyType::P384] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("ca");
            let cfg = in_token("ca-sign", kind);
            let fingerprint = CertificateAuthority::init_in_token(&dir, &cfg).expect("init");
            let mut files: Vec<_> = fs::read_dir(&dir)
                .expect("dir")
                .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
                .collect();
            files.sort();
            assert_eq!(files, [INTERMEDIATE_CERT, ROOT_CERT], "{kind:?}");

            let ca = CertificateAuthority::load_or_init(&dir, &cfg).expect("load");
            assert_eq!(ca.root_fingerprint(), fingerprint);
            let root_der = read_pem_cert(&dir.join(ROOT_CERT)).expect("root");
            assert!(
                issued_by(&root_der, ca.root_pem()),
                "self-signed in the token"
            );
            let int_der = read_pem_cert(&dir.join(INTERMEDIATE_CERT)).expect("intermediate");
            assert!(issued_by(&int_der, ca.root_pem()), "{kind:?}");

            let leaf = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
            let issued = ca
                .issue(
                    &leaf.subject_public_key_info(),
                    &[Identifier::dns("device-1.plant.example")],
                    Duration::from_secs(86_400),
                )
                .expect("issued");
            assert!(issued_by(&issued.der, ca.intermediate_pem()), "{kind:?}");

            let crl = ca
                .sign_crl(IssuerKind::Ec, 3, 1_700_000_000, 1_700_086_400, &[])
                .expect("CRL");
            let (_, crl) = CertificateRevocationList::from_der(&crl).expect("CRL parses");
            let (_, int) = X509Certificate::from_der(&int_der).expect("intermediate");
            assert!(crl.verify_signature(int.public_key()).is_ok(), "{kind:?}");

            let names = ["ca.plant.example".to_owned()];
            let (chain, _) = ca.server_tls_identity(tmp.path(), &names).expect("TLS");
            let tls_der = x509_parser::pem::parse_x509_pem(chain.as_bytes())
                .expect("pem")
                .1
                .contents;
            assert!(issued_by(&tls_der, ca.intermediate_pem()), "{kind:?}");

            // A second CA under the same labels would replace nothing: refused.
            let other = tmp.path().join("other");
            let e = message(CertificateAuthority::init_in_token(&other, &cfg));
            assert!(e.contains("already holds a private key"), "{e}");
            // Nor over an existing CA directory.
            let e = message(CertificateAuthority::init_in_token(&dir, &cfg));
            assert!(e.contains("holds a CA already"), "{e}");
        }
    }

    #[test]
    fn key_files_beside_token_keys_and_missing_certificates_are_refused_at_start() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        let cfg = in_token("ca-refuse", CaKeyType::P256);
        let e = message(CertificateAuthority::load_or_init(&dir, &cfg));
        assert!(e.contains("init --hsm"), "{e}");
        assert!(
            fs::read_dir(&dir).expect("dir").next().is_none(),
            "nothing is created on start"
        );
        CertificateAuthority::init_in_token(&dir, &cfg).expect("init");
        let stray = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        write_key(&dir.join(INTERMEDIATE_KEY), &stray).expect("write");
        let e = message(CertificateAuthority::load_or_init(&dir, &cfg));
        assert!(
            e.contains("intermediate.key") && e.contains("says the key is in a token"),
            "{e}"
        );
        fs::remove_file(dir.join(INTERMEDIATE_KEY)).expect("rm");
        // Without the root's URI and without root.key, the root is offline.
        let offline = IssuanceConfig {
            root_key_uri: None,
            ..cfg.clone()
        };
        CertificateAuthority::load_or_init(&dir, &offline).expect("offline root");
        // The issuing key of the token against another CA's certificate.
        let other = tempfile::tempdir().expect("tempdir");
        let other_dir = other.path().join("ca");
        let other_cfg = IssuanceConfig {
            root_key_uri: Some(uri("ca-refuse", "root-2", &softhsm().1)),
            intermediate_key_uri: Some(uri("ca-refuse", "issuing-2", &softhsm().1)),
            ..cfg.clone()
        };
        CertificateAuthority::init_in_token(&other_dir, &other_cfg).expect("init");
        fs::copy(
            other_dir.join(INTERMEDIATE_CERT),
            dir.join(INTERMEDIATE_CERT),
        )
        .expect("copy");
        let e = message(CertificateAuthority::load_or_init(&dir, &offline));
        assert!(e.contains("was not issued by"), "{e}");
        fs::copy(other_dir.join(ROOT_CERT), dir.join(ROOT_CERT)).expect("copy");
        let e = message(CertificateAuthority::load_or_init(&dir, &cfg));
        assert!(e.contains("is not the key of root.pem"), "{e}");
    }

    #[test]
    fn a_wrong_pin_or_a_missing_token_is_a_start_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        let cfg = in_token("ca-pin", CaKeyType::P256);
        CertificateAuthority::init_in_token(&dir, &cfg).expect("init");
        let wrong = tmp.path().join("wrong-pin");
        write_atomic(&wrong, b"0000\n", 0o600).expect("pin");
        let wrong_cfg = IssuanceConfig {
            root_key_uri: Some(uri("ca-pin", "root-P256", &wrong)),
            ..cfg.clone()
        };
        let e = message(CertificateAuthority::load_or_init(&dir, &wrong_cfg));
        assert!(e.contains("wrong PIN") && e.contains(ROOT_KEY_URI), "{e}");
        let absent = IssuanceConfig {
            intermediate_key_uri: Some(uri("no-such-token", "issuing", &softhsm().1)),
            root_key_uri: None,
            ..cfg.clone()
        };
        let e = message(CertificateAuthority::load_or_init(&dir, &absent));
        assert!(e.contains("no token matches"), "{e}");
    }

    #[test]
    fn a_key_gone_from_the_token_is_a_503_at_request_time() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        let cfg = in_token("ca-gone", CaKeyType::P256);
        CertificateAuthority::init_in_token(&dir, &cfg).expect("init");
        let ca = CertificateAuthority::load_or_init(&dir, &cfg).expect("load");
        ca.sign_crl(IssuerKind::Ec, 1, 0, 1, &[]).expect("signs");
        // The key is destroyed behind the CA's back (another application of the token):
        // the CA's session reports the handle invalid, finds no key in a new one, and fails
        // this request with a 503 instead of panicking.
        let intermediate = configured(INTERMEDIATE_KEY_URI, cfg.intermediate_key_uri.as_deref())
            .expect("uri")
            .expect("set");
        assert_eq!(
            pkcs11_key::destroy(&intermediate, "issuing-P256").expect("destroy"),
            2
        );
        let e = ca
            .sign_crl(IssuerKind::Ec, 2, 0, 1, &[])
            .expect_err("no key");
        assert!(matches!(e, Error::SigningKey(_)), "{e:?}");
        assert!(e.to_string().contains("cannot sign the CRL"), "{e}");
        let resp = axum::response::IntoResponse::into_response(e);
        assert_eq!(resp.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        let retry_after = resp.headers().get(http::header::RETRY_AFTER);
        assert_eq!(
            retry_after.and_then(|v| v.to_str().ok()),
            Some(
                crate::error::STORAGE_RETRY_AFTER
                    .as_secs()
                    .to_string()
                    .as_str()
            )
        );
        let leaf = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let e = ca
            .issue(
                &leaf.subject_public_key_info(),
                &[Identifier::dns("device-2.plant.example")],
                Duration::from_secs(86_400),
            )
            .expect_err("no key");
        assert!(matches!(e, Error::SigningKey(_)), "{e:?}");
    }
}
