//! One request on its way through the gateway ([`Exchange`]), what a step answers ([`Flow`],
//! [`Response`]) and what steps share across requests ([`Runtime`]). The proxy builds an
//! exchange, the pipeline and its steps act on it, the forwarder sends it: all of them import
//! this file, and it imports none of them, only the leaves it is made of.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::dev::Payload;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use bytes::Bytes;
use outpost_actors::cache::Fill;
use outpost_actors::route_table::CacheStatus;
use outpost_actors::route_table::client_certificate::ClientCertificate;
use outpost_actors::route_table::pool::Pool;
use outpost_actors::route_table::steps::{AuthenticationCertificateStep, CorsStep, RetryStep};
use outpost_actors::route_table::table::{
    BackendUrl, CompiledApi, CompiledBackend, CompiledOperation, CompiledSubscription,
};
use outpost_actors::route_table::tls::TlsProfile;
use outpost_actors::shared_state::{CountedBy, Decision, QuotaLimits, Verdict};
use outpost_model::policy::{OutageMode, StatusSet};
use outpost_model::resources::BackendProtocol;
use outpost_model::template::{CertField, Segment, Template, Var};

use super::concurrency::{ConcurrencyGuard, ConcurrencyLimiter};
use super::error::GatewayError;
pub use super::phase::Phase;
use super::phase::Phases;
use super::trailers::Trailers;

/// What steps share across requests, for the lifetime of the traffic server. Shared-state
/// policies (rate limits, quotas, cache) add their stores here.
pub struct Runtime {
    pub concurrency: ConcurrencyLimiter,
    /// Rate-limit and quota counters (Redis or in-process).
    pub shared: outpost_actors::shared_state::SharedState,
    /// Response and value cache.
    pub cache: outpost_actors::cache::CacheHandle,
    /// Cap on a request body the gateway has to hold (to retry it).
    pub max_body_bytes: usize,
    /// An upgraded (WebSocket) connection with no bytes either way for this long is closed.
    pub websocket_idle: Duration,
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: Arc<str>,
    pub url: BackendUrl,
    pub request_timeout: Duration,
    pub tls: Arc<TlsProfile>,
    pub protocol: BackendProtocol,
    /// A pool picks `url` per attempt ([`super::balance`]).
    pub pool: Option<Arc<Pool>>,
}

impl Target {
    pub fn of(b: &CompiledBackend) -> Self {
        Self {
            name: b.name.clone(),
            url: b.url.clone(),
            request_timeout: b.request_timeout,
            tls: b.tls.clone(),
            protocol: b.protocol,
            pool: b.pool.clone(),
        }
    }
}

/// The request body, as far as the pipeline has touched it.
pub enum RequestBody {
    None,
    /// Not read yet; `length` from `Content-Length`.
    Stream {
        payload: Payload,
        length: Option<u64>,
    },
    /// Read whole (to be sent more than once).
    Buffered(Bytes),
    /// Already sent.
    Taken,
}

