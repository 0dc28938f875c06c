//! The traffic listener: every request, from bytes in to bytes out.
//!
//! One catch-all service (no actix routing): per request it loads the published
//! [`CompiledTable`] once (an atomic load, no lock, no actor round trip), checks limits, finds
//! the operation (host → path → version → method), checks the subscription key, runs the
//! operation's pipeline ([`super::pipeline`]) and streams the answer back. Every request ends
//! in `finish`: Prometheus metrics and the [`RequestObserver`] see it exactly once, when its
//! body has been sent (or the client went away).
//!
//! Answers the gateway makes itself ([`GatewayError`]): 401 missing or invalid key (or a key of
//! another API), 403 suspended or expired subscription, 404 no such API/operation/version, 405
//! wrong method (with `Allow`), 413 body too large, 431 headers too large, 502 backend
//! unreachable, 503 no configuration yet, 504 backend too slow. A gRPC client gets each as a
//! gRPC status instead (`grpc_answer`).
//!
//! HTTP/1.1 connections are served by actix-http's dispatcher, HTTP/2 ones by the gateway's own
//! ([`super::h2_server`], which can send trailers); both call the same application.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_http::Protocol;
use actix_http::error::DispatchError;
use actix_http::{HttpMessage, Request};
use actix_rt::net::TcpStream;
use actix_service::{ServiceFactory, ServiceFactoryExt, fn_service};
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::Server;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use bytes::Bytes;
use outpost_actors::route_table::client_certificate::ClientCertificate;
use outpost_actors::route_table::steps::encode_query_component;
use outpost_actors::route_table::table::{
    CompiledApi, CompiledSubscription, CompiledTable, RouteMatch,
};
use outpost_actors::route_table::{
    CacheStatus, RequestObserver, RequestRecord, RouteOutcome, RouteRequest, TableHandle,
};
use outpost_model::SubscriptionState;
use outpost_model::resources::VersionScheme;

use super::access_log::{AccessLog, Sampled};
use super::concurrency::{ConcurrencyGuard, ConcurrencyLimiter};
use super::error::{self, GatewayError};
use super::exchange::{Exchange, RequestBody, Response, Runtime, Target, percent_decode};
use super::forwarded::Forwarding;
use super::h2_server::{self, H2Stream, Secure};
use super::hop_by_hop::strip_hop_by_hop;
use super::listener::{ConnState, Connection, LocalStop, WriteNow};
use super::otel;
use super::path::{self, Normalized};
use super::pipeline;
use super::request_metrics::{self, UNMATCHED};
use super::settings::GatewaySettings;
use super::tls::{MinTls, PeerTls, TlsAcceptor, TlsConnection, TlsInfo};

/// What the rest of the gateway plugs into the traffic server.
#[derive(Clone, Default)]
pub struct ProxyHooks {
    /// Told about every finished request (the `TelemetryBuffer`'s aggregator).
    pub observer: Option<Arc<dyn RequestObserver>>,
    /// Rate-limit and quota counters; `None`: in-process (no Redis).
    pub shared: Option<outpost_actors::shared_state::SharedState>,
    /// The cache (its in-process tier is per traffic server); `None`: one built from
    /// `settings.cache` over `shared`.
    pub cache: Option<outpost_actors::cache::CacheHandle>,
    /// The access log (`[access_log]`); `None`: not written.
    pub access_log: Option<Arc<AccessLog>>,
    /// OpenTelemetry traces (`[otel]`); `None`: no spans (and no cost).
    pub otel: Option<Arc<otel::Traces>>,
    /// Set when the gateway starts draining (see [`super::run`]): answers then close their
    /// HTTP/1.1 connection, so clients and load balancers reconnect elsewhere.
    pub draining: Arc<AtomicBool>,
}

/// Everything the traffic workers share.
pub struct Traffic {
    pub table: TableHandle,
    pub runtime: Runtime,
    pub observer: Option<Arc<dyn RequestObserver>>,
    access_log: Option<Arc<AccessLog>>,
    otel: Option<Arc<otel::Traces>>,
    draining: Arc<AtomicBool>,
    key_header: Option<HeaderName>,
    key_query: Option<KeyQuery>,
    forwarding: Forwarding,
    max_header_bytes: usize,
    http2: super::settings::Http2Settings,
    max_body_bytes: usize,
    /// Set when the gateway stops: requests cut off then are not the client's doing.
    pub stopping: Arc<AtomicBool>,
}

/// The query parameter that carries subscription keys: its name as configured and as it appears
/// percent-encoded in a query string (both are recognised, and removed before forwarding).
struct KeyQuery {
    name: String,
    encoded: String,
}

