//! Active health checks of backend pools, off the request path.
//!
//! One supervisor task per gateway watches the published route table (a pointer comparison a
//! second) and keeps one checking task per pool that has a `health-check`: started when the
//! pool appears, kept across configurations that leave the pool's members and check alone
//! (their state is the same, see `MemberRegistry`), stopped when it goes. Each pool task sends
//! `GET <member base path><path>` to every member each interval, at once, over a connection of
//! its own (HTTP/1.1, `Connection: close`; TLS with the backend's profile on `https://`), and
//! feeds the result to the member's state, which the request path reads.
//!
//! A check passes on a status from 200 to 399 within `timeout-ms`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use outpost_actors::route_table::TableHandle;
use outpost_actors::route_table::pool::{HealthCheckRule, Member, Pool};
use outpost_actors::route_table::table::CompiledBackend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How often the supervisor looks for a new table.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Most bytes of a check's answer read to find its status line.
const MAX_HEAD: usize = 8 << 10;

/// What identifies a pool's checking task: the same key, the same task. (Backend, check,
/// members, TLS profile.)
type Key = (Arc<str>, HealthCheckRule, Vec<Arc<str>>, u64);

/// Runs until dropped (with the gateway's actix system).
pub async fn supervise(table: TableHandle) {
    let mut running: HashMap<Key, actix_rt::task::JoinHandle<()>> = HashMap::new();
    let mut seen: Option<usize> = None;
    loop {
        let current = table.load_full();
        let ptr = current.as_ref().map(|t| Arc::as_ptr(t) as usize);
        if ptr != seen {
            seen = ptr;
            let mut wanted: HashMap<Key, Arc<CompiledBackend>> = HashMap::new();
            for b in current.iter().flat_map(|t| t.backends.values()) {
                if let Some(pool) = &b.pool
                    && let Some(rule) = &pool.health_check
                {
                    let labels = pool.members.iter().map(|m| m.label.clone()).collect();
                    wanted.insert((b.name.clone(), rule.clone(), labels, b.tls.id), b.clone());
                }
            }
            running.retain(|key, task| {
                let keep = wanted.contains_key(key);
                if !keep {
                    task.abort();
                }
                keep
            });
            for (key, backend) in wanted {
                running
                    .entry(key)
                    .or_insert_with(|| actix_rt::spawn(check_pool(backend)));
            }
        }
        actix_rt::time::sleep(WATCH_EVERY).await;
    }
}

/// Checks every member of one pool, each interval, until aborted.
async fn check_pool(backend: Arc<CompiledBackend>) {
    let Some(pool) = backend.pool.clone() else {
        return;
    };
    let Some(rule) = pool.health_check.clone() else {
        return;
    };
    let mut tick = actix_rt::time::interval(rule.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (backend, rule) = (&backend, &rule);
        let checks = pool
            .members
            .iter()
            .map(|m| async move { (m, check(backend, m, rule).await) });
        for (member, result) in futures_util::future::join_all(checks).await {
            record(&pool, member, rule, result);
        }
    }
}

fn record(pool: &Pool, member: &Member, rule: &HealthCheckRule, result: Result<u16, String>) {
    let ok = matches!(result, Ok(200..=399));
    let outcome = if ok { "pass" } else { "fail" };
    metrics::counter!("outpost_backend_health_checks_total",
        "backend" => pool.backend.to_string(), "member" => member.label.to_string(),
        "result" => outcome)
    .increment(1);
    match member.state.check_result(ok, rule) {
        Some(true) => {
            let why = match &result {
                Ok(status) => format!("status {status}"),
                Err(e) => e.clone(),
            };
            tracing::warn!(backend = %pool.backend, member = %member.label, reason = %why,
                "pool member failed its health checks: out of rotation");
        }
        Some(false) => tracing::info!(backend = %pool.backend, member = %member.label,
            "pool member passed its health checks: back in rotation"),
        None => {}
    }
}

/// One check: the status the member answered, or why there was none.
async fn check(
    backend: &CompiledBackend,
    member: &Member,
    rule: &HealthCheckRule,
) -> Result<u16, String> {
    match actix_rt::time::timeout(rule.timeout, get(backend, member, &rule.path)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", rule.timeout.as_millis())),
    }
}

async fn get(backend: &CompiledBackend, member: &Member, path: &str) -> Result<u16, String> {
    let url = &member.url;
    let port = url
        .authority
        .parse::<http::uri::Authority>()
        .ok()
        .and_then(|a| a.port_u16())
        .unwrap_or(if url.https { 443 } else { 80 });
    let host = url.host().to_owned();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let head = format!(
        "GET {}{path} HTTP/1.1\r\nhost: {}\r\nuser-agent: outpost-health-check\r\nconnection: close\r\n\r\n",
        url.base_path, url.authority
    );
    if !url.https {
        return exchange(tcp, head.as_bytes()).await;
    }
    let tls = &backend.tls;
    let name = match &tls.server_name {
        Some(n) => n.clone(),
        None => ServerName::try_from(host.clone()).map_err(|e| format!("'{host}': {e}"))?,
    };
    let mut config = (*tls.config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    exchange(stream, head.as_bytes()).await
}

/// Writes the request and reads the status code of the answer's status line.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    head: &[u8],
) -> Result<u16, String> {
    io.write_all(head).await.map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        if buf.len() > MAX_HEAD {
            return Err("no status line".into());
        }
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before answering".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    status_of(&buf).ok_or_else(|| "not an HTTP/1.x answer".to_owned())
}

/// The status of `HTTP/1.x NNN ...`.
fn status_of(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\n').next()?;
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_lines() {
        assert_eq!(
            super::status_of(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(super::status_of(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(super::status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(super::status_of(b"HTTP/1.1 2\r\n"), None);
    }
}
