//! Test helpers: private `redis-server`s on free ports (single, cluster, sentinel, TLS), a
//! private CA for them, and a server that never answers.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child on `127.0.0.1:<free port>`, killed on drop. Never the system one.
pub struct TestRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestRedis {
    pub async fn start() -> TestRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut r = TestRedis {
            child: None,
            port,
            dir,
        };
        r.spawn().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: what a crash looks like to the gateway.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (data kept in the append-only file).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        self.child = Some(redis_server(
            self.port,
            self.dir.path(),
            &["--appendonly", "yes", "--appendfsync", "always"],
        ));
        wait_for_ping(self.port).await;
    }

    /// Runs one command through a fresh client and returns its reply as a string.
    pub async fn command(&self, args: &[&str]) -> String {
        command_on(self.port, args).await
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub use outpost_integration::{TestPki, free_port};

/// Accepts connections and never answers: the timeout path.
pub async fn silent_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A 3-primary Redis Cluster of `redis-server` children on free ports (client and cluster-bus
/// ports both picked free, `cluster-port`), slots assigned with `redis-cli --cluster create`.
pub struct TestRedisCluster {
    nodes: Vec<(Option<Child>, u16, u16)>,
    /// TLS (`tls-cluster yes`): each node's TLS port and the server's TLS arguments; the plain
    /// ports stay open for the test to look inside.
    tls: Option<(Vec<u16>, TlsArgs)>,
    dir: tempfile::TempDir,
}

/// What `redis-server` and `redis-cli` need to speak TLS with a [`TestPki`].
#[derive(Clone)]
struct TlsArgs {
    ca: String,
    cert: String,
    key: String,
}

impl TestRedisCluster {
    pub async fn start() -> TestRedisCluster {
        Self::start_with(None).await
    }

    /// A cluster whose clients, cluster bus and slot map all use TLS with `pki`'s server
    /// certificate (clients need no certificate of their own).
    pub async fn start_tls(pki: &TestPki) -> TestRedisCluster {
        Self::start_with(Some(pki)).await
    }

    async fn start_with(pki: Option<&TestPki>) -> TestRedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes = (0..3).map(|_| (None, free_port(), free_port())).collect();
        let tls = pki.map(|pki| {
            let args = TlsArgs {
                ca: pki.path("ca.pem"),
                cert: pki.path("server.pem"),
                key: pki.path("server.key"),
            };
            ((0..3).map(|_| free_port()).collect(), args)
        });
        let mut cluster = TestRedisCluster { nodes, tls, dir };
        cluster.spawn_all().await;
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        match &cluster.tls {
            Some((ports, a)) => {
                create.args(ports.iter().map(|p| format!("127.0.0.1:{p}")));
                create.args([
                    "--tls", "--cacert", &a.ca, "--cert", &a.cert, "--key", &a.key,
                ]);
            }
            None => {
                create.args(
                    cluster
                        .nodes
                        .iter()
                        .map(|(_, p, _)| format!("127.0.0.1:{p}")),
                );
            }
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_until_ok().await;
        cluster
    }

    async fn spawn_all(&mut self) {
        for (i, (child, port, bus)) in self.nodes.iter_mut().enumerate() {
            let node_dir = self.dir.path().join(format!("n{i}"));
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-config-file",
                "nodes.conf",
            ]
            .map(String::from)
            .to_vec();
            if let Some((ports, a)) = &self.tls {
                args.extend(
                    [
                        "--tls-port",
                        &ports[i].to_string(),
                        "--tls-cert-file",
                        &a.cert,
                        "--tls-key-file",
                        &a.key,
                        "--tls-ca-cert-file",
                        &a.ca,
                        "--tls-auth-clients",
                        "optional",
                        "--tls-cluster",
                        "yes",
                        "--tls-replication",
                        "yes",
                    ]
                    .map(String::from),
                );
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            *child = Some(redis_server(*port, &node_dir, &args));
        }
        for (_, port, _) in &self.nodes {
            wait_for_ping(*port).await;
        }
    }

    /// SIGKILL on every node: the whole cluster gone.
    pub fn kill_all(&mut self) {
        for (child, _, _) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Starts every node again on its ports; each finds its slots in its `nodes.conf`.
    pub async fn restart_all(&mut self) {
        self.kill_all();
        self.spawn_all().await;
        self.wait_until_ok().await;
    }

    async fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ok = 0;
            for (_, port, _) in &self.nodes {
                if command_on(*port, &["CLUSTER", "INFO"])
                    .await
                    .contains("cluster_state:ok")
                {
                    ok += 1;
                }
            }
            if ok == self.nodes.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster did not converge"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Seed list for `RedisConfig { cluster: true, .. }`: one node is enough, give two.
    pub fn url(&self) -> String {
        match &self.tls {
            Some((ports, _)) => format!(
                "rediss://127.0.0.1:{},rediss://127.0.0.1:{}",
                ports[0], ports[1]
            ),
            None => format!(
                "redis://127.0.0.1:{},redis://127.0.0.1:{}",
                self.nodes[0].1, self.nodes[1].1
            ),
        }
    }

    /// Ports of the nodes, to look at each one.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(_, p, _)| *p).collect()
    }
}

impl Drop for TestRedisCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A `redis-server` child on `127.0.0.1:port` keeping its files in `dir` (created), with no
/// snapshots, plus `extra` arguments.
fn redis_server(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    std::fs::create_dir_all(dir).expect("redis dir");
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (/usr/bin/redis-server)")
}

async fn wait_for_ping(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
            && command_on(port, &["PING"]).await.contains("PONG")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis-server did not come up on port {port}");
}

/// One command on one node (not cluster-routed), its reply as a string; errors too.
pub async fn command_on(port: u16, args: &[&str]) -> String {
    command_at(&url_of(port), args).await
}

fn url_of(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// Repeats a command at `url` until its reply contains `expected`; panics after 30 s, saying
/// what it waited `for_what`.
pub async fn wait_for_reply(url: &str, args: &[&str], expected: &str, for_what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = command_at(url, args).await;
        if reply.contains(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {for_what}: {args:?} answered {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`command_on`] at a URL (with a password, say).
pub async fn command_at(url: &str, args: &[&str]) -> String {
    let client = redis::Client::open(url).unwrap();
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return String::new();
    };
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query_async::<redis::Value>(&mut c).await {
        Ok(v) => format!("{v:?}"),
        Err(e) => e.to_string(),
    }
}

/// A primary, a replica and one sentinel monitoring them as `outpost`, all `redis-server`
/// children on free ports.
pub struct TestRedisSentinel {
    children: Vec<Child>,
    pub primary: u16,
    pub replica: u16,
    pub sentinel: u16,
    _dir: tempfile::TempDir,
}

impl TestRedisSentinel {
    pub const SERVICE: &'static str = "outpost";

    pub async fn start() -> TestRedisSentinel {
        let dir = tempfile::tempdir().expect("temp dir");
        let (primary, replica, sentinel) = (free_port(), free_port(), free_port());
        // Each server in its own folder: a replica writes the snapshot it receives there.
        let mut children = vec![redis_server(primary, &dir.path().join("primary"), &[])];
        wait_for_ping(primary).await;
        children.push(redis_server(
            replica,
            &dir.path().join("replica"),
            &["--replicaof", "127.0.0.1", &primary.to_string()],
        ));
        wait_for_ping(replica).await;
        wait_for_reply(
            &url_of(replica),
            &["INFO", "replication"],
            "master_link_status:up",
            "the replica to sync",
        )
        .await;
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {service} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 5000\n",
                dir.path().display(),
                service = Self::SERVICE,
            ),
        )
        .unwrap();
        children.push(
            Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed"),
        );
        wait_for_ping(sentinel).await;
        let s = TestRedisSentinel {
            children,
            primary,
            replica,
            sentinel,
            _dir: dir,
        };
        // The sentinel must know the replica before it can fail over to it.
        wait_for_reply(
            &url_of(sentinel),
            &["SENTINEL", "REPLICAS", Self::SERVICE],
            &replica.to_string(),
            "the sentinel to find the replica",
        )
        .await;
        s
    }

    /// The sentinel URL list for `RedisConfig { sentinel_service, .. }`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel)
    }

    /// Port of the primary the sentinel names now.
    pub async fn named_primary(&self) -> String {
        command_on(
            self.sentinel,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::SERVICE],
        )
        .await
    }
}

