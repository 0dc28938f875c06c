//! `validate-client-certificate`, `authentication-certificate`: certificates, the client's
//! towards the gateway and the gateway's towards the backend.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use outpost_model::policy::{AuthenticationCertificate, ValidateClientCertificate};
use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::prelude::{CertificateRevocationList, FromDer};

use super::Step;
use super::cx::StepCx;
use crate::route_table::client_certificate::{
    ClientCertificate, normalize_hex, serial_number, thumbprint,
};
use crate::route_table::tls::{ClientIdentity, TlsProfile};

/// `validate-client-certificate`, with its lists decoded and normalised.
#[derive(Debug)]
pub struct ValidateClientCertificateStep {
    pub validate_revocation: bool,
    pub validate_trust: bool,
    pub validate_not_before: bool,
    pub validate_not_after: bool,
    pub ignore_error: bool,
    /// Normalised SHA-256 thumbprints.
    revoked_thumbprints: HashSet<String>,
    /// Normalised serials from the revocation lists, by issuer name (DER).
    revoked_serials: HashMap<Vec<u8>, HashSet<String>>,
    identities: Vec<IdentityRule>,
}

/// One accepted identity; `None` fields match anything. Hex fields are normalised.
#[derive(Debug, Default)]
struct IdentityRule {
    thumbprint: Option<String>,
    serial_number: Option<String>,
    subject: Option<String>,
    common_name: Option<String>,
    issuer: Option<String>,
}

impl IdentityRule {
    fn matches(&self, c: &ClientCertificate) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.thumbprint, &c.thumbprint)
            && eq(&self.serial_number, &c.serial_number)
            && eq(&self.subject, &c.subject)
            && eq(&self.issuer, &c.issuer)
            && self
                .common_name
                .as_deref()
                .is_none_or(|w| c.common_name.as_deref() == Some(w))
    }
}

/// Why a client certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateRejection {
    /// The connection carries no client certificate.
    Missing,
    /// It does not chain to the hostname's client CAs.
    Untrusted,
    NotYetValid(DateTime<Utc>),
    Expired(DateTime<Utc>),
    Revoked,
    /// It matches none of the policy's identities.
    UnknownIdentity,
}

impl fmt::Display for CertificateRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let date = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match self {
            Self::Missing => f.write_str("no client certificate was presented"),
            Self::Untrusted => f.write_str("the client certificate is not issued by a trusted CA"),
            Self::NotYetValid(t) => {
                write!(f, "the client certificate is not valid before {}", date(t))
            }
            Self::Expired(t) => write!(f, "the client certificate expired on {}", date(t)),
            Self::Revoked => f.write_str("the client certificate is revoked"),
            Self::UnknownIdentity => {
                f.write_str("the client certificate is not one of the accepted identities")
            }
        }
    }
}

impl ValidateClientCertificateStep {
    /// Checks the connection's certificate at `now`, in the order a client would fix them.
    pub fn check(
        &self,
        cert: Option<&ClientCertificate>,
        now: DateTime<Utc>,
    ) -> Result<(), CertificateRejection> {
        let cert = cert.ok_or(CertificateRejection::Missing)?;
        if self.validate_trust && !cert.trusted {
            return Err(CertificateRejection::Untrusted);
        }
        if self.validate_not_before && now < cert.not_before {
            return Err(CertificateRejection::NotYetValid(cert.not_before));
        }
        if self.validate_not_after && now > cert.not_after {
            return Err(CertificateRejection::Expired(cert.not_after));
        }
        if self.validate_revocation
            && (self.revoked_thumbprints.contains(&cert.thumbprint)
                || self
                    .revoked_serials
                    .get(&cert.issuer_der)
                    .is_some_and(|serials| serials.contains(&cert.serial_number)))
        {
            return Err(CertificateRejection::Revoked);
        }
        if !self.identities.is_empty() && !self.identities.iter().any(|i| i.matches(cert)) {
            return Err(CertificateRejection::UnknownIdentity);
        }
        Ok(())
    }
}

