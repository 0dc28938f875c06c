//! `send-request`, `log` and `emit-metric` through a real gateway in front of the sample
//! backend (which is also the service the calls go to): the call's answer read by expressions
//! and templates in later steps and sections, `copy` mode keeping the body for the backend,
//! failures and timeouts with and without `ignore-error`, the answer's size limit; a `log`
//! event in the process log with its dimensions; a custom counter on the metrics with its
//! dimensions and the cap on its label sets; bad settings refused at publish with their
//! location.

mod support;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use support::*;

const CONFIG: &str = r#"
apiVersion: outpost/v1
named-values:
  - {name: call-secret, value: s3cr3t}
backends:
  - {name: main, url: "BACKEND/api"}
apis:
  - name: calls
    path: calls
    backend: main
    subscription-required: false
    operations:
      - name: lookup
        method: GET
        url-template: "/lookup/{id}"
        policies:
          inbound:
            - send-request:
                response-variable-name: lookup
                url: "BACKEND/directory/{id}?from=gw"
                method: POST
                headers:
                  - {name: X-Call, value: "{{call-secret}}"}
                  - {name: X-Caller, value-expression: "'id-' + request.params.id"}
                body: '{"who": "{request.header.X-Who}"}'
            - set-header: {name: X-Lookup-Status, value-expression: "string(context.responses.lookup.status)"}
            - set-header: {name: X-Lookup-Method, value-expression: "context.responses.lookup.json.method"}
            - set-header: {name: X-Lookup-Path, value-expression: "context.responses['lookup'].json.path"}
            - set-header: {name: X-Lookup-Call, value-expression: "context.responses.lookup.json.headers['x-call'] + '/' + context.responses.lookup.json.headers['x-caller']"}
            - set-header: {name: X-Lookup-Body, value-expression: "context.responses.lookup.json.body"}
            - choose:
                when:
                  - condition: "context.responses.lookup.headers['content-type'].contains('json')"
                    policies:
                      - set-header: {name: X-Lookup-Json, value: "yes"}
          outbound:
            - set-header: {name: X-Lookup-Length, value-expression: "string(size(context.responses.lookup.body))"}
      - name: status
        method: GET
        url-template: "/code/{code}"
        policies:
          inbound:
            - send-request: {response-variable-name: s, url-expression: "'BACKEND/status/' + request.params.code"}
            - set-header: {name: X-Call-Status, value-expression: "string(context.responses.s.status)"}
      - name: down
        method: GET
        url-template: "/down"
        policies:
          inbound:
            - send-request: {response-variable-name: d, url: "CLOSED/x"}
      - name: down-ignored
        method: GET
        url-template: "/down-ignored"
        policies:
          inbound:
            - send-request: {response-variable-name: d, url: "CLOSED/x", ignore-error: true}
            - set-header: {name: X-Call-Status, value-expression: "string(context.responses.d.status)"}
            - set-header: {name: X-Call-Failed, value-expression: "context.responses.d.error != ''"}
      - name: slow
        method: GET
        url-template: "/slow"
        policies:
          inbound:
            - send-request: {response-variable-name: s, url: "BACKEND/delay/30000", timeout: 1}
      - name: large
        method: GET
        url-template: "/large"
        policies:
          inbound:
            - send-request: {response-variable-name: l, url: "BACKEND/bytes/5000"}
      - name: copied
        method: POST
        url-template: "/copied"
        policies:
          inbound:
            - send-request:
                response-variable-name: copy
                mode: copy
                url: "BACKEND/audit"
                headers:
                  - {name: X-Tenant, exists-action: delete}
            - set-header: {name: X-Copy-Method, value-expression: "context.responses.copy.json.method"}
            - set-header: {name: X-Copy-Body, value-expression: "context.responses.copy.json.body"}
            - set-header: {name: X-Copy-Tenant, value-expression: "string('x-tenant' in context.responses.copy.json.headers)"}
            - set-header: {name: X-Copy-Type, value-expression: "context.responses.copy.json.headers['content-type']"}
      - name: after
        method: GET
        url-template: "/after"
        policies:
          outbound:
            - send-request: {response-variable-name: notify, url: "BACKEND/notify/{request.id}", method: PUT}
            - set-header: {name: X-Notified, value: "{variable.notify}"}
            - set-header: {name: X-Notify-Status, value-expression: "string(context.responses.notify.status)"}
      - name: recovered
        method: GET
        url-template: "/recovered"
        policies:
          inbound:
            - send-request: {response-variable-name: d, url: "CLOSED/x"}
          on-error:
            - send-request: {response-variable-name: e, url: "BACKEND/status/202"}
            - set-header: {name: X-Error-Call, value-expression: "string(context.responses.e.status)"}
