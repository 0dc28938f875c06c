//! `validate-headers` and `validate-content`.

use actix_web::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use outpost_actors::route_table::steps::{
    Allowed, ValidateContentStep, ValidateHeadersStep, ValidateParametersStep,
};
use outpost_model::policy::ContentAction;

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow, Phase, RequestBody, Runtime, percent_decode};

/// Collects every failing header before refusing, so one answer tells the client all it has to
/// fix.
pub(super) fn validate_headers(
    s: &ValidateHeadersStep,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    let mut errors = Vec::new();
    for h in &s.headers {
        let mut values = ex.request_headers.get_all(&h.name).peekable();
        if values.peek().is_none() {
            if h.required {
                errors.push((h.name.to_string(), "missing".to_owned()));
            }
            continue;
        }
        let bad = values.any(|v| match v.to_str() {
            Ok(v) => !h.allowed.admits(v),
            Err(_) => !matches!(h.allowed, Allowed::Any),
        });
        if bad {
            let why = match &h.allowed {
                Allowed::Pattern(_) => "a value does not match the declared pattern",
                _ => "a value is not one of the allowed values",
            };
            errors.push((h.name.to_string(), why.to_owned()));
        }
    }
    if s.prevent_unspecified {
        for name in ex.request_headers.keys() {
            if !s.declares(name)
                && !ValidateHeadersStep::is_protocol_header(name)
                && !errors.iter().any(|(n, _)| n == name.as_str())
            {
                errors.push((name.to_string(), "not declared".to_owned()));
            }
        }
    }
    if errors.is_empty() {
        Ok(Flow::Continue)
    } else {
        Err(GatewayError::headers_invalid(errors))
    }
}

/// `validate-content`: the request body in `inbound`, the response body in `outbound`, read
/// whole (within `[limits] max_body_bytes`, as `find-and-replace` does) and put back as read.
pub(super) async fn validate_content(
    s: &ValidateContentStep,
    phase: Phase,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let request = matches!(phase, Phase::Inbound | Phase::Backend);
    let max = rt.max_body_bytes;
    let body = if request {
        let declared = declared_length(&ex.request_headers);
        if declared.is_some_and(|n| n > s.max_size) {
            return outcome(s.size_exceeded_action, request, ex, too_large(s.max_size));
        }
        let taken = std::mem::replace(&mut ex.body, RequestBody::Taken);
        let read = taken.read_whole(max).await?;
        ex.body = match &read {
            Some(b) => RequestBody::Buffered(b.clone()),
            None => RequestBody::None,
        };
        read.unwrap_or_default()
    } else {
        let Some(res) = &mut ex.response else {
            return Ok(Flow::Continue);
        };
        if declared_length(&res.headers).is_some_and(|n| n > s.max_size) {
            return outcome(s.size_exceeded_action, request, ex, too_large(s.max_size));
        }
        let body = std::mem::replace(&mut res.body, actix_web::body::BoxBody::new(()));
        let bytes = match actix_web::body::to_bytes_limited(body, max).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(GatewayError::response_body_broken(&e)),
            Err(_) => return Err(GatewayError::response_too_large(max)),
        };
        res.body = actix_web::body::BoxBody::new(bytes.clone());
        bytes
    };
    // Nothing sent, nothing to check (a GET, a 204).
    if body.is_empty() {
        return Ok(Flow::Continue);
    }
    if body.len() as u64 > s.max_size {
        return outcome(s.size_exceeded_action, request, ex, too_large(s.max_size));
    }
    let headers = if request {
        &ex.request_headers
    } else {
        match &ex.response {
            Some(r) => &r.headers,
            None => return Ok(Flow::Continue),
        }
    };
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(rule) = s.rule_for(content_type) else {
        let problem = if content_type.is_empty() {
            "the body has no Content-Type".to_owned()
        } else {
            format!("no schema is declared for the content type '{content_type}'")
        };
        return outcome(
            s.unspecified_content_type_action,
            request,
            ex,
            vec![(String::new(), problem)],
        );
    };
    // An encoded body's bytes are not its JSON: it cannot be checked, so it fails rather than
    // pass as if it had been.
    if let Some(enc) = headers
        .get(CONTENT_ENCODING)
        .filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        let enc = String::from_utf8_lossy(enc.as_bytes()).into_owned();
        let problem = format!("an encoded body ({enc}) cannot be validated");
        return outcome(rule.action, request, ex, vec![(String::new(), problem)]);
    }
    if rule.action == ContentAction::Ignore {
        return Ok(Flow::Continue);
    }
    let problems = rule.problems(&body);
    if problems.is_empty() {
        return Ok(Flow::Continue);
    }
    outcome(rule.action, request, ex, problems)
}

