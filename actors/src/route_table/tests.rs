//! Tests of the compiler (no `System`) and of the actor shell.

use std::sync::Arc;

use awc::http::Method;
use outpost_model::document::Document;
use outpost_model::resources::VersionScheme;
use outpost_model::view::gateway_view;
use outpost_model::wire::GatewaySnapshot;

use super::steps::Step;
use super::*;

fn snapshot(yaml: &str) -> GatewaySnapshot {
    let doc = Document::from_yaml(yaml).unwrap_or_else(|p| panic!("test document:\n{p}"));
    GatewaySnapshot::from_view(7, gateway_view(&doc.resources, None))
}

fn table(yaml: &str) -> CompiledTable {
    compile(&snapshot(yaml), &CompileContext::default()).unwrap_or_else(|p| panic!("{p}"))
}

const BASE: &str = r#"
apiVersion: outpost/v1
backends:
  - {name: echo, url: "http://127.0.0.1:9/base/"}
"#;

fn route<'t>(t: &'t CompiledTable, host: &str, method: Method, path: &str) -> RouteOutcome<'t> {
    route_v(t, host, method, path, None)
}

fn route_v<'t>(
    t: &'t CompiledTable,
    host: &str,
    method: Method,
    path: &str,
    version: Option<&'static str>,
) -> RouteOutcome<'t> {
    let lookup = move |_: VersionScheme, _: &str| version;
    t.route(&RouteRequest {
        host,
        path,
        method: &method,
        preflight_method: None,
        version: &lookup,
    })
}

fn matched(o: RouteOutcome<'_>) -> (String, String, Vec<(String, String)>, usize) {
    match o {
        RouteOutcome::Matched(m) => (
            m.api.name.to_string(),
            m.operation.name.to_string(),
            m.params
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            m.prefix_len,
        ),
        other => panic!("expected a match, got {other:?}"),
    }
}

