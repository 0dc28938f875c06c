//! Telemetry off the hot path: request outcomes are added into sharded counters keyed by
//! (minute, API, operation, status, cache, product, subscription), each with a fixed-size
//! latency histogram; the actor drains them into numbered batches kept in a bounded outbox
//! until the control plane has them.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use outpost_model::wire::{
    AggregateKey, LATENCY_BUCKETS, RequestAggregate, TelemetryBatch, latency_bucket,
};

use super::spool::Spool;
use crate::link::CallError;
use crate::route_table::RequestRecord;
use crate::word_hash::WordHashing;

/// One finished request as the unit tests write it, field by field; the traffic pipeline
/// records its [`RequestRecord`] directly ([`Aggregator::record_request`]).
#[cfg(test)]
#[derive(Debug, Clone)]
pub struct RequestSample {
    /// Unix time the request finished, seconds.
    pub unix_secs: i64,
    pub api: Option<Arc<str>>,
    pub operation: Option<Arc<str>>,
    pub status: u16,
    /// `hit`, `miss` or `none`.
    pub cache: &'static str,
    pub product: Option<Arc<str>>,
    /// The subscription's name (never its key).
    pub subscription: Option<Arc<str>>,
    pub duration: Duration,
    pub backend_duration: Option<Duration>,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// A series' names, as [`AggregateKey`] has them but shared.
#[derive(Debug, Clone)]
struct SeriesNames {
    api: Option<Arc<str>>,
    operation: Option<Arc<str>>,
    cache: &'static str,
    product: Option<Arc<str>>,
    subscription: Option<Arc<str>>,
}

/// The key in the hot map: the minute, the status and the identity (address) of each name.
/// Hashing four names' bytes and comparing them cost about 300 instructions a request; the
/// traffic pipeline's names are the configuration's own `Arc`s, the same for every request of
/// a series, so their addresses tell series apart. Each entry holds its names, so an address
/// cannot be reused by another name while it is in the map. Equal names at other addresses (a
/// new configuration revision) make another entry of the same series, merged when drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SeriesId {
    minute: i64,
    api: usize,
    operation: usize,
    product: usize,
    subscription: usize,
    cache: (usize, usize),
    status: u16,
}

fn address(name: Option<&Arc<str>>) -> usize {
    name.map_or(0, |n| Arc::as_ptr(n).cast::<u8>() as usize)
}

impl SeriesId {
    fn of(minute: i64, status: u16, names: NamesRef<'_>) -> Self {
        Self {
            minute,
            api: address(names.api),
            operation: address(names.operation),
            product: address(names.product),
            subscription: address(names.subscription),
            cache: (names.cache.as_ptr() as usize, names.cache.len()),
            status,
        }
    }
}

impl Hash for SeriesId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_i64(self.minute);
        state.write_usize(self.api);
        state.write_usize(self.operation);
        state.write_usize(self.product);
        state.write_usize(self.subscription);
        state.write_usize(self.cache.0);
        state.write_usize(self.cache.1);
        state.write_u16(self.status);
    }
}

/// The names of a request, borrowed: cloned only when they start a new entry.
#[derive(Clone, Copy)]
struct NamesRef<'a> {
    api: Option<&'a Arc<str>>,
    operation: Option<&'a Arc<str>>,
    cache: &'static str,
    product: Option<&'a Arc<str>>,
    subscription: Option<&'a Arc<str>>,
}

impl NamesRef<'_> {
    fn to_owned(self) -> SeriesNames {
        SeriesNames {
            api: self.api.cloned(),
            operation: self.operation.cloned(),
            cache: self.cache,
            product: self.product.cloned(),
            subscription: self.subscription.cloned(),
        }
    }
}

