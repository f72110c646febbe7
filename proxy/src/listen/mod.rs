//! Accepting client connections: binding, the connection cap, TLS handshakes, and serving HTTP/1.1 and HTTP/2
//! (h2 by ALPN on TLS, h2c by prior knowledge on plaintext). On reverse listeners Portico's own HTTP/1.1
//! server ([`http1`]) answers plain requests and hands anything else, with the rest of the connection, to
//! hyper. A listener's settings live in a slot that a reload swaps, so a reload changes behaviour without
//! closing the socket or open connections.

mod cancels;
pub mod guard;
mod h2_flood;
pub mod http1;
pub mod idle;
mod send_timeout;
pub mod workers;

use crate::body::ClientBody;
use crate::config::file::ListenerMode;
use crate::config::ListenerConfig;
use crate::forward;
use crate::server::Shared;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// A listener's current settings; swapped on reload.
pub struct ListenerRuntime {
    /// Validated config.
    pub config: ListenerConfig,
    /// TLS acceptor when terminating TLS.
    pub tls: Option<TlsAcceptor>,
    /// Where answered requests are logged, when the listener logs them.
    pub access_log: Option<crate::access_log::AccessLog>,
}

impl std::fmt::Debug for ListenerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRuntime").field("config", &self.config).field("tls", &self.tls.is_some()).finish()
    }
}

/// Per-connection facts the request path needs.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP as a header value (`x-forwarded-for`), formatted once for all the connection's requests:
    /// formatting an address cost about 500 instructions a request.
    pub client_ip: http::HeaderValue,
    /// The local address the client reached.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The listener's settings slot.
    pub listener: Arc<ArcSwap<ListenerRuntime>>,
    /// The settings the connection was accepted with: a request takes them by reference while the slot still
    /// holds them (see [`ConnInfo::settings`]).
    pub accepted_with: Arc<ListenerRuntime>,
    /// Set when the smuggling guard refused a request head on this connection.
    pub guard: Arc<guard::GuardFlag>,
    /// Requests in flight, for the first-request and idle deadlines.
    pub activity: Arc<idle::Activity>,
    /// The connection's place under the listener's `max_connections`, held by the connection and by any
    /// tunnel (upgrade, CONNECT) it turned into.
    pub slot: Arc<ConnSlot>,
}

/// A connection's place under its listener's `max_connections`: given back when the connection and every
/// tunnel it became have ended.
#[derive(Debug)]
pub struct ConnSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ConnInfo {
    /// The listener's current settings. Borrowed from the connection while a reload has not replaced them
    /// (checking takes no shared write); counting another holder of the settings on every request would write
    /// the one count every connection on both workers shares.
    pub fn settings(&self) -> std::borrow::Cow<'_, Arc<ListenerRuntime>> {
        if std::ptr::eq(&**self.listener.load(), &*self.accepted_with) {
            std::borrow::Cow::Borrowed(&self.accepted_with)
        } else {
            std::borrow::Cow::Owned(self.listener.load_full())
        }
    }
}

