//! The control plane: revisioned store, management API and dashboard (admin listener),
//! gateway-facing endpoint (gateway listener).
//!
//! [`start`] opens the store, resolves the admin token and starts both listeners on a thread of
//! their own (an actix system), so it works the same from `main`, from tests (sync or async) and
//! from `outpost demo`, which runs several components in one process. Nothing here is
//! process-global: two control planes can run side by side, each on its own data directory (the
//! directory is locked by the one using it, see [`data_dir`]). [`run`] is `start` plus waiting
//! for SIGINT/SIGTERM, then a graceful stop.
//!
//! Admin listener (`admin.listen`):
//! - `/` — the dashboard ([`dashboard`]);
//! - `/metrics` — Prometheus text ([`metrics`]), open unless `admin.metrics_require_token`;
//! - `/api/v1/openapi.json` — the OpenAPI document ([`openapi`]), no authentication;
//!   every admin route is listed once, in [`routes`];
//! - `/api/v1/...` — the management API ([`admin_api`]) and the gateway admin routes
//!   ([`gateway_api::configure_admin`]), behind `Authorization: Bearer <admin token>` ([`auth`]).
//!
//! Gateway listener (`gateway_api.listen`, HTTPS when `tls_cert_file`/`tls_key_file` are set):
//! `/gateway/v1/...` ([`gateway_api::configure_gateway_api`]).

pub mod admin_api;
pub mod auth;
pub mod dashboard;
pub mod data_dir;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod policy_schemas;
pub mod routes;
pub mod settings;
pub mod store;
// --- gateway keys/tokens, gateway endpoint, instances, telemetry (owned by the gateway-API side) ---
pub mod gateway_api;
pub mod gateway_state;
pub mod instances;
pub mod telemetry;
pub mod tokens;
pub mod views;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::server_thread::ServerThread;
use crate::server_thread::connectable;
use actix_web::dev::ServerHandle;
use actix_web::middleware::{Condition, from_fn};
use actix_web::{App, HttpServer, web};
use outpost_model::Problems;

use self::admin_api::AdminState;
use self::auth::AdminToken;
use self::data_dir::DataDir;
use self::gateway_state::GatewayApiState;
use self::settings::{ControlPlaneSettings, GatewayApiSettings, StoreDir};
use self::store::{Location, State, Store, StoreError, StoreOptions};
use crate::settings::Validate;

/// Name of the SQLite file in the data directory.
pub const DB_FILE: &str = "outpost.db";

/// A started control plane. Dropping it stops both listeners (not gracefully).
pub struct RunningControlPlane {
    admin_addr: SocketAddr,
    gateway_addr: SocketAddr,
    gateway_tls: bool,
    admin_token: AdminToken,
    store: Arc<Store>,
    gateway_state: web::Data<GatewayApiState>,
    thread: ServerThread,
    /// Holds the data directory's lock while this control plane runs (`None` for `:memory:`).
    _data_dir: Option<DataDir>,
}

/// Stops a running control plane from elsewhere (a signal handler, another thread).
#[derive(Clone)]
pub struct StopHandle {
    servers: Vec<ServerHandle>,
}

impl StopHandle {
    /// Asks both listeners to stop; returns at once (see [`RunningControlPlane::join`]).
    pub fn stop(&self, graceful: bool) {
        crate::server_thread::signal_stop(&self.servers, graceful);
    }
}

impl RunningControlPlane {
    /// The bound address of the admin listener (the real port when configured with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway_addr
    }

    /// `http://<admin addr>`, with a wildcard address replaced by loopback.
    pub fn admin_url(&self) -> String {
        format!("http://{}", connectable(self.admin_addr))
    }

    /// `http(s)://<gateway addr>`, with a wildcard address replaced by loopback.
    pub fn gateway_url(&self) -> String {
        let scheme = if self.gateway_tls { "https" } else { "http" };
        format!("{scheme}://{}", connectable(self.gateway_addr))
    }

    pub fn admin_token(&self) -> &str {
        self.admin_token.as_str()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The state shared by the gateway endpoint and its admin routes (instances, telemetry).
    pub fn gateway_state(&self) -> &web::Data<GatewayApiState> {
        &self.gateway_state
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            servers: self.thread.handles().to_vec(),
        }
    }

    /// Stops gracefully (in-flight requests finish, within the listeners' shutdown timeouts)
    /// and waits until both listeners are down and their ports released; then writes the
    /// instance status heard since the last sync to the store.
    pub fn stop(mut self) {
        self.thread.stop(true);
        self.gateway_state.sync_instances();
    }

    /// Waits until the listeners stop (after a [`StopHandle::stop`]).
    pub fn join(mut self) {
        self.thread.join();
    }

    /// Resolves when the listeners have stopped, for whatever reason.
    pub async fn stopped(&self) {
        self.thread.stopped().await;
    }
}

