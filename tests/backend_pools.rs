//! Backend pools against real peers: a whole gateway (`gateway::start`, offline mode, with its
//! ops listener and health-check tasks) in front of members that are child processes
//! (`outpost sample-backend`, killed with SIGKILL and started again on the same port) or small
//! HTTP servers in the test whose answers the test switches (health path, traffic status).
//!
//! No timing assertions: every "until" is an [`eventually`] with a generous deadline.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use outpost::gateway::settings::GatewaySettings;
use outpost::gateway::{self, RunningGateway};
use outpost_integration::{ManagedProcess, eventually, free_port, wait_for_http_ok};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_outpost");

/// A gateway serving `yaml` offline; the file lives as long as the guard.
fn start_gateway(yaml: &str) -> (RunningGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pools.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut s = GatewaySettings::default();
    s.offline.config_file = Some(file);
    s.listen.http = "127.0.0.1:0".into();
    s.listen.https = None;
    s.listen.ops = "127.0.0.1:0".into();
    s.listen.workers = 2;
    (gateway::start(s).expect("gateway starts"), dir)
}

fn config(backend: &str, pool: &str) -> String {
    format!(
        r#"
apiVersion: outpost/v1
backends:
  - name: {backend}
{pool}
apis:
  - name: {backend}
    path: {backend}
    backend: {backend}
    subscription-required: false
    operations:
      - {{name: any, method: "*", url-template: "/{{*rest}}"}}
"#
    )
}

