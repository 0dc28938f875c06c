use std::sync::Arc;
use std::time::Duration;

use outpost_model::resources::{NamedValue, Resource};
use outpost_model::view::{View, content_hash};
use outpost_model::wire::{ConfigUpdate, FORMAT_VERSION, GatewaySnapshot};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::backup::{self, BackupError};
use super::state::{Backoff, Step, SyncState};
use crate::link::CallError;

fn nv(name: &str, value: &str) -> Resource {
    Resource::NamedValue(NamedValue {
        name: name.into(),
        value: value.into(),
        secret: false,
    })
}

fn view(items: &[(&str, &str)]) -> View {
    items
        .iter()
        .map(|(n, v)| nv(n, v))
        .map(|r| (r.key(), r))
        .collect()
}

fn snapshot(revision: u64, items: &[(&str, &str)]) -> GatewaySnapshot {
    GatewaySnapshot::from_view(revision, view(items))
}

fn full(revision: u64, items: &[(&str, &str)]) -> ConfigUpdate {
    let v = view(items);
    ConfigUpdate {
        full: true,
        from_revision: 0,
        revision,
        hash: content_hash(&v),
        upserts: v.into_values().collect(),
        deletes: vec![],
    }
}

fn delta(
    from: u64,
    revision: u64,
    target: &[(&str, &str)],
    upserts: &[(&str, &str)],
) -> ConfigUpdate {
    ConfigUpdate {
        full: false,
        from_revision: from,
        revision,
        hash: content_hash(&view(target)),
        upserts: upserts.iter().map(|(n, v)| nv(n, v)).collect(),
        deletes: vec![],
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

fn sync(held: Option<GatewaySnapshot>) -> SyncState {
    SyncState::new(
        held.map(Arc::new),
        Backoff::new(Duration::from_millis(100), Duration::from_millis(2000)),
    )
}

fn offered(step: Step) -> Arc<GatewaySnapshot> {
    match step {
        Step::Offer { snapshot, .. } => snapshot,
        other => panic!("expected an offer, got {other:?}"),
    }
}

// === backoff ===

#[test]
fn backoff_stays_within_bounds_and_grows() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(2000));
    let mut r = rng();
    let mut ceilings_hit = 0;
    for n in 0..40 {
        let d = b.next(&mut r);
        assert!(d >= Duration::from_millis(100), "{d:?} below initial");
        let ceiling = (100u64 << n.min(20)).min(2000);
        assert!(
            d <= Duration::from_millis(ceiling),
            "{d:?} above {ceiling} at {n}"
        );
        if d > Duration::from_millis(1000) {
            ceilings_hit += 1;
        }
    }
    assert!(ceilings_hit > 0, "jitter reaches the upper range");
    b.reset();
    assert_eq!(b.failures(), 0);
    assert!(b.next(&mut r) <= Duration::from_millis(100));
}

// === sync state ===

#[test]
fn first_poll_asks_for_a_full_snapshot_then_follows_deltas() {
    let mut s = sync(None);
    assert_eq!(s.poll_after(), 0);
    let snap = offered(s.on_poll(Ok(Some(full(3, &[("a", "1")]))), &mut rng()));
    assert_eq!(snap.revision, 3);
    s.on_applied(snap);
    assert_eq!(s.poll_after(), 3);
    let step = s.on_poll(
        Ok(Some(delta(3, 5, &[("a", "1"), ("b", "2")], &[("b", "2")]))),
        &mut rng(),
    );
    let snap = offered(step);
    assert_eq!(snap.revision, 5);
    s.on_applied(snap);
    assert_eq!(s.on_poll(Ok(None), &mut rng()), Step::Poll(Duration::ZERO));
    assert_eq!(s.poll_after(), 5);
}

