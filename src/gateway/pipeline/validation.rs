//! `validate-headers`.

use outpost_actors::route_table::steps::{Allowed, ValidateHeadersStep};

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow};

/// Collects every failing header before refusing, so one answer tells the client all it has to
/// fix.
pub(super) fn validate_headers(
    s: &ValidateHeadersStep,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    let mut errors = Vec::new();
    for h in &s.headers {
        let mut values = ex.request_headers.get_all(&h.name).peekable();
        if values.peek().is_none() {
            if h.required {
                errors.push((h.name.to_string(), "missing".to_owned()));
            }
            continue;
        }
        let bad = values.any(|v| match v.to_str() {
            Ok(v) => !h.allowed.admits(v),
            Err(_) => !matches!(h.allowed, Allowed::Any),
        });
        if bad {
            let why = match &h.allowed {
                Allowed::Pattern(_) => "a value does not match the declared pattern",
                _ => "a value is not one of the allowed values",
            };
            errors.push((h.name.to_string(), why.to_owned()));
        }
    }
    if s.prevent_unspecified {
        for name in ex.request_headers.keys() {
            if !s.declares(name)
                && !ValidateHeadersStep::is_protocol_header(name)
                && !errors.iter().any(|(n, _)| n == name.as_str())
            {
                errors.push((name.to_string(), "not declared".to_owned()));
            }
        }
    }
    if errors.is_empty() {
        Ok(Flow::Continue)
    } else {
        Err(GatewayError::headers_invalid(errors))
    }
}
