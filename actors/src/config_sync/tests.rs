use std::sync::Arc;
use std::time::Duration;

use outpost_model::resources::{NamedValue, Resource};
use outpost_model::signing::{PublicKey, SigningKey};
use outpost_model::view::{View, content_hash};
use outpost_model::wire::{ConfigUpdate, GatewaySnapshot};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::backup::{self, Backup, BackupError};
use super::state::{Backoff, Step, SyncState};
use super::trust::{self, Trust, TrustError};
use crate::connectivity::ConfigSource;
use crate::link::CallError;

/// The gateway these tests are.
const GW: &str = "gw";

/// A control-plane signing key; `key(1)` is the one the test gateways trust.
fn key(n: u8) -> SigningKey {
    SigningKey::from_seed([n; 32])
}

fn public(n: u8) -> PublicKey {
    key(n).public()
}

fn signed_by(n: u8, mut update: ConfigUpdate) -> ConfigUpdate {
    update.signature = key(n).sign_config(GW, update.revision, &update.hash);
    update
}

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
    let mut s = GatewaySnapshot::from_view(revision, view(items));
    s.signature = key(1).sign_config(GW, s.revision, &s.hash);
    s
}

fn full(revision: u64, items: &[(&str, &str)]) -> ConfigUpdate {
    let v = view(items);
    signed_by(
        1,
        ConfigUpdate {
            full: true,
            from_revision: 0,
            revision,
            hash: content_hash(&v),
            upserts: v.into_values().collect(),
            deletes: vec![],
            signature: Default::default(),
            endorsements: vec![],
        },
    )
}

