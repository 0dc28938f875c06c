//! WebSocket through the gateway with real peers on loopback: a tokio-tungstenite echo server
//! behind it (plain, and over TLS with a test CA) and a tokio-tungstenite client in front.
//! Policies run before the upgrade and can refuse it; the backend's refusal passes through;
//! messages of any size and close handshakes cross both ways; idle connections and a stopping
//! gateway close them; `/metrics` counts them.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_integration::pki::TestPki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::{Gateway, gateway_with, raw};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, accept_hdr_async, client_async};

const KEY: &str = "ws-test-key-000000000000000000000000";

/// What the echo backend saw.
#[derive(Default)]
struct Seen {
    /// Request target and headers of every handshake that reached it.
    handshakes: Vec<(String, Vec<(String, String)>)>,
    /// Close frames received from clients (code, reason).
    closes: Vec<(u16, String)>,
    /// Connections whose WebSocket stream ended.
    ended: usize,
}

/// A WebSocket echo server: sends every text and binary message back; `close-me` makes it
/// close with 4000 "bye"; `flood` makes it send 64 MiB; a handshake for `/ws/refuse…` is refused with a 403 and a JSON body;
/// the `chat` subprotocol is accepted when offered.
struct Echo {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Echo {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Echo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (seen, tls) = (shared.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                echo(stream, seen).await;
                            }
                        }
                        None => echo(tcp, seen).await,
                    }
                });
            }
        });
        Echo { addr, seen }
    }

    fn handshakes(&self) -> usize {
        self.seen.lock().unwrap().handshakes.len()
    }

    /// The headers of the last handshake, by (lowercase) name.
    fn last_header(&self, name: &str) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        let (_, headers) = seen
            .handshakes
            .last()
            .expect("a handshake reached the backend");
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

// The handshake callback's error type is tungstenite's (an HTTP response).
#[allow(clippy::result_large_err)]
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(io: S, seen: Arc<Mutex<Seen>>) {
    let record = seen.clone();
    let callback = move |req: &Request, mut res: Response| {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                let v = v.to_str().unwrap_or("").to_owned();
                (k.as_str().to_owned(), v)
            })
            .collect();
        record
            .lock()
            .unwrap()
            .handshakes
            .push((req.uri().to_string(), headers));
        if req.uri().path().starts_with("/ws/refuse") {
            let body = r#"{"refused":true}"#;
            let mut refusal = ErrorResponse::new(Some(body.to_owned()));
            *refusal.status_mut() = StatusCode::FORBIDDEN;
            let h = refusal.headers_mut();
            h.insert("content-type", HeaderValue::from_static("application/json"));
            h.insert("content-length", HeaderValue::from(body.len()));
            return Err(refusal);
        }
        let offered = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim() == "chat"));
        if offered {
            res.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        }
        Ok(res)
    };
    let Ok(mut ws) = accept_hdr_async(io, callback).await else {
        return;
    };
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) if t.as_str() == "close-me" => {
                let bye = CloseFrame {
                    code: CloseCode::from(4000),
                    reason: "bye".into(),
                };
                let _ = ws.close(Some(bye)).await;
            }
            Ok(Message::Text(t)) if t.as_str() == "flood" => {
                // More than every buffer on the way holds: blocks once the client stops reading.
                let chunk = Message::binary(vec![0u8; 1 << 20]);
                for _ in 0..64 {
                    if ws.send(chunk.clone()).await.is_err() {
                        break;
                    }
                }
            }
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            Ok(Message::Close(Some(f))) => {
                let frame = (u16::from(f.code), f.reason.to_string());
                seen.lock().unwrap().closes.push(frame);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    seen.lock().unwrap().ended += 1;
}

