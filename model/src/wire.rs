//! The gateway ↔ control plane protocol.
//!
//! All calls go from the gateway to the control plane's gateway listener (outbound only), with
//! `Authorization: GatewayKey <gateway>&<expiry>&<signature>`:
//!
//! - `GET  /gateway/v1/config?after=R&wait=S[&hash=H]` — long-poll. Answers as soon as the
//!   revision is newer than `R` (at once if it already is), or `304 Not Modified` after `S`
//!   seconds. The body is a [`ConfigUpdate`]: a delta from `R` when the change log still covers
//!   `R`, else a full snapshot (`after=0` always gets a snapshot). `H`, the content hash the
//!   gateway holds at `R`: when `R` is current and the control plane's view hashes differently,
//!   a full snapshot at once. Every answer is signed for the polling gateway
//!   ([`crate::signing`]). bincode by default; JSON with `Accept: application/json`.
//! - `POST /gateway/v1/heartbeat` — a [`Heartbeat`]; answers a [`HeartbeatAck`].
//! - `POST /gateway/v1/telemetry` — a [`TelemetryBatch`]; answers 204.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::resources::{Resource, ResourceKey};
use crate::signing::{ConfigSignature, KeyEndorsement};
use crate::view::{View, content_hash};

pub const CONFIG_PATH: &str = "/gateway/v1/config";
pub const HEARTBEAT_PATH: &str = "/gateway/v1/heartbeat";
pub const TELEMETRY_PATH: &str = "/gateway/v1/telemetry";

/// Media type of bincode bodies.
pub const BINCODE_MEDIA_TYPE: &str = "application/x-outpost-bincode";

/// Version of the wire encoding; bumped on incompatible model changes. 2: config answers carry
/// the control plane's signature and key endorsements.
pub const FORMAT_VERSION: u32 = 2;

/// One answer to a config poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigUpdate {
    /// `true`: `upserts` is the whole view and replaces what the gateway holds.
    pub full: bool,
    /// The revision this delta starts from (the `after` the gateway asked with).
    pub from_revision: u64,
    /// The revision the gateway holds after applying this update.
    pub revision: u64,
    /// [`content_hash`] of the gateway's view at `revision`.
    pub hash: String,
    pub upserts: Vec<Resource>,
    pub deletes: Vec<ResourceKey>,
    /// The control plane's signature over (gateway, `revision`, `hash`): over the view that
    /// results from applying this update, so deltas and snapshots are checked the same way.
    pub signature: ConfigSignature,
    /// Each signing key endorsed by the one it replaced, oldest first (see [`crate::signing`]).
    pub endorsements: Vec<KeyEndorsement>,
}

/// Periodic status report of one gateway instance (one process).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Random id chosen by the process at start.
    pub instance_id: String,
    pub hostname: String,
    pub version: String,
    pub applied_revision: u64,
    pub config_hash: String,
    /// Expiry of the token the instance uses (RFC 3339).
    pub token_expiry: Option<chrono::DateTime<chrono::Utc>>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Where the configuration served now came from: `control-plane`, `backup` or `offline`.
    /// A gateway that started from its backup says `control-plane` once the control plane
    /// sent or confirmed its configuration.
    pub config_source: String,
    /// Redis reachability as this instance sees it: `none`, `connected`, `disconnected`.
    pub redis: String,
    /// The last heartbeat of a process that is stopping: the control plane marks the instance
    /// `stopped` at once instead of letting it turn stale, then disconnected.
    pub stopping: bool,
    /// The HTTPS certificates the instance serves now, with their expiry. After the fields of
    /// the first release, so that a heartbeat of a gateway from before it existed still decodes
    /// ([`decode_heartbeat`]).
    #[serde(default)]
    pub certificates: Vec<CertificateExpiry>,
    /// The state of every backend pool member, as this instance sees it. Last, for the same
    /// reason.
    #[serde(default)]
    pub pool_members: Vec<PoolMemberStatus>,
}

/// One backend pool member as one gateway instance sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PoolMemberStatus {
    pub backend: String,
    /// The member's base URL.
    pub member: String,
    /// `healthy`, `ejected` (passive health), `failing-checks` (active checks), `breaker-open`
    /// or `breaker-half-open`.
    pub state: String,
}

/// When the certificate served for one hostname lapses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CertificateExpiry {
    /// As configured on the gateway resource (`api.example.com`, `*.example.com`).
    pub hostname: String,
    /// The leaf certificate's `notAfter`.
    pub not_after: chrono::DateTime<chrono::Utc>,
}

/// A heartbeat as gateways before `pool_members` send it.
#[derive(Deserialize)]
struct HeartbeatWithoutPools {
    instance_id: String,
    hostname: String,
    version: String,
    applied_revision: u64,
    config_hash: String,
    token_expiry: Option<chrono::DateTime<chrono::Utc>>,
    started_at: chrono::DateTime<chrono::Utc>,
    config_source: String,
    redis: String,
    stopping: bool,
    certificates: Vec<CertificateExpiry>,
}

