//! `set-header`, `set-query-parameter`, `rewrite-uri`.

use actix_web::http::header::{HeaderMap, HeaderValue};
use outpost_actors::route_table::steps::{
    AuthenticationBasicStep, RewriteUriStep, SetHeaderStep, SetMethodStep, SetQueryParameterStep,
    encode_query_component,
};
use outpost_model::policy::ExistsAction;

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow, Phase, percent_decode};

pub(super) fn set_header(
    s: &SetHeaderStep,
    phase: Phase,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    let value = match (&s.constant, &s.value) {
        (Some(v), _) => Some(v.clone()),
        (None, Some(t)) => Some(header_value(&super::expr::render(t, ex, "set-header")?)?),
        (None, None) => None,
    };
    let headers: &mut HeaderMap = match phase {
        Phase::Inbound | Phase::Backend => &mut ex.request_headers,
        Phase::Outbound | Phase::OnError => match &mut ex.response {
            Some(r) => &mut r.headers,
            None => return Ok(Flow::Continue),
        },
    };
    apply(s, value, headers);
    Ok(Flow::Continue)
}

/// Sets, appends or deletes the step's header in `headers` (also the headers of a
/// `send-request`'s call).
pub(super) fn apply(s: &SetHeaderStep, value: Option<HeaderValue>, headers: &mut HeaderMap) {
    match (s.action, value) {
        (ExistsAction::Delete, _) => {
            headers.remove(&s.name);
        }
        (ExistsAction::Override, Some(v)) => {
            headers.insert(s.name.clone(), v);
        }
        (ExistsAction::Skip, Some(v)) => {
            if !headers.contains_key(&s.name) {
                headers.insert(s.name.clone(), v);
            }
        }
        (ExistsAction::Append, Some(v)) => {
            headers.append(s.name.clone(), v);
        }
        (_, None) => {}
    }
}

fn header_value(s: &str) -> Result<HeaderValue, GatewayError> {
    HeaderValue::from_str(s).map_err(|_| {
        GatewayError::internal(
            "PolicyInvalidHeaderValue",
            "A set-header policy produced a value that is not a valid header value.",
        )
    })
}

pub(super) fn set_query_parameter(
    s: &SetQueryParameterStep,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    let value = match &s.value {
        Some(t) => Some(encode_query_component(&super::expr::render(
            t,
            ex,
            "set-query-parameter",
        )?)),
        None => None,
    };
    let exists = ex.query.iter().any(|(k, _)| same_name(k, &s.name));
    match (s.action, value) {
        (ExistsAction::Delete, _) => ex.query.retain(|(k, _)| !same_name(k, &s.name)),
        (ExistsAction::Override, Some(v)) => {
            ex.query.retain(|(k, _)| !same_name(k, &s.name));
            ex.query.push((s.name.clone(), v));
        }
        (ExistsAction::Skip, Some(v)) => {
            if !exists {
                ex.query.push((s.name.clone(), v));
            }
        }
        (ExistsAction::Append, Some(v)) => ex.query.push((s.name.clone(), v)),
        (_, None) => {}
    }
    Ok(Flow::Continue)
}

fn same_name(raw: &str, encoded: &str) -> bool {
    raw == encoded || percent_decode(raw) == percent_decode(encoded)
}

pub(super) fn rewrite_uri(s: &RewriteUriStep, ex: &mut Exchange) -> Result<Flow, GatewayError> {
    let rendered = ex.render(&s.path);
    // Parameters are rendered raw: the result is normalised and checked like a request path,
    // so it cannot climb above the backend's base path.
    let path = crate::gateway::path::normalize(&rendered)
        .map_err(GatewayError::bad_path)?
        .path
        .into_owned();
    let mut query: Vec<(String, String)> = s
        .query
        .iter()
        .map(|q| (q.name.clone(), encode_query_component(&ex.render(&q.value))))
        .collect();
    if s.copy_unmatched_params {
        let original = std::mem::take(&mut ex.query);
        for (k, v) in original {
            if !s.query.iter().any(|q| same_name(&k, &q.name)) {
                query.push((k, v));
            }
        }
    }
    ex.backend_path = path;
    ex.query = query;
    Ok(Flow::Continue)
}

/// `authentication-basic`: replaces any `Authorization` the client sent.
pub(super) fn authentication_basic(
    s: &AuthenticationBasicStep,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    ex.request_headers
        .insert(actix_web::http::header::AUTHORIZATION, s.value.clone());
    Ok(Flow::Continue)
}

/// `set-method`: later steps, templates and expressions see the new method too.
pub(super) fn set_method(s: &SetMethodStep, ex: &mut Exchange) -> Result<Flow, GatewayError> {
    ex.method = s.method.clone();
    Ok(Flow::Continue)
}
