//! `ConfigSync`: keeps the gateway's configuration in step with the control plane.
//!
//! The loop: long-poll `GET /gateway/v1/config?after=<held revision>&hash=<held hash>`, apply
//! the answer to the held snapshot (hash-checked; a delta on the wrong base or a hash mismatch
//! asks for a full snapshot), check the control plane's signature over the result for this
//! gateway ([`trust`]), offer it to the route table, and only once the route table serves it:
//! write the backup, record the revision and tell the [`ConnectivityWatcher`]. A refused
//! snapshot (untrusted signature, or one the route table cannot compile) leaves the previous
//! one serving. Sending the held hash makes the control plane answer at once with a full
//! snapshot when its view at that revision differs, so nothing but its own configuration
//! survives a reconnection. A gateway serving its backup reports the control plane as its
//! configuration's source once the control plane sent one, or confirmed the held one (a `304`
//! to a poll carrying the held hash). Heartbeats go out on their own timer; [`Stop`] sends the
//! last one, marked `stopping`, and ends the loop. Every
//! failure — unreachable, 5xx, 401 — keeps the current config serving (fail static) and is
//! retried with jittered backoff.
//!
//! The decisions live in [`state`]; this shell does the I/O.

pub mod backup;
pub mod messages;
pub mod startup;
pub mod state;
#[cfg(test)]
mod tests;
pub mod trust;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use outpost_model::signing::PublicKey;
use outpost_model::wire::{ConfigUpdate, GatewaySnapshot};

use crate::connectivity::{
    AppliedConfig, ConfigApplied, ConfigConfirmed, ConfigSource, ConnectivityWatcher,
    ControlPlaneFailed, ControlPlaneReachable, ControlPlaneUnauthorized, Refusal, SnapshotRefused,
    StatusHandle,
};
use crate::link::{CallError, Link, LinkConfig};
use crate::route_table::ApplySnapshot;
pub use messages::{GetSyncStatus, Stop, SyncStatus};
use state::{Backoff, Step, SyncState};
use trust::Trust;

/// How often an expiring token is logged again.
const TOKEN_WARNING_EVERY: Duration = Duration::from_secs(3600);

/// Longest wait for the last heartbeat of a stopping process: a control plane that does not
/// answer must not hold up the stop (the instance then ages out as it would after a crash).
const FINAL_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where snapshots go to be compiled and served: the route table's mailbox, as a recipient of
/// its one message (tests stand in for it with an actor of their own).
pub type SnapshotTarget = Recipient<ApplySnapshot>;

/// Who this gateway process is, for heartbeats.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Random per process.
    pub instance_id: String,
    pub hostname: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// Where the config came from at start.
    pub started_from: ConfigSource,
    pub token_expiry: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub link: Arc<LinkConfig>,
    pub poll_wait: Duration,
    pub heartbeat_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Where to write the backup (and the pinned signing keys); `None` when backups are off.
    pub backup_dir: Option<PathBuf>,
    pub identity: Identity,
    /// The signing keys trusted, and this gateway's name (what signatures are bound to).
    pub trust: Trust,
    /// The table being served: heartbeats report its HTTPS certificates' expiry.
    pub served: Option<crate::route_table::TableHandle>,
    /// Set when the gateway starts draining: heartbeats report it as not ready, as its
    /// `/readyz` does.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

pub struct ConfigSync {
    config: SyncConfig,
    state: SyncState,
    /// Built in `started`, on the arbiter that uses it.
    link: Option<Link>,
    table: SnapshotTarget,
    watcher: Addr<ConnectivityWatcher>,
    status: StatusHandle,
    heartbeat_in_flight: bool,
    last_token_warning: Option<Instant>,
    /// Set by [`Stop`]: no new poll or heartbeat starts.
    stopping: bool,
}

impl ConfigSync {
    /// `held`: the snapshot already served (from the startup fetch or the backup), if any.
    pub fn new(
        config: SyncConfig,
        held: Option<Arc<GatewaySnapshot>>,
        table: SnapshotTarget,
        watcher: Addr<ConnectivityWatcher>,
        status: StatusHandle,
    ) -> Self {
        let backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        Self {
            state: SyncState::new(held, backoff, config.trust.clone())
                .held_from(config.identity.started_from),
            config,
            link: None,
            table,
            watcher,
            status,
            heartbeat_in_flight: false,
            last_token_warning: None,
            stopping: false,
        }
    }

    fn link(&self) -> Link {
        self.link
            .clone()
            .expect("the link is built when the actor starts")
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let link = self.link();
        let after = self.state.poll_after();
        let hash = self.state.poll_hash().map(str::to_owned);
        let wait = self.config.poll_wait;
        let call = async move { link.poll_config(after, wait, hash.as_deref()).await };
        ctx.spawn(
            call.into_actor(self)
                .map(move |outcome, act, ctx| act.on_poll(after, outcome, ctx)),
        );
    }

