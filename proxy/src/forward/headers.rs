//! Header rewriting between hops: hop-by-hop headers removed (RFC 9110 §7.6.1, plus any the `Connection`
//! header names), `x-forwarded-for`/`x-forwarded-proto`/`via` set, trace context and request id attached.

use crate::h1::head::Added;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::Version;

// Pre-built names: looking a header up by `&str` parses the name on every call, for every request.
static HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    TE,
    http::header::TRAILER,
    TRANSFER_ENCODING,
];
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static VIA: HeaderName = http::header::VIA;
/// `traceparent`, read from requests and set on the upstream hop.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `x-request-id`, set on requests going upstream and on every response.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `upgrade`'s bit in [`hop_by_hop_bit`]'s answers, after those of [`HOP_BY_HOP`].
const UPGRADE_BIT: u16 = 1 << HOP_BY_HOP.len();

/// Up to how many fields a request's map is walked to find a field or two (see [`id_fields`]) rather than
/// each name hashed and looked up.
pub(crate) const WALK_FIELDS: usize = 16;

/// The first `traceparent` and `x-request-id` values of a request, read for every request. A lookup hashes
/// the (custom) name each time, ~150 instructions each; the handful of fields most requests carry is walked
/// once instead, comparing names by length first.
pub fn id_fields(headers: &HeaderMap) -> (Option<&[u8]>, Option<&[u8]>) {
    if headers.len() > WALK_FIELDS {
        let get = |name: &HeaderName| headers.get(name).map(HeaderValue::as_bytes);
        return (get(&TRACEPARENT), get(&X_REQUEST_ID));
    }
    let (mut traceparent, mut request_id) = (None, None);
    for (name, value) in headers {
        if traceparent.is_none() && *name == TRACEPARENT {
            traceparent = Some(value.as_bytes());
        } else if request_id.is_none() && *name == X_REQUEST_ID {
            request_id = Some(value.as_bytes());
        }
    }
    (traceparent, request_id)
}

/// `1 << i` for the `i`-th name of [`HOP_BY_HOP`], [`UPGRADE_BIT`] for `upgrade`, 0 for any other name. A match
/// on the name's text: comparing each field with nine `HeaderName`s cost ~400 instructions a message.
fn hop_by_hop_bit(name: &str) -> u16 {
    match name {
        "connection" => 1,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "proxy-authenticate" => 1 << 3,
        "proxy-authorization" => 1 << 4,
        "te" => 1 << 5,
        "trailer" => 1 << 6,
        "transfer-encoding" => 1 << 7,
        "upgrade" => UPGRADE_BIT,
        _ => 0,
    }
}

