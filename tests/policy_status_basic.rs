//! `set-status` (fixed and by expression, in `outbound` and `on-error`), `set-method`,
//! `set-body` (request and response) and `authentication-basic` (credentials from a secret named value), through a real gateway in
//! front of the sample backend.

use base64::Engine;

mod support;
use support::*;

const CONFIG: &str = r#"
apiVersion: outpost/v1
named-values:
  - {name: backend-password, value: "s3cret:with colon", secret: true}
backends:
  - {name: main, url: "BACKEND/api"}
  - {name: dead, url: "CLOSED"}
apis:
  - name: shop
    path: shop
    backend: main
    subscription-required: false
    operations:
      - {name: get, method: GET, url-template: "/items/{id}"}
      - name: convert
        method: GET
        url-template: "/convert"
        policies:
          inbound:
            - set-method: {method: POST}
            - set-header: {name: X-Method, value: "{request.method}"}
      - name: rebody
        method: POST
        url-template: "/rebody/{id}"
        policies:
          inbound:
            - set-body: {body-expression: "'{\"id\": \"' + request.params.id + '\"}'"}
      - name: wrapped
        method: GET
        url-template: "/wrapped"
        policies:
          outbound:
            - set-body: {body: "{\"wrapped\": true, \"api\": \"{api.name}\"}"}
    policies:
      inbound:
        - authentication-basic: {username: gateway, password: "{{backend-password}}"}
      outbound:
        - choose:
            when:
              - condition: "'id' in request.params && request.params.id == 'new'"
                policies:
                  - set-status: {code: 201}
              - condition: "'id' in request.params && request.params.id == 'bad'"
                policies:
                  - set-status: {code-expression: "'not a status'"}
  - name: down
    path: down
    backend: dead
    subscription-required: false
    operations: [{name: any, method: GET, url-template: "/"}]
    policies:
      on-error:
        - set-status:
            code-expression: "context.variables['error-status'] == '502' ? 503 : 500"
"#;

#[actix_web::test]
async fn set_status_changes_the_answer_fixed_or_by_expression() {
    let gw = gateway(CONFIG).await;
    assert_eq!(get(&gw, "/shop/items/1", &[]).await.status, 200);
    let a = get(&gw, "/shop/items/new", &[]).await;
    assert_eq!(a.status, 201);
    // The backend's body is kept.
    assert_eq!(a.json()["path"], "/api/items/new");
    // on-error: the error's status replaced by the expression's; the error body is kept as
    // it was (its statusCode included).
    let a = get(&gw, "/down/", &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["statusCode"], 502);
    // An expression that gives no status is a clear policy error.
    let a = get(&gw, "/shop/items/bad", &[]).await;
    assert_eq!(a.status, 500);
    let records = gw.records.lock().unwrap().clone();
    assert_eq!(
        records.last().unwrap().error_reason,
        Some("PolicyExpressionFailed")
    );
}

#[actix_web::test]
async fn authentication_basic_sends_the_gateways_credentials_instead_of_the_clients() {
    let gw = gateway(CONFIG).await;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("gateway:s3cret:with colon")
    );
    let a = get(&gw, "/shop/items/1", &[]).await;
    assert_eq!(a.forwarded("authorization"), Some(expected.clone()));
    let a = get(
        &gw,
        "/shop/items/1",
        &[("Authorization", "Bearer client-token")],
    )
    .await;
    assert_eq!(a.forwarded("authorization"), Some(expected));
}

#[test]
fn a_basic_user_name_with_a_colon_is_refused() {
    let problems = compile_problems(&CONFIG.replace("username: gateway", "username: \"a:b\""));
    assert!(problems.contains("cannot contain ':'"), "{problems}");
}

#[actix_web::test]
async fn set_method_forwards_with_the_new_method() {
    let gw = gateway(CONFIG).await;
    let a = get(&gw, "/shop/convert", &[]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["method"], "POST");
    // Later steps see the new method.
    assert_eq!(a.forwarded("x-method").as_deref(), Some("POST"));
}

#[test]
fn a_bad_method_is_refused() {
    let problems = compile_problems(&CONFIG.replace(
        "set-method: {method: POST}",
        "set-method: {method: \"NO THING\"}",
    ));
    assert!(problems.contains("is not an HTTP method"), "{problems}");
}

#[actix_web::test]
async fn set_body_replaces_the_request_and_the_response_body() {
    let gw = gateway(CONFIG).await;
    // Request: a longer body than the client's, sent with its own length.
    let a = call(&gw, "POST", "/shop/rebody/42", &[], Some("x")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["body"], r#"{"id": "42"}"#);
    assert_eq!(a.json()["bodyBytes"], 12);
    // Response: the backend's body replaced (it was the JSON echo, much longer).
    let a = get(&gw, "/shop/wrapped", &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.as_ref(), br#"{"wrapped": true, "api": "shop"}"#);
    assert_eq!(a.header("content-encoding"), None);
}
