//! The control plane: revisioned store, management API, gateway-facing endpoint.

pub mod error;
pub mod settings;
pub mod store;

use settings::ControlPlaneSettings;

/// Runs the control plane until it is stopped.
pub fn run(settings: ControlPlaneSettings) -> Result<(), String> {
    crate::logging::init(&settings.log);
    Err("the control plane server is not built yet".into())
}
