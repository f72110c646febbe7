//! A request's head lent to a plugin's request-side callbacks and read in place: `proxy_get_header_map_value`
//! and the `request.*` properties answer from the proxy's own method, target and fields, so a request whose
//! plugins only read its head (a router matching `:path`, a balancer hashing a header) builds no header list.
//! The first hostcall that changes the map turns the head into the plugin-visible list (pseudo-headers first,
//! as [`RequestHead::to_list`] writes it), and the phase writes that list back into the head when the callback
//! returns ([`RequestHead::apply`]).

use http::header::{HeaderName, HeaderValue, HOST};

use crate::types::HeaderMap;

/// The parts of a request head a plugin sees: `:method`, `:path`, `:authority` and `:scheme` come from
/// `method` and `uri` (`:authority` from the `Host` field when the target has none); every field but `Host`
/// follows, in `headers`' order.
#[derive(Debug, Default)]
pub struct RequestHead {
    /// `:method`.
    pub method: http::Method,
    /// `:path` (its path and query), `:scheme` (`http` when the target has none) and `:authority`.
    pub uri: http::Uri,
    /// The request's fields.
    pub headers: http::HeaderMap,
}

/// The pseudo-headers, in the order the plugin-visible list starts with them.
const PSEUDO: [&str; 4] = [":method", ":path", ":authority", ":scheme"];

impl RequestHead {
    /// Moves the head out of `parts` (nothing is copied; `parts` keeps placeholders until
    /// [`RequestHead::put_into`]).
    pub fn take_from(parts: &mut http::request::Parts) -> Self {
        RequestHead {
            method: std::mem::take(&mut parts.method),
            uri: std::mem::take(&mut parts.uri),
            headers: std::mem::take(&mut parts.headers),
        }
    }

    /// Moves the head back into `parts`.
    pub fn put_into(self, parts: &mut http::request::Parts) {
        (parts.method, parts.uri, parts.headers) = (self.method, self.uri, self.headers);
    }

    fn pseudo(&self, i: usize) -> &[u8] {
        match i {
            0 => self.method.as_str().as_bytes(),
            1 => self.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes(),
            2 => self.authority(),
            _ => self.uri.scheme_str().unwrap_or("http").as_bytes(),
        }
    }

    fn authority(&self) -> &[u8] {
        match self.uri.authority() {
            Some(a) => a.as_str().as_bytes(),
            None => self.headers.get(HOST).map_or(&b""[..], HeaderValue::as_bytes),
        }
    }

    /// The value of `name` (ASCII case-insensitive), the first one when the field repeats, as the list
    /// would answer: `host` is not in it (`:authority` is).
    pub(crate) fn get(&self, name: &[u8]) -> Option<&[u8]> {
        if let Some(i) = PSEUDO.iter().position(|p| p.as_bytes().eq_ignore_ascii_case(name)) {
            return Some(self.pseudo(i));
        }
        if name.eq_ignore_ascii_case(b"host") {
            return None;
        }
        // Looked up as text, which `http` matches case-insensitively without allocating; a name that is not
        // text is in no map.
        self.headers.get(std::str::from_utf8(name).ok()?).map(HeaderValue::as_bytes)
    }

