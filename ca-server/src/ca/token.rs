//! CA keys in a PKCS #11 token (an HSM, a smart card, a TPM through tpm2-pkcs11) instead of
//! files in the CA directory: `issuance.root_key_uri`, `issuance.intermediate_key_uri` and
//! `issuance.rsa_intermediate_key_uri` name them with RFC 7512 URIs.
//!
//! `ca-server init --hsm` ([`CertificateAuthority::init_in_token`]) generates the keys in the
//! token (CKA_SENSITIVE, CKA_EXTRACTABLE false: the token never lets them out): the root and
//! the EC issuing key of their configured curves and, with `rsa_intermediate_key_uri`, the RSA
//! issuing key of `rsa_intermediate_key`'s size. It self-signs the root and signs the
//! intermediates through the token, and writes only `root.pem`, `intermediate.pem` and
//! `rsa-intermediate.pem`. Every start finds the keys again by their URIs, checks that each has
//! never left the token and that it is the key of its certificate, and from then on every
//! certificate, CRL and the server's own HTTPS certificate is signed in the token ([`CaKey`] is
//! rcgen's signing key): ECDSA by the EC keys, sha256WithRSAEncryption (PKCS #1 v1.5,
//! `CKM_SHA256_RSA_PKCS`) by the RSA intermediate's, as with its key file.
//!
//! A CA with its issuing key in a token keeps its RSA issuing key there too, or has no RSA
//! intermediate: `intermediate_key_uri` needs `rsa_intermediate_key_uri` or
//! `rsa_intermediate_key = "none"`, so that no CA key is left on disk. Start creates nothing in
//! the token: an RSA intermediate is made by `init --hsm` with the rest of the CA, or with an
//! offline root as below.
//!
//! Without `root_key_uri` and without `root.key` the root is offline (see [`super::offline`]);
//! only the issuing keys are then in the token: `ca-server intermediate request` (`--kind rsa`
//! for the RSA one) generates one there as `init --hsm` does and prints a request signed by it,
//! and `ca-server intermediate install` writes the certificate the offline root issued for it,
//! after checking that it certifies the token's key.
//!
//! The token's session is one per key, behind a mutex ([`pkcs11_key::TokenKey`]); a session
//! the token lost is opened again once. A token failing at request time is
//! [`Error::SigningKey`] (503 with Retry-After); at start, every token or PIN problem is a start
//! error naming the setting.

use std::sync::Mutex;

use pkcs11_key::{Curve, KeyKind, Pkcs11Uri, TokenKey};

use super::*;

