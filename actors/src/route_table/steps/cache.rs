//! The cache family: `cache-lookup`, `cache-store` and `cache-*-value`. The gateway runs them
//! in `src/gateway/pipeline/cache.rs`; the rules they follow are in `crate::cache::rules`.

use std::sync::Arc;
use std::time::Duration;

use awc::http::header::HeaderName;
use outpost_model::policy::{
    CacheLookup, CacheLookupValue, CacheRemoveValue, CacheStore, CacheStoreValue, CachingType,
};
use outpost_model::template::Template;

use super::Step;
use super::cx::{StepCx, header_name};

#[derive(Debug)]
pub struct CacheLookupStep {
    pub vary_by_header: Vec<HeaderName>,
    /// Empty: the whole query (sorted) is part of the key.
    pub vary_by_query_parameter: Vec<String>,
    pub vary_by_developer: bool,
    pub ignore_cache_control: bool,
    pub caching: CachingType,
}

#[derive(Debug)]
pub struct CacheStoreStep {
    pub duration: Duration,
    pub ignore_cache_control: bool,
}

#[derive(Debug)]
pub struct CacheLookupValueStep {
    pub key: Template,
    pub variable_name: String,
    pub default_value: Option<Template>,
    pub caching: CachingType,
}

#[derive(Debug)]
pub struct CacheStoreValueStep {
    pub key: Template,
    pub value: Template,
    pub duration: Duration,
    pub caching: CachingType,
}

#[derive(Debug)]
pub struct CacheRemoveValueStep {
    pub key: Template,
    pub caching: CachingType,
}

fn duration(cx: &mut StepCx<'_>, secs: u64) -> Option<Duration> {
    if secs == 0 {
        cx.problem("duration", "must be at least 1 second");
        return None;
    }
    Some(Duration::from_secs(secs))
}

fn non_empty(cx: &mut StepCx<'_>, field: &str, s: &str) -> Option<()> {
    if s.trim().is_empty() {
        cx.problem(field, "must not be empty");
        return None;
    }
    Some(())
}

pub(super) fn cache_lookup(p: &CacheLookup, cx: &mut StepCx<'_>) -> Option<Step> {
    let mut headers = Vec::new();
    let mut ok = true;
    for (i, h) in p.vary_by_header.iter().enumerate() {
        match header_name(cx, &format!("vary-by-header[{i}]"), h) {
            Some(h) => headers.push(h),
            None => ok = false,
        }
    }
    let mut query: Vec<String> = p.vary_by_query_parameter.clone();
    query.sort();
    query.dedup();
    ok.then(|| {
        Step::CacheLookup(Arc::new(CacheLookupStep {
            vary_by_header: headers,
            vary_by_query_parameter: query,
            vary_by_developer: p.vary_by_developer,
            ignore_cache_control: p.ignore_cache_control,
            caching: p.caching_type,
        }))
    })
}

pub(super) fn cache_store(p: &CacheStore, cx: &mut StepCx<'_>) -> Option<Step> {
    Some(Step::CacheStore(Arc::new(CacheStoreStep {
        duration: duration(cx, p.duration)?,
        ignore_cache_control: p.ignore_cache_control,
    })))
}

pub(super) fn cache_lookup_value(p: &CacheLookupValue, cx: &mut StepCx<'_>) -> Option<Step> {
    let named = non_empty(cx, "key", &p.key).and(non_empty(cx, "variable-name", &p.variable_name));
    let key = cx.template("key", &p.key);
    let default_value = match &p.default_value {
        Some(d) => Some(cx.template("default-value", d)?),
        None => None,
    };
    named?;
    Some(Step::CacheLookupValue(Arc::new(CacheLookupValueStep {
        key: key?,
        variable_name: p.variable_name.clone(),
        default_value,
        caching: p.caching_type,
    })))
}

pub(super) fn cache_store_value(p: &CacheStoreValue, cx: &mut StepCx<'_>) -> Option<Step> {
    let named = non_empty(cx, "key", &p.key);
    let key = cx.template("key", &p.key);
    let value = cx.template("value", &p.value);
    let duration = duration(cx, p.duration);
    named?;
    Some(Step::CacheStoreValue(Arc::new(CacheStoreValueStep {
        key: key?,
        value: value?,
        duration: duration?,
        caching: p.caching_type,
    })))
}

pub(super) fn cache_remove_value(p: &CacheRemoveValue, cx: &mut StepCx<'_>) -> Option<Step> {
    non_empty(cx, "key", &p.key)?;
    Some(Step::CacheRemoveValue(Arc::new(CacheRemoveValueStep {
        key: cx.template("key", &p.key)?,
        caching: p.caching_type,
    })))
}
