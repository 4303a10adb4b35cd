//! Publishing the CRLs (RFC 5280 §5; `ca::crl` says which issuer signs which and where they are
//! served): numbering each CRL from the store, collecting the issuer's revocations, having the
//! CA sign it, then writing the file and caching it.
//!
//! An entry leaves the CRL once its certificate has expired and one CRL published after that
//! listed it:
//!
//! > An entry MUST NOT be removed from the CRL until it appears on one regularly scheduled CRL
//! > issued beyond the revoked certificate's validity period.
//!
//! <https://www.rfc-editor.org/rfc/rfc5280#section-5.1.2.6> (and §3.3). Each CRL's thisUpdate
//! is kept in the store once its file is written ([`published_key`]); the next CRL leaves out
//! the certificates that expired before it. Such a certificate expired after the CRL before
//! that one, so the CRL whose thisUpdate is kept listed it, past its notAfter. A CRL that was
//! signed but not written does not count. Retention (`ra::retention`) removes a revocation
//! record only once it is off the CRL.
//!
//! CA instances sharing a database ([`Ra::shared_store`]) serve one CRL: each signed CRL is also kept in
//! the store ([`SharedCrl`], only ever replaced by a higher number), and an instance serves
//! the stored one while it is fresh, so a revocation made at one instance is on the CRL every
//! instance serves as soon as that instance has signed it. A small head record ([`CrlHead`])
//! beside it says which CRL that is: a fetch reads the head and serves the instance's own copy
//! when the numbers match, so the CRL itself (megabytes with 100,000 revocations) crosses from
//! the database once per instance and CRL, not once per fetch.

use crate::ca::cert::Revocation;
use crate::ca::crl::{file_name, Signed, LIFETIME};
use crate::ca::IssuerKind;
use crate::der::pem_encode;
use crate::fsutil::write_atomic;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::now;
use crate::{Error, Result};

/// A CRL as the instances sharing a store keep it.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct SharedCrl {
    number: u64,
    this_update: i64,
    /// The count of revocations ([`REVOCATIONS_KEY`]) before the CRL's revocations were read:
    /// a later revocation makes the CRL stale at once, even if the instance that made it
    /// failed to sign the next one.
    revocations: u64,
    /// The DER, base64url.
    der: String,
}

/// Which CRL the stored [`SharedCrl`] is, and whether it is still fresh, without its DER.
/// Written after the CRL, and like it only ever replaced by a higher number.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct CrlHead {
    number: u64,
    this_update: i64,
    revocations: u64,
}

/// `Table::Meta` key of the count of revocations ever recorded ([`count_revocation`]).
const REVOCATIONS_KEY: &str = "revocations_recorded";

/// Counts a revocation just recorded, for the instances that serve the stored CRL.
pub fn count_revocation(app: &Ra) -> Result<()> {
    if !app.db.insert_new(Table::Meta, REVOCATIONS_KEY, &1u64)? {
        app.db.update(Table::Meta, REVOCATIONS_KEY, |n: u64| {
            Ok(n.saturating_add(1))
        })?;
    }
    Ok(())
}

/// With a shared store, counts a revocation made at `at` again if no stored CRL of `issuer`
/// was signed after it: one cut off between its record and its count would otherwise stay off
/// the CRL every instance serves until the next scheduled one. Once a CRL signed later is
/// stored, a repeated request counts nothing. Whether it counted.
pub fn recount_if_unlisted(app: &Ra, issuer: IssuerKind, at: i64) -> Result<bool> {
    if !app.shared_store() {
        return Ok(false);
    }
    let head = app.db.get::<CrlHead>(Table::Meta, &head_key(issuer))?;
    // A CRL signed in the revocation's second may have read the revocations before it.
    if head.is_some_and(|h| h.this_update > at) {
        return Ok(false);
    }
    count_revocation(app)?;
    Ok(true)
}

