//! The gateway's outbound link to the control plane's gateway listener.
//!
//! Every call goes out from the gateway (nothing listens for the control plane), carries the
//! gateway token, and speaks bincode. Failures are classified once, here, the way the callers
//! act on them: retry later ([`CallError::Unreachable`]), stop trusting the token
//! ([`CallError::Unauthorized`]), or report a broken answer ([`CallError::Rejected`]).

use std::sync::Arc;
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
    /// Base URL of the gateway listener, without a trailing `/`.
    pub base_url: String,
    pub token: String,
    /// Bound of one call; a long-poll gets its wait on top.
    pub request_timeout: Duration,
    pub clients: ClientFactory,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Connect failure, timeout, 5xx, 429: the control plane is not there for us right now.
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    /// 401/403: the token is expired, revoked or forged. The reason is the control plane's.
    #[error("control plane refused the gateway token: {0}")]
    Unauthorized(String),
    /// Any other answer we cannot use (other 4xx, undecodable or empty body).
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
        let mut url = format!(
            "{}{CONFIG_PATH}?after={after}&wait={}",
            self.config.base_url,
            wait.as_secs()
        );
        // A content hash is hex; anything else is not sent (it could not match anyway).
        if let Some(h) = hash.filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
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
        let payload = wire::encode(value).map_err(|e| CallError::Rejected(e.to_string()))?;
        let mut response = self
            .client
            .post(format!("{}{path}", self.config.base_url))
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
        _ => CallError::Rejected(described),
    })
}

/// The human reason in an error body: the control plane answers JSON such as
/// `{"error": "unauthorized", "message": "gateway token ... expired ..."}`; anything else is
/// shown as (bounded) text.
pub fn reason_of(body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body)
        && let Some(reason) = ["message", "reason", "detail", "error"]
            .iter()
            .find_map(|f| map.get(*f).and_then(|v| v.as_str()))
    {
        return reason.to_owned();
    }
    let text = String::from_utf8_lossy(body);
    text.trim().chars().take(200).collect()
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
        assert!(matches!(
            check_status(StatusCode::BAD_REQUEST, b"nope"),
            Err(CallError::Rejected(m)) if m.contains("nope")
        ));
        assert_eq!(check_status(StatusCode::OK, b""), Ok(()));
        assert!(matches!(
            decode::<ConfigUpdate>(b""),
            Err(CallError::Rejected(_))
        ));
    }
}