impl Drop for RunningControlPlane {
    fn drop(&mut self) {
        if self.thread.is_running() {
            self.thread.stop(false);
        }
    }
}

/// Liveness for container health checks and load balancers: answers while the process serves.
async fn healthz() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Why [`start`] refused to start; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid control plane settings:\n{0}")]
    Settings(Problems),
    #[error(transparent)]
    DataDir(data_dir::DataDirError),
    #[error("cannot open the store at {location}: {source}")]
    Store {
        /// The SQLite path, or the PostgreSQL URL without its password.
        location: String,
        source: StoreError,
    },
    #[error(transparent)]
    AdminToken(#[from] auth::AdminTokenError),
    #[error(transparent)]
    Tls(#[from] GatewayTlsError),
    #[error("cannot listen on {address} ({key}): {source}")]
    Listen {
        address: String,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    LocalAddr(std::io::Error),
    #[error("cannot load the config signing key: {0}")]
    SigningKey(StoreError),
    /// The listeners' thread did not come up (its message says why).
    #[error("{0}")]
    Listeners(String),
}

/// Opens the store, resolves the admin token, starts both listeners and returns once they
/// accept connections.
pub fn start(settings: ControlPlaneSettings) -> Result<RunningControlPlane, StartError> {
    let mut problems = Problems::new();
    settings.validate(&mut problems);
    if !problems.is_empty() {
        return Err(StartError::Settings(problems));
    }
    let data_dir = open_data_dir(&settings)?;
    let store = open_store(&settings)?;
    let (admin_token, source) =
        auth::resolve_admin_token(&settings).map_err(StartError::AdminToken)?;
    auth::announce(&admin_token, &source);

    let tls = gateway_tls_config(&settings.gateway_api).map_err(StartError::Tls)?;
    let bind = |key: &'static str, address: &str| {
        TcpListener::bind(address).map_err(|source| StartError::Listen {
            address: address.to_owned(),
            key,
            source,
        })
    };
    let admin_listener = bind("admin.listen", &settings.admin.listen)?;
    let gateway_listener = bind("gateway_api.listen", &settings.gateway_api.listen)?;
    let admin_addr = admin_listener.local_addr().map_err(StartError::LocalAddr)?;
    let gateway_addr = gateway_listener
        .local_addr()
        .map_err(StartError::LocalAddr)?;
    let gateway_tls = tls.is_some();

    let admin_state = web::Data::new(AdminState {
        store: store.clone(),
    });
    let token_data = web::Data::new(admin_token.clone());
    // One instance for both listeners, so heartbeats received on the gateway listener show in
    // the admin API.
    let gateway_state = web::Data::new(
        GatewayApiState::new(store.clone(), &settings).map_err(StartError::SigningKey)?,
    );

    spawn_store_sync(&gateway_state);

    let gw_state = gateway_state.clone();
    // Before the first request, so that every count lands in the recorder.
    let _ = crate::prometheus::prometheus();
    let metrics_require_token = settings.admin.metrics_require_token;
    let (thread, ()) = ServerThread::spawn("control-plane", move |ready_tx| async move {
        let admin_gw_state = gw_state.clone();
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(admin_state.clone())
                .app_data(token_data.clone())
                .app_data(admin_gw_state.clone())
                .wrap(from_fn(metrics::count_requests))
                .route("/healthz", web::get().to(healthz))
                .service(
                    web::resource("/metrics")
                        .wrap(Condition::new(
                            metrics_require_token,
                            from_fn(auth::require_admin),
                        ))
                        .get(metrics::scrape),
                )
                .configure(dashboard::configure)
                .configure(admin_api::configure_public)
                .service(
                    web::scope(routes::PREFIX)
                        .wrap(from_fn(auth::require_admin))
                        .configure(admin_api::configure_protected)
                        // Gateway keys, tokens, instances, telemetry (gateway_api.rs).
                        .configure(gateway_api::configure_admin),
                )
                .default_service(web::to(admin_api::no_route))
        })
        .workers(2)
        .shutdown_timeout(5)
        .disable_signals()
        .listen(admin_listener);
        let gateway = HttpServer::new(move || {
            App::new()
                .app_data(gw_state.clone())
                .route("/healthz", web::get().to(healthz))
                // The gateway-facing endpoint (gateway_api.rs).
                .configure(gateway_api::configure_gateway_api)
                .default_service(web::to(admin_api::not_found))
        })
        .shutdown_timeout(2)
        .disable_signals();
        let gateway = match tls {
            Some(config) => gateway.listen_rustls_0_23(gateway_listener, config),
            None => gateway.listen(gateway_listener),
        };
        let (admin, gateway) = match (admin, gateway) {
            (Ok(a), Ok(g)) => (a.run(), g.run()),
            (Err(e), _) | (_, Err(e)) => {
                let _ = ready_tx.send(Err(format!("cannot start the listeners: {e}")));
                return;
            }
        };
        let _ = ready_tx.send(Ok((vec![admin.handle(), gateway.handle()], ())));
        let (a, g) = futures_util::future::join(admin, gateway).await;
        for (what, r) in [("admin", a), ("gateway", g)] {
            if let Err(e) = r {
                tracing::error!(listener = what, error = %e, "listener failed");
            }
        }
    })
    .map_err(StartError::Listeners)?;
    tracing::info!(
        admin = %admin_addr,
        gateway = %gateway_addr,
        revision = store.revision(),
        "control plane started"
    );
    Ok(RunningControlPlane {
        admin_addr,
        gateway_addr,
        gateway_tls,
        admin_token,
        store,
        gateway_state,
        thread,
        _data_dir: data_dir,
    })
}

