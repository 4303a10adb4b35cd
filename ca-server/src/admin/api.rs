//! The console's REST API, `/api/…`, on the HTTPS listener of `[admin]`: everything the
//! command line does, for operators with client certificates, and its OpenAPI document
//! (`/api/openapi.json`), generated from the same handlers and router.
//!
//! Every request is authenticated first ([`authenticate`]): the TLS client certificate the
//! listener verified against the operator CA must be that of an active operator record. Each
//! handler then asks for the role it needs (see the module `admin`).

// utoipa's `#[utoipa::path(params(…))]` expands to paths it qualifies in full.
#![allow(unused_qualifications)]

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::fleet::{self, record, Page};
use super::{Admin, Approver, Caller, Viewer};
use crate::ca::operator::ClientCertificate;
use crate::ca::IssuerKind;
use crate::ra::approval::{mark_duplicates, Decision};
use crate::ra::audit::Actor;
use crate::ra::eab::{AllowRule, NewCredential};
use crate::ra::operator::{self, Role};
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::rfc3339;
use crate::{Error, Result};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "iiot-acme operator console API",
        description = "Operate an iiot-acme CA: certificates, approvals, enrollment \
            credentials, trust anchors, operators, the audit log. Authenticate with an operator \
            client certificate (`ca-server operator add`); roles: viewer reads, approver also \
            approves and renews early, admin also revokes and manages credentials, anchors, \
            identities and operators. Errors are RFC 7807 problem documents."
    ),
    tags(
        (name = "fleet"), (name = "certificates"), (name = "approvals"),
        (name = "credentials"), (name = "trust-anchors"), (name = "operators"),
        (name = "identities"), (name = "audit"), (name = "crl"), (name = "console"),
        (name = "config")
    )
)]
struct ApiDoc;

/// The console's API routes with their OpenAPI document.
pub fn routes() -> OpenApiRouter<Ra> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(whoami))
        .routes(routes!(fleet::report))
        .routes(routes!(fleet::list_certificates))
        .routes(routes!(fleet::certificate))
        .routes(routes!(fleet::revoke))
        .routes(routes!(fleet::renew_early))
        .routes(routes!(fleet::identity_show))
        .routes(routes!(fleet::identity_release))
        .routes(routes!(approvals))
        .routes(routes!(approve))
        .routes(routes!(reject))
        .routes(routes!(credentials, create_credential))
        .routes(routes!(revoke_credential))
        .routes(routes!(trust_anchors, add_trust_anchor))
        .routes(routes!(operators, add_operator))
        .routes(routes!(revoke_operator))
        .routes(routes!(audit_log))
        .routes(routes!(crl_status))
        .routes(routes!(config))
}

/// The console router: the API, its OpenAPI document, behind [`authenticate`].
pub fn router(app: Ra) -> Router {
    let (api, doc) = routes().split_for_parts();
    let doc = std::sync::Arc::new(doc);
    api.route(
        "/api/openapi.json",
        axum::routing::get(move |_: Viewer| {
            let doc = std::sync::Arc::clone(&doc);
            async move { Json(doc.as_ref().clone()) }
        }),
    )
    .merge(super::ui::routes())
    .fallback(|| async { Error::NotFound("console resource") })
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        authenticate,
    ))
    .layer(axum::middleware::from_fn(refuse_cross_site))
    .layer(axum::middleware::from_fn(security_headers))
    .with_state(app)
}

