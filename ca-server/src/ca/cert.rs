//! Issued certificates: download (RFC 8555 §7.4.2) and revocation (§7.6).

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::ca::{IssuedCert, IssuerKind};
use crate::ra::authz::Authz;
use crate::ra::order::Order;
use crate::ra::Ra;
use crate::storage::Table;
use crate::types::now;
use crate::types::Identifier;
use crate::wfe::jws::{AccountRequest, AnyRequest, Signer};
use crate::wfe::AppState;
use crate::{Error, Result};

/// A revocation record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revocation {
    /// RFC 5280 §5.3.1 reason code.
    pub reason: u8,
    /// Unix time.
    pub at: i64,
    /// The intermediate that issued the certificate, whose CRL lists it (records from before
    /// the RSA intermediate have none: EC).
    #[serde(default)]
    pub issuer: IssuerKind,
    /// Who asked; `None` in records from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<RevokedBy>,
}

/// Who revoked a certificate (RFC 8555 §7.6 lists who may).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RevokedBy {
    /// The account that ordered it.
    Account,
    /// An account holding challenge-proven authorizations for all its identifiers.
    AuthorizationHolder,
    /// A request signed with the certificate's own key.
    CertificateKey,
    /// The operator, on the CA host.
    Operator,
}

impl Revocation {
    /// Whether this revocation shows that the key is compromised, so no certificate may
    /// certify it again: reason keyCompromise, from someone who holds the key (a request
    /// signed with it) or from the operator. An account's word alone does not put a key,
    /// perhaps another device's, on that list. Records from before `by` was kept count.
    pub fn proves_key_compromise(&self) -> bool {
        self.reason == REASON_KEY_COMPROMISE
            && self
                .by
                .is_none_or(|by| matches!(by, RevokedBy::CertificateKey | RevokedBy::Operator))
    }
}

/// RFC 5280 §5.3.1 CRLReason keyCompromise.
pub const REASON_KEY_COMPROMISE: u8 = 1;

/// A stored certificate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Certificate {
    /// Serial number, lowercase hex; also the URL id.
    pub id: String,
    /// Account that ordered it.
    pub account_id: String,
    /// Order it was issued for.
    pub order_id: String,
    /// Certified identifiers.
    pub identifiers: Vec<Identifier>,
    /// Leaf DER, base64url.
    pub der: String,
    /// Leaf + intermediate, PEM.
    pub chain_pem: String,
    /// The intermediate that signed it (records from before the RSA intermediate have none:
    /// EC).
    #[serde(default)]
    pub issuer: IssuerKind,
    /// Validity, Unix times.
    pub not_before: i64,
    /// Validity end.
    pub not_after: i64,
    /// Set once revoked.
    #[serde(default)]
    pub revoked: Option<Revocation>,
    /// The order that replaces it (RFC 9773 `replaces`).
    #[serde(default)]
    pub replaced_by: Option<String>,
    /// Set by the operator (`ca-server renew-early`): the renewal window starts here.
    #[serde(default)]
    pub renew_after: Option<i64>,
    /// The certificate profile it was issued under (SPEC §8.3); `None` for certificates
    /// issued before profiles existed.
    #[serde(default)]
    pub profile: Option<String>,
}

impl Certificate {
    /// The record for a freshly issued certificate.
    pub fn new(account_id: &str, order: &Order, issued: &IssuedCert) -> Self {
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
        }
    }
}

/// Marks a certificate revoked under compare-and-swap (`alreadyRevoked` if it was), adds it to
/// the table its issuer's CRL is made from and invalidates the cached CRLs so the next one
/// lists it. Returns the issuing intermediate. The caller flushes, then publishes the CRL
/// ([`crate::ca::crl::publish`]).
pub fn record_revocation(app: &Ra, serial: &str, reason: u8, by: RevokedBy) -> Result<IssuerKind> {
    let at = now();
    let revoked = app
        .db
        .update(Table::Certificates, serial, |mut c: Certificate| {
            if c.revoked.is_some() {
                return Err(Error::AlreadyRevoked);
            }
            c.revoked = Some(Revocation {
                reason,
                at,
                issuer: c.issuer,
                by: Some(by),
            });
            Ok(c)
        })?
        .revoked
        .ok_or_else(|| Error::Storage(format!("revocation of {serial} was not stored")))?;
    app.db.put(Table::Revocations, serial, &revoked)?;
    app.crl.invalidate();
    Ok(revoked.issuer)
}

