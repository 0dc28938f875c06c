//! The same test bodies over the in-process store and a real `redis-server` (spawned per test on
//! a free port), plus the outage behaviour of [`SharedState`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use outpost_model::policy::OutageMode;

use super::test_support::{
    TestPki, TestRedis, TestRedisCluster, TestRedisSentinel, TestRedisTls, TestSentinelTls,
    command_at, command_on, redis_tls, silent_server, wait_for_reply,
};
use super::*;

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// A generous call timeout: tests run in parallel on small, loaded machines, and a call that
/// times out would turn an exact shared count into a local fallback. Tests of the timeout
/// itself set their own.
fn config(url: &str) -> RedisConfig {
    RedisConfig {
        probe_interval: Duration::from_millis(100),
        ..RedisConfig::new(url, Duration::from_secs(2))
    }
}

async fn redis_nodes(redis: &TestRedis, n: usize) -> Vec<RedisStore> {
    let mut out = Vec::new();
    for _ in 0..n {
        let s = RedisStore::connect(config(&redis.url())).await.unwrap();
        assert!(s.is_healthy(), "{:?}", s.reachability());
        out.push(s);
    }
    out
}

fn local_nodes(n: usize) -> Vec<Arc<LocalStore>> {
    let one = Arc::new(LocalStore::new());
    (0..n).map(|_| one.clone()).collect()
}

// === bodies shared by both stores ===

/// 3 nodes, limit 100/min, 300 hits round-robin: exactly 100 admitted, sequentially and
/// concurrently.
/// Three stores ("nodes") made from `config`, each connected.
async fn connected_nodes(config: impl Fn() -> RedisConfig) -> Vec<Arc<RedisStore>> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let store = RedisStore::connect(config()).await.unwrap();
        assert!(store.is_healthy(), "{:?}", store.reachability());
        nodes.push(Arc::new(store));
    }
    nodes
}

/// Many counters over three cluster nodes: each stays exact, and they land on at least two of
/// the primaries.
async fn counters_spread_over_the_primaries(nodes: &[Arc<RedisStore>], cluster: &TestRedisCluster) {
    for k in 0..12 {
        let key = format!("spread-{k}");
        let mut admitted = 0;
        for i in 0..9 {
            admitted += usize::from(nodes[i % 3].hit(&key, 5, MIN, 1).await.unwrap().allowed);
        }
        assert_eq!(admitted, 5, "{key}");
    }
    let mut holding = 0;
    for port in cluster.ports() {
        if !command_on(port, &["DBSIZE"]).await.contains("int(0)") {
            holding += 1;
        }
    }
    assert!(holding >= 2, "counters should spread over the primaries");
}

async fn exact_across_nodes<S: CounterStore + 'static>(nodes: Vec<Arc<S>>) {
    let mut admitted = 0;
    for i in 0..300 {
        let s = nodes[i % nodes.len()]
            .hit("exact-seq", 100, MIN, 1)
            .await
            .unwrap();
        admitted += usize::from(s.allowed);
        if i == 99 {
            assert_eq!(s.remaining, 0);
        }
    }
    assert_eq!(admitted, 100);

    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let node = nodes[i % nodes.len()].clone();
            tokio::spawn(async move { node.hit("exact-par", 100, MIN, 1).await.unwrap().allowed })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 100);
}

/// A sliding window, checked against the instants the test observed rather than fixed
/// margins: on a loaded machine a call can take hundreds of milliseconds, and what the store
/// answers must then be judged by when the calls really ran.
async fn window_slides<S: CounterStore>(s: &S) {
    let w = Duration::from_secs(2);
    let slack = Duration::from_millis(20); // Redis' clock is read in milliseconds
    // A hit stays counted for at least w and at most w + one slot (window.rs).
    let slot = w / super::window::SLOTS as u32;
    let t0 = Instant::now();
    assert!(s.hit("slide", 3, w, 1).await.unwrap().allowed);
    assert!(s.hit("slide", 3, w, 1).await.unwrap().allowed);
    let t1 = Instant::now();
    tokio::time::sleep(w / 2).await;
    let t2 = Instant::now();
    assert!(s.hit("slide", 3, w, 1).await.unwrap().allowed);
    let refused = s.hit("slide", 3, w, 1).await.unwrap();
    let t3 = Instant::now();
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    // The oldest hit (made between t0 and t1) leaves the window w to w + slot after it was
    // made; the refusal was decided between t2 and t3.
    let earliest = (t0 + w).saturating_duration_since(t3).saturating_sub(slack);
    let latest = (t1 + w + slot).saturating_duration_since(t2) + slack;
    assert!(
        refused.retry_after >= earliest && refused.retry_after <= latest,
        "{refused:?} not within {earliest:?}..={latest:?}"
    );
    // Wait until the first two have left the window for certain.
    tokio::time::sleep((t1 + w + slot + slack).saturating_duration_since(Instant::now())).await;
    let answers = [
        s.hit("slide", 3, w, 1).await.unwrap().allowed,
        s.hit("slide", 3, w, 1).await.unwrap().allowed,
        s.hit("slide", 3, w, 1).await.unwrap().allowed,
    ];
    if Instant::now() + slack < t2 + w {
        // The third hit (made after t2) is still in the window: two fit, not three.
        assert_eq!(answers, [true, true, false]);
    } else {
        // The machine stalled for about a second: the third hit may have left as well, but
        // the two that left first must have made room.
        assert!(answers[0] && answers[1], "{answers:?}");
    }
}

