//! A request's head (`http::request::Parts`) lent to a plugin's request-side callbacks and read in place:
//! `proxy_get_header_map_value` and the `request.*` properties answer from the proxy's own method, target and
//! fields, so a request whose plugins only read its head (a router matching `:path`, a balancer hashing a
//! header) builds no header list. The first hostcall that changes the map turns the head into the
//! plugin-visible list (pseudo-headers first, as [`HeadView::to_list`] writes it), and the phase writes that
//! list back into the head when the callback returns ([`HeadView::apply`]). Lending swaps the caller's head
//! with one the stream slot keeps ([`SpareHead`]): nothing is made, copied or dropped. The head is boxed
//! ([`Head`]), so a loan and its return swap one pointer each rather than the head's 224 bytes (with two
//! plugins, four such swaps a request were ~450 instructions, a twentieth of what the plugins cost).

use http::header::{HeaderName, HeaderValue, HOST};
use http::request::Parts;

use crate::types::HeaderMap;

/// A request head as it is lent to plugins: boxed, so lending it moves a pointer.
pub type Head = Box<Parts>;

/// Up to how many fields [`HeadView::list_len`] walks the map rather than looking `Host` up.
const WALK_FIELDS: usize = 16;

/// The pseudo-headers, in the order the plugin-visible list starts with them.
const PSEUDO: [&str; 4] = [":method", ":path", ":authority", ":scheme"];

/// A request's head (the proxy's own `http` parts) as plugins see it: `:method`, `:path`, `:authority` and
/// `:scheme` from the method and target (`:authority` from the `Host` field when the target has none;
/// `:scheme` `http` when it has none); every field but `Host` follows, in the map's order.
pub(crate) trait HeadView {
    /// The value of `name` (ASCII case-insensitive), the first one when the field repeats, as the list would
    /// answer: `host` is not in it (`:authority` is).
    fn get(&self, name: &[u8]) -> Option<&[u8]>;
    /// Every (name, value) of the plugin-visible list, in its order.
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])>;
    /// How many entries the plugin-visible list has.
    fn list_len(&self) -> usize;
    /// Writes the plugin-visible list into `out`, reusing its strings' buffers; returns the bytes copied. A
    /// value that is not UTF-8 (`obs-text`) is written with replacement characters, as the list holds text.
    fn to_list(&self, out: &mut HeaderMap) -> usize;
    /// Makes the head what the plugin-visible `list` says: `:method`, `:path` and `:authority` become the
    /// method, the target's path and query, and `Host`; the other pseudo-headers are the proxy's to set. A
    /// value the head cannot hold (an invalid method, target or field) is dropped, and the head keeps what it
    /// had for a pseudo-header.
    fn apply(&mut self, list: &[(String, String)]);
}

fn pseudo(head: &Parts, i: usize) -> &[u8] {
    match i {
        0 => head.method.as_str().as_bytes(),
        1 => head.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes(),
        2 => match head.uri.authority() {
            Some(a) => a.as_str().as_bytes(),
            None => head.headers.get(HOST).map_or(&b""[..], HeaderValue::as_bytes),
        },
        _ => head.uri.scheme_str().unwrap_or("http").as_bytes(),
    }
}

impl HeadView for Parts {
    fn get(&self, name: &[u8]) -> Option<&[u8]> {
        if name.first() == Some(&b':') {
            let i = PSEUDO.iter().position(|p| p.as_bytes().eq_ignore_ascii_case(name))?;
            return Some(pseudo(self, i));
        }
        if name.eq_ignore_ascii_case(b"host") {
            return None;
        }
        // Looked up as text, which `http` matches case-insensitively without allocating; a name that is not
        // text is in no map.
        self.headers.get(std::str::from_utf8(name).ok()?).map(HeaderValue::as_bytes)
    }

    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let pseudo = (0..PSEUDO.len()).map(|i| (PSEUDO[i].as_bytes(), pseudo(self, i)));
        let fields =
            self.headers.iter().filter(|(n, _)| *n != HOST).map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        pseudo.chain(fields)
    }

    fn list_len(&self) -> usize {
        // A request has a handful of fields: comparing their names (a standard name compares as a number) cost
        // less than hashing `Host` to look it up (~120 instructions a request with the bundled router).
        let hosts = if self.headers.len() <= WALK_FIELDS {
            self.headers.iter().filter(|(n, _)| *n == HOST).count()
        } else {
            self.headers.get_all(HOST).iter().count()
        };
        PSEUDO.len() + self.headers.len() - hosts
    }

    fn to_list(&self, out: &mut HeaderMap) -> usize {
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

    fn apply(&mut self, list: &[(String, String)]) {
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

/// The head a stream slot keeps while no callback has the caller's: the caller's is swapped with it, so lending
/// a head moves it twice and makes or drops nothing.
pub(crate) struct SpareHead(pub Head);

impl Default for SpareHead {
    fn default() -> Self {
        SpareHead(Box::new(http::Request::new(()).into_parts().0))
    }
}

/// A header map as a hostcall reads it: the stream's list, or a lent request head read in place.
#[derive(Clone, Copy)]
pub(crate) enum MapRef<'a> {
    List(&'a [(String, String)]),
    Head(&'a Parts),
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
            MapRef::Head(head) => crate::codec::serialize_pairs(head.list_len(), || head.pairs()),
        }
    }

    /// The size of [`MapRef::serialize`]'s output, without building it.
    pub(crate) fn serialized_size(self) -> usize {
        match self {
            MapRef::List(list) => crate::codec::serialized_map_size(list),
            MapRef::Head(head) => crate::codec::serialized_pairs_size(head.pairs()),
        }
    }
}
