//! Portico's integration tests: one binary (faster to link), one module per feature. Every test starts real
//! servers on 127.0.0.1:0 and talks to Portico over real sockets.

mod access_log;
mod admin;
mod anomaly;
mod body_limit;
mod browser;
mod builtin;
mod cluster;
mod cluster_rollout;
mod cpp_sdk;
mod dashboard;
mod discovery;
mod forward;
mod h2;
mod hardening;
mod hardening_limits;
mod hardening_requests;
mod metrics;
mod paths;
mod plugin_upload;
mod plugins;
mod process;
mod reload;
mod reverse;
mod rollout;
mod smuggling;
mod support;
mod telemetry;
mod tls;
mod upstream_h1;
mod upstream_h1_upload;
mod vip;
