//! Trust hardening end to end, against the real `ca-server` binary (docs/security.md): an
//! account on the plant network cannot make validation fetch other hosts' pages or show what
//! they served, cannot get a certificate for the CA's own names, cannot take another device's
//! identity through a shared credential or an ApplicationUri, cannot revoke what it only got
//! vouched for, loses what a revoked credential granted, and cannot open accounts without
//! limit.

#[path = "common/acme.rs"]
mod acme;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use acme::Tokens;
use anyhow::{bail, ensure, Context as _, Result};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use iiot_acme_tests::cli::operator;
use iiot_acme_tests::clients::Eab;
use iiot_acme_tests::{ca_server_bin, CaServer, CaServerOpts};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy, RevocationRequest,
};
use serde_json::{json, Value};

/// Requests an HTTP server saw, by path and query.
type Seen = Arc<Mutex<Vec<String>>>;

/// Serves `answer(path)` on `addr`, recording every request target.
async fn serve(
    addr: SocketAddr,
    answer: impl Fn(&str) -> Response + Clone + Send + Sync + 'static,
) -> Result<Seen> {
    let seen = Seen::default();
    let app = Router::new()
        .fallback(
            |State((seen, answer)): State<(Seen, _)>, uri: Uri| async move {
                let target = uri
                    .path_and_query()
                    .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
                seen.lock().expect("lock").push(target.clone());
                let answer: &(dyn Fn(&str) -> Response + Send + Sync) = &answer;
                answer(&target)
            },
        )
        .with_state((seen.clone(), answer));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(seen)
}

fn redirect(location: String) -> Response {
    (StatusCode::FOUND, [("location", location)], "").into_response()
}

fn retry() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .timeout(Duration::from_secs(20))
}

/// Orders `ids`, answers http-01 for each (the key authorizations go into `tokens`, for
/// whoever serves them), and returns the order once it is no longer pending.
async fn validate(account: &Account, ids: &[Identifier], tokens: &Tokens) -> Result<Order> {
    let mut order = account.new_order(&NewOrder::new(ids)).await?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a?;
        if a.status != AuthorizationStatus::Pending {
            continue;
        }
        let mut ch = a
            .challenge(ChallengeType::Http01)
            .context("no http-01 challenge")?;
        tokens
            .lock()
            .expect("lock")
            .insert(ch.token.clone(), ch.key_authorization().as_str().to_owned());
        ch.set_ready().await?;
    }
    let _ = order.poll_ready(&retry()).await;
    Ok(order)
}

/// The problem of an instant-acme error, or a failure.
fn problem(e: instant_acme::Error) -> Result<instant_acme::Problem> {
    match e {
        instant_acme::Error::Api(p) => Ok(p),
        other => bail!("expected a problem document, got {other:?}"),
    }
}

fn assert_type(p: &instant_acme::Problem, kind: &str) {
    assert_eq!(
        p.r#type.as_deref(),
        Some(format!("urn:ietf:params:acme:error:{kind}").as_str()),
        "{p:?}"
    );
}