impl RequestBody {
    /// The whole body, read up to `max` bytes, so that a `retry` can send it again (either
    /// HTTP version); `None` for a request without one.
    pub async fn read_whole(self, max: usize) -> Result<Option<Bytes>, GatewayError> {
        use futures_util::StreamExt;
        match self {
            RequestBody::Stream { mut payload, .. } => {
                let mut buf = bytes::BytesMut::new();
                while let Some(chunk) = payload.next().await {
                    let chunk = chunk.map_err(|e| GatewayError::bad_body(&e))?;
                    if buf.len() + chunk.len() > max {
                        return Err(GatewayError::body_too_large(max));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(Some(buf.freeze()))
            }
            RequestBody::Buffered(b) => Ok(Some(b)),
            RequestBody::None | RequestBody::Taken => Ok(None),
        }
    }
}

/// A WebSocket handshake the client sent, validated (see `super::upgrade`): what the backend's
/// handshake is made with, and the client's side of the tunnel once it is upgraded.
pub struct ClientUpgrade {
    /// `Sec-WebSocket-Key` as the client sent it.
    pub key: HeaderValue,
    /// The bytes the client sends after its handshake (WebSocket frames), until it closes.
    pub stream: Payload,
    /// Notified when the traffic server starts a graceful stop; `None` outside a server.
    pub shutdown: Option<actix_server::GracefulShutdownSignal>,
    /// The client's connection, to cut it when the gateway ends the tunnel itself.
    pub conn: Option<super::listener::ConnState>,
}

/// A response on its way to the client: from the backend (streaming), or made by the gateway.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BoxBody,
}

impl Response {
    pub fn new(status: StatusCode, content_type: Option<HeaderValue>, body: String) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert(actix_web::http::header::CONTENT_TYPE, ct);
        }
        Self {
            status,
            headers,
            body: BoxBody::new(body),
        }
    }

    pub fn from_error(e: &GatewayError) -> Self {
        let res = e.response();
        let status = res.status();
        let headers = res.headers().clone();
        Self {
            status,
            headers,
            body: res.into_body(),
        }
    }
}

/// The answer of a `send-request`, kept for the later steps of the request.
#[derive(Debug, Clone, Default)]
pub struct CallAnswer {
    /// `0` when the call failed and the step has `ignore-error`.
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body parsed, when the answer says it is JSON (`Content-Type` containing `json`) and
    /// it parses.
    pub json: Option<serde_json::Value>,
    /// Why the call failed (`ignore-error`); empty when it was answered.
    pub error: String,
}

/// What a step decided.
pub enum Flow {
    Continue,
    /// Answer the client with this, now: nothing else runs (`return-response`).
    Respond(Response),
    /// Skip the backend and run `outbound` on this response (a cache hit).
    SkipToOutbound(Response),
}

/// One request travelling through the pipeline.
pub struct Exchange {
    // What the client sent (unchanged by policies, except `method` by `set-method`).
    pub method: Method,
    /// Lowercase, without port.
    pub host: String,
    /// Raw path as received.
    pub path: String,
    pub client_ip: Option<IpAddr>,
    /// The certificate the client presented in its TLS handshake (mutual TLS).
    pub client_certificate: Option<Arc<ClientCertificate>>,
    pub request_id: String,
    pub gateway_name: Arc<str>,
    // What it matched.
    pub api: Arc<CompiledApi>,
    pub operation: usize,
    /// URL template parameters, raw (percent-encoded).
    pub params: Vec<(Arc<str>, String)>,
    pub subscription: Option<Arc<CompiledSubscription>>,
    pub product: Option<Arc<str>>,
    // The request as it will be forwarded.
    pub request_headers: HeaderMap,
    /// Path below the backend's base URL, raw.
    pub backend_path: String,
    /// Query pairs, raw (percent-encoded).
    pub query: Vec<(String, String)>,
    pub target: Target,
    /// Set by `forward-request`; otherwise the target's request timeout.
    pub timeout_override: Option<Duration>,
    pub retry: Option<Arc<RetryStep>>,
    /// Set by `authentication-certificate`: the client certificate to present to the backend.
    pub backend_certificate: Option<Arc<AuthenticationCertificateStep>>,
    pub body: RequestBody,
    /// A WebSocket handshake: the backend is asked to upgrade too, instead of a plain forward.
    pub upgrade: Option<ClientUpgrade>,
    /// `{variable.NAME}`, `context.variables` in expressions.
    pub variables: HashMap<String, String>,
    /// The answers of `send-request` steps by `response-variable-name`: `context.responses`.
    pub calls: HashMap<String, CallAnswer>,
    /// The claims of the token the last `validate-jwt` accepted: `jwt` in expressions.
    pub jwt_claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    // The answer.
    pub response: Option<Response>,
    pub error: Option<GatewayError>,
    // Accounting.
    pub backend_duration: Option<Duration>,
    pub request_bytes: u64,
    pub cache: CacheStatus,
    /// Backend attempts beyond the first (`retry`).
    pub retries: u32,
    /// The last rate-limit verdict, for the access log.
    pub rate_limit: Option<Verdict>,
    pub guards: Vec<ConcurrencyGuard>,
    /// The `cors` policy that allowed this request's origin, to decorate the response.
    pub cors: Option<(Arc<CorsStep>, HeaderValue)>,
    /// Post-response work of rate limits, quotas and the cache.
    pub shared_state: PolicyState,
    /// The client's HTTP/2 stream's trailers (`None` over HTTP/1.1): what the HTTP/2 upstream
    /// relays both ways.
    pub trailers: Option<Trailers>,
    /// The pipeline's phases, timed for a request traced by OpenTelemetry (`super::otel`);
    /// `None` otherwise.
    pub trace: Option<Box<Phases>>,
}

