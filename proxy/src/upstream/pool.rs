//! Upstream connections.
//!
//! HTTP/1.1 endpoints use Portico's own pool. Each endpoint keeps its idle connections per worker lane (see
//! [`crate::listen::workers`]), so a connection is only reused by the runtime that drives it. The list is used
//! newest first, so the warmest connection is reused and the coldest ones age out. It has a cap on idle
//! connections (`max_idle`, per lane), and an idle timeout enforced both when a connection is taken and by
//! [`IdleConnections::sweep`]: hyper-util's pool never reaped without a timer (hyper #3640).
//!
//! The pool replaces hyper-util's legacy client for HTTP/1. That client, per request, hashes a pool key, runs a
//! checkout future raced against a connect and spawns a task that waits to hand the connection back. Here a
//! request takes a connection from a short list, and the connection goes back when the response body ends,
//! from the guard that already tracks the body ([`PooledConnection::release`]).
//!
//! A request that was never written because a reused connection turned out to be closed (the upstream's
//! keep-alive timer won the race) is sent again on another connection, as hyper-util did.
//!
//! HTTP/2 endpoints keep hyper-util's client: one multiplexed connection per endpoint, per lane.

use super::endpoint::Endpoint;
use crate::body::RequestBody;
use crate::config::{UpstreamConfig, UpstreamProtocol};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

/// The HTTP/2 client for one upstream group.
pub type UpstreamClient = Client<HttpConnector, RequestBody>;

/// TCP keep-alive probes on upstream connections, so a peer that vanished is noticed on idle connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Settings that require a new client when they change on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    /// HTTP/1.1 (Portico's pool) or HTTP/2 (hyper-util's client).
    pub protocol: UpstreamProtocol,
    /// How long a TCP connect may take.
    pub connect_timeout: Duration,
    /// Idle connections kept per endpoint and lane.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
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

    /// Builds the pooled HTTP/2 client.
    pub fn build_h2(&self) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(TCP_KEEPALIVE));
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_max_idle_per_host(self.max_idle)
            .retry_canceled_requests(true)
            .set_host(false)
            .http2_only(true)
            .http2_adaptive_window(true);
        builder.build(connector)
    }
}

/// Why a request could not be sent upstream or its response head not read.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The TCP connect failed.
    #[error("connect to {address} failed")]
    Connect {
        /// The endpoint.
        address: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connect took longer than the upstream's `connect_timeout`.
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// The HTTP/1 exchange failed (connection reset, malformed answer, closed before the head).
    #[error(transparent)]
    Http1(#[from] hyper::Error),
    /// A pooled connection failed before any answer: most likely the upstream closed it (its keep-alive timer
    /// fired) as the request went out. An idempotent request may be sent again on a new connection.
    #[error("pooled connection lost before an answer")]
    ReusedConnectionLost(#[source] hyper::Error),
    /// The HTTP/2 client failed.
    #[error(transparent)]
    Http2(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// What went wrong, in words fit for a client: no addresses, no internal error text.
    pub fn summary(&self) -> &'static str {
        match self {
            SendError::Connect { .. } => "could not connect",
            SendError::ConnectTimeout(_) => "connect timed out",
            SendError::ReusedConnectionLost(_) => "connection lost before an answer",
            SendError::Http1(e) if e.is_parse() => "invalid response",
            SendError::Http1(e) if e.is_incomplete_message() => "connection closed before an answer",
            SendError::Http1(_) => "request failed",
            SendError::Http2(e) if e.is_connect() => "could not connect",
            SendError::Http2(_) => "request failed",
        }
    }

    /// Whether no connection could be made (counted by `portico_upstream_connect_errors_total`).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect { .. } | SendError::ConnectTimeout(_) => true,
            SendError::Http1(_) | SendError::ReusedConnectionLost(_) => false,
            SendError::Http2(e) => e.is_connect(),
        }
    }
}

/// An idle HTTP/1 connection and when it went idle.
struct Idle {
    sender: SendRequest<RequestBody>,
    task: AbortHandle,
    since: Instant,
}

/// One endpoint's idle HTTP/1 connections, one list per worker lane. It lives in the [`Endpoint`], so warm
/// connections survive a reload that keeps the endpoint, and close when a reload removes it.
pub struct IdleConnections {
    lanes: Box<[Mutex<Vec<Idle>>]>,
}

impl std::fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdleConnections({})", self.count())
    }
}

impl IdleConnections {
    /// Empty lists for `lanes` lanes (at least one).
    pub fn new(lanes: usize) -> Self {
        IdleConnections { lanes: (0..lanes.max(1)).map(|_| Mutex::new(Vec::new())).collect() }
    }

    fn lane(&self, lane: usize) -> &Mutex<Vec<Idle>> {
        &self.lanes[lane % self.lanes.len()]
    }

