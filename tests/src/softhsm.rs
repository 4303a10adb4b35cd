//! SoftHSM2 as a device's PKCS #11 token (Debian `softhsm2`, `scripts/install-test-deps.sh`):
//! a token directory of the test's own, tokens initialised with `softhsm2-util`, keys imported
//! from PKCS #8 files, and the public point of a key read back through the module.
//!
//! SoftHSM reads its configuration file from `SOFTHSM2_CONF` only, and reads its token list
//! once per process when it is initialised; [`SoftHsm::use_in_this_process`] points this
//! process and its children (the device-client runs) at the test's directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context as _, Result};
use tempfile::TempDir;

use crate::temp_dir;

/// The module Debian's package installs.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of every token made here.
pub const USER_PIN: &str = "1234";
const SO_PIN: &str = "5678";

/// A SoftHSM token directory with its configuration file and a PIN file.
pub struct SoftHsm {
    dir: TempDir,
    conf: PathBuf,
    pin_file: PathBuf,
}

impl SoftHsm {
    /// A new token directory with one initialised token per label.
    pub fn new(tokens: &[&str]) -> Result<Self> {
        ensure!(
            Path::new(MODULE).exists(),
            "{MODULE} is missing: the PKCS #11 tests need SoftHSM2 (run \
             scripts/install-test-deps.sh)"
        );
        let dir = temp_dir("iiot-softhsm-")?;
        let tokens_dir = dir.path().join("tokens");
        fs::create_dir(&tokens_dir).context("token directory")?;
        let conf = dir.path().join("softhsm2.conf");
        fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens_dir.display()
            ),
        )
        .context("softhsm2.conf")?;
        let pin_file = dir.path().join("user.pin");
        fs::write(&pin_file, format!("{USER_PIN}\n")).context("PIN file")?;
        // As an operator should keep it: the client warns about a PIN file others can read.
        fs::set_permissions(
            &pin_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .context("PIN file mode")?;
        let hsm = Self {
            dir,
            conf,
            pin_file,
        };
        for label in tokens {
            hsm.util(&[
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                SO_PIN,
                "--pin",
                USER_PIN,
            ])?;
        }
        Ok(hsm)
    }

    /// Sets `SOFTHSM2_CONF` for this process and the children it starts afterwards. Call it
    /// once, before anything in the process loads the module.
    pub fn use_in_this_process(&self) {
        std::env::set_var("SOFTHSM2_CONF", &self.conf);
    }

    /// The directory (configuration, tokens, PIN file).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The file holding the user PIN.
    pub fn pin_file(&self) -> &Path {
        &self.pin_file
    }

    /// Runs `softhsm2-util` on this directory.
    pub fn util(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("softhsm2-util")
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .context(
                "softhsm2-util cannot run: the PKCS #11 tests need SoftHSM2 (run \
                 scripts/install-test-deps.sh)",
            )?;
        if !out.status.success() {
            bail!(
                "softhsm2-util {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Imports a PKCS #8 PEM private key (and its public key) into `token` as `label`, then
    /// removes the file it went through.
    pub fn import_pkcs8(&self, token: &str, label: &str, id_hex: &str, pem: &str) -> Result<()> {
        let file = self.dir.path().join(format!("{label}.import.pem"));
        fs::write(&file, pem).context("key file to import")?;
        let path = file.to_str().context("UTF-8 path")?.to_owned();
        let args = [
            "--import", &path, "--token", token, "--label", label, "--id", id_hex, "--pin",
            USER_PIN,
        ];
        // Up to three tries: softhsm2-util reads every token of the directory, and fails when
        // a device-client of another test writes one at that moment. An import that failed
        // added nothing.
        let mut result = self.util(&args);
        for _ in 0..2 {
            if result.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            result = self.util(&args);
        }
        fs::remove_file(&file).context("remove the imported key file")?;
        result
    }

    /// The RFC 7512 URI of `object` in `token`, with the module and the PIN file.
    pub fn uri(&self, token: &str, object: &str) -> String {
        self.uri_with_pin_file(token, object, &self.pin_file)
    }

    /// [`SoftHsm::uri`] with another PIN file.
    pub fn uri_with_pin_file(&self, token: &str, object: &str, pin_file: &Path) -> String {
        format!(
            "pkcs11:token={token};object={object}?module-path={MODULE}&pin-source=file:{}",
            pin_file.display()
        )
    }
}

/// A logged-in session on `token`, through the module of this process (after
/// [`SoftHsm::use_in_this_process`]).
fn session(token: &str) -> Result<cryptoki::session::Session> {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::error::{Error as CkError, RvError};
    let m = Pkcs11::new(MODULE).context("load SoftHSM")?;
    match m.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => bail!("C_Initialize: {e}"),
    }
    let mut found = None;
    for slot in m.get_slots_with_token()? {
        if m.get_token_info(slot)?.label().trim_end() == token {
            found = Some(slot);
        }
    }
    let slot = found.with_context(|| format!("no token {token}"))?;
    let session = m.open_rw_session(slot)?;
    let pin = cryptoki::types::AuthPin::from(USER_PIN.to_owned());
    match session.login(cryptoki::session::UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => bail!("C_Login: {e}"),
    }
    Ok(session)
}

/// The uncompressed EC point of the one public key labelled `label` in `token`.
pub fn public_point(token: &str, label: &str) -> Result<Vec<u8>> {
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    let session = session(token)?;
    let keys = session.find_objects(&[
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    ensure!(
        keys.len() == 1,
        "{} public keys labelled {label}",
        keys.len()
    );
    for a in session.get_attributes(keys[0], &[AttributeType::EcPoint])? {
        if let Attribute::EcPoint(der) = a {
            // A DER OCTET STRING around the point (short form length for P-256 and P-384).
            ensure!(
                der.len() > 2 && der[0] == 0x04,
                "CKA_EC_POINT is not an OCTET STRING"
            );
            return Ok(der[2..].to_vec());
        }
    }
    bail!("the public key has no CKA_EC_POINT")
}

/// Destroys every object (private and public key) `token` holds under `label`, as another
/// application of the token would; returns how many there were.
pub fn destroy_objects(token: &str, label: &str) -> Result<usize> {
    let session = session(token)?;
    let found = session.find_objects(&[cryptoki::object::Attribute::Label(
        label.as_bytes().to_vec(),
    )])?;
    for h in &found {
        session.destroy_object(*h)?;
    }
    Ok(found.len())
}

/// How many objects of any class (private ones included) `token` holds under `label`.
pub fn object_count(token: &str, label: &str) -> Result<usize> {
    let session = session(token)?;
    Ok(session
        .find_objects(&[cryptoki::object::Attribute::Label(
            label.as_bytes().to_vec(),
        )])?
        .len())
}
