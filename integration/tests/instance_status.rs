//! What the control plane's instance list and a gateway's `/readyz` say about a gateway, with
//! real processes (issue 10, A.5 and A.6): the configuration source after a start from the
//! backup, a graceful stop, instances that stopped reporting, the token expiry warning.

use std::time::{Duration, Instant};

use outpost_integration::*;
use serde_json::{Value, json};

fn yaml(env: &str) -> String {
    format!(
        r#"
apiVersion: outpost/v1
named-values:
  - {{name: env, value: {env}}}
backends:
  - {{name: b, url: "http://127.0.0.1:9"}}
apis:
  - name: hello
    path: hello
    backend: b
    subscription-required: false
    operations:
      - {{name: get, method: GET, url-template: /}}
    policies:
      inbound:
        - base
        - return-response: {{status-code: 200, body: "env={{{{env}}}}"}}
gateways:
  - {{name: site-a, apis: [hello]}}
"#
    )
}

fn options(cp: &ControlPlane, token: &str, backup: Option<&std::path::Path>) -> GatewayOptions {
    GatewayOptions {
        control_plane_url: Some(cp.gateway_url()),
        token: Some(token.to_owned()),
        backup_dir: backup.map(|p| p.to_owned()),
        ..Default::default()
    }
}

/// The gateway's instance id, from its own `/readyz`.
async fn instance_id(gw: &Gateway) -> String {
    let (_, body) = gw.readyz().await;
    body["instance_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no instance id in {body:#}"))
        .to_owned()
}

async fn instances(cp: &ControlPlane) -> Vec<Value> {
    let (status, body) = cp
        .call("GET", "/api/v1/gateways/site-a/instances", None)
        .await;
    assert_eq!(status, 200, "{body:#}");
    body.as_array().cloned().unwrap_or_default()
}

async fn instance(cp: &ControlPlane, id: &str) -> Option<Value> {
    instances(cp)
        .await
        .into_iter()
        .find(|i| i["instance-id"] == id)
}

