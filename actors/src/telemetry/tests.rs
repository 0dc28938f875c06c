use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_model::wire::{AggregateKey, RequestAggregate, TelemetryBatch};

use super::spool::Spool;
use super::state::{Aggregator, Outbox, RequestSample};
use super::*;
use crate::link::{CallError, ClientFactory, LinkConfig};

fn record(api: &str, status: u16, secs: i64, ms: u64) -> RequestSample {
    record_us(api, status, secs, ms * 1000)
}

fn record_us(api: &str, status: u16, secs: i64, us: u64) -> RequestSample {
    RequestSample {
        unix_secs: secs,
        api: Some(api.into()),
        operation: Some("get".into()),
        status,
        cache: "none",
        product: None,
        subscription: None,
        duration: Duration::from_micros(us),
        backend_duration: Some(Duration::from_micros(us / 2)),
        request_bytes: 10,
        response_bytes: 100,
    }
}

fn aggregates(n: usize) -> Vec<RequestAggregate> {
    (0..n)
        .map(|i| RequestAggregate {
            key: AggregateKey {
                minute: 60 * i as i64,
                api: "a".into(),
                operation: "o".into(),
                status: 200,
                cache: "none".into(),
                product: String::new(),
                subscription: String::new(),
            },
            count: 1,
            total_duration_us: 1,
            max_duration_us: 1,
            backend_duration_us: 0,
            request_bytes: 0,
            response_bytes: 0,
            latency: vec![(0, 1)],
        })
        .collect()
}

#[test]
fn requests_aggregate_per_minute_api_operation_status_and_cache() {
    let agg = Aggregator::default();
    agg.record(record("a", 200, 120, 10));
    agg.record(record("a", 200, 179, 30));
    agg.record(record("a", 200, 180, 5));
    agg.record(record("a", 404, 130, 1));
    agg.record(record("b", 200, 130, 1));
    let out = agg.drain();
    assert_eq!(out.len(), 4);
    let first = &out[0];
    assert_eq!((first.key.minute, first.key.status), (120, 200));
    assert_eq!(first.count, 2);
    assert_eq!(first.total_duration_us, 40_000);
    assert_eq!(first.max_duration_us, 30_000);
    assert_eq!(first.backend_duration_us, 20_000);
    assert_eq!(first.response_bytes, 200);
    use outpost_model::wire::latency_bucket;
    assert_eq!(
        first.latency,
        vec![
            (latency_bucket(10_000) as u16, 1),
            (latency_bucket(30_000) as u16, 1)
        ]
    );
    assert!(agg.drain().is_empty(), "drained means empty");
}

/// The same names at other addresses (a new configuration revision) are the same series: one
/// aggregate with the counts of both, as with the shared names of one revision.
#[test]
fn equal_names_from_two_revisions_are_one_aggregate() {
    let shared = Aggregator::default();
    let (api, op): (Arc<str>, Arc<str>) = ("a".into(), "get".into());
    let revisions = Aggregator::default();
    for (i, us) in [10_u64, 2_000, 900_000].into_iter().enumerate() {
        let mut sample = record_us("a", 200, 60, us);
        sample.api = Some(api.clone());
        sample.operation = Some(op.clone());
        shared.record(sample.clone());
        if i == 1 {
            // Another revision: equal text, new `Arc`s.
            sample.api = Some("a".into());
            sample.operation = Some("get".into());
        }
        revisions.record(sample);
    }
    let (one, merged) = (shared.drain(), revisions.drain());
    assert_eq!(one.len(), 1);
    assert_eq!(one, merged);
    assert_eq!(one[0].count, 3);
    assert_eq!(one[0].max_duration_us, 900_000);
    assert_eq!(one[0].latency.iter().map(|(_, n)| n).sum::<u64>(), 3);
}

