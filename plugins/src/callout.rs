//! HTTP callouts (`proxy_http_call`) as the embedding proxy sees them: the request a plugin makes, the answer fed
//! back, and the responder that delivers it. The responder reaches the plugin through a `Weak<dyn CalloutSink>`,
//! so this module knows nothing of the instance pool.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;

use crate::error::PluginFailure;
use crate::types::HeaderMap;

/// An outgoing HTTP callout requested by a plugin through `proxy_http_call`.
#[derive(Debug)]
pub struct HttpCallRequest {
    /// Plugin that made the call.
    pub plugin: String,
    /// Token the plugin got back; pass it to the responder.
    pub token: u32,
    /// Named upstream (group) to send to.
    pub upstream: String,
    /// Request headers including `:method`, `:path`, `:authority`.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// Request trailers.
    pub trailers: HeaderMap,
    /// Timeout the plugin asked for.
    pub timeout: Duration,
    /// Deliver the result back into the plugin with this (exactly once; dropping it delivers a failure).
    pub responder: CalloutResponder,
}

/// Result of an HTTP callout, fed back into `proxy_on_http_call_response`.
#[derive(Debug, Clone, Default)]
pub struct HttpCallResponse {
    /// Response headers including `:status`.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Bytes,
    /// Response trailers.
    pub trailers: HeaderMap,
}

/// Why the host refused to start a callout (`proxy_http_call` then returns BAD_ARGUMENT/INTERNAL_FAILURE).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpCallRejected {
    /// No upstream with that name (BAD_ARGUMENT to the guest).
    #[error("unknown upstream {0}")]
    UnknownUpstream(String),
    /// Anything else (INTERNAL_FAILURE to the guest).
    #[error("http call failed: {0}")]
    Internal(String),
}

/// Where a callout's answer goes: the plugin version that made the call (implemented by its instance pool).
pub(crate) trait CalloutSink: Send + Sync {
    /// Runs `proxy_on_http_call_response` for `token` (`None` = failed), now or deferred.
    fn on_http_call_response(&self, token: u32, response: Option<HttpCallResponse>) -> Result<(), PluginFailure>;
}

/// Handle for completing one HTTP callout. Dropping it without `complete` delivers a failure (0 headers).
pub struct CalloutResponder {
    sink: Weak<dyn CalloutSink>,
    token: u32,
    done: bool,
}

impl std::fmt::Debug for CalloutResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalloutResponder").field("token", &self.token).finish()
    }
}

impl CalloutResponder {
    pub(crate) fn new(sink: Weak<dyn CalloutSink>, token: u32) -> Self {
        CalloutResponder { sink, token, done: false }
    }

    /// Feed the result into the plugin (`None` = failed). Runs the guest callback synchronously; call it from
    /// the task that performed the request, not from inside [`crate::HostServices::http_call`].
    /// A response body over [`crate::limits::MAX_HTTP_CALL_RESPONSE_BODY`] is delivered as a failed callout.
    pub fn complete(mut self, response: Option<HttpCallResponse>) -> Result<(), PluginFailure> {
        self.done = true;
        let limit = crate::limits::MAX_HTTP_CALL_RESPONSE_BODY;
        let response = match response {
            Some(r) if r.body.len() > limit => {
                tracing::warn!(
                    token = self.token,
                    body_bytes = r.body.len(),
                    "callout response body over {limit} bytes: delivered as a failed callout"
                );
                None
            }
            other => other,
        };
        match self.sink.upgrade() {
            Some(p) => p.on_http_call_response(self.token, response),
            None => Ok(()),
        }
    }
}

impl Drop for CalloutResponder {
    fn drop(&mut self) {
        if !self.done {
            if let Some(p) = self.sink.upgrade() {
                // Runs now, or deferred when dropped inside a hostcall (e.g. a refused http_call).
                if let Err(e) = p.on_http_call_response(self.token, None) {
                    tracing::debug!(plugin = %e.plugin, error = %e, "callout failure callback failed");
                }
            }
        }
    }
}
