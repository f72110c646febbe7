//! The chunked transfer coding (RFC 9112 §7.1), decoded strictly: a chunk size is 1 to 16 hex digits and
//! must fit in 64 bits, whitespace is allowed only before a chunk extension, every line ends in CRLF (a bare LF
//! is an error, never a line end), chunk data is followed by CRLF, and the trailer section is a well-formed
//! field block of bounded size. Anything else is an error: a peer that frames a body differently from the way
//! Portico reads it must not get the rest of the connection read as something else.
//!
//! The decoder works on the connection's read buffer in place: chunk data is split off it as [`Bytes`], not
//! copied.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue};

/// The longest chunk-size line (size, extensions and CRLF) accepted.
const MAX_LINE: usize = 4096;
/// The largest trailer section accepted.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// The most trailer fields accepted.
const MAX_TRAILER_FIELDS: usize = 32;

/// Why a chunked body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The chunk size is missing or not hexadecimal.
    #[error("invalid chunk size")]
    BadSize,
    /// The chunk size does not fit in 64 bits.
    #[error("chunk size overflows")]
    SizeOverflow,
    /// The chunk-size line (with its extensions) is too long, or holds a control character.
    #[error("invalid chunk extension")]
    BadExtension,
    /// A line ended in a bare LF.
    #[error("bare LF in chunked framing")]
    BareLf,
    /// Chunk data was not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    /// The trailer section is malformed.
    #[error("malformed trailer section")]
    BadTrailers,
    /// The trailer section is larger than [`MAX_TRAILERS`].
    #[error("trailer section too large")]
    TrailersTooLarge,
}

/// What the decoder found next.
#[derive(Debug)]
pub enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// The body ended with a trailer section.
    Trailers(HeaderMap),
    /// The body ended (no trailers).
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size { value: u64, digits: u8 },
    /// After the size: whitespace, which may only lead to an extension.
    SizeSpace { value: u64 },
    /// In a chunk extension, up to CR.
    Extension { value: u64 },
    /// After the CR of the size line.
    SizeLf { value: u64 },
    /// Chunk data left.
    Data(u64),
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// After the last chunk: the trailer section.
    Trailers,
    /// The body ended.
    Done,
}

/// Decodes one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    line: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size { value: 0, digits: 0 }, line: 0 }
    }
}

impl ChunkedDecoder {
    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the front of `buf`, consuming what it used. `Ok(None)`: more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(Some(Chunk::End)),
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data(left) };
                    return Ok(Some(Chunk::Data(data)));
                }
                State::Trailers => return self.trailers(buf),
                _ => {
                    let Some(&b) = buf.first() else { return Ok(None) };
                    buf.advance(1);
                    self.step(b)?;
                }
            }
        }
    }

    /// One byte of a size line or of the CRLF after data.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(ChunkError::BadExtension);
        }
        self.state = match (self.state, b) {
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataCr, _) => return Err(ChunkError::MissingCrlf),
            (State::DataLf, b'\n') => {
                self.line = 0;
                State::Size { value: 0, digits: 0 }
            }
            (State::DataLf, _) => return Err(ChunkError::MissingCrlf),
            (State::Size { value, digits }, _) if b.is_ascii_hexdigit() => {
                let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                let value = value.checked_mul(16).and_then(|v| v.checked_add(digit)).ok_or(ChunkError::SizeOverflow)?;
                State::Size { value, digits: digits.saturating_add(1) }
            }
            (State::Size { digits: 0, .. }, _) => return Err(ChunkError::BadSize),
            (State::Size { value, .. } | State::SizeSpace { value }, b' ' | b'\t') => State::SizeSpace { value },
            (State::Size { value, .. } | State::SizeSpace { value }, b';') => State::Extension { value },
            (State::Size { value, .. } | State::Extension { value }, b'\r') => State::SizeLf { value },
            (State::Size { .. } | State::SizeSpace { .. } | State::Extension { .. }, b'\n') => {
                return Err(ChunkError::BareLf)
            }
            (State::Size { .. } | State::SizeSpace { .. }, _) => return Err(ChunkError::BadSize),
            // Extension names and values are tokens or quoted strings: visible characters, spaces and tabs.
            (State::Extension { value }, _) if b == b'\t' || (b >= b' ' && b != 0x7f) => State::Extension { value },
            (State::Extension { .. }, _) => return Err(ChunkError::BadExtension),
            (State::SizeLf { value }, b'\n') => {
                self.line = 0;
                if value == 0 {
                    State::Trailers
                } else {
                    State::Data(value)
                }
            }
            (State::SizeLf { .. }, _) => return Err(ChunkError::BareLf),
            (State::Data(_) | State::Trailers | State::Done, _) => self.state,
        };
        Ok(())
    }

    /// The trailer section: an empty line, or field lines ending in an empty line.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, ChunkError> {
        if buf.len() >= 2 && buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = State::Done;
            return Ok(Some(Chunk::End));
        }
        if buf.first() == Some(&b'\n') {
            return Err(ChunkError::BareLf);
        }
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
            if buf.len() > MAX_TRAILERS {
                return Err(ChunkError::TrailersTooLarge);
            }
            return Ok(None);
        };
        if end > MAX_TRAILERS {
            return Err(ChunkError::TrailersTooLarge);
        }
        let section = buf.split_to(end);
        let trailers = parse_trailers(&section)?;
        self.state = State::Done;
        Ok(Some(Chunk::Trailers(trailers)))
    }
}

