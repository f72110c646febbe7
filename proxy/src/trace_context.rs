//! W3C trace context (`traceparent`) and request ids. An incoming trace keeps its trace id and gets a new span
//! id for the hop to the upstream; without one, Portico starts a trace. Every request gets an `x-request-id`.
//!
//! Ids are made for every request, so they live in fixed buffers on the stack, hex-encoded once, from one
//! random `u128` and one `u64` per request: the `u64` is the upstream hop's span id, the `u128` the request id
//! and, for a request that starts a trace, its trace id too (the two then match, which makes the trace easy to
//! find from the request id). Nothing is allocated until a value becomes a header.

use rand::Rng;
use std::fmt;

/// `N` lowercase hex digits, on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    /// The digits.
    pub fn as_str(&self) -> &str {
        // Always ASCII hex: built by `encode` or checked by `parse`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The low `N * 4` bits of `value`, as hex.
    fn encode(value: u128) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'0'; N];
        for (i, digit) in out.iter_mut().rev().enumerate() {
            *digit = DIGITS[((value >> (4 * i)) & 0xf) as usize];
        }
        Hex(out)
    }

    /// `text` if it is exactly `N` lowercase hex digits.
    fn parse(text: &[u8]) -> Option<Self> {
        let digits: [u8; N] = text.try_into().ok()?;
        digits.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')).then_some(Hex(digits))
    }

    fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == b'0')
    }
}

impl<const N: usize> fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> PartialEq<&str> for Hex<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The trace context of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: Hex<32>,
    /// The span id Portico uses for its upstream hop (16 hex digits).
    pub span_id: Hex<16>,
    /// Trace flags (sampled bit), copied from the parent or `01` for a new trace.
    pub flags: Hex<2>,
}

/// A `traceparent` value: `00-<trace id>-<span id>-<flags>`.
#[derive(Clone, Copy)]
pub struct TraceParent([u8; 55]);

impl TraceParent {
    /// The header value.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
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
        let mut rng = rand::thread_rng();
        let (id, span): (u128, u64) = (rng.gen(), rng.gen());
        let span_id = Hex::encode(u128::from(span.max(1)));
        let fresh = Hex::<32>::encode(id.max(1));
        let trace = traceparent.and_then(|h| parse(h, span_id)).unwrap_or(TraceContext {
            trace_id: fresh,
            span_id,
            flags: Hex(*b"01"),
        });
        let request_id = match request_id {
            Some(v) if !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic()) => {
                RequestId::Given(String::from_utf8_lossy(v).into_owned())
            }
            _ => RequestId::Made(fresh),
        };
        RequestIds { trace, request_id }
    }
}

impl TraceContext {
    /// Continues the caller's trace from a `traceparent` header, or starts one if absent or malformed.
    pub fn from_traceparent(header: Option<&[u8]>) -> Self {
        RequestIds::new(header, None).trace
    }

    /// The `traceparent` value to send upstream.
    pub fn traceparent(&self) -> TraceParent {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        out[3..35].copy_from_slice(&self.trace_id.0);
        out[36..52].copy_from_slice(&self.span_id.0);
        out[53..].copy_from_slice(&self.flags.0);
        TraceParent(out)
    }
}

fn parse(header: &[u8], span_id: Hex<16>) -> Option<TraceContext> {
    let text = header.trim_ascii();
    let mut parts = text.split(|b| *b == b'-');
    let version = Hex::<2>::parse(parts.next()?)?;
    let trace_id = Hex::<32>::parse(parts.next()?)?;
    let parent = Hex::<16>::parse(parts.next()?)?;
    let flags = Hex::<2>::parse(parts.next()?)?;
    if version == "ff" || (version == "00" && parts.next().is_some()) || trace_id.is_zero() || parent.is_zero() {
        return None;
    }
    Some(TraceContext { trace_id, span_id, flags })
}

/// An `x-request-id`: the client's, or one Portico made (on the stack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestId {
    /// Sent by the client.
    Given(String),
    /// Made here: 32 hex digits.
    Made(Hex<32>),
}

impl RequestId {
    /// The id.
    pub fn as_str(&self) -> &str {
        match self {
            RequestId::Given(id) => id,
            RequestId::Made(id) => id.as_str(),
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
    fn keeps_incoming_trace_id_with_new_span() {
        let tc = TraceContext::from_traceparent(Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert_eq!(tc.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(tc.span_id, "00f067aa0ba902b7");
        let tp = tc.traceparent();
        assert_eq!(tp.as_str().len(), 55);
        assert!(tp.as_str().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{}", tp.as_str());
        assert!(tp.as_str().ends_with("-01"), "{}", tp.as_str());
    }

    #[test]
    fn malformed_traceparent_starts_a_new_trace() {
        for bad in [
            &b"garbage"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let tc = TraceContext::from_traceparent(Some(bad));
            assert_eq!(tc.trace_id.as_str().len(), 32);
            assert_ne!(tc.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(tc.flags, "01");
        }
    }

    #[test]
    fn request_ids_are_the_clients_or_fresh_hex() {
        let ids = RequestIds::new(None, Some(b"abc-1"));
        assert_eq!(ids.request_id.as_str(), "abc-1");
        let made = RequestIds::new(None, Some(b"has space"));
        assert_eq!(made.request_id.len(), 32);
        assert_eq!(made.request_id.as_str(), made.trace.trace_id.as_str(), "a new trace is named by the request id");
        let other = RequestIds::new(None, None);
        assert_ne!(made.request_id, other.request_id);
    }
}
