//! OpenTelemetry (`[otel]`) against a real OTLP/HTTP receiver: an HTTP server in the test that
//! decodes what it receives with the protocol's own protobuf types (`opentelemetry-proto`),
//! in front of which real gateways (offline mode) proxy to the sample backend over loopback.
//! The backend's echo shows the `traceparent` it received.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};
use outpost::gateway::RunningGateway;
use outpost::gateway::settings::GatewaySettings;
use prost::Message;
use serde_json::Value;

mod support;

const KEY: &str = support::GOLD_KEY;
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// The exporter's credential: sent to the collector, never found in a span.
const COLLECTOR_TOKEN: &str = "Bearer otlp-secret-token";

/// What the receiver got: spans (with their resource's attributes), metric exports, and the
/// `authorization` header of each request.
#[derive(Default)]
struct Received {
    spans: Vec<(Vec<KeyValue>, Span)>,
    metrics: Vec<ExportMetricsServiceRequest>,
    authorization: Vec<String>,
}

#[derive(Clone, Default)]
struct Receiver {
    addr: Option<SocketAddr>,
    got: Arc<Mutex<Received>>,
}

impl Receiver {
    fn url(&self) -> String {
        format!("http://{}", self.addr.unwrap())
    }

    /// Waits until `done` holds of what arrived (exports are batched on the gateway's own
    /// schedule), and returns it; panics after a minute.
    fn wait<T>(&self, what: &str, mut done: impl FnMut(&Received) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(t) = done(&self.got.lock().unwrap()) {
                return t;
            }
            assert!(Instant::now() < deadline, "never received: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spans_of(&self, trace: &str) -> Vec<Span> {
        self.got
            .lock()
            .unwrap()
            .spans
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace)
            .map(|(_, s)| s.clone())
            .collect()
    }
}

/// An OTLP/HTTP receiver (`/v1/traces`, `/v1/metrics`, protobuf) on a free loopback port.
fn receiver() -> Receiver {
    let got = Arc::new(Mutex::new(Received::default()));
    let state = got.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(state.clone()))
                    .app_data(web::PayloadConfig::new(64 << 20))
                    .route("/v1/traces", web::post().to(traces))
                    .route("/v1/metrics", web::post().to(metrics))
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .unwrap();
            tx.send(server.addrs()[0]).unwrap();
            let _ = server.run().await;
        })
    });
    Receiver {
        addr: Some(rx.recv().unwrap()),
        got,
    }
}

fn protobuf(req: &HttpRequest) -> bool {
    req.headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf")
}

fn authorization(req: &HttpRequest) -> String {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn traces(
    req: HttpRequest,
    body: web::Bytes,
    got: web::Data<Arc<Mutex<Received>>>,
) -> HttpResponse {
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    if !protobuf(&req) {
        return HttpResponse::UnsupportedMediaType().finish();
    }
    let mut got = got.lock().unwrap();
    got.authorization.push(authorization(&req));
    for rs in export.resource_spans {
        let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.spans.push((resource.clone(), s));
            }
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .finish()
}

async fn metrics(
    req: HttpRequest,
    body: web::Bytes,
    got: web::Data<Arc<Mutex<Received>>>,
) -> HttpResponse {
    let Ok(export) = ExportMetricsServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    if !protobuf(&req) {
        return HttpResponse::UnsupportedMediaType().finish();
    }
    let mut got = got.lock().unwrap();
    got.authorization.push(authorization(&req));
    got.metrics.push(export);
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .finish()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn text(attributes: &[KeyValue], key: &str) -> String {
    match attr(attributes, key) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?} in {attributes:?}"),
    }
}

fn int(attributes: &[KeyValue], key: &str) -> i64 {
    match attr(attributes, key) {
        Some(any_value::Value::IntValue(i)) => *i,
        other => panic!("{key}: {other:?} in {attributes:?}"),
    }
}

