//! Operators of the console and what each may do.
//!
//! An operator is a name, a role and the one client certificate the operator CA
//! ([`crate::ca::operator`]) issued for it. The record, not the certificate, is what grants
//! access: a request is an operator's only when its TLS client certificate is, byte for byte
//! (by SHA-256), the one on record and the record is not revoked. Revoking takes effect on the
//! next request, with no CRL to wait for, and a certificate the operator CA signed that has no
//! record (a leftover, a replaced one) grants nothing.
//!
//! With the embedded store records are files, `<data_dir>/operators/NAME.json` (mode 0600 in a
//! 0700 directory), like the other state the operator owns, so `ca-server operator add` works
//! whether or not the CA is running. With a store that several CA instances share
//! (PostgreSQL), records are records of that store ([`Table::Operators`], the name its key),
//! which the commands reach through the CA's configuration: an operator added at one instance
//! gets into the console of every instance, and one revoked at any instance is refused by all
//! with their next request, since every request reads the record. Operator files found in the
//! data directory at start are copied into the store once ([`OperatorStore::in_store`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ca::operator::{OperatorCa, OperatorCredential};
use crate::fsutil::{ensure_private_dir, json_file_stems, read_json, write_atomic};
use crate::storage::{Db, Table};
use crate::types::now;
use crate::{Error, Result};

/// What an operator may do; each role may do everything the roles before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything: fleet, certificates, approvals, credentials (never their keys),
    /// trust anchors, operators, the audit log, the configuration (secrets redacted).
    Viewer,
    /// Also approves and rejects devices waiting for approval, and makes devices renew early.
    Approver,
    /// Also revokes certificates, manages credentials, trust anchors, identities and operators.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Self; 3] = [Self::Viewer, Self::Approver, Self::Admin];

    /// The role's name on the command line and the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Approver => "approver",
            Self::Admin => "admin",
        }
    }

    /// Parses `viewer`, `approver` or `admin`.
    pub fn parse(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| {
                Error::Malformed(format!(
                    "unknown role {text:?}: say viewer, approver or admin"
                ))
            })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operator {
    /// The name, also the certificate's CN.
    pub name: String,
    /// What the operator may do.
    pub role: Role,
    /// The certificate's serial number, hex.
    pub serial: String,
    /// SHA-256 of the certificate (DER), hex: what a request's client certificate must match.
    pub sha256: String,
    /// When the record was made, Unix seconds.
    pub created: i64,
    /// Who made it (an operator's name, or `cli` with the local user).
    pub created_by: String,
    /// The certificate's notAfter, Unix seconds.
    pub not_after: i64,
    /// Set when revoked: when and by whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revoked>,
}

/// When and by whom an operator was revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revoked {
    /// Unix seconds.
    pub at: i64,
    /// Who revoked it.
    pub by: String,
}

impl Operator {
    /// Whether the record grants access now.
    pub fn active(&self, at: i64) -> bool {
        self.revoked.is_none() && at < self.not_after
    }
}

/// Where the operator records are: the operator directory of a data directory, or the store
/// several CA instances share.
pub struct OperatorStore {
    dir: PathBuf,
    /// The shared store; `None`: files in `dir`.
    shared: Option<Db>,
}

/// The [`Table::Meta`] key of the SHA-256 (hex) of the operator CA certificate that the
/// instances sharing a store use.
const SHARED_OPERATOR_CA: &str = "operator_ca_sha256";

/// What an operator file is renamed to once it is copied into the shared store
/// (`NAME.json` → `NAME.json.imported`).
const IMPORTED: &str = "json.imported";

/// The refusal of a second active operator of one name.
fn exists(name: &str) -> Error {
    Error::Exists(format!(
        "operator {name:?} exists; revoke it first to issue a new certificate"
    ))
}

/// The longest operator name: it is a certificate CN (RFC 5280 `ub-common-name`).
const NAME_MAX: usize = 64;

/// Checks an operator name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit. The
/// name is a file name and a CN, and is shown in the audit log and the console, so nothing
/// else is allowed in it.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Malformed(format!(
            "operator name {name:?}: use 1 to {NAME_MAX} of a-z, 0-9, '.', '_' and '-', starting \
             with a letter or digit"
        )))
    }
}