    fn on_poll(
        &mut self,
        after: u64,
        outcome: Result<Option<ConfigUpdate>, CallError>,
        ctx: &mut Context<Self>,
    ) {
        self.report(outcome.as_ref().map(drop));
        match &outcome {
            Err(CallError::Unauthorized(reason)) => tracing::error!(
                reason,
                "control plane refused the gateway token; serving the last config and retrying \
                 (deploy a new token and restart)"
            ),
            Err(e) => {
                tracing::warn!(error = %e, revision = after, "config poll failed; serving the last config")
            }
            Ok(Some(u)) => tracing::debug!(
                after,
                revision = u.revision,
                full = u.full,
                "config update received"
            ),
            Ok(None) => {}
        }
        let step = self.state.on_poll(outcome, &mut rand::rng());
        if let Step::Poll(d) = &step
            && after != 0
            && self.state.poll_after() == 0
        {
            tracing::info!(
                after,
                delay_ms = d.as_millis() as u64,
                "update did not apply to the held config; asking for a full snapshot"
            );
        }
        self.run(step, ctx);
    }

    fn run(&mut self, step: Step, ctx: &mut Context<Self>) {
        match step {
            Step::Poll(delay) if delay.is_zero() => self.poll(ctx),
            Step::Poll(delay) => {
                ctx.run_later(delay, |act, ctx| act.poll(ctx));
            }
            Step::Confirm => {
                if let Some(held) = self.state.held() {
                    tracing::info!(
                        revision = held.revision,
                        hash = %held.hash,
                        "the control plane confirmed the configuration served from the backup"
                    );
                    self.watcher.do_send(ConfigConfirmed {
                        revision: held.revision,
                        hash: held.hash.clone(),
                    });
                }
                self.poll(ctx);
            }
            Step::Offer {
                snapshot,
                unchanged,
                pins,
            } => self.offer(snapshot, unchanged, pins, ctx),
            Step::Reject {
                revision,
                hash,
                reason,
                delay,
            } => {
                self.report_refusal(revision, hash, reason);
                ctx.run_later(delay, |act, ctx| act.poll(ctx));
            }
        }
    }

