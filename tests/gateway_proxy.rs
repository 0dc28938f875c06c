//! The gateway's traffic path end to end: real HTTP over loopback, a real backend
//! (`sample_backend`), a configuration compiled by the route table.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::Actor;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use outpost::gateway::proxy::{ProxyHooks, start_traffic_server};
use outpost::gateway::settings::GatewaySettings;
use outpost::sample_backend;
use outpost_actors::route_table::{ApplySnapshot, CompileContext, RouteTable, new_table_handle};
use outpost_model::document::Document;
use serde_json::{Value, json};

const KEY_ALL: &str = "all-apis-key-0000000000000000000000";
const KEY_GOLD: &str = "gold-product-key-000000000000000000";
const KEY_ORDERS: &str = "orders-api-key-00000000000000000000";
const KEY_SUSPENDED: &str = "suspended-key-000000000000000000000";
const KEY_EXPIRED: &str = "expired-key-00000000000000000000000";

mod support;
use support::*;

const SUBSCRIPTIONS: &str = r#"
products:
  - {name: gold, apis: [orders]}
  - {name: silver, apis: [pets]}
subscriptions:
  - {name: everything, scope: all-apis, primary-key: all-apis-key-0000000000000000000000}
  - {name: gold-sub, scope: {product: gold}, primary-key: gold-product-key-000000000000000000}
  - {name: orders-only, scope: {api: orders}, secondary-key: orders-api-key-00000000000000000000}
  - {name: paused, scope: all-apis, state: suspended, primary-key: suspended-key-000000000000000000000}
  - {name: old, scope: all-apis, expires-at: "2020-01-01T00:00:00Z", primary-key: expired-key-00000000000000000000000}
"#;

fn routing_config() -> String {
    format!(
        r#"
apiVersion: outpost/v1
backends:
  - {{name: main, url: "BACKEND/api"}}
  - {{name: shop, url: "BACKEND/shop"}}
apis:
  - name: orders
    path: orders
    backend: main
    operations:
      - {{name: list, method: GET, url-template: "/"}}
      - {{name: get, method: GET, url-template: "/{{id}}"}}
      - {{name: cancel, method: DELETE, url-template: "/{{orderId}}"}}
  - name: shop-orders
    path: orders
    hostnames: [shop.example.com]
    backend: shop
    subscription-required: false
    operations:
      - {{name: get, method: GET, url-template: "/{{id}}"}}
  - name: pets
    path: pets
    backend: main
    operations: [{{name: echo, method: "*", url-template: "/{{*rest}}"}}]
  - name: v1
    path: people
    backend: main
    subscription-required: false
    version: {{name: "2024-01-01", scheme: header, parameter: api-version}}
    operations: [{{name: get-v1, method: GET, url-template: "/{{id}}"}}]
  - name: v2
    path: people
    backend: main
    subscription-required: false
    version: {{name: "2025-01-01", scheme: header, parameter: api-version}}
    operations: [{{name: get-v2, method: GET, url-template: "/{{id}}"}}]
  - name: seg
    path: things
    backend: main
    subscription-required: false
    version: {{name: v3}}
    operations: [{{name: get-thing, method: GET, url-template: "/{{id}}"}}]
{SUBSCRIPTIONS}"#
    )
}

// === routing and subscriptions ===

