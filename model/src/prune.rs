//! Removes empty values from serialised JSON for human-facing output.
//!
//! Model types always serialise every field (bincode needs that, see the crate docs); the YAML
//! export and the management API's answers drop what parsing would fill back in anyway — nulls,
//! empty lists, empty policy documents and empty optional descriptions — so that what operators
//! read looks like what they wrote. Empty strings elsewhere are kept: an empty header value is
//! meaningful.

use serde_json::Value;

/// `url` is empty on a backend pool, which lists `members` instead.
const OPTIONAL_TEXT: &[&str] = &["display-name", "description", "location", "url"];
/// Flags whose default is `false`: written only when set.
const OPTIONAL_FLAGS: &[&str] = &["allow-encoded-slashes"];
/// Flags whose default is `true`: written only when cleared.
const DEFAULT_ON_FLAGS: &[&str] = &["access-log"];
/// Settings written only when they are not their default.
const DEFAULT_TEXT: &[(&str, &str)] = &[("client-certificate", "none")];

pub fn prune(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for v in map.values_mut() {
                prune(v);
            }
            map.retain(|k, v| match v {
                Value::Null => false,
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !(k == "policies" && o.is_empty()),
                Value::String(s) => {
                    let optional = s.is_empty() && OPTIONAL_TEXT.contains(&k.as_str());
                    !(optional || DEFAULT_TEXT.contains(&(k.as_str(), s.as_str())))
                }
                Value::Bool(false) => !OPTIONAL_FLAGS.contains(&k.as_str()),
                Value::Bool(true) => !DEFAULT_ON_FLAGS.contains(&k.as_str()),
                _ => true,
            });
        }
        Value::Array(items) => items.iter_mut().for_each(prune),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn drops_only_what_parsing_restores() {
        let mut v = serde_json::json!({
            "a": null, "b": [], "policies": {"inbound": []}, "display-name": "",
            "value": "", "e": false, "f": 0, "g": [{"cache-lookup": {}}],
            "allow-encoded-slashes": false, "access-log": true,
            "i": [{"access-log": false}],
            "h": [{"client-certificate": "none"}, {"client-certificate": "required"}]
        });
        super::prune(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"value": "", "e": false, "f": 0, "g": [{"cache-lookup": {}}],
                "i": [{"access-log": false}],
                "h": [{}, {"client-certificate": "required"}]})
        );
    }
}
