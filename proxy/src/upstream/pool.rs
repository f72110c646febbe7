//! Upstream connections: a keep-alive pool per upstream group (hyper-util's pool, with its idle reaper actually
//! running — it needs a timer, hyper #3640), plus a per-endpoint cap on requests in flight, which hyper's pool
//! lacks (hyper #2236).

use crate::body::RequestBody;
use crate::config::{UpstreamConfig, UpstreamProtocol};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// The HTTP client for one upstream group.
pub type UpstreamClient = Client<HttpConnector, RequestBody>;

/// Settings that require a new client when they change on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
}

impl ClientSettings {
    /// The client-relevant part of an upstream's config.
    pub fn of(config: &UpstreamConfig) -> Self {
        ClientSettings {
            protocol: config.protocol,
            connect_timeout: config.connect_timeout,
            max_idle: config.pool.max_idle,
            idle_timeout: config.pool.idle_timeout.0,
        }
    }

    /// Builds the pooled client.
    pub fn build(&self) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_max_idle_per_host(self.max_idle)
            .retry_canceled_requests(true)
            .set_host(false);
        if self.protocol == UpstreamProtocol::H2 {
            builder.http2_only(true).http2_adaptive_window(true);
        }
        builder.build(connector)
    }
}
