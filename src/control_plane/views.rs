//! The config answers the gateway endpoint serves, cached: each gateway's view for its last few
//! revisions and the encoded answers for the last few (from, to) pairs, so that the instances of
//! one gateway polling on one change share one computation (see `gateway_api`'s module docs).
//! Also the protocol's body encodings ([`Format`]), because a cached answer keeps one per
//! encoding.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;
use dashmap::DashMap;
use outpost_model::view::{View, content_hash, gateway_view};
use outpost_model::wire::{self, BINCODE_MEDIA_TYPE, ConfigUpdate};
use outpost_model::{Kind, Resource, ResourceKey};
use serde::Serialize;

use super::error::ApiError;
use super::store::State;

/// Views and answers kept per gateway.
const VIEWS_KEPT: usize = 2;
const UPDATES_KEPT: usize = 4;

/// A gateway's view at one revision, with its content hash.
#[derive(Debug)]
pub struct GatewayView {
    pub revision: u64,
    pub view: View,
    pub hash: String,
}

/// An answer to a poll, with its encodings made on first use.
pub struct CachedUpdate {
    pub update: ConfigUpdate,
    pub(super) bincode: OnceLock<Result<Bytes, String>>,
    pub(super) json: OnceLock<Result<Bytes, String>>,
}

impl CachedUpdate {
    pub fn encoded(&self, format: Format) -> Result<Bytes, String> {
        match format {
            Format::Bincode => self.bincode.get_or_init(|| {
                wire::encode(&self.update)
                    .map(Bytes::from)
                    .map_err(|e| e.to_string())
            }),
            Format::Json => self.json.get_or_init(|| {
                serde_json::to_vec(&self.update)
                    .map(Bytes::from)
                    .map_err(|e| e.to_string())
            }),
        }
        .clone()
    }
}

/// (delta base, or `None` for a full snapshot; target revision; signer generation).
type UpdateKey = (Option<u64>, u64, u64);

/// Per-gateway views and encoded answers for the last few revisions. Each entry is a
/// `OnceLock`, so concurrent pollers of one gateway wait for one computation instead of all
/// doing it.
pub struct ViewCache {
    gateways: DashMap<String, Arc<Mutex<GatewayEntries>>>,
    /// Number of cached gateways above which entries of deleted gateways are dropped.
    sweep_above: AtomicUsize,
}

impl Default for ViewCache {
    fn default() -> Self {
        Self {
            gateways: DashMap::new(),
            sweep_above: AtomicUsize::new(64),
        }
    }
}

#[derive(Default)]
struct GatewayEntries {
    views: VecDeque<(u64, Arc<OnceLock<Arc<GatewayView>>>)>,
    updates: VecDeque<(UpdateKey, Arc<OnceLock<Arc<CachedUpdate>>>)>,
}

fn slot<K: PartialEq, V>(
    list: &mut VecDeque<(K, Arc<OnceLock<V>>)>,
    key: K,
    keep: usize,
) -> Arc<OnceLock<V>> {
    if let Some((_, v)) = list.iter().find(|(k, _)| *k == key) {
        return v.clone();
    }
    let v = Arc::new(OnceLock::new());
    list.push_back((key, v.clone()));
    while list.len() > keep {
        list.pop_front();
    }
    v
}

impl ViewCache {
    fn entries(&self, gateway: &str) -> Arc<Mutex<GatewayEntries>> {
        if let Some(e) = self.gateways.get(gateway) {
            return e.clone();
        }
        self.gateways.entry(gateway.to_owned()).or_default().clone()
    }

    /// The view of `gateway` in `state`, computed once per (gateway, revision).
    pub fn view(&self, gateway: &str, state: &State) -> Arc<GatewayView> {
        let cell = {
            let entries = self.entries(gateway);
            let mut e = entries.lock().expect("view cache lock");
            slot(&mut e.views, state.revision, VIEWS_KEPT)
        };
        cell.get_or_init(|| {
            self.forget_deleted_gateways(state);
            let candidates = candidates(state, gateway);
            let view = gateway_view(candidates.iter().copied(), Some(gateway));
            let hash = content_hash(&view);
            Arc::new(GatewayView {
                revision: state.revision,
                view,
                hash,
            })
        })
        .clone()
    }

