//! HTTP/1.1 to backends: the gateway's own client, beside the HTTP/2 one ([`super::upstream_h2`]).
//!
//! It replaced `awc`, which cost about 17,300 instructions of a proxied request's 65,600
//! (docs/benchmarks.md): awc builds a codec, its buffers and a date service (with a timer) for
//! every request, and goes through its connector's pool and request builder. Here a connection
//! keeps its buffers from request to request, the request head is written straight into the
//! connection's write buffer, and the response head is parsed with `httparse` into a header map
//! whose values share the read buffer.
//!
//! - **Pool**, per worker thread (actix workers are single-threaded, so nothing here is `Send`):
//!   idle keep-alive connections per (TLS profile, scheme, authority), the most recently used
//!   first. At most [`POOL_LIMIT`] connections per key are open; a request beyond that waits for
//!   one to come free (within its timeout). An idle connection is closed after
//!   [`POOL_KEEP_ALIVE`]; one found closed by the backend when taken is dropped for the next.
//! - **A connection is reused only after its response was read to the end** and neither side
//!   asked to close it; a response body dropped half-read closes its connection.
//! - **Stale connections**: a pooled connection that fails before any byte of the response
//!   arrived (the backend closed it an instant before we wrote) is retried once on a fresh
//!   connection when that is safe: a safe method (GET, HEAD, OPTIONS, TRACE) and a body that
//!   can be sent again (none, or held whole). nginx's `proxy_next_upstream` does the same.
//! - **Bodies stream both ways**: the client's body with its `Content-Length`, or chunked when
//!   its length is unknown; the backend's by `Content-Length`, chunked, or read until the
//!   backend closes. A response whose whole body arrived with its head is answered from memory
//!   and its connection is back in the pool before the client is written to.
//! - **TLS** with the backend's rustls client configuration offering HTTP/1.1 alone by ALPN, and
//!   `tls.server-name` as SNI when set (else the URL's host).
//! - **Timeouts**: the TLS profile's connect timeout for TCP + TLS, and the request's timeout
//!   from the start until the response head.
//! - Failures are typed ([`UpstreamError`]) and become statuses in
//!   [`super::error::GatewayError::from_upstream`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use outpost_actors::route_table::table::BackendUrl;
use outpost_actors::route_table::tls::TlsProfile;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::error::UpstreamError;
use super::exchange::Response;
use super::hop_by_hop::strip_hop_by_hop;
use super::upstream_h2::Announced;

/// Connections per worker per backend (TLS profile, scheme, authority), in use or idle; above
/// awc's default of 100 so busy workers do not queue.
pub const POOL_LIMIT: usize = 1024;
/// Idle pooled connections are closed after this long (below common backend idle timeouts).
pub const POOL_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How often a worker looks for idle connections past [`POOL_KEEP_ALIVE`].
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Response header fields read at most (as actix-http's own decoder).
const MAX_HEADERS: usize = 96;
/// A response head larger than this is refused (as actix-http's client codec).
const MAX_HEAD: usize = 128 << 10;
/// A chunk-size line or trailer field longer than this is refused.
const MAX_LINE: usize = 4 << 10;
/// Bytes read from a backend at a time (at least).
const READ_CHUNK: usize = 16 << 10;
/// A request body held whole up to this size goes out in the same write as its head.
const COALESCE: usize = 16 << 10;

// === what the forwarder hands over ===

/// One request to a backend, borrowed from the exchange.
pub struct Request<'a> {
    pub method: &'a Method,
    pub url: &'a BackendUrl,
    /// Below the URL's base path, raw (percent-encoded); empty or starting with `/`.
    pub path: &'a str,
    /// Raw (percent-encoded) pairs.
    pub query: &'a [(String, String)],
    /// Hop-by-hop headers already gone; `Host` and `Expect` are skipped here.
    pub headers: &'a HeaderMap,
    pub tls: &'a Arc<TlsProfile>,
    /// From the start until the response head.
    pub timeout: Duration,
    /// For the metrics.
    pub backend: &'a str,
}

/// The request body as it will be sent.
pub enum Outgoing {
    None,
    /// Held whole: can be sent again.
    Bytes(Bytes),
    /// The client's, read as it is sent; cut above `max` bytes.
    Stream {
        payload: Payload,
        length: Option<u64>,
        max: u64,
    },
}

/// Why a request did not get a response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    /// The client's body went over the gateway's limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// The client's body broke (bad chunked framing, connection lost): its fault, not the
    /// backend's.
    #[error("request body unreadable: {0}")]
    BodyUnreadable(PayloadError),
    /// The path or query would not make a valid request target.
    #[error("invalid request target")]
    InvalidTarget,
}

/// Sends `req` with `body` and returns the backend's (streaming) response. `counted` is the
/// number of body bytes read from the client, whatever the outcome. The connection is made (or
/// taken from the pool) before anything of `body` is read: after a failure to connect
/// ([`UpstreamError::Connect`], [`UpstreamError::ConnectTimeout`]) a streamed body is still
/// whole in `body`.
pub async fn send(
    req: &Request<'_>,
    body: &mut Outgoing,
    counted: &mut u64,
) -> Result<Response, SendError> {
    let started = Instant::now();
    let deadline = started + req.timeout;
    let host = host_for(req.tls, req.url);
    let (conn, head) = {
        // Pinned here rather than moved into `within`: it is the whole exchange's state, large.
        let run = std::pin::pin!(async {
            let (mut conn, reused) = checkout(&host, req, started).await?;
            match exchange(&mut conn, req, body, counted).await {
                Ok(head) => Ok((conn, head)),
                Err(Failure::Unanswered(_)) if reused && resendable(req.method, body) => {
                    drop(conn);
                    metrics::counter!("outpost_backend_resends_total", "backend" => req.backend.to_owned())
                        .increment(1);
                    let mut conn = open(&host, req).await?;
                    match exchange(&mut conn, req, body, counted).await {
                        Ok(head) => Ok((conn, head)),
                        Err(f) => Err(SendError::from(f)),
                    }
                }
                Err(f) => Err(SendError::from(f)),
            }
        });
        match within(deadline, run).await {
            Some(answered) => answered?,
            None => return Err(UpstreamError::Timeout.into()),
        }
    };
    Ok(respond(host, conn, head, req.method))
}

