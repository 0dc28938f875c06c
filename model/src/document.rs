//! The declarative file: `apiVersion: outpost/v1` and one list per kind.
//!
//! ```yaml
//! apiVersion: outpost/v1
//! named-values: [{name: env, value: prod}]
//! backends:     [{name: orders, url: "http://127.0.0.1:9000"}]
//! apis:         [{name: orders, path: orders, backend: orders, operations: [...]}]
//! products:     [...]
//! subscriptions: [...]
//! gateways:     [...]
//! policies:     {inbound: [...]}      # the global policy document
//! ```
//!
//! The file is parsed to a JSON tree first and every resource is then parsed on its own, so one
//! bad entry does not hide the problems of the others. One pass runs every layer of validation
//! on everything it can: the rules about one resource on every resource that parsed, and the
//! rules across resources on all of those together (a resource that did not parse still counts
//! as existing, so a reference to it is not reported). Every problem carries one path form,
//! its place in the file and its name (`apis[2] (orders).operations[0].method`), and, for a
//! YAML file, the line and column it starts at ([`FileIndex`]).

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{Map, Value};

use crate::prune::prune;
use crate::resources::{
    GLOBAL_POLICY_NAME, GlobalPolicy, Kind, Resource, ResourceKey, SECRET_MASK,
};
use crate::source_map::SourceMap;
use crate::validate::{
    Problems, check_config_partial, check_resource, parse_policy_document, parse_resource_partial,
};

pub const API_VERSION: &str = "outpost/v1";

/// A parsed declarative file: the desired state of the resources it lists.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document {
    pub resources: Vec<Resource>,
    /// The kinds whose section the file has, even when empty (`subscriptions: []`). A pruning
    /// apply owns exactly these kinds, so an empty section is how a file says "none of these".
    pub sections: BTreeSet<Kind>,
}

/// Where each resource of a file is: gives the problems that later checks find by resource key
/// (`apis/orders.backend`: the gateway compiler's, the store's) the file's path form and
/// position (`apis[0] (orders).backend`, line 7).
#[derive(Debug, Clone, Default)]
pub struct FileIndex {
    map: Option<SourceMap>,
    /// Key → the resource's path in the file (`apis[0]`) and its label (` (orders)`).
    places: HashMap<ResourceKey, (String, String)>,
}

impl FileIndex {
    /// Problems about `base` (a path in the file) and below, labelled and positioned.
    fn in_file(&self, base: &str, label: &str, problems: Problems) -> Problems {
        let mut problems = problems;
        for p in &mut problems.0 {
            let structural = join(base, &p.path);
            if let Some(at) = self.map.as_ref().and_then(|m| m.locate(&structural)) {
                p.line = Some(at.line);
                p.column = Some(at.column);
            }
            p.path = join(&format!("{base}{label}"), &p.path);
        }
        problems
    }

    /// Rewrites the paths that start with the key of a resource of this file
    /// (`apis/orders.operations[0]`) into the file's form, with the position. Any other
    /// problem (about a resource the file does not list) is left as it is.
    pub fn locate(&self, problems: Problems) -> Problems {
        let mut out = Problems::new();
        for p in problems.0 {
            match self.resource_of(&p.path) {
                Some((key, rest)) => {
                    let (base, label) = &self.places[&key];
                    let rest = rest.strip_prefix('.').unwrap_or(rest).to_owned();
                    let mut one = Problems(vec![crate::validate::Problem { path: rest, ..p }]);
                    one = self.in_file(base, label, one);
                    out.extend(one);
                }
                None => out.0.push(p),
            }
        }
        out
    }

    /// The resource of this file whose key starts `path`, and the rest of the path. Names may
    /// hold '.', so the longest name that ends at a path boundary wins.
    fn resource_of<'p>(&self, path: &'p str) -> Option<(ResourceKey, &'p str)> {
        let (plural, rest) = path.split_once('/')?;
        let kind = Kind::from_plural(plural)?;
        self.places
            .keys()
            .filter(|k| k.kind == kind)
            .filter_map(|k| {
                let after = rest.strip_prefix(k.name.as_str())?;
                (after.is_empty() || after.starts_with(['.', '['])).then_some((k, after))
            })
            .max_by_key(|(k, _)| k.name.len())
            .map(|(k, after)| (k.clone(), after))
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (_, true) => prefix.to_owned(),
        _ if path.starts_with('[') => format!("{prefix}{path}"),
        _ => format!("{prefix}.{path}"),
    }
}

