//! Compiled `rate-limit`, `rate-limit-by-key`, `quota` and `quota-by-key` steps (the route
//! table's compiler calls these; the gateway's pipeline runs them in
//! `src/gateway/policies/limits.rs`).
//!
//! Counters are scoped by where the policy is written (`id`): two policies never share a
//! counter by accident (the reference product's "one counter per key for all scopes" surprise),
//! while a policy at global or product scope counts across every API it covers.

use std::sync::Arc;
use std::time::Duration;

use awc::http::header::HeaderName;
use outpost_model::policy::{OutageMode, Quota, QuotaByKey, RateLimit, RateLimitByKey, StatusSet};
use outpost_model::template::Template;

use super::window::QuotaLimits;
use crate::route_table::steps::{StepCx, header_name};

#[derive(Debug)]
pub struct RateLimitStep {
    /// Where the policy is written; part of the counter key.
    pub id: Arc<str>,
    pub calls: u64,
    pub window: Duration,
    pub per_operation: bool,
    pub retry_after_header: HeaderName,
    pub remaining_header: HeaderName,
    pub outage: OutageMode,
}

#[derive(Debug)]
pub struct RateLimitByKeyStep {
    pub id: Arc<str>,
    pub calls: u64,
    pub window: Duration,
    pub counter_key: Template,
    /// Count only responses with these statuses (reserved at check, refunded otherwise).
    pub increment_condition: Option<StatusSet>,
    pub increment_count: u64,
    pub retry_after_header: HeaderName,
    pub remaining_header: HeaderName,
    pub outage: OutageMode,
}

#[derive(Debug)]
pub struct QuotaStep {
    pub id: Arc<str>,
    /// Bandwidth in bytes (the policy says kilobytes).
    pub limits: QuotaLimits,
    pub period: Duration,
    /// `quota-by-key`: the key template; `quota`: `None` (per subscription).
    pub counter_key: Option<Template>,
    pub increment_condition: Option<StatusSet>,
    pub outage: OutageMode,
}

fn status_set(cx: &mut StepCx<'_>, s: Option<&str>) -> Result<Option<StatusSet>, ()> {
    match s.map(StatusSet::parse).transpose() {
        Ok(set) => Ok(set),
        Err(e) => {
            cx.problem("increment-condition", e);
            Err(())
        }
    }
}

fn positive(cx: &mut StepCx<'_>, field: &str, v: u64) -> Option<u64> {
    if v == 0 {
        cx.problem(field, "must be at least 1");
        return None;
    }
    Some(v)
}

pub(crate) fn rate_limit(p: &RateLimit, cx: &mut StepCx<'_>) -> Option<RateLimitStep> {
    let calls = positive(cx, "calls", p.calls);
    let period = positive(cx, "renewal-period", p.renewal_period);
    let retry = header_name(cx, "retry-after-header-name", &p.retry_after_header_name);
    let remaining = header_name(
        cx,
        "remaining-calls-header-name",
        &p.remaining_calls_header_name,
    );
    Some(RateLimitStep {
        id: Arc::from(cx.at.as_str()),
        calls: calls?,
        window: Duration::from_secs(period?),
        per_operation: p.per_operation,
        retry_after_header: retry?,
        remaining_header: remaining?,
        outage: p.outage,
    })
}

pub(crate) fn rate_limit_by_key(
    p: &RateLimitByKey,
    cx: &mut StepCx<'_>,
) -> Option<RateLimitByKeyStep> {
    let calls = positive(cx, "calls", p.calls);
    let period = positive(cx, "renewal-period", p.renewal_period);
    let count = positive(cx, "increment-count", p.increment_count);
    let key = cx.template("counter-key", &p.counter_key);
    let condition = status_set(cx, p.increment_condition.as_deref());
    let retry = header_name(cx, "retry-after-header-name", &p.retry_after_header_name);
    let remaining = header_name(
        cx,
        "remaining-calls-header-name",
        &p.remaining_calls_header_name,
    );
    Some(RateLimitByKeyStep {
        id: Arc::from(cx.at.as_str()),
        calls: calls?,
        window: Duration::from_secs(period?),
        counter_key: key?,
        increment_condition: condition.ok()?,
        increment_count: count?,
        retry_after_header: retry?,
        remaining_header: remaining?,
        outage: p.outage,
    })
}

fn quota_limits(cx: &mut StepCx<'_>, calls: Option<u64>, kb: Option<u64>) -> Option<QuotaLimits> {
    if calls.is_none() && kb.is_none() {
        cx.problem("", "a quota needs calls, bandwidth or both");
        return None;
    }
    if calls == Some(0) || kb == Some(0) {
        cx.problem("", "calls and bandwidth must be at least 1");
        return None;
    }
    Some(QuotaLimits {
        calls,
        bytes: kb.map(|k| k.saturating_mul(1024)),
    })
}

pub(crate) fn quota(p: &Quota, cx: &mut StepCx<'_>) -> Option<QuotaStep> {
    let limits = quota_limits(cx, p.calls, p.bandwidth);
    let period = positive(cx, "renewal-period", p.renewal_period);
    Some(QuotaStep {
        id: Arc::from(cx.at.as_str()),
        limits: limits?,
        period: Duration::from_secs(period?),
        counter_key: None,
        increment_condition: None,
        outage: p.outage,
    })
}

pub(crate) fn quota_by_key(p: &QuotaByKey, cx: &mut StepCx<'_>) -> Option<QuotaStep> {
    let limits = quota_limits(cx, p.calls, p.bandwidth);
    let period = positive(cx, "renewal-period", p.renewal_period);
    let key = cx.template("counter-key", &p.counter_key);
    let condition = status_set(cx, p.increment_condition.as_deref());
    Some(QuotaStep {
        id: Arc::from(cx.at.as_str()),
        limits: limits?,
        period: Duration::from_secs(period?),
        counter_key: Some(key?),
        increment_condition: condition.ok()?,
        outage: p.outage,
    })
}
