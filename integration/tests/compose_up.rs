//! The compose fleet, run for real: `compose/build-images.sh` builds the four images FROM
//! scratch from local material (no registry is reachable here), `compose/docker-compose.yml`
//! starts the whole estate under a project name of its own, and the test walks through
//! compose/README.md command for command — calls through site A's load balancer and to site
//! B, a change through either control-plane replica, site A's shared rate limit, site B over a
//! WAN-like link, a site-A node killed under load, site A cut off from the control planes and
//! reconnected, the replica the gateways wait on stopped under load (they go on through the
//! other), site B restarted from its backup while both replicas are down — then `down -v` must
//! leave nothing behind.
//!
//! Needs a Docker engine and a Compose client (`docker compose` or `docker-compose`): without
//! them the test prints why and passes without running. The WAN phase also needs root (it
//! works in the site-B container's network namespace): without it that phase alone is skipped,
//! with the reason printed. `.ci/run` runs this file on its own, timed.
//!
//! The images are built from the debug binary the test run already has (`OUTPOST_BIN` or
//! target/debug/outpost), with tags of their own (`*:compose-test`) that stay between runs as a
//! build cache.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use outpost_integration::compose::{ComposeFleet, compose_cli, docker};
use outpost_integration::*;
use serde_json::{Value, json};

/// Subscription keys and the admin token of compose/fleet.yaml and compose/docker-compose.yml
/// (public demo values, as in compose/README.md).
const BOB: &str = "a53da53b8ed60ed232f13c6f20e41282102e069eb3ba57772430ba977071e8c3";
const ALICE: &str = "00291c81105d119931f2d16c075df0395d09c34631f7102b9965cd1e59c9610d";
const ADMIN: &str = "outpost-compose-demo-admin-token-change-me";
const KEY: &str = "Ocp-Apim-Subscription-Key";
const SITE_A: [&str; 3] = ["gw-a1", "gw-a2", "gw-a3"];
const REPLICAS: [&str; 2] = ["control-plane-1", "control-plane-2"];
/// Gateway processes of the fleet: each has one configuration long-poll waiting on a replica.
const GATEWAY_COUNT: usize = 4;
const IMAGES: [(&str, &str); 4] = [
    ("OUTPOST_IMAGE", "outpost:compose-test"),
    ("OUTPOST_REDIS_IMAGE", "outpost-redis:compose-test"),
    ("OUTPOST_NGINX_IMAGE", "outpost-nginx:compose-test"),
    ("OUTPOST_POSTGRES_IMAGE", "outpost-postgres:compose-test"),
];
/// One way, so 80 ms per round trip between site B and the control plane.
const WAN_ONE_WAY: Duration = Duration::from_millis(40);

/// One answer, read whole.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// The running estate and its published addresses (they change when a container is recreated
/// or restarted, so they are read again after each of those).
struct Estate {
    fleet: ComposeFleet,
    http: reqwest::Client,
    lb: String,
    /// Admin addresses of control-plane-1 and control-plane-2.
    cps: [String; 2],
    site_b: String,
    /// Requests sent to site B's traffic port, all answered 200: what its telemetry must count.
    site_b_sent: u64,
    started: Instant,
}

impl Estate {
    fn phase(&self, name: &str) {
        eprintln!(
            "compose test: {name} ({:.0} s in)",
            self.started.elapsed().as_secs_f64()
        );
    }

    async fn get(&self, addr: &str, path: &str, key: Option<&str>) -> Result<Answer, String> {
        let mut req = self.http.get(format!("http://{addr}{path}"));
        if let Some(k) = key {
            req = req.header(KEY, k);
        }
        let res = req
            .send()
            .await
            .map_err(|e| format!("GET {addr}{path}: {}", http::describe_error(&e)))?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res
            .text()
            .await
            .map_err(|e| format!("GET {addr}{path}: body: {e}"))?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    async fn site_b_stock(&mut self) -> Result<Answer, String> {
        let a = self
            .get(&self.site_b.clone(), "/warehouse/stock/sku-1", Some(BOB))
            .await?;
        self.site_b_sent += 1;
        if a.status == 200 {
            Ok(a)
        } else {
            Err(format!("site B answered {}: {}", a.status, a.body))
        }
    }

    /// An admin call to control-plane-1.
    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.admin_at(0, method, path, body).await
    }