thread_local! {
    /// Request header maps of this worker's finished exchanges, emptied, for its next requests.
    static SPARE_HEADERS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// Spare maps kept per worker thread: one per request in flight is what a reuse needs; more
/// would only hold memory.
const SPARE_MAPS: usize = 8;
/// A map that grew beyond this many names is freed rather than kept.
const SPARE_MAX_NAMES: usize = 64;

/// An empty header map for the request to the backend with room for `names` names: a spare one
/// of this worker's when there is one. A new map (an allocation of about 3 KiB, its seed) and
/// the freeing of the last one cost about 300 instructions a request.
pub fn request_header_map(names: usize) -> HeaderMap {
    // `try_with`: nothing to take while the thread is being torn down.
    match SPARE_HEADERS
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
    {
        Some(mut map) => {
            map.reserve(names);
            map
        }
        None => HeaderMap::with_capacity(names),
    }
}

impl Drop for Exchange {
    /// Gives the request header map back to the worker's spares, emptied (its values refer to
    /// the client's and the backend's buffers: none is kept).
    fn drop(&mut self) {
        let mut map = std::mem::take(&mut self.request_headers);
        if map.capacity() == 0 || map.capacity() > SPARE_MAX_NAMES {
            return;
        }
        map.clear();
        // An exchange dropped while the thread is torn down just frees its map.
        let _ = SPARE_HEADERS.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_MAPS {
                spare.push(map);
            }
        });
    }
}

impl Exchange {
    pub fn operation(&self) -> &CompiledOperation {
        &self.api.operations[self.operation]
    }

    pub fn timeout(&self) -> Duration {
        self.timeout_override.unwrap_or(self.target.request_timeout)
    }

    /// The TLS profile to reach the target with: the target's, presenting the client
    /// certificate of `authentication-certificate` if one ran.
    pub fn backend_tls(&self) -> Result<Arc<TlsProfile>, GatewayError> {
        match &self.backend_certificate {
            None => Ok(self.target.tls.clone()),
            // Compiled for every backend's profile, so never missing; refused rather than sent
            // without the certificate if it ever were.
            Some(c) => c.profile_for(&self.target.tls).cloned().ok_or_else(|| {
                GatewayError::internal(
                    "ClientCertificateProfileMissing",
                    "No client certificate configuration for this backend.",
                )
            }),
        }
    }

