//! `outpost import-openapi --validate`: the validation policies of one imported operation, from
//! its OpenAPI 3 description (docs/policies.md, "Schemas from an imported OpenAPI document").
//!
//! - `validate-parameters`: the operation's (and its path item's) `path` and `query` parameters,
//!   their `required`, and what their schema says that the policy can check (`type`, `enum`,
//!   `pattern`, `minimum`, `maximum`; an array's items);
//! - `validate-headers`: its `header` parameters (`required`, `enum` or `pattern`, and a pattern
//!   for integers, numbers and booleans);
//! - `validate-content`: the request body's JSON schema per JSON media type, made
//!   self-contained: every `#/components/schemas/…` it reaches is copied under `$defs` and
//!   referred to there (so recursive schemas work), OpenAPI 3.0's dialect (`nullable`, boolean
//!   `exclusiveMinimum`/`exclusiveMaximum`) rewritten as JSON Schema 2020-12, and `readOnly`
//!   properties no longer required (a client does not send them).
//!
//! What cannot be checked is said in a warning, never silently dropped.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// `#/components/…` of `spec`, following `$ref`s of `$ref`s (at most 16).
fn resolve<'a>(spec: &'a Value, mut v: &'a Value) -> Result<&'a Value, String> {
    for _ in 0..16 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return Ok(v);
        };
        let pointer = r
            .strip_prefix('#')
            .ok_or_else(|| format!("'{r}' is not a reference inside the document"))?;
        v = spec
            .pointer(pointer)
            .ok_or_else(|| format!("'{r}' points at nothing"))?;
    }
    Err("a $ref chain longer than 16".into())
}

/// The policies for one operation (`op` of `path_item`); `template_params` are the parameter
/// names of the converted URL template (sanitised as `param_name` does), `rename` maps an
/// OpenAPI path parameter name to its template name.
pub fn validation_policies(
    spec: &Value,
    path_item: &Value,
    op: &Value,
    label: &str,
    rename: &dyn Fn(&str) -> String,
    template_params: &[String],
    warnings: &mut Vec<String>,
) -> Vec<Value> {
    let mut policies = Vec::new();
    let v30 = spec
        .get("openapi")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("3.0"));

    // Parameters: the path item's, overridden by the operation's of the same name and place.
    let mut params: Vec<(String, String, Value)> = Vec::new();
    for list in [path_item.get("parameters"), op.get("parameters")] {
        for p in list.and_then(Value::as_array).into_iter().flatten() {
            let p = match resolve(spec, p) {
                Ok(p) => p,
                Err(e) => {
                    warnings.push(format!("{label}: a parameter is skipped: {e}"));
                    continue;
                }
            };
            let (Some(name), Some(place)) = (
                p.get("name").and_then(Value::as_str),
                p.get("in").and_then(Value::as_str),
            ) else {
                continue;
            };
            params.retain(|(n, i, _)| !(n == name && i == place));
            params.push((name.to_owned(), place.to_owned(), p.clone()));
        }
    }
    let mut query = Map::new();
    let mut path = Map::new();
    let mut headers = Vec::new();
    for (name, place, p) in &params {
        let required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
        let schema = match p.get("schema").map(|s| resolve(spec, s)) {
            Some(Ok(s)) => s.clone(),
            Some(Err(e)) => {
                warnings.push(format!(
                    "{label}: parameter '{name}': only its presence is checked: {e}"
                ));
                json!({})
            }
            None => json!({}),
        };
        match place.as_str() {
            "query" | "path" => {
                let mut rule = parameter_rule(spec, &schema, label, name, warnings);
                if place == "query" {
                    if required {
                        rule.insert("required".into(), json!(true));
                    }
                    query.insert(name.clone(), Value::Object(rule));
                } else {
                    let renamed = rename(name);
                    if template_params.contains(&renamed) {
                        path.insert(renamed, Value::Object(rule));
                    } else {
                        warnings.push(format!(
                            "{label}: path parameter '{name}' is not a whole segment of the URL template; not checked"
                        ));
                    }
                }
            }
            "header" => {
                // OpenAPI: these three are described elsewhere, never as parameters.
                if ["accept", "content-type", "authorization"]
                    .contains(&name.to_ascii_lowercase().as_str())
                {
                    continue;
                }
                headers.push(header_rule(spec, name, required, &schema));
            }
            other => warnings.push(format!(
                "{label}: {other} parameter '{name}' is not checked (path, query and header are)"
            )),
        }
    }
    if !query.is_empty() || !path.is_empty() {
        let mut s = Map::new();
        if !query.is_empty() {
            s.insert("query".into(), Value::Object(query));
        }
        if !path.is_empty() {
            s.insert("path".into(), Value::Object(path));
        }
        policies.push(json!({"validate-parameters": s}));
    }
    if !headers.is_empty() {
        policies.push(json!({"validate-headers": {"headers": headers}}));
    }

    // The request body.
    if let Some(body) = op.get("requestBody") {
        match resolve(spec, body) {
            Err(e) => warnings.push(format!("{label}: the request body is not checked: {e}")),
            Ok(body) => {
                let mut content = Map::new();
                for (media, m) in body
                    .get("content")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let lower = media.to_ascii_lowercase();
                    let json_type = lower == "application/json"
                        || (lower.starts_with("application/") && lower.ends_with("+json"));
                    if !json_type {
                        warnings.push(format!(
                            "{label}: request bodies of type '{media}' are not checked (JSON ones are)"
                        ));
                        continue;
                    }
                    let Some(schema) = m.get("schema") else {
                        continue;
                    };
                    match self_contained(spec, schema, v30) {
                        Ok(s) => {
                            content.insert(lower, json!({"schema": s}));
                        }
                        Err(e) => warnings.push(format!(
                            "{label}: the '{media}' request body is not checked: {e}"
                        )),
                    }
                }
                if !content.is_empty() {
                    policies.push(json!({"validate-content": {"content": content}}));
                }
            }
        }
    }
    policies
}

