//! The limits family: `rate-limit`, `rate-limit-by-key`, `quota`, `quota-by-key` (and the two
//! fused, see [`rate_limit_then_quota`]) against the shared counters, and `limit-concurrency`
//! against this node's in-flight counters (`super::super::concurrency`).
//!
//! - Over a rate limit: **429** with `Retry-After` (seconds) and the remaining-calls header (0).
//!   Admitted requests carry the remaining-calls header too.
//! - Over a quota: **403** with `Retry-After` until the window ends.
//! - Redis unreachable with `outage: fail-closed`: **503** with `Retry-After`.
//! - `rate-limit` and `quota` count per subscription; a call without one is not counted (as
//!   in the reference product).
//! - Over a concurrency limit: **429** (`ConcurrencyLimitExceeded`).
//!
//! `increment-condition` reserves at check time and refunds after a non-matching response;
//! quota bandwidth (request + response bytes) is added after the response. Both run in the
//! background after the response is ready: see `docs/rate-limiting.md`.

use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use outpost_actors::route_table::steps::{
    LimitConcurrencyStep, QuotaStep, RateLimitByKeyStep, RateLimitOf, RateLimitStep,
    RateLimitThenQuotaStep,
};
use outpost_actors::shared_state::{CountedBy, Decision, QuotaDecision, QuotaDelta, Verdict};

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow, PendingQuota, Response, Runtime};

fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn num(v: u64) -> HeaderValue {
    HeaderValue::from(v)
}

fn unavailable(retry_after: Duration) -> Flow {
    let mut res = Response::from_error(&GatewayError::limit_unavailable());
    res.headers
        .insert(header::RETRY_AFTER, num(secs(retry_after).max(1)));
    Flow::Respond(res)
}

/// Common tail of both rate limits.
fn rate_outcome(
    d: &Decision,
    retry_header: &HeaderName,
    remaining_header: &HeaderName,
    ex: &mut Exchange,
) -> Flow {
    ex.rate_limit = Some(d.verdict);
    match d.verdict {
        Verdict::Allowed => {
            ex.shared_state
                .headers
                .push((remaining_header.clone(), num(d.remaining)));
            Flow::Continue
        }
        Verdict::Limited => {
            let wait = secs(d.retry_after).max(1);
            let mut res = Response::from_error(&GatewayError::rate_limited(wait));
            res.headers.insert(retry_header.clone(), num(wait));
            res.headers.insert(remaining_header.clone(), num(0));
            Flow::Respond(res)
        }
        Verdict::Unavailable => unavailable(d.retry_after),
    }
}

