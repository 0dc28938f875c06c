//! Forwarding to the backend: HTTP/1.1 ([`upstream_h1`], the gateway's own pooled client) or
//! HTTP/2 ([`upstream_h2`]), streaming both ways, timed, retried.
//!
//! - Bodies stream both ways. A request body is read whole only when a `retry` policy may have
//!   to send it again, and then only up to `limits.max_body_bytes`.
//! - Hop-by-hop headers go no further in either direction; `X-Forwarded-For` (appended),
//!   `-Proto` and `-Host` describe the client; the client's `Host` is replaced by the backend's.
//! - Failures map to statuses in one place, [`GatewayError::from_upstream`]: timeouts are 504,
//!   connection failures 502.

use std::time::{Duration, Instant};

use super::balance;
use super::error::GatewayError;
use super::exchange::{Exchange, RequestBody, Response, Runtime};
pub use super::hop_by_hop::strip_hop_by_hop;
use super::upstream_h1::{self, Outgoing, SendError};
use super::upstream_h2;

/// Forwards the exchange's request and returns the backend's (streaming) response. A pool
/// ([`balance`]) picks the member for each attempt and sends with `send_to_url`.
pub async fn send(ex: &mut Exchange, rt: &Runtime) -> Result<Response, GatewayError> {
    match ex.target.pool.clone() {
        Some(pool) => balance::send(ex, rt, &pool, send_to_url).await,
        None => send_to_url(ex, rt).await,
    }
}

/// Forwards to the target's URL: over HTTP/2 when the backend's `protocol` (or its ALPN
/// answer) says so ([`upstream_h2`]), else over HTTP/1.1 here.
async fn send_to_url(ex: &mut Exchange, rt: &Runtime) -> Result<Response, GatewayError> {
    // The client certificate of `authentication-certificate` is part of the target's TLS
    // profile from here on, for either HTTP version (and their pools, keyed by profile).
    if ex.backend_certificate.is_some() {
        ex.target.tls = ex.backend_tls()?;
        ex.backend_certificate = None;
    }
    if !upstream_h2::may_use(&ex.target) {
        return send_h1(ex, rt).await;
    }
    let started = Instant::now();
    match upstream_h2::route(&ex.target).await {
        Ok(upstream_h2::Route::Http1) => send_h1(ex, rt).await,
        Ok(upstream_h2::Route::H2(conn)) => upstream_h2::send(ex, rt, conn).await,
        Err(e) => {
            ex.backend_duration = Some(started.elapsed());
            Err(GatewayError::from_upstream(&e, &ex.target.name))
        }
    }
}

/// [`send`] over HTTP/1.1, with [`upstream_h1`].
async fn send_h1(ex: &mut Exchange, rt: &Runtime) -> Result<Response, GatewayError> {
    // The request headers stay in the exchange: outbound and on-error policies may still read
    // them (`{request.header.X}`). Host and Expect are per-hop for us and skipped when writing.
    strip_hop_by_hop(&mut ex.request_headers);
    let body = std::mem::replace(&mut ex.body, RequestBody::Taken);
    let req = upstream_h1::Request {
        method: &ex.method,
        url: &ex.target.url,
        path: &ex.backend_path,
        query: &ex.query,
        headers: &ex.request_headers,
        tls: &ex.target.tls,
        timeout: ex.timeout(),
        backend: &ex.target.name,
    };

    let Some(retry) = ex.retry.clone() else {
        let started = Instant::now();
        let mut counted = 0;
        let mut outgoing = match body {
            RequestBody::Stream { payload, length } => Outgoing::Stream {
                payload,
                length,
                max: rt.max_body_bytes as u64,
            },
            RequestBody::Buffered(bytes) => Outgoing::Bytes(bytes),
            RequestBody::None | RequestBody::Taken => Outgoing::None,
        };
        let sent = upstream_h1::send(&req, &mut outgoing, &mut counted).await;
        let sent = sent.map_err(|e| send_error(e, ex, rt));
        ex.backend_duration = Some(started.elapsed());
        ex.request_bytes = counted;
        // No connection could be made: the body was not read, and a pool may send it to
        // another member (`balance`).
        if let Err(e) = &sent
            && e.unsent
            && let Outgoing::Stream {
                payload, length, ..
            } = outgoing
        {
            ex.body = RequestBody::Stream { payload, length };
        }
        return sent;
    };

    // A retry may send the body again: hold it, within the body limit.
    let bytes = body.read_whole(rt.max_body_bytes).await?;
    let mut spent = Duration::ZERO;
    let mut attempt = 0;
    loop {
        let mut outgoing = bytes.clone().map_or(Outgoing::None, Outgoing::Bytes);
        let started = Instant::now();
        let sent = upstream_h1::send(&req, &mut outgoing, &mut 0).await;
        spent += started.elapsed();
        let again = attempt < retry.count
            && match &sent {
                Ok(res) => retry.condition.contains(res.status.as_u16()),
                Err(SendError::Upstream(_)) => retry.on_connection_error,
                Err(_) => false,
            };
        if !again {
            ex.backend_duration = Some(spent);
            ex.request_bytes = bytes.as_ref().map_or(0, |b| b.len() as u64);
            return sent.map_err(|e| send_error(e, ex, rt));
        }
        drop(sent);
        attempt += 1;
        ex.retries = attempt;
        metrics::counter!("outpost_backend_retries_total", "backend" => ex.target.name.clone())
            .increment(1);
        if !retry.interval.is_zero() {
            actix_rt::time::sleep(retry.interval).await;
        }
    }
}

/// What the client is told when the HTTP/1.1 forward failed.
fn send_error(e: SendError, ex: &Exchange, rt: &Runtime) -> GatewayError {
    match e {
        SendError::Upstream(e) => GatewayError::from_upstream(&e, &ex.target.name),
        SendError::BodyTooLarge => GatewayError::body_too_large(rt.max_body_bytes),
        SendError::BodyUnreadable(e) => GatewayError::bad_body(&e),
        SendError::InvalidTarget => GatewayError::internal(
            "InvalidBackendUrl",
            format!(
                "The backend URL '{}' is not valid.",
                ex.target.url.join(&ex.backend_path, &ex.query_string())
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret , close"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "3"),
            ("x-secret", "1"),
            ("x-kept", "2"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h.append(
            HeaderName::from_static("x-kept"),
            HeaderValue::from_static("3"),
        );
        strip_hop_by_hop(&mut h);
        let mut left: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [("accept", "*/*"), ("x-kept", "2"), ("x-kept", "3")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );

        // Nothing to remove: the map is left as it was.
        let mut plain = HeaderMap::new();
        plain.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }
}
