//! Orders: newOrder (RFC 8555 §7.4), order objects (§7.1.3) and finalize (§7.4).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ca::cert::Certificate;
use crate::ca::IssuedCert;
use crate::metrics::Enrollment;
use crate::ra::authz::Authz;
use crate::ra::identity::{Claim, Hold};
use crate::ra::Account;
use crate::ra::Ra;
use crate::ratelimit::Key;
use crate::ratelimit::LimitName;
use crate::storage::Table;
use crate::types::new_id;
use crate::types::now;
use crate::types::rfc3339;
use crate::types::{AuthzStatus, Identifier, OrderStatus};
use crate::wire::normalize_identifier;
use crate::wire::paths;
use crate::{ca::csr, Error, Problem, Result};

/// How far an order has got beyond what its authorizations say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "stage")]
pub enum Stage {
    /// Not finalized: status is derived from the authorizations (pending/ready/invalid).
    Open,
    /// Finalize accepted and issuance under way.
    Processing {
        /// When finalize started.
        since: i64,
        /// The server process issuing ([`super::process_id`]); `None` in orders stored
        /// before it was recorded.
        #[serde(default)]
        by: Option<String>,
    },
    /// Issued.
    Valid {
        /// Certificate id.
        cert: String,
    },
    /// Failed after finalize.
    Invalid {
        /// Why.
        error: Problem,
    },
}

/// A stored order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Order {
    /// Random id.
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Requested identifiers, normalised, sorted, unique.
    pub identifiers: Vec<Identifier>,
    /// One authorization per identifier, same order.
    pub authzs: Vec<String>,
    /// Unix time after which the order is invalid if not finalized.
    pub expires: i64,
    /// Finalize progress.
    pub stage: Stage,
    /// The certificate profile (SPEC §8.3), resolved at newOrder; `None` only for orders
    /// stored before profiles existed, which get the default profile.
    #[serde(default)]
    pub profile: Option<String>,
    /// The certificate this order replaces (RFC 9773 §5 `replaces`, an ARI certificate id).
    #[serde(default)]
    pub replaces: Option<String>,
}

/// If issuance was interrupted (the process died between accepting finalize and storing the
/// certificate), the order is made invalid so the client can start over: at once when the
/// server process that accepted the finalize is gone ([`Ra::cut_off`]), and in any case after
/// this long.
pub(crate) const STUCK_PROCESSING_SECS: i64 = 120;

/// The problem of an order whose issuance was interrupted.
fn interrupted() -> Problem {
    Problem::new(
        crate::ProblemType::ServerInternal,
        "issuance was interrupted; create a new order",
    )
}

/// Makes the order `id` invalid as interrupted if its stage is still `seen`; `Ok(false)` if
/// the stage moved on meanwhile (the issuance completed, or was given up).
fn interrupt(app: &Ra, id: &str, seen: &Stage) -> Result<bool> {
    let mut still = false;
    app.db.update(Table::Orders, id, |mut o: Order| {
        still = o.stage == *seen;
        if still {
            o.stage = Stage::Invalid {
                error: interrupted(),
            };
        }
        Ok(o)
    })?;
    Ok(still)
}

impl Order {
    /// The order's status, derived from its stage and its authorizations so it can never
    /// disagree with them (as Pebble's `Order.GetStatus`; RFC 8555 §7.1.6).
    pub fn status(&self, app: &Ra) -> Result<OrderStatus> {
        Ok(self.status_and_error(app)?.0)
    }

