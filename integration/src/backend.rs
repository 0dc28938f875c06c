//! An in-process HTTP backend that tells the test what the gateway sent it.
//!
//! Every request is answered with a JSON echo of what arrived (method, raw path, raw query,
//! headers, body), so a test can assert on the gateway's forwarding: headers set or removed,
//! the subscription key stripped, `X-Forwarded-*` added, the URI rewritten. A few special
//! paths produce the responses fault and policy tests need (statuses, slowness, large bodies),
//! and every request is counted per path so a test can tell whether the gateway forwarded at
//! all (cache hits, rate-limit rejections and mocks must not reach the backend).
//!
//! Special paths are matched on the *end* of the path, so they keep working behind a gateway
//! that prefixes the backend path (`/api/v2/status/503` answers 503):
//!
//! | path ends with   | answer                                               |
//! |------------------|------------------------------------------------------|
//! | `/status/{code}` | that status, with the echo as body                   |
//! | `/delay/{ms}`    | 200 and the echo after sleeping `ms` (at most 60 s)  |
//! | `/big/{bytes}`   | 200 and that many bytes (at most 1 GiB), streamed    |
//! | `/count`         | `{"count": N}`, requests seen so far (not counting `/count`) |
//! | anything else    | 200 and the echo                                      |
//!
//! Every response carries `x-test-backend: 127.0.0.1:PORT`, so tests with several backends
//! can see which one answered.
//!
//! The server runs on its own thread under its own `actix_rt::System`, independent of the
//! test's tokio runtime, and is stopped (port closed) before `drop` returns.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;

const MAX_DELAY: Duration = Duration::from_secs(60);
const MAX_BIG_BYTES: u64 = 1 << 30;
/// Bodies up to this size are echoed; enough for any policy test, small enough to stay cheap.
const MAX_ECHO_BODY: usize = 64 << 20;
const BACKEND_HEADER: &str = "x-test-backend";

#[derive(Debug, Default)]
struct Hits {
    per_path: Mutex<HashMap<String, u64>>,
    total: AtomicU64,
}

impl Hits {
    fn record(&self, path: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut per_path = self.per_path.lock().unwrap_or_else(|e| e.into_inner());
        *per_path.entry(path.to_owned()).or_default() += 1;
    }
}