/// Refuses a state-changing request that a browser says another site made.
///
/// A browser sends the operator's client certificate with every request to the console,
/// including one a page of another site makes: a form on any page the operator opens could
/// post to `/api/revoke`. Browsers mark such requests (`Sec-Fetch-Site: cross-site`, or an
/// `Origin` that is not the console's), so requests other than GET and HEAD must come from
/// the console's own pages (`same-origin`), or from no page at all (`none`, or no such headers:
/// curl and scripts).
async fn refuse_cross_site(request: Request, next: Next) -> Result<Response> {
    use axum::http::{header, Method};
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let headers = request.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        // Forms are what a page of another site can send without asking (a cross-site JSON
        // request needs a CORS preflight, which the console never grants); browsers too old
        // to say where a form comes from are not served forms.
        let form = text(header::CONTENT_TYPE.as_str()).is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            t.starts_with("application/x-www-form-urlencoded")
                || t.starts_with("multipart/form-data")
                || t.starts_with("text/plain")
        });
        let refused = match text("sec-fetch-site") {
            Some("same-origin" | "none") => None,
            Some(site) => Some(format!("Sec-Fetch-Site: {site}")),
            None => match (text(header::ORIGIN.as_str()), text(header::HOST.as_str())) {
                (Some(origin), Some(host)) if origin == format!("https://{host}") => None,
                (Some(origin), _) => Some(format!("Origin: {origin}")),
                (None, _) if form => Some("a form without Origin".to_owned()),
                (None, _) => None,
            },
        };
        if let Some(why) = refused {
            return Err(Error::Forbidden(format!(
                "a request from another site may not change anything ({why})"
            )));
        }
    }
    Ok(next.run(request).await)
}

/// Headers on every console response: no framing (clickjacking), no sniffing, nothing cached
/// or leaked in a Referer, and only the console's own scripts, styles and images.
async fn security_headers(request: Request, next: Next) -> Response {
    use axum::http::header::{self, HeaderValue};
    let mut response = next.run(request).await;
    if let Some(cause) = response.extensions().get::<crate::error::InternalCause>() {
        tracing::error!(cause = %cause.0, "console request failed");
    }
    let h = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Finds the operator whose certificate the connection presented and attaches it to the
/// request as its [`Caller`]; a request without one goes on without a caller, and every
/// handler that needs one answers 401.
pub async fn authenticate(
    State(app): State<Ra>,
    mut request: Request,
    next: Next,
) -> Result<Response> {
    let from = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
    if let Some(cert) = request.extensions().get::<ClientCertificate>() {
        let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, cert.0.as_ref()));
        // The record is read on every request, so a revocation at any instance holds at once.
        match app.operators.authenticate(&sha256)? {
            Some(op) => {
                request.extensions_mut().insert(Caller {
                    actor: Actor {
                        name: op.name,
                        from,
                    },
                    role: op.role,
                });
            }
            None => {
                return Err(Error::OperatorRequired(
                    "this client certificate belongs to no active operator (revoked, expired \
                     or replaced)"
                        .to_owned(),
                ))
            }
        }
    }
    Ok(next.run(request).await)
}

/// Who the console thinks you are.
#[utoipa::path(get, path = "/api/whoami", tag = "console",
    responses((status = 200, description = "`{\"name\", \"role\", \"from\"}`"),
        (status = 401, description = "no operator certificate")))]
pub(super) async fn whoami(Viewer(caller): Viewer) -> Json<Value> {
    Json(json!({"name": caller.actor.name, "role": caller.role, "from": caller.actor.from}))
}

/// Devices waiting for operator approval, with their pairing codes, source addresses and the
/// other requests that name the same identifier (at most one of them is the device in front
/// of the operator).
#[utoipa::path(get, path = "/api/approvals", tag = "approvals",
    responses((status = 200, description = "pending requests")))]