/// One API `chat` at `/chat/*` in front of `backend` (a URL), with `policies` (YAML lines of
/// the API's inbound section, already indented) and a subscription key when `keyed`.
fn config(backend: &str, keyed: bool, inbound: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: outpost/v1
{extra}
backends:
  - {{name: echo, url: "{backend}/ws", request-timeout-ms: 10000}}
  - {{name: sample, url: "BACKEND"}}
apis:
  - name: chat
    path: chat
    backend: echo
    subscription-required: {keyed}
    operations:
      - {{name: socket, method: GET, url-template: "/{{*rest}}"}}
    policies:
      inbound:
        - base
{inbound}
  - name: plain
    path: plain
    backend: sample
    subscription-required: false
    operations:
      - {{name: get, method: GET, url-template: "/{{*rest}}"}}
subscriptions:
  - {{name: chatter, scope: all-apis, primary-key: {KEY}}}
"#
    )
}

async fn start(echo: &Echo, inbound: &str) -> Gateway {
    let backend = format!("http://{}", echo.addr);
    gateway_with(&config(&backend, false, inbound, ""), |_| {}).await
}

type Client = WebSocketStream<TcpStream>;

/// A WebSocket handshake through the gateway at `addr`.
async fn open(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        Client,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    WsError,
> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    client_async(req, tcp).await
}

/// The status of a handshake the gateway (or the backend) refused.
fn refused_with(result: Result<(Client, impl std::fmt::Debug), WsError>) -> u16 {
    match result {
        Err(WsError::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("expected an HTTP answer, got {e}"),
        Ok((_, res)) => panic!("expected a refusal, the connection was upgraded: {res:?}"),
    }
}

/// The next data message (pings and pongs skipped), bounded so that a broken tunnel fails the
/// test instead of hanging it.
async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Message {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("no message within 30 s");
        match next {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(m)) => return m,
            other => panic!("the connection ended: {other:?}"),
        }
    }
}

/// Waits (bounded) until the connection ends: closed by the peer, or cut.
async fn ends(ws: &mut Client, what: &str) {
    let end = tokio::time::timeout(Duration::from_secs(60), ws.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after 60 s"));
    assert!(matches!(end, None | Some(Err(_))), "{what}: {end:?}");
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A raw HTTP/1.1 handshake request (for what the client library will not send); the
/// connection closes after the answer.
fn handshake_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nConnection: close\r\n{extra}\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

#[actix_rt::test]
async fn messages_echo_both_ways_and_the_client_close_reaches_the_backend() {
    let echo = Echo::start(None).await;
    let gw = start(&echo, "").await;
    let (mut ws, res) = open(
        gw.addr,
        "/chat/room?lang=en",
        &[("sec-websocket-protocol", "chat, superchat")],
    )
    .await
    .expect("upgraded");
    assert_eq!(res.status(), 101);
    assert_eq!(res.headers()["sec-websocket-protocol"], "chat");

    // The backend got the handshake at its own path, with the client's key and subprotocols,
    // the forwarding headers, and its own host.
    {
        let seen = echo.seen.lock().unwrap();
        assert_eq!(seen.handshakes[0].0, "/ws/room?lang=en");
    }
    assert_eq!(echo.last_header("sec-websocket-version"), ["13"]);
    assert_eq!(echo.last_header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echo.last_header("host"), [echo.addr.to_string()]);
    assert_eq!(
        echo.last_header("sec-websocket-protocol"),
        ["chat, superchat"]
    );

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hello"));
    let bytes: Vec<u8> = (0..=255u8).collect();
    ws.send(Message::binary(bytes.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(bytes));
    // 1 MiB each way, in many TCP segments and dispatcher reads.
    let large: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    ws.send(Message::binary(large.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(large));

    // The client closes: the backend gets the close frame and answers it, the client gets the
    // answer, then the connection ends.
    let done = CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    };
    ws.close(Some(done)).await.unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1000),
        other => panic!("expected the backend's close answer, got {other:?}"),
    }
    ends(&mut ws, "the connection ends").await;
    eventually("the backend saw the close", || {
        let seen = echo.seen.lock().unwrap();
        seen.closes == [(1000, "done".to_owned())] && seen.ended == 1
    })
    .await;

    // Telemetry: one request, 101, with the bytes sent to the client.
    eventually("the upgraded request is recorded", || {
        gw.records.lock().unwrap().iter().any(|r| r.status == 101)
    })
    .await;
    let records = gw.records.lock().unwrap();
    let record = records.iter().find(|r| r.status == 101).unwrap();
    assert_eq!(record.api.as_deref(), Some("chat"));
    assert_eq!(record.operation.as_deref(), Some("socket"));
    assert!(record.response_bytes > 1 << 20, "{}", record.response_bytes);
}

#[actix_rt::test]
async fn the_backend_closing_reaches_the_client() {
    let echo = Echo::start(None).await;
    let gw = start(&echo, "").await;
    let (mut ws, _) = open(gw.addr, "/chat/room", &[]).await.expect("upgraded");
    ws.send(Message::text("close-me")).await.unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4000);
            assert_eq!(f.reason.as_str(), "bye");
        }
        other => panic!("expected the backend's close, got {other:?}"),
    }
    // tungstenite answers the close; the backend then ends the connection.
    ends(&mut ws, "the connection ends").await;
    eventually("the backend's connection ended", || {
        echo.seen.lock().unwrap().ended == 1
    })
    .await;
}

