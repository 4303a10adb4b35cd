//! Validator tests against real sockets on loopback (127.0.0.1, and ::1 for the IPv6 tests).
//! Every server listens on an ephemeral port, and the validator config points at that port.
//!
//! The IPv6 tests fail where `[::1]` cannot be bound, unless `IIOT_ACME_SKIP_IPV6=1` says to
//! skip them on such a machine; a skip is then announced in the test output.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use ring::digest::{digest, SHA256};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::*;

const TOKEN: &str = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
const KEY_AUTH: &str =
    "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ";
const CHALLENGE_PATH: &str =
    "/.well-known/acme-challenge/evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn config(http_port: u16, tls_alpn_port: u16) -> ValidationConfig {
    ValidationConfig {
        http_port,
        tls_alpn_port,
        timeout: Duration::from_secs(5),
        // The test peers listen on loopback.
        allow_loopback: true,
        ..ValidationConfig::default()
    }
}

fn validator(cfg: ValidationConfig) -> Validator {
    Validator::new(cfg).expect("validator")
}

fn lab(mut cfg: ValidationConfig) -> ValidationConfig {
    cfg.lab_resolve_all_to = Some(LOCALHOST);
    cfg
}

#[track_caller]
fn failure(result: Result<()>) -> Error {
    match result {
        Ok(()) => panic!("validation passed, expected a failure"),
        Err(e) => e,
    }
}

/// A port on which nothing listens: bound, then released.
async fn closed_port(ip: IpAddr) -> u16 {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Set to `1` to skip the IPv6 tests on a machine where `[::1]` cannot be bound.
const SKIP_IPV6: &str = "IIOT_ACME_SKIP_IPV6";

/// Binds `[::1]:0` for an IPv6 test. Where that fails the test fails, unless [`SKIP_IPV6`] is
/// `1`: then it announces the skip and returns None, and the test returns at once.
async fn bind_ipv6(test: &str) -> Option<TcpListener> {
    let e = match TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await {
        Ok(listener) => return Some(listener),
        Err(e) => e,
    };
    assert!(
        std::env::var(SKIP_IPV6).is_ok_and(|v| v == "1"),
        "cannot bind [::1]: {e}; on a machine without IPv6 loopback, set {SKIP_IPV6}=1 to skip \
         the IPv6 tests"
    );
    // Straight to the process's stderr: libtest captures what eprintln! writes and shows it
    // only for failed tests, and a skipped test passes.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: SKIPPED, cannot bind [::1] ({e}) and {SKIP_IPV6}=1"
    );
    None
}

/// A listener that accepts connections and never says anything.
async fn silent_server(listener: TcpListener) -> SocketAddr {
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

// -------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 server: one request per connection, answer chosen by request target.
// -------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct SeenRequest {
    target: String,
    host: Option<String>,
}

struct HttpServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl HttpServer {
    async fn start(ip: IpAddr, respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind");
        Self::on(listener, respond)
    }

    fn on(
        listener: TcpListener,
        respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let respond = Arc::new(respond);
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let respond = respond.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request_head(&mut tcp).await else {
                        return;
                    };
                    let answer = respond(&request.target);
                    log.lock().expect("log").push(request);
                    let _ = tcp.write_all(&answer).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        Self { addr, seen }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("log").clone()
    }
}

async fn read_request_head(tcp: &mut TcpStream) -> Option<SeenRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_owned();
    let host = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.trim().to_owned());
    Some(SeenRequest { target, host })
}

fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn ok(body: &str) -> Vec<u8> {
    response("200 OK", &[], body.as_bytes())
}

fn redirect(location: &str) -> Vec<u8> {
    response("302 Found", &[("Location", location)], b"")
}

fn not_found() -> Vec<u8> {
    response("404 Not Found", &[], b"no such challenge")
}

async fn http01(v: &Validator, identifier: &Identifier) -> Result<()> {
    v.validate(identifier, ChallengeType::Http01, TOKEN, KEY_AUTH)
        .await
}

// -------------------------------------------------------------------------------------------
// http-01
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn http01_correct_body_passes_and_asks_the_rfc_path() {
    let server = HttpServer::start(LOCALHOST, |_| ok(KEY_AUTH)).await;
    let v = validator(config(server.port(), 1));
    http01(&v, &Identifier::ip(LOCALHOST)).await.expect("valid");
    assert_eq!(
        server.seen(),
        [SeenRequest {
            target: CHALLENGE_PATH.into(),
            host: Some("127.0.0.1".into()),
        }]
    );
}

#[tokio::test]
async fn http01_surrounding_whitespace_is_ignored() {
    for body in [
        format!("{KEY_AUTH}\n"),
        format!("{KEY_AUTH}\r\n"),
        format!("\n {KEY_AUTH} \t\n"),
    ] {
        let server = HttpServer::start(LOCALHOST, move |_| ok(&body)).await;
        let v = validator(config(server.port(), 1));
        http01(&v, &Identifier::ip(LOCALHOST))
            .await
            .expect("whitespace around the key authorization is accepted");
    }
}

