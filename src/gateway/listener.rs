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
//! [`Answered`]), so it can only be the codec's; and only when that answer is the bare head the
//! codec writes (status, `content-length: 0`, `connection`, `date`, nothing else).

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

/// Set by the handler on the first request of a connection: from then on, answers on this
/// connection may be the gateway's (or a backend's) and are never touched.
#[derive(Clone, Default)]
pub struct Answered(Rc<Cell<bool>>);

impl Answered {
    pub fn mark(&self) {
        self.0.set(true);
    }
}

/// An accepted connection (any stream: TCP now, TLS later).
pub struct Connection<T> {
    io: T,
    answered: Answered,
    /// Whether the first answer was examined.
    checked: bool,
    /// The replacement still to be written, ahead of anything else.
    pending: Bytes,
}

impl<T> Connection<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            answered: Answered::default(),
            checked: false,
            pending: Bytes::new(),
        }
    }

    /// The handle the handler marks (installed as connection data).
    pub fn answered(&self) -> Answered {
        self.answered.clone()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Connection<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> Connection<T> {
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

impl<T: AsyncWrite + Unpin> AsyncWrite for Connection<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.drain(cx))?;
        if !this.checked {
            this.checked = true;
            if !this.answered.0.get()
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
        Pin::new(&mut this.io).poll_write(cx, buf)
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

#[cfg(test)]
mod tests {
    use super::*;

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
