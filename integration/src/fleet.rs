//! Real `outpost` processes: a control plane and gateways wired to it, for scenario suites.
//!
//! Each process gets its own free loopback ports and is configured only through `OUTPOST_*`
//! environment variables — the same way operators configure containers — so the suites also
//! exercise the settings loader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_model::wire::{
    self, AggregateKey, BINCODE_MEDIA_TYPE, RequestAggregate, TELEMETRY_PATH, TelemetryBatch,
    latency_bucket,
};
use serde_json::{Value, json};

use crate::http::client;
use crate::ports::free_port;
use crate::postgres::PostgresServer;
use crate::process::{ManagedProcess, outpost_command};
use crate::wait::{secs, wait_for_http_ok};

/// The admin token every test control plane is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A control plane process with its data directory (kept across restarts).
pub struct ControlPlane {
    pub process: ManagedProcess,
    pub admin_port: u16,
    pub gateway_port: u16,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl ControlPlane {
    /// Starts a control plane with a fresh data directory.
    pub async fn start() -> ControlPlane {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        let mut cp = Self::start_on(&data_dir, free_port(), free_port()).await;
        cp._tmp = Some(tmp);
        cp
    }

    /// Starts a control plane on a given data directory and ports (for restarts and upgrades).
    pub async fn start_on(data_dir: &Path, admin_port: u16, gateway_port: u16) -> ControlPlane {
        Self::start_on_with("control-plane", data_dir, admin_port, gateway_port, &[]).await
    }

    /// Stops the process (SIGKILL, like a crash) and starts it again on the same data and ports.
    pub async fn restart(&mut self) {
        self.process.kill();
        let tmp = self._tmp.take();
        let mut next = Self::start_on(&self.data_dir, self.admin_port, self.gateway_port).await;
        next._tmp = tmp;
        *self = next;
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Like [`ControlPlane::start_on`], with a process name and extra `OUTPOST_*` variables
    /// (e.g. `OUTPOST_INSTANCES_STALE_AFTER_SECS`). The caller owns `data_dir`.
    pub async fn start_on_with(
        name: &str,
        data_dir: &Path,
        admin_port: u16,
        gateway_port: u16,
        extra_env: &[(String, String)],
    ) -> ControlPlane {
        let mut cmd = outpost_command();
        cmd.arg("control-plane")
            .env("OUTPOST_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("OUTPOST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env(
                "OUTPOST_GATEWAY_API_LISTEN",
                format!("127.0.0.1:{gateway_port}"),
            )
            .env("OUTPOST_STORE_DATA_DIR", data_dir.display().to_string())
            .env("OUTPOST_LOG_LEVEL", "info");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let process = ManagedProcess::spawn(name, cmd).expect("spawn control plane");
        let cp = ControlPlane {
            process,
            admin_port,
            gateway_port,
            data_dir: data_dir.to_owned(),
            _tmp: None,
        };
        wait_for_http_ok(&format!("{}/api/v1/openapi.json", cp.admin_url()), secs(30))
            .await
            .unwrap_or_else(|e| {
                panic!("control plane did not start: {e}\n{}", cp.process.tail(40))
            });
        cp
    }

    /// One of several replicas on the PostgreSQL `pg`: a control plane named `name` with its
    /// (otherwise unused) data directory `dir/name`.
    pub async fn replica(name: &str, dir: &Path, pg: &PostgresServer) -> ControlPlane {
        Self::start_on_with(
            name,
            &dir.join(name),
            free_port(),
            free_port(),
            &[("OUTPOST_STORE_URL".into(), pg.url())],
        )
        .await
    }

    /// Graceful stop (SIGTERM, then SIGKILL after `grace`), as an operator's upgrade does.
    pub async fn stop_graceful(&mut self, grace: Duration) -> std::process::ExitStatus {
        self.process.stop(grace).await
    }

    /// `POST /gateway/v1/telemetry` with `batch` (bincode), as gateway `token` uploads it;
    /// the answer's status.
    pub async fn post_telemetry(&self, token: &str, batch: &TelemetryBatch) -> u16 {
        client()
            .post(format!("{}{TELEMETRY_PATH}", self.gateway_url()))
            .header("Authorization", token)
            .header("Content-Type", BINCODE_MEDIA_TYPE)
            .body(wire::encode(batch).expect("encode a telemetry batch"))
            .send()
            .await
            .expect("telemetry upload")
            .status()
            .as_u16()
    }

    /// `GET /api/v1/analytics{query}`; panics unless 200.
    pub async fn analytics(&self, query: &str) -> Value {
        let (status, body) = self
            .call("GET", &format!("/api/v1/analytics{query}"), None)
            .await;
        assert_eq!(status, 200, "{body:#}");
        body
    }

    /// The gateway listener's address (what a gateway, or a proxy in front of it, connects to).
    pub fn gateway_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.gateway_port))
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    /// `POST /api/v1/apply` with a declarative YAML file; panics with the problems on failure.
    pub async fn apply(&self, yaml: &str) -> Value {
        let res = client()
            .post(format!("{}/api/v1/apply", self.admin_url()))
            .bearer_auth(ADMIN_TOKEN)
            .header("Content-Type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await
            .expect("apply request");
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "apply failed with {status}: {body:#}");
        body
    }

    /// A management API call; returns status and JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.admin_url());
        let c = client();
        let mut req = match method {
            "GET" => c.get(url),
            "PUT" => c.put(url),
            "POST" => c.post(url),
            "DELETE" => c.delete(url),
            other => panic!("method {other}"),
        }
        .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("management API call");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Mints a gateway token from the gateway's primary key.
    pub async fn token(&self, gateway: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                &format!("/api/v1/gateways/{gateway}/token"),
                Some(json!({"key": "primary", "lifetime-secs": 86_400})),
            )
            .await;
        assert_eq!(status, 200, "token: {body:#}");
        body["value"].as_str().expect("token value").to_owned()
    }

