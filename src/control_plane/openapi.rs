//! The OpenAPI 3.1 document of the management API, which `admin_api` serves at
//! `/api/v1/openapi.json`.
//!
//! Paths come from the same tables the routers are built from ([`routes`] and
//! [`gateway_admin_routes`], served by `gateway_api`), so a
//! route cannot be served undocumented or documented unserved (the integration tests check the
//! second table against the live server). Resource schemas are written here, each policy's
//! settings in [`policy_schemas`]; unit tests check them field by field against the model's
//! serde types (property names, required fields, defaults) and their patterns against the
//! model's own checks.

use super::telemetry::GroupBy;
use actix_web::http::Method;
use chrono::{DateTime, Utc};
use outpost_model::Kind;
use outpost_model::policy::Section;
use outpost_model::resources::SECRET_MASK;
use serde_json::{Map, Value, json};

use super::policy_schemas;
use super::routes::{
    DEFAULT_PAGE, GatewayAdminOp, MAX_PAGE, Op, REVISION_HEADER, crud_kinds, gateway_admin_routes,
    routes,
};
use super::settings::ControlPlaneSettings;

/// An ETag as the server reads it (`"12"`, `W/"12"` or `12`); 19 digits always fit a revision.
const REVISION_ETAG: &str = r#"^(W/)?("[0-9]{1,19}"|[0-9]{1,19})$"#;

/// What `check_hostname` accepts: lowercase labels of letters, digits and '-', or `*`.
const HOSTNAME: &str = r"^(\*|[a-z0-9-]{1,63})(\.(\*|[a-z0-9-]{1,63}))*$";

/// RFC 3339 as chrono reads it, upper-case `T` and `Z` as the server writes them (without
/// February 29th: a pattern cannot tell leap years).
const DATE_TIME: &str = r"^[0-9]{4}-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";

/// What `check_url` accepts: `http(s)://host[:port][/path]`, no query, fragment or whitespace
/// (`WS`: Rust's, [`policy_schemas::WS_CHARS`]); or, since such a URL is checked only after
/// substitution, any text with a `{{...}}`.
const BACKEND_URL: &str = r"^(https?://((\[(IPV6)\]|[^/?#WS:\[]+)(:(PORT))?|:(PORT))(/[^?#WS]*)?|[\s\S]*\{\{[\s\S]*\}\}[\s\S]*)$";

/// An IPv6 address in its hexadecimal forms (those with a dotted IPv4 tail are left out).
const IPV6: &str = "([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|:((:[0-9a-fA-F]{1,4}){1,7}|:)";

/// The port part of [`BACKEND_URL`]: 0-65535, leading zeros allowed (as `u16` parses).
const PORT: &str =
    "[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]";

const OPERATION_METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", r"\*",
];

/// A regex matching `word` in any case (the server compares methods case-insensitively; ECMA
/// regexes have no inline flag).
fn any_case(word: &str) -> String {
    word.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The documentation of a gateway admin route.
fn gateway_operation(op: GatewayAdminOp) -> Value {
    let name = || param_ref("Name");
    match op {
        GatewayAdminOp::MintGatewayToken => json!({
            "tags": ["gateway access"],
            "operationId": "mintGatewayToken",
            "summary": "Mint a gateway token",
            "description": "Mints `GatewayKey <gateway>&<expiry yyyyMMddHHmm>&<base64 HMAC-SHA512>` from one of the gateway's keys. Give `expiry` or `lifetime-secs`, or neither for the longest lifetime allowed (`tokens.max_lifetime_days`).",
            "parameters": [name()],
            "requestBody": json_body("TokenRequest", true),
            "responses": responses(
                ok("200", "The token; send it as the gateway's `Authorization` header.", schema_ref("TokenResponse")),
                &["400", "401", "404"],
            ),
        }),
        GatewayAdminOp::GetGatewayKeys => json!({
            "tags": ["gateway access"],
            "operationId": "getGatewayKeys",
            "summary": "Get the gateway's primary and secondary keys",
            "parameters": [name()],
            "responses": responses(ok("200", "The keys.", schema_ref("GatewayKeys")), &["401", "404"]),
        }),
        GatewayAdminOp::RegenerateGatewayKey => json!({
            "tags": ["gateway access"],
            "operationId": "regenerateGatewayKey",
            "summary": "Regenerate one gateway key",
            "description": "Every token minted from the old key stops working at once.",
            "parameters": [name()],
            "requestBody": json_body("RegenerateKeyRequest", true),
            "responses": responses(ok("200", "The new keys.", schema_ref("GatewayKeys")), &["400", "401", "404"]),
        }),
        GatewayAdminOp::GetSigningKeys => json!({
            "tags": ["gateway access"],
            "operationId": "getSigningKeys",
            "summary": "Get the config signing keys",
            "description": "The Ed25519 public key every gateway configuration is signed with (`active`), to give gateways out of band in `control_plane.config_signing_keys`, and every earlier key. Private keys never leave the store.",
            "responses": responses(ok("200", "The keys.", schema_ref("SigningKeys")), &["401"]),
        }),
        GatewayAdminOp::RotateSigningKey => json!({
            "tags": ["gateway access"],
            "operationId": "rotateSigningKey",
            "summary": "Rotate the config signing key",
            "description": "Creates a new key pair and signs configurations with it from now on. The previous key endorses the new one; every config answer carries the endorsements, so gateways that trust the previous key (configured or pinned) accept the new one. Then add the new key to the gateways that list keys explicitly and remove the old one.",
            "responses": responses(ok("200", "The keys after the rotation.", schema_ref("SigningKeys")), &["401"]),
        }),
        GatewayAdminOp::ListGatewayInstances => json!({
            "tags": ["gateway status"],
            "operationId": "listGatewayInstances",
            "summary": "List a gateway's instances and their sync state",
            "parameters": [name()],
            "responses": responses(
                ok("200", "Instances, from their heartbeats.", json!({"type": "array", "items": schema_ref("InstanceStatus")})),
                &["401", "404"],
            ),
        }),
        GatewayAdminOp::ListInstances => json!({
            "tags": ["gateway status"],
            "operationId": "listInstances",
            "summary": "List the instances of every gateway",
            "responses": responses(
                ok("200", "Instances, from their heartbeats.", json!({"type": "array", "items": schema_ref("InstanceStatus")})),
                &["401"],
            ),
        }),
        GatewayAdminOp::GetTelemetrySummary => json!({
            "tags": ["gateway status"],
            "operationId": "getTelemetrySummary",
            "summary": "Request metrics reported by the gateways",
            "parameters": [
                query_param("gateway", json!({"type": "string"}), "Only this gateway."),
                query_param("api", json!({"type": "string"}), "Only this API."),
                query_param("minutes", json!({"type": "integer", "minimum": 1, "maximum": 1440, "default": 60}), "Minutes back from now."),
            ],
            "responses": responses(ok("200", "Aggregates per API, from the store (every replica answers the same).", schema_ref("TelemetrySummary")), &["400", "401"]),
        }),
        GatewayAdminOp::GetAnalytics => json!({
            "tags": ["gateway status"],
            "operationId": "getAnalytics",
            "summary": "Request analytics: counts, errors, bytes, cache hits and latency percentiles",
            "description": "Sums the per-minute analytics the gateways uploaded (kept for `analytics.retention_hours`) over the minutes that start in [`from` rounded down to the minute, `to`), filtered and grouped. Percentiles are read from the summed latency histograms, in milliseconds with microsecond precision. A `from` after `to` is an empty window. Every invalid parameter is listed in one 400.",
            "parameters": [
                query_param("from", json!({"type": "string", "format": "date-time"}), "Start (RFC 3339); default: one hour before `to`."),
                query_param("to", json!({"type": "string", "format": "date-time"}), "End (RFC 3339, exclusive); default: now."),
                query_param("gateway", json!({"type": "string"}), "Only this gateway."),
                query_param("api", json!({"type": "string"}), "Only this API (empty: requests no API matched)."),
                query_param("operation", json!({"type": "string"}), "Only this operation (of any API; combine with `api`)."),
                query_param("product", json!({"type": "string"}), "Only requests through a subscription of this product (empty: without a subscription)."),
                query_param("subscription", json!({"type": "string"}), "Only requests through this subscription, by name (empty: without one)."),
                query_param("group_by", json!({"type": "string", "enum": GroupBy::ALL.map(GroupBy::as_str), "default": "api"}),
                    "One group per value of this dimension (`operation`: per API and operation; `minute`: a time series); `none`: the total only."),
            ],
            "responses": responses(ok("200", "The total and one entry per group with requests.", schema_ref("AnalyticsReport")), &["400", "401"]),
        }),
    }
}

/// What the token request's schema depends on: the lifetime setting, and the time the
/// document is served at (an expiry must lie ahead of it).
#[derive(Debug, Clone, Copy)]
pub struct TokenWindow {
    pub max_lifetime_days: u64,
    pub now: DateTime<Utc>,
}

impl Default for TokenWindow {
    /// The default setting, now.
    fn default() -> Self {
        TokenWindow {
            max_lifetime_days: ControlPlaneSettings::default().tokens.max_lifetime_days,
            now: Utc::now(),
        }
    }
}

/// The whole document, for the default token lifetime.
pub fn document() -> Value {
    document_for(TokenWindow::default())
}

/// The whole document, as served by a control plane whose tokens live `window`.
pub fn document_for(window: TokenWindow) -> Value {
    let mut paths = Map::new();
    let mut add = |path: &str, method: &Method, op: Value| {
        let item = paths
            .entry(path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        item[method.as_str().to_ascii_lowercase()] = op;
    };
    for route in routes() {
        add(&route.path, &route.method, operation(route.op));
    }
    for route in gateway_admin_routes() {
        add(&route.path, &route.method, gateway_operation(route.op));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Outpost management API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Management API of the Outpost control plane. Every change bumps one global revision, \
                 returned in the `{REVISION_HEADER}` header of every answer and in the body of answers to writes. \
                 Errors are `{{\"error\", \"message\", \"problems\": [{{\"path\", \"message\"}}]}}` with every problem listed. \
                 Secret named values are shown as `{SECRET_MASK}`; sending the mask back keeps the stored value."
            ),
        },
        "tags": [
            {"name": "resources", "description": "CRUD on every kind of resource."},
            {"name": "declarative", "description": "Whole-configuration export and apply (what `outpost apply` / `outpost export` use)."},
            {"name": "gateway access", "description": "Gateway keys and tokens."},
            {"name": "gateway status", "description": "Gateway instances and telemetry."},
            {"name": "meta", "description": "Revision and this document."},
        ],
        "paths": paths,
        "security": [{"adminToken": []}],
        "components": components(window),
    })
}

