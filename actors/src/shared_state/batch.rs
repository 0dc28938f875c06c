//! Coalescing of concurrent rate-limit checks of one counter on one connection.
//!
//! Under load, many requests of one traffic worker check the same hot counter (one subscription,
//! one API key) at nearly the same time. Sending each check as its own script call makes Redis
//! run the script once per request, which costs Redis about as much CPU as the gateway spends on
//! the whole request. Instead, checks of the same counter (same key, limit, window and
//! increment) that arrive while a call for that counter is in flight on the thread's connection
//! wait, and go together in the next call as one script invocation with `count = n`. The
//! script grants them in arrival order while they fit, so the outcome is the one `n` separate
//! calls would have given at that instant: counting stays exact across nodes, and no check
//! waits for more than the call in flight plus its own.
//!
//! Without concurrency nothing changes: a lone check finds no call in flight and is sent at
//! once, one call per check, as before.
//!
//! Quota admissions (`quota`, `quota-by-key`) are coalesced the same way; what they add after
//! the response (bandwidth, refunds) is not, as nobody waits for it.
//!
//! This module holds the pure parts (the queue of waiting checks, and how one script reply is
//! split between the checks of a batch); `redis_store.rs` drives the calls.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::store::{RateState, StoreError, Ticket};
use super::window::{QuotaDelta, QuotaLimits, QuotaState};

/// Where one waiting check gets its answer.
pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What identifies rate-limit checks that may share a call: they must count the same units
/// against the same limit of the same counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchKey {
    pub key: String,
    pub limit: u64,
    pub window: Duration,
    pub increment: u64,
    /// The policy's `local-budget` (checks this thread may lease ahead); 0: none, every check
    /// is decided by Redis.
    pub budget: u64,
}

/// What identifies quota admissions that may share a call: same counter, period, limits and
/// change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuotaBatchKey {
    pub key: String,
    pub period: Duration,
    pub limits: QuotaLimits,
    pub delta: QuotaDelta,
}

/// The counters of one thread's connection that have a call in flight, each with the checks
/// waiting for the next call. A counter is in the map exactly while a driver task serves it.
///
/// Only the thread owning the connection touches it (the mutex is never contended in the
/// gateway, where futures do not migrate between threads; it is there because futures may
/// migrate on a multi-threaded runtime).
#[derive(Debug)]
pub struct Batches<K, T> {
    waiting: Mutex<HashMap<K, Vec<Reply<T>>>>,
}

