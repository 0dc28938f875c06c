//! `validate-headers` and `find-and-replace` through a real gateway in front of the sample
//! backend: every failing header named in one 400, patterns and value lists, `prevent` for
//! undeclared headers, bad patterns refused at publish with their location; bodies rewritten
//! both ways with their new length, the body limit kept.

mod support;
use support::*;

const CONFIG: &str = r#"
apiVersion: outpost/v1
named-values:
  - {name: mode-b, value: beta}
backends:
  - {name: main, url: "BACKEND/api"}
apis:
  - name: shop
    path: shop
    backend: main
    subscription-required: false
    operations:
      - name: checked
        method: GET
        url-template: "/checked"
        policies:
          inbound:
            - validate-headers:
                headers:
                  - {name: X-Tenant, pattern: "[a-z]{3,8}"}
                  - {name: X-Mode, required: false, values: [alpha, "{{mode-b}}"]}
                  - {name: X-Trace}
      - name: strict
        method: GET
        url-template: "/strict"
        policies:
          inbound:
            - validate-headers:
                unspecified-header-action: prevent
                headers:
                  - {name: X-Tenant}
      - name: replaced
        method: POST
        url-template: "/replaced"
        policies:
          inbound:
            - find-and-replace: {from: "secret", to: "{{mode-b}}-longer"}
          outbound:
            - find-and-replace: {from: "/api/replaced", to: "/x"}
"#;

fn errors(a: &Answer) -> Vec<(String, String)> {
    a.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["problem"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[actix_web::test]
async fn validate_headers_names_every_failing_header() {
    let gw = gateway(CONFIG).await;
    let good = [("X-Tenant", "acme"), ("X-Trace", "1")];
    assert_eq!(get(&gw, "/shop/checked", &good).await.status, 200);
    // The optional header, with an allowed value (one from a named value).
    let a = get(
        &gw,
        "/shop/checked",
        &[("X-Tenant", "acme"), ("X-Trace", "1"), ("X-Mode", "beta")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    // Three problems at once: a pattern matched only in part, a value not in the list, one
    // required header missing.
    let a = get(
        &gw,
        "/shop/checked",
        &[("X-Tenant", "acme1"), ("X-Mode", "gamma")],
    )
    .await;
    let message = a.error(400);
    assert!(message.contains("x-tenant, x-mode, x-trace"), "{message}");
    assert_eq!(
        errors(&a),
        vec![
            (
                "x-tenant".into(),
                "a value does not match the declared pattern".into()
            ),
            (
                "x-mode".into(),
                "a value is not one of the allowed values".into()
            ),
            ("x-trace".into(), "missing".into()),
        ]
    );
    let records = gw.records.lock().unwrap().clone();
    assert_eq!(records.last().unwrap().error_reason, Some("HeadersInvalid"));
}

#[actix_web::test]
async fn prevent_refuses_undeclared_headers_but_not_the_protocols() {
    let gw = gateway(CONFIG).await;
    let (status, text) = raw(
        gw.addr,
        "GET /shop/strict HTTP/1.1\r\nHost: a\r\nX-Tenant: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = raw(
        gw.addr,
        "GET /shop/strict HTTP/1.1\r\nHost: a\r\nX-Tenant: t\r\nX-Extra: 1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains(r#"{"name":"x-extra","problem":"not declared"}"#),
        "{text}"
    );
}

#[test]
fn bad_header_rules_are_refused_with_their_location() {
    let yaml = CONFIG.replace("pattern: \"[a-z]{3,8}\"", "pattern: \"[a-z\"");
    let problems = compile_problems(&yaml);
    assert!(
        problems.contains("validate-headers.headers[0].pattern"),
        "{problems}"
    );
    assert!(problems.contains("not a regular expression"), "{problems}");
    let yaml = CONFIG.replace(
        "{name: X-Trace}",
        "{name: X-Trace, pattern: a, values: [a]}",
    );
    let problems = compile_problems(&yaml);
    assert!(problems.contains("headers[2]"), "{problems}");
    assert!(
        problems.contains("at most one of pattern and values"),
        "{problems}"
    );
}

#[actix_web::test]
async fn find_and_replace_rewrites_both_bodies_with_their_new_length() {
    let gw = gateway(CONFIG).await;
    let a = call(
        &gw,
        "POST",
        "/shop/replaced",
        &[],
        Some("a secret, another secret"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    // The backend got the request body replaced, with its new length.
    let echo: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(echo["body"], "a beta-longer, another beta-longer");
    assert_eq!(echo["bodyBytes"], 34);
    // The client got the response body replaced (the echoed path), its length matching.
    assert_eq!(echo["path"], "/x");
    assert_eq!(
        a.header("content-length")
            .map(|l| l.parse::<usize>().unwrap()),
        Some(a.body.len())
    );
    // A response body over the gateway's body limit (the request's is within it) is refused,
    // not cut.
    let gw = gateway_with(CONFIG, |s| s.limits.max_body_bytes = 100).await;
    let a = call(
        &gw,
        "POST",
        "/shop/replaced",
        &[],
        Some("a secret, another secret"),
    )
    .await;
    assert!(a.error(502).contains("larger than the 100 bytes"));
    let records = gw.records.lock().unwrap().clone();
    assert_eq!(
        records.last().unwrap().error_reason,
        Some("ResponseBodyTooLarge")
    );
}
