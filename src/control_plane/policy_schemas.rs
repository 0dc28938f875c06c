//! The JSON schema of every policy's settings, for the OpenAPI document ([`super::openapi`]).
//!
//! A policy step is `base` or a one-key map, the policy's name to its settings. The names each
//! section allows come from the model's catalogue ([`POLICIES`]); the settings of each policy are
//! described here with what the server checks of them: the fields and their types, enums,
//! defaults and required fields of the model's serde types (a unit test compares them field by
//! field), and the rules `check_resource` applies (ranges, templates, status lists, header
//! names, "one of the two"). A schema-valid policy is accepted, or refused with a 409 for what
//! no schema can know in advance (a named value or backend that does not exist).
//!
//! Where a rule cannot be written as JSON Schema the schema describes less than the server
//! accepts, never more: status ranges (`500-504`: a pattern cannot compare two numbers) and IPv6
//! addresses with a dotted IPv4 tail are accepted but not described.

use outpost_model::policy::{POLICIES, Section};
use serde_json::{Value, json};

/// The characters of Rust's `char::is_whitespace` (Unicode `White_Space`), which the server
/// trims from names in templates, status lists and addresses and refuses in paths and URLs, to
/// put in a character class. Written out: `\s` differs between the regex dialects that read
/// this document (ECMA leaves out U+0085, Python adds U+001C-U+001F, Rust's is this one).
pub const WS_CHARS: &str =
    "\\t\\n\\x0B\\f\\r \\x85\\xA0\u{1680}\u{2000}-\u{200A}\u{2028}\u{2029}\u{202F}\u{205F}\u{3000}";

/// [`WS_CHARS`] as a class.
const WS: &str = "[\\t\\n\\x0B\\f\\r \\x85\\xA0\u{1680}\u{2000}-\u{200A}\u{2028}\u{2029}\u{202F}\u{205F}\u{3000}]";

/// An identifier in a template reference (`is_identifier` in model/src/template.rs).
const IDENT: &str = "[A-Za-z_][A-Za-z0-9._-]*";

/// A template `Template::parse` accepts (model/src/template.rs): text in which `{{name}}` is a
/// named value, `{identifier}` a request variable that must be a known one, and any other brace
/// literal text. Written without look-ahead (Rust's regex crate, which the tests check it
/// with, has none): a literal `{` is followed by the end, by a character that cannot start
/// an identifier, or by an identifier not closed by `}`.
pub fn template_pattern() -> String {
    let name = "[A-Za-z0-9._-]+";
    let var = format!(
        "(subscription\\.id|product\\.name|api\\.name|operation\\.name|gateway\\.name|request\\.(ip|method|path|host|id)\
         |request\\.header\\.{name}|request\\.query\\.{name}|variable\\.{name}|[A-Za-z_][A-Za-z0-9_-]*)"
    );
    let named_value = format!("\\{{\\{{{WS}*{IDENT}{WS}*\\}}\\}}");
    let variable = format!("\\{{{var}\\}}");
    let lone_brace = "\\{([^{A-Za-z_]|$)".to_owned();
    let unclosed = format!("\\{{{IDENT}([^A-Za-z0-9._{{}}-]|$)");
    // `{identifier` runs followed by another brace are literal too.
    let brace = format!("(\\{{{IDENT})*({named_value}|{variable}|{lone_brace}|{unclosed})");
    format!("^([^{{]|{brace})*$")
}

/// Not empty once trimmed.
fn non_blank_pattern() -> String {
    format!("[^{WS_CHARS}]")
}

/// `StatusSet::parse` (model/src/policy.rs): comma-separated statuses (100-599) and classes
/// (`2xx`), blanks and empty items allowed, at least one item. `u16` parsing allows a `+` and
/// leading zeros, so the pattern does.
fn status_set_pattern() -> String {
    let item = format!("{WS}*\\+?0*[1-5]([0-9]{{2}}|xx){WS}*");
    format!("^({WS}*,)*{item}(,({item}|{WS}*))*$")
}

/// `is_xml_name` (model/src/validate.rs), ASCII letters only (the server also takes other
/// Unicode letters): a name, or a prefix and a name.
const XML_NAME: &str = "^[A-Za-z_][A-Za-z0-9._-]*(:[A-Za-z_][A-Za-z0-9._-]*)?$";

/// `check_header_name`: an HTTP token.
const HEADER_NAME: &str = "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";

/// `parse_cidr`: an address, or an address and a prefix length, blanks around each.
fn cidr_pattern(ipv6: &str) -> String {
    let octet = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
    let v4 = format!("{octet}(\\.{octet}){{3}}");
    let v4_len = "\\+?0*([0-9]|[12][0-9]|3[0-2])";
    let v6_len = "\\+?0*([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])";
    format!("^{WS}*({v4}{WS}*(/{WS}*{v4_len}{WS}*)?|({ipv6}){WS}*(/{WS}*{v6_len}{WS}*)?)$")
}

/// A `{{named value}}` reference anywhere: such keys and URLs are checked once substituted.
const HAS_NAMED_VALUE: &str = "\\{\\{[\\s\\S]*\\}\\}";