fn schema_name(kind: Kind) -> &'static str {
    match kind {
        Kind::NamedValue => "NamedValue",
        Kind::Backend => "Backend",
        Kind::Api => "Api",
        Kind::Product => "Product",
        Kind::Subscription => "Subscription",
        Kind::Gateway => "Gateway",
        Kind::GlobalPolicy => "GlobalPolicy",
    }
}

fn camel(kind: Kind) -> String {
    schema_name(kind).to_owned()
}

fn operation(op: Op) -> Value {
    let name = || param_ref("Name");
    match op {
        Op::OpenApi => json!({
            "tags": ["meta"],
            "operationId": "getOpenApiDocument",
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "The OpenAPI document.", "content": {"application/json": {"schema": {"type": "object"}}}}},
        }),
        Op::Revision => json!({
            "tags": ["meta"],
            "operationId": "getRevision",
            "summary": "The current global revision",
            "responses": responses(ok("200", "The revision.", schema_ref("Revision")), &["401"]),
        }),
        Op::Export => json!({
            "tags": ["declarative"],
            "operationId": "exportConfiguration",
            "summary": "Export the whole configuration as a declarative file",
            "description": format!("Secret named values are exported as `{SECRET_MASK}` unless `include_secrets=true`; \
                applying a masked file back keeps the stored values, but a gateway cannot serve it offline."),
            "parameters": [
                query_param("format", json!({"type": "string", "enum": ["yaml", "json"], "default": "yaml"}), "Output format."),
                query_param("include_secrets", json!({"type": "boolean", "default": false}),
                    "Export secret named values in clear (for `outpost gateway --offline-config`); the control plane logs that it happened."),
            ],
            "responses": responses(json!({"200": {
                "description": "The declarative file.",
                "headers": revision_header(),
                "content": {
                    "application/yaml": {"schema": schema_ref("DeclarativeFile")},
                    "application/json": {"schema": schema_ref("DeclarativeFile")},
                },
            }}), &["400", "401"]),
        }),
        Op::Apply => json!({
            "tags": ["declarative"],
            "operationId": "applyConfiguration",
            "summary": "Make the configuration match a declarative file",
            "description": "Creates and updates the resources the file lists; by default nothing is deleted. \
                With `prune=true` the file owns the kinds it has a section for (even an empty one, `subscriptions: []`): \
                resources of those kinds that it does not list are deleted; other kinds are left alone. \
                Everything is committed as one revision; applying the same file again changes nothing. \
                Subscriptions without keys keep their stored keys; masked secrets keep their stored values \
                (a masked secret that is not stored is refused).",
            "parameters": [
                query_param("dry_run", json!({"type": "boolean", "default": false}), "Only compute the changes."),
                query_param("prune", json!({"type": "boolean", "default": false}),
                    "Also delete the resources of the file's kinds that the file does not list."),
                {"name": "If-Match", "in": "header", "required": false,
                 "description": "`\"<revision>\"`: apply only if the global revision is still this one (412 otherwise), e.g. the revision of a dry run that was reviewed.",
                 "schema": {"type": "string", "pattern": REVISION_ETAG}},
            ],
            "requestBody": {
                "required": true,
                "description": "The declarative file, as YAML or JSON (the same document either way).",
                "content": {
                    "application/yaml": {"schema": schema_ref("DeclarativeFile")},
                    "application/json": {"schema": schema_ref("DeclarativeFile")},
                },
            },
            "responses": responses(ok("200", "The changes (made, or that would be made on a dry run).", schema_ref("ApplyResult")),
                &["400", "401", "409", "412", "413", "415"]),
        }),
        Op::List(kind) => json!({
            "tags": ["resources"],
            "operationId": format!("list{}", plural_camel(kind)),
            "summary": format!("List {}", kind.plural()),
            "parameters": [
                query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}), "Page size; values outside the range are refused (400)."),
                query_param("cursor", json!({"type": "string"}), "The `next` value of the previous page."),
            ],
            "responses": responses(ok("200", "One page, sorted by name.", schema_ref(&format!("{}List", camel(kind)))), &["400", "401"]),
        }),
        Op::Create(kind) => json!({
            "tags": ["resources"],
            "operationId": format!("create{}", camel(kind)),
            "summary": format!("Create a {kind}"),
            "requestBody": json_body(schema_name(kind), true),
            "responses": responses(written(kind, "201", "Created."), &["400", "401", "409", "413", "415"]),
        }),
        Op::Get(kind) => get_op(kind, format!("get{}", camel(kind)), vec![name()]),
        Op::GetGlobalPolicy => get_op(kind_global(), "getGlobalPolicy".into(), vec![]),
        Op::Put(kind) => put_op(kind, format!("put{}", camel(kind)), vec![name()]),
        Op::PutGlobalPolicy => put_op(kind_global(), "putGlobalPolicy".into(), vec![]),
        Op::Delete(kind) => json!({
            "tags": ["resources"],
            "operationId": format!("delete{}", camel(kind)),
            "summary": format!("Delete a {kind}"),
            "parameters": [name(), param_ref("IfMatch")],
            "responses": responses(ok("200", "Deleted.", schema_ref("Deleted")), &["400", "401", "404", "409", "412"]),
        }),
        Op::RegenerateKey => json!({
            "tags": ["resources"],
            "operationId": "regenerateSubscriptionKey",
            "summary": "Replace one key of a subscription with a new random key",
            "parameters": [
                name(),
                {"name": "key", "in": "query", "required": true, "schema": {"type": "string", "enum": ["primary", "secondary"]}},
                param_ref("IfMatch"),
            ],
            "responses": responses(written(Kind::Subscription, "200", "The subscription with its new key."), &["400", "401", "404", "412"]),
        }),
    }
}

