//! The client's heads: a request head written into one buffer (so it leaves in one write, with the first body
//! bytes when they are at hand), and a response head parsed in place: its field values are slices of the read
//! buffer the head arrived in ([`Bytes`]), not copies, and it is parsed once. The server's are in
//! [`super::server_head`].

use super::framing::BodyLength;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, StatusCode, Version};
use std::mem::MaybeUninit;

/// The most fields a head may have (hyper's default too).
pub const MAX_FIELDS: usize = 100;
/// The largest response head read.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why a response head could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x, or malformed (httparse's reason).
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    /// Larger than [`MAX_RESPONSE_HEAD`].
    #[error("response head too large")]
    TooLarge,
    /// A field name or value http refuses.
    #[error("invalid response header field")]
    InvalidField,
}

/// Where each field's name and value lie in a head (offsets and lengths), so that the values can share the
/// buffer once the head is split off it, without parsing it twice. Not zeroed first: that cost as much as the
/// parse.
pub(super) type Spans = arrayvec::ArrayVec<(u32, u32, u32, u32), MAX_FIELDS>;

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status.
    pub status: StatusCode,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The fields, values sharing the read buffer. A `Connection` field saying only `keep-alive` or `close`
    /// is read here and left out (it is hop-by-hop, and the proxy would only remove it again); one that names
    /// other options stays, for the hop-by-hop stripping to act on.
    pub headers: HeaderMap,
    /// The fields as they arrived, when they can be passed on without a map (see [`super::raw`]); `headers`
    /// is then empty.
    pub raw: Option<Box<super::raw::RawFields>>,
    keep_alive: bool,
}

impl ResponseHead {
    /// Whether the connection may carry another exchange after this one (RFC 9112 §9.3): HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub fn keeps_alive(&self) -> bool {
        self.keep_alive
    }

    /// Whether the answer is a 204 carrying `Content-Length` or `Transfer-Encoding` (see
    /// [`super::framing::claims_a_forbidden_body`]): its connection is not reused.
    pub fn claims_a_forbidden_body(&self) -> bool {
        match &self.raw {
            Some(raw) => super::framing::claims_a_forbidden_body(self.status, &**raw),
            None => super::framing::claims_a_forbidden_body(self.status, &self.headers),
        }
    }

    /// How long the body of this answer to `method` is.
    pub fn body_length(&self, method: &Method) -> Result<BodyLength, super::framing::FramingError> {
        match &self.raw {
            Some(raw) => super::framing::response_body(method, self.status, self.version, &**raw),
            None => super::framing::response_body(method, self.status, self.version, &self.headers),
        }
    }
}

/// What a response's `Connection` fields say.
#[derive(Debug, Default)]
pub(super) struct ConnectionOptions {
    close: bool,
    keep_alive: bool,
}

impl ConnectionOptions {
    /// Notes one `Connection` value; true when it says nothing but `keep-alive` and `close`.
    pub(super) fn note(&mut self, value: &[u8]) -> bool {
        // The usual value, whole.
        if super::eq_lowercase(value, b"keep-alive") {
            self.keep_alive = true;
            return true;
        }
        let mut only_persistence = true;
        for token in super::elements(value) {
            if super::eq_lowercase(token, b"close") {
                self.close = true;
            } else if super::eq_lowercase(token, b"keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() {
                only_persistence = false;
            }
        }
        only_persistence
    }
}

