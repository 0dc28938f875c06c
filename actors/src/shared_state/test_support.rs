//! Test helpers: a private `redis-server` on a free port, and a server that never answers.

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

pub use outpost_integration::free_port;

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
    dir: tempfile::TempDir,
}

impl TestRedisCluster {
    pub async fn start() -> TestRedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes = (0..3).map(|_| (None, free_port(), free_port())).collect();
        let mut cluster = TestRedisCluster { nodes, dir };
        cluster.spawn_all().await;
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(_, p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_until_ok().await;
        cluster
    }

    async fn spawn_all(&mut self) {
        for (i, (child, port, bus)) in self.nodes.iter_mut().enumerate() {
            let node_dir = self.dir.path().join(format!("n{i}"));
            *child = Some(redis_server(
                *port,
                &node_dir,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                    "--cluster-config-file",
                    "nodes.conf",
                ],
            ));
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
        format!(
            "redis://127.0.0.1:{},redis://127.0.0.1:{}",
            self.nodes[0].1, self.nodes[1].1
        )
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
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
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
        let deadline = Instant::now() + Duration::from_secs(20);
        while !command_on(replica, &["INFO", "replication"])
            .await
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the replica did not sync");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        let deadline = Instant::now() + Duration::from_secs(20);
        while !command_on(sentinel, &["SENTINEL", "REPLICAS", Self::SERVICE])
            .await
            .contains(&replica.to_string())
        {
            assert!(
                Instant::now() < deadline,
                "the sentinel did not find the replica"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