#[tokio::test]
async fn http01_wrong_body_is_incorrect_response_without_quoting_the_body() {
    let server = HttpServer::start(LOCALHOST, |_| ok("internal-page-content\u{7}")).await;
    let v = validator(config(server.port(), 1));
    let e = failure(http01(&v, &Identifier::ip(LOCALHOST)).await);
    let Error::IncorrectResponse(detail) = &e else {
        panic!("expected incorrectResponse, got {e:?}");
    };
    assert!(
        detail.contains(&format!("127.0.0.1:{}", server.port())),
        "{detail}"
    );
    // What some host served is never shown to the requester: status, size, and the expected
    // key authorization (the requester's own) only.
    assert!(!detail.contains("internal-page"), "{detail}");
    assert!(
        detail.contains("HTTP 200") && detail.contains("22 bytes"),
        "{detail}"
    );
    assert!(detail.contains(KEY_AUTH), "{detail}");
}

#[tokio::test]
async fn http01_non_200_is_incorrect_response() {
    let server = HttpServer::start(LOCALHOST, |_| not_found()).await;
    let v = validator(config(server.port(), 1));
    let e = failure(http01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::IncorrectResponse(d) if d.contains("404") && d.contains("expected 200")),
        "{e:?}"
    );
}

#[tokio::test]
async fn http01_oversized_body_is_refused_by_length_and_by_stream() {
    // Declared too big.
    let big = format!("{KEY_AUTH}{}", " ".repeat(MAX_BODY_BYTES));
    let server = HttpServer::start(LOCALHOST, move |_| ok(&big)).await;
    let v = validator(config(server.port(), 1));
    let e = failure(http01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::IncorrectResponse(d) if d.contains("at most 8192")),
        "{e:?}"
    );

    // Chunked, so the size is only known while reading.
    let server = HttpServer::start(LOCALHOST, |_| {
        let mut out =
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..5 {
            out.extend_from_slice(format!("800\r\n{}\r\n", "a".repeat(0x800)).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    })
    .await;
    let v = validator(config(server.port(), 1));
    let e = failure(http01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::IncorrectResponse(d) if d.contains("more than 8192")),
        "{e:?}"
    );
}

#[tokio::test]
async fn http01_connection_refused_names_the_address() {
    let port = closed_port(LOCALHOST).await;
    let v = validator(config(port, 1));
    let e = failure(http01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::Connection(d) if d.contains(&format!("127.0.0.1:{port}"))),
        "{e:?}"
    );
}

#[tokio::test]
async fn http01_silent_server_times_out_within_the_budget() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let addr = silent_server(listener).await;
    let mut cfg = config(addr.port(), 1);
    cfg.timeout = Duration::from_millis(300);
    let v = validator(cfg);
    let started = Instant::now();
    let e = failure(http01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(&e, Error::Connection(d) if d.contains(&addr.to_string()) && d.contains("300ms")),
        "{e:?}"
    );
}

#[tokio::test]
async fn http01_dns_identifier_with_lab_address_sends_the_name_as_host() {
    let server = HttpServer::start(LOCALHOST, |_| ok(KEY_AUTH)).await;
    let v = validator(lab(config(server.port(), 1)));
    http01(&v, &Identifier::dns("device-17.plant.example"))
        .await
        .expect("valid");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].host.as_deref(), Some("device-17.plant.example"));
    assert_eq!(seen[0].target, CHALLENGE_PATH);
}

#[tokio::test]
async fn http01_dns_identifier_resolves_through_the_system_resolver() {
    // "localhost" may resolve to ::1 first; that address refuses, so 127.0.0.1 must be tried.
    let server = HttpServer::start(LOCALHOST, |_| ok(KEY_AUTH)).await;
    let v = validator(config(server.port(), 1));
    http01(&v, &Identifier::dns("localhost"))
        .await
        .expect("valid");
    assert_eq!(server.seen()[0].host.as_deref(), Some("localhost"));
}

#[tokio::test]
async fn http01_unresolvable_name_is_a_dns_error() {
    let v = validator(config(closed_port(LOCALHOST).await, 1));
    // RFC 6761: .invalid never resolves.
    let e = failure(http01(&v, &Identifier::dns("nothing-here.invalid")).await);
    assert!(
        matches!(&e, Error::Dns(d) if d.contains("nothing-here.invalid")),
        "{e:?}"
    );
}

#[tokio::test]
async fn http01_ipv6_identifier_dials_and_brackets_the_host() {
    let Some(listener) = bind_ipv6("http01_ipv6_identifier_dials_and_brackets_the_host").await
    else {
        return;
    };
    let server = HttpServer::on(listener, |_| ok(KEY_AUTH));
    let v = validator(config(server.port(), 1));
    http01(&v, &Identifier::ip(IpAddr::V6(Ipv6Addr::LOCALHOST)))
        .await
        .expect("valid");
    assert_eq!(server.seen()[0].host.as_deref(), Some("[::1]"));
}

