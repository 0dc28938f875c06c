//! The gateway endpoint over real HTTP: long-poll deltas and snapshots, token checks, assignment
//! filtering, heartbeats and instance status, telemetry.
//!
//! Each test starts its own actix server on 127.0.0.1:0 over an in-memory store, mounting the
//! gateway routes at the root and the admin routes under `/api/v1` (without admin auth, which is
//! the control plane's job, not this module's).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{App, HttpServer, web};
use chrono::Utc;
use outpost::control_plane::error::ErrorBody;
use outpost::control_plane::gateway_api::{configure_admin, configure_gateway_api};
use outpost::control_plane::gateway_state::GatewayApiState;
use outpost::control_plane::settings::ControlPlaneSettings;
use outpost::control_plane::store::{Precondition, Store, StoreOptions, Write};
use outpost::control_plane::tokens;
use outpost_model::view::{content_hash, gateway_view};
use outpost_model::wire::{
    self, AggregateKey, BINCODE_MEDIA_TYPE, ConfigUpdate, GatewaySnapshot, Heartbeat, HeartbeatAck,
    RequestAggregate, TelemetryBatch,
};
use outpost_model::{Kind, Resource, ResourceKey};
use serde_json::{Value, json};

// === harness ===

struct Cp {
    base: String,
    store: Arc<Store>,
    state: web::Data<GatewayApiState>,
    client: awc::Client,
}

fn store(change_log_limit: u64) -> Arc<Store> {
    Arc::new(Store::open(Path::new(":memory:"), StoreOptions { change_log_limit }).unwrap())
}

fn start(store: Arc<Store>) -> Cp {
    let settings = ControlPlaneSettings::default();
    let data = web::Data::new(GatewayApiState::new(store.clone(), &settings).unwrap());
    let state = data.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(configure_gateway_api)
            .service(web::scope("/api/v1").configure(configure_admin))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    actix_rt::spawn(server.run());
    Cp {
        base: format!("http://{addr}"),
        store,
        state,
        client: awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish(),
    }
}

fn res(kind: Kind, body: Value) -> Resource {
    Resource::from_json(kind, body).unwrap()
}

fn named_value(name: &str, value: &str) -> Resource {
    res(
        Kind::NamedValue,
        json!({"name": name, "value": value, "secret": true}),
    )
}

fn backend(name: &str, url: &str) -> Resource {
    res(Kind::Backend, json!({"name": name, "url": url}))
}

fn api(name: &str, backend: &str, display: &str) -> Resource {
    res(
        Kind::Api,
        json!({
            "name": name, "display-name": display, "path": name, "backend": backend,
            "operations": [{"name": "get", "method": "GET", "url-template": "/items/{id}"}],
        }),
    )
}

fn gateway(name: &str, apis: &[&str]) -> Resource {
    res(Kind::Gateway, json!({"name": name, "apis": apis}))
}

fn put(store: &Store, resources: Vec<Resource>) -> u64 {
    store
        .commit(
            resources
                .into_iter()
                .map(|r| Write::Put(Box::new(r), Precondition::None))
                .collect(),
        )
        .unwrap()
        .revision
}

/// Two gateways, each with its own API, backend, secret, product and subscription.
fn two_sites(store: &Store) -> u64 {
    let mut all = Vec::new();
    for site in ["a", "b"] {
        all.extend([
            named_value(&format!("host-{site}"), &format!("secret-host-{site}")),
            backend(
                &format!("be-{site}"),
                &format!("http://{{{{host-{site}}}}}:80"),
            ),
            api(&format!("api-{site}"), &format!("be-{site}"), "v1"),
            res(
                Kind::Product,
                json!({"name": format!("prod-{site}"), "apis": [format!("api-{site}")]}),
            ),
            res(
                Kind::Subscription,
                json!({"name": format!("sub-{site}"), "scope": {"api": format!("api-{site}")}}),
            ),
            gateway(&format!("gw-{site}"), &[&format!("api-{site}")]),
        ]);
    }
    put(store, all)
}

fn token(store: &Store, gateway: &str) -> String {
    let keys = store.gateway_keys(gateway).unwrap();
    tokens::mint(
        gateway,
        &keys.primary,
        Utc::now() + chrono::Duration::hours(1),
    )
}

fn expected_hash(store: &Store, gateway: &str) -> String {
    content_hash(&gateway_view(store.state().iter_resources(), Some(gateway)))
}

