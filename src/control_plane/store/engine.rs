//! What the store asks of a database engine: rows in, rows out, and a write transaction that
//! excludes every other writer — on this process and, for PostgreSQL, on every other replica.
//!
//! The [`Store`](super::Store) keeps the logic (validation, preconditions, the in-memory state
//! and change log); an engine only moves rows. Rows are the stored text (JSON bodies), not
//! decoded resources, so `outpost store copy` moves them between engines byte for byte.

use std::path::PathBuf;

use super::StoreError;

/// Where a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file, or `:memory:`.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…`); with `ca_file`, TLS that trusts that CA only.
    Postgres {
        url: String,
        ca_file: Option<PathBuf>,
    },
}

impl Location {
    /// `postgres://` and `postgresql://` URLs are PostgreSQL; anything else is a SQLite path.
    pub fn parse(url_or_path: &str, ca_file: Option<PathBuf>) -> Location {
        if is_postgres_url(url_or_path) {
            Location::Postgres {
                url: url_or_path.to_owned(),
                ca_file,
            }
        } else {
            Location::Sqlite(PathBuf::from(url_or_path))
        }
    }

    /// For messages: the SQLite path, or the PostgreSQL URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres { url, .. } => redact_url(url),
        }
    }
}

pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{masked}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// One row of `resources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRow {
    pub kind: String,
    pub name: String,
    pub revision: i64,
    pub body: String,
}

/// One row of `changes`: the before- and after-image of one resource in one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    pub revision: i64,
    pub seq: i64,
    pub kind: String,
    pub name: String,
    pub before: Option<String>,
    pub before_revision: Option<i64>,
    pub after: Option<String>,
}

/// One row of `signing_keys`, private key included (never leaves the store but for a copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub id: i64,
    pub public_key: String,
    pub private_key: Option<String>,
    pub created_at: String,
    pub endorsed_by: Option<String>,
    pub endorsement: Option<String>,
}

/// One row of `gateway_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayKeyRecord {
    pub gateway: String,
    pub primary_key: String,
    pub secondary_key: String,
}

/// One row of `instances`: a gateway instance's last heartbeat record (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub gateway: String,
    pub instance_id: String,
    /// RFC 3339, UTC, microseconds, `Z`: text order is time order.
    pub last_seen: String,
    pub record: String,
}

/// The key of one analytics row (one minute of one series).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AnalyticsKey {
    /// Unix seconds of the minute's start.
    pub minute: i64,
    pub gateway: String,
    pub api: String,
    pub operation: String,
    pub product: String,
    pub subscription: String,
    pub status: i64,
}

/// What one telemetry batch adds to one analytics row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnalyticsRow {
    pub key: AnalyticsKey,
    pub requests: i64,
    pub errors: i64,
    pub cache_hits: i64,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub total_duration_us: i64,
    pub max_duration_us: i64,
    pub backend_duration_us: i64,
    /// `(bucket, requests)`, non-zero only.
    pub latency: Vec<(i64, i64)>,
}

/// A telemetry batch's identity, recorded with it for de-duplication across replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchId {
    pub gateway: String,
    pub instance_id: String,
    pub sequence: i64,
}

/// A dimension analytics can be grouped by (a column of the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dimension {
    Minute,
    Gateway,
    Api,
    Operation,
    Product,
    Subscription,
    Status,
}

impl Dimension {
    /// The column; a fixed name, so it can be spliced into SQL.
    pub fn column(self) -> &'static str {
        match self {
            Dimension::Minute => "minute",
            Dimension::Gateway => "gateway",
            Dimension::Api => "api",
            Dimension::Operation => "operation",
            Dimension::Product => "product",
            Dimension::Subscription => "subscription",
            Dimension::Status => "status",
        }
    }
}

/// Which analytics rows to add up, and by what.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnalyticsFilter {
    /// Minutes `from_minute <= minute < to_minute` (unix seconds).
    pub from_minute: i64,
    pub to_minute: i64,
    pub gateway: Option<String>,
    pub api: Option<String>,
    pub operation: Option<String>,
    pub product: Option<String>,
    pub subscription: Option<String>,
    /// Group by these dimensions, in this order; empty: one total.
    pub group_by: Vec<Dimension>,
}