#[tokio::test]
async fn http01_follows_redirects_to_other_hosts_when_configured_to() {
    let port_cell = Arc::new(Mutex::new(0u16));
    let port_for_server = port_cell.clone();
    let server = HttpServer::start(LOCALHOST, move |target| {
        let port = *port_for_server.lock().expect("port");
        match target {
            CHALLENGE_PATH => redirect(&format!("http://central.plant.example:{port}/acme/a")),
            "/acme/a" => redirect("/acme/b?x=1#frag"),
            "/acme/b?x=1" => response("307 Temporary Redirect", &[("Location", "c")], b""),
            "/acme/c" => ok(KEY_AUTH),
            _ => not_found(),
        }
    })
    .await;
    *port_cell.lock().expect("port") = server.port();

    let mut cfg = lab(config(server.port(), 1));
    cfg.redirects = Redirects::Any;
    let v = validator(cfg);
    http01(&v, &Identifier::dns("device.plant.example"))
        .await
        .expect("valid after redirects");
    let seen = server.seen();
    let hosts: Vec<_> = seen.iter().map(|r| r.host.as_deref()).collect();
    let targets: Vec<_> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [CHALLENGE_PATH, "/acme/a", "/acme/b?x=1", "/acme/c"]
    );
    assert_eq!(
        hosts,
        [
            Some("device.plant.example"),
            Some("central.plant.example"),
            Some("central.plant.example"),
            Some("central.plant.example"),
        ]
    );
}

#[tokio::test]
async fn http01_follows_exactly_ten_redirects_but_not_eleven() {
    // /r/N redirects to /r/N+1 until `last`, which answers.
    fn chain_server(last: usize) -> impl Fn(&str) -> Vec<u8> + Send + Sync + 'static {
        move |target| {
            let n = match target {
                CHALLENGE_PATH => 0,
                other => match other.strip_prefix("/r/").and_then(|n| n.parse().ok()) {
                    Some(n) => n,
                    None => return not_found(),
                },
            };
            if n == last {
                ok(KEY_AUTH)
            } else {
                redirect(&format!("/r/{}", n + 1))
            }
        }
    }

    let server = HttpServer::start(LOCALHOST, chain_server(MAX_REDIRECTS)).await;
    let v = validator(config(server.port(), 1));
    http01(&v, &Identifier::ip(LOCALHOST))
        .await
        .expect("ten redirects are followed");
    assert_eq!(server.seen().len(), MAX_REDIRECTS + 1);

    let server = HttpServer::start(LOCALHOST, chain_server(MAX_REDIRECTS + 1)).await;
    let v = validator(config(server.port(), 1));
    let e = failure(http01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::IncorrectResponse(d) if d.contains("too many redirects")),
        "{e:?}"
    );
    assert_eq!(server.seen().len(), MAX_REDIRECTS + 1);
}

#[tokio::test]
async fn http01_redirect_loop_is_reported() {
    let server = HttpServer::start(LOCALHOST, |target| match target {
        CHALLENGE_PATH => redirect("/loop"),
        _ => redirect(CHALLENGE_PATH),
    })
    .await;
    let v = validator(config(server.port(), 1));
    let e = failure(http01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::IncorrectResponse(d) if d.contains("redirect loop")),
        "{e:?}"
    );
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn http01_refuses_redirects_elsewhere() {
    for (location, why) in [
        ("http://127.0.0.1:1/x".to_owned(), "only redirects to port"),
        (
            "https://127.0.0.1/x".to_owned(),
            "https:// are not followed",
        ),
        ("ftp://127.0.0.1/x".to_owned(), "scheme \"ftp\""),
    ] {
        let answer = redirect(&location);
        let server = HttpServer::start(LOCALHOST, move |_| answer.clone()).await;
        let v = validator(config(server.port(), 1));
        let e = failure(http01(&v, &Identifier::ip(LOCALHOST)).await);
        assert!(
            matches!(&e, Error::IncorrectResponse(d) if d.contains(why) && d.contains(&location)),
            "{location}: {e:?}"
        );
        assert_eq!(server.seen().len(), 1, "{location} must not be dialed");
    }
}

