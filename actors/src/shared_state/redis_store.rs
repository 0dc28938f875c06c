//! The Redis store: counters shared by every node of a site, at most one round trip per
//! operation (concurrent rate-limit and quota checks of one counter share one: `batch.rs`).
//!
//! **One multiplexed connection per thread** that uses the store (each traffic worker, plus the
//! gateway's main thread for the probe and the cache actor), each a redis-rs
//! [`ConnectionManager`] created lazily on first use and kept in a thread-local. redis-rs drives
//! a connection's socket from a task spawned on the Tokio runtime that first connects (or
//! reconnects) it. With one connection for the whole process, that task lived on the gateway's
//! main thread, and every check crossed threads twice (worker → main thread → worker: about
//! 0.9 context switches and +17 µs of CPU per request in `bench/proxy.sh`). With one connection
//! per worker, created and reconnected on the worker's own runtime, a check never leaves the
//! worker's thread; concurrent requests of one worker still share its socket and their writes
//! are pipelined. Semantics do not change: every operation is still one atomic script or
//! command, one round trip, against the same Redis.
//!
//! Reachability stays one state per store, shared by all threads. Every call is bounded by
//! `timeout`. A failed call on any thread marks the store *unreachable*: later calls on every
//! thread fail at once (no timeout paid per request) until the probe succeeds again. The probe
//! (every `probe_interval`) sends `PING` on **every** thread's connection, each on its own
//! thread's runtime (so that a reconnect it triggers also lands on that thread), and marks the
//! store reachable only when all of them answer: after an outage, no worker is left with a dead
//! connection once the store says `Connected`. Counting scripts run with `EVALSHA` (falling
//! back to `EVAL` on `NOSCRIPT`, e.g. after a Redis restart) and read the time from Redis, so
//! node clocks do not matter.
//!
//! **Redis Cluster** (`RedisConfig::cluster`): one `ClusterConnection` for the process instead
//! of a connection per thread (it multiplexes over one connection per primary and routes each
//! command by its key); built at start or, if the cluster is not reachable then, by the probe.
//!
//! **Redis Sentinel** (`RedisConfig::sentinel_service`): connections per thread as for one
//! server, to the primary a sentinel names; the probe asks again each time, and a new primary
//! starts a new generation of connections (see `refresh_topology`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncCommands, Script};
use redis::{
    ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, TlsCertificates,
    TlsMode,
};
use tokio::sync::watch;

use super::batch::{
    BatchKey, BatchReply, Batches, Lease, QuotaBatchKey, QuotaBatchReply, Taken, ThreadBatches,
    Unused,
};
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
    /// Redis Cluster: `url` lists seed nodes, separated by commas.
    pub cluster: bool,
    /// Redis Sentinel: the monitored service (primary) name; `url` lists the sentinels,
    /// separated by commas.
    pub sentinel_service: Option<String>,
    /// Redis Sentinel: credentials of the sentinels themselves (`requirepass` in
    /// `sentinel.conf`); the URLs' user and password are the primary's.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// CA and client certificate for `rediss://` (every mode: the server, cluster nodes,
    /// sentinels and the primary they name).
    pub tls: RedisTls,
}

/// TLS material for `rediss://` connections, PEM. Without a CA the system's roots are used;
/// with one, only that CA (a private CA is the usual case on-prem).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and its key, for servers with `tls-auth-clients yes` (mutual TLS).
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
}

impl RedisTls {
    /// `None` when nothing is configured: redis-rs then verifies with the system's roots.
    fn certificates(&self) -> Option<TlsCertificates> {
        let client_tls = match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            _ => None,
        };
        (client_tls.is_some() || self.ca_pem.is_some()).then(|| TlsCertificates {
            client_tls,
            root_cert: self.ca_pem.clone(),
        })
    }
}