/// A request the backend may not have seen can go once more: a safe method, and a body that
/// is still whole.
fn resendable(method: &Method, body: &Outgoing) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) && matches!(body, Outgoing::None | Outgoing::Bytes(_))
}

// === deadlines ===

/// `fut`'s output, or `None` once `deadline` has passed first: `tokio::time::timeout_at`
/// (`fut` is polled first, so an answer that is ready wins), with the deadline kept in
/// [`DEADLINES`] instead of a tokio timer of its own.
fn within<F: Future>(
    deadline: Instant,
    mut fut: Pin<&mut F>,
) -> impl Future<Output = Option<F::Output>> {
    let mut watched: Option<Watched> = None;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        match &watched {
            None => watched = Some(Watched::new(deadline, cx.waker())),
            Some(w) if w.expired(cx.waker()) => return Poll::Ready(None),
            Some(_) => {}
        }
        Poll::Pending
    })
}

/// The deadlines of this worker's requests, watched by one timer task ([`watch`]). A tokio
/// timer per request (`Timeout`) cost about 800 instructions: registering it in the timer
/// wheel, polling it, taking it out again. The requests of a worker nearly all end long before
/// their deadlines, so one timer set to the earliest of them fires about once per timeout
/// period, and a request only takes and frees a slot here.
#[derive(Default)]
struct Deadlines {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// When the watcher's timer is set to fire; no waiting deadline is earlier (or the watcher
    /// has been woken to set it again). `None`: it waits for a deadline without a timer.
    armed: Option<Instant>,
    /// The watcher task, once it has run.
    watcher: Option<Waker>,
    /// A watcher task has been spawned on this thread and is still there.
    running: bool,
}

struct Slot {
    deadline: Instant,
    /// The request's task; `None`: the slot is free.
    waker: Option<Waker>,
    expired: bool,
}

thread_local! {
    static DEADLINES: RefCell<Deadlines> = RefCell::new(Deadlines::default());
}

/// A request's slot in [`DEADLINES`], free again when dropped.
struct Watched(usize);

impl Watched {
    fn new(deadline: Instant, waker: &Waker) -> Self {
        let (index, wake) = DEADLINES.with(|d| {
            let mut d = d.borrow_mut();
            let slot = Slot {
                deadline,
                waker: Some(waker.clone()),
                expired: false,
            };
            let index = match d.free.pop() {
                Some(i) => {
                    d.slots[i] = slot;
                    i
                }
                None => {
                    d.slots.push(slot);
                    d.slots.len() - 1
                }
            };
            let mut wake = None;
            if !d.running {
                d.running = true;
                d.armed = None;
                actix_rt::spawn(watch());
            } else if d.armed.is_none_or(|at| deadline < at) {
                // Earlier than the watcher's timer: it sets it again when it runs.
                d.armed = Some(deadline);
                wake = d.watcher.clone();
            }
            (index, wake)
        });
        if let Some(w) = wake {
            w.wake();
        }
        Watched(index)
    }

    /// Whether the watcher found the deadline passed; else keeps `waker` to be woken then.
    fn expired(&self, waker: &Waker) -> bool {
        let old = DEADLINES.with(|d| {
            let mut d = d.borrow_mut();
            let slot = &mut d.slots[self.0];
            if slot.expired {
                return Err(());
            }
            Ok(match &slot.waker {
                Some(w) if w.will_wake(waker) => None,
                _ => slot.waker.replace(waker.clone()),
            })
        });
        // A waker is dropped outside the borrow: it may be the last handle on a task.
        old.is_err()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let waker = DEADLINES.try_with(|d| {
            let mut d = d.borrow_mut();
            let waker = d.slots[self.0].waker.take();
            d.free.push(self.0);
            waker
        });
        drop(waker);
    }
}

/// The worker's deadline watcher: wakes the requests whose deadlines have passed, and sleeps
/// until the earliest one left (or, without one, until a request wakes it).
async fn watch() {
    /// A new watcher is spawned if this one goes (its runtime shut down).
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = DEADLINES.try_with(|d| {
                let mut d = d.borrow_mut();
                d.running = false;
                d.armed = None;
                d.watcher.take()
            });
        }
    }
    let _running = Running;
    let mut timer = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
    // The deadline the timer fired for: what it counts as passed, as a tokio timer would,
    // even if the clock reads a little earlier.
    let mut reached: Option<Instant> = None;
    std::future::poll_fn(|cx| {
        loop {
            let now = match reached.take() {
                Some(at) => Instant::now().max(at),
                None => Instant::now(),
            };
            let (due, next, old) = DEADLINES.with(|d| {
                let d = &mut *d.borrow_mut();
                let mut due = Vec::new();
                let mut next: Option<Instant> = None;
                for slot in &mut d.slots {
                    let Some(w) = &slot.waker else { continue };
                    if slot.expired {
                        continue;
                    }
                    if slot.deadline <= now {
                        slot.expired = true;
                        due.push(w.clone());
                    } else if next.is_none_or(|n| slot.deadline < n) {
                        next = Some(slot.deadline);
                    }
                }
                d.armed = next;
                let old = match &d.watcher {
                    Some(w) if w.will_wake(cx.waker()) => None,
                    _ => d.watcher.replace(cx.waker().clone()),
                };
                (due, next, old)
            });
            drop(old);
            for w in due {
                w.wake();
            }
            let Some(next) = next else {
                return Poll::Pending;
            };
            timer.as_mut().reset(next);
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => reached = Some(next),
            }
        }
    })
    .await
}

// === connections ===

