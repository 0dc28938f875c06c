//! Child processes under test: the `outpost` binary, `redis-server`.
//!
//! A [`ManagedProcess`] owns its child for the length of a test. Output goes to a log file
//! (complete, for reading after the fact) and to an in-memory tail (for assertion messages),
//! and the child is always killed when the handle is dropped, including when the test panics,
//! so a failing test never leaves a gateway holding a port for the next one.
//!
//! The child is a `std::process::Child`, not a tokio one: dropping must kill and reap without
//! a runtime (a test may drop a process after its runtime has gone), and output is drained by
//! two plain threads so a child that logs a lot can never block on a full pipe while the test
//! is busy elsewhere.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::wait::{eventually, ms};

/// How many output lines are kept in memory for [`ManagedProcess::tail`].
const TAIL_LINES: usize = 400;

/// Set to keep every process log directory, not only those of failed tests.
const KEEP_LOGS_ENV: &str = "OUTPOST_TEST_KEEP_LOGS";

/// Output shared between the reader threads and the handle.
struct Output {
    log: File,
    tail: VecDeque<String>,
}

/// A spawned child process, killed on drop.
pub struct ManagedProcess {
    name: String,
    child: Child,
    output: Arc<Mutex<Output>>,
    log_path: PathBuf,
    // Held so the log survives as long as the handle; `None` once deliberately kept on disk.
    log_dir: Option<tempfile::TempDir>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Spawns `cmd`, capturing stdout and stderr. `name` labels logs and panic messages
    /// (e.g. `"gateway-a1"`).
    ///
    /// stdin is closed: nothing under test should wait for a terminal.
    pub fn spawn(name: impl Into<String>, mut cmd: Command) -> io::Result<Self> {
        let name = name.into();
        let log_dir = tempfile::Builder::new()
            .prefix(&format!("outpost-test-{}-", sanitize(&name)))
            .tempdir()?;
        let log_path = log_dir.path().join(format!("{}.log", sanitize(&name)));
        let log = File::create(&log_path)?;

        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("spawning {name} ({:?}): {e}", cmd.get_program()),
                )
            })?;

        let output = Arc::new(Mutex::new(Output {
            log,
            tail: VecDeque::with_capacity(TAIL_LINES),
        }));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let readers = vec![
            spawn_reader(&name, "stdout", stdout, Arc::clone(&output))?,
            spawn_reader(&name, "stderr", stderr, Arc::clone(&output))?,
        ];

        Ok(Self {
            name,
            child,
            output,
            log_path,
            log_dir: Some(log_dir),
            readers,
            exit: None,
        })
    }

    /// Shorthand for spawning `program` with `args` and extra environment variables.
    pub fn spawn_with<I, S, E, K, V>(
        name: impl Into<String>,
        program: impl AsRef<OsStr>,
        args: I,
        envs: E,
    ) -> io::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(envs);
        Self::spawn(name, cmd)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the complete output is being written.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The exit status, if the process has exited; never blocks.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            // An error here means the child was already reaped, which only we do.
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit on its own. The timeout is *not* scaled by
    /// patience: callers asserting "exits promptly" mean it.
    ///
    /// Once it has exited, the output readers are given a moment to drain, so
    /// [`output_so_far`](Self::output_so_far) then holds the last words of the process.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_exit_status() {
                break status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(ms(10)).await;
        };
        self.drain_readers(Duration::from_secs(2)).await;
        Some(status)
    }

    /// Graceful stop: SIGTERM, up to `grace` for the process to exit, then SIGKILL.
    /// Returns how it exited (a signal status if it had to be killed).
    pub async fn stop(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.try_exit_status() {
            return status;
        }
        if let Ok(pid) = i32::try_from(self.pid()) {
            // ESRCH just means it exited between the check and the signal.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if let Some(status) = self.wait_exit(grace).await {
            return status;
        }
        let status = self.kill();
        self.drain_readers(Duration::from_secs(2)).await;
        status
    }

    /// SIGKILL and reap. Blocks only for as long as the kernel takes to tear the process down.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit_status() {
            return status;
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("waiting for a child we own");
        self.exit = Some(status);
        status
    }

    /// Everything the process has written so far, stdout and stderr interleaved in arrival order.
    pub fn output_so_far(&self) -> String {
        // Writes happen under the same lock, so holding it gives a consistent snapshot.
        let _guard = self.output.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of output (at most the last 400 are kept in memory), for assertion
    /// messages.
    pub fn tail(&self, n: usize) -> String {
        let output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        let skip = output.tail.len().saturating_sub(n);
        output
            .tail
            .iter()
            .skip(skip)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until a line of output contains `needle`, and returns that line.
    pub async fn wait_for_output(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        eventually(timeout, ms(25), async || {
            self.output_so_far()
                .lines()
                .find(|line| line.contains(needle))
                .map(str::to_owned)
                .ok_or_else(|| {
                    format!(
                        "{} has not printed {needle:?}; last lines:\n{}",
                        self.name,
                        self.tail(20)
                    )
                })
        })
        .await
    }

    /// Gives the reader threads up to `timeout` to reach end-of-file after the child exited.
    /// They finish almost at once; the bound covers a grandchild that inherited the pipe.
    async fn drain_readers(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(ms(5)).await;
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
        let keep = std::env::var_os(KEEP_LOGS_ENV).is_some();
        if std::thread::panicking() || keep {
            // The test failed (or the user asked): keep the log and say where it is, with the
            // last lines inline since that is usually all one needs.
            if let Some(dir) = self.log_dir.take() {
                let _ = dir.keep();
            }
            if std::thread::panicking() {
                eprintln!(
                    "---- {} (pid {}) last output; full log: {} ----\n{}\n---- end {} ----",
                    self.name,
                    self.pid(),
                    self.log_path.display(),
                    self.tail(40),
                    self.name,
                );
            }
        }
    }
}

impl std::fmt::Debug for ManagedProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("log", &self.log_path)
            .field("exit", &self.exit)
            .finish()
    }
}

