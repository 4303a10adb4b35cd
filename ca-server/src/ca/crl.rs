//! The certificate revocation lists (RFC 5280 §5) of the issuing intermediates.
//!
//! Each intermediate signs the CRL of the certificates it issued (RFC 5280 §5: the CRL issuer
//! is the certificate issuer unless the CRL is indirect, which this CA does not do):
//!
//! | issuer | URL         | file                    |
//! |--------|-------------|-------------------------|
//! | EC     | `/crl`      | `<data_dir>/crl.pem`     |
//! | RSA    | `/crl/rsa`  | `<data_dir>/crl-rsa.pem` |
//!
//! The URL (DER, `application/pkix-crl`) is what every certificate of that issuer carries in
//! its CRL distribution point; the file is for relying parties that read one (mosquitto's
//! `crlfile`, `openssl verify -CRLfile`). A new CRL, with the next CRL number, is signed and
//! written as soon as a revocation is durable (before the revocation is answered) and at least
//! every [`REFRESH`], well before `nextUpdate`. The two CRLs draw their numbers from one counter, so each issuer's numbers
//! still only increase.

use std::sync::Mutex;

use super::*;

use crate::ca::IssuerKind;
use crate::wire::paths;

/// How long a signed CRL is served before a fresh one is signed.
pub const REFRESH: i64 = 3600;
/// `nextUpdate` − `thisUpdate`: relying parties treat the CRL as stale after this.
pub const LIFETIME: i64 = 24 * 3600;

/// The current CRL of each intermediate, cached.
#[derive(Default)]
pub struct CrlCache {
    ec: Mutex<Option<Signed>>,
    rsa: Mutex<Option<Signed>>,
    /// Held while a CRL is numbered, signed and written, so two signings at once (a revocation
    /// and the hourly tick) cannot leave an older-numbered CRL in the file. A tokio mutex: it
    /// is held across the flush that makes the number durable.
    pub(crate) signing: tokio::sync::Mutex<()>,
    /// `thisUpdate` of the last CRL of each intermediate written to its file (0: none yet),
    /// which a revocation does not reset: for `/ready` and the CRL age metric.
    published: [std::sync::atomic::AtomicI64; 2],
}

#[derive(Clone)]
pub(crate) struct Signed {
    pub(crate) der: Vec<u8>,
    pub(crate) this_update: i64,
    /// Its CRL number, by which instances sharing a store tell whether theirs is current.
    pub(crate) number: u64,
}

impl CrlCache {
    /// Forgets the cached CRLs, so the next request signs one that includes a new revocation.
    pub fn invalidate(&self) {
        for kind in IssuerKind::ALL {
            *self.slot(kind).lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    pub(crate) fn slot(&self, kind: IssuerKind) -> &Mutex<Option<Signed>> {
        match kind {
            IssuerKind::Ec => &self.ec,
            IssuerKind::Rsa => &self.rsa,
        }
    }

    /// `thisUpdate` of the last CRL of `kind` published since the server started.
    pub fn published(&self, kind: IssuerKind) -> Option<i64> {
        let at = self.published[kind as usize].load(std::sync::atomic::Ordering::Relaxed);
        (at != 0).then_some(at)
    }

    /// Notes that the CRL of `kind` with `this_update` is published.
    pub fn mark_published(&self, kind: IssuerKind, this_update: i64) {
        self.published[kind as usize].fetch_max(this_update, std::sync::atomic::Ordering::Relaxed);
    }

    /// The cached CRL of `kind`, unless it is due: older than [`REFRESH`], or dated after
    /// `now`. A CRL from the future is one signed before the clock stepped back; relying
    /// parties with the right time would refuse it (its thisUpdate has not come yet), so a new
    /// one is signed with the current time.
    pub(crate) fn cached(&self, kind: IssuerKind, now: i64) -> Option<Vec<u8>> {
        self.slot(kind)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|s| (0..REFRESH).contains(&(now - s.this_update)))
            .map(|s| s.der.clone())
    }

    /// The cached CRL of `kind` if it is the one numbered `number`.
    pub(crate) fn numbered(&self, kind: IssuerKind, number: u64) -> Option<Vec<u8>> {
        self.slot(kind)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|s| s.number == number)
            .map(|s| s.der.clone())
    }

