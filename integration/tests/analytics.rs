//! Durable request analytics (issue 13, part 3) with real processes: telemetry batches written
//! to the store, counted once across replicas on one PostgreSQL, kept across a restart, and
//! read back with sub-millisecond percentiles; a real gateway's traffic shows up too, also
//! when a batch before it is refused for good (a poison batch).

use outpost_integration::fleet::{HELLO_SITE, TwoReplicas, hello_batch};
use outpost_integration::{ControlPlane, Gateway, GatewayOptions, client, eventually, ms, secs};
use outpost_model::wire::{self, latency_bucket};
use serde_json::Value;

/// The percentiles of [`hello_batch`], read from its histogram: p50 in [200, 250) µs
/// (200 + 50 × 50/90), p95 in [1, 1.2) ms (1000 + 200 × 5/9), p99 the top of that bucket.
fn assert_known_percentiles(total: &Value) {
    assert_eq!(total["requests"], 100, "{total:#}");
    assert_eq!(total["p50-ms"], 0.228, "{total:#}");
    assert_eq!(total["p95-ms"], 1.111, "{total:#}");
    assert_eq!(total["p99-ms"], 1.2, "{total:#}");
    assert_eq!(total["max-ms"], 55.0, "{total:#}");
}

/// One batch posted to replica A and retried against replica B (a gateway failing over after a
/// lost answer): both acknowledge it, both report it once.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_retried_on_another_replica_is_counted_once() {
    let replicas = TwoReplicas::start().await;
    let (a, b) = (&replicas.a, &replicas.b);
    a.apply(HELLO_SITE).await;
    let token = a.token("site-a").await;
    let batch = hello_batch("i-1", 1);
    assert_eq!(a.post_telemetry(&token, &batch).await, 204);
    // B may not have caught up with the gateway's creation yet: a 4xx is retried, as a gateway
    // would.
    eventually(secs(30), ms(100), async || {
        match b.post_telemetry(&token, &batch).await {
            204 => Ok(()),
            other => Err(format!("B answered {other}")),
        }
    })
    .await
    .unwrap();
    for cp in [a, b] {
        let report = cp.analytics("?group_by=gateway").await;
        assert_known_percentiles(&report["total"]);
        assert_eq!(report["groups"][0]["gateway"], "site-a", "{report:#}");
    }
    // A new sequence is new data.
    assert_eq!(b.post_telemetry(&token, &hello_batch("i-1", 2)).await, 204);
    assert_eq!(a.analytics("").await["total"]["requests"], 200);
}

/// Analytics live in the store: a control plane killed and started again on its data
/// directory reports what it had acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn analytics_survive_a_control_plane_restart() {
    let mut cp = ControlPlane::start().await;
    cp.apply(HELLO_SITE).await;
    let token = cp.token("site-a").await;
    assert_eq!(cp.post_telemetry(&token, &hello_batch("i-1", 1)).await, 204);
    cp.restart().await;
    let report = cp.analytics("?api=hello&group_by=operation").await;
    assert_known_percentiles(&report["total"]);
    let group = &report["groups"][0];
    assert_eq!(
        (group["api"].as_str(), group["operation"].as_str()),
        (Some("hello"), Some("get"))
    );
    // The retry of an acknowledged batch after the restart is still a duplicate.
    assert_eq!(cp.post_telemetry(&token, &hello_batch("i-1", 1)).await, 204);
    assert_eq!(cp.analytics("").await["total"]["requests"], 100);
}