/// Trailer fields, minus the ones that must never come in a trailer (framing, routing and authentication
/// fields, RFC 9110 §6.5.1): forwarded as trailers they could change how the message is read.
fn parse_trailers(section: &[u8]) -> Result<HeaderMap, ChunkError> {
    if super::has_bare_lf(section) {
        return Err(ChunkError::BareLf);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let parsed = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err(ChunkError::BadTrailers),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for field in parsed.iter() {
        let name = super::names::field_name(field.name.as_bytes()).map_err(|_| ChunkError::BadTrailers)?;
        if super::FORBIDDEN_TRAILERS.contains(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(field.value).map_err(|_| ChunkError::BadTrailers)?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns the data and whether trailers came.
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, usize), ChunkError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Some(Chunk::Data(d)) => data.extend_from_slice(&d),
                Some(Chunk::Trailers(t)) => return Ok((data, Some(t), buf.len() + input.len() - fed)),
                Some(Chunk::End) => return Ok((data, None, buf.len() + input.len() - fed)),
                None if fed == input.len() => return Err(ChunkError::BadSize),
                None => {
                    let n = step.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers_however_split() {
        let input = b"5;name=\"v a\"\r\nhello\r\n6 ;x\r\n world\r\n0\r\nX-Sum: 1\r\nContent-Length: 9\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, input.len()] {
            let (data, trailers, rest) = decode(input, step).unwrap_or_else(|e| panic!("step {step}: {e}"));
            assert_eq!(data, b"hello world");
            let trailers = trailers.unwrap_or_default();
            assert_eq!(trailers.get("x-sum").map(|v| v.as_bytes()), Some(&b"1"[..]));
            assert!(trailers.get("content-length").is_none(), "framing fields are dropped from trailers");
            assert_eq!(rest, 4, "the bytes after the body are left for the next message");
        }
        let (data, trailers, rest) = decode(b"0\r\n\r\n", 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(data.is_empty() && trailers.is_none() && rest == 0);
    }

    #[test]
    fn refuses_what_could_be_read_two_ways() {
        let cases: [(&[u8], ChunkError); 10] = [
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::BareLf),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::MissingCrlf),
            (b"5\r\nhelloXX0\r\n\r\n", ChunkError::MissingCrlf),
            (b"10000000000000000\r\n", ChunkError::SizeOverflow),
            (b"fffffffffffffffff\r\n", ChunkError::SizeOverflow),
            (b"\r\n", ChunkError::BadSize),
            (b"-5\r\n", ChunkError::BadSize),
            (b"5 5\r\n", ChunkError::BadSize),
            (b"5;a\x00b\r\n", ChunkError::BadExtension),
            (b"0\r\nX: 1\n\r\n\r\n", ChunkError::BareLf),
        ];
        for (input, expected) in cases {
            assert_eq!(decode(input, 1).err(), Some(expected), "{:?}", String::from_utf8_lossy(input));
        }
        let huge = format!("0\r\nX: {}\r\n\r\n", "a".repeat(MAX_TRAILERS));
        assert_eq!(decode(huge.as_bytes(), 1024).err(), Some(ChunkError::TrailersTooLarge));
    }

    #[test]
    fn a_size_of_sixteen_hex_digits_fits() {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        match decoder.decode(&mut buf) {
            Ok(Some(Chunk::Data(d))) => assert_eq!(&d[..], b"ab"),
            other => panic!("{other:?}"),
        }
        assert!(!decoder.is_done());
    }
}
