//! What a web page in a browser on the admin's host must not do to the admin API. Without a token the API
//! trusts whoever reaches its loopback address, and a browser reaches it on behalf of any page it shows: a
//! cross-site form or `fetch` (a "simple" `text/plain` POST needs no preflight) could drain endpoints, and a
//! page on a name that its DNS later points at 127.0.0.1 (DNS rebinding) could read `/config` as same-origin.
//! Browsers say where a request comes from (`Origin`, `Sec-Fetch-Site`) and which name they asked for
//! (`Host`); command-line clients and Prometheus say a loopback address or nothing of the kind.

use http::{header, HeaderMap, Method};

/// Why the request is refused (403), if it is: a change asked for by another site's page, or, with no token
/// set, any request under a name that is not loopback's.
pub fn refusal(method: &Method, headers: &HeaderMap, token_set: bool) -> Option<&'static str> {
    let changes = *method != Method::GET && *method != Method::HEAD;
    if changes && cross_site(headers) {
        return Some("a change asked for by another site's page is refused");
    }
    if !token_set && headers.get(header::HOST).is_some_and(|h| !loopback_host(h.as_bytes())) {
        return Some("without an admin token the API answers only to a loopback Host (127.0.0.1, [::1], localhost)");
    }
    None
}

/// `Sec-Fetch-Site` says cross-site, or `Origin` names another host than `Host` (a page's own same-origin
/// requests carry its origin, whose host is the one asked for).
fn cross_site(headers: &HeaderMap) -> bool {
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return false };
    let origin = origin.as_bytes();
    let authority = origin.split(|b| *b == b'/').nth(2).unwrap_or(b"");
    let host = headers.get(header::HOST).map_or(&b""[..], |h| h.as_bytes());
    origin == b"null" || !authority.eq_ignore_ascii_case(host)
}

/// `127.x.y.z`, `[::1]` or `localhost`, with any port.
fn loopback_host(host: &[u8]) -> bool {
    let name = match host.first() {
        Some(b'[') => host.iter().position(|b| *b == b']').map_or(host, |end| &host[..=end]),
        _ => host.split(|b| *b == b':').next().unwrap_or(host),
    };
    if name.eq_ignore_ascii_case(b"localhost") || name == b"[::1]" {
        return true;
    }
    std::str::from_utf8(name).ok().and_then(|n| n.parse::<std::net::Ipv4Addr>().ok()).is_some_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn another_sites_page_cannot_change_anything() {
        let post = Method::POST;
        let page = headers(&[("host", "127.0.0.1:9901"), ("origin", "http://attacker.example")]);
        assert!(refusal(&post, &page, true).is_some() && refusal(&post, &page, false).is_some());
        let fetch = headers(&[("host", "127.0.0.1:9901"), ("sec-fetch-site", "cross-site")]);
        assert!(refusal(&post, &fetch, true).is_some());
        let own = headers(&[("host", "127.0.0.1:9901"), ("origin", "http://127.0.0.1:9901")]);
        assert_eq!(refusal(&post, &own, false), None, "the admin's own page");
        let curl = headers(&[("host", "127.0.0.1:9901")]);
        assert_eq!(refusal(&post, &curl, false), None);
        assert_eq!(refusal(&Method::GET, &page, true), None, "reads by another page are the browser's to refuse");
    }

    #[test]
    fn without_a_token_only_loopback_names_are_answered() {
        for host in ["127.0.0.1:9901", "127.0.0.2", "[::1]:9901", "localhost:9901", "LOCALHOST"] {
            assert_eq!(refusal(&Method::GET, &headers(&[("host", host)]), false), None, "{host}");
        }
        for host in ["attacker.example:9901", "10.0.0.1:9901", "127.0.0.1.nip.io", "[::2]"] {
            assert!(refusal(&Method::GET, &headers(&[("host", host)]), false).is_some(), "{host}");
            assert_eq!(refusal(&Method::GET, &headers(&[("host", host)]), true), None, "a token set: {host}");
        }
    }
}