/// The value of a gauge or counter for one member in `/metrics`.
async fn metric(gw: &RunningGateway, name: &str, backend: &str, member: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", gw.ops_url()))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            l.contains(&format!("backend=\"{backend}\""))
                && l.contains(&format!("member=\"{member}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

// === members as child processes ===

struct SampleMember {
    addr: SocketAddr,
    process: Option<ManagedProcess>,
}

impl SampleMember {
    async fn start(name: &str) -> SampleMember {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut m = SampleMember {
            addr,
            process: None,
        };
        m.restart(name).await;
        m
    }

    async fn restart(&mut self, name: &str) {
        let mut cmd = Command::new(BIN);
        cmd.args(["sample-backend", "--listen", &self.addr.to_string()]);
        self.process = Some(ManagedProcess::spawn(name, cmd).unwrap());
        wait_for_http_ok(&format!("{}/ready", self.url()), Duration::from_secs(20))
            .await
            .unwrap();
    }

    fn kill(&mut self) {
        self.process.as_mut().unwrap().kill();
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Steady load: `workers` loops of GETs until stopped, counting answers per member and every
/// failure (a status other than 200, or no answer).
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    per_member: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    total: Arc<AtomicU64>,
}

impl Load {
    fn start(url: String, workers: usize) -> Load {
        let load = Load {
            stop: Arc::default(),
            tasks: Vec::new(),
            per_member: Arc::default(),
            failures: Arc::default(),
            total: Arc::default(),
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, per_member, failures, total) = (
                    load.stop.clone(),
                    load.per_member.clone(),
                    load.failures.clone(),
                    load.total.clone(),
                );
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).send().await {
                            Ok(res) if res.status() == 200 => {
                                let member = res
                                    .headers()
                                    .get("x-sample-backend")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("?")
                                    .to_owned();
                                let _ = res.bytes().await;
                                *per_member.lock().unwrap().entry(member).or_default() += 1;
                            }
                            Ok(res) => {
                                let status = res.status();
                                let body = res.text().await.unwrap_or_default();
                                failures.lock().unwrap().push(format!("{status}: {body}"));
                            }
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                        total.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    fn hits(&self, member: &SampleMember) -> u64 {
        let key = member.addr.to_string();
        self.per_member
            .lock()
            .unwrap()
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.failures.lock().unwrap().clone()
    }
}

/// Waits until `load` has made `n` more requests.
async fn requests(load: &Load, n: u64) {
    let target = load.total() + n;
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(20),
        async || {
            let t = load.total();
            if t >= target {
                Ok(())
            } else {
                Err(format!("{t} of {target} requests"))
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_under_load_costs_no_request_and_returns_once_it_recovers() {
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(SampleMember::start(&format!("member-{i}")).await);
    }
    let pool = format!(
        "    members:\n{}    passive-health: {{consecutive-failures: 2, ejection-ms: 300, max-ejection-ms: 1500}}\n",
        members
            .iter()
            .map(|m| format!("      - url: {}\n", m.url()))
            .collect::<String>()
    );
    let (gw, _dir) = start_gateway(&config("killpool", &pool));
    let load = Load::start(format!("{}/killpool/orders", gw.traffic_url()), 4);
    requests(&load, 200).await;
    for m in &members {
        assert!(load.hits(m) > 0, "every member serves before the kill");
    }

    members[1].kill();
    let victim = members[1].url();
    // Ejected: /metrics says so (and the counter counts it).
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(20),
        async || match metric(
            &gw,
            "outpost_backend_member_ejections_total",
            "killpool",
            &victim,
        )
        .await
        {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("ejections {other:?}")),
        },
    )
    .await
    .unwrap();
    let before = load.hits(&members[1]);
    requests(&load, 300).await;
    assert_eq!(
        load.hits(&members[1]),
        before,
        "a dead member answers nothing"
    );

    // Back on the same port: the member returns after its ejection.
    members[1].restart("member-1-again").await;
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(20),
        async || {
            let h = load.hits(&members[1]);
            if h > before + 20 {
                Ok(())
            } else {
                Err(format!(
                    "the restarted member served {} requests",
                    h - before
                ))
            }
        },
    )
    .await
    .unwrap();
    let healthy = metric(&gw, "outpost_backend_member_healthy", "killpool", &victim).await;
    let failures = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(healthy, Some(1.0));
    gw.stop();
}

// === members as servers in the test ===

/// An HTTP/1.1 server whose health path (`/health`) and traffic answers the test switches
/// (status 0: close the connection without answering).
struct Switchable {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    traffic: Arc<AtomicU16>,
    /// Traffic requests (not health checks) seen.
    hits: Arc<AtomicU64>,
    checks: Arc<AtomicU64>,
    /// The body of every request, in arrival order.
    bodies: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Switchable {
    async fn start() -> Switchable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = Switchable {
            addr: listener.local_addr().unwrap(),
            health: Arc::new(AtomicU16::new(200)),
            traffic: Arc::new(AtomicU16::new(200)),
            hits: Arc::default(),
            checks: Arc::default(),
            bodies: Arc::default(),
        };
        let (health, traffic, hits, checks, bodies) = (
            s.health.clone(),
            s.traffic.clone(),
            s.hits.clone(),
            s.checks.clone(),
            s.bodies.clone(),
        );
        let name = s.addr.to_string();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (health, traffic, hits, checks, bodies, name) = (
                    health.clone(),
                    traffic.clone(),
                    hits.clone(),
                    checks.clone(),
                    bodies.clone(),
                    name.clone(),
                );
                tokio::spawn(async move {
                    let (read, mut write) = tcp.into_split();
                    let mut lines = BufReader::new(read);
                    loop {
                        // A head, then a body of Content-Length bytes (no chunked bodies).
                        let mut path = String::new();
                        let mut line = String::new();
                        let mut length = 0usize;
                        loop {
                            line.clear();
                            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if path.is_empty() {
                                path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                            }
                            if let Some((name, value)) = line.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap_or(0);
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        if lines.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        bodies.lock().unwrap().push(body);
                        let status = if path.ends_with("/health") {
                            checks.fetch_add(1, Ordering::Relaxed);
                            health.load(Ordering::Relaxed)
                        } else {
                            hits.fetch_add(1, Ordering::Relaxed);
                            traffic.load(Ordering::Relaxed)
                        };
                        // 0: the request arrived, and the connection closes unanswered.
                        if status == 0 {
                            return;
                        }
                        let res = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nx-sample-backend: {name}\r\n\r\n{name}",
                            name.len()
                        );
                        if write.write_all(res.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        s
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

fn members_yaml(members: &[(&Switchable, u32)]) -> String {
    let mut out = "    members:\n".to_owned();
    for (m, w) in members {
        out.push_str(&format!("      - {{url: {}, weight: {w}}}\n", m.url()));
    }
    out
}

/// `n` GETs one after the other; panics on any failure.
async fn get_n(gw: &RunningGateway, api: &str, n: usize) -> Vec<u16> {
    let client = reqwest::Client::new();
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        let res = client
            .get(format!("{}/{api}/x", gw.traffic_url()))
            .send()
            .await
            .expect("the gateway answers");
        statuses.push(res.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_share_the_requests_for_either_balancer() {
    let (a, b, c) = (
        Switchable::start().await,
        Switchable::start().await,
        Switchable::start().await,
    );
    let members = members_yaml(&[(&a, 1), (&b, 2), (&c, 3)]);
    let yaml = merge_sections(&format!(
        "{}{}",
        config("rr", &members),
        config(
            "lr",
            &format!("{members}    load-balancing: least-request\n")
        )
    ));
    let (gw, _dir) = start_gateway(&yaml);

    let statuses = get_n(&gw, "rr", 600).await;
    assert!(statuses.iter().all(|&s| s == 200));
    let shares = [a.hits(), b.hits(), c.hits()];
    // Smooth weighted round robin is exact over whole periods, whatever the worker.
    assert_eq!(shares, [100, 200, 300]);

    let statuses = get_n(&gw, "lr", 600).await;
    assert!(statuses.iter().all(|&s| s == 200));
    let shares = [a.hits() - 100, b.hits() - 200, c.hits() - 300];
    // One request at a time: least-request draws by weight; roughly 100/200/300.
    assert!(shares[0] < shares[1] && shares[1] < shares[2], "{shares:?}");
    assert!((40..170).contains(&shares[0]), "{shares:?}");
    assert!((200..400).contains(&shares[2]), "{shares:?}");
    gw.stop();
}

/// Two `config` documents in one: their `backends:` and `apis:` lists joined.
fn merge_sections(yaml: &str) -> String {
    let mut backends = String::new();
    let mut apis = String::new();
    let mut into_apis = false;
    for line in yaml.lines() {
        match line {
            "backends:" => into_apis = false,
            "apis:" => into_apis = true,
            "" | "apiVersion: outpost/v1" => {}
            l if into_apis => {
                apis.push_str(l);
                apis.push('\n');
            }
            l => {
                backends.push_str(l);
                backends.push('\n');
            }
        }
    }
    format!("apiVersion: outpost/v1\nbackends:\n{backends}apis:\n{apis}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_out_a_member_whose_health_path_answers_503_and_bring_it_back() {
    let (a, b) = (Switchable::start().await, Switchable::start().await);
    let pool = format!(
        "{}    health-check: {{path: /health, interval-ms: 100, timeout-ms: 100, healthy-threshold: 2, unhealthy-threshold: 2}}\n",
        members_yaml(&[(&a, 1), (&b, 1)])
    );
    let (gw, _dir) = start_gateway(&config("checked", &pool));
    b.health.store(503, Ordering::Relaxed);
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(20),
        async || match metric(&gw, "outpost_backend_member_healthy", "checked", &b.url()).await {
            Some(0.0) => Ok(()),
            other => Err(format!("healthy {other:?}")),
        },
    )
    .await
    .unwrap();
    assert!(b.checks.load(Ordering::Relaxed) >= 2);
    let before = b.hits();
    let statuses = get_n(&gw, "checked", 20).await;
    assert!(statuses.iter().all(|&s| s == 200));
    assert_eq!(
        b.hits(),
        before,
        "a member failing its checks gets no traffic"
    );
    assert!(a.hits() >= 20);

    // Healthy again: back in rotation.
    b.health.store(200, Ordering::Relaxed);
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(20),
        async || {
            get_n(&gw, "checked", 2).await;
            if b.hits() > before {
                Ok(())
            } else {
                Err("the member that passes its checks again gets no traffic".to_owned())
            }
        },
    )
    .await
    .unwrap();
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opens_on_errors_and_a_probe_closes_it_after_the_cool_down() {
    let (a, b) = (Switchable::start().await, Switchable::start().await);
    let (c, d) = (Switchable::start().await, Switchable::start().await);
    // Passive ejection off, so only the breaker acts; 500 counts as a failure.
    let rules = |open_ms: u64| {
        format!(
            "    passive-health: {{consecutive-failures: 0, failure-statuses: [500]}}\n    circuit-breaker: {{error-rate-percent: 50, window-ms: 600000, min-requests: 4, open-ms: {open_ms}}}\n"
        )
    };
    let yaml = merge_sections(&format!(
        "{}{}",
        config(
            "stays-open",
            &format!("{}{}", members_yaml(&[(&a, 1), (&b, 1)]), rules(600_000))
        ),
        config(
            "half-opens",
            &format!("{}{}", members_yaml(&[(&c, 1), (&d, 1)]), rules(300))
        ),
    ));
    let (gw, _dir) = start_gateway(&yaml);

    // Open: after its errors, the member gets nothing for as long as the breaker stays open.
    b.traffic.store(500, Ordering::Relaxed);
    let statuses = get_n(&gw, "stays-open", 12).await;
    assert!(statuses.contains(&500));
    assert_eq!(
        metric(
            &gw,
            "outpost_backend_member_breaker_state",
            "stays-open",
            &b.url()
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &gw,
            "outpost_backend_member_breaker_opened_total",
            "stays-open",
            &b.url()
        )
        .await,
        Some(1.0)
    );
    let before = b.hits();
    let statuses = get_n(&gw, "stays-open", 20).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(b.hits(), before);

    // Half-open: after the cool-down one probe at a time reaches the member; while it fails
    // the breaker opens again, once it succeeds the breaker closes and traffic returns.
    d.traffic.store(500, Ordering::Relaxed);
    get_n(&gw, "half-opens", 12).await;
    let opened = d.hits();
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        async || {
            get_n(&gw, "half-opens", 2).await;
            if d.hits() > opened {
                Ok(())
            } else {
                Err("no probe yet".to_owned())
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        metric(
            &gw,
            "outpost_backend_member_breaker_state",
            "half-opens",
            &d.url()
        )
        .await,
        Some(1.0),
        "the failed probe opened it again"
    );
    d.traffic.store(200, Ordering::Relaxed);
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        async || {
            get_n(&gw, "half-opens", 2).await;
            match metric(
                &gw,
                "outpost_backend_member_breaker_state",
                "half-opens",
                &d.url(),
            )
            .await
            {
                Some(0.0) => Ok(()),
                other => Err(format!("breaker state {other:?}")),
            }
        },
    )
    .await
    .unwrap();
    let closed = d.hits();
    get_n(&gw, "half-opens", 10).await;
    assert!(
        d.hits() >= closed + 4,
        "closed: the member shares the traffic again"
    );
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_requests_fail_over_for_any_method_sent_ones_only_when_idempotent() {
    let (dropper, good) = (Switchable::start().await, Switchable::start().await);
    dropper.traffic.store(0, Ordering::Relaxed);
    let closed = format!("http://127.0.0.1:{}", free_port());
    let no_ejection = "    passive-health: {consecutive-failures: 0}\n";
    let yaml = merge_sections(&format!(
        "{}{}",
        config(
            "drops",
            &format!(
                "{}{no_ejection}",
                members_yaml(&[(&dropper, 1), (&good, 1)])
            )
        ),
        config(
            "refuses",
            &format!(
                "    members:\n      - {{url: \"{closed}\"}}\n      - {{url: {}}}\n{no_ejection}",
                good.url()
            )
        ),
    ));
    let (gw, _dir) = start_gateway(&yaml);
    let client = reqwest::Client::new();
    let call = async |method: reqwest::Method, api: &str| {
        client
            .request(method, format!("{}/{api}/x", gw.traffic_url()))
            .send()
            .await
            .expect("the gateway answers")
            .status()
            .as_u16()
    };

    // Never sent (connection refused): every method goes to the other member.
    for method in [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::PATCH,
    ] {
        for _ in 0..4 {
            assert_eq!(call(method.clone(), "refuses").await, 200, "{method}");
        }
    }
    // Sent, then the connection closed unanswered: GET and PUT go to the other member; a POST
    // that reached the member that drops it is not sent twice.
    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        for _ in 0..4 {
            assert_eq!(call(method.clone(), "drops").await, 200, "{method}");
        }
    }
    let dropped_before = dropper.hits();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let answer = client
            .post(format!("{}/drops/x", gw.traffic_url()))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        if status == 502 {
            // The answer names the member that failed.
            let body = answer.text().await.unwrap();
            assert!(
                body.contains(&format!("Pool member: {}.", dropper.url())),
                "{body}"
            );
        }
        statuses.push(status);
    }
    let reached_dropper = dropper.hits() - dropped_before;
    assert!(
        reached_dropper >= 1,
        "round robin sends some to each member"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count() as u64,
        reached_dropper,
        "{statuses:?}: each POST the dropping member took is answered 502, once"
    );
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_retry_policy_each_attempt_goes_to_another_member_body_and_all() {
    let (failing, good) = (Switchable::start().await, Switchable::start().await);
    failing.traffic.store(503, Ordering::Relaxed);
    let closed = format!("http://127.0.0.1:{}", free_port());
    let pool = format!(
        "    members:\n      - {{url: \"{closed}\"}}\n      - {{url: {}}}\n      - {{url: {}}}\n    passive-health: {{consecutive-failures: 0}}\n",
        failing.url(),
        good.url()
    );
    let yaml = config("retried", &pool).replace(
        "      - {name: any, method: \"*\", url-template: \"/{*rest}\"}\n",
        "      - {name: any, method: \"*\", url-template: \"/{*rest}\"}\n    policies:\n      backend:\n        - retry: {count: 2, interval-ms: 0, condition: \"503\"}\n",
    );
    assert!(yaml.contains("retry:"), "{yaml}");
    let (gw, _dir) = start_gateway(&yaml);
    let client = reqwest::Client::new();
    for i in 0..6 {
        let body = format!("order {i}");
        let answer = client
            .post(format!("{}/retried/orders", gw.traffic_url()))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "request {i}");
        assert_eq!(
            good.bodies.lock().unwrap().last().map(|b| b.as_slice()),
            Some(body.as_bytes()),
            "the body held for the retry reaches the member that answers"
        );
    }
    // The failing member was tried too (and its 503 retried elsewhere), with the same body.
    assert!(failing.hits() >= 1);
    assert!(
        failing
            .bodies
            .lock()
            .unwrap()
            .iter()
            .all(|b| b.starts_with(b"order "))
    );
    gw.stop();
}

// === bodies that stream, WebSocket and HTTP/2 members ===

/// A counter with only a `backend` label (`outpost_backend_member_failovers_total`).
async fn backend_counter(gw: &RunningGateway, name: &str, backend: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", gw.ops_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(&format!("backend=\"{backend}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The body of request `seed`: `size` bytes of a pattern of its own.
fn body_of(seed: u8, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// POSTs `body` to `path` through the gateway over a raw HTTP/1.1 connection, streamed as the
/// client produces it: 64 KiB at a time with pauses (a slow source, and more than any buffer on
/// the way holds), chunked or with a `Content-Length`. The gateway cannot hold it whole: no
/// `retry` policy runs. Returns the status and the response body (the connection closes after
/// it).
async fn post_streamed(
    gw: &RunningGateway,
    path: &str,
    body: Vec<u8>,
    chunked: bool,
) -> (u16, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(gw.traffic_addr())
        .await
        .unwrap();
    let (mut read, mut write) = tcp.into_split();
    let framing = if chunked {
        "transfer-encoding: chunked".to_owned()
    } else {
        format!("content-length: {}", body.len())
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: pools.test\r\ncontent-type: application/octet-stream\r\n{framing}\r\nconnection: close\r\n\r\n"
    );
    // Written beside the read: an answer that comes before the whole body (a refusal) must not
    // leave the writer stuck.
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        for (i, chunk) in body.chunks(64 << 10).enumerate() {
            if chunked {
                write
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                write.write_all(chunk).await?;
                write.write_all(b"\r\n").await?;
            } else {
                write.write_all(chunk).await?;
            }
            if i % 4 == 3 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        if chunked {
            write.write_all(b"0\r\n\r\n").await?;
        }
        write.flush().await?;
        // Kept open (half) until the answer has been read.
        Ok::<_, std::io::Error>(write)
    });
    // Read as far as the answer's own framing says: an answer before the whole body was
    // taken (a refusal) need not close the connection.
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while !answer_complete(&answer) {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    writer.abort();
    let at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head in {:?}", String::from_utf8_lossy(&answer)));
    let head = String::from_utf8_lossy(&answer[..at]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let mut rest = &answer[at + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return (status, rest.to_vec());
    }
    let mut decoded = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            return (status, decoded);
        }
        decoded.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Whether `answer` holds a whole response: its head, and its body by `Content-Length` or to
/// the last chunk.
fn answer_complete(answer: &[u8]) -> bool {
    let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..at]).to_ascii_lowercase();
    let body = &answer[at + 4..];
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| body.len() >= len)
}

/// What the member's answer says it received: `(bodyBytes, bodySha256)`.
fn received(answer: &[u8]) -> (u64, String) {
    let json: serde_json::Value = serde_json::from_slice(answer)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(answer)));
    (
        json["bodyBytes"].as_u64().unwrap(),
        json["bodySha256"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_goes_to_another_member_when_the_first_refuses_the_connection() {
    // A real member (`outpost sample-backend`, which answers with the length and SHA-256 of the
    // body it got), a port nobody listens on, and a member that closes the connection once it
    // has read a request.
    let live = SampleMember::start("streamed-live").await;
    let dropper = Switchable::start().await;
    dropper.traffic.store(0, Ordering::Relaxed);
    let closed = format!("http://127.0.0.1:{}", free_port());
    // The closed port stays in rotation: every other request picks it first.
    let no_ejection = "    passive-health: {consecutive-failures: 0}\n";
    let yaml = merge_sections(&format!(
        "{}{}",
        config(
            "streams",
            &format!(
                "    members:\n      - {{url: \"{closed}\"}}\n      - {{url: {}}}\n{no_ejection}",
                live.url()
            )
        ),
        config(
            "sentonce",
            &format!(
                "    members:\n      - {{url: {}}}\n      - {{url: {}}}\n{no_ejection}",
                dropper.url(),
                live.url()
            )
        ),
    ));
    let (gw, _dir) = start_gateway(&yaml);

    // Never sent: a POST whose body streams (chunked, 6 MiB, no `retry` policy to hold it)
    // goes whole to the live member, every time.
    let size = 6 << 20;
    let mut failures = Vec::new();
    for i in 0..12u8 {
        let body = body_of(i, size);
        let digest = sha256_hex(&body);
        let (status, answer) = post_streamed(&gw, "/streams/upload", body, true).await;
        if status != 200 {
            failures.push(format!(
                "request {i}: {status} {}",
                String::from_utf8_lossy(&answer)
            ));
            continue;
        }
        assert_eq!(received(&answer), (size as u64, digest), "request {i}");
    }
    assert!(failures.is_empty(), "{failures:?}");
    let failovers = backend_counter(&gw, "outpost_backend_member_failovers_total", "streams").await;
    assert!(
        failovers >= 5.0,
        "round robin picked the closed port first about every other request: {failovers}"
    );

    // Sent: once bytes of a streamed body went to a member, it goes nowhere else. The member
    // that takes the body and closes the connection answers 502, once per request it got.
    let before = dropper.hits();
    let mut statuses = Vec::new();
    for i in 0..6u8 {
        let body = body_of(i, 1 << 20);
        let (status, _) = post_streamed(&gw, "/sentonce/upload", body, false).await;
        statuses.push(status);
    }
    let reached_dropper = dropper.hits() - before;
    assert!(
        reached_dropper >= 1,
        "round robin sends some to each member"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count() as u64,
        reached_dropper,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count() as u64,
        6 - reached_dropper,
        "{statuses:?}"
    );
    assert!(
        dropper
            .bodies
            .lock()
            .unwrap()
            .iter()
            .all(|b| b.len() == 1 << 20),
        "the dropping member got whole bodies"
    );
    gw.stop();
}

/// A WebSocket echo server: every text and binary message goes back. Counts handshakes.
async fn ws_echo() -> (SocketAddr, Arc<AtomicU64>) {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicU64::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, handshakes)
}

/// Opens a WebSocket through the gateway to `path` and sends one message, which must come back.
/// `Err(status)`: the handshake was answered with that status instead of 101.
async fn ws_round_trip(gw: &RunningGateway, path: &str, text: &str) -> Result<(), u16> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Error, Message};
    let tcp = tokio::net::TcpStream::connect(gw.traffic_addr())
        .await
        .unwrap();
    let url = format!("ws://{}{path}", gw.traffic_addr());
    let mut ws = match tokio_tungstenite::client_async(url, tcp).await {
        Ok((ws, _)) => ws,
        Err(Error::Http(res)) => return Err(res.status().as_u16()),
        Err(e) => panic!("handshake: {e}"),
    };
    ws.send(Message::text(text)).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("the echo comes back")
        .expect("the stream is open")
        .unwrap();
    assert_eq!(echoed, Message::text(text));
    let _ = ws.close(None).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_handshakes_fail_over_and_count_for_the_members_health() {
    let (echo, handshakes) = ws_echo().await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let refuser = Switchable::start().await;
    refuser.traffic.store(503, Ordering::Relaxed);
    let yaml = merge_sections(&format!(
        "{}{}{}",
        // The closed port stays in rotation.
        config(
            "wsover",
            &format!(
                "    members:\n      - {{url: \"{closed}\"}}\n      - {{url: \"http://{echo}\"}}\n    passive-health: {{consecutive-failures: 0}}\n"
            )
        ),
        // Ejected after two failures in a row, for longer than the test.
        config(
            "wsrefused",
            &format!(
                "    members:\n      - {{url: \"{closed}\"}}\n      - {{url: \"http://{echo}\"}}\n    passive-health: {{consecutive-failures: 2, ejection-ms: 600000}}\n"
            )
        ),
        config(
            "ws503",
            &format!(
                "    members:\n      - {{url: {}}}\n      - {{url: \"http://{echo}\"}}\n    passive-health: {{consecutive-failures: 2, ejection-ms: 600000, failure-statuses: [503]}}\n",
                refuser.url()
            )
        ),
    ));
    let (gw, _dir) = start_gateway(&yaml);

    // A member that refuses the connection: the handshake goes to the other one, every time.
    for i in 0..8 {
        assert_eq!(
            ws_round_trip(&gw, "/wsover/chat", &format!("hello {i}")).await,
            Ok(()),
            "handshake {i}"
        );
    }
    assert_eq!(handshakes.load(Ordering::Relaxed), 8);
    let failovers = backend_counter(&gw, "outpost_backend_member_failovers_total", "wsover").await;
    assert!(failovers >= 3.0, "{failovers}");

    // Each refused connection counts against the member as a request's would: ejected.
    for i in 0..6 {
        assert_eq!(
            ws_round_trip(&gw, "/wsrefused/chat", &format!("again {i}")).await,
            Ok(())
        );
    }
    assert_eq!(
        metric(
            &gw,
            "outpost_backend_member_ejections_total",
            "wsrefused",
            &closed
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(&gw, "outpost_backend_member_healthy", "wsrefused", &closed).await,
        Some(0.0)
    );

    // A member that answers the handshake with a failure status: the client gets that answer
    // (the member had the request), and the member is ejected after two; then every
    // handshake reaches the echo.
    let mut refused = 0;
    for i in 0..6 {
        match ws_round_trip(&gw, "/ws503/chat", &format!("third {i}")).await {
            Ok(()) => {}
            Err(503) => refused += 1,
            Err(other) => panic!("handshake {i}: {other}"),
        }
    }
    assert_eq!(refused, 2, "two 503s, then the member is out");
    assert_eq!(refuser.hits(), 2);
    assert_eq!(
        metric(
            &gw,
            "outpost_backend_member_ejections_total",
            "ws503",
            &refuser.url()
        )
        .await,
        Some(1.0)
    );
    for i in 0..4 {
        assert_eq!(
            ws_round_trip(&gw, "/ws503/chat", &format!("fourth {i}")).await,
            Ok(())
        );
    }
    assert_eq!(refuser.hits(), 2);
    gw.stop();
}

/// An HTTP/2 (h2c) member that answers every request with the length and SHA-256 of its body,
/// as `outpost sample-backend` does.
async fn h2c_digest_member() -> SocketAddr {
    use sha2::Digest;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut sha = sha2::Sha256::new();
                        let mut n = 0u64;
                        while let Some(chunk) = body.data().await {
                            let Ok(chunk) = chunk else { return };
                            let _ = body.flow_control().release_capacity(chunk.len());
                            n += chunk.len() as u64;
                            sha.update(&chunk);
                        }
                        let text = serde_json::json!({
                            "bodyBytes": n,
                            "bodySha256": hex::encode(sha.finalize()),
                        })
                        .to_string();
                        let res = http::Response::builder().status(200).body(()).unwrap();
                        if let Ok(mut stream) = respond.send_response(res, false) {
                            let _ = stream.send_data(text.into(), true);
                        }
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_a_streamed_body_goes_to_another_member_when_the_first_refuses() {
    let live = h2c_digest_member().await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let pool = format!(
        "    protocol: h2\n    members:\n      - {{url: \"{closed}\"}}\n      - {{url: \"http://{live}\"}}\n    passive-health: {{consecutive-failures: 0}}\n"
    );
    let (gw, _dir) = start_gateway(&config("h2streams", &pool));
    let size = 3 << 20;
    for i in 0..8u8 {
        let body = body_of(i, size);
        let digest = sha256_hex(&body);
        let (status, answer) = post_streamed(&gw, "/h2streams/upload", body, true).await;
        assert_eq!(
            status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&answer)
        );
        assert_eq!(received(&answer), (size as u64, digest), "request {i}");
    }
    let failovers =
        backend_counter(&gw, "outpost_backend_member_failovers_total", "h2streams").await;
    assert!(failovers >= 3.0, "{failovers}");
    gw.stop();
}
