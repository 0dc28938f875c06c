//! Request analytics: telemetry batches uploaded by gateways, written to the store, and the
//! sums the admin API and the dashboard read back.
//!
//! Gateways aggregate per minute, API, operation, status, cache outcome, product and
//! subscription, with a latency histogram in microseconds ([`TelemetryBatch`]). The control
//! plane adds each batch to the store's `analytics` rows (per minute × gateway × API ×
//! operation × product × subscription × status; the cache outcome becomes a count of hits) in
//! one transaction that also records the batch's id (gateway, instance id, sequence): a batch
//! retried against this replica or another is counted once. The gateway endpoint answers only
//! after that commit, so an acknowledged batch is never lost.
//!
//! Rows older than `[analytics] retention_hours` are purged periodically ([`Analytics::purge`],
//! from the control plane's store sync thread); aggregates already older than that, or dated
//! more than [`FUTURE_SKEW_SECS`] ahead, are skipped at ingestion.
//!
//! Percentiles are read from the summed histograms ([`latency_quantile`]): within a bucket's
//! width (at most a third of its lower bound) of the truth, sub-millisecond included.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use outpost_model::Problems;
use outpost_model::wire::{LATENCY_BUCKETS, TelemetryBatch, latency_quantile};
use serde::{Deserialize, Serialize};

use super::store::{
    AnalyticsFilter, AnalyticsKey, AnalyticsRow, AnalyticsSum, BatchId, Dimension, Store,
    StoreError,
};

/// Aggregates dated this far in the future are skipped (clock skew allowance), seconds.
pub const FUTURE_SKEW_SECS: i64 = 300;
/// Most aggregates one batch may carry (a gateway sends one per series and minute).
pub const MAX_AGGREGATES: usize = 100_000;

/// What happened to one uploaded batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Added (durably): the number of aggregates stored, and of those skipped as too old or
    /// dated in the future.
    Added { added: usize, skipped: usize },
    /// Already received (a retried upload, on this replica or another); nothing added.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The batch itself is wrong (the gateway should not retry it as it is).
    #[error("invalid telemetry batch:\n{0}")]
    Invalid(Problems),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The analytics of one control plane: reads and writes go to its store, shared by replicas.
pub struct Analytics {
    store: Arc<Store>,
    retention_secs: i64,
}

fn minute_of(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(60) * 60
}

