//! The in-process tier: bounded by bytes, sharded, S3-FIFO/CLOCK-Pro eviction (`quick_cache`),
//! which keeps frequently read entries over one-hit wonders. Entries carry their absolute expiry:
//! a read of an expired entry removes it, and the actor's sweep frees the rest.

use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::{OptionsBuilder, Weighter};

use super::entry::{CachedResponse, CachedValue};
use super::key::CacheKey;

#[derive(Debug, Clone)]
pub enum LocalEntry {
    Response(Arc<CachedResponse>),
    Value(Arc<CachedValue>),
}

impl LocalEntry {
    fn expires_at_ms(&self) -> u64 {
        match self {
            LocalEntry::Response(r) => r.expires_at_ms(),
            LocalEntry::Value(v) => v.expires_at_ms(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ByBytes;

impl Weighter<CacheKey, LocalEntry> for ByBytes {
    fn weight(&self, key: &CacheKey, val: &LocalEntry) -> u64 {
        let payload = match val {
            LocalEntry::Response(r) => r.weight(),
            LocalEntry::Value(v) => v.value.len() as u64 + 48,
        };
        key.as_str().len() as u64 + payload + 32
    }
}

pub struct LocalTier {
    cache: Cache<CacheKey, LocalEntry, ByBytes>,
    max_bytes: u64,
}

impl std::fmt::Debug for LocalTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTier")
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl LocalTier {
    pub fn new(max_bytes: u64) -> LocalTier {
        // One shard per 4 MiB (power of two, 1..=16): an entry must fit in one shard, so small
        // caches keep few shards.
        let shards = (max_bytes / (4 << 20)).clamp(1, 16).next_power_of_two() as usize;
        let options = OptionsBuilder::new()
            .estimated_items_capacity((max_bytes / 2048).clamp(16, 1 << 20) as usize)
            .weight_capacity(max_bytes.max(1))
            .shards(shards)
            .build()
            .expect("valid cache options");
        LocalTier {
            cache: Cache::with_options(options, ByBytes, Default::default(), Default::default()),
            max_bytes,
        }
    }

    /// Largest entry the tier accepts (one shard's capacity).
    pub fn max_entry_bytes(&self) -> u64 {
        self.cache.shard_capacity()
    }

    pub fn get(&self, key: &CacheKey, now_ms: u64) -> Option<LocalEntry> {
        let e = self.cache.get(key)?;
        if e.expires_at_ms() <= now_ms {
            self.cache.remove(key);
            return None;
        }
        Some(e)
    }

    pub fn insert(&self, key: CacheKey, entry: LocalEntry) {
        self.cache.insert(key, entry);
    }

    pub fn remove(&self, key: &CacheKey) {
        self.cache.remove(key);
    }

    /// Removes expired entries; returns how many.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let before = self.cache.len();
        self.cache.retain(|_, e| e.expires_at_ms() > now_ms);
        before.saturating_sub(self.cache.len())
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.cache.weight()
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}
