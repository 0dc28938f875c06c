//! When a request may be answered from the cache, and when a response may be stored (RFC 9111,
//! as a shared cache, simplified: no revalidation, no partial content).
//!
//! - Methods: `GET` and `HEAD` are looked up; only `GET` responses are stored (a `HEAD` is
//!   answered from the stored `GET` without its body).
//! - Statuses stored: [`CACHEABLE_STATUSES`], the "heuristically cacheable" codes of RFC 9110
//!   §15.1 except 206 (ranges are not cached).
//! - Request `Cache-Control: no-store` or `no-cache` (or `Pragma: no-cache`): no lookup (the
//!   request goes to the backend) and no store, unless the policy says `ignore-cache-control`.
//! - Response `Cache-Control: no-store`, `no-cache` or `private`, a `Set-Cookie` header, or
//!   `Vary: *`: not stored, unless `ignore-cache-control` (which never stores `Set-Cookie`).
//! - Request with `Authorization`, when the key does not vary by developer: stored only if the
//!   response says `public`, `s-maxage` or `must-revalidate` (RFC 9111 §3.5), so one caller's
//!   authorised answer is not served to another.
//! - Lifetime: the policy's `duration`, shortened to `s-maxage` (else `max-age`) when the
//!   response gives a smaller one.

use std::time::Duration;

/// Response statuses that may be stored.
pub const CACHEABLE_STATUSES: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The directives of `Cache-Control` that matter here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` value of a message (directives are case-insensitive).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in values {
            for directive in value.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    // `no-cache="field"` only restricts fields; treat any form as no-cache.
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                    "max-age" => cc.max_age = secs().or(Some(0)),
                    "s-maxage" => cc.s_maxage = secs().or(Some(0)),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// What a lookup needs to know about the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub cache_control: CacheControl,
    /// `Pragma: no-cache` (HTTP/1.0 clients).
    pub pragma_no_cache: bool,
    pub has_authorization: bool,
}

/// What a store needs to know about the response.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseFacts {
    pub status: u16,
    pub cache_control: CacheControl,
    pub has_set_cookie: bool,
    pub vary_star: bool,
}

/// May this request be answered from the cache?
pub fn lookup_allowed(req: &RequestFacts<'_>, ignore_cache_control: bool) -> bool {
    let method_ok =
        req.method.eq_ignore_ascii_case("GET") || req.method.eq_ignore_ascii_case("HEAD");
    method_ok
        && (ignore_cache_control
            || !(req.cache_control.no_store || req.cache_control.no_cache || req.pragma_no_cache))
}

/// How long this response may be stored, `None` when it must not be.
pub fn store_ttl(
    req: &RequestFacts<'_>,
    resp: &ResponseFacts,
    duration: Duration,
    vary_by_developer: bool,
    ignore_cache_control: bool,
) -> Option<Duration> {
    if !req.method.eq_ignore_ascii_case("GET") || !CACHEABLE_STATUSES.contains(&resp.status) {
        return None;
    }
    if resp.has_set_cookie || duration.is_zero() {
        return None;
    }
    if ignore_cache_control {
        return Some(duration);
    }
    let cc = &resp.cache_control;
    if req.cache_control.no_store || cc.no_store || cc.no_cache || cc.private || resp.vary_star {
        return None;
    }
    if req.has_authorization
        && !vary_by_developer
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
    {
        return None;
    }
    let ttl = match cc.s_maxage.or(cc.max_age) {
        Some(secs) => duration.min(Duration::from_secs(secs)),
        None => duration,
    };
    (!ttl.is_zero()).then_some(ttl)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and others a cache must not replay.
pub fn storable_header(name: &str) -> bool {
    const SKIP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "age",
    ];
    !SKIP.iter().any(|s| name.eq_ignore_ascii_case(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn get() -> RequestFacts<'static> {
        RequestFacts {
            method: "GET",
            ..RequestFacts::default()
        }
    }

    fn ok(cc: &str) -> ResponseFacts {
        ResponseFacts {
            status: 200,
            cache_control: CacheControl::parse([cc]),
            ..ResponseFacts::default()
        }
    }

    #[test]
    fn parses_directives() {
        let cc = CacheControl::parse(["Public, max-age=30", "s-maxage=\"10\", no-cache=\"x\""]);
        assert!(cc.public && cc.no_cache && !cc.no_store);
        assert_eq!((cc.max_age, cc.s_maxage), (Some(30), Some(10)));
    }

    #[test]
    fn lookups() {
        assert!(lookup_allowed(&get(), false));
        let head = RequestFacts {
            method: "HEAD",
            ..get()
        };
        assert!(lookup_allowed(&head, false));
        let post = RequestFacts {
            method: "POST",
            ..get()
        };
        assert!(!lookup_allowed(&post, true));
        let no_cache = RequestFacts {
            cache_control: CacheControl::parse(["no-cache"]),
            ..get()
        };
        assert!(!lookup_allowed(&no_cache, false));
        assert!(lookup_allowed(&no_cache, true));
        let pragma = RequestFacts {
            pragma_no_cache: true,
            ..get()
        };
        assert!(!lookup_allowed(&pragma, false));
    }

    #[test]
    fn stores() {
        assert_eq!(store_ttl(&get(), &ok(""), MIN, false, false), Some(MIN));
        assert_eq!(
            store_ttl(&get(), &ok("max-age=5"), MIN, false, false),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            store_ttl(&get(), &ok("max-age=5, s-maxage=20"), MIN, false, false),
            Some(Duration::from_secs(20))
        );
        for cc in ["no-store", "private", "no-cache", "max-age=0"] {
            assert_eq!(store_ttl(&get(), &ok(cc), MIN, false, false), None, "{cc}");
            assert_eq!(
                store_ttl(&get(), &ok(cc), MIN, false, true),
                Some(MIN),
                "{cc}"
            );
        }
        let mut r = ok("");
        r.status = 500;
        assert_eq!(store_ttl(&get(), &r, MIN, false, true), None);
        r.status = 404;
        assert!(store_ttl(&get(), &r, MIN, false, false).is_some());
        let mut cookie = ok("");
        cookie.has_set_cookie = true;
        assert_eq!(store_ttl(&get(), &cookie, MIN, false, true), None);
        let head = RequestFacts {
            method: "HEAD",
            ..get()
        };
        assert_eq!(store_ttl(&head, &ok(""), MIN, false, false), None);
        let auth = RequestFacts {
            has_authorization: true,
            ..get()
        };
        assert_eq!(store_ttl(&auth, &ok(""), MIN, false, false), None);
        assert!(store_ttl(&auth, &ok(""), MIN, true, false).is_some());
        assert!(store_ttl(&auth, &ok("public"), MIN, false, false).is_some());
        assert!(storable_header("content-type") && !storable_header("Transfer-Encoding"));
    }
}
