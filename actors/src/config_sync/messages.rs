//! What `ConfigSync` answers. It is driven by its own timers and by the control plane's
//! answers, so from outside it is only ever asked where it stands.

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
