//! Shared state of a site: rate-limit and quota counters, and the key/value space of the cache's
//! shared tier.
//!
//! # Layout
//! - [`window`]: the counting rules, pure (sliding window of slots, period-aligned quotas).
//! - [`store`]: the [`CounterStore`] trait both stores implement, one atomic operation each.
//! - [`local`]: the in-process store (`DashMap`), the default without Redis.
//! - The compiled rate-limit and quota steps are in `crate::route_table::steps` (limits).
//! - `journal`: what this node counted alone during a Redis outage, added to the shared
//!   counters when Redis is back.
//! - [`redis_store`]: the Redis store (Lua scripts in `scripts/`, at most one round trip per
//!   operation; concurrent checks of one counter share one, see `batch`).
//! - this file: [`SharedState`], what the gateway uses. It never fails: when Redis cannot be
//!   used, rate limits and quotas follow the policy's [`OutageMode`] and the cache degrades to
//!   its in-process tier.
//!
//! Redis keys all start with `outpost:` followed by a kind and a format version
//! (`outpost:rl:2:…`, `outpost:q:1:…`, `outpost:c:1:…`), so a format change never reads old data.
//! See `docs/rate-limiting.md` for the algorithms, their error bounds and the outage modes.

mod batch;
mod journal;
pub mod local;
pub mod redis_store;
pub mod store;
pub mod window;

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use outpost_model::policy::OutageMode;
use tokio::sync::watch;

pub use self::local::LocalStore;
pub use self::redis_store::{Reachability, RedisConfig, RedisStore, RedisTls};
pub use self::store::{CounterStore, RateState, StoreError, Ticket};
pub use self::window::{QuotaDelta, QuotaLimits, QuotaState};

/// Period of the in-process store's sweep of idle counters.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// What a limit check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit: 429 (rate limit) or 403 (quota), with `Retry-After`.
    Limited,
    /// The shared store is unreachable and the policy says `fail-closed`: 503 with
    /// `Retry-After`.
    Unavailable,
}

/// Who counted a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountedBy {
    /// Redis, shared by the site's nodes.
    Shared,
    /// This node's in-process store (no Redis configured, or the `local` outage mode).
    Local,
    /// Nobody: `fail-open` or `fail-closed` during an outage.
    Nobody,
}

/// A rate-limit decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The limit enforced (this node's share in the `local` outage mode).
    pub limit: u64,
    pub remaining: u64,
    /// When refused: how long until the request would fit.
    pub retry_after: Duration,
    pub counted_by: CountedBy,
    ticket: Option<Ticket>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allowed
    }
}

/// A quota decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaDecision {
    pub verdict: Verdict,
    pub calls: u64,
    pub bytes: u64,
    /// The limits enforced (this node's share in the `local` outage mode).
    pub limits: QuotaLimits,
    /// Until the current window ends (the `Retry-After` of a refusal).
    pub resets_in: Duration,
    pub counted_by: CountedBy,
}

impl QuotaDecision {
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allowed
    }

    pub fn calls_remaining(&self) -> Option<u64> {
        self.limits.calls.map(|l| l.saturating_sub(self.calls))
    }
}

/// How the gateway's shared state is built.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SharedStateConfig {
    /// `None`: in-process state only.
    pub redis: Option<RedisConfig>,
    /// Nodes sharing the limits; the `local` outage mode enforces `ceil(limit / nodes)`.
    pub nodes: u64,
}

/// Rate limits, quotas and shared key/values for one gateway node; cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    local: LocalStore,
    redis: Option<RedisStore>,
    nodes: u64,
    not_configured: watch::Sender<Reachability>,
    /// Counted locally while Redis was configured but unreachable; replayed on reconnect.
    journal: journal::Journal,
}

