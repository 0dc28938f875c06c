//! The compiled, immutable routing snapshot and its lookups.
//!
//! Everything here is built once per configuration by [`super::state::compile`] and then only
//! read, by many worker threads at once, through one atomic load per request. Lookups allocate
//! only what the caller keeps (the matched parameters).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use awc::http::Method;
use outpost_model::SubscriptionState;
use outpost_model::resources::VersionScheme;

pub use super::backend::{BackendUrl, CompiledBackend};
use super::server_tls::ServerCertificates;
use super::steps::{CorsStep, Step};

/// A whole gateway configuration, compiled.
#[derive(Debug)]
pub struct CompiledTable {
    pub revision: u64,
    pub hash: String,
    /// `{gateway.name}`.
    pub gateway_name: Arc<str>,
    /// What the HTTPS listener serves, by SNI name.
    pub certificates: ServerCertificates,
    pub(crate) hosts: HashMap<String, HostRoutes>,
    /// `*.example.com` hostnames, as (`.example.com`, routes); checked when no exact host matches.
    pub(crate) wildcard_hosts: Vec<(String, HostRoutes)>,
    /// Routes of the APIs without hostnames, for every other host.
    pub(crate) any_host: HostRoutes,
    /// Looked up on every request (foldhash: no attacker can insert a key).
    pub(crate) subscriptions:
        HashMap<String, Arc<CompiledSubscription>, foldhash::fast::RandomState>,
    pub apis: BTreeMap<Arc<str>, Arc<CompiledApi>>,
    pub products: BTreeMap<Arc<str>, Arc<CompiledProduct>>,
    pub backends: BTreeMap<Arc<str>, Arc<CompiledBackend>>,
}

/// The routes served on one hostname.
#[derive(Debug, Default)]
pub(crate) struct HostRoutes {
    pub(crate) router: matchit::Router<RouteEntry>,
    /// `(path prefix, API)` of every API on this host, only to explain a 404.
    pub(crate) prefixes: Vec<(String, Arc<str>)>,
}

/// Every operation that shares one path shape on one host.
#[derive(Debug, Default)]
pub(crate) struct RouteEntry {
    pub(crate) candidates: Vec<Candidate>,
}

#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) api: Arc<CompiledApi>,
    pub(crate) operation: usize,
    /// Length of `/{api.path}[/{version}]` in the request path: the rest goes to the backend.
    pub(crate) prefix_len: usize,
}

impl Candidate {
    pub(crate) fn op(&self) -> &CompiledOperation {
        &self.api.operations[self.operation]
    }
}

#[derive(Debug)]
pub struct CompiledApi {
    pub name: Arc<str>,
    pub subscription_required: bool,
    /// The API's `access-log` flag.
    pub access_log: bool,
    pub backend: Arc<CompiledBackend>,
    pub version: Option<CompiledVersion>,
    pub operations: Vec<CompiledOperation>,
}

#[derive(Debug, Clone)]
pub struct CompiledVersion {
    pub name: String,
    pub scheme: VersionScheme,
    /// Header or query parameter name (header and query schemes).
    pub parameter: String,
}

#[derive(Debug)]
pub struct CompiledOperation {
    pub name: Arc<str>,
    /// `None` for `*` (any method).
    pub method: Option<Method>,
    pub url_template: String,
    /// Parameter names of the URL template, in path order.
    pub params: Vec<Arc<str>>,
    /// Whether a parameter may match a segment with an encoded `/` or `\`.
    pub allow_encoded_slashes: bool,
    /// The pipeline for requests that do not come through a product subscription.
    pub pipeline: Arc<Pipeline>,
    /// The pipeline per product that contains the API (product scope spliced in).
    pub product_pipelines: Vec<(Arc<str>, Arc<Pipeline>)>,
    /// The `cors` policy that answers preflights for this operation, if any.
    pub preflight_cors: Option<Arc<CorsStep>>,
}

impl CompiledOperation {
    /// The pipeline for a request authorised through `product` (or through no product).
    pub fn pipeline_for(&self, product: Option<&str>) -> &Arc<Pipeline> {
        product
            .and_then(|p| self.product_pipelines.iter().find(|(name, _)| &**name == p))
            .map_or(&self.pipeline, |(_, pipeline)| pipeline)
    }
}

