//! Upstream connections.
//!
//! HTTP/1.1 endpoints use Portico's own client ([`super::h1`]) and pool. Each endpoint keeps its idle
//! connections per worker lane (see [`crate::listen::workers`]), so a connection is only reused by the runtime
//! that drives it; each lane sits on cache lines of its own and is written by its worker alone (and by the
//! once-a-second sweep). The list is used newest first, so the warmest connection is reused and the coldest
//! ones age out. It has a cap on idle connections (`max_idle`, per lane), and an idle timeout enforced both
//! when a connection is taken and by [`IdleConnections::sweep`].
//!
//! A request takes a connection from its lane's short list, and the response body gives it back when the
//! message ends ([`super::h1::Body`]).
//!
//! A request that was never written because a reused connection turned out to be closed (the upstream's
//! keep-alive timer won the race) is sent again on another connection; one whose pooled connection was lost
//! before any answer is reported as [`SendError::ReusedConnectionLost`], for the caller to send again if it is
//! idempotent.
//!
//! HTTP/2 endpoints keep hyper-util's client: one multiplexed connection per endpoint, per lane.

use super::endpoint::Endpoint;
use super::h1::{self, Connection, H1Error, Home};
use crate::body::{RequestBody, UpstreamBody};
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::h1::head::Added;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// HTTP/2: each stream's flow-control window, and the connection's (see `PoolFile::h2_stream_window`).
    pub h2_windows: (u32, u32),
}

impl ClientSettings {
    /// The client-relevant part of an upstream's config.
    pub fn of(config: &UpstreamConfig) -> Self {
        ClientSettings {
            protocol: config.protocol,
            connect_timeout: config.connect_timeout,
            max_idle: config.pool.max_idle,
            idle_timeout: config.pool.idle_timeout.0,
            h2_windows: (window(config.pool.h2_stream_window.0), window(config.pool.h2_connection_window.0)),
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
            // Fixed windows, the connection's many times a stream's: its streams share it, and an answer a
            // client does not read holds its part of it until the send timeout. An adaptive window (hyper's
            // BDP estimate) gives streams and connection the same size, and one stalled reader stopped every
            // answer on the connection.
            .http2_initial_stream_window_size(self.h2_windows.0)
            .http2_initial_connection_window_size(self.h2_windows.1);
        builder.build(connector)
    }
}

/// A configured window as HTTP/2 carries it (the configuration is checked to be within 31 bits).
fn window(bytes: u64) -> u32 {
    u32::try_from(bytes.min(crate::config::H2_MAX_WINDOW)).unwrap_or(u32::MAX >> 1)
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
    Http1(#[from] H1Error),
    /// A pooled connection failed before any answer: most likely the upstream closed it (its keep-alive timer
    /// fired) as the request went out. An idempotent request may be sent again on a new connection.
    #[error("pooled connection lost before an answer")]
    ReusedConnectionLost(#[source] H1Error),
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
            SendError::Http1(e) if e.is_invalid_response() => "invalid response",
            SendError::Http1(H1Error::Closed) => "connection closed before an answer",
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
#[derive(Debug)]
struct Idle {
    conn: Box<Connection>,
    since: Instant,
}

/// One worker's idle connections to one endpoint. Aligned to its own cache lines: only its worker takes and
/// puts (the sweep aside), so no other core's writes land on them.
#[derive(Debug)]
#[repr(align(128))]
pub struct IdleLane {
    idle: Mutex<Vec<Idle>>,
    /// Set when the endpoint left its group: connections given back are closed instead of kept.
    retired: AtomicBool,
}

impl IdleLane {
    /// Keeps a connection for reuse unless the lane already holds `max_idle` or its endpoint left the group.
    pub fn put(&self, conn: Box<Connection>, max_idle: usize) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < max_idle {
            idle.push(Idle { conn, since: crate::clock::now() });
        }
    }

    /// The newest idle connection that is still open and younger than `idle_timeout`. The list is ordered by
    /// age, so when the newest is too old, all are, and they are dropped (which closes them).
    fn take(&self, idle_timeout: Duration) -> Option<Box<Connection>> {
        let mut idle = self.idle.lock();
        while let Some(entry) = idle.pop() {
            if crate::clock::now().saturating_duration_since(entry.since) > idle_timeout {
                idle.clear();
                return None;
            }
            if entry.conn.is_reusable() {
                return Some(entry.conn);
            }
        }
        None
    }
}

/// One endpoint's idle HTTP/1 connections, one list per worker lane. It lives in the [`Endpoint`], so warm
/// connections survive a reload that keeps the endpoint, and close when a reload removes it.
pub struct IdleConnections {
    lanes: Box<[Arc<IdleLane>]>,
}

impl std::fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdleConnections({})", self.count())
    }
}

impl IdleConnections {
    /// Empty lists for `lanes` lanes (at least one).
    pub fn new(lanes: usize) -> Self {
        let lane = || Arc::new(IdleLane { idle: Mutex::new(Vec::new()), retired: AtomicBool::new(false) });
        IdleConnections { lanes: (0..lanes.max(1)).map(|_| lane()).collect() }
    }

