//! The gateway-facing endpoint (`/gateway/v1/...` on the gateway listener) and the admin routes
//! about gateways' tokens, instances and telemetry: the HTTP side only. What both share is
//! [`GatewayApiState`] (its own file, which knows no route); the token format, the instance
//! registry and the telemetry store are leaves below it.
//!
//! Every gateway call carries `Authorization: GatewayKey <gateway>&<expiry>&<signature>`; the
//! gateway named in a verified token is the only one whose view the call can see. A refused token
//! is a 401, never an empty 200. Its JSON body says why (malformed, expired, another gateway's),
//! except that an unknown gateway and a forged or revoked token get one and the same answer
//! ([`tokens::INVALID_TOKEN`]) so that the endpoint cannot be used to list gateway names; the
//! control plane logs the real reason.
//!
//! # Config long-poll
//! `GET /gateway/v1/config?after=R&wait=S` answers as soon as the store's revision differs from
//! `R`, else waits on the store's watch channel for up to `min(S, max_wait_secs)` and answers
//! `304` when nothing moved. The answer is a delta from `R` when the change log covers `R`
//! (computed as the diff of the gateway's views at `R` and now), else a full snapshot (`R == 0`,
//! `R` below the log floor, or `R` ahead of the store, e.g. after a restore). A revision may move
//! for changes this gateway does not see; it then gets an empty delta with the new revision, so
//! it always knows where it stands.
//!
//! # Cost when many gateways wake at once
//! One change wakes every waiting poller. The work per answer is cached so that it is done once
//! per gateway and revision, not once per poller: [`ViewCache`](super::views::ViewCache) keeps each gateway's view (and
//! its content hash) for its last few revisions, and the encoded answers for the last few
//! (from, to) pairs, so the instances of one gateway share one computation and the view at `R`
//! computed on the previous change is reused as the base of the next delta. Cache misses run on
//! the blocking pool behind a semaphore sized to the cores, so a burst of wake-ups neither blocks
//! actix workers nor spawns hundreds of threads. A view is computed from the gateway's candidate
//! resources only (not other gateways' APIs), so its cost does not grow with the number of
//! gateways. Gateway keys are cached too (invalidated by regeneration, by a change of the gateway
//! resource, and after 30 s), so polls do not queue on the store's SQLite connection.
//!
//! # Signing
//! Every config answer carries the control plane's Ed25519 signature over
//! `(gateway, revision, content hash)` of the view it produces, and the chain of key
//! endorsements (see `outpost_model::signing`). The key pair lives in the store's
//! `signing_keys` table, created on first start; [`GatewayApiState::rotate_signing_key`]
//! replaces it. Cached answers are keyed by the signer's generation, so a rotation is never
//! answered with a stale signature.
//!
//! # Reconnection
//! A poll may carry `hash=H`, the content hash the gateway holds at `after`. When `after` is the
//! current revision and this gateway's view hashes differently, the answer is a full snapshot at
//! once instead of a wait: a configuration altered on the gateway's side is replaced on the next
//! poll, not kept until the next change.
//!
//! Instance status lives in memory and is exchanged with the store every few seconds
//! ([`super::instances`]), so it survives a restart and replicas share it. So are telemetry
//! batches ([`super::telemetry`]): a batch is acknowledged only once committed, and counted
//! once whichever replica it reaches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use outpost_model::wire::{
    CONFIG_PATH, HEARTBEAT_PATH, Heartbeat, HeartbeatAck, TELEMETRY_PATH, TelemetryBatch,
};
use serde::Deserialize;

use super::error::ApiError;
use super::gateway_state::{GatewayApiState, blocking_error};
use super::instances::InstanceStatus;
use super::store::KeyType;
use super::telemetry::{AnalyticsQuery, IngestError, Ingested};
use super::tokens::{self, RegenerateRequest, TokenRequest, TokenResponse, VerifiedToken};
use super::views::Format;

