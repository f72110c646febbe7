//! The batch exporter: a task on the control runtime that takes finished spans off the queue, up to
//! [`MAX_BATCH`] requests or [`FLUSH_EVERY`] after the first, encodes them as one OTLP request and posts it.
//!
//! One post at a time, each bounded by [`EXPORT_TIMEOUT`]: while a collector is slow or down, spans wait in
//! the bounded queue and then are dropped there, so memory stays bounded and the data path never notices. A
//! post that fails is not retried: its batch is dropped and counted (a collector that is back takes the next).

use super::otlp;
use super::span::RequestSpan;
use super::TelemetryMetrics;
use crate::body::RequestBody;
use crate::config::telemetry::TelemetryConfig;
use hyper_util::client::legacy::connect::HttpConnector;
use prost::Message;
use std::time::Duration;
use tokio::sync::mpsc;

/// The HTTP client posts go through (Portico's plain-HTTP client, shared with webhooks).
pub type Client = hyper_util::client::legacy::Client<HttpConnector, RequestBody>;

/// Requests (each a server span and its attempt spans) per post, at most.
pub const MAX_BATCH: usize = 512;

/// A batch is posted at the latest this long after its first span was queued.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A post that has not been answered by then fails.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Posts batches to one receiver.
#[derive(Debug)]
pub struct Exporter {
    url: http::Uri,
    resource: otlp::Resource,
    client: Client,
    metrics: TelemetryMetrics,
}

impl Exporter {
    /// An exporter for `config`'s receiver.
    pub fn new(config: &TelemetryConfig, client: Client, metrics: TelemetryMetrics) -> Exporter {
        Exporter { url: config.traces_url.clone(), resource: otlp::resource(&config.service_name), client, metrics }
    }

    /// Runs until the queue is closed (its tracer replaced or stopped) and drained.
    pub async fn run(self, mut spans: mpsc::Receiver<Box<RequestSpan>>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // Logged when export starts failing and when it works again, not once a batch.
        let mut failing = false;
        loop {
            if spans.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                match tokio::time::timeout_at(deadline, spans.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            match self.post(&batch).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(url = %self.url, "trace export works again");
                }
                Err(reason) if !failing => {
                    failing = true;
                    tracing::warn!(url = %self.url, %reason, "trace export failed; batches are dropped until it works again");
                }
                _ => {}
            }
            batch.clear();
        }
    }

    /// Encodes and posts one batch; counts what the receiver took or what was lost.
    async fn post(&self, batch: &[Box<RequestSpan>]) -> Result<(), String> {
        let spans = batch.iter().map(|r| r.span_count()).sum::<u64>();
        let body = otlp::request(&self.resource, batch).encode_to_vec();
        let request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(RequestBody::Full(Some(bytes::Bytes::from(body))));
        let outcome = match request {
            Ok(request) => match tokio::time::timeout(EXPORT_TIMEOUT, self.client.request(request)).await {
                Ok(Ok(response)) if response.status().is_success() => Ok(()),
                Ok(Ok(response)) => Err(format!("the receiver answered {}", response.status())),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
            },
            Err(e) => Err(e.to_string()),
        };
        match &outcome {
            Ok(()) => self.metrics.exported.inc_by(spans),
            Err(_) => {
                self.metrics.export_failures.inc();
                self.metrics.dropped_export_failed.inc_by(spans);
            }
        }
        outcome
    }
}
