//! Telemetry off the hot path: request outcomes are added into sharded counters keyed by
//! (minute, API, operation, status, cache, product, subscription), each with a fixed-size
//! latency histogram; the actor drains them into numbered batches kept in a bounded outbox
//! until the control plane has them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use outpost_model::wire::{
    AggregateKey, LATENCY_BUCKETS, RequestAggregate, TelemetryBatch, latency_bucket,
};

use super::spool::Spool;
use crate::link::CallError;

/// One finished request, as the traffic pipeline reports it. Names are shared `Arc<str>`s, so
/// recording allocates nothing once a series exists in the current minute.
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

/// The key in the hot map: like [`AggregateKey`] but made of shared names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    minute: i64,
    api: Option<Arc<str>>,
    operation: Option<Arc<str>>,
    status: u16,
    cache: &'static str,
    product: Option<Arc<str>>,
    subscription: Option<Arc<str>>,
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

/// The hot-path side: cloned into every traffic worker, written under one shard lock per
/// request (a few additions into a fixed array), never waits on the actor. The keys are the
/// configuration's names, hashed with foldhash: SipHash was about 1,000 instructions a request.
#[derive(Debug, Clone, Default)]
pub struct Aggregator(Arc<DashMap<SeriesKey, Counters, foldhash::fast::RandomState>>);

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn name(n: &Option<Arc<str>>) -> String {
    n.as_deref().unwrap_or("").to_owned()
}

impl Aggregator {
    pub fn record(&self, r: RequestSample) {
        let key = SeriesKey {
            minute: r.unix_secs.div_euclid(60) * 60,
            api: r.api,
            operation: r.operation,
            status: r.status,
            cache: r.cache,
            product: r.product,
            subscription: r.subscription,
        };
        let us = micros(r.duration);
        let mut c = self.0.entry(key).or_default();
        c.count += 1;
        c.total_duration_us = c.total_duration_us.saturating_add(us);
        c.max_duration_us = c.max_duration_us.max(us);
        c.backend_duration_us = c
            .backend_duration_us
            .saturating_add(r.backend_duration.map_or(0, micros));
        c.request_bytes += r.request_bytes;
        c.response_bytes += r.response_bytes;
        c.latency[latency_bucket(us)] += 1;
    }

    /// Takes everything recorded so far. `retain` removes shard by shard under the shard's
    /// lock, so a concurrent `record` lands either in this drain or in the next, never lost.
    pub fn drain(&self) -> Vec<RequestAggregate> {
        let mut out = Vec::new();
        self.0.retain(|k, c| {
            out.push(RequestAggregate {
                key: AggregateKey {
                    minute: k.minute,
                    api: name(&k.api),
                    operation: name(&k.operation),
                    status: k.status,
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
        out
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
