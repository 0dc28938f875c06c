//! The shared engine: PostgreSQL, for any number of control-plane replicas on one database.
//!
//! The client is `tokio-postgres`, driven by a small runtime of the engine's own (one worker
//! thread): the [`Engine`] calls are blocking, and they hand each query to that runtime and wait
//! on a plain channel. That works from any thread, an actix worker or a test's async body
//! included, where the sync `postgres` crate (a `block_on` inside) would panic.
//!
//! Several replicas, one truth:
//! - A write transaction takes `pg_advisory_xact_lock(WRITE_LOCK)` first, so writers on every
//!   replica queue up; under the lock the replica reads the durable revision, catches up on what
//!   other replicas committed, checks preconditions against that, and writes `revision + 1`.
//!   Revisions are therefore one sequence without gaps or duplicates (and `changes` has them as
//!   its primary key, a second guard).
//! - The commit sends `NOTIFY outpost_revisions` (delivered when the transaction commits); each
//!   replica LISTENs on a connection of its own and catches up when told, and also every
//!   [`FALLBACK_CHECK`] in case a notification was lost (a listener reconnect, say).
//! - Migrations run under a session advisory lock, so replicas started together migrate once.

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;
use super::engine::{
    AnalyticsDump, AnalyticsFilter, AnalyticsKey, AnalyticsRow, AnalyticsSum, BatchId, ChangeRow,
    DUMP_ANALYTICS_SQL, DUMP_BATCHES_SQL, DUMP_LATENCY_SQL, Dump, Engine, GatewayKeyRecord,
    InstanceRow, ResourceRow, SigningKeyRecord, Since, SqlParam, WriteBatch, analytics_sql,
    attach_latency, check_schema_version,
};

mod embedded {
    refinery::embed_migrations!("src/control_plane/store/migrations/postgres");
}

/// Advisory lock keys (arbitrary, fixed: every replica must use the same ones).
const WRITE_LOCK: i64 = 0x6f75_7470_6f73_7401; // "outpost" + 1
const MIGRATION_LOCK: i64 = 0x6f75_7470_6f73_7402;
/// The channel commits notify and replicas listen on.
pub const CHANNEL: &str = "outpost_revisions";
/// How often a replica checks for new revisions without being told (lost notifications).
pub const FALLBACK_CHECK: Duration = Duration::from_secs(2);
/// Pause before a dropped listener connection is opened again, doubling while the database
/// stays unreachable, up to [`LISTENER_RETRY_MAX`].
const LISTENER_RETRY: Duration = Duration::from_millis(500);
const LISTENER_RETRY_MAX: Duration = Duration::from_secs(10);

const INSERT_BATCH: &str = "INSERT INTO analytics_batches (gateway, instance_id, sequence, received_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
const ADD_ANALYTICS: &str = "INSERT INTO analytics (minute, gateway, api, operation, product, \
     subscription, status, requests, errors, cache_hits, request_bytes, response_bytes, \
     total_duration_us, max_duration_us, backend_duration_us) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
     ON CONFLICT (minute, gateway, api, operation, product, subscription, status) DO UPDATE SET \
     requests = analytics.requests + excluded.requests, \
     errors = analytics.errors + excluded.errors, \
     cache_hits = analytics.cache_hits + excluded.cache_hits, \
     request_bytes = analytics.request_bytes + excluded.request_bytes, \
     response_bytes = analytics.response_bytes + excluded.response_bytes, \
     total_duration_us = analytics.total_duration_us + excluded.total_duration_us, \
     max_duration_us = GREATEST(analytics.max_duration_us, excluded.max_duration_us), \
     backend_duration_us = analytics.backend_duration_us + excluded.backend_duration_us";
const ADD_LATENCY: &str = "INSERT INTO analytics_latency (minute, gateway, api, operation, \
     product, subscription, status, bucket, requests) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (minute, gateway, api, operation, product, subscription, status, bucket) \
     DO UPDATE SET requests = analytics_latency.requests + excluded.requests";

