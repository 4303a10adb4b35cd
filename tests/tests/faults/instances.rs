//! Two CA instances on one PostgreSQL database, behind a round-robin front: the load spreads
//! over both with no error and no serial used twice; `kill -9` of one leaves the other serving
//! every certificate issued so far and issuing more; a database stopped for a few seconds makes
//! requests fail with 503 and `Retry-After`, and service resumes by itself once it is back.
//!
//! The database is a throwaway cluster (`initdb` in a temporary directory, a loopback port),
//! the instances are the `ca-server` binary with `storage.backend = "postgres"`, each with its
//! own data directory holding a copy of the same CA files, and `public_url` naming the front.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ca_server::storage::postgres::test_cluster::{copy_dir, TestCluster};
use iiot_acme_tests::{free_port, CaServerOpts};
use instant_acme::Account;
use tokio::net::{TcpListener, TcpStream};

use crate::acme::{serve_http01, Tokens};
use crate::common::{enroll, Attempt};
use crate::kill::{check_served, crl_lists, serial, start, Issued};

/// Concurrent enrolling clients.
const CLIENTS: usize = 6;

/// A TCP front that hands each new connection to the next backend that accepts it, as a
/// round-robin load balancer with a connect health check does. Counts connections per backend.
async fn front(listener: TcpListener, backends: Vec<u16>, served: Arc<Vec<AtomicUsize>>) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let (backends, served, next) = (backends.clone(), served.clone(), next.clone());
        tokio::spawn(async move {
            for _ in 0..backends.len() {
                let i = next.fetch_add(1, Ordering::Relaxed) % backends.len();
                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", backends[i])).await {
                    served[i].fetch_add(1, Ordering::Relaxed);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
            }
        });
    }
}

