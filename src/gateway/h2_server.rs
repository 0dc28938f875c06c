//! HTTP/2 connections of the traffic listener, served by the gateway's own dispatcher on the
//! `h2` crate (TLS with ALPN `h2`, and h2c with prior knowledge on the plain port).
//!
//! actix-http's HTTP/2 dispatcher cannot send trailers, and gRPC answers end with them
//! (`grpc-status`). This one can; everything else stays shared with HTTP/1.1: each HTTP/2 stream
//! becomes an actix [`Request`] (its body a streaming payload) and goes to the same traffic
//! application the HTTP/1 dispatcher calls, so routing, policies, limits and refusals are the
//! same code. Then the response head is sent, the body streamed as the client's flow-control
//! window allows, and the response trailers (see [`super::trailers`]) end the stream when the
//! backend sent any.
//!
//! Limits: a header block above twice `limits.max_header_bytes` is refused by the protocol
//! layer (431, no body; below that the gateway's own check answers with its JSON 431);
//! `[http2] max_concurrent_streams` per connection; the receive windows (`[http2]
//! stream_window_bytes`, `connection_window_bytes`) bound what a client can have in flight. A connection without streams for the keep-alive time, and every connection
//! when the server stops, is closed with GOAWAY once its open streams are done. A client that
//! resets a stream cancels its request (and so its backend call).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_http::HttpMessage;
use actix_http::error::{DispatchError, PayloadError};
use actix_http::header::{self, HeaderValue};
use actix_http::{Extensions, Payload, Protocol, Request, Response, ResponseHead};
use actix_service::{Service, ServiceFactory, fn_factory, fn_service};
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::{Method, StatusCode, Version};
use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::LocalBoxFuture;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};

use super::trailers::Trailers;

/// Marks a connection that arrived over TLS (`X-Forwarded-Proto: https`), in its data (read
/// with [`conn_data`]).
#[derive(Clone, Copy)]
pub struct Secure;

/// Largest DATA frame written at once.
const CHUNK: usize = 16 << 10;

/// What an HTTP/2 stream's request carries for the gateway (in its extensions).
#[derive(Clone)]
pub struct H2Stream {
    /// What the listener recorded about the connection (actix keeps this as the request's
    /// connection data, which only its own dispatchers can set): read it with [`conn_data`].
    pub conn: Rc<Extensions>,
    /// The request's header block did not end the stream: a body (or trailers) follows. Known
    /// from the frame, so a streaming call is forwarded before its first message arrives.
    pub has_body: bool,
    pub trailers: Trailers,
}

/// How HTTP/2 connections are served.
#[derive(Clone, Copy)]
pub struct H2Config {
    /// `limits.max_header_bytes`.
    pub max_header_bytes: usize,
    /// A connection without open streams this long is closed.
    pub keep_alive: Duration,
    /// The client must finish the HTTP/2 preface and settings within this.
    pub handshake_timeout: Duration,
    /// `[http2]`: concurrent streams and receive windows.
    pub max_concurrent_streams: u32,
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
}

/// The connection data of type `T` of a request over either HTTP version: actix's connection
/// data for HTTP/1.1, the [`H2Stream`]'s for HTTP/2.
pub fn conn_data<T: Clone + 'static>(req: &Request) -> Option<T> {
    if let Some(data) = req.conn_data::<T>() {
        return Some(data.clone());
    }
    req.extensions()
        .get::<H2Stream>()
        .and_then(|s| s.conn.get::<T>().cloned())
}

/// The service for one listener's connections: HTTP/1.1 to `h1` (actix-http's dispatcher),
/// HTTP/2 to [`serve`], both calling the traffic application `app` builds. `on_connect` records
/// what HTTP/2 requests learn about their connection (as `h1`'s own `on_connect_ext` does).
pub fn serve_both<Io, H1, A, E, C>(
    h1: H1,
    app: A,
    config: H2Config,
    shutdown: actix_server::GracefulShutdownSignal,
    on_connect: C,
) -> impl ServiceFactory<
    (Io, Protocol, Option<SocketAddr>),
    Config = (),
    Response = (),
    Error = DispatchError,
    InitError = (),
