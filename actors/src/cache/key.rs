//! Cache keys.
//!
//! A response key names the gateway, the API and the operation, then hashes what the response
//! varies by: the request path, the query (all of it, or only the `vary-by-query-parameter`
//! names), the `vary-by-header` values, and the subscription when `vary-by-developer`. Parts are
//! length-prefixed before hashing, so no value can be crafted to collide with another
//! combination, and two APIs (two tenants) can never read each other's entries: their names are
//! part of the key in clear.
//!
//! Redis layout: `outpost:c:1:{gateway}:{api}:{operation}:{sha256}` for responses,
//! `outpost:v:1:{gateway}:{key}` for `cache-store-value` values (shared by the gateway's APIs, as
//! in the reference product). `1` is the key format version, independent of configuration.

use std::fmt;

use sha2::{Digest, Sha256};

/// Key format version, part of every key.
pub const KEY_VERSION: u8 = 1;

/// The key of one cached response (or value); cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(std::sync::Arc<str>);

impl CacheKey {
    /// Key of a `cache-store-value` value.
    pub fn value(gateway: &str, key: &str) -> CacheKey {
        CacheKey(format!("outpost:v:{KEY_VERSION}:{gateway}:{key}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Starts a response key.
    pub fn response(gateway: &str, api: &str, operation: &str) -> ResponseKeyBuilder {
        let mut b = ResponseKeyBuilder {
            prefix: format!("outpost:c:{KEY_VERSION}:{gateway}:{api}:{operation}"),
            hash: Sha256::new(),
        };
        // Also hashed: names may contain ':', the clear prefix alone could be ambiguous.
        b.part(b'g', gateway.as_bytes());
        b.part(b'a', api.as_bytes());
        b.part(b'o', operation.as_bytes());
        b
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Adds what a response varies by, in a fixed order.
pub struct ResponseKeyBuilder {
    prefix: String,
    hash: Sha256,
}

impl ResponseKeyBuilder {
    fn part(&mut self, tag: u8, bytes: &[u8]) {
        self.hash.update([tag]);
        self.hash.update((bytes.len() as u64).to_le_bytes());
        self.hash.update(bytes);
    }

    /// The request path (as received, before any rewrite).
    pub fn path(mut self, path: &str) -> Self {
        self.part(b'p', path.as_bytes());
        self
    }

    /// One query parameter (name, value); give them in a stable order (e.g. sorted).
    pub fn query(mut self, name: &str, value: &str) -> Self {
        self.part(b'q', name.as_bytes());
        self.part(b'=', value.as_bytes());
        self
    }

    /// One vary-by header (name as configured, value or absent).
    pub fn header(mut self, name: &str, value: Option<&[u8]>) -> Self {
        self.part(b'h', name.to_ascii_lowercase().as_bytes());
        match value {
            Some(v) => self.part(b'=', v),
            None => self.part(b'-', b""),
        }
        self
    }

    /// The subscription (vary-by-developer); `None` for anonymous calls.
    pub fn subscription(mut self, id: Option<&str>) -> Self {
        self.part(b's', id.unwrap_or("").as_bytes());
        self
    }

    pub fn build(self) -> CacheKey {
        let digest = self.hash.finalize();
        CacheKey(format!("{}:{}", self.prefix, hex::encode(digest)).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_tenants_and_variants() {
        let k = |api: &str, path: &str, sub: Option<&str>| {
            CacheKey::response("gw", api, "get")
                .path(path)
                .subscription(sub)
                .build()
        };
        assert_eq!(k("a", "/x", None), k("a", "/x", None));
        assert_ne!(k("a", "/x", None), k("b", "/x", None));
        assert_ne!(k("a", "/x", None), k("a", "/y", None));
        assert_ne!(k("a", "/x", Some("s1")), k("a", "/x", Some("s2")));
        assert!(
            k("a", "/x", None)
                .as_str()
                .starts_with("outpost:c:1:gw:a:get:")
        );
        // Length prefixes: moving bytes between parts changes the key.
        let q1 = CacheKey::response("g", "a", "o").query("a=b", "c").build();
        let q2 = CacheKey::response("g", "a", "o").query("a", "b=c").build();
        assert_ne!(q1, q2);
        let h1 = CacheKey::response("g", "a", "o")
            .header("Accept", None)
            .build();
        let h2 = CacheKey::response("g", "a", "o")
            .header("accept", Some(b""))
            .build();
        assert_ne!(h1, h2, "absent and empty differ");
        assert_eq!(CacheKey::value("gw", "t").as_str(), "outpost:v:1:gw:t");
    }
}
