//! Forwarding to the backend with `awc`: pooled, streaming both ways, timed, retried.
//!
//! - One `awc::Client` per worker thread per TLS profile, made on first use and kept (awc
//!   clients are `!Send`; one per request would defeat keep-alive and cost a DNS lookup each).
//! - Bodies stream both ways. A request body is read whole only when a `retry` policy may have
//!   to send it again, and then only up to `limits.max_body_bytes`.
//! - Hop-by-hop headers go no further in either direction; `X-Forwarded-For` (appended),
//!   `-Proto` and `-Host` describe the client; the client's `Host` is replaced by the backend's.
//! - Failures map to statuses in one place, [`GatewayError::from_send`]: timeouts are 504,
//!   connection failures 502.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodyStream, BoxBody, SizedStream};
use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode, Uri};
use bytes::Bytes;
use futures_util::Stream;
use outpost_actors::route_table::tls::TlsProfile;

use super::error::GatewayError;
use super::exchange::{Exchange, RequestBody, Response, Runtime};
pub use super::hop_by_hop::strip_hop_by_hop;
use super::upstream_h2;

/// Connections per worker per TLS profile; above awc's default of 100 so busy workers do not
/// queue in the pool.
const POOL_LIMIT: usize = 1024;
/// Idle pooled connections are closed after this long (below common backend idle timeouts).
const POOL_KEEP_ALIVE: Duration = Duration::from_secs(30);

thread_local! {
    static CLIENTS: RefCell<HashMap<u64, awc::Client>> = RefCell::new(HashMap::new());
}

/// This worker's client for a TLS profile.
fn client_for(tls: &TlsProfile) -> awc::Client {
    CLIENTS.with(|clients| {
        clients
            .borrow_mut()
            .entry(tls.id)
            .or_insert_with(|| {
                let connector = awc::Connector::new()
                    .rustls_0_23(tls.config.clone())
                    .timeout(tls.connect_timeout)
                    .handshake_timeout(tls.connect_timeout)
                    .limit(POOL_LIMIT)
                    .conn_keep_alive(POOL_KEEP_ALIVE);
                awc::Client::builder()
                    .connector(connector)
                    .no_default_headers()
                    .disable_redirects()
                    .disable_timeout()
                    .finish()
            })
            .clone()
    })
}