/// The sample backend; see the [module docs](self).
#[derive(Debug)]
pub struct TestBackend {
    addr: SocketAddr,
    hits: Arc<Hits>,
    server: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl TestBackend {
    /// Starts the backend on a free loopback port; it is accepting connections on return.
    ///
    /// # Panics
    ///
    /// If the listener or the server thread cannot be created.
    pub fn start() -> Self {
        // Bound here so the port is ours before anything else runs: no window for a clash.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind test backend");
        let addr = listener.local_addr().expect("backend address");
        let hits = Arc::new(Hits::default());
        let (handle_tx, handle_rx) = mpsc::channel();

        let app_hits = web::Data::from(Arc::clone(&hits));
        let thread = std::thread::Builder::new()
            .name(format!("test-backend-{}", addr.port()))
            .spawn(move || {
                let system = actix_rt::System::new();
                let result = system.block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(app_hits.clone())
                            .app_data(web::Data::new(addr))
                            .app_data(web::PayloadConfig::new(MAX_ECHO_BODY))
                            .default_service(web::to(respond))
                    })
                    // One worker is plenty for tests and keeps thread count down on 2 cores.
                    .workers(1)
                    // Tests own the process's signals; a backend must not react to them.
                    .disable_signals()
                    .shutdown_timeout(0)
                    .listen(listener)?
                    .run();
                    let _ = handle_tx.send(server.handle());
                    server.await
                });
                if let Err(e) = result {
                    eprintln!("test backend on {addr} failed: {e}");
                }
            })
            .expect("spawn test backend thread");

        let server = handle_rx
            .recv()
            .expect("test backend failed to start (see stderr)");
        Self {
            addr,
            hits,
            server,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`, no trailing slash: the form a backend URL takes in config.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `url()` followed by `path` (which should start with `/`).
    pub fn url_for(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests that arrived for exactly this path (no query), counted on arrival, before any
    /// delay, so a request the gateway gave up on still counts.
    pub fn hits(&self, path: &str) -> u64 {
        let per_path = self.hits.per_path.lock().unwrap_or_else(|e| e.into_inner());
        per_path.get(path).copied().unwrap_or(0)
    }

    /// All requests that arrived, `/count` excluded.
    pub fn total_hits(&self) -> u64 {
        self.hits.total.load(Ordering::Relaxed)
    }

    /// Per-path hit counts, sorted, for assertion messages.
    pub fn hits_by_path(&self) -> BTreeMap<String, u64> {
        let per_path = self.hits.per_path.lock().unwrap_or_else(|e| e.into_inner());
        per_path.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Forgets every count, for tests that measure one phase at a time.
    pub fn reset_hits(&self) {
        let mut per_path = self.hits.per_path.lock().unwrap_or_else(|e| e.into_inner());
        per_path.clear();
        self.hits.total.store(0, Ordering::Relaxed);
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        // `stop` sends the command when called; the returned future only reports completion,
        // which joining the thread below observes anyway.
        drop(self.server.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The one handler: dispatch on the end of the path, else echo.
async fn respond(
    req: HttpRequest,
    body: Bytes,
    hits: web::Data<Hits>,
    addr: web::Data<SocketAddr>,
) -> HttpResponse {
    let path = req.uri().path();
    let mut response = if path.ends_with("/count") {
        HttpResponse::Ok().json(serde_json::json!({ "count": hits.total.load(Ordering::Relaxed) }))
    } else {
        hits.record(path);
        special(&req, &body)
            .await
            .unwrap_or_else(|| HttpResponse::Ok().json(echo(&req, &body)))
    };
    if let Ok(value) = addr.to_string().try_into() {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(BACKEND_HEADER),
            value,
        );
    }
    response
}

/// The answer for `/status`, `/delay` and `/big` paths; `None` for a plain echo.
async fn special(req: &HttpRequest, body: &Bytes) -> Option<HttpResponse> {
    let mut segments = req.uri().path().rsplit('/');
    let arg = segments.next()?;
    let kind = segments.next()?;
    let response = match kind {
        "status" => {
            let Some(status) = arg
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
            else {
                return Some(HttpResponse::BadRequest().body(format!("bad status code {arg:?}")));
            };
            let mut builder = HttpResponse::build(status);
            // These statuses must not carry a body.
            if status.is_informational()
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED
            {
                builder.finish()
            } else {
                builder.json(echo(req, body))
            }
        }
        "delay" => {
            let delay = Duration::from_millis(arg.parse().ok()?).min(MAX_DELAY);
            actix_rt::time::sleep(delay).await;
            HttpResponse::Ok().json(echo(req, body))
        }
        "big" => {
            let len = arg.parse::<u64>().ok()?.min(MAX_BIG_BYTES);
            HttpResponse::Ok()
                .content_type("application/octet-stream")
                .body(SizedStream::new(len, big_body(len)))
        }
        _ => return None,
    };
    Some(response)
}

/// `len` bytes of `x`, in chunks, so a large body never sits in memory at once.
fn big_body(len: u64) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let chunks = len.div_ceil(CHUNK);
    futures_util::stream::iter((0..chunks).map(move |i| {
        let size = (len - i * CHUNK).min(CHUNK) as usize;
        Ok(chunk.slice(..size))
    }))
}

/// The echo body: what arrived, as the backend saw it.
fn echo(req: &HttpRequest, body: &Bytes) -> serde_json::Value {
    // Repeated headers are joined the way HTTP allows folding them, so one map covers all.
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query().unwrap_or(""),
        "headers": headers,
        "body": String::from_utf8_lossy(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[tokio::test]
    async fn echoes_requests_and_counts_them() {
        let backend = TestBackend::start();
        let client = crate::http::client();
        let resp = client
            .post(backend.url_for("/orders/42?expand=items&x=1"))
            .header("X-Custom", "a")
            .header("X-Custom", "b")
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()[BACKEND_HEADER],
            backend.addr().to_string().as_str()
        );
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["path"], "/orders/42");
        assert_eq!(echo["query"], "expand=items&x=1");
        assert_eq!(echo["headers"]["x-custom"], "a, b");
        assert_eq!(echo["headers"]["host"], backend.addr().to_string());
        assert_eq!(echo["body"], "payload");

        client
            .get(backend.url_for("/orders/42"))
            .send()
            .await
            .unwrap();
        assert_eq!(backend.hits("/orders/42"), 2);
        assert_eq!(backend.hits("/nope"), 0);
        assert_eq!(backend.total_hits(), 2);

        let count: Value = client
            .get(backend.url_for("/count"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(count["count"], 2);
        assert_eq!(backend.total_hits(), 2, "/count must not count itself");
        backend.reset_hits();
        assert_eq!(backend.total_hits(), 0);
        assert!(backend.hits_by_path().is_empty());
    }

    #[tokio::test]
    async fn status_delay_and_big() {
        let backend = TestBackend::start();
        let client = crate::http::client();

        let resp = client
            .get(backend.url_for("/status/503"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(echo["path"], "/status/503");
        // Matched on the end of the path, as behind a prefixing gateway.
        let resp = client
            .delete(backend.url_for("/api/v1/status/404"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(
            client
                .get(backend.url_for("/status/204"))
                .send()
                .await
                .unwrap()
                .status(),
            204
        );
        assert_eq!(
            client
                .get(backend.url_for("/status/abc"))
                .send()
                .await
                .unwrap()
                .status(),
            400
        );

        let started = std::time::Instant::now();
        let resp = client
            .get(backend.url_for("/delay/100"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(100));

        let resp = client
            .get(backend.url_for("/big/200001"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.content_length(), Some(200_001));
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.len(), 200_001);
        assert!(body.iter().all(|&b| b == b'x'));

        assert_eq!(backend.hits("/status/503"), 1);
        assert_eq!(backend.total_hits(), 6);
    }

    #[tokio::test]
    async fn drop_closes_the_port() {
        let backend = TestBackend::start();
        let addr = backend.addr();
        drop(backend);
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