fn config(backend: SocketAddr) -> String {
    support::orders_estate(
        backend,
        1000,
        "[{set-header: {name: X-Served-By, value: outpost}}]",
        "",
    )
}

fn start(
    dir: &std::path::Path,
    backend: SocketAddr,
    tweak: impl FnOnce(&mut GatewaySettings),
) -> RunningGateway {
    support::offline_gateway(dir, &config(backend), |settings| {
        settings.otel.service_name = "outpost-otel-test".into();
        settings.otel.headers = vec![format!("authorization={COLLECTOR_TOKEN}")];
        settings.otel.batch_delay = Duration::from_millis(50);
        settings.otel.metrics = false;
        tweak(settings);
    })
}

/// GET through the gateway; the status and the `traceparent` the backend received.
fn get(
    http: &reqwest::blocking::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>) {
    let mut req = http.get(url).header("Ocp-Apim-Subscription-Key", KEY);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().unwrap();
    let status = res.status().as_u16();
    let echo: Value = res.json().unwrap_or(Value::Null);
    let seen = echo["headers"]["traceparent"].as_str().map(str::to_owned);
    (status, seen)
}

/// `00-<trace>-<parent>-<flags>` → (trace, parent, flags).
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {:?}", names(spans)))
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

#[test]
fn spans_continue_the_client_trace_through_phases_to_the_backend_call() {
    let dir = tempfile::tempdir().unwrap();
    let otlp = receiver();
    let backend = support::sample_backend_thread();
    let gw = start(dir.path(), backend, |s| {
        s.otel.endpoint = Some(otlp.url());
    });
    let base = gw.traffic_url();
    let http = support::blocking_client();
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let (status, seen) = get(
        &http,
        &format!("{base}/orders/hello"),
        &[("traceparent", &traceparent), ("tracestate", "vendor=abc")],
    );
    assert_eq!(status, 200);
    let (trace, call_id, flags) = parts(&seen.expect("the backend received a traceparent"));
    assert_eq!(trace, TRACE, "the client's trace goes on");
    assert_ne!(
        call_id, CLIENT_SPAN,
        "the backend's parent is the gateway's span"
    );
    assert_eq!(flags, "01");

    otlp.wait("the five spans of the request", |got| {
        let n = got
            .spans
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == TRACE)
            .count();
        (n >= 5).then_some(())
    });
    let spans = otlp.spans_of(TRACE);
    assert_eq!(
        spans.len(),
        5,
        "server, inbound, backend, call, outbound: {:?}",
        names(&spans)
    );
    let server = named(&spans, "GET /orders/{*rest}");
    let inbound = named(&spans, "inbound");
    let backend_phase = named(&spans, "backend");
    let outbound = named(&spans, "outbound");
    let call = named(&spans, "GET");

    // The links: client → server → phases → backend call, whose id the backend saw.
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(server.kind, span::SpanKind::Server as i32);
    assert_eq!(server.trace_state, "vendor=abc");
    for phase in [inbound, backend_phase, outbound] {
        assert_eq!(phase.parent_span_id, server.span_id, "{}", phase.name);
        assert_eq!(phase.kind, span::SpanKind::Internal as i32);
        assert!(
            phase.start_time_unix_nano >= server.start_time_unix_nano
                && phase.end_time_unix_nano <= server.end_time_unix_nano,
            "{} within the request",
            phase.name
        );
    }
    assert_eq!(call.parent_span_id, backend_phase.span_id);
    assert_eq!(hex(&call.span_id), call_id, "the backend's parent span");
    assert_eq!(call.kind, span::SpanKind::Client as i32);
    assert!(
        call.start_time_unix_nano >= backend_phase.start_time_unix_nano
            && call.end_time_unix_nano <= backend_phase.end_time_unix_nano
    );
    assert!(inbound.end_time_unix_nano <= backend_phase.start_time_unix_nano);
    assert!(backend_phase.end_time_unix_nano <= outbound.start_time_unix_nano);

    // The server span's attributes (semantic conventions, then the gateway's own).
    let a = &server.attributes;
    assert_eq!(text(a, "http.request.method"), "GET");
    assert_eq!(text(a, "http.route"), "/orders/{*rest}");
    assert_eq!(text(a, "url.path"), "/orders/hello");
    assert_eq!(text(a, "url.scheme"), "http");
    assert_eq!(text(a, "server.address"), "127.0.0.1");
    assert_eq!(int(a, "server.port"), i64::from(gw.traffic_addr().port()));
    assert_eq!(text(a, "client.address"), "127.0.0.1");
    assert_eq!(text(a, "network.protocol.version"), "1.1");
    assert_eq!(int(a, "http.response.status_code"), 200);
    assert!(int(a, "http.response.body.size") > 100);
    assert_eq!(text(a, "outpost.api"), "orders");
    assert_eq!(text(a, "outpost.operation"), "any");
    assert_eq!(text(a, "outpost.product"), "gold");
    assert_eq!(text(a, "outpost.subscription"), "gold-sub");
    assert_eq!(
        server.status.as_ref().map_or(0, |s| s.code),
        status::StatusCode::Unset as i32
    );
    // The backend call's.
    let c = &call.attributes;
    assert_eq!(text(c, "http.request.method"), "GET");
    assert_eq!(text(c, "server.address"), "127.0.0.1");
    assert_eq!(int(c, "server.port"), i64::from(backend.port()));
    assert_eq!(text(c, "url.full"), format!("http://{backend}/hello"));
    assert_eq!(int(c, "http.response.status_code"), 200);
    assert_eq!(text(c, "outpost.backend"), "sample");

    // A failing backend, retried: the request's span is an error, the call says how often
    // it was sent again. No client traceparent: the gateway starts the trace.
    let (status, seen) = get(&http, &format!("{base}/orders/status/503"), &[]);
    assert_eq!(status, 503);
    let (trace, call_id, flags) = parts(&seen.unwrap());
    assert_eq!(flags, "01");
    otlp.wait("the retried request's spans", |got| {
        let n = got
            .spans
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace)
            .count();
        (n >= 5).then_some(())
    });
    let spans = otlp.spans_of(&trace);
    let server = named(&spans, "GET /orders/{*rest}");
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert_eq!(int(&server.attributes, "http.response.status_code"), 503);
    assert_eq!(text(&server.attributes, "error.type"), "503");
    assert_eq!(
        server.status.as_ref().map(|s| s.code),
        Some(status::StatusCode::Error as i32)
    );
    let call = named(&spans, "GET");
    assert_eq!(hex(&call.span_id), call_id);
    assert_eq!(int(&call.attributes, "http.request.resend_count"), 2);
    assert_eq!(int(&call.attributes, "http.response.status_code"), 503);

    // A refusal before the pipeline: the request's span alone, with the gateway's reason.
    let refused = http
        .get(format!("{base}/orders/x"))
        .header(
            "traceparent",
            format!("00-{}-{CLIENT_SPAN}-01", "a".repeat(32)),
        )
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let trace = "a".repeat(32);
    otlp.wait("the refused request's span", |got| {
        got.spans
            .iter()
            .any(|(_, s)| hex(&s.trace_id) == trace)
            .then_some(())
    });
    let spans = otlp.spans_of(&trace);
    assert_eq!(names(&spans), ["GET /orders/{*rest}"]);
    assert_eq!(int(&spans[0].attributes, "http.response.status_code"), 401);
    assert_eq!(
        text(&spans[0].attributes, "outpost.error"),
        "SubscriptionKeyNotFound"
    );

    // The resource, the exporter's header, and never a key.
    let got = otlp.got.lock().unwrap();
    let resource = &got.spans[0].0;
    assert_eq!(text(resource, "service.name"), "outpost-otel-test");
    assert_eq!(text(resource, "service.instance.id"), gw.instance_id());
    assert!(got.authorization.iter().all(|a| a == COLLECTOR_TOKEN));
    let everything = format!("{:?}", got.spans);
    assert!(!everything.contains(KEY), "a subscription key in a span");
    assert!(
        !everything.contains("otlp-secret"),
        "the exporter's token in a span"
    );
    drop(got);
    gw.stop();
}

