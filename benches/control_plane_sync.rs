//! Control plane sync benchmark: `cargo bench --bench control_plane_sync` (see
//! `docs/benchmarks.md`, "Control plane sync").
//!
//! (a) Fan-out: one control plane (a child process running the real gateway endpoint on
//!     loopback) and 1,000 gateways (one client process, one keep-alive connection each). Every
//!     gateway fetches its snapshot, then long-polls as the real gateway does; one change that
//!     every gateway's view contains is committed, and we time how long until every poller has
//!     applied the new revision (hash verified), over several rounds. The control plane's RSS is
//!     read from its `/proc/<pid>/status` before the pollers connect and while all 1,000 wait.
//! (b) Snapshot size and cost: one gateway assigned 1,000 APIs of 10 operations each; bytes of
//!     the full update in bincode and JSON, encode/decode times, and `gateway_view` +
//!     `content_hash` times.
//! (c) Replicas: the fan-out of (a) across two control-plane replicas (two child processes)
//!     sharing one real PostgreSQL server (`integration/src/postgres.rs`: initdb + postgres on
//!     a free loopback port): half the 1,000 gateways long-poll replica A, half replica B; each
//!     change is committed on replica A only, so B's pollers wait for PostgreSQL's
//!     notification. Time until every poller has the new revision, and each replica's CPU time
//!     (user + system, from `/proc/<pid>/stat`) and RSS. Needs PostgreSQL installed (as
//!     `.ci/run` installs it); skipped, saying why, without it.
//!
//! A plain `main` (harness = false) printing markdown tables. Run without `--bench` (as
//! `cargo test --all-targets` does) it only says how to run it. `-- fan-out`, `-- snapshot` or
//! `-- replicas` runs one part.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpServer, web};
use outpost::control_plane::gateway_api::configure_gateway_api;
use outpost::control_plane::gateway_state::GatewayApiState;
use outpost::control_plane::settings::ControlPlaneSettings;
use outpost::control_plane::store::{Location, Precondition, Store, StoreOptions, Write};
use outpost::control_plane::tokens;
use outpost::control_plane::views::Format;
use outpost_model::view::{View, content_hash, gateway_view};
use outpost_model::wire::{self, BINCODE_MEDIA_TYPE, ConfigUpdate, GatewaySnapshot};
use outpost_model::{Kind, Resource};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GATEWAYS: usize = 1000;
/// Rounds of (a); `OUTPOST_BENCH_ROUNDS` overrides.
const ROUNDS: usize = 10;
const ROLE_ENV: &str = "OUTPOST_BENCH_ROLE";

fn main() {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("control-plane") => return control_plane(),
        // (c): the store's URL is the first argument (not a variable: nothing to leak).
        Ok(role @ ("replica-a" | "replica-b")) => {
            let url = std::env::args().nth(1).expect("store URL argument");
            return replica(&url, role == "replica-a");
        }
        _ => {}
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark, not a test: run `cargo bench --bench control_plane_sync`");
        return;
    }
    // `cargo bench --bench control_plane_sync -- replicas` runs (c) alone; likewise `fan-out`
    // (a) and `snapshot` (b). Without a name, all three.
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |part: &str| named.is_empty() || named.iter().any(|n| n == part);
    println!("# Control plane sync benchmark\n");
    if run("fan-out") {
        fan_out();
    }
    if run("snapshot") {
        snapshot_cost();
    }
    if run("replicas") {
        fan_out_replicas();
    }
}

// === helpers shared by both roles ===

fn res(kind: Kind, body: serde_json::Value) -> Resource {
    Resource::from_json(kind, body).expect("valid resource")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of process `pid`, ms (`/proc/<pid>/stat` counts in USER_HZ, 100 a
/// second on Linux).
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from the third: state, ppid, ...
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line; `fields` starts at field 4 (ppid).
    (fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0)) * 10
}

fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

// === (a) the control plane side: a child process ===

