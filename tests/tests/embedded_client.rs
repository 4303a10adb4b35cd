//! The no_std embedded client against the real `ca-server`, over real TCP and TLS on loopback.
//!
//! The client itself is sans-IO; these tests supply what an integrator supplies: a transport (a
//! rustls stream pinned to the CA root, behind `embedded_io` `Read`/`Write`), an RNG for key
//! generation, a clock-less sleep, and the operator at the CA. Every enrollment path is run:
//! a pre-authorizing credential, device-attest-01 with an IDevID, and operator approval, plus
//! renewal with ARI and the error paths an integrator must be able to tell apart.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use embedded_client::attest::SoftwareIdevid;
use embedded_client::driver::{self, Platform, RX_BUFFER, TX_BUFFER};
use embedded_client::renewal::{self, RenewalCheck};
use embedded_client::{
    AccountKey, Config, DeviceKey, Eab, Enrollment, Error, Event, Identifier, IdevidSigner,
    PairingCode, ProblemKind,
};
use iiot_acme_tests::cli::{operator, pending_request};
use iiot_acme_tests::idevid::Manufacturer;
use iiot_acme_tests::{openssl_verify, temp_dir, CaServer, CaServerOpts};
use x509_parser::prelude::*;

/// The integrator's TLS stream: rustls trusting only the CA root (SPEC §2.3).
struct Tls(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl embedded_io::ErrorType for Tls {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io::Read for Tls {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        std::io::Read::read(&mut self.0, buf).map_err(|_| embedded_io::ErrorKind::Other)
    }
}

impl embedded_io::Write for Tls {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        std::io::Write::write(&mut self.0, buf).map_err(|_| embedded_io::ErrorKind::Other)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        std::io::Write::flush(&mut self.0).map_err(|_| embedded_io::ErrorKind::Other)
    }
}

/// What the tests give the driver: connections to the CA, sleeps, and a channel where the
/// device "shows" its pairing code.
struct TestPlatform {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    codes: Option<mpsc::Sender<PairingCode>>,
    /// The codes shown so far, each once.
    shown: Vec<PairingCode>,
    connections: usize,
    waits: Vec<u32>,
    /// Sleep for as long as the driver asks (else 200 ms, which most tests need no more of).
    real_sleep: bool,
}

impl TestPlatform {
    fn new(server: &CaServer) -> Self {
        let pem = fs::read_to_string(server.root_pem_path()).expect("root");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from(pem_der(&pem)))
            .expect("root parses");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], server.listen_port())),
            tls: Arc::new(tls),
            codes: None,
            shown: Vec::new(),
            connections: 0,
            waits: Vec::new(),
            real_sleep: false,
        }
    }
}

impl Platform for TestPlatform {
    type Connection = Tls;

