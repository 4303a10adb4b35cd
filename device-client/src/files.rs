//! Atomic file writes, and the client's small state file.
//!
//! A device can lose power at any moment, and a service reading its key or certificate must
//! never see half a file. Every write goes to a temporary file in the same directory (created
//! with its final mode, so a private key is never readable by others, even for a moment),
//! is fsynced, renamed over the target, and the directory is fsynced so the rename survives.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Mode of private keys.
pub const PRIVATE_MODE: u32 = 0o600;
/// Mode of certificates and state.
pub const PUBLIC_MODE: u32 = 0o644;

/// Writes `data` to `path` atomically: a temporary file created with `mode`, fsync, rename,
/// fsync of the directory. Creates missing parent directories: mode 0700 for a private file,
/// 0755 for a public one (a service running as another user must be able to reach its
/// certificate). Existing directories are left as they are.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    write_atomic_via(path, data, mode, None)
}

/// [`write_atomic`] with the temporary file in `tmp_dir` instead of next to `path`: for
/// folders whose readers take every file they find (an OPC UA stack's trust list), which must
/// never see a half-written or left-over temporary. `tmp_dir` must be on the same filesystem
/// (a rename cannot cross filesystems) and should be private (0700).
pub fn write_atomic_via(
    path: &Path,
    data: &[u8],
    mode: u32,
    tmp_dir: Option<&Path>,
) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir_mode = if mode & 0o044 == 0 { 0o700 } else { 0o755 };
    create_dir(&dir, dir_mode)?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::Config(format!("{} is not a file path", path.display())))?;
    let mut nonce = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| Error::Crypto("the system random generator failed".into()))?;
    let tmp = tmp_dir.unwrap_or(&dir).join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        crate::b64::encode(&nonce)
    ));
    let result = (|| {
        // create_new: never follow or reuse a file someone planted at the temporary name.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(data).map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // The rename is only durable once the directory entry is.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", &dir, e))
}

/// Creates `dir` and its missing parents with mode 0700. An existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    create_dir(dir, 0o700)
}

/// Creates `dir` and its missing parents with mode 0755, for certificates a service running as
/// another user reads. An existing directory is left as it is.
pub fn create_public_dir(dir: &Path) -> Result<(), Error> {
    create_dir(dir, 0o755)
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))
}

/// Reads a file, `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// What the client remembers between runs, in `<state_dir>/state.json`. The account key sits
/// next to it in `account.key.pem`. The certificate itself is not copied here: the installed
/// files are the truth, and are re-read at every start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Directory URL the account belongs to. An account is only reused with the same CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_url: Option<String>,
    /// The account URL (the JWS `kid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_url: Option<String>,
    /// Serial (hex) of the last certificate this client installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_serial: Option<String>,
    /// When it was installed, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<String>,
    /// The CKA_LABEL of the certificate key in a PKCS #11 token when it is not the configured
    /// `object`: a token that refuses to relabel keys keeps the new key under the label it was
    /// generated with (`object` + `.next`), and the next one is generated under `object`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_key_label: Option<String>,
}

impl State {
    /// The state file in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state.json")
    }

    /// The account key file in `state_dir`.
    pub fn account_key_path(state_dir: &Path) -> PathBuf {
        state_dir.join("account.key.pem")
    }

    /// Reads the state, or the empty state if there is none yet.
    pub fn load(state_dir: &Path) -> Result<Self, Error> {
        let path = Self::path(state_dir);
        match read_optional(&path)? {
            None => Ok(Self::default()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::bad_file(&path, format!("not a state file: {e}"))),
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, state_dir: &Path) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Crypto(format!("cannot serialize state: {e}")))?;
        write_atomic(&Self::path(state_dir), &json, PRIVATE_MODE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a").join("b").join("key.pem");
        write_atomic(&path, b"one", PUBLIC_MODE).expect("first");
        let public_dir = fs::metadata(path.parent().expect("parent"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(public_dir & 0o777, 0o755 & !umask());
        // Replacing a public file with a private one gives the new file the private mode.
        write_atomic(&path, b"private", PRIVATE_MODE).expect("replace");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let path = dir.path().join("c").join("key.pem");
        write_atomic(&path, b"one", PRIVATE_MODE).expect("first");
        write_atomic(&path, b"two", PRIVATE_MODE).expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(path.parent().expect("parent"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key.pem")]);
    }

    /// The process umask (which narrows the modes of new directories).
    fn umask() -> u32 {
        let probe = tempfile::tempdir().expect("tempdir");
        let p = probe.path().join("d");
        fs::DirBuilder::new().create(&p).expect("mkdir");
        0o777 & !fs::metadata(&p).expect("meta").permissions().mode()
    }

    #[test]
    fn failed_write_leaves_target_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("sub");
        fs::create_dir(&target).expect("mkdir");
        // Renaming a file over a directory fails; the directory stays, no temp file remains.
        assert!(write_atomic(&target, b"x", PUBLIC_MODE).is_err());
        assert!(target.is_dir());
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    #[test]
    fn state_round_trip_and_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(State::load(dir.path()).expect("empty"), State::default());
        let s = State {
            directory_url: Some("https://ca/directory".into()),
            account_url: Some("https://ca/acme/acct/1".into()),
            ..State::default()
        };
        s.save(dir.path()).expect("save");
        assert_eq!(State::load(dir.path()).expect("load"), s);
        fs::write(State::path(dir.path()), br#"{"bogus":1}"#).expect("write");
        assert!(State::load(dir.path()).is_err());
    }
}
