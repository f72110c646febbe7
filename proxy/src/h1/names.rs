//! Field names read from a head, as `HeaderName`s.
//!
//! `HeaderName::from_bytes` lowercases every name into a scratch buffer and then looks it up among all the
//! standard names: about 140 instructions a field, seven or more fields a request (two heads). The names
//! nearly every request and answer carry arrive in one of two spellings, lowercase (HTTP/2 habits, curl,
//! most clients) or Title-Case (nginx, Apache, browsers' HTTP/1.1); those are matched here as they are, one
//! compare against constants, and only other names and other spellings take the general path.

use http::header::{self, HeaderName, InvalidHeaderName};

/// The `HeaderName` of a field name as it appeared in a head; the same answer as `HeaderName::from_bytes`.
pub fn field_name(name: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    Ok(match name {
        b"host" | b"Host" => header::HOST,
        b"date" | b"Date" => header::DATE,
        b"server" | b"Server" => header::SERVER,
        b"accept" | b"Accept" => header::ACCEPT,
        b"cookie" | b"Cookie" => header::COOKIE,
        b"referer" | b"Referer" => header::REFERER,
        b"connection" | b"Connection" => header::CONNECTION,
        b"user-agent" | b"User-Agent" => header::USER_AGENT,
        b"content-type" | b"Content-Type" => header::CONTENT_TYPE,
        b"content-length" | b"Content-Length" => header::CONTENT_LENGTH,
        b"cache-control" | b"Cache-Control" => header::CACHE_CONTROL,
        b"last-modified" | b"Last-Modified" => header::LAST_MODIFIED,
        b"etag" | b"ETag" | b"Etag" => header::ETAG,
        b"accept-encoding" | b"Accept-Encoding" => header::ACCEPT_ENCODING,
        b"accept-language" | b"Accept-Language" => header::ACCEPT_LANGUAGE,
        b"accept-ranges" | b"Accept-Ranges" => header::ACCEPT_RANGES,
        b"transfer-encoding" | b"Transfer-Encoding" => header::TRANSFER_ENCODING,
        b"content-encoding" | b"Content-Encoding" => header::CONTENT_ENCODING,
        b"vary" | b"Vary" => header::VARY,
        b"expires" | b"Expires" => header::EXPIRES,
        b"location" | b"Location" => header::LOCATION,
        b"authorization" | b"Authorization" => header::AUTHORIZATION,
        b"origin" | b"Origin" => header::ORIGIN,
        b"set-cookie" | b"Set-Cookie" => header::SET_COOKIE,
        _ => return HeaderName::from_bytes(name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling the fast path takes, and a few it leaves to `from_bytes`, give what `from_bytes` gives;
    /// names `from_bytes` refuses are refused.
    #[test]
    fn field_names_are_those_from_bytes_gives() {
        let names = [
            "host",
            "Host",
            "HOST",
            "hOsT",
            "date",
            "Date",
            "server",
            "Server",
            "accept",
            "Accept",
            "cookie",
            "Cookie",
            "referer",
            "Referer",
            "connection",
            "Connection",
            "user-agent",
            "User-Agent",
            "USER-AGENT",
            "content-type",
            "Content-Type",
            "content-length",
            "Content-Length",
            "CONTENT-LENGTH",
            "cache-control",
            "Cache-Control",
            "last-modified",
            "Last-Modified",
            "etag",
            "ETag",
            "Etag",
            "accept-encoding",
            "Accept-Encoding",
            "accept-language",
            "Accept-Language",
            "accept-ranges",
            "Accept-Ranges",
            "transfer-encoding",
            "Transfer-Encoding",
            "content-encoding",
            "Content-Encoding",
            "vary",
            "Vary",
            "expires",
            "Expires",
            "location",
            "Location",
            "authorization",
            "Authorization",
            "origin",
            "Origin",
            "set-cookie",
            "Set-Cookie",
            "x-request-id",
            "X-Request-Id",
            "traceparent",
            "keep-alive",
            "Keep-Alive",
            "hostx",
            "hos",
            "x",
        ];
        for name in names {
            let fast = field_name(name.as_bytes()).expect(name);
            assert_eq!(fast, HeaderName::from_bytes(name.as_bytes()).expect(name), "{name}");
            assert_eq!(fast.as_str(), name.to_ascii_lowercase());
        }
        for bad in ["", "ho st", "host:", "content-length\0", "h\u{e9}", "(x)"] {
            assert!(field_name(bad.as_bytes()).is_err(), "{bad:?} is refused");
        }
    }
}
