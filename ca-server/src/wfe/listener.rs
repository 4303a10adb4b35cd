//! The HTTPS listener: our own accept loop, TLS (tokio-rustls) and hyper's HTTP/1.1 server
//! connection, with a deadline on every phase of a connection's life (`[limits]`).
//!
//! A connection is always in one phase, and each phase has one deadline:
//!
//! - TLS handshake: `header_read_timeout` from the accept.
//! - head (request line and headers): `header_read_timeout` from the request's first byte.
//! - request (body, handler, response): `request_timeout` from the request's first byte, until
//!   hyper has taken the whole response.
//! - idle (between requests): `idle_timeout` from the end of the last response.
//!
//! A connection's first request has no first byte to wait for: its head is due
//! `header_read_timeout` after the handshake. A handler still running at the request deadline
//! is dropped and the client gets a 408 problem document, after which the connection closes.
//!
//! hyper's own `header_read_timeout` stays off. In hyper 1.x it starts as soon as a keep-alive
//! connection goes idle (`proto/h1/conn.rs` re-arms it in `State::idle`), so it would close
//! idle connections after `header_read_timeout` and make `idle_timeout` meaningless; and
//! hyper has no body, request or idle deadlines. So the connection's IO wrapper notes each
//! request's first byte, the service notes the complete head and the end of the response, and
//! a watchdog next to the hyper connection closes it when the current phase's deadline passes.
//!
//! At most `max_connections` connections are open at once: the accept loop takes a permit
//! before it calls `accept`, so further connections wait in the kernel's backlog instead of
//! being accepted and then dropped.
//!
//! One source address holds at most `max_connections_per_address` of them, so a single client
//! cannot take every permit and leave devices waiting in the backlog. An IPv4-mapped IPv6
//! address counts as its IPv4 address, and an IPv6 address counts by its /64, since one host
//! usually has a whole /64 to pick source addresses from. A connection beyond its address's
//! cap is closed as soon as it is accepted, before the TLS handshake, and its permit goes to
//! the next connection.
//!
//! Idle keep-alive connections give way first. Once fewer than 1/16 of the permits are free,
//! every permit the accept loop takes closes one idle connection, the one idle longest
//! (connections wait for that in a [`Notify`] queue from the moment they go idle, and
//! [`Notify::notify_one`] wakes the oldest waiter). With no connection idle, the next one to go
//! idle closes. So a client that keeps connections alive with a request now and then loses
//! them to new connections instead of holding them for `idle_timeout` at a time; a client
//! between requests reconnects, as it would after `idle_timeout`.
//!
//! HTTP/1.1 only, with no fallback: a client that opens with the HTTP/2 connection preface
//! gets no HTTP/2 (hyper's HTTP/1 parser recognises the preface and closes the connection).
//!
//! A request head hyper cannot parse never reaches the router: hyper answers it itself with a
//! bare 400, 414 or 431. The IO wrapper writes a problem document with that status in its
//! place, so every error the server sends is one (RFC 8555 §6.7).

use std::collections::hash_map::{Entry, HashMap};
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::response::IntoResponse as _;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::ca::operator::ClientCertificate;
use crate::config::LimitsConfig;
use crate::{Error, Result};

/// How long open connections may finish their requests after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a 408 has to reach the client before the connection is closed anyway. The
/// watchdog also waits this long past a request's deadline, so the handler's own timeout (at
/// the deadline, in the same task) answers 408 before the watchdog drops the connection.
const WRITE_GRACE: Duration = Duration::from_secs(1);

/// Longest deadline the listener uses; longer settings are cut to it so no deadline
/// computation can overflow. A year is "never" for a connection.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// Pause after `accept` fails for a reason that is not the connection's own (out of file
/// descriptors or memory): the error repeats until something is freed, so retrying at once
/// would only spin.
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// File descriptors the server needs besides its HTTPS connections (the store, the admin
/// socket, validation connections, logs), for the warning about a low `ulimit -n`.
const FD_RESERVE: u64 = 64;

/// The `[limits]` durations as the listener applies them (capped at [`LONGEST`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limits {
    header_read: Duration,
    request: Duration,
    idle: Duration,
}