    /// An admin call to replica `replica` (0: control-plane-1, 1: control-plane-2).
    async fn admin_at(
        &self,
        replica: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut req = self
            .http
            .request(
                method.clone(),
                format!("http://{}/api/v1{path}", self.cps[replica]),
            )
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {}", http::describe_error(&e)));
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    /// Changes a named value (`PUT /api/v1/named-values/NAME`) through control-plane-1; the
    /// new revision.
    async fn set_named_value(&self, name: &str, value: &str) -> u64 {
        self.set_named_value_at(0, name, value).await
    }

    /// The same through replica `replica`.
    async fn set_named_value_at(&self, replica: usize, name: &str, value: &str) -> u64 {
        let res = self
            .admin_at(
                replica,
                reqwest::Method::PUT,
                &format!("/named-values/{name}"),
                Some(json!({"name": name, "value": value})),
            )
            .await;
        res["revision"]
            .as_u64()
            .unwrap_or_else(|| panic!("no revision in {res}"))
    }

    /// Requests through lb-a until every site-A node has answered with `X-Outpost-Site: label`.
    async fn site_a_serves(&self, label: &str) -> Result<(), String> {
        let mut nodes: BTreeMap<String, String> = BTreeMap::new();
        eventually(secs(120), ms(100), async || {
            let a = self.get(&self.lb, "/shop/orders/1001", Some(BOB)).await?;
            if a.status != 200 {
                return Err(format!("lb-a answered {}: {}", a.status, a.body));
            }
            nodes.insert(
                a.header("x-site-a-node").to_owned(),
                a.header("x-outpost-site").to_owned(),
            );
            let current = nodes.values().filter(|l| *l == label).count();
            if current == SITE_A.len() {
                Ok(())
            } else {
                Err(format!("nodes and the label they serve: {nodes:?}"))
            }
        })
        .await
    }

    /// Requests to site B until it answers with `X-Outpost-Site: label`.
    async fn site_b_serves(&mut self, label: &str) -> Result<(), String> {
        eventually(secs(120), ms(200), async || {
            let a = self.site_b_stock().await?;
            if a.header("x-outpost-site") == label {
                Ok(())
            } else {
                Err(format!("site B serves '{}'", a.header("x-outpost-site")))
            }
        })
        .await
    }

    /// Gateway long-polls waiting on replica `replica` now (its /metrics,
    /// `outpost_cp_config_polls_waiting`).
    async fn polls_waiting(&self, replica: usize) -> Result<u64, String> {
        let a = self.get(&self.cps[replica], "/metrics", None).await?;
        a.body
            .lines()
            .find_map(|l| l.strip_prefix("outpost_cp_config_polls_waiting "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| {
                format!(
                    "{} /metrics {}: no waiting polls",
                    REPLICAS[replica], a.status
                )
            })
    }

    /// Every gateway instance connected, in sync and at `revision` or later, as replica
    /// `replica` lists them (instance status is shared through PostgreSQL).
    async fn all_in_sync(&self, replica: usize, revision: u64) -> Result<(), String> {
        eventually(secs(60), ms(500), async || {
            let all = self
                .admin_at(replica, reqwest::Method::GET, "/instances", None)
                .await;
            let synced = all
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["connection"] == "connected" && i["sync"] == "in-sync")
                .filter(|i| i["applied-revision"].as_u64() >= Some(revision))
                .count();
            if synced == GATEWAY_COUNT {
                Ok(())
            } else {
                Err(format!("{synced} of {GATEWAY_COUNT} in sync: {all}"))
            }
        })
        .await
    }

    async fn readyz(&self, service: &str) -> Result<(u16, Value), String> {
        let ops = self.fleet.port(service, 8090).await?;
        let a = self.get(&ops, "/readyz", None).await?;
        Ok((a.status, a.json()))
    }

    /// Waits until Docker reports `service`'s health check (`outpost probe`, `redis-cli ping`)
    /// as passing.
    async fn healthy(&self, service: &str) {
        let id = self.fleet.container(service).await.expect("container");
        eventually(secs(120), ms(250), async || {
            let state = docker(&["inspect", "-f", "{{.State.Health.Status}}", &id]).await?;
            match state.trim() {
                "healthy" => Ok(()),
                other => Err(format!("{service} is {other}")),
            }
        })
        .await
        .unwrap_or_else(|e| panic!("health check of {service}: {e}"));
    }

    /// The address of `service`'s container on compose network `net`.
    async fn address(&self, service: &str, net: &str) -> String {
        let id = self.fleet.container(service).await.expect("container");
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.fleet.network(net)
        );
        let ip = docker(&["inspect", "-f", &format, &id])
            .await
            .expect("inspect");
        ip.trim().to_owned()
    }

