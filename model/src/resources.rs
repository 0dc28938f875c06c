//! The resources of the management model.
//!
//! Names are the identity of every resource (`orders-api`, `gold`, `site-a`): they appear in
//! URLs, in the declarative file and in references between resources, so they are restricted to
//! `[a-z0-9][a-z0-9-_.]*` (see [`crate::validate::check_name`]).

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::policy::PolicyDocument;

/// The kinds of resources, in dependency order: a kind may only refer to kinds before it, which
/// is also the order `apply` creates them in (and the reverse order it deletes them in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    NamedValue,
    Backend,
    Api,
    Product,
    Subscription,
    Gateway,
    GlobalPolicy,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::NamedValue,
        Kind::Backend,
        Kind::Api,
        Kind::Product,
        Kind::Subscription,
        Kind::Gateway,
        Kind::GlobalPolicy,
    ];

    /// The plural used in REST paths (`/api/v1/named-values`) and in the declarative file.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::NamedValue => "named-values",
            Kind::Backend => "backends",
            Kind::Api => "apis",
            Kind::Product => "products",
            Kind::Subscription => "subscriptions",
            Kind::Gateway => "gateways",
            Kind::GlobalPolicy => "policies",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::NamedValue => "named-value",
            Kind::Backend => "backend",
            Kind::Api => "api",
            Kind::Product => "product",
            Kind::Subscription => "subscription",
            Kind::Gateway => "gateway",
            Kind::GlobalPolicy => "policy",
        }
    }

    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.singular())
    }
}

/// Identity of a resource across the store, the change log and the sync protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.plural(), self.name)
    }
}

/// An API: a path suffix on the gateway's hostnames, a backend, and the operations it exposes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Api {
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    /// Path suffix the API is published under, without leading slash (`orders` →
    /// `https://host/orders/...`). Empty means the root.
    #[serde(default)]
    pub path: String,
    /// Hostnames this API answers on; empty means every hostname of the gateway.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Name of a [`Backend`] resource.
    pub backend: String,
    #[serde(default = "yes")]
    pub subscription_required: bool,
    /// API version, when several versions share one path (`v1`, `2024-01-01`).
    #[serde(default)]
    pub version: Option<ApiVersion>,
    #[serde(default)]
    pub operations: Vec<Operation>,
    #[serde(default)]
    pub policies: PolicyDocument,
    /// Whether the gateways write this API's requests to their access log (when the gateway's
    /// `[access_log]` is enabled). Exports leave it out while true ([`crate::prune`]).
    #[serde(default = "yes")]
    pub access_log: bool,
}

/// How a versioned API's version is chosen by the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ApiVersion {
    pub name: String,
    #[serde(default)]
    pub scheme: VersionScheme,
    /// Header or query parameter name for the `header` / `query` schemes.
    #[serde(default = "default_version_param")]
    pub parameter: String,
}

fn default_version_param() -> String {
    "api-version".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionScheme {
    /// `/{path}/{version}/...`
    #[default]
    Segment,
    /// `api-version: v1` request header.
    Header,
    /// `?api-version=v1` query parameter.
    Query,
}

/// One operation of an API: a method and a URL template such as `/orders/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Operation {
    pub name: String,
    /// `GET`, `POST`, …, or `*` for any method.
    pub method: String,
    /// Path below the API's path suffix; `{name}` marks a parameter, a trailing `{*rest}`
    /// matches the remainder.
    pub url_template: String,
    /// Lets a template parameter match a segment with an encoded `/` or `\` (`%2F`, `%5C`),
    /// for backends that expect one (e.g. a file path in one segment). Off by default: a
    /// backend that decodes `%2F` would see a different path than the gateway routed.
    #[serde(default)]
    pub allow_encoded_slashes: bool,
    #[serde(default)]
    pub policies: PolicyDocument,
}

/// A product groups APIs; subscriptions to it grant access to all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Product {
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub apis: Vec<String>,
    #[serde(default = "yes")]
    pub subscription_required: bool,
    #[serde(default)]
    pub policies: PolicyDocument,
}

/// What a subscription grants access to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    AllApis,
    Product(String),
    Api(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubscriptionState {
    #[default]
    Active,
    Suspended,
    Expired,
}

/// A subscription: two keys (so one can be rotated while the other is in use), a scope and a state.
///
/// Keys may be left empty in a request or file: the control plane then generates them
/// (32 random bytes, hex).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Subscription {
    pub name: String,
    #[serde(default)]
    pub display_name: String,
    pub scope: Scope,
    #[serde(default)]
    pub state: SubscriptionState,
    #[serde(default)]
    pub primary_key: String,
    #[serde(default)]
    pub secondary_key: String,
    /// After this instant the subscription is treated as expired.
    #[serde(default)]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Subscription {
    /// The state at `now`, counting `expires_at`.
    pub fn effective_state(&self, now: chrono::DateTime<chrono::Utc>) -> SubscriptionState {
        match self.expires_at {
            Some(at) if at <= now && self.state == SubscriptionState::Active => {
                SubscriptionState::Expired
            }
            _ => self.state,
        }
    }
}

