//! WebSocket through the gateway: an HTTP/1.1 `Upgrade: websocket` on a GET operation is
//! passed to the backend, and once both sides have switched protocols the bytes are piped
//! both ways until either side closes, the connection is idle for `limits.websocket_idle_secs`
//! or the gateway stops.
//!
//! The handshake is an ordinary request until the backend answers: routing, the subscription
//! key and every inbound and backend policy run on it as on any other request, and any of them
//! can refuse it (the client then gets that answer instead of a 101). Only then does it leave the
//! usual path: [`send`] replaces the pooled forward (whose connections go back to the pool)
//! with a connection of its own to the backend (TCP, or TLS with the backend's compiled client
//! configuration and server name: [`super::upstream_h1::connect`]), writes the handshake, and
//! reads the answer. A pool's member is picked as for a request, and a handshake that could
//! not be made goes to another member as a GET without a body would
//! ([`super::balance::handshake`]):
//!
//! - `101` with a valid WebSocket handshake: the client gets the 101 with the backend's headers
//!   (`Sec-WebSocket-Accept`, `-Protocol`, `-Extensions`, …) and a body that never ends by
//!   itself: the backend's bytes (`Tunnel`). The client's bytes arrive as the request's body:
//!   actix-http's HTTP/1 decoder reads whatever follows a WebSocket handshake as an unbounded
//!   body, so a task (`pump`) writes them to the backend as they come.
//! - anything else: an ordinary response (a backend refusing the upgrade, e.g. 403).
//!
//! The gateway does not parse WebSocket frames: messages, pings and close frames pass as they
//! are, and a connection it closes itself (idle, stopping) is closed without a close frame.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_http::h1::ClientCodec;
use actix_http::{HttpMessage as _, Request};
use actix_web::body::{BodySize, BodyStream, BoxBody, MessageBody, SizedStream};
use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode, Uri, Version};
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use outpost_actors::route_table::table::BackendUrl;
use outpost_actors::route_table::tls::TlsProfile;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;
use tokio_util::codec::{Framed, FramedParts};

use super::error::{GatewayError, UpstreamError};
use super::exchange::{ClientUpgrade, Exchange, Response, Runtime};
use super::hop_by_hop::strip_hop_by_hop;
use super::listener::ConnState;
use super::upstream_h1;

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
/// RFC 6455 §1.3: appended to the key before hashing it into `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The one `Upgrade` token ignored rather than refused: RFC 9113 §3.1 deprecated the h2c
/// upgrade, and curl still offers it on `--http2` to plain `http://` (it then goes on with
/// HTTP/1.1, which a server may do with any `Upgrade`, RFC 9110 §7.8).
const H2C: &str = "h2c";
/// Bytes read from the backend at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A client's WebSocket handshake, validated; see [`requested`].
pub struct Handshake {
    key: HeaderValue,
}

/// Whether the request asks to switch protocols, and to what. `Ok(None)`: a plain request (any
/// `Upgrade` header goes no further, with the other hop-by-hop headers). Refused: an `Upgrade`
/// to anything but WebSocket (h2c aside, see `H2C`), and a WebSocket handshake that breaks
/// RFC 6455 §4.1.
///
/// Only HTTP/1.1 upgrades: HTTP/2 forbids the header (the h2 codec refuses a request carrying
/// it) and HTTP/1.0 requests' `Upgrade` must be ignored (RFC 9110 §7.8).
pub fn requested(req: &Request) -> Result<Option<Handshake>, GatewayError> {
    if req.version() != Version::HTTP_11 {
        return Ok(None);
    }
    let headers = req.headers();
    let mut upgrades = headers.get_all(header::UPGRADE);
    let Some(upgrade) = upgrades.next() else {
        return Ok(None);
    };
    let value = upgrade.to_str().unwrap_or("").trim();
    let tokens: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.len() == 1 && tokens[0].eq_ignore_ascii_case(H2C) {
        return Ok(None);
    }
    if upgrades.next().is_some() || tokens.len() != 1 || !value.eq_ignore_ascii_case("websocket") {
        // Several protocols offered: the gateway could only pick WebSocket, and actix-http's
        // decoder reads a body only after a lone `websocket`, so refusing is the one safe answer.
        let offered = headers
            .get_all(header::UPGRADE)
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(GatewayError::upgrade_not_supported(&offered));
    }
    let invalid = GatewayError::websocket_handshake_invalid;
    if req.method() != Method::GET {
        return Err(invalid("the method must be GET"));
    }
    if !connection_has(headers, "upgrade") {
        return Err(invalid("the Connection header must contain 'Upgrade'"));
    }
    // What follows the head is WebSocket frames; a request body there would be read as frames.
    if headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
    {
        return Err(invalid("a handshake has no body"));
    }
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION);
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes().trim_ascii() == b"13" => {}
        (None, _) => return Err(invalid("Sec-WebSocket-Version is missing")),
        _ => return Err(GatewayError::websocket_version_unsupported()),
    }
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY);
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k,
        (None, _) => return Err(invalid("Sec-WebSocket-Key is missing")),
        _ => return Err(invalid("Sec-WebSocket-Key is repeated")),
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes().trim_ascii());
    if decoded.map_or(true, |k| k.len() != 16) {
        return Err(invalid(
            "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 §4.1)",
        ));
    }
    Ok(Some(Handshake { key: key.clone() }))
}

