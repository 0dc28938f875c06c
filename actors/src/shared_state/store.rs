//! The store abstraction: what both the in-process and the Redis store can do.
//!
//! Operations are fallible (the Redis store times out, loses its connection); the
//! [`SharedState`](super::SharedState) facade turns failures into the configured outage
//! behaviour, so nothing above it ever sees a [`StoreError`].

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub use super::window::{QuotaDelta, QuotaLimits, QuotaState};

/// One sliding-window check as a store reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateState {
    pub allowed: bool,
    pub remaining: u64,
    pub retry_after: Duration,
    /// Where the hit was recorded, to take it back with [`CounterStore::refund`].
    pub ticket: Ticket,
}

/// Identifies one admitted hit so that it can be taken back (increment-condition not met).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub key: String,
    pub window: Duration,
    pub slot: i64,
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("redis call timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(String),
    #[error("redis is marked unreachable: {0}")]
    Unreachable(String),
    #[error("redis answered something unexpected: {0}")]
    Protocol(String),
}

/// Counters and a key/value space, local or shared.
///
/// Every method is one atomic operation and, for Redis, at most one round trip (the Redis
/// store lets concurrent checks of one counter share a call).
pub trait CounterStore: Send + Sync {
    /// Sliding-window check-and-increment: admits `increment` units when the window (of
    /// length `window`) then holds at most `limit`, and records them; refuses otherwise
    /// (recording nothing).
    fn hit(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        increment: u64,
    ) -> impl Future<Output = Result<RateState, StoreError>> + Send;

    /// Takes back an admitted hit (no-op when its slot has already expired).
    fn refund(&self, ticket: &Ticket) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Fixed-window quota: applies `delta` in the period-aligned window holding now.
    fn quota(
        &self,
        key: &str,
        period: Duration,
        limits: QuotaLimits,
        delta: QuotaDelta,
    ) -> impl Future<Output = Result<QuotaState, StoreError>> + Send;

    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;

    fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}
