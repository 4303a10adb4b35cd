//! Keys in a PKCS #11 token: a hardware security module, a smart card, or a TPM through
//! tpm2-pkcs11. The key is named by an RFC 7512 URI ([`uri`]); its private half never enters
//! this process, which only asks the token for signatures (`C_Sign` with `CKM_ECDSA` over the
//! message's digest, or `CKM_SHA256_RSA_PKCS` over the message for an RSA key).
//!
//! - The device client's certificate key: a new one for every certificate, generated in the token with
//!   `C_GenerateKeyPair` ([`TokenKey::generate`]: CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE,
//!   CKA_SIGN true and CKA_EXTRACTABLE false, so the token never lets it out) under the URI's
//!   `object` with [`NEXT_SUFFIX`] as CKA_LABEL, and the URI's `id` (or a random one) as
//!   CKA_ID. Once its certificate is installed the old key is destroyed and the new one
//!   relabelled to `object` ([`destroy`], [`relabel`]). With `reuse_key`,
//!   [`TokenKey::open_or_generate`] keeps the one key. It signs the CSR through
//!   [`TokenKey::csr_signer`] (an [`rcgen::SigningKey`]).
//! - The device client's IDevID key of device-attest-01 ([`TokenKey::open`]): installed by the
//!   manufacturer, never generated here.
//! - The CA's root and issuing keys, EC and RSA: generated in the token by `ca-server init
//!   --hsm` ([`TokenKey::generate`]), then found with [`TokenKey::find_labelled`].
//!
//! Every key found is checked ([`KeyOrigin`]: sensitive, not extractable, and for generated
//! keys never out of the token), must match one private and at most one public object, and
//! must sign a random message that its public key verifies. A wrong, locked or expired PIN or
//! a bad URI is a configuration error ([`Error::Config`]); a token that is missing or failing is
//! [`Error::Token`], which the device client's `run` tries again and the running CA answers
//! with a 503.
//!
//! The key's type is a [`KeyKind`]: ECDSA P-256 (SHA-256) and P-384 (SHA-384) keys, the same
//! as the key files, or RSA keys of at least 2048 bits (`CKM_RSA_PKCS_KEY_PAIR_GEN` with
//! public exponent 65537), which sign PKCS #1 v1.5 over SHA-256 (sha256WithRSAEncryption, as
//! the CA's RSA intermediate signs). The device client's keys ([`TokenKey::open`],
//! [`TokenKey::open_or_generate`]) are EC only.
//!
//! The module is loaded with `dlopen` when a URI names it (`module-path`), once per process,
//! and initialised for several threads; nothing links against a vendor library.

pub mod uri;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

pub use uri::Pkcs11Uri;

/// Why a key in a token cannot be used. Each message starts with the key's URI, its PIN
/// redacted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Needs the operator: a bad URI, a wrong, locked or missing PIN, a key that may have left
    /// the token, objects that do not pair.
    #[error("{0}")]
    Config(String),
    /// May pass: the token is not present (yet), its slot or device is failing, a session was
    /// lost.
    #[error("{0}")]
    Token(String),
    /// The token did something a key cannot be used with: an unsupported curve, a malformed
    /// signature, no readable public key.
    #[error("{0}")]
    Crypto(String),
}

/// DER of the named-curve OID in CKA_EC_PARAMS for P-256 (prime256v1, 1.2.840.10045.3.1.7).
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the named-curve OID for P-384 (secp384r1, 1.3.132.0.34).
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// The curve of a token key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    /// P-256, signed over SHA-256.
    P256,
    /// P-384, signed over SHA-384.
    P384,
}

impl Curve {
    fn params(self) -> &'static [u8] {
        match self {
            Self::P256 => P256_PARAMS,
            Self::P384 => P384_PARAMS,
        }
    }

    fn from_params(params: &[u8]) -> Option<Self> {
        [Self::P256, Self::P384]
            .into_iter()
            .find(|c| c.params() == params)
    }

    /// Octets of one coordinate (and of r and s).
    fn len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    fn digest(self, msg: &[u8]) -> ring::digest::Digest {
        let alg = match self {
            Self::P256 => &ring::digest::SHA256,
            Self::P384 => &ring::digest::SHA384,
        };
        ring::digest::digest(alg, msg)
    }

    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }
}

/// The smallest RSA modulus a token key may have, in bits.
pub const RSA_MIN_BITS: u32 = 2048;

/// The type of a key in a token, and so how it signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on this curve.
    Ec(Curve),
    /// RSA with a modulus of this many bits (at least [`RSA_MIN_BITS`]), public exponent
    /// 65537 for keys generated here; signs PKCS #1 v1.5 over SHA-256.
    Rsa(u32),
}

impl From<Curve> for KeyKind {
    fn from(curve: Curve) -> Self {
        Self::Ec(curve)
    }
}

impl KeyKind {
    /// The algorithm rcgen signs certificates, CSRs and CRLs with for this key.
    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::Ec(curve) => curve.rcgen(),
            Self::Rsa(_) => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// The algorithm ring verifies this key's signatures with (see [`TokenKey::sign_der`]).
    fn verification(self) -> &'static dyn ring::signature::VerificationAlgorithm {
        match self {
            Self::Ec(Curve::P256) => &ring::signature::ECDSA_P256_SHA256_ASN1,
            Self::Ec(Curve::P384) => &ring::signature::ECDSA_P384_SHA384_ASN1,
            Self::Rsa(_) => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        }
    }
}

