//! Retention: what renewals leave in the store is kept for `storage.retention`, then removed,
//! as Boulder's expired-authorization purger and Vault PKI's tidy do, so the store stays the
//! same size while a fleet renews week after week.
//!
//! | record | kept until | then |
//! |--------|------------|------|
//! | order, its authorizations and challenges, its entry in the account's orders list | every one of them ended, plus the retention | removed |
//! | certificate | notAfter plus the retention | reduced to an entry of its device's history ([`history`]); its key-use record retired to the serial and moved there too ([`history::retire_key`]) |
//! | revocation (the CRL's source) | notAfter plus the retention, and off the CRL (`ra::crl`) | removed; the reduced certificate keeps the revocation |
//!
//! An order ends when its certificate is issued (notBefore plus the backdating), when
//! issuance is reported stuck, or else when it expires. An authorization ends when it expires:
//! its stored status carries no time, and a valid one counts (for revocation rights) until
//! then. An authorization whose order is gone (a crash between the two removals) is removed
//! once no order could still refer to it: `issuance.order_lifetime` after it ended.
//!
//! Kept for good: accounts and their key index, the history of reduced certificates and the
//! retired key-use index (a key certified once is refused to other devices and, after a
//! keyCompromise revocation, to everyone, for as long as the CA runs: it reads the revocation
//! from the reduced certificate), who holds which identity
//! (`ra::identity`; one record per identity, not per renewal), enrollment credential usage and
//! the bounded audit tables of refused keys.
//!
//! The pruner ([`run`]) works once at start and every `StorageConfig::prune_interval`, on the
//! blocking pool. It walks each table a page at a time ([`PAGE`]), each store call on its own,
//! so no lock is held across a page and requests go on between its calls. Every change is a
//! compare-and-swap from the exact version it read: a record a request changed meanwhile (a
//! finalize, a revocation, a challenge answer) is left alone until the next pass looks again.
//!
//! Records an older version reduced in place (a reduced certificate record, a retired key-use
//! record) are moved into the history by the same pass.

use crate::ca::cert::{Certificate, Revocation};
use crate::ra::authz::Authz;
use crate::ra::history;
use crate::ra::keycheck::KeyUse;
use crate::ra::order::{Order, Stage};
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::now;
use crate::Result;

/// Records read per store call while walking a table.
pub const PAGE: usize = 256;

/// What one pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Orders removed, each with its entry in the account's orders list.
    pub orders: u64,
    /// Authorizations removed (with their challenges).
    pub authzs: u64,
    /// Certificate records reduced into the history (with those an older version reduced in
    /// place and this pass moved there).
    pub certificates: u64,
    /// Revocation records removed (their certificates are off the CRL).
    pub revocations: u64,
}

impl Pruned {
    fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// Runs the pruner: once now, then every `storage.prune_interval()`, until the runtime stops.
pub async fn run(app: Ra) {
    let mut tick = tokio::time::interval(app.cfg.storage.prune_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let worker = app.clone();
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || prune(&worker, now())).await {
            Ok(Ok(p)) if p.any() => {
                record(&app, &p);
                tracing::info!(
                    orders = p.orders,
                    authorizations = p.authzs,
                    certificates_reduced = p.certificates,
                    revocations = p.revocations,
                    took_ms = started.elapsed().as_millis(),
                    "retention: pruned records older than storage.retention"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "retention: pruning failed; the next pass retries")
            }
            Err(e) => tracing::error!(error = %e, "retention: the pruning task failed"),
        }
    }
}

fn record(app: &Ra, p: &Pruned) {
    let m = &app.metrics;
    m.records_pruned("order", p.orders);
    m.records_pruned("authorization", p.authzs);
    m.records_pruned("certificate", p.certificates);
    m.records_pruned("revocation", p.revocations);
}

