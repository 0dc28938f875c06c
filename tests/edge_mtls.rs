//! Client certificates (mutual TLS) with real rustls clients over loopback, certificates made
//! by rcgen: a hostname that requires a certificate, one where it is optional (with and
//! without CAs), `validate-client-certificate` (identities, revocation by thumbprint and by
//! CRL, dates, trust), the certificate in templates and as a `rate-limit-by-key` key, requests
//! that try to reach a protected hostname another way, and `authentication-certificate` towards
//! a real TLS backend that requires client certificates.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use outpost::gateway::access_log::AccessLog;
use outpost::gateway::proxy::{HttpsListen, ProxyHooks, TrafficAddrs, start_traffic_servers};
use outpost::gateway::settings::GatewaySettings;
use outpost::gateway::tls::MinTls;
use outpost::sample_backend;
use outpost_actors::route_table::client_certificate::ClientCertificate;
use outpost_actors::route_table::{CompileContext, compile, new_table_handle};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

// === certificates ===

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Leaf {
    fn thumbprint(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }
}

/// What a leaf is for, and when it is valid (years; default: always).
struct Spec<'a> {
    cn: &'a str,
    serial: u64,
    server_names: &'a [&'a str],
    years: Option<(i32, i32)>,
}

fn params(spec: &Spec<'_>) -> CertificateParams {
    let names: Vec<String> = spec.server_names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, spec.cn);
    params.serial_number = Some(SerialNumber::from(spec.serial));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if spec.server_names.is_empty() {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    if let Some((from, to)) = spec.years {
        params.not_before = date_time_ymd(from, 1, 1);
        params.not_after = date_time_ymd(to, 1, 1);
    }
    params
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    fn issue(&self, spec: Spec<'_>) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params(&spec)
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A revocation list naming these serial numbers.
    fn crl(&self, serials: &[u64]) -> String {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&Issuer::from_params(&self.params, &self.key))
        .unwrap()
        .pem()
        .unwrap()
    }
}

fn self_signed(cn: &str) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let cert = params(&Spec {
        cn,
        serial: 77,
        server_names: &[],
        years: None,
    })
    .self_signed(&key)
    .unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

fn client(ca: &Ca, cn: &str, serial: u64) -> Leaf {
    ca.issue(Spec {
        cn,
        serial,
        server_names: &[],
        years: None,
    })
}

/// Every certificate of the tests.
struct Pki {
    /// Signs the gateway's and the TLS backend's server certificates.
    server_ca: Ca,
    server: Leaf,
    /// The CA the gateway's hostnames trust for client certificates.
    client_ca: Ca,
    a: Leaf,
    b: Leaf,
    revoked: Leaf,
    /// Listed in `client_ca`'s revocation list.
    crl_listed: Leaf,
    expired: Leaf,
    wrong_ca: Leaf,
    self_signed: Leaf,
    /// What the gateway presents to the TLS backend.
    gateway: Leaf,
}

const HOSTS: [&str; 4] = [
    "required.example",
    "optional.example",
    "any.example",
    "plain.example",
];
const CRL_SERIAL: u64 = 0x1003;

impl Pki {
    fn new() -> Pki {
        let server_ca = Ca::new("Outpost Test Server CA");
        let client_ca = Ca::new("Outpost Test Client CA");
        let other_ca = Ca::new("Other CA");
        let server = server_ca.issue(Spec {
            cn: "gateway",
            serial: 1,
            server_names: &[HOSTS[0], HOSTS[1], HOSTS[2], HOSTS[3], "localhost"],
            years: None,
        });
        Pki {
            a: client(&client_ca, "client-a", 0x1001),
            b: client(&client_ca, "client-b", 0x1002),
            crl_listed: client(&client_ca, "client-crl", CRL_SERIAL),
            revoked: client(&client_ca, "client-revoked", 0x1004),
            expired: client_ca.issue(Spec {
                cn: "client-expired",
                serial: 0x1005,
                server_names: &[],
                years: Some((2020, 2021)),
            }),
            gateway: client(&client_ca, "outpost-gateway", 0x1006),
            wrong_ca: client(&other_ca, "client-a", 0x2001),
            self_signed: self_signed("self-made"),
            server,
            server_ca,
            client_ca,
        }
    }
}

