//! The management REST API under `/api/v1` (admin listener).
//!
//! One table, [`super::routes`], lists every route this module serves; the router
//! ([`configure_public`], [`configure_protected`]) and the OpenAPI document ([`super::openapi`])
//! are both built from it, so the document cannot forget a route nor describe one that does not exist.
//!
//! Conventions:
//! - Resource bodies are the model's JSON (kebab-case), pruned of empty values; secret named
//!   values are shown as [`SECRET_MASK`], and sending the mask back keeps the stored value.
//!   Only `GET /export?include_secrets=true` shows them.
//! - `POST /apply` is additive: it creates and updates what the file lists and deletes nothing,
//!   unless `prune=true`, which also deletes the resources of the kinds the file has a section
//!   for that the file does not list (see [`plan`]).
//! - `GET /{kind}/{name}` answers with `ETag: "<revision that last changed the resource>"`;
//!   writes honour `If-Match` (412 when stale) and `If-None-Match: *` (409 when it exists).
//! - Every answer carries the global revision in `X-Outpost-Revision`; answers to writes also
//!   carry it in the body (`{"revision": N, ...}`).
//! - Errors are [`ApiError`]s: `{"error", "message", "problems": [{path, message}]}`.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use outpost_model::document::Document;
use outpost_model::prune::prune;
use outpost_model::resources::{GLOBAL_POLICY_NAME, GlobalPolicy, SECRET_MASK};
use outpost_model::validate::{check_resource, parse_resource};
use outpost_model::{Kind, Problems, Resource, ResourceKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::ApiError;
use super::routes::{
    DEFAULT_PAGE, MAX_PAGE, Op, PREFIX, REVISION_HEADER, Route, gateway_admin_routes, routes,
};
use super::store::{Committed, Precondition, State, Store, StoreError, Write, fill_generated};

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1 << 20;

/// What the management API handlers share.
pub struct AdminState {
    pub store: Arc<Store>,
}

/// Registers the unauthenticated routes at their full paths (on the app, before the scope).
pub fn configure_public(cfg: &mut web::ServiceConfig) {
    for route in routes().into_iter().filter(|r| r.op.is_public()) {
        register(cfg, &route.path, &route);
    }
}

/// Registers the authenticated routes relative to the `/api/v1` scope.
pub fn configure_protected(cfg: &mut web::ServiceConfig) {
    for route in routes().into_iter().filter(|r| !r.op.is_public()) {
        let path = route.path.strip_prefix(PREFIX).unwrap_or(&route.path);
        register(cfg, path, &route);
    }
}

type St = web::Data<AdminState>;
type Name = web::Path<String>;

fn register(cfg: &mut web::ServiceConfig, path: &str, route: &Route) {
    let m = web::method(route.method.clone());
    let handler = match route.op {
        Op::OpenApi => m.to(openapi),
        Op::Revision => m.to(revision),
        Op::Export => m.to(export),
        Op::Apply => m.to(apply),
        Op::List(kind) => m.to(move |req: HttpRequest, st: St| list(kind, req, st)),
        Op::Create(kind) => {
            m.to(move |req: HttpRequest, st: St, body: web::Payload| create(kind, req, st, body))
        }
        Op::Get(kind) => {
            m.to(move |req: HttpRequest, st: St, name: Name| get(kind, req, st, name.into_inner()))
        }
        Op::Put(kind) => m.to(
            move |req: HttpRequest, st: St, name: Name, body: web::Payload| {
                put(kind, req, st, name.into_inner(), body)
            },
        ),
        Op::Delete(kind) => m.to(move |req: HttpRequest, st: St, name: Name| {
            delete(kind, req, st, name.into_inner())
        }),
        Op::RegenerateKey => m.to(regenerate_key),
        Op::GetGlobalPolicy => m.to(|req: HttpRequest, st: St| {
            get(Kind::GlobalPolicy, req, st, GLOBAL_POLICY_NAME.to_owned())
        }),
        Op::PutGlobalPolicy => m.to(|req: HttpRequest, st: St, body: web::Payload| {
            put(
                Kind::GlobalPolicy,
                req,
                st,
                GLOBAL_POLICY_NAME.to_owned(),
                body,
            )
        }),
    };
    cfg.route(path, handler);
}

/// Answer of the gateway listener for any request no route takes: 404 in JSON.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError as _;
    ApiError::NotFound(format!("no route for {} {}", req.method(), req.path())).error_response()
}