fn delta(
    from: u64,
    revision: u64,
    target: &[(&str, &str)],
    upserts: &[(&str, &str)],
) -> ConfigUpdate {
    signed_by(
        1,
        ConfigUpdate {
            full: false,
            from_revision: from,
            revision,
            hash: content_hash(&view(target)),
            upserts: upserts.iter().map(|(n, v)| nv(n, v)).collect(),
            deletes: vec![],
            signature: Default::default(),
            endorsements: vec![],
        },
    )
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

fn sync(held: Option<GatewaySnapshot>) -> SyncState {
    sync_trusting(held, Trust::configured(GW, vec![public(1)]))
}

fn sync_trusting(held: Option<GatewaySnapshot>, trust: Trust) -> SyncState {
    SyncState::new(
        held.map(Arc::new),
        Backoff::new(Duration::from_millis(100), Duration::from_millis(2000)),
        trust,
    )
}

fn rejected(step: Step) -> String {
    match step {
        Step::Reject { reason, delay, .. } => {
            assert!(delay >= Duration::from_millis(100), "backs off: {delay:?}");
            reason
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn pins_of(step: &Step) -> Option<Vec<PublicKey>> {
    match step {
        Step::Offer { pins, .. } => pins.clone(),
        other => panic!("expected an offer, got {other:?}"),
    }
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
            ..
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
    let snap = in_backup(snapshot(42, &[("a", "1"), ("b", "2")]));
    let path = backup::write(&target, &snap).unwrap();
    assert_eq!(backup::read(&target).unwrap().unwrap(), snap);
    let newer = in_backup(snapshot(43, &[("a", "1")]));
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

fn in_backup(snapshot: GatewaySnapshot) -> Backup {
    Backup {
        gateway: GW.into(),
        snapshot,
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
    let good = backup::encode(&in_backup(snap.clone()));

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
    let next = backup::BACKUP_VERSION + 1;
    future[8..12].copy_from_slice(&next.to_le_bytes());
    assert!(refused(&future).contains(&format!("format version {next}")));

    // A consistent file around a snapshot whose hash lies about its resources.
    let mut lying = snap.clone();
    lying.hash = "0".repeat(64);
    assert!(refused(&backup::encode(&in_backup(lying))).contains("content hash"));
}

/// A version 1 backup (before signing) says what to do rather than just "unsupported".
#[test]
fn an_unsigned_old_format_backup_is_refused_with_advice() {
    let mut old = backup::encode(&in_backup(snapshot(42, &[("a", "1")])));
    old[8..12].copy_from_slice(&1u32.to_le_bytes());
    let text = refused(&old);
    assert!(
        text.contains("format version 1") && text.contains("reconnect"),
        "{text}"
    );
    // Version 2 held the resources before backend pools: not read by guessing either.
    old[8..12].copy_from_slice(&2u32.to_le_bytes());
    let text = refused(&old);
    assert!(
        text.contains("format version 2") && text.contains("earlier release"),
        "{text}"
    );
}

/// Integrity checks pass (recomputed checksum and content hash), so only the signature can
/// catch an edited backup; and a backup written for another gateway names both gateways.
#[test]
fn edited_foreign_or_unsigned_backups_fail_the_trust_check() {
    let trust = Trust::configured(GW, vec![public(1)]);
    let genuine = in_backup(snapshot(42, &[("backend-url", "http://10.0.0.5")]));
    assert_eq!(trust.check_backup(&genuine).unwrap(), public(1));

    let mut edited = genuine.clone();
    let signature = edited.snapshot.signature.clone();
    edited.snapshot = GatewaySnapshot::from_view(42, view(&[("backend-url", "http://evil")]));
    edited.snapshot.signature = signature;
    let reread = backup::decode(&backup::encode(&edited), std::path::Path::new("/b")).unwrap();
    let err = trust.check_backup(&reread).unwrap_err().to_string();
    assert!(err.contains("does not verify"), "{err}");

    let mut foreign = genuine.clone();
    foreign.gateway = "site-b".into();
    assert_eq!(
        trust.check_backup(&foreign).unwrap_err().to_string(),
        "the backup is for gateway 'site-b', this gateway is 'gw'"
    );
    // Relabelling it does not help: the signature names the gateway it was made for.
    let mut for_b = in_backup(GatewaySnapshot::from_view(42, view(&[("a", "1")])));
    for_b.snapshot.signature = key(1).sign_config("site-b", 42, &for_b.snapshot.hash);
    assert!(trust.check_backup(&for_b).is_err());

    let mut unsigned = genuine.clone();
    unsigned.snapshot.signature = Default::default();
    let err = trust.check_backup(&unsigned).unwrap_err().to_string();
    assert!(err.contains("no control-plane signature"), "{err}");

    // Nothing configured, nothing pinned: a backup is never the first contact.
    let err = Trust::pinned(GW, vec![])
        .check_backup(&genuine)
        .unwrap_err();
    assert_eq!(err, TrustError::NoTrustedKey);
}

// === signatures ===

#[test]
fn a_snapshot_signed_by_a_wrong_key_is_refused() {
    let mut s = sync(Some(snapshot(5, &[("a", "1")])));
    let forged = signed_by(2, full(6, &[("a", "evil")]));
    let reason = rejected(s.on_poll(Ok(Some(forged.clone())), &mut rng()));
    assert!(reason.contains("does not trust"), "{reason}");
    assert_eq!(s.held().unwrap().revision, 5, "the previous config serves");
    assert_eq!(s.poll_after(), 6, "waits for something newer");
    // The same answer again is not offered (and does not hot-loop).
    assert!(matches!(
        s.on_poll(Ok(Some(forged)), &mut rng()),
        Step::Poll(d) if d >= Duration::from_millis(100)
    ));

    // A trusted key claimed over another key's signature, a signature for another gateway, and
    // no signature at all: all refused, each with its reason.
    let mut s = sync(Some(snapshot(5, &[("a", "1")])));
    let mut claimed = signed_by(2, delta(5, 6, &[("a", "1"), ("b", "2")], &[("b", "2")]));
    claimed.signature.key = public(1).to_string();
    let reason = rejected(s.on_poll(Ok(Some(claimed)), &mut rng()));
    assert!(reason.contains("does not verify"), "{reason}");

    let mut s = sync(Some(snapshot(5, &[("a", "1")])));
    let mut other_gateway = full(6, &[("a", "2")]);
    other_gateway.signature = key(1).sign_config("site-b", 6, &other_gateway.hash);
    let reason = rejected(s.on_poll(Ok(Some(other_gateway)), &mut rng()));
    assert!(reason.contains("does not verify"), "{reason}");

    let mut s = sync(Some(snapshot(5, &[("a", "1")])));
    let mut unsigned = full(6, &[("a", "2")]);
    unsigned.signature = Default::default();
    let reason = rejected(s.on_poll(Ok(Some(unsigned)), &mut rng()));
    assert!(reason.contains("no control-plane signature"), "{reason}");
}

#[test]
fn the_first_key_is_pinned_and_another_key_refused_afterwards() {
    let mut s = sync_trusting(None, Trust::pinned(GW, vec![]));
    let step = s.on_poll(Ok(Some(signed_by(3, full(1, &[("a", "1")])))), &mut rng());
    assert_eq!(pins_of(&step), Some(vec![public(3)]), "pinned on first use");
    s.on_applied(offered(step));
    let step = s.on_poll(
        Ok(Some(signed_by(
            3,
            delta(1, 2, &[("a", "1"), ("b", "2")], &[("b", "2")]),
        ))),
        &mut rng(),
    );
    assert_eq!(pins_of(&step), None, "same key: the pin does not change");
    s.on_applied(offered(step));
    let reason = rejected(s.on_poll(
        Ok(Some(signed_by(4, full(3, &[("a", "evil")])))),
        &mut rng(),
    ));
    assert!(reason.contains("does not trust"), "{reason}");
    assert_eq!(s.trust().keys(), &[public(3)]);
}

#[test]
fn during_a_rotation_old_and_new_keys_are_accepted_and_a_pin_follows() {
    // Configured with both keys (the grace period): either signature is accepted.
    let mut s = sync_trusting(None, Trust::configured(GW, vec![public(1), public(2)]));
    let first = offered(s.on_poll(Ok(Some(signed_by(1, full(1, &[("a", "1")])))), &mut rng()));
    s.on_applied(first);
    let step = s.on_poll(
        Ok(Some(signed_by(
            2,
            delta(1, 2, &[("a", "1"), ("b", "2")], &[("b", "2")]),
        ))),
        &mut rng(),
    );
    assert_eq!(pins_of(&step), None, "configured keys are never re-pinned");
    s.on_applied(offered(step));

    // Pinned to key 1; the control plane rotates to 2 and then 3, each endorsed by the previous.
    let mut s = sync_trusting(
        Some(snapshot(5, &[("a", "1")])),
        Trust::pinned(GW, vec![public(1)]),
    );
    let mut rotated = signed_by(2, full(6, &[("a", "2")]));
    let without_endorsement = rejected(s.on_poll(Ok(Some(rotated.clone())), &mut rng()));
    assert!(without_endorsement.contains("does not trust"));
    let mut s = sync_trusting(
        Some(snapshot(5, &[("a", "1")])),
        Trust::pinned(GW, vec![public(1)]),
    );
    rotated.endorsements = vec![key(1).endorse(&public(2))];
    let step = s.on_poll(Ok(Some(rotated)), &mut rng());
    assert_eq!(pins_of(&step), Some(vec![public(1), public(2)]));
    s.on_applied(offered(step));
    let mut again = signed_by(3, delta(6, 7, &[("a", "3")], &[("a", "3")]));
    again.endorsements = vec![key(1).endorse(&public(2)), key(2).endorse(&public(3))];
    let step = s.on_poll(Ok(Some(again)), &mut rng());
    assert_eq!(
        pins_of(&step),
        Some(vec![public(2), public(3)]),
        "the pin moves, keeping the previous key"
    );
    s.on_applied(offered(step));
    // The key two rotations back is no longer trusted.
    let reason = rejected(s.on_poll(Ok(Some(signed_by(1, full(8, &[("a", "old")])))), &mut rng()));
    assert!(reason.contains("does not trust"), "{reason}");
}

#[test]
fn pins_round_trip_owner_only_and_a_bad_pin_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("backup");
    assert!(trust::read_pins(&target).unwrap().is_empty());
    let path = trust::write_pins(&target, &[public(1), public(2)]).unwrap();
    assert_eq!(
        trust::read_pins(&target).unwrap(),
        vec![public(1), public(2)]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }
    std::fs::write(&path, "ed25519:nope\n").unwrap();
    let err = trust::read_pins(&target).unwrap_err().to_string();
    assert!(
        err.contains("line 1") && err.contains("delete the file"),
        "{err}"
    );
}

#[test]
fn the_held_hash_goes_with_polls_from_the_held_revision_only() {
    let mut s = sync(Some(snapshot(5, &[("a", "1")])));
    let held = s.held().unwrap().hash.clone();
    assert_eq!(s.poll_hash(), Some(held.as_str()));
    let bad = offered(s.on_poll(
        Ok(Some(delta(5, 6, &[("a", "1"), ("b", "x")], &[("b", "x")]))),
        &mut rng(),
    ));
    s.on_refused(&bad);
    assert_eq!(s.poll_after(), 6);
    assert_eq!(s.poll_hash(), None, "we do not hold revision 6");
}

// === where the held configuration came from ===

#[test]
fn a_304_to_a_poll_with_the_held_hash_confirms_a_backup() {
    let mut s = sync(Some(snapshot(5, &[("a", "1")]))).held_from(ConfigSource::Backup);
    assert_eq!(s.source(), ConfigSource::Backup);
    assert!(s.poll_hash().is_some());
    assert_eq!(s.on_poll(Ok(None), &mut rng()), Step::Confirm);
    assert_eq!(s.source(), ConfigSource::ControlPlane);
    assert_eq!(
        s.on_poll(Ok(None), &mut rng()),
        Step::Poll(Duration::ZERO),
        "confirmed once"
    );
}

#[test]
fn a_failed_poll_or_a_304_without_the_hash_confirms_nothing() {
    let mut s = sync(Some(snapshot(5, &[("a", "1")]))).held_from(ConfigSource::Backup);
    assert!(matches!(
        s.on_poll(Err(CallError::Unreachable("refused".into())), &mut rng()),
        Step::Poll(_)
    ));
    assert_eq!(s.source(), ConfigSource::Backup);
    // After a refusal the poll asks from the refused revision, without a hash: its 304 says
    // nothing about what is held.
    let bad = offered(s.on_poll(
        Ok(Some(delta(5, 6, &[("a", "1"), ("b", "x")], &[("b", "x")]))),
        &mut rng(),
    ));
    s.on_refused(&bad);
    assert_eq!(s.on_poll(Ok(None), &mut rng()), Step::Poll(Duration::ZERO));
    assert_eq!(s.source(), ConfigSource::Backup);
    // A configuration from the control plane, once served, is the control plane's.
    let next = offered(s.on_poll(Ok(Some(full(7, &[("a", "2")]))), &mut rng()));
    s.on_applied(next);
    assert_eq!(s.source(), ConfigSource::ControlPlane);
}

#[test]
fn a_gateway_that_started_from_the_control_plane_has_nothing_to_confirm() {
    let mut s = sync(Some(snapshot(5, &[("a", "1")])));
    assert_eq!(s.on_poll(Ok(None), &mut rng()), Step::Poll(Duration::ZERO));
}

// === heartbeats ===

fn identity(started_from: ConfigSource) -> super::Identity {
    super::Identity {
        instance_id: "i-1".into(),
        hostname: "h".into(),
        version: "0".into(),
        started_at: chrono::Utc::now(),
        started_from,
        token_expiry: None,
    }
}

fn board(source: Option<ConfigSource>) -> crate::connectivity::ConnectivityStatus {
    let mut c = crate::connectivity::state::Connectivity::new(
        false,
        false,
        None,
        chrono::TimeDelta::hours(48),
        chrono::TimeDelta::seconds(30),
    );
    if let Some(source) = source {
        c.config_applied(crate::connectivity::AppliedConfig {
            source,
            revision: 5,
            hash: "h".into(),
            applied_at: chrono::Utc::now(),
        });
    }
    c.status().clone()
}

#[test]
fn the_heartbeat_reports_the_source_the_status_board_shows() {
    let held = snapshot(5, &[("a", "1")]);
    let id = identity(ConfigSource::Backup);
    let hb = super::state::heartbeat(
        &id,
        Some(&held),
        &board(Some(ConfigSource::ControlPlane)),
        ConfigSource::Backup,
        false,
        false,
        Vec::new(),
    );
    assert_eq!(hb.config_source, "control-plane", "not where it started");
    assert_eq!(
        hb.readiness,
        Some(outpost_model::wire::Readiness {
            ready: true,
            reason: None
        })
    );
    assert_eq!((hb.applied_revision, hb.stopping), (5, false));
    assert_eq!(hb.config_hash, held.hash);
    let hb = super::state::heartbeat(
        &id,
        Some(&held),
        &board(Some(ConfigSource::Backup)),
        ConfigSource::ControlPlane,
        true,
        false,
        Vec::new(),
    );
    assert_eq!(hb.config_source, "backup");
    assert!(hb.stopping, "the last heartbeat says so");
    let readiness = hb.readiness.expect("reported");
    assert!(!readiness.ready, "a stopping instance is not ready");
    assert!(
        readiness
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("draining")),
        "{readiness:?}"
    );
    let hb = super::state::heartbeat(
        &id,
        Some(&held),
        &board(Some(ConfigSource::ControlPlane)),
        ConfigSource::ControlPlane,
        false,
        true,
        Vec::new(),
    );
    assert_eq!(
        hb.readiness.map(|r| (r.ready, r.reason)),
        Some((false, Some(crate::connectivity::DRAINING.to_owned()))),
        "a draining instance says so while it still serves"
    );
    let hb = super::state::heartbeat(
        &id,
        None,
        &board(None),
        ConfigSource::Backup,
        false,
        false,
        Vec::new(),
    );
    assert_eq!(
        (hb.config_source.as_str(), hb.applied_revision),
        ("backup", 0),
        "nothing on the board yet: the sync loop's own view"
    );
}

// === the actor against a fake control plane and route table ===

mod actor {
    use actix::{Actor, Addr};
    use outpost_model::wire::{self, HeartbeatAck};

    use super::*;
    use crate::config_sync::messages::{GetSyncStatus, Stop};
    use crate::config_sync::{ConfigSync, Identity, SnapshotTarget, SyncConfig};
    use crate::connectivity::{
        AppliedConfig, ConfigApplied, ConnectivityWatcher, StatusHandle, WatcherConfig,
    };
    use crate::link::{ClientFactory, LinkConfig};
    use crate::route_table::{AppliedInfo, ApplySnapshot};
    use actix::{Context, Handler};
    use outpost_model::Problems;
    use outpost_model::wire::Heartbeat;

    type Answer = Arc<dyn Fn(&str) -> Option<ConfigUpdate> + Send + Sync>;

    /// A fake control plane answering config polls with `answer(request line)` (304 when
    /// `None`), and a `ConfigSync` holding `held` against it.
    async fn start(
        answer: Answer,
        held: Option<GatewaySnapshot>,
        sink: SnapshotTarget,
        backups: &std::path::Path,
    ) -> (Addr<ConfigSync>, StatusHandle) {
        let (sync, status, _) =
            start_from(answer, held, ConfigSource::ControlPlane, sink, backups).await;
        (sync, status)
    }

    type Heartbeats = Arc<std::sync::Mutex<Vec<Heartbeat>>>;

    /// [`start`] with the held snapshot reported as served from `source` (as the gateway's
    /// start-up does), and the heartbeats the fake control plane received.
    async fn start_from(
        answer: Answer,
        held: Option<GatewaySnapshot>,
        source: ConfigSource,
        sink: SnapshotTarget,
        backups: &std::path::Path,
    ) -> (Addr<ConfigSync>, StatusHandle, Heartbeats) {
        let heartbeats = Heartbeats::default();
        let received = heartbeats.clone();
        let url = crate::link::fake::control_plane(Arc::new(move |line: &str, body: &[u8]| {
            if line.starts_with("POST /gateway/v1/heartbeat") {
                if let Ok(hb) = wire::decode::<Heartbeat>(body) {
                    received.lock().unwrap().push(hb);
                }
                let ack = HeartbeatAck {
                    revision: 2,
                    server_time: chrono::Utc::now(),
                };
                return (200, wire::encode(&ack).unwrap());
            }
            match answer(line) {
                Some(update) => (200, wire::encode(&update).unwrap()),
                None => {
                    std::thread::sleep(Duration::from_millis(20));
                    (304, Vec::new())
                }
            }
        }))
        .await;
        let (watcher, status) = ConnectivityWatcher::new(WatcherConfig {
            offline: false,
            redis_configured: false,
            token: None,
            token_warning: chrono::TimeDelta::hours(48),
            degraded_grace: Duration::from_secs(30),
        });
        let watcher = watcher.start();
        if let Some(h) = &held {
            watcher
                .send(ConfigApplied(AppliedConfig {
                    source,
                    revision: h.revision,
                    hash: h.hash.clone(),
                    applied_at: chrono::Utc::now(),
                }))
                .await
                .unwrap();
        }
        let sync = ConfigSync::new(
            SyncConfig {
                link: Arc::new(LinkConfig::single(
                    url,
                    "GatewayKey gw&209901010000&c2ln",
                    Duration::from_secs(5),
                    ClientFactory::plain(),
                )),
                poll_wait: Duration::from_secs(1),
                heartbeat_interval: Duration::from_secs(1),
                backoff_initial: Duration::from_millis(10),
                backoff_max: Duration::from_millis(50),
                backup_dir: Some(backups.to_path_buf()),
                identity: Identity {
                    instance_id: "i".into(),
                    hostname: "h".into(),
                    version: "0".into(),
                    started_at: chrono::Utc::now(),
                    started_from: source,
                    token_expiry: None,
                },
                trust: Trust::configured(GW, vec![public(1)]),
                served: None,
                draining: Default::default(),
            },
            held.map(Arc::new),
            sink,
            watcher,
            status.clone(),
        )
        .start();
        (sync, status, heartbeats)
    }

    type Take = Arc<dyn Fn(Arc<GatewaySnapshot>) -> Result<(), String> + Send + Sync>;

    /// Stands in for the route table: takes or refuses each snapshot as `take` says.
    struct FakeTable(Take);

    impl Actor for FakeTable {
        type Context = Context<Self>;
    }

    impl Handler<ApplySnapshot> for FakeTable {
        type Result = Result<AppliedInfo, Problems>;

        fn handle(&mut self, msg: ApplySnapshot, _: &mut Context<Self>) -> Self::Result {
            let snapshot = msg.0;
            match (self.0)(snapshot.clone()) {
                Ok(()) => Ok(AppliedInfo {
                    revision: snapshot.revision,
                    hash: snapshot.hash.clone(),
                    apis: 0,
                    operations: 0,
                    subscriptions: 0,
                    unchanged: false,
                    compile_time: Duration::ZERO,
                }),
                Err(reason) => {
                    let mut problems = Problems::new();
                    problems.push("", reason);
                    Err(problems)
                }
            }
        }
    }

    fn table(
        take: impl Fn(Arc<GatewaySnapshot>) -> Result<(), String> + Send + Sync + 'static,
    ) -> SnapshotTarget {
        FakeTable(Arc::new(take)).start().recipient()
    }

    fn accept_all() -> SnapshotTarget {
        table(|_| Ok(()))
    }

    /// A gateway serving its backup, whose control plane comes back with the same
    /// configuration: `/readyz` and the heartbeats say `control-plane` from then on.
    #[actix::test]
    async fn a_backup_the_control_plane_confirms_is_reported_as_the_control_planes() {
        let held = snapshot(4, &[("a", "1")]);
        let backups = tempfile::tempdir().unwrap();
        let (_sync, status, heartbeats) = start_from(
            Arc::new(|_: &str| None),
            Some(held),
            ConfigSource::Backup,
            accept_all(),
            backups.path(),
        )
        .await;
        let mut reported = false;
        for _ in 0..150 {
            let board = status.load().config.as_ref().map(|c| c.source);
            reported = board == Some(ConfigSource::ControlPlane)
                && heartbeats
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|h| h.config_source == "control-plane");
            if reported {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            reported,
            "board {:?}, heartbeats {:?}",
            status.load().config,
            heartbeats.lock().unwrap()
        );
        let config = status.load().config.clone().unwrap();
        assert_eq!(config.revision, 4, "nothing else changed");
        assert_eq!(
            heartbeats.lock().unwrap()[0].config_source,
            "backup",
            "before the control plane answered"
        );
    }

    #[actix::test]
    async fn stop_sends_a_last_heartbeat_marked_stopping_and_ends_the_loop() {
        let backups = tempfile::tempdir().unwrap();
        let (sync, _status, heartbeats) = start_from(
            Arc::new(|_: &str| None),
            Some(snapshot(4, &[("a", "1")])),
            ConfigSource::ControlPlane,
            accept_all(),
            backups.path(),
        )
        .await;
        sync.send(Stop).await.unwrap();
        let received = heartbeats.lock().unwrap().clone();
        assert!(received.iter().any(|h| h.stopping), "{received:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            sync.send(GetSyncStatus).await.is_err(),
            "the actor has stopped"
        );
    }

    #[actix::test]
    async fn a_refused_snapshot_keeps_the_previous_one_and_is_reported() {
        let good = full(1, &[("a", "1")]);
        let bad = delta(1, 2, &[("a", "1"), ("b", "bad")], &[("b", "bad")]);
        let answer: Answer = Arc::new(move |line: &str| {
            if line.contains("after=0&") {
                Some(good.clone())
            } else if line.contains("after=1&") {
                Some(bad.clone())
            } else {
                None
            }
        });
        let sink = table(|snapshot: Arc<GatewaySnapshot>| {
            if snapshot.revision == 2 {
                Err("unknown policy 'bad'".to_owned())
            } else {
                Ok(())
            }
        });
        let backups = tempfile::tempdir().unwrap();
        let (sync, status) = start(answer, None, sink, backups.path()).await;

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
        let written = backup::read(backups.path()).unwrap().unwrap();
        assert_eq!(written.snapshot.revision, 1);
        assert_eq!(written.gateway, GW, "the backup names its gateway");
        assert_eq!(written.snapshot.signature.key, public(1).to_string());
        let sync_status = sync.send(GetSyncStatus).await.unwrap();
        assert_eq!(sync_status.held.map(|(r, _)| r), Some(1));
        assert_eq!(sync_status.poll_after, 2, "waits for something newer");
    }

    /// A gateway holding an altered configuration at the control plane's revision: its poll
    /// carries its hash, the control plane answers with a full snapshot, and the gateway serves
    /// the genuine configuration again (without waiting for a new revision).
    #[actix::test]
    async fn an_altered_config_at_the_same_revision_is_replaced_on_the_next_poll() {
        let genuine = full(4, &[("backend", "http://10.0.0.5")]);
        let tampered = snapshot(4, &[("backend", "http://evil")]);
        let genuine_hash = genuine.hash.clone();
        let asked_with = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = asked_with.clone();
        let answer: Answer = Arc::new(move |line: &str| {
            seen.lock().unwrap().push(line.to_owned());
            // The control plane's rule: at its current revision, a different hash gets a full
            // snapshot at once; the same hash waits for a change.
            if line.contains("after=4&") && !line.contains(&format!("hash={genuine_hash}")) {
                return Some(genuine.clone());
            }
            None
        });
        let served = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let record = served.clone();
        let sink = table(move |snapshot: Arc<GatewaySnapshot>| {
            record.lock().unwrap().push(snapshot.hash.clone());
            Ok(())
        });
        let backups = tempfile::tempdir().unwrap();
        let tampered_hash = tampered.hash.clone();
        let (sync, status) = start(answer, Some(tampered), sink, backups.path()).await;
        let expected = content_hash(&view(&[("backend", "http://10.0.0.5")]));
        for _ in 0..100 {
            if status.load().config.as_ref().map(|c| c.hash.as_str()) == Some(expected.as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*served.lock().unwrap(), vec![expected.clone()]);
        let first = asked_with.lock().unwrap()[0].clone();
        assert!(
            first.contains("after=4&") && first.contains(&format!("hash={tampered_hash}")),
            "the poll carries the held hash: {first}"
        );
        let now = sync.send(GetSyncStatus).await.unwrap();
        assert_eq!(now.held, Some((4, expected)));
    }
}

#[test]
fn the_heartbeat_names_each_pool_members_state() {
    let doc = outpost_model::document::Document::from_yaml(
        r#"
apiVersion: outpost/v1
backends:
  - name: pool
    members: [{url: "http://127.0.0.1:1"}, {url: "http://127.0.0.1:2"}]
    passive-health: {consecutive-failures: 1}
  - {name: single, url: "http://127.0.0.1:3"}
"#,
    )
    .unwrap();
    let snapshot =
        GatewaySnapshot::from_view(1, doc.resources.into_iter().map(|r| (r.key(), r)).collect());
    let table =
        crate::route_table::compile(&snapshot, &crate::route_table::CompileContext::default())
            .unwrap();
    let pool = table.backends["pool"].pool.clone().unwrap();
    pool.report(1, crate::route_table::pool::Outcome::Failure, 0);
    let states: Vec<(String, String)> = super::state::pool_members(&table, 0)
        .into_iter()
        .map(|m| {
            assert_eq!(m.backend, "pool", "single-URL backends are no pools");
            (m.member, m.state)
        })
        .collect();
    assert_eq!(
        states,
        [
            ("http://127.0.0.1:1".to_owned(), "healthy".to_owned()),
            ("http://127.0.0.1:2".to_owned(), "ejected".to_owned())
        ]
    );
}
