//! [`HostServices`]: what the proxy provides to plugins (callouts, logging, clock, foreign functions).

use std::time::SystemTime;

use crate::callout::{HttpCallRejected, HttpCallRequest};
use crate::types::LogLevel;

/// Services the embedding proxy provides to plugins. Implemented by the proxy; every method has a default
/// so a proxy without callouts can use [`DefaultHostServices`].
///
/// Methods are called synchronously from inside a plugin callback (while the instance lock is held), so they
/// must not block: start work and return.
pub trait HostServices: Send + Sync + 'static {
    /// Start an HTTP callout to a named upstream (`proxy_http_call`). Return immediately: do the request on a
    /// tokio task and deliver the result with `request.responder.complete(...)` from that task (never from
    /// inside this method). The default refuses (the guest sees INTERNAL_FAILURE).
    fn http_call(&self, request: HttpCallRequest) -> Result<(), HttpCallRejected> {
        Err(HttpCallRejected::Internal(format!("plugin {}: no HTTP callout support configured", request.plugin)))
    }

    /// Emit a plugin log line (`proxy_log`, WASI stdout/stderr). Defaults to `tracing` with a `plugin` field.
    fn log(&self, plugin: &str, level: LogLevel, message: &str) {
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error | LogLevel::Critical => tracing::error!(plugin, "{message}"),
        }
    }

    /// Level reported by `proxy_get_log_level` so plugins skip formatting dropped messages. Defaults to the
    /// most verbose level `tracing` currently enables.
    fn log_level(&self) -> LogLevel {
        use tracing::level_filters::LevelFilter;
        let current = LevelFilter::current();
        if current >= LevelFilter::TRACE {
            LogLevel::Trace
        } else if current >= LevelFilter::DEBUG {
            LogLevel::Debug
        } else if current >= LevelFilter::INFO {
            LogLevel::Info
        } else if current >= LevelFilter::WARN {
            LogLevel::Warn
        } else if current >= LevelFilter::ERROR {
            LogLevel::Error
        } else {
            LogLevel::Critical
        }
    }

    /// Wall clock for `proxy_get_current_time_nanoseconds` and WASI `clock_time_get(REALTIME)`; tests can freeze it.
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    /// Value of the `node.id` property.
    fn node_id(&self) -> String {
        "portico".to_string()
    }

    /// Host-specific function for `proxy_call_foreign_function`. `None` = not registered (guest sees NOT_FOUND),
    /// `Some(Err(_))` = failed (INTERNAL_FAILURE). `clear_route_cache` is built in and never reaches here.
    fn foreign_function(&self, plugin: &str, name: &str, args: &[u8]) -> Option<Result<Vec<u8>, String>> {
        let _ = (plugin, name, args);
        None
    }
}

/// [`HostServices`] with all defaults: tracing logs, system clock, no callouts, no foreign functions.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultHostServices;

impl HostServices for DefaultHostServices {}