impl Traffic {
    pub fn new(settings: &GatewaySettings, table: TableHandle, hooks: ProxyHooks) -> Self {
        let sub = &settings.subscription;
        // The workers keep their metric handles (`request_metrics`): the recorder must be in
        // place before the first request, or they would keep handles that record nothing.
        let _ = super::ops::prometheus();
        let (shared, cache) =
            super::stores::stores(settings, hooks.shared.clone(), hooks.cache.clone());
        Self {
            table,
            runtime: Runtime {
                concurrency: ConcurrencyLimiter::default(),
                shared,
                cache,
                max_body_bytes: settings.limits.max_body_bytes,
                websocket_idle: settings.limits.websocket_idle,
            },
            observer: hooks.observer,
            access_log: hooks.access_log,
            otel: hooks.otel,
            draining: hooks.draining,
            // Validated with the settings.
            key_header: sub
                .header
                .as_ref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            key_query: sub.query.as_ref().map(|name| KeyQuery {
                encoded: encode_query_component(name),
                name: name.clone(),
            }),
            // Validated with the settings; trusting nobody is the safe reading of a bad list.
            forwarding: Forwarding::new(&settings.listen.trusted_proxies).unwrap_or_default(),
            max_header_bytes: settings.limits.max_header_bytes,
            http2: settings.http2.clone(),
            max_body_bytes: settings.limits.max_body_bytes,
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// An HTTP answer as the dispatchers write it.
type Answer = actix_http::Response<BoxBody>;

/// The traffic application: a plain actix-http service that both dispatchers (actix-http's
/// HTTP/1.1 one and [`super::h2_server`]) call with every request of the listener. Every path
/// belongs to the configured APIs, so there is nothing to route here: an actix-web `App` in
/// front of it (its request pool, its routing, two conversions of each answer) cost about 1,900
/// instructions a request and bought nothing (docs/benchmarks.md). The answer is never an
/// error: every refusal is the gateway's own ([`GatewayError`], mapped in [`super::error`]).
fn traffic_service(
    traffic: Arc<Traffic>,
) -> impl ServiceFactory<Request, Config = (), Response = Answer, Error = Infallible, InitError = ()>
+ Clone {
    fn_service(move |mut req: Request| {
        let traffic = traffic.clone();
        async move {
            let payload = req.take_payload();
            // Only a sampled access-log entry shares the request (until the answer is sent):
            // the others keep it here, without an `Rc` allocated and freed per request.
            let answer = match traffic.access_log.as_ref().filter(|log| log.sampled()) {
                Some(log) => {
                    let req = Rc::new(req);
                    let access = Sampled::new(log, &req);
                    handle(&req, payload, &traffic, Some(access)).await
                }
                None => handle(&req, payload, &traffic, None).await,
            };
            Ok::<_, Infallible>(answer)
        }
    })
}

/// Binds the traffic listener on `listen` (`127.0.0.1:0` picks a port) and starts it, plain
/// HTTP only. The returned [`Server`] must be awaited or spawned by the caller (inside an actix
/// system).
pub fn start_traffic_server(
    listen: &str,
    settings: &GatewaySettings,
    table: TableHandle,
    hooks: ProxyHooks,
) -> std::io::Result<(Server, SocketAddr)> {
    let (server, addrs) = start_traffic_servers(listen, None, settings, table, hooks)?;
    Ok((server, addrs.http))
}

/// The HTTPS listener of [`start_traffic_servers`].
pub struct HttpsListen<'a> {
    pub listen: &'a str,
    /// Hostname whose certificate clients without SNI get.
    pub default_host: Option<String>,
    pub min_tls: MinTls,
}

/// Where the traffic listeners are bound.
#[derive(Debug, Clone)]
pub struct TrafficAddrs {
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    /// Set it before stopping the server (see [`Traffic::stopping`]).
    pub stopping: Arc<AtomicBool>,
}

/// Binds the plain and (optionally) the HTTPS traffic listeners and starts them in one actix
/// server: the same workers, the same [`Traffic`] (route table, counters, cache) for both.
///
/// Built from actix-server and actix-http rather than `HttpServer`, so that each connection
/// is a [`Connection`]: the HTTP/1 codec's own refusals get the gateway's JSON bodies too.
pub fn start_traffic_servers(
    listen: &str,
    https: Option<HttpsListen<'_>>,
    settings: &GatewaySettings,
    table: TableHandle,
    hooks: ProxyHooks,
) -> std::io::Result<(Server, TrafficAddrs)> {
    let traffic = Arc::new(Traffic::new(settings, table.clone(), hooks));
    let stopping = traffic.stopping.clone();
    let listener = std::net::TcpListener::bind(listen)?;
    let http_addr = listener.local_addr()?;
    let mut builder = actix_server::Server::build();
    if settings.listen.workers > 0 {
        builder = builder.workers(settings.listen.workers);
    }
    // After the drain, requests still in flight get this long before they are cut. Signals are
    // the gateway's to handle (`super::run` drains first); actix-server's own handler would
    // close the listeners at the first SIGTERM.
    builder = builder
        .shutdown_timeout(settings.shutdown.grace.as_secs())
        .disable_signals();
    // On stop, idle keep-alive connections are closed at once (as `HttpServer` does), so a
    // SIGTERM does not wait for them until the shutdown timeout.
    let shutdown = builder.graceful_shutdown_signal();
    let plain = (traffic.clone(), shutdown.clone());
    let h2c = settings.listen.h2c;
    builder = builder.listen("outpost-traffic", listener, move || {
        let (traffic, shutdown) = plain.clone();
        fn_service(move |io: TcpStream| async move {
            let peer = io.peer_addr().ok();
            // Answers are written whole; Nagle would only delay the last segment.
            let _ = io.set_nodelay(true);
            let protocol = if h2c && starts_with_h2_preface(&io).await? {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            Ok::<_, DispatchError>((Connection::new(io), protocol, peer))
        })
        .and_then(http::<TcpStream>(&traffic, http_addr, &shutdown, false))
    })?;
    let mut https_addr = None;
    if let Some(https) = https {
        let listener = std::net::TcpListener::bind(https.listen)?;
        let addr = listener.local_addr()?;
        https_addr = Some(addr);
        let acceptor = Arc::new(TlsAcceptor::new(table, https.default_host, https.min_tls));
        builder = builder.listen("outpost-traffic-https", listener, move || {
            acceptor
                .factory()
                .map_err(DispatchError::Io)
                .map(|io: TlsConnection| {
                    let peer = io.tcp().peer_addr().ok();
                    let _ = io.tcp().set_nodelay(true);
                    // HTTP/2 when the client chose it by ALPN, else HTTP/1.1.
                    let protocol = if io.is_h2() {
                        Protocol::Http2
                    } else {
                        Protocol::Http1
                    };
                    (Connection::new(io), protocol, peer)
                })
                .and_then(http::<TlsConnection>(&traffic, addr, &shutdown, true))
        })?;
    }
    Ok((
        builder.run(),
        TrafficAddrs {
            http: http_addr,
            https: https_addr,
            stopping,
        },
    ))
}

/// Whether a plain connection opens with HTTP/2's connection preface (prior knowledge, RFC 9113
/// §3.3). Peeked, so an HTTP/1.1 request is read by its codec as if nothing happened; a client
/// that sends fewer bytes first is HTTP/1.1 (no HTTP/1 request is shorter than the preface's
/// start, and an h2 client sends it whole).
async fn starts_with_h2_preface(io: &TcpStream) -> Result<bool, DispatchError> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let mut buf = [0u8; 14];
    let mut seen = 0;
    // A peek returns what has arrived; wait (briefly, bounded by the client's own pace) until
    // enough bytes are there to decide.
    for _ in 0..8 {
        // A client that sends nothing is left to the HTTP/1 codec's request timeout.
        seen = match actix_rt::time::timeout(Duration::from_secs(5), io.peek(&mut buf)).await {
            Ok(peeked) => peeked.map_err(DispatchError::Io)?,
            Err(_) => return Ok(false),
        };
        if seen >= PREFACE.len() || seen == 0 || buf[..seen] != PREFACE[..seen] {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(seen >= PREFACE.len() && buf == *PREFACE)
}

/// The HTTP service (HTTP/1.1, or HTTP/2 as the connection's protocol says) over one
/// listener's connections.
fn http<T>(
    traffic: &Arc<Traffic>,
    addr: SocketAddr,
    shutdown: &actix_server::GracefulShutdownSignal,
    secure: bool,
) -> impl ServiceFactory<
    (Connection<T>, Protocol, Option<SocketAddr>),
    Config = (),
    Response = (),
    Error = DispatchError,
    InitError = (),
> + use<T>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + WriteNow + PeerTls + 'static,
{
    // The factory runs once on each worker's thread: give the worker its own Redis
    // connection, driven by the worker's runtime, so rate-limit checks never hop threads.
    traffic.runtime.shared.prepare_thread();
    let app = traffic_service(traffic.clone());
    let h2 = h2_server::H2Config {
        max_header_bytes: traffic.max_header_bytes,
        keep_alive: KEEP_ALIVE,
        handshake_timeout: CLIENT_REQUEST_TIMEOUT,
        max_concurrent_streams: traffic.http2.max_concurrent_streams,
        stream_window_bytes: traffic.http2.stream_window_bytes,
        connection_window_bytes: traffic.http2.connection_window_bytes,
    };
    let h2_app = app.clone();
    let h2_shutdown = shutdown.clone();
    let stop = LocalStop::new(shutdown.clone());
    let upgrades_stop = shutdown.clone();
    let h1 = actix_http::HttpService::build()
        // Slow clients must not hold workers; the backend timeout covers slow backends.
        .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
        .client_disconnect_timeout(Duration::from_secs(1))
        .keep_alive(KEEP_ALIVE)
        // Polled on every poll of a connection: a flag per worker, not a `watch` per poll.
        .graceful_shutdown_signal(move || stop.notified())
        .local_addr(addr)
        .on_connect_ext(move |io: &Connection<T>, ext| {
            // The codec-refusal handshake is HTTP/1's alone (see `listener`).
            ext.insert(io.state());
            // Upgraded (WebSocket, HTTP/1.1 only) connections close when the server starts
            // to stop.
            ext.insert(upgrades_stop.clone());
            connection_data(io, ext, secure);
        })
        .finish(app);
    // HTTP/2 connections get the gateway's own dispatcher (it sends trailers), calling the same
    // application.
    h2_server::serve_both(
        h1,
        h2_app,
        h2,
        h2_shutdown,
        move |io: &Connection<T>, ext: &mut actix_http::Extensions| {
            connection_data(io, ext, secure);
        },
    )
}

/// What requests learn about their connection, over either HTTP version (read with
/// [`h2_server::conn_data`]).
fn connection_data<T: WriteNow + PeerTls>(
    io: &Connection<T>,
    ext: &mut actix_http::Extensions,
    secure: bool,
) {
    if secure {
        ext.insert(Secure);
    }
    // The hostname of the handshake and the client certificate (see `tls`).
    if let Some(tls) = io.get_ref().tls_info() {
        ext.insert(tls);
    }
}

/// How long a client has to send a request head (HTTP/1.1) or its connection preface (HTTP/2).
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle connection (no request on HTTP/1.1, no open stream on HTTP/2) is closed after this.
const KEEP_ALIVE: Duration = Duration::from_secs(75);

// === the request ===

/// One request, whichever HTTP version brought it (its payload taken out), with its access-log
/// entry if it was sampled.
async fn handle(
    req: &Request,
    payload: actix_web::dev::Payload,
    traffic: &Traffic,
    access: Option<Sampled>,
) -> Answer {
    let started = Instant::now();
    let conn = req.conn_data::<ConnState>().cloned();
    if let Some(conn) = &conn {
        conn.mark();
    }
    let record = RequestRecord {
        api: None,
        operation: None,
        subscription: None,
        method: method_text(req.method()),
        status: 0,
        client_ip: traffic
            .forwarding
            .client_ip(req.peer_addr().map(|a| a.ip()), req.headers()),
        duration: Duration::ZERO,
        backend_duration: None,
        request_bytes: 0,
        response_bytes: 0,
        cache: CacheStatus::None,
        error_reason: None,
        grpc_status: None,
        request_id: String::new(),
        product: None,
        retries: 0,
        rate_limit: None,
        access_log: true,
    };
    let fields = Fields::of(req.headers(), traffic.key_header.as_ref());
    let grpc = is_grpc(fields.content_type);
    // Reported even if the connection dies before an answer (the future is dropped then).
    let mut pending = Unanswered {
        // Boxed: the request's future, its response and the body move it several times, and
        // the record is a few hundred bytes.
        done: Some(Box::new(Done {
            record,
            started,
            observer: traffic.observer.clone(),
            _guards: Vec::new(),
            access,
            trace: otel::Decision::of(traffic.otel.as_ref(), req),
            grpc_trailers: grpc
                .then(|| {
                    req.extensions()
                        .get::<H2Stream>()
                        .map(|s| s.trailers.clone())
                })
                .flatten(),
        })),
        conn,
        stopping: traffic.stopping.clone(),
    };
    let Done { record, trace, .. } = pending.done();
    let (response, guards) = match serve(req, &fields, payload, traffic, record, trace).await {
        Ok(served) => served,
        Err(err) => {
            record.error_reason = Some(err.reason);
            (Response::from_error(&err), Vec::new())
        }
    };
    let mut done = pending.answered();
    done._guards = guards;
    let response = if grpc {
        grpc_answer(response, &mut done.record)
    } else {
        response
    };
    let mut res = finish(response, done);
    if traffic.draining.load(Ordering::Relaxed)
        && res.head().connection_type() != actix_http::ConnectionType::Upgrade
    {
        res.head_mut()
            .set_connection_type(actix_http::ConnectionType::Close);
    }
    res
}

/// The method's name for the record: the standard ones without an allocation.
fn method_text(method: &Method) -> Cow<'static, str> {
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    STANDARD.iter().find(|(m, _)| m == method).map_or_else(
        || Cow::Owned(method.as_str().to_owned()),
        |&(_, name)| Cow::Borrowed(name),
    )
}

/// A gRPC call (`application/grpc`, `application/grpc+proto`, …), by its `Content-Type`.
fn is_grpc(content_type: Option<&HeaderValue>) -> bool {
    content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The request's header fields that the gateway reads, found in one pass over them (each is
/// the first value of its name, as `HeaderMap::get` would give), and their size. Each `get`
/// hashed its name and probed the map, about 75 instructions, 150 for the subscription key's
/// long name; the pass costs a few comparisons a field.
struct Fields<'r> {
    /// Names, values and their separators, as [`admit`] counts them against the limit.
    bytes: usize,
    host: Option<&'r HeaderValue>,
    content_length: Option<&'r HeaderValue>,
    content_type: Option<&'r HeaderValue>,
    /// The subscription key header's (`subscription.header`).
    key: Option<&'r HeaderValue>,
}

impl<'r> Fields<'r> {
    fn of(headers: &'r HeaderMap, key_header: Option<&HeaderName>) -> Self {
        let mut fields = Fields {
            bytes: 0,
            host: None,
            content_length: None,
            content_type: None,
            key: None,
        };
        for (name, value) in headers {
            fields.bytes += name.as_str().len() + value.len() + 4;
            // On its own: the key's header may be configured as any name.
            if key_header == Some(name) {
                fields.key.get_or_insert(value);
            }
            let slot = if *name == header::HOST {
                &mut fields.host
            } else if *name == header::CONTENT_LENGTH {
                &mut fields.content_length
            } else if *name == header::CONTENT_TYPE {
                &mut fields.content_type
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        fields
    }
}

/// A gRPC client's answer: a refusal (anything but 200, from the gateway or a backend that does
/// not speak gRPC) becomes a gRPC status with the refusal's message (see
/// [`error::grpc_refusal`]); its other headers (`Retry-After`, CORS) stay. The record keeps the
/// HTTP status the gateway decided on, and the gRPC status beside it.
fn grpc_answer(response: Response, record: &mut RequestRecord) -> Response {
    if response.status != actix_web::http::StatusCode::OK {
        let status = response.status;
        let message = match response.body.try_into_bytes() {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
            Err(_) => String::new(),
        };
        let message = if message.is_empty() {
            status.canonical_reason().unwrap_or("").to_owned()
        } else {
            message
        };
        let refusal = error::grpc_refusal(status, &message);
        let mut headers = refusal.headers().clone();
        for (name, value) in &response.headers {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                headers.append(name.clone(), value.clone());
            }
        }
        record.grpc_status = Some(error::grpc_code(status));
        record.status = status.as_u16();
        return Response {
            status: refusal.status(),
            headers,
            body: BoxBody::new(()),
        };
    }
    // A "Trailers-Only" answer carries its status in the headers.
    record.grpc_status = response
        .headers
        .get("grpc-status")
        .and_then(|v| super::trailers::grpc_status(v.as_bytes()));
    response
}

/// A request still being served. Dropped while armed, the connection ended first: either the
/// client went away (counted as nginx counts it, 499) or, with the client still connected, the
/// HTTP codec gave up on the body's framing (a 400, which the connection writes as it closes;
/// see `listener`). Both are the client's doing, never the backend's.
struct Unanswered {
    done: Option<Box<Done>>,
    conn: Option<ConnState>,
    stopping: Arc<AtomicBool>,
}

impl Unanswered {
    fn done(&mut self) -> &mut Done {
        self.done.as_deref_mut().expect("armed until answered")
    }

    fn answered(mut self) -> Box<Done> {
        self.done.take().expect("answered once")
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        let Some(mut done) = self.done.take() else {
            return;
        };
        let framing = !self.stopping.load(Ordering::Relaxed)
            && self.conn.as_ref().is_some_and(ConnState::peer_open);
        if framing && let Some(conn) = &self.conn {
            conn.refuse_framing();
            done.record.status = 400;
            done.record.error_reason = Some("RequestBodyUnreadable");
        } else {
            done.record.status = CLIENT_CLOSED_REQUEST;
            done.record
                .error_reason
                .get_or_insert("ClientClosedRequest");
        }
        done.report(0);
    }
}

/// nginx's status for a request whose client closed the connection before the answer.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A request that made it to the pipeline: its response and the concurrency places it holds.
type Served = (Response, Vec<ConcurrencyGuard>);

/// A phase that answered the request itself (a CORS preflight, a refusal a browser must be able
/// to read) breaks with that answer; the request goes no further but counts as served.
type Next<T> = ControlFlow<Response, T>;

/// A request that passed routing and authentication: what its exchange is built from.
struct Accepted<'a> {
    host: String,
    /// The Host header as sent (for `X-Forwarded-Host`).
    host_field: Option<&'a HeaderValue>,
    /// Normalised (see `path`).
    path: &'a str,
    length: Option<u64>,
    matched: RouteMatch<'a>,
    subscription: Option<Arc<CompiledSubscription>>,
    /// The certificate the client presented in its TLS handshake (mutual TLS).
    client_certificate: Option<Arc<ClientCertificate>>,
    /// Whether it is traced: the `traceparent` the backend gets.
    trace: &'a otel::Decision,
}

/// Admit → normalise → route → authenticate → build the exchange → run its pipeline.
async fn serve(
    req: &Request,
    fields: &Fields<'_>,
    payload: actix_web::dev::Payload,
    traffic: &Traffic,
    record: &mut RequestRecord,
    trace: &mut otel::Decision,
) -> Result<Served, GatewayError> {
    let length = admit(req, fields, traffic)?;
    // One load: the whole request sees the configuration that was current when it arrived.
    let Some(table) = traffic.table.load_full() else {
        return Err(GatewayError::no_configuration());
    };
    let host = request_host(req, fields.host);
    let tls = h2_server::conn_data::<TlsInfo>(req);
    super::tls::check_host(&table, &host, tls.as_ref())?;
    let normalized = normalise(req, &table, &host)?;
    let matched = match route(req, &table, &host, &normalized, record)? {
        ControlFlow::Continue(matched) => matched,
        ControlFlow::Break(res) => return Ok((res, Vec::new())),
    };
    trace.route(
        &normalized.path[..matched.prefix_len],
        &matched.operation.url_template,
    );
    let subscription = match authenticate(req, fields.key, traffic, &table, &matched, record)? {
        ControlFlow::Continue(subscription) => subscription,
        ControlFlow::Break(res) => return Ok((res, Vec::new())),
    };
    let handshake = super::upgrade::requested(req)?;
    let accepted = Accepted {
        host,
        host_field: fields.host,
        path: &normalized.path,
        length,
        matched,
        subscription,
        client_certificate: tls.and_then(|t| t.client),
        trace,
    };
    let (payload, has_body) = request_body(req, payload, length).await;
    // A WebSocket handshake's body is the client's side of the connection once upgraded.
    let (payload, upgrade) = match handshake {
        Some(h) => (
            actix_web::dev::Payload::None,
            Some(super::upgrade::client_side(req, h, payload)),
        ),
        None => (payload, None),
    };
    let mut ex = build_exchange(
        req,
        payload,
        has_body,
        traffic,
        &table,
        accepted,
        record.client_ip,
    );
    ex.upgrade = upgrade;
    let served = run(&mut ex, traffic, record).await;
    trace.adopt(ex.trace.take());
    Ok(served)
}

/// The request body and whether there is one. HTTP/1 says so in its headers; HTTP/2 frames a
/// body without `Content-Length` or chunked encoding, so whether one follows is known from the
/// stream (a request without one ends with its headers): the gateway's HTTP/2 server says so
/// ([`H2Stream::has_body`]); for any other HTTP/2 request the first chunk is read here and put
/// back in front of the rest.
async fn request_body(
    req: &Request,
    mut payload: actix_web::dev::Payload,
    length: Option<u64>,
) -> (actix_web::dev::Payload, bool) {
    if let Some(length) = length {
        return (payload, length > 0);
    }
    if let Some(stream) = req.extensions().get::<H2Stream>() {
        return (payload, stream.has_body);
    }
    if req.version() != actix_web::http::Version::HTTP_2 {
        return (
            payload,
            req.headers().contains_key(header::TRANSFER_ENCODING),
        );
    }
    use futures_util::StreamExt;
    match payload.next().await {
        None => (actix_web::dev::Payload::None, false),
        Some(first) => {
            let rest: actix_http::BoxedPayloadStream =
                Box::pin(futures_util::stream::once(async move { first }).chain(payload));
            (actix_web::dev::Payload::from(rest), true)
        }
    }
}

/// The limits that need nothing but the request line and headers; the body's announced length.
fn admit(
    req: &Request,
    fields: &Fields<'_>,
    traffic: &Traffic,
) -> Result<Option<u64>, GatewayError> {
    // The request line counts too: a huge target must not slip past the header limit.
    let target_bytes = req.uri().path_and_query().map_or(0, |t| t.as_str().len());
    if target_bytes > traffic.max_header_bytes {
        return Err(GatewayError::uri_too_long(traffic.max_header_bytes));
    }
    let header_bytes = req.method().as_str().len() + target_bytes + 12 + fields.bytes;
    if header_bytes > traffic.max_header_bytes {
        return Err(GatewayError::headers_too_large(traffic.max_header_bytes));
    }
    let length = fields
        .content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|l| l > traffic.max_body_bytes as u64) {
        return Err(GatewayError::body_too_large(traffic.max_body_bytes));
    }
    Ok(length)
}

/// The path, normalised once: routing, the backend path, the cache key and `{request.path}` all
/// see this path, never the raw one (see `path`).
fn normalise<'r>(
    req: &'r Request,
    table: &CompiledTable,
    host: &str,
) -> Result<Normalized<'r>, GatewayError> {
    let normalized = path::normalize(req.uri().path()).map_err(GatewayError::bad_path)?;
    if let Some(climbed_to) = normalized.climbed_to
        && table
            .api_prefix(host, req.uri().path())
            .is_some_and(|prefix| climbed_to < path::segments(prefix))
    {
        // `..` left the API the raw path names: refused, never re-routed elsewhere.
        return Err(GatewayError::bad_path(path::PathError::LeftApi));
    }
    Ok(normalized)
}

