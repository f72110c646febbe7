//! The request-smuggling guard. hyper quietly resolves a request that carries both `Content-Length` and
//! `Transfer-Encoding` (it drops the length, hyper #3860/#4123); Portico instead refuses such a request outright
//! so that nothing of it reaches an upstream. This wrapper watches the bytes hyper reads on an HTTP/1
//! connection, follows message framing (length, chunked, tunnels), and records the ordinal of the first
//! ambiguous request head (or of a head too large for it to check); the request path answers that request and
//! any after it with 400.
//!
//! It fails closed: a head it cannot frame (an unparsable or conflicting length, a transfer coding other than
//! one `chunked`), and bytes it cannot follow (a chunk size it does not read as hyper would, a broken chunk
//! end), refuse that request or the next one rather than switch the guard off. Before, anything the guard
//! could not follow stopped it for the rest of the connection, and a first request that hyper accepted but the
//! guard did not (a chunk size with 16 hex digits, leading zeros included) let a CL+TE request after it
//! through. At the HTTP/2 preface that opens a connection it hands over to the flood watch
//! ([`super::h2_flood`]), which follows the frames instead.

use super::h2_flood::FloodWatch;
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
    /// The connection was closed as an HTTP/2 control-frame flood.
    flooded: std::sync::atomic::AtomicBool,
}

impl GuardFlag {
    /// The 1-based ordinal of the first request head refused on this connection, 0 if none.
    pub fn first_refused(&self) -> u64 {
        self.bad_request.load(Ordering::Relaxed)
    }

    /// Whether the connection was closed as an HTTP/2 control-frame flood.
    pub fn flooded(&self) -> bool {
        self.flooded.load(Ordering::Relaxed)
    }

