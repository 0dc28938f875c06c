//! What the cache holds, and how an entry is written to the shared tier.
//!
//! Encoding: one format byte ([`FORMAT_VERSION`]), then the bincode (serde, standard config)
//! encoding of `Meta`, then the body bytes as they are (no per-byte serde overhead on large
//! bodies). An entry whose format byte differs, or that does not decode, is a miss: a gateway
//! upgrade never serves a misread entry.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Format byte of encoded entries; bump when `Meta` or the layout changes.
pub const FORMAT_VERSION: u8 = 1;

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResponse {
    pub status: u16,
    /// End-to-end headers as received (hop-by-hop headers and `Set-Cookie` never stored).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
    /// Milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
    pub ttl_ms: u64,
}

impl CachedResponse {
    pub fn expires_at_ms(&self) -> u64 {
        self.stored_at_ms.saturating_add(self.ttl_ms)
    }

    /// Time left at `now_ms` (zero once expired).
    pub fn remaining(&self, now_ms: u64) -> Duration {
        Duration::from_millis(self.expires_at_ms().saturating_sub(now_ms))
    }

    /// Seconds since stored, for the `Age` header of a hit.
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms) / 1000
    }

    /// Bytes held, for the in-process tier's bound.
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 16)
            .sum();
        (self.body.len() + headers + 64) as u64
    }
}

/// Everything but the body, bincode-encoded.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    kind: Kind,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    stored_at_ms: u64,
    ttl_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    Response,
    /// A `cache-store-value` value: the body is its UTF-8 text.
    Value,
}

/// A cached value (`cache-store-value`), with its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedValue {
    pub value: String,
    pub stored_at_ms: u64,
    pub ttl_ms: u64,
}

impl CachedValue {
    pub fn expires_at_ms(&self) -> u64 {
        self.stored_at_ms.saturating_add(self.ttl_ms)
    }
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn encode(meta: &Meta, body: &[u8]) -> Bytes {
    let mut out = vec![FORMAT_VERSION];
    let head = bincode::serde::encode_to_vec(meta, config()).unwrap_or_default();
    out.reserve(head.len() + body.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(body);
    Bytes::from(out)
}

fn decode(bytes: &Bytes) -> Option<(Meta, Bytes)> {
    let (&version, rest) = bytes.split_first()?;
    if version != FORMAT_VERSION {
        return None;
    }
    let (meta, used): (Meta, usize) = bincode::serde::decode_from_slice(rest, config()).ok()?;
    Some((meta, bytes.slice(1 + used..)))
}

impl CachedResponse {
    pub fn encode(&self) -> Bytes {
        encode(
            &Meta {
                kind: Kind::Response,
                status: self.status,
                headers: self.headers.clone(),
                stored_at_ms: self.stored_at_ms,
                ttl_ms: self.ttl_ms,
            },
            &self.body,
        )
    }

    pub fn decode(bytes: &Bytes) -> Option<CachedResponse> {
        let (meta, body) = decode(bytes)?;
        (meta.kind == Kind::Response).then_some(CachedResponse {
            status: meta.status,
            headers: meta.headers,
            body,
            stored_at_ms: meta.stored_at_ms,
            ttl_ms: meta.ttl_ms,
        })
    }
}

impl CachedValue {
    pub fn encode(&self) -> Bytes {
        encode(
            &Meta {
                kind: Kind::Value,
                status: 0,
                headers: Vec::new(),
                stored_at_ms: self.stored_at_ms,
                ttl_ms: self.ttl_ms,
            },
            self.value.as_bytes(),
        )
    }

    pub fn decode(bytes: &Bytes) -> Option<CachedValue> {
        let (meta, body) = decode(bytes)?;
        if meta.kind != Kind::Value {
            return None;
        }
        Some(CachedValue {
            value: String::from_utf8(body.to_vec()).ok()?,
            stored_at_ms: meta.stored_at_ms,
            ttl_ms: meta.ttl_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_formats() {
        let r = CachedResponse {
            status: 200,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: Bytes::from_static(b"{\"a\":1}"),
            stored_at_ms: 1_700_000_000_000,
            ttl_ms: 60_000,
        };
        let bytes = r.encode();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(CachedResponse::decode(&bytes), Some(r.clone()));
        assert_eq!(CachedValue::decode(&bytes), None, "kinds do not mix");
        let mut other = bytes.to_vec();
        other[0] = FORMAT_VERSION + 1;
        assert_eq!(CachedResponse::decode(&Bytes::from(other)), None);
        assert_eq!(
            CachedResponse::decode(&Bytes::from_static(b"\x01garbage")),
            None
        );
        assert_eq!(r.remaining(r.stored_at_ms + 59_000), Duration::from_secs(1));
        assert_eq!(r.age_secs(r.stored_at_ms + 2_500), 2);

        let v = CachedValue {
            value: "token-é".into(),
            stored_at_ms: 5,
            ttl_ms: 10,
        };
        assert_eq!(CachedValue::decode(&v.encode()), Some(v));
    }
}
