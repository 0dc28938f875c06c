//! `limit-concurrency`: in-flight requests per key on this node.

use std::sync::Arc;

use outpost_model::policy::LimitConcurrency;
use outpost_model::template::Template;

use super::{Step, StepCx};

#[derive(Debug)]
pub struct LimitConcurrencyStep {
    /// Where the policy is written (`policies/global.inbound[0].limit-concurrency`): requests
    /// count against the same counters only when they pass the same policy with the same key,
    /// and the counters survive configuration reloads.
    pub id: Arc<str>,
    pub key: Template,
    pub max_count: u32,
}

pub(super) fn limit_concurrency(p: &LimitConcurrency, cx: &mut StepCx<'_>) -> Option<Step> {
    if p.key.trim().is_empty() {
        cx.problem("key", "must not be empty");
        return None;
    }
    if p.max_count == 0 {
        cx.problem("max-count", "must be at least 1");
        return None;
    }
    let key = cx.template("key", &p.key)?;
    Some(Step::LimitConcurrency(Arc::new(LimitConcurrencyStep {
        id: Arc::from(cx.at.as_str()),
        key,
        max_count: p.max_count,
    })))
}
