//! `validate-headers`: the request headers an operation expects, checked before the backend.

use std::sync::Arc;

use awc::http::header::HeaderName;
use outpost_model::policy::{
    ContentAction, ParameterType, UnspecifiedHeaderAction, ValidateContent, ValidateHeaders,
    ValidateParameters,
};
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

/// `validate-content`, compiled: one JSON Schema validator per content type, built once per
/// snapshot.
pub struct ValidateContentStep {
    pub max_size: u64,
    pub size_exceeded_action: ContentAction,
    pub unspecified_content_type_action: ContentAction,
    /// By lowercase media type.
    pub content: Vec<(String, ContentCheck)>,
}

pub struct ContentCheck {
    pub validator: jsonschema::Validator,
    pub action: ContentAction,
}

impl std::fmt::Debug for ValidateContentStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateContentStep")
            .field("max_size", &self.max_size)
            .field(
                "content",
                &self.content.iter().map(|(m, _)| m).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Most problems one answer lists: a body can fail a schema in many places at once.
pub const MAX_CONTENT_PROBLEMS: usize = 20;

impl ValidateContentStep {
    /// The rule for a `Content-Type` value: its media type, without parameters, any case.
    pub fn rule_for(&self, content_type: &str) -> Option<&ContentCheck> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        self.content
            .iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(media))
            .map(|(_, c)| c)
    }
}

impl ContentCheck {
    /// The body's problems, as (JSON pointer of the place, what is wrong); at most
    /// [`MAX_CONTENT_PROBLEMS`]. Empty when the body is valid.
    pub fn problems(&self, body: &[u8]) -> Vec<(String, String)> {
        let value: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return vec![("".to_owned(), format!("the body is not JSON: {e}"))],
        };
        self.validator
            .iter_errors(&value)
            .take(MAX_CONTENT_PROBLEMS)
            .map(|e| (e.instance_path().to_string(), e.to_string()))
            .collect()
    }
}

pub(super) fn validate_content(p: &ValidateContent, cx: &mut StepCx<'_>) -> Option<Step> {
    let mut ok = true;
    let mut content = Vec::with_capacity(p.content.len());
    if p.content.is_empty() {
        cx.problem("content", "at least one content type");
        ok = false;
    }
    for (media, rule) in &p.content {
        let field = format!("content.{media}.schema");
        let schema: serde_json::Value = match serde_json::from_str(&rule.schema.0) {
            Ok(v) => v,
            Err(e) => {
                cx.problem(&field, format!("not JSON: {e}"));
                ok = false;
                continue;
            }
        };
        match jsonschema::validator_for(&schema) {
            Ok(validator) => content.push((
                media.to_ascii_lowercase(),
                ContentCheck {
                    validator,
                    action: rule.action,
                },
            )),
            Err(e) => {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_owned() } else { at };
                cx.problem(&field, format!("not a valid JSON Schema at {at}: {e}"));
                ok = false;
            }
        }
    }
    if !(1..=104_857_600).contains(&p.max_size) {
        cx.problem(
            "max-size",
            format!("{} is out of range 1..=104857600", p.max_size),
        );
        ok = false;
    }
    ok.then(|| {
        Step::ValidateContent(Arc::new(ValidateContentStep {
            max_size: p.max_size,
            size_exceeded_action: p.size_exceeded_action,
            unspecified_content_type_action: p.unspecified_content_type_action,
            content,
        }))
    })
}

#[cfg(test)]
mod content_tests {
    use super::*;

    fn check(schema: serde_json::Value) -> ContentCheck {
        ContentCheck {
            validator: jsonschema::validator_for(&schema).unwrap(),
            action: ContentAction::Prevent,
        }
    }

