//! OpenTelemetry traces: one server span per sampled request, a client span per upstream attempt, exported
//! over OTLP/HTTP (protobuf) in batches by a task on the control runtime.
//!
//! The data path only records ([`span`]) and hands the finished record to a bounded queue with `try_send`:
//! it never waits for the exporter, never formats or encodes, and a full queue (a collector that is down or
//! slow) drops the span and counts it. The exporter ([`export`]) turns batches into OTLP ([`otlp`]) and posts
//! them; a failed post drops its batch and counts it. A collector that is down therefore costs neither time
//! nor a failed request.

pub mod export;
pub mod otlp;
pub mod span;

use crate::config::telemetry::TelemetryConfig;
use crate::listen::{ConnInfo, ListenerRuntime};
use crate::trace_context::TraceContext;
use arc_swap::ArcSwapOption;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use span::RequestSpan;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Spans waiting for the exporter, at most; beyond that they are dropped (`reason="queue_full"`).
pub const QUEUE_CAPACITY: usize = 4096;

/// Counters of the export path.
#[derive(Debug, Clone)]
pub struct TelemetryMetrics {
    /// `portico_telemetry_spans_exported_total`: spans a receiver accepted.
    pub exported: IntCounter,
    /// `portico_telemetry_spans_dropped_total{reason="queue_full"}`.
    pub dropped_queue_full: IntCounter,
    /// `portico_telemetry_spans_dropped_total{reason="export_failed"}`.
    pub dropped_export_failed: IntCounter,
    /// `portico_telemetry_export_failures_total`: posts that failed (refused, timed out, unreachable).
    pub export_failures: IntCounter,
}

impl TelemetryMetrics {
    /// Registers the counters.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let exported = IntCounter::new(
            "portico_telemetry_spans_exported_total",
            "Spans (server and attempt spans) an OTLP receiver accepted.",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "portico_telemetry_spans_dropped_total",
                "Spans dropped: the export queue was full, or the receiver did not take their batch.",
            ),
            &["reason"],
        )?;
        let export_failures =
            IntCounter::new("portico_telemetry_export_failures_total", "OTLP export posts that failed.")?;
        registry.register(Box::new(exported.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(export_failures.clone()))?;
        Ok(TelemetryMetrics {
            exported,
            dropped_queue_full: dropped.with_label_values(&["queue_full"]),
            dropped_export_failed: dropped.with_label_values(&["export_failed"]),
            export_failures,
        })
    }
}

/// The data path's end of one exporter: the sampling ratio and the queue.
#[derive(Debug)]
pub struct Tracer {
    config: TelemetryConfig,
    queue: mpsc::Sender<Box<RequestSpan>>,
    dropped: IntCounter,
}

impl Tracer {
    /// A tracer and the receiving end of its queue (for [`export::run`], or a benchmark's drain).
    pub fn new(
        config: TelemetryConfig,
        capacity: usize,
        dropped: IntCounter,
    ) -> (Tracer, mpsc::Receiver<Box<RequestSpan>>) {
        let (queue, spans) = mpsc::channel(capacity.max(1));
        (Tracer { config, queue, dropped }, spans)
    }

    /// Whether to record a request: the caller's decision when it sent one, else `sample_ratio`. The
    /// decision goes into the trace flags, so the upstream follows it.
    pub fn sample(&self, trace: &mut TraceContext) -> bool {
        if trace.parent_id.is_none() {
            let ratio = self.config.sample_ratio;
            let sampled = ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio);
            trace.flags = if sampled { trace.flags | 0x01 } else { trace.flags & !0x01 };
        }
        trace.sampled()
    }

    /// Hands a finished span to the exporter, or drops and counts it when the queue is full.
    pub fn submit(&self, span: Box<RequestSpan>) {
        if let Err(full) = self.queue.try_send(span) {
            let span = match full {
                mpsc::error::TrySendError::Full(span) | mpsc::error::TrySendError::Closed(span) => span,
            };
            self.dropped.inc_by(span.span_count());
        }
    }
}