/// `n` answered `GET /hello/` through `gw`: the first once the gateway serves the API.
async fn send_hello_requests(gw: &Gateway, n: usize) {
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
    for _ in 1..n {
        let res = client().get(gw.url("/hello/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
}

/// The analytics of `site-a`'s `hello` once they count at least `n` requests (the gateway
/// flushes every second); panics with the report and the gateway's last lines after 60 s.
async fn hello_analytics_reaching(cp: &ControlPlane, gw: &Gateway, n: u64) -> Value {
    eventually(secs(60), ms(200), async || {
        let report = cp.analytics("?api=hello&gateway=site-a").await;
        if report["total"]["requests"].as_u64() >= Some(n) {
            Ok(report)
        } else {
            Err(format!("{report:#}\n{}", gw.process.tail(20)))
        }
    })
    .await
    .unwrap()
}

/// A real gateway's requests reach the analytics with their sub-millisecond latency (a
/// `return-response` answers in microseconds: the percentiles are above 0 and below 1 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_gateways_traffic_shows_in_the_analytics() {
    let cp = ControlPlane::start().await;
    cp.apply(HELLO_SITE).await;
    let token = cp.token("site-a").await;
    // `Gateway::spawn` flushes telemetry every second.
    let gw = Gateway::start("gateway", GatewayOptions::attached(&cp, token)).await;
    send_hello_requests(&gw, 21).await;
    let report = hello_analytics_reaching(&cp, &gw, 21).await;
    let total = &report["total"];
    for p in ["p50-ms", "p95-ms", "p99-ms"] {
        let v = total[p]
            .as_f64()
            .unwrap_or_else(|| panic!("{p}: {total:#}"));
        assert!(v > 0.0 && v < 1000.0, "{p} = {v}: {total:#}");
    }
    assert_eq!(total["errors"], 0);
}

/// A batch the control plane refuses for its content (its histogram does not add up: 5
/// requests, 1 in the histogram — what a damaged spool file or a buggy release would send) is
/// a poison batch. Left in a real gateway's spool, it is uploaded first, refused by a real
/// control plane with 400, dropped, counted and logged once — and the traffic measured after
/// it still reaches the analytics instead of queueing behind it for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_the_control_plane_refuses_is_dropped_and_the_next_ones_arrive() {
    let cp = ControlPlane::start().await;
    cp.apply(HELLO_SITE).await;
    let token = cp.token("site-a").await;
    let spool = tempfile::tempdir().unwrap();
    let mut poison = hello_batch("earlier-instance", 1);
    poison.aggregates[0].count = 5;
    poison.aggregates[0].latency = vec![(latency_bucket(210) as u16, 1)];
    assert_eq!(
        cp.post_telemetry(&token, &poison).await,
        400,
        "the control plane refuses it"
    );
    std::fs::write(
        spool
            .path()
            .join("0000000000000001-00000001-earlier-instance-000000000001.otb2"),
        wire::encode(&poison).unwrap(),
    )
    .unwrap();
    let spool_dir = (
        "OUTPOST_TELEMETRY_SPOOL_DIR".to_owned(),
        spool.path().display().to_string(),
    );
    let gw = Gateway::start(
        "gateway",
        GatewayOptions {
            extra_env: vec![spool_dir],
            ..GatewayOptions::attached(&cp, token)
        },
    )
    .await;
    send_hello_requests(&gw, 21).await;
    let report = hello_analytics_reaching(&cp, &gw, 21).await;
    assert_eq!(report["total"]["errors"], 0, "{report:#}");
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"outpost_telemetry_dropped_total{reason="refused"} 1"#),
        "one aggregate dropped as refused:\n{metrics}"
    );
    let log = gw.process.output_so_far();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a telemetry batch"))
        .collect();
    assert_eq!(warnings.len(), 1, "logged once:\n{log}");
    assert!(
        warnings[0].contains("WARN")
            && warnings[0].contains("400")
            && warnings[0].contains("the histogram counts 1 requests, the aggregate 5"),
        "status and the control plane's problem: {}",
        warnings[0]
    );
    assert!(
        !warnings[0].contains("GatewayKey"),
        "no token in the log: {}",
        warnings[0]
    );
    let left: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("earlier-instance"))
        .collect();
    assert!(left.is_empty(), "the poison batch left the spool: {left:?}");
}
