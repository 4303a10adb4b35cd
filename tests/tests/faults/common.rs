//! What the fault tests share: an instant-acme enrollment that records each step's result as
//! soon as the client has it, so a test knows what a client held when the server died.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use instant_acme::{
    Account, AccountBuilder, AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier,
    NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};

use crate::acme::Tokens;

/// What one enrollment attempt got before the kill, filled in as it goes.
#[derive(Default)]
pub(crate) struct Attempt {
    pub(crate) name: String,
    pub(crate) credentials: Option<String>,
    pub(crate) order_url: Option<String>,
    pub(crate) chain_pem: Option<String>,
}

pub(crate) fn csr(name: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.serialize_request(&key).expect("csr").der().to_vec()
}

pub(crate) fn retry() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .timeout(Duration::from_secs(20))
}

/// One enrollment, recording each step's result in `at` as soon as the client has it.
pub(crate) async fn enroll(
    builder: AccountBuilder,
    directory: &str,
    tokens: &Tokens,
    name: &str,
    at: &Mutex<Attempt>,
) -> Result<()> {
    let (account, credentials) = builder
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_owned(),
            None,
        )
        .await?;
    at.lock().expect("lock").credentials = Some(serde_json::to_string(&credentials)?);
    issue_with(&account, tokens, name, at).await
}

/// One certificate for `name` with an existing account, recording the order URL and the chain
/// in `at` as soon as the client has them.
pub(crate) async fn issue_with(
    account: &Account,
    tokens: &Tokens,
    name: &str,
    at: &Mutex<Attempt>,
) -> Result<()> {
    let mut order = account
        .new_order(&NewOrder::new(&[Identifier::Dns(name.to_owned())]))
        .await?;
    at.lock().expect("lock").order_url = Some(order.url().to_owned());
    answer_challenges(&mut order, tokens).await?;
    let status = order.poll_ready(&retry()).await?;
    ensure!(status == OrderStatus::Ready, "order {status:?}");
    order.finalize_csr(&csr(name)).await?;
    let chain = order.poll_certificate(&retry()).await?;
    at.lock().expect("lock").chain_pem = Some(chain);
    Ok(())
}

/// Publishes the key authorization of every pending http-01 challenge of a pending
/// authorization and tells the server it is ready.
pub(crate) async fn answer_challenges(order: &mut Order, tokens: &Tokens) -> Result<()> {
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a?;
        if a.status != AuthorizationStatus::Pending {
            continue;
        }
        let mut ch = a
            .challenge(ChallengeType::Http01)
            .context("no http-01 challenge")?;
        if ch.status != ChallengeStatus::Pending {
            continue;
        }
        tokens
            .lock()
            .expect("lock")
            .insert(ch.token.clone(), ch.key_authorization().as_str().to_owned());
        ch.set_ready().await?;
    }
    Ok(())
}