fn sat(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Analytics {
    pub fn new(store: Arc<Store>, retention_hours: u64) -> Self {
        Self {
            store,
            retention_secs: sat(retention_hours.saturating_mul(3600)),
        }
    }

    /// The oldest minute kept at `now`.
    fn oldest_minute(&self, now: DateTime<Utc>) -> i64 {
        minute_of(now.timestamp().saturating_sub(self.retention_secs)) + 60
    }

    /// Adds a batch from `gateway` (the gateway its token was verified for). Blocking: call it
    /// off the async workers. Returns once the batch is committed.
    pub fn ingest(
        &self,
        gateway: &str,
        batch: &TelemetryBatch,
        now: DateTime<Utc>,
    ) -> Result<Ingested, IngestError> {
        let (rows, skipped) = self.rows(gateway, batch, now)?;
        let id = BatchId {
            gateway: gateway.to_owned(),
            instance_id: batch.instance_id.clone(),
            sequence: sat(batch.sequence),
        };
        let added = batch.aggregates.len() - skipped;
        if self.store.add_analytics(&id, now.timestamp(), &rows)? {
            Ok(Ingested::Added { added, skipped })
        } else {
            Ok(Ingested::Duplicate)
        }
    }

    /// The batch as store rows, merged by row key (the cache outcome is not part of it) and
    /// sorted (every replica then locks rows in one order), and the number of aggregates
    /// skipped as outside the window kept.
    fn rows(
        &self,
        gateway: &str,
        batch: &TelemetryBatch,
        now: DateTime<Utc>,
    ) -> Result<(Vec<AnalyticsRow>, usize), IngestError> {
        let mut problems = Problems::new();
        if batch.aggregates.len() > MAX_AGGREGATES {
            problems.push(
                "aggregates",
                format!("at most {MAX_AGGREGATES} aggregates per batch"),
            );
        }
        if batch.instance_id.is_empty() {
            problems.push("instance_id", "must not be empty");
        }
        let oldest = self.oldest_minute(now);
        let newest = now.timestamp() + FUTURE_SKEW_SECS;
        let mut skipped = 0;
        let mut rows: BTreeMap<AnalyticsKey, AnalyticsRow> = BTreeMap::new();
        for (i, agg) in batch.aggregates.iter().enumerate() {
            let mut in_histogram = 0u64;
            for (bucket, n) in &agg.latency {
                if usize::from(*bucket) >= LATENCY_BUCKETS {
                    problems.push(
                        format!("aggregates[{i}].latency"),
                        format!("bucket {bucket} is not below {LATENCY_BUCKETS}"),
                    );
                }
                in_histogram = in_histogram.saturating_add(*n);
            }
            if in_histogram != agg.count {
                problems.push(
                    format!("aggregates[{i}].latency"),
                    format!(
                        "the histogram counts {in_histogram} requests, the aggregate {}",
                        agg.count
                    ),
                );
            }
            let minute = minute_of(agg.key.minute);
            if minute < oldest || minute > newest {
                skipped += 1;
                continue;
            }
            let key = AnalyticsKey {
                minute,
                gateway: gateway.to_owned(),
                api: agg.key.api.clone(),
                operation: agg.key.operation.clone(),
                product: agg.key.product.clone(),
                subscription: agg.key.subscription.clone(),
                status: i64::from(agg.key.status),
            };
            let row = rows.entry(key.clone()).or_insert_with(|| AnalyticsRow {
                key,
                ..AnalyticsRow::default()
            });
            let count = sat(agg.count);
            row.requests = row.requests.saturating_add(count);
            if agg.key.status >= 500 {
                row.errors = row.errors.saturating_add(count);
            }
            if agg.key.cache == "hit" {
                row.cache_hits = row.cache_hits.saturating_add(count);
            }
            row.request_bytes = row.request_bytes.saturating_add(sat(agg.request_bytes));
            row.response_bytes = row.response_bytes.saturating_add(sat(agg.response_bytes));
            row.total_duration_us = row
                .total_duration_us
                .saturating_add(sat(agg.total_duration_us));
            row.max_duration_us = row.max_duration_us.max(sat(agg.max_duration_us));
            row.backend_duration_us = row
                .backend_duration_us
                .saturating_add(sat(agg.backend_duration_us));
            for (bucket, n) in &agg.latency {
                let bucket = i64::from(*bucket);
                match row.latency.iter_mut().find(|(b, _)| *b == bucket) {
                    Some((_, total)) => *total = total.saturating_add(sat(*n)),
                    None => row.latency.push((bucket, sat(*n))),
                }
            }
        }
        if !problems.is_empty() {
            return Err(IngestError::Invalid(problems));
        }
        let rows = rows
            .into_values()
            .map(|mut r| {
                r.latency.sort_unstable();
                r
            })
            .collect();
        Ok((rows, skipped))
    }

    /// Deletes what is older than the retention; returns the rows deleted. Blocking.
    pub fn purge(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.store.purge_analytics(self.oldest_minute(now))
    }

    /// The analytics `query` asks for. Blocking.
    pub fn report(&self, query: &AnalyticsQuery) -> Result<AnalyticsReport, StoreError> {
        let dims = query.group_by.dimensions();
        let filter = AnalyticsFilter {
            from_minute: minute_of(query.from.timestamp()),
            // Minutes that started before `to`.
            to_minute: query.to.timestamp() + i64::from(query.to.timestamp_subsec_nanos() > 0),
            gateway: query.gateway.clone(),
            api: query.api.clone(),
            operation: query.operation.clone(),
            product: query.product.clone(),
            subscription: query.subscription.clone(),
            group_by: dims.clone(),
        };
        let sums = if filter.from_minute < filter.to_minute {
            self.store.analytics(&filter)?
        } else {
            Vec::new()
        };
        let mut total = Totals::default();
        let mut groups = Vec::new();
        for s in &sums {
            let t = Totals::from_sum(s);
            total.add(&t);
            if !dims.is_empty() && t.requests > 0 {
                groups.push(AnalyticsGroup {
                    key: GroupKey::from_values(&dims, &s.group),
                    stats: t.stats(),
                });
            }
        }
        groups.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(AnalyticsReport {
            from: query.from,
            to: query.to,
            group_by: query.group_by,
            total: total.stats(),
            groups,
        })
    }

    /// `GET /api/v1/telemetry`: the last `minutes` minutes per API and status. Blocking.
    pub fn summary(
        &self,
        gateway: Option<&str>,
        api: Option<&str>,
        minutes: i64,
        now: DateTime<Utc>,
    ) -> Result<Summary, StoreError> {
        let from = minute_of(now.timestamp()) - (minutes - 1) * 60;
        let sums = self.store.analytics(&AnalyticsFilter {
            from_minute: from,
            to_minute: now.timestamp() + 1,
            gateway: gateway.map(str::to_owned),
            api: api.map(str::to_owned),
            group_by: vec![Dimension::Api, Dimension::Status],
            ..AnalyticsFilter::default()
        })?;
        let mut apis: BTreeMap<String, (Totals, BTreeMap<String, u64>)> = BTreeMap::new();
        let mut total = Totals::default();
        for s in &sums {
            let t = Totals::from_sum(s);
            let (sum, statuses) = apis.entry(s.group[0].clone()).or_default();
            sum.add(&t);
            total.add(&t);
            *statuses.entry(s.group[1].clone()).or_default() += t.requests;
        }
        let apis: Vec<ApiSummary> = apis
            .into_iter()
            .map(|(api, (t, statuses))| {
                let stats = t.stats();
                ApiSummary {
                    api,
                    requests: stats.requests,
                    errors: stats.errors,
                    avg_duration_ms: stats.avg_ms.unwrap_or(0.0),
                    max_duration_ms: stats.max_ms.unwrap_or(0.0),
                    avg_backend_duration_ms: stats.avg_backend_ms.unwrap_or(0.0),
                    p50_ms: stats.p50_ms,
                    p95_ms: stats.p95_ms,
                    p99_ms: stats.p99_ms,
                    cache_hits: stats.cache_hits,
                    request_bytes: stats.request_bytes,
                    response_bytes: stats.response_bytes,
                    statuses,
                }
            })
            .collect();
        Ok(Summary {
            from: DateTime::from_timestamp(from, 0).unwrap_or(now),
            to: now,
            minutes,
            gateway: gateway.map(str::to_owned),
            requests: total.requests,
            errors: total.errors,
            apis,
        })
    }
}

/// Sums with the histogram, added up across groups in Rust (the total of a report).
#[derive(Debug, Clone, PartialEq)]
struct Totals {
    requests: u64,
    errors: u64,
    cache_hits: u64,
    request_bytes: u64,
    response_bytes: u64,
    total_duration_us: u64,
    max_duration_us: u64,
    backend_duration_us: u64,
    latency: [u64; LATENCY_BUCKETS],
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            cache_hits: 0,
            request_bytes: 0,
            response_bytes: 0,
            total_duration_us: 0,
            max_duration_us: 0,
            backend_duration_us: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Totals {
    fn from_sum(s: &AnalyticsSum) -> Self {
        let mut t = Totals {
            requests: unsigned(s.requests),
            errors: unsigned(s.errors),
            cache_hits: unsigned(s.cache_hits),
            request_bytes: unsigned(s.request_bytes),
            response_bytes: unsigned(s.response_bytes),
            total_duration_us: unsigned(s.total_duration_us),
            max_duration_us: unsigned(s.max_duration_us),
            backend_duration_us: unsigned(s.backend_duration_us),
            ..Totals::default()
        };
        for (bucket, n) in &s.latency {
            if let Some(slot) = usize::try_from(*bucket)
                .ok()
                .and_then(|b| t.latency.get_mut(b))
            {
                *slot += unsigned(*n);
            }
        }
        t
    }

    fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.cache_hits += o.cache_hits;
        self.request_bytes += o.request_bytes;
        self.response_bytes += o.response_bytes;
        self.total_duration_us += o.total_duration_us;
        self.max_duration_us = self.max_duration_us.max(o.max_duration_us);
        self.backend_duration_us += o.backend_duration_us;
        for (a, b) in self.latency.iter_mut().zip(o.latency.iter()) {
            *a += b;
        }
    }

    fn stats(&self) -> Stats {
        // Milliseconds, rounded to the microsecond.
        let ms = |us: f64| us.round() / 1000.0;
        let per_request =
            |total: u64| (self.requests > 0).then(|| ms(total as f64 / self.requests as f64));
        let quantile = |q| latency_quantile(&self.latency, q, Some(self.max_duration_us)).map(ms);
        Stats {
            requests: self.requests,
            errors: self.errors,
            error_rate: if self.requests == 0 {
                0.0
            } else {
                self.errors as f64 / self.requests as f64
            },
            cache_hits: self.cache_hits,
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            avg_ms: per_request(self.total_duration_us),
            avg_backend_ms: per_request(self.backend_duration_us),
            max_ms: (self.requests > 0).then(|| ms(self.max_duration_us as f64)),
            p50_ms: quantile(0.5),
            p95_ms: quantile(0.95),
            p99_ms: quantile(0.99),
        }
    }
}

/// What the analytics report per group and in total. Durations in milliseconds with
/// microsecond precision; `null` without requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Stats {
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    /// `errors / requests`; 0 without requests.
    pub error_rate: f64,
    /// Answers served from the gateway's response cache.
    pub cache_hits: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub avg_ms: Option<f64>,
    pub avg_backend_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// `group_by` of `GET /api/v1/analytics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupBy {
    /// The total only.
    None,
    Api,
    /// Per API and operation (an operation's name is unique within its API).
    Operation,
    Gateway,
    Product,
    Subscription,
    Status,
    Minute,
}

