//! The fault suite: one test per scenario of `outpost_integration::scenarios`, each on its own
//! estate (control plane, Redis, four gateways, backend, fault proxies) on loopback, so they run
//! in parallel. The replica scenario has its own (a real PostgreSQL, two control-plane replicas,
//! three gateways; see `scenarios::replicas`).
//!
//! Faults last `OUTPOST_FAULT_DURATION_SECS` seconds (default 5, for CI). The same scenarios
//! with long faults produce `docs/reliability.md`:
//!
//! ```text
//! cargo run -p outpost-integration --bin reliability-report -- --duration 60 --out docs/reliability.md
//! ```

use outpost_integration::scenarios::{self, Scenario, Settings};

async fn check(scenario: Scenario) {
    let report = scenarios::run(scenario, &Settings::from_env()).await;
    eprintln!("{report}");
    report.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_then_restarted() {
    check(Scenario::ControlPlaneKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_a_partitioned_from_the_control_plane() {
    check(Scenario::Partition).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    check(Scenario::RedisKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_slow() {
    check(Scenario::RedisSlow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_site_a_node_killed() {
    check(Scenario::NodeKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_site_a() {
    check(Scenario::RollingRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_upgrade_drill_on_a_copied_data_dir() {
    check(Scenario::UpgradeDrill).await;
}

/// Needs PostgreSQL (`initdb`, `postgres`; `.ci/run` installs Debian's package), like the
/// other tests on a real PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_replica_killed_under_load() {
    check(Scenario::ReplicaKilled).await;
}