    fn lane(&self, lane: usize) -> &Arc<IdleLane> {
        &self.lanes[lane % self.lanes.len()]
    }

    /// Closes the connections idle for longer than `idle_timeout`, and those the upstream closed.
    pub fn sweep(&self, idle_timeout: Duration) {
        let now = Instant::now();
        for lane in self.lanes.iter() {
            lane.idle.lock().retain(|c| c.conn.is_reusable() && now.duration_since(c.since) <= idle_timeout);
        }
    }

    /// Closes every idle connection, and every one given back from now on (the endpoint left its group).
    pub fn retire(&self) {
        for lane in self.lanes.iter() {
            lane.retired.store(true, Ordering::Relaxed);
            lane.idle.lock().clear();
        }
    }

    /// Idle connections over all lanes.
    pub fn count(&self) -> usize {
        self.lanes.iter().map(|l| l.idle.lock().len()).sum()
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
/// one (and `choice` allows it), else on a new connection. The response body owns the connection and gives it
/// back to the lane when the message ends.
pub async fn send_http1(
    endpoint: &Endpoint,
    settings: &ClientSettings,
    parts: &http::request::Parts,
    added: &[Added<'_>],
    mut body: RequestBody,
    choice: ConnectionChoice,
) -> Result<http::Response<UpstreamBody>, SendError> {
    let lane = endpoint.idle.lane(crate::listen::workers::lane());
    let length = h1::request_length(&body);
    loop {
        let pooled = match choice {
            ConnectionChoice::Pooled => lane.take(settings.idle_timeout),
            ConnectionChoice::New => None,
        };
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => Connection::connect(endpoint.address, settings.connect_timeout).await?,
        };
        let (head, request) = match h1::send(&mut conn, parts, added, &mut body, length).await {
            Ok(sent) => sent,
            // Never written: the reused connection was already closing. Try another.
            Err(failure) if reused && failure.unsent => continue,
            Err(failure)
                if reused && !failure.answered && matches!(failure.error, H1Error::Closed | H1Error::Io(_)) =>
            {
                return Err(SendError::ReusedConnectionLost(failure.error))
            }
            Err(failure) => return Err(SendError::Http1(failure.error)),
        };
        let home = Home { lane: lane.clone(), max_idle: settings.max_idle };
        let mut body = h1::Body::new(conn, &head, &parts.method, request, Some(home))?;
        *body.raw_fields() = head.raw;
        let mut response = http::Response::new(UpstreamBody::H1(body));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        return Ok(response);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// An upstream on 127.0.0.1 that answers each request with `head`, then with `body` once `release` lets
    /// it (at once when there is nothing to wait for).
    async fn upstream(
        head: &'static [u8],
        body: &'static [u8],
        release: tokio::sync::watch::Receiver<bool>,
    ) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut release = release;
            let mut buf = [0u8; 4096];
            loop {
                let Ok(n) = stream.read(&mut buf).await else { return };
                if n == 0 || stream.write_all(head).await.is_err() {
                    return;
                }
                if release.wait_for(|go| *go).await.is_err() || stream.write_all(body).await.is_err() {
                    return;
                }
            }
        });
        addr
    }

    async fn exchange(endpoint: &Endpoint) -> http::Response<UpstreamBody> {
        let config = crate::config::parse("[[upstream]]\nname = \"g\"\nendpoints = [\"127.0.0.1:1\"]\n")
            .expect("config")
            .upstreams
            .remove(0);
        let parts = http::Request::get("/").header("host", "a").body(()).expect("request").into_parts().0;
        let settings = ClientSettings::of(&config);
        send_http1(endpoint, &settings, &parts, &[], RequestBody::empty(), ConnectionChoice::Pooled)
            .await
            .expect("answer")
    }

    /// A body that came whole with its head gives its connection back before anyone reads it, so nothing
    /// upstream waits on the client; one still arriving holds the connection until it has been read.
    #[tokio::test]
    async fn a_body_whole_with_its_head_gives_its_connection_back_at_once() {
        let (go, release) = tokio::sync::watch::channel(true);
        let whole = upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"", release).await;
        let endpoint = Endpoint::new("whole".into(), whole, 1, 1).expect("endpoint");
        let answer = exchange(&endpoint).await;
        assert!(!answer.body().holds_upstream());
        assert_eq!(endpoint.idle.count(), 1, "back in the pool before the body was read");
        let body = answer.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"hello");
        drop(go);

        let (go, release) = tokio::sync::watch::channel(false);
        let later = upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"later", release).await;
        let endpoint = Endpoint::new("later".into(), later, 1, 1).expect("endpoint");
        let answer = exchange(&endpoint).await;
        assert!(answer.body().holds_upstream());
        assert_eq!(endpoint.idle.count(), 0, "the body still reads from it");
        go.send_replace(true);
        let body = answer.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"later");
        assert_eq!(endpoint.idle.count(), 1, "given back when the body ended");
    }
}