    pub(super) fn cached_view(&self, gateway: &str, revision: u64) -> Option<Arc<GatewayView>> {
        let entries = self.gateways.get(gateway)?.clone();
        let e = entries.lock().expect("view cache lock");
        e.views
            .iter()
            .find(|(r, _)| *r == revision)
            .and_then(|(_, v)| v.get().cloned())
    }

    pub(super) fn update_slot(
        &self,
        gateway: &str,
        key: UpdateKey,
    ) -> Arc<OnceLock<Arc<CachedUpdate>>> {
        let entries = self.entries(gateway);
        let mut e = entries.lock().expect("view cache lock");
        slot(&mut e.updates, key, UPDATES_KEPT)
    }

    pub(super) fn peek_update(&self, gateway: &str, key: UpdateKey) -> Option<Arc<CachedUpdate>> {
        let entries = self.gateways.get(gateway)?.clone();
        let e = entries.lock().expect("view cache lock");
        e.updates
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.get().cloned())
    }

    /// Drops the entries of gateways that no longer exist, once the cache has grown past a
    /// high-water mark (so the check costs nothing on the hot path).
    fn forget_deleted_gateways(&self, state: &State) {
        if self.gateways.len() <= self.sweep_above.load(Ordering::Relaxed) {
            return;
        }
        self.gateways.retain(|name, _| {
            state
                .get(&ResourceKey::new(Kind::Gateway, name.clone()))
                .is_some()
        });
        self.sweep_above
            .store(2 * self.gateways.len() + 64, Ordering::Relaxed);
    }
}

/// What `gateway_view` needs to look at for `gateway`: everything but the APIs not assigned to
/// it and the other gateways, which never enter nor influence its view. Most of a large
/// configuration is other gateways' APIs, so this is what keeps one gateway's view cheap when a
/// thousand gateways wake up on one change (`gateway_view` indexes whatever it is given).
fn candidates<'a>(state: &'a State, gateway: &str) -> Vec<&'a Resource> {
    let Some(stored) = state.get(&ResourceKey::new(Kind::Gateway, gateway)) else {
        return Vec::new();
    };
    let Resource::Gateway(gw) = &stored.resource else {
        return Vec::new();
    };
    let mut out = vec![&stored.resource];
    out.extend(
        gw.apis
            .iter()
            .filter_map(|api| state.get(&ResourceKey::new(Kind::Api, api.clone())))
            .map(|s| &s.resource),
    );
    for kind in [
        Kind::NamedValue,
        Kind::Backend,
        Kind::Product,
        Kind::Subscription,
        Kind::GlobalPolicy,
    ] {
        out.extend(state.of_kind(kind).map(|s| &s.resource));
    }
    out
}

// === encodings ===

/// Body encoding of the gateway protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Bincode,
    Json,
}

