//! Bounds on what guests can make the host hold. Plugins run untrusted code, and the state below lives outside
//! their linear memory (so `memory_limit` does not cover it): without caps, a plugin could grow the proxy's
//! memory without end through shared data, queues, metric names or a callout answer.
//!
//! A call that would pass a cap fails with an ABI status and a warning in the log naming the plugin:
//! `BAD_ARGUMENT` when the one item is too large by itself (a key, value, name or queue entry), and
//! `INTERNAL_FAILURE` when the store it goes into is full (there is no "resource exhausted" status in the
//! ABI). A callout answer over the cap is delivered as a failed callout (no headers, no body), as a connect
//! failure would be.

/// Largest callout (`proxy_http_call`) response body; the proxy stops reading there.
pub const MAX_HTTP_CALL_RESPONSE_BODY: usize = 1024 * 1024;

/// Shared data (`proxy_set_shared_data`), over all plugins: keys at most.
pub const MAX_SHARED_DATA_KEYS: usize = 65_536;
/// Shared data, over all plugins: key and value bytes at most.
pub const MAX_SHARED_DATA_BYTES: usize = 64 * 1024 * 1024;
/// One shared-data key, in bytes.
pub const MAX_SHARED_DATA_KEY: usize = 4096;
/// One shared-data value, in bytes.
pub const MAX_SHARED_DATA_VALUE: usize = 1024 * 1024;

/// Shared queues (`proxy_register_shared_queue`), over all plugins.
pub const MAX_QUEUES: usize = 1024;
/// Entries one queue holds until it is dequeued.
pub const MAX_QUEUE_ENTRIES: usize = 10_000;
/// Bytes one queue holds until it is dequeued.
pub const MAX_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// A queue name, in bytes.
pub const MAX_QUEUE_NAME: usize = 256;

/// Metrics one plugin may define (`proxy_define_metric`): each is a Prometheus series that lives as long as the
/// process.
pub const MAX_METRICS_PER_PLUGIN: usize = 1000;
/// A guest metric name, in bytes.
pub const MAX_METRIC_NAME: usize = 256;