/// Sends one request the client has sampled and waits for its server span: everything the
/// gateway exported before it has arrived by then (one exporter, batches in order).
fn control(otlp: &Receiver, http: &reqwest::blocking::Client, base: &str) {
    let trace = "c".repeat(32);
    let (status, _) = get(
        http,
        &format!("{base}/orders/control"),
        &[("traceparent", &format!("00-{trace}-{CLIENT_SPAN}-01"))],
    );
    assert_eq!(status, 200);
    otlp.wait("the control request's spans", |got| {
        (got.spans
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace)
            .count()
            >= 5)
            .then_some(())
    });
}

#[test]
fn sampling_zero_records_no_trace_the_gateway_starts_and_tells_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let otlp = receiver();
    let gw = start(dir.path(), support::sample_backend_thread(), |s| {
        s.otel.endpoint = Some(otlp.url());
        s.otel.sampling_ratio = 0.0;
    });
    let base = gw.traffic_url();
    let http = support::blocking_client();
    let mut traces = Vec::new();
    for i in 0..20 {
        let (status, seen) = get(&http, &format!("{base}/orders/{i}"), &[]);
        assert_eq!(status, 200);
        let (trace, _, flags) = parts(&seen.unwrap());
        assert_eq!(flags, "00", "the backend is told the trace is not sampled");
        traces.push(trace);
    }
    // A client's unsampled trace goes on unchanged, and unrecorded.
    let unsampled = format!("00-{}-{CLIENT_SPAN}-00", "d".repeat(32));
    let (_, seen) = get(
        &http,
        &format!("{base}/orders/unsampled"),
        &[("traceparent", &unsampled)],
    );
    assert_eq!(seen.as_deref(), Some(unsampled.as_str()));
    // Parent-based: the client's sampled trace is recorded whatever the ratio.
    control(&otlp, &http, &base);
    let got = otlp.got.lock().unwrap();
    let recorded: std::collections::BTreeSet<String> =
        got.spans.iter().map(|(_, s)| hex(&s.trace_id)).collect();
    assert_eq!(
        recorded.into_iter().collect::<Vec<_>>(),
        ["c".repeat(32)],
        "only the client-sampled trace"
    );
    drop(got);
    gw.stop();
}

