//! What a web page in a browser on the admin's host must not do to the admin API. Without a token the API
//! trusts whoever reaches its loopback address, and a browser reaches it on behalf of any page it shows: a
//! cross-site form or `fetch` (a "simple" `text/plain` POST needs no preflight) could drain endpoints, and so
//! could a page on a name its DNS later points at 127.0.0.1 (DNS rebinding), its requests then same-origin.
//! Browsers say where a change comes from (`Origin`, `Sec-Fetch-Site`); command-line clients, scripts and
//! Prometheus send neither, and are not affected.
//!
//! A rebinding page can read as well as write: its same-origin `GET`s carry no `Origin`, only the page's own
//! name in `Host`. Without a token the API can only be reached on a loopback address (a non-loopback one needs a
//! token), where every client that is not such a page names a loopback host or the address it connected to, so
//! any request for another name is refused, reads included.

use http::{header, HeaderMap, Method, Uri};

/// Why the request is refused (403), if it is: a change asked for by another site's page, or, with no token
/// set, by any page not served from a loopback name.
pub fn refusal(method: &Method, uri: &Uri, headers: &HeaderMap, token_set: bool) -> Option<&'static str> {
    // Every name the request gives for its host: each `Host` field, and the target's authority (HTTP/2's
    // `:authority`, an absolute-form target). HTTP/1.0 clients may give none; browsers always do.
    let mut names = headers
        .get_all(header::HOST)
        .iter()
        .map(|h| h.as_bytes())
        .chain(uri.authority().map(|a| a.as_str().as_bytes()));
    if !token_set && !names.all(|name| name.is_empty() || loopback_host(name)) {
        return Some("without an admin token, the admin API answers only requests for a loopback host (127.0.0.1, [::1], localhost)");
    }
    if *method == Method::GET || *method == Method::HEAD {
        return None;
    }
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
        return Some("a change asked for by another site's page is refused");
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = origins.next()?.as_bytes();
    if origins.next().is_some() {
        return Some("a request with more than one Origin is refused");
    }
    let authority = origin.split(|b| *b == b'/').nth(2).unwrap_or(b"");
    let host = headers.get(header::HOST).map_or(&b""[..], |h| h.as_bytes());
    if origin == b"null" || !authority.eq_ignore_ascii_case(host) {
        return Some("a change asked for by another site's page is refused");
    }
    if !token_set && !loopback_host(authority) {
        return Some("without an admin token, only a page served from a loopback name may ask for changes");
    }
    None
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
    use http::{HeaderName, HeaderValue};

    fn root() -> Uri {
        Uri::from_static("/")
    }

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        fields.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn another_sites_page_cannot_change_anything() {
        let post = Method::POST;
        let page = headers(&[("host", "127.0.0.1:9901"), ("origin", "http://attacker.example")]);
        assert!(refusal(&post, &root(), &page, true).is_some() && refusal(&post, &root(), &page, false).is_some());
        let fetch = headers(&[("host", "127.0.0.1:9901"), ("sec-fetch-site", "cross-site")]);
        assert!(refusal(&post, &root(), &fetch, true).is_some());
        let own = headers(&[("host", "127.0.0.1:9901"), ("origin", "http://127.0.0.1:9901")]);
        assert_eq!(refusal(&post, &root(), &own, false), None, "the admin's own page");
        let curl = headers(&[("host", "127.0.0.1:9901")]);
        assert_eq!(refusal(&post, &root(), &curl, false), None);
        assert_eq!(
            refusal(&Method::GET, &root(), &page, true),
            None,
            "reads by another page are the browser's to refuse"
        );
    }

    #[test]
    fn without_a_token_only_pages_from_loopback_names_may_change_things() {
        let post = Method::POST;
        for origin_host in ["127.0.0.1:9901", "127.0.0.2", "[::1]:9901", "localhost:9901"] {
            let origin = format!("http://{origin_host}");
            let mut map = headers(&[]);
            map.insert("host", HeaderValue::from_str(origin_host).unwrap_or(HeaderValue::from_static("x")));
            map.insert("origin", HeaderValue::from_str(&origin).unwrap_or(HeaderValue::from_static("x")));
            assert_eq!(refusal(&post, &root(), &map, false), None, "{origin_host}");
        }
        // DNS rebinding: the page's name now points at loopback, so its change is same-origin.
        let rebound = headers(&[("host", "attacker.example:9901"), ("origin", "http://attacker.example:9901")]);
        assert!(refusal(&post, &root(), &rebound, false).is_some());
        assert_eq!(refusal(&post, &root(), &rebound, true), None, "a token set: the request still needs it");
    }

    #[test]
    fn without_a_token_a_rebinding_page_cannot_read_either() {
        let read = headers(&[("host", "attacker.example:9901")]);
        assert!(refusal(&Method::GET, &root(), &read, false).is_some());
        assert_eq!(refusal(&Method::GET, &root(), &read, true), None, "with a token, reads are open as before");
        for host in ["127.0.0.1:9901", "localhost", "LOCALHOST:1", "[::1]:9901", "127.9.9.9"] {
            let mut map = headers(&[]);
            map.insert("host", HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("x")));
            assert_eq!(refusal(&Method::GET, &root(), &map, false), None, "{host}");
        }
        assert_eq!(refusal(&Method::GET, &root(), &headers(&[]), false), None, "an HTTP/1.0 client without Host");
        // Every name counts: a second Host field, the target's authority (HTTP/2, absolute-form), two Origins.
        let two = [("host", "127.0.0.1:9901"), ("host", "attacker.example")];
        assert!(refusal(&Method::GET, &root(), &headers(&two), false).is_some());
        let h2 = Uri::from_static("http://attacker.example:9901/config");
        assert!(refusal(&Method::GET, &h2, &headers(&[]), false).is_some());
        assert!(refusal(&Method::GET, &h2, &headers(&[("host", "127.0.0.1")]), false).is_some());
        let own = Uri::from_static("http://127.0.0.1:9901/config");
        assert_eq!(refusal(&Method::GET, &own, &headers(&[("host", "127.0.0.1:9901")]), false), None);
        let origins = [("host", "127.0.0.1:9901"), ("origin", "http://127.0.0.1:9901"), ("origin", "http://evil")];
        assert!(refusal(&Method::POST, &root(), &headers(&origins), true).is_some());
        for host in ["127.0.0.1.attacker.example", "localhost.attacker.example", "[::2]:1", "0.0.0.0:9901"] {
            let mut map = headers(&[]);
            map.insert("host", HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("x")));
            assert!(refusal(&Method::GET, &root(), &map, false).is_some(), "{host}");
        }
    }
}
