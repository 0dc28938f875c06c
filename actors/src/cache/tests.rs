//! Cache tests: tiers, sharing across nodes through a real `redis-server`, coalescing,
//! eviction, degradation, and the actor's maintenance.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::Actor;
use bytes::Bytes;
use outpost_model::policy::CachingType;

use super::*;
use crate::shared_state::test_support::TestRedis;
use crate::shared_state::{RedisConfig, SharedState, SharedStateConfig};

const MIN: Duration = Duration::from_secs(60);

async fn node(redis: Option<&TestRedis>, config: CacheConfig) -> CacheHandle {
    let shared = match redis {
        Some(r) => SharedState::connect(SharedStateConfig {
            redis: Some(RedisConfig {
                probe_interval: Duration::from_millis(100),
                // Generous: a timeout under a loaded machine would turn a shared hit into a
                // local miss.
                ..RedisConfig::new(r.url(), Duration::from_secs(2))
            }),
            nodes: 2,
        })
        .await
        .unwrap(),
        None => SharedState::in_process(),
    };
    CacheHandle::new(config, shared)
}

fn key(path: &str) -> CacheKey {
    CacheKey::response("gw", "orders", "get-order")
        .path(path)
        .build()
}

fn response(body: &str) -> CachedResponse {
    CachedResponse {
        status: 200,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: Bytes::from(body.to_owned()),
        stored_at_ms: 0,
        ttl_ms: 0,
    }
}

/// What a request does: look up, on a miss "call the backend" and store.
async fn through(
    cache: &CacheHandle,
    k: &CacheKey,
    caching: CachingType,
    fetches: &AtomicUsize,
) -> (Arc<CachedResponse>, Option<Tier>) {
    match cache.lookup(k, caching).await {
        Lookup::Hit { response, tier } => (response, Some(tier)),
        Lookup::Miss(fill) => {
            fetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            (cache.store(fill, response("fresh"), MIN).await, None)
        }
    }
}

#[tokio::test]
async fn a_response_stored_on_one_node_is_a_hit_on_another() {
    let redis = TestRedis::start().await;
    let a = node(Some(&redis), CacheConfig::default()).await;
    let b = node(Some(&redis), CacheConfig::default()).await;
    let fetches = AtomicUsize::new(0);
    let k = key("/orders/1");
    let (_, tier) = through(&a, &k, CachingType::PreferExternal, &fetches).await;
    assert_eq!(tier, None);
    let (r, tier) = through(&b, &k, CachingType::PreferExternal, &fetches).await;
    assert_eq!(tier, Some(Tier::Shared));
    assert_eq!(r.body, "fresh");
    assert!(r.remaining(crate::shared_state::local::now_ms()) <= MIN);
    // Now in b's in-process tier too.
    let (_, tier) = through(&b, &k, CachingType::PreferExternal, &fetches).await;
    assert_eq!(tier, Some(Tier::Local));
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    // Another path, another entry; the stored bytes carry the format version.
    let (_, tier) = through(&b, &key("/orders/2"), CachingType::PreferExternal, &fetches).await;
    assert_eq!(tier, None);
    let raw = redis.command(&["GET", k.as_str()]).await;
    assert!(
        raw.starts_with("binary-data([1, "),
        "format byte first: {raw}"
    );
}

#[tokio::test]
async fn caching_types_pick_their_tiers() {
    let redis = TestRedis::start().await;
    let a = node(Some(&redis), CacheConfig::default()).await;
    let b = node(Some(&redis), CacheConfig::default()).await;
    let fetches = AtomicUsize::new(0);

    // internal: never shared.
    let k = key("/internal");
    through(&a, &k, CachingType::Internal, &fetches).await;
    assert_eq!(
        through(&a, &k, CachingType::Internal, &fetches).await.1,
        Some(Tier::Local)
    );
    assert_eq!(
        through(&b, &k, CachingType::Internal, &fetches).await.1,
        None
    );
    assert!(redis.command(&["EXISTS", k.as_str()]).await.contains('0'));

    // external: shared only, nothing in the in-process tier.
    let k = key("/external");
    through(&a, &k, CachingType::External, &fetches).await;
    assert_eq!(
        through(&a, &k, CachingType::External, &fetches).await.1,
        Some(Tier::Shared)
    );
    assert!(a.local_tier().get(&k, 0).is_none());

    // Values are shared and removable from any node.
    a.store_value(
        &CacheKey::value("gw", "token"),
        "abc".into(),
        MIN,
        CachingType::PreferExternal,
    )
    .await;
    assert_eq!(
        b.lookup_value(&CacheKey::value("gw", "token"), CachingType::PreferExternal)
            .await
            .as_deref(),
        Some("abc")
    );
    b.remove_value(&CacheKey::value("gw", "token"), CachingType::PreferExternal)
        .await;
    assert_eq!(
        a.lookup_value(&CacheKey::value("gw", "token"), CachingType::PreferExternal)
            .await,
        None
    );
    a.store_value(
        &CacheKey::value("gw", "local"),
        "x".into(),
        MIN,
        CachingType::Internal,
    )
    .await;
    assert_eq!(
        a.lookup_value(&CacheKey::value("gw", "local"), CachingType::Internal)
            .await
            .as_deref(),
        Some("x")
    );
    assert_eq!(
        b.lookup_value(&CacheKey::value("gw", "local"), CachingType::Internal)
            .await,
        None
    );
}

