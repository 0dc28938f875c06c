//! Validation that collects every problem.
//!
//! Three layers, each reporting [`Problems`] with a path to the offending field:
//! 1. [`parse_resource`]: JSON → typed resource; policy steps are parsed one by one so an unknown
//!    policy name or a bad field in one step does not hide the problems of the others, and every
//!    type error of a resource or a step is listed, not only the first ([`crate::type_errors`]).
//! 2. [`check_resource`]: rules about one resource alone (names, templates, ranges, sections).
//! 3. [`check_config`]: rules across resources (references exist, keys unique, routes do not
//!    collide). The control plane runs it on the whole candidate state before any commit, so the
//!    stored configuration is always valid as a whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::{Policy, PolicyDocument, Section, StatusSet};
use crate::resources::{
    Api, Backend, GLOBAL_POLICY_NAME, Gateway, Kind, Operation, Resource, ResourceKey, Scope,
    Subscription, VersionScheme,
};
use crate::template::{Template, named_value_refs};
use crate::type_errors::{TypeError, deserialize_all};

/// One thing wrong with an input, and where.
// Problems never cross the gateway link (the encoding rule's bincode), only JSON answers and
// terminals, so absent positions may be left out of the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Dotted path to the field. In a declarative file: the resource's place in the file and
    /// its name, `apis[0] (orders).operations[1].url-template`; otherwise the resource's key,
    /// `apis/orders.operations[1].url-template`.
    pub path: String,
    pub message: String,
    /// Where in the file the field is (1-based), when the input was a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

impl Problem {
    /// One line as compilers print it, `FILE:LINE:COLUMN: PATH: MESSAGE`, which editors and
    /// terminals turn into a jump to the spot.
    pub fn render_in(&self, file: &str) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{file}:{l}:{c}: {self}"),
            _ => format!("{file}: {self}"),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one input. Empty means valid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
            line: None,
            column: None,
        });
    }

    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    /// Prefixes every path, e.g. with the location of a resource in a file.
    pub fn prefixed(mut self, prefix: &str) -> Problems {
        for p in &mut self.0 {
            p.path = join(prefix, &p.path);
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn into_result(self) -> Result<(), Problems> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }

    /// Every problem on its own line, `FILE:LINE:COLUMN: PATH: MESSAGE` (see
    /// [`Problem::render_in`]).
    pub fn render_in(&self, file: &str) -> String {
        self.0
            .iter()
            .map(|p| p.render_in(file))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "- {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (_, true) => prefix.to_owned(),
        _ if path.starts_with('[') => format!("{prefix}{path}"),
        _ => format!("{prefix}.{path}"),
    }
}

// === parsing ===

/// Parses one resource of `kind` from JSON, collecting problems from every policy step.
pub fn parse_resource(kind: Kind, value: Value) -> Result<Resource, Problems> {
    let (resource, problems) = parse_resource_partial(kind, value);
    match resource {
        Some(r) if problems.is_empty() => Ok(r),
        _ => Err(problems),
    }
}

/// [`parse_resource`] that keeps what did parse: with the parse problems, the resource without
/// the policy documents that did not parse (`None` when the rest did not parse either), so the
/// checks of [`check_resource`] can still run on it and report their problems in the same pass.
pub fn parse_resource_partial(kind: Kind, mut value: Value) -> (Option<Resource>, Problems) {
    let mut problems = Problems::new();
    if !value.is_object() {
        problems.push("", format!("a {kind} must be an object"));
        return (None, problems);
    }
    // Take the policy documents out, parse the rest with serde, then parse the documents step
    // by step so that each bad step is its own problem.
    let mut docs: Vec<(Option<usize>, Value)> = Vec::new();
    if let Some(doc) = value.as_object_mut().and_then(|o| o.remove("policies")) {
        docs.push((None, doc));
    }
    if kind == Kind::Api
        && let Some(ops) = value.get_mut("operations").and_then(Value::as_array_mut)
    {
        for (i, op) in ops.iter_mut().enumerate() {
            if let Some(doc) = op.as_object_mut().and_then(|o| o.remove("policies")) {
                docs.push((Some(i), doc));
            }
        }
    }
    let mut parsed_docs = Vec::new();
    for (op, doc) in docs {
        let path = match op {
            None => "policies".to_owned(),
            Some(i) => format!("operations[{i}].policies"),
        };
        match parse_policy_document(doc) {
            Ok(d) => parsed_docs.push((op, d)),
            Err(p) => problems.extend(p.prefixed(&path)),
        }
    }
    let mut resource = match from_json_all(kind, value) {
        Ok(r) => r,
        Err(errors) => {
            for e in errors {
                problems.push(e.path, e.message);
            }
            return (None, problems);
        }
    };
    for (op, doc) in parsed_docs {
        match (&mut resource, op) {
            (Resource::Api(api), Some(i)) => api.operations[i].policies = doc,
            (Resource::Api(api), None) => api.policies = doc,
            (Resource::Product(p), None) => p.policies = doc,
            (Resource::GlobalPolicy(g), None) => g.policies = doc,
            (_, _) => problems.push("policies", format!("a {kind} has no policies")),
        }
    }
    (Some(resource), problems)
}

/// [`Resource::from_json`] with every type error, each with the path of its field: a file's
/// problem can then name the field's line rather than the resource's.
fn from_json_all(kind: Kind, value: Value) -> Result<Resource, Vec<TypeError>> {
    Ok(match kind {
        Kind::NamedValue => Resource::NamedValue(deserialize_all(value)?),
        Kind::Backend => Resource::Backend(deserialize_all(value)?),
        Kind::Api => Resource::Api(deserialize_all(value)?),
        Kind::Product => Resource::Product(deserialize_all(value)?),
        Kind::Subscription => Resource::Subscription(deserialize_all(value)?),
        Kind::Gateway => Resource::Gateway(deserialize_all(value)?),
        Kind::GlobalPolicy => Resource::GlobalPolicy(deserialize_all(value)?),
    })
}

