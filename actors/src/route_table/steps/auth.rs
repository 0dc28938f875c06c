//! `validate-jwt`, `check-header`, `ip-filter`: who may call.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use awc::http::header::HeaderName;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use outpost_model::policy::{
    CheckHeader, IpFilter, IpFilterAction, RequiredClaim, SigningKey, ValidateJwt,
};
use outpost_model::validate::parse_cidr;
use serde_json::{Map, Value};

use super::Step;
use super::cx::{StepCx, header_name};
use crate::jwks::{KeySource, Location, SourceId};

/// `validate-jwt` with its keys decoded and one validation per key family.
#[derive(Debug)]
pub struct ValidateJwtStep {
    pub header_name: HeaderName,
    pub query_parameter_name: Option<String>,
    pub failed_status: u16,
    pub failed_message: String,
    pub keys: Vec<JwtKey>,
    /// Fetched keys (`jwks-url`, `openid-config-url`), read from each source's snapshot.
    pub sources: Vec<Arc<KeySource>>,
    /// The issuer/audience/expiry rules for each algorithm family, for fetched keys.
    pub family_validations: Vec<Validation>,
    pub required_claims: Vec<RequiredClaim>,
    /// P-521 keys from `ec-pem` signing keys, for ES512 tokens (see [`crate::es512`]).
    pub es512_keys: Vec<crate::es512::Es512Key>,
    /// The claim rules for ES512 tokens, whose signature is checked before
    /// (`insecure_disable_signature_validation`: `jsonwebtoken` only reads the claims).
    pub es512_validation: Validation,
}

pub struct JwtKey {
    pub key: DecodingKey,
    /// Issuer, audience, expiry and clock skew rules, with the algorithms this key verifies.
    pub validation: Validation,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtKey {
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.validation.algorithms.contains(&alg)
    }
}

/// Why a token was refused (for logs; the client gets the policy's configured message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtRejection {
    Malformed(String),
    NoKeyForAlgorithm,
    /// The key sources have no key for the token's `kid` and algorithm (yet): worth a refresh.
    UnknownKey,
    Invalid(String),
    MissingClaim(String),
}

impl std::fmt::Display for JwtRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtRejection::Malformed(e) => write!(f, "malformed token: {e}"),
            JwtRejection::NoKeyForAlgorithm => {
                f.write_str("no signing key for the token's algorithm")
            }
            JwtRejection::UnknownKey => {
                f.write_str("no fetched signing key matches the token's kid and algorithm")
            }
            JwtRejection::Invalid(e) => write!(f, "invalid token: {e}"),
            JwtRejection::MissingClaim(c) => {
                write!(f, "required claim '{c}' missing or not accepted")
            }
        }
    }
}

impl ValidateJwtStep {
    /// Checks signature, issuer, audience, expiry, not-before (with the clock skew) and the
    /// required claims; returns the claims. Static keys are tried by algorithm; fetched keys by
    /// algorithm and `kid` (a token without `kid` is tried against each key of its algorithm).
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, JwtRejection> {
        if let Some(kid) = crate::es512::es512_kid(token) {
            return self.verify_es512(token, kid.as_deref());
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| JwtRejection::Malformed(e.to_string()))?;
        let mut last = None;
        for key in self.keys.iter().filter(|k| k.accepts(header.alg)) {
            match self.decode(token, &key.key, &key.validation) {
                Ok(claims) => return self.check_claims(claims),
                Err(e) => last = Some(e),
            }
        }
        if !self.sources.is_empty()
            && let Some(validation) = self.family_validation(header.alg)
        {
            for source in &self.sources {
                let keys = source.keys();
                for key in keys
                    .keys
                    .iter()
                    .filter(|k| k.matches(header.alg, header.kid.as_deref()))
                {
                    match self.decode(token, &key.key, validation) {
                        Ok(claims) => return self.check_claims(claims),
                        Err(e) => last = Some(e),
                    }
                }
            }
            if last.is_none() {
                return Err(JwtRejection::UnknownKey);
            }
        }
        Err(last.unwrap_or(JwtRejection::NoKeyForAlgorithm))
    }

