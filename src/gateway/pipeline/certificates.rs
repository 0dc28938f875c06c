//! `validate-client-certificate`, `authentication-certificate`.

use std::sync::Arc;

use outpost_actors::route_table::steps::{
    AuthenticationCertificateStep, ValidateClientCertificateStep,
};

use crate::gateway::error::GatewayError;
use crate::gateway::exchange::{Exchange, Flow};

/// Where `ignore-error` leaves the reason a certificate would have been refused for.
pub(super) const ERROR_VARIABLE: &str = "client-certificate-error";

pub(super) fn validate_client_certificate(
    s: &ValidateClientCertificateStep,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    match s.check(ex.client_certificate.as_deref(), chrono::Utc::now()) {
        Ok(()) => Ok(Flow::Continue),
        Err(why) if s.ignore_error => {
            ex.variables
                .insert(ERROR_VARIABLE.to_owned(), why.to_string());
            Ok(Flow::Continue)
        }
        Err(why) => {
            tracing::debug!(api = %ex.api.name, reason = %why, "client certificate refused");
            Err(GatewayError::client_certificate(&why))
        }
    }
}

/// The certificate is presented when the request is forwarded, to whichever backend it goes
/// to by then (see `forward`).
pub(super) fn authentication_certificate(
    s: &Arc<AuthenticationCertificateStep>,
    ex: &mut Exchange,
) -> Result<Flow, GatewayError> {
    ex.backend_certificate = Some(s.clone());
    Ok(Flow::Continue)
}
