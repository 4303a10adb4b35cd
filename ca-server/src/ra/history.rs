//! What retention keeps for good of a certificate past notAfter plus `storage.retention`, in
//! [`Table::History`], in a binary form small enough that renewing every week for years does
//! not grow the store much:
//!
//! | key | value | per |
//! |-----|-------|-----|
//! | `h` ‖ device id (8 bytes) | [`History`]: account and identifiers once, then per certificate serial, validity, issuer, key type, profile and revocation ([`Entry`], about 32 bytes) | account and identifier set |
//! | `s` ‖ serial | the device id | certificate |
//! | `k` ‖ SHA-256 of the key's SubjectPublicKeyInfo | first certified (8 bytes) ‖ serial: the retired [`KeyUse`] | certificate |
//!
//! The device id is the start of a SHA-256 of the account and identifiers, so the pruner
//! finds a device's record without an index; a record of another device under the same id
//! (a collision) moves the next one to the next of [`PROBES`] ids.
//!
//! Readers go through [`certificate`], which reads the certificates table first: a record
//! there (full, or reduced by an older version) wins over the history, so a crash or a
//! revocation between the pruner's steps never shows an outdated entry. The pruner
//! (`ra::retention`) writes the entry, then the serial index, then removes the certificate
//! record; it moves reduced records of older versions here the same way.

use crate::ca::cert::{Certificate, Reduced, Revocation, RevokedBy};
use crate::ca::IssuerKind;
use crate::ra::keycheck::KeyUse;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::Identifier;
use crate::{Error, Result};

const DEVICE: u8 = b'h';
const SERIAL: u8 = b's';
const KEY: u8 = b'k';
const VERSION: u8 = 1;
/// Device ids tried for one account and identifier set before giving up.
pub const PROBES: u8 = 16;

/// One device's reduced certificates: one record per account and identifier set.
#[derive(Clone, Debug)]
pub struct History {
    /// Account that ordered them.
    pub account_id: String,
    /// Certified identifiers.
    pub identifiers: Vec<Identifier>,
    /// The certificates, in the order they were reduced.
    pub entries: Vec<Entry>,
}

/// One reduced certificate.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Serial number's bytes.
    pub serial: Vec<u8>,
    /// Validity, Unix times.
    pub not_before: i64,
    /// Validity end.
    pub not_after: i64,
    /// The intermediate that signed it.
    pub issuer: IssuerKind,
    /// The certified key's type, e.g. "ECDSA P-256".
    pub key_type: String,
    /// The certificate profile.
    pub profile: Option<String>,
    /// Set once revoked.
    pub revoked: Option<Revocation>,
}

impl Entry {
    /// The entry of `cert`, whose key is of `key_type`; `None` for a serial that is not hex.
    pub fn of(cert: &Certificate, key_type: String) -> Option<Self> {
        let serial = hex::decode(&cert.id).ok().filter(|s| s.len() <= 255)?;
        Some(Self {
            serial,
            not_before: cert.not_before,
            not_after: cert.not_after,
            issuer: cert.issuer,
            key_type,
            profile: cert.profile.clone(),
            revoked: cert.revoked.clone(),
        })
    }
}

impl History {
    /// The certificate record `entry` stands for, as [`Certificate::reduce`] makes it.
    pub fn certificate(&self, entry: &Entry) -> Certificate {
        Certificate {
            id: hex::encode(&entry.serial),
            account_id: self.account_id.clone(),
            order_id: String::new(),
            identifiers: self.identifiers.clone(),
            der: String::new(),
            chain_pem: String::new(),
            issuer: entry.issuer,
            not_before: entry.not_before,
            not_after: entry.not_after,
            revoked: entry.revoked.clone(),
            replaced_by: None,
            renew_after: None,
            profile: entry.profile.clone(),
            source: None,
            reduced: Some(Reduced {
                key_type: entry.key_type.clone(),
            }),
        }
    }

