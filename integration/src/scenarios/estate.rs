//! The estate every scenario runs on, and the probes the scenarios use to look at it.
//!
//! ```text
//!                  control plane (admin API, gateway API, SQLite data dir)
//!                        ▲          ▲          ▲          ▲
//!                   FaultProxy FaultProxy FaultProxy FaultProxy      one per gateway: CP link
//!                        │          │          │          │
//!   site A (`site-a`):  a1         a2         a3          │          same token, redis.nodes=3
//!                        │          │          │          │
//!                   FaultProxy FaultProxy FaultProxy      │          one per node: Redis link
//!                        └──────────┴─── Redis ┘          │
//!   site B (`site-b`):                                    b1         backup enabled,
//!                                                                    in-process limits
//!   every gateway ──► TestBackend
//! ```
//!
//! Every gateway also has its own telemetry spool directory (kept across its restarts), so a
//! graceful stop loses no telemetry.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;

use crate::backend::TestBackend;
use crate::fault_proxy::FaultProxy;
use crate::fleet::{ADMIN_TOKEN, ControlPlane, Gateway, GatewayOptions};
use crate::http::client_builder;
use crate::ports::free_port;
use crate::redis::RedisServer;
use crate::wait::scaled;

use super::Scenario;

/// Subscription key of the load (the rate limit counts per subscription).
pub const LOAD_KEY: &str = "1oad0000000000000000000000000000000000000000000000000000000000aa";
/// Subscription key of the suite's own probes (a separate counter: never rate limited).
pub const PROBE_KEY: &str = "9r0be000000000000000000000000000000000000000000000000000000000bb";
pub const KEY_HEADER: &str = "Ocp-Apim-Subscription-Key";

/// Nodes of site A; node indices `0..SITE_A` are site A, the last one is site B.
pub const SITE_A: usize = 3;
pub const NODE_LABELS: [&str; 4] = ["a1", "a2", "a3", "b1"];
/// `telemetry.flush_interval_secs` of every gateway (set by [`Gateway::spawn`]).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// `redis.timeout_ms` of site A.
pub const REDIS_TIMEOUT_MS: u64 = 50;

/// Control plane settings for the suite: instances turn stale quickly so a partition shows.
pub const CP_STALE_AFTER_SECS: u64 = 3;
pub const CP_DISCONNECTED_AFTER_SECS: u64 = 6;

/// The rate limit the estate is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub calls: u64,
    pub window: Duration,
}

impl RateLimit {
    /// What each of site A's nodes enforces alone in the `local` outage mode.
    pub fn share(&self) -> u64 {
        self.calls.div_ceil(SITE_A as u64)
    }
}

const TEMPLATE: &str = r#"
apiVersion: outpost/v1
named-values:
  - {name: env, value: "@ENV@"}
backends:
  - {name: echo, url: "@BACKEND@"}
apis:
  - name: echo
    path: echo
    backend: echo
    operations:
      - {name: get-item, method: GET, url-template: "/items/{id}"}
    policies:
      inbound:
        - base
        - set-header: {name: X-Env, value: "{{env}}"}
@RATE_LIMIT@
products:
  - {name: starter, apis: [echo]}
subscriptions:
  - {name: load, scope: {product: starter}, primary-key: "@LOAD_KEY@"}
  - {name: probe, scope: {product: starter}, primary-key: "@PROBE_KEY@"}
gateways:
  - {name: site-a, apis: [echo]}
  - {name: site-b, apis: [echo]}
"#;

/// One gateway process with its links.
pub struct Node {
    pub label: &'static str,
    pub gateway: Gateway,
    /// Its link to the control plane.
    pub cp_link: FaultProxy,
    /// Its link to Redis (site A only).
    pub redis_link: Option<FaultProxy>,
}

impl Node {
    pub fn base_url(&self) -> String {
        self.gateway.url("")
    }
}

/// A control plane, Redis, a backend and four gateways; see the [module docs](self).
pub struct Estate {
    pub scenario: Scenario,
    // Gateways go first: fields drop in order, and a gateway outliving its proxies or the
    // control plane would only log noise.
    pub nodes: Vec<Node>,
    pub cp: ControlPlane,
    /// The directory the control plane currently runs on (the copy after an upgrade drill).
    pub cp_data: PathBuf,
    pub cp_env: Vec<(String, String)>,
    pub redis: RedisServer,
    pub backend: TestBackend,
    /// `None` when this build refuses the `rate-limit` policy.
    pub rate_limit: Option<RateLimit>,
    pub client: reqwest::Client,
    /// Responses the suite's own probes got from the gateways' traffic ports (they count in
    /// the gateways' telemetry too).
    pub probe_responses: u64,
    generation: u32,
    limit: RateLimit,
    dirs: Vec<tempfile::TempDir>,
}

