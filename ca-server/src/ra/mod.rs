//! The registration authority: the rules of RFC 8555 over the store, without HTTP. Accounts,
//! orders, authorizations, enrollment credentials, operator approval, identity binding,
//! renewal, key hygiene and retention each have a module; [`Ra`] is the state they share.

pub mod account;
pub mod approval;
pub mod audit;
pub mod authz;
pub mod backup;
pub mod crl;
pub mod eab;
pub mod history;
pub mod identity;
pub mod instances;
pub mod keycheck;
pub mod operator;
pub mod order;
pub mod renewal;
pub mod retention;
pub mod revocation;

use std::ops::Deref;
use std::sync::Arc;

use crate::ca::CertificateAuthority;
use crate::config::Config;
use crate::ra::account::Account;
use crate::ra::eab::EabStore;
use crate::storage::{Db, Table};
use crate::va::Validator;
use crate::wire::paths;
use crate::{Error, Result};

/// Everything the registration authority works with.
pub struct Inner {
    /// The checked configuration.
    pub cfg: Config,
    /// `cfg.base_url()`, computed once.
    pub base_url: String,
    /// The store.
    pub db: Db,
    /// Issuance.
    pub ca: CertificateAuthority,
    /// Validation.
    pub va: Validator,
    /// External account binding credentials.
    pub eab: EabStore,
    /// The manufacturer trust anchors device attestations are verified against.
    pub anchors: crate::va::attest::anchors::TrustAnchorStore,
    /// The console's operators, read at each console request.
    pub operators: operator::OperatorStore,
    /// The audit log of operator changes.
    pub audit: audit::AuditLog,
    /// Operator approval requests and decisions.
    pub approvals: approval::ApprovalQueue,
    /// Serialises changes to the account key index (newAccount, keyChange).
    pub account_keys: tokio::sync::Mutex<()>,
    /// The signed CRLs, cached.
    pub crl: crate::ca::crl::CrlCache,
    /// Certificate profiles (SPEC §8.3), checked at start.
    pub profiles: crate::ca::profiles::Profiles,
    /// Rate limits (`[rate_limits]`).
    pub limits: crate::ratelimit::RateLimiter,
    /// The names and addresses the CA serves as, which no account may order (`policy`).
    pub own_names: crate::va::policy::OwnNames,
    /// What the server counts and times (`/metrics`).
    pub metrics: crate::metrics::Metrics,
    /// The heartbeats of the instances sharing the store.
    pub instances: instances::Liveness,
}

/// This server process, as recorded with the work it has under way (a validation, an
/// issuance). With the embedded store only one process serves a data directory (sled locks
/// it), so work recorded by another process was cut off when that process stopped and will
/// never finish: a poll after a restart takes it up again, or reports it failed, at once
/// instead of after a timeout ([`Ra::cut_off`]). With a shared store another process is most
/// likely another instance still at work: its work is taken up once its heartbeat stops
/// ([`instances`]), or by the work's age.
pub fn process_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    // Without the system RNG the time of the start tells processes apart as well.
    ID.get_or_init(|| {
        crate::types::new_id().unwrap_or_else(|_| format!("t{}", crate::types::now()))
    })
}

/// Cheaply cloneable handle on [`Inner`].
#[derive(Clone)]
pub struct Ra(Arc<Inner>);

impl Deref for Ra {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Ra {
    /// Wraps the parts.
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    /// Whether other CA instances share this store (`storage.backend = "postgres"`), so what
    /// one process keeps in memory does not bind them.
    pub fn shared_store(&self) -> bool {
        self.cfg.storage.backend == crate::storage::Backend::Postgres
    }

    /// Whether work recorded as under way by the process `by` ([`process_id`]) was cut off by
    /// that process's end: it is another process's, and no other instance shares the store,
    /// or that instance's heartbeat has stopped.
    pub fn cut_off(&self, by: Option<&str>) -> bool {
        match by {
            Some(me) if me == process_id() => false,
            _ if !self.shared_store() => true,
            Some(other) => self.instances.is_gone(&self.db, other),
            None => false,
        }
    }

    /// Absolute URL for a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The account a `kid` names, which must be valid.
    pub fn account_by_kid(&self, kid: &str) -> Result<Account> {
        let id = kid
            .strip_prefix(&self.base_url)
            .and_then(|p| p.strip_prefix(paths::ACCOUNT))
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or(Error::AccountDoesNotExist)?;
        let acct: Account = self
            .db
            .get(Table::Accounts, id)?
            .ok_or(Error::AccountDoesNotExist)?;
        acct.require_valid()?;
        Ok(acct)
    }
}
