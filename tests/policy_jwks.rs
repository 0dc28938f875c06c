//! `validate-jwt` with keys from an identity provider: a real JWKS endpoint in the test (an
//! HTTP server whose keys rotate and which goes down, counting its hits) and an OpenID Connect
//! discovery document, in front of a gateway whose key sources fetch in the background.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpResponse, HttpServer, web};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use outpost_actors::jwks::JwksRegistry;
use outpost_actors::link::ClientFactory;
use outpost_actors::route_table::CompileContext;
use serde_json::{Value, json};

mod support;
use support::*;

/// A signing key and its public JWK.
struct Key {
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn es256(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw(); // 0x04 || x || y
    Key {
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
    }
}

fn eddsa(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    Key {
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": b64(pair.public_key_raw())}),
    }
}

/// A token signed by `key`, naming `kid` in its header.
fn token(key: &Key, kid: &str) -> String {
    token_for(key, kid, "ann")
}

fn token_for(key: &Key, kid: &str, sub: &str) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(kid.into());
    let exp = chrono::Utc::now().timestamp() + 600;
    encode(&header, &json!({"sub": sub, "exp": exp}), &key.encoding).unwrap()
}

/// The identity provider: `/keys` (the JWKS) and `/.well-known/openid-configuration`.
#[derive(Default)]
struct Provider {
    keys: Mutex<Vec<Value>>,
    down: std::sync::atomic::AtomicBool,
    key_hits: AtomicUsize,
    discovery_hits: AtomicUsize,
    /// Hits of the key set the discovery document names (another path, so that the sources of
    /// `jwks-url` and `openid-config-url` are counted apart).
    discovered_key_hits: AtomicUsize,
    url: Mutex<String>,
}

impl Provider {
    fn publish(&self, keys: &[&Key]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }
    fn hits(&self) -> usize {
        self.key_hits.load(Ordering::SeqCst)
    }
}

