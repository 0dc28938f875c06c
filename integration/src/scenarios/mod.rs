//! The fault suite: a small Outpost estate on loopback under steady traffic, one fault at a
//! time, checking what users rely on (design brief §3) and measuring how long recovery takes.
//!
//! Shared by `tests/fault_suite.rs` (one `#[tokio::test]` per scenario, short faults for CI)
//! and the `reliability-report` binary (long faults, writes `docs/reliability.md`).
//!
//! # A scenario
//!
//! (The replica scenario, [`Scenario::ReplicaKilled`], runs on an estate of its own: a real
//! PostgreSQL, two control-plane replicas, three gateways; see [`replicas`].)
//!
//! 1. [`Estate::start`]: control plane, Redis, backend, site A (3 nodes sharing Redis) and site
//!    B (1 node with backup), every gateway's control-plane link and Redis link through its own
//!    [`FaultProxy`](crate::FaultProxy). Configuration generation 1 is applied, with a
//!    `rate-limit` (outage mode `local`) if this build accepts the policy.
//! 2. [`FleetLoad`]: steady load round-robin over the four nodes; failover to the next node
//!    only away from a node the scenario deliberately took down (a health-checked load
//!    balancer).
//! 3. The fault, for [`Settings::fault`], with a configuration change during or right after it.
//! 4. Measurements and checks, gathered into a [`ScenarioReport`] (a failed check is a
//!    *problem* in the report; the tests assert there are none):
//!    - no failed request (transport error or 5xx) anywhere: requests to a deliberately
//!      killed node fail over, so every failure is one a surviving node caused;
//!    - convergence: time from the control plane becoming reachable again (or from the config
//!      change) until every gateway's `/readyz` reports the latest revision; then each gateway
//!      must actually serve it, and the instances API must list every live process as
//!      connected and in sync;
//!    - rate limits enforced throughout (see [`checks::max_in_window`]): at most `calls`
//!      admissions per window across site A while Redis is up, at most the node's share per
//!      node while it is down, at most `calls` on site B;
//!    - telemetry: requests the gateways answered against what the control plane counted after
//!      a final flush; exact (analytics are in the store, each batch counted once), except
//!      where a gateway is killed (bounded loss).

pub mod checks;
pub mod estate;
pub mod load;
pub mod replicas;

use std::fmt;
use std::time::{Duration, Instant};

use crate::fault_proxy::FaultMode;
use crate::wait::scaled;

pub use estate::{Estate, KEY_HEADER, LOAD_KEY, NODE_LABELS, RateLimit, SITE_A};
pub use load::{Event, FleetLoad};

/// Environment variable with the fault duration in seconds.
pub const DURATION_ENV: &str = "OUTPOST_FAULT_DURATION_SECS";
/// Fault duration when [`DURATION_ENV`] is not set: short, for CI.
pub const DEFAULT_FAULT_SECS: u64 = 5;
/// Requests per second of the load, over all four nodes.
pub const DEFAULT_RATE: f64 = 40.0;
/// Window of the configured rate limit.
pub const RATE_LIMIT_WINDOW: Duration = Duration::from_secs(4);

/// Traffic before the fault: a baseline, warm connections, and more than one full window of
/// the rate limit counted in Redis.
const WARMUP: Duration = RATE_LIMIT_WINDOW.saturating_add(Duration::from_secs(1));
/// Traffic after recovery before the load stops.
const SETTLE: Duration = Duration::from_millis(1500);
/// What "within seconds" means for convergence (scaled by `OUTPOST_TEST_PATIENCE`).
pub const CONVERGENCE_LIMIT: Duration = Duration::from_secs(10);
/// How long the final telemetry flush may take.
const TELEMETRY_WAIT: Duration = Duration::from_secs(15);
/// After a switch to Redis-less counting, how long before the per-node share is checked.
const LOCAL_SWITCH_MARGIN: Duration = Duration::from_secs(1);
/// Redis latency added in the slow-Redis scenario (each way).
pub const REDIS_DELAY: Duration = Duration::from_millis(200);
/// Grace for a graceful stop before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a run of the suite uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How long each fault lasts.
    pub fault: Duration,
    /// Requests per second over all nodes.
    pub rate_per_sec: f64,
}

impl Settings {
    /// [`DURATION_ENV`] (default [`DEFAULT_FAULT_SECS`]) at [`DEFAULT_RATE`].
    pub fn from_env() -> Settings {
        let secs = std::env::var(DURATION_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_FAULT_SECS);
        Settings::with_fault_secs(secs)
    }

    pub fn with_fault_secs(secs: u64) -> Settings {
        Settings {
            fault: Duration::from_secs(secs),
            rate_per_sec: DEFAULT_RATE,
        }
    }

    /// The limit the estate is configured with: about half of what site A is offered (three
    /// quarters of the load), so it is hit all the time, and well above site B's share.
    pub fn rate_limit(&self) -> RateLimit {
        let offered_a = self.rate_per_sec * 0.75 * RATE_LIMIT_WINDOW.as_secs_f64();
        RateLimit {
            calls: ((offered_a / 2.0).round() as u64).max(SITE_A as u64),
            window: RATE_LIMIT_WINDOW,
        }
    }
}