/// A reproduction of a report against the unhardened CA: an http-01 responder that redirects
/// to another plant host made the CA fetch that host's page, and the challenge error quoted
/// what the page said.
#[test]
fn validation_follows_no_redirect_to_another_host_and_quotes_no_body() -> Result<()> {
    let server = CaServer::start(CaServerOpts::default())?;
    let port = server.http_port();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // An internal web page on another plant host, on the port the CA dials.
        let internal = serve(SocketAddr::from(([127, 0, 0, 2], port)), |_| {
            "SECRET-ADMIN-PAGE: line 2 setpoints".into_response()
        })
        .await?;
        // The attacker's device answers every challenge with a redirect there.
        serve(SocketAddr::from(([127, 0, 0, 1], port)), move |_| {
            redirect(format!("http://127.0.0.2:{port}/internal/admin?x=1"))
        })
        .await?;
        let account = acme::account(server.directory_url(), &server.root_pem_path()).await?;
        let mut order = validate(
            &account,
            &[Identifier::Dns("ssrf.plant.example".into())],
            &Tokens::default(),
        )
        .await?;
        let state = order.refresh().await?;
        ensure!(state.status == OrderStatus::Invalid, "{state:?}");
        let error = format!("{:?}", state.error);
        ensure!(
            error.contains("another host") && !error.contains("SECRET"),
            "{error}"
        );
        ensure!(
            internal.lock().expect("lock").is_empty(),
            "the internal host was fetched: {:?}",
            internal.lock().expect("lock")
        );

        // A page served at the challenge path itself is not quoted either.
        let ip: std::net::IpAddr = "127.0.0.3".parse()?;
        serve(SocketAddr::new(ip, port), |_| {
            "SECRET-ADMIN-PAGE: line 2 setpoints".into_response()
        })
        .await?;
        let mut order = validate(&account, &[Identifier::Ip(ip)], &Tokens::default()).await?;
        let state = order.refresh().await?;
        ensure!(state.status == OrderStatus::Invalid, "{state:?}");
        let error = format!("{:?}", state.error);
        ensure!(
            error.contains("incorrectResponse") && !error.contains("SECRET"),
            "{error}"
        );
        anyhow::Ok(())
    })
    .with_context(|| server.logs())
}

/// With `allow_loopback` off (the default outside tests), the CA neither certifies nor dials
/// loopback, whatever a name resolves to; with it on, it says so at start.
#[test]
fn loopback_is_neither_certified_nor_dialed_without_allow_loopback() -> Result<()> {
    let server = CaServer::start(CaServerOpts {
        allow_loopback: false,
        ..CaServerOpts::default()
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let tokens = Tokens::default();
        let device = serve(SocketAddr::from(([127, 0, 0, 1], server.http_port())), {
            let tokens = tokens.clone();
            move |path| {
                let token = path.rsplit('/').next().unwrap_or_default();
                tokens
                    .lock()
                    .expect("lock")
                    .get(token)
                    .cloned()
                    .unwrap_or_default()
                    .into_response()
            }
        })
        .await?;
        let account = acme::account(server.directory_url(), &server.root_pem_path()).await?;
        let refused = account
            .new_order(&NewOrder::new(&[Identifier::Ip("127.0.0.1".parse()?)]))
            .await
            .err()
            .context("a loopback identifier was accepted")?;
        assert_type(&problem(refused)?, "rejectedIdentifier");
        // The lab resolution points every name at 127.0.0.1: not dialed.
        let mut order = validate(
            &account,
            &[Identifier::Dns("plc-1.plant.example".into())],
            &tokens,
        )
        .await?;
        let state = order.refresh().await?;
        ensure!(state.status == OrderStatus::Invalid, "{state:?}");
        let error = format!("{:?}", state.error);
        ensure!(
            error.contains("loopback") && error.contains("allow_loopback"),
            "{error}"
        );
        ensure!(
            device.lock().expect("lock").is_empty(),
            "loopback was dialed"
        );
        anyhow::Ok(())
    })
    .with_context(|| server.logs())?;
    ensure!(
        !server.logs().contains("validation.allow_loopback is on"),
        "{}",
        server.logs()
    );
    let lab = CaServer::start(CaServerOpts::default())?;
    ensure!(
        lab.logs()
            .contains("LAB SETTING validation.allow_loopback is on"),
        "no start-up warning:\n{}",
        lab.logs()
    );
    Ok(())
}

