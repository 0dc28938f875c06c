//! The compiler: a [`GatewaySnapshot`] in, an immutable [`CompiledTable`] (or every problem) out.
//!
//! Pure: no actor, no clock, no I/O, so the control plane runs the very same code as its
//! validator ([`validate_config`]) and tests call it directly.
//!
//! # Choices
//! - **`base` is expanded once, here.** Each policy document (global, each product, each API,
//!   each operation) is compiled once; then every operation gets its four sections spliced
//!   global → product → API → operation. A section left empty inherits the enclosing one (as if
//!   it were `[base]`); a non-empty section without `base` replaces it.
//! - **Product scope: one pipeline per (operation, product).** An operation keeps the pipeline
//!   without product scope (API-scoped, all-APIs and anonymous requests, as in the reference
//!   product) plus one per product containing its API; the request's subscription picks one
//!   with a scan of a list that is as long as the API's product count. Steps are `Arc`s, so
//!   the copies cost pointers, not policies.
//! - **Routes** go into one `matchit` radix tree per hostname over full paths
//!   `/{api.path}[/{version}]{url-template}`, with positional parameter names so that
//!   `/orders/{id}` and `/orders/{orderId}` share one node; operations sharing a path (other
//!   methods, header/query versions) sit together in the node's candidate list. APIs without
//!   hostnames are also routed on every named host, so a request needs exactly one tree lookup.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use awc::http::Method;
use outpost_model::policy::{PolicyDocument, Section};
use outpost_model::resources::{Kind, Operation, Scope, VersionScheme};
use outpost_model::template::substitute_named_values;
use outpost_model::validate::parse_url_template;
use outpost_model::view::gateway_view;
use outpost_model::wire::GatewaySnapshot;
use outpost_model::{Api, Backend, Problems, Resource};

use super::pool::{BreakerRule, HealthCheckRule, Member, MemberRegistry, PassiveRule, Pool};
use super::server_tls::{self, ServerCertificates};
use super::steps::{Item, Step, StepCx, compile_policy, fuse_rate_limit_then_quota};
use super::table::{
    BackendUrl, Candidate, CompiledApi, CompiledBackend, CompiledOperation, CompiledProduct,
    CompiledSubscription, CompiledTable, CompiledVersion, HostRoutes, Pipeline, RouteEntry,
    SubscriptionScope,
};
use super::tls::{TlsProfile, TlsSettings};
use crate::jwks::JwksRegistry;

/// What the compiler needs besides the snapshot.
#[derive(Debug, Clone, Default)]
pub struct CompileContext {
    /// `{gateway.name}`; defaults to the snapshot's gateway resource, if it holds exactly one.
    pub gateway_name: Option<String>,
    /// Pool members' health, kept from one table to the next.
    pub members: MemberRegistry,
    /// Where `validate-jwt` key sources (`jwks-url`, `openid-config-url`) come from; `None`
    /// compiles them without fetching (the control plane's validator, tests).
    pub jwks: Option<Arc<JwksRegistry>>,
}

/// Checks a whole configuration the way a gateway serving every API would compile it: the
/// control plane calls this before accepting a change, so no gateway ever refuses what the
/// control plane accepted (unsupported policies included).
pub fn validate_config<'a, I>(resources: I) -> Problems
where
    I: IntoIterator<Item = &'a Resource> + Clone,
{
    let snapshot = GatewaySnapshot {
        resources: gateway_view(resources, None),
        ..GatewaySnapshot::default()
    };
    match compile(&snapshot, &CompileContext::default()) {
        Ok(_) => Problems::new(),
        Err(p) => p,
    }
}

