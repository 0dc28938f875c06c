//! Control plane settings (`outpost control-plane --config FILE`); see `config/control-plane.toml`.

use std::path::PathBuf;
use std::time::Duration;

use outpost_model::Problems;
use serde::{Deserialize, Serialize};

use crate::logging::LogSettings;
use crate::settings::typed;
use crate::settings::{Validate, check_listen};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneSettings {
    pub admin: AdminSettings,
    pub gateway_api: GatewayApiSettings,
    pub store: StoreSettings,
    pub tokens: TokenSettings,
    pub instances: InstanceSettings,
    pub analytics: AnalyticsSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Management API, OpenAPI document and dashboard.
    pub listen: String,
    /// Bearer token for the management API. Empty: generated on first start, stored in the
    /// data directory (`admin-token`), and its path printed.
    pub token: String,
    /// `/metrics` asks for the admin token too; `false`: open, like `/healthz` (its series
    /// name no gateway, API or key).
    pub metrics_require_token: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayApiSettings {
    /// Gateway-facing endpoint (`/gateway/v1/...`).
    pub listen: String,
    /// PEM files for HTTPS on the gateway listener; both empty means plain HTTP.
    #[serde(with = "typed::opt_path")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(with = "typed::opt_path")]
    pub tls_key_file: Option<PathBuf>,
    /// Longest long-poll wait a gateway may ask for (`max_wait_secs`).
    #[serde(rename = "max_wait_secs", with = "typed::secs")]
    pub max_wait: Duration,
}

/// Where the embedded SQLite store keeps its files (`store.data_dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreDir {
    /// `:memory:`: nothing is kept (tests, demo); the admin token is generated per start.
    Memory,
    /// A directory holding `outpost.db` and `admin-token`.
    Dir(PathBuf),
}

impl std::str::FromStr for StoreDir {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<StoreDir, &'static str> {
        match s {
            "" => Err("must not be empty (use :memory: for no persistence)"),
            ":memory:" => Ok(StoreDir::Memory),
            dir => Ok(StoreDir::Dir(PathBuf::from(dir))),
        }
    }
}

impl std::fmt::Display for StoreDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreDir::Memory => f.write_str(":memory:"),
            StoreDir::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// For settings written in code (tests, the demo): `":memory:"` or a directory.
impl From<&str> for StoreDir {
    fn from(s: &str) -> StoreDir {
        match s {
            ":memory:" => StoreDir::Memory,
            dir => StoreDir::Dir(PathBuf::from(dir)),
        }
    }
}