/// A certificate for a name the CA serves as would pass every device's pin check of the CA.
#[test]
fn the_cas_own_names_are_refused_and_so_are_credentials_covering_them() -> Result<()> {
    let server = CaServer::start(CaServerOpts {
        tls_names: vec!["ca.plant.example".into(), "10.20.0.5".into()],
        ..CaServerOpts::default()
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let account = acme::account(server.directory_url(), &server.root_pem_path()).await?;
        for id in [
            Identifier::Dns("ca.plant.example".into()),
            Identifier::Ip("10.20.0.5".parse()?),
            Identifier::Ip("169.254.169.254".parse()?),
        ] {
            let e = account
                .new_order(&NewOrder::new(std::slice::from_ref(&id)))
                .await
                .err()
                .with_context(|| format!("{id:?} was accepted"))?;
            let p = problem(e)?;
            assert_type(&p, "rejectedIdentifier");
            ensure!(p.subproblems.len() == 1, "{p:?}");
        }
        anyhow::Ok(())
    })
    .with_context(|| server.logs())?;

    // The operator's credential for the plant must not pre-authorize the CA's name.
    let out = Command::new(ca_server_bin()?)
        .args([
            "eab",
            "create",
            "--allow",
            "dns:plant.example",
            "--data-dir",
        ])
        .arg(server.data_dir())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("ca.plant.example"),
        "dns:plant.example was accepted: {stderr}"
    );
    let out = Command::new(ca_server_bin()?)
        .args(["eab", "create", "--allow", "ip:10.20.0.0/16", "--data-dir"])
        .arg(server.data_dir())
        .output()?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("10.20.0.5"),
        "ip:10.20.0.0/16 was accepted"
    );
    server.eab_create_with(&["--allow", "dns:line2.plant.example"])?;
    Ok(())
}

/// newAccount over a raw JWS, so the test sees the status and the headers.
fn new_account_raw(
    http: &reqwest::blocking::Client,
    directory: &Value,
) -> Result<(u16, Option<String>, Value)> {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("keygen"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("key"))?;
    let point = key.public_key().as_ref();
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let nonce = http
        .head(directory["newNonce"].as_str().context("newNonce")?)
        .send()?
        .headers()
        .get("replay-nonce")
        .context("no nonce")?
        .to_str()?
        .to_owned();
    let url = directory["newAccount"].as_str().context("newAccount")?;
    let protected = json!({"alg": "ES256", "nonce": nonce, "url": url,
        "jwk": {"crv": "P-256", "kty": "EC", "x": b64(&point[1..33]), "y": b64(&point[33..])}});
    let protected = b64(protected.to_string().as_bytes());
    let payload = b64(json!({"termsOfServiceAgreed": true}).to_string().as_bytes());
    let sig = key
        .sign(&rng, format!("{protected}.{payload}").as_bytes())
        .map_err(|_| anyhow::anyhow!("sign"))?;
    let body = json!({"protected": protected, "payload": payload, "signature": b64(sig.as_ref())});
    let resp = http
        .post(url)
        .header("content-type", "application/jose+json")
        .body(body.to_string())
        .send()?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = serde_json::from_str(&resp.text()?).unwrap_or(Value::Null);
    Ok((status, retry_after, body))
}

#[test]
fn a_burst_of_new_accounts_from_one_address_meets_429_with_retry_after() -> Result<()> {
    let server = CaServer::start(CaServerOpts::default())?;
    let http = iiot_acme_tests::https::client_trusting(&server.root_pem_path())?;
    let directory: Value = serde_json::from_str(&http.get(server.directory_url()).send()?.text()?)?;
    let (mut created, mut limited) = (0, 0);
    let mut first_refusal = None;
    for _ in 0..400 {
        let (status, retry_after, body) = new_account_raw(&http, &directory)?;
        match status {
            201 => created += 1,
            429 => {
                limited += 1;
                first_refusal.get_or_insert((retry_after, body));
            }
            other => bail!("newAccount answered {other}: {body}\n{}", server.logs()),
        }
    }
    // The default: 100 per minute per address. A few more pass as the bucket refills (one
    // token per 0.6 s) while the burst runs.
    ensure!(
        (100..=150).contains(&created) && limited == 400 - created,
        "{created} created, {limited} limited"
    );
    let (retry_after, body) = first_refusal.context("no refusal")?;
    let wait: u64 = retry_after.context("429 without Retry-After")?.parse()?;
    ensure!((1..=60).contains(&wait), "Retry-After {wait}");
    ensure!(
        body["type"] == "urn:ietf:params:acme:error:rateLimited"
            && body["status"] == 429
            && body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("new_account_per_address")),
        "{body}"
    );
    Ok(())
}

