//! Key hygiene at issuance: the checks finalize runs on a CSR's key after `csr` has applied the
//! algorithm policy (key type, size, exponent, curve, signature hash), and the fleet-wide index
//! of certified keys behind them.
//!
//! Two kinds of refusal, as the ACME problem types split them (RFC 8555 §6.7):
//!
//! - `badPublicKey` when the key itself is unusable by anyone: its private half is public or
//!   computable. That covers keys on a compromised-key blocklist (badkeys format, see
//!   [`blocklist`]), RSA moduli with the ROCA fingerprint, moduli Fermat's method factors, and
//!   moduli with small prime factors (see [`weak`]); also any key whose certificate was revoked
//!   for keyCompromise.
//! - `badCSR` when the key is sound but this request may not bind it: it is the account key of
//!   another account, or it is already certified for another account or other identifiers
//!   (another device). The key is fine for its holder; what is refused is the binding, which is
//!   what "The CSR is unacceptable" says. order.rs refuses the requester's own account key
//!   with `badCSR` for the same reason.
//!
//! Fleet-wide reuse is the industrial failure mode: one key image flashed onto every unit of a
//! product line, or a key copied from a decommissioned device. Every certified key is indexed
//! by the SHA-256 of its SubjectPublicKeyInfo ([`Table::KeyUse`]), and every refused attempt to
//! reuse a key is kept with both identities ([`Table::KeyReuseAttempts`]) for the operator.
//! Refused weak keys and weak CSR signatures are kept too ([`Table::WeakKeyAttempts`], see
//! [`attempts`]). Both tables are bounded per account and in all ([`bounded`]).
//! A renewal (same account, same identifiers) may certify the previous key only when
//! `[keys] allow_renewal_key_reuse` is on; by default every certificate needs a new key, as
//! device-client generates one on every renewal.

pub mod attempts;
pub mod blocklist;
mod bounded;
pub mod weak;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use self::attempts::{WeakKeyAttempt, WeakKind};
use self::blocklist::Blocklist;
use self::bounded::Audited;
use self::weak::Weakness;
use crate::account::Account;
use crate::app::AppState;
use crate::cert::Certificate;
use crate::csr::CsrInfo;
use crate::der;
use crate::key::PublicKey;
use crate::order::Order;
use crate::storage::Table;
use crate::types::now;
use crate::types::Identifier;
use crate::{jwk, Error, Result};

/// The key's SubjectPublicKeyInfo in its one DER form (RFC 5280 §4.1.2.7 with the algorithm
/// identifiers of RFC 3279 §2.3.1, RFC 5480 §2.1.1 and RFC 8410 §3). Built from the
/// normalised key rather than copied from the CSR, so two encodings of one key cannot get two
/// index entries.
pub fn spki_der(key: &PublicKey) -> Vec<u8> {
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    let (algorithm, key_bits) = match key {
        PublicKey::Rsa { n, e } => (
            [der::tlv(der::OID, RSA_ENCRYPTION), der::tlv(der::NULL, &[])].concat(),
            der::tlv(
                der::SEQUENCE,
                &[der::unsigned_integer(n), der::unsigned_integer(e)].concat(),
            ),
        ),
        PublicKey::P256(point) => (
            [der::tlv(der::OID, EC_PUBLIC_KEY), der::tlv(der::OID, P256)].concat(),
            point.clone(),
        ),
        PublicKey::P384(point) => (
            [der::tlv(der::OID, EC_PUBLIC_KEY), der::tlv(der::OID, P384)].concat(),
            point.clone(),
        ),
        PublicKey::Ed25519(raw) => (der::tlv(der::OID, ED25519), raw.clone()),
    };
    der::tlv(
        der::SEQUENCE,
        &[
            der::tlv(der::SEQUENCE, &algorithm),
            der::bit_string(&key_bits),
        ]
        .concat(),
    )
}

/// Lowercase hex SHA-256 of [`spki_der`]: the key of [`Table::KeyUse`], and the same value as
/// `openssl pkey -pubin -outform DER | sha256sum` for the key.
pub fn spki_sha256(key: &PublicKey) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &spki_der(key)))
}

