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
//! bad entry does not hide the problems of the others; every problem carries its location
//! (`apis[2] (orders).operations[0].method`).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::prune::prune;
use crate::resources::{GLOBAL_POLICY_NAME, GlobalPolicy, Kind, Resource, SECRET_MASK};
use crate::validate::{
    Problems, check_config, check_resource, parse_policy_document, parse_resource,
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

impl Document {
    /// Parses and validates a document given as a JSON tree (from YAML or JSON).
    pub fn from_value(value: Value) -> Result<Document, Problems> {
        let mut problems = Problems::new();
        let Value::Object(mut map) = value else {
            problems.push(
                "",
                "the file must be a map with apiVersion and resource lists",
            );
            return Err(problems);
        };
        match map.remove("apiVersion") {
            Some(Value::String(v)) if v == API_VERSION => {}
            Some(other) => problems.push(
                "apiVersion",
                format!("unsupported apiVersion {other}; expected '{API_VERSION}'"),
            ),
            None => problems.push("apiVersion", format!("missing; expected '{API_VERSION}'")),
        }
        let mut resources = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut sections = BTreeSet::new();
        if let Some(doc) = map.remove("policies") {
            sections.insert(Kind::GlobalPolicy);
            match parse_policy_document(doc) {
                Ok(policies) => resources.push(Resource::GlobalPolicy(GlobalPolicy {
                    name: GLOBAL_POLICY_NAME.to_owned(),
                    policies,
                })),
                Err(p) => problems.extend(p.prefixed("policies")),
            }
        }
        for (section, items) in map {
            let Some(kind) = Kind::from_plural(&section).filter(|k| *k != Kind::GlobalPolicy)
            else {
                problems.push(
                    section.as_str(),
                    "unknown section; expected named-values, backends, apis, products, subscriptions, gateways or policies",
                );
                continue;
            };
            sections.insert(kind);
            let items = match items {
                Value::Array(a) => a,
                Value::Null => continue,
                _ => {
                    problems.push(section.as_str(), "must be a list");
                    continue;
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                let name = item
                    .get("name")
                    .and_then(Value::as_str)
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                let at = format!("{section}[{i}]{name}");
                match parse_resource(kind, item) {
                    Ok(r) => {
                        let p = check_resource(&r);
                        if !seen.insert(r.key()) {
                            problems.push(at.as_str(), format!("duplicate {kind} '{}'", r.name()));
                        }
                        if p.is_empty() {
                            resources.push(r);
                        } else {
                            problems.extend(p.prefixed(&at));
                        }
                    }
                    Err(p) => problems.extend(p.prefixed(&at)),
                }
            }
        }
        if problems.is_empty() {
            problems.extend(check_config(&resources));
        }
        resources.sort_by_key(Resource::key);
        problems
            .into_result()
            .map(|()| Document::with_sections(resources, sections))
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
        let value: Value = serde_saphyr::from_str(text).map_err(|e| {
            let mut p = Problems::new();
            p.push("", format!("not valid YAML: {e}"));
            p
        })?;
        Document::from_value(value)
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
        let problems2 =
            Document::from_yaml(&bad.replace("        - no-such-policy: {}\n", "")).unwrap_err();
        let text2 = problems2.to_string();
        for needle in ["path", "FETCH", "must start with '/'", "calls"] {
            assert!(text2.contains(needle), "missing {needle}: {text2}");
        }
    }
}
