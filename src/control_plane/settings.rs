//! Control plane settings (`outpost control-plane --config FILE`); see `config/control-plane.toml`.

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
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// Longest long-poll wait a gateway may ask for (`max_wait_secs`).
    #[serde(rename = "max_wait_secs", with = "typed::secs")]
    pub max_wait: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Directory of `outpost.db` and `admin-token`; `:memory:` keeps nothing (tests, demo).
    pub data_dir: String,
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
                tls_cert_file: String::new(),
                tls_key_file: String::new(),
                max_wait: Duration::from_secs(60),
            },
            store: StoreSettings {
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
impl Validate for ControlPlaneSettings {
    fn validate(&self, p: &mut Problems) {
        check_listen(p, "admin.listen", &self.admin.listen);
        check_listen(p, "gateway_api.listen", &self.gateway_api.listen);
        if self.gateway_api.tls_cert_file.is_empty() != self.gateway_api.tls_key_file.is_empty() {
            p.push(
                "gateway_api.tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            );
        }
        if !(1..=600).contains(&self.gateway_api.max_wait.as_secs()) {
            p.push("gateway_api.max_wait_secs", "must be 1..=600");
        }
        if self.store.data_dir.is_empty() {
            p.push(
                "store.data_dir",
                "must not be empty (use :memory: for no persistence)",
            );
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
        self.log.validate(p);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn env_names_are_unique() {
        crate::settings::env_names_are_unique::<super::ControlPlaneSettings>().unwrap();
    }
}
