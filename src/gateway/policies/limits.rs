//! `rate-limit`, `rate-limit-by-key`, `quota`, `quota-by-key`.
//!
//! - Over a rate limit: **429** with `Retry-After` (seconds) and the remaining-calls header (0).
//!   Admitted requests carry the remaining-calls header too.
//! - Over a quota: **403** with `Retry-After` until the window ends.
//! - Redis unreachable with `outage: fail-closed`: **503** with `Retry-After`.
//! - `rate-limit` and `quota` count per subscription; a call without one is not counted (as
//!   in the reference product).
//!
//! `increment-condition` reserves at check time and refunds after a non-matching response;
//! quota bandwidth (request + response bytes) is added after the response. Both run in the
//! background after the response is ready: see `docs/rate-limiting.md`.

use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use outpost_actors::shared_state::policy::{QuotaStep, RateLimitByKeyStep, RateLimitStep};
use outpost_actors::shared_state::{
    CountedBy, Decision, QuotaDecision, QuotaDelta, QuotaLimits, Verdict,
};
use outpost_model::policy::{OutageMode, StatusSet};

use crate::gateway::error::GatewayError;
use crate::gateway::pipeline::{Exchange, Flow, Response, Runtime};

/// Post-response work of the limits of one request.
#[derive(Default)]
pub(crate) struct Pending {
    refunds: Vec<(Decision, StatusSet)>,
    quotas: Vec<PendingQuota>,
}

struct PendingQuota {
    key: String,
    period: Duration,
    limits: QuotaLimits,
    outage: OutageMode,
    condition: Option<StatusSet>,
    counted_by: CountedBy,
}

fn json(status: StatusCode, message: String) -> Response {
    let body = serde_json::json!({"statusCode": status.as_u16(), "message": message}).to_string();
    Response::new(
        status,
        Some(HeaderValue::from_static("application/json")),
        body,
    )
}

fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn num(v: u64) -> HeaderValue {
    HeaderValue::from(v)
}

fn unavailable(retry_after: Duration) -> Flow {
    let mut res = json(
        StatusCode::SERVICE_UNAVAILABLE,
        "The limit cannot be checked right now (shared counter store unreachable). Try again shortly.".into(),
    );
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
    match d.verdict {
        Verdict::Allowed => {
            ex.shared_state
                .headers
                .push((remaining_header.clone(), num(d.remaining)));
            Flow::Continue
        }
        Verdict::Limited => {
            let wait = secs(d.retry_after).max(1);
            let mut res = json(
                StatusCode::TOO_MANY_REQUESTS,
                format!("Rate limit is exceeded. Try again in {wait} seconds."),
            );
            res.headers.insert(retry_header.clone(), num(wait));
            res.headers.insert(remaining_header.clone(), num(0));
            Flow::Respond(res)
        }
        Verdict::Unavailable => unavailable(d.retry_after),
    }
}

pub async fn rate_limit(
    s: &RateLimitStep,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let Some(sub) = &ex.subscription else {
        return Ok(Flow::Continue);
    };
    let key = if s.per_operation {
        format!(
            "{}|{}|{}|{}",
            s.id,
            sub.name,
            ex.api.name,
            ex.operation().name
        )
    } else {
        format!("{}|{}|{}", s.id, sub.name, ex.api.name)
    };
    let d = rt
        .shared
        .rate_limit(&key, s.calls, s.window, 1, s.outage)
        .await;
    Ok(rate_outcome(
        &d,
        &s.retry_after_header,
        &s.remaining_header,
        ex,
    ))
}

pub async fn rate_limit_by_key(
    s: &RateLimitByKeyStep,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let key = format!("{}|{}", s.id, ex.render(&s.counter_key));
    let d = rt
        .shared
        .rate_limit(&key, s.calls, s.window, s.increment_count, s.outage)
        .await;
    let flow = rate_outcome(&d, &s.retry_after_header, &s.remaining_header, ex);
    if d.allowed()
        && let Some(condition) = &s.increment_condition
    {
        ex.shared_state.limits.refunds.push((d, condition.clone()));
    }
    Ok(flow)
}

pub async fn quota(s: &QuotaStep, ex: &mut Exchange, rt: &Runtime) -> Result<Flow, GatewayError> {
    let key = match &s.counter_key {
        Some(t) => format!("{}|{}", s.id, ex.render(t)),
        None => match &ex.subscription {
            Some(sub) => format!("{}|{}", s.id, sub.name),
            None => return Ok(Flow::Continue),
        },
    };
    let delta = QuotaDelta {
        calls: 1,
        bytes: 0,
        enforce: true,
    };
    let d = rt
        .shared
        .quota(&key, s.period, s.limits, delta, s.outage)
        .await;
    Ok(match d.verdict {
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
        Verdict::Limited => Flow::Respond(quota_exceeded(&d)),
        Verdict::Unavailable => unavailable(Duration::from_secs(1)),
    })
}

fn quota_exceeded(d: &QuotaDecision) -> Response {
    let s = secs(d.resets_in).max(1);
    let what = match d.limits.calls {
        Some(l) if d.calls >= l => "call volume",
        _ => "bandwidth",
    };
    let mut res = json(
        StatusCode::FORBIDDEN,
        format!(
            "Out of {what} quota. Quota will be replenished in {:02}:{:02}:{:02}.",
            s / 3600,
            s / 60 % 60,
            s % 60
        ),
    );
    res.headers.insert(header::RETRY_AFTER, num(s));
    res
}

/// Refunds and bandwidth, in the background once the response status and size are known.
pub(crate) fn after_response(ex: &mut Exchange, rt: &Runtime, response: &Response) {
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
