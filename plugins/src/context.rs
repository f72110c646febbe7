//! The stream contexts of one instance, in slots that are reused rather than allocated per request.
//!
//! A context id names its slot: the low 16 bits are the slot's index, the bits above count how often the slot
//! has been reused (never 0, so stream ids never equal the root context's id 1). Looking a context up is an
//! index and a compare, not a hash; ids stay unique among live contexts, as SDKs require. A slot keeps its
//! buffers (header maps, the property map) for the next stream, so a warm instance opens and closes streams
//! without allocating.
//!
//! A stream's header maps hold its data only while the matching bit of [`StreamState::present`] is set: a
//! phase swaps the caller's map in for its callback and back out after it, keeping a copy only when a later
//! callback of the plugin could read it (see [`crate::module::Callbacks`]). A map not present reads as empty.
//! The request headers may instead be the caller's head, lent for a callback and read in place
//! ([`StreamState::lent`], see [`crate::request_head`]).

use arrayvec::ArrayString;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::abi::{MAP_REQUEST_HEADERS, MAP_REQUEST_TRAILERS, MAP_RESPONSE_HEADERS, MAP_RESPONSE_TRAILERS};
use crate::candidates::CandidateSource;
use crate::request_head::{HeadView, MapRef, SpareHead};
use crate::types::{HeaderMap, LocalResponse, RequestFacts, Resumption};

/// The root context's id in every instance.
pub(crate) const ROOT_CONTEXT: u32 = 1;

const INDEX_BITS: u32 = 16;
const INDEX_MASK: u32 = (1 << INDEX_BITS) - 1;
/// Streams one instance can hold at once; one more fails to open (`FailureKind::Unavailable`).
const MAX_STREAMS: usize = 1 << INDEX_BITS;
/// The reuse count wraps within 15 bits, keeping ids positive as `i32`.
const REUSE_MASK: u32 = (1 << (31 - INDEX_BITS)) - 1;
/// A header map copied with more than this is not kept for the slot's next stream: an occasional huge header
/// should not pin its memory.
pub(crate) const KEEP_MAP_BYTES: usize = 16 << 10;

/// How a paused stream learns it was resumed, shared between the stream's context and its
/// [`crate::HttpStream`]. Made only for a stream that pauses or is resumed out of band: most never are.
#[derive(Default)]
pub(crate) struct StreamSignal {
    pub state: Mutex<Option<Resumption>>,
    pub notify: tokio::sync::Notify,
}

impl StreamSignal {
    pub fn post(&self, r: Resumption) {
        let mut s = self.state.lock();
        // A local response or close wins over a plain continue.
        if !matches!((&*s, &r), (Some(Resumption::LocalResponse(_) | Resumption::Close), Resumption::Continue)) {
            *s = Some(r);
        }
        drop(s);
        self.notify.notify_one();
    }
}

/// Inputs of the upstream selection callback, readable while it runs (`portico.upstream.*`).
#[derive(Default)]
pub(crate) struct SelectInput {
    pub active: bool,
    pub group: String,
    /// Where the candidates come from; encoded only if the plugin reads them.
    pub source: Option<Arc<dyn CandidateSource>>,
    pub failed: Option<String>,
}

/// A routing or balancing choice a plugin made (`portico.route.upstream`, `portico.upstream.selected`). Its
/// buffer stays with the slot, so making a choice does not allocate once the slot is warm.
#[derive(Default)]
pub(crate) struct Choice {
    text: String,
    set: bool,
    /// Counts writes, so that a caller can tell whether a callback made one.
    writes: u32,
}

impl Choice {
    pub fn get(&self) -> Option<&str> {
        self.set.then_some(self.text.as_str())
    }

    /// The value as the plugin set it, trimmed; empty clears the choice.
    pub fn set(&mut self, value: &[u8]) {
        self.writes = self.writes.wrapping_add(1);
        let value = value.trim_ascii();
        self.set = !value.is_empty();
        if self.set {
            self.text.clear();
            match std::str::from_utf8(value) {
                Ok(text) => self.text.push_str(text),
                Err(_) => self.text.push_str(String::from_utf8_lossy(value).trim()),
            }
        }
    }

    pub fn clear(&mut self) {
        self.set = false;
    }

    pub fn writes(&self) -> u32 {
        self.writes
    }

    /// Makes the last value set the choice again (the plugin cleared it and wrote nothing since).
    pub fn restore(&mut self) {
        self.set = true;
    }
}

/// A routing choice as a stream keeps it for the chain: a name of up to 40 bytes (an upstream group's name,
/// in practice) inline, a longer one on the heap. Copied out of the instance once per routed request, so the
/// common case allocates nothing.
pub(crate) enum Routed {
    Inline(ArrayString<40>),
    Heap(Box<str>),
}