impl Inner {
    /// Adds what this node counted alone during the outage to the shared counters (see
    /// `journal.rs`). An entry whose call fails goes back to the journal for the next
    /// reconnect.
    async fn replay(&self, redis: &RedisStore) {
        for entry in self.journal.drain(local::now_ms()) {
            let result = match &entry {
                journal::Replay::Rate {
                    key, window, units, ..
                } => redis
                    .hit(key, REPLAY_LIMIT, *window, *units)
                    .await
                    .map(drop),
                journal::Replay::Quota {
                    key,
                    period,
                    limits,
                    delta,
                    ..
                } => redis.quota(key, *period, *limits, *delta).await.map(drop),
            };
            match result {
                Ok(()) => metrics::counter!("outpost_redis_replayed_total", "kind" => entry.kind())
                    .increment(1),
                Err(e) => {
                    tracing::debug!(error = %e, "outage counts not replayed yet");
                    self.journal.restore(entry);
                }
            }
        }
    }
}

/// Each time Redis is reported back, adds the outage counts to the shared counters: once, and
/// again after [`REPLAY_SETTLE`] for decisions that fell back just before the reconnect. Ends
/// with the shared state.
async fn replay_on_reconnect(mut rx: watch::Receiver<Reachability>, weak: std::sync::Weak<Inner>) {
    while rx.changed().await.is_ok() {
        if !rx.borrow_and_update().is_connected() {
            continue;
        }
        for _ in 0..2 {
            let Some(inner) = weak.upgrade() else { return };
            let Some(redis) = inner.redis.clone() else {
                return;
            };
            if inner.journal.is_empty() || !redis.is_healthy() {
                break;
            }
            inner.replay(&redis).await;
            drop(inner);
            tokio::time::sleep(REPLAY_SETTLE).await;
        }
    }
}

/// The limit a replayed rate-limit record is checked against: never reached, so the units are
/// always added (exact in a Lua number, which is a double).
const REPLAY_LIMIT: u64 = 1 << 52;

/// After a replay, decisions that fell back just before the reconnect may still land in the
/// journal; a second pass this long after picks them up.
const REPLAY_SETTLE: Duration = Duration::from_secs(1);

impl SharedState {
    /// In-process state only (no Redis configured). Starts the sweep task when called inside a
    /// Tokio runtime.
    pub fn in_process() -> SharedState {
        Self::build(None, 1)
    }

    /// Connects to Redis when configured (see [`RedisStore::connect`]: never fails because Redis
    /// is down) and starts the probe and sweep tasks on the current runtime.
    pub async fn connect(config: SharedStateConfig) -> Result<SharedState, StoreError> {
        let redis = match config.redis {
            Some(r) => Some(RedisStore::connect(r).await?),
            None => None,
        };
        Ok(Self::build(redis, config.nodes))
    }

