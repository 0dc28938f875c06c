//! Who the client is, and the forwarding headers the backend gets.
//!
//! `X-Forwarded-For`, `Forwarded`, `X-Real-IP` and the other `X-Forwarded-*` headers are
//! believed only when the TCP peer is one of `listen.trusted_proxies` (a load balancer in front
//! of the gateway). From a trusted peer they are kept, the peer is appended, and the client
//! address is the rightmost address in the chain that is not itself a trusted proxy — so
//! `ip-filter`, `rate-limit-by-key {request.ip}`, telemetry and logs see the real client. From
//! anyone else they are replaced: a client cannot pick the address it is filtered or counted by.
//! `X-Forwarded-Host` is always a valid `host[:port]` or absent.

use std::net::IpAddr;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use outpost_actors::route_table::steps::Cidr;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The trusted proxies, parsed once from the settings.
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    trusted: Vec<Cidr>,
}

impl Forwarding {
    /// Parses `listen.trusted_proxies`; every bad entry is named.
    pub fn new(cidrs: &[String]) -> Result<Self, Vec<String>> {
        let mut trusted = Vec::with_capacity(cidrs.len());
        let mut bad = Vec::new();
        for c in cidrs {
            match Cidr::parse(c) {
                Ok(cidr) => trusted.push(cidr),
                Err(e) => bad.push(e),
            }
        }
        if bad.is_empty() {
            Ok(Self { trusted })
        } else {
            Err(bad)
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// Whether the forwarding headers of a request from `peer` are believed.
    pub fn trusts_peer(&self, peer: Option<IpAddr>) -> bool {
        !self.trusted.is_empty() && peer.is_some_and(|p| self.trusts(p))
    }

    /// The client's address: the peer, or, behind trusted proxies, the nearest address in the
    /// forwarding chain that is not a trusted proxy.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusts_peer(Some(peer)) {
            return Some(peer);
        }
        let mut chain = forwarded_for(headers);
        if chain.is_empty() {
            chain = forwarded_element_for(headers);
        }
        if chain.is_empty()
            && let Some(ip) = headers
                .get(&X_REAL_IP)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_node)
        {
            chain.push(Some(ip));
        }
        let mut client = peer;
        for hop in chain.iter().rev() {
            // An unreadable hop ends what can be believed: the last trusted hop stands.
            let Some(ip) = *hop else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        Some(canonical(client))
    }

    /// Sets the forwarding headers of the request to the backend (`headers` is the client's
    /// request, already without hop-by-hop headers).
    pub fn apply(
        &self,
        peer: Option<IpAddr>,
        secure: bool,
        host: Option<&HeaderValue>,
        headers: &mut HeaderMap,
    ) {
        let trusted = self.trusts_peer(peer);
        if !trusted {
            // One pass, no hashing: most requests carry none of these.
            headers.retain(|k, _| {
                !(k.as_str().starts_with("x-forwarded-")
                    || *k == header::FORWARDED
                    || *k == X_REAL_IP)
            });
        }
        if let Some(peer) = peer.map(canonical) {
            let prior = if trusted {
                joined(headers, &X_FORWARDED_FOR)
            } else {
                None
            };
            let value = match prior {
                Some(p) if !p.trim().is_empty() => HeaderValue::from_str(&format!("{p}, {peer}")),
                // The common case, without `fmt` (IPv4's `Display` alone was ~1,300
                // instructions per request).
                _ => match peer {
                    IpAddr::V4(v4) => {
                        let mut text = [0u8; 15];
                        let n = ipv4_text(v4, &mut text);
                        HeaderValue::from_bytes(&text[..n])
                    }
                    IpAddr::V6(v6) => HeaderValue::from_str(&v6.to_string()),
                },
            };
            if let Ok(v) = value {
                set(headers, trusted, X_FORWARDED_FOR, v);
            }
            if trusted && let Some(prior) = joined(headers, &header::FORWARDED) {
                let node = match peer {
                    IpAddr::V6(v6) => format!("\"[{v6}]\""),
                    v4 => v4.to_string(),
                };
                if let Ok(v) = HeaderValue::from_str(&format!("{prior}, for={node}")) {
                    headers.insert(header::FORWARDED, v);
                }
            }
        }
        let proto_kept = trusted
            && headers
                .get(&X_FORWARDED_PROTO)
                .is_some_and(|v| v.as_bytes() == b"http" || v.as_bytes() == b"https");
        if !proto_kept {
            let proto = if secure { "https" } else { "http" };
            set(
                headers,
                trusted,
                X_FORWARDED_PROTO,
                HeaderValue::from_static(proto),
            );
        }
        let host_kept = trusted
            && headers
                .get(&X_FORWARDED_HOST)
                .and_then(|v| v.to_str().ok())
                .is_some_and(valid_host);
        if !host_kept {
            match host.filter(|h| valid_host_value(h)) {
                Some(h) => set(headers, trusted, X_FORWARDED_HOST, h.clone()),
                None if trusted => {
                    headers.remove(&X_FORWARDED_HOST);
                }
                None => {}
            }
        }
    }
}

