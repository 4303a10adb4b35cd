//! A tiny HTTP/1.x responder for http-01 (RFC 8555 §8.3, SPEC §5.3).
//!
//! It answers `GET /.well-known/acme-challenge/{token}` with the key authorization of a token it
//! was given, and 404 to everything else. It only runs while an order has pending
//! authorizations. Tokens are checked to be base64url before they are stored (SPEC §5.2), and the
//! path is compared, never used to open anything.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::error::Error;

const PREFIX: &str = "/.well-known/acme-challenge/";
/// A request head larger than this is not a validation request.
const MAX_HEAD: usize = 8 * 1024;
/// A connection that is not answered and closed within this time (request, response and
/// shutdown; for tls-alpn-01 handshake and shutdown) is dropped.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many connections are served at once, by each responder; more are closed as
/// soon as they are accepted, so idle connections cannot use up the device's memory or file
/// descriptors. A CA validates from a few vantage points, far fewer.
pub const MAX_CONNECTIONS: usize = 32;

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// A running responder; stops when dropped.
#[derive(Debug)]
pub struct Http01Responder {
    addr: SocketAddr,
    tokens: Tokens,
    task: JoinHandle<()>,
}

/// Binds a challenge responder's `addr`. The unspecified IPv6 address `[::]` is bound
/// dual-stack (IPV6_V6ONLY off), so validators reach it over IPv4 too; where the host has no
/// IPv6 it falls back to `0.0.0.0` on the same port. A port that is taken or not allowed fails
/// as it is.
pub(crate) async fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::io::ErrorKind::{AddrInUse, PermissionDenied};
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        match listen_dual_stack(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) if matches!(e.kind(), AddrInUse | PermissionDenied) => return Err(e),
            Err(e) => {
                let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
                tracing::debug!(error = %e, "cannot listen on {addr} (no IPv6?); listening on {v4}");
                return TcpListener::bind(v4).await;
            }
        }
    }
    TcpListener::bind(addr).await
}

fn listen_dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v6()?;
    socket2::SockRef::from(&socket).set_only_v6(false)?;
    // As TcpListener::bind does: a restarted client can listen again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Http01Responder {
    /// Binds `addr` and starts answering.
    pub async fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let listener = listen(addr)
            .await
            .map_err(|source| Error::Http01Listen { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::Http01Listen { addr, source })?;
        let tokens: Tokens = Arc::default();
        let task = tokio::spawn(serve(listener, tokens.clone()));
        tracing::debug!(%local, "http-01 responder listening");
        Ok(Self {
            addr: local,
            tokens,
            task,
        })
    }

    /// The bound address (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `key_authorization` for `token` from now on.
    pub fn add(&self, token: &str, key_authorization: &str) -> Result<(), Error> {
        protocol_spec::challenge::check_token(token)
            .map_err(|e| Error::protocol("http-01 challenge", e))?;
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_owned(), key_authorization.to_owned());
        Ok(())
    }
}

impl Drop for Http01Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, tokens: Tokens) {
    serve_capped(listener, "http-01", move |stream, peer| {
        let tokens = tokens.clone();
        async move { answer(stream, peer, &tokens).await }
    })
    .await;
}

