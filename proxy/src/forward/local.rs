//! Answers Portico makes itself. Every failure a client sees comes from here, as a status and a small JSON
//! body naming the request id, so errors are answered, never dropped.

use crate::body::ResponseBody;
use http::{header, HeaderValue, Response, StatusCode};

/// Why Portico answered instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalError {
    /// 400: malformed or ambiguous request (e.g. Content-Length with Transfer-Encoding).
    BadRequest,
    /// 405: a method the listener does not serve (CONNECT on a reverse listener).
    MethodNotAllowed,
    /// 403: a forward-proxy CONNECT to a port not in `connect_ports`.
    ForbiddenPort,
    /// 403: a forward-proxy destination that is Portico itself, or loopback/link-local/unspecified and not in
    /// the listener's `allow`.
    ForbiddenDestination,
    /// 502: the upstream failed (connect error, reset, bad response).
    UpstreamFailed,
    /// 503: no endpoint is available, or the pool is exhausted.
    NoHealthyUpstream,
    /// 503: a plugin failed closed.
    PluginFailed,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
    /// 404: no route (no upstream for this request).
    NoRoute,
    /// 413: the request body is larger than plugins may buffer.
    PayloadTooLarge,
    /// 408: the request body did not arrive in time while plugins needed all of it.
    RequestTimeout,
    /// 414: the request line is longer than the listener takes (RFC 9112 §3).
    UriTooLong,
    /// 431: more header fields than the listener takes.
    HeaderFieldsTooLarge,
    /// 429: the connection cancelled too many requests and is closing (see `listen::cancels`).
    TooManyCancels,
}

impl LocalError {
    /// The status sent.
    pub fn status(self) -> StatusCode {
        match self {
            LocalError::BadRequest => StatusCode::BAD_REQUEST,
            LocalError::ForbiddenPort | LocalError::ForbiddenDestination => StatusCode::FORBIDDEN,
            LocalError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            LocalError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            LocalError::NoHealthyUpstream | LocalError::PluginFailed => StatusCode::SERVICE_UNAVAILABLE,
            LocalError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            LocalError::NoRoute => StatusCode::NOT_FOUND,
            LocalError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            LocalError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            LocalError::UriTooLong => StatusCode::URI_TOO_LONG,
            LocalError::HeaderFieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            LocalError::TooManyCancels => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The machine-readable code in the body.
    pub fn code(self) -> &'static str {
        match self {
            LocalError::BadRequest => "bad_request",
            LocalError::MethodNotAllowed => "method_not_allowed",
            LocalError::ForbiddenPort => "connect_port_forbidden",
            LocalError::ForbiddenDestination => "destination_forbidden",
            LocalError::UpstreamFailed => "upstream_failed",
            LocalError::NoHealthyUpstream => "no_healthy_upstream",
            LocalError::PluginFailed => "plugin_failed",
            LocalError::UpstreamTimeout => "upstream_timeout",
            LocalError::NoRoute => "no_route",
            LocalError::PayloadTooLarge => "payload_too_large",
            LocalError::RequestTimeout => "request_timeout",
            LocalError::UriTooLong => "uri_too_long",
            LocalError::HeaderFieldsTooLarge => "header_fields_too_large",
            LocalError::TooManyCancels => "too_many_cancels",
        }
    }
}

/// The 400 for a request whose client broke off its body (an HTTP/2 stream reset, a connection closed inside
/// it, a malformed chunk), marked [`crate::body::BodyBroken`] so the connection counts it as a cancel, not a
/// refusal.
pub fn body_broken(detail: &str, request_id: &str) -> Response<ResponseBody> {
    let mut answer = error_response(LocalError::BadRequest, detail, request_id);
    answer.extensions_mut().insert(crate::body::BodyBroken);
    answer
}

/// Builds the JSON error answer.
pub fn error_response(error: LocalError, detail: &str, request_id: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": error.code(),
        "status": error.status().as_u16(),
        "detail": detail,
        "request_id": request_id,
    });
    let mut response = Response::new(ResponseBody::full(body.to_string()));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(super::headers::X_REQUEST_ID.clone(), v);
    }
    if error == LocalError::MethodNotAllowed {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
    }
    // The rest of an unread request body (or a refused tunnel's bytes) would be taken for the next request:
    // close instead.
    if matches!(
        error,
        LocalError::BadRequest
            | LocalError::PayloadTooLarge
            | LocalError::RequestTimeout
            | LocalError::MethodNotAllowed
    ) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