/// 1,000 gateways, each assigned its own API; all APIs share one backend, so changing that
/// backend reaches every gateway.
fn fan_out_config() -> Vec<Resource> {
    let mut writes = vec![res(
        Kind::Backend,
        json!({"name": "shared", "url": "http://127.0.0.1:9", "request-timeout-ms": 1000}),
    )];
    for i in 0..GATEWAYS {
        writes.push(res(
            Kind::Api,
            json!({
                "name": format!("api-{i}"), "path": format!("api-{i}"), "backend": "shared",
                "operations": [
                    {"name": "list", "method": "GET", "url-template": "/items"},
                    {"name": "get", "method": "GET", "url-template": "/items/{id}"},
                ],
            }),
        ));
        writes.push(res(
            Kind::Gateway,
            json!({"name": format!("gw-{i}"), "apis": [format!("api-{i}")]}),
        ));
    }
    writes
}

fn control_plane() {
    let store = Arc::new(
        Store::open(Path::new(":memory:"), StoreOptions::default()).expect("in-memory store"),
    );
    let tokens = set_up(&store);
    serve(store, tokens);
}

/// Commits the fan-out configuration; a token per gateway.
fn set_up(store: &Store) -> Vec<String> {
    let writes = fan_out_config();
    store
        .commit(
            writes
                .into_iter()
                .map(|r| Write::Put(Box::new(r), Precondition::None))
                .collect(),
        )
        .expect("setup commit");
    let expiry = chrono::Utc::now() + chrono::Duration::days(1);
    (0..GATEWAYS)
        .map(|i| {
            let gw = format!("gw-{i}");
            tokens::mint(&gw, &store.gateway_keys(&gw).expect("keys").primary, expiry)
        })
        .collect()
}

/// (c) A replica on the PostgreSQL store at `url`, following the other's commits as the
/// control plane does. Replica A sets the configuration up and prints the tokens; B starts
/// once A is ready and only serves.
fn replica(url: &str, first: bool) {
    let location = Location::Postgres {
        url: url.to_owned(),
        ca_file: None,
    };
    let store = Arc::new(Store::connect(&location, StoreOptions::default()).expect("store"));
    store.follow();
    let tokens = if first { set_up(&store) } else { Vec::new() };
    serve(store, tokens);
}

/// Serves the gateway endpoint on a free loopback port; prints `addr`, the tokens and `ready`,
/// then takes [`commands`] on stdin.
fn serve(store: Arc<Store>, tokens: Vec<String>) {
    let settings = ControlPlaneSettings::default();
    let state =
        web::Data::new(GatewayApiState::new(store.clone(), &settings).expect("signing key"));
    let system = actix_rt::System::new();
    system.block_on(async move {
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .configure(configure_gateway_api)
        })
        .workers(2)
        .backlog(4096)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        println!("addr {addr}");
        for t in &tokens {
            println!("token {t}");
        }
        println!("ready");
        std::thread::spawn(move || commands(store, state, handle));
        server.await.expect("server");
    });
}

/// Line commands from the benchmark driver on stdin; answers on stdout.
fn commands(
    store: Arc<Store>,
    state: web::Data<GatewayApiState>,
    handle: actix_web::dev::ServerHandle,
) {
    let pid = std::process::id();
    let mut timeout = 1000u64;
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap_or_default();
        match line.trim() {
            "rss" => println!("rss {}", rss_kib(pid)),
            "cpu" => println!("cpu {}", cpu_ms(pid)),
            "waiting" => println!("waiting {}", state.waiting_polls()),
            // What the pollers' first fetch computes and caches, without any connection: lets the
            // driver split the memory of a waiting gateway into cache and connection.
            "warm" => {
                let current = store.state();
                for i in 0..GATEWAYS {
                    let update = state.update(&format!("gw-{i}"), 0, &current);
                    update.encoded(Format::Bincode).expect("encode");
                }
                println!("warm {}", rss_kib(pid));
            }
            "change" => {
                timeout += 1;
                let started = Instant::now();
                let committed = store
                    .put(
                        res(
                            Kind::Backend,
                            json!({"name": "shared", "url": "http://127.0.0.1:9",
                                   "request-timeout-ms": timeout}),
                        ),
                        Precondition::None,
                    )
                    .expect("change");
                let at = SystemTime::now();
                println!(
                    "committed {} {} {}",
                    committed.revision,
                    started.elapsed().as_micros(),
                    unix_nanos(at)
                );
            }
            _ => break,
        }
    }
    // Stopping is sent when `stop` is called; its future only reports completion.
    drop(handle.stop(false));
}