impl<K, T> Default for Batches<K, T> {
    fn default() -> Self {
        Batches {
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Clone + Eq + Hash, T> Batches<K, T> {
    /// Queues a check. Returns the key back when no call is in flight for its counter: the
    /// caller must then start a driver for it (which takes this check in its first call).
    pub fn enqueue(&self, key: K, reply: Reply<T>) -> Option<K> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = waiting.get_mut(&key) {
            queue.push(reply);
            return None;
        }
        waiting.insert(key.clone(), vec![reply]);
        Some(key)
    }

    /// The checks for the driver's next call, in arrival order. When none are waiting, the
    /// counter leaves the map (the driver stops, and the next check starts a new one).
    pub fn next_batch(&self, key: &K) -> Vec<Reply<T>> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.get_mut(key) {
            Some(queue) if !queue.is_empty() => std::mem::take(queue),
            Some(_) => {
                waiting.remove(key);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// The driver of one counter: until no check is waiting, takes the waiting checks, has
    /// `decide` answer them with one call (one answer per check, in arrival order) and hands
    /// each its answer, or the call's error to all of them.
    pub async fn serve<F, Fut>(&self, key: &K, mut decide: F)
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<Vec<T>, StoreError>>,
    {
        loop {
            // Let the requests whose sockets are already readable run first: their checks join
            // this call instead of waiting for the next one (one scheduler pass, no timer).
            tokio::task::yield_now().await;
            let waiting = self.next_batch(key);
            if waiting.is_empty() {
                return;
            }
            match decide(waiting.len()).await {
                Ok(answers) => {
                    for (reply, answer) in waiting.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(e) => {
                    for reply in waiting {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Counters with a driver (for tests).
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Both queues of one thread's connection, and its leases.
#[derive(Debug, Default)]
pub struct ThreadBatches {
    pub rate: Batches<BatchKey, RateState>,
    pub quota: Batches<QuotaBatchKey, QuotaState>,
    pub leases: Leases,
}

/// Checks of one counter that this thread may admit without asking Redis (`local-budget`):
/// their units were recorded in Redis, in slot `slot`, when the lease was granted. A lease is
/// only used while that slot is the current one (`expires`, measured from before the call was
/// sent, is no later than the slot's end in Redis' clock): an admission from it then counts in
/// Redis for the whole window that follows it, exactly as if it had been checked there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Checks left to admit.
    pub left: u64,
    pub slot: i64,
    pub expires: Instant,
    /// Redis' remaining capacity right after the lease was granted (the `remaining` a check
    /// admitted from the lease reports is this plus what is still leased here).
    pub remaining: u64,
}

/// Unused leased units to give back to Redis (`refund.lua` on their slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unused {
    pub slot: i64,
    pub checks: u64,
}

/// This thread's leases, per counter. Only the owning thread touches them (see [`Batches`]
/// for why there is a mutex).
#[derive(Debug, Default)]
pub struct Leases {
    held: Mutex<HashMap<BatchKey, Lease>>,
}

/// What [`Leases::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Admitted from the lease; `true` when that spent half of the budget: time to lease
    /// more, ahead of need, so that checks rarely find the lease empty.
    Admitted(RateState, bool),
    /// No usable lease; the expired one's unused checks, if any, are to be given back.
    Empty(Option<Unused>),
}

impl Leases {
    /// Admits one check of `key` from its lease, when one is held, current and not spent.
    pub fn take(&self, key: &BatchKey, now: Instant) -> Taken {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lease) = held.get_mut(key) else {
            return Taken::Empty(None);
        };
        if now < lease.expires && lease.left > 0 {
            lease.left -= 1;
            let refill = lease.left == key.budget / 2;
            return Taken::Admitted(leased_state(key, lease), refill);
        }
        let lease = held.remove(key).expect("present");
        Taken::Empty(unused(&lease))
    }

    /// Admits up to `n` checks from the lease of `key` (a coalescing driver, for the checks
    /// that queued while the call that brought the lease was in flight).
    pub fn take_up_to(&self, key: &BatchKey, n: usize, now: Instant) -> Vec<RateState> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lease) = held.get_mut(key) else {
            return Vec::new();
        };
        if now >= lease.expires {
            return Vec::new();
        }
        let k = (lease.left as usize).min(n);
        (0..k)
            .map(|_| {
                lease.left -= 1;
                leased_state(key, lease)
            })
            .collect()
    }

    /// Checks still leased for `key` and current.
    pub fn left(&self, key: &BatchKey, now: Instant) -> u64 {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(key)
            .filter(|l| now < l.expires)
            .map_or(0, |l| l.left)
    }

    /// Holds a new lease for `key`. A current lease of the same slot is topped up; any other
    /// lease held is replaced and its unused checks returned to be given back.
    pub fn grant(&self, key: &BatchKey, lease: Lease) -> Option<Unused> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.get_mut(key) {
            Some(old) if old.slot == lease.slot => {
                old.left += lease.left;
                old.remaining = lease.remaining;
                old.expires = old.expires.min(lease.expires);
                None
            }
            Some(old) => {
                let back = unused(old);
                *old = lease;
                back
            }
            None => {
                held.insert(key.clone(), lease);
                None
            }
        }
    }

    /// Drops the lease of `key` for `slot` once it has expired, returning its unused checks
    /// (the timer set when the lease was granted; a check may have dropped it already).
    pub fn expire(&self, key: &BatchKey, slot: i64, now: Instant) -> Option<Unused> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.get(key) {
            Some(l) if l.slot == slot && now >= l.expires => {
                let lease = held.remove(key).expect("present");
                unused(&lease)
            }
            _ => None,
        }
    }
}

fn unused(lease: &Lease) -> Option<Unused> {
    (lease.left > 0).then_some(Unused {
        slot: lease.slot,
        checks: lease.left,
    })
}

fn leased_state(key: &BatchKey, lease: &Lease) -> RateState {
    RateState {
        allowed: true,
        remaining: lease
            .remaining
            .saturating_add(lease.left.saturating_mul(key.increment)),
        retry_after: Duration::ZERO,
        ticket: Ticket {
            key: key.key.clone(),
            window: key.window,
            slot: lease.slot,
            amount: key.increment,
        },
    }
}

/// One script reply for a batch: `granted` of the `count` checks fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchReply {
    pub granted: u64,
    /// Capacity left after the granted checks.
    pub remaining: u64,
    /// For the refused checks: until the next one would fit.
    pub retry_after: Duration,
    /// Slot the granted units were recorded in.
    pub slot: i64,
    /// Checks leased on top of the granted ones (recorded in `slot` too).
    pub leased: u64,
    /// Until `slot` ends, in Redis' clock.
    pub slot_left: Duration,
}

/// Splits a reply between the checks of a batch, in arrival order: the first `granted` are
/// admitted, each seeing the capacity left after itself (as if it had been sent alone), the
/// rest are refused.
pub fn split(reply: BatchReply, count: usize, key: &BatchKey) -> Vec<RateState> {
    let granted = (reply.granted as usize).min(count);
    (0..count)
        .map(|i| {
            let allowed = i < granted;
            RateState {
                allowed,
                remaining: if allowed {
                    reply
                        .remaining
                        .saturating_add(((granted - 1 - i) as u64).saturating_mul(key.increment))
                } else {
                    reply.remaining
                },
                retry_after: if allowed {
                    Duration::ZERO
                } else {
                    reply.retry_after
                },
                ticket: Ticket {
                    key: key.key.clone(),
                    window: key.window,
                    slot: reply.slot,
                    amount: if allowed { key.increment } else { 0 },
                },
            }
        })
        .collect()
}

/// One quota script reply for a batch of admissions: `granted` of the `count` fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaBatchReply {
    pub granted: u64,
    /// Usage after the granted admissions.
    pub calls: u64,
    pub bytes: u64,
    pub resets_in: Duration,
}

/// Splits a quota reply in arrival order: each admitted check sees the usage right after
/// itself, the refused ones the usage after the batch.
pub fn split_quota(reply: QuotaBatchReply, count: usize, delta: QuotaDelta) -> Vec<QuotaState> {
    let granted = (reply.granted as usize).min(count);
    let per_call = delta.calls.max(0) as u64;
    (0..count)
        .map(|i| {
            let allowed = i < granted;
            let later = if allowed { (granted - 1 - i) as u64 } else { 0 };
            QuotaState {
                allowed,
                calls: reply.calls.saturating_sub(later.saturating_mul(per_call)),
                bytes: reply
                    .bytes
                    .saturating_sub(later.saturating_mul(delta.bytes)),
                resets_in: reply.resets_in,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BatchKey {
        BatchKey {
            key: "k".into(),
            limit: 10,
            window: Duration::from_secs(60),
            increment: 2,
            budget: 0,
        }
    }

    #[test]
    fn first_check_leads_the_rest_wait_and_the_counter_leaves_when_drained() {
        let b: Batches<BatchKey, RateState> = Batches::default();
        let (tx1, _rx1) = oneshot::channel();
        let (tx2, _rx2) = oneshot::channel();
        let (tx3, _rx3) = oneshot::channel();
        assert!(b.enqueue(key(), tx1).is_some());
        assert!(b.enqueue(key(), tx2).is_none());
        assert_eq!(b.next_batch(&key()).len(), 2);
        // Arrived while the first call was in flight: waits for the second.
        assert!(b.enqueue(key(), tx3).is_none());
        assert_eq!(b.next_batch(&key()).len(), 1);
        assert_eq!(b.in_flight(), 1);
        assert!(b.next_batch(&key()).is_empty());
        assert_eq!(b.in_flight(), 0);
        let (tx4, _rx4) = oneshot::channel();
        assert!(
            b.enqueue(key(), tx4).is_some(),
            "a new driver after the old one stopped"
        );
    }

    #[test]
    fn other_limits_of_the_same_key_do_not_share_a_call() {
        let b: Batches<BatchKey, RateState> = Batches::default();
        let (tx1, _rx1) = oneshot::channel();
        let (tx2, _rx2) = oneshot::channel();
        assert!(b.enqueue(key(), tx1).is_some());
        assert!(b.enqueue(BatchKey { limit: 11, ..key() }, tx2).is_some());
        assert_eq!(b.in_flight(), 2);
    }

    #[test]
    fn a_reply_is_split_in_arrival_order() {
        let reply = BatchReply {
            granted: 2,
            remaining: 1,
            retry_after: Duration::from_millis(1500),
            slot: 7,
            leased: 0,
            slot_left: Duration::from_millis(100),
        };
        let states = split(reply, 4, &key());
        let allowed: Vec<bool> = states.iter().map(|s| s.allowed).collect();
        assert_eq!(allowed, [true, true, false, false]);
        // 1 left after both grants of 2: the first saw 3 left after itself, the second 1.
        assert_eq!(states[0].remaining, 3);
        assert_eq!(states[1].remaining, 1);
        assert_eq!(states[2].remaining, 1);
        assert_eq!(states[0].retry_after, Duration::ZERO);
        assert_eq!(states[3].retry_after, Duration::from_millis(1500));
        assert_eq!(states[0].ticket.amount, 2);
        assert_eq!(states[2].ticket.amount, 0);
        assert!(states.iter().all(|s| s.ticket.slot == 7));
    }

    fn lease(left: u64, slot: i64, expires: Instant) -> Lease {
        Lease {
            left,
            slot,
            expires,
            remaining: 50,
        }
    }

    #[test]
    fn a_lease_admits_until_spent_and_asks_for_more_at_half() {
        let leases = Leases::default();
        let k = BatchKey { budget: 4, ..key() };
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        assert_eq!(leases.take(&k, now), Taken::Empty(None));
        assert_eq!(leases.grant(&k, lease(4, 7, later)), None);
        let mut refills = Vec::new();
        for _ in 0..4 {
            match leases.take(&k, now) {
                Taken::Admitted(state, refill) => {
                    assert!(state.allowed);
                    assert_eq!(state.ticket.slot, 7);
                    assert_eq!(state.ticket.amount, 2);
                    refills.push(refill);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(refills, [false, true, false, false]);
        assert_eq!(leases.take(&k, now), Taken::Empty(None), "spent");
    }

    #[test]
    fn an_expired_lease_is_not_used_and_its_rest_goes_back() {
        let leases = Leases::default();
        let k = BatchKey { budget: 4, ..key() };
        let now = Instant::now();
        let end = now + Duration::from_millis(50);
        leases.grant(&k, lease(4, 7, end));
        assert!(matches!(leases.take(&k, now), Taken::Admitted(..)));
        assert_eq!(
            leases.take(&k, end),
            Taken::Empty(Some(Unused { slot: 7, checks: 3 }))
        );
        assert_eq!(leases.take(&k, end), Taken::Empty(None), "given back once");
        // The timer finds nothing left to give back.
        assert_eq!(leases.expire(&k, 7, end), None);
    }

    #[test]
    fn a_top_up_of_the_same_slot_adds_and_a_new_slot_replaces() {
        let leases = Leases::default();
        let k = BatchKey { budget: 4, ..key() };
        let now = Instant::now();
        let end = now + Duration::from_millis(50);
        leases.grant(&k, lease(2, 7, end));
        assert_eq!(leases.grant(&k, lease(3, 7, end)), None);
        assert_eq!(leases.left(&k, now), 5);
        let next = end + Duration::from_millis(50);
        assert_eq!(
            leases.grant(&k, lease(4, 8, next)),
            Some(Unused { slot: 7, checks: 5 })
        );
        assert_eq!(leases.take_up_to(&k, 10, now).len(), 4);
        assert_eq!(leases.expire(&k, 8, next), None, "nothing left");
    }

    #[test]
    fn a_quota_reply_is_split_in_arrival_order() {
        let reply = QuotaBatchReply {
            granted: 2,
            calls: 10,
            bytes: 0,
            resets_in: Duration::from_secs(30),
        };
        let delta = QuotaDelta {
            calls: 1,
            bytes: 0,
            enforce: true,
        };
        let states = split_quota(reply, 3, delta);
        let seen: Vec<(bool, u64)> = states.iter().map(|s| (s.allowed, s.calls)).collect();
        assert_eq!(seen, [(true, 9), (true, 10), (false, 10)]);
        assert!(
            states
                .iter()
                .all(|s| s.resets_in == Duration::from_secs(30))
        );
    }
}