/// What the store keeps of the operator `held` when an instance's file records `file` for the
/// same name (see [`OperatorStore::in_store`]).
fn reconcile(mut held: Operator, file: &Operator) -> Operator {
    if held.sha256.eq_ignore_ascii_case(&file.sha256) {
        if held.revoked.is_none() {
            held.revoked.clone_from(&file.revoked);
        }
        return held;
    }
    if file.created > held.created {
        tracing::warn!(operator = %held.name, "operator records of two instances disagree: the newer certificate stands and the older one no longer gets in");
        return file.clone();
    }
    if file.created == held.created && held.revoked.is_none() {
        tracing::warn!(operator = %held.name, "operator records of two instances disagree and cannot be ordered: the operator is revoked; add it again");
        held.revoked = Some(Revoked {
            at: now(),
            by: "import of conflicting operator records".into(),
        });
    }
    held
}

impl OperatorStore {
    /// The operator CA in `<data_dir>/ca`, made if there is none. With a shared store it must
    /// be the one every instance uses, since an operator's certificate from one is checked at
    /// all: the first instance to load one records its certificate's SHA-256 in the store, and
    /// an instance without that CA (none yet, or one of its own) is refused, with what to copy.
    pub fn operator_ca(&self, data_dir: &Path) -> Result<OperatorCa> {
        let dir = data_dir.join("ca");
        let Some(db) = &self.shared else {
            return OperatorCa::load_or_init(&dir);
        };
        let copy = "copy ca/operator-ca.pem and ca/operator-ca.key from an instance whose \
                    console works into this instance's data directory";
        let recorded: Option<String> = db.get(Table::Meta, SHARED_OPERATOR_CA)?;
        let ca = match &recorded {
            Some(_) => OperatorCa::load(&dir).map_err(|e| {
                Error::Internal(format!(
                    "the instances sharing this store have an operator CA and this one has \
                     none ({e}): {copy}"
                ))
            })?,
            None => OperatorCa::load_or_init(&dir)?,
        };
        let mine = hex::encode(ring::digest::digest(&ring::digest::SHA256, ca.cert_der()));
        let shared = match recorded {
            Some(sha) => sha,
            None if db.insert_new(Table::Meta, SHARED_OPERATOR_CA, &mine)? => mine.clone(),
            None => db.get(Table::Meta, SHARED_OPERATOR_CA)?.unwrap_or_default(),
        };
        if shared != mine {
            return Err(Error::Internal(format!(
                "this instance's operator CA (ca/operator-ca.pem, SHA-256 {mine}) is not the one \
                 the other instances sharing this store use (SHA-256 {shared}): {copy}"
            )));
        }
        Ok(ca)
    }

