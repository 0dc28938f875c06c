//! `log` and `emit-metric`: a structured event in the process log, a counter on `/metrics`,
//! with dimensions computed per request.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, LazyLock};

use dashmap::DashMap;
use outpost_actors::route_table::steps::{EmitMetricStep, LogStep, Text};
use outpost_model::policy::LogLevel;

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow};

/// Distinct label sets one custom metric may have on a gateway. Past it, samples go to the
/// series whose dimensions are all [`OVERFLOW`], and `outpost_custom_metric_overflow_total`
/// counts them: the totals stay right and the scrape stays bounded.
pub const MAX_SERIES_PER_METRIC: usize = 1000;
/// The label value of the overflow series.
pub const OVERFLOW: &str = "_overflow";
/// Longest label value; a longer one is cut (at a character boundary).
pub const MAX_LABEL_BYTES: usize = 128;

/// Label sets seen, by a hash of the metric and its label values.
static SERIES: LazyLock<DashMap<u64, ()>> = LazyLock::new(DashMap::new);
/// Label sets per metric.
static COUNTS: LazyLock<DashMap<Arc<str>, usize>> = LazyLock::new(DashMap::new);
static HASHER: LazyLock<std::collections::hash_map::RandomState> = LazyLock::new(Default::default);

fn dimension_values(
    dims: &[(String, Text)],
    ex: &Exchange,
    what: &str,
) -> Result<Vec<String>, GatewayError> {
    dims.iter()
        .map(|(_, t)| super::expr::render(t, ex, what))
        .collect()
}

pub(super) fn log(s: &LogStep, ex: &Exchange) -> Result<Flow, GatewayError> {
    let message = super::expr::render(&s.message, ex, "log")?;
    let values = dimension_values(&s.dimensions, ex, "log")?;
    let dimensions = serde_json::Value::Object(
        s.dimensions
            .iter()
            .zip(values)
            .map(|((name, _), v)| (name.clone(), serde_json::Value::String(v)))
            .collect(),
    )
    .to_string();
    let (api, operation, request_id) =
        (&*ex.api.name, &*ex.operation().name, ex.request_id.as_str());
    macro_rules! event {
        ($level:ident) => {
            tracing::$level!(
                target: "outpost::policy",
                api,
                operation,
                request_id,
                dimensions = %dimensions,
                "{message}"
            )
        };
    }
    match s.level {
        LogLevel::Debug => event!(debug),
        LogLevel::Info => event!(info),
        LogLevel::Warn => event!(warn),
        LogLevel::Error => event!(error),
    }
    Ok(Flow::Continue)
}

pub(super) fn emit_metric(s: &EmitMetricStep, ex: &Exchange) -> Result<Flow, GatewayError> {
    let mut values = dimension_values(&s.dimensions, ex, "emit-metric")?;
    for v in &mut values {
        if v.len() > MAX_LABEL_BYTES {
            let mut cut = MAX_LABEL_BYTES;
            while !v.is_char_boundary(cut) {
                cut -= 1;
            }
            v.truncate(cut);
        }
    }
    let api = &*ex.api.name;
    if !admit(&s.metric, api, &values) {
        metrics::counter!("outpost_custom_metric_overflow_total", "metric" => s.metric.to_string())
            .increment(1);
        for v in &mut values {
            OVERFLOW.clone_into(v);
        }
    }
    let mut labels = Vec::with_capacity(values.len() + 1);
    labels.push(metrics::Label::new("api", api.to_owned()));
    for ((name, _), v) in s.dimensions.iter().zip(values) {
        labels.push(metrics::Label::new(name.clone(), v));
    }
    metrics::counter!(s.metric.to_string(), labels).increment(s.value);
    Ok(Flow::Continue)
}

/// Whether this label set is one of the metric's first [`MAX_SERIES_PER_METRIC`]. A known set
/// costs one read of a sharded map; only a new one takes the metric's entry to count it.
fn admit(metric: &Arc<str>, api: &str, values: &[String]) -> bool {
    let mut h = HASHER.build_hasher();
    h.write(metric.as_bytes());
    h.write_u8(0xff);
    h.write(api.as_bytes());
    for v in values {
        h.write_u8(0xff);
        h.write(v.as_bytes());
    }
    let key = h.finish();
    if SERIES.contains_key(&key) {
        return true;
    }
    let mut count = COUNTS.entry(metric.clone()).or_insert(0);
    match SERIES.entry(key) {
        dashmap::Entry::Occupied(_) => true,
        dashmap::Entry::Vacant(slot) if *count < MAX_SERIES_PER_METRIC => {
            *count += 1;
            slot.insert(());
            true
        }
        dashmap::Entry::Vacant(_) => false,
    }
}
