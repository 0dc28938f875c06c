//! The revisioned configuration store.
//!
//! Every accepted change bumps one global, monotonic revision and appends to a change log with
//! before- and after-images, so the state at any revision the log still covers can be rebuilt
//! (that is how per-gateway deltas are computed, see `gateway_api`). SQLite holds everything
//! (a file under the data directory, or `:memory:`); an immutable [`State`] behind an `ArcSwap`
//! serves every read without touching SQLite or a lock.
//!
//! Writes go through one connection behind a mutex: SQLite allows one writer anyway, and the
//! mutex makes "read current version, check precondition, write" atomic, which is what keeps
//! concurrent writers from losing updates (`If-Match` → [`Precondition::IfMatch`]).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use outpost_model::resources::SECRET_MASK;
use outpost_model::signing::{KeyEndorsement, SigningKey};
use outpost_model::validate::{Problems, check_config, check_resource, referrers};
use outpost_model::{Kind, Resource, ResourceKey};
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;

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
    conn: Mutex<Connection>,
    current: ArcSwap<State>,
    log: Mutex<ChangeLog>,
    revision_tx: watch::Sender<u64>,
    validator: Option<Validator>,
    options: StoreOptions,
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

impl Store {
    /// Opens (creating if needed) the store at `path`, or an in-memory one for `:memory:`.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let conn = if path.as_os_str() == ":memory:" {
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
             PRAGMA foreign_keys = ON;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS resources (
                kind TEXT NOT NULL, name TEXT NOT NULL, revision INTEGER NOT NULL, body TEXT NOT NULL,
                PRIMARY KEY (kind, name));
             CREATE TABLE IF NOT EXISTS changes (
                revision INTEGER NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
                before TEXT, before_revision INTEGER, after TEXT,
                PRIMARY KEY (revision, seq));
             CREATE TABLE IF NOT EXISTS gateway_keys (
                gateway TEXT PRIMARY KEY, primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS signing_keys (
                id INTEGER PRIMARY KEY, public_key TEXT NOT NULL, private_key TEXT,
                created_at TEXT NOT NULL, endorsed_by TEXT, endorsement TEXT);",
        )?;
        let revision: u64 = meta_get(&conn, "revision")?.unwrap_or(0);
        let floor: u64 = meta_get(&conn, "log_floor")?.unwrap_or(0);

