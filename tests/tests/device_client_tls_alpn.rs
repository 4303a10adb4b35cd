//! `device-client --challenge tls-alpn-01` (RFC 8737; RFC 8738 §6 for an address) against the
//! real `ca-server`, whose validator dials the loopback port its config sets
//! (`validation.tls_alpn_port`, with `allow_loopback`).
//!
//! - The device enrolls a name and an address with tls-alpn-01 only: its responder answers the
//!   CA's `acme-tls/1` handshakes, and no http-01 responder runs.
//! - With the responder listening elsewhere than where the CA dials, the authorization fails
//!   with exit code 6, the CA's reason and the hint about the challenge port.
//! - With another program answering on the CA's port with a certificate for a wrong key
//!   authorization, the CA's reason (the acmeIdentifier it got and the one it expected) reaches
//!   the operator.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use iiot_acme_tests::device_client::{expect_exit, verify_issued, Device, Pin};
use iiot_acme_tests::{free_port, CaServer, CaServerOpts};

fn tls_alpn_device(server: &CaServer, dns: &str, listen_port: u16) -> Device {
    let mut d = Device::for_server(server, Pin::RootFile(server.root_pem_path()), &[dns]);
    d.extra = vec![
        "--challenge".into(),
        "tls-alpn-01".into(),
        "--tls-alpn01-listen".into(),
        format!("127.0.0.1:{listen_port}"),
    ];
    d
}

#[test]
fn enrolls_a_name_and_an_address_by_tls_alpn_01_only() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let mut device = tls_alpn_device(&server, "alpn-1.plant.test", server.tls_alpn_port());
    device.ip.push("127.0.0.1".to_owned());
    let out = device.run("enroll", &[]);
    expect_exit(&out, 0, "enroll by tls-alpn-01", &server);
    verify_issued(&server, &device);
    assert!(
        out.stderr.contains("answering tls-alpn-01 challenges")
            && out.stderr.contains("answered a tls-alpn-01 handshake"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("http-01"), "{}", out.stderr);
    let logs = server.logs();
    assert!(logs.contains("tls-alpn-01"), "{logs}");
}

#[test]
fn a_responder_where_the_ca_does_not_dial_fails_with_a_clear_error() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let elsewhere = free_port().expect("port");
    let device = tls_alpn_device(&server, "alpn-2.plant.test", elsewhere);
    let out = device.run("enroll", &[]);
    expect_exit(&out, 6, "nothing answers on the CA's port", &server);
    for want in [
        "authorization of dns:alpn-2.plant.test failed",
        "connection",
        "tls-alpn-01: port 443",
        "--tls-alpn01-listen",
    ] {
        assert!(out.stderr.contains(want), "{want}\n{}", out.stderr);
    }
    assert!(!device.cert().exists());
}

/// Presents one certificate to every ClientHello.
#[derive(Debug)]
struct Always(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Always {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Answers every TLS handshake on `listener` with ALPN `acme-tls/1` and a tls-alpn-01
/// certificate for `name`, but over the key authorization "wrong.wrong": what the CA meets when
/// another program holds the port. Stops when `stop` is set.
fn wrong_responder(listener: TcpListener, name: &str, stop: Arc<AtomicBool>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
    let digest = ring::digest::digest(&ring::digest::SHA256, b"wrong.wrong");
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest.as_ref()));
    let cert = params.self_signed(&key).expect("certificate");
    let signer = rustls::crypto::ring::sign::any_supported_type(
        &rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("signing key");
    let certified = Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Not with_single_cert: rustls refuses to serve a certificate with a critical extension it
    // does not know, as the acmeIdentifier is.
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Always(certified)));
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let config = Arc::new(config);
    listener.set_nonblocking(true).expect("nonblocking");
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut tcp, _)) => {
                let _ = tcp.set_nonblocking(false);
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                if let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) {
                    let _ = conn.complete_io(&mut tcp);
                    conn.send_close_notify();
                    let _ = conn.complete_io(&mut tcp);
                }
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn a_wrong_key_authorization_on_the_ca_port_fails_with_the_cas_reason() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let name = "alpn-3.plant.test";
    let listener = TcpListener::bind(("127.0.0.1", server.tls_alpn_port())).expect("CA's port");
    let stop = Arc::new(AtomicBool::new(false));
    let responder = {
        let stop = stop.clone();
        thread::spawn(move || wrong_responder(listener, name, stop))
    };
    // The device's own responder listens elsewhere; the CA meets the wrong one.
    let device = tls_alpn_device(&server, name, free_port().expect("port"));
    let out = device.run("enroll", &[]);
    stop.store(true, Ordering::SeqCst);
    responder.join().expect("responder thread");
    expect_exit(&out, 6, "a wrong acmeIdentifier", &server);
    for want in [
        "authorization of dns:alpn-3.plant.test failed",
        "incorrectResponse",
        "expected SHA-256 of the key authorization",
    ] {
        assert!(out.stderr.contains(want), "{want}\n{}", out.stderr);
    }
}
