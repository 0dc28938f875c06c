//! A real PostgreSQL server per test: `initdb` in a temporary directory, `postgres` on a free
//! loopback port, killed with its handle.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (CI containers) the data
//! directory is handed to the `postgres` user and the server runs under its uid (set by the
//! kernel at exec: no `su`/`runuser` process in between to outlive a kill). The binaries come
//! from `OUTPOST_TEST_PG_BIN`, else the directory of `initdb` on `PATH` (followed through
//! symlinks: Debian links them from `/usr/lib/postgresql/<version>/bin`), else the newest
//! `/usr/lib/postgresql/*/bin`.
//!
//! Like [`RedisServer`](crate::RedisServer), the helpers talk to the server with its own tools
//! (`psql`), independent of the client the control plane uses. Blocking on purpose: usable from
//! plain `#[test]`s and, briefly, from async ones.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::TestPki;
use crate::ports::free_port;
use crate::process::ManagedProcess;
use crate::wait::secs;

/// The database role the servers are initialised with (trust authentication on loopback).
pub const PG_USER: &str = "outpost";
/// The database made at start; [`PostgresServer::url`] points at it.
pub const PG_DATABASE: &str = "outpost";

/// A `postgres` child on `127.0.0.1` and a free port; stopped on drop.
pub struct PostgresServer {
    // Declared before `dir`: the server dies before its directory goes.
    process: Option<ManagedProcess>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// `(uid, gid)` to run the server and its tools as, when we are root.
    run_as: Option<(u32, u32)>,
    tls: bool,
}

impl PostgresServer {
    /// `initdb`, start, `CREATE DATABASE outpost`.
    ///
    /// # Panics
    ///
    /// If PostgreSQL is not installed or does not come up; the message carries its output.
    pub fn start() -> PostgresServer {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start), and serving TLS (`ssl = on`) with `pki`'s server
    /// certificate (for `127.0.0.1`); plain connections are refused for TCP.
    pub fn start_tls(pki: &TestPki) -> PostgresServer {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&TestPki>) -> PostgresServer {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("outpost-test-pg-")
            .tempdir()
            .expect("temp dir for postgres");
        let run_as = if running_as_root() {
            let ids = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))
                .expect("chown the PostgreSQL test directory to postgres");
            Some(ids)
        } else {
            None
        };
        let mut server = PostgresServer {
            process: None,
            dir,
            bin,
            port: free_port(),
            run_as,
            tls: pki.is_some(),
        };
        server.init(pki);
        server.spawn_and_wait();
        server.psql("postgres", &format!("CREATE DATABASE {PG_DATABASE}"));
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://outpost@127.0.0.1:PORT/outpost`, the form `store.url` takes.
    pub fn url(&self) -> String {
        self.url_for(PG_DATABASE)
    }

    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database on this server; returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url_for(name)
    }

    /// Runs `sql` with `psql` against `database`; returns its unaligned, tuples-only output
    /// (one row a line, columns separated by `|`).
    ///
    /// # Panics
    ///
    /// When `psql` fails; the message carries its error output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let mut cmd = self.tool("psql");
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                PG_USER,
                "-d",
                database,
                "-c",
                sql,
            ]);
        let out = cmd.output().expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The server's log so far.
    pub fn output_so_far(&self) -> String {
        self.process
            .as_ref()
            .map(ManagedProcess::output_so_far)
            .unwrap_or_default()
    }

    /// The Unix socket directory (`psql` uses it, so TLS-only TCP does not get in its way).
    fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(name));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        // Tools look for a home and the current directory; root's may not be readable.
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn init(&self, pki: Option<&TestPki>) {
        let mut cmd = self.tool("initdb");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-U", PG_USER, "-A", "trust", "-E", "UTF8", "--no-sync"])
            .env("LC_ALL", "C");
        let out = cmd
            .output()
            .expect("initdb runs (is PostgreSQL installed?)");
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 50\n",
            self.port,
            self.socket_dir().display()
        );
        if let Some(pki) = pki {
            // Copied into the data directory: the server reads them as its own user, and
            // insists the key is private.
            for (from, to) in [("server.pem", "server.crt"), ("server.key", "server.key")] {
                let target = self.data().join(to);
                std::fs::write(&target, pki.read(from)).unwrap();
                std::fs::set_permissions(
                    &target,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .unwrap();
                if let Some((uid, gid)) = self.run_as {
                    std::os::unix::fs::chown(&target, Some(uid), Some(gid)).unwrap();
                }
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            // TCP only with TLS; the Unix socket (psql) stays plain.
            std::fs::write(
                self.data().join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
        }
        let conf_path = self.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
    }

    fn spawn_and_wait(&mut self) {
        let mut cmd = self.tool("postgres");
        cmd.arg("-D").arg(self.data());
        let process =
            ManagedProcess::spawn(format!("postgres-{}", self.port), cmd).expect("spawn postgres");
        self.process = Some(process);
        let deadline = Instant::now() + secs(30);
        loop {
            let ready = self
                .tool("pg_isready")
                .arg("-h")
                .arg(self.socket_dir())
                .args(["-p", &self.port.to_string(), "-U", PG_USER])
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                return;
            }
            let exited = self.process.as_mut().is_some_and(|p| !p.is_running());
            assert!(
                !exited && Instant::now() < deadline,
                "postgres did not come up on port {}:\n{}",
                self.port,
                self.output_so_far()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the server speaks TLS on TCP.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The data directory's path (owned by `postgres` when the tests run as root).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Immediate shutdown: the postmaster takes its backends down with it (a SIGKILL of the
        // postmaster alone would leave them to notice by themselves).
        if self.process.is_some() {
            let _ = self
                .tool("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

impl std::fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresServer")
            .field("port", &self.port)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Whether this process is root (`/proc/self` belongs to the effective uid).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id runs");
        assert!(
            out.status.success(),
            "tests run as root and need the `postgres` user to run PostgreSQL (Debian's \
             postgresql package makes it)"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OUTPOST_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("initdb"))
            .find(|p| p.is_file())
    });
    if let Some(initdb) = on_path
        && let Ok(real) = std::fs::canonicalize(initdb)
        && let Some(dir) = real.parent()
    {
        return dir.to_path_buf();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|d| d.join("initdb").is_file())
        .expect("PostgreSQL is installed (initdb on PATH, or /usr/lib/postgresql/*/bin); .ci/run installs it")
}
