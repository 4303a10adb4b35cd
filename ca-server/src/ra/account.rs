//! Accounts: newAccount (RFC 8555 §7.3), update and deactivation (§7.3.2, §7.3.6), key
//! rollover (§7.3.5) and the orders list (§7.1.2.1).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::jose::Parsed;
use crate::jwk;
use crate::key::PublicKey;
use crate::ra::order::Order;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::new_id;
use crate::types::now;
use crate::types::{AccountStatus, OrderStatus};
use crate::wfe::jws::{AccountRequest, KeyRequest};
use crate::wfe::AppState;
use crate::wire::paths;
use crate::{Error, Result};

/// A stored account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Account {
    /// Random id; the account URL is `/acme/acct/{id}`.
    pub id: String,
    /// The account key as a canonical JWK.
    pub key: Value,
    /// RFC 7638 thumbprint of `key`.
    pub thumbprint: String,
    /// Status.
    pub status: AccountStatus,
    /// `mailto:` URLs.
    #[serde(default)]
    pub contact: Vec<String>,
    /// Whether the client agreed to the terms of service.
    #[serde(default)]
    pub terms_of_service_agreed: bool,
    /// The EAB key id that bound this account, if any.
    #[serde(default)]
    pub eab_kid: Option<String>,
    /// The `externalAccountBinding` JWS the account was created with, shown in the account
    /// object (RFC 8555 §7.1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_account_binding: Option<Value>,
    /// Unix time of creation.
    pub created: i64,
}

impl Account {
    /// The account key.
    pub fn public_key(&self) -> Result<PublicKey> {
        jwk::parse(&self.key)
            .map_err(|e| Error::Storage(format!("account {} has an unusable key: {e}", self.id)))
    }

    /// Refuses deactivated and revoked accounts.
    ///
    /// > … the server MUST NOT accept further requests authorized by that account's key …
    /// > with status code 401 … "unauthorized"
    ///
    /// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.6>
    pub fn require_valid(&self) -> Result<()> {
        match self.status {
            AccountStatus::Valid => Ok(()),
            AccountStatus::Deactivated => {
                Err(Error::AccountNotValid("account is deactivated".into()))
            }
            AccountStatus::Revoked => Err(Error::AccountNotValid("account is revoked".into())),
        }
    }

    fn to_json(&self, app: &Ra) -> Value {
        let mut v = json!({
            "status": self.status,
            "contact": self.contact,
            "orders": app.url(&format!("{}{}/orders", paths::ACCOUNT, self.id)),
            "key": self.key,
            "createdAt": crate::types::rfc3339(self.created),
        });
        if self.terms_of_service_agreed {
            v["termsOfServiceAgreed"] = json!(true);
        }
        // > externalAccountBinding (optional, object): Including this field in a newAccount
        // > request indicates approval by the holder of an existing non-ACME account to bind
        // > that account to this ACME account.
        // <https://www.rfc-editor.org/rfc/rfc8555#section-7.1.2>
        if let Some(binding) = &self.external_account_binding {
            v["externalAccountBinding"] = binding.clone();
        }
        v
    }
}

fn account_response(app: &Ra, acct: &Account, status: StatusCode) -> Response {
    let mut resp = (status, Json(acct.to_json(app))).into_response();
    if let Ok(v) = HeaderValue::from_str(&app.url(&format!("{}{}", paths::ACCOUNT, acct.id))) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// newAccount payload, RFC 8555 §7.3.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewAccount {
    #[serde(default)]
    contact: Option<Vec<String>>,
    #[serde(default)]
    terms_of_service_agreed: Option<bool>,
    #[serde(default)]
    only_return_existing: Option<bool>,
    #[serde(default)]
    external_account_binding: Option<Value>,
}

/// Checks `contact` URLs. Plant devices rarely have mailboxes, so contacts are optional; those
/// given must be single plain `mailto:` addresses (RFC 8555 §7.3: `invalidContact`,
/// `unsupportedContact`).
fn check_contacts(contact: &[String]) -> Result<()> {
    if contact.len() > 10 {
        return Err(Error::InvalidContact(
            "at most 10 contact URLs are accepted".into(),
        ));
    }
    for c in contact {
        let Some(addr) = c.strip_prefix("mailto:") else {
            return Err(Error::UnsupportedContact(format!(
                "contact {c:?}: only mailto: URLs are supported"
            )));
        };
        let valid = addr.len() <= 254
            && !addr.contains(['?', ',', ' ', '<', '>'])
            && addr
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@'));
        if !valid {
            return Err(Error::InvalidContact(format!(
                "contact {c:?} is not a single plain email address"
            )));
        }
    }
    Ok(())
}