impl std::fmt::Debug for RedisTls {
    // A private key never goes to a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client_cert_pem.is_some())
            .field(
                "client_key",
                &self.client_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl RedisConfig {
    pub fn new(url: impl Into<String>, timeout: Duration) -> Self {
        Self {
            url: url.into(),
            timeout,
            probe_interval: PROBE_INTERVAL,
            cluster: false,
            sentinel_service: None,
            sentinel_username: None,
            sentinel_password: None,
            tls: RedisTls::default(),
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

/// Where the store's connections come from.
enum Backend {
    /// One server: a connection per thread, each made lazily on that thread's runtime.
    Single {
        client: redis::Client,
        manager_config: ConnectionManagerConfig,
    },
    /// Redis Cluster: one cluster connection for the process, shared by every thread (it
    /// multiplexes over a connection per primary), made once the cluster answers.
    Cluster {
        client: ClusterClient,
        conn: Mutex<Option<ClusterConnection>>,
    },
    /// Redis Sentinel: a connection per thread, as for one server, to the primary the
    /// sentinels name. The probe asks them again every time; when the primary changes (a
    /// failover), the generation goes up and every thread reconnects on its next call.
    Sentinel {
        sentinel: Box<tokio::sync::Mutex<SentinelClient>>,
        manager_config: ConnectionManagerConfig,
        /// The current primary and its generation (1, 2, …); `None` until a sentinel answered.
        primary: Mutex<Option<(u64, redis::Client)>>,
    },
}

/// One thread's handle on Redis: its own connection to a single server, or the process's
/// cluster connection. Commands and scripts run on either alike.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// Every thread's connection, with the runtime that drives it: what the probe pings.
    connections: Mutex<Vec<Registered>>,
    /// Bound of the background connect of [`RedisStore::prepare_thread`].
    connect_timeout: Duration,
    timeout: Duration,
    healthy: AtomicBool,
    /// An outage warning was logged and Redis has not answered since. Separate from
    /// `healthy`, which starts false: a Redis that is unreachable from the very start must be
    /// reported too, not only one that was lost.
    outage_logged: AtomicBool,
    /// `config.url` without passwords, for log lines.
    url: String,
    status: watch::Sender<Reachability>,
    /// Nodes of the site (`redis.nodes`), for the lease spread.
    nodes: AtomicU64,
    sliding: Script,
    refund: Script,
    quota: Script,
}

/// One thread's connection, as the probe sees it.
struct Registered {
    id: u64,
    /// The runtime of the thread that created the connection (and drives its socket).
    runtime: tokio::runtime::Handle,
    conn: Conn,
    /// Sentinel: the primary's generation it was made for (0 otherwise).
    generation: u64,
}

/// One thread's connection to one store, in [`CONNECTIONS`].
struct ThreadConnection {
    /// Which store (compared by address; the `Weak` keeps the address from being reused).
    store: Weak<Inner>,
    conn: Conn,
    generation: u64,
    /// Checks waiting for this connection's next call (see `batch.rs`).
    batches: Arc<ThreadBatches>,
}

thread_local! {
    /// This thread's connections, one per store used on the thread (in the gateway: one).
    static CONNECTIONS: RefCell<Vec<ThreadConnection>> = const { RefCell::new(Vec::new()) };
}

/// Ids of [`Registered`] connections, to forget the ones whose runtime has shut down.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// How long the probe waits for a thread to run its `PING`, beyond the call timeout.
const PROBE_GRACE: Duration = Duration::from_secs(1);

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.inner.timeout)
            .field("status", &*self.inner.status.borrow())
            .finish()
    }
}

impl RedisStore {
    /// Builds the store, connects this thread and starts the probe task on the current Tokio
    /// runtime. Does not fail when Redis is down: the store starts disconnected and connects
    /// when Redis comes up. Fails only on an invalid URL.
    pub async fn connect(config: RedisConfig) -> Result<RedisStore, StoreError> {
        let connect_timeout = config.timeout.max(Duration::from_millis(500));
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(config.probe_interval);
        let backend = if let Some(service) = &config.sentinel_service {
            Backend::Sentinel {
                sentinel: Box::new(tokio::sync::Mutex::new(sentinel_client(&config, service)?)),
                manager_config,
                primary: Mutex::new(None),
            }
        } else if config.cluster {
            let seeds: Vec<&str> = config.url.split(',').map(str::trim).collect();
            let mut builder = ClusterClient::builder(seeds)
                .connection_timeout(connect_timeout)
                .tcp_settings(tcp_settings())
                .retries(1);
            if let Some(certs) = config.tls.certificates() {
                builder = builder.certs(certs);
            }
            let client = builder
                .build()
                .map_err(|e| StoreError::Redis(format!("invalid redis cluster url: {e}")))?;
            Backend::Cluster {
                client,
                conn: Mutex::new(None),
            }
        } else {
            let invalid =
                |e: redis::RedisError| StoreError::Redis(format!("invalid redis url: {e}"));
            let info = config
                .url
                .as_str()
                .into_connection_info()
                .map_err(invalid)?
                .set_tcp_settings(tcp_settings());
            let client = match config.tls.certificates() {
                Some(certs) => redis::Client::build_with_tls(info, certs),
                None => redis::Client::open(info),
            }
            .map_err(invalid)?;
            Backend::Single {
                client,
                manager_config,
            }
        };
        let (status, _) = watch::channel(Reachability::Disconnected {
            reason: "not connected yet".into(),
        });
        let store = RedisStore {
            inner: Arc::new(Inner {
                backend,
                connections: Mutex::new(Vec::new()),
                connect_timeout,
                timeout: config.timeout,
                healthy: AtomicBool::new(false),
                outage_logged: AtomicBool::new(false),
                url: redacted_url(&config.url),
                status,
                nodes: AtomicU64::new(1),
                sliding: Script::new(include_str!("scripts/sliding_window.lua")),
                refund: Script::new(include_str!("scripts/refund.lua")),
                quota: Script::new(include_str!("scripts/quota.lua")),
            }),
        };
        if let Backend::Single { .. } = store.inner.backend {
            // Configuration errors surface here rather than on the first call.
            store.conn()?;
        }
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

    /// This thread's connection, created (lazily: it connects on first use) on the current
    /// Tokio runtime when the thread has none yet. Call only inside a Tokio runtime.
    fn conn(&self) -> Result<Conn, StoreError> {
        self.thread_connection().map(|(conn, _)| conn)
    }

    /// This thread's connection and its queue of waiting rate-limit checks.
    fn thread_connection(&self) -> Result<(Conn, Arc<ThreadBatches>), StoreError> {
        let me = Arc::as_ptr(&self.inner);
        let generation = self.generation()?;
        CONNECTIONS.with_borrow_mut(|list| {
            let mine = list.iter().position(|c| std::ptr::eq(c.store.as_ptr(), me));
            if let Some(i) = mine
                && list[i].generation == generation
            {
                return Ok((list[i].conn.clone(), list[i].batches.clone()));
            }
            let conn = self.new_connection()?;
            self.inner
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Registered {
                    id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
                    runtime: tokio::runtime::Handle::current(),
                    conn: conn.clone(),
                    generation,
                });
            if let Some(i) = mine {
                // A new primary (Sentinel): the same queues, a connection to the new primary.
                list[i].conn = conn.clone();
                list[i].generation = generation;
                return Ok((conn, list[i].batches.clone()));
            }
            // Forget the connections of stores that are gone (tests, gateway restarts).
            list.retain(|c| c.store.strong_count() > 0);
            let batches = Arc::new(ThreadBatches::default());
            list.push(ThreadConnection {
                store: Arc::downgrade(&self.inner),
                conn: conn.clone(),
                generation,
                batches: batches.clone(),
            });
            Ok((conn, batches))
        })
    }

