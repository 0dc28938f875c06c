//! HTTPS termination on the traffic listener, with client certificates (mutual TLS).
//!
//! Certificates are not loaded here: they are compiled into the route table with the rest of
//! the configuration ([`ServerCertificates`]), one [`HostTls`] per hostname, each with its own
//! rustls server configuration (rustls verifies client certificates per configuration, and
//! hostnames differ in whether and how they ask for one). The acceptor reads the client's
//! hello first, then picks the configuration of the hostname it names (SNI) in the table that
//! is current at that instant (one atomic load). A new certificate therefore takes effect with
//! the snapshot that carries it, for new handshakes only, with no restart and no lock.
//!
//! The client certificate, if any, is parsed once per connection and travels with it
//! ([`TlsInfo`], connection data): requests read it from there.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_service::{Service, ServiceFactory, fn_factory};
use futures_util::future::LocalBoxFuture;

use outpost_actors::route_table::TableHandle;
use outpost_actors::route_table::client_certificate::ClientCertificate;
use outpost_actors::route_table::server_tls::HostTls;
use outpost_actors::route_table::table::CompiledTable;
use outpost_model::resources::ClientCertificateMode;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

pub use outpost_actors::route_table::server_tls::{MinTls, ServerCertificates};

use super::error::GatewayError;
use super::listener::WriteNow;

/// A client that has not finished its handshake by then is dropped (it holds a socket and,
/// until its hello arrives, nothing else).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress per worker at most (what actix-tls's acceptor allows): above it the
/// worker takes no new connection until one finishes, and the others wait in the listen
/// backlog, so a flood of handshakes cannot starve the requests of established connections.
const MAX_HANDSHAKES: usize = 256;

/// The HTTPS listener's handshakes: reads the hello, picks the hostname's configuration from
/// the current table, completes the handshake, reads the client certificate.
pub struct TlsAcceptor {
    table: TableHandle,
    /// For clients that send no server name (or an IP address), lowercase.
    default_host: Option<String>,
    min: MinTls,
    /// For names the gateway has no certificate for: rustls answers them with a fatal alert,
    /// a clean handshake failure rather than a dropped connection.
    refuse: Arc<ServerConfig>,
}

impl TlsAcceptor {
    pub fn new(table: TableHandle, default_host: Option<String>, min: MinTls) -> TlsAcceptor {
        let refuse =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default versions")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(NoCertificate));
        TlsAcceptor {
            table,
            default_host: default_host.map(|h| h.to_ascii_lowercase()),
            min,
            refuse: Arc::new(refuse),
        }
    }

    /// The listener's service: one per worker, each with its own handshake limit.
    pub fn factory(
        self: &Arc<Self>,
    ) -> impl ServiceFactory<
        TcpStream,
        Config = (),
        Response = TlsConnection,
        Error = io::Error,
        InitError = (),
    > + use<> {
        let acceptor = self.clone();
        fn_factory(move || {
            let acceptor = acceptor.clone();
            async move {
                Ok::<_, ()>(Accept {
                    acceptor,
                    gate: Rc::new(Gate::default()),
                })
            }
        })
    }

    /// One connection's handshake, bounded by a timeout (10 s).
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<TlsConnection> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }

    async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsConnection> {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        let host = self.host_for(&start.client_hello());
        let Some(host) = host else {
            // Fails, with the alert rustls sends when it has no certificate to offer.
            start.into_stream(self.refuse.clone()).await?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no certificate for the server name",
            ));
        };
        let stream = start.into_stream(host.server_config(self.min)).await?;
        let client = match stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        {
            None => None,
            Some(leaf) => Some(Arc::new(
                ClientCertificate::parse(leaf, host.client_ca)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            )),
        };
        Ok(TlsConnection {
            stream,
            info: TlsInfo {
                hostname: host.hostname.clone(),
                client,
            },
        })
    }

    fn host_for(&self, hello: &ClientHello<'_>) -> Option<Arc<HostTls>> {
        let table = self.table.load();
        let certificates: &ServerCertificates = &table.as_ref()?.certificates;
        certificates
            .lookup(hello.server_name(), self.default_host.as_deref())
            .cloned()
    }
}

