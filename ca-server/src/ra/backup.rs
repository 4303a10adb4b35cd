//! Backups of a CA (`ca-server backup` and `ca-server restore`): one passphrase-encrypted file
//! from which a new data directory carries on as the CA that made it, with the records in a new
//! embedded store there or in an empty PostgreSQL database ([`Destination`]), whichever store
//! the backup was taken from.
//!
//! The file is an [age](https://age-encryption.org/v1) file encrypted to a passphrase (scrypt),
//! so `age -d` or `rage -d` also decrypt it. Its plaintext is a stream of frames after
//! [`MAGIC`]:
//!
//! | tag | frame                                                                   |
//! |-----|-------------------------------------------------------------------------|
//! | `M` | the manifest, JSON ([`Manifest`]): always first                         |
//! | `C` | the configuration file the server was started with, if it lies outside the data directory |
//! | `F` | a file of the data directory: relative path, mode, contents             |
//! | `T` | the store table the following records belong to, by name                |
//! | `R` | one store record: key, value                                            |
//! | `E` | the counts, JSON ([`Counts`]): always last                              |
//!
//! Each length is a big-endian `u32` (a file's contents: `u64`). The files are every regular
//! file under the data directory except the store's directory `db/` (its records come from a
//! consistent [`Db::snapshot`] instead), the admin socket and half-written temporary files, so
//! what later features keep there is included without changes here. The counts come last
//! because the snapshot streams into the file; restore checks them against what it read.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use age::secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::fsutil::{ensure_private_dir, write_atomic};
use crate::storage::{Db, PgLoad, PgStore, SledStore, Store, Table};
use crate::types::{now, rfc3339};

/// The format this version writes, and the newest it reads.
pub const FORMAT: u32 = 1;

/// The first bytes of the plaintext.
pub const MAGIC: &[u8] = b"iiot-acme backup\n";

/// How far [`restore`] moves the CRL number past the one in the backup. The CA that made the
/// backup may have gone on publishing CRLs (one an hour, one per revocation) before it was
/// lost; a restored CA must not publish a CRL under a number it already used for other
/// contents (RFC 5280 §5.2.3), and relying parties refuse a CRL whose number went down.
pub const CRL_NUMBER_GAP: u64 = 1 << 20;

/// The store key of the CRL counter (see `ra::crl`).
const CRL_NUMBER_KEY: &str = "crl_number";

/// Where restore puts the configuration file the backup carries separately.
pub const RESTORED_CONFIG: &str = "restored-config.toml";

/// The scrypt work factor (log2 N) a backup's passphrase is stretched with: fixed, as the
/// `age` tool does, rather than measured on the machine at hand, so a busy CA host does not
/// write a weaker backup and a slower restore host accepts it. 2^18 takes about half a second
/// and 256 MiB.
const SCRYPT_WORK_FACTOR: u8 = 18;

/// The largest work factor restore accepts (as the `age` tool): bounds the time and memory a
/// damaged header can ask for.
const SCRYPT_MAX_WORK_FACTOR: u8 = 22;

/// Largest frame restore accepts (a store record, a file).
const MAX_FRAME: u64 = 1 << 30;

/// Restore makes the store's writes durable and bounds its pending-write index every so many
/// records.
const RESTORE_CHECKPOINT_EVERY: u64 = 100_000;

/// What a backup is, written first.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The format of the file ([`FORMAT`] when written by this version).
    pub format: u32,
    /// When the backup was taken (RFC 3339, UTC).
    pub created: String,
    /// The `ca-server` version that wrote it.
    pub software: String,
    /// SHA-256 fingerprint of the CA's root certificate (`AB:CD:…`).
    pub root_sha256: String,
    /// The data directory it was taken from.
    pub data_dir: String,
    /// The configuration file the server was started with, if known.
    pub config_file: Option<String>,
}

/// What a backup holds, written last.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Files of the data directory.
    pub files: u64,
    /// Their total size in bytes.
    pub file_bytes: u64,
    /// Store records per table.
    pub records: BTreeMap<String, u64>,
    /// The CRL number of the last CRL published before the backup (`None`: none yet).
    pub crl_number: Option<u64>,
}

/// What `backup` wrote or `restore` read.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The manifest.
    pub manifest: Manifest,
    /// The counts.
    pub counts: Counts,
    /// Size of the backup file in bytes.
    pub bytes: u64,
    /// Restore only: the number the restored CA's next CRL will be above.
    #[serde(default)]
    pub next_crl_above: Option<u64>,
}

