//! HTTP/2 to backends, with the `h2` crate: what gRPC backends need (trailers both ways, h2c),
//! beside the HTTP/1.1 client ([`super::upstream_h1`]).
//!
//! - Which HTTP a backend gets ([`route`]): `protocol: http1` and plain `http://` with `auto`
//!   go to HTTP/1.1 without looking here. `h2` speaks HTTP/2: by ALPN on `https://`, with prior
//!   knowledge (h2c) on `http://`. `auto` on `https://` offers both by ALPN and follows the
//!   backend's choice; a backend that chose HTTP/1.1 is sent HTTP/1.1 ([`super::upstream_h1`]) for the next
//!   [`ALPN_MEMORY`] without asking again.
//! - One connection per worker per backend (scheme, authority, TLS profile), multiplexing every
//!   request to it; made once by the first request that needs it (the others wait for that
//!   connection rather than each dialing), made again when it has gone away (the backend
//!   closed it, sent GOAWAY, or it sat idle for [`IDLE_CLOSE`]).
//! - Bodies stream both ways under HTTP/2 flow control: the client's body is sent as the
//!   backend grants window, the backend's is released to it as the client takes it. The
//!   client's request trailers follow its body; the backend's response trailers go to the
//!   client's stream ([`super::trailers`]).
//! - Failures map to statuses in [`GatewayError::from_upstream`]: timeouts 504, the rest 502.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode, Uri, Version};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{FutureExt, LocalBoxFuture, Shared};
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use outpost_actors::route_table::table::BackendUrl;
use outpost_actors::route_table::tls::TlsProfile;
use outpost_model::resources::BackendProtocol;
use rustls::pki_types::ServerName;

use super::error::{GatewayError, UpstreamError};
use super::exchange::{Exchange, RequestBody, Response, Runtime, Target};
use super::hop_by_hop::strip_hop_by_hop;
use super::trailers::Trailers;

/// How long an `auto` backend that chose HTTP/1.1 by ALPN is not asked again.
pub const ALPN_MEMORY: Duration = Duration::from_secs(300);
/// A pooled connection with no request for this long is closed (below common backend idle
/// timeouts, as the HTTP/1.1 pool's keep-alive).
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// Receive windows: a stream may have this much of a backend's body in flight before the client
/// takes it; the connection, this much over all its streams.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;
/// A backend's response header block is refused above this (HPACK-decoded size).
const MAX_RESPONSE_HEADERS: u32 = 256 << 10;

impl UpstreamError {
    fn of(e: &h2::Error) -> Self {
        if let Some(io) = e.get_io() {
            UpstreamError::Closed(io.to_string())
        } else if e.is_go_away() {
            UpstreamError::Closed(format!("GOAWAY {:?}", e.reason()))
        } else if e.is_reset() && e.is_remote() {
            UpstreamError::Reset(e.reason().unwrap_or(Reason::INTERNAL_ERROR))
        } else {
            UpstreamError::Protocol(e.to_string())
        }
    }
}

// === which HTTP, and the pool ===

/// How a request goes to its backend.
pub enum Route {
    Http1,
    H2(Conn),
}

/// Whether the target may be sent HTTP/2 (decided without looking anything up): `false` is
/// HTTP/1.1 for sure.
pub fn may_use(target: &Target) -> bool {
    match target.protocol {
        BackendProtocol::Http1 => false,
        BackendProtocol::H2 => true,
        BackendProtocol::Auto => target.url.https,
    }
}

/// One pooled HTTP/2 connection.
#[derive(Clone)]
pub struct Conn {
    send: SendRequest<Bytes>,
    state: Rc<ConnState>,
}

struct ConnState {
    /// The connection's task still runs.
    alive: Cell<bool>,
    /// Requests holding the connection (from [`route`] until their response body is done).
    in_flight: Cell<usize>,
    last_used: Cell<Instant>,
}

/// A request's hold on its connection; the idle close waits for none to be left.
struct InFlight(Rc<ConnState>);

impl InFlight {
    fn new(state: &Rc<ConnState>) -> Self {
        state.in_flight.set(state.in_flight.get() + 1);
        state.last_used.set(Instant::now());
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
        self.0.last_used.set(Instant::now());
    }
}

type Connecting = Shared<LocalBoxFuture<'static, Result<Option<Conn>, UpstreamError>>>;

enum Slot {
    Empty,
    Connecting(Connecting),
    Ready(Conn),
    /// `auto` over TLS: the backend chose HTTP/1.1 at this time.
    Http1(Instant),
}

