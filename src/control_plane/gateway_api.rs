//! The gateway-facing endpoint (`/gateway/v1/...` on the gateway listener) and the admin routes
//! about gateways' tokens, instances and telemetry.
//!
//! Every gateway call carries `Authorization: GatewayKey <gateway>&<expiry>&<signature>`; the
//! gateway named in a verified token is the only one whose view the call can see. A refused token
//! is a 401, never an empty 200. Its JSON body says why (malformed, expired, another gateway's),
//! except that an unknown gateway and a forged or revoked token get one and the same answer
//! ([`tokens::INVALID_TOKEN`]) so that the endpoint cannot be used to list gateway names; the
//! control plane logs the real reason.
//!
//! # Config long-poll
//! `GET /gateway/v1/config?after=R&wait=S` answers as soon as the store's revision differs from
//! `R`, else waits on the store's watch channel for up to `min(S, max_wait_secs)` and answers
//! `304` when nothing moved. The answer is a delta from `R` when the change log covers `R`
//! (computed as the diff of the gateway's views at `R` and now), else a full snapshot (`R == 0`,
//! `R` below the log floor, or `R` ahead of the store, e.g. after a restore). A revision may move
//! for changes this gateway does not see; it then gets an empty delta with the new revision, so
//! it always knows where it stands.
//!
//! # Cost when many gateways wake at once
//! One change wakes every waiting poller. The work per answer is cached so that it is done once
//! per gateway and revision, not once per poller: [`ViewCache`] keeps each gateway's view (and
//! its content hash) for its last few revisions, and the encoded answers for the last few
//! (from, to) pairs, so the instances of one gateway share one computation and the view at `R`
//! computed on the previous change is reused as the base of the next delta. Cache misses run on
//! the blocking pool behind a semaphore sized to the cores, so a burst of wake-ups neither blocks
//! actix workers nor spawns hundreds of threads. A view is computed from the gateway's candidate
//! resources only (not other gateways' APIs), so its cost does not grow with the number of
//! gateways. Gateway keys are cached too (invalidated by regeneration, by a change of the gateway
//! resource, and after 30 s), so polls do not queue on the store's SQLite connection.
//!
//! # Signing
//! Every config answer carries the control plane's Ed25519 signature over
//! `(gateway, revision, content hash)` of the view it produces, and the chain of key
//! endorsements (see `outpost_model::signing`). The key pair lives in the store's
//! `signing_keys` table, created on first start; [`GatewayApiState::rotate_signing_key`]
//! replaces it. Cached answers are keyed by the signer's generation, so a rotation is never
//! answered with a stale signature.
//!
//! # Reconnection
//! A poll may carry `hash=H`, the content hash the gateway holds at `after`. When `after` is the
//! current revision and this gateway's view hashes differently, the answer is a full snapshot at
//! once instead of a wait: a configuration altered on the gateway's side is replaced on the next
//! poll, not kept until the next change.
//!
//! Instance status and telemetry live in memory ([`instances`], [`telemetry`]); after a
//! control plane restart they are rebuilt from the next heartbeats and uploads.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::Utc;
use dashmap::DashMap;
use futures_util::StreamExt;
use outpost_model::signing::KeyEndorsement;
use outpost_model::view::{View, content_hash, diff, gateway_view};
use outpost_model::wire::{
    self, BINCODE_MEDIA_TYPE, CONFIG_PATH, ConfigUpdate, HEARTBEAT_PATH, Heartbeat, HeartbeatAck,
    TELEMETRY_PATH, TelemetryBatch,
};
use outpost_model::{Kind, Resource, ResourceKey};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::instances::{self, InstanceRegistry};
use super::settings::ControlPlaneSettings;
use super::store::{GatewayKeys, KeyType, SigningKeyInfo, SigningKeys, State, Store, StoreError};
use super::telemetry::{self, Ingested, TelemetryStore};
use super::tokens::{self, TokenError, VerifiedToken};

