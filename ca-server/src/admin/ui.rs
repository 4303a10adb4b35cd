//! The console's web pages: server-rendered HTML (maud, which escapes every value), plain forms,
//! no JavaScript, one stylesheet, all inside the binary.
//!
//! Each page gets its data from the same handler the REST API mounts ([`super::api`],
//! [`super::fleet`]), so the page shows what the API says and the roles, the audit log and the
//! checks are the API's. A form posts back to the page's own path; after a change the browser
//! is redirected (POST, redirect, GET) to a page that says what happened (`#flash`), except
//! where a secret is handed over once (a new credential's HMAC key, a new operator's key),
//! which is shown on the answer to the POST itself. Destructive actions (revoke, renew early)
//! go through a confirmation page.

use std::collections::BTreeMap;

use axum::extract::{Multipart, Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;
use serde_json::Value;

use super::fleet::{self, Selector};
use super::{api, Admin, Approver, Caller, Viewer};
use crate::ca::cert::Certificate;
use crate::ra::operator::Role;
use crate::ra::Ra;
use crate::types::{now, rfc3339};
use crate::Error;

/// The pages' routes.
pub fn routes() -> Router<Ra> {
    Router::new()
        .route("/", get(dashboard))
        .route("/devices", get(devices))
        .route("/devices/{serial}", get(device))
        .route("/devices/{serial}/revoke", get(revoke_page).post(revoke))
        .route(
            "/devices/{serial}/renew-early",
            get(renew_early_page).post(renew_early),
        )
        .route("/approvals", get(approvals))
        .route("/approvals/{id}", post(decide))
        .route("/credentials", get(credentials).post(create_credential))
        .route("/credentials/{kid}/revoke", post(revoke_credential))
        .route("/trust-anchors", get(trust_anchors).post(add_trust_anchor))
        .route("/operators", get(operators).post(add_operator))
        .route("/operators/{name}/revoke", post(revoke_operator))
        .route("/audit", get(audit))
        .route("/config", get(config))
        .route("/console.css", get(stylesheet))
}

/// A page, or an error page with the error's status.
type Page = Result<Response, UiError>;

/// An error shown as a page: the problem's detail in `#error`, with its status.
pub struct UiError(Error);

impl From<Error> for UiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let problem = self.0.to_problem();
        let status = self.0.status();
        if status.is_server_error() {
            tracing::error!(error = %self.0, "console page failed");
        }
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "iiot-acme console: error" }
                    link rel="stylesheet" href="/console.css"; }
                body {
                    header {
                        span.brand { "iiot-acme" }
                        nav aria-label="sections" {
                            @for (id, href, label) in NAV { a id=(format!("nav-{id}")) href=(href) { (label) } }
                        }
                    }
                    main {
                        h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                        p #error role="alert" { (problem.detail) }
                        p { a href="/" { "Back to the dashboard" } }
                    }
                }
            }
        };
        (status, Html(body.into_string())).into_response()
    }
}

/// The sections, in the navigation's order: id, path, label.
const NAV: [(&str, &str, &str); 8] = [
    ("dashboard", "/", "Dashboard"),
    ("devices", "/devices", "Devices"),
    ("approvals", "/approvals", "Approvals"),
    ("credentials", "/credentials", "Credentials"),
    ("trust-anchors", "/trust-anchors", "Trust anchors"),
    ("operators", "/operators", "Operators"),
    ("audit", "/audit", "Audit log"),
    ("config", "/config", "Configuration"),
];

/// What a redirect after a change reports: `?done=KIND&target=WHAT`. Only these fixed texts are
/// shown, with the target, so a link cannot put words of its own into the console.
#[derive(Default, Deserialize)]
struct Done {
    done: Option<String>,
    target: Option<String>,
}

impl Done {
    fn message(&self) -> Option<String> {
        // Targets are ids, serials and names: nothing else is shown.
        let target = self.target.as_deref().unwrap_or("");
        let plain = target.len() <= 80
            && target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !plain {
            return None;
        }
        let what = match self.done.as_deref()? {
            "approved" => "Approved request",
            "rejected" => "Rejected request",
            "revoked" => "Revoked certificate",
            "renew-early" => "Renewal due now for certificate",
            "credential-revoked" => "Revoked credential",
            "anchor-added" => "Trust anchor added (compare its SHA-256 below):",
            "operator-revoked" => "Revoked operator",
            _ => return None,
        };
        Some(format!("{what} {target}"))
    }
}

fn redirect(path: &str, done: &str, target: &str) -> Response {
    let q = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    Redirect::to(&format!("{path}?done={}&target={}", q(done), q(target))).into_response()
}