/// A backend connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connects to the backend for HTTP/1.1: TCP, then TLS on `https` (SNI: `tls.server-name`
/// when set, else the URL's host), both within the profile's connect timeout. Also the
/// WebSocket upgrade's connection ([`super::upgrade`]).
pub async fn connect(url: &BackendUrl, tls: &TlsProfile) -> Result<Stream, UpstreamError> {
    let dial = async {
        let host = url.host();
        let port = url
            .authority
            .parse::<http::uri::Authority>()
            .ok()
            .and_then(|a| a.port_u16())
            .unwrap_or(if url.https { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        // Heads and bodies are written whole; Nagle would only delay them.
        let _ = tcp.set_nodelay(true);
        if !url.https {
            return Ok(Stream::Plain(tcp));
        }
        let name = match &tls.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_owned())
                .map_err(|e| UpstreamError::Connect(format!("'{host}': {e}")))?,
        };
        let stream = tokio_rustls::TlsConnector::from(http1_config(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| UpstreamError::Connect(format!("TLS: {e}")))?;
        Ok(Stream::Tls(Box::new(stream)))
    };
    match tokio::time::timeout(tls.connect_timeout, dial).await {
        Ok(done) => done,
        Err(_) => Err(UpstreamError::ConnectTimeout),
    }
}

thread_local! {
    /// Per TLS profile, its client configuration offering HTTP/1.1 alone by ALPN.
    static HTTP1_CONFIGS: RefCell<HashMap<u64, Arc<ClientConfig>>> =
        RefCell::new(HashMap::new());
}

/// The backend's TLS configuration, offering no protocol but HTTP/1.1: what is sent here is
/// HTTP/1.1, so a backend must not pick h2 by ALPN.
fn http1_config(tls: &TlsProfile) -> Arc<ClientConfig> {
    let alpn = &tls.config.alpn_protocols;
    if alpn.is_empty() || alpn.iter().all(|p| p.as_slice() == b"http/1.1") {
        return tls.config.clone();
    }
    HTTP1_CONFIGS.with(|configs| {
        configs
            .borrow_mut()
            .entry(tls.id)
            .or_insert_with(|| {
                let mut config = (*tls.config).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(config)
            })
            .clone()
    })
}

/// A pooled connection: the socket and its buffers, kept across requests.
struct Conn {
    io: Stream,
    read: BytesMut,
    write: BytesMut,
    _open: Opened,
}

impl Conn {
    /// Whether the backend has not closed (or written to) this idle connection: a read must
    /// find nothing yet. Costs no system call unless the socket was reported readable.
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }
}

// === the pool ===

/// One backend's connections on this worker.
struct Host {
    /// Oldest first; taken from the back.
    idle: RefCell<Vec<Idle>>,
    counts: Rc<Counts>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Open connections of a [`Host`] (kept apart from it, so a connection does not hold its own
/// pool).
#[derive(Default)]
struct Counts {
    open: Cell<usize>,
    waiting: Cell<usize>,
    freed: tokio::sync::Notify,
}

/// A connection's place in its host's count, given back when the connection closes.
struct Opened(Rc<Counts>);

impl Opened {
    fn new(counts: &Rc<Counts>) -> Self {
        counts.open.set(counts.open.get() + 1);
        Self(counts.clone())
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        if self.0.waiting.get() > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// Per worker: (TLS profile, https) → authority → the backend's connections. Looked up on every
/// request, with foldhash (SipHash cost about 400 instructions for the two lookups).
#[derive(Default)]
struct Pool {
    hosts: HashMap<(u64, bool), ByAuthority, Fast>,
    /// The host of the last lookup: a worker mostly sends to one backend after another of the
    /// same, and comparing the key costs a third of the two lookups. Hosts are never taken
    /// out of `hosts`, so this is what the lookup would find.
    last: Option<(u64, bool, Rc<str>, Rc<Host>)>,
}
type ByAuthority = HashMap<Rc<str>, Rc<Host>, Fast>;
type Fast = foldhash::fast::RandomState;

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

fn host_for(tls: &TlsProfile, url: &BackendUrl) -> Rc<Host> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if let Some((id, https, authority, host)) = &pool.last
            && *id == tls.id
            && *https == url.https
            && **authority == *url.authority
        {
            return host.clone();
        }
        let by_authority = pool.hosts.entry((tls.id, url.https)).or_default();
        let (authority, host) = match by_authority.get_key_value(url.authority.as_str()) {
            Some((authority, host)) => (authority.clone(), host.clone()),
            None => {
                let authority: Rc<str> = Rc::from(url.authority.as_str());
                let host = Rc::new(Host {
                    idle: RefCell::new(Vec::new()),
                    counts: Rc::default(),
                });
                by_authority.insert(authority.clone(), host.clone());
                (authority, host)
            }
        };
        pool.last = Some((tls.id, url.https, authority, host.clone()));
        host
    })
}

/// An idle connection of `host` if one is still good, else a new one (waiting for one to come
/// free at [`POOL_LIMIT`]). `true`: reused. `now`: the request's start, read once for it.
async fn checkout(
    host: &Rc<Host>,
    req: &Request<'_>,
    mut now: Instant,
) -> Result<(Conn, bool), UpstreamError> {
    loop {
        {
            let mut idle = host.idle.borrow_mut();
            while let Some(Idle { mut conn, since }) = idle.pop() {
                if now.saturating_duration_since(since) < POOL_KEEP_ALIVE && conn.still_open() {
                    return Ok((conn, true));
                }
            }
        }
        if host.counts.open.get() < POOL_LIMIT {
            return open(host, req).await.map(|c| (c, false));
        }
        freed(&host.counts).await;
        now = Instant::now();
    }
}

/// A new connection to `host`, once it has fewer than [`POOL_LIMIT`] open.
async fn open(host: &Rc<Host>, req: &Request<'_>) -> Result<Conn, UpstreamError> {
    while host.counts.open.get() >= POOL_LIMIT {
        freed(&host.counts).await;
    }
    let opened = Opened::new(&host.counts);
    let io = connect(req.url, req.tls).await?;
    Ok(Conn {
        io,
        read: BytesMut::with_capacity(READ_CHUNK),
        write: BytesMut::with_capacity(1024),
        _open: opened,
    })
}

/// Until a connection of the host closes or comes back to the pool.
async fn freed(counts: &Counts) {
    counts.waiting.set(counts.waiting.get() + 1);
    let _waiting = Waiting(counts);
    counts.freed.notified().await;
}

/// Counts a request waiting for a connection to come free, until it stops waiting.
struct Waiting<'a>(&'a Counts);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.set(self.0.waiting.get() - 1);
    }
}

