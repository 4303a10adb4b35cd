//! The ACME conversation: directory, account, order, authorizations, finalize, download
//! (RFC 8555 §7).
//!
//! The order flow is driven by the order's status as the CA reports it (RFC 8555 §7.1.6,
//! SPEC §7.3), not by what the client last did: `pending` → satisfy authorizations, `ready` →
//! finalize, `processing` → wait, `valid` → download, `invalid` → explain. So an order the CA
//! returns already `ready` (reused or pre-authorized authorizations) or a `processing` order
//! after a lost response both just continue.

use std::time::Duration;

use tokio::time::Instant;

use crate::b64;
use crate::enroll::{ChallengeSession, EabCredential, Enrollment};
use crate::error::{Error, ProblemType};
use crate::jws::{self, KeyRef};
use crate::key::Signer;
use crate::transport::{Response, Transport};
use crate::trust::TrustAnchor;
use crate::types::{
    Authorization, AuthorizationStatus, ChallengeStatus, Directory, Finalize, Identifier,
    NewAccount, NewOrder, Order, OrderStatus, RenewalInfo,
};

/// The largest CRL the client downloads: a CA with a few hundred thousand revocations publishes
/// CRLs of several MiB, far above the limit for ACME responses.
const MAX_CRL_BODY: usize = 16 << 20;

/// A suggested renewal window (RFC 9773 §4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewalWindow {
    /// Start of the window.
    pub start: time::OffsetDateTime,
    /// End of the window.
    pub end: time::OffsetDateTime,
    /// When the CA wants to be asked again.
    pub retry_after: Option<Duration>,
}

/// Shortest wait between two polls, whatever Retry-After says.
const MIN_POLL: Duration = Duration::from_millis(500);
/// Longest wait between two polls without a Retry-After.
const MAX_POLL: Duration = Duration::from_secs(10);
/// How often progress is logged while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// A connection to one CA, trusted through one pinned root.
pub struct AcmeClient {
    transport: Transport,
    directory: Directory,
}

impl AcmeClient {
    /// Connects to the CA and reads its directory. This is the first request, so a CA that fails
    /// the pin is refused here, before any ACME request is sent (SPEC §2.3).
    pub async fn connect(
        directory_url: &str,
        anchor: TrustAnchor,
        request_timeout: Duration,
    ) -> Result<Self, Error> {
        if !directory_url.starts_with("https://") {
            return Err(Error::Config(format!(
                "directory URL {directory_url:?} must start with https:// (SPEC §2.1)"
            )));
        }
        let transport = Transport::new(anchor, request_timeout)?;
        let directory = transport.directory(directory_url).await?;
        Ok(Self {
            transport,
            directory,
        })
    }

