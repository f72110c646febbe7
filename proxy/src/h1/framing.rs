//! Message framing (RFC 9112 §6.3): how long a body is, decided once from the head. Heads that two readers
//! could frame differently are errors here, not guesses: both `Content-Length` and `Transfer-Encoding`,
//! `Content-Length` values that disagree or are not plain digits, transfer codings other than one `chunked`,
//! or `Transfer-Encoding` in an HTTP/1.0 message. Portico removes the chunked coding between hops and applies
//! no other: a body it passed on decoded from `gzip, chunked` (or as it came under `gzip`) would reach the
//! next hop under a label that no longer says how it is coded, so such a message is refused (a response: 502,
//! as nginx does).

use http::header::{HeaderMap, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, StatusCode, Version};

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body (HEAD, 1xx, 204, 304, or a length of 0).
    Empty,
    /// Exactly this many bytes.
    Fixed(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Everything until the peer closes the connection (responses only).
    UntilClose,
}

/// Why a head cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Both `Content-Length` and `Transfer-Encoding`: a smuggling attempt or a broken peer (RFC 9112 §6.3 ¶3).
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndEncoding,
    /// A `Content-Length` that is not a number, or several that disagree.
    #[error("invalid Content-Length")]
    InvalidLength,
    /// `Transfer-Encoding` with codings other than one `chunked`.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedEncoding,
    /// `Transfer-Encoding` in an HTTP/1.0 message (RFC 9112 §6.1: the framing is faulty).
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    EncodingOnHttp10,
}

/// Where a head's framing fields are read from: a map, or the fields as they arrived
/// ([`super::raw::RawFields`]).
pub trait FramingFields {
    /// The `Content-Length` values, in order.
    fn content_lengths(&self) -> impl Iterator<Item = &[u8]>;
    /// The `Transfer-Encoding` values, in order.
    fn transfer_encodings(&self) -> impl Iterator<Item = &[u8]>;
}

impl FramingFields for HeaderMap {
    fn content_lengths(&self) -> impl Iterator<Item = &[u8]> {
        self.get_all(CONTENT_LENGTH).into_iter().map(|v| v.as_bytes())
    }

    fn transfer_encodings(&self) -> impl Iterator<Item = &[u8]> {
        self.get_all(TRANSFER_ENCODING).into_iter().map(|v| v.as_bytes())
    }
}

/// The body of a response to `method`, from its head.
pub fn response_body(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &(impl FramingFields + ?Sized),
) -> Result<BodyLength, FramingError> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(BodyLength::Empty);
    }
    match framing_fields(version, headers)? {
        Fields::Chunked => Ok(BodyLength::Chunked),
        Fields::Length(0) => Ok(BodyLength::Empty),
        Fields::Length(n) => Ok(BodyLength::Fixed(n)),
        Fields::None => Ok(BodyLength::UntilClose),
    }
}

/// The body of a request, from its head. A request without framing fields has no body.
pub fn request_body(version: Version, headers: &HeaderMap) -> Result<BodyLength, FramingError> {
    match framing_fields(version, headers)? {
        Fields::Chunked => Ok(BodyLength::Chunked),
        Fields::Length(0) | Fields::None => Ok(BodyLength::Empty),
        Fields::Length(n) => Ok(BodyLength::Fixed(n)),
    }
}

enum Fields {
    None,
    Length(u64),
    Chunked,
}

/// Whether a 204 answer carries `Content-Length` (other than 0) or `Transfer-Encoding`, which its server must
/// not send (RFC 9110 §8.6, RFC 9112 §6.1): a server that does may send a body after it all the same, bytes
/// the next request on the connection would read as its answer. Such a connection is not reused. (A 304 or an
/// answer to HEAD may carry both, describing the body it does not have.)
pub fn claims_a_forbidden_body(status: StatusCode, headers: &(impl FramingFields + ?Sized)) -> bool {
    status == StatusCode::NO_CONTENT
        && (headers.transfer_encodings().next().is_some() || headers.content_lengths().any(|v| v.trim_ascii() != b"0"))
}

fn framing_fields(version: Version, headers: &(impl FramingFields + ?Sized)) -> Result<Fields, FramingError> {
    let length = lengths(headers.content_lengths())?;
    let mut encodings = headers.transfer_encodings().peekable();
    if encodings.peek().is_none() {
        return Ok(length.map_or(Fields::None, Fields::Length));
    }
    if length.is_some() {
        return Err(FramingError::LengthAndEncoding);
    }
    if version == Version::HTTP_10 {
        return Err(FramingError::EncodingOnHttp10);
    }
    let mut chunked_seen = false;
    for value in encodings {
        // Empty list elements are allowed and mean nothing (RFC 9110 §5.6.1).
        for coding in super::elements(value).filter(|c| !c.is_empty()) {
            if chunked_seen || !coding.eq_ignore_ascii_case(b"chunked") {
                return Err(FramingError::UnsupportedEncoding);
            }
            chunked_seen = true;
        }
    }
    if chunked_seen {
        Ok(Fields::Chunked)
    } else {
        Err(FramingError::UnsupportedEncoding)
    }
}