    fn status_and_error(&self, app: &Ra) -> Result<(OrderStatus, Option<Problem>)> {
        match &self.stage {
            Stage::Valid { .. } => return Ok((OrderStatus::Valid, None)),
            Stage::Invalid { error } => return Ok((OrderStatus::Invalid, Some(error.clone()))),
            Stage::Processing { since, by } => {
                if app.cut_off(by.as_deref()) || now() - since > STUCK_PROCESSING_SECS {
                    // Stored, so that the issuance, if it was only slow, hands nothing out
                    // (`finalize` ends only an order still its own) and the client that sees
                    // `invalid` never sees the order change again.
                    if !interrupt(app, &self.id, &self.stage)? {
                        if let Some(current) = app.db.get::<Self>(Table::Orders, &self.id)? {
                            return current.status_and_error(app);
                        }
                    }
                    return Ok((OrderStatus::Invalid, Some(interrupted())));
                }
                return Ok((OrderStatus::Processing, None));
            }
            Stage::Open => {}
        }
        if now() > self.expires {
            // RFC 8555 has no problem type for expiry; the status and `expires` say it all.
            return Ok((OrderStatus::Invalid, None));
        }
        let mut all_valid = true;
        for id in &self.authzs {
            let authz: Authz = app
                .db
                .get(Table::Authzs, id)?
                .ok_or_else(|| Error::Storage(format!("order {} lost authz {id}", self.id)))?;
            match authz.status() {
                AuthzStatus::Valid => {}
                AuthzStatus::Pending => all_valid = false,
                _ => {
                    let p = authz.error().unwrap_or_else(|| {
                        Problem::new(
                            crate::ProblemType::Unauthorized,
                            format!(
                                "authorization for {} is {:?}",
                                authz.identifier,
                                authz.status()
                            ),
                        )
                    });
                    // The identifier goes into a subproblem (RFC 8555 §6.7.1).
                    let p = Problem::wrapping(p.about(authz.identifier.clone()));
                    return Ok((OrderStatus::Invalid, Some(p)));
                }
            }
        }
        Ok((
            if all_valid {
                OrderStatus::Ready
            } else {
                OrderStatus::Pending
            },
            None,
        ))
    }

    /// The order object, RFC 8555 §7.1.3.
    pub fn to_json(&self, app: &Ra) -> Result<Value> {
        let (status, error) = self.status_and_error(app)?;
        let mut v = json!({
            "status": status,
            "expires": rfc3339(self.expires),
            "identifiers": self.identifiers,
            "authorizations": self.authzs.iter()
                .map(|a| app.url(&format!("{}{a}", paths::AUTHZ))).collect::<Vec<_>>(),
            "finalize": app.url(&format!("{}{}/finalize", paths::ORDER, self.id)),
        });
        if let Some(e) = error {
            v["error"] = json!(e);
        }
        // draft-ietf-acme-profiles: the order object names the profile it will be issued under.
        if let Some(profile) = &self.profile {
            v["profile"] = json!(profile);
        }
        // > If the Server accepts a new-order request with a "replaces" field, it MUST reflect
        // > that field in the response and in subsequent requests for the corresponding Order
        // > object.
        // <https://www.rfc-editor.org/rfc/rfc9773#section-5>
        if let Some(replaces) = &self.replaces {
            v["replaces"] = json!(replaces);
        }
        if let Stage::Valid { cert } = &self.stage {
            v["certificate"] = json!(app.url(&format!("{}{cert}", paths::CERT)));
        }
        Ok(v)
    }

    pub fn url(&self, app: &Ra) -> String {
        app.url(&format!("{}{}", paths::ORDER, self.id))
    }
}

/// newOrder payload, RFC 8555 §7.4.
/// Unknown fields are ignored, not refused, so extension fields (ARI `replaces`, `profile`) from
/// newer clients do not fail orders that need nothing from them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOrder {
    identifiers: Vec<Value>,
    /// RFC 9773 §5: the ARI identifier of the certificate this order replaces.
    #[serde(default)]
    replaces: Option<String>,
    #[serde(default)]
    not_before: Option<String>,
    #[serde(default)]
    not_after: Option<String>,
    /// draft-ietf-acme-profiles: the certificate profile, a name from `meta.profiles`.
    #[serde(default)]
    profile: Option<String>,
}

const MAX_IDENTIFIERS: usize = 100;

/// Loads an order that `account` owns. Another account's order is reported as not found, so
/// order ids cannot be probed.
pub fn own_order(app: &Ra, account: &Account, id: &str) -> Result<Order> {
    app.db
        .get::<Order>(Table::Orders, id)?
        .filter(|o| o.account_id == account.id)
        .ok_or(Error::NotFound("order"))
}