/// Sub-millisecond durations keep their resolution: 137 µs and 0.9 ms are different buckets.
#[test]
fn sub_millisecond_latency_is_kept_with_product_and_subscription() {
    use outpost_model::wire::latency_bucket;
    let agg = Aggregator::default();
    let mut sample = record_us("a", 200, 60, 137);
    sample.product = Some("gold".into());
    sample.subscription = Some("acme".into());
    agg.record(sample.clone());
    sample.duration = Duration::from_micros(900);
    agg.record(sample);
    agg.record(record_us("a", 200, 60, 40));
    let out = agg.drain();
    assert_eq!(out.len(), 2);
    let anonymous = &out[0];
    assert_eq!(anonymous.key.product, "");
    assert_eq!(anonymous.latency, vec![(latency_bucket(40) as u16, 1)]);
    let gold = &out[1];
    assert_eq!(
        (gold.key.product.as_str(), gold.key.subscription.as_str()),
        ("gold", "acme")
    );
    assert_eq!(gold.total_duration_us, 1037);
    assert_eq!(gold.max_duration_us, 900);
    assert_eq!(
        gold.latency,
        vec![
            (latency_bucket(137) as u16, 1),
            (latency_bucket(900) as u16, 1)
        ]
    );
}

#[test]
fn concurrent_records_are_never_lost_by_a_drain() {
    let agg = Aggregator::default();
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let agg = agg.clone();
            std::thread::spawn(move || {
                for i in 0..5000 {
                    agg.record(record(
                        if t % 2 == 0 { "a" } else { "b" },
                        200,
                        i % 3 * 60,
                        1,
                    ));
                }
            })
        })
        .collect();
    let mut total = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        total += agg.drain().iter().map(|a| a.count).sum::<u64>();
    }
    for w in writers {
        w.join().unwrap();
    }
    total += agg.drain().iter().map(|a| a.count).sum::<u64>();
    assert_eq!(total, 20_000);
}

#[test]
fn memory_outbox_is_bounded_and_drops_the_oldest() {
    let mut o = Outbox::new("i".into(), 10, None);
    assert_eq!(o.push(vec![]).sequence, None);
    assert_eq!(o.push(aggregates(4)).sequence, Some(1));
    assert_eq!(o.push(aggregates(4)).sequence, Some(2));
    let pushed = o.push(aggregates(4));
    assert_eq!(pushed.sequence, Some(3));
    assert_eq!(pushed.dropped, 4, "batch 1 dropped");
    assert_eq!(o.buffered(), 8);
    let oldest = o.oldest().unwrap();
    assert_eq!(oldest.sequence, 2);
    assert_eq!(o.oldest().unwrap().sequence, 2, "kept until acknowledged");
    o.acknowledge(&oldest);
    assert_eq!(o.oldest().unwrap().sequence, 3);
    assert_eq!(o.push(aggregates(25)).dropped, 15 + 4);
    assert_eq!(o.buffered(), 10);
}

#[test]
fn overflow_spools_in_order_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 20).unwrap();
    let mut o = Outbox::new("first".into(), 5, Some(spool));
    o.push(aggregates(4)); // memory
    o.push(aggregates(4)); // does not fit: spool
    o.push(aggregates(1)); // would fit, but the spool is not empty: spool, to keep order
    assert_eq!((o.buffered(), o.spooled()), (4, 2));
    let order: Vec<u64> = std::iter::from_fn(|| {
        let b = o.oldest()?;
        o.acknowledge(&b);
        Some(b.sequence)
    })
    .collect();
    assert_eq!(order, vec![1, 2, 3]);
    assert!(o.is_empty());

    o.push(aggregates(2));
    o.push(aggregates(2));
    assert_eq!(o.persist(), 2);
    drop(o);
    let mut reopened = Outbox::new(
        "second".into(),
        5,
        Some(Spool::open(dir.path(), 1 << 20).unwrap()),
    );
    let b = reopened.oldest().unwrap();
    assert_eq!((b.instance_id.as_str(), b.sequence), ("first", 4));
    reopened.acknowledge(&b);
    assert_eq!(reopened.spooled(), 1);
}

/// A spool file of the format before histograms is left alone, not misread.
#[test]
fn old_format_spool_files_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path()
            .join("0000000000000001-00000001-i-000000000001.otb"),
        b"old",
    )
    .unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
    assert!(spool.is_empty());
    assert!(spool.peek().is_none());
    assert!(
        dir.path()
            .join("0000000000000001-00000001-i-000000000001.otb")
            .exists()
    );
}

