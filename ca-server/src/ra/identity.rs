//! Which account holds which identity: every identity the CA certifies is bound to one
//! account at a time.
//!
//! One record per identity ([`Table::Identities`]), keyed `type:value` for order identifiers
//! (`dns:plc-1.line2.plant.example`) and `uri:` + the normalised URI for an OPC UA
//! ApplicationUri. It names the account that got the newest certificate for it. Two rules
//! read it:
//!
//! - **ApplicationUri.** No challenge proves a URI (it names an application, not an
//!   endpoint), so the first account that gets a certificate for a URI holds it, for good:
//!   another account's CSR naming it gets `badCSR` naming the holder, until an operator
//!   releases it (`ca-server identity release uri:…`). URIs that OPC UA stacks may take for one
//!   (differing in case, or in percent-encoding of unreserved characters) are one identity.
//! - **Pre-authorization.** An allow-listed enrollment credential vouches for a range of
//!   identifiers (SPEC §6.6), and many devices may share one credential. Its vouching covers
//!   an identifier only while no other account holds a current (unexpired, unrevoked)
//!   certificate for it; otherwise the account must prove control by a challenge, or the
//!   operator releases the identifier. So one device cannot take its sibling's name.
//!
//! Both are claimed under compare-and-swap before the certificate is signed, so of two
//! accounts racing for one identity one wins. A claim whose certificate never came (a failed
//! issuance, a crash) is given back, or lapses after [`CLAIM_LAPSES`]. The certificate is
//! recorded against the claim by compare-and-swap too, before the certificate is stored: an
//! issuance that stalled past the lapse while another account took the identity fails there,
//! and its certificate is never handed out. A holding is recorded before its certificate is
//! stored, so one whose certificate is missing (a crash between the two) still counts, until
//! its notAfter or the operator's release. Identifiers proven by a challenge, an attestation or
//! an operator's approval move to the account that proved them when its certificate is issued.
//!
//! A store from before this index existed is indexed once at start ([`index_existing`]).

use serde::{Deserialize, Serialize};

use crate::ca::cert::Certificate;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::now;
use crate::types::Identifier;
use crate::{Error, Result};

/// Seconds after which a claim without a certificate no longer counts: as long as finalize
/// may take before the order is reported stuck.
pub const CLAIM_LAPSES: i64 = 120;

/// The `Meta` key recording that existing certificates were indexed.
const INDEXED: &str = "identities_indexed";

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
    /// When the account first held it (Unix time); for a claim, when it was taken.
    pub since: i64,
}

impl Holding {
    /// A claim being issued that has taken too long to still count.
    fn lapsed(&self, at: i64) -> bool {
        self.serial.is_none() && at - self.since > CLAIM_LAPSES
    }
}

/// The record key of an order identifier.
pub fn key(id: &Identifier) -> String {
    id.to_string()
}

/// The record key of an ApplicationUri: `uri:` and the URI with percent-encoded unreserved
/// characters decoded and the rest in lower case (RFC 3986 §6.2.2), so that spellings a
/// relying party may take for the same URI are one identity.
pub fn uri_key(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len() + 4);
    out.push_str("uri:");
    let bytes = uri.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(b) if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                out.push(char::from(b.to_ascii_lowercase()));
                i += 3;
            }
            _ => {
                out.push(char::from(bytes[i]).to_ascii_lowercase());
                i += 1;
            }
        }
    }
    out
}

/// Parses an operator's `type:value` (`dns:`, `ip:`, `permanent-identifier:` or `uri:`) into a
/// record key, normalising identifiers as newOrder does.
pub fn parse_key(text: &str) -> Result<String> {
    match text.strip_prefix("uri:") {
        Some("") => Err(Error::Malformed(
            "uri: needs the ApplicationUri after it".into(),
        )),
        Some(uri) => Ok(uri_key(uri)),
        None => crate::wire::parse_identifier(text).map(|id| key(&id)),
    }
}

/// The holder of `key`, if any.
pub fn get(app: &Ra, key: &str) -> Result<Option<Holding>> {
    app.db.get(Table::Identities, key)
}

/// The operator's release: forgets who holds `key`. Returns the holding it removed.
pub fn release(app: &Ra, key: &str) -> Result<Option<Holding>> {
    let held = get(app, key)?;
    if held.is_some() {
        app.db.remove(Table::Identities, key)?;
    }
    Ok(held)
}

/// Whether a holding is current at `at`: a claim being issued, or a certificate that is
/// unexpired and unrevoked. A certificate recorded but not stored (the issuing process died
/// between the two writes) counts until its notAfter: it may have been signed.
fn current(app: &Ra, h: &Holding, at: i64) -> Result<bool> {
    let Some(serial) = &h.serial else {
        return Ok(!h.lapsed(at));
    };
    if h.not_after <= at {
        return Ok(false);
    }
    Ok(crate::ra::history::certificate(app, serial)?.is_none_or(|c| c.revoked.is_none()))
}

