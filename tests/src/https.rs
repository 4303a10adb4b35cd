//! HTTPS GETs that trust one test CA file, for readiness probes and Pebble's management API.

use std::fs;
use std::path::Path;
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
