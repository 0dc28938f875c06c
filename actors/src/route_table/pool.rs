//! A backend pool, compiled: its members, how one is picked, and each member's health.
//!
//! The pool is part of the route-table snapshot, so the request path reads it with one atomic
//! load of the table like everything else; what changes per request (in-flight counts, failure
//! streaks, ejections, breaker state) lives in atomics of [`MemberState`], shared by every
//! worker. A member's state is keyed by (backend, member URL) in a [`MemberRegistry`] that the
//! compiler consults, so a configuration change that keeps a member keeps its health too.
//!
//! Three things can take a member out of rotation, each a small state machine over atomics
//! with the time passed in (so the unit tests drive them without a runtime or a clock):
//! - passive health ([`MemberState::report`]): `consecutive-failures` failures in a row eject it
//!   for `ejection-ms`, doubled per ejection that follows without a success between, capped;
//! - active health checks (run by the gateway, one task per pool): `unhealthy-threshold` failed
//!   checks in a row take it out, `healthy-threshold` good ones bring it back;
//! - its circuit breaker ([`Breaker`]): open after an error rate over a window, one probe after
//!   `open-ms` (half-open), closed by the probe's success.
//!
//! When every member is out, the pool uses them anyway (panic mode): a pool that answers
//! something beats one that answers nothing, and the failures keep the health state honest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use outpost_model::resources::{CircuitBreaker, HealthCheck, LoadBalancing, PassiveHealth};

use super::backend_url::BackendUrl;

/// Milliseconds since the first call in this process: the clock every member state uses.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A compiled pool.
#[derive(Debug)]
pub struct Pool {
    pub backend: Arc<str>,
    pub members: Box<[Member]>,
    pub balancing: LoadBalancing,
    /// Smooth weighted round-robin order of member indices, one period.
    schedule: Box<[u8]>,
    cursor: AtomicUsize,
    pub passive: PassiveRule,
    pub breaker: Option<BreakerRule>,
    pub health_check: Option<HealthCheckRule>,
}

/// One member, as configured, with its shared state.
#[derive(Debug)]
pub struct Member {
    pub url: BackendUrl,
    /// The member's base URL as written (after named values), for metrics and logs.
    pub label: Arc<str>,
    pub weight: u32,
    pub state: Arc<MemberState>,
}

#[derive(Debug, Clone)]
pub struct PassiveRule {
    /// 0: off.
    pub consecutive_failures: u32,
    pub ejection: Duration,
    pub max_ejection: Duration,
    pub failure_statuses: Box<[u16]>,
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerRule {
    pub error_rate_percent: u32,
    pub window_ms: u64,
    pub min_requests: u32,
    pub open_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheckRule {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl PassiveRule {
    pub fn of(h: &PassiveHealth) -> Self {
        Self {
            consecutive_failures: h.consecutive_failures,
            ejection: Duration::from_millis(h.ejection_ms),
            // A cap below the first ejection time means the time never grows.
            max_ejection: Duration::from_millis(h.max_ejection_ms.max(h.ejection_ms)),
            failure_statuses: h.failure_statuses.clone().into(),
        }
    }
}

impl BreakerRule {
    pub fn of(c: &CircuitBreaker) -> Self {
        Self {
            error_rate_percent: c.error_rate_percent,
            window_ms: c.window_ms,
            min_requests: c.min_requests,
            open_ms: c.open_ms,
        }
    }
}

impl HealthCheckRule {
    pub fn of(c: &HealthCheck) -> Self {
        Self {
            path: c.path.clone(),
            interval: Duration::from_millis(c.interval_ms),
            // A check never outlives the next one.
            timeout: Duration::from_millis(c.timeout_ms.min(c.interval_ms)),
            healthy_threshold: c.healthy_threshold,
            unhealthy_threshold: c.unhealthy_threshold,
        }
    }
}

/// How an attempt on a member went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A connection failure, a timeout or a failure status.
    Failure,
}

/// What changed in a member's state because of a report (for logs and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transitions {
    /// Ejected, for this long.
    pub ejected: Option<Duration>,
    pub breaker_opened: bool,
    pub breaker_closed: bool,
}

impl Pool {
    /// A pool of `members` ((URL, label, weight, state)); the rules as configured.
    pub fn new(
        backend: Arc<str>,
        members: Vec<Member>,
        balancing: LoadBalancing,
        passive: PassiveRule,
        breaker: Option<BreakerRule>,
        health_check: Option<HealthCheckRule>,
    ) -> Self {
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        Self {
            backend,
            schedule: smooth_schedule(&weights).into(),
            members: members.into(),
            balancing,
            cursor: AtomicUsize::new(0),
            passive,
            breaker,
            health_check,
        }
    }