    fn build(redis: Option<RedisStore>, nodes: u64) -> SharedState {
        let (not_configured, _) = watch::channel(Reachability::NotConfigured);
        if let Some(redis) = &redis {
            redis.set_nodes(nodes);
        }
        let state = SharedState {
            inner: Arc::new(Inner {
                local: LocalStore::new(),
                redis,
                nodes: nodes.max(1),
                not_configured,
                journal: journal::Journal::default(),
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let weak = Arc::downgrade(&state.inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SWEEP_INTERVAL).await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.local.sweep(local::now_ms());
                }
            });
            if let Some(redis) = &state.inner.redis {
                tokio::spawn(replay_on_reconnect(
                    redis.subscribe(),
                    Arc::downgrade(&state.inner),
                ));
            }
        }
        state
    }

    /// The Redis store, when configured (the cache's shared tier uses it directly).
    pub fn redis(&self) -> Option<&RedisStore> {
        self.inner.redis.as_ref()
    }

    /// Gives the calling thread its own Redis connection now (see
    /// [`RedisStore::prepare_thread`]): each traffic worker calls it when it starts, so that its
    /// checks run on a connection driven by its own runtime from the first request on. Does
    /// nothing without Redis.
    pub fn prepare_thread(&self) {
        if let Some(redis) = &self.inner.redis {
            redis.prepare_thread();
        }
    }

    /// Redis configured and currently usable.
    pub fn shared_available(&self) -> bool {
        self.inner
            .redis
            .as_ref()
            .is_some_and(RedisStore::is_healthy)
    }

    pub fn local(&self) -> &LocalStore {
        &self.inner.local
    }

    pub fn nodes(&self) -> u64 {
        self.inner.nodes
    }

    pub fn reachability(&self) -> Reachability {
        match &self.inner.redis {
            Some(r) => r.reachability(),
            None => Reachability::NotConfigured,
        }
    }

    /// Notified on every change of [`Reachability`].
    pub fn subscribe(&self) -> watch::Receiver<Reachability> {
        match &self.inner.redis {
            Some(r) => r.subscribe(),
            None => self.inner.not_configured.subscribe(),
        }
    }

    /// Forwards every reachability change (and the current one) to the connectivity watcher.
    /// Needs a Tokio runtime; does nothing without Redis.
    pub fn report_to(
        &self,
        recipient: actix::Recipient<crate::connectivity::messages::RedisObserved>,
    ) {
        let Some(redis) = &self.inner.redis else {
            return;
        };
        let mut rx = redis.subscribe();
        tokio::spawn(async move {
            loop {
                let observed = match &*rx.borrow_and_update() {
                    Reachability::Connected => crate::connectivity::messages::RedisObserved {
                        reachable: true,
                        error: None,
                    },
                    Reachability::Disconnected { reason } => {
                        crate::connectivity::messages::RedisObserved {
                            reachable: false,
                            error: Some(reason.clone()),
                        }
                    }
                    Reachability::NotConfigured => return,
                };
                recipient.do_send(observed);
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Sliding-window check-and-increment of `key` (see [`CounterStore::hit`]); never fails.
    pub async fn rate_limit(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        increment: u64,
        outage: OutageMode,
    ) -> Decision {
        self.rate_limit_with_budget(key, limit, window, increment, 0, outage)
            .await
    }

    /// [`Self::rate_limit`] with a local budget of `budget` checks (the policy's
    /// `local-budget`; 0: none): over Redis, this node's threads admit from leases of the
    /// counter without a round trip (`docs/rate-limiting.md`, "Local budgets"). The in-process
    /// store is local already and ignores it.
    pub async fn rate_limit_with_budget(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        increment: u64,
        budget: u64,
        outage: OutageMode,
    ) -> Decision {
        let shared_key = format!("outpost:rl:2:{key}");
        let decision = match &self.inner.redis {
            None => self.count_locally(&shared_key, limit, window, increment),
            // The store takes the key (no copy per check); the rare fallback formats it again.
            Some(redis) => match redis
                .hit_with_budget(shared_key, limit, window, increment, budget)
                .await
            {
                Ok(s) => decision(s, limit, CountedBy::Shared),
                Err(e) => {
                    fallback(outage, &e);
                    let key = format!("outpost:rl:2:{key}");
                    match outage {
                        OutageMode::FailOpen => uncounted(Verdict::Allowed, limit),
                        OutageMode::FailClosed => uncounted(Verdict::Unavailable, limit),
                        OutageMode::Local => {
                            let d = self.count_locally(
                                &key,
                                limit.div_ceil(self.inner.nodes),
                                window,
                                increment,
                            );
                            if d.allowed() {
                                self.inner
                                    .journal
                                    .rate(&key, window, increment, local::now_ms());
                            }
                            d
                        }
                    }
                }
            },
        };
        metrics::counter!(
            "outpost_ratelimit_decisions_total",
            "kind" => "rate-limit",
            "result" => verdict_label(decision.verdict)
        )
        .increment(1);
        decision
    }

    /// Takes back the hit of an admitted decision (rate-limit-by-key whose increment-condition
    /// did not match the response). At most one round trip; errors are only counted.
    pub async fn refund(&self, decision: &Decision) {
        let Some(ticket) = &decision.ticket else {
            return;
        };
        match (decision.counted_by, &self.inner.redis) {
            (CountedBy::Local, redis) => {
                self.inner.local.refund_now(ticket);
                if redis.is_some() {
                    self.inner.journal.rate_refund(&ticket.key, ticket.amount);
                }
            }
            (CountedBy::Shared, Some(redis)) => {
                let _ = redis.refund(ticket).await;
            }
            _ => {}
        }
    }

    /// Fixed-window quota on `key`; `limits.bytes` in bytes. Admission when
    /// `delta.enforce`; a post-response record (bandwidth, refund) otherwise. Never fails.
    pub async fn quota(
        &self,
        key: &str,
        period: Duration,
        limits: QuotaLimits,
        delta: QuotaDelta,
        outage: OutageMode,
    ) -> QuotaDecision {
        let key = format!("outpost:q:1:{key}");
        let local = |limits: QuotaLimits| {
            let s = self
                .inner
                .local
                .quota_at(local::now_ms() / 1000, &key, period, limits, delta);
            quota_decision(s, limits, CountedBy::Local)
        };
        let decision = match &self.inner.redis {
            None => local(limits),
            Some(redis) => match redis.quota(&key, period, limits, delta).await {
                Ok(s) => quota_decision(s, limits, CountedBy::Shared),
                Err(e) => {
                    fallback(outage, &e);
                    let resets_in = window::quota_window(local::now_ms() / 1000, period).1;
                    let resets_in =
                        Duration::from_secs(resets_in.saturating_sub(local::now_ms() / 1000));
                    let uncounted = |verdict| QuotaDecision {
                        verdict,
                        calls: 0,
                        bytes: 0,
                        limits,
                        resets_in,
                        counted_by: CountedBy::Nobody,
                    };
                    match outage {
                        OutageMode::FailOpen => uncounted(Verdict::Allowed),
                        OutageMode::FailClosed if delta.enforce => uncounted(Verdict::Unavailable),
                        OutageMode::FailClosed => uncounted(Verdict::Allowed),
                        OutageMode::Local => {
                            let d = local(limits.share(self.inner.nodes));
                            if d.allowed() {
                                self.inner.journal.quota(
                                    &key,
                                    period,
                                    limits,
                                    delta,
                                    local::now_ms() / 1000,
                                );
                            }
                            d
                        }
                    }
                }
            },
        };
        if delta.enforce {
            metrics::counter!(
                "outpost_ratelimit_decisions_total",
                "kind" => "quota",
                "result" => verdict_label(decision.verdict)
            )
            .increment(1);
        }
        decision
    }

    fn count_locally(&self, key: &str, limit: u64, window: Duration, increment: u64) -> Decision {
        let s = self
            .inner
            .local
            .hit_at(local::now_ms(), key, limit, window, increment);
        decision(s, limit, CountedBy::Local)
    }
}

fn decision(s: RateState, limit: u64, counted_by: CountedBy) -> Decision {
    Decision {
        verdict: if s.allowed {
            Verdict::Allowed
        } else {
            Verdict::Limited
        },
        limit,
        remaining: s.remaining,
        retry_after: s.retry_after,
        counted_by,
        ticket: s.allowed.then_some(s.ticket),
    }
}

fn uncounted(verdict: Verdict, limit: u64) -> Decision {
    Decision {
        verdict,
        limit,
        remaining: limit,
        retry_after: if verdict == Verdict::Unavailable {
            redis_store::PROBE_INTERVAL.max(Duration::from_secs(1))
        } else {
            Duration::ZERO
        },
        counted_by: CountedBy::Nobody,
        ticket: None,
    }
}

fn quota_decision(s: QuotaState, limits: QuotaLimits, counted_by: CountedBy) -> QuotaDecision {
    QuotaDecision {
        verdict: if s.allowed {
            Verdict::Allowed
        } else {
            Verdict::Limited
        },
        calls: s.calls,
        bytes: s.bytes,
        limits,
        resets_in: s.resets_in,
        counted_by,
    }
}

fn fallback(outage: OutageMode, e: &StoreError) {
    let mode = match outage {
        OutageMode::FailOpen => "fail-open",
        OutageMode::Local => "local",
        OutageMode::FailClosed => "fail-closed",
    };
    tracing::debug!(error = %e, mode, "shared state fallback");
    metrics::counter!("outpost_redis_fallback_total", "mode" => mode).increment(1);
}

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Allowed => "allowed",
        Verdict::Limited => "limited",
        Verdict::Unavailable => "unavailable",
    }
}