/// Whether `account_id` holds currently valid authorizations covering every identifier,
/// each proven by a challenge ([`Authz::proven_by_challenge`]). An identifier an enrollment
/// credential or an operator vouched for gives no right over another account's certificate.
fn holds_authorizations(app: &Ra, account_id: &str, ids: &[Identifier]) -> Result<bool> {
    let mut covered = std::collections::BTreeSet::new();
    let prefix = format!("{account_id}\0");
    for key in app.db.keys_with_prefix(Table::AccountOrders, &prefix)? {
        let Some(order) = key
            .strip_prefix(&prefix)
            .map(|id| app.db.get::<Order>(Table::Orders, id))
            .transpose()?
            .flatten()
        else {
            continue;
        };
        for authz_id in &order.authzs {
            if let Some(a) = app.db.get::<Authz>(Table::Authzs, authz_id)? {
                if a.proven_by_challenge() {
                    covered.insert(a.identifier);
                }
            }
        }
    }
    Ok(ids.iter().all(|i| covered.contains(i)))
}

/// `POST /acme/cert/{id}` (POST-as-GET) — RFC 8555 §7.4.2.
///
/// > The default format of the certificate is application/pem-certificate-chain
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.4.2>
pub async fn download(
    State(app): State<AppState>,
    Path(id): Path<String>,
    r: AccountRequest,
) -> Result<Response> {
    if !r.req.is_post_as_get() {
        return Err(Error::Malformed(
            "certificates are fetched with POST-as-GET".into(),
        ));
    }
    let cert = app
        .db
        .get::<Certificate>(Table::Certificates, &id)?
        .filter(|c| c.account_id == r.account.id)
        .ok_or(Error::NotFound("certificate"))?;
    let mut resp = (StatusCode::OK, cert.chain_pem).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pem-certificate-chain"),
    );
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    certificate: String,
    #[serde(default)]
    reason: Option<i64>,
}

/// RFC 5280 §5.3.1 reasons a subscriber may give. cACompromise (2), certificateHold (6),
/// removeFromCRL (8) and aACompromise (10) are the CA's business, 7 is unassigned.
const ALLOWED_REASONS: &[i64] = &[0, 1, 3, 4, 5, 9];

/// `POST /acme/revoke-cert` — RFC 8555 §7.6.
///
/// > The server MUST consider at least the following accounts authorized for a given
/// > certificate: the account that issued the certificate; an account that holds
/// > authorizations for all of the identifiers in the certificate. The server MUST also
/// > consider a revocation request valid if it is signed with the private key corresponding
/// > to the public key in the certificate.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.6>
pub async fn revoke(
    State(app): State<AppState>,
    AnyRequest(signer, req): AnyRequest,
) -> Result<Response> {
    let p: Revoke = req.json()?;
    let reason = p.reason.unwrap_or(0);
    if !ALLOWED_REASONS.contains(&reason) {
        return Err(Error::BadRevocationReason(format!(
            "reason code {reason} is not accepted; use one of {ALLOWED_REASONS:?}"
        )));
    }
    let der = crate::wire::b64u_decode("certificate", &p.certificate)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Error::Malformed(format!("certificate is not valid DER X.509: {e}")))?;
    let serial = hex::encode(parsed.raw_serial());
    let stored = app
        .db
        .get::<Certificate>(Table::Certificates, &serial)?
        .filter(|c| {
            crate::wire::b64u_decode("stored", &c.der).ok().as_deref() == Some(der.as_slice())
        })
        .ok_or(Error::NotFound("certificate issued by this CA"))?;

    let by = match &signer {
        Signer::Account(acct) if acct.id == stored.account_id => RevokedBy::Account,
        Signer::Account(acct) => {
            if !holds_authorizations(&app, &acct.id, &stored.identifiers)? {
                return Err(Error::Unauthorized(
                    "this account neither ordered the certificate nor holds authorizations proven by a challenge for all its identifiers; sign with the certificate's key instead".into(),
                ));
            }
            RevokedBy::AuthorizationHolder
        }
        Signer::Key { key, .. } => {
            let cert_key = crate::key::policy::parse_spki(parsed.public_key().raw)?;
            if *key != cert_key {
                return Err(Error::Unauthorized(
                    "the request is signed by neither the ordering account nor the certificate's key".into(),
                ));
            }
            RevokedBy::CertificateKey
        }
    };

    let issuer = record_revocation(&app, &serial, u8::try_from(reason).unwrap_or(0), by)?;
    app.db.flush().await?;
    tracing::info!(serial = %serial, reason, ?by, "certificate revoked");
    crate::ca::crl::publish(&app, [issuer]).await;
    Ok(StatusCode::OK.into_response())
}
