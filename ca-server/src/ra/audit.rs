//! The audit log: every change an operator makes, who made it, when and from where.
//!
//! [`AuditLog`] is the handle the server ([`crate::ra::Ra`]) and the command line append
//! through. It keeps the log in one of two places, with the same entries and the same chain:
//!
//! - With the embedded store, one file, `<data_dir>/audit.log`, one JSON object per line, only
//!   ever appended to: it is opened with `O_APPEND`, never truncated or rewritten, and each line
//!   is on disk (fsync) before the change it records is reported done. The console, the socket
//!   API and the command line (which edits the operator's files while the CA may or may not
//!   run) append to the same file under an exclusive `flock`, so lines never interleave and
//!   numbers never repeat.
//! - With a store that several CA instances share (PostgreSQL), records of that store:
//!   [`Table::AuditLog`] holds entry `seq` under `seq` as 20 decimal digits (so keys sort as
//!   numbers), its value the entry's JSON bytes as a file line holds them. Each instance, and
//!   the command line given the CA's configuration, appends to this one log. A head record
//!   (`audit_head` in [`Table::Meta`]: the last number and the hash of that entry) says where
//!   the next entry goes. An append inserts entry head+1 only if that number is free
//!   (compare-and-swap), then moves the head on (compare-and-swap again); an append that finds
//!   an entry past the head (its writer crashed between the two steps, or is just taking the
//!   second) moves the head on first, so numbers never repeat and the chain never forks. Each
//!   store call is a committed PostgreSQL statement, durable before it returns (with
//!   `storage.durability = "power-loss"`), so an entry is stored before the change it records
//!   is reported done. At start, an instance whose shared log is still empty copies its
//!   `audit.log` into it, line for line, numbers and chain as they were
//!   ([`AuditLog::in_store`]).
//!
//! Each entry carries `seq` (1, 2, …) and `prev`, the SHA-256 of the previous entry's bytes
//! (64 zeros for the first), so [`AuditLog::read_checked`] notices an entry edited, removed or
//! reordered after the fact; in the store the head's hash also covers the last entry. That is
//! evidence, not prevention: whoever can write the data directory, or the database, can
//! rewrite the whole chain; ship the log to a log host for that.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::storage::{Db, Table};
use crate::types::{now, rfc3339};
use crate::{Error, Result};

/// The log's file name in the data directory.
pub const FILE: &str = "audit.log";

/// `prev` of the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who made a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The operator's name, or `cli:USER` for the command line on the CA host.
    pub name: String,
    /// The address the request came from, or `local` for the command line and the socket.
    pub from: String,
}

impl Actor {
    /// The command line on the CA host, as the local user running it.
    pub fn local_user() -> Self {
        let user = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| format!("uid-{}", rustix::process::getuid().as_raw()));
        Self {
            name: format!("cli:{user}"),
            from: "local".to_owned(),
        }
    }
}

/// One entry of the log: a line of the file, a record of the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// 1 for the first entry, then one more per entry (per line of the file, whatever it holds).
    pub seq: u64,
    /// When, RFC 3339.
    pub at: String,
    /// Who.
    pub actor: String,
    /// From where.
    pub from: String,
    /// What, e.g. `approval.approve`, `certificate.revoke`, `operator.add`.
    pub action: String,
    /// What it was done to: a request id, a serial, a key id, an operator name.
    pub target: String,
    /// Anything else worth keeping (a reason, a role, a count).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
    /// SHA-256 (hex) of the previous entry's bytes (line, record).
    pub prev: String,
}

impl Entry {
    /// Entry `seq`, made now, following the entry whose hash is `prev`.
    fn new(
        seq: u64,
        prev: String,
        actor: &Actor,
        action: &str,
        target: &str,
        detail: Value,
    ) -> Self {
        Self {
            seq,
            at: rfc3339(now()),
            actor: actor.name.clone(),
            from: actor.from.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
            prev,
        }
    }
}

/// Where the log is: the file in a data directory, or the shared store.
#[derive(Clone)]
pub struct AuditLog {
    data_dir: PathBuf,
    /// The store several CA instances share; `None`: the file in `data_dir`.
    shared: Option<Db>,
}