/// Why a backup could not be written or restored. `Display` is the message printed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The passphrase is empty.
    #[error("the passphrase is empty: a backup holds the CA's private keys")]
    EmptyPassphrase,
    /// The passphrase does not decrypt the file.
    #[error("wrong passphrase: it does not decrypt this backup")]
    WrongPassphrase,
    /// The file is not an age file encrypted to a passphrase, or not a backup inside.
    #[error("{0} is not a ca-server backup: {1}")]
    NotABackup(PathBuf, String),
    /// The file was written by a newer `ca-server`.
    #[error("the backup has format {0}, newer than this ca-server reads (up to {FORMAT}): restore it with a newer ca-server")]
    NewerFormat(u32),
    /// The file is cut short or damaged.
    #[error("the backup is truncated or corrupted: {0}")]
    Corrupt(String),
    /// Restore is only into an empty (or new) directory.
    #[error("{0} is not empty: restore into a new or empty data directory, so nothing of another CA mixes with the restored one")]
    NotEmpty(PathBuf),
    /// Restore into PostgreSQL is only into a database without records.
    #[error("the PostgreSQL database already holds records (table {0}, perhaps others): restore into a new database, or one emptied of every record, so nothing of another CA mixes with the restored one")]
    DatabaseNotEmpty(String),
    /// The backup file would lie inside the directory it backs up.
    #[error("{0} is inside the data directory {1}: keep backups elsewhere, they are lost with it otherwise")]
    InsideDataDir(PathBuf, PathBuf),
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    File(PathBuf, String),
    /// The store could not be read or written.
    #[error("store: {0}")]
    Store(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> BackupError {
    BackupError::File(path.to_path_buf(), e.to_string())
}

fn store_error(e: crate::Error) -> BackupError {
    BackupError::Store(e.to_string())
}

/// A passphrase for [`create`] and [`restore`]: refuses an empty one.
pub fn passphrase(text: String) -> Result<SecretString, BackupError> {
    if text.is_empty() {
        return Err(BackupError::EmptyPassphrase);
    }
    Ok(SecretString::from(text))
}

/// The SHA-256 fingerprint of `<data_dir>/ca/root.pem`.
pub fn root_fingerprint(data_dir: &Path) -> Result<String, BackupError> {
    use rustls_pki_types::pem::PemObject as _;
    let path = root_path(data_dir);
    let der =
        rustls_pki_types::CertificateDer::from_pem_file(&path).map_err(|e| file_error(&path, e))?;
    Ok(crate::wire::fingerprint(&der))
}

fn root_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ca").join("root.pem")
}

/// Writes a backup of the CA in `data_dir`, whose store is `db`, to `out` (mode 0600, written
/// to a temporary file beside it and renamed into place), encrypted to `passphrase`.
/// `config_file`: the configuration file the server was started with, if any. Blocking.
pub fn create(
    db: &Db,
    data_dir: &Path,
    config_file: Option<&Path>,
    out: &Path,
    passphrase: SecretString,
) -> Result<Summary, BackupError> {
    use age::secrecy::ExposeSecret as _;
    if passphrase.expose_secret().is_empty() {
        return Err(BackupError::EmptyPassphrase);
    }
    let out = std::path::absolute(out).map_err(|e| file_error(out, e))?;
    let (dir, name) = match (out.parent(), out.file_name()) {
        (Some(dir), Some(name)) => (dir, name.to_string_lossy()),
        _ => return Err(file_error(&out, "is not a file path")),
    };
    let real_dir = fs::canonicalize(dir).map_err(|e| file_error(dir, e))?;
    let real_data = fs::canonicalize(data_dir).map_err(|e| file_error(data_dir, e))?;
    if real_dir.starts_with(&real_data) {
        return Err(BackupError::InsideDataDir(out.clone(), real_data));
    }
    let manifest = Manifest {
        format: FORMAT,
        created: rfc3339(now()),
        software: env!("CARGO_PKG_VERSION").to_owned(),
        root_sha256: root_fingerprint(data_dir)?,
        data_dir: real_data.display().to_string(),
        config_file: config_file.map(|p| p.display().to_string()),
    };
    // The configuration travels as a file of the data directory when it is one.
    let config_file = config_file
        .filter(|c| fs::canonicalize(c).map_or(true, |real| !real.starts_with(&real_data)));
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = write_to(&tmp, passphrase, |w| {
        w.write_all(MAGIC).map_err(written)?;
        frame_json(w, b'M', &manifest)?;
        if let Some(config) = config_file {
            let bytes = fs::read(config).map_err(|e| file_error(config, e))?;
            put_u8(w, b'C')?;
            put_blob(w, &bytes)?;
        }
        let mut counts = Counts::default();
        write_files(w, &real_data, &mut counts)?;
        write_store(w, db, &mut counts)?;
        frame_json(w, b'E', &counts)?;
        Ok(counts)
    })
    .and_then(|(counts, bytes)| {
        fs::rename(&tmp, &out).map_err(|e| file_error(&out, e))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| file_error(dir, e))?;
        Ok((counts, bytes))
    });
    match written {
        Ok((counts, bytes)) => Ok(Summary {
            manifest,
            counts,
            bytes,
            next_crl_above: None,
        }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The encrypting writer of a backup.
type Sink = age::stream::StreamWriter<BufWriter<fs::File>>;

/// Creates `path` (mode 0600, refused if it exists), writes an age stream encrypted to
/// `passphrase` through `body`, finishes it and syncs the file. Returns what `body` returned
/// and the file's size.
fn write_to<T>(
    path: &Path,
    passphrase: SecretString,
    body: impl FnOnce(&mut Sink) -> Result<T, BackupError>,
) -> Result<(T, u64), BackupError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path).map_err(|e| file_error(path, e))?;
    let io = |e: io::Error| file_error(path, e);
    let mut recipient = age::scrypt::Recipient::new(passphrase);
    recipient.set_work_factor(SCRYPT_WORK_FACTOR);
    let mut sink = age::Encryptor::with_recipients(std::iter::once(&recipient as _))
        .map_err(|e| BackupError::Store(e.to_string()))?
        .wrap_output(BufWriter::new(file))
        .map_err(io)?;
    let value = body(&mut sink)?;
    let file = sink
        .finish()
        .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    let bytes = file.metadata().map_err(io)?.len();
    Ok((value, bytes))
}