/// A running listener.
#[derive(Debug)]
pub struct ListenerHandle {
    /// The address actually bound (differs from config when port 0 was asked).
    pub bound: SocketAddr,
    /// The settings slot.
    pub slot: Arc<ArcSwap<ListenerRuntime>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ListenerHandle {
    /// Stops accepting and drains open connections for up to `grace`; resolves when done.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(grace + Duration::from_secs(1), self.task).await.is_err() {
            abort.abort();
        }
    }

    /// Asks the listener to stop without waiting.
    pub fn signal_stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Binds the socket (with SO_REUSEADDR, as every server does, so a restart does not wait for TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Starts serving a bound socket.
pub fn spawn(
    shared: Arc<Shared>,
    listener: TcpListener,
    runtime: ListenerRuntime,
    grace: Duration,
) -> std::io::Result<ListenerHandle> {
    let bound = listener.local_addr()?;
    let slot = Arc::new(ArcSwap::from_pointee(runtime));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(shared, listener, slot.clone(), stop_rx, grace));
    Ok(ListenerHandle { bound, slot, stop, task })
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    slot: Arc<ArcSwap<ListenerRuntime>>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut limit_size = slot.load().config.max_connections;
    let mut limit = Arc::new(Semaphore::new(limit_size));
    loop {
        let configured = slot.load().config.max_connections;
        if configured != limit_size {
            limit_size = configured;
            limit = Arc::new(Semaphore::new(limit_size));
        }
        let permit = tokio::select! {
            _ = stop.changed() => break,
            permit = limit.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        let runtime = slot.load_full();
        let name = runtime.config.name.clone();
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(runtime.config.listen);
        let conn_shared = shared.clone();
        let drain = Drain { watcher: graceful.watcher(), stop: stop.clone() };
        let slot = slot.clone();
        let serve = move |stream: TcpStream| async move {
            let shared = conn_shared;
            let active = shared.metrics.active_connections.with_label_values(&[&name]);
            shared.metrics.connections.with_label_values(&[&name]).inc();
            active.inc();
            let hold = Arc::new(ConnSlot { _permit: permit });
            serve_connection(shared, stream, (peer, local), slot, runtime, drain, hold).await;
            active.dec();
        };
        match &shared.workers {
            // The socket moves to the worker as a plain fd and is registered with that worker's reactor there.
            Some(workers) => match stream.into_std() {
                Ok(stream) => workers.spawn(async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => serve(stream).await,
                        Err(e) => tracing::warn!(error = %e, %peer, "cannot register connection with its worker"),
                    }
                }),
                Err(e) => tracing::warn!(error = %e, %peer, "cannot hand connection to a worker"),
            },
            None => {
                tokio::spawn(serve(stream));
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("listener drain timed out; remaining connections are closed");
    }
}

/// After a failed `accept`: out of file descriptors (`EMFILE`, `ENFILE`) or memory, the pending connection stays
/// in the backlog and the next `accept` fails at once, so the loop backs off (and says so) instead of spinning
/// at a full core. Other errors concern one connection the client already gave up (`ECONNABORTED`): go on.
pub async fn accept_failed(e: &std::io::Error) {
    let exhausted = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
    if exhausted {
        tracing::warn!(error = %e, "accept failed: out of file descriptors or memory; pausing accepts for 100ms");
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        tracing::debug!(error = %e, "accept failed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    (peer, local): (SocketAddr, SocketAddr),
    slot: Arc<ArcSwap<ListenerRuntime>>,
    runtime: Arc<ListenerRuntime>,
    drain: Drain,
    hold: Arc<ConnSlot>,
) {
    let flag = Arc::new(guard::GuardFlag::default());
    let config = &runtime.config;
    let activity = Arc::new(idle::Activity::new(idle::Limits {
        header_read: config.header_read_timeout,
        idle: config.idle_timeout,
        send: config.send_timeout,
    }));
    let client_ip = http::HeaderValue::try_from(peer.ip().to_string()).unwrap_or(http::HeaderValue::from_static(""));
    let info = Arc::new(ConnInfo {
        peer,
        client_ip,
        local,
        tls: runtime.tls.is_some(),
        listener: slot,
        accepted_with: runtime.clone(),
        guard: flag,
        activity: activity.clone(),
        slot: hold,
    });
    let connection = Connection { shared, info, runtime: runtime.clone(), drain };
    // Counts from accept: the TLS handshake, version detection and the first request head share one deadline.
    let expired = activity.expired();
    tokio::pin!(expired);
    match &runtime.tls {
        None => watched(connection.serve(stream, true), expired, peer).await,
        Some(acceptor) => {
            let tls = tokio::select! {
                tls = acceptor.accept(stream) => tls,
                () = &mut expired => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let Ok(tls) = tls else {
                tracing::debug!(%peer, "TLS handshake failed");
                return;
            };
            let http1 = tls.get_ref().1.alpn_protocol() != Some(b"h2");
            watched(connection.serve(tls, http1), expired, peer).await;
        }
    }
}

/// Serves a connection in a task of its own and ends it when its deadlines pass. Selecting between the two in
/// one task polled the deadline watcher at every wake-up of the connection, a few times a request; here the
/// watcher's task wakes only when a deadline passes or the connection ends.
async fn watched<F>(serving: F, expired: Pin<&mut impl Future<Output = ()>>, peer: SocketAddr)
where
    F: Future<Output = ()> + Send + 'static,
{
    /// Ends the serving task with the watcher, whatever ends the watcher.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut serving = AbortOnDrop(tokio::spawn(crate::clock::Clocked::new(serving)));
    tokio::select! {
        _ = &mut serving.0 => {}
        () = expired => tracing::debug!(%peer, "connection closed: no request in time"),
    }
}

/// How a stopping listener reaches its connections: both hyper's and Portico's own server see `stop`; hyper's
/// are shut down gracefully, and hold the watcher until they end, which keeps the listener's drain waiting for
/// them; Portico's own server closes an idle connection at once, a busy one after its answer.
struct Drain {
    watcher: hyper_util::server::graceful::Watcher,
    stop: watch::Receiver<bool>,
}

/// One accepted connection, past its TLS handshake.
struct Connection {
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    runtime: Arc<ListenerRuntime>,
    drain: Drain,
}

impl Connection {
    /// Serves the connection: on reverse listeners, Portico's own HTTP/1.1 server first, unless the client
    /// chose HTTP/2 by ALPN (`http1` false); hyper for the rest (see [`http1`]).
    async fn serve<S>(self, stream: S, http1: bool)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let config = &self.runtime.config;
        let io = if http1 && config.mode == ListenerMode::Reverse {
            let limits = http1::Limits { max_head: config.max_header_bytes, header_read: config.header_read_timeout };
            match http1::serve(stream, &self.shared, &self.info, limits, &self.drain.stop).await {
                http1::Served::Closed => return,
                http1::Served::Handoff(io) => io,
            }
        } else {
            http1::Rewind::new(stream)
        };
        let io = TokioIo::new(guard::SmuggleGuard::resume(io, self.info.guard.clone()));
        // hyper's automatic server looks for the HTTP/2 preface at the start of what it is given: after requests
        // Portico's own server answered, that is the middle of an HTTP/1 connection, where the preface is no
        // request (RFC 9113 §3.3) and must not switch the connection to HTTP/2. (`auto::Builder::http1_only`
        // does nothing for a connection served with upgrades.)
        let mid_connection = self.info.guard.requests_seen() > 0;
        let builder = connection_builder(config);
        let listener = config.name.clone();
        let (shared, info) = (self.shared, self.info);
        let (conn_shared, conn_info) = (shared.clone(), info.clone());
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (shared, info) = (shared.clone(), info.clone());
            async move {
                let Ok(mut response) = forward::handle(&shared, &info, req.map(ClientBody::Hyper)).await;
                // hyper writes the answer from its map.
                crate::body::fields_as_map(&mut response);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let Drain { watcher, stop } = self.drain;
        let too_many_cancels = || {
            tracing::warn!(peer = %conn_info.peer, listener = %listener, "client cancelled too many requests (HTTP/2 rapid reset?): closing the connection gracefully");
            conn_shared.metrics.cancel_closes.with_label_values(&[&listener]).inc();
        };
        if mid_connection {
            let conn = http1_builder(config).serve_connection(io, service).with_upgrades();
            until_closed(conn, stop, &conn_info.activity, too_many_cancels).await;
        } else {
            let conn = builder.serve_connection_with_upgrades(io, service);
            until_closed(conn, stop, &conn_info.activity, too_many_cancels).await;
        }
        if conn_info.guard.flooded() {
            tracing::warn!(peer = %conn_info.peer, listener = %listener, "HTTP/2 connection closed: far more control frames than requests (a flood)");
            conn_shared.metrics.h2_floods.with_label_values(&[&listener]).inc();
        }
        // Held until the connection ended: the listener's drain waits for it.
        drop(watcher);
    }
}

/// Serves a hyper connection to its end, shutting it down gracefully (a GOAWAY on HTTP/2, the answer in
/// progress last on HTTP/1) when the listener stops or when the client cancels too many requests (after
/// calling `too_many_cancels`). Each wake-up of the connection looks at both: the stop signal as hyper's
/// graceful watcher did, the cancels without a lock.
async fn until_closed<C>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    activity: &idle::Activity,
    too_many_cancels: impl FnOnce(),
) where
    C: Future + GracefulConn,
{
    let mut conn = std::pin::pin!(conn);
    let mut stopping = std::pin::pin!(async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    });
    let mut too_many_cancels = Some(too_many_cancels);
    let mut asked = false;
    // Set when the cancels asked the connection to close: an HTTP/2 graceful shutdown completes only once the
    // client answers its PING, and a client that never does could go on opening and resetting streams.
    let mut hard_close: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if !asked {
            if stopping.as_mut().poll(cx).is_ready() {
                asked = true;
            } else if activity.poll_too_many_cancels(cx).is_ready() {
                asked = true;
                hard_close = Some(Box::pin(tokio::time::sleep(cancels::CLOSE_WITHIN)));
                if let Some(told) = too_many_cancels.take() {
                    told();
                }
            }
            if asked {
                conn.as_mut().shutdown_gracefully();
            }
        }
        if hard_close.as_mut().is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready()) {
            // Dropping the connection closes it.
            return std::task::Poll::Ready(());
        }
        conn.as_mut().poll(cx).map(|_| ())
    })
    .await;
}

/// hyper's connection, as [`until_closed`] shuts it down (hyper-util's own trait for it is sealed).
trait GracefulConn {
    fn shutdown_gracefully(self: Pin<&mut Self>);
}

impl<I, S, E, B> GracefulConn for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: auto::HttpServerConnExec<S::Future, B>,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> GracefulConn for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// hyper's HTTP/1-only server, for the rest of a connection Portico's own server began: the settings of
/// [`connection_builder`]'s HTTP/1 half.
fn http1_builder(config: &ListenerConfig) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
}

fn connection_builder(config: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(64)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}