impl Estate {
    /// Starts everything, applies generation 1 of the configuration and waits until every
    /// gateway serves it.
    pub async fn start(scenario: Scenario, limit: RateLimit) -> Estate {
        let backend = TestBackend::start();
        let cp_dir = tempfile::Builder::new()
            .prefix("outpost-fault-cp-")
            .tempdir()
            .expect("temp dir");
        let cp_data = cp_dir.path().join("data");
        let cp_env = vec![
            (
                "OUTPOST_INSTANCES_STALE_AFTER_SECS".to_owned(),
                CP_STALE_AFTER_SECS.to_string(),
            ),
            (
                "OUTPOST_INSTANCES_DISCONNECTED_AFTER_SECS".to_owned(),
                CP_DISCONNECTED_AFTER_SECS.to_string(),
            ),
        ];
        let cp = ControlPlane::start_on_with(
            &format!("{}-cp", scenario.slug()),
            &cp_data,
            free_port(),
            free_port(),
            &cp_env,
        )
        .await;
        let client = client_builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");

        let redis = RedisServer::start().await;
        let state = tempfile::Builder::new()
            .prefix("outpost-fault-state-")
            .tempdir()
            .expect("temp dir");

        let mut estate = Estate {
            scenario,
            nodes: Vec::new(),
            cp,
            cp_data,
            cp_env,
            redis,
            backend,
            rate_limit: Some(limit),
            client,
            probe_responses: 0,
            generation: 0,
            limit,
            dirs: vec![cp_dir],
        };
        // Generation 1, with the rate limit if this build takes it.
        let (status, body) = estate.try_apply(&estate.yaml(1, true)).await;
        if (status == 400 || status == 409) && body.to_string().contains("rate-limit") {
            estate.rate_limit = None;
            estate.apply_generation(1).await;
        } else {
            assert!(
                (200..300).contains(&status),
                "apply failed with {status}: {body:#}"
            );
            estate.generation = 1;
        }

        let token_a = estate.cp.token("site-a").await;
        let token_b = estate.cp.token("site-b").await;
        for (i, label) in NODE_LABELS.iter().enumerate() {
            let site_a = i < SITE_A;
            let cp_link = FaultProxy::start(estate.cp.gateway_addr());
            let redis_link = site_a.then(|| FaultProxy::start(estate.redis.addr()));
            let mut options = GatewayOptions {
                control_plane_url: Some(format!("http://{}", cp_link.addr())),
                token: Some(if site_a { &token_a } else { &token_b }.clone()),
                extra_env: vec![
                    (
                        "OUTPOST_TELEMETRY_SPOOL_DIR".to_owned(),
                        dir(state.path(), &format!("spool-{label}")),
                    ),
                    // Failed backend calls are logged at debug: keep them for diagnostics.
                    (
                        "OUTPOST_LOG_LEVEL".to_owned(),
                        "info,outpost::gateway::pipeline=debug".to_owned(),
                    ),
                ],
                ..Default::default()
            };
            if let Some(link) = &redis_link {
                options.redis_url = Some(format!("redis://{}", link.addr()));
                options.redis_nodes = Some(SITE_A as u64);
                options.extra_env.push((
                    "OUTPOST_REDIS_TIMEOUT_MS".into(),
                    REDIS_TIMEOUT_MS.to_string(),
                ));
            } else {
                options.backup_dir = Some(PathBuf::from(dir(state.path(), "backup-b1")));
            }
            let gateway = Gateway::spawn(&format!("{}-{label}", scenario.slug()), options);
            estate.nodes.push(Node {
                label,
                gateway,
                cp_link,
                redis_link,
            });
        }
        estate.dirs.push(state);
        for node in &estate.nodes {
            node.gateway.wait_ready().await;
        }
        let revision = estate.cp.revision().await;
        let all: Vec<usize> = (0..estate.nodes.len()).collect();
        if let Err(e) = estate
            .wait_converged(
                &all,
                revision,
                Instant::now(),
                scaled(Duration::from_secs(30)),
            )
            .await
        {
            panic!("the estate did not converge on revision {revision} at start: {e}");
        }
        estate
    }

    /// The declarative file of configuration generation `generation`.
    pub fn yaml(&self, generation: u32, with_rate_limit: bool) -> String {
        let rate_limit = if with_rate_limit {
            format!(
                "        - rate-limit: {{calls: {}, renewal-period: {}, outage: local}}",
                self.limit.calls,
                self.limit.window.as_secs()
            )
        } else {
            String::new()
        };
        TEMPLATE
            .replace("@ENV@", &env_value(generation))
            .replace("@BACKEND@", &self.backend.url())
            .replace("@RATE_LIMIT@", &rate_limit)
            .replace("@LOAD_KEY@", LOAD_KEY)
            .replace("@PROBE_KEY@", PROBE_KEY)
    }