/// The scenarios, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    ControlPlaneKilled,
    Partition,
    RedisKilled,
    RedisSlow,
    NodeKilled,
    RollingRestart,
    UpgradeDrill,
    ReplicaKilled,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::ControlPlaneKilled,
        Scenario::Partition,
        Scenario::RedisKilled,
        Scenario::RedisSlow,
        Scenario::NodeKilled,
        Scenario::RollingRestart,
        Scenario::UpgradeDrill,
        Scenario::ReplicaKilled,
    ];

    /// Short name: process names, `--only`.
    pub fn slug(self) -> &'static str {
        match self {
            Scenario::ControlPlaneKilled => "cp-killed",
            Scenario::Partition => "partition",
            Scenario::RedisKilled => "redis-killed",
            Scenario::RedisSlow => "redis-slow",
            Scenario::NodeKilled => "node-killed",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::UpgradeDrill => "cp-upgrade",
            Scenario::ReplicaKilled => "replica-killed",
        }
    }

    pub fn from_slug(slug: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.slug() == slug)
    }

    pub fn number(self) -> usize {
        Scenario::ALL
            .iter()
            .position(|s| *s == self)
            .map_or(0, |i| i + 1)
    }

    pub fn title(self) -> &'static str {
        match self {
            Scenario::ControlPlaneKilled => "Control plane killed, restarted",
            Scenario::Partition => "Site A partitioned from the control plane",
            Scenario::RedisKilled => "Redis killed, restarted",
            Scenario::RedisSlow => "Redis slow (+200 ms each way)",
            Scenario::NodeKilled => "One site A node killed",
            Scenario::RollingRestart => "Rolling restart of site A",
            Scenario::UpgradeDrill => "Control plane upgrade drill (copied data dir)",
            Scenario::ReplicaKilled => "Control-plane replica killed (two replicas on PostgreSQL)",
        }
    }

    /// What the scenario does, for the report.
    pub fn description(self) -> &'static str {
        match self {
            Scenario::ControlPlaneKilled => {
                "SIGKILL the control plane; while it is down, site B restarts (gracefully) and \
                 must come up from its config backup; after D the control plane restarts on \
                 the same data and ports and the config is changed at once. Convergence: from \
                 the control plane being reachable again."
            }
            Scenario::Partition => {
                "Black-hole site A's three control-plane links (connections hang, nothing is \
                 refused) for D; the config changes half-way: site B (not partitioned) must \
                 apply it, site A must not see it and must show as stale in the instances API; \
                 then heal. Convergence: from the heal."
            }
            Scenario::RedisKilled => {
                "SIGKILL Redis for D (rate limits fall back to the `local` outage mode: each \
                 site A node enforces ceil(limit/3)); the config changes half-way (config \
                 sync does not depend on Redis); Redis restarts empty on the same port and \
                 shared counting must resume. Convergence: from the config change."
            }
            Scenario::RedisSlow => {
                "Delay site A's Redis links by 200 ms each way for D (redis.timeout_ms = 50: \
                 calls time out and fall back locally, requests must not fail); the config \
                 changes half-way. Convergence: from the config change."
            }
            Scenario::NodeKilled => {
                "SIGKILL node a2 (it stays down); its share of the load fails over to a3; the \
                 config changes half-way and the survivors must apply it. Convergence: from \
                 the config change, survivors only."
            }
            Scenario::RollingRestart => {
                "Restart a1, a2, a3 one by one (SIGTERM, start again, wait for /readyz and the \
                 traffic port, D/3 before the next); then change the config. Convergence: from \
                 the config change."
            }
            Scenario::UpgradeDrill => {
                "Stop the control plane (SIGTERM), copy its data directory, and after D start \
                 it on the copy with the same ports (what an upgrade or a move to a new host \
                 does); the revision must be preserved and every gateway must resync with its \
                 existing token; then change the config. Convergence: from the control plane \
                 being reachable again."
            }
            Scenario::ReplicaKilled => {
                "Its own estate (see `scenarios::replicas`): two control-plane replicas on one \
                 PostgreSQL, three gateways with `control_plane.url = \"A,B\"`, no Redis. \
                 SIGKILL replica A, which every gateway uses, and at once apply a change \
                 through B; A restarts after D and takes a change itself; at the end the \
                 gateways stop and both replicas restart, and must still list every instance. \
                 Convergence: from the commit on B returning."
            }
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}. {}", self.number(), self.title())
    }
}

/// How the telemetry comparison was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryRule {
    /// Counted == answered.
    Exact,
    /// A process was SIGKILLed: what it answered since its last flush may be lost, at most
    /// this many requests.
    AtMostLost(u64),
}

impl fmt::Display for TelemetryRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TelemetryRule::Exact => write!(f, "exact"),
            TelemetryRule::AtMostLost(n) => write!(f, "loss ≤ {n} (SIGKILL)"),
        }
    }
}

/// What one scenario measured, and every expectation it did not meet.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    /// How long the fault actually lasted.
    pub fault: Duration,
    /// Logical requests sent by the load (a failed-over request counts once).
    pub sent: u64,
    /// 2xx answers.
    pub succeeded: u64,
    /// Transport errors and 5xx answers.
    pub failed: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// Other answers (neither 2xx, 429 nor 5xx): none expected.
    pub other: u64,
    /// Attempts that went to a node deliberately down and were retried on the next node.
    pub failovers: u64,
    pub convergence: Option<Duration>,
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub latency_max: Duration,
    /// Requests the gateways answered (load and probes).
    pub answered: u64,
    /// Requests the control plane counted in its telemetry.
    pub telemetry: Option<u64>,
    pub telemetry_rule: TelemetryRule,
    /// `None` when this build refuses the `rate-limit` policy (checks skipped).
    pub rate_limit: Option<RateLimit>,
    /// Most admissions seen in one window across site A while Redis was up.
    pub max_shared_window: Option<u64>,
    /// Most admissions seen in one window on one site A node while Redis was not usable.
    pub max_local_window: Option<u64>,
    pub notes: Vec<String>,
    pub problems: Vec<String>,
    /// The processes' last lines, when there are problems.
    pub diagnostics: String,
}

