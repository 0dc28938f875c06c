//! Loopback port allocation for processes the harness spawns.
//!
//! A child process needs its port number before it starts, so we cannot hand it a bound
//! listener: we ask the kernel for an ephemeral port, release it and pass the number on. That
//! leaves a small window in which someone else may take the port. The kernel's own choice makes
//! collisions with other programs rare; the process-wide registry below removes the common
//! case, two calls in one test binary (tests run in parallel threads) that would otherwise be
//! handed the same just-released port.
//!
//! In-process servers (backend, fault proxy) don't use this: they bind `127.0.0.1:0` and keep
//! the listener, which has no window at all.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{LazyLock, Mutex};

static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(Default::default);

/// Returns a loopback TCP port that was free a moment ago and that no other call in this
/// process has returned.
///
/// # Panics
///
/// If the loopback interface cannot be bound at all, which makes every test meaningless.
pub fn free_port() -> u16 {
    // A handful of attempts is plenty: the kernel rotates through the ephemeral range, so a
    // repeat is unusual even after thousands of calls.
    for _ in 0..64 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("could not find a loopback port that was not already handed out in this process");
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
    fn ports_are_bindable() {
        let addr = free_addr();
        TcpListener::bind(addr).expect("a port from free_port() binds");
    }
}
