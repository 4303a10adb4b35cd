//! The fleet: certificates (search, revoke, renew early), the fleet report, and identities.
//! Mounted on the socket (for the command line) and on the console.

// utoipa's `#[utoipa::path(params(…))]` expands to paths it qualifies in full.
#![allow(unused_qualifications)]

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::{Admin, Approver, Caller, Viewer};
use crate::ca::cert::{Certificate, RevokedBy};
use crate::ra::revocation::record_revocation;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::now;
use crate::types::rfc3339;
use crate::wire::parse_identifier;
use crate::{Error, Result};

/// Appends to the audit log what `caller` did.
pub(super) fn record(
    app: &Ra,
    caller: &Caller,
    action: &str,
    target: &str,
    detail: Value,
) -> Result<()> {
    app.audit
        .append(&caller.actor, action, target, detail)
        .map(drop)
}

/// Which certificates an operator command acts on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// One certificate by serial (hex).
    #[serde(default)]
    pub serial: Option<String>,
    /// Every certificate naming this identifier (`type:value`, e.g. `dns:plc-1`).
    #[serde(default)]
    pub identifier: Option<String>,
    /// Every certificate of this account id.
    #[serde(default)]
    pub account: Option<String>,
}

impl Selector {
    fn matches(&self, c: &Certificate) -> Result<bool> {
        let id = match &self.identifier {
            Some(text) => Some(parse_identifier(text)?),
            None => None,
        };
        Ok(self
            .serial
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case(&c.id))
            && id.as_ref().is_none_or(|i| c.identifiers.contains(i))
            && self.account.as_deref().is_none_or(|a| a == c.account_id))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.serial.is_none() && self.identifier.is_none() && self.account.is_none()
    }
}

/// Every stored certificate, reduced ones in the history too (`ra::history`). A console request that needs them all reads them on the blocking
/// pool, one such read at a time, so operators (or a page in an operator's browser firing
/// requests) cannot tie up the workers that serve devices or hold many copies of a large
/// store in memory at once.
pub(super) async fn certificates(app: &Ra) -> Result<Vec<Certificate>> {
    static ONE_SCAN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let _turn = ONE_SCAN
        .acquire()
        .await
        .map_err(|e| Error::Internal(format!("scan queue closed: {e}")))?;
    let reader = app.clone();
    tokio::task::spawn_blocking(move || {
        let mut all: Vec<Certificate> = reader.db.values_with_prefix(Table::Certificates, "")?;
        // A certificate the pruner has copied to the history but not yet removed is listed
        // once, from its record.
        let listed: std::collections::HashSet<String> = all.iter().map(|c| c.id.clone()).collect();
        let reduced = crate::ra::history::all(&reader)?;
        all.extend(reduced.into_iter().filter(|c| !listed.contains(&c.id)));
        Ok(all)
    })
    .await
    .map_err(|e| Error::Internal(format!("certificate scan failed: {e}")))?
}

/// RFC 5280 §5.3.1 reasons an operator may give, by name.
pub const REASONS: [(&str, u8); 8] = [
    ("unspecified", 0),
    ("keyCompromise", 1),
    ("cACompromise", 2),
    ("affiliationChanged", 3),
    ("superseded", 4),
    ("cessationOfOperation", 5),
    ("privilegeWithdrawn", 9),
    ("aACompromise", 10),
];

/// The code of an RFC 5280 §5.3.1 reason name an operator may give.
pub fn reason_code(name: &str) -> Result<u8> {
    REASONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, code)| *code)
        .ok_or_else(|| {
            Error::BadRevocationReason(format!("unknown or unsupported reason {name:?}"))
        })
}

/// Which certificates to revoke, and why.
#[derive(Deserialize, ToSchema)]
pub struct RevokeRequest {
    /// Which certificates.
    #[serde(flatten)]
    pub select: Selector,
    /// RFC 5280 §5.3.1 reason code (0 unspecified, 1 keyCompromise, 4 superseded, 5
    /// cessationOfOperation, …).
    pub reason: u8,
}

/// Revokes every matching certificate that is not revoked yet, and publishes new CRLs.
#[utoipa::path(post, path = "/api/revoke", tag = "certificates", request_body = RevokeRequest,
    responses((status = 200, description = "`{\"revoked\": [serial, …]}`")))]