>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    H1: ServiceFactory<
            (Io, Protocol, Option<SocketAddr>),
            Config = (),
            Response = (),
            Error = DispatchError,
            InitError = (),
        > + 'static,
    H1::Service: 'static,
    H1::Future: 'static,
    A: ServiceFactory<
            Request,
            Config = (),
            Response = Response<BoxBody>,
            Error = E,
            InitError = (),
        > + 'static,
    A::Service: 'static,
    A::Future: 'static,
    <A::Service as Service<Request>>::Future: 'static,
    E: Into<Response<BoxBody>> + 'static,
    C: Fn(&Io, &mut Extensions) + Clone + 'static,
{
    let h1 = Rc::new(h1);
    let app = Rc::new(app);
    fn_factory(move || {
        let h1 = h1.new_service(());
        let app = app.new_service(());
        let shutdown = shutdown.clone();
        let on_connect = on_connect.clone();
        async move {
            let h1 = Rc::new(h1.await?);
            let app = Rc::new(app.await?);
            Ok::<_, ()>(fn_service(
                move |(io, protocol, peer): (Io, Protocol, Option<SocketAddr>)| {
                    let served: LocalBoxFuture<'static, Result<(), DispatchError>> = match protocol
                    {
                        Protocol::Http2 => {
                            let mut conn = Extensions::new();
                            on_connect(&io, &mut conn);
                            Box::pin(serve(
                                io,
                                peer,
                                Rc::new(conn),
                                app.clone(),
                                config,
                                shutdown.clone(),
                            ))
                        }
                        _ => Box::pin(h1.call((io, protocol, peer))),
                    };
                    served
                },
            ))
        }
    })
}

/// Serves one HTTP/2 connection until the client closes it, it sits idle, or the server stops.
pub async fn serve<Io, S, E>(
    io: Io,
    peer: Option<SocketAddr>,
    conn_data: Rc<Extensions>,
    app: Rc<S>,
    config: H2Config,
    shutdown: actix_server::GracefulShutdownSignal,
) -> Result<(), DispatchError>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    S: Service<Request, Response = Response<BoxBody>, Error = E> + 'static,
    S::Future: 'static,
    E: Into<Response<BoxBody>> + 'static,
{
    let header_list = u32::try_from(config.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX);
    let mut builder = h2::server::Builder::new();
    builder
        .max_header_list_size(header_list)
        .max_concurrent_streams(config.max_concurrent_streams)
        .initial_window_size(config.stream_window_bytes)
        .initial_connection_window_size(config.connection_window_bytes);
    let handshake = builder.handshake::<_, Bytes>(io);
    let mut conn = match actix_rt::time::timeout(config.handshake_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(DispatchError::H2(e)),
        // A client that never finished its preface: nothing to answer.
        Err(_) => return Ok(()),
    };
    let open = Rc::new(Cell::new(0usize));
    let last_end = Rc::new(Cell::new(Instant::now()));
    let stopping = shutdown.notified();
    let mut stopping = std::pin::pin!(stopping);
    let mut closing = false;
    loop {
        // With streams open the connection is not idle: look again a keep-alive later.
        let idle_at = if open.get() == 0 {
            last_end.get() + config.keep_alive
        } else {
            Instant::now() + config.keep_alive
        };
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    let stream = Served::new(&open, &last_end);
                    actix_rt::spawn(serve_stream(req, respond, app.clone(), peer, conn_data.clone(), stream));
                }
                Some(Err(e)) => {
                    // A client that went away or broke the protocol: its streams end with it.
                    tracing::debug!(error = %e, "HTTP/2 connection ended");
                    return Ok(());
                }
                None => return Ok(()),
            },
            () = &mut stopping, if !closing => {
                closing = true;
                conn.graceful_shutdown();
            }
            () = actix_rt::time::sleep_until(idle_at.into()), if !closing => {
                if open.get() == 0 && last_end.get() + config.keep_alive <= Instant::now() {
                    closing = true;
                    conn.graceful_shutdown();
                }
            }
        }
    }
}

/// One stream being served: counted open until dropped.
struct Served {
    open: Rc<Cell<usize>>,
    last_end: Rc<Cell<Instant>>,
}

