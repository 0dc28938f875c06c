//! Forwarding to a backend pool: which member each attempt goes to, what its outcome teaches
//! the pool, and when a failed attempt may go to another member.
//!
//! The forwarder ([`super::forward::send`]) hands a pooled target here with the function that
//! sends to one URL; this loop picks a member ([`Pool::pick`]: balancer, health, breakers),
//! sends, reports the outcome ([`Lease::report`]), and decides:
//! - **not sent** (no connection could be made): another member, whatever the method and
//!   whatever the body. The connection is made (or taken from the pool) before the body is
//!   read, so a streamed body the failed member never got is handed back whole
//!   ([`super::upstream_h1`], [`super::upstream_h2`]) and goes to the next member;
//! - **failed after sending** (connection closed or reset, garbled answer; not a timeout):
//!   another member only for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) with a
//!   body that can be sent again;
//! - otherwise the `retry` policy as without a pool, each attempt on a member picked afresh
//!   (preferring members not tried yet).
//!
//! A body can be sent again after it was sent when there is none or it is held whole: a `retry`
//! policy holds it (within `limits.max_body_bytes`), as it does without a pool; once any of a
//! streamed body went out, it goes nowhere else. Failovers to another member do not count
//! against the `retry` policy's count, and stop once every member was tried.
//!
//! WebSocket handshakes ([`handshake`]) fail over as a GET without a body does, and their
//! outcome counts for the member as a request's.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Method;
use outpost_actors::route_table::pool::{Lease, Outcome, Pool, now_ms};

use super::error::{ErrorSource, GatewayError};
use super::exchange::{Exchange, RequestBody, Response, Runtime};

/// Sends the exchange to a member of `pool` with `send` (which sends to `ex.target.url`),
/// failing over and retrying as described in the module documentation.
pub async fn send<F>(
    ex: &mut Exchange,
    rt: &Runtime,
    pool: &Arc<Pool>,
    send: F,
) -> Result<Response, GatewayError>
where
    F: AsyncFn(&mut Exchange, &Runtime) -> Result<Response, GatewayError>,
{
    // This loop applies the retry policy, with a member per attempt; `send` sends once.
    let retry = ex.retry.take();
    let replay = match std::mem::replace(&mut ex.body, RequestBody::Taken) {
        RequestBody::None | RequestBody::Taken => Some(None),
        RequestBody::Buffered(b) => Some(Some(b)),
        stream @ RequestBody::Stream { .. } if retry.is_some() => {
            Some(stream.read_whole(rt.max_body_bytes).await?)
        }
        stream @ RequestBody::Stream { .. } => {
            ex.body = stream;
            None
        }
    };
    let idempotent = idempotent(&ex.method);
    let mut tried = 0u64;
    let mut attempt = 0;
    let mut spent = Duration::ZERO;
    let mut member: Arc<str>;
    let result = loop {
        let lease = pick(ex, pool, &mut tried);
        member = lease.member().label.clone();
        if let Some(body) = &replay {
            ex.body = body
                .clone()
                .map_or(RequestBody::None, RequestBody::Buffered);
        }
        ex.backend_duration = None;
        let sent = send(ex, rt).await;
        spent += ex.backend_duration.unwrap_or_default();
        if let Some(outcome) = outcome(pool, sent.as_ref().map(|r| r.status.as_u16())) {
            lease.report(outcome);
        }
        drop(lease);
        // A streamed body the member never got is back in the exchange, unread.
        let whole = replay.is_some() || !matches!(ex.body, RequestBody::Taken);
        if let Err(e) = &sent
            && pool.has_untried(tried)
            && may_fail_over(e, whole, replay.is_some() && idempotent)
        {
            count_failover(pool);
            continue;
        }
        let again = replay.is_some()
            && retry.as_ref().is_some_and(|r| {
                attempt < r.count
                    && match &sent {
                        Ok(res) => r.condition.contains(res.status.as_u16()),
                        Err(e) => e.connection && r.on_connection_error,
                    }
            });
        if !again {
            break sent;
        }
        drop(sent);
        attempt += 1;
        metrics::counter!("outpost_backend_retries_total", "backend" => ex.target.name.to_string())
            .increment(1);
        if let Some(interval) = retry.as_ref().map(|r| r.interval)
            && !interval.is_zero()
        {
            actix_rt::time::sleep(interval).await;
        }
        // Every member was tried: the retry may go to any of them again.
        if !pool.has_untried(tried) {
            tried = 0;
        }
    };
    ex.backend_duration = Some(spent);
    ex.retry = retry;
    result.map_err(|e| name_member(e, &member))
}

