//! Traces: a server span per request, a child per policy phase that ran (`inbound`, `backend`,
//! `outbound`, `on-error`) and a client span for the backend call, child of the `backend`
//! phase, whose id the backend receives in `traceparent`.
//!
//! The hot path only decides and takes timestamps: when a request arrives, [`Decision::of`]
//! reads the client's `traceparent`/`tracestate` (W3C, through the SDK's propagator) and asks
//! the SDK's sampler (parent-based, ratio for the traces the gateway starts). A sampled request
//! gets its span ids then (the backend call's goes into the `traceparent` the backend
//! receives) and, on its way through the pipeline, an [`Instant`] per phase boundary
//! ([`Phases`]). The spans themselves are built only when the request is reported, all at
//! once, with the SDK's tracer (explicit ids, times and sampling result), and handed to its
//! batch span processor, which exports them from its own thread. A request that is not
//! sampled costs a propagator parse and a sampler call; with OpenTelemetry off, a `None`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use actix_http::{HttpMessage as _, Request};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    SamplingDecision, SamplingResult, Span as _, SpanBuilder, SpanContext, SpanId, SpanKind,
    Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler, SdkTracer,
    SdkTracerProvider, ShouldSample, SpanData, SpanExporter, SpanProcessor,
};
use outpost_actors::route_table::{CacheStatus, RequestRecord};

use super::OtelError;
use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Response};
use crate::gateway::phase::{PHASE_NAMES, Phases};
use crate::gateway::settings::OtelSettings;

/// Spans in one export request at most (the SDK's default).
const MAX_EXPORT_BATCH: usize = 512;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The gateway's tracer: the SDK's provider (batch processor, OTLP exporter), the sampler that
/// decides at arrival, and the W3C propagator.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    sampler: Sampler,
    ids: RandomIdGenerator,
    propagator: TraceContextPropagator,
}

impl fmt::Debug for Traces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Traces")
            .field("sampler", &self.sampler)
            .finish_non_exhaustive()
    }
}

impl Traces {
    /// The provider, exporting to `<endpoint>/v1/traces` with `client`.
    pub(super) fn start(
        settings: &OtelSettings,
        endpoint: &str,
        resource: Resource,
        client: reqwest::blocking::Client,
    ) -> Result<Self, OtelError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .with_timeout(settings.timeout)
            .build()
            .map_err(|e| OtelError::Exporter(e.to_string()))?;
        // Our own count of the spans between the tracer and the collector bounds the SDK's
        // queue (which counts its drops privately): the SDK never drops, we do, and count it.
        let queued = Arc::new(AtomicUsize::new(0));
        let limit = settings.max_queue_spans;
        let exporter = Counted {
            inner: exporter,
            queued: queued.clone(),
            exported: metrics::counter!("outpost_otel_spans_exported_total"),
            failed: metrics::counter!("outpost_otel_export_failures_total", "signal" => "traces"),
            failing: AtomicBool::new(false),
        };
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(limit)
                    .with_max_export_batch_size(MAX_EXPORT_BATCH.min(limit))
                    .with_scheduled_delay(settings.batch_delay)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded {
                inner: batch,
                queued,
                limit,
                dropped: metrics::counter!("outpost_otel_spans_dropped_total"),
            })
            .with_resource(resource)
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("outpost")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        Ok(Self {
            provider,
            tracer,
            sampler: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sampling_ratio,
            ))),
            ids: RandomIdGenerator::default(),
            propagator: TraceContextPropagator::new(),
        })
    }

    /// Exports what is queued and stops the export thread (at most `limit`).
    pub(super) fn shutdown(&self, limit: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(limit) {
            tracing::warn!(error = %e, "the span exporter did not shut down cleanly");
        }
    }

    /// Whether (and how) the request arriving now is traced.
    fn decide(self: &Arc<Self>, req: &Request) -> Decision {
        let anchor = Instant::now();
        let parent = self
            .propagator
            .extract_with_context(&Context::new(), &Headers(req.headers()));
        let client = parent.span().span_context().clone();
        let from_client = client.is_valid();
        let trace_id = if from_client {
            client.trace_id()
        } else {
            self.ids.new_trace_id()
        };
        let sampled =
            self.sampler
                .should_sample(Some(&parent), trace_id, "", &SpanKind::Server, &[], &[]);
        if sampled.decision != SamplingDecision::RecordAndSample {
            return Decision::Unsampled {
                trace_id,
                from_client,
            };
        }
        let head = req.head();
        let secure = crate::gateway::h2_server::conn_data::<crate::gateway::h2_server::Secure>(req)
            .is_some();
        Decision::Sampled(Box::new(RequestTrace {
            traces: self.clone(),
            parent,
            trace_id,
            trace_state: client.trace_state().clone(),
            server: self.ids.new_span_id(),
            call: self.ids.new_span_id(),
            wall: SystemTime::now(),
            anchor,
            path: head.uri.path().to_owned(),
            host: head
                .headers
                .get(actix_web::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| head.uri.authority().map(|a| a.as_str()))
                .map(str::to_owned),
            scheme: if secure { "https" } else { "http" },
            version: match head.version {
                actix_web::http::Version::HTTP_2 => "2",
                actix_web::http::Version::HTTP_10 => "1.0",
                _ => "1.1",
            },
            route: None,
            phases: None,
        }))
    }
}