        let mut resources = BTreeMap::new();
        {
            let mut stmt = conn.prepare("SELECT kind, revision, body FROM resources")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (kind, rev, body) = row?;
                let stored = decode_stored(&kind, rev, &body)?;
                resources.insert(stored.resource.key(), Arc::new(stored));
            }
        }
        let mut entries = VecDeque::new();
        {
            let mut stmt = conn.prepare(
                "SELECT revision, kind, name, before, before_revision, after FROM changes ORDER BY revision, seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })?;
            for row in rows {
                let (rev, kind, name, before, before_rev, after) = row?;
                let k = parse_kind(&kind)?;
                let before = match (before, before_rev) {
                    (Some(b), Some(br)) => Some(Arc::new(decode_stored(&kind, br, &b)?)),
                    _ => None,
                };
                let after = match after {
                    Some(a) => Some(Arc::new(decode_stored(&kind, rev, &a)?)),
                    None => None,
                };
                entries.push_back(Change {
                    revision: rev as u64,
                    key: ResourceKey::new(k, name),
                    before,
                    after,
                });
            }
        }
        let state = State {
            revision,
            resources,
        };
        let (revision_tx, _) = watch::channel(revision);
        Ok(Store {
            conn: Mutex::new(conn),
            current: ArcSwap::from_pointee(state),
            log: Mutex::new(ChangeLog {
                floor,
                entries,
                past: VecDeque::new(),
            }),
            revision_tx,
            validator: None,
            options,
        })
    }

    pub fn with_validator(mut self, validator: Validator) -> Self {
        self.validator = Some(validator);
        self
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
    pub fn commit(&self, writes: Vec<Write>) -> Result<Committed, StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
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
            return Ok(Committed {
                revision: current.revision,
                changed: Vec::new(),
            });
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

        // Persist, then publish: readers never see a revision that is not durable.
        let tx = conn.transaction()?;
        let mut log_entries = Vec::with_capacity(changed.len());
        for (seq, (key, before)) in changed.iter().enumerate() {
            let after = state.resources.get(key).cloned();
            let kind = key.kind.plural();
            match &after {
                Some(a) => {
                    tx.execute(
                        "INSERT INTO resources (kind, name, revision, body) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (kind, name) DO UPDATE SET revision = ?3, body = ?4",
                        params![
                            kind,
                            key.name,
                            next as i64,
                            a.resource.to_json().to_string()
                        ],
                    )?;
                }
                None => {
                    tx.execute(
                        "DELETE FROM resources WHERE kind = ?1 AND name = ?2",
                        params![kind, key.name],
                    )?;
                }
            }
            if key.kind == Kind::Gateway && after.is_none() {
                tx.execute(
                    "DELETE FROM gateway_keys WHERE gateway = ?1",
                    params![key.name],
                )?;
            }
            tx.execute(
                "INSERT INTO changes (revision, seq, kind, name, before, before_revision, after)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    next as i64,
                    seq as i64,
                    kind,
                    key.name,
                    before.as_ref().map(|b| b.resource.to_json().to_string()),
                    before.as_ref().map(|b| b.revision as i64),
                    after.as_ref().map(|a| a.resource.to_json().to_string()),
                ],
            )?;
            log_entries.push(Change {
                revision: next,
                key: key.clone(),
                before: before.clone(),
                after,
            });
        }
        meta_set(&tx, "revision", next)?;
        let new_floor = next.saturating_sub(self.options.change_log_limit);
        let mut log = self.log.lock().expect("change log lock");
        if new_floor > log.floor {
            tx.execute(
                "DELETE FROM changes WHERE revision <= ?1",
                params![new_floor as i64],
            )?;
            meta_set(&tx, "log_floor", new_floor)?;
        }
        tx.commit()?;

        if new_floor > log.floor {
            log.floor = new_floor;
            while log.entries.front().is_some_and(|c| c.revision <= new_floor) {
                log.entries.pop_front();
            }
            log.past.retain(|s| s.revision >= new_floor);
        }
        log.entries.extend(log_entries);
        drop(log);
        let keys = changed.into_iter().map(|(k, _)| k).collect();
        self.current.store(Arc::new(state));
        self.revision_tx.send_replace(next);
        Ok(Committed {
            revision: next,
            changed: keys,
        })
    }

    // === gateway keys ===

    /// The gateway's primary and secondary keys, created on first use.
    pub fn gateway_keys(&self, gateway: &str) -> Result<GatewayKeys, StoreError> {
        let key = ResourceKey::new(Kind::Gateway, gateway);
        if self.state().get(&key).is_none() {
            return Err(StoreError::NotFound(key));
        }
        let conn = self.conn.lock().expect("store lock");
        let found = conn
            .query_row(
                "SELECT primary_key, secondary_key FROM gateway_keys WHERE gateway = ?1",
                params![gateway],
                |r| {
                    Ok(GatewayKeys {
                        primary: r.get(0)?,
                        secondary: r.get(1)?,
                    })
                },
            )
            .optional()?;
        if let Some(keys) = found {
            return Ok(keys);
        }
        let keys = GatewayKeys {
            primary: generate_key(),
            secondary: generate_key(),
        };
        conn.execute(
            "INSERT INTO gateway_keys (gateway, primary_key, secondary_key) VALUES (?1, ?2, ?3)",
            params![gateway, keys.primary, keys.secondary],
        )?;
        Ok(keys)
    }

    /// Replaces one key; every token minted from the old key stops verifying.
    pub fn regenerate_gateway_key(
        &self,
        gateway: &str,
        which: KeyType,
    ) -> Result<GatewayKeys, StoreError> {
        let mut keys = self.gateway_keys(gateway)?;
        match which {
            KeyType::Primary => keys.primary = generate_key(),
            KeyType::Secondary => keys.secondary = generate_key(),
        }
        let conn = self.conn.lock().expect("store lock");
        conn.execute(
            "UPDATE gateway_keys SET primary_key = ?2, secondary_key = ?3 WHERE gateway = ?1",
            params![gateway, keys.primary, keys.secondary],
        )?;
        Ok(keys)
    }

    // === config signing keys ===

    /// The config signing keys: the active one (created on first use) and the history.
    pub fn signing_keys(&self) -> Result<SigningKeys, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        let mut keys = load_signing_keys(&conn)?;
        if keys.is_empty() {
            insert_signing_key(&conn, &new_signing_key(), None)?;
            keys = load_signing_keys(&conn)?;
        }
        SigningKeys::from_rows(keys)
    }

    /// Replaces the active signing key with a new one, endorsed by the old one. The old private
    /// key is erased: nothing needs it once its endorsement of the new key is stored.
    pub fn rotate_signing_key(&self) -> Result<SigningKeys, StoreError> {
        let mut conn = self.conn.lock().expect("store lock");
        let tx = conn.transaction()?;
        let mut rows = load_signing_keys(&tx)?;
        if rows.is_empty() {
            insert_signing_key(&tx, &new_signing_key(), None)?;
            rows = load_signing_keys(&tx)?;
        }
        let current = SigningKeys::from_rows(rows)?;
        let next = new_signing_key();
        let endorsement = current.active.endorse(&next.public());
        insert_signing_key(&tx, &next, Some(&endorsement))?;
        tx.execute(
            "UPDATE signing_keys SET private_key = NULL WHERE id < (SELECT MAX(id) FROM signing_keys)",
            [],
        )?;
        let rows = load_signing_keys(&tx)?;
        tx.commit()?;
        SigningKeys::from_rows(rows)
    }

    /// A value kept in the store's metadata table (e.g. the generated admin token).
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn.lock().expect("store lock");
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let conn = self.conn.lock().expect("store lock");
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
            params![key, value],
        )?;
        Ok(())
    }
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

