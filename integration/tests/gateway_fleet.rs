//! Gateway scenarios with real processes: a control plane, gateways and a backend on loopback.
//!
//! Each test builds its own little fleet, so tests run in parallel and leave nothing behind.

use std::time::Duration;

use outpost_integration::*;
use serde_json::{Value, json};

const KEY: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn fleet_yaml(backend: &TestBackend, env: &str) -> String {
    format!(
        r#"
apiVersion: outpost/v1
named-values:
  - {{name: env, value: {env}}}
backends:
  - {{name: echo, url: "{backend}"}}
apis:
  - name: echo
    path: echo
    backend: echo
    operations:
      - name: get-item
        method: GET
        url-template: "/items/{{id}}"
        policies:
          inbound:
            - base
            - rewrite-uri: {{template: "/v2/items/{{id}}"}}
      - {{name: list-items, method: GET, url-template: "/items"}}
    policies:
      inbound:
        - base
        - set-header: {{name: X-Env, value: "{{{{env}}}}"}}
products:
  - {{name: starter, apis: [echo]}}
subscriptions:
  - {{name: alice, scope: {{product: starter}}, primary-key: "{KEY}"}}
gateways:
  - {{name: site-a, apis: [echo]}}
"#,
        backend = backend.url()
    )
}

async fn get(url: &str) -> (u16, Value) {
    let res = client()
        .get(url)
        .header("Ocp-Apim-Subscription-Key", KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {}", http::describe_error(&e)));
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

struct Fleet {
    backend: TestBackend,
    cp: ControlPlane,
    token: String,
}

async fn fleet() -> Fleet {
    let backend = TestBackend::start();
    let cp = ControlPlane::start().await;
    cp.apply(&fleet_yaml(&backend, "prod")).await;
    let token = cp.token("site-a").await;
    Fleet { backend, cp, token }
}

impl Fleet {
    fn gateway_options(&self, backup: Option<&std::path::Path>) -> GatewayOptions {
        GatewayOptions {
            control_plane_url: Some(self.cp.gateway_url()),
            token: Some(self.token.clone()),
            backup_dir: backup.map(|p| p.to_owned()),
            ..Default::default()
        }
    }
}

async fn wait_env(gw: &Gateway, expected: &str) {
    let url = gw.url("/echo/items");
    eventually(secs(20), ms(100), async || {
        let (status, body) = get(&url).await;
        let env = body["headers"]["x-env"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if status == 200 && env == expected {
            Ok(())
        } else {
            Err(format!("status {status}, x-env {env:?}"))
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn request_is_routed_transformed_and_config_changes_take_effect() {
    let f = fleet().await;
    let gw = Gateway::start("gateway", f.gateway_options(None)).await;

    let (status, body) = get(&gw.url("/echo/items/42")).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(
        body["path"], "/v2/items/42",
        "rewrite-uri applied: {body:#}"
    );
    assert_eq!(
        body["headers"]["x-env"], "prod",
        "set-header with named value: {body:#}"
    );
    assert!(
        body["headers"].get("ocp-apim-subscription-key").is_none(),
        "subscription key is not forwarded: {body:#}"
    );
    assert_eq!(f.backend.total_hits(), 1);

    // A change on the control plane reaches the running gateway.
    f.cp.apply(&fleet_yaml(&f.backend, "staging")).await;
    wait_env(&gw, "staging").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn control_plane_killed_traffic_keeps_flowing_then_resyncs() {
    let mut f = fleet().await;
    let gw = Gateway::start("gateway", f.gateway_options(None)).await;
    wait_env(&gw, "prod").await;

    let load = LoadLoop::start_with(50.0, secs(60), {
        let url = gw.url("/echo/items/1");
        move |_| client().get(&url).header("Ocp-Apim-Subscription-Key", KEY)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.cp.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ready, detail) = gw.readyz().await;
    assert_eq!(
        ready, 200,
        "fail static: still ready without control plane: {detail:#}"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("outpost_control_plane_connected 0"),
        "/metrics shows the disconnection:\n{metrics}"
    );
    let report = load.stop().await;
    assert!(report.sent > 50, "{report}");
    assert_eq!(
        report.failed, 0,
        "no failed requests while the control plane is down: {report}"
    );
    assert_eq!(report.non_2xx(), 0, "{report}");

    // Changes made while the gateway was cut off reach it once the control plane is back.
    f.cp.restart().await;
    f.cp.apply(&fleet_yaml(&f.backend, "after-outage")).await;
    wait_env(&gw, "after-outage").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_restarts_from_backup_while_control_plane_is_down() {
    let mut f = fleet().await;
    let backup = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start("gateway", f.gateway_options(Some(backup.path()))).await;
    wait_env(&gw, "prod").await;
    let files: Vec<_> = std::fs::read_dir(backup.path()).unwrap().collect();
    assert!(!files.is_empty(), "a backup was written");

    f.cp.kill();
    gw.restart().await;
    let (status, body) = get(&gw.url("/echo/items/7")).await;
    assert_eq!(status, 200, "served from backup: {body:#}");
    assert_eq!(body["headers"]["x-env"], "prod");
    let (_, detail) = gw.readyz().await;
    assert!(
        detail.to_string().contains("backup"),
        "readiness says the config came from the backup: {detail:#}"
    );

    // Control plane back with a change made meanwhile: the gateway catches up.
    f.cp.restart().await;
    f.cp.apply(&fleet_yaml(&f.backend, "resynced")).await;
    wait_env(&gw, "resynced").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_backup_and_without_control_plane_the_gateway_exits_with_advice() {
    let mut f = fleet().await;
    f.cp.kill();
    let mut gw = Gateway::spawn("gateway", f.gateway_options(None));
    let (status, output) = gw.wait_exit(secs(30)).await;
    let status = status.expect("gateway exits on its own");
    assert!(!status.success(), "non-zero exit:\n{output}");
    assert!(
        output.contains("backup") && output.contains("offline"),
        "the message says what to do (enable backup or use offline mode):\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_backup_is_refused_with_a_clear_message() {
    let mut f = fleet().await;
    let backup = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start("gateway", f.gateway_options(Some(backup.path()))).await;
    wait_env(&gw, "prod").await;
    gw.process.kill();
    f.cp.kill();

    // Flip bytes in the middle of the backup file (the directory also holds the pinned
    // config signing key, which is not what this test damages).
    for entry in std::fs::read_dir(backup.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path.ends_with("config-snapshot.outpostb") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 8] {
            *b ^= 0xff;
        }
        std::fs::write(&path, bytes).unwrap();
    }
    let mut gw = Gateway::spawn("gateway-2", f.gateway_options(Some(backup.path())));
    let (status, output) = gw.wait_exit(secs(30)).await;
    assert!(!status.expect("exits").success(), "{output}");
    let lower = output.to_lowercase();
    assert!(
        lower.contains("backup")
            && (lower.contains("checksum")
                || lower.contains("corrupt")
                || lower.contains("tamper")),
        "the refusal names the backup problem:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_token_keeps_serving_and_reports_why() {
    let f = fleet().await;
    let gw = Gateway::start("gateway", f.gateway_options(None)).await;
    wait_env(&gw, "prod").await;

    let (status, body) =
        f.cp.call(
            "POST",
            "/api/v1/gateways/site-a/keys/regenerate",
            Some(json!({"key": "primary"})),
        )
        .await;
    assert_eq!(status, 200, "{body:#}");
    // Any change makes the long-poll come back and the next one present the revoked token.
    f.cp.apply(&fleet_yaml(&f.backend, "unseen")).await;

    eventually(secs(20), ms(200), async || {
        let (ready, detail) = gw.readyz().await;
        let text = detail.to_string().to_lowercase();
        if ready == 200
            && (text.contains("unauthorized")
                || text.contains("revoked")
                || text.contains("signature"))
        {
            Ok(())
        } else {
            Err(format!("{ready} {detail}"))
        }
    })
    .await
    .unwrap();
    let (status, body) = get(&gw.url("/echo/items/1")).await;
    assert_eq!(status, 200, "still serving the last config: {body:#}");
    assert_eq!(
        body["headers"]["x-env"], "prod",
        "and it is the last config it was allowed to see"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_mode_serves_with_no_control_plane() {
    let backend = TestBackend::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("offline.yaml");
    std::fs::write(&file, fleet_yaml(&backend, "offline")).unwrap();
    let gw = Gateway::start(
        "gateway",
        GatewayOptions {
            offline_file: Some(file),
            ..Default::default()
        },
    )
    .await;
    let (status, body) = get(&gw.url("/echo/items/3")).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["headers"]["x-env"], "offline");
    assert_eq!(body["path"], "/v2/items/3");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_offline_file_is_refused_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: outpost/v1\napis:\n  - {name: a, backend: nope, path: /x}\n  - {name: B, backend: y}\n",
    )
    .unwrap();
    let mut gw = Gateway::spawn(
        "gateway",
        GatewayOptions {
            offline_file: Some(file),
            ..Default::default()
        },
    );
    let (status, output) = gw.wait_exit(secs(30)).await;
    assert!(!status.expect("exits").success(), "{output}");
    assert!(
        output.contains("apis[0]") && output.contains("apis[1]"),
        "every problem listed:\n{output}"
    );
}
