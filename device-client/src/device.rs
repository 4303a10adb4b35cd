//! The device's life cycle: enroll when it has no usable certificate, install atomically, run
//! the post-install command, and in `run` mode renew at the configured point of the lifetime,
//! backing off with jitter when the CA is down.

use std::convert::Infallible;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::acme::{AcmeClient, RenewalWindow};
use crate::cert::{self, rfc3339, CertInfo, CertStatus};
use crate::config::Settings;
use crate::error::{Error, ErrorKind, ProblemType};
use crate::files::{self, State};
use crate::key::{self, CertKey, KeyAlgorithm, KeyPair};
use crate::output;
use crate::pkcs11::{self, Curve, Pkcs11Uri, TokenKey};
use crate::schedule;
use crate::trust::TrustAnchor;
use crate::types::Identifier;

/// The state directory's copy of the installed certificate's chain (leaf first, PEM).
const ISSUED_CHAIN: &str = "issued-chain.pem";

/// Longest single sleep in `run`: the installed files are re-checked at least this often, so a
/// deleted or replaced certificate is noticed, and a suspended device that wakes up late does
/// not oversleep its renewal by more than this.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How soon renewal information is asked for again after a failed request without Retry-After.
const ARI_RETRY_AFTER_ERROR: Duration = Duration::from_secs(15 * 60);

/// What the CA's renewal information says for the installed certificate.
#[derive(Clone, Debug)]
struct AriPlan {
    /// The certificate it is about.
    serial: String,
    /// The suggested window, if the CA gave one.
    window: Option<(OffsetDateTime, OffsetDateTime)>,
    /// The renewal time picked in it.
    renew_at: Option<OffsetDateTime>,
    /// When to ask again.
    next_check: OffsetDateTime,
}

/// The ARI identifier of the certificate a new order replaces: the installed one while it is
/// still valid. An expired, missing or unusable certificate is not replaced but enrolled anew.
fn replaced(status: &CertStatus) -> Option<String> {
    match status {
        CertStatus::Valid { info, .. } | CertStatus::RenewalDue { info, .. } => {
            info.cert_id.clone()
        }
        _ => None,
    }
}

/// Whether `run` gives up on `e`, met while renewing from `status`. Configuration errors need
/// the operator, except those that come from the CA's current offer (a profile the CA dropped
/// or renamed): with a usable certificate installed, `run` keeps it and tries again later, so
/// a change at the CA does not stop a device that still has months of certificate left.
fn fatal_in_run(e: &Error, status: &CertStatus) -> bool {
    let usable = matches!(
        status,
        CertStatus::Valid { .. } | CertStatus::RenewalDue { .. }
    );
    match e {
        Error::ProfileNotOffered { .. } => !usable,
        e => e.kind() == ErrorKind::Config,
    }
}

/// What `enroll` did.
#[derive(Debug)]
pub enum EnrollOutcome {
    /// The installed certificate is still good; nothing was ordered (with an OPC UA PKI
    /// directory, its CRLs were fetched again).
    StillValid {
        /// The certificate.
        info: Box<CertInfo>,
        /// When it will be renewed.
        renew_at: OffsetDateTime,
    },
    /// A new certificate was installed.
    Installed(Box<Installed>),
}

/// A newly installed certificate.
#[derive(Debug)]
pub struct Installed {
    /// The certificate.
    pub info: CertInfo,
    /// When it is due for renewal.
    pub renew_at: OffsetDateTime,
    /// Why the post-install command failed, if it did. The certificate is installed either way.
    pub post_install_error: Option<Error>,
}

/// A device enrolling with one CA.
#[derive(Debug)]
pub struct Device {
    s: Settings,
    /// When the OPC UA PKI directory's CRLs are due again.
    crls: Mutex<CrlSchedule>,
    /// The PKCS #12 output as last found current.
    p12_checked: Mutex<Option<output::Pkcs12Stamp>>,
}

/// When the CRLs are refreshed next, and how many refreshes in a row failed.
#[derive(Debug, Default)]
struct CrlSchedule {
    due: Option<tokio::time::Instant>,
    failures: u32,
}

