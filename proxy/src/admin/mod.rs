//! The admin API: health, readiness, metrics, config, upstream state, reload, the operator actions
//! remediation scripts need (drain/undrain an endpoint, change its weight), and endpoint registration. Mutating calls need
//! `Authorization: Bearer <token>` when `admin.token` is set.

mod browser;
mod cluster_routes;
mod dashboard;
mod endpoint_routes;
mod plugin_routes;
mod routes;

use crate::listen::idle::{Activity, Limits};
use crate::server::Server;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Time an admin client has to send a complete request head, like a listener's default `header_read_timeout`.
/// It counts from accept (version detection included).
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// An admin connection with no request in flight for this long is closed.
const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A response the admin client takes nothing of for this long is abandoned.
const ADMIN_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Admin API connections open at once over TCP: bounded, so that clients of the admin API (which keeps event
/// streams open past its idle timeout) cannot use up the descriptors the listeners need.
pub const MAX_CONNECTIONS: usize = 256;

/// Event streams (`/anomaly/events`) open at once; more get 503.
pub const MAX_EVENT_STREAMS: usize = 64;

/// Serves the admin API on a bound TCP socket; returns the bound address.
pub async fn serve_tcp(server: Arc<Server>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    server.shared.own_addrs.write().push(bound);
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            // Further connections wait in the kernel's backlog, as a listener's beyond `max_connections`.
            let Ok(place) = places.clone().acquire_owned().await else { return };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    crate::listen::accept_failed(&e).await;
                    continue;
                }
            };
            let server = server.clone();
            tokio::spawn(async move {
                serve_connection(server, stream, Transport::Tcp).await;
                drop(place);
            });
        }
    });
    Ok(bound)
}

/// Serves the same admin API on a Unix socket (replacing a stale socket file).
#[cfg(unix)]
pub async fn serve_unix(server: Arc<Server>, path: &Path) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    crate::listen::accept_failed(&e).await;
                    continue;
                }
            };
            tokio::spawn(serve_connection(server.clone(), stream, Transport::Unix));
        }
    });
    Ok(())
}

/// How an admin client reached the API: a browser can only come over TCP (see [`browser`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The admin TCP listener.
    Tcp,
    /// The admin Unix socket.
    Unix,
}

/// One admin connection, under the same deadlines as a listener's: a client that never sends a complete head
/// (or nothing at all: the version detection waits for bytes too) or stays idle is closed.
async fn serve_connection<S>(server: Arc<Server>, stream: S, transport: Transport)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(Limits {
        header_read: ADMIN_HEADER_READ_TIMEOUT,
        idle: ADMIN_IDLE_TIMEOUT,
        send: ADMIN_SEND_TIMEOUT,
    }));
    let requests = activity.clone();
    let service = service_fn(move |req| {
        let (server, requests) = (server.clone(), requests.clone());
        async move {
            let in_flight = requests.begin();
            let mut response = routes::route(server, req, transport).await?;
            in_flight.attach(response.body_mut());
            requests.watch_send(response.body_mut());
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(ADMIN_HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        () = activity.expired() => {}
    }
}
