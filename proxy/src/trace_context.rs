//! W3C trace context (`traceparent`) and request ids. An incoming trace keeps its trace id, and the caller's
//! span becomes the parent of Portico's own span for the request; without one, Portico starts a trace. Every
//! request gets an `x-request-id`.
//!
//! Ids are kept as bytes and written as hex only where a header or a log line needs them: the exporter
//! (see [`crate::telemetry`]) sends them as bytes, and formatting costs on every request.

use rand::RngCore;
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

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out` (twice as long). A table lookup rather than `write!("{:02x}")`:
/// ids are written for every request, and the formatting machinery showed up in profiles.
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl TraceContext {
    /// Continues the caller's trace from a `traceparent` header, or starts one if absent or malformed.
    pub fn from_traceparent(header: Option<&[u8]>) -> Self {
        header.and_then(parse).unwrap_or_else(|| {
            let (mut trace, mut span) = ([0u8; 16], [0u8; 8]);
            let mut rng = rand::thread_rng();
            rng.fill_bytes(&mut trace);
            rng.fill_bytes(&mut span);
            TraceContext { trace_id: TraceId(trace), span_id: SpanId(span), parent_id: None, flags: 0x01 }
        })
    }

    /// Whether the trace is sampled (recorded) by whoever started it.
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// The `traceparent` value to send upstream, naming Portico's span as the parent.
    pub fn traceparent(&self) -> String {
        self.traceparent_for(self.span_id)
    }

    /// The `traceparent` value naming `span` (an attempt's span) as the upstream's parent.
    pub fn traceparent_for(&self, span: SpanId) -> String {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&self.trace_id.0, &mut out[3..35]);
        hex_into(&span.0, &mut out[36..52]);
        hex_into(&[self.flags], &mut out[53..55]);
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn parse(header: &[u8]) -> Option<TraceContext> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let mut parts = text.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let all_zero = |s: &str| s.bytes().all(|b| b == b'0');
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !hex(trace_id, 32) || all_zero(trace_id) || !hex(parent, 16) || all_zero(parent) || !hex(flags, 2) {
        return None;
    }
    Some(TraceContext {
        trace_id: TraceId(unhex(trace_id)?),
        span_id: SpanId::random(),
        parent_id: Some(SpanId(unhex(parent)?)),
        flags: u8::from_str_radix(flags, 16).ok()?,
    })
}

/// Lowercase hex (already checked) to bytes.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        *out.get_mut(i)? = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = [0u8; 32];
    let slice = &mut buf[..bytes.min(32)];
    rand::thread_rng().fill_bytes(slice);
    let mut out = [0u8; 64];
    let out = &mut out[..slice.len() * 2];
    hex_into(slice, out);
    String::from_utf8_lossy(out).into_owned()
}

/// Keeps a client's `x-request-id` if it is short and printable; otherwise makes one.
pub fn request_id(header: Option<&[u8]>) -> String {
    match header {
        Some(v) if !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic()) => {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => random_hex(16),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_incoming_trace_id_with_new_span() {
        let tc = TraceContext::from_traceparent(Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(tc.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tc.parent_id.map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(tc.span_id.to_string(), "00f067aa0ba902b7");
        assert!(tc.sampled());
        let sent = tc.traceparent();
        assert_eq!(sent.len(), 55);
        assert_eq!(sent, format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", tc.span_id));
    }

    #[test]
    fn an_unsampled_caller_stays_unsampled() {
        let tc = TraceContext::from_traceparent(Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
        assert!(!tc.sampled());
        assert!(tc.traceparent().ends_with("-00"));
    }

    #[test]
    fn malformed_traceparent_starts_a_new_trace() {
        for bad in [
            &b"garbage"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let tc = TraceContext::from_traceparent(Some(bad));
            assert_eq!(tc.trace_id.to_string().len(), 32);
            assert_ne!(tc.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(tc.parent_id, None);
            assert!(tc.sampled(), "a new trace is sampled unless telemetry says otherwise");
        }
    }
}