    #[test]
    fn problems_name_their_place() {
        let c = check(serde_json::json!({
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}
        }));
        assert!(c.problems(br#"{"id": 1, "tags": ["a"]}"#).is_empty());
        let p = c.problems(br#"{"id": "x", "tags": ["a", 2]}"#);
        let places: Vec<&str> = p.iter().map(|(at, _)| at.as_str()).collect();
        assert_eq!(places, vec!["/id", "/tags/1"], "{p:?}");
        let p = c.problems(b"{not json");
        assert!(p[0].1.starts_with("the body is not JSON"), "{p:?}");
    }
}

/// `validate-parameters`, compiled: patterns built once per snapshot.
#[derive(Debug)]
pub struct ValidateParametersStep {
    pub action: ContentAction,
    pub unspecified_query_parameter_action: ContentAction,
    /// By decoded name.
    pub query: Vec<(String, ParameterCheck)>,
    /// By URL template parameter name.
    pub path: Vec<(String, ParameterCheck)>,
}

#[derive(Debug)]
pub struct ParameterCheck {
    pub kind: ParameterType,
    pub required: bool,
    /// Anchored: the whole value must match.
    pub pattern: Option<Regex>,
    pub values: Vec<String>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
}

impl ParameterCheck {
    /// Why `value` (decoded) is not acceptable, if it is not.
    pub fn problem(&self, value: &str) -> Option<String> {
        let number = match self.kind {
            ParameterType::String => None,
            ParameterType::Boolean => {
                if value != "true" && value != "false" {
                    return Some(format!("'{value}' is not a boolean (true or false)"));
                }
                None
            }
            ParameterType::Integer => match value.parse::<i64>() {
                Ok(i) => Some(i as f64),
                Err(_) => return Some(format!("'{value}' is not an integer")),
            },
            ParameterType::Number => match value.parse::<f64>() {
                Ok(n) if n.is_finite() => Some(n),
                _ => return Some(format!("'{value}' is not a number")),
            },
        };
        if let Some(n) = number {
            if let Some(min) = self.minimum
                && n < min
            {
                return Some(format!("{value} is less than the minimum {min}"));
            }
            if let Some(max) = self.maximum
                && n > max
            {
                return Some(format!("{value} is more than the maximum {max}"));
            }
        }
        if let Some(p) = &self.pattern
            && !p.is_match(value)
        {
            return Some("does not match the declared pattern".to_owned());
        }
        if !self.values.is_empty() && !self.values.iter().any(|v| v == value) {
            return Some("is not one of the allowed values".to_owned());
        }
        None
    }
}

fn parameter_check(
    cx: &mut StepCx<'_>,
    field: &str,
    rule: &outpost_model::policy::ParameterRule,
) -> Option<ParameterCheck> {
    let pattern = match &rule.pattern {
        None => None,
        Some(p) => match Regex::new(&format!("^(?:{p})$")) {
            Ok(r) => Some(r),
            Err(e) => {
                cx.problem(
                    &format!("{field}.pattern"),
                    format!("not a valid pattern: {e}"),
                );
                return None;
            }
        },
    };
    if matches!(rule.kind, ParameterType::String | ParameterType::Boolean)
        && (rule.minimum.is_some() || rule.maximum.is_some())
    {
        cx.problem(
            field,
            "minimum and maximum are for integer and number parameters",
        );
        return None;
    }
    Some(ParameterCheck {
        kind: rule.kind,
        required: rule.required,
        pattern,
        values: rule.values.clone(),
        minimum: rule.minimum,
        maximum: rule.maximum,
    })
}

pub(super) fn validate_parameters(p: &ValidateParameters, cx: &mut StepCx<'_>) -> Option<Step> {
    let mut ok = true;
    let mut path = Vec::with_capacity(p.path.len());
    for (name, rule) in &p.path {
        if let Some(params) = cx.params
            && !params.iter().any(|x| x == name)
        {
            cx.problem(
                &format!("path.{name}"),
                format!("'{name}' is not a parameter of the operation's URL template"),
            );
            ok = false;
        }
        match parameter_check(cx, &format!("path.{name}"), rule) {
            Some(c) => path.push((name.clone(), c)),
            None => ok = false,
        }
    }
    let mut query = Vec::with_capacity(p.query.len());
    for (name, rule) in &p.query {
        match parameter_check(cx, &format!("query.{name}"), rule) {
            Some(c) => query.push((name.clone(), c)),
            None => ok = false,
        }
    }
    ok.then(|| {
        Step::ValidateParameters(Arc::new(ValidateParametersStep {
            action: p.action,
            unspecified_query_parameter_action: p.unspecified_query_parameter_action,
            query,
            path,
        }))
    })
}