/// The account a key is registered to, if any. The key index is written before the account
/// record, so an index entry without a matching account (a crash in between) counts as absent.
fn account_by_thumbprint(app: &Ra, thumbprint: &str) -> Result<Option<Account>> {
    let Some(id) = app.db.get::<String>(Table::AccountKeys, thumbprint)? else {
        return Ok(None);
    };
    Ok(app
        .db
        .get::<Account>(Table::Accounts, &id)?
        .filter(|a| a.thumbprint == thumbprint))
}

/// `POST /acme/new-account` — RFC 8555 §7.3.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3>
pub async fn new_account(State(app): State<AppState>, r: KeyRequest) -> Result<Response> {
    let p: NewAccount = r.req.json()?;

    // > If the server already has an account registered with the provided account key, then it
    // > MUST return a response with status code 200 (OK) and provide the URL of that account
    // > in the Location header field.
    // <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.1>
    // Registration and key changes check and then write the key index; one lock makes that
    // atomic (sled admits a single process, so a process-wide lock is enough).
    let _index = app.account_keys.lock().await;
    if let Some(existing) = account_by_thumbprint(&app, &r.thumbprint)? {
        // > If the server receives a POST or POST-as-GET from a deactivated account, it MUST
        // > return an error response with status code 401 (Unauthorized)
        // <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.6>
        existing.require_valid()?;
        return Ok(account_response(&app, &existing, StatusCode::OK));
    }
    // > If this field is present with the value "true", then the server MUST NOT create a new
    // > account if one does not already exist.
    if p.only_return_existing == Some(true) {
        return Err(Error::AccountDoesNotExist);
    }
    // Accounts are cheap to make and each one gets its own order and validation budgets, so
    // their creation is limited per source address.
    if let Some(peer) = r.req.peer {
        app.limits.take(
            crate::ratelimit::LimitName::NewAccountPerAddress,
            &crate::ratelimit::Key::address(peer.ip()),
        )?;
    }
    if app.cfg.terms_of_service.is_some() && p.terms_of_service_agreed != Some(true) {
        return Err(Error::Malformed(
            "the terms of service must be agreed to (termsOfServiceAgreed: true)".into(),
        ));
    }
    let contact = p.contact.unwrap_or_default();
    check_contacts(&contact)?;

    let cred = match (&p.external_account_binding, app.cfg.eab.required) {
        (Some(b), _) => Some(app.eab.verify(b, &r.req.url, &r.key)?),
        (None, true) => {
            return Err(Error::ExternalAccountRequired(
                "this CA requires an external account binding: ask the operator for an EAB key id and HMAC key".into(),
            ))
        }
        (None, false) => None,
    };

    let acct = Account {
        id: new_id()?,
        key: jwk::canonical(&r.key),
        thumbprint: r.thumbprint.clone(),
        status: AccountStatus::Valid,
        contact,
        terms_of_service_agreed: p.terms_of_service_agreed == Some(true),
        eab_kid: cred.as_ref().map(|c| c.kid.clone()),
        external_account_binding: cred.as_ref().and(p.external_account_binding.clone()),
        created: now(),
    };
    // Spend the credential first: if that fails nothing else was written. Then the account,
    // then its key index entry, so the index never names a missing account. Under the lock
    // nothing else registers this key; an index entry without its account is a leftover of an
    // interrupted registration (account_by_thumbprint ignores it) and is overwritten.
    if let Some(cred) = &cred {
        app.eab.spend(&app.db, cred, &acct.id)?;
    }
    app.db.put(Table::Accounts, &acct.id, &acct)?;
    app.db.put(Table::AccountKeys, &acct.thumbprint, &acct.id)?;
    app.db.flush().await?;
    tracing::info!(account = %acct.id, eab = ?acct.eab_kid, "account created");
    Ok(account_response(&app, &acct, StatusCode::CREATED))
}

fn check_own_account(r: &AccountRequest, id: &str) -> Result<()> {
    if r.account.id != id {
        return Err(Error::Unauthorized(
            "the request is signed by a different account".into(),
        ));
    }
    Ok(())
}

