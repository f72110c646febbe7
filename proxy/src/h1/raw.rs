//! An upstream's answer fields passed on as the upstream wrote them.
//!
//! Reading an answer's fields into a `HeaderMap` (a name looked up, a value checked and appended, each hashed
//! into the map's index) and writing them out again cost about 2,000 instructions of a proxied request's
//! 23,000, for fields the proxy only passes on. So when nothing needs them as a map, an upstream's answer keeps
//! its head as it arrived ([`RawFields`]: the head's bytes and where each field lies) and the server writes
//! its end-to-end fields from there, in the upstream's order and spelling, as nginx and HAProxy do. Each field
//! is sorted once, by its name's text, into what the proxy does with it ([`Role`]).
//!
//! A map is still made ([`RawFields::into_map`]) wherever the fields are read: by plugins, by a callout's
//! caller, or when hyper serves the client. While the fields are raw, the answer's own map holds only fields
//! that replace the upstream's of the same name: that is how the map is merged in, whether the fields are
//! written or made a map. The one every answer gets, this request's `x-request-id`, is kept beside the raw
//! fields instead ([`RawFields::set_request_id`]): put in the map it cost a checked copy into a new
//! allocation and a hashed insert per request.
//!
//! Heads that do not fit this simple picture stay maps from the start: informational answers, more than
//! [`MOST_FIELDS`] fields, a `Connection` field naming other fields to remove, a `TE` field.

use super::framing::FramingFields;
use super::head::ConnectionOptions;
use crate::forward::headers::X_REQUEST_ID;
use crate::trace_context::RequestId;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};

/// Heads with more fields are read into a map.
pub const MOST_FIELDS: usize = 24;

/// What the proxy does with a field of an upstream's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Passed on as it is.
    EndToEnd,
    /// `date`: passed on, and the server adds none of its own.
    Date,
    /// `via`: passed on, with this proxy's hop joined to the last one.
    Via,
    /// `content-length`: read for the body's framing; the server writes the framing it sends.
    ContentLength,
    /// `transfer-encoding`: likewise.
    TransferEncoding,
    /// `connection` (naming nothing but `keep-alive` or `close`), `keep-alive`, `proxy-connection`,
    /// `proxy-authenticate`, `proxy-authorization`, `trailer`, `upgrade`: this hop's, dropped (RFC 9110 §7.6.1).
    HopByHop,
    /// `te`: a request field, which the map-based stripping keeps as `te: trailers`; heads with one stay maps.
    Te,
    /// `x-request-id`: passed on, unless the proxy set its own ([`RawFields::set_request_id`]).
    RequestId,
}

/// Sorts a field by its name, in any letter case: by its length and first letter, then the whole name.
pub fn role(name: &[u8]) -> Role {
    let Some(first) = name.first() else { return Role::EndToEnd };
    let is = |text: &str| super::eq_lowercase(name, text.as_bytes());
    match (name.len(), first | 0x20) {
        (2, b't') if is("te") => Role::Te,
        (3, b'v') if is("via") => Role::Via,
        (4, b'd') if is("date") => Role::Date,
        (7, b't') if is("trailer") => Role::HopByHop,
        (7, b'u') if is("upgrade") => Role::HopByHop,
        (10, b'c') if is("connection") => Role::HopByHop,
        (10, b'k') if is("keep-alive") => Role::HopByHop,
        (12, b'x') if is("x-request-id") => Role::RequestId,
        (14, b'c') if is("content-length") => Role::ContentLength,
        (16, b'p') if is("proxy-connection") => Role::HopByHop,
        (17, b't') if is("transfer-encoding") => Role::TransferEncoding,
        (18, b'p') if is("proxy-authenticate") => Role::HopByHop,
        (19, b'p') if is("proxy-authorization") => Role::HopByHop,
        _ => Role::EndToEnd,
    }
}

/// Where one field lies in the head.
#[derive(Debug, Clone, Copy)]
struct Field {
    name_at: u32,
    value_at: u32,
    value_len: u32,
    name_len: u16,
    role: Role,
}

/// An answer's fields as the upstream wrote them.
#[derive(Debug)]
pub struct RawFields {
    head: Bytes,
    fields: arrayvec::ArrayVec<Field, MOST_FIELDS>,
    /// This proxy's `via` hop, once the answer is on its way to the client.
    via: Option<&'static str>,
    /// The request's `x-request-id`, which replaces the upstream's, once the answer is on its way.
    request_id: Option<RequestId>,
}

