//! Portico's own HTTP/1.1 codec, on `httparse`, in Pingora's shape: heads are parsed in place in the
//! connection's read buffer (header values are slices of it, not copies), bodies are framed strictly
//! (RFC 9112 §6), and the code that drives a connection owns its socket, so a message needs no task, channel
//! or second parse of its own. The upstream client ([`crate::upstream::h1`]) and the HTTP/1.1 server for the
//! plainest requests ([`crate::listen::http1`]) are built on it; hyper serves the other client requests,
//! HTTP/2, the admin API and the cluster transport.
//!
//! - [`framing`]: how long a message body is (Content-Length, chunked, none, until close), and which heads are
//!   too ambiguous to read at all.
//! - [`chunked`]: the chunked transfer coding.
//! - [`head`]: writing request heads and parsing response heads (the client).
//! - [`server_head`]: parsing request heads and writing response heads (the server, [`crate::listen::http1`]).
//! - [`upload`]: sending a body in the framing its head declared: a request body upstream, alongside the
//!   response; an answer's body to a client.
//! - [`date`]: the `date` of answers.
//! - [`names`]: field names read from a head, the common ones without a lookup.
//! - [`maps`]: header maps kept for reuse on their worker thread.
//! - [`raw`]: an upstream's answer fields passed on as it wrote them, without a map.
//!
//! `CONFORMANCE.md` beside this file lists the cases the codec decides and the test that pins each.

pub mod chunked;
pub mod date;
pub mod framing;
pub mod head;
pub mod maps;
pub mod names;
pub mod raw;
pub mod server_head;
pub mod upload;

use http::header::{self, HeaderName};

/// Fields that must not be taken from a trailer section (RFC 9110 §6.5.1): those a recipient needs before the
/// content, or that act on the connection. They are dropped, as if absent, from the trailers Portico reads
/// and from those it forwards.
pub static FORBIDDEN_TRAILERS: [HeaderName; 37] = [
    // Message framing.
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TRAILER,
    // The connection.
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::UPGRADE,
    // Routing.
    header::HOST,
    // Request modifiers: controls (RFC 9110 §7.6, §10.1) and preconditions (§13.1).
    header::CACHE_CONTROL,
    header::EXPECT,
    header::MAX_FORWARDS,
    header::PRAGMA,
    header::RANGE,
    header::TE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    // Authentication and cookies.
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::WWW_AUTHENTICATE,
    header::PROXY_AUTHENTICATE,
    header::COOKIE,
    header::SET_COOKIE,
    // Response control data (RFC 9110 §10.2).
    header::AGE,
    header::DATE,
    header::EXPIRES,
    header::LOCATION,
    header::RETRY_AFTER,
    header::VARY,
    header::WARNING,
    // Content (payload) processing.
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::CONTENT_LOCATION,
    header::CONTENT_LANGUAGE,
];

/// The elements of a comma-separated field value (`Connection`, `Transfer-Encoding`, `Content-Length`), trimmed.
pub fn elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// Whether `text` (a field name or token) is `lower` in any letter case. `lower` holds only lowercase letters,
/// digits and `-`: OR-ing a byte with 0x20 maps each uppercase letter onto its lowercase one and leaves those
/// unchanged, and no other byte a name or token may hold lands on one of them. Eight bytes are compared at a
/// time; a byte loop cost about four instructions a byte, for every field of every head.
pub fn eq_lowercase(text: &[u8], lower: &[u8]) -> bool {
    if text.len() != lower.len() {
        return false;
    }
    let (mut text_words, mut lower_words) = (text.chunks_exact(8), lower.chunks_exact(8));
    for (a, b) in (&mut text_words).zip(&mut lower_words) {
        let a = u64::from_ne_bytes(a.try_into().unwrap_or_default());
        let b = u64::from_ne_bytes(b.try_into().unwrap_or_default());
        if a | 0x2020_2020_2020_2020 != b {
            return false;
        }
    }
    text_words.remainder().iter().zip(lower_words.remainder()).all(|(a, b)| a | 0x20 == *b)
}