/// Why the token could not be used: the configuration (the URI, the PIN), or the token for now.
#[derive(Debug)]
enum Failure {
    /// Needs the operator (the device client exits 2, and its `run` stops).
    Config(String),
    /// May pass: a token not present yet, a device or session error (the device client's `run`
    /// tries again).
    Token(String),
}

impl Failure {
    /// The crate error, the message prefixed with the key's URI (its PIN redacted).
    fn into_error(self, uri: &Pkcs11Uri) -> Error {
        match self {
            Self::Config(e) => Error::Config(format!("PKCS #11 key {uri}: {e}")),
            Self::Token(e) => Error::Token(format!("PKCS #11 key {uri}: {e}")),
        }
    }
}

/// A token error of an operation (`what`): a wrong, locked or expired PIN is a configuration
/// error, anything else the token's for now.
fn token_failure(what: &str, e: &CkError) -> Failure {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired, _) => {
            Failure::Config(format!("{what}: {e}"))
        }
        _ => Failure::Token(format!("{what}: {e}")),
    }
}

/// Whether a token error means that the session is gone (closed, logged out, token removed
/// and back): worth one new session before failing. After a logout some tokens (SoftHSM)
/// report the private key's handle as invalid rather than the user as not logged in.
fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid,
            _
        )
    )
}

/// How a key found in a token must have come there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Generated in the token and never out of it: CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE and
    /// CKA_NEVER_EXTRACTABLE true, CKA_EXTRACTABLE false. The certificate key.
    Generated,
    /// Possibly imported (the IDevID key a manufacturer installs): CKA_SENSITIVE true and
    /// CKA_EXTRACTABLE false, with a warning if CKA_ALWAYS_SENSITIVE or CKA_NEVER_EXTRACTABLE
    /// is false.
    MayBeImported,
}

/// The process's loaded modules by path. A module is initialised once and never finalised:
/// `C_Finalize` would end every other user's sessions, and the process needs it until it ends.
/// A module file that does not exist is a configuration error (the URI's `module-path`); one
/// that fails to load or initialise is tried again later (a TPM stack not ready at boot).
fn module(path: &Path) -> Result<Pkcs11, Failure> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut loaded = MODULES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(m) = loaded.get(path) {
        return Ok(m.clone());
    }
    if !path.exists() {
        return Err(Failure::Config(format!(
            "the PKCS #11 module {} does not exist (module-path)",
            path.display()
        )));
    }
    let m = Pkcs11::new(path).map_err(|e| {
        Failure::Token(format!(
            "cannot load the PKCS #11 module {}: {e}",
            path.display()
        ))
    })?;
    match m.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in this process initialised it already: that works for us too.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(Failure::Token(format!(
                "cannot initialise the PKCS #11 module {}: {e}",
                path.display()
            )))
        }
    }
    loaded.insert(path.to_owned(), m.clone());
    Ok(m)
}

/// Whether the module and slot information match the URI's library and slot attributes, and
/// the token information its token attributes (RFC 7512 §3.3: every attribute given must
/// match; blank padding does not count).
fn slot_matches(m: &Pkcs11, slot: Slot, uri: &Pkcs11Uri) -> Result<bool, CkError> {
    let same =
        |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have.trim_end());
    if uri.slot_id.is_some_and(|id| id != slot.id()) {
        return Ok(false);
    }
    if uri.slot_description.is_some() || uri.slot_manufacturer.is_some() {
        let info = m.get_slot_info(slot)?;
        if !same(&uri.slot_description, info.slot_description())
            || !same(&uri.slot_manufacturer, info.manufacturer_id())
        {
            return Ok(false);
        }
    }
    let t = m.get_token_info(slot)?;
    Ok(same(&uri.token, t.label())
        && same(&uri.manufacturer, t.manufacturer_id())
        && same(&uri.serial, t.serial_number())
        && same(&uri.model, t.model()))
}

/// Reads the PIN the URI points to: the first line of the `pin-source` file, or `pin-value`.
/// The copies made here are wiped when dropped (the file's text, [`AuthPin`]); a PIN file that
/// other users may read is warned about, once per process.
fn pin(uri: &Pkcs11Uri) -> Result<Option<AuthPin>, String> {
    match &uri.pin {
        None => Ok(None),
        Some(uri::PinSource::Value(v)) => Ok(Some(AuthPin::from(v.as_str().to_owned()))),
        Some(uri::PinSource::File(path)) => {
            warn_if_readable_by_others(path);
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the PIN file {}: {e}", path.display()))?,
            );
            let line = text.lines().next().unwrap_or_default();
            Ok(Some(AuthPin::from(line.to_owned())))
        }
    }
}

/// Warns (once per process) if the PIN file's mode lets its group or others read or change
/// it: the PIN belongs to the user of the token only (mode 0600 or 0400).
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "the PIN file {} has mode {mode:04o}: other users can read it; make it 0600 \
             (chmod 600), owned by the user that runs this program",
            path.display()
        );
    }
}

