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

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
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

/// Replaces `path` with `contents` atomically; the file is created with `mode` from the start.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(file_error(path, "is not a file path"));
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