/// The deserialiser's message; the position is the problem's own line and column.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    // Display adds a source snippet (several lines) and the position in words, which the
    // problem has as its line and column.
    let text = e.without_snippet().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let bare = text
        .strip_prefix("line ")
        .and_then(|t| t.split_once(": "))
        .filter(|(at, _)| at.contains(" column "))
        .map_or(text, |(_, m)| m);
    let bare = bare
        .rsplit_once(" at line ")
        .filter(|(_, at)| at.contains(", column "))
        .map_or(bare, |(m, _)| m);
    bare.to_owned()
}

/// Why a file was refused: every problem, and what kind they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// In file order.
    pub problems: Problems,
    /// Every problem is about how the file's resources fit together — a reference to a resource
    /// it does not have, a name or key used twice, routes that collide — and none is about a
    /// resource alone. The management API answers these with 409, as it answers the same
    /// problems of a single write.
    pub across_resources: bool,
}

impl Refused {
    fn alone(problems: Problems) -> Refused {
        Refused {
            problems,
            across_resources: false,
        }
    }
}

impl Document {
    /// Parses and validates a document given as a JSON tree (from YAML or JSON).
    pub fn from_value(value: Value) -> Result<Document, Problems> {
        Document::parse(value, FileIndex::default())
            .map(|(doc, _)| doc)
            .map_err(|r| r.problems)
    }