    /// Every reduced certificate of the device.
    pub fn certificates(&self) -> impl Iterator<Item = Certificate> + '_ {
        self.entries.iter().map(|e| self.certificate(e))
    }

    fn entry_mut(&mut self, serial: &[u8]) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.serial == serial)
    }

    /// Adds `entry`, or replaces the one with its serial. A revocation is never undone: one
    /// the entry has stays when `entry` (copied from a record read before it) has none.
    fn put(&mut self, entry: Entry) {
        match self.entry_mut(&entry.serial) {
            Some(e) => {
                let revoked = entry.revoked.clone().or_else(|| e.revoked.take());
                *e = entry;
                e.revoked = revoked;
            }
            None => self.entries.push(entry),
        }
    }

    /// The binary form: version, account and identifiers (JSON) once, the key types and
    /// profiles once each, then per certificate serial, notAfter, validity, flags, key type
    /// and profile (as indexes) and the revocation, if any.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut key_types: Vec<&str> = Vec::new();
        let mut profiles: Vec<&str> = Vec::new();
        for e in &self.entries {
            if !key_types.contains(&e.key_type.as_str()) {
                key_types.push(&e.key_type);
            }
            if let Some(p) = &e.profile {
                if !profiles.contains(&p.as_str()) {
                    profiles.push(p);
                }
            }
        }
        let mut out = vec![VERSION];
        put_str16(&mut out, self.account_id.as_bytes())?;
        let ids = serde_json::to_vec(&self.identifiers)
            .map_err(|e| Error::Internal(format!("cannot encode identifiers: {e}")))?;
        put_str16(&mut out, &ids)?;
        for table in [&key_types, &profiles] {
            out.push(small(table.len())?);
            for s in table.iter() {
                out.push(small(s.len())?);
                out.extend_from_slice(s.as_bytes());
            }
        }
        let index =
            |table: &[&str], s: &str| small(table.iter().position(|t| *t == s).unwrap_or(0));
        for e in &self.entries {
            out.push(small(e.serial.len())?);
            out.extend_from_slice(&e.serial);
            out.extend_from_slice(&e.not_after.to_be_bytes());
            let validity = e
                .not_after
                .checked_sub(e.not_before)
                .and_then(|v| u32::try_from(v).ok());
            let mut flags = 0;
            if e.issuer == IssuerKind::Rsa {
                flags |= F_RSA;
            }
            if e.profile.is_some() {
                flags |= F_PROFILE;
            }
            if e.revoked.is_some() {
                flags |= F_REVOKED;
            }
            if validity.is_none() {
                flags |= F_NOT_BEFORE;
            }
            out.push(flags);
            match validity {
                Some(v) => out.extend_from_slice(&v.to_be_bytes()),
                None => out.extend_from_slice(&e.not_before.to_be_bytes()),
            }
            out.push(index(&key_types, &e.key_type)?);
            if let Some(p) = &e.profile {
                out.push(index(&profiles, p)?);
            }
            if let Some(r) = &e.revoked {
                out.push(r.reason);
                out.extend_from_slice(&r.at.to_be_bytes());
                out.push(match r.by {
                    None => 0,
                    Some(RevokedBy::Account) => 1,
                    Some(RevokedBy::AuthorizationHolder) => 2,
                    Some(RevokedBy::CertificateKey) => 3,
                    Some(RevokedBy::Operator) => 4,
                });
                let mut rflags = 0;
                if r.issuer == IssuerKind::Rsa {
                    rflags |= F_RSA;
                }
                match r.not_after {
                    Some(t) if t == e.not_after => rflags |= R_NOT_AFTER_SAME,
                    Some(_) => rflags |= R_NOT_AFTER,
                    None => {}
                }
                out.push(rflags);
                if let Some(t) = r.not_after.filter(|t| *t != e.not_after) {
                    out.extend_from_slice(&t.to_be_bytes());
                }
            }
        }
        Ok(out)
    }

    /// Reads [`History::encode`]'s form; a storage error for anything else.
    pub fn decode(raw: &[u8]) -> Result<Self> {
        let mut r = Reader(raw);
        if r.u8()? != VERSION {
            return Err(corrupt("unknown version"));
        }
        let len = r.u16()?;
        let account_id = String::from_utf8(r.bytes(len)?.to_vec())
            .map_err(|_| corrupt("account is not UTF-8"))?;
        let len = r.u16()?;
        let identifiers = serde_json::from_slice(r.bytes(len)?)
            .map_err(|e| corrupt(&format!("identifiers: {e}")))?;
        let mut tables: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        for table in &mut tables {
            for _ in 0..r.u8()? {
                let len = usize::from(r.u8()?);
                let s = String::from_utf8(r.bytes(len)?.to_vec())
                    .map_err(|_| corrupt("name is not UTF-8"))?;
                table.push(s);
            }
        }
        let [key_types, profiles] = tables;
        let pick = |table: &[String], i: u8| {
            table
                .get(usize::from(i))
                .cloned()
                .ok_or_else(|| corrupt("index out of range"))
        };
        let mut entries = Vec::new();
        while !r.0.is_empty() {
            let len = usize::from(r.u8()?);
            let serial = r.bytes(len)?.to_vec();
            let not_after = r.i64()?;
            let flags = r.u8()?;
            let not_before = if flags & F_NOT_BEFORE != 0 {
                r.i64()?
            } else {
                not_after
                    .checked_sub(i64::from(r.u32()?))
                    .ok_or_else(|| corrupt("validity out of range"))?
            };
            let issuer = if flags & F_RSA != 0 {
                IssuerKind::Rsa
            } else {
                IssuerKind::Ec
            };
            let key_type = pick(&key_types, r.u8()?)?;
            let profile = if flags & F_PROFILE != 0 {
                Some(pick(&profiles, r.u8()?)?)
            } else {
                None
            };
            let revoked = if flags & F_REVOKED != 0 {
                let reason = r.u8()?;
                let at = r.i64()?;
                let by = match r.u8()? {
                    0 => None,
                    1 => Some(RevokedBy::Account),
                    2 => Some(RevokedBy::AuthorizationHolder),
                    3 => Some(RevokedBy::CertificateKey),
                    4 => Some(RevokedBy::Operator),
                    _ => return Err(corrupt("unknown revoker")),
                };
                let rflags = r.u8()?;
                let not_after = if rflags & R_NOT_AFTER_SAME != 0 {
                    Some(not_after)
                } else if rflags & R_NOT_AFTER != 0 {
                    Some(r.i64()?)
                } else {
                    None
                };
                Some(Revocation {
                    reason,
                    at,
                    not_after,
                    issuer: if rflags & F_RSA != 0 {
                        IssuerKind::Rsa
                    } else {
                        IssuerKind::Ec
                    },
                    by,
                })
            } else {
                None
            };
            entries.push(Entry {
                serial,
                not_before,
                not_after,
                issuer,
                key_type,
                profile,
                revoked,
            });
        }
        Ok(Self {
            account_id,
            identifiers,
            entries,
        })
    }
}

