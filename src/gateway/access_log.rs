//! The access log (`[access_log]`): one JSON line per request, to standard output or a file.
//!
//! The line is formatted on the worker that served the request, when the request is reported
//! (its body sent, or the client gone), and handed to a writer thread over a bounded channel:
//! a request never waits for the disk or the pipe. A full channel drops the line and counts it
//! (`outpost_access_log_dropped_total`). The line is the only allocation the log adds to a
//! request: the fields are borrowed from the request record and the request itself.
//!
//! Which requests: a share of them (`sample`, decided when the request arrives, so an unsampled
//! request costs one random number), minus those of APIs whose `access-log` flag is false.
//!
//! What a line never holds: the query string (it may carry the subscription key), header
//! values, the subscription key itself. The subscription is named, not shown.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use actix_http::{HttpMessage as _, Request};
use actix_web::http::header;
use chrono::{DateTime, Utc};
use outpost_actors::route_table::RequestRecord;
use outpost_actors::route_table::client_certificate::ClientCertificate;
use outpost_actors::shared_state::Verdict;
use serde::{Serialize, Serializer};

use super::settings::AccessLogSettings;

/// A line's usual size, so that most lines are one allocation.
const LINE_CAPACITY: usize = 640;

/// The log, shared by the traffic workers.
pub struct AccessLog {
    sample: f64,
    instance: Arc<str>,
    tx: SyncSender<Vec<u8>>,
    dropped: metrics::Counter,
    dropped_here: AtomicU64,
}

/// The writer thread; [`Writer::finish`] waits until every queued line is written.
pub struct Writer {
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Waits (at most `limit`) for the writer to drain its queue and exit, which it does once
    /// every [`AccessLog`] handle is gone (the traffic server stopped).
    pub fn finish(&self, limit: Duration) {
        let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) else {
            return;
        };
        let deadline = std::time::Instant::now() + limit;
        while !thread.is_finished() {
            if std::time::Instant::now() >= deadline {
                tracing::warn!("the access log writer did not finish in time");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = thread.join();
    }
}

impl AccessLog {
    /// Opens the destination and starts the writer; `None` when the log is disabled.
    pub fn start(
        settings: &AccessLogSettings,
        instance: &str,
    ) -> io::Result<Option<(Arc<AccessLog>, Writer)>> {
        if !settings.enabled {
            return Ok(None);
        }
        let out: Box<dyn Write + Send> = if settings.path == "-" {
            Box::new(StdoutLines)
        } else {
            let mut options = OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
            Box::new(options.open(&settings.path)?)
        };
        // The recorder must exist before the counter handle is taken, or it would count nowhere.
        let _ = super::ops::prometheus();
        let (log, rx) = Self::new(settings.sample, settings.buffer_lines, instance);
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(Some((
            Arc::new(log),
            Writer {
                thread: Mutex::new(Some(thread)),
            },
        )))
    }

    fn new(sample: f64, buffer_lines: usize, instance: &str) -> (Self, Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::sync_channel(buffer_lines.max(1));
        let log = AccessLog {
            sample,
            instance: instance.into(),
            tx,
            dropped: metrics::counter!("outpost_access_log_dropped_total"),
            dropped_here: AtomicU64::new(0),
        };
        (log, rx)
    }

    /// Lines this log dropped (its share of `outpost_access_log_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.dropped_here.load(Ordering::Relaxed)
    }

    /// Whether to log the request arriving now.
    pub fn sampled(&self) -> bool {
        self.sample >= 1.0 || (self.sample > 0.0 && rand::random::<f64>() < self.sample)
    }

