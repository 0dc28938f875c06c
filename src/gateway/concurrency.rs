//! The counters of `limit-concurrency`: in-flight requests per (policy, key) on this node,
//! shared by every worker of the traffic server and kept across reloads.
//!
//! A counter goes up when a request passes the policy and down when its response has been sent
//! (or the client went away): the guard lives in the response body, so a slow download still
//! counts as in flight.

use std::sync::Arc;

use dashmap::DashMap;

type CounterKey = (Arc<str>, String);

/// The counters; shared by every worker of the traffic server, kept across reloads.
#[derive(Debug, Default, Clone)]
pub struct ConcurrencyLimiter {
    counts: Arc<DashMap<CounterKey, u32>>,
}

/// One admitted request; dropping it releases its place.
#[derive(Debug)]
pub struct ConcurrencyGuard {
    counts: Arc<DashMap<CounterKey, u32>>,
    key: CounterKey,
}

impl ConcurrencyLimiter {
    /// A place under `max` for `(id, key)`, or `None` when all are taken.
    pub fn try_acquire(&self, id: Arc<str>, key: String, max: u32) -> Option<ConcurrencyGuard> {
        let key = (id, key);
        let mut count = self.counts.entry(key.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        drop(count);
        Some(ConcurrencyGuard {
            counts: self.counts.clone(),
            key,
        })
    }

    /// Requests in flight for `(id, key)`.
    pub fn in_flight(&self, id: &str, key: &str) -> u32 {
        self.counts
            .get(&(Arc::from(id), key.to_owned()))
            .map_or(0, |c| *c)
    }
}

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.counts.get_mut(&self.key) {
            *c = c.saturating_sub(1);
        }
        // Forget idle keys so one-off keys (client IPs) do not accumulate.
        self.counts.remove_if(&self.key, |_, c| *c == 0);
    }
}