/// The operation: host → path → version → method. A preflight for a path whose operations take
/// other methods is answered here, from the `cors` policy of the operation it asks about.
fn route<'t>(
    req: &Request,
    table: &'t CompiledTable,
    host: &str,
    normalized: &Normalized<'_>,
    record: &mut RequestRecord,
) -> Result<Next<RouteMatch<'t>>, GatewayError> {
    let headers = req.headers();
    let path: &str = &normalized.path;
    let query = req.uri().query().unwrap_or("");
    let method = req.method();
    let preflight = pipeline::is_preflight(method, headers);
    let preflight_method = preflight
        .then(|| headers.get(header::ACCESS_CONTROL_REQUEST_METHOD))
        .flatten()
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let version_of = |scheme: VersionScheme, name: &str| -> Option<&str> {
        match scheme {
            VersionScheme::Header => headers.get(name).and_then(|v| v.to_str().ok()),
            VersionScheme::Query => query_raw(query, name),
            VersionScheme::Segment => None,
        }
    };
    let outcome = table.route(&RouteRequest {
        host,
        path,
        method,
        preflight_method: preflight_method.as_ref(),
        version: &version_of,
    });
    let matched = match outcome {
        RouteOutcome::Matched(m) => m,
        RouteOutcome::NotFound { api: None } => {
            return Err(GatewayError::not_found(format!(
                "Resource not found: no API is published at '{path}' on host '{host}'."
            )));
        }
        RouteOutcome::NotFound { api: Some(api) } => {
            record.api = Some(api.clone());
            return Err(GatewayError::not_found(format!(
                "Resource not found: API '{api}' has no operation matching {method} {path}."
            )));
        }
        RouteOutcome::UnknownVersion {
            api,
            scheme,
            parameter,
            known,
        } => {
            let how = match scheme {
                VersionScheme::Header => format!("header '{parameter}'"),
                _ => format!("query parameter '{parameter}'"),
            };
            return Err(GatewayError::not_found(format!(
                "Resource not found: API '{api}' needs a version in the {how}; known versions: {}.",
                known.join(", ")
            )));
        }
        RouteOutcome::MethodNotAllowed {
            allow,
            preflight: p,
        } => {
            if preflight
                && let Some((api, op)) = p
                && let Some(cors) = &op.preflight_cors
                && let Some(res) = pipeline::preflight_response(cors, headers)
            {
                record.api = Some(api.name.clone());
                record.operation = Some(op.name.clone());
                record.access_log = api.access_log;
                return Ok(ControlFlow::Break(res));
            }
            return Err(GatewayError::method_not_allowed(method.as_str(), allow));
        }
    };
    let (api, op) = (matched.api, matched.operation);
    record.api = Some(api.name.clone());
    record.operation = Some(op.name.clone());
    record.access_log = api.access_log;
    if normalized
        .climbed_to
        .is_some_and(|c| c < path::segments(&path[..matched.prefix_len]))
    {
        return Err(GatewayError::bad_path(path::PathError::LeftApi));
    }
    if !op.allow_encoded_slashes
        && matched
            .params
            .iter()
            .any(|(_, v)| path::has_encoded_slash(v))
    {
        return Err(GatewayError::not_found(format!(
            "Resource not found: operation '{}' of API '{}' does not match an encoded '/' or '\\' in a path parameter.",
            op.name, api.name
        )));
    }
    Ok(ControlFlow::Continue(matched))
}