/// Forwards the exchange's request and returns the backend's (streaming) response: over
/// HTTP/2 when the backend's `protocol` (or its ALPN answer) says so ([`upstream_h2`]), else
/// over HTTP/1.1 here.
pub async fn send(ex: &mut Exchange, rt: &Runtime) -> Result<Response, GatewayError> {
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

/// [`send`] over HTTP/1.1, with `awc`.
async fn send_h1(ex: &mut Exchange, rt: &Runtime) -> Result<Response, GatewayError> {
    let url = ex.target.url.join(&ex.backend_path, &ex.query_string());
    let uri: Uri = url.parse().map_err(|_| {
        GatewayError::internal(
            "InvalidBackendUrl",
            format!("The backend URL '{url}' is not valid."),
        )
    })?;
    // The request headers stay in the exchange: outbound and on-error policies may still read
    // them (`{request.header.X}`). Host and Expect are per-hop for us and skipped when copying.
    strip_hop_by_hop(&mut ex.request_headers);
    let headers = &ex.request_headers;
    let client = client_for(&ex.target.tls);
    let timeout = ex.timeout();
    let backend = ex.target.name.clone();
    let body = std::mem::replace(&mut ex.body, RequestBody::Taken);

    let Some(retry) = ex.retry.clone() else {
        let started = Instant::now();
        let overflow = Rc::new(Cell::new(false));
        let unreadable = Rc::new(RefCell::new(None));
        let counted = Rc::new(Cell::new(0u64));
        let req = request(&client, &ex.method, &uri, headers, timeout);
        let sent = match body {
            RequestBody::Stream { payload, length } => {
                let stream = Limited {
                    inner: payload,
                    seen: 0,
                    max: rt.max_body_bytes as u64,
                    overflow: overflow.clone(),
                    unreadable: unreadable.clone(),
                    counted: counted.clone(),
                };
                match length {
                    Some(len) => req.send_body(SizedStream::new(len, stream)).await,
                    None => req.send_body(BodyStream::new(stream)).await,
                }
            }
            RequestBody::Buffered(bytes) => {
                counted.set(bytes.len() as u64);
                req.send_body(bytes).await
            }
            RequestBody::None | RequestBody::Taken => {
                let first = req.send().await;
                // A pooled keep-alive connection the backend closed an instant before we wrote
                // on it fails without the backend having seen the request. For a bodiless
                // idempotent request that is safe to send once more on a fresh connection (what
                // nginx's proxy_next_upstream does by default); anything else is reported.
                match first {
                    Err(e) if stale_connection(&e) && idempotent(&ex.method) => {
                        metrics::counter!("outpost_backend_resends_total", "backend" => backend.clone())
                            .increment(1);
                        request(&client, &ex.method, &uri, headers, timeout)
                            .force_close()
                            .send()
                            .await
                    }
                    other => other,
                }
            }
        };
        ex.backend_duration = Some(started.elapsed());
        ex.request_bytes = counted.get();
        return match sent {
            Ok(res) => Ok(response(res, &ex.method)),
            Err(_) if overflow.get() => Err(GatewayError::body_too_large(rt.max_body_bytes)),
            // The client's body broke (bad chunked framing, connection lost): its fault, not
            // the backend's.
            Err(_) if unreadable.borrow().is_some() => {
                let e = unreadable.borrow_mut().take();
                Err(GatewayError::bad_body(
                    &e.map_or_else(String::new, |e| e.to_string()),
                ))
            }
            Err(e) => Err(GatewayError::from_send(&e, &backend)),
        };
    };

    // A retry may send the body again: hold it, within the body limit.
    let bytes = body.read_whole(rt.max_body_bytes).await?;
    ex.request_bytes = bytes.as_ref().map_or(0, |b| b.len() as u64);
    let mut spent = Duration::ZERO;
    let mut attempt = 0;
    loop {
        let req = request(&client, &ex.method, &uri, headers, timeout);
        let started = Instant::now();
        let sent = match &bytes {
            Some(b) => req.send_body(b.clone()).await,
            None => req.send().await,
        };
        spent += started.elapsed();
        ex.backend_duration = Some(spent);
        let again = attempt < retry.count
            && match &sent {
                Ok(res) => retry.condition.contains(res.status().as_u16()),
                Err(_) => retry.on_connection_error,
            };
        if !again {
            return match sent {
                Ok(res) => Ok(response(res, &ex.method)),
                Err(e) => Err(GatewayError::from_send(&e, &backend)),
            };
        }
        drop(sent);
        attempt += 1;
        ex.retries = attempt;
        metrics::counter!("outpost_backend_retries_total", "backend" => backend.clone())
            .increment(1);
        if !retry.interval.is_zero() {
            actix_rt::time::sleep(retry.interval).await;
        }
    }
}

/// The request died on the connection itself (not a timeout, not an answer we dislike).
fn stale_connection(e: &awc::error::SendRequestError) -> bool {
    use awc::error::SendRequestError;
    matches!(e, SendRequestError::Send(_))
        || matches!(
            e,
            SendRequestError::Response(actix_web::error::ParseError::Incomplete)
        )
        || matches!(
            e,
            SendRequestError::Response(actix_web::error::ParseError::Io(_))
        )
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn request(
    client: &awc::Client,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    timeout: Duration,
) -> awc::ClientRequest {
    let mut req = client
        .request(method.clone(), uri.clone())
        .timeout(timeout)
        .no_decompress();
    for (name, value) in headers {
        if name != header::HOST && name != header::EXPECT {
            req.headers_mut().append(name.clone(), value.clone());
        }
    }
    req
}

/// The backend's response, streaming, with hop-by-hop headers removed.
fn response<S>(res: awc::ClientResponse<S>, method: &Method) -> Response
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin + 'static,
{
    let status = res.status();
    // The head is ours: its headers are moved out, not copied.
    let mut headers = HeaderMap::new();
    let res = res.map_body(|head, payload| {
        headers = std::mem::take(&mut head.headers);
        payload
    });
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    strip_hop_by_hop(&mut headers);
    let body = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // No body follows; keep the length the backend announced for HEAD.
        match length {
            Some(len) if *method == Method::HEAD => BoxBody::new(SizedStream::new(len, res)),
            _ => BoxBody::new(()),
        }
    } else {
        match length {
            Some(len) => BoxBody::new(SizedStream::new(len, res)),
            None => BoxBody::new(BodyStream::new(res)),
        }
    };
    Response {
        status,
        headers,
        body,
    }
}

/// The client's request body on its way to the backend: counted, and cut at the body limit.
struct Limited {
    inner: Payload,
    seen: u64,
    max: u64,
    overflow: Rc<Cell<bool>>,
    /// The client's body failed to arrive, and why.
    unreadable: Rc<RefCell<Option<PayloadError>>>,
    counted: Rc<Cell<u64>>,
}

impl Stream for Limited {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                this.counted.set(this.seen);
                if this.seen > this.max {
                    this.overflow.set(true);
                    return Poll::Ready(Some(Err(PayloadError::Overflow)));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                let passed_on = PayloadError::Io(std::io::Error::other(e.to_string()));
                *this.unreadable.borrow_mut() = Some(e);
                Poll::Ready(Some(Err(passed_on)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

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