    fn offer(
        &mut self,
        snapshot: Arc<GatewaySnapshot>,
        unchanged: bool,
        pins: Option<Vec<PublicKey>>,
        ctx: &mut Context<Self>,
    ) {
        let taken: BoxFuture<'static, Result<(), String>> = if unchanged {
            Box::pin(async { Ok(()) })
        } else {
            Box::pin(startup::hand_over(self.table.clone(), snapshot.clone()))
        };
        let backup_dir = self.config.backup_dir.clone();
        let to_write = backup::Backup {
            gateway: self.config.trust.gateway().to_owned(),
            snapshot: GatewaySnapshot::clone(&snapshot),
        };
        let work = async move {
            // The pin goes first: a backup signed by a newly trusted key must never be on disk
            // without the pin that makes it loadable.
            if let Some(keys) = pins {
                startup::write_pins(backup_dir.clone(), keys).await;
            }
            taken.await?;
            // Only a snapshot that serves is worth restarting from.
            if let Some(dir) = backup_dir {
                startup::write_backup(dir, to_write).await;
            }
            Ok(())
        };
        ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(()) => act.applied(snapshot),
                Err(reason) => act.refused(&snapshot, reason),
            }
            act.poll(ctx);
        }));
    }

    fn applied(&mut self, snapshot: Arc<GatewaySnapshot>) {
        tracing::info!(revision = snapshot.revision, hash = %snapshot.hash, "config applied");
        self.watcher.do_send(ConfigApplied(AppliedConfig {
            source: ConfigSource::ControlPlane,
            revision: snapshot.revision,
            hash: snapshot.hash.clone(),
            applied_at: Utc::now(),
        }));
        self.state.on_applied(snapshot);
    }

    fn refused(&mut self, snapshot: &GatewaySnapshot, reason: String) {
        tracing::error!(
            revision = snapshot.revision,
            reason,
            "route table refused the config; the previous one keeps serving"
        );
        self.watcher.do_send(SnapshotRefused(Refusal {
            revision: snapshot.revision,
            hash: snapshot.hash.clone(),
            reason,
            at: Utc::now(),
        }));
        self.state.on_refused(snapshot);
    }

    fn report_refusal(&mut self, revision: u64, hash: String, reason: String) {
        tracing::error!(
            revision,
            reason,
            "config from the control plane refused; the previous one keeps serving"
        );
        metrics::counter!("outpost_config_signature_refusals_total").increment(1);
        self.watcher.do_send(SnapshotRefused(Refusal {
            revision,
            hash,
            reason,
            at: Utc::now(),
        }));
    }

    fn heartbeat(&self, stopping: bool) -> outpost_model::wire::Heartbeat {
        let served = self.config.served.as_ref().and_then(|t| t.load_full());
        let certificates = served
            .as_ref()
            .map(|t| t.certificates.expiries().to_vec())
            .unwrap_or_default();
        let mut hb = state::heartbeat(
            &self.config.identity,
            self.state.held().map(|s| &**s),
            &self.status.load(),
            self.state.source(),
            stopping,
            self.config
                .draining
                .load(std::sync::atomic::Ordering::Relaxed),
            certificates,
        );
        hb.pool_members = served
            .as_ref()
            .map(|t| state::pool_members(t, crate::route_table::pool::now_ms()))
            .unwrap_or_default();
        hb
    }

    fn send_heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        self.warn_if_token_expiring();
        if self.heartbeat_in_flight {
            return;
        }
        let heartbeat = self.heartbeat(false);
        self.heartbeat_in_flight = true;
        let link = self.link();
        let call = async move { link.heartbeat(&heartbeat).await };
        ctx.spawn(call.into_actor(self).map(|outcome, act, _| {
            act.heartbeat_in_flight = false;
            if let Err(e) = &outcome {
                tracing::debug!(error = %e, "heartbeat failed");
            }
            act.report(outcome.as_ref().map(drop));
        }));
    }

    fn warn_if_token_expiring(&mut self) {
        let Some(token) = self.status.load().token.clone() else {
            return;
        };
        let now = Utc::now();
        if !token.expiring(now) {
            return;
        }
        if self
            .last_token_warning
            .is_some_and(|t| t.elapsed() < TOKEN_WARNING_EVERY)
        {
            return;
        }
        self.last_token_warning = Some(Instant::now());
        tracing::warn!(
            expiry = %token.expiry,
            hours_left = (token.expiry - now).num_hours(),
            "the gateway token expires soon; mint a new one (outpost gateway-token) and restart"
        );
    }

    fn report(&self, outcome: Result<(), &CallError>) {
        match outcome {
            Ok(()) => self.watcher.do_send(ControlPlaneReachable),
            Err(CallError::Unauthorized(reason)) => {
                self.watcher.do_send(ControlPlaneUnauthorized {
                    reason: reason.clone(),
                })
            }
            Err(e) => self.watcher.do_send(ControlPlaneFailed {
                error: e.to_string(),
            }),
        }
    }
}

/// The startup fetch: one full snapshot (`after=0`), bounded by the link's request timeout.
/// Its signature is not checked here: the caller holds the [`Trust`] and decides.
pub async fn fetch_snapshot(link: &Link) -> Result<GatewaySnapshot, CallError> {
    let update = link
        .poll_config(0, Duration::ZERO, None)
        .await?
        .ok_or_else(|| CallError::Rejected("304 to a request for a full snapshot".into()))?;
    GatewaySnapshot::default()
        .apply(&update)
        .map_err(|e| CallError::Rejected(e.to_string()))
}

impl Actor for ConfigSync {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link = Some(Link::new(self.config.link.clone()));
        self.send_heartbeat(ctx);
        ctx.run_interval(self.config.heartbeat_interval, |act, ctx| {
            act.send_heartbeat(ctx)
        });
        self.poll(ctx);
    }
}

impl Handler<Stop> for ConfigSync {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Stop, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let heartbeat = self.heartbeat(true);
        let link = self.link();
        let call = async move {
            tokio::time::timeout(FINAL_HEARTBEAT_TIMEOUT, link.heartbeat(&heartbeat)).await
        };
        Box::pin(call.into_actor(self).map(|outcome, _, ctx| {
            match outcome {
                Ok(Ok(_)) => tracing::info!("the control plane was told this instance stops"),
                Ok(Err(e)) => {
                    tracing::info!(error = %e, "could not tell the control plane this instance stops")
                }
                Err(_) => tracing::info!(
                    "the control plane did not acknowledge that this instance stops in time"
                ),
            }
            ctx.stop();
        }))
    }
}

impl Handler<GetSyncStatus> for ConfigSync {
    type Result = MessageResult<GetSyncStatus>;

    fn handle(&mut self, _: GetSyncStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(SyncStatus {
            held: self.state.held().map(|s| (s.revision, s.hash.clone())),
            poll_after: self.state.poll_after(),
            failures: self.state.failures(),
        })
    }
}