/// The checks on the key alone: refuses (with `badPublicKey`) keys whose private half is
/// known or computable.
pub fn check_key(key: &PublicKey, blocklist: Option<&Blocklist>) -> Result<()> {
    match weakness(key, blocklist) {
        Some((_, detail)) => Err(Error::BadPublicKey(detail)),
        None => Ok(()),
    }
}

/// What [`check_key`] refuses, with the kind recorded for the audit and the detail.
fn weakness(key: &PublicKey, blocklist: Option<&Blocklist>) -> Option<(WeakKind, String)> {
    if let Some(id) = blocklist.and_then(|b| b.lookup(key)) {
        return Some((
            WeakKind::Blocklisted,
            format!(
                "the key is on this CA's compromised-key blocklist (list {id}): its private key \
                 is published, e.g. in a firmware image, documentation or a test suite, or came \
                 from a broken key generator; generate a new key on the device"
            ),
        ));
    }
    let PublicKey::Rsa { n, .. } = key else {
        return None;
    };
    Some(match weak::check_modulus(n)? {
        Weakness::SmallFactor(p) => (
            WeakKind::SmallFactor,
            format!(
                "the RSA modulus is divisible by {p}: the key is corrupt or was not made from \
                 two large primes; generate a new key"
            ),
        ),
        Weakness::Roca => (
            WeakKind::Roca,
            "the RSA key has the ROCA fingerprint (CVE-2017-15361): it was generated by a \
             vulnerable Infineon RSA library and its private key can be computed from the \
             public key; update the TPM or secure element firmware and generate a new key, or \
             use an ECDSA key"
                .to_owned(),
        ),
        Weakness::Fermat { round } => (
            WeakKind::Fermat,
            format!(
                "the RSA modulus is the product of two primes so close together that Fermat's \
                 method factors it (after {} steps): the private key can be computed from the \
                 public key; generate a new key with a sound key generator",
                round + 1
            ),
        ),
    })
}

/// Who a key belongs to, or who asked for it.
///
/// camelCase like every other name in the `audit` JSON; the aliases read records written
/// before that, in snake_case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    /// Account id.
    #[serde(alias = "account_id")]
    pub account_id: String,
    /// Identifiers certified or requested; empty for an account key.
    #[serde(default)]
    pub identifiers: Vec<Identifier>,
    /// The order concerned, if any.
    #[serde(default, alias = "order_id")]
    pub order_id: Option<String>,
    /// The certificate serial (hex), for a certified key.
    #[serde(default)]
    pub serial: Option<String>,
}

/// A certified key: one [`Table::KeyUse`] record, keyed by [`spki_sha256`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyUse {
    /// Account the key is certified for.
    pub account_id: String,
    /// Identifiers the key is certified for.
    pub identifiers: Vec<Identifier>,
    /// The latest certificate for the key (serial hex).
    pub serial: String,
    /// The order of that certificate.
    pub order_id: String,
    /// Key type, e.g. "ECDSA P-256".
    pub key_type: String,
    /// Unix time of the first certificate for this key and binding.
    pub first_certified: i64,
    /// Unix time of the latest.
    pub last_certified: i64,
}

/// Why a key was refused as reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReuseKind {
    /// The key is another account's account key.
    AccountKey,
    /// The key is certified for another account.
    OtherAccount,
    /// The key is certified for the same account but other identifiers (another device).
    OtherDevice,
    /// Same account and identifiers, but renewals must use a new key.
    Renewal,
    /// Another order was being finalized with the same key at the same moment.
    Concurrent,
}

/// A refused reuse attempt: one [`Table::KeyReuseAttempts`] record, keyed by
/// `{unix time in nanoseconds, 20 digits}.{random id}` so a scan lists them in time order.
/// The table keeps the newest [`attempts::MAX_PER_ACCOUNT`] per requesting account and
/// [`attempts::MAX_TOTAL`] in all ([`bounded`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyReuseAttempt {
    /// Unix time.
    pub at: i64,
    /// [`spki_sha256`] of the key.
    #[serde(alias = "spki_sha256")]
    pub spki_sha256: String,
    /// What kind of reuse.
    pub kind: ReuseKind,
    /// The account and order that asked.
    pub attempted: Holder,
    /// Whom the key belongs to.
    pub holder: Holder,
}

