//! Running an operation's compiled pipeline for one request.
//!
//! ```text
//!  inbound ──► backend ──► forward (retry) ──► outbound ──► response
//!     │           │              │                 │
//!     └───────────┴──── error ───┴─────────────────┴──► on-error ──► response
//! ```
//!
//! - `inbound` steps act on the request (headers, query, path, target) and may answer it
//!   themselves (`return-response`, `mock-response`, a `cors` preflight): the answer goes to
//!   the client as is, the backend and `outbound` are skipped.
//! - `backend` steps set the target, the timeout and the retry rule; then the request is
//!   forwarded once (see [`super::forward`]).
//! - `outbound` steps act on the response.
//! - Any failure (a policy refusal, an unreachable backend) becomes the response of a
//!   [`GatewayError`] and `on-error` runs on it, with the error in the variables
//!   `error-reason`, `error-message`, `error-source` and `error-status`
//!   (`{variable.error-message}`).
//!
//! Each policy family runs in its own file under `pipeline/`, named as its compiled steps'
//! file under `actors/src/route_table/steps/`; [`run_step`] is the one exhaustive `match` over
//! the compiled [`Step`]s. What they act on is in [`super::exchange`].

mod auth;
mod backend;
mod cache;
mod calls;
mod certificates;
mod convert;
mod cors;
mod expr;
mod headers;
mod limits;
mod observe;
mod responses;
mod validation;

use outpost_actors::route_table::steps::Step;
use outpost_actors::route_table::table::Pipeline;

pub use cors::{decorate, is_preflight, preflight_response};
pub use observe::{MAX_LABEL_BYTES, MAX_SERIES_PER_METRIC, OVERFLOW};

use super::error::{ErrorSource, GatewayError};
use super::exchange::{Exchange, Flow, Phase, Response, Runtime};
use super::{forward, otel, upgrade};

/// Runs the pipeline to a response; never fails (failures become `on-error` responses).
pub async fn run(ex: &mut Exchange, pipeline: &Pipeline, rt: &Runtime) -> Response {
    let mut res = match run_main(ex, pipeline, rt).await {
        Ok(res) => res,
        Err(err) => {
            otel::failed(&mut ex.trace, &err);
            run_on_error(ex, pipeline, rt, err).await
        }
    };
    otel::end(&mut ex.trace);
    finish(ex, rt, &mut res);
    res
}

async fn run_main(
    ex: &mut Exchange,
    pipeline: &Pipeline,
    rt: &Runtime,
) -> Result<Response, GatewayError> {
    let mut from_cache = None;
    otel::begin(&mut ex.trace, Phase::Inbound);
    for step in pipeline.inbound.iter() {
        let flow = match step_now(step, Phase::Inbound, ex) {
            Some(flow) => flow?,
            None => run_step(step, Phase::Inbound, ex, rt).await?,
        };
        match flow {
            Flow::Continue => {}
            Flow::Respond(res) => return Ok(res),
            Flow::SkipToOutbound(res) => {
                from_cache = Some(res);
                break;
            }
        }
    }
    let response = match from_cache {
        Some(res) => res,
        None => {
            otel::begin(&mut ex.trace, Phase::Backend);
            for step in pipeline.backend.iter() {
                let flow = match step_now(step, Phase::Backend, ex) {
                    Some(flow) => flow?,
                    None => run_step(step, Phase::Backend, ex, rt).await?,
                };
                match flow {
                    Flow::Continue => {}
                    Flow::Respond(res) => return Ok(res),
                    Flow::SkipToOutbound(res) => {
                        from_cache = Some(res);
                        break;
                    }
                }
            }
            match (from_cache, ex.upgrade.take()) {
                (Some(res), _) => res,
                (None, client) => {
                    otel::call_started(&mut ex.trace);
                    let sent = match client {
                        Some(client) => upgrade::send(ex, client, rt).await,
                        None => forward::send(ex, rt).await,
                    };
                    otel::call_ended(ex, &sent);
                    sent?
                }
            }
        }
    };
    ex.response = Some(response);
    otel::begin(&mut ex.trace, Phase::Outbound);
    for step in pipeline.outbound.iter() {
        let flow = match step_now(step, Phase::Outbound, ex) {
            Some(flow) => flow?,
            None => run_step(step, Phase::Outbound, ex, rt).await?,
        };
        match flow {
            Flow::Continue => {}
            Flow::Respond(res) | Flow::SkipToOutbound(res) => return Ok(res),
        }
    }
    Ok(ex.response.take().expect("set above, taken only here"))
}

