//! [`CacheHandle`]: what request handlers use. Cheap to clone, no actor mailbox on the way.
//!
//! Tiers per `caching-type`:
//! - `internal`: this node's in-process tier only.
//! - `external`: the shared (Redis) tier only.
//! - `prefer-external` (default): responses are read from the in-process tier first, then from
//!   Redis (a Redis hit is copied into the in-process tier with its remaining lifetime, so it
//!   expires on every node at the same instant: no extra staleness); values (`cache-*-value`) go
//!   to Redis only, so that `cache-remove-value` on one node is seen by every node.
//!
//! Without Redis, or while Redis is unreachable, every type degrades to the in-process tier:
//! a Redis failure is a miss (and a skipped store), never a failed request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outpost_model::policy::CachingType;

use super::coalesce::{Flight, Flights, Joined};
use super::entry::{CachedResponse, CachedValue};
use super::key::CacheKey;
use super::tier::{LocalEntry, LocalTier};
use crate::shared_state::local::now_ms;
use crate::shared_state::{CounterStore, RedisStore, SharedState};

/// Settings of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bound of the in-process tier, bytes.
    pub local_max_bytes: u64,
    /// Largest response stored (either tier), bytes.
    pub max_entry_bytes: u64,
    /// How long a miss waits for a concurrent identical miss to fill the entry.
    pub coalesce_wait: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            local_max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
            coalesce_wait: Duration::from_secs(5),
        }
    }
}

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Local,
    Shared,
}

/// A response lookup.
#[derive(Debug)]
pub enum Lookup {
    Hit {
        response: Arc<CachedResponse>,
        tier: Tier,
    },
    /// Go to the backend; pass the fill to [`CacheHandle::store`] (or drop it).
    Miss(Fill),
}

/// The right (and duty) to fill a missed entry: followers of the same key wait for it.
#[derive(Debug)]
pub struct Fill {
    key: CacheKey,
    flight: Option<Flight>,
    caching: CachingType,
}

impl Fill {
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// True when other requests wait on this one (it leads a flight).
    pub fn leads(&self) -> bool {
        self.flight.is_some()
    }
}

/// Counters since start (read by the actor for stats).
#[derive(Debug, Default)]
pub struct Counters {
    pub hits_local: AtomicU64,
    pub hits_shared: AtomicU64,
    pub misses: AtomicU64,
    pub stores: AtomicU64,
    pub coalesced: AtomicU64,
    pub shared_errors: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct CacheHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: CacheConfig,
    local: LocalTier,
    shared: SharedState,
    flights: Arc<Flights>,
    counters: Counters,
}

