//! HTTPS termination: the rustls server configuration of the traffic listener.
//!
//! Certificates are not loaded here: they are compiled into the route table with the rest of
//! the configuration ([`ServerCertificates`]), and the resolver reads the table that is
//! current at each handshake (one atomic load). A new certificate therefore takes effect with
//! the snapshot that carries it, for new handshakes only, with no restart and no lock.

use std::sync::Arc;

use outpost_actors::route_table::TableHandle;
use outpost_actors::route_table::server_tls::ServerCertificates;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The lowest TLS version the listener accepts (`listen.https_min_tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinTls {
    V1_2,
    V1_3,
}

impl MinTls {
    pub fn parse(s: &str) -> Result<MinTls, String> {
        match s {
            "1.2" => Ok(MinTls::V1_2),
            "1.3" => Ok(MinTls::V1_3),
            other => Err(format!(
                "'{other}' is not a TLS version: use \"1.2\" or \"1.3\""
            )),
        }
    }
}

/// Picks the certificate for a handshake from the current route table.
#[derive(Debug)]
struct FromTable {
    table: TableHandle,
    /// For clients that send no server name (or an IP address).
    default_host: Option<String>,
}

impl ResolvesServerCert for FromTable {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        let certificates: &ServerCertificates = &table.as_ref()?.certificates;
        // No certificate for the name: the handshake fails with an alert (unrecognised name),
        // which is what a client asking for a host this gateway does not serve should get.
        certificates.resolve(hello.server_name(), self.default_host.as_deref())
    }
}

/// The server configuration: TLS 1.2 and 1.3 (or 1.3 only) with rustls' default cipher suites
/// (forward-secret AEAD only), certificates by SNI from the route table, HTTP/2 or HTTP/1.1 by
/// ALPN.
pub fn server_config(
    table: TableHandle,
    default_host: Option<String>,
    min: MinTls,
) -> ServerConfig {
    let versions: &[&rustls::SupportedProtocolVersion] = match min {
        MinTls::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinTls::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FromTable {
            table,
            default_host: default_host.map(|h| h.to_ascii_lowercase()),
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}