#[actix_web::test]
async fn routes_by_host_path_method_template_and_version() {
    let gw = gateway(&routing_config()).await;
    let key = [("Ocp-Apim-Subscription-Key", KEY_ALL)];

    let a = get(&gw, "/orders/42?x=1", &key).await;
    assert_eq!(a.status, 200);
    let echo = a.json();
    assert_eq!(
        echo["path"], "/api/42",
        "API prefix replaced by the backend's base path"
    );
    assert_eq!(echo["query"], "x=1");
    assert_eq!(get(&gw, "/orders", &key).await.json()["path"], "/api");

    // Host-bound API on the same path; Host is case-insensitive and its port ignored.
    let a = get(&gw, "/orders/7", &[("Host", "Shop.Example.com:8080")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["path"], "/shop/7");

    // Header-versioned APIs sharing a path; segment-versioned API.
    let a = get(&gw, "/people/5", &[("api-version", "2025-01-01")]).await;
    assert_eq!(a.json()["path"], "/api/5");
    let a = get(&gw, "/people/5", &[("api-version", "1999")]).await;
    assert!(a.error(404).contains("2024-01-01, 2025-01-01"));
    assert_eq!(get(&gw, "/things/v3/9", &[]).await.json()["path"], "/api/9");

    // Catch-all template with any method.
    let a = call(&gw, "PATCH", "/pets/a/b/c", &key, Some("hi")).await;
    let echo = a.json();
    assert_eq!(
        (echo["method"].as_str(), echo["path"].as_str()),
        (Some("PATCH"), Some("/api/a/b/c"))
    );
    assert_eq!(echo["body"], "hi");

    // 404 with an explanation; 405 with Allow.
    assert!(
        get(&gw, "/nowhere", &key)
            .await
            .error(404)
            .contains("no API is published at '/nowhere'")
    );
    assert!(
        get(&gw, "/orders/1/items", &key)
            .await
            .error(404)
            .contains("API 'orders' has no operation")
    );
    let a = call(&gw, "POST", "/orders/1", &key, None).await;
    a.error(405);
    assert_eq!(a.header("allow"), Some("DELETE, GET"));

    // One record per request, with names from the table.
    let records = gw.records.lock().unwrap().clone();
    assert_eq!(records.len(), 10, "{records:#?}");
    let first = &records[0];
    assert_eq!(
        (
            first.api.as_deref(),
            first.operation.as_deref(),
            first.status
        ),
        (Some("orders"), Some("get"), 200)
    );
    assert!(first.response_bytes > 0 && first.backend_duration.is_some());
    assert_eq!(first.subscription.as_deref(), Some("everything"));
}

#[actix_web::test]
async fn subscription_keys_scopes_and_states() {
    let gw = gateway(&routing_config()).await;
    let h = |k: &'static str| [("Ocp-Apim-Subscription-Key", k)];

    assert!(
        get(&gw, "/orders/1", &[])
            .await
            .error(401)
            .contains("missing subscription key")
    );
    assert!(
        get(&gw, "/orders/1", &h("not-a-key"))
            .await
            .error(401)
            .contains("invalid subscription key")
    );
    // Scopes: all APIs, a product, an API (secondary key).
    assert_eq!(get(&gw, "/orders/1", &h(KEY_ALL)).await.status, 200);
    assert_eq!(get(&gw, "/orders/1", &h(KEY_GOLD)).await.status, 200);
    assert_eq!(get(&gw, "/orders/1", &h(KEY_ORDERS)).await.status, 200);
    assert!(
        get(&gw, "/pets/x", &h(KEY_GOLD))
            .await
            .error(401)
            .contains("not valid for API 'pets'")
    );
    assert!(
        get(&gw, "/pets/x", &h(KEY_ORDERS))
            .await
            .error(401)
            .contains("not valid")
    );
    // States.
    assert!(
        get(&gw, "/orders/1", &h(KEY_SUSPENDED))
            .await
            .error(403)
            .contains("suspended")
    );
    assert!(
        get(&gw, "/orders/1", &h(KEY_EXPIRED))
            .await
            .error(403)
            .contains("expired")
    );

    // The key in the query works too, and neither form reaches the backend.
    let a = get(
        &gw,
        &format!("/orders/42?a=1&subscription-key={KEY_ALL}&b=2"),
        &[],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["query"], "a=1&b=2");
    let a = get(&gw, "/orders/42", &h(KEY_ALL)).await;
    assert_eq!(a.forwarded("ocp-apim-subscription-key"), None);
}

#[actix_web::test]
async fn forwarded_request_is_clean_and_traced() {
    let gw = gateway(&routing_config()).await;
    let request = format!(
        "GET /orders/42 HTTP/1.1\r\nHost: api.example.com\r\nOcp-Apim-Subscription-Key: {KEY_ALL}\r\n\
         Connection: close, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
         Proxy-Authorization: Basic abc\r\nX-Forwarded-For: 203.0.113.9\r\nX-Kept: yes\r\n\r\n"
    );
    let (status, text) = raw(gw.addr, &request).await;
    assert_eq!(status, 200, "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let echo: Value = serde_json::from_str(body).unwrap();
    let h = &echo["headers"];
    for gone in [
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "ocp-apim-subscription-key",
    ] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_ne!(h["connection"], "close, X-Hop");
    assert_eq!(h["x-kept"], "yes");
    // No trusted proxies: the client's own X-Forwarded-For is replaced, not extended.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert!(h["host"].as_str().unwrap().starts_with("127.0.0.1:"), "{h}");
    let tp = h["traceparent"].as_str().unwrap();
    assert!(tp.starts_with("00-") && tp.len() == 55, "{tp}");

    // A valid incoming traceparent is passed on unchanged.
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let a = get(
        &gw,
        "/orders/1",
        &[
            ("Ocp-Apim-Subscription-Key", KEY_ALL),
            ("traceparent", given),
        ],
    )
    .await;
    assert_eq!(a.forwarded("traceparent").as_deref(), Some(given));
}

// === limits and backend failures ===

#[actix_web::test]
async fn limits_and_backend_failures_have_their_statuses() {
    let config = r#"
apiVersion: outpost/v1
backends:
  - {name: main, url: "BACKEND", request-timeout-ms: 300}
  - {name: gone, url: "CLOSED"}
apis:
  - {name: main, path: main, backend: main, subscription-required: false, operations: [{name: any, method: "*", url-template: "/{*rest}"}]}
  - {name: gone, path: gone, backend: gone, subscription-required: false, operations: [{name: any, method: GET, url-template: "/"}]}
"#;
    let gw = gateway_with(config, |s| {
        s.limits.max_body_bytes = 1024;
        s.limits.max_header_bytes = 2048;
    })
    .await;

    assert!(
        get(&gw, "/gone", &[])
            .await
            .error(502)
            .contains("could not be connected")
    );
    let started = Instant::now();
    assert!(
        get(&gw, "/main/delay/2000", &[])
            .await
            .error(504)
            .contains("did not answer in time")
    );
    assert!(started.elapsed() < Duration::from_millis(1500));

    let big = "x".repeat(4000);
    assert!(
        get(&gw, "/main/x", &[("X-Big", big.as_str())])
            .await
            .error(431)
            .contains("2048 bytes")
    );
    let body: &'static str = Box::leak("y".repeat(2000).into_boxed_str());
    assert!(
        call(&gw, "POST", "/main/x", &[], Some(body))
            .await
            .error(413)
            .contains("1024 bytes")
    );
    // Without Content-Length the limit holds while the body streams.
    let chunk = "z".repeat(900);
    let request = format!(
        "POST /main/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
         {len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let (status, text) = raw(gw.addr, &request).await;
    assert_eq!(status, 413, "{text}");
    // Within the limits all is well.
    assert_eq!(
        call(&gw, "POST", "/main/x", &[], Some("small"))
            .await
            .json()["body"],
        "small"
    );
}

#[actix_web::test]
async fn no_configuration_yet_is_503() {
    let (server, addr) = start_traffic_server(
        "127.0.0.1:0",
        &GatewaySettings::default(),
        new_table_handle(),
        ProxyHooks::default(),
    )
    .unwrap();
    actix_rt::spawn(server);
    let mut res = client()
        .get(format!("http://{addr}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(v["statusCode"], 503);
}

#[actix_web::test]
async fn bodiless_responses_keep_their_shape() {
    let config = r#"
apiVersion: outpost/v1
backends: [{name: main, url: "BACKEND"}]
apis:
  - {name: main, path: main, backend: main, subscription-required: false, operations: [{name: any, method: "*", url-template: "/{*rest}"}]}
"#;
    let gw = gateway(config).await;
    let full = get(&gw, "/main/orders", &[]).await;
    let head = call(&gw, "HEAD", "/main/orders", &[], None).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(
        head.header("content-length"),
        Some(full.body.len().to_string().as_str())
    );
    let (status, text) = raw(
        gw.addr,
        "GET /main/status/204 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 204, "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body after a 204: {text:?}");
    assert_eq!(get(&gw, "/main/status/304", &[]).await.status, 304);
}

#[actix_web::test]
async fn large_bodies_stream_both_ways() {
    let config = r#"
apiVersion: outpost/v1
backends: [{name: main, url: "BACKEND"}]
apis:
  - {name: main, path: main, backend: main, subscription-required: false, operations: [{name: any, method: "*", url-template: "/{*rest}"}]}
"#;
    let gw = gateway_with(config, |s| s.limits.max_body_bytes = 64 << 20).await;
    // 24 MiB up, chunked (no Content-Length), verified by the backend's checksum.
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    let expected = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for _ in 0..24 {
            h.update(&chunk);
        }
        hex::encode(h.finalize())
    };
    let stream = futures_util::stream::iter(
        (0..24).map(move |_| Ok::<_, std::convert::Infallible>(chunk.clone())),
    );
    let mut res = client()
        .post(format!("{}/main/upload", gw.url))
        .send_stream(stream)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let echo: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(echo["bodyBytes"], 24 << 20);
    assert_eq!(echo["bodySha256"], expected);
    // 40 MiB down.
    let a = get(&gw, "/main/bytes/41943040", &[]).await;
    assert_eq!((a.status, a.body.len()), (200, 40 << 20));
    assert_eq!(a.header("content-length"), Some("41943040"));
    let records = gw.records.lock().unwrap().clone();
    assert_eq!(records[0].request_bytes, 24 << 20);
    assert_eq!(records[1].response_bytes, 40 << 20);
}

// === policies ===

const HMAC_SECRET: &[u8] = b"a-test-secret-that-is-long-enough-for-hs256";

const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQDPvgErTH6Oj8iy
loibux8PuC0wRyKixx6EcMOrNK83gTZRyyEP6CXs1muJYyOv7Gqfsyvd/Jd7/KRU
gNrdfXtJJ02D6JhbFKH689zrlBPoEvuycPmy6HJ4CAaQHm5J/bycLWnXDKBvCifk
tD0T2FAL6Dn5OQOpggtNJx/u9yTC7OkvW2fgI/y6nfkjiPPGyKsBOUjV3GsnH+EM
uQErO7e7eggx5Xk5U/T7zyflEMJf3w2/C15QAN8NBQSxs9sOUjkypIKI4HUO5aCR
oPJoN6+pKfLH3RSs1iZ/V67e42T1VNfHkzjvkvbhEuxE29e4ZyMKdTLiTtgjeT7K
5swicwSjAgMBAAECggEAEf32w/VAEMDLNQxskHBIZGgjIcdHbKmqLvZFPBK4Ciqa
tcLN/j6w6i436hI4CQiEw4gVCIjT5d0frmHqkrxHbTKGOCJw75J95Oox/AU7JCJg
wjeeqKwRHew0BU9dZfMf3rbgL8vcKUHL6rbhg1J8vEtEmh0iABBPQkNdNKka+fa6
1VJa0FL7eQvvMU6bbVPe5mT0q8QtxgFguzEPSzJvreWdDtsExHasje/AZD45eTXV
Aep7BUE0djrWXbizIXoUbZeuYosV5yrOzhQFagjBZ56ltxRuAmFxeTbxSFnA3b+q
kDdV2jmMyEyaFAG5dyyu5REYM90M7CBJCOhj4rk6QQKBgQDtDr3ju6lgoe0oDp3I
lEWklfX0GFEbT2fjd6C8ykUYCNZiQyDDWMx3ZEDnkN4fWj7q2vn/q+luWzLajDVe
5IrNkxpp04j2axCG44ec6OZbNidLBWcKQs2Sq9ACgUaDzIVeHt5e9nFaugnrwVca
q9U3v91UKadbNsnyfFKUuSAUOwKBgQDgV5YdAh7Kdc7vJ2tn/3zhg3G8++1igbO3
vRCT7Wx7PX7kVTyzA43CTNpHXXYIQbujiJ+rgc3BixCPJnAxvJO80mjm/uHZGoJi
WEcAEkDB8MC+9FZrhxqf+WWk0gUZ1IkaDDTZLmD6bD/rYOORK1KuxojWvXgBSp+M
1udZXkTSuQKBgQCHEXg2cq1+RqTWxwU1zO2lamBaNSS5V9QMshOene0iVZ65HCBl
zYmqmS+2AT/eQ1BIBn6dI3l8jG/8QBkEuVkw6pkJJSMLrFMdWDTjvXvLCp72ytw7
53Y0FLsPQlNIM1bmGtZ+6xIJLKkMb/vOUYvKGQLluloFycDk7dsrrBNQEwKBgQCT
lAqD+qkWtnjyihP1zfPwxe9EStXWP0xiSlVleoIqcEHRIuFTQbs3XicZWzoSJGuz
IGUpBbK85yZ1hOu5TDxDsoafrnwTvYSX/Up3mYpQCnhBJarUAYRaSE29JwuD+nRW
VkFNvVy+YAeMZ6hMDxvNLX1HBkyzTMu4coauG31awQKBgQCUKX+cf4MQerg7WZS4
bgzBD4hUAHFm2jGPV6I7TQmsMI7vhyaxyWZYPGgQ+e7gLQY88FdwP3HDBO2qZgKZ
dY8MgXe82RsD/5/UZjhOuAloYYSO0OsMPvSEW4FzgFBc40tAc7zeIDqYywUalTJ0
ziUH7mKU5DIs9gKNiV3oKtS3Cg==
-----END PRIVATE KEY-----
";

const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAz74BK0x+jo/IspaIm7sf
D7gtMEcioscehHDDqzSvN4E2UcshD+gl7NZriWMjr+xqn7Mr3fyXe/ykVIDa3X17
SSdNg+iYWxSh+vPc65QT6BL7snD5suhyeAgGkB5uSf28nC1p1wygbwon5LQ9E9hQ
C+g5+TkDqYILTScf7vckwuzpL1tn4CP8up35I4jzxsirATlI1dxrJx/hDLkBKzu3
u3oIMeV5OVP0+88n5RDCX98NvwteUADfDQUEsbPbDlI5MqSCiOB1DuWgkaDyaDev
qSnyx90UrNYmf1eu3uNk9VTXx5M475L24RLsRNvXuGcjCnUy4k7YI3k+yubMInME
owIDAQAB
-----END PUBLIC KEY-----
";

const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsoNoyk8bqtljaY7w
wAVDqmuaG5ZWaUH2Vu3acwAU6d2hRANCAATJD6pVa3Vzn8H/F6Qpp9vrEFtWVWy8
t81irbRBVkfpK+O9O1X9c19w29ijUcOpHfcJgDsgpVUcHh/aZmzS4yxq
-----END PRIVATE KEY-----
";

const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEyQ+qVWt1c5/B/xekKafb6xBbVlVs
vLfNYq20QVZH6SvjvTtV/XNfcNvYo1HDqR33CYA7IKVVHB4f2mZs0uMsag==
-----END PUBLIC KEY-----
";

fn token(alg: jsonwebtoken::Algorithm, claims: Value) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let key = match alg {
        jsonwebtoken::Algorithm::HS256 => EncodingKey::from_secret(HMAC_SECRET),
        jsonwebtoken::Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()
        }
        jsonwebtoken::Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        other => panic!("{other:?}"),
    };
    encode(&Header::new(alg), &claims, &key).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn policy_config() -> String {
    use base64::Engine;
    let secret = base64::engine::general_purpose::STANDARD.encode(HMAC_SECRET);
    let yaml_str = |s: &str| serde_json::to_string(s).unwrap();
    format!(
        r#"
apiVersion: outpost/v1
named-values:
  - {{name: env, value: staging}}
  - {{name: hmac, value: "{secret}", secret: true}}
  - {{name: rsa-pub, value: {rsa}}}
  - {{name: ec-pub, value: {ec}}}
backends:
  - {{name: main, url: "BACKEND/api"}}
  - {{name: alt, url: "BACKEND/alt", request-timeout-ms: 5000}}
apis:
  - name: headers
    path: headers
    backend: main
    subscription-required: false
    policies:
      inbound:
        - set-header: {{name: X-Env, value: "{{{{env}}}}"}}
        - set-header: {{name: X-Caller, value: "{{request.ip}} {{request.method}} {{api.name}}/{{operation.name}} {{request.header.X-In}} {{request.query.q}}"}}
        - set-header: {{name: X-Keep, value: new, exists-action: skip}}
        - set-header: {{name: X-Multi, value: two, exists-action: append}}
        - set-header: {{name: X-Drop, exists-action: delete}}
        - set-query-parameter: {{name: added, value: "a b"}}
        - set-query-parameter: {{name: gone, exists-action: delete}}
      outbound:
        - set-header: {{name: X-Served-By, value: "outpost {{gateway.name}}"}}
        - set-header: {{name: X-Asked-With, value: "{{request.header.X-In}}"}}
        - set-header: {{name: X-Sample-Backend, exists-action: delete}}
    operations:
      - {{name: get, method: GET, url-template: "/items/{{id}}"}}
      - name: rewritten
        method: GET
        url-template: "/rw/{{id}}/{{*rest}}"
        policies:
          inbound:
            - rewrite-uri: {{template: "/v2/things/{{id}}?from={{rest}}"}}
      - name: rewritten-only
        method: GET
        url-template: "/rwo/{{id}}"
        policies:
          inbound:
            - rewrite-uri: {{template: "/only/{{id}}", copy-unmatched-params: false}}
  - name: routing
    path: routing
    backend: main
    subscription-required: false
    operations:
      - name: by-id
        method: GET
        url-template: /by-id
        policies: {{backend: [{{set-backend-service: {{backend-id: alt}}}}]}}
      - name: by-url
        method: GET
        url-template: /by-url
        policies: {{inbound: [{{set-backend-service: {{base-url: "BACKEND/elsewhere"}}}}]}}
      - name: slow
        method: GET
        url-template: "/delay/{{ms}}"
        policies: {{backend: [{{forward-request: {{timeout: 1}}}}]}}
      - name: returned
        method: GET
        url-template: /returned
        policies:
          inbound:
            - return-response: {{status-code: 418, headers: [{{name: X-Why, value: "{{request.query.why}}"}}], body: "{{\"teapot\": true}}"}}
      - name: mocked
        method: GET
        url-template: "/mocked/{{id}}"
        policies:
          inbound: [{{mock-response: {{status-code: 201, body: "{{\"id\": \"{{id}}\"}}"}}}}]
      - name: failing
        method: GET
        url-template: /failing
        policies:
          backend: [{{set-backend-service: {{base-url: "CLOSED"}}}}]
          on-error:
            - set-header: {{name: X-Error-Reason, value: "{{variable.error-reason}}"}}
      - name: rescued
        method: GET
        url-template: /rescued
        policies:
          backend: [{{set-backend-service: {{base-url: "CLOSED"}}}}]
          on-error:
            - return-response: {{status-code: 200, body: "fallback after {{variable.error-status}} {{variable.error-source}}"}}
  - name: auth
    path: auth
    backend: main
    subscription-required: false
    operations:
      - name: hmac
        method: GET
        url-template: /hmac
        policies:
          inbound:
            - validate-jwt:
                signing-keys: [{{hmac-base64: "{{{{hmac}}}}"}}]
                issuers: [https://issuer.example]
                audiences: [orders]
                clock-skew: 5
                required-claims: [{{name: scope, values: [orders.read]}}]
      - name: asymmetric
        method: GET
        url-template: /asym
        policies:
          inbound:
            - validate-jwt:
                header-name: X-Token
                query-parameter-name: token
                failed-validation-httpcode: 403
                failed-validation-error-message: "Bad token."
                require-expiration-time: false
                signing-keys: [{{rsa-pem: "{{{{rsa-pub}}}}"}}, {{ec-pem: "{{{{ec-pub}}}}"}}]
      - name: header-check
        method: GET
        url-template: /check
        policies:
          inbound:
            - check-header: {{name: X-Tenant, values: [alpha, beta], ignore-case: true, failed-check-httpcode: 403, failed-check-error-message: "Unknown tenant."}}
      - name: loopback-only
        method: GET
        url-template: /loopback
        policies: {{inbound: [{{ip-filter: {{action: allow, addresses: ["127.0.0.0/8", "::1"]}}}}]}}
      - name: private-only
        method: GET
        url-template: /private
        policies: {{inbound: [{{ip-filter: {{action: allow, addresses: ["10.0.0.0/8"]}}}}]}}
      - name: loopback-banned
        method: GET
        url-template: /banned
        policies: {{inbound: [{{ip-filter: {{action: forbid, addresses: [127.0.0.1]}}}}]}}
  - name: web
    path: web
    backend: main
    policies:
      inbound:
        - cors: {{allowed-origins: ["https://app.example"], allowed-methods: [GET, POST], allowed-headers: [Content-Type, Ocp-Apim-Subscription-Key], expose-headers: [X-Request-Cost], allow-credentials: true, preflight-result-max-age: 600}}
        - base
    operations:
      - {{name: read, method: GET, url-template: "/data"}}
      - {{name: write, method: POST, url-template: "/data"}}
  - name: limited
    path: limited
    backend: main
    subscription-required: false
    policies:
      inbound: [{{limit-concurrency: {{key: "{{request.ip}}", max-count: 1}}}}]
    operations: [{{name: slow, method: GET, url-template: "/delay/{{ms}}"}}]
gateways: [{{name: edge-1}}]
subscriptions: [{{name: everything, scope: all-apis, primary-key: {KEY_ALL}}}]
"#,
        rsa = yaml_str(RSA_PUBLIC),
        ec = yaml_str(EC_PUBLIC),
    )
}

#[actix_web::test]
async fn header_query_and_uri_policies() {
    let gw = gateway(&policy_config()).await;
    let a = call(
        &gw,
        "GET",
        "/headers/items/5?q=hello&gone=1&keep=2",
        &[
            ("X-In", "in"),
            ("X-Keep", "old"),
            ("X-Multi", "one"),
            ("X-Drop", "x"),
        ],
        None,
    )
    .await;
    assert_eq!(a.status, 200);
    let echo = a.json();
    let h = &echo["headers"];
    assert_eq!(h["x-env"], "staging", "named value substituted");
    assert_eq!(h["x-caller"], "127.0.0.1 GET headers/get in hello");
    assert_eq!(h["x-keep"], "old");
    assert_eq!(h["x-multi"], "one, two");
    assert!(h.get("x-drop").is_none());
    assert_eq!(echo["query"], "q=hello&keep=2&added=a%20b");
    assert_eq!(echo["path"], "/api/items/5");
    // Outbound acts on the response.
    assert_eq!(a.header("x-served-by"), Some("outpost edge-1"));
    assert_eq!(
        a.header("x-asked-with"),
        Some("in"),
        "outbound policies still see the request headers after forwarding"
    );
    assert_eq!(a.header("x-sample-backend"), None);

    let a = get(&gw, "/headers/rw/7/a/b?keep=1", &[]).await;
    let echo = a.json();
    assert_eq!(echo["path"], "/api/v2/things/7");
    assert_eq!(echo["query"], "from=a%2Fb&keep=1");
    let echo = get(&gw, "/headers/rwo/8?dropped=1", &[]).await.json();
    assert_eq!(
        (echo["path"].as_str(), echo["query"].as_str()),
        (Some("/api/only/8"), Some(""))
    );
}

#[actix_web::test]
async fn backend_and_response_policies() {
    let gw = gateway(&policy_config()).await;
    assert_eq!(
        get(&gw, "/routing/by-id", &[]).await.json()["path"],
        "/alt/by-id"
    );
    assert_eq!(
        get(&gw, "/routing/by-url", &[]).await.json()["path"],
        "/elsewhere/by-url"
    );
    // forward-request timeout: 1 s, beyond the backend's own.
    let started = Instant::now();
    get(&gw, "/routing/delay/1800", &[]).await.error(504);
    assert!(started.elapsed() < Duration::from_millis(1700));
    assert_eq!(get(&gw, "/routing/delay/10", &[]).await.status, 200);

    let a = get(&gw, "/routing/returned?why=short", &[]).await;
    assert_eq!((a.status, a.header("x-why")), (418, Some("short")));
    assert_eq!(a.json(), json!({"teapot": true}));
    let a = get(&gw, "/routing/mocked/77", &[]).await;
    assert_eq!(
        (a.status, a.header("content-type")),
        (201, Some("application/json"))
    );
    assert_eq!(a.json(), json!({"id": "77"}));

    // on-error sees the error; its answer replaces the error's when it returns one.
    let a = get(&gw, "/routing/failing", &[]).await;
    a.error(502);
    assert_eq!(a.header("x-error-reason"), Some("BackendConnectionFailure"));
    let a = get(&gw, "/routing/rescued", &[]).await;
    assert_eq!(
        (a.status, a.body.as_ref()),
        (200, &b"fallback after 502 backend"[..])
    );
    let records = gw.records.lock().unwrap().clone();
    let rescued = records.last().unwrap();
    assert_eq!(rescued.error_reason, Some("BackendConnectionFailure"));
}

#[actix_web::test]
async fn validate_jwt_check_header_and_ip_filter() {
    use jsonwebtoken::Algorithm::{ES256, HS256, RS256};
    let gw = gateway(&policy_config()).await;
    let good = json!({"iss": "https://issuer.example", "aud": "orders", "exp": now() + 60, "scope": "orders.read orders.write"});
    let bearer = |t: String| format!("Bearer {t}");

    let auth = bearer(token(HS256, good.clone()));
    assert_eq!(
        get(&gw, "/auth/hmac", &[("Authorization", auth.as_str())])
            .await
            .status,
        200
    );
    let refused = |claims: Value| bearer(token(HS256, claims));
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 60);
    let mut other_aud = good.clone();
    other_aud["aud"] = json!("billing");
    let mut no_scope = good.clone();
    no_scope["scope"] = json!("billing.read");
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    for claims in [expired, other_aud, no_scope, no_exp] {
        let h = refused(claims.clone());
        let msg = get(&gw, "/auth/hmac", &[("Authorization", h.as_str())])
            .await
            .error(401);
        assert_eq!(msg, "JWT not present or not valid.", "{claims}");
    }
    get(&gw, "/auth/hmac", &[]).await.error(401);
    // Signed with another algorithm family than the configured key: refused.
    let rsa = bearer(token(RS256, good.clone()));
    get(&gw, "/auth/hmac", &[("Authorization", rsa.as_str())])
        .await
        .error(401);

    // RSA and EC keys, a custom header, the query parameter, a custom status and message.
    let claims = json!({"sub": "x"});
    let t = token(RS256, claims.clone());
    assert_eq!(
        get(&gw, "/auth/asym", &[("X-Token", t.as_str())])
            .await
            .status,
        200
    );
    let t = token(ES256, claims.clone());
    assert_eq!(
        get(&gw, &format!("/auth/asym?token={t}"), &[]).await.status,
        200
    );
    assert_eq!(
        get(&gw, "/auth/asym", &[("X-Token", "nope")])
            .await
            .error(403),
        "Bad token."
    );

    assert_eq!(
        get(&gw, "/auth/check", &[("X-Tenant", "ALPHA")])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&gw, "/auth/check", &[("X-Tenant", "gamma")])
            .await
            .error(403),
        "Unknown tenant."
    );
    get(&gw, "/auth/check", &[]).await.error(403);

    assert_eq!(get(&gw, "/auth/loopback", &[]).await.status, 200);
    // X-Forwarded-For is not trusted for the client address.
    get(&gw, "/auth/private", &[("X-Forwarded-For", "10.1.2.3")])
        .await
        .error(403);
    get(&gw, "/auth/banned", &[]).await.error(403);
}

#[actix_web::test]
async fn cors_preflights_and_actual_requests() {
    let gw = gateway(&policy_config()).await;
    let preflight = |origin: &'static str, method: &'static str| {
        vec![
            ("Origin", origin),
            ("Access-Control-Request-Method", method),
            ("Access-Control-Request-Headers", "content-type"),
        ]
    };
    // The route has GET and POST only: the preflight is answered, not refused with 405.
    let a = call(
        &gw,
        "OPTIONS",
        "/web/data",
        &preflight("https://app.example", "POST"),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(a.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(
        a.header("access-control-allow-headers"),
        Some("Content-Type, Ocp-Apim-Subscription-Key")
    );
    assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(a.header("access-control-max-age"), Some("600"));
    call(
        &gw,
        "OPTIONS",
        "/web/data",
        &preflight("https://evil.example", "GET"),
        None,
    )
    .await
    .error(403);
    call(
        &gw,
        "OPTIONS",
        "/web/data",
        &preflight("https://app.example", "DELETE"),
        None,
    )
    .await
    .error(403);

    // Actual requests carry the headers, errors included (a browser must read a 401).
    let ok = get(
        &gw,
        "/web/data",
        &[
            ("Origin", "https://app.example"),
            ("Ocp-Apim-Subscription-Key", KEY_ALL),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        ok.header("access-control-expose-headers"),
        Some("X-Request-Cost")
    );
    assert_eq!(ok.header("vary"), Some("Origin"));
    let denied = get(&gw, "/web/data", &[("Origin", "https://app.example")]).await;
    denied.error(401);
    assert_eq!(
        denied.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let other = get(
        &gw,
        "/web/data",
        &[
            ("Origin", "https://evil.example"),
            ("Ocp-Apim-Subscription-Key", KEY_ALL),
        ],
    )
    .await;
    assert_eq!(
        (other.status, other.header("access-control-allow-origin")),
        (200, None)
    );
    // No cors policy: an OPTIONS to a GET route stays a 405.
    call(
        &gw,
        "OPTIONS",
        "/auth/check",
        &preflight("https://app.example", "GET"),
        None,
    )
    .await
    .error(405);
}

#[actix_web::test]
async fn limit_concurrency_counts_requests_in_flight() {
    let gw = gateway(&policy_config()).await;
    let (a, b) = futures_util::join!(get(&gw, "/limited/delay/700", &[]), async {
        actix_rt::time::sleep(Duration::from_millis(150)).await;
        get(&gw, "/limited/delay/1", &[]).await
    });
    assert_eq!(a.status, 200);
    assert!(b.error(429).contains("concurrent"));
    // The place is released once the response has been sent.
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&gw, "/limited/delay/1", &[]).await.status, 200);
}

#[actix_web::test]
async fn retry_resends_the_buffered_body() {
    // A backend that fails twice with 503, then echoes what it got.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let flaky = HttpServer::new(move || {
        let seen = seen.clone();
        App::new().default_service(web::to(move |_: HttpRequest, body: Bytes| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    HttpResponse::ServiceUnavailable().finish()
                } else {
                    HttpResponse::Ok().body(body)
                }
            }
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let flaky_addr = flaky.addrs()[0];
    actix_rt::spawn(flaky.run());
    let config = format!(
        r#"
apiVersion: outpost/v1
backends: [{{name: flaky, url: "http://{flaky_addr}"}}]
apis:
  - name: flaky
    path: flaky
    backend: flaky
    subscription-required: false
    operations: [{{name: post, method: POST, url-template: /}}]
    policies:
      backend: [{{retry: {{count: 3, interval-ms: 10, condition: "503"}}}}]
"#
    );
    let gw = gateway(&config).await;
    let a = call(&gw, "POST", "/flaky", &[], Some("payload")).await;
    assert_eq!((a.status, a.body.as_ref()), (200, &b"payload"[..]));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

// === reloads ===

#[actix_web::test]
async fn a_refused_snapshot_leaves_the_served_table() {
    let gw = gateway(&routing_config()).await;
    let actor = RouteTable::new(gw.table.clone(), CompileContext::default()).start();
    let key = [("Ocp-Apim-Subscription-Key", KEY_ALL)];

    let bad = snapshot(
        &routing_config()
            .replace("BACKEND", "http://127.0.0.1:9")
            .replace(
                "operations:\n      - {name: list",
                "policies: {inbound: [{validate-jwt: {signing-keys: [{rsa-pem: \"-----BEGIN PUBLIC KEY-----\\nnope\\n-----END PUBLIC KEY-----\"}]}}]}\n    operations:\n      - {name: list",
            ),
    );
    let problems = actor
        .send(ApplySnapshot(Arc::new(bad)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        problems.to_string().contains("not a usable key"),
        "{problems}"
    );
    assert_eq!(
        get(&gw, "/orders/1001", &key).await.status,
        200,
        "the old table is still served"
    );

    // A good one replaces it at once, with no restart.
    let good = snapshot(
        &routing_config()
            .replace(
                "path: orders\n    backend: main",
                "path: orders2\n    backend: main",
            )
            .replace("BACKEND", "http://127.0.0.1:9"),
    );
    actor
        .send(ApplySnapshot(Arc::new(good)))
        .await
        .unwrap()
        .unwrap();
    get(&gw, "/orders/1001", &key).await.error(404);
    assert_eq!(get(&gw, "/orders2/1001", &key).await.status, 502);
}

// === the sample backend itself ===

#[actix_web::test]
async fn sample_backend_resources() {
    let (server, addr) = sample_backend::start("127.0.0.1:0").unwrap();
    actix_rt::spawn(server);
    let c = client();
    let mut res = c
        .get(format!("http://{addr}/api/orders"))
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(v["count"], 3);
    let mut res = c
        .get(format!("http://{addr}/orders/1002"))
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(v["customer"], "Fabrikam Inc");
    let res = c
        .get(format!("http://{addr}/orders/9"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = c
        .get(format!("http://{addr}/x/status/503"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let mut res = c
        .get(format!("http://{addr}/bytes/100000"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.body().await.unwrap().len(), 100_000);
    let mut res = c
        .post(format!("http://{addr}/echo?a=1"))
        .send_body("hi")
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(
        (
            v["method"].as_str(),
            v["query"].as_str(),
            v["body"].as_str()
        ),
        (Some("POST"), Some("a=1"), Some("hi"))
    );
}

// === shipped configuration ===

/// The sample configuration the docs and the demo use compiles as a gateway would compile it.
#[test]
fn the_sample_configuration_compiles() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sample-api.yaml");
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let doc = Document::from_yaml(&text).unwrap_or_else(|p| panic!("{p}"));
    let problems = outpost_actors::route_table::validate_config(&doc.resources);
    assert!(problems.is_empty(), "{problems}");
}