impl CacheHandle {
    pub fn new(config: CacheConfig, shared: SharedState) -> CacheHandle {
        CacheHandle {
            inner: Arc::new(Inner {
                local: LocalTier::new(config.local_max_bytes),
                config,
                shared,
                flights: Arc::new(Flights::default()),
                counters: Counters::default(),
            }),
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    pub fn local_tier(&self) -> &LocalTier {
        &self.inner.local
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub fn shared_state(&self) -> &SharedState {
        &self.inner.shared
    }

    /// The Redis store when it should be used for `caching` right now.
    fn redis(&self, caching: CachingType) -> Option<&RedisStore> {
        match caching {
            CachingType::Internal => None,
            CachingType::External | CachingType::PreferExternal => {
                self.inner.shared.redis().filter(|r| r.is_healthy())
            }
        }
    }

    /// Local tier in use for responses: always, except `external` with Redis up.
    fn local_for_responses(&self, caching: CachingType) -> bool {
        !(caching == CachingType::External && self.redis(caching).is_some())
    }

    /// Looks a response up; on a miss, joins (or leads) the flight for this key.
    pub async fn lookup(&self, key: &CacheKey, caching: CachingType) -> Lookup {
        if let Some(hit) = self.read_tiers(key, caching).await {
            return hit;
        }
        match self
            .inner
            .flights
            .join_or_wait(key, self.inner.config.coalesce_wait)
            .await
        {
            Joined::Leader(flight) => {
                self.count_miss();
                Lookup::Miss(Fill {
                    key: key.clone(),
                    flight: Some(flight),
                    caching,
                })
            }
            Joined::Followed(Some(response)) => {
                self.inner
                    .counters
                    .coalesced
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!("outpost_cache_lookups_total", "result" => "coalesced")
                    .increment(1);
                Lookup::Hit {
                    response,
                    tier: Tier::Local,
                }
            }
            Joined::Followed(None) => {
                // The leader had nothing to share (or took too long): one more look (another
                // node may have stored it), then fetch without leading.
                if let Some(hit) = self.read_tiers(key, caching).await {
                    return hit;
                }
                self.count_miss();
                Lookup::Miss(Fill {
                    key: key.clone(),
                    flight: None,
                    caching,
                })
            }
        }
    }

    fn count_miss(&self) {
        self.inner.counters.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("outpost_cache_lookups_total", "result" => "miss").increment(1);
    }

    async fn read_tiers(&self, key: &CacheKey, caching: CachingType) -> Option<Lookup> {
        let now = now_ms();
        if self.local_for_responses(caching)
            && let Some(LocalEntry::Response(r)) = self.inner.local.get(key, now)
        {
            self.inner
                .counters
                .hits_local
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("outpost_cache_lookups_total", "result" => "hit", "tier" => "local")
                .increment(1);
            return Some(Lookup::Hit {
                response: r,
                tier: Tier::Local,
            });
        }
        let redis = self.redis(caching)?;
        let bytes = match redis.get(key.as_str()).await {
            Ok(b) => b?,
            Err(_) => {
                self.inner
                    .counters
                    .shared_errors
                    .fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let r = CachedResponse::decode(&bytes).filter(|r| r.expires_at_ms() > now)?;
        let r = Arc::new(r);
        if caching == CachingType::PreferExternal {
            self.inner
                .local
                .insert(key.clone(), LocalEntry::Response(r.clone()));
        }
        self.inner
            .counters
            .hits_shared
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("outpost_cache_lookups_total", "result" => "hit", "tier" => "shared")
            .increment(1);
        Some(Lookup::Hit {
            response: r,
            tier: Tier::Shared,
        })
    }

    /// Stores the response of a miss for `ttl` in the tiers of the fill's caching type, then
    /// hands it to the requests that waited. Oversized responses are not stored.
    pub async fn store(
        &self,
        fill: Fill,
        mut response: CachedResponse,
        ttl: Duration,
    ) -> Arc<CachedResponse> {
        response.stored_at_ms = now_ms();
        response.ttl_ms = ttl.as_millis() as u64;
        let response = Arc::new(response);
        let Fill {
            key,
            flight,
            caching,
        } = fill;
        if response.weight() <= self.inner.config.max_entry_bytes && !ttl.is_zero() {
            // Followers first: they need not wait for the Redis write.
            if self.local_for_responses(caching) {
                self.inner
                    .local
                    .insert(key.clone(), LocalEntry::Response(response.clone()));
            }
            if let Some(flight) = flight {
                flight.complete(Some(response.clone()));
            }
            if let Some(redis) = self.redis(caching)
                && redis
                    .set(key.as_str(), response.encode(), ttl)
                    .await
                    .is_err()
            {
                self.inner
                    .counters
                    .shared_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.inner.counters.stores.fetch_add(1, Ordering::Relaxed);
        }
        response
    }

    /// `cache-lookup-value`.
    pub async fn lookup_value(&self, key: &CacheKey, caching: CachingType) -> Option<String> {
        let now = now_ms();
        if let Some(redis) = self.redis(caching) {
            return match redis.get(key.as_str()).await {
                Ok(Some(b)) => CachedValue::decode(&b)
                    .filter(|v| v.expires_at_ms() > now)
                    .map(|v| v.value),
                Ok(None) => None,
                Err(_) => {
                    self.inner
                        .counters
                        .shared_errors
                        .fetch_add(1, Ordering::Relaxed);
                    self.local_value(key, now)
                }
            };
        }
        self.local_value(key, now)
    }

    fn local_value(&self, key: &CacheKey, now: u64) -> Option<String> {
        match self.inner.local.get(key, now) {
            Some(LocalEntry::Value(v)) => Some(v.value.clone()),
            _ => None,
        }
    }

    /// `cache-store-value`.
    pub async fn store_value(
        &self,
        key: &CacheKey,
        value: String,
        ttl: Duration,
        caching: CachingType,
    ) {
        let v = CachedValue {
            value,
            stored_at_ms: now_ms(),
            ttl_ms: ttl.as_millis() as u64,
        };
        if let Some(redis) = self.redis(caching)
            && redis.set(key.as_str(), v.encode(), ttl).await.is_ok()
        {
            return;
        }
        self.inner
            .local
            .insert(key.clone(), LocalEntry::Value(Arc::new(v)));
    }

    /// `cache-remove-value`: removed from both tiers.
    pub async fn remove_value(&self, key: &CacheKey, caching: CachingType) {
        self.inner.local.remove(key);
        if let Some(redis) = self.redis(caching) {
            let _ = redis.delete(key.as_str()).await;
        }
    }
}