/// Account update payload, RFC 8555 §7.3.2 and §7.3.6.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountUpdate {
    #[serde(default)]
    contact: Option<Vec<String>>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    terms_of_service_agreed: Option<bool>,
}

/// `POST /acme/acct/{id}` — fetch (POST-as-GET), update contacts, or deactivate.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.2>
pub async fn account(
    State(app): State<AppState>,
    Path(id): Path<String>,
    r: AccountRequest,
) -> Result<Response> {
    check_own_account(&r, &id)?;
    let p: AccountUpdate = r.req.json_or_default()?;
    if p.contact.is_none() && p.status.is_none() && p.terms_of_service_agreed.is_none() {
        return Ok(account_response(&app, &r.account, StatusCode::OK));
    }
    if let Some(c) = &p.contact {
        check_contacts(c)?;
    }
    // > … the client … sending a POST request with {"status": "deactivated"} …
    // <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.6>
    let deactivate = match p.status.as_deref() {
        None => false,
        Some("deactivated") => true,
        Some(other) => {
            return Err(Error::Malformed(format!(
                "account status may only be set to \"deactivated\", not {other:?}"
            )))
        }
    };
    let acct = app.db.update(Table::Accounts, &id, |mut a: Account| {
        a.require_valid()?;
        if let Some(c) = &p.contact {
            a.contact.clone_from(c);
        }
        if p.terms_of_service_agreed == Some(true) {
            a.terms_of_service_agreed = true;
        }
        if deactivate {
            a.status = AccountStatus::Deactivated;
        }
        Ok(a)
    })?;
    if deactivate {
        cancel_pending_authorizations(&app, &id)?;
    }
    app.db.flush().await?;
    if deactivate {
        tracing::info!(account = %id, "account deactivated");
    }
    Ok(account_response(&app, &acct, StatusCode::OK))
}

/// > The server SHOULD cancel any pending operations authorized by the account's key, such as
/// > certificate orders.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.6>
///
/// Deactivating its pending authorizations makes every open order of the account invalid.
fn cancel_pending_authorizations(app: &Ra, account_id: &str) -> Result<()> {
    let prefix = format!("{account_id}\0");
    for key in app.db.keys_with_prefix(Table::AccountOrders, &prefix)? {
        let Some(order_id) = key.strip_prefix(&prefix) else {
            continue;
        };
        let Some(order) = app.db.get::<Order>(Table::Orders, order_id)? else {
            continue;
        };
        for authz_id in &order.authzs {
            app.db
                .update(Table::Authzs, authz_id, |mut a: crate::ra::authz::Authz| {
                    if a.status() == crate::types::AuthzStatus::Pending {
                        a.status = crate::types::AuthzStatus::Deactivated;
                    }
                    Ok(a)
                })?;
        }
    }
    Ok(())
}

/// The inner payload of a keyChange request, RFC 8555 §7.3.5.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyChange {
    account: String,
    old_key: Value,
}

