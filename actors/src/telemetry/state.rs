//! Telemetry off the hot path: request outcomes are added into sharded counters keyed by
//! (minute, API, operation, status, cache); the actor drains them into numbered batches kept in
//! a bounded outbox until the control plane has them.

use std::collections::VecDeque;
use std::sync::Arc;

use dashmap::DashMap;
use outpost_model::wire::{AggregateKey, RequestAggregate, TelemetryBatch};

use super::spool::Spool;

/// One finished request, as the traffic pipeline reports it.
#[derive(Debug, Clone, Copy)]
pub struct RequestSample<'a> {
    /// Unix time the request finished, seconds.
    pub unix_secs: i64,
    pub api: &'a str,
    pub operation: &'a str,
    pub status: u16,
    /// `hit`, `miss` or `none`.
    pub cache: &'a str,
    pub duration_ms: u64,
    pub backend_duration_ms: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counters {
    count: u64,
    total_duration_ms: u64,
    max_duration_ms: u64,
    backend_duration_ms: u64,
    request_bytes: u64,
    response_bytes: u64,
}

/// The hot-path side: cloned into every traffic worker, written under one shard lock per
/// request, never waits on the actor.
#[derive(Debug, Clone, Default)]
pub struct Aggregator(Arc<DashMap<AggregateKey, Counters>>);

impl Aggregator {
    pub fn record(&self, r: &RequestSample<'_>) {
        let key = AggregateKey {
            minute: r.unix_secs.div_euclid(60) * 60,
            api: r.api.to_owned(),
            operation: r.operation.to_owned(),
            status: r.status,
            cache: r.cache.to_owned(),
        };
        let mut c = self.0.entry(key).or_default();
        c.count += 1;
        c.total_duration_ms += r.duration_ms;
        c.max_duration_ms = c.max_duration_ms.max(r.duration_ms);
        c.backend_duration_ms += r.backend_duration_ms;
        c.request_bytes += r.request_bytes;
        c.response_bytes += r.response_bytes;
    }

    /// Takes everything recorded so far. `retain` removes shard by shard under the shard's
    /// lock, so a concurrent `record` lands either in this drain or in the next, never lost.
    pub fn drain(&self) -> Vec<RequestAggregate> {
        let mut out = Vec::new();
        self.0.retain(|k, c| {
            out.push(RequestAggregate {
                key: k.clone(),
                count: c.count,
                total_duration_ms: c.total_duration_ms,
                max_duration_ms: c.max_duration_ms,
                backend_duration_ms: c.backend_duration_ms,
                request_bytes: c.request_bytes,
                response_bytes: c.response_bytes,
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
        if let Some(front) = self.memory.front()
            && front.sequence == batch.sequence
            && front.instance_id == batch.instance_id
        {
            self.in_memory -= front.aggregates.len();
            self.memory.pop_front();
            return;
        }
        if let Some(spool) = &mut self.spool
            && spool.peek().is_some_and(|b| b == *batch)
        {
            spool.pop();
        }
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

fn batch(instance_id: &str, sequence: u64, aggregates: Vec<RequestAggregate>) -> TelemetryBatch {
    TelemetryBatch {
        instance_id: instance_id.to_owned(),
        sequence,
        aggregates,
    }
}
