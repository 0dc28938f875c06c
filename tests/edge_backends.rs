//! Backends over TLS, HTTP/2 and gRPC, against real peers on loopback: TLS backends with a
//! certificate from a test CA made here (rcgen), an HTTP/2 backend (the `h2` crate, over TLS by
//! ALPN and as h2c), and tonic's gRPC client and server with the gateway between them.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use outpost_actors::route_table::RequestRecord;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tonic::codec::ProstCodec;
use tonic::codegen::{BoxFuture, BoxStream, http as http1};

// === a test CA and TLS backends ===

/// A CA made at test start, and a server certificate it signed for `backend.internal` and
/// `127.0.0.1`.
struct TestCa {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "outpost test backend CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec![
            "backend.internal".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "backend.internal");
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            chain: vec![leaf_cert.der().clone(), ca_cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        }
    }

    /// A TLS server with this CA's certificate, offering `alpn` (in order of preference), that
    /// answers HTTP/2 ([`h2_backend`]) or HTTP/1.1 ([`h1_answer`]) as the client chose.
    async fn serve(&self, alpn: &[&[u8]]) -> SocketAddr {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            self.chain.clone(),
            PrivateKeyDer::Pkcs8(self.key.clone_key()),
        )
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses our certificate ends here: that is the test.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    let sni = conn.server_name().map(str::to_owned);
                    if conn.alpn_protocol() == Some(b"h2") {
                        serve_h2(tls, sni).await;
                    } else {
                        h1_answer(tls, sni).await;
                    }
                });
            }
        });
        addr
    }
}

/// One HTTP/1.1 request, answered with what the backend saw, then the connection closes.
async fn h1_answer<T>(mut io: T, sni: Option<String>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split(' ').nth(1).unwrap_or("").to_owned();
    let body = serde_json::json!({"protocol": "http/1.1", "sni": sni, "path": path}).to_string();
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = io.write_all(answer.as_bytes()).await;
    let _ = io.shutdown().await;
}

/// An HTTP/2 backend (h2c) on loopback.
async fn h2c_backend() -> SocketAddr {
    let (addr, stop) = h2c_backend_at("127.0.0.1:0".parse().unwrap()).await;
    std::mem::forget(stop);
    addr
}

/// An HTTP/2 backend (h2c) on `at`; sending on (or dropping) the returned handle stops it:
/// its listener and every connection close.
async fn h2c_backend_at(at: SocketAddr) -> (SocketAddr, tokio::sync::watch::Sender<()>) {
    let listener = tokio::net::TcpListener::bind(at).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        loop {
            let mut stopped = stopped.clone();
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { return };
                    tokio::spawn(async move {
                        tokio::select! {
                            () = serve_h2(tcp, None) => {}
                            _ = stopped.changed() => {}
                        }
                    });
                }
                _ = stopped.changed() => return,
            }
        }
    });
    (addr, stop)
}

/// Serves one HTTP/2 connection: each request's body is read whole (counted, summed) with its
/// trailers; the answer is `x-reply-bytes` bytes of a pattern, streamed, or else a JSON account
/// of the request; trailers always end it (`x-received`, `x-sum`, and the request's own
/// `x-client-trailer` echoed).
async fn serve_h2<T>(io: T, sni: Option<String>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((req, respond))) = conn.accept().await {
        let sni = sni.clone();
        tokio::spawn(answer_h2(req, respond, sni));
    }
}

async fn answer_h2(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    sni: Option<String>,
) {
    let (parts, mut body) = req.into_parts();
    // `/flaky` answers 503 to its first two requests.
    if parts.uri.path().ends_with("/flaky")
        && FLAKY.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2
    {
        let response = http::Response::builder().status(503).body(()).unwrap();
        let _ = respond.send_response(response, true);
        return;
    }
    let mut received = 0u64;
    let mut sum = 0u64;
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        received += chunk.len() as u64;
        sum = chunk.iter().fold(sum, |s, b| s.wrapping_add(u64::from(*b)));
    }
    let client_trailer = body
        .trailers()
        .await
        .ok()
        .flatten()
        .and_then(|t| t.get("x-client-trailer").cloned());
    let reply_bytes: Option<usize> = parts
        .headers
        .get("x-reply-bytes")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let response = http::Response::builder().status(200).body(()).unwrap();
    let Ok(mut stream) = respond.send_response(response, false) else {
        return;
    };
    let payload = match reply_bytes {
        Some(n) => Bytes::from(pattern(n)),
        None => Bytes::from(
            serde_json::json!({
                "protocol": "h2",
                "sni": sni,
                "path": parts.uri.path(),
                "authority": parts.uri.authority().map(|a| a.to_string()),
                "te": parts.headers.get("te").and_then(|v| v.to_str().ok()),
                "received": received,
            })
            .to_string(),
        ),
    };
    let mut rest = payload;
    while !rest.is_empty() {
        stream.reserve_capacity(rest.len().min(64 << 10));
        let Some(Ok(n)) = std::future::poll_fn(|cx| stream.poll_capacity(cx)).await else {
            return;
        };
        let part = rest.split_to(n.min(rest.len()));
        if stream.send_data(part, false).is_err() {
            return;
        }
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-received", received.into());
    trailers.insert("x-sum", sum.into());
    if let Some(v) = client_trailer {
        trailers.insert("x-client-trailer", v);
    }
    let _ = stream.send_trailers(trailers);
}

/// Requests `/flaky` has had.
static FLAKY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `n` bytes of a repeating pattern that a cut or reordered transfer would not keep.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn byte_sum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |s, b| s.wrapping_add(u64::from(*b)))
}

