//! The traffic listener's connections.
//!
//! actix-http's HTTP/1 codec answers two kinds of broken request itself, before any service
//! sees them, with an empty body: a head it cannot parse (400) and a head with more than 96
//! header fields or beyond its 128 KiB buffer (431). Every other refusal of the gateway is a
//! JSON body (`super::error`), and clients and log pipelines rely on that shape.
//!
//! [`Connection`] wraps each accepted socket and replaces such an answer with the gateway's
//! own. It is exact rather than a guess: it only acts on the first answer of a connection on
//! which no request reached the gateway's handler (the handler marks the connection through
//! [`ConnState`]), so it can only be the codec's; and only when that answer is the bare head the
//! codec writes (status, `content-length: 0`, `connection`, `date`, nothing else).
//!
//! A request body with broken chunked framing is the other case: the codec reports it as an
//! I/O error and drops the connection without an answer. When a request is dropped unanswered
//! while its client is still connected and the gateway is not stopping, that is what happened
//! (a client that went away shows as end-of-stream or an error on the socket first), and the
//! connection writes the gateway's 400 as it closes (plain TCP; over TLS the connection just
//! closes, counted the same way).

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use actix_web::http::StatusCode;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::GatewayError;

/// What the handler and the connection tell each other, one per connection.
#[derive(Clone)]
pub struct ConnState(Rc<Flags>);

struct Flags {
    /// A request reached the handler: from then on answers on this connection may be the
    /// gateway's (or a backend's) and are never touched.
    answered: Cell<bool>,
    /// No end-of-stream or error seen on the socket.
    peer_open: Cell<bool>,
    /// The handler's request was dropped by the codec for its framing: answer 400 on close.
    refuse_framing: Cell<bool>,
    /// The gateway ends the connection (an idle or stopping WebSocket): every further read or
    /// write fails, so the HTTP codec drops it even while it waits for a client that does not
    /// read.
    cut: Cell<bool>,
}

impl Default for ConnState {
    fn default() -> Self {
        Self(Rc::new(Flags {
            answered: Cell::new(false),
            peer_open: Cell::new(true),
            refuse_framing: Cell::new(false),
            cut: Cell::new(false),
        }))
    }
}

impl ConnState {
    pub fn mark(&self) {
        self.0.answered.set(true);
    }

    /// Whether the client is still connected (as far as the socket has told).
    pub fn peer_open(&self) -> bool {
        self.0.peer_open.get()
    }

    /// Asks the connection to write the gateway's 400 for a broken request body as it closes.
    pub fn refuse_framing(&self) {
        self.0.refuse_framing.set(true);
    }

    /// Ends the connection: its next read or write fails (the HTTP codec's task must be woken
    /// to try one).
    pub fn cut(&self) {
        self.0.cut.set(true);
    }
}

/// A stream that can take a few bytes without waiting (for the answer written on close).
pub trait WriteNow {
    fn write_now(&self, buf: &[u8]) -> io::Result<usize>;
}

impl WriteNow for tokio::net::TcpStream {
    fn write_now(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write(buf)
    }
}

/// An accepted connection (plain TCP or TLS).
pub struct Connection<T: WriteNow> {
    io: T,
    answered: ConnState,
    /// Whether the first answer was examined.
    checked: bool,
    /// The replacement still to be written, ahead of anything else.
    pending: Bytes,
}

impl<T: WriteNow> Connection<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            answered: ConnState::default(),
            checked: false,
            pending: Bytes::new(),
        }
    }

    /// The handle the handler marks (installed as connection data).
    pub fn state(&self) -> ConnState {
        self.answered.clone()
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: WriteNow> Drop for Connection<T> {
    fn drop(&mut self) {
        if self.answered.0.refuse_framing.get() && self.pending.is_empty() {
            // Best effort: a small answer into an idle socket's buffer; if it does not fit,
            // the connection closes as the codec meant it to.
            let _ = self.io.write_now(&BODY_UNREADABLE.bytes);
        }
    }
}

impl<T: AsyncRead + Unpin + WriteNow> AsyncRead for Connection<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.answered.0.cut.get() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                this.answered.0.peer_open.set(false)
            }
            Poll::Ready(Err(_)) => this.answered.0.peer_open.set(false),
            _ => {}
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin + WriteNow> Connection<T> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin + WriteNow> AsyncWrite for Connection<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.answered.0.cut.get() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        std::task::ready!(this.drain(cx))?;
        if !this.checked {
            this.checked = true;
            if !this.answered.0.answered.get()
                && let Some((head_len, replacement)) = codec_refusal(buf)
            {
                metrics::counter!(
                    "outpost_requests_total",
                    "api" => "unmatched",
                    "operation" => "unmatched",
                    "status" => replacement.status.as_str(),
                )
                .increment(1);
                this.pending = replacement.bytes.clone();
                // The codec's head is consumed now, whatever happens: ours goes out in its
                // place, here or in the next write, flush or shutdown.
                if let Poll::Ready(Err(e)) = this.drain(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(head_len));
            }
        }
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Err(_)) = written {
            this.answered.0.peer_open.set(false);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

struct Replacement {
    status: StatusCode,
    bytes: Bytes,
}

static MALFORMED: LazyLock<Replacement> =
    LazyLock::new(|| replacement(&GatewayError::malformed_request()));
static HEAD_TOO_LARGE: LazyLock<Replacement> =
    LazyLock::new(|| replacement(&GatewayError::head_too_large()));
static BODY_UNREADABLE: LazyLock<Replacement> = LazyLock::new(|| {
    replacement(&GatewayError::bad_body(
        &"its framing is broken (e.g. an invalid chunk size)",
    ))
});

fn replacement(err: &GatewayError) -> Replacement {
    let body = err.json_body();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        err.status.as_str(),
        err.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    Replacement {
        status: err.status,
        bytes: Bytes::from(bytes),
    }
}

/// The codec's own bare 400/431 head at the start of `buf`: its length and what replaces it.
fn codec_refusal(buf: &[u8]) -> Option<(usize, &'static Replacement)> {
    let replacement: &'static Replacement =
        if buf.starts_with(b"HTTP/1.1 431 ") || buf.starts_with(b"HTTP/1.0 431 ") {
            &HEAD_TOO_LARGE
        } else if buf.starts_with(b"HTTP/1.1 400 ") || buf.starts_with(b"HTTP/1.0 400 ") {
            &MALFORMED
        } else {
            return None;
        };
    let window = &buf[..buf.len().min(512)];
    let end = window.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut bare = true;
    let mut empty = false;
    for line in head.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => empty = value.trim() == "0",
            "connection" | "date" => {}
            _ => bare = false,
        }
    }
    (bare && empty && end == buf.len()).then_some((end, replacement))
}

