//! What the Cache actor is told. The hot path never sends any of these: requests use the
//! [`CacheHandle`](super::CacheHandle).

use actix::Message;

use super::state::CacheStats;
use crate::shared_state::Reachability;

/// From the actor's own timer (or a test): drop expired entries of the in-process tier.
/// Replies with how many were removed.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct SweepExpired;

/// From `/metrics`, the status page or a test: the cache's stats.
#[derive(Debug, Message)]
#[rtype(result = "CacheStats")]
pub struct GetCacheStats;

/// From the shared state's reachability watch: the shared tier became (un)usable.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SharedTierChanged(pub Reachability);
