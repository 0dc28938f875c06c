//! Durable request analytics (issue 13, part 3) with real processes: telemetry batches written
//! to the store, counted once across replicas on one PostgreSQL, kept across a restart, and
//! read back with sub-millisecond percentiles; a real gateway's traffic shows up too.

use std::path::Path;

use outpost_integration::fleet::HELLO_SITE;
use outpost_integration::{
    ControlPlane, Gateway, GatewayOptions, PostgresServer, client, eventually, free_port, ms, secs,
};
use outpost_model::wire::{
    self, AggregateKey, BINCODE_MEDIA_TYPE, RequestAggregate, TELEMETRY_PATH, TelemetryBatch,
    latency_bucket,
};
use serde_json::Value;

/// 100 requests this minute: 90 took 210 µs, 9 took 1.1 ms, one took 55 ms.
fn known_batch(instance: &str, sequence: u64) -> TelemetryBatch {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let minute = now / 60 * 60;
    TelemetryBatch {
        instance_id: instance.into(),
        sequence,
        aggregates: vec![RequestAggregate {
            key: AggregateKey {
                minute,
                api: "hello".into(),
                operation: "get".into(),
                status: 200,
                cache: "none".into(),
                product: String::new(),
                subscription: String::new(),
            },
            count: 100,
            total_duration_us: 90 * 210 + 9 * 1100 + 55_000,
            max_duration_us: 55_000,
            backend_duration_us: 0,
            request_bytes: 0,
            response_bytes: 200,
            latency: vec![
                (latency_bucket(210) as u16, 90),
                (latency_bucket(1100) as u16, 9),
                (latency_bucket(55_000) as u16, 1),
            ],
        }],
    }
}

async fn post_batch(cp: &ControlPlane, token: &str, batch: &TelemetryBatch) -> u16 {
    client()
        .post(format!("{}{TELEMETRY_PATH}", cp.gateway_url()))
        .header("Authorization", token)
        .header("Content-Type", BINCODE_MEDIA_TYPE)
        .body(wire::encode(batch).unwrap())
        .send()
        .await
        .expect("telemetry upload")
        .status()
        .as_u16()
}

async fn analytics(cp: &ControlPlane, query: &str) -> Value {
    let (status, body) = cp
        .call("GET", &format!("/api/v1/analytics{query}"), None)
        .await;
    assert_eq!(status, 200, "{body:#}");
    body
}

/// The known batch's percentiles, read from its histogram: p50 in [200, 250) µs
/// (200 + 50 × 50/90), p95 in [1, 1.2) ms (1000 + 200 × 5/9), p99 the top of that bucket.
fn assert_known_percentiles(total: &Value) {
    assert_eq!(total["requests"], 100, "{total:#}");
    assert_eq!(total["p50-ms"], 0.228, "{total:#}");
    assert_eq!(total["p95-ms"], 1.111, "{total:#}");
    assert_eq!(total["p99-ms"], 1.2, "{total:#}");
    assert_eq!(total["max-ms"], 55.0, "{total:#}");
}

async fn replica(name: &str, dir: &Path, pg: &PostgresServer) -> ControlPlane {
    ControlPlane::start_on_with(
        name,
        &dir.join(name),
        free_port(),
        free_port(),
        &[("OUTPOST_STORE_URL".into(), pg.url())],
    )
    .await
}

/// One batch posted to replica A and retried against replica B (a gateway failing over after a
/// lost answer): both acknowledge it, both report it once.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_retried_on_another_replica_is_counted_once() {
    let pg = tokio::task::block_in_place(PostgresServer::start);
    let dir = tempfile::tempdir().unwrap();
    let a = replica("cp-a", dir.path(), &pg).await;
    let b = replica("cp-b", dir.path(), &pg).await;
    a.apply(HELLO_SITE).await;
    let token = a.token("site-a").await;
    let batch = known_batch("i-1", 1);
    assert_eq!(post_batch(&a, &token, &batch).await, 204);
    // B may not have caught up with the gateway's creation yet: a 4xx is retried, as a gateway
    // would.
    eventually(secs(30), ms(100), async || {
        match post_batch(&b, &token, &batch).await {
            204 => Ok(()),
            other => Err(format!("B answered {other}")),
        }
    })
    .await
    .unwrap();
    for cp in [&a, &b] {
        let report = analytics(cp, "?group_by=gateway").await;
        assert_known_percentiles(&report["total"]);
        assert_eq!(report["groups"][0]["gateway"], "site-a", "{report:#}");
    }
    // A new sequence is new data.
    assert_eq!(post_batch(&b, &token, &known_batch("i-1", 2)).await, 204);
    assert_eq!(analytics(&a, "").await["total"]["requests"], 200);
}

/// Analytics live in the store: a control plane killed and started again on its data
/// directory reports what it had acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn analytics_survive_a_control_plane_restart() {
    let mut cp = ControlPlane::start().await;
    cp.apply(HELLO_SITE).await;
    let token = cp.token("site-a").await;
    assert_eq!(post_batch(&cp, &token, &known_batch("i-1", 1)).await, 204);
    cp.restart().await;
    let report = analytics(&cp, "?api=hello&group_by=operation").await;
    assert_known_percentiles(&report["total"]);
    let group = &report["groups"][0];
    assert_eq!(
        (group["api"].as_str(), group["operation"].as_str()),
        (Some("hello"), Some("get"))
    );
    // The retry of an acknowledged batch after the restart is still a duplicate.
    assert_eq!(post_batch(&cp, &token, &known_batch("i-1", 1)).await, 204);
    assert_eq!(analytics(&cp, "").await["total"]["requests"], 100);
}

/// A real gateway's requests reach the analytics with their sub-millisecond latency (a
/// `return-response` answers in microseconds: the percentiles are above 0 and below 1 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_gateways_traffic_shows_in_the_analytics() {
    let cp = ControlPlane::start().await;
    cp.apply(HELLO_SITE).await;
    let token = cp.token("site-a").await;
    let gw = Gateway::start(
        "gateway",
        GatewayOptions {
            control_plane_url: Some(cp.gateway_url()),
            token: Some(token),
            extra_env: vec![("OUTPOST_TELEMETRY_FLUSH_INTERVAL_SECS".into(), "1".into())],
            ..Default::default()
        },
    )
    .await;
    eventually(secs(30), ms(100), async || {
        let res = client()
            .get(gw.url("/hello/"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if res.status() == 200 {
            Ok(())
        } else {
            Err(format!("{}", res.status()))
        }
    })
    .await
    .unwrap();
    for _ in 0..20 {
        let res = client().get(gw.url("/hello/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let report = eventually(secs(30), ms(200), async || {
        let report = analytics(&cp, "?api=hello&gateway=site-a").await;
        if report["total"]["requests"].as_u64() >= Some(21) {
            Ok(report)
        } else {
            Err(format!("{report:#}"))
        }
    })
    .await
    .unwrap();
    let total = &report["total"];
    for p in ["p50-ms", "p95-ms", "p99-ms"] {
        let v = total[p]
            .as_f64()
            .unwrap_or_else(|| panic!("{p}: {total:#}"));
        assert!(v > 0.0 && v < 1000.0, "{p} = {v}: {total:#}");
    }
    assert_eq!(total["errors"], 0);
}
