//! A compiled backend resource: where requests go, with its timeouts and TLS profile. Both the
//! table and the steps that retarget a request (`set-backend-service`) hold these, so it is a
//! leaf of its own rather than a part of either.

use std::sync::Arc;
use std::time::Duration;

use outpost_model::resources::BackendProtocol;

pub use super::backend_url::BackendUrl;
use super::pool::Pool;
use super::tls::TlsProfile;

#[derive(Debug)]
pub struct CompiledBackend {
    pub name: Arc<str>,
    /// The URL; for a pool, its first member's (the forwarder picks one per attempt).
    pub url: BackendUrl,
    /// Set when the backend lists `members`.
    pub pool: Option<Arc<Pool>>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub tls: Arc<TlsProfile>,
    pub protocol: BackendProtocol,
}
