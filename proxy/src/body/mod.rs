//! The body types of the data path: the request side in [`request`], the response side here. Both stream: a
//! proxied body is passed frame by frame and never collected. Local answers (errors, admin) are a single
//! buffer. Enums instead of boxing keep a request free of extra allocations.

mod request;

pub use request::{BodyBroken, Capped, ClientBody, ClientBodyError, ClientBodyWatch, RequestBody};

use crate::h1::raw::RawFields;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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