/// Compiles a snapshot, or lists every problem found in it.
///
/// One phase per kind of resource, in the order they depend on one another; every phase runs
/// whatever the earlier ones found, so that one pass lists every problem.
pub fn compile(
    snapshot: &GatewaySnapshot,
    ctx: &CompileContext,
) -> Result<CompiledTable, Problems> {
    let mut problems = Problems::new();
    let named_values = named_values(snapshot);
    let gateway_name = gateway_name(snapshot, ctx);
    let certificates = certificates(snapshot, &named_values, &gateway_name, &mut problems);
    let backends = backends(snapshot, &named_values, &ctx.members, &mut problems);
    let detached;
    let jwks = match &ctx.jwks {
        Some(r) => r.as_ref(),
        None => {
            detached = JwksRegistry::detached();
            &detached
        }
    };
    let docs = DocCx {
        named_values: &named_values,
        backends: &backends,
        jwks,
    };
    let scopes = documents(snapshot, &docs, &mut problems);
    let (apis, sources) = apis(snapshot, &docs, &scopes, &mut problems);
    let routes = build_routes(&sources, &apis, &mut problems);
    let subscriptions = subscriptions(snapshot, &scopes.products, &mut problems);

    if !problems.is_empty() {
        return Err(dedup(problems));
    }
    let (hosts, wildcard_hosts, any_host) = routes;
    Ok(CompiledTable {
        revision: snapshot.revision,
        hash: snapshot.hash.clone(),
        gateway_name,
        certificates,
        hosts,
        wildcard_hosts,
        any_host,
        subscriptions,
        apis,
        products: scopes.products,
        backends: backends
            .into_iter()
            .map(|(k, v)| (Arc::from(k), v))
            .collect(),
    })
}

fn named_values(snapshot: &GatewaySnapshot) -> HashMap<&str, &str> {
    snapshot
        .of_kind(Kind::NamedValue)
        .filter_map(|r| match r {
            Resource::NamedValue(nv) => Some((nv.name.as_str(), nv.value.as_str())),
            _ => None,
        })
        .collect()
}

fn gateway_name(snapshot: &GatewaySnapshot, ctx: &CompileContext) -> Arc<str> {
    let gateways: Vec<&str> = snapshot
        .of_kind(Kind::Gateway)
        .map(Resource::name)
        .collect();
    match (&ctx.gateway_name, gateways.as_slice()) {
        (Some(n), _) => n.as_str().into(),
        (None, [only]) => (*only).into(),
        (None, _) => "".into(),
    }
}

/// Certificates of every gateway resource are checked (the control plane validates a whole
/// configuration); this gateway serves its own.
fn certificates(
    snapshot: &GatewaySnapshot,
    named_values: &HashMap<&str, &str>,
    gateway_name: &str,
    problems: &mut Problems,
) -> ServerCertificates {
    let mut certificates = ServerCertificates::default();
    for r in snapshot.of_kind(Kind::Gateway) {
        if let Resource::Gateway(g) = r {
            let compiled = server_tls::compile(g, named_values, &r.key().to_string(), problems);
            if *g.name == *gateway_name {
                certificates = compiled;
            }
        }
    }
    certificates
}

fn backends<'s>(
    snapshot: &'s GatewaySnapshot,
    named_values: &HashMap<&str, &str>,
    members: &MemberRegistry,
    problems: &mut Problems,
) -> HashMap<&'s str, Arc<CompiledBackend>> {
    let mut tls_profiles: HashMap<u64, Arc<TlsProfile>> = HashMap::new();
    let mut backends = HashMap::new();
    for r in snapshot.of_kind(Kind::Backend) {
        if let Resource::Backend(b) = r
            && let Some(compiled) =
                compile_backend(b, named_values, members, &mut tls_profiles, problems)
        {
            backends.insert(b.name.as_str(), Arc::new(compiled));
        }
    }
    backends
}

/// What compiling a policy document needs from the phases before.
struct DocCx<'a> {
    named_values: &'a HashMap<&'a str, &'a str>,
    backends: &'a HashMap<&'a str, Arc<CompiledBackend>>,
    jwks: &'a JwksRegistry,
}

impl DocCx<'_> {
    fn compile(
        &self,
        path: String,
        d: &PolicyDocument,
        params: Option<&[String]>,
        problems: &mut Problems,
    ) -> CompiledDoc {
        compile_document(&path, d, params, self, problems)
    }
}

/// The policy documents around the APIs (global, products), each compiled once, and the
/// products.
struct Scopes<'s> {
    global: CompiledDoc,
    product_docs: BTreeMap<&'s str, CompiledDoc>,
    products_of_api: HashMap<&'s str, Vec<&'s str>>,
    products: BTreeMap<Arc<str>, Arc<CompiledProduct>>,
}