"#;

#[actix_web::test]
async fn the_answer_is_read_by_later_steps_and_sections() {
    let gw = gateway(CONFIG).await;
    let a = get(&gw, "/calls/lookup/42", &[("X-Who", "ada")]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.forwarded("x-lookup-status").as_deref(), Some("200"));
    assert_eq!(a.forwarded("x-lookup-method").as_deref(), Some("POST"));
    assert_eq!(
        a.forwarded("x-lookup-path").as_deref(),
        Some("/directory/42")
    );
    // The named value and the expression in the call's headers.
    assert_eq!(
        a.forwarded("x-lookup-call").as_deref(),
        Some("s3cr3t/id-42")
    );
    assert_eq!(
        a.forwarded("x-lookup-body").as_deref(),
        Some(r#"{"who": "ada"}"#)
    );
    assert_eq!(a.forwarded("x-lookup-json").as_deref(), Some("yes"));
    // The answer is still there in outbound.
    let length: usize = a.header("x-lookup-length").unwrap().parse().unwrap();
    assert!(length > 50, "{length}");
}

#[actix_web::test]
async fn any_status_is_an_answer() {
    let gw = gateway(CONFIG).await;
    for code in ["201", "404", "503"] {
        let a = get(&gw, &format!("/calls/code/{code}"), &[]).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.forwarded("x-call-status").as_deref(), Some(code));
    }
}

#[actix_web::test]
async fn failures_fail_the_request_unless_ignored() {
    let gw = gateway(CONFIG).await;
    let a = get(&gw, "/calls/down", &[]).await;
    let message = a.error(502);
    assert!(message.contains("send-request"), "{message}");
    assert_eq!(
        gw.records.lock().unwrap().last().unwrap().error_reason,
        Some("SendRequestFailed")
    );
    let a = get(&gw, "/calls/down-ignored", &[]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.forwarded("x-call-status").as_deref(), Some("0"));
    assert_eq!(a.forwarded("x-call-failed").as_deref(), Some("true"));
    // on-error may call too.
    let a = get(&gw, "/calls/recovered", &[]).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.header("x-error-call"), Some("202"));
}

#[actix_web::test]
async fn a_call_past_its_timeout_is_a_504() {
    let gw = gateway(CONFIG).await;
    let a = get(&gw, "/calls/slow", &[]).await;
    let message = a.error(504);
    assert!(message.contains("no answer within 1 s"), "{message}");
    assert_eq!(
        gw.records.lock().unwrap().last().unwrap().error_reason,
        Some("SendRequestTimeout")
    );
}

#[actix_web::test]
async fn an_answer_above_the_body_limit_is_refused() {
    let gw = gateway_with(CONFIG, |s| s.limits.max_body_bytes = 4096).await;
    let a = get(&gw, "/calls/large", &[]).await;
    let message = a.error(502);
    assert!(message.contains("larger than the 4096 bytes"), "{message}");
}