#[test]
fn wrong_base_or_hash_mismatch_resyncs_with_a_full_snapshot() {
    let mut s = sync(Some(snapshot(5, &[("a", "1")])));
    let step = s.on_poll(Ok(Some(delta(4, 6, &[("a", "1")], &[]))), &mut rng());
    assert_eq!(step, Step::Poll(Duration::ZERO));
    assert_eq!(s.poll_after(), 0, "full resync");
    let snap = offered(s.on_poll(Ok(Some(full(6, &[("a", "2")]))), &mut rng()));
    s.on_applied(snap);
    assert_eq!(s.poll_after(), 6);

    let mut bad = delta(6, 7, &[("a", "2"), ("b", "1")], &[("b", "1")]);
    bad.hash = "0".repeat(64);
    assert_eq!(
        s.on_poll(Ok(Some(bad)), &mut rng()),
        Step::Poll(Duration::ZERO)
    );
    assert_eq!(s.poll_after(), 0);
    assert_eq!(s.held().unwrap().revision, 6, "nothing half-applied");

    let mut bad_full = full(7, &[("a", "3")]);
    bad_full.hash = "0".repeat(64);
    match s.on_poll(Ok(Some(bad_full)), &mut rng()) {
        Step::Poll(d) => assert!(
            d >= Duration::from_millis(100),
            "a bad full snapshot backs off"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unauthorized_and_unreachable_back_off_and_keep_the_snapshot() {
    let mut s = sync(Some(snapshot(5, &[("a", "1")])));
    for e in [
        CallError::Unauthorized("token revoked".into()),
        CallError::Unreachable("connection refused".into()),
        CallError::Rejected("empty body".into()),
    ] {
        match s.on_poll(Err(e), &mut rng()) {
            Step::Poll(d) => assert!(d >= Duration::from_millis(100)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(s.failures(), 3);
    assert_eq!(s.held().unwrap().revision, 5);
    assert_eq!(s.poll_after(), 5);
    s.on_poll(Ok(None), &mut rng());
    assert_eq!(s.failures(), 0);
}

#[test]
fn a_refused_snapshot_is_not_offered_again_and_the_next_one_is() {
    let mut s = sync(Some(snapshot(5, &[("a", "1")])));
    let bad = offered(s.on_poll(
        Ok(Some(delta(5, 6, &[("a", "1"), ("b", "x")], &[("b", "x")]))),
        &mut rng(),
    ));
    s.on_refused(&bad);
    assert_eq!(s.held().unwrap().revision, 5, "the previous config serves");
    assert_eq!(
        s.poll_after(),
        6,
        "wait for something newer than the refused revision"
    );
    // The next change arrives as a delta from the refused revision, which we do not hold.
    let step = s.on_poll(
        Ok(Some(delta(6, 7, &[("a", "1"), ("b", "y")], &[("b", "y")]))),
        &mut rng(),
    );
    assert_eq!(step, Step::Poll(Duration::ZERO));
    assert_eq!(s.poll_after(), 0);
    // Offering the refused content again would loop; it backs off instead.
    assert!(matches!(
        s.on_poll(Ok(Some(full(6, &[("a", "1"), ("b", "x")]))), &mut rng()),
        Step::Poll(_)
    ));
    let good = offered(s.on_poll(Ok(Some(full(7, &[("a", "1"), ("b", "y")]))), &mut rng()));
    s.on_applied(good);
    assert_eq!(s.poll_after(), 7);
}

#[test]
fn a_revision_bump_without_content_change_is_recorded_not_recompiled() {
    let mut s = sync(Some(snapshot(5, &[("a", "1")])));
    match s.on_poll(Ok(Some(delta(5, 9, &[("a", "1")], &[]))), &mut rng()) {
        Step::Offer {
            snapshot,
            unchanged,
        } => {
            assert!(unchanged);
            assert_eq!(snapshot.revision, 9);
        }
        other => panic!("{other:?}"),
    }
}

// === backup ===

#[test]
fn backup_round_trips_atomically_with_owner_only_mode() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("nested");
    assert!(backup::read(&target).unwrap().is_none(), "no backup yet");
    let snap = snapshot(42, &[("a", "1"), ("b", "2")]);
    let path = backup::write(&target, &snap).unwrap();
    assert_eq!(backup::read(&target).unwrap().unwrap(), snap);
    let newer = snapshot(43, &[("a", "1")]);
    backup::write(&target, &newer).unwrap();
    assert_eq!(backup::read(&target).unwrap().unwrap(), newer);
    let leftovers: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

fn refused(bytes: &[u8]) -> String {
    let err = backup::decode(bytes, std::path::Path::new("/b/config")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/b/config"), "names the file: {text}");
    assert!(text.contains("refused"), "{text}");
    let _: &BackupError = &err;
    text
}

#[test]
fn damaged_backups_are_refused_with_the_reason() {
    let snap = snapshot(42, &[("a", "1"), ("b", "2")]);
    let good = backup::encode(&snap);

    assert!(refused(b"apiVersion: outpost/v1\n").contains("not an Outpost backup"));
    assert!(refused(&good[..good.len() - 3]).contains("truncated"));
    assert!(refused(&good[..20]).contains("truncated"));
    assert!(refused(&good[..4]).contains("truncated"));

    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(refused(&tampered).contains("checksum mismatch"));

    let mut longer = good.clone();
    longer.push(0);
    assert!(refused(&longer).contains("checksum mismatch"));

    let mut future = good.clone();
    future[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert!(refused(&future).contains(&format!("format version {}", FORMAT_VERSION + 1)));

    // A consistent file around a snapshot whose hash lies about its resources.
    let mut lying = snap.clone();
    lying.hash = "0".repeat(64);
    assert!(refused(&backup::encode(&lying)).contains("content hash"));
}

// === the actor against a fake control plane and route table ===

#[actix::test]
async fn a_refused_snapshot_keeps_the_previous_one_and_is_reported() {
    use actix::Actor;
    use outpost_model::wire::{self, HeartbeatAck};

    use super::messages::GetSyncStatus;
    use super::{ConfigSync, Identity, SnapshotSink, SyncConfig};
    use crate::connectivity::{ConfigSource, ConnectivityWatcher, WatcherConfig};
    use crate::link::{ClientFactory, LinkConfig};

    let good = full(1, &[("a", "1")]);
    let bad = delta(1, 2, &[("a", "1"), ("b", "bad")], &[("b", "bad")]);
    let url = crate::link::fake::control_plane(Arc::new(move |line: &str, _body: &[u8]| {
        if line.starts_with("POST /gateway/v1/heartbeat") {
            let ack = HeartbeatAck {
                revision: 2,
                server_time: chrono::Utc::now(),
            };
            return (200, wire::encode(&ack).unwrap());
        }
        if line.contains("after=0&") {
            return (200, wire::encode(&good).unwrap());
        }
        if line.contains("after=1&") {
            return (200, wire::encode(&bad).unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
        (304, Vec::new())
    }))
    .await;

    let (watcher, status) = ConnectivityWatcher::new(WatcherConfig {
        offline: false,
        redis_configured: false,
        token: None,
        degraded_grace: Duration::from_secs(30),
    });
    let watcher = watcher.start();
    let sink: SnapshotSink = Arc::new(|snapshot: Arc<GatewaySnapshot>| {
        Box::pin(async move {
            if snapshot.revision == 2 {
                Err("unknown policy 'bad'".to_owned())
            } else {
                Ok(())
            }
        })
    });
    let backups = tempfile::tempdir().unwrap();
    let sync = ConfigSync::new(
        SyncConfig {
            link: Arc::new(LinkConfig {
                base_url: url,
                token: "GatewayKey gw&209901010000&c2ln".into(),
                request_timeout: Duration::from_secs(5),
                clients: ClientFactory::plain(),
            }),
            poll_wait: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            backup_dir: Some(backups.path().to_path_buf()),
            identity: Identity {
                instance_id: "i".into(),
                hostname: "h".into(),
                version: "0".into(),
                started_at: chrono::Utc::now(),
                started_from: ConfigSource::ControlPlane,
                token_expiry: None,
            },
        },
        None,
        sink,
        watcher,
        status.clone(),
    )
    .start();

    for _ in 0..100 {
        if status.load().last_refusal.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = status.load();
    assert_eq!(seen.config.as_ref().map(|c| c.revision), Some(1));
    let refusal = seen.last_refusal.as_ref().expect("refusal reported");
    assert_eq!(refusal.revision, 2);
    assert!(refusal.reason.contains("unknown policy"));
    assert_eq!(backup::read(backups.path()).unwrap().unwrap().revision, 1);
    let sync_status = sync.send(GetSyncStatus).await.unwrap();
    assert_eq!(sync_status.held.map(|(r, _)| r), Some(1));
    assert_eq!(sync_status.poll_after, 2, "waits for something newer");
}