/// The subscription key (header first, then query) → the subscription, if the API needs or
/// accepts one.
fn authenticate(
    req: &Request,
    key_field: Option<&HeaderValue>,
    traffic: &Traffic,
    table: &CompiledTable,
    matched: &RouteMatch<'_>,
    record: &mut RequestRecord,
) -> Result<Next<Option<Arc<CompiledSubscription>>>, GatewayError> {
    let headers = req.headers();
    let query = req.uri().query().unwrap_or("");
    let key: Option<Cow<'_, str>> =
        key_field
            .and_then(header_text)
            .map(Cow::Borrowed)
            .or_else(|| {
                let name = &traffic.key_query.as_ref()?.name;
                query_raw(query, name).map(|k| Cow::Owned(percent_decode(k)))
            });
    let subscription = match check_key(traffic, table, key.as_deref(), matched.api) {
        Ok(s) => s,
        Err(err) => {
            // A browser must be able to read the 401 too.
            let mut res = Response::from_error(&err);
            if let Some(cors) = &matched.operation.preflight_cors
                && let Some(origin) = headers.get(header::ORIGIN)
                && origin.to_str().is_ok_and(|o| cors.origin_allowed(o))
            {
                pipeline::decorate(cors, origin.clone(), &mut res.headers);
                record.error_reason = Some(err.reason);
                return Ok(ControlFlow::Break(res));
            }
            return Err(err);
        }
    };
    record.subscription = subscription.as_ref().map(|s| s.name.clone());
    Ok(ControlFlow::Continue(subscription))
}