impl GroupBy {
    pub const ALL: [GroupBy; 8] = [
        GroupBy::None,
        GroupBy::Api,
        GroupBy::Operation,
        GroupBy::Gateway,
        GroupBy::Product,
        GroupBy::Subscription,
        GroupBy::Status,
        GroupBy::Minute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::None => "none",
            GroupBy::Api => "api",
            GroupBy::Operation => "operation",
            GroupBy::Gateway => "gateway",
            GroupBy::Product => "product",
            GroupBy::Subscription => "subscription",
            GroupBy::Status => "status",
            GroupBy::Minute => "minute",
        }
    }

    fn dimensions(self) -> Vec<Dimension> {
        match self {
            GroupBy::None => vec![],
            GroupBy::Api => vec![Dimension::Api],
            GroupBy::Operation => vec![Dimension::Api, Dimension::Operation],
            GroupBy::Gateway => vec![Dimension::Gateway],
            GroupBy::Product => vec![Dimension::Product],
            GroupBy::Subscription => vec![Dimension::Subscription],
            GroupBy::Status => vec![Dimension::Status],
            GroupBy::Minute => vec![Dimension::Minute],
        }
    }
}

/// A report group's values of the dimensions grouped by; the others are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GroupKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minute: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl GroupKey {
    fn from_values(dims: &[Dimension], values: &[String]) -> Self {
        let mut k = GroupKey::default();
        for (d, v) in dims.iter().zip(values) {
            match d {
                Dimension::Minute => {
                    k.minute = v
                        .parse::<i64>()
                        .ok()
                        .and_then(|s| DateTime::from_timestamp(s, 0));
                }
                Dimension::Gateway => k.gateway = Some(v.clone()),
                Dimension::Api => k.api = Some(v.clone()),
                Dimension::Operation => k.operation = Some(v.clone()),
                Dimension::Product => k.product = Some(v.clone()),
                Dimension::Subscription => k.subscription = Some(v.clone()),
                Dimension::Status => k.status = v.parse().ok(),
            }
        }
        k
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AnalyticsGroup {
    #[serde(flatten)]
    pub key: GroupKey,
    #[serde(flatten)]
    pub stats: Stats,
}

/// `GET /api/v1/analytics` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AnalyticsReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: GroupBy,
    pub total: Stats,
    /// One per group with requests, ordered by the group's values (`minute` ascending).
    pub groups: Vec<AnalyticsGroup>,
}

