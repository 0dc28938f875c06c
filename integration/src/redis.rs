//! A real `redis-server` per test, on its own port and data directory.
//!
//! Tests that need Redis get a private instance rather than a shared one, so `FLUSHALL`,
//! `INFO commandstats` or a restart in one test can never disturb another. The helpers speak
//! RESP directly over a socket: the harness stays independent of the Redis client the gateway
//! uses, so a client bug can't hide behind the same client in the test.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ports::free_port;
use crate::process::ManagedProcess;
use crate::wait::{eventually, ms, scaled, secs};

/// Durability of a [`RedisServer`]'s data across [`RedisServer::restart`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Persistence {
    /// No RDB, no AOF: a restart starts empty. The default, and the fastest.
    #[default]
    None,
    /// Append-only file with an fsync per write, so everything Redis acknowledged is still
    /// there after a restart, even after [`RedisServer::stop`] (SIGKILL).
    AppendOnly,
}

/// A `redis-server` child bound to `127.0.0.1` on a free port; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    // Declared before `dir`: fields drop in order, so the server dies before its directory.
    process: Option<ManagedProcess>,
    // Kept across restarts: with `AppendOnly` this is where the data lives.
    dir: tempfile::TempDir,
    port: u16,
    persistence: Persistence,
    generation: u32,
}

impl RedisServer {
    /// Starts a throwaway instance (no persistence) and waits until it answers PING.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not installed or does not come up; the message carries its output.
    pub async fn start() -> Self {
        Self::start_with(Persistence::None).await
    }

    /// Starts an instance whose data survives [`restart`](Self::restart) and
    /// [`stop`](Self::stop) + [`restart`](Self::restart), for "quota survives a restart" tests.
    pub async fn start_persistent() -> Self {
        Self::start_with(Persistence::AppendOnly).await
    }