#[test]
fn a_ratio_samples_about_that_share_and_the_backend_knows_which() {
    let dir = tempfile::tempdir().unwrap();
    let otlp = receiver();
    let gw = start(dir.path(), support::sample_backend_thread(), |s| {
        s.otel.endpoint = Some(otlp.url());
        s.otel.sampling_ratio = 0.25;
    });
    let base = gw.traffic_url();
    let http = support::blocking_client();
    let mut told = Vec::new();
    for i in 0..400 {
        let (status, seen) = get(&http, &format!("{base}/orders/{i}"), &[]);
        assert_eq!(status, 200);
        let (trace, call, flags) = parts(&seen.unwrap());
        told.push((trace, call, flags == "01"));
    }
    control(&otlp, &http, &base);
    let got = otlp.got.lock().unwrap();
    let sampled = told.iter().filter(|t| t.2).count();
    // 400 draws at 25 %: 100 expected, standard deviation under 9; ±50 is over 5.5 of them.
    assert!(
        (50..=150).contains(&sampled),
        "{sampled} of 400 sampled at 0.25"
    );
    for (trace, call, flagged) in &told {
        let calls: Vec<&Span> = got
            .spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| hex(&s.trace_id) == *trace && s.kind == span::SpanKind::Client as i32)
            .collect();
        if *flagged {
            assert_eq!(calls.len(), 1, "sampled trace {trace} recorded once");
            assert_eq!(hex(&calls[0].span_id), *call);
        } else {
            assert!(calls.is_empty(), "unsampled trace {trace} recorded");
        }
    }
    drop(got);
    gw.stop();
}