impl Device {
    /// A device with checked settings.
    pub fn new(settings: Settings) -> Self {
        Self {
            s: settings,
            crls: Mutex::new(CrlSchedule::default()),
            p12_checked: Mutex::new(None),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.s
    }

    /// The installed certificate's status now. A certificate installed from another CA
    /// (another directory URL in the state) counts as unusable.
    pub fn status(&self) -> Result<CertStatus, Error> {
        let l = &self.s.local;
        let status = cert::local_status(l, OffsetDateTime::now_utc())?;
        if let CertStatus::Valid { info, .. } | CertStatus::RenewalDue { info, .. } = &status {
            if let Some(why) = self.stale_output()? {
                return Ok(CertStatus::Unusable {
                    reason: format!("the configured output {why}"),
                    info: Some(info.clone()),
                });
            }
        }
        let state = State::load(&l.state_dir)?;
        if let (Some(info), Some(dir)) = (status.info(), &state.directory_url) {
            if *dir != self.s.directory_url {
                return Ok(CertStatus::Unusable {
                    reason: format!(
                        "it was issued through {dir}, and the device is now configured for {}",
                        self.s.directory_url
                    ),
                    info: Some(Box::new(info.clone())),
                });
            }
        }
        // A changed --application-uri is renewed at once, like changed identifiers.
        if let Some(info) = status.info() {
            if let Some(reason) = application_uri_mismatch(info, self.s.application_uri.as_deref())
            {
                return Ok(CertStatus::Unusable {
                    reason,
                    info: Some(Box::new(info.clone())),
                });
            }
        }
        Ok(status)
    }

    /// The installed PEM key and certificate with the chain below them (leaf first), if both
    /// are there and belong together; otherwise the status says why and the device enrolls.
    fn installed_pem(&self) -> Result<Option<(CertKey, Vec<CertificateDer<'static>>)>, Error> {
        let l = &self.s.local;
        let (Some(cert_pem), Some(key_pem)) = (
            files::read_optional(&l.cert_path)?,
            files::read_optional(&l.key_path)?,
        ) else {
            return Ok(None);
        };
        let Some(Ok(leaf)) = CertificateDer::pem_slice_iter(&cert_pem).next() else {
            return Ok(None);
        };
        let Ok(key) = CertKey::from_pem(&key_pem) else {
            return Ok(None);
        };
        if CertInfo::from_der(&leaf)
            .map(|i| i.public_key)
            .ok()
            .as_deref()
            != Some(key.public_key_bits())
        {
            return Ok(None);
        }
        // The intermediates as issued with this certificate: the state directory's copy, or
        // the configured full chain or chain file.
        let mut chain = vec![leaf];
        let candidates = [
            Some(l.state_dir.join(ISSUED_CHAIN)),
            l.fullchain_path.clone(),
        ];
        for path in candidates.iter().flatten() {
            if let Some(pem) = files::read_optional(path)? {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .filter_map(Result::ok)
                    .collect();
                if certs.first() == chain.first() {
                    chain.extend(certs.into_iter().skip(1));
                    return Ok(Some((key, chain)));
                }
            }
        }
        if let Some(path) = &l.chain_path {
            if let Some(pem) = files::read_optional(path)? {
                chain.extend(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
            }
        }
        Ok(Some((key, chain)))
    }

    /// Why a configured output besides the PEM files does not hold the installed key and
    /// certificate ([`output::stale`]), if one does not.
    fn stale_output(&self) -> Result<Option<String>, Error> {
        let l = &self.s.local;
        let o = &self.s.outputs;
        if !o.der && o.pkcs12.is_none() && o.opcua_pki.is_none() {
            return Ok(None);
        }
        let Some((key, chain)) = self.installed_pem()? else {
            return Ok(None);
        };
        let mut checked = self
            .p12_checked
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        output::stale(o, &l.cert_path, &l.key_path, &key, &chain[0], &mut checked)
    }

    /// Rebuilds the outputs besides the PEM files from the installed PEM key and certificate
    /// when one is missing or holds another certificate or key, without asking the CA for a
    /// new certificate, then runs the post-install command: the outputs are in place only now.
    /// Returns whether anything was rebuilt; a failed write is an error (retried by `run`
    /// with backoff), never a reason to enroll again.
    pub async fn repair_outputs(&self) -> Result<bool, Error> {
        let Some(why) = self.stale_output()? else {
            return Ok(false);
        };
        let Some((key, chain)) = self.installed_pem()? else {
            return Ok(false);
        };
        let info = CertInfo::from_der(&chain[0]).map_err(|e| Error::protocol("certificate", e))?;
        if info.not_after <= OffsetDateTime::now_utc() {
            return Ok(false);
        }
        tracing::warn!(
            serial = %info.serial,
            "the configured output {why}; rebuilding the outputs from the installed certificate"
        );
        // The OPC UA directory's root and CRLs come from the CA; without it the installed root
        // and CRLs stay, and `run` fetches the CRLs on its schedule.
        let s = &self.s;
        let client = match &s.outputs.opcua_pki {
            Some(_) => {
                match AcmeClient::connect(&s.directory_url, s.trust.clone(), s.request_timeout)
                    .await
                {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!("cannot reach the CA ({e}); the installed CRLs stay");
                        None
                    }
                }
            }
            None => None,
        };
        let root = match (&s.trust, &client) {
            (TrustAnchor::Root(root), _) => Some(root.clone()),
            (TrustAnchor::Fingerprint(_), Some(c)) => c.pinned_root(),
            (TrustAnchor::Fingerprint(_), None) => None,
        };
        let l = &s.local;
        output::write(
            &s.outputs,
            &l.cert_path,
            &l.key_path,
            &key,
            &chain,
            root.as_ref(),
        )?;
        if let Some(client) = &client {
            self.refresh_crls_scheduled(client).await;
        }
        if let Some(cmd) = &self.s.post_install {
            if let Err(e) = run_post_install(cmd, &self.s, &info, HookEvent::Certificate).await {
                tracing::error!("outputs rebuilt, but {e}");
            }
        }
        Ok(true)
    }

    /// One-shot enrollment: gets and installs a certificate unless the installed one is still
    /// valid and not due for renewal (or `force`). Renewing a certificate that is still valid
    /// names it in `replaces` (RFC 9773 §5); an expired one is simply enrolled again.
    pub async fn enroll(&self, force: bool) -> Result<EnrollOutcome, Error> {
        self.settle_token_key()?;
        if !force {
            self.repair_outputs().await?;
        }
        let status = self.status()?;
        if let (CertStatus::Valid { info, renew_at }, false) = (&status, force) {
            // A one-shot `enroll` from a timer keeps the CRLs fresh too; a failure is logged
            // and the installed CRLs stay.
            if self.s.outputs.opcua_pki.is_some() {
                let s = &self.s;
                let result =
                    AcmeClient::connect(&s.directory_url, s.trust.clone(), s.request_timeout).await;
                let (changed, error) = match result {
                    Ok(client) => self.refresh_crls_counting(&client).await,
                    Err(e) => (0, Some(e)),
                };
                if let Some(e) = error {
                    tracing::warn!("cannot refresh the CRLs ({e}); the installed CRLs stay");
                }
                self.crls_changed(changed).await;
            }
            return Ok(EnrollOutcome::StillValid {
                info: info.clone(),
                renew_at: *renew_at,
            });
        }
        tracing::info!(certificate = %status, "requesting a certificate");
        self.issue_and_install_replacing(replaced(&status).as_deref())
            .await
            .map(|i| EnrollOutcome::Installed(Box::new(i)))
    }

    /// The CA's suggested renewal window for `info` (RFC 9773 §4.2); `None` if the CA offers
    /// no renewal information or the certificate has no ARI identifier.
    pub async fn renewal_window(&self, info: &CertInfo) -> Result<Option<RenewalWindow>, Error> {
        let Some(id) = &info.cert_id else {
            return Ok(None);
        };
        let s = &self.s;
        let client =
            AcmeClient::connect(&s.directory_url, s.trust.clone(), s.request_timeout).await?;
        client.renewal_window(id).await
    }

    /// Asks for the renewal window of `info` and decides when to renew by it. A failure keeps
    /// the last known plan for the same certificate, or falls back to the lifetime fraction.
    async fn refresh_plan(
        &self,
        info: &CertInfo,
        old: Option<AriPlan>,
        now: OffsetDateTime,
    ) -> AriPlan {
        let old = old.filter(|o| o.serial == info.serial);
        match self.renewal_window(info).await {
            Ok(Some(w)) => {
                let window = (w.start, w.end);
                let kept = old
                    .as_ref()
                    .filter(|o| o.window == Some(window))
                    .and_then(|o| o.renew_at);
                let renew_at = kept.unwrap_or_else(|| {
                    let at = schedule::ari_renewal_time(w.start, w.end, now, schedule::jitter());
                    tracing::info!(
                        serial = %info.serial,
                        "renewal information: suggested window {} to {}; renewing at {}",
                        rfc3339(w.start),
                        rfc3339(w.end),
                        rfc3339(at)
                    );
                    at
                });
                let recheck = schedule::ari_recheck(w.retry_after, schedule::ARI_RECHECK_MAX);
                AriPlan {
                    serial: info.serial.clone(),
                    window: Some(window),
                    renew_at: Some(renew_at),
                    next_check: now + recheck,
                }
            }
            Ok(None) => {
                if old.is_none() {
                    tracing::info!(
                        "the CA offers no renewal information; renewing at {:.0}% of the \
                         lifetime",
                        self.s.local.renew_at * 100.0
                    );
                }
                AriPlan {
                    serial: info.serial.clone(),
                    window: None,
                    renew_at: None,
                    next_check: now + schedule::ARI_RECHECK_MAX,
                }
            }
            Err(e) => {
                let recheck = schedule::ari_recheck(e.retry_after(), ARI_RETRY_AFTER_ERROR);
                let (window, renew_at) = match &old {
                    Some(o) if o.renew_at.is_some() => (o.window, o.renew_at),
                    _ => (None, None),
                };
                let fallback = match renew_at {
                    Some(at) => format!("keeping the last suggested renewal time {}", rfc3339(at)),
                    None => format!(
                        "renewing at {:.0}% of the lifetime",
                        self.s.local.renew_at * 100.0
                    ),
                };
                tracing::warn!(
                    "cannot get renewal information ({e}); {fallback}; asking again in {}s",
                    recheck.as_secs()
                );
                AriPlan {
                    serial: info.serial.clone(),
                    window,
                    renew_at,
                    next_check: now + recheck,
                }
            }
        }
    }

    /// Runs forever: keeps a valid certificate installed, renewing when the CA's renewal
    /// information (RFC 9773) says, or at the configured point of the lifetime if the CA offers
    /// none, and retrying failures with exponential backoff and jitter, honouring Retry-After.
    /// An expired certificate (a device that was offline longer than its lifetime) is enrolled
    /// again. Returns only for configuration errors, which need the operator; a profile the CA
    /// no longer offers is one only while no usable certificate is installed.
    pub async fn run(&self) -> Result<Infallible, Error> {
        let mut failures = 0u32;
        let mut announced: Option<OffsetDateTime> = None;
        let mut plan: Option<AriPlan> = None;
        loop {
            if let Err(e) = self.settle_token_key() {
                // A token that refuses the PIN is not asked again: it would lock the PIN.
                if e.kind() == ErrorKind::Config {
                    return Err(e);
                }
                failures += 1;
                self.back_off(failures, &e, None).await;
                continue;
            }
            if let Err(e) = self.repair_outputs().await {
                if e.kind() == ErrorKind::Config {
                    return Err(e);
                }
                failures += 1;
                self.back_off(failures, &e, None).await;
                continue;
            }
            self.refresh_crls_if_due().await;
            let status = match self.status() {
                Ok(s) => s,
                // A token that refuses the PIN is not asked again: it would lock the PIN.
                Err(e) if e.kind() == ErrorKind::Config => return Err(e),
                Err(e) => {
                    failures += 1;
                    self.back_off(failures, &e, None).await;
                    continue;
                }
            };
            if let CertStatus::Valid { info, renew_at }
            | CertStatus::RenewalDue { info, renew_at } = &status
            {
                let now = OffsetDateTime::now_utc();
                let p = match plan.take() {
                    Some(p) if p.serial == info.serial && now < p.next_check => p,
                    old => self.refresh_plan(info, old, now).await,
                };
                // The CA's time wins; a renew_at the operator configured still bounds it.
                let due = match p.renew_at {
                    Some(ari) if self.s.local.renew_at_configured => ari.min(*renew_at),
                    Some(ari) => ari,
                    None => *renew_at,
                };
                let next_check = p.next_check;
                let by_ari = p.renew_at.is_some_and(|a| a == due);
                plan = Some(p);
                let now = OffsetDateTime::now_utc();
                if now < due {
                    if announced != Some(due) {
                        tracing::info!(
                            serial = %info.serial,
                            not_after = %rfc3339(info.not_after),
                            "certificate valid; next renewal at {} ({})",
                            rfc3339(due),
                            if by_ari {
                                "by the CA's renewal information"
                            } else {
                                "by the lifetime fraction"
                            }
                        );
                        announced = Some(due);
                    }
                    let left = Duration::try_from(due - now).unwrap_or(Duration::ZERO);
                    let check = Duration::try_from(next_check - now).unwrap_or(Duration::ZERO);
                    let sleep = left.min(check).min(self.crl_wait()).min(MAX_SLEEP);
                    tokio::time::sleep(sleep).await;
                    continue;
                }
                tracing::info!(
                    serial = %info.serial,
                    "renewal due at {} ({}); renewing",
                    rfc3339(due),
                    if by_ari {
                        "by the CA's renewal information"
                    } else {
                        "by the lifetime fraction"
                    }
                );
            } else {
                tracing::info!(certificate = %status, "requesting a certificate");
            }
            match self
                .issue_and_install_replacing(replaced(&status).as_deref())
                .await
            {
                Ok(installed) => {
                    plan = None;
                    if let Some(e) = &installed.post_install_error {
                        tracing::error!("certificate installed, but {e}");
                    }
                    // A certificate that is due as soon as it is installed (a clock far ahead,
                    // or a renew_at that the backdated lifetime already passed) must not turn
                    // into a loop that hammers the CA: wait as after a failure.
                    if self.status().is_ok_and(|s| s.needs_issuance()) {
                        failures += 1;
                        let why = format!(
                            "the new certificate was already due for renewal at {} (check the \
                             device clock and renew_at)",
                            rfc3339(installed.renew_at)
                        );
                        self.back_off(failures, &why, None).await;
                    } else {
                        failures = 0;
                    }
                }
                Err(e) if fatal_in_run(&e, &status) => return Err(e),
                Err(e) if e.kind() == ErrorKind::Config => {
                    failures += 1;
                    tracing::error!("{e}");
                    let why = "cannot renew until the CA offers the profile again or the \
                               configuration changes";
                    self.back_off(failures, &why, None).await;
                }
                Err(e) => {
                    failures += 1;
                    let retry_after = e.retry_after();
                    self.back_off(failures, &e, retry_after).await;
                }
            }
        }
    }

    /// Sleeps after the `failures`-th failure in a row, saying why, for how long, and whether
    /// the installed certificate still covers the wait.
    async fn back_off(
        &self,
        failures: u32,
        why: &dyn std::fmt::Display,
        retry_after: Option<Duration>,
    ) {
        let delay = self
            .s
            .retry
            .delay(failures, schedule::jitter(), retry_after);
        let current = self.status().ok();
        let still = match current.as_ref().and_then(|s| s.info()) {
            Some(info) if info.not_after > OffsetDateTime::now_utc() => format!(
                "; the installed certificate stays in use until {}",
                rfc3339(info.not_after)
            ),
            _ => String::new(),
        };
        tracing::warn!(
            attempt = failures,
            "{why}; trying again in {:.1}s{still}",
            delay.as_secs_f64()
        );
        tokio::time::sleep(delay).await;
    }

    /// Gets a new certificate from the CA and installs it, whatever the installed one's status.
    pub async fn issue_and_install(&self) -> Result<Installed, Error> {
        self.issue_and_install_replacing(None).await
    }

    /// [`Self::issue_and_install`], naming the certificate it replaces by its ARI identifier
    /// (RFC 9773 §5) if there is one.
    pub async fn issue_and_install_replacing(
        &self,
        replaces: Option<&str>,
    ) -> Result<Installed, Error> {
        let s = &self.s;
        let l = &s.local;
        files::create_private_dir(&l.state_dir)?;
        let mut state = State::load(&l.state_dir)?;
        // Before the CA is asked anything: a token that cannot be used (wrong PIN, missing) is
        // a configuration error whatever the CA's state.
        self.settle_token_key()?;
        let (cert_key, rotation) = self.certificate_key(&State::load(&l.state_dir)?).await?;
        let csr = cert_key.csr_der(&l.identifiers, s.application_uri.as_deref())?;
        // The first request: a CA that fails the pin is refused here (SPEC §2.3).
        let client =
            AcmeClient::connect(&s.directory_url, s.trust.clone(), s.request_timeout).await?;
        // A profile the CA does not offer fails here, before an account or order is made.
        client.check_profile(s.profile.as_deref())?;

        let account_key_path = State::account_key_path(&l.state_dir);
        let (account_key, created) =
            KeyPair::load_or_generate(&account_key_path, s.account_key_algorithm)?;
        if created {
            tracing::info!(path = %account_key_path.display(), "generated the account key");
        }
        if state.directory_url.as_deref() != Some(&s.directory_url) {
            state.account_url = None;
        }

        let mut registered_now = false;
        let chain = loop {
            let account_url = match &state.account_url {
                Some(url) => url.clone(),
                None => {
                    let url = client
                        .new_account(&account_key, s.eab.as_ref(), s.agree_terms)
                        .await?;
                    state.directory_url = Some(s.directory_url.clone());
                    state.account_url = Some(url.clone());
                    state.save(&l.state_dir)?;
                    registered_now = true;
                    url
                }
            };
            match client
                .issue(
                    &account_key,
                    &account_url,
                    &l.identifiers,
                    replaces,
                    s.profile.as_deref(),
                    &s.enrollment,
                    &csr,
                    s.poll_timeout,
                )
                .await
            {
                Ok(chain) => break chain,
                // The CA lost the account (a reset CA): register the same key again, once.
                Err(Error::Problem { problem, .. })
                    if problem.kind() == Some(ProblemType::AccountDoesNotExist)
                        && !registered_now =>
                {
                    tracing::warn!(
                        account = %account_url,
                        "the CA does not know the stored account; registering again"
                    );
                    state.account_url = None;
                }
                Err(e) => return Err(e),
            }
        };

        let installed = self.install(&cert_key, &chain, client.pinned_root().as_ref())?;
        state.certificate_serial = Some(installed.serial.clone());
        state.installed_at = Some(rfc3339(OffsetDateTime::now_utc()));
        state.save(&l.state_dir)?;
        if let (Some((current, next)), Some(uri)) = (rotation, &l.key_uri) {
            drop(cert_key);
            if let Err(e) = self.promote_token_key(uri, &mut state, &current, &next) {
                tracing::warn!(
                    "the new certificate is installed, but the token still holds the old key \
                     ({e}); the rotation is completed at the next start"
                );
            }
        }
        let renew_at = installed.renewal_time(l.renew_at);
        tracing::info!(
            serial = %installed.serial,
            not_after = %rfc3339(installed.not_after),
            "installed a new certificate; renewal due at {}",
            rfc3339(renew_at)
        );
        // The CRLs of a new chain, before the hook: a failed fetch is logged and retried by
        // `run`, and does not hold back the certificate.
        if s.outputs.opcua_pki.is_some() {
            self.refresh_crls_scheduled(&client).await;
        }
        let post_install_error = match &s.post_install {
            Some(cmd) => run_post_install(cmd, s, &installed, HookEvent::Certificate)
                .await
                .err(),
            None => None,
        };
        Ok(Installed {
            info: installed,
            renew_at,
            post_install_error,
        })
    }

    /// A new key for every certificate, unless `reuse_key` is set and the key holds one. In a
    /// PKCS #11 token the new key is generated under the next label, and the labels of the
    /// rotation (current, next) are returned with it, for [`Self::promote_token_key`] once
    /// its certificate is installed. With `reuse_key` the token's key is generated once, then
    /// kept.
    async fn certificate_key(
        &self,
        state: &State,
    ) -> Result<(CertificateKey, Option<(String, String)>), Error> {
        let Some(uri) = &self.s.local.key_uri else {
            let key = self.file_certificate_key().await?;
            return Ok((CertificateKey::File(key), None));
        };
        let curve = token_curve(self.s.key_algorithm)?;
        let (current, next) = cert::token_key_labels(uri, state);
        if self.s.reuse_key {
            let (key, created) = TokenKey::open_or_generate(uri, current.as_deref(), curve)?;
            if created {
                tracing::info!(key = %key.uri(), "generated the certificate key in the token");
            }
            return Ok((CertificateKey::Token(Box::new(key)), None));
        }
        let (Some(current), Some(next)) = (current, next) else {
            return Err(rotation_needs_object());
        };
        let stale = pkcs11::destroy(uri, &next)?;
        if stale > 0 {
            tracing::warn!("destroyed {stale} key objects labelled {next:?} left in the token");
        }
        let key = TokenKey::generate(uri, Some(&next), curve)?;
        tracing::info!(
            key = %key.uri(),
            "generated a new certificate key in the token, labelled {next:?} until its \
             certificate is installed"
        );
        Ok((CertificateKey::Token(Box::new(key)), Some((current, next))))
    }

    /// Completes or undoes a rotation of the certificate key in a token that a stop
    /// interrupted. A new key whose certificate is installed replaces the old one
    /// (by `promote_token_key`); a new key without a certificate (the order did not
    /// complete) is destroyed, so the next order gets a fresh key, one the CA has never seen in
    /// a CSR. Nothing to do for key files or with `reuse_key`.
    pub fn settle_token_key(&self) -> Result<(), Error> {
        let l = &self.s.local;
        let Some(uri) = &l.key_uri else {
            return Ok(());
        };
        if self.s.reuse_key {
            return Ok(());
        }
        let mut state = State::load(&l.state_dir)?;
        let (Some(current), Some(next)) = cert::token_key_labels(uri, &state) else {
            return Ok(());
        };
        let new = pkcs11::public_key_labelled(uri, &next)?;
        let certified = cert::installed_public_key(&l.cert_path)?;
        if new.is_some() && new == certified {
            tracing::info!(
                "the certificate for the key labelled {next:?} is installed; completing the \
                 key rotation in the token"
            );
            self.promote_token_key(uri, &mut state, &current, &next)
        } else {
            let n = pkcs11::destroy(uri, &next)?;
            if n > 0 {
                tracing::warn!(
                    "destroyed the new key labelled {next:?} ({n} objects): its order did not \
                     complete, and every order gets a new key"
                );
            }
            Ok(())
        }
    }

    /// After the certificate for the key under `next` is installed: destroys the old key
    /// under `current` and gives the new one the configured label. A token that refuses the
    /// relabelling keeps the new key under `next`, which the state records as current.
    fn promote_token_key(
        &self,
        uri: &Pkcs11Uri,
        state: &mut State,
        current: &str,
        next: &str,
    ) -> Result<(), Error> {
        let object = uri.object.as_deref().ok_or_else(rotation_needs_object)?;
        let old = pkcs11::destroy(uri, current)?;
        if old > 0 {
            tracing::info!("destroyed the previous certificate key {current:?} in the token");
        }
        state.token_key_label = if next == object || pkcs11::relabel(uri, next, object)? {
            None
        } else {
            tracing::warn!(
                "the token does not let key labels change: the certificate key stays labelled \
                 {next:?}, recorded in the state file, and the next one is generated as \
                 {object:?}"
            );
            Some(next.to_owned())
        };
        state.save(&self.s.local.state_dir)
    }

    /// A new file key for every certificate, unless `reuse_key` is set and the key file holds
    /// one of the configured algorithm. A stored key of another algorithm is not reused: the
    /// configured `key_algorithm` wins, and a new key is made (with a warning), so changing the
    /// algorithm in the configuration takes effect at the next certificate.
    async fn file_certificate_key(&self) -> Result<CertKey, Error> {
        let path = &self.s.local.key_path;
        let alg = self.s.key_algorithm;
        if self.s.reuse_key {
            if let Some(pem) = files::read_optional(path)? {
                match CertKey::from_pem(&pem) {
                    Ok(k) if k.algorithm() == alg => return Ok(k),
                    Ok(k) => tracing::warn!(
                        path = %path.display(),
                        "the key file holds a {} key, but key_algorithm is {alg}; generating \
                         a new {alg} key",
                        k.algorithm()
                    ),
                    Err(e) => tracing::warn!(
                        path = %path.display(),
                        "cannot reuse the key file ({e}); generating a new key"
                    ),
                }
            }
        }
        if alg.rsa_bits().is_some() {
            tracing::info!("generating an {alg} certificate key (this takes a moment)");
        }
        // RSA key generation takes up to seconds of CPU: off the (single-threaded) runtime, so
        // the responders and timers keep running meanwhile.
        tokio::task::spawn_blocking(move || CertKey::generate(alg))
            .await
            .map_err(|e| Error::Crypto(format!("{alg} key generation failed: {e}")))?
    }

    /// Checks what the CA sent against the key and the identifiers, then writes key,
    /// certificate, chain and full chain, each atomically. The key goes first: a power cut
    /// between two renames leaves a key and certificate that do not match, which the next start
    /// notices ([`cert::status`]) and repairs by enrolling again.
    fn install(
        &self,
        key: &CertificateKey,
        chain_pem: &str,
        root: Option<&CertificateDer<'static>>,
    ) -> Result<CertInfo, Error> {
        let l = &self.s.local;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| Error::protocol("certificate", format!("bad PEM chain: {e}")))?;
        let Some((leaf, issuers)) = certs.split_first() else {
            return Err(Error::protocol(
                "certificate",
                "the chain holds no certificate",
            ));
        };
        let info = CertInfo::from_der(leaf).map_err(|e| Error::protocol("certificate", e))?;
        if info.public_key != key.public_key_bits() {
            return Err(Error::protocol(
                "certificate",
                "the issued certificate is not for the key in the CSR",
            ));
        }
        if info.identifiers != l.identifiers {
            return Err(Error::protocol(
                "certificate",
                format!(
                    "the issued certificate names {:?}, not the ordered identifiers",
                    info.identifiers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                ),
            ));
        }
        if let Some(reason) = application_uri_mismatch(&info, self.s.application_uri.as_deref()) {
            return Err(Error::protocol("certificate", reason));
        }
        // The chain must link up; with an OPC UA PKI directory, whose trust anchor is the
        // pinned root, it must also reach that root. (Without one, a standard CA such as Pebble
        // may issue under a root other than the one its HTTPS is pinned to.)
        let pinned = root.filter(|_| self.s.outputs.opcua_pki.is_some());
        output::verify_chain(&certs, pinned.map(|r| r.as_ref()))?;
        let pem_of = |certs: &[CertificateDer<'_>]| -> String {
            certs.iter().map(|c| key::pem("CERTIFICATE", c)).collect()
        };
        // A token key has no bytes to write: only a file key is stored, and the outputs that
        // hold the private key (DER, PKCS #12, OPC UA PKI) are refused with a token key when
        // the configuration is read.
        let file_key = match key {
            CertificateKey::File(key) => Some(key),
            CertificateKey::Token(_) => None,
        };
        if let Some(key) = file_key {
            key.store(&l.key_path)?;
        }
        write_public(&l.cert_path, &pem_of(std::slice::from_ref(leaf)))?;
        if let Some(p) = &l.chain_path {
            write_public(p, &pem_of(issuers))?;
        }
        if let Some(p) = &l.fullchain_path {
            write_public(p, &pem_of(&certs))?;
        }
        // The chain as issued, so the outputs can be rebuilt without the CA.
        write_public(&l.state_dir.join(ISSUED_CHAIN), &pem_of(&certs))?;
        if let Some(key) = file_key {
            output::write(
                &self.s.outputs,
                &l.cert_path,
                &l.key_path,
                key,
                &certs,
                root,
            )?;
        }
        Ok(info)
    }

