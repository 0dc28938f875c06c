//! What policy expressions see of the exchange (`request`, `response`, `context`, `jwt`), built
//! per evaluation for only the fields the expression reads, and the steps made of expressions:
//! `choose` and `set-variable`. The engine, its limits and its checks are in
//! `outpost_actors::expr`.

use std::sync::Arc;

use actix_web::http::header::HeaderMap;
use outpost_actors::expr::{self, Expression, Needs, Value, Vars, map, text};
use outpost_actors::route_table::steps::{ChooseStep, SetVariableStep, Text};

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow, Phase, Runtime, percent_decode};

/// A `value` or `value-expression` for this request.
pub(super) fn render(t: &Text, ex: &Exchange, what: &str) -> Result<String, GatewayError> {
    match t {
        Text::Template(t) => Ok(ex.render(t)),
        Text::Expression(e) => e
            .eval_text(vars(e, ex))
            .map_err(|err| GatewayError::expression(what, &err)),
    }
}

pub(super) async fn choose(
    s: &ChooseStep,
    phase: Phase,
    ex: &mut Exchange,
    rt: &Runtime,
) -> Result<Flow, GatewayError> {
    let mut chosen = &s.otherwise;
    for (condition, steps) in &s.branches {
        let yes = condition
            .eval_bool(vars(condition, ex))
            .map_err(|err| GatewayError::expression("choose", &err))?;
        if yes {
            chosen = steps;
            break;
        }
    }
    for step in chosen.iter() {
        // Boxed: a choose may hold a choose, so the future is recursive.
        match Box::pin(super::run_step(step, phase, ex, rt)).await? {
            Flow::Continue => {}
            other => return Ok(other),
        }
    }
    Ok(Flow::Continue)
}

pub(super) fn set_variable(s: &SetVariableStep, ex: &mut Exchange) -> Result<Flow, GatewayError> {
    let value = render(&s.value, ex, "set-variable")?;
    ex.variables.insert(s.name.clone(), value);
    Ok(Flow::Continue)
}

pub(super) fn vars(e: &Expression, ex: &Exchange) -> Vars {
    let needs = e.needs();
    Vars {
        request: (needs.request != 0).then(|| request(needs, ex)),
        response: (needs.response != 0).then(|| response(needs, ex)),
        context: (needs.context != 0).then(|| context(needs, ex)),
        jwt: needs.jwt.then(|| match &ex.jwt_claims {
            Some(claims) => json_map(claims, 0),
            None => map::<_, String>([]),
        }),
    }
}

fn request(needs: &Needs, ex: &Exchange) -> Value {
    let mut fields: Vec<(&str, Value)> = Vec::new();
    let mut add = |name: &'static str, value: &dyn Fn() -> Option<Value>| {
        if needs.request(name)
            && let Some(v) = value()
        {
            fields.push((name, v));
        }
    };
    add("method", &|| Some(text(ex.method.as_str())));
    add("path", &|| Some(text(ex.path.as_str())));
    add("host", &|| Some(text(ex.host.as_str())));
    add("headers", &|| Some(headers(&ex.request_headers)));
    add("query", &|| {
        let mut seen = std::collections::HashSet::new();
        Some(map(ex.query.iter().filter_map(|(k, v)| {
            let k = percent_decode(k);
            // The first occurrence wins, as in `{request.query.NAME}`.
            seen.insert(k.clone()).then(|| (k, text(percent_decode(v))))
        })))
    });
    add("ip", &|| {
        Some(text(
            ex.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        ))
    });
    add("id", &|| Some(text(ex.request_id.as_str())));
    add("params", &|| {
        Some(map(ex
            .params
            .iter()
            .map(|(k, v)| (k.to_string(), text(v.as_str())))))
    });
    add("certificate", &|| {
        ex.client_certificate.as_ref().map(|c| {
            map([
                ("subject", text(c.subject.as_str())),
                ("issuer", text(c.issuer.as_str())),
                ("thumbprint", text(c.thumbprint.as_str())),
                ("serial_number", text(c.serial_number.as_str())),
                ("not_before", text(c.not_before_text.as_str())),
                ("not_after", text(c.not_after_text.as_str())),
            ])
        })
    });
    map(fields)
}

