//! The dashboard: one static page at `/` that asks for the admin token (kept in the tab's
//! session storage) and shows, by calling the management API: the last hour's traffic (headline
//! numbers, inline SVG charts of requests/s, error rate and p50/p95/p99 per minute for all
//! traffic, per API and per gateway, and tables), gateways with their instances (readiness and
//! why not, connection, sync, token and certificate expiry, backend pool members), APIs,
//! products, subscriptions and the current revision. No library, nothing from another origin.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

const PAGE: &str = include_str!("dashboard.html");

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(page));
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(PAGE)
}