    /// Fetches, checks and installs the CRLs of the OPC UA PKI directory's chain (SPEC §9.1)
    /// over `client`'s pinned HTTPS. Every CRL is tried; the first failure is returned, and a
    /// CRL that failed keeps its previously installed version.
    pub async fn refresh_crls(&self, client: &AcmeClient) -> Result<usize, Error> {
        let (changed, error) = self.refresh_crls_counting(client).await;
        match error {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// [`Self::refresh_crls`], returning how many CRLs changed even when another failed.
    async fn refresh_crls_counting(&self, client: &AcmeClient) -> (usize, Option<Error>) {
        match self.try_refresh_crls(client).await {
            Ok(r) => r,
            Err(e) => (0, Some(e)),
        }
    }

    async fn try_refresh_crls(&self, client: &AcmeClient) -> Result<(usize, Option<Error>), Error> {
        let Some(pki) = &self.s.outputs.opcua_pki else {
            return Ok((0, None));
        };
        let root = client.pinned_root();
        let targets = pki.crl_targets(root.as_deref())?;
        if targets.is_empty() {
            tracing::warn!(
                "the installed certificate names no CRL distribution point; {} gets no CRL",
                pki.dir().display()
            );
        }
        let mut first_error = None;
        let mut changed = 0;
        for target in &targets {
            let mut error = None;
            for url in &target.urls {
                let result = match client.fetch_crl(url).await {
                    Ok(der) => pki.write_crl(target, &der),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(info) => {
                        tracing::info!(
                            issuer = %target.issuer_name,
                            crl_number = info.number.as_deref().unwrap_or("none"),
                            revoked = info.revoked,
                            path = %target.path.display(),
                            "installed the CRL from {url}"
                        );
                        error = None;
                        changed += usize::from(info.changed);
                        break;
                    }
                    Err(e) => error = Some(e),
                }
            }
            if let Some(e) = error {
                // Stacks refuse every peer of an issuer whose CRL has expired (or, worse,
                // ignore it): say so loudly, every time.
                let expired = files::read_optional(&target.path)
                    .ok()
                    .flatten()
                    .and_then(|old| output::crl_next_update(&old))
                    .filter(|next| *next < OffsetDateTime::now_utc());
                if let Some(next) = expired {
                    tracing::error!(
                        issuer = %target.issuer_name,
                        path = %target.path.display(),
                        "the installed CRL expired at {} (its nextUpdate) and no newer one could \
                         be installed ({e}); OPC UA peers of this issuer may be refused",
                        rfc3339(next)
                    );
                }
                first_error.get_or_insert(e);
            }
        }
        Ok((changed, first_error))
    }

    /// [`Self::refresh_crls`], then schedules the next refresh: after `crl_refresh`, or after
    /// a failure sooner, with the same backoff as enrollment (never later than `crl_refresh`).
    /// Returns how many CRLs changed.
    async fn refresh_crls_scheduled(&self, client: &AcmeClient) -> usize {
        let (changed, error) = self.refresh_crls_counting(client).await;
        self.crls_done(error);
        changed
    }

    /// After a CRL refresh outside an enrollment: when a CRL changed, runs the post-install
    /// command with `DEVICE_CLIENT_EVENT=crl`, so a stack that reads its trust lists only at
    /// start (asyncua's `TrustStore.load()`) can reload them. A failure is logged.
    async fn crls_changed(&self, changed: usize) {
        let Some(cmd) = &self.s.post_install else {
            return;
        };
        if changed == 0 {
            return;
        }
        let info = match self.installed_pem() {
            Ok(Some((_, chain))) => CertInfo::from_der(&chain[0]).ok(),
            _ => None,
        };
        let Some(info) = info else {
            return;
        };
        if let Err(e) = run_post_install(cmd, &self.s, &info, HookEvent::Crl).await {
            tracing::error!("{changed} CRL(s) installed, but {e}");
        }
    }

    fn crls_done(&self, error: Option<Error>) {
        let mut sched = self.crls.lock().unwrap_or_else(PoisonError::into_inner);
        let wait = match error {
            None => {
                sched.failures = 0;
                self.s.crl_refresh
            }
            Some(e) => {
                sched.failures += 1;
                let wait = self
                    .s
                    .retry
                    .delay(sched.failures, schedule::jitter(), e.retry_after())
                    .min(self.s.crl_refresh);
                tracing::warn!(
                    attempt = sched.failures,
                    "cannot refresh the CRLs ({e}); the installed CRLs stay; trying again in \
                     {:.1}s",
                    wait.as_secs_f64()
                );
                wait
            }
        };
        sched.due = Some(tokio::time::Instant::now() + wait);
    }

    /// How long until the CRLs are due; the longest sleep if there are none to keep.
    fn crl_wait(&self) -> Duration {
        if self.s.outputs.opcua_pki.is_none() {
            return MAX_SLEEP;
        }
        let sched = self.crls.lock().unwrap_or_else(PoisonError::into_inner);
        sched.due.map_or(Duration::ZERO, |due| {
            due.saturating_duration_since(tokio::time::Instant::now())
        })
    }

    /// In `run`: refreshes the CRLs when they are due and a certificate is installed in the
    /// OPC UA PKI directory (an enrollment brings its own).
    async fn refresh_crls_if_due(&self) {
        let Some(pki) = &self.s.outputs.opcua_pki else {
            return;
        };
        if !self.crl_wait().is_zero() || !pki.own_cert().is_file() {
            return;
        }
        let s = &self.s;
        match AcmeClient::connect(&s.directory_url, s.trust.clone(), s.request_timeout).await {
            Ok(client) => {
                let changed = self.refresh_crls_scheduled(&client).await;
                self.crls_changed(changed).await;
            }
            Err(e) => self.crls_done(Some(e)),
        }
    }
}

/// Why `info` does not carry the configured ApplicationUri, if it does not: with
/// `application_uri` set, the certificate's URI subjectAltNames must be exactly that one URI.
fn application_uri_mismatch(info: &CertInfo, application_uri: Option<&str>) -> Option<String> {
    let uri = application_uri?;
    if info.uris.len() == 1 && info.uris[0] == uri {
        return None;
    }
    let found = if info.uris.is_empty() {
        "no URI subjectAltName".to_owned()
    } else {
        crate::error::printable(&format!("the URIs {}", info.uris.join(", ")))
    };
    Some(format!(
        "the certificate carries {found}, but application_uri is {uri:?}"
    ))
}

fn write_public(path: &Path, text: &str) -> Result<(), Error> {
    files::write_atomic(path, text.as_bytes(), files::PUBLIC_MODE)
}

/// The certificate key wherever it is held: key material made here ([`CertKey`], any
/// [`KeyAlgorithm`]) and written to the key file when its certificate is installed, or a key in
/// a PKCS #11 token ([`TokenKey`], P-256 or P-384), of which no key file is written.
#[derive(Debug)]
pub enum CertificateKey {
    /// Made here; stored in the key file at installation.
    File(CertKey),
    /// In a token; only signatures leave it.
    Token(Box<TokenKey>),
}

impl CertificateKey {
    /// The certified public key: the subjectPublicKey bits, for EC keys the uncompressed SEC1
    /// point. Compared with a certificate's.
    pub fn public_key_bits(&self) -> &[u8] {
        match self {
            Self::File(k) => k.public_key_bits(),
            Self::Token(k) => k.public_key_sec1().unwrap_or_default(),
        }
    }

    /// The CSR for `identifiers` (and the ApplicationUri, if any), signed with this key: by
    /// rcgen for a file key, inside the token for a token key.
    pub fn csr_der(
        &self,
        identifiers: &[Identifier],
        application_uri: Option<&str>,
    ) -> Result<Vec<u8>, Error> {
        match self {
            Self::File(k) => csr_der(k, identifiers, application_uri),
            Self::Token(k) => {
                let signer = k.csr_signer()?;
                csr_der_with(&signer, identifiers, application_uri)
                    .map_err(|e| signer.take_error().map_or(e, Error::from))
            }
        }
    }
}

/// The error for a token key without `object=` and without `reuse_key`.
pub(crate) fn rotation_needs_object() -> Error {
    Error::Config(
        "a certificate key in a PKCS #11 token is replaced by a new one for every certificate, \
         generated under the URI's object= with \".next\" and then relabelled: name the key \
         with object= (or set reuse_key to keep one key)"
            .into(),
    )
}

/// The token curve for the configured certificate key algorithm: P-256 or P-384, a
/// configuration error for the others.
pub(crate) fn token_curve(alg: KeyAlgorithm) -> Result<Curve, Error> {
    match alg {
        KeyAlgorithm::P256 => Ok(Curve::P256),
        KeyAlgorithm::P384 => Ok(Curve::P384),
        KeyAlgorithm::Ed25519 | KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => {
            Err(Error::Config(format!(
                "key_algorithm {alg} cannot be used with a pkcs11: key: a certificate key in a \
                 PKCS #11 token is p256 or p384 (or keep {alg} in a key file)"
            )))
        }
    }
}

/// A PKCS #10 CSR for `identifiers`, signed by `key`: the names as subjectAltNames and an empty
/// subject, since the CA takes the names from the order anyway (SPEC §7.4, §8.2).
/// `application_uri` adds a uniformResourceIdentifier subjectAltName, the OPC UA
/// ApplicationUri that the `opcua` profile copies from the CSR (SPEC §8.3).
///
/// With a `permanent-identifier` the CSR follows the certificate's shape (SPEC §7.4 check 5,
/// §8.2): CN = the serial of the first one, and every identifier in the subjectAltName, the
/// permanent identifiers as otherName PermanentIdentifier (which rcgen cannot write, so the
/// extension is encoded here).
pub fn csr_der(
    key: &CertKey,
    identifiers: &[Identifier],
    application_uri: Option<&str>,
) -> Result<Vec<u8>, Error> {
    csr_der_with(&key.rcgen()?, identifiers, application_uri)
}

/// [`csr_der`] for any key rcgen can sign with, such as a key in a PKCS #11 token.
pub fn csr_der_with(
    kp: &impl rcgen::SigningKey,
    identifiers: &[Identifier],
    application_uri: Option<&str>,
) -> Result<Vec<u8>, Error> {
    if let Some(uri) = application_uri {
        check_application_uri(uri)?;
    }
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(serial) = identifiers.iter().find_map(Identifier::serial) {
        if serial.chars().count() <= 64 {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, serial);
        }
        let mut names = Vec::new();
        for id in identifiers {
            names.extend(id.general_name_der()?);
        }
        if let Some(uri) = application_uri {
            names.extend(crate::der::tlv(crate::der::URI, uri.as_bytes()));
        }
        let san = crate::der::tlv(crate::der::SEQUENCE, &names);
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 17],
                san,
            ));
    } else {
        for id in identifiers {
            let san = match id.kind.as_str() {
                "dns" => rcgen::SanType::DnsName(
                    id.value
                        .clone()
                        .try_into()
                        .map_err(|e| Error::Config(format!("{id}: {e}")))?,
                ),
                "ip" => rcgen::SanType::IpAddress(
                    id.value
                        .parse()
                        .map_err(|_| Error::Config(format!("{id}: not an IP address")))?,
                ),
                other => {
                    return Err(Error::Config(format!(
                        "identifier type {other} cannot go into a CSR"
                    )))
                }
            };
            params.subject_alt_names.push(san);
        }
        if let Some(uri) = application_uri {
            params.subject_alt_names.push(rcgen::SanType::URI(
                uri.to_owned()
                    .try_into()
                    .map_err(|e| Error::Config(format!("application_uri {uri:?}: {e}")))?,
            ));
        }
    }
    let csr = params
        .serialize_request(kp)
        .map_err(|e| Error::Crypto(format!("cannot make the CSR: {e}")))?;
    Ok(csr.der().to_vec())
}