fn spawn_reader(
    name: &str,
    stream: &'static str,
    pipe: impl Read + Send + 'static,
    output: Arc<Mutex<Output>>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("{name}-{stream}"))
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            // Byte lines, not `lines()`: one invalid UTF-8 byte must not end the capture.
            while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                buf.clear();
                let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(out.log, "{line}");
                if out.tail.len() == TAIL_LINES {
                    out.tail.pop_front();
                }
                out.tail.push_back(line);
            }
        })
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The workspace root (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("integration/ lives inside the workspace")
        .to_path_buf()
}

/// The workspace's target directory: `CARGO_TARGET_DIR` (relative to the workspace root) when
/// set, else `target/`. Test artefacts go under it (`target/test-artefacts/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| {
            if d.is_relative() {
                workspace_root().join(d)
            } else {
                d
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Path of the `outpost` binary under test.
///
/// `OUTPOST_BIN` wins if set (CI can point at a release build). Otherwise the debug binary in
/// the workspace target directory (honouring `CARGO_TARGET_DIR`), built with
/// `cargo build -p outpost --bin outpost` the first time this is called in the test process if
/// it is missing: integration tests live in another package, so `cargo test -p
/// outpost-integration` alone would not build it.
///
/// An existing binary is used as is, so after changing the gateway either run
/// `cargo build -p outpost` first or set `OUTPOST_TEST_REBUILD=1` to have the harness run that
/// build once per test process (a no-op build costs about a second).
///
/// # Panics
///
/// If the binary is missing and the build fails; the message carries cargo's output.
pub fn outpost_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("OUTPOST_BIN") {
                return PathBuf::from(bin);
            }
            let bin = target_dir().join("debug").join("outpost");
            if !bin.exists() || std::env::var_os("OUTPOST_TEST_REBUILD").is_some() {
                build_outpost();
            }
            assert!(
                bin.exists(),
                "cargo build succeeded but {} does not exist",
                bin.display()
            );
            bin
        })
        .clone()
}

/// A `Command` for the `outpost` binary, with backtraces on so a panic in a child is readable
/// in its log.
pub fn outpost_command() -> Command {
    let mut cmd = Command::new(outpost_binary());
    cmd.env("RUST_BACKTRACE", "1");
    cmd
}

fn build_outpost() {
    // `CARGO` is the cargo running the tests, so the build uses the same toolchain.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", "outpost", "--bin", "outpost"])
        .current_dir(workspace_root())
        .output()
        .expect("running cargo build for the outpost binary");
    assert!(
        out.status.success(),
        "cargo build -p outpost --bin outpost failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(name: &str, script: &str) -> ManagedProcess {
        ManagedProcess::spawn_with(name, "/bin/sh", ["-c", script], [("GREETING", "hello")])
            .expect("spawn sh")
    }

    #[tokio::test]
    async fn captures_stdout_and_stderr_and_exit_status() {
        let mut p = sh("echo", "echo \"$GREETING out\"; echo 'to err' >&2; exit 3");
        let status = p
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("sh exits");
        assert_eq!(status.code(), Some(3));
        let out = p.output_so_far();
        assert!(out.contains("hello out"), "{out}");
        assert!(out.contains("to err"), "{out}");
        assert!(p.tail(10).contains("hello out"));
        assert!(!p.is_running());
    }

    #[tokio::test]
    async fn stop_sends_sigterm_first() {
        // The trap proves the process saw SIGTERM rather than being killed outright.
        let mut p = sh(
            "trap",
            "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
        );
        p.wait_for_output("ready", Duration::from_secs(10))
            .await
            .unwrap();
        let status = p.stop(Duration::from_secs(10)).await;
        assert!(status.success(), "{status:?}\n{}", p.output_so_far());
        assert!(p.output_so_far().contains("got-term"));
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill() {
        let mut p = sh(
            "stubborn",
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        );
        p.wait_for_output("ready", Duration::from_secs(10))
            .await
            .unwrap();
        let status = p.stop(Duration::from_millis(200)).await;
        assert!(!status.success());
    }

    #[test]
    fn drop_kills() {
        let p = sh("sleeper", "sleep 600");
        let pid = i32::try_from(p.pid()).unwrap();
        drop(p);
        // Killed and reaped, so the pid no longer names our child (signal 0 probes existence).
        assert!(kill(Pid::from_raw(pid), None).is_err());
    }

    #[tokio::test]
    async fn wait_exit_times_out_on_a_running_process() {
        let mut p = sh("sleeper", "sleep 600");
        assert_eq!(p.wait_exit(Duration::from_millis(50)).await, None);
        assert!(p.is_running());
    }

    #[test]
    fn workspace_root_has_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }
}