    /// Whether a backend status counts as a failure of the member.
    pub fn failed_status(&self, status: u16) -> bool {
        self.passive.failure_statuses.contains(&status)
    }

    /// Every member, as a set of bits.
    fn all(&self) -> u64 {
        if self.members.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << self.members.len()) - 1
        }
    }

    /// Whether some member is not in `tried`.
    pub fn has_untried(&self, tried: u64) -> bool {
        self.all() & !tried != 0
    }

    /// Picks a member not in `tried` (a bit per member index), healthy if any is; `None` only
    /// when every member was tried. Takes the half-open probe of a breaker it picks.
    pub fn pick(&self, tried: u64, now: u64) -> Option<usize> {
        let untried = self.all() & !tried;
        if untried == 0 {
            return None;
        }
        let mut usable = 0u64;
        for (i, m) in self.members.iter().enumerate() {
            if untried & (1 << i) != 0 && m.state.usable(self.breaker.as_ref(), now) {
                usable |= 1 << i;
            }
        }
        // A breaker may refuse at admission (another request took its probe): try the others.
        while usable != 0 {
            let i = self.choose(usable);
            let admitted = match &self.breaker {
                Some(rule) => self.members[i].state.breaker.admit(rule, now),
                None => true,
            };
            if admitted {
                return Some(i);
            }
            usable &= !(1 << i);
        }
        // Panic mode: every untried member is out; use them anyway.
        Some(self.choose(untried))
    }

    /// The balancer's choice among the members in `set` (not empty).
    fn choose(&self, set: u64) -> usize {
        debug_assert!(set != 0);
        if set.count_ones() == 1 {
            return set.trailing_zeros() as usize;
        }
        match self.balancing {
            LoadBalancing::RoundRobin => {
                // A member out of `set` gives its turn to the next in the shared order (not to
                // its neighbour), so the others keep their shares relative to one another.
                let len = self.schedule.len();
                (0..len)
                    .map(|_| {
                        self.schedule[self.cursor.fetch_add(1, Ordering::Relaxed) % len] as usize
                    })
                    .find(|&i| set & (1 << i) != 0)
                    .unwrap_or(set.trailing_zeros() as usize)
            }
            LoadBalancing::LeastRequest => {
                // Two members drawn in proportion to their weights; the one with fewer requests
                // in flight wins, the first drawn on a tie (so an idle pool shares by weight).
                let a = self.draw(set);
                let b = self.draw(set & !(1 << a));
                if self.members[b].state.in_flight() < self.members[a].state.in_flight() {
                    b
                } else {
                    a
                }
            }
        }
    }

    /// A member of `set` (not empty) at random, in proportion to the weights.
    fn draw(&self, set: u64) -> usize {
        let members = || (0..self.members.len()).filter(move |i| set & (1 << i) != 0);
        let total: u64 = members().map(|i| u64::from(self.members[i].weight)).sum();
        let mut r = rand::random_range(0..total.max(1));
        for i in members() {
            let w = u64::from(self.members[i].weight);
            if r < w {
                return i;
            }
            r -= w;
        }
        set.trailing_zeros() as usize
    }

    /// Starts a request on member `i`: counted in flight until the lease is dropped.
    pub fn lease(self: &Arc<Self>, i: usize) -> Lease {
        self.members[i]
            .state
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Lease {
            pool: self.clone(),
            index: i,
        }
    }

    /// Records how an attempt on member `i` went, with counters for what it changed.
    pub fn report(&self, i: usize, outcome: Outcome, now: u64) -> Transitions {
        let m = &self.members[i];
        let t = m
            .state
            .report(&self.passive, self.breaker.as_ref(), outcome, now);
        if let Some(d) = t.ejected {
            metrics::counter!("outpost_backend_member_ejections_total",
                "backend" => self.backend.to_string(), "member" => m.label.to_string())
            .increment(1);
            tracing::warn!(backend = %self.backend, member = %m.label,
                ejected_ms = d.as_millis() as u64, "pool member ejected after consecutive failures");
        }
        if t.breaker_opened {
            metrics::counter!("outpost_backend_member_breaker_opened_total",
                "backend" => self.backend.to_string(), "member" => m.label.to_string())
            .increment(1);
            tracing::warn!(backend = %self.backend, member = %m.label, "circuit breaker opened");
        }
        if t.breaker_closed {
            tracing::info!(backend = %self.backend, member = %m.label, "circuit breaker closed");
        }
        t
    }

    /// Each member's label and state word (what the instances view shows): `healthy`,
    /// `ejected`, `failing-checks`, `breaker-open` or `breaker-half-open`.
    pub fn member_states(&self, now: u64) -> impl Iterator<Item = (&Member, &'static str)> {
        self.members.iter().map(move |m| {
            let s = &m.state;
            let word = if s.ejected(now) {
                "ejected"
            } else if s.check_down() {
                "failing-checks"
            } else {
                match (self.breaker.as_ref(), s.breaker.state()) {
                    (Some(_), BreakerState::Open) => "breaker-open",
                    (Some(_), BreakerState::HalfOpen) => "breaker-half-open",
                    _ => "healthy",
                }
            };
            (m, word)
        })
    }

    /// Publishes each member's state as gauges (called when `/metrics` is scraped, so the
    /// time-based returns from ejection show without anyone reporting).
    pub fn publish_gauges(&self, now: u64) {
        for m in &self.members {
            let labels = [
                ("backend", self.backend.to_string()),
                ("member", m.label.to_string()),
            ];
            let healthy = m.state.usable(self.breaker.as_ref(), now);
            metrics::gauge!("outpost_backend_member_healthy", &labels).set(f64::from(healthy));
            metrics::gauge!("outpost_backend_member_in_flight", &labels)
                .set(f64::from(m.state.in_flight()));
            metrics::gauge!("outpost_backend_member_breaker_state", &labels)
                .set(f64::from(m.state.breaker.state() as u8));
        }
    }
}

