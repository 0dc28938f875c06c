//! Shared-state policies side by side: no policy vs local rate limit vs Redis rate limit vs
//! cache hit (local tier) vs cache hit (Redis tier only), through a real gateway (offline mode,
//! in this process) driven by `wrk`, plus Redis round trips per request from
//! `INFO commandstats`.
//!
//! `cargo bench --bench gateway_policies` (needs `wrk` and `redis-server`;
//! `BENCH_SECS` sets the duration of each run, default 5). Results: docs/benchmarks.md,
//! "Shared state".

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outpost::gateway::settings::GatewaySettings;
use outpost::gateway::{self, RunningGateway};
use outpost_integration::free_port;

const DOC: &str = r#"
apiVersion: outpost/v1
backends:
  - {name: be, url: "http://127.0.0.1:BACKEND"}
apis:
  - name: plain
    path: plain
    backend: be
    subscription-required: false
    operations: [{name: get, method: GET, url-template: /x}]
    policies:
      inbound: [{return-response: {status-code: 200, body: "hello world"}}]
  - name: limited
    path: limited
    backend: be
    subscription-required: false
    operations: [{name: get, method: GET, url-template: /x}]
    policies:
      inbound:
        - rate-limit-by-key: {calls: 1000000000, renewal-period: 60, counter-key: "hot"}
        - return-response: {status-code: 200, body: "hello world"}
  - name: cached
    path: cached
    backend: be
    subscription-required: false
    operations: [{name: get, method: GET, url-template: /x}]
    policies:
      inbound: [{cache-lookup: {}}]
      outbound: [{cache-store: {duration: 3600}}]
  - name: external
    path: external
    backend: be
    subscription-required: false
    operations: [{name: get, method: GET, url-template: /x}]
    policies:
      inbound: [{cache-lookup: {caching-type: external}}]
      outbound: [{cache-store: {duration: 3600}}]
gateways:
  - {name: bench, apis: [plain, limited, cached, external]}
"#;

fn redis_cmd(port: u16, cmd: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Round trips: top-level commands only (commands a Lua script runs are counted in
/// `INFO commandstats` too, but cost no round trip).
fn redis_calls(port: u16) -> u64 {
    const TOP_LEVEL: &[&str] = &["evalsha", "eval", "get", "set", "del", "ping"];
    redis_cmd(port, "INFO commandstats")
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            if !TOP_LEVEL.contains(&name) {
                return None;
            }
            rest.split_once("calls=")?
                .1
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A tiny backend for the first (missing) cache fill.
fn backend() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let _ = c.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\ncontent-type: text/plain\r\n\r\nhello world",
                    );
                }
            });
        }
    });
    port
}

fn gateway(file: &str, redis: Option<u16>) -> RunningGateway {
    let mut s = GatewaySettings::default();
    s.offline.config_file = Some(file.into());
    s.listen.http = "127.0.0.1:0".into();
    s.listen.https = Some("127.0.0.1:0".into());
    s.listen.ops = "127.0.0.1:0".into();
    s.listen.workers = 1;
    if let Some(p) = redis {
        s.redis.url = Some(format!("redis://127.0.0.1:{p}"));
        s.redis.timeout = Duration::from_millis(200);
    }
    gateway::start(s).expect("gateway starts")
}

/// Requests per second from `wrk -t1 -c32`.
fn wrk(url: &str, secs: u64) -> f64 {
    let out = Command::new("wrk")
        .args(["-t1", "-c32", &format!("-d{secs}s"), url])
        .output()
        .expect("wrk is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no result from wrk: {text}"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.yaml");
    std::fs::write(&file, DOC.replace("BACKEND", &backend().to_string())).unwrap();
    let file = file.display().to_string();

    let redis_port = free_port();
    let mut redis: Child = Command::new("redis-server")
        .args([
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    std::thread::sleep(Duration::from_millis(300));

    let local = gateway(&file, None);
    let shared = gateway(&file, Some(redis_port));
    let l = local.traffic_url();
    let r = shared.traffic_url();
    // Warm up, and fill the caches.
    for url in [&l, &r] {
        wrk(&format!("{url}/plain/x"), 1);
        wrk(&format!("{url}/cached/x"), 1);
    }
    wrk(&format!("{r}/external/x"), 1);

    let mut rows = Vec::new();
    let mut run = |name: &str, url: String, redis_per_req: bool| {
        let before = redis_calls(redis_port);
        let rps = wrk(&url, secs);
        let calls = redis_calls(redis_port) - before;
        // INFO itself counts one call.
        let per_req = if redis_per_req {
            format!(
                "{:.2}",
                (calls.saturating_sub(1)) as f64 / (rps * secs as f64)
            )
        } else {
            "-".into()
        };
        rows.push((name.to_owned(), rps, per_req));
    };
    run("no policy (return-response)", format!("{l}/plain/x"), false);
    run(
        "no policy, gateway with Redis configured",
        format!("{r}/plain/x"),
        true,
    );
    run(
        "rate limit, in-process store",
        format!("{l}/limited/x"),
        false,
    );
    run("rate limit, Redis store", format!("{r}/limited/x"), true);
    run("cache hit, in-process tier", format!("{l}/cached/x"), false);
    run(
        "cache hit, prefer-external (local tier in front of Redis)",
        format!("{r}/cached/x"),
        true,
    );
    run(
        "cache hit, external (Redis tier only)",
        format!("{r}/external/x"),
        true,
    );

    let base = rows[0].1;
    println!("\n| scenario | req/s | vs no policy | Redis calls/req |");
    println!("|---|---|---|---|");
    for (name, rps, per_req) in &rows {
        println!("| {name} | {rps:.0} | {:.2} | {per_req} |", rps / base);
    }
    local.stop();
    shared.stop();
    let _ = redis.kill();
    let _ = redis.wait();
}