/// Whether a line of `bytes` ends in a LF without the CR before it.
pub fn has_bare_lf(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, b)| *b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

#[cfg(test)]
mod tests {
    use super::chunked::{Chunk, ChunkedDecoder};
    use super::framing::BodyLength;
    use super::head;
    use bytes::BytesMut;

    /// Reads one response (head, framing, body) from `pieces` as the upstream client does: status, body,
    /// whether it completed, and the bytes left after it (or the error).
    fn read(pieces: &[&[u8]]) -> Result<(u16, Vec<u8>, bool, usize), String> {
        let mut buf = BytesMut::new();
        let mut next = pieces.iter();
        let head = loop {
            match head::parse_response(&mut buf).map_err(|e| e.to_string())? {
                Some(head) if head.status.is_informational() && head.status != 101 => continue,
                Some(head) => break head,
                None => buf.extend_from_slice(next.next().ok_or("no head")?),
            }
        };
        let length = head.body_length(&http::Method::GET).map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        let complete = match length {
            BodyLength::Empty => true,
            BodyLength::Fixed(mut left) => loop {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                body.extend_from_slice(&buf.split_to(n));
                left -= n as u64;
                if left == 0 {
                    break true;
                }
                match next.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => break false,
                }
            },
            BodyLength::UntilClose => {
                body.extend_from_slice(&buf.split());
                next.by_ref().for_each(|piece| body.extend_from_slice(piece));
                true
            }
            BodyLength::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                loop {
                    match decoder.decode(&mut buf).map_err(|e| e.to_string())? {
                        Some(Chunk::Data(data)) => body.extend_from_slice(&data),
                        Some(Chunk::Trailers(_) | Chunk::End) => break true,
                        None => match next.next() {
                            Some(piece) => buf.extend_from_slice(piece),
                            None => break false,
                        },
                    }
                }
            }
        };
        Ok((head.status.as_u16(), body, complete, buf.len() + next.map(|p| p.len()).sum::<usize>()))
    }

    /// The property the `h1_codec` fuzz target checks on random input, here on the seeds: the same message,
    /// body, leftover and error however the reads split the bytes.
    #[test]
    fn lowercase_comparison_agrees_with_ascii_case_folding_on_every_name_byte() {
        let targets = ["connection", "keep-alive", "content-length", "te", "proxy-authorization", "x-1"];
        for target in targets {
            for at in 0..target.len() {
                for byte in 0x21..=0x7eu8 {
                    let mut text = target.as_bytes().to_vec();
                    text[at] = byte;
                    let folded = text.eq_ignore_ascii_case(target.as_bytes());
                    assert_eq!(super::eq_lowercase(&text, target.as_bytes()), folded, "{:?}", text);
                }
            }
            assert!(super::eq_lowercase(target.to_uppercase().as_bytes(), target.as_bytes()));
            assert!(!super::eq_lowercase(&target.as_bytes()[1..], target.as_bytes()));
        }
    }

    #[test]
    fn reads_the_same_however_the_bytes_are_split() {
        let streams: [&[u8]; 6] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"b c\"\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\nNEXT",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nuntil close",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
        ];
        for stream in streams {
            let whole = read(&[stream]);
            for size in 1..stream.len() {
                let pieces: Vec<&[u8]> = stream.chunks(size).collect();
                assert_eq!(read(&pieces), whole, "{:?} in reads of {size}", String::from_utf8_lossy(stream));
            }
        }
        assert_eq!(read(&[streams[0]]), Ok((200, b"hello".to_vec(), true, 8)));
        assert_eq!(read(&[streams[1]]), Ok((200, b"hello".to_vec(), true, 4)));
        assert!(read(&[streams[2]]).is_err() && read(&[streams[4]]).is_err());
    }
}