#[tokio::test]
async fn concurrent_misses_fetch_once() {
    let cache = node(None, CacheConfig::default()).await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let k = key("/hot");
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (cache, k, fetches) = (cache.clone(), k.clone(), fetches.clone());
            tokio::spawn(
                async move { through(&cache, &k, CachingType::PreferExternal, &fetches).await },
            )
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().0.body, "fresh");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert_eq!(cache.counters().coalesced.load(Ordering::Relaxed), 9);
    assert_eq!(cache.counters().misses.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn followers_fetch_themselves_when_the_leader_has_nothing() {
    let cache = node(
        None,
        CacheConfig {
            coalesce_wait: Duration::from_millis(300),
            ..CacheConfig::default()
        },
    )
    .await;
    let k = key("/uncacheable");
    let Lookup::Miss(leader) = cache.lookup(&k, CachingType::Internal).await else {
        panic!("first lookup misses")
    };
    assert!(leader.leads());
    let follower = {
        let (cache, k) = (cache.clone(), k.clone());
        tokio::spawn(async move { cache.lookup(&k, CachingType::Internal).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(leader); // e.g. a 500 from the backend: nothing stored
    let Lookup::Miss(fill) = follower.await.unwrap() else {
        panic!("nothing to share")
    };
    assert!(!fill.leads());

    // A leader that never answers: the follower's wait is bounded.
    let Lookup::Miss(_slow) = cache.lookup(&key("/slow"), CachingType::Internal).await else {
        panic!()
    };
    let started = std::time::Instant::now();
    assert!(matches!(
        cache.lookup(&key("/slow"), CachingType::Internal).await,
        Lookup::Miss(_)
    ));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn the_in_process_tier_is_bounded_by_bytes() {
    let cache = node(
        None,
        CacheConfig {
            local_max_bytes: 64 * 1024,
            ..CacheConfig::default()
        },
    )
    .await;
    let body = "x".repeat(1000);
    for i in 0..200 {
        let Lookup::Miss(fill) = cache
            .lookup(&key(&format!("/{i}")), CachingType::Internal)
            .await
        else {
            panic!()
        };
        cache.store(fill, response(&body), MIN).await;
    }
    let tier = cache.local_tier();
    assert!(tier.bytes() <= 64 * 1024, "{}", tier.bytes());
    assert!(tier.len() < 200 && tier.len() >= 30, "{}", tier.len());
    // An entry larger than the bound is not stored, and does not flush the rest.
    let before = tier.len();
    let Lookup::Miss(fill) = cache.lookup(&key("/huge"), CachingType::Internal).await else {
        panic!()
    };
    cache
        .store(fill, response(&"y".repeat(100 * 1024)), MIN)
        .await;
    assert!(matches!(
        cache.lookup(&key("/huge"), CachingType::Internal).await,
        Lookup::Miss(_)
    ));
    assert!(tier.len() >= before - 1);
}

#[tokio::test]
async fn redis_down_degrades_to_the_in_process_tier() {
    let mut redis = TestRedis::start().await;
    let a = node(Some(&redis), CacheConfig::default()).await;
    let fetches = AtomicUsize::new(0);
    redis.kill();
    // The first call notices; none fails.
    for caching in [CachingType::PreferExternal, CachingType::External] {
        let k = key(&format!("/down/{caching:?}"));
        assert_eq!(through(&a, &k, caching, &fetches).await.1, None);
        assert_eq!(
            through(&a, &k, caching, &fetches).await.1,
            Some(Tier::Local)
        );
    }
    a.store_value(
        &CacheKey::value("gw", "v"),
        "1".into(),
        MIN,
        CachingType::PreferExternal,
    )
    .await;
    assert_eq!(
        a.lookup_value(&CacheKey::value("gw", "v"), CachingType::PreferExternal)
            .await
            .as_deref(),
        Some("1")
    );
    assert!(!a.shared_state().shared_available());

    redis.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !a.shared_state().shared_available() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let k = key("/after");
    through(&a, &k, CachingType::External, &fetches).await;
    assert_eq!(
        through(&a, &k, CachingType::External, &fetches).await.1,
        Some(Tier::Shared)
    );
}

#[actix_rt::test]
async fn the_actor_sweeps_and_reports() {
    let cache = node(None, CacheConfig::default()).await;
    let Lookup::Miss(fill) = cache.lookup(&key("/short"), CachingType::Internal).await else {
        panic!()
    };
    cache
        .store(fill, response("x"), Duration::from_millis(20))
        .await;
    let Lookup::Miss(fill) = cache.lookup(&key("/long"), CachingType::Internal).await else {
        panic!()
    };
    cache.store(fill, response("y"), MIN).await;
    let addr = Cache::new(cache.clone()).start();
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(addr.send(SweepExpired).await.unwrap(), 1);
    let stats = addr.send(GetCacheStats).await.unwrap();
    assert_eq!(stats.local_entries, 1);
    assert_eq!((stats.misses, stats.stores, stats.swept), (2, 2, 1));
    assert!(stats.local_bytes > 0 && stats.local_bytes <= stats.local_max_bytes);
    assert_eq!(
        stats.shared,
        Some(crate::shared_state::Reachability::NotConfigured)
    );
}

#[test]
fn state_tracks_degradation() {
    use crate::shared_state::Reachability;
    let mut s = CacheState::default();
    assert_eq!(s.reachability(0, Reachability::Connected), None);
    assert_eq!(
        s.reachability(
            10,
            Reachability::Disconnected {
                reason: "boom".into()
            }
        ),
        Some(TierChange::Degraded {
            reason: "boom".into()
        })
    );
    assert_eq!(
        s.reachability(
            20,
            Reachability::Disconnected {
                reason: "again".into()
            }
        ),
        None
    );
    assert_eq!(
        s.reachability(110, Reachability::Connected),
        Some(TierChange::Restored { after_ms: 100 })
    );
    s.swept(5, 3);
    let stats = s.stats(CacheStats::default());
    assert_eq!(
        (stats.swept, stats.sweeps, stats.degraded_since_ms),
        (3, 1, None)
    );
}