// === clients ===

/// What an HTTP/2 client got: status, headers, body, trailers.
struct H2Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
    trailers: Option<http::HeaderMap>,
}

impl H2Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.as_ref()?.get(name)?.to_str().ok()
    }
}

/// One request to the gateway over h2c, with an optional body (sent in 64 KiB chunks as the
/// window allows) and request trailers.
async fn h2c_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    trailers: Option<http::HeaderMap>,
) -> H2Answer {
    let io = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://gateway{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let bodiless = body.is_none() && trailers.is_none();
    let (response, mut stream) = client
        .send_request(request.body(()).unwrap(), bodiless)
        .unwrap();
    if !bodiless {
        // A gateway that answers before the whole body is sent (a refusal) closes the stream:
        // the client stops sending and reads the answer.
        let mut rest = Bytes::from(body.unwrap_or_default());
        let mut open = true;
        while open && !rest.is_empty() {
            stream.reserve_capacity(rest.len().min(64 << 10));
            match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(n)) => {
                    open = stream
                        .send_data(rest.split_to(n.min(rest.len())), false)
                        .is_ok()
                }
                _ => open = false,
            }
        }
        if open {
            match trailers {
                Some(t) => stream.send_trailers(t).unwrap(),
                None => stream.send_data(Bytes::new(), true).unwrap(),
            }
        }
    }
    let response = response
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    // A server that answered before reading the whole request may then reset the stream with
    // NO_ERROR to stop the upload (RFC 9113 §8.1): the answer is complete.
    let stopped = |e: &h2::Error| e.reason() == Some(h2::Reason::NO_ERROR);
    let mut trailers = None;
    loop {
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            Some(Err(e)) if stopped(&e) => break,
            Some(Err(e)) => panic!("{method} {path}: {status} {e:?} after {}", bytes.len()),
            None => {
                trailers = body.trailers().await.unwrap();
                break;
            }
        }
    }
    H2Answer {
        status,
        headers,
        body: bytes,
        trailers,
    }
}

fn indent(pem: &str) -> String {
    pem.trim_end().replace('\n', "\n      ")
}

// === TLS backends ===