// === (a) the gateways' side ===

struct ControlPlaneProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ControlPlaneProcess {
    fn ask(&mut self, command: &str) -> Vec<String> {
        writeln!(self.stdin, "{command}").expect("write to control plane");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read from control plane");
        line.split_whitespace().skip(1).map(str::to_owned).collect()
    }

    fn number(&mut self, command: &str) -> u64 {
        self.ask(command)[0].parse().expect("number")
    }
}

/// One answer: status and body.
async fn request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    token: &str,
    after: u64,
    wait: u64,
) -> Result<(u16, Vec<u8>), String> {
    let req = format!(
        "GET /gateway/v1/config?after={after}&wait={wait} HTTP/1.1\r\nHost: control-plane\r\n\
         Authorization: {token}\r\nAccept: {BINCODE_MEDIA_TYPE}\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed by the control plane before an answer ({} bytes read)",
                buf.len()
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).expect("ascii head");
    let status: u16 = head[9..12].parse().expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed by the control plane in the body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, buf[head_end..head_end + length].to_vec()))
}

enum Event {
    Synced,
    Applied {
        revision: u64,
        at: SystemTime,
    },
    /// The connection failed; the poller reconnects, as a gateway does.
    Dropped(String),
}

/// A gateway: snapshot, then long-polls for ever, applying and verifying every update.
async fn gateway(
    addr: SocketAddr,
    token: String,
    connect: Arc<tokio::sync::Semaphore>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
) {
    let mut snapshot = GatewaySnapshot::default();
    let mut buf = Vec::new();
    loop {
        let mut stream = {
            let _permit = connect.acquire().await.expect("semaphore");
            TcpStream::connect(addr).await.expect("connect")
        };
        stream.set_nodelay(true).expect("nodelay");
        loop {
            let wait = if snapshot.revision == 0 { 0 } else { 60 };
            let (status, body) =
                match request(&mut stream, &mut buf, &token, snapshot.revision, wait).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        if events.send(Event::Dropped(e)).is_err() {
                            return;
                        }
                        break;
                    }
                };
            if status == 304 {
                continue;
            }
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let update: ConfigUpdate = wire::decode(&body).expect("update");
            let first = snapshot.revision == 0;
            snapshot = snapshot.apply(&update).expect("hash matches");
            let event = if first {
                Event::Synced
            } else {
                Event::Applied {
                    revision: snapshot.revision,
                    at: SystemTime::now(),
                }
            };
            if events.send(event).is_err() {
                return;
            }
        }
    }
}