/// The handshake with the client's side of the tunnel: the request's body stream, which
/// carries the client's frames from now on.
pub fn client_side(req: &Request, handshake: Handshake, stream: Payload) -> ClientUpgrade {
    ClientUpgrade {
        key: handshake.key,
        stream,
        shutdown: req
            .conn_data::<actix_server::GracefulShutdownSignal>()
            .cloned(),
        conn: req.conn_data::<ConnState>().cloned(),
    }
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
fn accept_for(key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Makes the handshake with the backend, on a connection of its own. The backend's 101 becomes
/// the client's, with a body that pipes the backend's bytes; any other answer is returned as
/// an ordinary response. Failures map to statuses as a plain forward's do
/// ([`GatewayError::from_upstream`]): 502 unreachable or garbled, 504 too slow. A pool picks
/// the member, and another one when the handshake could not be made
/// ([`super::balance::handshake`]).
pub async fn send(
    ex: &mut Exchange,
    client: ClientUpgrade,
    rt: &Runtime,
) -> Result<Response, GatewayError> {
    // Policies may have added hop-by-hop headers; the upgrade's own are written below.
    strip_hop_by_hop(&mut ex.request_headers);
    let key = &client.key;
    let attempt = async |ex: &mut Exchange| answer(ex, key).await;
    let answer = match ex.target.pool.clone() {
        Some(pool) => super::balance::handshake(ex, &pool, attempt, Answer::status).await?,
        None => attempt(ex).await?,
    };
    let (mut headers, framed) = match answer {
        Answer::Upgraded(headers, framed) => (headers, framed),
        Answer::Other(status, headers, framed) => return Ok(refused(status, headers, framed)),
    };
    strip_hop_by_hop(&mut headers);
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let FramedParts { io, read_buf, .. } = framed.into_parts();
    let body = Tunnel::open(
        &ex.api.name,
        io,
        read_buf.freeze(),
        client,
        rt.websocket_idle,
    );
    Ok(Response {
        status: StatusCode::SWITCHING_PROTOCOLS,
        headers,
        body: BoxBody::new(body),
    })
}

/// The backend's answer to a handshake.
enum Answer {
    /// A valid 101: its headers, and the connection.
    Upgraded(HeaderMap, Framed<BackendIo, ClientCodec>),
    /// Not switching protocols: an ordinary response.
    Other(StatusCode, HeaderMap, Framed<BackendIo, ClientCodec>),
}

impl Answer {
    fn status(&self) -> u16 {
        match self {
            Answer::Upgraded(..) => StatusCode::SWITCHING_PROTOCOLS.as_u16(),
            Answer::Other(status, ..) => status.as_u16(),
        }
    }
}

/// Makes the handshake with the backend at `ex.target.url` and checks a 101 against the
/// client's `key`.
async fn answer(ex: &mut Exchange, key: &HeaderValue) -> Result<Answer, GatewayError> {
    let url = ex.target.url.join(&ex.backend_path, &ex.query_string());
    let uri: Uri = url.parse().map_err(|_| {
        GatewayError::internal(
            "InvalidBackendUrl",
            format!("The backend URL '{url}' is not valid."),
        )
    })?;
    let head = request_head(&uri, &ex.request_headers, key);
    let backend = ex.target.name.clone();
    let started = std::time::Instant::now();
    let tls = ex.backend_tls()?;
    let answered = tokio::time::timeout(ex.timeout(), handshake(&ex.target.url, &tls, &head)).await;
    ex.backend_duration = Some(started.elapsed());
    let (head, framed) = match answered {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(GatewayError::from_upstream(&e, &backend)),
        Err(_) => {
            return Err(GatewayError::from_upstream(
                &UpstreamError::Timeout,
                &backend,
            ));
        }
    };
    let status = head.status;
    let headers = head.headers.clone();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Answer::Other(status, headers, framed));
    }
    let upgraded = headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && connection_has(&headers, "upgrade");
    if !upgraded {
        return Err(GatewayError::backend_upgrade_invalid(
            &backend,
            "no 'Upgrade: websocket' with 'Connection: Upgrade'",
        ));
    }
    let expected = accept_for(key.as_bytes().trim_ascii());
    if headers
        .get(SEC_WEBSOCKET_ACCEPT)
        .is_none_or(|v| v.as_bytes().trim_ascii() != expected.as_bytes())
    {
        return Err(GatewayError::backend_upgrade_invalid(
            &backend,
            "Sec-WebSocket-Accept does not match the key",
        ));
    }
    Ok(Answer::Upgraded(headers, framed))
}