/// The numbers of one request.
#[derive(Clone, Copy)]
struct Numbers {
    duration: Duration,
    backend_duration: Option<Duration>,
    request_bytes: u64,
    response_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Counters {
    count: u64,
    total_duration_us: u64,
    max_duration_us: u64,
    backend_duration_us: u64,
    request_bytes: u64,
    response_bytes: u64,
    latency: [u64; LATENCY_BUCKETS],
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            count: 0,
            total_duration_us: 0,
            max_duration_us: 0,
            backend_duration_us: 0,
            request_bytes: 0,
            response_bytes: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

impl Counters {
    fn add(&mut self, n: Numbers) {
        let us = micros(n.duration);
        self.count += 1;
        self.total_duration_us = self.total_duration_us.saturating_add(us);
        self.max_duration_us = self.max_duration_us.max(us);
        self.backend_duration_us = self
            .backend_duration_us
            .saturating_add(n.backend_duration.map_or(0, micros));
        self.request_bytes += n.request_bytes;
        self.response_bytes += n.response_bytes;
        self.latency[latency_bucket(us)] += 1;
    }
}

/// One entry of the hot map: a series' names and what it counted.
#[derive(Debug)]
struct Series {
    names: SeriesNames,
    counters: Counters,
}

/// The hot-path side: cloned into every traffic worker, written under one shard lock per
/// request (a few additions into a fixed array), never waits on the actor.
#[derive(Debug, Clone, Default)]
pub struct Aggregator(Arc<DashMap<SeriesId, Series, WordHashing>>);

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn name(n: &Option<Arc<str>>) -> String {
    n.as_deref().unwrap_or("").to_owned()
}

impl Aggregator {
    #[cfg(test)]
    pub fn record(&self, r: RequestSample) {
        self.add(
            r.unix_secs,
            r.status,
            NamesRef {
                api: r.api.as_ref(),
                operation: r.operation.as_ref(),
                cache: r.cache,
                product: r.product.as_ref(),
                subscription: r.subscription.as_ref(),
            },
            Numbers {
                duration: r.duration,
                backend_duration: r.backend_duration,
                request_bytes: r.request_bytes,
                response_bytes: r.response_bytes,
            },
        );
    }

    /// Adds a request finished at `unix_secs` to its series, cloning its names only when they
    /// start a new entry.
    pub(crate) fn record_request(&self, unix_secs: i64, r: &RequestRecord) {
        self.add(
            unix_secs,
            r.status,
            NamesRef {
                api: r.api.as_ref(),
                operation: r.operation.as_ref(),
                cache: r.cache.as_str(),
                product: r.product.as_ref(),
                subscription: r.subscription.as_ref(),
            },
            Numbers {
                duration: r.duration,
                backend_duration: r.backend_duration,
                request_bytes: r.request_bytes,
                response_bytes: r.response_bytes,
            },
        );
    }

    fn add(&self, unix_secs: i64, status: u16, names: NamesRef<'_>, n: Numbers) {
        let id = SeriesId::of(unix_secs.div_euclid(60) * 60, status, names);
        self.0
            .entry(id)
            .or_insert_with(|| Series {
                names: names.to_owned(),
                counters: Counters::default(),
            })
            .counters
            .add(n);
    }

    /// Takes everything recorded so far. `retain` removes shard by shard under the shard's
    /// lock, so a concurrent `record` lands either in this drain or in the next, never lost.
    /// Entries of the same names (from two configuration revisions) become one aggregate.
    pub fn drain(&self) -> Vec<RequestAggregate> {
        let mut out: Vec<RequestAggregate> = Vec::new();
        self.0.retain(|id, series| {
            let (k, c) = (&series.names, &series.counters);
            out.push(RequestAggregate {
                key: AggregateKey {
                    minute: id.minute,
                    api: name(&k.api),
                    operation: name(&k.operation),
                    status: id.status,
                    cache: k.cache.to_owned(),
                    product: name(&k.product),
                    subscription: name(&k.subscription),
                },
                count: c.count,
                total_duration_us: c.total_duration_us,
                max_duration_us: c.max_duration_us,
                backend_duration_us: c.backend_duration_us,
                request_bytes: c.request_bytes,
                response_bytes: c.response_bytes,
                latency: c
                    .latency
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(i, n)| (i as u16, *n))
                    .collect(),
            });
            false
        });
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|later, kept| {
            if later.key != kept.key {
                return false;
            }
            merge(kept, later);
            true
        });
        out
    }
}

