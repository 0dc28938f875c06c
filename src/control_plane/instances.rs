//! Per-instance status of self-hosted gateways, as reported by their heartbeats.
//!
//! A gateway resource may run as several processes (instances), each with a random id chosen at
//! start. Every heartbeat replaces that instance's record; the admin API derives from it whether
//! the instance is `connected`, `stale` or `disconnected` (by the age of its last heartbeat) or
//! `stopped` (its last heartbeat said it was stopping), and whether it is `in-sync` (the config
//! hash it applied equals the hash of the gateway's current view) or `behind`.
//!
//! Heartbeats update the records in memory (no database write per heartbeat); every
//! [`SYNC_EVERY`] [`InstanceRegistry::sync`] writes the records heard from since the last sync
//! to the store (`instances` table) and takes in the store's newer ones. So a restarted control
//! plane lists the instances it knew (stopped ones included) at once, and with PostgreSQL every
//! replica lists the instances heartbeating to any replica, within a sync period. Nothing a
//! gateway needs depends on it. Instances not heard from for `instances.forget_after_secs`
//! leave the list, memory and the store, so restarting gateways (a new id each time) do not
//! pile up in it.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use outpost_model::wire::{CertificateExpiry, Heartbeat, PoolMemberStatus};
use serde::{Deserialize, Serialize};

use super::settings::InstanceSettings;
use super::store::{InstanceRow, Store, StoreError};

/// Longest time between two sweeps of forgotten records (reads filter them out regardless).
const PRUNE_EVERY_SECS: i64 = 60;
/// How often the registry and the store exchange records.
pub const SYNC_EVERY: Duration = Duration::from_secs(2);
/// Records seen this long before the previous sync are written again: a heartbeat recorded
/// while a sync ran is not missed (writes are idempotent).
const SYNC_OVERLAP_SECS: i64 = 5;

/// What the control plane knows about one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InstanceRecord {
    pub gateway: String,
    pub instance_id: String,
    pub hostname: String,
    pub version: String,
    pub applied_revision: u64,
    pub config_hash: String,
    /// Expiry of the token the last heartbeat was authenticated with (verified, not reported).
    pub token_expiry: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    /// Where the configuration the instance serves now came from: `control-plane`, `backup`
    /// or `offline`.
    pub config_source: String,
    /// `none`, `connected` or `disconnected`.
    pub redis: String,
    pub last_seen: DateTime<Utc>,
    /// Peer address of the last heartbeat's connection (a proxy's, if there is one in between).
    pub remote_addr: Option<String>,
    /// When the instance said it was stopping (its last heartbeat); `None` while it runs.
    pub stopped_at: Option<DateTime<Utc>>,
    /// The HTTPS certificates the instance serves, soonest expiry first (empty from a gateway
    /// of a release that did not report them).
    #[serde(default)]
    pub certificates: Vec<CertificateExpiry>,
    /// Every backend pool member as the instance sees it (empty from a gateway of a release
    /// that did not report them).
    #[serde(default)]
    pub pool_members: Vec<PoolMemberStatus>,
    /// Whether the instance's `/readyz` says ready, as of its last heartbeat; `None` from a
    /// gateway of a release that did not report it.
    #[serde(default)]
    pub ready: Option<bool>,
    /// Why it is not ready (what its `/readyz` says): no configuration yet, draining.
    #[serde(default)]
    pub not_ready_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionState {
    Connected,
    Stale,
    Disconnected,
    /// Stopped gracefully: its last heartbeat said so.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncState {
    InSync,
    Behind,
}

/// An instance with its derived state, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InstanceStatus {
    #[serde(flatten)]
    pub record: InstanceRecord,
    pub connection: ConnectionState,
    pub sync: SyncState,
    /// Seconds since the last heartbeat.
    pub last_seen_secs: i64,
    /// Seconds until the token expires (negative once expired).
    pub token_expires_in_secs: i64,
    /// Seconds until the first of its HTTPS certificates lapses (negative once expired);
    /// `None` when it serves none.
    pub certificate_expires_in_secs: Option<i64>,
    /// A certificate lapses within the gateway's warning window (14 days), or has.
    pub certificate_expiring_soon: bool,
}

/// The instances of every gateway, keyed by (gateway, instance id).
pub struct InstanceRegistry {
    records: DashMap<(String, String), InstanceRecord>,
    settings: InstanceSettings,
    last_prune: Mutex<DateTime<Utc>>,
    /// When the last sync with the store started; also serialises syncs.
    last_sync: Mutex<DateTime<Utc>>,
}

impl InstanceRegistry {
    pub fn new(settings: InstanceSettings) -> Self {
        Self {
            records: DashMap::new(),
            settings,
            last_prune: Mutex::new(DateTime::<Utc>::MIN_UTC),
            last_sync: Mutex::new(DateTime::<Utc>::MIN_UTC),
        }
    }