fn declared_length(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn too_large(max: u64) -> Vec<(String, String)> {
    vec![(
        String::new(),
        format!("the body is larger than the {max} bytes this policy validates"),
    )]
}

/// What `action` makes of the problems found.
fn outcome(
    action: ContentAction,
    request: bool,
    ex: &Exchange,
    problems: Vec<(String, String)>,
) -> Result<Flow, GatewayError> {
    match action {
        ContentAction::Ignore => Ok(Flow::Continue),
        ContentAction::Detect => {
            let listed: Vec<String> = problems
                .iter()
                .map(|(at, p)| format!("{}: {p}", if at.is_empty() { "/" } else { at }))
                .collect();
            tracing::warn!(
                target: "outpost::policy",
                api = %ex.api.name,
                operation = %ex.operation().name,
                request_id = %ex.request_id,
                body = if request { "request" } else { "response" },
                problems = %listed.join("; "),
                "validate-content found problems (detect: let through)"
            );
            Ok(Flow::Continue)
        }
        ContentAction::Prevent => Err(GatewayError::content_invalid(request, problems)),
    }
}

/// `validate-parameters`: every failing parameter is named in one answer (`query.NAME`,
/// `path.NAME`).
pub(super) fn validate_parameters(
    s: &ValidateParametersStep,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    let mut problems: Vec<(String, String)> = Vec::new();
    let query: Vec<(String, String)> = ex
        .query
        .iter()
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    for (name, check) in &s.query {
        let mut seen = false;
        for (_, value) in query.iter().filter(|(k, _)| k == name) {
            seen = true;
            if let Some(p) = check.problem(value) {
                problems.push((format!("query.{name}"), p));
            }
        }
        if !seen && check.required {
            problems.push((format!("query.{name}"), "missing".to_owned()));
        }
    }
    let mut unspecified = Vec::new();
    if s.unspecified_query_parameter_action != ContentAction::Ignore {
        for (k, _) in &query {
            if !s.query.iter().any(|(n, _)| n == k) && !unspecified.contains(k) {
                unspecified.push(k.clone());
            }
        }
    }
    for (name, check) in &s.path {
        // A parameter this operation's template does not have (a policy at a wider scope).
        let Some((_, raw)) = ex.params.iter().find(|(n, _)| &**n == name) else {
            continue;
        };
        if let Some(p) = check.problem(&percent_decode(raw)) {
            problems.push((format!("path.{name}"), p));
        }
    }
    let mut refused = match s.action {
        ContentAction::Prevent => problems.clone(),
        _ => Vec::new(),
    };
    let undeclared: Vec<(String, String)> = unspecified
        .into_iter()
        .map(|k| (format!("query.{k}"), "not declared".to_owned()))
        .collect();
    if s.unspecified_query_parameter_action == ContentAction::Prevent {
        refused.extend(undeclared.iter().cloned());
    }
    let mut detected: Vec<&(String, String)> = Vec::new();
    if s.action == ContentAction::Detect {
        detected.extend(problems.iter());
    }
    if s.unspecified_query_parameter_action == ContentAction::Detect {
        detected.extend(undeclared.iter());
    }
    if !detected.is_empty() {
        let listed: Vec<String> = detected.iter().map(|(n, p)| format!("{n}: {p}")).collect();
        tracing::warn!(
            target: "outpost::policy",
            api = %ex.api.name,
            operation = %ex.operation().name,
            request_id = %ex.request_id,
            problems = %listed.join("; "),
            "validate-parameters found problems (detect: let through)"
        );
    }
    if refused.is_empty() {
        Ok(Flow::Continue)
    } else {
        Err(GatewayError::parameters_invalid(refused))
    }
}
