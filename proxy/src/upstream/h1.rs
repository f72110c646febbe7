//! Portico's HTTP/1.1 client for upstream endpoints, on its own codec ([`crate::h1`]).
//!
//! One exchange is driven by the request's own task: the request head is written with one write (with the
//! first body bytes when they are at hand), the response head is parsed in place in the connection's read
//! buffer, and the response body ([`Body`]) owns the connection and reads the socket itself. When the message
//! ends cleanly on a connection that stays open, the body gives the connection back to its pool lane. There is
//! no connection task, no channel between a request and its connection, and no second parse. (hyper's client
//! spent a channel send and a oneshot per request, a task wake-up per read, and a watch per body.)
//!
//! A request body is streamed while the response head is awaited, so an upstream that answers early (a 413
//! before the body is sent) is heard. When the head comes first, the response body goes on sending the rest
//! of the request as it streams (a streaming echo answers at once and echoes the upload as it reads it), as
//! hyper's client did, unless the answer is an error the upstream closes the connection after. A connection
//! whose request did not all go out is closed when the response ends, never pooled: the upstream and Portico
//! would not agree on where the next message starts.
//!
//! Abandoning a response from outside (the send timeout, see [`crate::listen`]) cannot reach into a body that
//! hyper is not polling, so every connection keeps a duplicate of its socket, a [`Closer`], which shuts the
//! connection down; the body then ends with an error whenever it is next polled.

use super::pool::SendError;
use crate::body::{ClientBodyError, RequestBody};
use crate::h1::chunked::ChunkError;
use crate::h1::framing::{BodyLength, FramingError};
use crate::h1::head::{self, Added, HeadError, ResponseHead};
use crate::h1::upload::{Upload, UploadError};
use bytes::BytesMut;
use http::StatusCode;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

mod body;
pub use body::{Body, Home};

/// TCP keep-alive probes on upstream connections, so a peer that vanished is noticed on idle connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// The read buffer grows by this much when it runs out of room.
const READ_CHUNK: usize = 8 * 1024;