    /// `ls -l` of a directory inside a container, from the tar stream `docker cp` gives.
    async fn listing(&self, service: &str, dir: &str) -> String {
        let id = self.fleet.container(service).await.expect("container");
        let out = tokio::process::Command::new("bash")
            .args([
                "-o",
                "pipefail",
                "-c",
                &format!("docker cp {id}:{dir} - | tar -tv --numeric-owner"),
            ])
            .output()
            .await
            .expect("docker cp | tar");
        assert!(
            out.status.success(),
            "docker cp {service}:{dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_compose_fleet_runs_and_rides_out_faults() {
    let cli = match compose_cli() {
        Ok(cli) => cli,
        Err(reason) => {
            eprintln!("skipped: the compose fleet needs Docker: {reason}");
            return;
        }
    };
    let started = Instant::now();
    let mut env: Vec<(String, String)> = IMAGES
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    // A password of this run only, as an operator makes one (compose/README.md).
    env.push(("OUTPOST_POSTGRES_PASSWORD".into(), random_hex(24)));

    // ------------------------------------------------------------------ images
    let out = tokio::process::Command::new("bash")
        .arg("compose/build-images.sh")
        .arg("--binary")
        .arg(outpost_binary())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(workspace_root())
        .output()
        .await
        .expect("compose/build-images.sh runs");
    assert!(
        out.status.success(),
        "compose/build-images.sh:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!(
        "compose test: images ready ({:.0} s)",
        started.elapsed().as_secs_f64()
    );

    // ------------------------------------------------------------------ up
    let project = format!(
        "outpost-test-{}-{}",
        std::process::id(),
        started.elapsed().subsec_nanos() % 100_000
    );
    let fleet = ComposeFleet::new(cli, project, env);
    tokio::time::timeout(scaled(secs(300)), fleet.run(&["up", "-d"]))
        .await
        .expect("docker compose up -d took more than 5 minutes")
        .expect("docker compose up -d");
    let lb = fleet.port("lb-a", 8080).await.expect("lb-a port");
    let cps = [
        fleet.port(REPLICAS[0], 7070).await.expect("cp 1 port"),
        fleet.port(REPLICAS[1], 7070).await.expect("cp 2 port"),
    ];
    let site_b = fleet.port("gw-b1", 8080).await.expect("gw-b1 port");
    let mut e = Estate {
        fleet,
        http: client(),
        lb,
        cps,
        site_b,
        site_b_sent: 0,
        started,
    };
    e.phase("up");

    calls(&mut e).await;
    a_change_through_either_replica(&mut e).await;
    shared_rate_limit(&e).await;
    secrets_stay_in_volumes(&e).await;
    if is_root() {
        site_b_over_a_wan(&mut e).await;
    } else {
        eprintln!(
            "skipped the WAN phase: it needs root (nsenter and iptables in the site-B container)"
        );
    }
    kill_a_node_under_load(&mut e).await;
    cut_site_a_off_and_reconnect(&e).await;
    stop_a_replica_under_load(&mut e).await;
    site_b_restarts_from_its_backup(&mut e).await;

    // ------------------------------------------------------------------ down
    e.fleet.down().await.expect("docker compose down -v");
    let left = e.fleet.leftovers();
    assert!(
        left.is_empty(),
        "down -v left these behind (label com.docker.compose.project={}): {left:?}",
        e.fleet.project()
    );
    e.phase("down -v: nothing left");
}

/// Calls through lb-a and to site B; refusals; the round robin.
async fn calls(e: &mut Estate) {
    // Every health check passes: `outpost probe` in images that have nothing else.
    for service in [
        "postgres",
        "control-plane-1",
        "control-plane-2",
        "redis-a",
        "gw-a1",
        "gw-a2",
        "gw-a3",
        "gw-b1",
        "backend-a",
        "backend-b",
    ] {
        e.healthy(service).await;
    }
    // lb-a starts last; `up -d` may return before nginx listens.
    wait_for_http_ok(&format!("http://{}/lb-healthz", e.lb), secs(60))
        .await
        .expect("lb-a answers");
    let a = e
        .get(&e.lb, "/shop/orders/1001", Some(BOB))
        .await
        .expect("shop");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-served-by"), "site-a");
    assert_eq!(a.header("x-outpost-site"), "site A (3 nodes, shared Redis)");
    assert_eq!(a.json()["id"], "1001");

    let no_key = e
        .get(&e.lb, "/shop/orders/1001", None)
        .await
        .expect("no key");
    assert_eq!(no_key.status, 401, "{}", no_key.body);
    let other_site = e
        .get(&e.lb, "/warehouse/stock/sku-1", Some(BOB))
        .await
        .expect("warehouse on site A");
    assert_eq!(other_site.status, 404, "site A does not serve site B's API");

    // Site B echoes what its backend received: the secret named value arrived there.
    let b = e.site_b_stock().await.expect("site B");
    assert_eq!(b.header("x-served-by"), "site-b");
    assert_eq!(
        b.json()["headers"]["x-backend-secret"],
        "compose-demo-backend-secret"
    );

    let mut nodes = BTreeSet::new();
    for _ in 0..6 {
        let a = e
            .get(&e.lb, "/shop/orders/1001", Some(BOB))
            .await
            .expect("rr");
        assert_eq!(a.status, 200);
        nodes.insert(a.header("x-site-a-node").to_owned());
    }
    assert_eq!(
        nodes.len(),
        3,
        "round robin over the three nodes: {nodes:?}"
    );

    let export = e
        .fleet
        .run(&["exec", "-T", "control-plane-1", "outpost", "export"])
        .await
        .expect("outpost export in the control plane container");
    assert!(
        export.contains("site-a") && export.contains("warehouse"),
        "{export}"
    );
    e.phase("calls");
}

/// Alice's product admits 10 calls a minute per API, counted in redis-a across the three nodes.
async fn shared_rate_limit(e: &Estate) {
    let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
    let mut nodes = BTreeSet::new();
    for _ in 0..15 {
        let a = e
            .get(&e.lb, "/shop/orders", Some(ALICE))
            .await
            .expect("alice");
        *statuses.entry(a.status).or_default() += 1;
        nodes.insert(a.header("x-site-a-node").to_owned());
        if a.status == 429 {
            assert!(
                !a.header("retry-after").is_empty(),
                "429 without Retry-After"
            );
        }
    }
    assert_eq!(
        statuses,
        BTreeMap::from([(200, 10), (429, 5)]),
        "10 admitted in all, not per node"
    );
    assert_eq!(nodes.len(), 3, "spread over the three nodes: {nodes:?}");
    e.phase("shared rate limit");
}

/// The tokens reach the gateways as owner-only files in a volume, never through the image or
/// the container's settings.
async fn secrets_stay_in_volumes(e: &Estate) {
    let tokens = e.listing("gw-a1", "/var/lib/outpost/tokens").await;
    for site in ["site-a", "site-b"] {
        let line = tokens
            .lines()
            .find(|l| l.ends_with(&format!("tokens/{site}")))
            .unwrap_or_else(|| panic!("no token file for {site}:\n{tokens}"));
        assert!(
            line.starts_with("-rw------- 10001/10001"),
            "token file {site} must be 0600 and the gateway user's: {line}"
        );
    }
    let id = e.fleet.container("gw-a1").await.expect("gw-a1");
    let inspect = docker(&["inspect", &id]).await.expect("inspect");
    assert!(
        !inspect.contains("GatewayKey"),
        "a gateway token shows in docker inspect"
    );
    let image = docker(&["image", "inspect", IMAGES[0].1])
        .await
        .expect("image inspect");
    assert!(!image.contains("GatewayKey"));
}

/// Site B 80 ms of round trip away from the control plane: a change still arrives, and so does
/// its telemetry.
async fn site_b_over_a_wan(e: &mut Estate) {
    let id = e.fleet.container("gw-b1").await.expect("gw-b1");
    let pid: u32 = docker(&["inspect", "-f", "{{.State.Pid}}", &id])
        .await
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    let ip = e.address("gw-b1", "control").await;
    let iface = interface_with(pid, &ip).await;
    let wan = WanDelay::start(pid, &iface, WAN_ONE_WAY, 7).expect("WAN delay on gw-b1");

    // The link is slow now: a TCP handshake with gw-b1's address on the control network (from
    // this host, over the same interface) takes at least one delayed round trip.
    let t = Instant::now();
    tokio::net::TcpStream::connect((ip.as_str(), 8090))
        .await
        .expect("connect to gw-b1 over the control network");
    let rtt = t.elapsed();
    assert!(rtt >= 2 * WAN_ONE_WAY, "handshake took {rtt:?}: no delay?");
    eprintln!("compose test: gw-b1 control link round trip {rtt:?}");

    let label = "site B, 80 ms away";
    let t = Instant::now();
    let revision = e.set_named_value("site-b-label", label).await;
    eventually(secs(60), ms(100), async || {
        let a = e.site_b_stock().await?;
        if a.header("x-outpost-site") == label {
            Ok(())
        } else {
            Err(format!(
                "site B still serves '{}'",
                a.header("x-outpost-site")
            ))
        }
    })
    .await
    .expect("the change reaches site B over the slow link");
    eprintln!(
        "compose test: revision {revision} served by site B {:?} after the change",
        t.elapsed()
    );

    for _ in 0..20 {
        e.site_b_stock().await.expect("site B");
    }
    let sent = e.site_b_sent;
    let t = Instant::now();
    // Asked of both replicas: the one gw-b1 uploads to counts every request (each replica
    // aggregates the batches it receives).
    let summary = eventually(secs(90), ms(500), async || {
        let mut seen = Vec::new();
        for (replica, name) in REPLICAS.iter().enumerate() {
            let s = e
                .admin_at(
                    replica,
                    reqwest::Method::GET,
                    "/telemetry?gateway=site-b",
                    None,
                )
                .await;
            if s["requests"].as_u64() == Some(sent) {
                return Ok(s);
            }
            seen.push(format!("{name}: {}", s["requests"]));
        }
        Err(format!("telemetry counts {seen:?} of {sent}"))
    })
    .await
    .expect("site B's telemetry arrives over the slow link");
    assert_eq!(summary["errors"], 0);
    eprintln!(
        "compose test: site B's {sent} requests counted by the control plane {:?} after the last",
        t.elapsed()
    );
    let instances = e
        .admin(reqwest::Method::GET, "/gateways/site-b/instances", None)
        .await;
    let me = instances
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|i| i["hostname"].as_str().is_some_and(|h| id.starts_with(h)))
        })
        .unwrap_or_else(|| panic!("gw-b1 ({id}) is not among {instances}"));
    assert_eq!(me["connection"], "connected", "{me}");
    assert!(me["applied-revision"].as_u64() >= Some(revision), "{me}");
    drop(wan);
    e.phase("site B over an 80 ms link");
}

