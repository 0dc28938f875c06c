//! `mock-response`, `return-response`: the gateway answers instead of the backend;
//! `set-status`: the status of the answer.

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderValue;
use outpost_actors::route_table::steps::{
    MockResponseStep, ReturnResponseStep, SetBodyStep, SetStatusStep,
};

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow, Phase, RequestBody, Response};

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