/// Puts a connection whose response was read to the end back in its pool, or closes it.
fn release(host: &Host, conn: Conn, keep_alive: bool) {
    if !keep_alive || !conn.read.is_empty() {
        return;
    }
    host.idle.borrow_mut().push(Idle {
        conn,
        since: Instant::now(),
    });
    if host.counts.waiting.get() > 0 {
        host.counts.freed.notify_one();
    }
    if !SWEEPING.get() {
        SWEEPING.set(true);
        actix_rt::spawn(sweep());
    }
}

/// Closes idle connections past [`POOL_KEEP_ALIVE`], on this worker, for as long as it runs.
async fn sweep() {
    loop {
        actix_rt::time::sleep(SWEEP_EVERY).await;
        let hosts: Vec<Rc<Host>> = POOL.with(|pool| {
            pool.borrow()
                .hosts
                .values()
                .flat_map(|by_authority| by_authority.values().cloned())
                .collect()
        });
        for host in hosts {
            let expired: Vec<Idle> = {
                let mut idle = host.idle.borrow_mut();
                let n = idle
                    .iter()
                    .take_while(|i| i.since.elapsed() >= POOL_KEEP_ALIVE)
                    .count();
                idle.drain(..n).collect()
            };
            drop(expired);
        }
    }
}

// === one exchange on one connection ===

/// How a failed exchange may be retried.
enum Failure {
    /// The connection failed before any byte of a response arrived: the backend may never
    /// have seen the request.
    Unanswered(UpstreamError),
    Other(SendError),
}

impl From<Failure> for SendError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Unanswered(e) => SendError::Upstream(e),
            Failure::Other(e) => e,
        }
    }
}

impl From<UpstreamError> for Failure {
    fn from(e: UpstreamError) -> Self {
        Failure::Other(SendError::Upstream(e))
    }
}

/// How the request body is framed.
#[derive(Clone, Copy)]
enum Framing {
    /// No body and no `Content-Length` (methods that have no use for a body).
    Absent,
    Length(u64),
    Chunked,
}

/// A response head, and how its body is framed.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    /// `Content-Length`, kept for a HEAD answer.
    length: Option<u64>,
    decoder: Decoder,
    keep_alive: bool,
    /// Hop-by-hop fields are still in `headers` (`Connection` names some beyond the usual).
    strip: bool,
}

/// Writes the request and its body, then reads the response head (skipping interim 1xx
/// answers).
async fn exchange(
    conn: &mut Conn,
    req: &Request<'_>,
    body: &mut Outgoing,
    counted: &mut u64,
) -> Result<Head, Failure> {
    let framing = match body {
        Outgoing::None if wants_length(req.method) => Framing::Length(0),
        Outgoing::None => Framing::Absent,
        Outgoing::Bytes(b) => Framing::Length(b.len() as u64),
        Outgoing::Stream {
            length: Some(len), ..
        } => Framing::Length(*len),
        Outgoing::Stream { length: None, .. } => Framing::Chunked,
    };
    conn.write.clear();
    write_head(&mut conn.write, req, framing).map_err(Failure::Other)?;
    let mut rest = None;
    if let Outgoing::Bytes(b) = body {
        *counted = b.len() as u64;
        if b.len() <= COALESCE {
            conn.write.extend_from_slice(b);
        } else {
            rest = Some(b.clone());
        }
    }
    let closed = |e: io::Error| Failure::Unanswered(UpstreamError::Closed(e.to_string()));
    conn.io.write_all(&conn.write).await.map_err(closed)?;
    if let Some(b) = rest {
        conn.io.write_all(&b).await.map_err(closed)?;
    }
    if let Outgoing::Stream { payload, max, .. } = body {
        send_stream(conn, payload, *max, framing, counted).await?;
    }
    conn.io.flush().await.map_err(closed)?;
    read_head(conn, req.method).await
}

/// Methods whose requests carry `Content-Length: 0` when they have no body (RFC 9110 §8.6:
/// those that define a meaning for a body).
fn wants_length(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// The client's body, as it arrives: as is with a `Content-Length`, else in chunks.
async fn send_stream(
    conn: &mut Conn,
    payload: &mut Payload,
    max: u64,
    framing: Framing,
    counted: &mut u64,
) -> Result<(), Failure> {
    let closed = |e: io::Error| Failure::Unanswered(UpstreamError::Closed(e.to_string()));
    let chunked = matches!(framing, Framing::Chunked);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Failure::Other(SendError::BodyUnreadable(e)))?;
        *counted += chunk.len() as u64;
        if *counted > max {
            return Err(Failure::Other(SendError::BodyTooLarge));
        }
        if chunk.is_empty() {
            continue;
        }
        if chunked {
            conn.write.clear();
            write_hex(&mut conn.write, chunk.len() as u64);
            conn.write.put_slice(b"\r\n");
            conn.write.put_slice(&chunk);
            conn.write.put_slice(b"\r\n");
            conn.io.write_all(&conn.write).await.map_err(closed)?;
        } else {
            conn.io.write_all(&chunk).await.map_err(closed)?;
        }
    }
    if chunked {
        conn.io.write_all(b"0\r\n\r\n").await.map_err(closed)?;
    }
    Ok(())
}