/// newOrder (RFC 8555 §7.4) for `account`: checks every identifier, binds what it can and
/// stores the order with its authorizations.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>
pub async fn create(app: &Ra, account: &Account, p: NewOrder) -> Result<Order> {
    if p.not_before.is_some() || p.not_after.is_some() {
        return Err(Error::Malformed(
            "notBefore/notAfter are not supported: validity is set by CA policy".into(),
        ));
    }
    if p.identifiers.is_empty() {
        return Err(Error::Malformed(
            "an order needs at least one identifier".into(),
        ));
    }
    if p.identifiers.len() > MAX_IDENTIFIERS {
        return Err(Error::Malformed(format!(
            "an order may have at most {MAX_IDENTIFIERS} identifiers"
        )));
    }
    // draft-ietf-acme-profiles (paraphrased): a profile the directory does not advertise
    // gets invalidProfile; none at all gets the CA's default profile (SPEC §8.3).
    // <https://datatracker.ietf.org/doc/draft-ietf-acme-profiles/>
    let profile = app.profiles.select(p.profile.as_deref())?;
    app.limits.take(
        LimitName::NewOrderPerAccount,
        &Key::Account(account.id.clone()),
    )?;
    let grant = Grant::of(app, account)?;
    profile.check_order(grant.role())?;
    let profile = profile.name.clone();
    let allow = grant.allow_list()?;
    let mut identifiers = BTreeSet::new();
    let mut problems = Vec::new();
    for raw in &p.identifiers {
        let kind = raw.get("type").and_then(Value::as_str).unwrap_or_default();
        let parsed = match serde_json::from_value::<Identifier>(raw.clone()) {
            Ok(id) => normalize_identifier(&id).map_err(|e| (id, e)),
            Err(_) if matches!(kind, "dns" | "ip" | "permanent-identifier") || kind.is_empty() => {
                return Err(Error::Malformed(format!("invalid identifier object {raw}")))
            }
            Err(_) => {
                let value = raw.get("value").and_then(Value::as_str).unwrap_or_default();
                return Err(Error::UnsupportedIdentifier(format!(
                    "identifier type {kind:?} (value {value:?}) is not supported; use \"dns\", \"ip\" or \"permanent-identifier\""
                )));
            }
        };
        // Addresses no device has, and the CA's own names, whoever asks (`policy`).
        let parsed = parsed.and_then(|id| {
            match crate::va::policy::refused_identifier(
                &id,
                &app.own_names,
                app.cfg.validation.allow_loopback,
            ) {
                Some(detail) => Err((
                    id.clone(),
                    Error::RejectedIdentifier {
                        identifier: id,
                        detail,
                    },
                )),
                None => Ok(id),
            }
        });
        // SPEC §6.6: an account bound with an allow-listed credential may order nothing else.
        let parsed = parsed.and_then(|id| match allow {
            Some(cred) if !cred.allow.iter().any(|rule| rule.matches(&id)) => {
                let e = Error::RejectedIdentifier {
                    identifier: id.clone(),
                    detail: "not covered by the allow-list of the enrollment credential this account was created with".into(),
                };
                Err((id, e))
            }
            _ => Ok(id),
        });
        match parsed {
            Ok(id) => {
                identifiers.insert(id);
            }
            Err((id, e)) => {
                let sub = e.to_problem().about(id);
                problems.push((e, sub));
            }
        }
    }
    // > When the server has multiple errors to report for a single request … subproblems
    // <https://www.rfc-editor.org/rfc/rfc8555#section-6.7.1>
    match problems.len() {
        0 => {}
        1 => return Err(problems.remove(0).0),
        n => {
            return Err(Error::Compound {
                detail: format!("{n} identifiers were refused"),
                subproblems: problems.into_iter().map(|(_, p)| p).collect(),
            })
        }
    }

    // An account that keeps failing validation for an identifier waits before it may try it
    // again.
    for id in &identifiers {
        app.limits.check(
            LimitName::FailedValidationsPerIdentifier,
            &Key::AccountIdentifier(account.id.clone(), id.clone()),
        )?;
    }

    let created = now();
    let order_lifetime = secs(app.cfg.issuance.order_lifetime);
    let authz_lifetime = secs(app.cfg.issuance.authz_lifetime);
    // Every check runs before anything is written, so a refused order leaves nothing behind.
    let mut authzs = Vec::new();
    for id in &identifiers {
        let mut held = None;
        if let Some(cred) = allow {
            // Pre-authorization (RFC 8555 §7.4.1 in spirit): the operator vouched for these
            // identifiers when issuing the credential, so no challenge is needed, unless
            // another account holds a current certificate for one: a credential shared by
            // many devices does not let one take its sibling's name (`identity`).
            held = crate::ra::identity::held_by_other(app, id, &account.id)?;
            if held.is_none() {
                authzs.push(Authz::pre_authorized(
                    &account.id,
                    id.clone(),
                    created + authz_lifetime,
                    &cred.kid,
                )?);
                continue;
            }
        }
        let kinds = crate::ra::authz::challenge_types(&app.cfg.enrollment, id);
        if kinds.is_empty() {
            let detail = match &held {
                Some(h) => format!(
                    "account {} holds a current certificate for it, so the enrollment \
                     credential does not pre-authorize it for this account, and no \
                     enrollment path to prove control is enabled on this CA; the operator can \
                     release it (ca-server identity release {id})",
                    h.account_id
                ),
                None => format!(
                    "no enrollment path for {} identifiers is enabled on this CA",
                    id.kind
                ),
            };
            return Err(Error::RejectedIdentifier {
                identifier: id.clone(),
                detail,
            });
        }
        if let Some(h) = &held {
            tracing::info!(account = %account.id, holder = %h.account_id, identifier = %id,
                "identifier held by another account: a challenge is required");
        }
        let mut authz = Authz::new(&account.id, id.clone(), created + authz_lifetime, &kinds)?;
        authz.account_thumbprint = Some(account.thumbprint.clone());
        authzs.push(authz);
    }
    let replaced = match &p.replaces {
        Some(replaces) => Some(crate::ra::renewal::check_replaces(
            app,
            &account.id,
            replaces,
            &identifiers,
        )?),
        None => None,
    };
    for authz in &authzs {
        app.db.put(Table::Authzs, &authz.id, authz)?;
    }
    let order = Order {
        id: new_id()?,
        account_id: account.id.clone(),
        identifiers: identifiers.into_iter().collect(),
        authzs: authzs.into_iter().map(|a| a.id).collect(),
        expires: created + order_lifetime,
        stage: Stage::Open,
        profile: Some(profile),
        replaces: replaced.as_ref().and(p.replaces.clone()),
    };
    app.db.put(Table::Orders, &order.id, &order)?;
    // The claim on the replaced certificate comes last, under compare-and-swap: an order
    // that loses a race, or fails after claiming, is marked invalid, and RFC 9773 §5 ignores
    // replacement by invalid orders, so the certificate stays replaceable.
    let stored = async {
        if let Some(cert) = &replaced {
            crate::ra::renewal::claim(app, &cert.id, &order.id)?;
        }
        app.db.put(
            Table::AccountOrders,
            &format!("{}\0{}", account.id, order.id),
            &(),
        )?;
        app.db.flush().await
    }
    .await;
    if let Err(e) = stored {
        abandon(app, &order.id, &e);
        return Err(e);
    }
    tracing::info!(account = %account.id, order = %order.id, identifiers = ?order.identifiers, "order created");
    Ok(order)
}

