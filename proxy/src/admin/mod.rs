//! The admin API: health, readiness, metrics, config, upstream state, reload, and the operator actions
//! remediation scripts need (drain/undrain an endpoint, change its weight). Mutating calls need
//! `Authorization: Bearer <token>` when `admin.token` is set.

mod cluster_routes;
mod dashboard;
mod routes;

use crate::server::Server;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Time an admin client has to send a complete request head, like a listener's default `header_read_timeout`.
const ADMIN_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin API on a bound TCP socket; returns the bound address.
pub async fn serve_tcp(server: Arc<Server>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    server.shared.own_addrs.write().push(bound);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let server = server.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| routes::route(server.clone(), req));
                // A client that never finishes its request head must not hold an admin connection forever.
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new()).header_read_timeout(ADMIN_HEADER_READ_TIMEOUT);
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
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
            let Ok((stream, _)) = listener.accept().await else { continue };
            let server = server.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| routes::route(server.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(())
}
