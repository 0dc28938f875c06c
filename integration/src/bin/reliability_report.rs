//! Runs the fault suite's scenarios one after the other and writes the reliability report.
//!
//! ```text
//! cargo run -p outpost-integration --bin reliability-report -- --duration 60 --out docs/reliability.md
//! ```
//!
//! Options: `--duration SECS` (fault length, default 60), `--rate REQ_PER_SEC` (default 40),
//! `--only SLUG[,SLUG…]` (e.g. `redis-killed`), `--out PATH` (default: print to stdout).
//! Exits non-zero when a scenario did not meet its expectations (the report is written anyway).

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use outpost_integration::scenarios::{
    self, CONVERGENCE_LIMIT, DEFAULT_RATE, REDIS_DELAY, Scenario, ScenarioReport, Settings,
};

/// Intermittent problems the suite has caught on a loaded host (kept by hand: a run on a quiet
/// host does not show them).
const KNOWN_ISSUES: &str = "\
Intermittent, seen in earlier runs of this suite while the host was loaded (other builds and \
benchmarks on the same 2 cores, requests stalling up to 5 s on every node at once), not in the \
run above:

- **`/readyz` turned 200 before the traffic port listened** (rolling restart). Fixed: the \
  gateway now reports its first configuration to the status board only after the traffic \
  listener is bound (`src/gateway/mod.rs` `serve()`); the suite keeps checking the traffic \
  port right after `/readyz` on every restart.
- **Sporadic 502 on a surviving node** (a pooled backend connection closed by the backend \
  as the gateway wrote on it). Fixed: a bodiless idempotent request that fails on the \
  connection itself is sent once more on a fresh connection \
  (`outpost_backend_resends_total`); the suite quotes the gateway's `backend call failed` \
  log lines if it happens again.
- **Shared limit exceeded within the documented bound** (up to 97 admissions in a 4 s window \
  against 60, Redis up): during host stalls Redis calls took over `redis.timeout_ms` (50 ms, \
  the default); each such call marks Redis unreachable until the next probe (about 0.5 s) and \
  the `local` outage mode then counts from zero against the node's share, so one slow reply is \
  handled as an outage, with the outage's overshoot. The check allows one admission per \
  Redis-less decision (from `/metrics`). Sites with Redis latency spikes near the timeout \
  should raise `redis.timeout_ms`.
";

struct Args {
    duration: u64,
    rate: f64,
    only: Vec<Scenario>,
    out: Option<String>,
    command: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: reliability-report [--duration SECS] [--rate REQ_PER_SEC] [--only SLUG,...] [--out PATH]\n\
         scenarios: {}",
        Scenario::ALL.map(Scenario::slug).join(", ")
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        duration: 60,
        rate: DEFAULT_RATE,
        only: Scenario::ALL.to_vec(),
        out: None,
        command: String::new(),
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    args.command = format!(
        "cargo run -p outpost-integration --bin reliability-report -- {}",
        raw.join(" ")
    );
    let mut it = raw.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--duration" => args.duration = value().parse().unwrap_or_else(|_| usage()),
            "--rate" => args.rate = value().parse().unwrap_or_else(|_| usage()),
            "--out" => args.out = Some(value()),
            "--only" => {
                args.only = value()
                    .split(',')
                    .map(|s| Scenario::from_slug(s.trim()).unwrap_or_else(|| usage()))
                    .collect();
            }
            _ => usage(),
        }
    }
    if args.duration == 0 || !args.rate.is_finite() || args.rate <= 0.0 {
        usage();
    }
    args
}

