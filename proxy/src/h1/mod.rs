//! Portico's own HTTP/1.1 codec, on `httparse`, in Pingora's shape: heads are parsed in place in the
//! connection's read buffer (header values are slices of it, not copies), bodies are framed strictly
//! (RFC 9112 §6), and the code that drives a connection owns its socket, so a message needs no task, channel
//! or second parse of its own. The upstream client ([`crate::upstream::h1`]) is built on it; hyper still
//! serves clients, HTTP/2, the admin API and the cluster transport.
//!
//! - [`framing`]: how long a message body is (Content-Length, chunked, none, until close), and which heads are
//!   too ambiguous to read at all.
//! - [`chunked`]: the chunked transfer coding.
//! - [`head`]: writing request heads and parsing response heads.
//!
//! `CONFORMANCE.md` beside this file lists the cases the codec decides and the test that pins each.

pub mod chunked;
pub mod framing;
pub mod head;

use http::header::{self, HeaderName};

/// Fields that must not be taken from a trailer section (RFC 9110 §6.5.1): framing, routing, authentication
/// and the like. They are dropped, as if absent.
pub static FORBIDDEN_TRAILERS: [HeaderName; 10] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::TRAILER,
    header::AUTHORIZATION,
    header::SET_COOKIE,
    header::CONNECTION,
];

/// Whether a line of `bytes` ends in a LF without the CR before it.
pub fn has_bare_lf(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, b)| *b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}
