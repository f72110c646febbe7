//! W3C trace context (`traceparent`) and request ids. An incoming trace keeps its trace id and gets a new span
//! id for the hop to the upstream; without one, Portico starts a trace. Every request gets an `x-request-id`.

use rand::RngCore;

/// The trace context of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The span id Portico uses for its upstream hop (16 hex digits).
    pub span_id: String,
    /// Trace flags (sampled bit), copied from the parent or `01` for a new trace.
    pub flags: String,
}

impl TraceContext {
    /// Continues the caller's trace from a `traceparent` header, or starts one if absent or malformed.
    pub fn from_traceparent(header: Option<&[u8]>) -> Self {
        header.and_then(parse).unwrap_or_else(|| TraceContext {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            flags: "01".into(),
        })
    }

    /// The `traceparent` value to send upstream.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
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
    Some(TraceContext { trace_id: trace_id.to_string(), span_id: random_hex(8), flags: flags.to_string() })
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = [0u8; 32];
    let slice = &mut buf[..bytes.min(32)];
    rand::thread_rng().fill_bytes(slice);
    // A table lookup rather than `write!("{:02x}")`: ids are made for every request, and the formatting
    // machinery showed up in profiles.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(slice.len() * 2);
    for b in slice.iter() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
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
        assert_eq!(tc.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(tc.span_id, "00f067aa0ba902b7");
        assert_eq!(tc.traceparent().len(), 55);
    }

    #[test]
    fn malformed_traceparent_starts_a_new_trace() {
        for bad in [
            &b"garbage"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let tc = TraceContext::from_traceparent(Some(bad));
            assert_eq!(tc.trace_id.len(), 32);
            assert_ne!(tc.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }
}