/// The one `Content-Length`: every field and every comma-separated element must be the same plain number.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, FramingError> {
    lengths(headers.content_lengths())
}

fn lengths<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, FramingError> {
    let mut length = None;
    for value in values {
        // The usual value: one number.
        if let Some(n) = parse_decimal(value) {
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::InvalidLength);
            }
            length = Some(n);
            continue;
        }
        for element in super::elements(value) {
            let n = parse_decimal(element).ok_or(FramingError::InvalidLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::InvalidLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// 1 to 19 ASCII digits, nothing else (no sign, no spaces inside).
pub fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn response(status: u16, fields: &[(&'static str, &'static str)]) -> Result<BodyLength, FramingError> {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        response_body(&Method::GET, status, Version::HTTP_11, &headers(fields))
    }

    #[test]
    fn responses_are_framed_as_rfc_9112_says() {
        assert_eq!(response(200, &[("content-length", "5")]), Ok(BodyLength::Fixed(5)));
        assert_eq!(response(200, &[("content-length", "5, 5"), ("content-length", "5")]), Ok(BodyLength::Fixed(5)));
        assert_eq!(response(200, &[("content-length", "0")]), Ok(BodyLength::Empty));
        assert_eq!(response(200, &[("transfer-encoding", ", Chunked")]), Ok(BodyLength::Chunked));
        for coded in ["gzip, chunked", "gzip", "identity, chunked", ""] {
            let fields = [("transfer-encoding", coded)];
            assert_eq!(response(200, &fields), Err(FramingError::UnsupportedEncoding), "{coded:?}");
        }
        assert_eq!(response(200, &[]), Ok(BodyLength::UntilClose));
        for bodiless in [100, 103, 204, 304] {
            assert_eq!(response(bodiless, &[("content-length", "5")]), Ok(BodyLength::Empty), "{bodiless}");
        }
        let head = response_body(&Method::HEAD, StatusCode::OK, Version::HTTP_11, &headers(&[("content-length", "5")]));
        assert_eq!(head, Ok(BodyLength::Empty));
    }

    #[test]
    fn a_204_that_claims_a_body_is_told_apart() {
        let claims = |status: u16, fields: &[(&'static str, &'static str)]| {
            claims_a_forbidden_body(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), &headers(fields))
        };
        assert!(claims(204, &[("content-length", "62")]));
        assert!(claims(204, &[("transfer-encoding", "chunked")]));
        assert!(!claims(204, &[("content-length", "0")]) && !claims(204, &[]));
        assert!(!claims(304, &[("content-length", "62")]), "a 304 may describe the body it does not have");
        assert!(!claims(200, &[("content-length", "62")]));
    }

    #[test]
    fn ambiguous_framing_is_an_error() {
        let both = [("content-length", "5"), ("transfer-encoding", "chunked")];
        assert_eq!(response(200, &both), Err(FramingError::LengthAndEncoding));
        assert_eq!(request_body(Version::HTTP_11, &headers(&both)), Err(FramingError::LengthAndEncoding));
        for bad in ["5, 6", "+5", "-1", "5 5", "0x5", "", "99999999999999999999"] {
            let fields = [("content-length", bad)];
            assert_eq!(response(200, &fields), Err(FramingError::InvalidLength), "{bad:?}");
        }
        let twice = [("content-length", "5"), ("content-length", "6")];
        assert_eq!(request_body(Version::HTTP_11, &headers(&twice)), Err(FramingError::InvalidLength));
        let not_last = [("transfer-encoding", "chunked, gzip")];
        assert_eq!(response(200, &not_last), Err(FramingError::UnsupportedEncoding));
        let doubled = [("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")];
        assert_eq!(request_body(Version::HTTP_11, &headers(&doubled)), Err(FramingError::UnsupportedEncoding));
        let gzip = [("transfer-encoding", "gzip")];
        assert_eq!(request_body(Version::HTTP_11, &headers(&gzip)), Err(FramingError::UnsupportedEncoding));
        let te = [("transfer-encoding", "chunked")];
        assert_eq!(request_body(Version::HTTP_10, &headers(&te)), Err(FramingError::EncodingOnHttp10));
        assert_eq!(request_body(Version::HTTP_11, &headers(&[])), Ok(BodyLength::Empty));
    }
}
