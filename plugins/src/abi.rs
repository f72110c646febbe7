//! Constants of the proxy-wasm ABI (v0.2.1) the host speaks: statuses, actions, buffer, map and stream types.

pub(crate) const OK: i32 = 0;
pub(crate) const NOT_FOUND: i32 = 1;
pub(crate) const BAD_ARGUMENT: i32 = 2;
pub(crate) const INVALID_MEMORY_ACCESS: i32 = 6;
pub(crate) const EMPTY: i32 = 7;
pub(crate) const CAS_MISMATCH: i32 = 8;
pub(crate) const INTERNAL_FAILURE: i32 = 10;

pub(crate) const ACTION_CONTINUE: i32 = 0;
/// Envoy's `FilterHeadersStatus::ContinueAndEndStream`, which C++ SDK plugins may return from header
/// callbacks.
pub(crate) const HEADERS_CONTINUE_AND_END_STREAM: i32 = 2;

/// Whether a header callback's return value lets the stream go on. The ABI defines Continue = 0 and
/// Pause = 1; C++ SDK plugins return Envoy's `FilterHeadersStatus`, whose ContinueAndEndStream = 2 goes on
/// too (Portico still forwards a body that follows), while StopIteration = 1, StopAllIterationAndBuffer = 3,
/// StopAllIterationAndWatermark = 4 and anything larger (proxy-wasm's C++ host clamps it to 4) stop until
/// `proxy_continue_stream`. A local reply sent during the callback wins over any of them.
pub(crate) fn headers_continue(action: i32) -> bool {
    matches!(action, ACTION_CONTINUE | HEADERS_CONTINUE_AND_END_STREAM)
}

/// Whether a body or trailer callback's return value lets the stream go on: only Continue = 0. Envoy's
/// `FilterDataStatus` values 1-3 (StopIterationAndBuffer, ...AndWatermark, ...NoBuffer) and larger ones
/// (clamped by the C++ host) all keep buffering.
pub(crate) fn data_continue(action: i32) -> bool {
    action == ACTION_CONTINUE
}

pub(crate) const BUF_REQUEST_BODY: i32 = 0;
pub(crate) const BUF_RESPONSE_BODY: i32 = 1;
pub(crate) const BUF_HTTP_CALL_RESPONSE_BODY: i32 = 4;
pub(crate) const BUF_VM_CONFIGURATION: i32 = 6;
pub(crate) const BUF_PLUGIN_CONFIGURATION: i32 = 7;
pub(crate) const BUF_FOREIGN_FUNCTION_ARGUMENTS: i32 = 8;

pub(crate) const MAP_REQUEST_HEADERS: i32 = 0;
pub(crate) const MAP_REQUEST_TRAILERS: i32 = 1;
pub(crate) const MAP_RESPONSE_HEADERS: i32 = 2;
pub(crate) const MAP_RESPONSE_TRAILERS: i32 = 3;
pub(crate) const MAP_GRPC_INITIAL_METADATA: i32 = 4;
pub(crate) const MAP_GRPC_TRAILING_METADATA: i32 = 5;
pub(crate) const MAP_HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
pub(crate) const MAP_HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;

pub(crate) const STREAM_HTTP_REQUEST: i32 = 0;
pub(crate) const STREAM_HTTP_RESPONSE: i32 = 1;

pub(crate) const METRIC_COUNTER: i32 = 0;
pub(crate) const METRIC_GAUGE: i32 = 1;
pub(crate) const METRIC_HISTOGRAM: i32 = 2;

/// Map limits from cpp-host limits.h.
pub(crate) const PAIRS_MAX_BYTES: usize = 1 << 20;
pub(crate) const PAIRS_MAX_COUNT: usize = 1024;
