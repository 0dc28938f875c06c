//! The Cache actor's state, pure: what maintenance saw (sweeps, the shared tier's health) and
//! the stats it reports. Time is passed in.

use crate::shared_state::Reachability;

/// Stats of the cache, as `GetCacheStats` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub local_entries: usize,
    pub local_bytes: u64,
    pub local_max_bytes: u64,
    pub hits_local: u64,
    pub hits_shared: u64,
    pub misses: u64,
    pub stores: u64,
    pub coalesced: u64,
    pub shared_errors: u64,
    pub swept: u64,
    pub sweeps: u64,
    /// The shared tier: connected, disconnected (degraded to local) or not configured.
    pub shared: Option<Reachability>,
    /// Since when the shared tier is unusable (ms since the epoch), if it is.
    pub degraded_since_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct CacheState {
    swept: u64,
    sweeps: u64,
    last_sweep_ms: u64,
    shared: Option<Reachability>,
    degraded_since_ms: Option<u64>,
}

/// A change of the shared tier worth logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierChange {
    Degraded { reason: String },
    Restored { after_ms: u64 },
}

impl CacheState {
    pub fn swept(&mut self, now_ms: u64, removed: usize) {
        self.swept += removed as u64;
        self.sweeps += 1;
        self.last_sweep_ms = now_ms;
    }

    pub fn last_sweep_ms(&self) -> u64 {
        self.last_sweep_ms
    }

    /// Records the shared tier's reachability; returns the transition, if any.
    pub fn reachability(&mut self, now_ms: u64, r: Reachability) -> Option<TierChange> {
        let change = match (&r, self.degraded_since_ms) {
            (Reachability::Disconnected { reason }, None) => {
                self.degraded_since_ms = Some(now_ms);
                Some(TierChange::Degraded {
                    reason: reason.clone(),
                })
            }
            (Reachability::Connected, Some(since)) => {
                self.degraded_since_ms = None;
                Some(TierChange::Restored {
                    after_ms: now_ms.saturating_sub(since),
                })
            }
            _ => None,
        };
        self.shared = Some(r);
        change
    }

    /// Fills in what the state knows; the handle's counters and tier sizes come from the caller.
    pub fn stats(&self, mut base: CacheStats) -> CacheStats {
        base.swept = self.swept;
        base.sweeps = self.sweeps;
        base.shared = self.shared.clone();
        base.degraded_since_ms = self.degraded_since_ms;
        base
    }
}
