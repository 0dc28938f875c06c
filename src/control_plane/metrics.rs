//! The control plane's `/metrics` (Prometheus text, on the admin listener): what it is asked,
//! what it commits, how its gateways and its store are doing.
//!
//! | series | kind | labels |
//! |---|---|---|
//! | `outpost_cp_admin_requests_total` | counter | `method`, `status` |
//! | `outpost_cp_commits_total` | counter | |
//! | `outpost_cp_revision` | gauge | |
//! | `outpost_cp_config_polls_waiting` | gauge | |
//! | `outpost_cp_gateway_instances` | gauge | `state` (connected, stale, disconnected, stopped) |
//! | `outpost_cp_telemetry_batches_total` | counter | `result` (added, duplicate, invalid, failed) |
//! | `outpost_cp_telemetry_aggregates_total` | counter | `result` (stored, skipped) |
//! | `outpost_cp_telemetry_aggregates_skipped_total` | counter | |
//! | `outpost_cp_analytics_rows_purged_total` | counter | |
//! | `outpost_cp_store_operation_seconds` | histogram | `operation` (put, delete, commit) |
//!
//! Counters are counted where things happen; gauges are read from the live state at each
//! scrape, so they are never stale. Labels name no gateway, API or key: what the scrape shows
//! is safe for whoever may scrape it (see `admin.metrics_require_token`).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use chrono::Utc;

use super::gateway_state::GatewayApiState;
use super::instances::ConnectionState;
use super::store::Committed;
use super::telemetry::Ingested;

/// Counts every request of the admin listener by method and status (the answer's, including
/// refusals of the admin token).
pub async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let method = method_label(req.method());
    let res = next.call(req).await;
    let status = match &res {
        Ok(res) => res.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    metrics::counter!(
        "outpost_cp_admin_requests_total",
        "method" => method,
        "status" => status.as_str().to_owned(),
    )
    .increment(1);
    res
}

/// A fixed set, so a client cannot grow the series with made-up methods.
fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// A store write's latency; a write that changed something counts as a commit.
pub fn store_write(
    operation: &'static str,
    started: Instant,
    result: &Result<Committed, super::store::StoreError>,
) {
    metrics::histogram!(crate::prometheus::STORE_SECONDS, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    if let Ok(c) = result
        && !c.changed.is_empty()
    {
        metrics::counter!("outpost_cp_commits_total").increment(1);
    }
}

/// One telemetry batch uploaded by a gateway, added to the store (or found there already).
/// Aggregates are counted `stored` or `skipped` (outside the retention window).
pub fn telemetry_batch(ingested: Ingested) {
    match ingested {
        Ingested::Added { added, skipped } => {
            metrics::counter!("outpost_cp_telemetry_batches_total", "result" => "added")
                .increment(1);
            metrics::counter!("outpost_cp_telemetry_aggregates_total", "result" => "stored")
                .increment(added as u64);
            metrics::counter!("outpost_cp_telemetry_aggregates_total", "result" => "skipped")
                .increment(skipped as u64);
            metrics::counter!("outpost_cp_telemetry_aggregates_skipped_total")
                .increment(skipped as u64);
        }
        Ingested::Duplicate => {
            metrics::counter!("outpost_cp_telemetry_batches_total", "result" => "duplicate")
                .increment(1);
        }
    }
}

/// A telemetry batch refused (`invalid`) or not stored (`failed`: the store failed; the
/// gateway retries it).
pub fn telemetry_batch_refused(result: &'static str) {
    metrics::counter!("outpost_cp_telemetry_batches_total", "result" => result).increment(1);
}

const STATES: [(ConnectionState, &str); 4] = [
    (ConnectionState::Connected, "connected"),
    (ConnectionState::Stale, "stale"),
    (ConnectionState::Disconnected, "disconnected"),
    (ConnectionState::Stopped, "stopped"),
];

/// `GET /metrics`: the gauges read now, then everything rendered.
pub async fn scrape(state: web::Data<GatewayApiState>) -> HttpResponse {
    let now = Utc::now();
    metrics::gauge!("outpost_cp_revision").set(state.store().revision() as f64);
    metrics::gauge!("outpost_cp_config_polls_waiting").set(state.waiting_polls() as f64);
    let instances = state.instances();
    let mut counts = [0usize; STATES.len()];
    for record in instances.records(None, now) {
        let s = instances.connection(&record, now);
        if let Some(i) = STATES.iter().position(|(state, _)| *state == s) {
            counts[i] += 1;
        }
    }
    for ((_, label), n) in STATES.iter().zip(counts) {
        metrics::gauge!("outpost_cp_gateway_instances", "state" => *label).set(n as f64);
    }
    let Some(handle) = crate::prometheus::prometheus() else {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body("no Prometheus recorder could be installed in this process\n");
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render())
}
