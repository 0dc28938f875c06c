//! The limits family: `rate-limit`, `rate-limit-by-key`, `quota`, `quota-by-key` (counters in
//! the shared state, Redis or in-process) and `limit-concurrency` (in flight, on this node).
//! The gateway runs them in `src/gateway/pipeline/limits.rs`.
//!
//! Counters are scoped by where the policy is written (`id`): two policies never share a
//! counter by accident (the reference product's "one counter per key for all scopes" surprise),
//! while a policy at global or product scope counts across every API it covers.

use std::sync::Arc;
use std::time::Duration;

use awc::http::header::HeaderName;
use outpost_model::policy::{
    LimitConcurrency, OutageMode, Quota, QuotaByKey, RateLimit, RateLimitByKey, StatusSet,
};
use outpost_model::template::Template;

use super::Step;
use super::cx::{StepCx, header_name};
use crate::shared_state::QuotaLimits;

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
    /// `local-budget` (0: none).
    pub local_budget: u64,
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
    /// `local-budget` (0: none).
    pub local_budget: u64,
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

pub(super) fn rate_limit(p: &RateLimit, cx: &mut StepCx<'_>) -> Option<Step> {
    let calls = positive(cx, "calls", p.calls);
    let period = positive(cx, "renewal-period", p.renewal_period);
    let retry = header_name(cx, "retry-after-header-name", &p.retry_after_header_name);
    let remaining = header_name(
        cx,
        "remaining-calls-header-name",
        &p.remaining_calls_header_name,
    );
    Some(Step::RateLimit(Arc::new(RateLimitStep {
        id: Arc::from(cx.at.as_str()),
        calls: calls?,
        window: Duration::from_secs(period?),
        per_operation: p.per_operation,
        retry_after_header: retry?,
        remaining_header: remaining?,
        outage: p.outage,
        local_budget: p.local_budget.unwrap_or(0),
    })))
}

pub(super) fn rate_limit_by_key(p: &RateLimitByKey, cx: &mut StepCx<'_>) -> Option<Step> {
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
    Some(Step::RateLimitByKey(Arc::new(RateLimitByKeyStep {
        id: Arc::from(cx.at.as_str()),
        calls: calls?,
        window: Duration::from_secs(period?),
        counter_key: key?,
        increment_condition: condition.ok()?,
        increment_count: count?,
        retry_after_header: retry?,
        remaining_header: remaining?,
        outage: p.outage,
        local_budget: p.local_budget.unwrap_or(0),
    })))
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

pub(super) fn quota(p: &Quota, cx: &mut StepCx<'_>) -> Option<Step> {
    let limits = quota_limits(cx, p.calls, p.bandwidth);
    let period = positive(cx, "renewal-period", p.renewal_period);
    Some(Step::Quota(Arc::new(QuotaStep {
        id: Arc::from(cx.at.as_str()),
        limits: limits?,
        period: Duration::from_secs(period?),
        counter_key: None,
        increment_condition: None,
        outage: p.outage,
    })))
}

pub(super) fn quota_by_key(p: &QuotaByKey, cx: &mut StepCx<'_>) -> Option<Step> {
    let limits = quota_limits(cx, p.calls, p.bandwidth);
    let period = positive(cx, "renewal-period", p.renewal_period);
    let key = cx.template("counter-key", &p.counter_key);
    let condition = status_set(cx, p.increment_condition.as_deref());
    Some(Step::Quota(Arc::new(QuotaStep {
        id: Arc::from(cx.at.as_str()),
        limits: limits?,
        period: Duration::from_secs(period?),
        counter_key: Some(key?),
        increment_condition: condition.ok()?,
        outage: p.outage,
    })))
}

#[derive(Debug)]
pub struct LimitConcurrencyStep {
    /// Where the policy is written (`policies/global.inbound[0].limit-concurrency`): requests
    /// count against the same counters only when they pass the same policy with the same key,
    /// and the counters survive configuration reloads.
    pub id: Arc<str>,
    pub key: Template,
    pub max_count: u32,
}

pub(super) fn limit_concurrency(p: &LimitConcurrency, cx: &mut StepCx<'_>) -> Option<Step> {
    if p.key.trim().is_empty() {
        cx.problem("key", "must not be empty");
        return None;
    }
    if p.max_count == 0 {
        cx.problem("max-count", "must be at least 1");
        return None;
    }
    let key = cx.template("key", &p.key)?;
    Some(Step::LimitConcurrency(Arc::new(LimitConcurrencyStep {
        id: Arc::from(cx.at.as_str()),
        key,
        max_count: p.max_count,
    })))
}

/// The rate limit of a [`RateLimitThenQuotaStep`].
#[derive(Debug, Clone)]
pub enum RateLimitOf {
    PerSubscription(Arc<RateLimitStep>),
    ByKey(Arc<RateLimitByKeyStep>),
}

/// A rate limit directly followed by a quota in `inbound`, the usual product set-up. Fused here
/// so that the gateway sends both checks to the shared store at once (one round trip instead of
/// two in a row) with the outcome of running them in order; the run loop needs no lookahead.
#[derive(Debug)]
pub struct RateLimitThenQuotaStep {
    pub rate: RateLimitOf,
    pub quota: Arc<QuotaStep>,
}

/// Fuses every rate limit that is directly followed by a quota, left to right (a quota fuses
/// with the rate limit right before it only). Only `inbound` is fused: that is where limits
/// admit requests.
pub(crate) fn fuse_rate_limit_then_quota(steps: Vec<Step>) -> Vec<Step> {
    let mut out = Vec::with_capacity(steps.len());
    let mut steps = steps.into_iter().peekable();
    while let Some(step) = steps.next() {
        let rate = match &step {
            Step::RateLimit(s) => RateLimitOf::PerSubscription(s.clone()),
            Step::RateLimitByKey(s) => RateLimitOf::ByKey(s.clone()),
            _ => {
                out.push(step);
                continue;
            }
        };
        match steps.next_if(|next| matches!(next, Step::Quota(_))) {
            Some(Step::Quota(quota)) => {
                out.push(Step::RateLimitThenQuota(Arc::new(RateLimitThenQuotaStep {
                    rate,
                    quota,
                })));
            }
            _ => out.push(step),
        }
    }
    out
}
