//! What the data path records about one sampled request: a server span and a span per upstream attempt.
//!
//! Recording is cheap on purpose: the request's own values are kept as they are (the method, the URI and the
//! Host value share the request's bytes; the listener and upstream are reference-counted snapshots), times
//! are offsets from one clock read, and nothing is formatted. Turning a span into OTLP attributes happens on
//! the exporter's task, off the data path ([`super::otlp`]).

use crate::listen::ListenerRuntime;
use crate::trace_context::{SpanId, TraceContext};
use crate::upstream::Upstream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// One sampled request, from its head to its response head.
#[derive(Debug)]
pub struct RequestSpan {
    /// Trace, Portico's span id, the caller's span, flags.
    pub trace: TraceContext,
    /// Wall-clock start (unix ns); every other time is an offset from `start`.
    pub start_unix_ns: u64,
    /// Monotonic start.
    pub start: Instant,
    /// Until the response head; set by [`RequestSpan::finish`].
    pub duration: Duration,
    /// Request method.
    pub method: http::Method,
    /// Request URI as received (origin- or absolute-form).
    pub uri: http::Uri,
    /// The path sent upstream (no query: traces keep no query strings), once an attempt is made: resolved
    /// (see [`crate::forward::request_path`]) and as plugins rewrote it.
    pub upstream_target: Option<String>,
    /// HTTP version of the client's request.
    pub version: http::Version,
    /// The `Host` header, if any.
    pub host: Option<http::HeaderValue>,
    /// The client's address.
    pub client: SocketAddr,
    /// The address the client reached.
    pub local: SocketAddr,
    /// Whether the client came over TLS.
    pub tls: bool,
    /// The listener (its name and filters are read at export time).
    pub listener: Arc<ListenerRuntime>,
    /// The upstream group the request went to.
    pub upstream: Option<Arc<Upstream>>,
    /// What the plugins decided.
    pub plugins: PluginDecisions,
    /// Upstream attempts in order.
    pub attempts: Vec<AttemptSpan>,
    /// Status of the response head.
    pub status: u16,
}

/// What the listener's plugins did with the request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PluginDecisions {
    /// A plugin answered the request itself (a local response, a refusal, or a failure closed).
    pub answered: bool,
    /// A plugin chose the upstream group.
    pub routed: bool,
    /// A plugin chose the endpoint of the last attempt.
    pub picked_endpoint: bool,
}

/// One upstream attempt: a client span under the request's server span.
#[derive(Debug, Clone)]
pub struct AttemptSpan {
    /// Its span id; the upstream receives it as the parent in `traceparent`.
    pub span_id: SpanId,
    /// Index of the endpoint in the upstream group.
    pub endpoint: usize,
    /// When it started, after the request's start.
    pub start: Duration,
    /// When it ended (a response head or a failure), after the request's start.
    pub end: Duration,
    /// The upstream's status, when it answered.
    pub status: Option<u16>,
    /// Why it failed without an answer: `timeout`, `connect_error`, `send_error`.
    pub error: Option<&'static str>,
}

impl RequestSpan {
    /// Starts recording a request.
    pub fn start<B>(
        trace: TraceContext,
        start: Instant,
        request: &http::Request<B>,
        client: SocketAddr,
        local: SocketAddr,
        tls: bool,
        listener: Arc<ListenerRuntime>,
    ) -> RequestSpan {
        let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let already = start.elapsed();
        RequestSpan {
            trace,
            start_unix_ns: u64::try_from(unix.saturating_sub(already).as_nanos()).unwrap_or(u64::MAX),
            start,
            duration: Duration::ZERO,
            method: request.method().clone(),
            uri: request.uri().clone(),
            upstream_target: None,
            version: request.version(),
            host: request.headers().get(http::header::HOST).cloned(),
            client,
            local,
            tls,
            listener,
            upstream: None,
            plugins: PluginDecisions::default(),
            attempts: Vec::new(),
            status: 0,
        }
    }

    /// Opens an attempt to endpoint `endpoint` with `target` (the path sent); returns its span id
    /// for the upstream's `traceparent`.
    pub fn begin_attempt(&mut self, endpoint: usize, target: &str) -> SpanId {
        if self.upstream_target.as_deref() != Some(target) {
            self.upstream_target = Some(target.to_string());
        }
        let span_id = SpanId::random();
        let now = self.start.elapsed();
        self.attempts.push(AttemptSpan { span_id, endpoint, start: now, end: now, status: None, error: None });
        span_id
    }

    /// Closes the open attempt with the upstream's status or a failure.
    pub fn end_attempt(&mut self, status: Option<u16>, error: Option<&'static str>) {
        let now = self.start.elapsed();
        if let Some(attempt) = self.attempts.last_mut() {
            attempt.end = now;
            attempt.status = status;
            attempt.error = error;
        }
    }

    /// Records the response head.
    pub fn finish(&mut self, status: u16) {
        self.status = status;
        self.duration = self.start.elapsed();
    }

    /// Spans this record becomes: the server span and one per attempt.
    pub fn span_count(&self) -> u64 {
        1 + self.attempts.len() as u64
    }

    /// The endpoint the request finally went to (the last attempt's).
    pub fn endpoint_name(&self) -> Option<&str> {
        let upstream = self.upstream.as_ref()?;
        let last = self.attempts.last()?;
        upstream.endpoints.get(last.endpoint).map(|e| e.name.as_str())
    }
}