impl Served {
    fn new(open: &Rc<Cell<usize>>, last_end: &Rc<Cell<Instant>>) -> Self {
        open.set(open.get() + 1);
        Self {
            open: open.clone(),
            last_end: last_end.clone(),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.open.set(self.open.get() - 1);
        self.last_end.set(Instant::now());
    }
}

async fn serve_stream<S, E>(
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    app: Rc<S>,
    peer: Option<SocketAddr>,
    conn: Rc<Extensions>,
    _served: Served,
) where
    S: Service<Request, Response = Response<BoxBody>, Error = E> + 'static,
    E: Into<Response<BoxBody>> + 'static,
{
    let (parts, body) = req.into_parts();
    let trailers = Trailers::default();
    let has_body = !body.is_end_stream();
    let payload = if !has_body {
        Payload::None
    } else {
        let stream: actix_http::BoxedPayloadStream = Box::pin(RequestBody {
            recv: body,
            trailers: trailers.clone(),
            ended: false,
        });
        Payload::Stream { payload: stream }
    };
    let mut request = Request::with_payload(payload);
    let head_request = parts.method == Method::HEAD;
    let head = request.head_mut();
    head.uri = parts.uri;
    head.method = parts.method;
    head.version = Version::HTTP_2;
    head.headers = parts.headers.into();
    head.peer_addr = peer;
    request.extensions_mut().insert(H2Stream {
        conn,
        has_body,
        trailers: trailers.clone(),
    });
    // A client that resets the stream before the answer cancels the request: dropping the
    // application's future drops the backend call with it.
    let call = app.call(request);
    let answered = tokio::select! {
        answered = call => answered,
        _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let response: Response<BoxBody> = match answered {
        Ok(res) => res,
        Err(e) => e.into(),
    };
    if let Err(e) = write_response(response, respond, head_request, &trailers).await {
        tracing::debug!(error = %e, "HTTP/2 response not delivered");
    }
}

/// The client's request body: released to the client's window as the gateway reads it; its
/// trailers are kept for the backend.
struct RequestBody {
    recv: RecvStream,
    trailers: Trailers,
    ended: bool,
}

impl Stream for RequestBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    if let Err(e) = this.recv.flow_control().release_capacity(chunk.len()) {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    if !chunk.is_empty() {
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => break,
            }
        }
        match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => {
                this.ended = true;
                if let Some(t) = trailers {
                    this.trailers.set_request(t);
                }
                Poll::Ready(None)
            }
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }
}

/// Sends the response head, the body as the client's window allows, then the trailers or the
/// end of the stream. A body that fails mid-way resets the stream, so the client cannot take a
/// cut answer for a whole one.
async fn write_response(
    response: Response<BoxBody>,
    mut respond: SendResponse<Bytes>,
    head_request: bool,
    trailers: &Trailers,
) -> Result<(), h2::Error> {
    let (response, body) = response.into_parts();
    let mut size = body.size();
    let head = response_head(response.head(), &mut size);
    let mut body = std::pin::pin!(body);
    if head_request || size.is_eof() {
        // Nothing to stream; an empty body may still end with trailers (run it to its end, which
        // also reports the request).
        let ended = if head_request {
            None
        } else {
            std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await
        };
        match (ended, trailers.take_response()) {
            (None, Some(t)) if !head_request => {
                let mut stream = respond.send_response(head, false)?;
                stream.send_trailers(t)?;
            }
            _ => {
                respond.send_response(head, true)?;
            }
        }
        return Ok(());
    }
    let mut stream = respond.send_response(head, false)?;
    loop {
        // The body's next chunk, unless the client resets the stream while it is awaited (a
        // cancelled server-streaming call): then the body is dropped, and the backend's stream
        // with it.
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(reset) = stream.poll_reset(cx) {
                return Poll::Ready(Err(reset.err().unwrap_or_else(|| Reason::CANCEL.into())));
            }
            body.as_mut().poll_next(cx).map(Ok)
        })
        .await?;
        match next {
            Some(Ok(chunk)) => send_data(&mut stream, chunk).await?,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; resetting the stream");
                stream.send_reset(Reason::INTERNAL_ERROR);
                return Ok(());
            }
            None => break,
        }
    }
    match trailers.take_response() {
        Some(t) => stream.send_trailers(t),
        None => stream.send_data(Bytes::new(), true),
    }
}

async fn send_data(stream: &mut SendStream<Bytes>, mut chunk: Bytes) -> Result<(), h2::Error> {
    while !chunk.is_empty() {
        stream.reserve_capacity(chunk.len().min(CHUNK));
        match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            None => return Err(Reason::STREAM_CLOSED.into()),
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

/// The HTTP/2 response head: connection-specific headers dropped, `content-length` from the
/// body, a `date`.
fn response_head(head: &ResponseHead, size: &mut BodySize) -> http::Response<()> {
    let mut res = http::Response::new(());
    *res.status_mut() = head.status;
    *res.version_mut() = Version::HTTP_2;
    if matches!(
        head.status,
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    ) || head.status.is_informational()
    {
        *size = BodySize::None;
    }
    let out = res.headers_mut();
    out.reserve(head.headers.len() + 2);
    for (name, value) in head.headers.iter() {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::CONTENT_LENGTH
            || name == "keep-alive"
            || name == "proxy-connection"
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let BodySize::Sized(len) = size {
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(*len));
    }
    if !out.contains_key(header::DATE) {
        out.insert(header::DATE, date());
    }
    res
}

/// The `date` header value, made once a second per worker.
fn date() -> HeaderValue {
    thread_local! {
        static DATE: RefCell<(u64, HeaderValue)> = const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = chrono::Utc::now();
    let secs = now.timestamp() as u64;
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            if let Ok(v) = HeaderValue::from_str(&text) {
                *d = (secs, v);
            }
        }
        d.1.clone()
    })
}