    /// The CA's directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The pinned root certificate the CA's TLS chain was validated to (SPEC §2.3); with a
    /// fingerprint pin, the root the CA presented whose hash matched.
    pub fn pinned_root(&self) -> Option<rustls_pki_types::CertificateDer<'static>> {
        self.transport.pinned_root()
    }

    /// `GET` a CRL (SPEC §9.1: DER, a plain GET) over the same pinned HTTPS client. The bytes
    /// are not checked here; see [`crate::output::check_crl`].
    pub async fn fetch_crl(&self, url: &str) -> Result<Vec<u8>, Error> {
        if !url.starts_with("https://") {
            return Err(Error::protocol(
                "CRL",
                format!("{url} is not an https:// URL; CRLs are fetched only over the pinned HTTPS client"),
            ));
        }
        Ok(self
            .transport
            .get_limited(url, "CRL", MAX_CRL_BODY)
            .await?
            .body)
    }

    /// The CA's suggested renewal window for the certificate `cert_id` (RFC 9773 §4.2) and its
    /// Retry-After; `None` if the CA offers no renewal information.
    pub async fn renewal_window(&self, cert_id: &str) -> Result<Option<RenewalWindow>, Error> {
        let Some(base) = &self.directory.renewal_info else {
            return Ok(None);
        };
        let url = format!("{}/{cert_id}", base.trim_end_matches('/'));
        let resp = self.transport.get(&url, "renewalInfo").await?;
        let info: RenewalInfo = resp.json("renewalInfo")?;
        let parse = |t: &str| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| Error::protocol("renewalInfo", format!("bad time {t:?}: {e}")))
        };
        let start = parse(&info.suggested_window.start)?;
        let end = parse(&info.suggested_window.end)?;
        if end < start {
            return Err(Error::protocol(
                "renewalInfo",
                "the suggested window ends before it starts",
            ));
        }
        Ok(Some(RenewalWindow {
            start,
            end,
            retry_after: resp.retry_after,
        }))
    }

    async fn post(
        &self,
        key: &dyn Signer,
        key_ref: KeyRef<'_>,
        url: &str,
        payload: Option<&[u8]>,
        request: &str,
    ) -> Result<Response, Error> {
        self.transport
            .post(&self.directory, key, key_ref, url, payload, request)
            .await
    }

    /// Creates the account for `key`, or finds the one it already has (RFC 8555 §7.3), and
    /// returns its URL. `eab` binds it to an operator credential (RFC 8555 §7.3.4).
    pub async fn new_account(
        &self,
        key: &dyn Signer,
        eab: Option<&EabCredential>,
        agree_terms: bool,
    ) -> Result<String, Error> {
        let meta = &self.directory.meta;
        if meta.external_account_required && eab.is_none() {
            return Err(Error::Config(
                "the CA requires external account binding: give the EAB key identifier and \
                 HMAC key the operator created (eab_kid, eab_hmac)"
                    .into(),
            ));
        }
        let terms_of_service_agreed = match (&meta.terms_of_service, agree_terms) {
            (Some(_), true) => Some(true),
            (Some(url), false) => {
                return Err(Error::Config(format!(
                    "the CA has terms of service ({url}); set agree_terms = true \
                     (--agree-terms) to accept them for this device"
                )))
            }
            (None, _) => None,
        };
        let url = &self.directory.new_account;
        let external_account_binding = eab
            .map(|c| jws::external_account_binding(&c.kid, &c.hmac_key, &key.public_jwk(), url))
            .transpose()?;
        let payload = serde_json::to_vec(&NewAccount {
            contact: &[],
            terms_of_service_agreed,
            only_return_existing: false,
            external_account_binding,
        })
        .map_err(|e| Error::Crypto(format!("cannot serialize newAccount: {e}")))?;
        let resp = self
            .post(key, KeyRef::Jwk, url, Some(&payload), "newAccount")
            .await?;
        let account = resp.location("newAccount")?;
        if resp.status.as_u16() == 201 {
            tracing::info!(account = %account, "created ACME account");
        } else {
            tracing::info!(account = %account, "the CA already knows this account key");
        }
        Ok(account)
    }

    /// Checks that the CA offers the certificate profile `profile` in its directory's
    /// `meta.profiles` (draft-ietf-acme-profiles §3), so a wrong name fails before any order,
    /// with the list of what the CA offers.
    pub fn check_profile(&self, profile: Option<&str>) -> Result<(), Error> {
        let Some(name) = profile else {
            return Ok(());
        };
        let offered = &self.directory.meta.profiles;
        if offered.contains_key(name) {
            return Ok(());
        }
        Err(Error::ProfileNotOffered {
            profile: crate::error::printable(name),
            offered: offered_profiles(offered),
        })
    }

    /// Orders a certificate for `identifiers`, satisfies its authorizations with `enrollment`,
    /// finalizes with `csr_der`, and returns the PEM chain (leaf first). Each wait (validation,
    /// issuance) gives up after `poll_timeout`. `profile`, if given, is checked against the
    /// directory first ([`Self::check_profile`]) and sent in newOrder.
    ///
    /// `replaces` is the ARI identifier of the certificate being renewed (RFC 9773 §5); it is
    /// sent only if the CA offers renewal information. If the CA answers `alreadyReplaced` (an
    /// earlier renewal whose certificate never got installed), the order is placed again once
    /// without it.
    #[allow(clippy::too_many_arguments)]
    pub async fn issue(
        &self,
        key: &dyn Signer,
        account_url: &str,
        identifiers: &[Identifier],
        replaces: Option<&str>,
        profile: Option<&str>,
        enrollment: &Enrollment,
        csr_der: &[u8],
        poll_timeout: Duration,
    ) -> Result<String, Error> {
        self.check_profile(profile)?;
        let kid = KeyRef::Kid(account_url);
        let replaces = replaces.filter(|_| self.directory.renewal_info.is_some());
        let new_order = |replaces| {
            serde_json::to_vec(&NewOrder {
                identifiers,
                replaces,
                profile,
            })
            .map_err(|e| Error::Crypto(format!("cannot serialize newOrder: {e}")))
        };
        let url = &self.directory.new_order;
        let resp = match self
            .post(key, kid, url, Some(&new_order(replaces)?), "newOrder")
            .await
        {
            Err(Error::Problem { problem, .. })
                if replaces.is_some() && problem.kind() == Some(ProblemType::AlreadyReplaced) =>
            {
                tracing::warn!(
                    replaces = replaces.unwrap_or_default(),
                    "the CA says the certificate was already replaced ({problem}); ordering \
                     without replaces"
                );
                self.post(key, kid, url, Some(&new_order(None)?), "newOrder")
                    .await?
            }
            other => other?,
        };
        let order_url = resp.location("newOrder")?;
        let mut order: Order = resp.json("newOrder")?;
        let mut retry_after = resp.retry_after;
        tracing::info!(order = %order_url, status = ?order.status, "order created");
        // Started at the first wait, so that a long authorization phase (an operator deciding)
        // does not eat into the limit for issuance.
        let mut waiting: Option<Poller> = None;
        loop {
            match order.status {
                OrderStatus::Pending => {
                    self.authorize(
                        key,
                        account_url,
                        identifiers,
                        &order,
                        enrollment,
                        poll_timeout,
                    )
                    .await?;
                    let (o, ra) = match self.order(key, account_url, &order_url).await {
                        Ok(got) => got,
                        Err(e) => {
                            waiting
                                .get_or_insert_with(|| Poller::new("the order", poll_timeout))
                                .wait_out(e)
                                .await?;
                            continue;
                        }
                    };
                    if o.status == OrderStatus::Pending {
                        // All authorizations are valid, but the CA has not caught up yet.
                        waiting
                            .get_or_insert_with(|| Poller::new("the order", poll_timeout))
                            .wait(ra, "pending")
                            .await?;
                    }
                    (order, retry_after) = (o, ra);
                }
                OrderStatus::Ready => {
                    tracing::info!("all identifiers validated; sending the CSR");
                    let payload = serde_json::to_vec(&Finalize {
                        csr: b64::encode(csr_der),
                    })
                    .map_err(|e| Error::Crypto(format!("cannot serialize finalize: {e}")))?;
                    let resp = self
                        .post(key, kid, &order.finalize, Some(&payload), "finalize")
                        .await?;
                    retry_after = resp.retry_after;
                    order = resp.json("finalize")?;
                }
                OrderStatus::Processing => {
                    let poller =
                        waiting.get_or_insert_with(|| Poller::new("the order", poll_timeout));
                    poller.wait(retry_after, "processing").await?;
                    match self.order(key, account_url, &order_url).await {
                        Ok(got) => (order, retry_after) = got,
                        Err(e) => poller.wait_out(e).await?,
                    }
                }
                OrderStatus::Valid => {
                    let url = order.certificate.as_deref().ok_or_else(|| {
                        Error::protocol("order", "a valid order has no certificate URL")
                    })?;
                    return self.download(key, account_url, url).await;
                }
                OrderStatus::Invalid => {
                    return Err(self
                        .explain_invalid(key, account_url, &order_url, order)
                        .await)
                }
            }
        }
    }

    async fn order(
        &self,
        key: &dyn Signer,
        account_url: &str,
        url: &str,
    ) -> Result<(Order, Option<Duration>), Error> {
        let resp = self
            .post(key, KeyRef::Kid(account_url), url, None, "order")
            .await?;
        Ok((resp.json("order")?, resp.retry_after))
    }

    async fn authz(
        &self,
        key: &dyn Signer,
        account_url: &str,
        url: &str,
    ) -> Result<(Authorization, Option<Duration>), Error> {
        let resp = self
            .post(key, KeyRef::Kid(account_url), url, None, "authorization")
            .await?;
        Ok((resp.json("authorization")?, resp.retry_after))
    }

    /// Triggers the challenge of every pending authorization, then waits until each is valid.
    /// An authorization for an identifier that is not in `identifiers` (what the device
    /// ordered) is refused before any challenge is answered: whatever the challenge type, the
    /// device proves only its own names.
    async fn authorize(
        &self,
        key: &dyn Signer,
        account_url: &str,
        identifiers: &[Identifier],
        order: &Order,
        enrollment: &Enrollment,
        poll_timeout: Duration,
    ) -> Result<(), Error> {
        // Keeps the http-01 responder (or what a later method needs) alive until every
        // authorization is settled, and stops it when this function returns.
        let mut session = ChallengeSession::default();
        let jwk = key.public_jwk();
        let mut pending = Vec::new();
        for url in &order.authorizations {
            let (authz, _) = self.authz(key, account_url, url).await?;
            check_ordered(&authz.identifier, identifiers)?;
            let id = authz.identifier.to_string();
            // A mixed order may need two methods (device-attest-01 and http-01).
            let method = enrollment.for_identifier(&authz.identifier);
            let wanted = method.challenge_type();
            match authz.status {
                AuthorizationStatus::Valid => {
                    tracing::debug!(identifier = %id, "already authorized");
                    continue;
                }
                AuthorizationStatus::Pending => {}
                _ => return Err(failed(&authz)),
            }
            let Some(challenge) = authz.challenges.iter().find(|c| c.kind == wanted) else {
                return Err(Error::NoChallenge {
                    identifier: id,
                    wanted: wanted.to_owned(),
                    offered: authz.challenges.iter().map(|c| c.kind.clone()).collect(),
                });
            };
            match challenge.status {
                ChallengeStatus::Pending => {
                    method
                        .prepare(&mut session, &authz.identifier, challenge, &jwk)
                        .await?;
                    let payload = method.respond_payload(challenge, &jwk)?;
                    self.post(
                        key,
                        KeyRef::Kid(account_url),
                        &challenge.url,
                        Some(&payload),
                        "challenge",
                    )
                    .await?;
                    tracing::info!(identifier = %id, challenge = wanted, "asked the CA to validate");
                }
                // Triggered by an earlier run whose response was lost: the CA may be dialing
                // right now, so answer again, but do not trigger twice.
                ChallengeStatus::Processing => {
                    method
                        .prepare(&mut session, &authz.identifier, challenge, &jwk)
                        .await?;
                }
                ChallengeStatus::Valid => {}
                ChallengeStatus::Invalid => return Err(failed(&authz)),
            }
            pending.push((url, id, method));
        }
        for (url, id, method) in pending {
            let limit = method.wait_limit(poll_timeout);
            let mut poll = Poller::new(&method.waiting_for(&id, &session), limit);
            loop {
                let (authz, retry_after) = match self.authz(key, account_url, url).await {
                    Ok(got) => got,
                    Err(e) => {
                        poll.wait_out(e).await?;
                        continue;
                    }
                };
                match authz.status {
                    AuthorizationStatus::Valid => {
                        tracing::info!(identifier = %id, "validated");
                        break;
                    }
                    AuthorizationStatus::Pending => poll.wait(retry_after, "pending").await?,
                    _ => return Err(failed(&authz)),
                }
            }
        }
        drop(session);
        Ok(())
    }

    /// Downloads the certificate chain (RFC 8555 §7.4.2): PEM, leaf first.
    async fn download(
        &self,
        key: &dyn Signer,
        account_url: &str,
        url: &str,
    ) -> Result<String, Error> {
        let resp = self
            .post(key, KeyRef::Kid(account_url), url, None, "certificate")
            .await?;
        let text = String::from_utf8(resp.body)
            .map_err(|_| Error::protocol("certificate", "the chain is not text"))?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            return Err(Error::protocol(
                "certificate",
                format!(
                    "not a PEM certificate chain (content type {})",
                    resp.content_type.as_deref().unwrap_or("none")
                ),
            ));
        }
        Ok(text)
    }

    /// The most useful error for an `invalid` order: a failed authorization's challenge error
    /// if there is one (that is what an operator can act on), else the order's own error.
    async fn explain_invalid(
        &self,
        key: &dyn Signer,
        account_url: &str,
        order_url: &str,
        order: Order,
    ) -> Error {
        for url in &order.authorizations {
            if let Ok((authz, _)) = self.authz(key, account_url, url).await {
                if authz.status == AuthorizationStatus::Invalid {
                    return failed(&authz);
                }
            }
        }
        Error::OrderInvalid {
            url: order_url.to_owned(),
            problem: order.error.map(Box::new),
        }
    }
}