/// One worker's acceptor.
struct Accept {
    acceptor: Arc<TlsAcceptor>,
    gate: Rc<Gate>,
}

/// Handshakes in progress on one worker, and the worker waiting for a free place.
#[derive(Default)]
struct Gate {
    open: Cell<usize>,
    waiting: RefCell<Option<Waker>>,
}

/// A place at the gate, given back when the handshake ends (or is dropped).
struct Place(Rc<Gate>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        if let Some(waker) = self.0.waiting.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl Service<TcpStream> for Accept {
    type Response = TlsConnection;
    type Error = io::Error;
    type Future = LocalBoxFuture<'static, io::Result<TlsConnection>>;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.gate.open.get() < MAX_HANDSHAKES {
            Poll::Ready(Ok(()))
        } else {
            *self.gate.waiting.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn call(&self, tcp: TcpStream) -> Self::Future {
        self.gate.open.set(self.gate.open.get() + 1);
        let place = Place(self.gate.clone());
        let acceptor = self.acceptor.clone();
        Box::pin(async move {
            let accepted = acceptor.accept(tcp).await;
            drop(place);
            accepted
        })
    }
}

/// The configuration of names without a certificate: every handshake fails.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesServerCert for NoCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// What a TLS connection tells its requests (connection data).
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The hostname whose configuration the handshake used, as configured (`*.example.com`).
    pub hostname: Arc<str>,
    /// The client's certificate, verified as the hostname says.
    pub client: Option<Arc<ClientCertificate>>,
}

/// An accepted TLS connection with what its handshake established.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: TlsInfo,
}

impl TlsConnection {
    pub fn tcp(&self) -> &TcpStream {
        self.stream.get_ref().0
    }

    /// Whether the client chose HTTP/2 by ALPN.
    pub fn is_h2(&self) -> bool {
        self.stream.get_ref().1.alpn_protocol() == Some(b"h2")
    }

    pub fn info(&self) -> &TlsInfo {
        &self.info
    }
}

/// The TLS side of a connection, if it has one (the plain listener's have none).
pub trait PeerTls {
    fn tls_info(&self) -> Option<TlsInfo> {
        None
    }
}

impl PeerTls for TcpStream {}

impl PeerTls for TlsConnection {
    fn tls_info(&self) -> Option<TlsInfo> {
        Some(self.info.clone())
    }
}

impl WriteNow for TlsConnection {
    /// Writing means encrypting, which needs the async path the codec has already left.
    fn write_now(&self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A request may only use a hostname that asks for client certificates on a connection whose
/// handshake was made for that hostname: otherwise a client could handshake with another name
/// (no certificate asked) and then send `Host:` of the protected one. Such a request gets 421,
/// which tells clients (browsers reusing an HTTP/2 connection, say) to open a new connection.
/// Over plain HTTP a hostname that requires a certificate is refused outright.
pub fn check_host(
    table: &CompiledTable,
    host: &str,
    tls: Option<&TlsInfo>,
) -> Result<(), GatewayError> {
    let certificates = &table.certificates;
    if !certificates.asks_client_certificates() {
        return Ok(());
    }
    let Some(entry) = certificates.host(host) else {
        return Ok(());
    };
    let required = match entry.client_certificate {
        ClientCertificateMode::None => return Ok(()),
        ClientCertificateMode::Optional => false,
        ClientCertificateMode::Required => true,
    };
    match tls {
        None if required => Err(GatewayError::client_certificate_needs_https(host)),
        None => Ok(()),
        Some(t) if *t.hostname != *entry.hostname => Err(GatewayError::misdirected_request(host)),
        // Made before the hostname started to require certificates.
        Some(t) if required && t.client.is_none() => Err(GatewayError::misdirected_request(host)),
        Some(_) => Ok(()),
    }
}