/// One operation's policies with `base` expanded across global → product → API → operation.
#[derive(Debug, Default)]
pub struct Pipeline {
    pub inbound: Box<[Step]>,
    pub backend: Box<[Step]>,
    pub outbound: Box<[Step]>,
    pub on_error: Box<[Step]>,
    /// A `retry` is in the backend section, so the request body must be kept to re-send it.
    pub buffers_request_body: bool,
}

#[derive(Debug)]
pub struct CompiledProduct {
    pub name: Arc<str>,
    pub apis: Vec<Arc<str>>,
}

#[derive(Debug)]
pub struct CompiledSubscription {
    pub name: Arc<str>,
    pub scope: SubscriptionScope,
    pub state: SubscriptionState,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug)]
pub enum SubscriptionScope {
    AllApis,
    /// A product and the APIs it contains on this gateway.
    Product {
        product: Arc<str>,
        apis: HashSet<Arc<str>, foldhash::fast::RandomState>,
    },
    Api(Arc<str>),
}

impl CompiledSubscription {
    pub fn allows(&self, api: &str) -> bool {
        match &self.scope {
            SubscriptionScope::AllApis => true,
            SubscriptionScope::Product { apis, .. } => apis.contains(api),
            SubscriptionScope::Api(a) => &**a == api,
        }
    }

    /// The product whose policies apply to requests made with this subscription. Product-scope
    /// policies apply only to product subscriptions, as in the reference product.
    pub fn product(&self) -> Option<&Arc<str>> {
        match &self.scope {
            SubscriptionScope::Product { product, .. } => Some(product),
            _ => None,
        }
    }

    /// The state at `now`, counting `expires_at`.
    pub fn state_at(&self, now: chrono::DateTime<chrono::Utc>) -> SubscriptionState {
        match self.expires_at {
            Some(at) if at <= now && self.state == SubscriptionState::Active => {
                SubscriptionState::Expired
            }
            _ => self.state,
        }
    }
}

// === lookups ===

/// What the request tells the router.
pub struct RouteRequest<'r> {
    /// Lowercase, without port.
    pub host: &'r str,
    /// Raw (percent-encoded) path.
    pub path: &'r str,
    pub method: &'r Method,
    /// `Access-Control-Request-Method` of a preflight, to find the operation whose `cors`
    /// policy answers it.
    pub preflight_method: Option<&'r Method>,
    /// The value of a version header (`Header` scheme) or query parameter (`Query` scheme).
    pub version: &'r dyn Fn(VersionScheme, &str) -> Option<&'r str>,
}

/// A matched operation.
#[derive(Debug)]
pub struct RouteMatch<'t> {
    pub api: &'t Arc<CompiledApi>,
    pub operation: &'t CompiledOperation,
    /// Index of `operation` in `api.operations`.
    pub operation_index: usize,
    /// URL template parameters, raw (still percent-encoded), in path order.
    pub params: Vec<(Arc<str>, String)>,
    /// Length of the API prefix in the request path; the rest is the backend path.
    pub prefix_len: usize,
}

#[derive(Debug)]
pub enum RouteOutcome<'t> {
    Matched(RouteMatch<'t>),
    /// No API serves this path on this host. `api` names the API whose prefix matched, if any.
    NotFound {
        api: Option<Arc<str>>,
    },
    /// The path belongs to versioned APIs but the request names no known version.
    UnknownVersion {
        api: Arc<str>,
        scheme: VersionScheme,
        parameter: String,
        known: Vec<String>,
    },
    /// The path matches but no operation takes this method.
    MethodNotAllowed {
        allow: String,
        /// The operation whose `cors` policy answers a preflight for this path, if any.
        preflight: Option<(&'t Arc<CompiledApi>, &'t CompiledOperation)>,
    },
}

