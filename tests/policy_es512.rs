//! `validate-jwt` with ES512 (ECDSA P-521, SHA-512) tokens signed in the test with RustCrypto's
//! `p521`, through a real gateway: a static `ec-pem` key, and keys from a real JWKS endpoint
//! (`crv: P-521`) that rotates; claims (expiry, issuer) checked as for any other token; forged
//! and foreign signatures refused.

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpResponse, HttpServer, web};
use base64::Engine;
use outpost_actors::jwks::JwksRegistry;
use outpost_actors::link::ClientFactory;
use outpost_actors::route_table::CompileContext;
use p521::ecdsa::signature::Signer;
use p521::ecdsa::{Signature, SigningKey, VerifyingKey};
use p521::pkcs8::EncodePublicKey;
use serde_json::{Value, json};

mod support;
use support::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A P-521 key made from `seed` (a fixed secret scalar below the group order).
fn key(seed: u8) -> SigningKey {
    let mut secret = [seed; 66];
    secret[0] = 0x01;
    SigningKey::from_slice(&secret).unwrap()
}

fn public_pem(k: &SigningKey) -> String {
    let point = VerifyingKey::from(k).to_encoded_point(false);
    p521::PublicKey::from_sec1_bytes(point.as_bytes())
        .unwrap()
        .to_public_key_pem(p521::pkcs8::LineEnding::LF)
        .unwrap()
}

fn jwk(k: &SigningKey, kid: &str) -> Value {
    let point = VerifyingKey::from(k).to_encoded_point(false);
    json!({"kty": "EC", "crv": "P-521", "kid": kid, "alg": "ES512", "use": "sig",
        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())})
}