    /// `POST /api/v1/apply`; status and body, whatever they are.
    pub async fn try_apply(&self, yaml: &str) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}/api/v1/apply", self.cp.admin_url()))
            .bearer_auth(ADMIN_TOKEN)
            .header("Content-Type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await
            .expect("apply request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Applies configuration generation `generation` (a new `X-Env` value) and returns the
    /// control plane's revision after it.
    pub async fn apply_generation(&mut self, generation: u32) -> u64 {
        let yaml = self.yaml(generation, self.rate_limit.is_some());
        let (status, body) = self.try_apply(&yaml).await;
        assert!(
            (200..300).contains(&status),
            "apply failed with {status}: {body:#}"
        );
        self.generation = generation;
        body["revision"].as_u64().expect("revision in apply answer")
    }

    /// Applies the next configuration generation; returns the new revision.
    pub async fn change_config(&mut self) -> u64 {
        self.apply_generation(self.generation + 1).await
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn site_a(&self) -> std::ops::Range<usize> {
        0..SITE_A
    }

    /// `/readyz` of node `i` as JSON; `None` when it does not answer.
    pub async fn readyz(&self, i: usize) -> Option<Value> {
        let url = format!("{}/readyz", self.nodes[i].gateway.ops_url());
        let res = self
            .client
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        res.json().await.ok()
    }

    /// `/metrics` of node `i`; empty when it does not answer.
    pub async fn metrics(&self, i: usize) -> String {
        let url = format!("{}/metrics", self.nodes[i].gateway.ops_url());
        match self
            .client
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Rate-limit and quota decisions node `i`'s current process took without Redis
    /// (`outpost_redis_fallback_total`, every mode) and Redis calls it saw fail
    /// (`outpost_redis_errors_total`); zeros when it does not answer.
    pub async fn redis_fallbacks(&self, i: usize) -> (u64, u64) {
        let metrics = self.metrics(i).await;
        let sum = |prefix: &str| -> u64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .map(|v| v.max(0.0).round() as u64)
                .sum()
        };
        (
            sum("outpost_redis_fallback_total"),
            sum("outpost_redis_errors_total"),
        )
    }

    /// Polls the `/readyz` of `nodes` until each reports `revision` (or later) as applied;
    /// returns the time since `from`.
    pub async fn wait_converged(
        &self,
        nodes: &[usize],
        revision: u64,
        from: Instant,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let states = join_all(nodes.iter().map(|&i| self.readyz(i))).await;
            let behind: Vec<String> = nodes
                .iter()
                .zip(&states)
                .filter_map(|(&i, s)| {
                    let applied = s.as_ref().and_then(|v| v["config"]["revision"].as_u64());
                    match applied {
                        Some(r) if r >= revision => None,
                        Some(r) => Some(format!("{} at revision {r}", self.nodes[i].label)),
                        None => Some(format!("{} not answering /readyz", self.nodes[i].label)),
                    }
                })
                .collect();
            if behind.is_empty() {
                return Ok(from.elapsed());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not every gateway applied revision {revision} after {:?}: {}",
                    from.elapsed(),
                    behind.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until `check(readyz)` holds for every node of `nodes`; the time it took.
    pub async fn wait_readyz(
        &self,
        nodes: &[usize],
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let states = join_all(nodes.iter().map(|&i| self.readyz(i))).await;
            let failing: Vec<String> = nodes
                .iter()
                .zip(&states)
                .filter(|(_, s)| !s.as_ref().is_some_and(&check))
                .map(|(&i, s)| {
                    format!(
                        "{}: {}",
                        self.nodes[i].label,
                        s.as_ref().map_or("no answer".to_owned(), |v| v.to_string())
                    )
                })
                .collect();
            if failing.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "{what} not seen within {timeout:?}: {}",
                    failing.join("; ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks every node in `nodes` for an item with the probe subscription and checks that the
    /// backend saw the `X-Env` of the current generation: the revision is not just reported,
    /// it is what serves.
    pub async fn verify_serving_current(&mut self, nodes: &[usize]) -> Result<(), String> {
        let expected = env_value(self.generation);
        let mut wrong = Vec::new();
        for &i in nodes {
            let url = format!("{}/echo/items/probe", self.nodes[i].base_url());
            match self
                .client
                .get(url)
                .header(KEY_HEADER, PROBE_KEY)
                .send()
                .await
            {
                Ok(res) => {
                    self.probe_responses += 1;
                    let status = res.status().as_u16();
                    let body: Value = res.json().await.unwrap_or(Value::Null);
                    let env = body["headers"]["x-env"].as_str().unwrap_or_default();
                    if status != 200 || env != expected {
                        wrong.push(format!(
                            "{}: status {status}, x-env {env:?}",
                            self.nodes[i].label
                        ));
                    }
                }
                Err(e) => wrong.push(format!(
                    "{}: {}",
                    self.nodes[i].label,
                    crate::http::describe_error(&e)
                )),
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "not serving generation {} ({expected}): {}",
                self.generation,
                wrong.join("; ")
            ))
        }
    }

    /// Requests the control plane's telemetry has counted (every gateway, last hour).
    pub async fn telemetry_total(&self) -> Option<u64> {
        let res = self
            .client
            .get(format!("{}/api/v1/telemetry", self.cp.admin_url()))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let body: Value = res.json().await.ok()?;
        body["requests"].as_u64()
    }

    /// `GET /api/v1/gateways/{gateway}/instances`.
    pub async fn instances(&self, gateway: &str) -> Vec<Value> {
        let res = self
            .client
            .get(format!(
                "{}/api/v1/gateways/{gateway}/instances",
                self.cp.admin_url()
            ))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match res {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits until the control plane lists every live process of `nodes` as connected, in
    /// sync and at `revision` (the per-instance status an operator looks at).
    pub async fn wait_instances_in_sync(
        &self,
        nodes: &[usize],
        revision: u64,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let mut missing = Vec::new();
            let lists = [
                self.instances("site-a").await,
                self.instances("site-b").await,
            ];
            for &i in nodes {
                let id = self
                    .readyz(i)
                    .await
                    .and_then(|v| v["instance_id"].as_str().map(str::to_owned));
                let Some(id) = id else {
                    missing.push(format!("{}: no /readyz", self.nodes[i].label));
                    continue;
                };
                let record = lists
                    .iter()
                    .flatten()
                    .find(|r| r["instance-id"].as_str() == Some(id.as_str()));
                match record {
                    Some(r)
                        if r["connection"] == "connected"
                            && r["sync"] == "in-sync"
                            && r["applied-revision"].as_u64() == Some(revision) => {}
                    Some(r) => missing.push(format!(
                        "{} ({id}): {} {} revision {}",
                        self.nodes[i].label, r["connection"], r["sync"], r["applied-revision"]
                    )),
                    None => missing.push(format!("{} ({id}): not listed", self.nodes[i].label)),
                }
            }
            if missing.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "instances API not showing every instance connected and in sync at revision \
                     {revision}: {}",
                    missing.join("; ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Restarts the control plane on `data_dir` with the same ports (after a kill or stop).
    pub async fn start_control_plane_on(&mut self, data_dir: &Path) {
        let next = ControlPlane::start_on_with(
            &format!("{}-cp", self.scenario.slug()),
            data_dir,
            self.cp.admin_port,
            self.cp.gateway_port,
            &self.cp_env,
        )
        .await;
        self.cp = next;
        self.cp_data = data_dir.to_owned();
    }

    /// A fresh directory that lives as long as the estate.
    pub fn temp_dir(&mut self, prefix: &str) -> PathBuf {
        let d = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir");
        let path = d.path().to_owned();
        self.dirs.push(d);
        path
    }

    /// Lines of node `i`'s current process log that contain `needle` (colours stripped), at
    /// most `max`, the last ones.
    pub fn log_lines(&self, i: usize, needle: &str, max: usize) -> Vec<String> {
        let all: Vec<String> = self.nodes[i]
            .gateway
            .process
            .output_so_far()
            .lines()
            .filter(|l| l.contains(needle))
            .map(strip_ansi)
            .collect();
        all[all.len().saturating_sub(max)..].to_vec()
    }

    /// The last lines of every process, for a failure report.
    pub fn diagnostics(&self) -> String {
        let mut out = format!(
            "---- control plane ({}) ----\n{}\n",
            self.cp.process.log_path().display(),
            self.cp.process.tail(30)
        );
        for n in &self.nodes {
            out.push_str(&format!(
                "---- {} ({}) ----\n{}\n",
                n.label,
                n.gateway.process.log_path().display(),
                n.gateway.process.tail(30)
            ));
        }
        out
    }

    pub fn redis_addr(&self) -> SocketAddr {
        self.redis.addr()
    }
}

/// Removes ANSI colour sequences (`ESC [ ... m`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn env_value(generation: u32) -> String {
    format!("gen-{generation}")
}

fn dir(base: &Path, name: &str) -> String {
    let d = base.join(name);
    std::fs::create_dir_all(&d).expect("create dir");
    d.display().to_string()
}

/// Copies the files of `from` into `to` (created), modes included like `cp -a`: a control plane
/// refuses a data directory that others can read, so the copy must stay 0700.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<u64> {
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
    let mut bytes = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        if path.is_dir() {
            bytes += copy_dir(&path, &to.join(entry.file_name()))?;
        } else {
            bytes += std::fs::copy(&path, to.join(entry.file_name()))?;
        }
    }
    Ok(bytes)
}