/// One pass at time `now`: removes and reduces what ended longer than `storage.retention`
/// before it. Blocking.
pub fn prune(app: &Ra, now: i64) -> Result<Pruned> {
    let retention = secs(app.cfg.storage.retention);
    let cutoff = now.saturating_sub(retention);
    let mut p = Pruned::default();
    let mut authzs = 0;
    p.orders = walk(app, Table::Orders, |key, raw| {
        prune_order(app, key, raw, cutoff, &mut authzs)
    })?;
    let orphaned = cutoff.saturating_sub(secs(app.cfg.issuance.order_lifetime));
    p.authzs = authzs
        + walk(app, Table::Authzs, |key, raw| {
            remove_if(app, Table::Authzs, key, raw, |a: &Authz| {
                a.expires <= orphaned
            })
        })?;
    p.certificates = walk(app, Table::Certificates, |key, raw| {
        reduce_certificate(app, key, raw, cutoff)
    })?;
    // Key-use records an older version retired in place.
    walk(
        app,
        Table::KeyUse,
        |key, raw| match serde_json::from_slice::<KeyUse>(raw) {
            Ok(used) if used.is_retired() => {
                let fingerprint = String::from_utf8_lossy(key);
                Ok(history::retire_key(app, &fingerprint, &used)?
                    && swap(app, Table::KeyUse, key, raw, None)?)
            }
            _ => Ok(false),
        },
    )?;
    let last = [
        crate::ra::crl::last_published(app, crate::ca::IssuerKind::Ec)?,
        crate::ra::crl::last_published(app, crate::ca::IssuerKind::Rsa)?,
    ];
    p.revocations = walk(app, Table::Revocations, |key, raw| {
        let Ok(entry) = serde_json::from_slice::<Revocation>(raw) else {
            return Ok(false);
        };
        let serial = String::from_utf8_lossy(key);
        let Some(not_after) = crate::ra::crl::not_after(app, &serial, &entry)? else {
            return Ok(false);
        };
        let last = last[entry.issuer as usize];
        if not_after > cutoff || crate::ra::crl::listed(Some(not_after), last, now) {
            return Ok(false);
        }
        swap(app, Table::Revocations, key, raw, None)
    })?;
    Ok(p)
}

