//! What the watcher is told, and by whom.

use std::sync::Arc;

use actix::Message;

use super::state::{AppliedConfig, ConnectivityStatus, Refusal};

/// From `ConfigSync` (poll, heartbeat) after any successful call to the control plane.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ControlPlaneReachable;

/// From `ConfigSync` when a call failed for a reason other than the token.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ControlPlaneFailed {
    pub error: String,
}

/// From `ConfigSync` when the control plane answered 401: the reason is its own.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ControlPlaneUnauthorized {
    pub reason: String,
}

/// From `ConfigSync` (or the startup sequence) once the route table serves a snapshot.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ConfigApplied(pub AppliedConfig);

/// From `ConfigSync` when the control plane confirmed that the configuration served (from the
/// backup) is its current one: nothing was applied, only the source changes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ConfigConfirmed {
    pub revision: u64,
    pub hash: String,
}

/// From `ConfigSync` when the route table refused a snapshot; the previous one keeps serving.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SnapshotRefused(pub Refusal);

/// From whatever talks to Redis, after each probe or call outcome worth reporting.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RedisObserved {
    pub reachable: bool,
    pub error: Option<String>,
}

/// Anyone: the current status (the same value the [`super::StatusHandle`] gives without a
/// mailbox round trip).
#[derive(Debug, Message)]
#[rtype(result = "Arc<ConnectivityStatus>")]
pub struct GetStatus;