fn documents<'s>(
    snapshot: &'s GatewaySnapshot,
    docs: &DocCx<'_>,
    problems: &mut Problems,
) -> Scopes<'s> {
    let global = snapshot
        .of_kind(Kind::GlobalPolicy)
        .find_map(|r| match r {
            Resource::GlobalPolicy(g) => {
                Some(docs.compile(format!("{}.policies", r.key()), &g.policies, None, problems))
            }
            _ => None,
        })
        .unwrap_or_default();
    let mut product_docs: BTreeMap<&str, CompiledDoc> = BTreeMap::new();
    let mut products_of_api: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut products = BTreeMap::new();
    for r in snapshot.of_kind(Kind::Product) {
        if let Resource::Product(p) = r {
            product_docs.insert(
                &p.name,
                docs.compile(format!("{}.policies", r.key()), &p.policies, None, problems),
            );
            for a in &p.apis {
                products_of_api.entry(a).or_default().push(&p.name);
            }
            let name: Arc<str> = p.name.as_str().into();
            products.insert(
                name.clone(),
                Arc::new(CompiledProduct {
                    name,
                    apis: p.apis.iter().map(|a| Arc::from(a.as_str())).collect(),
                }),
            );
        }
    }
    Scopes {
        global,
        product_docs,
        products_of_api,
        products,
    }
}

type Apis<'s> = (BTreeMap<Arc<str>, Arc<CompiledApi>>, Vec<&'s Api>);

/// APIs and their operations' pipelines; with the APIs as written, for the routes.
fn apis<'s>(
    snapshot: &'s GatewaySnapshot,
    docs: &DocCx<'_>,
    scopes: &Scopes<'_>,
    problems: &mut Problems,
) -> Apis<'s> {
    let mut apis: BTreeMap<Arc<str>, Arc<CompiledApi>> = BTreeMap::new();
    let mut sources: Vec<&Api> = Vec::new();
    for r in snapshot.of_kind(Kind::Api) {
        let Resource::Api(api) = r else { continue };
        let at = r.key().to_string();
        let backend = docs.backends.get(api.backend.as_str()).cloned();
        if backend.is_none() {
            problems.push(
                format!("{at}.backend"),
                format!("unknown backend '{}'", api.backend),
            );
        }
        let api_doc = docs.compile(format!("{at}.policies"), &api.policies, None, problems);
        let mut operations = Vec::with_capacity(api.operations.len());
        for (i, op) in api.operations.iter().enumerate() {
            let op_at = format!("{at}.operations[{i}]");
            if let Some(op) = operation(op, &op_at, api, &api_doc, docs, scopes, problems) {
                operations.push(op);
            }
        }
        let Some(backend) = backend else { continue };
        let name: Arc<str> = api.name.as_str().into();
        apis.insert(
            name.clone(),
            Arc::new(CompiledApi {
                name,
                subscription_required: api.subscription_required,
                access_log: api.access_log,
                backend,
                version: api.version.as_ref().map(|v| CompiledVersion {
                    name: v.name.clone(),
                    scheme: v.scheme,
                    parameter: v.parameter.clone(),
                }),
                operations,
            }),
        );
        sources.push(api);
    }
    (apis, sources)
}

