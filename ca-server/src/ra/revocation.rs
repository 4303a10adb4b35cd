//! Revocation (RFC 8555 §7.6): who may revoke a certificate, and recording it so the next CRL
//! lists it.

use crate::ca::cert::{Certificate, Revocation, RevokedBy};
use crate::ca::IssuerKind;
use crate::key::PublicKey;
use crate::ra::account::Account;
use crate::ra::authz::Authz;
use crate::ra::order::Order;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::{now, Identifier};
use crate::{Error, Result};

/// RFC 5280 §5.3.1 reasons a subscriber may give. cACompromise (2), certificateHold (6),
/// removeFromCRL (8) and aACompromise (10) are the CA's business, 7 is unassigned.
const ALLOWED_REASONS: &[i64] = &[0, 1, 3, 4, 5, 9];

/// Who signed a revocation request.
pub enum Revoker<'a> {
    /// An account, by `kid`.
    Account(&'a Account),
    /// The key in the certificate, by `jwk`.
    Key(&'a PublicKey),
}

/// The certificate `id` as its account downloads it; `notFound` for another account's.
pub fn certificate_of(app: &Ra, account_id: &str, id: &str) -> Result<Certificate> {
    let cert = crate::ra::history::certificate(app, id)?
        .filter(|c| c.account_id == account_id)
        .ok_or(Error::NotFound("certificate"))?;
    if cert.is_reduced() {
        return Err(Error::NotFound(
            "certificate: it expired longer ago than the CA's retention, which keeps only its \
             index entry",
        ));
    }
    Ok(cert)
}

/// Revokes the certificate `der` for `revoker` with RFC 5280 `reason` (default 0).
///
/// > The server MUST consider at least the following accounts authorized for a given
/// > certificate: the account that issued the certificate; an account that holds
/// > authorizations for all of the identifiers in the certificate. The server MUST also
/// > consider a revocation request valid if it is signed with the private key corresponding
/// > to the public key in the certificate.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.6>
pub async fn revoke(app: &Ra, revoker: Revoker<'_>, der: &[u8], reason: Option<i64>) -> Result<()> {
    let reason = reason.unwrap_or(0);
    if !ALLOWED_REASONS.contains(&reason) {
        return Err(Error::BadRevocationReason(format!(
            "reason code {reason} is not accepted; use one of {ALLOWED_REASONS:?}"
        )));
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Malformed(format!("certificate is not valid DER X.509: {e}")))?;
    let serial = hex::encode(parsed.raw_serial());
    let stored = app
        .db
        .get::<Certificate>(Table::Certificates, &serial)?
        .filter(|c| crate::wire::b64u_decode("stored", &c.der).ok().as_deref() == Some(der))
        .ok_or(Error::NotFound("certificate issued by this CA"))?;

    let by = match revoker {
        Revoker::Account(acct) if acct.id == stored.account_id => RevokedBy::Account,
        Revoker::Account(acct) => {
            if !holds_authorizations(app, &acct.id, &stored.identifiers)? {
                return Err(Error::Unauthorized(
                    "this account neither ordered the certificate nor holds authorizations proven by a challenge for all its identifiers; sign with the certificate's key instead".into(),
                ));
            }
            RevokedBy::AuthorizationHolder
        }
        Revoker::Key(key) => {
            let cert_key = crate::key::policy::parse_spki(parsed.public_key().raw)?;
            if *key != cert_key {
                return Err(Error::Unauthorized(
                    "the request is signed by neither the ordering account nor the certificate's key".into(),
                ));
            }
            RevokedBy::CertificateKey
        }
    };

    let issuer = match record_revocation(app, &serial, u8::try_from(reason).unwrap_or(0), by) {
        Err(Error::AlreadyRevoked) => {
            // A revocation cut off between its two writes (a crash, a store call that timed
            // out) left the certificate marked but off the CRL; the retry puts it on.
            if let Some(issuer) = ensure_listed(app, &serial)? {
                app.db.flush().await?;
                crate::ra::crl::publish(app, [issuer]).await;
            }
            return Err(Error::AlreadyRevoked);
        }
        other => other?,
    };
    app.db.flush().await?;
    tracing::info!(serial = %serial, reason, ?by, "certificate revoked");
    crate::ra::crl::publish(app, [issuer]).await;
    Ok(())
}

/// Marks a certificate revoked under compare-and-swap (`alreadyRevoked` if it was), adds it to
/// the table its issuer's CRL is made from and invalidates the cached CRLs so the next one
/// lists it. Returns the issuing intermediate. The caller flushes, then publishes the CRL
/// ([`crate::ra::crl::publish`]).
pub fn record_revocation(app: &Ra, serial: &str, reason: u8, by: RevokedBy) -> Result<IssuerKind> {
    // A backup has both records or neither: a certificate marked revoked is on the CRL.
    let _group = app.db.write_group();
    let at = now();
    let mark = |mut c: Certificate| {
        if c.revoked.is_some() {
            return Err(Error::AlreadyRevoked);
        }
        c.revoked = Some(Revocation {
            reason,
            at,
            issuer: c.issuer,
            by: Some(by),
            not_after: Some(c.not_after),
        });
        Ok(c)
    };
    // A certificate past notAfter plus the retention is in the history; the pruner may move
    // it there between the two reads, after which the first finds nothing.
    let revoked = match app.db.update(Table::Certificates, serial, mark) {
        Err(Error::NotFound(_)) => {
            crate::ra::history::update(app, serial, mark)?.ok_or(Error::NotFound("certificate"))?
        }
        other => other?,
    }
    .revoked
    .ok_or_else(|| Error::Storage(format!("revocation of {serial} was not stored")))?;
    app.db.put(Table::Revocations, serial, &revoked)?;
    crate::ra::crl::count_revocation(app)?;
    app.crl.invalidate();
    Ok(revoked.issuer)
}

/// For a certificate marked revoked: writes its record in the table the CRL is made from if it
/// is missing (or counts it again if the shared CRL may predate it), and returns the issuer
/// whose CRL must then be published again.
fn ensure_listed(app: &Ra, serial: &str) -> Result<Option<IssuerKind>> {
    if let Some(listed) = app.db.get::<Revocation>(Table::Revocations, serial)? {
        // The record is there, but the revocation may not have been counted (cut off between
        // the two writes), and then the CRL every instance serves stays without it.
        return crate::ra::crl::recount_if_unlisted(app, listed.issuer, listed.at)
            .map(|recounted| recounted.then_some(listed.issuer));
    }
    // An expired certificate's revocation leaves the CRL's table on purpose (`ra::crl`).
    let Some(revoked) = crate::ra::history::certificate(app, serial)?
        .filter(|c| c.not_after >= now())
        .and_then(|c| c.revoked)
    else {
        return Ok(None);
    };
    let _group = app.db.write_group();
    if !app.db.insert_new(Table::Revocations, serial, &revoked)? {
        return Ok(None);
    }
    crate::ra::crl::count_revocation(app)?;
    app.crl.invalidate();
    tracing::warn!(
        serial,
        "a revocation was missing from the CRL's table and is added now"
    );
    Ok(Some(revoked.issuer))
}

/// Whether `account_id` holds currently valid authorizations covering every identifier,
/// each proven by a challenge ([`Authz::proven_by_challenge`]). An identifier an enrollment
/// credential or an operator vouched for gives no right over another account's certificate.
fn holds_authorizations(app: &Ra, account_id: &str, ids: &[Identifier]) -> Result<bool> {
    let mut covered = std::collections::BTreeSet::new();
    let prefix = format!("{account_id}\0");
    for key in app.db.keys_with_prefix(Table::AccountOrders, &prefix)? {
        let Some(order) = key
            .strip_prefix(&prefix)
            .map(|id| app.db.get::<Order>(Table::Orders, id))
            .transpose()?
            .flatten()
        else {
            continue;
        };
        for authz_id in &order.authzs {
            if let Some(a) = app.db.get::<Authz>(Table::Authzs, authz_id)? {
                if a.proven_by_challenge() {
                    covered.insert(a.identifier);
                }
            }
        }
    }
    Ok(ids.iter().all(|i| covered.contains(i)))
}
