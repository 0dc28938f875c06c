//! Request telemetry uploaded by gateways, aggregated in memory.
//!
//! Gateways already aggregate per minute, API, operation, status and cache outcome
//! ([`TelemetryBatch`]); the control plane adds the batches up per gateway, API, operation and
//! status per minute, and answers summaries for the admin API and the dashboard.
//!
//! Bounded: only the last [`RETENTION_MINUTES`] are kept, and at most [`MAX_SERIES`]
//! (minute, series) cells; beyond that the oldest minutes go first. Batches are deduplicated by
//! (gateway, instance id, sequence): a gateway that retries an upload whose answer it lost is
//! counted once. Per instance the last [`SEQUENCES_KEPT`] sequence numbers are remembered; a
//! batch older than all of them is taken as already seen (gateways upload in sequence order,
//! spooled batches included). Like instance status, this lives in memory only and starts empty
//! after a control plane restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use outpost_model::wire::TelemetryBatch;
use serde::{Deserialize, Serialize};

/// Minutes of history kept (one day).
pub const RETENTION_MINUTES: i64 = 24 * 60;
/// Most (minute, series) cells kept across all gateways.
pub const MAX_SERIES: usize = 200_000;
/// Sequence numbers remembered per instance for deduplication.
pub const SEQUENCES_KEPT: usize = 1024;
/// Aggregates dated this far in the future are refused (clock skew allowance), seconds.
const FUTURE_SKEW_SECS: i64 = 300;
/// Instances whose last batch is older than this are forgotten by the deduplication table.
const INSTANCE_RETENTION_SECS: i64 = RETENTION_MINUTES * 60;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Series {
    gateway: String,
    api: String,
    operation: String,
    status: u16,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Totals {
    count: u64,
    total_duration_ms: u64,
    max_duration_ms: u64,
    backend_duration_ms: u64,
    request_bytes: u64,
    response_bytes: u64,
    cache_hits: u64,
}

#[derive(Default)]
struct SeenSequences {
    recent: BTreeSet<u64>,
    last_batch: i64,
}

#[derive(Default)]
struct Inner {
    /// Unix minute start → series → totals.
    minutes: BTreeMap<i64, HashMap<Series, Totals>>,
    cells: usize,
    seen: HashMap<(String, String), SeenSequences>,
}

/// What happened to one uploaded batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Added; with the number of aggregates skipped as too old or dated in the future.
    Added { skipped: usize },
    /// Already received (a retried upload); nothing added.
    Duplicate,
}

#[derive(Default)]
pub struct TelemetryStore {
    inner: Mutex<Inner>,
}

