//! The stores behind the shared-state policies: rate-limit and quota counters
//! ([`SharedState`], Redis or in-process) and the cache ([`CacheHandle`]), built at start from
//! the settings. The policies themselves run in `pipeline/limits.rs` and `pipeline/cache.rs`.

use std::path::Path;

use outpost_actors::cache::{CacheConfig, CacheHandle};
use outpost_actors::shared_state::{RedisConfig, RedisTls, SharedState, SharedStateConfig};

use super::settings::GatewaySettings;
use super::start_error::StartError;

/// The stores the traffic server uses: the ones given (the proxy's hooks), else in-process
/// ones.
pub fn stores(
    settings: &GatewaySettings,
    shared: Option<SharedState>,
    cache: Option<CacheHandle>,
) -> (SharedState, CacheHandle) {
    let shared = shared.unwrap_or_else(SharedState::in_process);
    let cache = cache.unwrap_or_else(|| CacheHandle::new(cache_config(settings), shared.clone()));
    (shared, cache)
}

pub fn cache_config(settings: &GatewaySettings) -> CacheConfig {
    CacheConfig {
        local_max_bytes: settings.cache.local_max_bytes,
        max_entry_bytes: settings.cache.max_entry_bytes,
        coalesce_wait: settings.cache.coalesce_wait,
    }
}

/// Builds the shared state from `settings.redis` (in-process when no URL), on the current
/// runtime. Never fails because Redis is down: it starts disconnected and keeps probing.
pub async fn connect(settings: &GatewaySettings) -> Result<SharedState, StartError> {
    let r = &settings.redis;
    let redis = if let Some(url) = &r.url {
        // Every unreadable file at once, not the first only.
        let (ca, cert, key) = (
            read_pem(
                "redis.tls_ca_file",
                r.tls_ca_file.as_deref(),
                Pem::Certificates,
            ),
            read_pem(
                "redis.tls_cert_file",
                r.tls_cert_file.as_deref(),
                Pem::Certificates,
            ),
            read_pem(
                "redis.tls_key_file",
                r.tls_key_file.as_deref(),
                Pem::PrivateKey,
            ),
        );
        let (ca, cert, key) = match (ca, cert, key) {
            (Ok(ca), Ok(cert), Ok(key)) => (ca, cert, key),
            (ca, cert, key) => {
                let problems = [ca.err(), cert.err(), key.err()];
                return Err(StartError::RedisFiles(
                    problems.into_iter().flatten().collect(),
                ));
            }
        };
        Some(RedisConfig {
            cluster: r.cluster,
            sentinel_service: r.sentinel_service.clone(),
            sentinel_username: r.sentinel_username.clone(),
            sentinel_password: r.sentinel_password.clone(),
            tls: RedisTls {
                ca_pem: ca,
                client_cert_pem: cert,
                client_key_pem: key,
            },
            ..RedisConfig::new(url.clone(), r.timeout)
        })
    } else {
        None
    };
    SharedState::connect(SharedStateConfig {
        redis,
        nodes: settings.redis.nodes,
    })
    .await
    .map_err(StartError::Redis)
}

/// What a PEM file named by a setting must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificates,
    PrivateKey,
}

/// The contents of a PEM file named by a setting (`None` when the setting is empty), parsed
/// here (as `control_plane.ca_file` is) so that a bad file is a start error naming the setting,
/// not a Redis outage reported later.
fn read_pem(setting: &str, path: Option<&Path>, kind: Pem) -> Result<Option<Vec<u8>>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let Some(path) = path else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    let checked = match kind {
        Pem::Certificates => CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
            .and_then(|certs| match certs.is_empty() {
                true => Err("no certificate (-----BEGIN CERTIFICATE-----) in the file".into()),
                false => Ok(()),
            }),
        Pem::PrivateKey => PrivateKeyDer::from_pem_slice(&pem)
            .map(drop)
            .map_err(|e| format!("no private key: {e}")),
    };
    checked.map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    Ok(Some(pem))
}

/// Startup: the shared state from `settings.redis` (reachability reported to `watcher`), the
/// cache over it, and the `Cache` actor for its maintenance. Call inside the actix system.
pub async fn start(
    settings: &GatewaySettings,
    watcher: actix::Recipient<outpost_actors::connectivity::messages::RedisObserved>,
) -> Result<(SharedState, CacheHandle), StartError> {
    use actix::Actor;
    let shared = connect(settings).await?;
    shared.report_to(watcher);
    let cache = CacheHandle::new(cache_config(settings), shared.clone());
    outpost_actors::cache::Cache::new(cache.clone()).start();
    Ok((shared, cache))
}
