//! A TCP proxy that breaks the network on command.
//!
//! Put it between a gateway and what it depends on (control plane, Redis, a backend) and
//! switch its [`FaultMode`] while traffic flows to reproduce the faults of the design brief,
//! section 3: a peer that refuses (process down), a peer that stops answering (partition,
//! dropped packets, a hung server), or a slow link.
//!
//! The proxy runs on its own thread with its own single-threaded runtime, so it keeps working
//! whatever the test does with its own runtime (including blocking it), and dropping the
//! handle tears down the thread, the listener and every connection before `drop` returns.
//!
//! Faults are applied per chunk as bytes flow, and every connection watches the mode, so a
//! switch takes effect on existing connections too, not only on new ones, which is the case
//! connection pools care about.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultMode {
    /// Forward bytes both ways untouched.
    #[default]
    Pass,
    /// Reset existing connections and every new one right after accepting it: what clients see
    /// when the peer process is gone.
    Refuse,
    /// Accept connections but forward nothing and answer nothing; existing connections freeze.
    /// Bytes read before the switch are held, not dropped, so when the mode goes back to `Pass`
    /// traffic resumes as it does when a partition heals (and connections accepted meanwhile
    /// only then connect upstream).
    BlackHole,
    /// Hold every chunk this long before forwarding it, in both directions, so a
    /// request/response exchange takes at least twice the delay longer.
    Delay(Duration),
}

/// A loopback TCP proxy to one upstream address; see the [module docs](self).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<FaultMode>,
    stats: Arc<Stats>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Stats {
    total: AtomicU64,
    open: AtomicU64,
}

