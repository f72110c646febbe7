//! Bounds on what guests can make the host hold. Plugins run untrusted code, and the state below lives outside
//! their linear memory (so `memory_limit` does not cover it): without caps, a plugin could grow the proxy's
//! memory without end through shared data, queues, metric names or a callout answer.
//!
//! A call that would pass a cap fails with an ABI status and a warning in the log naming the plugin:
//! `BAD_ARGUMENT` when the one item is too large by itself (a key, value, name or queue entry), and
//! `INTERNAL_FAILURE` when the store it goes into is full (there is no "resource exhausted" status in the
//! ABI). A callout answer over the cap is delivered as a failed callout (no headers, no body), as a connect
//! failure would be. Refusals are logged through [`refused`], which rate-limits the warnings.
//!
//! The caps are enforced where the state is kept: shared data and queues in `shared.rs`, guest metrics in
//! `metrics.rs` (`GuestMetrics::define`), callout answers in `callout.rs` (`CalloutResponder::complete`) and by the
//! proxy, which stops reading a callout body at [`MAX_HTTP_CALL_RESPONSE_BODY`]. This module depends on nothing
//! else in the crate.

/// Logs a refusal: a warning at most once a second for the whole process (a guest looping on a full queue
/// must not flood the log), debug lines otherwise.
pub(crate) fn refused(plugin: &str, message: std::fmt::Arguments<'_>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_WARNING: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now > last && LAST_WARNING.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        tracing::warn!(plugin, "{message} (further refusals within the second are logged at debug level)");
    } else {
        tracing::debug!(plugin, "{message}");
    }
}

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
/// Bytes all queues hold together (with 1,024 queues of 16 MiB each, a plugin filled 4.5 GB before).
pub const MAX_ALL_QUEUES_BYTES: usize = 64 * 1024 * 1024;
/// The share of each cap over all plugins (shared data keys and bytes, queues, queued bytes) one vm_id may
/// hold: one plugin filling the store cannot lock every other out of it.
pub const VM_SHARE_DIVISOR: usize = 2;

/// Metrics one plugin may define (`proxy_define_metric`): each is a Prometheus series that lives as long as the
/// process.
pub const MAX_METRICS_PER_PLUGIN: usize = 1000;
/// A guest metric name, in bytes.
pub const MAX_METRIC_NAME: usize = 256;