async fn increments_and_refunds<S: CounterStore>(s: &S) {
    let a = s.hit("inc", 10, MIN, 4).await.unwrap();
    assert!(a.allowed && a.remaining == 6);
    let b = s.hit("inc", 10, MIN, 7).await.unwrap();
    assert!(!b.allowed && b.remaining == 6 && b.retry_after > Duration::ZERO);
    s.refund(&a.ticket).await.unwrap();
    let c = s.hit("inc", 10, MIN, 10).await.unwrap();
    assert!(c.allowed && c.remaining == 0);
    // A refused hit has nothing to refund.
    s.refund(&b.ticket).await.unwrap();
    assert!(!s.hit("inc", 10, MIN, 1).await.unwrap().allowed);
}

async fn quota_counts_calls_and_bytes<S: CounterStore>(s: &S) {
    let limits = QuotaLimits {
        calls: Some(3),
        bytes: Some(10_000),
    };
    let call = QuotaDelta {
        calls: 1,
        bytes: 0,
        enforce: true,
    };
    for i in 1..=3 {
        let q = s.quota("q", HOUR, limits, call).await.unwrap();
        assert!(q.allowed && q.calls == i, "{q:?}");
        assert!(q.resets_in <= HOUR && q.resets_in > Duration::ZERO);
    }
    assert!(!s.quota("q", HOUR, limits, call).await.unwrap().allowed);
    // A refund (increment-condition not met) gives a call back.
    let refund = QuotaDelta {
        calls: -1,
        bytes: 0,
        enforce: false,
    };
    assert_eq!(s.quota("q", HOUR, limits, refund).await.unwrap().calls, 2);
    assert!(s.quota("q", HOUR, limits, call).await.unwrap().allowed);

    // Bandwidth: recorded after the response, enforced on the next admission.
    let bw = QuotaLimits {
        calls: None,
        bytes: Some(1000),
    };
    assert!(s.quota("bw", HOUR, bw, call).await.unwrap().allowed);
    let record = QuotaDelta {
        calls: 0,
        bytes: 1500,
        enforce: false,
    };
    assert_eq!(s.quota("bw", HOUR, bw, record).await.unwrap().bytes, 1500);
    assert!(!s.quota("bw", HOUR, bw, call).await.unwrap().allowed);
}

async fn key_values<S: CounterStore>(s: &S) {
    assert_eq!(s.get("kv").await.unwrap(), None);
    s.set(
        "kv",
        Bytes::from_static(b"\x00\x01bin"),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get("kv").await.unwrap().as_deref(),
        Some(&b"\x00\x01bin"[..])
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.get("kv").await.unwrap(), None, "expired");
    s.set("kv", Bytes::from_static(b"v"), MIN).await.unwrap();
    s.delete("kv").await.unwrap();
    assert_eq!(s.get("kv").await.unwrap(), None, "deleted");
}

// === in-process ===

#[tokio::test]
async fn local_exact_across_nodes() {
    exact_across_nodes(local_nodes(3)).await;
}

#[tokio::test]
async fn local_window_slides() {
    window_slides(&LocalStore::new()).await;
}

#[tokio::test]
async fn local_increments_and_refunds() {
    increments_and_refunds(&LocalStore::new()).await;
}

#[tokio::test]
async fn local_quota() {
    quota_counts_calls_and_bytes(&LocalStore::new()).await;
}

#[tokio::test]
async fn local_key_values() {
    key_values(&LocalStore::new()).await;
}

#[test]
fn local_sweep_drops_idle_entries() {
    let s = LocalStore::new();
    let t = 1_000_000_000;
    s.hit_at(t, "a", 5, Duration::from_secs(1), 1);
    s.set_now("v", Bytes::from_static(b"x"), Duration::from_millis(1));
    assert_eq!(s.len(), 2);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(s.sweep(t + 2_000), 1, "the counter is idle");
    assert_eq!(s.sweep(super::local::now_ms()), 1, "the value expired");
    assert!(s.is_empty());
}

// === Redis ===

#[tokio::test]
async fn redis_exact_across_nodes() {
    let redis = TestRedis::start().await;
    let nodes = redis_nodes(&redis, 3)
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    exact_across_nodes(nodes).await;
}

#[tokio::test]
async fn redis_window_slides() {
    let redis = TestRedis::start().await;
    window_slides(&redis_nodes(&redis, 1).await[0]).await;
}

#[tokio::test]
async fn redis_increments_and_refunds() {
    let redis = TestRedis::start().await;
    increments_and_refunds(&redis_nodes(&redis, 1).await[0]).await;
}

#[tokio::test]
async fn redis_quota_persists_across_clients_and_restarts() {
    let mut redis = TestRedis::start().await;
    quota_counts_calls_and_bytes(&redis_nodes(&redis, 1).await[0]).await;

    let limits = QuotaLimits {
        calls: Some(5),
        bytes: None,
    };
    let call = QuotaDelta {
        calls: 1,
        bytes: 0,
        enforce: true,
    };
    let first = redis_nodes(&redis, 1).await.remove(0);
    for _ in 0..3 {
        assert!(first.quota("p", HOUR, limits, call).await.unwrap().allowed);
    }
    drop(first);
    // A gateway restart: a new client, same Redis.
    let second = redis_nodes(&redis, 1).await.remove(0);
    assert_eq!(
        second.quota("p", HOUR, limits, call).await.unwrap().calls,
        4
    );
    // A Redis restart (append-only file): still counted.
    redis.restart().await;
    let third = redis_nodes(&redis, 1).await.remove(0);
    let q = third.quota("p", HOUR, limits, call).await.unwrap();
    assert!(q.allowed && q.calls == 5, "{q:?}");
    assert!(!third.quota("p", HOUR, limits, call).await.unwrap().allowed);
    // The key expires when its window ends.
    let ttl = redis.command(&["TTL", "p"]).await;
    let ttl: i64 = ttl
        .chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 3600, "{ttl}");
}