/// A validated `GET /api/v1/analytics` query.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyticsQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub gateway: Option<String>,
    pub api: Option<String>,
    pub operation: Option<String>,
    pub product: Option<String>,
    pub subscription: Option<String>,
    pub group_by: GroupBy,
}

/// Default window when `from` is not given: the hour before `to`.
pub const DEFAULT_WINDOW_SECS: i64 = 3600;

impl AnalyticsQuery {
    /// The query from its parameters, every problem listed. `from` after `to` is a valid,
    /// empty window (a rule between two parameters no schema can state).
    pub fn parse(params: &[(String, String)], now: DateTime<Utc>) -> Result<Self, Problems> {
        let mut problems = Problems::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut q = AnalyticsQuery {
            from: now,
            to: now,
            gateway: None,
            api: None,
            operation: None,
            product: None,
            subscription: None,
            group_by: GroupBy::Api,
        };
        let mut from = None;
        let time =
            |name: &str, v: &str, problems: &mut Problems| match DateTime::parse_from_rfc3339(v) {
                Ok(t) => Some(within_rfc3339_years(t.with_timezone(&Utc))),
                Err(e) => {
                    problems.push(name, format!("not an RFC 3339 date-time ({e}): {v:?}"));
                    None
                }
            };
        for (name, value) in params {
            if !seen.insert(name.as_str()) {
                problems.push(name.as_str(), "given more than once");
                continue;
            }
            match name.as_str() {
                "from" => from = time("from", value, &mut problems),
                "to" => {
                    if let Some(t) = time("to", value, &mut problems) {
                        q.to = t;
                    }
                }
                "gateway" => q.gateway = Some(value.clone()),
                "api" => q.api = Some(value.clone()),
                "operation" => q.operation = Some(value.clone()),
                "product" => q.product = Some(value.clone()),
                "subscription" => q.subscription = Some(value.clone()),
                "group_by" => match GroupBy::ALL.iter().find(|g| g.as_str() == value) {
                    Some(g) => q.group_by = *g,
                    None => problems.push(
                        "group_by",
                        format!(
                            "must be one of {}, not {value:?}",
                            GroupBy::ALL.map(GroupBy::as_str).join(", ")
                        ),
                    ),
                },
                other => problems.push(
                    other,
                    "unknown parameter; known: from, to, gateway, api, operation, product, \
                     subscription, group_by",
                ),
            }
        }
        q.from = from.unwrap_or_else(|| {
            within_rfc3339_years(q.to - chrono::Duration::seconds(DEFAULT_WINDOW_SECS))
        });
        if problems.is_empty() {
            Ok(q)
        } else {
            Err(problems)
        }
    }
}