fn kind_global() -> Kind {
    Kind::GlobalPolicy
}

fn plural_camel(kind: Kind) -> String {
    kind.plural()
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn get_op(kind: Kind, id: String, mut params: Vec<Value>) -> Value {
    params.push(json!({
        "name": "If-None-Match", "in": "header", "required": false,
        "description": "An ETag from an earlier GET: answers 304 when the resource is unchanged.",
        "schema": {"type": "string"},
    }));
    let mut headers = revision_header();
    headers["ETag"] = json!({"description": "`\"<revision that last changed the resource>\"`", "schema": {"type": "string"}});
    json!({
        "tags": ["resources"],
        "operationId": id,
        "summary": format!("Get a {kind}"),
        "parameters": params,
        "responses": responses(json!({
            "200": {"description": "The resource.", "headers": headers, "content": {"application/json": {"schema": schema_ref(schema_name(kind))}}},
            "304": {"description": "Not modified (If-None-Match)."},
        }), &["401", "404"]),
    })
}

fn put_op(kind: Kind, id: String, mut params: Vec<Value>) -> Value {
    params.push(param_ref("IfMatch"));
    params.push(param_ref("IfNoneMatch"));
    let mut ok = written(kind, "200", "Replaced (or unchanged).");
    ok["201"] = written(kind, "201", "Created.")["201"].clone();
    json!({
        "tags": ["resources"],
        "operationId": id,
        "summary": format!("Create or replace a {kind}"),
        "description": "The name comes from the path. The body is the resource without `name`; \
            a `name` equal to the path's is also accepted, so a resource read with GET can be sent back as it is.",
        "parameters": params,
        "requestBody": json_body(&put_body_name(kind), true),
        "responses": responses(ok, &["400", "401", "404", "409", "412", "413", "415"]),
    })
}

/// The schema of a PUT body: the resource without `name` (it is the path's), except for the
/// global policy, whose one name is in its schema.
fn put_body_name(kind: Kind) -> String {
    if kind == Kind::GlobalPolicy {
        schema_name(kind).to_owned()
    } else {
        format!("{}Body", schema_name(kind))
    }
}

fn written(kind: Kind, status: &str, description: &str) -> Value {
    let mut headers = revision_header();
    headers["ETag"] = json!({"schema": {"type": "string"}});
    if status == "201" {
        headers["Location"] = json!({"schema": {"type": "string"}});
    }
    json!({ status: {
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": schema_ref(&format!("{}Written", camel(kind)))}},
    }})
}

fn ok(status: &str, description: &str, schema: Value) -> Value {
    json!({ status: {
        "description": description,
        "headers": revision_header(),
        "content": {"application/json": {"schema": schema}},
    }})
}

fn revision_header() -> Value {
    json!({ REVISION_HEADER: {"description": "The global revision.", "schema": {"type": "integer"}} })
}

/// Adds the shared error responses to `success`.
fn responses(mut success: Value, errors: &[&str]) -> Value {
    for status in errors {
        let name = match *status {
            "400" => "BadRequest",
            "401" => "Unauthorized",
            "404" => "NotFound",
            "409" => "Conflict",
            "412" => "PreconditionFailed",
            "413" => "PayloadTooLarge",
            "415" => "UnsupportedMediaType",
            other => unreachable!("no shared response for {other}"),
        };
        success[*status] = json!({"$ref": format!("#/components/responses/{name}")});
    }
    success
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A shared parameter, inlined (utoipa and some generators do not resolve parameter `$ref`s).
fn param_ref(name: &str) -> Value {
    parameters()[name].clone()
}

fn parameters() -> Value {
    json!({
        "Name": {"name": "name", "in": "path", "required": true, "schema": schema_ref("Name")},
        "IfMatch": {
            "name": "If-Match", "in": "header", "required": false,
            "description": "`\"<revision>\"` from the resource's ETag: the write fails with 412 when the resource changed since; `*` requires it to exist. \
                With `If-None-Match: *` as well, the two can never both hold: 412.",
            "schema": {"type": "string", "pattern": format!("^\\*$|{REVISION_ETAG}")},
        },
        "IfNoneMatch": {
            "name": "If-None-Match", "in": "header", "required": false,
            "description": "`*`: create only; 409 when the resource exists.",
            "schema": {"type": "string", "enum": ["*"]},
        },
    })
}

fn query_param(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn json_body(schema: &str, required: bool) -> Value {
    json!({"required": required, "content": {"application/json": {"schema": schema_ref(schema)}}})
}

fn components(window: TokenWindow) -> Value {
    let mut schemas = resource_schemas();
    let s = schemas.as_object_mut().expect("object");
    s.extend(policy_schemas::components(&backend_url_pattern(), IPV6));
    for kind in crud_kinds() {
        let mut body = s[schema_name(kind)].clone();
        body["properties"]
            .as_object_mut()
            .expect("resource schemas have properties")
            .remove("name");
        body["required"]
            .as_array_mut()
            .expect("resource schemas list required fields")
            .retain(|f| f != "name");
        s.insert(put_body_name(kind), body);
    }
    for kind in Kind::ALL {
        let name = camel(kind);
        s.insert(
            format!("{name}List"),
            object(
                json!({
                    "kind": {"type": "string", "const": kind.plural()},
                    "items": {"type": "array", "items": schema_ref(&name)},
                    "next": {"type": ["string", "null"], "description": "Cursor of the next page; null on the last page."},
                    "revision": {"type": "integer"},
                }),
                &["kind", "items", "next", "revision"],
            ),
        );
        s.insert(
            format!("{name}Written"),
            object(
                json!({
                    "revision": {"type": "integer", "description": "The global revision after the write."},
                    "changed": {"type": "boolean", "description": "False when the body equalled the stored resource."},
                    "resource": schema_ref(&name),
                }),
                &["revision", "changed", "resource"],
            ),
        );
    }
    for (name, schema) in [
        (
            "Error",
            object(
                json!({
                    "error": {"type": "string", "description": "bad-request, unauthorized, not-found, conflict, precondition-failed, payload-too-large, unsupported-media-type, internal, ..."},
                    "message": {"type": "string"},
                    "problems": {"type": "array", "items": schema_ref("Problem")},
                }),
                &["error", "message"],
            ),
        ),
        (
            "Problem",
            object(
                json!({
                    "path": {"type": "string", "description": "Where: in a declarative file `apis[0] (orders).operations[1].method`; in a single-resource write, relative to the resource."},
                    "message": {"type": "string"},
                    "line": {"type": "integer", "minimum": 1, "description": "Line of the applied file where the field starts (1-based). Only on POST /api/v1/apply problems about resources of the file."},
                    "column": {"type": "integer", "minimum": 1, "description": "Column (1-based, in characters) of that line."},
                }),
                &["path", "message"],
            ),
        ),
        (
            "Revision",
            object(json!({"revision": {"type": "integer"}}), &["revision"]),
        ),
        (
            "Deleted",
            object(
                json!({"revision": {"type": "integer"}, "deleted": {"type": "string", "description": "`<kind>/<name>`"}}),
                &["revision", "deleted"],
            ),
        ),
        (
            "ApplyResult",
            object(
                json!({
                    "dry-run": {"type": "boolean"},
                    "revision": {"type": "integer", "description": "The revision after the apply (unchanged on a dry run or when nothing changed)."},
                    "changes": {"type": "array", "items": schema_ref("PlannedChange")},
                    "unchanged": {"type": "integer", "description": "Resources of the file already as desired."},
                }),
                &["dry-run", "revision", "changes", "unchanged"],
            ),
        ),
        (
            "PlannedChange",
            object(
                json!({
                    "action": {"type": "string", "enum": ["create", "update", "delete"]},
                    "key": {"type": "string", "description": "`<kind plural>/<name>`"},
                    "kind": {"type": "string", "enum": Kind::ALL.map(|k| serde_json::to_value(k).expect("kinds serialise"))},
                    "name": {"type": "string"},
                }),
                &["action", "key", "kind", "name"],
            ),
        ),
        ("DeclarativeFile", declarative_file_schema()),
        ("TokenRequest", token_request_schema(window)),
        (
            "TokenResponse",
            object(
                json!({
                    "value": {"type": "string", "description": "`GatewayKey <gateway>&<expiry>&<signature>`"},
                    "expiry": {"type": "string", "format": "date-time"},
                    "key": {"type": "string", "enum": ["primary", "secondary"]},
                    "config-signing-keys": {"type": "array", "items": {"type": "string"}, "description": "The control plane's config signing key (`ed25519:<base64>`), for the gateway setting `control_plane.config_signing_keys`."},
                }),
                &["value", "expiry", "key", "config-signing-keys"],
            ),
        ),
        (
            "SigningKeys",
            object(
                json!({
                    "active": {"type": "string", "description": "`ed25519:<base64>`: the key configurations are signed with now."},
                    "keys": {"type": "array", "items": object(
                        json!({
                            "key": {"type": "string"},
                            "created-at": {"type": "string", "format": "date-time"},
                            "endorsed-by": {"type": "string", "description": "The key this one replaced (empty for the first)."},
                        }),
                        &["key", "created-at", "endorsed-by"],
                    )},
                }),
                &["active", "keys"],
            ),
        ),
        (
            "GatewayKeys",
            object(
                json!({"primary": {"type": "string"}, "secondary": {"type": "string"}}),
                &["primary", "secondary"],
            ),
        ),
        (
            "RegenerateKeyRequest",
            strict(
                json!({"key": {"type": "string", "enum": ["primary", "secondary"]}}),
                &["key"],
            ),
        ),
        ("InstanceStatus", instance_status_schema()),
        ("TelemetrySummary", telemetry_schema()),
        ("AnalyticsStats", analytics_stats_schema()),
        ("AnalyticsReport", analytics_report_schema()),
    ] {
        s.insert(name.to_owned(), schema);
    }
    let error = |description: &str| json!({"description": description, "content": {"application/json": {"schema": schema_ref("Error")}}});
    json!({
        "securitySchemes": {
            "adminToken": {"type": "http", "scheme": "bearer", "description": "The admin token (`admin.token`, or `<data_dir>/admin-token`)."},
        },
        "responses": {
            "BadRequest": error("Invalid request; `problems` lists every problem found."),
            "Unauthorized": error("Missing or wrong admin token."),
            "NotFound": error("No such resource."),
            "Conflict": error("Already exists, still referred to by other resources, or the change would make the stored configuration inconsistent (a reference to a missing resource, a route another API serves): `problems` lists every problem."),
            "PreconditionFailed": error("If-Match did not match the resource's current revision."),
            "MethodNotAllowed": {
                "description": "The path exists, but not with this method; `Allow` lists its methods.",
                "headers": {"Allow": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": schema_ref("Error")}},
            },
            "PayloadTooLarge": error("The body is larger than 1 MiB."),
            "UnsupportedMediaType": error("Wrong Content-Type."),
        },
        "schemas": schemas,
    })
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required})
}

/// A closed object (unknown fields are rejected, as the model's serde types do).
fn strict(properties: Value, required: &[&str]) -> Value {
    let mut o = object(properties, required);
    o["additionalProperties"] = Value::Bool(false);
    o
}

/// An object that may also be `null` (an optional setting left out).
fn nullable_object(mut schema: Value, description: &str) -> Value {
    schema["type"] = json!(["object", "null"]);
    schema["description"] = json!(description);
    schema
}

fn string() -> Value {
    json!({"type": "string"})
}

fn opt_string() -> Value {
    json!({"type": ["string", "null"]})
}

/// What `check_url` accepts, [`BACKEND_URL`] with its parts.
fn backend_url_pattern() -> String {
    BACKEND_URL
        .replace("PORT", PORT)
        .replace("IPV6", IPV6)
        .replace("WS", policy_schemas::WS_CHARS)
}

/// A backend is one URL or a pool of members, never both nor neither; the pool settings are
/// for pools only (what `check_backend` says, as a schema). An empty `url` is no url.
fn backend_schema(mut schema: Value) -> Value {
    schema["oneOf"] = json!([
        {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string", "minLength": 1},
            "members": {"type": "array", "maxItems": 0},
            "load-balancing": {"type": "null"},
            "passive-health": {"type": "null"},
            "health-check": {"type": "null"},
            "circuit-breaker": {"type": "null"},
        }},
        {"type": "object", "required": ["members"], "properties": {
            "members": {"type": "array", "minItems": 1},
            "url": {"type": "string", "maxLength": 0},
        }},
    ]);
    schema
}

fn resource_schemas() -> Value {
    use policy_schemas::WS_CHARS;
    let name = || schema_ref("Name");
    let policies = || schema_ref("PolicyDocument");
    let display = || json!({"type": "string", "default": ""});
    let hostname = || json!({"type": "string", "maxLength": 253, "pattern": HOSTNAME});
    let mut doc = Map::new();
    for section in Section::ALL {
        doc.insert(
            section.as_str().to_owned(),
            policy_schemas::section(section),
        );
    }
    let mut policy_document = strict(Value::Object(doc), &[]);
    policy_document["type"] = json!(["object", "null"]);
    policy_document["description"] = json!("null is an empty document.");
    json!({
        "Name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,79}$"},
        "PolicyDocument": policy_document,
        "NamedValue": strict(json!({
            "name": name(),
            "value": {"type": "string", "default": "", "description": format!("Shown as `{SECRET_MASK}` when secret; send the mask back to keep the stored value.")},
            "secret": {"type": "boolean", "default": false},
        }), &["name"]),
        "Backend": backend_schema(strict(json!({
            "name": name(),
            "url": {
                "type": "string",
                "description": "http(s)://host[:port][/path], no query or fragment; or any text with {{named-value}} references, checked after substitution (409 when a referenced named value is missing or the result is not such a URL). Empty or absent for a pool.",
                "anyOf": [{"type": "string", "maxLength": 0}, {"type": "string", "pattern": backend_url_pattern()}],
            },
            "connect-timeout-ms": {"type": "integer", "minimum": 1, "maximum": 600_000, "default": 5000},
            "request-timeout-ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000, "default": 30000},
            "tls": schema_ref("BackendTls"),
            "protocol": {"type": "string", "enum": ["auto", "http1", "h2"], "default": "auto",
                "description": "auto: HTTP/2 when an https backend picks it by ALPN, else HTTP/1.1; http1: HTTP/1.1 only; h2: HTTP/2 only (h2c with prior knowledge on http://), as gRPC backends need."},
            "members": {"type": "array", "maxItems": outpost_model::validate::MAX_POOL_MEMBERS, "uniqueItems": true, "items": schema_ref("BackendMember"),
                "description": "A pool: set either url or members. The pool settings below apply to pools only."},
            "load-balancing": {"type": ["string", "null"], "enum": ["round-robin", "least-request", null],
                "description": "round-robin (smooth, weighted; the default) or least-request (power of two choices, drawn by weight, over requests in flight)."},
            "passive-health": schema_ref("PassiveHealth"),
            "health-check": schema_ref("HealthCheck"),
            "circuit-breaker": schema_ref("CircuitBreaker"),
        }), &["name"])),
        "BackendMember": strict(json!({
            "url": {"type": "string", "pattern": backend_url_pattern(),
                "description": "As a backend's url."},
            "weight": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
        }), &["url"]),
        "PassiveHealth": nullable_object(strict(json!({
            "consecutive-failures": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 5,
                "description": "Failures in a row that eject a member; 0 turns passive health off."},
            "ejection-ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000, "default": 10000,
                "description": "The first ejection's length, doubled for each ejection that follows without a success between."},
            "max-ejection-ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000, "default": 300_000},
            "failure-statuses": {"type": "array", "items": {"type": "integer", "minimum": 100, "maximum": 599},
                "default": [502, 503, 504], "description": "Backend statuses that count as failures, besides connection failures and timeouts."},
        }), &[]), "Defaults apply to a pool without it."),
        "HealthCheck": nullable_object(strict(json!({
            "path": {"type": "string", "pattern": "^/[^#\\s]*$", "description": "Appended to each member's base URL."},
            "interval-ms": {"type": "integer", "minimum": 100, "maximum": 3_600_000, "default": 5000},
            "timeout-ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000, "default": 2000, "description": "Cut to interval-ms when above it."},
            "healthy-threshold": {"type": "integer", "minimum": 1, "maximum": 100, "default": 2},
            "unhealthy-threshold": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3},
        }), &["path"]), "Active checks: off when null."),
        "CircuitBreaker": nullable_object(strict(json!({
            "error-rate-percent": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
            "window-ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000, "default": 10000},
            "min-requests": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 20},
            "open-ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000, "default": 30000,
                "description": "How long an open breaker waits before letting one probe through (half-open)."},
        }), &[]), "A breaker per member: off when null."),
        "BackendTls": strict(json!({
            "verify": {"type": "boolean", "default": true},
            "ca-pem": {"type": ["string", "null"], "pattern": r"^[\s\S]*(-----BEGIN CERTIFICATE-----|\{\{[\s\S]*\}\})[\s\S]*$",
                "description": "PEM certificates, or text with {{named-value}} references."},
            "server-name": opt_string(),
        }), &[]),
        "Api": strict(json!({
            "name": name(),
            "display-name": display(),
            "path": {"type": "string", "default": "", "description": "Path suffix without leading or trailing '/'; empty is the root.",
                "pattern": format!("^([^/{WS_CHARS}{{}}?#*]([^{WS_CHARS}{{}}?#*]*[^/{WS_CHARS}{{}}?#*])?)?$")},
            "hostnames": {"type": "array", "items": hostname()},
            "backend": {"allOf": [name()], "description": "Name of a backend (409 when there is none)."},
            "subscription-required": {"type": "boolean", "default": true},
            "version": {"oneOf": [{"type": "null"}, schema_ref("ApiVersion")]},
            "operations": {"type": "array", "items": schema_ref("Operation")},
            "policies": policies(),
            "access-log": {"type": "boolean", "default": true, "description": "Write this API's requests to the gateways' access log (when [access_log] is enabled there)."},
        }), &["name", "backend"]),
        "ApiVersion": {
            "allOf": [strict(json!({
                "name": {"type": "string", "pattern": "^[^/?# ]+$"},
                "scheme": {"type": "string", "enum": ["segment", "header", "query"], "default": "segment"},
                "parameter": {"type": "string", "default": "api-version"},
            }), &["name"])],
            // A header or query version needs the parameter's name.
            "if": {"properties": {"scheme": {"enum": ["header", "query"]}}, "required": ["scheme"]},
            "then": {"properties": {"parameter": {"minLength": 1}}},
        },
        "Operation": strict(json!({
            "name": name(),
            "method": {"type": "string", "description": "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS, TRACE or * (any), in any case.",
                "pattern": format!("^({})$", OPERATION_METHODS.iter().map(|m| any_case(m)).collect::<Vec<_>>().join("|"))},
            "url-template": {"type": "string", "description": "Starts with '/'; `{param}` segments (each name once), optional trailing `{*rest}`.",
                "minLength": 1,
                "pattern": r"^(/([^{}?# /]*|\{[A-Za-z0-9_-]+\}))*(/\{\*[A-Za-z0-9_-]+\})?$"},
            "allow-encoded-slashes": {"type": "boolean", "default": false, "description": "Let template parameters match segments with an encoded '/' or '\\' (%2F, %5C)."},
            "policies": policies(),
        }), &["name", "method", "url-template"]),
        "Product": strict(json!({
            "name": name(),
            "display-name": display(),
            "apis": {"type": "array", "items": schema_ref("Name"), "description": "Names of APIs (409 when one is missing)."},
            "subscription-required": {"type": "boolean", "default": true},
            "policies": policies(),
        }), &["name"]),
        "Subscription": strict(json!({
            "name": name(),
            "display-name": display(),
            "scope": schema_ref("SubscriptionScope"),
            "state": {"type": "string", "enum": ["active", "suspended", "expired"], "default": "active"},
            "primary-key": {"type": "string", "default": "", "pattern": "^([!-~]{32,256})?$",
                "description": "32-256 printable ASCII characters; empty: generated (or kept on update). Differs from the secondary key."},
            "secondary-key": {"type": "string", "default": "", "pattern": "^([!-~]{32,256})?$"},
            "expires-at": {"type": ["string", "null"], "format": "date-time", "pattern": DATE_TIME},
        }), &["name", "scope"]),
        "SubscriptionScope": {"oneOf": [
            {"type": "string", "const": "all-apis"},
            strict(json!({"product": name()}), &["product"]),
            strict(json!({"api": name()}), &["api"]),
        ]},
        "Gateway": strict(json!({
            "name": name(),
            "location": display(),
            "description": display(),
            "apis": {"type": "array", "items": schema_ref("Name"), "uniqueItems": true, "description": "Names of APIs (409 when one is missing)."},
            "hostnames": {"type": "array", "items": schema_ref("GatewayHostname")},
        }), &["name"]),
        "GatewayHostname": {
            "allOf": [
                strict(json!({
                    "hostname": hostname(),
                    "certificate-pem": opt_string(),
                    "key-pem": opt_string(),
                    "client-certificate": {"type": "string", "enum": ["none", "optional", "required"], "default": "none",
                        "description": "Ask TLS clients for a certificate (mutual TLS); needs certificate-pem. required: a client without a valid one fails the handshake."},
                    "client-ca-pem": {"type": ["string", "null"],
                        "description": "CA certificates (PEM, or {{named-value}} references) client certificates must chain to. Needed for required; optional without CAs takes any certificate, untrusted."},
                }), &["hostname"]),
                // A certificate goes with its key (null is none).
                {"anyOf": [
                    {"type": "object", "required": ["certificate-pem", "key-pem"],
                     "properties": {"certificate-pem": {"type": "string"}, "key-pem": {"type": "string"}}},
                    {"type": "object",
                     "properties": {"certificate-pem": {"type": "null"}, "key-pem": {"type": "null"}}},
                ]},
                // Asking for client certificates needs a handshake of the hostname's own.
                {"type": "object", "if": {"required": ["client-certificate"], "properties": {"client-certificate": {"enum": ["optional", "required"]}}},
                 "then": {"required": ["certificate-pem"], "properties": {"certificate-pem": {"type": "string"}}}},
                // required: the CAs client certificates must chain to.
                {"type": "object", "if": {"required": ["client-certificate"], "properties": {"client-certificate": {"const": "required"}}},
                 "then": {"required": ["client-ca-pem"], "properties": {"client-ca-pem": {"type": "string"}}}},
                // CAs only where certificates are asked for, and not blank.
                {"type": "object", "if": {"required": ["client-ca-pem"], "properties": {"client-ca-pem": {"type": "string"}}},
                 "then": {"required": ["client-certificate"],
                          "properties": {"client-certificate": {"enum": ["optional", "required"]},
                                         "client-ca-pem": {"pattern": format!("[^{}]", super::policy_schemas::WS_CHARS)}}}},
            ],
        },
        "GlobalPolicy": strict(json!({
            "name": {"type": ["string", "null"], "enum": ["global", null], "default": "global", "description": "null is the default."},
            "policies": policies(),
        }), &[]),
    })
}