/// Nagle off on the Redis sockets (redis-rs 1.x leaves it on): concurrent calls share a
/// worker's connection, and with Nagle a call written while another is unacknowledged waits
/// for that ACK (redis-rs/redis-rs#2195: 39–68 % of multiplexed throughput over a LAN; loopback
/// hides it, so this checks the setting rather than a timing).
#[tokio::test]
async fn redis_sockets_have_tcp_nodelay() {
    let redis = TestRedis::start().await;
    let store = RedisStore::connect(config(&redis.url())).await.unwrap();
    assert_eq!(store.tcp_nodelay(), Some(true));
    let pki = TestPki::new();
    let tls = TestRedisTls::start(&pki, "optional", &[]).await;
    let store = RedisStore::connect(RedisConfig {
        tls: redis_tls(&pki, false),
        ..config(&tls.url())
    })
    .await
    .unwrap();
    assert!(store.is_healthy(), "{:?}", store.reachability());
    assert_eq!(store.tcp_nodelay(), Some(true));
    let sentinel = TestRedisSentinel::start().await;
    let store = RedisStore::connect(RedisConfig {
        sentinel_service: Some(TestRedisSentinel::SERVICE.into()),
        ..config(&sentinel.url())
    })
    .await
    .unwrap();
    assert!(store.is_healthy(), "{:?}", store.reachability());
    assert_eq!(store.tcp_nodelay(), Some(true));
}

#[tokio::test]
async fn redis_key_values() {
    let redis = TestRedis::start().await;
    key_values(&redis_nodes(&redis, 1).await[0]).await;
}

#[tokio::test]
async fn redis_one_round_trip_per_check() {
    let redis = TestRedis::start().await;
    let s = redis_nodes(&redis, 1).await.remove(0);
    s.hit("warm", 10, MIN, 1).await.unwrap(); // loads the script (NOSCRIPT → EVAL once)
    redis.command(&["CONFIG", "RESETSTAT"]).await;
    for _ in 0..50 {
        s.hit("rt", 1000, MIN, 1).await.unwrap();
    }
    let stats = redis.command(&["INFO", "commandstats"]).await;
    assert!(stats.contains("cmdstat_evalsha:calls=50,"), "{stats}");
    assert!(!stats.contains("cmdstat_eval:"), "{stats}");
}

/// Concurrent checks of one counter on one thread share script calls, and the outcome is the
/// one separate calls would give: exactly the limit admitted, each admitted check seeing its
/// own remaining count, the refused ones a retry time.
#[tokio::test]
async fn redis_concurrent_checks_share_calls_and_stay_exact() {
    let redis = TestRedis::start().await;
    let s = Arc::new(redis_nodes(&redis, 1).await.remove(0));
    s.hit("warm", 10, MIN, 1).await.unwrap();
    redis.command(&["CONFIG", "RESETSTAT"]).await;

    // Increment 3 against 100: 33 fit (99 units), the 34th would need 102.
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.hit("burst", 100, MIN, 3).await.unwrap() })
        })
        .collect();
    let mut states = Vec::new();
    for t in tasks {
        states.push(t.await.unwrap());
    }
    let stats = redis.command(&["INFO", "commandstats"]).await;
    let calls = evalsha_calls(&stats);
    assert!(
        (1..=20).contains(&calls),
        "200 concurrent checks, {calls} calls: {stats}"
    );

    let admitted: Vec<&RateState> = states.iter().filter(|s| s.allowed).collect();
    assert_eq!(admitted.len(), 33);
    let mut remaining: Vec<u64> = admitted.iter().map(|s| s.remaining).collect();
    remaining.sort_unstable();
    let expected: Vec<u64> = (0..33).map(|i| 1 + 3 * i).collect();
    assert_eq!(
        remaining, expected,
        "each admitted check sees what was left after it"
    );
    for refused in states.iter().filter(|s| !s.allowed) {
        assert_eq!(refused.remaining, 1);
        assert!(refused.retry_after > Duration::from_secs(55), "{refused:?}");
        assert_eq!(refused.ticket.amount, 0);
    }
    // The next check, alone, agrees with the batch.
    let next = s.hit("burst", 100, MIN, 1).await.unwrap();
    assert!(next.allowed);
    assert_eq!(next.remaining, 0);
}

/// Concurrent quota admissions of one counter share calls too, across 3 nodes: exactly the
/// quota admitted, each admission seeing the count right after itself.
#[tokio::test]
async fn redis_concurrent_quota_admissions_share_calls_and_stay_exact() {
    let redis = TestRedis::start().await;
    let nodes: Vec<Arc<RedisStore>> = redis_nodes(&redis, 3)
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    let limits = QuotaLimits {
        calls: Some(40),
        bytes: None,
    };
    let call = QuotaDelta {
        calls: 1,
        bytes: 0,
        enforce: true,
    };
    nodes[0].quota("warm", HOUR, limits, call).await.unwrap();
    redis.command(&["CONFIG", "RESETSTAT"]).await;
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let node = nodes[i % 3].clone();
            tokio::spawn(async move { node.quota("qb", HOUR, limits, call).await.unwrap() })
        })
        .collect();
    let mut states = Vec::new();
    for t in tasks {
        states.push(t.await.unwrap());
    }
    let calls = evalsha_calls(&redis.command(&["INFO", "commandstats"]).await);
    assert!(
        (1..=30).contains(&calls),
        "150 concurrent admissions, {calls} calls"
    );
    let mut counts: Vec<u64> = states
        .iter()
        .filter(|s| s.allowed)
        .map(|s| s.calls)
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=40).collect::<Vec<u64>>());
    assert!(states.iter().filter(|s| !s.allowed).all(|s| s.calls == 40));
    // A record after a response (not enforced) still goes through alone and counts.
    let after = QuotaDelta {
        calls: -1,
        bytes: 0,
        enforce: false,
    };
    assert_eq!(
        nodes[1]
            .quota("qb", HOUR, limits, after)
            .await
            .unwrap()
            .calls,
        39
    );
    assert!(
        nodes[2]
            .quota("qb", HOUR, limits, call)
            .await
            .unwrap()
            .allowed
    );
}