/// One operation: its pipeline without product scope and one per product containing its API.
fn operation(
    op: &Operation,
    op_at: &str,
    api: &Api,
    api_doc: &CompiledDoc,
    docs: &DocCx<'_>,
    scopes: &Scopes<'_>,
    problems: &mut Problems,
) -> Option<CompiledOperation> {
    let params = match parse_url_template(&op.url_template) {
        Ok(p) => p,
        Err(e) => {
            problems.push(format!("{op_at}.url-template"), e);
            return None;
        }
    };
    let method = match op.method.as_str() {
        "*" => None,
        m => match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(m) => Some(m),
            Err(_) => {
                problems.push(format!("{op_at}.method"), format!("'{m}' is not a method"));
                return None;
            }
        },
    };
    let op_doc = docs.compile(
        format!("{op_at}.policies"),
        &op.policies,
        Some(&params),
        problems,
    );
    let global = &scopes.global;
    let pipeline = Arc::new(expand(&[global, api_doc, &op_doc]));
    let product_pipelines = scopes
        .products_of_api
        .get(api.name.as_str())
        .into_iter()
        .flatten()
        .map(|p| {
            let product_doc = &scopes.product_docs[p];
            let pipeline = if product_doc.is_empty() {
                pipeline.clone()
            } else {
                Arc::new(expand(&[global, product_doc, api_doc, &op_doc]))
            };
            (Arc::from(*p), pipeline)
        })
        .collect::<Vec<_>>();
    let preflight_cors = std::iter::once(&pipeline)
        .chain(product_pipelines.iter().map(|(_, p)| p))
        .find_map(|p| {
            p.inbound.iter().find_map(|s| match s {
                Step::Cors(c) => Some(c.clone()),
                _ => None,
            })
        });
    Some(CompiledOperation {
        name: op.name.as_str().into(),
        method,
        url_template: op.url_template.clone(),
        params: params.iter().map(|p| Arc::from(p.as_str())).collect(),
        allow_encoded_slashes: op.allow_encoded_slashes,
        pipeline,
        product_pipelines,
        preflight_cors,
    })
}

/// Subscriptions, by key.
fn subscriptions(
    snapshot: &GatewaySnapshot,
    products: &BTreeMap<Arc<str>, Arc<CompiledProduct>>,
    problems: &mut Problems,
) -> HashMap<String, Arc<CompiledSubscription>, foldhash::fast::RandomState> {
    let mut subscriptions: HashMap<String, Arc<CompiledSubscription>, _> = HashMap::default();
    let mut key_owner: HashMap<&str, &str> = HashMap::new();
    for r in snapshot.of_kind(Kind::Subscription) {
        let Resource::Subscription(s) = r else {
            continue;
        };
        let at = r.key().to_string();
        let scope = match &s.scope {
            Scope::AllApis => SubscriptionScope::AllApis,
            Scope::Product(p) => match products.get(p.as_str()) {
                Some(prod) => SubscriptionScope::Product {
                    product: prod.name.clone(),
                    apis: prod.apis.iter().cloned().collect(),
                },
                None => {
                    problems.push(format!("{at}.scope"), format!("unknown product '{p}'"));
                    continue;
                }
            },
            Scope::Api(a) => SubscriptionScope::Api(a.as_str().into()),
        };
        let compiled = Arc::new(CompiledSubscription {
            name: s.name.as_str().into(),
            scope,
            state: s.state,
            expires_at: s.expires_at,
        });
        for (field, key) in [
            ("primary-key", &s.primary_key),
            ("secondary-key", &s.secondary_key),
        ] {
            if key.is_empty() {
                continue;
            }
            if let Some(other) = key_owner.insert(key, &s.name)
                && other != s.name
            {
                problems.push(
                    format!("{at}.{field}"),
                    format!("key already used by subscription '{other}'"),
                );
            }
            subscriptions.insert(key.clone(), compiled.clone());
        }
    }
    subscriptions
}

/// The same problem found through several hosts or operations is reported once.
fn dedup(problems: Problems) -> Problems {
    let mut seen = HashSet::new();
    Problems(
        problems
            .0
            .into_iter()
            .filter(|p| seen.insert((p.path.clone(), p.message.clone())))
            .collect(),
    )
}

// === backends ===