/// Per worker: (TLS profile, https) → authority → the backend's connection.
type Pool = HashMap<(u64, bool), HashMap<String, Rc<RefCell<Slot>>>>;

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(HashMap::new());
}

fn slot_for(target: &Target) -> Rc<RefCell<Slot>> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let by_authority = pool.entry((target.tls.id, target.url.https)).or_default();
        if let Some(slot) = by_authority.get(target.url.authority.as_str()) {
            return slot.clone();
        }
        let slot = Rc::new(RefCell::new(Slot::Empty));
        by_authority.insert(target.url.authority.clone(), slot.clone());
        slot
    })
}

/// Which HTTP the target gets now; for HTTP/2, its connection (made or joined here).
pub async fn route(target: &Target) -> Result<Route, UpstreamError> {
    if !may_use(target) {
        return Ok(Route::Http1);
    }
    let slot = slot_for(target);
    let connecting = {
        let mut s = slot.borrow_mut();
        match &*s {
            Slot::Ready(c) if c.state.alive.get() => return Ok(Route::H2(c.clone())),
            Slot::Http1(since) if since.elapsed() < ALPN_MEMORY => return Ok(Route::Http1),
            Slot::Connecting(f) => f.clone(),
            _ => {
                let f = connect(
                    target.url.clone(),
                    target.tls.clone(),
                    target.protocol == BackendProtocol::H2,
                )
                .boxed_local()
                .shared();
                *s = Slot::Connecting(f.clone());
                f
            }
        }
    };
    let result = connecting.clone().await;
    {
        // The first waiter to see the connection made settles the slot; a slot that moved on
        // (a newer connection) is left alone.
        let mut s = slot.borrow_mut();
        if matches!(&*s, Slot::Connecting(f) if f.ptr_eq(&connecting)) {
            *s = match &result {
                Ok(Some(c)) => Slot::Ready(c.clone()),
                Ok(None) => Slot::Http1(Instant::now()),
                Err(_) => Slot::Empty,
            };
        }
    }
    Ok(match result? {
        Some(c) => Route::H2(c),
        None => Route::Http1,
    })
}

/// Forgets a connection that failed before a request could use it, so the next one reconnects.
fn forget(target: &Target, conn: &Conn) {
    conn.state.alive.set(false);
    let slot = slot_for(target);
    let mut s = slot.borrow_mut();
    if matches!(&*s, Slot::Ready(c) if Rc::ptr_eq(&c.state, &conn.state)) {
        *s = Slot::Empty;
    }
}

/// Connects: TCP, TLS with ALPN on `https`, the HTTP/2 handshake. `Ok(None)`: the backend chose
/// HTTP/1.1 by ALPN (only asked when `h2_only` is false).
async fn connect(
    url: BackendUrl,
    tls: Arc<TlsProfile>,
    h2_only: bool,
) -> Result<Option<Conn>, UpstreamError> {
    let within = tls.connect_timeout;
    let dial = async move {
        let host = url.host().to_owned();
        let port = url
            .authority
            .parse::<http::uri::Authority>()
            .ok()
            .and_then(|a| a.port_u16())
            .unwrap_or(if url.https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if !url.https {
            return handshake(tcp).await.map(Some);
        }
        let mut config = (*tls.config).clone();
        config.alpn_protocols = if h2_only {
            vec![b"h2".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        let name = match &tls.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.clone())
                .map_err(|e| UpstreamError::Connect(format!("'{host}': {e}")))?,
        };
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| UpstreamError::Connect(format!("TLS: {e}")))?;
        let chose_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        if !chose_h2 && !h2_only {
            return Ok(None);
        }
        handshake(stream).await.map(Some)
    };
    match actix_rt::time::timeout(within, dial).await {
        Ok(done) => done,
        Err(_) => Err(UpstreamError::ConnectTimeout),
    }
}

async fn handshake<T>(io: T) -> Result<Conn, UpstreamError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_RESPONSE_HEADERS)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| UpstreamError::Connect(format!("HTTP/2 handshake: {e}")))?;
    let state = Rc::new(ConnState {
        alive: Cell::new(true),
        in_flight: Cell::new(0),
        last_used: Cell::new(Instant::now()),
    });
    let watched = state.clone();
    actix_rt::spawn(async move {
        let mut connection = std::pin::pin!(connection);
        loop {
            let idle_at = watched.last_used.get() + IDLE_CLOSE;
            tokio::select! {
                _ = &mut connection => break,
                () = actix_rt::time::sleep_until(idle_at.into()) => {
                    // Closed only when unused (dropping the connection ends it); a request
                    // that holds it keeps it open.
                    if watched.in_flight.get() == 0 && watched.last_used.get() + IDLE_CLOSE <= Instant::now() {
                        break;
                    }
                }
            }
        }
        watched.alive.set(false);
    });
    Ok(Conn { send, state })
}

