//! What a reverse listener checks in a request head before anything else sees it (plugins, routing, the
//! upstream). hyper parses heads leniently; an edge proxy must not pass on a head that the upstream could read
//! differently from Portico, or that asks the upstream for something the client must not get through a proxy.
//!
//! These checks work on parsed parts only, so any HTTP/1 codec (hyper's today, Portico's own later) reuses them.
//!
//! - `CONNECT` is refused (405): a reverse listener proxies requests, it does not open tunnels.
//! - Two `Host` headers are refused (400): which one the upstream believes is anybody's guess.
//! - An HTTP/1.1 request without `Host` is refused (400, RFC 9112 §3.2), and so is a `Host` or target
//!   authority that is not one (RFC 9110 §7.2, RFC 3986 §3.2.2; see [`valid_host`]): userinfo (`user@host`,
//!   which RFC 9110 §4.2.4 says to treat as an error), whitespace, `/`, `?`, `#` or `,` in the host, a port
//!   over 65535. The upstream, its logs and its virtual hosts must read the host Portico read.
//! - A target in authority-form (`host:port`) is CONNECT's alone, and `*` is OPTIONS' alone (RFC 9112 §3.2.3,
//!   §3.2.4): other methods with them are refused (400) rather than read as a host.
//! - An absolute-form HTTP/1 target whose authority differs from `Host`: the target's authority wins and
//!   replaces `Host` (RFC 9112 §3.2.2: a server MUST ignore `Host` then). Replacing rather than refusing keeps
//!   old clients that send absolute-form working, and plugins, routing and the upstream all see the one host
//!   the request is answered for. On HTTP/2 a `host` header that differs from `:authority` is refused (400,
//!   RFC 9113 §8.3.1 calls it malformed).
//! - `Upgrade: h2c` (with or without `HTTP2-Settings`) is dropped and the request goes on as plain HTTP/1.1:
//!   the upgrade would let a client speak HTTP/2 directly to the upstream, past every check Portico makes
//!   (request smuggling by h2c upgrade). `HTTP2-Settings` is always removed: it only means something with
//!   that upgrade, on that one connection.
//! - An HTTP/2 request's cookie crumbs are joined into one `cookie` field (RFC 9113 §8.2.3); one with more than
//!   100 fields is refused (431) as HTTP/1.1's parser refuses it, and one with a value that starts or ends with
//!   whitespace (400, RFC 9113 §8.2.1: malformed).
//! - The path is resolved by the listener's path rules (see [`super::request_path`]): dot segments, percent
//!   encodings, repeated and encoded slashes, so plugins and the upstream read one path.

use super::local::LocalError;
use super::request_path::{self, PathRules};
use crate::config::paths::UnderscoreHeaders;
use http::header::{HeaderName, HeaderValue, HOST, UPGRADE};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Uri, Version};

static HTTP2_SETTINGS: http::HeaderName = http::HeaderName::from_static("http2-settings");

/// The header fields an HTTP/2 request may have, as many as hyper's HTTP/1.1 parser takes (Envoy's
/// `max_headers_count` is 100 for both too).
const MAX_FIELDS: usize = 100;

/// A value with whitespace at either end.
fn padded(value: &[u8]) -> bool {
    matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t'))
}

/// Why a request head is refused: the answer's class and a detail for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The answer.
    pub error: LocalError,
    /// Why, in words.
    pub detail: &'static str,
}

fn refuse(error: LocalError, detail: &'static str) -> Result<(), Refused> {
    Err(Refused { error, detail })
}

