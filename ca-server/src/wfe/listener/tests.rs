//! The phase rules, and the listener in process with limits in milliseconds, against a raw
//! TLS client (so the tests see exactly what goes over the wire and when the server closes).

use std::time::Duration;

use axum::routing::{get, post};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream as ClientTls;
use tokio_rustls::TlsConnector;

use super::*;

const LIMITS: Limits = Limits {
    header_read: Duration::from_secs(10),
    request: Duration::from_secs(30),
    idle: Duration::from_secs(60),
};

#[test]
fn phases_follow_a_keep_alive_connection() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    // The first head is due header_read_timeout after the handshake, bytes or not.
    let p = Phase::Head { start: t0 };
    assert_eq!(p.deadline(&LIMITS), t0 + s(10));
    let p = p.on_read(t0 + s(1));
    assert_eq!(p, Phase::Head { start: t0 });
    // The request counts from its first byte, head included.
    let p = p.on_head(t0 + s(5));
    assert_eq!(p, Phase::Request { start: t0 });
    assert_eq!(p.deadline(&LIMITS), t0 + s(30) + WRITE_GRACE);
    assert_eq!(p.on_read(t0 + s(6)), p, "body bytes do not start a request");
    // Idle time is measured from the end of the response, with its own limit.
    let p = p.on_response_sent(t0 + s(8));
    assert_eq!(p, Phase::Idle { since: t0 + s(8) });
    assert_eq!(p.deadline(&LIMITS), t0 + s(68));
    // The next request's first byte starts its head and request clocks.
    let p = p.on_read(t0 + s(50));
    assert_eq!(p, Phase::Head { start: t0 + s(50) });
    assert_eq!(p.deadline(&LIMITS), t0 + s(60));
    // A head hyper had buffered (pipelined) starts when it is parsed.
    let idle = Phase::Idle { since: t0 };
    assert_eq!(idle.on_head(t0 + s(3)), Phase::Request { start: t0 + s(3) });
    // After a 408 nothing moves the connection out of Closing.
    let closing = Phase::Closing { until: t0 + s(1) };
    assert_eq!(closing.on_read(t0), closing);
    assert_eq!(closing.on_head(t0), closing);
    assert_eq!(closing.on_response_sent(t0), closing);
    assert_eq!(closing.deadline(&LIMITS), t0 + s(1));
}

#[test]
fn a_head_is_also_held_to_request_timeout() {
    let t0 = Instant::now();
    let limits = Limits {
        header_read: Duration::from_secs(10),
        request: Duration::from_secs(3),
        idle: Duration::from_secs(60),
    };
    assert_eq!(
        Phase::Head { start: t0 }.deadline(&limits),
        t0 + Duration::from_secs(3)
    );
}

#[test]
fn huge_limits_are_capped_instead_of_overflowing() {
    let cfg = LimitsConfig {
        header_read_timeout: Duration::from_secs(u64::MAX),
        request_timeout: Duration::MAX,
        idle_timeout: Duration::from_secs(1 << 62),
        max_connections: usize::MAX,
        max_connections_per_address: None,
    };
    let limits = Limits::from(&cfg);
    assert_eq!(limits.header_read, LONGEST);
    let now = Instant::now();
    for phase in [
        Phase::Idle { since: now },
        Phase::Head { start: now },
        Phase::Request { start: now },
    ] {
        assert!(phase.deadline(&limits) > now);
    }
}

#[test]
fn open_files_limit_is_read_from_proc_limits() {
    let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                  Max cpu time              unlimited            unlimited            seconds   \n\
                  Max open files            1024                 524288               files     \n";
    assert_eq!(parse_open_files_limit(limits), Some(1024));
    assert_eq!(
        parse_open_files_limit("Max open files  unlimited  unlimited  files\n"),
        None
    );
    assert_eq!(parse_open_files_limit(""), None);
}

/// A listener on a loopback port with `limits`, serving a small router, and a client config
/// that trusts its certificate. Dropping the sender shuts the listener down.
struct TestServer {
    addr: SocketAddr,
    client: TlsConnector,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<()>>,
}