/// What `validate-parameters` can check of a parameter's schema.
fn parameter_rule(
    spec: &Value,
    schema: &Value,
    label: &str,
    name: &str,
    warnings: &mut Vec<String>,
) -> Map<String, Value> {
    let mut schema = schema;
    if type_of(schema).as_deref() == Some("array") {
        match schema.get("items").map(|i| resolve(spec, i)) {
            Some(Ok(items)) => schema = items,
            _ => return Map::new(),
        }
    }
    let mut rule = Map::new();
    let kind = type_of(schema);
    match kind.as_deref() {
        Some(t @ ("integer" | "number" | "boolean" | "string")) => {
            rule.insert("type".into(), json!(t));
        }
        Some(other) => warnings.push(format!(
            "{label}: parameter '{name}' of type {other}: only its presence is checked"
        )),
        None => {}
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        rule.insert(
            "values".into(),
            Value::Array(values.iter().map(text).collect()),
        );
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        // OpenAPI patterns are unanchored (ECMA); the policy matches whole values.
        rule.insert("pattern".into(), json!(format!(".*(?:{p}).*")));
    }
    if matches!(kind.as_deref(), Some("integer" | "number")) {
        for bound in ["minimum", "maximum"] {
            if let Some(b) = schema.get(bound).and_then(Value::as_f64) {
                rule.insert(bound.into(), json!(b));
            }
        }
    }
    rule
}

/// `validate-headers`' entry for a header parameter.
fn header_rule(spec: &Value, name: &str, required: bool, schema: &Value) -> Value {
    let schema = resolve(spec, schema).unwrap_or(schema);
    let mut h = Map::new();
    h.insert("name".into(), json!(name));
    h.insert("required".into(), json!(required));
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        h.insert(
            "values".into(),
            Value::Array(values.iter().map(text).collect()),
        );
    } else if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        h.insert("pattern".into(), json!(format!(".*(?:{p}).*")));
    } else {
        let pattern = match type_of(schema).as_deref() {
            Some("integer") => Some("[+-]?[0-9]+"),
            Some("number") => Some("[+-]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][+-]?[0-9]+)?"),
            Some("boolean") => Some("true|false"),
            _ => None,
        };
        if let Some(p) = pattern {
            h.insert("pattern".into(), json!(p));
        }
    }
    Value::Object(h)
}

/// A schema's `type`: the first that is not `null` of a list (3.1).
fn type_of(schema: &Value) -> Option<String> {
    match schema.get("type")? {
        Value::String(t) => Some(t.clone()),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .map(str::to_owned),
        _ => None,
    }
}

fn text(v: &Value) -> Value {
    match v {
        Value::String(s) => json!(s),
        other => json!(other.to_string()),
    }
}

const COMPONENT: &str = "#/components/schemas/";

/// `schema` with the component schemas it reaches under `$defs`, in JSON Schema 2020-12.
pub fn self_contained(spec: &Value, schema: &Value, v30: bool) -> Result<Value, String> {
    let mut defs: BTreeMap<String, Value> = BTreeMap::new();
    let mut pending = Vec::new();
    let mut root = rewrite(schema, v30, &mut pending)?;
    while let Some(name) = pending.pop() {
        if defs.contains_key(&name) {
            continue;
        }
        let component = spec
            .pointer(&format!("/components/schemas/{}", pointer_escape(&name)))
            .ok_or_else(|| format!("'{COMPONENT}{name}' points at nothing"))?;
        defs.insert(name.clone(), Value::Null);
        let converted = rewrite(component, v30, &mut pending)?;
        defs.insert(name, converted);
    }
    // (`true`/`false` have no room for definitions, and need none.)
    if !defs.is_empty()
        && let Value::Object(o) = &mut root
    {
        o.insert("$defs".into(), Value::Object(defs.into_iter().collect()));
    }
    Ok(root)
}