/// The component name of a policy's settings: `rate-limit` → `RateLimitPolicy`.
pub fn component_name(policy: &str) -> String {
    let mut out: String = policy
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    out.push_str("Policy");
    out
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A closed object, as the model's `deny_unknown_fields` types are.
fn closed(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn int(min: u64, max: u64) -> Value {
    json!({"type": "integer", "minimum": min, "maximum": max})
}

fn int_default(min: u64, max: u64, default: u64) -> Value {
    json!({"type": "integer", "minimum": min, "maximum": max, "default": default})
}

fn boolean(default: bool) -> Value {
    json!({"type": "boolean", "default": default})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn string_default(default: &str) -> Value {
    json!({"type": "string", "default": default})
}

fn strings() -> Value {
    json!({"type": "array", "items": string()})
}

fn template() -> Value {
    schema_ref("Template")
}

fn non_empty_template() -> Value {
    schema_ref("NonEmptyTemplate")
}

fn nullable(schema: Value) -> Value {
    json!({"oneOf": [{"type": "null"}, schema], "default": null})
}

fn one_of(values: &[&str], default: &str) -> Value {
    json!({"type": "string", "enum": values, "default": default})
}

fn outage() -> Value {
    one_of(&["fail-open", "local", "fail-closed"], "local")
}

fn caching_type() -> Value {
    one_of(
        &["prefer-external", "external", "internal"],
        "prefer-external",
    )
}

fn exists_action() -> Value {
    one_of(&["override", "skip", "append", "delete"], "override")
}

fn status() -> Value {
    schema_ref("HttpStatus")
}

fn status_default(default: u16) -> Value {
    json!({"allOf": [status()], "default": default})
}

const CALLS_MAX: u64 = 1_000_000_000;
const DAY: u64 = 86_400;
const YEAR: u64 = 31_536_000;

/// `set-header` and `set-query-parameter`: a value or a value expression unless the action is
/// `delete`, which takes neither (null is none).
fn value_for_action(mut schema: Value) -> Value {
    schema["if"] = json!({"properties": {"exists-action": {"const": "delete"}}, "required": ["exists-action"]});
    schema["then"] =
        json!({"properties": {"value": {"type": "null"}, "value-expression": {"type": "null"}}});
    schema["else"] = json!({"type": "object", "oneOf": [
        {"properties": {"value": {"type": "string"}, "value-expression": {"type": "null"}}, "required": ["value"]},
        {"properties": {"value-expression": {"type": "string"}, "value": {"type": "null"}}, "required": ["value-expression"]},
    ]});
    schema
}

/// A lowercase media type without parameters (`is_media_type`).
const MEDIA_TYPE: &str = "^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$";

/// A metric or label name of `emit-metric` (`is_metric_name`, at most 64 characters).
const METRIC_NAME: &str = "^[a-z][a-z0-9_]{0,63}$";

/// An HTTP method: a token.
const METHOD: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

/// A dimension of `log` and `emit-metric`: a value or an expression (null is absent).
fn dimension() -> Value {
    let mut s = closed(
        json!({"value": nullable(template()), "value-expression": nullable(expression())}),
        &[],
    );
    s["oneOf"] = json!([
        {"type": "object", "properties": {"value": {"type": "string"}, "value-expression": {"type": "null"}}, "required": ["value"]},
        {"type": "object", "properties": {"value-expression": {"type": "string"}, "value": {"type": "null"}}, "required": ["value-expression"]},
    ]);
    s
}

/// The `url` of `send-request` (`CallTarget::parse` in actors/src/route_table/steps/calls.rs):
/// an absolute http(s) URL of printable ASCII without a fragment, or a template that uses a
/// request variable or a named value (checked per request, or once substituted).
fn call_url_pattern() -> String {
    let host = "[A-Za-z0-9._~-]+";
    let port = "[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]";
    format!(
        "^(https?://{host}(:({port}))?([/?][!-\"$-~]*)?|[\\s\\S]*\\{{([A-Za-z_][A-Za-z0-9._-]*\\}}|\\{{)[\\s\\S]*)$"
    )
}

fn expression() -> Value {
    schema_ref("Expression")
}

/// The component of `choose` in `section`: its branches hold the policies of that section
/// (but `base` and `cors`), each with its settings, and a nested `choose` of the same section.
fn choose_component(section: Section) -> String {
    component_name(&format!("choose-{}", section.as_str()))
}

/// The settings schema of each policy allowed in `section` (`base` aside), by name.
fn policy_properties(section: Section) -> (Vec<&'static str>, serde_json::Map<String, Value>) {
    let mut properties = serde_json::Map::new();
    let mut names = Vec::new();
    for (name, sections) in POLICIES {
        if *name == "base" || !sections.contains(&section) {
            continue;
        }
        names.push(*name);
        let settings_schema = if *name == "choose" {
            schema_ref(&choose_component(section))
        } else {
            // A policy not described yet (the unit test below fails for it) is an object.
            match settings(name, "") {
                Some(_) => schema_ref(&component_name(name)),
                None => json!({"type": "object"}),
            }
        };
        properties.insert((*name).to_owned(), settings_schema);
    }
    (names, properties)
}

/// `choose` in `section`: branches of that section's policies.
fn choose_in(section: Section) -> Value {
    let (mut names, mut properties) = policy_properties(section);
    names.retain(|n| *n != "cors");
    properties.remove("cors");
    let list = json!({"type": "array", "default": [], "items": {
        "type": "object", "minProperties": 1, "maxProperties": 1,
        "propertyNames": {"enum": names},
        "properties": properties,
    }});
    closed(
        json!({
            "when": {"type": "array", "minItems": 1, "items": closed(
                json!({"condition": expression(), "policies": list.clone()}),
                &["condition"],
            )},
            "otherwise": list,
        }),
        &["when"],
    )
}

/// The policies of a `choose` branch in any section (the section's own component, used in
/// policy lists, says which).
fn nested_policies() -> Value {
    json!({"type": "array", "default": [], "items": {
        "type": "object", "minProperties": 1, "maxProperties": 1,
        "propertyNames": {"enum": POLICIES.iter().map(|(n, _)| *n).filter(|n| !matches!(*n, "base" | "cors")).collect::<Vec<_>>()},
    }})
}

/// `body` and `body-expression`: at most one of the two (null is absent).
fn at_most_one_body(mut schema: Value) -> Value {
    schema["anyOf"] = json!([
        {"type": "object", "properties": {"body": {"type": "null"}}},
        {"type": "object", "properties": {"body-expression": {"type": "null"}}},
    ]);
    schema
}

/// Quotas: calls, bandwidth or both (null is absent).
fn calls_or_bandwidth(mut schema: Value) -> Value {
    schema["anyOf"] = json!([
        {"properties": {"calls": {"type": "integer"}}, "required": ["calls"]},
        {"properties": {"bandwidth": {"type": "integer"}}, "required": ["bandwidth"]},
    ]);
    schema
}

/// The settings of `policy`; `None` for `base` (it has none) and for a policy not described
/// here (a unit test refuses that).
pub fn settings(policy: &str, backend_url_pattern: &str) -> Option<Value> {
    let header_names = || {
        json!({
            "retry-after-header-name": string_default("Retry-After"),
            "remaining-calls-header-name": string_default("X-RateLimit-Remaining"),
        })
    };
    let merge = |mut a: Value, b: Value| {
        if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
            a.extend(b);
        }
        a
    };
    let u64_max = u64::MAX;
    Some(match policy {
        "rate-limit" => closed(
            merge(
                json!({
                    "calls": int(1, CALLS_MAX),
                    "renewal-period": int(1, DAY),
                    "per-operation": boolean(false),
                    "outage": outage(),
                    "local-budget": nullable(int(1, CALLS_MAX)),
                }),
                header_names(),
            ),
            &["calls", "renewal-period"],
        ),
        "rate-limit-by-key" => closed(
            merge(
                json!({
                    "calls": int(1, CALLS_MAX),
                    "renewal-period": int(1, DAY),
                    "counter-key": non_empty_template(),
                    "increment-condition": nullable(schema_ref("StatusSet")),
                    "increment-count": int_default(1, 1_000_000, 1),
                    "outage": outage(),
                    "local-budget": nullable(int(1, CALLS_MAX)),
                }),
                header_names(),
            ),
            &["calls", "renewal-period", "counter-key"],
        ),
        "quota" => calls_or_bandwidth(closed(
            json!({
                "calls": nullable(int(1, u64_max)),
                "bandwidth": nullable(int(1, u64_max)),
                "renewal-period": int(1, YEAR),
                "outage": outage(),
            }),
            &["renewal-period"],
        )),
        "quota-by-key" => calls_or_bandwidth(closed(
            json!({
                "calls": nullable(int(1, u64_max)),
                "bandwidth": nullable(int(1, u64_max)),
                "renewal-period": int(1, YEAR),
                "counter-key": non_empty_template(),
                "increment-condition": nullable(schema_ref("StatusSet")),
                "outage": outage(),
            }),
            &["renewal-period", "counter-key"],
        )),
        "cache-lookup" => closed(
            json!({
                "vary-by-header": strings(),
                "vary-by-query-parameter": strings(),
                "vary-by-developer": boolean(false),
                "ignore-cache-control": boolean(false),
                "caching-type": caching_type(),
            }),
            &[],
        ),
        "cache-store" => closed(
            json!({"duration": int(1, YEAR), "ignore-cache-control": boolean(false)}),
            &["duration"],
        ),
        "cache-lookup-value" => closed(
            json!({
                "key": non_empty_template(),
                "variable-name": schema_ref("NonBlank"),
                "default-value": nullable(template()),
                "caching-type": caching_type(),
            }),
            &["key", "variable-name"],
        ),
        "cache-store-value" => closed(
            json!({
                "key": non_empty_template(),
                "value": template(),
                "duration": int(1, YEAR),
                "caching-type": caching_type(),
            }),
            &["key", "value", "duration"],
        ),
        "cache-remove-value" => closed(
            json!({"key": non_empty_template(), "caching-type": caching_type()}),
            &["key"],
        ),
        "validate-jwt" => {
            let pem = || {
                json!({"allOf": [template()], "anyOf": [
                    {"pattern": "-----BEGIN"},
                    {"pattern": HAS_NAMED_VALUE},
                ], "description": "A PEM public key, or {{named value}} references."})
            };
            let hmac = json!({"allOf": [template()], "anyOf": [
                {"pattern": format!("^{WS}*[A-Za-z0-9+/_-]{{2,}}=*{WS}*$")},
                {"pattern": HAS_NAMED_VALUE},
            ], "description": "A base64 secret, or {{named value}} references."});
            let key = |name: &str, schema: Value| closed(json!({ name: schema }), &[name]);
            let url = || {
                nullable(json!({"allOf": [template()], "anyOf": [
                    {"pattern": "^https?://"},
                    {"pattern": HAS_NAMED_VALUE},
                ], "description": "An http:// or https:// URL, or {{named value}} references."}))
            };
            let mut s = closed(
                json!({
                    "header-name": string_default("Authorization"),
                    "query-parameter-name": nullable(string()),
                    "failed-validation-httpcode": status_default(401),
                    "failed-validation-error-message": string_default("JWT not present or not valid."),
                    "require-expiration-time": boolean(true),
                    "clock-skew": int_default(0, u64_max, 0),
                    "issuers": {"type": "array", "items": template()},
                    "audiences": {"type": "array", "items": template()},
                    "signing-keys": {"type": "array", "items": {"oneOf": [
                        key("hmac-base64", hmac),
                        key("rsa-pem", pem()),
                        key("ec-pem", pem()),
                        key("ed-pem", pem()),
                    ]}},
                    "jwks-url": url(),
                    "openid-config-url": url(),
                    "jwks-refresh-interval": int_default(10, 86_400, 3600),
                    "required-claims": {"type": "array", "items": closed(
                        json!({"name": string(), "values": strings()}),
                        &["name"],
                    )},
                }),
                &[],
            );
            // At least one key source.
            s["anyOf"] = json!([
                {"type": "object", "properties": {"signing-keys": {"type": "array", "minItems": 1}}, "required": ["signing-keys"]},
                {"type": "object", "properties": {"jwks-url": {"type": "string"}}, "required": ["jwks-url"]},
                {"type": "object", "properties": {"openid-config-url": {"type": "string"}}, "required": ["openid-config-url"]},
            ]);
            s
        }
        "check-header" => closed(
            json!({
                "name": schema_ref("NonBlank"),
                "failed-check-httpcode": status_default(401),
                "failed-check-error-message": string_default("Header check failed."),
                "ignore-case": boolean(false),
                "values": {"type": "array", "items": template()},
            }),
            &["name"],
        ),
        "ip-filter" => closed(
            json!({
                "action": one_of(&["allow", "forbid"], "allow"),
                "addresses": {"type": "array", "minItems": 1, "items": schema_ref("IpAddressOrCidr")},
            }),
            &["addresses"],
        ),
        "cors" => {
            let mut s = closed(
                json!({
                    "allowed-origins": {"type": "array", "minItems": 1, "items": string()},
                    "allowed-methods": strings(),
                    "allowed-headers": strings(),
                    "expose-headers": strings(),
                    "allow-credentials": boolean(false),
                    "preflight-result-max-age": int_default(0, u64_max, 0),
                    "terminate-unmatched-request": boolean(true),
                }),
                &["allowed-origins"],
            );
            // Credentials are never allowed for any origin.
            s["if"] = json!({"properties": {"allow-credentials": {"const": true}}, "required": ["allow-credentials"]});
            s["then"] =
                json!({"properties": {"allowed-origins": {"not": {"contains": {"const": "*"}}}}});
            s
        }
        "set-header" => value_for_action(closed(
            json!({
                "name": schema_ref("HeaderName"),
                "value": nullable(template()),
                "value-expression": nullable(expression()),
                "exists-action": exists_action(),
            }),
            &["name"],
        )),
        "set-query-parameter" => value_for_action(closed(
            json!({
                "name": schema_ref("NonBlank"),
                "value": nullable(template()),
                "value-expression": nullable(expression()),
                "exists-action": exists_action(),
            }),
            &["name"],
        )),
        "choose" => closed(
            json!({
                "when": {"type": "array", "minItems": 1, "items": closed(
                    json!({"condition": expression(), "policies": nested_policies()}),
                    &["condition"],
                )},
                "otherwise": nested_policies(),
            }),
            &["when"],
        ),
        "set-variable" => {
            let mut s = closed(
                json!({
                    "name": schema_ref("NonBlank"),
                    "value": nullable(template()),
                    "value-expression": nullable(expression()),
                }),
                &["name"],
            );
            // Exactly one of the two (null is absent).
            s["oneOf"] = json!([
                {"properties": {"value": {"type": "string"}, "value-expression": {"type": "null"}}, "required": ["value"]},
                {"properties": {"value-expression": {"type": "string"}, "value": {"type": "null"}}, "required": ["value-expression"]},
            ]);
            s
        }
        "set-status" => {
            let mut s = closed(
                json!({
                    "code": nullable(int(100, 599)),
                    "code-expression": nullable(expression()),
                }),
                &[],
            );
            // Exactly one of the two (null is absent).
            s["oneOf"] = json!([
                {"type": "object", "properties": {"code": {"type": "integer"}, "code-expression": {"type": "null"}}, "required": ["code"]},
                {"type": "object", "properties": {"code-expression": {"type": "string"}, "code": {"type": "null"}}, "required": ["code-expression"]},
            ]);
            s
        }
        "set-body" => {
            let mut s = closed(
                json!({
                    "body": nullable(template()),
                    "body-expression": nullable(expression()),
                }),
                &[],
            );
            // Exactly one of the two (null is absent).
            s["oneOf"] = json!([
                {"type": "object", "properties": {"body": {"type": "string"}, "body-expression": {"type": "null"}}, "required": ["body"]},
                {"type": "object", "properties": {"body-expression": {"type": "string"}, "body": {"type": "null"}}, "required": ["body-expression"]},
            ]);
            s
        }
        "set-method" => closed(
            json!({"method": {"type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", "description": "An HTTP method, e.g. POST."}}),
            &["method"],
        ),
        "authentication-basic" => closed(
            json!({
                "username": {"type": "string", "pattern": "^[^:]*$", "description": "No ':'; named values substituted."},
                "password": {"type": "string", "description": "Usually a {{secret named value}} reference."},
            }),
            &["username", "password"],
        ),
        "find-and-replace" => closed(
            json!({
                "from": {"type": "string", "minLength": 1, "description": "Literal text to find; named values substituted."},
                "to": {"type": "string", "description": "Literal replacement; named values substituted; may be empty."},
            }),
            &["from", "to"],
        ),
        "send-request" => {
            let header = value_for_action(closed(
                json!({
                    "name": schema_ref("HeaderName"),
                    "value": nullable(template()),
                    "value-expression": nullable(expression()),
                    "exists-action": exists_action(),
                }),
                &["name"],
            ));
            let mut s = at_most_one_body(closed(
                json!({
                    "response-variable-name": schema_ref("NonBlank"),
                    "mode": one_of(&["new", "copy"], "new"),
                    "url": nullable(json!({"allOf": [template()], "pattern": call_url_pattern()})),
                    "url-expression": nullable(expression()),
                    "method": nullable(json!({"type": "string", "pattern": METHOD, "description": "An HTTP method; default GET (new) or the request's (copy)."})),
                    "headers": {"type": "array", "items": header, "default": []},
                    "body": nullable(template()),
                    "body-expression": nullable(expression()),
                    "timeout": int_default(1, 600, 20),
                    "ignore-error": boolean(false),
                }),
                &["response-variable-name"],
            ));
            // Exactly one of url and url-expression (null is absent).
            s["oneOf"] = json!([
                {"properties": {"url": {"type": "string"}, "url-expression": {"type": "null"}}, "required": ["url"]},
                {"properties": {"url-expression": {"type": "string"}, "url": {"type": "null"}}, "required": ["url-expression"]},
            ]);
            s
        }
        "log" => {
            let mut s = closed(
                json!({
                    "message": nullable(template()),
                    "message-expression": nullable(expression()),
                    "level": one_of(&["debug", "info", "warn", "error"], "info"),
                    "dimensions": {
                        "type": "object",
                        "propertyNames": {"type": "string", "minLength": 1, "pattern": non_blank_pattern()},
                        "additionalProperties": dimension(),
                        "default": {},
                    },
                }),
                &[],
            );
            s["oneOf"] = json!([
                {"type": "object", "properties": {"message": {"type": "string"}, "message-expression": {"type": "null"}}, "required": ["message"]},
                {"type": "object", "properties": {"message-expression": {"type": "string"}, "message": {"type": "null"}}, "required": ["message-expression"]},
            ]);
            s
        }
        "emit-metric" => closed(
            json!({
                "name": {"type": "string", "pattern": METRIC_NAME, "description": "Exported as outpost_custom_NAME_total."},
                "value": int_default(1, 1_000_000, 1),
                "dimensions": {
                    "type": "object",
                    "maxProperties": outpost_model::policy::MAX_METRIC_DIMENSIONS,
                    "propertyNames": {"type": "string", "pattern": METRIC_NAME, "not": {"const": "api"}},
                    "additionalProperties": dimension(),
                    "default": {},
                },
            }),
            &["name"],
        ),
        "validate-content" => {
            let action = |default: &str| one_of(&["prevent", "detect", "ignore"], default);
            closed(
                json!({
                    "max-size": int_default(1, 104_857_600, 1_048_576),
                    "size-exceeded-action": action("prevent"),
                    "unspecified-content-type-action": action("ignore"),
                    "content": {
                        "type": "object",
                        "minProperties": 1,
                        "propertyNames": {"type": "string", "pattern": MEDIA_TYPE},
                        "additionalProperties": closed(
                            json!({
                                "schema": {"type": ["object", "boolean"], "description": "A JSON Schema (draft 4 to 2020-12, by its $schema; 2020-12 without one), inline; no external $ref. Its JSON text is accepted too."},
                                "action": action("prevent"),
                            }),
                            &["schema"],
                        ),
                    },
                }),
                &["content"],
            )
        }
        "validate-parameters" => {
            let action = |default: &str| one_of(&["prevent", "detect", "ignore"], default);
            let mut parameter = closed(
                json!({
                    "type": one_of(&["string", "integer", "number", "boolean"], "string"),
                    "required": boolean(false),
                    "pattern": nullable(json!({"type": "string", "description": "A regular expression (Rust regex syntax) the decoded value must match whole."})),
                    "values": {"type": "array", "items": string(), "default": []},
                    "minimum": nullable(json!({"type": "number"})),
                    "maximum": nullable(json!({"type": "number"})),
                }),
                &[],
            );
            // Bounds are for integer and number parameters (null is absent).
            parameter["if"] = json!({"properties": {"type": {"enum": ["integer", "number"]}}, "required": ["type"]});
            parameter["else"] =
                json!({"properties": {"minimum": {"type": "null"}, "maximum": {"type": "null"}}});
            let parameters = json!({
                "type": "object",
                "propertyNames": {"type": "string", "minLength": 1},
                "additionalProperties": parameter,
                "default": {},
            });
            closed(
                json!({
                    "action": action("prevent"),
                    "unspecified-query-parameter-action": action("ignore"),
                    "query": parameters.clone(),
                    "path": parameters,
                }),
                &[],
            )
        }
        "json-to-xml" => closed(
            json!({
                "apply": {"type": "string", "enum": ["always", "content-type-json"], "description": "content-type-json: only bodies whose Content-Type is JSON (application/json, …+json)."},
                "consider-accept-header": boolean(true),
                "root-element": {"type": "string", "pattern": XML_NAME, "default": "Document", "description": "The element the JSON value becomes the content of."},
                "max-size": int_default(1, 104_857_600, 1_048_576),
            }),
            &["apply"],
        ),
        "xml-to-json" => closed(
            json!({
                "apply": {"type": "string", "enum": ["always", "content-type-xml"], "description": "content-type-xml: only bodies whose Content-Type is XML (application/xml, text/xml, …+xml)."},
                "consider-accept-header": boolean(true),
                "always-array-child-elements": boolean(false),
                "max-size": int_default(1, 104_857_600, 1_048_576),
            }),
            &["apply"],
        ),
        "validate-headers" => closed(
            json!({
                "headers": {"type": "array", "minItems": 1, "items": closed(
                    json!({
                        "name": schema_ref("HeaderName"),
                        "required": boolean(true),
                        "pattern": nullable(json!({"type": "string", "description": "A regular expression (Rust regex syntax) every value must match whole; not with values."})),
                        "values": {"type": "array", "default": [], "items": string(), "description": "The values allowed (named values substituted); not with pattern."},
                    }),
                    &["name"],
                )},
                "unspecified-header-action": one_of(&["ignore", "prevent"], "ignore"),
            }),
            &["headers"],
        ),
        "rewrite-uri" => closed(
            json!({
                "template": {"allOf": [template()], "pattern": "^/"},
                "copy-unmatched-params": boolean(true),
            }),
            &["template"],
        ),
        "set-backend-service" => {
            let mut s = closed(
                json!({
                    "backend-id": nullable(string()),
                    "base-url": nullable(json!({"allOf": [template()], "pattern": backend_url_pattern})),
                }),
                &[],
            );
            // Exactly one of the two (null is absent).
            s["oneOf"] = json!([
                {"properties": {"backend-id": {"type": "string"}, "base-url": {"type": "null"}}, "required": ["backend-id"]},
                {"properties": {"base-url": {"type": "string"}, "backend-id": {"type": "null"}}, "required": ["base-url"]},
            ]);
            s
        }
        "mock-response" => closed(
            json!({
                "status-code": status_default(200),
                "content-type": string_default("application/json"),
                "body": nullable(template()),
            }),
            &[],
        ),
        "return-response" => at_most_one_body(closed(
            json!({
                "status-code": status_default(200),
                "headers": {"type": "array", "items": closed(
                    json!({"name": schema_ref("HeaderName"), "value": template()}),
                    &["name", "value"],
                )},
                "body": nullable(template()),
                "body-expression": nullable(expression()),
            }),
            &[],
        )),
        "retry" => closed(
            json!({
                "count": int(1, 10),
                "interval-ms": int_default(0, 60_000, 100),
                "condition": {"allOf": [schema_ref("StatusSet")], "default": "502,503,504"},
                "on-connection-error": boolean(true),
            }),
            &["count"],
        ),
        "forward-request" => closed(json!({"timeout": nullable(int(1, 3_600))}), &[]),
        "limit-concurrency" => closed(
            json!({"key": non_empty_template(), "max-count": int(1, 1_000_000)}),
            &["key", "max-count"],
        ),
        "validate-client-certificate" => {
            // Each identity field, when given, is a non-blank template; an identity gives one
            // at least (null is not given).
            let fields = [
                "thumbprint",
                "serial-number",
                "subject",
                "common-name",
                "issuer",
            ];
            let properties: serde_json::Map<String, Value> = fields
                .iter()
                .map(|f| ((*f).to_owned(), nullable(non_empty_template())))
                .collect();
            let any_given: Vec<Value> = fields
                .iter()
                .map(|f| json!({"properties": {*f: {"type": "string"}}, "required": [f]}))
                .collect();
            let mut identity = closed(Value::Object(properties), &[]);
            identity["anyOf"] = Value::Array(any_given);
            closed(
                json!({
                    "validate-revocation": boolean(true),
                    "validate-trust": boolean(true),
                    "validate-not-before": boolean(true),
                    "validate-not-after": boolean(true),
                    "ignore-error": boolean(false),
                    "revoked-thumbprints": {"type": "array", "items": template(), "default": []},
                    "revocation-crl-pem": nullable(template()),
                    "identities": {"type": "array", "items": identity, "default": []},
                }),
                &[],
            )
        }
        // Whether the PEM parses (and the key is the certificate's) is the gateway compiler's
        // check, at publish: a 409 like any other configuration problem.
        "authentication-certificate" => closed(
            json!({"certificate-pem": template(), "key-pem": template()}),
            &["certificate-pem", "key-pem"],
        ),
        _ => return None,
    })
}

/// The components this module adds: each policy's settings and the strings they share.
pub fn components(backend_url_pattern: &str, ipv6_pattern: &str) -> Vec<(String, Value)> {
    let mut out = vec![
        (
            "Template".to_owned(),
            json!({
                "type": "string",
                "pattern": template_pattern(),
                "description": "Text with `{{named-value}}` references and `{request.*}`, `{subscription.id}`, … variables (docs/policies.md); any other brace is literal text.",
            }),
        ),
        (
            "NonEmptyTemplate".to_owned(),
            json!({"allOf": [template()], "pattern": non_blank_pattern(), "description": "A template that is not blank."}),
        ),
        (
            "Expression".to_owned(),
            json!({
                "type": "string",
                "minLength": 1,
                "maxLength": outpost_actors::expr::MAX_SOURCE_BYTES,
                "description": "A CEL expression over request, response (outbound, on-error), context and jwt (docs/policies.md, \"Expressions\"); checked by the server when published.",
            }),
        ),
        (
            "NonBlank".to_owned(),
            json!({"type": "string", "pattern": non_blank_pattern()}),
        ),
        (
            "HeaderName".to_owned(),
            json!({"type": "string", "pattern": HEADER_NAME}),
        ),
        ("HttpStatus".to_owned(), int(100, 599)),
        (
            "StatusSet".to_owned(),
            json!({
                "type": "string",
                "pattern": status_set_pattern(),
                "description": "Comma-separated statuses and classes: `502,503,504`, `2xx`. Ranges (`500-504`) are accepted too but not described: a pattern cannot say that the start is not after the end.",
            }),
        ),
        (
            "IpAddressOrCidr".to_owned(),
            json!({"type": "string", "pattern": cidr_pattern(ipv6_pattern)}),
        ),
    ];
    for (name, _) in POLICIES {
        if let Some(s) = settings(name, backend_url_pattern) {
            out.push((component_name(name), s));
        }
    }
    for section in Section::ALL {
        out.push((choose_component(section), choose_in(section)));
    }
    out
}

/// A policy section: `base` at most once, and the policies allowed in `section`, each with
/// its settings.
pub fn section(section: Section) -> Value {
    let (mut names, mut properties) = policy_properties(section);
    // `{base: null}` is the map form of `base`.
    names.push("base");
    properties.insert("base".to_owned(), json!({"type": "null"}));
    let base = json!({"anyOf": [{"const": "base"}, {"type": "object", "required": ["base"]}]});
    json!({
        "type": ["array", "null"],
        "description": format!("Policies allowed in {}; `base` at most once. null is an empty section.", section.as_str()),
        "items": {"oneOf": [
            {"type": "string", "const": "base"},
            {
                "type": "object", "minProperties": 1, "maxProperties": 1,
                "propertyNames": {"enum": names},
                "properties": properties,
            },
        ]},
        "contains": base,
        "minContains": 0,
        "maxContains": 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_model::Problems;
    use outpost_model::policy::{Policy, StatusSet};
    use outpost_model::template::Template;
    use outpost_model::validate::{check_policies, parse_cidr, parse_policy_document};
    use std::collections::BTreeSet;

    fn re(p: &str) -> regex::Regex {
        regex::Regex::new(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// One instance of each policy with its required settings only.
    fn minimal(name: &str) -> Value {
        match name {
            "rate-limit" => json!({"calls": 5, "renewal-period": 60}),
            "rate-limit-by-key" => {
                json!({"calls": 5, "renewal-period": 60, "counter-key": "{request.ip}"})
            }
            "quota" => json!({"calls": 5, "renewal-period": 60}),
            "quota-by-key" => {
                json!({"calls": 5, "renewal-period": 60, "counter-key": "{request.ip}"})
            }
            "cache-lookup" => json!({}),
            "cache-store" => json!({"duration": 60}),
            "cache-lookup-value" => json!({"key": "k", "variable-name": "v"}),
            "cache-store-value" => json!({"key": "k", "value": "v", "duration": 60}),
            "cache-remove-value" => json!({"key": "k"}),
            "validate-jwt" => json!({"signing-keys": [{"hmac-base64": "c2VjcmV0"}]}),
            "check-header" => json!({"name": "X-Key"}),
            "ip-filter" => json!({"addresses": ["10.0.0.0/8"]}),
            "cors" => json!({"allowed-origins": ["*"]}),
            "set-header" => json!({"name": "X-A", "value": "b"}),
            "set-query-parameter" => json!({"name": "a", "value": "b"}),
            "rewrite-uri" => json!({"template": "/x"}),
            "set-backend-service" => json!({"base-url": "http://x"}),
            "mock-response" => json!({}),
            "return-response" => json!({}),
            "retry" => json!({"count": 2}),
            "forward-request" => json!({}),
            "limit-concurrency" => json!({"key": "k", "max-count": 2}),
            "validate-client-certificate" => json!({}),
            "authentication-certificate" => json!({"certificate-pem": "c", "key-pem": "k"}),
            "choose" => json!({"when": [{"condition": "request.method == 'GET'"}]}),
            "set-variable" => json!({"name": "a", "value": "b"}),
            "set-status" => json!({"code": 202}),
            "set-method" => json!({"method": "POST"}),
            "set-body" => json!({"body": "{\"ok\": true}"}),
            "authentication-basic" => json!({"username": "gw", "password": "{{backend-password}}"}),
            "find-and-replace" => json!({"from": "internal.example", "to": "api.example.com"}),
            "validate-content" => {
                json!({"content": {"application/json": {"schema": {"type": "object", "required": ["id"]}}}})
            }
            "json-to-xml" => json!({"apply": "content-type-json"}),
            "xml-to-json" => json!({"apply": "content-type-xml"}),
            "validate-parameters" => {
                json!({"query": {"limit": {"type": "integer", "minimum": 1, "maximum": 100}}})
            }
            "send-request" => {
                json!({"response-variable-name": "token", "url": "http://auth.internal/token"})
            }
            "log" => json!({"message": "seen {request.id}"}),
            "emit-metric" => json!({"name": "orders"}),
            "validate-headers" => {
                json!({"headers": [{"name": "X-Tenant", "pattern": "[a-z]{3,8}"}, {"name": "X-Mode", "required": false, "values": ["a", "b"]}]})
            }
            other => panic!("no sample of '{other}': add one with its schema"),
        }
    }

    fn section_of(name: &str) -> &'static str {
        let (_, sections) = POLICIES.iter().find(|(n, _)| *n == name).unwrap();
        sections[0].as_str()
    }

    /// The problems the server finds in `settings` of `name` (parse and check).
    fn problems(name: &str, settings: Value) -> Problems {
        let doc = json!({ section_of(name): [{ name: settings }] });
        match parse_policy_document(doc) {
            Ok(d) => {
                let mut p = Problems::new();
                check_policies(&mut p, "policies", &d);
                p
            }
            Err(p) => p,
        }
    }

    /// Each policy's schema has the model's fields, required exactly when the model requires
    /// them, closed to others; every policy of the catalogue has one.
    #[test]
    fn every_policy_has_settings_matching_the_model() {
        for (name, _) in POLICIES.iter().filter(|(n, _)| *n != "base") {
            let s = settings(name, "").unwrap_or_else(|| panic!("no schema for '{name}'"));
            let sample = minimal(name);
            assert!(
                problems(name, sample.clone()).is_empty(),
                "{name}: {:?}",
                problems(name, sample)
            );
            let full: Policy = serde_json::from_value(json!({ *name: sample })).unwrap();
            let full = serde_json::to_value(&full).unwrap()[*name].clone();
            let fields: BTreeSet<String> = full.as_object().unwrap().keys().cloned().collect();
            let documented: BTreeSet<String> = s["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            assert_eq!(documented, fields, "{name}: properties");
            assert_eq!(s["additionalProperties"], json!(false), "{name}");
            let required: BTreeSet<String> = s["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            for field in &fields {
                let mut v = full.clone();
                v.as_object_mut().unwrap().remove(field);
                let parses = serde_json::from_value::<Policy>(json!({ *name: v })).is_ok();
                assert_eq!(
                    !parses,
                    required.contains(field),
                    "{name}.{field}: required"
                );
            }
            // Defaults are the model's.
            for (field, schema) in s["properties"].as_object().unwrap() {
                if let Some(d) = schema.get("default") {
                    let mut v = full.clone();
                    v.as_object_mut().unwrap().remove(field);
                    let p: Policy = serde_json::from_value(json!({ *name: v })).unwrap();
                    let got = serde_json::to_value(&p).unwrap()[*name][field].clone();
                    assert_eq!(&got, d, "{name}.{field}: default");
                }
            }
        }
    }

    fn template_ok(s: &str) -> bool {
        re(&template_pattern()).is_match(s)
    }

    #[test]
    fn the_template_pattern_is_the_parser() {
        let cases = [
            "",
            "plain",
            "{request.ip}",
            "{request.header.X-Tenant}-{{env}}-{id} {\"a\": 1}",
            "{{ env }}",
            "{{env}}}",
            "{a{b}",
            "{a{{b}}",
            "{a",
            "{",
            "{}",
            "{ a}",
            "{-}",
            "x{",
            "{request.heder.X}",
            "{request.header.}",
            "{request.}",
            "{{",
            "x{{y",
            "{{a}b}}",
            "{{a} }}",
            "{{{a}}}",
            "{{1a}}",
            "{{ a\u{2003}}}",
            "{{a\u{feff}}}",
            "{a.b}",
            "{variable.x.y}",
            "{_x-1}",
            "{a}{b}{{c}}",
            "{a{b{c",
            "{a\n}",
            "}{",
            "{{a}}{",
            "{é}",
            "{aé}",
        ];
        for s in cases {
            assert_eq!(
                template_ok(s),
                Template::parse(s).is_ok(),
                "{s:?}: pattern {} but parser {:?}",
                template_ok(s),
                Template::parse(s)
            );
        }
        // Every string over a small alphabet, up to 5 characters.
        let alphabet = ['{', '}', 'a', '.', ' ', '1'];
        let mut strings = vec![String::new()];
        for _ in 0..5 {
            let mut next = Vec::new();
            for s in &strings {
                for c in alphabet {
                    next.push(format!("{s}{c}"));
                }
            }
            for s in &next {
                assert_eq!(template_ok(s), Template::parse(s).is_ok(), "{s:?}");
            }
            strings = next;
        }
    }

    #[test]
    fn the_status_set_pattern_accepts_what_the_parser_does() {
        let p = re(&status_set_pattern());
        for s in [
            "200",
            "2xx",
            "502,503,504",
            " 200 , 4xx ",
            ",200,",
            "+200",
            "0200",
            "200,,",
            "1xx",
        ] {
            assert!(p.is_match(s), "{s}");
            assert!(StatusSet::parse(s).is_ok(), "{s}");
        }
        for s in ["", ",", "600", "6xx", "99", "2XX", "abc", "200;300", "20 0"] {
            assert!(!p.is_match(s), "{s}");
            assert!(StatusSet::parse(s).is_err(), "{s}");
        }
        // Ranges: accepted, not described.
        assert!(StatusSet::parse("500-504").is_ok() && !p.is_match("500-504"));
    }

    #[test]
    fn the_address_pattern_accepts_what_the_parser_does() {
        let ipv6 = "([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|::1|fd00::";
        let p = re(&cidr_pattern(ipv6));
        for s in [
            "10.0.0.1",
            "10.0.0.0/8",
            " 10.0.0.0 / 08 ",
            "0.0.0.0/0",
            "255.255.255.255/32",
            "fd00::/8",
            "::1",
            "1:2:3:4:5:6:7:8/128",
        ] {
            assert!(p.is_match(s), "{s}");
            assert!(parse_cidr(s).is_ok(), "{s}");
        }
        for s in [
            "",
            "10.0.0",
            "256.0.0.1",
            "01.2.3.4",
            "10.0.0.0/33",
            "::1/129",
            "x",
        ] {
            assert!(!p.is_match(s), "{s}");
            assert!(parse_cidr(s).is_err(), "{s}");
        }
    }

    #[test]
    fn the_blanks_are_rusts() {
        assert_eq!(WS, format!("[{WS_CHARS}]"));
        let ws = re(&format!("^{WS}$"));
        for c in (0..=0x3000u32)
            .filter_map(char::from_u32)
            .chain(['\u{feff}'])
        {
            assert_eq!(ws.is_match(&c.to_string()), c.is_whitespace(), "{c:?}");
        }
    }

    #[test]
    fn header_names_and_blanks() {
        let h = re(HEADER_NAME);
        let set_header =
            |name: &str| problems("set-header", json!({"name": name, "value": "v"})).is_empty();
        for s in ["X-A", "a!#$%&'*+.^_`|~-1"] {
            assert!(h.is_match(s) && set_header(s), "{s}");
        }
        for s in ["", "X A", "X:A", "é", "X\n"] {
            assert!(!h.is_match(s) && !set_header(s), "{s:?}");
        }
        let blank = re(&non_blank_pattern());
        let check = |name: &str| problems("check-header", json!({ "name": name })).is_empty();
        for s in ["a", " a ", "\u{3000}x"] {
            assert!(blank.is_match(s) && check(s), "{s:?}");
        }
        for s in ["", " ", "\t\n", "\u{2003}\u{3000}"] {
            assert!(!blank.is_match(s) && !check(s), "{s:?}");
        }
    }
}
