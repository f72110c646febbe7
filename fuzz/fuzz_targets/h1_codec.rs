//! Portico's HTTP/1 codec (`proxy/src/h1`), as its upstream client drives it: a response head parsed in place,
//! its body framed (RFC 9112 §6.3) and decoded (Content-Length or chunked). First input byte: the read size;
//! the rest: what an upstream sends. The codec must never panic, and must read the same message, body,
//! trailers, leftover bytes and error whether the bytes arrive at once or in reads of that size.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portico::h1::chunked::{Chunk, ChunkedDecoder};
use portico::h1::framing::BodyLength;
use portico::h1::head;

#[derive(Debug, PartialEq)]
enum Outcome {
    /// The head is incomplete when the input ends.
    NoHead,
    HeadError(String),
    FramingError(String),
    Message {
        status: u16,
        fields: usize,
        body: Vec<u8>,
        trailers: usize,
        rest: usize,
        error: Option<String>,
        complete: bool,
    },
}

fn read(pieces: &[&[u8]], method: &http::Method) -> Outcome {
    let mut buf = BytesMut::new();
    let mut next = pieces.iter();
    let head = loop {
        match head::parse_response(&mut buf) {
            Ok(Some(head)) if head.status.is_informational() && head.status != 101 => continue,
            Ok(Some(head)) => break head,
            Ok(None) => match next.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => return Outcome::NoHead,
            },
            Err(e) => return Outcome::HeadError(e.to_string()),
        }
    };
    let length = match head.body_length(method) {
        Ok(length) => length,
        Err(e) => return Outcome::FramingError(e.to_string()),
    };
    let mut body = Vec::new();
    let mut trailers = 0;
    let mut error = None;
    let mut complete = false;
    match length {
        BodyLength::Empty => complete = true,
        BodyLength::Fixed(mut left) => loop {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            body.extend_from_slice(&buf.split_to(n));
            left -= n as u64;
            if left == 0 {
                complete = true;
                break;
            }
            match next.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => break,
            }
        },
        BodyLength::UntilClose => {
            body.extend_from_slice(&buf.split());
            for piece in next.by_ref() {
                body.extend_from_slice(piece);
            }
            complete = true;
        }
        BodyLength::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(Chunk::Data(data))) => body.extend_from_slice(&data),
                    Ok(Some(Chunk::Trailers(t))) => {
                        trailers = t.len();
                        complete = true;
                        break;
                    }
                    Ok(Some(Chunk::End)) => {
                        complete = true;
                        break;
                    }
                    Ok(None) => match next.next() {
                        Some(piece) => buf.extend_from_slice(piece),
                        None => break,
                    },
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
        }
    }
    let rest = buf.len() + next.map(|p| p.len()).sum::<usize>();
    Outcome::Message { status: head.status.as_u16(), fields: head.headers.len(), body, trailers, rest, error, complete }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let method = if split & 0x80 != 0 { http::Method::HEAD } else { http::Method::GET };
    let whole = read(&[bytes], &method);
    let pieces: Vec<&[u8]> = bytes.chunks(usize::from(split & 0x7f).max(1)).collect();
    assert_eq!(whole, read(&pieces, &method), "the codec reads differently depending on how reads split the stream");
});