impl From<&LimitsConfig> for Limits {
    fn from(cfg: &LimitsConfig) -> Self {
        Self {
            header_read: cfg.header_read_timeout.min(LONGEST),
            request: cfg.request_timeout.min(LONGEST),
            idle: cfg.idle_timeout.min(LONGEST),
        }
    }
}

/// Where a connection is in its life, which decides the limit that applies to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between requests, since the last response.
    Idle { since: Instant },
    /// Reading a request head; the request began at `start`.
    Head { start: Instant },
    /// The head is in: the body, the handler and the response; the request began at `start`.
    Request { start: Instant },
    /// A 408 is on its way; the connection closes after it.
    Closing { until: Instant },
}

impl Phase {
    /// When a connection in this phase is closed.
    fn deadline(self, limits: &Limits) -> Instant {
        match self {
            Self::Idle { since } => since + limits.idle,
            // The head is part of the request, so it is also held to `request_timeout`.
            Self::Head { start } => start + limits.header_read.min(limits.request),
            Self::Request { start } => start + limits.request + WRITE_GRACE,
            Self::Closing { until } => until,
        }
    }

    /// Bytes arrived: from idle, a new request begins.
    fn on_read(self, now: Instant) -> Self {
        match self {
            Self::Idle { .. } => Self::Head { start: now },
            other => other,
        }
    }

    /// hyper parsed a head and calls the service.
    fn on_head(self, now: Instant) -> Self {
        match self {
            Self::Head { start } => Self::Request { start },
            // A pipelined head hyper had already buffered: no read marked its first byte.
            Self::Idle { .. } | Self::Request { .. } => Self::Request { start: now },
            closing @ Self::Closing { .. } => closing,
        }
    }

    /// hyper has taken the whole response.
    fn on_response_sent(self, now: Instant) -> Self {
        match self {
            Self::Request { .. } => Self::Idle { since: now },
            other => other,
        }
    }

    /// Which limit a connection that reaches this phase's deadline broke, for the log.
    fn limit_name(self) -> &'static str {
        match self {
            Self::Idle { .. } => "idle_timeout",
            Self::Head { .. } => "header_read_timeout",
            Self::Request { .. } => "request_timeout",
            Self::Closing { .. } => "request_timeout (408 not delivered)",
        }
    }
}

/// One connection's phase, shared by its IO (which sees a request's first byte), its service
/// (which sees the head complete and the response end) and its watchdog. All three run in the
/// connection's task, so the lock is never contended.
#[derive(Debug)]
struct Clock {
    limits: Limits,
    phase: Mutex<Phase>,
}

impl Clock {
    /// A connection whose handshake ended at `now`: its first request head is due next.
    fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            phase: Mutex::new(Phase::Head { start: now }),
        }
    }

    fn update(&self, step: impl FnOnce(Phase) -> Phase) -> Phase {
        // A panic cannot leave a `Phase` half-written, so a poisoned lock still holds a valid one.
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        *phase = step(*phase);
        *phase
    }

    fn phase(&self) -> Phase {
        self.update(|p| p)
    }

    fn deadline(&self) -> Instant {
        self.phase().deadline(&self.limits)
    }

    fn bytes_read(&self) {
        self.update(|p| p.on_read(Instant::now()));
    }

    /// Returns when the handler must have answered.
    fn head_complete(&self) -> Instant {
        match self.update(|p| p.on_head(Instant::now())) {
            Phase::Request { start } => start + self.limits.request,
            other => other.deadline(&self.limits),
        }
    }

    fn response_sent(&self) {
        self.update(|p| p.on_response_sent(Instant::now()));
    }

    fn timed_out(&self) {
        self.update(|_| Phase::Closing {
            until: Instant::now() + WRITE_GRACE,
        });
    }
}