/// Refunds keep the running total of the counter right: units taken back can be used again.
#[tokio::test]
async fn redis_refunds_free_capacity_in_the_running_total() {
    let redis = TestRedis::start().await;
    let s = redis_nodes(&redis, 1).await.remove(0);
    let a = s.hit("rf", 2, MIN, 1).await.unwrap();
    let b = s.hit("rf", 2, MIN, 1).await.unwrap();
    assert!(a.allowed && b.allowed);
    assert!(!s.hit("rf", 2, MIN, 1).await.unwrap().allowed);
    s.refund(&a.ticket).await.unwrap();
    let c = s.hit("rf", 2, MIN, 1).await.unwrap();
    assert!(c.allowed, "{c:?}");
    assert_eq!(c.remaining, 0);
    assert!(!s.hit("rf", 2, MIN, 1).await.unwrap().allowed);
}

fn evalsha_calls(stats: &str) -> u64 {
    stats
        .split_once("cmdstat_evalsha:calls=")
        .and_then(|(_, rest)| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Redis Cluster: the same counting, over a 3-primary cluster. Counters and key/values hash
/// to different primaries; the scripts run on the primary holding their key.
#[tokio::test]
async fn redis_cluster_counts_exactly_and_keeps_values() {
    let cluster = TestRedisCluster::start().await;
    let nodes = connected_nodes(|| RedisConfig {
        cluster: true,
        ..config(&cluster.url())
    })
    .await;
    exact_across_nodes(nodes.clone()).await;
    key_values(&*nodes[0]).await;
    // Many counters: they spread over the primaries, and each stays exact.
    counters_spread_over_the_primaries(&nodes, &cluster).await;
    let q = nodes[1]
        .quota(
            "cq",
            HOUR,
            QuotaLimits {
                calls: Some(1),
                bytes: None,
            },
            QuotaDelta {
                calls: 1,
                bytes: 0,
                enforce: true,
            },
        )
        .await
        .unwrap();
    assert!(q.allowed);
}

/// A cluster over TLS (`tls-cluster yes`: the slot map names TLS ports): the seeds are
/// `rediss://`, and the private CA verifies every primary the client discovers.
#[tokio::test]
async fn redis_cluster_over_tls() {
    let pki = TestPki::new();
    let cluster = TestRedisCluster::start_tls(&pki).await;
    let tls_config = |tls| RedisConfig {
        cluster: true,
        tls,
        ..config(&cluster.url())
    };
    let nodes = connected_nodes(|| tls_config(redis_tls(&pki, false))).await;
    exact_across_nodes(nodes.clone()).await;
    counters_spread_over_the_primaries(&nodes, &cluster).await;
    refused(tls_config(RedisTls::default())).await;
}

/// The whole cluster killed: decisions fall back to local counting, nothing fails; the
/// cluster back: shared counting resumes.
#[tokio::test]
async fn redis_cluster_killed_then_restarted() {
    let mut cluster = TestRedisCluster::start().await;
    let s = SharedState::connect(SharedStateConfig {
        redis: Some(RedisConfig {
            cluster: true,
            ..config(&cluster.url())
        }),
        nodes: 3,
    })
    .await
    .unwrap();
    assert!(s.shared_available());
    let d = s.rate_limit("ck", 30, MIN, 1, OutageMode::Local).await;
    assert_eq!(d.counted_by, CountedBy::Shared);

    cluster.kill_all();
    let (ok, all) = admitted(&s, "ck", 20, OutageMode::Local).await;
    assert_eq!(ok, 10, "this node's share, ceil(30 / 3)");
    assert!(all[10..].iter().all(|d| d.counted_by == CountedBy::Local));
    assert!(!s.shared_available());

    cluster.restart_all().await;
    wait_until("the cluster is reachable again", || s.shared_available()).await;
    let d = s.rate_limit("ck2", 30, MIN, 1, OutageMode::Local).await;
    assert_eq!(d.counted_by, CountedBy::Shared, "{d:?}");
    assert!(d.allowed());
}

/// Redis Sentinel: counting goes to the primary the sentinel names, exactly across nodes; after
/// a failover it moves to the new primary by itself, and nothing fails meanwhile.
#[tokio::test]
async fn redis_sentinel_follows_a_failover() {
    let s = TestRedisSentinel::start().await;
    let sentinel_config = || RedisConfig {
        sentinel_service: Some(TestRedisSentinel::SERVICE.into()),
        ..config(&s.url())
    };
    let nodes = connected_nodes(sentinel_config).await;
    exact_across_nodes(nodes.clone()).await;
    assert!(
        command_on(s.primary, &["EXISTS", "exact-seq"])
            .await
            .contains("int(1)"),
        "counted on the primary"
    );

    let shared = SharedState::connect(SharedStateConfig {
        redis: Some(sentinel_config()),
        nodes: 3,
    })
    .await
    .unwrap();
    let d = shared
        .rate_limit("fo", 1000, MIN, 1, OutageMode::Local)
        .await;
    assert_eq!(d.counted_by, CountedBy::Shared);
    // A hot counter, checked without pause by 8 tasks through the failover: its coalescing
    // driver never stops, and must still follow the new primary.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hot: Vec<_> = (0..8)
        .map(|_| {
            let (shared, stop, measuring) = (shared.clone(), stop.clone(), measuring.clone());
            tokio::spawn(async move {
                let (mut shared_after, mut local_after) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let d = shared
                        .rate_limit("hot", 1_000_000, MIN, 1, OutageMode::Local)
                        .await;
                    assert!(d.allowed());
                    if measuring.load(std::sync::atomic::Ordering::Relaxed) {
                        match d.counted_by {
                            CountedBy::Shared => shared_after += 1,
                            _ => local_after += 1,
                        }
                    }
                }
                (shared_after, local_after)
            })
        })
        .collect();

    // The sentinel may not judge the replica fit yet ("NOGOODSLAVE") right after start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = command_on(
            s.sentinel,
            &["SENTINEL", "FAILOVER", TestRedisSentinel::SERVICE],
        )
        .await;
        if reply.to_lowercase().contains("ok") {
            break;
        }
        assert!(Instant::now() < deadline, "SENTINEL FAILOVER: {reply}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.named_primary().await.contains(&s.replica.to_string()) {
        assert!(Instant::now() < deadline, "the sentinel did not fail over");
        // Requests keep being decided (shared or, briefly, locally) during the failover.
        assert!(
            shared
                .rate_limit("fo", 1000, MIN, 1, OutageMode::Local)
                .await
                .allowed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new primary counts: decisions are shared again and land on the former replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = shared
            .rate_limit("after", 1000, MIN, 1, OutageMode::Local)
            .await;
        assert!(d.allowed());
        if d.counted_by == CountedBy::Shared
            && command_on(s.replica, &["EXISTS", "outpost:rl:2:after"])
                .await
                .contains("int(1)")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counting did not move to the new primary: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once the former primary has become a replica (it then refuses writes) and every node's
    // probe has run, all nodes count on the new primary: exact again.
    wait_for_reply(
        &format!("redis://127.0.0.1:{}", s.primary),
        &["INFO", "replication"],
        "role:slave",
        "the former primary to be demoted",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut shared_after, mut local_after) = (0, 0);
    for t in hot {
        let (s, l) = t.await.unwrap();
        shared_after += s;
        local_after += l;
    }
    assert!(
        shared_after > 0 && local_after == 0,
        "hot counter after the failover: {shared_after} shared, {local_after} local"
    );
    let mut admitted = 0;
    for i in 0..9 {
        admitted += usize::from(
            nodes[i % 3]
                .hit("new-primary", 5, MIN, 1)
                .await
                .unwrap()
                .allowed,
        );
    }
    assert_eq!(admitted, 5);
}

// === SharedState: outage modes ===

/// A store that must not get through: not healthy, and the reason says something.
async fn refused(config: RedisConfig) -> String {
    let store = RedisStore::connect(config).await.unwrap();
    assert!(!store.is_healthy(), "{:?}", store.reachability());
    match store.reachability() {
        Reachability::Disconnected { reason } => reason,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn redis_tls_with_a_private_ca_and_a_client_certificate() {
    let pki = TestPki::new();
    // `tls-auth-clients yes`: mutual TLS, the server wants a certificate from our CA.
    let redis = TestRedisTls::start(&pki, "yes", &[]).await;
    let tls_config = |tls| RedisConfig {
        tls,
        ..config(&redis.url())
    };
    let nodes = connected_nodes(|| tls_config(redis_tls(&pki, true))).await;
    exact_across_nodes(nodes.clone()).await;
    key_values(&*nodes[0]).await;
    assert!(
        command_on(redis.port, &["EXISTS", "exact-seq"])
            .await
            .contains("int(1)"),
        "counted on the TLS server"
    );

    // Each part of the TLS set-up matters: no client certificate, another CA, the system's
    // roots (which do not hold the private CA) — none gets through.
    refused(tls_config(redis_tls(&pki, false))).await;
    refused(tls_config(redis_tls(&TestPki::new(), true))).await;
    refused(tls_config(RedisTls::default())).await;
}

#[tokio::test]
async fn redis_sentinel_over_tls_with_sentinel_credentials() {
    let pki = TestPki::new();
    let primary = TestRedisTls::start(&pki, "optional", &["--requirepass", "primary-pw"]).await;
    let sentinel = TestSentinelTls::start(&pki, &primary, "primary-pw", "sentinel-pw").await;
    // The URL's password is the primary's; the sentinel's comes from its own setting.
    let sentinel_config = |password: Option<&str>| RedisConfig {
        sentinel_service: Some(TestRedisSentinel::SERVICE.into()),
        sentinel_password: password.map(str::to_owned),
        tls: redis_tls(&pki, false),
        ..config(&format!(
            "rediss://:primary-pw@127.0.0.1:{}",
            sentinel.tls_port
        ))
    };
    let nodes = connected_nodes(|| sentinel_config(Some("sentinel-pw"))).await;
    exact_across_nodes(nodes).await;
    let inside = format!("redis://:primary-pw@127.0.0.1:{}", primary.port);
    assert!(
        command_at(&inside, &["EXISTS", "exact-seq"])
            .await
            .contains("int(1)"),
        "counted on the primary the sentinel named"
    );

    let reason = refused(sentinel_config(None)).await;
    assert!(reason.to_lowercase().contains("auth"), "{reason}");
    refused(sentinel_config(Some("wrong"))).await;
    // The sentinel's plain port is not the TLS one: a rediss:// URL there fails the handshake.
    refused(RedisConfig {
        url: format!("rediss://:primary-pw@127.0.0.1:{}", sentinel.port),
        ..sentinel_config(Some("sentinel-pw"))
    })
    .await;
}

async fn shared(redis: &TestRedis, nodes: u64) -> SharedState {
    let s = SharedState::connect(SharedStateConfig {
        redis: Some(config(&redis.url())),
        nodes,
    })
    .await
    .unwrap();
    assert!(s.shared_available());
    s
}

async fn admitted(
    s: &SharedState,
    key: &str,
    n: usize,
    outage: OutageMode,
) -> (usize, Vec<Decision>) {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(s.rate_limit(key, 30, MIN, 1, outage).await);
    }
    (all.iter().filter(|d| d.allowed()).count(), all)
}

/// One call admitted against a quota of `calls` per hour, `local` outage mode.
async fn quota_admission(s: &SharedState, key: &str, calls: u64) -> QuotaDecision {
    let limits = QuotaLimits {
        calls: Some(calls),
        bytes: None,
    };
    let delta = QuotaDelta {
        calls: 1,
        bytes: 0,
        enforce: true,
    };
    s.quota(key, HOUR, limits, delta, OutageMode::Local).await
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_killed_then_restarted() {
    let mut redis = TestRedis::start().await;
    let s = shared(&redis, 3).await;
    let mut status = s.subscribe();
    assert_eq!(*status.borrow_and_update(), Reachability::Connected);

    let (n, d) = admitted(&s, "k", 12, OutageMode::Local).await;
    assert_eq!(n, 12);
    assert!(d.iter().all(|d| d.counted_by == CountedBy::Shared));

    redis.kill();
    // Local mode: this node's share, ceil(30 / 3) = 10, counted from zero; no error surfaces.
    let started = Instant::now();
    let (n, d) = admitted(&s, "k", 20, OutageMode::Local).await;
    assert_eq!(n, 10);
    assert!(
        d.iter()
            .all(|d| d.counted_by == CountedBy::Local && d.limit == 10)
    );
    assert!(d.iter().all(|d| d.verdict != Verdict::Unavailable));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "only the first call waits"
    );
    assert!(!s.shared_available());
    status.changed().await.unwrap();
    assert!(matches!(
        *status.borrow(),
        Reachability::Disconnected { .. }
    ));

    // The other modes.
    let (n, d) = admitted(&s, "open", 50, OutageMode::FailOpen).await;
    assert_eq!(n, 50);
    assert!(d.iter().all(|d| d.counted_by == CountedBy::Nobody));
    let (n, d) = admitted(&s, "closed", 5, OutageMode::FailClosed).await;
    assert_eq!(n, 0);
    assert!(
        d.iter()
            .all(|d| d.verdict == Verdict::Unavailable && d.retry_after >= Duration::from_secs(1))
    );
    let q = quota_admission(&s, "qk", 6).await;
    assert!(q.allowed() && q.counted_by == CountedBy::Local && q.limits.calls == Some(2));

    // Back: shared counting resumes where Redis left it (12 of 30, kept in the AOF), plus the
    // 10 this node admitted alone during the outage, which it adds once Redis is back.
    redis.restart().await;
    wait_until("redis reconnect", || s.shared_available()).await;
    wait_for_reply(
        &redis.url(),
        &["HGET", "outpost:rl:2:k", "t"],
        "\"22\"",
        "the outage counts to be replayed",
    )
    .await;
    let (n, d) = admitted(&s, "k", 30, OutageMode::Local).await;
    assert_eq!(n, 8);
    assert!(d.iter().all(|d| d.counted_by == CountedBy::Shared));
    assert_eq!(s.reachability(), Reachability::Connected);
    // The quota too: the outage's admission plus this one.
    let q = quota_admission(&s, "qk", 6).await;
    assert!(
        q.allowed() && q.counted_by == CountedBy::Shared && q.calls == 2,
        "{q:?}"
    );
    // Fail-open admissions were not counted, and are not added either.
    let (n, _) = admitted(&s, "open", 30, OutageMode::FailOpen).await;
    assert_eq!(n, 30);
}

#[tokio::test]
async fn unresponsive_redis_times_out_and_falls_back() {
    // A server that accepts and never answers.
    let addr = silent_server().await;
    let cfg = RedisConfig {
        url: format!("redis://{addr}"),
        timeout: Duration::from_millis(100),
        probe_interval: Duration::from_millis(100),
        ..RedisConfig::new("", Duration::ZERO)
    };
    let started = Instant::now();
    let store = RedisStore::connect(cfg.clone()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "connect waits one timeout at most"
    );
    assert!(!store.is_healthy());
    let started = Instant::now();
    assert!(!store.probe().await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_millis(500),
        "{took:?}"
    );
    assert!(
        matches!(store.reachability(), Reachability::Disconnected { reason } if reason.contains("timed out"))
    );
    // While unreachable, calls fail at once instead of waiting for the timeout.
    let started = Instant::now();
    assert!(matches!(
        store.hit("k", 1, MIN, 1).await,
        Err(StoreError::Unreachable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_millis(90),
        "less than a timeout"
    );

    let s = SharedState::connect(SharedStateConfig {
        redis: Some(cfg),
        nodes: 2,
    })
    .await
    .unwrap();
    let d = s.rate_limit("k", 4, MIN, 1, OutageMode::Local).await;
    assert!(d.allowed() && d.counted_by == CountedBy::Local && d.limit == 2);
}

#[tokio::test]
async fn a_stalled_redis_is_detected_by_the_call_timeout() {
    let redis = TestRedis::start().await;
    let s = SharedState::connect(SharedStateConfig {
        redis: Some(RedisConfig {
            timeout: Duration::from_millis(200),
            ..config(&redis.url())
        }),
        nodes: 1,
    })
    .await
    .unwrap();
    assert!(
        s.rate_limit("k", 5, MIN, 1, OutageMode::Local)
            .await
            .counted_by
            == CountedBy::Shared
    );
    // Redis stops answering (every client paused for 1.5 s).
    redis.command(&["CLIENT", "PAUSE", "1500", "ALL"]).await;
    let started = Instant::now();
    let d = s.rate_limit("k", 5, MIN, 1, OutageMode::Local).await;
    let took = started.elapsed();
    assert!(d.allowed() && d.counted_by == CountedBy::Local, "{d:?}");
    // It waited for the timeout, and gave up well before Redis answered again.
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(1400),
        "{took:?}"
    );
    // Next calls do not wait for a timeout of their own.
    let started = Instant::now();
    s.rate_limit("k", 5, MIN, 1, OutageMode::Local).await;
    assert!(started.elapsed() < Duration::from_millis(190));
    // After the pause, the probe reconnects and shared counting resumes (1 counted before).
    wait_until("redis back", || s.shared_available()).await;
    let d = s.rate_limit("k", 5, MIN, 1, OutageMode::Local).await;
    assert_eq!(d.counted_by, CountedBy::Shared);
    assert!(d.remaining <= 3, "{d:?}");
}

#[tokio::test]
async fn refunds_through_the_facade() {
    let redis = TestRedis::start().await;
    for s in [shared(&redis, 1).await, SharedState::in_process()] {
        let a = s.rate_limit("r", 2, MIN, 1, OutageMode::Local).await;
        let b = s.rate_limit("r", 2, MIN, 1, OutageMode::Local).await;
        assert!(a.allowed() && b.allowed());
        assert!(
            !s.rate_limit("r", 2, MIN, 1, OutageMode::Local)
                .await
                .allowed()
        );
        s.refund(&a).await;
        assert!(
            s.rate_limit("r", 2, MIN, 1, OutageMode::Local)
                .await
                .allowed()
        );
    }
}

/// Each thread (each traffic worker) gets its own connection, driven by its own runtime; the
/// counting stays shared; the probe covers every thread and forgets a thread whose runtime has
/// shut down.
#[tokio::test]
async fn one_connection_per_thread_counting_shared() {
    let redis = TestRedis::start().await;
    let store = RedisStore::connect(config(&redis.url())).await.unwrap();
    assert_eq!(store.threads(), 1);
    for _ in 0..3 {
        assert!(store.hit("per-thread", 5, MIN, 1).await.unwrap().allowed);
    }

    // A "worker": its own thread and current-thread runtime, as actix-web's.
    let other = store.clone();
    let url = redis.url();
    let (allowed, clients) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            other.prepare_thread();
            other.prepare_thread(); // idempotent
            let mut allowed = 0;
            for _ in 0..3 {
                allowed += usize::from(other.hit("per-thread", 5, MIN, 1).await.unwrap().allowed);
            }
            let client = redis::Client::open(url).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            // The test's runtime is blocked in `join`: no probe runs meanwhile.
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut c)
                .await
                .unwrap();
            (allowed, list)
        })
    })
    .join()
    .unwrap();
    // Shared: 3 + 2 = the limit of 5, whichever thread asked.
    assert_eq!(allowed, 2);
    // Two connections ran the script: the test thread's and the other thread's own.
    assert_eq!(clients.matches("cmd=evalsha").count(), 2, "{clients}");
    assert_eq!(store.threads(), 2);

    // That thread's runtime is gone: the probe forgets it instead of failing.
    assert!(store.probe().await);
    assert_eq!(store.threads(), 1);
    assert!(store.is_healthy());
    assert!(!store.hit("per-thread", 5, MIN, 1).await.unwrap().allowed);
}