#[test]
fn the_spool_is_bounded_too() {
    let dir = tempfile::tempdir().unwrap();
    let one = outpost_model::wire::encode(&TelemetryBatch {
        instance_id: "i".into(),
        sequence: 1,
        aggregates: aggregates(3),
    })
    .unwrap()
    .len() as u64;
    let mut o = Outbox::new(
        "i".into(),
        1,
        Some(Spool::open(dir.path(), one * 2 + 4).unwrap()),
    );
    let dropped: u64 = (0..4).map(|_| o.push(aggregates(3)).dropped).sum();
    assert_eq!(dropped, 6, "two oldest spooled batches dropped");
    assert_eq!(o.spooled(), 2);
    assert_eq!(o.oldest().unwrap().sequence, 3);
}

// === the actor against a fake control plane ===

/// A gateway listener that records telemetry uploads and answers `status`.
struct FakeControlPlane {
    url: String,
    status: Arc<AtomicU16>,
    received: Arc<Mutex<Vec<TelemetryBatch>>>,
}

/// A buffer that uploads to the control plane at `url` only when told to (`Flush`), without
/// a spool.
fn uploading_to(url: String) -> (TelemetryBuffer, Aggregator) {
    TelemetryBuffer::new(TelemetryConfig {
        link: Some(Arc::new(LinkConfig::single(
            url,
            "GatewayKey gw&209901010000&c2ln",
            Duration::from_secs(5),
            ClientFactory::plain(),
        ))),
        instance_id: "inst".into(),
        flush_interval: Duration::from_secs(3600),
        max_buffered: 1000,
        spool_dir: None,
        spool_max_bytes: 0,
    })
}

async fn fake_control_plane() -> FakeControlPlane {
    let status = Arc::new(AtomicU16::new(204));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (s, r) = (status.clone(), received.clone());
    let url = crate::link::fake::control_plane(Arc::new(move |_line: &str, body: &[u8]| {
        let code = s.load(Ordering::SeqCst);
        if code == 204 {
            r.lock()
                .unwrap()
                .push(outpost_model::wire::decode(body).unwrap());
        }
        (code, Vec::new())
    }))
    .await;
    FakeControlPlane {
        url,
        status,
        received,
    }
}

