//! What a gateway can read from its own token: `GatewayKey <gateway>&<yyyyMMddHHmm>&<signature>`.
//!
//! Only the control plane can verify the signature; the gateway reads the expiry so it can warn
//! before the token stops working instead of finding out from a 401.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};

/// Tokens expiring within this window raise `outpost_gateway_token_expiring`.
pub const EXPIRY_WARNING: TimeDelta = TimeDelta::days(7);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub gateway: String,
    pub expiry: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token does not start with 'GatewayKey '")]
    Scheme,
    #[error("token is not '<gateway>&<yyyyMMddHHmm>&<signature>'")]
    Shape,
    #[error("token expiry '{0}' is not yyyyMMddHHmm (UTC)")]
    Expiry(String),
}

pub fn parse(token: &str) -> Result<TokenInfo, TokenError> {
    let rest = token
        .trim()
        .strip_prefix("GatewayKey ")
        .ok_or(TokenError::Scheme)?;
    let mut parts = rest.splitn(3, '&');
    let (Some(gateway), Some(expiry), Some(sig)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Shape);
    };
    if gateway.is_empty() || sig.is_empty() {
        return Err(TokenError::Shape);
    }
    let expiry = NaiveDateTime::parse_from_str(expiry, "%Y%m%d%H%M")
        .map_err(|_| TokenError::Expiry(expiry.to_owned()))?
        .and_utc();
    Ok(TokenInfo {
        gateway: gateway.to_owned(),
        expiry,
    })
}

impl TokenInfo {
    pub fn remaining(&self, now: DateTime<Utc>) -> TimeDelta {
        self.expiry - now
    }

    pub fn expiring(&self, now: DateTime<Utc>) -> bool {
        self.remaining(now) <= EXPIRY_WARNING
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parses_expiry_and_flags_tokens_close_to_it() {
        let t = parse("GatewayKey gw-a&202501311200&c2lnbmF0dXJl/+==").unwrap();
        assert_eq!(t.gateway, "gw-a");
        assert_eq!(
            t.expiry,
            Utc.with_ymd_and_hms(2025, 1, 31, 12, 0, 0).unwrap()
        );
        let now = Utc.with_ymd_and_hms(2025, 1, 20, 0, 0, 0).unwrap();
        assert!(!t.expiring(now));
        assert!(t.expiring(now + TimeDelta::days(5)));
        assert!(t.remaining(now + TimeDelta::days(12)) < TimeDelta::zero());
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        assert_eq!(parse("Bearer x"), Err(TokenError::Scheme));
        assert_eq!(parse("GatewayKey gw&202501311200"), Err(TokenError::Shape));
        assert_eq!(
            parse("GatewayKey gw&tomorrow&sig"),
            Err(TokenError::Expiry("tomorrow".into()))
        );
    }
}