/// The request line and headers, into `out`. Header values cannot hold CR or LF
/// (`HeaderValue` refuses them), and the target is checked here, so nothing can smuggle a
/// header or a second request.
fn write_head(out: &mut BytesMut, req: &Request<'_>, framing: Framing) -> Result<(), SendError> {
    let url = req.url;
    let valid = |s: &str| s.bytes().all(|b| b > b' ' && b < 0x7f && b != b'#');
    if !valid(&url.base_path)
        || !valid(req.path)
        || !req.query.iter().all(|(k, v)| valid(k) && valid(v))
    {
        return Err(SendError::InvalidTarget);
    }
    out.reserve(256 + url.authority.len() + url.base_path.len() + req.path.len());
    out.put_slice(req.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(url.base_path.as_bytes());
    if req.path.is_empty() && url.base_path.is_empty() {
        out.put_u8(b'/');
    } else {
        out.put_slice(req.path.as_bytes());
    }
    for (i, (k, v)) in req.query.iter().enumerate() {
        out.put_u8(if i == 0 { b'?' } else { b'&' });
        out.put_slice(k.as_bytes());
        if !v.is_empty() {
            out.put_u8(b'=');
            out.put_slice(v.as_bytes());
        }
    }
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    out.put_slice(url.authority.as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in req.headers {
        if name == header::HOST || name == header::EXPECT {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    match framing {
        Framing::Absent => {}
        Framing::Length(len) => {
            out.put_slice(b"content-length: ");
            write_decimal(out, len);
            out.put_slice(b"\r\n");
        }
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
    Ok(())
}

fn write_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

fn write_hex(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// Reads until a final response head is complete.
async fn read_head(conn: &mut Conn, method: &Method) -> Result<Head, Failure> {
    // Any byte of an answer (an interim 1xx included) means the backend saw the request.
    let mut answered = !conn.read.is_empty();
    loop {
        if !conn.read.is_empty() {
            match parse_head(&mut conn.read, method)? {
                Some(head) if head.status.is_informational() => continue,
                Some(head) => return Ok(head),
                None if conn.read.len() > MAX_HEAD => {
                    return Err(UpstreamError::Invalid("response head too large".into()).into());
                }
                None => {}
            }
        }
        conn.read.reserve(READ_CHUNK);
        match conn.io.read_buf(&mut conn.read).await {
            Ok(0) if answered => {
                return Err(UpstreamError::Invalid("incomplete response head".into()).into());
            }
            Ok(0) => return Err(Failure::Unanswered(UpstreamError::Disconnected)),
            Ok(_) => answered = true,
            Err(e) if answered => return Err(UpstreamError::Closed(e.to_string()).into()),
            Err(e) => return Err(Failure::Unanswered(UpstreamError::Closed(e.to_string()))),
        }
    }
}

/// Parses a response head at the start of `buf` and takes it out of the buffer; `None`: not
/// complete yet. The header values share the buffer's memory (no copy).
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, UpstreamError> {
    let invalid = |what: &str| UpstreamError::Invalid(what.to_owned());
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(UpstreamError::Invalid(e.to_string())),
    };
    let code = res.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| invalid("invalid status code"))?;
    let http11 = res.version == Some(1);
    // Where each field is, to slice the head once it is frozen; and what frames the body.
    let base = buf.as_ptr() as usize;
    // Hop-by-hop fields are read here and left out of the map (they go no further), unless
    // `Connection` names others: then it stays, for `strip_hop_by_hop` to remove them all.
    let mut at = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let mut count = 0;
    let mut length: Option<u64> = None;
    let mut encoded = false;
    let mut chunked = false;
    let mut close = !http11;
    let mut listed = false;
    for h in res.headers.iter() {
        let field = classify(h.name.as_bytes());
        let is_connection = field == Field::Connection;
        if is_connection {
            // One pass over the tokens: the options, and whether any names a field beyond the
            // fixed hop-by-hop ones (`close` does not name one of them either).
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if is_name(token, b"close") {
                    close = true;
                    listed = true;
                } else if is_name(token, b"keep-alive") {
                    if !http11 {
                        close = false;
                    }
                } else if !token.is_empty() && classify(token) == Field::EndToEnd {
                    listed = true;
                }
            }
        }
        if field == Field::EndToEnd || (is_connection && listed) {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            at[count] = (
                name as u32,
                (name + h.name.len()) as u32,
                value as u32,
                (value + h.value.len()) as u32,
            );
            count += 1;
        }
        if field == Field::ContentLength {
            let n = parse_length(h.value).ok_or_else(|| invalid("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("conflicting content-length"));
            }
            length = Some(n);
        } else if field == Field::TransferEncoding {
            encoded = true;
            // Chunked must be the last coding; anything else is read until close.
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    let head = buf.split_to(len).freeze();
    if code == 101 {
        // Only the WebSocket path asks to switch protocols, on a connection of its own.
        return Err(invalid(
            "101 Switching Protocols to a request that did not ask",
        ));
    }
    let mut headers = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &at[..count] {
        let raw = &head[ns as usize..ne as usize];
        let name = match common_name(raw) {
            Some(name) => name,
            None => HeaderName::from_bytes(raw).map_err(|_| invalid("invalid header name"))?,
        };
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| invalid("invalid header value"))?;
        headers.append(name, value);
    }
    // RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked; another coding is read
    // until close; else Content-Length; else until close. Both a coding and a length may be
    // a smuggling attempt: the coding wins and the connection is not reused.
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let decoder = if bodiless {
        Decoder::Length(0)
    } else if encoded {
        close |= length.is_some();
        if chunked {
            Decoder::Chunked(Chunk::Size)
        } else {
            close = true;
            Decoder::Eof
        }
    } else if let Some(len) = length {
        Decoder::Length(len)
    } else {
        close = true;
        Decoder::Eof
    };
    Ok(Some(Head {
        status,
        headers,
        length,
        decoder,
        keep_alive: !close,
        strip: listed,
    }))
}

/// What a response field name is to this client.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Field {
    ContentLength,
    TransferEncoding,
    Connection,
    /// Another of [`HOP_BY_HOP`](super::hop_by_hop::HOP_BY_HOP).
    HopByHop,
    EndToEnd,
}

/// Classifies a field name (any case) by its length first: most names are compared with
/// nothing (a unit test keeps this in step with
/// [`HOP_BY_HOP`](super::hop_by_hop::HOP_BY_HOP)).
fn classify(name: &[u8]) -> Field {
    let is = |n: &[u8]| is_name(name, n);
    match name.len() {
        2 if is(b"te") => Field::HopByHop,
        7 if is(b"trailer") || is(b"upgrade") => Field::HopByHop,
        10 if is(b"connection") => Field::Connection,
        10 if is(b"keep-alive") => Field::HopByHop,
        14 if is(b"content-length") => Field::ContentLength,
        16 if is(b"proxy-connection") => Field::HopByHop,
        17 if is(b"transfer-encoding") => Field::TransferEncoding,
        18 if is(b"proxy-authenticate") => Field::HopByHop,
        19 if is(b"proxy-authorization") => Field::HopByHop,
        _ => Field::EndToEnd,
    }
}

/// The names most responses carry, known without `HeaderName::from_bytes` (which lowercases
/// the name into a buffer and then looks it up: about 100 instructions a field).
fn common_name(name: &[u8]) -> Option<HeaderName> {
    let is = |n: &[u8]| is_name(name, n);
    Some(match name.len() {
        4 if is(b"date") => header::DATE,
        4 if is(b"etag") => header::ETAG,
        4 if is(b"vary") => header::VARY,
        6 if is(b"server") => header::SERVER,
        7 if is(b"expires") => header::EXPIRES,
        8 if is(b"location") => header::LOCATION,
        10 if is(b"set-cookie") => header::SET_COOKIE,
        12 if is(b"content-type") => header::CONTENT_TYPE,
        13 if is(b"cache-control") => header::CACHE_CONTROL,
        13 if is(b"last-modified") => header::LAST_MODIFIED,
        13 if is(b"accept-ranges") => header::ACCEPT_RANGES,
        16 if is(b"content-encoding") => header::CONTENT_ENCODING,
        _ => return None,
    })
}

/// Whether `name` is `lower` (lowercase letters and `-`) in any case: a field name, or a token
/// of a field value. A byte ORed with 0x20 is its lowercase letter, and no byte a field holds
/// turns into anything else of `lower` (only CR would turn into `-`, and CR ends a field), so
/// this is `eq_ignore_ascii_case` a word at a time: that one compared byte by byte, about 8
/// instructions a byte, the bulk of reading a head's names.
fn is_name(name: &[u8], lower: &[u8]) -> bool {
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    if n >= 8 {
        const LOWER: u64 = 0x2020_2020_2020_2020;
        let word = |s: &[u8], at: usize| {
            u64::from_le_bytes(s[at..at + 8].try_into().expect("eight bytes"))
        };
        let mut at = 0;
        while at + 8 < n {
            if word(name, at) | LOWER != word(lower, at) {
                return false;
            }
            at += 8;
        }
        // The last eight bytes, overlapping the word before.
        word(name, n - 8) | LOWER == word(lower, n - 8)
    } else if n >= 4 {
        const LOWER: u32 = 0x2020_2020;
        let word =
            |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("four bytes"));
        word(name, 0) | LOWER == word(lower, 0) && word(name, n - 4) | LOWER == word(lower, n - 4)
    } else {
        name.iter().zip(lower).all(|(b, l)| b | 0x20 == *l)
    }
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

// === the response ===

/// The response: its headers, and a body that reads from the connection and gives the
/// connection back to the pool at its end.
fn respond(host: Rc<Host>, mut conn: Conn, head: Head, method: &Method) -> Response {
    let Head {
        status,
        mut headers,
        length,
        decoder,
        keep_alive,
        strip,
    } = head;
    if strip {
        strip_hop_by_hop(&mut headers);
    }
    let body = match decoder {
        Decoder::Length(0) => {
            release(&host, conn, keep_alive);
            match length {
                Some(len) if *method == Method::HEAD => BoxBody::new(Announced(len)),
                _ if status == StatusCode::NO_CONTENT
                    || status == StatusCode::NOT_MODIFIED
                    || *method == Method::HEAD =>
                {
                    BoxBody::new(())
                }
                _ => BoxBody::new(Bytes::new()),
            }
        }
        // The whole body came with the head: answered from memory, the connection free now.
        Decoder::Length(len) if conn.read.len() as u64 >= len => {
            let whole = conn.read.split_to(len as usize).freeze();
            release(&host, conn, keep_alive);
            BoxBody::new(whole)
        }
        decoder => BoxBody::new(Incoming {
            conn: Some(conn),
            host,
            decoder,
            keep_alive,
            length,
        }),
    };
    Response {
        status,
        headers,
        body,
    }
}

/// How the rest of a response body is framed.
enum Decoder {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes.
    Eof,
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Clone, Copy)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields (dropped) until an empty line.
    Trailers,
}

impl Decoder {
    /// The next piece of body in `buf`: `Ok(Some)` data, `Ok(None)` more bytes needed or (when
    /// `Done`) the end.
    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        loop {
            match self {
                Decoder::Done => return Ok(None),
                Decoder::Length(0) => {
                    *self = Decoder::Done;
                    return Ok(None);
                }
                Decoder::Length(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        *self = Decoder::Done;
                    }
                    return Ok(Some(buf.split_to(n as usize).freeze()));
                }
                Decoder::Eof => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(buf.split().freeze()));
                }
                Decoder::Chunked(state) => match *state {
                    Chunk::Size => match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((at, size))) => {
                            let _ = buf.split_to(at);
                            *state = if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_LINE => {
                            return Err(bad("chunk size line too long"));
                        }
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Err(_) => return Err(bad("invalid chunk size")),
                    },
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(None);
                        }
                        let n = left.min(buf.len() as u64);
                        *state = if left == n {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left - n)
                        };
                        return Ok(Some(buf.split_to(n as usize).freeze()));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(None);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(bad("chunk data not followed by CRLF"));
                        }
                        let _ = buf.split_to(2);
                        *state = Chunk::Size;
                    }
                    Chunk::Trailers => match buf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            let _ = buf.split_to(2);
                            *self = Decoder::Done;
                            return Ok(None);
                        }
                        Some(end) => {
                            let _ = buf.split_to(end + 2);
                        }
                        None if buf.len() > MAX_LINE => {
                            return Err(bad("trailer field too long"));
                        }
                        None => return Ok(None),
                    },
                },
            }
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("backend response body: {what}"),
    )
}

