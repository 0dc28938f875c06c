//! The counting rules, pure: a sliding window made of slots, and period-aligned quota windows.
//!
//! The in-process store runs this code; the Redis store runs the same rules in Lua
//! (`scripts/*.lua`), so both stores give the same answers. Times are milliseconds since the
//! Unix epoch (Redis `TIME` for the Redis store, the system clock for the in-process store).
//!
//! # Sliding window
//! A window of `W` ms is cut into `n = SLOTS` slots of `g = ceil(W / n)` ms; a hit is recorded
//! in the slot of its arrival time, `floor(now / g)`. A slot `b` is counted while
//! `b >= cur - n`, i.e. until `(b + 1 + n) · g`. Every hit therefore stays counted for at
//! least `W` and at most `W + g`:
//! - never more than `limit` admitted in any interval of length `W` (no overshoot at all);
//! - a unit of capacity comes back at most `g = W / SLOTS` later than in an exact sliding log.

use std::time::Duration;

/// Slots per sliding window: the granularity of the window is `W / SLOTS` (3 s for one minute).
pub const SLOTS: u64 = 20;

/// Slot length and slot count for a window; the effective window is `slot_ms · slots >= W`.
pub fn slot_geometry(window: Duration) -> (u64, u64) {
    let window_ms = (window.as_millis() as u64).max(1);
    let slot_ms = window_ms.div_ceil(SLOTS).max(1);
    (slot_ms, window_ms.div_ceil(slot_ms))
}

/// Outcome of one sliding-window check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingOutcome {
    pub allowed: bool,
    /// Capacity left after this hit (after the refusal: left for a hit of one).
    pub remaining: u64,
    /// When refused: until enough capacity frees up for this increment, ms.
    pub retry_after_ms: u64,
    /// Slot the hit was recorded in (for a refund).
    pub slot: i64,
}

/// The slots of one counter, oldest first, `(slot index, count)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlidingCounter {
    slots: Vec<(i64, u64)>,
}

impl SlidingCounter {
    /// Checks `increment` against `limit` and records it when admitted.
    pub fn hit(
        &mut self,
        now_ms: u64,
        window: Duration,
        limit: u64,
        increment: u64,
    ) -> SlidingOutcome {
        let (slot_ms, n) = slot_geometry(window);
        let cur = (now_ms / slot_ms) as i64;
        self.prune(cur - n as i64);
        let used: u64 = self.slots.iter().map(|(_, c)| c).sum();
        if used.saturating_add(increment) <= limit {
            match self.slots.last_mut() {
                Some((b, c)) if *b == cur => *c += increment,
                _ => self.slots.push((cur, increment)),
            }
            return SlidingOutcome {
                allowed: true,
                remaining: limit - used - increment,
                retry_after_ms: 0,
                slot: cur,
            };
        }
        // Refused: the hit fits once the oldest slots holding `need` units have expired.
        let mut need = (used + increment).saturating_sub(limit);
        let mut retry_after_ms = n * slot_ms;
        for (b, c) in &self.slots {
            need = need.saturating_sub(*c);
            if need == 0 {
                let frees_at = (*b + 1 + n as i64) as u64 * slot_ms;
                retry_after_ms = frees_at.saturating_sub(now_ms).max(1);
                break;
            }
        }
        SlidingOutcome {
            allowed: false,
            remaining: limit.saturating_sub(used),
            retry_after_ms,
            slot: cur,
        }
    }

    /// Takes back `amount` recorded in `slot` (no-op once that slot has expired).
    pub fn refund(&mut self, slot: i64, amount: u64) {
        if let Some(i) = self.slots.iter().position(|(b, _)| *b == slot) {
            let c = &mut self.slots[i].1;
            *c = c.saturating_sub(amount);
            if *c == 0 {
                self.slots.remove(i);
            }
        }
    }