/// Opens a logged-in read-write session on the one token the URI names. No token matching
/// (not inserted, or a TPM not ready yet) is a [`Failure::Token`]; a URI that cannot match
/// (several tokens, the library attributes) or a PIN problem is a [`Failure::Config`].
fn open_session(uri: &Pkcs11Uri) -> Result<Session, Failure> {
    let m = module(uri.module().map_err(Failure::Config)?)?;
    if uri.library_manufacturer.is_some()
        || uri.library_description.is_some()
        || uri.library_version.is_some()
    {
        let info = m
            .get_library_info()
            .map_err(|e| token_failure("cannot read the module information", &e))?;
        let v = info.library_version();
        if uri
            .library_manufacturer
            .as_deref()
            .is_some_and(|w| w != info.manufacturer_id().trim_end())
            || uri
                .library_description
                .as_deref()
                .is_some_and(|w| w != info.library_description().trim_end())
            || uri
                .library_version
                .is_some_and(|w| w != (v.major(), v.minor()))
        {
            return Err(Failure::Config(
                "the module does not match the URI's library attributes".into(),
            ));
        }
    }
    let slots = m
        .get_slots_with_token()
        .map_err(|e| token_failure("cannot list the module's slots", &e))?;
    let mut found = Vec::new();
    let mut labels = Vec::new();
    for slot in slots {
        match m.get_token_info(slot) {
            Ok(t) if t.token_initialized() => labels.push(format!("{:?}", t.label().trim_end())),
            _ => {}
        }
        if slot_matches(&m, slot, uri)
            .map_err(|e| token_failure(&format!("cannot read slot {slot}"), &e))?
        {
            found.push(slot);
        }
    }
    let slot = match found.as_slice() {
        [one] => *one,
        [] => {
            return Err(Failure::Token(format!(
                "no token matches (tokens present: {})",
                if labels.is_empty() {
                    "none".to_owned()
                } else {
                    labels.join(", ")
                }
            )))
        }
        _ => {
            return Err(Failure::Config(format!(
                "{} tokens match ({}): name one with token= or serial=",
                found.len(),
                labels.join(", ")
            )))
        }
    };
    let info = m
        .get_token_info(slot)
        .map_err(|e| token_failure("cannot read the token information", &e))?;
    let session = m
        .open_rw_session(slot)
        .map_err(|e| token_failure("cannot open a session with the token", &e))?;
    if info.login_required() {
        let pin = pin(uri).map_err(Failure::Config)?;
        if pin.is_none() && !info.protected_authentication_path() {
            return Err(Failure::Config(format!(
                "token {:?} needs its user PIN: add ?pin-source=file:/path/to/pin to the URI",
                info.label().trim_end()
            )));
        }
        match session.login(UserType::User, pin.as_ref()) {
            // Logins belong to the application, not the session: another session did it.
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(Failure::Config(format!(
                    "wrong PIN for token {:?} (not tried again, so that the token does not \
                     lock the PIN)",
                    info.label().trim_end()
                )))
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(Failure::Config(format!(
                    "the user PIN of token {:?} is locked",
                    info.label().trim_end()
                )))
            }
            Err(e) => return Err(token_failure("cannot log in to the token", &e)),
        }
    }
    Ok(session)
}

/// The search template for the URI's key: class, `label` as CKA_LABEL (the URI's `object`, or
/// another label of the same key's rotation), `id` as CKA_ID.
fn template(uri: &Pkcs11Uri, label: Option<&str>, class: ObjectClass) -> Vec<Attribute> {
    let mut t = vec![Attribute::Class(class)];
    if let Some(label) = label {
        t.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        t.push(Attribute::Id(id.clone()));
    }
    t
}

/// A key in a token, with the session that uses it. A session the token lost (closed, logged
/// out, the token removed and back) is opened again once, and the key found again, before a
/// signature fails.
pub struct TokenKey {
    uri: String,
    parsed: Pkcs11Uri,
    label: Option<String>,
    live: Mutex<(Session, ObjectHandle)>,
    kind: KeyKind,
    /// The public key as a certificate's subjectPublicKey holds it, if the token has it (it has
    /// for keys made here): the uncompressed point of an EC key, the DER `RSAPublicKey` of an
    /// RSA key.
    public: Option<Vec<u8>>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("uri", &self.uri)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// Opens the existing private key the URI names (the IDevID key, which may have been
    /// imported: [`KeyOrigin::MayBeImported`]). An error if the token or the key is not there,
    /// or if it is not an EC key (device-attest-01 signs with ECDSA).
    pub fn open(uri: &Pkcs11Uri) -> Result<Self, Error> {
        Self::find_as(uri, uri.object.as_deref(), KeyOrigin::MayBeImported)?
            .ok_or_else(|| {
                Error::Config(format!(
                    "PKCS #11 key {uri}: the token has no private key with these attributes"
                ))
            })?
            .ec_only()
    }

    /// Refuses a key other than EC, where only ECDSA is used (the device client's keys).
    fn ec_only(self) -> Result<Self, Error> {
        match self.kind {
            KeyKind::Ec(_) => Ok(self),
            KeyKind::Rsa(_) => Err(Error::Crypto(format!(
                "PKCS #11 key {}: not an EC key; ECDSA P-256 or P-384 is needed",
                self.uri
            ))),
        }
    }

    /// The key under `label` as CKA_LABEL (the URI's `object`, or the other label of a
    /// certificate key's rotation, [`NEXT_SUFFIX`]) and the URI's `id`, of any [`KeyKind`], or
    /// `None` if the token has none. It must never have left the token
    /// ([`KeyOrigin::Generated`]).
    pub fn find_labelled(uri: &Pkcs11Uri, label: Option<&str>) -> Result<Option<Self>, Error> {
        Self::find_as(uri, label, KeyOrigin::Generated)
    }

