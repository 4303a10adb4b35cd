//! Which account holds which identity: every identity the CA certifies is bound to one
//! account at a time.
//!
//! One record per identity ([`Table::Identities`]), keyed `type:value` for order identifiers
//! (`dns:plc-1.line2.plant.example`) and `uri:` + the URI for an OPC UA ApplicationUri. It
//! names the account that got the newest certificate for it. Two rules read it:
//!
//! - **ApplicationUri.** No challenge proves a URI (it names an application, not an
//!   endpoint), so the first account that gets a certificate for a URI holds it, for good:
//!   another account's CSR naming it gets `badCSR` naming the holder, until an operator
//!   releases it (`ca-server identity release uri:…`). The claim is taken under
//!   compare-and-swap before the certificate is signed, so of two accounts racing for a
//!   URI one wins.
//! - **Pre-authorization.** An allow-listed enrollment credential vouches for a range of
//!   identifiers (SPEC §6.6), and many devices may share one credential. Its vouching covers
//!   an identifier only while no other account holds a current (unexpired, unrevoked)
//!   certificate for it; otherwise the account must prove control by a challenge, or the
//!   operator releases the identifier. So one device cannot take its sibling's name.
//!
//! Identifiers proven by a challenge, an attestation or an operator's approval move to the
//! account that proved them when its certificate is issued.

use serde::{Deserialize, Serialize};

use crate::app::{now, AppState};
use crate::cert::Certificate;
use crate::storage::Table;
use crate::types::Identifier;
use crate::{Error, Result};

/// Who holds an identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holding {
    /// The holding account.
    pub account_id: String,
    /// Its newest certificate for the identity; `None` while the first one is being issued.
    #[serde(default)]
    pub serial: Option<String>,
    /// That certificate's notAfter (Unix time); 0 while it is being issued.
    #[serde(default)]
    pub not_after: i64,
    /// When the account first held it (Unix time).
    pub since: i64,
}

/// The record key of an order identifier.
pub fn key(id: &Identifier) -> String {
    id.to_string()
}

/// The record key of an ApplicationUri.
pub fn uri_key(uri: &str) -> String {
    format!("uri:{uri}")
}

/// Parses an operator's `type:value` (`dns:`, `ip:`, `permanent-identifier:` or `uri:`) into a
/// record key, normalising identifiers as newOrder does.
pub fn parse_key(text: &str) -> Result<String> {
    match text.strip_prefix("uri:") {
        Some("") => Err(Error::Malformed(
            "uri: needs the ApplicationUri after it".into(),
        )),
        Some(uri) => Ok(uri_key(uri)),
        None => crate::admin::parse_identifier(text).map(|id| key(&id)),
    }
}

/// The holder of `key`, if any.
pub fn get(app: &AppState, key: &str) -> Result<Option<Holding>> {
    app.db.get(Table::Identities, key)
}

/// The operator's release: forgets who holds `key`. Returns the holding it removed.
pub fn release(app: &AppState, key: &str) -> Result<Option<Holding>> {
    let held = get(app, key)?;
    if held.is_some() {
        app.db.remove(Table::Identities, key)?;
    }
    Ok(held)
}

/// Whether the certificate a holding names is current: issued, unexpired and unrevoked.
fn current(app: &AppState, h: &Holding) -> Result<bool> {
    let Some(serial) = &h.serial else {
        // Being issued right now.
        return Ok(true);
    };
    if h.not_after <= now() {
        return Ok(false);
    }
    Ok(app
        .db
        .get::<Certificate>(Table::Certificates, serial)?
        .is_some_and(|c| c.revoked.is_none()))
}

/// The holding of another account than `account_id` with a current certificate for `id`.
pub fn held_by_other(app: &AppState, id: &Identifier, account_id: &str) -> Result<Option<Holding>> {
    match get(app, &key(id))? {
        Some(h) if h.account_id != account_id && current(app, &h)? => Ok(Some(h)),
        _ => Ok(None),
    }
}

/// A claim on an ApplicationUri taken before issuance ([`claim_uri`]).
#[derive(Debug)]
pub struct UriClaim {
    key: String,
    /// This finalize created the record, so a failed issuance gives it back.
    new: bool,
}

impl UriClaim {
    /// Gives the URI back when issuance failed and this claim was the first.
    pub fn abandon(self, app: &AppState) {
        if self.new {
            if let Err(e) = app.db.remove(Table::Identities, &self.key) {
                tracing::error!(key = %self.key, error = %e, "cannot release an abandoned ApplicationUri claim");
            }
        }
    }
}

/// Claims `uri` for `account_id` before its certificate is signed: `badCSR` naming the
/// holder when another account holds it.
pub fn claim_uri(app: &AppState, uri: &str, account_id: &str) -> Result<UriClaim> {
    let key = uri_key(uri);
    let first = Holding {
        account_id: account_id.to_owned(),
        serial: None,
        not_after: 0,
        since: now(),
    };
    if app.db.insert_new(Table::Identities, &key, &first)? {
        return Ok(UriClaim { key, new: true });
    }
    let held = get(app, &key)?;
    match held {
        Some(h) if h.account_id == account_id => Ok(UriClaim { key, new: false }),
        Some(h) => Err(Error::BadCsr(format!(
            "ApplicationUri {uri:?} is held by account {}{}: an ApplicationUri is bound to \
             the first account certified for it, until the operator releases it (ca-server \
             identity release {key})",
            h.account_id,
            h.serial
                .as_deref()
                .map(|s| format!(" (certificate {s})"))
                .unwrap_or_default()
        ))),
        // Released between the two reads: try again.
        None => claim_uri(app, uri, account_id),
    }
}

/// Records `cert`'s account as the holder of its identifiers and of `uri`.
pub fn record_issued(app: &AppState, cert: &Certificate, uri: Option<&str>) -> Result<()> {
    let keys = cert.identifiers.iter().map(key).chain(uri.map(uri_key));
    for k in keys {
        let since = match get(app, &k)? {
            Some(h) if h.account_id == cert.account_id => h.since,
            _ => now(),
        };
        app.db.put(
            Table::Identities,
            &k,
            &Holding {
                account_id: cert.account_id.clone(),
                serial: Some(cert.id.clone()),
                not_after: cert.not_after,
                since,
            },
        )?;
    }
    Ok(())
}