pub async fn revoke(
    State(app): State<Ra>,
    Admin(caller): Admin,
    Json(r): Json<RevokeRequest>,
) -> Result<Json<Value>> {
    if r.select.is_empty() {
        return Err(Error::Malformed(
            "say which certificates: serial, identifier or account".into(),
        ));
    }
    if !REASONS.iter().any(|(_, code)| *code == r.reason) {
        return Err(Error::BadRevocationReason(format!(
            "reason {} is not one an operator may give: {}",
            r.reason,
            REASONS
                .iter()
                .map(|(name, code)| format!("{code} {name}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut revoked = Vec::new();
    let mut issuers = std::collections::BTreeSet::new();
    for c in certificates(&app).await? {
        if c.revoked.is_none() && r.select.matches(&c)? {
            match record_revocation(&app, &c.id, r.reason, RevokedBy::Operator) {
                Ok(issuer) => {
                    issuers.insert(issuer);
                    revoked.push(c.id);
                }
                Err(Error::AlreadyRevoked) => revoked.push(c.id),
                Err(e) => return Err(e),
            }
        }
    }
    app.db.flush().await?;
    tracing::info!(
        count = revoked.len(),
        reason = r.reason,
        operator = %caller.actor.name,
        "operator revoked certificates"
    );
    // The CRLs first: brokers read them, and the revocation stands whatever the log says.
    crate::ra::crl::publish(&app, issuers).await;
    for serial in &revoked {
        record(
            &app,
            &caller,
            "certificate.revoke",
            serial,
            json!({"reason": r.reason}),
        )?;
    }
    Ok(Json(json!({"revoked": revoked})))
}

/// Makes the renewal window of every matching certificate start now (RFC 9773): devices that
/// ask for renewal information renew at once, e.g. after a key incident.
#[utoipa::path(post, path = "/api/renew-early", tag = "certificates", request_body = Selector,
    responses((status = 200, description = "`{\"renewNow\": [serial, …]}`")))]
pub async fn renew_early(
    State(app): State<Ra>,
    Approver(caller): Approver,
    Json(select): Json<Selector>,
) -> Result<Json<Value>> {
    if select.is_empty() {
        return Err(Error::Malformed(
            "say which certificates: serial, identifier or account".into(),
        ));
    }
    let at = now();
    let mut marked = Vec::new();
    for c in certificates(&app).await? {
        if c.revoked.is_none() && c.not_after > at && select.matches(&c)? {
            app.db
                .update(Table::Certificates, &c.id, |mut c: Certificate| {
                    c.renew_after = Some(at);
                    Ok(c)
                })?;
            marked.push(c.id);
        }
    }
    app.db.flush().await?;
    for serial in &marked {
        record(
            &app,
            &caller,
            "certificate.renew-early",
            serial,
            Value::Null,
        )?;
    }
    Ok(Json(json!({"renewNow": marked})))
}

/// The fleet report: what an operator checks on a fleet.
#[utoipa::path(get, path = "/api/report", tag = "fleet",
    responses((status = 200, description = "certificates by status, expiring within 24 h, \
        devices that stopped renewing, revoked, key-reuse and weak-key attempts, key types, \
        profiles, certificates issued per hour over the last 24 h")))]
pub async fn report(State(app): State<Ra>, _: Viewer) -> Result<Json<Value>> {
    let at = now();
    let certs = certificates(&app).await?;
    let soon = at + 24 * 3600;
    let (mut valid, mut expired, mut revoked) = (0, 0, 0);
    // Profiles and key types in use: of valid certificates only (neither expired nor
    // revoked). Certificates issued before profiles are `default`.
    let mut profiles: BTreeMap<&str, usize> = BTreeMap::new();
    let mut key_types: BTreeMap<String, usize> = BTreeMap::new();
    let mut expiring = Vec::new();
    let mut revoked_list = Vec::new();
    // Newest certificate per identifier set: a device whose newest certificate has expired
    // stopped renewing.
    let mut newest: BTreeMap<String, &Certificate> = BTreeMap::new();
    // Certificates issued in each of the last 24 hours, oldest hour first.
    let mut per_hour = [0usize; 24];
    for c in &certs {
        if let Ok(hours) = usize::try_from((at - c.not_before) / 3600) {
            if let Some(slot) = per_hour.len().checked_sub(hours + 1) {
                per_hour[slot] += 1;
            }
        }
        match (&c.revoked, c.not_after <= at) {
            (Some(r), _) => {
                revoked += 1;
                revoked_list.push(json!({"serial": c.id, "identifiers": c.identifiers,
                    "reason": r.reason, "at": rfc3339(r.at)}));
            }
            (None, true) => expired += 1,
            (None, false) => {
                valid += 1;
                *profiles
                    .entry(
                        c.profile
                            .as_deref()
                            .unwrap_or(crate::ca::profiles::DEFAULT_PROFILE),
                    )
                    .or_default() += 1;
                *key_types.entry(c.key_type()?).or_default() += 1;
                if c.not_after <= soon {
                    expiring.push(json!({"serial": c.id, "identifiers": c.identifiers,
                        "notAfter": rfc3339(c.not_after)}));
                }
            }
        }
        let key = c
            .identifiers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if newest.get(&key).is_none_or(|n| n.not_before < c.not_before) {
            newest.insert(key, c);
        }
    }
    let stopped: Vec<Value> = newest
        .iter()
        .filter(|(_, c)| c.not_after <= at && c.revoked.is_none())
        .map(|(ids, c)| {
            json!({"identifiers": ids, "lastCertificate": c.id,
            "expired": rfc3339(c.not_after)})
        })
        .collect();
    let reuse = crate::ra::keycheck::KeyReuseAttempt::list(&app)?;
    let weak = crate::ra::keycheck::WeakKeyAttempt::list(&app)?;
    Ok(Json(json!({
        "generated": rfc3339(at),
        "certificates": {"total": certs.len(), "valid": valid, "expired": expired, "revoked": revoked},
        "expiringWithin24h": expiring,
        "stoppedRenewing": stopped,
        "revoked": revoked_list,
        "keyReuseAttempts": reuse,
        "weakKeyAttempts": weak,
        "keyTypes": key_types,
        "profiles": profiles,
        "issuedPerHour": per_hour,
    })))
}

/// An identity: `type:value` or `uri:` + an ApplicationUri.
#[derive(Deserialize, ToSchema)]
pub struct IdentityRequest {
    /// `dns:NAME`, `ip:ADDR`, `permanent-identifier:SERIAL` or `uri:APPLICATION-URI`.
    identity: String,
}

/// Who holds an identity.
#[utoipa::path(post, path = "/api/identity/show", tag = "identities",
    request_body = IdentityRequest,
    responses((status = 200, description = "`{\"identity\", \"holder\"}`")))]