    /// The newest idle connection of the lane that is still open and younger than `idle_timeout`. The list is
    /// ordered by age, so when the newest is too old, all are, and they are dropped (which closes them).
    fn take(&self, lane: usize, idle_timeout: Duration) -> Option<(SendRequest<RequestBody>, AbortHandle)> {
        let mut idle = self.lane(lane).lock();
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() > idle_timeout {
                idle.clear();
                return None;
            }
            if !conn.sender.is_closed() {
                return Some((conn.sender, conn.task));
            }
        }
        None
    }

    /// Keeps a connection for reuse unless the lane already holds `max_idle`.
    fn put(&self, lane: usize, sender: SendRequest<RequestBody>, task: AbortHandle, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lane(lane).lock();
        if idle.len() < max_idle {
            idle.push(Idle { sender, task, since: Instant::now() });
        }
    }

    /// Closes the connections idle for longer than `idle_timeout`, and those the upstream closed. (Dropping a
    /// connection only wakes its task, so it is done under the lane's lock.)
    pub fn sweep(&self, idle_timeout: Duration) {
        let now = Instant::now();
        for lane in self.lanes.iter() {
            lane.lock().retain(|c| !c.sender.is_closed() && now.duration_since(c.since) <= idle_timeout);
        }
    }

    /// Closes every idle connection (the endpoint left its group).
    pub fn clear(&self) {
        for lane in self.lanes.iter() {
            lane.lock().clear();
        }
    }

    /// Idle connections over all lanes.
    pub fn count(&self) -> usize {
        self.lanes.iter().map(|l| l.lock().len()).sum()
    }
}

/// An HTTP/1 connection lent to one request. [`PooledConnection::release`] gives it back once the response
/// body has ended cleanly; dropping it instead closes the connection, which is right for a body cut short.
#[derive(Debug)]
pub struct PooledConnection {
    sender: SendRequest<RequestBody>,
    /// The task driving the connection: aborting it closes the connection at once, even while a response
    /// body still holds it.
    task: AbortHandle,
    endpoint: Arc<Endpoint>,
    lane: usize,
    max_idle: usize,
}

impl PooledConnection {
    /// Returns the connection to its endpoint's idle list, in the lane of the runtime that drives it; one to an
    /// endpoint that left its group is closed instead.
    pub fn release(self) {
        if self.endpoint.is_retired() {
            self.task.abort();
            return;
        }
        self.endpoint.idle.put(self.lane, self.sender, self.task, self.max_idle);
    }

    /// Closes the connection now: its response was abandoned (a body cut short, a send timeout), so what is
    /// left of it must not keep the upstream busy.
    pub fn close(self) {
        self.task.abort();
    }
}

/// Which connection a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionChoice {
    /// An idle pooled connection when there is one (the usual case).
    Pooled,
    /// A new connection: for sending again a request whose pooled connection was lost, since the other idle
    /// connections to that endpoint may be just as stale.
    New,
}

/// Sends one request over HTTP/1.1 to the endpoint: on an idle connection of the calling lane when there is
/// one (and `choice` allows it), else on a new connection. Returns the response head and the connection to give
/// back when its body ends.
pub async fn send_http1(
    endpoint: &Arc<Endpoint>,
    settings: &ClientSettings,
    mut request: http::Request<RequestBody>,
    choice: ConnectionChoice,
) -> Result<(http::Response<hyper::body::Incoming>, PooledConnection), SendError> {
    let lane = crate::listen::workers::lane();
    loop {
        let pooled = match choice {
            ConnectionChoice::Pooled => endpoint.idle.take(lane, settings.idle_timeout),
            ConnectionChoice::New => None,
        };
        let ((mut sender, task), reused) = match pooled {
            Some(pooled) => (pooled, true),
            None => (connect(endpoint.address, settings.connect_timeout).await?, false),
        };
        if !sender.is_ready() {
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(SendError::Http1(e));
            }
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                let connection =
                    PooledConnection { sender, task, endpoint: endpoint.clone(), lane, max_idle: settings.max_idle };
                return Ok((response, connection));
            }
            Err(mut e) => match e.take_message() {
                // Never written: the reused connection was already closing. Try another.
                Some(unsent) if reused => request = unsent,
                None if reused && !e.error().is_parse() => return Err(SendError::ReusedConnectionLost(e.into_error())),
                _ => return Err(SendError::Http1(e.into_error())),
            },
        }
    }
}

/// Opens a TCP connection to the endpoint and starts HTTP/1.1 on it. The connection's task runs on the calling
/// runtime (with upgrades, for WebSockets) until the last [`SendRequest`] is dropped or the peer closes.
async fn connect(address: SocketAddr, timeout: Duration) -> Result<(SendRequest<RequestBody>, AbortHandle), SendError> {
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Err(_elapsed) => return Err(SendError::ConnectTimeout(address)),
        Ok(Err(source)) => return Err(SendError::Connect { address, source }),
        Ok(Ok(stream)) => stream,
    };
    // Best effort, as for accepted sockets: a proxy that cannot set these still works.
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(%address, error = %e, "upstream connection ended with an error");
        }
    });
    Ok((sender, task.abort_handle()))
}