fn fan_out() {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .env(ROLE_ENV, "control-plane")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the control plane process");
    let mut cp = ControlPlaneProcess {
        stdin: child.stdin.take().expect("stdin"),
        stdout: BufReader::new(child.stdout.take().expect("stdout")),
        child,
    };
    let mut addr: Option<SocketAddr> = None;
    let mut tokens = Vec::new();
    loop {
        let mut line = String::new();
        if cp.stdout.read_line(&mut line).expect("read") == 0 {
            panic!("the control plane process exited");
        }
        match line.trim().split_once(' ') {
            Some(("addr", a)) => addr = Some(a.parse().expect("addr")),
            Some(("token", t)) => tokens.push(t.to_owned()),
            _ if line.trim() == "ready" => break,
            _ => {}
        }
    }
    let addr = addr.expect("address");
    let pid = cp.child.id();

    // The pollers run on a runtime thread of their own, so the driver's blocking exchanges with
    // the control plane process never delay them.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let rss_idle = cp.number("rss");
    let rss_warm = cp.number("warm");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let connect = Arc::new(tokio::sync::Semaphore::new(64));
    let started = Instant::now();
    for t in tokens {
        rt.spawn(gateway(addr, t, connect.clone(), tx.clone()));
    }
    drop(tx);
    let mut synced = 0;
    let mut dropped: Vec<String> = Vec::new();
    rt.block_on(async {
        while synced < GATEWAYS {
            match rx.recv().await {
                Some(Event::Synced) => synced += 1,
                Some(Event::Dropped(e)) => dropped.push(e),
                Some(_) => {}
                None => panic!("pollers failed"),
            }
        }
    });
    let cold_sync = started.elapsed();
    let wait_all = |cp: &mut ControlPlaneProcess, rt: &tokio::runtime::Runtime| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while cp.number("waiting") < GATEWAYS as u64 {
            assert!(Instant::now() < deadline, "pollers did not all wait");
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
        }
    };
    wait_all(&mut cp, &rt);
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    let rss_waiting = cp.number("rss");

    let round_count: usize = std::env::var("OUTPOST_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    let mut rounds = Vec::new();
    let mut all: Vec<f64> = Vec::new();
    for _ in 0..round_count {
        let sent = SystemTime::now();
        let answer = cp.ask("change");
        let revision: u64 = answer[0].parse().expect("revision");
        let commit_us: u64 = answer[1].parse().expect("commit time");
        let committed_at: u128 = answer[2].parse().expect("commit instant");
        let mut latencies: Vec<f64> = Vec::with_capacity(GATEWAYS);
        rt.block_on(async {
            while latencies.len() < GATEWAYS {
                match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                    Ok(Some(Event::Applied { revision: r, at })) if r == revision => {
                        let ns = unix_nanos(at).saturating_sub(committed_at);
                        latencies.push(ns as f64 / 1e6);
                    }
                    Ok(Some(Event::Dropped(e))) => dropped.push(e),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => panic!("not every poller got revision {revision}"),
                }
            }
        });
        let total_ms = unix_nanos(SystemTime::now()).saturating_sub(unix_nanos(sent)) as f64 / 1e6;
        latencies.sort_by(f64::total_cmp);
        all.extend(&latencies);
        wait_all(&mut cp, &rt);
        let rss = cp.number("rss");
        rounds.push((revision, commit_us, latencies, total_ms, rss));
    }
    let rss_after = cp.number("rss");
    while let Ok(event) = rx.try_recv() {
        if let Event::Dropped(e) = event {
            dropped.push(e);
        }
    }
    // Stop the pollers before the control plane, so they do not try to reconnect.
    drop(rx);
    rt.shutdown_background();
    let _ = writeln!(cp.stdin, "quit");
    let _ = cp.child.wait();
    all.sort_by(f64::total_cmp);

    println!("## (a) {GATEWAYS} gateways long-polling one control plane\n");
    println!(
        "Cold start: {GATEWAYS} snapshot fetches (connect + auth + view + encode + apply) in {:.0} ms.\n",
        cold_sync.as_secs_f64() * 1e3
    );
    println!(
        "| round | revision | commit (ms) | p50 (ms) | p99 (ms) | max (ms) | all applied, from the command (ms) | control plane RSS after (KiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, (rev, commit_us, l, total, rss)) in rounds.iter().enumerate() {
        println!(
            "| {} | {rev} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {rss} |",
            i + 1,
            *commit_us as f64 / 1e3,
            percentile(l, 0.5),
            percentile(l, 0.99),
            percentile(l, 1.0),
            total
        );
    }
    println!(
        "| all {} | | | {:.1} | {:.1} | {:.1} | | |\n",
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
    println!(
        "Latency = from the commit returning in the control plane to the poller having decoded, \
         applied and hash-checked the delta.\n"
    );
    println!(
        "Connections dropped and reopened during the run: {}.",
        dropped.len()
    );
    for e in dropped.iter().take(5) {
        println!("- {e}");
    }
    println!();
    println!("| control plane RSS (pid {pid}) | KiB |");
    println!("|---|---|");
    println!("| before the pollers connect | {rss_idle} |");
    println!(
        "| with the {GATEWAYS} gateways' snapshots computed and cached, no connection | {rss_warm} |"
    );
    println!("| {GATEWAYS} long-polls waiting | {rss_waiting} |");
    println!("| after {round_count} rounds, waiting again | {rss_after} |");
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / GATEWAYS as f64;
    println!(
        "| per waiting gateway: all / view cache / connection + waiting poll | {:.1} / {:.1} / {:.1} |\n",
        per(rss_waiting, rss_idle),
        per(rss_warm, rss_idle),
        per(rss_waiting, rss_warm)
    );
}

// === (b) snapshot size and cost ===

