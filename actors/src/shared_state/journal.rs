//! What this node counted on its own while Redis was unreachable (the `local` outage mode), so
//! that the shared counters include it once Redis is back.
//!
//! Without it, the calls a node admitted during an outage exist only in its in-process store:
//! when Redis returns, the site's counters resume from what Redis kept (nothing at all after a
//! restart without persistence), and the site can admit a whole limit again on top of what it
//! admitted during the outage — for a monthly quota, an outage's calls would never count. With
//! it, each node adds its outage counts to the shared counters when the probe finds Redis
//! again, as long as they still count:
//! - a rate-limit counter: the units admitted locally, if its last local hit is still inside
//!   the window. They are added to the *current* slot, so they stay in the window up to the
//!   outage's length longer than they would have (conservative: the site admits less, never
//!   more, than the limit for that while);
//! - a quota: the calls and bytes of the window that is still current (a window that ended
//!   during the outage is over anyway).
//!
//! Pure bookkeeping here; `SharedState` records and replays (see `mod.rs`).

use std::time::Duration;

use dashmap::DashMap;

use super::window::{QuotaDelta, QuotaLimits, quota_window};

#[derive(Debug, Default)]
pub struct Journal {
    rates: DashMap<String, RateEntry>,
    quotas: DashMap<String, QuotaEntry>,
}

#[derive(Debug, Clone, Copy)]
struct RateEntry {
    window: Duration,
    units: u64,
    last_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct QuotaEntry {
    period: Duration,
    limits: QuotaLimits,
    window_start: u64,
    calls: i64,
    bytes: u64,
}

/// One counter's outage counts, to add to its shared counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    Rate {
        key: String,
        window: Duration,
        units: u64,
        last_ms: u64,
    },
    Quota {
        key: String,
        period: Duration,
        limits: QuotaLimits,
        /// The calls and bytes to add, never enforced (`enforce: false`).
        delta: QuotaDelta,
        window_start: u64,
    },
}

impl Replay {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Replay::Rate { .. } => "rate-limit",
            Replay::Quota { .. } => "quota",
        }
    }
}

impl Journal {
    /// `units` admitted locally on `key` at `now_ms`.
    pub fn rate(&self, key: &str, window: Duration, units: u64, now_ms: u64) {
        let mut e = self.rates.entry(key.to_owned()).or_insert(RateEntry {
            window,
            units: 0,
            last_ms: now_ms,
        });
        if e.window != window {
            // The policy changed its window: the old units belong to another counter.
            *e = RateEntry {
                window,
                units: 0,
                last_ms: now_ms,
            };
        }
        e.units += units;
        e.last_ms = e.last_ms.max(now_ms);
    }

    /// A local admission taken back (`increment-condition`). Only from units not replayed yet:
    /// what was already added to the shared counter stays (it expires with its window).
    pub fn rate_refund(&self, key: &str, units: u64) {
        if let Some(mut e) = self.rates.get_mut(key) {
            e.units = e.units.saturating_sub(units);
        }
    }

    /// A quota change applied locally at `now_secs` (an admission, or a post-response record:
    /// bandwidth, refund).
    pub fn quota(
        &self,
        key: &str,
        period: Duration,
        limits: QuotaLimits,
        delta: QuotaDelta,
        now_secs: u64,
    ) {
        let window_start = quota_window(now_secs, period).0;
        let fresh = QuotaEntry {
            period,
            limits,
            window_start,
            calls: 0,
            bytes: 0,
        };
        let mut e = self.quotas.entry(key.to_owned()).or_insert(fresh);
        if e.period != period || e.window_start != window_start {
            *e = fresh;
        }
        // The limits the shared counter checks against: the policy's (the entry's are only
        // passed on to the script, which does not enforce them when replaying).
        e.limits = limits;
        e.calls += delta.calls;
        e.bytes += delta.bytes;
    }

    /// Takes every entry out; returns those that still count at `now_ms`.
    pub fn drain(&self, now_ms: u64) -> Vec<Replay> {
        let mut out = Vec::new();
        let keys: Vec<String> = self.rates.iter().map(|e| e.key().clone()).collect();
        for key in keys {
            if let Some((key, e)) = self.rates.remove(&key)
                && e.units > 0
                && now_ms < e.last_ms.saturating_add(e.window.as_millis() as u64)
            {
                out.push(Replay::Rate {
                    key,
                    window: e.window,
                    units: e.units,
                    last_ms: e.last_ms,
                });
            }
        }
        let now_secs = now_ms / 1000;
        let keys: Vec<String> = self.quotas.iter().map(|e| e.key().clone()).collect();
        for key in keys {
            if let Some((key, e)) = self.quotas.remove(&key)
                && (e.calls != 0 || e.bytes != 0)
                && quota_window(now_secs, e.period).0 == e.window_start
            {
                out.push(Replay::Quota {
                    key,
                    period: e.period,
                    limits: e.limits,
                    delta: QuotaDelta {
                        calls: e.calls,
                        bytes: e.bytes,
                        enforce: false,
                    },
                    window_start: e.window_start,
                });
            }
        }
        out
    }

