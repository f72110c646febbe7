//! OTLP/HTTP protobuf: the few messages of `opentelemetry/proto/collector/trace/v1` that an exporter sends,
//! declared by hand with `prost` (field numbers from the OTLP specification), and the translation of recorded
//! spans into them with OpenTelemetry's HTTP semantic conventions.
//!
//! Declaring the messages here rather than pulling in the generated `opentelemetry-proto` crate keeps the
//! build free of tonic and of code generation; the test receiver decodes them with the official Python
//! package, so a wrong field number fails the tests.

use super::span::{AttemptSpan, RequestSpan};

/// `ExportTraceServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceRequest {
    /// One per resource; Portico sends one.
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `ResourceSpans`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    /// The process that made the spans.
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// Spans by instrumentation scope.
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

/// `Resource`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    /// `service.name` and friends.
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

/// `ScopeSpans`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    /// Who recorded them.
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    /// The spans.
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

/// `InstrumentationScope`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstrumentationScope {
    /// `portico`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Portico's version.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `Span`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Span {
    /// 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    /// 8 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    /// 8 bytes, or empty for a root span.
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    /// `SpanFlags`: the W3C trace flags, and whether the parent is remote.
    #[prost(fixed32, tag = "16")]
    pub flags: u32,
    /// `GET`, `POST`, … (the HTTP conventions' name for a span without a route template).
    #[prost(string, tag = "5")]
    pub name: String,
    /// [`SpanKind`].
    #[prost(enumeration = "SpanKind", tag = "6")]
    pub kind: i32,
    /// Unix ns.
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    /// Unix ns.
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    /// Semantic-convention and Portico attributes.
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    /// Error or unset.
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

/// `Span.SpanKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SpanKind {
    /// Not said.
    Unspecified = 0,
    /// Inside a process.
    Internal = 1,
    /// Handling a request that came in.
    Server = 2,
    /// A request going out.
    Client = 3,
}

/// `Status`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// Why, for errors.
    #[prost(string, tag = "2")]
    pub message: String,
    /// [`StatusCode`].
    #[prost(enumeration = "StatusCode", tag = "3")]
    pub code: i32,
}

/// `Status.StatusCode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StatusCode {
    /// The default: nothing to say.
    Unset = 0,
    /// Explicitly fine.
    Ok = 1,
    /// Failed.
    Error = 2,
}

/// `KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// Attribute name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Its value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `AnyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    /// One of the kinds.
    #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5")]
    pub value: Option<Value>,
}

/// `AnyValue.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    /// Text.
    #[prost(string, tag = "1")]
    StringValue(String),
    /// A flag.
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    /// A whole number.
    #[prost(int64, tag = "3")]
    IntValue(i64),
    /// A float.
    #[prost(double, tag = "4")]
    DoubleValue(f64),
    /// A list.
    #[prost(message, tag = "5")]
    ArrayValue(ArrayValue),
}

/// `ArrayValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArrayValue {
    /// The items.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

/// `SpanFlags`: the context has an is-remote bit, and it is set (the parent came from the caller).
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }) }
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

fn int(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

/// The resource every batch describes: this Portico.
pub fn resource(service_name: &str) -> Resource {
    Resource {
        attributes: vec![
            text("service.name", service_name),
            text("service.version", env!("CARGO_PKG_VERSION")),
            text("telemetry.sdk.name", "portico"),
            text("telemetry.sdk.language", "rust"),
            text("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ],
    }
}

/// One export request for a batch of recorded requests.
pub fn request(resource: &Resource, recorded: &[Box<RequestSpan>]) -> ExportTraceServiceRequest {
    let mut spans = Vec::with_capacity(recorded.len() * 2);
    for request in recorded {
        spans.push(server_span(request));
        spans.extend(request.attempts.iter().enumerate().map(|(i, a)| attempt_span(request, i, a)));
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "portico".into(), version: env!("CARGO_PKG_VERSION").into() }),
                spans,
            }],
        }],
    }
}

/// The method as the conventions want it: known methods as is, others as `_OTHER`.
fn method(m: &http::Method) -> &str {
    match *m {
        http::Method::GET
        | http::Method::HEAD
        | http::Method::POST
        | http::Method::PUT
        | http::Method::DELETE
        | http::Method::CONNECT
        | http::Method::OPTIONS
        | http::Method::TRACE
        | http::Method::PATCH => m.as_str(),
        _ => "_OTHER",
    }
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `server.address` and `server.port`: the Host the client asked for, else the address it reached.
fn server_address(request: &RequestSpan) -> (String, i64) {
    let authority = request
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| request.host.as_ref().and_then(|h| h.to_str().ok()).map(str::to_string));
    let Some(authority) = authority.and_then(|a| a.parse::<http::uri::Authority>().ok()) else {
        return (request.local.ip().to_string(), i64::from(request.local.port()));
    };
    let default_port = if request.tls { 443 } else { 80 };
    (authority.host().to_string(), i64::from(authority.port_u16().unwrap_or(default_port)))
}

