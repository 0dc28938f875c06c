//! Log setup shared by every process.

use tracing_subscriber::EnvFilter;

use crate::control_plane::settings::LogSettings;

/// Installs the global tracing subscriber; `RUST_LOG` wins over the configured level.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, demo starting several components) keeps the first subscriber.
    let _ = if settings.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