/// One group of summed analytics rows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnalyticsSum {
    /// The group's value of each `group_by` dimension, as text, in order.
    pub group: Vec<String>,
    pub requests: i64,
    pub errors: i64,
    pub cache_hits: i64,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub total_duration_us: i64,
    pub max_duration_us: i64,
    pub backend_duration_us: i64,
    /// `(bucket, requests)`, ascending.
    pub latency: Vec<(i64, i64)>,
}

/// A query parameter of the analytics SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlParam {
    Int(i64),
    Text(String),
}

/// The analytics queries for `filter`: (sums per group, latency per group and bucket), with
/// their parameters. `placeholder(n)` writes the engine's n-th (1-based) parameter. Both
/// queries select the group columns first, as text.
pub fn analytics_sql(
    filter: &AnalyticsFilter,
    placeholder: fn(usize) -> String,
) -> (String, String, Vec<SqlParam>) {
    let mut params = vec![
        SqlParam::Int(filter.from_minute),
        SqlParam::Int(filter.to_minute),
    ];
    let mut wheres = format!(
        "minute >= {} AND minute < {}",
        placeholder(1),
        placeholder(2)
    );
    for (column, value) in [
        ("gateway", &filter.gateway),
        ("api", &filter.api),
        ("operation", &filter.operation),
        ("product", &filter.product),
        ("subscription", &filter.subscription),
    ] {
        if let Some(v) = value {
            params.push(SqlParam::Text(v.clone()));
            wheres.push_str(&format!(" AND {column} = {}", placeholder(params.len())));
        }
    }
    let groups: Vec<&str> = filter.group_by.iter().map(|d| d.column()).collect();
    let select: String = groups
        .iter()
        .map(|c| format!("CAST({c} AS TEXT), "))
        .collect();
    let group_by = if groups.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", groups.join(", "))
    };
    // PostgreSQL sums BIGINTs as NUMERIC: cast back. No group and no row: one row of zeros.
    let sum = |c: &str| format!("CAST(COALESCE(SUM({c}), 0) AS BIGINT)");
    let sums = format!(
        "SELECT {select}{}, {}, {}, {}, {}, {}, CAST(COALESCE(MAX(max_duration_us), 0) AS BIGINT), \
         {} FROM analytics WHERE {wheres}{group_by}",
        sum("requests"),
        sum("errors"),
        sum("cache_hits"),
        sum("request_bytes"),
        sum("response_bytes"),
        sum("total_duration_us"),
        sum("backend_duration_us"),
    );
    let latency_group = if groups.is_empty() {
        " GROUP BY bucket".to_owned()
    } else {
        format!(" GROUP BY {}, bucket", groups.join(", "))
    };
    let latency = format!(
        "SELECT {select}CAST(bucket AS BIGINT), {} FROM analytics_latency WHERE {wheres}{latency_group}",
        sum("requests")
    );
    (sums, latency, params)
}

/// Puts latency rows `(group, bucket, requests)` into their groups' sums. A group with latency
/// but no sums row cannot happen (both are written in one transaction); it is skipped.
pub fn attach_latency(sums: &mut [AnalyticsSum], latency: Vec<(Vec<String>, i64, i64)>) {
    let index: std::collections::HashMap<Vec<String>, usize> = sums
        .iter()
        .enumerate()
        .map(|(i, s)| (s.group.clone(), i))
        .collect();
    for (group, bucket, n) in latency {
        if let Some(&i) = index.get(&group) {
            sums[i].latency.push((bucket, n));
        }
    }
    for s in sums.iter_mut() {
        s.latency.sort_unstable();
    }
}

/// Every table's rows: what a store loads at start (or when too far behind to catch up from the
/// change log) and what `store copy` moves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// `revision`, `log_floor` and any other metadata, as stored (text).
    pub meta: Vec<(String, String)>,
    pub resources: Vec<ResourceRow>,
    /// Ordered by revision, then seq.
    pub changes: Vec<ChangeRow>,
    pub gateway_keys: Vec<GatewayKeyRecord>,
    /// Ordered by id (oldest first).
    pub signing_keys: Vec<SigningKeyRecord>,
}

impl Dump {
    pub fn meta_u64(&self, key: &str) -> Result<u64, StoreError> {
        match self.meta.iter().find(|(k, _)| k == key) {
            None => Ok(0),
            Some((_, v)) => v
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("meta {key} = {v:?}"))),
        }
    }
}