    fn connect(&mut self) -> Result<Tls, Error> {
        let tcp = TcpStream::connect(self.addr).map_err(|_| Error::Transport)?;
        tcp.set_nodelay(true).map_err(|_| Error::Transport)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|_| Error::Transport)?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let conn =
            rustls::ClientConnection::new(self.tls.clone(), name).map_err(|_| Error::Transport)?;
        self.connections += 1;
        Ok(Tls(rustls::StreamOwned::new(conn, tcp)))
    }

    fn sleep(&mut self, seconds: u32) -> Result<(), Error> {
        self.waits.push(seconds);
        if self.waits.len() > 200 {
            return Err(Error::Transport);
        }
        // The server's Retry-After is honoured in spirit; most tests need not wait it out.
        if self.real_sleep {
            thread::sleep(Duration::from_secs(seconds.into()));
        } else {
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn show_pairing_code(&mut self, code: &PairingCode) {
        // Each new code once: the driver shows the code again at every poll.
        if self.shown.last() != Some(code) {
            self.shown.push(*code);
            if let Some(tx) = &self.codes {
                let _ = tx.send(*code);
            }
        }
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    let mut out = vec![0u8; pem.len()];
    let n = renewal::first_certificate_der(pem.as_bytes(), &mut out)
        .expect("PEM certificate")
        .len();
    out.truncate(n);
    out
}

fn new_key() -> DeviceKey {
    DeviceKey::generate(&mut rand::rngs::OsRng)
}

fn base_url(server: &CaServer) -> String {
    format!("https://127.0.0.1:{}", server.listen_port())
}

/// Runs one enrollment with the blocking driver; returns the PEM chain.
fn enroll<'a>(
    platform: &mut TestPlatform,
    cfg: Config<'a>,
    account: &'a AccountKey,
    cert_key: &'a DeviceKey,
    signer: Option<&'a mut (dyn IdevidSigner + 'a)>,
) -> Result<String, Error> {
    let mut e = Enrollment::new(cfg, account, cert_key, signer)?;
    let mut tx = [0u8; TX_BUFFER];
    let mut rx = [0u8; RX_BUFFER];
    let pem = driver::enroll(platform, &mut e, &mut tx, &mut rx)?;
    assert!(e.is_done());
    Ok(String::from_utf8(rx[pem].to_vec()).expect("PEM is text"))
}

fn config<'a>(base_url: &'a str, identifiers: &'a [Identifier<'a>]) -> Config<'a> {
    Config {
        base_url,
        identifiers,
        eab: None,
        profile: None,
        replaces: None,
        terms_of_service_agreed: false,
    }
}

fn with_eab<'a>(cfg: Config<'a>, kid: &'a str, hmac_key: &'a str) -> Config<'a> {
    Config {
        eab: Some(Eab { kid, hmac_key }),
        ..cfg
    }
}

fn eab_create(server: &CaServer, allow: &[&str]) -> (String, String) {
    let mut args = vec!["eab", "create", "--json"];
    for a in allow {
        args.extend(["--allow", a]);
    }
    let created: serde_json::Value =
        serde_json::from_str(&operator(server, &args)).expect("eab create --json");
    (
        created["kid"].as_str().expect("kid").to_owned(),
        created["hmac"].as_str().expect("hmac").to_owned(),
    )
}

/// Checks the chain against the root with openssl and returns the leaf's DER.
fn verify_chain(server: &CaServer, pem: &str) -> Vec<u8> {
    let dir = temp_dir("embedded-chain-").expect("temp dir");
    let path = dir.path().join("chain.pem");
    fs::write(&path, pem).expect("write chain");
    openssl_verify(&server.root_pem_path(), &path).expect("openssl verifies the chain");
    pem_der(pem)
}