/// A token for site-a living `lifetime`.
async fn token_for(cp: &ControlPlane, lifetime: Duration) -> String {
    let (status, body) = cp
        .call(
            "POST",
            "/api/v1/gateways/site-a/token",
            Some(json!({"key": "primary", "lifetime-secs": lifetime.as_secs()})),
        )
        .await;
    assert_eq!(status, 200, "{body:#}");
    body["value"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_started_from_its_backup_reports_the_control_plane_once_synced() {
    let mut cp = ControlPlane::start().await;
    cp.apply(&yaml("one")).await;
    let token = cp.token("site-a").await;
    let backup = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start("gateway", options(&cp, &token, Some(backup.path()))).await;
    cp.kill();
    gw.restart().await;
    let (_, ready) = gw.readyz().await;
    assert_eq!(ready["config"]["source"], "backup", "{ready:#}");
    let id = instance_id(&gw).await;

    // The control plane comes back with the configuration the backup holds: it confirms it,
    // and from then on the gateway and the instance list both say `control-plane`.
    cp.restart().await;
    eventually(secs(30), ms(200), async || {
        let (_, ready) = gw.readyz().await;
        let listed = instance(&cp, &id).await;
        let listed_source = listed.as_ref().map(|i| i["config-source"].clone());
        if ready["config"]["source"] == "control-plane"
            && listed_source == Some(json!("control-plane"))
        {
            Ok(())
        } else {
            Err(format!(
                "/readyz source {}, listed {listed:?}",
                ready["config"]["source"]
            ))
        }
    })
    .await
    .unwrap();

    // A change applied afterwards keeps it so.
    cp.apply(&yaml("two")).await;
    let revision = cp.revision().await;
    eventually(secs(20), ms(200), async || {
        let listed = instance(&cp, &id).await.unwrap_or_default();
        if listed["applied-revision"] == revision && listed["sync"] == "in-sync" {
            Ok(listed)
        } else {
            Err(format!("{listed:#}"))
        }
    })
    .await
    .map(|listed| assert_eq!(listed["config-source"], "control-plane", "{listed:#}"))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_stopped_with_sigterm_is_stopped_in_the_list_at_once() {
    // Default instance thresholds: stale only after 30 s without a heartbeat.
    let cp = ControlPlane::start().await;
    cp.apply(&yaml("one")).await;
    let token = cp.token("site-a").await;
    let mut gw = Gateway::start("gateway", options(&cp, &token, None)).await;
    let id = instance_id(&gw).await;
    eventually(secs(20), ms(100), async || match instance(&cp, &id).await {
        Some(i) if i["connection"] == "connected" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await
    .unwrap();

    let sigterm = Instant::now();
    let status = gw.stop_graceful(secs(20)).await;
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        gw.process.tail(20)
    );
    // Asked right after the process exited: no heartbeat could have gone stale yet.
    let listed = instance(&cp, &id).await.expect("still listed, as stopped");
    assert_eq!(listed["connection"], "stopped", "{listed:#}");
    assert!(listed["stopped-at"].is_string(), "{listed:#}");
    assert!(
        sigterm.elapsed() < Duration::from_secs(10),
        "{:?}",
        sigterm.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_not_heard_from_leave_the_list() {
    let data = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = [
        ("OUTPOST_INSTANCES_STALE_AFTER_SECS", "2"),
        ("OUTPOST_INSTANCES_DISCONNECTED_AFTER_SECS", "4"),
        ("OUTPOST_INSTANCES_FORGET_AFTER_SECS", "6"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    let cp = ControlPlane::start_on_with(
        "control-plane",
        &data.path().join("data"),
        free_port(),
        free_port(),
        &env,
    )
    .await;
    cp.apply(&yaml("one")).await;
    let token = cp.token("site-a").await;
    let mut crashed = Gateway::start("crashed", options(&cp, &token, None)).await;
    let mut stopped = Gateway::start("stopped", options(&cp, &token, None)).await;
    let live = Gateway::start("live", options(&cp, &token, None)).await;
    let ids = [
        instance_id(&crashed).await,
        instance_id(&stopped).await,
        instance_id(&live).await,
    ];
    eventually(secs(20), ms(100), async || {
        let n = instances(&cp).await.len();
        if n == 3 {
            Ok(())
        } else {
            Err(format!("{n} listed"))
        }
    })
    .await
    .unwrap();

    crashed.process.kill();
    stopped.stop_graceful(secs(20)).await;
    let left = eventually(secs(30), ms(250), async || {
        let listed: Vec<String> = instances(&cp)
            .await
            .iter()
            .map(|i| i["instance-id"].as_str().unwrap_or_default().to_owned())
            .collect();
        if listed == [ids[2].clone()] {
            Ok(listed)
        } else {
            Err(format!(
                "listed {listed:?}; crashed, stopped, live: {ids:?}"
            ))
        }
    })
    .await
    .unwrap();
    assert_eq!(left, [ids[2].clone()]);
    let all = cp.call("GET", "/api/v1/instances", None).await.1;
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all:#}");
    drop(live);
}

const EXPIRES_SOON: &str = "the gateway token expires soon";

#[tokio::test(flavor = "multi_thread")]
async fn a_seven_day_token_does_not_warn_but_one_within_the_window_does() {
    let cp = ControlPlane::start().await;
    cp.apply(&yaml("one")).await;
    let week = token_for(&cp, Duration::from_secs(7 * 86_400)).await;
    let day = token_for(&cp, Duration::from_secs(86_400)).await;

    let fresh = Gateway::start("week", options(&cp, &week, None)).await;
    let (_, ready) = fresh.readyz().await;
    assert_eq!(ready["token_expiring_soon"], false, "{ready:#}");
    assert!(
        fresh
            .metrics()
            .await
            .contains("outpost_gateway_token_expiring 0"),
        "metric"
    );

    let soon = Gateway::start("day", options(&cp, &day, None)).await;
    let (_, ready) = soon.readyz().await;
    assert_eq!(ready["token_expiring_soon"], true, "{ready:#}");
    assert!(
        soon.metrics()
            .await
            .contains("outpost_gateway_token_expiring 1"),
        "metric"
    );
    soon.process
        .wait_for_output(EXPIRES_SOON, secs(10))
        .await
        .unwrap();
    // Both have started and sent heartbeats by now; the one with a week left has not warned.
    assert!(
        !fresh.process.output_so_far().contains(EXPIRES_SOON),
        "{}",
        fresh.process.tail(30)
    );

    // The window is a setting: a week-long window makes the same token warn.
    let wide = Gateway::start(
        "week-wide-window",
        GatewayOptions {
            extra_env: vec![(
                "OUTPOST_CONTROL_PLANE_TOKEN_WARNING_HOURS".into(),
                (8 * 24).to_string(),
            )],
            ..options(&cp, &week, None)
        },
    )
    .await;
    let (_, ready) = wide.readyz().await;
    assert_eq!(ready["token_expiring_soon"], true, "{ready:#}");
    wide.process
        .wait_for_output(EXPIRES_SOON, secs(10))
        .await
        .unwrap();
}