impl TestServer {
    async fn start(limits: LimitsConfig) -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let der = CertificateDer::from(cert.der().to_vec());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = RootCertStore::empty();
        roots.add(der).expect("root");
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();

        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/body",
                post(|body: Bytes| async move { body.len().to_string() }),
            );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            serve(listener, Arc::new(tls), router, &limits, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            addr,
            client: TlsConnector::from(Arc::new(client)),
            stop: Some(stop),
            done,
        }
    }

    async fn connect(&self) -> ClientTls<TcpStream> {
        self.connect_from(LOCALHOST).await.expect("TLS handshake")
    }

    /// A connection from source address `from` (any 127.0.0.0/8 address is local), handshake
    /// done.
    async fn connect_from(&self, from: IpAddr) -> io::Result<ClientTls<TcpStream>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let tcp = socket.connect(self.addr).await?;
        self.client
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
    }
}

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// Sends `GET /` and reads the response; whether it was a 200.
async fn served(tls: &mut ClientTls<TcpStream>) -> bool {
    if tls
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    read_response(tls)
        .await
        .is_some_and(|r| r.starts_with("HTTP/1.1 200 "))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn short_limits() -> LimitsConfig {
    LimitsConfig {
        header_read_timeout: ms(300),
        request_timeout: ms(600),
        idle_timeout: ms(2000),
        max_connections: 16,
        max_connections_per_address: None,
    }
}

/// Reads one response (head and `Content-Length` body); `None` if the connection ends first.
async fn read_response(tls: &mut (impl AsyncRead + Unpin)) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).await.ok()?;
    Some(format!("{head}{}", String::from_utf8_lossy(&body)))
}

/// Waits until the server closes the connection; returns how long that took.
async fn closed_after(tls: &mut (impl AsyncRead + Unpin), within: Duration) -> Duration {
    let start = Instant::now();
    let mut rest = Vec::new();
    // EOF, or an error for a close without close_notify: either way the server is gone.
    let read = tokio::time::timeout(within, tls.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "connection still open after {within:?}; read {:?}",
        String::from_utf8_lossy(&rest)
    );
    start.elapsed()
}

#[tokio::test]
async fn stalled_body_gets_a_408_problem_document_and_the_connection_closes() {
    let server = TestServer::start(short_limits()).await;
    let mut tls = server.connect().await;
    let start = Instant::now();
    tls.write_all(b"POST /body HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\nx")
        .await
        .expect("write");
    let response = read_response(&mut tls).await.expect("a 408 response");
    let took = start.elapsed();
    assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
    let lower = response.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{response}"
    );
    assert!(lower.contains("connection: close"), "{response}");
    assert!(
        response.contains("urn:ietf:params:acme:error:malformed")
            && response.contains("\"status\":408"),
        "{response}"
    );
    assert!(took >= ms(550) && took < ms(1500), "408 after {took:?}");
    closed_after(&mut tls, ms(1500)).await;
}

#[tokio::test]
async fn a_trickled_body_is_still_held_to_request_timeout() {
    let server = TestServer::start(short_limits()).await;
    let (mut rd, mut wr) = tokio::io::split(server.connect().await);
    let start = Instant::now();
    wr.write_all(b"POST /body HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n")
        .await
        .expect("write");
    // One byte every 100 ms: never quiet for long, but never done.
    let trickle = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(ms(100)).await;
            if wr.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let response = read_response(&mut rd).await.expect("a 408 response");
    let took = start.elapsed();
    assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
    assert!(took >= ms(550) && took < ms(1500), "408 after {took:?}");
    closed_after(&mut rd, ms(1500)).await;
    trickle.abort();
}

