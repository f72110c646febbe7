//! Bounds on what guests can make the host hold. Plugins run untrusted code, and the state below lives outside
//! their linear memory (so `memory_limit` does not cover it): without caps, a plugin could grow the proxy's
//! memory without end through shared data, queues, metric names or a callout answer.
//!
//! A call that would pass a cap fails with an ABI status and a warning in the log naming the plugin:
//! `BAD_ARGUMENT` when the one item is too large by itself (a key, value, name or queue entry), and
//! `INTERNAL_FAILURE` when the store it goes into is full (there is no "resource exhausted" status in the
//! ABI). A callout answer over the cap is delivered as a failed callout (no headers, no body), as a connect
//! failure would be. Refusals are logged through [`refused`], which rate-limits the warnings.

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

/// Metrics one plugin may define (`proxy_define_metric`): each is a Prometheus series that lives as long as the
/// process.
pub const MAX_METRICS_PER_PLUGIN: usize = 1000;
/// A guest metric name, in bytes.
pub const MAX_METRIC_NAME: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Enqueue, QueueOwner, SetShared};
    use crate::PluginEngine;
    use std::sync::Weak;

    fn engine() -> PluginEngine {
        PluginEngine::new().unwrap_or_else(|e| panic!("engine: {e}"))
    }

    #[test]
    fn shared_data_stops_at_its_caps_and_frees_what_is_replaced() {
        let engine = engine();
        let shared = &engine.shared;
        assert!(matches!(shared.set_shared("vm", "k", vec![0; MAX_SHARED_DATA_VALUE + 1], 0), SetShared::TooLarge));
        assert!(matches!(
            shared.set_shared("vm", &"k".repeat(MAX_SHARED_DATA_KEY + 1), vec![], 0),
            SetShared::TooLarge
        ));
        // Bytes: 64 values of 1 MiB do not fit in 64 MiB with their keys.
        let fitted = (0..64)
            .take_while(|i| {
                matches!(shared.set_shared("vm", &format!("big{i}"), vec![0; MAX_SHARED_DATA_VALUE], 0), SetShared::Ok)
            })
            .count();
        assert_eq!(fitted, 63);
        // Replacing a value frees its bytes first.
        assert!(matches!(shared.set_shared("vm", "big0", vec![0; MAX_SHARED_DATA_VALUE], 0), SetShared::Ok));
        assert!(matches!(shared.set_shared("vm", "big0", vec![], 0), SetShared::Ok));
        assert!(matches!(shared.set_shared("vm", "big63", vec![0; 1000], 0), SetShared::Ok));
        // Keys.
        let engine = self::engine();
        let shared = &engine.shared;
        for i in 0..MAX_SHARED_DATA_KEYS {
            assert!(matches!(shared.set_shared("vm", &i.to_string(), vec![], 0), SetShared::Ok), "key {i}");
        }
        assert!(matches!(shared.set_shared("vm", "one more", vec![], 0), SetShared::Full));
        assert!(matches!(shared.set_shared("vm", "0", vec![1], 0), SetShared::Ok), "an existing key can change");
    }

    #[test]
    fn queues_stop_at_their_caps_and_dequeues_make_room() {
        let engine = engine();
        let shared = &engine.shared;
        let owner = || QueueOwner { plugin: Weak::new(), slot: 0, generation: 0, root_context: 1 };
        assert!(shared.register_queue("vm", &"q".repeat(MAX_QUEUE_NAME + 1), owner()).is_none());
        let id = shared.register_queue("vm", "q", owner()).unwrap_or_else(|| panic!("registered"));
        for i in 0..MAX_QUEUE_ENTRIES {
            assert!(matches!(shared.enqueue(id, vec![1]), Enqueue::Ok(_)), "entry {i}");
        }
        assert!(matches!(shared.enqueue(id, vec![1]), Enqueue::Full));
        assert_eq!(shared.dequeue(id), Ok(Some(vec![1])));
        assert!(matches!(shared.enqueue(id, vec![1]), Enqueue::Ok(_)));
        assert!(matches!(shared.enqueue(id, vec![0; MAX_QUEUE_BYTES + 1]), Enqueue::TooLarge));
        // Bytes.
        let big = shared.register_queue("vm", "big", owner()).unwrap_or_else(|| panic!("registered"));
        let fitted = (0..32).take_while(|_| matches!(shared.enqueue(big, vec![0; 1 << 20]), Enqueue::Ok(_))).count();
        assert_eq!(fitted, MAX_QUEUE_BYTES >> 20);
        assert!(shared.dequeue(big).is_ok_and(|item| item.is_some()));
        assert!(matches!(shared.enqueue(big, vec![0; 1 << 20]), Enqueue::Ok(_)));
        // Queue count.
        for i in 2..MAX_QUEUES {
            assert!(shared.register_queue("vm", &format!("q{i}"), owner()).is_some(), "queue {i}");
        }
        assert!(shared.register_queue("vm", "one too many", owner()).is_none());
        assert!(shared.register_queue("vm", "q", owner()).is_some(), "registering an existing queue again works");
    }
}
