//! Portico's HTTP/1 server codec (`proxy/src/h1/server_head.rs`), as its own server drives it
//! (`proxy/src/listen/http1.rs`): request heads parsed in place from a client's byte stream, pipelined, each
//! with the body its one `Content-Length` gives; anything else handed to hyper with the buffer as it was.
//! First input byte: the read size; the rest: what a client sends. The codec must never panic; it must take
//! the same requests and hand off or stop at the same byte whether the bytes arrive at once or in reads of
//! that size; what it hands off must be exactly the bytes it was given; and what it takes must carry nothing
//! that could frame differently elsewhere (RFC 9112 §6.3: no `Transfer-Encoding`, at most one
//! `Content-Length`, the body that one says).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portico::h1::server_head::{parse_request, RequestParse, MAX_BUFFERED_BODY};

/// Small, so that inputs reach the limit.
const MAX_HEAD: usize = 2048;

#[derive(Debug, PartialEq)]
struct Taken {
    method: String,
    target: String,
    version: http::Version,
    fields: Vec<(String, Vec<u8>)>,
    close: bool,
    body: Vec<u8>,
}

#[derive(Debug, PartialEq)]
enum End {
    /// Handed to hyper: these bytes, which hyper reads from the start.
    Handoff(Vec<u8>),
    /// A request asked to close the connection; this many bytes after it were never read as requests.
    Closed(usize),
    /// The input ended inside a head or a body: these bytes were waiting.
    Incomplete(Vec<u8>),
}

fn serve(pieces: &[&[u8]]) -> (Vec<Taken>, End) {
    let mut buf = BytesMut::new();
    let mut next = pieces.iter();
    let mut taken = Vec::new();
    loop {
        let before = buf.clone();
        match parse_request(&mut buf, MAX_HEAD) {
            RequestParse::Simple { head, close, body } => {
                assert!(body <= MAX_BUFFERED_BODY, "a body larger than the server buffers");
                assert!(buf.len() >= body, "a body the buffer does not hold yet");
                check_framing(&head, body);
                let body = buf.split_to(body).to_vec();
                taken.push(Taken {
                    method: head.method.to_string(),
                    target: head.uri.to_string(),
                    version: head.version,
                    fields: head.headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
                    close,
                    body,
                });
                if close {
                    let rest = buf.len() + next.map(|p| p.len()).sum::<usize>();
                    return (taken, End::Closed(rest));
                }
            }
            RequestParse::Other => {
                assert_eq!(buf, before, "a handed-off request left the buffer changed");
                let mut rest = buf.to_vec();
                for piece in next {
                    rest.extend_from_slice(piece);
                }
                return (taken, End::Handoff(rest));
            }
            RequestParse::Partial | RequestParse::BodyPending => {
                assert_eq!(buf, before, "an incomplete request left the buffer changed");
                match next.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return (taken, End::Incomplete(buf.to_vec())),
                }
            }
        }
    }
}

/// What a request the server takes itself must (not) carry.
fn check_framing(head: &http::request::Parts, body: usize) {
    let h = &head.headers;
    assert!(!h.contains_key(http::header::TRANSFER_ENCODING), "took a request with Transfer-Encoding");
    assert!(!h.contains_key(http::header::EXPECT), "took a request with Expect");
    assert!(!h.contains_key(http::header::UPGRADE), "took a request with Upgrade");
    let lengths: Vec<_> = h.get_all(http::header::CONTENT_LENGTH).iter().collect();
    assert!(lengths.len() <= 1, "took a request with {} Content-Length fields", lengths.len());
    let said = lengths.first().map_or(Some(0), |v| v.to_str().ok().and_then(|s| s.parse::<usize>().ok()));
    assert_eq!(said, Some(body), "the body taken is not the one Content-Length says");
    assert!(matches!(head.version, http::Version::HTTP_10 | http::Version::HTTP_11));
    assert!(head.method != http::Method::CONNECT && head.method != http::Method::HEAD);
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let whole = serve(&[bytes]);
    let pieces: Vec<&[u8]> = bytes.chunks(usize::from(split).max(1)).collect();
    let split = serve(&pieces);
    assert_eq!(whole, split, "the server reads differently depending on how reads split the stream");
    // What was taken and what was handed off or left account for every byte.
    if let End::Handoff(rest) | End::Incomplete(rest) = &whole.1 {
        assert!(bytes.ends_with(rest), "the bytes handed off are not the end of the stream");
    }
});
