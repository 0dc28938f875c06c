//! The gateway runtime in one process: control plane, gateway, backup, offline mode, faults.
//!
//! Everything binds port 0. Metrics recorders are process-wide and these tests run in
//! parallel, so metric assertions retry until this gateway's own scrape shows what is expected.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use outpost::control_plane::settings::ControlPlaneSettings;
use outpost::control_plane::store::Precondition;
use outpost::control_plane::{self, RunningControlPlane, tokens};
use outpost::gateway::settings::GatewaySettings;
use outpost::gateway::{self, RunningGateway};
use outpost_actors::config_sync::backup;
use outpost_actors::connectivity::{ConfigSource, ControlPlaneState};
use outpost_model::document::Document;
use serde_json::Value;

const GATEWAY: &str = "gw-a";

fn doc(environment: &str) -> String {
    format!(
        r#"
apiVersion: outpost/v1
named-values:
  - {{name: environment, value: {environment}}}
backends:
  - {{name: echo, url: "http://127.0.0.1:9"}}
apis:
  - name: echo
    path: echo
    backend: echo
    subscription-required: false
    operations:
      - {{name: get, method: GET, url-template: /hello}}
    policies:
      inbound:
        - base
        - return-response: {{status-code: 200, body: "env={{{{environment}}}}"}}
gateways:
  - {{name: {GATEWAY}, apis: [echo]}}
"#
    )
}

fn start_control_plane() -> RunningControlPlane {
    let mut s = ControlPlaneSettings::default();
    s.admin.listen = "127.0.0.1:0".into();
    s.gateway_api.listen = "127.0.0.1:0".into();
    s.store.data_dir = ":memory:".into();
    let cp = control_plane::start(s).expect("control plane starts");
    load(&cp, &doc("one"));
    cp
}

fn load(cp: &RunningControlPlane, yaml: &str) {
    let doc = Document::from_yaml(yaml).expect("test document is valid");
    for r in doc.resources {
        cp.store()
            .put(r, Precondition::None)
            .expect("store accepts");
    }
}

fn token(cp: &RunningControlPlane) -> String {
    let keys = cp.store().gateway_keys(GATEWAY).unwrap();
    tokens::mint(GATEWAY, &keys.primary, Utc::now() + TimeDelta::days(30))
}

fn settings(url: &str, token: &str, backup_dir: Option<&Path>) -> GatewaySettings {
    let mut s = GatewaySettings::default();
    s.control_plane.url = url.into();
    s.control_plane.token = token.into();
    s.control_plane.poll_wait = Duration::from_secs(2);
    s.control_plane.heartbeat_interval = Duration::from_secs(1);
    s.control_plane.request_timeout = Duration::from_millis(2000);
    s.control_plane.backoff_initial = Duration::from_millis(50);
    s.control_plane.backoff_max = Duration::from_millis(300);
    s.listen.http = "127.0.0.1:0".into();
    s.listen.https = Some("127.0.0.1:0".into());
    s.listen.ops = "127.0.0.1:0".into();
    s.telemetry.flush_interval = Duration::from_secs(1);
    if let Some(dir) = backup_dir {
        s.backup.enabled = true;
        s.backup.dir = dir.to_owned();
    }
    s
}

/// A URL nothing listens on.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn readyz(gw: &RunningGateway) -> (u16, Value) {
    let res = http()
        .get(format!("{}/readyz", gw.ops_url()))
        .send()
        .unwrap();
    (res.status().as_u16(), res.json().unwrap())
}

/// What the test API answers through the traffic listener.
fn hello(gw: &RunningGateway) -> String {
    let res = http()
        .get(format!("{}/echo/hello", gw.traffic_url()))
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    res.text().unwrap()
}

