//! What `ConfigSync` answers. It is driven by its own timers and by the control plane's
//! answers, so from outside it is only ever asked where it stands, or told to stop.

use actix::Message;

/// From tests and diagnostics: where the sync loop stands.
#[derive(Debug, Message)]
#[rtype(result = "SyncStatus")]
pub struct GetSyncStatus;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// Revision and hash served, if any.
    pub held: Option<(u64, String)>,
    /// The `after` of the next poll (0: full snapshot).
    pub poll_after: u64,
    /// Consecutive failed polls.
    pub failures: u32,
}

/// From the gateway's shutdown: send the last heartbeat, marked `stopping`, so the control plane
/// shows the instance stopped at once, then stop polling. Resolves once the control plane
/// acknowledged it or a short timeout passed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;