impl Drop for TestRedisSentinel {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `pki`'s CA, with or without its client certificate, as the store takes them.
pub fn redis_tls(pki: &TestPki, client_certificate: bool) -> super::RedisTls {
    super::RedisTls {
        ca_pem: Some(pki.read("ca.pem")),
        client_cert_pem: client_certificate.then(|| pki.read("client.pem")),
        client_key_pem: client_certificate.then(|| pki.read("client.key")),
    }
}

/// A `redis-server` child serving TLS on `tls_port` (verified against a [`TestPki`]) and plain
/// TCP on `port`, the latter only for the test to look inside.
pub struct TestRedisTls {
    child: Child,
    pub port: u16,
    pub tls_port: u16,
    _dir: tempfile::TempDir,
}

impl TestRedisTls {
    /// `auth_clients`: `yes` (mutual TLS), `optional` or `no`; `extra`: more arguments.
    pub async fn start(pki: &TestPki, auth_clients: &str, extra: &[&str]) -> TestRedisTls {
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, tls_port) = (free_port(), free_port());
        let mut args = pki.redis_server_args(tls_port, auth_clients);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = redis_server(port, dir.path(), &args);
        let server = TestRedisTls {
            child,
            port,
            tls_port,
            _dir: dir,
        };
        if extra.contains(&"--requirepass") {
            wait_for_port(port).await;
        } else {
            wait_for_ping(port).await;
        }
        server
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }
}

