//! Serving HTTP/1.x with Portico's own codec ([`crate::h1`]), in Pingora's shape: the connection's task reads
//! a request head in place, runs the request path, and writes the answer itself, head and first body bytes in
//! one write. hyper's server spent about a third of a proxied request's instructions between the socket and
//! the request path (its dispatcher, a second parse for the smuggling guard, a timer for every head).
//!
//! It takes the plainest requests ([`server_head::parse_request`]), HTTP/1.1 or 1.0: no body, or one of at
//! most 16 KiB framed by its one `Content-Length` that has all arrived with its head (a small body nearly
//! always has; a later one is hyper's, which streams it); nothing of their framing can be ambiguous. The first
//! other request (a chunked or larger body, `HEAD`, an upgrade, the HTTP/2 preface, a malformed or oversized
//! head) and the rest of the connection go to hyper's server, with the bytes
//! already read put back in front of the socket ([`Rewind`]): hyper then serves it as if it had from the start,
//! under the smuggling guard, which counts the requests answered here so that its verdicts name the right one.
//!
//! Deadlines: the connection's [`super::idle::Activity`] bounds the wait for the first head and the idle time
//! between requests, as for hyper. A head that arrives in pieces has `header_read_timeout` from its first
//! piece, as in hyper; one that arrives in one read (nearly all) costs no timer. A listener stopping closes an
//! idle connection at once and a busy one after its answer (`connection: close`).

use super::ConnInfo;
use crate::body::{ClientBody, RawFieldsSlot as _, ResponseBody};
use crate::forward;
use crate::h1::framing::{self, BodyLength};
use crate::h1::server_head::{self, Persistence, RequestParse};
use crate::h1::upload::Upload;
use crate::h1::{self, date};
use crate::server::Shared;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::header::CONNECTION;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

/// The read buffer grows by this much when it runs out of room.
const READ_CHUNK: usize = 8 * 1024;

/// How a connection left Portico's server.
pub enum Served<S> {
    /// It is closed (or to be dropped): the client closed it, a deadline passed, it asked to, or it failed.
    Closed,
    /// A request Portico's server does not take is at the front of what was read: hyper serves the rest.
    Handoff(Rewind<S>),
}

/// What bounds a connection's requests here.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest request head taken (`max_header_bytes`); a larger one goes to hyper, which answers 431.
    pub max_head: usize,
    /// From the first piece of a head to its end.
    pub header_read: Duration,
}