/// The [`Table::Meta`] key of the head record of the log in the store.
const HEAD: &str = "audit_head";
/// The [`Table::Meta`] key that the instance copying its file into an empty store inserts
/// first, so two instances starting at once never both copy theirs.
const IMPORT: &str = "audit_import";

/// Where the next entry goes: the number and hash of the last entry the head counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

impl AuditLog {
    /// The log is the file `<data_dir>/audit.log`.
    pub fn file(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            shared: None,
        }
    }

    /// The log is in `db`, which several CA instances share. If that log is empty and
    /// `<data_dir>/audit.log` holds lines (made before the CA moved to the shared store), they
    /// are copied in first, each under its line number, byte for byte, so their numbers and
    /// chain stay as they were. A file whose lines the shared log does not start with (another
    /// instance's log came first) is left as it is, with a warning.
    pub fn in_store(data_dir: &Path, db: Db) -> Result<Self> {
        let log = Self {
            data_dir: data_dir.to_path_buf(),
            shared: Some(db.clone()),
        };
        import_file(&path(data_dir), &db)?;
        Ok(log)
    }

    /// Appends an entry; returns it once it is durable.
    pub fn append(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        detail: Value,
    ) -> Result<Entry> {
        match &self.shared {
            Some(db) => append_to_store(db, actor, action, target, detail),
            None => append(&self.data_dir, actor, action, target, detail),
        }
    }

    /// Every entry, oldest first, and whether the chain is intact: `Err(reason)` names the
    /// first line (file) or entry (store) that does not follow from the one before it.
    pub fn read_checked(&self) -> Result<(Vec<Entry>, std::result::Result<(), String>)> {
        match &self.shared {
            Some(db) => read_store_checked(db),
            None => read_checked(&self.data_dir),
        }
    }

    /// Every entry, oldest first.
    pub fn read_all(&self) -> Result<Vec<Entry>> {
        Ok(self.read_checked()?.0)
    }
}

fn encode_entry(entry: &Entry) -> Result<Vec<u8>> {
    serde_json::to_vec(entry)
        .map_err(|e| Error::Internal(format!("cannot encode an audit entry: {e}")))
}

/// The store's key of entry `seq`.
fn entry_key(seq: u64) -> String {
    format!("{seq:020}")
}

/// The head record as stored (`None`: no head yet) and what it says.
fn read_head(db: &Db) -> Result<(Option<Vec<u8>>, Head)> {
    let raw = db.store().get(Table::Meta, HEAD.as_bytes())?;
    let head = match &raw {
        Some(r) => serde_json::from_slice(r).map_err(|e| {
            Error::Storage(format!(
                "the shared audit log's head record is damaged: {e}"
            ))
        })?,
        None => Head {
            seq: 0,
            hash: GENESIS.to_owned(),
        },
    };
    Ok((raw, head))
}

/// Moves the head from `old` to entry `seq` whose bytes are `entry`. Losing the race is fine:
/// the head only ever moves to the entry after the one it names, so whoever moved it first
/// moved it here or further.
fn advance_head(db: &Db, old: Option<&[u8]>, seq: u64, entry: &[u8]) -> Result<()> {
    let new = serde_json::to_vec(&Head {
        seq,
        hash: hash(entry),
    })
    .map_err(|e| Error::Internal(format!("cannot encode the audit head: {e}")))?;
    db.store()
        .compare_and_swap(Table::Meta, HEAD.as_bytes(), old, Some(&new))?;
    Ok(())
}

fn append_to_store(
    db: &Db,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: Value,
) -> Result<Entry> {
    let store = db.store();
    loop {
        let (raw_head, head) = read_head(db)?;
        let seq = head
            .seq
            .checked_add(1)
            .ok_or_else(|| Error::Storage("the shared audit log is full".into()))?;
        let key = entry_key(seq);
        if let Some(found) = store.get(Table::AuditLog, key.as_bytes())? {
            // An entry the head does not count yet: its writer crashed between inserting it
            // and moving the head, or is about to move it. Move it on, then look again.
            advance_head(db, raw_head.as_deref(), seq, &found)?;
            continue;
        }
        let entry = Entry::new(seq, head.hash, actor, action, target, detail.clone());
        let bytes = encode_entry(&entry)?;
        if store.compare_and_swap(Table::AuditLog, key.as_bytes(), None, Some(&bytes))? {
            advance_head(db, raw_head.as_deref(), seq, &bytes)?;
            return Ok(entry);
        }
        // Another writer took this number first: append after its entry.
    }
}