/// Removes hop-by-hop headers. `te: trailers` survives because gRPC needs it end to end; `upgrade` is kept
/// only when the caller is proxying an upgrade.
///
/// Runs on every request and every response, which mostly carry no hop-by-hop header but `connection`: one pass
/// over the names finds which are there, and only those are looked up and removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut present = 0u16;
    for name in headers.keys() {
        present |= hop_by_hop_bit(name.as_str());
    }
    if present == 0 {
        return;
    }
    let keeps_trailers = headers.get(TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // Names the `connection` header lists (RFC 9110 §7.6.1: even `close`, should a header bear that name),
    // other than the ones removed anyway, and `host`: a client naming it would have the upstream get a request
    // without the host Portico checked and routed by.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.eq_ignore_ascii_case(UPGRADE.as_str())
                && !token.eq_ignore_ascii_case(HOST.as_str())
                && !HOP_BY_HOP.iter().any(|h| token.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(&name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if !keep_upgrade && present & UPGRADE_BIT != 0 {
        headers.remove(UPGRADE);
    }
    if keeps_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether an HTTP/1.1 request asks to switch protocols (WebSocket and friends).
pub fn is_upgrade_request(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Headers Portico adds to a proxied request.
pub struct ForwardedFor<'a> {
    /// The client's IP, as its connection formatted it once ([`crate::listen::ConnInfo::client_ip`]).
    pub client_ip: &'a HeaderValue,
    /// Whether the client used TLS.
    pub tls: bool,
    /// The client's HTTP version, for `via`.
    pub version: Version,
    /// `traceparent` for the upstream hop.
    pub traceparent: &'a [u8],
    /// The request id.
    pub request_id: &'a str,
}

impl<'a> ForwardedFor<'a> {
    /// The fields this hop adds to a request: `x-forwarded-for` and `via` join the client's own, the others
    /// replace them. Portico's HTTP/1 client writes them into the head as it goes
    /// ([`crate::h1::head::encode_request`]); hyper's clients get them in the map ([`add_forwarding`]).
    pub fn fields(&self) -> [Added<'a>; 5] {
        [
            Added { name: &X_FORWARDED_FOR, value: self.client_ip.as_bytes(), joins: true },
            Added { name: &X_FORWARDED_PROTO, value: if self.tls { b"https" } else { b"http" }, joins: false },
            Added { name: &VIA, value: via_hop(self.version).as_bytes(), joins: true },
            Added { name: &TRACEPARENT, value: self.traceparent, joins: false },
            Added { name: &X_REQUEST_ID, value: self.request_id.as_bytes(), joins: false },
        ]
    }
}

/// Sets the forwarding headers on a request going upstream through hyper's client.
pub fn add_forwarding(headers: &mut HeaderMap, f: &ForwardedFor<'_>) {
    for field in f.fields() {
        field.apply(headers);
    }
}

/// This hop in `via`, by the HTTP version it was received with.
pub fn via_hop(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0 portico",
        Version::HTTP_2 => "2 portico",
        _ => "1.1 portico",
    }
}

/// Appends this hop to `via`, joined to the hops already there (all of them, however many fields they came
/// in) in one field.
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let hop = via_hop(version);
    // One probe of the map: the field found or its place to go.
    match headers.entry(http::header::VIA) {
        http::header::Entry::Occupied(mut field) => {
            let mut joined = Vec::new();
            for existing in field.iter().filter(|v| !v.is_empty()) {
                joined.extend_from_slice(existing.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(hop.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
                field.insert(v);
            }
        }
        // The usual case: a first hop, a static value.
        http::header::Entry::Vacant(place) => {
            place.insert(HeaderValue::from_static(hop));
        }
    }
}

/// HTTP/2 requests carry the host in `:authority`; HTTP/1.1 upstreams need a `Host` header. A request with
/// neither (HTTP/1.0 without `Host`, HTTP/2 without `:authority`) goes with an empty one, as RFC 9112 §3.2 has
/// a client send when the target has no authority.
pub fn ensure_host(headers: &mut HeaderMap, version: Version, authority: Option<&http::uri::Authority>) {
    // An HTTP/1.1 request in origin-form (nearly every reverse-proxied one) was refused without `Host`: the
    // map is not looked up then (~100 instructions a request).
    if authority.is_none() && version == Version::HTTP_11 {
        return;
    }
    if !headers.contains_key(HOST) {
        let value = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        headers.insert(HOST, value.unwrap_or_else(|| HeaderValue::from_static("")));
    }
}

/// A version as a request line spells it (`HTTP/1.1`; `request.protocol` in Envoy's attributes, the access
/// log's `protocol`), without the formatting machinery `{:?}` runs per request.
pub fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Joins an HTTP/2 request's `cookie` fields into one, with `; ` (RFC 9113 §8.2.3: a client may split its
/// cookies into crumbs for header compression, and they MUST be joined before the request goes on as HTTP/1.1;
/// an origin takes a request's one `Cookie` header, RFC 6265 §5.4, and many read only the first or the last).
/// Done before plugins see the request, so they read one `cookie` field whatever protocol the client spoke.
pub fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for crumb in &headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Each crumb was a valid value, and so is their join.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

/// Removes framing headers that must not be copied onto an HTTP/2 response or request.
pub fn strip_framing(headers: &mut HeaderMap) {
    headers.remove(TRANSFER_ENCODING);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_fields_are_the_first_values_however_many_fields_there_are() {
        for extra in [0, 3, 20] {
            let mut h = HeaderMap::new();
            h.append(HOST, HeaderValue::from_static("a"));
            assert_eq!(id_fields(&h), (None, None));
            for i in 0..extra {
                h.append(
                    HeaderName::from_bytes(format!("x-f{i}").as_bytes()).expect("a field name"),
                    HeaderValue::from_static("v"),
                );
            }
            h.append(&X_REQUEST_ID, HeaderValue::from_static("id-1"));
            h.append(&TRACEPARENT, HeaderValue::from_static("tp-1"));
            h.append(&X_REQUEST_ID, HeaderValue::from_static("id-2"));
            h.append(&TRACEPARENT, HeaderValue::from_static("tp-2"));
            assert_eq!(id_fields(&h), (Some(&b"tp-1"[..]), Some(&b"id-1"[..])), "{extra} extra fields");
            h.remove(&TRACEPARENT);
            assert_eq!(id_fields(&h), (None, Some(&b"id-1"[..])), "{extra} extra fields");
        }
    }

    #[test]
    fn each_hop_by_hop_name_has_its_own_bit() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(name.as_str()), 1 << i, "{name}");
        }
        assert_eq!(hop_by_hop_bit(UPGRADE.as_str()), UPGRADE_BIT);
        assert_eq!(hop_by_hop_bit("host"), 0);
        assert_eq!(hop_by_hop_bit("x-connection"), 0);
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic abc"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none() && h.get(CONNECTION).is_none());
        assert!(h.get("proxy-authorization").is_none());
        assert_eq!(h.get(TE).map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn connection_tokens_remove_what_they_name_and_nothing_else() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("close, Upgrade"));
        h.append(CONNECTION, HeaderValue::from_static("X-Hop , keep-alive"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("close", HeaderValue::from_static("a header named like a connection option goes too"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        let mut upgrading = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-hop").is_none() && h.get(UPGRADE).is_none() && h.get(CONNECTION).is_none());
        assert!(h.get("x-keep").is_some() && h.get("close").is_none());
        strip_hop_by_hop(&mut upgrading, true);
        assert_eq!(upgrading.get(UPGRADE).map(|v| v.as_bytes()), Some(&b"websocket"[..]));
        assert!(upgrading.get("x-hop").is_none() && upgrading.get(CONNECTION).is_none());
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert("x-keep", HeaderValue::from_static("yes"));
        h.insert(HOST, HeaderValue::from_static("example.com"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn appends_xff_and_via() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        add_forwarding(
            &mut h,
            &ForwardedFor {
                client_ip: &HeaderValue::from_static("127.0.0.1"),
                tls: false,
                version: Version::HTTP_11,
                traceparent: b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                request_id: "abc",
            },
        );
        assert_eq!(h.get("x-forwarded-for").map(|v| v.as_bytes()), Some(&b"1.2.3.4, 127.0.0.1"[..]));
        assert_eq!(h.get("via").map(|v| v.as_bytes()), Some(&b"1.1 portico"[..]));
        assert_eq!(h.get("x-forwarded-proto").map(|v| v.as_bytes()), Some(&b"http"[..]));
    }
}