/// Parses a policy document step by step.
pub fn parse_policy_document(value: Value) -> Result<PolicyDocument, Problems> {
    let mut problems = Problems::new();
    let mut doc = PolicyDocument::default();
    let Value::Object(map) = value else {
        if value.is_null() {
            return Ok(doc);
        }
        problems.push(
            "",
            "a policy document is an object with inbound, backend, outbound and on-error lists",
        );
        return Err(problems);
    };
    for (section_name, steps) in map {
        let Some(section) = Section::ALL
            .into_iter()
            .find(|s| s.as_str() == section_name)
        else {
            problems.push(
                section_name.as_str(),
                "unknown section; expected inbound, backend, outbound or on-error",
            );
            continue;
        };
        let steps = match steps {
            Value::Array(a) => a,
            Value::Null => Vec::new(),
            _ => {
                problems.push(section_name.as_str(), "a section is a list of policies");
                continue;
            }
        };
        for (i, step) in steps.into_iter().enumerate() {
            let path = format!("{section_name}[{i}]");
            let name = match &step {
                Value::String(s) => s.clone(),
                Value::Object(o) if o.len() == 1 => o.keys().next().cloned().unwrap_or_default(),
                _ => {
                    problems.push(
                        path,
                        "a policy is `base` or a map with one key, the policy name",
                    );
                    continue;
                }
            };
            let Some(sections) = Policy::allowed_sections(&name) else {
                problems.push(
                    path,
                    format!(
                        "unknown or unsupported policy '{name}'; supported: {}",
                        crate::policy::POLICIES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                continue;
            };
            if !sections.contains(&section) {
                problems.push(
                    path.clone(),
                    format!(
                        "'{name}' is not allowed in {}; allowed in: {}",
                        section.as_str(),
                        sections
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            match deserialize_all::<Policy>(step) {
                Ok(p) => doc.section_mut(section).push(p),
                Err(errors) => {
                    for e in errors {
                        // The error's path starts with the policy's name when it is about a
                        // field of the settings; a step of the wrong shape is about the step.
                        let at = if e.path.is_empty() {
                            format!("{path}.{name}")
                        } else {
                            format!("{path}.{}", e.path)
                        };
                        problems.push(at, e.message);
                    }
                }
            }
        }
    }
    problems.into_result().map(|()| doc)
}

// === one resource ===

/// Checks rules about one resource alone.
pub fn check_resource(resource: &Resource) -> Problems {
    let mut p = Problems::new();
    check_name(&mut p, "name", resource.name());
    match resource {
        Resource::NamedValue(_) => {}
        Resource::Backend(b) => check_backend(&mut p, b),
        Resource::Api(a) => check_api(&mut p, a),
        Resource::Product(prod) => {
            check_names(&mut p, "apis", &prod.apis);
            check_policies(&mut p, "policies", &prod.policies);
        }
        Resource::Subscription(s) => check_subscription(&mut p, s),
        Resource::Gateway(g) => check_gateway(&mut p, g),
        Resource::GlobalPolicy(g) => {
            if g.name != GLOBAL_POLICY_NAME {
                p.push(
                    "name",
                    format!("the global policy is named '{GLOBAL_POLICY_NAME}'"),
                );
            }
            check_policies(&mut p, "policies", &g.policies);
        }
    }
    p
}

/// Names: 1–80 characters, `[a-z0-9]` first, then `[a-z0-9-_.]`.
pub fn check_name(p: &mut Problems, path: &str, name: &str) {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !ok_first || !ok_rest || name.len() > 80 {
        p.push(
            path,
            format!(
                "'{name}' is not a valid name: 1-80 characters, lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
            ),
        );
    }
}

/// Most members a pool may have.
pub const MAX_POOL_MEMBERS: usize = 64;

fn check_backend(p: &mut Problems, b: &Backend) {
    // The URLs may hold named value references; check_config checks them after substitution.
    match (b.url.is_empty(), b.members.is_empty()) {
        (true, true) => p.push("url", "a backend needs a url or members"),
        (false, false) => p.push("members", "set either url or members, not both"),
        (false, true) => {
            if named_value_refs(&b.url).is_empty() {
                check_url(p, "url", &b.url);
            }
        }
        (true, false) => {}
    }
    check_pool(p, b);
    if !(1..=600_000).contains(&b.connect_timeout_ms) {
        p.push("connect-timeout-ms", "must be between 1 and 600000");
    }
    if !(1..=3_600_000).contains(&b.request_timeout_ms) {
        p.push("request-timeout-ms", "must be between 1 and 3600000");
    }
    if let Some(pem) = &b.tls.ca_pem
        && named_value_refs(pem).is_empty()
        && !pem.contains("-----BEGIN CERTIFICATE-----")
    {
        p.push(
            "tls.ca-pem",
            "expected PEM certificates (-----BEGIN CERTIFICATE-----)",
        );
    }
}

/// The pool settings of a backend: its members and their health and balancing rules.
fn check_pool(p: &mut Problems, b: &Backend) {
    if b.members.len() > MAX_POOL_MEMBERS {
        p.push(
            "members",
            format!(
                "at most {MAX_POOL_MEMBERS} members, not {}",
                b.members.len()
            ),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, m) in b.members.iter().enumerate() {
        let at = format!("members[{i}]");
        if named_value_refs(&m.url).is_empty() {
            check_url(p, &format!("{at}.url"), &m.url);
        }
        if !seen.insert(m.url.trim_end_matches('/')) {
            p.push(format!("{at}.url"), format!("'{}' is listed twice", m.url));
        }
        if !(1..=1000).contains(&m.weight) {
            p.push(format!("{at}.weight"), "must be between 1 and 1000");
        }
    }
    let pool_only = [
        ("load-balancing", b.load_balancing.is_some()),
        ("passive-health", b.passive_health.is_some()),
        ("health-check", b.health_check.is_some()),
        ("circuit-breaker", b.circuit_breaker.is_some()),
    ];
    if b.members.is_empty() {
        for (field, set) in pool_only {
            if set {
                p.push(field, "applies to pools only: list the backend's members");
            }
        }
    }
    if let Some(h) = &b.passive_health {
        if h.consecutive_failures > 1000 {
            p.push(
                "passive-health.consecutive-failures",
                "must be between 0 (off) and 1000",
            );
        }
        if !(1..=3_600_000).contains(&h.ejection_ms) {
            p.push(
                "passive-health.ejection-ms",
                "must be between 1 and 3600000",
            );
        }
        // Below ejection-ms it means "no doubling" (the rule reads the larger of the two), so
        // the two fields need not be compared.
        if !(1..=86_400_000).contains(&h.max_ejection_ms) {
            p.push(
                "passive-health.max-ejection-ms",
                "must be between 1 and 86400000",
            );
        }
        for (i, status) in h.failure_statuses.iter().enumerate() {
            if !(100..=599).contains(status) {
                p.push(
                    format!("passive-health.failure-statuses[{i}]"),
                    "must be an HTTP status (100-599)",
                );
            }
        }
    }
    if let Some(c) = &b.health_check {
        if !c.path.starts_with('/') || c.path.contains(char::is_whitespace) || c.path.contains('#')
        {
            p.push(
                "health-check.path",
                "must start with '/' and hold no spaces or fragment",
            );
        }
        if !(100..=3_600_000).contains(&c.interval_ms) {
            p.push(
                "health-check.interval-ms",
                "must be between 100 and 3600000",
            );
        }
        // Above interval-ms it is cut to interval-ms (a check never outlives the next one), so
        // the two fields need not be compared.
        // Bounded like interval-ms, so that the document (and the JSON schema) has a limit
        // a number can be checked against rather than whatever fits in 64 bits.
        if !(1..=3_600_000).contains(&c.timeout_ms) {
            p.push("health-check.timeout-ms", "must be between 1 and 3600000");
        }
        for (field, v) in [
            ("healthy-threshold", c.healthy_threshold),
            ("unhealthy-threshold", c.unhealthy_threshold),
        ] {
            if !(1..=100).contains(&v) {
                p.push(format!("health-check.{field}"), "must be between 1 and 100");
            }
        }
    }
    if let Some(c) = &b.circuit_breaker {
        if !(1..=100).contains(&c.error_rate_percent) {
            p.push(
                "circuit-breaker.error-rate-percent",
                "must be between 1 and 100",
            );
        }
        if !(1..=3_600_000).contains(&c.window_ms) {
            p.push("circuit-breaker.window-ms", "must be between 1 and 3600000");
        }
        if !(1..=1_000_000).contains(&c.min_requests) {
            p.push(
                "circuit-breaker.min-requests",
                "must be between 1 and 1000000",
            );
        }
        if !(1..=3_600_000).contains(&c.open_ms) {
            p.push("circuit-breaker.open-ms", "must be between 1 and 3600000");
        }
    }
}

/// `http(s)://host[:port][/path]`, no query or fragment.
pub fn check_url(p: &mut Problems, path: &str, url: &str) {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else {
        p.push(path, format!("'{url}' must start with http:// or https://"));
        return;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        p.push(path, format!("'{url}' has no host"));
    }
    // A bracketed host is an IPv6 literal; nothing else could connect.
    if let Some(inner) = authority.strip_prefix('[') {
        let ok = inner
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
        if !ok {
            p.push(path, format!("'{url}' has an invalid IPv6 address"));
        }
    }
    if let Some((_, port)) = authority.rsplit_once(':')
        && !authority.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        p.push(path, format!("'{url}' has an invalid port"));
    }
    if url.contains('?') || url.contains('#') || url.contains(char::is_whitespace) {
        p.push(
            path,
            format!("'{url}' must not contain a query, fragment or spaces"),
        );
    }
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "*",
];

fn check_api(p: &mut Problems, a: &Api) {
    if a.path.starts_with('/') || a.path.ends_with('/') {
        p.push(
            "path",
            "write the path suffix without leading or trailing '/'",
        );
    }
    if a.path
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '{' | '}' | '?' | '#' | '*'))
    {
        p.push("path", format!("'{}' is not a plain path suffix", a.path));
    }
    for (i, h) in a.hostnames.iter().enumerate() {
        check_hostname(p, &format!("hostnames[{i}]"), h);
    }
    if a.backend.is_empty() {
        p.push("backend", "an API needs a backend");
    } else {
        check_name(p, "backend", &a.backend);
    }
    if let Some(v) = &a.version {
        if v.name.is_empty() || v.name.contains(['/', '?', '#', ' ']) {
            p.push("version.name", "must be a non-empty path-safe word");
        }
        if v.scheme != VersionScheme::Segment && v.parameter.is_empty() {
            p.push(
                "version.parameter",
                "header and query schemes need a parameter name",
            );
        }
    }
    check_policies(p, "policies", &a.policies);
    let mut names = HashSet::new();
    let mut routes = HashMap::new();
    for (i, op) in a.operations.iter().enumerate() {
        let path = format!("operations[{i}]");
        check_name(p, &format!("{path}.name"), &op.name);
        if !names.insert(op.name.as_str()) {
            p.push(
                format!("{path}.name"),
                format!("duplicate operation '{}'", op.name),
            );
        }
        check_operation(p, &path, op);
        let key = (
            op.method.to_ascii_uppercase(),
            normalize_template(&op.url_template),
        );
        if let Some(prev) = routes.insert(key, i) {
            p.push(
                path,
                format!(
                    "same method and URL template as operations[{prev}] ({} {})",
                    op.method, op.url_template
                ),
            );
        }
    }
}

fn check_operation(p: &mut Problems, path: &str, op: &Operation) {
    if !METHODS.contains(&op.method.to_ascii_uppercase().as_str()) {
        p.push(
            format!("{path}.method"),
            format!("'{}' is not one of {}", op.method, METHODS.join(", ")),
        );
    }
    if let Err(e) = parse_url_template(&op.url_template) {
        p.push(format!("{path}.url-template"), e);
    }
    check_policies(p, &format!("{path}.policies"), &op.policies);
}

/// Checks an operation URL template and returns its parameter names.
pub fn parse_url_template(t: &str) -> Result<Vec<String>, String> {
    if !t.starts_with('/') {
        return Err(format!("'{t}' must start with '/'"));
    }
    if t.contains(['?', '#', ' ']) {
        return Err(format!("'{t}' must be a path without query or spaces"));
    }
    let mut params = Vec::new();
    let segments: Vec<&str> = t.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let opens = seg.matches('{').count();
        let closes = seg.matches('}').count();
        if opens != closes || opens > 1 {
            return Err(format!(
                "'{t}': segment '{seg}' must be literal text or one '{{param}}'"
            ));
        }
        if opens == 1 {
            if !(seg.starts_with('{') && seg.ends_with('}')) {
                return Err(format!(
                    "'{t}': a parameter must fill its whole segment ('{seg}')"
                ));
            }
            let inner = &seg[1..seg.len() - 1];
            let (name, catch_all) = match inner.strip_prefix('*') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if catch_all && i + 1 != segments.len() {
                return Err(format!("'{t}': '{{*{name}}}' must be the last segment"));
            }
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!("'{t}': '{inner}' is not a valid parameter name"));
            }
            if params.iter().any(|p| p == name) {
                return Err(format!("'{t}': parameter '{name}' appears twice"));
            }
            params.push(name.to_owned());
        }
    }
    Ok(params)
}

