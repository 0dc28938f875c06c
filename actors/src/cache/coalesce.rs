//! Request coalescing (single-flight) on one node: concurrent misses for the same key go to the
//! backend once. The first miss leads (gets a [`Flight`]); later misses wait, bounded, for the
//! leader's result. The leader either stores a response (followers get it as a hit) or drops
//! its flight (not cacheable, error, cancelled): followers then fetch for themselves, as they
//! also do when the wait runs out.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::watch;

use super::entry::CachedResponse;
use super::key::CacheKey;

/// The outcome a leader publishes: `None` until done, then `Some(None)` for "no response to
/// share" or `Some(Some(r))`.
type Outcome = Option<Option<Arc<CachedResponse>>>;

#[derive(Debug, Default)]
pub struct Flights {
    in_flight: DashMap<CacheKey, watch::Receiver<Outcome>>,
}

/// What joining a flight gave.
pub enum Joined {
    /// Nobody was fetching this key: the caller leads.
    Leader(Flight),
    /// Someone was; here is what they got (`None`: nothing to share, or the wait ran out).
    Followed(Option<Arc<CachedResponse>>),
}

impl Flights {
    pub fn join(self: &Arc<Self>, key: &CacheKey) -> Result<Flight, watch::Receiver<Outcome>> {
        match self.in_flight.entry(key.clone()) {
            Entry::Occupied(e) => Err(e.get().clone()),
            Entry::Vacant(v) => {
                let (tx, rx) = watch::channel(None);
                v.insert(rx);
                Ok(Flight {
                    key: key.clone(),
                    tx: Some(tx),
                    flights: self.clone(),
                })
            }
        }
    }

    /// Leads, or waits at most `wait` for the leader.
    pub async fn join_or_wait(self: &Arc<Self>, key: &CacheKey, wait: Duration) -> Joined {
        match self.join(key) {
            Ok(flight) => Joined::Leader(flight),
            Err(mut rx) => {
                let got = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
                match got {
                    Ok(Ok(outcome)) => Joined::Followed(outcome.clone().flatten()),
                    // Leader gone without a word, or too slow.
                    _ => Joined::Followed(None),
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}

/// A leader's promise to report; dropping it reports "nothing to share".
#[derive(Debug)]
pub struct Flight {
    key: CacheKey,
    tx: Option<watch::Sender<Outcome>>,
    flights: Arc<Flights>,
}

impl Flight {
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Hands the stored response to every follower.
    pub fn complete(mut self, response: Option<Arc<CachedResponse>>) {
        self.finish(response);
    }

    fn finish(&mut self, response: Option<Arc<CachedResponse>>) {
        if let Some(tx) = self.tx.take() {
            self.flights.in_flight.remove(&self.key);
            let _ = tx.send(Some(response));
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.finish(None);
    }
}