    /// Requests the request path has seen on this connection (Portico's own server's, before a handoff).
    pub fn requests_seen(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
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
    ChunkSize {
        value: u64,
        digits: u32,
        in_ext: bool,
        seen_cr: bool,
    },
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailer {
        line_len: usize,
        seen_cr: bool,
    },
    /// An HTTP/2 connection: its frames are watched for floods.
    Http2(Box<FloodWatch>),
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

    /// Starts watching a connection whose earlier requests Portico's own server answered (see
    /// [`super::http1`]): the stream starts at a request head, and verdicts count on from those requests.
    pub fn resume(inner: S, flag: Arc<GuardFlag>) -> Self {
        let heads = flag.served.load(Ordering::Relaxed);
        SmuggleGuard { inner, state: State::Head(Vec::new()), heads, flag }
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
                State::Http2(watch) => {
                    if watch.read(bytes) {
                        self.flag.flooded.store(true, Ordering::Relaxed);
                    }
                    return;
                }
                State::Head(buf) => {
                    // Skip stray CRLFs between messages, as RFC 9112 allows.
                    if buf.is_empty() {
                        let skip = bytes.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
                        bytes = &bytes[skip..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    // A head that arrives whole in one read (nearly all of them) is framed where it lies; only
                    // a head split across reads is gathered into `buf` first.
                    let in_place = buf.is_empty();
                    let start = buf.len().saturating_sub(2);
                    if !in_place {
                        buf.extend_from_slice(bytes);
                    }
                    let gathered = buf.len();
                    let head: &[u8] = if in_place { bytes } else { buf };
                    // The head ends where hyper's parser (httparse) says it does, bare-LF line ends included:
                    // framing by CRLF alone took a bare-LF head and the request after it for one head.
                    let framed = if has_blank_line(&head[start..]) { frame_head(head) } else { Ok(None) };
                    let seen = head.len();
                    match framed {
                        // A head larger than the guard follows is refused, never waved through: hyper takes one
                        // as large as `max_header_bytes` allows, and an unchecked head would switch the guard
                        // off for the rest of the connection. (The fuzz target's split-invariance property
                        // pointed here: the limit used to apply only while a head was incomplete, so the same
                        // bytes were framed differently depending on how the reads split them.)
                        Ok(Some((end, _))) if end > MAX_HEAD => {
                            self.refuse_next_head();
                            return;
                        }
                        Ok(Some((end, framing))) => {
                            let consumed = if in_place { end } else { bytes.len() - (gathered - end) };
                            self.state = self.on_head(framing);
                            bytes = &bytes[consumed..];
                        }
                        Ok(None) => {
                            if seen > MAX_HEAD {
                                self.refuse_next_head();
                            } else if in_place {
                                buf.extend_from_slice(bytes);
                            }
                            return;
                        }
                        Err(()) => {
                            // No head httparse reads: hyper refuses it too, and nothing after it is followed.
                            self.lose_track();
                            return;
                        }
                    }
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
                            self.lose_track();
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
                        // Any number of digits, leading zeros included, as long as the size fits in 64 bits
                        // (hyper's rule); a larger one hyper refuses too.
                        *digits = digits.saturating_add(1);
                        if *value > u64::MAX >> 4 {
                            self.lose_track();
                        } else {
                            *value = *value * 16 + u64::from(d);
                        }
                    } else {
                        self.lose_track();
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
                        self.lose_track();
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
                            self.lose_track();
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
        self.state = self.refuse_from(self.heads);
    }

    /// Records head `ordinal` as the first refused, unless one was already, and stops following the connection.
    fn refuse_from(&self, ordinal: u64) -> State {
        let _ = self.flag.bad_request.compare_exchange(0, ordinal, Ordering::Relaxed, Ordering::Relaxed);
        State::Off
    }

    /// Bytes the guard cannot follow: the next request head is refused, whatever it is, and the guard stops
    /// (hyper refuses what the guard could not read, or the two read the connection differently and nothing
    /// more on it can be trusted).
    fn lose_track(&mut self) {
        self.state = self.refuse_from(self.heads + 1);
    }

    /// The state after a complete head, from what its framing headers say.
    fn on_head(&mut self, framing: Framing) -> State {
        match framing {
            // The preface opens an HTTP/2 connection; after requests it is no request at all.
            Framing::Preface if self.heads == 0 => return State::Http2(Box::new(FloodWatch::new(PREFACE_REST.len()))),
            Framing::Preface => return self.refuse_from(self.heads + 1),
            _ => self.heads += 1,
        }
        match framing {
            Framing::Preface => State::Off, // answered above
            Framing::Ambiguous | Framing::Unframed => self.refuse_from(self.heads),
            Framing::Chunked => State::ChunkSize { value: 0, digits: 0, in_ext: false, seen_cr: false },
            Framing::Length(0) => State::Head(Vec::new()),
            Framing::Length(n) => State::Fixed(n),
        }
    }
}

/// What a complete head says about the bytes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// The HTTP/2 connection preface: the guard stops.
    Preface,
    /// Both `Content-Length` and `Transfer-Encoding` (whatever their values): the request is refused.
    Ambiguous,
    /// A chunked body follows.
    Chunked,
    /// `Content-Length` bytes follow (0: the next head).
    Length(u64),
    /// A head the guard cannot frame past (an unparsable or conflicting length, transfer codings other than
    /// one `chunked`): the request is refused. hyper refuses most of these itself; it takes `gzip, chunked`
    /// and `chunked, chunked`, and would pass the body on decoded under a label that no longer says how.
    Unframed,
}

/// The length of the complete head at the start of `buf` and its framing (`None` if incomplete, `Err` if it
/// is no head), from one parse into headers left uninitialised (a head has at most 128 of them here, and
/// zeroing the array cost more than the parse on every request).
/// What follows the HTTP/2 preface's first blank line, where [`frame_head`] ends it.
const PREFACE_REST: &[u8] = b"SM\r\n\r\n";

fn frame_head(buf: &[u8]) -> Result<Option<(usize, Framing)>, ()> {
    if buf.starts_with(b"PRI * HTTP/2.0") {
        return Ok(buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i + 4, Framing::Preface)));
    }
    let mut headers = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); 128];
    let mut req = httparse::Request::new(&mut []);
    let end = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let mut content_length: Option<u64> = None;
    let (mut has_length, mut bad_length) = (false, false);
    // The transfer codings of every `Transfer-Encoding` field, in order: (how many, all of them `chunked`).
    let (mut te, mut codings, mut all_chunked) = (false, 0u32, true);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            has_length = true;
            let parsed = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
            match (content_length, parsed) {
                (_, None) => bad_length = true,
                (Some(old), Some(new)) if old != new => bad_length = true,
                (_, Some(new)) => content_length = Some(new),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            // Empty list elements are allowed (RFC 9110 §5.6.1) and mean nothing.
            for coding in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()) {
                codings += 1;
                all_chunked &= coding.eq_ignore_ascii_case(b"chunked");
            }
        }
    }
    // An `Upgrade` or CONNECT request is framed like any other: hyper keeps parsing requests on the
    // connection unless the upgrade is accepted, and once it is, no request path looks at this guard again.
    // Both framing fields are ambiguous whatever their values say: checked before a length is read, so an
    // unreadable `Content-Length` cannot make a CL+TE request look merely unframed.
    let framing = if te && has_length {
        Framing::Ambiguous
    } else if bad_length || (te && !(codings == 1 && all_chunked)) {
        Framing::Unframed
    } else if te {
        Framing::Chunked
    } else {
        Framing::Length(content_length.unwrap_or(0))
    };
    Ok(Some((end, framing)))
}

