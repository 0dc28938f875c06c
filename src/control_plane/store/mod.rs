//! The revisioned configuration store.
//!
//! Every accepted change bumps one global, monotonic revision and appends to a change log with
//! before- and after-images, so the state at any revision the log still covers can be rebuilt
//! (that is how per-gateway deltas are computed, see `gateway_api`). An immutable [`State`]
//! behind an `ArcSwap` serves every read without touching the database or a lock.
//!
//! Two engines hold the rows ([`engine::Engine`]): SQLite (`sqlite.rs`, a file under the data
//! directory, or `:memory:`; the embedded default) and PostgreSQL (`postgres.rs`, shared by any
//! number of control-plane replicas). The logic is here, once: validation, preconditions, the
//! in-memory state and change log.
//!
//! Writes hold the engine behind a mutex and inside the engine's write transaction, which
//! excludes every other writer (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: an advisory transaction
//! lock shared by all replicas). Under it the store first applies what other replicas committed,
//! then checks preconditions and writes `revision + 1`: that keeps concurrent writers, on one
//! replica or several, from losing updates (`If-Match` → [`Precondition::IfMatch`]) and keeps
//! revisions one gapless sequence. Other replicas' commits also arrive without a write of our
//! own: see [`Store::follow`].

pub mod engine;
mod postgres;
mod sqlite;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use outpost_model::resources::SECRET_MASK;
use outpost_model::signing::{KeyEndorsement, SigningKey};
use outpost_model::validate::{Problems, check_config, check_resource, referrers};
use outpost_model::{Kind, Resource, ResourceKey};
use rand::RngCore;
use tokio::sync::watch;

pub use self::engine::{
    AnalyticsFilter, AnalyticsKey, AnalyticsRow, AnalyticsSum, BatchId, Dimension, InstanceRow,
    Location,
};
use self::engine::{
    ChangeRow, Dump, Engine, GatewayKeyRecord, ResourceRow, SigningKeyRecord, Since, WriteBatch,
};
use self::postgres::PostgresEngine;
use self::sqlite::SqliteEngine;

/// A stored resource and the revision that last changed it (its ETag).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub resource: Resource,
    pub revision: u64,
}

/// The whole configuration at one revision. Immutable; shared by `Arc`.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub revision: u64,
    pub resources: BTreeMap<ResourceKey, Arc<Stored>>,
}

impl State {
    pub fn get(&self, key: &ResourceKey) -> Option<&Arc<Stored>> {
        self.resources.get(key)
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Arc<Stored>> {
        self.resources
            .range(ResourceKey::new(kind, "")..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, s)| s)
    }

    pub fn iter_resources(&self) -> impl Iterator<Item = &Resource> + Clone {
        self.resources.values().map(|s| &s.resource)
    }
}

/// One entry of the change log.
#[derive(Debug, Clone)]
pub struct Change {
    pub revision: u64,
    pub key: ResourceKey,
    pub before: Option<Arc<Stored>>,
    pub after: Option<Arc<Stored>>,
}

/// What a write asks of the current version of the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// `If-Match: "<revision>"`: the resource must exist at exactly this revision.
    IfMatch(u64),
    /// `If-None-Match: *`: the resource must not exist (create only).
    IfNoneMatch,
    /// The resource must exist (update only).
    MustExist,
}

/// A write in a batch.
#[derive(Debug, Clone)]
pub enum Write {
    Put(Box<Resource>, Precondition),
    Delete(ResourceKey, Precondition),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The new global revision, or the unchanged one when nothing changed.
    pub revision: u64,
    /// Keys that really changed (a put of an identical resource changes nothing).
    pub changed: Vec<ResourceKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(ResourceKey),
    #[error("{key} already exists")]
    AlreadyExists { key: ResourceKey },
    #[error("{key} is at revision {actual}, not {expected}")]
    PreconditionFailed {
        key: ResourceKey,
        expected: u64,
        actual: u64,
    },
    #[error("{key} is still referred to by {}", .by.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    InUse {
        key: ResourceKey,
        by: Vec<ResourceKey>,
    },
    #[error("invalid configuration:\n{0}")]
    Invalid(Problems),
    /// Each resource is valid alone, but the configuration they would make is not (a reference
    /// to a missing resource, a route another API serves): the answer depends on what is
    /// stored, not on the request alone.
    #[error("the configuration would be inconsistent:\n{0}")]
    Inconsistent(Problems),
    #[error("storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("storage: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The database cannot be reached (or its URL or CA file is unusable).
    #[error("{0}")]
    Connect(String),
    #[error("schema migration failed: {0}")]
    Migration(String),
    #[error(
        "the {engine} store has schema version {found}, but this outpost knows up to {known}: \
         it was written by a newer release; run that release (or newer), or restore a backup \
         made before the upgrade"
    )]
    SchemaTooNew {
        engine: String,
        found: i64,
        known: i64,
    },
    #[error("the target store {0} is not empty; copy only into a new, empty database")]
    TargetNotEmpty(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Extra validation run on every candidate state before commit (the control plane plugs in the
/// gateway's own compiler here, so nothing a gateway would refuse is ever accepted).
pub type Validator = Box<dyn Fn(&State) -> Problems + Send + Sync>;

pub struct StoreOptions {
    /// How many revisions the change log keeps; gateways further behind get a full snapshot.
    pub change_log_limit: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            change_log_limit: 10_000,
        }
    }
}

pub struct Store {
    /// The engine, and the write lock: commits, catch-ups and key changes hold it throughout,
    /// so "read the current version, check the precondition, write" is atomic in this process
    /// (and the engine's transaction lock makes it atomic across replicas).
    engine: Mutex<Box<dyn Engine>>,
    current: ArcSwap<State>,
    log: Mutex<ChangeLog>,
    revision_tx: watch::Sender<u64>,
    validator: Option<Validator>,
    options: StoreOptions,
    /// Other replicas' commits (PostgreSQL only); taken by [`Store::follow`].
    notifications: Mutex<Option<std_mpsc::Receiver<()>>>,
}

/// The in-memory copy of the retained change log.
#[derive(Default)]
struct ChangeLog {
    /// Every change with `revision > floor` is in `entries`.
    floor: u64,
    entries: VecDeque<Change>,
    /// Recently rebuilt past states, newest last.
    past: VecDeque<Arc<State>>,
}

const PAST_STATES_CACHED: usize = 8;

/// An engine, and (PostgreSQL) the receiver of other replicas' commit notifications.
type OpenedEngine = (Box<dyn Engine>, Option<std_mpsc::Receiver<()>>);

/// Opens the engine at `location`.
fn open_engine(location: &Location) -> Result<OpenedEngine, StoreError> {
    Ok(match location {
        Location::Sqlite(path) => (Box::new(SqliteEngine::open(path)?), None),
        Location::Postgres { url, ca_file } => {
            let (engine, rx) = PostgresEngine::open(url, ca_file.as_deref())?;
            (Box::new(engine), Some(rx))
        }
    })
}

