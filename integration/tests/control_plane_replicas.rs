//! Several control-plane processes on one PostgreSQL (`[store] url`), and the move there from
//! SQLite (`outpost store copy`): real `outpost` child processes, a real PostgreSQL started by
//! the test ([`PostgresServer`]), everything on loopback.

use std::time::Instant;

use outpost_integration::fleet::{HELLO_SITE, TwoReplicas, hello_batch};
use outpost_integration::{
    ADMIN_TOKEN, ControlPlane, Gateway, GatewayOptions, PostgresServer, client, eventually,
    free_port, ms, outpost_command, secs,
};
use serde_json::{Value, json};

async fn revision_of(cp: &ControlPlane) -> u64 {
    cp.revision().await
}

/// Waits until `cp` reports at least `revision` (it learns of other replicas' commits by
/// notification); panics after a generous bound.
async fn wait_for_revision(cp: &ControlPlane, revision: u64) {
    let deadline = Instant::now() + secs(30);
    while revision_of(cp).await < revision {
        assert!(
            Instant::now() < deadline,
            "{} stayed below revision {revision}",
            cp.admin_url()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Two replicas, writers on both: revisions 1..=N with no gap and no duplicate; `If-Match`
/// holds across replicas; a commit on A wakes a gateway's long-poll waiting on B.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_one_truth() {
    let replicas = TwoReplicas::start().await;
    let (a, b) = (&replicas.a, &replicas.b);

    // Concurrent writers on both replicas.
    let writers = (0..4).map(|w| {
        let base = if w % 2 == 0 {
            a.admin_url()
        } else {
            b.admin_url()
        };
        tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..10 {
                let res = client()
                    .post(format!("{base}/api/v1/named-values"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"name": format!("w{w}-{i}"), "value": "x"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status().as_u16(), 201);
                let body: Value = res.json().await.unwrap();
                revisions.push(body["revision"].as_u64().unwrap());
            }
            revisions
        })
    });
    let mut revisions = Vec::new();
    for w in writers {
        revisions.extend(w.await.unwrap());
    }
    revisions.sort_unstable();
    assert_eq!(
        revisions,
        (1..=40).collect::<Vec<u64>>(),
        "one gapless sequence"
    );
    wait_for_revision(a, 40).await;
    wait_for_revision(b, 40).await;
    let (_, listed) = b.call("GET", "/api/v1/named-values", None).await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(40),
        "{listed}"
    );

    // ETag/412 across replicas: B updates with A's ETag; the same ETag is stale on A after.
    let res = client()
        .get(format!("{}/api/v1/named-values/w0-0", a.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let put = |base: String, etag: String, value: &'static str| async move {
        client()
            .put(format!("{base}/api/v1/named-values/w0-0"))
            .bearer_auth(ADMIN_TOKEN)
            .header("If-Match", etag)
            .json(&json!({"name": "w0-0", "value": value}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(put(b.admin_url(), etag.clone(), "from-b").await, 200);
    assert_eq!(
        put(a.admin_url(), etag, "from-a").await,
        412,
        "the ETag B replaced is stale on A too"
    );

    // A gateway long-polls B; the change is made on A.
    let (status, _) = a
        .call("POST", "/api/v1/gateways", Some(json!({"name": "edge"})))
        .await;
    assert_eq!(status, 201);
    let current = revision_of(a).await;
    wait_for_revision(b, current).await;
    let token = b.token("edge").await;
    let poll = {
        let url = format!(
            "{}/gateway/v1/config?after={current}&wait=60",
            b.gateway_url()
        );
        tokio::spawn(async move {
            let res = client()
                .get(url)
                .header("Authorization", token)
                .header("Accept", "application/json")
                .send()
                .await
                .unwrap();
            let answered = Instant::now();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (status, body, answered)
        })
    };
    let (status, body) = a
        .call(
            "PUT",
            "/api/v1/gateways/edge",
            Some(json!({"name": "edge", "description": "changed on A"})),
        )
        .await;
    let committed = Instant::now();
    assert_eq!(status, 200, "{body}");
    let changed = body["revision"].as_u64().unwrap();
    let (status, config, answered) = poll.await.unwrap();
    assert_eq!(status, 200, "the poll on B answered with the change");
    assert_eq!(config["revision"].as_u64(), Some(changed), "{config}");
    eprintln!(
        "long-poll on replica B answered {:?} after the commit on replica A returned",
        answered.saturating_duration_since(committed)
    );
}

/// `outpost store copy` from a SQLite control plane's data directory to PostgreSQL: the
/// replica on PostgreSQL serves the same revision and the same analytics (a batch uploaded
/// before the move is still a duplicate after it), and a gateway token minted before the move
/// is still valid. A second copy into the now non-empty database is refused.
#[tokio::test(flavor = "multi_thread")]
async fn store_copy_moves_sqlite_to_postgres() {
    let pg = tokio::task::block_in_place(PostgresServer::start);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("sqlite");
    let mut old =
        ControlPlane::start_on_with("cp-sqlite", &data_dir, free_port(), free_port(), &[]).await;
    for body in [
        json!({"name": "plain", "value": "1"}),
        json!({"name": "secret", "value": "s3cret", "secret": true}),
    ] {
        let (status, _) = old.call("POST", "/api/v1/named-values", Some(body)).await;
        assert_eq!(status, 201);
    }
    let (status, _) = old
        .call("POST", "/api/v1/gateways", Some(json!({"name": "edge"})))
        .await;
    assert_eq!(status, 201);
    let token = old.token("edge").await;
    // Analytics: one gateway's telemetry batch (100 requests), copied with the configuration.
    assert_eq!(
        old.post_telemetry(&token, &hello_batch("i-1", 1)).await,
        204
    );
    let analytics = old.analytics("?group_by=operation").await;
    assert_eq!(analytics["total"]["requests"], 100, "{analytics:#}");
    let revision = old.revision().await;
    old.stop_graceful(secs(10)).await;

    let copy = |to: String| {
        let data_dir = data_dir.clone();
        tokio::task::block_in_place(move || {
            outpost_command()
                .args(["store", "copy", "--from"])
                .arg(&data_dir)
                .env("OUTPOST_STORE_URL", to)
                .output()
                .unwrap()
        })
    };
    let out = copy(pg.url());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("copied revision {revision}"))
            && stderr.contains("1 analytics rows, 1 telemetry batch ids"),
        "{stderr}"
    );

    let new = ControlPlane::replica("cp-pg", dir.path(), &pg).await;
    assert_eq!(new.revision().await, revision);
    let copied = new.analytics("?group_by=operation").await;
    assert_eq!(
        (&copied["total"], &copied["groups"]),
        (&analytics["total"], &analytics["groups"]),
        "the same analytics, percentiles included"
    );
    // A batch the old control plane acknowledged, retried against the new one: counted once.
    assert_eq!(
        new.post_telemetry(&token, &hello_batch("i-1", 1)).await,
        204
    );
    assert_eq!(new.analytics("").await["total"]["requests"], 100);
    let res = client()
        .get(format!("{}/gateway/v1/config?after=0", new.gateway_url()))
        .header("Authorization", &token)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "the old token is still valid");
    let res = client()
        .get(format!(
            "{}/api/v1/export?include_secrets=true",
            new.admin_url()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let exported = res.text().await.unwrap();
    assert!(exported.contains("s3cret"), "secrets moved: {exported}");

    let out = copy(pg.url());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");
    assert!(
        !stderr.contains("s3cret") && !stderr.contains(&token),
        "{stderr}"
    );
}

/// Waits until `cp` lists instance `id` of `site-a` with `connection` (e.g. `connected`).
async fn wait_listed(cp: &ControlPlane, id: &str, connection: &str) {
    eventually(secs(30), ms(100), async || {
        let (status, body) = cp
            .call("GET", "/api/v1/gateways/site-a/instances", None)
            .await;
        let found = body
            .as_array()
            .and_then(|list| list.iter().find(|i| i["instance-id"] == id).cloned());
        match found {
            Some(i) if status == 200 && i["connection"] == connection => Ok(()),
            other => Err(format!("{}: {status} {other:?}", cp.admin_url())),
        }
    })
    .await
    .unwrap();
}

/// Starts a gateway for `site-a` on `cp` and returns it with its instance id.
async fn gateway_on(cp: &ControlPlane, token_from: &ControlPlane) -> (Gateway, String) {
    let token = token_from.token("site-a").await;
    let gw = Gateway::start("gateway", GatewayOptions::attached(cp, token)).await;
    let (_, ready) = gw.readyz().await;
    let id = ready["instance_id"].as_str().unwrap().to_owned();
    (gw, id)
}

/// Instance status is written to the store: a control plane restarted on its SQLite data
/// directory lists the instance it knew (here: stopped) at once.
#[tokio::test(flavor = "multi_thread")]
async fn instance_status_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (admin, gateway) = (free_port(), free_port());
    let mut cp = ControlPlane::start_on_with("cp", &data_dir, admin, gateway, &[]).await;
    cp.apply(HELLO_SITE).await;
    let (mut gw, id) = gateway_on(&cp, &cp).await;
    wait_listed(&cp, &id, "connected").await;
    gw.stop_graceful(secs(10)).await;
    wait_listed(&cp, &id, "stopped").await;
    cp.stop_graceful(secs(10)).await;

    let cp = ControlPlane::start_on_with("cp-again", &data_dir, admin, gateway, &[]).await;
    let (_, body) = cp
        .call("GET", "/api/v1/gateways/site-a/instances", None)
        .await;
    let listed = body.as_array().cloned().unwrap_or_default();
    assert!(
        listed
            .iter()
            .any(|i| i["instance-id"] == id.as_str() && i["connection"] == "stopped"),
        "right after the restart: {body:#}"
    );
}

/// With PostgreSQL, a gateway heartbeating to replica B is listed on replica A, and a replica
/// started later lists it too.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_instance_status() {
    let replicas = TwoReplicas::start().await;
    let (a, b) = (&replicas.a, &replicas.b);
    a.apply(HELLO_SITE).await;
    wait_for_revision(b, a.revision().await).await;
    let (mut gw, id) = gateway_on(b, b).await;
    wait_listed(b, &id, "connected").await;
    wait_listed(a, &id, "connected").await;
    gw.stop_graceful(secs(10)).await;
    wait_listed(a, &id, "stopped").await;
    let c = ControlPlane::replica("cp-c", replicas.dir.path(), &replicas.pg).await;
    wait_listed(&c, &id, "stopped").await;
}

/// A signing key rotated through replica A is the one replica B signs with, within a sync
/// period, so gateways polling B follow the rotation too.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_signing_key_reaches_every_replica() {
    let replicas = TwoReplicas::start().await;
    let (a, b) = (&replicas.a, &replicas.b);
    let (_, before) = b.call("GET", "/api/v1/signing-keys", None).await;
    let (status, rotated) = a.call("POST", "/api/v1/signing-keys/rotate", None).await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["active"], before["active"]);
    eventually(secs(30), ms(100), async || {
        let (_, now) = b.call("GET", "/api/v1/signing-keys", None).await;
        if now["active"] == rotated["active"] {
            Ok(())
        } else {
            Err(format!("B signs with {}", now["active"]))
        }
    })
    .await
    .unwrap();
}

