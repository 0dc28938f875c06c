//! HTTP client helpers and bounded load generation.
//!
//! Load here is for *behaviour* under load (fault suites, limits shared across nodes), not
//! for benchmarks: every loop is bounded in count or time and stops by itself, and only ever
//! targets the loopback addresses the test gives it.
//!
//! Build clients inside the test that uses them: a `reqwest::Client` keeps pooled connections
//! on the runtime that opened them, so sharing one across `#[tokio::test]` runtimes fails in
//! confusing ways.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Requests a [`LoadLoop`] keeps in flight at most; beyond that it skips ticks (a hung
/// target would otherwise pile up tasks until the client timeouts fire).
const MAX_IN_FLIGHT: usize = 512;

/// A client for tests: never uses a proxy from the environment (traffic must stay on
/// loopback), never follows redirects (tests assert on what the gateway answered), and times
/// out quickly so a hung peer fails a request rather than the whole test.
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(10))
}

/// [`client_builder`], built.
pub fn client() -> reqwest::Client {
    client_builder()
        .build()
        .expect("building the test HTTP client")
}

/// A short classification of a transport error, used as a key in [`LoadReport::errors`].
pub fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else if e.is_request() {
        "request"
    } else {
        "other"
    }
}

/// An error with its whole source chain; reqwest's own `Display` hides the useful part
/// ("connection refused", "connection reset") behind "error sending request".
pub fn describe_error(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a batch of requests produced. `sent == responses() + failed` once all are done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests started.
    pub sent: u64,
    /// Responses with a 2xx status and a complete body.
    pub ok: u64,
    /// Requests that got no complete response: connect errors, resets, timeouts.
    pub failed: u64,
    /// Every response received, by status (2xx included).
    pub statuses: BTreeMap<u16, u64>,
    /// The failures by [`error_kind`].
    pub errors: BTreeMap<String, u64>,
}

impl LoadReport {
    /// Responses received with this status.
    pub fn status(&self, code: u16) -> u64 {
        self.statuses.get(&code).copied().unwrap_or(0)
    }

    /// Responses received, whatever the status.
    pub fn responses(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Responses whose status was not 2xx (a 429 or 503 is an answer, not a failure).
    pub fn non_2xx(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(code, _)| !(200..300).contains(*code))
            .map(|(_, n)| n)
            .sum()
    }

