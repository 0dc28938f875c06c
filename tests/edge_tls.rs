//! HTTPS on the traffic listener with real TLS clients (rustls) over loopback: certificates of
//! the gateway resource's hostnames chosen by SNI (exact and wildcard), a clean handshake
//! failure for other names, the default certificate for clients without SNI, the minimum TLS
//! version, and rotation by publishing a new configuration while connections are open.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use outpost::gateway::proxy::{HttpsListen, ProxyHooks, TrafficAddrs, start_traffic_servers};
use outpost::gateway::settings::GatewaySettings;
use outpost::gateway::tls::MinTls;
use outpost::sample_backend;
use outpost_actors::route_table::{CompileContext, TableHandle, compile, new_table_handle};
use outpost_integration::pki::TestPki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use support::snapshot;

/// The configuration: one API behind the sample backend, the gateway with two hostnames.
fn config(backend: SocketAddr, exact: &(String, String), wildcard: &(String, String)) -> String {
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n      ");
    format!(
        r#"
apiVersion: outpost/v1
named-values:
  - name: api-cert
    value: |
      {}
  - name: api-key
    secret: true
    value: |
      {}
  - name: wild-cert
    value: |
      {}
  - name: wild-key
    secret: true
    value: |
      {}
backends:
  - {{name: main, url: "http://{backend}/api"}}
apis:
  - name: orders
    path: orders
    backend: main
    subscription-required: false
    operations:
      - {{name: any, method: GET, url-template: "/{{*rest}}"}}
gateways:
  - name: edge
    apis: [orders]
    hostnames:
      - {{hostname: api.example.com, certificate-pem: "{{{{api-cert}}}}", key-pem: "{{{{api-key}}}}"}}
      - {{hostname: "*.wild.example", certificate-pem: "{{{{wild-cert}}}}", key-pem: "{{{{wild-key}}}}"}}
"#,
        indent(&exact.0),
        indent(&exact.1),
        indent(&wildcard.0),
        indent(&wildcard.1),
    )
}

struct Edge {
    pki: TestPki,
    table: TableHandle,
    addrs: TrafficAddrs,
    backend: SocketAddr,
}

impl Edge {
    async fn start(default_host: Option<&str>, min_tls: MinTls) -> Edge {
        let pki = TestPki::new();
        let exact = pki.issue("api", &["api.example.com"]);
        let wildcard = pki.issue("wild", &["*.wild.example"]);
        let (backend_server, backend) = sample_backend::start("127.0.0.1:0").unwrap();
        actix_rt::spawn(backend_server);
        let table = new_table_handle();
        let edge = Edge {
            pki,
            table: table.clone(),
            addrs: TrafficAddrs {
                http: backend,
                https: None,
                stopping: Default::default(),
            },
            backend,
        };
        edge.publish(&config(backend, &exact, &wildcard), 1);
        let mut settings = GatewaySettings::default();
        settings.listen.workers = 1;
        let (server, addrs) = start_traffic_servers(
            "127.0.0.1:0",
            Some(HttpsListen {
                listen: "127.0.0.1:0",
                default_host: default_host.map(str::to_owned),
                min_tls,
            }),
            &settings,
            table,
            ProxyHooks::default(),
        )
        .unwrap();
        actix_rt::spawn(server);
        Edge { addrs, ..edge }
    }

    /// Compiles and publishes a configuration, as the route table does on a new snapshot.
    fn publish(&self, yaml: &str, revision: u64) {
        let mut snap = snapshot(yaml);
        snap.revision = revision;
        let compiled = compile(&snap, &CompileContext::default()).unwrap_or_else(|p| panic!("{p}"));
        self.table.store(Some(Arc::new(compiled)));
    }

    fn client(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
        Arc::new(self.client_config(versions))
    }

    /// A client trusting this PKI's CA; every handshake a full one (a resumed session would
    /// show the certificate of the session it resumes, not the one the gateway serves now).
    fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&self.pki.read("ca.pem")).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config
    }
}

