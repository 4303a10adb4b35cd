//! Durability: every certificate a client has received survives `kill -9` of the server in the
//! middle of a load, because the server flushes state to disk before it answers.
//!
//! Several unmodified instant-acme clients enroll concurrently (account, order, http-01,
//! finalize, download) against the `ca-server` binary. While they are mid-flight the server is
//! SIGKILLed; it is restarted on the same data directory and each client that received a
//! certificate fetches its order and certificate again with its stored account credentials.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use iiot_acme_tests::{CaServer, CaServerOpts};
use instant_acme::{
    Account, AccountCredentials, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// What a client got: enough to find its certificate again after the crash.
struct Received {
    credentials: String,
    order_url: String,
    chain_pem: String,
}

async fn serve_http01(port: u16, tokens: Tokens) {
    let app = Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            get(
                |State(t): State<Tokens>, Path(token): Path<String>| async move {
                    t.lock()
                        .expect("lock")
                        .get(&token)
                        .cloned()
                        .unwrap_or_default()
                },
            ),
        )
        .with_state(tokens);
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind http-01 port");
    tokio::spawn(async move { axum::serve(l, app).await });
}

fn csr(name: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.serialize_request(&key).expect("csr").der().to_vec()
}

async fn enroll(
    directory: &str,
    root: &std::path::Path,
    tokens: &Tokens,
    name: &str,
) -> anyhow::Result<Received> {
    let (account, credentials) = Account::builder_with_root(root)?
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
    let mut order = account
        .new_order(&NewOrder::new(&[Identifier::Dns(name.to_owned())]))
        .await?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a?;
        let mut ch = a
            .challenge(ChallengeType::Http01)
            .ok_or_else(|| anyhow::anyhow!("no http-01"))?;
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
    anyhow::ensure!(status == OrderStatus::Ready, "order {status:?}");
    order.finalize_csr(&csr(name)).await?;
    let chain_pem = order.poll_certificate(&retry).await?;
    Ok(Received {
        credentials: serde_json::to_string(&credentials)?,
        order_url: order.url().to_owned(),
        chain_pem,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_received_before_kill_9_survive_restart() {
    // The harness is blocking (it probes readiness with a blocking HTTP client).
    let mut server = tokio::task::spawn_blocking(|| CaServer::start(CaServerOpts::default()))
        .await
        .expect("join")
        .expect("ca-server starts");
    let tokens: Tokens = Arc::default();
    serve_http01(server.http_port(), tokens.clone()).await;
    let directory = server.directory_url();
    let root = server.root_pem_path();

    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (directory, root, tokens, received, stop) = (
            directory.clone(),
            root.clone(),
            tokens.clone(),
            received.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("dev-{w}-{i}.plant.test");
                i += 1;
                if let Ok(r) = enroll(&directory, &root, &tokens, &name).await {
                    received.lock().expect("lock").push(r);
                }
            }
        }));
    }

    // Kill while the load runs: after enough certificates, with the workers still going.
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.lock().expect("lock").len() < 24 {
        assert!(
            Instant::now() < deadline,
            "load too slow:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill_9().expect("kill -9");
    let at_kill = received.lock().expect("lock").len();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        // Workers end once their in-flight enrollment fails against the dead server.
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }
    let got = std::mem::take(&mut *received.lock().expect("lock"));
    // Responses may have reached clients between the count and the kill; all must survive.
    assert!(got.len() >= at_kill);

    let server = tokio::task::spawn_blocking(move || server.restart().map(|()| server))
        .await
        .expect("join")
        .expect("restart on the same data directory");
    let mut checked = 0;
    for r in &got {
        let creds: AccountCredentials = serde_json::from_str(&r.credentials).expect("creds");
        let account = Account::builder_with_root(&root)
            .expect("builder")
            .from_credentials(creds)
            .await
            .expect("account survives");
        let mut order = account
            .order(r.order_url.clone())
            .await
            .expect("order survives");
        assert_eq!(order.state().status, OrderStatus::Valid, "{}", r.order_url);
        let chain = order
            .certificate()
            .await
            .expect("certificate download")
            .expect("certificate present");
        assert_eq!(chain, r.chain_pem, "the same certificate after the crash");
        checked += 1;
    }
    eprintln!("{checked} certificates received before kill -9 all present after restart");
    assert!(checked >= 24);
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("join");
}