/// Response header with the revision of a config answer (also in the body).
pub const REVISION_HEADER: &str = "Outpost-Revision";

const MAX_HEARTBEAT_BYTES: usize = 64 * 1024;
const MAX_TELEMETRY_BYTES: usize = 16 * 1024 * 1024;
/// Longest text field accepted in a heartbeat.
const MAX_FIELD_LEN: usize = 256;
/// Certificates kept per heartbeat.
const MAX_CERTIFICATES: usize = 256;
/// Pool members one heartbeat may report (the registry keeps what it is sent).
const MAX_POOL_MEMBERS: usize = 4096;

/// Reads at most `limit` bytes of body.
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "body larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Error answers of the gateway endpoint: the shared JSON body, with the right auth scheme.
fn gateway_error(e: ApiError) -> HttpResponse {
    let mut res = e.error_response();
    if e.status_code() == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(tokens::SCHEME),
        );
    }
    res
}

// === gateway routes ===

#[derive(Debug, Deserialize)]
pub struct ConfigQuery {
    #[serde(default)]
    pub after: u64,
    /// Seconds to wait for a change; 0 (the default) answers at once.
    #[serde(default)]
    pub wait: u64,
    /// The content hash the gateway holds at `after` (see the module docs).
    #[serde(default)]
    pub hash: Option<String>,
}

async fn get_config(
    state: web::Data<GatewayApiState>,
    req: HttpRequest,
    query: Result<web::Query<ConfigQuery>, actix_web::Error>,
) -> HttpResponse {
    poll_config(state, req, query)
        .await
        .unwrap_or_else(gateway_error)
}

async fn poll_config(
    state: web::Data<GatewayApiState>,
    req: HttpRequest,
    query: Result<web::Query<ConfigQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let token = state.authenticate(&req).await?;
    let query = query.map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
    let mut after = query.after;
    let wait = Duration::from_secs(query.wait).min(state.max_wait);
    let format = Format::from_accept(&req);
    if let Some(held) = query.hash.as_deref().filter(|h| !h.is_empty())
        && after != 0
        && after == state.store.revision()
        && !state
            .holds_current_view(&token.gateway, after, held)
            .await?
    {
        tracing::warn!(
            gateway = token.gateway,
            revision = after,
            "the gateway's configuration differs from this control plane's at the same \
             revision; sending a full snapshot"
        );
        after = 0;
    }

    // Subscribe before looking, so a change between the look and the wait is not missed.
    let mut revisions = state.store.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let mut waited = false;
    {
        let _waiting = Waiting::new(&state.waiting);
        while state.store.revision() == after {
            waited = true;
            match tokio::time::timeout_at(deadline, revisions.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ApiError::Internal("the store is closed".into())),
                Err(_) => {
                    return Ok(HttpResponse::NotModified()
                        .insert_header((REVISION_HEADER, after.to_string()))
                        .finish());
                }
            }
        }
    }

    // A key may have been regenerated (or the token expired) while the poll waited: the answer
    // goes only to a token that is still valid now, not to one that was valid when it asked.
    let token = if waited {
        state.authenticate(&req).await?
    } else {
        token
    };
    let body = match state.ready_body(&token.gateway, after, format) {
        Some(body) => body,
        None => {
            let _permit = state
                .compute
                .acquire()
                .await
                .map_err(|_| ApiError::Internal("compute semaphore closed".into()))?;
            let state = state.clone();
            let gateway = token.gateway.clone();
            web::block(move || state.config_body(&gateway, after, format))
                .await
                .map_err(blocking_error)?
                .map_err(|e| ApiError::Internal(format!("encoding the config: {e}")))?
        }
    };
    Ok(HttpResponse::Ok()
        .content_type(format.media_type())
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body))
}