/// A TLS connection to the gateway's HTTPS port, asking for `name` (an IP address: no SNI).
struct Client {
    tls: StreamOwned<ClientConnection, TcpStream>,
}

impl Client {
    fn connect(config: Arc<ClientConfig>, addr: SocketAddr, name: &str) -> Result<Client, String> {
        let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let conn = ClientConnection::new(config, server_name).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| e.to_string())?;
        }
        Ok(Client { tls })
    }

    /// The leaf certificate the gateway presented.
    fn leaf(&self) -> Vec<u8> {
        self.tls.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// One keep-alive GET; the JSON echo of the sample backend.
    fn get(&mut self, host: &str, path: &str) -> serde_json::Value {
        write!(
            self.tls,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-Proto: http\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = self.tls.read(&mut chunk).unwrap();
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{text}");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .expect("content-length");
                if buf.len() >= end + 4 + len {
                    return serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap();
                }
            }
        }
    }
}

fn pem_leaf(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[actix_rt::test]
async fn certificates_are_chosen_by_sni_and_unknown_names_fail_cleanly() {
    let edge = Edge::start(None, MinTls::V1_2).await;
    let https = edge.addrs.https.unwrap();
    let client = edge.client(rustls::DEFAULT_VERSIONS);
    let api_leaf = pem_leaf(&String::from_utf8(edge.pki.read("api.pem")).unwrap());
    let wild_leaf = pem_leaf(&String::from_utf8(edge.pki.read("wild.pem")).unwrap());

    let c = client.clone();
    let (leaf, echo) = blocking(move || {
        let mut conn = Client::connect(c, https, "api.example.com").unwrap();
        (conn.leaf(), conn.get("api.example.com", "/orders/42"))
    })
    .await;
    assert_eq!(leaf, api_leaf);
    assert_eq!(echo["path"], "/api/42");
    // The backend learns the client came over TLS, whatever the client claimed.
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");

    let c = client.clone();
    let leaf = blocking(move || {
        Client::connect(c, https, "shop.wild.example")
            .unwrap()
            .leaf()
    })
    .await;
    assert_eq!(leaf, wild_leaf);

    // A name the gateway has no certificate for, a wildcard two labels deep, no SNI at all:
    // a handshake failure, and the listener keeps serving.
    for name in ["other.example.com", "a.b.wild.example", "127.0.0.1"] {
        let c = client.clone();
        let err = blocking(move || Client::connect(c, https, name).err()).await;
        assert!(err.is_some(), "{name}: handshake succeeded");
    }
    let c = client.clone();
    let leaf = blocking(move || Client::connect(c, https, "api.example.com").unwrap().leaf()).await;
    assert_eq!(leaf, api_leaf);
    let _ = edge.backend;
}

#[actix_rt::test]
async fn clients_without_sni_get_the_default_hostname_and_old_versions_can_be_refused() {
    let edge = Edge::start(Some("api.example.com"), MinTls::V1_3).await;
    let https = edge.addrs.https.unwrap();
    let api_leaf = pem_leaf(&String::from_utf8(edge.pki.read("api.pem")).unwrap());

    // No SNI (an IP address): the default hostname's certificate. The client then checks it
    // against the name it wanted, so verify against api.example.com by asking for it after.
    let mut no_sni = edge.client_config(rustls::DEFAULT_VERSIONS);
    no_sni.enable_sni = false;
    let no_sni = Arc::new(no_sni);
    let leaf = blocking(move || {
        Client::connect(no_sni, https, "api.example.com")
            .unwrap()
            .leaf()
    })
    .await;
    assert_eq!(leaf, api_leaf);

    // TLS 1.3 only: a TLS 1.2 client is refused, a TLS 1.3 one served.
    let tls12 = edge.client(&[&rustls::version::TLS12]);
    assert!(
        blocking(move || Client::connect(tls12, https, "api.example.com").err())
            .await
            .is_some()
    );
    let tls13 = edge.client(&[&rustls::version::TLS13]);
    assert!(blocking(move || Client::connect(tls13, https, "api.example.com").is_ok()).await);
}

#[actix_rt::test]
async fn a_new_certificate_serves_new_handshakes_while_open_connections_go_on() {
    let edge = Edge::start(None, MinTls::V1_2).await;
    let https = edge.addrs.https.unwrap();
    let client = edge.client(rustls::DEFAULT_VERSIONS);
    let old_leaf = pem_leaf(&String::from_utf8(edge.pki.read("api.pem")).unwrap());

    // A keep-alive connection opened on the old certificate.
    let c = client.clone();
    let mut open = blocking(move || {
        let mut conn = Client::connect(c, https, "api.example.com").unwrap();
        conn.get("api.example.com", "/orders/1");
        conn
    })
    .await;
    assert_eq!(open.leaf(), old_leaf);

    // Rotation: a new key and certificate for the same name, published as revision 2.
    let rotated = edge.pki.issue("api", &["api.example.com"]);
    let wildcard = (
        String::from_utf8(edge.pki.read("wild.pem")).unwrap(),
        String::from_utf8(edge.pki.read("wild.key")).unwrap(),
    );
    edge.publish(&config(edge.backend, &rotated, &wildcard), 2);
    let new_leaf = pem_leaf(&rotated.0);
    assert_ne!(new_leaf, old_leaf);

    let c = client.clone();
    let leaf = blocking(move || Client::connect(c, https, "api.example.com").unwrap().leaf()).await;
    assert_eq!(leaf, new_leaf, "a new handshake after the rotation");
    let echo = blocking(move || open.get("api.example.com", "/orders/2")).await;
    assert_eq!(
        echo["path"], "/api/2",
        "the connection opened before the rotation goes on"
    );
}

#[test]
fn a_certificate_that_does_not_parse_or_match_its_key_is_refused_at_compile() {
    let pki = TestPki::new();
    let (cert, _) = pki.issue("a", &["api.example.com"]);
    let (_, other_key) = pki.issue("b", &["api.example.com"]);
    let backend: SocketAddr = ([127, 0, 0, 1], 9).into();
    for (pair, why) in [
        ((cert.clone(), other_key.clone()), "does not belong"),
        (("not a pem".to_owned(), other_key), "no certificate"),
    ] {
        let yaml = config(backend, &pair, &pair);
        let Err(problems) = compile(&snapshot(&yaml), &CompileContext::default()) else {
            panic!("{why}: compiled");
        };
        let text = problems.to_string();
        assert!(text.contains("gateways/edge.hostnames[0]"), "{text}");
        assert!(text.contains(why), "{why}: {text}");
    }
}

#[actix_rt::test]
async fn http2_is_served_when_the_client_asks_for_it_by_alpn() {
    let edge = Edge::start(None, MinTls::V1_2).await;
    let https = edge.addrs.https.unwrap();
    let mut config = edge.client_config(rustls::DEFAULT_VERSIONS);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("api.example.com").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    actix_rt::spawn(async move {
        let _ = connection.await;
    });
    // Several requests multiplexed on the one connection, each proxied as HTTP/1.1.
    let mut answers = Vec::new();
    for id in 1..=3 {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::get(format!("https://api.example.com/orders/{id}"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        answers.push(response);
    }
    for (i, response) in answers.into_iter().enumerate() {
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        let echo: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(echo["path"], format!("/api/{}", i + 1));
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
        assert_eq!(
            echo["headers"]["host"]
                .as_str()
                .map(|h| h.starts_with("127.0.0.1:")),
            Some(true)
        );
    }
}

/// One HTTP/2 request with prior knowledge (h2c) to `addr`; status and body.
async fn h2c_request(
    addr: SocketAddr,
    path: &str,
    header: Option<(&str, String)>,
    body: Option<Vec<u8>>,
) -> (u16, Vec<u8>) {
    let io = tokio::net::TcpStream::connect(addr).await.unwrap();
    h2_request(io, path, header, body).await
}

/// One HTTP/2 request over `io` (TLS or plain); status and body.
async fn h2_request<T>(
    io: T,
    path: &str,
    header: Option<(&str, String)>,
    body: Option<Vec<u8>>,
) -> (u16, Vec<u8>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    actix_rt::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::post(format!("http://gateway{path}"));
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let request = request.body(()).unwrap();
    let (response, mut stream) = client.send_request(request, body.is_none()).unwrap();
    if let Some(body) = body {
        stream.send_data(body.into(), true).unwrap();
    }
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, bytes)
}

/// One open API proxying everything under `/orders` to the sample backend's `/api`.
const OPEN_ORDERS: &str = r#"
apiVersion: outpost/v1
backends:
  - {name: main, url: "BACKEND/api"}
apis:
  - name: orders
    path: orders
    backend: main
    subscription-required: false
    operations:
      - {name: any, method: "*", url-template: "/{*rest}"}
"#;

#[actix_rt::test]
async fn h2c_with_prior_knowledge_keeps_the_limits() {
    let gw = support::gateway_with(OPEN_ORDERS, |s| {
        s.listen.h2c = true;
        s.limits.max_body_bytes = 1024;
    })
    .await;

    let (status, body) = h2c_request(gw.addr, "/orders/9", None, None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["path"], "/api/9");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");

    // A body: HTTP/2 frames it without Content-Length; the backend gets all of it.
    let (status, body) = h2c_request(gw.addr, "/orders/9", None, Some(vec![b'y'; 700])).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["bodyBytes"], 700, "{echo}");

    // The header limit (32 KiB by default) and the body limit hold over HTTP/2.
    let big = ("x-big", "a".repeat(40 * 1024));
    let (status, body) = h2c_request(gw.addr, "/orders/9", Some(big), None).await;
    assert_eq!(status, 431, "{}", String::from_utf8_lossy(&body));
    let (status, body) = h2c_request(gw.addr, "/orders/9", None, Some(vec![b'x'; 4096])).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));

    // HTTP/1.1 on the same port is served as before.
    let (status, text) = support::raw(
        gw.addr,
        "GET /orders/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

#[actix_rt::test]
async fn http2_stream_and_window_limits_come_from_the_settings() {
    let gw = support::gateway_with(OPEN_ORDERS, |s| {
        s.listen.h2c = true;
        s.http2.max_concurrent_streams = 7;
        s.http2.stream_window_bytes = 100_000;
        s.http2.connection_window_bytes = 300_000;
    })
    .await;
    let io = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    actix_rt::spawn(async move {
        let mut connection = connection;
        // The server's SETTINGS arrive with the first exchange; read them once a request has
        // been answered, then keep driving the connection.
        let _ = std::future::poll_fn(|cx| {
            let _ = std::pin::Pin::new(&mut connection).poll(cx);
            if connection.max_concurrent_send_streams() == 7 {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        let _ = tx.send(connection.max_concurrent_send_streams());
        let _ = connection.await;
    });
    assert_eq!(
        tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .expect("the server's SETTINGS arrive")
            .unwrap(),
        7
    );
    // Ask for more than the stream window with the gateway reading nothing yet: the capacity
    // granted grows to the configured window (the connection's is larger) and no further.
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post("http://gateway/orders/1")
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    stream.reserve_capacity(200_000);
    let mut granted = 0;
    while granted < 100_000 {
        granted = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            std::future::poll_fn(|cx| stream.poll_capacity(cx)),
        )
        .await
        .expect("window updates arrive")
        .unwrap()
        .unwrap();
    }
    assert_eq!(granted, 100_000);
    stream.send_data(vec![b'z'; 10].into(), true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
}
