//! Hop-by-hop headers (RFC 9110 §7.6.1): what describes one connection and goes no further, in
//! either direction, whichever HTTP version or upstream carries the message. A leaf, so every
//! forwarding path (HTTP/1.1, HTTP/2, upgrades) and the request intake share it.

use actix_web::http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus those the
/// HTTP layer sets itself from the body.
pub(crate) static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::CONTENT_LENGTH,
];

/// Whether `name` is one of [`HOP_BY_HOP`]: by its length first, so that the usual name is
/// told apart in a comparison or two (a scan of the ten names cost about 100 instructions per
/// header; a unit test keeps the two in step).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    match name.len() {
        2 => name == "te",
        7 => name == "trailer" || name == "upgrade",
        10 => name == "connection" || name == "keep-alive",
        14 => name == "content-length",
        16 => name == "proxy-connection",
        17 => name == "transfer-encoding",
        18 => name == "proxy-authenticate",
        19 => name == "proxy-authorization",
        _ => false,
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
///
/// Runs on every request and response, so it makes one pass over the map and hashes no name:
/// removing the ten names one by one cost more than the rest of the header work together.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The usual request has none of them (and `Connection` is one, so this also covers the
    // names it lists): nothing to rebuild.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Names the `Connection` header lists beyond the fixed ones (usually none: it says
    // `keep-alive` or `close`).
    let mut listed: Vec<String> = Vec::new();
    for value in headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
    {
        for token in value.split(',').map(str::trim) {
            if !token.is_empty()
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()))
            {
                listed.push(token.to_ascii_lowercase());
            }
        }
    }
    headers.retain(|name, _| {
        !is_hop_by_hop(name) && !listed.iter().any(|l| l.as_str() == name.as_str())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_check_knows_exactly_the_hop_by_hop_names() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            "host",
            "accept",
            "connections",
            "content-type",
            "x-forwarded-for",
            "proxy-connectio",
            "traceparent",
            "tf",
        ] {
            let name = HeaderName::from_static(name);
            assert!(!is_hop_by_hop(&name), "{name}");
        }
    }
}