struct Answer {
    status: StatusCode,
    content_type: String,
    elapsed: Duration,
    body: bytes::Bytes,
}

impl Answer {
    fn update(&self) -> ConfigUpdate {
        assert_eq!(self.status, StatusCode::OK, "{:?}", self.body);
        if self.content_type == "application/json" {
            serde_json::from_slice(&self.body).unwrap()
        } else {
            assert_eq!(self.content_type, BINCODE_MEDIA_TYPE);
            wire::decode(&self.body).unwrap()
        }
    }

    fn error(&self) -> ErrorBody {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Cp {
    async fn poll(&self, token: &str, after: u64, wait: u64, json: bool) -> Answer {
        self.poll_query(token, &format!("after={after}&wait={wait}"), json)
            .await
    }

    async fn poll_query(&self, token: &str, query: &str, json: bool) -> Answer {
        let mut req = self
            .client
            .get(format!("{}/gateway/v1/config?{query}", self.base))
            .insert_header(("Authorization", token));
        if json {
            req = req.insert_header(("Accept", "application/json"));
        }
        let started = Instant::now();
        let mut res = req.send().await.unwrap();
        let body = res.body().limit(64 << 20).await.unwrap();
        Answer {
            status: res.status(),
            content_type: res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
            elapsed: started.elapsed(),
            body,
        }
    }

    async fn post(&self, path: &str, token: &str, content_type: &str, body: Vec<u8>) -> Answer {
        let started = Instant::now();
        let mut res = self
            .client
            .post(format!("{}{path}", self.base))
            .insert_header(("Authorization", token))
            .insert_header(("Content-Type", content_type))
            .send_body(body)
            .await
            .unwrap();
        let body = res.body().await.unwrap();
        Answer {
            status: res.status(),
            content_type: res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
            elapsed: started.elapsed(),
            body,
        }
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = format!("{}/api/v1{path}", self.base);
        let mut res = match (method, body) {
            ("GET", _) => self.client.get(url).send().await.unwrap(),
            (_, Some(b)) => self.client.post(url).send_json(&b).await.unwrap(),
            (_, None) => self.client.post(url).send().await.unwrap(),
        };
        let body = res.body().await.unwrap();
        (
            res.status(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }
}

// === config: deltas and snapshots ===

#[actix_web::test]
async fn after_zero_is_a_snapshot_then_deltas_carry_only_what_changed() {
    let cp = start(store(100));
    let r1 = two_sites(&cp.store);
    let token = token(&cp.store, "gw-a");

    let first = cp.poll(&token, 0, 0, false).await.update();
    assert!(first.full);
    assert_eq!(first.revision, r1);
    assert_eq!(first.hash, expected_hash(&cp.store, "gw-a"));
    let snapshot = GatewaySnapshot::default().apply(&first).unwrap();

    // A change to gw-a's API: a delta with just that API.
    let r2 = put(&cp.store, vec![api("api-a", "be-a", "v2")]);
    let delta = cp.poll(&token, r1, 0, false).await.update();
    assert!(!delta.full);
    assert_eq!((delta.from_revision, delta.revision), (r1, r2));
    assert_eq!(
        delta.upserts.iter().map(Resource::key).collect::<Vec<_>>(),
        vec![ResourceKey::new(Kind::Api, "api-a")]
    );
    assert!(delta.deletes.is_empty());
    let snapshot = snapshot.apply(&delta).unwrap();
    assert_eq!(snapshot.hash, expected_hash(&cp.store, "gw-a"));

    // A change gw-a cannot see still moves its revision, with an empty delta.
    let r3 = put(&cp.store, vec![api("api-b", "be-b", "v2")]);
    let empty = cp.poll(&token, r2, 0, true).await.update();
    assert!(!empty.full && empty.upserts.is_empty() && empty.deletes.is_empty());
    assert_eq!(empty.revision, r3);
    let snapshot = snapshot.apply(&empty).unwrap();
    assert_eq!(snapshot.revision, r3);

    // Up to date and not waiting: 304 at once.
    assert_eq!(
        cp.poll(&token, r3, 0, false).await.status,
        StatusCode::NOT_MODIFIED
    );

    // Ahead of the store (e.g. the control plane was restored from an older backup): snapshot.
    let ahead = cp.poll(&token, r3 + 100, 0, false).await.update();
    assert!(ahead.full);
    assert_eq!(ahead.revision, r3);
    assert_eq!(GatewaySnapshot::default().apply(&ahead).unwrap(), snapshot);
}

/// Every answer is signed for the polling gateway (its name, the revision, the hash); a poll
/// whose held hash differs from the control plane's at the same revision gets a full snapshot at
/// once; a rotation signs with the new key and carries the old key's endorsement of it.
#[actix_web::test]
async fn answers_are_signed_and_a_different_hash_gets_a_snapshot_at_once() {
    use outpost_model::signing::{PublicKey, verify_config};
    let cp = start(store(100));
    let r1 = two_sites(&cp.store);
    let token = token(&cp.store, "gw-a");
    let old_key = PublicKey::parse(&cp.state.signing_public_key()).unwrap();

    let first = cp.poll(&token, 0, 0, false).await.update();
    let verify = |gw: &str, u: &ConfigUpdate, keys: &[PublicKey]| {
        verify_config(keys, gw, u.revision, &u.hash, &u.signature, &u.endorsements)
    };
    assert_eq!(verify("gw-a", &first, &[old_key]).unwrap(), old_key);
    assert!(verify("gw-b", &first, &[old_key]).is_err(), "bound to gw-a");

    // Same revision, same hash: nothing to say until something changes.
    let same = cp
        .poll_query(
            &token,
            &format!("after={r1}&wait=1&hash={}", first.hash),
            false,
        )
        .await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert!(same.elapsed >= Duration::from_millis(900), "it waited");
    // Same revision, another hash: a full snapshot, without waiting.
    let other = cp
        .poll_query(
            &token,
            &format!("after={r1}&wait=30&hash={}", "0".repeat(64)),
            false,
        )
        .await;
    assert!(other.elapsed < Duration::from_secs(10), "answered at once");
    let other = other.update();
    assert!(other.full);
    assert_eq!((other.revision, &other.hash), (r1, &first.hash));

    // Rotation through the admin API.
    let (status, body) = cp.admin("POST", "/signing-keys/rotate", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_key = PublicKey::parse(body["active"].as_str().unwrap()).unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(body["keys"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["keys"][1]["endorsed-by"], old_key.to_string());
    let (_, listed) = cp.admin("GET", "/signing-keys", None).await;
    assert_eq!(listed["active"], new_key.to_string());
    // The snapshot cached before the rotation (same revision) is not served after it.
    let again = cp.poll(&token, 0, 0, false).await.update();
    assert_eq!(again.revision, r1);
    assert_eq!(again.signature.key, new_key.to_string());

    let r2 = put(&cp.store, vec![api("api-a", "be-a", "v2")]);
    let delta = cp.poll(&token, r1, 0, false).await.update();
    assert_eq!(delta.revision, r2);
    assert_eq!(
        delta.signature.key,
        new_key.to_string(),
        "signed with the new key"
    );
    assert_eq!(
        verify("gw-a", &delta, &[old_key]).unwrap(),
        new_key,
        "a gateway trusting only the old key follows the endorsement"
    );
    assert_eq!(verify("gw-a", &delta, &[new_key]).unwrap(), new_key);

    // The token answer shows the key gateways should be given.
    let (status, minted) = cp
        .admin("POST", "/gateways/gw-a/token", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{minted}");
    assert_eq!(minted["config-signing-keys"], json!([new_key.to_string()]));
}

#[actix_web::test]
async fn behind_the_change_log_gets_a_snapshot() {
    let cp = start(store(3));
    let r1 = two_sites(&cp.store);
    let token = token(&cp.store, "gw-a");
    for i in 0..5 {
        put(&cp.store, vec![api("api-a", "be-a", &format!("v{i}"))]);
    }
    assert!(cp.store.log_floor() > r1);
    let update = cp.poll(&token, r1, 0, false).await.update();
    assert!(update.full, "below the log floor");
    assert_eq!(update.revision, cp.store.revision());
    let snap = GatewaySnapshot::default().apply(&update).unwrap();
    assert_eq!(snap.hash, expected_hash(&cp.store, "gw-a"));

    // Within the log: a delta again.
    let floor = cp.store.log_floor();
    let update = cp.poll(&token, floor, 0, false).await.update();
    assert!(!update.full);
    assert_eq!(update.from_revision, floor);
}

#[actix_web::test]
async fn gateway_follows_every_change_and_hashes_match() {
    let cp = start(store(100));
    two_sites(&cp.store);
    let token = token(&cp.store, "gw-a");
    let mut snap = GatewaySnapshot::default();
    for i in 0..4 {
        match i {
            0 => {
                put(&cp.store, vec![named_value("host-a", "elsewhere")]);
            }
            // Assign api-b too: its backend, secret, product and subscription arrive.
            1 => {
                put(&cp.store, vec![gateway("gw-a", &["api-a", "api-b"])]);
            }
            // And take it away again: they are deleted.
            2 => {
                put(&cp.store, vec![gateway("gw-a", &["api-a"])]);
            }
            _ => {
                cp.store
                    .delete(
                        ResourceKey::new(Kind::Subscription, "sub-a"),
                        Precondition::None,
                    )
                    .unwrap();
            }
        }
        let update = cp.poll(&token, snap.revision, 0, i % 2 == 0).await.update();
        assert_eq!(update.full, snap.revision == 0);
        snap = snap.apply(&update).unwrap();
        assert_eq!(snap.revision, cp.store.revision());
        assert_eq!(snap.hash, expected_hash(&cp.store, "gw-a"));
        if i == 1 {
            assert!(
                snap.resources
                    .contains_key(&ResourceKey::new(Kind::NamedValue, "host-b"))
            );
        }
        if i == 2 {
            assert!(
                update
                    .deletes
                    .contains(&ResourceKey::new(Kind::NamedValue, "host-b")),
                "{update:?}"
            );
        }
    }
}

#[actix_web::test]
async fn a_gateway_never_sees_what_is_assigned_to_another() {
    let cp = start(store(100));
    two_sites(&cp.store);
    let token_a = token(&cp.store, "gw-a");
    let update = cp.poll(&token_a, 0, 0, true).await;
    let text = String::from_utf8(update.body.to_vec()).unwrap();
    let keys: Vec<String> = update
        .update()
        .upserts
        .iter()
        .map(|r| r.key().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "named-values/host-a",
            "backends/be-a",
            "apis/api-a",
            "products/prod-a",
            "subscriptions/sub-a",
            "gateways/gw-a"
        ]
    );
    for other in ["secret-host-b", "be-b", "api-b", "prod-b", "sub-b", "gw-b"] {
        assert!(!text.contains(other), "gw-a's answer mentions {other}");
    }
    // A change to gw-b's backend does not reach gw-a (beyond the revision).
    let r = cp.store.revision();
    put(&cp.store, vec![backend("be-b", "http://{{host-b}}:81")]);
    let delta = cp.poll(&token_a, r, 0, false).await.update();
    assert!(delta.upserts.is_empty() && delta.deletes.is_empty());
}

// === long-poll ===

#[actix_web::test]
async fn long_poll_answers_on_change_and_304_on_timeout() {
    let cp = start(store(100));
    let r1 = two_sites(&cp.store);
    let token = token(&cp.store, "gw-a");

    let writer = {
        let store = cp.store.clone();
        let state = cp.state.clone();
        std::thread::spawn(move || {
            // Change only once the poll is waiting, so the wake-up path is what answers.
            let deadline = Instant::now() + Duration::from_secs(10);
            while state.waiting_polls() == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let waiting = state.waiting_polls();
            (waiting, put(&store, vec![api("api-a", "be-a", "changed")]))
        })
    };
    let answer = cp.poll(&token, r1, 20, false).await;
    let (waiting, r2) = writer.join().unwrap();
    assert_eq!(waiting, 1, "the poll was waiting when the change came");
    assert_eq!(cp.state.waiting_polls(), 0);
    assert!(
        answer.elapsed < Duration::from_secs(10),
        "the poll waited {:?} although the change came while it waited",
        answer.elapsed
    );
    let update = answer.update();
    assert_eq!(update.revision, r2);
    assert_eq!(update.upserts.len(), 1);

    let answer = cp.poll(&token, r2, 1, false).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    assert!(
        answer.elapsed >= Duration::from_millis(900),
        "{answer:?}",
        answer = answer.elapsed
    );
    assert!(answer.body.is_empty());
}

// === tokens ===

/// Status, `WWW-Authenticate` and body of a call with `token`, on each gateway route.
async fn raw_answers(cp: &Cp, token: &str) -> Vec<(StatusCode, String, bytes::Bytes)> {
    let mut out = Vec::new();
    for (method, path) in [
        ("GET", "/gateway/v1/config?after=0"),
        ("POST", "/gateway/v1/heartbeat"),
        ("POST", "/gateway/v1/telemetry"),
    ] {
        let mut res = cp
            .client
            .request(method.parse().unwrap(), format!("{}{path}", cp.base))
            .insert_header(("Authorization", token))
            .insert_header(("Content-Type", "application/json"))
            .send_body("{}")
            .await
            .unwrap();
        let www = res
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        out.push((res.status(), www, res.body().await.unwrap()));
    }
    out
}

/// Without a valid token nobody learns which gateway names exist: an unknown gateway, a token
/// signed with a wrong key, a revoked one and another gateway's relabelled one all get the
/// same status, headers and body, with or without an expiry in the past, on every route.
#[actix_web::test]
async fn unknown_gateways_and_bad_signatures_answer_alike() {
    let cp = start(store(100));
    two_sites(&cp.store);
    let keys = cp.store.gateway_keys("gw-a").unwrap();
    let later = Utc::now() + chrono::Duration::hours(1);
    let past = Utc::now() - chrono::Duration::hours(1);
    let genuine = tokens::mint("gw-a", &keys.primary, later);

    let reference = raw_answers(&cp, &tokens::mint("nosuch", "some-key", later)).await;
    for (status, _, body) in &reference {
        assert_eq!(*status, StatusCode::UNAUTHORIZED);
        let body: ErrorBody = serde_json::from_slice(body).unwrap();
        assert_eq!(body.error, "unauthorized");
        assert_eq!(body.message, tokens::INVALID_TOKEN);
    }
    let mut cases = vec![
        ("unknown, expired", tokens::mint("nosuch", "some-key", past)),
        (
            "unknown, a real key",
            tokens::mint("nosuch", &keys.primary, later),
        ),
        ("wrong key", tokens::mint("gw-a", "guessed-key", later)),
        (
            "wrong key, expired",
            tokens::mint("gw-a", "guessed-key", past),
        ),
        ("relabelled", genuine.replacen("gw-a", "gw-b", 1)),
    ];
    let (status, _) = cp
        .admin(
            "POST",
            "/gateways/gw-a/keys/regenerate",
            Some(json!({"key": "primary"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    cases.push(("revoked", genuine));
    for (case, token) in cases {
        assert_eq!(raw_answers(&cp, &token).await, reference, "{case}");
    }

    // Once the signature verifies, saying "expired" gives nothing away.
    let expired = tokens::mint("gw-a", &keys.secondary, past);
    let (status, _, body) = raw_answers(&cp, &expired).await.remove(0);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert!(body.message.contains("expired at"), "{}", body.message);
}

async fn refused(cp: &Cp, token: &str) -> String {
    let answer = cp.poll(token, 0, 0, false).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{token}");
    let body = answer.error();
    assert_eq!(body.error, "unauthorized");
    body.message
}

#[actix_web::test]
async fn tokens_are_checked_on_every_call() {
    let cp = start(store(100));
    two_sites(&cp.store);
    let keys = cp.store.gateway_keys("gw-a").unwrap();
    let later = Utc::now() + chrono::Duration::hours(1);
    let primary = tokens::mint("gw-a", &keys.primary, later);
    let secondary = tokens::mint("gw-a", &keys.secondary, later);
    assert_eq!(cp.poll(&primary, 0, 0, false).await.status, StatusCode::OK);

    let expired = tokens::mint(
        "gw-a",
        &keys.primary,
        Utc::now() - chrono::Duration::minutes(2),
    );
    assert!(refused(&cp, &expired).await.contains("expired at"));

    // A forged token and an unknown gateway get the same answer (see
    // unknown_gateways_and_bad_signatures_answer_alike).
    let forged = tokens::mint("gw-a", "guessed-key", later);
    assert_eq!(refused(&cp, &forged).await, tokens::INVALID_TOKEN);
    let unknown = tokens::mint("gw-zzz", &keys.primary, later);
    assert_eq!(refused(&cp, &unknown).await, tokens::INVALID_TOKEN);

    assert!(refused(&cp, "GatewayKey gw-a").await.contains("malformed"));

    // gw-a's token relabelled as gw-b: the signature is gw-a's, so it fails for gw-b.
    let relabelled = primary.replacen("gw-a", "gw-b", 1);
    assert!(
        refused(&cp, &relabelled)
            .await
            .contains("minted for another gateway")
    );

    // A gateway that says which gateway it is refuses to run with another's token.
    let mut res = cp
        .client
        .get(format!("{}/gateway/v1/config", cp.base))
        .insert_header(("Authorization", primary.as_str()))
        .insert_header(("Outpost-Gateway", "gw-b"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers().get("www-authenticate").unwrap(), "GatewayKey");
    let body: ErrorBody = res.json().await.unwrap();
    assert!(
        body.message.contains("is for gateway 'gw-a'"),
        "{}",
        body.message
    );

    let mut res = cp
        .client
        .get(format!("{}/gateway/v1/config", cp.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: ErrorBody = res.json().await.unwrap();
    assert!(body.message.contains("missing"), "{}", body.message);

    // Regenerating the primary key revokes tokens minted from it, not the secondary's.
    let (status, new_keys) = cp
        .admin(
            "POST",
            "/gateways/gw-a/keys/regenerate",
            Some(json!({"key": "primary"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(new_keys["primary"], keys.primary.as_str());
    assert_eq!(new_keys["secondary"], keys.secondary.as_str());
    assert!(refused(&cp, &primary).await.contains("revoked"));
    assert_eq!(
        cp.poll(&secondary, 0, 0, false).await.status,
        StatusCode::OK
    );
    // Heartbeats and telemetry are checked the same way.
    let answer = cp
        .post(
            "/gateway/v1/heartbeat",
            &primary,
            "application/json",
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = cp
        .post(
            "/gateway/v1/telemetry",
            &forged,
            "application/json",
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn admin_mints_tokens_within_the_maximum_lifetime() {
    let cp = start(store(100));
    two_sites(&cp.store);
    let (status, body) = cp
        .admin(
            "POST",
            "/gateways/gw-a/token",
            Some(json!({"key": "secondary", "lifetime-secs": 3600})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let value = body["value"].as_str().unwrap();
    assert!(value.starts_with("GatewayKey gw-a&"));
    assert_eq!(cp.poll(value, 0, 0, false).await.status, StatusCode::OK);

    let expiry = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let (status, body) = cp
        .admin(
            "POST",
            "/gateways/gw-a/token",
            Some(json!({"key": "primary", "expiry": expiry})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = cp
        .admin(
            "POST",
            "/gateways/gw-a/token",
            Some(json!({"key": "primary", "lifetime-secs": 31 * 86400})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("maximum of 30 days"),
        "{body}"
    );

    let (status, body) = cp
        .admin(
            "POST",
            "/gateways/gw-a/token",
            Some(json!({"key": "tertiary"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "bad-request");

    // A body is an object (serde would read `[]` as a request with every field defaulted), and
    // a whole number written as a float is that integer (JSON Schema's numbers).
    let (status, body) = cp
        .admin("POST", "/gateways/gw-a/token", Some(json!([])))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("expected an object"),
        "{body}"
    );
    let (status, body) = cp
        .admin(
            "POST",
            "/gateways/gw-a/token",
            Some(json!({"lifetime-secs": 3600.0})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, _) = cp
        .admin(
            "POST",
            "/gateways/nope/token",
            Some(json!({"key": "primary"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, keys) = cp.admin("GET", "/gateways/gw-a/keys", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys["primary"].as_str().unwrap().len(), 64);
}

// === heartbeats, instances, telemetry ===

fn heartbeat(instance: &str, revision: u64, hash: &str) -> Heartbeat {
    Heartbeat {
        instance_id: instance.into(),
        hostname: format!("{instance}.site"),
        version: "0.1.0".into(),
        applied_revision: revision,
        config_hash: hash.into(),
        token_expiry: None,
        started_at: Utc::now(),
        config_source: "control-plane".into(),
        redis: "connected".into(),
        stopping: false,
        certificates: Vec::new(),
        pool_members: Vec::new(),
        readiness: Some(wire::Readiness {
            ready: true,
            reason: None,
        }),
    }
}

#[actix_web::test]
async fn heartbeats_show_as_instances_with_derived_state() {
    let cp = start(store(100));
    let r1 = two_sites(&cp.store);
    let token_a = token(&cp.store, "gw-a");
    let hash = expected_hash(&cp.store, "gw-a");

    // bincode in, bincode out.
    let answer = cp
        .post(
            "/gateway/v1/heartbeat",
            &token_a,
            BINCODE_MEDIA_TYPE,
            wire::encode(&Heartbeat {
                pool_members: vec![wire::PoolMemberStatus {
                    backend: "be-a".into(),
                    member: "http://10.0.0.7:8000".into(),
                    state: "ejected".into(),
                }],
                readiness: Some(wire::Readiness {
                    ready: false,
                    reason: Some("draining".into()),
                }),
                ..heartbeat("i-1", r1, &hash)
            })
            .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let ack: HeartbeatAck = wire::decode(&answer.body).unwrap();
    assert_eq!(ack.revision, r1);
    // JSON in, JSON out; this one is behind, and from a release that does not report its
    // readiness.
    let mut old = serde_json::to_value(heartbeat("i-2", r1 - 1, "stale-hash")).unwrap();
    old.as_object_mut().unwrap().remove("readiness");
    let answer = cp
        .post(
            "/gateway/v1/heartbeat",
            &token_a,
            "application/json",
            serde_json::to_vec(&old).unwrap(),
        )
        .await;
    let ack: HeartbeatAck = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(ack.revision, r1);
    let token_b = token(&cp.store, "gw-b");
    let hash_b = expected_hash(&cp.store, "gw-b");
    cp.post(
        "/gateway/v1/heartbeat",
        &token_b,
        BINCODE_MEDIA_TYPE,
        wire::encode(&heartbeat("i-3", r1, &hash_b)).unwrap(),
    )
    .await;

    let (status, list) = cp.admin("GET", "/gateways/gw-a/instances", None).await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["instance-id"], "i-1");
    assert_eq!(list[0]["gateway"], "gw-a");
    assert_eq!(list[0]["hostname"], "i-1.site");
    assert_eq!(list[0]["applied-revision"], r1);
    assert_eq!(list[0]["connection"], "connected");
    assert_eq!(list[0]["sync"], "in-sync");
    assert_eq!(list[0]["redis"], "connected");
    assert_eq!(
        list[0]["pool-members"],
        serde_json::json!([{"backend": "be-a", "member": "http://10.0.0.7:8000", "state": "ejected"}])
    );
    assert!(
        list[0]["remote-addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(list[0]["token-expires-in-secs"].as_i64().unwrap() > 3000);
    assert_eq!(list[0]["ready"], false);
    assert_eq!(list[0]["not-ready-reason"], "draining");
    assert_eq!(list[1]["instance-id"], "i-2");
    assert_eq!(list[1]["sync"], "behind");
    assert_eq!(list[1]["ready"], serde_json::Value::Null, "not reported");
    assert_eq!(list[1]["not-ready-reason"], serde_json::Value::Null);

    // After a change to gw-a's view, i-1 is behind until it applies it.
    put(&cp.store, vec![api("api-a", "be-a", "v9")]);
    let (_, list) = cp.admin("GET", "/gateways/gw-a/instances", None).await;
    assert_eq!(list[0]["sync"], "behind");

    let (_, all) = cp.admin("GET", "/instances", None).await;
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance-id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["i-1", "i-2", "i-3"]);
    assert_eq!(all[2]["sync"], "in-sync");
    assert_eq!(
        (&all[2]["ready"], &all[2]["not-ready-reason"]),
        (&serde_json::json!(true), &serde_json::Value::Null)
    );

    let (status, _) = cp.admin("GET", "/gateways/nope/instances", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let answer = cp
        .post(
            "/gateway/v1/heartbeat",
            &token_a,
            "text/plain",
            b"hi".to_vec(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let answer = cp
        .post(
            "/gateway/v1/heartbeat",
            &token_a,
            BINCODE_MEDIA_TYPE,
            vec![1, 2, 3],
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[actix_web::test]
async fn telemetry_is_summed_once_per_batch() {
    let cp = start(store(100));
    two_sites(&cp.store);
    let token_a = token(&cp.store, "gw-a");
    let minute = Utc::now().timestamp() / 60 * 60;
    // Every request of an aggregate took 137 µs but one, which took 30 ms.
    let agg = |status: u16, count: u64| RequestAggregate {
        key: AggregateKey {
            minute,
            api: "api-a".into(),
            operation: "get".into(),
            status,
            cache: "none".into(),
            product: String::new(),
            subscription: String::new(),
        },
        count,
        total_duration_us: 137 * (count - 1) + 30_000,
        max_duration_us: 30_000,
        backend_duration_us: 50 * count,
        request_bytes: 0,
        response_bytes: 100 * count,
        latency: vec![
            (wire::latency_bucket(137) as u16, count - 1),
            (wire::latency_bucket(30_000) as u16, 1),
        ],
    };
    let batch = TelemetryBatch {
        instance_id: "i-1".into(),
        sequence: 7,
        aggregates: vec![agg(200, 8), agg(503, 2)],
    };
    for _ in 0..2 {
        // The second upload is a retry of the first.
        let answer = cp
            .post(
                "/gateway/v1/telemetry",
                &token_a,
                BINCODE_MEDIA_TYPE,
                wire::encode(&batch).unwrap(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
    }
    let next = TelemetryBatch {
        sequence: 8,
        aggregates: vec![agg(200, 5)],
        ..batch.clone()
    };
    let answer = cp
        .post(
            "/gateway/v1/telemetry",
            &token_a,
            "application/json",
            serde_json::to_vec(&next).unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);

    let (status, summary) = cp
        .admin("GET", "/telemetry?gateway=gw-a&minutes=5", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(summary["requests"], 15, "{summary}");
    assert_eq!(summary["errors"], 2);
    let api = &summary["apis"][0];
    assert_eq!(api["api"], "api-a");
    assert_eq!(api["statuses"]["200"], 13);
    assert_eq!(api["max-duration-ms"], 30.0);
    // 12 of 15 requests in [120, 150) µs: the median is sub-millisecond, not 0.
    let p50 = api["p50-ms"].as_f64().unwrap();
    assert!((0.12..0.15).contains(&p50), "{api}");

    let (status, report) = cp
        .admin("GET", "/analytics?gateway=gw-a&group_by=status", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["total"]["requests"], 15, "{report}");
    assert_eq!(report["total"]["errors"], 2);
    assert_eq!(report["total"]["response-bytes"], 1500);
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{report}");
    assert_eq!(
        (groups[0]["status"].as_u64(), groups[0]["requests"].as_u64()),
        (Some(200), Some(13))
    );
    assert_eq!(groups[1]["error-rate"], 1.0);
    let p99 = report["total"]["p99-ms"].as_f64().unwrap();
    assert!((25.0..=30.0).contains(&p99), "the 30 ms requests: {report}");

    let (_, other) = cp.admin("GET", "/telemetry?gateway=gw-b", None).await;
    assert_eq!(other["requests"], 0);
    let (_, other) = cp.admin("GET", "/analytics?gateway=gw-b", None).await;
    assert_eq!(other["total"]["requests"], 0, "{other}");
    assert_eq!(other["total"]["p50-ms"], Value::Null);
    assert_eq!(other["groups"], json!([]));
    let (status, _) = cp.admin("GET", "/telemetry?minutes=0", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A histogram that does not add up to the count is refused, naming the aggregate.
    let mut wrong = agg(200, 3);
    wrong.latency[0].1 = 7;
    let answer = cp
        .post(
            "/gateway/v1/telemetry",
            &token_a,
            BINCODE_MEDIA_TYPE,
            wire::encode(&TelemetryBatch {
                sequence: 9,
                aggregates: vec![agg(200, 1), wrong],
                ..batch.clone()
            })
            .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let body: ErrorBody = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body.problems.len(), 1, "{:?}", body.problems);
    assert_eq!(body.problems[0].path, "aggregates[1].latency");
}

/// `GET /api/v1/analytics` lists every bad parameter at once; `from` after `to` is empty.
#[actix_web::test]
async fn analytics_parameters_are_checked_together() {
    let cp = start(store(100));
    let (status, body) = cp
        .admin(
            "GET",
            "/analytics?from=yesterday&to=2026-01-01T00:00:00Z&group_by=colour&limit=3&api=a&api=b",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let body: ErrorBody = serde_json::from_value(body).unwrap();
    let paths: Vec<&str> = body.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["from", "group_by", "limit", "api"],
        "{:?}",
        body.problems
    );
    assert!(
        body.problems[1].message.contains("minute"),
        "{:?}",
        body.problems
    );

    let (status, body) = cp
        .admin(
            "GET",
            "/analytics?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z&group_by=minute",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"]["requests"], 0);
    assert_eq!(body["group-by"], "minute");
}