/// Decrements the open-connection count however the connection task ends (including abort).
struct OpenGuard(Arc<Stats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FaultProxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `upstream`, in [`FaultMode::Pass`].
    ///
    /// # Panics
    ///
    /// If the loopback listener or the proxy thread cannot be created.
    pub fn start(upstream: SocketAddr) -> Self {
        Self::start_in(upstream, FaultMode::Pass)
    }

    /// Starts with a mode other than `Pass`, e.g. a control plane that is unreachable from the
    /// gateway's very first attempt.
    pub fn start_in(upstream: SocketAddr, mode: FaultMode) -> Self {
        // Bound here, not on the proxy thread, so `addr()` is valid as soon as we return.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("bind fault proxy listener");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("listener address");

        let (mode_tx, mode_rx) = watch::channel(mode);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let stats = Arc::new(Stats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fault proxy runtime");
                runtime.block_on(async move {
                    let listener =
                        TcpListener::from_std(listener).expect("register listener with tokio");
                    accept_loop(listener, upstream, mode_rx, thread_stats, shutdown_rx).await;
                });
                // Dropping the runtime here closes every socket the connection tasks held.
            })
            .expect("spawn fault proxy thread");

        Self {
            addr,
            upstream,
            mode: mode_tx,
            stats,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// The address clients should connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Switches the fault mode; applies to existing and new connections.
    pub fn set_mode(&self, mode: FaultMode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> FaultMode {
        *self.mode.borrow()
    }

    /// Connections accepted since start, including the ones refused or black-holed: this is
    /// how a test sees that a client kept trying to reconnect.
    pub fn connections_total(&self) -> u64 {
        self.stats.total.load(Ordering::Relaxed)
    }

    /// Connections currently held by the proxy.
    pub fn connections_open(&self) -> u64 {
        self.stats.open.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Either of these ends the accept loop; the join makes teardown synchronous, so the port
        // is closed and upstream connections are gone once the handle is.
        drop(self.shutdown.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<FaultMode>,
    stats: Arc<Stats>,
    mut shutdown: oneshot::Receiver<()>,
) {
    // Owning the connection tasks here means they are all aborted when the loop returns.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    stats.total.fetch_add(1, Ordering::Relaxed);
                    stats.open.fetch_add(1, Ordering::Relaxed);
                    let guard = OpenGuard(Arc::clone(&stats));
                    connections.spawn(handle(client, upstream, mode.clone(), guard));
                }
                // Accept errors are per connection or transient (e.g. fd exhaustion): back off
                // briefly rather than spin, and keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished tasks so a long test doesn't accumulate them.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Why a connection stopped forwarding.
enum Stop {
    /// The mode became `Refuse`: reset both sides.
    Refused,
    /// A socket failed or the proxy is shutting down: just close.
    Closed,
}

async fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<FaultMode>,
    _open: OpenGuard,
) {
    let _ = client.set_nodelay(true);
    // A connection accepted during a black hole waits here, before touching the upstream.
    if gate(&mut mode).await.is_err() {
        reset(&client);
        return;
    }
    let mut server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(_) => {
            // Nothing behind us: pass the refusal on rather than leave the client hanging.
            reset(&client);
            return;
        }
    };
    let _ = server.set_nodelay(true);

    let outcome = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        tokio::try_join!(
            pump(&mut client_read, &mut server_write, mode.clone()),
            pump(&mut server_read, &mut client_write, mode.clone()),
        )
    };
    if let Err(Stop::Refused) = outcome {
        reset(&client);
        reset(&server);
    }
}

/// Makes the coming close an RST instead of a FIN, as a dead peer would.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Waits while the mode is `BlackHole`; fails if it is `Refuse`.
async fn gate(mode: &mut watch::Receiver<FaultMode>) -> Result<(), Stop> {
    loop {
        let current = *mode.borrow_and_update();
        match current {
            FaultMode::Refuse => return Err(Stop::Refused),
            FaultMode::BlackHole => mode.changed().await.map_err(|_| Stop::Closed)?,
            FaultMode::Pass | FaultMode::Delay(_) => return Ok(()),
        }
    }
}

/// Resolves when the mode becomes `Refuse` (or the proxy goes away).
async fn refused(mode: &mut watch::Receiver<FaultMode>) -> Stop {
    loop {
        if *mode.borrow_and_update() == FaultMode::Refuse {
            return Stop::Refused;
        }
        if mode.changed().await.is_err() {
            return Stop::Closed;
        }
    }
}

/// Copies one direction, consulting the mode before each read and before each write.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    mut mode: watch::Receiver<FaultMode>,
) -> Result<(), Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // While black-holed we stop reading altogether: bytes back up in the kernel and then
        // in the sender, as they do on a dead link.
        gate(&mut mode).await?;
        let n = tokio::select! {
            read = from.read(&mut buf) => read.map_err(|_| Stop::Closed)?,
            // `read` is cancel-safe: nothing was consumed, re-check the mode and read again.
            changed = mode.changed() => {
                changed.map_err(|_| Stop::Closed)?;
                continue;
            }
        };
        if n == 0 {
            // Half-close: pass the FIN on and let the other direction finish.
            let _ = to.shutdown().await;
            return Ok(());
        }
        // The chunk is in flight; apply whatever the mode is *now*.
        loop {
            let current = *mode.borrow_and_update();
            match current {
                FaultMode::Pass => break,
                FaultMode::Refuse => return Err(Stop::Refused),
                FaultMode::BlackHole => mode.changed().await.map_err(|_| Stop::Closed)?,
                FaultMode::Delay(delay) => tokio::select! {
                    () = tokio::time::sleep(delay) => break,
                    changed = mode.changed() => changed.map_err(|_| Stop::Closed)?,
                },
            }
        }
        // A peer that stops reading would block this forever; only a refusal cuts it short
        // (any other mode change would lose track of a partial write).
        tokio::select! {
            written = to.write_all(&buf[..n]) => written.map_err(|_| Stop::Closed)?,
            stop = refused(&mut mode) => return Err(stop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::time::Instant;

    use crate::wait::{eventually, ms, secs};

    /// Writes `payload` and reads as many bytes back, concurrently so a payload larger than
    /// the socket buffers can't deadlock against the echo.
    async fn echo_round_trip(stream: &mut TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
        let (mut r, mut w) = stream.split();
        let mut got = vec![0u8; payload.len()];
        tokio::try_join!(w.write_all(payload), r.read_exact(&mut got))?;
        Ok(got)
    }

    /// A tiny echo server on the test's runtime, counting accepted connections.
    async fn echo_server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, accepted)
    }

    /// Reads until EOF or error; `true` if the connection was closed (either way) in time.
    async fn closes_within(stream: &mut TcpStream, timeout: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(timeout, stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn pass_forwards_both_ways() {
        let (upstream, _) = echo_server().await;
        let proxy = FaultProxy::start(upstream);
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            echo_round_trip(&mut conn, b"hello").await.unwrap(),
            b"hello"
        );
        // Larger than one chunk, to exercise the copy loop.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(echo_round_trip(&mut conn, &big).await.unwrap(), big);
        assert_eq!(proxy.connections_total(), 1);
        assert_eq!(proxy.connections_open(), 1);
        drop(conn);
        eventually(secs(10), ms(10), async || match proxy.connections_open() {
            0 => Ok(()),
            n => Err(format!("{n} connections still open")),
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn refuse_closes_existing_and_new_connections() {
        let (upstream, _) = echo_server().await;
        let proxy = FaultProxy::start(upstream);
        let mut existing = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            echo_round_trip(&mut existing, b"ping").await.unwrap(),
            b"ping"
        );

        proxy.set_mode(FaultMode::Refuse);
        assert!(
            closes_within(&mut existing, secs(10)).await,
            "existing connection not closed"
        );
        // The listener stays up (the port stays ours), but every connection dies at once: the
        // reset can even beat `connect` to the client, which then fails outright.
        if let Ok(mut fresh) = TcpStream::connect(proxy.addr()).await {
            assert!(
                closes_within(&mut fresh, secs(10)).await,
                "new connection not closed"
            );
        }

        proxy.set_mode(FaultMode::Pass);
        let mut healed = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            echo_round_trip(&mut healed, b"back").await.unwrap(),
            b"back"
        );
        assert_eq!(proxy.connections_total(), 3);
    }

    #[tokio::test]
    async fn black_hole_holds_traffic_until_healed() {
        let (upstream, upstream_accepts) = echo_server().await;
        let proxy = FaultProxy::start(upstream);
        let mut existing = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(echo_round_trip(&mut existing, b"a").await.unwrap(), b"a");

        proxy.set_mode(FaultMode::BlackHole);
        // Only "nothing arrived yet" is asserted on a timer, which can't fail spuriously.
        let silent = tokio::time::timeout(ms(300), echo_round_trip(&mut existing, b"b")).await;
        assert!(silent.is_err(), "black hole answered: {silent:?}");

        let mut fresh = TcpStream::connect(proxy.addr())
            .await
            .expect("black hole still accepts");
        fresh.write_all(b"c").await.unwrap();
        let mut byte = [0u8; 1];
        assert!(
            tokio::time::timeout(ms(300), fresh.read(&mut byte))
                .await
                .is_err()
        );
        assert_eq!(
            upstream_accepts.load(Ordering::Relaxed),
            1,
            "black-holed connection reached upstream"
        );

        proxy.set_mode(FaultMode::Pass);
        // The held bytes flow once the hole heals.
        let mut got = [0u8; 1];
        tokio::time::timeout(secs(10), existing.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"b");
        tokio::time::timeout(secs(10), fresh.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"c");
    }

    #[tokio::test]
    async fn delay_adds_latency_each_way() {
        let (upstream, _) = echo_server().await;
        let proxy = FaultProxy::start(upstream);
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        let delay = ms(150);
        proxy.set_mode(FaultMode::Delay(delay));
        let started = Instant::now();
        assert_eq!(echo_round_trip(&mut conn, b"slow").await.unwrap(), b"slow");
        // Lower bound only: one delay out, one back.
        assert!(
            started.elapsed() >= delay * 2,
            "round trip took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn drop_closes_listener_and_connections() {
        let (upstream, _) = echo_server().await;
        let proxy = FaultProxy::start(upstream);
        let addr = proxy.addr();
        let mut conn = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echo_round_trip(&mut conn, b"x").await.unwrap(), b"x");
        drop(proxy);
        assert!(closes_within(&mut conn, secs(10)).await);
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "listener still open after drop"
        );
    }

    #[tokio::test]
    async fn unreachable_upstream_resets_client() {
        // A port nobody listens on: reserved, then released by `free_port`.
        let upstream = crate::ports::free_addr();
        let proxy = FaultProxy::start(upstream);
        // As with `Refuse`, the reset may arrive before `connect` returns.
        if let Ok(mut conn) = TcpStream::connect(proxy.addr()).await {
            assert!(closes_within(&mut conn, secs(10)).await);
        }
        eventually(secs(10), ms(10), async || match proxy.connections_total() {
            1 => Ok(()),
            n => Err(format!("{n} connections accepted")),
        })
        .await
        .unwrap();
    }
}
