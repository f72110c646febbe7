//! The request side: the client's body as the request path gets it (read by hyper, read whole with its head,
//! held to `max_request_body`), and what goes upstream (streamed, held, or watched so that a failed exchange
//! can be told apart from a failed upstream).

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
