//! The operator's channels to a running CA, and what operators may do through them.
//!
//! - [`socket`]: a small HTTP API on a Unix socket, `<data_dir>/admin.sock`, readable by the
//!   CA's user only, which the command line on the CA host talks to. Whoever can open it is
//!   the CA's owner, so it acts with the admin role.
//! - [`api`]: the console, HTTPS with client certificates on its own listener (`[admin]`):
//!   the REST API and its OpenAPI document, and [`ui`], the web pages over the same handlers. A request is an operator's when its
//!   TLS client certificate is that of an active operator record
//!   ([`crate::ra::operator`]); its role decides what it may do.
//!
//! Both mount the same handlers. A handler says in its signature which role it needs
//! ([`Viewer`], [`Approver`], [`Admin`]); without an operator the request gets 401, with too
//! small a role 403. Every change is appended to the audit log ([`crate::ra::audit`]) before
//! it is reported done.
//!
//! sled admits one process per store, so commands that need the store (revocation, audit,
//! renewal) cannot open it while the CA runs; they ask the CA instead. File-based state that
//! the operator owns (EAB credentials, trust anchors, approval decisions, operators) stays in
//! files, which the command line also edits directly; with a CA on PostgreSQL, credentials and
//! approvals are records of the shared store, which the command line reaches through the CA's
//! configuration.

pub mod api;
mod backup;
pub mod fleet;
pub mod socket;
pub mod ui;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::ra::audit::Actor;
use crate::ra::operator::Role;
use crate::Error;

/// Who is asking, once authenticated: the actor the audit log names and the role it acts with.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Name and address, for the audit log.
    pub actor: Actor,
    /// What it may do.
    pub role: Role,
}

impl Caller {
    fn from_parts(parts: &Parts, needs: Role) -> Result<Self, Error> {
        let caller = parts.extensions.get::<Self>().cloned().ok_or_else(|| {
            Error::OperatorRequired(
                "present the client certificate of an active operator (ca-server operator add)"
                    .to_owned(),
            )
        })?;
        if caller.role < needs {
            return Err(Error::Forbidden(format!(
                "operator {} has role {}; this needs {needs}",
                caller.actor.name, caller.role
            )));
        }
        Ok(caller)
    }
}

/// An extractor that admits callers with at least one role.
macro_rules! role_guard {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        pub struct $name(pub Caller);

        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = Error;

            async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
                Caller::from_parts(parts, $role).map(Self)
            }
        }
    };
}

role_guard!(
    /// Any operator: reads.
    Viewer,
    Role::Viewer
);
role_guard!(
    /// An approver or admin: approvals and early renewal.
    Approver,
    Role::Approver
);
role_guard!(
    /// An admin: revocation, credentials, trust anchors, identities, operators.
    Admin,
    Role::Admin
);