const F_RSA: u8 = 1;
const F_PROFILE: u8 = 2;
const F_REVOKED: u8 = 4;
const F_NOT_BEFORE: u8 = 8;
const R_NOT_AFTER_SAME: u8 = 2;
const R_NOT_AFTER: u8 = 4;

fn corrupt(what: &str) -> Error {
    Error::Storage(format!("history record unreadable: {what}"))
}

fn small(n: usize) -> Result<u8> {
    u8::try_from(n).map_err(|_| Error::Internal(format!("history record: {n} does not fit a byte")))
}

fn put_str16(out: &mut Vec<u8>, s: &[u8]) -> Result<()> {
    let len = u16::try_from(s.len())
        .map_err(|_| Error::Internal("history record: a field is over 64 KiB".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<usize> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }
}

fn keyed(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

/// The `probe`th device id of an account and identifier set.
fn device_id(account_id: &str, identifiers: &[Identifier], probe: u8) -> Result<[u8; 8]> {
    let ids = serde_json::to_vec(identifiers)
        .map_err(|e| Error::Internal(format!("cannot encode identifiers: {e}")))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(account_id.as_bytes());
    ctx.update(&[0]);
    ctx.update(&ids);
    ctx.update(&[probe]);
    let mut id = [0; 8];
    id.copy_from_slice(&ctx.finish().as_ref()[..8]);
    Ok(id)
}

/// Adds `cert` (its key of `key_type`) to its device's history, or replaces its entry there,
/// and indexes its serial. `Ok(false)` if its serial is not hex: it stays where it is.
pub fn fold(app: &Ra, cert: &Certificate, key_type: String) -> Result<bool> {
    let Some(entry) = Entry::of(cert, key_type) else {
        return Ok(false);
    };
    let store = app.db.store();
    'probe: for probe in 0..PROBES {
        let id = device_id(&cert.account_id, &cert.identifiers, probe)?;
        let key = keyed(DEVICE, &id);
        loop {
            let raw = store.get(Table::History, &key)?;
            let mut history = match &raw {
                None => History {
                    account_id: cert.account_id.clone(),
                    identifiers: cert.identifiers.clone(),
                    entries: Vec::new(),
                },
                Some(raw) => match History::decode(raw) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(error = %e, "retention: history record skipped");
                        continue 'probe;
                    }
                },
            };
            if history.account_id != cert.account_id || history.identifiers != cert.identifiers {
                continue 'probe;
            }
            history.put(entry.clone());
            let new = history.encode()?;
            if raw.as_deref() == Some(new.as_slice())
                || store.compare_and_swap(Table::History, &key, raw.as_deref(), Some(&new))?
            {
                break;
            }
        }
        store.put(Table::History, &keyed(SERIAL, &entry.serial), &id)?;
        return Ok(true);
    }
    Err(Error::Storage(format!(
        "no free history record for the device of certificate {}",
        cert.id
    )))
}