fn metrics(gw: &RunningGateway) -> String {
    http()
        .get(format!("{}/metrics", gw.ops_url()))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn control_plane_config_reaches_the_gateway_and_it_fails_static_when_the_control_plane_goes() {
    let cp = start_control_plane();
    let backups = tempfile::tempdir().unwrap();
    let gw = gateway::start(settings(
        &cp.gateway_url(),
        &token(&cp),
        Some(backups.path()),
    ))
    .expect("gateway starts");
    assert_eq!(gw.config_source(), ConfigSource::ControlPlane);

    let (code, body) = readyz(&gw);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["config"]["source"], "control-plane");
    assert_eq!(body["config"]["revision"], cp.store().revision());
    let first_hash = body["config"]["hash"].as_str().unwrap().to_owned();
    let health = http()
        .get(format!("{}/healthz", gw.ops_url()))
        .send()
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let status = http()
        .get(format!("{}/status-0123456789abcdef", gw.ops_url()))
        .send()
        .unwrap();
    assert_eq!(status.status().as_u16(), 200);

    assert_eq!(hello(&gw), "env=one");

    // The backup follows what is served.
    let on_disk = backup::read(backups.path())
        .unwrap()
        .expect("backup written");
    assert_eq!(on_disk.snapshot.hash, first_hash);
    assert_eq!(on_disk.gateway, GATEWAY);
    // Signed by the control plane's key, and the key is pinned next to the backup.
    assert_eq!(
        on_disk.snapshot.signature.key,
        cp.gateway_state().signing_public_key()
    );
    assert_eq!(
        outpost_actors::config_sync::trust::read_pins(backups.path())
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec![cp.gateway_state().signing_public_key()]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(backup::path_in(backups.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A change reaches the gateway through the long-poll.
    load(&cp, &doc("two"));
    let target = cp.store().revision();
    eventually("the new revision is served", || {
        readyz(&gw).1["config"]["revision"] == target
    });
    let (_, body) = readyz(&gw);
    assert_ne!(body["config"]["hash"].as_str().unwrap(), first_hash);
    assert_eq!(hello(&gw), "env=two");
    eventually("the backup holds the new revision", || {
        backup::read(backups.path())
            .ok()
            .flatten()
            .is_some_and(|b| b.snapshot.revision == target)
    });
    eventually("connected", || {
        readyz(&gw).1["control_plane"]["state"] == "connected"
    });

    // Requests measured by the gateway reach the control plane's telemetry.
    eventually("telemetry uploaded", || {
        cp.gateway_state()
            .analytics()
            .summary(Some(GATEWAY), Some("echo"), 5, Utc::now())
            .is_ok_and(|s| s.requests >= 2)
    });

    // The control plane goes away: still serving, still ready, and status and metrics say so.
    cp.stop();
    eventually("disconnected", || {
        gw.status().control_plane.state == ControlPlaneState::Disconnected
    });
    let (code, body) = readyz(&gw);
    assert_eq!(code, 200, "fail static: {body}");
    assert_eq!(body["config"]["revision"], target);
    assert!(body["control_plane"]["reason"].as_str().is_some(), "{body}");
    assert_eq!(hello(&gw), "env=two");
    eventually("/metrics shows the disconnection", || {
        let m = metrics(&gw);
        m.contains("outpost_control_plane_connected 0")
            && m.contains(r#"outpost_control_plane_state{state="disconnected"} 1"#)
    });
    gw.stop();

    // A restart without the control plane serves the backup and keeps trying.
    let gw = gateway::start(settings(
        &dead_url(),
        "GatewayKey gw-a&209901010000&c2ln",
        Some(backups.path()),
    ))
    .expect("starts from the backup");
    assert_eq!(gw.config_source(), ConfigSource::Backup);
    let (code, body) = readyz(&gw);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["config"]["source"], "backup");
    assert_eq!(body["config"]["revision"], target);
    assert_ne!(body["control_plane"]["state"], "connected");
    assert_eq!(hello(&gw), "env=two");
    gw.stop();
}

#[test]
fn a_revoked_token_keeps_the_config_serving_and_readyz_says_why() {
    let cp = start_control_plane();
    let gw = gateway::start(settings(&cp.gateway_url(), &token(&cp), None)).unwrap();
    let served = readyz(&gw).1["config"]["hash"].clone();

    let res = http()
        .post(format!(
            "{}/api/v1/gateways/{GATEWAY}/keys/regenerate",
            cp.admin_url()
        ))
        .bearer_auth(cp.admin_token())
        .json(&serde_json::json!({"key": "primary"}))
        .send()
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().unwrap());

    eventually("unauthorized", || {
        gw.status().control_plane.state == ControlPlaneState::Unauthorized
    });
    let (code, body) = readyz(&gw);
    assert_eq!(code, 200, "fail static: {body}");
    assert_eq!(body["config"]["hash"], served);
    assert_eq!(hello(&gw), "env=one");
    assert_eq!(body["control_plane"]["state"], "unauthorized");
    let reason = body["control_plane"]["reason"].as_str().unwrap();
    assert!(reason.contains("token"), "{reason}");
    assert!(
        reason.contains("revoked"),
        "the control plane's reason: {reason}"
    );
    assert_eq!(body["token"]["gateway"], GATEWAY);
    assert_eq!(body["token_expiring_soon"], false);
    eventually("/metrics shows the token state", || {
        let m = metrics(&gw);
        m.contains("outpost_gateway_token_expiring 0")
            && m.contains(r#"outpost_control_plane_state{state="unauthorized"} 1"#)
    });
    gw.stop();
    cp.stop();
}

/// With `ops.readyz_detail = false`, `/readyz` says ready or not and nothing else: no
/// control-plane error (which names its URL), no token gateway or expiry. The default is the
/// detail.
#[test]
fn readyz_detail_can_be_turned_off() {
    let cp = start_control_plane();
    let token = token(&cp);
    let gw = gateway::start(settings(&cp.gateway_url(), &token, None)).unwrap();
    let (code, body) = readyz(&gw);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["token"]["gateway"], GATEWAY,
        "detail by default: {body}"
    );
    gw.stop();

    let mut s = settings(&cp.gateway_url(), &token, None);
    s.ops.readyz_detail = false;
    let gw = gateway::start(s).unwrap();
    let port = cp.gateway_addr().port().to_string();
    cp.stop();
    eventually("disconnected", || {
        gw.status().control_plane.state == ControlPlaneState::Disconnected
    });
    // There is something to hide: the gateway's status has the error and the token's gateway.
    let reason = gw.status().control_plane.reason.clone().unwrap_or_default();
    assert!(reason.contains("unreachable"), "{reason}");
    let res = http()
        .get(format!("{}/readyz", gw.ops_url()))
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let text = res.text().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        serde_json::json!({"ready": true})
    );
    for secret in [GATEWAY, "127.0.0.1", &port, "disconnected", "unreachable"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    gw.stop();
}

#[test]
fn offline_mode_serves_a_file_without_any_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, doc("offline")).unwrap();
    let mut s = GatewaySettings::default();
    s.offline.config_file = Some(file.clone());
    s.listen.http = "127.0.0.1:0".into();
    s.listen.https = Some("127.0.0.1:0".into());
    s.listen.ops = "127.0.0.1:0".into();
    let gw = gateway::start(s.clone()).expect("offline gateway starts");
    assert_eq!(gw.config_source(), ConfigSource::Offline);
    let (code, body) = readyz(&gw);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["config"]["source"], "offline");
    assert_eq!(body["control_plane"]["state"], "offline");
    assert_eq!(hello(&gw), "env=offline");
    gw.stop();

    // Every problem of an invalid file, at once.
    std::fs::write(
        &file,
        "apiVersion: outpost/v1\napis:\n  - {name: a, path: a, backend: missing}\nbogus: []\n",
    )
    .unwrap();
    let err = gateway::start(s.clone())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("bogus"), "{err}");

    s.offline.gateway = Some("nope".into());
    std::fs::write(&file, doc("offline")).unwrap();
    let err = gateway::start(s).err().expect("refused").to_string();
    assert!(err.contains("'nope'") && err.contains(GATEWAY), "{err}");
}

#[test]
fn without_control_plane_or_backup_the_start_fails_and_says_what_to_do() {
    let token = "GatewayKey gw-a&209901010000&c2ln";
    let err = gateway::start(settings(&dead_url(), token, None))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("control_plane.url"), "{err}");
    assert!(err.contains("backup.enabled"), "{err}");
    assert!(err.contains("--offline-config"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let err = gateway::start(settings(&dead_url(), token, Some(dir.path())))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("no config backup yet"), "{err}");
}

#[test]
fn a_corrupt_backup_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = backup::path_in(dir.path());
    std::fs::write(&path, b"OUTPOSTB\x01\x00\x00\x00 and then garbage").unwrap();
    let err = gateway::start(settings(
        &dead_url(),
        "GatewayKey gw-a&209901010000&c2ln",
        Some(dir.path()),
    ))
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("refused"), "{err}");

    // With the control plane reachable, the corrupt backup is replaced.
    let cp = start_control_plane();
    let gw = gateway::start(settings(&cp.gateway_url(), &token(&cp), Some(dir.path()))).unwrap();
    assert_eq!(gw.config_source(), ConfigSource::ControlPlane);
    assert!(backup::read(dir.path()).unwrap().is_some());
    gw.stop();
    cp.stop();
}