// === the gateway ===

fn set_headers() -> Value {
    json!([
        {"set-header": {"name": "X-Client-Subject", "value": "{request.client-certificate.subject}"}},
        {"set-header": {"name": "X-Client-Issuer", "value": "{request.client-certificate.issuer}"}},
        {"set-header": {"name": "X-Client-Thumbprint", "value": "{request.client-certificate.thumbprint}"}},
        {"set-header": {"name": "X-Client-Serial", "value": "{request.client-certificate.serial-number}"}},
        {"set-header": {"name": "X-Client-Not-After", "value": "{request.client-certificate.not-after}"}},
    ])
}

fn api(name: &str, backend: &str, inbound: Value) -> Value {
    json!({
        "name": name, "path": name, "backend": backend, "subscription-required": false,
        "operations": [{"name": "any", "method": "GET", "url-template": "/{*rest}"}],
        "policies": {"inbound": inbound},
    })
}

/// The configuration, as JSON (which is YAML too).
/// Where the TLS backends requiring client certificates listen: HTTP/1.1, HTTP/2.
type TlsBackends = Option<(SocketAddr, SocketAddr)>;

fn config(pki: &Pki, echo: SocketAddr, tls_backends: TlsBackends) -> String {
    let host = |name: &str, mode: &str, ca: bool| {
        let mut h = json!({
            "hostname": name, "certificate-pem": "{{server-cert}}", "key-pem": "{{server-key}}",
            "client-certificate": mode,
        });
        if ca {
            h["client-ca-pem"] = json!("{{client-ca}}");
        }
        h
    };
    let closed: SocketAddr = ([127, 0, 0, 1], 9).into();
    let (tls_backend, h2_backend) = tls_backends.unwrap_or((closed, closed));
    let apis = vec![
        api("echo", "echo", set_headers()),
        api(
            "strict",
            "echo",
            json!([{"validate-client-certificate": {
                "revoked-thumbprints": ["{{revoked}}"],
                "revocation-crl-pem": "{{crl}}",
                "identities": [
                    {"subject": "CN=client-a"},
                    {"common-name": "client-revoked"},
                    {"serial-number": format!("{CRL_SERIAL:x}")},
                ],
            }}]),
        ),
        api(
            "pinned",
            "echo",
            json!([{"validate-client-certificate": {
                "validate-trust": false,
                "identities": [
                    {"thumbprint": pki.self_signed.thumbprint()},
                    {"thumbprint": pki.expired.thumbprint().to_uppercase()},
                ],
            }}]),
        ),
        api(
            "lenient",
            "echo",
            json!([
                {"validate-client-certificate": {
                    "ignore-error": true, "identities": [{"common-name": "nobody"}],
                }},
                {"set-header": {"name": "X-Cert-Error", "value": "{variable.client-certificate-error}"}},
            ]),
        ),
        api(
            "limited",
            "echo",
            json!([{"rate-limit-by-key": {
                "calls": 2, "renewal-period": 60,
                "counter-key": "{request.client-certificate.thumbprint}",
            }}]),
        ),
        api(
            "with-cert",
            "secure",
            json!([{"authentication-certificate": {
                "certificate-pem": "{{gateway-cert}}", "key-pem": "{{gateway-key}}",
            }}]),
        ),
        api("without-cert", "secure", json!([])),
        api(
            "with-cert-h2",
            "secure-h2",
            json!([{"authentication-certificate": {
                "certificate-pem": "{{gateway-cert}}", "key-pem": "{{gateway-key}}",
            }}]),
        ),
        api("without-cert-h2", "secure-h2", json!([])),
    ];
    let names: Vec<&str> = apis.iter().map(|a| a["name"].as_str().unwrap()).collect();
    json!({
        "apiVersion": "outpost/v1",
        "named-values": [
            {"name": "server-cert", "value": pki.server.cert_pem},
            {"name": "server-key", "secret": true, "value": pki.server.key_pem},
            {"name": "client-ca", "value": pki.client_ca.pem},
            // A list in one named value, as an operator would keep it.
            {"name": "revoked", "value": format!("{}\n{}\n", "ab".repeat(32), pki.revoked.thumbprint())},
            {"name": "crl", "value": pki.client_ca.crl(&[CRL_SERIAL])},
            {"name": "backend-ca", "value": pki.server_ca.pem},
            {"name": "gateway-cert", "value": pki.gateway.cert_pem},
            {"name": "gateway-key", "secret": true, "value": pki.gateway.key_pem},
        ],
        "backends": [
            {"name": "echo", "url": format!("http://{echo}")},
            {"name": "secure", "url": format!("https://{tls_backend}"),
             "tls": {"ca-pem": "{{backend-ca}}", "server-name": "localhost"}},
            {"name": "secure-h2", "url": format!("https://{h2_backend}"), "protocol": "h2",
             "tls": {"ca-pem": "{{backend-ca}}", "server-name": "localhost"}},
        ],
        "apis": apis,
        "gateways": [{
            "name": "edge",
            "apis": names,
            "hostnames": [
                host(HOSTS[0], "required", true),
                host(HOSTS[1], "optional", true),
                host(HOSTS[2], "optional", false),
                host(HOSTS[3], "none", false),
            ],
        }],
    })
    .to_string()
}