/// Why an HTTP/1 exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The socket failed.
    #[error("upstream connection failed")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before its response head was complete.
    #[error("upstream closed the connection before an answer")]
    Closed,
    /// The response head could not be read.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// The response head frames its body ambiguously.
    #[error("response framing: {0}")]
    Framing(#[from] FramingError),
    /// The chunked response body is malformed.
    #[error("response body: {0}")]
    Chunked(#[from] ChunkError),
    /// The response body ended before its length.
    #[error("upstream closed the connection inside the response body")]
    Truncated,
    /// The client's request body failed while it was being sent.
    #[error("client request body failed")]
    RequestBody(#[source] ClientBodyError),
    /// The request body did not match the `Content-Length` sent for it.
    #[error(transparent)]
    RequestLength(UploadError<ClientBodyError>),
}

impl From<UploadError<ClientBodyError>> for H1Error {
    fn from(error: UploadError<ClientBodyError>) -> Self {
        match error {
            UploadError::Client(e) => H1Error::RequestBody(e),
            UploadError::Upstream(e) => H1Error::Io(e),
            length @ UploadError::Length { .. } => H1Error::RequestLength(length),
        }
    }
}

impl H1Error {
    /// The upstream's answer could not be understood (a client gets "invalid response").
    pub fn is_invalid_response(&self) -> bool {
        matches!(self, H1Error::Head(_) | H1Error::Framing(_) | H1Error::Chunked(_))
    }
}

/// Shuts an upstream connection down from outside the body that reads it (a duplicate of its socket).
#[derive(Debug)]
pub struct Closer(socket2::Socket);

impl Closer {
    /// Closes the connection in both directions: the upstream sees it closed now, the body reading it ends.
    pub fn close(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// An open HTTP/1.1 connection to an endpoint.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet consumed; heads are parsed here and body bytes split off it.
    read: BytesMut,
    /// The request head being written; kept, with its capacity, across requests.
    write: Vec<u8>,
    closer: Arc<Closer>,
}

impl Connection {
    /// Opens a TCP connection, within `timeout`. Boxed once for its whole life, so that handing it from the
    /// pool to a response body and back moves a pointer.
    pub async fn connect(address: SocketAddr, timeout: Duration) -> Result<Box<Connection>, SendError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Err(_elapsed) => return Err(SendError::ConnectTimeout(address)),
            Ok(Err(source)) => return Err(SendError::Connect { address, source }),
            Ok(Ok(stream)) => stream,
        };
        // Best effort, as for accepted sockets: a proxy that cannot set these still works.
        let _ = stream.set_nodelay(true);
        let socket = socket2::SockRef::from(&stream);
        let _ = socket.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        let closer = Arc::new(Closer(socket.try_clone().map_err(|source| SendError::Connect { address, source })?));
        Ok(Box::new(Connection {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(512),
            closer,
        }))
    }

    /// Whether an idle connection can carry a request: the upstream has neither closed it nor sent anything
    /// unasked. Costs no system call unless the reactor saw the socket become readable.
    pub fn is_reusable(&self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends the request whose head is encoded in the connection's head buffer, with `body`, and reads the
    /// response head. The request body is written while the head is awaited; when the head comes first, what
    /// is left of the body comes back with it, for the response body to go on sending (see [`Body`]). When the
    /// request certainly did not leave, `body` is left as it was, to go on another connection.
    async fn exchange(
        &mut self,
        body: &mut RequestBody,
        length: BodyLength,
    ) -> Result<(ResponseHead, Request), Failure> {
        let mut upload = Some(Upload::new(std::mem::replace(body, RequestBody::empty()), length));
        let mut answered = false;
        let mut write_error: Option<H1Error> = None;
        let Connection { stream, read, write, .. } = self;
        poll_fn(|cx| {
            if let Some(sending) = upload.as_mut() {
                match sending.poll_send(stream, write, cx) {
                    Poll::Ready(Ok(())) => upload = None,
                    Poll::Ready(Err(UploadError::Upstream(e))) => {
                        if let Some(untouched) = upload.take_if(|u| u.is_untouched()) {
                            *body = untouched.into_body();
                            return Poll::Ready(Err(Failure { error: e.into(), unsent: true, answered }));
                        }
                        // The upstream may have answered before it stopped reading: look for its answer first.
                        upload = None;
                        write_error = Some(e.into());
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(Failure { error: e.into(), unsent: false, answered }));
                    }
                    Poll::Pending => {}
                }
            }
            match poll_head(stream, read, cx, &mut answered) {
                Poll::Ready(Ok(head)) => {
                    let request = match (upload.take(), &write_error) {
                        (Some(upload), _) => Request::Sending(Box::new(upload)),
                        (None, Some(_)) => Request::Stopped,
                        (None, None) => Request::Sent,
                    };
                    Poll::Ready(Ok((head, request)))
                }
                Poll::Ready(Err(error)) => {
                    let error = match (write_error.take(), error) {
                        (Some(write), H1Error::Closed | H1Error::Io(_)) => write,
                        (_, error) => error,
                    };
                    Poll::Ready(Err(Failure { error, unsent: false, answered }))
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// The buffer the next request head is encoded into.
    fn head_buffer(&mut self) -> &mut Vec<u8> {
        &mut self.write
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        fill(&mut self.stream, &mut self.read, cx)
    }
}

/// Reads until a final response head is complete; 1xx answers other than 101 are skipped (RFC 9110 §15.2).
fn poll_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
    answered: &mut bool,
) -> Poll<Result<ResponseHead, H1Error>> {
    loop {
        if !read.is_empty() {
            *answered = true;
            match head::parse_response(read)? {
                Some(head) if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS => {
                    continue
                }
                Some(head) => return Poll::Ready(Ok(head)),
                None => {}
            }
        }
        match ready!(fill(reader, read, cx)) {
            Ok(0) => return Poll::Ready(Err(H1Error::Closed)),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(e.into())),
        }
    }
}

/// One read into the spare room of `read` (grown when little is left).
fn fill<R: AsyncRead + Unpin>(reader: &mut R, read: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < 1024 {
        read.reserve(READ_CHUNK);
    }
    pin!(reader.read_buf(read)).poll(cx)
}

/// How an exchange failed, and how far it got (for telling a lost pooled connection from a failed request).
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: H1Error,
    /// Whether the request certainly did not leave (its head could not be written at all), so that it may go
    /// on another connection as it is.
    pub unsent: bool,
    /// Whether any byte of an answer came back.
    pub answered: bool,
}

/// How much of a request had gone out when its response head arrived.
#[derive(Debug)]
pub enum Request {
    /// All of it.
    Sent,
    /// Not all of its body: the response body goes on sending the rest.
    Sending(Box<Upload<RequestBody>>),
    /// Not all of it, and the rest will not go: the upstream stopped reading.
    Stopped,
}

/// Sends a request (origin-form target, the `added` fields besides its own, body framed as `length`) on `conn`
/// and returns the response head, and how much of the request went out before it. The head is encoded here,
/// into the connection's buffer.
pub async fn send(
    conn: &mut Connection,
    head: &http::request::Parts,
    added: &[Added<'_>],
    body: &mut RequestBody,
    length: BodyLength,
) -> Result<(ResponseHead, Request), Failure> {
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    head::encode_request(conn.head_buffer(), &head.method, target, &head.headers, added, length);
    conn.exchange(body, length).await
}

/// How the framing of a request body is chosen: its exact size when known (the client's `Content-Length`, a
/// buffered body), else chunked.
pub fn request_length(body: &RequestBody) -> BodyLength {
    use http_body::Body as _;
    if body.is_end_stream() {
        return BodyLength::Empty;
    }
    match body.size_hint().exact() {
        Some(0) => BodyLength::Empty,
        Some(n) => BodyLength::Fixed(n),
        None => BodyLength::Chunked,
    }
}