fn written(e: io::Error) -> BackupError {
    BackupError::File(PathBuf::from("backup"), format!("cannot be written: {e}"))
}

fn put_u8(w: &mut impl Write, v: u8) -> Result<(), BackupError> {
    w.write_all(&[v]).map_err(written)
}

/// A `u32` length, then the bytes.
fn put_bytes(w: &mut impl Write, bytes: &[u8]) -> Result<(), BackupError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| BackupError::Store(format!("a record of {} bytes", bytes.len())))?;
    w.write_all(&len.to_be_bytes()).map_err(written)?;
    w.write_all(bytes).map_err(written)
}

/// A `u64` length, then the bytes.
fn put_blob(w: &mut impl Write, bytes: &[u8]) -> Result<(), BackupError> {
    w.write_all(&(bytes.len() as u64).to_be_bytes())
        .map_err(written)?;
    w.write_all(bytes).map_err(written)
}

fn frame_json<T: Serialize>(w: &mut impl Write, tag: u8, value: &T) -> Result<(), BackupError> {
    let json = serde_json::to_vec(value).map_err(|e| BackupError::Store(e.to_string()))?;
    put_u8(w, tag)?;
    put_bytes(w, &json)
}

/// Whether a file of the data directory stays out of a backup: the store (exported through a
/// snapshot), the admin socket, and temporary files of an atomic write in progress.
fn left_out(rel: &Path) -> bool {
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    rel == Path::new("db")
        || rel == Path::new("admin.sock")
        || (name.starts_with('.') && name.ends_with(".tmp"))
}

/// Every regular file under `root` that is not [`left_out`], in path order.
fn write_files(w: &mut Sink, root: &Path, counts: &mut Counts) -> Result<(), BackupError> {
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let dir = root.join(&rel);
        let mut entries = fs::read_dir(&dir)
            .and_then(|it| {
                it.map(|e| e.map(|e| e.file_name()))
                    .collect::<io::Result<Vec<_>>>()
            })
            .map_err(|e| file_error(&dir, e))?;
        entries.sort();
        // Reversed onto the stack, so directories are visited in order.
        for name in entries.into_iter().rev() {
            let rel = rel.join(name);
            if left_out(&rel) {
                continue;
            }
            let path = root.join(&rel);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                // Removed since the listing (a decided approval request): not in the backup.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(file_error(&path, e)),
            };
            if meta.is_dir() {
                dirs.push(rel);
            } else if meta.is_file() {
                let contents = match fs::read(&path) {
                    Ok(c) => c,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(file_error(&path, e)),
                };
                let name = rel
                    .to_str()
                    .ok_or_else(|| file_error(&path, "the name is not UTF-8"))?;
                let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
                put_u8(w, b'F')?;
                put_bytes(w, name.as_bytes())?;
                w.write_all(&mode.to_be_bytes()).map_err(written)?;
                put_blob(w, &contents)?;
                counts.files += 1;
                counts.file_bytes += contents.len() as u64;
            } else {
                tracing::warn!(path = %path.display(), "backup: not a regular file or directory, left out");
            }
        }
    }
    Ok(())
}