/// A response body still on its connection.
struct Incoming {
    /// `None` once the body has ended.
    conn: Option<Conn>,
    host: Rc<Host>,
    decoder: Decoder,
    keep_alive: bool,
    length: Option<u64>,
}

impl Incoming {
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            let reusable = self.keep_alive && !matches!(self.decoder, Decoder::Eof);
            release(&self.host, conn, reusable);
        }
    }
}

impl MessageBody for Incoming {
    type Error = io::Error;

    fn size(&self) -> BodySize {
        match (&self.decoder, self.length) {
            (Decoder::Length(_), Some(len)) => BodySize::Sized(len),
            _ => BodySize::Stream,
        }
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.read) {
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(chunk) => {
                    if matches!(this.decoder, Decoder::Done) {
                        this.finish();
                    }
                    match chunk {
                        Some(chunk) => return Poll::Ready(Some(Ok(chunk))),
                        None if this.conn.is_none() => return Poll::Ready(None),
                        None => {}
                    }
                }
            }
            let conn = this.conn.as_mut().expect("checked above");
            conn.read.reserve(READ_CHUNK);
            match std::task::ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut conn.read
            )) {
                Ok(0) if matches!(this.decoder, Decoder::Eof) => {
                    this.decoder = Decoder::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection before the end of the body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::hop_by_hop::HOP_BY_HOP;
    use super::*;

    fn head(text: &str, method: &Method) -> Result<Option<Head>, UpstreamError> {
        parse_head(&mut BytesMut::from(text), method)
    }

    #[test]
    fn common_names_are_the_names_from_bytes_would_make() {
        for name in [
            "Date",
            "ETag",
            "vary",
            "SERVER",
            "Expires",
            "location",
            "Set-Cookie",
            "Content-Type",
            "cache-control",
            "Last-Modified",
            "Accept-Ranges",
            "Content-Encoding",
        ] {
            assert_eq!(
                common_name(name.as_bytes()),
                Some(HeaderName::from_bytes(name.as_bytes()).unwrap()),
                "{name}"
            );
        }
        for name in [
            "x-date",
            "dates",
            "content-length",
            "connection",
            "x-served-by",
        ] {
            assert_eq!(common_name(name.as_bytes()), None, "{name}");
        }
    }

    #[test]
    fn response_heads_decide_framing_and_reuse() {
        let framing = |text: &str, method: &Method| {
            let h = head(text, method).unwrap().unwrap();
            let decoder = match h.decoder {
                Decoder::Length(n) => format!("length {n}"),
                Decoder::Chunked(_) => "chunked".to_owned(),
                Decoder::Eof => "eof".to_owned(),
                Decoder::Done => "done".to_owned(),
            };
            (decoder, h.keep_alive)
        };
        let get = &Method::GET;
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                get,
                "length 5",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
                get,
                "length 5",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                get,
                "chunked",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n",
                get,
                "chunked",
                true,
            ),
            // Both: the coding wins, and the connection is not trusted again.
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                get,
                "chunked",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                get,
                "eof",
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", get, "eof", false),
            (
                "HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 0\r\n\r\n",
                get,
                "length 0",
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                get,
                "length 1",
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                get,
                "length 1",
                true,
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: Close , Keep-Alive\r\ncontent-length: 1\r\n\r\n",
                get,
                "length 1",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: X-Close,KEEP-ALIVE\r\ncontent-length: 1\r\n\r\n",
                get,
                "length 1",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: x-a, CLOSE\r\ncontent-length: 1\r\n\r\n",
                get,
                "length 1",
                false,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", get, "length 0", true),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
                get,
                "length 0",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
                &Method::HEAD,
                "length 0",
                true,
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", get, "length 0", true),
        ];
        for (text, method, decoder, keep_alive) in cases {
            assert_eq!(
                framing(text, method),
                (decoder.to_owned(), keep_alive),
                "{text:?}"
            );
        }
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "SPDY/9 what\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad, get), Err(UpstreamError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-le", get)
                .unwrap()
                .is_none()
        );
    }

    #[actix_rt::test]
    async fn deadlines_end_waiting_requests_and_only_those() {
        let now = Instant::now();
        // An answer that is ready wins, even past its deadline.
        let ready = std::pin::pin!(async { 7 });
        assert_eq!(within(now, ready).await, Some(7));
        // A later deadline first, then an earlier one: the watcher sets its timer again.
        let long = std::pin::pin!(std::future::pending::<()>());
        let mut long = within(now + Duration::from_secs(3600), long);
        assert!(futures_util::poll!(&mut long).is_pending());
        let short = std::pin::pin!(std::future::pending::<()>());
        assert_eq!(within(now + Duration::from_millis(20), short).await, None);
        let answered = std::pin::pin!(actix_rt::time::sleep(Duration::from_millis(10)));
        assert_eq!(
            within(Instant::now() + Duration::from_secs(3600), answered).await,
            Some(())
        );
        assert!(futures_util::poll!(&mut long).is_pending());
        drop(long);
        // Every slot is free again.
        DEADLINES.with(|d| {
            let d = d.borrow();
            assert!(d.slots.iter().all(|s| s.waker.is_none()));
            assert_eq!(d.free.len(), d.slots.len());
        });
    }

    #[test]
    fn names_compare_as_eq_ignore_ascii_case_would() {
        let names: [&[u8]; 10] = [
            b"te",
            b"date",
            b"close",
            b"server",
            b"keep-alive",
            b"content-type",
            b"last-modified",
            b"content-length",
            b"transfer-encoding",
            b"proxy-authorization",
        ];
        for lower in names {
            let upper = lower.to_ascii_uppercase();
            assert!(is_name(lower, lower) && is_name(&upper, lower));
            assert!(!is_name(&lower[1..], lower) && !is_name(b"", lower));
            // Every byte a field can hold, at every place (CR cannot be in one).
            for at in 0..lower.len() {
                for b in (0..=255u8).filter(|b| *b != b'\r') {
                    let mut name = lower.to_vec();
                    name[at] = b;
                    assert_eq!(
                        is_name(&name, lower),
                        name.eq_ignore_ascii_case(lower),
                        "{:?}",
                        String::from_utf8_lossy(&name)
                    );
                }
            }
        }
    }

    #[test]
    fn field_names_are_classified_as_the_hop_by_hop_list_says() {
        for hop in &HOP_BY_HOP {
            let upper = hop.as_str().to_ascii_uppercase();
            assert_ne!(classify(upper.as_bytes()), Field::EndToEnd, "{hop}");
        }
        for name in [
            "server",
            "date",
            "content-type",
            "x-connection",
            "tE2",
            "upgrades",
        ] {
            assert_eq!(classify(name.as_bytes()), Field::EndToEnd, "{name}");
        }
        assert_eq!(classify(b"Content-Length"), Field::ContentLength);
        assert_eq!(classify(b"Transfer-Encoding"), Field::TransferEncoding);
        assert_eq!(classify(b"CONNECTION"), Field::Connection);
    }

    #[test]
    fn the_head_leaves_the_buffer_and_its_values_share_it() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 4\r\n\r\nbody",
        );
        let start = buf.as_ptr() as usize;
        let h = parse_head(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(&buf[..], b"body");
        let at = h.headers.get("x-a").unwrap().as_bytes().as_ptr() as usize;
        assert!((start..start + 64).contains(&at), "copied, not shared");
        assert_eq!(h.status, StatusCode::CREATED);
        let values: Vec<_> = h
            .headers
            .get_all("x-a")
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(h.length, Some(4));
        assert!(h.headers.get("content-length").is_none() && !h.strip);

        // Hop-by-hop fields stay out of the map; a `Connection` naming others stays in it, to
        // be stripped with them.
        let text = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n";
        let h = head(text, &Method::GET).unwrap().unwrap();
        let names: Vec<_> = h.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!((names, h.strip), (vec!["x-kept"], false));
        // Only names beyond the fixed ones (and `close`, which is none of them) are stripped.
        for (connection, strip) in [
            ("Keep-Alive, TE ,upgrade", false),
            ("", false),
            ("CLOSE", true),
            ("keep-alive, x-a", true),
        ] {
            let text = format!("HTTP/1.1 200 OK\r\nConnection: {connection}\r\n\r\n");
            assert_eq!(head(&text, &Method::GET).unwrap().unwrap().strip, strip);
        }
        let text = "HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: s\r\nX-Kept: 1\r\ncontent-length: 0\r\n\r\n";
        let mut h = head(text, &Method::GET).unwrap().unwrap();
        assert!(h.strip && !h.keep_alive);
        strip_hop_by_hop(&mut h.headers);
        let names: Vec<_> = h.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n";
        for split in 1..wire.len() {
            let mut decoder = Decoder::Chunked(Chunk::Size);
            let mut buf = BytesMut::new();
            let mut body = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                buf.extend_from_slice(part);
                while let Some(chunk) = decoder.decode(&mut buf).unwrap() {
                    body.extend_from_slice(&chunk);
                }
            }
            assert_eq!(body, b"hello world", "split at {split}");
            assert!(matches!(decoder, Decoder::Done), "split at {split}");
            assert!(buf.is_empty());
        }
        let mut decoder = Decoder::Chunked(Chunk::Size);
        let mut buf = BytesMut::from("3\r\nabcX\r\n");
        assert_eq!(&decoder.decode(&mut buf).unwrap().unwrap()[..], b"abc");
        assert!(decoder.decode(&mut buf).is_err());
        let mut buf = BytesMut::from("zz\r\n");
        assert!(Decoder::Chunked(Chunk::Size).decode(&mut buf).is_err());
    }

    #[test]
    fn request_heads_are_written_whole_and_checked() {
        let url = BackendUrl::parse("http://backend:8080/base").unwrap();
        let tls = Arc::new(
            outpost_actors::route_table::tls::TlsSettings {
                verify: true,
                ca_pem: None,
                server_name: None,
                connect_timeout: Duration::from_secs(1),
                client_identity: None,
            }
            .build()
            .unwrap(),
        );
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("client.example"));
        headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let query = [
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), String::new()),
        ];
        let req = Request {
            method: &Method::POST,
            url: &url,
            path: "/items",
            query: &query,
            headers: &headers,
            tls: &tls,
            timeout: Duration::from_secs(1),
            backend: "b",
        };
        let mut out = BytesMut::new();
        write_head(&mut out, &req, Framing::Length(1234)).unwrap();
        assert_eq!(
            &out[..],
            b"POST /base/items?a=1&b HTTP/1.1\r\nhost: backend:8080\r\naccept: */*\r\ncontent-length: 1234\r\n\r\n"
        );
        out.clear();
        write_head(
            &mut out,
            &Request {
                path: "",
                query: &[],
                ..req
            },
            Framing::Chunked,
        )
        .unwrap();
        assert!(out.starts_with(b"POST /base HTTP/1.1\r\n"));
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
        for path in ["/a b", "/a\r\nx: y", "/caf\u{e9}", "/a#b"] {
            let bad = Request { path, ..req };
            assert!(matches!(
                write_head(&mut out, &bad, Framing::Absent),
                Err(SendError::InvalidTarget)
            ));
        }
        out.clear();
        write_hex(&mut out, 0x1f40);
        out.put_u8(b' ');
        write_decimal(&mut out, 0);
        out.put_u8(b' ');
        write_decimal(&mut out, u64::MAX);
        assert_eq!(&out[..], b"1f40 0 18446744073709551615");
    }
}
