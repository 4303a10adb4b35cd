//! The audit log: every change an operator makes, who made it, when and from where.
//!
//! One file, `<data_dir>/audit.log`, one JSON object per line, only ever appended to: it is
//! opened with `O_APPEND`, never truncated or rewritten, and each line is on disk (fsync)
//! before the change it records is reported done. The console, the socket API and the command
//! line (which edits the operator's files while the CA may or may not run) append to the same
//! file under an exclusive `flock`, so lines never interleave and numbers never repeat.
//!
//! Each entry carries `seq` (1, 2, …) and `prev`, the SHA-256 of the previous line's bytes
//! (64 zeros for the first), so [`verify`] notices a line edited, removed or reordered after
//! the fact. That is evidence, not prevention: whoever can write the data directory can
//! rewrite the whole chain; ship the file to a log host for that.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// 1 for the first line, then one more per line.
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
    /// SHA-256 (hex) of the previous line.
    pub prev: String,
}

/// Appends an entry; returns it once it is on disk.
pub fn append(
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
    let entry = Entry {
        seq,
        at: rfc3339(now()),
        actor: actor.name.clone(),
        from: actor.from.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail,
        prev,
    };
    let mut line = serde_json::to_vec(&entry)
        .map_err(|e| Error::Internal(format!("cannot encode an audit entry: {e}")))?;
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

/// Every entry, oldest first.
pub fn read_all(data_dir: &Path) -> Result<Vec<Entry>> {
    Ok(read_checked(data_dir)?.0)
}

/// Every entry, oldest first, and whether the chain is intact: `Err(reason)` names the first
/// line that does not follow from the one before it.
pub fn read_checked(data_dir: &Path) -> Result<(Vec<Entry>, std::result::Result<(), String>)> {
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

    /// A crash in the middle of a write leaves a fragment without its newline: the log stays
    /// appendable, and the check names the damaged line.
    #[test]
    fn a_torn_write_is_sealed_reported_and_does_not_stop_the_log() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        append(dir.path(), &actor(), "operator.add", "bob", Value::Null).expect("1");
        OpenOptions::new()
            .append(true)
            .open(path(dir.path()))
            .expect("open")
            .write_all(b"{\"seq\":2,\"at\":\"20")
            .expect("tear");
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