/// At most this many of the CA's profiles are listed in an error.
const MAX_LISTED_PROFILES: usize = 20;
/// A profile's `name (description)` is cut to this many characters in an error.
const MAX_PROFILE_TEXT: usize = 64;

/// The CA's profiles as `name (description)` for an error message: control characters
/// escaped, each cut to [`MAX_PROFILE_TEXT`] characters, and at most [`MAX_LISTED_PROFILES`] of
/// them, with a last entry saying how many more there are.
fn offered_profiles(offered: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut list: Vec<String> = offered
        .iter()
        .take(MAX_LISTED_PROFILES)
        .map(|(name, description)| {
            let text = crate::error::printable(&format!("{name} ({description})"));
            if text.chars().count() > MAX_PROFILE_TEXT {
                let cut: String = text.chars().take(MAX_PROFILE_TEXT - 1).collect();
                format!("{cut}…")
            } else {
                text
            }
        })
        .collect();
    if offered.len() > MAX_LISTED_PROFILES {
        list.push(format!("and {} more", offered.len() - MAX_LISTED_PROFILES));
    }
    list
}

/// Refuses an authorization whose identifier is not one of `ordered`: a CA that asks the
/// device to prove some other name gets no challenge answer (no responder is started, no
/// certificate made for it). Names compare as the CA normalises them: `dns` case-insensitively,
/// `ip` by address.
fn check_ordered(identifier: &Identifier, ordered: &[Identifier]) -> Result<(), Error> {
    let same = |o: &Identifier| {
        o.kind == identifier.kind
            && match identifier.kind.as_str() {
                "dns" => o.value.eq_ignore_ascii_case(&identifier.value),
                "ip" => match (
                    o.value.parse::<std::net::IpAddr>(),
                    identifier.value.parse::<std::net::IpAddr>(),
                ) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => false,
                },
                _ => o.value == identifier.value,
            }
    };
    if ordered.iter().any(same) {
        return Ok(());
    }
    Err(Error::protocol(
        "authorization",
        format!(
            "the CA asks this device to prove {}, which it did not order; refusing",
            crate::error::printable(&identifier.to_string())
        ),
    ))
}