pub async fn identity_show(
    State(app): State<Ra>,
    _: Viewer,
    Json(r): Json<IdentityRequest>,
) -> Result<Json<Value>> {
    let key = crate::ra::identity::parse_key(&r.identity)?;
    let held = crate::ra::identity::get(&app, &key)?;
    Ok(Json(json!({"identity": key, "holder": held})))
}

/// The operator releases an identity, so another account may be certified for it.
#[utoipa::path(post, path = "/api/identity/release", tag = "identities",
    request_body = IdentityRequest,
    responses((status = 200, description = "`{\"identity\", \"released\"}`")))]
pub async fn identity_release(
    State(app): State<Ra>,
    Admin(caller): Admin,
    Json(r): Json<IdentityRequest>,
) -> Result<Json<Value>> {
    let key = crate::ra::identity::parse_key(&r.identity)?;
    let released = crate::ra::identity::release(&app, &key)?;
    app.db.flush().await?;
    if let Some(h) = &released {
        tracing::info!(identity = %key, holder = %h.account_id, "operator released an identity");
        record(
            &app,
            &caller,
            "identity.release",
            &key,
            json!({"holder": h.account_id}),
        )?;
    }
    Ok(Json(json!({"identity": key, "released": released})))
}

/// A certificate's state now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Neither expired nor revoked.
    Valid,
    /// Past notAfter, not revoked.
    Expired,
    /// Revoked.
    Revoked,
}

impl Status {
    /// The state of `c` at `at`.
    pub fn of(c: &Certificate, at: i64) -> Self {
        match (&c.revoked, c.not_after <= at) {
            (Some(_), _) => Self::Revoked,
            (None, true) => Self::Expired,
            (None, false) => Self::Valid,
        }
    }

    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

/// Search filters and paging for the certificate list; filters combine (all must match).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct CertificateQuery {
    /// Serial number (hex).
    pub serial: Option<String>,
    /// An identifier the certificate names, `type:value` (e.g. `dns:plc-1`).
    pub identifier: Option<String>,
    /// The id of the account that ordered it.
    pub account: Option<String>,
    /// The profile it was issued under (`default` for certificates from before profiles).
    pub profile: Option<String>,
    /// Its state now.
    pub status: Option<Status>,
    /// Page, from 1 (default 1).
    pub page: Option<usize>,
    /// Certificates per page (default 50, at most 500).
    pub per_page: Option<usize>,
}

/// A certificate in a list.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSummary {
    /// Serial number, hex.
    pub serial: String,
    /// Certified identifiers, `type:value`.
    pub identifiers: Vec<String>,
    /// The account that ordered it.
    pub account: String,
    /// Its profile.
    pub profile: String,
    /// The issuing intermediate, `ec` or `rsa`.
    pub issuer: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// Its state now.
    pub status: Status,
    /// When and why it was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked: Option<RevokedSummary>,
    /// Set when an operator made it renew early: its renewal window starts here (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_after: Option<String>,
    /// Retention reduced its record to this index entry: the certificate itself is gone.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reduced: bool,
}