// === one request ===

/// Forwards the exchange's request over `conn` and returns the backend's (streaming) response.
pub async fn send(ex: &mut Exchange, rt: &Runtime, conn: Conn) -> Result<Response, GatewayError> {
    let url = ex.target.url.join(&ex.backend_path, &ex.query_string());
    let uri: Uri = url.parse().map_err(|_| {
        GatewayError::internal(
            "InvalidBackendUrl",
            format!("The backend URL '{url}' is not valid."),
        )
    })?;
    strip_hop_by_hop(&mut ex.request_headers);
    let head = request_head(&ex.method, &uri, &ex.request_headers);
    let timeout = ex.timeout();
    let backend = ex.target.name.clone();
    let trailers = ex.trailers.clone();
    let body = std::mem::replace(&mut ex.body, RequestBody::Taken);

    let Some(retry) = ex.retry.clone() else {
        let counted = Rc::new(Counted::default());
        let length = match &body {
            RequestBody::Stream { length, .. } => *length,
            _ => None,
        };
        let source = match body {
            RequestBody::Stream { payload, .. } => Source::Stream(Box::new(payload)),
            RequestBody::Buffered(bytes) => Source::Bytes(bytes),
            RequestBody::None | RequestBody::Taken => Source::None,
        };
        let started = Instant::now();
        let mut sent = exchange(&conn, &head, source, timeout, &trailers, rt, &counted).await;
        // A connection that failed before taking the request (it had gone away since its last
        // use): once more on a fresh one, which the backend never saw this request on.
        if let Err(Attempt::Unsent(_, source)) = sent {
            forget(&ex.target, &conn);
            sent = match route(&ex.target).await {
                Ok(Route::H2(fresh)) => {
                    exchange(&fresh, &head, source, timeout, &trailers, rt, &counted).await
                }
                Ok(Route::Http1) => Err(Attempt::Failed(UpstreamError::Protocol(
                    "the backend no longer offers HTTP/2".to_owned(),
                ))),
                // Not sent either: the body is still whole.
                Err(e) => Err(Attempt::Unsent(e, source)),
            };
        }
        ex.backend_duration = Some(started.elapsed());
        ex.request_bytes = counted.bytes.get();
        return match sent {
            Ok((res, hold)) => Ok(response(res, &ex.method, trailers, hold)),
            Err(_) if counted.overflow.get() => {
                Err(GatewayError::body_too_large(rt.max_body_bytes))
            }
            Err(_) if counted.unreadable.borrow().is_some() => {
                let e = counted.unreadable.borrow_mut().take().unwrap_or_default();
                Err(GatewayError::bad_body(&e))
            }
            Err(Attempt::Unsent(e, source)) => {
                // A pool may send a streamed body the backend never got to another member
                // (`balance`).
                if let Source::Stream(payload) = source {
                    ex.body = RequestBody::Stream {
                        payload: *payload,
                        length,
                    };
                }
                Err(GatewayError::from_upstream(&e, &backend))
            }
            Err(Attempt::Failed(e)) => Err(GatewayError::from_upstream(&e, &backend)),
        };
    };

    // A retry may send the body again: hold it, within the body limit.
    let bytes = body.read_whole(rt.max_body_bytes).await?;
    ex.request_bytes = bytes.as_ref().map_or(0, |b| b.len() as u64);
    let mut spent = Duration::ZERO;
    let mut attempt = 0;
    let mut conn = conn;
    loop {
        let counted = Rc::new(Counted::default());
        let source = bytes.clone().map_or(Source::None, Source::Bytes);
        let started = Instant::now();
        let sent = exchange(&conn, &head, source, timeout, &trailers, rt, &counted).await;
        spent += started.elapsed();
        ex.backend_duration = Some(spent);
        let sent = sent.map_err(|e| match e {
            Attempt::Unsent(e, _) => {
                forget(&ex.target, &conn);
                e
            }
            Attempt::Failed(e) => e,
        });
        let again = attempt < retry.count
            && match &sent {
                Ok((res, _)) => retry.condition.contains(res.status().as_u16()),
                Err(_) => retry.on_connection_error,
            };
        if !again {
            return match sent {
                Ok((res, hold)) => Ok(response(res, &ex.method, trailers, hold)),
                Err(e) => Err(GatewayError::from_upstream(&e, &backend)),
            };
        }
        drop(sent);
        attempt += 1;
        ex.retries = attempt;
        metrics::counter!("outpost_backend_retries_total", "backend" => backend.clone())
            .increment(1);
        if !retry.interval.is_zero() {
            actix_rt::time::sleep(retry.interval).await;
        }
        conn = match route(&ex.target).await {
            Ok(Route::H2(c)) => c,
            Ok(Route::Http1) => {
                return Err(GatewayError::from_upstream(
                    &UpstreamError::Protocol("the backend no longer offers HTTP/2".to_owned()),
                    &backend,
                ));
            }
            Err(e) => return Err(GatewayError::from_upstream(&e, &backend)),
        };
    }
}

