//! The traffic edge against hostile requests: dot-segments and encoded slashes that would steer
//! a normalising backend (a real nginx) outside the API's backend prefix, hop-by-hop headers
//! that would delete what policies add, forwarding headers from untrusted peers, broken body
//! framing and oversized request heads.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outpost_actors::route_table::CacheStatus;
use serde_json::Value;
use support::*;

/// A real nginx answering every request with the path it resolved (`$uri`: decoded, with
/// dot-segments removed, as nginx serves files), and `ADMIN` under `/admin`.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start() -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = outpost_integration::free_port();
        let d = dir.path().display();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        default_type text/plain;
        location /admin {{ return 200 "ADMIN $uri"; }}
        location / {{ return 200 "uri=$uri"; }}
    }}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx is needed for the path tests (.ci/run installs it)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> PathBuf {
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "nginx".into()
}

/// `GET path` written byte for byte (no client normalises it first).
async fn raw_get(gw: &Gateway, path: &str, extra: &str) -> (u16, String) {
    raw(
        gw.addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: api.example.com\r\n{extra}Connection: close\r\n\r\n"
        ),
    )
    .await
}

fn body_of(text: &str) -> &str {
    text.find("\r\n\r\n").map_or("", |i| &text[i + 4..])
}

/// `GET path` is forwarded and nginx resolved it to `want`.
async fn expect_uri(gw: &Gateway, path: &str, want: &str) {
    let (status, text) = raw_get(gw, path, "").await;
    assert_eq!(status, 200, "{path}: {text}");
    assert_eq!(body_of(&text), format!("uri={want}"), "{path}");
}

/// Every request the gateway recorded was from `ip` (as telemetry and logs see it).
fn every_client_is(gw: &Gateway, ip: [u8; 4]) {
    let ips: Vec<_> = gw
        .records
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.client_ip)
        .collect();
    assert!(ips.iter().all(|c| *c == Some(ip.into())), "{ips:?}");
}

fn error_message(status: u16, text: &str, want: u16) -> String {
    assert_eq!(status, want, "{text}");
    let v: Value = serde_json::from_str(body_of(text)).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["statusCode"], want, "{v}");
    v["message"].as_str().unwrap().to_owned()
}

fn path_config(nginx: SocketAddr) -> String {
    format!(
        r#"
apiVersion: outpost/v1
backends:
  - {{name: ng, url: "http://{nginx}/other-svc"}}
apis:
  - name: ng
    path: ng
    backend: ng
    subscription-required: false
    operations:
      - {{name: any, method: "*", url-template: "/{{*rest}}"}}
  - name: ngitem
    path: ngitem
    backend: ng
    subscription-required: false
    operations:
      - name: item
        method: GET
        url-template: "/items/{{id}}"
        policies: {{inbound: [{{rewrite-uri: {{template: "/{{id}}/details"}}}}]}}
      - name: file
        method: GET
        url-template: "/files/{{name}}"
        allow-encoded-slashes: true
      - name: climb
        method: GET
        url-template: "/climb/{{id}}"
        policies: {{inbound: [{{rewrite-uri: {{template: "/../../{{id}}"}}}}]}}
  - name: admin
    path: admin
    backend: ng
    subscription-required: false
    operations:
      - {{name: any, method: "*", url-template: "/{{*rest}}"}}
  - name: cached
    path: cached
    backend: ng
    subscription-required: false
    policies:
      inbound: [{{cache-lookup: {{}}}}]
      outbound: [{{cache-store: {{duration: 60}}}}]
    operations:
      - {{name: any, method: GET, url-template: "/{{*rest}}"}}
"#
    )
}