/// Every [`instances::SYNC_EVERY`], exchanges instance status with the store and follows a
/// signing key rotated by another replica; every [`ANALYTICS_PURGE_EVERY`] (and at start),
/// purges analytics older than the retention. On a thread that ends with the control plane (it
/// holds the state weakly).
fn spawn_store_sync(state: &web::Data<GatewayApiState>) {
    let weak = Arc::downgrade(&state.clone().into_inner());
    let spawned = std::thread::Builder::new()
        .name("outpost-store-sync".into())
        .spawn(move || {
            let mut last_purge: Option<std::time::Instant> = None;
            loop {
                if last_purge.is_none_or(|t| t.elapsed() >= ANALYTICS_PURGE_EVERY) {
                    let Some(state) = weak.upgrade() else { return };
                    state.purge_analytics();
                    last_purge = Some(std::time::Instant::now());
                }
                std::thread::sleep(instances::SYNC_EVERY);
                let Some(state) = weak.upgrade() else { return };
                state.sync_instances();
                state.refresh_signing_keys();
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the store sync thread");
    }
}

/// How often each replica deletes analytics older than `analytics.retention_hours` (a
/// minute is their resolution; several replicas purging the same rows is harmless).
pub const ANALYTICS_PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Checks, locks and makes private the data directory before anything reads or writes in it.
fn open_data_dir(settings: &ControlPlaneSettings) -> Result<Option<DataDir>, StartError> {
    // With PostgreSQL nothing is kept locally: the data directory is not used.
    match (&settings.store.data_dir, &settings.store.url) {
        (StoreDir::Dir(dir), None) => DataDir::open(dir, DB_FILE, &[auth::TOKEN_FILE])
            .map(Some)
            .map_err(StartError::DataDir),
        _ => Ok(None),
    }
}

fn open_store(settings: &ControlPlaneSettings) -> Result<Arc<Store>, StartError> {
    let options = StoreOptions {
        change_log_limit: settings.store.change_log_limit,
    };
    let location = store_location(&settings.store);
    let store = Store::connect(&location, options)
        .map_err(|source| StartError::Store {
            location: location.describe(),
            source,
        })?
        // Every candidate configuration is compiled the way a gateway would compile it, so
        // nothing a gateway would refuse (an unsupported policy, say) is ever accepted.
        .with_validator(Box::new(|state: &State| {
            outpost_actors::route_table::validate_config(state.iter_resources())
        }));
    let store = Arc::new(store);
    // Other replicas' commits (PostgreSQL) reach this replica's state and long-polls.
    store.follow();
    Ok(store)
}

/// Why `outpost store copy` refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0} holds no {DB_FILE}: not a control-plane data directory")]
    NoDatabase(PathBuf),
    #[error("--to must be a postgres:// or postgresql:// URL")]
    NotPostgres,
    #[error(transparent)]
    DataDir(data_dir::DataDirError),
    #[error("cannot copy {from} to {to}: {source}")]
    Store {
        from: String,
        to: String,
        source: StoreError,
    },
}

/// `outpost store copy`: the SQLite data directory `from` (locked meanwhile, so no control
/// plane writes to it) into the new PostgreSQL database `to`.
pub fn copy_store(
    from: &Path,
    to: &str,
    ca_file: Option<&Path>,
) -> Result<store::CopyReport, CopyError> {
    if !store::engine::is_postgres_url(to) {
        return Err(CopyError::NotPostgres);
    }
    let db = from.join(DB_FILE);
    if !db.is_file() {
        return Err(CopyError::NoDatabase(from.to_path_buf()));
    }
    let _lock = DataDir::open(from, DB_FILE, &[auth::TOKEN_FILE]).map_err(CopyError::DataDir)?;
    let (source, target) = (
        Location::Sqlite(db),
        Location::Postgres {
            url: to.to_owned(),
            ca_file: ca_file.map(Path::to_path_buf),
        },
    );
    store::copy(&source, &target).map_err(|e| CopyError::Store {
        from: source.describe(),
        to: target.describe(),
        source: e,
    })
}

/// Where `[store]` says the store is: `url` when set, else the SQLite file in `data_dir`.
pub fn store_location(settings: &settings::StoreSettings) -> Location {
    if let Some(url) = &settings.url {
        return Location::Postgres {
            url: url.clone(),
            ca_file: settings.ca_file.clone(),
        };
    }
    match &settings.data_dir {
        StoreDir::Memory => Location::Sqlite(PathBuf::from(":memory:")),
        StoreDir::Dir(dir) => Location::Sqlite(dir.join(DB_FILE)),
    }
}

/// Why the gateway listener's certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum GatewayTlsError {
    #[error("gateway_api.{key} {}: {source}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("gateway_api.tls_cert_file {}: no certificate found", .0.display())]
    NoCertificate(PathBuf),
    #[error("gateway_api TLS certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

fn gateway_tls_config(
    s: &GatewayApiSettings,
) -> Result<Option<rustls::ServerConfig>, GatewayTlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // Validation has made sure both files are set or neither.
    let (Some(cert_file), Some(key_file)) = (&s.tls_cert_file, &s.tls_key_file) else {
        return Ok(None);
    };
    let file_error = |key, path: &PathBuf| {
        let path = path.clone();
        move |source| GatewayTlsError::File { key, path, source }
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(file_error("tls_cert_file", cert_file))?;
    if certs.is_empty() {
        return Err(GatewayTlsError::NoCertificate(cert_file.clone()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(file_error("tls_key_file", key_file))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(Some(config))
}

/// Runs the control plane until SIGINT or SIGTERM, then stops gracefully.
pub fn run(settings: ControlPlaneSettings) -> Result<(), String> {
    crate::logging::init(&settings.log);
    let running = start(settings).map_err(|e| e.to_string())?;
    eprintln!(
        "outpost control plane: management API and dashboard on {}, gateway endpoint on {}",
        running.admin_url(),
        running.gateway_url()
    );
    match crate::signals::wait_for_stop(running.stopped())? {
        crate::signals::Stop::Signal(name) => {
            tracing::info!(signal = name, "stopping");
            running.stop();
            Ok(())
        }
        crate::signals::Stop::Stopped => {
            running.join();
            Err("the control plane's listeners stopped unexpectedly".into())
        }
    }
}