/// Serves `router` over HTTPS on `listener` under `limits` until `shutdown` completes; then
/// stops accepting and gives open connections up to `SHUTDOWN_GRACE` (5 s) to finish (idle
/// ones close at once).
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: &LimitsConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let local = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("cannot read the listening address: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Internal(format!("cannot configure listener {local}: {e}")))?;
    let listener = TcpListener::from_std(listener)
        .map_err(|e| Error::Internal(format!("cannot serve on {local}: {e}")))?;
    tracing::info!(
        header_read_timeout = ?limits.header_read_timeout,
        request_timeout = ?limits.request_timeout,
        idle_timeout = ?limits.idle_timeout,
        max_connections = limits.max_connections,
        max_connections_per_address = limits.per_address_cap(),
        "connection limits"
    );
    if let Some(files) = open_files_limit() {
        let needed = u64::try_from(limits.max_connections)
            .unwrap_or(u64::MAX)
            .saturating_add(FD_RESERVE);
        if files < needed {
            tracing::warn!(
                "limits.max_connections = {} but the process may open only {files} files \
                 (ulimit -n): connections beyond that fail at accept; raise the limit or lower \
                 max_connections",
                limits.max_connections
            );
        }
    }

    let slots = Arc::new(Slots::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::new(limits.per_address_cap()));
    let conn = Conn {
        acceptor: TlsAcceptor::from(tls),
        router,
        limits: Limits::from(limits),
        slots: Arc::clone(&slots),
    };
    // Shutdown is announced on `stop`; each connection task holds an `open` sender, so
    // `recv` on the receiver ends when the last connection is gone.
    let (stop_tx, stop_rx) = watch::channel(());
    let (open_tx, mut open_rx) = mpsc::channel::<Infallible>(1);
    let mut shutdown = pin!(shutdown);
    // A permit not used by the last round (a failed accept, a connection over its address's
    // cap) serves the next one.
    let mut unused: Option<OwnedSemaphorePermit> = None;
    loop {
        let permit = match unused.take() {
            Some(permit) => permit,
            None => tokio::select! {
                () = &mut shutdown => break,
                permit = slots.acquire() => match permit {
                    Some(permit) => permit,
                    None => break, // never closed
                },
            },
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    unused = Some(permit);
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let Some(counted) = per_address.claim(peer.ip()) else {
            // Dropping the stream closes it.
            tracing::debug!(
                %peer,
                "closing connection: max_connections_per_address ({}) reached",
                per_address.cap
            );
            unused = Some(permit);
            continue;
        };
        let (conn, stop, open) = (conn.clone(), stop_rx.clone(), open_tx.clone());
        tokio::spawn(async move {
            conn.serve(tcp, peer, stop).await;
            drop((permit, counted, open));
        });
    }
    drop(listener);
    stop_tx.send_replace(());
    drop(open_tx);
    if tokio::time::timeout(SHUTDOWN_GRACE, open_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {SHUTDOWN_GRACE:?} after shutdown began; closing them"
        );
    }
    Ok(())
}

/// Logs a failed `accept`, and pauses when the failure is the process's rather than the
/// connection's.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    ) {
        tracing::debug!(error = %e, "accept failed");
    } else {
        tracing::warn!(error = %e, "accept failed; pausing {ACCEPT_PAUSE:?}");
        tokio::time::sleep(ACCEPT_PAUSE).await;
    }
}

/// The soft limit on open files (`ulimit -n`) where the OS tells it (Linux `/proc`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

fn parse_open_files_limit(proc_limits: &str) -> Option<u64> {
    let line = proc_limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    // "unlimited" does not parse: nothing to warn about.
    line.split_whitespace().next()?.parse().ok()
}

/// The `max_connections` permits, and the queue of idle connections that give theirs up when
/// few are left.
struct Slots {
    permits: Arc<Semaphore>,
    total: usize,
    /// Idle connections wait here, in the order they went idle.
    idle: Notify,
}

impl Slots {
    fn new(max_connections: usize) -> Self {
        let total = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
            idle: Notify::new(),
        }
    }

    /// Fewer than 1/16 of the permits are free.
    fn scarce(&self) -> bool {
        self.permits.available_permits().saturating_mul(16) < self.total
    }

    /// Takes a permit for the next connection; when permits are scarce, also asks the
    /// connection idle longest (or, with none idle, the next to go idle) to close. `None` if
    /// the semaphore is closed, which it never is.
    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        if self.scarce() {
            self.idle.notify_one();
        }
        Some(permit)
    }
}