    /// Writes the line of a finished request (unless its API is not logged).
    pub fn write(&self, entry: &Sampled, record: &RequestRecord) {
        if !record.access_log {
            return;
        }
        let line = format_line(entry, record, &self.instance);
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.increment(1);
                self.dropped_here.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What a sampled request keeps for its line beyond the [`RequestRecord`]: the request itself
/// (a reference count; method, host, path, the client's `traceparent`, the TLS connection) and
/// when it arrived.
pub struct Sampled {
    pub log: Arc<AccessLog>,
    pub req: Rc<Request>,
    pub time: SystemTime,
}

impl Sampled {
    pub fn new(log: &Arc<AccessLog>, req: &Rc<Request>) -> Self {
        Self {
            log: log.clone(),
            req: req.clone(),
            time: SystemTime::now(),
        }
    }

    pub fn write(&self, record: &RequestRecord) {
        self.log.write(self, record);
    }
}

/// One line, fields borrowed. Field order is the order in the line.
#[derive(Serialize)]
struct Line<'a> {
    time: Rfc3339,
    request_id: &'a str,
    trace_id: Option<&'a str>,
    client: Option<Ip>,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    protocol: &'static str,
    api: Option<&'a str>,
    operation: Option<&'a str>,
    product: Option<&'a str>,
    subscription: Option<&'a str>,
    status: u16,
    request_bytes: u64,
    response_bytes: u64,
    duration_us: u64,
    backend_us: Option<u64>,
    cache: &'static str,
    rate_limit: Option<&'static str>,
    retries: u32,
    error: Option<&'static str>,
    grpc_status: Option<u16>,
    client_cert_subject: Option<&'a str>,
    client_cert_thumbprint: Option<&'a str>,
    instance: &'a str,
}

fn format_line(entry: &Sampled, r: &RequestRecord, instance: &str) -> Vec<u8> {
    let req = &entry.req;
    let headers = req.headers();
    let trace_id = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(client_trace_id);
    // A request refused before it was ready to forward has no request id of its own yet: the
    // client's trace id, else a fresh one, so every line can be told apart.
    let mut fresh = [0u8; 32];
    let request_id = if !r.request_id.is_empty() {
        r.request_id.as_str()
    } else if let Some(t) = trace_id {
        t
    } else {
        random_hex(&mut fresh)
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let cert = super::h2_server::conn_data::<super::tls::TlsInfo>(req).and_then(|t| t.client);
    let cert: Option<&ClientCertificate> = cert.as_deref();
    let line = Line {
        time: Rfc3339(entry.time),
        request_id,
        trace_id,
        client: r.client_ip.map(Ip),
        method: &r.method,
        host,
        path: req.path(),
        protocol: protocol(req.version()),
        api: r.api.as_deref(),
        operation: r.operation.as_deref(),
        product: r.product.as_deref(),
        subscription: r.subscription.as_deref(),
        status: r.status,
        request_bytes: r.request_bytes,
        response_bytes: r.response_bytes,
        duration_us: micros(r.duration),
        backend_us: r.backend_duration.map(micros),
        cache: r.cache.as_str(),
        rate_limit: r.rate_limit.map(verdict),
        retries: r.retries,
        error: r.error_reason,
        grpc_status: r.grpc_status,
        client_cert_subject: cert.map(|c| c.subject.as_str()),
        client_cert_thumbprint: cert.map(|c| c.thumbprint.as_str()),
        instance,
    };
    let mut out = Vec::with_capacity(LINE_CAPACITY);
    // Writing into a Vec cannot fail, nor can these fields' serialisation.
    let _ = serde_json::to_writer(&mut out, &line);
    out.push(b'\n');
    out
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Allowed => "allowed",
        Verdict::Limited => "limited",
        Verdict::Unavailable => "unavailable",
    }
}

fn protocol(v: actix_web::http::Version) -> &'static str {
    use actix_web::http::Version;
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "",
    }
}

/// The trace id of a client's W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is
/// one. The proxy keeps valid ones and replaces others; this only reads what the client sent.
fn client_trace_id(tp: &str) -> Option<&str> {
    let b = tp.as_bytes();
    let hex = |s: &[u8]| s.iter().all(u8::is_ascii_hexdigit);
    (b.len() >= 55
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[..2])
        && &b[..2] != b"ff"
        && hex(&b[3..35])
        && b[3..35].iter().any(|&c| c != b'0'))
    .then(|| &tp[3..35])
}