/// Parses the response head at the front of `buf` and splits it off; `Ok(None)` while it is incomplete.
pub fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, HeadError> {
    let mut spans = Spans::new();
    let (len, code, minor) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut response = httparse::Response::new(&mut []);
        let parsed =
            httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, &buf[..], &mut fields);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => return Err(HeadError::TooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(HeadError::Malformed(e)),
        };
        if len > MAX_RESPONSE_HEAD {
            return Err(HeadError::TooLarge);
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        for field in response.headers.iter() {
            spans.push((
                offset(field.name.as_bytes()),
                field.name.len() as u32,
                offset(field.value),
                field.value.len() as u32,
            ));
        }
        (len, response.code.unwrap_or(0), response.version.unwrap_or(1))
    };
    let head: Bytes = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Malformed(httparse::Error::Status))?;
    let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    let keeps_alive = |c: &ConnectionOptions| !c.close && (version == Version::HTTP_11 || c.keep_alive);
    if !status.is_informational() {
        let mut connection = ConnectionOptions::default();
        if let Some(raw) = super::raw::RawFields::new(&head, &spans, &mut connection) {
            // The map holds what replaces the upstream's fields (`x-request-id`): a kept one, whose tables
            // are already made, so that field costs no allocation and the map goes back where it came from
            // (a fresh map allocated its tables for that one field, and the thread's spares, given two maps a
            // request and asked for one, dropped one: ~150 instructions a request, measured).
            let (headers, keep_alive) = (super::maps::take(2), keeps_alive(&connection));
            return Ok(Some(ResponseHead { status, version, headers, raw: Some(raw), keep_alive }));
        }
    }
    let mut connection = ConnectionOptions::default();
    let mut headers = super::maps::take(spans.len() + 2);
    for &(name_at, name_len, value_at, value_len) in &spans {
        let (name_at, value_at) = (name_at as usize, value_at as usize);
        let name = super::names::field_name(&head[name_at..name_at + name_len as usize])
            .map_err(|_| HeadError::InvalidField)?;
        if name == header::CONNECTION && connection.note(&head[value_at..value_at + value_len as usize]) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len as usize))
            .map_err(|_| HeadError::InvalidField)?;
        headers.append(name, value);
    }
    let keep_alive = keeps_alive(&connection);
    Ok(Some(ResponseHead { status, version, headers, raw: None, keep_alive }))
}

/// A field the proxy adds to a request on its way upstream (`x-forwarded-for`, `via`, `traceparent`, …). Written
/// straight into the head rather than inserted into the request's map first: five inserts (each a hash, a
/// probe and a value allocated for the dynamic ones) cost more than the rest of writing the head.
#[derive(Debug, Clone, Copy)]
pub struct Added<'a> {
    /// The field.
    pub name: &'a HeaderName,
    /// This hop's value.
    pub value: &'a [u8],
    /// The field is a list this hop joins (its value goes after the request's own non-empty values, RFC 9110
    /// §5.3); otherwise the value replaces the request's own.
    pub joins: bool,
}

impl Added<'_> {
    /// Sets the field in a map (for requests that go through hyper's clients), as [`encode_request`] writes it.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let mut value = Vec::new();
        if self.joins {
            for existing in headers.get_all(self.name).iter().filter(|v| !v.is_empty()) {
                value.extend_from_slice(existing.as_bytes());
                value.extend_from_slice(b", ");
            }
        }
        value.extend_from_slice(self.value);
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
            headers.insert(self.name.clone(), value);
        }
    }
}