/// Adds `rows` (the batch already recorded), pipelined: every statement is sent before the
/// answers are awaited, so a batch costs about one round trip, not one per row.
async fn add_rows(c: &Client, rows: &[AnalyticsRow]) -> Result<(), tokio_postgres::Error> {
    let add = c.prepare(ADD_ANALYTICS).await?;
    let latency = c.prepare(ADD_LATENCY).await?;
    // The INTEGER columns, as the i32s PostgreSQL expects, owned here for the borrows below.
    let statuses: Vec<i32> = rows.iter().map(|r| r.key.status as i32).collect();
    let buckets: Vec<Vec<i32>> = rows
        .iter()
        .map(|r| r.latency.iter().map(|(b, _)| *b as i32).collect())
        .collect();
    let mut calls = Vec::new();
    let mut bucket_calls = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let k = &r.key;
        let params: Vec<&(dyn ToSql + Sync)> = vec![
            &k.minute,
            &k.gateway,
            &k.api,
            &k.operation,
            &k.product,
            &k.subscription,
            &statuses[i],
            &r.requests,
            &r.errors,
            &r.cache_hits,
            &r.request_bytes,
            &r.response_bytes,
            &r.total_duration_us,
            &r.max_duration_us,
            &r.backend_duration_us,
        ];
        calls.push(c.execute_raw(&add, params));
        for (j, (_, n)) in r.latency.iter().enumerate() {
            let params: Vec<&(dyn ToSql + Sync)> = vec![
                &k.minute,
                &k.gateway,
                &k.api,
                &k.operation,
                &k.product,
                &k.subscription,
                &statuses[i],
                &buckets[i][j],
                n,
            ];
            bucket_calls.push(c.execute_raw(&latency, params));
        }
    }
    futures_util::future::try_join_all(calls).await?;
    futures_util::future::try_join_all(bucket_calls).await?;
    Ok(())
}

fn pg_param(p: &SqlParam) -> Box<dyn ToSql + Sync + Send> {
    match p {
        SqlParam::Int(i) => Box::new(*i),
        SqlParam::Text(t) => Box::new(t.clone()),
    }
}

fn groups_of(row: &tokio_postgres::Row, n: usize) -> Vec<String> {
    (0..n).map(|i| row.get::<_, String>(i)).collect()
}

#[derive(Clone)]
enum Tls {
    None,
    Rustls(MakeRustlsConnect),
}

pub struct PostgresEngine {
    runtime: Option<tokio::runtime::Runtime>,
    config: Config,
    tls: Tls,
    client: Arc<Client>,
    in_transaction: bool,
}