/// One period of smooth weighted round robin (nginx's): each step every member gains its
/// weight, the richest is picked and pays the total. Weights are divided by their greatest
/// common divisor first, so `[3, 3]` is a period of 2.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u8> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| i64::from(w / g)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u8);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A request's hold on a member: counted in flight while it lives.
#[derive(Debug)]
pub struct Lease {
    pub pool: Arc<Pool>,
    pub index: usize,
}

impl Lease {
    pub fn member(&self) -> &Member {
        &self.pool.members[self.index]
    }

    pub fn report(&self, outcome: Outcome) -> Transitions {
        self.pool.report(self.index, outcome, now_ms())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.member()
            .state
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

// === one member's state ===

/// What every worker shares about one member.
#[derive(Debug, Default)]
pub struct MemberState {
    in_flight: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Ejections since the last success, for the backoff.
    ejections: AtomicU32,
    /// [`now_ms`] until which the member is ejected.
    ejected_until: AtomicU64,
    /// Taken out by active health checks.
    check_down: AtomicBool,
    /// Active checks in a row that went the other way from `check_down`.
    check_streak: AtomicU32,
    pub breaker: Breaker,
}

impl MemberState {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    pub fn check_down(&self) -> bool {
        self.check_down.load(Ordering::Relaxed)
    }

    /// In rotation: not ejected, not taken out by checks, breaker closed or due a probe.
    pub fn usable(&self, breaker: Option<&BreakerRule>, now: u64) -> bool {
        !self.ejected(now)
            && !self.check_down()
            && breaker.is_none_or(|rule| self.breaker.may_admit(rule, now))
    }

    /// Passive health and the breaker learn how an attempt went.
    pub fn report(
        &self,
        passive: &PassiveRule,
        breaker: Option<&BreakerRule>,
        outcome: Outcome,
        now: u64,
    ) -> Transitions {
        let mut t = Transitions::default();
        match outcome {
            Outcome::Success => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                if !self.ejected(now) {
                    self.ejections.store(0, Ordering::Relaxed);
                }
            }
            Outcome::Failure => {
                let streak = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let until = self.ejected_until.load(Ordering::Relaxed);
                if passive.consecutive_failures > 0
                    && streak >= passive.consecutive_failures
                    && now >= until
                {
                    let n = self.ejections.load(Ordering::Relaxed);
                    let d = backoff(passive.ejection, passive.max_ejection, n);
                    // One of the workers failing at once ejects; the others see it ejected.
                    if self
                        .ejected_until
                        .compare_exchange(
                            until,
                            now + d.as_millis() as u64,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        self.ejections.fetch_add(1, Ordering::Relaxed);
                        self.consecutive_failures.store(0, Ordering::Relaxed);
                        t.ejected = Some(d);
                    }
                }
            }
        }
        if let Some(rule) = breaker {
            match self.breaker.record(rule, outcome, now) {
                Some(BreakerState::Open) => t.breaker_opened = true,
                Some(BreakerState::Closed) => t.breaker_closed = true,
                _ => {}
            }
        }
        t
    }

    /// An active check's result. Returns the new `down` when it changed.
    pub fn check_result(&self, ok: bool, rule: &HealthCheckRule) -> Option<bool> {
        let down = self.check_down();
        // A result that agrees with the current state ends any streak the other way.
        if ok != down {
            self.check_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if down {
            rule.healthy_threshold
        } else {
            rule.unhealthy_threshold
        };
        if streak < needed {
            return None;
        }
        self.check_streak.store(0, Ordering::Relaxed);
        self.check_down.store(!down, Ordering::Relaxed);
        Some(!down)
    }
}

/// The ejection time after `n` earlier ejections: `base · 2ⁿ`, at most `max`.
pub fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    base.checked_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max)
}