fn revocations_recorded(app: &Ra) -> Result<u64> {
    Ok(app.db.get(Table::Meta, REVOCATIONS_KEY)?.unwrap_or(0))
}

/// The prefixes of the `Table::Meta` keys of a stored CRL ([`shared_key`]) and its head
/// ([`head_key`]).
const STORED_CRL_PREFIXES: [&str; 2] = ["crl_signed.", "crl_head."];

fn shared_key(kind: IssuerKind) -> String {
    format!("{}{}", STORED_CRL_PREFIXES[0], file_name(kind))
}

fn head_key(kind: IssuerKind) -> String {
    format!("{}{}", STORED_CRL_PREFIXES[1], file_name(kind))
}

/// Whether a `Table::Meta` key holds a stored CRL or its head. A restore leaves them out: it
/// moves the CRL number past theirs, and instances would serve them, numbered below CRLs
/// the original CA may have published since, until they go stale.
pub fn is_stored_crl(key: &[u8]) -> bool {
    STORED_CRL_PREFIXES
        .iter()
        .any(|p| key.starts_with(p.as_bytes()))
}

/// Whether a stored CRL is not yet due (as [`crate::ca::crl::CrlCache`] decides) and lists
/// every revocation recorded so far.
fn fresh(this_update: i64, revocations: u64, now: i64, recorded: u64) -> bool {
    (0..crate::ca::crl::REFRESH).contains(&(now - this_update)) && revocations >= recorded
}

/// The stored CRL of `kind`, if it is fresh; kept in this instance's cache.
fn stored(app: &Ra, kind: IssuerKind, now: i64) -> Result<Option<Signed>> {
    let Some(crl) = app.db.get::<SharedCrl>(Table::Meta, &shared_key(kind))? else {
        return Ok(None);
    };
    if !fresh(
        crl.this_update,
        crl.revocations,
        now,
        revocations_recorded(app)?,
    ) {
        return Ok(None);
    }
    let der = crate::wire::b64u_decode("stored CRL", &crl.der)
        .map_err(|_| Error::Storage("corrupt stored CRL".into()))?;
    let signed = Signed {
        der,
        this_update: crl.this_update,
        number: crl.number,
    };
    app.crl.keep(kind, signed.clone());
    // A signer cut off before its head write (or a store from before the head) leaves the
    // head behind the CRL, and every fetch would read the CRL again: bring the head up.
    let head = CrlHead {
        number: crl.number,
        this_update: crl.this_update,
        revocations: crl.revocations,
    };
    keep_highest(app, &head_key(kind), &head, |h| h.number)?;
    Ok(Some(signed))
}

/// This instance's copy of the stored CRL of `kind`, if the head record says it is the
/// stored one and fresh.
fn stored_copy(app: &Ra, kind: IssuerKind, now: i64) -> Result<Option<Vec<u8>>> {
    let Some(head) = app.db.get::<CrlHead>(Table::Meta, &head_key(kind))? else {
        return Ok(None);
    };
    if !fresh(
        head.this_update,
        head.revocations,
        now,
        revocations_recorded(app)?,
    ) {
        return Ok(None);
    }
    Ok(app.crl.numbered(kind, head.number))
}

/// Stores `value` under `key` unless the record there has a number at least as high.
fn keep_highest<T>(app: &Ra, key: &str, value: &T, number: impl Fn(&T) -> u64) -> Result<()>
where
    T: Clone + serde::Serialize + serde::de::DeserializeOwned,
{
    if !app.db.insert_new(Table::Meta, key, value)? {
        app.db.update(Table::Meta, key, |old: T| {
            Ok(if number(&old) < number(value) {
                value.clone()
            } else {
                old
            })
        })?;
    }
    Ok(())
}

/// The current CRL of `kind` in DER, signing a new one if the cached one is missing or due.
pub async fn current(app: &Ra, kind: IssuerKind) -> Result<Vec<u8>> {
    let now = now();
    if app.shared_store() {
        if let Some(der) = stored_copy(app, kind, now)? {
            return Ok(der);
        }
        if let Some(signed) = stored(app, kind, now)? {
            return Ok(signed.der);
        }
        return refresh(app, kind, now).await;
    }
    if let Some(der) = app.crl.cached(kind, now) {
        return Ok(der);
    }
    refresh(app, kind, now).await
}