pub(super) fn validate_client_certificate(
    p: &ValidateClientCertificate,
    cx: &mut StepCx<'_>,
) -> Option<Step> {
    let mut ok = true;
    let mut revoked_thumbprints = HashSet::new();
    for (i, entry) in p.revoked_thumbprints.iter().enumerate() {
        let field = format!("revoked-thumbprints[{i}]");
        let Some(text) = cx.plain(&field, entry) else {
            ok = false;
            continue;
        };
        // A named value may hold a whole list, one per line or comma separated.
        for t in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
        {
            match thumbprint(t) {
                Ok(t) => {
                    revoked_thumbprints.insert(t);
                }
                Err(e) => {
                    cx.problem(&field, e);
                    ok = false;
                }
            }
        }
    }
    let mut revoked_serials = HashMap::new();
    if let Some(pem) = &p.revocation_crl_pem {
        match cx
            .plain("revocation-crl-pem", pem)
            .map(|pem| revoked_from_crls(&pem))
        {
            Some(Ok(serials)) => revoked_serials = serials,
            Some(Err(e)) => {
                cx.problem("revocation-crl-pem", e);
                ok = false;
            }
            None => ok = false,
        }
    }
    let mut identities = Vec::with_capacity(p.identities.len());
    for (i, id) in p.identities.iter().enumerate() {
        let at = format!("identities[{i}]");
        let mut text = |name: &str, v: &Option<String>| {
            v.as_ref()
                .map(|v| cx.plain(&format!("{at}.{name}"), v).ok_or(()))
                .transpose()
        };
        let (Ok(t), Ok(sn), Ok(subject), Ok(common_name), Ok(issuer)) = (
            text("thumbprint", &id.thumbprint),
            text("serial-number", &id.serial_number),
            text("subject", &id.subject),
            text("common-name", &id.common_name),
            text("issuer", &id.issuer),
        ) else {
            ok = false;
            continue;
        };
        if [&t, &sn, &subject, &common_name, &issuer]
            .iter()
            .all(|f| f.is_none())
        {
            cx.problem(
                &at,
                "an identity needs at least one of thumbprint, serial-number, subject, \
                 common-name, issuer",
            );
            ok = false;
            continue;
        }
        let t = match t.as_deref().map(thumbprint).transpose() {
            Ok(t) => t,
            Err(e) => {
                cx.problem(&format!("{at}.thumbprint"), e);
                ok = false;
                continue;
            }
        };
        let sn = match sn.as_deref().map(serial_number).transpose() {
            Ok(s) => s,
            Err(e) => {
                cx.problem(&format!("{at}.serial-number"), e);
                ok = false;
                continue;
            }
        };
        identities.push(IdentityRule {
            thumbprint: t,
            serial_number: sn,
            subject,
            common_name,
            issuer,
        });
    }
    if !ok {
        return None;
    }
    Some(Step::ValidateClientCertificate(Arc::new(
        ValidateClientCertificateStep {
            validate_revocation: p.validate_revocation,
            validate_trust: p.validate_trust,
            validate_not_before: p.validate_not_before,
            validate_not_after: p.validate_not_after,
            ignore_error: p.ignore_error,
            revoked_thumbprints,
            revoked_serials,
            identities,
        },
    )))
}

/// (issuer, serial) of every certificate the PEM revocation lists name. Their signatures are not
/// checked: they come with the signed configuration, from the operator, like the CAs do.
fn revoked_from_crls(pem: &str) -> Result<HashMap<Vec<u8>, HashSet<String>>, String> {
    let mut out: HashMap<Vec<u8>, HashSet<String>> = HashMap::new();
    let mut lists = 0;
    for der in CertificateRevocationListDer::pem_slice_iter(pem.as_bytes()) {
        let der = der.map_err(|e| format!("not valid PEM: {e}"))?;
        let (_, crl) = CertificateRevocationList::from_der(der.as_ref())
            .map_err(|e| format!("not a certificate revocation list: {e}"))?;
        let serials = out.entry(crl.issuer().as_raw().to_vec()).or_default();
        for revoked in crl.iter_revoked_certificates() {
            serials.insert(normalize_hex(&hex::encode(revoked.raw_serial())));
        }
        lists += 1;
    }
    if lists == 0 {
        return Err("no X509 CRL found in the PEM".to_owned());
    }
    Ok(out)
}

/// `authentication-certificate`: the backend TLS profiles of the snapshot, each with the
/// certificate, by the id of the profile without it.
#[derive(Debug)]
pub struct AuthenticationCertificateStep {
    /// SHA-256 of the certificate presented, for logs.
    pub thumbprint: String,
    profiles: HashMap<u64, Arc<TlsProfile>>,
}

impl AuthenticationCertificateStep {
    /// The profile to call a backend with, given the profile its target uses.
    pub fn profile_for(&self, base: &TlsProfile) -> Option<&Arc<TlsProfile>> {
        self.profiles.get(&base.id)
    }
}

