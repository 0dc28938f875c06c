//! Compiled policy steps: what each policy of a document becomes once named values are
//! substituted, templates parsed, addresses, keys and status lists decoded.
//!
//! `compile_policy` is the one exhaustive `match` over [`Policy`]: a policy the gateway does not
//! implement is a compile problem, so the control plane (which runs this compiler as its
//! validator) refuses the document at publish time instead of a gateway skipping it.
//!
//! # Adding a step kind
//! 1. A file `steps/<name>.rs` with the compiled struct and `pub(super) fn compile(policy,
//!    &mut StepCx) -> Option<Step>` (see `steps/headers.rs`).
//! 2. A variant in [`Step`] and the policy's arm in `compile_policy` calling it.
//! 3. Its execution in the gateway's pipeline (`src/gateway/pipeline/<name>.rs`) and the arm in
//!    `pipeline::run_step`; the compiler makes both matches exhaustive, so nothing is forgotten.

mod auth;
mod backend;
mod cors;
mod headers;
mod limits;
mod responses;

use std::collections::HashMap;
use std::sync::Arc;

use outpost_model::Problems;
use outpost_model::policy::Policy;
use outpost_model::template::{Segment, Template, Var, substitute_named_values};

pub use auth::{CheckHeaderStep, Cidr, IpFilterStep, JwtKey, JwtRejection, ValidateJwtStep};
pub use backend::{BackendTarget, ForwardRequestStep, RetryStep, SetBackendServiceStep};
pub use cors::CorsStep;
pub use headers::{
    QueryTemplate, RewriteUriStep, SetHeaderStep, SetQueryParameterStep, encode_query_component,
};
pub use limits::LimitConcurrencyStep;
pub use responses::{MockResponseStep, ReturnResponseStep};

use super::table::CompiledBackend;

/// One compiled policy. Cheap to clone: pipelines share steps across operations.
#[derive(Debug, Clone)]
pub enum Step {
    SetHeader(Arc<SetHeaderStep>),
    SetQueryParameter(Arc<SetQueryParameterStep>),
    RewriteUri(Arc<RewriteUriStep>),
    SetBackendService(Arc<SetBackendServiceStep>),
    MockResponse(Arc<MockResponseStep>),
    ReturnResponse(Arc<ReturnResponseStep>),
    ForwardRequest(Arc<ForwardRequestStep>),
    Retry(Arc<RetryStep>),
    ValidateJwt(Arc<ValidateJwtStep>),
    CheckHeader(Arc<CheckHeaderStep>),
    IpFilter(Arc<IpFilterStep>),
    Cors(Arc<CorsStep>),
    LimitConcurrency(Arc<LimitConcurrencyStep>),
    // Shared-state steps: compiled in `shared_state::policy` and `cache::policy`.
    RateLimit(Arc<crate::shared_state::policy::RateLimitStep>),
    RateLimitByKey(Arc<crate::shared_state::policy::RateLimitByKeyStep>),
    /// `quota` and `quota-by-key`.
    Quota(Arc<crate::shared_state::policy::QuotaStep>),
    CacheLookup(Arc<crate::cache::policy::CacheLookupStep>),
    CacheStore(Arc<crate::cache::policy::CacheStoreStep>),
    CacheLookupValue(Arc<crate::cache::policy::CacheLookupValueStep>),
    CacheStoreValue(Arc<crate::cache::policy::CacheStoreValueStep>),
    CacheRemoveValue(Arc<crate::cache::policy::CacheRemoveValueStep>),
}

/// A step of a section before `base` is expanded.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Base,
    Step(Step),
}

/// What compiling one policy needs to know, and where its problems go.
pub(crate) struct StepCx<'a> {
    pub(crate) named_values: &'a HashMap<&'a str, &'a str>,
    pub(crate) backends: &'a HashMap<&'a str, Arc<CompiledBackend>>,
    /// URL template parameters when compiling an operation's own document: `{param}` references
    /// are checked against them. At wider scopes a missing parameter renders empty.
    pub(crate) params: Option<&'a [String]>,
    /// Location of the policy, e.g. `apis/orders.policies.inbound[2].set-header`.
    pub(crate) at: String,
    pub(crate) problems: &'a mut Problems,
}

