//! Rate limits, quotas and the cache across real gateway instances (offline mode, one config
//! file) sharing one real `redis-server` spawned by the test on a free port, and the same policy
//! tests over the in-process store.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use outpost::gateway::settings::GatewaySettings;
use outpost::gateway::{self, RunningGateway};
use outpost_actors::connectivity::RedisState;
use outpost_integration::{TestPki, free_port};

// === helpers ===

/// A private `redis-server` (append-only file, so a restart keeps the counters).
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// TLS: its port, and the server's TLS arguments. The plain port stays open for the test.
    tls: Option<(u16, Vec<String>)>,
}

impl Redis {
    fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            tls: None,
        };
        r.spawn();
        r
    }

    /// Serving TLS with `pki`'s server certificate and demanding a client certificate from
    /// its CA (`tls-auth-clients yes`).
    fn start_tls(pki: &TestPki) -> Redis {
        let tls_port = free_port();
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            tls: Some((tls_port, pki.redis_server_args(tls_port, "yes"))),
        };
        r.spawn();
        r
    }

    fn url(&self) -> String {
        match &self.tls {
            Some((tls_port, _)) => format!("rediss://127.0.0.1:{tls_port}"),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(self.tls.iter().flat_map(|(_, args)| args))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        eventually("redis answers", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok_and(|mut s| {
                let mut buf = [0u8; 7];
                s.write_all(b"PING\r\n").is_ok()
                    && std::io::Read::read_exact(&mut s, &mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
            })
        });
    }

    /// `redis-cli` against this server (its plain port), the output as text.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A backend that counts its requests and answers each after 300 ms.
struct Backend {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Backend {
    fn start() -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || serve(conn, &counter));
            }
        });
        Backend { port, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn serve(conn: TcpStream, hits: &AtomicUsize) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    loop {
        let mut line = String::new();
        let mut path = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if path.is_empty() {
                path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            }
            if line == "\r\n" {
                break;
            }
        }
        let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
        std::thread::sleep(Duration::from_millis(300));
        let body = format!("{path} #{n}");
        let res = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(res.as_bytes()).is_err() {
            return;
        }
    }
}

fn doc(backend_port: u16) -> String {
    format!(
        r#"
apiVersion: outpost/v1
backends:
  - {{name: be, url: "http://127.0.0.1:{backend_port}"}}
apis:
  - name: limited
    path: limited
    backend: be
    subscription-required: false
    operations:
      - {{name: get, method: GET, url-template: /hello}}
    policies:
      inbound:
        - rate-limit-by-key: {{calls: 100, renewal-period: 60, counter-key: "all", outage: local}}
        - return-response: {{status-code: 200, body: ok}}
  - name: outage
    path: outage
    backend: be
    subscription-required: false
    operations:
      - {{name: get, method: GET, url-template: /hello}}
    policies:
      inbound:
        - rate-limit-by-key: {{calls: 30, renewal-period: 60, counter-key: "all", outage: local}}
        - return-response: {{status-code: 200, body: ok}}
  - name: leased
    path: leased
    backend: be
    subscription-required: false
    operations:
      - {{name: get, method: GET, url-template: /hello}}
    policies:
      inbound:
        - rate-limit-by-key: {{calls: 100, renewal-period: 60, counter-key: "all", local-budget: 10}}
        - return-response: {{status-code: 200, body: ok}}
  - name: quota
    path: quota
    backend: be
    subscription-required: false
    operations:
      - {{name: get, method: GET, url-template: /hello}}
    policies:
      inbound:
        - quota-by-key: {{calls: 5, renewal-period: 3600, counter-key: "{{request.header.X-Tenant}}"}}
        - return-response: {{status-code: 200, body: ok}}
  - name: ratequota
    path: ratequota
    backend: be
    subscription-required: false
    operations:
      - {{name: get, method: GET, url-template: /hello}}
    policies:
      inbound:
        - rate-limit-by-key: {{calls: 3, renewal-period: 3, counter-key: "all"}}
        - quota-by-key: {{calls: 5, renewal-period: 3600, counter-key: "all"}}
        - return-response: {{status-code: 200, body: ok}}
  - name: cached
    path: cached
    backend: be
    subscription-required: false
    operations:
      - {{name: get, method: GET, url-template: "/{{id}}"}}
    policies:
      inbound:
        - cache-lookup: {{}}
      outbound:
        - cache-store: {{duration: 60}}
gateways:
  - {{name: site, apis: [limited, leased, outage, quota, ratequota, cached]}}
"#
    )
}

struct Site {
    _dir: tempfile::TempDir,
    settings: GatewaySettings,
}