/// Answer for any request no route takes (JSON like every other error): 405 with `Allow` when
/// the path is served with other methods, 404 otherwise.
pub async fn no_route(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError as _;
    let allowed = allowed_methods(req.path());
    if allowed.is_empty() {
        return ApiError::NotFound(format!("no route for {} {}", req.method(), req.path()))
            .error_response();
    }
    let allow = allowed.join(", ");
    let mut res = ApiError::MethodNotAllowed(format!(
        "{} is not served on {}; allowed: {allow}",
        req.method(),
        req.path()
    ))
    .error_response();
    if let Ok(v) = header::HeaderValue::from_str(&allow) {
        res.headers_mut().insert(header::ALLOW, v);
    }
    res
}

/// The methods served on `path`, from the two route tables the OpenAPI document is built from.
fn allowed_methods(path: &str) -> Vec<String> {
    let matches = |template: &str| {
        let (mut t, mut p) = (template.split('/'), path.split('/'));
        loop {
            match (t.next(), p.next()) {
                (None, None) => return true,
                (Some(ts), Some(ps)) if ts.starts_with('{') && !ps.is_empty() => {}
                (Some(ts), Some(ps)) if ts == ps => {}
                _ => return false,
            }
        }
    };
    let mut methods: Vec<String> = routes()
        .into_iter()
        .map(|r| (r.method, r.path))
        .chain(
            gateway_admin_routes()
                .into_iter()
                .map(|r| (r.method, r.path)),
        )
        .filter(|(_, template)| matches(template))
        .map(|(m, _)| m.to_string())
        .collect();
    methods.sort();
    methods.dedup();
    methods
}

// === handlers ===

/// `GET /api/v1/openapi.json` (no authentication). Made per request: the token request's
/// schema names the expiry dates accepted from now on (see `openapi::TokenWindow`).
async fn openapi(
    gateways: Option<web::Data<super::gateway_state::GatewayApiState>>,
) -> HttpResponse {
    let mut window = super::openapi::TokenWindow::default();
    if let Some(g) = gateways {
        window.max_lifetime_days = g.max_token_lifetime_days();
    }
    HttpResponse::Ok().json(super::openapi::document_for(window))
}

async fn revision(st: St) -> HttpResponse {
    let rev = st.store.revision();
    with_revision(HttpResponse::Ok(), rev).json(json!({ "revision": rev }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list(kind: Kind, req: HttpRequest, st: St) -> Result<HttpResponse, ApiError> {
    let q: ListQuery = query(&req)?;
    let limit = match q.limit {
        Some(n) if !(1..=MAX_PAGE).contains(&n) => {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_PAGE}, not {n}"
            )));
        }
        Some(n) => n,
        None => DEFAULT_PAGE,
    };
    let state = st.store.state();
    let mut page: Vec<&Resource> = state
        .of_kind(kind)
        .map(|s| &s.resource)
        .filter(|r| q.cursor.as_deref().is_none_or(|c| r.name() > c))
        .take(limit + 1)
        .collect();
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|r| r.name().to_owned())
    } else {
        None
    };
    let items: Vec<Value> = page.into_iter().map(public_json).collect();
    Ok(
        with_revision(HttpResponse::Ok(), state.revision).json(json!({
            "kind": kind.plural(),
            "items": items,
            "next": next,
            "revision": state.revision,
        })),
    )
}

async fn get(kind: Kind, req: HttpRequest, st: St, name: String) -> Result<HttpResponse, ApiError> {
    let state = st.store.state();
    let key = ResourceKey::new(kind, name);
    let (resource, rev) = match state.get(&key) {
        Some(s) => (s.resource.clone(), s.revision),
        // The global policy always exists conceptually: empty until first written.
        None if kind == Kind::GlobalPolicy => (empty_global_policy(), 0),
        None => return Err(ApiError::NotFound(format!("{key} not found"))),
    };
    let etag = etag(rev);
    if let Some(v) = header_str(req.headers(), &header::IF_NONE_MATCH)?
        && v.split(',')
            .any(|t| t.trim() == "*" || parse_etag(t) == Some(rev))
    {
        return Ok(with_revision(HttpResponse::NotModified(), state.revision)
            .insert_header((header::ETAG, etag))
            .finish());
    }
    Ok(with_revision(HttpResponse::Ok(), state.revision)
        .insert_header((header::ETAG, etag))
        .json(public_json(&resource)))
}

