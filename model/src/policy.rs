//! Policy documents and the policies the gateway implements.
//!
//! A document has four ordered sections. `base` marks where the enclosing scope's section runs
//! (global → product → API → operation); a section without `base` replaces the enclosing one.
//! In the declarative file a step is either the bare word `base` or a one-key map:
//!
//! ```yaml
//! inbound:
//!   - base
//!   - rate-limit: {calls: 100, renewal-period: 60}
//!   - set-header: {name: X-Env, value: prod}
//! ```
//!
//! The enum below is the single list of supported policies: the control plane accepts exactly
//! these names (anything else is a validation problem, never passed on), and the gateway's
//! pipeline compiler matches on it exhaustively, so adding a variant without implementing it
//! does not compile.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The four sections of a policy document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PolicyDocument {
    #[serde(default)]
    pub inbound: Vec<Policy>,
    #[serde(default)]
    pub backend: Vec<Policy>,
    #[serde(default)]
    pub outbound: Vec<Policy>,
    #[serde(default)]
    pub on_error: Vec<Policy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    Inbound,
    Backend,
    Outbound,
    OnError,
}

impl Section {
    pub const ALL: [Section; 4] = [
        Section::Inbound,
        Section::Backend,
        Section::Outbound,
        Section::OnError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Section::Inbound => "inbound",
            Section::Backend => "backend",
            Section::Outbound => "outbound",
            Section::OnError => "on-error",
        }
    }
}

impl PolicyDocument {
    pub fn section(&self, s: Section) -> &[Policy] {
        match s {
            Section::Inbound => &self.inbound,
            Section::Backend => &self.backend,
            Section::Outbound => &self.outbound,
            Section::OnError => &self.on_error,
        }
    }

    pub fn section_mut(&mut self, s: Section) -> &mut Vec<Policy> {
        match s {
            Section::Inbound => &mut self.inbound,
            Section::Backend => &mut self.backend,
            Section::Outbound => &mut self.outbound,
            Section::OnError => &mut self.on_error,
        }
    }

    pub fn is_empty(&self) -> bool {
        Section::ALL.iter().all(|s| self.section(*s).is_empty())
    }

    /// Every policy with its section, in document order.
    pub fn iter(&self) -> impl Iterator<Item = (Section, &Policy)> {
        Section::ALL
            .into_iter()
            .flat_map(move |s| self.section(s).iter().map(move |p| (s, p)))
    }
}

/// What a shared-state policy does when its shared store (Redis) cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutageMode {
    /// Admit every request while the store is unreachable.
    FailOpen,
    /// Count on this node only, against the node's share of the limit.
    #[default]
    Local,
    /// Refuse every request while the store is unreachable.
    FailClosed,
}

