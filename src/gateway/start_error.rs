//! Why a gateway did not start, or stopped serving: one variant per cause, each message saying
//! what to fix. `outpost gateway` prints it after `error: ` and exits with status 1, as for
//! every other command (`cli::main`).

use std::path::PathBuf;

use outpost_actors::config_sync::startup::StartupError;
use outpost_actors::config_sync::trust::PinError;
use outpost_model::Problems;

use crate::server_thread::SpawnError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Settings built in code (tests, `outpost demo`) are checked again at start.
    #[error("invalid gateway settings:\n{0}")]
    Settings(Problems),
    #[error("cannot open the access log {path} (access_log.path): {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
    #[error("OpenTelemetry: {0}")]
    Otel(#[from] super::otel::OtelError),
    #[error("cannot read the offline config file {}: {source}", path.display())]
    OfflineFileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the offline config file {file} has {} problem(s):\n{}",
        problems.len(),
        problems.render_in(file)
    )]
    OfflineFileInvalid { file: String, problems: Problems },
    #[error(
        "the offline config file {} defines several gateways ({}); choose one with offline.gateway",
        file.display(),
        gateways.join(", ")
    )]
    OfflineGatewayAmbiguous {
        file: PathBuf,
        gateways: Vec<String>,
    },
    #[error(
        "offline.gateway '{name}' is not in {} (gateways there: {})",
        file.display(),
        if gateways.is_empty() { "none".to_owned() } else { gateways.join(", ") }
    )]
    OfflineGatewayUnknown {
        name: String,
        file: PathBuf,
        gateways: Vec<String>,
    },
    /// The route table refused the offline file's configuration.
    #[error("the offline config file {} cannot be served: {reason}", file.display())]
    OfflineRefused { file: PathBuf, reason: String },
    /// No configuration from the control plane nor from the backup (the message says both
    /// failures and the way out).
    #[error(transparent)]
    FirstConfig(#[from] StartupError),
    #[error(transparent)]
    PinnedKeys(#[from] PinError),
    /// `control_plane.token_file` unreadable, empty or readable by others.
    #[error(transparent)]
    TokenFile(#[from] super::token_file::TokenFileError),
    #[error("control_plane.ca_file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error(
        "no CA certificates to verify the control plane with: set control_plane.ca_file or \
         install the system CA bundle"
    )]
    NoCaCertificates,
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Unreadable or wrong files named by the Redis settings, every one of them.
    #[error("{}", .0.join("; "))]
    RedisFiles(Vec<String>),
    #[error("redis.url: {0}")]
    Redis(outpost_actors::shared_state::StoreError),
    #[error("cannot listen on {address} ({key}): {source}")]
    Listen {
        address: String,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start the ops listener: {0}")]
    Ops(std::io::Error),
    #[error(
        "cannot listen on {http}{} (listen.http, listen.https): {source}",
        https.as_deref().map(|h| format!(" or {h}")).unwrap_or_default()
    )]
    Traffic {
        http: String,
        https: Option<String>,
        source: std::io::Error,
    },
    #[error(transparent)]
    Thread(#[from] SpawnError),
    #[error("cannot wait for signals: {0}")]
    Signals(String),
    #[error("the gateway's listeners stopped unexpectedly")]
    Stopped,
}
