//! ACME Renewal Information (RFC 9773): when a device should renew, and which certificate a
//! new order replaces.

use std::collections::BTreeSet;

use crate::ca::cert::Certificate;
use crate::ra::order::Order;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::now;
use crate::types::{Identifier, OrderStatus};
use crate::{Error, Result};

/// Finds the certificate an ARI identifier names; `None` if this CA did not issue it.
fn lookup(app: &Ra, id: &str) -> Result<Option<Certificate>> {
    let (aki, serial) = crate::wire::parse_ari_cert_id(id)?;
    let Some(cert) = app
        .db
        .get::<Certificate>(Table::Certificates, &hex::encode(&serial))?
    else {
        return Ok(None);
    };
    // Past notAfter plus the retention only an index entry is left, without the AKI.
    if cert.is_reduced() {
        return Ok(None);
    }
    let der = crate::wire::b64u_decode("stored certificate", &cert.der)?;
    let (stored_aki, _) = aki_and_serial(&der).map_err(|e| {
        Error::Storage(format!(
            "stored certificate {}: {}",
            cert.id,
            e.to_problem().detail
        ))
    })?;
    Ok((stored_aki.as_deref() == Some(aki.as_slice())).then_some(cert))
}

/// The AKI keyIdentifier (if any) and the serial's content octets of a DER certificate; a
/// certificate that does not parse is `malformed`.
fn aki_and_serial(der: &[u8]) -> Result<(Option<Vec<u8>>, Vec<u8>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Malformed(format!("unparsable: {e}")))?;
    let aki = parsed
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    Ok((aki, parsed.raw_serial().to_vec()))
}

/// The ARI certificate identifier of a DER certificate (RFC 9773 §4.1), e.g. for a newOrder
/// `replaces` value; an error if it has no AKI keyIdentifier.
pub fn cert_id_of(der: &[u8]) -> Result<String> {
    match aki_and_serial(der)? {
        (Some(aki), serial) => crate::wire::ari_cert_id(&aki, &serial),
        (None, _) => Err(Error::Malformed(
            "the certificate has no authority key identifier".into(),
        )),
    }
}

/// The window in which the client should renew: the last third of the lifetime, from 2/3 to
/// 5/6, so devices renew well before expiry and a fleet spreads over the window instead of all
/// renewing at one instant. A revoked certificate is due now (RFC 9773 §4.2).
pub fn suggested_window(cert: &Certificate, now: i64) -> (i64, i64) {
    if cert.revoked.is_some() {
        return (now - 3600, now - 60);
    }
    // The operator pulled renewal forward (e.g. after a key incident): due from that moment.
    if let Some(at) = cert.renew_after {
        return (at, at.max(now) + 60);
    }
    let life = cert.not_after - cert.not_before;
    (
        cert.not_before + life * 2 / 3,
        cert.not_before + life * 5 / 6,
    )
}

/// The suggested renewal window of the certificate an ARI identifier names, as Unix times
/// (RFC 9773 §4.2); `notFound` if this CA did not issue it.
pub fn window(app: &Ra, id: &str) -> Result<(i64, i64)> {
    let cert = lookup(app, id)?.ok_or(Error::NotFound("certificate"))?;
    Ok(suggested_window(&cert, now()))
}

/// Checks a newOrder `replaces` value (RFC 9773 §5) without writing anything, so newOrder can
/// run every other check before [`claim`] marks the certificate. Returns the certificate.
///
/// > Servers SHOULD check that the identified certificate and the New Order request correspond
/// > to the same ACME Account, that they share at least one identifier, and that the identified
/// > certificate has not already been marked as replaced by a different Order that is not
/// > "invalid". … If any of these checks fail, the Server SHOULD reject the new-order request.
/// > If the Server rejects the request because the identified certificate has already been
/// > marked as replaced, it MUST return an HTTP 409 (Conflict) with a problem document of type
/// > "alreadyReplaced"
///
/// <https://www.rfc-editor.org/rfc/rfc9773#section-5>
pub fn check_replaces(
    app: &Ra,
    account_id: &str,
    replaces: &str,
    identifiers: &BTreeSet<Identifier>,
) -> Result<Certificate> {
    let cert = lookup(app, replaces)?.ok_or_else(|| {
        Error::Malformed(format!(
            "replaces: {replaces:?} names no certificate of this CA"
        ))
    })?;
    if cert.account_id != account_id {
        return Err(Error::Unauthorized(
            "replaces: the certificate was ordered by another account".into(),
        ));
    }
    if !cert.identifiers.iter().any(|id| identifiers.contains(id)) {
        let certified = cert
            .identifiers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::Malformed(format!(
            "replaces: certificate {} shares no identifier with this order (it certifies {certified}); \
             a replacement must keep at least one of them",
            cert.id
        )));
    }
    // Checked here as well as in `claim` so a refused order writes nothing.
    ensure_not_replaced(app, &cert, None)?;
    Ok(cert)
}

/// Marks `cert_id` as replaced by `order_id` under compare-and-swap, so of two concurrent
/// orders replacing one certificate only one succeeds; the other gets `alreadyReplaced`
/// (RFC 9773 §5, quoted on [`check_replaces`]). newOrder calls this last, once the order is
/// stored, so a refused order never leaves the certificate claimed.
pub fn claim(app: &Ra, cert_id: &str, order_id: &str) -> Result<()> {
    app.db
        .update(Table::Certificates, cert_id, |mut c: Certificate| {
            ensure_not_replaced(app, &c, Some(order_id))?;
            c.replaced_by = Some(order_id.to_owned());
            Ok(c)
        })?;
    Ok(())
}

/// `alreadyReplaced` unless the certificate is unclaimed, claimed by `by` itself, or claimed by
/// an order that is gone or `invalid`.
///
/// > … has not already been marked as replaced by a different Order that is not "invalid".
///
/// <https://www.rfc-editor.org/rfc/rfc9773#section-5>
///
/// A missing order counts as invalid: releases before this check claimed the certificate
/// before the order was stored, so a refused newOrder could leave a claim by an order that
/// never existed.
fn ensure_not_replaced(app: &Ra, cert: &Certificate, by: Option<&str>) -> Result<()> {
    let Some(other) = cert.replaced_by.as_deref() else {
        return Ok(());
    };
    if Some(other) == by {
        return Ok(());
    }
    let live = match app.db.get::<Order>(Table::Orders, other)? {
        Some(order) => order.status(app)? != OrderStatus::Invalid,
        None => false,
    };
    if live {
        return Err(Error::AlreadyReplaced(format!(
            "certificate {} was already replaced by another order",
            cert.id
        )));
    }
    Ok(())
}