/// Which cache tier(s) a cache policy uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CachingType {
    /// The shared (Redis) tier when configured and reachable, with the in-process tier in front.
    #[default]
    PreferExternal,
    /// Only the shared tier.
    External,
    /// Only the in-process tier of this node.
    Internal,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExistsAction {
    #[default]
    Override,
    Skip,
    Append,
    Delete,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IpFilterAction {
    #[default]
    Allow,
    Forbid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RateLimit {
    pub calls: u64,
    /// Sliding window length in seconds.
    pub renewal_period: u64,
    /// Count per operation instead of per API for the subscription.
    #[serde(default)]
    pub per_operation: bool,
    #[serde(default = "retry_after")]
    pub retry_after_header_name: String,
    #[serde(default = "remaining_calls")]
    pub remaining_calls_header_name: String,
    #[serde(default)]
    pub outage: OutageMode,
    /// Checks each gateway thread may admit ahead from a lease of the counter, without a Redis
    /// round trip (never more than the limit; see docs/rate-limiting.md). Absent: every check
    /// is decided by Redis.
    #[serde(default)]
    pub local_budget: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RateLimitByKey {
    pub calls: u64,
    pub renewal_period: u64,
    /// Key template, e.g. `{request.ip}` or `{request.header.X-Tenant}`.
    pub counter_key: String,
    /// Only count responses whose status matches, e.g. `2xx`, `200-299,404`.
    #[serde(default)]
    pub increment_condition: Option<String>,
    #[serde(default = "one")]
    pub increment_count: u64,
    #[serde(default = "retry_after")]
    pub retry_after_header_name: String,
    #[serde(default = "remaining_calls")]
    pub remaining_calls_header_name: String,
    #[serde(default)]
    pub outage: OutageMode,
    /// Checks each gateway thread may admit ahead from a lease of the counter, without a Redis
    /// round trip (never more than the limit; see docs/rate-limiting.md). Absent: every check
    /// is decided by Redis.
    #[serde(default)]
    pub local_budget: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Quota {
    /// Calls per period.
    #[serde(default)]
    pub calls: Option<u64>,
    /// Kilobytes (request + response bodies) per period.
    #[serde(default)]
    pub bandwidth: Option<u64>,
    /// Fixed window length in seconds (1 … 31_536_000; typically hours to a year).
    pub renewal_period: u64,
    #[serde(default)]
    pub outage: OutageMode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct QuotaByKey {
    #[serde(default)]
    pub calls: Option<u64>,
    #[serde(default)]
    pub bandwidth: Option<u64>,
    pub renewal_period: u64,
    pub counter_key: String,
    #[serde(default)]
    pub increment_condition: Option<String>,
    #[serde(default)]
    pub outage: OutageMode,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CacheLookup {
    #[serde(default)]
    pub vary_by_header: Vec<String>,
    #[serde(default)]
    pub vary_by_query_parameter: Vec<String>,
    /// Cache per subscription (a developer's responses are not served to another).
    #[serde(default)]
    pub vary_by_developer: bool,
    /// Serve and store even when the request says `Cache-Control: no-store` / `no-cache`.
    #[serde(default)]
    pub ignore_cache_control: bool,
    #[serde(default)]
    pub caching_type: CachingType,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CacheStore {
    /// Seconds.
    pub duration: u64,
    /// Store even when the response says `Cache-Control: no-store` / `private`.
    #[serde(default)]
    pub ignore_cache_control: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CacheLookupValue {
    pub key: String,
    pub variable_name: String,
    #[serde(default)]
    pub default_value: Option<String>,
    #[serde(default)]
    pub caching_type: CachingType,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CacheStoreValue {
    pub key: String,
    pub value: String,
    pub duration: u64,
    #[serde(default)]
    pub caching_type: CachingType,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CacheRemoveValue {
    pub key: String,
    #[serde(default)]
    pub caching_type: CachingType,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ValidateJwt {
    #[serde(default = "authorization")]
    pub header_name: String,
    #[serde(default)]
    pub query_parameter_name: Option<String>,
    #[serde(default = "status_401")]
    pub failed_validation_httpcode: u16,
    #[serde(default = "jwt_error_message")]
    pub failed_validation_error_message: String,
    #[serde(default = "yes")]
    pub require_expiration_time: bool,
    #[serde(default)]
    pub clock_skew: u64,
    #[serde(default)]
    pub issuers: Vec<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Static keys: HMAC secrets (base64) or RSA/EC/Ed25519 public keys (PEM). At least one
    /// key source (these, `jwks-url` or `openid-config-url`) is needed.
    #[serde(default)]
    pub signing_keys: Vec<SigningKey>,
    /// A JSON Web Key Set, fetched and refreshed by the gateway off the request path.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// An OpenID Connect discovery document whose `jwks_uri` is followed.
    #[serde(default)]
    pub openid_config_url: Option<String>,
    /// Seconds between two background refreshes of the fetched keys.
    #[serde(default = "jwks_refresh_interval")]
    pub jwks_refresh_interval: u64,
    #[serde(default)]
    pub required_claims: Vec<RequiredClaim>,
}

/// One hour: identity providers announce new keys well ahead of using them; an unknown `kid`
/// triggers an earlier refresh anyway.
fn jwks_refresh_interval() -> u64 {
    3600
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SigningKey {
    /// Base64 HMAC secret (HS256/384/512).
    HmacBase64(String),
    /// RSA public key, PEM (RS256/384/512, PS*).
    RsaPem(String),
    /// EC public key, PEM (ES256/384).
    EcPem(String),
    /// Ed25519 public key, PEM (EdDSA).
    EdPem(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RequiredClaim {
    pub name: String,
    /// Accepted values; empty means the claim only has to be present.
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CheckHeader {
    pub name: String,
    #[serde(default = "status_401")]
    pub failed_check_httpcode: u16,
    #[serde(default = "check_header_message")]
    pub failed_check_error_message: String,
    #[serde(default)]
    pub ignore_case: bool,
    /// Accepted values; empty means the header only has to be present.
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IpFilter {
    #[serde(default)]
    pub action: IpFilterAction,
    /// Addresses (`10.0.0.1`) or CIDR blocks (`10.0.0.0/8`, `fd00::/8`).
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Cors {
    /// Origins, or `*`.
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub allowed_methods: Vec<String>,
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default)]
    pub preflight_result_max_age: u64,
    /// Answer a preflight whose origin is not allowed with 403 instead of passing it on.
    #[serde(default = "yes")]
    pub terminate_unmatched_request: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SetHeader {
    pub name: String,
    /// Template; absent with `exists-action: delete` or with `value-expression`.
    #[serde(default)]
    pub value: Option<String>,
    /// CEL expression whose result is the value (instead of `value`).
    #[serde(default)]
    pub value_expression: Option<String>,
    #[serde(default)]
    pub exists_action: ExistsAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SetQueryParameter {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    /// CEL expression whose result is the value (instead of `value`).
    #[serde(default)]
    pub value_expression: Option<String>,
    #[serde(default)]
    pub exists_action: ExistsAction,
}

/// `choose`: runs the policies of the first `when` whose condition (CEL) is true, or
/// `otherwise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Choose {
    pub when: Vec<When>,
    #[serde(default)]
    pub otherwise: Vec<Policy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct When {
    /// CEL expression giving a bool.
    pub condition: String,
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// `set-variable`: `context.variables[name]` (and `{variable.NAME}`) for the later steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SetVariable {
    pub name: String,
    /// Template …
    #[serde(default)]
    pub value: Option<String>,
    /// … or CEL expression (exactly one of the two).
    #[serde(default)]
    pub value_expression: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RewriteUri {
    /// New path (and optional query) for the backend; `{param}` takes the operation's URL
    /// template parameters, other templates as in set-header.
    pub template: String,
    /// Keep query parameters of the original request that the template does not set.
    #[serde(default = "yes")]
    pub copy_unmatched_params: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SetBackendService {
    /// Name of a backend resource …
    #[serde(default)]
    pub backend_id: Option<String>,
    /// … or a base URL (exactly one of the two).
    #[serde(default)]
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MockResponse {
    #[serde(default = "status_200")]
    pub status_code: u16,
    #[serde(default = "json_content_type")]
    pub content_type: String,
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ReturnResponse {
    #[serde(default = "status_200")]
    pub status_code: u16,
    #[serde(default)]
    pub headers: Vec<HeaderValue>,
    /// Template.
    #[serde(default)]
    pub body: Option<String>,
    /// CEL expression whose result is the body (instead of `body`).
    #[serde(default)]
    pub body_expression: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Retry {
    /// Extra attempts after the first.
    pub count: u32,
    #[serde(default = "retry_interval")]
    pub interval_ms: u64,
    /// Retry when the backend answers with one of these statuses, e.g. `502,503,504` or `5xx`.
    #[serde(default = "retry_condition")]
    pub condition: String,
    /// Also retry when the backend cannot be reached or times out.
    #[serde(default = "yes")]
    pub on_connection_error: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ForwardRequest {
    /// Seconds until the backend must have answered (504 otherwise).
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimitConcurrency {
    /// Key template; requests with the same key share the limit on this node.
    pub key: String,
    pub max_count: u32,
}

/// `validate-client-certificate`: checks the certificate the client presented in the TLS
/// handshake (mutual TLS on the hostname, see `client-certificate` in the gateway resource).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ValidateClientCertificate {
    /// Refuse a certificate listed in `revoked-thumbprints` or `revocation-crl-pem`.
    #[serde(default = "yes")]
    pub validate_revocation: bool,
    /// Refuse a certificate that does not chain to the hostname's `client-ca-pem` (possible
    /// only on an `optional` hostname without CAs, which takes any certificate).
    #[serde(default = "yes")]
    pub validate_trust: bool,
    /// Refuse a certificate that is not valid yet.
    #[serde(default = "yes")]
    pub validate_not_before: bool,
    /// Refuse an expired certificate.
    #[serde(default = "yes")]
    pub validate_not_after: bool,
    /// Let a failed validation through; the reason goes to `{variable.client-certificate-error}`.
    #[serde(default)]
    pub ignore_error: bool,
    /// SHA-256 thumbprints (hex) of revoked certificates; an entry may be a `{{named-value}}`
    /// holding several, separated by commas or white space.
    #[serde(default)]
    pub revoked_thumbprints: Vec<String>,
    /// Certificate revocation lists (PEM), usually a `{{named-value}}`: a certificate whose
    /// issuer published one and whose serial number it lists is revoked.
    #[serde(default)]
    pub revocation_crl_pem: Option<String>,
    /// The certificate must match at least one of these (when any are given).
    #[serde(default)]
    pub identities: Vec<CertificateIdentity>,
}

/// One accepted identity of `validate-client-certificate`: every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CertificateIdentity {
    /// SHA-256 of the certificate (hex; case and `:` separators ignored).
    #[serde(default)]
    pub thumbprint: Option<String>,
    /// Hex; case, `:` separators and leading zeros ignored.
    #[serde(default)]
    pub serial_number: Option<String>,
    /// The subject as `{request.client-certificate.subject}` shows it, e.g. `CN=orders, O=Acme`.
    #[serde(default)]
    pub subject: Option<String>,
    /// The subject's common name (CN).
    #[serde(default)]
    pub common_name: Option<String>,
    /// The issuer's subject, as `{request.client-certificate.issuer}` shows it.
    #[serde(default)]
    pub issuer: Option<String>,
}

/// `authentication-certificate`: the gateway presents this client certificate to the backend
/// when the backend asks for one (mutual TLS towards the backend).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AuthenticationCertificate {
    /// PEM certificate chain, leaf first; usually a `{{named-value}}` reference.
    pub certificate_pem: String,
    /// PEM private key of the leaf; a `{{secret-named-value}}` reference.
    pub key_pem: String,
}

/// `set-status`: the status of the response the client gets (`outbound`, `on-error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SetStatus {
    /// The status …
    #[serde(default)]
    pub code: Option<u16>,
    /// … or a CEL expression giving it (exactly one of the two).
    #[serde(default)]
    pub code_expression: Option<String>,
}

/// `set-body`: replaces the request body (`inbound`, `backend`) or the response body
/// (`outbound`, `on-error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SetBody {
    /// Template …
    #[serde(default)]
    pub body: Option<String>,
    /// … or CEL expression (exactly one of the two).
    #[serde(default)]
    pub body_expression: Option<String>,
}

/// `set-method`: the method the request is forwarded with (`inbound`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SetMethod {
    /// An HTTP method, e.g. `POST` (upper case as sent).
    pub method: String,
}

/// `authentication-basic`: the gateway sends these HTTP Basic credentials to the backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AuthenticationBasic {
    /// Named values substituted; no `:`.
    pub username: String,
    /// Named values substituted; usually a `{{secret-named-value}}` reference.
    pub password: String,
}

/// `validate-headers`: the request headers the operation expects (`inbound`). Every failing
/// header is named in one 400 answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ValidateHeaders {
    pub headers: Vec<HeaderRule>,
    /// What to do with a request header not in `headers` (protocol headers excepted).
    #[serde(default)]
    pub unspecified_header_action: UnspecifiedHeaderAction,
}

/// One declared header of `validate-headers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HeaderRule {
    pub name: String,
    /// Refuse a request without it.
    #[serde(default = "yes")]
    pub required: bool,
    /// A regular expression every value must match whole …
    #[serde(default)]
    pub pattern: Option<String>,
    /// … or the values allowed (at most one of the two).
    #[serde(default)]
    pub values: Vec<String>,
}

/// `unspecified-header-action` of `validate-headers`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnspecifiedHeaderAction {
    #[default]
    Ignore,
    Prevent,
}

/// `find-and-replace`: every occurrence of `from` in the request body (`inbound`, `backend`) or
/// the response body (`outbound`, `on-error`) becomes `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FindAndReplace {
    /// Literal text, named values substituted; not empty.
    pub from: String,
    /// Literal text, named values substituted; may be empty (deletes `from`).
    pub to: String,
}

/// `send-request`: calls another service and keeps its answer for the later steps
/// (`context.responses[NAME]` in expressions, its body as `{variable.NAME}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SendRequest {
    /// Where the answer is kept: `context.responses[NAME]`, `{variable.NAME}`.
    pub response_variable_name: String,
    /// `new`: an empty request; `copy`: the current request's method, headers and body.
    #[serde(default)]
    pub mode: SendRequestMode,
    /// Absolute `http(s)://` URL, template …
    #[serde(default)]
    pub url: Option<String>,
    /// … or CEL expression giving it (exactly one of the two).
    #[serde(default)]
    pub url_expression: Option<String>,
    /// Default: `GET` (`new`), the request's method (`copy`).
    #[serde(default)]
    pub method: Option<String>,
    /// Set on the request after `mode` has built it, in order.
    #[serde(default)]
    pub headers: Vec<SetHeader>,
    /// Template …
    #[serde(default)]
    pub body: Option<String>,
    /// … or CEL expression giving the body (at most one of the two).
    #[serde(default)]
    pub body_expression: Option<String>,
    /// Seconds for the whole call: connecting, sending, the answer's head and body.
    #[serde(default = "send_request_timeout")]
    pub timeout: u64,
    /// A failed call (unreachable, timeout, answer too large) is kept as status 0 with its
    /// `error` instead of failing the request.
    #[serde(default)]
    pub ignore_error: bool,
}

/// `mode` of `send-request`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SendRequestMode {
    #[default]
    New,
    Copy,
}

fn send_request_timeout() -> u64 {
    20
}

/// A value computed per request, for the dimensions of `log` and `emit-metric` (a map from
/// the dimension's name, so each name is given once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Dimension {
    /// Template …
    #[serde(default)]
    pub value: Option<String>,
    /// … or CEL expression (exactly one of the two).
    #[serde(default)]
    pub value_expression: Option<String>,
}

/// `log`: one structured event in the gateway's process log (target `outpost::policy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Log {
    /// Template …
    #[serde(default)]
    pub message: Option<String>,
    /// … or CEL expression (exactly one of the two).
    #[serde(default)]
    pub message_expression: Option<String>,
    #[serde(default)]
    pub level: LogLevel,
    #[serde(default)]
    pub dimensions: BTreeMap<String, Dimension>,
}

/// `level` of `log`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

/// Most dimensions an `emit-metric` may have: each multiplies the metric's series.
pub const MAX_METRIC_DIMENSIONS: usize = 5;

/// `emit-metric`: adds `value` to the counter `outpost_custom_NAME_total` of the gateway's
/// `/metrics`, labelled with `api` and the dimensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EmitMetric {
    /// `[a-z][a-z0-9_]*`, at most 64 characters.
    pub name: String,
    #[serde(default = "one")]
    pub value: u64,
    /// At most [`MAX_METRIC_DIMENSIONS`]; names `[a-z][a-z0-9_]*` (label names), not `api`.
    #[serde(default)]
    pub dimensions: BTreeMap<String, Dimension>,
}

/// `validate-content`: the request body (`inbound`) or the response body (`outbound`) checked
/// against a JSON Schema per content type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ValidateContent {
    /// Bodies larger than this many bytes are not validated; `size-exceeded-action` decides.
    #[serde(default = "content_max_size")]
    pub max_size: u64,
    #[serde(default = "prevent")]
    pub size_exceeded_action: ContentAction,
    /// A body whose content type no rule of `content` names.
    #[serde(default = "ignore")]
    pub unspecified_content_type_action: ContentAction,
    /// By media type, lowercase (`application/json`, `application/problem+json`): a body's
    /// `Content-Type` is compared without its parameters and case.
    pub content: BTreeMap<String, ContentRule>,
}

/// The schema the bodies of one content type must satisfy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ContentRule {
    pub schema: JsonSchema,
    #[serde(default = "prevent")]
    pub action: ContentAction,
}

/// What `validate-content` does with a body that fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContentAction {
    /// Refuse it: 400 for a request, 502 for a response, listing the problems.
    #[default]
    Prevent,
    /// Let it through and log the problems.
    Detect,
    /// Let it through.
    Ignore,
}

fn content_max_size() -> u64 {
    1024 * 1024
}
fn prevent() -> ContentAction {
    ContentAction::Prevent
}
fn ignore() -> ContentAction {
    ContentAction::Ignore
}

/// A JSON Schema written inline, kept as its JSON text. It is written as the schema itself (an
/// object or a boolean) or as its JSON text, and always given back as its text: the gateway
/// link (bincode) cannot carry a self-describing value, and the export's pruning of empty values
/// must not change a schema (`{"const": null}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonSchema(pub String);

impl<'de> Deserialize<'de> for JsonSchema {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = if d.is_human_readable() {
            serde_json::Value::deserialize(d)?
        } else {
            serde_json::Value::String(String::deserialize(d)?)
        };
        let v = match v {
            serde_json::Value::String(text) => serde_json::from_str(&text)
                .map_err(|e| D::Error::custom(format!("the schema's JSON text: {e}")))?,
            other => other,
        };
        if !(v.is_object() || v.is_boolean()) {
            return Err(D::Error::custom("a JSON Schema is an object or a boolean"));
        }
        Ok(JsonSchema(v.to_string()))
    }
}

/// `validate-parameters`: the request's query and path parameters against the declared ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ValidateParameters {
    /// What a request with a failing parameter gets.
    #[serde(default = "prevent")]
    pub action: ContentAction,
    /// What a query parameter not in `query` gets.
    #[serde(default = "ignore")]
    pub unspecified_query_parameter_action: ContentAction,
    /// By name (decoded).
    #[serde(default)]
    pub query: BTreeMap<String, ParameterRule>,
    /// By URL template parameter name.
    #[serde(default)]
    pub path: BTreeMap<String, ParameterRule>,
}

/// One declared parameter of `validate-parameters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ParameterRule {
    #[serde(default, rename = "type")]
    pub kind: ParameterType,
    /// Refuse a request without it (path parameters are always there).
    #[serde(default)]
    pub required: bool,
    /// A regular expression the (decoded) value must match whole.
    #[serde(default)]
    pub pattern: Option<String>,
    /// The values allowed; empty: any.
    #[serde(default)]
    pub values: Vec<String>,
    /// Bounds of an `integer` or `number`.
    #[serde(default)]
    pub minimum: Option<f64>,
    #[serde(default)]
    pub maximum: Option<f64>,
}

/// `type` of a parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParameterType {
    #[default]
    String,
    Integer,
    Number,
    Boolean,
}

/// `json-to-xml`: a JSON body (the request's in `inbound`, the response's in `outbound` and
/// `on-error`) rewritten as XML; the mapping is in docs/policies.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JsonToXml {
    pub apply: JsonToXmlApply,
    /// Convert only when the request's `Accept` names an XML media type.
    #[serde(default = "yes")]
    pub consider_accept_header: bool,
    /// The element the JSON value becomes the content of.
    #[serde(default = "document_element")]
    pub root_element: String,
    /// Larger bodies are refused (413 for a request, 502 for a response), never buffered.
    #[serde(default = "content_max_size")]
    pub max_size: u64,
}