impl Site {
    fn new(backend: &Backend, redis: Option<&Redis>, nodes: u64) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("site.yaml");
        std::fs::write(&file, doc(backend.port)).unwrap();
        let mut s = GatewaySettings::default();
        s.offline.config_file = Some(file);
        s.listen.http = "127.0.0.1:0".into();
        s.listen.https = Some("127.0.0.1:0".into());
        s.listen.ops = "127.0.0.1:0".into();
        if let Some(r) = redis {
            s.redis.url = Some(r.url());
            // Generous: on a loaded test machine a timed-out call would count locally.
            s.redis.timeout = Duration::from_millis(2000);
            s.redis.nodes = nodes;
        }
        Site {
            _dir: dir,
            settings: s,
        }
    }

    fn gateway(&self) -> RunningGateway {
        gateway::start(self.settings.clone()).expect("gateway starts")
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn get(gw: &RunningGateway, path: &str) -> reqwest::blocking::Response {
    http()
        .get(format!("{}{path}", gw.traffic_url()))
        .send()
        .expect("the gateway answers")
}

/// Status counts of `n` requests spread round robin over `gws`.
fn round_robin(gws: &[RunningGateway], path: &str, n: usize) -> (usize, usize, usize) {
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for i in 0..n {
        let res = get(&gws[i % gws.len()], path);
        match res.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert!(res.headers().contains_key("retry-after"));
                assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
                limited += 1;
            }
            s => {
                eprintln!("unexpected {s}: {:?}", res.text());
                other += 1;
            }
        }
    }
    (ok, limited, other)
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// === tests ===

#[test]
fn limits_are_exact_across_three_gateways() {
    let redis = Redis::start();
    let backend = Backend::start();
    let site = Site::new(&backend, Some(&redis), 3);
    let gws: Vec<_> = (0..3).map(|_| site.gateway()).collect();
    assert_eq!(round_robin(&gws, "/limited/hello", 300), (100, 200, 0));
    let ok = get(&gws[0], "/limited/hello");
    assert_eq!(ok.status(), 429);
    let retry: u64 = ok.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=63).contains(&retry), "{retry}");
}

/// `[redis]` over TLS end to end: a `rediss://` URL, the private CA from `tls_ca_file`, and the
/// client certificate from `tls_cert_file`/`tls_key_file` that the server demands; three
/// gateways count exactly through it. A PEM file that cannot be read stops the start, naming
/// the setting.
#[test]
fn limits_are_exact_across_three_gateways_over_tls() {
    let pki = TestPki::new();
    let redis = Redis::start_tls(&pki);
    let backend = Backend::start();
    let mut site = Site::new(&backend, Some(&redis), 3);
    site.settings.redis.tls_ca_file = Some(pki.path("ca.pem").into());
    site.settings.redis.tls_cert_file = Some(pki.path("client.pem").into());
    site.settings.redis.tls_key_file = Some(pki.path("client.key").into());
    let gws: Vec<_> = (0..3).map(|_| site.gateway()).collect();
    eventually("every node connected over TLS", || {
        gws.iter()
            .all(|g| g.status().redis.state == RedisState::Connected)
    });
    assert_eq!(round_robin(&gws, "/limited/hello", 300), (100, 200, 0));

    let mut missing = site.settings.clone();
    missing.redis.tls_key_file = Some(site._dir.path().join("nope.key"));
    missing.redis.tls_cert_file = Some(site._dir.path().join("nope.pem"));
    let err = gateway::start(missing)
        .err()
        .expect("missing files stop the start")
        .to_string();
    assert!(
        err.contains("redis.tls_key_file") && err.contains("redis.tls_cert_file"),
        "both named: {err}"
    );
    let mut not_pem = site.settings.clone();
    not_pem.redis.tls_ca_file = Some(site._dir.path().join("site.yaml"));
    let err = gateway::start(not_pem)
        .err()
        .expect("a non-PEM CA file stops the start")
        .to_string();
    assert!(err.contains("no certificate"), "{err}");
    // A certificate where the key should be: refused at start too, not a Redis outage later.
    let mut swapped = site.settings.clone();
    swapped.redis.tls_key_file = Some(pki.path("client.pem").into());
    let err = gateway::start(swapped)
        .err()
        .expect("a key file without a key stops the start")
        .to_string();
    assert!(
        err.contains("redis.tls_key_file") && err.contains("no private key"),
        "{err}"
    );
}