    /// Puts back an entry whose replay failed, as it was, for the next reconnect.
    pub fn restore(&self, entry: Replay) {
        match entry {
            Replay::Rate {
                key,
                window,
                units,
                last_ms,
            } => self.rate(&key, window, units, last_ms),
            Replay::Quota {
                key,
                period,
                limits,
                delta,
                window_start,
            } => self.quota(&key, period, limits, delta, window_start),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rates.is_empty() && self.quotas.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    const LIMITS: QuotaLimits = QuotaLimits {
        calls: Some(100),
        bytes: None,
    };

    fn delta(calls: i64, bytes: u64) -> QuotaDelta {
        QuotaDelta {
            calls,
            bytes,
            enforce: false,
        }
    }

    #[test]
    fn rate_units_add_up_and_refunds_take_back() {
        let j = Journal::default();
        j.rate("a", MIN, 1, 1_000);
        j.rate("a", MIN, 3, 2_000);
        j.rate_refund("a", 1);
        j.rate_refund("never-hit", 5);
        assert_eq!(
            j.drain(30_000),
            vec![Replay::Rate {
                key: "a".into(),
                window: MIN,
                units: 3,
                last_ms: 2_000
            }]
        );
        assert!(j.is_empty(), "drained");
        assert!(j.drain(30_000).is_empty());
    }

    #[test]
    fn rate_units_out_of_the_window_are_dropped() {
        let j = Journal::default();
        j.rate("old", MIN, 5, 1_000);
        j.rate("recent", MIN, 2, 1_000);
        j.rate("recent", MIN, 2, 50_000);
        let out = j.drain(61_000);
        assert_eq!(
            out,
            vec![Replay::Rate {
                key: "recent".into(),
                window: MIN,
                units: 4,
                last_ms: 50_000
            }]
        );
        assert!(j.is_empty());
    }

    #[test]
    fn a_new_window_length_starts_the_counter_over() {
        let j = Journal::default();
        j.rate("a", MIN, 5, 1_000);
        j.rate("a", HOUR, 1, 2_000);
        assert_eq!(
            j.drain(3_000),
            vec![Replay::Rate {
                key: "a".into(),
                window: HOUR,
                units: 1,
                last_ms: 2_000
            }]
        );
    }

    #[test]
    fn a_failed_replay_is_restored_as_it_was() {
        let j = Journal::default();
        j.rate("r", MIN, 2, 1_000);
        j.quota("q", HOUR, LIMITS, delta(3, 10), 3_700);
        let first = j.drain(2_000);
        for entry in first.clone() {
            j.restore(entry);
        }
        let mut again = j.drain(2_000);
        again.sort_by_key(|r| r.kind());
        let mut first = first;
        first.sort_by_key(|r| r.kind());
        assert_eq!(again, first);
        assert!(j.is_empty());
        // Restored with its own last hit: it still leaves the window on time.
        let rate = first
            .into_iter()
            .find(|r| r.kind() == "rate-limit")
            .unwrap();
        j.restore(rate);
        assert!(j.drain(61_001).is_empty());
    }

    #[test]
    fn quotas_keep_the_current_window_only() {
        let j = Journal::default();
        // Hour windows: [3600, 7200) then [7200, 10800).
        j.quota("q", HOUR, LIMITS, delta(1, 0), 3_700);
        j.quota("q", HOUR, LIMITS, delta(1, 500), 3_800);
        j.quota("q", HOUR, LIMITS, delta(-1, 0), 3_900);
        assert_eq!(
            j.drain(4_000_000),
            vec![Replay::Quota {
                key: "q".into(),
                period: HOUR,
                limits: LIMITS,
                delta: delta(1, 500),
                window_start: 3_600
            }]
        );
        // In the next window, what was journaled in the previous one no longer counts.
        j.quota("q", HOUR, LIMITS, delta(1, 0), 3_700);
        assert!(j.drain(7_300_000).is_empty());
        // A window change while journaling restarts the entry.
        j.quota("q", HOUR, LIMITS, delta(2, 0), 7_100);
        j.quota("q", HOUR, LIMITS, delta(1, 0), 7_300);
        assert_eq!(
            j.drain(7_400_000),
            vec![Replay::Quota {
                key: "q".into(),
                period: HOUR,
                limits: LIMITS,
                delta: delta(1, 0),
                window_start: 7_200
            }]
        );
    }
}