// === local budgets (leases) ===

/// Units a counter holds in Redis (its running total).
async fn redis_total(redis: &TestRedis, key: &str) -> u64 {
    // The reply's debug form quotes the number: `bulk-string('"12"')`.
    let t = redis.command(&["HGET", key, "t"]).await;
    t.split('"')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// With a budget, most checks of a hot counter need no round trip: 200 checks in a row on one
/// node, a budget of 50, take a handful of script calls instead of 200.
#[tokio::test]
async fn redis_local_budget_saves_round_trips() {
    let redis = TestRedis::start().await;
    let s = redis_nodes(&redis, 1).await.remove(0);
    s.hit("warm", 10, MIN, 1).await.unwrap();
    redis.command(&["CONFIG", "RESETSTAT"]).await;
    for _ in 0..200 {
        let state = s
            .hit_with_budget("hot".into(), 1_000_000, MIN, 1, 50)
            .await
            .unwrap();
        assert!(state.allowed);
    }
    let calls = evalsha_calls(&redis.command(&["INFO", "commandstats"]).await);
    // A lease of 50 per call, topped up when half is gone (and again after a slot ends).
    assert!(
        calls <= 20,
        "200 checks with a budget of 50: {calls} script calls"
    );
    assert!(
        redis_total(&redis, "hot").await >= 200,
        "every admitted check is counted in Redis, the leased ones ahead"
    );
}

/// The error bound: three nodes with a budget each, hammering one counter concurrently, never
/// admit more than the limit; they admit at least the limit less what the others may still
/// hold leased (a lease and a top-up each); and once the leases' slot is over the unused units go back, so Redis ends up
/// holding exactly what was admitted.
#[tokio::test]
async fn redis_local_budget_never_exceeds_the_limit_across_nodes() {
    let redis = TestRedis::start().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(shared(&redis, 3).await);
    }
    let (limit, budget) = (100, 10);
    // 10 clients per node, each checking 20 times in a row: after the first calls, most
    // checks find a lease (a burst all at once would only ever be batched).
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let s = nodes[i % 3].clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..20 {
                    out.push(
                        s.rate_limit_with_budget(
                            "leased",
                            limit,
                            MIN,
                            1,
                            budget,
                            OutageMode::Local,
                        )
                        .await,
                    );
                    tokio::task::yield_now().await;
                }
                out
            })
        })
        .collect();
    let mut decisions = Vec::new();
    for t in tasks {
        decisions.extend(t.await.unwrap());
    }
    let leased = redis_total(&redis, "outpost:rl:2:leased").await;
    assert!(decisions.iter().all(|d| d.counted_by == CountedBy::Shared));
    let admitted = decisions.iter().filter(|d| d.allowed()).count() as u64;
    // Each node is one holder here (one thread); each holds at most twice its budget unused.
    assert!(
        admitted <= limit && admitted >= limit - 3 * 2 * budget,
        "{admitted} admitted"
    );
    assert!(
        leased >= admitted,
        "{leased} units in Redis for {admitted} admitted"
    );
    wait_for_reply(
        &redis.url(),
        &["HGET", "outpost:rl:2:leased", "t"],
        &format!("\"{admitted}\""),
        "unused leased units to be given back",
    )
    .await;
}