/// A redirect to another host, by default (`redirects = "same-host"`): refused before it is
/// dialed, so the CA cannot be made to send a GET to any other host of the plant network.
#[tokio::test]
async fn http01_redirects_to_another_host_are_refused_by_default() {
    let port_cell = Arc::new(Mutex::new(0u16));
    let cell = port_cell.clone();
    let server = HttpServer::start(LOCALHOST, move |target| {
        let port = *cell.lock().expect("port");
        match target {
            CHALLENGE_PATH => redirect(&format!(
                "http://internal.plant.example:{port}/internal/admin?x=1"
            )),
            _ => ok("admin page"),
        }
    })
    .await;
    *port_cell.lock().expect("port") = server.port();
    let cfg = lab(config(server.port(), 1));
    assert_eq!(cfg.redirects, Redirects::SameHost, "the default");
    let v = validator(cfg);
    // The same address under another name is another host too.
    for identifier in [
        Identifier::dns("device.plant.example"),
        Identifier::ip(LOCALHOST),
    ] {
        let e = failure(http01(&v, &identifier).await);
        assert!(
            matches!(&e, Error::IncorrectResponse(d) if d.contains("another host")
                && d.contains("same-host") && !d.contains("admin page")),
            "{identifier}: {e:?}"
        );
    }
    // Only the challenge requests reached the server; /internal/admin never did.
    let targets: Vec<_> = server.seen().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, [CHALLENGE_PATH, CHALLENGE_PATH]);
}

#[tokio::test]
async fn http01_same_host_redirects_are_followed_and_none_follows_none() {
    let server = HttpServer::start(LOCALHOST, |target| match target {
        CHALLENGE_PATH => redirect("/moved"),
        "/moved" => ok(KEY_AUTH),
        _ => not_found(),
    })
    .await;
    let v = validator(lab(config(server.port(), 1)));
    http01(&v, &Identifier::dns("Device.plant.example"))
        .await
        .expect("a redirect on the same host is followed");

    let mut cfg = lab(config(server.port(), 1));
    cfg.redirects = Redirects::None;
    let e = failure(http01(&validator(cfg), &Identifier::dns("device.plant.example")).await);
    assert!(
        matches!(&e, Error::IncorrectResponse(d) if d.contains("redirects are not followed")),
        "{e:?}"
    );
}

/// Loopback, link-local and the CA's own addresses are never dialed: not for an `ip`
/// identifier, not for what a name resolves to, not for a redirect target.
#[tokio::test]
async fn addresses_the_ca_must_not_dial_are_refused_before_dialing() {
    let server = HttpServer::start(LOCALHOST, |_| ok(KEY_AUTH)).await;
    let mut strict = config(server.port(), 1);
    strict.allow_loopback = false;
    let v = validator(strict.clone());
    let e = failure(http01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::Connection(d) if d.contains("loopback") && d.contains("allow_loopback")),
        "{e:?}"
    );
    let e = failure(
        http01(
            &validator(lab(strict.clone())),
            &Identifier::dns("plc.example"),
        )
        .await,
    );
    assert!(
        matches!(&e, Error::Dns(d) if d.contains("does not dial") && d.contains("loopback")),
        "{e:?}"
    );
    // A name that resolves to loopback through the system resolver.
    let e = failure(http01(&v, &Identifier::dns("localhost")).await);
    assert!(
        matches!(&e, Error::Dns(d) if d.contains("resolves only to addresses this CA does not dial")),
        "{e:?}"
    );
    assert!(server.seen().is_empty(), "nothing was dialed");

    // The CA's own address, and link-local, refused without a connection attempt.
    let own = OwnNames::from_names(&["192.0.2.10".to_owned()], false);
    let v = validator(config(server.port(), 1)).with_own_names(own);
    let e = failure(http01(&v, &Identifier::ip("192.0.2.10".parse().expect("ip"))).await);
    assert!(
        matches!(&e, Error::Connection(d) if d.contains("address of this CA")),
        "{e:?}"
    );
    let e = failure(http01(&v, &Identifier::ip("169.254.169.254".parse().expect("ip"))).await);
    assert!(
        matches!(&e, Error::Connection(d) if d.contains("link-local")),
        "{e:?}"
    );

    // A redirect to a link-local address, even where redirects may go anywhere.
    let port_cell = Arc::new(Mutex::new(0u16));
    let cell = port_cell.clone();
    let to_metadata = HttpServer::start(LOCALHOST, move |_| {
        let port = *cell.lock().expect("port");
        redirect(&format!("http://169.254.169.254:{port}/latest/meta-data/"))
    })
    .await;
    *port_cell.lock().expect("port") = to_metadata.port();
    let mut any = config(to_metadata.port(), 1);
    any.redirects = Redirects::Any;
    let e = failure(http01(&validator(any), &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::Connection(d) if d.contains("link-local")),
        "{e:?}"
    );
    assert_eq!(to_metadata.seen().len(), 1);
}

#[tokio::test]
async fn tls_alpn01_does_not_dial_refused_addresses() {
    let mut strict = config(1, closed_port(LOCALHOST).await);
    strict.allow_loopback = false;
    let e = failure(tls_alpn01(&validator(strict), &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::Connection(d) if d.contains("not dialing")),
        "{e:?}"
    );
}

