//! `cors`: answers preflights and decorates actual responses with `Access-Control-*` headers.

use std::sync::Arc;

use awc::http::Method;
use awc::http::header::HeaderValue;
use outpost_model::policy::Cors;

use super::Step;
use super::cx::StepCx;

#[derive(Debug)]
pub struct CorsStep {
    /// Lowercase origins; `None` for `*`.
    pub allowed_origins: Option<Vec<String>>,
    /// `None` for any method (`*` or none listed).
    pub allowed_methods: Option<Vec<Method>>,
    /// Lowercase header names; `None` for `*` (any requested header is allowed).
    pub allowed_headers: Option<Vec<String>>,
    pub allow_methods_value: Option<HeaderValue>,
    pub allow_headers_value: Option<HeaderValue>,
    pub expose_headers_value: Option<HeaderValue>,
    pub allow_credentials: bool,
    pub max_age_value: Option<HeaderValue>,
    pub terminate_unmatched_request: bool,
}

impl CorsStep {
    pub fn origin_allowed(&self, origin: &str) -> bool {
        match &self.allowed_origins {
            None => true,
            Some(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }

    pub fn method_allowed(&self, method: &Method) -> bool {
        match &self.allowed_methods {
            None => true,
            Some(list) => list.contains(method),
        }
    }

    /// Whether every header of an `Access-Control-Request-Headers` list is allowed.
    pub fn headers_allowed(&self, requested: &str) -> bool {
        match &self.allowed_headers {
            None => true,
            Some(list) => requested
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .all(|h| list.iter().any(|a| a.eq_ignore_ascii_case(h))),
        }
    }

    /// `Access-Control-Allow-Origin` for an allowed `origin`: `*` unless credentials are
    /// allowed or origins are listed, in which case the origin itself (and `Vary: Origin`).
    pub fn allow_origin_is_wildcard(&self) -> bool {
        self.allowed_origins.is_none() && !self.allow_credentials
    }
}

pub(super) fn compile(p: &Cors, cx: &mut StepCx<'_>) -> Option<Step> {
    if p.allowed_origins.is_empty() {
        cx.problem("allowed-origins", "at least one origin (or '*')");
        return None;
    }
    let any_origin = p.allowed_origins.iter().any(|o| o == "*");
    if any_origin && p.allow_credentials {
        cx.problem(
            "allow-credentials",
            "credentials cannot be allowed for the '*' origin",
        );
        return None;
    }
    let mut ok = true;
    let allowed_methods =
        if p.allowed_methods.is_empty() || p.allowed_methods.iter().any(|m| m == "*") {
            None
        } else {
            let mut methods = Vec::new();
            for (i, m) in p.allowed_methods.iter().enumerate() {
                match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => methods.push(m),
                    Err(_) => {
                        cx.problem(
                            &format!("allowed-methods[{i}]"),
                            format!("'{m}' is not a method"),
                        );
                        ok = false;
                    }
                }
            }
            Some(methods)
        };
    let allowed_headers = if p.allowed_headers.iter().any(|h| h == "*") {
        None
    } else {
        Some(
            p.allowed_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        )
    };
    let mut value = |field: &str, s: String| -> Option<HeaderValue> {
        if s.is_empty() {
            return None;
        }
        match HeaderValue::from_str(&s) {
            Ok(v) => Some(v),
            Err(_) => {
                cx.problem(field, format!("'{s}' is not a valid header value"));
                ok = false;
                None
            }
        }
    };
    let allow_methods_value = value(
        "allowed-methods",
        allowed_methods
            .as_ref()
            .map(|ms: &Vec<Method>| ms.iter().map(Method::as_str).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
    );
    let allow_headers_value = value(
        "allowed-headers",
        if allowed_headers.is_none() {
            String::new()
        } else {
            p.allowed_headers.join(", ")
        },
    );
    let expose_headers_value = value("expose-headers", p.expose_headers.join(", "));
    let max_age_value = if p.preflight_result_max_age > 0 {
        value(
            "preflight-result-max-age",
            p.preflight_result_max_age.to_string(),
        )
    } else {
        None
    };
    if !ok {
        return None;
    }
    Some(Step::Cors(Arc::new(CorsStep {
        allowed_origins: (!any_origin).then(|| {
            p.allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect()
        }),
        allowed_methods,
        allowed_headers,
        allow_methods_value,
        allow_headers_value,
        expose_headers_value,
        allow_credentials: p.allow_credentials,
        max_age_value,
        terminate_unmatched_request: p.terminate_unmatched_request,
    })))
}
