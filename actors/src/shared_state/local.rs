//! The in-process store: the embedded default without Redis, and the `local` outage fallback.
//!
//! Sharded maps (`DashMap`); each operation locks one shard for a few hundred nanoseconds and
//! never across an `.await`. Idle entries are dropped by [`LocalStore::sweep`], which the
//! shared-state maintenance task calls periodically.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;

use super::store::{CounterStore, RateState, StoreError, Ticket};
use super::window::{QuotaCell, QuotaDelta, QuotaLimits, QuotaState, SlidingCounter};

#[derive(Debug, Default)]
pub struct LocalStore {
    windows: DashMap<String, (Duration, SlidingCounter)>,
    quotas: DashMap<String, (Duration, QuotaCell)>,
    values: DashMap<String, (Bytes, u64)>,
}

/// Milliseconds since the Unix epoch, the clock both stores count in.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LocalStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn hit_at(
        &self,
        now_ms: u64,
        key: &str,
        limit: u64,
        window: Duration,
        increment: u64,
    ) -> RateState {
        let mut entry = self
            .windows
            .entry(key.to_owned())
            .or_insert_with(|| (window, SlidingCounter::default()));
        let (w, counter) = entry.value_mut();
        if *w != window {
            *w = window;
            *counter = SlidingCounter::default();
        }
        let o = counter.hit(now_ms, window, limit, increment);
        RateState {
            allowed: o.allowed,
            remaining: o.remaining,
            retry_after: Duration::from_millis(o.retry_after_ms),
            ticket: Ticket {
                key: key.to_owned(),
                window,
                slot: o.slot,
                amount: if o.allowed { increment } else { 0 },
            },
        }
    }

    pub fn refund_now(&self, ticket: &Ticket) {
        if let Some(mut e) = self.windows.get_mut(&ticket.key) {
            e.value_mut().1.refund(ticket.slot, ticket.amount);
        }
    }

    pub fn quota_at(
        &self,
        now_secs: u64,
        key: &str,
        period: Duration,
        limits: QuotaLimits,
        delta: QuotaDelta,
    ) -> QuotaState {
        let mut entry = self
            .quotas
            .entry(key.to_owned())
            .or_insert_with(|| (period, QuotaCell::default()));
        let (p, cell) = entry.value_mut();
        if *p != period {
            *p = period;
            *cell = QuotaCell::default();
        }
        cell.apply(now_secs, period, limits, delta)
    }

    pub fn get_now(&self, key: &str) -> Option<Bytes> {
        let now = now_ms();
        let hit = self
            .values
            .get(key)
            .and_then(|e| (e.1 > now).then(|| e.0.clone()));
        if hit.is_none() {
            self.values.remove_if(key, |_, (_, exp)| *exp <= now);
        }
        hit
    }

    pub fn set_now(&self, key: &str, value: Bytes, ttl: Duration) {
        let expires = now_ms().saturating_add(ttl.as_millis() as u64);
        self.values.insert(key.to_owned(), (value, expires));
    }

    pub fn delete_now(&self, key: &str) {
        self.values.remove(key);
    }

    /// Drops counters and values that no longer hold anything; returns how many.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let before = self.len();
        self.windows.retain(|_, (w, c)| !c.is_idle(now_ms, *w));
        let now_secs = now_ms / 1000;
        self.quotas
            .retain(|_, (p, c)| super::window::quota_window(now_secs, *p).0 == c.window_start);
        self.values.retain(|_, (_, exp)| *exp > now_ms);
        before.saturating_sub(self.len())
    }

    /// Entries held (counters, quotas, values).
    pub fn len(&self) -> usize {
        self.windows.len() + self.quotas.len() + self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CounterStore for LocalStore {
    async fn hit(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        increment: u64,
    ) -> Result<RateState, StoreError> {
        Ok(self.hit_at(now_ms(), key, limit, window, increment))
    }

    async fn refund(&self, ticket: &Ticket) -> Result<(), StoreError> {
        self.refund_now(ticket);
        Ok(())
    }

    async fn quota(
        &self,
        key: &str,
        period: Duration,
        limits: QuotaLimits,
        delta: QuotaDelta,
    ) -> Result<QuotaState, StoreError> {
        Ok(self.quota_at(now_ms() / 1000, key, period, limits, delta))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.get_now(key))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.set_now(key, value, ttl);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.delete_now(key);
        Ok(())
    }
}
