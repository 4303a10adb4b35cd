//! Connection limits (`[limits]`) of the `ca-server` binary, seen from raw TLS clients: what a
//! client that opens connections and then stalls can hold, and that well-behaved clients are
//! unaffected.
//!
//! The clients speak HTTP/1.1 by hand over rustls, so each test controls exactly which bytes go
//! out and sees exactly when the server closes. Timing windows are wide: the suite runs on two
//! shared cores.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use iiot_acme_tests::https;
use iiot_acme_tests::{CaServer, CaServerOpts};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// Short limits for the timing tests: distinct values, so each close shows which limit did it.
const SHORT_LIMITS: &str = r#"
[limits]
header_read_timeout = "1s"
request_timeout = "2s"
idle_timeout = "4s"
"#;

/// A client that trusts the server's root, HTTP/1.1 (or no ALPN at all).
fn client_config(server: &CaServer, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>> {
    https::rustls_client(&server.root_pem_path(), alpn)
}

/// An HTTP/1.1 response.
#[derive(Debug)]
struct Response {
    status: u16,
    /// Status line and headers, header names lowercased.
    head: String,
    body: String,
}

impl Response {
    fn parse(bytes: &[u8]) -> Option<(Self, usize)> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(Some(0), |v| v.trim().parse().ok())?;
        let body = bytes.get(end..end + len)?;
        Some((
            Self {
                status,
                head,
                body: String::from_utf8_lossy(body).into_owned(),
            },
            end + len,
        ))
    }

    fn is_408_problem(&self) -> bool {
        self.status == 408
            && self.head.contains("content-type: application/problem+json")
            && self.head.contains("connection: close")
            && self.body.contains("\"status\":408")
            && self.body.contains("urn:ietf:params:acme:error:")
    }
}

/// How a wait for the server to close ended.
struct Ending {
    /// Whether the server closed the connection (false: still open when the wait ended).
    closed: bool,
    /// How long the wait took.
    after: Duration,
    /// Everything received meanwhile.
    data: Vec<u8>,
}

/// One TLS connection to the server, handshake done.
struct Conn {
    tls: StreamOwned<ClientConnection, TcpStream>,
    /// Bytes received but not yet consumed as a response.
    pending: Vec<u8>,
}

impl Conn {
    fn open(server: &CaServer, cfg: &Arc<ClientConfig>) -> Result<Self> {
        let tcp = TcpStream::connect(("127.0.0.1", server.listen_port())).context("connect")?;
        Self::handshake(tcp, cfg)
    }