/// A backend service the gateway forwards to: one URL, or a pool of `members`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    /// Base URL; the operation's path is appended (`http://orders.internal:8000/v2`). Empty when
    /// the backend is a pool (`members`).
    #[serde(default)]
    pub url: String,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    #[serde(default)]
    pub tls: BackendTls,
    /// HTTP version spoken to the backend.
    #[serde(default)]
    pub protocol: BackendProtocol,
    /// A pool: several base URLs sharing the requests, each with a weight. Set either `url` or
    /// `members`. The settings below apply to pools only.
    #[serde(default)]
    pub members: Vec<BackendMember>,
    /// How a pool picks a member; `round-robin` when not set.
    #[serde(default)]
    pub load_balancing: Option<LoadBalancing>,
    /// Passive health: when a member is ejected after failing. Defaults when not set
    /// ([`PassiveHealth::default`]); `consecutive-failures: 0` turns it off.
    #[serde(default)]
    pub passive_health: Option<PassiveHealth>,
    /// Active health checks, off when not set.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// A circuit breaker per member, off when not set.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// One member of a backend pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BackendMember {
    /// Base URL, as a backend's `url`.
    pub url: String,
    /// Share of the requests relative to the other members (1-1000).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// How a pool picks a member for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancing {
    /// Smooth weighted round robin: each member in proportion to its weight, interleaved.
    #[default]
    RoundRobin,
    /// Power of two choices: of two members drawn at random in proportion to their weights,
    /// the one with fewer requests in flight.
    LeastRequest,
}

/// Passive health: a member that fails `consecutive-failures` requests in a row is ejected for
/// `ejection-ms`, doubled at each ejection that follows without a success between (at most
/// `max-ejection-ms`), then tried again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PassiveHealth {
    /// 0 turns passive health off.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_ejection_ms")]
    pub ejection_ms: u64,
    #[serde(default = "default_max_ejection_ms")]
    pub max_ejection_ms: u64,
    /// Backend statuses counted as failures, besides connection failures and timeouts.
    #[serde(default = "default_failure_statuses")]
    pub failure_statuses: Vec<u16>,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            ejection_ms: default_ejection_ms(),
            max_ejection_ms: default_max_ejection_ms(),
            failure_statuses: default_failure_statuses(),
        }
    }
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_ejection_ms() -> u64 {
    10_000
}
fn default_max_ejection_ms() -> u64 {
    300_000
}
fn default_failure_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}

/// Active health checks: a `GET path` to every member each `interval-ms`, off the request path.
/// A member is taken out after `unhealthy-threshold` failed checks in a row (a status outside
/// 200-399, no answer within `timeout-ms`) and back in after `healthy-threshold` good ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HealthCheck {
    /// Below each member's base URL, starting with `/`.
    pub path: String,
    #[serde(default = "default_check_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

fn default_check_interval_ms() -> u64 {
    5_000
}
fn default_check_timeout_ms() -> u64 {
    2_000
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

/// A circuit breaker per member: opens when at least `min-requests` requests in a `window-ms`
/// window saw `error-rate-percent` % or more failures; after `open-ms` one request probes the
/// member (half-open): its success closes the breaker, its failure opens it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(default = "default_error_rate")]
    pub error_rate_percent: u32,
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
}

fn default_error_rate() -> u32 {
    50
}
fn default_window_ms() -> u64 {
    10_000
}
fn default_min_requests() -> u32 {
    20
}
fn default_open_ms() -> u64 {
    30_000
}

/// How the gateway speaks to a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendProtocol {
    /// `https://`: HTTP/2 when the backend picks it by ALPN, else HTTP/1.1. `http://`: HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: by ALPN on `https://`, with prior knowledge (h2c) on `http://`. What gRPC
    /// backends need.
    H2,
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BackendTls {
    /// Verify the backend's certificate chain and hostname.
    #[serde(default = "yes")]
    pub verify: bool,
    /// Extra trusted CA certificates (PEM), e.g. an internal CA.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// SNI / verification name when it differs from the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl Default for BackendTls {
    fn default() -> Self {
        Self {
            verify: true,
            ca_pem: None,
            server_name: None,
        }
    }
}

/// A named value, referenced as `{{name}}` in policies and backend URLs. Secret values are never
/// returned by the management API nor logged; gateways receive them because they must use them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NamedValue {
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub secret: bool,
}

