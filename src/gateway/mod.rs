//! The self-hosted gateway: startup wiring of the actors and listeners.
//!
//! [`start`] brings a gateway up on a thread of its own (an actix system), so it works the same
//! from `main`, from tests and from `outpost demo`, and several can run in one process.
//! [`run`] is `start` plus waiting for SIGINT/SIGTERM, then a graceful stop.
//!
//! # Startup sequence
//! 1. The ops listener starts at once: `/healthz` answers, `/readyz` says 503 until step 3.
//! 2. Where the configuration comes from:
//!    - offline mode (`offline.config_file`): the declarative file, parsed and validated (every
//!      problem listed, non-zero exit); the control plane is never contacted;
//!    - otherwise one full snapshot from the control plane, within
//!      `control_plane.request_timeout_ms`, signed for this gateway by a trusted key; if it
//!      cannot be had (unreachable, 5xx, 401, untrusted signature, refused by the route table)
//!      the backup (`backup.enabled`) when it is intact, written for this gateway and signed by
//!      a trusted key; neither → the start fails with a message saying what to do. A corrupt,
//!      foreign or unsigned backup is refused with the reason and never half-loaded.
//!    - trusted keys: `control_plane.config_signing_keys`, or else the keys pinned in the backup
//!      directory (trust on first use; see `outpost_actors::config_sync::trust`).
//! 3. The route table compiles it; only then does the traffic listener start.
//! 4. `ConfigSync` keeps polling from there (in the background when serving from the backup),
//!    `TelemetryBuffer` uploads request metrics, `ConnectivityWatcher` keeps the status board.
//!    Offline, SIGHUP re-reads the file instead ([`reload`]).

pub mod access_log;
pub mod balance;
pub mod concurrency;
pub mod error;
pub mod exchange;
pub mod forward;
pub mod forwarded;
pub mod h2_server;
pub mod health;
pub mod hop_by_hop;
pub mod listener;
pub mod ops;
pub mod otel;
pub mod path;
pub mod phase;
pub mod pipeline;
pub mod proxy;
pub mod reload;
mod request_metrics;
pub mod settings;
pub mod start_error;
pub mod stores;
pub mod tls;
pub mod token_file;
pub mod trailers;
pub mod upgrade;
pub mod upstream_h1;
pub mod upstream_h2;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::server_thread::connectable;
use crate::server_thread::{Ready, ServerThread};
use actix::{Actor, Addr, Recipient};
use chrono::Utc;
use outpost_actors::config_sync::startup::{self, Startup, StartupBackup};
use outpost_actors::config_sync::trust::{self, Trust};
use outpost_actors::config_sync::{self, ConfigSync, Identity, SyncConfig};
use outpost_actors::connectivity::{
    AppliedConfig, ConfigApplied, ConfigSource, ConnectivityStatus, ConnectivityWatcher,
    StatusHandle, WatcherConfig,
};
use outpost_actors::jwks::JwksRegistry;
use outpost_actors::link::{ClientFactory, LinkConfig};
use outpost_actors::route_table::{self, ApplySnapshot, CompileContext, RouteTable, TableHandle};
use outpost_actors::telemetry::{self, TelemetryBuffer, TelemetryConfig};
use outpost_actors::token::{self, TokenInfo};
use outpost_model::document::Document;
use outpost_model::view::gateway_view;
use outpost_model::wire::GatewaySnapshot;
use outpost_model::{Kind, Problems, Resource};
use rand::RngCore;

use crate::settings::Validate;
use settings::GatewaySettings;
pub use start_error::StartError;

/// A started gateway. Dropping it stops it (not gracefully).
pub struct RunningGateway {
    traffic_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    /// Told before the listeners stop, so requests cut off by the stop count as such.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Set on the first stop signal: `/readyz` answers 503, answers close their connections.
    draining: Arc<AtomicBool>,
    ops_addr: SocketAddr,
    status: StatusHandle,
    instance_id: String,
    source: ConfigSource,
    thread: ServerThread,
}

impl RunningGateway {
    /// The bound traffic (HTTP) address (the real port when configured with port 0).
    pub fn traffic_addr(&self) -> SocketAddr {
        self.traffic_addr
    }

    /// `http://<traffic addr>`, a wildcard address replaced by loopback.
    pub fn traffic_url(&self) -> String {
        format!("http://{}", connectable(self.traffic_addr))
    }

