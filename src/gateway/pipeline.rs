//! Running an operation's compiled pipeline for one request.
//!
//! ```text
//!  inbound ──► backend ──► forward (retry) ──► outbound ──► response
//!     │           │              │                 │
//!     └───────────┴──── error ───┴─────────────────┴──► on-error ──► response
//! ```
//!
//! - `inbound` steps act on the request (headers, query, path, target) and may answer it
//!   themselves (`return-response`, `mock-response`, a `cors` preflight): the answer goes to
//!   the client as is, the backend and `outbound` are skipped.
//! - `backend` steps set the target, the timeout and the retry rule; then the request is
//!   forwarded once (see [`super::forward`]).
//! - `outbound` steps act on the response.
//! - Any failure (a policy refusal, an unreachable backend) becomes the response of a
//!   [`GatewayError`] and `on-error` runs on it, with the error in the variables
//!   `error-reason`, `error-message`, `error-source` and `error-status`
//!   (`{variable.error-message}`).
//!
//! Each step kind runs in its own file under `pipeline/`; [`run_step`] is the one exhaustive
//! `match` over the compiled [`Step`]s.

mod auth;
mod cors;
mod headers;
mod limits;
mod responses;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::dev::Payload;
use actix_web::http::header::{HeaderMap, HeaderValue};
use actix_web::http::{Method, StatusCode};
use bytes::Bytes;
use outpost_actors::route_table::CacheStatus;
use outpost_actors::route_table::steps::{CorsStep, RetryStep, Step};
use outpost_actors::route_table::table::{
    BackendUrl, CompiledApi, CompiledBackend, CompiledOperation, CompiledSubscription, Pipeline,
};
use outpost_actors::route_table::tls::TlsProfile;
use outpost_model::template::{Segment, Template, Var};

pub use cors::{decorate, is_preflight, preflight_response};
pub use limits::{ConcurrencyGuard, ConcurrencyLimiter};

use super::error::GatewayError;
use super::{forward, policies};

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
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: Arc<str>,
    pub url: BackendUrl,
    pub request_timeout: Duration,
    pub tls: Arc<TlsProfile>,
}

