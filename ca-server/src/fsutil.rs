//! Files the CA writes next to its store: keys, certificates, enrollment credentials.
//!
//! Everything is written atomically (temporary file, fsync, rename, directory fsync) and
//! created with its final mode, so a crash never leaves a half-written key and a private key
//! is never readable by others, not even for an instant.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

use crate::{Error, Result};

fn file_error(path: &Path, what: impl fmt::Display) -> Error {
    Error::Internal(format!("{}: {what}", path.display()))
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist. An existing `dir`
/// that group or others may access is restricted to 0700 with a logged warning, or refused
/// when that fails: everything the CA keeps in its directories (keys, the store, enrollment
/// credentials, the admin socket) is for its own user only.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => restrict(dir, &meta),
        Ok(_) => Err(file_error(dir, "exists but is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(dir)
                .map_err(|e| file_error(dir, format!("cannot be created: {e}")))
        }
        Err(e) => Err(file_error(dir, format!("cannot be checked: {e}"))),
    }
}

/// Restricts an existing directory to 0700 if group or others have any permission on it.
#[cfg(unix)]
fn restrict(dir: &Path, meta: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
        file_error(
            dir,
            format!(
                "is open to group or others (mode {mode:04o}) and cannot be restricted to 0700: \
                 {e}; run `chmod 700` on it, or run the CA as the directory's owner"
            ),
        )
    })?;
    tracing::warn!(
        dir = %dir.display(),
        was = %format!("{mode:04o}"),
        "directory was open to group or others: restricted to 0700"
    );
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_dir: &Path, _meta: &fs::Metadata) -> Result<()> {
    Ok(())
}

/// Replaces `path` with `contents` atomically; the file is created with `mode` from the start.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(file_error(path, "is not a file path"));
    };
    // A bare file name (`--out ec.pem`) has an empty parent, which cannot be opened to fsync.
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut tag = [0u8; 8];
    SystemRandom::new()
        .fill(&mut tag)
        .map_err(|_| Error::Internal("the system random number generator failed".to_owned()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(tag)
    ));
    let write = || -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is only durable once the directory entry is on disk.
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        // Best effort: after a failed rename the temporary file would otherwise linger.
        let _ = fs::remove_file(&tmp);
        file_error(path, format!("cannot be written: {e}"))
    })
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("meta").permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_directory_is_created_0700_and_an_open_one_is_restricted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let new = tmp.path().join("a").join("b");
        ensure_private_dir(&new).expect("create");
        assert_eq!(mode(&new), 0o700);
        for open in [0o755, 0o750, 0o707, 0o2770] {
            let dir = tmp.path().join(format!("open{open:o}"));
            fs::create_dir(&dir).expect("mkdir");
            fs::set_permissions(&dir, fs::Permissions::from_mode(open)).expect("chmod");
            ensure_private_dir(&dir).expect("restricted");
            assert_eq!(mode(&dir), 0o700, "{open:o}");
        }
        // Already private: left as it is, owner bits included.
        let dir = tmp.path().join("private");
        fs::create_dir(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).expect("chmod");
        ensure_private_dir(&dir).expect("private");
        assert_eq!(mode(&dir), 0o500);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    }

    /// procfs refuses every chmod of a process directory, even root's: the error names the
    /// directory, its mode and what to do.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_directory_that_cannot_be_restricted_is_refused() {
        let err = ensure_private_dir(Path::new("/proc/self"))
            .expect_err("procfs directories cannot be chmodded")
            .to_string();
        assert!(
            err.contains("/proc/self: is open to group or others (mode 0555)")
                && err.contains("chmod 700"),
            "{err}"
        );
    }
}
/// Reads a JSON record (`what` names it in errors); `None` if the file does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| file_error(path, format_args!("corrupt {what}: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_error(path, format_args!("cannot read: {e}"))),
    }
}

/// The names, without `.json`, of the `*.json` files in `dir`; none if `dir` does not exist.
pub fn json_file_stems(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_error(dir, format_args!("cannot list: {e}"))),
    };
    Ok(entries
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            file.strip_suffix(".json").map(str::to_owned)
        })
        .collect())
}
