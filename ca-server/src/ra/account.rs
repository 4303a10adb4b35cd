//! Accounts: newAccount (RFC 8555 §7.3), update and deactivation (§7.3.2, §7.3.6), key
//! rollover (§7.3.5) and the orders list (§7.1.2.1).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::jwk;
use crate::key::PublicKey;
use crate::ra::order::Order;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::new_id;
use crate::types::now;
use crate::types::{AccountStatus, OrderStatus};
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

    pub fn to_json(&self, app: &Ra) -> Value {
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

/// newAccount payload, RFC 8555 §7.3.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewAccount {
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

/// Points the key index entry of `thumbprint` at the account `id`, unless another account holds
/// the key: that account is returned then, and nothing is written. Compare-and-swap, so when
/// CA instances sharing a store register one key at once (each under its own process lock),
/// exactly one wins. An entry naming no account that holds the key (a leftover of an
/// interrupted registration or of a key change) is replaced.
fn claim_key(app: &Ra, thumbprint: &str, id: &str) -> Result<Option<Account>> {
    let ours = serde_json::to_vec(id)
        .map_err(|e| Error::Internal(format!("cannot encode account id: {e}")))?;
    for _ in 0..16 {
        let current = app
            .db
            .store()
            .get(Table::AccountKeys, thumbprint.as_bytes())?;
        if let Some(raw) = &current {
            let holder: String = serde_json::from_slice(raw)
                .map_err(|e| Error::Storage(format!("corrupt account key index: {e}")))?;
            if holder == id {
                return Ok(None);
            }
            if let Some(account) = app
                .db
                .get::<Account>(Table::Accounts, &holder)?
                .filter(|a| a.thumbprint == thumbprint)
            {
                return Ok(Some(account));
            }
        }
        if app.db.store().compare_and_swap(
            Table::AccountKeys,
            thumbprint.as_bytes(),
            current.as_deref(),
            Some(&ours),
        )? {
            return Ok(None);
        }
    }
    Err(Error::Storage(
        "the account key index kept changing; try again".into(),
    ))
}

/// Account update payload, RFC 8555 §7.3.2 and §7.3.6.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountUpdate {
    #[serde(default)]
    contact: Option<Vec<String>>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    terms_of_service_agreed: Option<bool>,
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
pub struct KeyChange {
    account: String,
    old_key: Value,
}

const ORDERS_PAGE: usize = 100;

/// Refuses a request about account `id` signed by another account.
pub fn check_own_account(account: &Account, id: &str) -> Result<()> {
    if account.id != id {
        return Err(Error::Unauthorized(
            "the request is signed by a different account".into(),
        ));
    }
    Ok(())
}

/// Who asks for an account: the key that signed the newAccount request, where it came from.
pub struct Applicant<'a> {
    /// The account key (the JWS `jwk`).
    pub key: &'a PublicKey,
    /// Its RFC 7638 thumbprint.
    pub thumbprint: &'a str,
    /// The newAccount URL the request was signed for (an EAB binding must name it).
    pub url: &'a str,
    /// The client's address, if known.
    pub peer: Option<std::net::SocketAddr>,
}

/// newAccount (RFC 8555 §7.3): returns the account and whether it was created now (`false`:
/// the key already has one).
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3>
pub async fn register(app: &Ra, r: Applicant<'_>, p: NewAccount) -> Result<(Account, bool)> {
    // > If the server already has an account registered with the provided account key, then it
    // > MUST return a response with status code 200 (OK) and provide the URL of that account
    // > in the Location header field.
    // <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.1>
    // Registration and key changes check and then write the key index. Within a process one
    // lock orders them; CA instances sharing a store settle it with compare-and-swap
    // (`claim_key`).
    let _index = app.account_keys.lock().await;
    if let Some(existing) = account_by_thumbprint(app, r.thumbprint)? {
        // > If the server receives a POST or POST-as-GET from a deactivated account, it MUST
        // > return an error response with status code 401 (Unauthorized)
        // <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.6>
        existing.require_valid()?;
        return Ok((existing, false));
    }
    // > If this field is present with the value "true", then the server MUST NOT create a new
    // > account if one does not already exist.
    if p.only_return_existing == Some(true) {
        return Err(Error::AccountDoesNotExist);
    }
    // Accounts are cheap to make and each one gets its own order and validation budgets, so
    // their creation is limited per source address.
    if let Some(peer) = r.peer {
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
        (Some(b), _) => Some(app.eab.verify(b, r.url, r.key)?),
        (None, true) => {
            return Err(Error::ExternalAccountRequired(
                "this CA requires an external account binding: ask the operator for an EAB key id and HMAC key".into(),
            ))
        }
        (None, false) => None,
    };

    let acct = Account {
        id: new_id()?,
        key: jwk::canonical(r.key),
        thumbprint: r.thumbprint.to_owned(),
        status: AccountStatus::Valid,
        contact,
        terms_of_service_agreed: p.terms_of_service_agreed == Some(true),
        eab_kid: cred.as_ref().map(|c| c.kid.clone()),
        external_account_binding: cred.as_ref().and(p.external_account_binding.clone()),
        created: now(),
    };
    // Spend the credential first: if that fails nothing else was written. Then the account,
    // then its key index entry, so the index never names a missing account. An index entry
    // without its account is a leftover of an interrupted registration (account_by_thumbprint
    // ignores it) and is replaced. If another instance registered the key meanwhile, its
    // account is the one (§7.3.1's 200), and this one, never announced, is removed and its
    // credential use given back.
    if let Some(cred) = &cred {
        app.eab.spend(&app.db, cred, &acct.id)?;
    }
    let claimed = app
        .db
        .put(Table::Accounts, &acct.id, &acct)
        .and_then(|()| claim_key(app, &acct.thumbprint, &acct.id));
    let existing = match claimed {
        Ok(None) => None,
        Ok(Some(existing)) => Some(existing),
        Err(e) => {
            if let Some(cred) = &cred {
                if let Err(again) = app.eab.give_back(&app.db, &cred.kid, &acct.id) {
                    tracing::error!(kid = %cred.kid, error = %again, "cannot give back the credential use of a registration that failed");
                }
            }
            return Err(e);
        }
    };
    if let Some(existing) = existing {
        app.db.remove(Table::Accounts, &acct.id)?;
        if let Some(cred) = &cred {
            app.eab.give_back(&app.db, &cred.kid, &acct.id)?;
        }
        app.db.flush().await?;
        existing.require_valid()?;
        return Ok((existing, false));
    }
    app.db.flush().await?;
    tracing::info!(account = %acct.id, eab = ?acct.eab_kid, "account created");
    Ok((acct, true))
}

