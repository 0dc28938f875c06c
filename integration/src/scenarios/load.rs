//! Steady traffic over every gateway node, as a health-checked load balancer sends it.
//!
//! Requests go round-robin over the nodes at a fixed rate. A request that gets no response
//! from a node the scenario has **deliberately taken down** (marked with [`FleetLoad::set_down`]
//! just before the kill or stop, cleared once the node is ready again) is retried on the next
//! node in the list: that is what a load balancer with health checks and "retry the next
//! upstream on connection errors" does (nginx `proxy_next_upstream error`, Envoy
//! `retry_on: connect-failure,reset`, a Kubernetes Service whose endpoint just left). A
//! transport error from a node that is *not* marked down is never retried: it is a failure
//! and the suite asserts there are none.
//!
//! Every logical request is recorded once, with the node that finally answered, the time it
//! was first sent and the time its response was fully read (relative to the start of the
//! load), so the checks can look at phases and sliding windows afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::http::error_kind;

/// Requests in flight at most; beyond that ticks are skipped (a hung fleet must not pile up
/// tasks until the client timeouts fire).
const MAX_IN_FLIGHT: usize = 256;

/// One logical request of the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Index of the node that answered (or, for a failure, the node that failed).
    pub node: usize,
    /// When the first attempt started, since the load started.
    pub sent: Duration,
    /// When the response was fully read (or the request failed), since the load started.
    pub done: Duration,
    /// The response status, or the kind of transport error.
    pub outcome: Result<u16, &'static str>,
    /// Attempts that went to a node marked down before this one answered.
    pub failovers: u32,
}

impl Event {
    /// A 2xx response.
    pub fn admitted(&self) -> bool {
        matches!(self.outcome, Ok(s) if (200..300).contains(&s))
    }

    /// A transport error or a 5xx: what the suite calls a failed request.
    pub fn failed(&self) -> bool {
        match self.outcome {
            Ok(s) => s >= 500,
            Err(_) => true,
        }
    }

    pub fn status(&self) -> Option<u16> {
        self.outcome.ok()
    }

    pub fn latency(&self) -> Duration {
        self.done.saturating_sub(self.sent)
    }
}

struct Shared {
    start: Instant,
    bases: Vec<String>,
    down: Vec<AtomicBool>,
    events: Mutex<Vec<Event>>,
}

impl Shared {
    fn record(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }
}

/// Round-robin load over the nodes with failover away from nodes marked down; see the
/// [module docs](self).
pub struct FleetLoad {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FleetLoad {
    /// Starts `GET {base}{path(i)}` with header `key_header: key` at `rate_per_sec`, for at most
    /// `max_duration`. `bases` are the nodes' traffic URLs (`http://127.0.0.1:PORT`).
    pub fn start(
        client: reqwest::Client,
        bases: Vec<String>,
        key: (&'static str, &'static str),
        rate_per_sec: f64,
        max_duration: Duration,
    ) -> FleetLoad {
        assert!(!bases.is_empty(), "FleetLoad needs at least one node");
        assert!(rate_per_sec.is_finite() && rate_per_sec > 0.0);
        let shared = Arc::new(Shared {
            start: Instant::now(),
            down: bases.iter().map(|_| AtomicBool::new(false)).collect(),
            bases,
            events: Mutex::new(Vec::new()),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let period = Duration::from_secs_f64(1.0 / rate_per_sec);
        let task = tokio::spawn(run(
            Arc::clone(&shared),
            client,
            key,
            period,
            max_duration,
            stop_rx,
        ));
        FleetLoad {
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// Marks node `i` as deliberately down (its failures fail over) or back up.
    pub fn set_down(&self, i: usize, down: bool) {
        self.shared.down[i].store(down, Ordering::SeqCst);
    }

    /// Time since the load started: the clock of [`Event::sent`] and [`Event::done`].
    pub fn elapsed(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// `at` on the load's clock.
    pub fn at(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.shared.start)
    }

    /// Events recorded so far (requests still in flight are not in it yet).
    pub fn snapshot(&self) -> Vec<Event> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops sending, waits for the requests in flight and returns every event, by send time.
    pub async fn stop(mut self) -> Vec<Event> {
        drop(self.stop.take());
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        let mut events = self.snapshot();
        events.sort_by_key(|e| e.sent);
        events
    }
}

impl Drop for FleetLoad {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    client: reqwest::Client,
    key: (&'static str, &'static str),
    period: Duration,
    max_duration: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    crate::http::run_paced(
        period,
        max_duration,
        MAX_IN_FLIGHT,
        &mut stop,
        |i| one(Arc::clone(&shared), client.clone(), key, i),
        |()| {},
    )
    .await;
}

/// One logical request: first attempt on node `i mod n`, then the next nodes while the one
/// tried is marked down.
async fn one(shared: Arc<Shared>, client: reqwest::Client, key: (&str, &str), i: u64) {
    let n = shared.bases.len();
    let first = usize::try_from(i % n as u64).unwrap_or(0);
    let sent = shared.start.elapsed();
    let mut failovers = 0;
    for k in 0..n {
        let node = (first + k) % n;
        let url = format!("{}/echo/items/{i}", shared.bases[node]);
        let outcome = match client.get(&url).header(key.0, key.1).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                response
                    .bytes()
                    .await
                    .map(|_| status)
                    .map_err(|e| error_kind(&e))
            }
            Err(e) => Err(error_kind(&e)),
        };
        if outcome.is_err() && shared.down[node].load(Ordering::SeqCst) && k + 1 < n {
            failovers += 1;
            continue;
        }
        shared.record(Event {
            node,
            sent,
            done: shared.start.elapsed(),
            outcome,
            failovers,
        });
        return;
    }
}