pub(super) fn authentication_certificate(
    p: &AuthenticationCertificate,
    cx: &mut StepCx<'_>,
) -> Option<Step> {
    let cert = cx.plain("certificate-pem", &p.certificate_pem);
    let key = cx.plain("key-pem", &p.key_pem);
    let identity = match ClientIdentity::from_pem(&cert?, &key?) {
        Ok(i) => i,
        Err((field, e)) => {
            cx.problem(field, e);
            return None;
        }
    };
    // Every target a request can have uses one of the backends' profiles (a `base-url` keeps
    // the TLS settings of the backend it replaces), so these are all the profiles needed.
    let mut profiles = HashMap::new();
    for backend in cx.backends.values() {
        let base = &backend.tls;
        if profiles.contains_key(&base.id) {
            continue;
        }
        match base.with_identity(&identity) {
            Ok(profile) => {
                profiles.insert(base.id, Arc::new(profile));
            }
            Err(e) => {
                cx.problem("", format!("with backend '{}': {e}", backend.name));
                return None;
            }
        }
    }
    Some(Step::AuthenticationCertificate(Arc::new(
        AuthenticationCertificateStep {
            thumbprint: identity.thumbprint.clone(),
            profiles,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> ClientCertificate {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        ClientCertificate {
            subject: "CN=orders, O=Acme".into(),
            common_name: Some("orders".into()),
            issuer: "CN=Acme CA".into(),
            thumbprint: "ab".repeat(32),
            serial_number: "1a2b".into(),
            not_before: at("2024-01-01T00:00:00Z"),
            not_after: at("2026-01-01T00:00:00Z"),
            not_before_text: String::new(),
            not_after_text: String::new(),
            issuer_der: vec![1, 2, 3],
            trusted: true,
        }
    }

    fn step() -> ValidateClientCertificateStep {
        ValidateClientCertificateStep {
            validate_revocation: true,
            validate_trust: true,
            validate_not_before: true,
            validate_not_after: true,
            ignore_error: false,
            revoked_thumbprints: HashSet::new(),
            revoked_serials: HashMap::new(),
            identities: Vec::new(),
        }
    }

    fn now() -> DateTime<Utc> {
        "2025-06-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn presence_trust_and_dates() {
        use CertificateRejection::*;
        let s = step();
        assert_eq!(s.check(None, now()), Err(Missing));
        assert_eq!(s.check(Some(&cert()), now()), Ok(()));
        let untrusted = ClientCertificate {
            trusted: false,
            ..cert()
        };
        assert_eq!(s.check(Some(&untrusted), now()), Err(Untrusted));
        let early = "2023-01-01T00:00:00Z".parse().unwrap();
        let late = "2027-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            s.check(Some(&cert()), early),
            Err(NotYetValid(cert().not_before))
        );
        assert_eq!(s.check(Some(&cert()), late), Err(Expired(cert().not_after)));
        let lax = ValidateClientCertificateStep {
            validate_trust: false,
            validate_not_before: false,
            validate_not_after: false,
            ..step()
        };
        for t in [early, late] {
            assert_eq!(lax.check(Some(&untrusted), t), Ok(()));
        }
    }

    #[test]
    fn revocation_by_thumbprint_and_by_issuer_and_serial() {
        let mut s = step();
        s.revoked_serials
            .insert(vec![9, 9], HashSet::from(["1a2b".to_owned()]));
        // The same serial from another issuer is another certificate.
        assert_eq!(s.check(Some(&cert()), now()), Ok(()));
        s.revoked_serials
            .insert(vec![1, 2, 3], HashSet::from(["1a2b".to_owned()]));
        assert_eq!(
            s.check(Some(&cert()), now()),
            Err(CertificateRejection::Revoked)
        );
        s.validate_revocation = false;
        assert_eq!(s.check(Some(&cert()), now()), Ok(()));

        let mut s = step();
        s.revoked_thumbprints.insert("ab".repeat(32));
        assert_eq!(
            s.check(Some(&cert()), now()),
            Err(CertificateRejection::Revoked)
        );
    }

    #[test]
    fn an_identity_matches_when_every_field_it_gives_does() {
        let rule = |f: &dyn Fn(&mut IdentityRule)| {
            let mut r = IdentityRule::default();
            f(&mut r);
            r
        };
        let c = cert();
        assert!(rule(&|r| r.issuer = Some("CN=Acme CA".into())).matches(&c));
        assert!(rule(&|r| r.subject = Some("CN=orders, O=Acme".into())).matches(&c));
        assert!(rule(&|r| r.common_name = Some("orders".into())).matches(&c));
        assert!(rule(&|r| r.serial_number = Some(serial_number("00:1A:2B").unwrap())).matches(&c));
        assert!(rule(&|r| r.thumbprint = Some(thumbprint(&"AB".repeat(32)).unwrap())).matches(&c));
        assert!(
            !rule(&|r| {
                r.common_name = Some("orders".into());
                r.issuer = Some("CN=Other CA".into());
            })
            .matches(&c)
        );
        let no_cn = ClientCertificate {
            common_name: None,
            ..cert()
        };
        assert!(!rule(&|r| r.common_name = Some("orders".into())).matches(&no_cn));

        let mut s = step();
        s.identities = vec![
            rule(&|r| r.common_name = Some("billing".into())),
            rule(&|r| r.issuer = Some("CN=Acme CA".into())),
        ];
        assert_eq!(s.check(Some(&c), now()), Ok(()));
        s.identities.pop();
        assert_eq!(
            s.check(Some(&c), now()),
            Err(CertificateRejection::UnknownIdentity)
        );
    }
}