/// The backend's handshake request: the exchange's headers (after the policies), the client's
/// key, and the upgrade's own hop-by-hop headers.
fn request_head(uri: &Uri, headers: &HeaderMap, key: &HeaderValue) -> BytesMut {
    let mut out = BytesMut::with_capacity(1024);
    out.put_slice(b"GET ");
    out.put_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    out.put_slice(uri.authority().map_or("", |a| a.as_str()).as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in headers {
        // Header values cannot hold CR or LF (`HeaderValue` refuses them), so this cannot
        // smuggle a header or a second request.
        if name == header::HOST
            || name == header::EXPECT
            || name == SEC_WEBSOCKET_KEY
            || name == SEC_WEBSOCKET_VERSION
        {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"sec-websocket-key: ");
    out.put_slice(key.as_bytes());
    out.put_slice(
        b"\r\nsec-websocket-version: 13\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    );
    out
}

/// A connection to the backend, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

type BackendIo = Box<dyn Io>;

/// Connects, writes the handshake and reads the answer's head (informational answers other
/// than 101 skipped). What follows the head stays in the returned codec's buffer.
async fn handshake(
    url: &BackendUrl,
    tls: &TlsProfile,
    head: &[u8],
) -> Result<(actix_http::ResponseHead, Framed<BackendIo, ClientCodec>), UpstreamError> {
    let mut io: BackendIo = Box::new(upstream_h1::connect(url, tls).await?);
    let closed = |e: io::Error| UpstreamError::Closed(e.to_string());
    io.write_all(head).await.map_err(closed)?;
    io.flush().await.map_err(closed)?;
    let mut framed = Framed::new(io, ClientCodec::default());
    loop {
        match framed.next().await {
            None => return Err(UpstreamError::Disconnected),
            Some(Err(e)) => return Err(UpstreamError::Invalid(e.to_string())),
            Some(Ok(head))
                if head.status.is_informational()
                    && head.status != StatusCode::SWITCHING_PROTOCOLS =>
            {
                continue;
            }
            Some(Ok(head)) => return Ok((head, framed)),
        }
    }
}

/// The backend did not switch protocols: its answer, with its body, as for any request.
fn refused(
    status: StatusCode,
    mut headers: HeaderMap,
    framed: Framed<BackendIo, ClientCodec>,
) -> Response {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    strip_hop_by_hop(&mut headers);
    let payload = framed.codec().message_type() == actix_http::h1::MessageType::Payload;
    let body = match length {
        _ if payload => {
            // `Ok(None)` is the body's end: the codec must not be asked for more after it.
            let stream = framed
                .map_codec(ClientCodec::into_payload_codec)
                .take_while(|item| std::future::ready(!matches!(item, Ok(None))))
                .map(|item| item.map(Option::unwrap_or_default));
            let stream = Box::pin(stream);
            match length {
                Some(len) => BoxBody::new(SizedStream::new(len, stream)),
                None => BoxBody::new(BodyStream::new(stream)),
            }
        }
        // actix-http's decoder takes any answer carrying `Upgrade: websocket` (a 426 must
        // carry an `Upgrade`, RFC 9110 §15.5.22) as bodiless; its `Content-Length` still
        // counts.
        Some(len) if len > 0 => BoxBody::new(SizedStream::new(len, exactly(framed, len))),
        _ => BoxBody::new(()),
    };
    Response {
        status,
        headers,
        body,
    }
}

/// The next `len` bytes of the connection (those already read first).
fn exactly(
    framed: Framed<BackendIo, ClientCodec>,
    len: u64,
) -> Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, PayloadError>>>> {
    use tokio::io::AsyncReadExt;
    let FramedParts { io, read_buf, .. } = framed.into_parts();
    let first = read_buf.freeze();
    let first = first.slice(..first.len().min(len as usize));
    let rest = len - first.len() as u64;
    let tail =
        tokio_util::io::ReaderStream::new(io.take(rest)).map(|r| r.map_err(PayloadError::Io));
    Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(tail))
}

/// Why a tunnel ended (`outpost_websocket_closed_total{reason}`).
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// The backend closed its side (after a close handshake, or once the client had left).
    BackendClosed,
    Idle,
    /// The gateway is stopping.
    Stopping,
    /// The client's connection ended first (or the 101 was never sent).
    ClientGone,
}

impl Ended {
    fn label(self) -> &'static str {
        match self {
            Ended::BackendClosed => "backend_closed",
            Ended::Idle => "idle",
            Ended::Stopping => "stopping",
            Ended::ClientGone => "client_gone",
        }
    }
}