impl Store {
    /// Opens (creating if needed) the SQLite store at `path`, or an in-memory one for
    /// `:memory:`.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        Self::connect(&Location::Sqlite(path.to_path_buf()), options)
    }

    /// Opens the store at `location`: migrates its schema (refusing one newer than this binary
    /// knows) and loads the current state and the retained change log into memory. With
    /// PostgreSQL, call [`Store::follow`] on the shared store to see other replicas' commits.
    pub fn connect(location: &Location, options: StoreOptions) -> Result<Store, StoreError> {
        let (mut engine, notifications) = open_engine(location)?;
        let dump = engine.dump()?;
        let (state, log) = decode_dump(&dump)?;
        let (revision_tx, _) = watch::channel(state.revision);
        Ok(Store {
            engine: Mutex::new(engine),
            current: ArcSwap::from_pointee(state),
            log: Mutex::new(log),
            revision_tx,
            validator: None,
            options,
            notifications: Mutex::new(notifications),
        })
    }

    pub fn with_validator(mut self, validator: Validator) -> Self {
        self.validator = Some(validator);
        self
    }

    /// With a shared engine (PostgreSQL), starts a thread that applies other replicas' commits
    /// to this store's state as soon as they are notified (and on the engine's fallback
    /// check), which wakes this replica's long-polls. Does nothing for SQLite, or when already
    /// following. The thread ends with the store.
    pub fn follow(self: &Arc<Self>) {
        let Some(rx) = self
            .notifications
            .lock()
            .expect("notifications lock")
            .take()
        else {
            return;
        };
        let store = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("outpost-store-follow".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // One catch-up covers every notification queued meanwhile.
                    while rx.try_recv().is_ok() {}
                    let Some(store) = store.upgrade() else { return };
                    if let Err(e) = store.catch_up() {
                        tracing::warn!(error = %e, "store: cannot catch up with other replicas");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "store: cannot start the follower thread");
        }
    }

    /// Applies whatever other writers committed since this store's revision.
    pub fn catch_up(&self) -> Result<u64, StoreError> {
        let mut engine = self.engine.lock().expect("store lock");
        let since = engine.read_since(self.revision())?;
        self.apply(since)
    }

    /// Publishes what the engine says happened after the current revision (under the engine
    /// lock, so never concurrently with a commit).
    fn apply(&self, since: Since) -> Result<u64, StoreError> {
        let current = self.state();
        match since {
            Since::Changes {
                revision,
                floor,
                changes,
            } => {
                if revision <= current.revision {
                    return Ok(current.revision);
                }
                let changes = changes
                    .into_iter()
                    .map(decode_change)
                    .collect::<Result<Vec<_>, _>>()?;
                let mut resources = current.resources.clone();
                for c in &changes {
                    match &c.after {
                        Some(a) => resources.insert(c.key.clone(), a.clone()),
                        None => resources.remove(&c.key),
                    };
                }
                let mut log = self.log.lock().expect("change log lock");
                log.entries.extend(changes);
                if floor > log.floor {
                    log.floor = floor;
                    while log.entries.front().is_some_and(|c| c.revision <= floor) {
                        log.entries.pop_front();
                    }
                    log.past.retain(|s| s.revision >= floor);
                }
                drop(log);
                self.publish(State {
                    revision,
                    resources,
                });
                Ok(revision)
            }
            Since::Everything(dump) => {
                let (state, fresh) = decode_dump(&dump)?;
                let revision = state.revision;
                *self.log.lock().expect("change log lock") = fresh;
                self.publish(state);
                Ok(revision)
            }
        }
    }

    fn publish(&self, state: State) {
        let revision = state.revision;
        self.current.store(Arc::new(state));
        self.revision_tx.send_replace(revision);
    }

    /// The current state; lock-free.
    pub fn state(&self) -> Arc<State> {
        self.current.load_full()
    }

    pub fn revision(&self) -> u64 {
        self.current.load().revision
    }

    /// A receiver that sees every new revision (for long-polls).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }

    /// The oldest revision a delta can start from.
    pub fn log_floor(&self) -> u64 {
        self.log.lock().expect("change log lock").floor
    }

    /// The state as it was at `revision`, rebuilt from the change log; `None` when the log no
    /// longer covers it (or it is in the future).
    pub fn state_at(&self, revision: u64) -> Option<Arc<State>> {
        let current = self.state();
        if revision == current.revision {
            return Some(current);
        }
        if revision > current.revision {
            return None;
        }
        let mut log = self.log.lock().expect("change log lock");
        if revision < log.floor {
            return None;
        }
        if let Some(s) = log.past.iter().find(|s| s.revision == revision) {
            return Some(s.clone());
        }
        let mut resources = current.resources.clone();
        for change in log.entries.iter().rev() {
            if change.revision <= revision {
                break;
            }
            match &change.before {
                Some(b) => {
                    resources.insert(change.key.clone(), b.clone());
                }
                None => {
                    resources.remove(&change.key);
                }
            }
        }
        let state = Arc::new(State {
            revision,
            resources,
        });
        if log.past.len() == PAST_STATES_CACHED {
            log.past.pop_front();
        }
        log.past.push_back(state.clone());
        Some(state)
    }

    /// Changes with a revision greater than `after`, or `None` when the log does not reach back.
    pub fn changes_since(&self, after: u64) -> Option<Vec<Change>> {
        let log = self.log.lock().expect("change log lock");
        if after < log.floor {
            return None;
        }
        Some(
            log.entries
                .iter()
                .filter(|c| c.revision > after)
                .cloned()
                .collect(),
        )
    }

    pub fn put(&self, resource: Resource, pre: Precondition) -> Result<Committed, StoreError> {
        self.commit(vec![Write::Put(Box::new(resource), pre)])
    }

    pub fn delete(&self, key: ResourceKey, pre: Precondition) -> Result<Committed, StoreError> {
        self.commit(vec![Write::Delete(key, pre)])
    }

    /// Applies every write atomically under one new revision, after validating the whole
    /// resulting configuration. Writes that change nothing are dropped; when none is left the
    /// revision does not move.
    ///
    /// Inside the engine's write transaction, the store first catches up with whatever other
    /// replicas committed, so preconditions and validation see the durable truth, not a cache.
    pub fn commit(&self, writes: Vec<Write>) -> Result<Committed, StoreError> {
        let mut engine = self.engine.lock().expect("store lock");
        let durable = engine.begin()?;
        let prepared = (|| {
            if durable != self.revision() {
                let since = engine.since(self.revision())?;
                self.apply(since)?;
            }
            self.prepare(writes)
        })();
        let prepared = match prepared {
            Ok(Some(p)) => p,
            Ok(None) => {
                engine.rollback();
                return Ok(Committed {
                    revision: self.revision(),
                    changed: Vec::new(),
                });
            }
            Err(e) => {
                engine.rollback();
                return Err(e);
            }
        };
        let Prepared {
            state,
            batch,
            entries,
            changed,
        } = prepared;
        if let Err(e) = engine.write(&batch).and_then(|()| engine.commit()) {
            engine.rollback();
            return Err(e);
        }

        // Durable; now publish: readers never see a revision that is not.
        let next = state.revision;
        let mut log = self.log.lock().expect("change log lock");
        if let Some(new_floor) = batch.new_floor {
            log.floor = new_floor;
            while log.entries.front().is_some_and(|c| c.revision <= new_floor) {
                log.entries.pop_front();
            }
            log.past.retain(|s| s.revision >= new_floor);
        }
        log.entries.extend(entries);
        drop(log);
        self.publish(state);
        Ok(Committed {
            revision: next,
            changed,
        })
    }

    /// Checks and validates `writes` against the current state; `None` when nothing changes.
    fn prepare(&self, writes: Vec<Write>) -> Result<Option<Prepared>, StoreError> {
        let current = self.state();
        let mut candidate = current.resources.clone();
        let mut changed: Vec<(ResourceKey, Option<Arc<Stored>>)> = Vec::new();
        let mut problems = Problems::new();
        let mut deleted = Vec::new();
        let next = current.revision + 1;

        for write in writes {
            match write {
                Write::Put(resource, pre) => {
                    let mut resource = *resource;
                    let key = resource.key();
                    let existing = candidate.get(&key).cloned();
                    check_precondition(&key, existing.as_deref(), pre)?;
                    fill_generated(&mut resource, existing.as_deref().map(|s| &s.resource));
                    let p = check_resource(&resource);
                    if !p.is_empty() {
                        problems.extend(p.prefixed(&key.to_string()));
                        continue;
                    }
                    if existing.as_deref().map(|s| &s.resource) == Some(&resource) {
                        continue;
                    }
                    changed.push((key.clone(), existing));
                    candidate.insert(
                        key,
                        Arc::new(Stored {
                            resource,
                            revision: next,
                        }),
                    );
                }
                Write::Delete(key, pre) => {
                    let existing = candidate.get(&key).cloned();
                    if existing.is_none() {
                        if pre == Precondition::None {
                            continue;
                        }
                        return Err(StoreError::NotFound(key));
                    }
                    check_precondition(&key, existing.as_deref(), pre)?;
                    candidate.remove(&key);
                    deleted.push(key.clone());
                    changed.push((key, existing));
                }
            }
        }
        if !problems.is_empty() {
            return Err(StoreError::Invalid(problems));
        }
        if changed.is_empty() {
            return Ok(None);
        }
        for key in &deleted {
            let by = referrers(key, candidate.values().map(|s| &s.resource));
            if !by.is_empty() {
                return Err(StoreError::InUse {
                    key: key.clone(),
                    by,
                });
            }
        }
        let problems = check_config(candidate.values().map(|s| &s.resource));
        if !problems.is_empty() {
            return Err(StoreError::Inconsistent(problems));
        }
        let state = State {
            revision: next,
            resources: candidate,
        };
        if let Some(validate) = &self.validator {
            let problems = validate(&state);
            if !problems.is_empty() {
                return Err(StoreError::Inconsistent(problems));
            }
        }

        let mut batch = WriteBatch {
            revision: next,
            ..WriteBatch::default()
        };
        let mut entries = Vec::with_capacity(changed.len());
        for (seq, (key, before)) in changed.iter().enumerate() {
            let after = state.resources.get(key).cloned();
            let kind = key.kind.plural().to_owned();
            match &after {
                Some(a) => batch.upserts.push(ResourceRow {
                    kind: kind.clone(),
                    name: key.name.clone(),
                    revision: next as i64,
                    body: a.resource.to_json().to_string(),
                }),
                None => {
                    batch.deletes.push((kind.clone(), key.name.clone()));
                    if key.kind == Kind::Gateway {
                        batch.deleted_gateways.push(key.name.clone());
                    }
                }
            }
            batch.changes.push(ChangeRow {
                revision: next as i64,
                seq: seq as i64,
                kind,
                name: key.name.clone(),
                before: before.as_ref().map(|b| b.resource.to_json().to_string()),
                before_revision: before.as_ref().map(|b| b.revision as i64),
                after: after.as_ref().map(|a| a.resource.to_json().to_string()),
            });
            entries.push(Change {
                revision: next,
                key: key.clone(),
                before: before.clone(),
                after,
            });
        }
        let new_floor = next.saturating_sub(self.options.change_log_limit);
        if new_floor > self.log_floor() {
            batch.new_floor = Some(new_floor);
        }
        Ok(Some(Prepared {
            state,
            batch,
            entries,
            changed: changed.into_iter().map(|(k, _)| k).collect(),
        }))
    }

    // === gateway keys ===

    /// The gateway's primary and secondary keys, created on first use.
    pub fn gateway_keys(&self, gateway: &str) -> Result<GatewayKeys, StoreError> {
        let key = ResourceKey::new(Kind::Gateway, gateway);
        if self.state().get(&key).is_none() {
            return Err(StoreError::NotFound(key));
        }
        let mut engine = self.engine.lock().expect("store lock");
        if let Some(found) = engine.gateway_keys(gateway)? {
            return Ok(found.into());
        }
        // Another replica may insert at the same moment: the stored keys win either way.
        let stored = engine.insert_gateway_keys(&GatewayKeyRecord {
            gateway: gateway.to_owned(),
            primary_key: generate_key(),
            secondary_key: generate_key(),
        })?;
        Ok(stored.into())
    }

    /// Replaces one key; every token minted from the old key stops verifying.
    pub fn regenerate_gateway_key(
        &self,
        gateway: &str,
        which: KeyType,
    ) -> Result<GatewayKeys, StoreError> {
        self.gateway_keys(gateway)?;
        let mut engine = self.engine.lock().expect("store lock");
        // Under the write lock, so a regeneration of the other key on another replica is not
        // lost.
        engine.begin()?;
        let result = (|| {
            let mut keys = engine
                .gateway_keys(gateway)?
                .ok_or_else(|| StoreError::NotFound(ResourceKey::new(Kind::Gateway, gateway)))?;
            match which {
                KeyType::Primary => keys.primary_key = generate_key(),
                KeyType::Secondary => keys.secondary_key = generate_key(),
            }
            engine.update_gateway_keys(&keys)?;
            Ok(keys)
        })();
        finish(&mut **engine, result).map(Into::into)
    }

    // === config signing keys ===

    /// The config signing keys: the active one (created on first use) and the history.
    pub fn signing_keys(&self) -> Result<SigningKeys, StoreError> {
        let mut engine = self.engine.lock().expect("store lock");
        let rows = engine.signing_keys()?;
        if !rows.is_empty() {
            return SigningKeys::from_rows(rows);
        }
        engine.begin()?;
        let result = (|| {
            // Under the write lock: replicas starting together create one key, not one each.
            if engine.signing_keys()?.is_empty() {
                engine.insert_signing_key(&signing_key_record(&new_signing_key(), None))?;
            }
            engine.signing_keys()
        })();
        SigningKeys::from_rows(finish(&mut **engine, result)?)
    }

    /// Replaces the active signing key with a new one, endorsed by the old one. The old private
    /// key is erased: nothing needs it once its endorsement of the new key is stored.
    pub fn rotate_signing_key(&self) -> Result<SigningKeys, StoreError> {
        let mut engine = self.engine.lock().expect("store lock");
        engine.begin()?;
        let result = (|| {
            let mut rows = engine.signing_keys()?;
            if rows.is_empty() {
                engine.insert_signing_key(&signing_key_record(&new_signing_key(), None))?;
                rows = engine.signing_keys()?;
            }
            let current = SigningKeys::from_rows(rows)?;
            let next = new_signing_key();
            let endorsement = current.active.endorse(&next.public());
            engine.insert_signing_key(&signing_key_record(&next, Some(&endorsement)))?;
            engine.erase_old_private_keys()?;
            engine.signing_keys()
        })();
        SigningKeys::from_rows(finish(&mut **engine, result)?)
    }

    /// A value kept in the store's metadata table (e.g. the generated admin token).
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.engine.lock().expect("store lock").meta(key)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.engine.lock().expect("store lock").set_meta(key, value)
    }

    // === instance status (heartbeats) ===

    /// Stores instance records; a stored row with a later `last_seen` is kept.
    pub fn save_instances(&self, rows: &[InstanceRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.engine.lock().expect("store lock").save_instances(rows)
    }

    /// Instance records last seen at or after `seen_since` (RFC 3339, see [`InstanceRow`]).
    pub fn load_instances(&self, seen_since: &str) -> Result<Vec<InstanceRow>, StoreError> {
        self.engine
            .lock()
            .expect("store lock")
            .load_instances(seen_since)
    }

    /// Deletes instance records last seen before `seen_before`.
    pub fn forget_instances(&self, seen_before: &str) -> Result<(), StoreError> {
        self.engine
            .lock()
            .expect("store lock")
            .forget_instances(seen_before)
    }

    // === analytics (telemetry) ===

    /// Adds one telemetry batch's rows, unless the batch was added before (by any replica):
    /// `Ok(false)`. Durable when this returns `Ok`.
    pub fn add_analytics(
        &self,
        batch: &BatchId,
        received_at: i64,
        rows: &[AnalyticsRow],
    ) -> Result<bool, StoreError> {
        self.engine
            .lock()
            .expect("store lock")
            .add_analytics(batch, received_at, rows)
    }

    /// Sums of the analytics rows `filter` selects, per group.
    pub fn analytics(&self, filter: &AnalyticsFilter) -> Result<Vec<AnalyticsSum>, StoreError> {
        self.engine.lock().expect("store lock").analytics(filter)
    }

    /// Deletes analytics of minutes before `before_minute` (unix seconds); returns the rows
    /// deleted.
    pub fn purge_analytics(&self, before_minute: i64) -> Result<u64, StoreError> {
        self.engine
            .lock()
            .expect("store lock")
            .purge_analytics(before_minute)
    }

    #[cfg(test)]
    fn with_engine<T>(&self, f: impl FnOnce(&mut dyn Engine) -> T) -> T {
        f(&mut **self.engine.lock().expect("store lock"))
    }
}