/// The holding of another account than `account_id` with a current certificate for `id`.
pub fn held_by_other(app: &Ra, id: &Identifier, account_id: &str) -> Result<Option<Holding>> {
    match get(app, &key(id))? {
        Some(h) if h.account_id != account_id && current(app, &h, now())? => Ok(Some(h)),
        _ => Ok(None),
    }
}

/// A claim on an identity taken before issuance ([`claim`]).
#[derive(Debug)]
pub struct Claim {
    key: String,
    account_id: String,
    /// This finalize wrote the record, so a failed issuance gives it back.
    new: bool,
}

impl Claim {
    /// Gives the identity back when issuance failed and this claim wrote the record.
    pub fn abandon(self, app: &Ra) {
        if !self.new {
            return;
        }
        let ours = get(app, &self.key)
            .ok()
            .flatten()
            .is_some_and(|h| h.account_id == self.account_id && h.serial.is_none());
        if ours {
            if let Err(e) = app.db.remove(Table::Identities, &self.key) {
                tracing::error!(key = %self.key, error = %e, "cannot give back an abandoned identity claim");
            }
        }
    }
}

/// How a claim treats another account's holding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Held until the operator releases it (an ApplicationUri): only a lapsed claim gives way.
    UntilReleased,
    /// Held while its certificate is current (a pre-authorized identifier).
    WhileCurrent,
}

/// Claims `key` for `account_id` before its certificate is signed. `Ok(Err(holding))` when
/// another account holds it under `hold`.
pub fn claim(
    app: &Ra,
    key: &str,
    account_id: &str,
    hold: Hold,
) -> Result<std::result::Result<Claim, Holding>> {
    let at = now();
    let mine = Holding {
        account_id: account_id.to_owned(),
        serial: None,
        not_after: 0,
        since: at,
    };
    let claimed = |new| Claim {
        key: key.to_owned(),
        account_id: account_id.to_owned(),
        new,
    };
    loop {
        if app.db.insert_new(Table::Identities, key, &mine)? {
            return Ok(Ok(claimed(true)));
        }
        let mut outcome = None;
        let updated = app.db.update(Table::Identities, key, |h: Holding| {
            if h.account_id == account_id {
                outcome = Some(Ok(false));
                return Ok(h);
            }
            let gives_way = match hold {
                Hold::UntilReleased => h.lapsed(at),
                Hold::WhileCurrent => !current(app, &h, at)?,
            };
            if gives_way {
                outcome = Some(Ok(true));
                Ok(mine.clone())
            } else {
                outcome = Some(Err(h.clone()));
                Ok(h)
            }
        });
        match (updated, outcome) {
            (Ok(_), Some(Ok(new))) => return Ok(Ok(claimed(new))),
            (Ok(_), Some(Err(held))) => return Ok(Err(held)),
            // Released between the two calls: claim it afresh.
            (Err(Error::NotFound(_)), _) => continue,
            (Err(e), _) => return Err(e),
            (Ok(_), None) => return Err(Error::Internal("identity claim decided nothing".into())),
        }
    }
}

/// The `badCSR` for an ApplicationUri another account holds.
pub fn uri_held(uri: &str, held: &Holding) -> Error {
    Error::BadCsr(format!(
        "ApplicationUri {uri:?} is held by account {}{}: an ApplicationUri is bound to the \
         first account certified for it, until the operator releases it (ca-server identity \
         release uri:{uri})",
        held.account_id,
        held.serial
            .as_deref()
            .map(|s| format!(" (certificate {s})"))
            .unwrap_or_default()
    ))
}

/// The holding that records `cert` for its account, given the record it replaces.
fn issued_holding(cert: &Certificate, before: Option<&Holding>) -> Holding {
    Holding {
        account_id: cert.account_id.clone(),
        serial: Some(cert.id.clone()),
        not_after: cert.not_after,
        since: before
            .filter(|h| h.account_id == cert.account_id)
            .map_or_else(now, |h| h.since),
    }
}

