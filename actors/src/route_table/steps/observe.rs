//! `log` and `emit-metric`: what a policy tells the operators, with dimensions computed per
//! request. The gateway writes them in `src/gateway/pipeline/observe.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use outpost_model::policy::{Dimension, EmitMetric, Log, LogLevel, MAX_METRIC_DIMENSIONS};

use super::Step;
use super::cx::{StepCx, Text};

/// `log`, compiled.
#[derive(Debug)]
pub struct LogStep {
    pub level: LogLevel,
    pub message: Text,
    pub dimensions: Vec<(String, Text)>,
}

/// `emit-metric`, compiled.
#[derive(Debug)]
pub struct EmitMetricStep {
    /// The exported name: `outpost_custom_NAME_total`.
    pub metric: Arc<str>,
    pub value: u64,
    /// Label names in order (`api` comes first, set by the gateway).
    pub dimensions: Vec<(String, Text)>,
}

fn dimensions(
    cx: &mut StepCx<'_>,
    map: &BTreeMap<String, Dimension>,
) -> Option<Vec<(String, Text)>> {
    let mut ok = true;
    let mut out = Vec::with_capacity(map.len());
    for (name, d) in map {
        let field = format!("dimensions.{name}.value");
        match cx.text(&field, d.value.as_deref(), d.value_expression.as_deref()) {
            Some(Some(t)) => out.push((name.clone(), t)),
            Some(None) => {
                cx.problem(
                    &format!("dimensions.{name}"),
                    "set exactly one of value and value-expression",
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

pub(super) fn log(p: &Log, cx: &mut StepCx<'_>) -> Option<Step> {
    let message = cx.text(
        "message",
        p.message.as_deref(),
        p.message_expression.as_deref(),
    );
    let dims = dimensions(cx, &p.dimensions);
    let message = match message? {
        Some(m) => m,
        None => {
            cx.problem("", "set exactly one of message and message-expression");
            return None;
        }
    };
    Some(Step::Log(Arc::new(LogStep {
        level: p.level,
        message,
        dimensions: dims?,
    })))
}

pub(super) fn emit_metric(p: &EmitMetric, cx: &mut StepCx<'_>) -> Option<Step> {
    let mut ok = true;
    if !outpost_model::validate::is_metric_name(&p.name) || p.name.len() > 64 {
        cx.problem("name", format!("'{}' is not a metric name", p.name));
        ok = false;
    }
    if p.dimensions.len() > MAX_METRIC_DIMENSIONS {
        cx.problem(
            "dimensions",
            format!("at most {MAX_METRIC_DIMENSIONS} dimensions"),
        );
        ok = false;
    }
    let dims = dimensions(cx, &p.dimensions)?;
    ok.then(|| {
        Step::EmitMetric(Arc::new(EmitMetricStep {
            metric: format!("outpost_custom_{}_total", p.name).into(),
            value: p.value,
            dimensions: dims,
        }))
    })
}