pub(super) async fn approvals(State(app): State<Ra>, _: Viewer) -> Result<Json<Value>> {
    let pending = app.approvals.list_pending()?;
    let listed: Vec<Value> = mark_duplicates(pending)
        .into_iter()
        .map(|l| {
            let p = &l.request;
            json!({
                "id": p.id,
                "identifier": p.identifier.to_string(),
                "pairingCode": p.pairing_code,
                "source": p.source,
                "account": p.account_id,
                "accountKeyThumbprint": p.thumbprint,
                "requested": rfc3339(p.requested),
                "expires": rfc3339(p.expires),
                "alsoRequested": l.also_requested.iter().map(|o| json!({
                    "id": o.id, "source": o.source, "account": o.account_id,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "pending": listed })))
}

/// Approves a request: the operator has checked that the pairing code matches the device's
/// display.
#[utoipa::path(post, path = "/api/approvals/{id}/approve", tag = "approvals",
    params(("id" = String, Path, description = "the request id")),
    responses((status = 200, description = "the decided request"),
        (status = 404, description = "no such pending request")))]
pub(super) async fn approve(
    State(app): State<Ra>,
    Approver(caller): Approver,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    decide(&app, &caller, &id, &Decision::Approve).await
}

/// The longest rejection reason: it is shown to the device and kept in the audit log.
const MAX_REASON: usize = 500;

/// Why a request is rejected.
#[derive(Default, Deserialize, ToSchema)]
pub struct RejectRequest {
    /// Shown to the device in the challenge error.
    #[serde(default)]
    pub(super) reason: Option<String>,
}

/// Rejects a request.
#[utoipa::path(post, path = "/api/approvals/{id}/reject", tag = "approvals",
    params(("id" = String, Path, description = "the request id")),
    request_body = RejectRequest,
    responses((status = 200, description = "the decided request"),
        (status = 404, description = "no such pending request")))]
pub(super) async fn reject(
    State(app): State<Ra>,
    Approver(caller): Approver,
    Path(id): Path<String>,
    body: Option<Json<RejectRequest>>,
) -> Result<Json<Value>> {
    let reason = body.and_then(|Json(b)| b.reason).filter(|r| !r.is_empty());
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON)
    {
        return Err(Error::Malformed(format!(
            "the reason is longer than {MAX_REASON} characters"
        )));
    }
    decide(&app, &caller, &id, &Decision::Reject { reason }).await
}

async fn decide(app: &Ra, caller: &Caller, id: &str, decision: &Decision) -> Result<Json<Value>> {
    let queue = &app.approvals;
    if !queue.list_pending()?.iter().any(|p| p.id == id) {
        return Err(Error::NotFound("pending approval request"));
    }
    let (action, mut detail) = match decision {
        Decision::Approve => ("approval.approve", json!({})),
        Decision::Reject { reason } => ("approval.reject", json!({ "reason": reason })),
    };
    // In the audit log before it is made: a decision that cannot be recorded is not made.
    let p = queue.decide_recorded(id, decision, |p| {
        detail["identifier"] = json!(p.identifier.to_string());
        detail["pairingCode"] = json!(p.pairing_code);
        detail["source"] = json!(p.source);
        record(app, caller, action, &p.id, detail)
    })?;
    // Applied now, not at the next tick: the device's next poll sees it, and the list the
    // operator returns to no longer shows the request.
    if let Err(e) = crate::ra::approval::apply(app).await {
        tracing::error!(error = %e, "applying operator decisions failed; the next tick retries");
    }
    Ok(Json(json!({
        "id": p.id,
        "identifier": p.identifier.to_string(),
        "pairingCode": p.pairing_code,
        "decision": if matches!(decision, Decision::Approve) { "approved" } else { "rejected" },
    })))
}

/// Enrollment (EAB) credentials, without their HMAC keys.
#[utoipa::path(get, path = "/api/credentials", tag = "credentials",
    responses((status = 200, description = "every credential")))]
pub(super) async fn credentials(State(app): State<Ra>, _: Viewer) -> Result<Json<Value>> {
    let list: Vec<Value> = app
        .eab
        .list()?
        .into_iter()
        .map(|c| {
            let uses = app.eab.uses(&app.db, &c.kid).unwrap_or(0);
            json!({
                "kid": c.kid,
                "created": rfc3339(c.created),
                "expires": c.expires.map(rfc3339),
                "maxUses": c.max_uses,
                "uses": uses,
                "allow": c.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "role": c.role,
                "revoked": c.revoked,
            })
        })
        .collect();
    Ok(Json(json!({ "credentials": list })))
}

/// A new enrollment credential.
#[derive(Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewCredentialRequest {
    /// How long it stays usable, e.g. `30d` (default: no expiry).
    #[serde(default)]
    pub(super) expires: Option<String>,
    /// How many device accounts it may bind (default: unlimited).
    #[serde(default)]
    pub(super) max_uses: Option<u32>,
    /// Pre-authorized identifiers: `serial:SN-0042`, `dns:plant.example`, `ip:10.20.0.0/16`.
    #[serde(default)]
    pub(super) allow: Vec<String>,
    /// Modbus/TCP Security role for certificates of the `modbus` profile.
    #[serde(default)]
    pub(super) role: Option<String>,
}