/// Counts a waiting poll for as long as it lives (a poll whose client goes away is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shared front of every gateway upload: a valid token, a known content type, a body
/// within `max` bytes that `decode` accepts (usually [`Format::decode`]).
async fn authenticated_body<T>(
    state: &GatewayApiState,
    req: &HttpRequest,
    payload: web::Payload,
    max: usize,
    decode: impl FnOnce(Format, &[u8]) -> Result<T, ApiError>,
) -> Result<(VerifiedToken, Format, T), ApiError> {
    let token = state.authenticate(req).await?;
    let format = Format::from_content_type(req)?;
    let body = read_body(payload, max).await?;
    let value = decode(format, &body)?;
    Ok((token, format, value))
}

/// A heartbeat in either format; in bincode also the previous release's (upgrades go control
/// plane first, so its gateways still report for a while).
fn decode_heartbeat(format: Format, body: &[u8]) -> Result<Heartbeat, ApiError> {
    match format {
        Format::Bincode => outpost_model::wire::decode_heartbeat(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid bincode body: {e}"))),
        Format::Json => format.decode(body),
    }
}

async fn post_heartbeat(
    state: web::Data<GatewayApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    heartbeat(state, req, payload)
        .await
        .unwrap_or_else(gateway_error)
}

async fn heartbeat(
    state: web::Data<GatewayApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (token, format, mut hb) =
        authenticated_body(&state, &req, payload, MAX_HEARTBEAT_BYTES, decode_heartbeat).await?;
    if hb.instance_id.is_empty() || hb.instance_id.len() > MAX_FIELD_LEN {
        return Err(ApiError::BadRequest(format!(
            "instance-id must be 1..={MAX_FIELD_LEN} characters"
        )));
    }
    // A gateway answers on a handful of names; the cap only bounds what one client can make
    // the registry hold.
    hb.certificates.truncate(MAX_CERTIFICATES);
    for c in &mut hb.certificates {
        truncate(&mut c.hostname, MAX_FIELD_LEN);
    }
    hb.pool_members.truncate(MAX_POOL_MEMBERS);
    for m in &mut hb.pool_members {
        for field in [&mut m.backend, &mut m.member, &mut m.state] {
            truncate(field, MAX_FIELD_LEN);
        }
    }
    for field in [
        &mut hb.hostname,
        &mut hb.version,
        &mut hb.config_hash,
        &mut hb.config_source,
        &mut hb.redis,
    ] {
        truncate(field, MAX_FIELD_LEN);
    }
    let now = Utc::now();
    let remote = req.peer_addr().map(|a| a.to_string());
    state
        .instances
        .record(&token.gateway, hb, token.expiry, remote, now);
    let answer = if req.headers().contains_key(header::ACCEPT) {
        Format::from_accept(&req)
    } else {
        format
    };
    answer.respond(&HeartbeatAck {
        revision: state.store.revision(),
        server_time: now,
    })
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

async fn post_telemetry(
    state: web::Data<GatewayApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    telemetry_upload(state, req, payload)
        .await
        .unwrap_or_else(gateway_error)
}

async fn telemetry_upload(
    state: web::Data<GatewayApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (token, _, batch) =
        authenticated_body(&state, &req, payload, MAX_TELEMETRY_BYTES, |f, b| {
            f.decode::<TelemetryBatch>(b)
        })
        .await?;
    // Off the async workers; the answer waits for the commit, so a 204 means stored.
    let gateway = token.gateway.clone();
    let sequence = batch.sequence;
    let state = state.into_inner();
    let ingested = web::block(move || state.analytics().ingest(&gateway, &batch, Utc::now()))
        .await
        .map_err(blocking_error)?;
    let ingested = match ingested {
        Ok(i) => i,
        Err(IngestError::Invalid(problems)) => {
            super::metrics::telemetry_batch_refused("invalid");
            tracing::warn!(gateway = token.gateway, sequence, %problems, "telemetry batch refused");
            return Err(ApiError::Invalid(problems));
        }
        Err(IngestError::Store(e)) => {
            super::metrics::telemetry_batch_refused("failed");
            tracing::warn!(gateway = token.gateway, sequence, error = %e, "cannot store a telemetry batch; the gateway retries it");
            return Err(e.into());
        }
    };
    super::metrics::telemetry_batch(ingested);
    match ingested {
        Ingested::Added { skipped, .. } if skipped > 0 => {
            tracing::debug!(
                gateway = token.gateway,
                skipped,
                "telemetry aggregates outside the retention window"
            );
        }
        Ingested::Duplicate => {
            tracing::debug!(
                gateway = token.gateway,
                sequence,
                "duplicate telemetry batch"
            );
        }
        Ingested::Added { .. } => {}
    }
    Ok(HttpResponse::NoContent().finish())
}

async fn get_signing_keys(state: web::Data<GatewayApiState>) -> HttpResponse {
    HttpResponse::Ok().json(state.signing_keys())
}

async fn rotate_signing_key(state: web::Data<GatewayApiState>) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let keys = web::block(move || state.rotate_signing_key())
        .await
        .map_err(blocking_error)??;
    Ok(HttpResponse::Ok().json(keys))
}

// === admin routes ===

/// A JSON body that must be an object (serde also reads a struct from an array, so `[]` would
/// be a token request with every field defaulted), whole numbers read as integers.
fn object_body<T: serde::de::DeserializeOwned>(
    body: web::Json<serde_json::Value>,
) -> Result<T, ApiError> {
    let mut value = body.into_inner();
    // `3600.0` is the integer 3600, as for every other body (JSON Schema's numbers).
    outpost_model::type_errors::whole_numbers(&mut value);
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "invalid JSON body: expected an object".into(),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

async fn mint_token(
    state: web::Data<GatewayApiState>,
    name: web::Path<String>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let body: TokenRequest = object_body(body)?;
    let now = Utc::now();
    let expiry = tokens::requested_expiry(&body, now, state.max_token_lifetime_days())?;
    let keys = state.keys(&name).await?;
    let key = match body.key {
        KeyType::Primary => &keys.primary,
        KeyType::Secondary => &keys.secondary,
    };
    Ok(HttpResponse::Ok().json(TokenResponse {
        value: tokens::mint(&name, key, expiry),
        expiry,
        key: body.key,
        config_signing_keys: vec![state.signing_public_key()],
    }))
}

async fn get_keys(
    state: web::Data<GatewayApiState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.keys(&name).await?))
}