fn declarative_file_schema() -> Value {
    let mut props = json!({
        "apiVersion": {"type": "string", "const": outpost_model::document::API_VERSION},
        "policies": schema_ref("PolicyDocument"),
    });
    for kind in crud_kinds() {
        props[kind.plural()] = json!({"type": ["array", "null"], "items": schema_ref(schema_name(kind)), "description": "null is an empty section."});
    }
    strict(props, &["apiVersion"])
}

fn token_request_schema(window: TokenWindow) -> Value {
    let max_secs = window.max_lifetime_days.saturating_mul(86_400);
    let expiry = match expiry_pattern(window) {
        Some(pattern) => {
            json!({"type": ["string", "null"], "format": "date-time", "pattern": pattern,
            "description": "In the future, at most `tokens.max_lifetime_days` ahead (400 otherwise); minute precision. \
                The pattern lists the dates from 3 days after this document was served to 2 days before the maximum, \
                which the server accepts for as long as a client uses the document; the server also accepts \
                the days in between."})
        }
        None => json!({"type": "null",
            "description": "The lifetime is too short for this document to name dates the server will still accept when a request comes: \
                use `lifetime-secs` (an expiry in the future, at most `tokens.max_lifetime_days` ahead, is accepted)."}),
    };
    let mut s = strict(
        json!({
            "key": {"type": "string", "enum": ["primary", "secondary"], "default": "primary"},
            "expiry": expiry,
            "lifetime-secs": {"type": ["integer", "null"], "minimum": 60, "maximum": max_secs,
                "description": "At least a minute, at most `tokens.max_lifetime_days` (400 otherwise)."},
        }),
        &[],
    );
    // One or the other (null is absent).
    s["not"] = json!({
        "properties": {"expiry": {"type": "string"}, "lifetime-secs": {"type": "integer"}},
        "required": ["expiry", "lifetime-secs"],
    });
    s
}

