//! Gateway tokens: how a self-hosted gateway proves who it is to the control plane.
//!
//! A token is `GatewayKey <gateway>&<expiry>&<signature>` where `expiry` is `yyyyMMddHHmm` in
//! UTC and `signature` is the standard base64 of HMAC-SHA512 over `"<gateway>\n<expiry>"`, keyed
//! with the UTF-8 bytes of one of the gateway's two keys (held by the store, see
//! [`Store::gateway_keys`](crate::control_plane::store::Store::gateway_keys)). The format follows the reference product's gateway tokens, so
//! operators can reason about them the same way.
//!
//! Verification tries both keys, so either can be rotated while tokens minted from the other keep
//! working; regenerating a key revokes every token minted from it, because nothing but the keys is
//! stored. Every failure has its own [`TokenError`] variant, logged by the control plane with
//! its detail. The 401 body says the same except for an unknown gateway and a signature that
//! matches neither key, which read alike ([`INVALID_TOKEN`]): telling them apart would let anyone
//! list the gateway names. "Expired" is said only once the signature verified.
//!
//! Admin routes (served by [`super::gateway_api::configure_admin`] under `/api/v1`):
//! `POST /gateways/{name}/token`, `GET /gateways/{name}/keys`,
//! `POST /gateways/{name}/keys/regenerate`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, NaiveDateTime, TimeZone, Timelike, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha512;

use super::error::ApiError;
use super::store::{GatewayKeys, KeyType};

/// The `Authorization` scheme of gateway tokens.
pub const SCHEME: &str = "GatewayKey";

const EXPIRY_FORMAT: &str = "%Y%m%d%H%M";
const SIGNATURE_LEN: usize = 64;

/// A token split into its parts; nothing is verified yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToken {
    pub gateway: String,
    pub expiry: DateTime<Utc>,
    /// The expiry exactly as written in the token (what the signature covers).
    expiry_text: String,
    signature: Vec<u8>,
}

/// A token whose signature matched one of the gateway's current keys and that has not expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub gateway: String,
    pub expiry: DateTime<Utc>,
    /// Which key signed it.
    pub key_type: KeyType,
}

/// Why a token was refused. The messages are meant for the operator of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing 'Authorization: GatewayKey <gateway>&<expiry>&<signature>' header")]
    Missing,
    #[error("malformed gateway token: {0}")]
    Malformed(String),
    #[error("gateway token for '{gateway}' expired at {expiry}; mint a new one")]
    Expired {
        gateway: String,
        expiry: DateTime<Utc>,
    },
    #[error(
        "gateway token signature does not match the primary or secondary key of gateway \
         '{gateway}': the token was forged, altered, minted for another gateway, or revoked by \
         regenerating the key it was minted from"
    )]
    BadSignature { gateway: String },
    #[error("unknown gateway '{gateway}'")]
    UnknownGateway { gateway: String },
    #[error("gateway token is for gateway '{token_gateway}', but the request is for '{expected}'")]
    WrongGateway {
        token_gateway: String,
        expected: String,
    },
}

/// The one answer for an unknown gateway and for a signature matching neither key.
pub const INVALID_TOKEN: &str = "invalid gateway token: the gateway is unknown, or the signature \
     matches neither of its keys (forged, altered, minted for another gateway, or revoked by \
     regenerating the key it was minted from); the control plane's log says which";

impl TokenError {
    /// What the caller is told: everything but whether the named gateway exists.
    pub fn public_message(&self) -> String {
        match self {
            TokenError::UnknownGateway { .. } | TokenError::BadSignature { .. } => {
                INVALID_TOKEN.to_owned()
            }
            other => other.to_string(),
        }
    }