/// Optional request header naming the gateway the caller expects to be; a token for another
/// gateway is then refused (`wrong gateway`) instead of silently serving that gateway's config.
pub const EXPECTED_GATEWAY_HEADER: &str = "Outpost-Gateway";
/// Response header with the revision of a config answer (also in the body).
pub const REVISION_HEADER: &str = "Outpost-Revision";

const MAX_HEARTBEAT_BYTES: usize = 64 * 1024;
const MAX_TELEMETRY_BYTES: usize = 16 * 1024 * 1024;
/// Longest text field accepted in a heartbeat.
const MAX_FIELD_LEN: usize = 256;
/// How long cached gateway keys are trusted when nothing else invalidates them. Regeneration
/// through [`GatewayApiState::regenerate_key`] takes effect at once; this only bounds how long a
/// key changed behind this module's back (directly in the store) keeps working.
const KEYS_TTL: Duration = Duration::from_secs(30);
/// Views and answers kept per gateway.
const VIEWS_KEPT: usize = 2;
const UPDATES_KEPT: usize = 4;
/// Endorsements sent with each answer: enough for a gateway that missed this many rotations.
const ENDORSEMENTS_SENT: usize = 8;

/// Everything the gateway endpoint and its admin routes share. One instance serves both
/// listeners (wrap it in one `web::Data` and hand clones to both apps), so heartbeats received
/// on the gateway listener show in the admin API.
pub struct GatewayApiState {
    store: Arc<Store>,
    max_wait: Duration,
    max_token_lifetime_days: u64,
    keys: Mutex<KeysCache>,
    views: ViewCache,
    instances: InstanceRegistry,
    telemetry: TelemetryStore,
    compute: Semaphore,
    waiting: AtomicUsize,
    signer: ArcSwap<Signer>,
    /// Serialises rotations, so the signer published is always the store's newest key.
    rotation: Mutex<()>,
}

/// The key answers are signed with, and a generation number bumped by each rotation.
struct Signer {
    generation: u64,
    keys: SigningKeys,
    endorsements: Vec<KeyEndorsement>,
}

impl Signer {
    fn new(generation: u64, keys: SigningKeys) -> Signer {
        let skip = keys.endorsements.len().saturating_sub(ENDORSEMENTS_SENT);
        let endorsements = keys.endorsements[skip..].to_vec();
        Signer {
            generation,
            keys,
            endorsements,
        }
    }
}

/// `GET /api/v1/signing-keys` and the answer to a rotation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SigningKeysResponse {
    /// The key configurations are signed with now: what gateways trust
    /// (`control_plane.config_signing_keys`).
    pub active: String,
    /// Every key, oldest first, each endorsed by the one before it.
    pub keys: Vec<SigningKeyInfo>,
}

#[derive(Default)]
struct KeysCache {
    /// Bumped around every regeneration, so a lookup that raced one does not cache old keys.
    epoch: u64,
    entries: HashMap<String, CachedKeys>,
}

struct CachedKeys {
    keys: GatewayKeys,
    /// Revision of the gateway resource when fetched: a deleted and re-created gateway has new
    /// keys (the store drops them with the resource) and a new revision.
    gateway_revision: u64,
    fetched: Instant,
}

