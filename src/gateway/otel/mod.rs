//! OpenTelemetry (`[otel]`): traces (`trace.rs`) and metrics (`metrics.rs`) exported over
//! OTLP/HTTP protobuf to `otel.endpoint`, both from threads of their own with one blocking HTTP
//! client (timeout, headers, TLS trust as for the control plane). Off (no endpoint), nothing
//! is started and requests carry a `None`.

mod metrics;
mod trace;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

pub use super::phase::{Phases, begin, call_started, end, failed};
pub use trace::{Decision, Traces, call_ended};

use super::settings::OtelSettings;

/// Why OpenTelemetry could not start (the gateway does not start either: a configured export
/// that silently does nothing would be a broken promise).
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("otel.ca_file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error(
        "no CA certificates to verify the OTLP endpoint with: set otel.ca_file or install the \
         system CA bundle"
    )]
    NoCaCertificates,
    #[error("cannot build the OTLP HTTP client: {0}")]
    Client(String),
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(String),
    #[error("cannot start the OTLP export thread: {0}")]
    Thread(std::io::Error),
}

/// What runs while OpenTelemetry is on.
pub struct Otel {
    /// Handed to the traffic server; `None` when `otel.traces` is false.
    pub traces: Option<Arc<Traces>>,
    metrics: Option<metrics::MetricsExport>,
}

impl Otel {
    /// Starts the exporters; `None` when `otel.endpoint` is empty.
    pub fn start(settings: &OtelSettings, instance: &str) -> Result<Option<Otel>, OtelError> {
        let Some(endpoint) = &settings.endpoint else {
            return Ok(None);
        };
        if !settings.traces && !settings.metrics {
            return Ok(None);
        }
        let endpoint = endpoint.trim_end_matches('/');
        // The counters of both exporters must find the recorder in place.
        let _ = super::ops::prometheus();
        let client = http_client(settings, endpoint)?;
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attributes([
                KeyValue::new("service.instance.id", instance.to_owned()),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ])
            .build();
        let traces = if settings.traces {
            Some(Arc::new(Traces::start(
                settings,
                endpoint,
                resource.clone(),
                client.clone(),
            )?))
        } else {
            None
        };
        let metrics = if settings.metrics {
            Some(
                metrics::MetricsExport::start(
                    client,
                    format!("{endpoint}/v1/metrics"),
                    settings.metrics_interval,
                    metrics::resource(&resource),
                )
                .map_err(OtelError::Thread)?,
            )
        } else {
            None
        };
        tracing::info!(
            endpoint,
            traces = settings.traces,
            sampling_ratio = settings.sampling_ratio,
            metrics = settings.metrics,
            "OpenTelemetry export on"
        );
        Ok(Some(Otel { traces, metrics }))
    }

    /// Exports what is still queued (spans, the last metric values) and stops, within `limit`
    /// per signal. Blocks: call it once the traffic server has stopped.
    pub fn shutdown(self, limit: Duration) {
        if let Some(traces) = &self.traces {
            traces.shutdown(limit);
        }
        if let Some(metrics) = self.metrics {
            metrics.stop(limit);
        }
    }
}

/// The blocking client both exporters share. Built on a thread of its own: reqwest's blocking
/// client must not be built inside an async runtime (the gateway starts in one).
fn http_client(
    settings: &OtelSettings,
    endpoint: &str,
) -> Result<reqwest::blocking::Client, OtelError> {
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in settings.header_pairs() {
        // Validated with the settings.
        if let (Ok(name), Ok(mut value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            value.set_sensitive(true);
            headers.append(name, value);
        }
    }
    let tls = if endpoint.starts_with("https://") {
        Some(
            super::client_tls(settings.ca_file.as_deref()).map_err(|e| match e {
                super::StartError::CaFile { path, reason } => OtelError::CaFile { path, reason },
                super::StartError::NoCaCertificates => OtelError::NoCaCertificates,
                other => OtelError::Client(other.to_string()),
            })?,
        )
    } else {
        None
    };
    let timeout = settings.timeout;
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut builder = reqwest::blocking::Client::builder()
                .timeout(timeout)
                .default_headers(headers)
                .user_agent(concat!("outpost/", env!("CARGO_PKG_VERSION")));
            if let Some(tls) = tls {
                builder = builder.use_preconfigured_tls(tls);
            }
            builder
                .build()
                .map_err(|e| OtelError::Client(e.to_string()))
        })
        .join()
        .unwrap_or_else(|_| Err(OtelError::Client("the client builder panicked".into())))
    })
}
