//! The certificates a gateway serves on its HTTPS listener, compiled with the rest of the table.
//!
//! They come from the gateway resource's hostnames (`certificate-pem` / `key-pem`, usually
//! secret named values). Compiling them with the route table means a new certificate takes
//! effect exactly when the snapshot carrying it is published — the listener reads the current
//! table on every handshake, so open connections finish on the old certificate and new
//! handshakes get the new one, without a restart. A certificate that does not parse, or whose
//! key does not match it, is a compile problem, so the control plane refuses it at publish time
//! instead of a gateway failing handshakes later.
//!
//! Each hostname also says whether clients must present a certificate (`client-certificate`,
//! mutual TLS) and which CAs it must chain to (`client-ca-pem`). rustls verifies client
//! certificates per server configuration, so every hostname gets its own [`ServerConfig`]
//! (built on the first handshake that needs it, kept with the snapshot); the listener picks it
//! after reading the client's hello, by SNI name.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use outpost_model::Problems;
use outpost_model::resources::{ClientCertificateMode, Gateway};
use outpost_model::template::substitute_named_values;
use outpost_model::wire::CertificateExpiry;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoClientAuth, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

/// The lowest TLS version the listener accepts (`listen.https_min_tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinTls {
    V1_2,
    V1_3,
}

impl std::str::FromStr for MinTls {
    type Err = String;

    fn from_str(s: &str) -> Result<MinTls, String> {
        match s {
            "1.2" => Ok(MinTls::V1_2),
            "1.3" => Ok(MinTls::V1_3),
            other => Err(format!(
                "'{other}' is not a TLS version: use \"1.2\" or \"1.3\""
            )),
        }
    }
}

impl fmt::Display for MinTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MinTls::V1_2 => "1.2",
            MinTls::V1_3 => "1.3",
        })
    }
}

/// One hostname's TLS: its certificate and what it asks of clients.
pub struct HostTls {
    /// As configured, lowercase: `api.example.com` or `*.example.com`.
    pub hostname: Arc<str>,
    pub key: Arc<CertifiedKey>,
    pub client_certificate: ClientCertificateMode,
    /// Whether a certificate accepted here chained to the hostname's CAs: false on an
    /// `optional` hostname without CAs, which takes any certificate whose key is proven.
    pub client_ca: bool,
    verifier: Arc<dyn ClientCertVerifier>,
    /// Built once per minimum version (the listener has one), on first use.
    configs: [OnceLock<Arc<ServerConfig>>; 2],
}

impl fmt::Debug for HostTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostTls")
            .field("hostname", &self.hostname)
            .field("client_certificate", &self.client_certificate)
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