#[actix_rt::test]
async fn dot_segments_never_leave_the_api_prefix() {
    let nginx = Nginx::start();
    let gw = gateway(&path_config(nginx.addr)).await;

    // The reproducers of the probe: each reached nginx's /admin before.
    for (path, why) in [
        ("/ng/../admin", "leaves the API"),
        ("/ng/%2e%2e/admin", "leaves the API"),
        ("/ng/%2E%2e/admin/x", "leaves the API"),
        ("/ng/./../admin", "leaves the API"),
        ("/ngitem/items/..%2f..%2fadmin", "encoded"),
        ("/ngitem/items/%2e%2e%2fadmin", "encoded"),
        ("/../admin", "above the root"),
        ("/ng/a/../../../admin", "above the root"),
        ("/ng/%zz", "hexadecimal"),
    ] {
        let (status, text) = raw_get(&gw, path, "").await;
        let message = error_message(status, &text, 400);
        assert!(message.contains(why), "{path}: {message}");
        assert!(!text.contains("ADMIN"), "{path} reached /admin: {text}");
    }

    // Dot-segments inside the API are resolved before routing and forwarding.
    expect_uri(&gw, "/ng/a/b/../c/./d", "/other-svc/a/c/d").await;
    expect_uri(&gw, "/ng/%61%7e", "/other-svc/a~").await;

    // A template parameter does not match an encoded slash, unless the operation allows it.
    let (status, text) = raw_get(&gw, "/ngitem/items/a%2Fb", "").await;
    assert!(
        error_message(status, &text, 404).contains("encoded '/'"),
        "{text}"
    );
    let (status, text) = raw_get(&gw, "/ngitem/items/a%5cb", "").await;
    assert_eq!(status, 404, "{text}");
    expect_uri(&gw, "/ngitem/files/a%2fb", "/other-svc/files/a/b").await;
    expect_uri(&gw, "/ngitem/items/42", "/other-svc/42/details").await;

    // rewrite-uri output is normalised and checked the same way.
    let (status, text) = raw_get(&gw, "/ngitem/climb/7", "").await;
    assert!(
        error_message(status, &text, 400).contains("above the root"),
        "{text}"
    );
    assert!(!text.contains("uri="), "{text}");
}

#[actix_rt::test]
async fn the_cache_key_is_the_normalised_path() {
    let nginx = Nginx::start();
    let gw = gateway(&path_config(nginx.addr)).await;
    expect_uri(&gw, "/cached/a/./b/../c", "/other-svc/a/c").await;
    expect_uri(&gw, "/cached/a/%63", "/other-svc/a/c").await;
    let records = gw.records.lock().unwrap().clone();
    let cache: Vec<CacheStatus> = records.iter().map(|r| r.cache).collect();
    assert_eq!(cache, [CacheStatus::Miss, CacheStatus::Hit], "{records:?}");
}

const HEADER_CONFIG: &str = r#"
apiVersion: outpost/v1
backends:
  - {name: main, url: "BACKEND/api"}
apis:
  - name: orders
    path: orders
    backend: main
    subscription-required: false
    policies:
      inbound:
        - set-header: {name: X-Backend-Key, value: backend-secret}
        - set-header: {name: X-Seen-Ip, value: "{request.ip}"}
        - set-header: {name: X-Seen-Ip-Expression, value-expression: "request.ip"}
    operations:
      - {name: any, method: "*", url-template: "/{*rest}"}
      - name: partners
        method: GET
        url-template: /partners
        policies: {inbound: [{ip-filter: {action: allow, addresses: ["203.0.113.0/24"]}}]}
"#;

#[actix_rt::test]
async fn a_client_cannot_delete_what_the_gateway_adds() {
    let gw = gateway(HEADER_CONFIG).await;
    let (status, text) = raw_get(
        &gw,
        "/orders/1",
        "X-Backend-Key: client-value\r\nConnection: keep-alive, X-Backend-Key, X-Forwarded-For, traceparent, X-Seen-Ip\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let echo: Value = serde_json::from_str(body_of(&text)).unwrap();
    let h = &echo["headers"];
    assert_eq!(h["x-backend-key"], "backend-secret", "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-seen-ip"], "127.0.0.1", "{h}");
    assert!(
        h["traceparent"].as_str().is_some_and(|t| t.len() == 55),
        "{h}"
    );
}

