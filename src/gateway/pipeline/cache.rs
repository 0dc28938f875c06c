//! `cache-lookup`, `cache-store`, `cache-lookup-value`, `cache-store-value`,
//! `cache-remove-value`.
//!
//! A hit skips the backend and runs `outbound` on the stored response (with `Age`). A miss
//! leaves a fill in the request: `cache-store` completes it (buffering the body, when its size
//! is known and under `cache.max_entry_bytes`), otherwise the fill is released when the request
//! ends and the requests that waited on it fetch for themselves. The rules (methods, statuses,
//! `Cache-Control`) are in `outpost_actors::cache::rules`.

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use outpost_actors::cache::rules::{
    CacheControl, RequestFacts, ResponseFacts, lookup_allowed, storable_header, store_ttl,
};
use outpost_actors::cache::{CacheKey, CachedResponse, Lookup};
use outpost_actors::route_table::CacheStatus;
use outpost_actors::route_table::steps::{
    CacheLookupStep, CacheLookupValueStep, CacheRemoveValueStep, CacheStoreStep,
    CacheStoreValueStep,
};
use outpost_actors::shared_state::local::now_ms;

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow, PendingFill, Response, Runtime, percent_decode};

fn cache_control(headers: &HeaderMap) -> CacheControl {
    CacheControl::parse(
        headers
            .get_all(header::CACHE_CONTROL)
            .filter_map(|v| v.to_str().ok()),
    )
}

fn response_key(s: &CacheLookupStep, ex: &Exchange) -> CacheKey {
    let mut key =
        CacheKey::response(&ex.gateway_name, &ex.api.name, &ex.operation().name).path(&ex.path);
    let mut query: Vec<(String, String)> = if s.vary_by_query_parameter.is_empty() {
        ex.query
            .iter()
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect()
    } else {
        s.vary_by_query_parameter
            .iter()
            .map(|n| (n.clone(), ex.query_value(n).unwrap_or_default()))
            .collect()
    };
    query.sort();
    for (k, v) in &query {
        key = key.query(k, v);
    }
    for h in &s.vary_by_header {
        let values: Vec<&[u8]> = ex
            .request_headers
            .get_all(h)
            .map(HeaderValue::as_bytes)
            .collect();
        let joined = values.join(&b","[..]);
        key = key.header(h.as_str(), (!values.is_empty()).then_some(&joined[..]));
    }
    if s.vary_by_developer {
        key = key.subscription(ex.subscription.as_ref().map(|s| &*s.name));
    }
    key.build()
}

pub async fn cache_lookup(
    s: &CacheLookupStep,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let facts = RequestFacts {
        method: ex.method.as_str(),
        cache_control: cache_control(&ex.request_headers),
        pragma_no_cache: ex
            .request_headers
            .get(header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("no-cache")),
        has_authorization: ex.request_headers.contains_key(header::AUTHORIZATION),
    };
    // A WebSocket handshake is answered by the backend, never from the cache.
    if ex.upgrade.is_some() || !lookup_allowed(&facts, s.ignore_cache_control) {
        return Ok(Flow::Continue);
    }
    let has_authorization = facts.has_authorization;
    let key = response_key(s, ex);
    match rt.cache.lookup(&key, s.caching).await {
        Lookup::Hit { response, .. } => {
            ex.cache = CacheStatus::Hit;
            let mut headers = HeaderMap::new();
            for (name, value) in &response.headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(value),
                ) {
                    headers.append(n, v);
                }
            }
            headers.insert(header::AGE, HeaderValue::from(response.age_secs(now_ms())));
            let body = if ex.method == actix_web::http::Method::HEAD {
                BoxBody::new(())
            } else {
                BoxBody::new(response.body.clone())
            };
            Ok(Flow::SkipToOutbound(Response {
                status: StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK),
                headers,
                body,
            }))
        }
        Lookup::Miss(fill) => {
            ex.cache = CacheStatus::Miss;
            ex.shared_state.fill = Some(PendingFill {
                fill,
                vary_by_developer: s.vary_by_developer,
                has_authorization,
                method_get: ex.method == actix_web::http::Method::GET,
            });
            Ok(Flow::Continue)
        }
    }
}

pub async fn cache_store(
    s: &CacheStoreStep,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let Some(pending) = ex.shared_state.fill.take() else {
        return Ok(Flow::Continue);
    };
    let Some(res) = ex.response.as_mut() else {
        return Ok(Flow::Continue);
    };
    let request = RequestFacts {
        method: if pending.method_get { "GET" } else { "HEAD" },
        has_authorization: pending.has_authorization,
        ..RequestFacts::default()
    };
    let facts = ResponseFacts {
        status: res.status.as_u16(),
        cache_control: cache_control(&res.headers),
        has_set_cookie: res.headers.contains_key(header::SET_COOKIE),
        vary_star: res
            .headers
            .get_all(header::VARY)
            .any(|v| v.as_bytes().contains(&b'*')),
    };
    let Some(ttl) = store_ttl(
        &request,
        &facts,
        s.duration,
        pending.vary_by_developer,
        s.ignore_cache_control,
    ) else {
        return Ok(Flow::Continue);
    };
    let max = rt.cache.config().max_entry_bytes;
    match res.body.size() {
        BodySize::Sized(n) if n <= max => {}
        BodySize::None => {}
        // Unknown or too large: streamed through, not stored.
        _ => return Ok(Flow::Continue),
    }
    let body = std::mem::replace(&mut res.body, BoxBody::new(()));
    let bytes = actix_web::body::to_bytes(body).await.map_err(|e| {
        GatewayError::new(
            StatusCode::BAD_GATEWAY,
            crate::gateway::error::ErrorSource::Backend,
            "BackendResponseBroken",
            format!("The backend's response body broke off: {e}"),
        )
    })?;
    res.body = BoxBody::new(bytes.clone());
    let headers = res
        .headers
        .iter()
        .filter(|(n, _)| storable_header(n.as_str()))
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let cached = CachedResponse {
        status: res.status.as_u16(),
        headers,
        body: bytes,
        stored_at_ms: 0,
        ttl_ms: 0,
    };
    rt.cache.store(pending.fill, cached, ttl).await;
    Ok(Flow::Continue)
}

fn value_key(ex: &Exchange, key: &str) -> CacheKey {
    CacheKey::value(&ex.gateway_name, key)
}

pub async fn cache_lookup_value(
    s: &CacheLookupValueStep,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let key = value_key(ex, &ex.render(&s.key));
    let value = match rt.cache.lookup_value(&key, s.caching).await {
        Some(v) => Some(v),
        None => s.default_value.as_ref().map(|d| ex.render(d)),
    };
    if let Some(v) = value {
        ex.variables.insert(s.variable_name.clone(), v);
    }
    Ok(Flow::Continue)
}

pub async fn cache_store_value(
    s: &CacheStoreValueStep,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let key = value_key(ex, &ex.render(&s.key));
    let value = ex.render(&s.value);
    rt.cache
        .store_value(&key, value, s.duration, s.caching)
        .await;
    Ok(Flow::Continue)
}

pub async fn cache_remove_value(
    s: &CacheRemoveValueStep,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let key = value_key(ex, &ex.render(&s.key));
    rt.cache.remove_value(&key, s.caching).await;
    Ok(Flow::Continue)
}