#[actix_rt::test]
async fn a_subscription_key_is_checked_before_the_upgrade() {
    let echo = Echo::start(None).await;
    let backend = format!("http://{}", echo.addr);
    let gw = gateway_with(&config(&backend, true, "", ""), |_| {}).await;
    assert_eq!(refused_with(open(gw.addr, "/chat/room", &[]).await), 401);
    let wrong = [("ocp-apim-subscription-key", "not-a-key")];
    assert_eq!(refused_with(open(gw.addr, "/chat/room", &wrong).await), 401);
    assert_eq!(
        echo.handshakes(),
        0,
        "a refused handshake reached the backend"
    );

    let key = [("ocp-apim-subscription-key", KEY)];
    let (mut ws, _) = open(gw.addr, "/chat/room", &key).await.expect("upgraded");
    // The key is the gateway's business, never the backend's.
    assert!(echo.last_header("ocp-apim-subscription-key").is_empty());
    ws.send(Message::text("with a key")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("with a key"));
    let records = gw.records.lock().unwrap();
    let refusal = records.iter().find(|r| r.status == 401).unwrap();
    assert_eq!(refusal.error_reason, Some("SubscriptionKeyNotFound"));
}

#[actix_rt::test]
async fn a_rate_limit_and_header_policies_run_on_the_handshake() {
    let echo = Echo::start(None).await;
    let policies = "        - rate-limit-by-key: {calls: 1, renewal-period: 60, counter-key: \"{request.ip}\"}\n        \
                   - set-header: {name: X-Gateway, value: outpost}\n      \
                   outbound:\n        - base\n        - set-header: {name: X-Via, value: outpost}";
    let gw = start(&echo, policies).await;
    let (mut first, res) = open(gw.addr, "/chat/one", &[]).await.expect("upgraded");
    assert_eq!(echo.last_header("x-gateway"), ["outpost"]);
    // Outbound policies act on the 101's headers.
    assert_eq!(res.headers()["x-via"], "outpost");
    assert_eq!(refused_with(open(gw.addr, "/chat/two", &[]).await), 429);
    assert_eq!(
        echo.handshakes(),
        1,
        "the refused handshake reached the backend"
    );
    // The first connection is not disturbed by the refusal of the second.
    first.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_message(&mut first).await, Message::text("still here"));
}