impl RawFields {
    /// The fields of a head split off its read buffer, from their `(name_at, name_len, value_at, value_len)`
    /// spans, with what its `Connection` fields say noted in `connection`; `None` when the head should be read
    /// into a map (see the module's doc). Boxed first and filled in place: built on the stack, its 400 bytes
    /// were copied twice on the way into the box.
    pub(super) fn new(
        head: &Bytes,
        spans: &[(u32, u32, u32, u32)],
        connection: &mut ConnectionOptions,
    ) -> Option<Box<RawFields>> {
        if spans.len() > MOST_FIELDS {
            return None;
        }
        let mut raw =
            Box::new(RawFields { head: head.clone(), fields: arrayvec::ArrayVec::new(), via: None, request_id: None });
        for &(name_at, name_len, value_at, value_len) in spans {
            let name = head.get(name_at as usize..(name_at + name_len) as usize)?;
            let role = role(name);
            match role {
                Role::Te => return None,
                Role::HopByHop if name.len() == 10 && name[0] | 0x20 == b'c' => {
                    let value = head.get(value_at as usize..(value_at + value_len) as usize)?;
                    if !connection.note(value) {
                        // It names other fields to remove: the map-based stripping does that.
                        return None;
                    }
                }
                _ => {}
            }
            raw.fields.push(Field { name_at, value_at, value_len, name_len: u16::try_from(name_len).ok()?, role });
        }
        Some(raw)
    }

    fn name(&self, field: &Field) -> &[u8] {
        &self.head[field.name_at as usize..field.name_at as usize + field.name_len as usize]
    }

    fn value(&self, field: &Field) -> &[u8] {
        &self.head[field.value_at as usize..field.value_at as usize + field.value_len as usize]
    }

    /// The values of the fields with this role, in order.
    pub fn values(&self, role: Role) -> impl Iterator<Item = &[u8]> {
        self.fields.iter().filter(move |f| f.role == role).map(|f| self.value(f))
    }

    /// Whether the upstream dated its answer.
    pub fn has_date(&self) -> bool {
        self.fields.iter().any(|f| f.role == Role::Date)
    }

    /// Joins this proxy's hop to `via` (see [`crate::forward::headers::via_hop`]).
    pub fn add_via(&mut self, hop: &'static str) {
        self.via = Some(hop);
    }

    /// Sends `id` as the answer's `x-request-id`, in place of any the upstream sent.
    pub fn set_request_id(&mut self, id: RequestId) {
        self.request_id = Some(id);
    }

    /// Whether a field of this role is left out because the proxy replaces it.
    fn replaced_here(&self, role: Role) -> bool {
        role == Role::RequestId && self.request_id.is_some()
    }