fn response(needs: &Needs, ex: &Exchange) -> Value {
    let Some(r) = &ex.response else {
        return map::<_, String>([]);
    };
    let mut fields: Vec<(&str, Value)> = Vec::new();
    if needs.response("status") {
        fields.push(("status", Value::Int(i64::from(r.status.as_u16()))));
    }
    if needs.response("headers") {
        fields.push(("headers", headers(&r.headers)));
    }
    map(fields)
}

fn context(needs: &Needs, ex: &Exchange) -> Value {
    let mut fields: Vec<(&str, Value)> = Vec::new();
    let mut add = |name: &'static str, value: &dyn Fn() -> Value| {
        if needs.context(name) {
            fields.push((name, value()));
        }
    };
    add("api", &|| text(&*ex.api.name));
    add("operation", &|| text(&*ex.operation().name));
    add("product", &|| text(ex.product.as_deref().unwrap_or("")));
    add("subscription", &|| {
        text(ex.subscription.as_ref().map_or("", |s| &s.name))
    });
    add("gateway", &|| text(&*ex.gateway_name));
    add("variables", &|| {
        map(ex
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), text(v.as_str()))))
    });
    add("responses", &|| {
        map(ex.calls.iter().map(|(name, a)| {
            (
                name.clone(),
                map([
                    ("status", Value::Int(i64::from(a.status))),
                    ("headers", headers(&a.headers)),
                    ("body", text(String::from_utf8_lossy(&a.body).into_owned())),
                    ("json", a.json.as_ref().map_or(Value::Null, |j| json(j, 0))),
                    ("error", text(a.error.as_str())),
                ]),
            )
        }))
    });
    map(fields)
}

/// Lowercase names; several values of one name joined with `, ` (as HTTP allows); values that
/// are not text left out.
fn headers(h: &HeaderMap) -> Value {
    // `HeaderMap::iter` yields the values of one name one after the other, so repeated headers
    // are joined in a list, not through a second map (this runs for every evaluation that reads
    // `request.headers`).
    let mut joined: Vec<(&str, String)> = Vec::with_capacity(h.len());
    for (name, value) in h.iter() {
        let Ok(value) = value.to_str() else { continue };
        match joined.last_mut() {
            Some((last, v)) if *last == name.as_str() => {
                v.push_str(", ");
                v.push_str(value);
            }
            _ => joined.push((name.as_str(), value.to_owned())),
        }
    }
    map(joined.into_iter().map(|(k, v)| (k, text(v))))
}

/// Claims as CEL values; nesting past a bound becomes `null` (a token is small, but its JSON
/// may nest deeply, and this conversion recurses).
fn json_map(m: &serde_json::Map<String, serde_json::Value>, depth: usize) -> Value {
    map(m.iter().map(|(k, v)| (k.clone(), json(v, depth + 1))))
}

fn json(v: &serde_json::Value, depth: usize) -> Value {
    use serde_json::Value as J;
    if depth > expr::MAX_DEPTH {
        return Value::Null;
    }
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_u64().map(Value::UInt))
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(0.0))),
        J::String(s) => text(s.as_str()),
        J::Array(a) => Value::List(Arc::new(a.iter().map(|x| json(x, depth + 1)).collect())),
        J::Object(o) => json_map(o, depth),
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};
    use outpost_actors::expr::Key;

    use super::*;

    #[test]
    fn repeated_headers_are_one_entry_with_the_values_joined() {
        let mut h = HeaderMap::new();
        h.append(
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("1"),
        );
        h.append(
            HeaderName::from_static("x-b"),
            HeaderValue::from_static("b"),
        );
        h.append(
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("2"),
        );
        h.append(
            HeaderName::from_static("x-bin"),
            HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        let Value::Map(m) = headers(&h) else {
            panic!("a map")
        };
        let get = |k: &str| m.map.get(&Key::String(Arc::new(k.into()))).cloned();
        assert_eq!(m.map.len(), 2, "{m:?}");
        assert_eq!(get("x-a"), Some(text("1, 2")));
        assert_eq!(get("x-b"), Some(text("b")));
        // A value that is not text is left out rather than guessed at.
        assert_eq!(get("x-bin"), None);
    }
}