fn server_span(request: &RequestSpan) -> Span {
    let trace = &request.trace;
    let (address, port) = server_address(request);
    let name = request.method.as_str().to_string();
    let mut attributes = vec![
        text("http.request.method", method(&request.method)),
        text("url.path", request.uri.path()),
        text("url.scheme", if request.tls { "https" } else { "http" }),
        int("http.response.status_code", i64::from(request.status)),
        text("server.address", address),
        int("server.port", port),
        text("client.address", request.client.ip().to_string()),
        int("client.port", i64::from(request.client.port())),
        text("network.protocol.name", "http"),
        text("network.protocol.version", protocol_version(request.version)),
        text("portico.listener", request.listener.config.name.as_str()),
    ];
    if method(&request.method) == "_OTHER" {
        attributes.push(text("http.request.method_original", request.method.as_str()));
    }
    if let Some(upstream) = &request.upstream {
        attributes.push(text("portico.upstream", upstream.name()));
    }
    if let Some(endpoint) = request.endpoint_name() {
        attributes.push(text("portico.endpoint", endpoint));
    }
    attributes.push(int("portico.retries", request.attempts.len().saturating_sub(1) as i64));
    let filters = &request.listener.config.filters;
    if !filters.is_empty() {
        let names = filters.iter().map(|f| AnyValue { value: Some(Value::StringValue(f.clone())) }).collect();
        attributes.push(kv("portico.plugins", Value::ArrayValue(ArrayValue { values: names })));
        let decisions = request.plugins;
        attributes.push(kv("portico.plugins.answered", Value::BoolValue(decisions.answered)));
        attributes.push(kv("portico.plugins.routed", Value::BoolValue(decisions.routed)));
        attributes.push(kv("portico.plugins.picked_endpoint", Value::BoolValue(decisions.picked_endpoint)));
    }
    // Server spans: only 5xx are errors (a 4xx is the client's).
    let status = if request.status >= 500 {
        attributes.push(text("error.type", request.status.to_string()));
        Status { message: String::new(), code: StatusCode::Error as i32 }
    } else {
        Status { message: String::new(), code: StatusCode::Unset as i32 }
    };
    let mut flags = u32::from(trace.flags) | CONTEXT_HAS_IS_REMOTE;
    if trace.parent_id.is_some() {
        flags |= CONTEXT_IS_REMOTE;
    }
    Span {
        trace_id: trace.trace_id.0.to_vec(),
        span_id: trace.span_id.0.to_vec(),
        parent_span_id: trace.parent_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags,
        name,
        kind: SpanKind::Server as i32,
        start_time_unix_nano: request.start_unix_ns,
        end_time_unix_nano: request.start_unix_ns + request.duration.as_nanos() as u64,
        attributes,
        status: Some(status),
    }
}

fn attempt_span(request: &RequestSpan, index: usize, attempt: &AttemptSpan) -> Span {
    let endpoint = request.upstream.as_ref().and_then(|u| u.endpoints.get(attempt.endpoint));
    let mut attributes = vec![text("http.request.method", method(&request.method))];
    if let Some(endpoint) = endpoint {
        attributes.push(text("server.address", endpoint.address.ip().to_string()));
        attributes.push(int("server.port", i64::from(endpoint.address.port())));
        let target = request.upstream_target.as_deref().unwrap_or_else(|| request.uri.path());
        attributes.push(text("url.full", format!("http://{}{}", endpoint.name, target)));
        attributes.push(text("portico.endpoint", endpoint.name.as_str()));
    }
    if index > 0 {
        attributes.push(int("http.request.resend_count", index as i64));
    }
    if let Some(status) = attempt.status {
        attributes.push(int("http.response.status_code", i64::from(status)));
    }
    // Client spans: a 4xx is an error too (the request did not succeed); no answer is one for sure.
    let error =
        attempt.error.map(str::to_string).or_else(|| attempt.status.filter(|s| *s >= 400).map(|s| s.to_string()));
    let status = match &error {
        Some(kind) => {
            attributes.push(text("error.type", kind.as_str()));
            Status { message: String::new(), code: StatusCode::Error as i32 }
        }
        None => Status { message: String::new(), code: StatusCode::Unset as i32 },
    };
    Span {
        trace_id: request.trace.trace_id.0.to_vec(),
        span_id: attempt.span_id.0.to_vec(),
        parent_span_id: request.trace.span_id.0.to_vec(),
        flags: u32::from(request.trace.flags) | CONTEXT_HAS_IS_REMOTE,
        name: request.method.as_str().to_string(),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: request.start_unix_ns + attempt.start.as_nanos() as u64,
        end_time_unix_nano: request.start_unix_ns + attempt.end.as_nanos() as u64,
        attributes,
        status: Some(status),
    }
}