/// `apply` of `json-to-xml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JsonToXmlApply {
    /// Every body, whatever its `Content-Type` (one that is not JSON is an error).
    Always,
    /// Bodies whose `Content-Type` is JSON (`application/json`, `…+json`).
    ContentTypeJson,
}

/// `xml-to-json`: an XML body rewritten as JSON; the mapping is in docs/policies.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct XmlToJson {
    pub apply: XmlToJsonApply,
    /// Convert only when the request's `Accept` names a JSON media type.
    #[serde(default = "yes")]
    pub consider_accept_header: bool,
    /// Every child element becomes an array, not only repeated ones.
    #[serde(default)]
    pub always_array_child_elements: bool,
    /// Larger bodies are refused (413 for a request, 502 for a response), never buffered.
    #[serde(default = "content_max_size")]
    pub max_size: u64,
}

/// `apply` of `xml-to-json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XmlToJsonApply {
    Always,
    /// Bodies whose `Content-Type` is XML (`application/xml`, `text/xml`, `…+xml`).
    ContentTypeXml,
}

fn document_element() -> String {
    "Document".to_owned()
}

/// One step of a policy section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    Base,
    RateLimit(RateLimit),
    RateLimitByKey(RateLimitByKey),
    Quota(Quota),
    QuotaByKey(QuotaByKey),
    CacheLookup(CacheLookup),
    CacheStore(CacheStore),
    CacheLookupValue(CacheLookupValue),
    CacheStoreValue(CacheStoreValue),
    CacheRemoveValue(CacheRemoveValue),
    ValidateJwt(ValidateJwt),
    CheckHeader(CheckHeader),
    IpFilter(IpFilter),
    Cors(Cors),
    SetHeader(SetHeader),
    SetQueryParameter(SetQueryParameter),
    RewriteUri(RewriteUri),
    SetBackendService(SetBackendService),
    MockResponse(MockResponse),
    ReturnResponse(ReturnResponse),
    Retry(Retry),
    ForwardRequest(ForwardRequest),
    LimitConcurrency(LimitConcurrency),
    ValidateClientCertificate(ValidateClientCertificate),
    AuthenticationCertificate(AuthenticationCertificate),
    Choose(Choose),
    SetVariable(SetVariable),
    SetStatus(SetStatus),
    SetMethod(SetMethod),
    SetBody(SetBody),
    AuthenticationBasic(AuthenticationBasic),
    ValidateHeaders(ValidateHeaders),
    FindAndReplace(FindAndReplace),
    SendRequest(SendRequest),
    Log(Log),
    EmitMetric(EmitMetric),
    ValidateContent(ValidateContent),
    ValidateParameters(ValidateParameters),
    JsonToXml(JsonToXml),
    XmlToJson(XmlToJson),
}

