//! Interop with the `instant-acme` crate as an unmodified third-party client, over real HTTPS
//! against the server running in-process, with real http-01 validation on loopback.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use ca_server::config::Config;
use ca_server::ra::eab::NewCredential;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy, RevocationReason, RevocationRequest,
};
use rustls_pki_types::CertificateDer;

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// An http-01 responder on an ephemeral loopback port.
async fn http01_responder() -> (u16, Tokens) {
    let tokens: Tokens = Arc::default();
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
        .with_state(tokens.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(l, app).await });
    (port, tokens)
}

struct Ca {
    directory: String,
    root: std::path::PathBuf,
    app: ca_server::wfe::AppState,
    _dir: tempfile::TempDir,
}

async fn start_ca(http_port: u16, eab_required: bool) -> Ca {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let mut cfg = Config {
        data_dir: dir.path().to_path_buf(),
        listen: addr,
        ..Config::default()
    };
    cfg.validation.http_port = http_port;
    cfg.validation.lab_resolve_all_to = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    // The test's http-01 responder and the CA listen on loopback.
    cfg.validation.allow_loopback = true;
    cfg.eab.required = eab_required;
    let app = ca_server::server::init(cfg).expect("init");
    let info = ca_server::server::start_info(&app);
    let serving = app.clone();
    tokio::spawn(async move { ca_server::server::serve_on(serving, listener).await });
    Ca {
        directory: info.directory_url,
        root: info.root_path,
        app,
        _dir: dir,
    }
}

fn csr_for(names: &[&str]) -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).expect("csr");
    (csr.der().to_vec(), key)
}

async fn issue(account: &Account, tokens: &Tokens, ids: &[Identifier], names: &[&str]) -> String {
    let mut order = account
        .new_order(&NewOrder::new(ids))
        .await
        .expect("new order");
    assert_eq!(order.state().status, OrderStatus::Pending);
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.expect("authz");
        assert_eq!(a.status, AuthorizationStatus::Pending);
        let mut ch = a.challenge(ChallengeType::Http01).expect("http-01 offered");
        let ka = ch.key_authorization();
        tokens
            .lock()
            .expect("lock")
            .insert(ch.token.clone(), ka.as_str().to_owned());
        ch.set_ready().await.expect("set ready");
    }
    let retry = RetryPolicy::new().timeout(Duration::from_secs(20));
    let status = order.poll_ready(&retry).await.expect("poll");
    assert_eq!(status, OrderStatus::Ready, "{:?}", order.state());
    let (csr, _key) = csr_for(names);
    order.finalize_csr(&csr).await.expect("finalize");
    order.poll_certificate(&retry).await.expect("certificate")
}

fn leaf_der(chain_pem: &str) -> Vec<u8> {
    let start = chain_pem.find("-----BEGIN CERTIFICATE-----").expect("pem");
    let body: String = chain_pem[start + 27..]
        .lines()
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body.trim()).expect("b64")
}

#[tokio::test]
async fn instant_acme_issues_renews_rolls_key_and_revokes() {
    let (port, tokens) = http01_responder().await;
    let ca = start_ca(port, false).await;
    let (mut account, _creds) = Account::builder_with_root(&ca.root)
        .expect("builder")
        .create(
            &NewAccount {
                contact: &["mailto:ops@plant.example"],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            ca.directory.clone(),
            None,
        )
        .await
        .expect("account");

    // A device with a local name and its loopback address in one certificate.
    let ids = [
        Identifier::Dns("gw-1.plant.example".into()),
        Identifier::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    let chain = issue(
        &account,
        &tokens,
        &ids,
        &["gw-1.plant.example", "127.0.0.1"],
    )
    .await;
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate"
    );
    let der = leaf_der(&chain);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    let san = cert
        .subject_alternative_name()
        .expect("san ext")
        .expect("san present");
    assert_eq!(san.value.general_names.len(), 2);

    // Key rollover, then the account keeps working under the new key.
    let _new_credentials = account.update_key().await.expect("keyChange");
    let chain2 = issue(&account, &tokens, &ids[..1], &["gw-1.plant.example"]).await;

    // Revoke the first certificate; a second attempt is alreadyRevoked.
    let cert_der = CertificateDer::from(der.clone());
    account
        .revoke(&RevocationRequest {
            certificate: &cert_der,
            reason: Some(RevocationReason::Superseded),
        })
        .await
        .expect("revoke");
    let err = account
        .revoke(&RevocationRequest {
            certificate: &cert_der,
            reason: None,
        })
        .await
        .expect_err("second revoke");
    assert!(err.to_string().contains("alreadyRevoked"), "{err}");
    assert_ne!(chain, chain2);

    account.deactivate().await.expect("deactivate");
}

#[tokio::test]
async fn instant_acme_with_external_account_binding() {
    let (port, tokens) = http01_responder().await;
    let ca = start_ca(port, true).await;
    let new = NewAccount {
        contact: &[],
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let Err(err) = Account::builder_with_root(&ca.root)
        .expect("builder")
        .create(&new, ca.directory.clone(), None)
        .await
    else {
        panic!("an account without EAB was created although EAB is required");
    };
    assert!(err.to_string().contains("externalAccountRequired"), "{err}");

    let cred = ca
        .app
        .eab
        .create(&NewCredential {
            max_uses: Some(1),
            ..NewCredential::default()
        })
        .expect("eab");
    let hmac = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        &cred.hmac_key,
    )
    .expect("hmac");
    let eab = ExternalAccountKey::new(cred.kid.clone(), &hmac);
    let (account, _) = Account::builder_with_root(&ca.root)
        .expect("builder")
        .create(&new, ca.directory.clone(), Some(&eab))
        .await
        .expect("account with EAB");
    let chain = issue(
        &account,
        &tokens,
        &[Identifier::Dns("plc-7".into())],
        &["plc-7"],
    )
    .await;
    assert!(chain.contains("BEGIN CERTIFICATE"));

    // Single use: a second account with the same credential is refused.
    let Err(err) = Account::builder_with_root(&ca.root)
        .expect("builder")
        .create(&new, ca.directory.clone(), Some(&eab))
        .await
    else {
        panic!("a spent single-use EAB credential bound a second account");
    };
    assert!(err.to_string().contains("unauthorized"), "{err}");
}

/// The server offers HTTP/1.1 only (server.rs explains why): a client offering h2 first gets
/// http/1.1, and a client that names no protocol still connects.
#[tokio::test]
async fn tls_negotiates_http1_only() {
    let ca = start_ca(1, false).await;
    let port = ca
        .directory
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse::<u16>().ok())
        .expect("port in the directory URL");
    let mut roots = rustls::RootCertStore::empty();
    let root_pem = std::fs::read(&ca.root).expect("root");
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&root_pem) {
        roots.add(cert.expect("root PEM")).expect("add root");
    }
    for (offered, expected) in [
        (
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Some(&b"http/1.1"[..]),
        ),
        (Vec::new(), None),
    ] {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        config.alpn_protocols = offered;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), expected);
    }
}