/// The analytics tables, as stored: what `store copy` moves besides the [`Dump`]. Kept apart
/// from it because a store never loads analytics at start (they are read by query), and they
/// are the largest tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnalyticsDump {
    /// Every row of `analytics`, each with its buckets of `analytics_latency`.
    pub rows: Vec<AnalyticsRow>,
    /// Every row of `analytics_batches` with its `received_at`, so that a batch uploaded before
    /// the copy and retried after it is still recognised.
    pub batches: Vec<(BatchId, i64)>,
}

/// `store copy`'s reads of the analytics tables (the same SQL on both engines). The order is
/// only for a stable copy; rows are matched by key, not by position.
pub const DUMP_ANALYTICS_SQL: &str = "SELECT minute, gateway, api, operation, product, \
     subscription, status, requests, errors, cache_hits, request_bytes, response_bytes, \
     total_duration_us, max_duration_us, backend_duration_us FROM analytics \
     ORDER BY minute, gateway, api, operation, product, subscription, status";
pub const DUMP_LATENCY_SQL: &str = "SELECT minute, gateway, api, operation, product, \
     subscription, status, bucket, requests FROM analytics_latency \
     ORDER BY minute, gateway, api, operation, product, subscription, status, bucket";
pub const DUMP_BATCHES_SQL: &str = "SELECT gateway, instance_id, sequence, received_at \
     FROM analytics_batches ORDER BY gateway, instance_id, sequence";

impl AnalyticsDump {
    /// Puts the rows of `analytics_latency` into their `analytics` rows. A bucket without its
    /// row cannot be written (both are written and purged in one transaction): the source is
    /// refused as corrupt rather than copied without it.
    pub fn assemble(
        mut rows: Vec<AnalyticsRow>,
        latency: Vec<(AnalyticsKey, i64, i64)>,
        batches: Vec<(BatchId, i64)>,
    ) -> Result<AnalyticsDump, StoreError> {
        let index: std::collections::HashMap<AnalyticsKey, usize> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.key.clone(), i))
            .collect();
        let mut orphans = 0usize;
        for (key, bucket, n) in latency {
            match index.get(&key) {
                Some(&i) => rows[i].latency.push((bucket, n)),
                None => orphans += 1,
            }
        }
        if orphans > 0 {
            return Err(StoreError::Corrupt(format!(
                "analytics_latency: {orphans} bucket(s) without their analytics row"
            )));
        }
        for r in &mut rows {
            r.latency.sort_unstable();
        }
        Ok(AnalyticsDump { rows, batches })
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.batches.is_empty()
    }
}

/// What the log holds after a given revision.
#[derive(Debug)]
pub enum Since {
    /// Every change after the revision asked for, up to `revision` (the durable one).
    Changes {
        revision: u64,
        floor: u64,
        changes: Vec<ChangeRow>,
    },
    /// The log no longer reaches back that far: everything.
    Everything(Dump),
}

/// The rows one commit writes, all under one new revision.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub revision: u64,
    pub upserts: Vec<ResourceRow>,
    /// `(kind, name)` of deleted resources.
    pub deletes: Vec<(String, String)>,
    /// Gateways deleted in this revision: their keys go with them.
    pub deleted_gateways: Vec<String>,
    pub changes: Vec<ChangeRow>,
    /// When set, changes up to and including it are dropped from the log.
    pub new_floor: Option<u64>,
}

/// A database engine. Calls are blocking; a PostgreSQL engine runs its client on a runtime of
/// its own, so they are safe from any thread (never call them on an async executor's thread:
/// the admin API wraps them in `web::block`).
///
/// `begin` … `commit`/`rollback` bracket a write transaction; the store holds its own write
/// lock around it, so an engine sees at most one transaction at a time.
pub trait Engine: Send {
    /// Every table, read consistently.
    fn dump(&mut self) -> Result<Dump, StoreError>;

    /// Starts a write transaction that no other writer (any process) can run beside, and
    /// returns the durable revision as of now.
    fn begin(&mut self) -> Result<u64, StoreError>;
    /// Inside a transaction: what happened after `after`.
    fn since(&mut self, after: u64) -> Result<Since, StoreError>;
    /// Inside a transaction: the rows of one commit, the new revision and the log trim; tells
    /// other replicas on commit.
    fn write(&mut self, batch: &WriteBatch) -> Result<(), StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Best effort: a failed rollback leaves the connection to be reset by the engine.
    fn rollback(&mut self);

    /// Outside a transaction: a consistent read of what happened after `after`.
    fn read_since(&mut self, after: u64) -> Result<Since, StoreError>;

