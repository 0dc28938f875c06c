//! Log setup shared by every process.

use tracing_subscriber::EnvFilter;

use crate::control_plane::settings::LogSettings;

/// actix-http's HTTP/1 dispatcher logs every broken client connection (a reset, a malformed
/// chunked body, a truncated head) as an ERROR "stream error". Those are the client's faults,
/// counted in the request metrics; they are shown only when the log level asks for debug.
const CLIENT_STREAM_ERRORS: &str = "actix_http::h1::dispatcher=off";

/// Installs the global tracing subscriber; `RUST_LOG` wins over the configured level.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(directives(&settings.level)))
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

/// The configured level, with client stream errors kept out unless debugging.
fn directives(level: &str) -> String {
    let debugging = ["debug", "trace"]
        .iter()
        .any(|l| level.to_ascii_lowercase().contains(l));
    if debugging {
        level.to_owned()
    } else {
        format!("{level},{CLIENT_STREAM_ERRORS}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_stream_errors_are_quiet_unless_debugging() {
        assert_eq!(
            super::directives("info"),
            "info,actix_http::h1::dispatcher=off"
        );
        assert_eq!(super::directives("debug"), "debug");
        assert_eq!(
            super::directives("warn,outpost=trace"),
            "warn,outpost=trace"
        );
    }
}