/// Checks and normalises the head of a request on a reverse listener (see the module doc).
pub fn check_reverse(parts: &mut Parts, paths: PathRules, underscores: UnderscoreHeaders) -> Result<(), Refused> {
    if parts.method == Method::CONNECT {
        return refuse(LocalError::MethodNotAllowed, "CONNECT is not served on a reverse-proxy listener");
    }
    let (host, more) = hosts(&parts.headers);
    if more {
        return refuse(LocalError::BadRequest, "request has more than one Host header");
    }
    if host.is_some_and(|h| !valid_host(h.as_bytes())) {
        return refuse(LocalError::BadRequest, "the Host header is not a valid host");
    }
    let host = host.cloned();
    let authority = parts.uri.authority().cloned();
    if let Some(authority) = &authority {
        if parts.uri.scheme().is_none() {
            return refuse(LocalError::BadRequest, "a host:port request target is only for CONNECT");
        }
        if !valid_host(authority.as_str().as_bytes()) {
            return refuse(LocalError::BadRequest, "the request target's authority is not a valid host");
        }
    }
    if parts.uri.path() == "*" && parts.method != Method::OPTIONS {
        return refuse(LocalError::BadRequest, "the * request target is only for OPTIONS");
    }
    match (parts.version, host, authority) {
        (Version::HTTP_2 | Version::HTTP_3, Some(host), Some(authority))
            if !host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
        {
            return refuse(LocalError::BadRequest, "the host header differs from :authority");
        }
        (Version::HTTP_2 | Version::HTTP_3, _, _) => {
            super::headers::join_cookie_crumbs(&mut parts.headers);
            // HTTP/1.1 requests are held to 100 fields by their parser; HTTP/2 ones only by their size, and
            // an upstream spoken to in HTTP/1.1 (or a second proxy) refuses what its own parser would.
            if parts.headers.len() > MAX_FIELDS {
                return refuse(LocalError::HeaderFieldsTooLarge, "more than 100 header fields");
            }
            // RFC 9113 §8.2.1: a malformed request, which an intermediary must not forward; an HTTP/1.1
            // upstream would read the value trimmed, and a signature or an exact match over it would differ.
            if parts.headers.values().any(|v| padded(v.as_bytes())) {
                return refuse(LocalError::BadRequest, "a header value starts or ends with whitespace");
            }
        }
        (_, host, Some(authority)) => {
            // Absolute-form: the target's authority is the host (RFC 9112 §3.2.2).
            let same = host.as_ref().is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()));
            if !same {
                match HeaderValue::from_str(authority.as_str()) {
                    Ok(value) => {
                        parts.headers.insert(HOST, value);
                    }
                    Err(_) => return refuse(LocalError::BadRequest, "the request target's authority is not valid"),
                }
            }
        }
        (Version::HTTP_11, None, None) => {
            return refuse(LocalError::BadRequest, "an HTTP/1.1 request needs a Host header");
        }
        _ => {}
    }
    if drop_h2c_upgrade(parts) {
        underscored_fields(parts, underscores)?;
    }
    resolve_path(parts, paths)
}

/// Replaces the target's path by its resolved form (see [`request_path`]), the query kept as sent. An empty
/// path before a query (`http://a?q`, an HTTP/2 `:path` of `?q`) becomes `/` (RFC 9112 §3.2.1): `?q` is no
/// request line's target.
pub fn resolve_path(parts: &mut Parts, paths: PathRules) -> Result<(), Refused> {
    let Some(target) = parts.uri.path_and_query() else { return Ok(()) };
    let rootless = target.as_str().starts_with('?');
    let resolved = match request_path::normalize(target.path(), paths) {
        Ok(None) if rootless => "/".to_string(),
        Ok(None) => return Ok(()),
        Ok(Some(path)) => path,
        Err(e) => return refuse(LocalError::BadRequest, e.detail()),
    };
    let target = match parts.uri.query() {
        Some(query) => format!("{resolved}?{query}"),
        None => resolved,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = PathAndQuery::try_from(target).ok();
    match uri.path_and_query.is_some().then(|| Uri::from_parts(uri)) {
        Some(Ok(resolved)) => {
            parts.uri = resolved;
            Ok(())
        }
        _ => refuse(LocalError::BadRequest, "the request path cannot be resolved"),
    }
}

/// Applies the listener's `underscores_in_headers` (see [`UnderscoreHeaders`]): request header fields whose name
/// holds `_` are removed or refuse the request. [`check_reverse`] calls it only when its pass over the names
/// found one.
fn underscored_fields(parts: &mut Parts, rule: UnderscoreHeaders) -> Result<(), Refused> {
    if rule == UnderscoreHeaders::Keep || !parts.headers.keys().any(underscored) {
        return Ok(());
    }
    if rule == UnderscoreHeaders::Reject {
        return refuse(LocalError::BadRequest, "a request header field name holds an underscore");
    }
    let names: Vec<HeaderName> = parts.headers.keys().filter(|name| underscored(name)).cloned().collect();
    for name in names {
        parts.headers.remove(name);
    }
    Ok(())
}

/// Whether a field name holds `_`.
fn underscored(name: &HeaderName) -> bool {
    name.as_str().bytes().any(|b| b == b'_')
}

/// Whether `value` is a valid `Host` field value or target authority: `uri-host [":" port]` (RFC 9110 §7.2)
/// where the host is an IP literal in brackets, or a reg-name or IPv4 address of unreserved characters,
/// percent-encodings and sub-delimiters other than `,` (RFC 3986 §3.2.2; a comma makes a value that list-minded
/// recipients split), and the port is digits of at most 65535. Empty is valid: the request had no authority
/// to send (RFC 9112 §3.2). Userinfo (`@`), whitespace and `/`, `?`, `#` are not.
pub fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(end) => (&value[..=end], &value[end + 1..]),
            None => return false,
        },
        _ => match value.iter().position(|&b| b == b':') {
            Some(at) => (&value[..at], &value[at..]),
            None => (value, &b""[..]),
        },
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= u32::from(u16::MAX)
        }
        _ => false,
    };
    port_ok && (value.is_empty() || valid_host_name(host))
}

