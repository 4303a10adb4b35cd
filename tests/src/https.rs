//! HTTPS GETs that trust one test CA file, for readiness probes and Pebble's management API,
//! and a raw rustls client configuration for tests that write HTTP by hand.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

/// Per-request timeout: loopback servers answer in milliseconds, so anything slow is stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A blocking client trusting exactly the certificates in the PEM file `ca_pem` (no system roots).
pub fn client_trusting(ca_pem: &Path) -> Result<reqwest::blocking::Client> {
    let pem = fs::read(ca_pem).with_context(|| format!("cannot read {}", ca_pem.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} is not a PEM certificate bundle", ca_pem.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no certificate",
        ca_pem.display()
    );
    let mut builder = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .timeout(REQUEST_TIMEOUT)
        .no_proxy();
    for cert in certs {
        builder = builder.add_root_certificate(cert);
    }
    builder.build().context("cannot build an HTTPS client")
}

/// GETs `url` trusting `ca_pem`; returns the status code and the body.
pub fn get(url: &str, ca_pem: &Path) -> Result<(u16, String)> {
    let resp = client_trusting(ca_pem)?
        .get(url)
        .send()
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .with_context(|| format!("GET {url}: reading the body"))?;
    Ok((status, body))
}

/// A rustls client configuration trusting exactly the certificates in the PEM file `ca_pem`,
/// offering the ALPN protocols `alpn` (none if empty), for tests that speak HTTP/1.1 by hand
/// and must see every byte.
pub fn rustls_client(ca_pem: &Path, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let pem = fs::read(ca_pem).with_context(|| format!("cannot read {}", ca_pem.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.with_context(|| format!("cannot parse {}", ca_pem.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// What an [`instant_acme::HttpClient`] returns: for wrappers around [`acme_http_client`].
pub type AcmeResponseFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<instant_acme::BytesResponse, instant_acme::Error>>
            + Send,
    >,
>;

/// An HTTP client for instant-acme trusting only `ca_file`, with TCP_NODELAY (instant-acme's
/// own leaves Nagle on, which adds ~40 ms to every request on loopback) and HTTP/2. Wrap it to
/// watch the raw responses (statuses, headers) that instant-acme does not expose.
pub fn acme_http_client(ca_file: &Path) -> Result<Box<dyn instant_acme::HttpClient>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("cannot read {}", ca_file.display()))?
    {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client: hyper_util::client::legacy::Client<_, instant_acme::BodyWrapper<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    Ok(Box::new(client))
}