#[actix::test]
async fn backlog_is_uploaded_in_order_with_stable_sequences_after_an_outage() {
    let cp = fake_control_plane().await;
    cp.status.store(503, Ordering::SeqCst);
    let (buffer, recorder) = uploading_to(cp.url.clone());
    let addr = buffer.start();
    for i in 0..3 {
        recorder.record(record("a", 200, 60 * i, 1));
        addr.send(Flush).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = addr.send(GetTelemetryStatus).await.unwrap();
    assert_eq!((status.buffered, status.uploaded), (3, 0));

    cp.status.store(204, Ordering::SeqCst);
    addr.send(Flush).await.unwrap();
    for _ in 0..50 {
        if cp.received.lock().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sequences: Vec<u64> = cp
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|b| b.sequence)
        .collect();
    assert_eq!(sequences, vec![1, 2, 3], "in order, numbered once");
    let status = addr.send(GetTelemetryStatus).await.unwrap();
    assert_eq!((status.buffered, status.uploaded), (0, 3));
}

// === poison batches ===

#[test]
fn only_a_refusal_of_the_batch_itself_makes_it_poison() {
    use super::state::is_poison;
    let refused = |status| {
        Err(CallError::Refused {
            status,
            reason: "r".into(),
        })
    };
    assert_eq!(Verdict::of(&Ok(())), Verdict::Acknowledged);
    for status in [400, 413, 422] {
        assert!(is_poison(status));
        assert_eq!(Verdict::of(&refused(status)), Verdict::Poison, "{status}");
    }
    // Refusals that any batch would get (route, negotiation, proxies, conflicts): retried.
    for status in [404, 405, 406, 407, 409, 410, 415, 421, 425, 426, 431] {
        assert!(!is_poison(status));
        assert_eq!(Verdict::of(&refused(status)), Verdict::Retry, "{status}");
    }
    for e in [
        CallError::Unreachable("503 Service Unavailable".into()),
        CallError::Unreachable("timeout".into()),
        CallError::Unauthorized("expired".into()),
        CallError::Rejected("302 Found".into()),
    ] {
        assert_eq!(Verdict::of(&Err(e.clone())), Verdict::Retry, "{e}");
    }
}

#[test]
fn a_discarded_batch_lets_the_next_one_go_from_memory_and_from_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 20).unwrap();
    let mut o = Outbox::new("i".into(), 5, Some(spool));
    o.push(aggregates(3)); // 1: memory
    o.push(aggregates(4)); // 2: spool
    o.push(aggregates(1)); // 3: spool
    let poison = o.oldest().unwrap();
    assert_eq!(poison.sequence, 1);
    assert_eq!(o.discard(&poison), 3);
    assert_eq!(o.buffered(), 0);
    assert_eq!(
        o.discard(&poison),
        0,
        "already gone: nothing else is dropped"
    );
    let poison = o.oldest().unwrap();
    assert_eq!(poison.sequence, 2, "the next batch, from the spool");
    assert_eq!(o.discard(&poison), 4);
    let next = o.oldest().unwrap();
    assert_eq!(next.sequence, 3);
    o.acknowledge(&next);
    assert!(o.is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// The fake control plane refuses batch 1 for its content (400 with the control plane's
/// problem body) and takes the others: batch 1 is dropped once, 2 and 3 arrive in order.
/// A 404 (a route fault, not the batch's) is retried, and the batch arrives once it is fixed.
#[actix::test]
async fn a_poison_batch_is_dropped_and_the_next_ones_go() {
    let received = Arc::new(Mutex::new(Vec::<u64>::new()));
    let attempts = Arc::new(Mutex::new(Vec::<u64>::new()));
    let route_broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r, a, broken) = (received.clone(), attempts.clone(), route_broken.clone());
    let url = crate::link::fake::control_plane(Arc::new(move |_line: &str, body: &[u8]| {
        let batch: TelemetryBatch = outpost_model::wire::decode(body).unwrap();
        a.lock().unwrap().push(batch.sequence);
        if broken.load(Ordering::SeqCst) {
            return (404, b"not found".to_vec());
        }
        if batch.sequence == 1 {
            let problem = br#"{"error":"bad-request","message":"1 problem(s) in the request","problems":[{"path":"aggregates[0].latency","message":"the histogram counts 0 requests, the aggregate 1"}]}"#;
            return (400, problem.to_vec());
        }
        r.lock().unwrap().push(batch.sequence);
        (204, Vec::new())
    }))
    .await;
    let (buffer, recorder) = uploading_to(url);
    let addr = buffer.start();
    // Waits for `n` batches received, flushing meanwhile as the interval would (a flush while
    // an upload is in flight does nothing; the next one retries).
    let wait_for = |n: usize| {
        let (received, addr) = (received.clone(), addr.clone());
        async move {
            for _ in 0..200 {
                if received.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
                addr.send(Flush).await.unwrap();
            }
            panic!("{n} batches not received: {:?}", received.lock().unwrap());
        }
    };
    for i in 0..2 {
        recorder.record(record("a", 200, 60 * i, 1));
        addr.send(Flush).await.unwrap();
    }
    wait_for(1).await;
    recorder.record(record("a", 200, 120, 1));
    addr.send(Flush).await.unwrap();
    wait_for(2).await;
    assert_eq!(*received.lock().unwrap(), vec![2, 3]);
    assert_eq!(
        attempts.lock().unwrap().iter().filter(|s| **s == 1).count(),
        1,
        "the poison batch is sent once"
    );
    let status = addr.send(GetTelemetryStatus).await.unwrap();
    assert_eq!(
        (
            status.uploaded,
            status.refused,
            status.dropped,
            status.buffered
        ),
        (2, 1, 1, 0)
    );

    // A refusal that is not about the batch keeps it.
    route_broken.store(true, Ordering::SeqCst);
    recorder.record(record("a", 200, 180, 1));
    addr.send(Flush).await.unwrap();
    addr.send(Flush).await.unwrap();
    for _ in 0..200 {
        if attempts.lock().unwrap().iter().filter(|s| **s == 4).count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        addr.send(Flush).await.unwrap();
    }
    let status = addr.send(GetTelemetryStatus).await.unwrap();
    assert_eq!(
        (status.refused, status.buffered),
        (1, 1),
        "kept: {status:?}"
    );
    route_broken.store(false, Ordering::SeqCst);
    addr.send(Flush).await.unwrap();
    wait_for(3).await;
    assert_eq!(*received.lock().unwrap(), vec![2, 3, 4]);
}