/// A database migrated by a newer release is refused at start: the process exits non-zero
/// with a message naming both schema versions, and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_schema_stops_the_control_plane() {
    let pg = tokio::task::block_in_place(PostgresServer::start);
    let dir = tempfile::tempdir().unwrap();
    let mut first = ControlPlane::replica("cp-first", dir.path(), &pg).await;
    first.stop_graceful(secs(10)).await;
    pg.psql(
        outpost_integration::postgres::PG_DATABASE,
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
         VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '0')",
    );
    let out = tokio::task::block_in_place(|| {
        outpost_command()
            .arg("control-plane")
            .env("OUTPOST_ADMIN_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env(
                "OUTPOST_GATEWAY_API_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("OUTPOST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("OUTPOST_STORE_URL", pg.url())
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("has schema version 99, but this outpost knows up to"),
        "{stderr}"
    );
    assert_eq!(
        pg.psql(
            outpost_integration::postgres::PG_DATABASE,
            "SELECT max(version) FROM refinery_schema_history"
        ),
        "99"
    );
}

/// [`HELLO_SITE`] with its API behind a subscription key (`carol`'s), for
/// [`revocations_on_one_replica_reach_the_other`].
fn keyed_site() -> String {
    let keyed = HELLO_SITE.replace("    subscription-required: false\n", "");
    assert_ne!(keyed, HELLO_SITE, "the API asks for a key");
    keyed
        + r#"products:
  - {name: p, apis: [hello]}
subscriptions:
  - name: carol
    scope: {product: p}
    primary-key: "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0"
    secondary-key: "d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1"
"#
}

/// A call to `gw`'s `/hello/` with subscription key `key`; the status.
async fn hello_with(gw: &Gateway, key: &str) -> u16 {
    client()
        .get(gw.url("/hello/"))
        .header("Ocp-Apim-Subscription-Key", key)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Keys revoked through replica A stop working for a gateway attached to replica B (bounds in
/// docs/operations.md, "Several replicas"):
/// - a subscription key regenerated on A is a new revision: B is notified and the gateway
///   refuses the old key as soon as it has applied it;
/// - a gateway key regenerated on A makes B refuse the tokens minted from the old key once its
///   key cache lets go of it (30 s at most), while A refuses them at once.
#[tokio::test(flavor = "multi_thread")]
async fn revocations_on_one_replica_reach_the_other() {
    let replicas = TwoReplicas::start().await;
    let (a, b) = (&replicas.a, &replicas.b);
    a.apply(&keyed_site()).await;
    wait_for_revision(b, a.revision().await).await;
    let token = b.token("site-a").await;
    let (gw, _) = gateway_on(b, b).await;
    let old_key = "c0".repeat(32);
    eventually(secs(30), ms(100), async || {
        match hello_with(&gw, &old_key).await {
            200 => Ok(()),
            s => Err(format!("the key is not admitted yet: {s}")),
        }
    })
    .await
    .unwrap();

    // Subscription key: regenerated through A, refused by the gateway that waits on B.
    let (status, body) = a
        .call(
            "POST",
            "/api/v1/subscriptions/carol/regenerate-key?key=primary",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body:#}");
    eventually(secs(30), ms(50), async || {
        match hello_with(&gw, &old_key).await {
            401 => Ok(()),
            s => Err(format!("the revoked subscription key still gets {s}")),
        }
    })
    .await
    .expect("a subscription key revoked on A is refused by a gateway on B");
    let secondary = "d1".repeat(32);
    assert_eq!(
        hello_with(&gw, &secondary).await,
        200,
        "the other key works"
    );

    // Gateway key: regenerated through A. A refuses the old token at once; B within its key
    // cache's lifetime, whoever asks (the gateway's next poll, or this direct call).
    let config_status = |cp: &ControlPlane| {
        let url = format!("{}/gateway/v1/config?after=0&wait=0", cp.gateway_url());
        let token = token.clone();
        async move {
            client()
                .get(url)
                .header("Authorization", token)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(config_status(b).await, 200, "the token works on B before");
    let (status, body) = a
        .call(
            "POST",
            "/api/v1/gateways/site-a/keys/regenerate",
            Some(json!({"key": "primary"})),
        )
        .await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(
        config_status(a).await,
        401,
        "A refuses the old token at once"
    );
    eventually(secs(60), ms(500), async || match config_status(b).await {
        401 => Ok(()),
        s => Err(format!("B still answers the old token with {s}")),
    })
    .await
    .expect("B refuses a token of the regenerated key within its key cache's lifetime");
}