/// Marks an order newOrder is refusing after storing it as invalid, so nothing can finalize
/// it and any claim it holds on a replaced certificate is void (RFC 9773 §5). Best effort: the
/// caller is already answering with `cause`.
fn abandon(app: &Ra, order_id: &str, cause: &Error) {
    let marked = app.db.update(Table::Orders, order_id, |mut o: Order| {
        o.stage = Stage::Invalid {
            error: cause.to_problem(),
        };
        Ok(o)
    });
    if let Err(e) = marked {
        tracing::error!(order = %order_id, error = %e, "cannot mark a refused order invalid");
    }
}

/// What the enrollment credential an account was bound with grants it (SPEC §6.6): an
/// allow-list of pre-authorized identifiers and a Modbus role, each only while the credential
/// stands ([`crate::ra::eab::Credential::standing`]).
struct Grant {
    credential: Option<crate::ra::eab::Credential>,
    standing: std::result::Result<(), crate::ra::eab::EabError>,
}

impl Grant {
    /// The grant of `account`. A revoked or deleted credential stops the account from ordering
    /// at all: the operator withdrew the vouching the account was created on.
    fn of(app: &Ra, account: &Account) -> Result<Self> {
        let Some(kid) = &account.eab_kid else {
            return Ok(Self {
                credential: None,
                standing: Ok(()),
            });
        };
        match app.eab.get(kid)? {
            Some(cred) if !cred.revoked => {
                let standing = cred.standing(&app.db, &account.id);
                Ok(Self {
                    credential: Some(cred),
                    standing,
                })
            }
            _ => Err(Error::Unauthorized(format!(
                "the enrollment credential {kid} this account was created with has been revoked"
            ))),
        }
    }

