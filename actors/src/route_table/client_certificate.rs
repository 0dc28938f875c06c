//! The client certificate of a TLS connection (mutual TLS), as requests and policies see it.
//!
//! Parsed once per connection, right after the handshake, from the leaf certificate rustls
//! verified; requests on that connection share the parsed value. What templates show
//! (`{request.client-certificate.subject}` …) and what `validate-client-certificate` compares
//! is exactly these strings, so an operator can copy one from a header into a policy.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A client certificate, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// `CN=orders, O=Acme` (the certificate's attribute order).
    pub subject: String,
    /// The subject's first common name, if it has one.
    pub common_name: Option<String>,
    /// The issuer's subject, written as `subject`.
    pub issuer: String,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub thumbprint: String,
    /// Lowercase hex without leading zeros ([`normalize_hex`]).
    pub serial_number: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// RFC 3339, for templates.
    pub not_before_text: String,
    pub not_after_text: String,
    /// The issuer name as encoded (DER), to match a revocation list's issuer exactly.
    pub issuer_der: Vec<u8>,
    /// Whether the certificate chains to the hostname's client CAs. False only on an `optional`
    /// hostname without CAs, which takes any certificate whose key the client proves it holds.
    pub trusted: bool,
}

impl ClientCertificate {
    /// Parses a DER certificate (the leaf of the chain the client sent).
    pub fn parse(der: &[u8], trusted: bool) -> Result<ClientCertificate, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("not a parsable X.509 certificate: {e}"))?;
        let time = |t: i64| {
            DateTime::<Utc>::from_timestamp(t, 0)
                .ok_or_else(|| "validity date out of range".to_owned())
        };
        let not_before = time(cert.validity().not_before.timestamp())?;
        let not_after = time(cert.validity().not_after.timestamp())?;
        let rfc3339 = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        Ok(ClientCertificate {
            subject: cert.subject().to_string(),
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            issuer: cert.issuer().to_string(),
            thumbprint: hex::encode(Sha256::digest(der)),
            serial_number: normalize_hex(&hex::encode(cert.raw_serial())),
            not_before,
            not_after,
            not_before_text: rfc3339(not_before),
            not_after_text: rfc3339(not_after),
            issuer_der: cert.issuer().as_raw().to_vec(),
            trusted,
        })
    }
}

/// A thumbprint or serial number as configured or shown, compared as one: lowercase, without
/// `:`, spaces or leading zeros (`0A:1B` and `a1b` are the same serial number).
pub fn normalize_hex(s: &str) -> String {
    let digits: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() && !digits.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// A serial number as configured, normalised ([`normalize_hex`]); an error says why it is not one.
pub fn serial_number(s: &str) -> Result<String, String> {
    let n = normalize_hex(s);
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("'{s}' is not a hex serial number"));
    }
    Ok(n)
}

/// A SHA-256 thumbprint as configured: 64 hex digits (case and `:` separators ignored). A SHA-1
/// thumbprint (40 digits, what some tools show by default) is refused rather than never matched.
pub fn thumbprint(s: &str) -> Result<String, String> {
    let digits: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "'{s}' is not a SHA-256 thumbprint (64 hex digits; SHA-1 thumbprints are not used)"
        ));
    }
    Ok(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_compared_without_case_separators_or_leading_zeros() {
        assert_eq!(normalize_hex("00:0A:1B"), "a1b");
        assert_eq!(normalize_hex("0a1b"), "a1b");
        assert_eq!(normalize_hex("00"), "0");
        assert_eq!(serial_number("00:AB:cd").unwrap(), "abcd");
        assert!(serial_number("xyz").is_err());
        assert!(serial_number("").is_err());
        let sha256 = "AB".repeat(32);
        assert_eq!(thumbprint(&sha256).unwrap(), "ab".repeat(32));
        assert!(
            thumbprint(&"ab".repeat(20))
                .unwrap_err()
                .contains("SHA-256")
        );
    }
}