#[tokio::test]
async fn keep_alive_timing_head_idle_and_a_busy_connection() {
    let server = TestServer::start(short_limits()).await;

    // Idle: closed idle_timeout (2000 ms) after the response, not at header_read_timeout.
    let mut idle = server.connect().await;
    idle.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    assert!(read_response(&mut idle)
        .await
        .expect("response")
        .starts_with("HTTP/1.1 200 "));
    let idle_closed = tokio::spawn(async move { closed_after(&mut idle, ms(5000)).await });

    // A connection that sends nothing: its first head is due header_read_timeout (300 ms)
    // after the handshake.
    let mut silent = server.connect().await;
    let silent_closed = closed_after(&mut silent, ms(2000)).await;
    assert!(
        silent_closed >= ms(250) && silent_closed < ms(1500),
        "silent connection closed after {silent_closed:?}"
    );

    // A later head that never ends: closed header_read_timeout after its first byte, well
    // before idle_timeout.
    let mut slow = server.connect().await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    assert!(read_response(&mut slow).await.is_some());
    tokio::time::sleep(ms(200)).await;
    slow.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    let slow_closed = closed_after(&mut slow, ms(2000)).await;
    assert!(
        slow_closed >= ms(250) && slow_closed < ms(1500),
        "unfinished head closed after {slow_closed:?}"
    );

    // Busy: requests 500 ms apart (longer than header_read_timeout, shorter than
    // idle_timeout) for longer than every limit; the connection stays usable.
    let mut busy = server.connect().await;
    for i in 0..6 {
        if i > 0 {
            tokio::time::sleep(ms(500)).await;
        }
        busy.write_all(b"GET /peer HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let response = read_response(&mut busy).await.expect("response");
        let local = busy.get_ref().0.local_addr().expect("addr").to_string();
        assert!(
            response.starts_with("HTTP/1.1 200 ") && response.ends_with(&local),
            "request {i}: {response} (client {local})"
        );
    }

    let idle_closed = idle_closed.await.expect("idle task");
    assert!(
        idle_closed >= ms(1900) && idle_closed < ms(3500),
        "idle connection closed after {idle_closed:?}"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_gets_no_http2() {
    let server = TestServer::start(short_limits()).await;
    let mut tls = server.connect().await;
    // The connection preface (RFC 9113 §3.4) and an empty SETTINGS frame.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(ms(2000), tls.read_to_end(&mut answer)).await;
    // An HTTP/2 server's preface starts with a SETTINGS frame: type 4 at offset 3.
    assert!(
        answer.len() < 4 || answer[3] != 4,
        "answered with HTTP/2 frames: {answer:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn max_connections_holds_further_connections_in_the_backlog() {
    let server = TestServer::start(LimitsConfig {
        max_connections: 2,
        ..LimitsConfig::default()
    })
    .await;
    let first = server.connect().await;
    let _second = server.connect().await;
    // The kernel completes the TCP handshake; the TLS handshake needs the server to accept.
    let third = tokio::time::timeout(ms(500), server.connect()).await;
    assert!(third.is_err(), "a third connection was accepted");
    drop(first);
    let mut third = tokio::time::timeout(ms(2000), server.connect())
        .await
        .expect("accepted once a connection closed");
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    assert!(read_response(&mut third)
        .await
        .expect("response")
        .starts_with("HTTP/1.1 200 "));
}

#[test]
fn connections_count_against_the_ipv4_address_or_the_ipv6_slash_64() {
    let key = |s: &str| address_key(s.parse().expect("address"));
    assert_eq!(key("192.0.2.7"), key("::ffff:192.0.2.7"));
    assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    assert_eq!(
        key("2001:db8:1:2::1"),
        key("2001:db8:1:2:ffff:ffff:ffff:ffff")
    );
    assert_eq!(key("2001:db8:1:2:abcd::1"), key("2001:db8:1:2::"));
    assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
}

#[tokio::test]
async fn max_connections_per_address_closes_one_address_s_extra_connections_at_once() {
    // header_read_timeout stays 10 s: a close within a second is the cap, not a timeout.
    let server = TestServer::start(LimitsConfig {
        max_connections: 16,
        max_connections_per_address: Some(2),
        ..LimitsConfig::default()
    })
    .await;
    let mut first = server.connect().await;
    let mut second = server.connect().await;
    assert!(served(&mut first).await && served(&mut second).await);

    // More connections from 127.0.0.1 than the global cap has: each is closed at once, and
    // none holds a permit afterwards.
    for i in 0..20 {
        let start = Instant::now();
        let third = tokio::time::timeout(ms(2000), server.connect_from(LOCALHOST)).await;
        let third = third.unwrap_or_else(|_| panic!("attempt {i}: neither served nor closed"));
        assert!(
            third.is_err(),
            "attempt {i}: a third connection from 127.0.0.1 was accepted"
        );
        assert!(
            start.elapsed() < ms(1000),
            "attempt {i}: closed after {:?}",
            start.elapsed()
        );
    }

    // Another address has a cap of its own.
    let mut other = server
        .connect_from(OTHER)
        .await
        .expect("127.0.0.2 is served");
    assert!(served(&mut other).await);
    assert!(
        served(&mut first).await,
        "the first connection is still open"
    );

    // Closing a connection frees its slot; the server notices the close on its next read.
    drop(second);
    let mut again = None;
    for _ in 0..40 {
        if let Ok(mut tls) = server.connect_from(LOCALHOST).await {
            if served(&mut tls).await {
                again = Some(tls);
                break;
            }
        }
        tokio::time::sleep(ms(50)).await;
    }
    assert!(
        again.is_some(),
        "no slot for 127.0.0.1 after one of its connections closed"
    );
}

#[tokio::test]
async fn when_connections_run_short_the_longest_idle_one_closes_first() {
    // Four permits: with the one the accept loop holds, a third connection leaves none free.
    let server = TestServer::start(LimitsConfig {
        max_connections: 4,
        ..LimitsConfig::default()
    })
    .await;
    let mut oldest = server.connect().await;
    assert!(served(&mut oldest).await);
    tokio::time::sleep(ms(100)).await;
    let mut newer = server.connect().await;
    assert!(served(&mut newer).await);
    tokio::time::sleep(ms(100)).await;

    let mut third = server.connect().await;
    // idle_timeout is 60 s: a close now is the shortage.
    closed_after(&mut oldest, ms(1000)).await;
    assert!(served(&mut third).await);
    assert!(
        served(&mut newer).await,
        "the newer idle connection was closed too"
    );
}

#[tokio::test]
async fn connections_that_are_not_idle_are_not_closed_for_a_shortage() {
    let server = TestServer::start(LimitsConfig {
        max_connections: 4,
        ..LimitsConfig::default()
    })
    .await;
    // Waiting for its first request, and in the middle of a request body.
    let mut fresh = server.connect().await;
    let mut busy = server.connect().await;
    busy.write_all(b"POST /body HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nx")
        .await
        .expect("write");
    let mut third = server.connect().await;
    assert!(served(&mut third).await);
    tokio::time::sleep(ms(300)).await;
    busy.write_all(b"y").await.expect("write");
    let response = read_response(&mut busy)
        .await
        .expect("a response to the body");
    assert!(
        response.starts_with("HTTP/1.1 200 ") && response.ends_with('2'),
        "{response}"
    );
    assert!(served(&mut fresh).await);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let mut server = TestServer::start(LimitsConfig::default()).await;
    let mut tls = server.connect().await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    assert!(read_response(&mut tls).await.is_some());
    drop(server.stop.take());
    let done = tokio::time::timeout(ms(2000), &mut server.done)
        .await
        .expect("serve returned")
        .expect("task");
    assert!(done.is_ok(), "{done:?}");
    closed_after(&mut tls, ms(500)).await;
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "still accepting"
    );
}

#[test]
fn hypers_bare_answer_to_an_unparsable_request_becomes_a_problem_document() {
    let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                 date: Mon, 07 Dec 2026 14:00:00 GMT\r\n\r\n";
    let out = String::from_utf8(problem_for_parse_error(bare).expect("replaced")).expect("utf-8");
    let (head, body) = out.split_once("\r\n\r\n").expect("a head");
    assert!(
        head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{out}"
    );
    for line in [
        "content-type: application/problem+json".to_owned(),
        "connection: close".to_owned(),
        "date: Mon, 07 Dec 2026 14:00:00 GMT".to_owned(),
        format!("content-length: {}", body.len()),
    ] {
        assert!(head.lines().any(|l| l == line), "no {line:?} in {out}");
    }
    let doc: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(doc["type"], "urn:ietf:params:acme:error:malformed");
    assert_eq!(doc["status"], 431);
    assert!(doc["detail"].as_str().is_some_and(|d| !d.is_empty()));
    // Anything else passes through as it is.
    for other in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        b"HTTP/1.1 400 Bad",
    ] {
        assert!(
            problem_for_parse_error(other).is_none(),
            "{}",
            String::from_utf8_lossy(other)
        );
    }
}

#[tokio::test]
async fn an_unparsable_request_gets_a_problem_document_and_the_connection_closes() {
    let server = TestServer::start(short_limits()).await;
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    for (request, status) in [
        (
            "GET / HTTP/1.1\r\nHost: localhost\r\nNo-Colon\r\n\r\n".to_owned(),
            400,
        ),
        (
            "GET /a b HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned(),
            400,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: localhost\r\n{many_headers}\r\n"),
            431,
        ),
    ] {
        let mut tls = server.connect().await;
        tls.write_all(request.as_bytes()).await.expect("write");
        let response = read_response(&mut tls).await.expect("an answer");
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{response}"
        );
        let lower = response.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: application/problem+json")
                && lower.contains("connection: close"),
            "{response}"
        );
        assert!(
            response.contains("urn:ietf:params:acme:error:malformed")
                && response.contains(&format!("\"status\":{status}")),
            "{response}"
        );
        closed_after(&mut tls, ms(1500)).await;
    }
    let mut tls = server.connect().await;
    assert!(served(&mut tls).await, "a good request after them");
}