/// The interface of process `pid`'s network namespace that holds address `ip`.
async fn interface_with(pid: u32, ip: &str) -> String {
    let out = tokio::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ip",
            "-o",
            "-4",
            "addr",
            "show",
        ])
        .output()
        .await
        .expect("nsenter ip addr");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains(&format!(" {ip}/")))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|i| i.split('@').next().unwrap_or(i).to_owned())
        .unwrap_or_else(|| panic!("no interface with {ip} in process {pid}'s network:\n{text}"))
}

/// SIGKILL one site-A node while requests flow through lb-a: none fails; the node comes back
/// into the rotation once started again.
async fn kill_a_node_under_load(e: &mut Estate) {
    let url = format!("http://{}/shop/orders/1001", e.lb);
    let http = e.http.clone();
    let load = LoadLoop::start_with(25.0, secs(180), move |_| http.get(&url).header(KEY, BOB));
    eventually(secs(30), ms(50), async || {
        let s = load.snapshot();
        if s.ok >= 25 {
            Ok(())
        } else {
            Err(format!("{s}"))
        }
    })
    .await
    .expect("load flows through lb-a");

    let victim = e.fleet.container("gw-a2").await.expect("gw-a2");
    let victim_ip = e.address("gw-a2", "site-a").await;
    docker(&["kill", &victim]).await.expect("docker kill gw-a2");
    let at_kill = load.snapshot();
    eventually(secs(60), ms(100), async || {
        let s = load.snapshot().since(&at_kill);
        if s.responses() >= 150 {
            Ok(())
        } else {
            Err(format!("{s}"))
        }
    })
    .await
    .expect("traffic goes on with two nodes");

    e.fleet.run(&["start", "gw-a2"]).await.expect("start gw-a2");
    eventually(secs(90), ms(200), async || {
        let a = e.get(&e.lb, "/shop/orders/1001", Some(BOB)).await?;
        if a.header("x-site-a-node")
            .starts_with(&format!("{victim_ip}:"))
        {
            Ok(())
        } else {
            Err(format!("lb-a answered from {}", a.header("x-site-a-node")))
        }
    })
    .await
    .expect("gw-a2 serves through lb-a again");
    let report = load.stop().await;
    eprintln!("compose test: load while gw-a2 was killed and started: {report}");
    assert_eq!(report.failed, 0, "requests failed through lb-a: {report}");
    assert_eq!(
        report.non_2xx(),
        0,
        "requests refused through lb-a: {report}"
    );
    e.phase("a site-A node killed under load: 0 failed");
}

