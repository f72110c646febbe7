//! A request body on its way upstream, as a state machine polled by whoever drives the connection: the
//! exchange while it waits for the response head, then the response body while it streams, so an upstream
//! that answers before it has read the whole request (a streaming echo, a `413` mid-upload) still gets the rest
//! of it. The head leaves with the body's first bytes when they are already there (one `writev`), the body
//! frame by frame, in the framing the head declared; a body that does not match its declared length fails
//! (the connection is then unusable, and must be closed, never pooled).

use super::framing::BodyLength;
use super::head;
use super::FORBIDDEN_TRAILERS;
use bytes::{Buf, Bytes};
use http_body::Body;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;

/// Why a request body could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum UploadError<E: std::error::Error + 'static> {
    /// The client's body failed.
    #[error("client request body failed")]
    Client(#[source] E),
    /// The upstream socket failed (the upstream may have answered and stopped reading).
    #[error("writing to the upstream failed")]
    Upstream(#[source] io::Error),
    /// The body held more or fewer bytes than the `Content-Length` sent for it.
    #[error("request body of {had} bytes (at least) where Content-Length said {declared}")]
    Length {
        /// The length the head declared.
        declared: u64,
        /// How many bytes the body had when the mismatch was seen.
        had: u64,
    },
}

/// The request body being sent, and the bytes of it taken from the client but not yet written.
#[derive(Debug)]
pub struct Upload<B> {
    body: B,
    chunked: bool,
    /// The `Content-Length` the head declared (`None` when chunked).
    declared: Option<u64>,
    /// Body bytes taken from the client so far.
    taken: u64,
    /// Whether the head is still to go out (it waits for nothing but what the body already has).
    head_pending: bool,
    /// How much of the connection's write buffer (head, chunk framing, trailers) is written.
    written: usize,
    /// Body bytes taken from the client and not yet written.
    data: Bytes,
    /// Framing after `data` (a chunk's CRLF, the last chunk).
    tail: &'static [u8],
    /// The body has ended: once the pending bytes are written, the request is complete.
    ended: bool,
    /// Whether a byte was written or a frame taken from the body (else the request could go elsewhere as is).
    touched: bool,
}

impl<B> Upload<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    /// The body of a request whose head, framed as `length`, is in the write buffer given to [`Upload::poll_send`].
    pub fn new(body: B, length: BodyLength) -> Self {
        Upload {
            body,
            // `UntilClose`: the body as it comes, ended by closing the connection (an answer to an
            // HTTP/1.0 client whose length is not known; requests are never framed so).
            chunked: length == BodyLength::Chunked,
            declared: match length {
                BodyLength::Fixed(n) => Some(n),
                BodyLength::Empty => Some(0),
                BodyLength::Chunked | BodyLength::UntilClose => None,
            },
            taken: 0,
            head_pending: true,
            written: 0,
            data: Bytes::new(),
            tail: b"",
            ended: length == BodyLength::Empty,
            touched: false,
        }
    }

    /// Whether nothing of the request has been written nor taken from its body.
    pub fn is_untouched(&self) -> bool {
        !self.touched
    }

    /// The body, to be sent on another connection (only whole while [`Upload::is_untouched`]).
    pub fn into_body(self) -> B {
        self.body
    }

    /// Writes the head in `out` and then the body to `writer` until the body ends (`Ready(Ok)`), fails, or
    /// waits on the client or the socket. `out` is the connection's write buffer: it holds the head at first,
    /// then each frame's framing.
    pub fn poll_send<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        out: &mut Vec<u8>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UploadError<B::Error>>> {
        loop {
            let mut waiting = false;
            if self.data.is_empty() && self.tail.is_empty() && !self.ended {
                if !self.head_pending && self.written == out.len() {
                    out.clear();
                    self.written = 0;
                }
                let frame = Pin::new(&mut self.body).poll_frame(cx);
                self.touched |= frame.is_ready();
                match frame {
                    // The head does not wait for the client's body; nothing else is sent before the body has more.
                    Poll::Pending => waiting = true,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(UploadError::Client(e))),
                    Poll::Ready(None) => self.end(out)?,
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => self.take(data, out)?,
                        Err(frame) => {
                            if let (true, Ok(trailers)) = (self.chunked, frame.into_trailers()) {
                                self.end_with_trailers(&trailers, out);
                            }
                        }
                    },
                }
            }
            if self.written == out.len() && self.data.is_empty() && self.tail.is_empty() {
                self.head_pending = false;
                if self.ended {
                    return Poll::Ready(Ok(()));
                }
                if waiting {
                    return Poll::Pending;
                }
                continue;
            }
            let parts = [IoSlice::new(&out[self.written..]), IoSlice::new(&self.data), IoSlice::new(self.tail)];
            let mut n =
                ready!(Pin::new(&mut *writer).poll_write_vectored(cx, &parts)).map_err(UploadError::Upstream)?;
            if n == 0 {
                return Poll::Ready(Err(UploadError::Upstream(io::ErrorKind::WriteZero.into())));
            }
            self.touched = true;
            let from_out = n.min(out.len() - self.written);
            self.written += from_out;
            n -= from_out;
            let from_data = n.min(self.data.len());
            self.data.advance(from_data);
            n -= from_data;
            self.tail = &self.tail[n.min(self.tail.len())..];
        }
    }

    /// Takes a data frame: checked against the declared length, framed as a chunk when chunked.
    fn take(&mut self, data: Bytes, out: &mut Vec<u8>) -> Result<(), UploadError<B::Error>> {
        self.taken += data.len() as u64;
        if let Some(declared) = self.declared.filter(|d| self.taken > *d) {
            // Refused before any of it is written: the upstream would read the excess as another request.
            return Err(UploadError::Length { declared, had: self.taken });
        }
        let end = self.body.is_end_stream();
        if self.chunked && !data.is_empty() {
            head::push_hex(out, data.len() as u64);
            out.extend_from_slice(b"\r\n");
            self.tail = if end { b"\r\n0\r\n\r\n" } else { b"\r\n" };
            self.ended = end;
        } else if end {
            self.end(out)?;
        }
        self.data = data;
        Ok(())
    }

    /// The body ended: the last chunk, or a check that the declared length was all sent.
    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), UploadError<B::Error>> {
        match self.declared {
            Some(declared) if declared != self.taken => {
                return Err(UploadError::Length { declared, had: self.taken });
            }
            Some(_) => {}
            None if self.chunked => out.extend_from_slice(b"0\r\n\r\n"),
            None => {}
        }
        self.ended = true;
        Ok(())
    }

    /// The last chunk with the client's trailers, minus the fields a trailer must not carry (RFC 9110 §6.5.1):
    /// hyper's server hands them on as sent, and an upstream that merges trailers into the head would take
    /// them as the request's own.
    fn end_with_trailers(&mut self, trailers: &http::HeaderMap, out: &mut Vec<u8>) {
        out.extend_from_slice(b"0\r\n");
        for (name, value) in trailers.iter().filter(|(n, _)| !FORBIDDEN_TRAILERS.contains(n)) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.ended = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;
    use std::future::poll_fn;

    /// Sends `body` framed as `length` after a head `H`; what was written, and how it ended.
    async fn send<B>(body: B, length: BodyLength) -> (Vec<u8>, Result<(), UploadError<B::Error>>)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::error::Error + 'static,
    {
        let mut upload = Upload::new(body, length);
        let mut head = b"H".to_vec();
        let mut written = Vec::new();
        let mut sent = Vec::new();
        let result = poll_fn(|cx| {
            // What each call wrote is in `written` when it returns; `head` is reused for framing.
            let polled = upload.poll_send(&mut written, &mut head, cx);
            sent.append(&mut written);
            polled
        })
        .await;
        (sent, result)
    }

    fn frames(parts: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> =
            parts.iter().map(|p| Ok(http_body::Frame::data(Bytes::from_static(p)))).collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_fixed_length_body_must_match_its_content_length() {
        let (sent, result) = send(Full::new(Bytes::from_static(b"hello")), BodyLength::Fixed(5)).await;
        assert_eq!((sent, result.ok()), (b"Hhello".to_vec(), Some(())));
        let (sent, result) = send(frames(&[b"hel", b"lo"]), BodyLength::Fixed(5)).await;
        assert_eq!((sent, result.ok()), (b"Hhello".to_vec(), Some(())));
        // Fewer bytes than declared: the upstream would wait for the rest, or read the next request as it.
        let (_, result) = send(frames(&[b"hel", b"lo"]), BodyLength::Fixed(9)).await;
        assert!(matches!(result, Err(UploadError::Length { declared: 9, had: 5 })), "{result:?}");
        // More: the excess is refused before it is written, so it never reaches the upstream as a message.
        let (sent, result) = send(frames(&[b"hel", b"lo", b" world"]), BodyLength::Fixed(5)).await;
        assert!(matches!(result, Err(UploadError::Length { declared: 5, had: 11 })), "{result:?}");
        assert_eq!(sent, b"Hhello");
        let (sent, result) = send(Full::new(Bytes::from_static(b"hello")), BodyLength::Fixed(3)).await;
        assert!(matches!(result, Err(UploadError::Length { declared: 3, had: 5 })), "{result:?}");
        assert!(sent.is_empty(), "the head waited for the body already there, and neither went: {sent:?}");
    }

    #[tokio::test]
    async fn a_chunked_body_is_framed_and_ends_with_the_allowed_trailers() {
        let (sent, result) = send(frames(&[b"hello", b"", b" world"]), BodyLength::Chunked).await;
        assert_eq!((sent, result.ok()), (b"H5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(), Some(())));
        let mut trailers = http::HeaderMap::new();
        for (name, value) in [
            ("x-sum", "1"),
            ("authorization", "x"),
            ("te", "trailers"),
            ("cache-control", "no-store"),
            ("max-forwards", "2"),
            ("if-none-match", "\"v\""),
        ] {
            trailers.insert(http::HeaderName::from_static(name), http::HeaderValue::from_static(value));
        }
        let body = Full::new(Bytes::from_static(b"hi")).with_trailers(std::future::ready(Some(Ok(trailers))));
        let (sent, result) = send(body, BodyLength::Chunked).await;
        assert_eq!((sent, result.ok()), (b"H2\r\nhi\r\n0\r\nx-sum: 1\r\n\r\n".to_vec(), Some(())));
    }
}