impl Drop for TestRedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sentinel serving TLS (and plain TCP on `port`), with its own password, monitoring
/// `primary` over TLS as [`TestRedisSentinel::SERVICE`].
pub struct TestSentinelTls {
    child: Child,
    pub port: u16,
    pub tls_port: u16,
    _dir: tempfile::TempDir,
}

impl TestSentinelTls {
    pub async fn start(
        pki: &TestPki,
        primary: &TestRedisTls,
        primary_password: &str,
        sentinel_password: &str,
    ) -> TestSentinelTls {
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, tls_port) = (free_port(), free_port());
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 tls-port {tls_port}\ntls-cert-file {cert}\ntls-key-file {key}\n\
                 tls-ca-cert-file {ca}\ntls-auth-clients no\ntls-replication yes\n\
                 requirepass {sentinel_password}\n\
                 sentinel monitor {service} 127.0.0.1 {primary} 1\n\
                 sentinel auth-pass {service} {primary_password}\n",
                dir = dir.path().display(),
                cert = pki.path("server.pem"),
                key = pki.path("server.key"),
                ca = pki.path("ca.pem"),
                service = TestRedisSentinel::SERVICE,
                primary = primary.tls_port,
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let s = TestSentinelTls {
            child,
            port,
            tls_port,
            _dir: dir,
        };
        // Ready once it has reached the primary over TLS with the password.
        wait_for_reply(
            &format!("redis://:{sentinel_password}@127.0.0.1:{port}"),
            &["SENTINEL", "MASTER", TestRedisSentinel::SERVICE],
            "\"master\"",
            "the TLS sentinel to reach its primary",
        )
        .await;
        s
    }
}

impl Drop for TestSentinelTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