impl TelemetryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch from `gateway` (the gateway its token was verified for).
    pub fn ingest(&self, gateway: &str, batch: &TelemetryBatch, now: DateTime<Utc>) -> Ingested {
        let now_secs = now.timestamp();
        let oldest = minute_of(now_secs) - (RETENTION_MINUTES - 1) * 60;
        let newest = now_secs + FUTURE_SKEW_SECS;
        let mut inner = self.inner.lock().expect("telemetry lock");
        let inner = &mut *inner;

        let seen = inner
            .seen
            .entry((gateway.to_owned(), batch.instance_id.clone()))
            .or_default();
        let too_old = seen.recent.len() == SEQUENCES_KEPT
            && seen.recent.first().is_some_and(|&min| batch.sequence < min);
        if too_old || !seen.recent.insert(batch.sequence) {
            return Ingested::Duplicate;
        }
        if seen.recent.len() > SEQUENCES_KEPT {
            seen.recent.pop_first();
        }
        seen.last_batch = now_secs;

        let mut skipped = 0;
        for agg in &batch.aggregates {
            let minute = minute_of(agg.key.minute);
            if minute < oldest || minute > newest {
                skipped += 1;
                continue;
            }
            let series = Series {
                gateway: gateway.to_owned(),
                api: agg.key.api.clone(),
                operation: agg.key.operation.clone(),
                status: agg.key.status,
            };
            let cells = inner.minutes.entry(minute).or_default();
            let before = cells.len();
            let t = cells.entry(series).or_default();
            t.count += agg.count;
            t.total_duration_ms += agg.total_duration_ms;
            t.max_duration_ms = t.max_duration_ms.max(agg.max_duration_ms);
            t.backend_duration_ms += agg.backend_duration_ms;
            t.request_bytes += agg.request_bytes;
            t.response_bytes += agg.response_bytes;
            if agg.key.cache == "hit" {
                t.cache_hits += agg.count;
            }
            inner.cells += cells.len() - before;
        }
        inner.evict(oldest, now_secs);
        Ingested::Added { skipped }
    }

    /// Totals of the last `minutes` minutes (the current one included), optionally for one
    /// gateway and/or API, by API and status.
    pub fn summary(
        &self,
        gateway: Option<&str>,
        api: Option<&str>,
        minutes: i64,
        now: DateTime<Utc>,
    ) -> Summary {
        let minutes = minutes.clamp(1, RETENTION_MINUTES);
        let from = minute_of(now.timestamp()) - (minutes - 1) * 60;
        let inner = self.inner.lock().expect("telemetry lock");
        let mut apis: BTreeMap<&str, (Totals, BTreeMap<u16, u64>)> = BTreeMap::new();
        let mut total = Totals::default();
        for (_, cells) in inner.minutes.range(from..) {
            for (s, t) in cells {
                if gateway.is_some_and(|g| g != s.gateway) || api.is_some_and(|a| a != s.api) {
                    continue;
                }
                let (sum, statuses) = apis.entry(s.api.as_str()).or_default();
                sum.add(t);
                total.add(t);
                *statuses.entry(s.status).or_default() += t.count;
            }
        }
        let apis: Vec<ApiSummary> = apis
            .into_iter()
            .map(|(api, (t, statuses))| ApiSummary {
                api: api.to_owned(),
                requests: t.count,
                errors: statuses.range(500..).map(|(_, n)| n).sum(),
                avg_duration_ms: t.avg(t.total_duration_ms),
                max_duration_ms: t.max_duration_ms,
                avg_backend_duration_ms: t.avg(t.backend_duration_ms),
                cache_hits: t.cache_hits,
                request_bytes: t.request_bytes,
                response_bytes: t.response_bytes,
                statuses: statuses
                    .into_iter()
                    .map(|(s, n)| (s.to_string(), n))
                    .collect(),
            })
            .collect();
        Summary {
            from: DateTime::from_timestamp(from, 0).unwrap_or(now),
            to: now,
            minutes,
            gateway: gateway.map(str::to_owned),
            requests: total.count,
            errors: apis.iter().map(|a| a.errors).sum(),
            apis,
        }
    }

    /// Number of (minute, series) cells held; for tests and metrics.
    pub fn cells(&self) -> usize {
        self.inner.lock().expect("telemetry lock").cells
    }
}

impl Inner {
    fn evict(&mut self, oldest: i64, now_secs: i64) {
        while let Some((&minute, cells)) = self.minutes.first_key_value() {
            if minute >= oldest && self.cells <= MAX_SERIES {
                break;
            }
            self.cells -= cells.len();
            self.minutes.pop_first();
        }
        if self.seen.len() > 1024 {
            self.seen
                .retain(|_, s| now_secs - s.last_batch < INSTANCE_RETENTION_SECS);
        }
    }
}

impl Totals {
    fn add(&mut self, t: &Totals) {
        self.count += t.count;
        self.total_duration_ms += t.total_duration_ms;
        self.max_duration_ms = self.max_duration_ms.max(t.max_duration_ms);
        self.backend_duration_ms += t.backend_duration_ms;
        self.request_bytes += t.request_bytes;
        self.response_bytes += t.response_bytes;
        self.cache_hits += t.cache_hits;
    }

    fn avg(&self, total: u64) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            total as f64 / self.count as f64
        }
    }
}

fn minute_of(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(60) * 60
}