/// Creates an enrollment credential. Its HMAC key is in this response only.
#[utoipa::path(post, path = "/api/credentials", tag = "credentials",
    request_body = NewCredentialRequest,
    responses((status = 200, description = "`{\"kid\", \"hmac\", …}`: the HMAC key, shown once")))]
pub(super) async fn create_credential(
    State(app): State<Ra>,
    Admin(caller): Admin,
    Json(r): Json<NewCredentialRequest>,
) -> Result<Json<Value>> {
    let expires_in = r
        .expires
        .as_deref()
        .filter(|e| !e.is_empty())
        .map(crate::types::parse_duration)
        .transpose()
        .map_err(|e| Error::Malformed(format!("expires: {e}")))?;
    let allow = r
        .allow
        .iter()
        .filter(|a| !a.trim().is_empty())
        .map(|a| AllowRule::parse(a.trim()).map_err(|e| Error::Malformed(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    // An allow rule must not cover a name the CA serves as (SPEC §6.6).
    crate::ra::eab::check_rules(&allow, &app.own_names)?;
    let role = r.role.filter(|x| !x.trim().is_empty());
    let c = app.eab.create(&NewCredential {
        expires_in,
        max_uses: r.max_uses,
        allow,
        role,
    })?;
    let allow: Vec<String> = c.allow.iter().map(ToString::to_string).collect();
    record(
        &app,
        &caller,
        "credential.create",
        &c.kid,
        json!({"expires": c.expires.map(rfc3339), "maxUses": c.max_uses, "allow": allow,
            "role": c.role}),
    )?;
    Ok(Json(json!({
        "kid": c.kid,
        "hmac": c.hmac_key,
        "expires": c.expires.map(rfc3339),
        "maxUses": c.max_uses,
        "allow": allow,
        "role": c.role,
        "directory": app.url(crate::wire::paths::DIRECTORY),
    })))
}

/// Revokes an enrollment credential: it binds no more accounts, and what it pre-authorized
/// ends for the accounts it bound.
#[utoipa::path(post, path = "/api/credentials/{kid}/revoke", tag = "credentials",
    params(("kid" = String, Path, description = "the key id")),
    responses((status = 200, description = "revoked"), (status = 404, description = "no such credential")))]
pub(super) async fn revoke_credential(
    State(app): State<Ra>,
    Admin(caller): Admin,
    Path(kid): Path<String>,
) -> Result<Json<Value>> {
    if !app.eab.revoke(&kid)? {
        return Err(Error::NotFound("credential"));
    }
    record(&app, &caller, "credential.revoke", &kid, Value::Null)?;
    Ok(Json(json!({"kid": kid, "revoked": true})))
}

/// The manufacturer trust anchors device attestations are verified against.
#[utoipa::path(get, path = "/api/trust-anchors", tag = "trust-anchors",
    responses((status = 200, description = "every anchor, with its SHA-256 fingerprint")))]
pub(super) async fn trust_anchors(State(app): State<Ra>, _: Viewer) -> Result<Json<Value>> {
    let list: Vec<Value> = app
        .anchors
        .list()?
        .into_iter()
        .map(|(name, loaded)| match loaded {
            Ok(a) => json!({
                "name": name,
                "subject": a.subject(),
                "sha256": a.fingerprint(),
                "notAfter": rfc3339(a.not_after()),
                "assigner": a.assigner,
                "hwTypes": a.hw_types,
            }),
            Err(why) => json!({"name": name, "unusable": why.to_string()}),
        })
        .collect();
    Ok(Json(json!({ "trustAnchors": list })))
}

