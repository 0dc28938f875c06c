//! Compiled policy steps: what each policy of a document becomes once named values are
//! substituted, templates parsed, addresses, keys and status lists decoded.
//!
//! `compile_policy` is the one exhaustive `match` over [`Policy`]: a policy the gateway does not
//! implement is a compile problem, so the control plane (which runs this compiler as its
//! validator) refuses the document at publish time instead of a gateway skipping it.
//!
//! One file per policy family under `steps/`, each with its compiled step types and their
//! compilers; `steps/cx.rs` holds what they share (`StepCx`) and imports none of them. The
//! gateway runs each family in the file of the same name under `src/gateway/pipeline/`.
//!
//! # Adding a step kind
//! 1. In its family's file `steps/<family>.rs` (a new one if none fits), the compiled struct
//!    and `pub(super) fn <policy>(policy, &mut StepCx) -> Option<Step>` (see `steps/headers.rs`).
//! 2. A variant in [`Step`] and the policy's arm in `compile_policy` calling it.
//! 3. Its execution in the gateway's `src/gateway/pipeline/<family>.rs` and the arm in
//!    `pipeline::run_step`; the compiler makes both matches exhaustive, so nothing is forgotten.

mod auth;
mod backend;
mod cache;
mod calls;
mod certificates;
mod choose;
mod convert;
mod cors;
mod cx;
mod headers;
mod limits;
mod observe;
mod responses;
mod validation;

use std::sync::Arc;

use outpost_model::policy::Policy;

pub use auth::{CheckHeaderStep, Cidr, IpFilterStep, JwtKey, JwtRejection, ValidateJwtStep};
pub use backend::{BackendTarget, ForwardRequestStep, RetryStep, SetBackendServiceStep};
pub use cache::{
    CacheLookupStep, CacheLookupValueStep, CacheRemoveValueStep, CacheStoreStep,
    CacheStoreValueStep,
};
pub use calls::{CALL_CONNECT_TIMEOUT, CallTarget, CallUrl, SendRequestStep};
pub use certificates::{
    AuthenticationCertificateStep, CertificateRejection, ValidateClientCertificateStep,
};
pub use choose::{ChooseStep, SetVariableStep};
pub use convert::{ConvertStep, Direction};
pub use cors::CorsStep;
pub(crate) use cx::StepCx;
pub use cx::{Text, literal};
pub use headers::{
    AuthenticationBasicStep, QueryTemplate, RewriteUriStep, SetHeaderStep, SetMethodStep,
    SetQueryParameterStep, encode_query_component,
};
pub(crate) use limits::fuse_rate_limit_then_quota;
pub use limits::{
    LimitConcurrencyStep, QuotaStep, RateLimitByKeyStep, RateLimitOf, RateLimitStep,
    RateLimitThenQuotaStep,
};
pub use observe::{EmitMetricStep, LogStep};
pub use responses::{
    FindAndReplaceStep, MockResponseStep, ReturnResponseStep, SetBodyStep, SetStatusStep,
};
pub use validation::{
    Allowed, ContentCheck, HeaderCheck, MAX_CONTENT_PROBLEMS, ParameterCheck, ValidateContentStep,
    ValidateHeadersStep, ValidateParametersStep,
};

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
    RateLimit(Arc<RateLimitStep>),
    RateLimitByKey(Arc<RateLimitByKeyStep>),
    /// `quota` and `quota-by-key`.
    Quota(Arc<QuotaStep>),
    /// A rate limit and the quota right after it in `inbound`, made by
    /// `fuse_rate_limit_then_quota` once `base` is expanded, never by a single policy.
    RateLimitThenQuota(Arc<RateLimitThenQuotaStep>),
    CacheLookup(Arc<CacheLookupStep>),
    CacheStore(Arc<CacheStoreStep>),
    CacheLookupValue(Arc<CacheLookupValueStep>),
    CacheStoreValue(Arc<CacheStoreValueStep>),
    CacheRemoveValue(Arc<CacheRemoveValueStep>),
    ValidateClientCertificate(Arc<ValidateClientCertificateStep>),
    AuthenticationCertificate(Arc<AuthenticationCertificateStep>),
    Choose(Arc<ChooseStep>),
    SetVariable(Arc<SetVariableStep>),
    SetStatus(Arc<SetStatusStep>),
    SetMethod(Arc<SetMethodStep>),
    SetBody(Arc<SetBodyStep>),
    AuthenticationBasic(Arc<AuthenticationBasicStep>),
    ValidateHeaders(Arc<ValidateHeadersStep>),
    FindAndReplace(Arc<FindAndReplaceStep>),
    SendRequest(Arc<SendRequestStep>),
    Log(Arc<LogStep>),
    EmitMetric(Arc<EmitMetricStep>),
    ValidateContent(Arc<ValidateContentStep>),
    ValidateParameters(Arc<ValidateParametersStep>),
    /// `json-to-xml` and `xml-to-json`.
    Convert(Arc<ConvertStep>),
}

impl Step {
    /// Whether this step, or one nested in it (`choose`), satisfies `f`.
    pub fn any(&self, f: &impl Fn(&Step) -> bool) -> bool {
        f(self)
            || match self {
                Step::Choose(c) => c.nested().any(|s| s.any(f)),
                _ => false,
            }
    }
}

/// A step of a section before `base` is expanded.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Base,
    Step(Step),
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
        Policy::RateLimit(p) => limits::rate_limit(p, cx),
        Policy::RateLimitByKey(p) => limits::rate_limit_by_key(p, cx),
        Policy::Quota(p) => limits::quota(p, cx),
        Policy::QuotaByKey(p) => limits::quota_by_key(p, cx),
        Policy::LimitConcurrency(p) => limits::limit_concurrency(p, cx),
        Policy::CacheLookup(p) => cache::cache_lookup(p, cx),
        Policy::CacheStore(p) => cache::cache_store(p, cx),
        Policy::CacheLookupValue(p) => cache::cache_lookup_value(p, cx),
        Policy::CacheStoreValue(p) => cache::cache_store_value(p, cx),
        Policy::CacheRemoveValue(p) => cache::cache_remove_value(p, cx),
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
        Policy::ValidateClientCertificate(p) => certificates::validate_client_certificate(p, cx),
        Policy::AuthenticationCertificate(p) => certificates::authentication_certificate(p, cx),
        Policy::Choose(p) => choose::choose(p, cx),
        Policy::SetVariable(p) => choose::set_variable(p, cx),
        Policy::SetStatus(p) => responses::set_status(p, cx),
        Policy::SetMethod(p) => headers::set_method(p, cx),
        Policy::SetBody(p) => responses::set_body(p, cx),
        Policy::AuthenticationBasic(p) => headers::authentication_basic(p, cx),
        Policy::ValidateHeaders(p) => validation::validate_headers(p, cx),
        Policy::FindAndReplace(p) => responses::find_and_replace(p, cx),
        Policy::SendRequest(p) => calls::send_request(p, cx),
        Policy::Log(p) => observe::log(p, cx),
        Policy::EmitMetric(p) => observe::emit_metric(p, cx),
        Policy::ValidateContent(p) => validation::validate_content(p, cx),
        Policy::ValidateParameters(p) => validation::validate_parameters(p, cx),
        Policy::JsonToXml(p) => convert::json_to_xml(p, cx),
        Policy::XmlToJson(p) => convert::xml_to_json(p, cx),
    };
    step.map(Item::Step)
}