/// Calls `each` with every entry of `table`, a page at a time; counts the `true`s.
fn walk(app: &Ra, table: Table, mut each: impl FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<u64> {
    let mut after = Vec::new();
    let mut count = 0;
    loop {
        let page = app.db.store().scan_after(table, &after, PAGE)?;
        for (key, raw) in &page {
            if each(key, raw)? {
                count += 1;
            }
        }
        match page.last() {
            Some((key, _)) if page.len() == PAGE => after.clone_from(key),
            _ => return Ok(count),
        }
    }
}

/// Replaces `raw` under `key` by `new` (`None`: removes it), only if `raw` is still there.
fn swap(app: &Ra, table: Table, key: &[u8], raw: &[u8], new: Option<&[u8]>) -> Result<bool> {
    app.db.store().compare_and_swap(table, key, Some(raw), new)
}

/// Removes the record `raw` of `table` if `done` says so; a record that does not decode is
/// left for the operator.
fn remove_if<T: serde::de::DeserializeOwned>(
    app: &Ra,
    table: Table,
    key: &[u8],
    raw: &[u8],
    done: impl FnOnce(&T) -> bool,
) -> Result<bool> {
    match serde_json::from_slice::<T>(raw) {
        Ok(record) if done(&record) => swap(app, table, key, raw, None),
        _ => Ok(false),
    }
}

/// Removes an order whose every part ended by `cutoff`: the order, then its entry in the
/// account's orders list, then its authorizations (counted into `authzs`).
fn prune_order(app: &Ra, key: &[u8], raw: &[u8], cutoff: i64, authzs: &mut u64) -> Result<bool> {
    let Ok(order) = serde_json::from_slice::<Order>(raw) else {
        return Ok(false);
    };
    if order_ended(app, &order)? > cutoff {
        return Ok(false);
    }
    let mut parts = Vec::with_capacity(order.authzs.len());
    for id in &order.authzs {
        let Some(authz_raw) = app.db.store().get(Table::Authzs, id.as_bytes())? else {
            continue;
        };
        match serde_json::from_slice::<Authz>(&authz_raw) {
            Ok(a) if a.expires <= cutoff => parts.push((id, authz_raw)),
            _ => return Ok(false),
        }
    }
    // The order first: while it exists its list entry and authorizations are reachable, and
    // one left behind by a crash here is harmless (the list skips missing orders) and goes
    // with a later pass (the authorizations) or stays (a list entry, a few bytes).
    if !swap(app, Table::Orders, key, raw, None)? {
        return Ok(false);
    }
    app.db.remove(
        Table::AccountOrders,
        &format!("{}\0{}", order.account_id, order.id),
    )?;
    for (id, authz_raw) in parts {
        if swap(app, Table::Authzs, id.as_bytes(), &authz_raw, None)? {
            *authzs += 1;
        }
    }
    Ok(true)
}

/// When an order ended (Unix time): issued, reported stuck, or expired.
fn order_ended(app: &Ra, order: &Order) -> Result<i64> {
    Ok(match &order.stage {
        Stage::Valid { cert } => app
            .db
            .get::<Certificate>(Table::Certificates, cert)?
            .map_or(order.expires, |c| {
                c.not_before + crate::ca::CLOCK_SKEW.whole_seconds()
            }),
        Stage::Processing { since, .. } => since + crate::ra::order::STUCK_PROCESSING_SECS,
        Stage::Open | Stage::Invalid { .. } => order.expires,
    })
}

/// Moves a certificate past notAfter plus the retention, or one an older version reduced in
/// place, into its device's history.
fn reduce_certificate(app: &Ra, key: &[u8], raw: &[u8], cutoff: i64) -> Result<bool> {
    let Ok(cert) = serde_json::from_slice::<Certificate>(raw) else {
        return Ok(false);
    };
    if !cert.is_reduced() && cert.not_after > cutoff {
        return Ok(false);
    }
    let key_type = match &cert.reduced {
        Some(r) => r.key_type.clone(),
        None => cert.key_type().unwrap_or_else(|_| "unknown".to_owned()),
    };
    // The key-use record first: retired, it reads its holder from the certificate, in its
    // record or in the history, so a crash between the steps leaves everything readable.
    if let Ok(Some(fingerprint)) = cert.key_fingerprint() {
        retire_key_use(app, &fingerprint, &cert.id)?;
    }
    // Then the history entry and its serial index; the record goes last, and readers read
    // the record first ([`history::certificate`]), so a revocation that changed the record
    // meanwhile makes the removal fail and the next pass copies the entry again.
    if history::fold(app, &cert, key_type.clone())? {
        return swap(app, Table::Certificates, key, raw, None);
    }
    // A serial that is not hex has no history entry: reduced in place.
    if cert.is_reduced() {
        return Ok(false);
    }
    let reduced = serde_json::to_vec(&cert.reduce(key_type))
        .map_err(|e| crate::Error::Internal(format!("cannot encode record: {e}")))?;
    swap(app, Table::Certificates, key, raw, Some(&reduced))
}

/// Moves the key-use record of `fingerprint` into the history, retired
/// ([`history::retire_key`]), if its latest certificate is `serial`; a later certificate for
/// the same key keeps it whole.
fn retire_key_use(app: &Ra, fingerprint: &str, serial: &str) -> Result<()> {
    let Some(raw) = app.db.store().get(Table::KeyUse, fingerprint.as_bytes())? else {
        return Ok(());
    };
    match serde_json::from_slice::<KeyUse>(&raw) {
        Ok(used) if used.serial == serial => {
            if history::retire_key(app, fingerprint, &used)? {
                swap(app, Table::KeyUse, fingerprint.as_bytes(), &raw, None)?;
            } else if !used.is_retired() {
                let retired = serde_json::to_vec(&used.retire())
                    .map_err(|e| crate::Error::Internal(format!("cannot encode record: {e}")))?;
                swap(
                    app,
                    Table::KeyUse,
                    fingerprint.as_bytes(),
                    &raw,
                    Some(&retired),
                )?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::PublicKeyData;

    use super::*;
    use crate::ca::cert::RevokedBy;
    use crate::ca::IssuerKind;
    use crate::types::{AuthzStatus, ChallengeType, Identifier, IdentifierType};

    const DAY: i64 = 86_400;

    /// A CA in a temporary directory with a retention of one day.
    fn ca() -> (Ra, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = crate::config::Config {
            data_dir: dir.path().to_path_buf(),
            ..crate::config::Config::default()
        };
        cfg.storage.retention = Duration::from_secs(DAY as u64);
        let state = crate::server::init(cfg).expect("init");
        (Ra::clone(&state), dir)
    }

    fn dns(name: &str) -> Identifier {
        Identifier {
            kind: IdentifierType::Dns,
            value: name.to_owned(),
        }
    }

    /// An authorization for `name` expiring at `expires`, stored.
    fn authz(app: &Ra, name: &str, expires: i64) -> Authz {
        let a = Authz::new("acct", dns(name), expires, &[ChallengeType::Http01]).expect("authz");
        app.db.put(Table::Authzs, &a.id, &a).expect("put");
        a
    }

    /// An order for `name` with one authorization, both stored with the account's list entry.
    fn order(app: &Ra, name: &str, expires: i64, authz_expires: i64, stage: Stage) -> Order {
        let a = authz(app, name, authz_expires);
        let o = Order {
            id: crate::types::new_id().expect("id"),
            account_id: "acct".into(),
            identifiers: vec![dns(name)],
            authzs: vec![a.id],
            expires,
            stage,
            profile: None,
            replaces: None,
        };
        app.db.put(Table::Orders, &o.id, &o).expect("put");
        let listed = format!("acct\0{}", o.id);
        app.db.put(Table::AccountOrders, &listed, &()).expect("put");
        o
    }

    /// A certificate for `name`, stored with the given validity.
    fn certificate(app: &Ra, name: &str, not_before: i64, not_after: i64) -> Certificate {
        let key = rcgen::KeyPair::generate().expect("key");
        let issued = app
            .ca
            .issue(
                &key.subject_public_key_info(),
                &[dns(name)],
                Duration::from_secs(3600),
            )
            .expect("issue");
        let placeholder = Order {
            id: "o".into(),
            account_id: "acct".into(),
            identifiers: vec![dns(name)],
            authzs: Vec::new(),
            expires: 0,
            stage: Stage::Open,
            profile: Some("default".into()),
            replaces: None,
        };
        let mut c = Certificate::new("acct", &placeholder, &issued, None);
        c.not_before = not_before;
        c.not_after = not_after;
        app.db.put(Table::Certificates, &c.id, &c).expect("put");
        c
    }

    fn exists(app: &Ra, table: Table, key: &str) -> bool {
        app.db
            .store()
            .get(table, key.as_bytes())
            .expect("get")
            .is_some()
    }

    fn raw(app: &Ra, table: Table, key: &str) -> Vec<u8> {
        app.db
            .store()
            .get(table, key.as_bytes())
            .expect("get")
            .expect("record")
    }

    fn stored(app: &Ra, id: &str) -> Certificate {
        history::certificate(app, id)
            .expect("get")
            .expect("certificate record")
    }

    /// Keys and values of the history table, in bytes.
    fn history_bytes(app: &Ra) -> usize {
        app.db
            .store()
            .scan_prefix(Table::History, b"")
            .expect("scan")
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum()
    }

    #[test]
    fn prunes_exactly_what_ended_a_retention_ago() {
        let (app, _dir) = ca();
        let t = now();
        // Ended three days ago: gone.
        let expired = order(&app, "expired", t - 3 * DAY, t - 3 * DAY, Stage::Open);
        // The order expired, but its authorization is still good: kept whole.
        let live_authz = order(&app, "live-authz", t - 3 * DAY, t + DAY, Stage::Open);
        // Issued ten days ago; the certificate expired five days ago: the order goes, the
        // certificate is reduced.
        let old = certificate(&app, "old", t - 10 * DAY, t - 5 * DAY);
        let old_order = order(
            &app,
            "old",
            t - 9 * DAY,
            t - 9 * DAY,
            Stage::Valid {
                cert: old.id.clone(),
            },
        );
        // Issued an hour ago: order and certificate kept.
        let new = certificate(&app, "new", t - 3600, t + 7 * DAY);
        let new_order = order(
            &app,
            "new",
            t - 3000,
            t - 3000,
            Stage::Valid {
                cert: new.id.clone(),
            },
        );
        // Expired but within the retention: kept.
        let recent = order(&app, "recent", t - DAY / 2, t - DAY / 2, Stage::Open);
        // Authorizations of no order: one past the retention and the order lifetime, one not.
        let orphan_old = authz(&app, "orphan-old", t - 3 * DAY);
        let orphan_recent = authz(&app, "orphan-recent", t - DAY - DAY / 2);
        // Records retention never touches.
        app.db.put(Table::KeyUse, "k", &1u32).expect("put");
        app.db
            .put(Table::Identities, "dns:old", &1u32)
            .expect("put");

        let pruned = prune(&app, t).expect("prune");
        assert_eq!(
            pruned,
            Pruned {
                orders: 2,
                authzs: 3,
                certificates: 1,
                revocations: 0
            }
        );
        for gone in [&expired, &old_order] {
            assert!(!exists(&app, Table::Orders, &gone.id));
            assert!(!exists(&app, Table::Authzs, &gone.authzs[0]));
            let listed = format!("acct\0{}", gone.id);
            assert!(!exists(&app, Table::AccountOrders, &listed));
        }
        for kept in [&live_authz, &new_order, &recent] {
            assert!(
                exists(&app, Table::Orders, &kept.id),
                "{:?}",
                kept.identifiers
            );
            assert!(exists(&app, Table::Authzs, &kept.authzs[0]));
            let listed = format!("acct\0{}", kept.id);
            assert!(exists(&app, Table::AccountOrders, &listed));
        }
        assert!(!exists(&app, Table::Authzs, &orphan_old.id));
        assert!(exists(&app, Table::Authzs, &orphan_recent.id));
        assert!(exists(&app, Table::KeyUse, "k"));
        assert!(exists(&app, Table::Identities, "dns:old"));

        let reduced = stored(&app, &old.id);
        assert!(reduced.is_reduced());
        assert!(reduced.der.is_empty() && reduced.chain_pem.is_empty());
        assert_eq!(
            (&reduced.account_id, &reduced.identifiers, reduced.not_after),
            (&old.account_id, &old.identifiers, old.not_after)
        );
        assert_eq!(reduced.key_type().expect("key type"), "ECDSA P-256");
        assert_eq!(reduced.profile.as_deref(), Some("default"));
        assert_eq!(reduced.not_before, old.not_before);
        // Only the device's history holds it now.
        assert!(!exists(&app, Table::Certificates, &old.id));
        assert!(!stored(&app, &new.id).is_reduced());
        // The account's certificate download says why the certificate is gone.
        let err =
            crate::ra::revocation::certificate_of(&app, "acct", &old.id).expect_err("reduced");
        assert!(err.to_string().contains("retention"), "{err}");

        assert_eq!(
            prune(&app, t).expect("again"),
            Pruned::default(),
            "nothing left"
        );
    }

    /// A record that changed after the pruner read it is left alone: the compare-and-swap
    /// removes only the version that had ended.
    /// The key-use record of `c`, as finalize records it.
    fn key_use(app: &Ra, c: &Certificate) -> String {
        let fingerprint = c.key_fingerprint().expect("key").expect("full record");
        let used = KeyUse {
            account_id: c.account_id.clone(),
            identifiers: c.identifiers.clone(),
            serial: c.id.clone(),
            order_id: "o".into(),
            key_type: "ECDSA P-256".into(),
            first_certified: c.not_before,
            last_certified: c.not_before,
        };
        app.db.put(Table::KeyUse, &fingerprint, &used).expect("put");
        fingerprint
    }

    #[test]
    fn a_reduced_certificate_retires_its_key_use_record_and_the_key_stays_refused() {
        let (app, _dir) = ca();
        let t = now();
        let old = certificate(&app, "old", t - 10 * DAY, t - 5 * DAY);
        let old_key = key_use(&app, &old);
        // Revoked for keyCompromise before it was reduced.
        crate::ra::revocation::record_revocation(&app, &old.id, 1, RevokedBy::Operator)
            .expect("revoke");
        let live = certificate(&app, "live", t - DAY, t + DAY);
        let live_key = key_use(&app, &live);

        let p = prune(&app, t).expect("prune");
        assert_eq!(p.certificates, 1);
        // Moved into the history, retired.
        assert!(!exists(&app, Table::KeyUse, &old_key));
        let retired = history::retired_key(&app, &old_key)
            .expect("read")
            .expect("retired record");
        assert!(retired.is_retired());
        assert_eq!(
            (retired.serial.as_str(), retired.first_certified),
            (old.id.as_str(), old.not_before)
        );
        // Read through `lookup`, as finalize reads it: the holder comes from the reduced
        // certificate, and so does the keyCompromise revocation.
        let (used, cert) = crate::ra::keycheck::lookup(&app, &old_key)
            .expect("lookup")
            .expect("kept for good");
        assert_eq!(used.account_id, "acct");
        assert_eq!(used.identifiers, vec![dns("old")]);
        assert_eq!(used.serial, old.id);
        let cert = cert.expect("reduced certificate");
        assert!(cert.is_reduced());
        assert!(cert.revoked.is_some_and(|r| r.proves_key_compromise()));
        // A live certificate's record stays whole.
        let (used, _) = crate::ra::keycheck::lookup(&app, &live_key)
            .expect("lookup")
            .expect("record");
        assert!(!used.is_retired());
        assert_eq!(used.order_id, "o");
        // A second pass changes nothing more.
        let before = history_bytes(&app);
        assert_eq!(prune(&app, t).expect("prune"), Pruned::default());
        assert_eq!(history_bytes(&app), before);
    }

    /// Each further renewal of a device adds its history entry, serial index and retired
    /// key-use record: well under 180 bytes of keys and values in all, and nothing else.
    #[test]
    fn each_reduced_renewal_adds_little_to_the_store() {
        let (app, _dir) = ca();
        let t = now();
        let total = |app: &Ra| {
            let mut n = 0;
            for table in Table::ALL {
                for (k, v) in app.db.store().scan_prefix(table, b"").expect("scan") {
                    n += k.len() + v.len();
                }
            }
            n
        };
        let mut serials = Vec::new();
        let mut sizes = Vec::new();
        for round in 0..6 {
            let c = certificate(&app, "dev", t - (20 - round) * DAY, t - (10 - round) * DAY);
            key_use(&app, &c);
            serials.push(c.id);
            prune(&app, t).expect("prune");
            sizes.push(total(&app));
        }
        for pair in sizes.windows(2).skip(1) {
            let grew = pair[1] - pair[0];
            assert!(grew <= 130, "a renewal kept {grew} bytes: {sizes:?}");
        }
        for s in &serials {
            let c = stored(&app, s);
            assert!(c.is_reduced() && c.identifiers == vec![dns("dev")], "{s}");
        }
        // One history record for the device, the serial index and the retired keys.
        let records = app
            .db
            .store()
            .scan_prefix(Table::History, b"")
            .expect("scan");
        assert_eq!(records.len(), 1 + 2 * serials.len());
        assert_eq!(history::all(&app).expect("all").len(), serials.len());
    }

    /// A reduced certificate can still be revoked: the history keeps the revocation, a second
    /// one is `alreadyRevoked`.
    #[test]
    fn a_certificate_in_the_history_is_revoked_and_reported() {
        let (app, _dir) = ca();
        let t = now();
        let c = certificate(&app, "late", t - 10 * DAY, t - 5 * DAY);
        prune(&app, t).expect("prune");
        assert!(!exists(&app, Table::Certificates, &c.id));
        assert!(stored(&app, &c.id).revoked.is_none());
        let issuer = crate::ra::revocation::record_revocation(&app, &c.id, 1, RevokedBy::Operator)
            .expect("revoke");
        assert_eq!(issuer, c.issuer);
        let r = stored(&app, &c.id).revoked.expect("revoked");
        assert!(r.proves_key_compromise());
        assert_eq!(r.not_after, Some(c.not_after));
        // A second pruner that read the record before it was removed and copies it again
        // leaves the revocation standing.
        assert!(history::fold(&app, &c, "ECDSA P-256".into()).expect("fold"));
        assert!(stored(&app, &c.id).revoked.is_some());
        assert!(matches!(
            crate::ra::revocation::record_revocation(&app, &c.id, 4, RevokedBy::Operator),
            Err(crate::Error::AlreadyRevoked)
        ));
        assert!(matches!(
            crate::ra::revocation::record_revocation(&app, "00ff", 4, RevokedBy::Operator),
            Err(crate::Error::NotFound(_))
        ));
    }

    /// Records an older version reduced in place are read as they are, then moved into the
    /// history by the next pass, and read the same from there.
    #[test]
    fn records_reduced_in_place_by_an_older_version_are_read_and_moved() {
        let (app, _dir) = ca();
        let t = now();
        let c = certificate(&app, "old-format", t - 10 * DAY, t - 5 * DAY);
        let fingerprint = key_use(&app, &c);
        crate::ra::revocation::record_revocation(&app, &c.id, 1, RevokedBy::CertificateKey)
            .expect("revoke");
        let full = stored(&app, &c.id);
        // As the older version left them.
        let reduced = full.reduce("ECDSA P-256".into());
        app.db
            .put(Table::Certificates, &c.id, &reduced)
            .expect("put");
        let used: KeyUse = app
            .db
            .get(Table::KeyUse, &fingerprint)
            .expect("get")
            .expect("key use");
        app.db
            .put(Table::KeyUse, &fingerprint, &used.retire())
            .expect("put");
        let check = |app: &Ra| {
            let c2 = stored(app, &c.id);
            assert!(c2.is_reduced());
            assert_eq!(
                serde_json::to_value(&c2).expect("json"),
                serde_json::to_value(&reduced).expect("json")
            );
            let (used, cert) = crate::ra::keycheck::lookup(app, &fingerprint)
                .expect("lookup")
                .expect("key use");
            assert_eq!(
                (used.account_id.as_str(), used.serial.as_str()),
                ("acct", c.id.as_str())
            );
            assert!(cert
                .and_then(|c| c.revoked)
                .is_some_and(|r| r.proves_key_compromise()));
        };
        check(&app);
        let p = prune(&app, t).expect("prune");
        assert_eq!(p.certificates, 1);
        assert!(!exists(&app, Table::Certificates, &c.id));
        assert!(!exists(&app, Table::KeyUse, &fingerprint));
        check(&app);
    }

    #[test]
    fn a_record_changed_after_it_was_read_is_left_alone() {
        let (app, _dir) = ca();
        let t = now();
        let o = order(&app, "raced", t - 3 * DAY, t - 3 * DAY, Stage::Open);
        let read = raw(&app, Table::Orders, &o.id);
        app.db
            .update(Table::Orders, &o.id, |mut o: Order| {
                o.stage = Stage::Processing {
                    since: now(),
                    by: Some(crate::ra::process_id().to_owned()),
                };
                Ok(o)
            })
            .expect("update");
        let mut authzs = 0;
        let cutoff = t - DAY;
        assert!(!prune_order(&app, o.id.as_bytes(), &read, cutoff, &mut authzs).expect("prune"));
        assert!(exists(&app, Table::Orders, &o.id));
        assert!(exists(&app, Table::Authzs, &o.authzs[0]));
        assert!(exists(
            &app,
            Table::AccountOrders,
            &format!("acct\0{}", o.id)
        ));

        let c = certificate(&app, "raced", t - 10 * DAY, t - 5 * DAY);
        let read = raw(&app, Table::Certificates, &c.id);
        crate::ra::revocation::record_revocation(&app, &c.id, 1, RevokedBy::Operator)
            .expect("revoke");
        assert!(!reduce_certificate(&app, c.id.as_bytes(), &read, cutoff).expect("reduce"));
        assert!(
            stored(&app, &c.id).revoked.is_some(),
            "the revocation stands"
        );
    }

    /// Revocations racing with the pruner: every one stands, in the full or the reduced
    /// record, whichever came first.
    #[test]
    fn revocations_racing_with_the_pruner_all_stand() {
        let (app, _dir) = ca();
        let t = now();
        let certs: Vec<Certificate> = (0..40)
            .map(|i| certificate(&app, &format!("d{i}"), t - 10 * DAY, t - 5 * DAY))
            .collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..5 {
                    prune(&app, t).expect("prune");
                }
            });
            s.spawn(|| {
                for c in &certs {
                    crate::ra::revocation::record_revocation(&app, &c.id, 4, RevokedBy::Operator)
                        .expect("revoke");
                }
            });
        });
        prune(&app, t).expect("prune");
        for c in &certs {
            let now_stored = stored(&app, &c.id);
            assert!(now_stored.is_reduced(), "{}", c.id);
            let r = now_stored.revoked.expect("revocation kept");
            assert_eq!((r.reason, r.by), (4, Some(RevokedBy::Operator)));
        }
    }

    /// Revocations past notAfter leave the CRL after one CRL listed them past it; the CRL
    /// number keeps increasing; the record goes once it is off the CRL and past the retention.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_crl_drops_entries_once_listed_past_expiry() {
        let (app, _dir) = ca();
        let t = now();
        let expired = certificate(&app, "gone", t - 10 * DAY, t - 5 * DAY);
        let valid = certificate(&app, "valid", t - DAY, t + DAY);
        for c in [&expired, &valid] {
            crate::ra::revocation::record_revocation(&app, &c.id, 1, RevokedBy::Operator)
                .expect("revoke");
        }
        let entries = |der: &[u8]| {
            let (_, crl) = x509_parser::parse_x509_crl(der).expect("CRL");
            let mut serials: Vec<String> = crl
                .iter_revoked_certificates()
                .map(|r| hex::encode(r.raw_serial()))
                .collect();
            serials.sort();
            let number = crl.crl_number().expect("CRL number").clone();
            (serials, number)
        };
        // No CRL listed it past its notAfter yet, so the record stays whatever the retention
        // says.
        let kept = prune(&app, t).expect("prune");
        assert_eq!(kept.revocations, 0);
        assert!(exists(&app, Table::Revocations, &expired.id));
        // No CRL was published yet: both are listed, the expired one past its notAfter.
        let (first, n1) = entries(
            &crate::ra::crl::refresh(&app, IssuerKind::Ec, t)
                .await
                .expect("crl"),
        );
        let mut both = vec![expired.id.clone(), valid.id.clone()];
        both.sort();
        assert_eq!(first, both);
        let (second, n2) = entries(
            &crate::ra::crl::refresh(&app, IssuerKind::Ec, t + 1)
                .await
                .expect("crl"),
        );
        assert_eq!(second, vec![valid.id.clone()]);
        assert!(n2 > n1, "CRL number {n2} after {n1}");
        let pruned = prune(&app, t + 1).expect("prune");
        assert_eq!(pruned.revocations, 1);
        assert!(!exists(&app, Table::Revocations, &expired.id));
        assert!(exists(&app, Table::Revocations, &valid.id));
        // The reduced record still says it was revoked for key compromise.
        let r = stored(&app, &expired.id).revoked.expect("revoked");
        assert!(r.proves_key_compromise());
        let (third, n3) = entries(
            &crate::ra::crl::refresh(&app, IssuerKind::Ec, t + 2)
                .await
                .expect("crl"),
        );
        assert_eq!(third, vec![valid.id.clone()]);
        assert!(n3 > n2);
    }

    #[test]
    fn a_crl_from_a_clock_that_ran_ahead_drops_no_valid_certificate() {
        let t = 1_000_000;
        assert!(crate::ra::crl::listed(Some(t + 10), Some(t + 100), t));
        assert!(!crate::ra::crl::listed(Some(t - 10), Some(t + 100), t));
        assert!(crate::ra::crl::listed(Some(t - 10), None, t));
        assert!(crate::ra::crl::listed(None, Some(t), t));
        // Expired after the last CRL: listed once more.
        assert!(crate::ra::crl::listed(Some(t - 10), Some(t - 20), t));
    }

    #[test]
    fn an_authorization_that_changed_keeps_its_order() {
        let (app, _dir) = ca();
        let t = now();
        let o = order(&app, "pending", t - 3 * DAY, t - 3 * DAY, Stage::Open);
        app.db
            .update(Table::Authzs, &o.authzs[0], |mut a: Authz| {
                a.status = AuthzStatus::Deactivated;
                a.expires = t;
                Ok(a)
            })
            .expect("update");
        assert_eq!(prune(&app, t).expect("prune").orders, 0);
        assert!(exists(&app, Table::Orders, &o.id));
    }
}