/// Waits until the clients together hold `n` certificates, failing after `within`.
async fn until_received(attempts: &Mutex<Vec<Arc<Mutex<Attempt>>>>, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = attempts
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a.lock().expect("lock").chain_pem.is_some())
            .count();
        if got >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {n} certificates in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_load_survive_each_other_and_wait_out_the_database() {
    let cluster = tokio::task::spawn_blocking(|| TestCluster::start(&[]))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{e}"));
    let database = cluster.fresh_database().expect("database");
    let front_port = free_port().expect("port");
    let http_port = free_port().expect("port");
    let opts = CaServerOpts {
        public_url: Some(format!("https://127.0.0.1:{front_port}")),
        http_port: Some(http_port),
        rate_limits: false,
        extra_toml: format!(
            "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\n",
            cluster.url(&database)
        ),
        ..CaServerOpts::default()
    };
    let a = start(opts.clone()).await;
    let b_dir = iiot_acme_tests::temp_dir("iiot-ca-b-").expect("tempdir");
    copy_dir(&a.data_dir().join("ca"), &b_dir.path().join("ca")).expect("copy the CA");
    let mut b = start(CaServerOpts {
        data_dir: Some(b_dir.path().to_owned()),
        ..opts
    })
    .await;
    let root = a.root_pem_path();

    // Credentials are records of the shared store: `ca-server eab` reaches it through the
    // configuration, and refuses to write a file the instances would not read.
    let eab = |args: &[&std::ffi::OsStr]| {
        let bin = iiot_acme_tests::ca_server_bin().expect("ca-server");
        std::process::Command::new(bin)
            .arg("eab")
            .args(args)
            .output()
            .expect("ca-server eab")
    };
    let without = eab(&[
        "create".as_ref(),
        "--data-dir".as_ref(),
        b.data_dir().as_os_str(),
    ]);
    let refusal = String::from_utf8_lossy(&without.stderr);
    assert!(
        !without.status.success() && refusal.contains("--config"),
        "{refusal}"
    );
    let made = eab(&[
        "create".as_ref(),
        "--json".as_ref(),
        "--config".as_ref(),
        b.config_path().as_os_str(),
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let kid = serde_json::from_slice::<serde_json::Value>(&made.stdout).expect("json")["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    let listed = eab(&[
        "list".as_ref(),
        "--config".as_ref(),
        a.config_path().as_os_str(),
    ]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&kid),
        "instance a lists b's credential"
    );

    let served: Arc<Vec<AtomicUsize>> = Arc::new(vec![AtomicUsize::new(0), AtomicUsize::new(0)]);
    let listener = TcpListener::bind(("127.0.0.1", front_port))
        .await
        .expect("bind front");
    tokio::spawn(front(
        listener,
        vec![a.listen_port(), b.listen_port()],
        served.clone(),
    ));
    let tokens: Tokens = Arc::default();
    serve_http01(http_port, tokens.clone())
        .await
        .expect("http-01");
    let directory = format!("https://127.0.0.1:{front_port}/directory");

    let attempts: Arc<Mutex<Vec<Arc<Mutex<Attempt>>>>> = Arc::default();
    let errors = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..CLIENTS {
        let (directory, root, tokens, attempts, errors, killed, stop) = (
            directory.clone(),
            root.clone(),
            tokens.clone(),
            attempts.clone(),
            errors.clone(),
            killed.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("dev-{w}-{i}.plant.test");
                i += 1;
                let at = Arc::new(Mutex::new(Attempt {
                    name: name.clone(),
                    ..Attempt::default()
                }));
                attempts.lock().expect("lock").push(at.clone());
                let builder = Account::builder_with_root(&root).expect("builder");
                if enroll(builder, &directory, &tokens, &name, &at)
                    .await
                    .is_err()
                    && !killed.load(Ordering::Relaxed)
                {
                    // Before the kill every request must succeed.
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // Both instances serve, without an error.
    until_received(&attempts, 24, Duration::from_secs(120)).await;
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "errors before the kill:\n{}",
        b.logs()
    );
    let spread: Vec<usize> = served.iter().map(|s| s.load(Ordering::Relaxed)).collect();
    assert!(
        spread.iter().all(|n| *n > 0),
        "connections per instance: {spread:?}"
    );

    // kill -9 one instance under load: the other goes on.
    killed.store(true, Ordering::Relaxed);
    b.kill_9().expect("kill -9");
    let at_kill = attempts
        .lock()
        .expect("lock")
        .iter()
        .filter(|a| a.lock().expect("lock").chain_pem.is_some())
        .count();
    until_received(&attempts, at_kill + 12, Duration::from_secs(120)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }

    // Every certificate a client received is served, byte for byte, by the instance left;
    // no serial was used twice.
    let issued: Vec<Issued> = attempts
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|a| {
            let a = a.lock().expect("lock");
            Some(Issued {
                credentials: a.credentials.clone()?,
                order_url: a.order_url.clone()?,
                chain_pem: a.chain_pem.clone()?,
                received: true,
            })
        })
        .collect();
    let mut serials = HashSet::new();
    for i in &issued {
        check_served(&root, i).await.expect("served after the kill");
        assert!(
            serials.insert(serial(&i.chain_pem).expect("serial")),
            "serial used twice"
        );
    }
    eprintln!(
        "{} certificates over two instances (connections {spread:?}), {} after kill -9 of one; all served, serials distinct",
        issued.len(),
        issued.len() - at_kill
    );

    // The database stops: a request that needs it gets 503 with Retry-After, within the
    // store's deadline; once the database is back, service resumes without a restart.
    let crl = format!("https://127.0.0.1:{front_port}/crl");
    let trust = root.clone();
    let (stopped, cluster) = tokio::task::spawn_blocking(move || {
        let client = iiot_acme_tests::https::client_trusting(&trust).expect("client");
        cluster.stop();
        let started = Instant::now();
        let resp = client.get(&crl).send().expect("GET /crl");
        let answer = (
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or("").to_owned()),
            started.elapsed(),
        );
        (answer, cluster)
    })
    .await
    .expect("join");
    assert_eq!(stopped.0, 503, "GET /crl with the database down");
    assert!(
        stopped
            .1
            .as_deref()
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "Retry-After: {stopped:?}"
    );
    assert!(
        stopped.2 < Duration::from_secs(15),
        "answered within the deadline: {stopped:?}"
    );

    let (cluster, back) = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(3));
        cluster.start_again().expect("database back");
        (cluster, Instant::now())
    })
    .await
    .expect("join");
    let at = Mutex::new(Attempt::default());
    let deadline = back + Duration::from_secs(30);
    loop {
        let builder = Account::builder_with_root(&root).expect("builder");
        match enroll(builder, &directory, &tokens, "after-outage.plant.test", &at).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no recovery 30 s after the database returned: {e:#}\n{}",
                    a.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eprintln!("enrolled {:?} after the database returned", back.elapsed());
    let url = format!("https://127.0.0.1:{front_port}/crl");
    tokio::task::spawn_blocking(move || crl_lists(&url, &root, &[]))
        .await
        .expect("join")
        .expect("a current CRL after the outage");
    tokio::task::spawn_blocking(move || drop((a, b, cluster)))
        .await
        .expect("join");
}