fn big_config(apis: usize, ops: usize) -> Vec<Resource> {
    let mut all = vec![res(
        Kind::NamedValue,
        json!({"name": "backend-host", "value": "orders.internal", "secret": true}),
    )];
    for b in 0..10 {
        all.push(res(
            Kind::Backend,
            json!({"name": format!("backend-{b}"), "url": format!("http://{{{{backend-host}}}}:{}", 8000 + b)}),
        ));
    }
    for a in 0..apis {
        let operations: Vec<_> = (0..ops)
            .map(|o| {
                json!({
                    "name": format!("op-{o}"),
                    "method": if o % 2 == 0 { "GET" } else { "POST" },
                    "url-template": format!("/resource-{o}/{{id}}"),
                    "policies": {"inbound": ["base", {"set-header": {"name": "X-Op", "value": format!("op-{o}")}}]},
                })
            })
            .collect();
        all.push(res(
            Kind::Api,
            json!({
                "name": format!("api-{a}"), "display-name": format!("API number {a}"),
                "path": format!("api-{a}"), "backend": format!("backend-{}", a % 10),
                "operations": operations,
                "policies": {"inbound": ["base", {"rate-limit": {"calls": 100, "renewal-period": 60}}]},
            }),
        ));
    }
    let names: Vec<String> = (0..apis).map(|a| format!("api-{a}")).collect();
    all.push(res(
        Kind::Product,
        json!({"name": "everything", "apis": names}),
    ));
    all.push(res(
        Kind::Subscription,
        json!({"name": "sub", "scope": {"product": "everything"},
               "primary-key": "a".repeat(64), "secondary-key": "b".repeat(64)}),
    ));
    all.push(res(Kind::Gateway, json!({"name": "gw", "apis": names})));
    all
}

/// Median and minimum of `runs` timings of `f`, in ms.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, f64) {
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

fn snapshot_cost() {
    const APIS: usize = 1000;
    const OPS: usize = 10;
    const RUNS: usize = 15;
    let all = big_config(APIS, OPS);
    let problems = outpost_model::validate::check_config(&all);
    assert!(problems.is_empty(), "{problems}");
    let view: View = gateway_view(&all, Some("gw"));
    let update = ConfigUpdate {
        full: true,
        from_revision: 0,
        revision: 1,
        hash: content_hash(&view),
        upserts: view.values().cloned().collect(),
        deletes: Vec::new(),
        signature: Default::default(),
        endorsements: Vec::new(),
    };
    let bincode = wire::encode(&update).expect("encode");
    let json = serde_json::to_vec(&update).expect("json");

    let t_view = time(RUNS, || gateway_view(&all, Some("gw")));
    let t_hash = time(RUNS, || content_hash(&view));
    let t_enc_bin = time(RUNS, || wire::encode(&update).expect("encode"));
    let t_dec_bin = time(RUNS, || {
        wire::decode::<ConfigUpdate>(&bincode).expect("decode")
    });
    let t_enc_json = time(RUNS, || serde_json::to_vec(&update).expect("json"));
    let t_dec_json = time(RUNS, || {
        serde_json::from_slice::<ConfigUpdate>(&json).expect("json decode")
    });
    let fan_out = fan_out_config();
    let t_small_view = time(RUNS * 20, || {
        let view = gateway_view(&fan_out, Some("gw-7"));
        content_hash(&view)
    });
    let t_apply = time(RUNS, || {
        GatewaySnapshot::default().apply(&update).expect("applies")
    });

    println!(
        "## (b) Full snapshot: {APIS} APIs x {OPS} operations ({} resources in the view)\n",
        view.len()
    );
    println!("| | bincode | JSON |");
    println!("|---|---|---|");
    println!(
        "| bytes | {} ({:.2} MiB) | {} ({:.2} MiB) |",
        bincode.len(),
        bincode.len() as f64 / 1048576.0,
        json.len(),
        json.len() as f64 / 1048576.0
    );
    println!(
        "| encode, median / min (ms) | {:.2} / {:.2} | {:.2} / {:.2} |",
        t_enc_bin.0, t_enc_bin.1, t_enc_json.0, t_enc_json.1
    );
    println!(
        "| decode, median / min (ms) | {:.2} / {:.2} | {:.2} / {:.2} |\n",
        t_dec_bin.0, t_dec_bin.1, t_dec_json.0, t_dec_json.1
    );
    println!("| step | median (ms) | min (ms) |");
    println!("|---|---|---|");
    for (name, (median, min)) in [
        ("gateway_view (whole config → gateway view)", t_view),
        (
            "content_hash (SHA-256 over the bincode of the view)",
            t_hash,
        ),
        (
            "GatewaySnapshot::apply of the full update (incl. hash check)",
            t_apply,
        ),
        (
            "gateway_view + content_hash of one gateway (1 API) over the whole fan-out config of (a): the cost `gateway_api` avoids by passing only candidates",
            t_small_view,
        ),
    ] {
        println!("| {name} | {median:.2} | {min:.2} |");
    }
    println!();
}