#[test]
fn routes_by_host_path_method_and_template() {
    let t = table(&format!(
        "{BASE}{}",
        r#"
apis:
  - name: orders
    path: orders
    backend: echo
    operations:
      - {name: list, method: GET, url-template: "/"}
      - {name: get, method: GET, url-template: "/{id}"}
      - {name: delete, method: DELETE, url-template: "/{orderId}"}
      - {name: new, method: GET, url-template: "/new"}
      - {name: files, method: "*", url-template: "/files/{*rest}"}
  - name: shop
    path: orders
    hostnames: [shop.example.com]
    backend: echo
    operations:
      - {name: shop-get, method: GET, url-template: "/{id}"}
"#
    ));
    assert_eq!(
        matched(route(&t, "any.host", Method::GET, "/orders/42")),
        (
            "orders".into(),
            "get".into(),
            vec![("id".into(), "42".into())],
            7
        )
    );
    let (_, op, params, _) = matched(route(&t, "x", Method::DELETE, "/orders/42"));
    assert_eq!((op.as_str(), params[0].0.as_str()), ("delete", "orderId"));
    assert_eq!(matched(route(&t, "x", Method::GET, "/orders/new")).1, "new");
    assert_eq!(matched(route(&t, "x", Method::GET, "/orders")).1, "list");
    assert_eq!(matched(route(&t, "x", Method::GET, "/orders/")).1, "list");
    let (_, op, params, _) = matched(route(&t, "x", Method::PUT, "/orders/files/a/b.txt"));
    assert_eq!(op, "files");
    assert_eq!(params, vec![("rest".to_owned(), "a/b.txt".to_owned())]);
    // The named host gets its own API; the host-less API's other routes stay reachable there.
    assert_eq!(
        matched(route(&t, "shop.example.com", Method::GET, "/orders/1")).0,
        "shop"
    );
    assert_eq!(
        matched(route(&t, "shop.example.com", Method::GET, "/orders/new")).0,
        "orders"
    );
    match route(&t, "x", Method::POST, "/orders/42") {
        RouteOutcome::MethodNotAllowed { allow, .. } => assert_eq!(allow, "DELETE, GET"),
        other => panic!("{other:?}"),
    }
    match route(&t, "x", Method::GET, "/orders/42/nope") {
        RouteOutcome::NotFound { api } => assert_eq!(api.as_deref(), Some("orders")),
        other => panic!("{other:?}"),
    }
    match route(&t, "x", Method::GET, "/elsewhere") {
        RouteOutcome::NotFound { api } => assert_eq!(api, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn versioned_apis_share_a_path_or_add_a_segment() {
    let t = table(&format!(
        "{BASE}{}",
        r#"
apis:
  - name: pets-v1
    path: pets
    backend: echo
    version: {name: v1, scheme: header, parameter: api-version}
    operations: [{name: get, method: GET, url-template: "/{id}"}]
  - name: pets-v2
    path: pets
    backend: echo
    version: {name: v2, scheme: header, parameter: api-version}
    operations: [{name: get, method: GET, url-template: "/{id}"}]
  - name: cats-v1
    path: cats
    backend: echo
    version: {name: v1}
    operations: [{name: get, method: GET, url-template: "/{id}"}]
"#
    ));
    let pick = |v| matched(route_v(&t, "h", Method::GET, "/pets/1", Some(v))).0;
    assert_eq!(pick("v1"), "pets-v1");
    assert_eq!(pick("v2"), "pets-v2");
    match route_v(&t, "h", Method::GET, "/pets/1", Some("v3")) {
        RouteOutcome::UnknownVersion { known, .. } => assert_eq!(known, vec!["v1", "v2"]),
        other => panic!("{other:?}"),
    }
    let (api, _, _, prefix) = matched(route(&t, "h", Method::GET, "/cats/v1/9"));
    assert_eq!((api.as_str(), prefix), ("cats-v1", "/cats/v1".len()));
}

#[test]
fn base_is_expanded_once_across_scopes() {
    let t = table(&format!(
        "{BASE}{}",
        r#"
apis:
  - name: a
    path: a
    backend: echo
    policies:
      inbound:
        - set-header: {name: X-Api, value: api}
        - base
    operations:
      - name: with-base
        method: GET
        url-template: /x
        policies:
          inbound: [base, {set-header: {name: X-Op, value: "{request.method}"}}]
      - name: replaces
        method: GET
        url-template: /y
        policies:
          inbound: [{set-header: {name: X-Only, value: op}}]
      - {name: inherits, method: GET, url-template: /z}
products:
  - name: gold
    apis: [a]
    policies:
      inbound: [base, {set-header: {name: X-Product, value: gold}}]
policies:
  inbound: [{set-header: {name: X-Global, value: "1"}}]
  outbound: [{set-header: {name: X-Out, value: "1"}}]
"#
    ));
    let names = |p: &Pipeline| -> Vec<String> {
        p.inbound
            .iter()
            .map(|s| match s {
                Step::SetHeader(h) => h.name.to_string(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let api = &t.apis["a"];
    let op = |n: &str| api.operations.iter().find(|o| &*o.name == n).unwrap();
    assert_eq!(
        names(op("with-base").pipeline_for(None)),
        ["x-api", "x-global", "x-op"]
    );
    assert_eq!(
        names(op("with-base").pipeline_for(Some("gold"))),
        ["x-api", "x-global", "x-product", "x-op"]
    );
    assert_eq!(names(op("replaces").pipeline_for(Some("gold"))), ["x-only"]);
    assert_eq!(
        names(op("inherits").pipeline_for(None)),
        ["x-api", "x-global"]
    );
    assert_eq!(op("inherits").pipeline_for(None).outbound.len(), 1);
}

#[test]
fn a_rate_limit_right_before_a_quota_is_fused_after_base_is_expanded() {
    let t = table(&format!(
        "{BASE}{}",
        r#"
apis:
  - name: a
    path: a
    backend: echo
    policies:
      inbound:
        - base
        - quota: {calls: 10, renewal-period: 60}
        - quota: {calls: 20, renewal-period: 60}
    operations:
      - {name: op, method: GET, url-template: /x}
products:
  - name: gold
    apis: [a]
    policies:
      inbound: [{rate-limit: {calls: 5, renewal-period: 1}}]
"#
    ));
    let kinds = |p: &Pipeline| -> Vec<&str> {
        p.inbound
            .iter()
            .map(|s| match s {
                Step::RateLimitThenQuota(_) => "rate-limit+quota",
                Step::Quota(_) => "quota",
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let op = &t.apis["a"].operations[0];
    assert_eq!(kinds(op.pipeline_for(None)), ["quota", "quota"]);
    // The product's rate limit and the API's first quota: one step; the second quota alone.
    assert_eq!(
        kinds(op.pipeline_for(Some("gold"))),
        ["rate-limit+quota", "quota"]
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let snap = snapshot(&format!(
        "{BASE}{}",
        r#"
  - name: internal
    url: "https://10.0.0.1"
    tls: {ca-pem: "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n", server-name: "not a name!"}
apis:
  - name: a
    path: a
    backend: echo
    operations:
      - name: one
        method: GET
        url-template: "/{id}"
        policies:
          inbound:
            - set-header: {name: X-Id, value: "{nope}"}
            - set-header: {name: X-Ok, value: "{id}"}
      - {name: two, method: GET, url-template: "/two"}
policies:
  inbound:
    - validate-jwt: {signing-keys: [{rsa-pem: "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----"}]}
"#
    ));
    let problems = compile(&snap, &CompileContext::default()).unwrap_err();
    let text = problems.to_string();
    for needle in [
        "apis/a.operations[0].policies.inbound[0].set-header.value: '{nope}' is not a parameter",
        "policies/global.policies.inbound[0].validate-jwt.signing-keys[0]: not a usable key",
        "backends/internal.tls.ca-pem: not a usable CA certificate",
    ] {
        assert!(text.contains(needle), "missing '{needle}' in:\n{text}");
    }
    assert!(!text.contains("X-Ok"), "{text}");
    // The global problem is reported once, not per operation.
    assert_eq!(
        text.lines().filter(|l| l.contains("validate-jwt")).count(),
        1,
        "{text}"
    );

    // The control plane's entry point sees the same.
    let doc = Document::from_yaml(&format!(
        "{BASE}{}",
        r#"
apis:
  - name: a
    path: a
    backend: echo
    operations:
      - name: one
        method: GET
        url-template: "/"
        policies: {inbound: [{rewrite-uri: {template: "/x/{id}"}}]}
"#
    ))
    .unwrap();
    let problems = validate_config(&doc.resources);
    assert_eq!(problems.len(), 1, "{problems}");
    assert!(problems.0[0].message.contains("'{id}' is not a parameter"));
}

#[test]
fn backend_tls_settings_are_checked() {
    let bad_name = snapshot(&format!(
        "{BASE}  - {{name: tls, url: \"https://10.0.0.1\", tls: {{server-name: \"bad name!\"}}}}\n"
    ));
    let text = compile(&bad_name, &CompileContext::default())
        .unwrap_err()
        .to_string();
    assert!(text.contains("backends/tls.tls.server-name"), "{text}");
    let fine = snapshot(&format!(
        "{BASE}  - {{name: tls, url: \"https://10.0.0.1\", tls: {{verify: false}}}}\n  - {{name: tls2, url: \"https://10.0.0.2\", tls: {{server-name: orders.internal}}}}\n"
    ));
    let t = compile(&fine, &CompileContext::default()).unwrap();
    assert_ne!(t.backends["tls"].tls.id, t.backends["tls2"].tls.id);
    assert_eq!(t.backends["echo"].tls.id, t.backends["echo"].tls.id);
}

#[test]
fn backend_urls_named_values_and_subscriptions() {
    let t = table(
        r#"
apiVersion: outpost/v1
named-values:
  - {name: host, value: "orders.internal:8443"}
backends:
  - {name: b, url: "https://{{host}}/v2/", request-timeout-ms: 1500}
apis:
  - {name: a, path: a, backend: b, operations: [{name: o, method: GET, url-template: "/"}]}
  - {name: c, path: c, backend: b, operations: [{name: o, method: GET, url-template: "/"}]}
products:
  - {name: p, apis: [a]}
subscriptions:
  - {name: s1, scope: {product: p}, primary-key: "0123456789abcdef0123456789abcdef", secondary-key: "fedcba9876543210fedcba9876543210"}
  - {name: s2, scope: all-apis, primary-key: "00000000000000000000000000000000"}
"#,
    );
    let b = &t.backends["b"];
    assert_eq!(
        b.url.join("/x", "q=1"),
        "https://orders.internal:8443/v2/x?q=1"
    );
    assert_eq!(b.url.host(), "orders.internal");
    assert_eq!(b.request_timeout, std::time::Duration::from_millis(1500));
    let s1 = t.subscription("fedcba9876543210fedcba9876543210").unwrap();
    assert!(s1.allows("a") && !s1.allows("c"));
    assert_eq!(s1.product().map(|p| &**p), Some("p"));
    assert!(
        t.subscription("00000000000000000000000000000000")
            .unwrap()
            .allows("c")
    );
    assert!(t.subscription("nope").is_none());
    assert_eq!(t.subscription_count(), 2);
}

// === the actor ===

#[actix_rt::test]
async fn refuses_a_bad_snapshot_and_keeps_the_old_one() {
    let handle = new_table_handle();
    let actor = RouteTable::new(handle.clone(), CompileContext::default()).start();
    assert!(handle.load().is_none());

    let good = Arc::new(snapshot(&format!(
        "{BASE}apis: [{{name: a, path: a, backend: echo, operations: [{{name: o, method: GET, url-template: /}}]}}]"
    )));
    let info = actor
        .send(ApplySnapshot(good.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((info.revision, info.apis, info.operations), (7, 1, 1));
    assert!(!info.unchanged);

    let mut bad = snapshot(&format!(
        "{BASE}apis: [{{name: b, path: b, backend: echo, operations: [{{name: o, method: GET, url-template: /, policies: {{inbound: [{{set-header: {{name: X, value: \"{{nope}}\"}}}}]}}}}]}}]"
    ));
    bad.revision = 8;
    let problems = actor
        .send(ApplySnapshot(Arc::new(bad)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        problems.to_string().contains("'{nope}' is not a parameter"),
        "{problems}"
    );
    let served = handle.load_full().unwrap();
    assert_eq!(served.revision, 7);
    assert!(served.apis.contains_key("a") && !served.apis.contains_key("b"));

    let again = actor.send(ApplySnapshot(good)).await.unwrap().unwrap();
    assert!(again.unchanged);
    assert_eq!(actor.send(GetApplied).await.unwrap(), Some(again));
}
