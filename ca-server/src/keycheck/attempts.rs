//! Refused weak keys and weak CSR signatures, kept for the operator's `audit`
//! ([`Table::WeakKeyAttempts`]).
//!
//! finalize refuses a weak key (ROCA, Fermat, small factors, the blocklist, a key whose
//! certificate was revoked for keyCompromise, and the key policy of `csr`: RSA size and
//! exponent, curves, key algorithms) with `badPublicKey`, and a CSR signed with MD5, SHA-1 or
//! another weak digest with `badCSR`. A device that does so keeps doing so until someone
//! regenerates its key or updates its firmware, so each refusal is recorded here with the
//! account, order, identifiers, key type, SPKI SHA-256, problem and time. Other `badCSR`
//! refusals (malformed requests, wrong names) are not key hygiene and are not recorded; key
//! reuse has its own table ([`super::KeyReuseAttempt`]).
//!
//! The table is bounded, so a misbehaving client cannot grow it without limit: each account
//! keeps its newest [`MAX_PER_ACCOUNT`] attempts, and the table its newest [`MAX_TOTAL`]; older
//! records are dropped as new ones arrive. A device stuck in a retry loop thus shows up with
//! its latest attempts without crowding out every other account's.

use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::app::{new_id, now, AppState};
use crate::key::PublicKey;
use crate::order::Order;
use crate::storage::{Db, Table};
use crate::types::Identifier;
use crate::{Error, Result};

/// Newest attempts kept per account.
pub const MAX_PER_ACCOUNT: usize = 100;
/// Newest attempts kept in all.
pub const MAX_TOTAL: usize = 2000;

/// Why the key or CSR was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeakKind {
    /// On the compromised-key blocklist.
    Blocklisted,
    /// ROCA fingerprint (CVE-2017-15361).
    Roca,
    /// Modulus factored by Fermat's method.
    Fermat,
    /// Modulus with a small prime factor.
    SmallFactor,
    /// A certificate for the key was revoked for keyCompromise.
    Compromised,
    /// The key policy of `csr`: key algorithm, RSA size or exponent, curve, encoding.
    KeyPolicy,
    /// The CSR is signed with a weak digest (MD5, SHA-1, …).
    WeakSignature,
}

/// One refused weak key or weak CSR signature: a [`Table::WeakKeyAttempts`] record, keyed by
/// `{unix time in nanoseconds, 20 digits}.{random id}` so a scan lists them in time order.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeakKeyAttempt {
    /// Unix time.
    pub at: i64,
    /// The account that asked.
    pub account_id: String,
    /// The order being finalized.
    pub order_id: String,
    /// The order's identifiers.
    pub identifiers: Vec<Identifier>,
    /// What was wrong.
    pub kind: WeakKind,
    /// The key type, e.g. "RSA 1024", when the CSR's key could be read.
    #[serde(default)]
    pub key_type: Option<String>,
    /// Hex SHA-256 of the key's SubjectPublicKeyInfo ([`super::spki_sha256`] for a key that
    /// passed the key policy, else of the DER as sent), when the CSR's key could be read.
    #[serde(default)]
    pub spki_sha256: Option<String>,
    /// The ACME problem type sent: `badPublicKey` or `badCSR`.
    pub problem: String,
    /// The problem detail sent.
    pub detail: String,
}

impl WeakKeyAttempt {
    /// All recorded attempts, oldest first.
    pub fn list(app: &AppState) -> Result<Vec<Self>> {
        app.db.values_with_prefix(Table::WeakKeyAttempts, "")
    }
}

/// Records a refusal of `kind` for `error` (whose problem type and detail are kept). A storage
/// failure is logged, not returned: the client still gets the refusal it earned.
pub(crate) fn record(
    app: &AppState,
    account: &Account,
    order: &Order,
    kind: WeakKind,
    key: Option<(String, String)>,
    error: &Error,
) {
    let problem = error.to_problem();
    let (key_type, spki_sha256) = key.unzip();
    let attempt = WeakKeyAttempt {
        at: now(),
        account_id: account.id.clone(),
        order_id: order.id.clone(),
        identifiers: order.identifiers.clone(),
        kind,
        key_type,
        spki_sha256,
        problem: error.problem_type().name().to_owned(),
        detail: problem.detail,
    };
    tracing::warn!(
        kind = ?attempt.kind,
        account = %attempt.account_id,
        order = %attempt.order_id,
        spki_sha256 = attempt.spki_sha256.as_deref().unwrap_or("-"),
        "weak key or CSR refused"
    );
    if let Err(e) = store(app, &attempt) {
        tracing::error!(error = %e, "cannot record a weak-key attempt");
    }
}