    /// [`Self::verify`] for an ES512 token: static keys first, then fetched P-521 keys by `kid`.
    fn verify_es512(
        &self,
        token: &str,
        kid: Option<&str>,
    ) -> Result<Map<String, Value>, JwtRejection> {
        let signed = |key: &p521::ecdsa::VerifyingKey| {
            crate::es512::signed_by(token, key).map_err(JwtRejection::Malformed)
        };
        let mut tried = false;
        let mut ok = false;
        for key in &self.es512_keys {
            tried = true;
            if signed(&key.key)? {
                ok = true;
                break;
            }
        }
        if !ok && !self.sources.is_empty() {
            let mut fetched_tried = false;
            'sources: for source in &self.sources {
                let keys = source.keys();
                for key in keys.es512.iter().filter(|k| match (kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }) {
                    fetched_tried = true;
                    if signed(&key.key)? {
                        ok = true;
                        break 'sources;
                    }
                }
            }
            if !fetched_tried && !tried {
                return Err(JwtRejection::UnknownKey);
            }
            tried |= fetched_tried;
        }
        if !ok {
            return Err(if tried {
                JwtRejection::Invalid("InvalidSignature".into())
            } else {
                JwtRejection::NoKeyForAlgorithm
            });
        }
        let claims_token = crate::es512::claims_token(token)
            .ok_or_else(|| JwtRejection::Malformed("not three dot-separated parts".into()))?;
        let claims = self.decode(
            &claims_token,
            &DecodingKey::from_secret(&[]),
            &self.es512_validation,
        )?;
        self.check_claims(claims)
    }

    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        validation: &Validation,
    ) -> Result<Map<String, Value>, JwtRejection> {
        jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map(|d| d.claims)
            .map_err(|e| JwtRejection::Invalid(e.to_string()))
    }

    fn family_validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.family_validations
            .iter()
            .find(|v| v.algorithms.contains(&alg))
    }

    fn check_claims(&self, claims: Map<String, Value>) -> Result<Map<String, Value>, JwtRejection> {
        for required in &self.required_claims {
            let ok = match claims.get(&required.name) {
                None | Some(Value::Null) => false,
                Some(_) if required.values.is_empty() => true,
                Some(v) => claim_values(v)
                    .iter()
                    .any(|c| required.values.iter().any(|r| r == c)),
            };
            if !ok {
                return Err(JwtRejection::MissingClaim(required.name.clone()));
            }
        }
        Ok(claims)
    }
}

/// A claim as strings: strings (and each word of a space-separated scope list), numbers and
/// booleans as written, arrays flattened.
fn claim_values(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s
            .split(' ')
            .map(str::to_owned)
            .chain(std::iter::once(s.clone()))
            .collect(),
        Value::Array(items) => items.iter().flat_map(claim_values).collect(),
        Value::Null => Vec::new(),
        other => vec![other.to_string()],
    }
}

#[derive(Debug)]
pub struct CheckHeaderStep {
    pub name: HeaderName,
    pub failed_status: u16,
    pub failed_message: String,
    pub ignore_case: bool,
    pub values: Vec<String>,
}

#[derive(Debug)]
pub struct IpFilterStep {
    pub action: IpFilterAction,
    pub ranges: Vec<Cidr>,
}

impl IpFilterStep {
    /// Whether a client at `ip` may pass.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let listed = self.ranges.iter().any(|r| r.contains(ip));
        match self.action {
            IpFilterAction::Allow => listed,
            IpFilterAction::Forbid => !listed,
        }
    }
}

/// An address block; IPv4-mapped IPv6 clients (`::ffff:10.0.0.1`) match IPv4 blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (network, prefix) = parse_cidr(s)?;
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const ED: &[Algorithm] = &[Algorithm::EdDSA];