/// A heartbeat as gateways before `certificates` send it. bincode has no optional trailing
/// fields, and the upgrade order is control plane first, so the control plane reads both.
#[derive(Deserialize)]
struct HeartbeatWithoutCertificates {
    instance_id: String,
    hostname: String,
    version: String,
    applied_revision: u64,
    config_hash: String,
    token_expiry: Option<chrono::DateTime<chrono::Utc>>,
    started_at: chrono::DateTime<chrono::Utc>,
    config_source: String,
    redis: String,
    stopping: bool,
}

/// Decodes a bincode [`Heartbeat`] from this release or the two before.
pub fn decode_heartbeat(bytes: &[u8]) -> Result<Heartbeat, CodecError> {
    match decode::<Heartbeat>(bytes) {
        Ok(hb) => Ok(hb),
        Err(current) => {
            if let Ok(old) = decode::<HeartbeatWithoutPools>(bytes) {
                return Ok(Heartbeat {
                    instance_id: old.instance_id,
                    hostname: old.hostname,
                    version: old.version,
                    applied_revision: old.applied_revision,
                    config_hash: old.config_hash,
                    token_expiry: old.token_expiry,
                    started_at: old.started_at,
                    config_source: old.config_source,
                    redis: old.redis,
                    stopping: old.stopping,
                    certificates: old.certificates,
                    pool_members: Vec::new(),
                });
            }
            let Ok(old) = decode::<HeartbeatWithoutCertificates>(bytes) else {
                return Err(current);
            };
            Ok(Heartbeat {
                instance_id: old.instance_id,
                hostname: old.hostname,
                version: old.version,
                applied_revision: old.applied_revision,
                config_hash: old.config_hash,
                token_expiry: old.token_expiry,
                started_at: old.started_at,
                config_source: old.config_source,
                redis: old.redis,
                stopping: old.stopping,
                certificates: Vec::new(),
                pool_members: Vec::new(),
            })
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The control plane's current revision, so an instance knows whether it is behind.
    pub revision: u64,
    pub server_time: chrono::DateTime<chrono::Utc>,
}

/// Request metrics aggregated per minute, API, operation and status, plus sampled logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    pub instance_id: String,
    /// Sequence number per instance; lets the control plane drop a batch it already has when an
    /// upload is retried after a lost answer.
    pub sequence: u64,
    pub aggregates: Vec<RequestAggregate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AggregateKey {
    /// Unix time of the minute start, seconds.
    pub minute: i64,
    pub api: String,
    pub operation: String,
    pub status: u16,
    /// `hit`, `miss` or `none`.
    pub cache: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestAggregate {
    pub key: AggregateKey,
    pub count: u64,
    pub total_duration_ms: u64,
    pub max_duration_ms: u64,
    pub backend_duration_ms: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// The configuration a gateway holds: its view at a revision, with the control plane's
/// signature (empty in offline mode, where the operator's own file is served).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewaySnapshot {
    pub revision: u64,
    pub hash: String,
    pub resources: View,
    pub signature: ConfigSignature,
    pub endorsements: Vec<KeyEndorsement>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("delta starts at revision {from} but this gateway holds revision {held}")]
    WrongBase { from: u64, held: u64 },
    #[error(
        "content hash mismatch after applying revision {revision}: expected {expected}, got {actual}"
    )]
    HashMismatch {
        revision: u64,
        expected: String,
        actual: String,
    },
}

impl GatewaySnapshot {
    pub fn from_view(revision: u64, resources: View) -> Self {
        let hash = content_hash(&resources);
        Self {
            revision,
            hash,
            resources,
            signature: ConfigSignature::default(),
            endorsements: Vec::new(),
        }
    }

    /// The snapshot after `update`, verified against the update's hash. `self` is unchanged on
    /// error, so a bad update can never leave a half-applied configuration.
    pub fn apply(&self, update: &ConfigUpdate) -> Result<GatewaySnapshot, ApplyError> {
        let mut resources = if update.full {
            View::new()
        } else {
            if update.from_revision != self.revision {
                return Err(ApplyError::WrongBase {
                    from: update.from_revision,
                    held: self.revision,
                });
            }
            self.resources.clone()
        };
        for k in &update.deletes {
            resources.remove(k);
        }
        for r in &update.upserts {
            resources.insert(r.key(), r.clone());
        }
        let actual = content_hash(&resources);
        if actual != update.hash {
            return Err(ApplyError::HashMismatch {
                revision: update.revision,
                expected: update.hash.clone(),
                actual,
            });
        }
        Ok(GatewaySnapshot {
            revision: update.revision,
            hash: actual,
            resources,
            signature: update.signature.clone(),
            endorsements: update.endorsements.clone(),
        })
    }

    /// Verifies that the stored hash matches the resources (for backups read from disk).
    pub fn verify(&self) -> bool {
        content_hash(&self.resources) == self.hash
    }

    /// Resources of one kind, for consumers that index them.
    pub fn of_kind(&self, kind: crate::Kind) -> impl Iterator<Item = &Resource> {
        self.resources
            .range(ResourceKey::new(kind, "")..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, r)| r)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("bincode encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("bincode decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(
        value,
        bincode::config::standard(),
    )?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
    if read != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - read));
    }
    Ok(value)
}