    /// The Modbus role granted by the operator, while the credential stands.
    fn role(&self) -> Option<&str> {
        self.credential
            .as_ref()
            .filter(|_| self.standing.is_ok())
            .and_then(|c| c.role.as_deref())
    }

    /// The credential when it has an allow-list. Such an account may order nothing else, so
    /// once the credential no longer stands (expired, used up) it may order nothing.
    fn allow_list(&self) -> Result<Option<&crate::ra::eab::Credential>> {
        let Some(cred) = self.credential.as_ref().filter(|c| !c.allow.is_empty()) else {
            return Ok(None);
        };
        match &self.standing {
            Ok(()) => Ok(Some(cred)),
            Err(why) => Err(Error::Unauthorized(format!(
                "{why}: it no longer pre-authorizes identifiers, and an account bound with an \
                 allow-listed credential may order nothing else"
            ))),
        }
    }
}

/// Pre-authorized identifiers hold only while the credential that vouched for them stands
/// and no other account has since been certified for them. Finalize checks again, because
/// both can change after newOrder: a pre-authorization that no longer holds is revoked, which
/// makes the order invalid. This checks the credential and returns the order's pre-authorized
/// identifiers; finalize claims them (`identity::claim`), which checks the holders.
///
/// An authorization without challenges from before authorizations recorded their credential
/// counts as pre-authorized by the account's credential.
async fn check_pre_authorizations(
    app: &Ra,
    order: &Order,
    account: &Account,
) -> Result<Vec<Identifier>> {
    let mut pre_authorized = Vec::new();
    for authz_id in &order.authzs {
        let Some(authz) = app.db.get::<Authz>(Table::Authzs, authz_id)? else {
            continue;
        };
        let kid = authz.pre_authorized_by.clone().or_else(|| {
            authz
                .challenges
                .is_empty()
                .then(|| account.eab_kid.clone())
                .flatten()
        });
        let Some(kid) = kid else {
            continue;
        };
        let why = match app.eab.get(&kid)? {
            Some(cred) => cred
                .standing(&app.db, &account.id)
                .err()
                .map(|e| e.to_string()),
            None => Some(format!("enrollment credential {kid} no longer exists")),
        };
        let Some(why) = why else {
            pre_authorized.push(authz.identifier);
            continue;
        };
        withdraw(app, order, authz_id, &authz.identifier, &why)?;
        app.db.flush().await?;
        return Err(withdrawn(&authz.identifier, &why));
    }
    Ok(pre_authorized)
}

fn held_since(id: &Identifier, h: &crate::ra::identity::Holding) -> String {
    format!("account {} has since been certified for {id}", h.account_id)
}

/// Revokes the pre-authorization `authz_id`, which no longer holds because of `why`.
fn withdraw(app: &Ra, order: &Order, authz_id: &str, id: &Identifier, why: &str) -> Result<()> {
    app.db.update(Table::Authzs, authz_id, |mut a: Authz| {
        a.status = AuthzStatus::Revoked;
        Ok(a)
    })?;
    tracing::info!(order = %order.id, authz = %authz_id, identifier = %id, %why,
        "pre-authorization withdrawn");
    Ok(())
}

