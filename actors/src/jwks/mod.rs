//! Key sources of `validate-jwt`: JSON Web Key Sets (`jwks-url`) and OpenID Connect discovery
//! documents (`openid-config-url`, whose `jwks_uri` is followed).
//!
//! Not an actor: a [`JwksRegistry`] hands out one shared [`KeySource`] per (location, refresh
//! interval), and starts one background task per source on the gateway's main arbiter — not per
//! worker, not per request. The task fetches at once, then every interval (sooner after a
//! failure), and when a request meets a `kid` it does not know (at most once per
//! [`state::MIN_REFRESH_GAP`]). Each successful fetch replaces the source's [`KeySet`] whole in
//! an `ArcSwap`; a failed one keeps the last keys, so tokens keep validating while the provider
//! is down. Compiled `validate-jwt` steps hold the sources, so a new configuration naming the
//! same URL keeps its cached keys; when no table holds a source any more its task ends.
//!
//! # Layout
//! - [`state`]: documents to keys, and the fetch schedule (pure, unit-tested).
//! - this file: the registry, the shared source and its task (HTTP through `awc`).

pub mod state;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use actix_rt::ArbiterHandle;
use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use crate::link::ClientFactory;
use state::{FETCH_TIMEOUT, MAX_DOCUMENT_BYTES, MIN_REFRESH_GAP, Schedule, UNKNOWN_KID_WAIT};
pub use state::{FetchedKey, KeySet};

/// Where a source's keys are published.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    Jwks(String),
    OpenIdConfig(String),
}

impl Location {
    pub fn url(&self) -> &str {
        match self {
            Location::Jwks(u) | Location::OpenIdConfig(u) => u,
        }
    }
}

/// One source: a location fetched at one interval.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceId {
    pub location: Location,
    pub interval: Duration,
}

/// The keys of one location, shared by every step and configuration naming it.
pub struct KeySource {
    pub id: SourceId,
    keys: ArcSwap<KeySet>,
    /// Wakes the task for an on-demand refresh.
    wake: Arc<Notify>,
    /// Bumped after every attempt (and every wake that may not fetch), so waiting requests
    /// look at the keys again.
    attempts: watch::Sender<u64>,
    in_flight: AtomicBool,
    /// Milliseconds since `origin` at the start of the last on-demand refresh; `u64::MAX`
    /// before any.
    last_on_demand_ms: AtomicU64,
    origin: Instant,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("id", &self.id)
            .field("keys", &self.keys.load().keys.len())
            .finish_non_exhaustive()
    }
}

impl Drop for KeySource {
    fn drop(&mut self) {
        // Lets the task notice at once that nobody needs it any more.
        self.wake.notify_one();
    }
}

impl KeySource {
    /// `fetching`: a task will fetch at once, so requests before the first keys wait for it.
    fn new(id: SourceId, fetching: bool) -> Self {
        Self {
            id,
            keys: ArcSwap::from_pointee(KeySet::default()),
            wake: Arc::new(Notify::new()),
            attempts: watch::channel(0).0,
            in_flight: AtomicBool::new(fetching),
            last_on_demand_ms: AtomicU64::new(u64::MAX),
            origin: Instant::now(),
        }
    }

    /// The keys as last fetched (empty before the first successful fetch). One atomic load.
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// For a token whose key is not in the set: asks the task for a refresh and waits for it,
    /// at most [`UNKNOWN_KID_WAIT`]. Returns at once (`false`) when the last on-demand refresh
    /// was less than [`MIN_REFRESH_GAP`] ago and no fetch is under way; `true` when an attempt
    /// finished (the keys may have changed).
    pub async fn refresh_and_wait(&self) -> bool {
        let mut done = self.attempts.subscribe();
        // A fetch under way (the first one included) is waited for, not asked for again.
        if !self.in_flight.load(Ordering::Acquire) {
            if !self.may_refresh(Instant::now()) {
                return false;
            }
            self.wake.notify_one();
        }
        matches!(
            tokio::time::timeout(UNKNOWN_KID_WAIT, done.changed()).await,
            Ok(Ok(()))
        )
    }

    fn may_refresh(&self, now: Instant) -> bool {
        match self.last_on_demand_ms.load(Ordering::Acquire) {
            u64::MAX => true,
            ms => {
                let last = self.origin + Duration::from_millis(ms);
                now.saturating_duration_since(last) >= MIN_REFRESH_GAP
            }
        }
    }

    fn attempt_started(&self, at: Instant, on_demand: bool) {
        if on_demand {
            let ms = u64::try_from(at.saturating_duration_since(self.origin).as_millis())
                .unwrap_or(u64::MAX - 1);
            self.last_on_demand_ms.store(ms, Ordering::Release);
        }
        self.in_flight.store(true, Ordering::Release);
    }

