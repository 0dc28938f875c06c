//! The status board, as pure transitions over [`ConnectivityStatus`]. Time is passed in.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::token::TokenInfo;

/// How the gateway sees the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlPlaneState {
    /// The last call succeeded.
    Connected,
    /// Calls fail, but one succeeded within the grace window: likely a blip.
    Degraded,
    /// No successful call within the grace window (or ever).
    Disconnected,
    /// The control plane refused our token (expired, revoked, forged). Sticky until a call
    /// succeeds again: that is the last thing the control plane told us.
    Unauthorized,
    /// Offline mode: the control plane is never contacted.
    Offline,
}

impl ControlPlaneState {
    pub const ALL: [ControlPlaneState; 5] = [
        Self::Connected,
        Self::Degraded,
        Self::Disconnected,
        Self::Unauthorized,
        Self::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Degraded => "degraded",
            Self::Disconnected => "disconnected",
            Self::Unauthorized => "unauthorized",
            Self::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RedisState {
    /// No Redis configured: in-process stores only.
    None,
    Connected,
    Disconnected,
}

impl RedisState {
    /// The heartbeat's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
        }
    }
}

/// Where the configuration being served came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigSource {
    ControlPlane,
    Backup,
    Offline,
}

impl ConfigSource {
    /// The heartbeat's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ControlPlane => "control-plane",
            Self::Backup => "backup",
            Self::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlPlaneStatus {
    pub state: ControlPlaneState,
    /// Why the state is what it is when it is not `connected`.
    pub reason: Option<String>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub consecutive_failures: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedisStatus {
    pub state: RedisState,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedConfig {
    pub source: ConfigSource,
    pub revision: u64,
    pub hash: String,
    pub applied_at: DateTime<Utc>,
}

/// A snapshot the route table would not take; the previous one keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub revision: u64,
    pub hash: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenStatus {
    pub gateway: String,
    pub expiry: DateTime<Utc>,
    /// `control_plane.token_warning_hours`: within this of `expiry` the token is `expiring`.
    #[serde(skip)]
    pub warning: TimeDelta,
}

impl TokenStatus {
    /// Whether the token is within its warning window (or expired) at `now`.
    pub fn expiring(&self, now: DateTime<Utc>) -> bool {
        crate::token::expiring(self.expiry, now, self.warning)
    }
}

/// Everything `/readyz`, `/metrics` and heartbeats report, published as one immutable value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectivityStatus {
    pub control_plane: ControlPlaneStatus,
    pub redis: RedisStatus,
    /// `None` until a configuration is loaded: the gateway is not ready before.
    pub config: Option<AppliedConfig>,
    pub last_refusal: Option<Refusal>,
    pub refusals: u64,
    pub token: Option<TokenStatus>,
}

impl ConnectivityStatus {
    pub fn ready(&self) -> bool {
        self.config.is_some()
    }

    /// Ready or not, and why not, for a gateway that is `draining` or not: what `/readyz`
    /// answers and heartbeats report.
    pub fn readiness(&self, draining: bool) -> outpost_model::wire::Readiness {
        let reason = if draining {
            Some(DRAINING.to_owned())
        } else if self.config.is_some() {
            None
        } else if let Some(r) = &self.last_refusal {
            Some(format!(
                "no configuration loaded yet: revision {} was refused: {}",
                r.revision, r.reason
            ))
        } else {
            let cp = &self.control_plane;
            Some(match (&cp.state, &cp.reason) {
                (ControlPlaneState::Connected, _) | (_, None) => {
                    "no configuration loaded yet".to_owned()
                }
                (state, Some(why)) => format!(
                    "no configuration loaded yet (control plane {}: {why})",
                    state.as_str()
                ),
            })
        };
        outpost_model::wire::Readiness {
            ready: reason.is_none(),
            reason,
        }
    }
}

/// Why a draining gateway is not ready.
pub const DRAINING: &str =
    "draining: the process is stopping; the listeners serve until the drain period ends";

/// The transitions. `grace` is how long after the last success a failure counts as
/// `degraded` rather than `disconnected`.
#[derive(Debug, Clone)]
pub struct Connectivity {
    status: ConnectivityStatus,
    grace: TimeDelta,
}

impl Connectivity {
    /// `token_warning`: how long before its expiry the token counts as expiring.
    pub fn new(
        offline: bool,
        redis_configured: bool,
        token: Option<&TokenInfo>,
        token_warning: TimeDelta,
        grace: TimeDelta,
    ) -> Self {
        let status = ConnectivityStatus {
            control_plane: ControlPlaneStatus {
                state: if offline {
                    ControlPlaneState::Offline
                } else {
                    ControlPlaneState::Disconnected
                },
                reason: if offline {
                    Some("offline mode: the control plane is not contacted".into())
                } else {
                    Some("not contacted yet".into())
                },
                last_success: None,
                last_error: None,
                last_error_at: None,
                consecutive_failures: 0,
            },
            redis: RedisStatus {
                state: if redis_configured {
                    RedisState::Disconnected
                } else {
                    RedisState::None
                },
                last_error: None,
            },
            config: None,
            last_refusal: None,
            refusals: 0,
            token: token.map(|t| TokenStatus {
                gateway: t.gateway.clone(),
                expiry: t.expiry,
                warning: token_warning,
            }),
        };
        Self { status, grace }
    }

    pub fn status(&self) -> &ConnectivityStatus {
        &self.status
    }

    pub fn control_plane_ok(&mut self, now: DateTime<Utc>) {
        let cp = &mut self.status.control_plane;
        cp.state = ControlPlaneState::Connected;
        cp.reason = None;
        cp.last_success = Some(now);
        cp.consecutive_failures = 0;
    }

    pub fn control_plane_failed(&mut self, now: DateTime<Utc>, error: String) {
        let grace = self.grace;
        let cp = &mut self.status.control_plane;
        cp.consecutive_failures += 1;
        cp.last_error = Some(error.clone());
        cp.last_error_at = Some(now);
        if cp.state == ControlPlaneState::Unauthorized {
            return;
        }
        cp.state = if cp.last_success.is_some_and(|t| now - t <= grace) {
            ControlPlaneState::Degraded
        } else {
            ControlPlaneState::Disconnected
        };
        cp.reason = Some(error);
    }

    pub fn control_plane_unauthorized(&mut self, now: DateTime<Utc>, reason: String) {
        let cp = &mut self.status.control_plane;
        cp.consecutive_failures += 1;
        cp.state = ControlPlaneState::Unauthorized;
        cp.reason = Some(format!(
            "the control plane refused the gateway token: {reason}"
        ));
        cp.last_error = Some(reason);
        cp.last_error_at = Some(now);
    }

    /// Ends a `degraded` spell once the grace window has passed without a success. Returns
    /// whether anything changed.
    pub fn tick(&mut self, now: DateTime<Utc>) -> bool {
        let cp = &mut self.status.control_plane;
        let expired = cp.last_success.is_none_or(|t| now - t > self.grace);
        if cp.state == ControlPlaneState::Degraded && expired {
            cp.state = ControlPlaneState::Disconnected;
            return true;
        }
        false
    }

    pub fn redis_observed(&mut self, reachable: bool, error: Option<String>) {
        self.status.redis = RedisStatus {
            state: if reachable {
                RedisState::Connected
            } else {
                RedisState::Disconnected
            },
            last_error: error.or(self.status.redis.last_error.take()),
        };
    }

    pub fn config_applied(&mut self, applied: AppliedConfig) {
        self.status.config = Some(applied);
    }

    /// The control plane confirmed the configuration served: from now on it is the control
    /// plane's. Ignored unless it is the one served (a newer one may have been applied since).
    pub fn config_confirmed(&mut self, revision: u64, hash: &str) -> bool {
        match &mut self.status.config {
            Some(c) if c.revision == revision && c.hash == hash => {
                let changed = c.source != ConfigSource::ControlPlane;
                c.source = ConfigSource::ControlPlane;
                changed
            }
            _ => false,
        }
    }

    pub fn snapshot_refused(&mut self, refusal: Refusal) {
        self.status.refusals += 1;
        self.status.last_refusal = Some(refusal);
    }
}
