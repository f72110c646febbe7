//! What recording a trace costs a request on the data path, measured piece by piece, and what encoding a batch
//! costs the exporter (off the data path). `cargo bench -p portico --bench span`; the figures and the choice
//! they support are in the README ("OpenTelemetry traces").
//!
//! - `traceparent/parse` is what every request paid before traces existed (the trace context is kept anyway).
//! - `sample/out` is the extra for a request that head sampling leaves out.
//! - `record/one_attempt` is the extra for a sampled request with one upstream attempt: sampling, the record
//!   (method, URI, Host, listener and upstream handles), the attempt's span id and `traceparent` value, and the
//!   hand-off to the exporter's queue (drained by another thread, as the exporter task does).
//! - `export/encode_512` is the exporter's protobuf encoding of a full batch.

// criterion's macros make undocumented functions.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portico::config::telemetry::TelemetryConfig;
use portico::listen::ListenerRuntime;
use portico::telemetry::span::RequestSpan;
use portico::telemetry::{otlp, Tracer};
use portico::trace_context::TraceContext;
use portico::upstream::{Member, Rebuild, Upstream};
use std::sync::Arc;
use std::time::Instant;

const CALLER: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn setup() -> (Arc<ListenerRuntime>, Arc<Upstream>) {
    let config = portico::config::parse(
        "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         [[upstream]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n",
    )
    .unwrap_or_else(|e| panic!("bench config: {e:?}"));
    let listener = Arc::new(ListenerRuntime { config: config.listeners[0].clone(), tls: None, access_log: None });
    let members = ["127.0.0.1:1", "127.0.0.1:2"]
        .iter()
        .map(|a| Member::fixed(a.to_string(), a.parse().unwrap_or_else(|e| panic!("{e}")), 1))
        .collect();
    let upstream = Upstream::new(config.upstreams[0].clone(), members, None, 1, Rebuild::Load);
    let upstream = Arc::new(upstream.unwrap_or_else(|e| panic!("{e}")));
    (listener, upstream)
}

fn tracer(ratio: f64) -> Tracer {
    let config = TelemetryConfig {
        traces_url: http::Uri::from_static("http://127.0.0.1:4318/v1/traces"),
        service_name: "portico".into(),
        sample_ratio: ratio,
    };
    let dropped = prometheus::IntCounter::new("dropped", "dropped").unwrap_or_else(|e| panic!("{e}"));
    let (tracer, mut spans) = Tracer::new(config, portico::telemetry::QUEUE_CAPACITY, dropped);
    // The exporter's side: take spans off the queue as fast as they come.
    std::thread::spawn(move || while spans.blocking_recv().is_some() {});
    tracer
}

fn request() -> http::Request<()> {
    http::Request::get("/api/items/42?page=2")
        .header("host", "shop.example")
        .header("traceparent", std::str::from_utf8(CALLER).unwrap_or_default())
        .body(())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn record(c: &mut Criterion) {
    let (listener, upstream) = setup();
    let addr: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap_or_else(|e| panic!("{e}"));
    let req = request();
    c.bench_function("traceparent/parse", |b| b.iter(|| black_box(TraceContext::from_traceparent(Some(CALLER)))));

    let never = tracer(0.0);
    c.bench_function("sample/out", |b| {
        let mut trace = TraceContext::from_traceparent(None);
        b.iter(|| {
            trace.flags = 1;
            trace.parent_id = None;
            black_box(never.sample(&mut trace))
        })
    });

    let always = tracer(1.0);
    c.bench_function("record/one_attempt", |b| {
        let trace = TraceContext::from_traceparent(Some(CALLER));
        b.iter(|| {
            let mut trace = trace;
            if !always.sample(&mut trace) {
                return;
            }
            let start = Instant::now();
            let mut span = Box::new(RequestSpan::start(trace, start, &req, addr, addr, false, listener.clone()));
            span.upstream = Some(upstream.clone());
            let id = span.begin_attempt(0, "/bench");
            black_box(span.trace.traceparent_for(id));
            span.end_attempt(Some(200), None);
            span.finish(200);
            always.submit(span);
        })
    });
}

fn encode(c: &mut Criterion) {
    let (listener, upstream) = setup();
    let addr: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap_or_else(|e| panic!("{e}"));
    let req = request();
    let batch: Vec<Box<RequestSpan>> = (0..512)
        .map(|_| {
            let trace = TraceContext::from_traceparent(Some(CALLER));
            let mut span =
                Box::new(RequestSpan::start(trace, Instant::now(), &req, addr, addr, false, listener.clone()));
            span.upstream = Some(upstream.clone());
            span.begin_attempt(0, "/bench");
            span.end_attempt(Some(200), None);
            span.finish(200);
            span
        })
        .collect();
    let resource = otlp::resource("portico");
    c.bench_function("export/encode_512", |b| {
        b.iter(|| black_box(prost::Message::encode_to_vec(&otlp::request(&resource, &batch))))
    });
}

criterion_group!(benches, record, encode);
criterion_main!(benches);