    /// True when nothing is counted any more at `now_ms` (the entry can be dropped).
    pub fn is_idle(&self, now_ms: u64, window: Duration) -> bool {
        let (slot_ms, n) = slot_geometry(window);
        let oldest = (now_ms / slot_ms) as i64 - n as i64;
        self.slots.iter().all(|(b, _)| *b < oldest)
    }

    fn prune(&mut self, oldest: i64) {
        self.slots.retain(|(b, _)| *b >= oldest);
    }
}

/// The fixed quota window holding `now_secs`: `[start, start + period)`, aligned to multiples
/// of the period since the Unix epoch (so every node agrees without coordination).
pub fn quota_window(now_secs: u64, period: Duration) -> (u64, u64) {
    let p = period.as_secs().max(1);
    let start = now_secs - now_secs % p;
    (start, start + p)
}

/// Usage counted in one quota window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaCell {
    pub window_start: u64,
    pub calls: u64,
    pub bytes: u64,
}

/// Limits of a quota; `None` is "not limited".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct QuotaLimits {
    pub calls: Option<u64>,
    pub bytes: Option<u64>,
}

impl QuotaLimits {
    /// This node's share when it counts alone: `ceil(limit / nodes)`.
    pub fn share(self, nodes: u64) -> QuotaLimits {
        let nodes = nodes.max(1);
        QuotaLimits {
            calls: self.calls.map(|c| c.div_ceil(nodes)),
            bytes: self.bytes.map(|b| b.div_ceil(nodes)),
        }
    }
}

/// A change to a quota counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct QuotaDelta {
    /// Calls to add (negative: a refund).
    pub calls: i64,
    pub bytes: u64,
    /// Check the limits before adding (admission); otherwise always add (post-response
    /// bandwidth, refunds).
    pub enforce: bool,
}

/// Result of a quota operation, as both stores report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    pub allowed: bool,
    pub calls: u64,
    pub bytes: u64,
    /// Until the window ends.
    pub resets_in: Duration,
}