/// Whether the bytes hold an empty line (`\n\n` or `\n\r\n`), the only place a head can end.
/// It looks only at line ends (`memchr`), since it runs on every read of every head.
fn has_blank_line(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes).any(|i| match bytes.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => bytes.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

impl<S: AsyncRead + Unpin> AsyncRead for SmuggleGuard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if !matches!(this.state, State::Off) {
                this.scan(&buf.filled()[before..]);
                if matches!(this.state, State::Http2(_)) && this.flag.flooded() {
                    this.state = State::Off;
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP/2 control-frame flood")));
                }
            }
        }
        polled
    }
}

impl<S> SmuggleGuard<S> {
    /// Credits what was written to an HTTP/2 connection's flood watch.
    fn wrote(&mut self, polled: &Poll<io::Result<usize>>) {
        if let (State::Http2(watch), Poll::Ready(Ok(n))) = (&mut self.state, polled) {
            watch.wrote(*n);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SmuggleGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(&polled);
        polled
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
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
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
        // However the reads split it: heads framed in place, gathered across reads, or both on one connection.
        for size in 1..=stream.len() {
            let split: Vec<&[u8]> = stream.chunks(size).collect();
            assert_eq!(run(&split), (3, 0), "reads of {size} bytes");
        }
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
    fn what_the_guard_cannot_follow_refuses_rather_than_switching_it_off() {
        let cl_te =
            &b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..];
        // A chunk size with leading zeros past 15 digits is framed, so the CL+TE request after it is found.
        let zeros =
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000005\r\nhello\r\n0\r\n\r\n";
        assert_eq!(run(&[&[&zeros[..], cl_te].concat()]), (2, 2));
        // A size past 64 bits, a broken chunk end, an unreadable head: the next request is refused, whatever.
        let huge = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\n";
        assert_eq!(run(&[huge]).1, 2);
        let broken = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX";
        assert_eq!(run(&[broken]).1, 2);
        assert_eq!(run(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /\x01 HTTP/1.1\r\n\r\n"]).1, 2);
        // An unreadable length beside Transfer-Encoding is still both.
        for head in
            ["Transfer-Encoding: chunked\r\nContent-Length: x", "Content-Length: 5, 5\r\nTransfer-Encoding: chunked"]
        {
            let req = format!("POST / HTTP/1.1\r\nHost: a\r\n{head}\r\n\r\n0\r\n\r\n");
            assert_eq!(run(&[req.as_bytes()]), (1, 1), "{head}");
        }
        // Transfer codings other than one chunked are refused; empty list elements are nothing.
        for te in ["gzip, chunked", "identity, chunked", "chunked, chunked", "chunked, gzip"] {
            let req = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n");
            assert_eq!(run(&[req.as_bytes()]).1, 1, "{te}");
        }
        let req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , CHUNKED\r\n\r\n0\r\n\r\n";
        assert_eq!(run(&[req]), (1, 0));
        // The HTTP/2 preface opens a connection; after a request it is refused.
        assert_eq!(run(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]), (0, 0));
        assert_eq!(run(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]), (1, 2));
    }

    #[test]
    fn body_bytes_that_look_like_requests_are_not_heads() {
        let s = b"POST / HTTP/1.1\r\nContent-Length: 66\r\n\r\nGET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(run(&[s]), (1, 0));
    }
}
