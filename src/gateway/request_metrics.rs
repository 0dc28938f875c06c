//! The per-request Prometheus series, without a registry lookup per request.
//!
//! `metrics::counter!("…", "api" => …)` builds a key from its labels, hashes it and looks it up
//! in the recorder's registry on every call: about 2,500 instructions for the three series of
//! a request, a third of the gateway's own work for a proxied request (docs/benchmarks.md).
//! The handles it returns point at the same registered series every time, so each traffic
//! worker keeps them, per (API, operation, status), in a small thread-local map.
//!
//! The map is keyed by the identity of the configuration's `Arc<str>` names (each entry holds the
//! `Arc`s, so an address cannot be reused while it is in the map). A new configuration
//! revision brings new `Arc`s and so new entries for the same series; the map is emptied when
//! it reaches [`MAX_ENTRIES`], which bounds it across any number of revisions.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use metrics::{Counter, Histogram};
use outpost_actors::word_hash::WordHashing;

/// Entries per worker before the map starts over.
const MAX_ENTRIES: usize = 4096;

/// The series one finished request updates.
#[derive(Clone)]
pub struct RequestSeries {
    pub requests: Counter,
    pub duration: Histogram,
    pub backend_duration: Histogram,
}

/// The label of requests that matched no API or operation.
pub static UNMATCHED: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("unmatched"));

/// Runs `f` on this thread's handles of the series of a request to `api`/`operation` answered
/// with `status`, without cloning the names for the lookup or the handles for the caller.
pub fn with_series<R>(
    api: &Arc<str>,
    operation: &Arc<str>,
    status: u16,
    f: impl FnOnce(&RequestSeries) -> R,
) -> R {
    let key = Key::of(api, operation, status);
    SERIES.with(|series| {
        let mut series = series.borrow_mut();
        if let Some(entry) = series.get(&key) {
            return f(&entry.series);
        }
        if series.len() >= MAX_ENTRIES {
            series.clear();
        }
        let entry = Entry {
            series: register(api, operation, status),
            _names: (api.clone(), operation.clone()),
        };
        let out = f(&entry.series);
        series.insert(key, entry);
        out
    })
}

fn register(api: &Arc<str>, operation: &Arc<str>, status: u16) -> RequestSeries {
    RequestSeries {
        requests: metrics::counter!(
            "outpost_requests_total",
            "api" => api.clone(),
            "operation" => operation.clone(),
            "status" => status_label(status),
        ),
        duration: metrics::histogram!(crate::prometheus::REQUEST_SECONDS, "api" => api.clone()),
        backend_duration: metrics::histogram!(crate::prometheus::BACKEND_SECONDS, "api" => api.clone()),
    }
}

/// `"200"`, `"404"`, …
fn status_label(status: u16) -> Arc<str> {
    Arc::from(status.to_string())
}

thread_local! {
    static SERIES: RefCell<HashMap<Key, Entry, WordHashing>> =
        RefCell::new(HashMap::default());
}

/// A worker's handles, with the names whose addresses key them.
struct Entry {
    series: RequestSeries,
    /// Held so that no other name can be allocated at a key's address while it is in the map.
    _names: (Arc<str>, Arc<str>),
}

/// The names' addresses and the status: equal when the names are the same `Arc`s, which is
/// what the hot path has, and cheap to hash and compare.
#[derive(PartialEq, Eq)]
struct Key {
    api: usize,
    operation: usize,
    status: u16,
}

impl Key {
    fn of(api: &Arc<str>, operation: &Arc<str>, status: u16) -> Self {
        Self {
            api: Arc::as_ptr(api).cast::<u8>() as usize,
            operation: Arc::as_ptr(operation).cast::<u8>() as usize,
            status,
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.api);
        state.write_usize(self.operation);
        state.write_u16(self.status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_names_give_the_same_series_and_other_names_others() {
        let api: Arc<str> = Arc::from("orders");
        let op: Arc<str> = Arc::from("list");
        let key = Key::of;
        assert!(key(&api, &op, 200) == key(&api, &op, 200));
        assert!(key(&api, &op, 200) != key(&api, &op, 404));
        // Equal text in another revision's `Arc` is another entry (of the same series).
        let api2: Arc<str> = Arc::from("orders");
        assert!(key(&api, &op, 200) != key(&api2, &op, 200));
        let hash = |k: &Key| {
            let mut h = outpost_actors::word_hash::WordHasher::default();
            k.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&key(&api, &op, 200)), hash(&key(&api, &op, 200)));
        assert_ne!(hash(&key(&api, &op, 200)), hash(&key(&api, &op, 404)));
    }

    #[test]
    fn the_map_stays_bounded() {
        let op: Arc<str> = Arc::from("op");
        for i in 0..(MAX_ENTRIES + 10) {
            let api: Arc<str> = Arc::from(format!("api{i}"));
            with_series(&api, &op, 200, |_| ());
        }
        SERIES.with(|s| assert!(s.borrow().len() <= MAX_ENTRIES));
    }
}
