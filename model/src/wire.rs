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
    /// The state of every backend pool member, as this instance sees it. After the fields
    /// above, for the same reason.
    #[serde(default)]
    pub pool_members: Vec<PoolMemberStatus>,
    /// Whether the instance is ready, and why not (what its `/readyz` says). Last, for the same
    /// reason; `None` from a gateway of a release that did not report it.
    #[serde(default)]
    pub readiness: Option<Readiness>,
}

/// An instance's readiness as its `/readyz` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Readiness {
    /// `/readyz` answers 200.
    pub ready: bool,
    /// Why it is not ready (no configuration yet, draining, ...); `None` when it is.
    pub reason: Option<String>,
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

/// A heartbeat as gateways before `readiness` send it.
#[derive(Deserialize)]
struct HeartbeatWithoutReadiness {
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
    pool_members: Vec<PoolMemberStatus>,
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
/// fields, and the upgrade order is control plane first, so the control plane reads all of them.
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

impl From<HeartbeatWithoutReadiness> for Heartbeat {
    fn from(old: HeartbeatWithoutReadiness) -> Self {
        Heartbeat {
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
            pool_members: old.pool_members,
            readiness: None,
        }
    }
}

impl From<HeartbeatWithoutPools> for Heartbeat {
    fn from(old: HeartbeatWithoutPools) -> Self {
        HeartbeatWithoutReadiness {
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
        }
        .into()
    }
}

impl From<HeartbeatWithoutCertificates> for Heartbeat {
    fn from(old: HeartbeatWithoutCertificates) -> Self {
        HeartbeatWithoutPools {
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
        }
        .into()
    }
}

/// Decodes a bincode [`Heartbeat`] from this release or the three before.
pub fn decode_heartbeat(bytes: &[u8]) -> Result<Heartbeat, CodecError> {
    decode::<Heartbeat>(bytes).or_else(|current| {
        decode::<HeartbeatWithoutReadiness>(bytes)
            .map(Heartbeat::from)
            .or_else(|_| decode::<HeartbeatWithoutPools>(bytes).map(Heartbeat::from))
            .or_else(|_| decode::<HeartbeatWithoutCertificates>(bytes).map(Heartbeat::from))
            .map_err(|_| current)
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The control plane's current revision, so an instance knows whether it is behind.
    pub revision: u64,
    pub server_time: chrono::DateTime<chrono::Utc>,
}

/// Request metrics aggregated per minute, API, operation, status, cache outcome, product and
/// subscription.
///
/// Changed in this release: latency is a histogram in microseconds ([`LATENCY_BOUNDS_US`])
/// instead of whole milliseconds, and the key carries product and subscription. A batch
/// spooled by an older gateway is not decoded (see the spool's file extension).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    pub instance_id: String,
    /// Sequence number per instance; lets the control plane drop a batch it already has when an
    /// upload is retried after a lost answer (to any replica).
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
    /// Name of the product of the subscription the request came through; empty without one.
    #[serde(default)]
    pub product: String,
    /// Name of the subscription (never its key); empty without one.
    #[serde(default)]
    pub subscription: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestAggregate {
    pub key: AggregateKey,
    pub count: u64,
    pub total_duration_us: u64,
    pub max_duration_us: u64,
    pub backend_duration_us: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Request durations as `(bucket, count)`: bucket indexes into [`LATENCY_BOUNDS_US`]
    /// ascending, zero counts left out. The counts add up to `count`.
    #[serde(default)]
    pub latency: Vec<(u16, u64)>,
}

/// Mantissas of the log-linear latency buckets: twelve bounds per decade.
const MANTISSAS: [u64; 12] = [10, 12, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90];
const DECADES: usize = 7;

/// Upper bounds (exclusive), in microseconds, of the latency histogram's buckets: 10 µs, 12 µs,
/// 15 µs, 20 µs … 80 s, 90 s, 100 s. Bucket `i` counts durations in
/// `[LATENCY_BOUNDS_US[i-1], LATENCY_BOUNDS_US[i])` (bucket 0 from 0); the last bucket
/// ([`LATENCY_BUCKETS`]` - 1`) counts 100 s and more. With twelve buckets per decade no bucket
/// is wider than a third of its lower bound, so a percentile read from the histogram is that
/// close at every scale, sub-millisecond included. Gateways and
/// the control plane share these bounds: changing them is a wire format change.
pub const LATENCY_BOUNDS_US: [u64; DECADES * MANTISSAS.len() + 1] = latency_bounds();

/// Buckets of the latency histogram (the bounds plus the overflow bucket).
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

const fn latency_bounds() -> [u64; DECADES * MANTISSAS.len() + 1] {
    let mut out = [0; DECADES * MANTISSAS.len() + 1];
    let mut scale = 1;
    let mut d = 0;
    while d < DECADES {
        let mut m = 0;
        while m < MANTISSAS.len() {
            out[d * MANTISSAS.len() + m] = MANTISSAS[m] * scale;
            m += 1;
        }
        scale *= 10;
        d += 1;
    }
    out[DECADES * MANTISSAS.len()] = MANTISSAS[0] * scale;
    out
}

/// The histogram bucket of a duration in microseconds.
pub fn latency_bucket(us: u64) -> usize {
    LATENCY_BOUNDS_US.partition_point(|&bound| bound <= us)
}

/// The `[lower, upper)` microseconds bucket `i` covers; the overflow bucket's upper bound is
/// its lower one (nothing is known above it).
pub fn latency_bucket_range(i: usize) -> (u64, u64) {
    let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_US[i - 1] };
    let upper = LATENCY_BOUNDS_US.get(i).copied().unwrap_or(lower);
    (lower, upper)
}

/// The `q` quantile (0 < q ≤ 1) of a histogram, in microseconds: the bucket holding the
/// `q × total`-th duration, linearly interpolated inside it, and never above `max_us` (the
/// largest duration seen, when known). `None` for an empty histogram.
pub fn latency_quantile(counts: &[u64], q: f64, max_us: Option<u64>) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut below = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        if (below + c) as f64 >= rank {
            let (lower, upper) = latency_bucket_range(i);
            let fraction = (rank - below as f64) / c as f64;
            let value = lower as f64 + (upper - lower) as f64 * fraction;
            return Some(match max_us {
                Some(max) => value.min(max as f64),
                None => value,
            });
        }
        below += c;
    }
    // Rounding left the rank past the last count: the top of the last non-empty bucket.
    let last = counts.iter().rposition(|&c| c > 0)?;
    let upper = latency_bucket_range(last).1 as f64;
    Some(max_us.map_or(upper, |m| upper.min(m as f64)))
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