/// Every policy name with the sections it may appear in.
pub const POLICIES: &[(&str, &[Section])] = {
    use Section::*;
    &[
        ("base", &[Inbound, Backend, Outbound, OnError]),
        ("rate-limit", &[Inbound]),
        ("rate-limit-by-key", &[Inbound]),
        ("quota", &[Inbound]),
        ("quota-by-key", &[Inbound]),
        ("cache-lookup", &[Inbound]),
        ("cache-store", &[Outbound]),
        ("cache-lookup-value", &[Inbound, Outbound, OnError]),
        ("cache-store-value", &[Inbound, Outbound, OnError]),
        ("cache-remove-value", &[Inbound, Outbound, OnError]),
        ("validate-jwt", &[Inbound]),
        ("check-header", &[Inbound]),
        ("ip-filter", &[Inbound]),
        ("cors", &[Inbound]),
        ("set-header", &[Inbound, Outbound, OnError]),
        ("set-query-parameter", &[Inbound]),
        ("rewrite-uri", &[Inbound]),
        ("set-backend-service", &[Inbound, Backend]),
        ("mock-response", &[Inbound, OnError]),
        ("return-response", &[Inbound, Outbound, OnError]),
        ("retry", &[Backend]),
        ("forward-request", &[Backend]),
        ("limit-concurrency", &[Inbound]),
        ("validate-client-certificate", &[Inbound]),
        ("authentication-certificate", &[Inbound]),
        ("choose", &[Inbound, Backend, Outbound, OnError]),
        ("set-variable", &[Inbound, Backend, Outbound, OnError]),
        ("set-status", &[Outbound, OnError]),
        ("set-method", &[Inbound]),
        ("set-body", &[Inbound, Backend, Outbound, OnError]),
        ("authentication-basic", &[Inbound]),
        ("validate-headers", &[Inbound]),
        ("find-and-replace", &[Inbound, Backend, Outbound, OnError]),
        ("send-request", &[Inbound, Backend, Outbound, OnError]),
        ("log", &[Inbound, Backend, Outbound, OnError]),
        ("emit-metric", &[Inbound, Backend, Outbound, OnError]),
        ("validate-content", &[Inbound, Outbound]),
        ("validate-parameters", &[Inbound]),
        ("json-to-xml", &[Inbound, Outbound, OnError]),
        ("xml-to-json", &[Inbound, Outbound, OnError]),
    ]
};

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Base => "base",
            Policy::RateLimit(_) => "rate-limit",
            Policy::RateLimitByKey(_) => "rate-limit-by-key",
            Policy::Quota(_) => "quota",
            Policy::QuotaByKey(_) => "quota-by-key",
            Policy::CacheLookup(_) => "cache-lookup",
            Policy::CacheStore(_) => "cache-store",
            Policy::CacheLookupValue(_) => "cache-lookup-value",
            Policy::CacheStoreValue(_) => "cache-store-value",
            Policy::CacheRemoveValue(_) => "cache-remove-value",
            Policy::ValidateJwt(_) => "validate-jwt",
            Policy::CheckHeader(_) => "check-header",
            Policy::IpFilter(_) => "ip-filter",
            Policy::Cors(_) => "cors",
            Policy::SetHeader(_) => "set-header",
            Policy::SetQueryParameter(_) => "set-query-parameter",
            Policy::RewriteUri(_) => "rewrite-uri",
            Policy::SetBackendService(_) => "set-backend-service",
            Policy::MockResponse(_) => "mock-response",
            Policy::ReturnResponse(_) => "return-response",
            Policy::Retry(_) => "retry",
            Policy::ForwardRequest(_) => "forward-request",
            Policy::LimitConcurrency(_) => "limit-concurrency",
            Policy::ValidateClientCertificate(_) => "validate-client-certificate",
            Policy::AuthenticationCertificate(_) => "authentication-certificate",
            Policy::Choose(_) => "choose",
            Policy::SetVariable(_) => "set-variable",
            Policy::SetStatus(_) => "set-status",
            Policy::SetMethod(_) => "set-method",
            Policy::SetBody(_) => "set-body",
            Policy::AuthenticationBasic(_) => "authentication-basic",
            Policy::ValidateHeaders(_) => "validate-headers",
            Policy::FindAndReplace(_) => "find-and-replace",
            Policy::SendRequest(_) => "send-request",
            Policy::Log(_) => "log",
            Policy::EmitMetric(_) => "emit-metric",
            Policy::ValidateContent(_) => "validate-content",
            Policy::ValidateParameters(_) => "validate-parameters",
            Policy::JsonToXml(_) => "json-to-xml",
            Policy::XmlToJson(_) => "xml-to-json",
        }
    }

    pub fn allowed_sections(name: &str) -> Option<&'static [Section]> {
        POLICIES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    /// Every string field that may hold `{{named-value}}` references or request templates,
    /// expressions included (named values are substituted in them too), nested policies
    /// (`choose`) included.
    pub fn template_strings(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        match self {
            Policy::Choose(c) => {
                for w in &c.when {
                    out.push(&w.condition);
                    out.extend(w.policies.iter().flat_map(Policy::template_strings));
                }
                out.extend(c.otherwise.iter().flat_map(Policy::template_strings));
            }
            Policy::SetVariable(p) => {
                out.extend(p.value.as_deref());
                out.extend(p.value_expression.as_deref());
            }
            Policy::SetStatus(p) => out.extend(p.code_expression.as_deref()),
            Policy::SetBody(p) => {
                out.extend(p.body.as_deref());
                out.extend(p.body_expression.as_deref());
            }
            Policy::AuthenticationBasic(p) => {
                out.push(&p.username);
                out.push(&p.password);
            }
            Policy::RateLimitByKey(p) => out.push(&p.counter_key),
            Policy::QuotaByKey(p) => out.push(&p.counter_key),
            Policy::CacheLookupValue(p) => {
                out.push(&p.key);
                out.extend(p.default_value.as_deref());
            }
            Policy::CacheStoreValue(p) => {
                out.push(&p.key);
                out.push(&p.value);
            }
            Policy::CacheRemoveValue(p) => out.push(&p.key),
            Policy::ValidateJwt(p) => {
                out.extend(p.issuers.iter().map(String::as_str));
                out.extend(p.audiences.iter().map(String::as_str));
                for k in &p.signing_keys {
                    match k {
                        SigningKey::HmacBase64(s)
                        | SigningKey::RsaPem(s)
                        | SigningKey::EcPem(s)
                        | SigningKey::EdPem(s) => out.push(s),
                    }
                }
                out.extend(p.jwks_url.as_deref());
                out.extend(p.openid_config_url.as_deref());
            }
            Policy::CheckHeader(p) => out.extend(p.values.iter().map(String::as_str)),
            Policy::SendRequest(p) => {
                out.extend(p.url.as_deref());
                out.extend(p.url_expression.as_deref());
                for h in &p.headers {
                    out.extend(h.value.as_deref());
                    out.extend(h.value_expression.as_deref());
                }
                out.extend(p.body.as_deref());
                out.extend(p.body_expression.as_deref());
            }
            Policy::Log(p) => {
                out.extend(p.message.as_deref());
                out.extend(p.message_expression.as_deref());
                out.extend(p.dimensions.values().flat_map(Dimension::strings));
            }
            Policy::EmitMetric(p) => {
                out.extend(p.dimensions.values().flat_map(Dimension::strings));
            }
            Policy::FindAndReplace(p) => {
                out.push(&p.from);
                out.push(&p.to);
            }
            // Patterns are taken literally (`{3}` is a regex repetition, not a template).
            Policy::ValidateHeaders(p) => out.extend(
                p.headers
                    .iter()
                    .flat_map(|h| h.values.iter().map(String::as_str)),
            ),
            Policy::SetHeader(p) => {
                out.extend(p.value.as_deref());
                out.extend(p.value_expression.as_deref());
            }
            Policy::SetQueryParameter(p) => {
                out.extend(p.value.as_deref());
                out.extend(p.value_expression.as_deref());
            }
            Policy::RewriteUri(p) => out.push(&p.template),
            Policy::SetBackendService(p) => out.extend(p.base_url.as_deref()),
            Policy::MockResponse(p) => out.extend(p.body.as_deref()),
            Policy::ReturnResponse(p) => {
                out.extend(p.headers.iter().map(|h| h.value.as_str()));
                out.extend(p.body.as_deref());
                out.extend(p.body_expression.as_deref());
            }
            Policy::LimitConcurrency(p) => out.push(&p.key),
            Policy::ValidateClientCertificate(p) => {
                out.extend(p.revoked_thumbprints.iter().map(String::as_str));
                out.extend(p.revocation_crl_pem.as_deref());
                for i in &p.identities {
                    out.extend(
                        [
                            &i.thumbprint,
                            &i.serial_number,
                            &i.subject,
                            &i.common_name,
                            &i.issuer,
                        ]
                        .into_iter()
                        .flatten()
                        .map(String::as_str),
                    );
                }
            }
            Policy::AuthenticationCertificate(p) => {
                out.push(&p.certificate_pem);
                out.push(&p.key_pem);
            }
            Policy::Base
            | Policy::SetMethod(_)
            | Policy::RateLimit(_)
            | Policy::Quota(_)
            | Policy::CacheLookup(_)
            | Policy::CacheStore(_)
            | Policy::IpFilter(_)
            | Policy::Cors(_)
            | Policy::Retry(_)
            | Policy::ValidateContent(_)
            | Policy::ValidateParameters(_)
            | Policy::JsonToXml(_)
            | Policy::XmlToJson(_)
            | Policy::ForwardRequest(_) => {}
        }
        out
    }
}

