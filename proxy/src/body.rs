//! The two body types of the data path. Both stream: a proxied body is passed frame by frame and never
//! collected. Local answers (errors, admin) are a single buffer. Enums instead of boxing keep a request free
//! of extra allocations.

use crate::h1::raw::RawFields;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// A client's request body as the request path gets it: read by hyper (HTTP/2, and HTTP/1 requests that carry
/// a body or switch protocols), or none at all (a request head Portico's own HTTP/1 server read, which it takes
/// only when no body follows: see [`crate::listen::http1`]).
#[derive(Debug)]
pub enum ClientBody {
    /// hyper's body.
    Hyper(Incoming),
    /// No body.
    Empty,
    /// A body read whole with its head by Portico's own HTTP/1 server (see
    /// [`crate::h1::server_head::MAX_BUFFERED_BODY`]); `None` once taken.
    Full(Option<Bytes>),
    /// hyper's body, counted against the listener's `max_request_body` (boxed: the enum stays the size of
    /// hyper's body, moved with every request).
    Capped(Box<Capped>),
    /// A capped body that went past its limit: it stays failed.
    Refused,
}

/// A body held to the listener's `max_request_body`.
#[derive(Debug)]
pub struct Capped {
    body: Incoming,
    /// The bytes still allowed.
    left: u64,
    /// What is left of the body is read and thrown away for a while once it is refused (HTTP/1): closing the
    /// connection on unread bytes resets it, and a client still sending loses the 413 to the reset.
    linger: bool,
}

/// How long, and how much, a refused HTTP/1 body is still read (nginx's lingering close, kept short).
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: u64 = 16 << 20;

