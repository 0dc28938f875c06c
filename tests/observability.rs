//! Observability a gateway operator plugs in: the access log (`[access_log]`), read back from
//! its file and checked field by field, with real gateways (offline mode) in front of the
//! sample backend over loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use outpost::gateway::settings::GatewaySettings;
use outpost::gateway::{self, RunningGateway};
use serde_json::Value;

mod support;

const KEY: &str = support::GOLD_KEY;
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// API `quiet`, left out of the access log.
const QUIET_API: &str = r#"  - name: quiet
    path: quiet
    backend: sample
    subscription-required: false
    access-log: false
    operations: [{name: any, method: GET, url-template: "/{*rest}"}]
"#;

fn config(backend: SocketAddr) -> String {
    support::orders_estate(backend, 100, "", QUIET_API)
}

fn start(dir: &Path, tweak: impl FnOnce(&mut GatewaySettings)) -> RunningGateway {
    let yaml = config(support::sample_backend_thread());
    support::offline_gateway(dir, &yaml, |settings| {
        settings.access_log.enabled = true;
        settings.access_log.path = dir.join("access.log").display().to_string();
        tweak(settings);
    })
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn access_log_lines_carry_every_field_and_never_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), |_| {});
    let base = gw.traffic_url();
    let instance = gw.instance_id().to_owned();
    let http = support::blocking_client();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut req = http.get(format!("{base}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().unwrap().status().as_u16()
    };
    let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    assert_eq!(
        get(
            "/orders/hello",
            &[
                ("Ocp-Apim-Subscription-Key", KEY),
                ("traceparent", &traceparent),
                // Not a trusted proxy: the log names the TCP peer.
                ("X-Forwarded-For", "203.0.113.9"),
            ]
        ),
        200
    );
    assert_eq!(
        get(&format!("/orders/status/503?subscription-key={KEY}"), &[]),
        503
    );
    assert_eq!(get("/orders/orders", &[]), 401);
    assert_eq!(get("/quiet/anything", &[]), 200, "served, not logged");
    assert_eq!(get("/nowhere", &[]), 404);
    gw.stop();

    let raw = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    assert!(!raw.contains(KEY), "a subscription key in the log:\n{raw}");
    assert!(
        !raw.contains("subscription-key"),
        "the query in the log:\n{raw}"
    );
    let lines = lines(&dir.path().join("access.log"));
    assert_eq!(lines.len(), 4, "{raw}");
    assert!(
        lines.iter().all(|l| l["api"] != "quiet"),
        "access-log: false API logged:\n{raw}"
    );

    let ok = &lines[0];
    let time = chrono::DateTime::parse_from_rfc3339(ok["time"].as_str().unwrap()).unwrap();
    assert!(
        (chrono::Utc::now() - time.to_utc()).num_seconds() < 600,
        "{ok}"
    );
    assert!(
        ok["time"].as_str().unwrap().contains('.'),
        "sub-second: {ok}"
    );
    assert_eq!(
        ok["request_id"], TRACE,
        "the client's trace continues: {ok}"
    );
    assert_eq!(ok["trace_id"], TRACE);
    assert_eq!(ok["client"], "127.0.0.1");
    assert_eq!(ok["method"], "GET");
    assert!(
        ok["host"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{ok}"
    );
    assert_eq!(ok["path"], "/orders/hello");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["api"], "orders");
    assert_eq!(ok["operation"], "any");
    assert_eq!(ok["product"], "gold");
    assert_eq!(ok["subscription"], "gold-sub");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["request_bytes"], 0);
    assert!(ok["response_bytes"].as_u64().unwrap() > 100, "{ok}");
    let total = ok["duration_us"].as_u64().unwrap();
    let backend = ok["backend_us"].as_u64().unwrap();
    assert!(backend > 0 && backend <= total, "{ok}");
    assert_eq!(ok["cache"], "none");
    assert_eq!(ok["rate_limit"], "allowed");
    assert_eq!(ok["retries"], 0);
    assert_eq!(ok["error"], Value::Null);
    assert_eq!(ok["client_cert_subject"], Value::Null);
    assert_eq!(ok["instance"], instance.as_str());

    let retried = &lines[1];
    assert_eq!(retried["status"], 503);
    assert_eq!(retried["retries"], 2, "{retried}");
    assert_eq!(retried["path"], "/orders/status/503", "no query: {retried}");
    assert_eq!(retried["trace_id"], Value::Null, "no traceparent sent");
    let id = retried["request_id"].as_str().unwrap();
    assert!(
        id.len() == 32 && id != TRACE && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{retried}"
    );

    let refused = &lines[2];
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["api"], "orders");
    assert_eq!(refused["subscription"], Value::Null);
    assert_eq!(refused["backend_us"], Value::Null);
    assert_eq!(refused["rate_limit"], Value::Null);
    assert_eq!(refused["error"], "SubscriptionKeyNotFound", "{refused}");
    assert_eq!(refused["request_id"].as_str().unwrap().len(), 32);

    let unknown = &lines[3];
    assert_eq!(unknown["status"], 404);
    assert_eq!(unknown["api"], Value::Null);
    assert_ne!(unknown["request_id"], refused["request_id"]);
}

