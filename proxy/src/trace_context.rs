//! W3C trace context (`traceparent`) and request ids. An incoming trace keeps its trace id, and the caller's
//! span becomes the parent of Portico's own span for the request; without one, Portico starts a trace. Every
//! request gets an `x-request-id`.
//!
//! Ids are made for every request, so they are kept as bytes on the stack, from one random `u128` and one
//! `u64` per request: the `u64` is Portico's span id, the `u128` the request id and, for a request that starts
//! a trace, its trace id too (the two then match, which makes the trace easy to find from the request id).
//! They are written as hex only where a header or a log line needs them, into fixed buffers: the exporter
//! (see [`crate::telemetry`]) sends them as bytes, and formatting costs on every request.
//! The request id is checked as UTF-8 once, when it is written (an `ArrayString`): a request reads its id as
//! `&str` several times, and checking a plain byte array at every read cost more than making the id. The
//! `traceparent` sent upstream is only ever sent, so it stays bytes.

use arrayvec::ArrayString;
use rand::{Rng, RngCore};
use std::fmt;

/// A 16-byte trace id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl SpanId {
    /// A fresh random span id.
    pub fn random() -> SpanId {
        let mut id = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut id);
        SpanId(id)
    }
}

/// Writes `bytes` as lowercase hex into `out`, which is twice as long. Ids are written for every request (the
/// request id, and the trace and span ids of the `traceparent` sent upstream: 41 bytes), and a digit at a
/// time through a table cost ~11 instructions a byte; four bytes at a time in one word cost ~3. Fixed-size
/// pieces only, so that nothing here becomes a call to `memcpy`.
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    let mut fours = bytes.chunks_exact(4);
    let mut eights = out.chunks_exact_mut(8);
    for (four, eight) in (&mut fours).zip(&mut eights) {
        let word = u32::from_be_bytes([four[0], four[1], four[2], four[3]]);
        eight.copy_from_slice(&hex_word(word).to_be_bytes());
    }
    // Fewer than four bytes left (a trace's one flags byte): a digit at a time.
    for (pair, b) in eights.into_remainder().chunks_exact_mut(2).zip(fours.remainder()) {
        pair.copy_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]]);
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The eight lowercase hex digits of `x`, most significant first, as the bytes of a big-endian `u64`: each
/// nibble spread to a byte of its own, then turned into its digit in every byte at once.
fn hex_word(x: u32) -> u64 {
    let mut n = u64::from(x);
    n = (n | (n << 16)) & 0x0000_ffff_0000_ffff;
    n = (n | (n << 8)) & 0x00ff_00ff_00ff_00ff;
    n = (n | (n << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose nibble is 10 or more (adding 6 carries into bit 4 then, and never out of the byte).
    let letters = ((n + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    n + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut buf = [0u8; 32];
    let out = &mut buf[..bytes.len() * 2];
    hex_into(bytes, out);
    f.write_str(std::str::from_utf8(out).map_err(|_| fmt::Error)?)
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// The trace context of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace, the caller's or a new one.
    pub trace_id: TraceId,
    /// Portico's span for this request (the server span when traces are exported). The upstream sees it as
    /// its parent, or an attempt span under it when attempts are recorded.
    pub span_id: SpanId,
    /// The caller's span, when the request came with a valid `traceparent`.
    pub parent_id: Option<SpanId>,
    /// W3C trace flags; bit 0 is "sampled". Copied from the caller, or `01` for a new trace unless head
    /// sampling (`[telemetry] sample_ratio`) left it out.
    pub flags: u8,
}

/// A `traceparent` value, `00-<trace id>-<span id>-<flags>`, on the stack, as the bytes it is sent as: made
/// from a template with hex written into it, it is always ASCII, so it is not checked as text on the way
/// (checking cost ~95 instructions a request); [`TraceParent::as_str`] checks, for display.
#[derive(Clone, Copy)]
pub struct TraceParent([u8; 55]);

impl TraceParent {
    /// The header value.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The header value as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ids one request starts with.
#[derive(Debug)]
pub struct RequestIds {
    /// Its trace context.
    pub trace: TraceContext,
    /// Its `x-request-id`.
    pub request_id: RequestId,
}

impl RequestIds {
    /// Continues the caller's trace from a `traceparent` header (or starts one if absent or malformed) and
    /// keeps the caller's `x-request-id` if it is short and printable (or makes one).
    pub fn new(traceparent: Option<&[u8]>, request_id: Option<&[u8]>) -> Self {
        let (fresh, trace) = start(traceparent);
        let request_id = match request_id {
            Some(v) if !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic()) => {
                RequestId::Given(String::from_utf8_lossy(v).into_owned())
            }
            _ => RequestId::made(&fresh.0),
        };
        RequestIds { trace, request_id }
    }
}

/// One random `u128` (a new trace id, or the request id) and `u64` (Portico's span id); the trace context
/// continues `header`'s trace when it is valid, else starts the new one.
fn start(header: Option<&[u8]>) -> (TraceId, TraceContext) {
    let mut rng = rand::thread_rng();
    let (id, span): (u128, u64) = (rng.gen(), rng.gen());
    let fresh = TraceId(id.max(1).to_be_bytes());
    let span_id = SpanId(span.max(1).to_be_bytes());
    let trace = header.and_then(|h| parse(h, span_id)).unwrap_or(TraceContext {
        trace_id: fresh,
        span_id,
        parent_id: None,
        flags: 0x01,
    });
    (fresh, trace)
}

impl TraceContext {
    /// Continues the caller's trace from a `traceparent` header, or starts one if absent or malformed.
    pub fn from_traceparent(header: Option<&[u8]>) -> Self {
        start(header).1
    }

    /// Whether the trace is sampled (recorded) by whoever started it.
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// The `traceparent` value to send upstream, naming Portico's span as the parent.
    pub fn traceparent(&self) -> TraceParent {
        self.traceparent_for(self.span_id)
    }

    /// The `traceparent` value naming `span` (an attempt's span) as the upstream's parent.
    pub fn traceparent_for(&self, span: SpanId) -> TraceParent {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&self.trace_id.0, &mut out[3..35]);
        hex_into(&span.0, &mut out[36..52]);
        hex_into(&[self.flags], &mut out[53..55]);
        TraceParent(out)
    }
}

fn parse(header: &[u8], span_id: SpanId) -> Option<TraceContext> {
    let mut parts = header.trim_ascii().split(|b| *b == b'-');
    let version: [u8; 1] = unhex(parts.next()?)?;
    let trace_id: [u8; 16] = unhex(parts.next()?)?;
    let parent: [u8; 8] = unhex(parts.next()?)?;
    let [flags]: [u8; 1] = unhex(parts.next()?)?;
    if version == [0xff] || (version == [0x00] && parts.next().is_some()) || trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some(TraceContext { trace_id: TraceId(trace_id), span_id, parent_id: Some(SpanId(parent)), flags })
}

/// `text` as bytes if it is exactly `2 * N` lowercase hex digits.
fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// An `x-request-id`: the client's, or one Portico made (on the stack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestId {
    /// Sent by the client.
    Given(String),
    /// Made here: 32 lowercase hex digits.
    Made(ArrayString<32>),
}

impl RequestId {
    /// A new id, for an answer made before a request's ids are (a request line too long to read): a function
    /// of its own, so that [`RequestIds::new`] keeps its one call site on the request path, inlined there.
    pub fn fresh() -> RequestId {
        let id: u128 = rand::thread_rng().gen();
        RequestId::made(&id.to_be_bytes())
    }

    /// The id made from 16 random bytes: 32 lowercase hex digits. Always inlined: made on every request, and
    /// a call kept the id's 33 bytes from being built where the caller keeps them (~110 instructions a request
    /// once the request path's entry grew).
    #[inline(always)]
    fn made(bytes: &[u8; 16]) -> RequestId {
        let mut hex = [0u8; 32];
        hex_into(bytes, &mut hex);
        // Always ASCII hex, so never the empty fallback.
        RequestId::Made(ArrayString::from_byte_string(&hex).unwrap_or_default())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        match self {
            RequestId::Given(id) => id,
            RequestId::Made(hex) => hex,
        }
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_written_as_format_writes_it() {
        let mut bytes: Vec<u8> = (0..=255).collect();
        bytes.extend([0x00, 0x09, 0x0a, 0x0f, 0x10, 0x99, 0x9a, 0xa9, 0xf0, 0xff, 0x01]);
        for len in [1, 2, 3, 4, 5, 7, 8, 16, 17, bytes.len()] {
            for start in [0, 1, bytes.len() - len].into_iter().filter(|s| s + len <= bytes.len()) {
                let part = &bytes[start..start + len];
                let mut out = vec![0u8; len * 2];
                hex_into(part, &mut out);
                let expected: String = part.iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(String::from_utf8_lossy(&out), expected, "{len} bytes from {start}");
            }
        }
    }

    #[test]
    fn keeps_incoming_trace_id_with_new_span() {
        let tc = TraceContext::from_traceparent(Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(tc.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tc.parent_id.map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(tc.span_id.to_string(), "00f067aa0ba902b7");
        assert!(tc.sampled());
        let sent = tc.traceparent();
        assert_eq!(sent.as_bytes().len(), 55);
        assert_eq!(sent.as_str(), format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", tc.span_id));
    }

    #[test]
    fn an_unsampled_caller_stays_unsampled() {
        let tc = TraceContext::from_traceparent(Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
        assert!(!tc.sampled());
        assert!(tc.traceparent().as_bytes().ends_with(b"-00"));
    }

    #[test]
    fn malformed_traceparent_starts_a_new_trace() {
        for bad in [
            &b"garbage"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let tc = TraceContext::from_traceparent(Some(bad));
            assert_eq!(tc.trace_id.to_string().len(), 32);
            assert_ne!(tc.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(tc.parent_id, None);
            assert!(tc.sampled(), "a new trace is sampled unless telemetry says otherwise");
        }
    }

    #[test]
    fn request_ids_are_the_clients_or_fresh_hex() {
        let ids = RequestIds::new(None, Some(b"abc-1"));
        assert_eq!(ids.request_id.as_str(), "abc-1");
        let made = RequestIds::new(None, Some(b"has space"));
        assert_eq!(made.request_id.len(), 32);
        assert_eq!(made.request_id.as_str(), made.trace.trace_id.to_string(), "a new trace is named by the request id");
        let other = RequestIds::new(None, None);
        assert_ne!(made.request_id, other.request_id);
        let continued = RequestIds::new(Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), None);
        assert_eq!(continued.trace.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(continued.request_id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
