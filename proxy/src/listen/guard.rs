//! The request-smuggling guard. hyper quietly resolves a request that carries both `Content-Length` and
//! `Transfer-Encoding` (it drops the length, hyper #3860/#4123); Portico instead refuses such a request outright
//! so that nothing of it reaches an upstream. This wrapper watches the bytes hyper reads on an HTTP/1
//! connection, follows message framing (length, chunked, tunnels), and records the ordinal of the first
//! ambiguous request head (or of a head too large for it to check); the request path answers that request and
//! any after it with 400.
//!
//! It gives up (and stays out of the way) on HTTP/2 and anything it cannot frame — hyper's own
//! parser still rejects malformed input there.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest request head the guard follows; `max_header_bytes` cannot be set higher.
pub const MAX_HEAD: usize = 128 * 1024;

/// Shared between the guard and the request path of one connection.
#[derive(Debug, Default)]
pub struct GuardFlag {
    /// 1-based ordinal of the first ambiguous request, 0 if none.
    bad_request: AtomicU64,
    /// Requests the request path has seen on this connection.
    served: AtomicU64,
}

impl GuardFlag {
    /// The 1-based ordinal of the first request head refused on this connection, 0 if none.
    pub fn first_refused(&self) -> u64 {
        self.bad_request.load(Ordering::Relaxed)
    }

    /// Called by the request path for each request; true when this request must be refused.
    pub fn next_request_is_refused(&self) -> bool {
        let ordinal = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        let bad = self.bad_request.load(Ordering::Relaxed);
        bad != 0 && ordinal >= bad
    }
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Fixed(u64),
    ChunkSize { value: u64, digits: u32, in_ext: bool, seen_cr: bool },
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailer { line_len: usize, seen_cr: bool },
    Off,
}

/// Wraps a connection's stream.
#[derive(Debug)]
pub struct SmuggleGuard<S> {
    inner: S,
    state: State,
    heads: u64,
    flag: Arc<GuardFlag>,
}

impl<S> SmuggleGuard<S> {
    /// Starts watching a fresh connection.
    pub fn new(inner: S, flag: Arc<GuardFlag>) -> Self {
        SmuggleGuard { inner, state: State::Head(Vec::new()), heads: 0, flag }
    }

    /// Follows bytes as if hyper had just read them (the fuzz target drives the guard this way).
    pub fn observe(&mut self, bytes: &[u8]) {
        self.scan(bytes);
    }