    /// The gateway the refused token names, when it got that far.
    pub fn gateway(&self) -> Option<&str> {
        match self {
            TokenError::Missing | TokenError::Malformed(_) => None,
            TokenError::Expired { gateway, .. }
            | TokenError::BadSignature { gateway }
            | TokenError::UnknownGateway { gateway } => Some(gateway),
            TokenError::WrongGateway { token_gateway, .. } => Some(token_gateway),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        ApiError::Unauthorized(e.public_message())
    }
}

/// The token for `gateway` signed with `key`, valid until `expiry` (truncated to the minute, the
/// token's precision).
pub fn mint(gateway: &str, key: &str, expiry: DateTime<Utc>) -> String {
    let expiry_text = expiry.format(EXPIRY_FORMAT).to_string();
    let signature = sign(key, gateway, &expiry_text);
    format!(
        "{SCHEME} {gateway}&{expiry_text}&{}",
        BASE64.encode(signature)
    )
}

/// `expiry` truncated to the minute: what a minted token really carries.
pub fn truncate_to_minute(expiry: DateTime<Utc>) -> DateTime<Utc> {
    expiry
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(expiry)
}

/// Splits an `Authorization` header value (scheme included, case-insensitively) into its parts.
pub fn parse(header: &str) -> Result<ParsedToken, TokenError> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').ok_or_else(|| {
        TokenError::Malformed(format!(
            "expected '{SCHEME} <gateway>&<expiry>&<signature>'"
        ))
    })?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return Err(TokenError::Malformed(format!(
            "authorization scheme is '{scheme}', expected '{SCHEME}'"
        )));
    }
    let parts: Vec<&str> = rest.trim().split('&').collect();
    let [gateway, expiry_text, signature] = parts[..] else {
        return Err(TokenError::Malformed(format!(
            "expected 3 '&'-separated parts (<gateway>&<expiry>&<signature>), found {}",
            parts.len()
        )));
    };
    if gateway.is_empty() {
        return Err(TokenError::Malformed("the gateway name is empty".into()));
    }
    if expiry_text.len() != 12 || !expiry_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenError::Malformed(format!(
            "expiry '{expiry_text}' is not yyyyMMddHHmm (UTC)"
        )));
    }
    let expiry = NaiveDateTime::parse_from_str(expiry_text, EXPIRY_FORMAT)
        .map_err(|_| {
            TokenError::Malformed(format!("expiry '{expiry_text}' is not a valid UTC time"))
        })
        .map(|t| Utc.from_utc_datetime(&t))?;
    let signature = BASE64
        .decode(signature)
        .map_err(|e| TokenError::Malformed(format!("signature is not base64: {e}")))?;
    if signature.len() != SIGNATURE_LEN {
        return Err(TokenError::Malformed(format!(
            "signature is {} bytes, an HMAC-SHA512 is {SIGNATURE_LEN}",
            signature.len()
        )));
    }
    Ok(ParsedToken {
        gateway: gateway.to_owned(),
        expiry,
        expiry_text: expiry_text.to_owned(),
        signature,
    })
}

/// Checks the signature against both of the gateway's keys (in constant time), then the expiry.
/// The signature comes first so that a forged token never learns anything from the answer.
pub fn verify(
    parsed: &ParsedToken,
    keys: &GatewayKeys,
    now: DateTime<Utc>,
) -> Result<VerifiedToken, TokenError> {
    // Both keys are always tried, so the time taken does not tell which one matched.
    let primary = signature_matches(&keys.primary, parsed);
    let secondary = signature_matches(&keys.secondary, parsed);
    let key_type = match (primary, secondary) {
        (true, _) => KeyType::Primary,
        (false, true) => KeyType::Secondary,
        (false, false) => {
            return Err(TokenError::BadSignature {
                gateway: parsed.gateway.clone(),
            });
        }
    };
    if parsed.expiry <= now {
        return Err(TokenError::Expired {
            gateway: parsed.gateway.clone(),
            expiry: parsed.expiry,
        });
    }
    Ok(VerifiedToken {
        gateway: parsed.gateway.clone(),
        expiry: parsed.expiry,
        key_type,
    })
}

/// The refusal for a token naming a gateway that does not exist, after the same HMAC work as
/// [`verify`] (against throw-away keys), so the answer's timing does not single it out either.
pub fn refuse_unknown(parsed: &ParsedToken) -> TokenError {
    static DECOY: std::sync::LazyLock<GatewayKeys> = std::sync::LazyLock::new(|| GatewayKeys {
        primary: super::store::generate_key(),
        secondary: super::store::generate_key(),
    });
    let primary = signature_matches(&DECOY.primary, parsed);
    let secondary = signature_matches(&DECOY.secondary, parsed);
    std::hint::black_box((primary, secondary));
    TokenError::UnknownGateway {
        gateway: parsed.gateway.clone(),
    }
}