/// The frame of every page.
fn layout(
    caller: &Caller,
    current: &str,
    title: &str,
    flash: Option<String>,
    body: Markup,
) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · iiot-acme console" }
                link rel="stylesheet" href="/console.css";
            }
            body {
                header {
                    span.brand { "iiot-acme" }
                    nav aria-label="sections" {
                        @for (id, href, label) in NAV {
                            a id=(format!("nav-{id}")) href=(href)
                                aria-current=[(id == current).then_some("page")] { (label) }
                        }
                    }
                    span #whoami { (caller.actor.name) " (" (caller.role) ")" }
                }
                main {
                    @if let Some(text) = flash { p #flash role="status" { (text) } }
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(page.into_string()).into_response()
}

async fn stylesheet() -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

fn status_class(status: &str) -> String {
    format!("status-{status}")
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn count(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

async fn dashboard(State(app): State<Ra>, caller: Result<Viewer, Error>) -> Page {
    let Viewer(caller) = caller?;
    let report = fleet::report(State(app.clone()), Viewer(caller.clone()))
        .await?
        .0;
    let pending = api::approvals(State(app.clone()), Viewer(caller.clone()))
        .await?
        .0;
    let per_hour: Vec<u64> = report["issuedPerHour"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| n.as_u64().unwrap_or(0))
        .collect();
    let certs = &report["certificates"];
    let cards = [
        (
            "count-valid",
            "valid certificates",
            certs["valid"].to_string(),
            "ok",
        ),
        (
            "count-expiring",
            "expiring within 24 h",
            count(&report["expiringWithin24h"]).to_string(),
            "warn",
        ),
        (
            "count-stopped",
            "stopped renewing",
            count(&report["stoppedRenewing"]).to_string(),
            "bad",
        ),
        ("count-revoked", "revoked", certs["revoked"].to_string(), ""),
        (
            "count-pending",
            "waiting for approval",
            count(&pending["pending"]).to_string(),
            "warn",
        ),
        (
            "count-weak",
            "refused weak keys",
            count(&report["weakKeyAttempts"]).to_string(),
            "bad",
        ),
        (
            "count-reuse",
            "refused key reuse",
            count(&report["keyReuseAttempts"]).to_string(),
            "bad",
        ),
    ];
    let peak = per_hour.iter().copied().max().unwrap_or(0).max(1);
    let hours = per_hour.len();
    let body = html! {
        section #dashboard {
            div.cards {
                @for (id, label, figure, class) in &cards {
                    // Colour says "look here": only a figure that is not zero gets it.
                    div class=(if figure == "0" { "card".to_owned() } else { format!("card {class}") }) {
                        div.figure id=(id) { (figure) }
                        div.label { (label) }
                    }
                }
            }
            h2 { "Enrollments per hour, last 24 h" }
            svg.chart #enrollments viewBox="0 0 480 120" role="img"
                aria-label=(format!("certificates issued per hour over the last 24 hours: {per_hour:?}")) {
                @for (i, n) in per_hour.iter().enumerate() {
                    @let h = n * 100 / peak;
                    rect x=(i * 20 + 2) y=(100 - h) width="16" height=(h) {
                        title { (n) " issued " (hours - 1 - i) " to " (hours - i) " h ago" }
                    }
                }
                text x="0" y="115" { "24 h ago" }
                text x="440" y="115" { "now" }
            }
            h2 { "Expiring within 24 h" }
            (cert_list(&report["expiringWithin24h"], "notAfter", "until"))
            h2 { "Stopped renewing" }
            @if count(&report["stoppedRenewing"]) == 0 { p { "None." } } @else {
                table { tr { th { "identifiers" } th { "last certificate" } th { "expired" } }
                    @for d in report["stoppedRenewing"].as_array().into_iter().flatten() {
                        tr { td { (shown(text(&d["identifiers"]))) }
                            td.mono { a href=(format!("/devices/{}", text(&d["lastCertificate"]))) { (text(&d["lastCertificate"])) } }
                            td { (text(&d["expired"])) } }
                    }
                }
            }
        }
    };
    Ok(layout(&caller, "dashboard", "Dashboard", None, body))
}

fn cert_list(list: &Value, when: &str, label: &str) -> Markup {
    html! {
        @if count(list) == 0 { p { "None." } } @else {
            table { tr { th { "serial" } th { "identifiers" } th { (label) } }
                @for c in list.as_array().into_iter().flatten() {
                    tr { td.mono { a href=(format!("/devices/{}", text(&c["serial"]))) { (text(&c["serial"])) } }
                        td { (identifiers(&c["identifiers"])) }
                        td { (text(&c[when])) } }
                }
            }
        }
    }
}

/// An RFC 5280 reason code by its name (`keyCompromise`), or its number if it has none here.
fn reason_name(code: &Value) -> String {
    code.as_u64()
        .and_then(|c| fleet::REASONS.iter().find(|(_, r)| u64::from(*r) == c))
        .map_or_else(|| format!("reason {code}"), |(name, _)| (*name).to_owned())
}

/// Text a device or a client chose, as shown on a page: maud escapes the markup, and this
/// escapes control and bidirectional characters, so a device cannot make its identifier read
/// as another one (as on the command line).
fn shown(text: &str) -> String {
    crate::text::escape(text).into_owned()
}

/// A list of identifiers, as text (`dns:plc-1`) or as objects (`{"type", "value"}`), shown.
fn identifiers(list: &Value) -> String {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|i| match i {
            Value::String(s) => shown(s),
            other => shown(&format!(
                "{}:{}",
                text(&other["type"]),
                text(&other["value"])
            )),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Default, Deserialize)]
struct DeviceQuery {
    q: Option<String>,
    page: Option<usize>,
}

/// Devices: the newest certificate of each identifier set, searchable.
async fn devices(
    State(app): State<Ra>,
    caller: Result<Viewer, Error>,
    Query(query): Query<DeviceQuery>,
) -> Page {
    let Viewer(caller) = caller?;
    let at = now();
    let mut newest: BTreeMap<String, (Certificate, usize)> = BTreeMap::new();
    for c in fleet::certificates(&app).await? {
        let key = c
            .identifiers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        match newest.get_mut(&key) {
            Some((n, count)) => {
                *count += 1;
                if n.not_before < c.not_before {
                    *n = c;
                }
            }
            None => {
                newest.insert(key, (c, 1));
            }
        }
    }
    let q = query
        .q
        .as_deref()
        .map(str::trim)
        .unwrap_or("")
        .to_ascii_lowercase();
    let rows: Vec<(String, Certificate, usize)> = newest
        .into_iter()
        .filter(|(ids, (c, _))| {
            q.is_empty()
                || ids.to_ascii_lowercase().contains(&q)
                || c.id.starts_with(&q)
                || c.account_id.to_ascii_lowercase() == q
                || c.profile.as_deref().is_some_and(|p| p == q)
        })
        .map(|(ids, (c, n))| (ids, c, n))
        .collect();
    let page = fleet::Page::of(rows, query.page, Some(100));
    let body = html! {
        form method="get" action="/devices" {
            label for="q" { "Search " small { "identifier, serial, account or profile" } } " "
            input #q type="search" name="q" value=(query.q.as_deref().unwrap_or("")) autofocus;
            " " button type="submit" { "Search" }
        }
        p { (page.total) " devices" }
        table #devices {
            tr { th { "identifiers" } th { "status" } th { "profile" } th { "last renewal" } th { "valid until" } th { "certificates" } }
            @for (ids, c, n) in &page.items {
                @let status = fleet::Status::of(c, at);
                tr.device data-serial=(c.id) {
                    td { a.device-link href=(format!("/devices/{}", c.id)) { (shown(ids)) } }
                    td class=(status_class(status.as_str())) { (status.as_str()) }
                    td { (c.profile.as_deref().unwrap_or(crate::ca::profiles::DEFAULT_PROFILE)) }
                    td { (rfc3339(c.not_before)) }
                    td { (rfc3339(c.not_after)) }
                    td { (n) }
                }
            }
        }
        (pager("/devices", query.q.as_deref(), page.page, page.per_page, page.total))
    };
    Ok(layout(&caller, "devices", "Devices", None, body))
}

fn pager(path: &str, q: Option<&str>, page: usize, per_page: usize, total: usize) -> Markup {
    let q = q.map(|q| format!("&q={}", q.replace(['&', '#', '%', '+', ' '], "")));
    html! {
        div.pager {
            @if page > 1 { a rel="prev" href=(format!("{path}?page={}{}", page - 1, q.as_deref().unwrap_or(""))) { "← newer" } }
            @if page * per_page < total { a rel="next" href=(format!("{path}?page={}{}", page + 1, q.as_deref().unwrap_or(""))) { "older →" } }
        }
    }
}

/// One device: its newest certificate and its history.
async fn device(
    State(app): State<Ra>,
    caller: Result<Viewer, Error>,
    Path(serial): Path<String>,
    Query(done): Query<Done>,
) -> Page {
    let Viewer(caller) = caller?;
    let v = fleet::certificate(State(app), Viewer(caller.clone()), Path(serial.clone()))
        .await?
        .0;
    let c = &v["certificate"];
    let status = text(&c["status"]);
    let ids = identifiers(&c["identifiers"]);
    let body = html! {
        dl.facts {
            dt { "identifiers" } dd #identifiers { (ids) }
            dt { "status" } dd #status class=(status_class(status)) { (status) }
            dt { "serial" } dd.mono { (text(&c["serial"])) }
            dt { "profile" } dd { (text(&c["profile"])) }
            dt { "key type" } dd { (text(&v["keyType"])) }
            dt { "issued (last renewal)" } dd { (text(&c["notBefore"])) }
            dt { "valid until" } dd { (text(&c["notAfter"])) }
            dt { "renewal window (ARI)" } dd { (text(&v["renewalWindow"]["start"])) " to " (text(&v["renewalWindow"]["end"])) }
            dt { "account" } dd.mono { (text(&c["account"])) }
            dt { "source address" } dd #source { (shown(v["source"].as_str().unwrap_or("not recorded"))) }
            @if let Some(r) = c.get("revoked") { dt { "revoked" } dd { (text(&r["at"])) ", " (reason_name(&r["reason"])) } }
        }
        @if status == "valid" {
            p {
                @if caller.role >= Role::Approver { a.button #renew-early href=(format!("/devices/{serial}/renew-early")) { "Renew early…" } " " }
                @if caller.role >= Role::Admin { a.button.danger #revoke href=(format!("/devices/{serial}/revoke")) { "Revoke…" } }
            }
        }
        h2 { "Certificate history" }
        table #history { tr { th { "serial" } th { "status" } th { "issued" } th { "valid until" } }
            @for h in v["history"].as_array().into_iter().flatten() {
                tr { td.mono { a href=(format!("/devices/{}", text(&h["serial"]))) { (text(&h["serial"])) } }
                    td class=(status_class(text(&h["status"]))) { (text(&h["status"])) }
                    td { (text(&h["notBefore"])) } td { (text(&h["notAfter"])) } }
            }
        }
        details { summary { "Certificate chain (PEM)" } pre { (text(&v["chainPem"])) } }
    };
    Ok(layout(
        &caller,
        "devices",
        &format!("Device {ids}"),
        done.message(),
        body,
    ))
}

async fn revoke_page(
    State(app): State<Ra>,
    caller: Result<Admin, Error>,
    Path(serial): Path<String>,
) -> Page {
    let Admin(caller) = caller?;
    let v = fleet::certificate(State(app), Viewer(caller.clone()), Path(serial.clone()))
        .await?
        .0;
    let ids = identifiers(&v["certificate"]["identifiers"]);
    let body = html! {
        p.warning { "Revoking is final: the certificate goes on the CRL and the device stops being trusted where CRLs are checked. Devices renew with a new certificate only if their account may still order." }
        dl.facts { dt { "identifiers" } dd { (ids) } dt { "serial" } dd.mono { (serial) } }
        form.stack method="post" action=(format!("/devices/{serial}/revoke")) {
            label for="reason" { "Reason" }
            select #reason name="reason" {
                @for (name, _) in fleet::REASONS { option value=(name) selected[name == "unspecified"] { (name) } }
            }
            div { button.danger #confirm-revoke type="submit" { "Revoke this certificate" } " " a href=(format!("/devices/{serial}")) { "Cancel" } }
        }
    };
    Ok(layout(
        &caller,
        "devices",
        "Revoke a certificate?",
        None,
        body,
    ))
}

#[derive(Deserialize)]
struct RevokeForm {
    reason: String,
}

async fn revoke(
    State(app): State<Ra>,
    caller: Result<Admin, Error>,
    Path(serial): Path<String>,
    Form(f): Form<RevokeForm>,
) -> Page {
    let admin = caller?;
    let reason = fleet::reason_code(&f.reason)?;
    let select = Selector {
        serial: Some(serial.clone()),
        ..Selector::default()
    };
    let _ = fleet::revoke(
        State(app),
        admin,
        Json(fleet::RevokeRequest { select, reason }),
    )
    .await?;
    Ok(redirect(&format!("/devices/{serial}"), "revoked", &serial))
}

async fn renew_early_page(
    State(app): State<Ra>,
    caller: Result<Approver, Error>,
    Path(serial): Path<String>,
) -> Page {
    let Approver(caller) = caller?;
    let v = fleet::certificate(State(app), Viewer(caller.clone()), Path(serial.clone()))
        .await?
        .0;
    let body = html! {
        p { "The device's renewal window (RFC 9773 renewal information) starts now: it renews the next time it asks, with a new key if it makes one." }
        dl.facts { dt { "identifiers" } dd { (identifiers(&v["certificate"]["identifiers"])) } dt { "serial" } dd.mono { (serial) } }
        form.stack method="post" action=(format!("/devices/{serial}/renew-early")) {
            div { button #confirm-renew-early type="submit" { "Make it renew now" } " " a href=(format!("/devices/{serial}")) { "Cancel" } }
        }
    };
    Ok(layout(&caller, "devices", "Renew early?", None, body))
}

async fn renew_early(
    State(app): State<Ra>,
    caller: Result<Approver, Error>,
    Path(serial): Path<String>,
) -> Page {
    let approver = caller?;
    let select = Selector {
        serial: Some(serial.clone()),
        ..Selector::default()
    };
    let _ = fleet::renew_early(State(app), approver, Json(select)).await?;
    Ok(redirect(
        &format!("/devices/{serial}"),
        "renew-early",
        &serial,
    ))
}

async fn approvals(
    State(app): State<Ra>,
    caller: Result<Viewer, Error>,
    Query(done): Query<Done>,
) -> Page {
    let Viewer(caller) = caller?;
    let v = api::approvals(State(app), Viewer(caller.clone())).await?.0;
    let may_decide = caller.role >= Role::Approver;
    let body = html! {
        @if count(&v["pending"]) == 0 { p #none-waiting { "No device is waiting for approval." } }
        @for p in v["pending"].as_array().into_iter().flatten() {
            @let id = text(&p["id"]);
            article.approval data-id=(id) {
                div {
                    div.label { "pairing code" }
                    div.pairing-code { (text(&p["pairingCode"])) }
                    small { "Approve only if the device in front of you shows this code." }
                }
                div {
                    dl.facts {
                        dt { "identifier" } dd.identifier { (shown(text(&p["identifier"]))) }
                        dt { "from" } dd.source { (shown(p["source"].as_str().unwrap_or("unknown"))) }
                        dt { "account" } dd.mono { (text(&p["account"])) }
                        dt { "requested" } dd { (text(&p["requested"])) }
                        dt { "expires" } dd { (text(&p["expires"])) }
                    }
                    @if count(&p["alsoRequested"]) > 0 {
                        p.warning.also-requested {
                            strong { "Also requested by " (count(&p["alsoRequested"])) " other request(s) for the same identifier" }
                            " (from "
                            (p["alsoRequested"].as_array().into_iter().flatten().map(|o| o["source"].as_str().unwrap_or("unknown").to_owned()).collect::<Vec<_>>().join(", "))
                            "). Approve at most one: the one whose code the device shows."
                        }
                    }
                    @if may_decide {
                        form.inline method="post" action=(format!("/approvals/{id}")) {
                            button.approve type="submit" name="decision" value="approve" { "Approve" }
                            " "
                            label { "reason " input type="text" name="reason" placeholder="shown to the device"; }
                            " "
                            button.reject.danger type="submit" name="decision" value="reject" { "Reject" }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(
        &caller,
        "approvals",
        "Devices waiting for approval",
        done.message(),
        body,
    ))
}

#[derive(Deserialize)]
struct DecisionForm {
    decision: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn decide(
    State(app): State<Ra>,
    caller: Result<Approver, Error>,
    Path(id): Path<String>,
    Form(f): Form<DecisionForm>,
) -> Page {
    let approver = caller?;
    match f.decision.as_str() {
        "approve" => {
            let _ = api::approve(State(app), approver, Path(id.clone())).await?;
            Ok(redirect("/approvals", "approved", &id))
        }
        "reject" => {
            let body = api::RejectRequest { reason: f.reason };
            let _ = api::reject(State(app), approver, Path(id.clone()), Some(Json(body))).await?;
            Ok(redirect("/approvals", "rejected", &id))
        }
        other => Err(Error::Malformed(format!("unknown decision {other:?}")).into()),
    }
}

async fn credentials(
    State(app): State<Ra>,
    caller: Result<Viewer, Error>,
    Query(done): Query<Done>,
) -> Page {
    let Viewer(caller) = caller?;
    let body = credentials_body(&app, &caller, None).await?;
    Ok(layout(
        &caller,
        "credentials",
        "Enrollment credentials",
        done.message(),
        body,
    ))
}

async fn credentials_body(
    app: &Ra,
    caller: &Caller,
    created: Option<&Value>,
) -> Result<Markup, Error> {
    let v = api::credentials(State(app.clone()), Viewer(caller.clone()))
        .await?
        .0;
    Ok(html! {
        @if let Some(c) = created {
            section #new-secret {
                h2 { "New credential: copy the HMAC key now, it is not shown again" }
                dl.facts {
                    dt { "key id" } dd #kid.mono { (text(&c["kid"])) }
                    dt { "HMAC key" } dd #hmac.mono { (text(&c["hmac"])) }
                    dt { "directory" } dd.mono { (text(&c["directory"])) }
                }
                p { "For commissioning tools: the QR code holds " code { "{\"directory\", \"kid\", \"hmac\"}" } "." }
                (qr_svg(&serde_json::json!({"directory": c["directory"], "kid": c["kid"], "hmac": c["hmac"]}).to_string())?)
            }
        }
        @if caller.role >= Role::Admin {
            h2 { "Create a credential" }
            form.stack #new-credential method="post" action="/credentials" {
                label for="allow" { "Pre-authorized identifiers " small { "one per line: serial:SN-0042, dns:plant.example (and subdomains), ip:10.20.0.0/16; empty: devices prove their identifiers" } }
                textarea #allow name="allow" {}
                label for="max_uses" { "Devices it may enroll " small { "empty: unlimited" } }
                input #max_uses type="number" min="1" name="max_uses";
                label for="expires" { "Valid for " small { "e.g. 30d; empty: no expiry" } }
                input #expires type="text" name="expires";
                label for="role" { "Modbus/TCP Security role " small { "for certificates of the modbus profile" } }
                input #role type="text" name="role";
                div { button #create-credential type="submit" { "Create credential" } }
            }
        }
        h2 { "Credentials" }
        table #credentials {
            tr { th { "key id" } th { "created" } th { "expires" } th { "uses" } th { "allow" } th { "role" } th { "state" } th {} }
            @for c in v["credentials"].as_array().into_iter().flatten() {
                tr.credential data-kid=(text(&c["kid"])) {
                    td.mono { (text(&c["kid"])) }
                    td { (text(&c["created"])) }
                    td { (c["expires"].as_str().unwrap_or("never")) }
                    td { (c["uses"]) " of " (c["maxUses"].as_u64().map_or_else(|| "unlimited".to_owned(), |m| m.to_string())) }
                    td { (c["allow"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")) }
                    td { (c["role"].as_str().unwrap_or("")) }
                    td { @if c["revoked"] == true { span.status-revoked { "revoked" } } @else { "active" } }
                    td { @if caller.role >= Role::Admin && c["revoked"] != true {
                        form.inline method="post" action=(format!("/credentials/{}/revoke", text(&c["kid"]))) {
                            button.danger.secondary type="submit" { "Revoke" } } } }
                }
            }
        }
    })
}

/// A QR code of `data` as inline SVG (`svg#qr`).
fn qr_svg(data: &str) -> Result<Markup, Error> {
    let code = qrcode::QrCode::with_error_correction_level(data, qrcode::EcLevel::M)
        .map_err(|e| Error::Internal(format!("cannot make the QR code: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    // The renderer writes an XML declaration before the <svg> element; HTML wants the element.
    let start = svg.find("<svg").unwrap_or(0);
    let svg = svg[start..].replacen(
        "<svg",
        "<svg id=\"qr\" role=\"img\" aria-label=\"QR code of the credential\"",
        1,
    );
    Ok(PreEscaped(svg))
}

#[derive(Deserialize)]
struct CredentialForm {
    #[serde(default)]
    allow: String,
    #[serde(default)]
    max_uses: String,
    #[serde(default)]
    expires: String,
    #[serde(default)]
    role: String,
}

async fn create_credential(
    State(app): State<Ra>,
    caller: Result<Admin, Error>,
    Form(f): Form<CredentialForm>,
) -> Page {
    let Admin(caller) = caller?;
    let max_uses = match f.max_uses.trim() {
        "" => None,
        n => Some(n.parse::<u32>().map_err(|_| {
            Error::Malformed(format!("devices it may enroll: {n:?} is not a number"))
        })?),
    };
    let request = api::NewCredentialRequest {
        expires: Some(f.expires.trim().to_owned()),
        max_uses,
        allow: f
            .allow
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect(),
        role: Some(f.role.trim().to_owned()),
    };
    let created = api::create_credential(State(app.clone()), Admin(caller.clone()), Json(request))
        .await?
        .0;
    let body = credentials_body(&app, &caller, Some(&created)).await?;
    Ok(layout(
        &caller,
        "credentials",
        "Enrollment credentials",
        None,
        body,
    ))
}

async fn revoke_credential(
    State(app): State<Ra>,
    caller: Result<Admin, Error>,
    Path(kid): Path<String>,
) -> Page {
    let _ = api::revoke_credential(State(app), caller?, Path(kid.clone())).await?;
    Ok(redirect("/credentials", "credential-revoked", &kid))
}

async fn trust_anchors(
    State(app): State<Ra>,
    caller: Result<Viewer, Error>,
    Query(done): Query<Done>,
) -> Page {
    let Viewer(caller) = caller?;
    let v = api::trust_anchors(State(app), Viewer(caller.clone()))
        .await?
        .0;
    let body = html! {
        table #trust-anchors {
            tr { th { "name" } th { "subject" } th { "SHA-256" } th { "expires" } th { "assigner" } th { "hardware types" } }
            @for a in v["trustAnchors"].as_array().into_iter().flatten() {
                tr.trust-anchor {
                    td { (text(&a["name"])) }
                    @if let Some(why) = a["unusable"].as_str() { td colspan="5" { span.status-revoked { "unusable: " } (why) } } @else {
                        td { (text(&a["subject"])) } td.mono { (text(&a["sha256"])) } td { (text(&a["notAfter"])) }
                        td.mono { (text(&a["assigner"])) }
                        td { (a["hwTypes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")) }
                    }
                }
            }
        }
        @if caller.role >= Role::Admin {
            h2 { "Add a manufacturer's IDevID CA" }
            p { "Compare the SHA-256 shown after adding with the one the manufacturer publishes, or give it here and the file is refused unless it matches." }
            form.stack #new-trust-anchor method="post" action="/trust-anchors" enctype="multipart/form-data" {
                label for="certificate" { "CA certificate " small { "PEM or DER file" } }
                input #certificate type="file" name="certificate" required;
                label for="assigner" { "Assigner OID " small { "the OID the manufacturer qualifies serial numbers with" } }
                input #assigner type="text" name="assigner" required;
                label for="name" { "Name " small { "default: from the fingerprint" } }
                input #name type="text" name="name";
                label for="hw_types" { "Hardware types " small { "RFC 4108 hwType OIDs, separated by spaces" } }
                input #hw_types type="text" name="hw_types";
                label for="sha256" { "Published SHA-256 " small { "optional, AB:CD:… or hex" } }
                input #sha256 type="text" name="sha256";
                div { button #add-trust-anchor type="submit" { "Add trust anchor" } }
            }
        }
    };
    Ok(layout(
        &caller,
        "trust-anchors",
        "Trust anchors",
        done.message(),
        body,
    ))
}

async fn add_trust_anchor(
    State(app): State<Ra>,
    caller: Result<Admin, Error>,
    mut form: Multipart,
) -> Page {
    let admin = caller?;
    let mut fields: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| Error::Malformed(format!("the form cannot be read: {e}")))?
    {
        let name = field.name().unwrap_or("").to_owned();
        let data = field
            .bytes()
            .await
            .map_err(|e| Error::Malformed(format!("the form cannot be read: {e}")))?;
        fields.insert(name, data.to_vec());
    }
    let field = |n: &str| {
        String::from_utf8_lossy(fields.get(n).map_or(&[][..], Vec::as_slice))
            .trim()
            .to_owned()
    };
    let certificate = fields.get("certificate").cloned().unwrap_or_default();
    // A DER file is carried as PEM: the API takes text.
    let certificate = match std::str::from_utf8(&certificate) {
        Ok(text) if text.contains("-----BEGIN") => text.to_owned(),
        _ => crate::der::pem_encode("CERTIFICATE", &certificate),
    };
    let request = api::NewTrustAnchor {
        certificate,
        assigner: field("assigner"),
        name: Some(field("name")),
        hw_types: field("hw_types")
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        sha256: Some(field("sha256")),
    };
    let added = api::add_trust_anchor(State(app), admin, Json(request))
        .await?
        .0;
    Ok(redirect(
        "/trust-anchors",
        "anchor-added",
        &format!(
            "{} SHA-256 {}",
            text(&added["name"]),
            text(&added["sha256"])
        ),
    ))
}

async fn operators(
    State(app): State<Ra>,
    caller: Result<Viewer, Error>,
    Query(done): Query<Done>,
) -> Page {
    let Viewer(caller) = caller?;
    let body = operators_body(&app, &caller, None).await?;
    Ok(layout(
        &caller,
        "operators",
        "Operators",
        done.message(),
        body,
    ))
}

async fn operators_body(app: &Ra, caller: &Caller, added: Option<&Value>) -> Result<Markup, Error> {
    let v = api::operators(State(app.clone()), Viewer(caller.clone()))
        .await?
        .0;
    let at = now();
    Ok(html! {
        @if let Some(a) = added {
            section #new-operator {
                h2 { "New operator " (text(&a["operator"]["name"])) ": hand these over now, they are not shown again" }
                p { "PKCS#12 passphrase: " strong.mono #p12-passphrase { (text(&a["pkcs12Passphrase"])) } }
                p { "PKCS#12 file for the browser, base64url (save it and decode with " code { "basenc --base64url -d > operator.p12" } "):" }
                pre #p12 { (text(&a["pkcs12"])) }
                details { summary { "Certificate and key (PEM), for curl and scripts" }
                    pre { (text(&a["certificatePem"])) } pre { (text(&a["keyPem"])) } }
            }
        }
        table #operators {
            tr { th { "name" } th { "role" } th { "state" } th { "valid until" } th { "added by" } th {} }
            @for o in v["operators"].as_array().into_iter().flatten() {
                @let active = o["revoked"].is_null() && o["notAfter"].as_i64().is_some_and(|t| t > at);
                tr.operator data-name=(text(&o["name"])) {
                    td { (text(&o["name"])) } td { (text(&o["role"])) }
                    td { @if active { "active" } @else if o["revoked"].is_null() { "expired" } @else { span.status-revoked { "revoked by " (text(&o["revoked"]["by"])) } } }
                    td { (o["notAfter"].as_i64().map(rfc3339).unwrap_or_default()) }
                    td { (text(&o["createdBy"])) }
                    td { @if caller.role >= Role::Admin && active {
                        form.inline method="post" action=(format!("/operators/{}/revoke", text(&o["name"]))) {
                            button.danger.secondary type="submit" { "Revoke" } } } }
                }
            }
        }
        @if caller.role >= Role::Admin {
            h2 { "Add an operator" }
            form.stack #add-operator method="post" action="/operators" {
                label for="op-name" { "Name " small { "a-z, 0-9, '.', '_', '-'" } }
                input #op-name type="text" name="name" required;
                label for="op-role" { "Role" }
                select #op-role name="role" {
                    option value="viewer" { "viewer: reads" }
                    option value="approver" { "approver: also approves devices and renews early" }
                    option value="admin" { "admin: also revokes, manages credentials, anchors, operators" }
                }
                div { button #add-operator-submit type="submit" { "Add operator" } }
            }
        }
    })
}

#[derive(Deserialize)]
struct OperatorForm {
    name: String,
    role: String,
}

async fn add_operator(
    State(app): State<Ra>,
    caller: Result<Admin, Error>,
    Form(f): Form<OperatorForm>,
) -> Page {
    let Admin(caller) = caller?;
    let request = api::NewOperator {
        name: f.name.trim().to_owned(),
        role: f.role,
    };
    let added = api::add_operator(State(app.clone()), Admin(caller.clone()), Json(request))
        .await?
        .0;
    let body = operators_body(&app, &caller, Some(&added)).await?;
    Ok(layout(&caller, "operators", "Operators", None, body))
}

async fn revoke_operator(
    State(app): State<Ra>,
    caller: Result<Admin, Error>,
    Path(name): Path<String>,
) -> Page {
    let _ = api::revoke_operator(State(app), caller?, Path(name.clone())).await?;
    Ok(redirect("/operators", "operator-revoked", &name))
}

async fn audit(
    State(app): State<Ra>,
    caller: Result<Viewer, Error>,
    Query(q): Query<api::AuditQuery>,
) -> Page {
    let Viewer(caller) = caller?;
    let v = api::audit_log(
        State(app),
        Viewer(caller.clone()),
        Query(api::AuditQuery {
            page: q.page,
            per_page: Some(100),
        }),
    )
    .await?
    .0;
    let chain = text(&v["chain"]);
    let page = &v["entries"];
    let body = html! {
        @if chain == "intact" { p #chain { "Hash chain intact." } } @else { p #chain.warning { "The audit log has been altered: " (chain) } }
        table #audit {
            tr { th { "#" } th { "when" } th { "who" } th { "from" } th { "what" } th { "target" } th { "detail" } }
            @for e in page["items"].as_array().into_iter().flatten() {
                tr.audit-entry {
                    td { (e["seq"]) } td { (text(&e["at"])) } td { (text(&e["actor"])) } td { (text(&e["from"])) }
                    td { (text(&e["action"])) } td.mono { (shown(text(&e["target"]))) }
                    td.mono { @if !e["detail"].is_null() { (shown(&e["detail"].to_string())) } }
                }
            }
        }
        (pager("/audit", None, page["page"].as_u64().unwrap_or(1) as usize, page["perPage"].as_u64().unwrap_or(100) as usize, page["total"].as_u64().unwrap_or(0) as usize))
    };
    Ok(layout(&caller, "audit", "Audit log", None, body))
}

/// The configuration the server runs with, as a TOML file (what `GET /api/config` says).
async fn config(State(app): State<Ra>, caller: Result<Viewer, Error>) -> Page {
    let Viewer(caller) = caller?;
    let table = api::effective_config(&app)?;
    let text = toml::to_string(&table)
        .map_err(|e| Error::Internal(format!("cannot render the configuration: {e}")))?;
    let body = html! {
        p #config-note {
            "The configuration the server runs with: its file, its command-line flags and the defaults, in the file's syntax. Secret settings are shown as "
            code { (crate::config::REDACTED) } "; unset optional settings are left out."
        }
        pre #config { (text) }
    };
    Ok(layout(&caller, "config", "Configuration", None, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identifiers a device chose are shown with control and bidirectional characters
    /// escaped, in both forms the API returns them.
    #[test]
    fn identifiers_cannot_reorder_what_the_operator_reads() {
        let list = serde_json::json!([
            "permanent-identifier:SN-1\u{202e}2-NS",
            {"type": "permanent-identifier", "value": "SN\u{200f}-9"},
        ]);
        let shown = identifiers(&list);
        assert!(
            !shown.contains('\u{202e}') && !shown.contains('\u{200f}'),
            "{shown}"
        );
        assert!(
            shown.contains("\\u{202e}") && shown.contains("\\u{200f}"),
            "{shown}"
        );
    }
}