async fn regenerate_key(
    state: web::Data<GatewayApiState>,
    name: web::Path<String>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let body: RegenerateRequest = object_body(body)?;
    Ok(HttpResponse::Ok().json(state.regenerate_key(&name, body.key).await?))
}

async fn list_gateway_instances(
    state: web::Data<GatewayApiState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    if state.store().state().get(&gateway_key(&name)).is_none() {
        return Err(ApiError::NotFound(format!("gateway '{name}' not found")));
    }
    let list = statuses(state, Some(name)).await?;
    Ok(HttpResponse::Ok().json(list))
}

async fn list_all_instances(state: web::Data<GatewayApiState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(statuses(state, None).await?))
}

fn gateway_key(name: &str) -> outpost_model::ResourceKey {
    outpost_model::ResourceKey::new(outpost_model::Kind::Gateway, name)
}

/// Every instance (of one gateway or all) with its derived state. Computing the current view
/// hashes may take a while on a large configuration, so it runs off the actix worker.
async fn statuses(
    state: web::Data<GatewayApiState>,
    gateway: Option<String>,
) -> Result<Vec<InstanceStatus>, ApiError> {
    web::block(move || {
        let now = Utc::now();
        let current = state.store().state();
        let mut hashes: std::collections::HashMap<String, String> = Default::default();
        state
            .instances()
            .records(gateway.as_deref(), now)
            .into_iter()
            .map(|r| {
                let hash = hashes
                    .entry(r.gateway.clone())
                    .or_insert_with(|| state.views().view(&r.gateway, &current).hash.clone())
                    .clone();
                state.instances().status(r, &hash, now)
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("instance listing: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SummaryQuery {
    pub gateway: Option<String>,
    pub api: Option<String>,
    /// Minutes back from now, 1..=1440; default 60.
    pub minutes: Option<i64>,
}

/// Longest `minutes` of `GET /api/v1/telemetry`: one day.
pub const SUMMARY_MAX_MINUTES: i64 = 24 * 60;

async fn get_summary(
    state: web::Data<GatewayApiState>,
    query: web::Query<SummaryQuery>,
) -> Result<HttpResponse, ApiError> {
    let minutes = query.minutes.unwrap_or(60);
    if !(1..=SUMMARY_MAX_MINUTES).contains(&minutes) {
        return Err(ApiError::BadRequest(format!(
            "minutes must be 1..={SUMMARY_MAX_MINUTES}"
        )));
    }
    let query = query.into_inner();
    let summary = web::block(move || {
        state.analytics().summary(
            query.gateway.as_deref(),
            query.api.as_deref(),
            minutes,
            Utc::now(),
        )
    })
    .await
    .map_err(blocking_error)??;
    Ok(HttpResponse::Ok().json(summary))
}

/// `GET /api/v1/analytics`: every parameter checked, every problem listed in one 400.
async fn get_analytics(
    state: web::Data<GatewayApiState>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let query = AnalyticsQuery::parse(&query, Utc::now())?;
    let report = web::block(move || state.analytics().report(&query))
        .await
        .map_err(blocking_error)??;
    Ok(HttpResponse::Ok().json(report))
}

/// Mounts the gateway endpoint (`/gateway/v1/...`) at the root of the gateway listener. Needs
/// `web::Data<GatewayApiState>` in the app.
pub fn configure_gateway_api(cfg: &mut web::ServiceConfig) {
    cfg.route(CONFIG_PATH, web::get().to(get_config))
        .route(HEARTBEAT_PATH, web::post().to(post_heartbeat))
        .route(TELEMETRY_PATH, web::post().to(post_telemetry));
}

/// Mounts the admin routes about gateway tokens, keys, instances and telemetry; meant to sit
/// under `/api/v1` behind admin authentication. Needs the same `web::Data<GatewayApiState>` as
/// the gateway listener. Registers full paths (no `/gateways` scope), so it coexists with other
/// `/gateways/{name}` routes as long as those are not wrapped in a `web::scope("/gateways")`
/// registered before it.
pub fn configure_admin(cfg: &mut web::ServiceConfig) {
    let json = || {
        web::JsonConfig::default()
            .limit(64 * 1024)
            .error_handler(|e, _| ApiError::BadRequest(format!("invalid JSON body: {e}")).into())
    };
    let query = || {
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(format!("invalid query: {e}")).into())
    };
    cfg.service(web::resource("/signing-keys").route(web::get().to(get_signing_keys)))
        .service(web::resource("/signing-keys/rotate").route(web::post().to(rotate_signing_key)))
        .service(
            web::resource("/gateways/{name}/token")
                .app_data(json())
                .route(web::post().to(mint_token)),
        )
        .service(web::resource("/gateways/{name}/keys").route(web::get().to(get_keys)))
        .service(
            web::resource("/gateways/{name}/keys/regenerate")
                .app_data(json())
                .route(web::post().to(regenerate_key)),
        )
        .service(
            web::resource("/gateways/{name}/instances")
                .route(web::get().to(list_gateway_instances)),
        )
        .service(web::resource("/instances").route(web::get().to(list_all_instances)))
        .service(
            web::resource("/telemetry")
                .app_data(query())
                .route(web::get().to(get_summary)),
        )
        .service(
            web::resource("/analytics")
                .app_data(query())
                .route(web::get().to(get_analytics)),
        );
}