struct Edge {
    pki: Pki,
    addrs: TrafficAddrs,
    /// The access log's directory (`access.log`).
    log_dir: tempfile::TempDir,
}

impl Edge {
    async fn start() -> Edge {
        Self::start_with(Pki::new(), None).await
    }

    async fn start_with(pki: Pki, tls_backends: TlsBackends) -> Edge {
        let (echo_server, echo) = sample_backend::start("127.0.0.1:0").unwrap();
        actix_rt::spawn(echo_server);
        let table = new_table_handle();
        let compiled = compile(
            &support::snapshot(&config(&pki, echo, tls_backends)),
            &CompileContext::default(),
        )
        .unwrap_or_else(|p| panic!("{p}"));
        table.store(Some(Arc::new(compiled)));
        let mut settings = GatewaySettings::default();
        settings.listen.workers = 1;
        let log_dir = tempfile::tempdir().unwrap();
        settings.access_log.enabled = true;
        settings.access_log.path = log_dir.path().join("access.log").display().to_string();
        let (access_log, _writer) = AccessLog::start(&settings.access_log, "edge")
            .unwrap()
            .unwrap();
        let (server, addrs) = start_traffic_servers(
            "127.0.0.1:0",
            Some(HttpsListen {
                listen: "127.0.0.1:0",
                default_host: None,
                min_tls: MinTls::V1_2,
            }),
            &settings,
            table,
            ProxyHooks {
                access_log: Some(access_log),
                ..ProxyHooks::default()
            },
        )
        .unwrap();
        actix_rt::spawn(server);
        Edge {
            pki,
            addrs,
            log_dir,
        }
    }

    /// The access log's line for `path`, once the writer has written it.
    async fn logged(&self, path: &str) -> Value {
        let file = self.log_dir.path().join("access.log");
        for _ in 0..200 {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|l| l["path"] == path)
            {
                return line;
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no access log line for {path}");
    }

    /// A TLS client trusting the gateway's CA, presenting `cert` if given.
    fn client(&self, cert: Option<&Leaf>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pki.server_ca.pem.as_bytes()).unwrap())
            .unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let mut config = match cert {
            None => builder.with_no_client_auth(),
            Some(leaf) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from(leaf.der.clone())],
                    PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        // Every handshake a full one: each test case is about what one handshake presents.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }

    /// GET `path` over TLS with `sni`, `Host: sni`, presenting `cert`: the answer, or why the
    /// connection failed (handshake refused, connection closed).
    async fn get(&self, sni: &str, path: &str, cert: Option<&Leaf>) -> Result<Reply, String> {
        self.get_as(sni, sni, path, cert).await
    }