    /// Sentinel: the current primary's generation (an error while none is known); else 0.
    fn generation(&self) -> Result<u64, StoreError> {
        match &self.inner.backend {
            Backend::Sentinel { primary, .. } => primary
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|(g, _)| *g)
                .ok_or_else(|| StoreError::Unreachable("no redis primary known yet".into())),
            _ => Ok(0),
        }
    }

    /// A connection for the calling thread: lazy (it connects on first use) for one server
    /// or a Sentinel's primary; the process's connection for a cluster.
    fn new_connection(&self) -> Result<Conn, StoreError> {
        let lazy = |client: &redis::Client, config: &ConnectionManagerConfig| {
            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                .map(Conn::Single)
                .map_err(|e| StoreError::Redis(e.to_string()))
        };
        match &self.inner.backend {
            Backend::Single {
                client,
                manager_config,
            } => lazy(client, manager_config),
            Backend::Sentinel {
                primary,
                manager_config,
                ..
            } => {
                let primary = primary.lock().unwrap_or_else(|e| e.into_inner());
                match primary.as_ref() {
                    Some((_, client)) => lazy(client, manager_config),
                    None => Err(StoreError::Unreachable("no redis primary known yet".into())),
                }
            }
            Backend::Cluster { conn, .. } => conn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .map(Conn::Cluster)
                .ok_or_else(|| StoreError::Unreachable("redis cluster not connected yet".into())),
        }
    }

