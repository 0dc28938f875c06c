//! What the gateway endpoint and the admin routes about gateways share: [`GatewayApiState`],
//! with the gateway keys cache, token verification, the config signer and the cached answers.
//! Handlers live in `gateway_api`; this file knows no route.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::Utc;
use outpost_model::signing::KeyEndorsement;
use outpost_model::view::diff;
use outpost_model::wire::ConfigUpdate;
use outpost_model::{Kind, ResourceKey};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::instances::InstanceRegistry;
use super::settings::ControlPlaneSettings;
use super::store::{GatewayKeys, KeyType, SigningKeyInfo, SigningKeys, State, Store, StoreError};
use super::telemetry::Analytics;
use super::tokens::{self, TokenError, VerifiedToken};
use super::views::{CachedUpdate, Format, ViewCache};

/// Optional request header naming the gateway the caller expects to be; a token for another
/// gateway is then refused (`wrong gateway`) instead of silently serving that gateway's config.
pub const EXPECTED_GATEWAY_HEADER: &str = "Outpost-Gateway";
/// How long cached gateway keys are trusted when nothing else invalidates them. Regeneration
/// through [`GatewayApiState::regenerate_key`] takes effect at once; this only bounds how long a
/// key changed behind this module's back (directly in the store) keeps working.
const KEYS_TTL: Duration = Duration::from_secs(30);
/// Endorsements sent with each answer: enough for a gateway that missed this many rotations.
const ENDORSEMENTS_SENT: usize = 8;

/// Everything the gateway endpoint and its admin routes share. One instance serves both
/// listeners (wrap it in one `web::Data` and hand clones to both apps), so heartbeats received
/// on the gateway listener show in the admin API.
pub struct GatewayApiState {
    pub(super) store: Arc<Store>,
    pub(super) max_wait: Duration,
    max_token_lifetime_days: u64,
    keys: Mutex<KeysCache>,
    views: ViewCache,
    pub(super) instances: InstanceRegistry,
    pub(super) analytics: Analytics,
    pub(super) compute: Semaphore,
    pub(super) waiting: AtomicUsize,
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
    /// Loads (on first start: creates) the config signing key, and the instance records, from
    /// the store.
    pub fn new(store: Arc<Store>, settings: &ControlPlaneSettings) -> Result<Self, StoreError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let keys = store.signing_keys()?;
        let analytics = Analytics::new(store.clone(), settings.analytics.retention_hours);
        let state = Self {
            store,
            max_wait: settings.gateway_api.max_wait,
            max_token_lifetime_days: settings.tokens.max_lifetime_days,
            keys: Mutex::new(KeysCache::default()),
            views: ViewCache::default(),
            instances: InstanceRegistry::new(settings.instances.clone()),
            analytics,
            compute: Semaphore::new(cores),
            waiting: AtomicUsize::new(0),
            signer: ArcSwap::from_pointee(Signer::new(0, keys)),
            rotation: Mutex::new(()),
        };
        state.sync_instances();
        Ok(state)
    }

    /// Follows a signing key rotated by another control-plane replica (blocking): when the
    /// store's active key is not the one this replica signs with, answers from now on are
    /// signed with the store's, like after a local rotation.
    pub fn refresh_signing_keys(&self) {
        let _one_at_a_time = self.rotation.lock().expect("rotation lock");
        let keys = match self.store.signing_keys() {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the config signing keys from the store");
                return;
            }
        };
        let current = self.signer.load();
        if keys.active.public() == current.keys.active.public() {
            return;
        }
        tracing::info!(
            key = %keys.active.public(),
            "config signing key rotated by another control plane; signing with it"
        );
        self.signer
            .store(Arc::new(Signer::new(current.generation + 1, keys)));
    }

    /// Purges analytics older than the retention (blocking); failures are logged.
    pub fn purge_analytics(&self) {
        match self.analytics.purge(chrono::Utc::now()) {
            Ok(0) => {}
            Ok(rows) => {
                // Counted here (listed in metrics.rs) so that the state does not import the module
                // that renders it.
                metrics::counter!("outpost_cp_analytics_rows_purged_total").increment(rows);
                tracing::debug!(rows, "analytics older than the retention purged");
            }
            Err(e) => tracing::warn!(error = %e, "cannot purge old analytics"),
        }
    }

    /// Exchanges instance records with the store (blocking; see [`InstanceRegistry::sync`]).
    /// A failure is logged: instance status is informational, and the next sync catches up.
    pub fn sync_instances(&self) {
        if let Err(e) = self.instances.sync(&self.store, chrono::Utc::now()) {
            tracing::warn!(error = %e, "cannot sync instance status with the store");
        }
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

    pub fn analytics(&self) -> &Analytics {
        &self.analytics
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
    pub(super) fn ready_body(&self, gateway: &str, after: u64, format: Format) -> Option<Bytes> {
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

impl GatewayApiState {
    /// Whether `held` is the content hash of `gateway`'s view at the current revision, which must
    /// be `revision` (otherwise the question does not arise: the delta's hash check decides).
    pub(super) async fn holds_current_view(
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

pub(super) fn blocking_error(e: actix_web::error::BlockingError) -> ApiError {
    ApiError::Internal(format!("blocking task: {e}"))
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