    /// The private key under `label` and the URI's `id`, checked for `origin`, with its
    /// public key proven to be its pair by a signature (when the token has the public key).
    fn find_as(
        uri: &Pkcs11Uri,
        label: Option<&str>,
        origin: KeyOrigin,
    ) -> Result<Option<Self>, Error> {
        let config = |e: String| Error::Config(format!("PKCS #11 key {uri}: {e}"));
        check_key_uri(uri).map_err(config)?;
        let session = open_session(uri).map_err(|e| e.into_error(uri))?;
        let keys = session
            .find_objects(&template(uri, label, ObjectClass::PRIVATE_KEY))
            .map_err(|e| token_failure("cannot search the token", &e).into_error(uri))?;
        let key = match keys.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => {
                return Err(config(format!(
                    "{} private keys match: name one with object= and id=",
                    keys.len()
                )))
            }
        };
        let key = Self::from_handle(uri, label, session, key)?;
        key.check(origin).map_err(config)?;
        Ok(Some(key))
    }

    /// Refuses a key that may have left the token (see [`KeyOrigin`]), and proves that the
    /// public key found next to it is its pair: a signature over a random message verifies.
    fn check(&self, origin: KeyOrigin) -> Result<(), String> {
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let attrs = live
            .0
            .get_attributes(
                live.1,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                    AttributeType::AlwaysSensitive,
                ],
            )
            .map_err(|e| format!("cannot read the key's attributes: {e}"))?;
        drop(live);
        // An attribute the token does not report counts as not set.
        let (mut sensitive, mut extractable, mut never_extractable, mut always_sensitive) =
            (false, true, false, false);
        for a in attrs {
            match a {
                Attribute::Sensitive(v) => sensitive = v,
                Attribute::Extractable(v) => extractable = v,
                Attribute::NeverExtractable(v) => never_extractable = v,
                Attribute::AlwaysSensitive(v) => always_sensitive = v,
                _ => {}
            }
        }
        if !sensitive || extractable {
            return Err(format!(
                "the private key is {}: a key the token lets out is not used; generate or \
                 import it with CKA_SENSITIVE true and CKA_EXTRACTABLE false",
                if sensitive {
                    "extractable"
                } else {
                    "not sensitive"
                }
            ));
        }
        match origin {
            KeyOrigin::Generated if !never_extractable || !always_sensitive => {
                return Err(
                    "the certificate key has been outside the token (CKA_NEVER_EXTRACTABLE or \
                     CKA_ALWAYS_SENSITIVE is false: imported or once extractable); delete it \
                     so that the client generates one in the token, or name another object="
                        .into(),
                )
            }
            KeyOrigin::MayBeImported if !never_extractable || !always_sensitive => {
                tracing::warn!(
                    key = %self.uri,
                    "the key was imported into the token or was once extractable \
                     (CKA_ALWAYS_SENSITIVE or CKA_NEVER_EXTRACTABLE is false): a copy of it \
                     may exist outside the token"
                );
            }
            _ => {}
        }
        if let Some(public) = &self.public {
            let challenge: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())
                .map_err(|_| "the system random generator failed".to_owned())?
                .expose();
            let sig = self.sign_der(&challenge).map_err(|e| e.to_string())?;
            ring::signature::UnparsedPublicKey::new(self.kind.verification(), public)
                .verify(&challenge, &sig)
                .map_err(|_| {
                    "the public key found with the private key is not its pair (a test \
                     signature does not verify); the token holds mismatched objects under this \
                     label and id"
                        .to_owned()
                })?;
        }
        Ok(())
    }

    fn from_handle(
        uri: &Pkcs11Uri,
        label: Option<&str>,
        session: Session,
        key: ObjectHandle,
    ) -> Result<Self, Error> {
        let fail = |e: String| Error::Crypto(format!("PKCS #11 key {uri}: {e}"));
        let read = |types: &[AttributeType]| {
            session
                .get_attributes(key, types)
                .map_err(|e| fail(format!("cannot read the key's attributes: {e}")))
        };
        let key_type = read(&[AttributeType::KeyType])?
            .into_iter()
            .find_map(|a| match a {
                Attribute::KeyType(t) => Some(t),
                _ => None,
            });
        let kind = match key_type {
            Some(KeyType::EC) => {
                let curve = read(&[AttributeType::EcParams])?
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::EcParams(p) => Curve::from_params(&p),
                        _ => None,
                    })
                    .ok_or_else(|| fail("an EC key on a curve other than P-256 or P-384".into()))?;
                KeyKind::Ec(curve)
            }
            Some(KeyType::RSA) => {
                let modulus = read(&[AttributeType::Modulus])?
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::Modulus(n) => Some(n),
                        _ => None,
                    })
                    .ok_or_else(|| fail("an RSA key without a readable CKA_MODULUS".into()))?;
                let bits = rsa_bits(&modulus);
                if bits < RSA_MIN_BITS {
                    return Err(fail(format!(
                        "an RSA key of {bits} bits; at least {RSA_MIN_BITS} are needed"
                    )));
                }
                KeyKind::Rsa(bits)
            }
            _ => {
                return Err(fail(
                    "neither an EC nor an RSA key; ECDSA P-256 or P-384, or RSA, is needed".into(),
                ))
            }
        };
        let public = public_key(&session, uri, label, kind)
            .map_err(|e| Error::Config(format!("PKCS #11 key {uri}: {e}")))?;
        Ok(Self {
            uri: uri.to_string(),
            parsed: uri.clone(),
            label: label.map(str::to_owned),
            live: Mutex::new((session, key)),
            kind,
            public,
        })
    }

    /// The certificate key kept for every certificate (`reuse_key`): the one under `label`, or
    /// a new one generated in the token (non-extractable) if there is none. Returns the key
    /// and whether it was generated.
    pub fn open_or_generate(
        uri: &Pkcs11Uri,
        label: Option<&str>,
        curve: Curve,
    ) -> Result<(Self, bool), Error> {
        if let Some(key) = Self::find_labelled(uri, label)? {
            let key = key.ec_only()?;
            if key.public.is_none() {
                return Err(Error::Config(format!(
                    "PKCS #11 key {uri}: the token has the private key but no public key with \
                     the same label and id, so the certificate cannot be checked against it"
                )));
            }
            if key.kind != KeyKind::Ec(curve) {
                tracing::warn!(
                    key = %key.uri,
                    "the token's key is {:?}, not the configured {curve:?}; using it",
                    key.kind
                );
            }
            return Ok((key, false));
        }
        Self::generate(uri, label, curve).map(|k| (k, true))
    }

    /// Generates a new key pair of `kind` in the token under `label` (CKA_LABEL of both
    /// halves; CKA_ID the URI's `id`): CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE and CKA_SIGN
    /// true, CKA_EXTRACTABLE false, so the token never lets the private key out. An EC key on
    /// its curve (`CKM_EC_KEY_PAIR_GEN`), an RSA key of the given size with public exponent
    /// 65537 (`CKM_RSA_PKCS_KEY_PAIR_GEN`).
    pub fn generate(
        uri: &Pkcs11Uri,
        label: Option<&str>,
        kind: impl Into<KeyKind>,
    ) -> Result<Self, Error> {
        let kind = kind.into();
        if label.is_none() && uri.id.is_none() {
            return Err(Error::Config(format!(
                "PKCS #11 key {uri}: name the key to generate with object= (its label)"
            )));
        }
        let (mechanism, kind_attributes) = match kind {
            KeyKind::Ec(curve) => (
                Mechanism::EccKeyPairGen,
                vec![Attribute::EcParams(curve.params().to_vec())],
            ),
            KeyKind::Rsa(bits) if bits < RSA_MIN_BITS => {
                return Err(Error::Config(format!(
                    "PKCS #11 key {uri}: an RSA key of {bits} bits; at least {RSA_MIN_BITS} are \
                     needed"
                )))
            }
            KeyKind::Rsa(bits) => (
                Mechanism::RsaPkcsKeyPairGen,
                vec![
                    Attribute::ModulusBits(u64::from(bits).into()),
                    Attribute::PublicExponent(RSA_EXPONENT.to_vec()),
                ],
            ),
        };
        let session = open_session(uri).map_err(|e| e.into_error(uri))?;
        let fail = |e: CkError| token_failure("cannot generate the key", &e).into_error(uri);
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
        ];
        public.extend(kind_attributes);
        let mut private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
        ];
        // Other tools pair a key's halves by CKA_ID. It goes into the templates: some tokens
        // (tpm2-pkcs11) refuse to change it afterwards. Without the URI's `id`, a random one.
        let id = match &uri.id {
            Some(id) => id.clone(),
            None => ring::rand::generate::<[u8; 20]>(&ring::rand::SystemRandom::new())
                .map_err(|_| Error::Crypto("the system random generator failed".into()))?
                .expose()
                .to_vec(),
        };
        for t in [&mut public, &mut private] {
            if let Some(label) = label {
                t.push(Attribute::Label(label.as_bytes().to_vec()));
            }
            t.push(Attribute::Id(id.clone()));
        }
        let (_, key) = session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(&fail)?;
        let key = Self::from_handle(uri, label, session, key)?;
        if key.public.is_none() {
            return Err(Error::Crypto(format!(
                "PKCS #11 key {uri}: the generated public key is not readable (CKA_EC_POINT, or \
                 CKA_MODULUS and CKA_PUBLIC_EXPONENT)"
            )));
        }
        if key.kind != kind {
            return Err(Error::Crypto(format!(
                "PKCS #11 key {uri}: the token generated a {:?} key, not {kind:?}",
                key.kind
            )));
        }
        key.check(KeyOrigin::Generated)
            .map_err(|e| Error::Crypto(format!("PKCS #11 key {uri}: the generated key: {e}")))?;
        Ok(key)
    }

    /// The key's type.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The curve of an EC key; `None` for an RSA key.
    pub fn curve(&self) -> Option<Curve> {
        match self.kind {
            KeyKind::Ec(curve) => Some(curve),
            KeyKind::Rsa(_) => None,
        }
    }

    /// The public key of an EC key as an uncompressed SEC1 point (`04 ‖ x ‖ y`), if the token
    /// has it; `None` for an RSA key.
    pub fn public_key_sec1(&self) -> Option<&[u8]> {
        match self.kind {
            KeyKind::Ec(_) => self.public.as_deref(),
            KeyKind::Rsa(_) => None,
        }
    }

    /// The public key as a certificate's subjectPublicKey holds it (what
    /// [`rcgen::PublicKeyData::der_bytes`] gives), if the token has it: the uncompressed point
    /// of an EC key, the DER `RSAPublicKey` (modulus and exponent) of an RSA key.
    pub fn public_key_der(&self) -> Option<&[u8]> {
        self.public.as_deref()
    }

    /// The algorithm of the key's signatures ([`Self::sign_der`]) as rcgen names it.
    pub fn signature_algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.kind.rcgen()
    }

    /// The DER SubjectPublicKeyInfo of the public key, if the token has it: id-ecPublicKey
    /// with the curve, or rsaEncryption.
    pub fn subject_public_key_info(&self) -> Option<Vec<u8>> {
        use rcgen::PublicKeyData as _;
        self.csr_signer().ok().map(|s| s.subject_public_key_info())
    }

    /// The URI, `pin-value` redacted.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Signs `msg` in the token. An EC key: ECDSA over its SHA-256 (P-256) or SHA-384 (P-384)
    /// digest, returned as the DER `Ecdsa-Sig-Value` (RFC 3279 §2.2.3), as X.509 and
    /// device-attest-01 use. An RSA key: PKCS #1 v1.5 over SHA-256 (`CKM_SHA256_RSA_PKCS`, the
    /// token hashes), returned as the signature's octets, as long as the modulus (RFC 8017
    /// §8.2.1), which X.509 carries as they are.
    pub fn sign_der(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        let digest;
        let (mechanism, data) = match self.kind {
            KeyKind::Ec(curve) => {
                digest = curve.digest(msg);
                (Mechanism::Ecdsa, digest.as_ref())
            }
            KeyKind::Rsa(_) => (Mechanism::Sha256RsaPkcs, msg),
        };
        let uri = &self.parsed;
        let failed = |e: &CkError| token_failure("signing failed", e).into_error(uri);
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let raw = match live.0.sign(&mechanism, live.1, data) {
            Ok(raw) => raw,
            Err(e) if session_lost(&e) => {
                tracing::warn!(key = %self.uri, "the token session is gone ({e}); opening a new one");
                let session = open_session(uri).map_err(|f| f.into_error(uri))?;
                let keys = session
                    .find_objects(&template(
                        uri,
                        self.label.as_deref(),
                        ObjectClass::PRIVATE_KEY,
                    ))
                    .map_err(|e| token_failure("cannot search the token", &e).into_error(uri))?;
                let [key] = keys.as_slice() else {
                    return Err(Error::Token(format!(
                        "PKCS #11 key {uri}: after a new session the token has {} such private \
                         keys, not one",
                        keys.len()
                    )));
                };
                *live = (session, *key);
                live.0
                    .sign(&mechanism, live.1, data)
                    .map_err(|e| failed(&e))?
            }
            Err(e) => return Err(failed(&e)),
        };
        drop(live);
        match self.kind {
            KeyKind::Ec(curve) => ecdsa_der(&raw, curve.len()).ok_or_else(|| {
                Error::Crypto(format!(
                    "PKCS #11 key {}: the token's signature has {} octets, not r ‖ s of {} each",
                    self.uri,
                    raw.len(),
                    curve.len()
                ))
            }),
            KeyKind::Rsa(bits) if raw.len() != bits.div_ceil(8) as usize => {
                Err(Error::Crypto(format!(
                    "PKCS #11 key {}: the token's signature has {} octets, not the {} of a \
                     {bits}-bit modulus",
                    self.uri,
                    raw.len(),
                    bits.div_ceil(8)
                )))
            }
            KeyKind::Rsa(_) => Ok(raw),
        }
    }

    /// The key as an [`rcgen::SigningKey`], for signing a CSR (or a certificate, a CRL) in the
    /// token.
    pub fn csr_signer(&self) -> Result<CsrSigner<'_>, Error> {
        let public = self
            .public
            .as_deref()
            .ok_or_else(|| Error::Crypto(format!("PKCS #11 key {}: no public key", self.uri)))?;
        Ok(CsrSigner {
            key: self,
            public,
            error: Mutex::new(None),
        })
    }
}