/// The client's request headers, for the propagator.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// What tracing does for one request.
#[derive(Default)]
pub enum Decision {
    /// OpenTelemetry off: the gateway passes `traceparent` on as before.
    #[default]
    Off,
    /// Not recorded; the backend is told so (`traceparent` flags `00`) unless the client's own
    /// `traceparent` goes on unchanged.
    Unsampled {
        trace_id: TraceId,
        from_client: bool,
    },
    Sampled(Box<RequestTrace>),
}

impl Decision {
    /// Decides for the request arriving now; nothing at all when tracing is off.
    #[inline]
    pub fn of(traces: Option<&Arc<Traces>>, req: &Request) -> Self {
        match traces {
            None => Decision::Off,
            Some(t) => t.decide(req),
        }
    }

    /// The operation matched: `http.route` is its API prefix and URL template.
    #[inline]
    pub fn route(&mut self, prefix: &str, template: &str) {
        if let Decision::Sampled(t) = self {
            t.route = Some(format!("{prefix}{template}"));
        }
    }

    /// Writes the `traceparent` the backend receives and returns the request id (the trace
    /// id); `None` when tracing is off (the caller keeps the client's or starts one).
    pub fn propagate(&self, headers: &mut HeaderMap) -> Option<String> {
        match self {
            Decision::Off => None,
            Decision::Unsampled {
                trace_id,
                from_client: true,
            } => Some(trace_id.to_string()),
            Decision::Unsampled {
                trace_id,
                from_client: false,
            } => {
                let span = RandomIdGenerator::default().new_span_id();
                set_traceparent(headers, *trace_id, span, TraceFlags::NOT_SAMPLED);
                Some(trace_id.to_string())
            }
            Decision::Sampled(t) => {
                set_traceparent(headers, t.trace_id, t.call, TraceFlags::SAMPLED);
                Some(t.trace_id.to_string())
            }
        }
    }

    /// Where the pipeline records its phases (`None` unless sampled).
    #[inline]
    pub fn phases(&self) -> Option<Box<Phases>> {
        match self {
            Decision::Sampled(_) => Some(Box::new(Phases::default())),
            _ => None,
        }
    }

    /// The phases the pipeline recorded.
    #[inline]
    pub fn adopt(&mut self, phases: Option<Box<Phases>>) {
        if let Decision::Sampled(t) = self {
            t.phases = phases;
        }
    }

    /// The request is over: its spans go to the exporter.
    #[inline]
    pub fn finish(self, record: &RequestRecord) {
        if let Decision::Sampled(t) = self {
            t.emit(record);
        }
    }
}

fn set_traceparent(headers: &mut HeaderMap, trace: TraceId, span: SpanId, flags: TraceFlags) {
    let value = format!("00-{trace}-{span}-{:02x}", flags.to_u8());
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(TRACEPARENT, v);
    }
}

/// A sampled request: its ids, where it started and what its server span says.
pub struct RequestTrace {
    traces: Arc<Traces>,
    /// The client's context (its span the server span's parent), or an empty one.
    parent: Context,
    trace_id: TraceId,
    trace_state: TraceState,
    server: SpanId,
    /// The backend call's span: the parent the backend sees in `traceparent`.
    call: SpanId,
    /// When the request arrived, on both clocks: spans are placed on the wall clock, measured
    /// on the monotonic one.
    wall: SystemTime,
    anchor: Instant,
    path: String,
    host: Option<String>,
    scheme: &'static str,
    version: &'static str,
    route: Option<String>,
    phases: Option<Box<Phases>>,
}