/// The entries of the log in the store, checked as the file's lines are, and against the head:
/// an edit of the last entry, which no later entry's `prev` covers yet, or entries removed
/// from the end.
fn read_store_checked(db: &Db) -> Result<(Vec<Entry>, std::result::Result<(), String>)> {
    let (_, head) = read_head(db)?;
    let rows = db.store().scan_prefix(Table::AuditLog, b"")?;
    let mut entries = Vec::new();
    let mut chain = Ok(());
    let mut prev = GENESIS.to_owned();
    for (n, (key, raw)) in rows.iter().enumerate() {
        let number = u64::try_from(n + 1).unwrap_or(u64::MAX);
        let stored_as = String::from_utf8_lossy(key);
        match serde_json::from_slice::<Entry>(raw) {
            Ok(entry) => {
                if chain.is_ok() {
                    if entry.prev != prev {
                        chain = Err(format!(
                            "entry {number} (seq {}) does not follow the entry before it",
                            entry.seq
                        ));
                    } else if entry.seq != number {
                        chain = Err(format!("entry {number} has seq {}", entry.seq));
                    }
                }
                entries.push(entry);
            }
            Err(e) => {
                if chain.is_ok() {
                    chain = Err(format!("entry {number} is not an entry: {e}"));
                }
            }
        }
        if chain.is_ok() && stored_as != entry_key(number) {
            chain = Err(format!("entry {number} is stored as number {stored_as}"));
        }
        prev = hash(raw);
    }
    if chain.is_ok() && head.seq > 0 {
        let counted = usize::try_from(head.seq).ok().and_then(|s| rows.get(s - 1));
        match counted {
            None => {
                chain = Err(format!(
                    "the log ends at entry {}, but entry {} was written",
                    rows.len(),
                    head.seq
                ))
            }
            Some((_, raw)) if hash(raw) != head.hash => {
                chain = Err(format!(
                    "entry {} was changed after it was written",
                    head.seq
                ))
            }
            Some(_) => {}
        }
    }
    Ok((entries, chain))
}

/// The lines of a log file as [`read_checked`] counts them.
fn file_lines(text: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// Copies the lines of the file at `path` into the empty log of `db` (see
/// [`AuditLog::in_store`]).
fn import_file(path: &Path, db: &Db) -> Result<()> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Storage(format!(
                "cannot read the audit log {}: {e}",
                path.display()
            )))
        }
    };
    let lines = file_lines(&text);
    let Some(last) = lines.last() else {
        return Ok(());
    };
    let count = u64::try_from(lines.len()).unwrap_or(u64::MAX);
    let store = db.store();
    let empty = read_head(db)?.0.is_none()
        && store
            .get(Table::AuditLog, entry_key(1).as_bytes())?
            .is_none();
    if !empty {
        let already = store
            .get(Table::AuditLog, entry_key(count).as_bytes())?
            .is_some_and(|raw| raw == *last);
        if !already {
            tracing::warn!(file = %path.display(), lines = count,
                "this audit log file is not part of the shared audit log, which another \
                 instance started: it is left as it is; keep it with the other records");
        }
        return Ok(());
    }
    let claim = serde_json::json!({"file": path.display().to_string(), "lines": count,
        "at": rfc3339(now())});
    if !db.insert_new(Table::Meta, IMPORT, &claim)? {
        tracing::warn!(file = %path.display(),
            "another instance is copying its audit log file into the shared audit log; this \
             one is left as it is");
        return Ok(());
    }
    for (seq, line) in (1..).zip(&lines) {
        if !store.compare_and_swap(Table::AuditLog, entry_key(seq).as_bytes(), None, Some(line))? {
            tracing::warn!(file = %path.display(), seq,
                "the shared audit log got an entry while this file was copied into it: the \
                 copy stops before that line; the file is left as it is");
            return Ok(());
        }
    }
    loop {
        let (raw_head, head) = read_head(db)?;
        if head.seq >= count {
            break;
        }
        let new = serde_json::to_vec(&Head {
            seq: count,
            hash: hash(last),
        })
        .map_err(|e| Error::Internal(format!("cannot encode the audit head: {e}")))?;
        if store.compare_and_swap(
            Table::Meta,
            HEAD.as_bytes(),
            raw_head.as_deref(),
            Some(&new),
        )? {
            break;
        }
    }
    tracing::info!(file = %path.display(), lines = count,
        "audit log file copied into the shared store, numbers and hash chain as they were; \
         new entries follow it there");
    Ok(())
}