/// An IP literal (`[...]`: hex digits, `:`, `.`, and the `v` of a future version) or a reg-name / IPv4 address.
fn valid_host_name(host: &[u8]) -> bool {
    if let [b'[', literal @ .., b']'] = host {
        return !literal.is_empty()
            && literal.iter().all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'));
    }
    // One table look a byte (a `match` of the ranges cost ~25 instructions a byte, ~400 a request).
    if host.is_empty() || !host.iter().all(|&b| HOST_BYTE[usize::from(b)]) {
        return false;
    }
    // Each `%` begins a percent-encoding: two hex digits.
    host.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'%')
        .all(|(i, _)| host.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)))
}

/// The bytes of a reg-name (RFC 3986 §3.2.2): unreserved, `%`, and the sub-delimiters but `,`.
static HOST_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b';' | b'='
            );
        b += 1;
    }
    table
};

/// The first `Host` field and whether there is another. The handful of fields most requests carry is walked
/// (a standard name compares as a number) rather than `Host` hashed and looked up.
fn hosts(headers: &http::HeaderMap) -> (Option<&HeaderValue>, bool) {
    if headers.len() > super::headers::WALK_FIELDS {
        let mut all = headers.get_all(HOST).iter();
        return (all.next(), all.next().is_some());
    }
    let mut all = headers.iter().filter(|(name, _)| **name == HOST).map(|(_, value)| value);
    (all.next(), all.next().is_some())
}

/// Removes `h2c` from `Upgrade` (and the header when nothing is left) and removes `HTTP2-Settings`. Returns
/// whether a field name holds an underscore (see [`underscored_fields`]), found in the same pass.
fn drop_h2c_upgrade(parts: &mut Parts) -> bool {
    // One pass over the names first: nearly every request has none of these, and lookups by name cost more
    // than the pass (a separate pass for underscores cost ~200 instructions a request).
    let (mut settings, mut upgrade, mut any_underscored) = (false, false, false);
    for name in parts.headers.keys() {
        settings |= name == HTTP2_SETTINGS;
        upgrade |= name == UPGRADE;
        any_underscored |= underscored(name);
    }
    if settings {
        parts.headers.remove(&HTTP2_SETTINGS);
    }
    if !upgrade {
        return any_underscored;
    }
    let asks_h2c = parts.headers.get_all(UPGRADE).iter().any(|v| v.as_bytes().split(|b| *b == b',').any(is_h2c));
    if !asks_h2c {
        return any_underscored;
    }
    let rest: Vec<Vec<u8>> = parts
        .headers
        .get_all(UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && !is_h2c(t))
        .map(<[u8]>::to_vec)
        .collect();
    parts.headers.remove(UPGRADE);
    if !rest.is_empty() {
        if let Ok(value) = HeaderValue::from_bytes(&rest.join(&b", "[..])) {
            parts.headers.insert(UPGRADE, value);
        }
    }
    any_underscored
}