impl Routed {
    pub(crate) fn new(name: &str) -> Self {
        ArrayString::from(name).map_or_else(|_| Routed::Heap(name.into()), Routed::Inline)
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Routed::Inline(name) => name,
            Routed::Heap(name) => name,
        }
    }
}

/// Per-stream (HTTP context) state visible to hostcalls.
#[derive(Default)]
pub(crate) struct StreamState {
    /// The context id while the slot is in use; 0 while it is free.
    pub id: u32,
    /// How often the slot was reused (the id's high bits).
    reuse: u32,
    /// The request's facts (`request.id`, `source.address`, ...), read only when a guest asks.
    pub facts: Option<Arc<dyn RequestFacts>>,
    pub request_headers: HeaderMap,
    /// The caller's request head while a callback has it on loan (`lent`), else a spare one it is swapped
    /// with: the request headers map reads from a lent head, until a hostcall changes the map and `listed`
    /// is set.
    pub request_head: SpareHead,
    /// `request_head` is the caller's, lent for the callback running now.
    pub lent: bool,
    /// The lent head was turned into `request_headers` (a hostcall changed the map): the list is the map now,
    /// and is written back into the head when the callback returns.
    pub listed: bool,
    pub request_trailers: HeaderMap,
    pub response_headers: HeaderMap,
    pub response_trailers: HeaderMap,
    /// Bit `1 << map type` set while that map holds this stream's data.
    pub present: u8,
    /// Bit `1 << map type` set when a hostcall changed that map (cleared when a phase loads it), so a phase
    /// copies the map back to the caller only when the plugin changed it.
    pub modified: u8,
    /// Bit `1 << map type` set when a copy into that map was over [`KEEP_MAP_BYTES`].
    pub oversized: u8,
    pub request_body: Bytes,
    pub request_eos: bool,
    pub response_body: Bytes,
    pub response_eos: bool,
    pub properties: HashMap<String, Vec<u8>>,
    /// True while an `HttpStream` method is running a callback for this context.
    pub in_band: bool,
    pub local_response: Option<LocalResponse>,
    pub close: bool,
    /// `proxy_continue_stream` called during the callback itself: a returned Pause is already resumed.
    pub continued: bool,
    pub selected_upstream: Choice,
    pub routed_upstream: Choice,
    pub select: SelectInput,
    pub signal: Option<Arc<StreamSignal>>,
    /// Set by `proxy_http_call` made in this context: only then does deleting the stream have callouts to
    /// forget (the callout table is shared by every worker, so it is not locked for nothing).
    pub called_out: bool,
}

impl StreamState {
    /// The stream's header map of type `t` (0-3).
    pub fn map_mut(&mut self, t: i32) -> Option<&mut HeaderMap> {
        match t {
            MAP_REQUEST_HEADERS => Some(&mut self.request_headers),
            MAP_REQUEST_TRAILERS => Some(&mut self.request_trailers),
            MAP_RESPONSE_HEADERS => Some(&mut self.response_headers),
            MAP_RESPONSE_TRAILERS => Some(&mut self.response_trailers),
            _ => None,
        }
    }

    /// The map of type `t` if it holds this stream's data.
    pub fn map(&self, t: i32) -> Option<MapRef<'_>> {
        if !(MAP_REQUEST_HEADERS..=MAP_RESPONSE_TRAILERS).contains(&t) || self.present & (1 << t) == 0 {
            return None;
        }
        if t == MAP_REQUEST_HEADERS && self.lent && !self.listed {
            return Some(MapRef::Head(&self.request_head.0));
        }
        Some(MapRef::List(match t {
            MAP_REQUEST_HEADERS => &self.request_headers,
            MAP_REQUEST_TRAILERS => &self.request_trailers,
            MAP_RESPONSE_HEADERS => &self.response_headers,
            _ => &self.response_trailers,
        }))
    }

    /// The request headers list, about to be changed: a lent head is turned into it first.
    pub fn request_list_mut(&mut self) -> &mut HeaderMap {
        if self.lent && !self.listed {
            self.request_head.0.to_list(&mut self.request_headers);
            self.listed = true;
        }
        &mut self.request_headers
    }

    /// The signal a resumption is posted to, made on first use.
    pub fn signal(&mut self) -> &Arc<StreamSignal> {
        self.signal.get_or_insert_with(Default::default)
    }

    /// Post a resumption from outside the stream's own callback.
    pub fn post(&mut self, r: Resumption) {
        self.signal().post(r);
    }

    /// Forget the finished stream, keeping the slot's buffers for the next one.
    fn reset(&mut self) {
        self.id = 0;
        self.facts = None;
        if self.oversized != 0 {
            for t in MAP_REQUEST_HEADERS..=MAP_RESPONSE_TRAILERS {
                if self.oversized & (1 << t) != 0 {
                    if let Some(map) = self.map_mut(t) {
                        *map = HeaderMap::new();
                    }
                }
            }
            self.oversized = 0;
        }
        self.present = 0;
        self.modified = 0;
        // A lent head always goes back to its caller when the callback returns; nothing to hand back here.
        (self.lent, self.listed) = (false, false);
        // Most streams of a header-only plugin touched none of these: skip the drops then.
        if !self.request_body.is_empty() {
            self.request_body = Bytes::new();
        }
        if !self.response_body.is_empty() {
            self.response_body = Bytes::new();
        }
        (self.request_eos, self.response_eos) = (false, false);
        if !self.properties.is_empty() {
            self.properties.clear();
        }
        if self.local_response.is_some() {
            self.local_response = None;
        }
        (self.in_band, self.close, self.continued, self.called_out) = (false, false, false, false);
        self.selected_upstream.clear();
        self.routed_upstream.clear();
        self.select.active = false;
        self.select.failed = None;
        if self.signal.is_some() {
            self.signal = None;
        }
    }
}

