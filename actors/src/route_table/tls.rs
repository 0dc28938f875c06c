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
//!
//! `authentication-certificate` adds a client certificate ([`ClientIdentity`]) to a profile: the
//! same settings with another identity are another profile with another id, so connections
//! made with one certificate are never reused for a request that should present another (or
//! none).

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// The TLS and connection settings a pooled client is built for.
pub struct TlsProfile {
    /// Stable across recompiles of the same settings.
    pub id: u64,
    pub connect_timeout: Duration,
    pub config: Arc<ClientConfig>,
    /// What it was built from, to build the same with a client certificate.
    pub settings: TlsSettings,
    /// `tls.server-name`: the name to ask for (SNI) and verify, instead of the URL's host.
    pub server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for TlsProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsProfile")
            .field("id", &self.id)
            .field("connect_timeout", &self.connect_timeout)
            .field("client_identity", &self.settings.client_identity)
            .finish_non_exhaustive()
    }
}

impl TlsProfile {
    /// This profile presenting `identity` to backends that ask for a client certificate.
    pub fn with_identity(&self, identity: &ClientIdentity) -> Result<TlsProfile, String> {
        let settings = TlsSettings {
            client_identity: Some(identity.clone()),
            ..self.settings.clone()
        };
        settings.build().map_err(|(_, e)| e)
    }
}

/// The settings, as written in the backend resource (named values already substituted).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    pub verify: bool,
    pub ca_pem: Option<String>,
    pub server_name: Option<String>,
    pub connect_timeout: Duration,
    /// The client certificate presented to the backend (`authentication-certificate`).
    pub client_identity: Option<ClientIdentity>,
}

/// A client certificate chain and its key. Its `Debug` shows the thumbprint, never the key.
#[derive(Clone)]
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// SHA-256 of the leaf certificate, lowercase hex.
    pub thumbprint: String,
}

impl ClientIdentity {
    /// Parses a PEM chain (leaf first) and its PEM private key, and checks they belong
    /// together; an error names the field at fault.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<ClientIdentity, (&'static str, String)> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    (
                        "certificate-pem",
                        format!("not a PEM certificate chain: {e}"),
                    )
                })?;
        let Some(leaf) = chain.first() else {
            return Err(("certificate-pem", "holds no certificate".to_owned()));
        };
        // The key's own parse error could quote it: say what is wrong, not what was read.
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| ("key-pem", "not a PEM private key".to_owned()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| ("key-pem", format!("unsupported private key: {e}")))?;
        rustls::sign::CertifiedKey::new(chain.clone(), signer)
            .keys_match()
            .map_err(|e| {
                (
                    "key-pem",
                    format!("does not belong to the certificate: {e}"),
                )
            })?;
        Ok(ClientIdentity {
            thumbprint: hex::encode(Sha256::digest(leaf.as_ref())),
            chain,
            key: Arc::new(key),
        })
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

/// The chain identifies the identity (a key that did not match it was refused).
impl PartialEq for ClientIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain
    }
}

impl Eq for ClientIdentity {}

impl Hash for ClientIdentity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.chain.hash(state);
    }
}

impl TlsSettings {
    pub fn default_with_timeout(connect_timeout: Duration) -> Self {
        Self {
            verify: true,
            ca_pem: None,
            server_name: None,
            connect_timeout,
            client_identity: None,
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
        let builder = if !self.verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { algorithms }))
        } else if let Some(name) = server_name.clone() {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ("tls", e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(VerifyAs { inner, name }))
        } else {
            builder.with_root_certificates(roots)
        };
        let config = match &self.client_identity {
            None => builder.with_no_client_auth(),
            Some(identity) => builder
                .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
                .map_err(|e| ("key-pem", e.to_string()))?,
        };
        Ok(TlsProfile {
            id: self.id(),
            connect_timeout: self.connect_timeout,
            config: Arc::new(config),
            settings: self.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_integration::pki::TestPki;

    #[test]
    fn a_client_identity_makes_another_profile_and_never_shows_its_key() {
        let pki = TestPki::new();
        let read = |f: &str| String::from_utf8(pki.read(f)).unwrap();
        let (cert, key) = (read("client.pem"), read("client.key"));
        let identity = ClientIdentity::from_pem(&cert, &key).unwrap();
        let base = TlsSettings::default_with_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let with = base.with_identity(&identity).unwrap();
        assert_ne!(with.id, base.id, "another pool");
        assert_eq!(with.id, base.with_identity(&identity).unwrap().id, "stable");

        let shown = format!("{with:?} {identity:?} {:?}", with.settings);
        assert!(shown.contains(&identity.thumbprint), "{shown}");
        let key_line = key.lines().nth(1).unwrap();
        assert!(!shown.contains(key_line), "{shown}");

        // Another certificate's key does not go with this one; the error does not quote it.
        let (field, e) = ClientIdentity::from_pem(&cert, &read("server.key")).unwrap_err();
        assert_eq!(field, "key-pem");
        assert!(e.contains("does not belong"), "{e}");
        assert!(
            !e.contains(read("server.key").lines().nth(1).unwrap()),
            "{e}"
        );
    }
}