/// `/orders/{id}` and `/orders/{orderId}` are the same route.
pub fn normalize_template(t: &str) -> String {
    t.split('/')
        .map(|s| {
            if s.starts_with("{*") {
                "{*}"
            } else if s.starts_with('{') {
                "{}"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn check_hostname(p: &mut Problems, path: &str, h: &str) {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && (label == "*" || label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        });
    if !ok || h.chars().any(|c| c.is_ascii_uppercase()) {
        p.push(path, format!("'{h}' is not a valid lowercase hostname"));
    }
}

/// References: a name that no resource can have is wrong in the request itself, whatever is
/// stored (a valid name that is not stored is `check_config`'s).
fn check_names(p: &mut Problems, path: &str, names: &[String]) {
    for (i, n) in names.iter().enumerate() {
        check_name(p, &format!("{path}[{i}]"), n);
    }
}

fn check_subscription(p: &mut Problems, s: &Subscription) {
    match &s.scope {
        Scope::AllApis => {}
        Scope::Product(n) => check_name(p, "scope.product", n),
        Scope::Api(n) => check_name(p, "scope.api", n),
    }
    for (field, key) in [
        ("primary-key", &s.primary_key),
        ("secondary-key", &s.secondary_key),
    ] {
        if !key.is_empty()
            && (key.len() < 32 || key.len() > 256 || !key.chars().all(|c| c.is_ascii_graphic()))
        {
            p.push(
                field,
                "a key is 32-256 printable characters (leave it empty to have one generated)",
            );
        }
    }
    if !s.primary_key.is_empty() && s.primary_key == s.secondary_key {
        p.push("secondary-key", "must differ from the primary key");
    }
}

fn check_gateway(p: &mut Problems, g: &Gateway) {
    check_names(p, "apis", &g.apis);
    for (i, h) in g.hostnames.iter().enumerate() {
        check_hostname(p, &format!("hostnames[{i}].hostname"), &h.hostname);
        if h.certificate_pem.is_some() != h.key_pem.is_some() {
            p.push(
                format!("hostnames[{i}]"),
                "certificate-pem and key-pem go together",
            );
        }
        check_client_certificate(p, &format!("hostnames[{i}]"), h);
    }
    let mut seen = HashSet::new();
    for (i, a) in g.apis.iter().enumerate() {
        if !seen.insert(a) {
            p.push(format!("apis[{i}]"), format!("API '{a}' is listed twice"));
        }
    }
}

/// Client certificates are asked for during the TLS handshake: a hostname without its own
/// certificate has no handshake, and `required` without CAs could admit nobody (or, worse, be
/// read as "anyone").
fn check_client_certificate(p: &mut Problems, at: &str, h: &crate::resources::GatewayHostname) {
    use crate::resources::ClientCertificateMode as Mode;
    let ca = h.client_ca_pem.as_deref().map(str::trim);
    if ca.is_some_and(str::is_empty) {
        p.push(format!("{at}.client-ca-pem"), "must not be empty");
    }
    match h.client_certificate {
        Mode::None => {
            if ca.is_some() {
                p.push(
                    format!("{at}.client-ca-pem"),
                    "client CAs are set but client-certificate is none: set it to optional or \
                     required, or remove client-ca-pem",
                );
            }
        }
        mode => {
            if h.certificate_pem.is_none() {
                p.push(
                    format!("{at}.client-certificate"),
                    format!(
                        "'{}' needs HTTPS on this hostname: set certificate-pem and key-pem",
                        mode.as_str()
                    ),
                );
            }
            if mode == Mode::Required && ca.is_none() {
                p.push(
                    format!("{at}.client-ca-pem"),
                    "client-certificate 'required' needs the CA certificates client \
                     certificates must chain to",
                );
            }
        }
    }
}

/// Checks every step of a policy document.
pub fn check_policies(p: &mut Problems, path: &str, doc: &PolicyDocument) {
    for section in Section::ALL {
        let steps = doc.section(section);
        let mut bases = 0;
        for (i, policy) in steps.iter().enumerate() {
            let at = format!("{path}.{}[{i}].{}", section.as_str(), policy.name());
            if matches!(policy, Policy::Base) {
                bases += 1;
            }
            check_step(p, &at, section, policy);
        }
        if bases > 1 {
            p.push(
                format!("{path}.{}", section.as_str()),
                "'base' may appear at most once per section",
            );
        }
    }
}

/// One step in `section`, and the steps nested in it (`choose`), which follow the rules of the
/// section they are in.
fn check_step(p: &mut Problems, at: &str, section: Section, policy: &Policy) {
    if let Some(allowed) = Policy::allowed_sections(policy.name())
        && !allowed.contains(&section)
    {
        p.push(
            at,
            format!("'{}' is not allowed in {}", policy.name(), section.as_str()),
        );
    }
    check_policy(p, at, policy);
    if let Policy::Choose(c) = policy {
        let branches = c
            .when
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("{at}.when[{i}].policies"), &w.policies))
            .chain(std::iter::once((format!("{at}.otherwise"), &c.otherwise)));
        for (list, policies) in branches {
            for (j, nested) in policies.iter().enumerate() {
                let nested_at = format!("{list}[{j}].{}", nested.name());
                if matches!(nested, Policy::Base) {
                    p.push(nested_at, "'base' cannot be inside choose");
                    continue;
                }
                check_step(p, &nested_at, section, nested);
            }
        }
    }
}

fn check_policy(p: &mut Problems, at: &str, policy: &Policy) {
    // Nested steps are checked on their own (`check_step`); expressions are checked by the
    // compiler (actors/src/expr.rs), which knows CEL.
    if !matches!(policy, Policy::Choose(_)) {
        let expressions = policy_expressions(policy);
        for s in policy.template_strings() {
            if expressions.iter().any(|e| std::ptr::eq(*e, s)) {
                continue;
            }
            if let Err(e) = Template::parse(s) {
                p.push(at, e);
            }
        }
    }
    let field = |f: &str| format!("{at}.{f}");
    match policy {
        Policy::RateLimit(r) => {
            check_range(p, &field("calls"), r.calls, 1, 1_000_000_000);
            check_range(p, &field("renewal-period"), r.renewal_period, 1, 86_400);
            if let Some(b) = r.local_budget {
                check_range(p, &field("local-budget"), b, 1, 1_000_000_000);
            }
        }
        Policy::RateLimitByKey(r) => {
            check_range(p, &field("calls"), r.calls, 1, 1_000_000_000);
            check_range(p, &field("renewal-period"), r.renewal_period, 1, 86_400);
            if let Some(b) = r.local_budget {
                check_range(p, &field("local-budget"), b, 1, 1_000_000_000);
            }
            check_range(
                p,
                &field("increment-count"),
                r.increment_count,
                1,
                1_000_000,
            );
            check_status_set(
                p,
                &field("increment-condition"),
                r.increment_condition.as_deref(),
            );
            check_non_empty(p, &field("counter-key"), &r.counter_key);
        }
        Policy::Quota(q) => {
            check_quota(p, at, q.calls, q.bandwidth, q.renewal_period);
        }
        Policy::QuotaByKey(q) => {
            check_quota(p, at, q.calls, q.bandwidth, q.renewal_period);
            check_status_set(
                p,
                &field("increment-condition"),
                q.increment_condition.as_deref(),
            );
            check_non_empty(p, &field("counter-key"), &q.counter_key);
        }
        Policy::CacheStore(c) => check_range(p, &field("duration"), c.duration, 1, 31_536_000),
        Policy::CacheStoreValue(c) => {
            check_range(p, &field("duration"), c.duration, 1, 31_536_000);
            check_non_empty(p, &field("key"), &c.key);
        }
        Policy::CacheLookupValue(c) => {
            check_non_empty(p, &field("key"), &c.key);
            check_non_empty(p, &field("variable-name"), &c.variable_name);
        }
        Policy::CacheRemoveValue(c) => check_non_empty(p, &field("key"), &c.key),
        Policy::ValidateJwt(v) => {
            check_status(
                p,
                &field("failed-validation-httpcode"),
                v.failed_validation_httpcode,
            );
            if v.signing_keys.is_empty() && v.jwks_url.is_none() && v.openid_config_url.is_none() {
                p.push(
                    field("signing-keys"),
                    "at least one key source is needed: signing-keys, jwks-url or openid-config-url",
                );
            }
            for (name, url) in [
                ("jwks-url", &v.jwks_url),
                ("openid-config-url", &v.openid_config_url),
            ] {
                if let Some(u) = url
                    && named_value_refs(u).is_empty()
                    && !(u.starts_with("https://") || u.starts_with("http://"))
                {
                    p.push(field(name), "expected an http:// or https:// URL");
                }
            }
            check_range(
                p,
                &field("jwks-refresh-interval"),
                v.jwks_refresh_interval,
                10,
                86_400,
            );
            for (i, k) in v.signing_keys.iter().enumerate() {
                use crate::policy::SigningKey;
                let f = field(&format!("signing-keys[{i}]"));
                match k {
                    SigningKey::HmacBase64(s) => {
                        if named_value_refs(s).is_empty() && decode_base64(s).is_none() {
                            p.push(f, "not valid base64");
                        }
                    }
                    SigningKey::RsaPem(s) | SigningKey::EcPem(s) | SigningKey::EdPem(s) => {
                        if named_value_refs(s).is_empty() && !s.contains("-----BEGIN") {
                            p.push(f, "expected a PEM public key");
                        }
                    }
                }
            }
        }
        Policy::CheckHeader(c) => {
            check_non_empty(p, &field("name"), &c.name);
            check_status(p, &field("failed-check-httpcode"), c.failed_check_httpcode);
        }
        Policy::IpFilter(f) => {
            if f.addresses.is_empty() {
                p.push(field("addresses"), "at least one address or CIDR block");
            }
            for (i, a) in f.addresses.iter().enumerate() {
                if let Err(e) = parse_cidr(a) {
                    p.push(field(&format!("addresses[{i}]")), e);
                }
            }
        }
        Policy::Cors(c) => {
            if c.allowed_origins.is_empty() {
                p.push(field("allowed-origins"), "at least one origin (or '*')");
            }
            if c.allow_credentials && c.allowed_origins.iter().any(|o| o == "*") {
                p.push(
                    field("allow-credentials"),
                    "credentials cannot be allowed for the '*' origin",
                );
            }
        }
        Policy::SetHeader(s) => {
            check_header_name(p, &field("name"), &s.name);
            check_value_for_action(
                p,
                at,
                s.value.as_deref(),
                s.value_expression.as_deref(),
                s.exists_action,
            );
        }
        Policy::SetQueryParameter(s) => {
            check_non_empty(p, &field("name"), &s.name);
            check_value_for_action(
                p,
                at,
                s.value.as_deref(),
                s.value_expression.as_deref(),
                s.exists_action,
            );
        }
        Policy::Choose(c) => {
            if c.when.is_empty() {
                p.push(field("when"), "a choose needs at least one when");
            }
        }
        Policy::SetVariable(v) => {
            check_non_empty(p, &field("name"), &v.name);
            if v.value.is_some() == v.value_expression.is_some() {
                p.push(at, "set exactly one of value and value-expression");
            }
        }
        Policy::SetStatus(v) => match (v.code, &v.code_expression) {
            (Some(c), None) => check_status(p, &field("code"), c),
            (None, Some(_)) => {}
            _ => p.push(at, "set exactly one of code and code-expression"),
        },
        Policy::SetBody(v) => {
            if v.body.is_some() == v.body_expression.is_some() {
                p.push(at, "set exactly one of body and body-expression");
            }
        }
        Policy::AuthenticationBasic(v) => {
            if named_value_refs(&v.username).is_empty() && v.username.contains(':') {
                p.push(field("username"), "a Basic user name cannot contain ':'");
            }
        }
        Policy::FindAndReplace(f) => {
            if f.from.is_empty() {
                p.push(field("from"), "the text to find cannot be empty");
            }
        }
        Policy::ValidateHeaders(v) => {
            if v.headers.is_empty() {
                p.push(field("headers"), "at least one header");
            }
            let mut seen = std::collections::HashSet::new();
            for (i, h) in v.headers.iter().enumerate() {
                let at = field(&format!("headers[{i}]"));
                check_header_name(p, &format!("{at}.name"), &h.name);
                if !seen.insert(h.name.to_ascii_lowercase()) {
                    p.push(
                        format!("{at}.name"),
                        format!("'{}' is declared twice", h.name),
                    );
                }
                if h.pattern.is_some() && !h.values.is_empty() {
                    p.push(at, "set at most one of pattern and values");
                }
            }
        }
        Policy::RewriteUri(r) => {
            if !r.template.starts_with('/') {
                p.push(field("template"), "must start with '/'");
            }
        }
        Policy::SetBackendService(s) => match (&s.backend_id, &s.base_url) {
            (Some(_), None) => {}
            (None, Some(u)) => {
                if named_value_refs(u).is_empty() {
                    check_url(p, &field("base-url"), u);
                }
            }
            _ => p.push(at, "set exactly one of backend-id and base-url"),
        },
        Policy::MockResponse(m) => check_status(p, &field("status-code"), m.status_code),
        Policy::ReturnResponse(r) => {
            check_status(p, &field("status-code"), r.status_code);
            if r.body.is_some() && r.body_expression.is_some() {
                p.push(at, "set at most one of body and body-expression");
            }
            for (i, h) in r.headers.iter().enumerate() {
                check_header_name(p, &field(&format!("headers[{i}].name")), &h.name);
            }
        }
        Policy::Retry(r) => {
            check_range(p, &field("count"), u64::from(r.count), 1, 10);
            check_range(p, &field("interval-ms"), r.interval_ms, 0, 60_000);
            check_status_set(p, &field("condition"), Some(&r.condition));
        }
        Policy::ForwardRequest(f) => {
            if let Some(t) = f.timeout {
                check_range(p, &field("timeout"), t, 1, 3_600);
            }
        }
        Policy::LimitConcurrency(l) => {
            check_non_empty(p, &field("key"), &l.key);
            check_range(p, &field("max-count"), u64::from(l.max_count), 1, 1_000_000);
        }
        Policy::ValidateClientCertificate(v) => {
            for (i, id) in v.identities.iter().enumerate() {
                let fields = [
                    &id.thumbprint,
                    &id.serial_number,
                    &id.subject,
                    &id.common_name,
                    &id.issuer,
                ];
                if fields.iter().all(|f| f.is_none()) {
                    p.push(
                        field(&format!("identities[{i}]")),
                        "an identity needs at least one of thumbprint, serial-number, subject, \
                         common-name, issuer",
                    );
                }
                for f in fields.into_iter().flatten() {
                    if f.trim().is_empty() {
                        p.push(field(&format!("identities[{i}]")), "empty field");
                    }
                }
            }
        }
        Policy::AuthenticationCertificate(a) => {
            check_non_empty(p, &field("certificate-pem"), &a.certificate_pem);
            check_non_empty(p, &field("key-pem"), &a.key_pem);
        }
        Policy::SendRequest(r) => {
            check_non_empty(
                p,
                &field("response-variable-name"),
                &r.response_variable_name,
            );
            if r.url.is_some() == r.url_expression.is_some() {
                p.push(at, "set exactly one of url and url-expression");
            }
            if let Some(m) = &r.method
                && !is_method_token(m)
            {
                p.push(field("method"), format!("'{m}' is not an HTTP method"));
            }
            for (i, h) in r.headers.iter().enumerate() {
                let at = field(&format!("headers[{i}]"));
                check_header_name(p, &format!("{at}.name"), &h.name);
                check_value_for_action(
                    p,
                    &at,
                    h.value.as_deref(),
                    h.value_expression.as_deref(),
                    h.exists_action,
                );
            }
            if r.body.is_some() && r.body_expression.is_some() {
                p.push(at, "set at most one of body and body-expression");
            }
            check_range(p, &field("timeout"), r.timeout, 1, 600);
        }
        Policy::ValidateContent(v) => {
            check_range(p, &field("max-size"), v.max_size, 1, 104_857_600);
            if v.content.is_empty() {
                p.push(field("content"), "at least one content type");
            }
            for media in v.content.keys() {
                if !is_media_type(media) {
                    p.push(
                        field(&format!("content.{media}")),
                        format!("'{media}' is not a lowercase media type such as application/json"),
                    );
                }
            }
        }
        Policy::JsonToXml(v) => {
            check_range(p, &field("max-size"), v.max_size, 1, 104_857_600);
            if !is_xml_name(&v.root_element) {
                p.push(
                    field("root-element"),
                    format!(
                        "'{}' is not an XML element name (a letter or '_', then letters, digits, '-', '.', '_', at most one ':' inside)",
                        v.root_element
                    ),
                );
            }
        }
        Policy::XmlToJson(v) => check_range(p, &field("max-size"), v.max_size, 1, 104_857_600),
        Policy::ValidateParameters(v) => {
            let listed = [("path", &v.path), ("query", &v.query)];
            for (list, rules) in listed {
                for (name, rule) in rules {
                    if name.is_empty() {
                        p.push(field(list), "a parameter's name must not be empty");
                    }
                    if rule.minimum.is_some_and(|m| !m.is_finite())
                        || rule.maximum.is_some_and(|m| !m.is_finite())
                    {
                        p.push(
                            field(&format!("{list}.{name}")),
                            "bounds must be finite numbers",
                        );
                    }
                }
            }
        }
        Policy::Log(l) => {
            if l.message.is_some() == l.message_expression.is_some() {
                p.push(at, "set exactly one of message and message-expression");
            }
            check_dimensions(p, at, &l.dimensions, false);
        }
        Policy::EmitMetric(m) => {
            if !is_metric_name(&m.name) || m.name.len() > 64 {
                p.push(
                    field("name"),
                    format!(
                        "'{}' is not a metric name: lowercase letters, digits and '_', \
                         starting with a letter, at most 64 characters",
                        m.name
                    ),
                );
            }
            check_range(p, &field("value"), m.value, 1, 1_000_000);
            if m.dimensions.len() > crate::policy::MAX_METRIC_DIMENSIONS {
                p.push(
                    field("dimensions"),
                    format!(
                        "{} dimensions; at most {} (each multiplies the metric's series)",
                        m.dimensions.len(),
                        crate::policy::MAX_METRIC_DIMENSIONS
                    ),
                );
            }
            check_dimensions(p, at, &m.dimensions, true);
        }
        Policy::Base | Policy::CacheLookup(_) | Policy::SetMethod(_) => {}
    }
}

fn check_quota(p: &mut Problems, at: &str, calls: Option<u64>, bw: Option<u64>, period: u64) {
    if calls.is_none() && bw.is_none() {
        p.push(at, "a quota needs calls, bandwidth or both");
    }
    if let Some(c) = calls {
        check_range(p, &format!("{at}.calls"), c, 1, u64::MAX);
    }
    if let Some(b) = bw {
        check_range(p, &format!("{at}.bandwidth"), b, 1, u64::MAX);
    }
    check_range(p, &format!("{at}.renewal-period"), period, 1, 31_536_000);
}

/// An HTTP method: a token (RFC 9110).
fn is_method_token(m: &str) -> bool {
    !m.is_empty()
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b))
}