impl ScenarioReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// A report for a scenario that could not run to the end.
    pub fn crashed(scenario: Scenario, message: String) -> ScenarioReport {
        ScenarioReport {
            scenario,
            fault: Duration::ZERO,
            sent: 0,
            succeeded: 0,
            failed: 0,
            rate_limited: 0,
            other: 0,
            failovers: 0,
            convergence: None,
            latency_p50: Duration::ZERO,
            latency_p99: Duration::ZERO,
            latency_max: Duration::ZERO,
            answered: 0,
            telemetry: None,
            telemetry_rule: TelemetryRule::Exact,
            rate_limit: None,
            max_shared_window: None,
            max_local_window: None,
            notes: Vec::new(),
            problems: vec![format!("the scenario did not complete: {message}")],
            diagnostics: String::new(),
        }
    }

    /// Panics with the whole report if any expectation was not met.
    pub fn assert_passed(&self) {
        assert!(
            self.passed(),
            "{self}\n{}\nscenario {} failed: {}",
            self.diagnostics,
            self.scenario,
            self.problems.join("; ")
        );
    }
}

impl fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: fault {:.1}s, sent {}, ok {}, failed {}, 429 {}, other {}, failovers {}, \
             convergence {}, latency p50 {} ms p99 {} ms max {} ms, telemetry {}/{} ({})",
            self.scenario,
            self.fault.as_secs_f64(),
            self.sent,
            self.succeeded,
            self.failed,
            self.rate_limited,
            self.other,
            self.failovers,
            self.convergence
                .map_or("-".to_owned(), |d| format!("{:.2}s", d.as_secs_f64())),
            self.latency_p50.as_millis(),
            self.latency_p99.as_millis(),
            self.latency_max.as_millis(),
            self.telemetry.map_or("?".to_owned(), |t| t.to_string()),
            self.answered,
            self.telemetry_rule,
        )?;
        match self.rate_limit {
            Some(l) => writeln!(
                f,
                "  rate limit {}/{}s (local share {}): max admitted per window shared {} local {}",
                l.calls,
                l.window.as_secs(),
                l.share(),
                self.max_shared_window
                    .map_or("-".to_owned(), |n| n.to_string()),
                self.max_local_window
                    .map_or("-".to_owned(), |n| n.to_string()),
            )?,
            None if self.scenario == Scenario::ReplicaKilled => {
                writeln!(f, "  rate limit: not part of this scenario")?
            }
            None => writeln!(
                f,
                "  rate limit: not configured (policy refused by this build)"
            )?,
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        for p in &self.problems {
            writeln!(f, "  PROBLEM: {p}")?;
        }
        Ok(())
    }
}

/// What a scenario body records for the checks that follow.
struct Run {
    fault_start: Duration,
    fault_end: Duration,
    convergence: Option<Duration>,
    /// Nodes alive at the end.
    live: Vec<usize>,
    /// Redis not usable for counting: shared-window checks skip this interval (load clock).
    redis_outage: Option<(Duration, Duration)>,
    /// Per-node share checks apply inside this interval (load clock).
    local_counting: Option<(Duration, Duration)>,
    /// Restarts of node (index, at): its in-process counters start over.
    restarts: Vec<(usize, Duration)>,
    /// A node SIGKILLed (index, at).
    killed: Option<(usize, Duration)>,
    /// Site A's Redis-less decisions (see [`site_a_fallbacks`]) when the fault started, and
    /// when shared counting had resumed after a Redis outage.
    fallbacks_at_fault: u64,
    fallbacks_after_outage: u64,
    /// Redis-less decisions of site A processes that are gone (read just before they went).
    fallbacks_retired: u64,
    notes: Vec<String>,
    problems: Vec<String>,
}