/// A [`TokenKey`] as rcgen wants a CSR's key. rcgen's error for a failed remote signature
/// carries no text, so the cause is kept here for [`CsrSigner::take_error`].
pub struct CsrSigner<'a> {
    key: &'a TokenKey,
    public: &'a [u8],
    error: Mutex<Option<Error>>,
}

impl CsrSigner<'_> {
    /// Why the last signature failed, if it did.
    pub fn take_error(&self) -> Option<Error> {
        self.error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl rcgen::PublicKeyData for CsrSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.key.kind.rcgen()
    }
}

impl rcgen::SigningKey for CsrSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key.sign_der(msg).map_err(|e| {
            *self
                .error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
            rcgen::Error::RemoteKeyError
        })
    }
}

/// The suffix of the label a new certificate key is generated under, in the same token with
/// the same `id`, until its certificate is installed; then the old key is destroyed and the new
/// one takes the configured label ([`destroy`], [`relabel`]).
pub const NEXT_SUFFIX: &str = ".next";

/// Destroys the private and public key objects under `label` (and the URI's `id`). Returns
/// how many there were.
pub fn destroy(uri: &Pkcs11Uri, label: &str) -> Result<usize, Error> {
    let session = open_session(uri).map_err(|e| e.into_error(uri))?;
    let fail = |e: CkError| token_failure(&format!("cannot destroy {label}"), &e).into_error(uri);
    let mut n = 0;
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        for h in session
            .find_objects(&template(uri, Some(label), class))
            .map_err(fail)?
        {
            session.destroy_object(h).map_err(fail)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The public key (uncompressed point) stored under `label` and the URI's `id`, without
/// opening or checking the private key: to compare a new key of a rotation with the installed
/// certificate. `None` if the token has none.
pub fn public_key_labelled(uri: &Pkcs11Uri, label: &str) -> Result<Option<Vec<u8>>, Error> {
    let config = |e: String| Error::Config(format!("PKCS #11 key {uri}: {e}"));
    let session = open_session(uri).map_err(|e| e.into_error(uri))?;
    let mut found = None;
    for curve in [Curve::P256, Curve::P384] {
        if let Some(point) =
            public_key(&session, uri, Some(label), KeyKind::Ec(curve)).map_err(config)?
        {
            found = Some(point);
        }
    }
    Ok(found)
}

/// Gives the key objects under `from` (and the URI's `id`) the CKA_LABEL `to`. `Ok(false)` if
/// the token does not let labels change (CKA_LABEL read-only, as on some tokens).
pub fn relabel(uri: &Pkcs11Uri, from: &str, to: &str) -> Result<bool, Error> {
    let session = open_session(uri).map_err(|e| e.into_error(uri))?;
    let fail = |e: CkError| token_failure(&format!("cannot relabel {from}"), &e).into_error(uri);
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        for h in session
            .find_objects(&template(uri, Some(from), class))
            .map_err(fail)?
        {
            match session.update_attributes(h, &[Attribute::Label(to.as_bytes().to_vec())]) {
                Ok(()) => {}
                Err(CkError::Pkcs11(RvError::AttributeReadOnly | RvError::ActionProhibited, _)) => {
                    return Ok(false)
                }
                Err(e) => return Err(fail(e)),
            }
        }
    }
    Ok(true)
}

/// The URI must name a private key: no other `type`, and at least a label or an id.
fn check_key_uri(uri: &Pkcs11Uri) -> Result<(), String> {
    if uri
        .object_type
        .is_some_and(|t| t != uri::ObjectType::Private)
    {
        return Err("the URI names an object of another type than private".into());
    }
    if uri.object.is_none() && uri.id.is_none() {
        return Err("name the key with object= (its label) or id=".into());
    }
    Ok(())
}

/// Whether `text`, a key as configured, carries a PIN: a `pin-value` attribute, in any case.
pub fn holds_pin_value(text: &str) -> bool {
    text.to_ascii_lowercase().contains("pin-value")
}

/// A configured key (`what`: "key", "IDevID key"): `Some` URI for a `pkcs11:` URI
/// ([`parse_key_uri`]), `None` for a file. Text that is not a `pkcs11:` URI but holds a
/// `pin-value` (a misspelt scheme) is refused without being quoted, so that the PIN does not
/// end up in a message about a file that does not exist.
pub fn key_location(path: &Path, what: &str) -> Result<Option<Pkcs11Uri>, Error> {
    let text = path.to_string_lossy();
    if Pkcs11Uri::is_uri(&text) {
        return parse_key_uri(&text, what).map(Some);
    }
    if holds_pin_value(&text) {
        return Err(Error::Config(format!(
            "{what}: holds a pin-value but does not start with pkcs11: (not shown, since it \
             holds a PIN)"
        )));
    }
    Ok(None)
}

/// Parses the configured URI of a key (`what`: "key", "IDevID key"), as a configuration
/// error, and warns once about query attributes it ignores.
pub fn parse_key_uri(text: &str, what: &str) -> Result<Pkcs11Uri, Error> {
    // Not the text itself in the message: it may hold a pin-value.
    let uri = Pkcs11Uri::parse(text).map_err(|e| Error::Config(format!("{what} URI: {e}")))?;
    for name in &uri.ignored {
        tracing::warn!("{what} {uri}: ignoring the unknown query attribute {name}");
    }
    Ok(uri)
}

/// The public key of a key of `kind` ([`TokenKey::public_key_der`]), read from the one public
/// key object with the same label and id, else from the private key itself (some tokens keep
/// it there); an error if several public keys match.
fn public_key(
    session: &Session,
    uri: &Pkcs11Uri,
    label: Option<&str>,
    kind: KeyKind,
) -> Result<Option<Vec<u8>>, String> {
    let mut candidates = session
        .find_objects(&template(uri, label, ObjectClass::PUBLIC_KEY))
        .map_err(|e| format!("cannot search the token: {e}"))?;
    if candidates.len() > 1 {
        return Err(format!(
            "{} public keys match: name one with object= and id=",
            candidates.len()
        ));
    }
    candidates.extend(
        session
            .find_objects(&template(uri, label, ObjectClass::PRIVATE_KEY))
            .unwrap_or_default(),
    );
    let found = match kind {
        KeyKind::Ec(curve) => candidates
            .into_iter()
            .find_map(|h| ec_point(session, h, curve)),
        KeyKind::Rsa(bits) => candidates
            .into_iter()
            .find_map(|h| rsa_public_key(session, h, bits)),
    };
    Ok(found)
}

/// The object's CKA_EC_POINT, if it is a point of `curve`. PKCS #11 says it is a DER OCTET
/// STRING around the point; a few tokens return the bare point, which is accepted too.
fn ec_point(session: &Session, h: ObjectHandle, curve: Curve) -> Option<Vec<u8>> {
    let point_len = 1 + 2 * curve.len();
    let attrs = session.get_attributes(h, &[AttributeType::EcPoint]).ok()?;
    attrs.into_iter().find_map(|a| {
        let Attribute::EcPoint(v) = a else {
            return None;
        };
        // OCTET STRING, short-form length: a point of P-384 has 97 octets.
        let point = match v.as_slice() {
            [0x04, len, inner @ ..]
                if usize::from(*len) == point_len && inner.len() == point_len =>
            {
                inner.to_vec()
            }
            _ if v.len() == point_len => v,
            _ => return None,
        };
        (point.first() == Some(&0x04)).then_some(point)
    })
}

/// The public exponent of the RSA keys generated here: 65537.
const RSA_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];