/// A worker's view of the server's graceful stop, for its HTTP/1.1 connections.
///
/// actix-http polls a connection's stop signal every time it polls the connection (twice per
/// request), and `GracefulShutdownSignal::notified` is a `watch` receiver's `changed()`: about
/// 230 instructions per poll. Here one task per worker waits for the server's signal and each
/// connection's future only checks a flag and keeps its waker in a slot (about 20).
#[derive(Clone)]
pub struct LocalStop(Rc<StopState>);

struct StopState {
    signal: actix_server::GracefulShutdownSignal,
    watching: Cell<bool>,
    stopped: Cell<bool>,
    /// Wakers of the connections waiting, by slot; `None`: a free slot.
    wakers: std::cell::RefCell<Vec<Option<std::task::Waker>>>,
    free: std::cell::RefCell<Vec<usize>>,
}

impl LocalStop {
    /// Made on the worker's thread (one per worker and listener).
    pub fn new(signal: actix_server::GracefulShutdownSignal) -> Self {
        Self(Rc::new(StopState {
            signal,
            watching: Cell::new(false),
            stopped: Cell::new(false),
            wakers: Default::default(),
            free: Default::default(),
        }))
    }

    /// Resolves when the server starts its graceful stop (at once if it has).
    pub fn notified(&self) -> StopNotified {
        StopNotified {
            state: self.0.clone(),
            slot: None,
        }
    }

    /// The task that waits for the server's signal, started by the first connection that
    /// waits (on the worker's runtime).
    fn watch(&self) {
        if self.0.watching.replace(true) {
            return;
        }
        let state = self.0.clone();
        actix_rt::spawn(async move {
            state.signal.notified().await;
            state.stopped.set(true);
            let wakers = std::mem::take(&mut *state.wakers.borrow_mut());
            for waker in wakers.into_iter().flatten() {
                waker.wake();
            }
        });
    }
}

/// One connection's wait for [`LocalStop`].
pub struct StopNotified {
    state: Rc<StopState>,
    slot: Option<usize>,
}

impl std::future::Future for StopNotified {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.stopped.get() {
            return Poll::Ready(());
        }
        let state = self.state.clone();
        let mut wakers = state.wakers.borrow_mut();
        match self.slot {
            Some(i) => match &mut wakers[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let i = match state.free.borrow_mut().pop() {
                    Some(i) => {
                        wakers[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        wakers.push(Some(cx.waker().clone()));
                        wakers.len() - 1
                    }
                };
                self.slot = Some(i);
                drop(wakers);
                LocalStop(state).watch();
            }
        }
        Poll::Pending
    }
}

impl Drop for StopNotified {
    fn drop(&mut self) {
        let Some(i) = self.slot else { return };
        if self.state.stopped.get() {
            return;
        }
        let mut wakers = self.state.wakers.borrow_mut();
        if let Some(slot) = wakers.get_mut(i) {
            *slot = None;
            self.state.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_cut_connection_fails_every_read_and_write() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut conn = Connection::new(accepted);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(conn.read(&mut buf).await.unwrap() > 0);
        conn.state().cut();
        // Bytes are waiting, the socket is fine: the connection still refuses both ways.
        client.write_all(b"more").await.unwrap();
        let read = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(read.kind(), io::ErrorKind::ConnectionAborted);
        let write = conn.write(b"HTTP/1.1 200 OK\r\n").await.unwrap_err();
        assert_eq!(write.kind(), io::ErrorKind::ConnectionAborted);
    }

    const CODEC_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\ndate: Mon, 07 Dec 2026 10:47:42 GMT\r\n\r\n";

    #[test]
    fn only_the_codecs_bare_heads_are_replaced() {
        let (len, r) = codec_refusal(CODEC_431).unwrap();
        assert_eq!(len, CODEC_431.len());
        assert_eq!(r.status, 431);
        let text = String::from_utf8_lossy(&r.bytes);
        assert!(text.contains("\"statusCode\":431"), "{text}");
        let (_, r) = codec_refusal(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 400);

        // Anything else is left alone: other headers, a body, other statuses.
        assert!(
            codec_refusal(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nserver: x\r\n\r\n")
                .is_none()
        );
        assert!(
            codec_refusal(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}").is_none()
        );
        assert!(codec_refusal(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(
            codec_refusal(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n")
                .is_none()
        );
    }
}