/// Counts per status class, a convenience for reports.
pub fn status_classes(aggs: &[RequestAggregate]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for a in aggs {
        *out.entry(format!("{}xx", a.key.status / 100)).or_insert(0) += a.count;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Kind, NamedValue};

    fn nv(name: &str, value: &str) -> Resource {
        Resource::NamedValue(NamedValue {
            name: name.into(),
            value: value.into(),
            secret: false,
        })
    }

    #[test]
    fn bincode_round_trip_and_apply() {
        let base = GatewaySnapshot::from_view(
            3,
            [nv("a", "1")].into_iter().map(|r| (r.key(), r)).collect(),
        );
        let target: View = [nv("a", "2"), nv("b", "3")]
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        let update = ConfigUpdate {
            full: false,
            from_revision: 3,
            revision: 5,
            hash: content_hash(&target),
            upserts: target.values().cloned().collect(),
            deletes: vec![],
            signature: ConfigSignature::default(),
            endorsements: vec![],
        };
        let bytes = encode(&update).unwrap();
        let decoded: ConfigUpdate = decode(&bytes).unwrap();
        assert_eq!(decoded, update);
        let next = base.apply(&decoded).unwrap();
        assert_eq!(next.revision, 5);
        assert_eq!(next.of_kind(Kind::NamedValue).count(), 2);

        let mut bad = update.clone();
        bad.hash = "00".into();
        assert!(matches!(
            base.apply(&bad),
            Err(ApplyError::HashMismatch { .. })
        ));
        let mut wrong = update;
        wrong.from_revision = 2;
        assert!(matches!(
            base.apply(&wrong),
            Err(ApplyError::WrongBase { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&5u64).unwrap();
        bytes.push(0);
        assert!(decode::<u64>(&bytes).is_err());
    }
}

#[cfg(test)]
mod heartbeat_tests {
    use super::*;

    /// The heartbeat of a gateway from before `certificates`, field for field.
    #[derive(Serialize)]
    struct Previous<'a> {
        instance_id: &'a str,
        hostname: &'a str,
        version: &'a str,
        applied_revision: u64,
        config_hash: &'a str,
        token_expiry: Option<chrono::DateTime<chrono::Utc>>,
        started_at: chrono::DateTime<chrono::Utc>,
        config_source: &'a str,
        redis: &'a str,
        stopping: bool,
    }

    #[test]
    fn heartbeats_of_this_and_the_previous_release_decode() {
        let now = chrono::Utc::now();
        let current = Heartbeat {
            instance_id: "i-1".into(),
            hostname: "node".into(),
            version: "0.1.0".into(),
            applied_revision: 7,
            config_hash: "h".into(),
            token_expiry: Some(now),
            started_at: now,
            config_source: "control-plane".into(),
            redis: "none".into(),
            stopping: false,
            certificates: vec![CertificateExpiry {
                hostname: "api.example.com".into(),
                not_after: now,
            }],
            pool_members: vec![PoolMemberStatus {
                backend: "inventory".into(),
                member: "http://10.0.0.1:8000".into(),
                state: "ejected".into(),
            }],
        };
        let bytes = encode(&current).unwrap();
        assert_eq!(decode_heartbeat(&bytes).unwrap(), current);

        // The release before pool members.
        #[derive(Serialize)]
        struct WithCertificates<'a> {
            instance_id: &'a str,
            hostname: &'a str,
            version: &'a str,
            applied_revision: u64,
            config_hash: &'a str,
            token_expiry: Option<chrono::DateTime<chrono::Utc>>,
            started_at: chrono::DateTime<chrono::Utc>,
            config_source: &'a str,
            redis: &'a str,
            stopping: bool,
            certificates: &'a [CertificateExpiry],
        }
        let with_certificates = WithCertificates {
            instance_id: "i-1",
            hostname: "node",
            version: "0.1.0",
            applied_revision: 7,
            config_hash: "h",
            token_expiry: Some(now),
            started_at: now,
            config_source: "control-plane",
            redis: "none",
            stopping: false,
            certificates: &current.certificates,
        };
        let decoded = decode_heartbeat(&encode(&with_certificates).unwrap()).unwrap();
        assert_eq!(
            decoded,
            Heartbeat {
                pool_members: Vec::new(),
                ..current.clone()
            }
        );

        let previous = Previous {
            instance_id: "i-1",
            hostname: "node",
            version: "0.1.0",
            applied_revision: 7,
            config_hash: "h",
            token_expiry: Some(now),
            started_at: now,
            config_source: "control-plane",
            redis: "none",
            stopping: false,
        };
        let decoded = decode_heartbeat(&encode(&previous).unwrap()).unwrap();
        assert_eq!(decoded.certificates, Vec::new());
        assert_eq!(
            decoded,
            Heartbeat {
                certificates: Vec::new(),
                pool_members: Vec::new(),
                ..current
            }
        );
        assert!(decode_heartbeat(b"\x01\x02").is_err());
    }
}