async fn create(
    kind: Kind,
    req: HttpRequest,
    st: St,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let value = read_json(&req, body).await?;
    if value.get("name").and_then(Value::as_str).is_none() {
        let mut p = Problems::new();
        p.push("name", format!("a new {kind} needs a name"));
        return Err(ApiError::Invalid(p));
    }
    let resource = parse_body(kind, value)?;
    let key = resource.key();
    let committed = write(&st, resource, Precondition::IfNoneMatch).await?;
    Ok(written(&st, &key, &committed, StatusCode::CREATED))
}

async fn put(
    kind: Kind,
    req: HttpRequest,
    st: St,
    name: String,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut value = read_json(&req, body).await?;
    if let Value::Object(map) = &mut value {
        match map.get("name") {
            None | Some(Value::Null) => {
                map.insert("name".into(), Value::String(name.clone()));
            }
            Some(Value::String(n)) if *n == name => {}
            Some(other) => {
                let mut p = Problems::new();
                p.push(
                    "name",
                    format!("{other} does not match the name in the path ('{name}')"),
                );
                return Err(ApiError::Invalid(p));
            }
        }
    }
    let resource = parse_body(kind, value)?;
    // The request's own problems (400) before the preconditions on what is stored (412).
    let pre = write_precondition(req.headers())?;
    let key = resource.key();
    // The global policy "exists" at revision 0 before its first write (see `get`), so
    // `If-Match: "0"` means "not written yet".
    let unwritten_global = kind == Kind::GlobalPolicy && pre == Precondition::IfMatch(0);
    let pre = if unwritten_global {
        Precondition::IfNoneMatch
    } else {
        pre
    };
    let existed = st.store.state().get(&key).is_some();
    let committed = match write(&st, resource, pre).await {
        Err(ApiError::Conflict(_)) if unwritten_global => {
            return Err(ApiError::PreconditionFailed(format!(
                "{key} has been written since revision 0"
            )));
        }
        r => r?,
    };
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(written(&st, &key, &committed, status))
}

