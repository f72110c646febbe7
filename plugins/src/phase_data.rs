//! What a phase does with the caller's data around its callback ([`crate::stream`]): a header map is swapped
//! into the stream for the callback and back after it, and copied into the stream only when a later callback
//! could read it; a request head can be lent instead and read in place; a body buffer is shared (`Bytes`), so
//! loading and unloading it are reference counts.

use bytes::Bytes;

use crate::abi::MAP_REQUEST_HEADERS;
use crate::context::{StreamState, KEEP_MAP_BYTES};
use crate::request_head::{Head, HeadView};
use crate::store::copy_headers;
use crate::types::HeaderMap;

/// What a phase does with the caller's data around its callback.
pub(crate) trait PhaseData {
    /// Put the data where hostcalls find it; returns the callback's size argument.
    fn load(&mut self, s: &mut StreamState, eos: bool) -> usize;
    /// Take it back after the callback; `pause` says whether the stream paused. Returns whether the caller's
    /// data changed.
    fn unload(&mut self, s: &mut StreamState, pause: bool) -> bool;
}

/// A header or trailer map: swapped in, swapped back; kept in the stream only when a later callback could
/// read it (or the stream paused, since the callback that resumes it may change it).
pub(crate) struct Headers<'a> {
    pub map: &'a mut HeaderMap,
    pub t: i32,
    pub keep: bool,
}

impl PhaseData for Headers<'_> {
    fn load(&mut self, s: &mut StreamState, _eos: bool) -> usize {
        let bit = 1 << self.t;
        let n = self.map.len();
        if let Some(map) = s.map_mut(self.t) {
            std::mem::swap(map, self.map);
        }
        s.present |= bit;
        s.modified &= !bit;
        n
    }

    fn unload(&mut self, s: &mut StreamState, pause: bool) -> bool {
        let bit = 1 << self.t;
        if let Some(map) = s.map_mut(self.t) {
            std::mem::swap(map, self.map);
            if (self.keep || pause) && copy_headers(map, self.map) > KEEP_MAP_BYTES {
                s.oversized |= bit;
            }
        }
        if !(self.keep || pause) {
            s.present &= !bit;
        }
        s.modified & bit != 0
    }
}

/// The caller's request head, lent for the callback and read in place (see [`crate::request_head`]): swapped
/// in, swapped back out, with the plugin's changes written into it. A list is made only when a hostcall
/// changes the map, or when a later callback could read it (the stream keeps a copy, as for [`Headers`]).
pub(crate) struct LentHead<'a> {
    pub head: &'a mut Head,
    pub keep: bool,
}

impl PhaseData for LentHead<'_> {
    fn load(&mut self, s: &mut StreamState, _eos: bool) -> usize {
        let bit = 1 << MAP_REQUEST_HEADERS;
        let n = self.head.list_len();
        std::mem::swap(&mut s.request_head.0, self.head);
        (s.lent, s.listed) = (true, false);
        s.present |= bit;
        s.modified &= !bit;
        n
    }

    fn unload(&mut self, s: &mut StreamState, pause: bool) -> bool {
        let bit = 1 << MAP_REQUEST_HEADERS;
        std::mem::swap(&mut s.request_head.0, self.head);
        let head = &mut *self.head;
        let modified = s.modified & bit != 0;
        if s.listed && modified {
            head.apply(&s.request_headers);
        }
        if self.keep || pause {
            if !s.listed && head.to_list(&mut s.request_headers) > KEEP_MAP_BYTES {
                s.oversized |= bit;
            }
        } else {
            s.present &= !bit;
        }
        (s.lent, s.listed) = (false, false);
        modified
    }
}

/// A body buffer: shared (`Bytes`), so loading and unloading are reference counts.
pub(crate) struct Body<'a> {
    pub body: &'a mut Bytes,
    pub request: bool,
}

impl PhaseData for Body<'_> {
    fn load(&mut self, s: &mut StreamState, eos: bool) -> usize {
        let (buf, end) = if self.request {
            (&mut s.request_body, &mut s.request_eos)
        } else {
            (&mut s.response_body, &mut s.response_eos)
        };
        buf.clone_from(self.body);
        *end = eos;
        self.body.len()
    }

    fn unload(&mut self, s: &mut StreamState, _pause: bool) -> bool {
        self.body.clone_from(if self.request { &s.request_body } else { &s.response_body });
        true
    }
}
