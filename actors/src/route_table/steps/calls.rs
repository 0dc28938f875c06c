//! `send-request`: a call to another service from the pipeline, its answer kept for the later
//! steps. The gateway sends it with its own pooled HTTP/1.1 client (`src/gateway/pipeline/calls.rs`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use awc::http::Method;
use outpost_model::policy::{SendRequest, SendRequestMode};
use outpost_model::template::Template;

use super::cx::{StepCx, Text, literal};
use super::{Step, headers};
use crate::expr::Expression;
use crate::route_table::backend::BackendUrl;
use crate::route_table::tls::{TlsProfile, TlsSettings};

/// Connecting (TCP and TLS) takes at most this long, within the call's own `timeout`.
pub const CALL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `send-request`, compiled.
#[derive(Debug)]
pub struct SendRequestStep {
    /// `response-variable-name`.
    pub variable: String,
    pub mode: SendRequestMode,
    pub url: CallUrl,
    /// `None`: `GET` (`new`) or the request's method (`copy`).
    pub method: Option<Method>,
    pub headers: Vec<Arc<headers::SetHeaderStep>>,
    pub body: Option<Text>,
    pub timeout: Duration,
    pub ignore_error: bool,
    /// Public web PKI roots, verified, HTTP/1.1: one profile for every call, so the calls of
    /// every snapshot share the gateway's connection pool.
    pub tls: Arc<TlsProfile>,
}

/// Where a call goes.
#[derive(Debug)]
pub enum CallUrl {
    /// Without request variables: parsed once here.
    Fixed(CallTarget),
    /// Rendered per request, then parsed.
    Template(Template),
    Expression(Expression),
}

/// An absolute URL split as the gateway's client sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTarget {
    /// Scheme and authority (no base path).
    pub base: BackendUrl,
    /// Raw path, starting with `/` (or empty for the root).
    pub path: String,
    /// Raw (percent-encoded) query pairs.
    pub query: Vec<(String, String)>,
}

impl CallTarget {
    /// `http(s)://authority[/path][?query]` in printable ASCII (percent-encode the rest), no
    /// fragment: what the gateway's client can write as a request target.
    pub fn parse(url: &str) -> Result<CallTarget, String> {
        if url.bytes().any(|b| b <= b' ' || b >= 0x7f || b == b'#') {
            return Err(format!(
                "'{url}' must be printable ASCII without blanks or a fragment (percent-encode \
                 the rest)"
            ));
        }
        let (without_query, query) = match url.split_once('?') {
            Some((u, q)) => (u, q),
            None => (url, ""),
        };
        let after_scheme = without_query
            .strip_prefix("https://")
            .or_else(|| without_query.strip_prefix("http://"))
            .ok_or_else(|| format!("'{url}' must start with http:// or https://"))?;
        let split = after_scheme.find('/').unwrap_or(after_scheme.len());
        let scheme_len = without_query.len() - after_scheme.len();
        let base = BackendUrl::parse(&without_query[..scheme_len + split])?;
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (p.to_owned(), String::new()),
            })
            .collect();
        Ok(CallTarget {
            base,
            path: after_scheme[split..].to_owned(),
            query,
        })
    }
}

/// The profile every call uses (see [`SendRequestStep::tls`]).
fn call_tls() -> Result<Arc<TlsProfile>, String> {
    static PROFILE: OnceLock<Result<Arc<TlsProfile>, String>> = OnceLock::new();
    PROFILE
        .get_or_init(|| {
            TlsSettings::default_with_timeout(CALL_CONNECT_TIMEOUT)
                .build()
                .map(Arc::new)
                .map_err(|(_, e)| e)
        })
        .clone()
}

pub(super) fn send_request(p: &SendRequest, cx: &mut StepCx<'_>) -> Option<Step> {
    let mut ok = true;
    if p.response_variable_name.trim().is_empty() {
        cx.problem("response-variable-name", "must not be empty");
        ok = false;
    }
    let url = match cx.text("url", p.url.as_deref(), p.url_expression.as_deref()) {
        Some(Some(Text::Template(t))) => match literal(&t) {
            Some(fixed) => match CallTarget::parse(fixed) {
                Ok(target) => Some(CallUrl::Fixed(target)),
                Err(e) => {
                    cx.problem("url", e);
                    None
                }
            },
            None => Some(CallUrl::Template(t)),
        },
        Some(Some(Text::Expression(e))) => Some(CallUrl::Expression(e)),
        Some(None) => {
            cx.problem("", "set exactly one of url and url-expression");
            None
        }
        None => None,
    };
    let method = match &p.method {
        None => Some(None),
        Some(m) => match Method::from_bytes(m.as_bytes()) {
            Ok(method) if !m.is_empty() => Some(Some(method)),
            _ => {
                cx.problem("method", format!("'{m}' is not an HTTP method"));
                None
            }
        },
    };
    let mut compiled_headers = Vec::with_capacity(p.headers.len());
    for (i, h) in p.headers.iter().enumerate() {
        let mut inner = StepCx {
            named_values: cx.named_values,
            backends: cx.backends,
            jwks: cx.jwks,
            params: cx.params,
            at: format!("{}.headers[{i}]", cx.at),
            section: cx.section,
            problems: &mut *cx.problems,
        };
        match headers::set_header(h, &mut inner) {
            Some(Step::SetHeader(s)) => compiled_headers.push(s),
            _ => ok = false,
        }
    }
    let body = match (&p.body, &p.body_expression) {
        (Some(_), Some(_)) => {
            cx.problem("", "set at most one of body and body-expression");
            None
        }
        (b, e) => cx.text("body", b.as_deref(), e.as_deref()),
    };
    if !(1..=600).contains(&p.timeout) {
        cx.problem("timeout", format!("{} is out of range 1..=600", p.timeout));
        ok = false;
    }
    let tls = match call_tls() {
        Ok(t) => Some(t),
        Err(e) => {
            cx.problem("", format!("cannot build the TLS client: {e}"));
            None
        }
    };
    let (url, method, body, tls) = (url?, method?, body?, tls?);
    if !ok {
        return None;
    }
    Some(Step::SendRequest(Arc::new(SendRequestStep {
        variable: p.response_variable_name.clone(),
        mode: p.mode,
        url,
        method,
        headers: compiled_headers,
        body,
        timeout: Duration::from_secs(p.timeout),
        ignore_error: p.ignore_error,
        tls,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_base_path_and_query() {
        let t = CallTarget::parse("https://id.example:8443/a/b?x=1&y&z=%20").unwrap();
        assert!(t.base.https);
        assert_eq!(t.base.authority, "id.example:8443");
        assert_eq!(t.base.base_path, "");
        assert_eq!(t.path, "/a/b");
        assert_eq!(
            t.query,
            vec![
                ("x".into(), "1".into()),
                ("y".into(), String::new()),
                ("z".into(), "%20".into())
            ]
        );
        let root = CallTarget::parse("http://h").unwrap();
        assert_eq!((root.path.as_str(), root.query.len()), ("", 0));
        for bad in [
            "ftp://h/",
            "http:///x",
            "http://h/a b",
            "http://h/#f",
            "h/x",
            "http://h/é",
        ] {
            assert!(CallTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