/// The history record holding `serial` (hex), its key and stored bytes.
fn find(app: &Ra, serial: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let store = app.db.store();
    let Some(id) = store.get(Table::History, &keyed(SERIAL, serial))? else {
        return Ok(None);
    };
    let key = keyed(DEVICE, &id);
    Ok(store.get(Table::History, &key)?.map(|raw| (key, raw)))
}

/// The reduced certificate `serial` (hex) from the history, if there.
pub fn reduced(app: &Ra, serial: &str) -> Result<Option<Certificate>> {
    let Ok(bytes) = hex::decode(serial) else {
        return Ok(None);
    };
    let Some((_, raw)) = find(app, &bytes)? else {
        return Ok(None);
    };
    let history = History::decode(&raw)?;
    Ok(history
        .entries
        .iter()
        .find(|e| e.serial == bytes)
        .map(|e| history.certificate(e)))
}

/// The certificate `serial` (hex): its record in the certificates table (full, or reduced by
/// an older version), else its reduced entry in the history.
pub fn certificate(app: &Ra, serial: &str) -> Result<Option<Certificate>> {
    match app.db.get::<Certificate>(Table::Certificates, serial)? {
        Some(c) => Ok(Some(c)),
        None => reduced(app, serial),
    }
}

/// Every reduced certificate in the history.
pub fn all(app: &Ra) -> Result<Vec<Certificate>> {
    let mut out = Vec::new();
    for (_, raw) in app.db.store().scan_prefix(Table::History, &[DEVICE])? {
        out.extend(History::decode(&raw)?.certificates());
    }
    Ok(out)
}

/// Read-modify-write of the reduced certificate `serial` (hex) in the history under
/// compare-and-swap, as [`crate::storage::Db::update`] does for a record: `f` sees the
/// certificate and returns it changed; of a reduced certificate only the revocation is kept.
/// `Ok(None)` if the history does not hold it.
pub fn update(
    app: &Ra,
    serial: &str,
    mut f: impl FnMut(Certificate) -> Result<Certificate>,
) -> Result<Option<Certificate>> {
    let Ok(bytes) = hex::decode(serial) else {
        return Ok(None);
    };
    loop {
        let Some((key, raw)) = find(app, &bytes)? else {
            return Ok(None);
        };
        let mut history = History::decode(&raw)?;
        let Some(entry) = history.entries.iter().find(|e| e.serial == bytes) else {
            return Ok(None);
        };
        let changed = f(history.certificate(entry))?;
        if let Some(e) = history.entry_mut(&bytes) {
            e.revoked.clone_from(&changed.revoked);
        }
        let new = history.encode()?;
        if new == raw
            || app
                .db
                .store()
                .compare_and_swap(Table::History, &key, Some(&raw), Some(&new))?
        {
            return Ok(Some(changed));
        }
    }
}