fn random_hex(buf: &mut [u8; 32]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut n = rand::random::<u128>() | 1;
    for byte in buf.iter_mut().rev() {
        *byte = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(buf).unwrap_or("")
}

/// RFC 3339, UTC, microseconds: `2026-12-07T16:40:00.123456Z`.
struct Rfc3339(SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t: DateTime<Utc> = self.0.into();
        s.collect_str(&t.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
    }
}

struct Ip(IpAddr);

impl Serialize for Ip {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Standard output, a batch of whole lines per write: the process's stdout lock is held for the
/// whole batch, so nothing else printed there lands inside a line.
struct StdoutLines;

impl Write for StdoutLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().lock().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// How long the writer lets lines gather after the first one of a batch. While it sleeps,
/// workers queue lines without waking it; waking it for every line cost more than formatting
/// the line (bench/proxy.sh, docs/benchmarks.md).
const GATHER: Duration = Duration::from_millis(20);

/// A batch is written once it reaches this size.
const BATCH_BYTES: usize = 256 * 1024;

/// The writer thread: waits for a line, lets more gather, writes what is queued in batches,
/// flushes; it ends when every sender is gone and the queue is empty.
fn write_lines(rx: Receiver<Vec<u8>>, mut out: Box<dyn Write + Send>) {
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut failing = false;
    while let Ok(line) = rx.recv() {
        batch.extend_from_slice(&line);
        std::thread::sleep(GATHER);
        loop {
            let more = rx.try_recv();
            if let Ok(line) = &more {
                batch.extend_from_slice(line);
            }
            if batch.len() >= BATCH_BYTES || (more.is_err() && !batch.is_empty()) {
                failing = write_batch(&mut out, &batch, failing);
                batch.clear();
            }
            if more.is_err() {
                break;
            }
        }
    }
}

/// Writes and flushes one batch; logs once when writing starts and stops failing. Returns
/// whether it failed.
fn write_batch(out: &mut Box<dyn Write + Send>, batch: &[u8], failing: bool) -> bool {
    let written = out.write_all(batch).and_then(|()| out.flush());
    match (&written, failing) {
        (Err(e), false) => {
            tracing::error!(error = %e, "cannot write the access log; lines are being lost");
        }
        (Ok(()), true) => tracing::info!("the access log is written again"),
        _ => {}
    }
    if written.is_err() {
        metrics::counter!("outpost_access_log_write_errors_total").increment(1);
    }
    written.is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_trace_id_is_read_only_from_a_valid_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            client_trace_id(tp),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            client_trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            client_trace_id("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(client_trace_id("garbage"), None);
        assert_eq!(
            client_trace_id("00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01"),
            None
        );
    }

    #[test]
    fn time_is_rfc3339_utc_with_microseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let json = serde_json::to_string(&Rfc3339(t)).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.123456Z\"");
        let parsed = DateTime::parse_from_rfc3339(json.trim_matches('"')).unwrap();
        assert_eq!(parsed.timestamp_subsec_micros(), 123_456);
    }

    fn record() -> RequestRecord {
        RequestRecord {
            api: Some("orders".into()),
            operation: Some("list".into()),
            subscription: Some("gold-sub".into()),
            method: "GET".into(),
            status: 200,
            client_ip: Some([10, 0, 0, 7].into()),
            duration: Duration::from_micros(1500),
            backend_duration: Some(Duration::from_micros(1200)),
            request_bytes: 3,
            response_bytes: 40,
            cache: outpost_actors::route_table::CacheStatus::Hit,
            error_reason: None,
            grpc_status: None,
            request_id: "0af7651916cd43dd8448eb211c80319c".into(),
            product: Some("gold".into()),
            retries: 1,
            rate_limit: Some(Verdict::Allowed),
            access_log: true,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (log, rx) = AccessLog::new(1.0, 2, "i-1");
        let log = Arc::new(log);
        let req = actix_web::test::TestRequest::get()
            .uri("/orders/list?subscription-key=secret")
            .insert_header(("host", "api.example"))
            .to_request();
        let entry = Sampled::new(&log, &Rc::new(req));
        for _ in 0..5 {
            entry.write(&record());
        }
        assert_eq!(log.dropped(), 3, "two fit, the rest are dropped at once");
        let line: serde_json::Value = serde_json::from_slice(&rx.recv().unwrap()).unwrap();
        assert_eq!(line["path"], "/orders/list");
        assert_eq!(line["host"], "api.example");
        assert_eq!(line["client"], "10.0.0.7");
        assert_eq!(line["cache"], "hit");
        assert_eq!(line["duration_us"], 1500);
        assert_eq!(line["backend_us"], 1200);
        assert_eq!(line["instance"], "i-1");
        assert!(!line.to_string().contains("secret"));

        let mut off = record();
        off.access_log = false;
        drop(rx.recv());
        entry.write(&off);
        assert!(rx.try_recv().is_err(), "an API with access-log: false");
    }

    #[test]
    fn a_random_request_id_is_32_hex_digits() {
        let mut buf = [0u8; 32];
        let id = random_hex(&mut buf).to_owned();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
