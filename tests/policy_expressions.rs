//! Policy expressions (CEL) end to end: `choose` in every section, `set-variable`, expression
//! values, `jwt` claims, through a real gateway in front of the sample backend; refusal of bad
//! expressions at publish time (`outpost validate`, the management API) with their location;
//! a pathological expression cut off while the worker keeps serving.

use std::process::Command;

use outpost::control_plane::settings::ControlPlaneSettings;
use outpost::control_plane::start;
use serde_json::{Value, json};

mod support;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_outpost");
const TOKEN: &str = "expressions-test-token-0123456789";
const HMAC_SECRET: &[u8] = b"expressions-test-secret-of-32-bytes!";

fn list(n: usize) -> String {
    format!("[{}]", vec!["0"; n].join(", "))
}

fn config() -> String {
    use base64::Engine;
    let secret = base64::engine::general_purpose::STANDARD.encode(HMAC_SECRET);
    let l = list(100);
    format!(
        r#"
apiVersion: outpost/v1
backends:
  - {{name: main, url: "BACKEND/api"}}
  - {{name: alt, url: "BACKEND/alt"}}
  - {{name: dead, url: "CLOSED"}}
apis:
  - name: shop
    path: shop
    backend: main
    subscription-required: false
    policies:
      inbound:
        - set-variable:
            name: tier
            value-expression: "'x-tier' in request.headers ? request.headers['x-tier'] : 'basic'"
        - choose:
            when:
              - condition: "context.variables.tier == 'gold'"
                policies:
                  - set-header: {{name: X-Lane, value: fast}}
              - condition: "request.method == 'POST'"
                policies:
                  - return-response:
                      status-code: 405
                      body-expression: "'no ' + request.method + ' on ' + context.operation"
            otherwise:
              - set-header: {{name: X-Lane, value-expression: "'slow-' + context.variables.tier"}}
        - set-query-parameter: {{name: who, value-expression: "request.query.user + '@' + context.api + '/' + request.params.id"}}
      backend:
        - choose:
            when:
              - condition: "request.path.endsWith('/alt')"
                policies:
                  - set-backend-service: {{backend-id: alt}}
      outbound:
        - choose:
            when:
              - condition: "response.status == 200 && 'x-debug' in request.headers"
                policies:
                  - set-header: {{name: X-Debug, value-expression: "string(response.status) + ' ' + context.variables.tier + ' ' + response.headers['content-type']"}}
            otherwise:
              - set-header: {{name: X-Debug, value: none}}
    operations:
      - {{name: get-item, method: GET, url-template: "/items/{{id}}"}}
      - {{name: post-item, method: POST, url-template: "/items/{{id}}"}}
      - name: bomb
        method: GET
        url-template: "/bomb"
        policies:
          inbound:
            - set-header:
                name: X-Bomb
                value-expression: "{l}.all(a, {l}.all(b, {l}.all(c, a + b + c >= 0)))"
  - name: down
    path: down
    backend: dead
    subscription-required: false
    operations: [{{name: any, method: GET, url-template: "/"}}]
    policies:
      on-error:
        - choose:
            when:
              - condition: "response.status == 502 && context.variables['error-reason'] == 'BackendConnectionFailure'"
                policies:
                  - return-response:
                      status-code: 503
                      headers: [{{name: Content-Type, value: text/plain}}]
                      body-expression: "'down: ' + context.variables['error-source'] + ' ' + string(response.status)"
  - name: claims
    path: claims
    backend: main
    subscription-required: false
    operations: [{{name: me, method: GET, url-template: "/me"}}]
    policies:
      inbound:
        - choose:
            when:
              - condition: "'authorization' in request.headers"
                policies:
                  - validate-jwt: {{signing-keys: [{{hmac-base64: "{secret}"}}]}}
        - set-header:
            name: X-Who
            value-expression: "has(jwt.sub) ? jwt.sub + ' ' + string(jwt.roles.exists(r, r == 'admin')) : 'anonymous'"
"#
    )
}