impl StepCx<'_> {
    pub(crate) fn problem(&mut self, field: &str, message: impl Into<String>) {
        let path = if field.is_empty() {
            self.at.clone()
        } else {
            format!("{}.{field}", self.at)
        };
        self.problems.push(path, message);
    }

    /// Parses a request template, substituting named values.
    pub(crate) fn template(&mut self, field: &str, s: &str) -> Option<Template> {
        let named_values = self.named_values;
        let parsed = Template::parse(s)
            .and_then(|t| t.resolve_named_values(|n| named_values.get(n).copied()));
        match parsed {
            Ok(t) => {
                if let Some(params) = self.params {
                    for v in t.vars() {
                        if let Var::Param(p) = v
                            && !params.iter().any(|x| x == p)
                        {
                            self.problem(
                                field,
                                format!(
                                    "'{{{p}}}' is not a parameter of the operation's URL template"
                                ),
                            );
                        }
                    }
                }
                Some(t)
            }
            Err(e) => {
                self.problem(field, e);
                None
            }
        }
    }

    /// Substitutes named values in a plain string (no request variables).
    pub(crate) fn plain(&mut self, field: &str, s: &str) -> Option<String> {
        let named_values = self.named_values;
        match substitute_named_values(s, |n| named_values.get(n).copied()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(field, e);
                None
            }
        }
    }
}

/// The literal text of a template that uses no request variable, if it is one.
pub fn literal(t: &Template) -> Option<&str> {
    match t.segments.as_slice() {
        [] => Some(""),
        [Segment::Literal(l)] => Some(l),
        _ => None,
    }
}

#[allow(dead_code)] // every policy is implemented; kept for the next one that lands first
fn not_supported_yet(cx: &mut StepCx<'_>, name: &str) -> Option<Item> {
    cx.problem(
        "",
        format!("policy '{name}' is not supported by this gateway yet"),
    );
    None
}

/// Compiles one policy; `None` when it has problems (recorded in `cx`).
pub(crate) fn compile_policy(policy: &Policy, cx: &mut StepCx<'_>) -> Option<Item> {
    let step = match policy {
        Policy::Base => return Some(Item::Base),
        // Shared-state policies (Redis counters and cache).
        Policy::RateLimit(p) => {
            crate::shared_state::policy::rate_limit(p, cx).map(|s| Step::RateLimit(Arc::new(s)))
        }
        Policy::RateLimitByKey(p) => crate::shared_state::policy::rate_limit_by_key(p, cx)
            .map(|s| Step::RateLimitByKey(Arc::new(s))),
        Policy::Quota(p) => {
            crate::shared_state::policy::quota(p, cx).map(|s| Step::Quota(Arc::new(s)))
        }
        Policy::QuotaByKey(p) => {
            crate::shared_state::policy::quota_by_key(p, cx).map(|s| Step::Quota(Arc::new(s)))
        }
        Policy::CacheLookup(p) => {
            crate::cache::policy::cache_lookup(p, cx).map(|s| Step::CacheLookup(Arc::new(s)))
        }
        Policy::CacheStore(p) => {
            crate::cache::policy::cache_store(p, cx).map(|s| Step::CacheStore(Arc::new(s)))
        }
        Policy::CacheLookupValue(p) => crate::cache::policy::cache_lookup_value(p, cx)
            .map(|s| Step::CacheLookupValue(Arc::new(s))),
        Policy::CacheStoreValue(p) => crate::cache::policy::cache_store_value(p, cx)
            .map(|s| Step::CacheStoreValue(Arc::new(s))),
        Policy::CacheRemoveValue(p) => crate::cache::policy::cache_remove_value(p, cx)
            .map(|s| Step::CacheRemoveValue(Arc::new(s))),
        Policy::ValidateJwt(p) => auth::validate_jwt(p, cx),
        Policy::CheckHeader(p) => auth::check_header(p, cx),
        Policy::IpFilter(p) => auth::ip_filter(p, cx),
        Policy::Cors(p) => cors::compile(p, cx),
        Policy::SetHeader(p) => headers::set_header(p, cx),
        Policy::SetQueryParameter(p) => headers::set_query_parameter(p, cx),
        Policy::RewriteUri(p) => headers::rewrite_uri(p, cx),
        Policy::SetBackendService(p) => backend::set_backend_service(p, cx),
        Policy::MockResponse(p) => responses::mock_response(p, cx),
        Policy::ReturnResponse(p) => responses::return_response(p, cx),
        Policy::Retry(p) => backend::retry(p, cx),
        Policy::ForwardRequest(p) => backend::forward_request(p, cx),
        Policy::LimitConcurrency(p) => limits::limit_concurrency(p, cx),
    };
    step.map(Item::Step)
}

/// A header name from a policy, checked once here so the hot path never parses one.
pub(crate) fn header_name(
    cx: &mut StepCx<'_>,
    field: &str,
    name: &str,
) -> Option<awc::http::header::HeaderName> {
    match awc::http::header::HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            cx.problem(field, format!("'{name}' is not a valid header name"));
            None
        }
    }
}