/// Serves the connection's requests until it closes or a request needs hyper.
pub async fn serve<S>(
    mut io: S,
    shared: &Arc<Shared>,
    conn: &Arc<ConnInfo>,
    limits: Limits,
    stop: &watch::Receiver<bool>,
) -> Served<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut read = BytesMut::with_capacity(READ_CHUNK);
    let mut write = Vec::with_capacity(1024);
    // One wait for the listener to stop, for the connection's life: made anew for every request, it registered
    // with the channel and left it again each time.
    let mut stop_waiter = stop.clone();
    let mut stopping = std::pin::pin!(stop_waiter.changed());
    // The client closed its side after pipelining requests: those are answered, not taken for a client gone.
    let mut half_closed = false;
    loop {
        let mut head_deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let (head, asked_close, body_length) = loop {
            match server_head::parse_request(&mut read, limits.max_head) {
                RequestParse::Simple { head, close, body } => break (head, close, body),
                RequestParse::Other => return Served::Handoff(Rewind { prefix: read.freeze(), inner: io }),
                RequestParse::LineTooLong => {
                    uri_too_long(&mut io, &mut write, shared, conn, limits.max_head).await;
                    return Served::Closed;
                }
                RequestParse::Partial => {}
                RequestParse::BodyPending => {
                    // The rest of a small body is nearly always already in the socket (a client writes head
                    // and body together): read what is there, without waiting. A body still short of its
                    // length then goes to hyper, which streams it under the request's deadlines (a stalled
                    // upload is the client's 408), as for a large one.
                    read.reserve(server_head::MAX_BUFFERED_BODY + limits.max_head);
                    match io.read_buf(&mut read).now_or_never() {
                        Some(Ok(n)) if n > 0 => continue,
                        Some(_) => return Served::Closed,
                        None => return Served::Handoff(Rewind { prefix: read.freeze(), inner: io }),
                    }
                }
            }
            let between_requests = read.is_empty();
            if between_requests && *stop.borrow() {
                return Served::Closed;
            }
            if !between_requests && head_deadline.is_none() {
                head_deadline = Some(Box::pin(tokio::time::sleep(limits.header_read)));
            }
            if read.capacity() - read.len() < READ_CHUNK / 4 {
                read.reserve(READ_CHUNK);
            }
            let got = tokio::select! {
                biased;
                got = io.read_buf(&mut read) => got,
                _ = &mut stopping, if between_requests => return Served::Closed,
                () = until(head_deadline.as_mut()) => {
                    tracing::debug!(peer = %conn.peer, "connection closed: request head not complete in time");
                    return Served::Closed;
                }
            };
            if !matches!(got, Ok(n) if n > 0) {
                return Served::Closed;
            }
        };
        let body = match body_length {
            0 => ClientBody::Empty,
            length => ClientBody::Full(Some(read.split_to(length).freeze())),
        };
        let http10 = head.version == http::Version::HTTP_10;
        let request = Request::from_parts(head, body);
        // Borrowed, not cloned: `Shared`'s count is written by every worker, and each write moves its cache
        // line between the cores.
        let handled = forward::handle(shared, conn, request);
        let Some(response) = while_connected(&mut io, &mut read, &mut half_closed, limits.max_head, handled).await
        else {
            tracing::debug!(peer = %conn.peer, "client closed the connection before its answer; request dropped");
            return Served::Closed;
        };
        let close = asked_close || *stop.borrow();
        match respond(&mut io, &mut write, response, close, http10).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = io.shutdown().await;
                return Served::Closed;
            }
            Err(e) => {
                tracing::debug!(peer = %conn.peer, error = %e, "answer not sent whole; connection closed");
                return Served::Closed;
            }
        }
    }
}