/// Checks that `uri` is an absolute URI (RFC 3986 §4.3: a scheme, `:`, and more), written in
/// printable ASCII without spaces, as an IA5String subjectAltName and OPC 10000-6 §6.2.2 ("a
/// valid URL … or a valid URN") need. Which prefixes the CA accepts is the CA's policy.
pub fn check_application_uri(uri: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::Config(format!("application_uri {uri:?}: {why}")));
    if let Some(c) = uri.chars().find(|c| !c.is_ascii_graphic()) {
        return bad(&format!(
            "contains {}; write it in printable ASCII without spaces (percent-encode the rest)",
            if c.is_whitespace() {
                "whitespace".to_owned()
            } else {
                format!("U+{:04X}", u32::from(c))
            }
        ));
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return bad("not an absolute URI: it has no scheme (e.g. urn:plant.example:line1:plc7)");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return bad("not an absolute URI: the scheme must start with a letter");
    }
    if rest.is_empty() {
        return bad("not an absolute URI: nothing follows the scheme");
    }
    if uri.contains('#') {
        return bad("an absolute URI has no fragment (#)");
    }
    // RFC 3986 §2: only unreserved and reserved characters, and `%` with two hex digits.
    let bytes = uri.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return bad("a % must start a percent-escape of two hex digits (RFC 3986 §2.1)");
            }
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&b);
        if !allowed {
            return bad(&format!(
                "contains {:?}, which a URI may hold only percent-encoded (RFC 3986 §2)",
                char::from(b)
            ));
        }
        i += 1;
    }
    Ok(())
}

