//! The gateway's metrics over OTLP: every `metrics_interval_secs`, a thread renders the
//! process's Prometheus registry (the one `/metrics` serves), converts it to an OTLP
//! `ExportMetricsServiceRequest` and posts it to `<endpoint>/v1/metrics`.
//!
//! Why read the registry rather than record twice: the request path already records each
//! metric once, into handles the workers keep (`request_metrics`); a second recorder behind a
//! fan-out would double that cost on every request, for a reader that wants the values once a
//! minute. Reading the registry costs the hot path nothing. The text exposition format is the
//! registry's one public view, and it maps to OTLP one to one, as the OpenTelemetry
//! Collector's Prometheus receiver maps it: counters → monotonic cumulative sums, gauges →
//! gauges, summaries (the exporter's default for histograms) → summaries with their
//! quantiles, histograms → explicit-bucket histograms. The SDK's metrics API could not carry
//! the summaries (it has no summary instrument), so the messages are built here from the OTLP
//! protobuf types (`opentelemetry-proto`).

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint, metric, number_data_point,
    summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

/// The export thread; [`MetricsExport::stop`] sends a last export and waits for it.
pub(super) struct MetricsExport {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl MetricsExport {
    pub(super) fn start(
        client: reqwest::blocking::Client,
        url: String,
        interval: Duration,
        resource: Resource,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel();
        let exported = metrics::counter!("outpost_otel_exports_total", "signal" => "metrics");
        let failed = metrics::counter!("outpost_otel_export_failures_total", "signal" => "metrics");
        let thread = std::thread::Builder::new()
            .name("otel-metrics".into())
            .spawn(move || {
                let start = unix_nanos(SystemTime::now());
                let mut failing = false;
                let mut export = || {
                    let Some(handle) = crate::prometheus::prometheus() else {
                        return;
                    };
                    let request = to_otlp(&handle.render(), &resource, start, unix_nanos(SystemTime::now()));
                    let sent = client
                        .post(&url)
                        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                        .body(request.encode_to_vec())
                        .send()
                        .and_then(reqwest::blocking::Response::error_for_status);
                    match sent {
                        Ok(_) => {
                            exported.increment(1);
                            if std::mem::take(&mut failing) {
                                tracing::info!("metric export to the OTLP endpoint works again");
                            }
                        }
                        Err(e) => {
                            failed.increment(1);
                            if !std::mem::replace(&mut failing, true) {
                                tracing::warn!(error = %e, "metric export to the OTLP endpoint failed (counted in outpost_otel_export_failures_total)");
                            }
                        }
                    }
                };
                loop {
                    match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => export(),
                        // Stopping: the last values go out too.
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                            export();
                            return;
                        }
                    }
                }
            })?;
        Ok(Self { stop, thread })
    }

    /// Sends the last values and waits (at most `limit`) for the thread to end.
    pub(super) fn stop(self, limit: Duration) {
        let _ = self.stop.send(());
        let deadline = std::time::Instant::now() + limit;
        while !self.thread.is_finished() {
            if std::time::Instant::now() >= deadline {
                tracing::warn!("the OTLP metric export did not finish in time");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.thread.join();
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The OTLP resource of the SDK's resource (the same one the spans carry).
pub(super) fn resource(resource: &opentelemetry_sdk::Resource) -> Resource {
    Resource {
        attributes: resource
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.as_str().to_owned(),
                value: Some(AnyValue {
                    value: Some(match v {
                        opentelemetry::Value::Bool(b) => any_value::Value::BoolValue(*b),
                        opentelemetry::Value::I64(i) => any_value::Value::IntValue(*i),
                        opentelemetry::Value::F64(f) => any_value::Value::DoubleValue(*f),
                        other => any_value::Value::StringValue(other.as_str().into_owned()),
                    }),
                }),
            })
            .collect(),
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Summary,
    Histogram,
    Untyped,
}

type Labels = Vec<(String, String)>;

/// One metric family of the exposition, in the order it appeared.
struct Family {
    name: String,
    kind: Kind,
    help: String,
    /// Counters, gauges, untyped.
    points: Vec<(Labels, f64)>,
    /// Summaries and histograms: per series (labels without `quantile`/`le`), the quantiles
    /// or cumulative buckets, the sum and the count.
    series: Vec<Series>,
}

#[derive(Default)]
struct Series {
    labels: Labels,
    values: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Family {
    fn series(&mut self, labels: Labels) -> &mut Series {
        let at = match self.series.iter().position(|s| s.labels == labels) {
            Some(at) => at,
            None => {
                self.series.push(Series {
                    labels,
                    ..Series::default()
                });
                self.series.len() - 1
            }
        };
        &mut self.series[at]
    }
}

/// Parses the text exposition format (version 0.0.4) into families; lines it cannot read are
/// skipped (the registry writes none).
fn parse(text: &str) -> Vec<Family> {
    let mut families: Vec<Family> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut family = |families: &mut Vec<Family>, name: &str, kind: Kind| -> usize {
        *index.entry(name.to_owned()).or_insert_with(|| {
            families.push(Family {
                name: name.to_owned(),
                kind,
                help: String::new(),
                points: Vec::new(),
                series: Vec::new(),
            });
            families.len() - 1
        })
    };
    let mut kinds: HashMap<String, Kind> = HashMap::new();
    let mut helps: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                let kind = match kind.trim() {
                    "counter" => Kind::Counter,
                    "gauge" => Kind::Gauge,
                    "summary" => Kind::Summary,
                    "histogram" => Kind::Histogram,
                    _ => Kind::Untyped,
                };
                kinds.insert(name.to_owned(), kind);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ') {
                helps.insert(name.to_owned(), unescape(help));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((name, mut labels, value)) = sample(line) else {
            continue;
        };
        // A summary's or histogram's `_sum`, `_count` and `_bucket` series belong to it.
        let (base, part) = ["_sum", "_count", "_bucket"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                matches!(kinds.get(base), Some(Kind::Summary | Kind::Histogram))
                    .then_some((base, *suffix))
            })
            .unwrap_or((name, ""));
        let kind = kinds.get(base).copied().unwrap_or(Kind::Untyped);
        let at = family(&mut families, base, kind);
        let f = &mut families[at];
        if f.help.is_empty()
            && let Some(help) = helps.get(base)
        {
            f.help = help.clone();
        }
        match kind {
            Kind::Counter | Kind::Gauge | Kind::Untyped => f.points.push((labels, value)),
            Kind::Summary | Kind::Histogram => {
                let key = if kind == Kind::Summary {
                    "quantile"
                } else {
                    "le"
                };
                let bound = labels
                    .iter()
                    .position(|(k, _)| k == key)
                    .map(|i| labels.remove(i).1);
                let s = f.series(labels);
                match part {
                    "_sum" => s.sum = value,
                    "_count" => s.count = value,
                    _ => {
                        if let Some(bound) = bound.and_then(|b| parse_value(&b)) {
                            s.values.push((bound, value));
                        }
                    }
                }
            }
        }
    }
    families
}

/// `name{k="v",…} value [timestamp]`.
fn sample(line: &str) -> Option<(&str, Labels, f64)> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let rest = if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.trim_start_matches([',', ' ']);
            if let Some(after) = body.strip_prefix('}') {
                break after;
            }
            let (key, after) = body.split_once("=\"")?;
            // The value ends at the first quote not escaped by a backslash.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end?;
            labels.push((key.trim().to_owned(), unescape(&after[..end])));
            body = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some((name, labels, value))
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn attributes(labels: &Labels) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.clone())),
            }),
        })
        .collect()
}