async fn delete(
    kind: Kind,
    req: HttpRequest,
    st: St,
    name: String,
) -> Result<HttpResponse, ApiError> {
    let key = ResourceKey::new(kind, name);
    let pre = match write_precondition(req.headers())? {
        Precondition::None => Precondition::MustExist,
        Precondition::IfNoneMatch => {
            return Err(ApiError::BadRequest(
                "If-None-Match does not apply to DELETE".into(),
            ));
        }
        p => p,
    };
    let store = st.store.clone();
    let k = key.clone();
    let committed = store_write(&st.store, "delete", move || store.delete(k, pre)).await?;
    tracing::info!(key = %key, revision = committed.revision, "deleted");
    Ok(
        with_revision(HttpResponse::Ok(), committed.revision).json(json!({
            "revision": committed.revision,
            "deleted": key.to_string(),
        })),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegenerateQuery {
    key: Option<String>,
}

async fn regenerate_key(req: HttpRequest, st: St, name: Name) -> Result<HttpResponse, ApiError> {
    let q: RegenerateQuery = query(&req)?;
    let primary = match q.key.as_deref() {
        Some("primary") => true,
        Some("secondary") => false,
        _ => {
            return Err(ApiError::BadRequest(
                "query parameter key must be primary or secondary".into(),
            ));
        }
    };
    let asked = write_precondition(req.headers())?;
    if asked == Precondition::IfNoneMatch {
        return Err(ApiError::BadRequest(
            "If-None-Match does not apply here".into(),
        ));
    }
    let key = ResourceKey::new(Kind::Subscription, name.into_inner());
    // Without If-Match, retry a few times if another writer got in between (the new key
    // replaces whatever is stored, so that is safe).
    let mut attempts = 0;
    loop {
        attempts += 1;
        let Some(stored) = st.store.state().get(&key).cloned() else {
            return Err(ApiError::NotFound(format!("{key} not found")));
        };
        let Resource::Subscription(mut sub) = stored.resource.clone() else {
            return Err(ApiError::Internal(format!("{key} is not a subscription")));
        };
        let new_key = super::store::generate_key();
        if primary {
            sub.primary_key = new_key;
        } else {
            sub.secondary_key = new_key;
        }
        let pre = match asked {
            Precondition::None | Precondition::MustExist => Precondition::IfMatch(stored.revision),
            p => p,
        };
        match write(&st, Resource::Subscription(sub), pre).await {
            Ok(committed) => return Ok(written(&st, &key, &committed, StatusCode::OK)),
            Err(ApiError::PreconditionFailed(_)) if asked == Precondition::None && attempts < 5 => {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    format: Option<String>,
    include_secrets: Option<bool>,
}

async fn export(req: HttpRequest, st: St) -> Result<HttpResponse, ApiError> {
    let q: ExportQuery = query(&req)?;
    let as_json = match q.format.as_deref() {
        None | Some("yaml") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "format must be yaml or json, not '{other}'"
            )));
        }
    };
    let include_secrets = q.include_secrets.unwrap_or(false);
    let state = st.store.state();
    let doc = export_document(&state, include_secrets);
    if include_secrets {
        // Secrets leaving the control plane belong in the audit trail (never the values).
        tracing::warn!(
            revision = state.revision,
            "configuration exported with secret values"
        );
    }
    let mut res = with_revision(HttpResponse::Ok(), state.revision);
    if as_json {
        return Ok(res.json(doc.to_value()));
    }
    let note = if include_secrets {
        " It contains secret values: keep it private."
    } else {
        ""
    };
    let text = format!(
        "# Exported from the Outpost control plane at revision {}.{note}\n{}",
        state.revision,
        doc.to_yaml()
    );
    Ok(res
        .content_type("application/yaml; charset=utf-8")
        .body(text))
}

/// The whole configuration as a declarative document, secrets masked unless `include_secrets`.
pub fn export_document(state: &State, include_secrets: bool) -> Document {
    let resources = state
        .iter_resources()
        .map(|r| match r {
            Resource::NamedValue(nv) if nv.secret && !include_secrets => {
                let mut nv = nv.clone();
                nv.value = SECRET_MASK.to_owned();
                Resource::NamedValue(nv)
            }
            r => r.clone(),
        })
        .collect();
    Document::new(resources)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyQuery {
    dry_run: Option<bool>,
    prune: Option<bool>,
}

/// One line of an apply plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedChange {
    pub action: Action,
    /// `apis/orders`
    pub key: String,
    pub kind: Kind,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// The answer of `POST /api/v1/apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApplyResult {
    pub dry_run: bool,
    /// The revision after the apply (unchanged for a dry run or when nothing changed).
    pub revision: u64,
    pub changes: Vec<PlannedChange>,
    /// Resources of the file already as desired.
    pub unchanged: usize,
}

async fn apply(req: HttpRequest, st: St, body: web::Payload) -> Result<HttpResponse, ApiError> {
    let q: ApplyQuery = query(&req)?;
    let dry_run = q.dry_run.unwrap_or(false);
    let prune = q.prune.unwrap_or(false);
    // `If-Match: "<global revision>"` lets a client apply exactly the plan it showed: a
    // confirmed prune must not delete what appeared after the confirmation.
    let expected = match write_precondition(req.headers())? {
        Precondition::None => None,
        Precondition::IfMatch(rev) => Some(rev),
        _ => {
            return Err(ApiError::BadRequest(
                "apply takes only If-Match: \"<revision>\" (the global revision)".into(),
            ));
        }
    };
    let bytes = read_body(
        &req,
        body,
        &[
            "application/yaml",
            "application/x-yaml",
            "text/yaml",
            "text/x-yaml",
            "application/json",
            "text/plain",
        ],
    )
    .await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the file is not UTF-8: {e}")))?;
    // Problems found after parsing name resources by key; `index` puts them back in the file,
    // with the same path form and position as the parse problems.
    // A file whose resources are each valid but do not fit together is refused as a write
    // that would make the configuration inconsistent is: 409.
    let (doc, index) = Document::read(text).map_err(|r| match r.across_resources {
        true => ApiError::Inconsistent(r.problems),
        false => ApiError::Invalid(r.problems),
    })?;
    let in_file = |e: ApiError| match e {
        ApiError::Invalid(p) => ApiError::Invalid(index.locate(p)),
        ApiError::Inconsistent(p) => ApiError::Inconsistent(index.locate(p)),
        e => e,
    };
    let state = st.store.state();
    if let Some(rev) = expected
        && rev != state.revision
    {
        return Err(ApiError::PreconditionFailed(format!(
            "the configuration is at revision {}, not {rev}; review the plan again",
            state.revision
        )));
    }
    let owned = if prune {
        doc.sections
    } else {
        Default::default()
    };
    // The plan's problems are about what is stored (a masked secret with nothing to keep).
    let plan = plan(&state, doc.resources, &owned)
        .map_err(|p| in_file(ApiError::Inconsistent(redacted(p, &state))))?;
    let mut revision = state.revision;
    if !dry_run && !plan.writes.is_empty() {
        let store = st.store.clone();
        let writes = plan.writes;
        let committed = store_write(&st.store, "commit", move || store.commit(writes))
            .await
            .map_err(in_file)?;
        revision = committed.revision;
        tracing::info!(
            revision,
            changes = plan.changes.len(),
            "applied a declarative file"
        );
    }
    let result = ApplyResult {
        dry_run,
        revision,
        changes: plan.changes,
        unchanged: plan.unchanged,
    };
    Ok(with_revision(HttpResponse::Ok(), revision).json(result))
}

/// What applying a declarative file to `current` takes.
#[derive(Debug)]
pub struct Plan {
    pub changes: Vec<PlannedChange>,
    pub writes: Vec<Write>,
    pub unchanged: usize,
}

/// Diffs the desired resources against `current`: creates and updates in dependency order,
/// then deletes, in reverse dependency order, of the resources of the `owned` kinds that
/// `desired` does not list. Nothing of any other kind is deleted, and an empty `owned` is a
/// purely additive apply. Writes carry preconditions on the revisions the plan was computed
/// from, so a concurrent change makes the commit fail (412/409) instead of being overwritten
/// blindly.
///
/// Desired resources are normalised the way the store normalises writes (empty subscription
/// keys keep the stored keys, a masked secret keeps the stored value) before comparing, so
/// applying an export changes nothing. An empty global policy counts as absent.
pub fn plan(
    current: &State,
    desired: Vec<Resource>,
    owned: &BTreeSet<Kind>,
) -> Result<Plan, Problems> {
    let mut problems = Problems::new();
    let mut upserts: Vec<(Action, Resource, Precondition)> = Vec::new();
    let mut unchanged = 0;
    let mut wanted = std::collections::BTreeSet::new();
    for mut resource in desired {
        let key = resource.key();
        if is_empty_global(&resource) {
            continue;
        }
        wanted.insert(key.clone());
        let existing = current.get(&key);
        if let Resource::NamedValue(nv) = &resource
            && nv.secret
            && nv.value == SECRET_MASK
            && !matches!(existing.map(|s| &s.resource), Some(Resource::NamedValue(o)) if o.secret)
        {
            problems.push(
                format!("{key}.value"),
                format!(
                    "is the export mask '{SECRET_MASK}' but no secret is stored to keep; write the real value"
                ),
            );
            continue;
        }
        fill_generated(&mut resource, existing.map(|s| &s.resource));
        match existing {
            Some(s) if s.resource == resource => unchanged += 1,
            Some(s) => upserts.push((Action::Update, resource, Precondition::IfMatch(s.revision))),
            None => upserts.push((Action::Create, resource, Precondition::IfNoneMatch)),
        }
    }
    problems.into_result()?;
    upserts.sort_by_key(|(_, r, _)| r.key());
    let mut deletes: Vec<(ResourceKey, u64)> = current
        .resources
        .iter()
        .filter(|(k, s)| {
            owned.contains(&k.kind) && !wanted.contains(*k) && !is_empty_global(&s.resource)
        })
        .map(|(k, s)| (k.clone(), s.revision))
        .collect();
    deletes.sort_by(|(a, _), (b, _)| b.kind.cmp(&a.kind).then_with(|| a.name.cmp(&b.name)));

    let mut changes = Vec::new();
    let mut writes = Vec::new();
    for (action, resource, pre) in upserts {
        changes.push(planned(action, &resource.key()));
        writes.push(Write::Put(Box::new(resource), pre));
    }
    for (key, rev) in deletes {
        changes.push(planned(Action::Delete, &key));
        writes.push(Write::Delete(key, Precondition::IfMatch(rev)));
    }
    Ok(Plan {
        changes,
        writes,
        unchanged,
    })
}

fn planned(action: Action, key: &ResourceKey) -> PlannedChange {
    PlannedChange {
        action,
        key: key.to_string(),
        kind: key.kind,
        name: key.name.clone(),
    }
}

fn is_empty_global(r: &Resource) -> bool {
    matches!(r, Resource::GlobalPolicy(g) if g.policies.is_empty())
}

fn empty_global_policy() -> Resource {
    Resource::GlobalPolicy(GlobalPolicy {
        name: GLOBAL_POLICY_NAME.to_owned(),
        policies: Default::default(),
    })
}

// === helpers ===

/// A resource as operators see it: secrets masked, empty values pruned.
pub fn public_json(r: &Resource) -> Value {
    let mut v = r.to_public_json();
    prune(&mut v);
    v
}

fn etag(revision: u64) -> String {
    format!("\"{revision}\"")
}

/// `"12"`, `W/"12"` or `12` → 12; nothing else (the OpenAPI document's pattern says the same).
fn parse_etag(v: &str) -> Option<u64> {
    let v = v.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    let digits = v
        .strip_prefix('"')
        .and_then(|d| d.strip_suffix('"'))
        .unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn with_revision(
    mut builder: actix_web::HttpResponseBuilder,
    revision: u64,
) -> actix_web::HttpResponseBuilder {
    builder.insert_header((REVISION_HEADER, revision.to_string()));
    builder
}

fn header_str<'a>(
    headers: &'a HeaderMap,
    name: &header::HeaderName,
) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest(format!("{name} is not valid text")))
        })
        .transpose()
}