    /// Every (name, value) of the plugin-visible list, in its order.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let pseudo = (0..PSEUDO.len()).map(|i| (PSEUDO[i].as_bytes(), self.pseudo(i)));
        let fields =
            self.headers.iter().filter(|(n, _)| *n != HOST).map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        pseudo.chain(fields)
    }

    /// How many entries the plugin-visible list has.
    pub(crate) fn len(&self) -> usize {
        PSEUDO.len() + self.headers.len() - self.headers.get_all(HOST).iter().count()
    }

    /// Writes the plugin-visible list into `out`, reusing its strings' buffers; returns the bytes copied. A
    /// value that is not UTF-8 (`obs-text`) is written with replacement characters, as the list holds text.
    pub(crate) fn to_list(&self, out: &mut HeaderMap) -> usize {
        let mut n = 0;
        let mut bytes = 0;
        for (name, value) in self.pairs() {
            if n == out.len() {
                out.push((String::new(), String::new()));
            }
            let (k, v) = &mut out[n];
            k.clear();
            k.push_str(std::str::from_utf8(name).unwrap_or_default());
            v.clear();
            match std::str::from_utf8(value) {
                Ok(text) => v.push_str(text),
                Err(_) => v.push_str(&String::from_utf8_lossy(value)),
            }
            bytes += k.len() + v.len();
            n += 1;
        }
        out.truncate(n);
        bytes
    }

    /// Makes the head what the plugin-visible `list` says: `:method`, `:path` and `:authority` become the
    /// method, the target's path and query, and `Host`; the other pseudo-headers are the proxy's to set. A
    /// value the head cannot hold (an invalid method, target or field) is dropped, and the head keeps what it
    /// had for a pseudo-header.
    pub(crate) fn apply(&mut self, list: &[(String, String)]) {
        let mut map = http::HeaderMap::with_capacity(list.len());
        for (name, value) in list {
            match name.as_str() {
                ":method" => {
                    if let Ok(m) = http::Method::from_bytes(value.as_bytes()) {
                        self.method = m;
                    }
                }
                ":path" => {
                    if let Ok(new) = value.parse::<http::uri::PathAndQuery>() {
                        let mut uri = http::uri::Parts::default();
                        uri.path_and_query = Some(new);
                        if let Ok(new) = http::Uri::from_parts(uri) {
                            self.uri = new;
                        }
                    }
                }
                ":authority" => {
                    if let Ok(v) = HeaderValue::from_str(value) {
                        if !value.is_empty() {
                            map.insert(HOST, v);
                        }
                    }
                }
                n if n.starts_with(':') => {}
                n => match (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(value)) {
                    (Ok(n), Ok(v)) => {
                        map.append(n, v);
                    }
                    _ => tracing::debug!(header = n, "plugin left a header that is not valid HTTP; dropped"),
                },
            }
        }
        self.headers = map;
    }
}

/// A header map as a hostcall reads it: the stream's list, or a lent request head read in place.
#[derive(Clone, Copy)]
pub(crate) enum MapRef<'a> {
    List(&'a [(String, String)]),
    Head(&'a RequestHead),
}

impl<'a> MapRef<'a> {
    /// The value of `name` (ASCII case-insensitive), the first when it repeats.
    pub(crate) fn get(self, name: &[u8]) -> Option<&'a [u8]> {
        match self {
            MapRef::List(list) => {
                list.iter().find(|(k, _)| k.as_bytes().eq_ignore_ascii_case(name)).map(|(_, v)| v.as_bytes())
            }
            MapRef::Head(head) => head.get(name),
        }
    }

    /// The map as the list a paused stream keeps, or a resumption hands back.
    pub(crate) fn to_list(self) -> HeaderMap {
        match self {
            MapRef::List(list) => list.to_vec(),
            MapRef::Head(head) => {
                let mut out = Vec::new();
                head.to_list(&mut out);
                out
            }
        }
    }

    /// The map in the proxy-wasm pairs encoding (`proxy_get_header_map_pairs`).
    pub(crate) fn serialize(self) -> Vec<u8> {
        match self {
            MapRef::List(list) => crate::codec::serialize_map(list),
            MapRef::Head(head) => crate::codec::serialize_pairs(head.len(), || head.pairs()),
        }
    }

    /// The size of [`MapRef::serialize`]'s output, without building it.
    pub(crate) fn serialized_size(self) -> usize {
        match self {
            MapRef::List(list) => crate::codec::serialized_map_size(list),
            MapRef::Head(head) => 4 + head.pairs().map(|(k, v)| 8 + k.len() + v.len() + 2).sum::<usize>(),
        }
    }
}