impl Audited for KeyReuseAttempt {
    const TABLE: Table = Table::KeyReuseAttempts;
    /// The account that asked: the one whose requests could flood the table.
    fn account(&self) -> &str {
        &self.attempted.account_id
    }
}

impl KeyReuseAttempt {
    /// All recorded attempts, oldest first.
    pub fn list(app: &AppState) -> Result<Vec<Self>> {
        app.db.values_with_prefix(Table::KeyReuseAttempts, "")
    }
}

fn record_attempt(app: &AppState, attempt: &KeyReuseAttempt) -> Result<()> {
    tracing::warn!(
        kind = ?attempt.kind,
        account = %attempt.attempted.account_id,
        holder = %attempt.holder.account_id,
        spki_sha256 = %attempt.spki_sha256,
        "key reuse refused"
    );
    bounded::append(app, attempts::CAPS, attempt)
}

/// The account whose account key is `key`, if any (whatever its status: a deactivated
/// account's key has still been used to sign requests by someone). The key index is written
/// before the account, so an entry the account does not confirm is ignored, as account.rs does.
fn account_with_key(app: &AppState, key: &PublicKey) -> Result<Option<String>> {
    let thumbprint = jwk::thumbprint(key);
    let Some(id) = app.db.get::<String>(Table::AccountKeys, &thumbprint)? else {
        return Ok(None);
    };
    Ok(app
        .db
        .get::<Account>(Table::Accounts, &id)?
        .filter(|a| a.thumbprint == thumbprint)
        .map(|a| a.id))
}

/// Every check on the CSR key at finalize, after `csr::parse_and_verify`: the key itself (see
/// [`check_key`]), another account's account key, and fleet-wide reuse. Refused reuse attempts
/// are recorded. On success the key is reserved for this order until the returned guard is
/// dropped, so two orders cannot certify one key concurrently; call [`Reservation::record`]
/// once the certificate is stored.
pub fn check(
    app: &AppState,
    account: &Account,
    order: &Order,
    csr: &CsrInfo,
) -> Result<Reservation> {
    let key = &csr.public_key;
    // Weak and compromised keys are refused with `badPublicKey` and recorded for the audit.
    let weak = |kind: WeakKind, detail: String| -> Result<Reservation> {
        let error = Error::BadPublicKey(detail);
        attempts::record(app, account, order, kind, attempts::key_facts(key), &error);
        Err(error)
    };
    if let Some((kind, detail)) = weakness(key, app.cfg.keys.blocklist.as_ref().map(|b| &*b.list)) {
        return weak(kind, detail);
    }

    let fingerprint = spki_sha256(key);
    let attempted = Holder {
        account_id: account.id.clone(),
        identifiers: order.identifiers.clone(),
        order_id: Some(order.id.clone()),
        serial: None,
    };
    let refuse = |kind: ReuseKind, holder: Holder, detail: String| -> Result<Reservation> {
        record_attempt(
            app,
            &KeyReuseAttempt {
                at: now(),
                spki_sha256: fingerprint.clone(),
                kind,
                attempted: attempted.clone(),
                holder,
            },
        )?;
        Err(Error::BadCsr(detail))
    };

    // The requester's own account key is refused by order.rs with its own message.
    if let Some(other) = account_with_key(app, key)?.filter(|id| *id != account.id) {
        let holder = Holder {
            account_id: other,
            identifiers: Vec::new(),
            order_id: None,
            serial: None,
        };
        return refuse(
            ReuseKind::AccountKey,
            holder,
            "the certificate key is the account key of another account: generate a new key \
             for the certificate"
                .into(),
        );
    }

    if let Some(used) = app.db.get::<KeyUse>(Table::KeyUse, &fingerprint)? {
        if used.order_id == order.id {
            // A concurrent finalize of this very order won and recorded the key.
            return Err(Error::OrderNotReady("valid".into()));
        }
        let compromised = app
            .db
            .get::<Certificate>(Table::Certificates, &used.serial)?
            .and_then(|c| c.revoked)
            .is_some_and(|r| r.proves_key_compromise());
        if compromised {
            return weak(
                WeakKind::Compromised,
                format!(
                    "certificate {} for this key was revoked because the key was compromised; \
                 generate a new key",
                    used.serial
                ),
            );
        }
        let holder = Holder {
            account_id: used.account_id.clone(),
            identifiers: used.identifiers.clone(),
            order_id: Some(used.order_id.clone()),
            serial: Some(used.serial.clone()),
        };
        if used.account_id != account.id {
            return refuse(
                ReuseKind::OtherAccount,
                holder,
                "this key is already certified for another account: every device needs a key \
                 of its own; generate a new key on the device"
                    .into(),
            );
        }
        if used.identifiers != order.identifiers {
            let ids = used
                .identifiers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return refuse(
                ReuseKind::OtherDevice,
                holder,
                format!(
                    "this key is already certified for [{ids}] (certificate {}): every device \
                     needs a key of its own; generate a new key on the device",
                    used.serial
                ),
            );
        }
        if !app.cfg.keys.allow_renewal_key_reuse {
            return refuse(
                ReuseKind::Renewal,
                holder,
                format!(
                    "this key is already certified for these identifiers (certificate {}): \
                     this CA requires a new key for every certificate; generate a new key",
                    used.serial
                ),
            );
        }
    }
    Reservation::take(app, fingerprint.clone(), order, key, &refuse)
}