/// The leaf's subjectAltName, as text per entry, and whether its key is `key`'s.
fn leaf_names(leaf: &[u8], key: &DeviceKey) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(leaf).expect("leaf parses");
    let (x, y) = key.public_xy();
    let spki = cert.public_key().subject_public_key.data.to_vec();
    assert_eq!(
        spki,
        [&[4u8][..], &x, &y].concat(),
        "leaf certifies the device's key"
    );
    let san = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("SAN present");
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
            GeneralName::OtherName(oid, value) => {
                // [0] EXPLICIT PermanentIdentifier { identifierValue UTF8String, .. }, short
                // forms only (test serials are short).
                let serial = match value {
                    [0xa0, _, 0x30, _, 0x0c, len, rest @ ..] => {
                        String::from_utf8_lossy(&rest[..usize::from(*len)]).into_owned()
                    }
                    _ => panic!("unexpected otherName encoding {value:02x?}"),
                };
                format!("{}:{serial}", oid.to_id_string())
            }
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn enrolls_with_a_pre_authorizing_credential_and_renews_by_ari() {
    let server = CaServer::start(CaServerOpts {
        eab_required: true,
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let (kid, hmac) = eab_create(&server, &["serial:EMB-0001", "dns:line-3.plant.test"]);
    let url = base_url(&server);
    let ids = [
        Identifier::Permanent("EMB-0001"),
        Identifier::Dns("gw-1.line-3.plant.test"),
    ];
    let account = AccountKey::new(new_key());
    let cert_key = new_key();
    let cfg = with_eab(config(&url, &ids), &kid, &hmac);
    let mut platform = TestPlatform::new(&server);
    let pem = enroll(&mut platform, cfg, &account, &cert_key, None).expect("enrolls");
    let leaf = verify_chain(&server, &pem);
    assert_eq!(
        leaf_names(&leaf, &cert_key),
        // SPEC §4.4 orders identifiers: names first, then the device identity.
        ["dns:gw-1.line-3.plant.test", "1.3.6.1.5.5.7.8.3:EMB-0001"]
    );
    // Keep-alive: the whole flow went over one TLS connection.
    assert_eq!(platform.connections, 1, "one connection for the enrollment");

    // Renewal: ask for the window (RFC 9773), then a new order that `replaces` the certificate.
    let mut id = [0u8; 128];
    let cert_id = renewal::cert_id(&leaf, &mut id)
        .expect("ARI certificate ID")
        .to_owned();
    let mut check = RenewalCheck::new(&url, &cert_id).expect("renewal check");
    let window = loop {
        let mut tx = [0u8; 1024];
        let mut rx = [0u8; RX_BUFFER];
        let n = check.next_request(&mut tx).expect("request");
        let len = raw_exchange(&mut platform, &tx[..n], &mut rx);
        if let Some(w) = check.handle_response(&mut rx[..len]).expect("renewalInfo") {
            break w;
        }
    };
    let info = renewal::certificate_info(&leaf).expect("validity");
    assert!(
        info.not_before < window.start && window.start < window.end && window.end <= info.not_after,
        "{window:?} inside {info:?}"
    );
    assert!(window.retry_after.is_some());

    let renewed_key = new_key();
    let mut cfg = config(&url, &ids);
    cfg.replaces = Some(&cert_id);
    let renewed = enroll(&mut platform, cfg, &account, &renewed_key, None).expect("renews");
    let renewed_leaf = verify_chain(&server, &renewed);
    assert_ne!(renewed_leaf, leaf);
    leaf_names(&renewed_leaf, &renewed_key);
    let audit: serde_json::Value =
        serde_json::from_str(&operator(&server, &["audit", "--json"])).expect("audit JSON");
    assert_eq!(audit["certificates"]["total"], 2, "{audit}");

    // The same certificate cannot be replaced twice: the server answers 409 alreadyReplaced
    // (ca-server's own tests check that), and only by dropping `replaces` and ordering again
    // does the client still get a certificate.
    let third_key = new_key();
    let mut cfg = config(&url, &ids);
    cfg.replaces = Some(&cert_id);
    let third =
        enroll(&mut platform, cfg, &account, &third_key, None).expect("enrolls without replaces");
    leaf_names(&verify_chain(&server, &third), &third_key);

    // An identifier outside the allow-list is refused by the server, by type.
    let other = [Identifier::Dns("gw-1.line-4.plant.test")];
    let err = enroll(
        &mut platform,
        config(&url, &other),
        &account,
        &new_key(),
        None,
    )
    .expect_err("outside the allow-list");
    assert_eq!(
        err,
        Error::Problem {
            kind: ProblemKind::RejectedIdentifier,
            status: 400
        }
    );
}

/// One request/response over a fresh connection, for the tests that drive the state machine
/// by hand.
fn raw_exchange(platform: &mut TestPlatform, request: &[u8], rx: &mut [u8]) -> usize {
    use embedded_client::http::{framing, Framing};
    use embedded_io::{Read as _, Write as _};
    let mut conn = platform.connect().expect("connect");
    conn.write_all(request).expect("send");
    conn.flush().expect("flush");
    let mut len = 0;
    loop {
        let n = conn.read(&mut rx[len..]).unwrap_or(0);
        len += n;
        match framing(&rx[..len], n == 0).expect("framing") {
            Framing::Complete(total) => return total,
            Framing::Partial => {}
        }
    }
}

#[test]
fn enrolls_by_device_attestation_with_an_idevid() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let maker = Manufacturer::new("Embedded Devices Root");
    maker
        .trust(&server, "embedded-devices", "1.3.6.1.4.1.32473")
        .expect("trust anchor added");
    let url = base_url(&server);
    let serial = "MCU-7731";
    let identifier = "MCU-7731/1.3.6.1.4.1.32473";

    // The IDevID key as a manufacturer provisions it: generated on the chip, certified by the
    // manufacturer's CA.
    let idevid_key = new_key();
    let idevid_cert = maker.issue(serial, &spki(&idevid_key));
    let chain: [&[u8]; 1] = [idevid_cert.der()];
    let mut signer = SoftwareIdevid::new(idevid_key.clone(), &chain);

    let ids = [Identifier::Permanent(identifier)];
    let account = AccountKey::new(new_key());
    let cert_key = new_key();
    let mut platform = TestPlatform::new(&server);
    let pem = enroll(
        &mut platform,
        config(&url, &ids),
        &account,
        &cert_key,
        Some(&mut signer),
    )
    .expect("enrolls by device-attest-01");
    let leaf = verify_chain(&server, &pem);
    assert_eq!(
        leaf_names(&leaf, &cert_key),
        [format!("1.3.6.1.5.5.7.8.3:{serial}")]
    );
    // The CN is the whole identifier, assigner included (SPEC §8.2).
    let (_, cert) = X509Certificate::from_der(&leaf).expect("leaf parses");
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().expect("text"))
        .collect();
    assert_eq!(cn, [identifier]);

    // An IDevID for another serial is refused with the server's badAttestationStatement.
    let other_cert = maker.issue("MCU-9999", &spki(&idevid_key));
    let other_chain: [&[u8]; 1] = [other_cert.der()];
    let mut other = SoftwareIdevid::new(idevid_key, &other_chain);
    let err = enroll(
        &mut platform,
        config(&url, &ids),
        &AccountKey::new(new_key()),
        &new_key(),
        Some(&mut other),
    )
    .expect_err("serial mismatch");
    assert_eq!(
        err,
        Error::AuthorizationFailed(ProblemKind::BadAttestationStatement)
    );

    // Without an IDevID signer the device has no challenge it can answer.
    let err = enroll(
        &mut platform,
        config(&url, &ids),
        &AccountKey::new(new_key()),
        &new_key(),
        None,
    )
    .expect_err("no signer");
    assert_eq!(err, Error::NoUsableChallenge);
}