async fn run_on_error(
    ex: &mut Exchange,
    pipeline: &Pipeline,
    rt: &Runtime,
    err: GatewayError,
) -> Response {
    if err.source == ErrorSource::Backend {
        tracing::debug!(api = %ex.api.name, error = %err, "backend call failed");
    }
    ex.variables
        .insert("error-reason".into(), err.reason.to_owned());
    ex.variables
        .insert("error-message".into(), err.message.to_string());
    ex.variables
        .insert("error-source".into(), err.source.as_str().to_owned());
    ex.variables
        .insert("error-status".into(), err.status.as_u16().to_string());
    ex.response = Some(Response::from_error(&err));
    ex.error = Some(err);
    otel::begin(&mut ex.trace, Phase::OnError);
    for step in pipeline.on_error.iter() {
        match run_step(step, Phase::OnError, ex, rt).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Respond(res)) | Ok(Flow::SkipToOutbound(res)) => return res,
            Err(e) => {
                // An on-error policy that fails leaves the original error's answer.
                tracing::warn!(api = %ex.api.name, error = %e, "on-error policy failed");
                break;
            }
        }
    }
    ex.response.take().expect("set above")
}

/// After the pipeline: headers onto the response, post-response accounting (in the background:
/// the client does not wait for it).
fn finish(ex: &mut Exchange, rt: &Runtime, response: &mut Response) {
    for (name, value) in ex.shared_state.headers.drain(..) {
        // A refusal's own headers (e.g. remaining 0 on a 429) win.
        if !response.headers.contains_key(&name) {
            response.headers.insert(name, value);
        }
    }
    limits::after_response(ex, rt, response);
    // Dropping an unused fill releases the requests waiting on it.
    ex.shared_state.fill = None;
}

/// A `set-header` (the most common step) run at once, without `run_step`'s future, which is
/// as large as the largest step's (about 70 instructions a step); `None` for any other step.
fn step_now(step: &Step, phase: Phase, ex: &mut Exchange) -> Option<Result<Flow, GatewayError>> {
    match step {
        Step::SetHeader(s) => Some(headers::set_header(s, phase, ex)),
        _ => None,
    }
}

/// Runs one step. The `match` is exhaustive over every compiled step kind.
pub async fn run_step(
    step: &Step,
    phase: Phase,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    match step {
        Step::SetHeader(s) => headers::set_header(s, phase, ex),
        Step::SetQueryParameter(s) => headers::set_query_parameter(s, ex),
        Step::RewriteUri(s) => headers::rewrite_uri(s, ex),
        Step::SetBackendService(s) => backend::set_backend_service(s, ex),
        Step::ForwardRequest(s) => backend::forward_request(s, ex),
        Step::Retry(s) => backend::retry(s, ex),
        Step::MockResponse(s) => responses::mock_response(s, ex),
        Step::ReturnResponse(s) => responses::return_response(s, ex),
        Step::ValidateJwt(s) => auth::validate_jwt(s, ex).await,
        Step::CheckHeader(s) => auth::check_header(s, ex),
        Step::IpFilter(s) => auth::ip_filter(s, ex),
        Step::Cors(s) => cors::apply(s, ex),
        Step::LimitConcurrency(s) => limits::limit_concurrency(s, ex, rt),
        Step::RateLimit(s) => limits::rate_limit(s, ex, rt).await,
        Step::RateLimitByKey(s) => limits::rate_limit_by_key(s, ex, rt).await,
        Step::Quota(s) => limits::quota(s, ex, rt).await,
        Step::RateLimitThenQuota(s) => limits::rate_limit_then_quota(s, ex, rt).await,
        Step::CacheLookup(s) => cache::cache_lookup(s, ex, rt).await,
        Step::CacheStore(s) => cache::cache_store(s, ex, rt).await,
        Step::CacheLookupValue(s) => cache::cache_lookup_value(s, ex, rt).await,
        Step::CacheStoreValue(s) => cache::cache_store_value(s, ex, rt).await,
        Step::CacheRemoveValue(s) => cache::cache_remove_value(s, ex, rt).await,
        Step::ValidateClientCertificate(s) => certificates::validate_client_certificate(s, ex),
        Step::AuthenticationCertificate(s) => certificates::authentication_certificate(s, ex),
        Step::Choose(s) => expr::choose(s, phase, ex, rt).await,
        Step::SetVariable(s) => expr::set_variable(s, ex),
        Step::SetStatus(s) => responses::set_status(s, ex),
        Step::SetMethod(s) => headers::set_method(s, ex),
        Step::SetBody(s) => responses::set_body(s, phase, ex),
        Step::AuthenticationBasic(s) => headers::authentication_basic(s, ex),
        Step::ValidateHeaders(s) => validation::validate_headers(s, ex),
        Step::FindAndReplace(s) => responses::find_and_replace(s, phase, ex, rt).await,
        Step::SendRequest(s) => calls::send_request(s, phase, ex, rt).await,
        Step::Log(s) => observe::log(s, ex),
        Step::EmitMetric(s) => observe::emit_metric(s, ex),
        Step::ValidateContent(s) => validation::validate_content(s, phase, ex, rt).await,
        Step::ValidateParameters(s) => validation::validate_parameters(s, ex),
        Step::Convert(s) => convert::convert(s, phase, ex, rt).await,
    }
}