/// `docker network disconnect` site A from the control plane: still serving, `/readyz` ready
/// and degraded; reconnected, a change made meanwhile arrives.
async fn cut_site_a_off_and_reconnect(e: &Estate) {
    let control = e.fleet.network("control");
    let mut ids = Vec::new();
    for gw in SITE_A {
        let id = e.fleet.container(gw).await.expect("site A container");
        docker(&["network", "disconnect", &control, &id])
            .await
            .expect("disconnect");
        ids.push(id);
    }
    for gw in SITE_A {
        eventually(secs(90), ms(200), async || {
            let (status, body) = e.readyz(gw).await?;
            let state = body["control_plane"]["state"].as_str().unwrap_or_default();
            if status == 200 && state == "degraded" {
                Ok(())
            } else {
                Err(format!("{gw} /readyz {status}: control plane {state}"))
            }
        })
        .await
        .expect("cut off: ready and degraded");
    }
    for _ in 0..10 {
        let a = e
            .get(&e.lb, "/shop/orders/1001", Some(BOB))
            .await
            .expect("lb");
        assert_eq!(a.status, 200, "fail static: {}", a.body);
    }
    let label = "site A, after the partition";
    e.set_named_value("site-a-label", label).await;
    e.phase("site A cut off from the control plane: serving, degraded");

    for id in &ids {
        docker(&["network", "connect", &control, id])
            .await
            .expect("connect");
    }
    e.site_a_serves(label)
        .await
        .expect("site A converges after the partition");
    for gw in SITE_A {
        eventually(secs(90), ms(200), async || {
            let (_, body) = e.readyz(gw).await?;
            match body["control_plane"]["state"].as_str() {
                Some("connected") => Ok(()),
                other => Err(format!("{gw}: control plane {other:?}")),
            }
        })
        .await
        .expect("connected again");
    }
    e.phase("site A reconnected: converged");
}

