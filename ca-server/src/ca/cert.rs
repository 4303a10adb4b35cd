//! Issued certificates: download (RFC 8555 §7.4.2) and revocation (§7.6).

use serde::{Deserialize, Serialize};

use crate::ca::IssuerKind;
use crate::types::Identifier;

/// A revocation record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revocation {
    /// RFC 5280 §5.3.1 reason code.
    pub reason: u8,
    /// Unix time.
    pub at: i64,
    /// The revoked certificate's notAfter (Unix time): the CRL drops the entry once it has been
    /// listed past it (`ra::crl`). `None` in records from before it was kept, whose
    /// certificate record says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
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
    /// Order it was issued for; empty in a reduced record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub order_id: String,
    /// Certified identifiers.
    pub identifiers: Vec<Identifier>,
    /// Leaf DER, base64url; empty in a reduced record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub der: String,
    /// Leaf + intermediate, PEM; empty in a reduced record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
    /// The order that replaces it (RFC 9773 `replaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// Set by the operator (`ca-server renew-early`): the renewal window starts here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_after: Option<i64>,
    /// The certificate profile it was issued under (SPEC §8.3); `None` for certificates
    /// issued before profiles existed.
    #[serde(default)]
    pub profile: Option<String>,
    /// The address the finalize request came from; `None` for certificates issued before it
    /// was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Set when retention reduced the record to an index entry, past notAfter plus
    /// `storage.retention` (`ra::retention`): the certificate itself (`der`, `chain_pem`), its
    /// order and source are gone; who, what, when and whether it was revoked remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduced: Option<Reduced>,
}

/// What a reduced certificate record keeps that its DER said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reduced {
    /// The certified key's type, e.g. "ECDSA P-256".
    pub key_type: String,
}

impl Certificate {
    /// The index entry retention keeps once the certificate is past notAfter plus the
    /// retention: serial, account, identifiers, validity, issuer, profile and revocation.
    pub fn reduce(&self, key_type: String) -> Self {
        Self {
            id: self.id.clone(),
            account_id: self.account_id.clone(),
            order_id: String::new(),
            identifiers: self.identifiers.clone(),
            der: String::new(),
            chain_pem: String::new(),
            issuer: self.issuer,
            not_before: self.not_before,
            not_after: self.not_after,
            revoked: self.revoked.clone(),
            replaced_by: None,
            renew_after: None,
            profile: self.profile.clone(),
            source: None,
            reduced: Some(Reduced { key_type }),
        }
    }

    /// Whether the record is a reduced index entry, without the certificate.
    pub fn is_reduced(&self) -> bool {
        self.reduced.is_some()
    }

    /// The key-use index key of the certified key ([`crate::key::spki_sha256`]); `None` for a
    /// reduced record, which has no DER.
    pub fn key_fingerprint(&self) -> crate::Result<Option<String>> {
        if self.is_reduced() {
            return Ok(None);
        }
        let der = crate::wire::b64u_decode("stored certificate", &self.der)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
            crate::Error::Storage(format!("stored certificate {} unparsable: {e}", self.id))
        })?;
        let key = crate::key::policy::parse_spki(cert.public_key().raw)?;
        Ok(Some(crate::key::spki_sha256(&key)))
    }

    /// The type of the certified key, e.g. "ECDSA P-256": from the DER, or as the reduced
    /// record kept it.
    pub fn key_type(&self) -> crate::Result<String> {
        if let Some(reduced) = &self.reduced {
            return Ok(reduced.key_type.clone());
        }
        let der = crate::wire::b64u_decode("stored certificate", &self.der)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
            crate::Error::Storage(format!("stored certificate {} unparsable: {e}", self.id))
        })?;
        Ok(crate::key::policy::key_type(cert.public_key()))
    }
}