    fn gateway_keys(&mut self, gateway: &str) -> Result<Option<GatewayKeyRecord>, StoreError>;
    /// Inserts unless the gateway already has keys; returns the keys that are stored (another
    /// replica may have been first).
    fn insert_gateway_keys(
        &mut self,
        keys: &GatewayKeyRecord,
    ) -> Result<GatewayKeyRecord, StoreError>;
    fn update_gateway_keys(&mut self, keys: &GatewayKeyRecord) -> Result<(), StoreError>;

    fn signing_keys(&mut self) -> Result<Vec<SigningKeyRecord>, StoreError>;
    /// `id` is ignored: the engine numbers keys in insertion order.
    fn insert_signing_key(&mut self, key: &SigningKeyRecord) -> Result<(), StoreError>;
    /// Erases every private key but the newest.
    fn erase_old_private_keys(&mut self) -> Result<(), StoreError>;

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError>;
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError>;

    /// Upserts instance rows; a row already stored with a later `last_seen` (another replica's
    /// newer heartbeat) is kept.
    fn save_instances(&mut self, rows: &[InstanceRow]) -> Result<(), StoreError>;
    /// Rows last seen at or after `seen_since`.
    fn load_instances(&mut self, seen_since: &str) -> Result<Vec<InstanceRow>, StoreError>;
    /// Deletes rows last seen before `seen_before`.
    fn forget_instances(&mut self, seen_before: &str) -> Result<(), StoreError>;

    /// Adds a telemetry batch's rows to the analytics (upsert-add), recording `batch` in the
    /// same transaction; `false` (nothing added) when the batch was recorded before, by this
    /// replica or another. `received_at`: unix seconds, for the purge.
    fn add_analytics(
        &mut self,
        batch: &BatchId,
        received_at: i64,
        rows: &[AnalyticsRow],
    ) -> Result<bool, StoreError>;
    /// Sums per group of the analytics rows `filter` selects, with their latency histograms.
    fn analytics(&mut self, filter: &AnalyticsFilter) -> Result<Vec<AnalyticsSum>, StoreError>;
    /// Deletes analytics rows of minutes before `before_minute` and batch records received
    /// before it; returns the analytics rows deleted.
    fn purge_analytics(&mut self, before_minute: i64) -> Result<u64, StoreError>;

    /// Every row of the analytics tables, read consistently (`store copy`).
    fn dump_analytics(&mut self) -> Result<AnalyticsDump, StoreError>;

    /// Whether the store holds nothing yet (no revision, no keys, no analytics): the only valid
    /// target of a copy.
    fn is_empty(&mut self) -> Result<bool, StoreError> {
        let dump = self.dump()?;
        Ok(dump.resources.is_empty()
            && dump.changes.is_empty()
            && dump.gateway_keys.is_empty()
            && dump.signing_keys.is_empty()
            && dump.meta_u64("revision")? == 0
            && self.dump_analytics()?.is_empty())
    }
    /// Writes every row of `dump` and `analytics` as it is (ids, revisions and sums kept), in
    /// one transaction.
    fn import(&mut self, dump: &Dump, analytics: &AnalyticsDump) -> Result<(), StoreError>;
}

/// The newest schema version this binary knows, and a refusal when the database's is newer
/// (written by a newer Outpost: its data may mean things this binary would get wrong).
pub fn check_schema_version(
    engine: &str,
    applied: Option<i64>,
    known: i64,
) -> Result<(), StoreError> {
    match applied {
        Some(v) if v > known => Err(StoreError::SchemaTooNew {
            engine: engine.to_owned(),
            found: v,
            known,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(
            redact_url("postgres://outpost:s3cret@db.example:5432/outpost?sslmode=require"),
            "postgres://outpost:***@db.example:5432/outpost?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://outpost@db/outpost"),
            "postgres://outpost@db/outpost"
        );
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(
            Location::parse("/var/lib/outpost/outpost.db", None),
            Location::Sqlite("/var/lib/outpost/outpost.db".into())
        );
        assert!(matches!(
            Location::parse("postgresql://h/d", None),
            Location::Postgres { .. }
        ));
    }

    #[test]
    fn a_newer_schema_is_refused_by_name() {
        check_schema_version("sqlite", None, 1).unwrap();
        check_schema_version("sqlite", Some(1), 1).unwrap();
        let err = check_schema_version("postgres", Some(3), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("schema version 3"), "{err}");
        assert!(err.contains("knows up to 1"), "{err}");
    }
}
