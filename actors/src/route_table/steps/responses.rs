//! `mock-response`, `return-response`: answers made by the gateway itself; `set-status`.

use std::sync::Arc;

use awc::http::header::{HeaderName, HeaderValue};
use outpost_model::policy::{FindAndReplace, MockResponse, ReturnResponse, SetBody, SetStatus};
use outpost_model::template::Template;

use super::Step;
use super::cx::{StepCx, Text, header_name};
use crate::expr::Expression;

#[derive(Debug)]
pub struct MockResponseStep {
    pub status: u16,
    pub content_type: HeaderValue,
    /// `None`: an empty body.
    pub body: Option<Template>,
}

#[derive(Debug)]
pub struct ReturnResponseStep {
    pub status: u16,
    pub headers: Vec<(HeaderName, Template)>,
    pub body: Option<Text>,
}

fn check_status(cx: &mut StepCx<'_>, status: u16) -> bool {
    let ok = (100..=599).contains(&status);
    if !ok {
        cx.problem("status-code", format!("{status} is not an HTTP status"));
    }
    ok
}

pub(super) fn mock_response(p: &MockResponse, cx: &mut StepCx<'_>) -> Option<Step> {
    let status_ok = check_status(cx, p.status_code);
    let content_type = match HeaderValue::from_str(&p.content_type) {
        Ok(v) => Some(v),
        Err(_) => {
            cx.problem("content-type", "not a valid header value");
            None
        }
    };
    let body = match &p.body {
        Some(b) => Some(cx.template("body", b)?),
        None => None,
    };
    if !status_ok {
        return None;
    }
    Some(Step::MockResponse(Arc::new(MockResponseStep {
        status: p.status_code,
        content_type: content_type?,
        body,
    })))
}

pub(super) fn return_response(p: &ReturnResponse, cx: &mut StepCx<'_>) -> Option<Step> {
    let status_ok = check_status(cx, p.status_code);
    let mut headers = Vec::with_capacity(p.headers.len());
    for (i, h) in p.headers.iter().enumerate() {
        let name = header_name(cx, &format!("headers[{i}].name"), &h.name);
        let value = cx.template(&format!("headers[{i}].value"), &h.value);
        if let (Some(n), Some(v)) = (name, value) {
            headers.push((n, v));
        }
    }
    let body = cx.text("body", p.body.as_deref(), p.body_expression.as_deref())?;
    if !status_ok || headers.len() != p.headers.len() {
        return None;
    }
    Some(Step::ReturnResponse(Arc::new(ReturnResponseStep {
        status: p.status_code,
        headers,
        body,
    })))
}

/// `set-status`: a fixed status, or an expression checked per request to give one.
#[derive(Debug)]
pub enum SetStatusStep {
    Code(u16),
    Expression(Expression),
}

pub(super) fn set_status(p: &SetStatus, cx: &mut StepCx<'_>) -> Option<Step> {
    let step = match (p.code, &p.code_expression) {
        (Some(code), None) => {
            if !(100..=599).contains(&code) {
                cx.problem("code", format!("{code} is not an HTTP status"));
                return None;
            }
            SetStatusStep::Code(code)
        }
        (None, Some(e)) => SetStatusStep::Expression(cx.expression("code-expression", e)?),
        _ => {
            cx.problem("", "set exactly one of code and code-expression");
            return None;
        }
    };
    Some(Step::SetStatus(Arc::new(step)))
}

/// `set-body`: the new body, a template or an expression.
#[derive(Debug)]
pub struct SetBodyStep {
    pub body: Text,
}

pub(super) fn set_body(p: &SetBody, cx: &mut StepCx<'_>) -> Option<Step> {
    match cx.text("body", p.body.as_deref(), p.body_expression.as_deref())? {
        Some(body) => Some(Step::SetBody(Arc::new(SetBodyStep { body }))),
        None => {
            cx.problem("", "set exactly one of body and body-expression");
            None
        }
    }
}

/// `find-and-replace`: the searcher for `from` is built once per snapshot.
#[derive(Debug)]
pub struct FindAndReplaceStep {
    pub from: memchr::memmem::Finder<'static>,
    pub to: bytes::Bytes,
}

impl FindAndReplaceStep {
    /// `body` with every non-overlapping occurrence of `from` (left to right) replaced; `None`
    /// when there is none, so the body is left as it was.
    pub fn apply(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut found = self.from.find_iter(body).peekable();
        found.peek()?;
        let len = self.from.needle().len();
        let mut out = Vec::with_capacity(body.len());
        let mut last = 0;
        for at in found {
            out.extend_from_slice(&body[last..at]);
            out.extend_from_slice(&self.to);
            last = at + len;
        }
        out.extend_from_slice(&body[last..]);
        Some(out)
    }
}

pub(super) fn find_and_replace(p: &FindAndReplace, cx: &mut StepCx<'_>) -> Option<Step> {
    let from = cx.plain("from", &p.from);
    let to = cx.plain("to", &p.to)?;
    let from = from?;
    if from.is_empty() {
        cx.problem("from", "the text to find cannot be empty");
        return None;
    }
    Some(Step::FindAndReplace(Arc::new(FindAndReplaceStep {
        from: memchr::memmem::Finder::new(from.as_bytes()).into_owned(),
        to: bytes::Bytes::from(to),
    })))
}

#[cfg(test)]
mod find_and_replace_tests {
    use super::*;

    fn step(from: &str, to: &str) -> FindAndReplaceStep {
        FindAndReplaceStep {
            from: memchr::memmem::Finder::new(from.as_bytes()).into_owned(),
            to: bytes::Bytes::from(to.to_owned()),
        }
    }

    #[test]
    fn every_occurrence_is_replaced_left_to_right_without_overlap() {
        let s = step("aa", "b");
        assert_eq!(s.apply(b"aaaxaa").unwrap(), b"baxb");
        assert_eq!(step("x", "").apply(b"xyx").unwrap(), b"y");
        assert_eq!(s.apply(b"abc"), None);
    }
}