/// The same limit under concurrency: 30 clients at once, 10 per gateway, so that checks of the
/// counter are coalesced into shared script calls on each node. Still exactly the limit, and
/// every admitted response reports a different remaining count (the calls decided them one
/// after the other).
#[test]
fn limits_are_exact_across_three_gateways_under_concurrency() {
    let redis = Redis::start();
    let backend = Backend::start();
    let site = Site::new(&backend, Some(&redis), 3);
    let gws: Vec<_> = (0..3).map(|_| site.gateway()).collect();
    let outcomes: Vec<(u16, Option<u64>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..30)
            .map(|t| {
                let url = format!("{}/limited/hello", gws[t % 3].traffic_url());
                s.spawn(move || {
                    let client = http();
                    (0..10)
                        .map(|_| {
                            let res = client.get(&url).send().expect("the gateway answers");
                            let remaining = res
                                .headers()
                                .get("x-ratelimit-remaining")
                                .and_then(|v| v.to_str().ok()?.parse().ok());
                            (res.status().as_u16(), remaining)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let ok: Vec<u64> = outcomes
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, remaining)| remaining.expect("admitted responses carry the remaining count"))
        .collect();
    let limited = outcomes.iter().filter(|(status, _)| *status == 429).count();
    assert_eq!((ok.len(), limited), (100, 200), "{outcomes:?}");
    let mut remaining = ok;
    remaining.sort_unstable();
    assert_eq!(remaining, (0..100).collect::<Vec<u64>>());
}

/// `local-budget`: 30 clients at once over three gateways, each gateway's threads admitting
/// from leases of the counter. Never more than the limit; at least the limit less what the
/// other holders may keep leased (each at most twice its budget: a lease and a top-up); and
/// once the leases' slot is over, their unused units are given back, so Redis holds exactly
/// what was admitted.
#[test]
fn a_local_budget_never_exceeds_the_limit_across_three_gateways() {
    let redis = Redis::start();
    let backend = Backend::start();
    let site = Site::new(&backend, Some(&redis), 3);
    let gws: Vec<_> = (0..3).map(|_| site.gateway()).collect();
    let statuses: Vec<(u16, bool)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..30)
            .map(|t| {
                let url = format!("{}/leased/hello", gws[t % 3].traffic_url());
                s.spawn(move || {
                    let client = http();
                    (0..10)
                        .map(|_| {
                            let res = client.get(&url).send().expect("the gateway answers");
                            let remaining = res.headers().contains_key("x-ratelimit-remaining");
                            (res.status().as_u16(), remaining)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    let limited = statuses.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(ok + limited, 300, "{statuses:?}");
    assert!(statuses.iter().all(|(_, remaining)| *remaining));
    // Holders: 3 gateways × (their traffic workers + the main thread) on this machine; two
    // budgets of 10 each at most.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    let held = (3 * threads * 2 * 10).min(100);
    assert!(ok <= 100 && ok >= 100 - held, "{ok} admitted");
    eventually("unused leased units given back", || {
        let keys = redis.cli(&["--scan", "--pattern", "outpost:rl:2:*leased*"]);
        let key = keys.trim();
        !key.is_empty() && redis.cli(&["HGET", key, "t"]).trim() == ok.to_string()
    });
}

/// A rate limit right before a quota: both checks go out together (one round trip), with the
/// outcome of running them in order. The calls the rate limit refuses must not use the quota.
fn rate_limit_then_quota_keeps_the_order(gws: &[RunningGateway]) {
    let statuses = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|i| {
                get(&gws[i % gws.len()], "/ratequota/hello")
                    .status()
                    .as_u16()
            })
            .collect()
    };
    // 3 per 3 s: three admitted (quota 3 of 5), three refused by the rate limit.
    assert_eq!(statuses(6), [200, 200, 200, 429, 429, 429]);
    std::thread::sleep(Duration::from_millis(3_300));
    // The window has slid: two more fit the quota (5 of 5), then the quota's 403. Had the
    // refused calls been counted, the quota would be spent already.
    assert_eq!(statuses(3), [200, 200, 403]);
}

#[test]
fn rate_limit_then_quota_over_redis() {
    let redis = Redis::start();
    let backend = Backend::start();
    let site = Site::new(&backend, Some(&redis), 2);
    let gws: Vec<_> = (0..2).map(|_| site.gateway()).collect();
    rate_limit_then_quota_keeps_the_order(&gws);
}

#[test]
fn limits_over_the_in_process_store() {
    let backend = Backend::start();
    let site = Site::new(&backend, None, 1);
    let gw = site.gateway();
    assert_eq!(
        round_robin(std::slice::from_ref(&gw), "/limited/hello", 300),
        (100, 200, 0)
    );
    let first = get(&gw, "/quota/hello");
    assert_eq!(first.status(), 200);
    rate_limit_then_quota_keeps_the_order(std::slice::from_ref(&gw));
}

#[test]
fn a_quota_survives_a_gateway_restart() {
    let redis = Redis::start();
    let backend = Backend::start();
    let site = Site::new(&backend, Some(&redis), 1);
    let call = |gw: &RunningGateway, tenant: &str| {
        http()
            .get(format!("{}/quota/hello", gw.traffic_url()))
            .header("X-Tenant", tenant)
            .send()
            .unwrap()
    };
    let gw = site.gateway();
    for _ in 0..3 {
        assert_eq!(call(&gw, "t1").status(), 200);
    }
    gw.stop();
    let gw = site.gateway();
    assert_eq!(call(&gw, "t1").status(), 200);
    assert_eq!(call(&gw, "t1").status(), 200);
    let refused = call(&gw, "t1");
    assert_eq!(refused.status(), 403);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry));
    assert!(refused.text().unwrap().contains("Out of call volume quota"));
    // Another key has its own quota.
    assert_eq!(call(&gw, "t2").status(), 200);
}

fn cache_body(gw: &RunningGateway, path: &str) -> String {
    let res = get(gw, path);
    assert_eq!(res.status(), 200);
    res.text().unwrap()
}

#[test]
fn the_cache_is_shared_by_nodes_and_coalesces_misses() {
    let redis = Redis::start();
    let backend = Backend::start();
    let site = Site::new(&backend, Some(&redis), 2);
    let a = site.gateway();
    let b = site.gateway();
    assert_eq!(cache_body(&a, "/cached/1"), "/1 #1");
    assert_eq!(
        cache_body(&b, "/cached/1"),
        "/1 #1",
        "a hit on the other node"
    );
    assert_eq!(backend.hits(), 1);
    let res = get(&b, "/cached/1");
    assert!(res.headers().contains_key("age"));

    // 10 concurrent misses for one key on one node: one backend call.
    let before = backend.hits();
    let url = format!("{}/cached/hot", a.traffic_url());
    let bodies: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| s.spawn(|| http().get(&url).send().unwrap().text().unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(backend.hits() - before, 1, "{bodies:?}");
    assert!(bodies.iter().all(|b| b == &bodies[0]));

    // A client saying no-cache goes to the backend.
    let fresh = http()
        .get(format!("{}/cached/1", a.traffic_url()))
        .header("Cache-Control", "no-cache")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_ne!(fresh, "/1 #1");
}

#[test]
fn the_cache_over_the_in_process_store() {
    let backend = Backend::start();
    let site = Site::new(&backend, None, 1);
    let a = site.gateway();
    assert_eq!(cache_body(&a, "/cached/1"), "/1 #1");
    assert_eq!(cache_body(&a, "/cached/1"), "/1 #1");
    assert_eq!(backend.hits(), 1);
}

#[test]
fn redis_killed_mid_run_then_restarted() {
    let mut redis = Redis::start();
    let backend = Backend::start();
    let site = Site::new(&backend, Some(&redis), 3);
    let gws: Vec<_> = (0..3).map(|_| site.gateway()).collect();
    // Limit 30/min shared: 15 used.
    assert_eq!(round_robin(&gws, "/outage/hello", 15), (15, 0, 0));

    assert!(
        gws.iter()
            .all(|g| g.status().redis.state == RedisState::Connected)
    );
    redis.kill();
    // No request fails; each node enforces its share, ceil(30 / 3) = 10.
    assert_eq!(round_robin(&gws, "/outage/hello", 60), (30, 30, 0));
    // The cache degrades to the in-process tier.
    assert_eq!(
        cache_body(&gws[0], "/cached/down"),
        cache_body(&gws[0], "/cached/down")
    );

    redis.restart();
    // Reconnected (probe every 500 ms): shared counting resumes from the 15 Redis kept, and
    // each node adds the 10 it admitted alone during the outage: 45 of 30 used in this window,
    // so the site admits nothing more until it slides (without the replay it would admit 15).
    eventually("every node reconnected", || {
        gws.iter()
            .all(|g| g.status().redis.state == RedisState::Connected)
    });
    eventually("the outage counts are in Redis", || {
        let keys = redis.cli(&["--scan", "--pattern", "outpost:rl:2:*"]);
        let key = keys.trim();
        !key.is_empty() && redis.cli(&["HGET", key, "t"]).trim() == "45"
    });
    assert_eq!(round_robin(&gws, "/outage/hello", 60), (0, 60, 0));
}
