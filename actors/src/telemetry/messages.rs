//! What the telemetry buffer is asked.

use actix::Message;

/// From tests and the shutdown path: drain the counters now and try to upload the backlog.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Flush;

/// From the gateway's stop sequence: drain the counters, move what memory holds to the spool
/// (when one is set) so it is uploaded after the restart, and stop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// From tests and diagnostics: how much is waiting.
#[derive(Debug, Message)]
#[rtype(result = "TelemetryStatus")]
pub struct GetTelemetryStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryStatus {
    /// Aggregates waiting in memory.
    pub buffered: usize,
    /// Batches waiting in the spool directory.
    pub spooled: usize,
    /// Batches the control plane acknowledged since start.
    pub uploaded: u64,
    /// Aggregates dropped since start: to stay within bounds, or with a refused batch.
    pub dropped: u64,
    /// Batches the control plane refused for their content (poison batches), dropped.
    pub refused: u64,
}
