//! Log setup shared by every process, and the `[log]` settings section they all have.

use std::io::IsTerminal;

use outpost_model::Problems;
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

use crate::settings::Validate;

/// actix-http's HTTP/1 dispatcher logs every broken client connection (a reset, a malformed
/// chunked body, a truncated head) as an ERROR "stream error". Those are the client's faults,
/// counted in the request metrics; they are shown only when the log level asks for debug.
const CLIENT_STREAM_ERRORS: &str = "actix_http::h1::dispatcher=off";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `error`, `warn`, `info`, `debug`, `trace` (or `off`), or comma-separated directives
    /// `level` / `target=level` (`info,outpost=debug`); checked at load.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Validate for LogSettings {
    fn validate(&self, p: &mut Problems) {
        if !matches!(self.format.as_str(), "text" | "json") {
            p.push("log.format", "must be text or json");
        }
        if let Err(e) = check_level(&self.level) {
            p.push("log.level", e);
        }
    }
}

/// Installs the global tracing subscriber; `RUST_LOG` wins over the configured level.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(directives(&settings.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes are for a person at a terminal; in a file, journald or a container log
    // they are noise that breaks grep.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests, demo starting several components) keeps the first subscriber.
    let _ = if settings.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The forms `[log] level` accepts, for messages.
pub const ACCEPTED_LEVELS: &str =
    "expected error|warn|info|debug|trace (or off), or directives such as info,outpost=debug";

/// Checks `[log] level` at load time. `EnvFilter` alone is too lenient: it reads a word that is
/// not a level (`warning`) as a target name, which turns every other log line off. So each
/// comma-separated directive must be a level or `target=level`, and the whole string must then
/// parse as the filter [`init`] builds from it.
pub fn check_level(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err(format!("empty; {ACCEPTED_LEVELS}"));
    }
    let mut bad = Vec::new();
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // `target[span{field=value}]=level`: the level is after the last `=`.
        let lvl = directive
            .rsplit_once('=')
            .map_or(directive, |(_, l)| l)
            .trim();
        if !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            let hint = LEVELS
                .iter()
                .find(|l| lvl.to_ascii_lowercase().starts_with(*l))
                .copied()
                .or_else(|| crate::settings::closest(lvl, LEVELS))
                .map(|l| format!(" (did you mean {l}?)"))
                .unwrap_or_default();
            bad.push(format!("'{directive}'{hint}"));
        }
    }
    if !bad.is_empty() {
        let verb = if bad.len() == 1 {
            "is not a level"
        } else {
            "are not levels"
        };
        return Err(format!("{} {verb}; {ACCEPTED_LEVELS}", bad.join(", ")));
    }
    EnvFilter::try_new(directives(level))
        .map(drop)
        .map_err(|e| format!("'{level}' is not a valid filter ({e}); {ACCEPTED_LEVELS}"))
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

    #[test]
    fn levels_and_directives_are_checked() {
        use super::check_level;
        for ok in [
            "info",
            "WARN",
            "off",
            "info,outpost=debug",
            "warn,outpost::gateway=trace",
            "info,outpost[request{api=orders}]=debug",
        ] {
            assert_eq!(check_level(ok), Ok(()), "{ok}");
        }
        let err = check_level("warning").unwrap_err();
        assert!(err.contains("'warning' (did you mean warn?)"), "{err}");
        assert!(err.contains("error|warn|info|debug|trace"), "{err}");
        let err = check_level("debg,outpost=verbose").unwrap_err();
        assert!(err.contains("'debg' (did you mean debug?)"), "{err}");
        assert!(err.contains("'outpost=verbose'"), "{err}");
        assert!(check_level("").is_err());
        assert!(check_level("outpost").is_err());
        // EnvFilter takes no spaces; its own message says so.
        assert!(check_level("warn, outpost=trace").is_err());
    }
}
