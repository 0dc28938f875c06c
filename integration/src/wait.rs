//! Polling helpers: every "wait until X" in the suites goes through here, so timeouts can be
//! stretched in one place on a slow or loaded machine (`OUTPOST_TEST_PATIENCE=3`).
//!
//! Tests should wait for *conditions*, never sleep for a fixed time and hope.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Multiplier applied to every harness timeout, from `OUTPOST_TEST_PATIENCE` (default `1.0`).
///
/// Only deadlines grow; poll intervals don't, so a patient run is not a slower run when things
/// go well.
pub fn patience() -> f64 {
    static PATIENCE: OnceLock<f64> = OnceLock::new();
    *PATIENCE.get_or_init(|| {
        std::env::var("OUTPOST_TEST_PATIENCE")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|p| p.is_finite() && *p > 0.0)
            .unwrap_or(1.0)
    })
}

/// `timeout` stretched by [`patience`].
pub fn scaled(timeout: Duration) -> Duration {
    timeout.mul_f64(patience())
}

/// Calls `check` every `interval` until it returns `Ok`, for at most `timeout` (scaled by
/// [`patience`]).
///
/// On timeout the error carries the *last* failure message, which is usually the one that
/// explains what never became true. `check` runs at least once, even with a zero timeout.
///
/// ```ignore
/// let n = eventually(secs(5), ms(50), async || {
///     let hits = backend.hits("/orders");
///     if hits >= 3 { Ok(hits) } else { Err(format!("backend saw {hits} of 3 requests")) }
/// }).await?;
/// ```
pub async fn eventually<T, F>(
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> Result<T, String>
where
    F: AsyncFnMut() -> Result<T, String>,
{
    let timeout = scaled(timeout);
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last_error = match check().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(format!(
                "condition not met after {:?} ({attempts} attempts); last error: {last_error}",
                start.elapsed()
            ));
        }
        tokio::time::sleep(interval).await;
    }
}

/// Polls `url` with GET until it answers 2xx, for at most `timeout` (scaled by [`patience`]).
///
/// Used for readiness: `/readyz` of a gateway, `/healthz` of anything. Each probe has its own
/// short timeout so a black-holed endpoint can't eat the whole budget in one attempt.
pub async fn wait_for_http_ok(url: &str, timeout: Duration) -> Result<(), String> {
    let client = crate::http::client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("building HTTP client: {e}"))?;
    eventually(timeout, Duration::from_millis(50), async || {
        match client.get(url).send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("GET {url} answered {}", resp.status())),
            Err(e) => Err(format!(
                "GET {url} failed: {}",
                crate::http::describe_error(&e)
            )),
        }
    })
    .await
}

/// `Duration::from_secs`, short enough for call sites full of timeouts.
pub const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `Duration::from_millis`, short enough for call sites full of timeouts.
pub const fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_first_success() {
        let mut calls = 0;
        let got = eventually(secs(10), ms(1), async || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        })
        .await;
        assert_eq!(got, Ok(3));
    }

    #[tokio::test]
    async fn eventually_reports_last_error() {
        let mut calls = 0;
        let got: Result<(), String> = eventually(ms(30), ms(5), async || {
            calls += 1;
            Err(format!("attempt {calls} failed"))
        })
        .await;
        let err = got.unwrap_err();
        assert!(err.contains(&format!("attempt {calls} failed")), "{err}");
    }

    #[tokio::test]
    async fn wait_for_http_ok_sees_2xx_and_reports_the_last_status() {
        let backend = crate::backend::TestBackend::start();
        wait_for_http_ok(&backend.url_for("/healthz"), secs(10))
            .await
            .unwrap();
        let err = wait_for_http_ok(&backend.url_for("/status/503"), ms(100))
            .await
            .unwrap_err();
        assert!(err.contains("503"), "{err}");
    }
}
