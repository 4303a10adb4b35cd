//! Entry points of the fuzz targets in `device-client/fuzz` and of the corpus replay test
//! (`tests/fuzz_corpus.rs`), which runs the committed corpus through the same functions on the
//! stable toolchain. Not part of the API.
//!
//! Each function takes arbitrary octets, as a hostile or broken CA (or whatever answers in its
//! place) could send them, runs the client's real parsers and checks on them and asserts what
//! holds for every input: no panic, and results that agree with each other.

use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

use crate::cert::CertInfo;
use crate::error::Problem;
use crate::output;
use crate::types::{Account, Authorization, Challenge, Directory, Order};

/// The JSON bodies the client reads (RFC 8555 §7.1): directory, account, order, authorization,
/// challenge and problem document, and `Retry-After` values.
pub fn responses(data: &[u8]) {
    if let Ok(d) = serde_json::from_slice::<Directory>(data) {
        let _ = (d.new_nonce.len(), d.meta.profiles.len());
    }
    let _ = serde_json::from_slice::<Account>(data);
    if let Ok(order) = serde_json::from_slice::<Order>(data) {
        let _ = order.identifiers.len();
    }
    let _ = serde_json::from_slice::<Authorization>(data);
    let _ = serde_json::from_slice::<Challenge>(data);
    if let Ok(p) = serde_json::from_slice::<Problem>(data) {
        let _ = p.to_string();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        if let Some(wait) = crate::parse_retry_after(text, now) {
            assert!(wait <= crate::MAX_RETRY_AFTER);
        }
    }
}

/// The certificate chain as the client installs it (RFC 8555 §7.4.2): PEM blocks, the leaf's
/// details (validity, identifiers, ARI identifier, CRL distribution points) and the chain's
/// signatures; and the same readers on the input as one DER certificate.
pub fn chain(data: &[u8]) {
    let certs: Result<Vec<CertificateDer<'_>>, _> = CertificateDer::pem_slice_iter(data).collect();
    if let Ok(certs) = certs {
        if let Some(leaf) = certs.first() {
            check_certificate(leaf);
            let _ = output::verify_chain(&certs, None);
        }
    }
    check_certificate(data);
}

fn check_certificate(der: &[u8]) {
    let _ = output::crl_urls(der);
    let Ok(info) = CertInfo::from_der(der) else {
        return;
    };
    if info.not_before <= info.not_after {
        let at = info.renewal_time(2.0 / 3.0);
        assert!(info.not_before <= at && at <= info.not_after);
    }
    assert!(info.identifiers.windows(2).all(|w| w[0] <= w[1]));
    if let Some(id) = &info.cert_id {
        assert!(protocol_spec::ari::CertId::parse(id).is_ok(), "{id}");
    }
}

/// A CRL (RFC 5280 §5) as the client installs it for an OPC UA PKI directory, checked against
/// `issuer_der` at a fixed time: one that passes has a nextUpdate after that time.
pub fn crl(data: &[u8], issuer_der: &[u8]) {
    let now = time::OffsetDateTime::from_unix_timestamp(1_780_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let next = output::crl_next_update(data);
    if let Ok(info) = output::check_crl(data, issuer_der, now) {
        assert_eq!(info.next_update, next);
        assert!(next.is_some_and(|n| n > now));
    }
}

/// The issuer of the [`crl`] target: the root certificate of the first entry of the shared
/// `device_attest.json` vectors (`protocol_spec::vectors::DEVICE_ATTEST`), which also carry its
/// private key, so that corpus CRLs can be signed by it. Empty if the vectors lack it.
pub fn crl_issuer(vectors: &str) -> Vec<u8> {
    let all: serde_json::Value = serde_json::from_str(vectors).unwrap_or_default();
    let text = all[0]["input"]["trust_anchors"][0]["certificate_der_b64url"]
        .as_str()
        .unwrap_or_default();
    let mut der = vec![0u8; text.len()];
    let len = protocol_spec::base64url::decode(text, &mut der).map_or(0, <[u8]>::len);
    der.truncate(len);
    der
}
