//! The self-hosted gateway.

pub mod settings;

use settings::GatewaySettings;

/// Runs the gateway until it is stopped.
pub fn run(settings: GatewaySettings) -> Result<(), String> {
    crate::logging::init(&settings.log);
    Err("the gateway is not built yet".into())
}