// === circuit breaker ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// A member's breaker: a fixed window of request and error counts while closed; the time it
/// opened (or last let a probe through) otherwise.
#[derive(Debug, Default)]
pub struct Breaker {
    state: AtomicU8,
    /// Open: when it opened. Half-open: when the probe went out.
    since: AtomicU64,
    window_start: AtomicU64,
    requests: AtomicU32,
    errors: AtomicU32,
}

impl Breaker {
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Relaxed) {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Whether [`Self::admit`] could say yes now (no side effect).
    pub fn may_admit(&self, rule: &BreakerRule, now: u64) -> bool {
        match self.state() {
            BreakerState::Closed => true,
            // A half-open probe that never reported (its request was dropped) is replaced
            // after another `open-ms`.
            BreakerState::Open | BreakerState::HalfOpen => {
                now >= self.since.load(Ordering::Relaxed) + rule.open_ms
            }
        }
    }

    /// Lets a request through: always when closed; after the cool-down exactly one probe.
    pub fn admit(&self, rule: &BreakerRule, now: u64) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        if state == BreakerState::Closed as u8 {
            return true;
        }
        let since = self.since.load(Ordering::Relaxed);
        if now < since + rule.open_ms {
            return false;
        }
        // Whoever moves `since` first is the probe.
        if self
            .since
            .compare_exchange(since, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.state
            .store(BreakerState::HalfOpen as u8, Ordering::Relaxed);
        true
    }

    /// Counts an outcome; returns the new state when it changed.
    pub fn record(&self, rule: &BreakerRule, outcome: Outcome, now: u64) -> Option<BreakerState> {
        let failed = outcome == Outcome::Failure;
        match self.state() {
            BreakerState::HalfOpen => {
                if failed {
                    self.open(now);
                    Some(BreakerState::Open)
                } else {
                    self.reset_window(now);
                    self.state
                        .store(BreakerState::Closed as u8, Ordering::Relaxed);
                    Some(BreakerState::Closed)
                }
            }
            // Late answers of requests sent before it opened change nothing.
            BreakerState::Open => None,
            BreakerState::Closed => {
                let start = self.window_start.load(Ordering::Relaxed);
                if now >= start + rule.window_ms
                    && self
                        .window_start
                        .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    self.requests.store(0, Ordering::Relaxed);
                    self.errors.store(0, Ordering::Relaxed);
                }
                let requests = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
                let errors = if failed {
                    self.errors.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    self.errors.load(Ordering::Relaxed)
                };
                let over = u64::from(errors) * 100
                    >= u64::from(rule.error_rate_percent) * u64::from(requests);
                if failed
                    && requests >= rule.min_requests
                    && over
                    && self
                        .state
                        .compare_exchange(
                            BreakerState::Closed as u8,
                            BreakerState::Open as u8,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    self.since.store(now, Ordering::Relaxed);
                    return Some(BreakerState::Open);
                }
                None
            }
        }
    }

    fn open(&self, now: u64) {
        self.since.store(now, Ordering::Relaxed);
        self.state
            .store(BreakerState::Open as u8, Ordering::Relaxed);
    }

    fn reset_window(&self, now: u64) {
        self.window_start.store(now, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
    }
}

