//! The embedded engine: one SQLite file (or `:memory:`), one connection.
//!
//! One writer is all SQLite allows anyway; `BEGIN IMMEDIATE` takes the write lock at the start
//! of a transaction, so even a second process on the same file (which the data directory's
//! lock already refuses) could not interleave.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::engine::{
    AnalyticsDump, AnalyticsFilter, AnalyticsKey, AnalyticsRow, AnalyticsSum, BatchId, ChangeRow,
    DUMP_ANALYTICS_SQL, DUMP_BATCHES_SQL, DUMP_LATENCY_SQL, Dump, Engine, GatewayKeyRecord,
    InstanceRow, ResourceRow, SigningKeyRecord, Since, SqlParam, WriteBatch, analytics_sql,
    attach_latency, check_schema_version,
};

mod embedded {
    refinery::embed_migrations!("src/control_plane/store/migrations/sqlite");
}

/// Newer heartbeats win, whichever replica stores first.
const UPSERT_INSTANCE: &str = "INSERT INTO instances (gateway, instance_id, last_seen, record) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (gateway, instance_id) DO UPDATE \
     SET last_seen = excluded.last_seen, record = excluded.record \
     WHERE excluded.last_seen > instances.last_seen";

const INSERT_BATCH: &str = "INSERT INTO analytics_batches (gateway, instance_id, sequence, received_at) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";
const ADD_ANALYTICS: &str = "INSERT INTO analytics (minute, gateway, api, operation, product, \
     subscription, status, requests, errors, cache_hits, request_bytes, response_bytes, \
     total_duration_us, max_duration_us, backend_duration_us) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
     ON CONFLICT (minute, gateway, api, operation, product, subscription, status) DO UPDATE SET \
     requests = analytics.requests + excluded.requests, \
     errors = analytics.errors + excluded.errors, \
     cache_hits = analytics.cache_hits + excluded.cache_hits, \
     request_bytes = analytics.request_bytes + excluded.request_bytes, \
     response_bytes = analytics.response_bytes + excluded.response_bytes, \
     total_duration_us = analytics.total_duration_us + excluded.total_duration_us, \
     max_duration_us = max(analytics.max_duration_us, excluded.max_duration_us), \
     backend_duration_us = analytics.backend_duration_us + excluded.backend_duration_us";
const ADD_LATENCY: &str = "INSERT INTO analytics_latency (minute, gateway, api, operation, \
     product, subscription, status, bucket, requests) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
     ON CONFLICT (minute, gateway, api, operation, product, subscription, status, bucket) \
     DO UPDATE SET requests = analytics_latency.requests + excluded.requests";

fn sql_value(p: &SqlParam) -> rusqlite::types::Value {
    match p {
        SqlParam::Int(i) => rusqlite::types::Value::Integer(*i),
        SqlParam::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

/// refinery's default name for its table of applied migrations.
const HISTORY_TABLE: &str = "refinery_schema_history";

pub struct SqliteEngine {
    conn: Connection,
}

impl SqliteEngine {
    pub fn open(path: &Path) -> Result<SqliteEngine, StoreError> {
        let mut conn = if path.as_os_str() == ":memory:" {
            Connection::open_in_memory()?
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Corrupt(format!("cannot create {dir:?}: {e}")))?;
            }
            Connection::open(path)?
        };
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;",
        )?;
        migrate(&mut conn)?;
        Ok(SqliteEngine { conn })
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
    let has_history: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![HISTORY_TABLE],
        |r| r.get(0),
    )?;
    let applied = if has_history {
        runner
            .get_last_applied_migration(conn)
            .map_err(|e| StoreError::Migration(e.to_string()))?
            .map(|m| i64::from(m.version()))
    } else {
        None
    };
    check_schema_version("SQLite", applied, known)?;
    let report = runner
        .run(conn)
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    for m in report.applied_migrations() {
        tracing::info!(
            engine = "sqlite",
            version = m.version(),
            name = m.name(),
            "schema migrated"
        );
    }
    Ok(())
}