    /// Request heads framed so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head(buf) => {
                    // Skip stray CRLFs between messages, as RFC 9112 allows.
                    if buf.is_empty() {
                        let skip = bytes.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
                        bytes = &bytes[skip..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    let start = buf.len().saturating_sub(2);
                    buf.extend_from_slice(bytes);
                    // The head ends where hyper's parser (httparse) says it does, bare-LF line ends included:
                    // framing by CRLF alone took a bare-LF head and the request after it for one head.
                    let end = if has_blank_line(&buf[start..]) { head_len(buf) } else { Ok(None) };
                    let end = match end {
                        // A head larger than the guard follows is refused, never waved through: hyper takes one
                        // as large as `max_header_bytes` allows, and an unchecked head would switch the guard
                        // off for the rest of the connection. (The fuzz target's split-invariance property
                        // pointed here: the limit used to apply only while a head was incomplete, so the same
                        // bytes were framed differently depending on how the reads split them.)
                        Ok(Some(end)) if end > MAX_HEAD => {
                            self.refuse_next_head();
                            return;
                        }
                        Ok(Some(end)) => end,
                        Ok(None) => {
                            if buf.len() > MAX_HEAD {
                                self.refuse_next_head();
                            }
                            return;
                        }
                        Err(()) => {
                            self.state = State::Off;
                            return;
                        }
                    };
                    let rest_offset = bytes.len() - (buf.len() - end);
                    let head = std::mem::take(buf);
                    self.state = self.on_head(&head[..end]);
                    bytes = &bytes[rest_offset..];
                }
                State::Fixed(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize { value, digits, in_ext, seen_cr } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if *seen_cr {
                        if b != b'\n' || *digits == 0 {
                            self.state = State::Off;
                        } else if *value == 0 {
                            self.state = State::Trailer { line_len: 0, seen_cr: false };
                        } else {
                            self.state = State::ChunkData(*value);
                        }
                    } else if b == b'\r' {
                        *seen_cr = true;
                    } else if *in_ext {
                        // chunk extensions are skipped
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        *in_ext = true;
                    } else if let Some(d) = (b as char).to_digit(16) {
                        *digits += 1;
                        if *digits > 15 {
                            self.state = State::Off;
                        } else {
                            *value = *value * 16 + u64::from(d);
                        }
                    } else {
                        self.state = State::Off;
                    }
                }
                State::ChunkData(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::ChunkDataEnd(0);
                    }
                }
                State::ChunkDataEnd(seen) => {
                    let expected = if *seen == 0 { b'\r' } else { b'\n' };
                    if bytes[0] != expected {
                        self.state = State::Off;
                        return;
                    }
                    bytes = &bytes[1..];
                    if *seen == 1 {
                        self.state = State::ChunkSize { value: 0, digits: 0, in_ext: false, seen_cr: false };
                    } else {
                        *seen = 1;
                    }
                }
                State::Trailer { line_len, seen_cr } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if *seen_cr {
                        if b != b'\n' {
                            self.state = State::Off;
                        } else if *line_len == 0 {
                            self.state = State::Head(Vec::new());
                        } else {
                            *line_len = 0;
                            *seen_cr = false;
                        }
                    } else if b == b'\r' {
                        *seen_cr = true;
                    } else {
                        *line_len += 1;
                    }
                }
            }
        }
    }

    /// Refuses the head being read (it is too large to check) and stops following the connection.
    fn refuse_next_head(&mut self) {
        self.heads += 1;
        let _ = self.flag.bad_request.compare_exchange(0, self.heads, Ordering::Relaxed, Ordering::Relaxed);
        self.state = State::Off;
    }

    fn on_head(&mut self, head: &[u8]) -> State {
        if head.starts_with(b"PRI * HTTP/2.0") {
            return State::Off;
        }
        self.heads += 1;
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
            return State::Off;
        }
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut te = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let parsed = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
                match (content_length, parsed) {
                    (_, None) => return State::Off,
                    (Some(old), Some(new)) if old != new => return State::Off,
                    (_, Some(new)) => content_length = Some(new),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
                chunked = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        if te && content_length.is_some() {
            let _ = self.flag.bad_request.compare_exchange(0, self.heads, Ordering::Relaxed, Ordering::Relaxed);
            return State::Off;
        }
        // An `Upgrade` or CONNECT request is framed like any other: hyper keeps parsing requests on the
        // connection unless the upgrade is accepted, and once it is, no request path looks at this guard again.
        if te {
            if chunked {
                State::ChunkSize { value: 0, digits: 0, in_ext: false, seen_cr: false }
            } else {
                State::Off
            }
        } else {
            match content_length {
                Some(0) | None => State::Head(Vec::new()),
                Some(n) => State::Fixed(n),
            }
        }
    }
}

/// Whether the bytes hold an empty line (`\n\n` or `\n\r\n`), the only place a head can end.
fn has_blank_line(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// The length of the complete head at the start of `buf`, `None` if incomplete, `Err` if it is no head.
fn head_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    if buf.starts_with(b"PRI * HTTP/2.0") {
        return Ok(buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4));
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    match httparse::Request::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(()),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SmuggleGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if !matches!(self.state, State::Off) {
                let filled = buf.filled()[before..].to_vec();
                self.scan(&filled);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SmuggleGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (u64, u64) {
        let flag = Arc::new(GuardFlag::default());
        let mut g = SmuggleGuard::new((), flag.clone());
        for c in chunks {
            g.scan(c);
        }
        (g.heads, flag.bad_request.load(Ordering::Relaxed))
    }

    #[test]
    fn frames_keep_alive_requests() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(run(&[stream]), (3, 0));
        let split: Vec<&[u8]> = stream.chunks(3).collect();
        assert_eq!(run(&split), (3, 0));
    }

    #[test]
    fn flags_cl_te_in_either_order_and_position() {
        let bad = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(run(&[bad]).1, 1);
        let bad2 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(run(&[bad2]).1, 2);
    }

    #[test]
    fn upgrade_and_bare_lf_requests_do_not_stop_the_guard() {
        let cl_te = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let upgrade = [&b"GET /first HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\n\r\n"[..], &cl_te[..]].concat();
        assert_eq!(run(&[&upgrade]).1, 2);
        let lf = [&b"GET /lf1 HTTP/1.1\nHost: a\n\n"[..], &cl_te[..]].concat();
        assert_eq!(run(&[&lf]).1, 2);
        let split: Vec<&[u8]> = lf.chunks(1).collect();
        assert_eq!(run(&split).1, 2);
    }

    #[test]
    fn a_head_too_large_to_check_is_refused_however_it_is_read() {
        let head = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let stream = [b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n".as_slice(), head.as_bytes()].concat();
        assert_eq!(run(&[&stream]), (2, 2));
        let split: Vec<&[u8]> = stream.chunks(8192).collect();
        assert_eq!(run(&split), (2, 2));
    }

    #[test]
    fn body_bytes_that_look_like_requests_are_not_heads() {
        let s = b"POST / HTTP/1.1\r\nContent-Length: 66\r\n\r\nGET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(run(&[s]), (1, 0));
    }
}