/// Why the post-install command runs, in its `DEVICE_CLIENT_EVENT`.
#[derive(Clone, Copy, Debug)]
enum HookEvent {
    /// A new certificate, or outputs rebuilt from the installed one.
    Certificate,
    /// A refreshed CRL whose bytes changed.
    Crl,
}

impl HookEvent {
    fn as_str(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Crl => "crl",
        }
    }
}

/// Runs the post-install command with `sh -c`, with the installed paths in the environment,
/// and waits for it, up to the configured limit.
async fn run_post_install(
    cmd: &str,
    s: &Settings,
    info: &CertInfo,
    event: HookEvent,
) -> Result<(), Error> {
    let l = &s.local;
    tracing::info!(command = cmd, "running the post-install command");
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(cmd)
        .env("DEVICE_CLIENT_CERT", &l.cert_path)
        .env("DEVICE_CLIENT_KEY", &l.key_path)
        .env("DEVICE_CLIENT_SERIAL", &info.serial)
        .env("DEVICE_CLIENT_NOT_AFTER", rfc3339(info.not_after))
        .env("DEVICE_CLIENT_EVENT", event.as_str())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // Its output goes to our stderr, with the logs: stdout is the client's own summary.
    if let Ok(err) = std::io::stderr().as_fd().try_clone_to_owned() {
        c.stdout(std::process::Stdio::from(err));
    }
    if let Some(p) = &l.chain_path {
        c.env("DEVICE_CLIENT_CHAIN", p);
    }
    if let Some(p) = &l.fullchain_path {
        c.env("DEVICE_CLIENT_FULLCHAIN", p);
    }
    if let Some(p) = &s.outputs.pkcs12 {
        c.env("DEVICE_CLIENT_PKCS12", &p.path);
    }
    if let Some(pki) = &s.outputs.opcua_pki {
        c.env("DEVICE_CLIENT_OPCUA_PKI", pki.dir());
    }
    let fail = |detail: String| Error::PostInstall {
        command: cmd.to_owned(),
        detail,
    };
    let mut child = c.spawn().map_err(|e| fail(format!("cannot start: {e}")))?;
    match tokio::time::timeout(s.post_install_timeout, child.wait()).await {
        Err(_) => {
            let _ = child.kill().await;
            Err(fail(format!(
                "did not finish within {}s and was killed",
                s.post_install_timeout.as_secs()
            )))
        }
        Ok(Err(e)) => Err(fail(format!("cannot wait for it: {e}"))),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(fail(format!("failed with {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyAlgorithm;

    #[test]
    fn the_certificate_must_carry_exactly_the_configured_application_uri() {
        let uri = "urn:plant.example:line1:plc7";
        let key = CertKey::generate(KeyAlgorithm::P256).expect("key");
        let dns = [Identifier::parse("plc-7.plant").expect("dns")];
        let cert_for = |uris: &[&str]| {
            let mut params =
                rcgen::CertificateParams::new(vec!["plc-7.plant".to_owned()]).expect("params");
            for u in uris {
                params
                    .subject_alt_names
                    .push(rcgen::SanType::URI((*u).try_into().expect("uri")));
            }
            let der = params
                .self_signed(&key.rcgen().expect("rcgen"))
                .expect("cert");
            CertInfo::from_der(der.der()).expect("parses")
        };
        let with = cert_for(&[uri]);
        assert_eq!(with.uris, [uri]);
        assert_eq!(with.identifiers, dns);
        assert_eq!(application_uri_mismatch(&with, Some(uri)), None);
        // Without application_uri, whatever the CA put there is not the device's business.
        assert_eq!(application_uri_mismatch(&with, None), None);
        let changed = application_uri_mismatch(&with, Some("urn:plant.example:line2:plc7"))
            .expect("mismatch");
        assert!(
            changed.contains(uri) && changed.contains("line2"),
            "{changed}"
        );
        let none = application_uri_mismatch(&cert_for(&[]), Some(uri)).expect("mismatch");
        assert!(none.contains("no URI subjectAltName"), "{none}");
        let two = cert_for(&[uri, "urn:other"]);
        assert!(application_uri_mismatch(&two, Some(uri)).is_some());
    }

    #[test]
    fn run_survives_a_dropped_profile_only_with_a_usable_certificate() {
        let info = Box::new(CertInfo {
            serial: "01".into(),
            subject: String::new(),
            issuer: String::new(),
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::now_utc() + time::Duration::days(30),
            identifiers: Vec::new(),
            uris: Vec::new(),
            public_key: Vec::new(),
            cert_id: None,
        });
        let renew_at = OffsetDateTime::now_utc();
        let dropped = Error::ProfileNotOffered {
            profile: "opcua".into(),
            offered: vec!["default (TLS)".into()],
        };
        for usable in [
            CertStatus::Valid {
                info: info.clone(),
                renew_at,
            },
            CertStatus::RenewalDue {
                info: info.clone(),
                renew_at,
            },
        ] {
            assert!(!fatal_in_run(&dropped, &usable), "{usable:?}");
            // A configuration error of the device itself still stops it.
            assert!(fatal_in_run(&Error::Config("x".into()), &usable));
        }
        for unusable in [
            CertStatus::Missing,
            CertStatus::Expired { info },
            CertStatus::Unusable {
                reason: "x".into(),
                info: None,
            },
        ] {
            assert!(fatal_in_run(&dropped, &unusable), "{unusable:?}");
        }
        let down = Error::Timeout {
            what: "order".into(),
            waited: Duration::from_secs(1),
        };
        assert!(!fatal_in_run(&down, &CertStatus::Missing));
    }

    #[test]
    fn csr_names_exactly_the_identifiers() {
        let key = CertKey::generate(KeyAlgorithm::P256).expect("key");
        let ids = [
            Identifier::parse("plc-7.plant").expect("dns"),
            Identifier::parse("10.0.0.7").expect("ip"),
            Identifier::parse("2001:db8::7").expect("ip6"),
        ];
        let der = csr_der(&key, &ids, None).expect("csr");
        use x509_parser::prelude::FromDer as _;
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .expect("parses");
        csr.verify_signature().expect("self-signed by the key");
        assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
        assert_eq!(
            csr.certification_request_info
                .subject_pki
                .subject_public_key
                .data
                .as_ref(),
            key.public_key_bits()
        );
        let mut names = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    names.push(n.to_string());
                }
            }
        }
        assert_eq!(
            names,
            [
                "DNSName(plc-7.plant)",
                "IPAddress(0a:00:00:07)",
                "IPAddress(20:01:0d:b8:00:00:00:00:00:00:00:00:00:00:00:07)"
            ]
        );
    }

    #[test]
    fn csr_for_a_permanent_identifier_has_cn_serial_and_other_name() {
        let key = CertKey::generate(KeyAlgorithm::P256).expect("key");
        let ids = [
            Identifier::parse("127.0.0.1").expect("ip"),
            Identifier::permanent("Sn-0042/1.3.6.1.4.1.32473").expect("permanent"),
        ];
        let der = csr_der(&key, &ids, None).expect("csr");
        use x509_parser::prelude::FromDer as _;
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .expect("parses");
        csr.verify_signature().expect("self-signed by the key");
        let cn: Vec<_> = csr
            .certification_request_info
            .subject
            .iter_common_name()
            .map(|c| c.as_str().expect("text").to_owned())
            .collect();
        assert_eq!(cn, ["Sn-0042"]);
        // SPEC §8.2's example GeneralName, byte for byte.
        let other_name = ids[1].general_name_der().expect("der");
        assert!(der
            .windows(other_name.len())
            .any(|w| w == other_name.as_slice()));
        assert_eq!(
            other_name,
            [
                0xa0, 0x21, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x03, 0xa0, 0x15,
                0x30, 0x13, 0x0c, 0x07, 0x53, 0x6e, 0x2d, 0x30, 0x30, 0x34, 0x32, 0x06, 0x08, 0x2b,
                0x06, 0x01, 0x04, 0x01, 0x81, 0xfd, 0x59
            ]
        );
        let mut names = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    match n {
                        x509_parser::extensions::GeneralName::OtherName(oid, v) => {
                            names.push(format!(
                                "{}={}",
                                oid.to_id_string(),
                                crate::der::permanent_identifier(v).expect("decodes")
                            ))
                        }
                        other => names.push(other.to_string()),
                    }
                }
            }
        }
        assert_eq!(
            names,
            [
                "IPAddress(7f:00:00:01)",
                "1.3.6.1.5.5.7.8.3=Sn-0042/1.3.6.1.4.1.32473"
            ]
        );
    }

    /// The URI subjectAltNames of a CSR, and its key's algorithm OID.
    fn csr_uris(der: &[u8]) -> (Vec<String>, String) {
        use x509_parser::prelude::FromDer as _;
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
            .expect("parses");
        csr.verify_signature().expect("self-signed by the key");
        let mut uris = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    if let x509_parser::extensions::GeneralName::URI(u) = n {
                        uris.push((*u).to_owned());
                    }
                }
            }
        }
        let alg = csr.signature_algorithm.algorithm.to_id_string();
        (uris, alg)
    }

    #[test]
    fn csr_carries_the_application_uri_and_is_signed_by_each_key_type() {
        let uri = "urn:plant.example:line1:plc7";
        let dns = [Identifier::parse("plc-7.plant").expect("dns")];
        for (alg, sig_oid) in [
            (KeyAlgorithm::Rsa2048, "1.2.840.113549.1.1.11"), // sha256WithRSAEncryption
            (KeyAlgorithm::Ed25519, "1.3.101.112"),
            (KeyAlgorithm::P384, "1.2.840.10045.4.3.3"), // ecdsa-with-SHA384
        ] {
            let key = CertKey::generate(alg).expect("key");
            let der = csr_der(&key, &dns, Some(uri)).expect("csr");
            assert_eq!(csr_uris(&der), (vec![uri.to_owned()], sig_oid.to_owned()));
        }
        // The hand-encoded SAN of a permanent identifier carries it too.
        let key = CertKey::generate(KeyAlgorithm::P256).expect("key");
        let ids = [Identifier::permanent("SN-9/1.3.6.1.4.1.32473").expect("permanent")];
        let der = csr_der(&key, &ids, Some(uri)).expect("csr");
        assert_eq!(csr_uris(&der).0, [uri]);
        let der = csr_der(&key, &dns, None).expect("csr");
        assert!(csr_uris(&der).0.is_empty());
    }

    #[test]
    fn application_uris_must_be_absolute_printable_ascii() {
        for ok in [
            "urn:plant.example:line1:plc7",
            "http://plant.example/opcua/plc7",
            "urn:a",
            "urn:plant.example:Z%C3%A4hler",
            "http://[2001:db8::7]:4840/ua?x=1&y=%2F;z=(a)*'b'~!$,@",
        ] {
            check_application_uri(ok).expect(ok);
        }
        for (bad, why) in [
            ("plc7", "no scheme"),
            ("1urn:x", "start with a letter"),
            ("urn:", "nothing follows"),
            ("urn:a b", "whitespace"),
            ("urn:a\u{7}", "U+0007"),
            ("urn:ä", "U+00E4"),
            ("urn:a#b", "fragment"),
            ("", "no scheme"),
            ("urn:a%", "percent-escape"),
            ("urn:a%4", "percent-escape"),
            ("urn:a%zz", "percent-escape"),
            ("urn:a<b>", "'<'"),
            ("urn:a\"b", "'\"'"),
            ("urn:a\\b", "'\\\\'"),
            ("urn:a^b", "'^'"),
            ("urn:a`b", "'`'"),
            ("urn:a{b}", "'{'"),
            ("urn:a|b", "'|'"),
        ] {
            let err = check_application_uri(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn permanent_identifiers_are_checked_like_the_ca_does() {
        for ok in ["SN-1", "sn 0001-ä", "X/1.3.6.1.4.1.32473", "X/2.999"] {
            assert!(Identifier::permanent(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/1.2", "A/", "A/1", "A/3.1", "A/1.40", "A/01.2", "A/B/1.2", "SN\n1",
        ] {
            assert!(Identifier::permanent(bad).is_err(), "{bad:?}");
        }
        assert!(Identifier::permanent(&"x".repeat(129)).is_err());
        assert_eq!(
            Identifier::permanent("SN-1/1.2.3").expect("ok").serial(),
            Some("SN-1")
        );
    }
}
