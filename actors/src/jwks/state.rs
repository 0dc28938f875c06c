//! The pure part of a key source: reading JWKS and discovery documents, and when to fetch.
//! No I/O and no clock of its own (callers pass `now`), so it is tested without a runtime.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// An on-demand refresh (unknown `kid`) happens at most this often per source, so a client
/// sending made-up key ids cannot make the gateway hammer the identity provider. Regular
/// fetches do not count: a key rotated in right after one is still fetched on first use.
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(10);

/// After a failed fetch, the next try comes this soon (or at the regular interval if shorter).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// How long a request with an unknown `kid` waits for the refresh it triggered (or one already
/// in flight) before it is refused: long enough for a provider on the same network, short
/// enough that a slow provider does not pile requests up.
pub const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(2);

/// Bound of one HTTP call to the provider.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest document accepted from a provider.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// One verification key from a JWKS.
pub struct FetchedKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// The algorithms it verifies: its `alg` if it names one, else its key type's family.
    pub algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for FetchedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl FetchedKey {
    /// Whether this key may verify a token with this header.
    pub fn matches(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.algorithms.contains(&alg)
            && match (kid, &self.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            }
    }
}

/// The keys of one source as last fetched; replaced whole on each successful fetch.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<FetchedKey>,
    /// P-521 keys (`crv: P-521`), for ES512 tokens, which `jsonwebtoken` cannot verify.
    pub es512: Vec<crate::es512::Es512Key>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocumentError {
    #[error("not a JSON document: {0}")]
    Json(String),
    #[error("no 'keys' array")]
    NoKeys,
    #[error("no usable key among {0}")]
    NoUsableKey(usize),
    #[error("no 'jwks_uri' string")]
    NoJwksUri,
}

const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Reads a JWKS. Keys this gateway cannot use are skipped, each with a reason: encryption keys,
/// symmetric keys (a published HMAC secret would let anyone sign), unsupported curves or
/// algorithms. P-521 keys are read by [`crate::es512`]. A set without one usable key is an
/// error, so it never replaces good keys.
pub fn parse_jwks(body: &[u8]) -> Result<(KeySet, Vec<String>), DocumentError> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| DocumentError::Json(e.to_string()))?;
    let items = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or(DocumentError::NoKeys)?;
    let mut keys = Vec::new();
    let mut es512 = Vec::new();
    let mut skipped = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let kid = item.get("kid").and_then(|k| k.as_str()).unwrap_or("");
        match crate::es512::from_jwk(item) {
            Ok(Some(k)) => {
                es512.push(k);
                continue;
            }
            Ok(None) => {}
            Err(why) => {
                skipped.push(format!("key {i} (kid '{kid}'): {why}"));
                continue;
            }
        }
        // One by one: a key with an algorithm the JWK model does not know fails alone.
        match serde_json::from_value::<Jwk>(item.clone()) {
            Ok(jwk) => match usable(&jwk) {
                Ok(k) => keys.push(k),
                Err(why) => skipped.push(format!("key {i} (kid '{kid}'): {why}")),
            },
            Err(e) => skipped.push(format!("key {i} (kid '{kid}'): {e}")),
        }
    }
    if keys.is_empty() && es512.is_empty() {
        return Err(DocumentError::NoUsableKey(items.len()));
    }
    Ok((KeySet { keys, es512 }, skipped))
}

fn usable(jwk: &Jwk) -> Result<FetchedKey, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key".into());
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            ref c => return Err(format!("curve {c:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            ref c => return Err(format!("curve {c:?} is not supported")),
        },
        AlgorithmParameters::OctetKey(_) => return Err("a symmetric key".into()),
    };
    let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
        None => family.to_vec(),
        Some(a) => {
            let alg = signing_algorithm(a).ok_or_else(|| format!("alg {a} is not for signing"))?;
            if !family.contains(&alg) {
                return Err(format!("alg {a} does not fit the key type"));
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(FetchedKey {
        kid: jwk.common.key_id.clone(),
        key,
        algorithms,
    })
}

fn signing_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256 => return None,
    })
}

/// The `jwks_uri` of an OpenID Connect discovery document.
pub fn jwks_uri(body: &[u8]) -> Result<String, DocumentError> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| DocumentError::Json(e.to_string()))?;
    doc.get("jwks_uri")
        .and_then(|u| u.as_str())
        .map(str::to_owned)
        .ok_or(DocumentError::NoJwksUri)
}

/// When a source fetches: every `interval` after a success, sooner after a failure, and on
/// demand no more often than [`MIN_REFRESH_GAP`].
#[derive(Debug, Clone)]
pub struct Schedule {
    pub interval: Duration,
    pub last_attempt: Option<Instant>,
    pub last_ok: bool,
    pub last_on_demand: Option<Instant>,
}

impl Schedule {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_attempt: None,
            last_ok: false,
            last_on_demand: None,
        }
    }

    /// When the next regular fetch is due (`None`: now).
    pub fn next_due(&self) -> Option<Instant> {
        let last = self.last_attempt?;
        let wait = if self.last_ok {
            self.interval
        } else {
            self.interval.min(RETRY_AFTER_FAILURE)
        };
        Some(last + wait)
    }

    /// Whether an on-demand refresh may run at `now`.
    pub fn may_refresh(&self, now: Instant) -> bool {
        self.last_on_demand
            .is_none_or(|last| now.saturating_duration_since(last) >= MIN_REFRESH_GAP)
    }

    pub fn attempted(&mut self, at: Instant, ok: bool) {
        self.last_attempt = Some(at);
        self.last_ok = ok;
    }
}