/// A self-hosted gateway resource: where it runs and which APIs it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Gateway {
    pub name: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub description: String,
    /// Names of the APIs assigned to this gateway; it receives nothing else.
    #[serde(default)]
    pub apis: Vec<String>,
    /// Hostnames the gateway answers on, with optional certificates for HTTPS.
    #[serde(default)]
    pub hostnames: Vec<GatewayHostname>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GatewayHostname {
    pub hostname: String,
    /// PEM certificate chain and key, usually `{{secret-named-value}}` references.
    #[serde(default)]
    pub certificate_pem: Option<String>,
    #[serde(default)]
    pub key_pem: Option<String>,
    /// Whether TLS clients of this hostname are asked for a certificate (mutual TLS).
    #[serde(default)]
    pub client_certificate: ClientCertificateMode,
    /// CA certificates (PEM) a client certificate must chain to, usually a `{{named-value}}`
    /// reference. Needed for `required`; with `optional` and no CAs any certificate is taken
    /// (its key is proven, its trust is not: see `validate-client-certificate`).
    #[serde(default)]
    pub client_ca_pem: Option<String>,
}

/// Client certificates (mutual TLS) on one hostname of a gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientCertificateMode {
    /// Clients are not asked for a certificate.
    #[default]
    None,
    /// Clients are asked; one without a certificate is served too.
    Optional,
    /// A client without a valid certificate fails the handshake.
    Required,
}

impl ClientCertificateMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientCertificateMode::None => "none",
            ClientCertificateMode::Optional => "optional",
            ClientCertificateMode::Required => "required",
        }
    }
}

/// The policy document at global scope. There is one, named `global`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GlobalPolicy {
    #[serde(default = "global_name")]
    pub name: String,
    #[serde(default)]
    pub policies: PolicyDocument,
}

pub const GLOBAL_POLICY_NAME: &str = "global";

fn global_name() -> String {
    GLOBAL_POLICY_NAME.to_owned()
}

fn yes() -> bool {
    true
}

/// Any resource, so the store, the change log and the protocol handle every kind alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resource {
    NamedValue(NamedValue),
    Backend(Backend),
    Api(Api),
    Product(Product),
    Subscription(Subscription),
    Gateway(Gateway),
    GlobalPolicy(GlobalPolicy),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::NamedValue(_) => Kind::NamedValue,
            Resource::Backend(_) => Kind::Backend,
            Resource::Api(_) => Kind::Api,
            Resource::Product(_) => Kind::Product,
            Resource::Subscription(_) => Kind::Subscription,
            Resource::Gateway(_) => Kind::Gateway,
            Resource::GlobalPolicy(_) => Kind::GlobalPolicy,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Resource::NamedValue(r) => &r.name,
            Resource::Backend(r) => &r.name,
            Resource::Api(r) => &r.name,
            Resource::Product(r) => &r.name,
            Resource::Subscription(r) => &r.name,
            Resource::Gateway(r) => &r.name,
            Resource::GlobalPolicy(r) => &r.name,
        }
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(self.kind(), self.name())
    }

    /// Parses the JSON body of one resource of `kind` (as the REST API and the store hold it).
    pub fn from_json(kind: Kind, value: serde_json::Value) -> Result<Resource, serde_json::Error> {
        Ok(match kind {
            Kind::NamedValue => Resource::NamedValue(serde_json::from_value(value)?),
            Kind::Backend => Resource::Backend(serde_json::from_value(value)?),
            Kind::Api => Resource::Api(serde_json::from_value(value)?),
            Kind::Product => Resource::Product(serde_json::from_value(value)?),
            Kind::Subscription => Resource::Subscription(serde_json::from_value(value)?),
            Kind::Gateway => Resource::Gateway(serde_json::from_value(value)?),
            Kind::GlobalPolicy => Resource::GlobalPolicy(serde_json::from_value(value)?),
        })
    }

    /// The JSON body of this resource without the kind wrapper.
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            Resource::NamedValue(r) => serde_json::to_value(r),
            Resource::Backend(r) => serde_json::to_value(r),
            Resource::Api(r) => serde_json::to_value(r),
            Resource::Product(r) => serde_json::to_value(r),
            Resource::Subscription(r) => serde_json::to_value(r),
            Resource::Gateway(r) => serde_json::to_value(r),
            Resource::GlobalPolicy(r) => serde_json::to_value(r),
        };
        value.expect("model types serialise to JSON infallibly")
    }

    /// The JSON body as shown to operators: secret named values masked.
    pub fn to_public_json(&self) -> serde_json::Value {
        let mut value = self.to_json();
        if let Resource::NamedValue(nv) = self
            && nv.secret
        {
            value["value"] = serde_json::Value::String(SECRET_MASK.to_owned());
        }
        value
    }
}

/// What the management API shows in place of a secret value. Sending it back unchanged in an
/// update keeps the stored secret.
pub const SECRET_MASK: &str = "********";