/// Records `cert`'s account as the holder of its identifiers and of `uri`, before the
/// certificate is stored. The identities `claims` took are recorded only while the claim still
/// holds: when another account has taken one since (this issuance stalled past
/// [`CLAIM_LAPSES`]), nothing stays recorded and the answer is an error, and the caller must
/// not hand out the certificate. The others, proven by this order, move to the account.
pub fn record_issued(
    app: &Ra,
    cert: &Certificate,
    uri: Option<&str>,
    claims: &[Claim],
) -> Result<()> {
    let mut recorded: Vec<(&str, Holding, Holding)> = Vec::new();
    for claim in claims {
        let mut replaced = None;
        let outcome = app.db.update(Table::Identities, &claim.key, |h: Holding| {
            if h.account_id != claim.account_id {
                return Err(lost_claim(&claim.key, &h.account_id));
            }
            let after = issued_holding(cert, Some(&h));
            replaced = Some(h);
            Ok(after)
        });
        match (outcome, replaced) {
            (Ok(after), Some(before)) => recorded.push((&claim.key, before, after)),
            (outcome, _) => {
                // Put back what this call recorded, unless it changed again since.
                for (key, before, after) in recorded {
                    let _ = app.db.update(Table::Identities, key, |h: Holding| {
                        Ok(if h == after { before.clone() } else { h })
                    });
                }
                return Err(match outcome {
                    Err(Error::NotFound(_)) | Ok(_) => lost_claim(&claim.key, "nobody"),
                    Err(e) => e,
                });
            }
        }
    }
    let claimed: Vec<&str> = claims.iter().map(|c| c.key.as_str()).collect();
    let keys = cert.identifiers.iter().map(key).chain(uri.map(uri_key));
    for k in keys.filter(|k| !claimed.contains(&k.as_str())) {
        let before = get(app, &k)?;
        app.db.put(
            Table::Identities,
            &k,
            &issued_holding(cert, before.as_ref()),
        )?;
    }
    Ok(())
}

/// The error of an issuance whose claim on `key` was taken over by `holder` meanwhile.
fn lost_claim(key: &str, holder: &str) -> Error {
    Error::Unauthorized(format!(
        "{key} is held by {holder} since this certificate's issuance began, which took longer \
         than a claim lasts; the certificate was not issued: finalize again"
    ))
}

/// The URIs in the subjectAltName of a certificate (DER).
fn certificate_uris(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

/// Indexes the certificates of a store from before this index, once: every unexpired,
/// unrevoked certificate makes its account the holder of its identifiers and of its
/// ApplicationUri, where no newer holding is recorded. Walks the certificates a page at a
/// time, so a large store is not held in memory.
pub fn index_existing(app: &Ra) -> Result<()> {
    if app.db.get::<bool>(Table::Meta, INDEXED)?.is_some() {
        return Ok(());
    }
    let at = now();
    let (mut after, mut seen, mut indexed) = (Vec::new(), 0usize, 0usize);
    loop {
        let page = app
            .db
            .store()
            .scan_after(Table::Certificates, &after, 10_000)?;
        let Some((last, _)) = page.last() else { break };
        after.clone_from(last);
        for (_, raw) in &page {
            seen += 1;
            let Ok(cert) = serde_json::from_slice::<Certificate>(raw) else {
                continue;
            };
            if cert.revoked.is_some() || cert.not_after <= at {
                continue;
            }
            let der = crate::wire::b64u_decode("stored certificate", &cert.der).unwrap_or_default();
            let keys: Vec<String> = cert
                .identifiers
                .iter()
                .map(key)
                .chain(certificate_uris(&der).iter().map(|u| uri_key(u)))
                .collect();
            let holding = Holding {
                account_id: cert.account_id.clone(),
                serial: Some(cert.id.clone()),
                not_after: cert.not_after,
                since: cert.not_before,
            };
            for k in keys {
                // Of several certificates for one identity, the one issued last holds it.
                let newer = get(app, &k)?.is_some_and(|h| h.not_after >= holding.not_after);
                if !newer {
                    app.db.put(Table::Identities, &k, &holding)?;
                    indexed += 1;
                }
            }
        }
    }
    app.db.put(Table::Meta, INDEXED, &true)?;
    if seen > 0 {
        tracing::info!(
            certificates = seen,
            identities = indexed,
            "indexed who holds which identity in the existing certificates"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_keys_fold_case_and_unreserved_percent_encoding() {
        let k = uri_key("urn:plant.example:line1:plc7");
        for same in [
            "urn:plant.example:line1:PLC7",
            "URN:Plant.Example:line1:plc%37",
            "urn:plant.example:line1:pl%63%37",
        ] {
            assert_eq!(uri_key(same), k, "{same}");
        }
        assert_ne!(uri_key("urn:plant.example:line1:plc8"), k);
        // A reserved character stays encoded, and apart from its decoded form.
        assert_eq!(uri_key("urn:a%2Fb"), "uri:urn:a%2fb");
        assert_ne!(uri_key("urn:a%2Fb"), uri_key("urn:a/b"));
        // Malformed escapes are kept as they are.
        assert_eq!(uri_key("urn:x%4"), "uri:urn:x%4");
        assert_eq!(uri_key("urn:x%zz"), "uri:urn:x%zz");
    }
}