/// The precondition a write asks for through `If-Match` / `If-None-Match`.
fn write_precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let if_match = header_str(headers, &header::IF_MATCH)?;
    let if_none = header_str(headers, &header::IF_NONE_MATCH)?;
    let if_match = match if_match.map(str::trim) {
        None => None,
        Some("*") => Some(Precondition::MustExist),
        Some(v) => Some(parse_etag(v).map(Precondition::IfMatch).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "If-Match must be * or one ETag such as \"12\" (as returned by GET), not '{v}'"
            ))
        })?),
    };
    let if_none = match if_none.map(str::trim) {
        None => None,
        Some("*") => Some(Precondition::IfNoneMatch),
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "only 'If-None-Match: *' (create only) is supported on writes, not '{v}'"
            )));
        }
    };
    match (if_match, if_none) {
        // Both well-formed: "exists (at that revision)" and "does not exist" never both hold,
        // which RFC 9110 answers with 412, as for any other failed precondition.
        (Some(_), Some(_)) => Err(ApiError::PreconditionFailed(
            "If-Match and If-None-Match: * can never both hold".into(),
        )),
        (Some(p), None) | (None, Some(p)) => Ok(p),
        (None, None) => Ok(Precondition::None),
    }
}

fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))
}

/// Reads a request body of one of the `accepted` media types, up to [`BODY_LIMIT`].
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    accepted: &[&str],
) -> Result<Bytes, ApiError> {
    let ct = header_str(req.headers(), &header::CONTENT_TYPE)?.unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ok = accepted.contains(&essence.as_str())
        || (accepted.contains(&"application/json") && essence.ends_with("+json"));
    if !ok {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be {}, not '{ct}'",
            accepted.join(" or ")
        )));
    }
    let too_large =
        || ApiError::PayloadTooLarge(format!("the request body is limited to {BODY_LIMIT} bytes"));
    if let Some(len) = header_str(req.headers(), &header::CONTENT_LENGTH)?
        && len.trim().parse::<usize>().is_ok_and(|n| n > BODY_LIMIT)
    {
        return Err(too_large());
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        if buf.len() + chunk.len() > BODY_LIMIT {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

async fn read_json(req: &HttpRequest, payload: web::Payload) -> Result<Value, ApiError> {
    let bytes = read_body(req, payload, &["application/json"]).await?;
    let mut value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    whole_numbers_as_integers(&mut value);
    Ok(value)
}

/// `5000.0` is the integer 5000 to JSON (and to the OpenAPI document's `"type": "integer"`),
/// but not to serde's integer fields: write such numbers as integers before parsing.
fn whole_numbers_as_integers(v: &mut Value) {
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
            {
                // Saturating casts: out-of-range values stay out of range for the field's checks.
                if f >= 0.0 && f <= u64::MAX as f64 {
                    *v = Value::from(f as u64);
                } else if f < 0.0 && f >= i64::MIN as f64 {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

/// The resource in a body, with every problem it has on its own (what it would make of the
/// stored configuration is the store's to check).
fn parse_body(kind: Kind, value: Value) -> Result<Resource, ApiError> {
    let resource = parse_resource(kind, value).map_err(ApiError::Invalid)?;
    let problems = check_resource(&resource);
    if !problems.is_empty() {
        return Err(ApiError::Invalid(
            problems.prefixed(&resource.key().to_string()),
        ));
    }
    Ok(resource)
}

/// Commits one put, off the async workers.
async fn write(st: &St, resource: Resource, pre: Precondition) -> Result<Committed, ApiError> {
    let key = resource.key();
    if let Resource::NamedValue(nv) = &resource
        && nv.secret
        && nv.value == SECRET_MASK
        && !matches!(
            st.store.state().get(&key).map(|s| &s.resource),
            Some(Resource::NamedValue(o)) if o.secret
        )
    {
        let mut p = Problems::new();
        p.push(
            "value",
            format!(
                "is the mask '{SECRET_MASK}' but no secret is stored to keep; send the real value"
            ),
        );
        // Valid on its own; refused for what is (not) stored.
        return Err(ApiError::Inconsistent(p));
    }
    let store = st.store.clone();
    let committed = store_write(&st.store, "put", move || store.put(resource, pre)).await?;
    if !committed.changed.is_empty() {
        tracing::info!(key = %key, revision = committed.revision, "written");
    }
    Ok(committed)
}

/// The answer to a write: the stored resource (with generated values, secrets masked).
fn written(st: &St, key: &ResourceKey, committed: &Committed, status: StatusCode) -> HttpResponse {
    let state = st.store.state();
    let stored = state.get(key);
    let changed = committed.changed.contains(key);
    let rev = match stored {
        Some(s) if !changed => s.revision,
        _ => committed.revision,
    };
    let resource = stored.map(|s| public_json(&s.resource));
    let mut res = with_revision(HttpResponse::build(status), committed.revision);
    res.insert_header((header::ETAG, etag(rev)));
    if status == StatusCode::CREATED {
        res.insert_header((
            header::LOCATION,
            format!("{PREFIX}/{}/{}", key.kind.plural(), key.name),
        ));
    }
    res.json(json!({
        "revision": committed.revision,
        "changed": changed,
        "resource": resource,
    }))
}

/// A store write on the blocking pool, timed and counted (`super::metrics`).
async fn store_write(
    store: &Store,
    operation: &'static str,
    f: impl FnOnce() -> Result<Committed, StoreError> + Send + 'static,
) -> Result<Committed, ApiError> {
    blocking(store, move || {
        let started = std::time::Instant::now();
        let result = f();
        super::metrics::store_write(operation, started, &result);
        result
    })
    .await
}

/// Runs a store operation on the blocking pool; store errors become API errors with secret
/// values redacted from their messages.
async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match web::block(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(StoreError::Invalid(p))) => Err(ApiError::Invalid(redacted(p, &store.state()))),
        Ok(Err(StoreError::Inconsistent(p))) => {
            Err(ApiError::Inconsistent(redacted(p, &store.state())))
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(ApiError::Internal(format!("blocking task failed: {e}"))),
    }
}

/// Problem messages may quote values after named-value substitution (a backend URL, say);
/// replace every stored secret value with the mask.
fn redacted(mut problems: Problems, state: &State) -> Problems {
    let secrets: Vec<&str> = state
        .iter_resources()
        .filter_map(|r| match r {
            Resource::NamedValue(nv) if nv.secret && nv.value.len() >= 4 => Some(nv.value.as_str()),
            _ => None,
        })
        .collect();
    for p in &mut problems.0 {
        for s in &secrets {
            if p.message.contains(s) {
                p.message = p.message.replace(s, SECRET_MASK);
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_parse() {
        assert_eq!(parse_etag("\"12\""), Some(12));
        assert_eq!(parse_etag("W/\"7\""), Some(7));
        assert_eq!(parse_etag("3"), Some(3));
        assert_eq!(parse_etag("\"x\""), None);
    }

    #[test]
    fn every_route_is_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in routes() {
            assert!(r.path.starts_with(PREFIX), "{}", r.path);
            assert!(seen.insert((r.method.clone(), r.path.clone())), "{r:?}");
        }
    }
}
