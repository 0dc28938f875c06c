//! Pure checks over recorded [`Event`]s: rate-limit windows, latency percentiles.

use std::time::Duration;

use super::load::Event;

/// The most admissions that provably happened within one interval of length `window`, and
/// where that interval starts (on the load's clock).
///
/// A gateway admits a request at some instant between its `sent` and `done` times, which the
/// client cannot see more precisely. For each admission `i`, the admissions `j` with
/// `sent_j >= sent_i` and `done_j <= sent_i + window` were certainly admitted within
/// `[sent_i, sent_i + window]`, so if the limit holds in every interval of length `window`
/// (the sliding-window guarantee), that count is at most the limit. The check never fails a
/// correct limiter, whatever the latency; with loopback latencies it is also tight.
///
/// `events` must be sorted by `sent`; only admitted (2xx) ones are counted.
pub fn max_in_window<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    window: Duration,
) -> (u64, Duration) {
    let admitted: Vec<&Event> = events.into_iter().filter(|e| e.admitted()).collect();
    let mut best = (0, Duration::ZERO);
    for (i, first) in admitted.iter().enumerate() {
        let end = first.sent + window;
        let count = admitted[i..]
            .iter()
            .take_while(|e| e.sent <= end)
            .filter(|e| e.done <= end)
            .count() as u64;
        if count > best.0 {
            best = (count, first.sent);
        }
    }
    best
}

/// The `p`-th percentile (0..=100) of `values`, nearest rank; zero when empty.
pub fn percentile(values: &[Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(sent_ms: u64, done_ms: u64, status: u16) -> Event {
        Event {
            node: 0,
            sent: Duration::from_millis(sent_ms),
            done: Duration::from_millis(done_ms),
            outcome: Ok(status),
            failovers: 0,
        }
    }

    #[test]
    fn window_counts_only_admissions_certainly_inside() {
        let events = vec![
            ev(0, 10, 200),
            ev(100, 110, 200),
            ev(200, 210, 429),
            ev(900, 1_200, 200), // may have been admitted after the window of the first
            ev(1_000, 1_010, 200),
        ];
        let (n, at) = max_in_window(&events, Duration::from_millis(1_000));
        assert_eq!(n, 2, "the 429 and the one finishing late do not count");
        assert_eq!(at, Duration::ZERO);
        let (n, at) = max_in_window(&events, Duration::from_millis(1_200));
        assert_eq!((n, at), (4, Duration::ZERO));
        assert_eq!(max_in_window(&[], Duration::from_secs(1)).0, 0);
    }

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