/// A commit checked and ready to write.
struct Prepared {
    state: State,
    batch: WriteBatch,
    entries: Vec<Change>,
    changed: Vec<ResourceKey>,
}

/// Commits the engine's transaction when `result` is good, rolls it back otherwise.
fn finish<T>(engine: &mut dyn Engine, result: Result<T, StoreError>) -> Result<T, StoreError> {
    match result {
        Ok(v) => {
            if let Err(e) = engine.commit() {
                engine.rollback();
                return Err(e);
            }
            Ok(v)
        }
        Err(e) => {
            engine.rollback();
            Err(e)
        }
    }
}

/// The state and change log a dump holds.
fn decode_dump(dump: &Dump) -> Result<(State, ChangeLog), StoreError> {
    let mut resources = BTreeMap::new();
    for row in &dump.resources {
        let stored = decode_stored(&row.kind, row.revision, &row.body)?;
        resources.insert(stored.resource.key(), Arc::new(stored));
    }
    let entries = dump
        .changes
        .iter()
        .cloned()
        .map(decode_change)
        .collect::<Result<VecDeque<_>, _>>()?;
    Ok((
        State {
            revision: dump.meta_u64("revision")?,
            resources,
        },
        ChangeLog {
            floor: dump.meta_u64("log_floor")?,
            entries,
            past: VecDeque::new(),
        },
    ))
}

