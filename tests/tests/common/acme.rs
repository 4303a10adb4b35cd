//! instant-acme enrollment over http-01 with a certificate profile, shared by the interop tests
//! of the profiles (`mosquitto.rs`, `opcua.rs`).

#![allow(dead_code)] // each test binary uses part of it

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use axum::Router;
use instant_acme::{
    Account, ChallengeType, DeviceAttestation, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};

/// http-01 key authorizations by token.
pub(crate) type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// Serves http-01 responses on 127.0.0.1:`port` from `tokens`.
pub(crate) async fn serve_http01(port: u16, tokens: Tokens) -> Result<()> {
    let app = Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            get(
                |State(t): State<Tokens>, UrlPath(token): UrlPath<String>| async move {
                    t.lock()
                        .expect("lock")
                        .get(&token)
                        .cloned()
                        .unwrap_or_default()
                },
            ),
        )
        .with_state(tokens);
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(())
}

/// A new account on the CA at `directory`, trusting `root`.
pub(crate) async fn account(directory: String, root: &Path) -> Result<Account> {
    let (account, _) = Account::builder_with_root(root)?
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory,
            None,
        )
        .await?;
    Ok(account)
}

/// The identifiers' values, as CSR names.
pub(crate) fn names(ids: &[Identifier]) -> Vec<String> {
    ids.iter()
        .map(|id| match id {
            Identifier::Dns(n) => n.clone(),
            Identifier::Ip(ip) => ip.to_string(),
            other => panic!("unexpected identifier {other:?}"),
        })
        .collect()
}

/// Orders `ids` under `profile`, answers http-01, finalizes with `csr_der` and returns the
/// PEM chain.
pub(crate) async fn issue(
    account: &Account,
    tokens: &Tokens,
    ids: &[Identifier],
    profile: &str,
    csr_der: &[u8],
) -> Result<String> {
    let mut order = ready_order(account, tokens, ids, profile).await?;
    order.finalize_csr(csr_der).await?;
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .timeout(Duration::from_secs(20));
    Ok(order.poll_certificate(&retry).await?)
}

/// Orders `ids` under `profile` and answers http-01; the order, ready to finalize.
pub(crate) async fn ready_order(
    account: &Account,
    tokens: &Tokens,
    ids: &[Identifier],
    profile: &str,
) -> Result<instant_acme::Order> {
    let mut order = account
        .new_order(&NewOrder::new(ids).profile(profile))
        .await?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a?;
        let mut ch = a
            .challenge(ChallengeType::Http01)
            .context("no http-01 challenge")?;
        tokens
            .lock()
            .expect("lock")
            .insert(ch.token.clone(), ch.key_authorization().as_str().to_owned());
        ch.set_ready().await?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .timeout(Duration::from_secs(20));
    let status = order.poll_ready(&retry).await?;
    ensure!(status == OrderStatus::Ready, "order {status:?}");
    Ok(order)
}

/// One device `name` enrolled over http-01 on a CA that passes it without dialing
/// (`lab_always_valid`), with a new account and key; its PEM chain.
pub(crate) async fn enroll_dns(server: &iiot_acme_tests::CaServer, name: &str) -> Result<String> {
    let account = account(server.directory_url(), &server.root_pem_path()).await?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    let ids = [Identifier::Dns(name.to_owned())];
    issue(&account, &Tokens::default(), &ids, "default", csr.der()).await
}

/// Orders the permanent identifier `value` under `profile`, answers device-attest-01 with the
/// attestation object `attest` makes from the challenge's key authorization, finalizes with
/// `csr_der` and returns the PEM chain.
pub(crate) async fn issue_attested(
    account: &Account,
    value: &str,
    profile: &str,
    csr_der: &[u8],
    attest: impl Fn(&str) -> Vec<u8>,
) -> Result<String> {
    let ids = [Identifier::PermanentIdentifier(value.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&ids).profile(profile))
        .await?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a?;
        let mut ch = a
            .challenge(ChallengeType::DeviceAttest01)
            .context("no device-attest-01 challenge")?;
        let att_obj = attest(ch.key_authorization().as_str());
        ch.send_device_attestation(&DeviceAttestation {
            att_obj: att_obj.into(),
        })
        .await?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .timeout(Duration::from_secs(20));
    let status = order.poll_ready(&retry).await?;
    ensure!(status == OrderStatus::Ready, "order {status:?}");
    order.finalize_csr(csr_der).await?;
    Ok(order.poll_certificate(&retry).await?)
}

/// The PEM blocks of a chain: leaf first.
pub(crate) fn split_chain(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
        .map(|b| b.trim_start().to_owned())
        .collect()
}

/// DER of the first certificate in a PEM chain.
pub(crate) fn first_cert_der(pem: &str) -> Result<Vec<u8>> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    Ok(base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        b64,
    )?)
}
