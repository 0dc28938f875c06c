//! The gateway's ops listener (`listen.ops`, 8090 by default): what orchestrators and
//! monitoring ask a gateway.
//!
//! - `/healthz`, `/status-0123456789abcdef`: liveness, 200 while the process runs.
//! - `/readyz`: 200 once a configuration is loaded (and from then on, whatever happens to the
//!   control plane: a gateway that fails static is still ready), 503 before, and 503 again
//!   with `"draining": true` from a stop signal on (the listeners keep serving a while); when
//!   not ready, `reason` says why (heartbeats report the same). The JSON detail says where the config came from, which revision and hash, how the control plane and Redis
//!   look, when the token expires and what was refused, so "why is this gateway not getting my
//!   change" is answered from one URL. With `ops.readyz_detail = false` the body is only
//!   `{"ready": …}`: the detail names the control plane's URL, its errors and the token's
//!   gateway, which is more than whoever can reach the ops port may need to know.
//! - `/metrics`: Prometheus text. `outpost_tls_certificate_expiry_seconds{hostname}` is
//!   computed at the scrape (seconds until the served certificate lapses, negative after), like
//!   the token's expiry gauge.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, web};
use chrono::{DateTime, Utc};
use outpost_actors::connectivity::{self, ConnectivityStatus, StatusHandle};
use outpost_actors::route_table::{CERTIFICATE_WARNING, TableHandle};
use outpost_model::wire::CertificateExpiry;
use serde::Serialize;

/// The liveness path the reference product's self-hosted gateway answers; kept for familiarity.
pub const STATUS_PATH: &str = "/status-0123456789abcdef";

pub use crate::prometheus::prometheus;

/// What the ops endpoints read.
#[derive(Clone)]
pub struct OpsState {
    pub status: StatusHandle,
    pub instance_id: String,
    pub started_at: DateTime<Utc>,
    /// `ops.readyz_detail`.
    pub readyz_detail: bool,
    /// The table being served, for its HTTPS certificates' expiry.
    pub table: TableHandle,
    /// Set when the gateway starts draining (a stop signal): not ready from then on.
    pub draining: Arc<AtomicBool>,
}

impl OpsState {
    fn certificates(&self) -> Vec<CertificateExpiry> {
        self.table
            .load()
            .as_ref()
            .map(|t| t.certificates.expiries().to_vec())
            .unwrap_or_default()
    }
}

/// Starts the ops listener on an already bound socket (so port 0 and bind errors are handled
/// by the caller). Must run inside an actix system.
pub fn start(listener: TcpListener, state: OpsState) -> std::io::Result<Server> {
    prometheus();
    let state = web::Data::new(state);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(alive))
            .route(STATUS_PATH, web::get().to(alive))
            .route("/readyz", web::get().to(ready))
            .route("/metrics", web::get().to(metrics))
    })
    .workers(1)
    .shutdown_timeout(2)
    .disable_signals()
    .listen(listener)?
    .run())
}

async fn alive(state: web::Data<OpsState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "status": "alive",
        "instance_id": state.instance_id,
        "started_at": state.started_at,
    }))
}

#[derive(Serialize)]
struct Readiness<'a> {
    ready: bool,
    /// Why not ready (no configuration yet, draining); absent when ready. Heartbeats carry the
    /// same, so the control plane's instance list agrees.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Stopping: the listeners still serve, but not for long (see `[shutdown] drain_secs`).
    draining: bool,
    instance_id: &'a str,
    version: &'static str,
    started_at: DateTime<Utc>,
    #[serde(flatten)]
    status: &'a ConnectivityStatus,
    token_expiring_soon: Option<bool>,
    /// The HTTPS certificates served, soonest expiry first.
    certificates: Vec<CertificateStatus>,
}

#[derive(Serialize)]
struct CertificateStatus {
    hostname: String,
    not_after: DateTime<Utc>,
    /// Within the warning window (14 days) of its expiry, or expired.
    expiring_soon: bool,
}

async fn ready(state: web::Data<OpsState>) -> HttpResponse {
    let status = state.status.load();
    let draining = state.draining.load(Ordering::Relaxed);
    let readiness = status.readiness(draining);
    let ready = readiness.ready;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !state.readyz_detail {
        return HttpResponse::build(code).json(serde_json::json!({"ready": ready}));
    }
    let now = Utc::now();
    let body = Readiness {
        ready,
        reason: readiness.reason,
        draining,
        instance_id: &state.instance_id,
        version: env!("CARGO_PKG_VERSION"),
        started_at: state.started_at,
        status: &status,
        token_expiring_soon: status.token.as_ref().map(|t| t.expiring(now)),
        certificates: state
            .certificates()
            .into_iter()
            .map(|c| CertificateStatus {
                expiring_soon: c.not_after <= now + CERTIFICATE_WARNING,
                hostname: c.hostname,
                not_after: c.not_after,
            })
            .collect(),
    };
    HttpResponse::build(code).json(body)
}

async fn metrics(state: web::Data<OpsState>) -> HttpResponse {
    // The recorder is process-wide; re-publishing this gateway's status right before rendering
    // makes the scrape describe this gateway even when several share the process.
    connectivity::publish_gauges(&state.status.load());
    if let Some(table) = state.table.load_full() {
        let now = outpost_actors::route_table::pool::now_ms();
        for pool in table.backends.values().filter_map(|b| b.pool.as_ref()) {
            pool.publish_gauges(now);
        }
    }
    let now = Utc::now();
    for c in state.certificates() {
        metrics::gauge!("outpost_tls_certificate_expiry_seconds", "hostname" => c.hostname)
            .set((c.not_after - now).num_seconds() as f64);
    }
    let Some(handle) = prometheus() else {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body("no Prometheus recorder could be installed in this process\n");
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render())
}
