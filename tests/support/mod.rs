//! The in-process gateway harness shared by the traffic tests: a gateway serving a YAML
//! configuration in front of the sample backend, and clients that speak to it (awc, or bytes
//! written as given); a whole offline gateway (`gateway::start`) for blocking tests; and what
//! the gateway's compiler says about a configuration (publish-time refusals).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use outpost::gateway::proxy::{ProxyHooks, start_traffic_server};
use outpost::gateway::settings::GatewaySettings;
use outpost::gateway::{self, RunningGateway};
use outpost::sample_backend;
use outpost_actors::route_table::{
    CompileContext, RequestRecord, TableHandle, compile, new_table_handle,
};
use outpost_model::document::Document;
use outpost_model::view::gateway_view;
use outpost_model::wire::GatewaySnapshot;
use serde_json::Value;

pub struct Gateway {
    pub url: String,
    pub addr: SocketAddr,
    pub table: TableHandle,
    pub records: Arc<Mutex<Vec<RequestRecord>>>,
}

pub fn snapshot(yaml: &str) -> GatewaySnapshot {
    let doc = Document::from_yaml(yaml).unwrap_or_else(|p| panic!("test config:\n{p}\n{yaml}"));
    GatewaySnapshot::from_view(1, gateway_view(&doc.resources, None))
}

/// Starts the sample backend, and a gateway serving `yaml` in which `BACKEND` is the sample
/// backend's URL and `CLOSED` a URL where nothing listens.
pub async fn gateway_with(yaml: &str, tweak: impl FnOnce(&mut GatewaySettings)) -> Gateway {
    gateway_with_context(yaml, &CompileContext::default(), tweak).await
}

/// [`gateway_with`], compiling with `ctx` (e.g. key sources that fetch).
pub async fn gateway_with_context(
    yaml: &str,
    ctx: &CompileContext,
    tweak: impl FnOnce(&mut GatewaySettings),
) -> Gateway {
    let (backend, backend_addr) = sample_backend::start("127.0.0.1:0").unwrap();
    actix_rt::spawn(backend);
    let yaml = yaml
        .replace("BACKEND", &format!("http://{backend_addr}"))
        .replace("CLOSED", &format!("http://{}", closed_port()));
    let table = new_table_handle();
    let compiled = compile(&snapshot(&yaml), ctx).unwrap_or_else(|p| panic!("{p}"));
    table.store(Some(Arc::new(compiled)));
    let mut settings = GatewaySettings::default();
    settings.listen.workers = 1;
    tweak(&mut settings);
    let records = Arc::new(Mutex::new(Vec::new()));
    let sink = records.clone();
    let hooks = ProxyHooks {
        observer: Some(Arc::new(move |r: &RequestRecord| {
            sink.lock().unwrap().push(r.clone())
        })),
        ..ProxyHooks::default()
    };
    let (server, addr) =
        start_traffic_server("127.0.0.1:0", &settings, table.clone(), hooks).unwrap();
    actix_rt::spawn(server);
    Gateway {
        url: format!("http://{addr}"),
        addr,
        table,
        records,
    }
}

pub async fn gateway(yaml: &str) -> Gateway {
    gateway_with(yaml, |_| {}).await
}

pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub struct Answer {
    pub status: u16,
    pub headers: actix_web::http::header::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The headers the backend received (from its echo).
    pub fn forwarded(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }

    /// The gateway's own error body.
    pub fn error(&self, status: u16) -> String {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert_eq!(v["statusCode"], status, "{v}");
        v["message"].as_str().unwrap().to_owned()
    }
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(20))
        .disable_redirects()
        .finish()
}

pub async fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&'static str>,
) -> Answer {
    let mut req = client().request(
        actix_web::http::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("{}{path}", gw.url),
    );
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut res = match body {
        Some(b) => req.send_body(b).await,
        None => req.send().await,
    }
    .unwrap();
    let body = res.body().limit(256 << 20).await.unwrap();
    Answer {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body,
    }
}

pub async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    call(gw, "GET", path, headers, None).await
}