/// Sets `name` to `value`. From an untrusted peer every forwarding header is gone already, so
/// the value is appended: the same map, without `insert`'s hashed lookup of an old value and
/// the moves of what it would return (about 120 instructions a header).
fn set(headers: &mut HeaderMap, trusted: bool, name: HeaderName, value: HeaderValue) {
    if trusted {
        headers.insert(name, value);
    } else {
        headers.append(name, value);
    }
}

/// `a.b.c.d`, as `Ipv4Addr`'s `Display` writes it, into `out`; returns its length. On the
/// stack: a `Vec` for it was one more allocation per request.
fn ipv4_text(ip: std::net::Ipv4Addr, out: &mut [u8; 15]) -> usize {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            out[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            out[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        out[n] = b'0' + octet % 10;
        n += 1;
    }
    n
}

/// Every line of a header joined with `, ` (a list may be split over several lines).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let s = v.to_str().ok()?;
        match &mut out {
            Some(o) => {
                o.push_str(", ");
                o.push_str(s);
            }
            None => out = Some(s.to_owned()),
        }
    }
    out
}

/// `X-Forwarded-For` hops in order; `None` for an unreadable one.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    joined(headers, &X_FORWARDED_FOR)
        .map(|v| v.split(',').map(|h| parse_node(h.trim())).collect())
        .unwrap_or_default()
}