impl GatewayApiState {
    /// Loads (on first start: creates) the config signing key from the store.
    pub fn new(store: Arc<Store>, settings: &ControlPlaneSettings) -> Result<Self, StoreError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let keys = store.signing_keys()?;
        Ok(Self {
            store,
            max_wait: Duration::from_secs(settings.gateway_api.max_wait_secs),
            max_token_lifetime_days: settings.tokens.max_lifetime_days,
            keys: Mutex::new(KeysCache::default()),
            views: ViewCache::default(),
            instances: InstanceRegistry::new(settings.instances.clone()),
            telemetry: TelemetryStore::new(),
            compute: Semaphore::new(cores),
            waiting: AtomicUsize::new(0),
            signer: ArcSwap::from_pointee(Signer::new(0, keys)),
            rotation: Mutex::new(()),
        })
    }

    /// The public key configurations are signed with now (`ed25519:<base64>`).
    pub fn signing_public_key(&self) -> String {
        self.signer.load().keys.active.public().to_string()
    }

    pub fn signing_keys(&self) -> SigningKeysResponse {
        let signer = self.signer.load();
        SigningKeysResponse {
            active: signer.keys.active.public().to_string(),
            keys: signer.keys.history.clone(),
        }
    }

    /// Replaces the signing key (blocking: call it off the actix workers). Answers computed from
    /// now on are signed with the new key and carry the old key's endorsement of it.
    pub fn rotate_signing_key(&self) -> Result<SigningKeysResponse, StoreError> {
        let _one_at_a_time = self.rotation.lock().expect("rotation lock");
        let keys = self.store.rotate_signing_key()?;
        let generation = self.signer.load().generation + 1;
        tracing::info!(
            key = %keys.active.public(),
            "config signing key rotated; gateways follow through the old key's endorsement"
        );
        self.signer.store(Arc::new(Signer::new(generation, keys)));
        Ok(self.signing_keys())
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn views(&self) -> &ViewCache {
        &self.views
    }

    pub fn instances(&self) -> &InstanceRegistry {
        &self.instances
    }

    pub fn telemetry(&self) -> &TelemetryStore {
        &self.telemetry
    }

    /// Long-polls waiting for a change right now.
    pub fn waiting_polls(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn max_token_lifetime_days(&self) -> u64 {
        self.max_token_lifetime_days
    }

    /// The gateway's keys, fresh from the store (admin use). 404 for an unknown gateway.
    pub async fn keys(&self, gateway: &str) -> Result<GatewayKeys, ApiError> {
        let store = self.store.clone();
        let name = gateway.to_owned();
        Ok(web::block(move || store.gateway_keys(&name))
            .await
            .map_err(blocking_error)??)
    }

    /// Replaces one of the gateway's keys; tokens minted from the old key stop verifying at once.
    pub async fn regenerate_key(
        &self,
        gateway: &str,
        which: KeyType,
    ) -> Result<GatewayKeys, ApiError> {
        {
            let mut cache = self.keys.lock().expect("keys cache lock");
            cache.epoch += 1;
            cache.entries.remove(gateway);
        }
        let store = self.store.clone();
        let name = gateway.to_owned();
        let result = web::block(move || store.regenerate_gateway_key(&name, which))
            .await
            .map_err(blocking_error)?;
        let mut cache = self.keys.lock().expect("keys cache lock");
        cache.epoch += 1;
        cache.entries.remove(gateway);
        Ok(result?)
    }

    /// The keys to verify a token of `gateway` with (`None`: no such gateway): cached while the
    /// gateway resource is unchanged, for at most [`KEYS_TTL`].
    async fn keys_for_auth(&self, gateway: &str) -> Result<Option<GatewayKeys>, ApiError> {
        let key = ResourceKey::new(Kind::Gateway, gateway);
        let Some(gateway_revision) = self.store.state().get(&key).map(|s| s.revision) else {
            return Ok(None);
        };
        let epoch = {
            let cache = self.keys.lock().expect("keys cache lock");
            if let Some(c) = cache.entries.get(gateway)
                && c.gateway_revision == gateway_revision
                && c.fetched.elapsed() < KEYS_TTL
            {
                return Ok(Some(c.keys.clone()));
            }
            cache.epoch
        };
        let store = self.store.clone();
        let name = gateway.to_owned();
        let keys = match web::block(move || store.gateway_keys(&name))
            .await
            .map_err(blocking_error)?
        {
            Ok(keys) => keys,
            Err(super::store::StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut cache = self.keys.lock().expect("keys cache lock");
        if cache.epoch == epoch {
            cache.entries.insert(
                gateway.to_owned(),
                CachedKeys {
                    keys: keys.clone(),
                    gateway_revision,
                    fetched: Instant::now(),
                },
            );
        }
        Ok(Some(keys))
    }

    /// Verifies the request's gateway token. A refusal is logged with its real reason here,
    /// because the answer may not carry it (see [`tokens::TokenError::public_message`]).
    pub async fn authenticate(&self, req: &HttpRequest) -> Result<VerifiedToken, ApiError> {
        match self.verify_token(req).await? {
            Ok(verified) => Ok(verified),
            Err(refused) => {
                log_refusal(req, &refused);
                Err(refused.into())
            }
        }
    }

    /// The outer error is the control plane's own failure (a 500), the inner one a refusal.
    async fn verify_token(
        &self,
        req: &HttpRequest,
    ) -> Result<Result<VerifiedToken, TokenError>, ApiError> {
        let header = match req.headers().get(header::AUTHORIZATION) {
            None => return Ok(Err(TokenError::Missing)),
            Some(value) => match value.to_str() {
                Ok(text) => text,
                Err(_) => {
                    return Ok(Err(TokenError::Malformed(
                        "the Authorization header is not ASCII".into(),
                    )));
                }
            },
        };
        let parsed = match tokens::parse(header) {
            Ok(parsed) => parsed,
            Err(e) => return Ok(Err(e)),
        };
        let Some(keys) = self.keys_for_auth(&parsed.gateway).await? else {
            return Ok(Err(tokens::refuse_unknown(&parsed)));
        };
        Ok(
            tokens::verify(&parsed, &keys, Utc::now()).and_then(|verified| {
                match req.headers().get(EXPECTED_GATEWAY_HEADER) {
                    Some(expected) => {
                        verified.require_gateway(expected.to_str().unwrap_or_default())
                    }
                    None => Ok(verified),
                }
            }),
        )
    }

    /// The revision a delta for a poll with `after` starts from, at revision `to`; `None` means a
    /// full snapshot (`after` is 0, ahead of the store, or older than the change log).
    fn delta_base(&self, after: u64, to: u64) -> Option<u64> {
        (after != 0 && after <= to && after >= self.store.log_floor()).then_some(after)
    }

    /// The encoded answer for `gateway` polling `after`, at the current revision.
    pub fn config_body(&self, gateway: &str, after: u64, format: Format) -> Result<Bytes, String> {
        let current = self.store.state();
        let update = self.update(gateway, after, &current);
        update.encoded(format)
    }

    /// The update taking `gateway` from `after` to `current`, cached per (from, to, signer).
    pub fn update(&self, gateway: &str, after: u64, current: &Arc<State>) -> Arc<CachedUpdate> {
        let to = current.revision;
        let base = self.delta_base(after, to);
        let signer = self.signer.load_full();
        let slot = self
            .views
            .update_slot(gateway, (base, to, signer.generation));
        slot.get_or_init(|| {
            let new = self.views.view(gateway, current);
            let old = base.and_then(|from| {
                if from == to {
                    return Some(new.clone());
                }
                self.views
                    .cached_view(gateway, from)
                    .or_else(|| Some(self.views.view(gateway, &*self.store.state_at(from)?)))
            });
            let signature = signer.keys.active.sign_config(gateway, to, &new.hash);
            let endorsements = signer.endorsements.clone();
            let update = match old {
                Some(old) => {
                    let (upserts, deletes) = diff(&old.view, &new.view);
                    ConfigUpdate {
                        full: false,
                        from_revision: old.revision,
                        revision: to,
                        hash: new.hash.clone(),
                        upserts,
                        deletes,
                        signature,
                        endorsements,
                    }
                }
                None => ConfigUpdate {
                    full: true,
                    from_revision: 0,
                    revision: to,
                    hash: new.hash.clone(),
                    upserts: new.view.values().cloned().collect(),
                    deletes: Vec::new(),
                    signature,
                    endorsements,
                },
            };
            Arc::new(CachedUpdate {
                update,
                bincode: OnceLock::new(),
                json: OnceLock::new(),
            })
        })
        .clone()
    }

    /// The cached answer when it is already encoded: the fast path of a wake-up, no blocking.
    fn ready_body(&self, gateway: &str, after: u64, format: Format) -> Option<Bytes> {
        let current = self.store.state();
        let to = current.revision;
        let base = self.delta_base(after, to);
        let generation = self.signer.load().generation;
        let update = self.views.peek_update(gateway, (base, to, generation))?;
        match format {
            Format::Bincode => update.bincode.get(),
            Format::Json => update.json.get(),
        }
        .and_then(|r| r.as_ref().ok())
        .cloned()
    }
}

fn blocking_error(e: actix_web::error::BlockingError) -> ApiError {
    ApiError::Internal(format!("blocking task: {e}"))
}

// === view cache ===

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
    bincode: OnceLock<Result<Bytes, String>>,
    json: OnceLock<Result<Bytes, String>>,
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

    fn cached_view(&self, gateway: &str, revision: u64) -> Option<Arc<GatewayView>> {
        let entries = self.gateways.get(gateway)?.clone();
        let e = entries.lock().expect("view cache lock");
        e.views
            .iter()
            .find(|(r, _)| *r == revision)
            .and_then(|(_, v)| v.get().cloned())
    }

    fn update_slot(&self, gateway: &str, key: UpdateKey) -> Arc<OnceLock<Arc<CachedUpdate>>> {
        let entries = self.entries(gateway);
        let mut e = entries.lock().expect("view cache lock");
        slot(&mut e.updates, key, UPDATES_KEPT)
    }

    fn peek_update(&self, gateway: &str, key: UpdateKey) -> Option<Arc<CachedUpdate>> {
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
    fn from_content_type(req: &HttpRequest) -> Result<Format, ApiError> {
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

    fn decode<T: serde::de::DeserializeOwned>(self, body: &[u8]) -> Result<T, ApiError> {
        match self {
            Format::Bincode => wire::decode(body)
                .map_err(|e| ApiError::BadRequest(format!("invalid bincode body: {e}"))),
            Format::Json => serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}"))),
        }
    }

    fn respond<T: Serialize>(self, value: &T) -> Result<HttpResponse, ApiError> {
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

/// Reads at most `limit` bytes of body.
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "body larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Error answers of the gateway endpoint: the shared JSON body, with the right auth scheme.
fn gateway_error(e: ApiError) -> HttpResponse {
    let mut res = e.error_response();
    if e.status_code() == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(tokens::SCHEME),
        );
    }
    res
}

// === gateway routes ===

#[derive(Debug, Deserialize)]
pub struct ConfigQuery {
    #[serde(default)]
    pub after: u64,
    /// Seconds to wait for a change; 0 (the default) answers at once.
    #[serde(default)]
    pub wait: u64,
    /// The content hash the gateway holds at `after` (see the module docs).
    #[serde(default)]
    pub hash: Option<String>,
}

async fn get_config(
    state: web::Data<GatewayApiState>,
    req: HttpRequest,
    query: Result<web::Query<ConfigQuery>, actix_web::Error>,
) -> HttpResponse {
    poll_config(state, req, query)
        .await
        .unwrap_or_else(gateway_error)
}

async fn poll_config(
    state: web::Data<GatewayApiState>,
    req: HttpRequest,
    query: Result<web::Query<ConfigQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let token = state.authenticate(&req).await?;
    let query = query.map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
    let mut after = query.after;
    let wait = Duration::from_secs(query.wait).min(state.max_wait);
    let format = Format::from_accept(&req);
    if let Some(held) = query.hash.as_deref().filter(|h| !h.is_empty())
        && after != 0
        && after == state.store.revision()
        && !state
            .holds_current_view(&token.gateway, after, held)
            .await?
    {
        tracing::warn!(
            gateway = token.gateway,
            revision = after,
            "the gateway's configuration differs from this control plane's at the same \
             revision; sending a full snapshot"
        );
        after = 0;
    }

    // Subscribe before looking, so a change between the look and the wait is not missed.
    let mut revisions = state.store.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let mut waited = false;
    {
        let _waiting = Waiting::new(&state.waiting);
        while state.store.revision() == after {
            waited = true;
            match tokio::time::timeout_at(deadline, revisions.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ApiError::Internal("the store is closed".into())),
                Err(_) => {
                    return Ok(HttpResponse::NotModified()
                        .insert_header((REVISION_HEADER, after.to_string()))
                        .finish());
                }
            }
        }
    }

    // A key may have been regenerated (or the token expired) while the poll waited: the answer
    // goes only to a token that is still valid now, not to one that was valid when it asked.
    let token = if waited {
        state.authenticate(&req).await?
    } else {
        token
    };
    let body = match state.ready_body(&token.gateway, after, format) {
        Some(body) => body,
        None => {
            let _permit = state
                .compute
                .acquire()
                .await
                .map_err(|_| ApiError::Internal("compute semaphore closed".into()))?;
            let state = state.clone();
            let gateway = token.gateway.clone();
            web::block(move || state.config_body(&gateway, after, format))
                .await
                .map_err(blocking_error)?
                .map_err(|e| ApiError::Internal(format!("encoding the config: {e}")))?
        }
    };
    Ok(HttpResponse::Ok()
        .content_type(format.media_type())
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body))
}

/// Logs a refused gateway token with its real reason (never the token itself). A missing or
/// malformed header is routine noise from scanners, so only the refusal of a well-formed token,
/// which is a gateway that needs attention or someone guessing, is a warning.
fn log_refusal(req: &HttpRequest, refused: &TokenError) {
    let peer = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let gateway = refused.gateway().unwrap_or("");
    match refused {
        TokenError::Missing | TokenError::Malformed(_) => tracing::info!(
            %peer,
            path = req.path(),
            reason = %refused,
            "gateway token refused"
        ),
        _ => tracing::warn!(
            %peer,
            path = req.path(),
            gateway,
            reason = %refused,
            "gateway token refused"
        ),
    }
}

impl GatewayApiState {
    /// Whether `held` is the content hash of `gateway`'s view at the current revision, which must
    /// be `revision` (otherwise the question does not arise: the delta's hash check decides).
    async fn holds_current_view(
        self: &Arc<Self>,
        gateway: &str,
        revision: u64,
        held: &str,
    ) -> Result<bool, ApiError> {
        let current = self.store.state();
        if current.revision != revision {
            return Ok(true);
        }
        let _permit = self
            .compute
            .acquire()
            .await
            .map_err(|_| ApiError::Internal("compute semaphore closed".into()))?;
        let this = self.clone();
        let gateway = gateway.to_owned();
        let view = web::block(move || this.views.view(&gateway, &current))
            .await
            .map_err(blocking_error)?;
        Ok(view.hash == held)
    }
}

/// Counts a waiting poll for as long as it lives (a poll whose client goes away is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shared front of every gateway upload: a valid token, a known content type, a body
/// within `max` bytes that decodes as `T`.
async fn authenticated_body<T: serde::de::DeserializeOwned>(
    state: &GatewayApiState,
    req: &HttpRequest,
    payload: web::Payload,
    max: usize,
) -> Result<(VerifiedToken, Format, T), ApiError> {
    let token = state.authenticate(req).await?;
    let format = Format::from_content_type(req)?;
    let body = read_body(payload, max).await?;
    let value = format.decode(&body)?;
    Ok((token, format, value))
}

async fn post_heartbeat(
    state: web::Data<GatewayApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    heartbeat(state, req, payload)
        .await
        .unwrap_or_else(gateway_error)
}

async fn heartbeat(
    state: web::Data<GatewayApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (token, format, mut hb) =
        authenticated_body::<Heartbeat>(&state, &req, payload, MAX_HEARTBEAT_BYTES).await?;
    if hb.instance_id.is_empty() || hb.instance_id.len() > MAX_FIELD_LEN {
        return Err(ApiError::BadRequest(format!(
            "instance-id must be 1..={MAX_FIELD_LEN} characters"
        )));
    }
    for field in [
        &mut hb.hostname,
        &mut hb.version,
        &mut hb.config_hash,
        &mut hb.config_source,
        &mut hb.redis,
    ] {
        truncate(field, MAX_FIELD_LEN);
    }
    let now = Utc::now();
    let remote = req.peer_addr().map(|a| a.to_string());
    state
        .instances
        .record(&token.gateway, hb, token.expiry, remote, now);
    let answer = if req.headers().contains_key(header::ACCEPT) {
        Format::from_accept(&req)
    } else {
        format
    };
    answer.respond(&HeartbeatAck {
        revision: state.store.revision(),
        server_time: now,
    })
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

async fn post_telemetry(
    state: web::Data<GatewayApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    telemetry_upload(state, req, payload)
        .await
        .unwrap_or_else(gateway_error)
}

async fn telemetry_upload(
    state: web::Data<GatewayApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (token, _, batch) =
        authenticated_body::<TelemetryBatch>(&state, &req, payload, MAX_TELEMETRY_BYTES).await?;
    match state.telemetry.ingest(&token.gateway, &batch, Utc::now()) {
        Ingested::Added { skipped } if skipped > 0 => {
            tracing::debug!(
                gateway = token.gateway,
                skipped,
                "telemetry aggregates outside the retention window"
            );
        }
        Ingested::Duplicate => {
            tracing::debug!(
                gateway = token.gateway,
                sequence = batch.sequence,
                "duplicate telemetry batch"
            );
        }
        Ingested::Added { .. } => {}
    }
    Ok(HttpResponse::NoContent().finish())
}

async fn get_signing_keys(state: web::Data<GatewayApiState>) -> HttpResponse {
    HttpResponse::Ok().json(state.signing_keys())
}

async fn rotate_signing_key(state: web::Data<GatewayApiState>) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let keys = web::block(move || state.rotate_signing_key())
        .await
        .map_err(blocking_error)??;
    Ok(HttpResponse::Ok().json(keys))
}

/// Mounts the gateway endpoint (`/gateway/v1/...`) at the root of the gateway listener. Needs
/// `web::Data<GatewayApiState>` in the app.
pub fn configure_gateway_api(cfg: &mut web::ServiceConfig) {
    cfg.route(CONFIG_PATH, web::get().to(get_config))
        .route(HEARTBEAT_PATH, web::post().to(post_heartbeat))
        .route(TELEMETRY_PATH, web::post().to(post_telemetry));
}

/// Mounts the admin routes about gateway tokens, keys, instances and telemetry; meant to sit
/// under `/api/v1` behind admin authentication. Needs the same `web::Data<GatewayApiState>` as
/// the gateway listener. Registers full paths (no `/gateways` scope), so it coexists with other
/// `/gateways/{name}` routes as long as those are not wrapped in a `web::scope("/gateways")`
/// registered before it.
pub fn configure_admin(cfg: &mut web::ServiceConfig) {
    let json = || {
        web::JsonConfig::default()
            .limit(64 * 1024)
            .error_handler(|e, _| ApiError::BadRequest(format!("invalid JSON body: {e}")).into())
    };
    let query = || {
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(format!("invalid query: {e}")).into())
    };
    cfg.service(web::resource("/signing-keys").route(web::get().to(get_signing_keys)))
        .service(web::resource("/signing-keys/rotate").route(web::post().to(rotate_signing_key)))
        .service(
            web::resource("/gateways/{name}/token")
                .app_data(json())
                .route(web::post().to(tokens::mint_token)),
        )
        .service(web::resource("/gateways/{name}/keys").route(web::get().to(tokens::get_keys)))
        .service(
            web::resource("/gateways/{name}/keys/regenerate")
                .app_data(json())
                .route(web::post().to(tokens::regenerate_key)),
        )
        .service(
            web::resource("/gateways/{name}/instances")
                .route(web::get().to(instances::list_gateway_instances)),
        )
        .service(web::resource("/instances").route(web::get().to(instances::list_all_instances)))
        .service(
            web::resource("/telemetry")
                .app_data(query())
                .route(web::get().to(telemetry::get_summary)),
        );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::store::{Precondition, StoreOptions, Write};
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