    pub async fn start_with(persistence: Persistence) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("outpost-test-redis-")
            .tempdir()
            .expect("temp dir for redis");
        let mut server = Self {
            port: free_port(),
            persistence,
            dir,
            process: None,
            generation: 0,
        };
        server.spawn_and_wait().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:PORT`, the form gateway configuration takes.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(ManagedProcess::is_running)
    }

    /// Kills the server (SIGKILL, no chance to save): what a crash or an OOM kill looks like to
    /// the gateway. The port stays reserved for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again on the same port and waits for PING. A running server is first
    /// shut down cleanly (SIGTERM), so with [`Persistence::AppendOnly`] nothing is lost.
    pub async fn restart(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(secs(10)).await;
        }
        self.spawn_and_wait().await;
    }

    /// Runs one command against this server; see [`redis_command`].
    pub async fn command(&self, args: &[&str]) -> String {
        redis_command(self.port, args).await
    }

    /// The server's log so far (its current run).
    pub fn output_so_far(&self) -> String {
        self.process
            .as_ref()
            .map(ManagedProcess::output_so_far)
            .unwrap_or_default()
    }

    async fn spawn_and_wait(&mut self) {
        self.generation += 1;
        let program =
            std::env::var_os("OUTPOST_REDIS_SERVER").unwrap_or_else(|| "redis-server".into());
        let mut cmd = Command::new(program);
        cmd.arg("--port").arg(self.port.to_string());
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--save",
            "",
            "--logfile",
            "",
        ]);
        cmd.arg("--dir").arg(self.dir.path());
        match self.persistence {
            Persistence::None => cmd.args(["--appendonly", "no"]),
            Persistence::AppendOnly => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
        };
        let name = format!("redis-{}-{}", self.port, self.generation);
        let process =
            ManagedProcess::spawn(name, cmd).expect("spawning redis-server (is it installed?)");
        let process = self.process.insert(process);

        let port = self.port;
        let ready = eventually(secs(15), ms(20), async || {
            if let Some(status) = process.try_exit_status() {
                return Err(format!("redis-server exited with {status}"));
            }
            match try_redis_command(port, &["PING"]).await {
                Ok(reply) if reply == "PONG" => Ok(()),
                Ok(reply) => Err(format!("PING answered {reply:?}")),
                Err(e) => Err(format!("PING failed: {e}")),
            }
        })
        .await;
        if let Err(e) = ready {
            panic!(
                "redis-server on port {port} did not come up: {e}\n{}",
                process.output_so_far()
            );
        }
    }
}

/// Runs one command on the Redis at `127.0.0.1:port` and renders the reply the way
/// `redis-cli` does: simple strings and bulk strings as text, integers as digits, nil as
/// `(nil)`, errors as `(error) MESSAGE`, arrays one element per line.
///
/// # Panics
///
/// If the server can't be reached; use [`try_redis_command`] to observe that instead.
pub async fn redis_command(port: u16, args: &[&str]) -> String {
    try_redis_command(port, args)
        .await
        .unwrap_or_else(|e| panic!("redis command {args:?} on port {port}: {e}"))
}

/// [`redis_command`], returning connection problems instead of panicking.
pub async fn try_redis_command(port: u16, args: &[&str]) -> io::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream.write_all(&encode_command(args)).await?;
        let mut buf = Vec::with_capacity(256);
        loop {
            if let Some((reply, _)) = parse_reply(&buf)? {
                return Ok(reply.render());
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-reply",
                ));
            }
        }
    };
    tokio::time::timeout(scaled(Duration::from_secs(5)), exchange)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no reply within 5s",
            ))
        })
}

/// A RESP command: an array of bulk strings.
fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn render(&self) -> String {
        match self {
            Reply::Simple(s) | Reply::Bulk(Some(s)) => s.clone(),
            Reply::Error(e) => format!("(error) {e}"),
            Reply::Integer(i) => i.to_string(),
            Reply::Bulk(None) | Reply::Array(None) => "(nil)".to_owned(),
            Reply::Array(Some(items)) => items
                .iter()
                .map(Reply::render)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// Parses one RESP2 reply from the front of `buf`: `Ok(None)` if more bytes are needed,
/// otherwise the reply and how many bytes it took. Parsing a complete buffer from scratch each
/// time keeps the reader trivially correct; replies here are small.
fn parse_reply(buf: &[u8]) -> io::Result<Option<(Reply, usize)>> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[..line_end].split_first() else {
        return Err(invalid("empty reply line"));
    };
    let line = String::from_utf8_lossy(line).into_owned();
    let rest = line_end + 2;
    let int = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| invalid(&format!("bad length or integer {s:?}")))
    };
    let reply = match kind {
        b'+' => (Reply::Simple(line), rest),
        b'-' => (Reply::Error(line), rest),
        b':' => (Reply::Integer(int(&line)?), rest),
        b'$' => match usize::try_from(int(&line)?) {
            Err(_) => (Reply::Bulk(None), rest),
            Ok(len) => {
                if buf.len() < rest + len + 2 {
                    return Ok(None);
                }
                let text = String::from_utf8_lossy(&buf[rest..rest + len]).into_owned();
                (Reply::Bulk(Some(text)), rest + len + 2)
            }
        },
        b'*' => match usize::try_from(int(&line)?) {
            Err(_) => (Reply::Array(None), rest),
            Ok(count) => {
                let mut items = Vec::with_capacity(count.min(1024));
                let mut at = rest;
                for _ in 0..count {
                    let Some((item, used)) = parse_reply(&buf[at..])? else {
                        return Ok(None);
                    };
                    items.push(item);
                    at += used;
                }
                (Reply::Array(Some(items)), at)
            }
        },
        other => return Err(invalid(&format!("unknown reply type byte {other:#04x}"))),
    };
    Ok(Some(reply))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("RESP: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resp_replies() {
        assert_eq!(
            parse_reply(b"+PONG\r\n").unwrap(),
            Some((Reply::Simple("PONG".into()), 7))
        );
        assert_eq!(parse_reply(b"+PON").unwrap(), None);
        assert_eq!(parse_reply(b"$5\r\nhel").unwrap(), None);
        assert_eq!(
            parse_reply(b"$-1\r\n").unwrap().unwrap().0.render(),
            "(nil)"
        );
        let (reply, used) = parse_reply(b"*3\r\n:1\r\n$2\r\nab\r\n-ERR no\r\nextra")
            .unwrap()
            .unwrap();
        assert_eq!(used, 25);
        assert_eq!(reply.render(), "1\nab\n(error) ERR no");
        assert!(parse_reply(b"?\r\n").is_err());
    }

    #[tokio::test]
    async fn start_ping_set_get_stop_restart() {
        let mut redis = RedisServer::start().await;
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
        assert_eq!(redis.command(&["PING"]).await, "PONG");
        assert_eq!(redis.command(&["SET", "k", "v"]).await, "OK");
        assert_eq!(redis.command(&["GET", "k"]).await, "v");
        assert_eq!(redis.command(&["INCRBY", "n", "5"]).await, "5");
        assert!(
            redis
                .command(&["INFO", "commandstats"])
                .await
                .contains("cmdstat_set")
        );
        assert!(
            redis
                .command(&["NOSUCHCOMMAND"])
                .await
                .starts_with("(error) ERR")
        );

        redis.stop();
        assert!(!redis.is_running());
        assert!(try_redis_command(redis.port(), &["PING"]).await.is_err());

        let port = redis.port();
        redis.restart().await;
        assert_eq!(redis.port(), port);
        assert_eq!(redis.command(&["PING"]).await, "PONG");
        // No persistence: the restart came back empty.
        assert_eq!(redis.command(&["GET", "k"]).await, "(nil)");
    }

    #[tokio::test]
    async fn append_only_data_survives_kill_and_restart() {
        let mut redis = RedisServer::start_persistent().await;
        assert_eq!(redis.command(&["INCRBY", "quota", "7"]).await, "7");
        redis.stop();
        redis.restart().await;
        assert_eq!(redis.command(&["GET", "quota"]).await, "7");
        // And across a clean restart of a running server.
        redis.restart().await;
        assert_eq!(redis.command(&["INCR", "quota"]).await, "8");
    }
}