    /// Like [`Conn::open`], from source address `from` (any 127.0.0.0/8 address is local).
    fn open_from(server: &CaServer, cfg: &Arc<ClientConfig>, from: Ipv4Addr) -> Result<Self> {
        // std cannot bind a socket before connecting it; tokio's TcpSocket can.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, server.listen_port()));
        let tcp = rt
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::from((from, 0)))?;
                socket.connect(to).await?.into_std()
            })
            .with_context(|| format!("connect from {from}"))?;
        tcp.set_nonblocking(false)?;
        Self::handshake(tcp, cfg)
    }

    fn handshake(tcp: TcpStream, cfg: &Arc<ClientConfig>) -> Result<Self> {
        tcp.set_read_timeout(Some(Duration::from_secs(15)))?;
        let name = ServerName::try_from("localhost")?;
        let mut tls = StreamOwned::new(ClientConnection::new(Arc::clone(cfg), name)?, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .context("TLS handshake")?;
        }
        Ok(Self {
            tls,
            pending: Vec::new(),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.tls.write_all(bytes)?;
        self.tls.flush()?;
        Ok(())
    }

    /// Reads until a whole response is in, or fails after `within`.
    fn response(&mut self, within: Duration) -> Result<Response> {
        let deadline = Instant::now() + within;
        loop {
            if let Some((response, used)) = Response::parse(&self.pending) {
                self.pending.drain(..used);
                return Ok(response);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "no whole response within {within:?}; got {:?}",
                String::from_utf8_lossy(&self.pending)
            );
            self.tls.sock.set_read_timeout(Some(left))?;
            let mut buf = [0u8; 4096];
            match self.tls.read(&mut buf) {
                Ok(0) => bail!(
                    "connection closed before a whole response; got {:?}",
                    String::from_utf8_lossy(&self.pending)
                ),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e).context("reading a response"),
            }
        }
    }

    fn get(&mut self, path: &str) -> Result<Response> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
        self.response(Duration::from_secs(10))
    }

    /// Reads until the server closes the connection, for at most `within`.
    fn wait_closed(&mut self, within: Duration) -> Result<Ending> {
        let start = Instant::now();
        let mut data = std::mem::take(&mut self.pending);
        loop {
            let left = within.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(Ending {
                    closed: false,
                    after: start.elapsed(),
                    data,
                });
            }
            self.tls.sock.set_read_timeout(Some(left))?;
            let mut buf = [0u8; 4096];
            match self.tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if is_timeout(&e) => {}
                // A close without TLS close_notify, or a reset: gone all the same.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e).context("waiting for the server to close"),
            }
        }
        Ok(Ending {
            closed: true,
            after: start.elapsed(),
            data,
        })
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A request head for a POST announcing a 1000-byte body, then one byte of it: the server has
/// the whole head and waits for the rest of the body.
fn stalled_post(server: &CaServer) -> String {
    format!(
        "POST /acme/new-order HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
         Content-Type: application/jose+json\r\nContent-Length: 1000\r\n\r\n{{",
        server.listen_port()
    )
}

/// The soft limit on open files of process `pid` (`self` for this one), if `/proc` tells.
fn open_files_limit(pid: &str) -> Option<u64> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

fn ensure_fd_headroom(who: &str, pid: &str, needed: u64) -> Result<()> {
    if let Some(limit) = open_files_limit(pid) {
        ensure!(
            limit >= needed,
            "{who} may open only {limit} files (ulimit -n) but this test needs {needed}; \
             raise the limit"
        );
    }
    Ok(())
}

/// 250 connections that sent a whole head and one byte of a 1000-byte body are all closed
/// within 40 s under the default limits (request_timeout 30 s), each after a 408 problem
/// document or at least closed; meanwhile a new client is served. (They all come from
/// 127.0.0.1, so they stay below max_connections_per_address, 256.)
#[test]
fn stalled_bodies_are_closed_under_the_default_limits() -> Result<()> {
    const STALLED: usize = 250;
    const WITHIN: Duration = Duration::from_secs(40);
    // Sockets, plus what the server (store, logs) and the other tests in this process use.
    let needed = STALLED as u64 + 200;
    ensure_fd_headroom("the test process", "self", needed)?;
    let mut server = CaServer::start(CaServerOpts::default())?;
    let pid = server.pid().context("server pid")?.to_string();
    ensure_fd_headroom("ca-server", &pid, needed)?;
    let cfg = client_config(&server, &[b"http/1.1"])?;
    let request = stalled_post(&server);

    let mut stalled = Vec::with_capacity(STALLED);
    for i in 0..STALLED {
        let mut conn = Conn::open(&server, &cfg)
            .with_context(|| format!("opening stalled connection {i}\n{}", server.logs()))?;
        conn.send(request.as_bytes())?;
        stalled.push((conn, Instant::now()));
    }
    let first_stalled = stalled[0].1;
    let set_up = first_stalled.elapsed();

    let (status, body) = https::get(&server.directory_url(), &server.root_pem_path())
        .context("a new client during the stall")?;
    ensure!(
        status == 200 && body.contains("newNonce"),
        "GET /directory during the stall: {status} {body}"
    );
    // Otherwise the stalled connections may be gone already and the check above proves
    // nothing.
    ensure!(
        first_stalled.elapsed() < Duration::from_secs(25),
        "setting up the stall took {:?}; too slow for the check to mean anything",
        first_stalled.elapsed()
    );

    let mut answered = 0;
    for (i, (mut conn, since)) in stalled.into_iter().enumerate() {
        let left = (since + WITHIN).saturating_duration_since(Instant::now());
        let ending = conn.wait_closed(left)?;
        ensure!(
            ending.closed,
            "stalled connection {i} still open {WITHIN:?} after it stalled; got {:?}",
            String::from_utf8_lossy(&ending.data)
        );
        if !ending.data.is_empty() {
            let response = Response::parse(&ending.data).with_context(|| {
                format!(
                    "connection {i}: not an HTTP response: {:?}",
                    String::from_utf8_lossy(&ending.data)
                )
            })?;
            ensure!(response.0.is_408_problem(), "connection {i}: {response:?}");
            answered += 1;
        }
    }
    eprintln!(
        "{STALLED} connections stalled in {set_up:?}; all closed {:?} after the first stalled; \
         {answered} got a 408 problem document",
        first_stalled.elapsed()
    );
    ensure!(
        answered > 0,
        "no stalled connection got a 408 problem document"
    );
    server.check_running()
}

/// A client that opens with the HTTP/2 connection preface (prior knowledge, no ALPN) gets no
/// HTTP/2: no SETTINGS frame, at most an HTTP/1.1 error, and the connection closes.
#[test]
fn http2_prior_knowledge_is_not_answered_as_http2() -> Result<()> {
    let server = CaServer::start(CaServerOpts::default())?;
    let mut conn = Conn::open(&server, &client_config(&server, &[])?)?;
    // The preface (RFC 9113 §3.4), then an empty SETTINGS frame.
    conn.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")?;
    let ending = conn.wait_closed(Duration::from_secs(5))?;
    let data = &ending.data;
    // Every HTTP/2 server starts with a SETTINGS frame: type 0x4 after the 3-byte length.
    ensure!(
        !(data.len() >= 9 && data[3] == 0x4),
        "answered with an HTTP/2 SETTINGS frame: {data:02x?}"
    );
    ensure!(
        data.is_empty() || data.starts_with(b"HTTP/1.1 "),
        "unexpected answer: {:?}",
        String::from_utf8_lossy(data)
    );
    ensure!(ending.closed, "connection still open after 5 s");
    Ok(())
}

/// With header_read_timeout 1 s, request_timeout 2 s and idle_timeout 4 s: an idle keep-alive
/// connection closes after idle_timeout (not earlier); a connection that sends nothing, or
/// starts a head and never finishes it, closes after header_read_timeout; a trickled body gets
/// a 408 at request_timeout; and a connection making requests 1.5 s apart (more than
/// header_read_timeout, less than idle_timeout) stays usable for longer than any limit.
#[test]
fn timeouts_close_stalled_connections_and_spare_busy_ones() -> Result<()> {
    let server = CaServer::start(CaServerOpts {
        extra_toml: SHORT_LIMITS.into(),
        ..CaServerOpts::default()
    })?;
    let cfg = client_config(&server, &[b"http/1.1"])?;
    let secs = Duration::from_secs_f64;
    let open = || Conn::open(&server, &cfg);
    let outcome: Result<()> = thread::scope(|s| {
        let idle = s.spawn(|| -> Result<()> {
            let mut conn = open()?;
            ensure!(conn.get("/directory")?.status == 200);
            let ending = conn.wait_closed(secs(8.0))?;
            ensure!(ending.closed, "idle connection still open after 8 s");
            ensure!(
                ending.after >= secs(3.5) && ending.after < secs(7.0),
                "idle connection closed {:?} after its response (idle_timeout is 4 s)",
                ending.after
            );
            Ok(())
        });
        let silent = s.spawn(|| -> Result<()> {
            let mut conn = open()?;
            let ending = conn.wait_closed(secs(8.0))?;
            ensure!(ending.closed, "silent connection still open after 8 s");
            ensure!(
                ending.after >= secs(0.7) && ending.after < secs(3.0),
                "a connection that sent nothing closed after {:?} (header_read_timeout is 1 s)",
                ending.after
            );
            Ok(())
        });
        let slow_head = s.spawn(|| -> Result<()> {
            let mut conn = open()?;
            ensure!(conn.get("/directory")?.status == 200);
            thread::sleep(secs(0.5));
            conn.send(b"GET /directory HTTP/1.1\r\nHost: loc")?;
            let ending = conn.wait_closed(secs(8.0))?;
            ensure!(ending.closed, "unfinished head still open after 8 s");
            ensure!(
                ending.after >= secs(0.7) && ending.after < secs(3.0),
                "unfinished head closed after {:?} (header_read_timeout is 1 s)",
                ending.after
            );
            Ok(())
        });
        let slow_body = s.spawn(|| -> Result<()> {
            let mut conn = open()?;
            let start = Instant::now();
            conn.send(stalled_post(&server).as_bytes())?;
            // A byte every 300 ms: never quiet for a whole second, never done.
            let mut response = None;
            for _ in 0..20 {
                match conn.response(secs(0.3)) {
                    Ok(r) => {
                        response = Some(r);
                        break;
                    }
                    Err(_) => {
                        if conn.send(b" ").is_err() {
                            break;
                        }
                    }
                }
            }
            let took = start.elapsed();
            let response = response.context("no response to a trickled body")?;
            ensure!(response.is_408_problem(), "{response:?}");
            ensure!(
                took >= secs(1.8) && took < secs(4.0),
                "408 after {took:?} (request_timeout is 2 s)"
            );
            let ending = conn.wait_closed(secs(3.0))?;
            ensure!(ending.closed, "still open 3 s after the 408");
            Ok(())
        });
        let busy = s.spawn(|| -> Result<()> {
            let mut conn = open()?;
            let start = Instant::now();
            for i in 0..4 {
                if i > 0 {
                    thread::sleep(secs(1.5));
                }
                let r = conn
                    .get("/directory")
                    .with_context(|| format!("request {i}, {:?} in", start.elapsed()))?;
                ensure!(r.status == 200, "request {i}: {r:?}");
            }
            Ok(())
        });
        let mut failures = Vec::new();
        for (name, handle) in [
            ("idle", idle),
            ("silent", silent),
            ("slow head", slow_head),
            ("slow body", slow_body),
            ("busy", busy),
        ] {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(format!("{name}: {e:#}")),
                Err(_) => failures.push(format!("{name}: panicked")),
            }
        }
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    });
    outcome.with_context(|| server.logs())
}

/// With max_connections = 3 and three connections open and stalled, a fourth is not served
/// (its TLS handshake waits in the backlog) until one of the three closes; then it is. The
/// fourth comes from 127.0.0.2: from 127.0.0.1 it would be over max_connections_per_address
/// (at most max_connections, so 3) and closed at once.
#[test]
fn max_connections_holds() -> Result<()> {
    let server = CaServer::start(CaServerOpts {
        extra_toml: "[limits]\nmax_connections = 3\n".into(),
        ..CaServerOpts::default()
    })?;
    let cfg = client_config(&server, &[b"http/1.1"])?;
    let request = stalled_post(&server);
    let mut stalled = Vec::new();
    for i in 0..3 {
        let mut conn =
            Conn::open(&server, &cfg).with_context(|| format!("stalled connection {i}"))?;
        conn.send(request.as_bytes())?;
        stalled.push(conn);
    }

    let (tx, rx) = mpsc::channel();
    let fourth = {
        let (server, cfg) = (&server, Arc::clone(&cfg));
        let start = Instant::now();
        move || {
            let served = Conn::open_from(server, &cfg, Ipv4Addr::new(127, 0, 0, 2))
                .and_then(|mut c| c.get("/directory"))
                .map(|r| (r.status, start.elapsed()));
            let _ = tx.send(served);
        }
    };
    thread::scope(|s| -> Result<()> {
        s.spawn(fourth);
        match rx.recv_timeout(Duration::from_secs(2)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(served) => bail!("a fourth connection was served while three were open: {served:?}"),
            Err(e) => bail!("{e}"),
        }
        drop(stalled.pop());
        let (status, after) = rx
            .recv_timeout(Duration::from_secs(10))
            .context("the fourth connection was not served after one of the three closed")?
            .context("the fourth connection")?;
        ensure!(status == 200, "fourth connection: status {status}");
        eprintln!("fourth connection served {after:?} after it connected");
        Ok(())
    })
    .with_context(|| server.logs())
}

/// With max_connections_per_address = 4 and four connections open from 127.0.0.1, a fifth from
/// 127.0.0.1 is closed at once (its TLS handshake fails well within header_read_timeout, 10 s),
/// however often it tries, while 127.0.0.2 is served; once one of the four closes, 127.0.0.1 is
/// served again.
#[test]
fn max_connections_per_address_holds() -> Result<()> {
    let server = CaServer::start(CaServerOpts {
        extra_toml: "[limits]\nmax_connections_per_address = 4\n".into(),
        ..CaServerOpts::default()
    })?;
    let cfg = client_config(&server, &[b"http/1.1"])?;
    let local = Ipv4Addr::LOCALHOST;
    let outcome = (|| -> Result<()> {
        // The readiness probe's connection may still be closing: allow it a moment.
        let served = |from: Ipv4Addr| -> Result<Conn> {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let attempt = Conn::open_from(&server, &cfg, from).and_then(|mut c| {
                    let r = c.get("/directory")?;
                    ensure!(r.status == 200, "GET /directory: {r:?}");
                    Ok(c)
                });
                match attempt {
                    Ok(conn) => return Ok(conn),
                    Err(e) if Instant::now() > deadline => {
                        return Err(e).with_context(|| format!("a connection from {from}"))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
            }
        };
        let mut open = Vec::new();
        for _ in 0..4 {
            open.push(served(local)?);
        }
        for i in 0..10 {
            let start = Instant::now();
            let fifth = Conn::open_from(&server, &cfg, local).and_then(|mut c| c.get("/directory"));
            ensure!(
                fifth.is_err(),
                "attempt {i}: a fifth connection from 127.0.0.1 was served: {fifth:?}"
            );
            ensure!(
                start.elapsed() < Duration::from_secs(3),
                "attempt {i}: the fifth connection was closed only after {:?}",
                start.elapsed()
            );
        }
        served(Ipv4Addr::new(127, 0, 0, 2)).context("another address")?;
        for (i, conn) in open.iter_mut().enumerate() {
            let r = conn
                .get("/directory")
                .with_context(|| format!("connection {i}"))?;
            ensure!(r.status == 200, "connection {i}: {r:?}");
        }
        drop(open.pop());
        served(local).context("after one of the four closed")?;
        Ok(())
    })();
    outcome.with_context(|| server.logs())
}