    /// The query string as it will be forwarded.
    pub fn query_string(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.query.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(k);
            if !v.is_empty() {
                out.push('=');
                out.push_str(v);
            }
        }
        out
    }

    /// A query parameter's value, decoded.
    pub fn query_value(&self, name: &str) -> Option<String> {
        self.query
            .iter()
            .find(|(k, _)| percent_decode(k) == name)
            .map(|(_, v)| percent_decode(v))
    }

    /// Renders a template for this request. Unknown values render empty.
    pub fn render(&self, t: &Template) -> String {
        let mut out = String::new();
        for seg in &t.segments {
            match seg {
                Segment::Literal(l) => out.push_str(l),
                // Substituted at compile time; never reaches a compiled step.
                Segment::NamedValue(_) => {}
                Segment::Var(v) => self.push_var(&mut out, v),
            }
        }
        out
    }

    fn push_var(&self, out: &mut String, v: &Var) {
        match v {
            Var::SubscriptionId => {
                out.push_str(self.subscription.as_ref().map_or("", |s| &s.name));
            }
            Var::ProductName => out.push_str(self.product.as_deref().unwrap_or("")),
            Var::ApiName => out.push_str(&self.api.name),
            Var::OperationName => out.push_str(&self.operation().name),
            Var::GatewayName => out.push_str(&self.gateway_name),
            Var::RequestIp => {
                if let Some(ip) = self.client_ip {
                    out.push_str(&ip.to_string());
                }
            }
            Var::RequestMethod => out.push_str(self.method.as_str()),
            Var::RequestPath => out.push_str(&self.path),
            Var::RequestHost => out.push_str(&self.host),
            Var::RequestId => out.push_str(&self.request_id),
            Var::RequestHeader(h) => {
                if let Some(v) = self.request_headers.get(h.as_str())
                    && let Ok(s) = v.to_str()
                {
                    out.push_str(s);
                }
            }
            Var::RequestQuery(q) => {
                if let Some(v) = self.query_value(q) {
                    out.push_str(&v);
                }
            }
            Var::Param(p) => {
                if let Some((_, v)) = self.params.iter().find(|(k, _)| &**k == p) {
                    out.push_str(v);
                }
            }
            Var::Variable(name) => {
                if let Some(v) = self.variables.get(name) {
                    out.push_str(v);
                }
            }
            Var::ClientCertificate(field) => {
                if let Some(c) = &self.client_certificate {
                    out.push_str(match field {
                        CertField::Subject => &c.subject,
                        CertField::Issuer => &c.issuer,
                        CertField::Thumbprint => &c.thumbprint,
                        CertField::SerialNumber => &c.serial_number,
                        CertField::NotBefore => &c.not_before_text,
                        CertField::NotAfter => &c.not_after_text,
                    });
                }
            }
        }
    }
}

// === post-response work of the shared-state policies ===
//
// Some of their work happens after the response is known: refunds for `increment-condition`,
// bandwidth for quotas, `remaining-calls` headers, the cache fill. The exchange carries it to
// `pipeline::finish`; the records are plain data, their meaning lives with their family
// (`pipeline/limits.rs`, `pipeline/cache.rs`).

/// Per-request state of the shared-state policies.
#[derive(Default)]
pub struct PolicyState {
    pub(crate) limits: PendingLimits,
    pub(crate) fill: Option<PendingFill>,
    /// Added to the final response (e.g. `X-RateLimit-Remaining`).
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl PolicyState {
    /// The cache fill this request leads or owns, if any.
    pub fn fill(&self) -> Option<&Fill> {
        self.fill.as_ref().map(|f| &f.fill)
    }
}

/// Post-response work of the limits of one request.
#[derive(Default)]
pub(crate) struct PendingLimits {
    pub(crate) refunds: Vec<(Decision, StatusSet)>,
    pub(crate) quotas: Vec<PendingQuota>,
}

pub(crate) struct PendingQuota {
    pub(crate) key: String,
    pub(crate) period: Duration,
    pub(crate) limits: QuotaLimits,
    pub(crate) outage: OutageMode,
    pub(crate) condition: Option<StatusSet>,
    pub(crate) counted_by: CountedBy,
}

/// A miss waiting for `cache-store`.
pub(crate) struct PendingFill {
    pub(crate) fill: Fill,
    pub(crate) vary_by_developer: bool,
    pub(crate) has_authorization: bool,
    pub(crate) method_get: bool,
}

/// Percent-decodes a query component (`+` is a space).
pub fn percent_decode(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
