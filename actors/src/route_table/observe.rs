//! The per-request record the proxy hands to telemetry.
//!
//! It lives beside the route table because it speaks the table's language (API and operation
//! names come from the compiled table) and because both sides of the hook are in this crate's
//! reach: the proxy calls [`RequestObserver::observe`] once per request, and the
//! `TelemetryBuffer` implements it.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::shared_state::Verdict;

/// What the cache did for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CacheStatus {
    /// No cache policy ran.
    #[default]
    None,
    Hit,
    Miss,
}

impl CacheStatus {
    /// `none`, `hit`, `miss`, as in the telemetry wire format.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::None => "none",
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
        }
    }
}

/// One finished request (response fully sent, or the client went away).
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// `None` when no API matched (404).
    pub api: Option<Arc<str>>,
    pub operation: Option<Arc<str>>,
    pub subscription: Option<Arc<str>>,
    /// Borrowed for the standard methods (no allocation per request), owned for others.
    pub method: Cow<'static, str>,
    pub status: u16,
    pub client_ip: Option<IpAddr>,
    /// From the first byte read to the last byte written.
    pub duration: Duration,
    /// Time spent waiting for the backend's response headers, all attempts; `None` when the
    /// request never reached a backend.
    pub backend_duration: Option<Duration>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub cache: CacheStatus,
    /// Why the gateway failed the request, when it did (`SubscriptionKeyInvalid`,
    /// `BackendTimeout`, …).
    pub error_reason: Option<&'static str>,
    /// A gRPC call's `grpc-status` (from the backend's trailers or headers, or the one the
    /// gateway answered a refusal with).
    pub grpc_status: Option<u16>,
    // What the access log adds (the telemetry aggregates do without them).
    /// The request id (`{request.id}`: the trace id of the `traceparent` sent to the backend);
    /// empty when the request was refused before it was ready to forward.
    pub request_id: String,
    /// The product of the subscription the request came through.
    pub product: Option<Arc<str>>,
    /// Backend attempts beyond the first (`retry`).
    pub retries: u32,
    /// The last rate-limit verdict (`rate-limit`, `rate-limit-by-key`); `None` when no rate
    /// limit counted the request.
    pub rate_limit: Option<Verdict>,
    /// The matched API's `access-log` flag (true when no API matched).
    pub access_log: bool,
}

/// Receives every finished request. Called on the worker thread that served the request, so
/// an implementation must be quick and must not block (aggregate, or hand off to a channel).
pub trait RequestObserver: Send + Sync + 'static {
    fn observe(&self, record: &RequestRecord);
}

impl<F> RequestObserver for F
where
    F: Fn(&RequestRecord) + Send + Sync + 'static,
{
    fn observe(&self, record: &RequestRecord) {
        self(record)
    }
}