/// `POST /acme/key-change` — RFC 8555 §7.3.5.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.5>
pub async fn key_change(State(app): State<AppState>, r: AccountRequest) -> Result<Response> {
    // > 1. Validate the POST request belongs to a currently active account, as described in
    // >    Section 6.  (done by the extractor)
    // > 2. Check that the payload of the JWS is a well-formed JWS object (the "inner JWS").
    let inner = Parsed::from_json(&r.req.jws.payload)?;
    // > 3. Check that the JWS protected header of the inner JWS has a "jwk" field.
    let new_jwk = inner.header.get("jwk").ok_or_else(|| {
        Error::Malformed("keyChange inner JWS must carry the new key as \"jwk\"".into())
    })?;
    if inner.header.contains_key("kid") || inner.header.contains_key("nonce") {
        return Err(Error::Malformed(
            "keyChange inner JWS must not contain \"kid\" or \"nonce\"".into(),
        ));
    }
    let new_key = jwk::parse(new_jwk)?;
    // > 4. Check that the inner JWS verifies using the key in its "jwk" field.
    inner.verify(&new_key)?;
    // > 6. Check that the "url" parameters of the inner and outer JWSs are the same.
    if inner.header_str("url")? != Some(r.req.url.as_str()) {
        return Err(Error::Malformed(
            "keyChange inner JWS url must equal the outer url".into(),
        ));
    }
    // > 7. Check that the "account" field of the keyChange object contains the URL for the
    // >    account matching the old key (i.e., the "kid" field in the outer JWS).
    let kc: KeyChange = inner.json()?;
    let kid = app.url(&format!("{}{}", paths::ACCOUNT, r.account.id));
    if kc.account != kid {
        return Err(Error::Malformed(
            "keyChange \"account\" does not name the signing account".into(),
        ));
    }
    // > 8. Check that the "oldKey" field of the keyChange object is the same as the account
    // >    key for the account in question.
    if jwk::parse(&kc.old_key)? != r.account.public_key()? {
        return Err(Error::Malformed(
            "keyChange \"oldKey\" is not the account's current key".into(),
        ));
    }
    // > 9. Check that no account exists whose account key is the same as the key in the "jwk"
    // >    header parameter of the inner JWS. … 409 (Conflict) … Location …
    let new_tp = jwk::thumbprint(&new_key);
    let _index = app.account_keys.lock().await;
    let conflict = |other: &Account| Error::Conflict {
        detail: "the new key is already in use by another account".into(),
        location: app.url(&format!("{}{}", paths::ACCOUNT, other.id)),
    };
    if let Some(other) = account_by_thumbprint(&app, &new_tp)? {
        return Err(conflict(&other));
    }
    app.db.put(Table::AccountKeys, &new_tp, &r.account.id)?;
    let old_tp = r.account.thumbprint.clone();
    let acct = app
        .db
        .update(Table::Accounts, &r.account.id, |mut a: Account| {
            a.require_valid()?;
            if a.thumbprint != old_tp {
                return Err(Error::Unauthorized(
                    "the account key changed concurrently".into(),
                ));
            }
            a.key = jwk::canonical(&new_key);
            a.thumbprint.clone_from(&new_tp);
            Ok(a)
        })?;
    app.db.store().compare_and_swap(
        Table::AccountKeys,
        old_tp.as_bytes(),
        serde_json::to_vec(&acct.id).ok().as_deref(),
        None,
    )?;
    app.db.flush().await?;
    tracing::info!(account = %acct.id, "account key changed");
    Ok(account_response(&app, &acct, StatusCode::OK))
}

/// Orders-list paging cursor.
#[derive(Debug, Deserialize)]
pub struct Cursor {
    #[serde(default)]
    after: Option<String>,
}

const ORDERS_PAGE: usize = 100;

/// `POST /acme/acct/{id}/orders` — RFC 8555 §7.1.2.1.
///
/// > The server SHOULD include pending orders and SHOULD NOT include orders that are invalid
/// > in the array of URLs. The server MAY return an incomplete list, along with a Link header
/// > field with a "next" link relation indicating where further entries can be acquired.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.1.2.1>
pub async fn orders(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(cursor): Query<Cursor>,
    r: AccountRequest,
) -> Result<Response> {
    check_own_account(&r, &id)?;
    if !r.req.is_post_as_get() {
        return Err(Error::Malformed(
            "the orders list is fetched with POST-as-GET".into(),
        ));
    }
    let prefix = format!("{id}\0");
    let keys = app.db.keys_with_prefix(Table::AccountOrders, &prefix)?;
    let mut urls = Vec::new();
    let mut next = None;
    for key in keys {
        let Some(order_id) = key.strip_prefix(&prefix) else {
            continue;
        };
        if cursor.after.as_deref().is_some_and(|a| order_id <= a) {
            continue;
        }
        if urls.len() == ORDERS_PAGE {
            next = urls.last().map(|(oid, _): &(String, String)| oid.clone());
            break;
        }
        let Some(order) = app.db.get::<Order>(Table::Orders, order_id)? else {
            continue;
        };
        if order.status(&app)? != OrderStatus::Invalid {
            urls.push((
                order_id.to_owned(),
                app.url(&format!("{}{order_id}", paths::ORDER)),
            ));
        }
    }
    let mut resp =
        Json(json!({"orders": urls.iter().map(|(_, u)| u).collect::<Vec<_>>()})).into_response();
    if let Some(after) = next {
        let link = format!(
            "<{}>;rel=\"next\"",
            app.url(&format!("{}{id}/orders?after={after}", paths::ACCOUNT))
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().append(header::LINK, v);
        }
    }
    Ok(resp)
}