/// Open connections per source address, for `max_connections_per_address`. An address has an
/// entry only while it has a connection open, so the map holds at most `max_connections`
/// entries.
struct PerAddress {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every update is a whole one under the lock, so a poisoned map is still consistent.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new connection from `peer`, or returns `None` if its address already has `cap`
    /// connections open. The count goes down when the returned value is dropped.
    fn claim(self: &Arc<Self>, peer: IpAddr) -> Option<Counted> {
        let key = address_key(peer);
        let mut open = self.open();
        let count = open.entry(key).or_insert(0);
        // `cap` is at least 1, so a refusal never leaves a zero count behind.
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Counted {
            table: Arc::clone(self),
            key,
        })
    }
}

/// One open connection in [`PerAddress`].
struct Counted {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.table.open();
        if let Entry::Occupied(mut entry) = open.entry(self.key) {
            let count = entry.get_mut();
            *count = count.saturating_sub(1);
            if *count == 0 {
                entry.remove();
            }
        }
    }
}

/// The address a connection from `ip` counts against: IPv4-mapped IPv6 addresses as their
/// IPv4 address, other IPv6 addresses by their /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// What every connection needs from the listener.
#[derive(Clone)]
struct Conn {
    acceptor: TlsAcceptor,
    router: Router,
    limits: Limits,
    slots: Arc<Slots>,
}

impl Conn {
    /// Runs one connection to its end: closed by the client, by hyper (an error, or keep-alive
    /// not possible), by shutdown, or by the watchdog at its phase's deadline.
    async fn serve(self, tcp: TcpStream, peer: SocketAddr, mut stop: watch::Receiver<()>) {
        // ACME exchanges are small request/response pairs; with Nagle's algorithm each
        // response can wait ~40 ms for the client's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let tls = match tokio::time::timeout(self.limits.header_read, self.acceptor.accept(tcp))
            .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "closing connection: TLS handshake not done within header_read_timeout");
                return;
            }
        };
        // Verified by the TLS configuration's client verifier, if it asks for one (the
        // console's listener); handlers see it as an extension of every request.
        let client_certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| ClientCertificate(Arc::new(leaf.clone().into_owned())));
        let clock = Arc::new(Clock::new(self.limits, Instant::now()));
        let io = TokioIo::new(Watched {
            inner: tls,
            clock: Arc::clone(&clock),
            replacement: Vec::new(),
        });
        let service = Handler {
            router: self.router,
            peer,
            client_certificate,
            clock: Arc::clone(&clock),
        };
        let mut conn = pin!(http1::Builder::new()
            .keep_alive(true)
            // Off: see the module documentation; the watchdog below enforces it instead.
            .header_read_timeout(None)
            .serve_connection(io, service));

        let slots = self.slots;
        let mut stop = pin!(stop.changed());
        let mut stopping = false;
        // While the connection is idle: its place in the queue of idle connections.
        let mut queued = pin!(None);
        let mut watchdog = pin!(tokio::time::sleep_until(clock.deadline()));
        let expired = poll_fn(|cx| loop {
            if !stopping && stop.as_mut().poll(cx).is_ready() {
                // Idle connections close now, busy ones after their current response.
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return Poll::Ready(None);
            }
            // Polling the connection is what moves the phase, so the phase is current here.
            let idle = matches!(clock.phase(), Phase::Idle { .. });
            if stopping || !idle {
                queued.set(None);
            } else {
                if queued.is_none() {
                    queued.set(Some(slots.idle.notified()));
                }
                if let Some(Poll::Ready(())) = queued.as_mut().as_pin_mut().map(|q| q.poll(cx)) {
                    queued.set(None);
                    if slots.scarce() {
                        tracing::debug!(%peer, "closing idle connection: few connections left");
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    // Poll the connection again, to close it or to queue it again.
                    continue;
                }
            }
            let deadline = clock.deadline();
            if watchdog.deadline() != deadline {
                watchdog.as_mut().reset(deadline);
            }
            return match watchdog.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(clock.phase())),
                Poll::Pending => Poll::Pending,
            };
        })
        .await;
        if let Some(phase) = expired {
            // Dropping the connection closes the socket.
            tracing::debug!(%peer, limit = phase.limit_name(), "closing connection: limit reached");
        }
    }
}

/// The TLS stream under hyper, marking the first byte of each request on the connection's
/// clock, and putting a problem document in place of hyper's own answer to a request it
/// cannot parse (see [`problem_for_parse_error`]).
struct Watched {
    inner: TlsStream<TcpStream>,
    clock: Arc<Clock>,
    /// A problem document that replaces hyper's answer, still to be written: it goes out
    /// before anything else.
    replacement: Vec<u8>,
}