/// Adds `other`'s counts into `into` (same key).
fn merge(into: &mut RequestAggregate, other: &RequestAggregate) {
    into.count += other.count;
    into.total_duration_us = into
        .total_duration_us
        .saturating_add(other.total_duration_us);
    into.max_duration_us = into.max_duration_us.max(other.max_duration_us);
    into.backend_duration_us = into
        .backend_duration_us
        .saturating_add(other.backend_duration_us);
    into.request_bytes += other.request_bytes;
    into.response_bytes += other.response_bytes;
    for &(bucket, n) in &other.latency {
        match into.latency.binary_search_by_key(&bucket, |&(b, _)| b) {
            Ok(i) => into.latency[i].1 += n,
            Err(i) => into.latency.insert(i, (bucket, n)),
        }
    }
}

/// What a push did beyond queueing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Sequence of the new batch; `None` when there was nothing to send.
    pub sequence: Option<u64>,
    /// Aggregates dropped to stay within bounds.
    pub dropped: u64,
}

/// Batches waiting for upload, oldest first: the memory queue, then the spool. While the
/// spool holds anything, new batches go to the spool too, so the order is kept.
#[derive(Debug)]
pub struct Outbox {
    instance_id: String,
    next_sequence: u64,
    memory: VecDeque<TelemetryBatch>,
    in_memory: usize,
    max_buffered: usize,
    spool: Option<Spool>,
}

impl Outbox {
    pub fn new(instance_id: String, max_buffered: usize, spool: Option<Spool>) -> Self {
        Self {
            instance_id,
            next_sequence: 1,
            memory: VecDeque::new(),
            in_memory: 0,
            max_buffered: max_buffered.max(1),
            spool,
        }
    }

    /// Aggregates held in memory.
    pub fn buffered(&self) -> usize {
        self.in_memory
    }

    pub fn spooled(&self) -> usize {
        self.spool.as_ref().map_or(0, Spool::len)
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.spooled() == 0
    }