#[actix_web::test]
async fn copy_sends_the_request_and_keeps_its_body_for_the_backend() {
    let gw = gateway(CONFIG).await;
    let a = call(
        &gw,
        "POST",
        "/calls/copied",
        &[("X-Tenant", "acme"), ("Content-Type", "text/plain")],
        Some("the body"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.forwarded("x-copy-method").as_deref(), Some("POST"));
    assert_eq!(a.forwarded("x-copy-body").as_deref(), Some("the body"));
    assert_eq!(a.forwarded("x-copy-tenant").as_deref(), Some("false"));
    assert_eq!(a.forwarded("x-copy-type").as_deref(), Some("text/plain"));
    // The backend got the body too, and the header the call's own list deleted.
    assert_eq!(a.json()["body"], "the body");
    assert_eq!(a.forwarded("x-tenant").as_deref(), Some("acme"));
}

#[actix_web::test]
async fn outbound_calls_see_the_request_and_set_the_variable() {
    let gw = gateway(CONFIG).await;
    let a = get(&gw, "/calls/after", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-notify-status"), Some("200"));
    // `{variable.NAME}` is the answer's body: the echo of the PUT.
    let notified = a.header("x-notified").unwrap();
    let echo: serde_json::Value = serde_json::from_str(notified).unwrap();
    assert_eq!(echo["method"], "PUT");
    assert!(
        echo["path"].as_str().unwrap().starts_with("/notify/"),
        "{echo}"
    );
}

// === log and emit-metric ===

const OBSERVED: &str = r#"
apiVersion: outpost/v1
backends:
  - {name: main, url: "BACKEND/api"}
apis:
  - name: observed
    path: observed
    backend: main
    subscription-required: false
    operations:
      - name: logged
        method: GET
        url-template: "/logged"
        policies:
          inbound:
            - log:
                level: warn
                message: "order lookup {request.header.X-Order}"
                dimensions:
                  tenant: {value: "{request.header.X-Tenant}"}
                  big: {value-expression: "int(request.headers['x-order']) > 100"}
      - name: orders
        method: GET
        url-template: "/orders"
        policies:
          outbound:
            - emit-metric:
                name: policy_test_orders
                value: 2
                dimensions:
                  tenant: {value: "{request.header.X-Tenant}"}
                  status: {value-expression: "string(response.status)"}
"#;

/// The process log of this test binary, as JSON lines.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .json()
            .with_env_filter("outpost::policy=debug")
            .with_writer(move || Sink(sink.clone()))
            .try_init()
            .expect("the first subscriber of this test binary");
        buf
    })
    .clone()
}