impl Dimension {
    fn strings(&self) -> impl Iterator<Item = &str> {
        self.value
            .as_deref()
            .into_iter()
            .chain(self.value_expression.as_deref())
    }
}

fn retry_after() -> String {
    "Retry-After".to_owned()
}
fn remaining_calls() -> String {
    "X-RateLimit-Remaining".to_owned()
}
fn one() -> u64 {
    1
}
fn yes() -> bool {
    true
}
fn authorization() -> String {
    "Authorization".to_owned()
}
fn status_401() -> u16 {
    401
}
fn status_200() -> u16 {
    200
}
fn jwt_error_message() -> String {
    "JWT not present or not valid.".to_owned()
}
fn check_header_message() -> String {
    "Header check failed.".to_owned()
}
fn json_content_type() -> String {
    "application/json".to_owned()
}
fn retry_interval() -> u64 {
    100
}
fn retry_condition() -> String {
    "502,503,504".to_owned()
}

/// A set of HTTP statuses written as `2xx`, `404`, `500-599`, comma separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(Vec<(u16, u16)>);

impl StatusSet {
    pub fn parse(s: &str) -> Result<StatusSet, String> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let range = if let Some(class) = part.strip_suffix("xx") {
                let d: u16 = class
                    .parse()
                    .ok()
                    .filter(|d| (1..=5).contains(d))
                    .ok_or_else(|| format!("'{part}' is not a status class (1xx … 5xx)"))?;
                (d * 100, d * 100 + 99)
            } else if let Some((a, b)) = part.split_once('-') {
                let a = parse_status(a.trim())?;
                let b = parse_status(b.trim())?;
                if a > b {
                    return Err(format!("'{part}': range start is after its end"));
                }
                (a, b)
            } else {
                let s = parse_status(part)?;
                (s, s)
            };
            ranges.push(range);
        }
        if ranges.is_empty() {
            return Err("empty status list".to_owned());
        }
        Ok(StatusSet(ranges))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|(a, b)| (*a..=*b).contains(&status))
    }
}

fn parse_status(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| format!("'{s}' is not an HTTP status (100 … 599)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_section_entry() {
        let names: Vec<&str> = POLICIES.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), 40);
        for n in names {
            assert!(Policy::allowed_sections(n).is_some());
        }
    }

    #[test]
    fn status_sets() {
        let s = StatusSet::parse("2xx, 404,500-502").unwrap();
        assert!(s.contains(200) && s.contains(299) && s.contains(404) && s.contains(501));
        assert!(!s.contains(300) && !s.contains(503));
        assert!(StatusSet::parse("6xx").is_err());
        assert!(StatusSet::parse("").is_err());
        assert!(StatusSet::parse("503-500").is_err());
    }

    #[test]
    fn document_json_shape() {
        let doc: PolicyDocument = serde_json::from_value(serde_json::json!({
            "inbound": ["base", {"rate-limit": {"calls": 5, "renewal-period": 60}}],
            "on-error": [{"set-header": {"name": "X", "value": "y"}}]
        }))
        .unwrap();
        assert_eq!(doc.inbound[0], Policy::Base);
        assert_eq!(doc.inbound[1].name(), "rate-limit");
        assert_eq!(doc.on_error.len(), 1);
    }
}