/// `v.to_str().ok()` (visible ASCII and tabs, or nothing), checked eight bytes at a time:
/// `to_str`'s loop was about 400 instructions for a subscription key of 37 bytes.
fn header_text(v: &HeaderValue) -> Option<&str> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let visible = |b: &u8| *b == b'\t' || (b' '..=b'~').contains(b);
    let bytes = v.as_bytes();
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let x = u64::from_le_bytes(word.try_into().expect("chunks of 8"));
        // Flags a word with a byte ≥ 0x80, < 0x20 (a tab included) or 0x7f; no false
        // negatives. A flagged word is then checked byte by byte.
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let del = x ^ (ONES * 0x7f);
        let del = del.wrapping_sub(ONES) & !del & HIGH;
        if ((x & HIGH) | below_space | del) != 0 && !word.iter().all(visible) {
            return None;
        }
    }
    if !words.remainder().iter().all(visible) {
        return None;
    }
    // Visible ASCII: always UTF-8.
    std::str::from_utf8(bytes).ok()
}

/// The request as the backend will see it, before any policy runs.
fn build_exchange(
    req: &Request,
    payload: actix_web::dev::Payload,
    has_body: bool,
    traffic: &Traffic,
    table: &CompiledTable,
    accepted: Accepted<'_>,
    client_ip: Option<IpAddr>,
) -> Exchange {
    let Accepted {
        host,
        host_field,
        path,
        length,
        matched,
        subscription,
        client_certificate,
        trace,
    } = accepted;
    let headers = req.headers();
    let query = req.uri().query().unwrap_or("");
    let api = matched.api.clone();
    let product = subscription.as_ref().and_then(|s| s.product().cloned());
    // Hop-by-hop headers (and those the client's `Connection` names) go before any policy runs:
    // a client must not be able to delete what policies and the gateway add.
    // Copied field by field into a map sized for what the gateway adds (up to four headers:
    // `X-Forwarded-*`, `traceparent`) and a few policy headers, leaving out the subscription
    // key: a clone, a resize and a hashed remove cost about 1,300 instructions more. Sized by
    // the names (`len_keys`, a field): `len` counts the values bucket by bucket.
    let mut request_headers = super::exchange::request_header_map(headers.len_keys() + 8);
    let key_header = traffic.key_header.as_ref();
    for (name, value) in headers {
        if key_header != Some(name) {
            request_headers.append(name.clone(), value.clone());
        }
    }
    strip_hop_by_hop(&mut request_headers);
    let h2 = req.extensions().get::<H2Stream>().cloned();
    traffic.forwarding.apply(
        req.peer_addr().map(|a| a.ip()),
        h2_server::conn_data::<Secure>(req).is_some(),
        host_field,
        &mut request_headers,
    );
    let request_id = trace
        .propagate(&mut request_headers)
        .unwrap_or_else(|| ensure_traceparent(&mut request_headers));
    // Most requests have no query: no split iterator for nothing (about 130 instructions).
    let query_pairs = if query.is_empty() {
        Vec::new()
    } else {
        query_pairs(query, traffic.key_query.as_ref())
    };
    Exchange {
        method: req.method().clone(),
        host,
        path: path.to_owned(),
        client_ip,
        client_certificate,
        request_id,
        gateway_name: table.gateway_name.clone(),
        api: api.clone(),
        operation: matched.operation_index,
        params: matched.params,
        subscription,
        product,
        request_headers,
        backend_path: path[matched.prefix_len..].to_owned(),
        query: query_pairs,
        target: Target::of(&api.backend),
        timeout_override: None,
        retry: None,
        upgrade: None,
        backend_certificate: None,
        body: if has_body {
            RequestBody::Stream { payload, length }
        } else {
            RequestBody::None
        },
        variables: Default::default(),
        calls: Default::default(),
        jwt_claims: None,
        response: None,
        error: None,
        backend_duration: None,
        request_bytes: 0,
        cache: CacheStatus::None,
        retries: 0,
        rate_limit: None,
        guards: Vec::new(),
        cors: None,
        shared_state: Default::default(),
        trailers: h2.map(|s| s.trailers),
        trace: trace.phases(),
    }
}

