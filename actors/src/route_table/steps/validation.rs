//! `validate-headers`: the request headers an operation expects, checked before the backend.

use std::sync::Arc;

use awc::http::header::HeaderName;
use outpost_model::policy::{UnspecifiedHeaderAction, ValidateHeaders};
use regex::Regex;

use super::Step;
use super::cx::{StepCx, header_name};

/// Headers `prevent` lets through undeclared: the protocol's own and the ones the gateway
/// manages (forwarding, W3C trace context it adds when the client sent none), which a client
/// cannot be asked to declare.
const PROTOCOL_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "traceparent",
    "tracestate",
];

#[derive(Debug)]
pub struct ValidateHeadersStep {
    pub headers: Vec<HeaderCheck>,
    /// Refuse undeclared headers (other than [`ValidateHeadersStep::is_protocol_header`]).
    pub prevent_unspecified: bool,
}

/// One declared header, compiled.
#[derive(Debug)]
pub struct HeaderCheck {
    pub name: HeaderName,
    pub required: bool,
    pub allowed: Allowed,
}

/// What a declared header's values may be.
#[derive(Debug)]
pub enum Allowed {
    Any,
    /// Anchored at both ends when compiled: a value must match whole.
    Pattern(Regex),
    Values(Vec<String>),
}

impl Allowed {
    pub fn admits(&self, value: &str) -> bool {
        match self {
            Allowed::Any => true,
            Allowed::Pattern(r) => r.is_match(value),
            Allowed::Values(v) => v.iter().any(|x| x == value),
        }
    }
}

impl ValidateHeadersStep {
    pub fn is_protocol_header(name: &HeaderName) -> bool {
        PROTOCOL_HEADERS.contains(&name.as_str())
    }

    pub fn declares(&self, name: &HeaderName) -> bool {
        self.headers.iter().any(|h| h.name == name)
    }
}

pub(super) fn validate_headers(p: &ValidateHeaders, cx: &mut StepCx<'_>) -> Option<Step> {
    let mut ok = true;
    let mut headers = Vec::with_capacity(p.headers.len());
    for (i, h) in p.headers.iter().enumerate() {
        let at = format!("headers[{i}]");
        let name = header_name(cx, &format!("{at}.name"), &h.name);
        let allowed = match (&h.pattern, h.values.is_empty()) {
            (None, true) => Some(Allowed::Any),
            (Some(re), true) => match Regex::new(&format!("^(?:{re})$")) {
                Ok(r) => Some(Allowed::Pattern(r)),
                Err(e) => {
                    cx.problem(
                        &format!("{at}.pattern"),
                        format!("not a regular expression: {e}"),
                    );
                    None
                }
            },
            (None, false) => h
                .values
                .iter()
                .enumerate()
                .map(|(j, v)| cx.plain(&format!("{at}.values[{j}]"), v))
                .collect::<Option<Vec<String>>>()
                .map(Allowed::Values),
            (Some(_), false) => {
                cx.problem(&at, "set at most one of pattern and values");
                None
            }
        };
        match (name, allowed) {
            (Some(name), Some(allowed)) => headers.push(HeaderCheck {
                name,
                required: h.required,
                allowed,
            }),
            _ => ok = false,
        }
    }
    if p.headers.is_empty() {
        cx.problem("headers", "at least one header");
        ok = false;
    }
    ok.then(|| {
        Step::ValidateHeaders(Arc::new(ValidateHeadersStep {
            headers,
            prevent_unspecified: p.unspecified_header_action == UnspecifiedHeaderAction::Prevent,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_must_match_the_whole_value() {
        let a = Allowed::Pattern(Regex::new("^(?:[0-9]+|x)$").unwrap());
        assert!(a.admits("123"));
        assert!(a.admits("x"));
        assert!(!a.admits("12a"));
        assert!(!a.admits("xx"));
    }
}
