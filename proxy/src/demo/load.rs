//! A small closed-loop load generator for the demo: N keep-alive connections sending GETs back to back,
//! recording each answer's latency, status and which upstream served it. One request in four goes to
//! `/checkout`, the route the demo's faulty router release breaks.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// What happened in one reporting period.
#[derive(Debug, Default, Clone)]
pub struct Window {
    /// Latencies of successful answers, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// 2xx answers by serving upstream.
    pub by_upstream: BTreeMap<String, u64>,
    /// Transport errors (no answer at all).
    pub errors: u64,
}

impl Window {
    /// Percentile (0..=100) of latency, in milliseconds.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let rank = ((p / 100.0) * (self.latencies_us.len() - 1) as f64).round() as usize;
        self.latencies_us[rank.min(self.latencies_us.len() - 1)] as f64 / 1000.0
    }

    /// Answers of any status.
    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }
}

/// Shared recorder the workers write into.
#[derive(Debug, Default)]
pub struct Recorder {
    window: Mutex<Window>,
}

impl Recorder {
    /// Takes the current window and starts a new one.
    pub fn take(&self) -> Window {
        std::mem::take(&mut *self.window.lock())
    }
}

/// Runs `concurrency` workers against `target` until `until`.
pub async fn run(target: SocketAddr, concurrency: usize, until: Instant, recorder: Arc<Recorder>) {
    let workers = (0..concurrency).map(|_| tokio::spawn(worker(target, until, recorder.clone())));
    futures_util::future::join_all(workers).await;
}

async fn worker(target: SocketAddr, until: Instant, recorder: Arc<Recorder>) {
    while Instant::now() < until {
        let Ok(stream) = TcpStream::connect(target).await else {
            recorder.window.lock().errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
            continue;
        };
        tokio::spawn(conn);
        let mut sent = 0u64;
        while Instant::now() < until {
            sent += 1;
            let path = if sent.is_multiple_of(4) { "/checkout" } else { "/" };
            let Ok(request) = http::Request::get(path).header("host", "demo.local").body(Empty::<Bytes>::new()) else {
                return;
            };
            let started = Instant::now();
            match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let upstream = response
                        .headers()
                        .get("x-demo-upstream")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    let _ = response.into_body().collect().await;
                    let mut w = recorder.window.lock();
                    *w.statuses.entry(status).or_default() += 1;
                    if (200..300).contains(&status) {
                        w.latencies_us.push(started.elapsed().as_micros() as u64);
                        *w.by_upstream.entry(upstream).or_default() += 1;
                    }
                }
                Err(_) => {
                    recorder.window.lock().errors += 1;
                    break;
                }
            }
        }
    }
}