// === state across configurations ===

/// Member states by (backend, member URL), held weakly: a state lives as long as a published
/// table uses it, and a new table with the same member gets the same state.
#[derive(Debug, Clone, Default)]
pub struct MemberRegistry(Arc<Mutex<HashMap<MemberKey, Weak<MemberState>>>>);

/// (backend name, member URL).
type MemberKey = (String, String);

impl MemberRegistry {
    /// The state of `member` of `backend`: the one in use, or a new one.
    pub fn state(&self, backend: &str, member: &str) -> Arc<MemberState> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (backend.to_owned(), member.to_owned());
        if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let s = Arc::new(MemberState::default());
        map.insert(key, Arc::downgrade(&s));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(n: u32) -> PassiveRule {
        PassiveRule {
            consecutive_failures: n,
            ejection: Duration::from_millis(1000),
            max_ejection: Duration::from_millis(5000),
            failure_statuses: vec![502, 503, 504].into(),
        }
    }

    fn pool(weights: &[u32], balancing: LoadBalancing, breaker: Option<BreakerRule>) -> Pool {
        let members = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Member {
                url: BackendUrl::parse(&format!("http://127.0.0.1:{}", 9000 + i)).unwrap(),
                label: format!("m{i}").into(),
                weight: w,
                state: Arc::default(),
            })
            .collect();
        Pool::new("b".into(), members, balancing, passive(3), breaker, None)
    }

    fn counts(p: &Pool, n: usize) -> Vec<usize> {
        let mut c = vec![0; p.members.len()];
        for _ in 0..n {
            c[p.pick(0, 0).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[3, 3]), [0, 1]);
        assert_eq!(
            smooth_schedule(&[2, 1, 1]),
            [0, 1, 2, 0],
            "docs/operations.md"
        );
        assert_eq!(smooth_schedule(&[1]), [0]);
        let p = pool(&[3, 1], LoadBalancing::RoundRobin, None);
        assert_eq!(counts(&p, 400), [300, 100]);
    }

    #[test]
    fn least_request_prefers_the_idler_member_and_shares_by_weight_when_idle() {
        let p = Arc::new(pool(&[1, 1], LoadBalancing::LeastRequest, None));
        let busy: Vec<Lease> = (0..3).map(|_| p.lease(0)).collect();
        // Of two members, both are drawn every time: the idle one wins.
        assert_eq!(counts(&p, 50), [0, 50]);
        drop(busy);
        assert_eq!(p.members[0].state.in_flight(), 0);
        // Idle: the first drawn wins, and draws follow the weights.
        let p = pool(&[1, 3], LoadBalancing::LeastRequest, None);
        let c = counts(&p, 4000);
        assert!((800..1200).contains(&c[0]), "{c:?}");
        // Of three, the one never drawn second cannot lose to a busier one.
        let p = Arc::new(pool(&[1, 1, 1], LoadBalancing::LeastRequest, None));
        let _busy: Vec<Lease> = (0..2).map(|_| p.lease(2)).collect();
        let c = counts(&p, 300);
        assert!(c[2] < 300 / 3, "{c:?}");
    }

    #[test]
    fn consecutive_failures_eject_with_doubling_backoff_and_a_success_resets_it() {
        let s = MemberState::default();
        let rule = passive(3);
        assert_eq!(s.report(&rule, None, Outcome::Failure, 0).ejected, None);
        assert_eq!(s.report(&rule, None, Outcome::Failure, 0).ejected, None);
        // A success between failures restarts the streak.
        s.report(&rule, None, Outcome::Success, 0);
        s.report(&rule, None, Outcome::Failure, 0);
        s.report(&rule, None, Outcome::Failure, 0);
        let t = s.report(&rule, None, Outcome::Failure, 10);
        assert_eq!(t.ejected, Some(Duration::from_millis(1000)));
        assert!(s.ejected(10) && s.ejected(1009) && !s.ejected(1010));
        // Back, and failing again: twice as long, then capped.
        for (at, ms) in [(1010, 2000), (3010, 4000), (7010, 5000)] {
            let mut t = Transitions::default();
            for _ in 0..3 {
                t = s.report(&rule, None, Outcome::Failure, at);
            }
            assert_eq!(t.ejected, Some(Duration::from_millis(ms)), "at {at}");
        }
        // A success once back resets the backoff.
        s.report(&rule, None, Outcome::Success, 20_000);
        for _ in 0..3 {
            s.report(&rule, None, Outcome::Failure, 20_000);
        }
        assert!(s.ejected(20_999) && !s.ejected(21_000));
        // Off: never ejected.
        let off = MemberState::default();
        for _ in 0..100 {
            assert_eq!(
                off.report(&passive(0), None, Outcome::Failure, 0).ejected,
                None
            );
        }
    }

    #[test]
    fn ejected_members_are_skipped_until_all_are_out() {
        let p = pool(&[1, 1, 1], LoadBalancing::RoundRobin, None);
        for _ in 0..3 {
            p.report(1, Outcome::Failure, 0);
        }
        let c = counts(&p, 30);
        assert_eq!(c, [15, 0, 15]);
        // Tried members are not picked again; when all were tried there is none.
        assert_eq!(p.pick(0b101, 0), Some(1), "the ejected one, in panic mode");
        assert_eq!(p.pick(0b111, 0), None);
        for i in [0, 2] {
            for _ in 0..3 {
                p.report(i, Outcome::Failure, 0);
            }
        }
        // Panic mode: everything ejected, all used anyway.
        let c = counts(&p, 30);
        assert_eq!(c, [10, 10, 10]);
        // And back after the ejection time.
        assert!(p.members.iter().all(|m| m.state.usable(None, 1000)));
    }

    #[test]
    fn breaker_opens_over_the_error_rate_then_probes_once_and_closes() {
        let rule = BreakerRule {
            error_rate_percent: 50,
            window_ms: 1000,
            min_requests: 4,
            open_ms: 500,
        };
        let b = Breaker::default();
        // Under min-requests nothing opens, whatever the rate.
        for _ in 0..3 {
            assert_eq!(b.record(&rule, Outcome::Failure, 0), None);
        }
        // A new window forgets the old counts.
        assert_eq!(b.record(&rule, Outcome::Success, 1000), None);
        assert_eq!(b.record(&rule, Outcome::Success, 1000), None);
        assert_eq!(b.record(&rule, Outcome::Failure, 1000), None);
        assert_eq!(
            b.record(&rule, Outcome::Failure, 1001),
            Some(BreakerState::Open)
        );
        assert!(!b.may_admit(&rule, 1400) && !b.admit(&rule, 1400));
        // After the cool-down: exactly one probe.
        assert!(b.may_admit(&rule, 1501));
        assert!(b.admit(&rule, 1501));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.admit(&rule, 1502));
        // The probe fails: open again, for another cool-down.
        assert_eq!(
            b.record(&rule, Outcome::Failure, 1600),
            Some(BreakerState::Open)
        );
        assert!(!b.admit(&rule, 2000));
        assert!(b.admit(&rule, 2100));
        // A probe that never reports is replaced after another cool-down.
        assert!(!b.admit(&rule, 2200));
        assert!(b.admit(&rule, 2600));
        assert_eq!(
            b.record(&rule, Outcome::Success, 2700),
            Some(BreakerState::Closed)
        );
        assert!(b.admit(&rule, 2700) && b.admit(&rule, 2700));
    }

    #[test]
    fn an_open_breaker_takes_its_member_out_of_the_pool() {
        let rule = BreakerRule {
            error_rate_percent: 50,
            window_ms: 10_000,
            min_requests: 2,
            open_ms: 1000,
        };
        let p = pool(&[1, 1], LoadBalancing::RoundRobin, Some(rule));
        p.report(0, Outcome::Failure, 0);
        assert!(p.report(0, Outcome::Failure, 0).breaker_opened);
        assert_eq!(counts(&p, 10), [0, 10]);
        // Due a probe: picked once, then out again until the probe reports.
        let picks: Vec<usize> = (0..4).map(|_| p.pick(0, 1000).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 1, "{picks:?}");
        assert!(p.report(0, Outcome::Success, 1001).breaker_closed);
    }

    #[test]
    fn active_checks_take_out_and_bring_back_by_thresholds() {
        let rule = HealthCheckRule {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        };
        let s = MemberState::default();
        assert_eq!(s.check_result(false, &rule), None);
        assert_eq!(s.check_result(false, &rule), None);
        // A good check in between restarts the count.
        assert_eq!(s.check_result(true, &rule), None);
        assert_eq!(s.check_result(false, &rule), None);
        assert_eq!(s.check_result(false, &rule), None);
        assert_eq!(s.check_result(false, &rule), Some(true));
        assert!(!s.usable(None, 0));
        assert_eq!(s.check_result(true, &rule), None);
        assert_eq!(s.check_result(true, &rule), Some(false));
        assert!(s.usable(None, 0));
    }

    #[test]
    fn the_registry_keeps_state_while_a_table_uses_it() {
        let r = MemberRegistry::default();
        let a = r.state("b", "http://x");
        a.ejected_until.store(99, Ordering::Relaxed);
        assert!(Arc::ptr_eq(&a, &r.state("b", "http://x")));
        assert!(!Arc::ptr_eq(&a, &r.state("c", "http://x")));
        drop(a);
        assert!(!r.state("b", "http://x").ejected(0));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(backoff(b, m, 0), b);
        assert_eq!(backoff(b, m, 3), Duration::from_secs(8));
        assert_eq!(backoff(b, m, 40), m);
    }
}