/// Appends an entry to the file in `data_dir`; returns it once it is on disk.
fn append(
    data_dir: &Path,
    actor: &Actor,
    action: &str,
    target: &str,
    detail: Value,
) -> Result<Entry> {
    let path = path(data_dir);
    let io = |what: &str, e: std::io::Error| {
        Error::Storage(format!("audit log {}: cannot {what}: {e}", path.display()))
    };
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io("open", e))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io("lock", e.into()))?;
    // The lock goes with the file descriptor when `file` is dropped.
    let (seq, prev) = next_link(&mut file).map_err(|e| match e {
        Tail::Io(e) => io("read", e),
        Tail::Damaged => Error::Storage(format!(
            "audit log {}: its last {TAIL_WINDOW} bytes hold no entry; not appending to a \
             damaged log",
            path.display()
        )),
    })?;
    let entry = Entry::new(seq, prev, actor, action, target, detail);
    let mut line = encode_entry(&entry)?;
    line.push(b'\n');
    file.write_all(&line).map_err(|e| io("write", e))?;
    file.sync_data().map_err(|e| io("sync", e))?;
    Ok(entry)
}

/// The log's path in a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

fn hash(line: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, line))
}

/// How far back from the end `append` looks for the last entry.
const TAIL_WINDOW: u64 = 1 << 20;

enum Tail {
    Io(std::io::Error),
    Damaged,
}

/// The `seq` and `prev` of the entry to append.
///
/// A line is one entry, so `seq` is the new line's number, and `prev` the hash of the line
/// before it, whatever that line holds. A crash in the middle of a write can leave a line
/// without its newline: that fragment is sealed with a newline and counted as a line, so the
/// log stays appendable, and [`read_checked`] reports the damaged line.
fn next_link(file: &mut File) -> std::result::Result<(u64, String), Tail> {
    let len = file.seek(SeekFrom::End(0)).map_err(Tail::Io)?;
    if len == 0 {
        return Ok((1, GENESIS.to_owned()));
    }
    let start = len.saturating_sub(TAIL_WINDOW);
    let mut tail = vec![0; usize::try_from(len - start).map_err(|_| Tail::Damaged)?];
    file.seek(SeekFrom::Start(start)).map_err(Tail::Io)?;
    file.read_exact(&mut tail).map_err(Tail::Io)?;
    if !tail.ends_with(b"\n") {
        file.write_all(b"\n").map_err(Tail::Io)?;
        tail.push(b'\n');
    }
    let body = &tail[..tail.len() - 1];
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    if start > 0 {
        // The window's first piece may be the end of a longer line.
        lines.remove(0);
    }
    let last = *lines.last().ok_or(Tail::Damaged)?;
    // The newest line that is an entry, and how many lines follow it.
    let (after, entry) = lines
        .iter()
        .rev()
        .enumerate()
        .find_map(|(i, line)| serde_json::from_slice::<Entry>(line).ok().map(|e| (i, e)))
        .ok_or(Tail::Damaged)?;
    let after = u64::try_from(after).map_err(|_| Tail::Damaged)?;
    Ok((entry.seq + after + 1, hash(last)))
}