/// A media type without parameters, lowercase: `type/subtype`, both tokens.
/// An XML element name as `json-to-xml` writes it unencoded: a letter or `_`, then letters,
/// digits, `-`, `.`, `_`, with at most one `:` that is neither first nor last (a prefixed name).
pub fn is_xml_name(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    if !(first.is_alphabetic() || first == '_') || s.ends_with(':') {
        return false;
    }
    if s.matches(':').count() > 1 {
        return false;
    }
    let after_colon_ok = s
        .split_once(':')
        .is_none_or(|(_, local)| local.starts_with(|c: char| c.is_alphabetic() || c == '_'));
    after_colon_ok && chars.all(|c| c.is_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
}

pub fn is_media_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$&^_.+-".contains(&b))
    };
    s.split_once('/').is_some_and(|(a, b)| token(a) && token(b))
}

/// A Prometheus-safe name of ours: `[a-z][a-z0-9_]*`.
pub fn is_metric_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The dimensions of `log` and `emit-metric`, each with a value or an expression; metric
/// dimensions are label names (`[a-z][a-z0-9_]*`, not `api`, which the gateway sets).
fn check_dimensions(
    p: &mut Problems,
    at: &str,
    dimensions: &std::collections::BTreeMap<String, crate::policy::Dimension>,
    label: bool,
) {
    for (name, d) in dimensions {
        let at = format!("{at}.dimensions.{name}");
        if label {
            if !is_metric_name(name) || name.len() > 64 {
                p.push(
                    at.clone(),
                    format!(
                        "'{name}' is not a label name: lowercase letters, digits and '_', \
                         starting with a letter, at most 64 characters"
                    ),
                );
            } else if name == "api" {
                p.push(
                    at.clone(),
                    "'api' is set by the gateway; choose another name",
                );
            }
        } else if name.trim().is_empty() {
            p.push(at.clone(), "a dimension's name must not be empty");
        }
        if d.value.is_some() == d.value_expression.is_some() {
            p.push(at, "set exactly one of value and value-expression");
        }
    }
}

