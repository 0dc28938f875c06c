//! `cors`: preflights answered by the gateway, `Access-Control-*` headers on actual responses.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) usually targets a
//! path whose operations are `GET`/`POST`/…: the proxy then answers it from the `cors` policy
//! of the operation the browser is about to call instead of a 405 (see [`preflight_response`]).

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use outpost_actors::route_table::steps::CorsStep;

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow, Response};

/// Whether a request is a CORS preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight: 200 with the allowed methods and headers, or 403 when the policy
/// terminates unmatched requests; `None` when the policy lets an unmatched preflight through.
pub fn preflight_response(s: &CorsStep, headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN)?;
    let method = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let requested_headers = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|h| h.to_str().ok());
    let allowed = origin.to_str().is_ok_and(|o| s.origin_allowed(o))
        && method.as_ref().is_some_and(|m| s.method_allowed(m))
        && requested_headers.is_none_or(|h| s.headers_allowed(h));
    if !allowed {
        if !s.terminate_unmatched_request {
            return None;
        }
        let err = GatewayError::policy(
            403,
            "CorsPreflightRejected",
            "CORS preflight rejected: origin, method or headers not allowed.",
        );
        return Some(Response::from_error(&err));
    }
    let mut res = Response::new(StatusCode::OK, None, String::new());
    decorate(s, origin.clone(), &mut res.headers);
    let h = &mut res.headers;
    match (
        &s.allow_methods_value,
        headers.get(header::ACCESS_CONTROL_REQUEST_METHOD),
    ) {
        (Some(v), _) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v.clone());
        }
        (None, Some(m)) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m.clone());
        }
        (None, None) => {}
    }
    match (
        &s.allow_headers_value,
        headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS),
    ) {
        (Some(v), _) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        (None, Some(r)) if s.allowed_headers.is_none() => {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, r.clone());
        }
        _ => {}
    }
    if let Some(v) = &s.max_age_value {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
    }
    Some(res)
}

/// Adds the headers of an allowed cross-origin request to a response.
pub fn decorate(s: &CorsStep, origin: HeaderValue, headers: &mut HeaderMap) {
    if s.allow_origin_is_wildcard() {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if s.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = &s.expose_headers_value {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
}

/// The `cors` step in `inbound`: answers a preflight, or remembers an allowed origin so the
/// final response (whatever produces it) carries the CORS headers.
pub(super) fn apply(s: &Arc<CorsStep>, ex: &mut Exchange) -> Result<Flow, GatewayError> {
    if is_preflight(&ex.method, &ex.request_headers) {
        return Ok(match preflight_response(s, &ex.request_headers) {
            Some(res) => Flow::Respond(res),
            None => Flow::Continue,
        });
    }
    if let Some(origin) = ex.request_headers.get(header::ORIGIN)
        && origin.to_str().is_ok_and(|o| s.origin_allowed(o))
    {
        ex.cors = Some((s.clone(), origin.clone()));
    }
    Ok(Flow::Continue)
}