/// Runs a request while watching its connection, as nginx does (`proxy_ignore_client_abort off`): a client that
/// closes the connection before its answer is ready has the request dropped, which cancels its upstream
/// exchange and logs it 499, instead of the upstream's work going on for nobody. Bytes a client pipelines
/// meanwhile are kept for the next request, up to a head's worth; a client that closes its side with
/// pipelined requests still unanswered (`half_closed`) has them all answered. The watch costs no system call while the
/// client sends nothing: tokio learned from the head's short read that the socket was drained, and polls it
/// again only once epoll reports it readable.
async fn while_connected<S, F>(
    io: &mut S,
    read: &mut BytesMut,
    half_closed: &mut bool,
    max_head: usize,
    handled: F,
) -> Option<Response<ResponseBody>>
where
    S: AsyncRead + Unpin,
    F: std::future::Future<Output = Result<Response<ResponseBody>, std::convert::Infallible>>,
{
    let mut handled = std::pin::pin!(handled);
    let mut watching = !*half_closed;
    poll_fn(|cx| {
        match handled.as_mut().poll(cx) {
            Poll::Ready(Ok(response)) => return Poll::Ready(Some(response)),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => {}
        }
        while watching {
            if read.len() >= max_head {
                // Enough of the next request: the rest waits in the socket.
                watching = false;
                break;
            }
            // Uninitialised: the poll, made at every wake-up of the request, mostly finds nothing to read.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                // The client closed its side: nothing more comes, and nobody reads an answer, unless requests it
                // pipelined before closing wait to be answered (hyper answers those too).
                Poll::Ready(Ok(())) if buf.filled().is_empty() && read.is_empty() => return Poll::Ready(None),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    *half_closed = true;
                    watching = false;
                }
                Poll::Ready(Ok(())) => read.extend_from_slice(buf.filled()),
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

/// Answers a request line longer than the listener takes with 414 and closes: what follows it cannot be read
/// as the rest of a request. The close lingers (as nginx's `lingering_close`): the client is likely still
/// sending its line, and closing a socket with unread input resets it, which can destroy the answer before the
/// client reads it. What it sends for up to [`LINGER`] (at most [`LINGER_BYTES`]) is read and dropped.
async fn uri_too_long<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    shared: &Shared,
    conn: &ConnInfo,
    max_head: usize,
) {
    let request_id = crate::trace_context::RequestId::fresh();
    tracing::debug!(peer = %conn.peer, max_head, "request line too long: 414");
    // The listener as accepted (its name): `settings()` stays inlined in its one call on the request path.
    shared.metrics.observe_request(&conn.accepted_with.config.name, "", 414, None);
    let detail = "the request line is longer than the listener's max_header_bytes";
    let response = forward::local::error_response(forward::local::LocalError::UriTooLong, detail, &request_id);
    if respond(io, out, response, true, false).await.is_err() || io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut scratch = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match io.read(&mut scratch).await {
                Ok(n) if n > 0 => read += n,
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How long a connection closed on a client that may still be sending goes on reading what it sends.
const LINGER: Duration = Duration::from_secs(2);
/// The most read and dropped so.
const LINGER_BYTES: usize = 1 << 20;

/// Resolves when the deadline passes; never without one.
async fn until(deadline: Option<&mut Pin<Box<tokio::time::Sleep>>>) {
    match deadline {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

/// Writes an answer: its head and body in the framing its status, fields and body call for. `Ok(true)` when
/// the connection can carry another request. An HTTP/1.0 client knows no chunked coding: an answer of unknown
/// length is ended by closing the connection (RFC 9112 §6.3), as nginx and hyper do.
async fn respond<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    response: Response<ResponseBody>,
    close: bool,
    http10: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    // Raw fields carry no framing field: an upstream's length is the body's own. Their map holds only the
    // fields that replace the upstream's (`x-request-id`), never `content-length` or `connection`.
    let raw = body.take_raw_fields();
    let mut length = framing(parts.status, raw.is_none().then_some(&parts.headers), &body);
    let mut close = close || (raw.is_none() && asks_close(&parts.headers));
    if http10 && length == BodyLength::Chunked {
        (length, close) = (BodyLength::UntilClose, true);
    }
    let persistence = match (close, http10) {
        (true, _) => Persistence::Close,
        (false, true) => Persistence::KeptAlive,
        (false, false) => Persistence::Open,
    };
    server_head::encode_response(
        out,
        parts.status,
        &parts.headers,
        raw.as_deref(),
        length,
        persistence,
        date::append_now,
    );
    drop(raw);
    crate::h1::maps::give_back(parts.headers);
    let mut upload = Upload::new(body.map_err(io::Error::other), length);
    poll_fn(|cx| upload.poll_send(io, out, cx)).await.map_err(io::Error::other)?;
    io.flush().await?;
    Ok(!close)
}

/// How an answer's body is framed (RFC 9112 §6.3): none for 1xx, 204 and 304; the `Content-Length` its
/// `headers` carry (an upstream's, passed on; read as the codec reads an upstream's); the body's own exact
/// length; otherwise chunked.
fn framing(status: StatusCode, headers: Option<&HeaderMap>, body: &ResponseBody) -> BodyLength {
    if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return BodyLength::Empty;
    }
    if let Some(Ok(Some(n))) = headers.map(framing::content_length) {
        return BodyLength::Fixed(n);
    }
    match body.size_hint().exact() {
        Some(n) => BodyLength::Fixed(n),
        None => BodyLength::Chunked,
    }
}

/// Whether the answer's `Connection` field says `close`.
fn asks_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| h1::elements(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close")))
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// The stream as it is, nothing put back.
    pub fn new(inner: S) -> Self {
        Rewind { prefix: Bytes::new(), inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