/// The store's records, from one [`Db::snapshot`].
fn write_store(w: &mut Sink, db: &Db, counts: &mut Counts) -> Result<(), BackupError> {
    let mut failed = None;
    let mut current = None;
    let snapshot = db.snapshot(&mut |table, key, value| {
        let mut write = || -> Result<(), BackupError> {
            if current != Some(table) {
                put_u8(w, b'T')?;
                put_bytes(w, table.name().as_bytes())?;
                current = Some(table);
            }
            put_u8(w, b'R')?;
            put_bytes(w, key)?;
            put_bytes(w, value)
        };
        if let Err(e) = write() {
            failed = Some(e);
            return Err(crate::Error::Internal("backup write failed".into()));
        }
        *counts.records.entry(table.name().to_owned()).or_default() += 1;
        if table == Table::Meta && key == CRL_NUMBER_KEY.as_bytes() {
            counts.crl_number = serde_json::from_slice(value).ok();
        }
        Ok(())
    });
    match (failed, snapshot) {
        (Some(e), _) => Err(e),
        (None, result) => result.map_err(store_error),
    }
}

/// Where [`restore_to`] writes the store's records.
#[derive(Clone, Copy)]
pub enum Destination<'a> {
    /// A new embedded store, `<data_dir>/db`.
    Sled,
    /// A PostgreSQL database with its schema (as `PgStore::open_migrated` leaves an empty
    /// one) and without records, written in one transaction ([`PgLoad`]); the data directory
    /// gets the `storage::SHARED_MARKER`.
    Postgres(&'a PgStore),
}

/// Restores the backup `file` into `data_dir`, which must be empty or absent, and a new
/// embedded store there ([`restore_to`]). Blocking.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    passphrase: SecretString,
) -> Result<Summary, BackupError> {
    restore_to(file, data_dir, Destination::Sled, passphrase)
}

/// Restores the backup `file`: its files into `data_dir`, which must be empty or absent, its
/// records into `to`. On failure both are left as they were found. The restored store's CRL
/// number is moved [`CRL_NUMBER_GAP`] past the backup's. Blocking.
pub fn restore_to(
    file: &Path,
    data_dir: &Path,
    to: Destination<'_>,
    passphrase: SecretString,
) -> Result<Summary, BackupError> {
    let existed = match fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty(data_dir.to_path_buf()));
            }
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(file_error(data_dir, e)),
    };
    // The database first: it is refused before anything is read, and the load's lock keeps
    // writers out from the check until the records are in. Dropped on a failure, it takes
    // back what it wrote.
    let load = match to {
        Destination::Sled => None,
        Destination::Postgres(pg) => {
            let mut load = pg.load().map_err(store_error)?;
            if let Some(table) = load.occupied().map_err(store_error)? {
                return Err(BackupError::DatabaseNotEmpty(table));
            }
            Some(load)
        }
    };
    let input = fs::File::open(file).map_err(|e| file_error(file, e))?;
    let bytes = input.metadata().map_err(|e| file_error(file, e))?.len();
    let mut plain = open(file, input, passphrase)?;
    let manifest = read_manifest(file, &mut plain)?;
    let restored = restore_into(&mut plain, data_dir, &manifest, load);
    if restored.is_err() {
        // Nothing of a half-restored CA stays behind.
        let _ = fs::remove_dir_all(data_dir);
        if existed {
            let _ = ensure_private_dir(data_dir);
        }
    }
    let (counts, next_crl_above) = restored?;
    Ok(Summary {
        manifest,
        counts,
        bytes,
        next_crl_above: Some(next_crl_above),
    })
}

/// The decrypting reader of a backup.
type Source = age::stream::StreamReader<BufReader<fs::File>>;

fn open(path: &Path, input: fs::File, passphrase: SecretString) -> Result<Source, BackupError> {
    use age::DecryptError as D;
    let not_backup =
        |why: &dyn std::fmt::Display| BackupError::NotABackup(path.to_path_buf(), why.to_string());
    let decryptor = age::Decryptor::new_buffered(BufReader::new(input)).map_err(|e| match e {
        D::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            BackupError::Corrupt("the file ends inside its header".into())
        }
        other => not_backup(&format_args!("no age header ({other})")),
    })?;
    if !decryptor.is_scrypt() {
        return Err(not_backup(&"it is not encrypted to a passphrase"));
    }
    let mut identity = age::scrypt::Identity::new(passphrase);
    identity.set_max_work_factor(SCRYPT_MAX_WORK_FACTOR);
    decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            D::DecryptionFailed | D::NoMatchingKeys => BackupError::WrongPassphrase,
            D::ExcessiveWork { required, .. } => BackupError::Corrupt(format!(
                "its passphrase needs scrypt work factor {required}, above the \
                 {SCRYPT_MAX_WORK_FACTOR} this ca-server accepts"
            )),
            other => BackupError::Corrupt(other.to_string()),
        })
}