/// The `for=` parameters of `Forwarded` (RFC 7239) in order.
fn forwarded_element_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let Some(v) = joined(headers, &header::FORWARDED) else {
        return Vec::new();
    };
    v.split(',')
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(v.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:443`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (ip, port) = s.rsplit_once(':')?;
    port.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
    ip.parse().ok()
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `host[:port]`: a DNS name, an IPv4 address or a bracketed IPv6 address, and a numeric port.
pub fn valid_host(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    plain_host(s.as_bytes()).unwrap_or_else(|| valid_host_general(s))
}

/// [`valid_host`] for a header value: the one-pass check on its bytes, which refuses whatever
/// is not visible ASCII as `to_str` would (no second pass over it); the general path only for an
/// IPv6 literal.
fn valid_host_value(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    if b.is_empty() || b.len() > 255 {
        return false;
    }
    match plain_host(b) {
        Some(valid) => valid,
        None => v.to_str().is_ok_and(valid_host_general),
    }
}

/// [`valid_host`] for any string (IPv6 literals included).
fn valid_host_general(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    let host_ok = host.is_empty() && s.starts_with('[')
        || !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
    port_ok && host_ok
}

/// The bytes of a name or IPv4 address besides the dots between labels.
const HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        b += 1;
    }
    table
};

/// [`valid_host`] for a name or IPv4 address with an optional port, in one forward pass over
/// the bytes with a table per byte (the general path cost about 750 instructions for
/// `127.0.0.1:8080`, a search for the last `:` and a second pass about 320); `None` for
/// anything else (an IPv6 literal), which the general path decides. The host ends at the first
/// `:`; a second one fails the port, as it would fail the host of the general path.
fn plain_host(s: &[u8]) -> Option<bool> {
    if s.first() == Some(&b'[') {
        return None;
    }
    let mut label = 0usize;
    for (i, &b) in s.iter().enumerate() {
        if HOST_BYTES[usize::from(b)] {
            label += 1;
            if label > 63 {
                return Some(false);
            }
        } else if b == b'.' {
            if label == 0 {
                return Some(false);
            }
            label = 0;
        } else if b == b':' {
            return Some(label > 0 && valid_port(&s[i + 1..]));
        } else {
            return Some(false);
        }
    }
    Some(label > 0)
}

/// A port as `u16::from_str` reads it (the general path uses it): one leading `+` is allowed.
fn valid_port(port: &[u8]) -> bool {
    if port.is_empty() || port.len() > 5 {
        return false;
    }
    let digits = port.strip_prefix(b"+").unwrap_or(port);
    if digits.is_empty() {
        return false;
    }
    let mut n: u32 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return false;
        }
        n = n * 10 + u32::from(b - b'0');
    }
    n <= u32::from(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_text_is_what_display_writes() {
        for ip in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [9, 10, 99, 100],
            [255, 255, 255, 255],
            [192, 168, 1, 20],
        ] {
            let ip = std::net::Ipv4Addr::from(ip);
            let mut out = [0u8; 15];
            let n = ipv4_text(ip, &mut out);
            assert_eq!(&out[..n], ip.to_string().as_bytes());
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let f = Forwarding::new(&["10.0.0.0/8".into()]).unwrap();
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("forwarded", "for=2.2.2.2"),
            ("x-real-ip", "3.3.3.3"),
        ]);
        assert_eq!(f.client_ip(ip("192.0.2.7"), &h), ip("192.0.2.7"));
        assert_eq!(
            Forwarding::default().client_ip(ip("10.1.1.1"), &h),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let f = Forwarding::new(&["10.0.0.0/8".into(), "192.168.0.1".into()]).unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.2.2.2")]);
        assert_eq!(f.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9:5555"),
        ]);
        assert_eq!(f.client_ip(ip("192.168.0.1"), &h), ip("203.0.113.9"));
        let h = headers(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https")]);
        assert_eq!(f.client_ip(ip("10.0.0.1"), &h), ip("2001:db8::1"));
        let h = headers(&[("x-real-ip", "198.51.100.4")]);
        assert_eq!(f.client_ip(ip("10.0.0.1"), &h), ip("198.51.100.4"));
        // A garbled hop: the last readable trusted hop stands.
        let h = headers(&[("x-forwarded-for", "203.0.113.9, garbage, 10.3.3.3")]);
        assert_eq!(f.client_ip(ip("10.0.0.1"), &h), ip("10.3.3.3"));
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let f = Forwarding::new(&["10.0.0.0/8".into()]).unwrap();
        let mut h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-prefix", "/admin"),
            ("forwarded", "for=2.2.2.2"),
            ("x-real-ip", "3.3.3.3"),
        ]);
        let host = HeaderValue::from_static("api.example.com:8080");
        f.apply(ip("192.0.2.7"), false, Some(&host), &mut h);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.7");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "api.example.com:8080");
        assert!(!h.contains_key("x-forwarded-prefix"));
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x-real-ip"));
    }

    #[test]
    fn trusted_forwarding_headers_are_kept_and_extended() {
        let f = Forwarding::new(&["10.0.0.0/8".into()]).unwrap();
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        f.apply(ip("10.0.0.1"), false, None, &mut h);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.9, 10.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "api.example.com");
        assert_eq!(h.get("forwarded").unwrap(), "for=203.0.113.9, for=10.0.0.1");
    }

    #[test]
    fn forwarded_host_is_a_valid_host_or_nothing() {
        for good in [
            "a.example",
            "a.example:8080",
            "127.0.0.1",
            "[::1]:443",
            "[::1]",
            "x_y",
        ] {
            assert!(valid_host(good), "{good}");
        }
        // The one-pass check agrees with the general one wherever it answers.
        for s in [
            "a.example",
            "a.example:8080",
            "127.0.0.1",
            "127.0.0.1:65535",
            "127.0.0.1:65536",
            "h:+80",
            "h:+",
            "h:-1",
            "h:",
            ":80",
            "h:123456",
            "x_y",
            "a-b.c-d",
            "a b",
            "a.example:port",
            "evil.example/x",
            "a..b",
            ".a",
            "a.",
            "a:1:2",
            "<script>",
            "é.example",
            "a.:80",
            "a:1:",
            "a:\t80",
            "a\t:80",
            "127.0.0.1:00080",
            "127.0.0.1:080800",
            &"a".repeat(63),
            &"a".repeat(64),
        ] {
            assert_eq!(plain_host(s.as_bytes()), Some(valid_host_general(s)), "{s}");
        }
        assert_eq!(plain_host(b"[::1]"), None);
        // A header value is judged as its text would be (`to_str`: visible ASCII only).
        for raw in [
            &b"a.example:8080"[..],
            b"[::1]:443",
            b"[::1]\x80",
            b"a\x80.example",
            b"\xc3\xa9.example",
            b"a\tb",
            b"",
        ] {
            let v = HeaderValue::from_bytes(raw).unwrap();
            assert_eq!(
                valid_host_value(&v),
                v.to_str().is_ok_and(valid_host),
                "{raw:?}"
            );
        }
        for bad in [
            "",
            "a b",
            "a.example:port",
            "evil.example/x",
            "[zz]",
            "a..b",
            "a:1:2",
            "<script>",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
        let f = Forwarding::default();
        let mut h = headers(&[("x-forwarded-host", "evil")]);
        let host = HeaderValue::from_static("bad host");
        f.apply(ip("192.0.2.7"), true, Some(&host), &mut h);
        assert!(!h.contains_key("x-forwarded-host"));
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
    }

    #[test]
    fn bad_cidrs_are_all_named() {
        let err = Forwarding::new(&["10.0.0.0/8".into(), "nope".into(), "1.2.3.4/40".into()])
            .unwrap_err();
        assert_eq!(err.len(), 2);
    }
}