#[actix_rt::test]
async fn tls_backends_are_verified_against_the_configured_ca_and_name() {
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let h2_capable = ca.serve(&[b"h2", b"http/1.1"]).await;
    let h1_only = ca.serve(&[b"http/1.1"]).await;
    let foreign = other_ca.serve(&[b"h2", b"http/1.1"]).await;
    let config = format!(
        r#"
apiVersion: outpost/v1
named-values:
  - name: backend-ca
    value: |
      {ca}
backends:
  - {{name: alpn-h2, url: "https://127.0.0.1:{h2p}/base", tls: {{ca-pem: "{{{{backend-ca}}}}"}}}}
  - {{name: alpn-h1, url: "https://127.0.0.1:{h1p}/base", tls: {{ca-pem: "{{{{backend-ca}}}}"}}}}
  - {{name: foreign, url: "https://127.0.0.1:{fp}", tls: {{ca-pem: "{{{{backend-ca}}}}"}}}}
  - {{name: foreign-h1, url: "https://127.0.0.1:{fp}", protocol: http1, tls: {{ca-pem: "{{{{backend-ca}}}}"}}}}
  - {{name: unverified, url: "https://127.0.0.1:{fp}", tls: {{verify: false}}}}
  - {{name: unverified-h1, url: "https://127.0.0.1:{fp}", protocol: http1, tls: {{verify: false}}}}
  - {{name: named, url: "https://127.0.0.1:{h2p}", protocol: h2, tls: {{ca-pem: "{{{{backend-ca}}}}", server-name: backend.internal}}}}
  - {{name: named-h1, url: "https://127.0.0.1:{h1p}", protocol: http1, tls: {{ca-pem: "{{{{backend-ca}}}}", server-name: backend.internal}}}}
  - {{name: misnamed, url: "https://127.0.0.1:{h2p}", tls: {{ca-pem: "{{{{backend-ca}}}}", server-name: other.internal}}}}
apis:
  - {{name: alpn-h2, path: alpn-h2, backend: alpn-h2, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
  - {{name: alpn-h1, path: alpn-h1, backend: alpn-h1, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
  - {{name: foreign, path: foreign, backend: foreign, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
  - {{name: foreign-h1, path: foreign-h1, backend: foreign-h1, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
  - {{name: unverified, path: unverified, backend: unverified, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
  - {{name: unverified-h1, path: unverified-h1, backend: unverified-h1, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
  - {{name: named, path: named, backend: named, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
  - {{name: named-h1, path: named-h1, backend: named-h1, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
  - {{name: misnamed, path: misnamed, backend: misnamed, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
"#,
        ca = indent(&ca.ca_pem),
        h2p = h2_capable.port(),
        h1p = h1_only.port(),
        fp = foreign.port(),
    );
    let gw = support::gateway(&config).await;

    // The custom CA is trusted; ALPN decides the protocol: HTTP/2 where the backend offers it,
    // HTTP/1.1 where it does not.
    let answer = support::get(&gw, "/alpn-h2/x", &[]).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let seen = answer.json();
    assert_eq!(seen["protocol"], "h2", "{seen}");
    assert_eq!(seen["path"], "/base/x", "{seen}");
    assert_eq!(
        seen["authority"],
        format!("127.0.0.1:{}", h2_capable.port())
    );
    let seen = support::get(&gw, "/alpn-h1/y", &[]).await.json();
    assert_eq!(seen["protocol"], "http/1.1", "{seen}");
    assert_eq!(seen["path"], "/base/y", "{seen}");

    // A certificate from another CA is refused, by both HTTP versions' clients.
    for path in ["/foreign/x", "/foreign-h1/x"] {
        let answer = support::get(&gw, path, &[]).await;
        let message = answer.error(502);
        assert!(
            message.contains("could not be connected to"),
            "{path}: {message}"
        );
    }
    // ... unless verification is off.
    for path in ["/unverified/x", "/unverified-h1/x"] {
        let answer = support::get(&gw, path, &[]).await;
        assert_eq!(
            answer.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }

    // `server-name`: the name verified (the URL names an address), and asked for by SNI.
    let seen = support::get(&gw, "/named/z", &[]).await.json();
    assert_eq!(seen["protocol"], "h2", "{seen}");
    assert_eq!(seen["sni"], "backend.internal", "{seen}");
    let seen = support::get(&gw, "/named-h1/z", &[]).await.json();
    assert_eq!(seen["protocol"], "http/1.1", "{seen}");
    assert_eq!(seen["sni"], "backend.internal", "{seen}");
    support::get(&gw, "/misnamed/z", &[]).await.error(502);

    let records = gw.records.lock().unwrap();
    let reasons: Vec<_> = records
        .iter()
        .filter(|r| r.status == 502)
        .map(|r| r.error_reason)
        .collect();
    assert_eq!(reasons.len(), 3);
    assert!(
        reasons
            .iter()
            .all(|r| *r == Some("BackendConnectionFailure")),
        "{reasons:?}"
    );
}

// === HTTP/2 backends ===

#[actix_rt::test]
async fn large_bodies_and_trailers_stream_through_h2_both_ways() {
    let ca = TestCa::new();
    let tls_h2 = ca.serve(&[b"h2"]).await;
    let h2c = h2c_backend().await;
    let config = format!(
        r#"
apiVersion: outpost/v1
named-values:
  - name: backend-ca
    value: |
      {ca}
backends:
  - {{name: h2c, url: "http://{h2c}", protocol: h2}}
  - {{name: tls, url: "https://127.0.0.1:{tp}", tls: {{ca-pem: "{{{{backend-ca}}}}"}}}}
apis:
  - {{name: h2c, path: h2c, backend: h2c, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
  - {{name: tls, path: tls, backend: tls, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
"#,
        ca = indent(&ca.ca_pem),
        tp = tls_h2.port(),
    );
    let gw = support::gateway_with(&config, |s| {
        s.listen.h2c = true;
        s.limits.max_body_bytes = 16 << 20;
    })
    .await;

    // 6 MiB up and 6 MiB down, well past every flow-control window on the way; the client's
    // trailer reaches the backend, the backend's trailers reach the client.
    let size = 6 << 20;
    for prefix in ["/h2c", "/tls"] {
        let mut client_trailers = http::HeaderMap::new();
        client_trailers.insert("x-client-trailer", "from-the-client".parse().unwrap());
        let answer = h2c_call(
            gw.addr,
            "POST",
            &format!("{prefix}/upload"),
            &[("x-reply-bytes", &size.to_string())],
            Some(pattern(size)),
            Some(client_trailers),
        )
        .await;
        assert_eq!(answer.status, 200, "{prefix}");
        assert_eq!(answer.body.len(), size, "{prefix}");
        assert!(
            answer.body == pattern(size),
            "{prefix}: the body changed on the way"
        );
        assert_eq!(
            answer.trailer("x-received"),
            Some(size.to_string().as_str()),
            "{prefix}"
        );
        assert_eq!(
            answer.trailer("x-sum"),
            Some(byte_sum(&pattern(size)).to_string().as_str()),
            "{prefix}"
        );
        assert_eq!(
            answer.trailer("x-client-trailer"),
            Some("from-the-client"),
            "{prefix}"
        );
    }

    // A bodiless GET; the backend is told trailers will reach the client.
    let answer = h2c_call(gw.addr, "GET", "/h2c/plain", &[], None, None).await;
    assert_eq!(answer.status, 200);
    let seen = answer.json();
    assert_eq!(seen["te"], "trailers", "{seen}");
    assert_eq!(seen["received"], 0, "{seen}");
    assert_eq!(answer.trailer("x-received"), Some("0"));

    // Over HTTP/1.1 the same backend answers; trailers have no way to an HTTP/1.1 client.
    let answer = support::get(&gw, "/h2c/plain", &[]).await;
    assert_eq!(answer.json()["protocol"], "h2");

    // Headers: past the gateway's limit (32 KiB) its JSON 431; past twice that, the HTTP/2
    // layer's own 431, before anything is decoded into a request.
    for (size, json) in [(40 << 10, true), (80 << 10, false)] {
        let big = "a".repeat(size);
        let answer = h2c_call(gw.addr, "GET", "/h2c/plain", &[("x-big", &big)], None, None).await;
        assert_eq!(answer.status, 431, "{size}");
        assert_eq!(answer.body.starts_with(b"{"), json, "{size}");
    }

    // The body limit holds on the way to an HTTP/2 backend.
    let answer = h2c_call(
        gw.addr,
        "POST",
        "/h2c/big",
        &[],
        Some(vec![1; 17 << 20]),
        None,
    )
    .await;
    assert_eq!(
        answer.status,
        413,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

#[actix_rt::test]
async fn an_h2_backend_that_went_away_is_a_502_and_is_reconnected_when_back() {
    let (backend, stop) = h2c_backend_at("127.0.0.1:0".parse().unwrap()).await;
    let config = format!(
        r#"
apiVersion: outpost/v1
backends:
  - {{name: h2c, url: "http://{backend}", protocol: h2, connect-timeout-ms: 2000}}
apis:
  - {{name: h2c, path: h2c, backend: h2c, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
"#
    );
    let gw = support::gateway(&config).await;
    // Several requests share the one pooled connection.
    for _ in 0..3 {
        assert_eq!(
            support::get(&gw, "/h2c/a", &[]).await.json()["protocol"],
            "h2"
        );
    }

    // The backend goes away (its connection with it): the next request finds nobody.
    stop.send(()).unwrap();
    drop(stop);
    let mut tries = 0;
    let message = loop {
        tries += 1;
        assert!(
            tries < 100,
            "the gateway never noticed the backend had gone"
        );
        let answer = support::get(&gw, "/h2c/b", &[]).await;
        // The gateway may see the old connection close only as this request fails on it; the
        // request then goes out on a fresh connection, which is refused.
        if answer.status == 502 {
            break answer.error(502);
        }
        assert_eq!(answer.status, 200);
    };
    assert!(message.contains("'h2c'"), "{message}");

    // Back on the same address: served again, on a new connection.
    let (_, _running) = h2c_backend_at(backend).await;
    let answer = support::get(&gw, "/h2c/c", &[]).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["path"], "/c");
}

/// A pool of HTTP/2 backends: each member has its own multiplexed connection; a member that
/// went away costs no request (refused connections go to the other member).
#[actix_rt::test]
async fn an_h2_pool_spreads_over_its_members_and_fails_over_when_one_goes_away() {
    let (a, stop_a) = h2c_backend_at("127.0.0.1:0".parse().unwrap()).await;
    let (b, _running_b) = h2c_backend_at("127.0.0.1:0".parse().unwrap()).await;
    let config = format!(
        r#"
apiVersion: outpost/v1
backends:
  - name: h2pool
    protocol: h2
    members: [{{url: "http://{a}"}}, {{url: "http://{b}"}}]
apis:
  - {{name: h2pool, path: h2pool, backend: h2pool, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
"#
    );
    let gw = support::gateway(&config).await;
    let mut seen = std::collections::HashMap::<String, u32>::new();
    for _ in 0..6 {
        let answer = support::get(&gw, "/h2pool/x", &[]).await;
        assert_eq!(answer.status, 200);
        let json = answer.json();
        assert_eq!(json["protocol"], "h2");
        *seen
            .entry(json["authority"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.get(&a.to_string()), Some(&3), "{seen:?}");
    assert_eq!(seen.get(&b.to_string()), Some(&3), "{seen:?}");

    stop_a.send(()).unwrap();
    drop(stop_a);
    for _ in 0..10 {
        let answer = support::get(&gw, "/h2pool/y", &[]).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.json()["authority"], b.to_string());
    }
}

// === gRPC: tonic client ↔ gateway ↔ tonic server ===

#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    text: String,
    /// The `x-forwarded-proto` the backend saw.
    #[prost(string, tag = "2")]
    forwarded_proto: String,
    /// Whether the subscription key reached the backend (it must not).
    #[prost(bool, tag = "3")]
    saw_key: bool,
}

const SERVICE: &str = "outpost.test.Echo";
const KEY: &str = "grpc-key-000000000000000000000000000";

/// The gRPC service, written as tonic's generated code would be: `Say` (unary; the text
/// `missing` is NOT_FOUND), `Count` (server streaming, `count` replies).
#[derive(Clone)]
struct Echo;

impl tonic::codegen::Service<http1::Request<tonic::body::Body>> for Echo {
    type Response = http1::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http1::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            Ok(match req.uri().path() {
                "/outpost.test.Echo/Say" => grpc.unary(Say, req).await,
                "/outpost.test.Echo/Count" => grpc.server_streaming(Count, req).await,
                "/outpost.test.Echo/Chat" => grpc.streaming(Chat, req).await,
                "/outpost.test.Echo/Endless" => grpc.server_streaming(Endless, req).await,
                _ => tonic::Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

fn reply(req: &tonic::Request<EchoRequest>, text: String) -> EchoReply {
    let meta = req.metadata();
    EchoReply {
        text,
        forwarded_proto: meta
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        saw_key: meta.contains_key("ocp-apim-subscription-key"),
    }
}

struct Say;

impl tonic::codegen::Service<tonic::Request<EchoRequest>> for Say {
    type Response = tonic::Response<EchoReply>;
    type Error = tonic::Status;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let answer = if req.get_ref().text == "missing" {
            Err(tonic::Status::not_found(
                "no echo for 'missing' — none at all",
            ))
        } else {
            let text = format!("hello {}", req.get_ref().text);
            Ok(tonic::Response::new(reply(&req, text)))
        };
        Box::pin(async move { answer })
    }
}

struct Count;

impl tonic::codegen::Service<tonic::Request<EchoRequest>> for Count {
    type Response = tonic::Response<BoxStream<EchoReply>>;
    type Error = tonic::Status;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let replies: Vec<EchoReply> = (1..=req.get_ref().count)
            .map(|i| reply(&req, format!("{} #{i}", req.get_ref().text)))
            .collect();
        let stream: BoxStream<EchoReply> = Box::pin(tonic::codegen::tokio_stream::iter(
            replies.into_iter().map(Ok),
        ));
        Box::pin(async move { Ok(tonic::Response::new(stream)) })
    }
}

/// Bidirectional: says `ready` before reading anything, then echoes each message as it comes.
struct Chat;

impl tonic::codegen::Service<tonic::Request<tonic::Streaming<EchoRequest>>> for Chat {
    type Response = tonic::Response<BoxStream<EchoReply>>;
    type Error = tonic::Status;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<tonic::Streaming<EchoRequest>>) -> Self::Future {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut incoming = req.into_inner();
        tokio::spawn(async move {
            let say = |text: String| EchoReply {
                text,
                ..EchoReply::default()
            };
            if tx.send(Ok(say("ready".to_owned()))).await.is_err() {
                return;
            }
            while let Ok(Some(message)) = incoming.message().await {
                if tx
                    .send(Ok(say(format!("echo {}", message.text))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let stream: BoxStream<EchoReply> = Box::pin(
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
        );
        Box::pin(async move { Ok(tonic::Response::new(stream)) })
    }
}

/// Server streaming without end; counts the streams it has open ([`ENDLESS_OPEN`]).
struct Endless;

static ENDLESS_OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Held by an endless stream: counted open until the stream is dropped.
struct Open;

impl Open {
    fn new() -> Open {
        ENDLESS_OPEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        ENDLESS_OPEN.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl tonic::codegen::Service<tonic::Request<EchoRequest>> for Endless {
    type Response = tonic::Response<BoxStream<EchoReply>>;
    type Error = tonic::Status;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::Request<EchoRequest>) -> Self::Future {
        let stream: BoxStream<EchoReply> = Box::pin(futures_util::stream::unfold(
            (Open::new(), 0u64),
            |(open, n)| async move {
                let reply = EchoReply {
                    text: format!("tick {n}"),
                    ..EchoReply::default()
                };
                Some((Ok(reply), (open, n + 1)))
            },
        ));
        Box::pin(async move { Ok(tonic::Response::new(stream)) })
    }
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = SERVICE;
}

async fn grpc_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(Echo, incoming));
    addr
}

async fn grpc_client(gateway: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn request(text: &str, count: u32, key: Option<&str>) -> tonic::Request<EchoRequest> {
    let mut req = tonic::Request::new(EchoRequest {
        text: text.to_owned(),
        count,
    });
    if let Some(key) = key {
        req.metadata_mut()
            .insert("ocp-apim-subscription-key", key.parse().unwrap());
    }
    req
}

async fn say(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    req: tonic::Request<EchoRequest>,
) -> Result<EchoReply, tonic::Status> {
    client.ready().await.unwrap();
    client
        .unary(
            req,
            http1::uri::PathAndQuery::from_static("/outpost.test.Echo/Say"),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

fn grpc_config(backend: SocketAddr) -> String {
    format!(
        r#"
apiVersion: outpost/v1
backends:
  - {{name: echo, url: "http://{backend}/{SERVICE}", protocol: h2}}
  - {{name: gone, url: "CLOSED", protocol: h2}}
apis:
  - name: echo
    path: {SERVICE}
    backend: echo
    operations:
      - {{name: say, method: POST, url-template: /Say}}
      - {{name: count, method: POST, url-template: /Count}}
      - {{name: chat, method: POST, url-template: /Chat}}
      - {{name: endless, method: POST, url-template: /Endless}}
  - name: gone
    path: outpost.test.Gone
    backend: gone
    operations:
      - {{name: say, method: POST, url-template: /Say}}
subscriptions:
  - {{name: grpc, scope: all-apis, primary-key: {KEY}}}
"#
    )
}

#[actix_rt::test]
async fn grpc_calls_pass_through_with_their_statuses() {
    let backend = grpc_server().await;
    let gw = support::gateway_with(&grpc_config(backend), |s| s.listen.h2c = true).await;
    let mut client = grpc_client(gw.addr).await;

    // Unary.
    let answer = say(&mut client, request("world", 0, Some(KEY)))
        .await
        .unwrap();
    assert_eq!(answer.text, "hello world");
    assert_eq!(answer.forwarded_proto, "http");
    assert!(
        !answer.saw_key,
        "the subscription key went on to the backend"
    );

    // Server streaming: every message, in order, then the OK status from the trailers.
    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            request("tick", 5, Some(KEY)),
            http1::uri::PathAndQuery::from_static("/outpost.test.Echo/Count"),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut texts = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        texts.push(reply.text);
    }
    assert_eq!(
        texts,
        ["tick #1", "tick #2", "tick #3", "tick #4", "tick #5"]
    );

    // The backend's error status reaches the client with its message.
    let status = say(&mut client, request("missing", 0, Some(KEY)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no echo for 'missing' — none at all");

    // The gateway's refusals are gRPC statuses: no key → UNAUTHENTICATED, backend down →
    // UNAVAILABLE.
    let status = say(&mut client, request("world", 0, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("missing subscription key"),
        "{status:?}"
    );
    let mut gone = client.clone();
    gone.ready().await.unwrap();
    let status = gone
        .unary(
            request("x", 0, Some(KEY)),
            http1::uri::PathAndQuery::from_static("/outpost.test.Gone/Say"),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("'gone'"), "{status:?}");

    // Telemetry has each call's gRPC status beside its HTTP status.
    let records: Vec<RequestRecord> = gw.records.lock().unwrap().clone();
    let seen: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.operation.as_deref().map(str::to_owned),
                r.status,
                r.grpc_status,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Some("say".to_owned()), 200, Some(0)),
            (Some("count".to_owned()), 200, Some(0)),
            (Some("say".to_owned()), 200, Some(5)),
            (Some("say".to_owned()), 401, Some(16)),
            (Some("say".to_owned()), 502, Some(14)),
        ],
        "{records:#?}"
    );
}

#[actix_rt::test]
async fn a_bidirectional_grpc_stream_flows_both_ways_at_once() {
    let backend = grpc_server().await;
    let gw = support::gateway_with(&grpc_config(backend), |s| s.listen.h2c = true).await;
    let mut client = grpc_client(gw.addr).await;
    client.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(4);
    let mut outgoing = tonic::Request::new(
        tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
    );
    outgoing
        .metadata_mut()
        .insert("ocp-apim-subscription-key", KEY.parse().unwrap());
    let mut incoming = client
        .streaming(
            outgoing,
            http1::uri::PathAndQuery::from_static("/outpost.test.Echo/Chat"),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    // The backend speaks first, before the client has sent a message: the call reached it
    // without waiting for the client's body.
    assert_eq!(incoming.message().await.unwrap().unwrap().text, "ready");
    // Each message is answered before the next is sent.
    for text in ["one", "two", "three"] {
        tx.send(EchoRequest {
            text: text.to_owned(),
            count: 0,
        })
        .await
        .unwrap();
        let reply = incoming.message().await.unwrap().unwrap();
        assert_eq!(reply.text, format!("echo {text}"));
    }
    drop(tx);
    assert!(
        incoming.message().await.unwrap().is_none(),
        "the call ends OK"
    );
    let record = gw.records.lock().unwrap().last().cloned().unwrap();
    assert_eq!((record.status, record.grpc_status), (200, Some(0)));
}

#[actix_rt::test]
async fn a_client_that_cancels_a_stream_cancels_it_at_the_backend() {
    let backend = grpc_server().await;
    let gw = support::gateway_with(&grpc_config(backend), |s| s.listen.h2c = true).await;
    let mut client = grpc_client(gw.addr).await;
    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            request("x", 0, Some(KEY)),
            http1::uri::PathAndQuery::from_static("/outpost.test.Echo/Endless"),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    for n in 0..3 {
        assert_eq!(
            stream.message().await.unwrap().unwrap().text,
            format!("tick {n}")
        );
    }
    assert_eq!(ENDLESS_OPEN.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The client gives up: its stream is reset, the gateway drops the backend's stream, the
    // backend's handler ends.
    drop(stream);
    let mut waited = 0;
    while ENDLESS_OPEN.load(std::sync::atomic::Ordering::SeqCst) != 0 {
        waited += 1;
        assert!(waited < 500, "the backend's stream is still open");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // And the request is reported.
    let mut waited = 0;
    let record = loop {
        if let Some(r) = gw.records.lock().unwrap().last().cloned() {
            break r;
        }
        waited += 1;
        assert!(waited < 500, "the request was never reported");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(record.operation.as_deref(), Some("endless"));
}

// === the HTTP/2 server's own limits ===

/// An h2c backend that tells `arrived` about each request and answers it only when `release`
/// is notified.
async fn held_backend(
    arrived: tokio::sync::mpsc::Sender<()>,
    release: Arc<tokio::sync::Notify>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (arrived, release) = (arrived.clone(), release.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    let (arrived, release) = (arrived.clone(), release.clone());
                    tokio::spawn(async move {
                        let _ = arrived.send(()).await;
                        release.notified().await;
                        let response = http::Response::builder().status(200).body(()).unwrap();
                        if let Ok(mut stream) = respond.send_response(response, false) {
                            let _ = stream.send_data(Bytes::from_static(b"released"), true);
                        }
                    });
                }
            });
        }
    });
    addr
}

#[actix_rt::test]
async fn a_stopping_gateway_lets_open_streams_finish_then_closes_with_goaway() {
    use outpost::gateway::proxy::{ProxyHooks, start_traffic_servers};
    use outpost::gateway::settings::GatewaySettings;
    use outpost_actors::route_table::{CompileContext, compile, new_table_handle};

    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let backend = held_backend(arrived_tx, release.clone()).await;
    let config = format!(
        r#"
apiVersion: outpost/v1
backends:
  - {{name: held, url: "http://{backend}", protocol: h2}}
apis:
  - {{name: held, path: held, backend: held, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
"#
    );
    let table = new_table_handle();
    let compiled = compile(&support::snapshot(&config), &CompileContext::default())
        .unwrap_or_else(|p| panic!("{p}"));
    table.store(Some(Arc::new(compiled)));
    let mut settings = GatewaySettings::default();
    settings.listen.workers = 1;
    settings.listen.h2c = true;
    let (server, addrs) =
        start_traffic_servers("127.0.0.1:0", None, &settings, table, ProxyHooks::default())
            .unwrap();
    let handle = server.handle();
    actix_rt::spawn(server);

    let goaway = Arc::new(tokio::sync::Notify::new());
    let io = GoawaySniffer {
        io: tokio::net::TcpStream::connect(addrs.http).await.unwrap(),
        header: Vec::new(),
        skip: 0,
        goaway: goaway.clone(),
    };
    let (client, mut connection) = h2::client::handshake(io).await.unwrap();
    let max_streams = std::rc::Rc::new(std::cell::Cell::new(0));
    let seen = max_streams.clone();
    let connection = actix_rt::spawn(async move {
        std::future::poll_fn(|cx| {
            let polled = std::pin::Pin::new(&mut connection).poll(cx);
            seen.set(connection.max_concurrent_send_streams());
            polled
        })
        .await
    });
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get("http://gateway/held/slow")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    arrived.recv().await.unwrap();
    // The gateway's limit on concurrent streams reached the client in its settings.
    assert_eq!(max_streams.get(), 256);

    // Stop while the stream is open: GOAWAY comes at once, the stream still finishes, then the
    // connection closes.
    addrs
        .stopping
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let stopped = actix_rt::spawn(handle.stop(true));
    goaway.notified().await;
    release.notify_one();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(bytes, b"released");
    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), connection)
        .await
        .expect("the gateway kept the connection open after its last stream")
        .unwrap();
    assert!(closed.is_ok(), "not a clean close: {closed:?}");
    stopped.await.unwrap();
}

/// A client connection that reads HTTP/2 frame headers as they pass and notifies `goaway` when
/// the server sends GOAWAY.
struct GoawaySniffer {
    io: tokio::net::TcpStream,
    /// The next frame header, as far as it has arrived.
    header: Vec<u8>,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    goaway: Arc<tokio::sync::Notify>,
}

impl tokio::io::AsyncRead for GoawaySniffer {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        let this = &mut *self;
        for &byte in &buf.filled()[before..] {
            if this.skip > 0 {
                this.skip -= 1;
                continue;
            }
            this.header.push(byte);
            if this.header.len() == 9 {
                let h = std::mem::take(&mut this.header);
                this.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                if h[3] == 0x7 {
                    this.goaway.notify_one();
                }
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for GoawaySniffer {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[actix_rt::test]
async fn a_slow_h2_backend_is_a_504_and_a_grpc_deadline_exceeded() {
    let (arrived_tx, _arrived) = tokio::sync::mpsc::channel(8);
    // Never released: the backend takes every request and never answers.
    let backend = held_backend(arrived_tx, Arc::new(tokio::sync::Notify::new())).await;
    let config = format!(
        r#"
apiVersion: outpost/v1
backends:
  - {{name: slow, url: "http://{backend}", protocol: h2, request-timeout-ms: 300}}
apis:
  - {{name: slow, path: slow, backend: slow, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
"#
    );
    let gw = support::gateway_with(&config, |s| s.listen.h2c = true).await;
    let message = support::get(&gw, "/slow/x", &[]).await.error(504);
    assert_eq!(message, "The backend 'slow' did not answer in time.");

    // The same for a gRPC client: DEADLINE_EXCEEDED, HTTP 200, the status in the headers.
    let answer = h2c_call(
        gw.addr,
        "POST",
        "/slow/pkg.Service/Method",
        &[("content-type", "application/grpc")],
        Some(vec![0, 0, 0, 0, 0]),
        None,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.is_empty());
    let headers = answer.headers;
    assert_eq!(headers.get("grpc-status").unwrap(), "4");
    assert_eq!(
        headers.get("grpc-message").unwrap(),
        "The backend 'slow' did not answer in time."
    );
    let records = gw.records.lock().unwrap();
    let last = records.last().unwrap();
    assert_eq!(
        (last.status, last.grpc_status, last.error_reason),
        (504, Some(4), Some("BackendTimeout"))
    );
}

#[actix_rt::test]
async fn retry_sends_the_body_and_trailers_again_to_an_h2_backend() {
    let backend = h2c_backend().await;
    let config = format!(
        r#"
apiVersion: outpost/v1
backends:
  - {{name: h2c, url: "http://{backend}", protocol: h2}}
apis:
  - name: retried
    path: retried
    backend: h2c
    subscription-required: false
    operations: [{{name: post, method: POST, url-template: "/{{*rest}}"}}]
    policies:
      backend: [{{retry: {{count: 3, interval-ms: 0, condition: "503"}}}}]
"#
    );
    let gw = support::gateway_with(&config, |s| s.listen.h2c = true).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-client-trailer", "again".parse().unwrap());
    let answer = h2c_call(
        gw.addr,
        "POST",
        "/retried/flaky",
        &[],
        Some(b"payload".to_vec()),
        Some(trailers),
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["received"], 7);
    assert_eq!(answer.trailer("x-client-trailer"), Some("again"));
    assert_eq!(FLAKY.load(std::sync::atomic::Ordering::SeqCst), 3);
}

// === HTTP/1.1 backends: the gateway's own client ===

/// A scripted HTTP/1.1 backend on raw TCP. Every answer (but `/raw/...`) is JSON saying which
/// connection (numbered from 1 in accept order) and which request on it (from 1) it was, how
/// the request body came (`framing`) and what it was. Paths:
/// `/chunked` answers chunked with a trailer, `/until-close` without a length (then closes),
/// `/close` with `Connection: close`, `/continue` after an interim `100 Continue`, `/vanish`
/// closes the connection without an answer when it is not the connection's first request
/// (what a backend closing an idle keep-alive connection looks like from the gateway), and
/// `/garbled` answers something that is not HTTP.
async fn h1_backend() -> SocketAddr {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut io, _)) = listener.accept().await else {
                return;
            };
            let conn = accepted.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for nth in 1.. {
                    let Some((path, framing, body)) = read_request(&mut io, &mut buf).await else {
                        return;
                    };
                    let json = serde_json::json!({
                        "conn": conn, "nth": nth, "framing": framing,
                        "body": String::from_utf8_lossy(&body),
                    })
                    .to_string();
                    let fixed = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{json}",
                        json.len()
                    );
                    let (answer, then_close) = match path.as_str() {
                        "/chunked" => (
                            format!(
                                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{json}\r\n0\r\nx-trailer: t\r\n\r\n",
                                json.len()
                            ),
                            false,
                        ),
                        "/until-close" => (format!("HTTP/1.1 200 OK\r\n\r\n{json}"), true),
                        "/close" => (
                            format!(
                                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{json}",
                                json.len()
                            ),
                            true,
                        ),
                        "/continue" => (format!("HTTP/1.1 100 Continue\r\n\r\n{fixed}"), false),
                        "/vanish" if nth > 1 => return,
                        "/garbled" => ("SPDY/9 what\r\n\r\n".to_owned(), true),
                        _ => (fixed, false),
                    };
                    if io.write_all(answer.as_bytes()).await.is_err() || then_close {
                        return;
                    }
                }
            });
        }
    });
    return addr;

    /// One request: its path, how its body was framed, and the body (chunks joined).
    async fn read_request(
        io: &mut tokio::net::TcpStream,
        buf: &mut Vec<u8>,
    ) -> Option<(String, &'static str, Vec<u8>)> {
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = io.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        buf.drain(..head_end);
        let path = head.split(' ').nth(1)?.to_owned();
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let mut body = Vec::new();
        let framing = if field("transfer-encoding:").as_deref() == Some("chunked") {
            loop {
                let (at, size) = loop {
                    match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete(done)) => break done,
                        Ok(httparse::Status::Partial) => {
                            let n = io.read(&mut chunk).await.ok()?;
                            if n == 0 {
                                return None;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        Err(_) => return None,
                    }
                };
                let need = at + size as usize + 2;
                while buf.len() < need {
                    let n = io.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                body.extend_from_slice(&buf[at..at + size as usize]);
                buf.drain(..need);
                if size == 0 {
                    break "chunked";
                }
            }
        } else if let Some(len) = field("content-length:") {
            let len: usize = len.parse().ok()?;
            while buf.len() < len {
                let n = io.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            body = buf.drain(..len).collect();
            "length"
        } else {
            "none"
        };
        Some((path, framing, body))
    }
}

fn h1_config(backend: SocketAddr) -> String {
    format!(
        r#"
apiVersion: outpost/v1
backends:
  - {{name: plain, url: "http://{backend}"}}
apis:
  - {{name: plain, path: plain, backend: plain, subscription-required: false, operations: [{{name: any, method: "*", url-template: "/{{*rest}}"}}]}}
"#
    )
}

#[actix_rt::test]
async fn http1_backend_connections_are_kept_and_reused_only_when_whole() {
    let backend = h1_backend().await;
    let gw = support::gateway(&h1_config(backend)).await;
    let seen = |a: &support::Answer| {
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let v = a.json();
        (v["conn"].as_u64().unwrap(), v["nth"].as_u64().unwrap())
    };

    // Keep-alive: one connection serves request after request.
    assert_eq!(seen(&support::get(&gw, "/plain/a", &[]).await), (1, 1));
    assert_eq!(seen(&support::get(&gw, "/plain/b", &[]).await), (1, 2));
    // A chunked answer (its trailer dropped) read to the end: the connection is reused.
    let a = support::get(&gw, "/plain/chunked", &[]).await;
    assert_eq!(seen(&a), (1, 3));
    assert!(
        a.header("x-trailer").is_none(),
        "trailers of HTTP/1.1 are dropped"
    );
    // An interim 100 Continue is skipped.
    assert_eq!(
        seen(&support::get(&gw, "/plain/continue", &[]).await),
        (1, 4)
    );
    assert_eq!(seen(&support::get(&gw, "/plain/c", &[]).await), (1, 5));
    // `Connection: close` from the backend: answered, and the next request opens another.
    assert_eq!(seen(&support::get(&gw, "/plain/close", &[]).await), (1, 6));
    assert_eq!(seen(&support::get(&gw, "/plain/d", &[]).await), (2, 1));
    // A body read until the backend closes: answered whole; the connection is not reused.
    assert_eq!(
        seen(&support::get(&gw, "/plain/until-close", &[]).await),
        (2, 2)
    );
    assert_eq!(seen(&support::get(&gw, "/plain/e", &[]).await), (3, 1));

    // Request bodies: with their length, or chunked when the client's length is unknown.
    let a = support::call(&gw, "POST", "/plain/echo", &[], Some("hello")).await;
    let v = a.json();
    assert_eq!(
        (v["framing"].as_str(), v["body"].as_str()),
        (Some("length"), Some("hello"))
    );
    let (status, text) = support::raw(
        gw.addr,
        "POST /plain/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""framing":"chunked""#), "{text}");
    assert!(text.contains(r#""body":"abcdefg""#), "{text}");
    // A bodiless GET carries no framing at all; a bodiless POST says `content-length: 0`.
    let v = support::get(&gw, "/plain/g", &[]).await.json();
    assert_eq!(v["framing"], "none", "{v}");
    let v = support::call(&gw, "POST", "/plain/p", &[], None)
        .await
        .json();
    assert_eq!(v["framing"], "length", "{v}");

    // Not HTTP: 502 with its reason.
    let message = support::get(&gw, "/plain/garbled", &[]).await.error(502);
    assert!(
        message.starts_with("The backend 'plain' sent an invalid response ("),
        "{message}"
    );
}

#[actix_rt::test]
async fn a_pooled_http1_connection_the_backend_dropped_is_retried_when_safe() {
    let backend = h1_backend().await;
    let gw = support::gateway(&h1_config(backend)).await;
    let conn_of = |a: &support::Answer| {
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        a.json()["conn"].as_u64().unwrap()
    };
    // The first request on a connection is answered; the backend drops the second unanswered.
    assert_eq!(conn_of(&support::get(&gw, "/plain/vanish", &[]).await), 1);
    // A GET on the dropped pooled connection goes again on a fresh one, unseen by the client.
    assert_eq!(conn_of(&support::get(&gw, "/plain/vanish", &[]).await), 2);
    // A POST may have had effects: it is not sent twice, the client gets a 502.
    let a = support::call(&gw, "POST", "/plain/vanish", &[], Some("x")).await;
    let message = a.error(502);
    assert_eq!(
        message,
        "The backend 'plain' closed the connection before sending a response."
    );
    let records = gw.records.lock().unwrap();
    assert_eq!(
        records.last().unwrap().error_reason,
        Some("BackendConnectionFailure")
    );
}