impl Watched {
    /// Writes out what is left of the replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.replacement.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.replacement))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.replacement.drain(..n);
        }
        Poll::Ready(Ok(()))
    }

    /// Whether `buf`, which hyper is writing, is its own answer to an unparsable request; if
    /// so, the problem document to send instead is queued (and started).
    fn replaced(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> io::Result<bool> {
        // Only while no request is with the service: then nothing but hyper writes.
        if !matches!(self.clock.phase(), Phase::Head { .. } | Phase::Idle { .. }) {
            return Ok(false);
        }
        let Some(replacement) = problem_for_parse_error(buf) else {
            return Ok(false);
        };
        self.replacement = replacement;
        if let Poll::Ready(Err(e)) = self.poll_replacement(cx) {
            return Err(e);
        }
        Ok(true)
    }
}

/// hyper answers a request head it cannot parse (a bad request line or header, a head over its
/// buffer, too many headers) on its own, before any service sees a request: a bare `400`,
/// `414` or `431` with `content-length: 0`, and then it closes the connection. Every error this
/// server sends is a problem document (RFC 8555 §6.7), so such an answer, written whole as
/// `head`, is turned into one with the same status line (type `malformed`). Returns `None` for
/// anything else.
fn problem_for_parse_error(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let text = text.strip_suffix("\r\n\r\n")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let code: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()?;
    let detail = match code {
        400 => "the request is not valid HTTP/1.1",
        414 => "the request target is too long",
        431 => "the request head is too large",
        _ => return None,
    };
    let (empty, rest): (Vec<&str>, Vec<&str>) =
        lines.partition(|l| l.eq_ignore_ascii_case("content-length: 0"));
    if empty.len() != 1 || rest.iter().any(|l| l.is_empty() || !l.contains(':')) {
        return None;
    }
    let mut problem = Error::Malformed(detail.to_owned()).to_problem();
    problem.status = code;
    let body = serde_json::to_vec(&problem).ok()?;
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\
         connection: close\r\n",
        body.len()
    );
    // hyper's own `date` stays; the connection closes either way.
    for line in rest
        .iter()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
    {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_replacement(cx))?;
        if this.replaced(cx, buf)? {
            // hyper's bytes count as written: the replacement stands for them.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_replacement(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if this.replaced(cx, first)? {
                return Poll::Ready(Ok(first.len()));
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// hyper's service for one connection: the router, with the client's address in each
/// request (`ConnectInfo`, which `jws` reads) and its verified TLS client certificate if any
/// (`ClientCertificate`, which the console reads), and the request deadline around the
/// handler.
#[derive(Clone)]
struct Handler {
    router: Router,
    peer: SocketAddr,
    client_certificate: Option<ClientCertificate>,
    clock: Arc<Clock>,
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let deadline = self.clock.head_complete();
        request.extensions_mut().insert(ConnectInfo(self.peer));
        if let Some(cert) = &self.client_certificate {
            request.extensions_mut().insert(cert.clone());
        }
        let router = self.router.clone();
        let (clock, peer) = (Arc::clone(&self.clock), self.peer);
        Box::pin(async move {
            let response = match tokio::time::timeout_at(deadline, router.oneshot(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_elapsed) => {
                    tracing::debug!(%peer, "request not complete within request_timeout: 408");
                    clock.timed_out();
                    request_timeout(clock.limits.request)
                }
            };
            Ok(response.map(|body| Tracked {
                body,
                _sent: ResponseSent(clock),
            }))
        })
    }
}

/// The answer to a request that is not done at its deadline (a stalled body, or a handler
/// that takes too long): a 408 problem document that closes the connection. No Replay-Nonce:
/// the request's JWS was not read, so its nonce is still unused.
fn request_timeout(limit: Duration) -> Response<Body> {
    Error::RequestTimeout(limit).into_response()
}

/// A response body that tells the clock when hyper is done with it: hyper drops a body once
/// its last byte is in the connection's write buffer.
struct Tracked {
    body: Body,
    _sent: ResponseSent,
}

struct ResponseSent(Arc<Clock>);

impl Drop for ResponseSent {
    fn drop(&mut self) {
        self.0.response_sent();
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
