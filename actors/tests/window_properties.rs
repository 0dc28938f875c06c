//! The sliding window's promises (`shared_state::window` module docs), checked on arbitrary
//! traffic: never more than `limit` admitted in any interval of length `W`, and a unit of
//! capacity comes back at most one slot (`W / SLOTS`) later than in an exact sliding log.

use std::time::Duration;

use outpost_actors::shared_state::window::{SlidingCounter, slot_geometry};
use proptest::prelude::*;

/// One request: how long after the previous one it arrives (ms), and its weight.
fn traffic() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0u64..2_000, 1u64..4), 1..400)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_interval_of_the_window_admits_more_than_the_limit(
        window_ms in 100u64..20_000,
        limit in 1u64..50,
        start in 0u64..1_000_000_000,
        hits in traffic(),
    ) {
        let window = Duration::from_millis(window_ms);
        let mut counter = SlidingCounter::default();
        let mut now = start;
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (gap, weight) in hits {
            now += gap;
            if counter.hit(now, window, limit, weight).allowed {
                admitted.push((now, weight));
            }
        }
        // Every interval [t, t + W) that starts at an admission holds at most `limit` units
        // (an interval's maximum is always reached at one that starts at an admission).
        for (i, (t, _)) in admitted.iter().enumerate() {
            let inside: u64 = admitted[i..]
                .iter()
                .take_while(|(u, _)| *u < t + window_ms)
                .map(|(_, w)| w)
                .sum();
            prop_assert!(inside <= limit, "{inside} units in [{t}, {t}+{window_ms})");
        }
    }

    #[test]
    fn capacity_comes_back_within_one_slot_of_the_window(
        window_ms in 100u64..20_000,
        limit in 1u64..50,
        start in 0u64..1_000_000_000,
        hits in traffic(),
        weight in 1u64..4,
    ) {
        let window = Duration::from_millis(window_ms);
        let (slot_ms, slots) = slot_geometry(window);
        let mut counter = SlidingCounter::default();
        let mut now = start;
        for (gap, w) in hits {
            now += gap;
            counter.hit(now, window, limit, w);
        }
        // Quiet for the whole effective window (`slot_ms · slots`, at most W + one slot):
        // everything has expired, so any hit the limit allows is admitted.
        prop_assert!(slot_ms * slots <= window_ms + slot_ms);
        let later = now + slot_ms * (slots + 1);
        let outcome = counter.hit(later, window, limit, weight.min(limit));
        prop_assert!(outcome.allowed, "refused after {} ms of quiet: {outcome:?}", later - now);
        prop_assert_eq!(outcome.remaining, limit - weight.min(limit));
    }

    #[test]
    fn a_refusal_says_when_to_come_back(
        window_ms in 100u64..20_000,
        limit in 1u64..50,
        start in 0u64..1_000_000_000,
        hits in traffic(),
    ) {
        let window = Duration::from_millis(window_ms);
        let mut counter = SlidingCounter::default();
        let mut now = start;
        for (gap, weight) in hits {
            now += gap;
            let weight = weight.min(limit);
            let outcome = counter.hit(now, window, limit, weight);
            if !outcome.allowed {
                // Retrying exactly when told succeeds (on a copy: the real traffic goes on).
                let mut probe = counter.clone();
                let retried = probe.hit(now + outcome.retry_after_ms, window, limit, weight);
                prop_assert!(retried.allowed, "told {} ms, still refused", outcome.retry_after_ms);
            }
        }
    }
}
