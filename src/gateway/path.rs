//! Request paths, normalised once before anything looks at them.
//!
//! Routing, the backend path, `rewrite-uri` output, the cache key and `{request.path}` all see
//! the same normalised path, so a backend that normalises on its own (nginx, most frameworks)
//! cannot be steered outside the API's backend prefix with `..`, `%2e%2e` or `..%2f`:
//!
//! 1. percent-encoded *unreserved* characters are decoded (`%2e` → `.`, `%41` → `A`; RFC 3986
//!    §6.2.2.2) and every other escape is written in upper case; a `%` not followed by two hex
//!    digits is refused;
//! 2. dot-segments are removed (RFC 3986 §5.2.4); a `..` that would climb above the root is
//!    refused instead of being dropped;
//! 3. a segment that hides a dot-segment behind an encoded slash or backslash (`..%2F`,
//!    `%5C..`) is refused: a backend that decodes `%2F` before normalising would climb.
//!
//! The result also says how high the path climbed (the fewest segments left after a `..`), so
//! the caller can refuse a path that left its API's prefix and came back into another route.

use std::borrow::Cow;

/// Why a path was refused (all are the client's fault: 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path contains a '%' that is not followed by two hexadecimal digits")]
    BadEscape,
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
    #[error("a path segment hides '.' or '..' behind an encoded '/' or '\\'")]
    HiddenDotSegment,
    #[error("the path leaves the API's path with '..'")]
    LeftApi,
}

/// A normalised path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized<'a> {
    pub path: Cow<'a, str>,
    /// The fewest segments the path kept after a `..` removed one (`None`: no `..`). A route
    /// whose fixed prefix has more segments than this was left and re-entered.
    pub climbed_to: Option<usize>,
}

/// Normalises a request path (or a `rewrite-uri` result). Borrows when nothing changes, which
/// is every ordinary request.
pub fn normalize(raw: &str) -> Result<Normalized<'_>, PathError> {
    // Most paths have neither an escape nor a dot: one pass over the bytes says so (the char
    // searchers of `contains` and `split` cost about 270 instructions on a short path).
    if !raw.bytes().any(|b| b == b'%' || b == b'.') || (!raw.contains('%') && !has_dot_segment(raw))
    {
        return Ok(Normalized {
            path: Cow::Borrowed(raw),
            climbed_to: None,
        });
    }
    let decoded = decode_unreserved(raw)?;
    let absolute = decoded.starts_with('/');
    let body = decoded.strip_prefix('/').unwrap_or(&decoded);
    let mut out: Vec<&str> = Vec::new();
    let mut climbed_to: Option<usize> = None;
    let mut trailing_slash = false;
    for segment in body.split('/') {
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                climbed_to = Some(climbed_to.map_or(out.len(), |c| c.min(out.len())));
                trailing_slash = true;
            }
            s => {
                if hides_dot_segment(s) {
                    return Err(PathError::HiddenDotSegment);
                }
                out.push(s);
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    if absolute {
        path.push('/');
    }
    path.push_str(&out.join("/"));
    if trailing_slash && !out.is_empty() {
        path.push('/');
    }
    Ok(Normalized {
        path: Cow::Owned(path),
        climbed_to,
    })
}

/// Whether a raw template parameter value carries an encoded `/` (which `{id}` must not match
/// unless the operation allows it).
pub fn has_encoded_slash(value: &str) -> bool {
    value.as_bytes().windows(3).any(|w| {
        w[0] == b'%' && w[1] == b'2' && (w[2] == b'F' || w[2] == b'f')
            || w[0] == b'%' && w[1] == b'5' && (w[2] == b'C' || w[2] == b'c')
    })
}

/// The number of segments of a route prefix (`/orders/v1` → 2, `` → 0).
pub fn segments(prefix: &str) -> usize {
    prefix.split('/').filter(|s| !s.is_empty()).count()
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

fn hides_dot_segment(segment: &str) -> bool {
    if !has_encoded_slash(segment) {
        return false;
    }
    // Unreserved escapes are decoded by now, so a hidden dot-segment is spelled with '.'.
    let split = segment
        .to_ascii_uppercase()
        .replace("%2F", "/")
        .replace("%5C", "/");
    split.split('/').any(|p| p == "." || p == "..")
}

fn decode_unreserved(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            let next = raw[i..].find('%').map_or(raw.len(), |n| i + n);
            out.push_str(&raw[i..next]);
            i = next;
            continue;
        }
        let hex = |b: u8| (b as char).to_digit(16);
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let byte = (h * 16 + l) as u8;
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push('%');
            out.push(bytes[i + 1].to_ascii_uppercase() as char);
            out.push(bytes[i + 2].to_ascii_uppercase() as char);
        }
        i += 3;
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<(String, Option<usize>), PathError> {
        normalize(p).map(|n| (n.path.into_owned(), n.climbed_to))
    }

    #[test]
    fn ordinary_paths_are_borrowed() {
        let n = normalize("/orders/orders/1001").unwrap();
        assert!(matches!(n.path, Cow::Borrowed(_)));
        assert_eq!(n.climbed_to, None);
        assert!(matches!(
            normalize("/.well-known/x.json").unwrap().path,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(norm("/ng/../admin").unwrap(), ("/admin".into(), Some(0)));
        assert_eq!(norm("/ng/a/../b").unwrap(), ("/ng/b".into(), Some(1)));
        assert_eq!(norm("/ng/./b").unwrap(), ("/ng/b".into(), None));
        assert_eq!(norm("/ng/a/..").unwrap(), ("/ng/".into(), Some(1)));
        assert_eq!(norm("/ng/a/.").unwrap(), ("/ng/a/".into(), None));
    }

    #[test]
    fn encoded_dots_are_dot_segments() {
        assert_eq!(
            norm("/ng/%2e%2e/admin").unwrap(),
            ("/admin".into(), Some(0))
        );
        assert_eq!(norm("/ng/%2E./admin").unwrap(), ("/admin".into(), Some(0)));
        assert_eq!(norm("/ng/.%2e/x/%2E").unwrap(), ("/x/".into(), Some(0)));
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        assert_eq!(norm("/.."), Err(PathError::AboveRoot));
        assert_eq!(norm("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(norm("/%2e%2e/etc/passwd"), Err(PathError::AboveRoot));
    }

    #[test]
    fn hidden_dot_segments_are_refused() {
        assert_eq!(
            norm("/items/..%2f..%2fadmin"),
            Err(PathError::HiddenDotSegment)
        );
        assert_eq!(norm("/items/a%2F.."), Err(PathError::HiddenDotSegment));
        assert_eq!(norm("/items/%5C..%5Cx"), Err(PathError::HiddenDotSegment));
        assert_eq!(
            norm("/items/%2e%2e%2fadmin"),
            Err(PathError::HiddenDotSegment)
        );
        // An encoded slash alone is not a dot-segment (the route decides whether it may match).
        assert_eq!(norm("/items/a%2fb").unwrap(), ("/items/a%2Fb".into(), None));
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(
            norm("/a%41%7e%20%c3%a9").unwrap(),
            ("/aA~%20%C3%A9".into(), None)
        );
        assert_eq!(norm("/a%4"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
    }

    #[test]
    fn encoded_slashes_are_found() {
        assert!(has_encoded_slash("a%2fb"));
        assert!(has_encoded_slash("a%2Fb"));
        assert!(has_encoded_slash("a%5cb"));
        assert!(!has_encoded_slash("a%20b"));
        assert_eq!(segments("/orders/v1"), 2);
        assert_eq!(segments(""), 0);
    }
}