// === (c) two replicas on one PostgreSQL ===

/// Starts this benchmark as a child of `role` (arguments `args`); waits for its `ready`.
fn spawn_role(role: &str, args: &[&str]) -> (ControlPlaneProcess, SocketAddr, Vec<String>) {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .args(args)
        .env(ROLE_ENV, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a control plane process");
    let mut cp = ControlPlaneProcess {
        stdin: child.stdin.take().expect("stdin"),
        stdout: BufReader::new(child.stdout.take().expect("stdout")),
        child,
    };
    let mut addr: Option<SocketAddr> = None;
    let mut tokens = Vec::new();
    loop {
        let mut line = String::new();
        if cp.stdout.read_line(&mut line).expect("read") == 0 {
            panic!("the {role} process exited");
        }
        match line.trim().split_once(' ') {
            Some(("addr", a)) => addr = Some(a.parse().expect("addr")),
            Some(("token", t)) => tokens.push(t.to_owned()),
            _ if line.trim() == "ready" => break,
            _ => {}
        }
    }
    (cp, addr.expect("address"), tokens)
}

fn fan_out_replicas() {
    // The harness panics, saying why, where PostgreSQL is not installed.
    let Ok(pg) = std::panic::catch_unwind(outpost_integration::PostgresServer::start) else {
        println!("## (c) skipped: no PostgreSQL server could be started (see above)\n");
        return;
    };
    let url = pg.url();
    let (mut a, addr_a, tokens) = spawn_role("replica-a", &[&url]);
    let (mut b, addr_b, _) = spawn_role("replica-b", &[&url]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let rss_idle = [a.number("rss"), b.number("rss")];
    // One stream of (replica, event): each replica's pollers report to a forwarder that tags
    // their events (the time of an event is taken by the poller, before it is sent).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Event)>();
    let mut senders = Vec::new();
    for replica in 0..2 {
        let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let tx = tx.clone();
        rt.spawn(async move {
            while let Some(e) = erx.recv().await {
                if tx.send((replica, e)).is_err() {
                    return;
                }
            }
        });
        senders.push(etx);
    }
    drop(tx);
    let connect = Arc::new(tokio::sync::Semaphore::new(64));
    let addrs = [addr_a, addr_b];
    // Even gateways on A, odd ones on B.
    for (i, t) in tokens.into_iter().enumerate() {
        let r = i % 2;
        rt.spawn(gateway(addrs[r], t, connect.clone(), senders[r].clone()));
    }
    drop(senders);
    let mut dropped: Vec<String> = Vec::new();
    let mut synced = 0;
    rt.block_on(async {
        while synced < GATEWAYS {
            match rx.recv().await {
                Some((_, Event::Synced)) => synced += 1,
                Some((_, Event::Dropped(e))) => dropped.push(e),
                Some(_) => {}
                None => panic!("pollers failed"),
            }
        }
    });
    let wait_all =
        |a: &mut ControlPlaneProcess, b: &mut ControlPlaneProcess, rt: &tokio::runtime::Runtime| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while a.number("waiting") + b.number("waiting") < GATEWAYS as u64 {
                assert!(Instant::now() < deadline, "pollers did not all wait");
                rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
            }
        };
    wait_all(&mut a, &mut b, &rt);
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    let rss_waiting = [a.number("rss"), b.number("rss")];
    let waiting = [a.number("waiting"), b.number("waiting")];
    let cpu_before = [a.number("cpu"), b.number("cpu")];

    let round_count: usize = std::env::var("OUTPOST_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    let mut rounds = Vec::new();
    let mut all: Vec<f64> = Vec::new();
    let mut by_replica: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let started = Instant::now();
    for _ in 0..round_count {
        let answer = a.ask("change");
        let revision: u64 = answer[0].parse().expect("revision");
        let commit_us: u64 = answer[1].parse().expect("commit time");
        let committed_at: u128 = answer[2].parse().expect("commit instant");
        let mut latencies: Vec<f64> = Vec::with_capacity(GATEWAYS);
        rt.block_on(async {
            while latencies.len() < GATEWAYS {
                match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                    Ok(Some((r, Event::Applied { revision: rev, at }))) if rev == revision => {
                        let ms = unix_nanos(at).saturating_sub(committed_at) as f64 / 1e6;
                        latencies.push(ms);
                        by_replica[r].push(ms);
                    }
                    Ok(Some((_, Event::Dropped(e)))) => dropped.push(e),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => panic!("not every poller got revision {revision}"),
                }
            }
        });
        latencies.sort_by(f64::total_cmp);
        all.extend(&latencies);
        wait_all(&mut a, &mut b, &rt);
        rounds.push((revision, commit_us, latencies));
    }
    let elapsed = started.elapsed();
    let cpu_after = [a.number("cpu"), b.number("cpu")];
    let rss_after = [a.number("rss"), b.number("rss")];
    while let Ok((_, event)) = rx.try_recv() {
        if let Event::Dropped(e) = event {
            dropped.push(e);
        }
    }
    drop(rx);
    rt.shutdown_background();
    for cp in [&mut a, &mut b] {
        let _ = writeln!(cp.stdin, "quit");
        let _ = cp.child.wait();
    }
    drop(pg);
    all.sort_by(f64::total_cmp);
    for l in &mut by_replica {
        l.sort_by(f64::total_cmp);
    }

    println!(
        "## (c) {GATEWAYS} gateways long-polling two replicas on one PostgreSQL, commits on A\n"
    );
    println!(
        "Long-polls waiting: {} on replica A, {} on replica B.\n",
        waiting[0], waiting[1]
    );
    println!("| round | revision | commit on A (ms) | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---|---|---|---|");
    for (i, (rev, commit_us, l)) in rounds.iter().enumerate() {
        println!(
            "| {} | {rev} | {:.1} | {:.1} | {:.1} | {:.1} |",
            i + 1,
            *commit_us as f64 / 1e3,
            percentile(l, 0.5),
            percentile(l, 0.99),
            percentile(l, 1.0),
        );
    }
    println!(
        "| all {} | | | {:.1} | {:.1} | {:.1} |",
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
    for (name, l) in [
        ("on A (same replica)", &by_replica[0]),
        ("on B (notified)", &by_replica[1]),
    ] {
        println!(
            "| pollers {name}: {} | | | {:.1} | {:.1} | {:.1} |",
            l.len(),
            percentile(l, 0.5),
            percentile(l, 0.99),
            percentile(l, 1.0)
        );
    }
    println!(
        "\nLatency = from the commit returning on replica A to the poller having decoded, applied \
         and hash-checked the delta. Connections dropped and reopened: {}.\n",
        dropped.len()
    );
    for e in dropped.iter().take(5) {
        println!("- {e}");
    }
    let secs = elapsed.as_secs_f64();
    println!(
        "| replica | RSS idle (KiB) | RSS, pollers waiting (KiB) | per waiting gateway (KiB) | RSS after (KiB) | CPU over the {round_count} rounds (ms; per round) |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, name) in ["A (commits)", "B"].iter().enumerate() {
        let cpu = cpu_after[i].saturating_sub(cpu_before[i]);
        println!(
            "| {name} | {} | {} | {:.1} | {} | {cpu} ({:.0}) |",
            rss_idle[i],
            rss_waiting[i],
            rss_waiting[i].saturating_sub(rss_idle[i]) as f64 / waiting[i].max(1) as f64,
            rss_after[i],
            cpu as f64 / round_count.max(1) as f64,
        );
    }
    println!(
        "\n{round_count} rounds in {secs:.1} s (each: commit, every poller applied, all waiting again).\n"
    );
}