/// A request written byte for byte (for headers awc would not send as given); the request
/// closes the connection, so the answer is read to the end.
pub async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    raw_with(addr, request, false).await
}

/// [`raw`], closing the writing half after the request when `half_close` (a body cut short).
pub async fn raw_with(addr: SocketAddr, request: &str, half_close: bool) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// What the gateway's compiler says about the declarative file `yaml` (`BACKEND` and `CLOSED`
/// stand for an address nothing answers): the document's problems, else the compile
/// problems, else `""` — what the control plane would refuse it with at publish time.
pub fn compile_problems(yaml: &str) -> String {
    let yaml = yaml
        .replace("BACKEND", "http://127.0.0.1:9")
        .replace("CLOSED", "http://127.0.0.1:9");
    match Document::from_yaml(&yaml) {
        Err(p) => p.to_string(),
        Ok(d) => {
            let snapshot = GatewaySnapshot::from_view(1, gateway_view(&d.resources, None));
            compile(&snapshot, &CompileContext::default())
                .err()
                .map(|p| p.to_string())
                .unwrap_or_default()
        }
    }
}

/// The sample backend on a thread (and actix system) of its own, for as long as the test
/// process lives: for blocking tests and gateways in other processes.
pub fn sample_backend_thread() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let (server, addr) = sample_backend::start("127.0.0.1:0").unwrap();
            tx.send(addr).unwrap();
            let _ = server.await;
        })
    });
    rx.recv().unwrap()
}

/// Gateway settings for a whole gateway in a test: traffic and ops listeners on ports the
/// system picks on loopback, no HTTPS, one worker; the rest as defaulted.
pub fn loopback_settings() -> GatewaySettings {
    let mut settings = GatewaySettings::default();
    settings.listen.http = "127.0.0.1:0".into();
    settings.listen.https = None;
    settings.listen.ops = "127.0.0.1:0".into();
    settings.listen.workers = 1;
    settings
}

/// A whole gateway in this process (`gateway::start`, [`loopback_settings`]) serving the
/// declarative file `yaml` offline (written to `dir/apis.yaml`); `tweak` adjusts the settings
/// before the start.
pub fn offline_gateway(
    dir: &std::path::Path,
    yaml: &str,
    tweak: impl FnOnce(&mut GatewaySettings),
) -> RunningGateway {
    let file = dir.join("apis.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut settings = loopback_settings();
    settings.offline.config_file = Some(file);
    tweak(&mut settings);
    gateway::start(settings).expect("gateway starts")
}

/// A blocking HTTP client with a generous bound on each call.
pub fn blocking_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The subscription key of [`orders_estate`]'s `gold-sub`.
pub const GOLD_KEY: &str = "gold-key-0000000000000000000000000000";

/// A declarative file: API `orders` (any method, any path) in front of the sample backend at
/// `backend`, with a rate limit of `calls` a minute, a retry on 503, and the `outbound` policy
/// list when one is given (YAML flow list); product `gold` with subscription `gold-sub`
/// (key [`GOLD_KEY`]); and `more_apis`, further items of the `apis` list (YAML, indented as
/// its items), after `orders`.
pub fn orders_estate(backend: SocketAddr, calls: u32, outbound: &str, more_apis: &str) -> String {
    let outbound = if outbound.is_empty() {
        String::new()
    } else {
        format!("      outbound: {outbound}\n")
    };
    format!(
        r#"
apiVersion: outpost/v1
backends: [{{name: sample, url: "http://{backend}"}}]
apis:
  - name: orders
    path: orders
    backend: sample
    operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]
    policies:
      inbound: [{{rate-limit: {{calls: {calls}, renewal-period: 60}}}}]
      backend: [{{retry: {{count: 2, interval-ms: 0, condition: "503"}}}}]
{outbound}{more_apis}products:
  - {{name: gold, apis: [orders]}}
subscriptions:
  - {{name: gold-sub, scope: {{product: gold}}, primary-key: {GOLD_KEY}}}
"#
    )
}
