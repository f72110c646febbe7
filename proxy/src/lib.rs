//! Portico: an edge proxy. The modules follow a request's life: [`listen`] accepts (with [`tls`]),
//! [`forward`] handles the request ([`h1`] is Portico's own HTTP/1 codec), [`route`] picks the upstream group, [`upstream`] picks the endpoint and
//! holds the pool (its exchanges bounded by [`timeout`]), [`discovery`] keeps its endpoint list following DNS and registrations, [`health`] watches
//! endpoints; [`admin`], [`metrics`], [`stats`] (the dashboard's history) and [`telemetry`] (OpenTelemetry
//! traces) are for operators; [`server`] holds it all together across reloads; [`config`] is read once and
//! validated.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod forward;
pub mod h1;
pub mod health;
pub mod listen;
pub mod metrics;
pub mod observe;
pub mod plugin;
pub mod route;
pub mod server;
pub mod stats;
pub mod telemetry;
pub mod timeout;
pub mod tls;
pub mod trace_context;
pub mod upstream;
pub mod watch;

pub use server::{Server, ServerError};