impl HostTls {
    /// The server configuration of this hostname: TLS 1.2 and 1.3 (or 1.3 only) with rustls'
    /// default cipher suites (forward-secret AEAD only), its certificate, its client
    /// certificate verifier, HTTP/2 or HTTP/1.1 by ALPN.
    pub fn server_config(&self, min: MinTls) -> Arc<ServerConfig> {
        let (slot, versions): (_, &[&rustls::SupportedProtocolVersion]) = match min {
            MinTls::V1_2 => (
                &self.configs[0],
                &[&rustls::version::TLS13, &rustls::version::TLS12],
            ),
            MinTls::V1_3 => (&self.configs[1], &[&rustls::version::TLS13]),
        };
        slot.get_or_init(|| {
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .expect("the ring provider supports TLS 1.2 and 1.3")
                .with_client_cert_verifier(self.verifier.clone())
                .with_cert_resolver(Arc::new(Fixed(self.key.clone())));
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
    }
}

/// One hostname's certificate, whatever the client asks.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Hostnames served over TLS: exact names, then `*.example.com` wildcards (one label deep, as
/// in RFC 6125).
#[derive(Debug, Default)]
pub struct ServerCertificates {
    exact: HashMap<String, Arc<HostTls>>,
    /// (`.example.com`, its TLS), longest suffix first.
    wildcard: Vec<(String, Arc<HostTls>)>,
    /// Whether any hostname asks for client certificates (requests then check which hostname
    /// their connection was made for).
    client_certificates: bool,
    /// Each hostname's leaf `notAfter`, soonest first: for `/metrics`, heartbeats and warnings.
    expiries: Vec<CertificateExpiry>,
}

impl ServerCertificates {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// The hostname's TLS for a client's server name; a client that sends none (or an IP
    /// address) gets the one of `default_host`, if that is set.
    pub fn lookup(&self, sni: Option<&str>, default_host: Option<&str>) -> Option<&Arc<HostTls>> {
        self.host(&sni.or(default_host)?.to_ascii_lowercase())
    }

    /// The TLS of a hostname (lowercase), exact name first, then wildcard.
    pub fn host(&self, name: &str) -> Option<&Arc<HostTls>> {
        if let Some(h) = self.exact.get(name) {
            return Some(h);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard
            .iter()
            .find(|(suffix, _)| suffix[1..] == *parent)
            .map(|(_, h)| h)
    }

    /// The certificate for a TLS client's server name (see [`Self::lookup`]).
    pub fn resolve(
        &self,
        sni: Option<&str>,
        default_host: Option<&str>,
    ) -> Option<Arc<CertifiedKey>> {
        self.lookup(sni, default_host).map(|h| h.key.clone())
    }

    /// Whether any hostname asks clients for a certificate.
    pub fn asks_client_certificates(&self) -> bool {
        self.client_certificates
    }

    /// When each hostname's certificate lapses, soonest first.
    pub fn expiries(&self) -> &[CertificateExpiry] {
        &self.expiries
    }

    /// The certificates that lapse before `now + window` (or already have), soonest first.
    pub fn expiring(&self, now: DateTime<Utc>, window: chrono::TimeDelta) -> &[CertificateExpiry] {
        let n = self
            .expiries
            .iter()
            .take_while(|e| e.not_after <= now + window)
            .count();
        &self.expiries[..n]
    }

    /// Hostnames served, for logs and status.
    pub fn hostnames(&self) -> Vec<String> {
        let mut names: Vec<String> = self.exact.keys().cloned().collect();
        names.extend(self.wildcard.iter().map(|(s, _)| format!("*{s}")));
        names.sort();
        names
    }
}

/// Compiles one gateway resource's certificates; every problem is listed under `at`.
pub(crate) fn compile(
    gateway: &Gateway,
    named_values: &HashMap<&str, &str>,
    at: &str,
    problems: &mut Problems,
) -> ServerCertificates {
    let lookup = |n: &str| named_values.get(n).copied();
    let mut out = ServerCertificates::default();
    for (i, h) in gateway.hostnames.iter().enumerate() {
        let here = format!("{at}.hostnames[{i}]");
        let (cert, key) = match (&h.certificate_pem, &h.key_pem) {
            (None, None) => {
                if h.client_certificate != ClientCertificateMode::None {
                    problems.push(
                        format!("{here}.client-certificate"),
                        "client certificates need HTTPS on this hostname: set certificate-pem \
                         and key-pem",
                    );
                }
                continue;
            }
            (Some(c), Some(k)) => (c, k),
            _ => {
                problems.push(
                    here,
                    "certificate-pem and key-pem go together: set both, or neither",
                );
                continue;
            }
        };
        let cert = substitute_named_values(cert, lookup)
            .map_err(|e| problems.push(format!("{here}.certificate-pem"), e))
            .ok();
        let key = substitute_named_values(key, lookup)
            .map_err(|e| problems.push(format!("{here}.key-pem"), e))
            .ok();
        let verifier = client_verifier(h.client_certificate, h.client_ca_pem.as_deref(), lookup)
            .map_err(|(field, e)| problems.push(format!("{here}.{field}"), e))
            .ok();
        let (Some(cert), Some(key), Some((verifier, client_ca))) = (cert, key, verifier) else {
            continue;
        };
        match certified_key(&cert, &key) {
            Ok((ck, not_after)) => {
                let name = h.hostname.to_ascii_lowercase();
                out.expiries.push(CertificateExpiry {
                    hostname: name.clone(),
                    not_after,
                });
                out.client_certificates |= h.client_certificate != ClientCertificateMode::None;
                let host = Arc::new(HostTls {
                    hostname: name.as_str().into(),
                    key: Arc::new(ck),
                    client_certificate: h.client_certificate,
                    client_ca,
                    verifier,
                    configs: Default::default(),
                });
                match name.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => {
                        out.wildcard.push((suffix.to_owned(), host));
                    }
                    _ => {
                        out.exact.insert(name, host);
                    }
                }
            }
            Err(e) => problems.push(here, e),
        }
    }
    out.wildcard
        .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    out.expiries.sort_by_key(|e| e.not_after);
    out
}

/// The key pair for the listener, and the leaf certificate's `notAfter`.
fn certified_key(cert_pem: &str, key_pem: &str) -> Result<(CertifiedKey, DateTime<Utc>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate-pem is not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("certificate-pem holds no certificate".into());
    }
    // The parse error could quote the key: say what is wrong, not what was read.
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| "key-pem is not a PEM private key".to_owned())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("key-pem: unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| format!("key-pem does not belong to the certificate: {e}"))?;
    let not_after = not_after(&ck.cert[0])?;
    Ok((ck, not_after))
}

/// A certificate's `notAfter`. rustls checks the chain's signatures only at handshakes; the
/// validity is read here once so expiry can be watched without one.
fn not_after(leaf: &CertificateDer<'_>) -> Result<DateTime<Utc>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("certificate-pem: the first certificate does not parse: {e}"))?;
    let at = cert.validity().not_after.timestamp();
    DateTime::from_timestamp(at, 0)
        .ok_or_else(|| format!("certificate-pem: notAfter {at} is out of range"))
}

/// A client certificate verifier and whether what it accepts chained to CAs.
type Verifier = (Arc<dyn ClientCertVerifier>, bool);

/// The verifier for a hostname's `client-certificate` mode; an error names the field at fault.
fn client_verifier<'a>(
    mode: ClientCertificateMode,
    ca_pem: Option<&str>,
    lookup: impl Fn(&str) -> Option<&'a str>,
) -> Result<Verifier, (&'static str, String)> {
    let roots = match ca_pem {
        None => None,
        Some(pem) => {
            let pem = substitute_named_values(pem, lookup).map_err(|e| ("client-ca-pem", e))?;
            Some(Arc::new(
                client_roots(&pem).map_err(|e| ("client-ca-pem", e))?,
            ))
        }
    };
    match (mode, roots) {
        (ClientCertificateMode::None, None) => Ok((Arc::new(NoClientAuth), false)),
        (ClientCertificateMode::None, Some(_)) => Err((
            "client-ca-pem",
            "client CAs are set but client-certificate is none".to_owned(),
        )),
        (ClientCertificateMode::Required, None) => Err((
            "client-ca-pem",
            "client-certificate 'required' needs the CA certificates client certificates must \
             chain to"
                .to_owned(),
        )),
        (ClientCertificateMode::Optional, None) => Ok((
            Arc::new(AnyClientCertificate {
                algorithms: provider().signature_verification_algorithms,
            }),
            false,
        )),
        (mode, Some(roots)) => {
            let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let builder = if mode == ClientCertificateMode::Optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            let verifier = builder
                .build()
                .map_err(|e| ("client-ca-pem", format!("not usable: {e}")))?;
            Ok((verifier, true))
        }
    }
}

fn client_roots(pem: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate found in the PEM".to_owned());
    }
    Ok(roots)
}

/// `optional` without CAs: any certificate is taken, and the client still proves it holds the
/// certificate's key (the handshake signature is checked). Its trust and dates are left to
/// `validate-client-certificate` (the certificate is marked untrusted).
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