/// The backend call is over (its response head arrived, or it failed).
#[inline]
pub fn call_ended(ex: &mut Exchange, sent: &Result<Response, GatewayError>) {
    if ex.trace.is_some() {
        record_call(ex, sent);
    }
}

#[cold]
fn record_call(ex: &mut Exchange, sent: &Result<Response, GatewayError>) {
    let target = &ex.target;
    let url = &target.url;
    let (address, port) = split_authority(&url.authority);
    let port = port.unwrap_or(if url.https { 443 } else { 80 });
    let mut attributes = vec![
        KeyValue::new("http.request.method", method_name(ex.method.as_str())),
        KeyValue::new("server.address", address.to_owned()),
        KeyValue::new("server.port", i64::from(port)),
        // Without the query string: it may carry credentials.
        KeyValue::new(
            "url.full",
            format!(
                "{}://{}{}{}",
                if url.https { "https" } else { "http" },
                url.authority,
                url.base_path,
                ex.backend_path
            ),
        ),
        KeyValue::new("outpost.backend", target.name.clone()),
    ];
    if ex.retries > 0 {
        attributes.push(KeyValue::new(
            "http.request.resend_count",
            i64::from(ex.retries),
        ));
    }
    let Some(Some(call)) = ex.trace.as_mut().map(|p| p.call.as_mut()) else {
        return;
    };
    call.end = Some(Instant::now());
    match sent {
        Ok(res) => call.status = Some(res.status.as_u16()),
        Err(e) => call.error = Some(e.reason),
    }
    call.attributes = attributes;
}

/// `host:port` → (host, port); `[v6]:port` keeps the address without brackets.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()),
        None => (authority, None),
    }
}

/// The method as the semantic conventions name it: a known one, or `_OTHER`.
fn method_name(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "_OTHER",
    }
}

impl RequestTrace {
    fn at(&self, t: Instant) -> SystemTime {
        self.wall + t.saturating_duration_since(self.anchor)
    }

    fn child_context(&self, parent: SpanId) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            self.trace_id,
            parent,
            TraceFlags::SAMPLED,
            false,
            self.trace_state.clone(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &self,
        parent: &Context,
        id: SpanId,
        name: impl Into<std::borrow::Cow<'static, str>>,
        kind: SpanKind,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
        status: Status,
    ) {
        let mut builder = SpanBuilder::from_name(name);
        builder.trace_id = Some(self.trace_id);
        builder.span_id = Some(id);
        builder.span_kind = Some(kind);
        builder.start_time = Some(start);
        builder.end_time = Some(end);
        builder.attributes = Some(attributes);
        builder.status = status;
        // Sampled at arrival: the SDK's sampler is not asked again.
        builder.sampling_result = Some(SamplingResult {
            decision: SamplingDecision::RecordAndSample,
            attributes: Vec::new(),
            trace_state: self.trace_state.clone(),
        });
        let mut span = self.traces.tracer.build_with_context(builder, parent);
        span.end_with_timestamp(end);
    }