/// `t` kept within the years 0000..=9999 (UTC), so the answer echoes RFC 3339 date-times even
/// for an offset that crosses a bound (`9999-12-31T23:59:59-05:00`); nothing is stored there.
fn within_rfc3339_years(t: DateTime<Utc>) -> DateTime<Utc> {
    let bound = |y, m, d, h, min, s| {
        chrono::NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|d| d.and_hms_opt(h, min, s))
            .map(|n| n.and_utc())
    };
    match (bound(0, 1, 1, 0, 0, 0), bound(9999, 12, 31, 23, 59, 59)) {
        (Some(lo), Some(hi)) => t.clamp(lo, hi),
        _ => t,
    }
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
    /// Milliseconds, microsecond precision (so are the others).
    pub avg_duration_ms: f64,
    pub max_duration_ms: f64,
    pub avg_backend_duration_ms: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub cache_hits: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Request count per status code.
    pub statuses: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::store::StoreOptions;
    use outpost_model::wire::{AggregateKey, RequestAggregate, latency_bucket};

    fn agg(minute: i64, api: &str, status: u16, cache: &str, us: &[u64]) -> RequestAggregate {
        let mut latency: Vec<(u16, u64)> = Vec::new();
        for &u in us {
            let b = latency_bucket(u) as u16;
            match latency.iter_mut().find(|(x, _)| *x == b) {
                Some((_, n)) => *n += 1,
                None => latency.push((b, 1)),
            }
        }
        latency.sort_unstable();
        RequestAggregate {
            key: AggregateKey {
                minute,
                api: api.into(),
                operation: "get".into(),
                status,
                cache: cache.into(),
                product: "gold".into(),
                subscription: "acme".into(),
            },
            count: us.len() as u64,
            total_duration_us: us.iter().sum(),
            max_duration_us: us.iter().copied().max().unwrap_or(0),
            backend_duration_us: 0,
            request_bytes: 1,
            response_bytes: 2,
            latency,
        }
    }

    fn batch(seq: u64, aggregates: Vec<RequestAggregate>) -> TelemetryBatch {
        TelemetryBatch {
            instance_id: "i-1".into(),
            sequence: seq,
            aggregates,
        }
    }

    fn analytics(retention_hours: u64) -> Analytics {
        let store = Store::open(std::path::Path::new(":memory:"), StoreOptions::default()).unwrap();
        Analytics::new(Arc::new(store), retention_hours)
    }

    fn query(params: &[(&str, &str)], now: DateTime<Utc>) -> AnalyticsQuery {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AnalyticsQuery::parse(&params, now).unwrap()
    }

    #[test]
    fn batches_merge_cache_outcomes_dedupe_and_skip_old_minutes() {
        let now: DateTime<Utc> = "2030-01-01T12:00:30Z".parse().unwrap();
        let m = minute_of(now.timestamp());
        let a = analytics(24);
        let b1 = batch(
            1,
            vec![
                agg(m, "orders", 200, "hit", &[100, 110]),
                agg(m, "orders", 200, "miss", &[900]),
                agg(m, "orders", 502, "none", &[40_000]),
                agg(m - 2 * 86_400, "orders", 200, "none", &[1]),
            ],
        );
        assert_eq!(
            a.ingest("gw", &b1, now).unwrap(),
            Ingested::Added {
                added: 3,
                skipped: 1
            }
        );
        assert_eq!(a.ingest("gw", &b1, now).unwrap(), Ingested::Duplicate);
        // The same sequence from another gateway is another batch.
        assert!(matches!(
            a.ingest("gw2", &b1, now).unwrap(),
            Ingested::Added { .. }
        ));
        let r = a
            .report(&query(&[("gateway", "gw"), ("group_by", "status")], now))
            .unwrap();
        assert_eq!(r.total.requests, 4);
        assert_eq!(r.total.errors, 1);
        assert_eq!(r.total.cache_hits, 2);
        assert_eq!(r.total.error_rate, 0.25);
        assert_eq!(r.groups.len(), 2);
        assert_eq!(r.groups[0].key.status, Some(200));
        assert_eq!(r.groups[0].stats.requests, 3);
        // 100 and 110 µs in [100, 120), 900 µs in [900, 1000): the median (rank 1.5) is
        // three quarters into [100, 120) → 115 µs.
        assert_eq!(r.groups[0].stats.p50_ms, Some(0.115));
        assert_eq!(r.groups[0].stats.max_ms, Some(0.9));
        assert_eq!(r.groups[0].stats.avg_ms, Some(0.37));
        let by_product = a
            .report(&query(
                &[("group_by", "product"), ("subscription", "acme")],
                now,
            ))
            .unwrap();
        assert_eq!(by_product.groups[0].key.product.as_deref(), Some("gold"));
        assert_eq!(by_product.total.requests, 8);

        let summary = a.summary(Some("gw"), None, 60, now).unwrap();
        assert_eq!(summary.requests, 4);
        assert_eq!(summary.apis[0].statuses["502"], 1);
        assert_eq!(summary.apis[0].max_duration_ms, 40.0);
    }

    #[test]
    fn a_histogram_that_does_not_add_up_is_refused() {
        let now: DateTime<Utc> = "2030-01-01T12:00:30Z".parse().unwrap();
        let a = analytics(24);
        let mut bad = agg(minute_of(now.timestamp()), "a", 200, "none", &[5]);
        bad.latency = vec![(200, 1)];
        let err = a.ingest("gw", &batch(1, vec![bad]), now).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("aggregates[0].latency"), "{text}");
        assert!(text.contains("bucket 200"), "{text}");
        // Nothing recorded: the corrected batch with the same sequence is added.
        let good = agg(minute_of(now.timestamp()), "a", 200, "none", &[5]);
        assert!(matches!(
            a.ingest("gw", &batch(1, vec![good]), now).unwrap(),
            Ingested::Added { .. }
        ));
    }

    #[test]
    fn old_minutes_are_purged_after_the_retention() {
        let day0: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
        let a = analytics(1);
        a.ingest(
            "gw",
            &batch(1, vec![agg(day0.timestamp(), "a", 200, "none", &[5])]),
            day0,
        )
        .unwrap();
        let window = [
            ("from", "2029-12-31T00:00:00Z"),
            ("to", "2030-01-02T00:00:00Z"),
        ];
        assert_eq!(a.report(&query(&window, day0)).unwrap().total.requests, 1);
        assert_eq!(a.purge(day0 + chrono::Duration::minutes(59)).unwrap(), 0);
        assert_eq!(a.purge(day0 + chrono::Duration::minutes(61)).unwrap(), 1);
        assert_eq!(a.report(&query(&window, day0)).unwrap().total.requests, 0);
    }

    #[test]
    fn query_parameters_are_all_checked() {
        let now: DateTime<Utc> = "2030-01-01T12:00:30Z".parse().unwrap();
        let q = query(&[], now);
        assert_eq!(
            (q.from, q.to, q.group_by),
            (now - chrono::Duration::hours(1), now, GroupBy::Api)
        );
        let params: Vec<(String, String)> = [
            ("from", "noon"),
            ("group_by", "colour"),
            ("to", "2030-01-01T00:00:00+01:00"),
            ("to", "2030-01-01T00:00:00Z"),
            ("nope", "1"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let p = AnalyticsQuery::parse(&params, now).unwrap_err();
        let paths: Vec<&str> = p.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["from", "group_by", "to", "nope"]);
        let edge = query(&[("to", "9999-12-31T23:59:59-05:00")], now);
        assert_eq!(edge.to.to_rfc3339(), "9999-12-31T23:59:59+00:00");
        let early = query(&[("to", "0000-01-01T00:00:00Z")], now);
        assert_eq!(early.from, early.to);
    }
}