/// What both directions of a tunnel share (they run on the same worker thread).
struct Shared {
    api: Arc<str>,
    /// When a byte last went either way.
    activity: Cell<Instant>,
    ended: Cell<Option<Ended>>,
    /// The client connection's task (actix-http's dispatcher, which polls [`Tunnel`]).
    dispatcher: RefCell<Option<Waker>>,
    conn: Option<ConnState>,
    open: metrics::Gauge,
}

impl Shared {
    /// Ends the tunnel once (the first reason counts). The gateway's own reasons cut the
    /// client's connection: a client that does not read leaves the dispatcher waiting to write
    /// and never polling [`Tunnel`] again, so only a failing socket gets it to drop the tunnel.
    fn end(&self, why: Ended) {
        if self.ended.get().is_some() {
            return;
        }
        self.ended.set(Some(why));
        tracing::debug!(api = %self.api, reason = why.label(), "websocket connection closed");
        metrics::counter!(
            "outpost_websocket_closed_total",
            "api" => self.api.clone(),
            "reason" => why.label(),
        )
        .increment(1);
        if matches!(why, Ended::Idle | Ended::Stopping) {
            if let Some(conn) = &self.conn {
                conn.cut();
            }
            if let Some(dispatcher) = self.dispatcher.take() {
                dispatcher.wake();
            }
        }
    }
}

/// The backend's side of an upgraded connection, as the body of the client's 101: yields what
/// the backend sends, and ends when the backend closes or the tunnel is ended by [`pump`].
/// Dropped (the client went away, or the answer is done), it stops [`pump`], which closes the
/// backend connection.
struct Tunnel {
    shared: Rc<Shared>,
    /// What the backend sent right behind its 101.
    first: Bytes,
    backend: ReadHalf<BackendIo>,
    buf: BytesMut,
    pump: tokio::task::JoinHandle<()>,
    to_client: metrics::Counter,
}