/// Reads and drops the rest of a refused body, within [`LINGER_TIME`] and [`LINGER_BYTES`], so that hyper can
/// end the exchange cleanly (and keep the connection, when the rest is short) instead of resetting it.
fn linger(mut body: Incoming) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let drain = async {
            let mut read = 0u64;
            while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

/// Why a client's request body could not be passed on. Either way the fault is the client's: it is answered
/// as such and never counts against an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// hyper could not read it (broken framing, the connection closed inside it).
    #[error(transparent)]
    Read(#[from] hyper::Error),
    /// It grew past the listener's `max_request_body`.
    #[error("the request body is larger than the listener's max_request_body")]
    TooLarge,
}

/// Marks (in a response's extensions) an answer to a request whose client broke off its body: counted as a
/// cancel, not a refusal (see [`crate::listen::idle::InFlight::broken_by_client`]).
#[derive(Debug, Clone, Copy)]
pub struct BodyBroken;

impl ClientBody {
    /// The body held to at most `limit` bytes (`max_request_body`), or `Err` when it says up front that it is
    /// larger (its `Content-Length`, or the bytes already read): that request is refused before anything is
    /// sent upstream. A body announced within the limit that grows past it (chunked, HTTP/2 without a length)
    /// fails when it does, as nginx's `client_max_body_size` does.
    /// `linger`: an HTTP/1 body, whose unread rest is read and thrown away for a while once refused.
    pub fn capped(self, limit: u64, linger: bool) -> Result<ClientBody, ClientBodyError> {
        if self.size_hint().lower() > limit {
            if let (ClientBody::Hyper(body), true) = (self, linger) {
                self::linger(body);
            }
            return Err(ClientBodyError::TooLarge);
        }
        Ok(match self {
            ClientBody::Hyper(body) if !body.is_end_stream() => {
                ClientBody::Capped(Box::new(Capped { body, left: limit, linger }))
            }
            other => other,
        })
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        match this {
            ClientBody::Hyper(incoming) => Pin::new(incoming).poll_frame(cx).map_err(ClientBodyError::Read),
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Full(bytes) => Poll::Ready(bytes.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            ClientBody::Capped(capped) => {
                let polled = ready!(Pin::new(&mut capped.body).poll_frame(cx));
                if let Some(Ok(frame)) = &polled {
                    let taken = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if taken > capped.left {
                        if let ClientBody::Capped(capped) = std::mem::replace(this, ClientBody::Refused) {
                            if capped.linger {
                                linger(capped.body);
                            }
                        }
                        return Poll::Ready(Some(Err(ClientBodyError::TooLarge)));
                    }
                    capped.left -= taken;
                }
                Poll::Ready(polled.map(|f| f.map_err(ClientBodyError::Read)))
            }
            ClientBody::Refused => Poll::Ready(Some(Err(ClientBodyError::TooLarge))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(incoming) => incoming.is_end_stream(),
            ClientBody::Capped(capped) => capped.body.is_end_stream(),
            ClientBody::Empty => true,
            ClientBody::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            ClientBody::Refused => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(incoming) => incoming.size_hint(),
            ClientBody::Capped(capped) => capped.body.size_hint(),
            ClientBody::Refused => SizeHint::default(),
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// What Portico sends upstream: the client's body as it arrives, or bytes Portico already holds.
#[derive(Debug)]
pub enum RequestBody {
    /// Streamed from the client.
    Stream(ClientBody),
    /// Held in memory (empty for bodiless requests, so they can be retried).
    Full(Option<Bytes>),
    /// Streamed from the client, watched so a failed exchange can be told apart from a failed upstream.
    Watched(ClientBody, Arc<ClientBodyWatch>),
}

impl RequestBody {
    /// A body with no bytes.
    pub fn empty() -> Self {
        RequestBody::Full(None)
    }

    /// The client's streamed body and a watch on it; other bodies as they are.
    pub fn watched(self) -> (Self, Option<Arc<ClientBodyWatch>>) {
        match self {
            RequestBody::Stream(incoming) => {
                let watch = Arc::new(ClientBodyWatch::default());
                (RequestBody::Watched(incoming, watch.clone()), Some(watch))
            }
            other => (other, None),
        }
    }
}

/// What became of a client's request body on its way upstream. When the exchange with the upstream fails, this
/// says whose fault it was: a body the client broke (an invalid chunk, a connection closed before the
/// `Content-Length` was complete) or never finished sending is the client's, and must neither be answered 502
/// nor count against the endpoint (outlier detection, retries).
#[derive(Debug, Default)]
pub struct ClientBodyWatch(AtomicU8);

const READING: u8 = 0;
const WAITING_ON_CLIENT: u8 = 1;
const ENDED: u8 = 2;
const CLIENT_FAILED: u8 = 3;
const TOO_LARGE: u8 = 4;

impl ClientBodyWatch {
    /// The client's body could not be read (malformed framing, connection closed early).
    pub fn client_failed(&self) -> bool {
        self.0.load(Ordering::Relaxed) == CLIENT_FAILED
    }

    /// The client's body grew past the listener's `max_request_body`.
    pub fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == TOO_LARGE
    }

    /// The upstream side was waiting for more of the client's body when last asked: a stall is the client's.
    pub fn waiting_on_client(&self) -> bool {
        self.0.load(Ordering::Relaxed) == WAITING_ON_CLIENT
    }

    fn record<T>(&self, polled: &Poll<Option<Result<T, ClientBodyError>>>) {
        let state = match polled {
            Poll::Pending => WAITING_ON_CLIENT,
            Poll::Ready(Some(Ok(_))) => READING,
            Poll::Ready(None) => ENDED,
            Poll::Ready(Some(Err(ClientBodyError::Read(_)))) => CLIENT_FAILED,
            Poll::Ready(Some(Err(ClientBodyError::TooLarge))) => TOO_LARGE,
        };
        self.0.store(state, Ordering::Relaxed);
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            RequestBody::Stream(incoming) => Pin::new(incoming).poll_frame(cx),
            RequestBody::Full(bytes) => Poll::Ready(bytes.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            RequestBody::Watched(incoming, watch) => {
                let polled = Pin::new(incoming).poll_frame(cx);
                watch.record(&polled);
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(incoming) | RequestBody::Watched(incoming, _) => incoming.is_end_stream(),
            RequestBody::Full(bytes) => bytes.as_ref().is_none_or(|b| b.is_empty()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(incoming) | RequestBody::Watched(incoming, _) => incoming.size_hint(),
            RequestBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// Something that must live exactly as long as a response body is being sent (an endpoint's active-request
/// count, a connection permit, the request's metrics).
pub trait BodyGuard: Send + Sync + 'static {
    /// Called once when the body ends, with whether it ended cleanly.
    fn finish(&mut self, ok: bool);

    /// Called each time the client's side asks for more of the body (for the send timeout, and the access
    /// log's byte count): `None` when none is there yet (the body waits for the upstream), `Some(bytes)` when a
    /// frame was handed over.
    fn progress(&mut self, handed: Option<usize>) {
        let _ = handed;
    }
}

/// Why a response body was cut short after its headers were sent (a plugin failed or refused mid-body, or the
/// upstream body broke while plugins filtered it). The client sees the stream reset, never a clean short body.
#[derive(Debug)]
pub struct BodyAborted(pub String);

impl std::fmt::Display for BodyAborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "response body aborted: {}", self.0)
    }
}

impl std::error::Error for BodyAborted {}

/// The error of a [`ResponseBody`]: hyper's, or a [`BodyAborted`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body streaming from an upstream: read by Portico's own HTTP/1 client, or by hyper's (HTTP/2
/// upstreams, forward-proxy origins).
#[derive(Debug)]
pub enum UpstreamBody {
    /// From an HTTP/1.1 endpoint; owns its connection until the message ends.
    H1(crate::upstream::h1::Body),
    /// From hyper's client.
    Hyper(HyperBody),
}

/// A body hyper's client reads, kept in a cell an [`UpstreamCloser`] can empty from outside (HTTP/2 upstreams;
/// a forward-proxy origin's body sits in one too, though nothing closes it from outside). An HTTP/2 answer
/// that the client's side no longer polls (a reader that stalled) keeps its stream's unread data counted
/// against the upstream connection's flow-control window, which every request on that connection shares,
/// until the stream is dropped: a few stalled readers would stop every answer on the connection. The lock is
/// taken once a frame, never contended but by the send timeout.
#[derive(Debug)]
pub struct HyperBody(HyperCell);

/// Where a [`HyperBody`] keeps hyper's body: shared with its [`UpstreamCloser`], empty once closed.
type HyperCell = Arc<parking_lot::Mutex<Option<Incoming>>>;

impl HyperBody {
    /// hyper's body, in its cell.
    pub fn new(incoming: Incoming) -> Self {
        HyperBody(Arc::new(parking_lot::Mutex::new(Some(incoming))))
    }

    /// hyper's body, unless it was dropped from outside.
    pub fn into_incoming(self) -> Option<Incoming> {
        self.0.lock().take()
    }
}

impl Body for HyperBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.0.lock().as_mut() {
            Some(incoming) => Pin::new(incoming).poll_frame(cx).map_err(BoxError::from),
            None => Poll::Ready(Some(Err(BoxError::from(BodyAborted("the upstream stream was dropped".into()))))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().as_ref().is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0.lock().as_ref().map_or_else(SizeHint::default, Body::size_hint)
    }
}

/// Ends, from outside, an upstream body its reader no longer polls: closes an HTTP/1 body's connection, drops
/// an HTTP/2 body's stream (which resets it and gives its unread data back to the connection's window).
pub enum UpstreamCloser {
    /// Shuts an HTTP/1 body's connection.
    H1(Arc<crate::upstream::h1::Closer>),
    /// Empties an HTTP/2 body's cell.
    Hyper(HyperCell),
}

impl UpstreamCloser {
    /// Ends the body; its reader's next poll gets an error.
    pub fn close(&self) {
        match self {
            UpstreamCloser::H1(closer) => closer.close(),
            UpstreamCloser::Hyper(cell) => {
                // Dropped outside the lock: dropping a stream takes the h2 connection's own lock.
                let incoming = cell.lock().take();
                drop(incoming);
            }
        }
    }
}

/// A body that may carry its answer's fields raw (see [`crate::h1::raw`]).
pub trait RawFieldsSlot {
    /// Where the raw fields are kept, for a body that can carry them.
    fn raw_slot(&mut self) -> Option<&mut Option<Box<RawFields>>>;

    /// The raw fields, while there are any.
    fn raw_fields(&mut self) -> Option<&mut RawFields> {
        self.raw_slot().and_then(|slot| slot.as_deref_mut())
    }

    /// Takes the raw fields out, to be written.
    fn take_raw_fields(&mut self) -> Option<Box<RawFields>> {
        self.raw_slot().and_then(Option::take)
    }
}

/// Makes an answer's raw fields its map, for code that reads the fields: plugins, a callout's caller, hyper's
/// server. Does nothing to an answer whose fields are a map already.
pub fn fields_as_map<B: RawFieldsSlot>(response: &mut http::Response<B>) {
    if let Some(raw) = response.body_mut().take_raw_fields() {
        let replaced = std::mem::take(response.headers_mut());
        *response.headers_mut() = raw.into_map(replaced);
    }
}

impl RawFieldsSlot for UpstreamBody {
    fn raw_slot(&mut self) -> Option<&mut Option<Box<RawFields>>> {
        match self {
            UpstreamBody::H1(body) => Some(body.raw_fields()),
            UpstreamBody::Hyper(_) => None,
        }
    }
}

impl RawFieldsSlot for ResponseBody {
    fn raw_slot(&mut self) -> Option<&mut Option<Box<RawFields>>> {
        match self {
            ResponseBody::Upstream(body, _) => body.raw_slot(),
            ResponseBody::Full(_) | ResponseBody::Channel(_) | ResponseBody::Filtered(..) => None,
        }
    }
}

impl UpstreamBody {
    /// Whether the body still holds something upstream: its HTTP/1 connection while it reads from it (see
    /// [`crate::upstream::h1::Body`]); an HTTP/2 stream always.
    pub fn holds_upstream(&self) -> bool {
        match self {
            UpstreamBody::H1(body) => body.holds_connection(),
            UpstreamBody::Hyper(_) => true,
        }
    }

    /// The handle that ends the body from outside: for an HTTP/1 body still being read, and every HTTP/2 one.
    pub fn closer(&self) -> Option<UpstreamCloser> {
        match self {
            UpstreamBody::H1(body) => body.closer().map(UpstreamCloser::H1),
            UpstreamBody::Hyper(body) => Some(UpstreamCloser::Hyper(body.0.clone())),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::H1(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            UpstreamBody::Hyper(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(body) => body.is_end_stream(),
            UpstreamBody::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(body) => body.size_hint(),
            UpstreamBody::Hyper(body) => body.size_hint(),
        }
    }
}

/// What Portico sends to the client.
pub enum ResponseBody {
    /// Streamed from the upstream, with whatever must be released when it ends.
    Upstream(UpstreamBody, Option<Box<dyn BodyGuard>>),
    /// A local answer.
    Full(Option<Bytes>),
    /// An open-ended local stream (server-sent events); ends when the sender is dropped.
    Channel(tokio::sync::mpsc::Receiver<Bytes>),
    /// An upstream body after the plugins' body callbacks, fed by the task that runs them; an `Err` aborts it.
    /// With what must be released when it ends (the request's place in its connection's count of requests in
    /// flight: without it, a connection that once streamed a filtered body was never idle again).
    Filtered(tokio::sync::mpsc::Receiver<Result<Bytes, BodyAborted>>, Option<Box<dyn BodyGuard>>),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBody::Upstream(..) => f.write_str("ResponseBody::Upstream"),
            ResponseBody::Full(b) => write!(f, "ResponseBody::Full({:?})", b.as_ref().map(Bytes::len)),
            ResponseBody::Channel(_) => f.write_str("ResponseBody::Channel"),
            ResponseBody::Filtered(..) => f.write_str("ResponseBody::Filtered"),
        }
    }
}

impl ResponseBody {
    /// The guard slot of a body still streaming from an upstream (`None` for a complete body), so more work
    /// can be tied to the end of the body.
    pub fn guard_slot(&mut self) -> Option<&mut Option<Box<dyn BodyGuard>>> {
        match self {
            ResponseBody::Upstream(_, guard) => Some(guard),
            ResponseBody::Filtered(_, guard) => Some(guard),
            ResponseBody::Full(_) | ResponseBody::Channel(_) => None,
        }
    }

    /// Whether the body still holds something upstream that must be given back when the client is done with
    /// it (and so needs watching by the send timeout); an answer already whole in memory does not.
    pub fn holds_upstream(&self) -> bool {
        match self {
            ResponseBody::Upstream(body, _) => body.holds_upstream(),
            ResponseBody::Full(_) | ResponseBody::Channel(_) | ResponseBody::Filtered(..) => false,
        }
    }

    /// A local answer body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(incoming, guard) => {
                let polled = Pin::new(&mut *incoming).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => finish(guard, true),
                    Poll::Ready(Some(Err(_))) => finish(guard, false),
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(g) = guard {
                            g.progress(Some(frame.data_ref().map_or(0, Bytes::len)));
                        }
                        if incoming.is_end_stream() {
                            finish(guard, true);
                        }
                    }
                    Poll::Pending => {
                        if let Some(g) = guard {
                            g.progress(None);
                        }
                    }
                }
                polled
            }
            ResponseBody::Full(bytes) => {
                Poll::Ready(bytes.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b))))
            }
            ResponseBody::Channel(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
            ResponseBody::Filtered(rx, guard) => {
                let polled = rx.poll_recv(cx);
                match &polled {
                    Poll::Ready(None) => finish(guard, true),
                    Poll::Ready(Some(Err(_))) => finish(guard, false),
                    Poll::Ready(Some(Ok(data))) => {
                        if let Some(g) = guard {
                            g.progress(Some(data.len()));
                        }
                    }
                    Poll::Pending => {}
                }
                polled.map(|chunk| chunk.map(|r| r.map(Frame::data).map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(incoming, _) => incoming.is_end_stream(),
            ResponseBody::Full(bytes) => bytes.as_ref().is_none_or(|b| b.is_empty()),
            ResponseBody::Channel(_) | ResponseBody::Filtered(..) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(incoming, _) => incoming.size_hint(),
            ResponseBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Channel(_) | ResponseBody::Filtered(..) => SizeHint::default(),
        }
    }
}

fn finish(guard: &mut Option<Box<dyn BodyGuard>>, ok: bool) {
    if let Some(mut g) = guard.take() {
        g.finish(ok);
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A client that goes away mid-body still releases the endpoint.
        if let ResponseBody::Upstream(incoming, guard) = self {
            let ok = incoming.is_end_stream();
            finish(guard, ok);
        }
    }
}