/// RFC 3339 date-times (as [`DATE_TIME`]) on the dates the server accepts as an expiry from
/// 3 days after `now` to 2 days before the longest lifetime: the margins cover any UTC offset
/// (a date-time's day is at most a day off its instant's in UTC) and a day of use of the
/// document. `None` when no date is left.
fn expiry_pattern(window: TokenWindow) -> Option<String> {
    let days = i64::try_from(window.max_lifetime_days).ok()?;
    let first = (window.now + chrono::Duration::days(3)).date_naive();
    let last = (window.now + chrono::Duration::days(days)).date_naive() - chrono::Duration::days(2);
    if first > last {
        return None;
    }
    let mut months: Vec<(String, Vec<String>)> = Vec::new();
    for date in first.iter_days().take_while(|d| *d <= last) {
        let month = date.format("%Y-%m").to_string();
        let day = date.format("%d").to_string();
        match months.last_mut() {
            Some((m, days)) if *m == month => days.push(day),
            _ => months.push((month, vec![day])),
        }
    }
    let dates: Vec<String> = months
        .into_iter()
        .map(|(month, days)| format!("{month}-({})", days.join("|")))
        .collect();
    let time = DATE_TIME
        .split_once('T')
        .map(|(_, t)| t)
        .expect("DATE_TIME has a time part");
    Some(format!("^({})T{time}", dates.join("|")))
}

