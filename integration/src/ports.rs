//! Loopback port allocation for processes the harness spawns.
//!
//! A child process needs its port number before it starts, so we cannot hand it a bound
//! listener: we pick a number, check it binds, release it and pass it on. The ports come from
//! *below the kernel's ephemeral range* (`net.ipv4.ip_local_port_range`), never from a
//! `bind(0)`: the ephemeral range is also where every outgoing connection (a gateway to Redis,
//! to the control plane, to a backend) takes its source port, so an ephemeral port released to a
//! child could be taken by some connection's source port before the child binds it — a CI run
//! failed exactly so ("cannot listen on 127.0.0.1:40865: Address already in use"). Below the
//! range only an explicit bind can take a port; the process-wide registry stops two tests of one
//! binary (tests run in parallel threads) from being handed the same one, and a start point
//! that differs per process keeps concurrent test binaries apart.
//!
//! In-process servers (backend, fault proxy) don't use this: they bind `127.0.0.1:0` and keep
//! the listener, which has no window at all.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::ops::Range;
use std::sync::{LazyLock, Mutex};

struct Allocator {
    range: Range<u16>,
    next: u16,
    handed_out: HashSet<u16>,
}

static ALLOCATOR: LazyLock<Mutex<Allocator>> = LazyLock::new(|| {
    let range = non_ephemeral_range(
        &std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default(),
    );
    // Each process starts at its own place in the range, so two test binaries running at once
    // rarely probe the same ports (the bind check catches the rest).
    let span = u64::from(range.end - range.start);
    let offset = RandomState::new().hash_one(std::process::id()) % span;
    let next = range.start + u16::try_from(offset).unwrap_or(0);
    Mutex::new(Allocator {
        range,
        next,
        handed_out: HashSet::new(),
    })
});

/// The ports to hand out, given the contents of `ip_local_port_range` ("low\thigh"): the
/// 12,000 ports below `low` when there is room (Linux's default low is 32768), else the ports
/// above `high`.
fn non_ephemeral_range(proc_file: &str) -> Range<u16> {
    let mut bounds = proc_file.split_whitespace().map(str::parse::<u16>);
    let (low, high) = match (bounds.next(), bounds.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => (low, high),
        _ => (32768, 60999),
    };
    if low >= 10_000 + 1024 {
        low.saturating_sub(12_000).max(1024)..low
    } else {
        high.saturating_add(1).max(1024)..u16::MAX
    }
}

/// Returns a loopback TCP port outside the ephemeral range that was free a moment ago and that
/// no other call in this process has returned.
///
/// # Panics
///
/// If no port in the range binds, which makes every test meaningless.
pub fn free_port() -> u16 {
    let mut alloc = ALLOCATOR.lock().unwrap_or_else(|e| e.into_inner());
    let span = alloc.range.end - alloc.range.start;
    for _ in 0..span {
        let port = alloc.next;
        alloc.next = if port + 1 >= alloc.range.end {
            alloc.range.start
        } else {
            port + 1
        };
        if alloc.handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            alloc.handed_out.insert(port);
            return port;
        }
    }
    panic!(
        "no free loopback port in {:?} that was not already handed out in this process",
        alloc.range
    );
}

/// `127.0.0.1:port` for a fresh [`free_port`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_within_the_process() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ports.len(),
            "duplicate port handed out: {ports:?}"
        );
        assert!(ports.iter().all(|&p| p != 0));
    }

    #[test]
    fn ports_are_bindable_and_outside_the_ephemeral_range() {
        let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((32768, 60999));
        let addr = free_addr();
        assert!(
            !(low..=high).contains(&addr.port()),
            "{addr} is in the ephemeral range {low}-{high}"
        );
        TcpListener::bind(addr).expect("a port from free_port() binds");
    }

    #[test]
    fn the_range_avoids_the_ephemeral_ports() {
        assert_eq!(non_ephemeral_range("32768\t60999\n"), 20768..32768);
        assert_eq!(non_ephemeral_range("1024 65000"), 65001..u16::MAX);
        assert_eq!(non_ephemeral_range("15000 60999"), 3000..15000);
        assert_eq!(non_ephemeral_range(""), 20768..32768);
        assert_eq!(non_ephemeral_range("garbage"), 20768..32768);
    }
}