/// Both replicas serve one store: a change made through control-plane-2 reaches every gateway
/// (whichever replica each waits on), control-plane-1 reports its revision, and both list
/// every gateway instance in sync.
async fn a_change_through_either_replica(e: &mut Estate) {
    let (label_a, label_b) = (
        "site A, changed through replica 2",
        "site B, changed through replica 2",
    );
    e.set_named_value_at(1, "site-a-label", label_a).await;
    let revision = e.set_named_value_at(1, "site-b-label", label_b).await;
    e.site_a_serves(label_a)
        .await
        .expect("site A takes a change made through control-plane-2");
    e.site_b_serves(label_b)
        .await
        .expect("site B takes a change made through control-plane-2");
    eventually(secs(30), ms(100), async || {
        let r = e.admin_at(0, reqwest::Method::GET, "/revision", None).await;
        if r["revision"].as_u64() >= Some(revision) {
            Ok(())
        } else {
            Err(format!("control-plane-1 is at {r}, not {revision}"))
        }
    })
    .await
    .expect("control-plane-1 knows the revision committed through control-plane-2");
    for (replica, name) in REPLICAS.iter().enumerate() {
        e.all_in_sync(replica, revision)
            .await
            .unwrap_or_else(|err| panic!("instances as {name} lists them: {err}"));
    }
    e.phase("a change through control-plane-2: every gateway, both replicas agree");
}