/// The query's pairs, raw, without the subscription key's.
fn query_pairs(query: &str, key_query: Option<&KeyQuery>) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .filter(|(k, _)| key_query.is_none_or(|q| k != &q.encoded && percent_decode(k) != q.name))
        .collect()
}

/// The pipeline of the operation for the request's product, then what the record keeps of it.
async fn run(ex: &mut Exchange, traffic: &Traffic, record: &mut RequestRecord) -> Served {
    let pipeline = ex.operation().pipeline_for(ex.product.as_deref()).clone();
    let mut response = pipeline::run(ex, &pipeline, &traffic.runtime).await;
    if let Some((cors, origin)) = ex.cors.take() {
        pipeline::decorate(&cors, origin, &mut response.headers);
    }
    record.backend_duration = ex.backend_duration;
    record.request_bytes = ex.request_bytes;
    record.cache = ex.cache;
    record.error_reason = ex.error.as_ref().map(|e| e.reason);
    record.request_id = std::mem::take(&mut ex.request_id);
    record.product = ex.product.clone();
    record.retries = ex.retries;
    record.rate_limit = ex.rate_limit;
    (response, std::mem::take(&mut ex.guards))
}

/// Checks the subscription key against the API: the subscription to use (if any), or the
/// reason to refuse.
fn check_key(
    traffic: &Traffic,
    table: &CompiledTable,
    key: Option<&str>,
    api: &CompiledApi,
) -> Result<Option<Arc<CompiledSubscription>>, GatewayError> {
    let required = api.subscription_required;
    let api = &*api.name;
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return if required {
            Err(GatewayError::missing_key(
                traffic.key_header.as_ref().map_or("", HeaderName::as_str),
                traffic.key_query.as_ref().map_or("", |q| q.name.as_str()),
            ))
        } else {
            Ok(None)
        };
    };
    let Some(sub) = table.subscription(key) else {
        // A key is not needed here: a stale one is ignored rather than refused.
        return if required {
            Err(GatewayError::invalid_key())
        } else {
            Ok(None)
        };
    };
    if !sub.allows(api) {
        return if required {
            Err(GatewayError::key_out_of_scope(api))
        } else {
            Ok(None)
        };
    }
    // Without an expiry the state is the configured one: no clock read (`Utc::now` was about
    // 190 instructions a request).
    let state = match sub.expires_at {
        None => sub.state,
        Some(_) => sub.state_at(chrono::Utc::now()),
    };
    match state {
        SubscriptionState::Active => Ok(Some(sub.clone())),
        _ if !required => Ok(None),
        SubscriptionState::Suspended => Err(GatewayError::subscription_inactive("suspended")),
        SubscriptionState::Expired => Err(GatewayError::subscription_inactive("expired")),
    }
}

