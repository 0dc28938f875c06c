//! Multi-process test harness for Outpost.
//!
//! The scenario suites in `integration/tests/` run the real `outpost` binary, a real
//! `redis-server` and real HTTP backends, all on loopback, and break the network between them
//! on purpose. This crate is the toolbox they share:
//!
//! - [`ports`]: loopback ports for processes we spawn, never the same one twice per process.
//! - [`process`]: [`ManagedProcess`], a child with captured output that dies with its handle,
//!   and [`outpost_binary`] to find (or build) the binary under test.
//! - [`wait`]: [`eventually`] and [`wait_for_http_ok`]; every deadline stretches with
//!   `OUTPOST_TEST_PATIENCE`.
//! - [`redis`]: [`RedisServer`], a private `redis-server` that can be killed and restarted on
//!   the same port, optionally with its data kept; [`redis_command`] to inspect it.
//! - [`postgres`]: [`PostgresServer`], a private PostgreSQL (`initdb` + `postgres`, as the
//!   `postgres` user when the tests run as root) for the control plane's PostgreSQL store.
//! - [`fault_proxy`]: [`FaultProxy`], a TCP proxy switchable between pass, refuse, black hole
//!   and delay while traffic flows.
//! - [`backend`]: [`TestBackend`], an HTTP backend that echoes what it received and counts it.
//! - [`http`]: a test [`client`], [`hey`] for bounded bursts and [`LoadLoop`] for steady
//!   background load during faults.
//! - [`compose`]: [`ComposeFleet`], `compose/docker-compose.yml` run by a Docker engine under a
//!   project name of its own and always taken down (`tests/compose_up.rs`).
//! - [`wan_delay`]: [`WanDelay`], added latency on a container's network interface (NFQUEUE,
//!   for kernels without netem).
//! - [`scenarios`]: the fault suite (control plane, site A on Redis, site B with backup, one
//!   fault at a time), shared by `tests/fault_suite.rs` and the `reliability-report` binary.
//!
//! Ground rules the pieces enforce, so the suites can't get them wrong:
//!
//! - Everything listens on `127.0.0.1`, on ports chosen at run time; no fixed port anywhere,
//!   so suites run in parallel.
//! - Everything is torn down by `Drop`, panics included: a failed test leaves no process or
//!   listener behind. A process dropped during a panic prints its last output and keeps its log.
//! - Tests wait for conditions ([`eventually`]), never for fixed sleeps, and assert on time only
//!   as a lower bound.
//! - Every load loop is bounded in count or duration and stops by itself.
//!
//! A typical gateway scenario:
//!
//! ```ignore
//! use outpost_integration::*;
//!
//! let backend = TestBackend::start();
//! let redis = RedisServer::start().await;
//! let redis_link = FaultProxy::start(redis.addr());
//! let ops = free_port();
//! let mut gateway = ManagedProcess::spawn("gateway", {
//!     let mut cmd = outpost_command();
//!     cmd.args(["gateway", "--config", config_path]);
//!     cmd.env("OUTPOST_LISTEN_OPS", format!("127.0.0.1:{ops}"));
//!     cmd.env("OUTPOST_REDIS_URL", format!("redis://{}", redis_link.addr()));
//!     cmd
//! })?;
//! wait_for_http_ok(&format!("http://127.0.0.1:{ops}/readyz"), secs(30)).await?;
//!
//! let load = LoadLoop::start(client(), vec![gateway_url], 50.0, secs(60));
//! redis_link.set_mode(FaultMode::BlackHole);
//! // ... assert the gateway keeps answering ...
//! let report = load.stop().await;
//! assert_eq!(report.failed, 0, "{report}");
//! ```
//!
//! Environment knobs: `OUTPOST_BIN` (binary under test), `OUTPOST_TEST_REBUILD` (build it once
//! per test process even if present), `OUTPOST_TEST_PATIENCE` (timeout multiplier),
//! `OUTPOST_TEST_KEEP_LOGS` (keep every process log, not only failed tests'),
//! `OUTPOST_REDIS_SERVER` (path of `redis-server`).

pub mod backend;
pub mod compose;
pub mod fault_proxy;
pub mod fleet;
pub mod http;
pub mod pki;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod scenarios;
pub mod wait;
pub mod wan_delay;

pub use backend::TestBackend;
pub use compose::{ComposeCli, ComposeFleet, compose_cli};
pub use fault_proxy::{FaultMode, FaultProxy};
pub use fleet::{ADMIN_TOKEN, ControlPlane, Gateway, GatewayOptions};
pub use http::{LoadLoop, LoadReport, client, client_builder, hey, hey_with};
pub use pki::TestPki;
pub use ports::{free_addr, free_port};
pub use postgres::PostgresServer;
pub use process::{ManagedProcess, outpost_binary, outpost_command, target_dir, workspace_root};
pub use redis::{Persistence, RedisServer, redis_command, try_redis_command};
pub use wait::{eventually, ms, patience, scaled, secs, wait_for_http_ok};
pub use wan_delay::WanDelay;
