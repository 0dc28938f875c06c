//! Trailers of one HTTP/2 request, between the client's stream and the backend's.
//!
//! HTTP/2 can end a message with a header block (trailers); gRPC puts its status there
//! (`grpc-status`, `grpc-message`). The gateway's request model (an actix request and a
//! streaming body) has no place for them, so the HTTP/2 server ([`super::h2_server`]) gives each
//! stream one [`Trailers`] handle, carried to the forwarder in the request's extensions and the
//! [`Exchange`](super::exchange::Exchange):
//!
//! - the client's request trailers are put in it when the client's body ends, and the HTTP/2
//!   upstream ([`super::upstream_h2`]) sends them after the body it forwards;
//! - the backend's response trailers are put in it when the backend's body ends, before that
//!   body reports its end, and the HTTP/2 server sends them when it has sent the body.
//!
//! Both sides of a stream run on the worker thread that owns the connection: no locks.

use std::cell::RefCell;
use std::rc::Rc;

use http::HeaderMap;

/// The trailers of one HTTP/2 stream, both directions; cloning shares them.
#[derive(Clone, Default)]
pub struct Trailers(Rc<Slots>);

#[derive(Default)]
struct Slots {
    request: RefCell<Option<HeaderMap>>,
    response: RefCell<Option<HeaderMap>>,
}

impl Trailers {
    pub fn set_request(&self, trailers: HeaderMap) {
        *self.0.request.borrow_mut() = Some(trailers);
    }

    pub fn has_request(&self) -> bool {
        self.0.request.borrow().is_some()
    }

    /// The client's request trailers (a copy: a retried request sends them again).
    pub fn request(&self) -> Option<HeaderMap> {
        self.0.request.borrow().clone()
    }

    pub fn set_response(&self, trailers: HeaderMap) {
        *self.0.response.borrow_mut() = Some(trailers);
    }

    pub fn take_response(&self) -> Option<HeaderMap> {
        self.0.response.borrow_mut().take()
    }

    /// `grpc-status` of the response trailers, if the backend sent one.
    pub fn grpc_status(&self) -> Option<u16> {
        self.0
            .response
            .borrow()
            .as_ref()
            .and_then(|t| grpc_status(t.get("grpc-status")?.as_bytes()))
    }
}

/// A `grpc-status` value (a decimal code).
pub fn grpc_status(value: &[u8]) -> Option<u16> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}