/// Trace export as configured now: swapped on reload when `[telemetry]` changes.
#[derive(Debug)]
pub struct Telemetry {
    /// Counters, registered once.
    pub metrics: TelemetryMetrics,
    current: ArcSwapOption<Tracer>,
    /// The exporter task of the current tracer, stopped when it is replaced.
    task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Telemetry {
    /// Off until [`Telemetry::configure`] is given a `[telemetry]` table.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Telemetry {
            metrics: TelemetryMetrics::register(registry)?,
            current: ArcSwapOption::empty(),
            task: parking_lot::Mutex::new(None),
        })
    }

    /// Starts, replaces or stops export to match `config` (unchanged: nothing happens). The exporter runs on
    /// the calling runtime (the control runtime); a replaced one posts what it still holds, then ends.
    pub fn configure(&self, config: Option<&TelemetryConfig>, client: export::Client) {
        let running = self.current.load();
        if running.as_ref().map(|t| &t.config) == config {
            return;
        }
        let Some(config) = config else {
            self.current.store(None);
            self.task.lock().take();
            return;
        };
        let (tracer, spans) = Tracer::new(config.clone(), QUEUE_CAPACITY, self.metrics.dropped_queue_full.clone());
        let exporter = export::Exporter::new(config, client, self.metrics.clone());
        let task = tokio::spawn(exporter.run(spans));
        self.current.store(Some(Arc::new(tracer)));
        // The old tracer's queue closes when the last request holding it ends; its task then drains and ends.
        self.task.lock().replace(task);
        tracing::info!(endpoint = %config.traces_url, service = %config.service_name, ratio = config.sample_ratio, "exporting traces over OTLP/HTTP");
    }

    /// Starts recording the request if traces are exported and it is sampled.
    pub fn start<B>(
        &self,
        trace: &mut TraceContext,
        start: Instant,
        request: &http::Request<B>,
        conn: &ConnInfo,
        listener: &Arc<ListenerRuntime>,
    ) -> Option<Box<RequestSpan>> {
        let tracer = self.current.load();
        let tracer = tracer.as_ref()?;
        if !tracer.sample(trace) {
            return None;
        }
        let span = RequestSpan::start(*trace, start, request, conn.peer, conn.local, conn.tls, listener.clone());
        Some(Box::new(span))
    }

    /// Hands a finished span to the current exporter.
    pub fn submit(&self, span: Box<RequestSpan>) {
        match self.current.load().as_ref() {
            Some(tracer) => tracer.submit(span),
            // Export was switched off while the request ran.
            None => self.metrics.dropped_queue_full.inc_by(span.span_count()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ratio: f64) -> TelemetryConfig {
        TelemetryConfig {
            traces_url: http::Uri::from_static("http://127.0.0.1:4318/v1/traces"),
            service_name: "portico".into(),
            sample_ratio: ratio,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() -> Result<(), Box<dyn std::error::Error>> {
        let metrics = TelemetryMetrics::register(&Registry::new())?;
        let (tracer, mut spans) = Tracer::new(config(1.0), 2, metrics.dropped_queue_full.clone());
        let parsed = crate::config::parse(
            "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
             [[upstream]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]\n",
        )
        .map_err(|e| format!("{e:?}"))?;
        let config = parsed.listeners.into_iter().next().ok_or("no listener")?;
        let listener = Arc::new(ListenerRuntime { config, tls: None, access_log: None });
        let request = http::Request::get("/").body(())?;
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse()?;
        for _ in 0..5 {
            let trace = TraceContext::from_traceparent(None);
            let span = RequestSpan::start(trace, Instant::now(), &request, addr, addr, false, listener.clone());
            tracer.submit(Box::new(span));
        }
        assert_eq!(metrics.dropped_queue_full.get(), 3, "three server spans without attempts");
        assert!(spans.try_recv().is_ok() && spans.try_recv().is_ok() && spans.try_recv().is_err());
        Ok(())
    }

    #[test]
    fn the_callers_decision_wins_and_new_traces_follow_the_ratio() {
        let counter = IntCounter::new("x", "x").ok();
        let Some(counter) = counter else { return };
        let (never, _rx) = Tracer::new(config(0.0), 1, counter.clone());
        let mut fresh = TraceContext::from_traceparent(None);
        assert!(!never.sample(&mut fresh));
        assert!(fresh.traceparent().as_bytes().ends_with(b"-00"), "the upstream is told it is not sampled");
        let mut sampled =
            TraceContext::from_traceparent(Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(never.sample(&mut sampled), "a sampled caller is recorded whatever the ratio");
        let (always, _rx) = Tracer::new(config(1.0), 1, counter);
        let mut unsampled =
            TraceContext::from_traceparent(Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
        assert!(!always.sample(&mut unsampled), "an unsampled caller is not recorded");
    }
}
