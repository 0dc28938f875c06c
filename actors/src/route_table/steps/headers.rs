//! `set-header`, `set-query-parameter`, `rewrite-uri`: the request (or response) as forwarded.

use std::sync::Arc;

use awc::http::header::{HeaderName, HeaderValue};
use outpost_model::policy::{ExistsAction, RewriteUri, SetHeader, SetQueryParameter};
use outpost_model::template::{Segment, Template};

use super::Step;
use super::cx::{StepCx, Text, header_name};

/// `set-header`: on the request in `inbound`, on the response in `outbound` / `on-error`.
#[derive(Debug)]
pub struct SetHeaderStep {
    pub name: HeaderName,
    /// `None` with `exists-action: delete`.
    pub value: Option<Text>,
    /// `value` made once here when it is plain text (no variable, no expression): the request
    /// path then clones it instead of rendering and checking it every time.
    pub constant: Option<HeaderValue>,
    pub action: ExistsAction,
}

#[derive(Debug)]
pub struct SetQueryParameterStep {
    /// Percent-encoded, as it appears in a query string.
    pub name: String,
    pub value: Option<Text>,
    pub action: ExistsAction,
}

/// `rewrite-uri`: the backend path (and query) from a template.
#[derive(Debug)]
pub struct RewriteUriStep {
    pub path: Template,
    /// `name=value` pairs of the template's query part; names percent-encoded.
    pub query: Vec<QueryTemplate>,
    pub copy_unmatched_params: bool,
}

#[derive(Debug)]
pub struct QueryTemplate {
    pub name: String,
    pub value: Template,
}

pub(super) fn set_header(p: &SetHeader, cx: &mut StepCx<'_>) -> Option<Step> {
    let name = header_name(cx, "name", &p.name);
    let value = match (
        cx.text("value", p.value.as_deref(), p.value_expression.as_deref()),
        p.exists_action,
    ) {
        (Some(None), ExistsAction::Delete) => Some(None),
        (Some(None), _) => {
            cx.problem("value", "a value is needed unless exists-action is delete");
            None
        }
        (v, _) => v,
    };
    let value = value?;
    Some(Step::SetHeader(Arc::new(SetHeaderStep {
        name: name?,
        constant: value.as_ref().and_then(constant_value),
        value,
        action: p.exists_action,
    })))
}

/// A template of literals only, as a header value (`None` for anything else, or for text that
/// is not a valid value: that one is refused per request, as a rendered one is).
fn constant_value(text: &Text) -> Option<HeaderValue> {
    let Text::Template(t) = text else {
        return None;
    };
    let mut out = String::new();
    for segment in &t.segments {
        match segment {
            Segment::Literal(l) => out.push_str(l),
            _ => return None,
        }
    }
    HeaderValue::from_str(&out).ok()
}

pub(super) fn set_query_parameter(p: &SetQueryParameter, cx: &mut StepCx<'_>) -> Option<Step> {
    if p.name.is_empty() {
        cx.problem("name", "must not be empty");
        return None;
    }
    let value = match (
        cx.text("value", p.value.as_deref(), p.value_expression.as_deref())?,
        p.exists_action,
    ) {
        (None, ExistsAction::Delete) => None,
        (None, _) => {
            cx.problem("value", "a value is needed unless exists-action is delete");
            return None;
        }
        (Some(v), _) => Some(v),
    };
    Some(Step::SetQueryParameter(Arc::new(SetQueryParameterStep {
        name: encode_query_component(&p.name),
        value,
        action: p.exists_action,
    })))
}

pub(super) fn rewrite_uri(p: &RewriteUri, cx: &mut StepCx<'_>) -> Option<Step> {
    if !p.template.starts_with('/') {
        cx.problem("template", "must start with '/'");
        return None;
    }
    let (path, query) = p
        .template
        .split_once('?')
        .unwrap_or((p.template.as_str(), ""));
    let path = cx.template("template", path);
    let mut pairs = Vec::new();
    let mut ok = true;
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match cx.template("template", value) {
            Some(value) => pairs.push(QueryTemplate {
                name: name.to_owned(),
                value,
            }),
            None => ok = false,
        }
    }
    if !ok {
        return None;
    }
    Some(Step::RewriteUri(Arc::new(RewriteUriStep {
        path: path?,
        query: pairs,
        copy_unmatched_params: p.copy_unmatched_params,
    })))
}

/// Percent-encodes a query name or value (RFC 3986 unreserved characters stay as they are).
pub fn encode_query_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

/// `authentication-basic`: the `Authorization` value, built once. Its `Debug` hides it.
pub struct AuthenticationBasicStep {
    pub value: awc::http::header::HeaderValue,
}

impl std::fmt::Debug for AuthenticationBasicStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthenticationBasicStep { value: <redacted> }")
    }
}

pub(super) fn authentication_basic(
    p: &outpost_model::policy::AuthenticationBasic,
    cx: &mut StepCx<'_>,
) -> Option<Step> {
    use base64::Engine;
    let username = cx.plain("username", &p.username);
    let password = cx.plain("password", &p.password);
    let (username, password) = (username?, password?);
    if username.contains(':') {
        cx.problem("username", "a Basic user name cannot contain ':'");
        return None;
    }
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    match awc::http::header::HeaderValue::from_str(&format!("Basic {encoded}")) {
        Ok(mut value) => {
            // Kept out of HTTP/2 header compression tables and debug output.
            value.set_sensitive(true);
            Some(Step::AuthenticationBasic(Arc::new(
                AuthenticationBasicStep { value },
            )))
        }
        Err(_) => {
            cx.problem("password", "not usable in a header");
            None
        }
    }
}

/// `set-method`: the method the request is forwarded with, parsed once.
#[derive(Debug)]
pub struct SetMethodStep {
    pub method: awc::http::Method,
}

pub(super) fn set_method(
    p: &outpost_model::policy::SetMethod,
    cx: &mut StepCx<'_>,
) -> Option<Step> {
    let text = p.method.trim();
    match awc::http::Method::from_bytes(text.as_bytes()) {
        Ok(method) if !text.is_empty() => Some(Step::SetMethod(Arc::new(SetMethodStep { method }))),
        _ => {
            cx.problem("method", format!("'{}' is not an HTTP method", p.method));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_text_is_made_once() {
        let text = |s: &str| Text::Template(Template::parse(s).unwrap());
        assert_eq!(
            constant_value(&text("a b")).unwrap().to_str().unwrap(),
            "a b"
        );
        assert!(constant_value(&text("id {request.id}")).is_none());
        // Not a valid value: left to the per-request path, which refuses it.
        assert!(constant_value(&text("a\u{7f}b")).is_none());
    }
}