    /// Completes a handshake with `sni` presenting `cert`, sends nothing and reads: how the
    /// gateway ended it. (With TLS 1.3 the client is done before the server has checked its
    /// certificate, so a refusal arrives as an alert after the handshake; a request written
    /// first could meet a closed socket instead.) A connection that is not refused shows as a
    /// read timeout.
    async fn refusal(&self, sni: &str, cert: Option<&Leaf>) -> String {
        let config = self.client(cert);
        let addr = self.addrs.https.unwrap();
        let sni = sni.to_owned();
        tokio::task::spawn_blocking(move || {
            let name = ServerName::try_from(sni).unwrap();
            let conn = ClientConnection::new(config, name).unwrap();
            let tcp = TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut tls = StreamOwned::new(conn, tcp);
            while tls.conn.is_handshaking() {
                if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                    return e.to_string();
                }
            }
            let mut buf = [0u8; 1024];
            loop {
                match tls.read(&mut buf) {
                    Err(e) => return e.to_string(),
                    Ok(0) => return "closed without an alert".to_owned(),
                    Ok(_) => {}
                }
            }
        })
        .await
        .unwrap()
    }

    async fn get_as(
        &self,
        sni: &str,
        host: &str,
        path: &str,
        cert: Option<&Leaf>,
    ) -> Result<Reply, String> {
        let config = self.client(cert);
        let addr = self.addrs.https.unwrap();
        let (sni, host, path) = (sni.to_owned(), host.to_owned(), path.to_owned());
        tokio::task::spawn_blocking(move || tls_get(config, addr, &sni, &host, &path))
            .await
            .unwrap()
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header the echo backend received.
    fn forwarded(&self, name: &str) -> String {
        self.json()["headers"][name]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The gateway's refusal message, checking the status.
    fn refusal(&self, status: u16) -> String {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()["message"].as_str().unwrap().to_owned()
    }
}

fn tls_get(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
) -> Result<Reply, String> {
    let conn = ClientConnection::new(config, ServerName::try_from(sni.to_owned()).unwrap())
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    // With TLS 1.3 the client is done before the server has checked its certificate: a
    // refusal shows as an alert on the first read.
    if let Err(e) = write!(tls, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n") {
        // The server may have sent its alert and closed already: the alert says why.
        let mut rest = [0u8; 64];
        return Err(match tls.read(&mut rest) {
            Err(alert) => alert.to_string(),
            Ok(_) => e.to_string(),
        });
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tls.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "connection closed: {}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if buf.len() >= end + 4 + len {
            return Ok(Reply {
                status,
                body: buf[end + 4..end + 4 + len].to_vec(),
            });
        }
    }
}

// === the tests ===

#[actix_rt::test]
async fn a_hostname_that_requires_a_certificate_refuses_handshakes_without_a_good_one() {
    let edge = Edge::start().await;
    let pki = &edge.pki;
    let host = "required.example";

    for (cert, why) in [
        (None, "no certificate"),
        (Some(&pki.wrong_ca), "a certificate of another CA"),
        (Some(&pki.expired), "an expired certificate"),
        (Some(&pki.self_signed), "a self-signed certificate"),
    ] {
        // Refused by the handshake: the client gets an alert.
        let error = edge.refusal(host, cert).await;
        assert!(error.contains("alert"), "{why}: {error}");
        let answer = edge.get(host, "/echo/x", cert).await;
        assert!(answer.is_err(), "{why}: served {answer:?}");
    }

    let reply = edge.get(host, "/echo/x", Some(&pki.a)).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.forwarded("x-client-subject"), "CN=client-a");
    assert_eq!(
        reply.forwarded("x-client-issuer"),
        "CN=Outpost Test Client CA"
    );
    assert_eq!(reply.forwarded("x-client-thumbprint"), pki.a.thumbprint());
    assert_eq!(reply.forwarded("x-client-serial"), "1001");
    assert_eq!(
        reply.forwarded("x-client-not-after"),
        "4096-01-01T00:00:00Z"
    );

    // The listener goes on serving after the refusals.
    let reply = edge.get(host, "/echo/y", Some(&pki.b)).await.unwrap();
    assert_eq!(reply.forwarded("x-client-subject"), "CN=client-b");

    // The access log names the certificate (issue 11).
    let line = edge.logged("/echo/y").await;
    assert_eq!(line["client_cert_subject"], "CN=client-b", "{line}");
    assert_eq!(line["client_cert_thumbprint"], pki.b.thumbprint());
    assert_eq!(line["host"], host);
}