fn main() {
    let args = parse_args();
    let settings = Settings {
        fault: Duration::from_secs(args.duration),
        rate_per_sec: args.rate,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut reports = Vec::new();
    for scenario in &args.only {
        eprintln!("== {scenario} (fault {}s) ==", args.duration);
        let s = settings.clone();
        let scenario = *scenario;
        let report = runtime.block_on(async move {
            // Not `tokio::spawn`: a panicking scenario is caught here, on this task.
            let run = std::panic::AssertUnwindSafe(scenarios::run(scenario, &s));
            let outcome = tokio::select! {
                outcome = futures_util::FutureExt::catch_unwind(run) => outcome,
                // Dropping the scenario kills its processes; exiting from a signal would not.
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("interrupted: the scenario's processes were stopped");
                    std::process::exit(130);
                }
            };
            match outcome {
                Ok(report) => report,
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "panicked".to_owned());
                    ScenarioReport::crashed(scenario, message)
                }
            }
        });
        eprintln!("{report}");
        if !report.passed() {
            eprintln!("{}", report.diagnostics);
        }
        reports.push(report);
    }
    let doc = render(&args, &settings, &reports, started.elapsed());
    match &args.out {
        Some(path) => {
            std::fs::write(path, doc).unwrap_or_else(|e| panic!("writing {path}: {e}"));
            eprintln!("wrote {path}");
        }
        None => print!("{doc}"),
    }
    if reports.iter().any(|r| !r.passed()) {
        std::process::exit(1);
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn render(args: &Args, settings: &Settings, reports: &[ScenarioReport], took: Duration) -> String {
    let limit = settings.rate_limit();
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Reliability under faults\n");
    let _ = writeln!(
        w,
        "What happens to traffic, configuration, rate limits and telemetry when the pieces of an \
         Outpost estate fail, measured with real processes on loopback (design brief §3, issue #5 \
         item 4). Generated by the fault suite's report binary; do not edit by hand.\n"
    );
    let _ = writeln!(w, "```text\n{}\n```\n", args.command.trim_end());
    let _ = writeln!(
        w,
        "Finished {} on a {}-core machine ({}), fault duration D = {} s, load {} req/s, {} in total. \
         Binary under test: `{}`.\n",
        utc_now(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        git_revision(),
        args.duration,
        settings.rate_per_sec,
        secs(took),
        outpost_integration::outpost_binary()
            .strip_prefix(outpost_integration::workspace_root())
            .map_or_else(
                |_| outpost_integration::outpost_binary().display().to_string(),
                |p| p.display().to_string()
            ),
    );

    let _ = writeln!(w, "## Results\n");
    let _ = writeln!(
        w,
        "| # | Scenario | Fault | Sent | Succeeded | Failed | 429 | Failovers | Convergence | \
         Telemetry counted / answered | p99 latency | Result |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} ({}) | {} ms | {} |",
            r.scenario.number(),
            r.scenario.title(),
            secs(r.fault),
            r.sent,
            r.succeeded,
            r.failed,
            r.rate_limited,
            r.failovers,
            r.convergence
                .map_or("—".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            r.telemetry.map_or("?".to_owned(), |t| t.to_string()),
            r.answered,
            r.telemetry_rule,
            r.latency_p99.as_millis(),
            if r.passed() { "pass" } else { "**FAIL**" },
        );
    }
    let _ = writeln!(
        w,
        "\n- **Sent**: logical requests of the load (a request retried on another node counts once). \
         **Failed**: transport errors and 5xx answers, wherever they happened. **429**: answers of \
         the rate limit, which is configured to be hit (see below); they are answers, not failures.\n\
         - **Failovers**: attempts that reached a node the scenario had deliberately taken down and \
         were retried on the next node (a health-checked load balancer's retry); never counted as \
         failures, and only ever allowed for a node marked down.\n\
         - **Convergence**: from the control plane being reachable again (or from the config \
         change, see each scenario) until every gateway's `/readyz` reports the latest revision. \
         Required: within {} (each gateway must then also serve the new config, and the instances \
         API must list every live process as connected and in sync).\n\
         - **Telemetry**: requests the control plane's telemetry counted after a final flush, \
         against the requests the gateways answered (the load and the suite's probes).\n",
        secs(CONVERGENCE_LIMIT)
    );

    let _ = writeln!(w, "## Setup\n");
    let _ = writeln!(
        w,
        "```text\n\
         \x20                control plane (admin API, gateway API, SQLite data dir)\n\
         \x20                      ▲          ▲          ▲          ▲\n\
         \x20                 FaultProxy FaultProxy FaultProxy FaultProxy      one per gateway: CP link\n\
         \x20                      │          │          │          │\n\
         \x20 site A (`site-a`):  a1         a2         a3          │          same token, redis.nodes = 3\n\
         \x20                      │          │          │          │\n\
         \x20                 FaultProxy FaultProxy FaultProxy      │          one per node: Redis link\n\
         \x20                      └──────────┴─── Redis ┘          │\n\
         \x20 site B (`site-b`):                                    b1         backup enabled, in-process limits\n\
         \x20 every gateway ──► test backend (echo)\n\
         ```\n"
    );
    let _ = writeln!(
        w,
        "- Each scenario builds its own estate: one control plane, one `redis-server`, four \
         `outpost gateway` processes and an HTTP backend, every port chosen at run time. A \
         [`FaultProxy`](../integration/src/fault_proxy.rs) sits on each gateway's link to the \
         control plane (so a partition can be a black hole, not just a refusal) and on each site \
         A node's link to Redis.\n\
         - Gateways: heartbeat 1 s, long-poll wait 5 s, call timeout 2 s, backoff 100 ms → 1 s, \
         telemetry flush 1 s with a spool directory each, `redis.timeout_ms` = 50 on site A. \
         Control plane: instances stale after 3 s, disconnected after 6 s without heartbeat.\n\
         - Configuration: one API with `set-header X-Env: {{{{env}}}}` (a named value each config \
         change bumps, so the suite can see which generation a gateway *serves*, not only which \
         revision it reports) and `rate-limit: {{calls: {}, renewal-period: {}, outage: local}}` \
         per subscription.\n\
         - Load: {} req/s round-robin over a1, a2, a3, b1 with one subscription, so site A is \
         offered about {} requests per {} s window — twice its limit — and each site A node \
         twice its share ({}) when it counts alone; site B is offered less than its limit. The \
         client retries on the next node only when the node it tried is one the scenario took \
         down on purpose and marked as such just before (as a load balancer's health check would): \
         this models health-checked failover, and it means every remaining failure is one a \
         surviving node caused.\n",
        limit.calls,
        limit.window.as_secs(),
        settings.rate_per_sec,
        (settings.rate_per_sec * 0.75 * limit.window.as_secs_f64()).round(),
        limit.window.as_secs(),
        limit.share(),
    );

    let _ = writeln!(w, "## What is checked\n");
    let _ = writeln!(
        w,
        "- **No failed request** anywhere (transport error or 5xx), in every scenario.\n\
         - **Fail static**: every gateway stays ready (`/readyz` 200) while its control plane or \
         Redis is away.\n\
         - **Convergence** within {} of reconnecting, every gateway serving the new generation, \
         the instances API showing each live process connected, in sync, at the latest revision.\n\
         - **Rate limits enforced throughout**, checked on the client's record of every request \
         with a sound sliding-window count: admissions `j` with `sent_j ≥ sent_i` and \
         `done_j ≤ sent_i + W` certainly happened within one window `W` after admission `i`. \
         Across site A while Redis is up: at most {} per {} s (shared, exact), plus one per \
         decision a node took without Redis in that phase (from `outpost_redis_fallback_total` \
         in each node's `/metrics`, counted per process, read before a process stops): a Redis \
         call that exceeds `redis.timeout_ms` sends the node to its outage mode until the next \
         probe, and what it admits then is not in the shared count. On each site A node while \
         Redis is unusable: at most its share {} (the `local` outage mode). On site B: at most \
         {} (in process; its counter starts over when it restarts). Windows never straddle a \
         switch between shared and local counting: the documented worst case there is about \
         2× the limit for the window in progress (docs/rate-limiting.md). Some requests must be \
         refused (429) overall, and during a Redis outage.\n\
         - **No telemetry lost**: exact equality between what the control plane counted and what \
         the gateways answered, except where it cannot hold, and then a bound:\n\
         \x20 - a gateway SIGKILLed loses what it answered since its last flush (the flush is \
         1 s; bound: what the killed node answered in the 2.5 s before the kill). A graceful \
         stop loses nothing (memory goes to the spool, uploaded by the next process): the \
         rolling restart is held to exact equality.\n\
         \x20 - a control plane restart (or a replica killed) loses nothing and counts nothing \
         twice: analytics are in the store (`src/control_plane/telemetry.rs`), a batch is \
         acknowledged only after its commit, and its id (gateway, instance, sequence) is \
         recorded in the same transaction, so a batch whose answer the outage lost is \
         recognised when retried, on any replica. Held to exact equality.\n",
        secs(CONVERGENCE_LIMIT),
        limit.calls,
        limit.window.as_secs(),
        limit.share(),
        limit.calls,
    );

    let _ = writeln!(w, "## Scenarios\n");
    for r in reports {
        let _ = writeln!(w, "### {}\n", r.scenario);
        let _ = writeln!(w, "{}\n", r.scenario.description());
        let _ = writeln!(
            w,
            "- sent {}, succeeded {}, failed {}, 429 {}, other answers {}, failovers {}",
            r.sent, r.succeeded, r.failed, r.rate_limited, r.other, r.failovers
        );
        let _ = writeln!(
            w,
            "- latency p50 {} ms, p99 {} ms, max {} ms",
            r.latency_p50.as_millis(),
            r.latency_p99.as_millis(),
            r.latency_max.as_millis()
        );
        match r.rate_limit {
            Some(l) => {
                let _ = writeln!(
                    w,
                    "- most admissions in one {} s window: {} across site A with Redis up (limit {}){}",
                    l.window.as_secs(),
                    r.max_shared_window
                        .map_or("—".to_owned(), |n| n.to_string()),
                    l.calls,
                    r.max_local_window.map_or(String::new(), |n| format!(
                        ", {n} on one node without Redis (share {})",
                        l.share()
                    )),
                );
            }
            None => {
                let _ = writeln!(
                    w,
                    "- rate limit not configured: this build refused the `rate-limit` policy, the \
                     rate-limit assertions were skipped"
                );
            }
        }
        for n in &r.notes {
            let _ = writeln!(w, "- {n}");
        }
        for p in &r.problems {
            let _ = writeln!(w, "- **problem**: {}", p.replace('\n', " "));
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## Observations\n");
    let failing: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.scenario.to_string())
        .collect();
    if failing.is_empty() {
        let _ = writeln!(
            w,
            "- Every expectation held in every scenario: no failed request, every gateway \
             converged well within the limit, rate limits held within their bounds, no \
             telemetry lost beyond what a SIGKILL can lose."
        );
    } else {
        let _ = writeln!(
            w,
            "- Expectations **not met** in: {} (see the problems listed under each).",
            failing.join("; ")
        );
    }
    let over: Vec<(String, u64)> = reports
        .iter()
        .filter_map(|r| {
            let l = r.rate_limit?;
            let n = r.max_shared_window?;
            (n > l.calls).then(|| (r.scenario.title().to_owned(), n))
        })
        .collect();
    if !over.is_empty() {
        let _ = writeln!(
            w,
            "- With Redis up, site A sometimes admitted more than {} in a window ({}). Each time, \
             nodes had just taken decisions without Redis: a Redis call that takes longer than \
             `redis.timeout_ms` (50 ms, the default) marks Redis unreachable until the next probe \
             (about 0.5 s later), and the `local` outage mode then counts from zero against the \
             node's share. On loopback this only happens when the host stalls (this machine has \
             2 cores, runs debug builds and was shared with other work), but it means a single \
             slow Redis reply is handled as an outage, with the outage's overshoot. Sites whose \
             Redis latency has spikes near the timeout should raise `redis.timeout_ms`.",
            limit.calls,
            over.iter()
                .map(|(t, n)| format!("{t}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if reports
        .iter()
        .any(|r| r.latency_max > Duration::from_secs(1))
    {
        let _ = writeln!(
            w,
            "- Requests slower than 1 s are listed under each scenario with node and time. When \
             they hit every node at the same moment, site B included (it uses neither Redis nor \
             the faulty link), they are stalls of the host, not of a component."
        );
    }
    let _ = writeln!(w, "\n{KNOWN_ISSUES}");

    let _ = writeln!(w, "## Running it\n");
    let _ = writeln!(
        w,
        "In CI, as ordinary tests (one per scenario, in parallel, each on its own processes and \
         ports; D defaults to 5 s; the whole suite takes about a minute on 2 cores):\n\n\
         ```text\ncargo build -p outpost --bin outpost\n\
         cargo test -p outpost-integration --test fault_suite\n\
         OUTPOST_FAULT_DURATION_SECS=20 cargo test -p outpost-integration --test fault_suite redis\n```\n\n\
         This report (the scenarios one after the other; about {} per scenario plus D):\n\n\
         ```text\ncargo run -p outpost-integration --bin reliability-report -- --duration 60 --out docs/reliability.md\n```\n\n\
         Code: `integration/src/scenarios/` (estate, load, checks, scenarios), \
         `integration/tests/fault_suite.rs`, `integration/src/bin/reliability_report.rs`. The slow-Redis \
         scenario adds {} ms each way. `OUTPOST_TEST_PATIENCE` stretches every deadline on a slow \
         machine.",
        secs(Duration::from_secs(25)),
        REDIS_DELAY.as_millis(),
    );
    md
}

fn git_revision() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(outpost_integration::workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = run(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("commit {rev} with local changes")
            } else {
                format!("commit {rev}")
            }
        }
        None => "unknown commit".to_owned(),
    }
}

/// `YYYY-MM-DD HH:MM UTC` without a date library.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60
    )
}