fn is_h2c(token: &[u8]) -> bool {
    token.trim_ascii().eq_ignore_ascii_case(b"h2c")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`check_reverse`] with the default path rules, underscored names kept.
    fn check(p: &mut Parts) -> Result<(), Refused> {
        check_reverse(p, PathRules::default(), UnderscoreHeaders::Keep)
    }

    fn parts(raw: &[(&str, &str)], uri: &str, version: Version, method: Method) -> Parts {
        let mut builder = http::Request::builder().method(method).uri(uri).version(version);
        for (k, v) in raw {
            builder = builder.header(*k, *v);
        }
        builder.body(()).map(|r| r.into_parts().0).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn refuses_connect_missing_and_double_host() {
        let mut p = parts(&[("host", "a")], "a:443", Version::HTTP_11, Method::CONNECT);
        assert_eq!(check(&mut p).map_err(|r| r.error), Err(LocalError::MethodNotAllowed));
        let mut p = parts(&[], "/", Version::HTTP_11, Method::GET);
        assert_eq!(check(&mut p).map_err(|r| r.error), Err(LocalError::BadRequest));
        let mut p = parts(&[("host", "a"), ("host", "b")], "/", Version::HTTP_11, Method::GET);
        assert_eq!(check(&mut p).map_err(|r| r.error), Err(LocalError::BadRequest));
        let mut p = parts(&[], "/", Version::HTTP_10, Method::GET);
        assert!(check(&mut p).is_ok(), "HTTP/1.0 needs no Host");
    }

    #[test]
    fn a_second_host_is_found_however_many_fields_lie_between() {
        for extra in [0, 5, 30] {
            let names: Vec<String> = (0..extra).map(|i| format!("x-f{i}")).collect();
            let mut fields: Vec<(&str, &str)> = vec![("host", "a")];
            fields.extend(names.iter().map(|n| (n.as_str(), "v")));
            let mut p = parts(&fields, "/", Version::HTTP_11, Method::GET);
            assert!(check(&mut p).is_ok(), "{extra} fields and one Host");
            fields.push(("host", "b"));
            let mut p = parts(&fields, "/", Version::HTTP_11, Method::GET);
            let refused = check(&mut p).map_err(|r| r.error);
            assert_eq!(refused, Err(LocalError::BadRequest), "{extra} fields and two Hosts");
        }
    }

    #[test]
    fn absolute_form_authority_replaces_host() {
        let mut p = parts(&[("host", "public.example")], "http://internal.example/x", Version::HTTP_11, Method::GET);
        assert!(check(&mut p).is_ok());
        assert_eq!(p.headers.get(HOST).map(|v| v.as_bytes()), Some(&b"internal.example"[..]));
        let mut p = parts(&[], "http://internal.example/x", Version::HTTP_11, Method::GET);
        assert!(check(&mut p).is_ok());
        assert_eq!(p.headers.get(HOST).map(|v| v.as_bytes()), Some(&b"internal.example"[..]));
        let mut p = parts(&[("host", "other")], "http://a/x", Version::HTTP_2, Method::GET);
        assert_eq!(check(&mut p).map_err(|r| r.error), Err(LocalError::BadRequest));
    }

    #[test]
    fn hosts_are_checked_as_hosts() {
        for good in ["a", "a.example:8080", "127.0.0.1", "[::1]:443", "xn--bcher-kva.example", "a:", "", "a_b%41"] {
            assert!(valid_host(good.as_bytes()), "{good:?} is a host");
        }
        for bad in ["a b", "a, b", "a,b", "a/b?c#d", "user@evil", "user:pw@a", "a:65536", "a:1:2", "[::1", "a:x"] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} is not a host");
        }
        for bad in ["a%4", "[]", "a\tb", " a"] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} is not a host");
        }
        let refused = |fields: &[(&str, &str)], uri: &str, version: Version, method: Method| {
            check(&mut parts(fields, uri, version, method)).map_err(|r| r.error)
        };
        assert_eq!(refused(&[("host", "a b")], "/", Version::HTTP_11, Method::GET), Err(LocalError::BadRequest));
        let userinfo = refused(&[("host", "a")], "http://user:pw@evil.example/", Version::HTTP_11, Method::GET);
        assert_eq!(userinfo, Err(LocalError::BadRequest));
        let h2 = refused(&[], "http://user@a/", Version::HTTP_2, Method::GET);
        assert_eq!(h2, Err(LocalError::BadRequest), "userinfo in :authority");
        let authority_form = refused(&[("host", "a")], "evil.example:80", Version::HTTP_11, Method::GET);
        assert_eq!(authority_form, Err(LocalError::BadRequest));
        assert_eq!(refused(&[("host", "a")], "*", Version::HTTP_11, Method::GET), Err(LocalError::BadRequest));
        assert_eq!(refused(&[("host", "a")], "*", Version::HTTP_11, Method::OPTIONS), Ok(()));
        assert_eq!(refused(&[("host", "a:8080")], "/x", Version::HTTP_11, Method::GET), Ok(()));
    }

    #[test]
    fn the_path_is_resolved_and_the_query_kept() {
        let resolved = |uri: &str| {
            let mut p = parts(&[("host", "a")], uri, Version::HTTP_11, Method::GET);
            check(&mut p).map(|()| p.uri.to_string()).map_err(|r| r.detail)
        };
        assert_eq!(resolved("/a/../b?x=/../y&z=%2e"), Ok("/b?x=/../y&z=%2e".to_string()));
        assert_eq!(resolved("http://a/x/%2E%2E//b"), Ok("http://a/b".to_string()));
        assert_eq!(resolved("/plain?q"), Ok("/plain?q".to_string()));
        assert_eq!(resolved("http://a?q=1"), Ok("http://a/?q=1".to_string()));
        let mut p = parts(&[("host", "a")], "http://a?q=1", Version::HTTP_11, Method::GET);
        assert!(check(&mut p).is_ok());
        assert_eq!(p.uri.path_and_query().map(|q| q.as_str()), Some("/?q=1"), "the target a request line carries");
        assert_eq!(resolved("*"), Err("the * request target is only for OPTIONS"));
        assert!(resolved("/a%zz").is_err_and(|d| d.contains("two hex digits")));
    }

    #[test]
    fn underscored_field_names_are_dropped_refused_or_kept() {
        let fields = [("host", "a"), ("x_forwarded_for", "6.6.6.6"), ("transfer_encoding", "chunked"), ("x-ok", "1")];
        let mut p = parts(&fields, "/", Version::HTTP_11, Method::GET);
        assert!(underscored_fields(&mut p, UnderscoreHeaders::Drop).is_ok());
        let names: Vec<&str> = p.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["host", "x-ok"]);
        let mut p = parts(&fields, "/", Version::HTTP_11, Method::GET);
        assert_eq!(
            underscored_fields(&mut p, UnderscoreHeaders::Reject).map_err(|r| r.error),
            Err(LocalError::BadRequest)
        );
        let mut p = parts(&fields, "/", Version::HTTP_11, Method::GET);
        assert!(underscored_fields(&mut p, UnderscoreHeaders::Keep).is_ok());
        assert_eq!(p.headers.len(), 4);
        let mut p = parts(&[("host", "a")], "/", Version::HTTP_11, Method::GET);
        assert!(underscored_fields(&mut p, UnderscoreHeaders::Reject).is_ok(), "no underscore, nothing refused");
    }

    #[test]
    fn h2c_upgrade_is_dropped_and_others_kept() {
        let mut p = parts(
            &[("host", "a"), ("upgrade", "h2c"), ("http2-settings", "AAMAAABkAAQAAP__"), ("connection", "Upgrade")],
            "/",
            Version::HTTP_11,
            Method::GET,
        );
        assert!(check(&mut p).is_ok());
        assert!(p.headers.get(UPGRADE).is_none() && p.headers.get("http2-settings").is_none());
        let mut p = parts(&[("host", "a"), ("upgrade", "H2C, websocket")], "/", Version::HTTP_11, Method::GET);
        assert!(check(&mut p).is_ok());
        assert_eq!(p.headers.get(UPGRADE).map(|v| v.as_bytes()), Some(&b"websocket"[..]));
    }
}