    /// Appends the end-to-end fields as `name: value` lines, in the upstream's order and spelling, leaving out
    /// those `replaced` has (the map's own fields, which the caller writes).
    pub fn write(&self, out: &mut Vec<u8>, replaced: &HeaderMap) {
        let last_via = self.fields.iter().rposition(|f| f.role == Role::Via);
        // The map's names, looked at once (it holds one or two: `x-request-id`).
        let mut replacing = arrayvec::ArrayVec::<&str, 8>::new();
        let mut many = false;
        for name in replaced.keys() {
            many |= replacing.try_push(name.as_str()).is_err();
        }
        for (i, field) in self.fields.iter().enumerate() {
            if matches!(field.role, Role::ContentLength | Role::TransferEncoding | Role::HopByHop | Role::Te)
                || self.replaced_here(field.role)
            {
                continue;
            }
            let name = self.name(field);
            let replaced_here = if many {
                replaced.keys().any(|k| name.eq_ignore_ascii_case(k.as_str().as_bytes()))
            } else {
                replacing.iter().any(|k| k.len() == name.len() && name.eq_ignore_ascii_case(k.as_bytes()))
            };
            if replaced_here {
                continue;
            }
            // The line as the upstream wrote it, from the name to the end of the value (the colon and the
            // spaces after it too: httparse allows none before the colon and no folded lines).
            let value_end = field.value_at as usize + field.value_len as usize;
            out.extend_from_slice(&self.head[field.name_at as usize..value_end]);
            if let (Some(hop), true) = (self.via, Some(i) == last_via) {
                if field.value_len > 0 {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(hop.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        if let (Some(hop), None) = (self.via, last_via) {
            // Looked for among the names already gathered (a map lookup hashes, ~90 instructions a request).
            let has_via = if many { replaced.contains_key(header::VIA) } else { replacing.contains(&"via") };
            if !has_via {
                out.extend_from_slice(b"via: ");
                out.extend_from_slice(hop.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        if let Some(id) = &self.request_id {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The fields as the map they would have been read into, then passed through the proxy's response
    /// stripping: framing fields but `content-length` and hop-by-hop fields left out, this proxy's `via` hop
    /// joined to the others, and `replaced`'s fields in place of the upstream's of the same names.
    pub fn into_map(self, replaced: HeaderMap) -> HeaderMap {
        let mut map = super::maps::take(self.fields.len() + replaced.len() + 1);
        let mut via: Vec<u8> = Vec::new();
        for field in &self.fields {
            let name = match field.role {
                Role::TransferEncoding | Role::HopByHop | Role::Te => continue,
                Role::Via => {
                    if !via.is_empty() {
                        via.extend_from_slice(b", ");
                    }
                    via.extend_from_slice(self.value(field));
                    continue;
                }
                Role::RequestId if self.request_id.is_some() => continue,
                Role::EndToEnd | Role::Date | Role::ContentLength | Role::RequestId => self.name(field),
            };
            // httparse has checked the name as a token and the value's bytes, the same rules as http's, so
            // neither fails here (a test pins the value rule for every byte).
            let (Ok(name), Ok(value)) = (
                super::names::field_name(name),
                HeaderValue::from_maybe_shared(
                    self.head.slice(field.value_at as usize..field.value_at as usize + field.value_len as usize),
                ),
            ) else {
                continue;
            };
            map.append(name, value);
        }
        if let Some(hop) = self.via {
            if !via.is_empty() {
                via.extend_from_slice(b", ");
            }
            via.extend_from_slice(hop.as_bytes());
        }
        if !via.is_empty() {
            if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(via)) {
                map.insert(header::VIA, value);
            }
        }
        if let Some(Ok(value)) = self.request_id.as_deref().map(HeaderValue::from_str) {
            map.insert(X_REQUEST_ID.clone(), value);
        }
        // Each of `replaced`'s names replaces the upstream's values, then its own further values are appended.
        map.extend(replaced);
        map
    }
}

impl FramingFields for RawFields {
    fn content_lengths(&self) -> impl Iterator<Item = &[u8]> {
        self.values(Role::ContentLength)
    }

    fn transfer_encodings(&self) -> impl Iterator<Item = &[u8]> {
        self.values(Role::TransferEncoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn raw(head: &[u8]) -> RawFields {
        let mut buf = BytesMut::from(head);
        match super::super::head::parse_response(&mut buf) {
            Ok(Some(head)) => *head.raw.unwrap_or_else(|| panic!("read into a map")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fields_are_written_as_the_upstream_wrote_them_but_this_hops() {
        let mut fields = raw(b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\
            Connection: keep-alive\r\nX-Request-Id: theirs\r\nVia: 1.0 a, 1.1 b\r\nvia: 1.1 c\r\nDate: then\r\n\r\n");
        assert!(fields.has_date());
        assert_eq!(fields.content_lengths().collect::<Vec<_>>(), [&b"5"[..]]);
        fields.add_via("1.1 portico");
        let mut replaced = HeaderMap::new();
        replaced.insert("x-request-id", HeaderValue::from_static("ours"));
        let mut out = Vec::new();
        fields.write(&mut out, &replaced);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Server: nginx\r\nVia: 1.0 a, 1.1 b\r\nvia: 1.1 c, 1.1 portico\r\nDate: then\r\n"
        );
        let map = fields.into_map(replaced);
        let listed: Vec<(String, String)> =
            map.iter().map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
        let expected = [
            ("server", "nginx"),
            ("content-length", "5"),
            ("x-request-id", "ours"),
            ("date", "then"),
            ("via", "1.0 a, 1.1 b, 1.1 c, 1.1 portico"),
        ];
        assert_eq!(listed, expected.map(|(n, v)| (n.to_string(), v.to_string())));
    }

    #[test]
    fn a_hop_is_added_where_the_upstream_sent_no_via() {
        let mut fields = raw(b"HTTP/1.1 204 No Content\r\nX-A:1\r\nX-Empty:\r\nX-Spaced:  \t2\t \r\n\r\n");
        assert!(!fields.has_date());
        fields.add_via("1.1 portico");
        let mut out = Vec::new();
        fields.write(&mut out, &HeaderMap::new());
        assert_eq!(String::from_utf8_lossy(&out), "X-A:1\r\nX-Empty:\r\nX-Spaced:  \t2\r\nvia: 1.1 portico\r\n");
        let map = fields.into_map(HeaderMap::new());
        assert_eq!(map.get(header::VIA).map(|v| v.as_bytes()), Some(&b"1.1 portico"[..]));
    }

    #[test]
    fn the_proxys_request_id_replaces_every_one_the_upstream_sent() {
        let head =
            b"HTTP/1.1 200 OK\r\nX-Request-Id: one\r\nServer: s\r\nx-request-id: two\r\nX-Request-Ids: kept\r\n\r\n";
        let id = RequestId::Made(arrayvec::ArrayString::from("0123456789abcdef0123456789abcdef").unwrap_or_default());
        let mut fields = raw(head);
        fields.set_request_id(id.clone());
        let mut out = Vec::new();
        fields.write(&mut out, &HeaderMap::new());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Server: s\r\nX-Request-Ids: kept\r\nx-request-id: 0123456789abcdef0123456789abcdef\r\n"
        );
        let map = fields.into_map(HeaderMap::new());
        let ids: Vec<_> = map.get_all("x-request-id").iter().map(|v| v.as_bytes().to_vec()).collect();
        assert_eq!(ids, [id.as_bytes().to_vec()]);
        assert_eq!(map.get("x-request-ids").map(|v| v.as_bytes()), Some(&b"kept"[..]));

        // Without one of the proxy's, the upstream's are passed on.
        let fields = raw(head);
        let mut out = Vec::new();
        fields.write(&mut out, &HeaderMap::new());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "X-Request-Id: one\r\nServer: s\r\nx-request-id: two\r\nX-Request-Ids: kept\r\n"
        );
        assert_eq!(fields.into_map(HeaderMap::new()).get_all("x-request-id").iter().count(), 2);
    }

    #[test]
    fn names_are_sorted_in_any_letter_case() {
        for (name, expected) in [
            ("TE", Role::Te),
            ("vIa", Role::Via),
            ("Date", Role::Date),
            ("Trailer", Role::HopByHop),
            ("UPGRADE", Role::HopByHop),
            ("Connection", Role::HopByHop),
            ("keep-alive", Role::HopByHop),
            ("Content-Length", Role::ContentLength),
            ("Proxy-Connection", Role::HopByHop),
            ("Transfer-Encoding", Role::TransferEncoding),
            ("Proxy-Authenticate", Role::HopByHop),
            ("Proxy-Authorization", Role::HopByHop),
            ("content-lengths", Role::EndToEnd),
            ("x-via", Role::EndToEnd),
            ("dates", Role::EndToEnd),
            ("X-Request-ID", Role::RequestId),
            ("x-request-ids", Role::EndToEnd),
        ] {
            assert_eq!(role(name.as_bytes()), expected, "{name}");
        }
    }

    /// Values written from the head are never checked again: every byte httparse lets into a field value
    /// must be one `HeaderValue` takes too (and the other way round, so no answer is read differently).
    #[test]
    fn httparse_and_http_agree_on_every_value_byte() {
        for byte in 0..=255u8 {
            if matches!(byte, b'\r' | b'\n') {
                continue;
            }
            let head = [&b"HTTP/1.1 200 OK\r\nX: a"[..], &[byte], b"b\r\n\r\n"].concat();
            let mut fields = [httparse::EMPTY_HEADER; 4];
            let httparse_takes =
                matches!(httparse::Response::new(&mut fields).parse(&head), Ok(httparse::Status::Complete(_)));
            let http_takes = HeaderValue::from_bytes(&[b'a', byte, b'b']).is_ok();
            assert_eq!(httparse_takes, http_takes, "byte {byte:#04x}");
        }
    }

    #[test]
    fn heads_that_stay_maps() {
        let read_as_map = |head: &[u8]| {
            let mut buf = BytesMut::from(head);
            match super::super::head::parse_response(&mut buf) {
                Ok(Some(head)) => head.raw.is_none(),
                other => panic!("{other:?}"),
            }
        };
        assert!(read_as_map(b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nx-hop: 1\r\n\r\n"));
        assert!(read_as_map(b"HTTP/1.1 200 OK\r\nTE: trailers\r\n\r\n"));
        assert!(read_as_map(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"));
        let many: String = (0..=MOST_FIELDS).map(|i| format!("x-{i}: {i}\r\n")).collect();
        assert!(read_as_map(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()));
        assert!(!read_as_map(b"HTTP/1.1 200 OK\r\nConnection: close\r\nX-A: 1\r\n\r\n"));
    }
}
