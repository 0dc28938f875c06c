//! The response and value cache: an in-process tier per node, bounded by bytes, and a Redis
//! tier shared by the site's nodes (a response stored by node A is a hit on node B).
//!
//! Requests use a [`CacheHandle`] directly (lookups, stores, coalescing): the hot path never
//! waits on this actor's mailbox. The [`Cache`] actor owns maintenance: periodic expiry sweeps
//! of the in-process tier, stats and gauges, and the shared tier's health (logged transitions;
//! while Redis is unusable every lookup degrades to the in-process tier).
//!
//! # Layout
//! - [`key`]: cache keys (tenant-scoped, hashed, versioned).
//! - [`rules`]: what may be looked up and stored (methods, statuses, `Cache-Control`).
//! - [`entry`]: stored responses and values, and their encoding for Redis.
//! - [`tier`]: the in-process tier.
//! - [`coalesce`]: single-flight for concurrent misses.
//! - The compiled cache steps are in `crate::route_table::steps` (cache).
//! - [`handle`]: [`CacheHandle`], tiers per `caching-type`.
//! - `messages.rs`, `state.rs` (pure), this file (the thin actor shell), `tests.rs`.

pub mod coalesce;
pub mod entry;
pub mod handle;
pub mod key;
pub mod messages;
pub mod rules;
pub mod state;
pub mod tier;

#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler};

pub use self::entry::{CachedResponse, CachedValue};
pub use self::handle::{CacheConfig, CacheHandle, Fill, Lookup, Tier};
pub use self::key::CacheKey;
pub use self::messages::{GetCacheStats, SharedTierChanged, SweepExpired};
pub use self::state::{CacheState, CacheStats, TierChange};
use crate::shared_state::local::now_ms;

/// Period of the expiry sweep of the in-process tier.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Owns the cache's maintenance; see the module docs.
pub struct Cache {
    handle: CacheHandle,
    state: CacheState,
    sweep_interval: Duration,
}

impl Cache {
    pub fn new(handle: CacheHandle) -> Cache {
        Cache {
            handle,
            state: CacheState::default(),
            sweep_interval: SWEEP_INTERVAL,
        }
    }

    pub fn with_sweep_interval(mut self, every: Duration) -> Cache {
        self.sweep_interval = every;
        self
    }

    fn sweep(&mut self) -> usize {
        let now = now_ms();
        let removed = self.handle.local_tier().sweep(now);
        self.state.swept(now, removed);
        metrics::gauge!("outpost_cache_local_bytes").set(self.handle.local_tier().bytes() as f64);
        metrics::gauge!("outpost_cache_local_entries").set(self.handle.local_tier().len() as f64);
        removed
    }
}

impl Actor for Cache {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.sweep_interval, |act, _| {
            act.sweep();
        });
        // Follow the shared tier's health.
        let mut rx = self.handle.shared_state().subscribe();
        let addr = ctx.address();
        actix::spawn(async move {
            loop {
                let r = rx.borrow_and_update().clone();
                if addr.try_send(SharedTierChanged(r)).is_err() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

impl Handler<SweepExpired> for Cache {
    type Result = usize;

    fn handle(&mut self, _: SweepExpired, _: &mut Self::Context) -> usize {
        self.sweep()
    }
}

impl Handler<GetCacheStats> for Cache {
    type Result = actix::MessageResult<GetCacheStats>;

    fn handle(&mut self, _: GetCacheStats, _: &mut Self::Context) -> Self::Result {
        let c = self.handle.counters();
        let tier = self.handle.local_tier();
        let base = CacheStats {
            local_entries: tier.len(),
            local_bytes: tier.bytes(),
            local_max_bytes: tier.max_bytes(),
            hits_local: c.hits_local.load(Ordering::Relaxed),
            hits_shared: c.hits_shared.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stores: c.stores.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            shared_errors: c.shared_errors.load(Ordering::Relaxed),
            ..CacheStats::default()
        };
        actix::MessageResult(self.state.stats(base))
    }
}

impl Handler<SharedTierChanged> for Cache {
    type Result = ();

    fn handle(&mut self, msg: SharedTierChanged, _: &mut Self::Context) {
        match self.state.reachability(now_ms(), msg.0) {
            Some(TierChange::Degraded { reason }) => {
                tracing::warn!(%reason, "cache: shared tier unusable, serving from the in-process tier");
            }
            Some(TierChange::Restored { after_ms }) => {
                tracing::info!(after_ms, "cache: shared tier back");
            }
            None => {}
        }
    }
}
