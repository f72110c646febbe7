//! The response body of one HTTP/1 exchange: it owns the connection while it reads the body from it, and
//! gives the connection back to its pool lane (or closes it) when the message ends.

use super::{Closer, Connection, H1Error, Request};
use crate::body::RequestBody;
use crate::h1::chunked::{Chunk, ChunkedDecoder};
use crate::h1::framing::BodyLength;
use crate::h1::head::ResponseHead;
use crate::h1::raw::RawFields;
use crate::h1::upload::{Upload, UploadError};
use crate::upstream::pool::IdleLane;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::net::TcpStream;

/// Where a connection goes back when its response has ended.
#[derive(Debug)]
pub struct Home {
    /// The endpoint's idle list for this worker.
    pub lane: Arc<IdleLane>,
    /// The lane's cap on idle connections.
    pub max_idle: usize,
}

#[derive(Debug)]
enum Kind {
    Fixed(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    /// A 101 answer: the connection now carries another protocol.
    Upgrade,
    /// The whole body, taken out with the head; the connection has gone back already.
    Ready(Bytes),
    Done,
}

/// A response body read straight from its upstream connection. It owns the connection until the message
/// ends, then gives it back to its pool lane (or closes it, when the upstream asked to or framed the body by
/// closing). Dropped before the end, it closes the connection.
///
/// A body of known length that came whole with its head (most small answers) is taken out at once and its
/// connection goes back to the pool before the answer is even passed on, as nginx's buffering does: nothing
/// upstream waits on the client then, so the request needs no guard to give anything back when the client
/// is done (see [`Body::holds_connection`]).
///
/// When the response head came before the whole request body went out, the body also sends the rest of the
/// request each time it is polled, so an upstream that reads as it answers gets all of it. A connection whose
/// request did not all go out by the end of the response is closed, not pooled.
#[derive(Debug)]
pub struct Body {
    conn: Option<Box<Connection>>,
    kind: Kind,
    keep_alive: bool,
    /// The rest of the request body, while it is being sent.
    upload: Option<Box<Upload<RequestBody>>>,
    home: Option<Home>,
    /// The answer's fields while they are raw (see [`crate::h1::raw`]): they travel with the body, which every
    /// stage passes on, and out of sight of hyper and the plugins, which make them a map first.
    raw: Option<Box<RawFields>>,
}

impl Body {
    /// The body of the response whose head was just read on `conn`, for a request with `method`; `request`
    /// says how much of the request had gone out (the rest is sent as the body is read).
    pub fn new(
        conn: Box<Connection>,
        head: &ResponseHead,
        method: &Method,
        request: Request,
        home: Option<Home>,
    ) -> Result<Body, H1Error> {
        let kind = if head.status == StatusCode::SWITCHING_PROTOCOLS {
            Kind::Upgrade
        } else {
            match head.body_length(method) {
                Ok(BodyLength::Empty) => Kind::Done,
                Ok(BodyLength::Fixed(n)) => Kind::Fixed(n),
                Ok(BodyLength::Chunked) => Kind::Chunked(ChunkedDecoder::default()),
                Ok(BodyLength::UntilClose) => Kind::UntilClose,
                Err(e) => return Err(e.into()),
            }
        };
        let upstream_keeps_alive = head.keeps_alive() && !head.claims_a_forbidden_body();
        let keep_alive = upstream_keeps_alive && !matches!(kind, Kind::UntilClose | Kind::Upgrade);
        // An error the upstream closes the connection after does not want the rest of the request (RFC 9112
        // §9.5): it is not sent.
        let refused = !upstream_keeps_alive && (head.status.is_client_error() || head.status.is_server_error());
        let (upload, keep_alive) = match request {
            Request::Sent => (None, keep_alive),
            Request::Sending(upload) if !refused => (Some(upload), keep_alive),
            Request::Sending(_) | Request::Stopped => (None, false),
        };
        let mut body = Body { conn: Some(conn), kind, keep_alive, upload, home, raw: None };
        match body.kind {
            Kind::Done => body.finish(),
            Kind::Fixed(n) if body.upload.is_none() => {
                if let Some(conn) = body.conn.as_mut().filter(|c| c.read.len() as u64 >= n) {
                    let data = conn.read.split_to(n as usize).freeze();
                    body.finish();
                    body.kind = Kind::Ready(data);
                }
            }
            _ => {}
        }
        Ok(body)
    }