    /// The counts accumulated since `earlier`, a snapshot of the same loop: lets a fault test
    /// look at one phase ("after Redis came back, nothing failed").
    pub fn since(&self, earlier: &LoadReport) -> LoadReport {
        fn diff<K: Ord + Clone>(
            now: &BTreeMap<K, u64>,
            then: &BTreeMap<K, u64>,
        ) -> BTreeMap<K, u64> {
            now.iter()
                .map(|(k, n)| {
                    (
                        k.clone(),
                        n.saturating_sub(then.get(k).copied().unwrap_or(0)),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect()
        }
        LoadReport {
            sent: self.sent.saturating_sub(earlier.sent),
            ok: self.ok.saturating_sub(earlier.ok),
            failed: self.failed.saturating_sub(earlier.failed),
            statuses: diff(&self.statuses, &earlier.statuses),
            errors: diff(&self.errors, &earlier.errors),
        }
    }

    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Status(code) => {
                if (200..300).contains(&code) {
                    self.ok += 1;
                }
                *self.statuses.entry(code).or_default() += 1;
            }
            Outcome::Error(kind) => {
                self.failed += 1;
                *self.errors.entry(kind.to_owned()).or_default() += 1;
            }
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {} ok {} failed {} statuses {:?}",
            self.sent, self.ok, self.failed, self.statuses
        )?;
        if !self.errors.is_empty() {
            write!(f, " errors {:?}", self.errors)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Status(u16),
    Error(&'static str),
}

/// Sends one request and reads the whole body: a response only counts once it has fully
/// arrived, so a connection cut mid-body is a failure, not a success.
async fn execute(request: reqwest::RequestBuilder) -> Outcome {
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Outcome::Error(error_kind(&e)),
    };
    let status = response.status().as_u16();
    match response.bytes().await {
        Ok(_) => Outcome::Status(status),
        Err(e) => Outcome::Error(error_kind(&e)),
    }
}

/// `n` GETs of `url`, `concurrency` at a time, with a fresh [`client`]; named after the
/// load tool it imitates.
pub async fn hey(url: &str, n: u64, concurrency: usize) -> LoadReport {
    let client = client();
    hey_with(n, concurrency, |_| client.get(url)).await
}

/// `n` requests, `concurrency` at a time; `make(i)` builds request `i` (add headers, pick
/// the URL, vary the body).
pub async fn hey_with<F>(n: u64, concurrency: usize, make: F) -> LoadReport
where
    F: Fn(u64) -> reqwest::RequestBuilder,
{
    let mut report = LoadReport {
        sent: n,
        ..LoadReport::default()
    };
    let mut outcomes = futures_util::stream::iter(0..n)
        .map(|i| execute(make(i)))
        .buffer_unordered(concurrency.max(1));
    while let Some(outcome) = outcomes.next().await {
        report.record(outcome);
    }
    report
}

/// Steady background load: requests at a fixed rate until [`stop`](Self::stop) or until
/// the maximum duration given at start, whichever comes first. Runs on the caller's tokio
/// runtime; dropping it without `stop` abandons the loop and its in-flight requests.
#[derive(Debug)]
pub struct LoadLoop {
    report: Arc<Mutex<LoadReport>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl LoadLoop {
    /// GETs `urls` in turn at `rate_per_sec`, for at most `max_duration`.
    ///
    /// # Panics
    ///
    /// If `urls` is empty or the rate is not positive, or outside a tokio runtime.
    pub fn start(
        client: reqwest::Client,
        urls: Vec<String>,
        rate_per_sec: f64,
        max_duration: Duration,
    ) -> Self {
        assert!(!urls.is_empty(), "LoadLoop needs at least one URL");
        Self::start_with(rate_per_sec, max_duration, move |i| {
            // Round-robin; `i` counts from 0 and the modulo keeps it in range.
            let url = &urls[usize::try_from(i % urls.len() as u64).unwrap_or(0)];
            client.get(url)
        })
    }

    /// Like [`start`](Self::start), with `make(i)` building request `i`.
    pub fn start_with<F>(rate_per_sec: f64, max_duration: Duration, make: F) -> Self
    where
        F: Fn(u64) -> reqwest::RequestBuilder + Send + 'static,
    {
        assert!(
            rate_per_sec.is_finite() && rate_per_sec > 0.0,
            "rate must be positive, got {rate_per_sec}"
        );
        let period = Duration::from_secs_f64(1.0 / rate_per_sec);
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run_loop(
            period,
            max_duration,
            make,
            Arc::clone(&report),
            stop_rx,
        ));
        Self {
            report,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// The counts so far (requests still in flight are in `sent` only).
    pub fn snapshot(&self) -> LoadReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the loop has ended by itself (max duration reached).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops sending, waits for the requests in flight (bounded by the client's timeouts) and
    /// returns the final report.
    pub async fn stop(mut self) -> LoadReport {
        drop(self.stop.take());
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        self.snapshot()
    }
}

impl Drop for LoadLoop {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run_loop<F>(
    period: Duration,
    max_duration: Duration,
    make: F,
    report: Arc<Mutex<LoadReport>>,
    mut stop: oneshot::Receiver<()>,
) where
    F: Fn(u64) -> reqwest::RequestBuilder,
{
    let record = |outcome| {
        report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(outcome)
    };
    let counted = Arc::clone(&report);
    let sent = move |i| {
        counted.lock().unwrap_or_else(|e| e.into_inner()).sent += 1;
        execute(make(i))
    };
    run_paced(period, max_duration, MAX_IN_FLIGHT, &mut stop, sent, record).await;
}

/// Starts `start(i)` every `period` (i = 0, 1, …) until `stop` fires or `max_duration` has
/// passed, with at most `max_in_flight` running (ticks beyond are skipped), hands every result
/// to `done`, and returns once all started work has finished.
pub async fn run_paced<T, Fut>(
    period: Duration,
    max_duration: Duration,
    max_in_flight: usize,
    stop: &mut oneshot::Receiver<()>,
    mut start: impl FnMut(u64) -> Fut,
    mut done: impl FnMut(T),
) where
    T: Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let deadline = tokio::time::sleep(max_duration);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(period);
    // After a stall, carry on at the set rate instead of bursting to catch up: the point is
    // steady load, not an exact count.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = JoinSet::new();
    let mut next = 0u64;
    loop {
        tokio::select! {
            _ = &mut *stop => break,
            () = &mut deadline => break,
            _ = ticker.tick() => {
                if in_flight.len() >= max_in_flight {
                    continue;
                }
                in_flight.spawn(start(next));
                next += 1;
            }
            Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(value) = finished {
                    done(value);
                }
            }
        }
    }
    while let Some(finished) = in_flight.join_next().await {
        if let Ok(value) = finished {
            done(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::TestBackend;
    use crate::wait::{eventually, ms, secs};

    #[tokio::test]
    async fn hey_records_statuses_and_errors() {
        let backend = TestBackend::start();
        let report = hey(&backend.url_for("/ok"), 20, 4).await;
        assert_eq!(report.sent, 20);
        assert_eq!(report.ok, 20);
        assert_eq!(report.status(200), 20);
        assert_eq!(report.failed, 0);
        assert_eq!(backend.hits("/ok"), 20);

        let report = hey(&backend.url_for("/status/429"), 5, 2).await;
        assert_eq!((report.ok, report.failed, report.non_2xx()), (0, 0, 5));

        // Nothing listens there: every request is a transport failure, none hangs.
        let dead = format!("http://{}/", crate::ports::free_addr());
        let report = hey(&dead, 3, 3).await;
        assert_eq!(report.failed, 3, "{report}");
        assert_eq!(report.responses(), 0);
        assert_eq!(report.errors.get("connect"), Some(&3), "{report}");
    }

    #[tokio::test]
    async fn load_loop_round_robins_and_accounts_for_every_request() {
        let backend = TestBackend::start();
        let urls = vec![
            backend.url_for("/a"),
            backend.url_for("/b"),
            backend.url_for("/status/503"),
        ];
        let load = LoadLoop::start(client(), urls, 200.0, secs(30));
        eventually(secs(20), ms(20), async || {
            let seen = backend.total_hits();
            if seen >= 30 {
                Ok(())
            } else {
                Err(format!("backend saw {seen} requests"))
            }
        })
        .await
        .unwrap();
        let middle = load.snapshot();
        let report = load.stop().await;

        assert_eq!(report.sent, report.responses() + report.failed, "{report}");
        assert_eq!(report.failed, 0, "{report}");
        assert_eq!(report.ok, report.status(200));
        assert!(report.status(503) >= 10, "{report}");
        assert_eq!(report.sent, backend.total_hits());
        // Round-robin: the three paths differ by at most one.
        let (a, b, c) = (
            backend.hits("/a"),
            backend.hits("/b"),
            backend.hits("/status/503"),
        );
        assert!(a.max(b).max(c) - a.min(b).min(c) <= 1, "{a} {b} {c}");
        let tail = report.since(&middle);
        assert_eq!(tail.sent, report.sent - middle.sent);
    }

    #[tokio::test]
    async fn load_loop_stops_by_itself() {
        let backend = TestBackend::start();
        let load = LoadLoop::start(client(), vec![backend.url()], 50.0, ms(200));
        eventually(secs(20), ms(20), async || {
            if load.is_finished() {
                Ok(())
            } else {
                Err("still running".into())
            }
        })
        .await
        .unwrap();
        let report = load.stop().await;
        assert!(report.sent >= 1, "{report}");
        assert_eq!(report.sent, report.ok, "{report}");
    }
}
