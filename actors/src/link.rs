//! The gateway's outbound link to the control plane's gateway listener.
//!
//! Every call goes out from the gateway (nothing listens for the control plane), carries the
//! gateway token, and speaks bincode. Failures are classified once, here, the way the callers
//! act on them: retry later ([`CallError::Unreachable`]), stop trusting the token
//! ([`CallError::Unauthorized`]), look at what was sent ([`CallError::Refused`]: a 4xx the
//! caller may judge by its status), or report a broken answer ([`CallError::Rejected`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use awc::http::StatusCode;
use outpost_model::wire::{
    self, BINCODE_MEDIA_TYPE, CONFIG_PATH, ConfigUpdate, HEARTBEAT_PATH, Heartbeat, HeartbeatAck,
    TELEMETRY_PATH, TelemetryBatch,
};
use serde::{Serialize, de::DeserializeOwned};

/// Largest answer accepted from the control plane (a full snapshot of a big configuration).
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Builds the HTTP client on the arbiter that uses it (`awc::Client` is not `Send`), with
/// whatever TLS trust the process was configured with.
#[derive(Clone)]
pub struct ClientFactory(Arc<dyn Fn() -> awc::Client + Send + Sync>);

impl ClientFactory {
    pub fn new(f: impl Fn() -> awc::Client + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Plain HTTP only (tests, loopback control planes).
    pub fn plain() -> Self {
        Self::new(awc::Client::default)
    }

    pub fn build(&self) -> awc::Client {
        (self.0)()
    }
}

impl std::fmt::Debug for ClientFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientFactory")
    }
}

/// Where the control plane is and how to talk to it; shared by every actor using the link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Base URLs of the gateway listeners of the control plane's replicas, without a trailing
    /// `/`: calls go to one of them and move to the next when it is unreachable.
    pub base_urls: Vec<String>,
    pub token: String,
    /// Bound of one call; a long-poll gets its wait on top.
    pub request_timeout: Duration,
    pub clients: ClientFactory,
    /// Index into `base_urls` of the replica in use, shared by every actor of the gateway so
    /// they fail over together (one process-wide view of which replica answers).
    pub current: Arc<AtomicUsize>,
}

impl LinkConfig {
    /// One control plane (or one load-balanced name for several).
    pub fn single(
        base_url: impl Into<String>,
        token: impl Into<String>,
        request_timeout: Duration,
        clients: ClientFactory,
    ) -> LinkConfig {
        LinkConfig {
            base_urls: vec![base_url.into()],
            token: token.into(),
            request_timeout,
            clients,
            current: Arc::default(),
        }
    }

    /// The base URL calls go to now.
    pub fn base_url(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.base_urls.len().max(1);
        self.base_urls.get(i).map_or("", String::as_str)
    }

    /// Calls go to the replica after `failed` from now on, unless another call already moved
    /// on from it (several actors failing at once move one step, not one each).
    fn fail_over(&self, failed: usize) -> usize {
        let n = self.base_urls.len().max(1);
        let next = (failed + 1) % n;
        match self
            .current
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => {
                tracing::warn!(
                    from = %self.base_urls[failed],
                    to = %self.base_urls[next],
                    "control plane replica unreachable; using the next one"
                );
                next
            }
            Err(now) => now % n,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Connect failure, timeout, 5xx, 429: the control plane is not there for us right now.
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    /// 401/403: the token is expired, revoked or forged. The reason is the control plane's.
    #[error("control plane refused the gateway token: {0}")]
    Unauthorized(String),
    /// Any other 4xx: the control plane answered and refused this request. `reason` is its
    /// problem text (message and problems), bounded. Whether sending the same request again
    /// can ever work depends on the call and the status (see the telemetry buffer).
    #[error("the control plane refused the request ({status}): {reason}")]
    Refused { status: u16, reason: String },
    /// An answer we cannot use (undecodable or empty body, a status outside the above).
    #[error("unusable answer from the control plane: {0}")]
    Rejected(String),
}

/// One arbiter's handle on the link.
#[derive(Clone)]
pub struct Link {
    config: Arc<LinkConfig>,
    client: awc::Client,
}

impl Link {
    pub fn new(config: Arc<LinkConfig>) -> Self {
        let client = config.clients.build();
        Self { config, client }
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// `GET /gateway/v1/config?after=R&wait=S[&hash=H]`: `None` when nothing changed within
    /// `wait`. `hash`: the content hash held at `after`; the control plane answers at once with a
    /// full snapshot when its own view at that revision hashes differently, so a configuration
    /// altered on this side cannot outlive a reconnection just because the revision is the same.
    pub async fn poll_config(
        &self,
        after: u64,
        wait: Duration,
        hash: Option<&str>,
    ) -> Result<Option<ConfigUpdate>, CallError> {
        // A content hash is hex; anything else is not sent (it could not match anyway).
        let hash = hash.filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()));
        self.each_replica(|base| async move {
            let mut url = format!("{base}{CONFIG_PATH}?after={after}&wait={}", wait.as_secs());
            if let Some(h) = hash {
                url.push_str("&hash=");
                url.push_str(h);
            }
            let request = self
                .client
                .get(url)
                .timeout(wait + self.config.request_timeout)
                .insert_header(("Authorization", self.config.token.as_str()))
                .insert_header(("Accept", BINCODE_MEDIA_TYPE));
            let mut response = request.send().await.map_err(unreachable)?;
            let status = response.status();
            if status == StatusCode::NOT_MODIFIED {
                return Ok(None);
            }
            let body = response
                .body()
                .limit(MAX_BODY_BYTES)
                .await
                .map_err(unreachable)?;
            check_status(status, &body)?;
            decode(&body).map(Some)
        })
        .await
    }

