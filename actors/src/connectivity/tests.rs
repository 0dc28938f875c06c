use chrono::{TimeDelta, TimeZone, Utc};

use super::state::*;
use super::*;

fn at(secs: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

fn board() -> Connectivity {
    Connectivity::new(
        false,
        true,
        None,
        TimeDelta::hours(48),
        TimeDelta::seconds(30),
    )
}

#[test]
fn failures_after_a_recent_success_are_degraded_then_disconnected() {
    let mut c = board();
    assert_eq!(
        c.status().control_plane.state,
        ControlPlaneState::Disconnected
    );
    assert!(!c.status().ready());

    c.control_plane_ok(at(0));
    assert_eq!(c.status().control_plane.state, ControlPlaneState::Connected);
    c.control_plane_failed(at(10), "connection refused".into());
    assert_eq!(c.status().control_plane.state, ControlPlaneState::Degraded);
    assert!(!c.tick(at(20)), "still within grace");
    assert!(c.tick(at(31)));
    assert_eq!(
        c.status().control_plane.state,
        ControlPlaneState::Disconnected
    );
    assert_eq!(
        c.status().control_plane.reason.as_deref(),
        Some("connection refused")
    );
    c.control_plane_failed(at(40), "timeout".into());
    assert_eq!(c.status().control_plane.consecutive_failures, 2);
    c.control_plane_ok(at(50));
    assert_eq!(c.status().control_plane.consecutive_failures, 0);
    assert_eq!(c.status().control_plane.reason, None);
}

#[test]
fn unauthorized_sticks_until_a_call_succeeds() {
    let mut c = board();
    c.control_plane_ok(at(0));
    c.control_plane_unauthorized(at(1), "token revoked".into());
    c.control_plane_failed(at(2), "connection reset".into());
    let cp = &c.status().control_plane;
    assert_eq!(cp.state, ControlPlaneState::Unauthorized);
    assert!(cp.reason.as_deref().unwrap().contains("token revoked"));
    assert_eq!(cp.last_error.as_deref(), Some("connection reset"));
    c.control_plane_ok(at(3));
    assert_eq!(c.status().control_plane.state, ControlPlaneState::Connected);
}

#[test]
fn config_redis_and_refusals_are_recorded() {
    let mut c = board();
    assert_eq!(c.status().redis.state, RedisState::Disconnected);
    c.redis_observed(false, Some("connection refused".into()));
    c.redis_observed(true, None);
    assert_eq!(c.status().redis.state, RedisState::Connected);
    c.config_applied(AppliedConfig {
        source: ConfigSource::Backup,
        revision: 7,
        hash: "ab".into(),
        applied_at: at(0),
    });
    assert!(c.status().ready());
    c.snapshot_refused(Refusal {
        revision: 8,
        hash: "cd".into(),
        reason: "bad template".into(),
        at: at(1),
    });
    assert_eq!(c.status().refusals, 1);
    assert_eq!(c.status().config.as_ref().unwrap().revision, 7);
    let offline = Connectivity::new(
        true,
        false,
        None,
        TimeDelta::hours(48),
        TimeDelta::seconds(1),
    );
    assert_eq!(
        offline.status().control_plane.state,
        ControlPlaneState::Offline
    );
    assert_eq!(offline.status().redis.state, RedisState::None);
}

#[test]
fn a_confirmation_changes_the_source_of_the_config_served_only() {
    let mut c = board();
    c.config_applied(AppliedConfig {
        source: ConfigSource::Backup,
        revision: 7,
        hash: "ab".into(),
        applied_at: at(0),
    });
    assert!(!c.config_confirmed(6, "ab"), "not the one served");
    assert!(!c.config_confirmed(7, "cd"), "not the one served");
    assert_eq!(
        c.status().config.as_ref().unwrap().source,
        ConfigSource::Backup
    );
    assert!(c.config_confirmed(7, "ab"));
    let config = c.status().config.as_ref().unwrap();
    assert_eq!(config.source, ConfigSource::ControlPlane);
    assert_eq!(config.applied_at, at(0), "nothing was applied again");
    assert!(!c.config_confirmed(7, "ab"), "once");
}

/// The board says "expiring" by the configured window, not by a fixed week.
#[test]
fn the_token_is_expiring_within_the_configured_window() {
    let token = crate::token::TokenInfo {
        gateway: "gw".into(),
        expiry: at(7 * 86_400),
    };
    let c = Connectivity::new(
        false,
        false,
        Some(&token),
        TimeDelta::hours(48),
        TimeDelta::seconds(30),
    );
    let t = c.status().token.as_ref().unwrap();
    assert!(!t.expiring(at(0)), "a fresh 7-day token");
    assert!(!t.expiring(at(5 * 86_400 - 1)));
    assert!(t.expiring(at(5 * 86_400)), "48 hours left");
    assert!(t.expiring(at(8 * 86_400)), "expired");
    let wide = Connectivity::new(
        false,
        false,
        Some(&token),
        TimeDelta::days(8),
        TimeDelta::seconds(30),
    );
    assert!(wide.status().token.as_ref().unwrap().expiring(at(0)));
}

#[actix::test]
async fn the_handle_follows_the_actor() {
    let (watcher, handle) = ConnectivityWatcher::new(WatcherConfig {
        offline: false,
        redis_configured: false,
        token: None,
        token_warning: TimeDelta::hours(48),
        degraded_grace: std::time::Duration::from_secs(30),
    });
    let addr = watcher.start();
    addr.send(ControlPlaneUnauthorized {
        reason: "expired".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        handle.load().control_plane.state,
        ControlPlaneState::Unauthorized
    );
    let status = addr.send(GetStatus).await.unwrap();
    assert_eq!(status, handle.load());
}

#[test]
fn readiness_says_why_not() {
    let mut c = board();
    let r = c.status().readiness(false);
    assert!(!r.ready);
    assert_eq!(
        r.reason.as_deref(),
        Some("no configuration loaded yet (control plane disconnected: not contacted yet)")
    );
    c.control_plane_ok(at(0));
    assert_eq!(
        c.status().readiness(false).reason.as_deref(),
        Some("no configuration loaded yet")
    );
    c.snapshot_refused(Refusal {
        revision: 4,
        hash: "h".into(),
        reason: "bad signature".into(),
        at: at(1),
    });
    assert_eq!(
        c.status().readiness(false).reason.as_deref(),
        Some("no configuration loaded yet: revision 4 was refused: bad signature")
    );
    c.config_applied(AppliedConfig {
        source: ConfigSource::Backup,
        revision: 3,
        hash: "g".into(),
        applied_at: at(2),
    });
    let r = c.status().readiness(false);
    assert!(r.ready && r.reason.is_none(), "{r:?}");
    let r = c.status().readiness(true);
    assert_eq!((r.ready, r.reason.as_deref()), (false, Some(DRAINING)));
}
