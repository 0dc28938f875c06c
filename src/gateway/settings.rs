//! Gateway settings (`outpost gateway --config FILE`); see `config/gateway.toml`.

use std::path::PathBuf;
use std::time::Duration;

use outpost_model::Problems;
use serde::{Deserialize, Serialize};

use super::tls::MinTls;
use crate::logging::LogSettings;
use crate::settings::typed;
use crate::settings::{Validate, check_listen};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct GatewaySettings {
    pub control_plane: ControlPlaneLink,
    pub listen: ListenSettings,
    pub ops: OpsSettings,
    pub backup: BackupSettings,
    pub offline: OfflineSettings,
    pub subscription: SubscriptionKeySettings,
    pub limits: LimitSettings,
    pub http2: Http2Settings,
    pub redis: RedisSettings,
    pub cache: CacheSettings,
    pub telemetry: TelemetrySettings,
    pub access_log: AccessLogSettings,
    pub otel: OtelSettings,
    pub shutdown: ShutdownSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneLink {
    /// Base URL of the control plane's gateway listener, e.g. `https://cp.example:7071`; for
    /// several replicas, their URLs separated by commas (tried in order, the next one when one
    /// is unreachable) or one load-balanced name.
    pub url: String,
    /// `GatewayKey <gateway>&<expiry>&<signature>`, minted by the control plane.
    pub token: String,
    /// A file holding the token instead (`outpost gateway-token --output-dir`), read once at
    /// start; refused unless only its owner can read it (mode 0600 or 0400).
    #[serde(with = "typed::opt_path")]
    pub token_file: Option<PathBuf>,
    /// Long-poll wait asked of the control plane (`poll_wait_secs`).
    #[serde(rename = "poll_wait_secs", with = "typed::secs")]
    pub poll_wait: Duration,
    #[serde(rename = "heartbeat_interval_secs", with = "typed::secs")]
    pub heartbeat_interval: Duration,
    /// Timeout of one call (other than the long-poll wait itself) (`request_timeout_ms`).
    #[serde(rename = "request_timeout_ms", with = "typed::millis")]
    pub request_timeout: Duration,
    /// Backoff after a failed call: starts here, doubles with jitter up to the max.
    #[serde(rename = "backoff_initial_ms", with = "typed::millis")]
    pub backoff_initial: Duration,
    #[serde(rename = "backoff_max_ms", with = "typed::millis")]
    pub backoff_max: Duration,
    /// Extra CA certificates (PEM file) to trust for the control plane; `""`: none.
    #[serde(with = "typed::opt_path")]
    pub ca_file: Option<PathBuf>,
    /// The control plane's config signing keys (`ed25519:<base64>`, from `outpost gateway-token`
    /// or `GET /api/v1/signing-keys`). Every configuration and backup must be signed by one of
    /// them (or by a key one of them endorsed in a rotation). Empty: trust on first use — the
    /// key of the first configuration received is pinned next to the backup.
    pub config_signing_keys: Vec<String>,
    /// How long before its expiry the token is reported as expiring (log warning, `/readyz`
    /// `token_expiring_soon`, `outpost_gateway_token_expiring`) (`token_warning_hours`); 0: never.
    #[serde(rename = "token_warning_hours", with = "typed::hours")]
    pub token_warning: Duration,
}

impl ControlPlaneLink {
    /// The replicas' URLs, in the order they are tried.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The configured signing keys, parsed (validation has already refused bad ones).
    pub fn signing_keys(&self) -> Vec<outpost_model::signing::PublicKey> {
        self.config_signing_keys
            .iter()
            .filter_map(|k| outpost_model::signing::PublicKey::parse(k).ok())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenSettings {
    pub http: String,
    /// HTTPS listener, serving the certificates of the gateway resource's hostnames by SNI name
    /// (a handshake for a name without a certificate fails); empty: no HTTPS listener.
    #[serde(with = "typed::opt_string")]
    pub https: Option<String>,
    /// Hostname whose certificate is served to clients that send no SNI name; empty: none
    /// (those handshakes fail).
    #[serde(with = "typed::opt_string")]
    pub https_default_hostname: Option<String>,
    /// Lowest TLS version accepted on `https`: "1.2" or "1.3".
    #[serde(with = "typed::text")]
    pub https_min_tls: MinTls,
    /// Also serve HTTP/2 without TLS (h2c, prior knowledge) on `http`, for clients and sidecars
    /// inside a trusted network.
    pub h2c: bool,
    /// `/healthz`, `/readyz`, `/metrics`, `/status-0123456789abcdef`.
    pub ops: String,
    /// Worker threads for the traffic listener; 0 means one per core.
    pub workers: usize,
    /// Addresses or CIDR blocks of the proxies in front of the gateway (load balancers) whose
    /// `X-Forwarded-For` / `Forwarded` / `X-Real-IP` / `X-Forwarded-*` headers are believed.
    /// Empty: nobody's; those headers are replaced and the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsSettings {
    /// `/readyz` answers with the whole status (control-plane errors and URL, token gateway and
    /// expiry, revision, last refusal); `false`: only whether the gateway is ready, for an ops
    /// port that others than the operators can reach.
    pub readyz_detail: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSettings {
    pub enabled: bool,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct OfflineSettings {
    /// A declarative file to serve with no control plane at all (fully disconnected mode);
    /// `""`: none.
    #[serde(with = "typed::opt_path")]
    pub config_file: Option<PathBuf>,
    /// Which gateway of that file to act as; `""`: the file's only gateway, or every API.
    #[serde(with = "typed::opt_string")]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionKeySettings {
    /// Request header carrying a subscription key; empty: keys are not read from headers.
    #[serde(with = "typed::opt_string")]
    pub header: Option<String>,
    /// Query parameter carrying a subscription key; empty: keys are not read from the query.
    #[serde(with = "typed::opt_string")]
    pub query: Option<String>,
}

/// HTTP/2 from clients (ALPN `h2` on `https`, h2c on `http`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http2Settings {
    /// Streams a client may have open at once on one connection (nginx allows 128).
    pub max_concurrent_streams: u32,
    /// Receive window per stream: request body bytes a client may send ahead of the gateway
    /// reading them (and so ahead of the backend taking them).
    pub stream_window_bytes: u32,
    /// Receive window of a whole connection, across its streams.
    pub connection_window_bytes: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            stream_window_bytes: 1 << 20,
            connection_window_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest request header block, bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Largest request body, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// A WebSocket connection through the gateway with no bytes in either direction for this
    /// long is closed (`websocket_idle_secs`).
    #[serde(rename = "websocket_idle_secs", with = "typed::secs")]
    pub websocket_idle: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db` or `rediss://…`; empty: in-process state only.
    #[serde(with = "typed::opt_string")]
    pub url: Option<String>,
    /// Timeout of every Redis call (`timeout_ms`).
    #[serde(rename = "timeout_ms", with = "typed::millis")]
    pub timeout: Duration,
    /// Expected number of gateway nodes sharing limits; used by the `local` outage mode to
    /// enforce this node's share.
    pub nodes: u64,
    /// Redis Cluster: `url` lists one or more seed nodes, separated by commas.
    pub cluster: bool,
    /// Redis Sentinel: the name of the monitored primary; `url` lists the sentinels,
    /// separated by commas. `""`: not Sentinel.
    #[serde(with = "typed::opt_string")]
    pub sentinel_service: Option<String>,
    /// Redis Sentinel: credentials of the sentinels themselves (their `requirepass`); the
    /// URL's user and password are the primary's.
    #[serde(with = "typed::opt_string")]
    pub sentinel_username: Option<String>,
    #[serde(with = "typed::opt_string")]
    pub sentinel_password: Option<String>,
    /// `rediss://`: PEM file of the CA to verify Redis with, instead of the system's roots.
    #[serde(with = "typed::opt_path")]
    pub tls_ca_file: Option<PathBuf>,
    /// `rediss://`: client certificate and key (PEM files), for `tls-auth-clients yes`.
    #[serde(with = "typed::opt_path")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(with = "typed::opt_path")]
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Bound of the in-process cache tier, bytes.
    pub local_max_bytes: u64,
    /// Largest response body stored by `cache-store`, bytes (larger ones stream through).
    pub max_entry_bytes: u64,
    /// How long a cache miss waits for an identical in-flight miss on this node
    /// (`coalesce_wait_ms`).
    #[serde(rename = "coalesce_wait_ms", with = "typed::millis")]
    pub coalesce_wait: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    #[serde(rename = "flush_interval_secs", with = "typed::secs")]
    pub flush_interval: Duration,
    /// Aggregates kept in memory while the control plane is unreachable.
    pub max_buffered: usize,
    /// Directory to spool batches to when memory is full; `""`: oldest batches are dropped
    /// (and counted in `/metrics`).
    #[serde(with = "typed::opt_path")]
    pub spool_dir: Option<PathBuf>,
    /// Bound of the spool directory, bytes; beyond it the oldest spooled batches are dropped.
    pub spool_max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogSettings {
    /// One JSON line per request (see docs/operations.md, "Access log").
    pub enabled: bool,
    /// `-`: standard output; otherwise a file, appended to (created 0640).
    pub path: String,
    /// Share of requests written, 0.0..=1.0 (decided per request, at random).
    pub sample: f64,
    /// Lines waiting for the writer; beyond it lines are dropped (and counted), never waited
    /// for.
    pub buffer_lines: usize,
}

/// OpenTelemetry over OTLP/HTTP (see docs/operations.md, "OpenTelemetry").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelSettings {
    /// Base URL of the collector's OTLP/HTTP receiver (`http://collector:4318`); traces go to
    /// `<endpoint>/v1/traces`, metrics to `<endpoint>/v1/metrics`. `""`: OpenTelemetry off.
    #[serde(with = "typed::opt_string")]
    pub endpoint: Option<String>,
    /// The OTLP transport: `http/protobuf`, the only one the gateway speaks.
    pub protocol: String,
    /// Export a span per request (and its phases).
    pub traces: bool,
    /// Share of the traces the gateway starts that are recorded, 0.0..=1.0, decided from the
    /// trace id; a client's `traceparent` decides for its own trace (parent-based).
    pub sampling_ratio: f64,
    /// Export the gateway's metrics (those of `/metrics`) every `metrics_interval_secs`.
    pub metrics: bool,
    #[serde(rename = "metrics_interval_secs", with = "typed::secs")]
    pub metrics_interval: Duration,
    /// Headers sent with every export, `name=value` (e.g. `authorization=Bearer …`).
    pub headers: Vec<String>,
    /// Timeout of one export request (`timeout_ms`).
    #[serde(rename = "timeout_ms", with = "typed::millis")]
    pub timeout: Duration,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// PEM file of CA certificates to trust for an `https://` endpoint, besides the system's.
    #[serde(with = "typed::opt_path")]
    pub ca_file: Option<PathBuf>,
    /// Finished spans waiting to be exported; beyond it spans are dropped and counted.
    pub max_queue_spans: usize,
    /// How long finished spans wait to be exported in a batch (`batch_delay_ms`).
    #[serde(rename = "batch_delay_ms", with = "typed::millis")]
    pub batch_delay: Duration,
}

impl OtelSettings {
    /// The `headers` as pairs (validation has refused malformed ones).
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter_map(|h| h.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect()
    }
}

impl Default for OtelSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OTLP_HTTP_PROTOBUF.into(),
            traces: true,
            sampling_ratio: 1.0,
            metrics: true,
            metrics_interval: Duration::from_secs(60),
            headers: Vec::new(),
            timeout: Duration::from_millis(10_000),
            service_name: "outpost-gateway".into(),
            ca_file: None,
            max_queue_spans: 2048,
            batch_delay: Duration::from_millis(5_000),
        }
    }
}

/// The OTLP protocol name of protobuf over HTTP (the specification's spelling).
pub const OTLP_HTTP_PROTOBUF: &str = "http/protobuf";

impl OtelSettings {
    fn validate(&self, p: &mut Problems) {
        if let Some(endpoint) = &self.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                p.push("otel.endpoint", "must start with http:// or https://");
            } else if let Err(e) = endpoint.parse::<http::Uri>() {
                p.push("otel.endpoint", format!("'{endpoint}' is not a URL: {e}"));
            }
        }
        if self.protocol != OTLP_HTTP_PROTOBUF {
            p.push(
                "otel.protocol",
                format!(
                    "'{}' is not supported; use \"{OTLP_HTTP_PROTOBUF}\"",
                    self.protocol
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            p.push("otel.sampling_ratio", "must be 0.0..=1.0");
        }
        if self.metrics_interval.is_zero() {
            p.push("otel.metrics_interval_secs", "must be at least 1");
        }
        if self.timeout.is_zero() {
            p.push("otel.timeout_ms", "must be at least 1");
        }
        if self.max_queue_spans == 0 {
            p.push("otel.max_queue_spans", "must be at least 1");
        }
        if self.batch_delay.is_zero() {
            p.push("otel.batch_delay_ms", "must be at least 1");
        }
        if self.service_name.trim().is_empty() {
            p.push("otel.service_name", "must not be empty");
        }
        for (i, h) in self.headers.iter().enumerate() {
            let valid = h.split_once('=').is_some_and(|(k, v)| {
                reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()).is_ok()
                    && reqwest::header::HeaderValue::from_str(v.trim()).is_ok()
            });
            if !valid {
                // The value may be a secret: only the name (if any) is repeated.
                let name = h.split_once('=').map_or("", |(k, _)| k.trim());
                p.push(
                    format!("otel.headers[{i}]"),
                    format!(
                        "expected 'name=value' with a valid header name and value (name: '{name}')"
                    ),
                );
            }
        }
        if self.ca_file.is_some()
            && !self
                .endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("https://"))
        {
            p.push(
                "otel.ca_file",
                "set, but otel.endpoint does not use https://",
            );
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// After SIGTERM/SIGINT: `/readyz` answers 503 at once while the listeners keep serving
    /// this long, so load balancers stop sending first, seconds.
    #[serde(rename = "drain_secs", with = "typed::secs")]
    pub drain: Duration,
    /// Then the listeners close and requests (and WebSockets) still in flight get this long to
    /// finish before they are cut, seconds.
    #[serde(rename = "grace_secs", with = "typed::secs")]
    pub grace: Duration,
}

/// Tokens live at most a year (the control plane's `tokens.max_lifetime_days` is 1..=365), so
/// a longer warning window would only mean "always".
const MAX_TOKEN_WARNING_HOURS: u64 = 365 * 24;

impl Default for ControlPlaneLink {
    fn default() -> Self {
        Self {
            url: String::new(),
            token: String::new(),
            token_file: None,
            poll_wait: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            request_timeout: Duration::from_millis(10_000),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_millis(30_000),
            ca_file: None,
            config_signing_keys: Vec::new(),
            token_warning: outpost_actors::token::DEFAULT_WARNING,
        }
    }
}

impl Default for ListenSettings {
    fn default() -> Self {
        Self {
            http: "0.0.0.0:8080".into(),
            https: Some("0.0.0.0:8443".into()),
            https_default_hostname: None,
            https_min_tls: MinTls::V1_2,
            h2c: false,
            ops: "0.0.0.0:8090".into(),
            workers: 0,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for OpsSettings {
    fn default() -> Self {
        Self {
            readyz_detail: true,
        }
    }
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: PathBuf::from("/var/lib/outpost/backup"),
        }
    }
}

impl Default for SubscriptionKeySettings {
    fn default() -> Self {
        Self {
            header: Some("Ocp-Apim-Subscription-Key".into()),
            query: Some("subscription-key".into()),
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            websocket_idle: Duration::from_secs(300),
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            timeout: Duration::from_millis(50),
            nodes: 1,
            cluster: false,
            sentinel_service: None,
            sentinel_username: None,
            sentinel_password: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            local_max_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            coalesce_wait: Duration::from_millis(5_000),
        }
    }
}

impl Default for AccessLogSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "-".into(),
            sample: 1.0,
            buffer_lines: 16_384,
        }
    }
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain: Duration::from_secs(5),
            grace: Duration::from_secs(30),
        }
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(10),
            max_buffered: 100_000,
            spool_dir: None,
            spool_max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Validate for GatewaySettings {
    fn validate(&self, p: &mut Problems) {
        let offline = self.offline.config_file.is_some();
        if !offline {
            if self.control_plane.url.is_empty() {
                p.push(
                    "control_plane.url",
                    "required unless offline.config_file is set (OUTPOST_CONTROL_PLANE_URL)",
                );
            } else {
                for url in self.control_plane.urls() {
                    outpost_model::validate::check_url(p, "control_plane.url", url);
                }
            }
            let (token, file) = (&self.control_plane.token, &self.control_plane.token_file);
            if token.is_empty() && file.is_none() {
                p.push(
                    "control_plane.token",
                    "required unless offline.config_file is set (OUTPOST_CONTROL_PLANE_TOKEN, \
                     or a file: OUTPOST_CONTROL_PLANE_TOKEN_FILE)",
                );
            } else if !token.is_empty() && file.is_some() {
                p.push(
                    "control_plane.token_file",
                    "set either control_plane.token or control_plane.token_file, not both",
                );
            } else if !token.is_empty() && !token.starts_with("GatewayKey ") {
                p.push(
                    "control_plane.token",
                    "expected 'GatewayKey <gateway>&<expiry>&<signature>'",
                );
            }
        }
        for (i, key) in self.control_plane.config_signing_keys.iter().enumerate() {
            if let Err(e) = outpost_model::signing::PublicKey::parse(key) {
                p.push(
                    format!("control_plane.config_signing_keys[{i}]"),
                    e.to_string(),
                );
            }
        }
        if !(1..=600).contains(&self.control_plane.poll_wait.as_secs()) {
            p.push("control_plane.poll_wait_secs", "must be 1..=600");
        }
        if self.control_plane.heartbeat_interval.is_zero() {
            p.push(
                "control_plane.heartbeat_interval_secs",
                "must be at least 1",
            );
        }
        if self.control_plane.token_warning > Duration::from_secs(MAX_TOKEN_WARNING_HOURS * 3600) {
            p.push(
                "control_plane.token_warning_hours",
                format!("must be 0..={MAX_TOKEN_WARNING_HOURS} (a year)"),
            );
        }
        if self.control_plane.backoff_initial.is_zero()
            || self.control_plane.backoff_initial > self.control_plane.backoff_max
        {
            p.push(
                "control_plane.backoff_initial_ms",
                "must be at least 1 and at most backoff_max_ms",
            );
        }
        check_listen(p, "listen.http", &self.listen.http);
        if let Some(https) = &self.listen.https {
            check_listen(p, "listen.https", https);
        }
        check_listen(p, "listen.ops", &self.listen.ops);
        if let Err(bad) = super::forwarded::Forwarding::new(&self.listen.trusted_proxies) {
            for e in bad {
                p.push("listen.trusted_proxies", e);
            }
        }
        if self.backup.enabled && self.backup.dir.as_os_str().is_empty() {
            p.push("backup.dir", "required when backup.enabled is true");
        }
        if self.subscription.header.is_none() && self.subscription.query.is_none() {
            p.push(
                "subscription.header",
                "set a header name, a query name, or both",
            );
        }
        if let Some(h) = &self.subscription.header
            && actix_web::http::header::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            p.push(
                "subscription.header",
                format!("'{h}' is not a valid header name"),
            );
        }
        if self.limits.max_header_bytes < 1024 {
            p.push("limits.max_header_bytes", "must be at least 1024");
        }
        let h2 = &self.http2;
        if h2.max_concurrent_streams == 0 {
            p.push("http2.max_concurrent_streams", "must be at least 1");
        }
        // RFC 9113 6.9.1: a window is at most 2^31 - 1; below the initial 65,535 the protocol
        // would stall clients that start sending before they read the settings.
        const WINDOWS: std::ops::RangeInclusive<u32> = 65_535..=(1 << 31) - 1;
        for (key, window) in [
            ("http2.stream_window_bytes", h2.stream_window_bytes),
            ("http2.connection_window_bytes", h2.connection_window_bytes),
        ] {
            if !WINDOWS.contains(&window) {
                p.push(key, "must be 65535..=2147483647");
            }
        }
        if h2.connection_window_bytes < h2.stream_window_bytes {
            p.push(
                "http2.connection_window_bytes",
                "must be at least http2.stream_window_bytes",
            );
        }
        if self.limits.websocket_idle.is_zero() {
            p.push("limits.websocket_idle_secs", "must be at least 1");
        }
        let log = &self.access_log;
        if !(0.0..=1.0).contains(&log.sample) {
            p.push("access_log.sample", "must be 0.0..=1.0");
        }
        if log.path.is_empty() {
            p.push("access_log.path", "\"-\" (standard output) or a file");
        }
        if log.buffer_lines == 0 {
            p.push("access_log.buffer_lines", "must be at least 1");
        }
        let hour = Duration::from_secs(3600);
        if self.shutdown.drain > hour || self.shutdown.grace > hour {
            p.push(
                "shutdown.drain_secs",
                "drain_secs and grace_secs must be 0..=3600",
            );
        }
        if let Some(redis) = &self.redis.url {
            let seeds: Vec<&str> = redis.split(',').map(str::trim).collect();
            if seeds
                .iter()
                .any(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
            {
                p.push("redis.url", "must start with redis:// or rediss://");
            }
            if seeds.len() > 1 && !self.redis.cluster && self.redis.sentinel_service.is_none() {
                p.push(
                    "redis.url",
                    "several URLs are the seed nodes of a Redis Cluster (set redis.cluster = true) \
                     or sentinels (set redis.sentinel_service)",
                );
            }
        }
        let r = &self.redis;
        if r.tls_cert_file.is_none() != r.tls_key_file.is_none() {
            p.push(
                "redis.tls_cert_file",
                "a client certificate needs its key: set both redis.tls_cert_file and \
                 redis.tls_key_file, or neither",
            );
        }
        let tls_files = r.tls_ca_file.is_some() || r.tls_cert_file.is_some();
        let rediss = r
            .url
            .as_deref()
            .is_some_and(|url| url.split(',').any(|u| u.trim().starts_with("rediss://")));
        if tls_files && !rediss {
            p.push(
                "redis.tls_ca_file",
                "TLS files are set but redis.url does not use rediss://",
            );
        }
        if (r.sentinel_username.is_some() || r.sentinel_password.is_some())
            && r.sentinel_service.is_none()
        {
            p.push(
                "redis.sentinel_password",
                "sentinel credentials need Sentinel mode (set redis.sentinel_service)",
            );
        }
        if self.redis.cluster && self.redis.sentinel_service.is_some() {
            p.push(
                "redis.sentinel_service",
                "Redis Cluster and Sentinel exclude each other: set one of redis.cluster and \
                 redis.sentinel_service",
            );
        }
        if self.redis.timeout.is_zero() {
            p.push("redis.timeout_ms", "must be at least 1");
        }
        if self.redis.nodes == 0 {
            p.push("redis.nodes", "must be at least 1");
        }
        if self.cache.local_max_bytes < 64 * 1024 {
            p.push("cache.local_max_bytes", "must be at least 65536");
        }
        if self.cache.max_entry_bytes == 0 || self.cache.max_entry_bytes > 512 * 1024 * 1024 {
            p.push("cache.max_entry_bytes", "must be 1..=536870912");
        }
        if self.cache.coalesce_wait > Duration::from_secs(600) {
            p.push(
                "cache.coalesce_wait_ms",
                "must be at most 600000 (10 minutes)",
            );
        }
        if self.telemetry.spool_dir.is_some() && self.telemetry.spool_max_bytes < 1024 * 1024 {
            p.push(
                "telemetry.spool_max_bytes",
                "must be at least 1048576 (1 MiB)",
            );
        }
        if self.telemetry.flush_interval.is_zero() {
            p.push("telemetry.flush_interval_secs", "must be at least 1");
        }
        self.otel.validate(p);
        self.log.validate(p);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn env_names_are_unique() {
        crate::settings::env_names_are_unique::<super::GatewaySettings>().unwrap();
    }

    #[test]
    fn readyz_detail_is_on_by_default_and_set_from_the_environment() {
        use std::collections::BTreeMap;
        let load = |value: Option<&str>| {
            let mut env: BTreeMap<String, String> =
                [("OUTPOST_OFFLINE_CONFIG_FILE".into(), "/x.yaml".into())].into();
            if let Some(v) = value {
                env.insert("OUTPOST_OPS_READYZ_DETAIL".into(), v.into());
            }
            crate::settings::load::<super::GatewaySettings>(None, &env, &Default::default())
        };
        assert!(load(None).unwrap().ops.readyz_detail);
        assert!(!load(Some("false")).unwrap().ops.readyz_detail);
        let err = load(Some("maybe")).unwrap_err().to_string();
        assert!(err.contains("OUTPOST_OPS_READYZ_DETAIL"), "{err}");
    }

    /// Signing keys come from the file or the environment (comma-separated); each bad key is
    /// its own problem, listed with the others.
    #[test]
    fn config_signing_keys_are_parsed_and_every_bad_one_listed() {
        use std::collections::BTreeMap;
        let good = outpost_model::signing::SigningKey::from_seed([7; 32])
            .public()
            .to_string();
        let load = |keys: &str| {
            let env: BTreeMap<String, String> = [
                ("OUTPOST_OFFLINE_CONFIG_FILE".into(), "/x.yaml".into()),
                (
                    "OUTPOST_CONTROL_PLANE_CONFIG_SIGNING_KEYS".into(),
                    keys.to_owned(),
                ),
            ]
            .into();
            crate::settings::load::<super::GatewaySettings>(None, &env, &Default::default())
        };
        let s = load(&format!("{good}, {good}")).unwrap();
        assert_eq!(s.control_plane.signing_keys().len(), 2);
        let err = load(&format!("{good},ed25519:short,rsa:abc"))
            .unwrap_err()
            .to_string();
        for expected in [
            "control_plane.config_signing_keys[1]",
            "control_plane.config_signing_keys[2]",
            "ed25519:<base64 of 32 bytes>",
        ] {
            assert!(err.contains(expected), "{expected:?} missing from: {err}");
        }
        assert!(!err.contains("config_signing_keys[0]"), "{err}");
    }

    /// Several Redis URLs are a cluster's seeds: only with `redis.cluster`, each a Redis URL.
    #[test]
    fn redis_seed_lists_need_cluster_mode() {
        use std::collections::BTreeMap;
        let seeds = "redis://10.0.0.1:6379, redis://10.0.0.2:6379";
        let env = |cluster: &str, url: &str| -> BTreeMap<String, String> {
            [
                (
                    "OUTPOST_OFFLINE_CONFIG_FILE".to_string(),
                    "/x.yaml".to_string(),
                ),
                ("OUTPOST_REDIS_URL".to_string(), url.to_string()),
                ("OUTPOST_REDIS_CLUSTER".to_string(), cluster.to_string()),
            ]
            .into()
        };
        let load =
            |e| crate::settings::load::<super::GatewaySettings>(None, &e, &Default::default());
        let err = load(env("false", seeds)).unwrap_err().to_string();
        assert!(err.contains("set redis.cluster = true"), "{err}");
        let mut sentinels = env("false", seeds);
        sentinels.insert("OUTPOST_REDIS_SENTINEL_SERVICE".into(), "mymaster".into());
        assert!(load(sentinels.clone()).is_ok());
        sentinels.insert("OUTPOST_REDIS_CLUSTER".into(), "true".into());
        let err = load(sentinels).unwrap_err().to_string();
        assert!(err.contains("exclude each other"), "{err}");
        let s = load(env("true", seeds)).unwrap();
        assert!(s.redis.cluster);
        let err = load(env("true", "redis://a:1,http://b:2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("must start with redis://"), "{err}");
    }

    /// `[otel]`: every bad value listed at once, a header's value never repeated.
    #[test]
    fn otel_settings_are_checked_together() {
        use std::collections::BTreeMap;
        let load = |pairs: &[(&str, &str)]| {
            let mut env: BTreeMap<String, String> =
                [("OUTPOST_OFFLINE_CONFIG_FILE".into(), "/x.yaml".into())].into();
            env.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            crate::settings::load::<super::GatewaySettings>(None, &env, &Default::default())
        };
        let s = load(&[
            ("OUTPOST_OTEL_ENDPOINT", "https://collector.internal:4318"),
            (
                "OUTPOST_OTEL_HEADERS",
                "authorization=Bearer abc, x-tenant = blue",
            ),
            ("OUTPOST_OTEL_SAMPLING_RATIO", "0.05"),
        ])
        .unwrap();
        assert_eq!(
            s.otel.header_pairs(),
            [
                ("authorization".to_owned(), "Bearer abc".to_owned()),
                ("x-tenant".to_owned(), "blue".to_owned())
            ]
        );
        assert_eq!(s.otel.sampling_ratio, 0.05);
        assert!(s.otel.traces && s.otel.metrics);

        let err = load(&[
            ("OUTPOST_OTEL_ENDPOINT", "collector:4318"),
            ("OUTPOST_OTEL_PROTOCOL", "grpc"),
            ("OUTPOST_OTEL_SAMPLING_RATIO", "1.5"),
            ("OUTPOST_OTEL_HEADERS", "no-equals-sign-secret"),
            ("OUTPOST_OTEL_CA_FILE", "/ca.pem"),
            ("OUTPOST_OTEL_MAX_QUEUE_SPANS", "0"),
        ])
        .unwrap_err()
        .to_string();
        for expected in [
            "otel.endpoint",
            "'grpc' is not supported",
            "otel.sampling_ratio",
            "otel.headers[0]",
            "does not use https://",
            "otel.max_queue_spans",
        ] {
            assert!(err.contains(expected), "{expected:?} missing from: {err}");
        }
        let err = load(&[("OUTPOST_OTEL_HEADERS", "authorization=bad\u{7f}secret")])
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(!err.contains("secret"), "{err}");
    }

    /// TLS files only with `rediss://`, a client certificate only with its key, sentinel
    /// credentials only in Sentinel mode; every problem at once.
    #[test]
    fn redis_tls_and_sentinel_credentials_are_checked() {
        use std::collections::BTreeMap;
        let load = |pairs: &[(&str, &str)]| {
            let mut env: BTreeMap<String, String> =
                [("OUTPOST_OFFLINE_CONFIG_FILE".into(), "/x.yaml".into())].into();
            env.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            crate::settings::load::<super::GatewaySettings>(None, &env, &Default::default())
        };
        let s = load(&[
            ("OUTPOST_REDIS_URL", "rediss://redis.internal:6380"),
            ("OUTPOST_REDIS_TLS_CA_FILE", "/etc/outpost/redis-ca.pem"),
            (
                "OUTPOST_REDIS_TLS_CERT_FILE",
                "/etc/outpost/redis-client.pem",
            ),
            (
                "OUTPOST_REDIS_TLS_KEY_FILE",
                "/etc/outpost/redis-client.key",
            ),
        ])
        .unwrap();
        assert_eq!(
            s.redis.tls_ca_file.as_deref(),
            Some(std::path::Path::new("/etc/outpost/redis-ca.pem"))
        );
        let s = load(&[
            (
                "OUTPOST_REDIS_URL",
                "rediss://:pw@s1:26379,rediss://s2:26379",
            ),
            ("OUTPOST_REDIS_SENTINEL_SERVICE", "mymaster"),
            ("OUTPOST_REDIS_SENTINEL_PASSWORD", "sentinel-pw"),
        ])
        .unwrap();
        assert_eq!(s.redis.sentinel_password.as_deref(), Some("sentinel-pw"));

        let err = load(&[
            ("OUTPOST_REDIS_URL", "redis://redis.internal:6379"),
            ("OUTPOST_REDIS_TLS_CA_FILE", "/ca.pem"),
            ("OUTPOST_REDIS_TLS_CERT_FILE", "/client.pem"),
            ("OUTPOST_REDIS_SENTINEL_PASSWORD", "pw"),
        ])
        .unwrap_err()
        .to_string();
        for expected in [
            "does not use rediss://",
            "set both redis.tls_cert_file and redis.tls_key_file",
            "sentinel credentials need Sentinel mode",
        ] {
            assert!(err.contains(expected), "{expected:?} missing from: {err}");
        }
    }
}