fn failed(authz: &Authorization) -> Error {
    let problem = authz
        .challenges
        .iter()
        .find_map(|c| c.error.clone())
        .map(Box::new);
    let identifier = authz.identifier.to_string();
    if problem.is_none() && authz.status != AuthorizationStatus::Invalid {
        return Error::AuthorizationFailed {
            identifier,
            problem: Some(Box::new(crate::error::Problem {
                detail: Some(format!("the authorization is {:?}", authz.status).to_lowercase()),
                ..Default::default()
            })),
        };
    }
    Error::AuthorizationFailed {
        identifier,
        problem,
    }
}

/// Paces polling: Retry-After when the CA sends one (RFC 8555 §7.5.1, §7.4), otherwise a wait
/// that grows from 1 s to [`MAX_POLL`], and an overall limit. Logs progress so that an operator
/// watching a device sees that it is waiting, and for what.
struct Poller {
    what: String,
    started: Instant,
    timeout: Duration,
    interval: Duration,
    last_log: Option<Instant>,
}

impl Poller {
    fn new(what: &str, timeout: Duration) -> Self {
        Self {
            what: what.to_owned(),
            started: Instant::now(),
            timeout,
            interval: Duration::from_secs(1),
            last_log: None,
        }
    }

    async fn wait(&mut self, retry_after: Option<Duration>, status: &str) -> Result<(), Error> {
        let elapsed = self.started.elapsed();
        if elapsed >= self.timeout {
            return Err(Error::Timeout {
                what: self.what.clone(),
                waited: elapsed,
            });
        }
        let wait = retry_after
            .unwrap_or(self.interval)
            .max(MIN_POLL)
            .min(self.timeout - elapsed);
        self.interval = (self.interval * 3 / 2).min(MAX_POLL);
        if self.last_log.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            tracing::info!(
                "waiting for {}: {status}, {}s so far, next check in {:.1}s",
                self.what,
                elapsed.as_secs(),
                wait.as_secs_f64()
            );
            self.last_log = Some(Instant::now());
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// A failed poll: a CA that cannot be reached or answers 503 (restarting, its disk full)
    /// is waited out within the same limit, as a `pending` status is, so a device waiting for
    /// an operator or a validation does not give up its order when the CA restarts. Any other
    /// error ends the wait.
    async fn wait_out(&mut self, e: Error) -> Result<(), Error> {
        let retry_after = match &e {
            Error::Unreachable { .. } => None,
            Error::Problem {
                problem,
                retry_after,
                ..
            } if problem.status == Some(503) => *retry_after,
            _ => return Err(e),
        };
        tracing::warn!("{e}; still waiting for {}", self.what);
        self.wait(retry_after, "the CA is unavailable").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_profiles_are_escaped_and_capped() {
        let mut offered = std::collections::BTreeMap::new();
        offered.insert(
            "opcua".to_owned(),
            "OPC UA\n\u{1b}[2Japplication instance".to_owned(),
        );
        let list = offered_profiles(&offered);
        assert_eq!(list, ["opcua (OPC UA\\n\\u{1b}[2Japplication instance)"]);
        offered.insert("long".to_owned(), "x".repeat(500));
        for i in 0..30 {
            offered.insert(format!("p{i:02}"), String::new());
        }
        let list = offered_profiles(&offered);
        assert_eq!(list.len(), MAX_LISTED_PROFILES + 1);
        assert!(list
            .iter()
            .all(|p| p.chars().count() <= MAX_PROFILE_TEXT && !p.chars().any(char::is_control)));
        assert_eq!(list[0].chars().count(), MAX_PROFILE_TEXT);
        assert!(list[0].starts_with("long (xxx") && list[0].ends_with('…'));
        assert_eq!(list[MAX_LISTED_PROFILES], "and 12 more");
    }

    #[test]
    fn authorizations_for_names_the_device_did_not_order_are_refused() {
        let ordered = [
            Identifier::parse("plc-7.plant").expect("dns"),
            Identifier::parse("2001:db8::7").expect("ip"),
            Identifier::permanent("SN-1/1.2.3").expect("permanent"),
        ];
        let id = |kind: &str, value: &str| Identifier {
            kind: kind.into(),
            value: value.into(),
        };
        for ok in [
            id("dns", "PLC-7.plant"),
            id("ip", "2001:0db8:0:0::7"),
            id("permanent-identifier", "SN-1/1.2.3"),
        ] {
            check_ordered(&ok, &ordered).expect("ordered");
        }
        for foreign in [
            id("dns", "other.plant"),
            id("ip", "plc-7.plant"),
            id("dns", "2001:db8::7"),
            id("ip", "10.0.0.7"),
            id("permanent-identifier", "SN-2/1.2.3"),
            id("dns", "evil\u{1b}[2J.plant"),
        ] {
            let e = check_ordered(&foreign, &ordered).expect_err("foreign");
            // Retried like any bad answer from the CA, never a configuration error.
            assert_eq!(e.kind(), crate::error::ErrorKind::Refused, "{e}");
            assert!(e.to_string().contains("did not order"), "{e}");
            assert!(!e.to_string().contains('\u{1b}'), "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn poller_waits_out_an_unreachable_or_unavailable_ca_but_not_a_refusal() {
        let problem = |status: u16| Error::Problem {
            request: "authorization".into(),
            problem: Box::new(
                serde_json::from_value(serde_json::json!({
                    "type": "urn:ietf:params:acme:error:serverInternal",
                    "status": status,
                }))
                .expect("problem"),
            ),
            retry_after: Some(Duration::from_secs(5)),
        };
        let mut p = Poller::new("x", Duration::from_secs(30));
        let t0 = Instant::now();
        p.wait_out(Error::Unreachable {
            url: "https://ca/authz/1".into(),
            detail: "connection refused".into(),
        })
        .await
        .expect("an unreachable CA is waited out");
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        p.wait_out(problem(503)).await.expect("a 503 is waited out");
        assert_eq!(t0.elapsed(), Duration::from_secs(6), "its Retry-After");
        let e = p
            .wait_out(problem(500))
            .await
            .expect_err("a 500 ends the wait");
        assert!(matches!(e, Error::Problem { .. }), "{e}");
        let mut p = Poller::new("y", Duration::from_secs(2));
        p.wait_out(problem(503)).await.expect("within the limit");
        let e = p.wait_out(problem(503)).await.expect_err("past the limit");
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn poller_honours_retry_after_and_times_out() {
        let mut p = Poller::new("x", Duration::from_secs(10));
        let t0 = Instant::now();
        p.wait(Some(Duration::from_secs(3)), "processing")
            .await
            .expect("wait");
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        p.wait(Some(Duration::ZERO), "processing")
            .await
            .expect("wait");
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(3500),
            "clamped to MIN_POLL"
        );
        // A Retry-After beyond the limit is cut to what remains, then the limit ends it.
        let mut p = Poller::new("y", Duration::from_secs(2));
        let t0 = Instant::now();
        p.wait(Some(Duration::from_secs(60)), "pending")
            .await
            .expect("first wait");
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        let err = p
            .wait(Some(Duration::from_secs(60)), "pending")
            .await
            .expect_err("times out");
        assert_eq!(err.to_string(), "gave up waiting for y after 2s");
    }
}