#[actix_rt::test]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let spoof = "X-Forwarded-For: 203.0.113.9\r\nForwarded: for=203.0.113.9;proto=https\r\n\
                 X-Real-IP: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
                 X-Forwarded-Host: evil.example/path\r\nX-Forwarded-Prefix: /admin\r\n";

    // Nobody trusted: a client cannot choose its address.
    let gw = gateway(HEADER_CONFIG).await;
    let (status, text) = raw_get(&gw, "/orders/1", spoof).await;
    assert_eq!(status, 200, "{text}");
    let echo: Value = serde_json::from_str(body_of(&text)).unwrap();
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-seen-ip"], "127.0.0.1", "{h}");
    assert_eq!(h["x-seen-ip-expression"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], "api.example.com", "{h}");
    for gone in ["forwarded", "x-real-ip", "x-forwarded-prefix"] {
        assert!(h.get(gone).is_none(), "{gone} passed: {h}");
    }
    let (status, text) = raw_get(&gw, "/orders/partners", spoof).await;
    assert_eq!(status, 403, "{text}");
    every_client_is(&gw, [127, 0, 0, 1]);

    // Behind a trusted load balancer (here: loopback), the client is who it names.
    let gw = gateway_with(HEADER_CONFIG, |s| {
        s.listen.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let (status, text) = raw_get(&gw, "/orders/1", spoof).await;
    assert_eq!(status, 200, "{text}");
    let echo: Value = serde_json::from_str(body_of(&text)).unwrap();
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "{h}");
    assert_eq!(h["x-seen-ip"], "203.0.113.9", "{h}");
    // Expressions see the same client address.
    assert_eq!(h["x-seen-ip-expression"], "203.0.113.9", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    // Not a valid host: replaced by the request's own.
    assert_eq!(h["x-forwarded-host"], "api.example.com", "{h}");
    assert_eq!(
        h["forwarded"], "for=203.0.113.9;proto=https, for=127.0.0.1",
        "{h}"
    );
    let (status, text) = raw_get(&gw, "/orders/partners", spoof).await;
    assert_eq!(status, 200, "{text}");
    every_client_is(&gw, [203, 0, 113, 9]);
}

#[actix_rt::test]
async fn a_broken_request_body_is_the_clients_error() {
    let gw = gateway(HEADER_CONFIG).await;

    // A body cut short: 400 with the JSON body (it was a 502 "backend failed").
    let (status, text) = raw_with(
        gw.addr,
        "POST /orders/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b",
        true,
    )
    .await;
    let message = error_message(status, &text, 400);
    assert!(message.contains("request body"), "{message}");

    // A malformed chunk size: the HTTP codec gives up on the connection; the gateway still
    // answers 400 with its JSON body and counts the request as the client's (it was dropped
    // before an answer, or a 502 "backend failed" before).
    let (status, text) = raw(
        gw.addr,
        "POST /orders/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\nzz-not-a-size\r\n\r\n",
    )
    .await;
    let message = error_message(status, &text, 400);
    assert!(message.contains("framing"), "{message}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let records = loop {
        let records = gw.records.lock().unwrap().clone();
        if records.len() == 2 || Instant::now() > deadline {
            break records;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert_eq!(r.status, 400, "{records:?}");
        assert_eq!(r.error_reason, Some("RequestBodyUnreadable"), "{records:?}");
    }
}

#[actix_rt::test]
async fn oversized_request_heads_get_the_json_refusal() {
    let gw = gateway(HEADER_CONFIG).await;

    // A 40 KB request target (the header limit is 32 KiB): 414, never forwarded.
    let long = format!("/orders/{}", "a".repeat(40 * 1024));
    let (status, text) = raw_get(&gw, &long, "").await;
    assert!(
        error_message(status, &text, 414).contains("limit"),
        "{text}"
    );

    // A target under the limit whose request line and headers together exceed it: 431.
    let target = format!("/orders/{}", "b".repeat(20 * 1024));
    let header = format!("X-Big: {}\r\n", "c".repeat(15 * 1024));
    let (status, text) = raw_get(&gw, &target, &header).await;
    assert!(
        error_message(status, &text, 431).contains("limit"),
        "{text}"
    );

    // Too many header lines for the HTTP parser: 431 with the same JSON body.
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, text) = raw_get(&gw, "/orders/1", &many).await;
    assert!(
        error_message(status, &text, 431).contains("header"),
        "{text}"
    );

    // A head the HTTP parser cannot read: 400 with the JSON body too.
    let (status, text) = raw(gw.addr, "GET /orders/1 HTTP/1.1\r\nBad Header Line\r\n\r\n").await;
    assert!(
        error_message(status, &text, 400).contains("not valid HTTP"),
        "{text}"
    );

    let records = gw.records.lock().unwrap().clone();
    assert!(records.iter().all(|r| r.status != 200), "{records:?}");
}