    /// Gives the calling thread its own connection now and starts connecting it in the
    /// background, so the first request on a traffic worker does not pay the TCP (and TLS)
    /// handshake. Called from the traffic app factory, which runs on each worker's thread.
    /// Optional (without it, a thread's first call creates the connection and waits for the
    /// handshake) and idempotent; does nothing outside a Tokio runtime.
    pub fn prepare_thread(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let Ok(conn) = self.conn() else { return };
        let bound = self.inner.connect_timeout;
        // Neither outcome changes reachability: the probe decides that.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(bound, ping(conn)).await;
        });
    }

    /// `PING` every thread's connection, each on its own thread, and record the outcome:
    /// reachable only when all of them answer within the timeout.
    pub async fn probe(&self) -> bool {
        if let Err(e) = self.refresh_topology().await {
            self.mark_unhealthy(&e);
            return false;
        }
        // The calling thread's connection too, so that there is always one to ping.
        if let Err(e) = self.conn() {
            self.mark_unhealthy(&e);
            return false;
        }
        let generation = self.generation().unwrap_or(0);
        let targets: Vec<(u64, tokio::runtime::Handle, Conn)> = {
            let mut registered = self
                .inner
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Connections to a former primary (Sentinel) are not this store's any more.
            registered.retain(|r| r.generation == generation);
            registered
                .iter()
                .map(|r| (r.id, r.runtime.clone(), r.conn.clone()))
                .collect()
        };
        let timeout = self.inner.timeout;
        let pings = targets.into_iter().map(|(id, runtime, conn)| async move {
            // Spawned on the connection's own runtime: a reconnect that the PING triggers
            // spawns the new socket's task there, not on the probe's thread.
            let task = runtime.spawn(async move {
                match tokio::time::timeout(timeout, ping(conn)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(StoreError::Redis(e.to_string())),
                    Err(_) => Err(StoreError::Timeout(timeout)),
                }
            });
            let outcome = match tokio::time::timeout(timeout + PROBE_GRACE, task).await {
                Ok(Ok(result)) => Some(result),
                // That runtime has shut down (its thread is gone): not a Redis problem.
                Ok(Err(_)) => None,
                Err(_) => Some(Err(StoreError::Timeout(timeout))),
            };
            (id, outcome)
        });
        let mut failure = None;
        let mut gone = Vec::new();
        for (id, outcome) in futures_util::future::join_all(pings).await {
            match outcome {
                None => gone.push(id),
                Some(Err(e)) => failure = failure.or(Some(e)),
                Some(Ok(())) => {}
            }
        }
        if !gone.is_empty() {
            self.inner
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|r| !gone.contains(&r.id));
        }
        match failure {
            None => {
                self.mark_healthy();
                true
            }
            Some(e) => {
                self.mark_unhealthy(&e);
                false
            }
        }
    }

    /// What the probe does before its `PING`s. Cluster: makes the process's cluster
    /// connection when there is none yet (at start, and while the cluster could not be
    /// reached); it discovers the slots from the seeds, keeps a connection to every primary
    /// and follows topology changes by itself. Sentinel: asks the sentinels for the primary
    /// and, when it changed, moves to the next generation. One server: nothing.
    async fn refresh_topology(&self) -> Result<(), StoreError> {
        let bound = self.inner.connect_timeout;
        match &self.inner.backend {
            Backend::Single { .. } => Ok(()),
            Backend::Cluster { client, conn } => {
                if conn.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    return Ok(());
                }
                let made = match tokio::time::timeout(bound, client.get_async_connection()).await {
                    Ok(Ok(made)) => made,
                    Ok(Err(e)) => return Err(StoreError::Redis(format!("redis cluster: {e}"))),
                    Err(_) => return Err(StoreError::Timeout(bound)),
                };
                *conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(made);
                Ok(())
            }
            Backend::Sentinel {
                sentinel, primary, ..
            } => {
                let named = {
                    let mut sentinel = sentinel.lock().await;
                    match tokio::time::timeout(bound, sentinel.async_get_client()).await {
                        Ok(Ok(client)) => client,
                        Ok(Err(e)) => {
                            return Err(StoreError::Redis(format!("redis sentinel: {e}")));
                        }
                        Err(_) => return Err(StoreError::Timeout(bound)),
                    }
                };
                let mut primary = primary.lock().unwrap_or_else(|e| e.into_inner());
                let addr = named.get_connection_info().addr().clone();
                let known = primary
                    .as_ref()
                    .is_some_and(|(_, c)| *c.get_connection_info().addr() == addr);
                if !known {
                    let generation = primary.as_ref().map_or(1, |(g, _)| g + 1);
                    tracing::info!(%addr, generation, "redis primary named by sentinel");
                    *primary = Some((generation, named));
                }
                Ok(())
            }
        }
    }

    /// Whether the sockets this store opens to a server (one server, or the Sentinel's
    /// primary once known) have `TCP_NODELAY`; `None` for a cluster, whose client does not say.
    #[cfg(test)]
    pub(crate) fn tcp_nodelay(&self) -> Option<bool> {
        let client = match &self.inner.backend {
            Backend::Single { client, .. } => client.clone(),
            Backend::Sentinel { primary, .. } => primary
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()?
                .1
                .clone(),
            Backend::Cluster { .. } => return None,
        };
        Some(client.get_connection_info().tcp_settings().nodelay())
    }

    /// How many threads have a connection registered for the probe.
    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
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
        self.inner.outage_logged.store(false, Ordering::Release);
        if !self.inner.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!(url = %self.inner.url, "redis connected");
        }
        self.inner.status.send_if_modified(|s| {
            let changed = *s != Reachability::Connected;
            *s = Reachability::Connected;
            changed
        });
    }

    fn mark_unhealthy(&self, e: &StoreError) {
        self.inner.healthy.store(false, Ordering::Release);
        if !self.inner.outage_logged.swap(true, Ordering::AcqRel) {
            // The operator's question is "which Redis, and what now": name it (a password
            // never goes to a log line) and say what the site loses meanwhile.
            tracing::warn!(
                error = %e,
                "redis at {} is unreachable; rate limits and quotas are counted per node until \
                 Redis is reachable (each policy's outage mode decides how; local by default)",
                self.inner.url
            );
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

    /// Runs one call: refused at once while unreachable, bounded by the timeout, and a
    /// connection-level failure marks the store unreachable.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_healthy() {
            return Err(self.unreachable());
        }
        // The thread's connection of the moment: a coalescing driver that runs as long as
        // checks keep coming follows a new primary (Sentinel failover) like everything else.
        let conn = match self.conn() {
            Ok(conn) => conn,
            Err(e) => {
                metrics::counter!("outpost_redis_errors_total", "op" => op).increment(1);
                return Err(e);
            }
        };
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

    /// Queues a check on this thread's queue for its counter (see `batch.rs`); the first check
    /// of a counter with no call in flight spawns the counter's driver, which answers with
    /// `decide(store, counter, count)`.
    ///
    /// No timer of its own: the driver answers every check it takes, and its calls are bounded
    /// by the timeout, so a check waits at most for the call in flight when it arrived plus
    /// its own. A driver dropped with its runtime drops the reply: the check fails.
    async fn coalesced<K, T, D, Fut>(
        &self,
        queue: fn(&ThreadBatches) -> &Batches<K, T>,
        key: K,
        decide: D,
    ) -> Result<T, StoreError>
    where
        K: Clone + Eq + std::hash::Hash + Send + Sync + 'static,
        T: Send + 'static,
        D: Fn(RedisStore, Arc<ThreadBatches>, K, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<T>, StoreError>> + Send,
    {
        if !self.is_healthy() {
            return Err(self.unreachable());
        }
        let (_, batches) = self.thread_connection()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        if let Some(key) = queue(&batches).enqueue(key, reply) {
            let store = self.clone();
            tokio::spawn(async move {
                let decide = &decide;
                queue(&batches)
                    .serve(&key, |count| {
                        decide(store.clone(), batches.clone(), key.clone(), count)
                    })
                    .await;
            });
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Redis("check abandoned".into())))
    }

    /// Sliding-window check of `key` with a local budget of `budget` checks (0: none, the
    /// plain [`CounterStore::hit`]). With a budget, this thread first admits from its lease of
    /// the counter, without a round trip; once that is spent or its slot is over, the check goes
    /// to Redis as usual (coalesced), and the call also leases up to `budget` checks for the
    /// next ones (`docs/rate-limiting.md`, "Local budgets").
    pub async fn hit_with_budget(
        &self,
        key: String,
        limit: u64,
        window: Duration,
        increment: u64,
        budget: u64,
    ) -> Result<RateState, StoreError> {
        let key = BatchKey {
            key,
            limit,
            window,
            increment,
            budget,
        };
        if budget > 0 {
            // During an outage a lease is not used either: the outage mode decides, as for any
            // check (its units stay counted in Redis, erring on the strict side).
            if !self.is_healthy() {
                return Err(self.unreachable());
            }
            let (_, batches) = self.thread_connection()?;
            match batches.leases.take(&key, Instant::now()) {
                Taken::Admitted(state, refill_now) => {
                    if refill_now {
                        tokio::spawn(refill(self.clone(), batches, key));
                    }
                    return Ok(state);
                }
                Taken::Empty(Some(unused)) => {
                    let store = self.clone();
                    let key = key.clone();
                    tokio::spawn(async move { store.give_back(&key, unused).await });
                }
                Taken::Empty(None) => {}
            }
        }
        self.coalesced(
            |b| &b.rate,
            key,
            |store, batches, key, count| async move {
                sliding_call(&store, &batches, &key, count).await
            },
        )
        .await
    }

    /// The site's node count (`redis.nodes`): every traffic thread of every node may hold a
    /// lease, so it sizes the script's `spread`.
    pub fn set_nodes(&self, nodes: u64) {
        self.inner.nodes.store(nodes.max(1), Ordering::Relaxed);
    }

    /// How many holders may share what is left of a counter: nodes × this node's threads
    /// with a connection (a lease takes at most 1 / spread of what still fits). Asked once
    /// per lease, not per check, so the lock is rare.
    fn lease_spread(&self) -> u64 {
        let threads = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            .max(1) as u64;
        self.inner.nodes.load(Ordering::Relaxed).max(1) * threads
    }

    /// Holds the lease a call brought, and gives back its unused checks once its slot is
    /// over (unless a check of the counter has done it first).
    fn hold_lease(&self, batches: &Arc<ThreadBatches>, key: &BatchKey, reply: &LeaseReply) {
        let (sent, reply) = (reply.sent, reply.batch);
        metrics::counter!("outpost_redis_ratelimit_leased_total").increment(reply.leased);
        let expires = sent + reply.slot_left;
        let lease = Lease {
            left: reply.leased,
            slot: reply.slot,
            expires,
            remaining: reply.remaining,
        };
        let replaced = batches.leases.grant(key, lease);
        let store = self.clone();
        let batches = batches.clone();
        let key = key.clone();
        tokio::spawn(async move {
            if let Some(unused) = replaced {
                store.give_back(&key, unused).await;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(expires)).await;
            if let Some(unused) = batches.leases.expire(&key, reply.slot, Instant::now()) {
                store.give_back(&key, unused).await;
            }
        });
    }

    /// Returns leased checks that were not used to Redis (`refund.lua` on their slot). When
    /// that fails they stay counted until their slot leaves the window: the strict side.
    async fn give_back(&self, key: &BatchKey, unused: Unused) {
        metrics::counter!("outpost_redis_ratelimit_lease_returned_total").increment(unused.checks);
        let ticket = Ticket {
            key: key.key.clone(),
            window: key.window,
            slot: unused.slot,
            amount: unused.checks.saturating_mul(key.increment),
        };
        let _ = CounterStore::refund(self, &ticket).await;
    }

    fn unreachable(&self) -> StoreError {
        StoreError::Unreachable(match &*self.inner.status.borrow() {
            Reachability::Disconnected { reason } => reason.clone(),
            other => format!("{other:?}"),
        })
    }
}