impl QuotaCell {
    /// Applies `delta` in the window holding `now_secs`, starting a new window when needed.
    pub fn apply(
        &mut self,
        now_secs: u64,
        period: Duration,
        limits: QuotaLimits,
        delta: QuotaDelta,
    ) -> QuotaState {
        let (start, end) = quota_window(now_secs, period);
        if self.window_start != start {
            *self = QuotaCell {
                window_start: start,
                ..QuotaCell::default()
            };
        }
        let calls_after = self.calls.saturating_add_signed(delta.calls);
        let allowed = !delta.enforce
            || (limits.calls.is_none_or(|l| calls_after <= l)
                && limits.bytes.is_none_or(|l| self.bytes < l));
        if allowed {
            self.calls = calls_after;
            self.bytes = self.bytes.saturating_add(delta.bytes);
        }
        QuotaState {
            allowed,
            calls: self.calls,
            bytes: self.bytes,
            resets_in: Duration::from_secs(end - now_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn geometry_covers_the_window() {
        assert_eq!(slot_geometry(MIN), (3000, 20));
        assert_eq!(slot_geometry(Duration::from_secs(1)), (50, 20));
        assert_eq!(slot_geometry(Duration::from_millis(7)), (1, 7));
        let (g, n) = slot_geometry(Duration::from_millis(1001));
        assert!(g * n >= 1001 && g * (n - 1) < 1001);
    }

    #[test]
    fn admits_exactly_the_limit_then_refuses() {
        let mut c = SlidingCounter::default();
        let t0 = 1_700_000_000_000;
        let admitted = (0..300)
            .filter(|i| c.hit(t0 + i * 10, MIN, 100, 1).allowed)
            .count();
        assert_eq!(admitted, 100);
        let refused = c.hit(t0 + 3000, MIN, 100, 1);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        // All hits sit in the first slot or two: capacity returns one window (+ <= 1 slot) later.
        assert!(refused.retry_after_ms <= 60_000 + 3000, "{refused:?}");
        assert!(
            refused.retry_after_ms >= 60_000 - 3000 - 3000,
            "{refused:?}"
        );
    }

    #[test]
    fn never_more_than_the_limit_in_any_window() {
        // A steady stream, one hit every 100 ms for 5 minutes, limit 10/min.
        let mut c = SlidingCounter::default();
        let times: Vec<u64> = (0..3000).map(|i| 1_000_000_000 + i * 100).collect();
        let admitted: Vec<u64> = times
            .iter()
            .copied()
            .filter(|t| c.hit(*t, MIN, 10, 1).allowed)
            .collect();
        for (i, t) in admitted.iter().enumerate() {
            let in_window = admitted[i..]
                .iter()
                .take_while(|u| **u < t + 60_000)
                .count();
            assert!(in_window <= 10, "window starting at {t} holds {in_window}");
        }
        // And close to the ideal 10 per minute (a slot is 3 s: at most one slot late each).
        assert!(admitted.len() >= 5 * 10 * 60 / 63 - 1, "{}", admitted.len());
    }

    #[test]
    fn slides_rather_than_resets() {
        let w = Duration::from_secs(1); // slots of 50 ms
        let mut c = SlidingCounter::default();
        let t0 = 10_000_000; // slot aligned
        assert!(c.hit(t0, w, 3, 1).allowed);
        assert!(c.hit(t0 + 10, w, 3, 1).allowed);
        assert!(c.hit(t0 + 500, w, 3, 1).allowed);
        let r = c.hit(t0 + 600, w, 3, 1);
        assert!(!r.allowed);
        assert_eq!(r.retry_after_ms, t0 + 1050 - (t0 + 600));
        // The first two expire; the one at +500 still counts, so only two fit.
        assert!(c.hit(t0 + 1050, w, 3, 1).allowed);
        assert!(c.hit(t0 + 1060, w, 3, 1).allowed);
        assert!(!c.hit(t0 + 1070, w, 3, 1).allowed);
        assert!(c.hit(t0 + 1550, w, 3, 1).allowed);
    }

    #[test]
    fn increments_and_refunds() {
        let mut c = SlidingCounter::default();
        let o = c.hit(0, MIN, 10, 4);
        assert!(o.allowed && o.remaining == 6);
        assert!(!c.hit(1, MIN, 10, 7).allowed);
        c.refund(o.slot, 4);
        assert!(c.hit(2, MIN, 10, 10).allowed);
        assert!(
            !c.hit(3, MIN, 10, 11).allowed,
            "an increment above the limit never fits"
        );
        assert!(c.is_idle(2 * 60_000 + 3000, MIN));
    }

    #[test]
    fn quota_windows_are_aligned_and_reset() {
        let hour = Duration::from_secs(3600);
        assert_eq!(quota_window(7_250, hour), (7_200, 10_800));
        let limits = QuotaLimits {
            calls: Some(2),
            bytes: Some(1000),
        };
        let call = QuotaDelta {
            calls: 1,
            bytes: 0,
            enforce: true,
        };
        let mut q = QuotaCell::default();
        assert!(q.apply(7_250, hour, limits, call).allowed);
        let s = q.apply(7_251, hour, limits, call);
        assert!(s.allowed && s.calls == 2 && s.resets_in == Duration::from_secs(10_800 - 7_251));
        assert!(!q.apply(7_252, hour, limits, call).allowed);
        // Next window.
        assert!(q.apply(10_800, hour, limits, call).allowed);
        // Bandwidth: admitted while under, refused once reached.
        let bytes = QuotaDelta {
            calls: 0,
            bytes: 1000,
            enforce: false,
        };
        q.apply(10_801, hour, limits, bytes);
        assert!(!q.apply(10_802, hour, limits, call).allowed);
        assert_eq!(limits.share(3).calls, Some(1));
        assert_eq!(limits.share(3).bytes, Some(334));
    }
}