/// Writes an HTTP/1.1 request head into `out`: the request line, every field but the framing ones and those
/// `added` sets, the `added` fields (joined with the request's own where they join), and the framing Portico
/// chose for the body it will send (`Content-Length` or `Transfer-Encoding: chunked`; none for an empty body
/// unless the method usually has one).
pub fn encode_request(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    added: &[Added<'_>],
    body: BodyLength,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Which added fields the request has values of (at most 64 added fields are looked for).
    let mut present = 0u64;
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        if let Some(i) = added.iter().position(|a| a.name == name) {
            present |= 1u64.checked_shl(i as u32).unwrap_or(0);
            continue;
        }
        push_field(out, name, value.as_bytes());
    }
    for (i, field) in added.iter().enumerate() {
        out.extend_from_slice(field.name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        if field.joins && present & 1u64.checked_shl(i as u32).unwrap_or(0) != 0 {
            for existing in headers.get_all(field.name).iter().filter(|v| !v.is_empty()) {
                out.extend_from_slice(existing.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(field.value);
        out.extend_from_slice(b"\r\n");
    }
    match body {
        BodyLength::Empty if matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        body => push_framing(out, body),
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the framing field a body of this length is sent with (`Content-Length` or
/// `Transfer-Encoding: chunked`; none for no body).
pub(super) fn push_framing(out: &mut Vec<u8>, body: BodyLength) {
    match body {
        BodyLength::Fixed(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyLength::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // Ended by closing: no field says so.
        BodyLength::UntilClose | BodyLength::Empty => {}
    }
}

/// Appends one `name: value` line.
pub(super) fn push_field(out: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `n` in lowercase hexadecimal (a chunk size).
pub fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response_head_in_place_and_leaves_the_body() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello"[..]);
        let head = parse_response(&mut buf).ok().flatten().unwrap_or_else(|| panic!("no head"));
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.body_length(&Method::GET), Ok(BodyLength::Fixed(5)));
        assert!(head.keeps_alive());
        let fields = head.raw.unwrap_or_else(|| panic!("plain fields stay raw")).into_map(HeaderMap::new());
        assert_eq!(fields.get_all("x-a").iter().count(), 2);
        assert_eq!(fields.get(CONTENT_LENGTH).map(|v| v.as_bytes()), Some(&b"5"[..]));
        assert_eq!(&buf[..], b"hello");
        let mut closing =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: Close\r\n\r\n"[..]);
        let head = parse_response(&mut closing).ok().flatten().unwrap_or_else(|| panic!("no head"));
        assert!(!head.keeps_alive());
        assert!(head.headers.get(header::CONNECTION).is_none(), "nothing but persistence: read and left out");
        let mut naming = BytesMut::from(&b"HTTP/1.0 200 OK\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\n\r\n"[..]);
        let head = parse_response(&mut naming).ok().flatten().unwrap_or_else(|| panic!("no head"));
        assert!(head.keeps_alive(), "HTTP/1.0 with keep-alive");
        assert!(head.headers.get(header::CONNECTION).is_some(), "kept: it names another field to remove");
    }

    #[test]
    fn incomplete_malformed_and_oversized_heads() {
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert_eq!(parse_response(&mut partial).map(|h| h.is_none()), Ok(true));
        assert_eq!(partial.len(), 27, "an incomplete head stays in the buffer");
        let mut folded = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  continued\r\n\r\n"[..]);
        assert!(matches!(parse_response(&mut folded), Err(HeadError::Malformed(_))), "obs-fold is refused");
        let mut garbage = BytesMut::from(&b"SSH-2.0-OpenSSH\r\n\r\n"[..]);
        assert!(matches!(parse_response(&mut garbage), Err(HeadError::Malformed(_))));
        let mut huge = BytesMut::from(format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_RESPONSE_HEAD)).as_bytes());
        assert_eq!(parse_response(&mut huge).err(), Some(HeadError::TooLarge));
        let mut old = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\n"[..]);
        let head = parse_response(&mut old).ok().flatten().unwrap_or_else(|| panic!("no head"));
        assert!(!head.keeps_alive(), "HTTP/1.0 closes unless it says keep-alive");
    }

    #[test]
    fn added_fields_join_or_replace_the_requests_own_in_the_head_and_in_a_map() {
        let xff = HeaderName::from_static("x-forwarded-for");
        let id = HeaderName::from_static("x-request-id");
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("a"));
        headers.append(&xff, HeaderValue::from_static("1.1.1.1"));
        headers.append(&xff, HeaderValue::from_static(""));
        headers.append(&xff, HeaderValue::from_static("2.2.2.2"));
        headers.insert(&id, HeaderValue::from_static("client's"));
        let added = [
            Added { name: &xff, value: b"127.0.0.1", joins: true },
            Added { name: &header::VIA, value: b"1.1 portico", joins: true },
            Added { name: &id, value: b"abc", joins: false },
        ];
        let mut out = Vec::new();
        encode_request(&mut out, &Method::GET, "/", &headers, &added, BodyLength::Empty);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 127.0.0.1\r\nvia: 1.1 portico\r\n\
             x-request-id: abc\r\n\r\n"
        );
        for field in &added {
            field.apply(&mut headers);
        }
        assert_eq!(headers.get(&xff).map(|v| v.as_bytes()), Some(&b"1.1.1.1, 2.2.2.2, 127.0.0.1"[..]));
        assert_eq!(headers.get_all(&xff).iter().count(), 1);
        assert_eq!(headers.get(header::VIA).map(|v| v.as_bytes()), Some(&b"1.1 portico"[..]));
        assert_eq!(headers.get(&id).map(|v| v.as_bytes()), Some(&b"abc"[..]));
    }

    #[test]
    fn request_heads_carry_the_framing_portico_chose() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("a"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let mut out = Vec::new();
        encode_request(&mut out, &Method::POST, "/x?y", &headers, &[], BodyLength::Fixed(12345));
        assert_eq!(out, b"POST /x?y HTTP/1.1\r\nhost: a\r\ncontent-length: 12345\r\n\r\n");
        encode_request(&mut out, &Method::GET, "/", &headers, &[], BodyLength::Empty);
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        encode_request(&mut out, &Method::PUT, "/", &HeaderMap::new(), &[], BodyLength::Empty);
        assert_eq!(out, b"PUT / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        encode_request(&mut out, &Method::POST, "/", &HeaderMap::new(), &[], BodyLength::Chunked);
        assert_eq!(out, b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
        let mut hex = Vec::new();
        push_hex(&mut hex, 0x1f0);
        push_hex(&mut hex, 0);
        assert_eq!(hex, b"1f00");
    }
}