/// An account update (RFC 8555 §7.3.2) or deactivation (§7.3.6) by the account `account`, of
/// its own account `id`; an empty update returns the account as it is.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.2>
pub async fn update(app: &Ra, account: &Account, id: &str, p: AccountUpdate) -> Result<Account> {
    check_own_account(account, id)?;
    if p.contact.is_none() && p.status.is_none() && p.terms_of_service_agreed.is_none() {
        return Ok(account.clone());
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
    let acct = app.db.update(Table::Accounts, id, |mut a: Account| {
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
        cancel_pending_authorizations(app, id)?;
    }
    app.db.flush().await?;
    if deactivate {
        tracing::info!(account = %id, "account deactivated");
    }
    Ok(acct)
}

/// Key rollover (RFC 8555 §7.3.5) once the inner JWS is verified: `new_key` signed the inner
/// JWS, whose payload is `kc`. Checks steps 7 to 9 and moves the account to the new key.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.5>
pub async fn change_key(
    app: &Ra,
    account: &Account,
    new_key: &PublicKey,
    kc: KeyChange,
) -> Result<Account> {
    // > 7. Check that the "account" field of the keyChange object contains the URL for the
    // >    account matching the old key (i.e., the "kid" field in the outer JWS).
    let kid = app.url(&format!("{}{}", paths::ACCOUNT, account.id));
    if kc.account != kid {
        return Err(Error::Malformed(
            "keyChange \"account\" does not name the signing account".into(),
        ));
    }
    // > 8. Check that the "oldKey" field of the keyChange object is the same as the account
    // >    key for the account in question.
    if jwk::parse(&kc.old_key)? != account.public_key()? {
        return Err(Error::Malformed(
            "keyChange \"oldKey\" is not the account's current key".into(),
        ));
    }
    // > 9. Check that no account exists whose account key is the same as the key in the "jwk"
    // >    header parameter of the inner JWS. … 409 (Conflict) … Location …
    let new_tp = jwk::thumbprint(new_key);
    let _index = app.account_keys.lock().await;
    let conflict = |other: &Account| Error::Conflict {
        detail: "the new key is already in use by another account".into(),
        location: app.url(&format!("{}{}", paths::ACCOUNT, other.id)),
    };
    if let Some(other) = claim_key(app, &new_tp, &account.id)? {
        return Err(conflict(&other));
    }
    let old_tp = account.thumbprint.clone();
    let acct = app
        .db
        .update(Table::Accounts, &account.id, |mut a: Account| {
            a.require_valid()?;
            if a.thumbprint != old_tp {
                return Err(Error::Unauthorized(
                    "the account key changed concurrently".into(),
                ));
            }
            a.key = jwk::canonical(new_key);
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
    Ok(acct)
}

/// One page of the orders list of account `id` (RFC 8555 §7.1.2.1): the ids of its orders
/// that are not invalid, after `after` in id order, and the last id of the page if there are
/// more.
pub fn order_page(
    app: &Ra,
    id: &str,
    after: Option<&str>,
) -> Result<(Vec<String>, Option<String>)> {
    let prefix = format!("{id}\0");
    let keys = app.db.keys_with_prefix(Table::AccountOrders, &prefix)?;
    let mut page: Vec<String> = Vec::new();
    let mut next = None;
    for key in keys {
        let Some(order_id) = key.strip_prefix(&prefix) else {
            continue;
        };
        if after.is_some_and(|a| order_id <= a) {
            continue;
        }
        if page.len() == ORDERS_PAGE {
            next = page.last().cloned();
            break;
        }
        let Some(order) = app.db.get::<Order>(Table::Orders, order_id)? else {
            continue;
        };
        if order.status(app)? != OrderStatus::Invalid {
            page.push(order_id.to_owned());
        }
    }
    Ok((page, next))
}