impl Drop for PostgresEngine {
    fn drop(&mut self) {
        // Not `drop(runtime)`: that blocks, and panics when the store is dropped inside an
        // async context (a test body, say).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl PostgresEngine {
    /// Connects, migrates the schema (refusing one newer than this binary), and returns the
    /// engine plus a receiver that gets a message whenever another replica may have committed.
    pub fn open(
        url: &str,
        ca_file: Option<&Path>,
    ) -> Result<(PostgresEngine, std_mpsc::Receiver<()>), StoreError> {
        let mut config = Config::from_str(url)
            .map_err(|e| StoreError::Connect(format!("store.url is not a PostgreSQL URL: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("outpost-control-plane");
        }
        let tls = match ca_file {
            Some(path) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Tls::Rustls(rustls_connector(path)?)
            }
            None => Tls::None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("outpost-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Connect(format!("store runtime: {e}")))?;
        let (notify_tx, notify_rx) = std_mpsc::channel();
        let client = {
            let (config, tls) = (config.clone(), tls.clone());
            wait(&runtime, async move {
                let mut client = connect(&config, &tls, None).await?;
                migrate(&mut client).await?;
                Ok::<_, StoreError>(client)
            })??
        };
        runtime.spawn(listen(config.clone(), tls.clone(), notify_tx));
        Ok((
            PostgresEngine {
                runtime: Some(runtime),
                config,
                tls,
                client: Arc::new(client),
                in_transaction: false,
            },
            notify_rx,
        ))
    }

    /// Runs `f` with the client on the engine's runtime and waits for its answer. A client whose
    /// connection died is replaced first (outside a transaction: inside one, the transaction
    /// died with it and the error says so).
    fn run<T, F, Fut>(&mut self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        let runtime = self.runtime.as_ref().expect("runtime lives until drop");
        if self.client.is_closed() && !self.in_transaction {
            let (config, tls) = (self.config.clone(), self.tls.clone());
            let client = wait(runtime, async move { connect(&config, &tls, None).await })??;
            self.client = Arc::new(client);
        }
        Ok(wait(runtime, f(self.client.clone()))??)
    }

    fn exec(&mut self, sql: &'static str) -> Result<(), StoreError> {
        self.run(move |c| async move { c.batch_execute(sql).await })
    }
}

/// Runs `fut` on `runtime` and blocks the calling thread (not a runtime thread) for the answer.
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std_mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| StoreError::Connect("the store's runtime stopped".into()))
}

fn rustls_connector(ca_file: &Path) -> Result<MakeRustlsConnect, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let problem =
        |what: String| StoreError::Connect(format!("store.ca_file {}: {what}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| problem(e.to_string()))? {
        let cert = cert.map_err(|e| problem(e.to_string()))?;
        roots.add(cert).map_err(|e| problem(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(problem("no certificate found".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| problem(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

async fn connect(
    config: &Config,
    tls: &Tls,
    notify: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) -> Result<Client, StoreError> {
    let connected = match tls {
        Tls::None => connect_with(config, NoTls, notify).await,
        Tls::Rustls(tls) => connect_with(config, tls.clone(), notify).await,
    };
    connected.map_err(|e| StoreError::Connect(describe_connect_error(&e)))
}

fn describe_connect_error(e: &tokio_postgres::Error) -> String {
    // The source (refused, TLS, authentication) is the useful part; the URL is not repeated, as
    // it may hold a password.
    match std::error::Error::source(e) {
        Some(source) => format!("cannot connect to PostgreSQL: {e}: {source}"),
        None => format!("cannot connect to PostgreSQL: {e}"),
    }
}

/// Connects and drives the connection on the current runtime; notifications (on a listening
/// connection) go to `notify`.
async fn connect_with<T>(
    config: &Config,
    tls: T,
    notify: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    <T as MakeTlsConnect<Socket>>::TlsConnect: Send,
    <<T as MakeTlsConnect<Socket>>::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if let Some(n) = &notify {
                        let _ = n.send(());
                    }
                }
                Ok(AsyncMessage::Notice(notice)) => {
                    tracing::debug!(notice = %notice, "PostgreSQL notice");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL connection lost");
                    break;
                }
            }
        }
    });
    Ok(client)
}

/// Keeps a connection LISTENing on [`CHANNEL`] and tells the store of every notification, of
/// every reconnect (something may have been missed meanwhile) and, as a fallback, every
/// [`FALLBACK_CHECK`]. Ends when the store (the receiver) is gone.
async fn listen(config: Config, tls: Tls, to_store: std_mpsc::Sender<()>) {
    let mut retry = LISTENER_RETRY;
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let client = match connect(&config, &tls, Some(tx)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, retry_ms = retry.as_millis(), "store listener: cannot connect; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(LISTENER_RETRY_MAX);
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            tracing::warn!(error = %e, retry_ms = retry.as_millis(), "store listener: LISTEN failed; retrying");
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(LISTENER_RETRY_MAX);
            continue;
        }
        retry = LISTENER_RETRY;
        // Listening from here: catch up on whatever happened before.
        if to_store.send(()).is_err() {
            return;
        }
        // A notification, or the fallback period without one: look. `Ok(None)`: the
        // connection ended, listen again.
        while let Ok(Some(())) | Err(_) = tokio::time::timeout(FALLBACK_CHECK, rx.recv()).await {
            if to_store.send(()).is_err() {
                return;
            }
        }
        tokio::time::sleep(LISTENER_RETRY).await;
    }
}

async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .query_one("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = migrate_locked(client).await;
    // Also released when the connection closes, so an error here is no stuck lock.
    let _ = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn migrate_locked(client: &mut Client) -> Result<(), StoreError> {
    let runner = embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true);
    let known = runner
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0);
    // refinery's history table is made by the first run; before that nothing is applied.
    let has_history: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let applied = if has_history {
        runner
            .get_last_applied_migration_async(client)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?
            .map(|m| i64::from(m.version()))
    } else {
        None
    };
    check_schema_version("PostgreSQL", applied, known)?;
    let report = runner
        .run_async(client)
        .await
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    for m in report.applied_migrations() {
        tracing::info!(
            engine = "postgres",
            version = m.version(),
            name = m.name(),
            "schema migrated"
        );
    }
    Ok(())
}

async fn dump(c: &Client) -> Result<Dump, tokio_postgres::Error> {
    let meta = c
        .query("SELECT key, value FROM meta ORDER BY key", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let resources = c
        .query("SELECT kind, name, revision, body FROM resources", &[])
        .await?
        .iter()
        .map(|r| ResourceRow {
            kind: r.get(0),
            name: r.get(1),
            revision: r.get(2),
            body: r.get(3),
        })
        .collect();
    let gateway_keys = c
        .query(
            "SELECT gateway, primary_key, secondary_key FROM gateway_keys ORDER BY gateway",
            &[],
        )
        .await?
        .iter()
        .map(|r| GatewayKeyRecord {
            gateway: r.get(0),
            primary_key: r.get(1),
            secondary_key: r.get(2),
        })
        .collect();
    Ok(Dump {
        meta,
        resources,
        changes: changes(c, 0).await?,
        gateway_keys,
        signing_keys: signing_keys(c).await?,
    })
}

fn analytics_key(r: &tokio_postgres::Row) -> AnalyticsKey {
    AnalyticsKey {
        minute: r.get(0),
        gateway: r.get(1),
        api: r.get(2),
        operation: r.get(3),
        product: r.get(4),
        subscription: r.get(5),
        status: i64::from(r.get::<_, i32>(6)),
    }
}

/// The analytics tables' rows (inside the caller's read transaction), as stored.
async fn dump_analytics(
    c: &Client,
) -> Result<
    (
        Vec<AnalyticsRow>,
        Vec<(AnalyticsKey, i64, i64)>,
        Vec<(BatchId, i64)>,
    ),
    tokio_postgres::Error,
> {
    let rows = c
        .query(DUMP_ANALYTICS_SQL, &[])
        .await?
        .iter()
        .map(|r| AnalyticsRow {
            key: analytics_key(r),
            requests: r.get(7),
            errors: r.get(8),
            cache_hits: r.get(9),
            request_bytes: r.get(10),
            response_bytes: r.get(11),
            total_duration_us: r.get(12),
            max_duration_us: r.get(13),
            backend_duration_us: r.get(14),
            latency: Vec::new(),
        })
        .collect();
    let latency = c
        .query(DUMP_LATENCY_SQL, &[])
        .await?
        .iter()
        .map(|r| (analytics_key(r), i64::from(r.get::<_, i32>(7)), r.get(8)))
        .collect();
    let batches = c
        .query(DUMP_BATCHES_SQL, &[])
        .await?
        .iter()
        .map(|r| {
            (
                BatchId {
                    gateway: r.get(0),
                    instance_id: r.get(1),
                    sequence: r.get(2),
                },
                r.get(3),
            )
        })
        .collect();
    Ok((rows, latency, batches))
}

/// Rows per pipelined round of a copy: bounds the statements in flight at once.
const IMPORT_CHUNK: usize = 5_000;

async fn changes(c: &Client, after: i64) -> Result<Vec<ChangeRow>, tokio_postgres::Error> {
    Ok(c.query(
        "SELECT revision, seq, kind, name, before, before_revision, after FROM changes \
             WHERE revision > $1 ORDER BY revision, seq",
        &[&after],
    )
    .await?
    .iter()
    .map(|r| ChangeRow {
        revision: r.get(0),
        seq: r.get(1),
        kind: r.get(2),
        name: r.get(3),
        before: r.get(4),
        before_revision: r.get(5),
        after: r.get(6),
    })
    .collect())
}

async fn signing_keys(c: &Client) -> Result<Vec<SigningKeyRecord>, tokio_postgres::Error> {
    Ok(c.query(
        "SELECT id, public_key, private_key, created_at, endorsed_by, endorsement \
             FROM signing_keys ORDER BY id",
        &[],
    )
    .await?
    .iter()
    .map(|r| SigningKeyRecord {
        id: r.get(0),
        public_key: r.get(1),
        private_key: r.get(2),
        created_at: r.get(3),
        endorsed_by: r.get(4),
        endorsement: r.get(5),
    })
    .collect())
}

async fn meta_text(c: &Client, key: &str) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(
        c.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
            .await?
            .map(|r| r.get(0)),
    )
}

async fn set_meta_text(c: &Client, key: &str, value: &str) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2",
        &[&key, &value],
    )
    .await?;
    Ok(())
}