/// Keys being certified right now: (data directory, SPKI hash) → (order id, holders). The CA
/// is one process (sled admits one), so process memory is the right scope; the data directory
/// keeps instances in one process (tests) apart.
type InFlight = BTreeMap<(PathBuf, String), (String, usize)>;
static IN_FLIGHT: Mutex<InFlight> = Mutex::new(BTreeMap::new());

fn in_flight() -> std::sync::MutexGuard<'static, InFlight> {
    IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner())
}

/// A key reserved for one order between the checks and issuance (see [`check`]).
#[must_use = "hold the reservation until the certificate is recorded"]
pub struct Reservation {
    slot: (PathBuf, String),
    key_type: String,
}

impl Reservation {
    fn take(
        app: &AppState,
        fingerprint: String,
        order: &Order,
        key: &PublicKey,
        refuse: &dyn Fn(ReuseKind, Holder, String) -> Result<Self>,
    ) -> Result<Self> {
        let slot = (app.cfg.data_dir.clone(), fingerprint);
        let other = {
            let mut map = in_flight();
            let entry = map.entry(slot.clone()).or_insert((order.id.clone(), 0));
            if entry.0 == order.id {
                // Two finalizes of one order may both get here; the order's own
                // compare-and-swap decides which issues.
                entry.1 += 1;
                None
            } else {
                Some(entry.0.clone())
            }
        };
        if let Some(other) = other {
            let other_account = app
                .db
                .get::<Order>(Table::Orders, &other)?
                .map_or_else(String::new, |o| o.account_id);
            return refuse(
                ReuseKind::Concurrent,
                Holder {
                    account_id: other_account,
                    identifiers: Vec::new(),
                    order_id: Some(other),
                    serial: None,
                },
                "another order is being finalized with this key right now: every device needs \
                 a key of its own; generate a new key on the device"
                    .into(),
            );
        }
        Ok(Self {
            slot,
            key_type: key.describe(),
        })
    }