    pub async fn revision(&self) -> u64 {
        let (status, body) = self.call("GET", "/api/v1/revision", None).await;
        assert_eq!(status, 200, "{body}");
        body["revision"].as_u64().expect("revision")
    }
}

/// Two control-plane replicas, `cp-a` and `cp-b`, on a private PostgreSQL: the set-up of the
/// multi-replica tests. Fields drop in order: the replicas stop before their database.
pub struct TwoReplicas {
    pub a: ControlPlane,
    pub b: ControlPlane,
    pub pg: PostgresServer,
    /// Parent of the replicas' data directories (for more replicas: [`ControlPlane::replica`]).
    pub dir: tempfile::TempDir,
}

impl TwoReplicas {
    /// Starts PostgreSQL, then both replicas on it. Call from a multi-thread runtime (the
    /// database starts with blocking calls).
    pub async fn start() -> TwoReplicas {
        let pg = tokio::task::block_in_place(PostgresServer::start);
        let dir = tempfile::tempdir().expect("temp dir");
        let a = ControlPlane::replica("cp-a", dir.path(), &pg).await;
        let b = ControlPlane::replica("cp-b", dir.path(), &pg).await;
        TwoReplicas { a, b, pg, dir }
    }
}

/// How a gateway process is configured.
#[derive(Debug, Clone, Default)]
pub struct GatewayOptions {
    pub control_plane_url: Option<String>,
    pub token: Option<String>,
    pub backup_dir: Option<PathBuf>,
    pub offline_file: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub redis_nodes: Option<u64>,
    pub extra_env: Vec<(String, String)>,
}

impl GatewayOptions {
    /// A gateway of `cp`, with `token` (the rest as [`Gateway::spawn`] sets it).
    pub fn attached(cp: &ControlPlane, token: String) -> GatewayOptions {
        GatewayOptions {
            control_plane_url: Some(cp.gateway_url()),
            token: Some(token),
            ..GatewayOptions::default()
        }
    }
}

/// A gateway process.
pub struct Gateway {
    pub process: ManagedProcess,
    pub traffic_port: u16,
    pub ops_port: u16,
    pub options: GatewayOptions,
}

impl Gateway {
    /// Spawns a gateway; does not wait for readiness (see [`Gateway::wait_ready`]).
    pub fn spawn(name: &str, options: GatewayOptions) -> Gateway {
        Self::spawn_on(name, options, free_port(), free_port())
    }

    pub fn spawn_on(
        name: &str,
        options: GatewayOptions,
        traffic_port: u16,
        ops_port: u16,
    ) -> Gateway {
        let mut cmd = outpost_command();
        cmd.arg("gateway")
            .env("OUTPOST_LISTEN_HTTP", format!("127.0.0.1:{traffic_port}"))
            .env("OUTPOST_LISTEN_HTTPS", format!("127.0.0.1:{}", free_port()))
            .env("OUTPOST_LISTEN_OPS", format!("127.0.0.1:{ops_port}"))
            .env("OUTPOST_LISTEN_WORKERS", "2")
            .env("OUTPOST_CONTROL_PLANE_POLL_WAIT_SECS", "5")
            .env("OUTPOST_CONTROL_PLANE_HEARTBEAT_INTERVAL_SECS", "1")
            .env("OUTPOST_CONTROL_PLANE_REQUEST_TIMEOUT_MS", "2000")
            .env("OUTPOST_CONTROL_PLANE_BACKOFF_INITIAL_MS", "100")
            .env("OUTPOST_CONTROL_PLANE_BACKOFF_MAX_MS", "1000")
            .env("OUTPOST_TELEMETRY_FLUSH_INTERVAL_SECS", "1")
            // The scenarios take a node out of their load before stopping it; the drain itself
            // is proved in tests/gateway_drain.rs.
            .env("OUTPOST_SHUTDOWN_DRAIN_SECS", "0")
            .env("OUTPOST_LOG_LEVEL", "info");
        if let Some(u) = &options.control_plane_url {
            cmd.env("OUTPOST_CONTROL_PLANE_URL", u);
        }
        if let Some(t) = &options.token {
            cmd.env("OUTPOST_CONTROL_PLANE_TOKEN", t);
        }
        if let Some(d) = &options.backup_dir {
            cmd.env("OUTPOST_BACKUP_ENABLED", "true")
                .env("OUTPOST_BACKUP_DIR", d.display().to_string());
        }
        if let Some(f) = &options.offline_file {
            cmd.arg("--offline-config").arg(f);
        }
        if let Some(r) = &options.redis_url {
            cmd.env("OUTPOST_REDIS_URL", r);
        }
        if let Some(n) = options.redis_nodes {
            cmd.env("OUTPOST_REDIS_NODES", n.to_string());
        }
        for (k, v) in &options.extra_env {
            cmd.env(k, v);
        }
        let process = ManagedProcess::spawn(name, cmd).expect("spawn gateway");
        Gateway {
            process,
            traffic_port,
            ops_port,
            options,
        }
    }

