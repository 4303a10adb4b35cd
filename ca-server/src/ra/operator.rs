//! Operators of the console and what each may do.
//!
//! An operator is a name, a role and the one client certificate the operator CA
//! ([`crate::ca::operator`]) issued for it. The record, not the certificate, is what grants
//! access: a request is an operator's only when its TLS client certificate is, byte for byte
//! (by SHA-256), the one on record and the record is not revoked. Revoking takes effect on the
//! next request, with no CRL to wait for, and a certificate the operator CA signed that has no
//! record (a leftover, a replaced one) grants nothing.
//!
//! Records are files, `<data_dir>/operators/NAME.json` (mode 0600 in a 0700 directory), like
//! the other state the operator owns, so `ca-server operator add` works whether or not the CA
//! is running.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ca::operator::{OperatorCa, OperatorCredential};
use crate::fsutil::{ensure_private_dir, json_file_stems, read_json, write_atomic};
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

/// The operator records of a data directory.
pub struct OperatorStore {
    dir: PathBuf,
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

impl OperatorStore {
    /// Records live in `<data_dir>/operators`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("operators"),
        }
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
    /// first); a revoked one is replaced.
    pub fn add(&self, op: &Operator) -> Result<()> {
        if let Some(old) = self.get(&op.name)? {
            if old.revoked.is_none() {
                return Err(Error::Exists(format!(
                    "operator {:?} exists; revoke it first to issue a new certificate",
                    op.name
                )));
            }
        }
        self.write(op)
    }

    /// One operator by name.
    pub fn get(&self, name: &str) -> Result<Option<Operator>> {
        read_json(&self.path(name)?, "operator record")
    }

    /// Every operator, by name.
    pub fn list(&self) -> Result<Vec<Operator>> {
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
    pub fn revoke(&self, name: &str, by: &str) -> Result<Option<Operator>> {
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
/// use) and records it with `role`; `by` names who asked. Returns the record and the new
/// certificate and key, which exist nowhere else: the caller hands them over once.
pub fn create(
    data_dir: &Path,
    name: &str,
    role: Role,
    validity: std::time::Duration,
    by: &str,
) -> Result<(Operator, OperatorCredential)> {
    check_name(name)?;
    let store = OperatorStore::new(data_dir);
    if store.get(name)?.is_some_and(|o| o.revoked.is_none()) {
        return Err(Error::Exists(format!(
            "operator {name:?} exists; revoke it first to issue a new certificate"
        )));
    }
    let ca = OperatorCa::load_or_init(&data_dir.join("ca"))?;
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