    /// Records live in `<data_dir>/operators`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("operators"),
            shared: None,
        }
    }

    /// Records live in `db`, which several CA instances share. Operator files found in
    /// `<data_dir>/operators` (made before the CA moved to the shared store, when each instance
    /// kept its own) are copied into it. When the store holds the name already:
    /// - for the same certificate, a revocation the file records is applied (a revocation is
    ///   never undone by a copy);
    /// - for another certificate, the newer record (by `created`) stands, since a name is given
    ///   a new certificate only once its old one is revoked; records made in the same second
    ///   cannot be ordered, and the store's is revoked, so a certificate revoked at one
    ///   instance never comes back through another's stale file.
    ///
    /// Each file is then renamed `NAME.json.imported`, so it is copied once: an operator revoked
    /// in the store later is not brought back active by the file at the next start.
    pub fn in_store(data_dir: &Path, db: Db) -> Result<Self> {
        let files = Self::new(data_dir);
        let mut imported = 0;
        for name in json_file_stems(&files.dir)? {
            // Files that are not records of ours are left alone, as `list` skips them.
            if check_name(&name).is_err() {
                continue;
            }
            let path = files.dir.join(format!("{name}.json"));
            let op = match read_json::<Operator>(&path, "operator record") {
                Ok(Some(op)) if op.name == name => op,
                Ok(Some(_)) => {
                    tracing::warn!(file = %path.display(), "operator record names another operator than its file; not copied into the shared store");
                    continue;
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "operator record cannot be read; not copied into the shared store");
                    continue;
                }
            };
            if db.insert_new(Table::Operators, &name, &op)? {
                imported += 1;
            } else {
                match db.update(Table::Operators, &name, |held: Operator| {
                    Ok(reconcile(held, &op))
                }) {
                    Ok(_) | Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            let moved = files.dir.join(format!("{name}.{IMPORTED}"));
            if let Err(e) = std::fs::rename(&path, &moved) {
                tracing::warn!(file = %path.display(), error = %e, "operator record copied into the shared store but not renamed; it is copied again at each start");
            }
        }
        if imported > 0 {
            tracing::info!(imported, dir = %files.dir.display(), "operator records copied into the shared store; the store's copy is the one in force from now on");
        }
        Ok(Self {
            shared: Some(db),
            ..files
        })
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(format!("{name}.json")))
    }

    fn write(&self, op: &Operator) -> Result<()> {
        let path = self.path(&op.name)?;
        let data = serde_json::to_vec_pretty(op)
            .map_err(|e| Error::Internal(format!("cannot encode operator record: {e}")))?;
        ensure_private_dir(&self.dir)?;
        write_atomic(&path, &data, 0o600)
    }

    /// Stores a new operator. An existing active operator of that name is refused (revoke it
    /// first); a revoked one is replaced. In the shared store both are compare-and-swap, so of
    /// two instances adding one name at once, one adds it and the other is refused.
    pub fn add(&self, op: &Operator) -> Result<()> {
        check_name(&op.name)?;
        if let Some(db) = &self.shared {
            loop {
                if db.insert_new(Table::Operators, &op.name, op)? {
                    return Ok(());
                }
                match db.update(Table::Operators, &op.name, |held: Operator| {
                    if held.revoked.is_none() {
                        Err(exists(&op.name))
                    } else {
                        Ok(op.clone())
                    }
                }) {
                    Ok(_) => return Ok(()),
                    // Gone between the two calls: insert again.
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        if self.get(&op.name)?.is_some_and(|old| old.revoked.is_none()) {
            return Err(exists(&op.name));
        }
        self.write(op)
    }

    /// One operator by name.
    pub fn get(&self, name: &str) -> Result<Option<Operator>> {
        if let Some(db) = &self.shared {
            check_name(name)?;
            return db.get(Table::Operators, name);
        }
        read_json(&self.path(name)?, "operator record")
    }

    /// Every operator, by name.
    pub fn list(&self) -> Result<Vec<Operator>> {
        if let Some(db) = &self.shared {
            let mut out: Vec<Operator> = db.values_with_prefix(Table::Operators, "")?;
            out.sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(out);
        }
        let mut out = Vec::new();
        for name in json_file_stems(&self.dir)? {
            // Files that are not records of ours (a temporary file, an editor's backup) are
            // skipped, not errors.
            if check_name(&name).is_err() {
                continue;
            }
            if let Some(op) = self.get(&name)? {
                out.push(op);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The active operator whose certificate has this SHA-256, if any.
    pub fn authenticate(&self, cert_sha256: &str) -> Result<Option<Operator>> {
        let at = now();
        Ok(self
            .list()?
            .into_iter()
            .find(|op| op.sha256.eq_ignore_ascii_case(cert_sha256) && op.active(at)))
    }

    /// Revokes operator `name`; the updated record, or `None` if there is no such operator.
    /// In the shared store a compare-and-swap: a record another instance changes meanwhile is
    /// read again and revoked, never overwritten with what was read before.
    pub fn revoke(&self, name: &str, by: &str) -> Result<Option<Operator>> {
        if let Some(db) = &self.shared {
            check_name(name)?;
            let at = now();
            return match db.update(Table::Operators, name, |mut op: Operator| {
                if op.revoked.is_none() {
                    op.revoked = Some(Revoked {
                        at,
                        by: by.to_owned(),
                    });
                }
                Ok(op)
            }) {
                Ok(op) => Ok(Some(op)),
                Err(Error::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            };
        }
        let Some(mut op) = self.get(name)? else {
            return Ok(None);
        };
        if op.revoked.is_none() {
            op.revoked = Some(Revoked {
                at: now(),
                by: by.to_owned(),
            });
            self.write(&op)?;
        }
        Ok(Some(op))
    }
}

/// Issues operator `name` a certificate from the operator CA of `data_dir` (created on first
/// use) and records it in `store` with `role`; `by` names who asked. Returns the record and the
/// new certificate and key, which exist nowhere else: the caller hands them over once.
pub fn create(
    store: &OperatorStore,
    data_dir: &Path,
    name: &str,
    role: Role,
    validity: std::time::Duration,
    by: &str,
) -> Result<(Operator, OperatorCredential)> {
    check_name(name)?;
    if store.get(name)?.is_some_and(|o| o.revoked.is_none()) {
        return Err(exists(name));
    }
    let ca = store.operator_ca(data_dir)?;
    let credential = ca.issue(name, validity)?;
    let op = Operator {
        name: name.to_owned(),
        role,
        serial: credential.serial.clone(),
        sha256: hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &credential.cert_der,
        )),
        created: now(),
        created_by: by.to_owned(),
        not_after: credential.not_after,
        revoked: None,
    };
    store.add(&op)?;
    Ok((op, credential))
}

/// A passphrase for an operator's PKCS#12 file: 20 characters from an alphabet without look-
/// alikes (about 99 bits), in groups of five to be typed into a browser's import dialog.
pub fn new_passphrase() -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut random = [0u8; 20];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| Error::Internal("the system random number generator failed".to_owned()))?;
    let mut out = String::with_capacity(23);
    for (i, r) in random.iter().enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        // 256 is not a multiple of 31: a slight bias, about 0.03 bits of 99 lost.
        out.push(char::from(ALPHABET[usize::from(*r) % ALPHABET.len()]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, sha: &str) -> Operator {
        Operator {
            name: name.into(),
            role: Role::Approver,
            serial: "01".into(),
            sha256: sha.into(),
            created: now(),
            created_by: "test".into(),
            not_after: now() + 3600,
            revoked: None,
        }
    }

    #[test]
    fn only_an_active_record_authenticates_its_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = OperatorStore::new(dir.path());
        store.add(&record("alice", "aa11")).expect("add");
        assert_eq!(
            store.authenticate("AA11").expect("auth").map(|o| o.name),
            Some("alice".to_owned())
        );
        assert!(store.authenticate("bb22").expect("auth").is_none());
        assert!(
            matches!(store.add(&record("alice", "cc33")), Err(Error::Exists(_))),
            "an active operator is not replaced"
        );
        let revoked = store
            .revoke("alice", "bob")
            .expect("revoke")
            .expect("found");
        assert_eq!(revoked.revoked.as_ref().map(|r| r.by.as_str()), Some("bob"));
        assert!(store.authenticate("aa11").expect("auth").is_none());
        store
            .add(&record("alice", "cc33"))
            .expect("re-added after revocation");
        assert!(store.authenticate("aa11").expect("auth").is_none());
        assert!(store.authenticate("cc33").expect("auth").is_some());

        let mut expired = record("carol", "dd44");
        expired.not_after = now() - 1;
        store.add(&expired).expect("add");
        assert!(store.authenticate("dd44").expect("auth").is_none());
    }

    fn shared_db() -> Db {
        Db::new(std::sync::Arc::new(crate::storage::MemoryStore::default()))
    }

    /// Two instances (two handles on one store, each with its own data directory) have one
    /// set of operators: added at one, it authenticates at the other; its name is taken at
    /// both; revoked at either, neither lets it in any more.
    #[test]
    fn the_instances_sharing_a_store_share_one_operator_ca() {
        let db = shared_db();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
        let at = |i: usize| OperatorStore::in_store(dirs[i].path(), db.clone()).expect("store");
        let first = at(0)
            .operator_ca(dirs[0].path())
            .expect("made and recorded");
        // Without the CA files: refused, and none is made.
        let Err(e) = at(1).operator_ca(dirs[1].path()) else {
            panic!("an instance without the CA files was let in");
        };
        assert!(e.to_string().contains("copy ca/operator-ca.pem"), "{e}");
        assert!(!dirs[1].path().join("ca/operator-ca.pem").exists());
        // With an operator CA of its own: refused.
        OperatorCa::load_or_init(&dirs[2].path().join("ca")).expect("own CA");
        let Err(e) = at(2).operator_ca(dirs[2].path()) else {
            panic!("an instance with another operator CA was let in");
        };
        assert!(e.to_string().contains("is not the one"), "{e}");
        // With a copy of the first's: the same CA.
        std::fs::create_dir_all(dirs[1].path().join("ca")).expect("ca dir");
        for f in ["operator-ca.pem", "operator-ca.key"] {
            std::fs::copy(
                dirs[0].path().join("ca").join(f),
                dirs[1].path().join("ca").join(f),
            )
            .expect("copy");
        }
        let copied = at(1).operator_ca(dirs[1].path()).expect("the copy");
        assert_eq!(copied.cert_der(), first.cert_der());
        // Files alone: whatever CA is there, as before.
        OperatorStore::new(dirs[2].path())
            .operator_ca(dirs[2].path())
            .expect("files");
    }

    #[test]
    fn operators_in_a_shared_store_are_the_same_for_every_instance() {
        let db = shared_db();
        let (dir_a, dir_b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let a = OperatorStore::in_store(dir_a.path(), db.clone()).expect("a");
        let b = OperatorStore::in_store(dir_b.path(), db.clone()).expect("b");
        a.add(&record("alice", "aa11")).expect("add at a");
        assert_eq!(
            b.authenticate("aa11").expect("auth").map(|o| o.name),
            Some("alice".to_owned())
        );
        assert!(
            matches!(b.add(&record("alice", "bb22")), Err(Error::Exists(_))),
            "the name is taken at b too"
        );
        assert!(b.authenticate("bb22").expect("auth").is_none());
        let revoked = b.revoke("alice", "bob").expect("revoke").expect("found");
        assert_eq!(revoked.revoked.as_ref().map(|r| r.by.as_str()), Some("bob"));
        assert!(
            a.authenticate("aa11").expect("auth").is_none(),
            "at a at once"
        );
        let again = a.revoke("alice", "carol").expect("again").expect("found");
        assert_eq!(again, revoked, "the first revocation stands");
        assert!(a.revoke("nobody", "bob").expect("revoke").is_none());
        assert!(a.revoke("../x", "bob").is_err(), "names are checked");
        b.add(&record("alice", "cc33"))
            .expect("re-added after revocation");
        assert!(a.authenticate("cc33").expect("auth").is_some());
        a.add(&record("dora", "dd44")).expect("add");
        let names: Vec<String> = b
            .list()
            .expect("list")
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(names, ["alice", "dora"]);
        assert!(
            !dir_a.path().join("operators").exists() && !dir_b.path().join("operators").exists(),
            "no files beside a shared store"
        );
    }

    /// Two instances adding one name at the same moment: one record is written, the other
    /// add is refused, never overwritten; the same for replacing a revoked record.
    #[test]
    fn of_two_instances_adding_one_name_at_once_one_wins() {
        let db = shared_db();
        let dirs = [
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        ];
        let stores: Vec<OperatorStore> = dirs
            .iter()
            .map(|d| OperatorStore::in_store(d.path(), db.clone()).expect("store"))
            .collect();
        for round in 0..20 {
            let name = format!("race-{round}");
            if round % 2 == 1 {
                // A revoked record of that name, which either add may replace.
                stores[0].add(&record(&name, "old")).expect("old");
                stores[0].revoke(&name, "test").expect("revoke");
            }
            let outcomes = crate::testutil::race(2, |i| {
                stores[i].add(&record(&name, &format!("sha-{i}"))).is_ok()
            });
            assert_eq!(
                outcomes.iter().filter(|ok| **ok).count(),
                1,
                "round {round}"
            );
            let winner = usize::from(outcomes[1]);
            let held = stores[1].get(&name).expect("get").expect("held");
            assert_eq!(held.sha256, format!("sha-{winner}"), "round {round}");
            assert!(held.revoked.is_none());
        }
    }

    /// Operator files from before the move to a shared store are copied in once and set aside;
    /// an operator already in the store keeps the store's record, a revocation in the store is
    /// not undone by an older active file, and a revocation a file records for the store's
    /// certificate is applied.
    #[test]
    fn operator_files_are_copied_into_the_shared_store_once() {
        let db = shared_db();
        let dir = tempfile::tempdir().expect("dir");
        let files = OperatorStore::new(dir.path());
        let other = tempfile::tempdir().expect("other");
        let elsewhere = OperatorStore::in_store(other.path(), db.clone()).expect("store");
        // Only in the file: copied.
        files.add(&record("alice", "aa11")).expect("file");
        // Revoked in the store, active in an older file: stays revoked.
        files.add(&record("bob", "bb22")).expect("file");
        elsewhere.add(&record("bob", "bb22")).expect("store");
        elsewhere.revoke("bob", "admin").expect("revoke");
        // Active in the store, revoked in the file, same certificate: revoked.
        files.add(&record("carol", "cc33")).expect("file");
        files.revoke("carol", "admin").expect("revoke");
        elsewhere.add(&record("carol", "CC33")).expect("store");
        // Another certificate in the store than in the file: the newer record stands.
        let made = |name: &str, sha: &str, created: i64| Operator {
            created,
            ..record(name, sha)
        };
        // The store's is newer: kept, the file's older one is not brought in.
        files.add(&made("dora", "dd44", now() - 100)).expect("file");
        files.revoke("dora", "admin").expect("revoke");
        elsewhere.add(&made("dora", "ee55", now())).expect("store");
        // The file's is newer (the store's certificate was replaced at the file's instance):
        // the file's stands, and the old certificate no longer gets in.
        elsewhere
            .add(&made("erin", "0e01", now() - 100))
            .expect("store");
        files.add(&made("erin", "0e02", now())).expect("file");
        // Made in the same second: cannot be ordered, so the store's is revoked.
        let second = now() - 50;
        elsewhere.add(&made("fay", "0f01", second)).expect("store");
        files.add(&made("fay", "0f02", second)).expect("file");
        std::fs::write(dir.path().join("operators/broken.json"), "{").expect("broken");

        let shared = OperatorStore::in_store(dir.path(), db.clone()).expect("import");
        let gets_in = |sha: &str| shared.authenticate(sha).expect("auth").is_some();
        assert!(gets_in("aa11"), "copied");
        assert!(!gets_in("bb22"), "stays revoked");
        assert!(!gets_in("cc33"), "revoked");
        assert!(gets_in("ee55"), "the store's, newer");
        assert!(!gets_in("dd44"), "the file's, older");
        assert!(gets_in("0e02"), "the file's, newer");
        assert!(!gets_in("0e01"), "the store's, older");
        assert!(!gets_in("0f01") && !gets_in("0f02"), "neither, unordered");
        let ops = dir.path().join("operators");
        for name in ["alice", "bob", "carol", "dora", "erin", "fay"] {
            let (file, kept) = (format!("{name}.json"), format!("{name}.json.imported"));
            assert!(
                !ops.join(file).exists() && ops.join(kept).exists(),
                "{name} set aside"
            );
        }
        assert!(
            ops.join("broken.json").exists(),
            "an unreadable file is left"
        );

        // Revoked in the store, alice stays revoked when the instance starts again.
        elsewhere.revoke("alice", "admin").expect("revoke");
        let restarted = OperatorStore::in_store(dir.path(), db).expect("restart");
        assert!(restarted.authenticate("aa11").expect("auth").is_none());
        assert!(
            files.get("alice").expect("file").is_none(),
            "no file in force"
        );
    }

    #[test]
    fn names_are_plain() {
        for good in ["alice", "op-1", "j.smith", "0day_team"] {
            check_name(good).expect(good);
        }
        for bad in [
            "",
            "Alice",
            "../etc",
            "-x",
            ".hidden",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Role::parse("approver").expect("role"), Role::Approver);
        assert!(Role::parse("root").is_err());
        assert!(Role::Viewer < Role::Approver && Role::Approver < Role::Admin);
    }
}