#[test]
fn sampling_zero_writes_nothing_and_one_writes_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let none = start(dir.path(), |s| s.access_log.sample = 0.0);
    let http = support::blocking_client();
    for _ in 0..20 {
        let res = http
            .get(format!("{}/quiet/x", none.traffic_url()))
            .send()
            .unwrap();
        assert_eq!(res.status(), 200);
        let res = http
            .get(format!("{}/orders/orders", none.traffic_url()))
            .header("Ocp-Apim-Subscription-Key", KEY)
            .send()
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    none.stop();
    let path = dir.path().join("access.log");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");

    let all = start(dir.path(), |s| s.access_log.sample = 1.0);
    for _ in 0..20 {
        let res = http
            .get(format!("{}/orders/orders", all.traffic_url()))
            .header("Ocp-Apim-Subscription-Key", KEY)
            .send()
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    all.stop();
    assert_eq!(lines(&path).len(), 20, "appended to the same file");
}

// === the control plane's /metrics ===

/// The value of one series (`name{labels}` exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn control_plane_metrics_count_admin_calls_commits_and_gateways() {
    use outpost::control_plane::{self, settings::ControlPlaneSettings, tokens};
    let mut s = ControlPlaneSettings::default();
    s.admin.listen = "127.0.0.1:0".into();
    s.admin.token = "metrics-test-admin-token-0000000000".into();
    s.gateway_api.listen = "127.0.0.1:0".into();
    s.store.data_dir = ":memory:".into();
    let cp = control_plane::start(s).expect("control plane starts");
    let http = support::blocking_client();
    let admin = cp.admin_url();
    let scrape = || {
        let res = http.get(format!("{admin}/metrics")).send().unwrap();
        assert_eq!(res.status(), 200, "open without a token by default");
        res.text().unwrap()
    };
    let before = scrape();
    let put = |path: &str, body: serde_json::Value| {
        http.put(format!("{admin}/api/v1/{path}"))
            .bearer_auth(cp.admin_token())
            .json(&body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let backend = support::sample_backend_thread();
    let api = serde_json::json!({
        "name": "echo", "path": "echo", "backend": "echo", "subscription-required": false,
        "operations": [{"name": "get", "method": "GET", "url-template": "/{*rest}"}],
    });
    let statuses = [
        put(
            "backends/echo",
            serde_json::json!({"name": "echo", "url": format!("http://{backend}")}),
        ),
        put("apis/echo", api.clone()),
        // The same again: answered, nothing committed.
        put("apis/echo", api),
        put(
            "gateways/gw-m",
            serde_json::json!({"name": "gw-m", "apis": ["echo"]}),
        ),
    ];
    assert!(
        statuses.iter().all(|s| (200..300).contains(s)),
        "{statuses:?}"
    );
    // (DELETE: the other test of this process refuses GETs, on the same process-wide counters.)
    let refused = http
        .delete(format!("{admin}/api/v1/apis/echo"))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401);

    let after = scrape();
    let delta = |text: &str, series: &str| {
        sample(text, series).unwrap_or(0.0) - sample(&before, series).unwrap_or(0.0)
    };
    let puts: f64 = [200, 201]
        .iter()
        .map(|s| {
            delta(
                &after,
                &format!(r#"outpost_cp_admin_requests_total{{method="PUT",status="{s}"}}"#),
            )
        })
        .sum();
    assert_eq!(puts, 4.0, "{after}");
    assert_eq!(
        delta(
            &after,
            r#"outpost_cp_admin_requests_total{method="DELETE",status="401"}"#
        ),
        1.0,
        "{after}"
    );
    assert_eq!(delta(&after, "outpost_cp_commits_total"), 3.0, "{after}");
    assert_eq!(
        sample(&after, "outpost_cp_revision"),
        Some(cp.store().revision() as f64)
    );
    assert_eq!(
        delta(
            &after,
            r#"outpost_cp_store_operation_seconds_count{operation="put"}"#
        ),
        4.0,
        "{after}"
    );
    assert!(
        after.contains(r#"outpost_cp_store_operation_seconds_bucket{operation="put",le="0.001"}"#),
        "a histogram, with buckets: {after}"
    );
    assert_eq!(
        sample(&after, r#"outpost_cp_gateway_instances{state="connected"}"#),
        Some(0.0)
    );

    // A gateway connects: it long-polls, heartbeats and uploads telemetry.
    let keys = cp.store().gateway_keys("gw-m").unwrap();
    let token = tokens::mint(
        "gw-m",
        &keys.primary,
        chrono::Utc::now() + chrono::TimeDelta::days(1),
    );
    let mut gs = support::loopback_settings();
    gs.control_plane.url = cp.gateway_url();
    gs.control_plane.token = token;
    gs.control_plane.poll_wait = Duration::from_secs(3);
    gs.control_plane.heartbeat_interval = Duration::from_secs(1);
    gs.telemetry.flush_interval = Duration::from_secs(1);
    let gw = gateway::start(gs).expect("gateway starts");
    let res = http
        .get(format!("{}/echo/hello", gw.traffic_url()))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    eventually("the gateway connected, waiting and reporting", || {
        let text = scrape();
        sample(&text, r#"outpost_cp_gateway_instances{state="connected"}"#) == Some(1.0)
            && sample(&text, "outpost_cp_config_polls_waiting") == Some(1.0)
            && delta(
                &text,
                r#"outpost_cp_telemetry_batches_total{result="added"}"#,
            ) >= 1.0
    });
    gw.stop();
    // Its last poll ends by its wait (3 s): the control plane notices a closed poll only then.
    eventually("the stopped gateway shows as stopped", || {
        let text = scrape();
        sample(&text, r#"outpost_cp_gateway_instances{state="stopped"}"#) == Some(1.0)
            && sample(&text, r#"outpost_cp_gateway_instances{state="connected"}"#) == Some(0.0)
            && sample(&text, "outpost_cp_config_polls_waiting") == Some(0.0)
    });
    cp.stop();
}

#[test]
fn control_plane_metrics_can_require_the_admin_token() {
    use outpost::control_plane::{self, settings::ControlPlaneSettings};
    let mut s = ControlPlaneSettings::default();
    s.admin.listen = "127.0.0.1:0".into();
    s.admin.token = "metrics-test-admin-token-1111111111".into();
    s.admin.metrics_require_token = true;
    s.gateway_api.listen = "127.0.0.1:0".into();
    s.store.data_dir = ":memory:".into();
    let cp = control_plane::start(s).expect("control plane starts");
    let url = format!("{}/metrics", cp.admin_url());
    let http = support::blocking_client();
    assert_eq!(http.get(&url).send().unwrap().status(), 401);
    let res = http.get(&url).bearer_auth(cp.admin_token()).send().unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().unwrap().contains("outpost_cp_revision"));
    cp.stop();
}