/// The accept loop of a challenge responder (`what`: `http-01`, `tls-alpn-01`): each connection
/// is answered by `answer` in its own task, at most [`MAX_CONNECTIONS`] at once (more are
/// closed as soon as they are accepted), and dropped if the answer, shutdown included, takes
/// longer than [`ANSWER_TIMEOUT`].
pub(crate) async fn serve_capped<F, A>(listener: TcpListener, what: &'static str, answer: F)
where
    F: Fn(TcpStream, SocketAddr) -> A,
    A: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "{what}: too many connections; closed this one");
                    drop(stream);
                    continue;
                };
                let answered = answer(stream, peer);
                tokio::spawn(async move {
                    match tokio::time::timeout(ANSWER_TIMEOUT, answered).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "{what} connection failed")
                        }
                        Err(_) => tracing::debug!(%peer, "{what} connection timed out"),
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "{what} responder cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, peer: SocketAddr, tokens: &Tokens) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break false;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
    };
    let (status, body) = if complete {
        respond(&head, tokens)
    } else {
        ("400 Bad Request", String::new())
    };
    if status.starts_with("200") {
        tracing::info!(%peer, "answered an http-01 request for a pending token");
    } else {
        tracing::debug!(%peer, status, "http-01 request answered");
    }
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The status line and body for a request head.
fn respond(head: &[u8], tokens: &Tokens) -> (&'static str, String) {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.lines().next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return ("400 Bad Request", String::new());
    };
    if method != "GET" {
        return ("405 Method Not Allowed", String::new());
    }
    let Some(token) = target.strip_prefix(PREFIX) else {
        return ("404 Not Found", String::new());
    };
    match tokens
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(token)
    {
        Some(ka) => ("200 OK", ka.clone()),
        None => ("404 Not Found", String::new()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Waits up to `within` for the server to close each of `conns` (EOF or an error on read);
    /// how many it closed, and the ones still open.
    async fn closed_within(conns: Vec<TcpStream>, within: Duration) -> (usize, Vec<TcpStream>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut closed = 0;
        let mut open = Vec::new();
        for mut c in conns {
            let mut byte = [0u8; 1];
            match tokio::time::timeout_at(deadline, c.read(&mut byte)).await {
                Ok(Ok(0) | Err(_)) => closed += 1,
                Ok(Ok(_)) => panic!("the responder sent data on an idle connection"),
                Err(_) => open.push(c),
            }
        }
        (closed, open)
    }

    /// Opens 40 idle connections to a responder at `addr` that serves at most `max` at once and
    /// answers within `timeout`: those beyond `max` must be closed at once, the others after
    /// `timeout`.
    pub(crate) async fn assert_idle_connections_capped(
        addr: SocketAddr,
        max: usize,
        timeout: Duration,
    ) {
        let mut idle = Vec::new();
        for _ in 0..40 {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let (closed_at_once, open) = closed_within(idle, Duration::from_secs(1)).await;
        assert_eq!(closed_at_once, 40 - max);
        let (closed_later, _) = closed_within(open, timeout + Duration::from_secs(2)).await;
        assert_eq!(closed_later, max);
    }

    #[tokio::test]
    async fn the_unspecified_ipv6_address_takes_ipv4_too() {
        let r = Http01Responder::bind("[::]:0".parse().expect("addr"))
            .await
            .expect("bind");
        r.add("tok_1-A", "tok_1-A.thumb").expect("add");
        let port = r.local_addr().port();
        let mut clients = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))];
        if r.local_addr().is_ipv6() {
            clients.push(SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
        }
        for client in clients {
            let ok = get(
                client,
                "GET /.well-known/acme-challenge/tok_1-A HTTP/1.1\r\n\r\n",
            )
            .await;
            assert!(ok.ends_with("tok_1-A.thumb"), "{client}: {ok}");
        }
    }

    /// Connections beyond [`MAX_CONNECTIONS`] are closed at once; the idle ones that hold the
    /// slots are closed after [`ANSWER_TIMEOUT`], and then a validation gets through again.
    #[tokio::test]
    async fn idle_connections_are_capped_and_timed_out() {
        let r = Http01Responder::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        r.add("tok_1-A", "tok_1-A.thumb").expect("add");
        let addr = r.local_addr();
        assert_idle_connections_capped(addr, MAX_CONNECTIONS, ANSWER_TIMEOUT).await;
        let ok = get(
            addr,
            "GET /.well-known/acme-challenge/tok_1-A HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(ok.ends_with("\r\n\r\ntok_1-A.thumb"), "{ok}");
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn answers_known_tokens_only() {
        let r = Http01Responder::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        r.add("tok_1-A", "tok_1-A.thumb").expect("add");
        assert!(r.add("../x", "y").is_err());
        let addr = r.local_addr();
        let ok = get(
            addr,
            "GET /.well-known/acme-challenge/tok_1-A HTTP/1.1\r\nHost: plc-7\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\ntok_1-A.thumb"), "{ok}");
        let missing = get(
            addr,
            "GET /.well-known/acme-challenge/other HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = get(
            addr,
            "POST /.well-known/acme-challenge/tok_1-A HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        drop(r);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err(), "stopped on drop");
    }
}
