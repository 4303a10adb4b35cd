//! Authorizations (RFC 8555 §7.5) and their challenges (§7.5.1, §8), including the
//! asynchronous validation that a challenge response triggers.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::EnrollmentConfig;
use crate::metrics::Enrollment;
use crate::ra::account::Account;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::new_id;
use crate::types::now;
use crate::types::rfc3339;
use crate::types::{AuthzStatus, ChallengeStatus, ChallengeType, Identifier, IdentifierType};
use crate::wire::paths;
use crate::{Error, Problem, Result};

/// A challenge inside an authorization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Type.
    #[serde(rename = "type")]
    pub kind: ChallengeType,
    /// Random token, 128 bits base64url (RFC 8555 §8.3: at least 128 bits of entropy).
    pub token: String,
    /// Status.
    pub status: ChallengeStatus,
    /// When validation started, while `Processing`.
    #[serde(default)]
    pub processing_since: Option<i64>,
    /// The server process running the validation, while `Processing` ([`super::process_id`]).
    #[serde(default)]
    pub processing_by: Option<String>,
    /// When it became valid.
    #[serde(default)]
    pub validated: Option<i64>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<Problem>,
}

/// A stored authorization.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Authz {
    /// Random id.
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// What is being authorized.
    pub identifier: Identifier,
    /// Stored status; `Pending`/`Valid` turn `Expired` when read after `expires`.
    pub status: AuthzStatus,
    /// Unix time.
    pub expires: i64,
    /// The offered challenges.
    pub challenges: Vec<Challenge>,
    /// The enrollment credential (EAB key id) that pre-authorized it (SPEC §6.6); such an
    /// authorization has no challenge and counts only while the credential stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_authorized_by: Option<String>,
    /// The thumbprint of the account key when the authorization was created (after its
    /// token). An operator-approval-01 request must come from that same key (`approval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_thumbprint: Option<String>,
}

