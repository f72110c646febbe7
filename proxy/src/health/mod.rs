//! Active health checks: every `interval` (with up to 10 % jitter, so probes from many proxies do not beat in
//! step) each endpoint gets an HTTP GET on `path` (2xx is healthy) or a TCP connect, on a fresh connection as
//! HAProxy does, so the probe sees what a new request would see. Thresholds avoid flapping.

use crate::config::HealthCheckFile;
use crate::upstream::Upstream;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Starts the checker for one upstream group; abort the handle to stop it (done on reload). `current` gives the
/// group as it is now (discovery and registrations rebuild it between reloads); `on_change` is called after a
/// round in which an endpoint's health flipped. Endpoints that join the group wait for their first probe only
/// until the group's [`Upstream::membership`] wakes the checker, not a whole interval.
pub fn spawn(
    check: HealthCheckFile,
    current: impl Fn() -> Option<Arc<Upstream>> + Send + 'static,
    on_change: impl Fn() + Send + 'static,
) -> Option<JoinHandle<()>> {
    let first = current()?;
    let membership = first.membership.clone();
    drop(first);
    Some(tokio::spawn(async move {
        let interval = || check.interval.0.mul_f64(1.0 + rand::thread_rng().gen_range(0.0..0.1));
        let mut next_round = Instant::now() + interval();
        loop {
            let full = tokio::select! {
                () = tokio::time::sleep_until(next_round.into()) => true,
                () = membership.notified() => false,
            };
            if full {
                next_round = Instant::now() + interval();
            }
            let Some(upstream) = current() else { return };
            let name = upstream.name();
            let probes = upstream.endpoints.iter().filter(|e| full || e.awaiting_first_check()).map(|endpoint| {
                let check = &check;
                async move {
                    let ok = probe(endpoint.address, check).await;
                    let flipped = endpoint.record_probe(ok, check.healthy_threshold, check.unhealthy_threshold);
                    if let Some(now_healthy) = flipped {
                        tracing::warn!(upstream = %name, endpoint = %endpoint.name, healthy = now_healthy, "health changed");
                    }
                    flipped.is_some()
                }
            });
            if futures_util::future::join_all(probes).await.into_iter().any(|flipped| flipped) {
                on_change();
            }
        }
    }))
}

/// One probe; true when healthy.
pub async fn probe(address: SocketAddr, check: &HealthCheckFile) -> bool {
    tokio::time::timeout(check.timeout.0, probe_inner(address, check.path.as_deref())).await.unwrap_or(false)
}

async fn probe_inner(address: SocketAddr, path: Option<&str>) -> bool {
    let Ok(stream) = TcpStream::connect(address).await else { return false };
    let Some(path) = path else { return true };
    let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return false;
    };
    let driver = tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, address.to_string())
        .header(http::header::USER_AGENT, "portico-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new());
    let ok = match request {
        Ok(request) => matches!(sender.send_request(request).await, Ok(r) if r.status().is_success()),
        Err(_) => false,
    };
    driver.abort();
    ok
}

/// Keeps the same jitter-free interval available for tests and docs.
pub fn nominal_interval(check: &HealthCheckFile) -> Duration {
    check.interval.0
}