/// Signs and writes new CRLs of those of `issuers` the CA has: once a revocation is durable, so
/// `crl.pem` lists the certificate by the time the revocation is answered (a broker reading the
/// file must refuse the device at once), and on the [`REFRESH`](crate::ca::crl::REFRESH) tick. Signing a large CRL takes
/// a while (0.5 s for 100,000 entries), so it runs on the blocking pool, not on a request
/// worker. A failure is logged, not returned: a revocation stands, the cached CRL stays
/// invalid, and the next request or tick signs again.
pub async fn publish(app: &Ra, issuers: impl IntoIterator<Item = IssuerKind>) {
    let issuers: Vec<IssuerKind> = issuers.into_iter().filter(|k| app.ca.has(*k)).collect();
    if issuers.is_empty() {
        return;
    }
    for kind in issuers {
        if let Err(e) = refresh(app, kind, now()).await {
            tracing::error!(issuer = %kind, error = %e, "signing the CRL failed; the next request or the hourly refresh retries");
        }
    }
}

/// Signs and publishes a new CRL of the intermediate `kind`: numbers it, makes the number
/// durable, then signs and writes it on the blocking pool.
pub async fn refresh(app: &Ra, kind: IssuerKind, now: i64) -> Result<Vec<u8>> {
    let _one_at_a_time = app.crl.signing.lock().await;
    // Requests that found the stored CRL due queue here; once one has signed, the rest serve
    // its CRL, as does an instance whose hourly tick comes after another instance's.
    if app.shared_store() {
        if let Some(signed) = stored(app, kind, now)? {
            // This instance's file and readiness follow the CRL it serves.
            write_file(app, kind, &signed.der)?;
            app.crl.mark_published(kind, signed.this_update);
            return Ok(signed.der);
        }
    }
    let reader = app.clone();
    let (number, revoked, counted) =
        tokio::task::spawn_blocking(move || number_and_revocations(&reader, kind, now))
            .await
            .map_err(|e| Error::Internal(format!("CRL task failed: {e}")))??;
    // The number and every revocation read are durable before the CRL is signed, published
    // and cached: a crash must not let the next CRL reuse the number for other contents
    // (RFC 5280 §5.2.3), and a CRL must not list a revocation a crash could undo (the cache
    // is served to later requests that read nothing from the store). The reads ran on the
    // blocking pool, outside the request's durability ticket, so everything is flushed.
    app.db.flush_all().await?;
    let signer = app.clone();
    tokio::task::spawn_blocking(move || {
        sign_and_write(&signer, kind, (number, counted), now, &revoked)
    })
    .await
    .map_err(|e| Error::Internal(format!("CRL signing task failed: {e}")))?
}

/// Serial, revocation time and reason code, as `CertificateAuthority::sign_crl` takes them.
type RevokedEntry = (Vec<u8>, i64, u8);