impl Format {
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Bincode => BINCODE_MEDIA_TYPE,
            Format::Json => "application/json",
        }
    }

    /// JSON when the client accepts it explicitly, bincode otherwise.
    pub fn from_accept(req: &HttpRequest) -> Format {
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if accept.contains("application/json") {
            Format::Json
        } else {
            Format::Bincode
        }
    }

    /// The request body's encoding: JSON or bincode by `Content-Type` (bincode when absent).
    pub(super) fn from_content_type(req: &HttpRequest) -> Result<Format, ApiError> {
        let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
            return Ok(Format::Bincode);
        };
        let ct = ct.to_str().unwrap_or_default();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case("application/json") {
            Ok(Format::Json)
        } else if essence.eq_ignore_ascii_case(BINCODE_MEDIA_TYPE)
            || essence.eq_ignore_ascii_case("application/octet-stream")
        {
            Ok(Format::Bincode)
        } else {
            Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type '{ct}' is not supported: use {BINCODE_MEDIA_TYPE} or application/json"
            )))
        }
    }

    pub(super) fn decode<T: serde::de::DeserializeOwned>(self, body: &[u8]) -> Result<T, ApiError> {
        match self {
            Format::Bincode => wire::decode(body)
                .map_err(|e| ApiError::BadRequest(format!("invalid bincode body: {e}"))),
            Format::Json => serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}"))),
        }
    }

    pub(super) fn respond<T: Serialize>(self, value: &T) -> Result<HttpResponse, ApiError> {
        let body = match self {
            Format::Bincode => {
                wire::encode(value).map_err(|e| ApiError::Internal(e.to_string()))?
            }
            Format::Json => {
                serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?
            }
        };
        Ok(HttpResponse::Ok()
            .content_type(self.media_type())
            .body(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::store::{Precondition, Store, StoreOptions, Write};
    use serde_json::json;

    fn res(kind: Kind, body: serde_json::Value) -> Resource {
        Resource::from_json(kind, body).unwrap()
    }

    /// The shortcut in [`candidates`] must never change a view: compare with `gateway_view` over
    /// everything, on a configuration where gateways share products, subscriptions, backends
    /// and named values in every way the model allows.
    #[test]
    fn candidates_give_the_same_views_as_the_whole_config() {
        let store = Store::open(std::path::Path::new(":memory:"), StoreOptions::default()).unwrap();
        let mut all = vec![
            res(Kind::NamedValue, json!({"name": "host", "value": "h"})),
            res(Kind::NamedValue, json!({"name": "hdr", "value": "v"})),
            res(Kind::NamedValue, json!({"name": "unused", "value": "u"})),
            res(
                Kind::Backend,
                json!({"name": "b1", "url": "http://{{host}}"}),
            ),
            res(Kind::Backend, json!({"name": "b2", "url": "http://b2"})),
            res(Kind::Backend, json!({"name": "b3", "url": "http://b3"})),
            res(
                Kind::GlobalPolicy,
                json!({"name": "global", "policies": {"inbound": [
                    {"set-header": {"name": "X-G", "value": "{{hdr}}"}}]}}),
            ),
        ];
        for (i, backend) in ["b1", "b2", "b3", "b1"].iter().enumerate() {
            all.push(res(
                Kind::Api,
                json!({"name": format!("api-{i}"), "path": format!("p{i}"), "backend": backend}),
            ));
        }
        all.extend([
            res(
                Kind::Product,
                json!({"name": "p01", "apis": ["api-0", "api-1"]}),
            ),
            res(Kind::Product, json!({"name": "p3", "apis": ["api-3"]})),
            res(
                Kind::Subscription,
                json!({"name": "s-all", "scope": "all-apis"}),
            ),
            res(
                Kind::Subscription,
                json!({"name": "s-p01", "scope": {"product": "p01"}}),
            ),
            res(
                Kind::Subscription,
                json!({"name": "s-a2", "scope": {"api": "api-2"}}),
            ),
            res(Kind::Gateway, json!({"name": "g0", "apis": ["api-0"]})),
            res(
                Kind::Gateway,
                json!({"name": "g12", "apis": ["api-1", "api-2"]}),
            ),
            res(Kind::Gateway, json!({"name": "g3", "apis": ["api-3"]})),
            res(Kind::Gateway, json!({"name": "none", "apis": []})),
        ]);
        store
            .commit(
                all.into_iter()
                    .map(|r| Write::Put(Box::new(r), Precondition::None))
                    .collect(),
            )
            .unwrap();
        let state = store.state();
        for gw in ["g0", "g12", "g3", "none", "missing"] {
            let expected = gateway_view(state.iter_resources(), Some(gw));
            let shortcut = gateway_view(candidates(&state, gw).iter().copied(), Some(gw));
            assert_eq!(shortcut, expected, "{gw}");
        }
    }
}