/// A revocation in a list.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RevokedSummary {
    /// RFC 5280 reason code.
    pub reason: u8,
    /// RFC 3339.
    pub at: String,
}

impl CertificateSummary {
    fn of(c: &Certificate, at: i64) -> Self {
        Self {
            serial: c.id.clone(),
            identifiers: c.identifiers.iter().map(ToString::to_string).collect(),
            account: c.account_id.clone(),
            profile: profile_of(c).to_owned(),
            issuer: c.issuer.to_string().to_ascii_lowercase(),
            not_before: rfc3339(c.not_before),
            not_after: rfc3339(c.not_after),
            status: Status::of(c, at),
            revoked: c.revoked.as_ref().map(|r| RevokedSummary {
                reason: r.reason,
                at: rfc3339(r.at),
            }),
            renew_after: c.renew_after.map(rfc3339),
            reduced: c.is_reduced(),
        }
    }
}

fn profile_of(c: &Certificate) -> &str {
    c.profile
        .as_deref()
        .unwrap_or(crate::ca::profiles::DEFAULT_PROFILE)
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// How many match in all.
    pub total: usize,
    /// This page, from 1.
    pub page: usize,
    /// Items per page.
    pub per_page: usize,
}

/// The default and the largest page size.
const PER_PAGE: (usize, usize) = (50, 500);

/// The highest page number asked for that is taken as such.
const MAX_PAGE: usize = 1 << 30;

impl<T> Page<T> {
    /// The `page`-th page (from 1) of `per_page` items of `all`.
    pub fn of(all: Vec<T>, page: Option<usize>, per_page: Option<usize>) -> Self {
        let per_page = per_page.unwrap_or(PER_PAGE.0).clamp(1, PER_PAGE.1);
        // Past the last page is an empty page; the cap keeps page arithmetic in range.
        let page = page.unwrap_or(1).clamp(1, MAX_PAGE);
        let total = all.len();
        let items = all
            .into_iter()
            .skip((page - 1).saturating_mul(per_page))
            .take(per_page)
            .collect();
        Self {
            items,
            total,
            page,
            per_page,
        }
    }
}

/// Certificates matching the filters, newest first, one page at a time.
#[utoipa::path(get, path = "/api/certificates", tag = "certificates", params(CertificateQuery),
    responses((status = 200, body = Page<CertificateSummary>)))]
pub async fn list_certificates(
    State(app): State<Ra>,
    _: Viewer,
    Query(q): Query<CertificateQuery>,
) -> Result<Json<Page<CertificateSummary>>> {
    let at = now();
    let select = Selector {
        serial: q.serial.clone(),
        identifier: q.identifier.clone(),
        account: q.account.clone(),
    };
    let mut matching = Vec::new();
    for c in certificates(&app).await? {
        if select.matches(&c)?
            && q.profile.as_deref().is_none_or(|p| p == profile_of(&c))
            && q.status.is_none_or(|s| s == Status::of(&c, at))
        {
            matching.push(c);
        }
    }
    matching.sort_by(|a, b| b.not_before.cmp(&a.not_before).then(a.id.cmp(&b.id)));
    let summaries = matching
        .iter()
        .map(|c| CertificateSummary::of(c, at))
        .collect();
    Ok(Json(Page::of(summaries, q.page, q.per_page)))
}

/// One certificate in full: its summary, key type, chain, renewal window, the address its
/// finalize request came from, and the device's other certificates (same identifiers), newest
/// first.
#[utoipa::path(get, path = "/api/certificates/{serial}", tag = "certificates",
    params(("serial" = String, Path, description = "serial number, hex")),
    responses((status = 200, description = "the certificate"),
        (status = 404, description = "no such certificate")))]
pub async fn certificate(
    State(app): State<Ra>,
    _: Viewer,
    Path(serial): Path<String>,
) -> Result<Json<Value>> {
    let serial = serial.to_ascii_lowercase();
    let c: Certificate =
        crate::ra::history::certificate(&app, &serial)?.ok_or(Error::NotFound("certificate"))?;
    let at = now();
    let (start, end) = crate::ra::renewal::suggested_window(&c, at);
    let mut history: Vec<CertificateSummary> = certificates(&app)
        .await?
        .iter()
        .filter(|o| o.identifiers == c.identifiers)
        .map(|o| CertificateSummary::of(o, at))
        .collect();
    history.sort_by(|a, b| b.not_before.cmp(&a.not_before));
    Ok(Json(json!({
        "certificate": CertificateSummary::of(&c, at),
        "keyType": c.key_type()?,
        "orderId": c.order_id,
        "source": c.source,
        "replacedBy": c.replaced_by,
        "renewalWindow": {"start": rfc3339(start), "end": rfc3339(end)},
        "chainPem": c.chain_pem,
        "history": history,
    })))
}