fn es512(k: &SigningKey, kid: Option<&str>, claims: Value) -> String {
    let mut header = json!({"alg": "ES512", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = kid.into();
    }
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature: Signature = k.sign(message.as_bytes());
    format!("{message}.{}", b64(&signature.to_bytes()))
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": "https://idp.example", "exp": chrono::Utc::now().timestamp() + 600})
}

async fn status(gw: &Gateway, path: &str, token: &str) -> Answer {
    get(gw, path, &[("Authorization", &format!("Bearer {token}"))]).await
}

/// A JWKS endpoint whose keys the test replaces.
async fn jwks_server() -> (Arc<Mutex<Vec<Value>>>, String) {
    let keys = Arc::new(Mutex::new(Vec::new()));
    let state = web::Data::from(keys.clone());
    let server = HttpServer::new(move || {
        App::new().app_data(state.clone()).route(
            "/keys",
            web::get().to(|k: web::Data<Mutex<Vec<Value>>>| async move {
                HttpResponse::Ok().json(json!({"keys": *k.lock().unwrap()}))
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}/keys", server.addrs()[0]);
    actix_rt::spawn(server.run());
    (keys, url)
}

async fn es512_gateway(pem: &str, jwks_url: &str) -> Gateway {
    let pem = pem.replace('\n', "\\n");
    let config = format!(
        r#"
apiVersion: outpost/v1
backends:
  - {{name: main, url: "BACKEND/api"}}
apis:
  - name: static
    path: static
    backend: main
    subscription-required: false
    operations: [{{name: me, method: GET, url-template: "/me"}}]
    policies:
      inbound:
        - validate-jwt:
            issuers: ["https://idp.example"]
            signing-keys: [{{ec-pem: "{pem}"}}]
        - set-header: {{name: X-Sub, value-expression: "jwt.sub"}}
  - name: fetched
    path: fetched
    backend: main
    subscription-required: false
    operations: [{{name: me, method: GET, url-template: "/me"}}]
    policies:
      inbound:
        - validate-jwt: {{jwks-url: "{jwks_url}"}}
        - set-header: {{name: X-Sub, value-expression: "jwt.sub"}}
"#
    );
    let ctx = CompileContext {
        gateway_name: None,
        jwks: Some(Arc::new(JwksRegistry::new(
            actix_rt::Arbiter::current(),
            ClientFactory::plain(),
        ))),
        ..CompileContext::default()
    };
    gateway_with_context(&config, &ctx, |_| {}).await
}

#[actix_web::test]
async fn es512_tokens_are_verified_with_a_static_p521_key() {
    let (signer, stranger) = (key(0x21), key(0x42));
    let (_keys, url) = jwks_server().await;
    let gw = es512_gateway(&public_pem(&signer), &url).await;

    let a = status(&gw, "/static/me", &es512(&signer, None, claims("ann"))).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.forwarded("x-sub").as_deref(), Some("ann"));

    // Another key's signature, a changed payload, an expired token, a foreign issuer: refused.
    let foreign = es512(&stranger, None, claims("ann"));
    assert_eq!(status(&gw, "/static/me", &foreign).await.status, 401);
    let good = es512(&signer, None, claims("ann"));
    let (head, rest) = good.split_once('.').unwrap();
    let signature = rest.split_once('.').unwrap().1;
    let forged = format!(
        "{head}.{}.{signature}",
        b64(claims("root").to_string().as_bytes())
    );
    assert_eq!(status(&gw, "/static/me", &forged).await.status, 401);
    let mut expired = claims("ann");
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 3600);
    let a = status(&gw, "/static/me", &es512(&signer, None, expired)).await;
    assert_eq!(a.status, 401);
    let mut other_issuer = claims("ann");
    other_issuer["iss"] = json!("https://evil.example");
    let a = status(&gw, "/static/me", &es512(&signer, None, other_issuer)).await;
    assert_eq!(a.status, 401);
    // A signature that is not 132 bytes, a token that is not three parts.
    let short = format!("{head}.{}.AAAA", rest.split_once('.').unwrap().0);
    assert_eq!(status(&gw, "/static/me", &short).await.status, 401);
    assert_eq!(status(&gw, "/static/me", head).await.status, 401);
    // The worker is still serving.
    assert_eq!(status(&gw, "/static/me", &good).await.status, 200);
}

#[actix_web::test]
async fn es512_keys_come_from_a_jwks_and_rotate() {
    let (k1, k2) = (key(0x31), key(0x32));
    let (keys, url) = jwks_server().await;
    *keys.lock().unwrap() = vec![jwk(&k1, "p521-a")];
    let gw = es512_gateway(&public_pem(&key(0x99)), &url).await;

    let a = status(
        &gw,
        "/fetched/me",
        &es512(&k1, Some("p521-a"), claims("ann")),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.forwarded("x-sub").as_deref(), Some("ann"));
    // Without a kid, every P-521 key is tried.
    assert_eq!(
        status(&gw, "/fetched/me", &es512(&k1, None, claims("ann")))
            .await
            .status,
        200
    );

    // A key rotated in is accepted on its first use (its unknown kid triggers a refresh).
    keys.lock().unwrap().push(jwk(&k2, "p521-b"));
    let a = status(
        &gw,
        "/fetched/me",
        &es512(&k2, Some("p521-b"), claims("bob")),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.forwarded("x-sub").as_deref(), Some("bob"));
    // A known kid with another key's signature is refused.
    assert_eq!(
        status(
            &gw,
            "/fetched/me",
            &es512(&k2, Some("p521-a"), claims("bob"))
        )
        .await
        .status,
        401
    );
}

#[test]
fn a_p521_pem_is_accepted_at_publish_and_garbage_refused() {
    let pem = public_pem(&key(0x21)).replace('\n', "\\n");
    let yaml = |k: &str| {
        format!(
            "apiVersion: outpost/v1\nbackends:\n  - {{name: main, url: \"http://127.0.0.1:9/api\"}}\n\
             apis:\n  - name: a\n    path: a\n    backend: main\n    subscription-required: false\n    \
             operations: [{{name: o, method: GET, url-template: /o}}]\n    \
             policies:\n      inbound:\n        - validate-jwt: {{signing-keys: [{{ec-pem: \"{k}\"}}]}}\n"
        )
    };
    let compile = |yaml: String| {
        let d = outpost_model::document::Document::from_yaml(&yaml).unwrap();
        let snapshot = outpost_model::wire::GatewaySnapshot::from_view(
            1,
            outpost_model::view::gateway_view(&d.resources, None),
        );
        outpost_actors::route_table::compile(&snapshot, &Default::default())
            .err()
            .map(|p| p.to_string())
            .unwrap_or_default()
    };
    assert_eq!(compile(yaml(&pem)), "");
    let bad = compile(yaml(
        "-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----",
    ));
    assert!(bad.contains("signing-keys[0]: not a usable key"), "{bad}");
}