impl HostRoutes {
    /// The API whose path suffix is the longest prefix of `path` (by whole segments).
    fn api_at(&self, path: &str) -> Option<&(String, Arc<str>)> {
        self.prefixes
            .iter()
            .filter(|(prefix, _)| {
                prefix.is_empty()
                    || path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .max_by_key(|(prefix, _)| prefix.len())
    }
}

impl CompiledTable {
    /// The path suffix of the API a path falls under on a host (whatever its operations), so
    /// the gateway can tell whether a `..` in the raw path climbed out of it.
    pub fn api_prefix(&self, host: &str, path: &str) -> Option<&str> {
        self.host_routes(host)
            .api_at(path)
            .map(|(prefix, _)| prefix.as_str())
    }

    fn host_routes(&self, host: &str) -> &HostRoutes {
        if let Some(r) = self.hosts.get(host) {
            return r;
        }
        self.wildcard_hosts
            .iter()
            .find(|(suffix, _)| host.ends_with(suffix.as_str()) && host.len() > suffix.len())
            .map_or(&self.any_host, |(_, r)| r)
    }

    /// Finds the operation for a request: host, then path (one radix-tree lookup), then version
    /// and method among the few operations sharing that path.
    pub fn route<'t>(&'t self, req: &RouteRequest<'_>) -> RouteOutcome<'t> {
        let routes = self.host_routes(req.host);
        let Ok(m) = routes.router.at(req.path) else {
            let api = routes.api_at(req.path).map(|(_, api)| api.clone());
            return RouteOutcome::NotFound { api };
        };
        let candidates = &m.value.candidates;

        // Version: header/query versioned APIs share a path; the request picks one by naming its
        // version. Unversioned (and segment-versioned) operations on the path are the default.
        let by_parameter = |c: &Candidate| {
            c.api
                .version
                .as_ref()
                .is_some_and(|v| v.scheme != VersionScheme::Segment)
        };
        let named = |c: &Candidate| {
            c.api
                .version
                .as_ref()
                .is_some_and(|v| (req.version)(v.scheme, &v.parameter) == Some(v.name.as_str()))
        };
        let by_version = candidates.iter().any(|c| by_parameter(c) && named(c));
        let selected = |c: &&Candidate| {
            if by_version {
                by_parameter(c) && named(c)
            } else {
                !by_parameter(c)
            }
        };
        if !candidates.iter().any(|c| selected(&c)) {
            let versioned = candidates.iter().find(|c| by_parameter(c));
            let sample = versioned.unwrap_or(&candidates[0]);
            let (scheme, parameter) = sample
                .api
                .version
                .as_ref()
                .map_or((VersionScheme::Segment, String::new()), |v| {
                    (v.scheme, v.parameter.clone())
                });
            let mut known: Vec<String> = candidates
                .iter()
                .filter_map(|c| c.api.version.as_ref().map(|v| v.name.clone()))
                .collect();
            known.sort();
            known.dedup();
            return RouteOutcome::UnknownVersion {
                api: sample.api.name.clone(),
                scheme,
                parameter,
                known,
            };
        }

        let exact = candidates
            .iter()
            .filter(selected)
            .find(|c| c.op().method.as_ref() == Some(req.method));
        let chosen = exact.or_else(|| {
            candidates
                .iter()
                .filter(selected)
                .find(|c| c.op().method.is_none())
        });
        let Some(c) = chosen else {
            let mut allow: Vec<&str> = candidates
                .iter()
                .filter(selected)
                .filter_map(|c| c.op().method.as_ref().map(Method::as_str))
                .collect();
            allow.sort_unstable();
            allow.dedup();
            let with_cors = |c: &&Candidate| c.op().preflight_cors.is_some();
            let preflight = req
                .preflight_method
                .and_then(|pm| {
                    candidates
                        .iter()
                        .filter(selected)
                        .filter(with_cors)
                        .find(|c| c.op().method.as_ref() == Some(pm))
                })
                .or_else(|| candidates.iter().filter(selected).find(with_cors))
                .map(|c| (&c.api, c.op()));
            return RouteOutcome::MethodNotAllowed {
                allow: allow.join(", "),
                preflight,
            };
        };
        let op = c.op();
        let params = op
            .params
            .iter()
            .cloned()
            .zip(m.params.iter().map(|(_, v)| v.to_owned()))
            .collect();
        RouteOutcome::Matched(RouteMatch {
            api: &c.api,
            operation: op,
            operation_index: c.operation,
            params,
            prefix_len: c.prefix_len.min(req.path.len()),
        })
    }

    /// The subscription holding `key` (primary or secondary), if any.
    pub fn subscription(&self, key: &str) -> Option<&Arc<CompiledSubscription>> {
        self.subscriptions.get(key)
    }

    pub fn operation_count(&self) -> usize {
        self.apis.values().map(|a| a.operations.len()).sum()
    }

    pub fn subscription_count(&self) -> usize {
        let mut names: Vec<&str> = self.subscriptions.values().map(|s| &*s.name).collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }
}