async fn provider() -> (Arc<Provider>, String) {
    let p = Arc::new(Provider::default());
    let state = web::Data::from(p.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route(
                "/keys",
                web::get().to(|p: web::Data<Provider>| async move {
                    p.key_hits.fetch_add(1, Ordering::SeqCst);
                    if p.down.load(Ordering::SeqCst) {
                        return HttpResponse::ServiceUnavailable().finish();
                    }
                    HttpResponse::Ok().json(json!({"keys": *p.keys.lock().unwrap()}))
                }),
            )
            .route(
                "/discovered-keys",
                web::get().to(|p: web::Data<Provider>| async move {
                    p.discovered_key_hits.fetch_add(1, Ordering::SeqCst);
                    HttpResponse::Ok().json(json!({"keys": *p.keys.lock().unwrap()}))
                }),
            )
            .route(
                "/.well-known/openid-configuration",
                web::get().to(|p: web::Data<Provider>| async move {
                    p.discovery_hits.fetch_add(1, Ordering::SeqCst);
                    let base = p.url.lock().unwrap().clone();
                    HttpResponse::Ok().json(
                        json!({"issuer": base, "jwks_uri": format!("{base}/discovered-keys")}),
                    )
                }),
            )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    *p.url.lock().unwrap() = url.clone();
    actix_rt::spawn(server.run());
    (p, url)
}

fn config(idp: &str) -> String {
    format!(
        r#"
apiVersion: outpost/v1
backends:
  - {{name: main, url: "BACKEND/api"}}
apis:
  - name: jwks
    path: jwks
    backend: main
    subscription-required: false
    operations: [{{name: me, method: GET, url-template: "/me"}}]
    policies:
      inbound:
        - validate-jwt: {{jwks-url: "{idp}/keys"}}
        - set-header: {{name: X-Sub, value-expression: "jwt.sub"}}
  - name: oidc
    path: oidc
    backend: main
    subscription-required: false
    operations: [{{name: me, method: GET, url-template: "/me"}}]
    policies:
      inbound:
        - validate-jwt:
            openid-config-url: "{idp}/.well-known/openid-configuration"
            jwks-refresh-interval: 600
  - name: limited
    path: limited
    backend: main
    subscription-required: false
    operations: [{{name: me, method: GET, url-template: "/me"}}]
    policies:
      inbound:
        - validate-jwt: {{jwks-url: "{idp}/keys"}}
        - set-variable: {{name: caller, value-expression: "jwt.sub"}}
        - rate-limit-by-key: {{calls: 1, renewal-period: 60, counter-key: "{{variable.caller}}"}}
"#
    )
}

async fn fetching_gateway(idp: &str) -> Gateway {
    let ctx = CompileContext {
        gateway_name: None,
        jwks: Some(Arc::new(JwksRegistry::new(
            actix_rt::Arbiter::current(),
            ClientFactory::plain(),
        ))),
        ..CompileContext::default()
    };
    gateway_with_context(&config(idp), &ctx, |_| {}).await
}

async fn status(gw: &Gateway, path: &str, token: &str) -> u16 {
    get(gw, path, &[("Authorization", &format!("Bearer {token}"))])
        .await
        .status
}

#[actix_web::test]
async fn rotated_keys_validate_at_once_and_cached_keys_serve_while_the_provider_is_down() {
    let (idp, url) = provider().await;
    let (k1, k2, stranger) = (es256("k1"), eddsa("k2"), es256("k3"));
    idp.publish(&[&k1]);
    let gw = fetching_gateway(&url).await;

    // The first request waits for the first fetch (started in the background at compile).
    let a = get(
        &gw,
        "/jwks/me",
        &[("Authorization", &format!("Bearer {}", token(&k1, "k1")))],
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.forwarded("x-sub").as_deref(), Some("ann"));
    let after_start = idp.hits();
    assert!(after_start >= 1);

    // Known keys are served from the cache: no fetch per request.
    for _ in 0..5 {
        assert_eq!(status(&gw, "/jwks/me", &token(&k1, "k1")).await, 200);
    }
    assert_eq!(idp.hits(), after_start);

    // The provider rotates an EdDSA key in; the first token it signs is accepted (its unknown
    // kid triggers a refresh that the request waits for).
    idp.publish(&[&k1, &k2]);
    assert_eq!(status(&gw, "/jwks/me", &token(&k2, "k2")).await, 200);
    assert!(idp.hits() > after_start);
    assert_eq!(status(&gw, "/jwks/me", &token(&k1, "k1")).await, 200);

    // The provider goes down: the cached keys keep validating.
    idp.down.store(true, Ordering::SeqCst);
    let before = idp.hits();
    for _ in 0..3 {
        assert_eq!(status(&gw, "/jwks/me", &token(&k1, "k1")).await, 200);
        assert_eq!(status(&gw, "/jwks/me", &token(&k2, "k2")).await, 200);
    }
    // Made-up kids are refused, and cannot make the gateway hammer the provider: on-demand
    // refreshes are rate-limited per source.
    for _ in 0..5 {
        assert_eq!(status(&gw, "/jwks/me", &token(&stranger, "k3")).await, 401);
    }
    assert!(idp.hits() <= before + 1, "{} > {before} + 1", idp.hits());
    // A known kid with a signature of another key is refused without a refresh.
    assert_eq!(status(&gw, "/jwks/me", &token(&stranger, "k1")).await, 401);
    let records = gw.records.lock().unwrap().clone();
    assert_eq!(records.last().unwrap().error_reason, Some("JwtInvalid"));
}

#[actix_web::test]
async fn the_discovery_document_leads_to_the_key_set() {
    let (idp, url) = provider().await;
    let k1 = es256("k1");
    idp.publish(&[&k1]);
    let gw = fetching_gateway(&url).await;
    assert_eq!(status(&gw, "/oidc/me", &token(&k1, "k1")).await, 200);
    assert!(idp.discovery_hits.load(Ordering::SeqCst) >= 1);
    assert!(idp.discovered_key_hits.load(Ordering::SeqCst) >= 1);
    // Without a key the provider knows, the token is refused.
    assert_eq!(
        status(&gw, "/oidc/me", &token(&es256("k9"), "k9")).await,
        401
    );
}

#[actix_web::test]
async fn claims_key_rate_limits_per_caller() {
    let (idp, url) = provider().await;
    let k1 = es256("k1");
    idp.publish(&[&k1]);
    let gw = fetching_gateway(&url).await;
    let (ann, bob) = (token_for(&k1, "k1", "ann"), token_for(&k1, "k1", "bob"));
    assert_eq!(status(&gw, "/limited/me", &ann).await, 200);
    assert_eq!(status(&gw, "/limited/me", &ann).await, 429);
    assert_eq!(status(&gw, "/limited/me", &bob).await, 200);
}