    /// Runs `call` against the replica in use; while it is unreachable, against each other
    /// replica once, in order, before giving up (the caller's backoff then applies). A
    /// gateway whose replica dies therefore asks the next one at once, with the revision it
    /// holds, and gets the changes since (not a snapshot) from it.
    async fn each_replica<'a, T, F, Fut>(&'a self, call: F) -> Result<T, CallError>
    where
        F: Fn(&'a str) -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let n = self.config.base_urls.len().max(1);
        let mut i = self.config.current.load(Ordering::Relaxed) % n;
        let mut attempt = 0;
        loop {
            let base = self.config.base_urls.get(i).map_or("", String::as_str);
            match call(base).await {
                Err(CallError::Unreachable(e)) if attempt + 1 < n => {
                    tracing::debug!(replica = %base, error = %e, "control plane call failed");
                    i = self.config.fail_over(i);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// `POST /gateway/v1/heartbeat`.
    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<HeartbeatAck, CallError> {
        let body = self.post(HEARTBEAT_PATH, heartbeat).await?;
        decode(&body)
    }

    /// `POST /gateway/v1/telemetry`.
    pub async fn upload_telemetry(&self, batch: &TelemetryBatch) -> Result<(), CallError> {
        self.post(TELEMETRY_PATH, batch).await.map(drop)
    }

    async fn post<T: Serialize>(&self, path: &str, value: &T) -> Result<bytes::Bytes, CallError> {
        let payload: bytes::Bytes = wire::encode(value)
            .map_err(|e| CallError::Rejected(e.to_string()))?
            .into();
        self.each_replica(|base| {
            let payload = payload.clone();
            async move {
                let mut response = self
                    .client
                    .post(format!("{base}{path}"))
                    .timeout(self.config.request_timeout)
                    .insert_header(("Authorization", self.config.token.as_str()))
                    .insert_header(("Content-Type", BINCODE_MEDIA_TYPE))
                    .insert_header(("Accept", BINCODE_MEDIA_TYPE))
                    .send_body(payload)
                    .await
                    .map_err(unreachable)?;
                let status = response.status();
                let body = response
                    .body()
                    .limit(MAX_BODY_BYTES)
                    .await
                    .map_err(unreachable)?;
                check_status(status, &body)?;
                Ok(body)
            }
        })
        .await
    }
}

fn unreachable(e: impl std::fmt::Display) -> CallError {
    CallError::Unreachable(e.to_string())
}

fn check_status(status: StatusCode, body: &[u8]) -> Result<(), CallError> {
    if status.is_success() {
        return Ok(());
    }
    let reason = reason_of(body);
    let described = if reason.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {reason}")
    };
    Err(match status.as_u16() {
        401 | 403 => CallError::Unauthorized(if reason.is_empty() {
            status.to_string()
        } else {
            reason
        }),
        408 | 429 | 500..=599 => CallError::Unreachable(described),
        code @ 400..=499 => CallError::Refused {
            status: code,
            reason: if reason.is_empty() {
                status.canonical_reason().unwrap_or_default().to_owned()
            } else {
                reason
            },
        },
        _ => CallError::Rejected(described),
    })
}

/// Longest reason kept from an error body (the problems of a big refusal are many).
const MAX_REASON_CHARS: usize = 1000;

/// The human reason in an error body: the control plane answers JSON such as
/// `{"error": "unauthorized", "message": "gateway token ... expired ..."}`, with the
/// `problems` of a refused input (`[{"path": ..., "message": ...}]`) appended; anything else
/// is shown as (bounded) text.
pub fn reason_of(body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body)
        && let Some(reason) = ["message", "reason", "detail", "error"]
            .iter()
            .find_map(|f| map.get(*f).and_then(|v| v.as_str()))
    {
        let mut out = reason.to_owned();
        let problems = map
            .get("problems")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let message = p.get("message")?.as_str()?;
                Some(match p.get("path").and_then(|v| v.as_str()) {
                    Some(path) if !path.is_empty() => format!("{path}: {message}"),
                    _ => message.to_owned(),
                })
            });
        for (i, problem) in problems.enumerate() {
            out.push_str(if i == 0 { ": " } else { "; " });
            out.push_str(&problem);
            if out.chars().count() > MAX_REASON_CHARS {
                break;
            }
        }
        return bounded(&out, MAX_REASON_CHARS);
    }
    let text = String::from_utf8_lossy(body);
    bounded(text.trim(), 200)
}

