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

/// Removes hop-by-hop headers, including those the `Connection` header names.
///
/// Runs on every request and response, so it makes one pass over the map and hashes no name:
/// removing the ten names one by one cost more than the rest of the header work together.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The usual request has none of them (and `Connection` is one, so this also covers the
    // names it lists): nothing to rebuild.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
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
        !HOP_BY_HOP.contains(name) && !listed.iter().any(|l| l.as_str() == name.as_str())
    });
}
