//! Backend TLS: one rustls client configuration per distinct set of backend TLS settings.
//!
//! Trust comes from the bundled Mozilla roots (`webpki-roots`), so a gateway in a container
//! with a read-only or missing CA bundle still verifies backends, plus the backend's own
//! `tls.ca-pem`. `tls.verify: false` accepts any certificate (signatures are still checked,
//! so the handshake stays a real one). `tls.server-name` verifies the certificate against that
//! name instead of the URL's host (and the HTTP/2 upstream sends it as SNI too).
//!
//! The proxy keeps one pooled HTTP client per worker thread per [`TlsProfile::id`]; the id is a
//! hash of the settings, so recompiling the same configuration reuses the same pools.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The TLS and connection settings a pooled client is built for.
pub struct TlsProfile {
    /// Stable across recompiles of the same settings.
    pub id: u64,
    pub connect_timeout: Duration,
    pub config: Arc<ClientConfig>,
    /// `tls.server-name`: the name to ask for (SNI) and verify, instead of the URL's host.
    pub server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for TlsProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsProfile")
            .field("id", &self.id)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// The settings, as written in the backend resource (named values already substituted).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    pub verify: bool,
    pub ca_pem: Option<String>,
    pub server_name: Option<String>,
    pub connect_timeout: Duration,
}

impl TlsSettings {
    pub fn default_with_timeout(connect_timeout: Duration) -> Self {
        Self {
            verify: true,
            ca_pem: None,
            server_name: None,
            connect_timeout,
        }
    }

    pub fn id(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    /// Builds the client configuration; the error names the offending field.
    pub fn build(&self) -> Result<TlsProfile, (&'static str, String)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("tls", e.to_string()))?;
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = &self.ca_pem {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| ("tls.ca-pem", format!("not valid PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ("tls.ca-pem", format!("not a usable CA certificate: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(("tls.ca-pem", "no certificate found in the PEM".to_owned()));
            }
        }
        let server_name = match &self.server_name {
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|e| ("tls.server-name", format!("'{n}': {e}")))?,
            ),
            None => None,
        };
        let algorithms = provider.signature_verification_algorithms;
        let config = if !self.verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { algorithms }))
                .with_no_client_auth()
        } else if let Some(name) = server_name.clone() {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ("tls", e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(VerifyAs { inner, name }))
                .with_no_client_auth()
        } else {
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(TlsProfile {
            id: self.id(),
            connect_timeout: self.connect_timeout,
            config: Arc::new(config),
            server_name,
        })
    }
}

/// `tls.verify: false`: any certificate chain, real signature checks.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `tls.server-name`: full verification, against this name instead of the URL's host.
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