    /// The answer's raw fields, while they are raw.
    pub fn raw_fields(&mut self) -> &mut Option<Box<RawFields>> {
        &mut self.raw
    }

    /// Whether the body still reads from (and holds) its upstream connection: not once the message ended, nor
    /// for a body that came whole with its head.
    pub fn holds_connection(&self) -> bool {
        self.conn.is_some()
    }

    /// The handle that closes this body's connection from outside, while it is still being read.
    pub fn closer(&self) -> Option<Arc<Closer>> {
        self.conn.as_ref().map(|c| c.closer.clone())
    }

    /// For a 101 answer: the upstream connection, and the bytes of the new protocol it already sent.
    pub fn into_upgraded(mut self) -> Option<(TcpStream, Bytes)> {
        if !matches!(self.kind, Kind::Upgrade) {
            return None;
        }
        self.kind = Kind::Done;
        let conn = self.conn.take()?;
        Some((conn.stream, conn.read.freeze()))
    }

    /// The message ended: the connection goes back to its lane if it may carry another and all of the request
    /// went out. A request still being sent stops there: the exchange is over.
    fn finish(&mut self) {
        self.kind = Kind::Done;
        let Some(conn) = self.conn.take() else { return };
        if self.upload.take().is_some() {
            // Closed now, even if the send timeout still holds the connection's closer.
            conn.closer.close();
            return;
        }
        if let (true, Some(home)) = (self.keep_alive && conn.read.is_empty(), self.home.take()) {
            home.lane.put(conn, home.max_idle);
        }
    }

    fn fail(&mut self, error: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.kind = Kind::Done;
        self.conn = None;
        self.upload = None;
        Poll::Ready(Some(Err(error)))
    }

    /// Sends what it can of the rest of the request. The upstream no longer reading it ends the sending, not the
    /// response (the connection is then not reused); a client body that fails, or does not match its length,
    /// fails the response too.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Result<(), H1Error> {
        let (Some(upload), Some(conn)) = (self.upload.as_mut(), self.conn.as_mut()) else { return Ok(()) };
        let Connection { stream, write, .. } = &mut **conn;
        match upload.poll_send(stream, write, cx) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                self.upload = None;
                Ok(())
            }
            Poll::Ready(Err(UploadError::Upstream(_))) => {
                self.upload = None;
                self.keep_alive = false;
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(e.into()),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        if let Kind::Ready(data) = &mut this.kind {
            let data = std::mem::take(data);
            this.kind = Kind::Done;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Err(e) = this.poll_upload(cx) {
            return this.fail(e);
        }
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match &mut this.kind {
                Kind::Done | Kind::Upgrade | Kind::Ready(_) => return Poll::Ready(None),
                Kind::Fixed(left) => {
                    if !conn.read.is_empty() {
                        let n = usize::try_from(*left).unwrap_or(usize::MAX).min(conn.read.len());
                        let data = conn.read.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Kind::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                    Ok(Some(Chunk::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Chunk::Trailers(trailers))) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Some(Chunk::End)) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => return this.fail(e.into()),
                },
                Kind::UntilClose => {
                    if !conn.read.is_empty() {
                        let data = conn.read.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.kind, Kind::UntilClose) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(H1Error::Truncated),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.kind {
            Kind::Ready(_) => false,
            _ => self.conn.is_none() || matches!(self.kind, Kind::Done | Kind::Upgrade),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Ready(data) => SizeHint::with_exact(data.len() as u64),
            Kind::Fixed(n) => SizeHint::with_exact(*n),
            Kind::Done | Kind::Upgrade => SizeHint::with_exact(0),
            Kind::Chunked(_) | Kind::UntilClose => SizeHint::default(),
        }
    }
}