fn resource_rows(conn: &Connection) -> Result<Vec<ResourceRow>, StoreError> {
    let mut stmt = conn.prepare("SELECT kind, name, revision, body FROM resources")?;
    let rows = stmt.query_map([], |r| {
        Ok(ResourceRow {
            kind: r.get(0)?,
            name: r.get(1)?,
            revision: r.get(2)?,
            body: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn change_rows(conn: &Connection, after: u64) -> Result<Vec<ChangeRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT revision, seq, kind, name, before, before_revision, after FROM changes \
         WHERE revision > ?1 ORDER BY revision, seq",
    )?;
    let rows = stmt.query_map(params![after as i64], |r| {
        Ok(ChangeRow {
            revision: r.get(0)?,
            seq: r.get(1)?,
            kind: r.get(2)?,
            name: r.get(3)?,
            before: r.get(4)?,
            before_revision: r.get(5)?,
            after: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn signing_key_rows(conn: &Connection) -> Result<Vec<SigningKeyRecord>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, public_key, private_key, created_at, endorsed_by, endorsement \
         FROM signing_keys ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(SigningKeyRecord {
            id: r.get(0)?,
            public_key: r.get(1)?,
            private_key: r.get(2)?,
            created_at: r.get(3)?,
            endorsed_by: r.get(4)?,
            endorsement: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn meta_value(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()?)
}

fn set_meta_value(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
        params![key, value],
    )?;
    Ok(())
}

fn meta_u64(conn: &Connection, key: &str) -> Result<u64, StoreError> {
    meta_value(conn, key)?
        .map(|s| {
            s.parse()
                .map_err(|_| StoreError::Corrupt(format!("meta {key} = {s:?}")))
        })
        .transpose()
        .map(Option::unwrap_or_default)
}

fn dump(conn: &Connection) -> Result<Dump, StoreError> {
    let mut stmt = conn.prepare("SELECT key, value FROM meta ORDER BY key")?;
    let meta = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut stmt = conn
        .prepare("SELECT gateway, primary_key, secondary_key FROM gateway_keys ORDER BY gateway")?;
    let gateway_keys = stmt
        .query_map([], |r| {
            Ok(GatewayKeyRecord {
                gateway: r.get(0)?,
                primary_key: r.get(1)?,
                secondary_key: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Dump {
        meta,
        resources: resource_rows(conn)?,
        changes: change_rows(conn, 0)?,
        gateway_keys,
        signing_keys: signing_key_rows(conn)?,
    })
}

/// Adds `rows` (upsert-add) and their latency buckets.
fn add_rows(conn: &Connection, rows: &[AnalyticsRow]) -> Result<(), StoreError> {
    let mut add = conn.prepare_cached(ADD_ANALYTICS)?;
    let mut latency = conn.prepare_cached(ADD_LATENCY)?;
    for r in rows {
        let k = &r.key;
        add.execute(params![
            k.minute,
            k.gateway,
            k.api,
            k.operation,
            k.product,
            k.subscription,
            k.status,
            r.requests,
            r.errors,
            r.cache_hits,
            r.request_bytes,
            r.response_bytes,
            r.total_duration_us,
            r.max_duration_us,
            r.backend_duration_us
        ])?;
        for (bucket, n) in &r.latency {
            latency.execute(params![
                k.minute,
                k.gateway,
                k.api,
                k.operation,
                k.product,
                k.subscription,
                k.status,
                bucket,
                n
            ])?;
        }
    }
    Ok(())
}

fn analytics_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<AnalyticsKey> {
    Ok(AnalyticsKey {
        minute: r.get(0)?,
        gateway: r.get(1)?,
        api: r.get(2)?,
        operation: r.get(3)?,
        product: r.get(4)?,
        subscription: r.get(5)?,
        status: r.get(6)?,
    })
}

fn dump_analytics(conn: &Connection) -> Result<AnalyticsDump, StoreError> {
    let rows = conn
        .prepare(DUMP_ANALYTICS_SQL)?
        .query_map([], |r| {
            Ok(AnalyticsRow {
                key: analytics_key(r)?,
                requests: r.get(7)?,
                errors: r.get(8)?,
                cache_hits: r.get(9)?,
                request_bytes: r.get(10)?,
                response_bytes: r.get(11)?,
                total_duration_us: r.get(12)?,
                max_duration_us: r.get(13)?,
                backend_duration_us: r.get(14)?,
                latency: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let latency = conn
        .prepare(DUMP_LATENCY_SQL)?
        .query_map([], |r| Ok((analytics_key(r)?, r.get(7)?, r.get(8)?)))?
        .collect::<Result<_, _>>()?;
    let batches = conn
        .prepare(DUMP_BATCHES_SQL)?
        .query_map([], |r| {
            Ok((
                BatchId {
                    gateway: r.get(0)?,
                    instance_id: r.get(1)?,
                    sequence: r.get(2)?,
                },
                r.get(3)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    AnalyticsDump::assemble(rows, latency, batches)
}

fn since(conn: &Connection, after: u64) -> Result<Since, StoreError> {
    let floor = meta_u64(conn, "log_floor")?;
    if after < floor {
        return Ok(Since::Everything(dump(conn)?));
    }
    Ok(Since::Changes {
        revision: meta_u64(conn, "revision")?,
        floor,
        changes: change_rows(conn, after)?,
    })
}

impl Engine for SqliteEngine {
    fn dump(&mut self) -> Result<Dump, StoreError> {
        let tx = self.conn.transaction()?;
        let d = dump(&tx)?;
        tx.commit()?;
        Ok(d)
    }

    fn begin(&mut self) -> Result<u64, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match meta_u64(&self.conn, "revision") {
            Ok(r) => Ok(r),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn since(&mut self, after: u64) -> Result<Since, StoreError> {
        since(&self.conn, after)
    }

    fn write(&mut self, b: &WriteBatch) -> Result<(), StoreError> {
        let c = &self.conn;
        for r in &b.upserts {
            c.execute(
                "INSERT INTO resources (kind, name, revision, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, name) DO UPDATE SET revision = ?3, body = ?4",
                params![r.kind, r.name, r.revision, r.body],
            )?;
        }
        for (kind, name) in &b.deletes {
            c.execute(
                "DELETE FROM resources WHERE kind = ?1 AND name = ?2",
                params![kind, name],
            )?;
        }
        for gateway in &b.deleted_gateways {
            c.execute(
                "DELETE FROM gateway_keys WHERE gateway = ?1",
                params![gateway],
            )?;
        }
        for ch in &b.changes {
            c.execute(
                "INSERT INTO changes (revision, seq, kind, name, before, before_revision, after)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    ch.revision,
                    ch.seq,
                    ch.kind,
                    ch.name,
                    ch.before,
                    ch.before_revision,
                    ch.after
                ],
            )?;
        }
        set_meta_value(c, "revision", &b.revision.to_string())?;
        if let Some(floor) = b.new_floor {
            c.execute(
                "DELETE FROM changes WHERE revision <= ?1",
                params![floor as i64],
            )?;
            set_meta_value(c, "log_floor", &floor.to_string())?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "store rollback failed");
        }
    }

    fn read_since(&mut self, after: u64) -> Result<Since, StoreError> {
        let tx = self.conn.transaction()?;
        let s = since(&tx, after)?;
        tx.commit()?;
        Ok(s)
    }

    fn gateway_keys(&mut self, gateway: &str) -> Result<Option<GatewayKeyRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT primary_key, secondary_key FROM gateway_keys WHERE gateway = ?1",
                params![gateway],
                |r| {
                    Ok(GatewayKeyRecord {
                        gateway: gateway.to_owned(),
                        primary_key: r.get(0)?,
                        secondary_key: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    fn insert_gateway_keys(
        &mut self,
        keys: &GatewayKeyRecord,
    ) -> Result<GatewayKeyRecord, StoreError> {
        self.conn.execute(
            "INSERT INTO gateway_keys (gateway, primary_key, secondary_key) VALUES (?1, ?2, ?3) \
             ON CONFLICT (gateway) DO NOTHING",
            params![keys.gateway, keys.primary_key, keys.secondary_key],
        )?;
        self.gateway_keys(&keys.gateway)?
            .ok_or_else(|| StoreError::Corrupt(format!("gateway keys of {}", keys.gateway)))
    }

    fn update_gateway_keys(&mut self, keys: &GatewayKeyRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE gateway_keys SET primary_key = ?2, secondary_key = ?3 WHERE gateway = ?1",
            params![keys.gateway, keys.primary_key, keys.secondary_key],
        )?;
        Ok(())
    }

    fn signing_keys(&mut self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        signing_key_rows(&self.conn)
    }

    fn insert_signing_key(&mut self, k: &SigningKeyRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO signing_keys (public_key, private_key, created_at, endorsed_by, endorsement) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                k.public_key,
                k.private_key,
                k.created_at,
                k.endorsed_by,
                k.endorsement
            ],
        )?;
        Ok(())
    }

    fn erase_old_private_keys(&mut self) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE signing_keys SET private_key = NULL WHERE id < (SELECT MAX(id) FROM signing_keys)",
            [],
        )?;
        Ok(())
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        meta_value(&self.conn, key)
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        set_meta_value(&self.conn, key, value)
    }

    fn save_instances(&mut self, rows: &[InstanceRow]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for r in rows {
            tx.execute(
                UPSERT_INSTANCE,
                params![r.gateway, r.instance_id, r.last_seen, r.record],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn load_instances(&mut self, seen_since: &str) -> Result<Vec<InstanceRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT gateway, instance_id, last_seen, record FROM instances WHERE last_seen >= ?1",
        )?;
        let rows = stmt.query_map(params![seen_since], |r| {
            Ok(InstanceRow {
                gateway: r.get(0)?,
                instance_id: r.get(1)?,
                last_seen: r.get(2)?,
                record: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn forget_instances(&mut self, seen_before: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM instances WHERE last_seen < ?1",
            params![seen_before],
        )?;
        Ok(())
    }

    fn add_analytics(
        &mut self,
        batch: &BatchId,
        received_at: i64,
        rows: &[AnalyticsRow],
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let new = tx.execute(
            INSERT_BATCH,
            params![
                batch.gateway,
                batch.instance_id,
                batch.sequence,
                received_at
            ],
        )?;
        if new == 0 {
            return Ok(false);
        }
        add_rows(&tx, rows)?;
        tx.commit()?;
        Ok(true)
    }

    fn analytics(&mut self, filter: &AnalyticsFilter) -> Result<Vec<AnalyticsSum>, StoreError> {
        let (sums_sql, latency_sql, params) = analytics_sql(filter, |n| format!("?{n}"));
        let values: Vec<rusqlite::types::Value> = params.iter().map(sql_value).collect();
        let groups = filter.group_by.len();
        // One read transaction: both queries see the same rows.
        let tx = self.conn.transaction()?;
        let mut sums: Vec<AnalyticsSum> = {
            let mut stmt = tx.prepare(&sums_sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values.iter()), |r| {
                let mut group = Vec::with_capacity(groups);
                for i in 0..groups {
                    group.push(r.get::<_, String>(i)?);
                }
                Ok(AnalyticsSum {
                    group,
                    requests: r.get(groups)?,
                    errors: r.get(groups + 1)?,
                    cache_hits: r.get(groups + 2)?,
                    request_bytes: r.get(groups + 3)?,
                    response_bytes: r.get(groups + 4)?,
                    total_duration_us: r.get(groups + 5)?,
                    max_duration_us: r.get(groups + 6)?,
                    backend_duration_us: r.get(groups + 7)?,
                    latency: Vec::new(),
                })
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let latency = {
            let mut stmt = tx.prepare(&latency_sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values.iter()), |r| {
                let mut group = Vec::with_capacity(groups);
                for i in 0..groups {
                    group.push(r.get::<_, String>(i)?);
                }
                Ok((group, r.get(groups)?, r.get(groups + 1)?))
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.finish()?;
        attach_latency(&mut sums, latency);
        Ok(sums)
    }

    fn purge_analytics(&mut self, before_minute: i64) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let deleted = tx.execute(
            "DELETE FROM analytics WHERE minute < ?1",
            params![before_minute],
        )?;
        tx.execute(
            "DELETE FROM analytics_latency WHERE minute < ?1",
            params![before_minute],
        )?;
        tx.execute(
            "DELETE FROM analytics_batches WHERE received_at < ?1",
            params![before_minute],
        )?;
        tx.commit()?;
        Ok(deleted as u64)
    }

    fn dump_analytics(&mut self) -> Result<AnalyticsDump, StoreError> {
        let tx = self.conn.transaction()?;
        let d = dump_analytics(&tx)?;
        tx.commit()?;
        Ok(d)
    }

    fn import(&mut self, d: &Dump, analytics: &AnalyticsDump) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for (k, v) in &d.meta {
            set_meta_value(&tx, k, v)?;
        }
        for r in &d.resources {
            tx.execute(
                "INSERT INTO resources (kind, name, revision, body) VALUES (?1, ?2, ?3, ?4)",
                params![r.kind, r.name, r.revision, r.body],
            )?;
        }
        for c in &d.changes {
            tx.execute(
                "INSERT INTO changes (revision, seq, kind, name, before, before_revision, after)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    c.revision,
                    c.seq,
                    c.kind,
                    c.name,
                    c.before,
                    c.before_revision,
                    c.after
                ],
            )?;
        }
        for g in &d.gateway_keys {
            tx.execute(
                "INSERT INTO gateway_keys (gateway, primary_key, secondary_key) VALUES (?1, ?2, ?3)",
                params![g.gateway, g.primary_key, g.secondary_key],
            )?;
        }
        for k in &d.signing_keys {
            tx.execute(
                "INSERT INTO signing_keys (id, public_key, private_key, created_at, endorsed_by, endorsement) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    k.id,
                    k.public_key,
                    k.private_key,
                    k.created_at,
                    k.endorsed_by,
                    k.endorsement
                ],
            )?;
        }
        // The target is empty, so adding is inserting; the sums are kept as they are.
        add_rows(&tx, &analytics.rows)?;
        for (b, received_at) in &analytics.batches {
            tx.execute(
                INSERT_BATCH,
                params![b.gateway, b.instance_id, b.sequence, received_at],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}