/// The Host header (or the URI's authority, for HTTP/2) in lowercase, without port.
fn request_host(req: &Request, host_field: Option<&HeaderValue>) -> String {
    let raw = host_field
        .and_then(header_text)
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        // A byte search: `rsplit_once(':')`'s char searcher cost about 150 instructions.
        raw.bytes()
            .rposition(|b| b == b':')
            .map_or(raw, |i| &raw[..i])
    };
    host.to_ascii_lowercase()
}

/// A raw query parameter value by name.
fn query_raw<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    if name.is_empty() {
        return None;
    }
    query.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == name).then_some(v)
    })
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Keeps a valid W3C `traceparent` or starts a trace; returns the request id (the trace id).
fn ensure_traceparent(headers: &mut HeaderMap) -> String {
    let present = match headers.get(&TRACEPARENT) {
        Some(v) => {
            if let Ok(tp) = v.to_str()
                && valid_traceparent(tp)
            {
                return tp[3..35].to_owned();
            }
            true
        }
        None => false,
    };
    let trace: u128 = rand::random::<u128>() | 1;
    let span: u64 = rand::random::<u64>() | 1;
    // `00-<trace>-<span>-01`, written by hand: `format!` cost about 2,000 instructions here.
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-01";
    hex_into(&mut value[3..35], trace);
    hex_into(&mut value[36..52], u128::from(span));
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        // Appended when the client sent none (the usual case): `insert` looks for an old value
        // again and moves what it would return (about 100 instructions).
        if present {
            headers.insert(TRACEPARENT, v);
        } else {
            headers.append(TRACEPARENT, v);
        }
    }
    // Hex digits: always UTF-8 (`from_utf8_lossy` scanned them chunk by chunk, ~250
    // instructions).
    String::from_utf8(value[3..35].to_vec()).unwrap_or_default()
}

/// `n` in lowercase hex, right-aligned in `out` (leading zeros kept). Two digits per byte of
/// `n` from a table: a digit at a time was about 200 instructions for a `traceparent`.
fn hex_into(out: &mut [u8], mut n: u128) {
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut table = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            table[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
            i += 1;
        }
        table
    };
    let mut pairs = out.rchunks_exact_mut(2);
    for pair in &mut pairs {
        pair.copy_from_slice(&PAIRS[(n & 0xff) as usize]);
        n >>= 8;
    }
    if let [digit] = pairs.into_remainder() {
        *digit = PAIRS[(n & 0xf) as usize][1];
    }
}

fn valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

// === the end of a request ===

/// Turns the pipeline's response into the HTTP response, with a body that reports the request
/// to metrics and the observer once it has been sent.
fn finish(response: Response, mut done: Box<Done>) -> Answer {
    // Already set for a gRPC refusal: the HTTP status the gateway decided on, not its 200.
    if done.record.status == 0 {
        done.record.status = response.status.as_u16();
    }
    let body = ObservedBody {
        inner: response.body,
        sent: 0,
        done: Some(done),
    };
    let mut res = actix_http::Response::with_body(response.status, body);
    *res.headers_mut() = response.headers;
    if res.status() == StatusCode::SWITCHING_PROTOCOLS
        && res.headers().contains_key(header::UPGRADE)
    {
        // The connection carries the upgraded protocol from now on (see `upgrade`).
        res.head_mut()
            .set_connection_type(actix_http::ConnectionType::Upgrade);
    }
    res.map_into_boxed_body()
}