fn check_value_for_action(
    p: &mut Problems,
    at: &str,
    value: Option<&str>,
    expression: Option<&str>,
    action: crate::policy::ExistsAction,
) {
    use crate::policy::ExistsAction;
    match (action, value, expression) {
        (ExistsAction::Delete, None, None) => {}
        (ExistsAction::Delete, _, _) => p.push(format!("{at}.value"), "delete takes no value"),
        (_, None, None) => p.push(
            format!("{at}.value"),
            "a value (or value-expression) is needed unless exists-action is delete",
        ),
        (_, Some(_), Some(_)) => p.push(at, "set at most one of value and value-expression"),
        _ => {}
    }
}

/// The fields of a policy that hold expressions rather than templates.
fn policy_expressions(policy: &Policy) -> Vec<&str> {
    match policy {
        Policy::SetHeader(s) => s.value_expression.as_deref().into_iter().collect(),
        Policy::SetQueryParameter(s) => s.value_expression.as_deref().into_iter().collect(),
        Policy::SetVariable(s) => s.value_expression.as_deref().into_iter().collect(),
        Policy::SetStatus(s) => s.code_expression.as_deref().into_iter().collect(),
        Policy::SetBody(s) => s.body_expression.as_deref().into_iter().collect(),
        Policy::ReturnResponse(r) => r.body_expression.as_deref().into_iter().collect(),
        Policy::SendRequest(r) => r
            .url_expression
            .iter()
            .chain(r.headers.iter().filter_map(|h| h.value_expression.as_ref()))
            .chain(r.body_expression.iter())
            .map(String::as_str)
            .collect(),
        Policy::Log(l) => l
            .message_expression
            .iter()
            .chain(
                l.dimensions
                    .values()
                    .filter_map(|d| d.value_expression.as_ref()),
            )
            .map(String::as_str)
            .collect(),
        Policy::EmitMetric(m) => m
            .dimensions
            .values()
            .filter_map(|d| d.value_expression.as_deref())
            .collect(),
        _ => Vec::new(),
    }
}