#[test]
fn validations_in_flight_are_bounded_in_all_and_per_account() {
    let mut cfg = config(80, 443);
    cfg.max_in_flight = 3;
    cfg.max_in_flight_per_account = 2;
    let v = validator(cfg);
    let a1 = v.admit("a", None).expect("1st of a");
    let a2 = v.admit("a", None).expect("2nd of a");
    let e = v.admit("a", None).expect_err("3rd of a");
    assert!(
        matches!(&e, Error::RateLimited { detail, .. } if detail.contains("max_in_flight_per_account")),
        "{e:?}"
    );
    let b1 = v.admit("b", None).expect("1st of b");
    let e = v.admit("c", None).expect_err("4th in all");
    assert!(
        matches!(&e, Error::RateLimited { detail, .. } if detail.contains("validation.max_in_flight")),
        "{e:?}"
    );
    drop(a1);
    let _c = v.admit("c", None).expect("a slot came free");
    drop((a2, b1));
    let _a = v.admit("a", None).expect("a's slots came free");
}

#[test]
fn validations_in_flight_are_bounded_per_source_address() {
    let mut cfg = config(80, 443);
    cfg.max_in_flight_per_address = 2;
    let v = validator(cfg);
    let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
    // Two accounts from one host, the second through another address of its IPv6 /64.
    let first = v.admit("a", ip("2001:db8:7::1")).expect("1st from the /64");
    let _second = v.admit("b", ip("2001:db8:7::2")).expect("2nd from the /64");
    let e = v
        .admit("c", ip("2001:db8:7::3"))
        .expect_err("3rd from the /64");
    assert!(
        matches!(&e, Error::RateLimited { detail, .. } if detail.contains("max_in_flight_per_address")),
        "{e:?}"
    );
    let _other_net = v.admit("c", ip("2001:db8:8::1")).expect("another /64");
    let _unknown = v.admit("d", None).expect("no address known");
    drop(first);
    let _again = v.admit("c", ip("2001:db8:7::3")).expect("a slot came free");
}

#[tokio::test]
async fn http01_redirect_without_location_is_incorrect_response() {
    let server =
        HttpServer::start(LOCALHOST, |_| response("301 Moved Permanently", &[], b"")).await;
    let v = validator(config(server.port(), 1));
    let e = failure(http01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::IncorrectResponse(d) if d.contains("without a Location")),
        "{e:?}"
    );
}

#[tokio::test]
async fn http01_garbage_instead_of_http_is_a_connection_error() {
    let server = HttpServer::start(LOCALHOST, |_| b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()).await;
    let v = validator(config(server.port(), 1));
    let e = failure(http01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::Connection(d) if d.contains(&server.addr.to_string())),
        "{e:?}"
    );
}

#[tokio::test]
async fn http01_refuses_a_token_that_is_not_base64url() {
    let v = validator(config(closed_port(LOCALHOST).await, 1));
    let e = failure(
        v.validate(
            &Identifier::ip(LOCALHOST),
            ChallengeType::Http01,
            "../../etc/passwd",
            KEY_AUTH,
        )
        .await,
    );
    assert!(matches!(e, Error::Internal(_)), "{e:?}");
}

// -------------------------------------------------------------------------------------------
// tls-alpn-01
// -------------------------------------------------------------------------------------------

/// What a test TLS server saw in a ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SeenHello {
    sni: Option<String>,
    alpn: Vec<Vec<u8>>,
}

/// Serves one certificate to everyone and records each ClientHello.
#[derive(Debug)]
struct FixedCert {
    key: Arc<CertifiedKey>,
    hellos: Arc<Mutex<Vec<SeenHello>>>,
}

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let seen = SeenHello {
            sni: hello.server_name().map(str::to_owned),
            alpn: hello
                .alpn()
                .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                .unwrap_or_default(),
        };
        self.hellos.lock().expect("hellos").push(seen);
        Some(self.key.clone())
    }
}

struct TlsServer {
    addr: SocketAddr,
    hellos: Arc<Mutex<Vec<SeenHello>>>,
}

impl TlsServer {
    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn hellos(&self) -> Vec<SeenHello> {
        self.hellos.lock().expect("hellos").clone()
    }
}

/// How the test TLS server is set up.
struct TlsSetup {
    cert: CertificateDer<'static>,
    /// The key the server signs the handshake with; normally the certificate's own.
    key: KeyPair,
    alpn: Vec<Vec<u8>>,
    versions: &'static [&'static SupportedProtocolVersion],
}

impl TlsSetup {
    fn new((cert, key): (CertificateDer<'static>, KeyPair)) -> Self {
        Self {
            cert,
            key,
            alpn: vec![ACME_TLS_ALPN.to_vec()],
            versions: rustls::ALL_VERSIONS,
        }
    }

    async fn start(self, listener: TcpListener) -> TlsServer {
        let addr = listener.local_addr().expect("addr");
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let signing_key =
            rustls::crypto::ring::sign::any_supported_type(&key_der).expect("signing key");
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let resolver = FixedCert {
            key: Arc::new(CertifiedKey::new(vec![self.cert], signing_key)),
            hellos: hellos.clone(),
        };
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(self.versions)
                .expect("versions")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = self.alpn;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(tcp).await;
                });
            }
        });
        TlsServer { addr, hellos }
    }

    async fn start_local(self) -> TlsServer {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
        self.start(listener).await
    }
}