struct SigningKeyRow {
    info: SigningKeyInfo,
    private_key: Option<String>,
    endorsement: Option<String>,
}

impl SigningKeys {
    fn from_rows(rows: Vec<SigningKeyRow>) -> Result<SigningKeys, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("signing_keys: {what}"));
        let last = rows.last().ok_or_else(|| corrupt("no key"))?;
        let active = last
            .private_key
            .as_deref()
            .ok_or_else(|| corrupt("the newest key has no private key"))
            .and_then(|p| {
                SigningKey::from_secret_base64(p).map_err(|_| corrupt("unreadable private key"))
            })?;
        if active.public().to_string() != last.info.key {
            return Err(corrupt(
                "the newest private key does not match its public key",
            ));
        }
        let endorsements = rows
            .iter()
            .filter_map(|r| {
                Some(KeyEndorsement {
                    key: r.info.key.clone(),
                    endorsed_by: r.info.endorsed_by.clone(),
                    signature: r.endorsement.clone()?,
                })
            })
            .collect();
        Ok(SigningKeys {
            active,
            history: rows.into_iter().map(|r| r.info).collect(),
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

fn load_signing_keys(conn: &Connection) -> Result<Vec<SigningKeyRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT public_key, private_key, created_at, endorsed_by, endorsement FROM signing_keys ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(SigningKeyRow {
            info: SigningKeyInfo {
                key: r.get(0)?,
                created_at: r.get(2)?,
                endorsed_by: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            },
            private_key: r.get(1)?,
            endorsement: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn insert_signing_key(
    conn: &Connection,
    key: &SigningKey,
    endorsement: Option<&KeyEndorsement>,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO signing_keys (public_key, private_key, created_at, endorsed_by, endorsement) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            key.public().to_string(),
            key.to_secret_base64(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            endorsement.map(|e| e.endorsed_by.clone()),
            endorsement.map(|e| e.signature.clone()),
        ],
    )?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GatewayKeys {
    pub primary: String,
    pub secondary: String,
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

fn meta_get(conn: &Connection, key: &str) -> Result<Option<u64>, StoreError> {
    let v: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()?;
    v.map(|s| {
        s.parse()
            .map_err(|_| StoreError::Corrupt(format!("meta {key} = {s:?}")))
    })
    .transpose()
}

fn meta_set(conn: &Connection, key: &str, value: u64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
        params![key, value.to_string()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_model::resources::{Backend, BackendTls, NamedValue};

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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let store = Store::open(&path, StoreOptions::default()).unwrap();
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
        let store = Store::open(&path, StoreOptions::default()).unwrap();
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
    }

    #[test]
    fn log_limit_moves_the_floor() {
        let store = Store::open(
            Path::new(":memory:"),
            StoreOptions {
                change_log_limit: 2,
            },
        )
        .unwrap();
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
    }

    #[test]
    fn preconditions_and_references() {
        let store = Store::open(Path::new(":memory:"), StoreOptions::default()).unwrap();
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
    }

    #[test]
    fn concurrent_writers_with_if_match_never_lose_an_update() {
        let store = Arc::new(Store::open(Path::new(":memory:"), StoreOptions::default()).unwrap());
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
    }

    /// The signing key is made once, survives a restart, is not part of the configuration, and
    /// a rotation endorses the new key with the old one and erases the old private key.
    #[test]
    fn signing_keys_persist_and_rotate() {
        use outpost_model::signing::{self, PublicKey};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let first = {
            let store = Store::open(&path, StoreOptions::default()).unwrap();
            let keys = store.signing_keys().unwrap();
            assert_eq!(keys.history.len(), 1);
            assert!(keys.endorsements.is_empty());
            assert_eq!(store.revision(), 0, "not a configuration change");
            keys.active.public()
        };
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(store.signing_keys().unwrap().active.public(), first);
        let rotated = store.rotate_signing_key().unwrap();
        let second = rotated.active.public();
        assert_ne!(second, first);
        assert_eq!(rotated.history.len(), 2);
        assert_eq!(rotated.history[1].endorsed_by, first.to_string());
        let sig = rotated.active.sign_config("gw", 3, "h");
        assert_eq!(
            signing::verify_config(&[first], "gw", 3, "h", &sig, &rotated.endorsements).unwrap(),
            second,
            "a gateway trusting the old key follows the rotation"
        );
        let conn = store.conn.lock().unwrap();
        let old_private: Option<String> = conn
            .query_row(
                "SELECT private_key FROM signing_keys WHERE public_key = ?1",
                params![first.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert!(old_private.is_none(), "the old private key is erased");
        assert!(PublicKey::parse(&rotated.history[0].key).is_ok());
    }
}
