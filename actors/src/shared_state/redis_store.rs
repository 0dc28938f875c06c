//! The Redis store: counters shared by every node of a site, one round trip per operation.
//!
//! One multiplexed [`ConnectionManager`] per process (cloned per call, so concurrent requests
//! share one socket and its writes are pipelined), reconnecting on its own. Every call is bounded
//! by `timeout`. A failed call marks the store *unreachable*: later calls fail at once (no
//! timeout paid per request) until the probe task's `PING` succeeds again, every
//! `probe_interval`. Counting scripts run with `EVALSHA` (falling back to `EVAL` on `NOSCRIPT`,
//! e.g. after a Redis restart) and read the time from Redis, so node clocks do not matter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::watch;

use super::store::{CounterStore, RateState, StoreError, Ticket};
use super::window::{QuotaDelta, QuotaLimits, QuotaState, slot_geometry};

/// How the Redis store connects and when it gives up on a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port[/db]` or `rediss://…` (TLS, rustls, system roots).
    pub url: String,
    /// Bound of every call (the request waits at most this long for Redis).
    pub timeout: Duration,
    /// Health probe period (`PING`), connected or not; reconnect attempts follow it.
    pub probe_interval: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>, timeout: Duration) -> Self {
        Self {
            url: url.into(),
            timeout,
            probe_interval: PROBE_INTERVAL,
        }
    }
}

/// Default health probe period.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Whether Redis can be used, as the gateway reports it (`/readyz`, `/metrics`, heartbeats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reachability {
    /// No Redis configured: in-process state only.
    NotConfigured,
    Connected,
    Disconnected {
        reason: String,
    },
}

impl Reachability {
    pub fn is_connected(&self) -> bool {
        matches!(self, Reachability::Connected)
    }
}

#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    timeout: Duration,
    healthy: AtomicBool,
    status: watch::Sender<Reachability>,
    sliding: Script,
    refund: Script,
    quota: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.inner.timeout)
            .field("status", &*self.inner.status.borrow())
            .finish()
    }
}

impl RedisStore {
    /// Builds the store and starts its probe task on the current Tokio runtime. Does not fail
    /// when Redis is down: the store starts disconnected and connects when Redis comes up.
    /// Fails only on an invalid URL.
    pub async fn connect(config: RedisConfig) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| StoreError::Redis(format!("invalid redis url: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(config.probe_interval);
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| StoreError::Redis(e.to_string()))?;
        let (status, _) = watch::channel(Reachability::Disconnected {
            reason: "not connected yet".into(),
        });
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn,
                timeout: config.timeout,
                healthy: AtomicBool::new(false),
                status,
                sliding: Script::new(include_str!("scripts/sliding_window.lua")),
                refund: Script::new(include_str!("scripts/refund.lua")),
                quota: Script::new(include_str!("scripts/quota.lua")),
            }),
        };
        store.probe().await;
        let weak = Arc::downgrade(&store.inner);
        let interval = config.probe_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(jitter(interval)).await;
                let Some(inner) = weak.upgrade() else { return };
                RedisStore { inner }.probe().await;
            }
        });
        Ok(store)
    }

    /// `PING` once and record the outcome.
    pub async fn probe(&self) -> bool {
        let mut conn = self.inner.conn.clone();
        let ping = async move { redis::cmd("PING").query_async::<String>(&mut conn).await };
        match self.bounded(ping).await {
            Ok(_) => {
                self.mark_healthy();
                true
            }
            Err(e) => {
                self.mark_unhealthy(&e);
                false
            }
        }
    }

    /// Cheap: one atomic load.
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
    }

    pub fn reachability(&self) -> Reachability {
        self.inner.status.borrow().clone()
    }

    /// Notified on every change of [`Reachability`].
    pub fn subscribe(&self) -> watch::Receiver<Reachability> {
        self.inner.status.subscribe()
    }

    fn mark_healthy(&self) {
        if !self.inner.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!("redis connected");
        }
        self.inner.status.send_if_modified(|s| {
            let changed = *s != Reachability::Connected;
            *s = Reachability::Connected;
            changed
        });
    }

    fn mark_unhealthy(&self, e: &StoreError) {
        if self.inner.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %e, "redis unreachable; falling back per outage mode");
        }
        let reason = e.to_string();
        self.inner.status.send_if_modified(|s| match s {
            Reachability::Disconnected { reason: r } if *r == reason => false,
            _ => {
                *s = Reachability::Disconnected { reason };
                true
            }
        });
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e.to_string())),
            Err(_) => Err(StoreError::Timeout(self.inner.timeout)),
        }
    }

    /// Runs one call: refused at once while unreachable, bounded by the timeout, and a
    /// connection-level failure marks the store unreachable.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_healthy() {
            return Err(StoreError::Unreachable(
                match &*self.inner.status.borrow() {
                    Reachability::Disconnected { reason } => reason.clone(),
                    other => format!("{other:?}"),
                },
            ));
        }
        let conn = self.inner.conn.clone();
        let result = match tokio::time::timeout(self.inner.timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let connection_level = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                    || e.is_timeout();
                let err = StoreError::Redis(e.to_string());
                if connection_level {
                    self.mark_unhealthy(&err);
                }
                Err(err)
            }
            Err(_) => {
                let err = StoreError::Timeout(self.inner.timeout);
                self.mark_unhealthy(&err);
                Err(err)
            }
        };
        if result.is_err() {
            metrics::counter!("outpost_redis_errors_total", "op" => op).increment(1);
        }
        result
    }
}