/// The request head for HTTP/2: the URI carries scheme and authority (`:authority` replaces
/// `Host`); connection-specific headers are gone already.
fn request_head(method: &Method, uri: &Uri, headers: &HeaderMap) -> http::Request<()> {
    let mut req = http::Request::new(());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.version_mut() = Version::HTTP_2;
    let out = req.headers_mut();
    out.reserve(headers.len() + 1);
    for (name, value) in headers {
        if name != header::HOST && name != header::EXPECT {
            out.append(name.clone(), value.clone());
        }
    }
    // The only `TE` HTTP/2 allows; it tells the backend (gRPC servers look for it) that
    // trailers will reach the client.
    out.insert(header::TE, http::HeaderValue::from_static("trailers"));
    req
}

/// The request body as it will be sent.
enum Source {
    None,
    Bytes(Bytes),
    Stream(Box<actix_web::dev::Payload>),
}

/// What the body pump saw of the client's body.
#[derive(Default)]
struct Counted {
    bytes: Cell<u64>,
    overflow: Cell<bool>,
    /// The client's body failed to arrive, and why.
    unreadable: RefCell<Option<String>>,
}

enum Attempt {
    /// Refused before the request left: the connection is gone. The body is handed back.
    Unsent(UpstreamError, Source),
    Failed(UpstreamError),
}

/// The response and what must live as long as its body.
type Answered = (http::Response<RecvStream>, Hold);

/// Kept by the response body: the connection stays counted in use, and the request body's
/// pump stops if the response is dropped first.
struct Hold {
    _in_flight: InFlight,
    pump: Option<actix_rt::task::JoinHandle<()>>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(pump) = self.pump.take() {
            pump.abort();
        }
    }
}

/// One attempt: the request head, its body pumped alongside, the response head within
/// `timeout`.
async fn exchange(
    conn: &Conn,
    head: &http::Request<()>,
    source: Source,
    timeout: Duration,
    trailers: &Option<Trailers>,
    rt: &Runtime,
    counted: &Rc<Counted>,
) -> Result<Answered, Attempt> {
    let in_flight = InFlight::new(&conn.state);
    let deadline = Instant::now() + timeout;
    let ready = conn.send.clone().ready();
    let mut send = match tokio::time::timeout_at(deadline.into(), ready).await {
        Ok(Ok(send)) => send,
        Ok(Err(e)) => return Err(Attempt::Unsent(UpstreamError::of(&e), source)),
        Err(_) => return Err(Attempt::Failed(UpstreamError::Timeout)),
    };
    let mut req = http::Request::new(());
    *req.method_mut() = head.method().clone();
    *req.uri_mut() = head.uri().clone();
    *req.version_mut() = head.version();
    *req.headers_mut() = head.headers().clone();
    let bodiless =
        matches!(source, Source::None) && !trailers.as_ref().is_some_and(Trailers::has_request);
    let (response, stream) = match send.send_request(req, bodiless) {
        Ok(sent) => sent,
        Err(e) => return Err(Attempt::Unsent(UpstreamError::of(&e), source)),
    };
    let pump = (!bodiless).then(|| {
        actix_rt::spawn(pump(
            stream,
            source,
            trailers.clone(),
            rt.max_body_bytes as u64,
            counted.clone(),
        ))
    });
    let hold = Hold {
        _in_flight: in_flight,
        pump,
    };
    match tokio::time::timeout_at(deadline.into(), response).await {
        Ok(Ok(res)) => Ok((res, hold)),
        // The backend did not process the stream (RFC 9113 §8.7: REFUSED_STREAM, e.g. after its
        // GOAWAY): a bodiless request can go again as if never sent.
        Ok(Err(e)) if bodiless && e.reason() == Some(Reason::REFUSED_STREAM) => {
            Err(Attempt::Unsent(UpstreamError::of(&e), Source::None))
        }
        Ok(Err(e)) => Err(Attempt::Failed(UpstreamError::of(&e))),
        Err(_) => Err(Attempt::Failed(UpstreamError::Timeout)),
    }
}