fn check_range(p: &mut Problems, at: &str, v: u64, min: u64, max: u64) {
    if v < min || v > max {
        p.push(at, format!("{v} is out of range {min}..={max}"));
    }
}

fn check_status(p: &mut Problems, at: &str, s: u16) {
    if !(100..=599).contains(&s) {
        p.push(at, format!("{s} is not an HTTP status"));
    }
}

fn check_status_set(p: &mut Problems, at: &str, s: Option<&str>) {
    if let Some(s) = s
        && let Err(e) = StatusSet::parse(s)
    {
        p.push(at, e);
    }
}

fn check_non_empty(p: &mut Problems, at: &str, s: &str) {
    if s.trim().is_empty() {
        p.push(at, "must not be empty");
    }
}

fn check_header_name(p: &mut Problems, at: &str, name: &str) {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
    if !ok {
        p.push(at, format!("'{name}' is not a valid header name"));
    }
}

/// Parses an address or CIDR block into (network, prefix length).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an IP address or CIDR block"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("'{s}': prefix length must be 0..={max}"))?,
    };
    Ok((ip, len))
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    // Small standard-alphabet decoder; the model crate stays free of encoding dependencies.
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    (!out.is_empty()).then_some(out)
}

// === across resources ===

/// Checks rules across a whole configuration: references resolve, subscription keys are
/// unique, routes do not collide. `resources` is the complete candidate state.
pub fn check_config<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> Problems {
    check_config_partial(resources, &HashSet::new())
}