#[test]
fn gateway_metrics_arrive_over_otlp() {
    let dir = tempfile::tempdir().unwrap();
    let otlp = receiver();
    let gw = start(dir.path(), support::sample_backend_thread(), |s| {
        s.otel.endpoint = Some(otlp.url());
        s.otel.traces = false;
        s.otel.metrics = true;
        s.otel.metrics_interval = Duration::from_secs(1);
    });
    let base = gw.traffic_url();
    let http = support::blocking_client();
    for _ in 0..3 {
        assert_eq!(get(&http, &format!("{base}/orders/m"), &[]).0, 200);
    }
    let find = |got: &Received, name: &str| -> Option<Metric> {
        got.metrics.iter().rev().find_map(|m| {
            m.resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .find(|m| m.name == name)
                .cloned()
        })
    };
    // The registry is the process's: other tests' requests count there too, so this waits
    // for an export that has seen at least these three.
    let requests = otlp.wait("outpost_requests_total with the three requests", |got| {
        let m = find(got, "outpost_requests_total")?;
        let Some(metric::Data::Sum(sum)) = &m.data else {
            return None;
        };
        sum.data_points
            .iter()
            .any(|p| {
                text(&p.attributes, "api") == "orders"
                    && text(&p.attributes, "status") == "200"
                    && matches!(p.value, Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(n)) if n >= 3)
            })
            .then_some(sum.clone())
    });
    assert!(requests.is_monotonic);
    let got = otlp.got.lock().unwrap();
    let duration = find(&got, "outpost_request_duration_seconds").expect("the latency series");
    let Some(metric::Data::Histogram(histogram)) = &duration.data else {
        panic!("a histogram: {duration:?}");
    };
    let point = histogram
        .data_points
        .iter()
        .find(|p| text(&p.attributes, "api") == "orders")
        .expect("the orders API's latency");
    assert!(point.count >= 3 && point.sum.is_some_and(|s| s > 0.0));
    // The bucket bounds of src/prometheus.rs, one count per bucket and one above the last.
    assert_eq!(point.explicit_bounds.len() + 1, point.bucket_counts.len());
    assert!(point.explicit_bounds.contains(&0.005));
    assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
    let resource = got.metrics[0].resource_metrics[0]
        .resource
        .as_ref()
        .unwrap();
    assert_eq!(
        text(&resource.attributes, "service.name"),
        "outpost-otel-test"
    );
    assert!(got.authorization.iter().all(|a| a == COLLECTOR_TOKEN));
    assert!(got.spans.is_empty(), "traces are off");
    drop(got);
    gw.stop();
}

/// A collector that accepts connections and never answers: the first export hangs, so the
/// spans behind it beyond the queue's bound are dropped, and counted.
#[test]
fn spans_beyond_the_queue_are_dropped_and_counted() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), support::sample_backend_thread(), |s| {
        s.otel.endpoint = Some(format!("http://{addr}"));
        s.otel.max_queue_spans = 1;
        s.otel.timeout = Duration::from_secs(60);
    });
    let base = gw.traffic_url();
    let http = support::blocking_client();
    assert_eq!(get(&http, &format!("{base}/orders/d"), &[]).0, 200);
    let metrics = http
        .get(format!("{}/metrics", gw.ops_url()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outpost_otel_spans_dropped_total "))
        .unwrap_or_else(|| panic!("no drop counter in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    // Five spans, one place: at least four dropped (the request never waited for any).
    assert!(dropped >= 4.0, "{dropped}");
}