fn decode_change(row: ChangeRow) -> Result<Change, StoreError> {
    let kind = parse_kind(&row.kind)?;
    let before = match (row.before, row.before_revision) {
        (Some(b), Some(br)) => Some(Arc::new(decode_stored(&row.kind, br, &b)?)),
        _ => None,
    };
    let after = match row.after {
        Some(a) => Some(Arc::new(decode_stored(&row.kind, row.revision, &a)?)),
        None => None,
    };
    Ok(Change {
        revision: row.revision as u64,
        key: ResourceKey::new(kind, row.name),
        before,
        after,
    })
}

/// What [`copy`] moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub revision: u64,
    pub resources: usize,
    pub changes: usize,
    pub gateway_keys: usize,
    pub signing_keys: usize,
    /// Rows of `analytics` (one minute of one series each, with its latency histogram).
    pub analytics_rows: usize,
    /// Telemetry batch ids recorded (so batches retried after the move count once).
    pub analytics_batches: usize,
}

/// Copies every row of one store into another, empty one (`outpost store copy`): revisions,
/// the change log, gateway keys (so gateway tokens stay valid), signing keys and secrets, as
/// they are, and the request analytics (per-minute sums and histograms, with the ids of the
/// batches they came from). The source is decoded first, so a corrupt store is refused before
/// anything is written; the target is written in one transaction. Instance rows (the last
/// heartbeat of each gateway instance) are not copied: they are a cache of what the gateways
/// report every few seconds, rebuilt by their next heartbeats.
pub fn copy(from: &Location, to: &Location) -> Result<CopyReport, StoreError> {
    let (mut source, _) = open_engine(from)?;
    let dump = source.dump()?;
    decode_dump(&dump)?;
    let analytics = source.dump_analytics()?;
    let (mut target, _) = open_engine(to)?;
    if !target.is_empty()? {
        return Err(StoreError::TargetNotEmpty(to.describe()));
    }
    target.import(&dump, &analytics)?;
    Ok(CopyReport {
        revision: dump.meta_u64("revision")?,
        resources: dump.resources.len(),
        changes: dump.changes.len(),
        gateway_keys: dump.gateway_keys.len(),
        signing_keys: dump.signing_keys.len(),
        analytics_rows: analytics.rows.len(),
        analytics_batches: analytics.batches.len(),
    })
}

/// One row of `signing_keys`, without its private key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SigningKeyInfo {
    /// `ed25519:<base64>`.
    pub key: String,
    pub created_at: String,
    /// The key this one replaced and that vouches for it (empty for the first key).
    pub endorsed_by: String,
}

/// The control plane's config signing keys. Kept out of the revisioned configuration (like the
/// gateway keys): they are never exported, never in a change log, never sent to a gateway
/// except as public keys.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    pub active: SigningKey,
    /// Every key, oldest first; the last one is the active key.
    pub history: Vec<SigningKeyInfo>,
    /// Each key endorsed by the one before it, oldest first.
    pub endorsements: Vec<KeyEndorsement>,
}

impl SigningKeys {
    fn from_rows(rows: Vec<SigningKeyRecord>) -> Result<SigningKeys, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("signing_keys: {what}"));
        let rows: Vec<(SigningKeyInfo, Option<String>, Option<String>)> = rows
            .into_iter()
            .map(|r| {
                (
                    SigningKeyInfo {
                        key: r.public_key,
                        created_at: r.created_at,
                        endorsed_by: r.endorsed_by.unwrap_or_default(),
                    },
                    r.private_key,
                    r.endorsement,
                )
            })
            .collect();
        let last = rows.last().ok_or_else(|| corrupt("no key"))?;
        let active = last
            .1
            .as_deref()
            .ok_or_else(|| corrupt("the newest key has no private key"))
            .and_then(|p| {
                SigningKey::from_secret_base64(p).map_err(|_| corrupt("unreadable private key"))
            })?;
        if active.public().to_string() != last.0.key {
            return Err(corrupt(
                "the newest private key does not match its public key",
            ));
        }
        let endorsements = rows
            .iter()
            .filter_map(|(info, _, endorsement)| {
                Some(KeyEndorsement {
                    key: info.key.clone(),
                    endorsed_by: info.endorsed_by.clone(),
                    signature: endorsement.clone()?,
                })
            })
            .collect();
        Ok(SigningKeys {
            active,
            history: rows.into_iter().map(|(info, _, _)| info).collect(),
            endorsements,
        })
    }
}

fn new_signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = SigningKey::from_seed(seed);
    seed.fill(0);
    key
}