impl Run {
    fn new(nodes: usize) -> Run {
        Run {
            fault_start: Duration::ZERO,
            fault_end: Duration::ZERO,
            convergence: None,
            live: (0..nodes).collect(),
            redis_outage: None,
            local_counting: None,
            restarts: Vec::new(),
            killed: None,
            fallbacks_at_fault: 0,
            fallbacks_after_outage: 0,
            fallbacks_retired: 0,
            notes: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    fn problem(&mut self, s: impl Into<String>) {
        self.problems.push(s.into());
    }
}

/// Runs one scenario on a fresh estate.
pub async fn run(scenario: Scenario, settings: &Settings) -> ScenarioReport {
    if scenario == Scenario::ReplicaKilled {
        return replicas::run(settings).await;
    }
    let mut estate = Estate::start(scenario, settings.rate_limit()).await;
    let mut run = Run::new(estate.nodes.len());
    if estate.rate_limit.is_none() {
        run.note(
            "this build refuses the `rate-limit` policy (HTTP 400 or 409 on apply): configured \
             without it, rate-limit assertions skipped",
        );
    }
    let bases = estate.nodes.iter().map(estate::Node::base_url).collect();
    let load = FleetLoad::start(
        estate.client.clone(),
        bases,
        (KEY_HEADER, LOAD_KEY),
        settings.rate_per_sec,
        settings.fault * 3 + Duration::from_secs(300),
    );
    tokio::time::sleep(WARMUP).await;
    run.fallbacks_at_fault = site_a_fallbacks(&estate, &run).await;
    match scenario {
        Scenario::ControlPlaneKilled => {
            control_plane_killed(&mut estate, &load, settings, &mut run).await
        }
        Scenario::Partition => partition(&mut estate, &load, settings, &mut run).await,
        Scenario::RedisKilled => redis_fault(&mut estate, &load, settings, &mut run, false).await,
        Scenario::RedisSlow => redis_fault(&mut estate, &load, settings, &mut run, true).await,
        Scenario::NodeKilled => node_killed(&mut estate, &load, settings, &mut run).await,
        Scenario::RollingRestart => rolling_restart(&mut estate, &load, settings, &mut run).await,
        Scenario::UpgradeDrill => upgrade_drill(&mut estate, &load, settings, &mut run).await,
        Scenario::ReplicaKilled => unreachable!("runs on its own estate, dispatched above"),
    }
    tokio::time::sleep(SETTLE).await;
    let events = load.stop().await;
    finish(&mut estate, events, run).await
}

// === the scenarios ===

async fn control_plane_killed(e: &mut Estate, load: &FleetLoad, s: &Settings, run: &mut Run) {
    let b = SITE_A;
    cut_off_control_plane(e).await;
    let start = Instant::now();
    run.fault_start = load.at(start);
    e.cp.kill();

    // While the control plane is down, site B restarts: only its backup can bring it up.
    tokio::time::sleep(s.fault / 3).await;
    restart_node(e, load, run, b).await;
    match e.readyz(b).await {
        Some(v) if v["config"]["source"] == "backup" => run.note(format!(
            "b1 restarted during the outage and served from its backup (revision {})",
            v["config"]["revision"]
        )),
        other => run.problem(format!(
            "b1 restarted while the control plane was down but /readyz does not say it serves \
             the backup: {other:?}"
        )),
    }
    tokio::time::sleep_until((start + s.fault).into()).await;
    check_fail_static(e, run, &[0, 1, 2, 3]).await;

    let data = e.cp_data.clone();
    e.start_control_plane_on(&data).await;
    let reachable = Instant::now();
    restore_control_plane_links(e);
    run.fault_end = load.at(reachable);
    let revision = e.change_config().await;
    converge(e, run, revision, reachable).await;
}

async fn partition(e: &mut Estate, load: &FleetLoad, s: &Settings, run: &mut Run) {
    let site_a: Vec<usize> = e.site_a().collect();
    let start = Instant::now();
    run.fault_start = load.at(start);
    for &i in &site_a {
        e.nodes[i].cp_link.set_mode(FaultMode::BlackHole);
    }
    tokio::time::sleep(s.fault / 2).await;

    let revision = e.change_config().await;
    let applied = Instant::now();
    match e
        .wait_converged(&[SITE_A], revision, applied, scaled(CONVERGENCE_LIMIT))
        .await
    {
        Ok(d) => run.note(format!(
            "during the partition, b1 (not partitioned) applied the change in {:.2}s",
            d.as_secs_f64()
        )),
        Err(err) => run.problem(format!(
            "site B did not get the change during the partition: {err}"
        )),
    }
    for &i in &site_a {
        let applied = e
            .readyz(i)
            .await
            .and_then(|v| v["config"]["revision"].as_u64());
        if applied.is_some_and(|r| r >= revision) {
            run.problem(format!(
                "{} applied revision {revision} through a black-holed link: the partition did \
                 not hold",
                e.nodes[i].label
            ));
        }
    }
    // The control plane must show site A's instances as no longer connected.
    let needed = Duration::from_secs(estate::CP_STALE_AFTER_SECS + 2);
    if s.fault >= needed {
        let deadline = start + s.fault;
        let mut seen = false;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last = e.instances("site-a").await;
            let live_ids = live_instance_ids(e, &site_a).await;
            let states: Vec<&serde_json::Value> = last
                .iter()
                .filter(|r| {
                    r["instance-id"]
                        .as_str()
                        .is_some_and(|id| live_ids.iter().any(|l| l == id))
                })
                .map(|r| &r["connection"])
                .collect();
            if states.len() == site_a.len() && states.iter().all(|c| *c != "connected") {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if seen {
            run.note("the instances API showed site A's instances as stale during the partition");
        } else {
            run.problem(format!(
                "the instances API never showed all of site A as stale/disconnected during the \
                 partition: {last:?}"
            ));
        }
    }
    tokio::time::sleep_until((start + s.fault).into()).await;
    check_fail_static(e, run, &site_a).await;

    for &i in &site_a {
        e.nodes[i].cp_link.set_mode(FaultMode::Pass);
    }
    let healed = Instant::now();
    run.fault_end = load.at(healed);
    converge(e, run, revision, healed).await;
}

async fn redis_fault(e: &mut Estate, load: &FleetLoad, s: &Settings, run: &mut Run, slow: bool) {
    let site_a: Vec<usize> = e.site_a().collect();
    let start = Instant::now();
    run.fault_start = load.at(start);
    if slow {
        for &i in &site_a {
            if let Some(link) = &e.nodes[i].redis_link {
                link.set_mode(FaultMode::Delay(REDIS_DELAY));
            }
        }
    } else {
        e.redis.stop();
    }
    let disconnected = e
        .wait_readyz(
            &site_a,
            "redis disconnected in /readyz",
            scaled(Duration::from_secs(5)),
            |v| v["redis"]["state"] == "disconnected",
        )
        .await;
    match disconnected {
        Ok(d) => run.note(format!(
            "site A reported Redis disconnected after {:.2}s",
            d.as_secs_f64()
        )),
        Err(err) => run.problem(err),
    }
    tokio::time::sleep_until((start + s.fault / 2).into()).await;
    let revision = e.change_config().await;
    converge(e, run, revision, Instant::now()).await;
    tokio::time::sleep_until((start + s.fault).into()).await;
    check_fail_static(e, run, &site_a).await;
    if e.rate_limit.is_some() {
        for &i in &site_a {
            let fallbacks = metric_value(
                &e.metrics(i).await,
                "outpost_redis_fallback_total{mode=\"local\"}",
            );
            if fallbacks.unwrap_or(0.0) <= 0.0 {
                run.problem(format!(
                    "{}: no `local` fallback counted in /metrics during the Redis outage",
                    e.nodes[i].label
                ));
            }
        }
    }

    if slow {
        for &i in &site_a {
            if let Some(link) = &e.nodes[i].redis_link {
                link.set_mode(FaultMode::Pass);
            }
        }
    } else {
        e.redis.restart().await;
    }
    let back = Instant::now();
    run.fault_end = load.at(back);
    run.local_counting = Some((run.fault_start + LOCAL_SWITCH_MARGIN, run.fault_end));
    let reconnect = e
        .wait_readyz(
            &site_a,
            "redis connected in /readyz",
            scaled(Duration::from_secs(10)),
            |v| v["redis"]["state"] == "connected",
        )
        .await;
    let reconnected = match reconnect {
        Ok(d) => {
            run.note(format!(
                "site A reported Redis connected again {:.2}s after it was back",
                d.as_secs_f64()
            ));
            d
        }
        Err(err) => {
            run.problem(err);
            scaled(Duration::from_secs(10))
        }
    };
    run.redis_outage = Some((
        run.fault_start,
        run.fault_end + reconnected + Duration::from_secs(1),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.fallbacks_after_outage = site_a_fallbacks(e, run).await;
    if e.rate_limit.is_some() {
        // Shared counting resumes: the counters are back in Redis.
        let port = e.redis_addr().port();
        let deadline = Instant::now() + scaled(Duration::from_secs(5));
        let found = loop {
            let keys = crate::redis::try_redis_command(port, &["KEYS", "outpost:rl:*"]).await;
            match keys {
                Ok(k) if !k.is_empty() && k != "(nil)" => break Ok(()),
                Ok(_) if Instant::now() >= deadline => {
                    break Err("no rate-limit counter in Redis after 5 s".to_owned());
                }
                Err(err) if Instant::now() >= deadline => break Err(err.to_string()),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        if let Err(err) = found {
            run.problem(format!(
                "shared counting did not resume after the outage: {err}"
            ));
        }
    }
    // More than a full window of shared counting after the outage, for the window checks.
    tokio::time::sleep(RATE_LIMIT_WINDOW + Duration::from_secs(1)).await;
    if slow {
        let during: Vec<Duration> = load
            .snapshot()
            .iter()
            .filter(|ev| ev.node < SITE_A && ev.sent >= run.fault_start && ev.done <= run.fault_end)
            .map(Event::latency)
            .collect();
        run.note(format!(
            "site A latency while Redis was slow: p50 {} ms, p99 {} ms, max {} ms",
            checks::percentile(&during, 50.0).as_millis(),
            checks::percentile(&during, 99.0).as_millis(),
            checks::percentile(&during, 100.0).as_millis()
        ));
    }
}

async fn node_killed(e: &mut Estate, load: &FleetLoad, s: &Settings, run: &mut Run) {
    let victim = 1;
    load.set_down(victim, true);
    let start = Instant::now();
    run.fault_start = load.at(start);
    run.fallbacks_retired += e.redis_fallbacks(victim).await.0;
    e.nodes[victim].gateway.process.kill();
    run.killed = Some((victim, run.fault_start));
    run.live.retain(|&i| i != victim);

    tokio::time::sleep(s.fault / 2).await;
    let revision = e.change_config().await;
    converge(e, run, revision, Instant::now()).await;
    tokio::time::sleep_until((start + s.fault).into()).await;
    run.fault_end = load.elapsed();
}

async fn rolling_restart(e: &mut Estate, load: &FleetLoad, s: &Settings, run: &mut Run) {
    let start = Instant::now();
    run.fault_start = load.at(start);
    for i in e.site_a() {
        let took = restart_node(e, load, run, i).await;
        run.note(format!(
            "{} restarted (SIGTERM to ready) in {:.2}s",
            e.nodes[i].label,
            took.as_secs_f64()
        ));
        tokio::time::sleep(s.fault / 3).await;
    }
    run.fault_end = load.elapsed();
    let revision = e.change_config().await;
    converge(e, run, revision, Instant::now()).await;
}

async fn upgrade_drill(e: &mut Estate, load: &FleetLoad, s: &Settings, run: &mut Run) {
    let before = e.cp.revision().await;
    cut_off_control_plane(e).await;
    let start = Instant::now();
    run.fault_start = load.at(start);
    let status = e.cp.stop_graceful(STOP_GRACE).await;
    if !status.success() {
        run.problem(format!(
            "the control plane did not stop cleanly on SIGTERM within {STOP_GRACE:?}: {status}"
        ));
    }
    let copy = e.temp_dir("outpost-fault-cp-copy-").join("data");
    match estate::copy_dir(&e.cp_data, &copy) {
        Ok(bytes) => run.note(format!("copied the data directory ({bytes} bytes)")),
        Err(err) => run.problem(format!("copying the data directory: {err}")),
    }
    tokio::time::sleep_until((start + s.fault).into()).await;
    check_fail_static(e, run, &[0, 1, 2, 3]).await;

    e.start_control_plane_on(&copy).await;
    let reachable = Instant::now();
    restore_control_plane_links(e);
    run.fault_end = load.at(reachable);
    let after = e.cp.revision().await;
    if after != before {
        run.problem(format!(
            "the control plane started on the copy at revision {after}, not {before}"
        ));
    }
    let revision = e.change_config().await;
    converge(e, run, revision, reachable).await;
}

// === steps shared by the scenarios ===

/// Every gateway's control-plane link refuses from now on (as it will once the process is
/// gone). The analytics are in the store: the restarted control plane has every batch it
/// acknowledged, and a batch whose answer the cut lost is retried and counted once.
async fn cut_off_control_plane(e: &mut Estate) {
    for n in &e.nodes {
        n.cp_link.set_mode(FaultMode::Refuse);
    }
}

fn restore_control_plane_links(e: &Estate) {
    for n in &e.nodes {
        n.cp_link.set_mode(FaultMode::Pass);
    }
}

/// Fail static: every node in `nodes` still ready (200) and serving, while its control plane
/// or Redis is away.
async fn check_fail_static(e: &mut Estate, run: &mut Run, nodes: &[usize]) {
    for &i in nodes {
        match e.readyz(i).await {
            Some(v) if v["ready"] == true => {}
            other => run.problem(format!(
                "{} not ready during the fault (fail static): {other:?}",
                e.nodes[i].label
            )),
        }
    }
}

/// Graceful restart of node `i` with the load balancer told first; returns how long the node
/// was out.
async fn restart_node(e: &mut Estate, load: &FleetLoad, run: &mut Run, i: usize) -> Duration {
    load.set_down(i, true);
    let start = Instant::now();
    if i < SITE_A {
        run.fallbacks_retired += e.redis_fallbacks(i).await.0;
    }
    let status = e.nodes[i].gateway.stop_graceful(STOP_GRACE).await;
    if !status.success() {
        run.problem(format!(
            "{} did not stop cleanly on SIGTERM within {STOP_GRACE:?}: {status}",
            e.nodes[i].label
        ));
    }
    e.nodes[i].gateway.respawn();
    e.nodes[i].gateway.wait_ready().await;
    // A load balancer that trusts /readyz sends traffic now: the traffic port must accept.
    let traffic = std::net::SocketAddr::from(([127, 0, 0, 1], e.nodes[i].gateway.traffic_port));
    if tokio::net::TcpStream::connect(traffic).await.is_err() {
        run.problem(format!(
            "{}: /readyz answered 200 before the traffic port accepted connections",
            e.nodes[i].label
        ));
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        while tokio::net::TcpStream::connect(traffic).await.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    load.set_down(i, false);
    run.restarts.push((i, load.elapsed()));
    start.elapsed()
}

/// Waits for every live node to apply `revision` (timed from `from`), then checks they serve
/// it.
async fn converge(e: &mut Estate, run: &mut Run, revision: u64, from: Instant) {
    let live = run.live.clone();
    match e
        .wait_converged(&live, revision, from, scaled(CONVERGENCE_LIMIT))
        .await
    {
        Ok(d) => run.convergence = Some(d),
        Err(err) => run.problem(format!("convergence: {err}")),
    }
    if let Err(err) = e.verify_serving_current(&live).await {
        run.problem(err);
    }
}

/// Rate-limit decisions site A took without Redis so far, in every process it ran.
async fn site_a_fallbacks(e: &Estate, run: &Run) -> u64 {
    let mut total = run.fallbacks_retired;
    for i in e.site_a() {
        if run.live.contains(&i) {
            total += e.redis_fallbacks(i).await.0;
        }
    }
    total
}

async fn live_instance_ids(e: &Estate, nodes: &[usize]) -> Vec<String> {
    let mut ids = Vec::new();
    for &i in nodes {
        if let Some(id) = e
            .readyz(i)
            .await
            .and_then(|v| v["instance_id"].as_str().map(str::to_owned))
        {
            ids.push(id);
        }
    }
    ids
}

/// The value of the Prometheus sample `name` (with its labels, as rendered).
fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.trim().parse().ok()
    })
}

// === after the load ===

async fn finish(e: &mut Estate, events: Vec<Event>, mut run: Run) -> ScenarioReport {
    let sent = events.len() as u64;
    let count = |f: &dyn Fn(&Event) -> bool| events.iter().filter(|ev| f(ev)).count() as u64;
    let succeeded = count(&Event::admitted);
    let failed = count(&Event::failed);
    let rate_limited = count(&|ev| ev.status() == Some(429));
    let other = count(&|ev| {
        ev.status()
            .is_some_and(|s| !(200..300).contains(&s) && s != 429 && s < 500)
    });
    let failovers: u64 = events.iter().map(|ev| u64::from(ev.failovers)).sum();
    let latencies: Vec<Duration> = events
        .iter()
        .filter(|ev| ev.outcome.is_ok())
        .map(Event::latency)
        .collect();

    if failed > 0 {
        let mut by_node: std::collections::BTreeMap<String, u64> = Default::default();
        for ev in events.iter().filter(|ev| ev.failed()) {
            let what = match ev.outcome {
                Ok(s) => s.to_string(),
                Err(kind) => kind.to_owned(),
            };
            *by_node
                .entry(format!("{} {what}", NODE_LABELS[ev.node]))
                .or_default() += 1;
        }
        let first: Vec<String> = events
            .iter()
            .filter(|ev| ev.failed())
            .take(5)
            .map(|ev| {
                format!(
                    "{} at {:.2}s: {:?}",
                    NODE_LABELS[ev.node],
                    ev.sent.as_secs_f64(),
                    ev.outcome
                )
            })
            .collect();
        // What the gateways said about their failed backend calls (logged at debug).
        let mut reasons = Vec::new();
        for (i, label) in NODE_LABELS.iter().enumerate() {
            if events.iter().any(|ev| ev.node == i && ev.failed()) {
                for line in e.log_lines(i, "backend call failed", 3) {
                    reasons.push(format!("{label}: {line}"));
                }
            }
        }
        run.problem(format!(
            "{failed} failed requests (transport errors or 5xx): {by_node:?}; first: {}{}",
            first.join(", "),
            if reasons.is_empty() {
                String::new()
            } else {
                format!("; gateway logs: {}", reasons.join(" | "))
            }
        ));
    }
    let mut slowest: Vec<&Event> = events
        .iter()
        .filter(|ev| ev.outcome.is_ok() && ev.latency() > Duration::from_secs(1))
        .collect();
    if !slowest.is_empty() {
        slowest.sort_by_key(|ev| std::cmp::Reverse(ev.latency()));
        let listed: Vec<String> = slowest
            .iter()
            .take(5)
            .map(|ev| {
                format!(
                    "{} sent at {:.2}s took {} ms",
                    NODE_LABELS[ev.node],
                    ev.sent.as_secs_f64(),
                    ev.latency().as_millis()
                )
            })
            .collect();
        run.note(format!(
            "{} requests took over 1 s (fault from {:.2}s to {:.2}s); slowest: {}",
            slowest.len(),
            run.fault_start.as_secs_f64(),
            run.fault_end.as_secs_f64(),
            listed.join(", ")
        ));
    }
    if other > 0 {
        let mut statuses: std::collections::BTreeMap<u16, u64> = Default::default();
        for ev in &events {
            if let Some(s) = ev.status()
                && !(200..300).contains(&s)
                && s != 429
                && s < 500
            {
                *statuses.entry(s).or_default() += 1;
            }
        }
        run.problem(format!("unexpected answers: {statuses:?}"));
    }

    // Per-instance status as the control plane shows it.
    let live = run.live.clone();
    let revision = e.cp.revision().await;
    if let Err(err) = e
        .wait_instances_in_sync(&live, revision, scaled(CONVERGENCE_LIMIT))
        .await
    {
        run.problem(err);
    }

    // How often site A counted without Redis, and why (each live process's totals).
    let mut fallbacks = Vec::new();
    for &i in live.iter().filter(|&&i| i < SITE_A) {
        let (fallback, errors) = e.redis_fallbacks(i).await;
        if fallback > 0 || errors > 0 {
            fallbacks.push(format!(
                "{} {fallback} decisions / {errors} failed Redis calls",
                e.nodes[i].label
            ));
        }
    }
    if !fallbacks.is_empty() {
        run.note(format!(
            "rate-limit decisions taken without Redis (/metrics of the live processes): {}",
            fallbacks.join(", ")
        ));
    }
    let fallbacks_at_end = site_a_fallbacks(e, &run).await;

    // Rate limits.
    let (max_shared_window, max_local_window) = match e.rate_limit {
        Some(limit) => {
            let (shared, local) = check_rate_limits(&events, limit, fallbacks_at_end, &mut run);
            (Some(shared), local)
        }
        None => (None, None),
    };

    // Telemetry, after a final flush.
    let answered = events.iter().filter(|ev| ev.outcome.is_ok()).count() as u64 + e.probe_responses;
    let (telemetry, telemetry_rule) = check_telemetry(e, &events, answered, &mut run).await;

    let diagnostics = if run.problems.is_empty() {
        String::new()
    } else {
        e.diagnostics()
    };
    ScenarioReport {
        scenario: e.scenario,
        fault: run.fault_end.saturating_sub(run.fault_start),
        sent,
        succeeded,
        failed,
        rate_limited,
        other,
        failovers,
        convergence: run.convergence,
        latency_p50: checks::percentile(&latencies, 50.0),
        latency_p99: checks::percentile(&latencies, 99.0),
        latency_max: checks::percentile(&latencies, 100.0),
        answered,
        telemetry,
        telemetry_rule,
        rate_limit: e.rate_limit,
        max_shared_window,
        max_local_window,
        notes: run.notes,
        problems: run.problems,
        diagnostics,
    }
}

/// The sliding-window checks; returns the most admissions seen in one window across site A
/// with Redis up, and on one node with Redis down (if there was an outage).
fn check_rate_limits(
    events: &[Event],
    limit: RateLimit,
    fallbacks_at_end: u64,
    run: &mut Run,
) -> (u64, Option<u64>) {
    let w = limit.window;
    // Site A while Redis counts: before and after any outage, never across it. A decision a
    // node takes without Redis (a call that timed out marks Redis unreachable until the next
    // probe, which the outage mode treats as an outage) is not in the shared count: each one
    // can add one admission to a window, so the bound of a segment is the limit plus the
    // Redis-less decisions taken in it (zero when Redis answered in time throughout).
    let site_a: Vec<&Event> = events.iter().filter(|ev| ev.node < SITE_A).collect();
    let segments: Vec<(&str, Vec<&Event>, u64)> = match run.redis_outage {
        Some((from, to)) => vec![
            (
                "before the outage",
                site_a.iter().copied().filter(|ev| ev.done < from).collect(),
                run.fallbacks_at_fault,
            ),
            (
                "after the outage",
                site_a.iter().copied().filter(|ev| ev.sent > to).collect(),
                fallbacks_at_end.saturating_sub(run.fallbacks_after_outage),
            ),
        ],
        None => vec![("", site_a.clone(), fallbacks_at_end)],
    };
    let mut shared = 0;
    for (phase, segment, fallbacks) in &segments {
        let (n, at) = checks::max_in_window(segment.iter().copied(), w);
        let bound = limit.calls + fallbacks;
        if n > bound {
            run.problem(format!(
                "site A admitted {n} requests within {}s from {:.2}s with Redis up{}: limit {}{}",
                w.as_secs(),
                at.as_secs_f64(),
                if phase.is_empty() {
                    String::new()
                } else {
                    format!(" ({phase})")
                },
                limit.calls,
                if *fallbacks > 0 {
                    format!(" + {fallbacks} decisions taken without Redis")
                } else {
                    String::new()
                }
            ));
        } else if n > limit.calls {
            run.note(format!(
                "site A admitted {n} requests within {}s from {:.2}s: over the limit of {} \
                 because {fallbacks} decisions were taken without Redis after Redis calls timed \
                 out (redis.timeout_ms = {}); within the documented bound",
                w.as_secs(),
                at.as_secs_f64(),
                limit.calls,
                estate::REDIS_TIMEOUT_MS
            ));
        }
        shared = shared.max(n);
    }

    // Site B counts in process: exact, but starts over when it restarts.
    let b = SITE_A;
    let mut cuts: Vec<Duration> = run
        .restarts
        .iter()
        .filter(|(i, _)| *i == b)
        .map(|(_, at)| *at)
        .collect();
    cuts.push(Duration::MAX);
    let mut from = Duration::ZERO;
    for cut in cuts {
        let segment = events
            .iter()
            .filter(|ev| ev.node == b && ev.sent >= from && ev.done < cut);
        let (n, at) = checks::max_in_window(segment, w);
        if n > limit.calls {
            run.problem(format!(
                "site B admitted {n} requests within {}s from {:.2}s: limit {}",
                w.as_secs(),
                at.as_secs_f64(),
                limit.calls
            ));
        }
        from = cut;
    }

    // Without Redis, each node of site A enforces its share.
    let mut local = None;
    if let Some((from, to)) = run.local_counting {
        let mut most = 0;
        for (node, label) in NODE_LABELS.iter().enumerate().take(SITE_A) {
            let segment = events
                .iter()
                .filter(|ev| ev.node == node && ev.sent >= from && ev.done <= to);
            let (n, at) = checks::max_in_window(segment, w);
            if n > limit.share() {
                run.problem(format!(
                    "{} admitted {n} requests within {}s from {:.2}s without Redis: its share \
                     is {}",
                    label,
                    w.as_secs(),
                    at.as_secs_f64(),
                    limit.share()
                ));
            }
            most = most.max(n);
        }
        local = Some(most);
        let limited = events
            .iter()
            .filter(|ev| {
                ev.node < SITE_A
                    && ev.status() == Some(429)
                    && ev.sent >= run.fault_start
                    && ev.done <= run.fault_end
            })
            .count();
        // Offered per node in a window is twice its share: once the fault has lasted a window,
        // some requests must have been refused locally.
        if to.saturating_sub(from) >= w && limited == 0 {
            run.problem("no request was rate limited on site A during the Redis outage");
        }
        run.note(format!(
            "{limited} requests rate limited on site A while Redis was not usable"
        ));
    }

    if !events.iter().any(|ev| ev.status() == Some(429)) {
        run.problem(format!(
            "no request was rate limited although site A is offered about twice its limit of {} \
             per {}s",
            limit.calls,
            w.as_secs()
        ));
    }
    (shared, local)
}

/// Waits for the final flush and compares what the control plane counted with what the
/// gateways answered.
async fn check_telemetry(
    e: &Estate,
    events: &[Event],
    answered: u64,
    run: &mut Run,
) -> (Option<u64>, TelemetryRule) {
    // Requests a node answered within this long before losing its memory may not be flushed.
    let unflushed = estate::FLUSH_INTERVAL * 2 + Duration::from_millis(500);
    let answered_by_in = |node: Option<usize>, from: Duration, to: Duration| {
        events
            .iter()
            .filter(|ev| {
                ev.outcome.is_ok()
                    && node.is_none_or(|n| ev.node == n)
                    && ev.done >= from
                    && ev.done <= to
            })
            .count() as u64
    };
    let rule = if let Some((victim, at)) = run.killed {
        let bound = answered_by_in(Some(victim), at.saturating_sub(unflushed), at);
        TelemetryRule::AtMostLost(bound)
    } else {
        TelemetryRule::Exact
    };
    let minimum = match rule {
        TelemetryRule::AtMostLost(n) => answered.saturating_sub(n),
        _ => answered,
    };

    let start = Instant::now();
    let mut counted = None;
    while start.elapsed() < scaled(TELEMETRY_WAIT) {
        counted = e.telemetry_total().await;
        if counted.is_some_and(|c| c >= minimum) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Two more flush intervals: anything still arriving would be a duplicate or a surplus.
    tokio::time::sleep(estate::FLUSH_INTERVAL * 2).await;
    if let Some(c) = e.telemetry_total().await {
        counted = Some(c);
    }
    let Some(c) = counted else {
        run.problem("the control plane's telemetry could not be read");
        return (None, rule);
    };
    let ok = match rule {
        TelemetryRule::Exact => c == answered,
        TelemetryRule::AtMostLost(n) => c <= answered && answered - c <= n,
    };
    if !ok {
        run.problem(format!(
            "telemetry: the control plane counted {c} requests, the gateways answered {answered} \
             (rule: {rule})"
        ));
    } else if c != answered {
        run.note(format!(
            "telemetry: counted {c} for {answered} answered, within the bound ({rule})"
        ));
    }
    (Some(c), rule)
}