fn acme_identifier(key_authorization: &str) -> CustomExtension {
    CustomExtension::new_acme_identifier(digest(&SHA256, key_authorization.as_bytes()).as_ref())
}

/// A self-signed certificate with these SANs (IP addresses become iPAddress entries) and
/// extensions, and its key.
fn challenge_cert(
    sans: &[&str],
    extensions: Vec<CustomExtension>,
) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .expect("params");
    params.custom_extensions = extensions;
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.der().clone(), key)
}

const DEVICE: &str = "device-17.plant.example";
const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

async fn tls_alpn01(v: &Validator, identifier: &Identifier) -> Result<()> {
    v.validate(identifier, ChallengeType::TlsAlpn01, TOKEN, KEY_AUTH)
        .await
}

/// Runs tls-alpn-01 for [`DEVICE`] (lab-resolved to 127.0.0.1) against a server set up so.
async fn tls_alpn01_device(setup: TlsSetup) -> (Result<()>, TlsServer) {
    let server = setup.start_local().await;
    let v = validator(lab(config(1, server.port())));
    (tls_alpn01(&v, &Identifier::dns(DEVICE)).await, server)
}

#[tokio::test]
async fn tls_alpn01_valid_certificate_passes_over_tls12_and_tls13() {
    for versions in [TLS12_ONLY, TLS13_ONLY] {
        let mut setup = TlsSetup::new(challenge_cert(&[DEVICE], vec![acme_identifier(KEY_AUTH)]));
        setup.versions = versions;
        let (result, server) = tls_alpn01_device(setup).await;
        result.expect("valid");
        assert_eq!(
            server.hellos(),
            [SeenHello {
                sni: Some(DEVICE.into()),
                alpn: vec![b"acme-tls/1".to_vec()],
            }]
        );
    }
}

#[tokio::test]
async fn tls_alpn01_dns_names_compare_case_insensitively() {
    let setup = TlsSetup::new(challenge_cert(
        &["Device-17.PLANT.example"],
        vec![acme_identifier(KEY_AUTH)],
    ));
    let (result, _) = tls_alpn01_device(setup).await;
    result.expect("case-insensitive match");
}

#[tokio::test]
async fn tls_alpn01_certificate_mismatches_are_incorrect_response() {
    let mut non_critical = acme_identifier(KEY_AUTH);
    non_critical.set_criticality(false);
    let mut short_digest = CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 1, 31],
        [&[0x04, 0x10][..], &[0xAB; 16]].concat(),
    );
    short_digest.set_criticality(true);

    let cases = [
        (
            "wrong digest",
            challenge_cert(&[DEVICE], vec![acme_identifier("other.key-authorization")]),
            "expected SHA-256 of the key authorization",
        ),
        (
            "non-critical extension",
            challenge_cert(&[DEVICE], vec![non_critical]),
            "not marked critical",
        ),
        (
            "malformed extension",
            challenge_cert(&[DEVICE], vec![short_digest]),
            "malformed acmeIdentifier",
        ),
        (
            "missing extension",
            challenge_cert(&[DEVICE], vec![]),
            "no acmeIdentifier extension",
        ),
        (
            "two SANs",
            challenge_cert(
                &[DEVICE, "other.plant.example"],
                vec![acme_identifier(KEY_AUTH)],
            ),
            "has 2 subjectAltName entries",
        ),
        (
            "wrong SAN",
            challenge_cert(&["other.plant.example"], vec![acme_identifier(KEY_AUTH)]),
            "expected dNSName \"device-17.plant.example\"",
        ),
        (
            "IP SAN for a dns identifier",
            challenge_cert(&["127.0.0.1"], vec![acme_identifier(KEY_AUTH)]),
            "names iPAddress 127.0.0.1",
        ),
    ];
    for (case, cert, why) in cases {
        let (result, server) = tls_alpn01_device(TlsSetup::new(cert)).await;
        let e = failure(result);
        assert!(
            matches!(&e, Error::IncorrectResponse(d)
                if d.contains(why) && d.contains(&server.addr.to_string())),
            "{case}: {e:?}"
        );
    }
}

#[tokio::test]
async fn tls_alpn01_server_without_alpn_is_incorrect_response() {
    let mut setup = TlsSetup::new(challenge_cert(&[DEVICE], vec![acme_identifier(KEY_AUTH)]));
    setup.alpn = Vec::new();
    let (result, _) = tls_alpn01_device(setup).await;
    let e = failure(result);
    assert!(
        matches!(&e, Error::IncorrectResponse(d) if d.contains("negotiated ALPN none")),
        "{e:?}"
    );
}

