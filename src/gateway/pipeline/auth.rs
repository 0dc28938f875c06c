//! `validate-jwt`, `check-header`, `ip-filter`.

use outpost_actors::route_table::steps::{
    CheckHeaderStep, IpFilterStep, JwtRejection, ValidateJwtStep,
};

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow};

/// Verifies the token. Only a token whose `kid` the fetched keys do not know waits: for one
/// refresh per source, bounded (`jwks::state::UNKNOWN_KID_WAIT`) and rate-limited per source,
/// so a key the provider just rotated in is accepted on its first use.
pub(super) async fn validate_jwt(
    s: &ValidateJwtStep,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    let fail = || GatewayError::policy(s.failed_status, "JwtInvalid", s.failed_message.clone());
    let token = token(s, ex).ok_or_else(fail)?;
    let mut verdict = s.verify(&token);
    if verdict == Err(JwtRejection::UnknownKey) {
        let mut refreshed = false;
        for source in &s.sources {
            refreshed |= source.refresh_and_wait().await;
        }
        if refreshed {
            verdict = s.verify(&token);
        }
    }
    match verdict {
        Ok(claims) => {
            ex.jwt_claims = Some(std::sync::Arc::new(claims));
            Ok(Flow::Continue)
        }
        Err(why) => {
            tracing::debug!(api = %ex.api.name, reason = %why, "JWT refused");
            Err(fail())
        }
    }
}

/// The token from the configured header (`Bearer ` stripped) or query parameter.
fn token(s: &ValidateJwtStep, ex: &Exchange) -> Option<String> {
    if let Some(v) = ex.request_headers.get(&s.header_name)
        && let Ok(v) = v.to_str()
    {
        let v = v.trim();
        let v = match v.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("bearer ") => v[7..].trim(),
            _ => v,
        };
        if !v.is_empty() {
            return Some(v.to_owned());
        }
    }
    s.query_parameter_name
        .as_deref()
        .and_then(|q| ex.query_value(q))
        .filter(|v| !v.is_empty())
}

pub(super) fn check_header(s: &CheckHeaderStep, ex: &mut Exchange) -> Result<Flow, GatewayError> {
    let fail = || {
        GatewayError::policy(
            s.failed_status,
            "HeaderCheckFailed",
            s.failed_message.clone(),
        )
    };
    for v in ex.request_headers.get_all(&s.name) {
        if s.values.is_empty() {
            return Ok(Flow::Continue);
        }
        let Ok(v) = v.to_str() else { continue };
        let matches = |want: &String| {
            if s.ignore_case {
                want.eq_ignore_ascii_case(v)
            } else {
                want == v
            }
        };
        if s.values.iter().any(matches) {
            return Ok(Flow::Continue);
        }
    }
    Err(fail())
}

pub(super) fn ip_filter(s: &IpFilterStep, ex: &mut Exchange) -> Result<Flow, GatewayError> {
    match ex.client_ip {
        Some(ip) if s.admits(ip) => Ok(Flow::Continue),
        _ => Err(GatewayError::policy(
            403,
            "IpAddressForbidden",
            "Forbidden: requests from this client address are not allowed.",
        )),
    }
}