fn instance_status_schema() -> Value {
    let int = || json!({"type": "integer"});
    let time = || json!({"type": "string", "format": "date-time"});
    object(
        json!({
            "gateway": string(),
            "instance-id": string(),
            "hostname": string(),
            "version": string(),
            "applied-revision": int(),
            "config-hash": string(),
            "token-expiry": time(),
            "started-at": time(),
            "config-source": {"type": "string", "enum": ["control-plane", "backup", "offline"], "description": "Where the configuration the instance serves now came from (what its /readyz says)."},
            "redis": {"type": "string", "enum": ["none", "connected", "disconnected"]},
            "last-seen": time(),
            "remote-addr": opt_string(),
            "connection": {"type": "string", "enum": ["connected", "stale", "disconnected", "stopped"], "description": "`stopped`: its last heartbeat said it was stopping."},
            "stopped-at": {"type": ["string", "null"], "format": "date-time", "description": "When it stopped gracefully; null while it runs."},
            "sync": {"type": "string", "enum": ["in-sync", "behind"]},
            "last-seen-secs": int(),
            "token-expires-in-secs": int(),
            "certificates": {
                "type": "array",
                "description": "The HTTPS certificates the instance serves, soonest expiry first.",
                "items": object(json!({"hostname": string(), "not-after": time()}), &["hostname", "not-after"]),
            },
            "pool-members": {
                "type": "array",
                "description": "Every backend pool member as the instance sees it.",
                "items": object(json!({
                    "backend": string(),
                    "member": {"type": "string", "description": "The member's base URL."},
                    "state": {"type": "string", "enum": ["healthy", "ejected", "failing-checks", "breaker-open", "breaker-half-open"]},
                }), &["backend", "member", "state"]),
            },
            "certificate-expires-in-secs": {"type": ["integer", "null"], "description": "Seconds until the first of its certificates lapses (negative once expired); null when it serves none."},
            "certificate-expiring-soon": {"type": "boolean", "description": "A certificate lapses within 14 days, or has."},
            "ready": {"type": ["boolean", "null"], "description": "Whether the instance's /readyz said ready in its last heartbeat; null from a gateway of a release that does not report it."},
            "not-ready-reason": {"type": ["string", "null"], "description": "Why it is not ready (what its /readyz says: no configuration loaded yet, draining); null when ready or not reported."},
        }),
        &[
            "gateway",
            "instance-id",
            "applied-revision",
            "config-hash",
            "last-seen",
            "connection",
            "sync",
        ],
    )
}