/// Every entry of the file in `data_dir`, oldest first, and whether the chain is intact:
/// `Err(reason)` names the first line that does not follow from the one before it.
fn read_checked(data_dir: &Path) -> Result<(Vec<Entry>, std::result::Result<(), String>)> {
    let path = path(data_dir);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Ok(()))),
        Err(e) => {
            return Err(Error::Storage(format!(
                "cannot read the audit log {}: {e}",
                path.display()
            )))
        }
    };
    let mut entries = Vec::new();
    let mut chain = Ok(());
    let mut prev = GENESIS.to_owned();
    for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|e| {
            Error::Storage(format!("cannot read the audit log {}: {e}", path.display()))
        })?;
        let line_no = n + 1;
        match serde_json::from_slice::<Entry>(&line) {
            Ok(entry) => {
                if chain.is_ok() {
                    if entry.prev != prev {
                        chain = Err(format!(
                            "line {line_no} (seq {}) does not follow the line before it",
                            entry.seq
                        ));
                    } else if entry.seq != u64::try_from(line_no).unwrap_or(0) {
                        chain = Err(format!("line {line_no} has seq {}", entry.seq));
                    }
                }
                prev = hash(&line);
                entries.push(entry);
            }
            Err(e) => {
                if chain.is_ok() {
                    chain = Err(format!("line {line_no} is not an entry: {e}"));
                }
                prev = hash(&line);
            }
        }
    }
    Ok((entries, chain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> Actor {
        Actor {
            name: "alice".into(),
            from: "10.0.0.7:5100".into(),
        }
    }

    #[test]
    fn entries_chain_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = append(dir.path(), &actor(), "operator.add", "bob", Value::Null).expect("1");
        assert_eq!((first.seq, first.prev.as_str()), (1, GENESIS));
        let long = "x".repeat(10_000);
        append(
            dir.path(),
            &actor(),
            "approval.reject",
            "req-1",
            serde_json::json!({"reason": long}),
        )
        .expect("2");
        let third = append(
            dir.path(),
            &actor(),
            "certificate.revoke",
            "0a",
            Value::Null,
        )
        .expect("3");
        assert_eq!(third.seq, 3);
        let (entries, chain) = read_checked(dir.path()).expect("read");
        assert_eq!(chain, Ok(()));
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2], third);
        assert_eq!(
            entries[1].detail["reason"].as_str().map(str::len),
            Some(10_000)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(dir.path()))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_edited_line_breaks_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        for target in ["a", "b", "c"] {
            append(
                dir.path(),
                &actor(),
                "credential.create",
                target,
                Value::Null,
            )
            .expect("append");
        }
        let text = std::fs::read_to_string(path(dir.path())).expect("read");
        std::fs::write(path(dir.path()), text.replacen("\"b\"", "\"B\"", 1)).expect("write");
        let (entries, chain) = read_checked(dir.path()).expect("read");
        assert_eq!(entries.len(), 3);
        let why = chain.expect_err("broken");
        assert!(why.contains("line 3"), "{why}");

        let text = std::fs::read_to_string(path(dir.path())).expect("read");
        let without_first: Vec<&str> = text.lines().skip(1).collect();
        std::fs::write(path(dir.path()), without_first.join("\n") + "\n").expect("write");
        let why = read_checked(dir.path())
            .expect("read")
            .1
            .expect_err("broken");
        assert!(why.contains("line 1"), "{why}");
    }

    /// A log file of one entry and then the start of a second one, as a crash in the middle
    /// of its write leaves it.
    fn torn_log() -> tempfile::TempDir {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        append(dir.path(), &actor(), "operator.add", "bob", Value::Null).expect("1");
        OpenOptions::new()
            .append(true)
            .open(path(dir.path()))
            .expect("open")
            .write_all(b"{\"seq\":2,\"at\":\"20")
            .expect("tear");
        dir
    }

    /// A crash in the middle of a write leaves a fragment without its newline: the log stays
    /// appendable, and the check names the damaged line.
    #[test]
    fn a_torn_write_is_sealed_reported_and_does_not_stop_the_log() {
        let dir = torn_log();
        let third = append(
            dir.path(),
            &actor(),
            "certificate.revoke",
            "0a",
            Value::Null,
        )
        .expect("appends after a torn write");
        assert_eq!(third.seq, 3, "the fragment is line 2");
        let fourth = append(dir.path(), &actor(), "credential.create", "k", Value::Null)
            .expect("and goes on");
        assert_eq!(fourth.seq, 4);
        let (entries, chain) = read_checked(dir.path()).expect("read");
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
        let why = chain.expect_err("the damage is reported");
        assert!(why.contains("line 2"), "{why}");
    }

    fn memory_db() -> Db {
        Db::new(std::sync::Arc::new(crate::storage::MemoryStore::default()))
    }

    /// A log in the store, with no file to copy in.
    fn in_memory() -> (AuditLog, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = memory_db();
        (AuditLog::in_store(dir.path(), db.clone()).expect("log"), db)
    }

    fn stored(db: &Db, seq: u64) -> Vec<u8> {
        db.store()
            .get(Table::AuditLog, entry_key(seq).as_bytes())
            .expect("get")
            .expect("entry")
    }

    #[test]
    fn entries_in_the_store_chain_as_lines_do() {
        let (log, db) = in_memory();
        let first = log
            .append(&actor(), "operator.add", "bob", Value::Null)
            .expect("1");
        assert_eq!((first.seq, first.prev.as_str()), (1, GENESIS));
        let second = log
            .append(
                &actor(),
                "approval.reject",
                "req-1",
                serde_json::json!({"reason": "x"}),
            )
            .expect("2");
        assert_eq!(second.seq, 2);
        assert_eq!(second.prev, hash(&stored(&db, 1)));
        assert_eq!(stored(&db, 2), encode_entry(&second).expect("bytes"));
        let (entries, chain) = log.read_checked().expect("read");
        assert_eq!(chain, Ok(()));
        assert_eq!(entries, [first, second]);
    }

    /// An edited entry in the middle breaks the next entry's link; an edited last entry, which
    /// no entry follows yet, no longer matches the head; a removed last entry leaves the head
    /// pointing past the end.
    #[test]
    fn an_edited_or_removed_entry_in_the_store_breaks_the_chain() {
        let (log, db) = in_memory();
        for target in ["a", "b", "c"] {
            log.append(&actor(), "credential.create", target, Value::Null)
                .expect("append");
        }
        let edit = |seq: u64, from: &str, to: &str| {
            let text = String::from_utf8(stored(&db, seq)).expect("utf8");
            assert!(text.contains(from), "{text}");
            db.store()
                .put(
                    Table::AuditLog,
                    entry_key(seq).as_bytes(),
                    text.replacen(from, to, 1).as_bytes(),
                )
                .expect("put");
        };
        edit(2, "\"b\"", "\"B\"");
        let (entries, chain) = log.read_checked().expect("read");
        assert_eq!(entries.len(), 3);
        let why = chain.expect_err("broken");
        assert_eq!(why, "entry 3 (seq 3) does not follow the entry before it");
        edit(2, "\"B\"", "\"b\"");
        assert_eq!(log.read_checked().expect("read").1, Ok(()));

        edit(3, "\"c\"", "\"C\"");
        let why = log.read_checked().expect("read").1.expect_err("broken");
        assert_eq!(why, "entry 3 was changed after it was written");
        edit(3, "\"C\"", "\"c\"");

        db.remove(Table::AuditLog, &entry_key(3)).expect("remove");
        let why = log.read_checked().expect("read").1.expect_err("broken");
        assert_eq!(why, "the log ends at entry 2, but entry 3 was written");

        db.remove(Table::AuditLog, &entry_key(1)).expect("remove");
        let why = log.read_checked().expect("read").1.expect_err("broken");
        assert_eq!(why, "entry 1 (seq 2) does not follow the entry before it");
    }

    /// A writer that stopped between inserting its entry and moving the head: the next append
    /// moves the head past that entry and chains onto it.
    #[test]
    fn an_entry_the_head_does_not_count_yet_is_chained_onto() {
        let (log, db) = in_memory();
        log.append(&actor(), "operator.add", "bob", Value::Null)
            .expect("1");
        let head = db
            .store()
            .get(Table::Meta, HEAD.as_bytes())
            .expect("get")
            .expect("head");
        log.append(&actor(), "operator.add", "carol", Value::Null)
            .expect("2");
        // Back to the head as it was before entry 2: as if its writer died after the insert.
        db.store()
            .put(Table::Meta, HEAD.as_bytes(), &head)
            .expect("put");
        let third = log
            .append(&actor(), "operator.revoke", "bob", Value::Null)
            .expect("3");
        assert_eq!(third.seq, 3);
        assert_eq!(third.prev, hash(&stored(&db, 2)));
        let (entries, chain) = log.read_checked().expect("read");
        assert_eq!(chain, Ok(()));
        assert_eq!(
            entries
                .iter()
                .map(|e| e.target.as_str())
                .collect::<Vec<_>>(),
            ["bob", "carol", "bob"]
        );
    }

    /// Two handles on one store (two instances), each with two threads appending: every number
    /// once, 1 to 2000, one chain. (The in-memory store answers fast, so it takes many appends
    /// for the threads to meet between reading the head and inserting;
    /// tests/multi_instance.rs runs this on PostgreSQL.)
    #[test]
    fn concurrent_appenders_on_one_store_make_one_chain() {
        let db = memory_db();
        let dirs = [
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        ];
        let logs: Vec<AuditLog> = dirs
            .iter()
            .map(|d| AuditLog::in_store(d.path(), db.clone()).expect("log"))
            .collect();
        let start = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (log, start) = (&logs[t % 2], &start);
                s.spawn(move || {
                    start.wait();
                    for i in 0..500 {
                        log.append(&actor(), "test", &format!("{t}-{i}"), Value::Null)
                            .expect("append");
                    }
                });
            }
        });
        let (entries, chain) = logs[0].read_checked().expect("read");
        assert_eq!(chain, Ok(()));
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=2000).collect::<Vec<_>>()
        );
        assert_eq!(logs[1].read_all().expect("read"), entries);
    }

    /// A file log is copied into an empty store line for line, a torn line included, so the
    /// check reads the same; new entries follow it; a second start copies nothing again.
    #[test]
    fn a_file_log_is_copied_into_an_empty_store_as_it_is() {
        let dir = torn_log();
        append(
            dir.path(),
            &actor(),
            "certificate.revoke",
            "0a",
            Value::Null,
        )
        .expect("3");
        let from_file = read_checked(dir.path()).expect("read");

        let db = memory_db();
        let log = AuditLog::in_store(dir.path(), db.clone()).expect("log");
        let (entries, chain) = log.read_checked().expect("read");
        assert_eq!(entries, from_file.0);
        let why = chain.expect_err("the torn line is reported");
        assert!(why.starts_with("entry 2 is not an entry"), "{why}");
        let text = std::fs::read(path(dir.path())).expect("file");
        let lines = file_lines(&text);
        assert_eq!(stored(&db, 2), lines[1]);
        let fourth = log
            .append(&actor(), "credential.create", "k", Value::Null)
            .expect("4");
        assert_eq!(fourth.seq, 4);
        assert_eq!(fourth.prev, hash(lines[2]));

        let again = AuditLog::in_store(dir.path(), db.clone()).expect("log");
        let (entries, chain) = again.read_checked().expect("read");
        assert_eq!(entries.len(), 3);
        assert_eq!(
            chain,
            Err(why),
            "the torn line is still reported, nothing else"
        );
        assert_eq!(entries.last(), Some(&fourth));

        // Another instance's file, once the store has a log of its own, stays where it is.
        let other = tempfile::tempdir().expect("tempdir");
        append(other.path(), &actor(), "operator.add", "eve", Value::Null).expect("1");
        AuditLog::in_store(other.path(), db.clone()).expect("log");
        assert_eq!(again.read_all().expect("read").len(), 3);
    }

    #[test]
    fn concurrent_appenders_never_repeat_a_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        append(&d, &actor(), "test", &format!("{t}-{i}"), Value::Null)
                            .expect("append");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let (entries, chain) = read_checked(dir.path()).expect("read");
        assert_eq!(chain, Ok(()));
        assert_eq!(entries.len(), 100);
    }
}