fn pointer_escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// One schema level by level: `$ref`s to components redirected to `$defs` (their names queued
/// in `pending`), other references refused, the 3.0 dialect converted, `readOnly` properties
/// dropped from `required`.
fn rewrite(v: &Value, v30: bool, pending: &mut Vec<String>) -> Result<Value, String> {
    let Value::Object(o) = v else {
        return Ok(match v {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| rewrite(i, v30, pending))
                    .collect::<Result<_, _>>()?,
            ),
            other => other.clone(),
        });
    };
    let mut out = Map::new();
    for (k, val) in o {
        match (k.as_str(), val) {
            ("$ref", Value::String(r)) => {
                let name = r
                    .strip_prefix(COMPONENT)
                    .ok_or_else(|| format!("the reference '{r}' is not to {COMPONENT}…"))?;
                let name = name.replace("~1", "/").replace("~0", "~");
                out.insert(
                    "$ref".into(),
                    json!(format!("#/$defs/{}", pointer_escape(&name))),
                );
                pending.push(name);
            }
            // Values that are data, not schemas.
            ("enum" | "const" | "default" | "example" | "examples" | "required", _) => {
                out.insert(k.clone(), val.clone());
            }
            // Maps from names to schemas: the names are not keywords.
            ("properties" | "patternProperties" | "$defs" | "definitions", Value::Object(m)) => {
                let mut mapped = Map::new();
                for (name, s) in m {
                    mapped.insert(name.clone(), rewrite(s, v30, pending)?);
                }
                out.insert(k.clone(), Value::Object(mapped));
            }
            _ => {
                out.insert(k.clone(), rewrite(val, v30, pending)?);
            }
        }
    }
    if v30 {
        if out.remove("nullable") == Some(Value::Bool(true)) {
            match out.get_mut("type") {
                Some(Value::String(t)) => {
                    let t = t.clone();
                    out.insert("type".into(), json!([t, "null"]));
                }
                Some(Value::Array(ts)) if !ts.contains(&json!("null")) => ts.push(json!("null")),
                _ => {}
            }
            if let Some(Value::Array(values)) = out.get_mut("enum")
                && !values.contains(&Value::Null)
            {
                values.push(Value::Null);
            }
        }
        for (flag, bound) in [
            ("exclusiveMinimum", "minimum"),
            ("exclusiveMaximum", "maximum"),
        ] {
            match out.get(flag) {
                Some(Value::Bool(true)) => {
                    if let Some(b) = out.remove(bound) {
                        out.insert(flag.into(), b);
                    } else {
                        out.remove(flag);
                    }
                }
                Some(Value::Bool(false)) => {
                    out.remove(flag);
                }
                _ => {}
            }
        }
    }
    // A client does not send read-only properties: they are required only in responses.
    let read_only: Vec<String> = out
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .filter(|(_, s)| s.get("readOnly") == Some(&Value::Bool(true)))
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_default();
    if !read_only.is_empty()
        && let Some(Value::Array(required)) = out.get_mut("required")
    {
        required.retain(|r| !r.as_str().is_some_and(|r| read_only.iter().any(|n| n == r)));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_schemas_are_embedded_and_the_30_dialect_converted() {
        let spec = json!({"openapi": "3.0.3", "components": {"schemas": {
            "Pet": {"type": "object", "required": ["id", "name"], "properties": {
                "id": {"type": "integer", "readOnly": true},
                "name": {"type": "string", "nullable": true},
                "age": {"type": "integer", "minimum": 0, "exclusiveMinimum": true},
                "parent": {"$ref": "#/components/schemas/Pet"},
                "tag": {"$ref": "#/components/schemas/Tag"}
            }},
            "Tag": {"type": "string", "enum": ["a", "b"]}
        }}});
        let s = self_contained(&spec, &json!({"$ref": "#/components/schemas/Pet"}), true).unwrap();
        assert_eq!(s["$ref"], "#/$defs/Pet");
        let pet = &s["$defs"]["Pet"];
        assert_eq!(pet["required"], json!(["name"]));
        assert_eq!(pet["properties"]["name"]["type"], json!(["string", "null"]));
        assert_eq!(pet["properties"]["age"]["exclusiveMinimum"], 0);
        assert!(pet["properties"]["age"].get("minimum").is_none());
        assert_eq!(pet["properties"]["parent"]["$ref"], "#/$defs/Pet");
        assert_eq!(s["$defs"]["Tag"]["enum"], json!(["a", "b"]));
        let err = self_contained(&spec, &json!({"$ref": "other.yaml#/X"}), true).unwrap_err();
        assert!(err.contains("not to #/components/schemas/"), "{err}");
        let err =
            self_contained(&spec, &json!({"$ref": "#/components/schemas/Nope"}), true).unwrap_err();
        assert!(err.contains("points at nothing"), "{err}");
    }
}