/// Sends the client's body to the backend as the backend's window allows, then its trailers
/// (or the end of the stream). Cut, with the stream reset, at the body limit or when the
/// client's body fails.
async fn pump(
    mut stream: SendStream<Bytes>,
    source: Source,
    trailers: Option<Trailers>,
    max: u64,
    counted: Rc<Counted>,
) {
    let outcome = match source {
        Source::None => Ok(()),
        Source::Bytes(bytes) => {
            counted.bytes.set(bytes.len() as u64);
            send_chunk(&mut stream, bytes).await
        }
        Source::Stream(mut payload) => loop {
            let Some(chunk) = payload.next().await else {
                break Ok(());
            };
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    *counted.unreadable.borrow_mut() = Some(e.to_string());
                    stream.send_reset(Reason::CANCEL);
                    return;
                }
            };
            let seen = counted.bytes.get() + chunk.len() as u64;
            counted.bytes.set(seen);
            if seen > max {
                counted.overflow.set(true);
                stream.send_reset(Reason::CANCEL);
                return;
            }
            if let Err(e) = send_chunk(&mut stream, chunk).await {
                break Err(e);
            }
        },
    };
    if outcome.is_err() {
        // The stream is gone (reset by the backend, or the connection closed): the response
        // side reports it.
        return;
    }
    let end = match trailers.and_then(|t| t.request()) {
        Some(t) => stream.send_trailers(t),
        None => stream.send_data(Bytes::new(), true),
    };
    if let Err(e) = end {
        tracing::debug!(error = %e, "request body end not sent to the backend");
    }
}

/// Sends one chunk, in as many frames as the backend's window allows at a time.
async fn send_chunk(stream: &mut SendStream<Bytes>, mut chunk: Bytes) -> Result<(), h2::Error> {
    while !chunk.is_empty() {
        stream.reserve_capacity(chunk.len());
        let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx)).await;
        match granted {
            None => return Err(h2::Error::from(Reason::STREAM_CLOSED)),
            Some(Err(e)) => return Err(e),
            Some(Ok(0)) => {}
            Some(Ok(n)) => {
                let part = chunk.split_to(n.min(chunk.len()));
                stream.send_data(part, false)?;
            }
        }
    }
    Ok(())
}

/// The backend's response, streaming, with connection-specific headers removed.
fn response(
    res: http::Response<RecvStream>,
    method: &Method,
    trailers: Option<Trailers>,
    hold: Hold,
) -> Response {
    let (parts, recv) = res.into_parts();
    let status = parts.status;
    let mut headers = HeaderMap::from(parts.headers);
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    strip_hop_by_hop(&mut headers);
    let bodiless = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = if bodiless {
        match length {
            Some(len) if *method == Method::HEAD => BoxBody::new(Announced(len)),
            _ => BoxBody::new(()),
        }
    } else {
        BoxBody::new(Body {
            recv,
            length,
            trailers,
            _hold: hold,
        })
    };
    Response {
        status,
        headers,
        body,
    }
}

/// A HEAD answer's length, with no body (also the HTTP/1.1 upstream's).
pub(crate) struct Announced(pub(crate) u64);

impl MessageBody for Announced {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.0)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Poll::Ready(None)
    }
}

/// A backend's response body: released to the backend's window as the client takes it; its
/// trailers are put where the client's stream will find them before its end is reported.
struct Body {
    recv: RecvStream,
    length: Option<u64>,
    trailers: Option<Trailers>,
    _hold: Hold,
}

impl MessageBody for Body {
    type Error = h2::Error;

    fn size(&self) -> BodySize {
        match self.length {
            Some(len) => BodySize::Sized(len),
            None => BodySize::Stream,
        }
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        loop {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = this.recv.flow_control().release_capacity(chunk.len());
                    if chunk.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => break,
            }
        }
        match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(t)) => {
                if let Some(slot) = &this.trailers {
                    slot.set_response(t);
                }
                Poll::Ready(None)
            }
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}