/// An account bound with `eab` (a credential of `server`).
async fn bound_account(server: &CaServer, eab: &Eab) -> Result<Account> {
    let key = URL_SAFE_NO_PAD.decode(&eab.hmac_b64url)?;
    let (account, _) = Account::builder_with_root(server.root_pem_path())?
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            server.directory_url(),
            Some(&ExternalAccountKey::new(eab.kid.clone(), &key)),
        )
        .await?;
    Ok(account)
}

/// A CSR for `ids` (and ApplicationUri `uri`) with a new P-256 key.
fn csr(ids: &[Identifier], uri: Option<&str>) -> Result<Vec<u8>> {
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(acme::names(ids))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(uri) = uri {
        p.subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into()?));
    }
    Ok(p.serialize_request(&key)?.der().to_vec())
}

/// Finalizes a ready order and returns the leaf's DER.
async fn certificate(order: &mut Order, ids: &[Identifier], uri: Option<&str>) -> Result<Vec<u8>> {
    order.finalize_csr(&csr(ids, uri)?).await?;
    let pem = order.poll_certificate(&retry()).await?;
    acme::first_cert_der(&pem)
}

/// Devices sharing one allow-listed credential: each gets its own name pre-authorized, none
/// its sibling's once the sibling holds a certificate, and a pre-authorization gives no right
/// to revoke the sibling's certificate.
#[test]
fn a_shared_credential_does_not_let_one_device_take_or_revoke_its_siblings_name() -> Result<()> {
    let server = CaServer::start(CaServerOpts::default())?;
    let eab = server.eab_create_with(&["--allow", "dns:line2.plant.example"])?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let plc1 = [Identifier::Dns("plc-1.line2.plant.example".into())];
        let intruder = bound_account(&server, &eab).await?;
        // Pre-authorized while nobody holds plc-1 yet.
        let mut early = intruder.new_order(&NewOrder::new(&plc1)).await?;
        ensure!(early.state().status == OrderStatus::Ready);

        let device = bound_account(&server, &eab).await?;
        let mut order = device.new_order(&NewOrder::new(&plc1)).await?;
        ensure!(order.state().status == OrderStatus::Ready);
        let der = certificate(&mut order, &plc1, None).await?;

        // The intruder's vouched-for authorization does not let it revoke the device's
        // certificate, nor finalize its older order now that the device holds the name.
        let e = intruder
            .revoke(&RevocationRequest {
                certificate: &der.clone().into(),
                reason: None,
            })
            .await
            .err()
            .context("the intruder revoked the device's certificate")?;
        assert_type(&problem(e)?, "unauthorized");
        let e = early
            .finalize_csr(&csr(&plc1, None)?)
            .await
            .err()
            .context("the intruder's old order was finalized")?;
        assert_type(&problem(e)?, "unauthorized");
        ensure!(early.refresh().await?.status == OrderStatus::Invalid);
        // A new order of the intruder's for plc-1 needs a challenge now.
        let mut order = intruder.new_order(&NewOrder::new(&plc1)).await?;
        ensure!(
            order.state().status == OrderStatus::Pending,
            "{:?}",
            order.state()
        );
        let mut authzs = order.authorizations();
        let authz = authzs.next().await.context("authz")??;
        ensure!(authz.status == AuthorizationStatus::Pending);
        // Its own name is still pre-authorized.
        let plc2 = [Identifier::Dns("plc-2.line2.plant.example".into())];
        let mut order = intruder.new_order(&NewOrder::new(&plc2)).await?;
        ensure!(order.state().status == OrderStatus::Ready);
        anyhow::Ok(())
    })
    .with_context(|| server.logs())?;
    // The operator sees who holds plc-1.
    let shown = operator(
        &server,
        &["identity", "show", "dns:plc-1.line2.plant.example"],
    );
    ensure!(shown.contains("held by account"), "{shown}");
    Ok(())
}