struct Done {
    record: RequestRecord,
    started: Instant,
    observer: Option<Arc<dyn RequestObserver>>,
    /// Released when the response is done.
    _guards: Vec<ConcurrencyGuard>,
    /// The request's access-log entry, when it was sampled.
    access: Option<Sampled>,
    /// Whether the request is traced (`[otel]`), and its spans' data when it is.
    trace: otel::Decision,
    /// A gRPC call over HTTP/2: where its `grpc-status` trailer arrives.
    grpc_trailers: Option<super::trailers::Trailers>,
}

impl Done {
    fn report(mut self: Box<Self>, sent: u64) {
        let r = &mut self.record;
        r.duration = self.started.elapsed();
        r.response_bytes = sent;
        let api = r.api.as_ref().unwrap_or(&UNMATCHED);
        let operation = r.operation.as_ref().unwrap_or(&UNMATCHED);
        request_metrics::with_series(api, operation, r.status, |series| {
            series.requests.increment(1);
            series.duration.record(r.duration.as_secs_f64());
            if let Some(d) = r.backend_duration {
                series.backend_duration.record(d.as_secs_f64());
            }
        });
        if r.grpc_status.is_none() {
            r.grpc_status = self.grpc_trailers.as_ref().and_then(|t| t.grpc_status());
        }
        if let Some(code) = r.grpc_status {
            metrics::counter!(
                "outpost_grpc_responses_total",
                "api" => api.clone(),
                "grpc_status" => status_label(code),
            )
            .increment(1);
        }
        if let Some(o) = &self.observer {
            o.observe(r);
        }
        if let Some(access) = &self.access {
            access.write(r);
        }
        std::mem::take(&mut self.trace).finish(r);
    }
}

/// `"0"`, `"14"`, … without a per-request allocation.
fn status_label(status: u16) -> Arc<str> {
    static LABELS: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| (0..600).map(|s| Arc::from(s.to_string())).collect());
    labels
        .get(usize::from(status))
        .cloned()
        .unwrap_or_else(|| Arc::from(status.to_string()))
}

/// The response body, counted; reports the request when it ends or is dropped.
struct ObservedBody {
    inner: BoxBody,
    sent: u64,
    done: Option<Box<Done>>,
}

impl MessageBody for ObservedBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => this.sent += chunk.len() as u64,
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(done) = this.done.take() {
                    done.report(this.sent);
                }
            }
            Poll::Pending => {}
        }
        polled
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done.report(self.sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_trace_is_a_valid_traceparent_whose_trace_id_is_the_request_id() {
        let mut headers = HeaderMap::new();
        let id = ensure_traceparent(&mut headers);
        let tp = headers
            .get(&TRACEPARENT)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(valid_traceparent(&tp), "{tp}");
        assert_eq!(tp.len(), 55);
        assert_eq!(&tp[3..35], id);
        assert!(tp.ends_with("-01"));
        // A valid one is kept.
        assert_eq!(ensure_traceparent(&mut headers), id);
        assert_eq!(headers.get(&TRACEPARENT).unwrap().to_str().unwrap(), tp);
    }

    #[test]
    fn the_host_is_lowercase_without_port() {
        let req = actix_http::test::TestRequest::default().finish();
        for (sent, host) in [
            (&b"Example.COM"[..], "example.com"),
            (b"example.com:8080", "example.com"),
            (b"127.0.0.1:80", "127.0.0.1"),
            (b"[::1]:443", "::1"),
            (b"[::1", "::1"),
            (b"a:b:c", "a:b"),
            (b":80", ""),
            (b"", ""),
        ] {
            let v = HeaderValue::from_bytes(sent).unwrap();
            assert_eq!(request_host(&req, Some(&v)), host, "{sent:?}");
        }
        // Not text: as if absent.
        let v = HeaderValue::from_bytes(b"\xc3\xa9.example").unwrap();
        assert_eq!(request_host(&req, Some(&v)), "");
    }

    #[test]
    fn fields_are_the_first_values_as_get_gives_them() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "a.example"),
            ("x-key", "k1"),
            ("content-type", "application/grpc"),
            ("x-key", "k2"),
            ("content-length", "3"),
            ("accept", "*/*"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let key = HeaderName::from_static("x-key");
        let fields = Fields::of(&headers, Some(&key));
        assert_eq!(fields.host, headers.get(header::HOST));
        assert_eq!(fields.content_type, headers.get(header::CONTENT_TYPE));
        assert_eq!(fields.content_length, headers.get(header::CONTENT_LENGTH));
        assert_eq!(fields.key, headers.get(&key));
        let bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        assert_eq!(fields.bytes, bytes);
        // A key header with the name of another field the gateway reads: both are found.
        let fields = Fields::of(&headers, Some(&header::HOST));
        assert_eq!(fields.key, headers.get(header::HOST));
        assert_eq!(fields.host, headers.get(header::HOST));
        assert_eq!(Fields::of(&headers, None).key, None);
    }

    #[test]
    fn the_record_has_the_method_as_sent() {
        for m in [
            "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "PURGE",
        ] {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            assert_eq!(method_text(&method), m);
        }
        assert!(matches!(method_text(&Method::GET), Cow::Borrowed("GET")));
    }

    #[test]
    fn header_text_is_to_str() {
        let key = "bench0123456789abcdef0123456789abcdef";
        for b in 0..=255u8 {
            for at in [0, 5, 7, 8, 15, 36] {
                let mut raw = key.as_bytes().to_vec();
                raw[at] = b;
                let Ok(v) = HeaderValue::from_bytes(&raw) else {
                    continue;
                };
                assert_eq!(header_text(&v), v.to_str().ok(), "{b:#x} at {at}");
            }
        }
        for text in ["", "a", "a\tb", "0123456", "01234567", "012345678", key] {
            let v = HeaderValue::from_str(text).unwrap();
            assert_eq!(header_text(&v), Some(text));
        }
    }

    #[test]
    fn hex_is_right_aligned_with_leading_zeros() {
        let mut out = [0u8; 8];
        hex_into(&mut out, 0xab_cdef);
        assert_eq!(&out, b"00abcdef");
        let mut odd = [0u8; 7];
        hex_into(&mut odd, 0xab_cdef);
        assert_eq!(&odd, b"0abcdef");
        let mut full = [0u8; 32];
        hex_into(&mut full, u128::MAX - 1);
        assert_eq!(&full, format!("{:032x}", u128::MAX - 1).as_bytes());
    }
}