/// The settings that name CA keys in a token.
pub(crate) const ROOT_KEY_URI: &str = "issuance.root_key_uri";
pub(crate) const INTERMEDIATE_KEY_URI: &str = "issuance.intermediate_key_uri";
pub(crate) const RSA_INTERMEDIATE_KEY_URI: &str = "issuance.rsa_intermediate_key_uri";

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
/// key, the root's and the RSA intermediate's come with the issuing key's, and the RSA
/// intermediate is in the token or absent ([`rsa_settings_error`]).
pub fn check_key_uris(cfg: &IssuanceConfig) -> std::result::Result<(), String> {
    for (setting, text) in [
        (ROOT_KEY_URI, &cfg.root_key_uri),
        (INTERMEDIATE_KEY_URI, &cfg.intermediate_key_uri),
        (RSA_INTERMEDIATE_KEY_URI, &cfg.rsa_intermediate_key_uri),
    ] {
        if let Some(text) = text {
            parse_ca_key_uri(setting, text)?;
        }
    }
    match without_intermediate(cfg).or_else(|| rsa_settings_error(cfg)) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The error for a root or RSA intermediate key in a token without the EC issuing key there.
pub(super) fn without_intermediate(cfg: &IssuanceConfig) -> Option<String> {
    if cfg.intermediate_key_uri.is_some() {
        return None;
    }
    let (setting, which) = match (&cfg.root_key_uri, &cfg.rsa_intermediate_key_uri) {
        (Some(_), _) => (ROOT_KEY_URI, "a root key"),
        (None, Some(_)) => (RSA_INTERMEDIATE_KEY_URI, "an RSA issuing key"),
        (None, None) => return None,
    };
    Some(format!(
        "{setting} is set without {INTERMEDIATE_KEY_URI}: {which} in a token needs the EC \
         issuing key there too"
    ))
}

/// The error for RSA intermediate settings that do not go with keys in a token: a URI for an
/// RSA key with `rsa_intermediate_key = "none"`, or an RSA intermediate (a key file) beside an
/// issuing key in a token.
fn rsa_settings_error(cfg: &IssuanceConfig) -> Option<String> {
    let none = cfg.rsa_intermediate_key == RsaIntermediateKey::None;
    match (&cfg.intermediate_key_uri, &cfg.rsa_intermediate_key_uri) {
        (_, Some(_)) if none => Some(format!(
            "{RSA_INTERMEDIATE_KEY_URI} is set but issuance.rsa_intermediate_key is \"none\": \
             set issuance.rsa_intermediate_key to the RSA intermediate's size (rsa2048, rsa3072 \
             or rsa4096), or leave {RSA_INTERMEDIATE_KEY_URI} out for a CA without an RSA \
             intermediate"
        )),
        (Some(_), None) if !none => Some(format!(
            "with CA keys in a PKCS #11 token ({INTERMEDIATE_KEY_URI}), the RSA intermediate's \
             key is in the token too: set {RSA_INTERMEDIATE_KEY_URI}, or \
             issuance.rsa_intermediate_key = \"none\" for a CA without an RSA intermediate (its \
             key file would be the one CA key left on disk)"
        )),
        _ => None,
    }
}

/// The token key type of a CA key of `kind`.
pub(crate) fn ec_kind(kind: CaKeyType) -> KeyKind {
    match kind {
        CaKeyType::P256 => KeyKind::Ec(Curve::P256),
        CaKeyType::P384 => KeyKind::Ec(Curve::P384),
    }
}

/// The token key type of the RSA intermediate `want`, or `None` for none.
pub(crate) fn rsa_kind(want: RsaIntermediateKey) -> Option<KeyKind> {
    want.bits()
        .and_then(|bits| u32::try_from(bits).ok())
        .map(KeyKind::Rsa)
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
pub(crate) fn generate(setting: &str, uri: &Pkcs11Uri, kind: KeyKind) -> Result<CaKey> {
    let fail = |e: pkcs11_key::Error| Error::Internal(format!("{setting}: {e}"));
    refuse_existing(setting, uri)?;
    let key = TokenKey::generate(uri, uri.object.as_deref(), kind).map_err(fail)?;
    Ok(CaKey::Token(TokenSigner::new(key, setting)?))
}

/// Refuses to create a key where the token holds one already.
fn refuse_existing(setting: &str, uri: &Pkcs11Uri) -> Result<()> {
    if TokenKey::find_labelled(uri, uri.object.as_deref())
        .map_err(|e| Error::Internal(format!("{setting}: {e}")))?
        .is_some()
    {
        return Err(Error::Internal(format!(
            "{setting} {uri}: the token already holds a private key under this label and id; \
             refusing to create another (a CA whose certificates it signed may still need it). \
             Name a new object=, or delete the old key with the token's tools"
        )));
    }
    Ok(())
}

impl CertificateAuthority {
    /// `ca-server init --hsm`: a new CA in `dir` whose root and issuing keys (and the RSA
    /// intermediate's, with `rsa_intermediate_key_uri`) are generated in the token `cfg`'s URIs
    /// name. Writes `root.pem`, `intermediate.pem` and `rsa-intermediate.pem` only; refuses a
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
        if let Some(e) = rsa_settings_error(cfg) {
            return Err(Error::Internal(e));
        }
        let rsa = match configured(
            RSA_INTERMEDIATE_KEY_URI,
            cfg.rsa_intermediate_key_uri.as_deref(),
        )? {
            Some(uri) => {
                let kind = rsa_kind(cfg.rsa_intermediate_key).ok_or_else(|| {
                    Error::Internal(format!("{RSA_INTERMEDIATE_KEY_URI} needs a size"))
                })?;
                Some((uri, kind))
            }
            None => None,
        };
        ensure_private_dir(dir)?;
        for name in [
            ROOT_CERT,
            ROOT_KEY,
            INTERMEDIATE_CERT,
            INTERMEDIATE_KEY,
            RSA_INTERMEDIATE_CERT,
            RSA_INTERMEDIATE_KEY,
        ] {
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
        // No key is made unless all can be: a key left alone in the token would block the
        // next attempt under the same labels.
        refuse_existing(ROOT_KEY_URI, &root_uri)?;
        refuse_existing(INTERMEDIATE_KEY_URI, &intermediate_uri)?;
        if let Some((uri, _)) = &rsa {
            refuse_existing(RSA_INTERMEDIATE_KEY_URI, uri)?;
        }
        let root_key = generate(ROOT_KEY_URI, &root_uri, ec_kind(cfg.root_key))?;
        let intermediate_key = generate(
            INTERMEDIATE_KEY_URI,
            &intermediate_uri,
            ec_kind(cfg.intermediate_key),
        )?;
        let failed = |what: &str, e: &rcgen::Error| root_key.signing_error(what, e);
        let (root_der, intermediate_der) = sign_hierarchy(&root_key, &intermediate_key, failed)?;
        let rsa_der = match &rsa {
            Some((uri, kind)) => {
                let rsa_key = generate(RSA_INTERMEDIATE_KEY_URI, uri, *kind)?;
                let root_path = dir.join(ROOT_CERT);
                Some(sign_rsa_intermediate(
                    &root_path, &root_der, &root_key, &rsa_key, failed,
                )?)
            }
            None => None,
        };
        write_cert(&dir.join(ROOT_CERT), &root_der)?;
        write_cert(&dir.join(INTERMEDIATE_CERT), &intermediate_der)?;
        if let Some(der) = &rsa_der {
            write_cert(&dir.join(RSA_INTERMEDIATE_CERT), der)?;
        }
        let rsa_key = rsa.as_ref().map(|(uri, _)| uri.to_string());
        tracing::info!(dir = %dir.display(), root_key = %root_uri, intermediate_key = %intermediate_uri, rsa_intermediate_key = ?rsa_key, "created a new CA with its keys in a PKCS #11 token");
        Ok(crate::wire::fingerprint(&root_der))
    }

    /// Loads a CA whose issuing key (and root key, unless offline, and the RSA intermediate's
    /// key, if it has one) is in a token: the certificates from `dir`, the keys by their URIs.
    /// A key file beside a URI for the same key is refused: which one is the CA's would be a
    /// guess.
    pub(super) fn load_with_token(
        dir: &Path,
        cfg: &IssuanceConfig,
        intermediate_uri: &Pkcs11Uri,
    ) -> Result<Self> {
        if let Some(e) = rsa_settings_error(cfg) {
            return Err(Error::Internal(e));
        }
        let root_uri = configured(ROOT_KEY_URI, cfg.root_key_uri.as_deref())?;
        let rsa_uri = configured(
            RSA_INTERMEDIATE_KEY_URI,
            cfg.rsa_intermediate_key_uri.as_deref(),
        )?;
        let exists = |name: &str| {
            let path = dir.join(name);
            path.try_exists()
                .map_err(|e| file_error(&path, format!("cannot be checked: {e}")))
        };
        for (name, setting, in_token) in [
            (INTERMEDIATE_KEY, INTERMEDIATE_KEY_URI, true),
            (ROOT_KEY, ROOT_KEY_URI, root_uri.is_some()),
            (
                RSA_INTERMEDIATE_KEY,
                RSA_INTERMEDIATE_KEY_URI,
                rsa_uri.is_some(),
            ),
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
        let mut ca = Self::load_with(
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
        if let Some(uri) = &rsa_uri {
            if !exists(RSA_INTERMEDIATE_CERT)? {
                return Err(file_error(
                    &dir.join(RSA_INTERMEDIATE_CERT),
                    format!(
                        "is missing: with {RSA_INTERMEDIATE_KEY_URI} set, the RSA intermediate \
                         is created by `ca-server init --hsm` (or, with an offline root, \
                         `ca-server intermediate request --kind rsa` and `install`), not on \
                         start; or leave the setting out and set \
                         issuance.rsa_intermediate_key = \"none\""
                    ),
                ));
            }
            let key = open(RSA_INTERMEDIATE_KEY_URI, uri)?;
            let key_name = format!("{RSA_INTERMEDIATE_KEY_URI} {uri}");
            ca.rsa = Some(Intermediate::load_rsa(
                dir,
                &ca.root_der,
                key,
                &key_name,
                cfg.rsa_intermediate_key,
            )?);
        }
        let rsa_key = rsa_uri.as_ref().map(|uri| uri.to_string());
        tracing::info!(root = %ca.root_path.display(), fingerprint = %ca.root_fingerprint(), intermediate_key = %intermediate_uri, rsa_intermediate_key = ?rsa_key, root_key_offline, "CA loaded; its issuing key is in a PKCS #11 token");
        Ok(ca)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::process::Command;
    use std::sync::OnceLock;

    use x509_parser::revocation_list::CertificateRevocationList;

    use super::*;
    use crate::testutil::{openssl_csr, openssl_rsa_key};
    use crate::types::Identifier;

    const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
    /// One token per test, so that the tests run at the same time.
    const TOKENS: &[&str] = &[
        "ca-sign",
        "ca-refuse",
        "ca-pin",
        "ca-gone",
        "ca-offline",
        "ca-rsa",
        "ca-offline-rsa",
    ];

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

    /// `[issuance]` with the root and the EC (P-256) and RSA (2048 bits) issuing keys in
    /// `token`.
    pub(in crate::ca) fn rsa_in_token(token: &str) -> IssuanceConfig {
        IssuanceConfig {
            rsa_intermediate_key: RsaIntermediateKey::Rsa2048,
            rsa_intermediate_key_uri: Some(uri(token, "rsa-issuing", &softhsm().1)),
            ..in_token(token, CaKeyType::P256)
        }
    }

    /// The names of the files in `dir`, sorted.
    fn files(dir: &Path) -> Vec<String> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        files.sort();
        files
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
            (
                &format!("intermediate_key_uri = \"{base}\""),
                "set issuance.rsa_intermediate_key_uri, or issuance.rsa_intermediate_key = \
                 \"none\"",
            ),
            (
                &format!("rsa_intermediate_key_uri = \"{base}\""),
                "rsa_intermediate_key_uri is set without issuance.intermediate_key_uri",
            ),
            (
                &format!(
                    "rsa_intermediate_key = \"none\"\nintermediate_key_uri = \"{base}\"\n\
                     rsa_intermediate_key_uri = \"{base}\"\n[profiles.opcua]\nissuer = \"ec\""
                ),
                "issuance.rsa_intermediate_key_uri is set but issuance.rsa_intermediate_key is \
                 \"none\"",
            ),
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
        let ok = format!(
            "[issuance]\nrsa_intermediate_key = \"rsa2048\"\nroot_key_uri = \"{base}\"\n\
             intermediate_key_uri = \"{base}\"\nrsa_intermediate_key_uri = \"{base}\"\n"
        );
        let cfg = crate::config::Config::from_toml(&ok).expect("the three keys in a token");
        assert_eq!(cfg.issuance.rsa_intermediate_key_uri.as_deref(), Some(base));
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

    /// A certificate for a new P-256 device key, from the EC intermediate.
    fn ec_device_cert(ca: &CertificateAuthority) -> Result<IssuedCert> {
        let leaf = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        ca.issue(
            &leaf.subject_public_key_info(),
            &[Identifier::dns("device-1.plant.example")],
            Duration::from_secs(86_400),
        )
    }

    #[test]
    fn init_creates_keys_in_the_token_and_certificates_crls_and_tls_are_signed_there() {
        for kind in [CaKeyType::P256, CaKeyType::P384] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("ca");
            let cfg = in_token("ca-sign", kind);
            let fingerprint = CertificateAuthority::init_in_token(&dir, &cfg).expect("init");
            assert_eq!(files(&dir), [INTERMEDIATE_CERT, ROOT_CERT], "{kind:?}");

            let ca = CertificateAuthority::load_or_init(&dir, &cfg).expect("load");
            assert_eq!(ca.root_fingerprint(), fingerprint);
            let root_der = read_pem_cert(&dir.join(ROOT_CERT)).expect("root");
            assert!(
                issued_by(&root_der, ca.root_pem()),
                "self-signed in the token"
            );
            let int_der = read_pem_cert(&dir.join(INTERMEDIATE_CERT)).expect("intermediate");
            assert!(issued_by(&int_der, ca.root_pem()), "{kind:?}");

            let issued = ec_device_cert(&ca).expect("issued");
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
    fn an_rsa_intermediate_in_the_token_issues_to_rsa_keys_and_signs_its_crl_there() {
        const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        let cfg = rsa_in_token("ca-rsa");
        let fingerprint = CertificateAuthority::init_in_token(&dir, &cfg).expect("init");
        let certs = [INTERMEDIATE_CERT, ROOT_CERT, RSA_INTERMEDIATE_CERT];
        assert_eq!(files(&dir), certs, "no key file is written");
        let rsa_der = read_pem_cert(&dir.join(RSA_INTERMEDIATE_CERT)).expect("RSA intermediate");
        let (_, rsa_int) = X509Certificate::from_der(&rsa_der).expect("parses");
        match rsa_int.public_key().parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(key)) => assert_eq!(key.key_size(), 2048),
            other => panic!("not an RSA key: {other:?}"),
        }
        openssl_rsa_key(tmp.path(), "device-rsa.pem", 2048);
        let request = openssl_csr(tmp.path(), &["-key", "device-rsa.pem"], &[]);
        let device = csr::parse_and_verify(&request).expect("an RSA CSR");
        let rsa_leaf = Leaf {
            issuer: IssuerKind::Rsa,
            ..Leaf::spec_default(Duration::from_secs(86_400), true)
        };

        // First start, and a restart: the keys are found in the token each time.
        for start in ["first", "restart"] {
            let ca = CertificateAuthority::load_or_init(&dir, &cfg).expect("load");
            assert_eq!(ca.root_fingerprint(), fingerprint);
            let rsa_pem = ca.rsa_intermediate_pem().expect("the RSA intermediate");
            assert!(issued_by(&rsa_der, ca.root_pem()), "{start}");

            // The RSA device key under an RSA profile: signed in the token with
            // sha256WithRSAEncryption by the RSA intermediate, which alone follows it.
            let issued = ca
                .issue_leaf(&device.spki_der, &device.identifiers, &rsa_leaf)
                .expect("issued");
            assert_eq!(issued.issuer, IssuerKind::Rsa);
            let (_, cert) = X509Certificate::from_der(&issued.der).expect("parses");
            assert_eq!(
                cert.signature_algorithm.algorithm.to_id_string(),
                SHA256_WITH_RSA
            );
            assert!(issued_by(&issued.der, rsa_pem), "{start}");
            assert!(issued.chain_pem.ends_with(rsa_pem));

            // An EC device key: the EC intermediate, in the token too.
            let ec = ec_device_cert(&ca).expect("issued");
            assert!(issued_by(&ec.der, ca.intermediate_pem()), "{start}");

            // The RSA intermediate's CRL, with the RSA certificate revoked.
            let serial = hex::decode(&issued.serial_hex).expect("hex");
            let crl = ca
                .sign_crl(
                    IssuerKind::Rsa,
                    2,
                    1_700_000_000,
                    1_700_086_400,
                    &[(serial, 1_700_000_000, 1)],
                )
                .expect("CRL");
            let (_, crl) = CertificateRevocationList::from_der(&crl).expect("CRL parses");
            assert_eq!(
                crl.signature_algorithm.algorithm.to_id_string(),
                SHA256_WITH_RSA
            );
            assert!(
                crl.verify_signature(rsa_int.public_key()).is_ok(),
                "{start}"
            );
            assert_eq!(crl.iter_revoked_certificates().count(), 1);
        }
        assert_eq!(files(&dir), certs, "no key file after starts either");

        // An RSA key file beside the URI: refused. Without the certificate: not created at
        // start. The URI with rsa_intermediate_key = "none": refused, naming both.
        write_atomic(&dir.join(RSA_INTERMEDIATE_KEY), b"stray", 0o600).expect("write");
        let e = message(CertificateAuthority::load_or_init(&dir, &cfg));
        assert!(
            e.contains("rsa-intermediate.key") && e.contains(RSA_INTERMEDIATE_KEY_URI),
            "{e}"
        );
        fs::remove_file(dir.join(RSA_INTERMEDIATE_KEY)).expect("rm");
        let none = IssuanceConfig {
            rsa_intermediate_key: RsaIntermediateKey::None,
            ..cfg.clone()
        };
        let e = message(CertificateAuthority::load_or_init(&dir, &none));
        assert!(
            e.contains(RSA_INTERMEDIATE_KEY_URI) && e.contains("rsa_intermediate_key is \"none\""),
            "{e}"
        );
        let file_beside_token = IssuanceConfig {
            rsa_intermediate_key_uri: None,
            ..cfg.clone()
        };
        let e = message(CertificateAuthority::load_or_init(&dir, &file_beside_token));
        assert!(
            e.contains(&format!("set {RSA_INTERMEDIATE_KEY_URI}")),
            "{e}"
        );
        let moved = tmp.path().join("moved.pem");
        fs::rename(dir.join(RSA_INTERMEDIATE_CERT), &moved).expect("mv");
        let e = message(CertificateAuthority::load_or_init(&dir, &cfg));
        assert!(
            e.contains("rsa-intermediate.pem") && e.contains("--kind rsa"),
            "{e}"
        );
        // The RSA certificate with the EC intermediate's key in the RSA slot: refused.
        fs::rename(&moved, dir.join(RSA_INTERMEDIATE_CERT)).expect("mv");
        let swapped = IssuanceConfig {
            rsa_intermediate_key_uri: cfg.intermediate_key_uri.clone(),
            ..cfg.clone()
        };
        let e = message(CertificateAuthority::load_or_init(&dir, &swapped));
        assert!(e.contains("does not match rsa-intermediate.pem"), "{e}");
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