fn token(claims: Value) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(HMAC_SECRET),
    )
    .unwrap()
}

#[actix_web::test]
async fn choose_in_inbound_and_outbound_with_variables_and_expression_values() {
    let gw = gateway(&config()).await;
    // otherwise: the variable's default feeds the header; the query value is an expression.
    let a = get(&gw, "/shop/items/5?user=ann", &[]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.forwarded("x-lane").as_deref(), Some("slow-basic"));
    assert_eq!(a.json()["query"], "user=ann&who=ann%40shop%2F5");
    assert_eq!(a.header("x-debug"), Some("none"));
    // The first true branch: the variable set from a header.
    let a = get(
        &gw,
        "/shop/items/5?user=ann",
        &[("X-Tier", "gold"), ("X-Debug", "1")],
    )
    .await;
    assert_eq!(a.forwarded("x-lane").as_deref(), Some("fast"));
    // Outbound sees the response and the variables of inbound.
    assert_eq!(a.header("x-debug"), Some("200 gold application/json"));
    // The second branch answers by itself, with an expression body.
    let a = call(&gw, "POST", "/shop/items/5?user=ann", &[], None).await;
    assert_eq!(
        (a.status, a.body.as_ref()),
        (405, &b"no POST on post-item"[..])
    );
}

#[actix_web::test]
async fn choose_in_backend_and_on_error() {
    let gw = gateway(&config()).await;
    let a = get(&gw, "/shop/items/alt?user=bo", &[]).await;
    assert_eq!(a.json()["path"], "/alt/items/alt");
    let a = get(&gw, "/shop/items/main?user=bo", &[]).await;
    assert_eq!(a.json()["path"], "/api/items/main");
    let a = get(&gw, "/down/", &[]).await;
    assert_eq!(
        (a.status, a.body.as_ref()),
        (503, &b"down: backend 502"[..])
    );
}

