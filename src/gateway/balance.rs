//! Forwarding to a backend pool: which member each attempt goes to, what its outcome teaches
//! the pool, and when a failed attempt may go to another member.
//!
//! The forwarder ([`super::forward::send`]) hands a pooled target here with the function that
//! sends to one URL; this loop picks a member ([`Pool::pick`]: balancer, health, breakers),
//! sends, reports the outcome ([`Lease::report`]), and decides:
//! - **not sent** (no connection could be made): another member, whatever the method, when the
//!   body can be sent again;
//! - **failed after sending** (connection closed or reset, garbled answer; not a timeout):
//!   another member only for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) with a
//!   body that can be sent again;
//! - otherwise the `retry` policy as without a pool, each attempt on a member picked afresh
//!   (preferring members not tried yet).
//!
//! A body can be sent again when there is none or it is held whole: a `retry` policy holds it
//! (within `limits.max_body_bytes`), as it does without a pool; a streamed body goes once.
//! Failovers to another member do not count against the `retry` policy's count, and stop once
//! every member was tried.

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
        if let Some(outcome) = outcome(pool, &sent) {
            lease.report(outcome);
        }
        drop(lease);
        let untried = pool.has_untried(tried);
        let failover = match &sent {
            Err(e) if e.source == ErrorSource::Backend && e.connection => {
                replay.is_some()
                    && untried
                    && (e.unsent || (idempotent && e.status.as_u16() == 502))
            }
            _ => false,
        };
        if failover {
            metrics::counter!("outpost_backend_member_failovers_total",
                "backend" => pool.backend.to_string())
            .increment(1);
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
    result.map_err(|mut e| {
        // Which member failed is what an operator needs to know first.
        if e.source == ErrorSource::Backend {
            e.message = format!("{} Pool member: {member}.", e.message).into();
        }
        e
    })
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

/// Points a WebSocket handshake at a member (no failover: the handshake's bytes are the
/// client's); the lease counts it in flight until the handshake is answered.
pub fn pick_once(ex: &mut Exchange) -> Option<Lease> {
    let pool = ex.target.pool.clone()?;
    let mut tried = 0;
    Some(pick(ex, &pool, &mut tried))
}

/// What an attempt teaches the pool: connection failures, timeouts and the pool's failure
/// statuses count against the member; a failure of the client's own (its body) not at all.
fn outcome(pool: &Pool, sent: &Result<Response, GatewayError>) -> Option<Outcome> {
    match sent {
        Ok(res) if pool.failed_status(res.status.as_u16()) => Some(Outcome::Failure),
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