#[tokio::test]
async fn tls_alpn01_server_refusing_acme_tls_is_a_tls_error() {
    let mut setup = TlsSetup::new(challenge_cert(&[DEVICE], vec![acme_identifier(KEY_AUTH)]));
    setup.alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let (result, server) = tls_alpn01_device(setup).await;
    let e = failure(result);
    assert!(
        matches!(&e, Error::Tls(d) if d.contains(&server.addr.to_string())),
        "{e:?}"
    );
}

#[tokio::test]
async fn tls_alpn01_handshake_signature_must_match_the_certificate() {
    // The certificate is right, but the server signs with another key: it does not hold the
    // certificate's key, so the handshake must fail, whichever TLS version.
    for versions in [TLS12_ONLY, TLS13_ONLY] {
        let (cert, _) = challenge_cert(&[DEVICE], vec![acme_identifier(KEY_AUTH)]);
        let mut setup = TlsSetup::new((cert, KeyPair::generate().expect("key")));
        setup.versions = versions;
        let (result, _) = tls_alpn01_device(setup).await;
        let e = failure(result);
        assert!(
            matches!(&e, Error::Tls(d) if d.contains("BadSignature")),
            "{versions:?}: {e:?}"
        );
    }
}

#[tokio::test]
async fn tls_alpn01_ipv4_identifier_uses_reverse_dns_sni() {
    let setup = TlsSetup::new(challenge_cert(
        &["127.0.0.1"],
        vec![acme_identifier(KEY_AUTH)],
    ));
    let server = setup.start_local().await;
    let v = validator(config(1, server.port()));
    tls_alpn01(&v, &Identifier::ip(LOCALHOST))
        .await
        .expect("valid");
    assert_eq!(
        server.hellos()[0].sni.as_deref(),
        Some("1.0.0.127.in-addr.arpa")
    );

    // A certificate for another address fails.
    let setup = TlsSetup::new(challenge_cert(
        &["127.0.0.2"],
        vec![acme_identifier(KEY_AUTH)],
    ));
    let server = setup.start_local().await;
    let v = validator(config(1, server.port()));
    let e = failure(tls_alpn01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::IncorrectResponse(d) if d.contains("expected iPAddress 127.0.0.1")),
        "{e:?}"
    );
}

#[tokio::test]
async fn tls_alpn01_ipv6_identifier_uses_reverse_dns_sni() {
    let Some(listener) = bind_ipv6("tls_alpn01_ipv6_identifier_uses_reverse_dns_sni").await else {
        return;
    };
    let setup = TlsSetup::new(challenge_cert(&["::1"], vec![acme_identifier(KEY_AUTH)]));
    let server = setup.start(listener).await;
    let v = validator(config(1, server.port()));
    tls_alpn01(&v, &Identifier::ip(IpAddr::V6(Ipv6Addr::LOCALHOST)))
        .await
        .expect("valid");
    let expected = format!("1.{}ip6.arpa", "0.".repeat(31));
    assert_eq!(server.hellos()[0].sni.as_deref(), Some(expected.as_str()));
}

#[tokio::test]
async fn tls_alpn01_silent_server_times_out_within_the_budget() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let addr = silent_server(listener).await;
    let mut cfg = config(1, addr.port());
    cfg.timeout = Duration::from_millis(300);
    let v = validator(cfg);
    let started = Instant::now();
    let e = failure(tls_alpn01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(&e, Error::Connection(d) if d.contains(&addr.to_string())),
        "{e:?}"
    );
}

#[tokio::test]
async fn tls_alpn01_connection_refused_names_the_address() {
    let port = closed_port(LOCALHOST).await;
    let v = validator(config(1, port));
    let e = failure(tls_alpn01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::Connection(d) if d.contains(&format!("127.0.0.1:{port}"))),
        "{e:?}"
    );
}

#[tokio::test]
async fn tls_alpn01_peer_speaking_plain_http_is_a_tls_error() {
    // Answers every connection at once with an HTTP error, as a plain HTTP server does when
    // it receives a ClientHello.
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let v = validator(config(1, addr.port()));
    let e = failure(tls_alpn01(&v, &Identifier::ip(LOCALHOST)).await);
    assert!(
        matches!(&e, Error::Tls(d) if d.contains(&addr.to_string())),
        "{e:?}"
    );
}

// -------------------------------------------------------------------------------------------
// Pieces
// -------------------------------------------------------------------------------------------

#[test]
fn reverse_dns_names_follow_rfc_8738_section_6() {
    // RFC 8738 §6 example.
    let ip: IpAddr = "2001:db8::1".parse().expect("ip");
    assert_eq!(
        crate::wire::reverse_dns_name(ip),
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
    );
    assert_eq!(
        crate::wire::reverse_dns_name(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5))),
        "5.2.0.192.in-addr.arpa"
    );
}