fn signing_key_record(key: &SigningKey, endorsement: Option<&KeyEndorsement>) -> SigningKeyRecord {
    SigningKeyRecord {
        id: 0,
        public_key: key.public().to_string(),
        private_key: Some(key.to_secret_base64()),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        endorsed_by: endorsement.map(|e| e.endorsed_by.clone()),
        endorsement: endorsement.map(|e| e.signature.clone()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GatewayKeys {
    pub primary: String,
    pub secondary: String,
}

impl From<GatewayKeyRecord> for GatewayKeys {
    fn from(r: GatewayKeyRecord) -> Self {
        Self {
            primary: r.primary_key,
            secondary: r.secondary_key,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    Primary,
    Secondary,
}

/// 32 random bytes, hex: used for subscription keys and gateway keys.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Subscription keys left empty keep their current value or get a new one; a secret named value
/// sent back masked keeps its stored value. This is what makes `export` → `apply` a no-op.
pub fn fill_generated(resource: &mut Resource, existing: Option<&Resource>) {
    match (resource, existing) {
        (Resource::Subscription(s), existing) => {
            let old = match existing {
                Some(Resource::Subscription(o)) => Some(o),
                _ => None,
            };
            if s.primary_key.is_empty() {
                s.primary_key = old
                    .map(|o| o.primary_key.clone())
                    .unwrap_or_else(generate_key);
            }
            if s.secondary_key.is_empty() {
                s.secondary_key = old
                    .map(|o| o.secondary_key.clone())
                    .unwrap_or_else(generate_key);
            }
        }
        (Resource::NamedValue(nv), Some(Resource::NamedValue(old)))
            if nv.secret && nv.value == SECRET_MASK =>
        {
            nv.value = old.value.clone();
        }
        _ => {}
    }
}

fn check_precondition(
    key: &ResourceKey,
    existing: Option<&Stored>,
    pre: Precondition,
) -> Result<(), StoreError> {
    match (pre, existing) {
        (Precondition::None, _) => Ok(()),
        (Precondition::IfNoneMatch, Some(_)) => Err(StoreError::AlreadyExists { key: key.clone() }),
        (Precondition::IfNoneMatch, None) => Ok(()),
        (Precondition::MustExist | Precondition::IfMatch(_), None) => {
            Err(StoreError::NotFound(key.clone()))
        }
        (Precondition::MustExist, Some(_)) => Ok(()),
        (Precondition::IfMatch(expected), Some(s)) if s.revision != expected => {
            Err(StoreError::PreconditionFailed {
                key: key.clone(),
                expected,
                actual: s.revision,
            })
        }
        (Precondition::IfMatch(_), Some(_)) => Ok(()),
    }
}

fn parse_kind(plural: &str) -> Result<Kind, StoreError> {
    Kind::from_plural(plural).ok_or_else(|| StoreError::Corrupt(format!("unknown kind '{plural}'")))
}

fn decode_stored(kind: &str, revision: i64, body: &str) -> Result<Stored, StoreError> {
    let kind = parse_kind(kind)?;
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("{kind} body: {e}")))?;
    let resource = Resource::from_json(kind, value)
        .map_err(|e| StoreError::Corrupt(format!("{kind} body: {e}")))?;
    Ok(Stored {
        resource,
        revision: revision as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::engine::AnalyticsDump;
    use super::*;
    use outpost_integration::PostgresServer;
    use outpost_model::resources::{Backend, BackendTls, NamedValue};

    /// A database for one test: a SQLite file in a temporary directory, or a private
    /// PostgreSQL server.
    enum TestDb {
        Sqlite(tempfile::TempDir),
        Postgres(PostgresServer),
    }

    impl TestDb {
        fn sqlite() -> TestDb {
            TestDb::Sqlite(tempfile::tempdir().unwrap())
        }

        fn postgres() -> TestDb {
            TestDb::Postgres(PostgresServer::start())
        }

        fn location(&self) -> Location {
            match self {
                TestDb::Sqlite(dir) => Location::Sqlite(dir.path().join("store.db")),
                TestDb::Postgres(pg) => Location::Postgres {
                    url: pg.url(),
                    ca_file: None,
                },
            }
        }

        /// A store on this database (a new "replica" each call, for PostgreSQL), following
        /// the others' commits.
        fn open(&self, options: StoreOptions) -> Store {
            Store::connect(&self.location(), options).unwrap()
        }

        fn open_following(&self) -> Arc<Store> {
            let store = Arc::new(self.open(StoreOptions::default()));
            store.follow();
            store
        }
    }

    /// One test body, run against each engine.
    fn on_both_engines(body: impl Fn(&TestDb)) {
        body(&TestDb::sqlite());
        body(&TestDb::postgres());
    }

    fn backend(name: &str, url: &str) -> Resource {
        Resource::Backend(Backend {
            name: name.into(),
            url: url.into(),
            connect_timeout_ms: 1000,
            request_timeout_ms: 1000,
            tls: BackendTls::default(),
            protocol: Default::default(),
            members: Vec::new(),
            load_balancing: None,
            passive_health: None,
            health_check: None,
            circuit_breaker: None,
        })
    }

    fn nv(name: &str, value: &str) -> Resource {
        Resource::NamedValue(NamedValue {
            name: name.into(),
            value: value.into(),
            secret: false,
        })
    }

    #[test]
    fn revisions_survive_restart_and_log_rebuilds_past_states() {
        on_both_engines(|db| {
            {
                let store = db.open(StoreOptions::default());
                assert_eq!(
                    store
                        .put(nv("a", "1"), Precondition::None)
                        .unwrap()
                        .revision,
                    1
                );
                assert_eq!(
                    store
                        .put(nv("a", "2"), Precondition::None)
                        .unwrap()
                        .revision,
                    2
                );
                // identical put: no new revision
                assert_eq!(
                    store
                        .put(nv("a", "2"), Precondition::None)
                        .unwrap()
                        .revision,
                    2
                );
                assert_eq!(
                    store
                        .delete(ResourceKey::new(Kind::NamedValue, "a"), Precondition::None)
                        .unwrap()
                        .revision,
                    3
                );
            }
            let store = db.open(StoreOptions::default());
            assert_eq!(store.revision(), 3);
            assert_eq!(
                store
                    .put(nv("b", "x"), Precondition::None)
                    .unwrap()
                    .revision,
                4
            );
            let at1 = store.state_at(1).unwrap();
            let Resource::NamedValue(a) = &at1
                .get(&ResourceKey::new(Kind::NamedValue, "a"))
                .unwrap()
                .resource
            else {
                panic!()
            };
            assert_eq!(a.value, "1");
            assert!(store.state_at(3).unwrap().resources.is_empty());
            assert!(store.state_at(9).is_none());
        });
    }

    #[test]
    fn log_limit_moves_the_floor() {
        on_both_engines(|db| {
            let store = db.open(StoreOptions {
                change_log_limit: 2,
            });
            for i in 0..5 {
                store
                    .put(nv("a", &i.to_string()), Precondition::None)
                    .unwrap();
            }
            assert_eq!(store.log_floor(), 3);
            assert!(store.state_at(2).is_none());
            assert!(store.state_at(3).is_some());
            assert_eq!(store.changes_since(3).unwrap().len(), 2);
            assert!(store.changes_since(1).is_none());
        });
    }

    #[test]
    fn preconditions_and_references() {
        on_both_engines(|db| {
            let store = db.open(StoreOptions::default());
            store
                .put(nv("host", "127.0.0.1"), Precondition::IfNoneMatch)
                .unwrap();
            assert!(matches!(
                store.put(nv("host", "x"), Precondition::IfNoneMatch),
                Err(StoreError::AlreadyExists { .. })
            ));
            assert!(matches!(
                store.put(nv("host", "x"), Precondition::IfMatch(7)),
                Err(StoreError::PreconditionFailed { actual: 1, .. })
            ));
            store
                .put(backend("b", "http://{{host}}:80"), Precondition::None)
                .unwrap();
            match store.delete(
                ResourceKey::new(Kind::NamedValue, "host"),
                Precondition::None,
            ) {
                Err(StoreError::InUse { by, .. }) => {
                    assert_eq!(by, vec![ResourceKey::new(Kind::Backend, "b")])
                }
                other => panic!("{other:?}"),
            }
            match store.put(backend("c", "http://{{nope}}"), Precondition::None) {
                Err(StoreError::Inconsistent(p)) => assert!(p.to_string().contains("nope"), "{p}"),
                other => panic!("{other:?}"),
            }
        });
    }

    #[test]
    fn concurrent_writers_with_if_match_never_lose_an_update() {
        on_both_engines(|db| {
            let store = Arc::new(db.open(StoreOptions::default()));
            store.put(nv("counter", "0"), Precondition::None).unwrap();
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        let mut done = 0;
                        while done < 25 {
                            let state = store.state();
                            let s = state
                                .get(&ResourceKey::new(Kind::NamedValue, "counter"))
                                .unwrap();
                            let Resource::NamedValue(v) = &s.resource else {
                                panic!()
                            };
                            let n: u64 = v.value.parse().unwrap();
                            match store.put(
                                nv("counter", &(n + 1).to_string()),
                                Precondition::IfMatch(s.revision),
                            ) {
                                Ok(_) => done += 1,
                                Err(StoreError::PreconditionFailed { .. }) => {}
                                Err(e) => panic!("{e}"),
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let state = store.state();
            let Resource::NamedValue(v) = &state
                .get(&ResourceKey::new(Kind::NamedValue, "counter"))
                .unwrap()
                .resource
            else {
                panic!()
            };
            assert_eq!(v.value, "100");
        });
    }

    /// The signing key is made once, survives a restart, is not part of the configuration, and
    /// a rotation endorses the new key with the old one and erases the old private key.
    #[test]
    fn signing_keys_persist_and_rotate() {
        on_both_engines(|db| {
            use outpost_model::signing::{self, PublicKey};
            let first = {
                let store = db.open(StoreOptions::default());
                let keys = store.signing_keys().unwrap();
                assert_eq!(keys.history.len(), 1);
                assert!(keys.endorsements.is_empty());
                assert_eq!(store.revision(), 0, "not a configuration change");
                keys.active.public()
            };
            let store = db.open(StoreOptions::default());
            assert_eq!(store.signing_keys().unwrap().active.public(), first);
            let rotated = store.rotate_signing_key().unwrap();
            let second = rotated.active.public();
            assert_ne!(second, first);
            assert_eq!(rotated.history.len(), 2);
            assert_eq!(rotated.history[1].endorsed_by, first.to_string());
            let sig = rotated.active.sign_config("gw", 3, "h");
            assert_eq!(
                signing::verify_config(&[first], "gw", 3, "h", &sig, &rotated.endorsements)
                    .unwrap(),
                second,
                "a gateway trusting the old key follows the rotation"
            );
            let rows = store.with_engine(|e| e.signing_keys()).unwrap();
            let old = rows
                .iter()
                .find(|r| r.public_key == first.to_string())
                .unwrap();
            assert!(old.private_key.is_none(), "the old private key is erased");
            assert!(PublicKey::parse(&rotated.history[0].key).is_ok());
        });
    }

    fn value_of(state: &State, name: &str) -> String {
        match state
            .get(&ResourceKey::new(Kind::NamedValue, name))
            .map(|s| &s.resource)
        {
            Some(Resource::NamedValue(v)) => v.value.clone(),
            other => panic!("{name}: {other:?}"),
        }
    }

    /// Waits (blocking) until `store` has reached `revision`; panics after a generous bound.
    fn wait_for_revision(store: &Store, revision: u64) {
        let mut rx = store.subscribe();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    rx.wait_for(|r| *r >= revision),
                )
                .await
                .expect("the replica sees the revision")
                .unwrap();
            });
    }

    /// A store whose schema was migrated by a newer release is refused, by version, on both
    /// engines; nothing is changed in it.
    #[test]
    fn a_newer_schema_is_refused() {
        on_both_engines(|db| {
            drop(db.open(StoreOptions::default()));
            let future = "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
                          VALUES (99, 'future', '2030-01-01T00:00:00Z', '0')";
            match db {
                TestDb::Sqlite(dir) => {
                    rusqlite::Connection::open(dir.path().join("store.db"))
                        .unwrap()
                        .execute(future, [])
                        .unwrap();
                }
                TestDb::Postgres(pg) => {
                    pg.psql(postgres_test_db(), future);
                }
            }
            let err = Store::connect(&db.location(), StoreOptions::default())
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains("schema version 99"), "{err}");
            assert!(err.contains("newer release"), "{err}");
        });
    }

    fn postgres_test_db() -> &'static str {
        outpost_integration::postgres::PG_DATABASE
    }

    /// Two replicas on one PostgreSQL, four writers: every revision from 1 to 100 exactly once,
    /// and both replicas end at the same state.
    #[test]
    fn replicas_share_one_gapless_sequence() {
        let db = TestDb::postgres();
        let replicas = [db.open_following(), db.open_following()];
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = replicas[t % 2].clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            store
                                .put(nv(&format!("t{t}-{i}"), "x"), Precondition::IfNoneMatch)
                                .unwrap()
                                .revision
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut revisions: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        revisions.sort_unstable();
        assert_eq!(revisions, (1..=100).collect::<Vec<_>>());
        let TestDb::Postgres(pg) = &db else {
            unreachable!()
        };
        let stored = pg.psql(
            postgres_test_db(),
            "SELECT count(DISTINCT revision), min(revision), max(revision) FROM changes",
        );
        assert_eq!(stored, "100|1|100");
        for r in &replicas {
            wait_for_revision(r, 100);
            assert_eq!(r.state().resources.len(), 100);
            assert_eq!(r.changes_since(0).unwrap().len(), 100);
        }
        assert_eq!(replicas[0].state().resources, replicas[1].state().resources);
    }

    /// `If-Match` against a replica whose cache is behind still sees the other replica's
    /// writes: the precondition is checked inside the write transaction, after catching up.
    #[test]
    fn if_match_holds_across_replicas() {
        let db = TestDb::postgres();
        // Not following: their caches only move when they write themselves, the worst case.
        let replicas = [
            Arc::new(db.open(StoreOptions::default())),
            Arc::new(db.open(StoreOptions::default())),
        ];
        replicas[0]
            .put(nv("counter", "0"), Precondition::None)
            .unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = replicas[t % 2].clone();
                std::thread::spawn(move || {
                    let mut done = 0;
                    let mut stale = 0;
                    while done < 10 {
                        let state = store.state();
                        let at = state
                            .get(&ResourceKey::new(Kind::NamedValue, "counter"))
                            .map_or(0, |s| s.revision);
                        // A replica that never saw the counter offers revision 0: refused once
                        // the write transaction has caught up, and then it knows.
                        let n: u64 = if at == 0 {
                            0
                        } else {
                            value_of(&state, "counter").parse().unwrap()
                        };
                        match store.put(
                            nv("counter", &(n + 1).to_string()),
                            Precondition::IfMatch(at),
                        ) {
                            Ok(_) => done += 1,
                            Err(StoreError::PreconditionFailed { .. }) => stale += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    stale
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let fresh = db.open(StoreOptions::default());
        assert_eq!(value_of(&fresh.state(), "counter"), "40");
        assert_eq!(fresh.revision(), 41);
    }

    /// A commit on one replica wakes what waits on another (a gateway's long-poll waits on
    /// exactly this receiver), without a write on the second one.
    #[test]
    fn a_commit_wakes_the_other_replica() {
        let db = TestDb::postgres();
        let a = db.open_following();
        let b = db.open_following();
        let committed = a.put(nv("x", "1"), Precondition::None).unwrap();
        wait_for_revision(&b, committed.revision);
        assert_eq!(value_of(&b.state(), "x"), "1");
        let committed = a
            .delete(ResourceKey::new(Kind::NamedValue, "x"), Precondition::None)
            .unwrap();
        wait_for_revision(&b, committed.revision);
        assert!(b.state().resources.is_empty());
        assert_eq!(b.changes_since(0).unwrap().len(), 2);
        assert!(
            b.state_at(1)
                .unwrap()
                .get(&ResourceKey::new(Kind::NamedValue, "x"))
                .is_some()
        );
    }

    /// `store copy` from SQLite to PostgreSQL keeps revisions, the change log (deltas from an
    /// old revision still work), gateway keys and signing keys; a non-empty target is refused.
    #[test]
    fn copy_keeps_revisions_log_and_keys() {
        use outpost_model::resources::Gateway;
        let sqlite = TestDb::sqlite();
        let (keys, signing, state) = {
            let store = sqlite.open(StoreOptions::default());
            store.put(nv("a", "1"), Precondition::None).unwrap();
            store
                .put(
                    Resource::NamedValue(NamedValue {
                        name: "secret".into(),
                        value: "s3cret".into(),
                        secret: true,
                    }),
                    Precondition::None,
                )
                .unwrap();
            store
                .put(
                    Resource::Gateway(Gateway {
                        name: "edge".into(),
                        location: String::new(),
                        description: String::new(),
                        apis: Vec::new(),
                        hostnames: Vec::new(),
                    }),
                    Precondition::None,
                )
                .unwrap();
            store.put(nv("a", "2"), Precondition::None).unwrap();
            let keys = store.gateway_keys("edge").unwrap();
            let signing = store.rotate_signing_key().unwrap();
            (keys, signing, store.state())
        };
        let pg = TestDb::postgres();
        let report = copy(&sqlite.location(), &pg.location()).unwrap();
        assert_eq!(report.revision, 4);
        assert_eq!(report.changes, 4);
        assert_eq!(report.gateway_keys, 1);
        assert_eq!(report.signing_keys, 2);

        let copied = pg.open(StoreOptions::default());
        assert_eq!(copied.revision(), 4);
        assert_eq!(copied.state().resources, state.resources);
        assert_eq!(value_of(&copied.state(), "secret"), "s3cret");
        assert_eq!(value_of(&copied.state_at(1).unwrap(), "a"), "1");
        assert_eq!(copied.gateway_keys("edge").unwrap(), keys);
        let copied_signing = copied.signing_keys().unwrap();
        assert_eq!(copied_signing.active.public(), signing.active.public());
        assert_eq!(copied_signing.history, signing.history);
        assert_eq!(
            copied
                .put(nv("b", "1"), Precondition::None)
                .unwrap()
                .revision,
            5,
            "the sequence goes on"
        );

        let err = copy(&sqlite.location(), &pg.location())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not empty"), "{err}");
    }

    /// TLS to PostgreSQL: with `ca_file` the store connects to a TLS-only server; a CA that did
    /// not sign the server's certificate is refused.
    #[test]
    fn postgres_over_tls_verifies_the_server() {
        let pki = outpost_integration::TestPki::new();
        let pg = PostgresServer::start_tls(&pki);
        let with_ca = |ca: String| Location::Postgres {
            url: pg.url(),
            ca_file: Some(ca.into()),
        };
        let store = Store::connect(&with_ca(pki.path("ca.pem")), StoreOptions::default()).unwrap();
        store.put(nv("a", "1"), Precondition::None).unwrap();
        // psql comes in over the Unix socket, so every TLS session is the store's.
        let tls_sessions: u32 = pg
            .psql(
                postgres_test_db(),
                "SELECT count(*) FROM pg_stat_ssl WHERE ssl",
            )
            .parse()
            .unwrap();
        assert!(tls_sessions >= 1, "the store's connection is TLS");
        let other = outpost_integration::TestPki::new();
        let err = Store::connect(&with_ca(other.path("ca.pem")), StoreOptions::default())
            .err()
            .expect("an unknown CA is refused")
            .to_string();
        assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
        let plain = Location::Postgres {
            url: pg.url(),
            ca_file: None,
        };
        assert!(Store::connect(&plain, StoreOptions::default()).is_err());
    }

    /// A SQLite store made before migrations were versioned (the same tables, no history)
    /// is adopted as schema version 1 with its data, then migrated on (V2: instances, V3:
    /// analytics).
    #[test]
    fn an_unversioned_sqlite_store_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(include_str!("migrations/sqlite/V1__initial.sql"))
                .unwrap();
            conn.execute_batch(
                "INSERT INTO resources VALUES ('named-values', 'a', 1, '{\"name\":\"a\",\"value\":\"1\"}');
                 INSERT INTO changes VALUES (1, 0, 'named-values', 'a', NULL, NULL, '{\"name\":\"a\",\"value\":\"1\"}');
                 INSERT INTO meta VALUES ('revision', '1');",
            )
            .unwrap();
        }
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(store.revision(), 1);
        assert_eq!(value_of(&store.state(), "a"), "1");
        let version: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT MAX(version) FROM refinery_schema_history",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, 3);
    }

    /// Instance rows: the later `last_seen` wins whoever writes last; old rows are forgotten.
    #[test]
    fn instance_rows_keep_the_newest_heartbeat() {
        on_both_engines(|db| {
            let store = db.open(StoreOptions::default());
            let row = |seen: &str, record: &str| InstanceRow {
                gateway: "edge".into(),
                instance_id: "i-1".into(),
                last_seen: seen.into(),
                record: record.into(),
            };
            store
                .save_instances(&[row("2026-01-01T00:00:02.000000Z", "new")])
                .unwrap();
            store
                .save_instances(&[row("2026-01-01T00:00:01.000000Z", "old")])
                .unwrap();
            let loaded = store.load_instances("2026-01-01T00:00:00.000000Z").unwrap();
            assert_eq!(loaded, vec![row("2026-01-01T00:00:02.000000Z", "new")]);
            assert!(
                store
                    .load_instances("2026-01-01T00:00:03.000000Z")
                    .unwrap()
                    .is_empty()
            );
            store
                .forget_instances("2026-01-01T00:00:03.000000Z")
                .unwrap();
            assert!(
                store
                    .load_instances("2000-01-01T00:00:00.000000Z")
                    .unwrap()
                    .is_empty()
            );
        });
    }

    fn analytics_row(minute: i64, gateway: &str, api: &str, status: i64, n: i64) -> AnalyticsRow {
        AnalyticsRow {
            key: AnalyticsKey {
                minute,
                gateway: gateway.into(),
                api: api.into(),
                operation: "get".into(),
                product: "gold".into(),
                subscription: "acme".into(),
                status,
            },
            requests: n,
            errors: if status >= 500 { n } else { 0 },
            cache_hits: 1,
            request_bytes: 10 * n,
            response_bytes: 100 * n,
            total_duration_us: 200 * n,
            max_duration_us: 200 + n,
            backend_duration_us: 0,
            latency: vec![(3, n - 1), (20, 1)],
        }
    }

    fn batch_id(gateway: &str, sequence: i64) -> BatchId {
        BatchId {
            gateway: gateway.into(),
            instance_id: "i-1".into(),
            sequence,
        }
    }

    /// Analytics rows add up (upsert-add, histograms included), a batch id is counted once,
    /// groups and filters select what they say, and the purge deletes old minutes only.
    #[test]
    fn analytics_add_up_once_per_batch_and_are_purged() {
        on_both_engines(|db| {
            let store = db.open(StoreOptions::default());
            let rows = [
                analytics_row(60, "edge", "orders", 200, 5),
                analytics_row(60, "edge", "orders", 503, 2),
                analytics_row(120, "edge", "users", 200, 3),
            ];
            assert!(
                store
                    .add_analytics(&batch_id("edge", 1), 100, &rows)
                    .unwrap()
            );
            assert!(
                !store
                    .add_analytics(&batch_id("edge", 1), 100, &rows)
                    .unwrap(),
                "the same batch again: nothing added"
            );
            // Same key as an earlier row: added to it.
            assert!(
                store
                    .add_analytics(
                        &batch_id("edge", 2),
                        130,
                        &[analytics_row(60, "edge", "orders", 200, 4)]
                    )
                    .unwrap()
            );
            let filter = |group_by: Vec<Dimension>| AnalyticsFilter {
                from_minute: 0,
                to_minute: 1000,
                group_by,
                ..AnalyticsFilter::default()
            };
            let total = store.analytics(&filter(vec![])).unwrap();
            assert_eq!(total.len(), 1);
            let t = &total[0];
            assert_eq!((t.requests, t.errors, t.cache_hits), (14, 2, 4));
            assert_eq!((t.request_bytes, t.response_bytes), (140, 1400));
            assert_eq!(t.total_duration_us, 2800);
            assert_eq!(t.max_duration_us, 205);
            assert_eq!(t.latency, vec![(3, 10), (20, 4)]);

            let mut by_api = store.analytics(&filter(vec![Dimension::Api])).unwrap();
            by_api.sort_by(|a, b| a.group.cmp(&b.group));
            let summary: Vec<_> = by_api
                .into_iter()
                .map(|s| (s.group, s.requests, s.latency))
                .collect();
            assert_eq!(
                summary,
                vec![
                    (vec!["orders".to_owned()], 11, vec![(3, 8), (20, 3)]),
                    (vec!["users".to_owned()], 3, vec![(3, 2), (20, 1)]),
                ]
            );
            let mut by_minute_status = store
                .analytics(&filter(vec![Dimension::Minute, Dimension::Status]))
                .unwrap();
            by_minute_status.sort_by(|a, b| a.group.cmp(&b.group));
            let groups: Vec<Vec<String>> =
                by_minute_status.iter().map(|s| s.group.clone()).collect();
            assert_eq!(
                groups,
                vec![vec!["120", "200"], vec!["60", "200"], vec!["60", "503"]]
            );
            let only = store
                .analytics(&AnalyticsFilter {
                    from_minute: 100,
                    to_minute: 1000,
                    api: Some("users".into()),
                    product: Some("gold".into()),
                    subscription: Some("acme".into()),
                    gateway: Some("edge".into()),
                    operation: Some("get".into()),
                    group_by: vec![],
                })
                .unwrap();
            assert_eq!(only[0].requests, 3);
            let none = store
                .analytics(&AnalyticsFilter {
                    api: Some("orders".into()),
                    from_minute: 100,
                    to_minute: 1000,
                    ..AnalyticsFilter::default()
                })
                .unwrap();
            assert_eq!(none[0].requests, 0, "minute 60 is before the window");

            // Minute 60 goes; the batch ids received before 120 go too (batch 2, at 130,
            // stays: a retry of it is still a duplicate).
            assert_eq!(store.purge_analytics(120).unwrap(), 2);
            let left = store.analytics(&filter(vec![])).unwrap();
            assert_eq!(
                (left[0].requests, left[0].latency.clone()),
                (3, vec![(3, 2), (20, 1)])
            );
            assert!(
                !store
                    .add_analytics(&batch_id("edge", 2), 140, &rows)
                    .unwrap()
            );
            assert!(store.add_analytics(&batch_id("edge", 1), 140, &[]).unwrap());
        });
    }

    /// Every analytics row of the store at `location`, with its histogram, and every batch id,
    /// in key order (engines sort text by their own collation).
    fn analytics_of(location: &Location) -> AnalyticsDump {
        let (mut engine, _) = open_engine(location).unwrap();
        let mut d = engine.dump_analytics().unwrap();
        d.rows.sort_by(|a, b| a.key.cmp(&b.key));
        d.batches.sort_by(|a, b| {
            (&a.0.gateway, &a.0.instance_id, a.0.sequence).cmp(&(
                &b.0.gateway,
                &b.0.instance_id,
                b.0.sequence,
            ))
        });
        d
    }

    /// `store copy` moves the analytics too, SQLite to PostgreSQL and back: every per-minute row
    /// with its sums and histogram, as stored (not re-added), and the batch ids with their
    /// receipt time, so a batch retried after the move is still counted once and the purge
    /// still applies. A target that holds analytics but nothing else is not empty.
    #[test]
    fn copy_moves_analytics_both_ways() {
        let sqlite = TestDb::sqlite();
        {
            let store = sqlite.open(StoreOptions::default());
            store.put(nv("a", "1"), Precondition::None).unwrap();
            let rows = [
                analytics_row(60, "edge", "orders", 200, 5),
                analytics_row(60, "edge", "orders", 503, 2),
                analytics_row(120, "edge", "users", 200, 3),
            ];
            assert!(
                store
                    .add_analytics(&batch_id("edge", 1), 100, &rows)
                    .unwrap()
            );
            assert!(
                store
                    .add_analytics(
                        &batch_id("edge", 2),
                        130,
                        &[analytics_row(60, "edge", "orders", 200, 4)]
                    )
                    .unwrap()
            );
        }
        let source = analytics_of(&sqlite.location());
        assert_eq!((source.rows.len(), source.batches.len()), (3, 2));
        assert_eq!(
            source.rows[0].latency,
            vec![(3, 7), (20, 2)],
            "summed before the copy"
        );

        let pg = TestDb::postgres();
        let report = copy(&sqlite.location(), &pg.location()).unwrap();
        assert_eq!((report.analytics_rows, report.analytics_batches), (3, 2));
        assert_eq!(analytics_of(&pg.location()), source, "row for row");
        let copied = pg.open(StoreOptions::default());
        let total = |store: &Store| {
            let t = store
                .analytics(&AnalyticsFilter {
                    from_minute: 0,
                    to_minute: 1000,
                    ..AnalyticsFilter::default()
                })
                .unwrap()
                .remove(0);
            (t.requests, t.errors, t.max_duration_us, t.latency)
        };
        assert_eq!(total(&copied), (14, 2, 205, vec![(3, 10), (20, 4)]));
        assert!(
            !copied
                .add_analytics(
                    &batch_id("edge", 2),
                    140,
                    &[analytics_row(60, "edge", "orders", 200, 4)]
                )
                .unwrap(),
            "a batch added before the copy is a duplicate after it"
        );

        // And back, into a new SQLite file.
        let back = TestDb::sqlite();
        let report = copy(&pg.location(), &back.location()).unwrap();
        assert_eq!((report.analytics_rows, report.analytics_batches), (3, 2));
        assert_eq!(analytics_of(&back.location()), source);
        let restored = back.open(StoreOptions::default());
        assert_eq!(total(&restored), (14, 2, 205, vec![(3, 10), (20, 4)]));
        // The purge works on copied rows and batch ids alike (received at 100 and 130).
        assert_eq!(restored.purge_analytics(120).unwrap(), 2);
        assert!(
            restored
                .add_analytics(&batch_id("edge", 1), 140, &[])
                .unwrap()
        );
        assert!(
            !restored
                .add_analytics(&batch_id("edge", 2), 140, &[])
                .unwrap()
        );

        // Analytics alone make a target non-empty: a copy would add to them.
        let analytics_only = TestDb::sqlite();
        {
            let (mut engine, _) = open_engine(&analytics_only.location()).unwrap();
            engine
                .add_analytics(
                    &batch_id("edge", 9),
                    100,
                    &[analytics_row(60, "edge", "orders", 200, 1)],
                )
                .unwrap();
        }
        let err = copy(&sqlite.location(), &analytics_only.location())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not empty"), "{err}");
    }
}