pub(super) fn validate_jwt(p: &ValidateJwt, cx: &mut StepCx<'_>) -> Option<Step> {
    let header_name = header_name(cx, "header-name", &p.header_name);
    if !(100..=599).contains(&p.failed_validation_httpcode) {
        cx.problem("failed-validation-httpcode", "not an HTTP status");
    }
    let issuers: Vec<String> = p
        .issuers
        .iter()
        .enumerate()
        .filter_map(|(i, s)| cx.plain(&format!("issuers[{i}]"), s))
        .collect();
    let audiences: Vec<String> = p
        .audiences
        .iter()
        .enumerate()
        .filter_map(|(i, s)| cx.plain(&format!("audiences[{i}]"), s))
        .collect();

    let mut base = Validation::new(Algorithm::HS256);
    base.leeway = p.clock_skew;
    base.validate_exp = true;
    base.validate_nbf = true;
    let mut required: Vec<&str> = Vec::new();
    if p.require_expiration_time {
        required.push("exp");
    }
    if !issuers.is_empty() {
        base.set_issuer(&issuers);
        required.push("iss");
    }
    if audiences.is_empty() {
        base.validate_aud = false;
    } else {
        base.set_audience(&audiences);
        required.push("aud");
    }
    base.set_required_spec_claims(&required);

    let mut sources = Vec::new();
    for (field, url, location) in [
        (
            "jwks-url",
            &p.jwks_url,
            Location::Jwks as fn(String) -> Location,
        ),
        (
            "openid-config-url",
            &p.openid_config_url,
            Location::OpenIdConfig,
        ),
    ] {
        let Some(url) = url else { continue };
        let Some(url) = cx.plain(field, url) else {
            continue;
        };
        let url = url.trim().to_owned();
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.parse::<awc::http::Uri>().is_err()
        {
            cx.problem(field, "expected an http:// or https:// URL");
            continue;
        }
        if !(10..=86_400).contains(&p.jwks_refresh_interval) {
            continue; // reported by the model's checks
        }
        sources.push(cx.jwks.source(SourceId {
            location: location(url),
            interval: Duration::from_secs(p.jwks_refresh_interval),
        }));
    }
    if p.signing_keys.is_empty() && p.jwks_url.is_none() && p.openid_config_url.is_none() {
        cx.problem(
            "signing-keys",
            "at least one key source is needed: signing-keys, jwks-url or openid-config-url",
        );
    }
    let mut keys = Vec::new();
    let mut es512_keys = Vec::new();
    for (i, k) in p.signing_keys.iter().enumerate() {
        let field = format!("signing-keys[{i}]");
        let (text, decoded, algorithms) = match k {
            SigningKey::HmacBase64(s) => {
                let Some(s) = cx.plain(&field, s) else {
                    continue;
                };
                (s.clone(), DecodingKey::from_base64_secret(s.trim()), HMAC)
            }
            SigningKey::RsaPem(s) => {
                let Some(s) = cx.plain(&field, s) else {
                    continue;
                };
                (s.clone(), DecodingKey::from_rsa_pem(s.as_bytes()), RSA)
            }
            SigningKey::EcPem(s) => {
                let Some(s) = cx.plain(&field, s) else {
                    continue;
                };
                if let Some(key) = crate::es512::from_pem(&s) {
                    es512_keys.push(crate::es512::Es512Key { kid: None, key });
                    continue;
                }
                (s.clone(), DecodingKey::from_ec_pem(s.as_bytes()), EC)
            }
            SigningKey::EdPem(s) => {
                let Some(s) = cx.plain(&field, s) else {
                    continue;
                };
                (s.clone(), DecodingKey::from_ed_pem(s.as_bytes()), ED)
            }
        };
        match decoded {
            Ok(key) if !text.trim().is_empty() => {
                let mut validation = base.clone();
                validation.algorithms = algorithms.to_vec();
                keys.push(JwtKey { key, validation });
            }
            Ok(_) => cx.problem(&field, "the key is empty"),
            Err(e) => cx.problem(&field, format!("not a usable key: {e}")),
        }
    }
    if keys.len() + es512_keys.len() != p.signing_keys.len() {
        return None;
    }
    let mut es512_validation = base.clone();
    es512_validation.algorithms = vec![Algorithm::HS256];
    es512_validation.insecure_disable_signature_validation();
    let family_validations = [HMAC, RSA, EC, ED]
        .into_iter()
        .map(|algorithms| {
            let mut v = base.clone();
            v.algorithms = algorithms.to_vec();
            v
        })
        .collect();
    let required_claims = p
        .required_claims
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let values = c
                .values
                .iter()
                .enumerate()
                .filter_map(|(j, v)| cx.plain(&format!("required-claims[{i}].values[{j}]"), v))
                .collect();
            RequiredClaim {
                name: c.name.clone(),
                values,
            }
        })
        .collect();
    Some(Step::ValidateJwt(Arc::new(ValidateJwtStep {
        header_name: header_name?,
        query_parameter_name: p.query_parameter_name.clone(),
        failed_status: p.failed_validation_httpcode,
        failed_message: p.failed_validation_error_message.clone(),
        keys,
        sources,
        family_validations,
        required_claims,
        es512_keys,
        es512_validation,
    })))
}

pub(super) fn check_header(p: &CheckHeader, cx: &mut StepCx<'_>) -> Option<Step> {
    let name = header_name(cx, "name", &p.name);
    if !(100..=599).contains(&p.failed_check_httpcode) {
        cx.problem("failed-check-httpcode", "not an HTTP status");
        return None;
    }
    let values = p
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| cx.plain(&format!("values[{i}]"), v))
        .collect::<Option<Vec<String>>>()?;
    Some(Step::CheckHeader(Arc::new(CheckHeaderStep {
        name: name?,
        failed_status: p.failed_check_httpcode,
        failed_message: p.failed_check_error_message.clone(),
        ignore_case: p.ignore_case,
        values,
    })))
}

pub(super) fn ip_filter(p: &IpFilter, cx: &mut StepCx<'_>) -> Option<Step> {
    if p.addresses.is_empty() {
        cx.problem("addresses", "at least one address or CIDR block");
        return None;
    }
    let mut ranges = Vec::with_capacity(p.addresses.len());
    for (i, a) in p.addresses.iter().enumerate() {
        match Cidr::parse(a) {
            Ok(c) => ranges.push(c),
            Err(e) => cx.problem(&format!("addresses[{i}]"), e),
        }
    }
    if ranges.len() != p.addresses.len() {
        return None;
    }
    Some(Step::IpFilter(Arc::new(IpFilterStep {
        action: p.action,
        ranges,
    })))
}