impl VerifiedToken {
    /// Refuses the token when the caller expects another gateway.
    pub fn require_gateway(self, expected: &str) -> Result<VerifiedToken, TokenError> {
        if self.gateway == expected {
            Ok(self)
        } else {
            Err(TokenError::WrongGateway {
                token_gateway: self.gateway,
                expected: expected.to_owned(),
            })
        }
    }
}

fn mac(key: &str, gateway: &str, expiry_text: &str) -> Hmac<Sha512> {
    let mut mac =
        Hmac::<Sha512>::new_from_slice(key.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(gateway.as_bytes());
    mac.update(b"\n");
    mac.update(expiry_text.as_bytes());
    mac
}

fn sign(key: &str, gateway: &str, expiry_text: &str) -> Vec<u8> {
    mac(key, gateway, expiry_text)
        .finalize()
        .into_bytes()
        .to_vec()
}

fn signature_matches(key: &str, parsed: &ParsedToken) -> bool {
    mac(key, &parsed.gateway, &parsed.expiry_text)
        .verify_slice(&parsed.signature)
        .is_ok()
}

// === admin routes ===

/// `POST /api/v1/gateways/{name}/token`: either an absolute `expiry` or a `lifetime-secs`;
/// neither means the longest lifetime allowed.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TokenRequest {
    #[serde(default = "primary")]
    pub key: KeyType,
    #[serde(default)]
    pub expiry: Option<DateTime<Utc>>,
    #[serde(default)]
    pub lifetime_secs: Option<u64>,
}

fn primary() -> KeyType {
    KeyType::Primary
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TokenResponse {
    /// The whole `Authorization` header value.
    pub value: String,
    pub expiry: DateTime<Utc>,
    pub key: KeyType,
    /// The control plane's config signing key(s) (`ed25519:<base64>`), for the gateway setting
    /// `control_plane.config_signing_keys`: how the key reaches gateways out of band.
    #[serde(default)]
    pub config_signing_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RegenerateRequest {
    pub key: KeyType,
}

/// The expiry a token request asks for, checked against the maximum lifetime: a longer one is
/// refused, never shortened, so nobody deploys a token believing it lasts longer than it does.
pub fn requested_expiry(
    req: &TokenRequest,
    now: DateTime<Utc>,
    max_lifetime_days: u64,
) -> Result<DateTime<Utc>, ApiError> {
    let max = chrono::Duration::days(max_lifetime_days as i64);
    let expiry = match (req.expiry, req.lifetime_secs) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give either 'expiry' or 'lifetime-secs', not both".into(),
            ));
        }
        (Some(expiry), None) => expiry,
        (None, Some(secs)) => {
            if secs < 60 {
                return Err(ApiError::BadRequest(format!(
                    "lifetime-secs must be at least 60 (tokens have minute precision), not {secs}"
                )));
            }
            let secs = i64::try_from(secs).unwrap_or(i64::MAX);
            if secs > max.num_seconds() {
                return Err(lifetime_too_long(
                    &describe_lifetime(secs),
                    max_lifetime_days,
                ));
            }
            now + chrono::Duration::seconds(secs)
        }
        (None, None) => now + max,
    };
    if expiry - now > max {
        return Err(lifetime_too_long(
            &format!("until {expiry}"),
            max_lifetime_days,
        ));
    }
    let expiry = truncate_to_minute(expiry);
    if expiry <= now {
        return Err(ApiError::BadRequest(format!(
            "expiry {expiry} (tokens have minute precision) is not in the future"
        )));
    }
    Ok(expiry)
}

fn lifetime_too_long(requested: &str, max_days: u64) -> ApiError {
    ApiError::BadRequest(format!(
        "token lifetime {requested} exceeds the maximum of {max_days} days (the control plane's \
         tokens.max_lifetime_days); ask for {max_days}d or less"
    ))
}