/// Whether a failed attempt may go to another member: not sent, with its body still whole
/// (`whole`); or failed after sending (connection closed or reset, garbled answer: a 502, not a
/// timeout) when it may be sent twice (`resendable`: an idempotent method with a body held
/// whole or none).
fn may_fail_over(e: &GatewayError, whole: bool, resendable: bool) -> bool {
    e.source == ErrorSource::Backend
        && e.connection
        && ((e.unsent && whole) || (resendable && e.status.as_u16() == 502))
}

fn count_failover(pool: &Pool) {
    metrics::counter!("outpost_backend_member_failovers_total",
        "backend" => pool.backend.to_string())
    .increment(1);
}

/// Which member failed is what an operator needs to know first.
fn name_member(mut e: GatewayError, member: &str) -> GatewayError {
    if e.source == ErrorSource::Backend {
        e.message = format!("{} Pool member: {member}.", e.message).into();
    }
    e
}

/// Points the exchange at a member not tried yet (any member when all were) and holds it.
fn pick(ex: &mut Exchange, pool: &Arc<Pool>, tried: &mut u64) -> Lease {
    let now = now_ms();
    let i = match pool.pick(*tried, now) {
        Some(i) => i,
        None => {
            *tried = 0;
            pool.pick(0, now).unwrap_or(0)
        }
    };
    *tried |= 1 << i;
    let lease = pool.lease(i);
    ex.target.url = lease.member().url.clone();
    lease
}

/// Makes a WebSocket handshake with a member of `pool`: `attempt` makes it with the member at
/// `ex.target.url` and returns the backend's answer, whose status `status` tells. A handshake
/// is a GET without a body (the client's frames wait for the switch): one that could not be
/// sent, or whose connection failed before an answer, goes to another member not tried yet.
/// Each attempt teaches the pool as a request does; its lease counts it in flight until the
/// handshake is answered.
pub async fn handshake<T>(
    ex: &mut Exchange,
    pool: &Arc<Pool>,
    attempt: impl AsyncFn(&mut Exchange) -> Result<T, GatewayError>,
    status: impl Fn(&T) -> u16,
) -> Result<T, GatewayError> {
    let mut tried = 0u64;
    let mut spent = Duration::ZERO;
    loop {
        let lease = pick(ex, pool, &mut tried);
        ex.backend_duration = None;
        let answered = attempt(ex).await;
        spent += ex.backend_duration.unwrap_or_default();
        if let Some(outcome) = outcome(pool, answered.as_ref().map(&status)) {
            lease.report(outcome);
        }
        if let Err(e) = &answered
            && pool.has_untried(tried)
            && may_fail_over(e, true, true)
        {
            count_failover(pool);
            continue;
        }
        ex.backend_duration = Some(spent);
        return answered.map_err(|e| name_member(e, &lease.member().label));
    }
}

/// What an attempt teaches the pool: connection failures, timeouts and the pool's failure
/// statuses count against the member; a failure of the client's own (its body) not at all.
fn outcome(pool: &Pool, sent: Result<u16, &GatewayError>) -> Option<Outcome> {
    match sent {
        Ok(status) if pool.failed_status(status) => Some(Outcome::Failure),
        Ok(_) => Some(Outcome::Success),
        Err(e) if e.source == ErrorSource::Backend => Some(Outcome::Failure),
        Err(_) => None,
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}
