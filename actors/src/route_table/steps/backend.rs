//! `set-backend-service`, `forward-request`, `retry`: where and how the request is sent.
//!
//! The backend section is not a list of sends: its steps adjust the target, the timeout and the
//! retry rule, and the pipeline forwards once (with retries) after the section has run.

use std::sync::Arc;
use std::time::Duration;

use outpost_model::policy::{ForwardRequest, Retry, SetBackendService, StatusSet};
use outpost_model::template::Template;

use super::Step;
use super::cx::{StepCx, literal};
use crate::route_table::backend::{BackendUrl, CompiledBackend};

#[derive(Debug)]
pub struct SetBackendServiceStep {
    pub target: BackendTarget,
}

#[derive(Debug)]
pub enum BackendTarget {
    /// A backend resource, with its timeouts and TLS settings.
    Backend(Arc<CompiledBackend>),
    /// A base URL without request variables; timeouts and TLS settings stay those of the
    /// backend the request was going to.
    Url(BackendUrl),
    /// A base URL rendered per request, then parsed.
    UrlTemplate(Template),
}

#[derive(Debug)]
pub struct ForwardRequestStep {
    /// Overrides the backend's request timeout.
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
pub struct RetryStep {
    /// Extra attempts after the first.
    pub count: u32,
    pub interval: Duration,
    pub condition: StatusSet,
    pub on_connection_error: bool,
}

pub(super) fn set_backend_service(p: &SetBackendService, cx: &mut StepCx<'_>) -> Option<Step> {
    let target = match (&p.backend_id, &p.base_url) {
        (Some(id), None) => match cx.backends.get(id.as_str()) {
            Some(b) => BackendTarget::Backend(b.clone()),
            None => {
                cx.problem("backend-id", format!("unknown backend '{id}'"));
                return None;
            }
        },
        (None, Some(url)) => {
            let t = cx.template("base-url", url)?;
            match literal(&t) {
                Some(url) => match BackendUrl::parse(url) {
                    Ok(u) => BackendTarget::Url(u),
                    Err(e) => {
                        cx.problem("base-url", e);
                        return None;
                    }
                },
                None => BackendTarget::UrlTemplate(t),
            }
        }
        _ => {
            cx.problem("", "set exactly one of backend-id and base-url");
            return None;
        }
    };
    Some(Step::SetBackendService(Arc::new(SetBackendServiceStep {
        target,
    })))
}

pub(super) fn forward_request(p: &ForwardRequest, cx: &mut StepCx<'_>) -> Option<Step> {
    if let Some(t) = p.timeout
        && !(1..=3_600).contains(&t)
    {
        cx.problem("timeout", format!("{t} is out of range 1..=3600 seconds"));
        return None;
    }
    Some(Step::ForwardRequest(Arc::new(ForwardRequestStep {
        timeout: p.timeout.map(Duration::from_secs),
    })))
}

pub(super) fn retry(p: &Retry, cx: &mut StepCx<'_>) -> Option<Step> {
    let condition = match StatusSet::parse(&p.condition) {
        Ok(c) => c,
        Err(e) => {
            cx.problem("condition", e);
            return None;
        }
    };
    if !(1..=10).contains(&p.count) {
        cx.problem("count", format!("{} is out of range 1..=10", p.count));
        return None;
    }
    Some(Step::Retry(Arc::new(RetryStep {
        count: p.count,
        interval: Duration::from_millis(p.interval_ms.min(60_000)),
        condition,
        on_connection_error: p.on_connection_error,
    })))
}
