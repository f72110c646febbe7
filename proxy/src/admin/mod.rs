//! The admin API: health, readiness, metrics, config, upstream state, reload, and the operator actions
//! remediation scripts need (drain/undrain an endpoint, change its weight). Mutating calls need
//! `Authorization: Bearer <token>` when `admin.token` is set.

mod cluster_routes;
mod routes;

use crate::server::Server;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the admin API on a bound TCP socket; returns the bound address.
pub async fn serve_tcp(server: Arc<Server>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
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
