//! `json-to-xml` and `xml-to-json`: the body read whole (at most the policy's `max-size`, and
//! the gateway's `[limits] max_body_bytes`), converted, and sent on with its new length and
//! `Content-Type`. A body that cannot be converted is the client's fault in `inbound` (400)
//! and the backend's in `outbound` (502); one too large is refused before it is buffered.

use actix_web::http::header::{
    ACCEPT, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue,
    TRANSFER_ENCODING,
};
use outpost_actors::route_table::steps::ConvertStep;

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow, Phase, RequestBody, Runtime};

pub(super) async fn convert(
    s: &ConvertStep,
    phase: Phase,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let request = matches!(phase, Phase::Inbound | Phase::Backend);
    if s.consider_accept_header {
        let asked = ex
            .request_headers
            .get_all(ACCEPT)
            .filter_map(|v| v.to_str().ok())
            .any(|v| s.accept_asks_for_target(v));
        if !asked {
            return Ok(Flow::Continue);
        }
    }
    let headers = if request {
        &ex.request_headers
    } else {
        match &ex.response {
            Some(res) => &res.headers,
            None => return Ok(Flow::Continue),
        }
    };
    if !s.always {
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !s.is_source_type(content_type) {
            return Ok(Flow::Continue);
        }
    }
    let limit = usize::try_from(s.max_size)
        .unwrap_or(usize::MAX)
        .min(rt.max_body_bytes);
    if declared_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::conversion_too_large(s.name(), request, limit));
    }
    let encoded = headers
        .get(CONTENT_ENCODING)
        .filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = if request {
        let taken = std::mem::replace(&mut ex.body, RequestBody::Taken);
        match taken.read_whole(limit).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                ex.body = RequestBody::None;
                return Ok(Flow::Continue);
            }
            Err(e) if e.reason == "RequestBodyTooLarge" => {
                return Err(GatewayError::conversion_too_large(s.name(), request, limit));
            }
            Err(e) => return Err(e),
        }
    } else {
        let Some(res) = &mut ex.response else {
            return Ok(Flow::Continue);
        };
        let body = std::mem::replace(&mut res.body, actix_web::body::BoxBody::new(()));
        match actix_web::body::to_bytes_limited(body, limit).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(GatewayError::response_body_broken(&e)),
            Err(_) => return Err(GatewayError::conversion_too_large(s.name(), request, limit)),
        }
    };
    // Nothing to convert (a GET, a 204): nothing changes.
    if body.is_empty() {
        put_back(ex, request, body);
        return Ok(Flow::Continue);
    }
    if let Some(enc) = encoded {
        let why = format!("an encoded body ({enc}) cannot be converted");
        return Err(GatewayError::conversion_failed(s.name(), request, &why));
    }
    let converted = s
        .convert(&body)
        .map_err(|e| GatewayError::conversion_failed(s.name(), request, &e))?;
    put_back(ex, request, bytes::Bytes::from(converted));
    let headers = if request {
        &mut ex.request_headers
    } else {
        match &mut ex.response {
            Some(res) => &mut res.headers,
            None => return Ok(Flow::Continue),
        }
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(s.content_type()));
    headers.remove(CONTENT_LENGTH);
    headers.remove(TRANSFER_ENCODING);
    Ok(Flow::Continue)
}

fn put_back(ex: &mut Exchange, request: bool, body: bytes::Bytes) {
    if request {
        ex.body = RequestBody::Buffered(body);
    } else if let Some(res) = &mut ex.response {
        res.body = actix_web::body::BoxBody::new(body);
    }
}

fn declared_length(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