fn withdrawn(id: &Identifier, why: &str) -> Error {
    Error::Unauthorized(format!(
        "the pre-authorization of {id} no longer holds: {why}"
    ))
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

/// Finalizes `account`'s order `id` with the base64url DER CSR `csr` (RFC 8555 §7.4): checks
/// the order is ready, the CSR, its key and names, binds the identities and issues. `csr` is a
/// payload that could not be read, reported once the order is known to exist.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>
pub async fn finalize(
    app: &Ra,
    account: &Account,
    id: &str,
    csr: Result<String>,
    source: Option<std::net::IpAddr>,
) -> Result<Order> {
    let order = own_order(app, account, id)?;
    let csr = &csr?;

    // > A request to finalize an order will result in error if the order is not in the
    // > "ready" state. In such cases, the server MUST return a 403 (Forbidden) error with a
    // > problem document of type "orderNotReady".
    let status = order.status(app)?;
    if status != OrderStatus::Ready {
        return Err(Error::OrderNotReady(status.to_string()));
    }
    let pre_authorized = check_pre_authorizations(app, &order, account).await?;

    // badCSR leaves the order "ready" so the client can fix the CSR and try again.
    let der = crate::wire::b64u_decode("csr", csr).map_err(|e| Error::BadCsr(e.to_string()))?;
    let info = csr::parse_and_verify(&der).inspect_err(|e| {
        // Key-policy and weak-signature refusals are kept for the audit.
        crate::ra::keycheck::attempts::record_csr_refusal(app, account, &order, &der, e);
    })?;
    // Weak, blocklisted, account and already-certified keys (keycheck module docs).
    let key_use = crate::ra::keycheck::check(app, account, &order, &info)?;

    // > The CSR MUST indicate the exact same set of requested identifiers as the initial
    // > newOrder request.
    // (draft-ietf-acme-device-attest §3.2 lets permanent identifiers be left out: SPEC §7.4.)
    if !csr::matches_order(&info.identifiers, &order.identifiers) {
        let show = |ids: &[Identifier]| {
            ids.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Error::BadCsr(format!(
            "the CSR names [{}] but the order is for [{}]",
            show(&info.identifiers),
            show(&order.identifiers)
        )));
    }
    // The certificate key must not be the account key (RFC 8555 §11.1): reuse would let
    // whoever holds the TLS key act as the account.
    if info.public_key == account.public_key()? {
        return Err(Error::BadCsr(
            "the CSR key is the account key: use a separate key for the certificate".into(),
        ));
    }
    // The profile's key types, ApplicationUri policy and role (SPEC §8.3); its refusals
    // leave the order ready, like any other badCSR.
    let grant = Grant::of(app, account)?;
    let profile = app.profiles.of_order(order.profile.as_deref())?;
    let leaf = profile.leaf(&info, grant.role())?;

    // From here to the order's final state, a backup sees all of this issuance or none.
    let group = app.db.write_group();
    // Compare-and-swap Open -> Processing: of two concurrent finalizes only one gets here.
    let mine = Stage::Processing {
        since: now(),
        by: Some(super::process_id().to_owned()),
    };
    app.db.update(Table::Orders, id, |mut o: Order| {
        if o.stage != Stage::Open {
            return Err(Error::OrderNotReady("processing".into()));
        }
        o.stage = mine.clone();
        Ok(o)
    })?;
    // The order's next stage, if it is still this finalize's: another instance may have taken
    // this one for gone, or the issuance for stuck, and made it invalid (`interrupt`), which
    // stands. The order as stored, and whether `next` was written.
    let end = |next: &Stage| -> Result<(Order, bool)> {
        let mut ours = false;
        let order = app.db.update(Table::Orders, id, |mut o: Order| {
            ours = o.stage == mine;
            if ours {
                o.stage = next.clone();
            }
            Ok(o)
        })?;
        Ok((order, ours))
    };

    let reopen = |e: Error, claims: Vec<Claim>| -> Result<Order> {
        for claim in claims {
            claim.abandon(app);
        }
        end(&Stage::Open)?;
        Err(e)
    };
    // An authorization may have been deactivated or expired since the readiness check; the
    // swap only guarded the stage, so look again now that no other finalize can run.
    let status = order.status(app)?;
    if status != OrderStatus::Ready {
        return reopen(Error::OrderNotReady(status.to_string()), Vec::new());
    }
    // Claim what is bound to one account (`identity`): the pre-authorized identifiers while
    // no other account holds a current certificate for them, and an ApplicationUri for good.
    // Under compare-and-swap, so of two accounts racing for one identity one wins.
    let mut claims = Vec::new();
    for identifier in &pre_authorized {
        let key = crate::ra::identity::key(identifier);
        match crate::ra::identity::claim(app, &key, &account.id, Hold::WhileCurrent) {
            Ok(Ok(claim)) => claims.push(claim),
            Ok(Err(held)) => {
                let why = held_since(identifier, &held);
                let authz_id = order
                    .authzs
                    .iter()
                    .zip(&order.identifiers)
                    .find(|(_, i)| *i == identifier)
                    .map(|(a, _)| a.clone());
                if let Some(authz_id) = authz_id {
                    withdraw(app, &order, &authz_id, identifier, &why)?;
                }
                return reopen(withdrawn(identifier, &why), claims);
            }
            Err(e) => return reopen(e, claims),
        }
    }
    if let Some(uri) = leaf.uri.as_deref() {
        let key = crate::ra::identity::uri_key(uri);
        match crate::ra::identity::claim(app, &key, &account.id, Hold::UntilReleased) {
            Ok(Ok(claim)) => claims.push(claim),
            Ok(Err(held)) => return reopen(crate::ra::identity::uri_held(uri, &held), claims),
            Err(e) => return reopen(e, claims),
        }
    }

    let stage = match app.ca.issue_leaf(&info.spki_der, &order.identifiers, &leaf) {
        // The request's fault, found only while building the certificate: the order goes back
        // to ready and the client can send a better CSR (badCSR leaves the order as it was).
        Err(e @ (Error::BadCsr(_) | Error::BadPublicKey(_) | Error::RejectedIdentifier { .. })) => {
            return reopen(e, claims);
        }
        // The CA's key in its token failed for now (503 with Retry-After): the order goes back
        // to ready, so the client sends the same finalize again instead of starting over.
        Err(e @ Error::SigningKey(_)) => return reopen(e, claims),
        Ok(issued) => {
            let cert = Certificate::new(&account.id, &order, &issued, source);
            // The identities first, against this finalize's claims: an issuance that stalled
            // until another account took one hands nothing out, and the order is ready again.
            match crate::ra::identity::record_issued(app, &cert, leaf.uri.as_deref(), &claims) {
                Ok(()) => {}
                Err(e @ Error::Unauthorized(_)) => {
                    tracing::warn!(order = %order.id, serial = %cert.id, error = %e,
                        "signed certificate discarded: an identity claim was lost");
                    return reopen(e, claims);
                }
                Err(e) => return Err(e),
            }
            // A failure here leaves the order processing until it is reported stuck; the
            // identities stay recorded for the certificate, which may have been signed.
            app.db.put(Table::Certificates, &cert.id, &cert)?;
            key_use.record(app, &cert)?;
            tracing::info!(account = %account.id, order = %order.id, serial = %cert.id, profile = ?cert.profile, "certificate issued");
            app.metrics
                .certificate_issued(&profile.name, enrollment(app, &order));
            Stage::Valid { cert: cert.id }
        }
        Err(e) => {
            tracing::error!(order = %order.id, error = %e, "issuance failed");
            for claim in claims {
                claim.abandon(app);
            }
            Stage::Invalid {
                error: Problem::new(crate::ProblemType::ServerInternal, "issuance failed"),
            }
        }
    };
    let (order, ours) = end(&stage)?;
    if !ours {
        if let Stage::Valid { cert } = &stage {
            tracing::warn!(order = %order.id, serial = %cert,
                "the order was made invalid as interrupted while this instance issued: the \
                 certificate is not handed out");
        }
    }
    drop(group);
    // The certificate and the order's valid state are on disk before the client hears of
    // them: a client that saw "valid" can always download its certificate.
    app.db.flush().await?;
    Ok(order)
}

/// How the authorizations of `order` were made valid (the `enrollment` label of the issued
/// certificates metric).
fn enrollment(app: &Ra, order: &Order) -> Enrollment {
    let paths = order
        .authzs
        .iter()
        .filter_map(|id| app.db.get::<Authz>(Table::Authzs, id).ok().flatten())
        .map(|a| a.enrollment());
    Enrollment::combine(paths).unwrap_or(Enrollment::Mixed)
}

/// The stored record of a certificate is made when an order is finalized.
impl Certificate {
    /// The record for a freshly issued certificate, finalized from `source`.
    pub fn new(
        account_id: &str,
        order: &Order,
        issued: &IssuedCert,
        source: Option<std::net::IpAddr>,
    ) -> Self {
        Self {
            id: issued.serial_hex.clone(),
            account_id: account_id.to_owned(),
            order_id: order.id.clone(),
            identifiers: order.identifiers.clone(),
            der: crate::wire::b64u(&issued.der),
            chain_pem: issued.chain_pem.clone(),
            issuer: issued.issuer,
            not_before: issued.not_before,
            not_after: issued.not_after,
            revoked: None,
            replaced_by: None,
            renew_after: None,
            profile: order.profile.clone(),
            source: source.map(|ip| ip.to_string()),
            reduced: None,
        }
    }
}