/// [`check_config`] on a configuration some of whose resources did not parse: those exist
/// (`unparsed`), so a reference to one is not a problem, but nothing is known of their content.
/// This is how one run over a file reports the reference problems of every resource that
/// parsed, next to the parse problems of those that did not.
pub fn check_config_partial<'a>(
    resources: impl IntoIterator<Item = &'a Resource>,
    unparsed: &HashSet<ResourceKey>,
) -> Problems {
    let mut p = Problems::new();
    let mut by_key: BTreeMap<ResourceKey, &Resource> = BTreeMap::new();
    for r in resources {
        by_key.insert(r.key(), r);
    }
    let has = |kind: Kind, name: &str| {
        let key = ResourceKey::new(kind, name);
        by_key.contains_key(&key) || unparsed.contains(&key)
    };
    let named_value = |name: &str| -> Option<&str> {
        match by_key.get(&ResourceKey::new(Kind::NamedValue, name)) {
            Some(Resource::NamedValue(nv)) => Some(nv.value.as_str()),
            _ => None,
        }
    };
    let unparsed_value = |name: &str| unparsed.contains(&ResourceKey::new(Kind::NamedValue, name));
    let mut keys: HashMap<&str, String> = HashMap::new();
    let mut routes: HashMap<(String, String, String, String), String> = HashMap::new();
    for (key, r) in &by_key {
        let at = key.to_string();
        let check_refs = |p: &mut Problems, path: &str, s: &str| {
            for n in named_value_refs(s) {
                if named_value(&n).is_none() && !unparsed_value(&n) {
                    p.push(
                        join(&at, path),
                        format!("unknown named value '{{{{{n}}}}}'"),
                    );
                }
            }
        };
        let check_doc = |p: &mut Problems, path: &str, doc: &PolicyDocument| {
            for (section, policy) in doc.iter() {
                let ppath = format!("{path}.{}.{}", section.as_str(), policy.name());
                for s in policy.template_strings() {
                    check_refs(p, &ppath, s);
                }
                if let Policy::SetBackendService(s) = policy
                    && let Some(b) = &s.backend_id
                    && !has(Kind::Backend, b)
                {
                    p.push(join(&at, &ppath), format!("unknown backend '{b}'"));
                }
            }
        };
        match r {
            Resource::NamedValue(_) => {}
            Resource::Backend(b) => {
                let urls = std::iter::once(("url".to_owned(), &b.url)).chain(
                    b.members
                        .iter()
                        .enumerate()
                        .map(|(i, m)| (format!("members[{i}].url"), &m.url)),
                );
                for (field, url) in urls {
                    check_refs(&mut p, &field, url);
                    if !named_value_refs(url).is_empty()
                        && let Ok(url) = crate::template::substitute_named_values(url, named_value)
                    {
                        let mut sub = Problems::new();
                        check_url(&mut sub, &field, &url);
                        p.extend(sub.prefixed(&at));
                    }
                }
                if let Some(pem) = &b.tls.ca_pem {
                    check_refs(&mut p, "tls.ca-pem", pem);
                }
            }
            Resource::Api(a) => {
                if !has(Kind::Backend, &a.backend) {
                    p.push(
                        join(&at, "backend"),
                        format!("unknown backend '{}'", a.backend),
                    );
                }
                check_doc(&mut p, "policies", &a.policies);
                for (i, op) in a.operations.iter().enumerate() {
                    check_doc(&mut p, &format!("operations[{i}].policies"), &op.policies);
                }
                // Two APIs may share hostnames and path only when their versions tell them apart.
                let hosts: Vec<String> = if a.hostnames.is_empty() {
                    vec!["*".to_owned()]
                } else {
                    a.hostnames.clone()
                };
                let version = a
                    .version
                    .as_ref()
                    .map(|v| format!("{:?}:{}:{}", v.scheme, v.parameter, v.name))
                    .unwrap_or_default();
                let prefix = match &a.version {
                    Some(v) if v.scheme == VersionScheme::Segment => {
                        format!("{}/{}", a.path, v.name)
                    }
                    _ => a.path.clone(),
                };
                for host in hosts {
                    for op in &a.operations {
                        let route = (
                            host.clone(),
                            format!("{prefix}{}", normalize_template(&op.url_template)),
                            op.method.to_ascii_uppercase(),
                            version.clone(),
                        );
                        if let Some(other) = routes.insert(route, a.name.clone())
                            && other != a.name
                        {
                            p.push(
                                join(&at, "operations"),
                                format!(
                                    "{} /{}{} on host '{host}' is also served by API '{other}'",
                                    op.method, prefix, op.url_template
                                ),
                            );
                        }
                    }
                }
            }
            Resource::Product(prod) => {
                for (i, api) in prod.apis.iter().enumerate() {
                    if !has(Kind::Api, api) {
                        p.push(
                            join(&at, &format!("apis[{i}]")),
                            format!("unknown API '{api}'"),
                        );
                    }
                }
                check_doc(&mut p, "policies", &prod.policies);
            }
            Resource::Subscription(s) => {
                match &s.scope {
                    Scope::AllApis => {}
                    Scope::Product(n) if !has(Kind::Product, n) => {
                        p.push(join(&at, "scope"), format!("unknown product '{n}'"))
                    }
                    Scope::Api(n) if !has(Kind::Api, n) => {
                        p.push(join(&at, "scope"), format!("unknown API '{n}'"))
                    }
                    _ => {}
                }
                for (field, k) in [
                    ("primary-key", &s.primary_key),
                    ("secondary-key", &s.secondary_key),
                ] {
                    if k.is_empty() {
                        continue;
                    }
                    if let Some(other) = keys.insert(k.as_str(), s.name.clone()) {
                        p.push(
                            join(&at, field),
                            format!("key already used by subscription '{other}'"),
                        );
                    }
                }
            }
            Resource::Gateway(g) => {
                for (i, api) in g.apis.iter().enumerate() {
                    if !has(Kind::Api, api) {
                        p.push(
                            join(&at, &format!("apis[{i}]")),
                            format!("unknown API '{api}'"),
                        );
                    }
                }
                for (i, h) in g.hostnames.iter().enumerate() {
                    for s in [&h.certificate_pem, &h.key_pem, &h.client_ca_pem]
                        .into_iter()
                        .flatten()
                    {
                        check_refs(&mut p, &format!("hostnames[{i}]"), s);
                    }
                }
            }
            Resource::GlobalPolicy(g) => check_doc(&mut p, "policies", &g.policies),
        }
    }
    p
}