/// ±20 % so that the nodes of a site do not probe in lockstep.
fn jitter(d: Duration) -> Duration {
    let f = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(f)
}

fn int(v: &[i64], i: usize) -> Result<i64, StoreError> {
    v.get(i)
        .copied()
        .ok_or_else(|| StoreError::Protocol(format!("script reply too short: {v:?}")))
}

impl CounterStore for RedisStore {
    async fn hit(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        increment: u64,
    ) -> Result<RateState, StoreError> {
        let (slot_ms, slots) = slot_geometry(window);
        let inner = self.inner.clone();
        let k = key.to_owned();
        let reply: Vec<i64> = self
            .call("hit", move |mut conn| async move {
                inner
                    .sliding
                    .key(k)
                    .arg(limit)
                    .arg(slot_ms)
                    .arg(slots)
                    .arg(increment)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let allowed = int(&reply, 0)? == 1;
        Ok(RateState {
            allowed,
            remaining: int(&reply, 1)?.max(0) as u64,
            retry_after: Duration::from_millis(int(&reply, 2)?.max(0) as u64),
            ticket: Ticket {
                key: key.to_owned(),
                window,
                slot: int(&reply, 3)?,
                amount: if allowed { increment } else { 0 },
            },
        })
    }

    async fn refund(&self, ticket: &Ticket) -> Result<(), StoreError> {
        if ticket.amount == 0 {
            return Ok(());
        }
        let inner = self.inner.clone();
        let (k, slot, amount) = (ticket.key.clone(), ticket.slot, ticket.amount);
        self.call("refund", move |mut conn| async move {
            inner
                .refund
                .key(k)
                .arg(slot)
                .arg(amount)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    async fn quota(
        &self,
        key: &str,
        period: Duration,
        limits: QuotaLimits,
        delta: QuotaDelta,
    ) -> Result<QuotaState, StoreError> {
        let inner = self.inner.clone();
        let k = key.to_owned();
        let limit = |l: Option<u64>| l.map_or(-1, |v| v.min(i64::MAX as u64) as i64);
        let reply: Vec<i64> = self
            .call("quota", move |mut conn| async move {
                inner
                    .quota
                    .key(k)
                    .arg(period.as_secs().max(1))
                    .arg(limit(limits.calls))
                    .arg(limit(limits.bytes))
                    .arg(delta.calls)
                    .arg(delta.bytes)
                    .arg(u8::from(delta.enforce))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(QuotaState {
            allowed: int(&reply, 0)? == 1,
            calls: int(&reply, 1)?.max(0) as u64,
            bytes: int(&reply, 2)?.max(0) as u64,
            resets_in: Duration::from_secs(int(&reply, 3)?.max(0) as u64),
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let k = key.to_owned();
        let v: Option<Vec<u8>> = self
            .call("get", move |mut conn| async move { conn.get(k).await })
            .await?;
        Ok(v.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let k = key.to_owned();
        let ms = ttl.as_millis().max(1) as u64;
        self.call("set", move |mut conn| async move {
            conn.pset_ex::<_, _, ()>(k, value.as_ref(), ms).await
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let k = key.to_owned();
        self.call("delete", move |mut conn| async move {
            conn.del::<_, ()>(k).await
        })
        .await
    }
}