/// Over time, with a short window (1 s, slots of 50 ms, so leases live at most 50 ms): three
/// nodes with budgets admit at most the limit in any interval of the window's length. Times
/// are taken when the decisions come back, so the intervals checked are one slot shorter than
/// the window (a decision made by Redis up to one reply earlier still counts its full window).
#[tokio::test]
async fn redis_local_budget_keeps_the_sliding_window() {
    let redis = TestRedis::start().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(shared(&redis, 3).await);
    }
    let (limit, budget, window) = (40u64, 8u64, Duration::from_secs(1));
    let start = Instant::now();
    let workers: Vec<_> = (0..12)
        .map(|i| {
            let s = nodes[i % 3].clone();
            tokio::spawn(async move {
                let mut admitted = Vec::new();
                while start.elapsed() < Duration::from_millis(2500) {
                    let d = s
                        .rate_limit_with_budget(
                            "slide",
                            limit,
                            window,
                            1,
                            budget,
                            OutageMode::Local,
                        )
                        .await;
                    assert_eq!(d.counted_by, CountedBy::Shared);
                    if d.allowed() {
                        admitted.push(start.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                admitted
            })
        })
        .collect();
    let mut times = Vec::new();
    for w in workers {
        times.extend(w.await.unwrap());
    }
    times.sort_unstable();
    assert!(
        times.len() as u64 > limit,
        "the window slid: {} admitted in 2.5 s",
        times.len()
    );
    let span = window - Duration::from_millis(50);
    for (i, t) in times.iter().enumerate() {
        let within = times[i..].iter().take_while(|u| **u - *t < span).count() as u64;
        assert!(
            within <= limit,
            "{within} admitted within {span:?} from {t:?} ({} in all)",
            times.len()
        );
    }
}

/// The outage behaviour holds with leases: while Redis is down a budgeted counter falls back
/// like any other (this node's share, counted locally, no lease used), and once Redis is back
/// the outage's admissions are added to what Redis holds (leased units that could not be
/// given back stay counted: the strict side). The site never goes over the limit afterwards.
#[tokio::test]
async fn redis_local_budget_outage_falls_back_and_replays() {
    let mut redis = TestRedis::start().await;
    let s = shared(&redis, 3).await;
    let check = |s: SharedState| async move {
        s.rate_limit_with_budget("k", 30, MIN, 1, 5, OutageMode::Local)
            .await
    };
    for _ in 0..12 {
        let d = check(s.clone()).await;
        assert!(d.allowed() && d.counted_by == CountedBy::Shared);
    }
    let before = redis_total(&redis, "outpost:rl:2:k").await;
    assert!((12..=12 + 5).contains(&before), "{before}");

    redis.kill();
    let mut local = 0;
    for _ in 0..20 {
        let d = check(s.clone()).await;
        if d.counted_by == CountedBy::Local && d.allowed() {
            assert_eq!(d.limit, 10);
            local += 1;
        }
        assert_ne!(d.verdict, Verdict::Unavailable);
    }
    assert_eq!(
        local, 10,
        "this node's share, ceil(30 / 3), counted locally"
    );

    redis.restart().await;
    wait_until("redis reconnect", || s.shared_available()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_total(&redis, "outpost:rl:2:k").await < 22 {
        assert!(Instant::now() < deadline, "outage counts not replayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut after = 0;
    for _ in 0..30 {
        let d = check(s.clone()).await;
        assert_eq!(d.counted_by, CountedBy::Shared);
        after += u64::from(d.allowed());
    }
    assert!(after <= 30 - 22, "{after} admitted after the outage");
    assert!(redis_total(&redis, "outpost:rl:2:k").await <= 30);
}