/// The replica the gateways wait on is stopped while requests flow through both sites: none
/// fails, every gateway's long-poll moves to the other replica, and changes made through that
/// one arrive. Then the stopped replica starts again and takes changes too.
async fn stop_a_replica_under_load(e: &mut Estate) {
    let load_a = {
        let url = format!("http://{}/shop/orders/1001", e.lb);
        let http = e.http.clone();
        LoadLoop::start_with(20.0, secs(180), move |_| http.get(&url).header(KEY, BOB))
    };
    let load_b = {
        let url = format!("http://{}/warehouse/stock/sku-1", e.site_b);
        let http = e.http.clone();
        LoadLoop::start_with(10.0, secs(180), move |_| http.get(&url).header(KEY, BOB))
    };
    // Stop the replica more gateways wait on (control-plane-1 on a tie), so the gateways
    // really have to move.
    let mut waiting = [0u64; 2];
    eventually(secs(60), ms(250), async || {
        for (replica, n) in waiting.iter_mut().enumerate() {
            *n = e.polls_waiting(replica).await?;
        }
        if waiting.iter().sum::<u64>() >= GATEWAY_COUNT as u64 {
            Ok(())
        } else {
            Err(format!("long-polls waiting on the replicas: {waiting:?}"))
        }
    })
    .await
    .expect("every gateway long-polls a replica");
    let stopped = usize::from(waiting[1] > waiting[0]);
    let other = 1 - stopped;
    eprintln!(
        "compose test: long-polls waiting {waiting:?}: stopping {}",
        REPLICAS[stopped]
    );
    let t = Instant::now();
    e.fleet
        .run(&["stop", REPLICAS[stopped]])
        .await
        .unwrap_or_else(|err| panic!("stop {}: {err}", REPLICAS[stopped]));
    eprintln!(
        "compose test: {} stopped in {:.1} s",
        REPLICAS[stopped],
        t.elapsed().as_secs_f64()
    );
    eventually(secs(60), ms(250), async || {
        let n = e.polls_waiting(other).await?;
        if n >= GATEWAY_COUNT as u64 {
            Ok(())
        } else {
            Err(format!("{n} long-polls waiting on {}", REPLICAS[other]))
        }
    })
    .await
    .expect("every gateway moves to the other replica");

    let (label_a, label_b) = (
        "site A, with one replica stopped",
        "site B, with one replica stopped",
    );
    e.set_named_value_at(other, "site-a-label", label_a).await;
    let revision = e.set_named_value_at(other, "site-b-label", label_b).await;
    e.site_a_serves(label_a)
        .await
        .expect("site A takes a change with one replica stopped");
    e.site_b_serves(label_b)
        .await
        .expect("site B takes a change with one replica stopped");
    e.all_in_sync(other, revision)
        .await
        .expect("every instance reports the latest revision");
    let (report_a, report_b) = (load_a.stop().await, load_b.stop().await);
    eprintln!(
        "compose test: load while {} was stopped: site A {report_a}; site B {report_b}",
        REPLICAS[stopped]
    );
    for (site, report) in [("site A", &report_a), ("site B", &report_b)] {
        assert!(report.responses() > 0, "{site}: no load ran: {report}");
        assert_eq!(report.failed, 0, "{site}: requests failed: {report}");
        assert_eq!(report.non_2xx(), 0, "{site}: requests refused: {report}");
    }
    e.phase("a replica stopped under load: 0 failed, gateways on the other");

    // Started again (a new published port), it serves the store's latest state and its
    // changes reach the gateways, wherever they wait now.
    e.fleet
        .run(&["start", REPLICAS[stopped]])
        .await
        .unwrap_or_else(|err| panic!("start {}: {err}", REPLICAS[stopped]));
    e.cps[stopped] = e
        .fleet
        .port(REPLICAS[stopped], 7070)
        .await
        .expect("cp port");
    wait_for_http_ok(&format!("http://{}/healthz", e.cps[stopped]), secs(60))
        .await
        .expect("the replica is back");
    let label_b = "site B, after a replica restart";
    let revision = e.set_named_value_at(stopped, "site-b-label", label_b).await;
    e.site_b_serves(label_b)
        .await
        .expect("site B takes a change made through the restarted replica");
    e.all_in_sync(stopped, revision)
        .await
        .expect("the restarted replica lists every instance in sync");
    e.phase("the stopped replica started again: its changes arrive");
}