/// A manufacturer's IDevID CA certificate to trust.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewTrustAnchor {
    /// The certificate, PEM.
    pub(super) certificate: String,
    /// The OID the manufacturer qualifies its serial numbers with.
    pub(super) assigner: String,
    /// Name of the anchor (default: from its fingerprint).
    #[serde(default)]
    pub(super) name: Option<String>,
    /// RFC 4108 hardware types (hwType OIDs) whose IDevIDs it accepts.
    #[serde(default)]
    pub(super) hw_types: Vec<String>,
    /// The SHA-256 fingerprint the manufacturer published: the certificate is refused unless
    /// it matches.
    #[serde(default)]
    pub(super) sha256: Option<String>,
}

/// Trusts a manufacturer's IDevID CA certificate for device-attest-01.
#[utoipa::path(post, path = "/api/trust-anchors", tag = "trust-anchors",
    request_body = NewTrustAnchor,
    responses((status = 200, description = "the anchor, with its fingerprint to compare")))]
pub(super) async fn add_trust_anchor(
    State(app): State<Ra>,
    Admin(caller): Admin,
    Json(r): Json<NewTrustAnchor>,
) -> Result<Json<Value>> {
    let input = r.certificate.as_bytes();
    let bad = |e: crate::va::attest::anchors::AnchorError| Error::Malformed(e.to_string());
    if let Some(published) = r.sha256.as_deref().filter(|s| !s.trim().is_empty()) {
        crate::va::attest::anchors::check_published_fingerprint(input, published, "as sha256")
            .map_err(bad)?;
    }
    let hw_types: Vec<&str> = r.hw_types.iter().map(String::as_str).collect();
    let name = r.name.as_deref().filter(|n| !n.is_empty());
    let added = app
        .anchors
        .add(input, name, &r.assigner, &hw_types)
        .map_err(bad)?;
    let a = &added.anchor;
    record(
        &app,
        &caller,
        "trust-anchor.add",
        &a.name,
        json!({"sha256": a.fingerprint(), "subject": a.subject(), "assigner": a.assigner,
            "replaced": added.replaced}),
    )?;
    Ok(Json(json!({
        "name": a.name,
        "subject": a.subject(),
        "sha256": a.fingerprint(),
        "notAfter": rfc3339(a.not_after()),
        "assigner": a.assigner,
        "hwTypes": a.hw_types,
        "replaced": added.replaced,
    })))
}

/// The console's operators.
#[utoipa::path(get, path = "/api/operators", tag = "operators",
    responses((status = 200, description = "every operator")))]
pub(super) async fn operators(State(app): State<Ra>, _: Viewer) -> Result<Json<Value>> {
    let list = app.operators.list()?;
    Ok(Json(json!({ "operators": list })))
}

/// A new operator.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    /// 1 to 64 of a-z, 0-9, '.', '_', '-'.
    pub(super) name: String,
    /// `viewer`, `approver` or `admin`.
    pub(super) role: String,
}

/// Adds an operator: issues its client certificate and key, which are in this response only
/// (PEM, and PKCS#12 for browsers with the passphrase to import it).
#[utoipa::path(post, path = "/api/operators", tag = "operators", request_body = NewOperator,
    responses((status = 200, description = "`{\"operator\", \"certificatePem\", \"keyPem\", \
        \"pkcs12\" (base64), \"pkcs12Passphrase\"}`"),
        (status = 409, description = "an active operator has that name")))]
pub(super) async fn add_operator(
    State(app): State<Ra>,
    Admin(caller): Admin,
    Json(r): Json<NewOperator>,
) -> Result<Json<Value>> {
    let role = Role::parse(&r.role)?;
    let data_dir = &app.cfg.data_dir;
    let (op, credential) = operator::create(
        &app.operators,
        data_dir,
        &r.name,
        role,
        app.cfg.admin.operator_validity,
        &caller.actor.name,
    )?;
    let passphrase = operator::new_passphrase()?;
    let ca = crate::ca::operator::OperatorCa::load(&data_dir.join("ca"))?;
    let p12 = credential.pkcs12(&ca, &op.name, &passphrase)?;
    record(
        &app,
        &caller,
        "operator.add",
        &op.name,
        json!({"role": op.role, "serial": op.serial, "sha256": op.sha256}),
    )?;
    Ok(Json(json!({
        "operator": op,
        "certificatePem": credential.cert_pem(),
        "keyPem": credential.key_pem(),
        "pkcs12": crate::wire::b64u(&p12),
        "pkcs12Passphrase": passphrase,
    })))
}

