//! Byte tunnels: protocol upgrades (WebSocket) on reverse-proxy listeners and CONNECT on forward-proxy
//! listeners. Once both sides have switched, bytes are copied in both directions until either closes, or
//! until nothing has moved either way for the listener's `idle_timeout` (nginx closes an upgraded connection
//! after `proxy_read_timeout` the same way; HAProxy has `timeout tunnel`). A tunnel keeps its client
//! connection's place under the listener's `max_connections` until it ends: hyper's connection ends when it
//! upgrades, and tunnels once outlived it, so one client could open any number, and never close them.

use crate::body::{ResponseBody, UpstreamBody};
use crate::listen::{ConnInfo, ConnSlot};
use crate::server::Shared;
use http::{Response, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// What a tunnel holds of its client connection: its place under `max_connections`, and its idle timeout.
pub struct TunnelLimits {
    _slot: Arc<ConnSlot>,
    idle: Duration,
}

impl TunnelLimits {
    /// The limits of a tunnel opened on `conn`.
    pub fn of(conn: &ConnInfo) -> Self {
        TunnelLimits { _slot: conn.slot.clone(), idle: conn.accepted_with.config.idle_timeout }
    }
}

/// Copies bytes both ways between `a` and `b` until either side closes or fails, or nothing has moved either
/// way for `limits.idle`.
pub async fn splice<A, B>(a: &mut A, b: &mut B, limits: &TunnelLimits)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut a = Touched { inner: a, last: &last, start };
    let mut b = Touched { inner: b, last: &last, start };
    let idle = limits.idle;
    // Sleeps until `idle` after the last move; bytes that moved meanwhile push the deadline on.
    let watch = async {
        loop {
            let quiet_until = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= quiet_until {
                return;
            }
            tokio::time::sleep_until(quiet_until).await;
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
        () = watch => tracing::debug!(idle = ?idle, "tunnel idle: closed"),
    }
}

/// One side of a tunnel, noting when bytes last moved through it.
struct Touched<'a, S> {
    inner: &'a mut S,
    last: &'a AtomicU64,
    start: Instant,
}

impl<S> Touched<'_, S> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Touched<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Touched<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Answers the client with the upstream's 101 and, once the client's connection is upgraded, splices the two.
/// Bytes of the new protocol the upstream sent along with its 101 go to the client first.
pub fn splice_upgrade(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    upstream_response: Response<UpstreamBody>,
    client: OnUpgrade,
    _version: Version,
) -> Response<ResponseBody> {
    let (parts, body) = upstream_response.into_parts();
    let shared = shared.clone();
    let limits = TunnelLimits::of(conn);
    tokio::spawn(async move {
        let Ok(client_io) = client.await else {
            tracing::debug!("upgrade did not complete on the client's side");
            return;
        };
        let mut client_io = TokioIo::new(client_io);
        shared.metrics.tunnels.with_label_values(&["upgrade"]).inc();
        match body {
            UpstreamBody::H1(body) => {
                let Some((mut upstream_io, early)) = body.into_upgraded() else { return };
                if !early.is_empty() && client_io.write_all(&early).await.is_err() {
                    return;
                }
                splice(&mut client_io, &mut upstream_io, &limits).await;
            }
            UpstreamBody::Hyper(body) => {
                let Some(incoming) = body.into_incoming() else { return };
                let mut response = Response::new(incoming);
                let Ok(upstream_io) = hyper::upgrade::on(&mut response).await else { return };
                splice(&mut client_io, &mut TokioIo::new(upstream_io), &limits).await;
            }
        }
    });
    Response::from_parts(parts, ResponseBody::empty())
}
