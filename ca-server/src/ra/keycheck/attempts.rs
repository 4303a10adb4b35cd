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
//! keeps its newest [`MAX_PER_ACCOUNT`] attempts, and the table at most [`MAX_TOTAL`]. When it
//! is full, the account holding the most records gives one up (see [`super::bounded`]), so a
//! device stuck in a retry loop, or a client with many accounts, shows up with its latest
//! attempts without crowding out any other account's. The key-reuse table has the same caps.

use serde::{Deserialize, Serialize};

use super::bounded::{self, Audited, Caps};
use crate::key::PublicKey;
use crate::ra::account::Account;
use crate::ra::order::Order;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::now;
use crate::types::Identifier;
use crate::{Error, Result};

/// Newest attempts kept per account, in this table and in the key-reuse table.
pub const MAX_PER_ACCOUNT: usize = 100;
/// Attempts kept in all, in this table and in the key-reuse table.
pub const MAX_TOTAL: usize = 2000;

/// [`MAX_PER_ACCOUNT`] and [`MAX_TOTAL`].
pub(crate) const CAPS: Caps = Caps {
    per_account: MAX_PER_ACCOUNT,
    total: MAX_TOTAL,
};

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

impl Audited for WeakKeyAttempt {
    const TABLE: Table = Table::WeakKeyAttempts;
    fn account(&self) -> &str {
        &self.account_id
    }
}

impl WeakKeyAttempt {
    /// All recorded attempts, oldest first.
    pub fn list(app: &Ra) -> Result<Vec<Self>> {
        app.db.values_with_prefix(Table::WeakKeyAttempts, "")
    }
}

/// Records a refusal of `kind` for `error` (whose problem type and detail are kept). A storage
/// failure is logged, not returned: the client still gets the refusal it earned.
pub(crate) fn record(
    app: &Ra,
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
    app.metrics.weak_key_refused();
    if let Err(e) = bounded::append(app, CAPS, &attempt) {
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
    app: &Ra,
    account: &Account,
    order: &Order,
    der: &[u8],
    error: &Error,
) {
    let kind = match error {
        Error::BadPublicKey(_) => WeakKind::KeyPolicy,
        Error::BadCsr(_) if crate::ca::csr::weak_signature_algorithm(der).is_some() => {
            WeakKind::WeakSignature
        }
        _ => return,
    };
    record(
        app,
        account,
        order,
        kind,
        crate::ca::csr::refused_key(der),
        error,
    );
}