fn compile_backend(
    b: &Backend,
    named_values: &HashMap<&str, &str>,
    registry: &MemberRegistry,
    profiles: &mut HashMap<u64, Arc<TlsProfile>>,
    problems: &mut Problems,
) -> Option<CompiledBackend> {
    let at = format!("backends/{}", b.name);
    let lookup = |n: &str| named_values.get(n).copied();
    let parse = |field: String, url: &str, problems: &mut Problems| {
        substitute_named_values(url, lookup)
            .and_then(|u| BackendUrl::parse(&u).map(|parsed| (u, parsed)))
            .map_err(|e| problems.push(field, e))
            .ok()
    };
    let (url, pool) = if b.members.is_empty() {
        (
            parse(format!("{at}.url"), &b.url, problems).map(|(_, u)| u),
            None,
        )
    } else {
        // Member sets are bit masks of a u64 (see `Pool::pick`).
        if b.members.len() > outpost_model::validate::MAX_POOL_MEMBERS {
            problems.push(
                format!("{at}.members"),
                format!(
                    "at most {} members",
                    outpost_model::validate::MAX_POOL_MEMBERS
                ),
            );
            return None;
        }
        let mut members = Vec::with_capacity(b.members.len());
        for (i, m) in b.members.iter().enumerate() {
            if let Some((label, url)) = parse(format!("{at}.members[{i}].url"), &m.url, problems) {
                members.push(Member {
                    state: registry.state(&b.name, &label),
                    label: label.into(),
                    url,
                    weight: m.weight.max(1),
                });
            }
        }
        if members.len() != b.members.len() {
            return None;
        }
        let first = members[0].url.clone();
        let pool = Pool::new(
            b.name.as_str().into(),
            members,
            b.load_balancing.unwrap_or_default(),
            PassiveRule::of(&b.passive_health.clone().unwrap_or_default()),
            b.circuit_breaker.as_ref().map(BreakerRule::of),
            b.health_check.as_ref().map(HealthCheckRule::of),
        );
        (Some(first), Some(Arc::new(pool)))
    };
    let ca_pem = match &b.tls.ca_pem {
        Some(pem) => match substitute_named_values(pem, lookup) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(format!("{at}.tls.ca-pem"), e);
                return None;
            }
        },
        None => None,
    };
    if b.connect_timeout_ms == 0 || b.request_timeout_ms == 0 {
        problems.push(at.clone(), "timeouts must be at least 1 ms");
        return None;
    }
    let connect_timeout = Duration::from_millis(b.connect_timeout_ms);
    let settings = TlsSettings {
        verify: b.tls.verify,
        ca_pem,
        server_name: b.tls.server_name.clone(),
        connect_timeout,
        client_identity: None,
    };
    let tls = match profiles.get(&settings.id()) {
        Some(p) => p.clone(),
        None => match settings.build() {
            Ok(p) => {
                let p = Arc::new(p);
                profiles.insert(p.id, p.clone());
                p
            }
            Err((field, e)) => {
                problems.push(format!("{at}.{field}"), e);
                return None;
            }
        },
    };
    Some(CompiledBackend {
        name: b.name.as_str().into(),
        url: url?,
        pool,
        connect_timeout,
        request_timeout: Duration::from_millis(b.request_timeout_ms),
        tls,
        protocol: b.protocol,
    })
}

// === policy documents ===

/// A document with its steps compiled and `base` markers kept, in [`Section::ALL`] order.
#[derive(Debug, Default)]
struct CompiledDoc {
    sections: [Vec<Item>; 4],
}

impl CompiledDoc {
    fn is_empty(&self) -> bool {
        self.sections.iter().all(Vec::is_empty)
    }
}

fn compile_document(
    path: &str,
    doc: &PolicyDocument,
    params: Option<&[String]>,
    docs: &DocCx<'_>,
    problems: &mut Problems,
) -> CompiledDoc {
    let mut out = CompiledDoc::default();
    for (index, section) in Section::ALL.into_iter().enumerate() {
        let steps = doc.section(section);
        if steps.iter().filter(|p| p.name() == "base").count() > 1 {
            problems.push(
                format!("{path}.{}", section.as_str()),
                "'base' may appear at most once per section",
            );
        }
        for (i, policy) in steps.iter().enumerate() {
            let at = format!("{path}.{}[{i}].{}", section.as_str(), policy.name());
            let allowed = outpost_model::Policy::allowed_sections(policy.name())
                .is_some_and(|s| s.contains(&section));
            if !allowed {
                problems.push(
                    at,
                    format!("'{}' is not allowed in {}", policy.name(), section.as_str()),
                );
                continue;
            }
            let mut cx = StepCx {
                named_values: docs.named_values,
                backends: docs.backends,
                jwks: docs.jwks,
                params,
                at,
                section,
                problems,
            };
            if let Some(item) = compile_policy(policy, &mut cx) {
                out.sections[index].push(item);
            }
        }
    }
    out
}