/// A `limit-concurrency` place is held for as long as the connection is open.
#[actix_rt::test]
async fn an_open_connection_holds_its_concurrency_place() {
    let echo = Echo::start(None).await;
    let inbound = "        - limit-concurrency: {key: all, max-count: 1}";
    let gw = start(&echo, inbound).await;
    let (mut first, _) = open(gw.addr, "/chat/one", &[]).await.expect("upgraded");
    assert_eq!(refused_with(open(gw.addr, "/chat/two", &[]).await), 429);
    first.close(None).await.unwrap();
    assert!(matches!(next_message(&mut first).await, Message::Close(_)));
    ends(&mut first, "the first connection ends").await;
    // The place comes back once the first tunnel is gone (asynchronously: retried).
    let mut third = None;
    for _ in 0..500 {
        match open(gw.addr, "/chat/three", &[]).await {
            Ok((ws, _)) => {
                third = Some(ws);
                break;
            }
            Err(WsError::Http(res)) if res.status() == 429 => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let mut third = third.expect("the place is given back");
    third.send(Message::text("third")).await.unwrap();
    assert_eq!(next_message(&mut third).await, Message::text("third"));
}

#[actix_rt::test]
async fn other_upgrades_and_broken_handshakes_are_refused_by_the_gateway() {
    let echo = Echo::start(None).await;
    let gw = start(&echo, "").await;

    let (status, text) = raw(
        gw.addr,
        &handshake_request(
            "/chat/room",
            "Upgrade: foo/2\r\nSec-WebSocket-Version: 13\r\n",
        ),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("upgrades connections to WebSocket only"),
        "{text}"
    );
    assert!(text.contains("'foo/2' is not supported"), "{text}");

    let (status, text) = raw(
        gw.addr,
        &handshake_request(
            "/chat/room",
            "Upgrade: websocket\r\nSec-WebSocket-Version: 8\r\n",
        ),
    )
    .await;
    assert_eq!(status, 426, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("sec-websocket-version: 13\r\n"),
        "{text}"
    );

    let (status, text) = raw(
        gw.addr,
        "GET /chat/room HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Sec-WebSocket-Key is missing"), "{text}");
    assert_eq!(
        echo.handshakes(),
        0,
        "a refused handshake reached the backend"
    );

    // curl offers h2c on plain http:// with --http2; the gateway answers in HTTP/1.1, as a
    // server may do with any Upgrade it does not take.
    let (status, text) = raw(
        gw.addr,
        "GET /plain/h HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let records = gw.records.lock().unwrap();
    let reasons: Vec<_> = records.iter().filter_map(|r| r.error_reason).collect();
    assert_eq!(
        reasons,
        [
            "UpgradeNotSupported",
            "WebSocketVersionUnsupported",
            "WebSocketHandshakeInvalid"
        ]
    );
}

#[actix_rt::test]
async fn a_backend_refusing_the_upgrade_is_passed_through() {
    let echo = Echo::start(None).await;
    let gw = start(&echo, "").await;
    assert_eq!(refused_with(open(gw.addr, "/chat/refuse", &[]).await), 403);
    let (status, text) = raw(
        gw.addr,
        &handshake_request(
            "/chat/refuse",
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        ),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.ends_with(r#"{"refused":true}"#), "{text}");
    assert_eq!(echo.handshakes(), 2);
}

#[actix_rt::test]
async fn a_wss_backend_over_tls_with_a_private_ca() {
    let pki = TestPki::new();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pki.read("server.pem"))
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&pki.read("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let echo = Echo::start(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))).await;
    let ca = String::from_utf8(pki.read("ca.pem")).unwrap();
    let named = format!(
        "named-values:\n  - name: test-ca\n    value: |\n      {}",
        ca.trim_end().replace('\n', "\n      ")
    );
    let backend = format!("https://{}", echo.addr);
    let yaml = config(&backend, false, "", &named).replace(
        "request-timeout-ms: 10000}",
        "request-timeout-ms: 10000, tls: {ca-pem: \"{{test-ca}}\"}}",
    );
    let gw = gateway_with(&yaml, |_| {}).await;
    let (mut ws, _) = open(gw.addr, "/chat/secure", &[]).await.expect("upgraded");
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("over tls"));
    let large = vec![7u8; 300_000];
    ws.send(Message::binary(large.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(large));

    // Without the CA the backend's certificate is not trusted: a 502, no upgrade.
    let untrusted = gateway_with(&config(&backend, false, "", ""), |_| {}).await;
    assert_eq!(
        refused_with(open(untrusted.addr, "/chat/secure", &[]).await),
        502
    );
    let records = untrusted.records.lock().unwrap();
    assert_eq!(records[0].error_reason, Some("BackendConnectionFailure"));
}

/// `wss://` from the client: the HTTPS listener (certificate chosen by SNI) upgrades as the
/// plain one does, over HTTP/1.1 inside TLS.
#[actix_rt::test]
async fn a_wss_client_through_the_https_listener() {
    use outpost::gateway::proxy::{HttpsListen, ProxyHooks, start_traffic_servers};
    use outpost::gateway::tls::MinTls;
    use outpost_actors::route_table::{CompileContext, compile, new_table_handle};

    let echo = Echo::start(None).await;
    let pki = TestPki::new();
    let (cert, key) = pki.issue("gw", &["gw.example"]);
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n      ");
    let named = format!(
        "named-values:\n  - name: gw-cert\n    value: |\n      {}\n  - name: gw-key\n    secret: true\n    value: |\n      {}",
        indent(&cert),
        indent(&key)
    );
    let yaml = config(&format!("http://{}", echo.addr), false, "", &named)
        .replace("BACKEND", "http://127.0.0.1:9")
        + r#"gateways:
  - name: edge
    apis: [chat, plain]
    hostnames:
      - {hostname: gw.example, certificate-pem: "{{gw-cert}}", key-pem: "{{gw-key}}"}
"#;
    let table = new_table_handle();
    let compiled = compile(&support::snapshot(&yaml), &CompileContext::default())
        .unwrap_or_else(|p| panic!("{p}"));
    table.store(Some(Arc::new(compiled)));
    let mut settings = outpost::gateway::settings::GatewaySettings::default();
    settings.listen.workers = 1;
    let https = HttpsListen {
        listen: "127.0.0.1:0",
        default_host: None,
        min_tls: MinTls::V1_2,
    };
    let (server, addrs) = start_traffic_servers(
        "127.0.0.1:0",
        Some(https),
        &settings,
        table,
        ProxyHooks::default(),
    )
    .unwrap();
    actix_rt::spawn(server);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&pki.read("ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addrs.https.unwrap()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("gw.example").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the gateway");
    let (mut ws, res) = client_async("wss://gw.example/chat/secure", tls)
        .await
        .expect("upgraded");
    assert_eq!(res.status(), 101);
    assert_eq!(echo.last_header("x-forwarded-proto"), ["https"]);
    ws.send(Message::text("inside tls")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("inside tls"));
    ws.close(None).await.unwrap();
    assert!(matches!(next_message(&mut ws).await, Message::Close(_)));
}

#[actix_rt::test]
async fn an_idle_connection_is_closed_and_counted() {
    outpost::gateway::ops::prometheus();
    let echo = Echo::start(None).await;
    let backend = format!("http://{}", echo.addr);
    // Its own API name: the metrics recorder is shared by the tests of this process.
    let yaml = config(&backend, false, "", "").replace("name: chat", "name: quiet");
    let gw = gateway_with(&yaml, |s| {
        s.limits.websocket_idle = std::time::Duration::from_secs(1)
    })
    .await;
    let (mut ws, _) = open(gw.addr, "/chat/room", &[]).await.expect("upgraded");
    ws.send(Message::text("once")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("once"));
    // Then nothing either way: the gateway closes both sides.
    ends(&mut ws, "the idle connection is closed").await;
    eventually("the backend's side is closed too", || {
        echo.seen.lock().unwrap().ended == 1
    })
    .await;
    eventually("the close is counted as idle", || {
        metric(r#"outpost_websocket_closed_total{api="quiet",reason="idle"}"#) == Some(1.0)
    })
    .await;
}

/// A client that stops reading while the backend sends leaves the gateway unable to write,
/// with no bytes moving: that is idle too, and both sides are closed.
#[actix_rt::test]
async fn a_client_that_stops_reading_is_closed_when_idle() {
    outpost::gateway::ops::prometheus();
    let echo = Echo::start(None).await;
    let backend = format!("http://{}", echo.addr);
    let yaml = config(&backend, false, "", "").replace("name: chat", "name: stuck");
    let gw = gateway_with(&yaml, |s| {
        s.limits.websocket_idle = std::time::Duration::from_secs(1)
    })
    .await;
    let (mut ws, _) = open(gw.addr, "/chat/room", &[]).await.expect("upgraded");
    ws.send(Message::text("flood")).await.unwrap();
    eventually("the stalled connection is closed as idle", || {
        metric(r#"outpost_websocket_closed_total{api="stuck",reason="idle"}"#) == Some(1.0)
    })
    .await;
    eventually("the backend's side is closed", || {
        echo.seen.lock().unwrap().ended == 1
    })
    .await;
    // What the client had received is still readable; then the connection ends.
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("the connection ends");
        match next {
            Some(Ok(Message::Binary(_))) => {}
            Some(Err(_)) | None => break,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
}

/// A sample of the process's Prometheus recorder.
fn metric(series: &str) -> Option<f64> {
    let text = outpost::gateway::ops::prometheus()?.render();
    sample(&text, series)
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The whole gateway (offline mode, ops listener): `/metrics` shows open connections and bytes
/// both ways, and a graceful stop closes the open connection instead of waiting for it.
#[actix_rt::test]
async fn metrics_count_connections_and_bytes_and_a_stop_closes_them() {
    let echo = Echo::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apis.yaml");
    let yaml = config(&format!("http://{}", echo.addr), false, "", "")
        .replace("name: chat", "name: metered")
        .replace("BACKEND", "http://127.0.0.1:9");
    std::fs::write(&file, yaml).unwrap();
    let mut settings = outpost::gateway::settings::GatewaySettings::default();
    settings.offline.config_file = Some(file.clone());
    settings.listen.http = "127.0.0.1:0".into();
    settings.listen.https = None;
    settings.listen.ops = "127.0.0.1:0".into();
    settings.listen.workers = 1;
    let gw = outpost::gateway::start(settings).expect("gateway starts");
    let (mut ws, _) = open(gw.traffic_addr(), "/chat/room", &[])
        .await
        .expect("upgraded");
    ws.send(Message::binary(vec![1u8; 1000])).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::binary(vec![1u8; 1000])
    );

    let scrape_url = format!("{}/metrics", gw.ops_url());
    let scrape = move || {
        let url = scrape_url.clone();
        async move {
            let mut res = support::client().get(url).send().await.unwrap();
            String::from_utf8(res.body().await.unwrap().to_vec()).unwrap()
        }
    };
    let text = scrape().await;
    let open = r#"outpost_websocket_connections{api="metered"}"#;
    assert_eq!(sample(&text, open), Some(1.0), "{text}");
    // A 1000-byte binary frame is 1004 bytes from the gateway (2 + 2 bytes of header) and
    // 1008 from the client (its frames carry a 4-byte mask).
    let to_backend = r#"outpost_websocket_bytes_total{api="metered",direction="to_backend"}"#;
    let to_client = r#"outpost_websocket_bytes_total{api="metered",direction="to_client"}"#;
    assert_eq!(sample(&text, to_backend), Some(1008.0), "{text}");
    assert_eq!(sample(&text, to_client), Some(1004.0), "{text}");

    // A graceful stop: the connection is closed by the gateway (counted as such), not cut
    // when the shutdown timeout runs out.
    let stopped = std::thread::spawn(move || gw.stop());
    ends(&mut ws, "the connection is closed by the stop").await;
    tokio::task::spawn_blocking(move || stopped.join().unwrap())
        .await
        .unwrap();
    let closed = r#"outpost_websocket_closed_total{api="metered",reason="stopping"}"#;
    assert_eq!(metric(closed), Some(1.0));
    assert_eq!(metric(open), Some(0.0));
    // The handshake is one request, 101, counted when its connection ends.
    let requests = r#"outpost_requests_total{api="metered",operation="socket",status="101"}"#;
    assert_eq!(metric(requests), Some(1.0));
    eventually("the backend's side is closed too", || {
        echo.seen.lock().unwrap().ended == 1
    })
    .await;
}
