//! The process's Prometheus recorder (`metrics` + `metrics-exporter-prometheus`), shared by the
//! gateway's ops `/metrics` and the control plane's admin `/metrics`.
//!
//! Installed once per process: the demo and tests run several components in one process, and a
//! second install would fail. Those then share one registry, so a scrape of either shows the
//! other's series too (in production each component is its own process).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How often the recorder's histograms are compacted when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The control plane's store latency (`control_plane::metrics`), rendered as a histogram.
pub const STORE_SECONDS: &str = "outpost_cp_store_operation_seconds";

/// The gateway's request latency and the backend's share of it (`gateway::request_metrics`).
pub const REQUEST_SECONDS: &str = "outpost_request_duration_seconds";
/// See [`REQUEST_SECONDS`].
pub const BACKEND_SECONDS: &str = "outpost_backend_duration_seconds";

/// Bucket bounds (seconds) of the request latencies: histograms rather than the exporter's
/// default summaries, because a fleet's latency is read across its gateway instances
/// (`histogram_quantile(0.99, sum by (le) (rate(..._bucket[5m])))`), and quantiles of
/// summaries cannot be added up. A bucket costs a request less than a summary's sketch.
const REQUEST_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bucket bounds (seconds) of the series rendered as Prometheus histograms rather than the
/// exporter's default summaries: histograms aggregate across control-plane replicas.
const STORE_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The recorder's handle; `None` when something else installed a recorder first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(STORE_SECONDS.into()),
                    STORE_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(REQUEST_SECONDS.into()),
                        REQUEST_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(BACKEND_SECONDS.into()),
                        REQUEST_BUCKETS,
                    )
                })
                .expect("the bucket lists are not empty");
            match builder.install_recorder() {
                Ok(handle) => {
                    // Without upkeep, histogram samples pile up between scrapes.
                    let upkeep = handle.clone();
                    let spawned = std::thread::Builder::new()
                        .name("metrics-upkeep".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(UPKEEP_EVERY);
                                upkeep.run_upkeep();
                            }
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
                    }
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the Prometheus recorder; /metrics will be empty");
                    None
                }
            }
        })
        .as_ref()
}
