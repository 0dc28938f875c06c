//! `mock-response`, `return-response`: the gateway answers instead of the backend;
//! `set-status`: the status of the answer.

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderValue;
use outpost_actors::route_table::steps::{
    FindAndReplaceStep, MockResponseStep, ReturnResponseStep, SetBodyStep, SetStatusStep,
};

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow, Phase, RequestBody, Response, Runtime};

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::OK)
}

pub(super) fn mock_response(s: &MockResponseStep, ex: &mut Exchange) -> Result<Flow, GatewayError> {
    let body = s.body.as_ref().map(|t| ex.render(t)).unwrap_or_default();
    Ok(Flow::Respond(Response::new(
        status(s.status),
        Some(s.content_type.clone()),
        body,
    )))
}

pub(super) fn return_response(
    s: &ReturnResponseStep,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    let body = match &s.body {
        Some(t) => super::expr::render(t, ex, "return-response")?,
        None => String::new(),
    };
    let mut res = Response::new(status(s.status), None, body);
    for (name, value) in &s.headers {
        let value = HeaderValue::from_str(&ex.render(value)).map_err(|_| {
            GatewayError::internal(
                "PolicyInvalidHeaderValue",
                "A return-response policy produced a header value that is not valid.",
            )
        })?;
        res.headers.append(name.clone(), value);
    }
    Ok(Flow::Respond(res))
}

/// Sets the status of the response (`outbound`: the backend's; `on-error`: the error's).
pub(super) fn set_status(s: &SetStatusStep, ex: &mut Exchange) -> Result<Flow, GatewayError> {
    let code = match s {
        SetStatusStep::Code(c) => *c,
        SetStatusStep::Expression(e) => {
            let text = e
                .eval_text(super::expr::vars(e, ex))
                .map_err(|err| GatewayError::expression("set-status", &err))?;
            match text.trim().parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => c,
                _ => {
                    return Err(GatewayError::internal(
                        "PolicyExpressionFailed",
                        "The expression of a set-status policy did not give an HTTP status (100-599).",
                    ));
                }
            }
        }
    };
    if let Some(res) = &mut ex.response {
        res.status = status(code);
    }
    Ok(Flow::Continue)
}

/// `set-body`: the request body before the backend, the response body after. The length
/// and encoding headers of the old body go with it (the new one is sent with its own length,
/// unencoded).
pub(super) fn set_body(
    s: &SetBodyStep,
    phase: Phase,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    use actix_web::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, TRANSFER_ENCODING};
    let body = super::expr::render(&s.body, ex, "set-body")?;
    let headers = match phase {
        Phase::Inbound | Phase::Backend => {
            ex.body = RequestBody::Buffered(bytes::Bytes::from(body));
            &mut ex.request_headers
        }
        Phase::Outbound | Phase::OnError => match &mut ex.response {
            Some(res) => {
                res.body = actix_web::body::BoxBody::new(body);
                &mut res.headers
            }
            None => return Ok(Flow::Continue),
        },
    };
    for name in [CONTENT_LENGTH, CONTENT_ENCODING, TRANSFER_ENCODING] {
        headers.remove(name);
    }
    Ok(Flow::Continue)
}

/// `find-and-replace`: the body is read whole, within the gateway's body limit
/// (`[limits] max_body_bytes`), replaced, and sent with its new length. An encoded body
/// (`Content-Encoding` other than `identity`) is left alone: its bytes are not the text.
pub(super) async fn find_and_replace(
    s: &FindAndReplaceStep,
    phase: Phase,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    use actix_web::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, TRANSFER_ENCODING};
    let encoded = |h: &actix_web::http::header::HeaderMap| {
        h.get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    };
    let max = rt.max_body_bytes;
    let headers = match phase {
        Phase::Inbound | Phase::Backend => {
            if encoded(&ex.request_headers) {
                return Ok(Flow::Continue);
            }
            let body = std::mem::replace(&mut ex.body, RequestBody::Taken);
            let Some(bytes) = body.read_whole(max).await? else {
                ex.body = RequestBody::None;
                return Ok(Flow::Continue);
            };
            ex.body = RequestBody::Buffered(match s.apply(&bytes) {
                Some(new) => bytes::Bytes::from(new),
                None => bytes,
            });
            &mut ex.request_headers
        }
        Phase::Outbound | Phase::OnError => match &mut ex.response {
            Some(res) if !encoded(&res.headers) => {
                let body = std::mem::replace(&mut res.body, actix_web::body::BoxBody::new(()));
                let bytes = match actix_web::body::to_bytes_limited(body, max).await {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => return Err(GatewayError::response_body_broken(&e)),
                    Err(_) => return Err(GatewayError::response_too_large(max)),
                };
                res.body = actix_web::body::BoxBody::new(match s.apply(&bytes) {
                    Some(new) => bytes::Bytes::from(new),
                    None => bytes,
                });
                &mut res.headers
            }
            _ => return Ok(Flow::Continue),
        },
    };
    // The body now goes with its own length.
    headers.remove(CONTENT_LENGTH);
    headers.remove(TRANSFER_ENCODING);
    Ok(Flow::Continue)
}