#[actix_web::test]
async fn log_writes_a_structured_event_with_its_dimensions() {
    let log = captured_log();
    let gw = gateway(OBSERVED).await;
    let a = get(
        &gw,
        "/observed/logged",
        &[("X-Tenant", "acme"), ("X-Order", "123")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    let event: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["fields"]["message"] == "order lookup 123")
        .unwrap_or_else(|| panic!("no log event in:\n{text}"));
    assert_eq!(event["level"], "WARN");
    assert_eq!(event["target"], "outpost::policy");
    assert_eq!(event["fields"]["api"], "observed");
    assert_eq!(event["fields"]["operation"], "logged");
    let dims: serde_json::Value =
        serde_json::from_str(event["fields"]["dimensions"].as_str().unwrap()).unwrap();
    assert_eq!(dims, serde_json::json!({"tenant": "acme", "big": "true"}));
    // A dimension whose expression fails fails the policy (the header is missing here).
    let a = get(&gw, "/observed/logged", &[("X-Tenant", "acme")]).await;
    assert_eq!(a.status, 500);
}

fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[actix_web::test]
async fn emit_metric_counts_on_the_metrics_with_bounded_label_sets() {
    let prometheus = outpost::gateway::ops::prometheus().expect("a recorder");
    let gw = gateway(OBSERVED).await;
    for _ in 0..3 {
        let a = get(
            &gw,
            "/observed/orders",
            &[("X-Tenant", "acme"), ("X-Order", "1")],
        )
        .await;
        assert_eq!(a.status, 200);
    }
    let text = prometheus.render();
    let name = "outpost_custom_policy_test_orders_total";
    assert_eq!(
        sample(
            &text,
            name,
            &[r#"api="observed""#, r#"tenant="acme""#, r#"status="200""#]
        ),
        Some(6.0),
        "{text}"
    );
    // Many tenants: past the cap, samples go to the overflow series, counted.
    let cap = outpost::gateway::pipeline::MAX_SERIES_PER_METRIC;
    for i in 0..cap + 5 {
        let tenant = format!("t{i}");
        let a = get(
            &gw,
            "/observed/orders",
            &[("X-Tenant", tenant.as_str()), ("X-Order", "1")],
        )
        .await;
        assert_eq!(a.status, 200);
    }
    let text = prometheus.render();
    let series = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .count();
    assert_eq!(series, cap + 1, "the cap and the overflow series");
    assert_eq!(
        sample(
            &text,
            name,
            &[r#"tenant="_overflow""#, r#"status="_overflow""#]
        ),
        Some(12.0),
        "6 requests past the cap, 2 each"
    );
    assert_eq!(
        sample(
            &text,
            "outpost_custom_metric_overflow_total",
            &[&format!(r#"metric="{name}""#)]
        ),
        Some(6.0)
    );
}

// === validate-content ===

const VALIDATED: &str = r#"
apiVersion: outpost/v1
backends:
  - {name: main, url: "BACKEND/api"}
apis:
  - name: orders
    path: orders
    backend: main
    subscription-required: false
    operations:
      - name: create
        method: POST
        url-template: "/new"
        policies:
          inbound:
            - validate-content:
                max-size: 200
                content:
                  application/json:
                    schema:
                      type: object
                      required: [id, items]
                      properties:
                        id: {type: integer, minimum: 1}
                        items: {type: array, items: {type: string}, minItems: 1}
      - name: audited
        method: POST
        url-template: "/audited"
        policies:
          inbound:
            - validate-content:
                size-exceeded-action: detect
                unspecified-content-type-action: prevent
                max-size: 20
                content:
                  application/json: {schema: {type: object, required: [id]}, action: detect}
      - name: echo
        method: POST
        url-template: "/echo"
        policies:
          outbound:
            - validate-content:
                content:
                  application/json:
                    schema: '{"type": "object", "required": ["method"], "properties": {"method": {"const": "GET"}}}'
"#;

fn errors(a: &Answer) -> Vec<(String, String)> {
    a.json()["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {}", String::from_utf8_lossy(&a.body)))
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["problem"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn post(gw: &Gateway, path: &str, content_type: &str, body: &'static str) -> Answer {
    call(
        gw,
        "POST",
        path,
        &[("Content-Type", content_type)],
        Some(body),
    )
    .await
}

#[actix_web::test]
async fn validate_content_lists_every_problem_of_a_request_body() {
    let gw = gateway(VALIDATED).await;
    let a = post(
        &gw,
        "/orders/new",
        "application/json; charset=utf-8",
        r#"{"id": 7, "items": ["a"]}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    // The backend got the body as sent.
    assert_eq!(a.json()["body"], r#"{"id": 7, "items": ["a"]}"#);
    let a = post(
        &gw,
        "/orders/new",
        "application/json",
        r#"{"id": 0, "items": ["a", 2]}"#,
    )
    .await;
    let message = a.error(400);
    assert!(message.contains("2 problem(s)"), "{message}");
    let places: Vec<String> = errors(&a).into_iter().map(|(n, _)| n).collect();
    assert_eq!(places, vec!["/id", "/items/1"]);
    assert_eq!(
        gw.records.lock().unwrap().last().unwrap().error_reason,
        Some("RequestContentInvalid")
    );
    let a = post(&gw, "/orders/new", "application/json", "{oops").await;
    a.error(400);
    assert!(
        errors(&a)[0].1.starts_with("the body is not JSON"),
        "{:?}",
        errors(&a)
    );
    // Over max-size: refused without validating (prevent is the default).
    let big = r#"{"id": 1, "items": ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}"#;
    let a = post(&gw, "/orders/new", "application/json", big).await;
    a.error(400);
    assert!(
        errors(&a)[0].1.contains("larger than the 200 bytes"),
        "{:?}",
        errors(&a)
    );
    // Another content type: ignored by default.
    let a = post(&gw, "/orders/new", "text/plain", "anything").await;
    assert_eq!(a.status, 200);
}

#[actix_web::test]
async fn detect_lets_the_body_through_and_unspecified_types_can_be_refused() {
    let gw = gateway(VALIDATED).await;
    let a = post(&gw, "/orders/audited", "application/json", r#"{"x": 1}"#).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = post(
        &gw,
        "/orders/audited",
        "application/json",
        r#"{"x": 1, "padding": "..."}"#,
    )
    .await;
    assert_eq!(a.status, 200, "size exceeded, detect");
    let a = post(&gw, "/orders/audited", "text/csv", "a,b").await;
    a.error(400);
    assert!(errors(&a)[0].1.contains("'text/csv'"), "{:?}", errors(&a));
}

#[actix_web::test]
async fn a_response_that_fails_its_schema_is_a_502() {
    let gw = gateway(VALIDATED).await;
    // The echo's method is POST, the schema wants GET.
    let a = post(&gw, "/orders/echo", "application/json", "{}").await;
    let message = a.error(502);
    assert!(message.contains("backend's response"), "{message}");
    assert_eq!(errors(&a)[0].0, "/method");
}

// === validate-parameters ===

const PARAMETERS: &str = r#"
apiVersion: outpost/v1
backends:
  - {name: main, url: "BACKEND/api"}
apis:
  - name: items
    path: items
    backend: main
    subscription-required: false
    operations:
      - name: list
        method: GET
        url-template: "/{shelf}/list"
        policies:
          inbound:
            - validate-parameters:
                unspecified-query-parameter-action: prevent
                path:
                  shelf: {type: string, pattern: "[a-z]{1,8}"}
                query:
                  limit: {type: integer, minimum: 1, maximum: 100}
                  sort: {values: [asc, desc]}
                  tenant: {required: true}
                  exact: {type: boolean}
      - name: loose
        method: GET
        url-template: "/loose"
        policies:
          inbound:
            - validate-parameters:
                action: detect
                query:
                  limit: {type: number}
"#;

#[actix_web::test]
async fn validate_parameters_names_every_failing_parameter() {
    let gw = gateway(PARAMETERS).await;
    let a = get(
        &gw,
        "/items/books/list?tenant=a&limit=10&sort=asc&exact=true",
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = get(
        &gw,
        "/items/Books9/list?limit=1000&sort=up&exact=yes&extra=1",
        &[],
    )
    .await;
    let message = a.error(400);
    assert!(message.contains("query.limit"), "{message}");
    assert_eq!(
        errors(&a),
        vec![
            (
                "query.exact".into(),
                "'yes' is not a boolean (true or false)".into()
            ),
            (
                "query.limit".into(),
                "1000 is more than the maximum 100".into()
            ),
            (
                "query.sort".into(),
                "is not one of the allowed values".into()
            ),
            ("query.tenant".into(), "missing".into()),
            (
                "path.shelf".into(),
                "does not match the declared pattern".into()
            ),
            ("query.extra".into(), "not declared".into()),
        ]
    );
    assert_eq!(
        gw.records.lock().unwrap().last().unwrap().error_reason,
        Some("ParametersInvalid")
    );
    let a = get(&gw, "/items/a/list?tenant=t&limit=x%31", &[]).await;
    a.error(400);
    assert_eq!(errors(&a)[0].1, "'x1' is not an integer");
    // detect lets it through.
    let a = get(&gw, "/items/loose?limit=many", &[]).await;
    assert_eq!(a.status, 200);
}

// === publish-time refusals ===

/// `apis` (YAML) with the one backend they use, through [`compile_problems`].
fn api_problems(apis: &str) -> String {
    compile_problems(&format!(
        "apiVersion: outpost/v1\nbackends:\n  - {{name: main, url: \"http://127.0.0.1:9/api\"}}\n{apis}"
    ))
}

fn api_with(inbound: &str) -> String {
    format!(
        "apis:\n  - name: a\n    path: a\n    backend: main\n    subscription-required: false\n    operations:\n      - name: o\n        method: GET\n        url-template: /o\n        policies:\n          inbound:\n{inbound}"
    )
}

#[test]
fn bad_settings_are_refused_at_publish_with_their_location() {
    let cases = [
        (
            "            - send-request: {response-variable-name: r, url: \"ftp://x/\"}\n",
            "send-request.url: 'ftp://x/' must start with http:// or https://",
        ),
        (
            "            - send-request: {response-variable-name: r, url: \"http://x\", url-expression: \"'a'\"}\n",
            "set exactly one of url and url-expression",
        ),
        (
            "            - send-request: {response-variable-name: r, url-expression: \"context.responses.r.stauts\"}\n",
            "send-request.url-expression: expression 1:",
        ),
        (
            "            - send-request: {response-variable-name: r, url: \"http://x\", timeout: 0}\n",
            "send-request.timeout: 0 is out of range 1..=600",
        ),
        (
            "            - send-request: {response-variable-name: r, url: \"http://x\", headers: [{name: \"X A\", value: v}]}\n",
            "send-request.headers[0].name",
        ),
        (
            "            - emit-metric: {name: Orders}\n",
            "emit-metric.name: 'Orders' is not a metric name",
        ),
        (
            "            - emit-metric: {name: o, dimensions: {api: {value: x}}}\n",
            "emit-metric.dimensions.api: 'api' is set by the gateway",
        ),
        (
            "            - emit-metric: {name: o, dimensions: {a: {value: x}, b: {value: x}, c: {value: x}, d: {value: x}, e: {value: x}, f: {value: x}}}\n",
            "6 dimensions; at most 5",
        ),
        (
            "            - log: {message: m, dimensions: {d: {value: x, value-expression: \"'y'\"}}}\n",
            "log.dimensions.d: set exactly one of value and value-expression",
        ),
        (
            "            - log: {message-expression: \"request.bogus\"}\n",
            "unknown field 'bogus' of request",
        ),
        (
            "            - validate-content: {content: {application/json: {schema: {type: 5}}}}\n",
            "validate-content.content.application/json.schema: not a valid JSON Schema",
        ),
        (
            "            - validate-content: {content: {Application/JSON: {schema: true}}}\n",
            "is not a lowercase media type",
        ),
        (
            "            - validate-content: {content: {application/json: {schema: [1]}}}\n",
            "a JSON Schema is an object or a boolean",
        ),
        (
            "            - validate-parameters: {path: {nope: {}}}\n",
            "validate-parameters.path.nope: 'nope' is not a parameter of the operation's URL template",
        ),
        (
            "            - validate-parameters: {query: {q: {pattern: \"(\"}}}\n",
            "validate-parameters.query.q.pattern: not a valid pattern",
        ),
        (
            "            - validate-parameters: {query: {q: {minimum: 1}}}\n",
            "minimum and maximum are for integer and number parameters",
        ),
    ];
    for (inbound, expected) in cases {
        let problems = api_problems(&api_with(inbound));
        assert!(
            problems.contains(expected),
            "{inbound}\nexpected: {expected}\ngot: {problems}"
        );
    }
}

/// A policy holding a JSON Schema crosses the gateway link (bincode, which cannot carry a
/// self-describing value) and the JSON API unchanged, nulls inside the schema included.
#[test]
fn json_schemas_cross_the_gateway_link_as_text() {
    use outpost_model::policy::Policy;
    let p: Policy = serde_json::from_value(serde_json::json!({"validate-content": {
        "content": {"application/json": {"schema": {"type": "object", "properties": {"a": {"const": null}}}}}
    }}))
    .unwrap();
    let config = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(&p, config).unwrap();
    let (back, _): (Policy, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert_eq!(back, p);
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json["validate-content"]["content"]["application/json"]["schema"],
        r#"{"properties":{"a":{"const":null}},"type":"object"}"#
    );
    let again: Policy = serde_json::from_value(json).unwrap();
    assert_eq!(again, p);
}