#[actix_rt::test]
async fn an_optional_hostname_serves_clients_with_and_without_a_certificate() {
    let edge = Edge::start().await;
    let pki = &edge.pki;
    let host = "optional.example";

    let reply = edge.get(host, "/echo/x", None).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.forwarded("x-client-subject"), "");
    assert_eq!(reply.forwarded("x-client-thumbprint"), "");
    let line = edge.logged("/echo/x").await;
    assert_eq!(line["client_cert_subject"], Value::Null, "{line}");
    assert_eq!(line["client_cert_thumbprint"], Value::Null);

    let reply = edge.get(host, "/echo/x", Some(&pki.a)).await.unwrap();
    assert_eq!(reply.forwarded("x-client-subject"), "CN=client-a");
    assert_eq!(reply.forwarded("x-client-thumbprint"), pki.a.thumbprint());

    // Optional is not "anything": a certificate that is presented must chain to the CAs.
    assert!(
        edge.get(host, "/echo/x", Some(&pki.wrong_ca))
            .await
            .is_err()
    );

    // Without CAs any certificate is taken (its key is proven), and shown.
    let reply = edge
        .get("any.example", "/echo/x", Some(&pki.self_signed))
        .await
        .unwrap();
    assert_eq!(reply.forwarded("x-client-subject"), "CN=self-made");
    assert_eq!(reply.forwarded("x-client-issuer"), "CN=self-made");

    // A hostname without client certificates does not ask for one.
    let reply = edge
        .get("plain.example", "/echo/x", Some(&pki.a))
        .await
        .unwrap();
    assert_eq!(reply.forwarded("x-client-subject"), "");
}

#[actix_rt::test]
async fn validate_client_certificate_checks_identities_revocation_dates_and_trust() {
    let edge = Edge::start().await;
    let pki = &edge.pki;

    // Identities: by subject, by common name, by serial number.
    let reply = edge
        .get("required.example", "/strict/x", Some(&pki.a))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let message = edge
        .get("required.example", "/strict/x", Some(&pki.b))
        .await
        .unwrap()
        .refusal(403);
    assert!(
        message.contains("not one of the accepted identities"),
        "{message}"
    );

    // Revoked by thumbprint (a list in a named value) and by the CA's revocation list.
    for leaf in [&pki.revoked, &pki.crl_listed] {
        let message = edge
            .get("required.example", "/strict/x", Some(leaf))
            .await
            .unwrap()
            .refusal(403);
        assert!(message.contains("revoked"), "{message}");
    }

    // No certificate at all: 401.
    let message = edge
        .get("optional.example", "/strict/x", None)
        .await
        .unwrap()
        .refusal(401);
    assert!(
        message.contains("client certificate is required"),
        "{message}"
    );

    // A certificate the hostname took without CAs is not trusted.
    let message = edge
        .get("any.example", "/strict/x", Some(&pki.self_signed))
        .await
        .unwrap()
        .refusal(403);
    assert!(message.contains("not issued by a trusted CA"), "{message}");

    // Pinned by thumbprint without trust: the self-signed one passes, the expired one does
    // not, and a trusted one that is not pinned does not either.
    let reply = edge
        .get("any.example", "/pinned/x", Some(&pki.self_signed))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let message = edge
        .get("any.example", "/pinned/x", Some(&pki.expired))
        .await
        .unwrap()
        .refusal(403);
    assert!(message.contains("expired on 2021-01-01"), "{message}");
    let message = edge
        .get("optional.example", "/pinned/x", Some(&pki.a))
        .await
        .unwrap()
        .refusal(403);
    assert!(
        message.contains("not one of the accepted identities"),
        "{message}"
    );

    // ignore-error lets the request through and says why it would have been refused.
    let reply = edge
        .get("optional.example", "/lenient/x", Some(&pki.a))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.forwarded("x-cert-error"),
        "the client certificate is not one of the accepted identities"
    );
}