fn opt_num() -> Value {
    json!({"type": ["number", "null"]})
}

fn analytics_stats_properties() -> Value {
    let int = || json!({"type": "integer", "minimum": 0});
    let ms = |d: &str| json!({"type": ["number", "null"], "description": format!("{d}, milliseconds (microsecond precision); null without requests.")});
    json!({
        "requests": int(),
        "errors": {"type": "integer", "minimum": 0, "description": "Answers with a 5xx status."},
        "error-rate": {"type": "number", "minimum": 0, "maximum": 1, "description": "errors / requests; 0 without requests."},
        "cache-hits": int(),
        "request-bytes": int(),
        "response-bytes": int(),
        "avg-ms": ms("Mean duration"),
        "avg-backend-ms": ms("Mean time waiting for the backend"),
        "max-ms": ms("Longest duration"),
        "p50-ms": ms("Median duration, from the histogram"),
        "p95-ms": ms("95th percentile, from the histogram"),
        "p99-ms": ms("99th percentile, from the histogram"),
    })
}

const STATS_REQUIRED: [&str; 12] = [
    "requests",
    "errors",
    "error-rate",
    "cache-hits",
    "request-bytes",
    "response-bytes",
    "avg-ms",
    "avg-backend-ms",
    "max-ms",
    "p50-ms",
    "p95-ms",
    "p99-ms",
];

fn analytics_stats_schema() -> Value {
    object(analytics_stats_properties(), &STATS_REQUIRED)
}

fn analytics_report_schema() -> Value {
    let mut group = analytics_stats_properties();
    let keys = json!({
        "minute": {"type": "string", "format": "date-time", "description": "`group_by=minute`: the minute's start."},
        "gateway": string(),
        "api": {"type": "string", "description": "`group_by=api` or `operation`."},
        "operation": string(),
        "product": {"type": "string", "description": "Empty: requests without a subscription."},
        "subscription": {"type": "string", "description": "Empty: requests without a subscription."},
        "status": {"type": "integer"},
    });
    for (k, v) in keys.as_object().expect("an object") {
        group[k] = v.clone();
    }
    json!({
        "type": "object",
        "properties": {
            "from": {"type": "string", "format": "date-time"},
            "to": {"type": "string", "format": "date-time"},
            "group-by": {"type": "string", "enum": GroupBy::ALL.map(GroupBy::as_str)},
            "total": schema_ref("AnalyticsStats"),
            "groups": {"type": "array", "items": object(group, &STATS_REQUIRED),
                "description": "One per group with requests, ordered by the group's values; each has the grouped dimensions' values (`api` and `operation` for `operation`)."},
        },
        "required": ["from", "to", "group-by", "total", "groups"],
    })
}