/// Splices the sections of `levels` (outermost first) at their `base` markers.
fn expand(levels: &[&CompiledDoc]) -> Pipeline {
    let section = |index: usize| -> Vec<Step> {
        let mut acc: Vec<Step> = Vec::new();
        for level in levels {
            let items = &level.sections[index];
            if items.is_empty() {
                continue;
            }
            let mut next = Vec::with_capacity(items.len() + acc.len());
            for item in items {
                match item {
                    Item::Base => next.extend(acc.iter().cloned()),
                    Item::Step(s) => next.push(s.clone()),
                }
            }
            acc = next;
        }
        acc
    };
    let backend = section(1);
    Pipeline {
        buffers_request_body: backend
            .iter()
            .any(|s| s.any(&|s| matches!(s, Step::Retry(_)))),
        // After `base` is expanded: a rate limit and a quota from different levels fuse too.
        inbound: fuse_rate_limit_then_quota(section(0)).into_boxed_slice(),
        backend: backend.into_boxed_slice(),
        outbound: section(2).into_boxed_slice(),
        on_error: section(3).into_boxed_slice(),
    }
}

// === routes ===

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum HostKey {
    Any,
    Exact(String),
    /// `.example.com` for `*.example.com`.
    Wildcard(String),
}

struct Placed {
    candidate: Candidate,
    /// `GET /orders/{id}` as written, for messages.
    display: String,
    at: String,
}

type Paths = BTreeMap<String, Vec<Placed>>;

fn build_routes(
    sources: &[&Api],
    apis: &BTreeMap<Arc<str>, Arc<CompiledApi>>,
    problems: &mut Problems,
) -> (
    HashMap<String, HostRoutes>,
    Vec<(String, HostRoutes)>,
    HostRoutes,
) {
    let mut by_host: BTreeMap<HostKey, Paths> = BTreeMap::new();
    let mut prefixes: BTreeMap<HostKey, Vec<(String, Arc<str>)>> = BTreeMap::new();
    by_host.insert(HostKey::Any, Paths::new());
    for source in sources {
        let Some(api) = apis.get(source.name.as_str()) else {
            continue;
        };
        let hosts: Vec<HostKey> = if source.hostnames.is_empty() {
            vec![HostKey::Any]
        } else {
            source
                .hostnames
                .iter()
                .map(|h| {
                    let h = h.to_ascii_lowercase();
                    match h.strip_prefix('*') {
                        Some(suffix) => HostKey::Wildcard(suffix.to_owned()),
                        None => HostKey::Exact(h),
                    }
                })
                .collect()
        };
        let mut prefix = String::new();
        if !source.path.is_empty() {
            prefix.push('/');
            prefix.push_str(&source.path);
        }
        if let Some(v) = &source.version
            && v.scheme == VersionScheme::Segment
        {
            prefix.push('/');
            prefix.push_str(&v.name);
        }
        for host in &hosts {
            prefixes
                .entry(host.clone())
                .or_default()
                .push((prefix.clone(), api.name.clone()));
        }
        for (index, op) in api.operations.iter().enumerate() {
            let at = format!(
                "apis/{}.operations[{}]",
                source.name,
                source
                    .operations
                    .iter()
                    .position(|o| o.name == *op.name)
                    .unwrap_or(index)
            );
            let display = format!(
                "{} {prefix}{}",
                op.method.as_ref().map_or("*", Method::as_str),
                op.url_template
            );
            let mut paths = vec![format!("{prefix}{}", op.url_template)];
            if op.url_template == "/" && !prefix.is_empty() {
                // `/orders` and `/orders/` both reach the API's root operation.
                paths.push(prefix.clone());
            }
            for path in paths {
                let canonical = canonical_path(&path);
                for host in &hosts {
                    by_host
                        .entry(host.clone())
                        .or_default()
                        .entry(canonical.clone())
                        .or_default()
                        .push(Placed {
                            candidate: Candidate {
                                api: api.clone(),
                                operation: index,
                                prefix_len: prefix.len(),
                            },
                            display: display.clone(),
                            at: at.clone(),
                        });
                }
            }
        }
    }

    // APIs without hostnames answer on every host, so named hosts get their routes too.
    let any = by_host.remove(&HostKey::Any).unwrap_or_default();
    let any_prefixes = prefixes.remove(&HostKey::Any).unwrap_or_default();
    let mut hosts = HashMap::new();
    let mut wildcard_hosts = Vec::new();
    for (key, mut paths) in by_host {
        for (path, placed) in &any {
            let entry = paths.entry(path.clone()).or_default();
            // An API bound to this host takes precedence over a host-less one on the same route.
            let shadowed = |p: &Placed| {
                entry.iter().any(|e| {
                    e.candidate.op().method == p.candidate.op().method
                        && version_key(&e.candidate) == version_key(&p.candidate)
                })
            };
            let added: Vec<Placed> = placed
                .iter()
                .filter(|p| !shadowed(p))
                .map(|p| Placed {
                    candidate: p.candidate.clone(),
                    display: p.display.clone(),
                    at: p.at.clone(),
                })
                .collect();
            entry.extend(added);
        }
        let mut host_prefixes = prefixes.remove(&key).unwrap_or_default();
        host_prefixes.extend(any_prefixes.iter().cloned());
        let (label, table) = match &key {
            HostKey::Exact(h) => (format!("host '{h}'"), h.clone()),
            HostKey::Wildcard(s) => (format!("host '*{s}'"), s.clone()),
            HostKey::Any => unreachable!("removed above"),
        };
        let routes = host_routes(&label, paths, host_prefixes, problems);
        match key {
            HostKey::Exact(_) => {
                hosts.insert(table, routes);
            }
            _ => wildcard_hosts.push((table, routes)),
        }
    }
    // Longest suffix first, so `*.eu.example.com` wins over `*.example.com`.
    wildcard_hosts.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
    let any_host = host_routes("any host", any, any_prefixes, problems);
    (hosts, wildcard_hosts, any_host)
}