    /// Spawns and waits until `/readyz` answers 200.
    pub async fn start(name: &str, options: GatewayOptions) -> Gateway {
        let gw = Self::spawn(name, options);
        gw.wait_ready().await;
        gw
    }

    pub async fn wait_ready(&self) {
        wait_for_http_ok(&format!("{}/readyz", self.ops_url()), secs(30))
            .await
            .unwrap_or_else(|e| panic!("gateway not ready: {e}\n{}", self.process.tail(40)));
    }

    /// Graceful stop (SIGTERM, then SIGKILL after `grace`): listeners drain, telemetry still
    /// in memory goes to the spool. Ports and options are kept for [`Gateway::respawn`].
    pub async fn stop_graceful(&mut self, grace: Duration) -> std::process::ExitStatus {
        self.process.stop(grace).await
    }

    /// Starts a new process with the same name, options and ports (after a stop or a kill, or
    /// killing the running one); does not wait for readiness.
    pub fn respawn(&mut self) {
        self.process.kill();
        let name = self.process.name().to_owned();
        *self = Self::spawn_on(
            &name,
            self.options.clone(),
            self.traffic_port,
            self.ops_port,
        );
    }

    /// Kills the process, starts a new one with the same options and ports, and waits until it
    /// is ready.
    pub async fn restart(&mut self) {
        self.respawn();
        self.wait_ready().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.traffic_port)
    }

    pub fn ops_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ops_port)
    }

    /// `/readyz` detail as JSON (whatever the status).
    pub async fn readyz(&self) -> (u16, Value) {
        let res = client()
            .get(format!("{}/readyz", self.ops_url()))
            .send()
            .await
            .expect("readyz");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.ops_url()))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Waits for the process to exit on its own; returns its status and output.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> (Option<std::process::ExitStatus>, String) {
        let status = self.process.wait_exit(timeout).await;
        (status, self.process.output_so_far())
    }
}

/// One gateway (`site-a`) serving one API, `hello`, that answers `GET /hello/` with 200 "hi"
/// from a policy (no backend is reached): the smallest estate the multi-replica tests apply.
pub const HELLO_SITE: &str = r#"
apiVersion: outpost/v1
backends:
  - {name: b, url: "http://127.0.0.1:9"}
apis:
  - name: hello
    path: hello
    backend: b
    subscription-required: false
    operations:
      - {name: get, method: GET, url-template: /}
    policies:
      inbound:
        - base
        - return-response: {status-code: 200, body: "hi"}
gateways:
  - {name: site-a, apis: [hello]}
"#;

/// A telemetry batch of [`HELLO_SITE`]'s API: 100 requests to `hello`/`get` in the current
/// minute, answered 200: 90 took 210 µs, 9 took 1.1 ms, one took 55 ms.
pub fn hello_batch(instance: &str, sequence: u64) -> TelemetryBatch {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    TelemetryBatch {
        instance_id: instance.into(),
        sequence,
        aggregates: vec![RequestAggregate {
            key: AggregateKey {
                minute: now / 60 * 60,
                api: "hello".into(),
                operation: "get".into(),
                status: 200,
                cache: "none".into(),
                product: String::new(),
                subscription: String::new(),
            },
            count: 100,
            total_duration_us: 90 * 210 + 9 * 1100 + 55_000,
            max_duration_us: 55_000,
            backend_duration_us: 0,
            request_bytes: 0,
            response_bytes: 200,
            latency: vec![
                (latency_bucket(210) as u16, 90),
                (latency_bucket(1100) as u16, 9),
                (latency_bucket(55_000) as u16, 1),
            ],
        }],
    }
}
