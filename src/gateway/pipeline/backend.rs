//! `set-backend-service`, `forward-request`, `retry`: where and how the request is sent. They
//! only adjust the exchange (target, timeout, retry rule); the pipeline forwards once, after
//! the backend section (see `super::super::forward`).

use std::sync::Arc;

use outpost_actors::route_table::steps::{
    BackendTarget, ForwardRequestStep, RetryStep, SetBackendServiceStep,
};
use outpost_actors::route_table::table::BackendUrl;

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow, Target};

pub(super) fn set_backend_service(
    s: &SetBackendServiceStep,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    match &s.target {
        BackendTarget::Backend(b) => ex.target = Target::of(b),
        BackendTarget::Url(u) => {
            ex.target.url = u.clone();
            ex.target.pool = None;
        }
        BackendTarget::UrlTemplate(t) => {
            ex.target.pool = None;
            let rendered = ex.render(t);
            ex.target.url = BackendUrl::parse(&rendered).map_err(|e| {
                GatewayError::internal(
                    "PolicyInvalidBackendUrl",
                    format!("set-backend-service produced an invalid URL: {e}"),
                )
            })?;
        }
    }
    Ok(Flow::Continue)
}

pub(super) fn forward_request(
    s: &ForwardRequestStep,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    ex.timeout_override = s.timeout;
    Ok(Flow::Continue)
}

pub(super) fn retry(s: &Arc<RetryStep>, ex: &mut Exchange) -> Result<Flow, GatewayError> {
    ex.retry = Some(s.clone());
    Ok(Flow::Continue)
}
