//! `mock-response`, `return-response`: the gateway answers instead of the backend.

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderValue;
use outpost_actors::route_table::steps::{MockResponseStep, ReturnResponseStep};

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow, Response};

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
