//! Messages of the [`RouteTable`](super::RouteTable) actor.

use std::sync::Arc;
use std::time::Duration;

use actix::Message;
use outpost_model::Problems;
use outpost_model::wire::GatewaySnapshot;

/// Compile this snapshot and publish it. Sent by `ConfigSync` after each verified update and
/// once at start (from the control plane or the backup). A snapshot with any problem is refused
/// whole and the table being served stays.
#[derive(Debug, Message)]
#[rtype(result = "Result<AppliedInfo, Problems>")]
pub struct ApplySnapshot(pub Arc<GatewaySnapshot>);

/// What is served now, if anything. Sent by ops endpoints and tests.
#[derive(Debug, Message)]
#[rtype(result = "Option<AppliedInfo>")]
pub struct GetApplied;

/// The table being served after an [`ApplySnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedInfo {
    pub revision: u64,
    pub hash: String,
    pub apis: usize,
    pub operations: usize,
    pub subscriptions: usize,
    /// The snapshot had the hash of the table already served: nothing was recompiled.
    pub unchanged: bool,
    pub compile_time: Duration,
}