    /// The bound HTTPS traffic address (`None` when `listen.https` is empty).
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    pub fn ops_url(&self) -> String {
        format!("http://{}", connectable(self.ops_addr))
    }

    /// The live status board (what `/readyz` shows).
    pub fn status(&self) -> Arc<ConnectivityStatus> {
        self.status.load()
    }

    pub fn status_handle(&self) -> StatusHandle {
        self.status.clone()
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Where the configuration came from at start.
    pub fn config_source(&self) -> ConfigSource {
        self.source
    }

    /// Stops gracefully: listeners finish in-flight requests, telemetry still in memory goes
    /// to the spool (when set). Returns once the ports are released.
    pub fn stop(mut self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.stop(true);
    }

    /// Starts draining (see [`run`]): `/readyz` answers 503 from now on, while the listeners
    /// keep serving; HTTP/1.1 answers close their connection, so clients move elsewhere.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Waits until the gateway stops.
    pub fn join(mut self) {
        self.thread.join();
    }

    /// Resolves when the listeners have stopped, for whatever reason.
    pub async fn stopped(&self) {
        self.thread.stopped().await;
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if self.thread.is_running() {
            self.stopping
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.thread.stop(false);
        }
    }
}

/// What the configuration is loaded from, decided before any network call.
enum Plan {
    Offline(GatewaySnapshot),
    ControlPlane {
        link: Arc<LinkConfig>,
        backup: StartupBackup,
        trust: Trust,
    },
}

/// Starts a gateway and returns once it serves (or failed to get a configuration). Needs no
/// running runtime; safe to call from tests, sync or async.
pub fn start(settings: GatewaySettings) -> Result<RunningGateway, StartError> {
    let mut problems = Problems::new();
    settings.validate(&mut problems);
    if !problems.is_empty() {
        return Err(StartError::Settings(problems));
    }
    let offline = settings.offline.config_file.is_some();
    let mut settings = settings;
    if !offline {
        token_file::resolve(&mut settings.control_plane).map_err(StartError::TokenFile)?;
    }
    let plan = if let Some(file) = &settings.offline.config_file {
        Plan::Offline(offline_snapshot(file, settings.offline.gateway.as_deref())?)
    } else {
        let trust = initial_trust(&settings)?;
        Plan::ControlPlane {
            link: Arc::new(link_config(&settings)?),
            backup: StartupBackup::read(backup_dir(&settings).as_deref(), &trust),
            trust,
        }
    };
    let token_warning = token::warning_window(settings.control_plane.token_warning);
    let token = if offline {
        None
    } else {
        token_info(&settings.control_plane.token, token_warning)
    };

    let ops_listener =
        TcpListener::bind(&settings.listen.ops).map_err(|source| StartError::Listen {
            address: settings.listen.ops.clone(),
            key: "listen.ops",
            source,
        })?;
    let ops_addr = ops_listener.local_addr().map_err(StartError::Ops)?;

    let identity = Identity {
        instance_id: instance_id(),
        hostname: hostname(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: Utc::now(),
        // Settled once the configuration is loaded.
        started_from: ConfigSource::ControlPlane,
        token_expiry: token.as_ref().map(|t| t.expiry),
    };
    let (watcher, status) = ConnectivityWatcher::new(WatcherConfig {
        offline,
        redis_configured: settings.redis.url.is_some(),
        token,
        token_warning,
        degraded_grace: 3 * settings.control_plane.heartbeat_interval,
    });

    let thread_status = status.clone();
    let (thread, started) = ServerThread::spawn("gateway", move |ready_tx| {
        serve(
            settings,
            plan,
            identity,
            watcher,
            thread_status,
            ops_listener,
            ready_tx,
        )
    })?;
    tracing::info!(
        ops = %ops_addr,
        traffic = %started.traffic_addr,
        https = ?started.https_addr,
        source = started.source.as_str(),
        instance = %started.instance_id,
        "gateway started"
    );
    Ok(RunningGateway {
        traffic_addr: started.traffic_addr,
        https_addr: started.https_addr,
        stopping: started.stopping,
        draining: started.draining,
        ops_addr,
        status,
        instance_id: started.instance_id,
        source: started.source,
        thread,
    })
}

/// What the gateway thread reports once it serves.
struct Started {
    traffic_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    draining: Arc<AtomicBool>,
    source: ConfigSource,
    instance_id: String,
}

/// The gateway thread: everything runs on this actix system until the listeners stop.
async fn serve(
    settings: GatewaySettings,
    mut plan: Plan,
    mut identity: Identity,
    watcher: ConnectivityWatcher,
    status: StatusHandle,
    ops_listener: TcpListener,
    ready: Ready<Started, StartError>,
) {
    let watcher = watcher.start();
    let table = route_table::new_table_handle();
    let served_table = table.clone();
    let draining = Arc::new(AtomicBool::new(false));
    let ops = match ops::start(
        ops_listener,
        ops::OpsState {
            status: status.clone(),
            instance_id: identity.instance_id.clone(),
            started_at: identity.started_at,
            readyz_detail: settings.ops.readyz_detail,
            table: table.clone(),
            draining: draining.clone(),
        },
    ) {
        Ok(server) => server,
        Err(e) => {
            let _ = ready.send(Err(StartError::Ops(e)));
            return;
        }
    };
    let ops_handle = ops.handle();
    let ops_task = actix_rt::spawn(ops);

    let gateway_name = match &plan {
        Plan::Offline(_) => None,
        Plan::ControlPlane { link, .. } => token::parse(&link.token).ok().map(|t| t.gateway),
    };
    let jwks = match jwks_registry() {
        Ok(r) => r,
        Err(e) => {
            ops_handle.stop(false).await;
            let _ = ready.send(Err(e));
            return;
        }
    };
    let route_table = RouteTable::new(
        table.clone(),
        CompileContext {
            gateway_name,
            jwks: Some(Arc::new(jwks)),
            ..CompileContext::default()
        },
    )
    .start();
    let table_mailbox = route_table.recipient();

    let loaded = match load_config(&settings, &mut plan, &table_mailbox, &watcher).await {
        Ok(loaded) => loaded,
        Err(e) => {
            ops_handle.stop(false).await;
            let _ = ready.send(Err(e));
            return;
        }
    };
    identity.started_from = loaded.source;
    let trust = loaded.trust.clone();

    let link = match &plan {
        Plan::ControlPlane { link, .. } => Some(link.clone()),
        Plan::Offline(_) => None,
    };
    let (telemetry, recorder) = TelemetryBuffer::new(TelemetryConfig {
        link: link.clone(),
        instance_id: identity.instance_id.clone(),
        flush_interval: settings.telemetry.flush_interval,
        max_buffered: settings.telemetry.max_buffered,
        spool_dir: settings.telemetry.spool_dir.clone(),
        spool_max_bytes: settings.telemetry.spool_max_bytes,
    });
    let telemetry = telemetry.start();

    let stores = match stores::start(&settings, watcher.clone().recipient()).await {
        Ok(stores) => stores,
        Err(e) => {
            ops_handle.stop(false).await;
            let _ = ready.send(Err(e));
            return;
        }
    };
    let health_checks = actix_rt::spawn(health::supervise(table.clone()));
    let access_log = match access_log::AccessLog::start(&settings.access_log, &identity.instance_id)
    {
        Ok(log) => log,
        Err(source) => {
            ops_handle.stop(false).await;
            let _ = ready.send(Err(StartError::AccessLog {
                path: settings.access_log.path.clone(),
                source,
            }));
            return;
        }
    };
    let (access_log, access_log_writer) = access_log.unzip();
    let otel = match otel::Otel::start(&settings.otel, &identity.instance_id) {
        Ok(otel) => otel,
        Err(e) => {
            ops_handle.stop(false).await;
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let hooks = proxy::ProxyHooks {
        otel: otel.as_ref().and_then(|o| o.traces.clone()),
        observer: Some(Arc::new(recorder)),
        shared: Some(stores.0),
        cache: Some(stores.1),
        access_log,
        draining: draining.clone(),
    };
    let traffic = match start_traffic(&settings, table, hooks) {
        Ok(t) => t,
        Err(e) => {
            ops_handle.stop(false).await;
            let _ = ready.send(Err(e));
            return;
        }
    };
    let (traffic, addrs) = traffic;
    // Ready only now: the traffic listener is bound, so a load balancer trusting /readyz never
    // sends a request to a port that is not listening yet. ConfigSync starts after this first
    // report so its newer revisions always arrive after it. Awaited, so that `/readyz` says
    // ready (and which config) by the time `start` returns.
    let _ = watcher
        .send(ConfigApplied(AppliedConfig {
            source: loaded.source,
            revision: loaded.snapshot.revision,
            hash: loaded.snapshot.hash.clone(),
            applied_at: Utc::now(),
        }))
        .await;
    reload::listen(match (&plan, &settings.offline.config_file) {
        (Plan::Offline(_), Some(file)) => Some(reload::OfflineReload {
            file: file.clone(),
            gateway: settings.offline.gateway.clone(),
            table: table_mailbox.clone(),
            watcher: watcher.clone(),
            revision: loaded.snapshot.revision,
        }),
        _ => None,
    });
    let sync = if let (Some(link), Some(trust)) = (link, trust) {
        let cp = &settings.control_plane;
        let sync = ConfigSync::new(
            SyncConfig {
                link,
                poll_wait: cp.poll_wait,
                heartbeat_interval: cp.heartbeat_interval,
                backoff_initial: cp.backoff_initial,
                backoff_max: cp.backoff_max,
                backup_dir: backup_dir(&settings),
                identity: identity.clone(),
                trust,
                served: Some(served_table.clone()),
                draining: draining.clone(),
            },
            Some(Arc::new(loaded.snapshot)),
            table_mailbox,
            watcher.clone(),
            status.clone(),
        )
        .start();
        Some(sync)
    } else {
        None
    };

    let servers = vec![ops_handle, traffic.handle()];
    let traffic_task = actix_rt::spawn(traffic);
    let _ = ready.send(Ok((
        servers,
        Started {
            traffic_addr: addrs.http,
            https_addr: addrs.https,
            stopping: addrs.stopping,
            draining,
            source: loaded.source,
            instance_id: identity.instance_id.clone(),
        },
    )));

    let _ = ops_task.await;
    let _ = traffic_task.await;
    health_checks.abort();
    // The workers are gone with their handles to the log: what they queued is written now.
    if let Some(writer) = access_log_writer {
        writer.finish(Duration::from_secs(5));
    }
    // Likewise the spans of the last requests and the last metric values.
    if let Some(otel) = otel {
        otel.shutdown(Duration::from_secs(5));
    }
    // The listeners are down, so this instance serves nothing any more: say so now rather than
    // leave the control plane to notice missing heartbeats.
    if let Some(sync) = sync {
        let _ = sync.send(config_sync::Stop).await;
    }
    let _ = telemetry.send(telemetry::Shutdown).await;
    tracing::info!("gateway stopped");
}

/// The traffic listener, started only once a configuration is loaded.
fn start_traffic(
    settings: &GatewaySettings,
    table: TableHandle,
    hooks: proxy::ProxyHooks,
) -> Result<(actix_web::dev::Server, proxy::TrafficAddrs), StartError> {
    let l = &settings.listen;
    let https = l.https.as_deref().map(|listen| proxy::HttpsListen {
        listen,
        default_host: l.https_default_hostname.clone(),
        min_tls: l.https_min_tls,
    });
    proxy::start_traffic_servers(&l.http, https, settings, table, hooks).map_err(|source| {
        StartError::Traffic {
            http: l.http.clone(),
            https: l.https.clone(),
            source,
        }
    })
}

struct Loaded {
    snapshot: GatewaySnapshot,
    source: ConfigSource,
    /// The trust after loading (a first contact pins a key); `None` offline.
    trust: Option<Trust>,
}

/// Step 2 of the startup sequence (see the module docs): the offline file is served here; the
/// control plane and the backup go through `config_sync::startup`, which shares the sync
/// loop's rules (trust, hand-over, backup and pin files, status reports).
async fn load_config(
    settings: &GatewaySettings,
    plan: &mut Plan,
    table: &Recipient<ApplySnapshot>,
    watcher: &Addr<ConnectivityWatcher>,
) -> Result<Loaded, StartError> {
    match plan {
        Plan::Offline(snapshot) => {
            let file = settings.offline.config_file.clone().unwrap_or_default();
            startup::hand_over(table.clone(), Arc::new(snapshot.clone()))
                .await
                .map_err(|reason| StartError::OfflineRefused {
                    file: file.clone(),
                    reason,
                })?;
            tracing::info!(
                file = %file.display(),
                hash = %snapshot.hash,
                "offline mode: serving the config file, the control plane is not contacted"
            );
            Ok(Loaded {
                snapshot: snapshot.clone(),
                source: ConfigSource::Offline,
                trust: None,
            })
        }
        Plan::ControlPlane {
            link,
            backup,
            trust,
        } => {
            let loaded = startup::first_config(Startup {
                link,
                backup: std::mem::replace(backup, StartupBackup::Disabled),
                trust: trust.clone(),
                backup_dir: backup_dir(settings),
                table,
                watcher,
            })
            .await?;
            Ok(Loaded {
                snapshot: loaded.snapshot,
                source: loaded.source,
                trust: Some(loaded.trust),
            })
        }
    }
}

fn backup_dir(settings: &GatewaySettings) -> Option<PathBuf> {
    settings.backup.enabled.then(|| settings.backup.dir.clone())
}

/// The signing keys this gateway trusts at start: the configured ones, else what was pinned
/// next to the backup (nothing yet on a first start, or without backups).
fn initial_trust(settings: &GatewaySettings) -> Result<Trust, StartError> {
    let gateway = token::parse(&settings.control_plane.token)
        .map(|t| t.gateway)
        .unwrap_or_default();
    let configured = settings.control_plane.signing_keys();
    if !configured.is_empty() {
        return Ok(Trust::configured(gateway, configured));
    }
    if !settings.backup.enabled {
        return Ok(Trust::pinned(gateway, Vec::new()));
    }
    let pins = trust::read_pins(&settings.backup.dir)?;
    Ok(Trust::pinned(gateway, pins))
}

/// The snapshot to serve in offline mode: the file's view for the chosen gateway.
fn offline_snapshot(file: &Path, gateway: Option<&str>) -> Result<GatewaySnapshot, StartError> {
    let text =
        std::fs::read_to_string(file).map_err(|source| StartError::OfflineFileUnreadable {
            path: file.to_owned(),
            source,
        })?;
    let name = file.display().to_string();
    let refused = |problems: Problems| StartError::OfflineFileInvalid {
        file: name.clone(),
        problems,
    };
    let (doc, index) = Document::from_yaml_indexed(&text).map_err(refused)?;
    // Served as is, a masked secret would reach backends as the mask itself.
    let masked = doc.masked_secrets();
    if !masked.is_empty() {
        return Err(refused(index.locate(masked)));
    }
    let gateways: Vec<&str> = doc
        .resources
        .iter()
        .filter(|r| r.kind() == Kind::Gateway)
        .map(Resource::name)
        .collect();
    let owned = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
    let chosen = match (gateway, gateways.as_slice()) {
        (None, []) => None,
        (None, [only]) => Some(*only),
        (None, many) => {
            return Err(StartError::OfflineGatewayAmbiguous {
                file: file.to_owned(),
                gateways: owned(many),
            });
        }
        (Some(name), all) if all.contains(&name) => Some(name),
        (Some(name), all) => {
            return Err(StartError::OfflineGatewayUnknown {
                name: name.to_owned(),
                file: file.to_owned(),
                gateways: owned(all),
            });
        }
    };
    let view = gateway_view(&doc.resources, chosen);
    Ok(GatewaySnapshot::from_view(0, view))
}

/// `validate-jwt` key sources fetch on this (the gateway's main) arbiter, trusting the system's
/// CA bundle: identity providers are public services.
fn jwks_registry() -> Result<JwksRegistry, StartError> {
    let tls = Arc::new(client_tls(None)?);
    Ok(JwksRegistry::new(
        actix_rt::Arbiter::current(),
        ClientFactory::new(move || {
            awc::Client::builder()
                .connector(awc::Connector::new().rustls_0_23(tls.clone()))
                .finish()
        }),
    ))
}

/// The link settings, with the TLS trust the control plane URL needs.
fn link_config(settings: &GatewaySettings) -> Result<LinkConfig, StartError> {
    let cp = &settings.control_plane;
    let urls = cp.urls();
    let clients = if urls.iter().any(|u| u.starts_with("https://")) {
        let tls = Arc::new(client_tls(cp.ca_file.as_deref())?);
        ClientFactory::new(move || {
            awc::Client::builder()
                .connector(awc::Connector::new().rustls_0_23(tls.clone()))
                .finish()
        })
    } else {
        ClientFactory::plain()
    };
    Ok(LinkConfig {
        base_urls: urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect(),
        token: cp.token.clone(),
        request_timeout: cp.request_timeout,
        clients,
        current: Arc::default(),
    })
}

/// Trust for the control plane: the system's CA bundle plus `control_plane.ca_file`.
fn client_tls(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, StartError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    let system = std::env::var("SSL_CERT_FILE").ok().into_iter().chain(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem",
        ]
        .map(String::from),
    );
    if let Some(bundle) = system.into_iter().find(|p| Path::new(p).is_file())
        && let Ok(certs) = CertificateDer::pem_file_iter(&bundle)
    {
        roots.add_parsable_certificates(certs.filter_map(Result::ok));
    }
    if let Some(path) = ca_file {
        let bad = |reason: String| StartError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate found".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(StartError::NoCaCertificates);
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The token's gateway and expiry, logging at start when it has expired or expires within
/// `warning` (`control_plane.token_warning_hours`).
fn token_info(token: &str, warning: chrono::TimeDelta) -> Option<TokenInfo> {
    match token::parse(token) {
        Ok(info) => {
            let now = Utc::now();
            let left = info.remaining(now);
            if left <= chrono::TimeDelta::zero() {
                tracing::error!(expiry = %info.expiry, "the gateway token has expired; mint a new one (outpost gateway-token) and restart");
            } else if info.expiring(now, warning) {
                tracing::warn!(expiry = %info.expiry, hours_left = left.num_hours(), "the gateway token expires soon; mint a new one (outpost gateway-token) and restart");
            }
            Some(info)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the gateway token's expiry");
            None
        }
    }
}

fn instance_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the gateway until SIGINT or SIGTERM, then drains and stops gracefully: `/readyz`
/// answers 503 at once while the listeners keep serving for `[shutdown] drain_secs` (load
/// balancers polling readiness stop sending meanwhile; a second signal cuts it short), then the
/// listeners close and requests in flight get `[shutdown] grace_secs` to finish.
pub fn run(settings: GatewaySettings) -> Result<(), StartError> {
    crate::logging::init(&settings.log);
    let drain = settings.shutdown.drain;
    let running = start(settings)?;
    eprintln!(
        "outpost gateway: traffic on {}{}, ops on {} (config from {})",
        running.traffic_url(),
        running
            .https_addr()
            .map(|a| format!(" and https://{}", connectable(a)))
            .unwrap_or_default(),
        running.ops_url(),
        running.config_source().as_str()
    );
    match crate::signals::wait_for_stop(running.stopped()).map_err(StartError::Signals)? {
        crate::signals::Stop::Signal(name) => {
            tracing::info!(
                signal = name,
                drain_secs = drain.as_secs(),
                "draining: /readyz answers 503, the listeners keep serving"
            );
            running.start_draining();
            if let Some(again) =
                crate::signals::wait_for_signal(drain).map_err(StartError::Signals)?
            {
                tracing::warn!(signal = again, "second signal: the drain is cut short");
            }
            tracing::info!("stopping: the listeners close, requests in flight finish");
            running.stop();
            Ok(())
        }
        crate::signals::Stop::Stopped => {
            running.join();
            Err(StartError::Stopped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_GATEWAYS: &str = r#"
apiVersion: outpost/v1
backends: [{name: b, url: "http://127.0.0.1:9"}]
apis:
  - {name: a1, path: a1, backend: b}
  - {name: a2, path: a2, backend: b}
gateways:
  - {name: east, apis: [a1]}
  - {name: west, apis: [a2]}
"#;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn offline_mode_picks_the_named_or_only_gateway() {
        let (_d, path) = file(TWO_GATEWAYS);
        let err = offline_snapshot(&path, None).unwrap_err().to_string();
        assert!(
            err.contains("east, west") && err.contains("offline.gateway"),
            "{err}"
        );
        let east = offline_snapshot(&path, Some("east")).unwrap();
        assert!(east.verify());
        let apis: Vec<&str> = east.of_kind(Kind::Api).map(Resource::name).collect();
        assert_eq!(apis, vec!["a1"]);

        let (_d, path) = file(
            "apiVersion: outpost/v1\nbackends: [{name: b, url: \"http://x\"}]\napis: [{name: a, path: a, backend: b}]\n",
        );
        let all = offline_snapshot(&path, None).unwrap();
        assert_eq!(all.of_kind(Kind::Api).count(), 1, "no gateway: every API");
        let err = offline_snapshot(&path, Some("east"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gateways there: none"), "{err}");
    }

    #[test]
    fn a_bad_ca_file_is_a_start_error() {
        let (_d, path) = file("not a certificate");
        let err = client_tls(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("control_plane.ca_file"), "{err}");
        let err = client_tls(Some(Path::new("/nonexistent/ca.pem")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
