//! The sync loop's decisions, pure: what to ask the control plane next, what to do with its
//! answer, how long to back off. The actor shell does the I/O and feeds the results back.

use std::sync::Arc;
use std::time::Duration;

use outpost_model::signing::PublicKey;
use outpost_model::wire::{ApplyError, ConfigUpdate, GatewaySnapshot};
use rand::Rng;

use super::Identity;
use super::trust::Trust;
use crate::connectivity::{ConfigSource, ConnectivityStatus};
use crate::link::CallError;

/// Exponential backoff with full jitter: the n-th consecutive failure waits a uniformly random
/// time between `initial` and `min(max, initial * 2^n)`, so many gateways losing the control
/// plane at once do not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay before the next attempt, counting one more failure.
    pub fn next(&mut self, rng: &mut impl Rng) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let (lo, hi) = (self.initial.as_millis() as u64, ceiling.as_millis() as u64);
        Duration::from_millis(rng.random_range(lo..=hi))
    }
}

/// What the shell does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Hand this snapshot to the route table. `unchanged`: same content as the one served
    /// (only the revision moved), so there is nothing to compile, only to record.
    Offer {
        snapshot: Arc<GatewaySnapshot>,
        unchanged: bool,
        /// The pinned keys changed (first contact, or a rotation followed): persist them
        /// before the backup signed with the new key is written.
        pins: Option<Vec<PublicKey>>,
    },
    /// The answer applied and hashed but its signature is not trusted: report it, keep serving
    /// what is held, poll again after `delay` for something newer.
    Reject {
        revision: u64,
        hash: String,
        reason: String,
        delay: Duration,
    },
    /// Poll again after this delay (zero: at once).
    Poll(Duration),
    /// The control plane confirmed that the configuration held (from the backup) is its
    /// current one: report it as the control plane's, then poll again at once.
    Confirm,
}

/// The last snapshot the route table refused; not offered again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refused {
    revision: u64,
    hash: String,
}

#[derive(Debug, Clone)]
pub struct SyncState {
    held: Option<Arc<GatewaySnapshot>>,
    refused: Option<Refused>,
    /// Ask for a full snapshot next (`after=0`): our base is not what the control plane thinks.
    resync: bool,
    backoff: Backoff,
    trust: Trust,
    /// Where `held` came from: the backup until the control plane sent or confirmed a
    /// configuration, from then on the control plane.
    source: ConfigSource,
}

impl SyncState {
    /// `held`: what is already served (from the backup, or the first fetch at startup), already
    /// checked against `trust`.
    pub fn new(held: Option<Arc<GatewaySnapshot>>, backoff: Backoff, trust: Trust) -> Self {
        Self {
            held,
            refused: None,
            resync: false,
            backoff,
            trust,
            source: ConfigSource::ControlPlane,
        }
    }

    /// Says where `held` came from at start (the backup, or the control plane's first answer).
    pub fn held_from(mut self, source: ConfigSource) -> Self {
        self.source = source;
        self
    }