    /// Builds the request's spans and hands them to the batch processor.
    fn emit(mut self: Box<Self>, r: &RequestRecord) {
        let now = Instant::now();
        let end = self.at(now);
        let phases = self.phases.take();
        if let Some(phases) = &phases {
            let server_cx = self.child_context(self.server);
            let mut backend_phase = None;
            for (i, span) in phases.spans.iter().enumerate() {
                let Some(span) = span else { continue };
                let id = self.traces.ids.new_span_id();
                if i == 1 {
                    backend_phase = Some(id);
                }
                let mut attributes = Vec::new();
                let status = match span.error {
                    Some(reason) => {
                        attributes.push(KeyValue::new("error.type", reason));
                        Status::error(reason)
                    }
                    None => Status::Unset,
                };
                self.span(
                    &server_cx,
                    id,
                    PHASE_NAMES[i],
                    SpanKind::Internal,
                    self.at(span.start),
                    self.at(span.end.unwrap_or(now)),
                    attributes,
                    status,
                );
            }
            if let Some(call) = &phases.call {
                let parent = self.child_context(backend_phase.unwrap_or(self.server));
                let mut attributes = call.attributes.clone();
                let mut status = Status::Unset;
                if let Some(code) = call.status {
                    attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
                    if code >= 400 {
                        attributes.push(KeyValue::new("error.type", code.to_string()));
                        status = Status::error("");
                    }
                }
                if let Some(reason) = call.error {
                    attributes.push(KeyValue::new("error.type", reason));
                    status = Status::error(reason);
                }
                let method = attributes
                    .first()
                    .and_then(|kv| match &kv.value {
                        opentelemetry::Value::String(s) => Some(s.as_str().to_owned()),
                        _ => None,
                    })
                    .unwrap_or_else(|| r.method.clone().into_owned());
                self.span(
                    &parent,
                    self.call,
                    method,
                    SpanKind::Client,
                    self.at(call.start),
                    self.at(call.end.unwrap_or(now)),
                    attributes,
                    status,
                );
            }
        }
        let method = method_name(&r.method);
        let name = match &self.route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        };
        let mut attributes = Vec::with_capacity(20);
        attributes.push(KeyValue::new("http.request.method", method));
        attributes.push(KeyValue::new("url.path", std::mem::take(&mut self.path)));
        attributes.push(KeyValue::new("url.scheme", self.scheme));
        if let Some(host) = &self.host {
            let (address, port) = split_authority(host);
            attributes.push(KeyValue::new("server.address", address.to_owned()));
            if let Some(port) = port {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        attributes.push(KeyValue::new("network.protocol.version", self.version));
        if let Some(ip) = r.client_ip {
            attributes.push(KeyValue::new("client.address", ip.to_string()));
        }
        if let Some(route) = self.route.take() {
            attributes.push(KeyValue::new("http.route", route));
        }
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(r.status),
        ));
        attributes.push(KeyValue::new(
            "http.request.body.size",
            r.request_bytes as i64,
        ));
        attributes.push(KeyValue::new(
            "http.response.body.size",
            r.response_bytes as i64,
        ));
        for (key, value) in [
            ("outpost.api", &r.api),
            ("outpost.operation", &r.operation),
            ("outpost.product", &r.product),
            ("outpost.subscription", &r.subscription),
        ] {
            if let Some(v) = value {
                attributes.push(KeyValue::new(key, v.clone()));
            }
        }
        match r.cache {
            CacheStatus::Hit => attributes.push(KeyValue::new("outpost.cache", "hit")),
            CacheStatus::Miss => attributes.push(KeyValue::new("outpost.cache", "miss")),
            _ => {}
        }
        if r.retries > 0 {
            attributes.push(KeyValue::new("outpost.retries", i64::from(r.retries)));
        }
        if let Some(code) = r.grpc_status {
            attributes.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
        }
        let mut status = Status::Unset;
        if let Some(reason) = r.error_reason {
            attributes.push(KeyValue::new("outpost.error", reason));
        }
        if r.status >= 500 {
            attributes.push(KeyValue::new(
                "error.type",
                r.error_reason
                    .map_or_else(|| r.status.to_string(), str::to_owned),
            ));
            status = Status::error(r.error_reason.unwrap_or(""));
        }
        let start = self.wall;
        self.span(
            &self.parent,
            self.server,
            name,
            SpanKind::Server,
            start,
            end,
            attributes,
            status,
        );
    }
}

/// The batch processor, bounded by our own count of the spans it holds (queued or being
/// exported), so that drops are counted in `/metrics`.
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    limit: usize,
    dropped: metrics::Counter,
}

impl fmt::Debug for Bounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bounded")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.limit {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.increment(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it sends and what fails (and logging the first failure
/// of a run of them).
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
    exported: metrics::Counter,
    failed: metrics::Counter,
    failing: AtomicBool,
}

impl<E: fmt::Debug> fmt::Debug for Counted<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counted")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.fetch_sub(n, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                self.exported.increment(n as u64);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("span export to the OTLP endpoint works again");
                }
            }
            Err(e) => {
                self.failed.increment(1);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, spans = n, "span export to the OTLP endpoint failed (counted in outpost_otel_export_failures_total)");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_address_and_port() {
        assert_eq!(
            split_authority("api.example:8443"),
            ("api.example", Some(8443))
        );
        assert_eq!(split_authority("api.example"), ("api.example", None));
        assert_eq!(split_authority("[::1]:9000"), ("::1", Some(9000)));
        assert_eq!(split_authority("[::1]"), ("::1", None));
    }

    #[test]
    fn unknown_methods_are_other() {
        assert_eq!(method_name("GET"), "GET");
        assert_eq!(method_name("PROPFIND"), "_OTHER");
    }
}