/// Keeps the key-use record `used` of the key `fingerprint` (hex) retired: its serial and
/// first time only, the holder being in the certificate. `Ok(false)` if the fingerprint or
/// serial is not hex.
pub fn retire_key(app: &Ra, fingerprint: &str, used: &KeyUse) -> Result<bool> {
    let (Ok(fp), Ok(serial)) = (hex::decode(fingerprint), hex::decode(&used.serial)) else {
        return Ok(false);
    };
    let mut value = used.first_certified.to_be_bytes().to_vec();
    value.extend_from_slice(&serial);
    app.db
        .store()
        .put(Table::History, &keyed(KEY, &fp), &value)?;
    Ok(true)
}

/// The retired key-use record of the key `fingerprint` (hex), if the history holds one.
pub fn retired_key(app: &Ra, fingerprint: &str) -> Result<Option<KeyUse>> {
    let Ok(fp) = hex::decode(fingerprint) else {
        return Ok(None);
    };
    let Some(raw) = app.db.store().get(Table::History, &keyed(KEY, &fp))? else {
        return Ok(None);
    };
    let mut r = Reader(&raw);
    let first_certified = r.i64()?;
    Ok(Some(KeyUse {
        serial: hex::encode(r.0),
        first_certified,
        ..KeyUse::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::IdentifierType;

    fn entry(serial: u8, revoked: Option<Revocation>) -> Entry {
        Entry {
            serial: vec![serial; 16],
            not_before: 1_700_000_000,
            not_after: 1_700_000_000 + 7 * 86_400,
            issuer: IssuerKind::Ec,
            key_type: "ECDSA P-256".into(),
            profile: Some("default".into()),
            revoked,
        }
    }

    fn history(entries: Vec<Entry>) -> History {
        History {
            account_id: "acct".into(),
            identifiers: vec![Identifier {
                kind: IdentifierType::Dns,
                value: "dev-1.plant.example".into(),
            }],
            entries,
        }
    }

    #[test]
    fn encodes_and_decodes_every_field_in_about_32_bytes_a_certificate() {
        let revoked = Revocation {
            reason: 1,
            at: 1_700_000_100,
            not_after: Some(1_700_000_000 + 7 * 86_400),
            issuer: IssuerKind::Rsa,
            by: Some(RevokedBy::CertificateKey),
        };
        let mut odd = entry(3, None);
        odd.not_before = odd.not_after + 5;
        odd.profile = None;
        odd.issuer = IssuerKind::Rsa;
        odd.key_type = "RSA 2048".into();
        let mut other_not_after = revoked.clone();
        other_not_after.not_after = Some(42);
        other_not_after.by = None;
        let h = history(vec![
            entry(1, None),
            entry(2, Some(revoked)),
            odd,
            entry(4, Some(other_not_after)),
        ]);
        let raw = h.encode().expect("encode");
        let back = History::decode(&raw).expect("decode");
        assert_eq!(
            format!("{:?}", back.certificates().collect::<Vec<_>>()),
            format!("{:?}", h.certificates().collect::<Vec<_>>())
        );
        let one = history(vec![entry(1, None)]).encode().expect("one");
        let two = history(vec![entry(1, None), entry(5, None)])
            .encode()
            .expect("two");
        assert!(
            two.len() - one.len() <= 32,
            "{} bytes",
            two.len() - one.len()
        );
        // Every truncation is an error, never a panic or a shorter history.
        for n in 0..raw.len() {
            if let Ok(h) = History::decode(&raw[..n]) {
                assert!(h.entries.len() < 4, "{n}");
            }
        }
        assert!(History::decode(&[9, 0, 0]).is_err());
    }
}