/// A Redis URL (or comma-separated URLs: cluster seeds, sentinels) with every password
/// replaced by `***`: the one in the user info (`redis://user:secret@host`) and a `password=`
/// / `pass=` query parameter (`redis+unix:///run/redis.sock?pass=secret`).
pub fn redacted_url(urls: &str) -> String {
    fn one(url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***@{host}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some((k, _)) if matches!(k, "password" | "pass") => format!("{k}=***"),
                        _ => kv.to_owned(),
                    })
                    .collect();
                format!("{path}?{}", query.join("&"))
            }
            None => tail.to_owned(),
        };
        if scheme.is_empty() {
            format!("{authority}{tail}")
        } else {
            format!("{scheme}://{authority}{tail}")
        }
    }
    urls.split(',')
        .map(|u| one(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

/// One `sliding_window.lua` call deciding `count` checks of a counter, split between them.
///
/// With a local budget (`key.budget > 0`) the checks that can be admitted from this thread's
/// lease are (they queued while the call bringing it was in flight); the call decides the
/// others and, when the lease is running low, asks for a new one.
async fn sliding_call(
    store: &RedisStore,
    batches: &Arc<ThreadBatches>,
    key: &BatchKey,
    count: usize,
) -> Result<Vec<RateState>, StoreError> {
    let mut answers = Vec::new();
    let mut count = count;
    let mut want = 0;
    if key.budget > 0 {
        let now = Instant::now();
        answers = batches.leases.take_up_to(key, count, now);
        count -= answers.len();
        if count == 0 {
            return Ok(answers);
        }
        // Top up to the budget when half of it is gone.
        let left = batches.leases.left(key, now);
        if left < key.budget.div_ceil(2) {
            want = key.budget - left;
        }
    }
    let reply = sliding_script(store, key, count, want).await?;
    if reply.batch.leased > 0 {
        store.hold_lease(batches, key, &reply);
    }
    answers.extend(super::batch::split(reply.batch, count, key));
    Ok(answers)
}

/// Leases up to `key.budget` more checks ahead of need (a check found its lease half spent):
/// the script decides no check, only the lease.
async fn refill(store: RedisStore, batches: Arc<ThreadBatches>, key: BatchKey) {
    let want = key.budget - batches.leases.left(&key, Instant::now()).min(key.budget);
    if want == 0 {
        return;
    }
    if let Ok(reply) = sliding_script(&store, &key, 0, want).await
        && reply.batch.leased > 0
    {
        store.hold_lease(&batches, &key, &reply);
    }
}

/// A script reply, and when its call was sent.
struct LeaseReply {
    batch: BatchReply,
    sent: Instant,
}

/// One `sliding_window.lua` call: `count` checks of `key`, and a lease of up to `want` more.
async fn sliding_script(
    store: &RedisStore,
    key: &BatchKey,
    count: usize,
    want: u64,
) -> Result<LeaseReply, StoreError> {
    metrics::counter!("outpost_redis_ratelimit_calls_total").increment(1);
    metrics::counter!("outpost_redis_ratelimit_checks_total").increment(count as u64);
    let (slot_ms, slots) = slot_geometry(key.window);
    let spread = if want > 0 { store.lease_spread() } else { 1 };
    let inner = store.inner.clone();
    let (k, limit, increment) = (key.key.clone(), key.limit, key.increment);
    // Before the call is sent, so no later than Redis' own clock when it runs the script: a
    // lease never outlives its slot.
    let sent = Instant::now();
    let r: Vec<i64> = store
        .call("hit", move |mut conn| async move {
            let mut invocation = inner.sliding.key(k);
            invocation
                .arg(limit)
                .arg(slot_ms)
                .arg(slots)
                .arg(increment)
                .arg(count);
            if want > 0 {
                invocation.arg(want).arg(spread);
            }
            invocation.invoke_async(&mut conn).await
        })
        .await?;
    Ok(LeaseReply {
        batch: BatchReply {
            granted: int(&r, 0)?.max(0) as u64,
            remaining: int(&r, 1)?.max(0) as u64,
            retry_after: Duration::from_millis(int(&r, 2)?.max(0) as u64),
            slot: int(&r, 3)?,
            leased: r.get(4).copied().unwrap_or(0).max(0) as u64,
            slot_left: Duration::from_millis(r.get(5).copied().unwrap_or(0).max(0) as u64),
        },
        sent,
    })
}

/// One `quota.lua` call applying `delta` up to `count` times.
async fn quota_call(
    store: &RedisStore,
    key: String,
    period: Duration,
    limits: QuotaLimits,
    delta: QuotaDelta,
    count: usize,
) -> Result<QuotaBatchReply, StoreError> {
    let inner = store.inner.clone();
    let limit = |l: Option<u64>| l.map_or(-1, |v| v.min(i64::MAX as u64) as i64);
    let reply: Vec<i64> = store
        .call("quota", move |mut conn| async move {
            inner
                .quota
                .key(key)
                .arg(period.as_secs().max(1))
                .arg(limit(limits.calls))
                .arg(limit(limits.bytes))
                .arg(delta.calls)
                .arg(delta.bytes)
                .arg(u8::from(delta.enforce))
                .arg(count)
                .invoke_async(&mut conn)
                .await
        })
        .await?;
    Ok(QuotaBatchReply {
        granted: int(&reply, 0)?.max(0) as u64,
        calls: int(&reply, 1)?.max(0) as u64,
        bytes: int(&reply, 2)?.max(0) as u64,
        resets_in: Duration::from_secs(int(&reply, 3)?.max(0) as u64),
    })
}

/// A Sentinel client for `service` from the comma-separated sentinel URLs. The first URL's
/// user, password and database are for the primary; the sentinels get
/// `sentinel_username`/`sentinel_password`. `rediss://` sentinels mean TLS to the sentinels and
/// to the primary alike, with the same CA and client certificate.
fn sentinel_client(config: &RedisConfig, service: &str) -> Result<SentinelClient, StoreError> {
    let invalid = |e: redis::RedisError| StoreError::Redis(format!("invalid redis url: {e}"));
    let mut sentinels = Vec::new();
    let mut primary = None;
    for url in config.url.split(',').map(str::trim) {
        let info = url.into_connection_info().map_err(invalid)?;
        primary.get_or_insert_with(|| info.redis_settings().clone());
        sentinels.push(info.addr().clone());
    }
    let tls = sentinels
        .iter()
        .filter(|a| matches!(a, ConnectionAddr::TcpTls { .. }))
        .count();
    if tls != 0 && tls != sentinels.len() {
        return Err(StoreError::Redis(
            "invalid redis url: the sentinels are all redis:// or all rediss://".into(),
        ));
    }
    let primary: RedisConnectionInfo = primary.unwrap_or_default();
    let mut b = SentinelClientBuilder::new(sentinels, service, SentinelServerType::Master)
        .map_err(invalid)?
        .set_client_to_redis_db(primary.db())
        .set_client_to_redis_tcp_settings(tcp_settings())
        .set_client_to_sentinel_tcp_settings(tcp_settings());
    if let Some(user) = primary.username() {
        b = b.set_client_to_redis_username(user);
    }
    if let Some(password) = primary.password() {
        b = b.set_client_to_redis_password(password);
    }
    if let Some(user) = &config.sentinel_username {
        b = b.set_client_to_sentinel_username(user);
    }
    if let Some(password) = &config.sentinel_password {
        b = b.set_client_to_sentinel_password(password);
    }
    if tls != 0 {
        b = b.set_client_to_redis_tls_mode(TlsMode::Secure);
        if let Some(certs) = config.tls.certificates() {
            b = b
                .set_client_to_sentinel_certificates(certs.clone())
                .set_client_to_redis_certificates(certs);
        }
    }
    b.build()
        .map_err(|e| StoreError::Redis(format!("redis sentinel: {e}")))
}

/// `TCP_NODELAY` on every Redis socket (redis-rs leaves Nagle on by default). Calls of
/// different counters, quota admissions, cache reads and probes share a worker's connection:
/// with Nagle, a call written while another one's bytes are unacknowledged waits for that ACK
/// instead of leaving at once.
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

async fn ping(mut conn: Conn) -> redis::RedisResult<()> {
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(drop)
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
    /// Coalesced with the concurrent checks of the same counter on this thread (see
    /// `batch.rs`): at most one call in flight per counter and thread, the checks that arrive
    /// meanwhile go together in the next one.
    async fn hit(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        increment: u64,
    ) -> Result<RateState, StoreError> {
        self.hit_with_budget(key.to_owned(), limit, window, increment, 0)
            .await
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

    /// Admissions (`delta.enforce`) are coalesced like rate-limit checks; the records made
    /// after a response are sent alone.
    async fn quota(
        &self,
        key: &str,
        period: Duration,
        limits: QuotaLimits,
        delta: QuotaDelta,
    ) -> Result<QuotaState, StoreError> {
        if !delta.enforce {
            let reply = quota_call(self, key.to_owned(), period, limits, delta, 1).await?;
            return Ok(super::batch::split_quota(reply, 1, delta).remove(0));
        }
        let key = QuotaBatchKey {
            key: key.to_owned(),
            period,
            limits,
            delta,
        };
        self.coalesced(
            |b| &b.quota,
            key,
            |store, _, key, count| async move {
                let reply = quota_call(
                    &store,
                    key.key.clone(),
                    key.period,
                    key.limits,
                    key.delta,
                    count,
                )
                .await?;
                Ok(super::batch::split_quota(reply, count, key.delta))
            },
        )
        .await
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

#[cfg(test)]
mod redaction_tests {
    use super::redacted_url;

    #[test]
    fn passwords_never_reach_a_log_line() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:s3cret@redis:6379", "redis://:***@redis:6379"),
            (
                "rediss://app:s3cret@redis:6380/2",
                "rediss://app:***@redis:6380/2",
            ),
            ("redis://app@redis", "redis://app@redis"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=s3cret",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "redis://:a@s1:26379/0, redis://:b@s2:26379",
                "redis://:***@s1:26379/0,redis://:***@s2:26379",
            ),
        ] {
            assert_eq!(redacted_url(url), shown);
        }
    }
}
