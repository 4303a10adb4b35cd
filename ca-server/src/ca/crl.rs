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
}

#[derive(Clone)]
pub(crate) struct Signed {
    pub(crate) der: Vec<u8>,
    pub(crate) this_update: i64,
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

    pub(crate) fn cached(&self, kind: IssuerKind, now: i64) -> Option<Vec<u8>> {
        self.slot(kind)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|s| now - s.this_update < REFRESH)
            .map(|s| s.der.clone())
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
