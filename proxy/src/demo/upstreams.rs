//! Demo upstream servers: small HTTP services on loopback that answer with their name after a short, slightly
//! variable delay, and can be switched off and on to show failover. The recorder (`record.rs`) also turns their
//! extra latency, random jitter and 5xx rate to inject faults.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A running demo upstream.
#[derive(Debug)]
pub struct DemoUpstream {
    /// Its name, returned in `x-demo-upstream`.
    pub name: String,
    /// Where it listens.
    pub address: SocketAddr,
    down: Arc<AtomicBool>,
    /// Extra latency in microseconds (fault injection).
    pub extra_latency_us: Arc<AtomicU64>,
    /// Uniform random extra delay of 0..this many microseconds per request, so latency series have noise.
    pub jitter_us: Arc<AtomicU64>,
    /// Answers 500 to this many requests in a thousand (error-burst injection); health checks stay 200.
    pub error_per_mille: Arc<AtomicU64>,
}

impl DemoUpstream {
    /// Starts one on 127.0.0.1 with an ephemeral port.
    pub async fn start(name: &str, base_latency: Duration) -> std::io::Result<DemoUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let down = Arc::new(AtomicBool::new(false));
        let extra = Arc::new(AtomicU64::new(0));
        let jitter = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (label, down_flag, extra_latency) = (name.to_string(), down.clone(), extra.clone());
        let (jitter_us, error_per_mille) = (jitter.clone(), errors.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                if down_flag.load(Ordering::Relaxed) {
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let (label, down_flag, extra_latency) = (label.clone(), down_flag.clone(), extra_latency.clone());
                let (jitter_us, error_per_mille) = (jitter_us.clone(), error_per_mille.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let label = label.clone();
                        let down = down_flag.load(Ordering::Relaxed);
                        let health = req.uri().path() == "/health";
                        let jitter = match jitter_us.load(Ordering::Relaxed) {
                            0 => 0,
                            j => rand::thread_rng().gen_range(0..j),
                        };
                        let extra = Duration::from_micros(extra_latency.load(Ordering::Relaxed) + jitter);
                        let fail =
                            !health && rand::thread_rng().gen_range(0..1000) < error_per_mille.load(Ordering::Relaxed);
                        async move {
                            if !extra.is_zero() || !base_latency.is_zero() {
                                tokio::time::sleep(base_latency + extra).await;
                            }
                            let status = if down {
                                503
                            } else if fail {
                                500
                            } else {
                                200
                            };
                            let body = if health { "ok\n".to_string() } else { format!("hello from {label}\n") };
                            Response::builder()
                                .status(status)
                                .header("x-demo-upstream", label.as_str())
                                .header("content-type", "text/plain")
                                .body(Full::new(Bytes::from(body)))
                        }
                    });
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(DemoUpstream {
            name: name.to_string(),
            address,
            down,
            extra_latency_us: extra,
            jitter_us: jitter,
            error_per_mille: errors,
        })
    }

    /// Makes it refuse new connections and answer 503 on open ones (a crashed or overloaded service).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }
}
