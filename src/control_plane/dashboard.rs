//! The dashboard: one static page at `/` that asks for the admin token (kept in the tab's
//! session storage) and shows APIs, products, subscriptions, gateways with their instances'
//! connection and sync state, and the current revision, by calling the management API.

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