    fn parse(value: Value, mut index: FileIndex) -> Result<(Document, FileIndex), Refused> {
        let mut problems = Problems::new();
        let Value::Object(mut map) = value else {
            let mut p = Problems::new();
            p.push(
                "",
                "the file must be a map with apiVersion and resource lists",
            );
            return Err(Refused::alone(index.in_file("", "", p)));
        };
        match map.remove("apiVersion") {
            Some(Value::String(v)) if v == API_VERSION => {}
            Some(other) => problems.push(
                "apiVersion",
                format!("unsupported apiVersion {other}; expected '{API_VERSION}'"),
            ),
            None => problems.push("apiVersion", format!("missing; expected '{API_VERSION}'")),
        }
        let mut problems = index.in_file("", "", problems);
        // Problems between resources, kept apart to tell a file that is wrong in itself from
        // one whose resources do not fit together.
        let mut across = Problems::new();
        let mut resources = Vec::new();
        let mut unparsed = HashSet::new();
        let mut seen = HashSet::new();
        let mut sections = BTreeSet::new();
        if let Some(doc) = map.remove("policies") {
            sections.insert(Kind::GlobalPolicy);
            // The global policy's own paths start with `policies`, the file's section.
            let key = ResourceKey::new(Kind::GlobalPolicy, GLOBAL_POLICY_NAME);
            index
                .places
                .insert(key.clone(), (String::new(), String::new()));
            match parse_policy_document(doc) {
                Ok(policies) => {
                    let global = Resource::GlobalPolicy(GlobalPolicy {
                        name: GLOBAL_POLICY_NAME.to_owned(),
                        policies,
                    });
                    // Its paths already start with `policies`, the file's section.
                    problems.extend(index.in_file("", "", check_resource(&global)));
                    resources.push(global);
                }
                Err(p) => {
                    unparsed.insert(key);
                    problems.extend(index.in_file("policies", "", p));
                }
            }
        }
        for (section, items) in map {
            let mut here = Problems::new();
            let Some(kind) = Kind::from_plural(&section).filter(|k| *k != Kind::GlobalPolicy)
            else {
                here.push(
                    "",
                    "unknown section; expected named-values, backends, apis, products, subscriptions, gateways or policies",
                );
                problems.extend(index.in_file(&section, "", here));
                continue;
            };
            sections.insert(kind);
            let items = match items {
                Value::Array(a) => a,
                Value::Null => continue,
                _ => {
                    here.push("", "must be a list");
                    problems.extend(index.in_file(&section, "", here));
                    continue;
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                let name = item.get("name").and_then(Value::as_str).map(str::to_owned);
                let base = format!("{section}[{i}]");
                let label = name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                let key = name.as_deref().map(|n| ResourceKey::new(kind, n));
                if let Some(k) = &key {
                    index
                        .places
                        .entry(k.clone())
                        .or_insert_with(|| (base.clone(), label.clone()));
                }
                let (parsed, mut p) = parse_resource_partial(kind, item);
                match parsed {
                    Some(r) => {
                        if !seen.insert(r.key()) {
                            let mut twice = Problems::new();
                            twice.push("", format!("duplicate {kind} '{}'", r.name()));
                            across.extend(index.in_file(&base, &label, twice));
                        }
                        p.extend(check_resource(&r));
                        // Checked across resources even when invalid alone, or without the
                        // policy documents that did not parse: the file's other problems are
                        // what an operator came for.
                        resources.push(r);
                    }
                    None => unparsed.extend(key),
                }
                problems.extend(index.in_file(&base, &label, p));
            }
        }
        across.extend(index.locate(check_config_partial(&resources, &unparsed)));
        let across_resources = problems.is_empty() && !across.is_empty();
        problems.extend(across);
        if index.map.is_some() {
            // File order: an operator fixes a file from top to bottom.
            problems
                .0
                .sort_by_key(|p| (p.line.unwrap_or(0), p.column.unwrap_or(0)));
        }
        resources.sort_by_key(Resource::key);
        match problems.into_result() {
            Ok(()) => Ok((Document::with_sections(resources, sections), index)),
            Err(problems) => Err(Refused {
                problems,
                across_resources,
            }),
        }
    }

    /// A document of `resources` whose sections are exactly their kinds.
    pub fn new(resources: Vec<Resource>) -> Document {
        let sections = resources.iter().map(Resource::kind).collect();
        Document::with_sections(resources, sections)
    }

    fn with_sections(resources: Vec<Resource>, sections: BTreeSet<Kind>) -> Document {
        Document {
            resources,
            sections,
        }
    }

    /// Secret named values whose value is the export mask: such a file cannot be served (the
    /// gateway would send the mask as the secret), and only a control plane that already
    /// stores the secret can make sense of it. One problem per value.
    pub fn masked_secrets(&self) -> Problems {
        let mut problems = Problems::new();
        for r in &self.resources {
            if let Resource::NamedValue(nv) = r
                && nv.secret
                && nv.value == SECRET_MASK
            {
                problems.push(
                    r.key().to_string(),
                    format!(
                        "value is the export mask '{SECRET_MASK}'; export with --include-secrets or set the real value"
                    ),
                );
            }
        }
        problems
    }

    /// Parses a YAML (or JSON, which is YAML) file's text.
    pub fn from_yaml(text: &str) -> Result<Document, Problems> {
        Document::from_yaml_indexed(text).map(|(doc, _)| doc)
    }

    /// [`Document::from_yaml`], and where each resource is in the text, to locate the problems
    /// that later checks find ([`FileIndex::locate`]). Every problem has a line and column.
    pub fn from_yaml_indexed(text: &str) -> Result<(Document, FileIndex), Problems> {
        Document::read(text).map_err(|r| r.problems)
    }

    /// [`Document::from_yaml_indexed`], saying whether the problems are all between resources.
    pub fn read(text: &str) -> Result<(Document, FileIndex), Refused> {
        let value: Value = serde_saphyr::from_str(text).map_err(|e| {
            let mut p = Problems::new();
            p.push("", format!("not valid YAML: {}", yaml_message(&e)));
            if let Some(at) = e.location() {
                p.0[0].line = u32::try_from(at.line()).ok();
                p.0[0].column = u32::try_from(at.column()).ok();
            }
            Refused::alone(p)
        })?;
        let index = FileIndex {
            map: Some(SourceMap::from_yaml(text)),
            places: HashMap::new(),
        };
        Document::parse(value, index)
    }

    /// The document as a JSON tree in file layout, empty values pruned.
    pub fn to_value(&self) -> Value {
        let mut out = Map::new();
        out.insert("apiVersion".into(), Value::String(API_VERSION.into()));
        for kind in Kind::ALL {
            let items: Vec<Value> = self
                .resources
                .iter()
                .filter(|r| r.kind() == kind)
                .map(Resource::to_json)
                .collect();
            if kind == Kind::GlobalPolicy {
                if let Some(v) = items.into_iter().next() {
                    out.insert("policies".into(), v["policies"].clone());
                }
            } else if !items.is_empty() {
                out.insert(kind.plural().into(), Value::Array(items));
            }
        }
        let mut value = Value::Object(out);
        prune(&mut value);
        value
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(&self.to_value()).expect("a JSON tree always serialises to YAML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
apiVersion: outpost/v1
named-values:
  - {name: env, value: prod}
backends:
  - {name: echo, url: "http://127.0.0.1:9000"}
apis:
  - name: orders
    path: orders
    backend: echo
    operations:
      - {name: get-order, method: GET, url-template: "/orders/{id}"}
    policies:
      inbound:
        - base
        - set-header: {name: X-Env, value: "{{env}}"}
products:
  - {name: starter, apis: [orders]}
subscriptions:
  - name: alice
    scope: {product: starter}
    primary-key: "0123456789abcdef0123456789abcdef"
gateways:
  - {name: site-a, location: eu, apis: [orders]}
policies:
  inbound:
    - rate-limit-by-key: {calls: 10, renewal-period: 60, counter-key: "{request.ip}"}
"#;

    #[test]
    fn round_trip_is_stable() {
        let doc = Document::from_yaml(SAMPLE).unwrap();
        assert_eq!(doc.resources.len(), 7);
        let yaml = doc.to_yaml();
        let again = Document::from_yaml(&yaml).unwrap();
        assert_eq!(
            doc, again,
            "export then parse gives the same document:\n{yaml}"
        );
    }

    #[test]
    fn sections_are_recorded_even_when_empty() {
        let doc = Document::from_yaml(
            "apiVersion: outpost/v1\nsubscriptions: []\nbackends:\n  - {name: b, url: \"http://x\"}\n",
        )
        .unwrap();
        assert_eq!(
            doc.sections,
            BTreeSet::from([Kind::Backend, Kind::Subscription])
        );
    }

    #[test]
    fn masked_secrets_are_named() {
        let doc = Document::from_yaml(&format!(
            "apiVersion: outpost/v1\nnamed-values:\n  - {{name: a, value: \"{SECRET_MASK}\", secret: true}}\n  - {{name: b, value: \"{SECRET_MASK}\", secret: true}}\n  - {{name: c, value: real, secret: true}}\n"
        ))
        .unwrap();
        let text = doc.masked_secrets().to_string();
        assert!(
            text.contains(
                "named-values/a: value is the export mask '********'; export with --include-secrets"
            ),
            "{text}"
        );
        assert!(text.contains("named-values/b"), "{text}");
        assert!(!text.contains("named-values/c"), "{text}");
    }

    #[test]
    fn every_problem_is_listed_with_its_location() {
        let bad = r#"
apiVersion: outpost/v1
apis:
  - name: orders
    path: /orders
    backend: missing
    operations:
      - {name: a, method: FETCH, url-template: "orders"}
    policies:
      inbound:
        - no-such-policy: {}
        - rate-limit: {calls: 0, renewal-period: 60}
  - name: Bad Name
    backend: x
"#;
        let problems = Document::from_yaml(bad).unwrap_err();
        let text = problems.to_string();
        assert!(
            text.contains("apis[0] (orders).policies.inbound[0]"),
            "{text}"
        );
        assert!(text.contains("no-such-policy"), "{text}");
        // Parse problems of one resource are reported together; the second resource's too.
        assert!(text.contains("apis[1] (Bad Name).name"), "{text}");
        // A policy that does not parse does not hide the same resource's other problems, nor
        // the references of the others.
        for needle in [
            "apis[0] (orders).path",
            "FETCH",
            "must start with '/'",
            "apis[1] (Bad Name).backend: unknown backend 'x'",
        ] {
            assert!(text.contains(needle), "missing {needle}: {text}");
        }
    }

    #[test]
    fn a_local_budget_is_at_least_one() {
        let doc = |budget: &str| {
            format!(
                "apiVersion: outpost/v1\nbackends:\n  - {{name: b, url: \"http://127.0.0.1:9000\"}}\n\
                 apis:\n  - name: one\n    path: one\n    backend: b\n    operations:\n\
                 \x20     - {{name: a, method: GET, url-template: /a}}\n    policies:\n      inbound:\n\
                 \x20       - rate-limit: {{calls: 10, renewal-period: 60, local-budget: {budget}}}\n"
            )
        };
        assert!(Document::from_yaml(&doc("5")).is_ok());
        let text = Document::from_yaml(&doc("0")).unwrap_err().to_string();
        assert!(
            text.contains("local-budget") && text.contains("out of range"),
            "{text}"
        );
    }

    /// One form for every layer: the file path with the resource's name, and the line and
    /// column the field starts at.
    #[test]
    fn problems_of_every_layer_carry_their_line_and_column() {
        let bad = "\
apiVersion: outpost/v1
backends:
  - {name: b, url: \"http://127.0.0.1:9000\"}
apis:
  - name: one
    path: one
    backend: b
    operations:
      - {name: a, method: GET, url-template: \"/a\", timeout: fast}
  - name: two
    path: two
    backend: nowhere
    operations:
      - {name: a, method: GET, url-template: \"a/{id\"}
products:
  - {name: p, apis: [one, three]}
";
        let problems = Document::from_yaml(bad).unwrap_err();
        let at = |needle: &str| {
            problems
                .0
                .iter()
                .find(|p| p.path == needle)
                .map(|p| (p.line, p.column))
                .unwrap_or_else(|| panic!("no {needle} in {problems:#?}"))
        };
        assert_eq!(
            at("apis[0] (one).operations[0].timeout"),
            (Some(9), Some(52))
        );
        assert_eq!(at("apis[1] (two).backend"), (Some(12), Some(5)));
        assert_eq!(
            at("apis[1] (two).operations[0].url-template"),
            (Some(14), Some(32))
        );
        assert_eq!(at("products[0] (p).apis[1]"), (Some(16), Some(27)));
        assert_eq!(problems.len(), 4, "{problems:#?}");
        // A resource that did not parse still exists for the references to it.
        let p = Document::from_yaml(
            "apiVersion: outpost/v1\nbackends:\n  - {name: b, url: [5]}\napis:\n  - {name: a, path: a, backend: b}\n",
        )
        .unwrap_err();
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_eq!(p.0[0].path, "backends[0] (b).url");
        assert_eq!(p.0[0].line, Some(3));
    }

    /// serde stops at a resource's first type error; the file's problems do not.
    #[test]
    fn every_type_error_of_a_resource_and_of_a_policy_step_is_listed() {
        let bad = "\
apiVersion: outpost/v1
backends:
  - name: b
    url: 5
    connect-timeout-ms: soon
    tls: {verify: maybe, pin: x}
apis:
  - name: a
    path: a
    backend: b
    operations:
      - {name: o, method: 7, url-template: /x}
      - {name: p, method: GET, url-template: /y, mock: true}
    policies:
      inbound:
        - rate-limit: {calls: many, renewal-period: -1}
";
        let problems = Document::from_yaml(bad).unwrap_err();
        let got: Vec<(&str, Option<u32>, Option<u32>)> = problems
            .0
            .iter()
            .map(|p| (p.path.as_str(), p.line, p.column))
            .collect();
        assert_eq!(
            got,
            [
                ("backends[0] (b).url", Some(4), Some(5)),
                ("backends[0] (b).connect-timeout-ms", Some(5), Some(5)),
                ("backends[0] (b).tls.verify", Some(6), Some(11)),
                ("backends[0] (b).tls.pin", Some(6), Some(26)),
                ("apis[0] (a).operations[0].method", Some(12), Some(19)),
                ("apis[0] (a).operations[1].mock", Some(13), Some(50)),
                (
                    "apis[0] (a).policies.inbound[0].rate-limit.calls",
                    Some(16),
                    Some(24)
                ),
                (
                    "apis[0] (a).policies.inbound[0].rate-limit.renewal-period",
                    Some(16),
                    Some(37)
                ),
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn later_problems_by_key_are_put_in_the_file() {
        let text = "apiVersion: outpost/v1\nnamed-values:\n  - {name: a.b, value: x}\n  - {name: a, value: v}\n";
        let (_, index) = Document::from_yaml_indexed(text).unwrap();
        let mut later = Problems::new();
        later.push("named-values/a.b.value", "bad");
        later.push("named-values/a", "bad");
        later.push("apis/elsewhere.backend", "bad");
        let located = index.locate(later);
        let got: Vec<_> = located
            .0
            .iter()
            .map(|p| (p.path.as_str(), p.line, p.column))
            .collect();
        assert_eq!(
            got,
            [
                ("named-values[0] (a.b).value", Some(3), Some(17)),
                ("named-values[1] (a)", Some(4), Some(5)),
                ("apis/elsewhere.backend", None, None),
            ]
        );
    }

    #[test]
    fn yaml_syntax_errors_have_a_one_line_message_and_a_position() {
        let p = Document::from_yaml("apiVersion: outpost/v1\napis: [unclosed\n").unwrap_err();
        assert_eq!(p.len(), 1);
        assert!(!p.0[0].message.contains('\n'), "{p:?}");
        assert!(p.0[0].message.starts_with("not valid YAML: "), "{p:?}");
        assert!(p.0[0].line.is_some() && p.0[0].column.is_some(), "{p:?}");
        assert!(
            p.render_in("f.yaml").starts_with("f.yaml:2:"),
            "{}",
            p.render_in("f.yaml")
        );
    }
}