impl Target {
    pub fn of(b: &CompiledBackend) -> Self {
        Self {
            name: b.name.clone(),
            url: b.url.clone(),
            request_timeout: b.request_timeout,
            tls: b.tls.clone(),
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

/// What a step decided.
pub enum Flow {
    Continue,
    /// Answer the client with this, now: nothing else runs (`return-response`).
    Respond(Response),
    /// Skip the backend and run `outbound` on this response (a cache hit).
    SkipToOutbound(Response),
}

/// The section a step runs in; some steps act on the request in one and on the response in
/// another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Inbound,
    Backend,
    Outbound,
    OnError,
}

/// One request travelling through the pipeline.
pub struct Exchange {
    // What the client sent (unchanged by policies).
    pub method: Method,
    /// Lowercase, without port.
    pub host: String,
    /// Raw path as received.
    pub path: String,
    pub client_ip: Option<IpAddr>,
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
    pub body: RequestBody,
    /// `{variable.NAME}`.
    pub variables: HashMap<String, String>,
    // The answer.
    pub response: Option<Response>,
    pub error: Option<GatewayError>,
    // Accounting.
    pub backend_duration: Option<Duration>,
    pub request_bytes: u64,
    pub cache: CacheStatus,
    pub guards: Vec<ConcurrencyGuard>,
    /// The `cors` policy that allowed this request's origin, to decorate the response.
    pub cors: Option<(Arc<CorsStep>, HeaderValue)>,
    /// Post-response work of rate limits, quotas and the cache (`super::policies`).
    pub shared_state: super::policies::PolicyState,
}

impl Exchange {
    pub fn operation(&self) -> &CompiledOperation {
        &self.api.operations[self.operation]
    }

    pub fn timeout(&self) -> Duration {
        self.timeout_override.unwrap_or(self.target.request_timeout)
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
        }
    }
}

/// Runs the pipeline to a response; never fails (failures become `on-error` responses).
pub async fn run(ex: &mut Exchange, pipeline: &Pipeline, rt: &Runtime) -> Response {
    let mut res = match run_main(ex, pipeline, rt).await {
        Ok(res) => res,
        Err(err) => run_on_error(ex, pipeline, rt, err).await,
    };
    super::policies::finish(ex, rt, &mut res);
    res
}

async fn run_main(
    ex: &mut Exchange,
    pipeline: &Pipeline,
    rt: &Runtime,
) -> Result<Response, GatewayError> {
    let mut from_cache = None;
    for step in pipeline.inbound.iter() {
        match run_step(step, Phase::Inbound, ex, rt).await? {
            Flow::Continue => {}
            Flow::Respond(res) => return Ok(res),
            Flow::SkipToOutbound(res) => {
                from_cache = Some(res);
                break;
            }
        }
    }
    let response = match from_cache {
        Some(res) => res,
        None => {
            for step in pipeline.backend.iter() {
                match run_step(step, Phase::Backend, ex, rt).await? {
                    Flow::Continue => {}
                    Flow::Respond(res) => return Ok(res),
                    Flow::SkipToOutbound(res) => {
                        from_cache = Some(res);
                        break;
                    }
                }
            }
            match from_cache {
                Some(res) => res,
                None => forward::send(ex, rt).await?,
            }
        }
    };
    ex.response = Some(response);
    for step in pipeline.outbound.iter() {
        match run_step(step, Phase::Outbound, ex, rt).await? {
            Flow::Continue => {}
            Flow::Respond(res) | Flow::SkipToOutbound(res) => return Ok(res),
        }
    }
    Ok(ex.response.take().expect("set above, taken only here"))
}

async fn run_on_error(
    ex: &mut Exchange,
    pipeline: &Pipeline,
    rt: &Runtime,
    err: GatewayError,
) -> Response {
    if err.source == super::error::ErrorSource::Backend {
        tracing::debug!(api = %ex.api.name, error = %err, "backend call failed");
    }
    ex.variables
        .insert("error-reason".into(), err.reason.to_owned());
    ex.variables
        .insert("error-message".into(), err.message.to_string());
    ex.variables
        .insert("error-source".into(), err.source.as_str().to_owned());
    ex.variables
        .insert("error-status".into(), err.status.as_u16().to_string());
    ex.response = Some(Response::from_error(&err));
    ex.error = Some(err);
    for step in pipeline.on_error.iter() {
        match run_step(step, Phase::OnError, ex, rt).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Respond(res)) | Ok(Flow::SkipToOutbound(res)) => return res,
            Err(e) => {
                // An on-error policy that fails leaves the original error's answer.
                tracing::warn!(api = %ex.api.name, error = %e, "on-error policy failed");
                break;
            }
        }
    }
    ex.response.take().expect("set above")
}

/// Runs one step. The `match` is exhaustive over every compiled step kind.
pub async fn run_step(
    step: &Step,
    phase: Phase,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    match step {
        Step::SetHeader(s) => headers::set_header(s, phase, ex),
        Step::SetQueryParameter(s) => headers::set_query_parameter(s, ex),
        Step::RewriteUri(s) => headers::rewrite_uri(s, ex),
        Step::SetBackendService(s) => headers::set_backend_service(s, ex),
        Step::ForwardRequest(s) => {
            ex.timeout_override = s.timeout;
            Ok(Flow::Continue)
        }
        Step::Retry(s) => {
            ex.retry = Some(s.clone());
            Ok(Flow::Continue)
        }
        Step::MockResponse(s) => responses::mock_response(s, ex),
        Step::ReturnResponse(s) => responses::return_response(s, ex),
        Step::ValidateJwt(s) => auth::validate_jwt(s, ex),
        Step::CheckHeader(s) => auth::check_header(s, ex),
        Step::IpFilter(s) => auth::ip_filter(s, ex),
        Step::Cors(s) => cors::apply(s, ex),
        Step::LimitConcurrency(s) => limits::limit_concurrency(s, ex, rt),
        Step::RateLimit(s) => policies::limits::rate_limit(s, ex, rt).await,
        Step::RateLimitByKey(s) => policies::limits::rate_limit_by_key(s, ex, rt).await,
        Step::Quota(s) => policies::limits::quota(s, ex, rt).await,
        Step::RateLimitThenQuota(s) => policies::limits::rate_limit_then_quota(s, ex, rt).await,
        Step::CacheLookup(s) => policies::cache::cache_lookup(s, ex, rt).await,
        Step::CacheStore(s) => policies::cache::cache_store(s, ex, rt).await,
        Step::CacheLookupValue(s) => policies::cache::cache_lookup_value(s, ex, rt).await,
        Step::CacheStoreValue(s) => policies::cache::cache_store_value(s, ex, rt).await,
        Step::CacheRemoveValue(s) => policies::cache::cache_remove_value(s, ex, rt).await,
    }
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