    /// Keeps `signed` as the CRL of `kind`.
    pub(crate) fn keep(&self, kind: IssuerKind, signed: Signed) {
        *self.slot(kind).lock().unwrap_or_else(|p| p.into_inner()) = Some(signed);
    }
}

/// Where the CRL of `kind` is served, below the base URL.
pub fn path(kind: IssuerKind) -> &'static str {
    match kind {
        IssuerKind::Ec => paths::CRL,
        IssuerKind::Rsa => paths::CRL_RSA,
    }
}

/// The file the CRL of `kind` is written to, in the data directory.
pub fn file_name(kind: IssuerKind) -> &'static str {
    match kind {
        IssuerKind::Ec => "crl.pem",
        IssuerKind::Rsa => "crl-rsa.pem",
    }
}

impl CertificateAuthority {
    /// Sets the CRL distribution point URL written into certificates `kind` issues from now
    /// on (nothing if the CA has no such intermediate).
    pub fn set_crl_url(&mut self, kind: IssuerKind, url: String) {
        let intermediate = match kind {
            IssuerKind::Ec => Some(&mut self.ec),
            IssuerKind::Rsa => self.rsa.as_mut(),
        };
        if let Some(i) = intermediate {
            i.crl_url = Some(url);
        }
    }

    /// Signs a CRL (RFC 5280 §5) over `revoked` (serial bytes, revocation time, reason code)
    /// with the issuing intermediate `kind`, numbered `number`, and returns its DER.
    ///
    /// > The CRL issuer is either the CA or an entity that has been authorized by the CA to
    /// > issue CRLs.
    ///
    /// <https://www.rfc-editor.org/rfc/rfc5280#section-5>: each intermediate signs the CRL of
    /// the certificates it issued, so `revoked` must hold only those.
    pub fn sign_crl(
        &self,
        kind: IssuerKind,
        number: u64,
        this_update: i64,
        next_update: i64,
        revoked: &[(Vec<u8>, i64, u8)],
    ) -> Result<Vec<u8>> {
        let time = |t: i64| {
            OffsetDateTime::from_unix_timestamp(t)
                .map_err(|e| Error::Internal(format!("CRL time {t} out of range: {e}")))
        };
        let revoked_certs = revoked
            .iter()
            .map(|(serial, at, reason)| {
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: time(*at)?,
                    reason_code: crl_reason(*reason),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: time(this_update)?,
            next_update: time(next_update)?,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer = &self.intermediate(kind)?.issuer;
        let crl = params
            .signed_by(issuer)
            .map_err(|e| issuer.key().signing_error("cannot sign the CRL", &e))?;
        Ok(crl.der().to_vec())
    }
}

/// The CRL entry reason (RFC 5280 §5.3.1) for a stored reason code; unspecified (0) is left
/// out, as RFC 5280 recommends.
pub(super) fn crl_reason(code: u8) -> Option<rcgen::RevocationReason> {
    use rcgen::RevocationReason as R;
    match code {
        1 => Some(R::KeyCompromise),
        2 => Some(R::CaCompromise),
        3 => Some(R::AffiliationChanged),
        4 => Some(R::Superseded),
        5 => Some(R::CessationOfOperation),
        6 => Some(R::CertificateHold),
        8 => Some(R::RemoveFromCrl),
        9 => Some(R::PrivilegeWithdrawn),
        10 => Some(R::AaCompromise),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_crl_is_due_when_old_or_dated_after_now() {
        let cache = CrlCache::default();
        let t = 1_800_000_000;
        assert!(cache.cached(IssuerKind::Ec, t).is_none(), "nothing signed");
        cache.keep(
            IssuerKind::Ec,
            Signed {
                der: vec![1],
                this_update: t,
                number: 7,
            },
        );
        assert_eq!(cache.numbered(IssuerKind::Ec, 7), Some(vec![1]));
        assert_eq!(cache.numbered(IssuerKind::Ec, 8), None);
        assert_eq!(cache.cached(IssuerKind::Ec, t), Some(vec![1]));
        assert!(cache.cached(IssuerKind::Ec, t + REFRESH - 1).is_some());
        assert!(cache.cached(IssuerKind::Ec, t + REFRESH).is_none(), "old");
        // The clock stepped back past the CRL's thisUpdate.
        assert!(
            cache.cached(IssuerKind::Ec, t - 1).is_none(),
            "from the future"
        );
        assert!(cache.cached(IssuerKind::Rsa, t).is_none(), "per issuer");
    }
}