/// SubjectPublicKeyInfo of a P-256 key (RFC 5480), for the test manufacturer to certify.
fn spki(key: &DeviceKey) -> rcgen::SubjectPublicKeyInfo {
    let (x, y) = key.public_xy();
    let prefix = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
    ];
    rcgen::SubjectPublicKeyInfo::from_der(&[&prefix[..], &x, &y].concat()).expect("SPKI")
}

fn approval_server() -> CaServer {
    CaServer::start(CaServerOpts {
        extra_toml: "[enrollment]\noperator_approval = true\n".to_owned(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts with operator approval")
}

/// An enrollment running in a thread: the PEM chain and the certificate key, or the error.
type Device = thread::JoinHandle<Result<(String, DeviceKey), Error>>;

/// Starts an enrollment of `name` in a thread; returns the code it showed and its outcome.
fn enroll_awaiting_approval(server: &CaServer, name: &'static str) -> (PairingCode, Device) {
    let (tx, rx) = mpsc::channel();
    let mut platform = TestPlatform::new(server);
    platform.codes = Some(tx);
    let url = base_url(server);
    let handle = thread::spawn(move || {
        let ids = [Identifier::Dns(name)];
        let account = AccountKey::new(new_key());
        let cert_key = new_key();
        let pem = enroll(&mut platform, config(&url, &ids), &account, &cert_key, None)?;
        assert!(!platform.waits.is_empty(), "polled while waiting");
        Ok((pem, cert_key))
    });
    let code = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the device shows its pairing code");
    (code, handle)
}

#[test]
fn enrolls_by_operator_approval_and_stops_on_rejection() {
    let server = approval_server();
    let (code, device) = enroll_awaiting_approval(&server, "sensor-7.plant.test");
    let request = pending_request(&server, code.as_str(), Duration::from_secs(30));
    assert_eq!(request["identifier"]["value"], "sensor-7.plant.test");
    operator(
        &server,
        &["approval", "approve", request["id"].as_str().expect("id")],
    );
    let (pem, key) = device.join().expect("thread").expect("approved enrollment");
    let leaf = verify_chain(&server, &pem);
    assert_eq!(leaf_names(&leaf, &key), ["dns:sensor-7.plant.test"]);

    let (code, device) = enroll_awaiting_approval(&server, "sensor-8.plant.test");
    let request = pending_request(&server, code.as_str(), Duration::from_secs(30));
    operator(
        &server,
        &[
            "approval",
            "reject",
            request["id"].as_str().expect("id"),
            "--reason",
            "not on the asset list",
        ],
    );
    let err = device.join().expect("thread").expect_err("rejected");
    assert_eq!(err, Error::AuthorizationFailed(ProblemKind::Unauthorized));
}

/// SPEC §5.9: one device (one account key) enrolling two identifiers waits for two approval
/// requests, each with its own code, and each code is the one the operator sees listed for it.
#[test]
fn each_request_of_one_device_shows_its_own_pairing_code() {
    let server = approval_server();
    let (tx, rx) = mpsc::channel();
    let mut platform = TestPlatform::new(&server);
    platform.codes = Some(tx);
    let url = base_url(&server);
    let device = thread::spawn(move || {
        let ids = [
            Identifier::Dns("sensor-9.plant.test"),
            Identifier::Dns("sensor-10.plant.test"),
        ];
        let account = AccountKey::new(new_key());
        let cert_key = new_key();
        let pem = enroll(&mut platform, config(&url, &ids), &account, &cert_key, None)?;
        Ok::<_, Error>((pem, cert_key, platform.shown))
    });
    let (mut codes, mut names) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        // The client asks for one authorization at a time, in the order's order.
        let code = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the device shows the code of its next request");
        let request = pending_request(&server, code.as_str(), Duration::from_secs(30));
        names.push(request["identifier"]["value"].clone());
        codes.push(code);
        operator(
            &server,
            &["approval", "approve", request["id"].as_str().expect("id")],
        );
    }
    assert_ne!(codes[0], codes[1], "one account, two requests, two codes");
    names.sort_by_key(ToString::to_string);
    assert_eq!(
        names,
        [
            serde_json::json!("sensor-10.plant.test"),
            serde_json::json!("sensor-9.plant.test")
        ]
    );
    let (pem, key, shown) = device.join().expect("thread").expect("approved enrollment");
    assert_eq!(shown, codes);
    let leaf = verify_chain(&server, &pem);
    let mut sans = leaf_names(&leaf, &key);
    sans.sort();
    assert_eq!(
        sans,
        ["dns:sensor-10.plant.test", "dns:sensor-9.plant.test"]
    );
}

#[test]
fn refusals_are_told_apart() {
    let server = CaServer::start(CaServerOpts {
        eab_required: true,
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let url = base_url(&server);
    let ids = [Identifier::Dns("plc-2.plant.test")];
    let mut platform = TestPlatform::new(&server);
    let account = AccountKey::new(new_key());

    // The directory says EAB is required: the client stops before creating anything.
    let err = enroll(
        &mut platform,
        config(&url, &ids),
        &account,
        &new_key(),
        None,
    )
    .expect_err("EAB required");
    assert_eq!(err, Error::EabRequired);

    // A credential with the wrong HMAC key is refused by the server.
    let (kid, _) = eab_create(&server, &[]);
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let cfg = with_eab(config(&url, &ids), &kid, wrong);
    let err = enroll(&mut platform, cfg, &account, &new_key(), None).expect_err("wrong HMAC");
    assert_eq!(
        err,
        Error::Problem {
            kind: ProblemKind::Unauthorized,
            status: 403
        }
    );
}

#[test]
fn a_nonce_lost_to_a_server_restart_is_retried() {
    let mut server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let (kid, hmac) = eab_create(&server, &["dns:plant.test"]);
    let url = base_url(&server);
    let ids = [Identifier::Dns("hmi-3.plant.test")];
    let account = AccountKey::new(new_key());
    let cert_key = new_key();
    let cfg = with_eab(config(&url, &ids), &kid, &hmac);
    let mut e = Enrollment::new(cfg, &account, &cert_key, None).expect("config");
    let mut platform = TestPlatform::new(&server);
    let mut tx = [0u8; TX_BUFFER];
    let mut rx = [0u8; RX_BUFFER];
    let mut restarted = false;
    for exchange in 0.. {
        assert!(exchange < 40, "enrollment did not finish");
        let n = e.next_request(&mut tx, &mut rx).expect("request");
        if exchange == 2 && !restarted {
            // The server forgets its nonces when it restarts (SPEC §3.5): the one the client
            // holds is now unknown, and the server answers badNonce with a fresh one.
            server.restart().expect("restart");
            platform = TestPlatform::new(&server);
            restarted = true;
        }
        let len = raw_exchange(&mut platform, &tx[..n], &mut rx);
        if exchange == 2 {
            let head = String::from_utf8_lossy(&rx[..len]);
            assert!(head.contains("badNonce"), "{head}");
        }
        let text = format!(
            "{}\n---\n{}",
            String::from_utf8_lossy(&tx[..n]),
            String::from_utf8_lossy(&rx[..len])
        );
        match e
            .handle_response(&mut rx[..len])
            .unwrap_or_else(|err| panic!("{err:?}: {text}"))
        {
            Event::Issued { pem } => {
                let pem = String::from_utf8(rx[pem].to_vec()).expect("text");
                verify_chain(&server, &pem);
                return;
            }
            Event::Continue => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// SPEC §7.6: a device that meets a rate limit waits the CA's Retry-After and sends the same
/// request again, then enrolls.
#[test]
fn waits_out_a_rate_limit_and_enrolls() {
    let server = CaServer::start(CaServerOpts {
        extra_toml: "[rate_limits]\nnew_account_per_address = { count = 1, period = \"6s\" }\n"
            .into(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let (kid, hmac) = eab_create(&server, &["dns:line-4.plant.test"]);
    let url = base_url(&server);
    let mut platform = TestPlatform::new(&server);
    platform.real_sleep = true;
    for (n, name) in ["gw-1.line-4.plant.test", "gw-2.line-4.plant.test"]
        .into_iter()
        .enumerate()
    {
        let ids = [Identifier::Dns(name)];
        let (account, cert_key) = (AccountKey::new(new_key()), new_key());
        let started = std::time::Instant::now();
        let cfg = with_eab(config(&url, &ids), &kid, &hmac);
        let pem = enroll(&mut platform, cfg, &account, &cert_key, None)
            .unwrap_or_else(|e| panic!("device {n}: {e:?}\n{}", server.logs()));
        verify_chain(&server, &pem);
        if n == 1 {
            // The second account from this address waited for the bucket to refill.
            let asked = platform.waits.last().copied().expect("a wait");
            assert!((1..=6).contains(&asked), "{:?}", platform.waits);
            assert!(started.elapsed() >= Duration::from_secs(asked.into()));
        } else {
            assert!(platform.waits.is_empty(), "{:?}", platform.waits);
        }
    }
}
