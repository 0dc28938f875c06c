//! The certificates a gateway serves on its HTTPS listener, compiled with the rest of the table.
//!
//! They come from the gateway resource's hostnames (`certificate-pem` / `key-pem`, usually
//! secret named values). Compiling them with the route table means a new certificate takes
//! effect exactly when the snapshot carrying it is published — the listener's certificate
//! resolver reads the current table on every handshake, so open connections finish on the old
//! certificate and new handshakes get the new one, without a restart. A certificate that does
//! not parse, or whose key does not match it, is a compile problem, so the control plane
//! refuses it at publish time instead of a gateway failing handshakes later.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use outpost_model::Problems;
use outpost_model::resources::Gateway;
use outpost_model::template::substitute_named_values;
use outpost_model::wire::CertificateExpiry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Certificates by hostname: exact names, then `*.example.com` wildcards (one label deep, as
/// in RFC 6125).
#[derive(Debug, Default)]
pub struct ServerCertificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (`.example.com`, certificate), longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    /// Each hostname's leaf `notAfter`, soonest first: for `/metrics`, heartbeats and warnings.
    expiries: Vec<CertificateExpiry>,
}

impl ServerCertificates {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// The certificate for a TLS client's server name; a client that sends none (or an IP
    /// address) gets the one of `default_host`, if that is set.
    pub fn resolve(
        &self,
        sni: Option<&str>,
        default_host: Option<&str>,
    ) -> Option<Arc<CertifiedKey>> {
        let name = sni.or(default_host)?.to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return Some(c.clone());
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard
            .iter()
            .find(|(suffix, _)| suffix[1..] == *parent)
            .map(|(_, c)| c.clone())
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
            (None, None) => continue,
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
        let (Some(cert), Some(key)) = (cert, key) else {
            continue;
        };
        match certified_key(&cert, &key) {
            Ok((ck, not_after)) => {
                let name = h.hostname.to_ascii_lowercase();
                out.expiries.push(CertificateExpiry {
                    hostname: name.clone(),
                    not_after,
                });
                let ck = Arc::new(ck);
                match name.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => {
                        out.wildcard.push((suffix.to_owned(), ck));
                    }
                    _ => {
                        out.exact.insert(name, ck);
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
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("key-pem is not a PEM private key: {e}"))?;
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