/// The key-type and SPKI SHA-256 pair of an acceptable key, for [`record`].
pub(crate) fn key_facts(key: &PublicKey) -> Option<(String, String)> {
    Some((key.describe(), super::spki_sha256(key)))
}

/// Records a `csr::parse_and_verify` refusal of `der` when it is about the key (`badPublicKey`)
/// or a weak signature digest; other refusals are not recorded.
pub(crate) fn record_csr_refusal(
    app: &AppState,
    account: &Account,
    order: &Order,
    der: &[u8],
    error: &Error,
) {
    let kind = match error {
        Error::BadPublicKey(_) => WeakKind::KeyPolicy,
        Error::BadCsr(_) if crate::csr::weak_signature_algorithm(der).is_some() => {
            WeakKind::WeakSignature
        }
        _ => return,
    };
    record(
        app,
        account,
        order,
        kind,
        crate::csr::refused_key(der),
        error,
    );
}

fn store(app: &AppState, attempt: &WeakKeyAttempt) -> Result<()> {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let key = format!("{nanos:020}.{}", new_id()?);
    app.db.put(Table::WeakKeyAttempts, &key, attempt)?;
    prune(&app.db, MAX_PER_ACCOUNT, MAX_TOTAL)
}

/// Drops the oldest records beyond `per_account` per account and `total` in all. Runs after
/// every insert, so the table holds at most `total` records plus those being inserted
/// concurrently; a record another pruner removed first is skipped.
fn prune(db: &Db, per_account_cap: usize, total: usize) -> Result<()> {
    let store = db.store();
    let all = store.scan_prefix(Table::WeakKeyAttempts, b"")?;
    let mut per_account: std::collections::HashMap<String, usize> = Default::default();
    let mut kept = 0;
    // Newest first: a record is kept while its account and the table are under their caps.
    for (key, raw) in all.iter().rev() {
        let account = serde_json::from_slice::<WeakKeyAttempt>(raw)
            .map(|a| a.account_id)
            .unwrap_or_default();
        let n = per_account.entry(account).or_default();
        if *n < per_account_cap && kept < total {
            *n += 1;
            kept += 1;
        } else {
            store.compare_and_swap(Table::WeakKeyAttempts, key, Some(raw), None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::MemoryStore;

    fn attempt(account: &str, n: i64) -> WeakKeyAttempt {
        WeakKeyAttempt {
            at: n,
            account_id: account.into(),
            order_id: format!("o{n}"),
            identifiers: Vec::new(),
            kind: WeakKind::WeakSignature,
            key_type: None,
            spki_sha256: None,
            problem: "badCSR".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn prune_keeps_the_newest_per_account_and_in_all() {
        let db = Db::new(Arc::new(MemoryStore::default()));
        let put = |account: &str, n: i64| {
            db.put(
                Table::WeakKeyAttempts,
                &format!("{n:020}.x"),
                &attempt(account, n),
            )
            .expect("put");
            prune(&db, 3, 5).expect("prune");
        };
        // A noisy account keeps only its newest three.
        for n in 0..10 {
            put("noisy", n);
        }
        let orders = |db: &Db| -> Vec<String> {
            db.values_with_prefix::<WeakKeyAttempt>(Table::WeakKeyAttempts, "")
                .expect("list")
                .into_iter()
                .map(|a| a.order_id)
                .collect()
        };
        assert_eq!(orders(&db), ["o7", "o8", "o9"]);
        // Others still get their share, and the table as a whole keeps its newest five.
        put("a", 10);
        put("b", 11);
        assert_eq!(orders(&db), ["o7", "o8", "o9", "o10", "o11"]);
        put("c", 12);
        assert_eq!(orders(&db), ["o8", "o9", "o10", "o11", "o12"]);
    }
}