    /// Queues `aggregates` as the next batch.
    pub fn push(&mut self, mut aggregates: Vec<RequestAggregate>) -> Pushed {
        let mut pushed = Pushed::default();
        if aggregates.is_empty() {
            return pushed;
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        pushed.sequence = Some(sequence);
        let fits = self.in_memory + aggregates.len() <= self.max_buffered;
        if let Some(spool) = &mut self.spool
            && (!fits || !spool.is_empty())
        {
            let batch = batch(&self.instance_id, sequence, aggregates);
            match spool.push(&batch) {
                Ok(dropped) => {
                    pushed.dropped = dropped.iter().map(|&n| n as u64).sum();
                    return pushed;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot spool telemetry; keeping it in memory");
                    aggregates = batch.aggregates;
                }
            }
        }
        if aggregates.len() > self.max_buffered {
            pushed.dropped += (aggregates.len() - self.max_buffered) as u64;
            aggregates.truncate(self.max_buffered);
        }
        self.in_memory += aggregates.len();
        let batch = batch(&self.instance_id, sequence, aggregates);
        self.memory.push_back(batch);
        while self.in_memory > self.max_buffered {
            let oldest = self
                .memory
                .pop_front()
                .expect("over the bound means not empty");
            self.in_memory -= oldest.aggregates.len();
            pushed.dropped += oldest.aggregates.len() as u64;
        }
        pushed
    }

    /// The oldest batch, to upload. It stays queued (same sequence on retry) until
    /// [`Outbox::acknowledge`].
    pub fn oldest(&mut self) -> Option<TelemetryBatch> {
        if let Some(b) = self.memory.front() {
            return Some(b.clone());
        }
        self.spool.as_mut()?.peek()
    }

    /// The control plane has the oldest batch.
    pub fn acknowledge(&mut self, batch: &TelemetryBatch) {
        self.remove_oldest(batch);
    }

    /// The control plane will never accept the oldest batch ([`Verdict::Poison`]): it is
    /// removed so the ones after it can go. Returns the aggregates dropped with it (0 when
    /// `batch` is not the oldest any more).
    pub fn discard(&mut self, batch: &TelemetryBatch) -> u64 {
        if self.remove_oldest(batch) {
            batch.aggregates.len() as u64
        } else {
            0
        }
    }

    fn remove_oldest(&mut self, batch: &TelemetryBatch) -> bool {
        if let Some(front) = self.memory.front()
            && front.sequence == batch.sequence
            && front.instance_id == batch.instance_id
        {
            self.in_memory -= front.aggregates.len();
            self.memory.pop_front();
            return true;
        }
        if let Some(spool) = &mut self.spool
            && spool.peek().is_some_and(|b| b == *batch)
        {
            spool.pop();
            return true;
        }
        false
    }

    /// Moves what is in memory to the spool (at shutdown), so it survives the restart.
    pub fn persist(&mut self) -> usize {
        let Some(spool) = &mut self.spool else {
            return 0;
        };
        if !spool.is_empty() {
            // Memory batches are older than spooled ones; writing them now would put them
            // after. Keeping order matters less than keeping data: write anyway.
            tracing::debug!("spool not empty at shutdown; memory batches appended after it");
        }
        let mut moved = 0;
        while let Some(batch) = self.memory.pop_front() {
            self.in_memory -= batch.aggregates.len();
            if spool.push(&batch).is_ok() {
                moved += 1;
            }
        }
        moved
    }
}

/// What an upload's outcome means for the batch it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The control plane has it: remove it and upload the next.
    Acknowledged,
    /// Keep it and send the same batch (same sequence) on the next tick: the control plane is
    /// away or overloaded (connect failures, timeouts, 5xx, 408, 429), the token is refused
    /// (401/403: every batch would be, until a new token is deployed), or the refusal is about
    /// where or how the gateway calls rather than about this batch (see [`is_poison`]).
    Retry,
    /// The control plane refused this batch's content: sending the same bytes again can never
    /// work, and retrying would block every batch behind it. Drop it and upload the next.
    Poison,
}

impl Verdict {
    pub fn of(result: &Result<(), CallError>) -> Verdict {
        match result {
            Ok(()) => Verdict::Acknowledged,
            Err(CallError::Refused { status, .. }) if is_poison(*status) => Verdict::Poison,
            Err(_) => Verdict::Retry,
        }
    }
}

/// The refusals that are about the batch itself, so that the same batch is refused for ever:
/// 400 (it does not decode, or fails the control plane's checks: a histogram that does not add
/// up, too many aggregates, no instance id), 413 (larger than the control plane takes) and
/// 422 (well-formed but unacceptable content). Every other 4xx applies to any batch alike and
/// is retried, so a fault outside the batch never empties the backlog: 404/405/410 (a wrong
/// URL, a proxy in between, a control plane without the endpoint), 406/415 (content
/// negotiation), 407/421/426/431 (proxies, routing, headers — not the body), 409/425 (transient
/// by definition). 401/403/408/429 are classified by the link as token refusals or
/// unavailability before they get here.
pub fn is_poison(status: u16) -> bool {
    matches!(status, 400 | 413 | 422)
}

fn batch(instance_id: &str, sequence: u64, aggregates: Vec<RequestAggregate>) -> TelemetryBatch {
    TelemetryBatch {
        instance_id: instance_id.to_owned(),
        sequence,
        aggregates,
    }
}