/// The object's CKA_MODULUS and CKA_PUBLIC_EXPONENT as a DER `RSAPublicKey` (RFC 8017
/// §A.1.1), if its modulus has `bits` bits.
fn rsa_public_key(session: &Session, h: ObjectHandle, bits: u32) -> Option<Vec<u8>> {
    let attrs = session
        .get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent])
        .ok()?;
    let (mut n, mut e) = (None, None);
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            _ => {}
        }
    }
    let (n, e) = (n?, e?);
    if rsa_bits(&n) != bits || e.iter().all(|&b| b == 0) {
        return None;
    }
    let mut body = der_integer(&n);
    body.extend(der_integer(&e));
    Some(tlv(0x30, body))
}

/// The size in bits of an unsigned big-endian integer (an RSA modulus).
fn rsa_bits(n: &[u8]) -> u32 {
    let Some(start) = n.iter().position(|&b| b != 0) else {
        return 0;
    };
    let bytes = u32::try_from(n.len() - start).unwrap_or(u32::MAX);
    bytes.saturating_mul(8) - n[start].leading_zeros()
}

/// DER `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` from the fixed-width `r ‖ s`
/// that CKM_ECDSA returns (PKCS #11 §2.3.1). `None` if the length is not twice `n`.
fn ecdsa_der(raw: &[u8], n: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * n {
        return None;
    }
    let (r, s) = raw.split_at(n);
    let mut body = der_integer(r);
    body.extend(der_integer(s));
    Some(tlv(0x30, body))
}

