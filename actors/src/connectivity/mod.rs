//! `ConnectivityWatcher`: the gateway's status board.
//!
//! It owns the answer to "how is this gateway doing": is the control plane reachable (and does
//! it still accept our token), is Redis, which configuration is served and where it came from,
//! what was refused. `ConfigSync` and the Redis client tell it what they see; `/readyz`,
//! `/metrics` and heartbeats read the published [`StatusHandle`] without touching the mailbox.

pub mod messages;
pub mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use arc_swap::ArcSwap;
use chrono::{TimeDelta, Utc};

use crate::token::TokenInfo;
pub use messages::*;
use state::Connectivity;
pub use state::{
    AppliedConfig, ConfigSource, ConnectivityStatus, ControlPlaneState, DRAINING, RedisState,
    Refusal,
};

/// How often a `degraded` state is re-checked against the grace window.
const TICK: Duration = Duration::from_secs(1);

/// Cheap, lock-free read access to the latest status.
#[derive(Clone)]
pub struct StatusHandle(Arc<ArcSwap<ConnectivityStatus>>);

impl StatusHandle {
    pub fn load(&self) -> Arc<ConnectivityStatus> {
        self.0.load_full()
    }
}

impl std::fmt::Debug for StatusHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatusHandle").field(&self.load()).finish()
    }
}

#[derive(Debug, Clone)]
pub struct WatcherConfig {
    pub offline: bool,
    pub redis_configured: bool,
    pub token: Option<TokenInfo>,
    /// `control_plane.token_warning_hours`, as a window (see [`crate::token::warning_window`]).
    pub token_warning: TimeDelta,
    /// How long after the last success failures count as `degraded`, not `disconnected`.
    /// Successes come at least every heartbeat, so a few heartbeat intervals.
    pub degraded_grace: Duration,
}

pub struct ConnectivityWatcher {
    state: Connectivity,
    published: StatusHandle,
}

impl ConnectivityWatcher {
    /// The watcher and its handle; the handle works before the actor starts (it then shows the
    /// initial "not ready" status), so the ops listener can come up first.
    pub fn new(config: WatcherConfig) -> (Self, StatusHandle) {
        let grace = TimeDelta::from_std(config.degraded_grace).unwrap_or(TimeDelta::MAX);
        let state = Connectivity::new(
            config.offline,
            config.redis_configured,
            config.token.as_ref(),
            config.token_warning,
            grace,
        );
        let published = StatusHandle(Arc::new(ArcSwap::from_pointee(state.status().clone())));
        publish_gauges(state.status());
        (
            Self {
                state,
                published: published.clone(),
            },
            published,
        )
    }

    fn publish(&self) {
        let status = self.state.status();
        if **self.published.0.load() != *status {
            self.published.0.store(Arc::new(status.clone()));
        }
        publish_gauges(status);
    }
}

/// Sets the connectivity and config gauges from `status`. The ops listener calls it again right
/// before rendering `/metrics`, so what a scrape shows is this gateway's status even when a test
/// or the demo runs several gateways in one process (metrics recorders are process-wide).
pub fn publish_gauges(status: &ConnectivityStatus) {
    let cp = status.control_plane.state;
    metrics::gauge!("outpost_control_plane_connected")
        .set(flag(cp == ControlPlaneState::Connected));
    for s in ControlPlaneState::ALL {
        metrics::gauge!("outpost_control_plane_state", "state" => s.as_str()).set(flag(s == cp));
    }
    metrics::gauge!("outpost_redis_connected")
        .set(flag(status.redis.state == RedisState::Connected));
    if let Some(c) = &status.config {
        metrics::gauge!("outpost_config_revision").set(c.revision as f64);
        metrics::gauge!("outpost_config_last_applied_timestamp_seconds")
            .set(c.applied_at.timestamp_millis() as f64 / 1000.0);
    }
    if let Some(t) = &status.token {
        let now = Utc::now();
        metrics::gauge!("outpost_gateway_token_expiry_seconds")
            .set((t.expiry - now).num_seconds() as f64);
        metrics::gauge!("outpost_gateway_token_expiring").set(flag(t.expiring(now)));
    }
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

impl Actor for ConnectivityWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK, |act, _| {
            if act.state.tick(Utc::now()) {
                act.publish();
            }
        });
    }
}

impl Handler<ControlPlaneReachable> for ConnectivityWatcher {
    type Result = ();
    fn handle(&mut self, _: ControlPlaneReachable, _: &mut Self::Context) {
        let was = self.state.status().control_plane.state;
        self.state.control_plane_ok(Utc::now());
        if was != ControlPlaneState::Connected {
            tracing::info!(previous = was.as_str(), "control plane reachable");
        }
        self.publish();
    }
}

impl Handler<ControlPlaneFailed> for ConnectivityWatcher {
    type Result = ();
    fn handle(&mut self, msg: ControlPlaneFailed, _: &mut Self::Context) {
        self.state.control_plane_failed(Utc::now(), msg.error);
        self.publish();
    }
}

impl Handler<ControlPlaneUnauthorized> for ConnectivityWatcher {
    type Result = ();
    fn handle(&mut self, msg: ControlPlaneUnauthorized, _: &mut Self::Context) {
        self.state
            .control_plane_unauthorized(Utc::now(), msg.reason);
        self.publish();
    }
}

impl Handler<ConfigApplied> for ConnectivityWatcher {
    type Result = ();
    fn handle(&mut self, msg: ConfigApplied, _: &mut Self::Context) {
        self.state.config_applied(msg.0);
        self.publish();
    }
}

impl Handler<ConfigConfirmed> for ConnectivityWatcher {
    type Result = ();
    fn handle(&mut self, msg: ConfigConfirmed, _: &mut Self::Context) {
        if self.state.config_confirmed(msg.revision, &msg.hash) {
            self.publish();
        }
    }
}

impl Handler<SnapshotRefused> for ConnectivityWatcher {
    type Result = ();
    fn handle(&mut self, msg: SnapshotRefused, _: &mut Self::Context) {
        metrics::counter!("outpost_config_refused_total").increment(1);
        self.state.snapshot_refused(msg.0);
        self.publish();
    }
}

impl Handler<RedisObserved> for ConnectivityWatcher {
    type Result = ();
    fn handle(&mut self, msg: RedisObserved, _: &mut Self::Context) {
        self.state.redis_observed(msg.reachable, msg.error);
        self.publish();
    }
}

impl Handler<GetStatus> for ConnectivityWatcher {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.published.load())
    }
}