fn parse_meta(key: &str, value: Option<String>) -> Result<u64, StoreError> {
    value
        .map(|s| {
            s.parse()
                .map_err(|_| StoreError::Corrupt(format!("meta {key} = {s:?}")))
        })
        .transpose()
        .map(Option::unwrap_or_default)
}

/// What happened after `after`, read on `c` (inside a transaction the caller opened).
async fn since(c: &Client, after: u64) -> Result<Result<Since, StoreError>, tokio_postgres::Error> {
    let floor = meta_text(c, "log_floor").await?;
    let revision = meta_text(c, "revision").await?;
    let (floor, revision) = match (
        parse_meta("log_floor", floor),
        parse_meta("revision", revision),
    ) {
        (Ok(f), Ok(r)) => (f, r),
        (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
    };
    if after < floor {
        return Ok(Ok(Since::Everything(dump(c).await?)));
    }
    Ok(Ok(Since::Changes {
        revision,
        floor,
        changes: changes(c, after as i64).await?,
    }))
}

const INSERT_CHANGE: &str = "INSERT INTO changes (revision, seq, kind, name, before, before_revision, after) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

async fn insert_change(c: &Client, ch: &ChangeRow) -> Result<(), tokio_postgres::Error> {
    let params: [&(dyn ToSql + Sync); 7] = [
        &ch.revision,
        &ch.seq,
        &ch.kind,
        &ch.name,
        &ch.before,
        &ch.before_revision,
        &ch.after,
    ];
    c.execute(INSERT_CHANGE, &params).await?;
    Ok(())
}

impl Engine for PostgresEngine {
    fn dump(&mut self) -> Result<Dump, StoreError> {
        self.run(|c| async move {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            let d = dump(&c).await;
            c.batch_execute("COMMIT").await?;
            d
        })
    }

    fn begin(&mut self) -> Result<u64, StoreError> {
        let revision = self.run(|c| async move {
            // READ COMMITTED: every statement after the lock sees what the previous holder
            // committed (a snapshot taken before the lock would not).
            c.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                .await?;
            let locked = async {
                c.query_one("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                    .await?;
                meta_text(&c, "revision").await
            }
            .await;
            if locked.is_err() {
                let _ = c.batch_execute("ROLLBACK").await;
            }
            locked
        })?;
        self.in_transaction = true;
        match parse_meta("revision", revision) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn since(&mut self, after: u64) -> Result<Since, StoreError> {
        self.run(move |c| async move { since(&c, after).await })?
    }

    fn write(&mut self, b: &WriteBatch) -> Result<(), StoreError> {
        let upserts = b.upserts.clone();
        let deletes = b.deletes.clone();
        let gateways = b.deleted_gateways.clone();
        let change_rows = b.changes.clone();
        let revision = b.revision;
        let floor = b.new_floor;
        self.run(move |c| async move {
            for r in &upserts {
                c.execute(
                    "INSERT INTO resources (kind, name, revision, body) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (kind, name) DO UPDATE SET revision = $3, body = $4",
                    &[&r.kind, &r.name, &r.revision, &r.body],
                )
                .await?;
            }
            for (kind, name) in &deletes {
                c.execute(
                    "DELETE FROM resources WHERE kind = $1 AND name = $2",
                    &[kind, name],
                )
                .await?;
            }
            for g in &gateways {
                c.execute("DELETE FROM gateway_keys WHERE gateway = $1", &[g])
                    .await?;
            }
            for ch in &change_rows {
                insert_change(&c, ch).await?;
            }
            let revision_text = revision.to_string();
            set_meta_text(&c, "revision", &revision_text).await?;
            if let Some(floor) = floor {
                c.execute(
                    "DELETE FROM changes WHERE revision <= $1",
                    &[&(floor as i64)],
                )
                .await?;
                set_meta_text(&c, "log_floor", &floor.to_string()).await?;
            }
            // Delivered to every listener when (and only if) the transaction commits.
            c.query_one("SELECT pg_notify($1, $2)", &[&CHANNEL, &revision_text])
                .await?;
            Ok(())
        })
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let result = self.exec("COMMIT");
        self.in_transaction = false;
        result
    }

    fn rollback(&mut self) {
        if let Err(e) = self.exec("ROLLBACK") {
            tracing::error!(error = %e, "store rollback failed");
        }
        self.in_transaction = false;
    }

    fn read_since(&mut self, after: u64) -> Result<Since, StoreError> {
        self.run(move |c| async move {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            let s = since(&c, after).await;
            c.batch_execute("COMMIT").await?;
            s
        })?
    }

    fn gateway_keys(&mut self, gateway: &str) -> Result<Option<GatewayKeyRecord>, StoreError> {
        let gateway = gateway.to_owned();
        self.run(move |c| async move {
            Ok(c.query_opt(
                "SELECT primary_key, secondary_key FROM gateway_keys WHERE gateway = $1",
                &[&gateway],
            )
            .await?
            .map(|r| GatewayKeyRecord {
                gateway: gateway.clone(),
                primary_key: r.get(0),
                secondary_key: r.get(1),
            }))
        })
    }

    fn insert_gateway_keys(
        &mut self,
        keys: &GatewayKeyRecord,
    ) -> Result<GatewayKeyRecord, StoreError> {
        let k = keys.clone();
        self.run(move |c| async move {
            c.execute(
                "INSERT INTO gateway_keys (gateway, primary_key, secondary_key) VALUES ($1, $2, $3) \
                 ON CONFLICT (gateway) DO NOTHING",
                &[&k.gateway, &k.primary_key, &k.secondary_key],
            )
            .await?;
            let r = c
                .query_one(
                    "SELECT primary_key, secondary_key FROM gateway_keys WHERE gateway = $1",
                    &[&k.gateway],
                )
                .await?;
            Ok(GatewayKeyRecord {
                gateway: k.gateway,
                primary_key: r.get(0),
                secondary_key: r.get(1),
            })
        })
    }

    fn update_gateway_keys(&mut self, keys: &GatewayKeyRecord) -> Result<(), StoreError> {
        let k = keys.clone();
        self.run(move |c| async move {
            c.execute(
                "UPDATE gateway_keys SET primary_key = $2, secondary_key = $3 WHERE gateway = $1",
                &[&k.gateway, &k.primary_key, &k.secondary_key],
            )
            .await?;
            Ok(())
        })
    }

    fn signing_keys(&mut self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.run(|c| async move { signing_keys(&c).await })
    }

    fn insert_signing_key(&mut self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        let k = key.clone();
        self.run(move |c| async move {
            c.execute(
                "INSERT INTO signing_keys (id, public_key, private_key, created_at, endorsed_by, endorsement) \
                 VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM signing_keys), $1, $2, $3, $4, $5)",
                &[&k.public_key, &k.private_key, &k.created_at, &k.endorsed_by, &k.endorsement],
            )
            .await?;
            Ok(())
        })
    }

    fn erase_old_private_keys(&mut self) -> Result<(), StoreError> {
        self.exec(
            "UPDATE signing_keys SET private_key = NULL WHERE id < (SELECT MAX(id) FROM signing_keys)",
        )
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.run(move |c| async move { meta_text(&c, &key).await })
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run(move |c| async move { set_meta_text(&c, &key, &value).await })
    }

    fn save_instances(&mut self, rows: &[InstanceRow]) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        self.run(move |c| async move {
            c.batch_execute("BEGIN").await?;
            let result = async {
                for r in &rows {
                    c.execute(
                        "INSERT INTO instances (gateway, instance_id, last_seen, record) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (gateway, instance_id) DO UPDATE \
                         SET last_seen = excluded.last_seen, record = excluded.record \
                         WHERE excluded.last_seen > instances.last_seen",
                        &[&r.gateway, &r.instance_id, &r.last_seen, &r.record],
                    )
                    .await?;
                }
                Ok::<_, tokio_postgres::Error>(())
            }
            .await;
            match result {
                Ok(()) => c.batch_execute("COMMIT").await,
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        })
    }

    fn load_instances(&mut self, seen_since: &str) -> Result<Vec<InstanceRow>, StoreError> {
        let since = seen_since.to_owned();
        self.run(move |c| async move {
            Ok(c.query(
                "SELECT gateway, instance_id, last_seen, record FROM instances WHERE last_seen >= $1",
                &[&since],
            )
            .await?
            .iter()
            .map(|r| InstanceRow {
                gateway: r.get(0),
                instance_id: r.get(1),
                last_seen: r.get(2),
                record: r.get(3),
            })
            .collect())
        })
    }

    fn forget_instances(&mut self, seen_before: &str) -> Result<(), StoreError> {
        let before = seen_before.to_owned();
        self.run(move |c| async move {
            c.execute("DELETE FROM instances WHERE last_seen < $1", &[&before])
                .await?;
            Ok(())
        })
    }

    fn add_analytics(
        &mut self,
        batch: &BatchId,
        received_at: i64,
        rows: &[AnalyticsRow],
    ) -> Result<bool, StoreError> {
        let batch = batch.clone();
        let rows = rows.to_vec();
        self.run(move |c| async move {
            c.batch_execute("BEGIN").await?;
            let result = async {
                // First, so a replica adding the same batch concurrently waits here for this
                // transaction and then finds the row: one of the two adds.
                let new = c
                    .execute(
                        INSERT_BATCH,
                        &[
                            &batch.gateway,
                            &batch.instance_id,
                            &batch.sequence,
                            &received_at,
                        ],
                    )
                    .await?;
                if new == 0 {
                    return Ok(false);
                }
                add_rows(&c, &rows).await?;
                Ok::<_, tokio_postgres::Error>(true)
            }
            .await;
            match result {
                Ok(added) => c.batch_execute("COMMIT").await.map(|()| added),
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        })
    }

    fn analytics(&mut self, filter: &AnalyticsFilter) -> Result<Vec<AnalyticsSum>, StoreError> {
        let (sums_sql, latency_sql, params) = analytics_sql(filter, |n| format!("${n}"));
        let groups = filter.group_by.len();
        self.run(move |c| async move {
            let params: Vec<Box<dyn ToSql + Sync + Send>> = params.iter().map(pg_param).collect();
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            // One snapshot for both queries.
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            let read = async {
                let sums = c.query(&sums_sql, &refs).await?;
                let latency = c.query(&latency_sql, &refs).await?;
                Ok::<_, tokio_postgres::Error>((sums, latency))
            }
            .await;
            let _ = c.batch_execute("COMMIT").await;
            let (sums, latency) = read?;
            let mut sums: Vec<AnalyticsSum> = sums
                .iter()
                .map(|r| AnalyticsSum {
                    group: groups_of(r, groups),
                    requests: r.get(groups),
                    errors: r.get(groups + 1),
                    cache_hits: r.get(groups + 2),
                    request_bytes: r.get(groups + 3),
                    response_bytes: r.get(groups + 4),
                    total_duration_us: r.get(groups + 5),
                    max_duration_us: r.get(groups + 6),
                    backend_duration_us: r.get(groups + 7),
                    latency: Vec::new(),
                })
                .collect();
            let latency = latency
                .iter()
                .map(|r| (groups_of(r, groups), r.get(groups), r.get(groups + 1)))
                .collect();
            attach_latency(&mut sums, latency);
            Ok(sums)
        })
    }

    fn purge_analytics(&mut self, before_minute: i64) -> Result<u64, StoreError> {
        self.run(move |c| async move {
            c.batch_execute("BEGIN").await?;
            let result = async {
                let deleted = c
                    .execute("DELETE FROM analytics WHERE minute < $1", &[&before_minute])
                    .await?;
                c.execute(
                    "DELETE FROM analytics_latency WHERE minute < $1",
                    &[&before_minute],
                )
                .await?;
                c.execute(
                    "DELETE FROM analytics_batches WHERE received_at < $1",
                    &[&before_minute],
                )
                .await?;
                Ok::<_, tokio_postgres::Error>(deleted)
            }
            .await;
            match result {
                Ok(n) => c.batch_execute("COMMIT").await.map(|()| n),
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        })
    }

    fn dump_analytics(&mut self) -> Result<AnalyticsDump, StoreError> {
        let (rows, latency, batches) = self.run(|c| async move {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            let d = dump_analytics(&c).await;
            c.batch_execute("COMMIT").await?;
            d
        })?;
        AnalyticsDump::assemble(rows, latency, batches)
    }

    fn import(&mut self, d: &Dump, analytics: &AnalyticsDump) -> Result<(), StoreError> {
        let d = d.clone();
        let analytics = analytics.clone();
        self.run(move |c| async move {
            c.batch_execute("BEGIN").await?;
            let result = async {
                c.query_one("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                    .await?;
                for (k, v) in &d.meta {
                    set_meta_text(&c, k, v).await?;
                }
                for r in &d.resources {
                    c.execute(
                        "INSERT INTO resources (kind, name, revision, body) VALUES ($1, $2, $3, $4)",
                        &[&r.kind, &r.name, &r.revision, &r.body],
                    )
                    .await?;
                }
                for ch in &d.changes {
                    insert_change(&c, ch).await?;
                }
                for g in &d.gateway_keys {
                    c.execute(
                        "INSERT INTO gateway_keys (gateway, primary_key, secondary_key) VALUES ($1, $2, $3)",
                        &[&g.gateway, &g.primary_key, &g.secondary_key],
                    )
                    .await?;
                }
                for k in &d.signing_keys {
                    c.execute(
                        "INSERT INTO signing_keys (id, public_key, private_key, created_at, endorsed_by, endorsement) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[&k.id, &k.public_key, &k.private_key, &k.created_at, &k.endorsed_by, &k.endorsement],
                    )
                    .await?;
                }
                // The target is empty, so adding is inserting; the sums are kept as they are.
                for rows in analytics.rows.chunks(IMPORT_CHUNK) {
                    add_rows(&c, rows).await?;
                }
                let insert_batch = c.prepare(INSERT_BATCH).await?;
                for batches in analytics.batches.chunks(IMPORT_CHUNK) {
                    let calls = batches.iter().map(|(b, received_at)| {
                        let params: Vec<&(dyn ToSql + Sync)> =
                            vec![&b.gateway, &b.instance_id, &b.sequence, received_at];
                        c.execute_raw(&insert_batch, params)
                    });
                    futures_util::future::try_join_all(calls).await?;
                }
                // Replicas already running learn of the copied revision at once.
                let revision = d.meta_u64("revision").unwrap_or_default().to_string();
                c.query_one("SELECT pg_notify($1, $2)", &[&CHANNEL, &revision])
                    .await?;
                Ok::<_, tokio_postgres::Error>(())
            }
            .await;
            match result {
                Ok(()) => c.batch_execute("COMMIT").await,
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        })
    }
}