/// A DER INTEGER of the unsigned big-endian `v`: no leading zero octets, then one 0x00 if the
/// top bit is set (zero is one 0x00).
fn der_integer(v: &[u8]) -> Vec<u8> {
    let v = match v.iter().position(|&b| b != 0) {
        Some(start) => &v[start..],
        None => &[0],
    };
    let mut content = Vec::with_capacity(v.len() + 1);
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(v);
    tlv(0x02, content)
}

/// One DER TLV: short-form length below 128 octets of content, long form above.
fn tlv(tag: u8, content: Vec<u8>) -> Vec<u8> {
    let len = content.len().to_be_bytes();
    let len = &len[len.iter().position(|&b| b != 0).unwrap_or(len.len() - 1)..];
    let mut out = Vec::with_capacity(content.len() + 2 + len.len());
    out.push(tag);
    match len {
        [short] if *short < 0x80 => out.push(*short),
        // At most 8 octets of length: the cast cannot truncate.
        _ => {
            out.push(0x80 | len.len() as u8);
            out.extend_from_slice(len);
        }
    }
    out.extend(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_signatures_become_minimal_der_that_ring_verifies() {
        use ring::signature::{
            EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
            ECDSA_P256_SHA256_FIXED_SIGNING,
        };
        let rng = ring::rand::SystemRandom::new();
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
            .expect("key");
        for _ in 0..32 {
            let raw = key.sign(&rng, b"msg").expect("sign");
            let der = ecdsa_der(raw.as_ref(), 32).expect("length");
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref())
                .verify(b"msg", &der)
                .expect("verifies");
        }
        // Leading zeros go, a set top bit gets a zero octet.
        let mut raw = vec![0u8; 64];
        raw[31] = 1;
        raw[32] = 0x80;
        let der = ecdsa_der(&raw, 32).expect("length");
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 0x21, 0x00]);
        assert_eq!(der.len(), 2 + 3 + 35);
        assert!(ecdsa_der(&raw[..63], 32).is_none());
    }

    #[test]
    fn configuration_errors_never_quote_a_pin_value() {
        let e = parse_key_uri("pkcs11:token=a;token=b?pin-value=s3cret", "key").expect_err("dup");
        assert!(matches!(e, Error::Config(_)), "{e}");
        assert!(e.to_string().contains("token appears twice"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let uri = parse_key_uri("pkcs11:object=k?pin-value=s3cret&x-y=1", "key").expect("ok");
        assert!(!uri.to_string().contains("s3cret"));
        let e = key_location(Path::new("pkcs:object=k?pin-value=s3cret"), "key").expect_err("typo");
        assert!(e.to_string().contains("does not start with pkcs11:"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(key_location(Path::new("/etc/iiot/key.pem"), "key")
            .expect("a file")
            .is_none());
        assert_eq!(uri.ignored, ["x-y"]);
        let e =
            check_key_uri(&Pkcs11Uri::parse("pkcs11:token=a").expect("uri")).expect_err("no key");
        assert!(e.contains("object="), "{e}");
    }

    #[test]
    fn rsa_public_keys_are_der_with_long_lengths_and_their_size_is_counted_in_bits() {
        // A 2048-bit modulus (top bit set): INTEGER with a 0x00 prefix, long-form lengths.
        let mut n = vec![0xc5; 256];
        n[255] = 0x01;
        let int = der_integer(&n);
        assert_eq!(&int[..5], &[0x02, 0x82, 0x01, 0x01, 0x00]);
        assert_eq!(int.len(), 4 + 257);
        assert_eq!(der_integer(&RSA_EXPONENT), [0x02, 0x03, 0x01, 0x00, 0x01]);
        assert_eq!(der_integer(&[0, 0]), [0x02, 0x01, 0x00]);
        assert_eq!(tlv(0x30, vec![0; 127])[..2], [0x30, 0x7f]);
        assert_eq!(tlv(0x30, vec![0; 128])[..3], [0x30, 0x81, 0x80]);
        assert_eq!(rsa_bits(&n), 2048);
        // Leading zero octets do not count; a modulus one bit short is 2047 bits.
        let mut short = vec![0u8];
        short.extend([0x7f; 256]);
        assert_eq!(rsa_bits(&short), 2047);
        assert_eq!(rsa_bits(&[0, 0]), 0);
    }

    #[test]
    fn curves_by_their_parameters() {
        assert_eq!(Curve::from_params(P256_PARAMS), Some(Curve::P256));
        assert_eq!(Curve::from_params(P384_PARAMS), Some(Curve::P384));
        assert_eq!(Curve::from_params(&[0x06, 0x03, 0x2b, 0x65, 0x70]), None);
    }
}