fn host_routes(
    label: &str,
    paths: Paths,
    prefixes: Vec<(String, Arc<str>)>,
    problems: &mut Problems,
) -> HostRoutes {
    let mut router = matchit::Router::new();
    let mut displays: HashMap<String, String> = HashMap::new();
    for (canonical, placed) in paths {
        // Two operations may share a path only when method or version tells them apart.
        for (i, a) in placed.iter().enumerate() {
            for b in &placed[i + 1..] {
                let (oa, ob) = (a.candidate.op(), b.candidate.op());
                if oa.method == ob.method && version_key(&a.candidate) == version_key(&b.candidate)
                {
                    problems.push(
                        b.at.clone(),
                        format!(
                            "{} on {label} is also served by {} (API '{}', operation '{}')",
                            b.display, a.display, a.candidate.api.name, oa.name
                        ),
                    );
                }
            }
        }
        let first = &placed[0];
        let (at, display) = (first.at.clone(), first.display.clone());
        let entry = RouteEntry {
            candidates: placed.into_iter().map(|p| p.candidate).collect(),
        };
        if let Err(e) = router.insert(canonical.clone(), entry) {
            let detail = match &e {
                matchit::InsertError::Conflict { with } => format!(
                    "conflicts with {}",
                    displays.get(with).map_or(with.as_str(), String::as_str)
                ),
                other => other.to_string(),
            };
            problems.push(
                at,
                format!("{display} cannot be routed on {label}: {detail}"),
            );
        }
        displays.insert(canonical, display);
    }
    HostRoutes { router, prefixes }
}

fn version_key(c: &Candidate) -> Option<(VersionScheme, &str, &str)> {
    c.api
        .version
        .as_ref()
        .filter(|v| v.scheme != VersionScheme::Segment)
        .map(|v| (v.scheme, v.parameter.as_str(), v.name.as_str()))
}

/// `/orders/{id}/items/{*rest}` → `/orders/{p0}/items/{*p1}`.
fn canonical_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut n = 0;
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if seg.starts_with("{*") && seg.ends_with('}') {
            out.push_str(&format!("{{*p{n}}}"));
            n += 1;
        } else if seg.starts_with('{') && seg.ends_with('}') {
            out.push_str(&format!("{{p{n}}}"));
            n += 1;
        } else {
            out.push_str(seg);
        }
    }
    out
}