    fn attempt_finished(&self, keys: Option<KeySet>) {
        if let Some(keys) = keys {
            self.keys.store(Arc::new(keys));
        }
        self.in_flight.store(false, Ordering::Release);
        self.attempts.send_modify(|n| *n += 1);
    }
}

/// Hands out shared key sources and runs their tasks.
pub struct JwksRegistry {
    runner: Option<Runner>,
    sources: Mutex<HashMap<SourceId, Weak<KeySource>>>,
}

struct Runner {
    arbiter: ArbiterHandle,
    clients: ClientFactory,
}

impl std::fmt::Debug for JwksRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksRegistry")
            .field("fetching", &self.runner.is_some())
            .finish_non_exhaustive()
    }
}

impl JwksRegistry {
    /// Sources fetch on `arbiter` with clients from `clients` (built on that arbiter).
    pub fn new(arbiter: ArbiterHandle, clients: ClientFactory) -> Self {
        Self {
            runner: Some(Runner { arbiter, clients }),
            sources: Mutex::default(),
        }
    }

    /// Sources that never fetch: for compiling a configuration only to check it.
    pub fn detached() -> Self {
        Self {
            runner: None,
            sources: Mutex::default(),
        }
    }

    /// The source for `id`: the one already held by a compiled table, else a new one whose
    /// task starts now. Called while compiling, never per request.
    pub fn source(&self, id: SourceId) -> Arc<KeySource> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.retain(|_, s| s.strong_count() > 0);
        if let Some(s) = sources.get(&id).and_then(Weak::upgrade) {
            return s;
        }
        let source = Arc::new(KeySource::new(id.clone(), self.runner.is_some()));
        sources.insert(id, Arc::downgrade(&source));
        if let Some(runner) = &self.runner {
            let weak = Arc::downgrade(&source);
            let wake = source.wake.clone();
            let clients = runner.clients.clone();
            // `awc::Client` is not `Send`: it is built on the arbiter that uses it.
            runner.arbiter.spawn_fn(move || {
                actix_rt::spawn(run(weak, wake, clients.build()));
            });
        }
        source
    }
}

/// The task of one source; ends when no compiled table holds the source any more.
async fn run(source: Weak<KeySource>, wake: Arc<Notify>, client: awc::Client) {
    let Some(interval) = source.upgrade().map(|s| s.id.interval) else {
        return;
    };
    let mut schedule = Schedule::new(interval);
    loop {
        let woken = match schedule.next_due() {
            None => false,
            Some(due) => {
                tokio::select! {
                    () = wake.notified() => true,
                    () = tokio::time::sleep_until(due.into()) => false,
                }
            }
        };
        let Some(s) = source.upgrade() else { return };
        let now = Instant::now();
        if woken && !schedule.may_refresh(now) {
            // Too soon after the last fetch: let the waiting requests look again right away.
            s.attempt_finished(None);
            continue;
        }
        if woken {
            schedule.last_on_demand = Some(now);
        }
        s.attempt_started(now, woken);
        let location = s.id.location.clone();
        // The fetch must not hold the source alive.
        drop(s);
        let result = fetch(&client, &location).await;
        let Some(s) = source.upgrade() else { return };
        match result {
            Ok((keys, skipped)) => {
                for why in &skipped {
                    tracing::debug!(url = location.url(), "JWKS key skipped: {why}");
                }
                tracing::debug!(url = location.url(), keys = keys.keys.len(), "JWKS fetched");
                schedule.attempted(now, true);
                s.attempt_finished(Some(keys));
            }
            Err(e) => {
                tracing::warn!(url = location.url(), error = %e,
                    cached_keys = s.keys().keys.len(),
                    "could not fetch the JWT signing keys; serving the cached ones");
                schedule.attempted(now, false);
                s.attempt_finished(None);
            }
        }
    }
}

async fn fetch(client: &awc::Client, location: &Location) -> Result<(KeySet, Vec<String>), String> {
    let jwks_url = match location {
        Location::Jwks(u) => u.clone(),
        Location::OpenIdConfig(u) => {
            let body = get(client, u).await?;
            state::jwks_uri(&body).map_err(|e| format!("{u}: {e}"))?
        }
    };
    let body = get(client, &jwks_url).await?;
    state::parse_jwks(&body).map_err(|e| format!("{jwks_url}: {e}"))
}

async fn get(client: &awc::Client, url: &str) -> Result<bytes::Bytes, String> {
    let mut response = client
        .get(url)
        .insert_header(("Accept", "application/json"))
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    response
        .body()
        .limit(MAX_DOCUMENT_BYTES)
        .await
        .map_err(|e| format!("{url}: {e}"))
}