/// A credential revoked after its pre-authorized order became ready stops the finalize.
#[test]
fn a_revoked_credential_stops_the_orders_it_pre_authorized() -> Result<()> {
    let server = CaServer::start(CaServerOpts::default())?;
    let eab = server.eab_create_with(&["--allow", "dns:plant.example"])?;
    let rt = tokio::runtime::Runtime::new()?;
    let ids = [Identifier::Dns("plc-3.plant.example".into())];
    let mut order = rt.block_on(async {
        let device = bound_account(&server, &eab).await?;
        let order = device.new_order(&NewOrder::new(&ids)).await?;
        anyhow::Ok(order)
    })?;
    ensure!(order.state().status == OrderStatus::Ready);
    operator(&server, &["eab", "revoke", &eab.kid]);
    rt.block_on(async {
        let e = order
            .finalize_csr(&csr(&ids, None)?)
            .await
            .err()
            .context("finalize went through with a revoked credential")?;
        let p = problem(e)?;
        assert_type(&p, "unauthorized");
        ensure!(
            p.detail.as_deref().is_some_and(|d| d.contains("revoked")),
            "{p:?}"
        );
        ensure!(order.refresh().await?.status == OrderStatus::Invalid);
        anyhow::Ok(())
    })
    .with_context(|| server.logs())
}

/// An ApplicationUri belongs to the first account certified for it, until the operator
/// releases it.
#[test]
fn an_application_uri_is_bound_to_the_first_account_certified_for_it() -> Result<()> {
    let server = CaServer::start(CaServerOpts {
        extra_toml: "[profiles.opcua]\napplication_uri_prefixes = [\"urn:plant.example:\"]\n\
                     organization = \"Plant Example\"\n"
            .into(),
        ..CaServerOpts::default()
    })?;
    let eab = server.eab_create_with(&["--allow", "ip:10.20.0.0/16"])?;
    let uri = "urn:plant.example:scada-1";
    let rt = tokio::runtime::Runtime::new()?;
    let opcua_order = |account: Account, ip: &'static str| async move {
        let ids = [Identifier::Ip(ip.parse()?)];
        let order = account
            .new_order(&NewOrder::new(&ids).profile("opcua"))
            .await?;
        anyhow::Ok((order, ids))
    };
    rt.block_on(async {
        let scada = bound_account(&server, &eab).await?;
        let (mut order, ids) = opcua_order(scada, "10.20.0.1").await?;
        certificate(&mut order, &ids, Some(uri)).await?;

        let plc = bound_account(&server, &eab).await?;
        let (mut order, ids) = opcua_order(plc, "10.20.0.7").await?;
        let e = order
            .finalize_csr(&csr(&ids, Some(uri))?)
            .await
            .err()
            .context("a second account got the SCADA server's ApplicationUri")?;
        let p = problem(e)?;
        assert_type(&p, "badCSR");
        ensure!(
            p.detail
                .as_deref()
                .is_some_and(|d| d.contains("held by account")),
            "{p:?}"
        );
        anyhow::Ok(())
    })
    .with_context(|| server.logs())?;
    let shown = operator(&server, &["identity", "show", &format!("uri:{uri}")]);
    ensure!(shown.contains("held by account"), "{shown}");
    let released = operator(&server, &["identity", "release", &format!("uri:{uri}")]);
    ensure!(released.contains("released from account"), "{released}");
    rt.block_on(async {
        let plc = bound_account(&server, &eab).await?;
        let (mut order, ids) = opcua_order(plc, "10.20.0.7").await?;
        certificate(&mut order, &ids, Some(uri)).await?;
        anyhow::Ok(())
    })
    .with_context(|| server.logs())
}
