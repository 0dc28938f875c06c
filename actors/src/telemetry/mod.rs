//! `TelemetryBuffer`: request metrics from the traffic pipeline to the control plane, without
//! slowing requests down and without losing them to an outage.
//!
//! Traffic workers write into an [`Aggregator`] (sharded counters, no mailbox). Every
//! `telemetry.flush_interval_secs` the actor drains it into a numbered [`TelemetryBatch`] and
//! uploads the backlog oldest first. A failed upload is retried on the next tick with the same
//! sequence number, so the control plane can drop a duplicate. While the control plane is away
//! batches wait in memory up to `telemetry.max_buffered` aggregates, then in the spool
//! directory if one is set; otherwise the oldest are dropped and counted in
//! `outpost_telemetry_dropped_total{reason="full"}`.
//!
//! A batch the control plane refuses for its content (400, 413, 422: [`state::is_poison`]) is
//! a *poison batch*: it would be refused for ever and hold up every batch after it, so it is
//! dropped, counted in `outpost_telemetry_dropped_total{reason="refused"}`, logged once at
//! warn with the status and the control plane's problem text, and the next batch goes.
//!
//! [`TelemetryBatch`]: outpost_model::wire::TelemetryBatch

pub mod messages;
pub mod spool;
pub mod state;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::link::{CallError, Link, LinkConfig};
use crate::route_table::{RequestObserver, RequestRecord};
pub use messages::{Flush, GetTelemetryStatus, Shutdown, TelemetryStatus};
use state::Outbox;
pub use state::{Aggregator, Verdict};

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `None` in offline mode: counters are drained and discarded.
    pub link: Option<Arc<LinkConfig>>,
    pub instance_id: String,
    pub flush_interval: Duration,
    pub max_buffered: usize,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: u64,
}

pub struct TelemetryBuffer {
    config: TelemetryConfig,
    aggregator: Aggregator,
    outbox: Outbox,
    link: Option<Link>,
    uploading: bool,
    uploaded: u64,
    dropped: u64,
    refused: u64,
}

impl TelemetryBuffer {
    /// The actor and the recorder the traffic pipeline writes into. A spool directory that
    /// cannot be opened is reported and the buffer runs memory-only.
    pub fn new(config: TelemetryConfig) -> (Self, Aggregator) {
        let spool = config.spool_dir.as_deref().and_then(|dir| {
            spool::Spool::open(dir, config.spool_max_bytes)
                .inspect_err(|e| {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot open the telemetry spool; keeping telemetry in memory only")
                })
                .ok()
        });
        let outbox = Outbox::new(config.instance_id.clone(), config.max_buffered, spool);
        let aggregator = Aggregator::default();
        (
            Self {
                config,
                aggregator: aggregator.clone(),
                outbox,
                link: None,
                uploading: false,
                uploaded: 0,
                dropped: 0,
                refused: 0,
            },
            aggregator,
        )
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        let aggregates = self.aggregator.drain();
        if self.link.is_none() {
            return;
        }
        let pushed = self.outbox.push(aggregates);
        self.count_dropped(pushed.dropped);
        self.publish_gauges();
        self.upload_next(ctx);
    }

    fn count_dropped(&mut self, n: u64) {
        if n > 0 {
            self.dropped += n;
            metrics::counter!("outpost_telemetry_dropped_total", "reason" => "full").increment(n);
            tracing::warn!(
                dropped = n,
                "telemetry buffer full; dropped the oldest aggregates"
            );
        }
    }

    fn publish_gauges(&self) {
        metrics::gauge!("outpost_telemetry_buffered").set(self.outbox.buffered() as f64);
        metrics::gauge!("outpost_telemetry_spooled_batches").set(self.outbox.spooled() as f64);
    }

    /// Uploads the oldest batch, then the next, until the backlog is empty or a call fails
    /// (the next tick retries). A poison batch is dropped and the next one goes at once.
    fn upload_next(&mut self, ctx: &mut Context<Self>) {
        let Some(link) = self.link.clone() else {
            return;
        };
        if self.uploading {
            return;
        }
        let Some(batch) = self.outbox.oldest() else {
            return;
        };
        self.uploading = true;
        let call = async move {
            let result = link.upload_telemetry(&batch).await;
            (batch, result)
        };
        ctx.spawn(call.into_actor(self).map(|(batch, result), act, ctx| {
            act.uploading = false;
            match Verdict::of(&result) {
                Verdict::Acknowledged => {
                    act.outbox.acknowledge(&batch);
                    act.uploaded += 1;
                    metrics::counter!("outpost_telemetry_uploaded_total").increment(1);
                    act.publish_gauges();
                    act.upload_next(ctx);
                }
                Verdict::Poison => {
                    let dropped = act.outbox.discard(&batch);
                    act.refused += 1;
                    act.dropped += dropped;
                    metrics::counter!("outpost_telemetry_dropped_total", "reason" => "refused")
                        .increment(dropped);
                    if let Err(CallError::Refused { status, reason }) = &result {
                        tracing::warn!(
                            sequence = batch.sequence,
                            aggregates = batch.aggregates.len(),
                            status,
                            problem = %reason,
                            "the control plane refused a telemetry batch for its content; \
                             dropped it (it would be refused on every retry) and going on \
                             with the next"
                        );
                    }
                    act.publish_gauges();
                    act.upload_next(ctx);
                }
                Verdict::Retry => {
                    if let Err(e) = &result {
                        tracing::debug!(
                            sequence = batch.sequence,
                            error = %e,
                            "telemetry upload failed; keeping the batch"
                        );
                    }
                }
            }
        }));
    }
}

/// The traffic pipeline's hook: one shard-locked update per request, no mailbox, no
/// allocation and no reference count touched once the series exists (names are shared
/// `Arc<str>`s, cloned only into a new entry).
impl RequestObserver for Aggregator {
    fn observe(&self, r: &RequestRecord) {
        // The clock's seconds as they are: chrono's `Utc::now` turns them into a date and
        // `timestamp` back (about 120 instructions a request for nothing).
        self.record_request(unix_now(), r);
    }
}

/// Seconds since the Unix epoch (negative before it, as `chrono`'s `timestamp`).
fn unix_now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs_f64().ceil() as u64).unwrap_or(i64::MAX),
    }
}

impl Actor for TelemetryBuffer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link = self.config.link.clone().map(Link::new);
        ctx.run_interval(self.config.flush_interval, |act, ctx| act.flush(ctx));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if self.link.is_none() {
            return;
        }
        let pushed = self.outbox.push(self.aggregator.drain());
        self.count_dropped(pushed.dropped);
        let moved = self.outbox.persist();
        if moved > 0 {
            tracing::info!(batches = moved, "telemetry spooled for the next start");
        }
    }
}

impl Handler<Flush> for TelemetryBuffer {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) {
        self.flush(ctx);
    }
}

impl Handler<Shutdown> for TelemetryBuffer {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        // `stopped` does the draining, so an actor stopped any other way keeps its data too.
        ctx.stop();
    }
}

impl Handler<GetTelemetryStatus> for TelemetryBuffer {
    type Result = MessageResult<GetTelemetryStatus>;
    fn handle(&mut self, _: GetTelemetryStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(TelemetryStatus {
            buffered: self.outbox.buffered(),
            spooled: self.outbox.spooled(),
            uploaded: self.uploaded,
            dropped: self.dropped,
            refused: self.refused,
        })
    }
}