/// Both control-plane replicas stopped, gw-b1 recreated: it starts from its backup volume and
/// serves the last configuration it had; site A serves on (fail static).
async fn site_b_restarts_from_its_backup(e: &mut Estate) {
    let backup = e.listing("gw-b1", "/var/lib/outpost/backup").await;
    assert!(
        backup
            .lines()
            .filter(|l| l.starts_with('-'))
            .all(|l| l.starts_with("-rw------- 10001/10001")),
        "backup files are the gateway user's, 0600:\n{backup}"
    );
    e.fleet
        .run(&["stop", REPLICAS[0], REPLICAS[1]])
        .await
        .expect("stop both control-plane replicas");
    e.fleet
        .run(&["up", "-d", "--no-deps", "--force-recreate", "gw-b1"])
        .await
        .expect("recreate gw-b1");
    e.site_b = e.fleet.port("gw-b1", 8080).await.expect("gw-b1 port");
    eventually(secs(90), ms(200), async || {
        let (status, body) = e.readyz("gw-b1").await?;
        if status == 200 && body["config"]["source"] == "backup" {
            Ok(())
        } else {
            Err(format!("gw-b1 /readyz {status}: {body}"))
        }
    })
    .await
    .expect("gw-b1 ready from its backup");
    let a = e.site_b_stock().await.expect("site B from its backup");
    assert_eq!(
        a.header("x-outpost-site"),
        "site B, after a replica restart"
    );
    let a = e
        .get(&e.lb, "/shop/orders/1001", Some(BOB))
        .await
        .expect("lb");
    assert_eq!(a.status, 200, "site A serves with both replicas down");
    e.phase("both replicas down: gw-b1 recreated, serving from its backup");
}

/// Whether this process is root: the WAN phase enters another network namespace.
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `bytes` random bytes as hex, from the kernel.
fn random_hex(bytes: usize) -> String {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