impl Tunnel {
    fn open(
        api: &Arc<str>,
        io: BackendIo,
        first: Bytes,
        client: ClientUpgrade,
        idle: Duration,
    ) -> Tunnel {
        let (backend, to_backend) = tokio::io::split(io);
        let counter = |direction: &'static str| {
            metrics::counter!(
                "outpost_websocket_bytes_total",
                "api" => api.clone(),
                "direction" => direction,
            )
        };
        let open = metrics::gauge!("outpost_websocket_connections", "api" => api.clone());
        open.increment(1);
        let shared = Rc::new(Shared {
            api: api.clone(),
            activity: Cell::new(Instant::now()),
            ended: Cell::new(None),
            dispatcher: RefCell::new(None),
            conn: client.conn,
            open,
        });
        let pump = actix_rt::spawn(pump(
            client.stream,
            to_backend,
            shared.clone(),
            Watch {
                idle,
                stopping: client.shutdown,
            },
            counter("to_backend"),
        ));
        Tunnel {
            shared,
            first,
            backend,
            buf: BytesMut::new(),
            pump,
            to_client: counter("to_client"),
        }
    }
}

impl MessageBody for Tunnel {
    type Error = io::Error;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let shared = &*this.shared;
        if shared.ended.get().is_some() {
            return Poll::Ready(None);
        }
        {
            let mut dispatcher = shared.dispatcher.borrow_mut();
            if !dispatcher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *dispatcher = Some(cx.waker().clone());
            }
        }
        if !this.first.is_empty() {
            let first = std::mem::take(&mut this.first);
            this.to_client.increment(first.len() as u64);
            return Poll::Ready(Some(Ok(first)));
        }
        if this.buf.capacity() < READ_CHUNK {
            this.buf.reserve(READ_CHUNK);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut this.backend), cx, &mut this.buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(n)) if n > 0 => {
                shared.activity.set(Instant::now());
                this.to_client.increment(n as u64);
                Poll::Ready(Some(Ok(this.buf.split().freeze())))
            }
            Poll::Ready(done) => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "websocket backend connection failed");
                }
                shared.end(Ended::BackendClosed);
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.pump.abort();
        self.shared.open.decrement(1);
        self.shared.end(Ended::ClientGone);
    }
}

/// What ends a tunnel besides its peers.
struct Watch {
    idle: Duration,
    stopping: Option<actix_server::GracefulShutdownSignal>,
}