    /// Writes the records heard from since the last sync to `store`, takes in the store's
    /// records that are newer than ours (an earlier run's, other replicas'), and deletes the
    /// forgotten ones there.
    pub fn sync(&self, store: &Store, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut last = self
            .last_sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let since = last
            .checked_sub_signed(chrono::TimeDelta::seconds(SYNC_OVERLAP_SECS))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let changed: Vec<InstanceRow> = self
            .records
            .iter()
            .filter(|e| e.value().last_seen >= since)
            .filter_map(|e| to_row(e.value()))
            .collect();
        store.save_instances(&changed)?;
        let horizon = now
            - chrono::TimeDelta::seconds(
                i64::try_from(self.settings.forget_after.as_secs()).unwrap_or(i64::MAX / 1000),
            );
        let horizon = timestamp(horizon);
        for row in store.load_instances(&horizon)? {
            match serde_json::from_str::<InstanceRecord>(&row.record) {
                Ok(record) => self.merge(record),
                Err(e) => tracing::warn!(
                    gateway = row.gateway,
                    instance = row.instance_id,
                    error = %e,
                    "unreadable stored instance record; skipped"
                ),
            }
        }
        store.forget_instances(&horizon)?;
        *last = now;
        Ok(())
    }

    /// Takes a record from elsewhere (the store): it replaces ours when it is newer.
    pub fn merge(&self, record: InstanceRecord) {
        let key = (record.gateway.clone(), record.instance_id.clone());
        match self.records.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                if record.last_seen > e.get().last_seen {
                    e.insert(record);
                }
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(record);
            }
        }
    }

    /// Records a heartbeat of `gateway` (the gateway its token was verified for).
    pub fn record(
        &self,
        gateway: &str,
        heartbeat: Heartbeat,
        token_expiry: DateTime<Utc>,
        remote_addr: Option<String>,
        now: DateTime<Utc>,
    ) {
        self.prune(now);
        let stopped_at = heartbeat.stopping.then_some(now);
        let (ready, not_ready_reason) = match heartbeat.readiness {
            Some(r) => (Some(r.ready), r.reason),
            None => (None, None),
        };
        let record = InstanceRecord {
            gateway: gateway.to_owned(),
            instance_id: heartbeat.instance_id,
            hostname: heartbeat.hostname,
            version: heartbeat.version,
            applied_revision: heartbeat.applied_revision,
            config_hash: heartbeat.config_hash,
            token_expiry,
            started_at: heartbeat.started_at,
            config_source: heartbeat.config_source,
            redis: heartbeat.redis,
            last_seen: now,
            remote_addr,
            stopped_at,
            certificates: heartbeat.certificates,
            pool_members: heartbeat.pool_members,
            ready,
            not_ready_reason,
        };
        let key = (record.gateway.clone(), record.instance_id.clone());
        match self.records.entry(key) {
            // Instance ids are never reused, so a process that said it stops does not come
            // back: a heartbeat after that one is a periodic one that was already in flight.
            dashmap::Entry::Occupied(e) if e.get().stopped_at.is_some() && stopped_at.is_none() => {
            }
            dashmap::Entry::Occupied(mut e) => {
                e.insert(record);
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(record);
            }
        }
    }

    /// Records of one gateway (`Some`) or all (`None`) heard from within
    /// `instances.forget_after_secs` of `now`, sorted by gateway then instance id.
    pub fn records(&self, gateway: Option<&str>, now: DateTime<Utc>) -> Vec<InstanceRecord> {
        let mut out: Vec<InstanceRecord> = self
            .records
            .iter()
            .filter(|e| gateway.is_none_or(|g| e.key().0 == g))
            .filter(|e| !self.forgotten(e.value(), now))
            .map(|e| e.value().clone())
            .collect();
        out.sort_by(|a, b| (&a.gateway, &a.instance_id).cmp(&(&b.gateway, &b.instance_id)));
        out
    }

    /// The connection state of `record` at `now`.
    pub fn connection(&self, record: &InstanceRecord, now: DateTime<Utc>) -> ConnectionState {
        if record.stopped_at.is_some() {
            return ConnectionState::Stopped;
        }
        let age = age_secs(record.last_seen, now);
        if age <= self.settings.stale_after.as_secs() {
            ConnectionState::Connected
        } else if age <= self.settings.disconnected_after.as_secs() {
            ConnectionState::Stale
        } else {
            ConnectionState::Disconnected
        }
    }

    /// `record` with its derived state; `current_hash` is the hash of its gateway's current view.
    pub fn status(
        &self,
        record: InstanceRecord,
        current_hash: &str,
        now: DateTime<Utc>,
    ) -> InstanceStatus {
        let first_expiry = record.certificates.iter().map(|c| c.not_after).min();
        InstanceStatus {
            certificate_expires_in_secs: first_expiry.map(|at| (at - now).num_seconds()),
            certificate_expiring_soon: first_expiry
                .is_some_and(|at| at <= now + outpost_actors::route_table::CERTIFICATE_WARNING),
            connection: self.connection(&record, now),
            sync: if record.config_hash == current_hash {
                SyncState::InSync
            } else {
                SyncState::Behind
            },
            last_seen_secs: (now - record.last_seen).num_seconds(),
            token_expires_in_secs: (record.token_expiry - now).num_seconds(),
            record,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn forgotten(&self, record: &InstanceRecord, now: DateTime<Utc>) -> bool {
        age_secs(record.last_seen, now) > self.settings.forget_after.as_secs()
    }

    /// Drops forgotten records, at most once a minute (or per `forget_after_secs`, if shorter).
    fn prune(&self, now: DateTime<Utc>) {
        let every = i64::try_from(self.settings.forget_after.as_secs())
            .unwrap_or(i64::MAX)
            .min(PRUNE_EVERY_SECS);
        {
            // A poisoned lock only means another sweep panicked; sweeping again is harmless.
            let mut last = self
                .last_prune
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if (now - *last).num_seconds() < every {
                return;
            }
            *last = now;
        }
        self.records.retain(|_, r| !self.forgotten(r, now));
    }
}

/// RFC 3339 with microseconds and `Z`: fixed width, so the store's text order is time order.
fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn to_row(record: &InstanceRecord) -> Option<InstanceRow> {
    Some(InstanceRow {
        gateway: record.gateway.clone(),
        instance_id: record.instance_id.clone(),
        last_seen: timestamp(record.last_seen),
        record: serde_json::to_string(record).ok()?,
    })
}

/// Whole seconds from `then` to `now`; 0 when `then` is in the future (clock steps).
fn age_secs(then: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    u64::try_from((now - then).num_seconds()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(id: &str, hash: &str) -> Heartbeat {
        Heartbeat {
            instance_id: id.into(),
            hostname: "node-1".into(),
            version: "0.1.0".into(),
            applied_revision: 3,
            config_hash: hash.into(),
            token_expiry: None,
            started_at: Utc::now(),
            config_source: "control-plane".into(),
            redis: "none".into(),
            stopping: false,
            certificates: Vec::new(),
            pool_members: Vec::new(),
            readiness: Some(outpost_model::wire::Readiness {
                ready: true,
                reason: None,
            }),
        }
    }

    fn registry() -> InstanceRegistry {
        InstanceRegistry::new(InstanceSettings {
            stale_after: std::time::Duration::from_secs(30),
            disconnected_after: std::time::Duration::from_secs(120),
            forget_after: std::time::Duration::from_secs(300),
        })
    }

    fn t0() -> DateTime<Utc> {
        "2030-01-01T00:00:00Z".parse().unwrap()
    }

    fn secs(n: i64) -> chrono::Duration {
        chrono::Duration::seconds(n)
    }

    #[test]
    fn derived_states() {
        let reg = registry();
        let t0 = t0();
        let expiry = t0 + chrono::Duration::days(1);
        reg.record("gw", heartbeat("i-1", "h1"), expiry, None, t0);
        reg.record("gw", heartbeat("i-2", "h0"), expiry, None, t0);
        reg.record("other", heartbeat("i-3", "h1"), expiry, None, t0);
        let recs = reg.records(Some("gw"), t0);
        assert_eq!(recs.len(), 2);
        let s = reg.status(recs[0].clone(), "h1", t0 + secs(10));
        assert_eq!(
            (s.connection, s.sync),
            (ConnectionState::Connected, SyncState::InSync)
        );
        let s = reg.status(recs[1].clone(), "h1", t0 + secs(60));
        assert_eq!(
            (s.connection, s.sync),
            (ConnectionState::Stale, SyncState::Behind)
        );
        let s = reg.status(recs[1].clone(), "h1", t0 + secs(121));
        assert_eq!(s.connection, ConnectionState::Disconnected);
        assert_eq!(s.token_expires_in_secs, 86400 - 121);
    }

    /// The list shows the configuration source of the latest heartbeat: a gateway that started
    /// from its backup and then synced says `control-plane`.
    #[test]
    fn the_latest_config_source_wins() {
        let reg = registry();
        let expiry = t0() + chrono::Duration::days(1);
        let mut hb = heartbeat("i-1", "h1");
        hb.config_source = "backup".into();
        reg.record("gw", hb, expiry, None, t0());
        assert_eq!(reg.records(None, t0())[0].config_source, "backup");
        reg.record("gw", heartbeat("i-1", "h1"), expiry, None, t0() + secs(1));
        assert_eq!(reg.records(None, t0())[0].config_source, "control-plane");
    }

    /// Readiness travels from the heartbeat to the record; a gateway of a release before it
    /// (no readiness in its heartbeat) and a record stored before it leave it unknown.
    #[test]
    fn readiness_and_its_reason_are_recorded() {
        let reg = registry();
        let expiry = t0() + chrono::Duration::days(1);
        reg.record("gw", heartbeat("i-1", "h1"), expiry, None, t0());
        let rec = reg.records(None, t0()).remove(0);
        assert_eq!((rec.ready, rec.not_ready_reason), (Some(true), None));
        let mut draining = heartbeat("i-1", "h1");
        draining.readiness = Some(outpost_model::wire::Readiness {
            ready: false,
            reason: Some("draining".into()),
        });
        reg.record("gw", draining, expiry, None, t0() + secs(1));
        let rec = reg.records(None, t0()).remove(0);
        assert_eq!(
            (rec.ready, rec.not_ready_reason.as_deref()),
            (Some(false), Some("draining"))
        );
        let mut old = heartbeat("i-1", "h1");
        old.readiness = None;
        reg.record("gw", old, expiry, None, t0() + secs(2));
        let rec = reg.records(None, t0()).remove(0);
        assert_eq!((rec.ready, rec.not_ready_reason.as_deref()), (None, None));
        let mut stored = serde_json::to_value(&rec).unwrap();
        let fields = stored.as_object_mut().unwrap();
        fields.remove("ready");
        fields.remove("not-ready-reason");
        let back: InstanceRecord = serde_json::from_value(stored).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn a_stopping_heartbeat_marks_the_instance_stopped_at_once() {
        let reg = registry();
        let expiry = t0() + chrono::Duration::days(1);
        reg.record("gw", heartbeat("i-1", "h1"), expiry, None, t0());
        let mut last = heartbeat("i-1", "h1");
        last.stopping = true;
        reg.record("gw", last, expiry, None, t0() + secs(1));
        let rec = reg.records(Some("gw"), t0() + secs(1)).remove(0);
        assert_eq!(rec.stopped_at, Some(t0() + secs(1)));
        assert_eq!(
            reg.status(rec, "h1", t0() + secs(2)).connection,
            ConnectionState::Stopped
        );
        // A periodic heartbeat that was in flight when the process stopped arrives late: the
        // instance stays stopped.
        reg.record("gw", heartbeat("i-1", "h1"), expiry, None, t0() + secs(2));
        let rec = reg.records(Some("gw"), t0() + secs(2)).remove(0);
        assert_eq!(
            reg.status(rec, "h1", t0() + secs(2)).connection,
            ConnectionState::Stopped
        );
    }

    #[test]
    fn instances_not_heard_from_are_forgotten() {
        let reg = registry();
        let expiry = t0() + chrono::Duration::days(1);
        reg.record("gw", heartbeat("old", "h1"), expiry, None, t0());
        let mut stopped = heartbeat("stopped", "h1");
        stopped.stopping = true;
        reg.record("gw", stopped, expiry, None, t0());
        reg.record(
            "gw",
            heartbeat("live", "h1"),
            expiry,
            None,
            t0() + secs(200),
        );
        assert_eq!(reg.records(None, t0() + secs(300)).len(), 3, "not yet");
        let left = reg.records(None, t0() + secs(301));
        let ids: Vec<&str> = left.iter().map(|r| r.instance_id.as_str()).collect();
        assert_eq!(ids, vec!["live"], "listing filters at once");
        assert_eq!(reg.len(), 3, "memory is swept on the next heartbeat");
        reg.record(
            "gw",
            heartbeat("live", "h1"),
            expiry,
            None,
            t0() + secs(301),
        );
        assert_eq!(reg.len(), 1);
    }

    /// A record from the store replaces ours only when it is newer (another replica's later
    /// heartbeat), never an older copy of what we have.
    #[test]
    fn merge_keeps_the_newest_record() {
        let registry = InstanceRegistry::new(InstanceSettings::default());
        let now = Utc::now();
        registry.record("gw", heartbeat("i-1", "h1"), now, None, now);
        let mut older = registry.records(None, now)[0].clone();
        older.config_hash = "older".into();
        older.last_seen = now - chrono::TimeDelta::seconds(5);
        registry.merge(older.clone());
        assert_eq!(registry.records(None, now)[0].config_hash, "h1");
        let mut newer = older;
        newer.config_hash = "newer".into();
        newer.last_seen = now + chrono::TimeDelta::seconds(1);
        registry.merge(newer);
        assert_eq!(registry.records(None, now)[0].config_hash, "newer");
        let mut other = registry.records(None, now)[0].clone();
        other.instance_id = "i-2".into();
        registry.merge(other);
        assert_eq!(registry.len(), 2);
    }
}