impl Authz {
    /// A pending authorization offering `kinds`.
    pub fn new(
        account_id: &str,
        identifier: Identifier,
        expires: i64,
        kinds: &[ChallengeType],
    ) -> Result<Self> {
        let challenges = kinds
            .iter()
            .map(|&kind| {
                Ok(Challenge {
                    kind,
                    token: new_id()?,
                    status: ChallengeStatus::Pending,
                    processing_since: None,
                    processing_by: None,
                    validated: None,
                    error: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            id: new_id()?,
            account_id: account_id.to_owned(),
            identifier,
            status: AuthzStatus::Pending,
            expires,
            challenges,
            pre_authorized_by: None,
            account_thumbprint: None,
        })
    }

    /// An authorization that is valid from the start, without challenges: the identifier was
    /// pre-authorized by the operator through the allow-listed enrollment credential `kid`
    /// (SPEC §6.6).
    pub fn pre_authorized(
        account_id: &str,
        identifier: Identifier,
        expires: i64,
        kid: &str,
    ) -> Result<Self> {
        let mut a = Self::new(account_id, identifier, expires, &[])?;
        a.status = AuthzStatus::Valid;
        a.pre_authorized_by = Some(kid.to_owned());
        Ok(a)
    }

    /// Whether a challenge that proves control of the identifier made it valid: http-01,
    /// tls-alpn-01 or device-attest-01. Pre-authorization and operator approval vouch for an
    /// identifier without the account proving anything.
    pub fn proven_by_challenge(&self) -> bool {
        self.status() == AuthzStatus::Valid
            && self.challenges.iter().any(|c| {
                c.status == ChallengeStatus::Valid
                    && matches!(
                        c.kind,
                        ChallengeType::Http01
                            | ChallengeType::TlsAlpn01
                            | ChallengeType::DeviceAttest01
                    )
            })
    }

    /// How this authorization was made valid: by the challenge that is valid, or, with none,
    /// by pre-authorization.
    pub fn enrollment(&self) -> Enrollment {
        self.challenges
            .iter()
            .find(|c| c.status == ChallengeStatus::Valid)
            .map_or(Enrollment::PreAuthorized, |c| {
                Enrollment::of_challenge(c.kind)
            })
    }

    /// Status as of now (RFC 8555 §7.1.6: pending or valid turn expired).
    pub fn status(&self) -> AuthzStatus {
        match self.status {
            AuthzStatus::Pending | AuthzStatus::Valid if now() > self.expires => {
                AuthzStatus::Expired
            }
            s => s,
        }
    }

    /// The error of the failed challenge, if any.
    pub fn error(&self) -> Option<Problem> {
        self.challenges.iter().find_map(|c| c.error.clone())
    }

    pub fn challenge_json(&self, app: &Ra, c: &Challenge) -> Value {
        let mut v = json!({
            "type": c.kind,
            "url": challenge_url(app, &self.id, c.kind),
            "status": c.status,
            "token": c.token,
        });
        if let Some(t) = c.validated {
            v["validated"] = json!(rfc3339(t));
        }
        if let Some(e) = &c.error {
            v["error"] = json!(e);
        }
        v
    }

    /// The authorization object, RFC 8555 §7.1.4.
    pub fn to_json(&self, app: &Ra) -> Value {
        let status = self.status();
        // > For final authorizations ("valid" …), the server MUST … include only the
        // > challenge that was completed.  (RFC 8555 §7.1.4: the "challenges" field)
        let shown: Vec<_> = if status == AuthzStatus::Valid {
            self.challenges
                .iter()
                .filter(|c| c.status == ChallengeStatus::Valid)
                .collect()
        } else if status == AuthzStatus::Invalid {
            // > For invalid authorizations, the challenge that was attempted and failed.
            self.challenges
                .iter()
                .filter(|c| c.status == ChallengeStatus::Invalid)
                .collect()
        } else {
            self.challenges.iter().collect()
        };
        json!({
            "identifier": self.identifier,
            "status": status,
            "expires": rfc3339(self.expires),
            "challenges": shown.into_iter().map(|c| self.challenge_json(app, c)).collect::<Vec<_>>(),
        })
    }
}

/// The challenges offered for an identifier under the configured enrollment paths (SPEC §5.1).
///
/// http-01 and tls-alpn-01 work for `dns` and, by RFC 8738, for `ip`; dns-01 is not offered on a
/// plant network without public DNS. A `permanent-identifier` can only be proven by its
/// manufacturer attestation or by an operator. An empty list means no path is enabled.
pub fn challenge_types(cfg: &EnrollmentConfig, identifier: &Identifier) -> Vec<ChallengeType> {
    let mut kinds = Vec::new();
    match identifier.kind {
        IdentifierType::Dns | IdentifierType::Ip => {
            if cfg.network_challenges {
                kinds.extend([ChallengeType::Http01, ChallengeType::TlsAlpn01]);
            }
        }
        IdentifierType::PermanentIdentifier => {
            if cfg.device_attestation {
                kinds.push(ChallengeType::DeviceAttest01);
            }
        }
    }
    if cfg.operator_approval {
        kinds.push(ChallengeType::OperatorApproval01);
    }
    kinds
}

pub fn challenge_url(app: &Ra, authz: &str, kind: ChallengeType) -> String {
    app.url(&format!("{}{authz}/{kind}", paths::CHALLENGE))
}

/// The authorization `id` of `account`; another account's is reported as not found, so ids
/// cannot be probed.
pub fn own_authz(app: &Ra, account: &Account, id: &str) -> Result<Authz> {
    app.db
        .get::<Authz>(Table::Authzs, id)?
        .filter(|a| a.account_id == account.id)
        .ok_or(Error::NotFound("authorization"))
}

/// An authorization as its account fetches it (POST-as-GET, `status` `None`) or deactivates it
/// (`status` `"deactivated"`; RFC 8555 §7.5.2). Operator decisions are applied first, and a
/// validation stuck in `processing` is restarted. A `status` that could not be read is reported
/// only once the authorization is known to exist.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.5.2>
pub async fn fetch_or_deactivate(
    app: &Ra,
    account: &Account,
    id: &str,
    status: Result<Option<String>>,
) -> Result<Authz> {
    apply_operator_decisions(app).await?;
    let mut authz = own_authz(app, account, id)?;
    match status?.as_deref() {
        None => resume_stuck_validations(app, &authz),
        Some("deactivated") => {
            // > If the client wishes to relinquish its authorization … it can request that the
            // > server deactivate … {"status": "deactivated"} … only "pending" or "valid"
            authz = app
                .db
                .update(Table::Authzs, id, |mut a: Authz| match a.status() {
                    AuthzStatus::Pending | AuthzStatus::Valid => {
                        a.status = AuthzStatus::Deactivated;
                        Ok(a)
                    }
                    s => Err(Error::Malformed(format!(
                        "only pending or valid authorizations can be deactivated; this one is {s:?}"
                    ))),
                })?;
            app.db.flush().await?;
        }
        Some(other) => {
            return Err(Error::Malformed(format!(
                "authorization status may only be set to \"deactivated\", not {other:?}"
            )))
        }
    }
    Ok(authz)
}

/// A challenge of `account`'s authorization `authz_id`: answered with `answer`, the payload
/// of the client's POST (RFC 8555 §7.5.1), or fetched (`None`, POST-as-GET). Returns the
/// authorization as it is afterwards. A payload that could not be read is reported only once
/// the authorization and challenge are known to exist.
///
/// > The client indicates to the server that it is ready for the challenge validation by
/// > sending an empty JSON body ("{}") carried in a POST request to the challenge URL
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.5.1>
pub async fn respond(
    app: &Ra,
    account: &Account,
    authz_id: &str,
    kind: ChallengeType,
    answer: Option<Result<serde_json::Map<String, Value>>>,
    peer: Option<std::net::SocketAddr>,
) -> Result<Authz> {
    apply_operator_decisions(app).await?;
    let mut authz = own_authz(app, account, authz_id)?;
    if !authz.challenges.iter().any(|c| c.kind == kind) {
        return Err(Error::NotFound("challenge"));
    }
    if let Some(payload) = answer {
        let payload = payload?;
        authz = match kind {
            ChallengeType::Http01 | ChallengeType::TlsAlpn01 => {
                trigger_validation(app, authz, kind, account, peer.map(|p| p.ip())).await?
            }
            ChallengeType::DeviceAttest01 => {
                answer_attestation(app, authz, &account.thumbprint, payload).await?
            }
            ChallengeType::OperatorApproval01 => {
                crate::ra::approval::request(app, authz_id, account, peer).await?
            }
        };
    } else {
        resume_stuck_validations(app, &authz);
    }
    Ok(authz)
}

/// Applies pending operator decisions first, so a polling device sees them at once.
pub async fn apply_operator_decisions(app: &Ra) -> Result<()> {
    if app.cfg.enrollment.operator_approval {
        crate::ra::approval::apply(app).await?;
    }
    Ok(())
}

/// Marks a network challenge `processing` and starts its validation in the background
/// (RFC 8555 §7.5.1: the server validates asynchronously; the client polls). Validations in
/// flight are bounded in all and per account (`Validator::admit`): beyond that the challenge
/// stays pending and the client gets `rateLimited` with `Retry-After`.
async fn trigger_validation(
    app: &Ra,
    current: Authz,
    kind: ChallengeType,
    account: &Account,
    source: Option<std::net::IpAddr>,
) -> Result<Authz> {
    let admission = match app.va.admit(&account.id, source) {
        Ok(admission) => admission,
        // Answering a challenge that is not waiting to start changes nothing: report it.
        Err(_) if !would_start(&current, kind) => return Ok(current),
        Err(e) => return Err(e),
    };
    let (authz, triggered) = start_processing(app, &current.id, kind)?;
    app.db.flush().await?;
    if triggered {
        spawn_validation(
            app.clone(),
            authz.clone(),
            kind,
            account.thumbprint.clone(),
            admission,
        );
    }
    Ok(authz)
}

/// Whether answering challenge `kind` would start a validation now (see [`start_processing`]).
fn would_start(authz: &Authz, kind: ChallengeType) -> bool {
    authz.status() == AuthzStatus::Pending
        && !authz
            .challenges
            .iter()
            .any(|c| c.status == ChallengeStatus::Processing)
        && authz
            .challenges
            .iter()
            .any(|c| c.kind == kind && c.status == ChallengeStatus::Pending)
}

/// Moves challenge `kind` from `pending` to `processing` under compare-and-swap and says
/// whether this call did it (so exactly one caller starts the work). Nothing changes when the
/// authorization was decided already (answering it again is harmless: its state is reported)
/// or when another challenge is processing: one attempt at a time, or the second would be left
/// "processing" forever once the first decides the authorization.
pub fn start_processing(app: &Ra, authz_id: &str, kind: ChallengeType) -> Result<(Authz, bool)> {
    let started = now();
    let mut triggered = false;
    let authz = app.db.update(Table::Authzs, authz_id, |mut a: Authz| {
        triggered = false;
        if a.status() != AuthzStatus::Pending
            || a.challenges
                .iter()
                .any(|c| c.status == ChallengeStatus::Processing)
        {
            return Ok(a);
        }
        if let Some(c) = a.challenges.iter_mut().find(|c| c.kind == kind) {
            if c.status == ChallengeStatus::Pending {
                c.status = ChallengeStatus::Processing;
                c.processing_since = Some(started);
                c.processing_by = Some(super::process_id().to_owned());
                triggered = true;
            }
        }
        Ok(a)
    })?;
    Ok((authz, triggered))
}

/// device-attest-01: the response carries the proof, so it is checked at once and the outcome
/// recorded before answering. A challenge is answered once: a failed attestation fails the
/// authorization (SPEC §5), so a captured attestation cannot be retried against it.
async fn answer_attestation(
    app: &Ra,
    authz: Authz,
    thumbprint: &str,
    payload: serde_json::Map<String, Value>,
) -> Result<Authz> {
    let kind = ChallengeType::DeviceAttest01;
    let Some(challenge) = authz.challenges.iter().find(|c| c.kind == kind) else {
        return Err(Error::NotFound("challenge"));
    };
    if authz.status() != AuthzStatus::Pending
        || challenge.status != ChallengeStatus::Pending
        || authz
            .challenges
            .iter()
            .any(|c| c.status == ChallengeStatus::Processing)
    {
        return Ok(authz);
    }
    let key_authz = crate::wire::key_authorization(&challenge.token, thumbprint)?;
    let outcome = crate::va::attest::verify(
        app.cfg.enrollment.device_attestation,
        &app.anchors,
        &authz.identifier,
        &challenge.token,
        &key_authz,
        &Value::Object(payload),
    );
    if outcome.is_err() {
        count_failure(app, &authz);
    }
    let authz = record_outcome(app, &authz.id, kind, &outcome)?;
    app.db.flush().await?;
    Ok(authz)
}

/// Counts a failed validation against the account and identifier
/// (`rate_limits.failed_validations_per_identifier`, checked at newOrder).
fn count_failure(app: &Ra, authz: &Authz) {
    app.limits.spend(
        crate::ratelimit::LimitName::FailedValidationsPerIdentifier,
        &crate::ratelimit::Key::AccountIdentifier(
            authz.account_id.clone(),
            authz.identifier.clone(),
        ),
    );
}

/// Records a challenge outcome on the authorization under compare-and-swap. Only a challenge
/// still pending or processing on a pending authorization changes; anything else was decided
/// already and is returned as it is.
pub fn record_outcome(
    app: &Ra,
    authz_id: &str,
    kind: ChallengeType,
    outcome: &Result<()>,
) -> Result<Authz> {
    let finished = now();
    let mut decided = false;
    let authz = app.db.update(Table::Authzs, authz_id, |mut a: Authz| {
        decided = false;
        if a.status() != AuthzStatus::Pending {
            return Ok(a);
        }
        let Some(c) = a.challenges.iter_mut().find(|c| c.kind == kind) else {
            return Ok(a);
        };
        if !matches!(
            c.status,
            ChallengeStatus::Pending | ChallengeStatus::Processing
        ) {
            return Ok(a);
        }
        c.processing_since = None;
        c.processing_by = None;
        decided = true;
        match outcome {
            Ok(()) => {
                c.status = ChallengeStatus::Valid;
                c.validated = Some(finished);
                a.status = AuthzStatus::Valid;
            }
            Err(e) => {
                c.status = ChallengeStatus::Invalid;
                let mut p = e.to_problem();
                p.identifier = None;
                c.error = Some(p);
                // One failed challenge fails the authorization (RFC 8555 §7.1.6).
                a.status = AuthzStatus::Invalid;
            }
        }
        Ok(a)
    })?;
    if decided {
        app.metrics.validation_decided(kind, outcome.is_ok());
    }
    Ok(authz)
}

/// A validation whose task died with the process stays `processing` in the store; restart it
/// at once if another server process started it and no other instance shares the store (that
/// process is gone: see [`Ra::cut_off`]), else once it is clearly older than any live attempt
/// could be.
fn resume_stuck_validations(app: &Ra, authz: &Authz) {
    let limit = i64::try_from(app.va.longest_run().as_secs()).unwrap_or(i64::MAX);
    if authz.status() != AuthzStatus::Pending {
        return;
    }
    let me = super::process_id();
    for c in &authz.challenges {
        if matches!(c.kind, ChallengeType::Http01 | ChallengeType::TlsAlpn01)
            && c.status == ChallengeStatus::Processing
            && (app.cut_off(c.processing_by.as_deref())
                || c.processing_since.is_some_and(|t| now() - t > limit))
        {
            let Ok(Some(acct)) = app.db.get::<Account>(Table::Accounts, &authz.account_id) else {
                continue;
            };
            // A slot first: without one the restart waits for a later poll, and the challenge
            // keeps the age it had.
            let Ok(admission) = app.va.admit(&acct.id, None) else {
                continue;
            };
            // Claim the restart by moving `processing_since` forward and recording this
            // process under compare-and-swap, so concurrent polls start one validation, not
            // one each.
            let (kind, seen, seen_by, restarted) =
                (c.kind, c.processing_since, c.processing_by.clone(), now());
            let mut claimed = false;
            let updated = app.db.update(Table::Authzs, &authz.id, |mut a: Authz| {
                claimed = false;
                if let Some(ch) = a.challenges.iter_mut().find(|ch| ch.kind == kind) {
                    if ch.status == ChallengeStatus::Processing
                        && ch.processing_since == seen
                        && ch.processing_by == seen_by
                    {
                        ch.processing_since = Some(restarted);
                        ch.processing_by = Some(me.to_owned());
                        claimed = true;
                    }
                }
                Ok(a)
            });
            let Ok(updated) = updated else { continue };
            if claimed {
                spawn_validation(app.clone(), updated, kind, acct.thumbprint, admission);
            }
        }
    }
}

fn spawn_validation(
    app: Ra,
    authz: Authz,
    kind: ChallengeType,
    thumbprint: String,
    admission: crate::va::Admission,
) {
    tokio::spawn(async move {
        if let Err(e) = run_validation(&app, &authz, kind, &thumbprint).await {
            tracing::error!(authz = %authz.id, error = %e, "recording validation result failed");
        }
        drop(admission);
    });
}

/// Runs one validation and records the outcome on the challenge and the authorization.
async fn run_validation(
    app: &Ra,
    authz: &Authz,
    kind: ChallengeType,
    thumbprint: &str,
) -> Result<()> {
    let Some(token) = authz
        .challenges
        .iter()
        .find(|c| c.kind == kind)
        .map(|c| c.token.clone())
    else {
        return Ok(());
    };
    let key_authz = crate::wire::key_authorization(&token, thumbprint)?;
    let outcome = if app.cfg.validation.lab_always_valid {
        Ok(())
    } else {
        app.va
            .validate(&authz.identifier, kind, &token, &key_authz)
            .await
    };
    match &outcome {
        Ok(()) => {
            tracing::info!(authz = %authz.id, identifier = %authz.identifier, %kind, "challenge valid")
        }
        Err(e) => {
            tracing::info!(authz = %authz.id, identifier = %authz.identifier, %kind, error = %e, "challenge invalid");
            count_failure(app, authz);
        }
    }
    record_outcome(app, &authz.id, kind, &outcome)?;
    app.db.flush().await
}
