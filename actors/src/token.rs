//! What a gateway can read from its own token: `GatewayKey <gateway>&<yyyyMMddHHmm>&<signature>`.
//!
//! Only the control plane can verify the signature; the gateway reads the expiry so it can warn
//! before the token stops working instead of finding out from a 401.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};

/// The default of the gateway setting `control_plane.token_warning_hours`: how long before its
/// expiry a token is reported as expiring (log warning, `/readyz`, metric). Shorter than any
/// lifetime people mint routinely (7 days and up), so a fresh token never warns at start, and
/// still two days to deploy a new one.
pub const DEFAULT_WARNING: std::time::Duration = std::time::Duration::from_secs(48 * 3600);

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

    /// Whether the token expires within `window` of `now` (or has expired).
    pub fn expiring(&self, now: DateTime<Utc>, window: TimeDelta) -> bool {
        expiring(self.expiry, now, window)
    }
}

/// Whether a token expiring at `expiry` is within `window` of it at `now`; a zero window never
/// warns (the setting's way of turning the warning off). One rule for the start-up log, the
/// periodic log, `/readyz` and the metric, so they never disagree.
pub fn expiring(expiry: DateTime<Utc>, now: DateTime<Utc>, window: TimeDelta) -> bool {
    window > TimeDelta::zero() && expiry - now <= window
}

/// The setting as a warning window (saturating: a huge setting means "always").
pub fn warning_window(window: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX)
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
        let window = warning_window(DEFAULT_WARNING);
        assert!(!t.expiring(now, window));
        assert!(t.expiring(now + TimeDelta::days(10), window));
        assert!(t.remaining(now + TimeDelta::days(12)) < TimeDelta::zero());
    }

    /// The README's `--expires 7d` token must not warn on the day it is minted.
    #[test]
    fn a_fresh_seven_day_token_does_not_warn_with_the_default_window() {
        let now = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let window = warning_window(DEFAULT_WARNING);
        assert!(!expiring(now + TimeDelta::days(7), now, window));
        assert!(!expiring(now + TimeDelta::hours(49), now, window));
        assert!(expiring(now + TimeDelta::hours(48), now, window));
        assert!(expiring(now - TimeDelta::hours(1), now, window), "expired");
        // A wider window set by the operator, and 0 turning the warning off.
        assert!(expiring(
            now + TimeDelta::days(7),
            now,
            warning_window(std::time::Duration::from_secs(8 * 24 * 3600))
        ));
        assert!(!expiring(
            now + TimeDelta::hours(1),
            now,
            warning_window(std::time::Duration::ZERO)
        ));
        assert_eq!(warning_window(std::time::Duration::MAX), TimeDelta::MAX);
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