    /// Records the issued certificate as the key's holder in [`Table::KeyUse`].
    pub fn record(&self, app: &AppState, cert: &Certificate) -> Result<()> {
        let fingerprint = &self.slot.1;
        let at = now();
        let first_certified = app
            .db
            .get::<KeyUse>(Table::KeyUse, fingerprint)?
            .filter(|u| u.account_id == cert.account_id && u.identifiers == cert.identifiers)
            .map_or(at, |u| u.first_certified);
        app.db.put(
            Table::KeyUse,
            fingerprint,
            &KeyUse {
                account_id: cert.account_id.clone(),
                identifiers: cert.identifiers.clone(),
                serial: cert.id.clone(),
                order_id: cert.order_id.clone(),
                key_type: self.key_type.clone(),
                first_certified,
                last_certified: at,
            },
        )
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut map = in_flight();
        if let Some(entry) = map.get_mut(&self.slot) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                map.remove(&self.slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::PublicKeyData;

    use super::*;
    use crate::csr::test_support::{openssl, openssl_csr, openssl_rsa_key};

    /// Reuse attempts are camelCase in the audit JSON, like weak-key attempts, and records
    /// stored in snake_case before that still read.
    #[test]
    fn reuse_attempts_are_camel_case_and_old_records_read() {
        let old = serde_json::json!({"at": 1, "spki_sha256": "ab", "kind": "other-account",
            "attempted": {"account_id": "a1", "identifiers": [], "order_id": "o1", "serial": null},
            "holder": {"account_id": "a2", "identifiers": [], "order_id": null, "serial": "01"}});
        let attempt: KeyReuseAttempt = serde_json::from_value(old).expect("old record reads");
        assert_eq!(attempt.attempted.order_id.as_deref(), Some("o1"));
        let v = serde_json::to_value(&attempt).expect("encode");
        assert_eq!(v["spkiSha256"], "ab", "{v}");
        assert_eq!(v["attempted"]["accountId"], "a1", "{v}");
        assert_eq!(v["attempted"]["orderId"], "o1", "{v}");
        assert_eq!(v["holder"]["accountId"], "a2", "{v}");
        assert!(!v.to_string().contains('_'), "{v}");
    }

    /// The canonical SPKI equals what rcgen and openssl write for the same key.
    #[test]
    fn canonical_spki_matches_rcgen_and_openssl() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).expect("key");
            let spki = key.subject_public_key_info();
            let parsed = crate::csr::parse_spki(&spki).expect("SPKI");
            assert_eq!(spki_der(&parsed), spki, "{alg:?}");
        }
        let dir = tempfile::tempdir().expect("tmp");
        openssl_rsa_key(dir.path(), "k.pem", 2048);
        openssl(
            dir.path(),
            &[
                "pkey", "-in", "k.pem", "-pubout", "-outform", "DER", "-out", "k.der",
            ],
        );
        let spki = std::fs::read(dir.path().join("k.der")).expect("der");
        let parsed = crate::csr::parse_spki(&spki).expect("SPKI");
        assert_eq!(spki_der(&parsed), spki);
        let csr = openssl_csr(dir.path(), &["-key", "k.pem"], &[]);
        let info = crate::csr::parse_and_verify(&csr).expect("CSR");
        assert_eq!(spki_der(&info.public_key), info.spki_der);
        assert_eq!(
            spki_sha256(&info.public_key),
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &spki))
        );
    }

    #[test]
    fn check_key_refuses_listed_keys_and_passes_others() {
        let key = rcgen::KeyPair::generate().expect("key");
        let parsed = crate::csr::parse_spki(&key.subject_public_key_info()).expect("SPKI");
        let mut record = [0u8; blocklist::RECORD_LEN];
        record[..blocklist::HASH_LEN]
            .copy_from_slice(&blocklist::bkhash(blocklist::key_number(&parsed)));
        record[blocklist::HASH_LEN] = 4;
        let list = Blocklist::from_bytes(blocklist::build(vec![record])).expect("list");
        let err = check_key(&parsed, Some(&list)).expect_err("listed");
        assert!(
            matches!(&err, Error::BadPublicKey(d) if d.contains("(list 4)")),
            "{err}"
        );
        assert!(check_key(&parsed, None).is_ok());
        let other = rcgen::KeyPair::generate().expect("key");
        let other = crate::csr::parse_spki(&other.subject_public_key_info()).expect("SPKI");
        assert!(check_key(&other, Some(&list)).is_ok());
    }
}
