//! The plugin host's integration tests, one binary (as wasmtime's `tests/all`): one link instead of one per
//! file. Each module is named by the behaviour it covers; `support` holds the shared WAT prelude and services.
#![allow(clippy::unwrap_used)]

mod arena;
mod builtin_balancer;
mod builtin_router;
mod c_plugin;
mod example_latency_balancer;
mod failures;
mod http;
mod lifecycle;
mod request_head;
mod sdk_assemblyscript;
mod streams;
mod support;
mod workers;