/// The exposition `text` as one OTLP request; cumulative series since `start`.
fn to_otlp(text: &str, resource: &Resource, start: u64, now: u64) -> ExportMetricsServiceRequest {
    let number = |labels: &Labels, value: f64, int: bool| NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(
            if int && value.fract() == 0.0 && value >= 0.0 && value <= i64::MAX as f64 {
                number_data_point::Value::AsInt(value as i64)
            } else {
                number_data_point::Value::AsDouble(value)
            },
        ),
        ..NumberDataPoint::default()
    };
    let metrics = parse(text)
        .into_iter()
        .map(|f| {
            let data = match f.kind {
                Kind::Counter => metric::Data::Sum(Sum {
                    data_points: f.points.iter().map(|(l, v)| number(l, *v, true)).collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                Kind::Gauge | Kind::Untyped => metric::Data::Gauge(Gauge {
                    data_points: f.points.iter().map(|(l, v)| number(l, *v, false)).collect(),
                }),
                Kind::Summary => metric::Data::Summary(Summary {
                    data_points: f
                        .series
                        .iter()
                        .map(|s| SummaryDataPoint {
                            attributes: attributes(&s.labels),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            count: s.count as u64,
                            sum: s.sum,
                            quantile_values: s
                                .values
                                .iter()
                                .map(|(quantile, value)| ValueAtQuantile {
                                    quantile: *quantile,
                                    value: *value,
                                })
                                .collect(),
                            flags: 0,
                        })
                        .collect(),
                }),
                Kind::Histogram => metric::Data::Histogram(Histogram {
                    data_points: f
                        .series
                        .iter()
                        .map(|s| histogram_point(s, start, now))
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            };
            Metric {
                name: f.name,
                description: f.help,
                unit: String::new(),
                metadata: Vec::new(),
                data: Some(data),
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "outpost".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// Prometheus buckets are cumulative, with `+Inf` last; OTLP's are per bucket, with the
/// bounds without `+Inf`.
fn histogram_point(s: &Series, start: u64, now: u64) -> HistogramDataPoint {
    let mut buckets = s.values.clone();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut explicit_bounds = Vec::new();
    let mut bucket_counts = Vec::new();
    let mut below = 0.0;
    for (bound, cumulative) in &buckets {
        if bound.is_finite() {
            explicit_bounds.push(*bound);
        }
        bucket_counts.push((cumulative - below).max(0.0) as u64);
        below = *cumulative;
    }
    if buckets.last().is_none_or(|(b, _)| b.is_finite()) {
        // No `+Inf` bucket: the rest of the count is above the last bound.
        bucket_counts.push((s.count - below).max(0.0) as u64);
    }
    HistogramDataPoint {
        attributes: attributes(&s.labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        count: s.count as u64,
        sum: Some(s.sum),
        bucket_counts,
        explicit_bounds,
        ..HistogramDataPoint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP outpost_requests_total Requests served.
# TYPE outpost_requests_total counter
outpost_requests_total{api="orders",operation="any",status="200"} 3
outpost_requests_total{api="a \"quoted\" \\ api",operation="x",status="404"} 1

# TYPE outpost_ready gauge
outpost_ready 1

# TYPE outpost_request_duration_seconds summary
outpost_request_duration_seconds{api="orders",quantile="0.5"} 0.002
outpost_request_duration_seconds{api="orders",quantile="0.99"} 0.01
outpost_request_duration_seconds_sum{api="orders"} 0.02
outpost_request_duration_seconds_count{api="orders"} 3

# TYPE store_seconds histogram
store_seconds_bucket{op="get",le="0.001"} 2
store_seconds_bucket{op="get",le="0.01"} 5
store_seconds_bucket{op="get",le="+Inf"} 6
store_seconds_sum{op="get"} 0.5
store_seconds_count{op="get"} 6
"#;

    fn label(p: &[KeyValue], key: &str) -> String {
        match &p.iter().find(|kv| kv.key == key).unwrap().value {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => s.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_kind_maps_to_its_otlp_form() {
        let req = to_otlp(TEXT, &Resource::default(), 1, 2);
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "outpost_requests_total",
                "outpost_ready",
                "outpost_request_duration_seconds",
                "store_seconds"
            ]
        );
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else {
            panic!("{:?}", metrics[0]);
        };
        assert_eq!(metrics[0].description, "Requests served.");
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(3))
        );
        assert_eq!(label(&sum.data_points[0].attributes, "status"), "200");
        assert_eq!(
            label(&sum.data_points[1].attributes, "api"),
            r#"a "quoted" \ api"#
        );
        assert_eq!(sum.data_points[0].start_time_unix_nano, 1);
        assert_eq!(sum.data_points[0].time_unix_nano, 2);

        let Some(metric::Data::Gauge(gauge)) = &metrics[1].data else {
            panic!()
        };
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsDouble(1.0))
        );

        let Some(metric::Data::Summary(summary)) = &metrics[2].data else {
            panic!()
        };
        let point = &summary.data_points[0];
        assert_eq!((point.count, point.sum), (3, 0.02));
        assert_eq!(point.quantile_values.len(), 2);
        assert_eq!(point.quantile_values[1].quantile, 0.99);
        assert_eq!(point.attributes.len(), 1, "no quantile label left");

        let Some(metric::Data::Histogram(h)) = &metrics[3].data else {
            panic!()
        };
        let point = &h.data_points[0];
        assert_eq!(point.explicit_bounds, [0.001, 0.01]);
        assert_eq!(point.bucket_counts, [2, 3, 1]);
        assert_eq!(point.count, 6);
        assert_eq!(label(&point.attributes, "op"), "get");
    }
}