fn telemetry_schema() -> Value {
    let int = || json!({"type": "integer"});
    let num = || json!({"type": "number"});
    let time = || json!({"type": "string", "format": "date-time"});
    json!({
        "type": "object",
        "properties": {
            "from": time(),
            "to": time(),
            "minutes": int(),
            "gateway": opt_string(),
            "requests": int(),
            "errors": {"type": "integer", "description": "Answers with a 5xx status."},
            "apis": {"type": "array", "items": object(json!({
                "api": string(),
                "requests": int(),
                "errors": int(),
                "avg-duration-ms": num(),
                "max-duration-ms": num(),
                "avg-backend-duration-ms": num(),
                "p50-ms": opt_num(),
                "p95-ms": opt_num(),
                "p99-ms": opt_num(),
                "cache-hits": int(),
                "request-bytes": int(),
                "response-bytes": int(),
                "statuses": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "Request count per status code."},
            }), &["api", "requests", "errors"])},
        },
        "required": ["from", "to", "requests", "errors", "apis"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_model::Resource;
    use std::collections::BTreeSet;

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        &doc["components"]["schemas"][name]
    }

    /// The properties of a schema, or of its first `allOf` part (schemas with cross-field
    /// rules keep their fields there).
    fn props(s: &Value) -> BTreeSet<String> {
        let s = if s["allOf"].is_array() {
            &s["allOf"][0]
        } else {
            s
        };
        s["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no properties: {s}"))
            .keys()
            .cloned()
            .collect()
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    /// One of each kind with every optional field set, so every field serialises.
    fn samples() -> Vec<(Kind, Value)> {
        vec![
            (
                Kind::NamedValue,
                json!({"name": "n", "value": "v", "secret": true}),
            ),
            (
                Kind::Backend,
                json!({"name": "b", "url": "http://x", "tls": {"ca-pem": "{{ca}}", "server-name": "x"}}),
            ),
            (
                Kind::Api,
                json!({"name": "a", "backend": "b", "version": {"name": "v1"},
                    "operations": [{"name": "o", "method": "GET", "url-template": "/"}]}),
            ),
            (Kind::Product, json!({"name": "p"})),
            (
                Kind::Subscription,
                json!({"name": "s", "scope": {"product": "p"}, "expires-at": "2030-01-01T00:00:00Z"}),
            ),
            (
                Kind::Gateway,
                json!({"name": "g", "hostnames": [{"hostname": "h", "certificate-pem": "c", "key-pem": "k",
                    "client-certificate": "optional", "client-ca-pem": "{{ca}}"}]}),
            ),
            (Kind::GlobalPolicy, json!({})),
        ]
    }

    #[test]
    fn resource_schemas_match_the_model() {
        let doc = document();
        for (kind, sample) in samples() {
            let name = schema_name(kind);
            let s = schema(&doc, name);
            let full = Resource::from_json(kind, sample.clone()).unwrap().to_json();
            assert_eq!(props(s), keys(&full), "{name} properties");
            // Every documented required field is required by the model, and only those.
            let required: BTreeSet<String> = s["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            for field in keys(&full) {
                let mut v = full.clone();
                v.as_object_mut().unwrap().remove(&field);
                let parses = Resource::from_json(kind, v).is_ok();
                assert_eq!(
                    !parses,
                    required.contains(&field),
                    "{name}.{field}: required in the model = {}",
                    !parses
                );
            }
            // Unknown fields are refused by the model and closed in the schema.
            assert_eq!(s["additionalProperties"], json!(false), "{name}");
            let mut extra = full.clone();
            extra["bogus"] = json!(1);
            assert!(Resource::from_json(kind, extra).is_err());
        }
        // Nested objects.
        let api = Resource::from_json(Kind::Api, samples()[2].1.clone())
            .unwrap()
            .to_json();
        assert_eq!(
            props(schema(&doc, "Operation")),
            keys(&api["operations"][0])
        );
        assert_eq!(props(schema(&doc, "ApiVersion")), keys(&api["version"]));
        let backend = Resource::from_json(Kind::Backend, samples()[1].1.clone())
            .unwrap()
            .to_json();
        assert_eq!(props(schema(&doc, "BackendTls")), keys(&backend["tls"]));
        let pool = Resource::from_json(
            Kind::Backend,
            json!({"name": "p", "members": [{"url": "http://a"}], "passive-health": {},
                "health-check": {"path": "/h"}, "circuit-breaker": {}}),
        )
        .unwrap()
        .to_json();
        assert_eq!(props(schema(&doc, "Backend")), keys(&pool));
        assert_eq!(
            props(schema(&doc, "BackendMember")),
            keys(&pool["members"][0])
        );
        for (name, field) in [
            ("PassiveHealth", "passive-health"),
            ("HealthCheck", "health-check"),
            ("CircuitBreaker", "circuit-breaker"),
        ] {
            assert_eq!(props(schema(&doc, name)), keys(&pool[field]), "{name}");
        }
        let gw = Resource::from_json(Kind::Gateway, samples()[5].1.clone())
            .unwrap()
            .to_json();
        assert_eq!(
            props(schema(&doc, "GatewayHostname")),
            keys(&gw["hostnames"][0])
        );
        assert_eq!(
            props(schema(&doc, "PolicyDocument")),
            keys(&serde_json::to_value(outpost_model::PolicyDocument::default()).unwrap())
        );
    }

    #[test]
    fn every_route_is_documented_once_with_its_parameters() {
        let doc = document();
        for route in routes() {
            let op = &doc["paths"][&route.path][route.method.as_str().to_ascii_lowercase()];
            assert!(
                op.is_object(),
                "{} {} undocumented",
                route.method,
                route.path
            );
            let has_name = route.path.contains("{name}");
            let refs_name = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p == &param_ref("Name")));
            assert_eq!(has_name, refs_name, "{} {}", route.method, route.path);
        }
        let ops: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(ops, routes().len() + gateway_admin_routes().len());
        let ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap())
            .collect();
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "operation ids are unique");
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(v: &Value, doc: &Value) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let ptr = r.strip_prefix('#').expect("local ref");
                        assert!(doc.pointer(ptr).is_some(), "dangling {r}");
                    }
                    map.values().for_each(|c| walk(c, doc));
                }
                Value::Array(a) => a.iter().for_each(|c| walk(c, doc)),
                _ => {}
            }
        }
        let doc = document();
        walk(&doc, &doc);
    }

    #[test]
    fn patterns_agree_with_the_model_checks() {
        let re = |p: &str| regex::Regex::new(p).unwrap();
        let host = re(HOSTNAME);
        for ok in ["a", "*.example.com", "api-1.example.com", "x.*"] {
            assert!(host.is_match(ok), "{ok}");
        }
        for bad in ["", "A.example.com", "a..b", "a_b", "a.", "é"] {
            assert!(!host.is_match(bad), "{bad}");
        }
        let url = re(&backend_url_pattern());
        for ok in [
            "http://a",
            "https://a:8443/p/q",
            "http://[::1]:80/x",
            "http://:80",
            "{{base}}/x",
        ] {
            assert!(url.is_match(ok), "{ok}");
        }
        for bad in [
            "",
            "ftp://a",
            "http://",
            "http://a:",
            "http://a:65536",
            "http://a?q",
            "http://a b",
            "http://[0]",
        ] {
            assert!(!url.is_match(bad), "{bad}");
        }
        let etag = re(REVISION_ETAG);
        for ok in ["\"12\"", "W/\"7\"", "3"] {
            assert!(etag.is_match(ok), "{ok}");
        }
        for bad in ["", "\"\"", "\"x\"", "+1", "\"12"] {
            assert!(!etag.is_match(bad), "{bad}");
        }
        let method =
            document()["components"]["schemas"]["Operation"]["properties"]["method"]["pattern"]
                .as_str()
                .unwrap()
                .to_owned();
        let method = re(&method);
        assert!(method.is_match("GET") && method.is_match("get") && method.is_match("*"));
        assert!(!method.is_match("FETCH") && !method.is_match(""));
    }

    /// The token request names the expiry dates the server accepts for a day of use.
    #[test]
    fn token_expiries_are_the_window_ahead() {
        use chrono::TimeZone;
        let now = Utc.with_ymd_and_hms(2024, 2, 20, 23, 30, 0).unwrap();
        let window = TokenWindow {
            max_lifetime_days: 30,
            now,
        };
        let doc = document_for(window);
        let request = schema(&doc, "TokenRequest");
        let pattern = re_of(&request["properties"]["expiry"]["pattern"]);
        for ok in [
            "2024-02-23T00:00:00Z",
            "2024-02-29T12:00:00+05:30",
            "2024-03-19T23:59:59.5-23:59",
        ] {
            assert!(pattern.is_match(ok), "{ok}");
        }
        for bad in [
            "2024-02-22T23:59:59Z",
            "2024-03-20T00:00:00Z",
            "2023-02-25T00:00:00Z",
            "2024-02-30T00:00:00Z",
        ] {
            assert!(!pattern.is_match(bad), "{bad}");
        }
        // Every described date is accepted by the server a day later, in any offset.
        let later = now + chrono::Duration::days(1);
        for date in ["2024-02-23T00:00:00+23:59", "2024-03-19T23:59:00-23:59"] {
            let expiry: chrono::DateTime<Utc> = chrono::DateTime::parse_from_rfc3339(date)
                .unwrap()
                .with_timezone(&Utc);
            let req = super::super::tokens::TokenRequest {
                key: super::super::store::KeyType::Primary,
                expiry: Some(expiry),
                lifetime_secs: None,
            };
            assert!(
                super::super::tokens::requested_expiry(&req, later, 30).is_ok(),
                "{date}"
            );
        }
        assert_eq!(
            request["properties"]["lifetime-secs"]["maximum"],
            json!(30 * 86_400)
        );
        // Too short a lifetime for any date: only `lifetime-secs`.
        let short = document_for(TokenWindow {
            max_lifetime_days: 4,
            now,
        });
        assert_eq!(
            schema(&short, "TokenRequest")["properties"]["expiry"]["type"],
            json!("null")
        );
    }

    fn re_of(pattern: &Value) -> regex::Regex {
        regex::Regex::new(pattern.as_str().unwrap()).unwrap()
    }

    #[test]
    fn document_is_well_formed_openapi() {
        let doc = document();
        let parsed: utoipa::openapi::OpenApi =
            serde_json::from_value(doc.clone()).expect("utoipa reads the document");
        assert_eq!(
            parsed.paths.paths.len(),
            doc["paths"].as_object().unwrap().len()
        );
    }
}