    #[test]
    fn latency_buckets_are_log_linear_from_10_us_to_100_s() {
        assert_eq!(LATENCY_BUCKETS, 86);
        assert_eq!(&LATENCY_BOUNDS_US[..4], &[10, 12, 15, 20]);
        assert_eq!(LATENCY_BOUNDS_US[12], 100);
        assert_eq!(LATENCY_BOUNDS_US[36], 10_000);
        assert_eq!(LATENCY_BOUNDS_US[84], 100_000_000);
        assert!(LATENCY_BOUNDS_US.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(9), 0);
        assert_eq!(latency_bucket(10), 1);
        assert_eq!(latency_bucket(11), 1);
        assert_eq!(latency_bucket(12), 2);
        // 137 µs lands in [120, 150).
        assert_eq!(latency_bucket_range(latency_bucket(137)), (120, 150));
        assert_eq!(latency_bucket(100_000_000), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        // No bucket is wider than a third of its lower bound (beyond the first).
        for i in 1..LATENCY_BUCKETS - 1 {
            let (lo, hi) = latency_bucket_range(i);
            assert!((hi - lo) * 3 <= lo, "bucket {i}: [{lo}, {hi})");
        }
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_and_stay_under_the_max() {
        let mut counts = [0u64; LATENCY_BUCKETS];
        assert_eq!(latency_quantile(&counts, 0.5, None), None);
        // 100 requests: 90 in [200, 250) µs, 9 in [1, 1.2) ms, 1 in [50, 60) ms.
        counts[latency_bucket(210)] = 90;
        counts[latency_bucket(1_100)] = 9;
        counts[latency_bucket(55_000)] = 1;
        let q = |p| latency_quantile(&counts, p, None).unwrap();
        // The 50th of 90 in [200, 250): 200 + 50 × 50/90.
        assert!(
            (q(0.5) - (200.0 + 50.0 * 50.0 / 90.0)).abs() < 1e-9,
            "{}",
            q(0.5)
        );
        // The 95th: the 5th of 9 in [1000, 1200).
        assert!(
            (q(0.95) - (1000.0 + 200.0 * 5.0 / 9.0)).abs() < 1e-9,
            "{}",
            q(0.95)
        );
        // The 99th is the last of [1000, 1200); the 100th is in [50 ms, 60 ms).
        assert!((q(0.99) - 1200.0).abs() < 1e-9, "{}", q(0.99));
        assert!((q(1.0) - 60_000.0).abs() < 1e-9);
        assert_eq!(latency_quantile(&counts, 1.0, Some(52_000)), Some(52_000.0));
        // One sample: any quantile is inside its bucket, never 0.
        let mut one = [0u64; LATENCY_BUCKETS];
        one[latency_bucket(300)] = 1;
        assert_eq!(latency_quantile(&one, 0.5, None), Some(400.0));
        assert_eq!(latency_quantile(&one, 0.5, Some(310)), Some(310.0));
    }

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
            readiness: Some(Readiness {
                ready: false,
                reason: Some("draining".into()),
            }),
        };
        let bytes = encode(&current).unwrap();
        assert_eq!(decode_heartbeat(&bytes).unwrap(), current);
        let ready = Heartbeat {
            readiness: Some(Readiness {
                ready: true,
                reason: None,
            }),
            ..current.clone()
        };
        assert_eq!(decode_heartbeat(&encode(&ready).unwrap()).unwrap(), ready);

        // The release before readiness.
        #[derive(Serialize)]
        struct WithPools<'a> {
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
            pool_members: &'a [PoolMemberStatus],
        }
        let with_pools = WithPools {
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
            pool_members: &current.pool_members,
        };
        let decoded = decode_heartbeat(&encode(&with_pools).unwrap()).unwrap();
        assert_eq!(
            decoded,
            Heartbeat {
                readiness: None,
                ..current.clone()
            }
        );

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
                readiness: None,
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
                readiness: None,
                ..current
            }
        );
        assert!(decode_heartbeat(b"\x01\x02").is_err());
    }
}