#[actix_web::test]
async fn jwt_claims_are_seen_after_validate_jwt() {
    let gw = gateway(&config()).await;
    let exp = chrono::Utc::now().timestamp() + 600;
    let t = token(json!({"sub": "ann", "roles": ["reader", "admin"], "exp": exp}));
    let a = get(
        &gw,
        "/claims/me",
        &[("Authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(a.forwarded("x-who").as_deref(), Some("ann true"));
    let a = get(&gw, "/claims/me", &[]).await;
    assert_eq!(a.forwarded("x-who").as_deref(), Some("anonymous"));
}

#[actix_web::test]
async fn a_failing_or_pathological_expression_is_answered_and_the_worker_keeps_serving() {
    // One worker: the same thread serves the requests before and after.
    let gw = gateway(&config()).await;
    let a = get(&gw, "/shop/bomb", &[]).await;
    let message = a.error(500);
    assert!(message.contains("evaluation limit"), "{message}");
    assert!(
        message.contains("10000 comprehension iterations"),
        "{message}"
    );
    let records = gw.records.lock().unwrap().clone();
    assert_eq!(
        records.last().unwrap().error_reason,
        Some("PolicyExpressionLimit")
    );
    // A runtime error (a query parameter the expression reads is missing) is a clear 500 too.
    let message = get(&gw, "/shop/items/5", &[]).await.error(500);
    assert!(
        message.contains("set-query-parameter") && message.contains("user"),
        "{message}"
    );
    for _ in 0..3 {
        let a = get(&gw, "/shop/items/5?user=ann", &[]).await;
        assert_eq!(a.status, 200);
    }
}

const BAD: &str = r#"apiVersion: outpost/v1
backends:
  - {name: main, url: "http://127.0.0.1:9/api"}
apis:
  - name: shop
    path: shop
    backend: main
    operations: [{name: get-item, method: GET, url-template: "/items/{id}"}]
    policies:
      inbound:
        - choose:
            when:
              - condition: "request.heders['x'] == 'y'"
                policies:
                  - set-header: {name: X-A, value-expression: "response.status"}
      outbound:
        - set-variable: {name: v, value-expression: "context.api +"}
"#;

/// (line, column, path, words of the message).
const BAD_PROBLEMS: [(u32, u32, &str, &str); 3] = [
    (
        13,
        17,
        "apis[0] (shop).policies.inbound[0].choose.when[0].condition",
        "expression 1:8: unknown field 'heders' of request",
    ),
    (
        15,
        45,
        "apis[0] (shop).policies.inbound[0].choose.when[0].policies[0].set-header.value-expression",
        "'response' is not available here",
    ),
    (
        17,
        35,
        "apis[0] (shop).policies.outbound[0].set-variable.value-expression",
        "expression 1:",
    ),
];

#[test]
fn bad_expressions_are_refused_by_validate_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, BAD).unwrap();
    let name = file.display().to_string();
    let out = Command::new(BIN)
        .args(["validate", "-f", &name])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().skip(1).collect();
    assert_eq!(lines.len(), 3, "{err}");
    for (line, (l, c, path, words)) in lines.iter().zip(BAD_PROBLEMS) {
        let head = format!("{name}:{l}:{c}: {path}: ");
        assert!(line.starts_with(&head), "want {head}…\n{err}");
        assert!(line.contains(words), "want {words}\n{err}");
    }
}

#[test]
fn bad_expressions_are_refused_by_the_management_api_with_their_path() {
    let mut s = ControlPlaneSettings::default();
    s.admin.listen = "127.0.0.1:0".into();
    s.gateway_api.listen = "127.0.0.1:0".into();
    s.store.data_dir = ":memory:".into();
    s.admin.token = TOKEN.into();
    let cp = start(s).unwrap();
    let http = reqwest::blocking::Client::new();
    let res = http
        .post(format!("{}/api/v1/apply", cp.admin_url()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/yaml")
        .body(BAD)
        .send()
        .unwrap();
    // The gateway compiler's problems (where expressions are checked) are conflicts (409).
    assert_eq!(res.status().as_u16(), 409);
    let body: Value = res.json().unwrap();
    let problems = body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 3, "{body}");
    for (p, (l, c, path, words)) in problems.iter().zip(BAD_PROBLEMS) {
        assert_eq!(p["path"], path, "{body}");
        assert_eq!(
            (p["line"].as_u64(), p["column"].as_u64()),
            (Some(l.into()), Some(c.into()))
        );
        assert!(p["message"].as_str().unwrap().contains(words), "{body}");
    }
    // One resource through PUT: the path names the resource by its key.
    let backend = json!({"name": "main", "url": "http://127.0.0.1:9/api"});
    let res = http
        .put(format!("{}/api/v1/backends/main", cp.admin_url()))
        .bearer_auth(TOKEN)
        .json(&backend)
        .send()
        .unwrap();
    assert!(res.status().is_success(), "{:?}", res.text());
    let api = json!({
        "name": "shop", "path": "shop", "backend": "main",
        "operations": [{"name": "get-item", "method": "GET", "url-template": "/items/{id}"}],
        "policies": {"inbound": [{"choose": {"when": [{"condition": "size(request.headers) >"}]}}]},
    });
    let res = http
        .put(format!("{}/api/v1/apis/shop", cp.admin_url()))
        .bearer_auth(TOKEN)
        .json(&api)
        .send()
        .unwrap();
    // The gateway compiler's problems are conflicts with the configuration (409), as for a
    // `{param}` that is not in the URL template.
    assert_eq!(res.status().as_u16(), 409);
    let body: Value = res.json().unwrap();
    let p = &body["problems"][0];
    assert_eq!(
        p["path"], "apis/shop.policies.inbound[0].choose.when[0].condition",
        "{body}"
    );
    assert!(
        p["message"].as_str().unwrap().starts_with("expression 1:"),
        "{body}"
    );
}