/// Client → backend, until the client stops sending (then the backend's write side is shut
/// down and the tunnel goes on until the backend closes too); meanwhile, and after, the idle
/// deadline and the gateway's stop. Its own task, so that these hold whoever stops reading.
async fn pump(
    mut client: Payload,
    mut backend: WriteHalf<BackendIo>,
    shared: Rc<Shared>,
    watch: Watch,
    counted: metrics::Counter,
) {
    let activity = shared.clone();
    let forward = async move {
        while let Some(Ok(chunk)) = client.next().await {
            activity.activity.set(Instant::now());
            counted.increment(chunk.len() as u64);
            // Flushed each time: a TLS stream may hold written bytes until then.
            if backend.write_all(&chunk).await.is_err() || backend.flush().await.is_err() {
                return;
            }
        }
        let _ = backend.shutdown().await;
    };
    let stopping = async move {
        match watch.stopping {
            Some(signal) => signal.notified().await,
            None => std::future::pending().await,
        }
    };
    let idle = tokio::time::sleep_until(shared.activity.get() + watch.idle);
    tokio::pin!(forward, stopping, idle);
    let mut forwarding = true;
    loop {
        tokio::select! {
            () = &mut forward, if forwarding => forwarding = false,
            () = &mut stopping => return shared.end(Ended::Stopping),
            () = &mut idle => {
                let deadline = shared.activity.get() + watch.idle;
                if deadline <= Instant::now() {
                    return shared.end(Ended::Idle);
                }
                idle.as_mut().reset(deadline);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_value_is_rfc_6455s_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn request(version: Version, method: Method, headers: &[(&str, &str)]) -> Request {
        let mut req = actix_web::test::TestRequest::default()
            .method(method)
            .version(version);
        for (k, v) in headers {
            req = req.append_header((*k, *v));
        }
        req.to_request()
    }

    const KEY: (&str, &str) = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    const V13: (&str, &str) = ("sec-websocket-version", "13");
    const UPGRADE: (&str, &str) = ("upgrade", "websocket");
    const CONNECTION: (&str, &str) = ("connection", "keep-alive, Upgrade");

    fn verdict(version: Version, method: Method, headers: &[(&str, &str)]) -> Result<bool, String> {
        requested(&request(version, method, headers))
            .map(|h| h.is_some())
            .map_err(|e| format!("{} {}", e.status.as_u16(), e.reason))
    }

    #[test]
    fn a_valid_handshake_is_an_upgrade() {
        let ok = verdict(
            Version::HTTP_11,
            Method::GET,
            &[UPGRADE, CONNECTION, KEY, V13],
        );
        assert_eq!(ok, Ok(true));
    }

    #[test]
    fn requests_without_upgrade_or_not_http_1_1_are_plain() {
        assert_eq!(
            verdict(Version::HTTP_11, Method::GET, &[KEY, V13]),
            Ok(false)
        );
        // HTTP/2 cannot carry `Upgrade` (RFC 8441's extended CONNECT is not supported), and
        // HTTP/1.0's is ignored.
        for version in [Version::HTTP_2, Version::HTTP_10] {
            let plain = verdict(version, Method::GET, &[UPGRADE, CONNECTION, KEY, V13]);
            assert_eq!(plain, Ok(false), "{version:?}");
        }
        let h2c = verdict(
            Version::HTTP_11,
            Method::GET,
            &[
                ("upgrade", "h2c"),
                ("connection", "Upgrade, HTTP2-Settings"),
            ],
        );
        assert_eq!(h2c, Ok(false));
    }

    #[test]
    fn other_protocols_and_broken_handshakes_are_refused() {
        let refused = |method: Method, headers: &[(&str, &str)]| {
            verdict(Version::HTTP_11, method, headers).unwrap_err()
        };
        assert_eq!(
            refused(Method::GET, &[("upgrade", "TLS/1.2"), CONNECTION]),
            "400 UpgradeNotSupported"
        );
        assert_eq!(
            refused(
                Method::GET,
                &[("upgrade", "websocket, foo"), CONNECTION, KEY, V13]
            ),
            "400 UpgradeNotSupported"
        );
        let invalid = "400 WebSocketHandshakeInvalid";
        assert_eq!(
            refused(Method::POST, &[UPGRADE, CONNECTION, KEY, V13]),
            invalid
        );
        assert_eq!(refused(Method::GET, &[UPGRADE, KEY, V13]), invalid);
        assert_eq!(refused(Method::GET, &[UPGRADE, CONNECTION, V13]), invalid);
        assert_eq!(
            refused(
                Method::GET,
                &[UPGRADE, CONNECTION, ("sec-websocket-key", "c2hvcnQ="), V13]
            ),
            invalid
        );
        assert_eq!(refused(Method::GET, &[UPGRADE, CONNECTION, KEY]), invalid);
        assert_eq!(
            refused(
                Method::GET,
                &[UPGRADE, CONNECTION, KEY, V13, ("content-length", "5")]
            ),
            invalid
        );
        assert_eq!(
            refused(
                Method::GET,
                &[UPGRADE, CONNECTION, KEY, ("sec-websocket-version", "8")]
            ),
            "426 WebSocketVersionUnsupported"
        );
    }

    #[test]
    fn the_backend_handshake_carries_the_key_and_the_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("client.example"));
        headers.insert(
            HeaderName::from_static("sec-websocket-protocol"),
            HeaderValue::from_static("chat"),
        );
        headers.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("policy-set"));
        let uri: Uri = "http://10.0.0.1:8080/chat/room?x=1".parse().unwrap();
        let head = request_head(&uri, &headers, &HeaderValue::from_static("a2V5"));
        assert_eq!(
            std::str::from_utf8(&head).unwrap(),
            "GET /chat/room?x=1 HTTP/1.1\r\nhost: 10.0.0.1:8080\r\n\
             sec-websocket-protocol: chat\r\nsec-websocket-key: a2V5\r\n\
             sec-websocket-version: 13\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        );
    }
}