impl From<String> for StoreDir {
    fn from(s: String) -> StoreDir {
        StoreDir::from(s.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `postgres://user:password@host:port/database`: the store is that PostgreSQL database,
    /// shared by any number of control-plane replicas. Empty: the embedded SQLite file in
    /// `data_dir`.
    #[serde(with = "typed::opt_string")]
    pub url: Option<String>,
    /// PEM file of the CA that signed the PostgreSQL server's certificate. Set: the connection
    /// is TLS (required) and the server must present a certificate for the URL's host signed
    /// by this CA. Empty: plain TCP.
    #[serde(with = "typed::opt_path")]
    pub ca_file: Option<PathBuf>,
    /// Directory of `outpost.db` and `admin-token`; `:memory:` keeps nothing (tests, demo).
    /// Not used with `url`.
    #[serde(with = "typed::text")]
    pub data_dir: StoreDir,
    /// Revisions the change log keeps; gateways further behind receive a full snapshot.
    pub change_log_limit: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    /// Longest lifetime of a gateway token, days.
    pub max_lifetime_days: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceSettings {
    /// An instance not heard from for this long is `stale`…
    #[serde(rename = "stale_after_secs", with = "typed::secs")]
    pub stale_after: Duration,
    /// …and after this long `disconnected`.
    #[serde(rename = "disconnected_after_secs", with = "typed::secs")]
    pub disconnected_after: Duration,
    /// …and after this long it leaves the list (a stopped instance too), so restarted
    /// gateways (a new instance id each time) do not pile up.
    #[serde(rename = "forget_after_secs", with = "typed::secs")]
    pub forget_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsSettings {
    /// Hours of request analytics kept in the store; older minutes are purged.
    pub retention_hours: u64,
}

impl Default for ControlPlaneSettings {
    fn default() -> Self {
        Self {
            admin: AdminSettings {
                listen: "0.0.0.0:7070".into(),
                token: String::new(),
                metrics_require_token: false,
            },
            gateway_api: GatewayApiSettings {
                listen: "0.0.0.0:7071".into(),
                tls_cert_file: None,
                tls_key_file: None,
                max_wait: Duration::from_secs(60),
            },
            store: StoreSettings {
                url: None,
                ca_file: None,
                data_dir: "./outpost-data".into(),
                change_log_limit: 10_000,
            },
            tokens: TokenSettings {
                max_lifetime_days: 30,
            },
            instances: InstanceSettings {
                stale_after: Duration::from_secs(30),
                disconnected_after: Duration::from_secs(120),
                forget_after: Duration::from_secs(300),
            },
            analytics: AnalyticsSettings {
                retention_hours: 24,
            },
            log: LogSettings::default(),
        }
    }
}

impl Default for AdminSettings {
    fn default() -> Self {
        ControlPlaneSettings::default().admin
    }
}
impl Default for GatewayApiSettings {
    fn default() -> Self {
        ControlPlaneSettings::default().gateway_api
    }
}
impl Default for StoreSettings {
    fn default() -> Self {
        ControlPlaneSettings::default().store
    }
}
impl Default for TokenSettings {
    fn default() -> Self {
        ControlPlaneSettings::default().tokens
    }
}
impl Default for InstanceSettings {
    fn default() -> Self {
        ControlPlaneSettings::default().instances
    }
}
impl Default for AnalyticsSettings {
    fn default() -> Self {
        ControlPlaneSettings::default().analytics
    }
}
impl Validate for ControlPlaneSettings {
    fn validate(&self, p: &mut Problems) {
        check_listen(p, "admin.listen", &self.admin.listen);
        check_listen(p, "gateway_api.listen", &self.gateway_api.listen);
        if self.gateway_api.tls_cert_file.is_some() != self.gateway_api.tls_key_file.is_some() {
            p.push(
                "gateway_api.tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            );
        }
        if !(1..=600).contains(&self.gateway_api.max_wait.as_secs()) {
            p.push("gateway_api.max_wait_secs", "must be 1..=600");
        }
        match &self.store.url {
            None if self.store.ca_file.is_some() => p.push(
                "store.ca_file",
                "is for store.url (PostgreSQL); set both or neither",
            ),
            None => {}
            Some(url) => {
                if !crate::control_plane::store::engine::is_postgres_url(url) {
                    p.push(
                        "store.url",
                        "must start with postgres:// or postgresql:// (or be empty for the SQLite data_dir)",
                    );
                }
                // Every replica must accept the same token, and a generated one would live in
                // one replica's data directory only.
                if self.admin.token.trim().is_empty() {
                    p.push(
                        "admin.token",
                        "must be set with store.url: the control-plane replicas sharing the database must share the admin token",
                    );
                }
            }
        }
        if self.store.change_log_limit == 0 {
            p.push("store.change_log_limit", "must be at least 1");
        }
        if !(1..=365).contains(&self.tokens.max_lifetime_days) {
            p.push("tokens.max_lifetime_days", "must be 1..=365");
        }
        if self.instances.stale_after >= self.instances.disconnected_after {
            p.push(
                "instances.stale_after_secs",
                "must be less than instances.disconnected_after_secs",
            );
        }
        if self.instances.disconnected_after >= self.instances.forget_after {
            p.push(
                "instances.forget_after_secs",
                "must be greater than instances.disconnected_after_secs",
            );
        }
        if !(1..=MAX_RETENTION_HOURS).contains(&self.analytics.retention_hours) {
            p.push(
                "analytics.retention_hours",
                format!("must be 1..={MAX_RETENTION_HOURS} (one year)"),
            );
        }
        self.log.validate(p);
    }
}

/// Longest analytics retention accepted, hours.
pub const MAX_RETENTION_HOURS: u64 = 24 * 366;

#[cfg(test)]
mod tests {
    use super::ControlPlaneSettings;
    use crate::settings::Validate;

    #[test]
    fn a_postgres_store_needs_a_postgres_url_and_a_shared_token() {
        let mut s = ControlPlaneSettings::default();
        s.store.url = Some("mysql://db/x".into());
        s.store.ca_file = Some("/etc/ca.pem".into());
        let mut p = outpost_model::Problems::new();
        s.validate(&mut p);
        let text = p.to_string();
        assert!(text.contains("store.url"), "{text}");
        assert!(text.contains("admin.token"), "{text}");
        s.store.url = Some("postgres://outpost@db/outpost".into());
        s.admin.token = "t".into();
        let mut p = outpost_model::Problems::new();
        s.validate(&mut p);
        assert!(p.is_empty(), "{p}");
        s.store.url = None;
        let mut p = outpost_model::Problems::new();
        s.validate(&mut p);
        assert!(p.to_string().contains("store.ca_file"), "{p}");
    }

    #[test]
    fn env_names_are_unique() {
        crate::settings::env_names_are_unique::<super::ControlPlaneSettings>().unwrap();
    }
}