/// A rate-limit step of either kind: its counter key, its check and how its answer applies.
/// One path for a step alone and for a step checked together with a quota.
#[derive(Clone, Copy)]
enum RateCheck<'a> {
    PerSubscription(&'a RateLimitStep),
    ByKey(&'a RateLimitByKeyStep),
}

impl<'a> RateCheck<'a> {
    fn of(rate: &'a RateLimitOf) -> Self {
        match rate {
            RateLimitOf::PerSubscription(s) => RateCheck::PerSubscription(s),
            RateLimitOf::ByKey(s) => RateCheck::ByKey(s),
        }
    }

    /// The counter key; `None` for a `rate-limit` call without a subscription, which is not
    /// counted.
    fn key(self, ex: &Exchange) -> Option<String> {
        match self {
            RateCheck::PerSubscription(s) => {
                let sub = ex.subscription.as_ref()?;
                Some(if s.per_operation {
                    format!(
                        "{}|{}|{}|{}",
                        s.id,
                        sub.name,
                        ex.api.name,
                        ex.operation().name
                    )
                } else {
                    format!("{}|{}|{}", s.id, sub.name, ex.api.name)
                })
            }
            RateCheck::ByKey(s) => Some(format!("{}|{}", s.id, ex.render(&s.counter_key))),
        }
    }

    async fn check(self, key: &str, rt: &Runtime) -> Decision {
        let (calls, window, increment, budget, outage) = match self {
            RateCheck::PerSubscription(s) => (s.calls, s.window, 1, s.local_budget, s.outage),
            RateCheck::ByKey(s) => (
                s.calls,
                s.window,
                s.increment_count,
                s.local_budget,
                s.outage,
            ),
        };
        rt.shared
            .rate_limit_with_budget(key, calls, window, increment, budget, outage)
            .await
    }

    /// The answer's effect: headers or a refusal, and the refund to consider after the
    /// response (`increment-condition`).
    fn outcome(self, d: Decision, ex: &mut Exchange) -> Flow {
        match self {
            RateCheck::PerSubscription(s) => {
                rate_outcome(&d, &s.retry_after_header, &s.remaining_header, ex)
            }
            RateCheck::ByKey(s) => {
                let flow = rate_outcome(&d, &s.retry_after_header, &s.remaining_header, ex);
                if d.allowed()
                    && let Some(condition) = &s.increment_condition
                {
                    ex.shared_state.limits.refunds.push((d, condition.clone()));
                }
                flow
            }
        }
    }

    async fn run(self, ex: &mut Exchange, rt: &Runtime) -> Flow {
        let Some(key) = self.key(ex) else {
            return Flow::Continue;
        };
        let d = self.check(&key, rt).await;
        self.outcome(d, ex)
    }
}

pub async fn rate_limit(
    s: &RateLimitStep,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    Ok(RateCheck::PerSubscription(s).run(ex, rt).await)
}

pub async fn rate_limit_by_key(
    s: &RateLimitByKeyStep,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    Ok(RateCheck::ByKey(s).run(ex, rt).await)
}

/// The counter key of a `quota` / `quota-by-key`; `None` for a `quota` call without a
/// subscription, which is not counted.
fn quota_key(s: &QuotaStep, ex: &Exchange) -> Option<String> {
    match &s.counter_key {
        Some(t) => Some(format!("{}|{}", s.id, ex.render(t))),
        None => ex
            .subscription
            .as_ref()
            .map(|sub| format!("{}|{}", s.id, sub.name)),
    }
}

const ADMISSION: QuotaDelta = QuotaDelta {
    calls: 1,
    bytes: 0,
    enforce: true,
};

pub async fn quota(s: &QuotaStep, ex: &mut Exchange, rt: &Runtime) -> Result<Flow, GatewayError> {
    let Some(key) = quota_key(s, ex) else {
        return Ok(Flow::Continue);
    };
    let d = rt
        .shared
        .quota(&key, s.period, s.limits, ADMISSION, s.outage)
        .await;
    Ok(quota_outcome(s, key, &d, ex))
}

fn quota_outcome(s: &QuotaStep, key: String, d: &QuotaDecision, ex: &mut Exchange) -> Flow {
    match d.verdict {
        Verdict::Allowed => {
            if s.limits.bytes.is_some() || s.increment_condition.is_some() {
                ex.shared_state.limits.quotas.push(PendingQuota {
                    key,
                    period: s.period,
                    limits: s.limits,
                    outage: s.outage,
                    condition: s.increment_condition.clone(),
                    counted_by: d.counted_by,
                });
            }
            Flow::Continue
        }
        Verdict::Limited => Flow::Respond(quota_exceeded(d)),
        Verdict::Unavailable => unavailable(Duration::from_secs(1)),
    }
}

/// A rate limit directly followed by a quota, the usual product set-up (fused by the compiler).
/// Both checks go to the shared store at once, so the request waits for one Redis round trip
/// instead of two in a row; the outcome is the one of running them in order:
/// - rate limit exceeded: 429, and the quota admission made meanwhile is taken back (in the
///   background, as a post-response record is) since the quota would not have been reached;
/// - rate limit passed: the quota's decision stands (403 when exceeded; the rate-limit hit
///   stays counted, as it would have).
///
/// Until that take-back lands, the quota counts one call more: a concurrent request at the
/// quota's very edge may be refused a moment early (never admitted beyond it).
pub async fn rate_limit_then_quota(
    s: &RateLimitThenQuotaStep,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let (rate, q) = (RateCheck::of(&s.rate), &*s.quota);
    let (Some(rate_key), Some(quota_key)) = (rate.key(ex), quota_key(q, ex)) else {
        // One of them counts nothing for this call: in order, as separate steps.
        let flow = rate.run(ex, rt).await;
        if !matches!(flow, Flow::Continue) {
            return Ok(flow);
        }
        return quota(q, ex, rt).await;
    };
    let (d, qd) = futures_util::join!(
        rate.check(&rate_key, rt),
        rt.shared
            .quota(&quota_key, q.period, q.limits, ADMISSION, q.outage),
    );
    let flow = rate.outcome(d, ex);
    if !matches!(flow, Flow::Continue) {
        if qd.allowed() && qd.counted_by != CountedBy::Nobody {
            let shared = rt.shared.clone();
            let (period, limits, outage) = (q.period, q.limits, q.outage);
            actix_web::rt::spawn(async move {
                let back = QuotaDelta {
                    calls: -1,
                    bytes: 0,
                    enforce: false,
                };
                shared.quota(&quota_key, period, limits, back, outage).await;
            });
        }
        return Ok(flow);
    }
    Ok(quota_outcome(q, quota_key, &qd, ex))
}

fn quota_exceeded(d: &QuotaDecision) -> Response {
    let s = secs(d.resets_in).max(1);
    let what = match d.limits.calls {
        Some(l) if d.calls >= l => "call volume",
        _ => "bandwidth",
    };
    let mut res = Response::from_error(&GatewayError::quota_exceeded(what, s));
    res.headers.insert(header::RETRY_AFTER, num(s));
    res
}

/// Refunds and bandwidth, in the background once the response status and size are known.
pub(super) fn after_response(ex: &mut Exchange, rt: &Runtime, response: &Response) {
    let pending = std::mem::take(&mut ex.shared_state.limits);
    if pending.refunds.is_empty() && pending.quotas.is_empty() {
        return;
    }
    let status = response.status.as_u16();
    let response_bytes = match response.body.size() {
        BodySize::Sized(n) => n,
        BodySize::None | BodySize::Stream => 0,
    };
    let bytes = ex.request_bytes + response_bytes;
    let shared = rt.shared.clone();
    actix_web::rt::spawn(async move {
        for (decision, condition) in pending.refunds {
            if !condition.contains(status) {
                shared.refund(&decision).await;
            }
        }
        for q in pending.quotas {
            let refund = q.condition.as_ref().is_some_and(|c| !c.contains(status));
            let delta = QuotaDelta {
                calls: if refund { -1 } else { 0 },
                bytes: if q.limits.bytes.is_some() { bytes } else { 0 },
                enforce: false,
            };
            // Only where the admission was counted (not fail-open/fail-closed).
            if q.counted_by != CountedBy::Nobody && (delta.calls != 0 || delta.bytes != 0) {
                shared
                    .quota(&q.key, q.period, q.limits, delta, q.outage)
                    .await;
            }
        }
    });
}

pub(super) fn limit_concurrency(
    s: &LimitConcurrencyStep,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let key = ex.render(&s.key);
    match rt.concurrency.try_acquire(s.id.clone(), key, s.max_count) {
        Some(guard) => {
            ex.guards.push(guard);
            Ok(Flow::Continue)
        }
        None => Err(GatewayError::concurrency_exceeded()),
    }
}