/// Which resources refer to `key` (for refusing a delete with 409).
pub fn referrers<'a>(
    key: &ResourceKey,
    resources: impl IntoIterator<Item = &'a Resource>,
) -> Vec<ResourceKey> {
    resources
        .into_iter()
        .filter(|r| r.key() != *key && refers_to(r, key))
        .map(Resource::key)
        .collect()
}

fn refers_to(r: &Resource, key: &ResourceKey) -> bool {
    let name = key.name.as_str();
    let doc_refers = |doc: &PolicyDocument| {
        doc.iter().any(|(_, p)| match (key.kind, p) {
            (Kind::Backend, Policy::SetBackendService(s)) => s.backend_id.as_deref() == Some(name),
            (Kind::NamedValue, p) => p
                .template_strings()
                .iter()
                .any(|s| named_value_refs(s).iter().any(|n| n == name)),
            _ => false,
        })
    };
    let str_refers =
        |s: &str| key.kind == Kind::NamedValue && named_value_refs(s).iter().any(|n| n == name);
    match r {
        Resource::NamedValue(_) => false,
        Resource::Backend(b) => {
            str_refers(&b.url) || b.tls.ca_pem.as_deref().is_some_and(str_refers)
        }
        Resource::Api(a) => {
            (key.kind == Kind::Backend && a.backend == name)
                || doc_refers(&a.policies)
                || a.operations.iter().any(|o| doc_refers(&o.policies))
        }
        Resource::Product(p) => {
            (key.kind == Kind::Api && p.apis.iter().any(|a| a == name)) || doc_refers(&p.policies)
        }
        Resource::Subscription(s) => match (&s.scope, key.kind) {
            (Scope::Product(n), Kind::Product) | (Scope::Api(n), Kind::Api) => n == name,
            _ => false,
        },
        Resource::Gateway(g) => {
            (key.kind == Kind::Api && g.apis.iter().any(|a| a == name))
                || g.hostnames.iter().any(|h| {
                    [&h.certificate_pem, &h.key_pem, &h.client_ca_pem]
                        .into_iter()
                        .flatten()
                        .any(|s| str_refers(s))
                })
        }
        Resource::GlobalPolicy(g) => doc_refers(&g.policies),
    }
}