/// `90 days`, `36 hours`, `90 minutes`, `10 seconds`: the largest unit that divides it.
fn describe_lifetime(secs: i64) -> String {
    let (n, unit) = if secs % 86_400 == 0 {
        (secs / 86_400, "day")
    } else if secs % 3600 == 0 {
        (secs / 3600, "hour")
    } else if secs % 60 == 0 {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> GatewayKeys {
        GatewayKeys {
            primary: "p".repeat(64),
            secondary: "s".repeat(64),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn valid_token_from_either_key() {
        let now = at("2030-01-01T00:00:00Z");
        let expiry = at("2030-01-02T03:04:59Z");
        let token = mint("site-a", &keys().primary, expiry);
        assert!(
            token.starts_with("GatewayKey site-a&203001020304&"),
            "{token}"
        );
        let v = verify(&parse(&token).unwrap(), &keys(), now).unwrap();
        assert_eq!(v.gateway, "site-a");
        assert_eq!(v.expiry, at("2030-01-02T03:04:00Z"));
        assert_eq!(v.key_type, KeyType::Primary);

        let token = mint("site-a", &keys().secondary, expiry);
        let v = verify(&parse(&token).unwrap(), &keys(), now).unwrap();
        assert_eq!(v.key_type, KeyType::Secondary);
        // The scheme is case-insensitive, like every HTTP auth scheme.
        let lower = token.replacen("GatewayKey", "gatewaykey", 1);
        assert!(verify(&parse(&lower).unwrap(), &keys(), now).is_ok());
    }

    #[test]
    fn expired_token_says_when() {
        let token = mint("site-a", &keys().primary, at("2030-01-01T00:00:00Z"));
        let err = verify(&parse(&token).unwrap(), &keys(), at("2030-01-01T00:00:00Z")).unwrap_err();
        assert!(matches!(err, TokenError::Expired { .. }));
        assert!(
            err.to_string()
                .contains("expired at 2030-01-01 00:00:00 UTC")
        );
    }

    #[test]
    fn forged_and_altered_tokens_are_refused() {
        let now = at("2030-01-01T00:00:00Z");
        let forged = mint("site-a", "not-the-key", at("2030-02-01T00:00:00Z"));
        assert!(matches!(
            verify(&parse(&forged).unwrap(), &keys(), now),
            Err(TokenError::BadSignature { .. })
        ));
        // Extending the expiry of a genuine token breaks its signature.
        let genuine = mint("site-a", &keys().primary, at("2030-02-01T00:00:00Z"));
        let extended = genuine.replace("&203002010000&", "&209902010000&");
        assert!(matches!(
            verify(&parse(&extended).unwrap(), &keys(), now),
            Err(TokenError::BadSignature { .. })
        ));
    }

    #[test]
    fn unknown_gateway_and_bad_signature_answer_alike() {
        let now = at("2030-01-01T00:00:00Z");
        let expiry = at("2030-02-01T00:00:00Z");
        let forged = verify(
            &parse(&mint("site-a", "not-the-key", expiry)).unwrap(),
            &keys(),
            now,
        )
        .unwrap_err();
        let unknown = refuse_unknown(&parse(&mint("nosuch", &keys().primary, expiry)).unwrap());
        assert!(matches!(unknown, TokenError::UnknownGateway { .. }));
        // The detail (for the log) differs; what the caller is told does not.
        assert_ne!(forged.to_string(), unknown.to_string());
        assert_eq!(forged.public_message(), unknown.public_message());
        assert_eq!(forged.public_message(), INVALID_TOKEN);
        assert!(!INVALID_TOKEN.contains("site-a") && !INVALID_TOKEN.contains("nosuch"));
        assert_eq!(unknown.gateway(), Some("nosuch"));
        // An expired token for an unknown gateway says nothing about expiry.
        let old = parse(&mint("nosuch", "k", at("2020-01-01T00:00:00Z"))).unwrap();
        assert_eq!(refuse_unknown(&old).public_message(), INVALID_TOKEN);
    }

    #[test]
    fn regenerating_a_key_revokes_its_tokens_only() {
        let now = at("2030-01-01T00:00:00Z");
        let expiry = at("2030-02-01T00:00:00Z");
        let from_primary = mint("site-a", &keys().primary, expiry);
        let from_secondary = mint("site-a", &keys().secondary, expiry);
        let mut regenerated = keys();
        regenerated.primary = "q".repeat(64);
        let err = verify(&parse(&from_primary).unwrap(), &regenerated, now).unwrap_err();
        assert!(err.to_string().contains("revoked"), "{err}");
        assert!(verify(&parse(&from_secondary).unwrap(), &regenerated, now).is_ok());
    }

    #[test]
    fn token_for_another_gateway() {
        let now = at("2030-01-01T00:00:00Z");
        let expiry = at("2030-02-01T00:00:00Z");
        // Site A's genuine token, checked where site B is expected.
        let token = mint("site-a", &keys().primary, expiry);
        let v = verify(&parse(&token).unwrap(), &keys(), now).unwrap();
        let err = v.require_gateway("site-b").unwrap_err();
        assert_eq!(
            err,
            TokenError::WrongGateway {
                token_gateway: "site-a".into(),
                expected: "site-b".into()
            }
        );
        // Site A's token relabelled as site B does not verify with B's keys.
        let relabelled = token.replacen("site-a", "site-b", 1);
        let b_keys = GatewayKeys {
            primary: "b".repeat(64),
            secondary: "c".repeat(64),
        };
        assert!(matches!(
            verify(&parse(&relabelled).unwrap(), &b_keys, now),
            Err(TokenError::BadSignature { .. })
        ));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let sig = BASE64.encode([0u8; 64]);
        let cases = [
            ("", "expected 'GatewayKey"),
            ("Bearer abc", "scheme is 'Bearer'"),
            ("GatewayKey site-a&203001010000", "3 '&'-separated parts"),
            (
                &format!("GatewayKey &203001010000&{sig}"),
                "gateway name is empty",
            ),
            (&format!("GatewayKey a&2030-01-01&{sig}"), "yyyyMMddHHmm"),
            (
                &format!("GatewayKey a&203013010000&{sig}"),
                "not a valid UTC time",
            ),
            ("GatewayKey a&203001010000&%%%", "not base64"),
            ("GatewayKey a&203001010000&AAAA", "3 bytes"),
        ];
        for (token, reason) in cases {
            let err = parse(token).unwrap_err();
            assert!(matches!(err, TokenError::Malformed(_)), "{token}: {err:?}");
            assert!(err.to_string().contains(reason), "{token}: {err}");
        }
    }

    #[test]
    fn a_lifetime_beyond_the_maximum_is_refused_naming_it() {
        let now = at("2030-01-01T00:00:30Z");
        let req = |expiry: Option<&str>, lifetime: Option<u64>| TokenRequest {
            key: KeyType::Primary,
            expiry: expiry.map(at),
            lifetime_secs: lifetime,
        };
        assert_eq!(
            requested_expiry(&req(None, Some(3600)), now, 30).unwrap(),
            at("2030-01-01T01:00:00Z")
        );
        assert_eq!(
            requested_expiry(&req(None, None), now, 30).unwrap(),
            at("2030-01-31T00:00:00Z")
        );
        let err = requested_expiry(&req(Some("2030-03-01T00:00:00Z"), None), now, 30).unwrap_err();
        assert!(err.to_string().contains("maximum of 30 days"), "{err}");
        let err = requested_expiry(&req(None, Some(90 * 86400)), now, 30).unwrap_err();
        assert!(
            err.to_string()
                .contains("token lifetime 90 days exceeds the maximum of 30 days"),
            "{err}"
        );
        assert!(matches!(err, ApiError::BadRequest(_)), "a 400: {err:?}");
        let err = requested_expiry(&req(None, Some(31 * 86400 + 3600)), now, 30).unwrap_err();
        assert!(err.to_string().contains("745 hours"), "{err}");
        assert!(requested_expiry(&req(None, Some(10)), now, 30).is_err());
        assert!(requested_expiry(&req(Some("2030-01-02T00:00:00Z"), Some(5)), now, 30).is_err());
    }
}