/// Reads exactly `n` bytes; the end of the stream or a damaged chunk is [`BackupError::Corrupt`].
fn take(r: &mut impl Read, n: u64) -> Result<Vec<u8>, BackupError> {
    if n > MAX_FRAME {
        return Err(BackupError::Corrupt(format!("a frame of {n} bytes")));
    }
    let mut buf = Vec::new();
    r.by_ref().take(n).read_to_end(&mut buf).map_err(damaged)?;
    if buf.len() as u64 != n {
        return Err(BackupError::Corrupt("the file ends early".into()));
    }
    Ok(buf)
}

fn damaged(e: io::Error) -> BackupError {
    BackupError::Corrupt(e.to_string())
}

fn get_u8(r: &mut impl Read) -> Result<u8, BackupError> {
    Ok(take(r, 1)?[0])
}

fn get_u32(r: &mut impl Read) -> Result<u32, BackupError> {
    let b = take(r, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn get_bytes(r: &mut impl Read) -> Result<Vec<u8>, BackupError> {
    let n = get_u32(r)?;
    take(r, u64::from(n))
}

fn get_blob(r: &mut impl Read) -> Result<Vec<u8>, BackupError> {
    let b = take(r, 8)?;
    let n = u64::from_be_bytes(b.try_into().unwrap_or_default());
    take(r, n)
}

fn get_json<T: serde::de::DeserializeOwned>(
    r: &mut impl Read,
    what: &str,
) -> Result<T, BackupError> {
    serde_json::from_slice(&get_bytes(r)?)
        .map_err(|e| BackupError::Corrupt(format!("the {what} does not parse: {e}")))
}

fn read_manifest(path: &Path, r: &mut impl Read) -> Result<Manifest, BackupError> {
    let magic = take(r, MAGIC.len() as u64)?;
    if magic != MAGIC {
        return Err(BackupError::NotABackup(
            path.to_path_buf(),
            "it decrypts, but to something else".into(),
        ));
    }
    if get_u8(r)? != b'M' {
        return Err(BackupError::Corrupt("no manifest".into()));
    }
    // The format first, so a newer file is refused as such even if its manifest changed.
    let value: serde_json::Value = get_json(r, "manifest")?;
    let format = value["format"].as_u64().unwrap_or(0);
    if format > u64::from(FORMAT) {
        return Err(BackupError::NewerFormat(
            u32::try_from(format).unwrap_or(u32::MAX),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| BackupError::Corrupt(format!("the manifest does not parse: {e}")))
}

/// Where a file of the backup goes: a relative path of plain names, not the store or socket.
fn restored_path(data_dir: &Path, name: &[u8]) -> Result<PathBuf, BackupError> {
    let name = std::str::from_utf8(name)
        .map_err(|_| BackupError::Corrupt("a file name is not UTF-8".into()))?;
    let rel = Path::new(name);
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || name.is_empty() || left_out(rel) || rel.starts_with("db") {
        return Err(BackupError::Corrupt(format!("a file named {name:?}")));
    }
    Ok(data_dir.join(rel))
}

/// What restore writes the records into.
enum RecordWriter<'a> {
    /// A new embedded store, and the records written into it so far.
    Sled(SledStore, u64),
    /// A load into PostgreSQL.
    Postgres(PgLoad<'a>),
}

impl RecordWriter<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        match self {
            Self::Sled(store, written) => {
                store.put(table, key, value).map_err(store_error)?;
                *written += 1;
                if *written % RESTORE_CHECKPOINT_EVERY == 0 {
                    store.checkpoint().map_err(store_error)?;
                }
                Ok(())
            }
            Self::Postgres(load) => load.put(table, key, value).map_err(store_error),
        }
    }

    /// Makes every record durable (sled: so the next start replays nothing) or commits them.
    fn finish(self) -> Result<(), BackupError> {
        match self {
            Self::Sled(store, _) => store.checkpoint().map_err(store_error),
            Self::Postgres(load) => load.commit().map_err(store_error),
        }
    }
}

/// Reads the frames after the manifest into `data_dir` and `load` (`None`: a new embedded
/// store there); returns the counts and the number the restored CA's next CRL will be above.
fn restore_into(
    r: &mut Source,
    data_dir: &Path,
    manifest: &Manifest,
    load: Option<PgLoad<'_>>,
) -> Result<(Counts, u64), BackupError> {
    ensure_private_dir(data_dir).map_err(store_error)?;
    let mut store = match load {
        Some(load) => {
            write_atomic(
                &data_dir.join(crate::storage::SHARED_MARKER),
                crate::storage::SHARED_MARKER_TEXT,
                0o644,
            )
            .map_err(store_error)?;
            RecordWriter::Postgres(load)
        }
        None => RecordWriter::Sled(
            SledStore::open(&data_dir.join("db")).map_err(store_error)?,
            0,
        ),
    };
    let mut read = Counts::default();
    let mut table = None;
    // The backup's CRL number, written moved on once every record is in.
    let mut last_crl = 0u64;
    let counts = loop {
        match get_u8(r)? {
            b'C' => {
                let contents = get_blob(r)?;
                write_atomic(&data_dir.join(RESTORED_CONFIG), &contents, 0o600)
                    .map_err(store_error)?;
            }
            b'F' => {
                let path = restored_path(data_dir, &get_bytes(r)?)?;
                let mode = get_u32(r)? & 0o777;
                let contents = get_blob(r)?;
                if let Some(parent) = path.parent() {
                    ensure_private_dir(parent).map_err(store_error)?;
                }
                write_atomic(&path, &contents, mode).map_err(store_error)?;
                read.files += 1;
                read.file_bytes += contents.len() as u64;
            }
            b'T' => {
                let name = get_bytes(r)?;
                table = Some(
                    Table::ALL
                        .into_iter()
                        .find(|t| t.name().as_bytes() == name)
                        .ok_or_else(|| {
                            BackupError::Corrupt(format!(
                                "unknown store table {:?}",
                                String::from_utf8_lossy(&name)
                            ))
                        })?,
                );
            }
            b'R' => {
                let t =
                    table.ok_or_else(|| BackupError::Corrupt("a record outside a table".into()))?;
                let (key, value) = (get_bytes(r)?, get_bytes(r)?);
                *read.records.entry(t.name().to_owned()).or_default() += 1;
                if t == Table::Meta && key == CRL_NUMBER_KEY.as_bytes() {
                    last_crl = serde_json::from_slice(&value).map_err(|e| {
                        BackupError::Corrupt(format!("the CRL number does not parse: {e}"))
                    })?;
                } else if !(t == Table::Meta && crate::ra::crl::is_stored_crl(&key)) {
                    store.put(t, &key, &value)?;
                }
            }
            b'E' => break get_json::<Counts>(r, "counts")?,
            other => return Err(BackupError::Corrupt(format!("unknown frame {other:#04x}"))),
        }
    };
    if counts.files != read.files || counts.records != read.records {
        return Err(BackupError::Corrupt(format!(
            "it lists {} files and {:?} records but holds {} and {:?}",
            counts.files, counts.records, read.files, read.records
        )));
    }
    if r.read(&mut [0u8; 1]).map_err(damaged)? != 0 {
        return Err(BackupError::Corrupt("data after the end".into()));
    }
    let next_above = last_crl.saturating_add(CRL_NUMBER_GAP);
    let encoded = serde_json::to_vec(&next_above).map_err(|e| BackupError::Store(e.to_string()))?;
    store.put(Table::Meta, CRL_NUMBER_KEY.as_bytes(), &encoded)?;
    let root = root_fingerprint(data_dir)?;
    if root != manifest.root_sha256 {
        return Err(BackupError::Corrupt(format!(
            "the restored root certificate is {root}, the manifest names {}",
            manifest.root_sha256
        )));
    }
    // Last: a PostgreSQL load commits only a restore that is whole.
    store.finish()?;
    Ok((counts, next_above))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::*;
    use crate::storage::MemoryStore;

    /// A data directory with a root certificate, a private key, a subdirectory, the things a
    /// backup leaves out, and a store with a few records.
    fn ca_dir(dir: &Path) -> Db {
        let key = rcgen::KeyPair::generate().expect("key");
        let root = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .self_signed(&key)
            .expect("self-signed");
        fs::create_dir_all(dir.join("ca")).expect("mkdir");
        fs::write(root_path(dir), root.pem()).expect("root");
        write_atomic(&dir.join("ca/root.key"), b"secret", 0o600).expect("key");
        fs::create_dir_all(dir.join("operators/alice")).expect("mkdir");
        fs::write(dir.join("operators/alice/record.json"), b"{}").expect("operator");
        fs::write(dir.join("audit.log"), b"line 1\n").expect("audit");
        fs::create_dir_all(dir.join("db")).expect("db");
        fs::write(dir.join("db/not-copied"), b"x").expect("db file");
        fs::write(dir.join("admin.sock"), b"").expect("socket stand-in");
        fs::write(dir.join(".crl.pem.0123.tmp"), b"half").expect("tmp");
        let db = Db::new(Arc::new(MemoryStore::default()));
        db.put(Table::Certificates, "0a", &"cert").expect("put");
        db.put(Table::Revocations, "0a", &"revoked").expect("put");
        db.put(Table::AccountOrders, "acct\0order", &())
            .expect("put");
        db.put(Table::Meta, CRL_NUMBER_KEY, &41u64).expect("put");
        db
    }

    /// Under `tmp`: the data directory, the backup file and the directory restored into.
    fn layout(tmp: &Path) -> (PathBuf, PathBuf, PathBuf) {
        (tmp.join("data"), tmp.join("b.age"), tmp.join("new"))
    }

    fn pass(text: &str) -> SecretString {
        passphrase(text.to_owned()).expect("passphrase")
    }

    #[test]
    fn a_backup_restores_files_modes_and_records_and_moves_the_crl_number_on() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (data, out, new) = layout(tmp.path());
        let db = ca_dir(&data);
        let written = create(&db, &data, None, &out, pass("pw")).expect("backup");
        assert_eq!(
            fs::metadata(&out).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(written.counts.files, 4, "{:?}", written.counts);
        assert_eq!(written.counts.crl_number, Some(41));
        assert!(
            fs::read_dir(tmp.path()).expect("ls").all(|e| {
                !e.expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            }),
            "no temporary file left"
        );

        let restored = restore(&out, &new, pass("pw")).expect("restore");
        assert_eq!(restored.manifest.root_sha256, written.manifest.root_sha256);
        assert_eq!(restored.counts.records, written.counts.records);
        assert_eq!(restored.next_crl_above, Some(41 + CRL_NUMBER_GAP));
        assert_eq!(fs::read(new.join("ca/root.key")).expect("key"), b"secret");
        assert_eq!(
            fs::metadata(new.join("ca/root.key"))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            fs::read(new.join("operators/alice/record.json")).expect("op"),
            b"{}"
        );
        assert_eq!(fs::read(new.join("audit.log")).expect("audit"), b"line 1\n");
        for gone in ["admin.sock", ".crl.pem.0123.tmp", "db/not-copied"] {
            assert!(!new.join(gone).exists(), "{gone}");
        }
        let db = Db::new(Arc::new(SledStore::open(&new.join("db")).expect("open")));
        assert_eq!(
            db.get::<String>(Table::Certificates, "0a")
                .expect("get")
                .as_deref(),
            Some("cert")
        );
        assert_eq!(
            db.keys_with_prefix(Table::AccountOrders, "acct\0")
                .expect("scan"),
            ["acct\0order"]
        );
        assert_eq!(
            db.get::<u64>(Table::Meta, CRL_NUMBER_KEY).expect("get"),
            Some(41 + CRL_NUMBER_GAP)
        );
    }

    #[test]
    fn wrong_passphrase_truncation_and_a_used_directory_are_refused_and_leave_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (data, out, new) = layout(tmp.path());
        create(&ca_dir(&data), &data, None, &out, pass("pw")).expect("backup");

        let err = restore(&out, &new, pass("not it")).expect_err("wrong passphrase");
        assert!(matches!(err, BackupError::WrongPassphrase), "{err}");
        assert!(!new.exists());

        let bytes = fs::read(&out).expect("read");
        let cut = tmp.path().join("cut.age");
        for len in [bytes.len() - 1, bytes.len() / 2, 40] {
            fs::write(&cut, &bytes[..len]).expect("write");
            let err = restore(&cut, &new, pass("pw")).expect_err("truncated");
            assert!(
                matches!(err, BackupError::Corrupt(_) | BackupError::NotABackup(..)),
                "{len}: {err}"
            );
            assert!(!new.exists(), "{len}: a half-restored directory was left");
        }
        let mut flipped = bytes.clone();
        let at = flipped.len() - 100;
        flipped[at] ^= 1;
        fs::write(&cut, &flipped).expect("write");
        let err = restore(&cut, &new, pass("pw")).expect_err("corrupted");
        assert!(matches!(err, BackupError::Corrupt(_)), "{err}");

        fs::create_dir(&new).expect("mkdir");
        fs::write(new.join("something"), b"").expect("write");
        let err = restore(&out, &new, pass("pw")).expect_err("not empty");
        assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");
        assert!(new.join("something").exists());
        assert!(passphrase(String::new()).is_err());
    }

    /// Into PostgreSQL: the records go into the database in one transaction, with the CRL
    /// number moved on and the stored CRLs left out, the files into the directory with the
    /// marker; a database with records is refused, and a failed restore leaves the database
    /// without records and no directory.
    #[test]
    fn a_restore_into_postgres_writes_the_database_whole_or_not_at_all() {
        use crate::storage::postgres::test_cluster::TestCluster;
        use crate::storage::{Durability, PostgresConfig};
        let cluster = TestCluster::shared().expect("cluster");
        let open = || {
            let db = cluster.fresh_database().expect("database");
            let cfg = PostgresConfig {
                url: cluster.url(&db),
                password_file: None,
                pool_size: 2,
                tls: None,
            };
            Arc::new(PgStore::open_migrated(&cfg, Durability::PowerLoss).expect("open"))
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let (data, out, new) = layout(tmp.path());
        let db = ca_dir(&data);
        db.put(Table::Meta, "crl_signed.crl.pem", &"an old CRL")
            .expect("put");
        db.put(Table::Meta, "crl_head.crl.pem", &"its head")
            .expect("put");
        create(&db, &data, None, &out, pass("pw")).expect("backup");
        let records = |pg: &PgStore| {
            let mut all = Vec::new();
            pg.snapshot(&mut |t, k, v| {
                all.push((t, k.to_vec(), v.to_vec()));
                Ok(())
            })
            .expect("snapshot");
            all
        };

        let pg = open();
        let restored =
            restore_to(&out, &new, Destination::Postgres(&pg), pass("pw")).expect("restore");
        assert_eq!(restored.next_crl_above, Some(41 + CRL_NUMBER_GAP));
        let shared = Db::new(pg.clone());
        assert_eq!(
            shared
                .get::<String>(Table::Certificates, "0a")
                .expect("get")
                .as_deref(),
            Some("cert")
        );
        assert_eq!(
            shared.get::<u64>(Table::Meta, CRL_NUMBER_KEY).expect("get"),
            Some(41 + CRL_NUMBER_GAP)
        );
        for stale in ["crl_signed.crl.pem", "crl_head.crl.pem"] {
            assert_eq!(
                shared.get::<String>(Table::Meta, stale).expect("get"),
                None,
                "{stale}"
            );
        }
        assert_eq!(records(&pg).len(), 4, "{:?}", records(&pg));
        assert!(new.join(crate::storage::SHARED_MARKER).is_file());
        assert!(!new.join("db").exists(), "no embedded store");
        assert_eq!(fs::read(new.join("ca/root.key")).expect("key"), b"secret");

        // The same database again: refused, and nothing changes.
        let again = tmp.path().join("again");
        let err = restore_to(&out, &again, Destination::Postgres(&pg), pass("pw"))
            .expect_err("a database with records");
        assert!(matches!(err, BackupError::DatabaseNotEmpty(_)), "{err}");
        assert!(err.to_string().contains("already holds records"), "{err}");
        assert!(!again.exists());
        assert_eq!(records(&pg).len(), 4);

        // A wrong passphrase, or a backup cut short after its records, leaves no record.
        let pg = open();
        let err = restore_to(&out, &again, Destination::Postgres(&pg), pass("not it"))
            .expect_err("wrong passphrase");
        assert!(matches!(err, BackupError::WrongPassphrase), "{err}");
        let bytes = fs::read(&out).expect("read");
        let cut = tmp.path().join("cut.age");
        fs::write(&cut, &bytes[..bytes.len() - 1]).expect("write");
        let err = restore_to(&cut, &again, Destination::Postgres(&pg), pass("pw"))
            .expect_err("truncated");
        assert!(matches!(err, BackupError::Corrupt(_)), "{err}");
        assert!(records(&pg).is_empty());
        assert!(!again.exists());
    }

    /// A file written by hand in the backup format, with `manifest` and then `rest`.
    fn forged(path: &Path, manifest: serde_json::Value, rest: impl FnOnce(&mut Sink)) {
        write_to(path, pass("pw"), |w| {
            w.write_all(MAGIC).map_err(written)?;
            frame_json(w, b'M', &manifest)?;
            rest(w);
            Ok(())
        })
        .expect("write");
    }

    #[test]
    fn a_newer_format_and_files_outside_the_directory_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (path, new) = (tmp.path().join("f.age"), tmp.path().join("new"));
        forged(
            &path,
            serde_json::json!({"format": FORMAT + 1, "whatever": 1}),
            |_| {},
        );
        let err = restore(&path, &new, pass("pw")).expect_err("newer");
        assert!(
            matches!(err, BackupError::NewerFormat(f) if f == FORMAT + 1),
            "{err}"
        );

        let manifest = serde_json::json!({"format": FORMAT, "created": "", "software": "",
            "rootSha256": "", "dataDir": "", "configFile": null});
        for (i, name) in ["../escaped", "/etc/passwd", "db/conf", "admin.sock"]
            .into_iter()
            .enumerate()
        {
            forged(&path.with_extension(i.to_string()), manifest.clone(), |w| {
                put_u8(w, b'F').expect("tag");
                put_bytes(w, name.as_bytes()).expect("name");
                w.write_all(&0o644u32.to_be_bytes()).expect("mode");
                put_blob(w, b"x").expect("contents");
            });
            let err = restore(&path.with_extension(i.to_string()), &new, pass("pw"))
                .expect_err("refused");
            assert!(matches!(err, BackupError::Corrupt(_)), "{name}: {err}");
            assert!(!tmp.path().join("escaped").exists());
        }
    }
}
