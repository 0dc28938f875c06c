//! A small backend for the demo, the compose setup and the gateway's tests.
//!
//! | path ends with    | answer                                                         |
//! |-------------------|----------------------------------------------------------------|
//! | `/orders`         | `GET`: a list of sample orders; `POST`: 201 with the new order |
//! | `/orders/{id}`    | that order, or 404                                              |
//! | `/status/{code}`  | that status, with the echo as body                             |
//! | `/delay/{ms}`     | the echo after `ms` milliseconds (at most 60 s)                |
//! | `/bytes/{n}`      | `n` bytes (at most 1 GiB), streamed                            |
//! | `/reflect`        | the request's body back, with the request's `Content-Type`     |
//! | anything else     | the echo                                                       |
//!
//! The echo is JSON: method, path, query, headers, the body's length and SHA-256, and the body
//! itself when it is short UTF-8 text. Paths are matched on their end so the routes work behind
//! any backend base path (`/api/v2/orders/1`). Every answer carries `x-sample-backend: <addr>`.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Bodies up to this size are echoed back as text.
const ECHO_BODY_LIMIT: usize = 64 * 1024;
/// Largest request body accepted.
const MAX_BODY: usize = 256 * 1024 * 1024;
const MAX_DELAY_MS: u64 = 60_000;
const MAX_BYTES: u64 = 1 << 30;

/// Runs the backend on `listen` until the process is stopped.
pub fn run(listen: &str) -> Result<(), String> {
    let system = actix_rt::System::new();
    system.block_on(async {
        let (server, addr) =
            start(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        eprintln!("outpost sample backend on http://{addr}");
        server.await.map_err(|e| e.to_string())
    })
}

/// Binds on `listen` (`127.0.0.1:0` picks a port) and starts serving; the returned server must
/// be awaited or spawned inside an actix system.
pub fn start(listen: &str) -> std::io::Result<(Server, SocketAddr)> {
    let server = HttpServer::new(|| {
        App::new()
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .default_service(web::to(answer))
    })
    .workers(2)
    .bind(listen)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("bound no address"))?;
    Ok((server.run(), addr))
}

async fn answer(req: HttpRequest, body: Bytes) -> HttpResponse {
    let me = req.app_config().local_addr().to_string();
    let segments: Vec<&str> = req.path().split('/').filter(|s| !s.is_empty()).collect();
    let mut res = match segments.as_slice() {
        [.., "orders"] => orders(&req, &body),
        [.., "orders", id] => order(id),
        [.., "status", code] => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => HttpResponse::build(status).json(echo(&req, &body)),
            None => HttpResponse::BadRequest().json(json!({"error": "not a status code"})),
        },
        [.., "delay", ms] => match ms.parse::<u64>() {
            Ok(ms) => {
                actix_rt::time::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))).await;
                HttpResponse::Ok().json(echo(&req, &body))
            }
            Err(_) => HttpResponse::BadRequest().json(json!({"error": "not a number of ms"})),
        },
        [.., "bytes", n] => match n.parse::<u64>() {
            Ok(n) => bytes(n.min(MAX_BYTES)),
            Err(_) => HttpResponse::BadRequest().json(json!({"error": "not a number of bytes"})),
        },
        [.., "reflect"] => {
            let mut res = HttpResponse::Ok();
            if let Some(t) = req.headers().get(actix_web::http::header::CONTENT_TYPE) {
                res.insert_header((actix_web::http::header::CONTENT_TYPE, t.clone()));
            }
            res.body(body)
        }
        _ => HttpResponse::Ok().json(echo(&req, &body)),
    };
    if let Ok(v) = me.parse() {
        res.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-sample-backend"),
            v,
        );
    }
    res
}

/// What arrived, as JSON.
fn echo(req: &HttpRequest, body: &Bytes) -> Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    let text = (body.len() <= ECHO_BODY_LIMIT)
        .then(|| std::str::from_utf8(body).ok())
        .flatten();
    json!({
        "method": req.method().as_str(),
        "path": req.path(),
        "query": req.query_string(),
        "headers": headers,
        "body": text,
        "bodyBytes": body.len(),
        "bodySha256": hex::encode(Sha256::digest(body)),
    })
}

fn sample_orders() -> Vec<Value> {
    vec![
        json!({"id": "1001", "customer": "Contoso Ltd", "status": "shipped", "total": 129.90, "currency": "EUR",
               "items": [{"sku": "KB-101", "name": "Mechanical keyboard", "quantity": 1}]}),
        json!({"id": "1002", "customer": "Fabrikam Inc", "status": "processing", "total": 42.50, "currency": "EUR",
               "items": [{"sku": "MS-220", "name": "Wireless mouse", "quantity": 2}]}),
        json!({"id": "1003", "customer": "Northwind Traders", "status": "delivered", "total": 899.00, "currency": "EUR",
               "items": [{"sku": "MN-270", "name": "27\" monitor", "quantity": 1}]}),
    ]
}

fn orders(req: &HttpRequest, body: &Bytes) -> HttpResponse {
    if req.method() == actix_web::http::Method::POST {
        let submitted: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        return HttpResponse::Created().json(json!({
            "id": "1004",
            "status": "received",
            "submitted": submitted,
        }));
    }
    HttpResponse::Ok().json(json!({"orders": sample_orders(), "count": 3}))
}

fn order(id: &str) -> HttpResponse {
    match sample_orders().into_iter().find(|o| o["id"] == id) {
        Some(o) => HttpResponse::Ok().json(o),
        None => HttpResponse::NotFound().json(json!({"error": format!("no order '{id}'")})),
    }
}

/// `n` bytes of a repeating pattern, streamed in 64 KiB chunks.
fn bytes(n: u64) -> HttpResponse {
    const CHUNK: u64 = 64 * 1024;
    let pattern: Bytes = (0..CHUNK).map(|i| b'a' + (i % 26) as u8).collect();
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let pattern = pattern.clone();
        async move {
            (sent < n).then(|| {
                let len = (n - sent).min(CHUNK);
                (
                    Ok::<_, std::convert::Infallible>(pattern.slice(..len as usize)),
                    sent + len,
                )
            })
        }
    });
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(actix_web::body::SizedStream::new(n, stream))
}