#[actix_rt::test]
async fn rate_limit_by_key_counts_each_certificate_apart() {
    let edge = Edge::start().await;
    let pki = &edge.pki;
    let host = "required.example";
    for _ in 0..2 {
        let reply = edge.get(host, "/limited/x", Some(&pki.a)).await.unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let reply = edge.get(host, "/limited/x", Some(&pki.a)).await.unwrap();
    assert_eq!(reply.status, 429, "{reply:?}");
    // Another certificate has its own count.
    let reply = edge.get(host, "/limited/x", Some(&pki.b)).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[actix_rt::test]
async fn a_protected_hostname_cannot_be_reached_over_another_connection() {
    let edge = Edge::start().await;
    let pki = &edge.pki;

    // Over plain HTTP: refused.
    let (status, text) = support::raw(
        edge.addrs.http,
        "GET /echo/x HTTP/1.1\r\nHost: required.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("requires HTTPS with a client certificate"),
        "{text}"
    );
    // An optional hostname over plain HTTP is served, without a certificate.
    let (status, text) = support::raw(
        edge.addrs.http,
        "GET /echo/x HTTP/1.1\r\nHost: optional.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");

    // A handshake for a hostname that asks for nothing, then the protected one's Host: 421.
    let reply = edge
        .get_as("plain.example", "required.example", "/echo/x", None)
        .await
        .unwrap();
    let message = reply.refusal(421);
    assert!(message.contains("open a new connection"), "{message}");
    // Even with a certificate, from another hostname's handshake (CA checks differ by name).
    let reply = edge
        .get_as(
            "any.example",
            "optional.example",
            "/echo/x",
            Some(&pki.wrong_ca),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 421, "{reply:?}");
    // The other way round is fine: plain.example asks for no certificate.
    let reply = edge
        .get_as("required.example", "plain.example", "/echo/x", Some(&pki.a))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// A TLS backend that requires client certificates of `client_ca` and answers with the subject
/// of the one it got: over HTTP/1.1, or HTTP/2 (chosen by ALPN) when `h2`.
async fn tls_backend_requiring_certificates(pki: &Pki, h2: bool) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.client_ca.pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(pki.server.der.clone())],
            PrivateKeyDer::from_pem_slice(pki.server.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let mut config = config;
    if h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    actix_rt::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            actix_rt::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let subject = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| ClientCertificate::parse(c, true).unwrap().subject)
                    .unwrap_or_default();
                if h2 {
                    let Ok(mut conn) = h2::server::handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((_, mut respond))) = conn.accept().await {
                        // A length, so the gateway's HTTP/1.1 answer has one too.
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-length", subject.len())
                            .body(())
                            .unwrap();
                        if let Ok(mut body) = respond.send_response(head, false) {
                            let _ = body.send_data(subject.clone().into(), true);
                        }
                    }
                    return;
                }
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{subject}",
                    subject.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[actix_rt::test]
async fn authentication_certificate_is_presented_to_a_backend_that_requires_one() {
    let pki = Pki::new();
    let backend = tls_backend_requiring_certificates(&pki, false).await;
    let h2_backend = tls_backend_requiring_certificates(&pki, true).await;
    let edge = Edge::start_with(pki, Some((backend, h2_backend))).await;

    let reply = edge
        .get("plain.example", "/with-cert/x", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(String::from_utf8_lossy(&reply.body), "CN=outpost-gateway");

    // Without the policy the backend refuses the handshake: a bad gateway.
    let message = edge
        .get("plain.example", "/without-cert/x", None)
        .await
        .unwrap()
        .refusal(502);
    assert!(message.contains("backend 'secure'"), "{message}");

    // The connections made with the certificate are not reused without it, nor the reverse.
    let reply = edge
        .get("plain.example", "/with-cert/y", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = edge
        .get("plain.example", "/without-cert/y", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 502, "{reply:?}");

    // A WebSocket handshake goes to the backend on a connection of its own: with the
    // certificate too (this backend answers it with a plain 200, passed on as its refusal).
    let handshake = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: plain.example\r\nUpgrade: websocket\r\n\
             Connection: Upgrade, close\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let (status, text) = support::raw(edge.addrs.http, &handshake("/with-cert/ws")).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("CN=outpost-gateway"), "{text}");
    let (status, text) = support::raw(edge.addrs.http, &handshake("/without-cert/ws")).await;
    assert_eq!(status, 502, "{text}");

    // An HTTP/2 backend (its own connection pool): the same.
    for _ in 0..2 {
        let reply = edge
            .get("plain.example", "/with-cert-h2/x", None)
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(String::from_utf8_lossy(&reply.body), "CN=outpost-gateway");
        let reply = edge
            .get("plain.example", "/without-cert-h2/x", None)
            .await
            .unwrap();
        assert_eq!(reply.status, 502, "{reply:?}");
    }
}

#[test]
fn bad_client_certificate_settings_are_refused_with_their_location() {
    let pki = Pki::new();
    let echo: SocketAddr = ([127, 0, 0, 1], 9).into();
    let base: Value = serde_json::from_str(&config(&pki, echo, None)).unwrap();
    let problems = |edit: &dyn Fn(&mut Value)| -> String {
        let mut doc = base.clone();
        edit(&mut doc);
        let text = doc.to_string();
        match outpost_model::document::Document::from_yaml(&text) {
            Err(p) => p.to_string(),
            Ok(_) => match compile(&support::snapshot(&text), &CompileContext::default()) {
                Err(p) => p.to_string(),
                Ok(_) => panic!("compiled: {text}"),
            },
        }
    };
    let text = problems(&|d| {
        d["gateways"][0]["hostnames"][0]
            .as_object_mut()
            .unwrap()
            .remove("client-ca-pem");
    });
    assert!(text.contains("hostnames[0].client-ca-pem"), "{text}");
    assert!(
        text.contains("'required' needs the CA certificates"),
        "{text}"
    );

    let text = problems(&|d| {
        d["named-values"][2]["value"] = json!("-----BEGIN CERTIFICATE-----\nnot base64\n");
    });
    assert!(text.contains("hostnames[0].client-ca-pem"), "{text}");

    let text =
        problems(&|d| d["gateways"][0]["hostnames"][3]["client-ca-pem"] = json!("{{client-ca}}"));
    assert!(text.contains("hostnames[3].client-ca-pem"), "{text}");
    assert!(text.contains("client-certificate is none"), "{text}");

    let text = problems(&|d| {
        d["apis"][2]["policies"]["inbound"][0]["validate-client-certificate"]["identities"][0]["thumbprint"] =
            json!("ab".repeat(20));
    });
    assert!(
        text.contains(
            "apis/pinned.policies.inbound[0].validate-client-certificate.identities[0].thumbprint"
        ),
        "{text}"
    );
    assert!(text.contains("SHA-256"), "{text}");

    let text = problems(&|d| {
        d["named-values"][4]["value"] = json!(pki.client_ca.pem);
    });
    assert!(text.contains("revocation-crl-pem"), "{text}");

    // A key that is not the certificate's: refused, and the key is not quoted.
    let text = problems(&|d| d["named-values"][7]["value"] = json!(pki.a.key_pem));
    assert!(
        text.contains("apis/with-cert.policies.inbound[0].authentication-certificate.key-pem"),
        "{text}"
    );
    let key_body = pki.a.key_pem.lines().nth(1).unwrap();
    assert!(!text.contains(key_body), "{text}");
}

#[actix_rt::test]
async fn the_certificate_reaches_requests_over_http2_too() {
    let edge = Edge::start().await;
    let mut config = (*edge.client(Some(&edge.pki.a))).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(edge.addrs.https.unwrap())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("required.example").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    actix_rt::spawn(async move {
        let _ = connection.await;
    });
    // Two requests multiplexed on the connection, both with its certificate.
    for path in ["/echo/1", "/strict/2"] {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::get(format!("https://required.example{path}"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        if path == "/echo/1" {
            let echo: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(echo["headers"]["x-client-subject"], "CN=client-a", "{echo}");
        }
    }
}
