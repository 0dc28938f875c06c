//! The sliding window's promises (`shared_state::window` module docs), checked on arbitrary
//! traffic: never more than `limit` admitted in any interval of length `W`, and a unit of
//! capacity comes back at most one slot (`W / SLOTS`) later than in an exact sliding log.

use std::time::Duration;

use outpost_actors::shared_state::window::{SlidingCounter, SlidingOutcome, slot_geometry};
use proptest::prelude::*;

/// One request: how long after the previous one it arrives (ms), and its weight.
fn traffic() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0u64..2_000, 1u64..4), 1..400)
}

/// Arbitrary traffic on one counter.
#[derive(Debug, Clone)]
struct Case {
    window_ms: u64,
    limit: u64,
    start: u64,
    hits: Vec<(u64, u64)>,
}

fn case() -> impl Strategy<Value = Case> {
    (100u64..20_000, 1u64..50, 0u64..1_000_000_000, traffic()).prop_map(
        |(window_ms, limit, start, hits)| Case {
            window_ms,
            limit,
            start,
            hits,
        },
    )
}

impl Case {
    fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// Plays the traffic (weights capped at the limit); `each` sees every hit's time, weight
    /// and outcome, and the counter after it. Returns the counter and the last hit's time.
    fn replay(
        &self,
        mut each: impl FnMut(u64, u64, &SlidingOutcome, &SlidingCounter),
    ) -> (SlidingCounter, u64) {
        let mut counter = SlidingCounter::default();
        let mut now = self.start;
        for &(gap, weight) in &self.hits {
            now += gap;
            let weight = weight.min(self.limit);
            let outcome = counter.hit(now, self.window(), self.limit, weight);
            each(now, weight, &outcome, &counter);
        }
        (counter, now)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_interval_of_the_window_admits_more_than_the_limit(c in case()) {
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        c.replay(|now, weight, outcome, _| {
            if outcome.allowed {
                admitted.push((now, weight));
            }
        });
        // Every interval [t, t + W) that starts at an admission holds at most `limit` units
        // (an interval's maximum is always reached at one that starts at an admission).
        for (i, (t, _)) in admitted.iter().enumerate() {
            let inside: u64 = admitted[i..]
                .iter()
                .take_while(|(u, _)| *u < t + c.window_ms)
                .map(|(_, w)| w)
                .sum();
            prop_assert!(inside <= c.limit, "{inside} units in [{t}, {t}+{})", c.window_ms);
        }
    }

    #[test]
    fn capacity_comes_back_within_one_slot_of_the_window(c in case(), weight in 1u64..4) {
        let (slot_ms, slots) = slot_geometry(c.window());
        let (mut counter, now) = c.replay(|_, _, _, _| {});
        // Quiet for the whole effective window (`slot_ms · slots`, at most W + one slot):
        // everything has expired, so any hit the limit allows is admitted.
        prop_assert!(slot_ms * slots <= c.window_ms + slot_ms);
        let later = now + slot_ms * (slots + 1);
        let weight = weight.min(c.limit);
        let outcome = counter.hit(later, c.window(), c.limit, weight);
        prop_assert!(outcome.allowed, "refused after {} ms of quiet: {outcome:?}", later - now);
        prop_assert_eq!(outcome.remaining, c.limit - weight);
    }

    #[test]
    fn a_refusal_says_when_to_come_back(c in case()) {
        let mut late = Vec::new();
        c.replay(|now, weight, outcome, counter| {
            if !outcome.allowed {
                // Retrying exactly when told succeeds (on a copy: the real traffic goes on).
                let mut probe = counter.clone();
                let retried = probe.hit(now + outcome.retry_after_ms, c.window(), c.limit, weight);
                if !retried.allowed {
                    late.push(outcome.retry_after_ms);
                }
            }
        });
        prop_assert!(late.is_empty(), "told {late:?} ms, still refused");
    }
}