    /// Where the configuration held now came from.
    pub fn source(&self) -> ConfigSource {
        self.source
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    pub fn held(&self) -> Option<&Arc<GatewaySnapshot>> {
        self.held.as_ref()
    }

    /// Consecutive failed polls.
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// The `after` of the next poll. After a refusal we wait for something newer than the
    /// refused revision: asking from our own (older) revision would get the refused content
    /// straight back.
    pub fn poll_after(&self) -> u64 {
        if self.resync {
            return 0;
        }
        let held = self.held.as_ref().map_or(0, |s| s.revision);
        let refused = self.refused.as_ref().map_or(0, |r| r.revision);
        held.max(refused)
    }

    /// The content hash to send with the next poll: what we hold at the revision we poll from,
    /// so the control plane can tell us at once when it does not match its own.
    pub fn poll_hash(&self) -> Option<&str> {
        let held = self.held.as_ref()?;
        (!self.resync && self.poll_after() == held.revision).then_some(held.hash.as_str())
    }

    /// Decides what to do with one poll's outcome.
    pub fn on_poll(
        &mut self,
        outcome: Result<Option<ConfigUpdate>, CallError>,
        rng: &mut impl Rng,
    ) -> Step {
        let update = match outcome {
            Ok(None) => {
                self.backoff.reset();
                // A 304 to a poll that carried the held hash means the control plane's view at
                // its current revision is exactly what is held; without the hash (after a
                // refusal, or resyncing) it says nothing about what is held.
                if self.source != ConfigSource::ControlPlane && self.poll_hash().is_some() {
                    self.source = ConfigSource::ControlPlane;
                    return Step::Confirm;
                }
                return Step::Poll(Duration::ZERO);
            }
            Ok(Some(update)) => update,
            Err(_) => return Step::Poll(self.backoff.next(rng)),
        };
        self.backoff.reset();
        let empty = GatewaySnapshot::default();
        let base = self.held.as_deref().unwrap_or(&empty);
        match base.apply(&update) {
            Ok(next) => {
                self.resync = false;
                if self
                    .refused
                    .as_ref()
                    .is_some_and(|r| r.revision == next.revision && r.hash == next.hash)
                {
                    return Step::Poll(self.backoff.next(rng));
                }
                // Checked after the hash: the signature covers the resulting content, so a
                // delta is trusted exactly when the whole view it produces would be.
                let pins = match self.trust.accept_from_control_plane(&next) {
                    Ok(pins) => pins,
                    Err(e) => {
                        // Asking again would get the same answer: wait for a newer revision.
                        self.on_refused(&next);
                        return Step::Reject {
                            revision: next.revision,
                            hash: next.hash,
                            reason: format!("configuration signature refused: {e}"),
                            delay: self.backoff.next(rng),
                        };
                    }
                };
                let unchanged = self.held.as_ref().is_some_and(|h| h.hash == next.hash);
                Step::Offer {
                    snapshot: Arc::new(next),
                    unchanged,
                    pins,
                }
            }
            Err(ApplyError::WrongBase { .. }) => {
                self.resync = true;
                Step::Poll(Duration::ZERO)
            }
            Err(ApplyError::HashMismatch { .. }) => {
                self.resync = true;
                // A delta may simply have been computed against another base; a full snapshot
                // that does not hash is the control plane's problem and must not hot-loop.
                if update.full {
                    Step::Poll(self.backoff.next(rng))
                } else {
                    Step::Poll(Duration::ZERO)
                }
            }
        }
    }

    /// The route table serves `snapshot` now.
    pub fn on_applied(&mut self, snapshot: Arc<GatewaySnapshot>) {
        if self
            .refused
            .as_ref()
            .is_some_and(|r| r.revision <= snapshot.revision)
        {
            self.refused = None;
        }
        self.held = Some(snapshot);
        self.resync = false;
        self.source = ConfigSource::ControlPlane;
    }

    /// The route table refused `snapshot`; the previous one keeps serving.
    pub fn on_refused(&mut self, snapshot: &GatewaySnapshot) {
        self.refused = Some(Refused {
            revision: snapshot.revision,
            hash: snapshot.hash.clone(),
        });
        self.resync = false;
    }
}

/// The heartbeat this instance sends now. The configuration source is the status board's (what
/// `/readyz` shows), so the control plane's instance list and the gateway never disagree;
/// `fallback` (the sync loop's own view) only before anything was reported there.
/// `stopping`: the process's last heartbeat. `draining`: the process is draining (not ready,
/// as its `/readyz` says; so is a stopping one). `certificates`: those of the table being served.
pub fn heartbeat(
    identity: &Identity,
    held: Option<&GatewaySnapshot>,
    status: &ConnectivityStatus,
    fallback: ConfigSource,
    stopping: bool,
    draining: bool,
    certificates: Vec<outpost_model::wire::CertificateExpiry>,
) -> outpost_model::wire::Heartbeat {
    outpost_model::wire::Heartbeat {
        instance_id: identity.instance_id.clone(),
        hostname: identity.hostname.clone(),
        version: identity.version.clone(),
        applied_revision: held.map_or(0, |s| s.revision),
        config_hash: held.map(|s| s.hash.clone()).unwrap_or_default(),
        token_expiry: identity.token_expiry,
        started_at: identity.started_at,
        config_source: status
            .config
            .as_ref()
            .map_or(fallback, |c| c.source)
            .as_str()
            .to_owned(),
        redis: status.redis.state.as_str().to_owned(),
        stopping,
        certificates,
        pool_members: Vec::new(),
        readiness: Some(status.readiness(draining || stopping)),
    }
}

/// The state of every pool member of the served table, at `now` ([`crate::route_table::pool::now_ms`]).
pub fn pool_members(
    table: &crate::route_table::CompiledTable,
    now: u64,
) -> Vec<outpost_model::wire::PoolMemberStatus> {
    table
        .backends
        .values()
        .filter_map(|b| b.pool.as_ref())
        .flat_map(|pool| {
            pool.member_states(now)
                .map(|(m, state)| outpost_model::wire::PoolMemberStatus {
                    backend: pool.backend.to_string(),
                    member: m.label.to_string(),
                    state: state.to_owned(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