fn bounded(s: &str, max: usize) -> String {
    let mut chars = s.chars();
    let mut out: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CallError> {
    if body.is_empty() {
        // An empty 200 is never "no configuration": it is a broken answer.
        return Err(CallError::Rejected("empty body in a success answer".into()));
    }
    wire::decode(body).map_err(|e| CallError::Rejected(e.to_string()))
}

/// A scripted control plane for actor tests: one HTTP/1.1 answer per connection, computed by
/// `answer(request line, body)`.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub type Answer = Arc<dyn Fn(&str, &[u8]) -> (u16, Vec<u8>) + Send + Sync>;

    /// Serves on a port-0 listener from the current actix system; returns the base URL.
    pub async fn control_plane(answer: Answer) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        actix_rt::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let answer = answer.clone();
                actix_rt::spawn(async move {
                    let Some((line, body)) = read_request(&mut sock).await else {
                        return;
                    };
                    let (code, out) = answer(&line, &body);
                    let head = format!(
                        "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        out.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&out).await;
                });
            }
        });
        url
    }

    async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_end, length) = loop {
            let n = sock.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap_or(0));
                break (i + 4, length);
            }
        };
        while buf.len() < head_end + length {
            let n = sock.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
            buf.extend_from_slice(&chunk[..n]);
        }
        let line =
            String::from_utf8_lossy(&buf[..buf.iter().position(|b| *b == b'\r')?]).into_owned();
        Some((line, buf[head_end..head_end + length].to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_for_the_caller() {
        let body = br#"{"error":"unauthorized","message":"token expired at 2025-01-01T00:00Z"}"#;
        assert_eq!(
            check_status(StatusCode::UNAUTHORIZED, body),
            Err(CallError::Unauthorized(
                "token expired at 2025-01-01T00:00Z".into()
            ))
        );
        assert!(matches!(
            check_status(StatusCode::BAD_GATEWAY, b""),
            Err(CallError::Unreachable(_))
        ));
        assert_eq!(
            check_status(StatusCode::BAD_REQUEST, b"nope"),
            Err(CallError::Refused {
                status: 400,
                reason: "nope".into()
            })
        );
        // The control plane's problems are part of the reason, not only its summary.
        let invalid = br#"{"error":"bad-request","message":"1 problem(s) in the request",
            "problems":[{"path":"aggregates[0].latency","message":"the histogram counts 1 requests, the aggregate 2"}]}"#;
        assert_eq!(
            check_status(StatusCode::BAD_REQUEST, invalid),
            Err(CallError::Refused {
                status: 400,
                reason: "1 problem(s) in the request: aggregates[0].latency: the histogram \
                         counts 1 requests, the aggregate 2"
                    .into()
            })
        );
        assert_eq!(
            check_status(StatusCode::PAYLOAD_TOO_LARGE, b""),
            Err(CallError::Refused {
                status: 413,
                reason: "Payload Too Large".into()
            })
        );
        assert!(matches!(
            check_status(StatusCode::TOO_MANY_REQUESTS, b""),
            Err(CallError::Unreachable(_))
        ));
        assert!(matches!(
            check_status(StatusCode::FOUND, b""),
            Err(CallError::Rejected(_))
        ));
        let long = format!(
            r#"{{"message":"m","problems":[{}]}}"#,
            [r#"{"path":"p","message":"xxxxxxxxxxxxxxxxxxxx"}"#; 500].join(",")
        );
        assert!(reason_of(long.as_bytes()).chars().count() <= MAX_REASON_CHARS + 1);
        assert_eq!(check_status(StatusCode::OK, b""), Ok(()));
        assert!(matches!(
            decode::<ConfigUpdate>(b""),
            Err(CallError::Rejected(_))
        ));
    }

    /// A replica that answers, recording the `after=` of each config poll it gets.
    async fn replica(
        name: &'static str,
        status: Arc<std::sync::atomic::AtomicU16>,
        seen: Arc<std::sync::Mutex<Vec<String>>>,
    ) -> String {
        fake::control_plane(Arc::new(move |line: &str, _body: &[u8]| {
            seen.lock().unwrap().push(format!("{name} {line}"));
            (status.load(Ordering::SeqCst), Vec::new())
        }))
        .await
    }

    #[actix_rt::test]
    async fn an_unreachable_replica_is_skipped_at_once_and_every_call_moves_on_together() {
        use std::sync::atomic::AtomicU16;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a_status, b_status) = (Arc::new(AtomicU16::new(503)), Arc::new(AtomicU16::new(304)));
        let a = replica("a", a_status.clone(), seen.clone()).await;
        let b = replica("b", b_status.clone(), seen.clone()).await;
        // A port nothing listens on: connection refused.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let config = Arc::new(LinkConfig {
            base_urls: vec![dead.clone(), a.clone(), b.clone()],
            ..LinkConfig::single(
                "",
                "GatewayKey gw&1&x",
                Duration::from_secs(5),
                ClientFactory::plain(),
            )
        });
        let link = Link::new(config.clone());
        // The dead one refuses, `a` answers 503: one call ends on `b`, with the same revision.
        assert_eq!(
            link.poll_config(7, Duration::from_secs(1), None).await,
            Ok(None)
        );
        assert_eq!(config.base_url(), b);
        let polls: Vec<String> = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(polls.len(), 2, "{polls:?}");
        assert!(
            polls[0].starts_with("a GET /gateway/v1/config?after=7"),
            "{polls:?}"
        );
        assert!(
            polls[1].starts_with("b GET /gateway/v1/config?after=7"),
            "{polls:?}"
        );

        // Another actor's link on the same config goes straight to `b`.
        let other = Link::new(config.clone());
        assert_eq!(
            other.poll_config(8, Duration::from_secs(1), None).await,
            Ok(None)
        );
        assert_eq!(std::mem::take(&mut *seen.lock().unwrap()).len(), 1);

        // `b` fails and `a` is back: the next call wraps around past the dead one to `a`.
        b_status.store(503, Ordering::SeqCst);
        a_status.store(304, Ordering::SeqCst);
        assert_eq!(
            link.poll_config(9, Duration::from_secs(1), None).await,
            Ok(None)
        );
        assert_eq!(config.base_url(), a);

        // All down: the call fails once each was tried, and says why.
        a_status.store(503, Ordering::SeqCst);
        let err = link
            .poll_config(9, Duration::from_secs(1), None)
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Unreachable(_)), "{err:?}");
        // Refusals of the token are not a replica's fault: no failover on 401.
        a_status.store(401, Ordering::SeqCst);
        b_status.store(304, Ordering::SeqCst);
        config.current.store(1, Ordering::SeqCst);
        let err = link
            .poll_config(9, Duration::from_secs(1), None)
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Unauthorized(_)), "{err:?}");
        assert_eq!(config.base_url(), a);
    }
}