/// Revokes an operator: its certificate stops working with the next request.
#[utoipa::path(post, path = "/api/operators/{name}/revoke", tag = "operators",
    params(("name" = String, Path, description = "the operator")),
    responses((status = 200, description = "the revoked record"),
        (status = 404, description = "no such operator")))]
pub(super) async fn revoke_operator(
    State(app): State<Ra>,
    Admin(caller): Admin,
    Path(name): Path<String>,
) -> Result<Json<Value>> {
    let op = app
        .operators
        .revoke(&name, &caller.actor.name)?
        .ok_or(Error::NotFound("operator"))?;
    record(&app, &caller, "operator.revoke", &op.name, Value::Null)?;
    Ok(Json(json!({ "operator": op })))
}

/// Paging of the audit log.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Page, from 1 (default 1): newest entries first.
    pub page: Option<usize>,
    /// Entries per page (default 50, at most 500).
    pub per_page: Option<usize>,
}

/// The audit log, newest first, and whether its hash chain is intact.
#[utoipa::path(get, path = "/api/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "`{\"chain\": \"intact\" | reason, \"entries\": page}`")))]
pub(super) async fn audit_log(
    State(app): State<Ra>,
    _: Viewer,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>> {
    let (mut entries, chain) = app.audit.read_checked()?;
    entries.reverse();
    let page = Page::of(entries, q.page, q.per_page);
    Ok(Json(json!({
        "chain": chain.err().unwrap_or_else(|| "intact".to_owned()),
        "entries": page,
    })))
}

/// The CRLs: the last CRL number, and per issuer when its current CRL was signed, when it is
/// due, where it is served and how many certificates it lists.
#[utoipa::path(get, path = "/api/crl", tag = "crl",
    responses((status = 200, description = "CRL status per issuer")))]
pub(super) async fn crl_status(State(app): State<Ra>, _: Viewer) -> Result<Json<Value>> {
    let number: Option<u64> = app.db.get(Table::Meta, "crl_number")?;
    let certs = fleet::certificates(&app).await?;
    let issuers: Vec<Value> = IssuerKind::ALL
        .into_iter()
        .filter(|k| app.ca.has(*k))
        .map(|kind| {
            let listed = certs
                .iter()
                .filter(|c| c.revoked.as_ref().is_some_and(|r| r.issuer == kind))
                .count();
            let this_update = app.crl.published(kind);
            json!({
                "issuer": kind.to_string().to_ascii_lowercase(),
                "url": app.url(crate::ca::crl::path(kind)),
                "thisUpdate": this_update.map(rfc3339),
                "nextUpdate": this_update.map(|t| rfc3339(t + crate::ca::crl::LIFETIME)),
                "revoked": listed,
            })
        })
        .collect();
    Ok(Json(json!({ "crlNumber": number, "issuers": issuers })))
}

/// The configuration the server runs with (file, flags and defaults), as the configuration
/// file spells it (durations as `"7d"`), secret settings replaced by `"[redacted]"`
/// (`config::is_secret_setting`); unset optional settings are left out.
#[utoipa::path(get, path = "/api/config", tag = "config",
    responses((status = 200, description = "the effective configuration, one member per \
        section (`issuance`, `admin`, …)"),
        (status = 401, description = "no operator certificate")))]
pub(super) async fn config(State(app): State<Ra>, _: Viewer) -> Result<Json<Value>> {
    serde_json::to_value(effective_config(&app)?)
        .map(Json)
        .map_err(|e| Error::Internal(format!("cannot encode the configuration: {e}")))
}

/// What [`config`] answers, in the configuration file's form and order, for the page.
pub(super) fn effective_config(app: &Ra) -> Result<toml::Table> {
    app.cfg
        .redacted()
        .map_err(|e| Error::Internal(e.to_string()))
}