#[test]
fn excerpts_are_quoted_escaped_and_bounded() {
    assert_eq!(excerpt(b"abc"), r#""abc""#);
    assert_eq!(excerpt(b"a\r\n\x1b[31m"), r#""a\r\n\u{1b}[31m""#);
    assert_eq!(excerpt(&[0xff, b'x']), "\"\u{fffd}x\"");
    let long = excerpt("é".repeat(500).as_bytes());
    assert!(long.ends_with('…'), "{long}");
    assert_eq!(long.chars().filter(|c| *c == 'é').count(), EXCERPT_CHARS);
}

#[test]
fn identifiers_that_cannot_be_dialed_are_internal_errors() {
    for identifier in [
        Identifier::dns("*.plant.example"),
        Identifier::dns("127.0.0.1"),
        Identifier::dns("bad name"),
        Identifier {
            kind: IdentifierType::Ip,
            value: "device.example".into(),
        },
    ] {
        let e = Target::of(&identifier).expect_err("refused");
        assert!(matches!(e, Error::Internal(_)), "{identifier}: {e:?}");
    }
}

#[test]
fn validator_is_cheap_to_share_and_checks_its_config() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Validator>();

    let mut cfg = config(80, 443);
    cfg.timeout = Duration::ZERO;
    assert!(matches!(Validator::new(cfg), Err(Error::Internal(_))));
    assert!(matches!(
        Validator::new(config(0, 443)),
        Err(Error::Internal(_))
    ));
}

/// Under `same-host`, a redirect may name the identifier's host with a trailing dot, or the
/// address that answered the first request (device web servers often redirect to their own
/// address); both are followed, to that same address.
#[tokio::test]
async fn http01_same_host_redirects_to_the_answering_address_or_a_dotted_name() {
    let port_cell = Arc::new(Mutex::new(0u16));
    let cell = port_cell.clone();
    let server = HttpServer::start(LOCALHOST, move |target| {
        let port = *cell.lock().expect("port");
        match target {
            CHALLENGE_PATH => redirect(&format!("http://127.0.0.1:{port}/by-address")),
            "/by-address" => redirect(&format!("http://device.plant.example.:{port}/dotted")),
            "/dotted" => ok(KEY_AUTH),
            _ => not_found(),
        }
    })
    .await;
    *port_cell.lock().expect("port") = server.port();
    let v = validator(lab(config(server.port(), 1)));
    http01(&v, &Identifier::dns("device.plant.example"))
        .await
        .expect("valid after same-host redirects");
    let targets: Vec<_> = server.seen().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, [CHALLENGE_PATH, "/by-address", "/dotted"]);
}

/// After the first hop the validator dials the address that answered it, not what the name
/// resolves to now: here the name would resolve (lab setting) to an address where nothing
/// listens, and the pinned address is the one that is dialed.
#[tokio::test]
async fn a_pinned_address_is_dialed_instead_of_resolving_again() {
    let server = HttpServer::start(LOCALHOST, |_| ok(KEY_AUTH)).await;
    let mut cfg = config(server.port(), 1);
    cfg.lab_resolve_all_to = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)));
    let v = validator(cfg);
    let url = Url::parse(&format!(
        "http://device.plant.example:{}{CHALLENGE_PATH}",
        server.port()
    ))
    .expect("url");
    let deadline = Instant::now() + Duration::from_secs(5);
    let (addr, response) = v
        .get(&url, deadline, Some(LOCALHOST))
        .await
        .expect("the pinned address answers");
    assert_eq!(addr.ip(), LOCALHOST);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        server.seen()[0].host.as_deref(),
        Some("device.plant.example")
    );
    let e = v
        .get(&url, deadline, None)
        .await
        .expect_err("127.0.0.9 refuses");
    assert!(matches!(e, Error::Connection(_)), "{e:?}");
}

/// A name whose DNS answer changes between the first request and a redirect (a TTL of 0)
/// cannot steer a same-host redirect to another machine: every hop after the first dials the
/// address that answered the first.
#[tokio::test]
async fn a_same_host_redirect_goes_to_the_first_address_whatever_dns_says_next() {
    let device = HttpServer::start(LOCALHOST, |target| match target {
        CHALLENGE_PATH => redirect("/moved"),
        "/moved" => ok(KEY_AUTH),
        _ => not_found(),
    })
    .await;
    let port = device.port();
    // The machine the name points at after the first lookup, on the same port.
    let other_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let other = HttpServer::on(
        TcpListener::bind(SocketAddr::new(other_ip, port))
            .await
            .expect("bind 127.0.0.2"),
        |_| ok("plc admin page"),
    );
    let lookups = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = lookups.clone();
    let mut v = validator(config(port, 1));
    v.lookup = Some(Arc::new(move |_name: &str| {
        if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            LOCALHOST
        } else {
            other_ip
        }
    }));
    http01(&v, &Identifier::dns("device.plant.example"))
        .await
        .expect("valid on the first address");
    assert!(other.seen().is_empty(), "the redirect reached {other_ip}");
    assert_eq!(lookups.load(std::sync::atomic::Ordering::SeqCst), 1);
}