/// `GET /api/v1/telemetry` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub minutes: i64,
    pub gateway: Option<String>,
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    pub apis: Vec<ApiSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApiSummary {
    pub api: String,
    pub requests: u64,
    pub errors: u64,
    pub avg_duration_ms: f64,
    pub max_duration_ms: u64,
    pub avg_backend_duration_ms: f64,
    pub cache_hits: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Request count per status code.
    pub statuses: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_model::wire::{AggregateKey, RequestAggregate};

    fn agg(minute: i64, api: &str, status: u16, count: u64, ms: u64) -> RequestAggregate {
        RequestAggregate {
            key: AggregateKey {
                minute,
                api: api.into(),
                operation: "get".into(),
                status,
                cache: "none".into(),
            },
            count,
            total_duration_ms: ms * count,
            max_duration_ms: ms,
            backend_duration_ms: 0,
            request_bytes: 0,
            response_bytes: 0,
        }
    }

    fn batch(seq: u64, aggregates: Vec<RequestAggregate>) -> TelemetryBatch {
        TelemetryBatch {
            instance_id: "i-1".into(),
            sequence: seq,
            aggregates,
        }
    }

    #[test]
    fn aggregates_and_dedupes() {
        let now: DateTime<Utc> = "2030-01-01T12:00:30Z".parse().unwrap();
        let m = minute_of(now.timestamp());
        let t = TelemetryStore::new();
        let b1 = batch(
            1,
            vec![agg(m, "orders", 200, 10, 5), agg(m, "orders", 500, 2, 50)],
        );
        assert_eq!(t.ingest("gw", &b1, now), Ingested::Added { skipped: 0 });
        assert_eq!(t.ingest("gw", &b1, now), Ingested::Duplicate);
        // The same sequence from another gateway is another batch.
        assert_eq!(t.ingest("gw2", &b1, now), Ingested::Added { skipped: 0 });
        let b2 = batch(
            2,
            vec![
                agg(m - 60, "orders", 200, 5, 1),
                agg(m - 2 * 86400, "orders", 200, 1, 1),
            ],
        );
        assert_eq!(t.ingest("gw", &b2, now), Ingested::Added { skipped: 1 });

        let s = t.summary(Some("gw"), None, 60, now);
        assert_eq!(s.requests, 17);
        assert_eq!(s.errors, 2);
        let orders = &s.apis[0];
        assert_eq!(orders.statuses["200"], 15);
        assert_eq!(orders.max_duration_ms, 50);
        assert_eq!(t.summary(Some("gw"), None, 1, now).requests, 12);
        assert_eq!(t.summary(None, Some("orders"), 60, now).requests, 29);
        assert_eq!(t.summary(None, Some("nope"), 60, now).requests, 0);
    }

    #[test]
    fn old_minutes_are_evicted() {
        let t = TelemetryStore::new();
        let day0: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
        t.ingest(
            "gw",
            &batch(1, vec![agg(day0.timestamp(), "a", 200, 1, 1)]),
            day0,
        );
        assert_eq!(t.cells(), 1);
        let later = day0 + chrono::Duration::days(2);
        t.ingest(
            "gw",
            &batch(2, vec![agg(later.timestamp(), "a", 200, 1, 1)]),
            later,
        );
        assert_eq!(t.cells(), 1);
    }

    #[test]
    fn sequences_far_behind_are_duplicates() {
        let now: DateTime<Utc> = "2030-01-01T12:00:30Z".parse().unwrap();
        let t = TelemetryStore::new();
        for seq in 100..100 + SEQUENCES_KEPT as u64 + 1 {
            assert!(matches!(
                t.ingest("gw", &batch(seq, vec![]), now),
                Ingested::Added { .. }
            ));
        }
        assert_eq!(
            t.ingest("gw", &batch(100, vec![]), now),
            Ingested::Duplicate
        );
        assert_eq!(t.ingest("gw", &batch(5, vec![]), now), Ingested::Duplicate);
    }
}