/// The next CRL number (taken: the CRL number MUST increase with every CRL, across restarts
/// too, so it lives in the store) and the revocations of `kind`. Scanning 100,000 revocations
/// takes a while, hence the blocking pool.
fn number_and_revocations(
    app: &Ra,
    kind: IssuerKind,
    now: i64,
) -> Result<(u64, Vec<RevokedEntry>, u64)> {
    // Before the revocations are read: what is counted by then is on this CRL.
    let counted = revocations_recorded(app)?;
    // The number this call wrote, not a later read: another instance may have taken the
    // next one meanwhile, and two CRLs must never share a number (RFC 5280 §5.2.3).
    let number: u64 = if app.db.insert_new(Table::Meta, "crl_number", &1u64)? {
        1
    } else {
        app.db
            .update(Table::Meta, "crl_number", |n: u64| Ok(n.saturating_add(1)))?
    };
    let last = last_published(app, kind)?;
    let mut revoked = Vec::new();
    for (serial, value) in app.db.store().scan_prefix(Table::Revocations, b"")? {
        let entry: Revocation = serde_json::from_slice(&value)
            .map_err(|e| Error::Storage(format!("corrupt revocation record: {e}")))?;
        if entry.issuer != kind {
            continue;
        }
        let serial_hex = String::from_utf8_lossy(&serial);
        if !listed(not_after(app, &serial_hex, &entry)?, last, now) {
            continue;
        }
        let serial = hex::decode(&serial)
            .map_err(|e| Error::Storage(format!("corrupt revocation key: {e}")))?;
        revoked.push((serial, entry.at, entry.reason));
    }
    Ok((number, revoked, counted))
}

/// The `Meta` key of the thisUpdate of the last CRL of `kind` written to its file.
pub fn published_key(kind: IssuerKind) -> String {
    format!("crl_published.{}", file_name(kind))
}

/// The thisUpdate of the last CRL of `kind` written to its file, if any.
pub fn last_published(app: &Ra, kind: IssuerKind) -> Result<Option<i64>> {
    app.db.get(Table::Meta, &published_key(kind))
}

/// The notAfter of a revoked certificate: in the revocation record, or, for records from
/// before it was kept there, in the certificate's. `None` if neither says.
pub fn not_after(app: &Ra, serial: &str, entry: &Revocation) -> Result<Option<i64>> {
    if let Some(t) = entry.not_after {
        return Ok(Some(t));
    }
    Ok(crate::ra::history::certificate(app, serial)?.map(|c| c.not_after))
}

/// Whether a CRL signed at `now` lists a revocation whose certificate expires at `not_after`,
/// when the last CRL published had thisUpdate `last`: unless the certificate expired before
/// both (a thisUpdate from a clock that ran ahead must not drop a certificate still valid).
pub fn listed(not_after: Option<i64>, last: Option<i64>, now: i64) -> bool {
    match (not_after, last) {
        (Some(not_after), Some(last)) => not_after >= last.min(now),
        _ => true,
    }
}

/// Writes the CRL `der` of `kind` to its file in the data directory (PEM, mode 0644), where
/// brokers that read a CRL file find it.
fn write_file(app: &Ra, kind: IssuerKind, der: &[u8]) -> Result<()> {
    let pem = pem_encode("X509 CRL", der);
    write_atomic(
        &app.cfg.data_dir.join(file_name(kind)),
        pem.as_bytes(),
        0o644,
    )
}

fn sign_and_write(
    app: &Ra,
    kind: IssuerKind,
    (number, counted): (u64, u64),
    now: i64,
    revoked: &[RevokedEntry],
) -> Result<Vec<u8>> {
    let der = app
        .ca
        .sign_crl(kind, number, now, now + LIFETIME, revoked)?;
    write_file(app, kind, &der)?;
    app.crl.keep(
        kind,
        Signed {
            der: der.clone(),
            this_update: now,
            number,
        },
    );
    app.crl.mark_published(kind, now);
    // Durable with the next flush; lost in a crash, an older value only keeps entries longer.
    app.db.put(Table::Meta, &published_key(kind), &now)?;
    if app.shared_store() {
        let signed = SharedCrl {
            number,
            this_update: now,
            revocations: counted,
            der: crate::wire::b64u(&der),
        };
        // Another instance may have signed a later number meanwhile: that one stays. The
        // head goes second, so it never names a CRL the store does not hold yet.
        keep_highest(app, &shared_key(kind), &signed, |c| c.number)?;
        let head = CrlHead {
            number,
            this_update: now,
            revocations: counted,
        };
        keep_highest(app, &head_key(kind), &head, |h| h.number)?;
    }
    tracing::info!(issuer = %kind, number, entries = revoked.len(), "CRL signed");
    Ok(der)
}