/// The stream contexts of one instance.
#[derive(Default)]
pub(crate) struct Streams {
    slots: Vec<StreamState>,
    free: Vec<u32>,
}

impl Streams {
    /// A new context for a request; `None` when the instance holds [`MAX_STREAMS`] already.
    pub fn open(&mut self, facts: Arc<dyn RequestFacts>) -> Option<u32> {
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None if self.slots.len() < MAX_STREAMS => {
                self.slots.push(StreamState::default());
                self.slots.len() - 1
            }
            None => return None,
        };
        let s = &mut self.slots[index];
        s.reuse = if s.reuse >= REUSE_MASK { 1 } else { s.reuse + 1 };
        s.id = (s.reuse << INDEX_BITS) | index as u32;
        s.facts = Some(facts);
        Some(s.id)
    }

    pub fn get(&self, id: u32) -> Option<&StreamState> {
        self.slots.get((id & INDEX_MASK) as usize).filter(|s| s.id == id && id != 0)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut StreamState> {
        self.slots.get_mut((id & INDEX_MASK) as usize).filter(|s| s.id == id && id != 0)
    }

    pub fn contains(&self, id: u32) -> bool {
        self.get(id).is_some()
    }

    /// Delete a context; returns whether it made callouts (see [`StreamState::called_out`]).
    pub fn close(&mut self, id: u32) -> bool {
        let Some(s) = self.get_mut(id) else { return false };
        let called_out = s.called_out;
        s.reset();
        self.free.push(id & INDEX_MASK);
        called_out
    }

    /// The signals of live streams that have one (the ones that may be waiting for a resumption).
    pub fn signals(&self) -> impl Iterator<Item = &Arc<StreamSignal>> {
        self.slots.iter().filter(|s| s.id != 0).filter_map(|s| s.signal.as_ref())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::RequestInfo;

    fn facts() -> Arc<dyn RequestFacts> {
        Arc::new(RequestInfo::default())
    }

    #[test]
    fn ids_name_reused_slots_and_stay_unique_among_live_contexts() {
        let mut streams = Streams::default();
        let a = streams.open(facts()).unwrap();
        let b = streams.open(facts()).unwrap();
        assert_ne!(a, b);
        assert!(a > ROOT_CONTEXT && b > ROOT_CONTEXT && i32::try_from(a).is_ok());
        streams.get_mut(a).unwrap().properties.insert("k".into(), b"v".to_vec());
        assert!(!streams.close(a));
        assert!(streams.get(a).is_none(), "a closed id no longer resolves");
        let c = streams.open(facts()).unwrap();
        assert_eq!(c & INDEX_MASK, a & INDEX_MASK, "the slot is reused");
        assert_ne!(c, a, "under a new id");
        assert!(streams.get(c).unwrap().properties.is_empty(), "with the last stream's state gone");
        assert!(streams.get(0).is_none() && streams.get(ROOT_CONTEXT).is_none());
    }

    #[test]
    fn a_map_reads_only_while_present() {
        let mut streams = Streams::default();
        let id = streams.open(facts()).unwrap();
        let s = streams.get_mut(id).unwrap();
        s.request_headers.push((":path".into(), "/".into()));
        assert!(s.map(MAP_REQUEST_HEADERS).is_none());
        s.present |= 1 << MAP_REQUEST_HEADERS;
        assert!(s.map(MAP_REQUEST_HEADERS).unwrap().get(b":path").is_some());
        streams.close(id);
        let id = streams.open(facts()).unwrap();
        assert!(streams.get(id).unwrap().map(MAP_REQUEST_HEADERS).is_none(), "a stale map is not the new stream's");
    }
}
