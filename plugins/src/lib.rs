//! Portico's WebAssembly plugin host: runs proxy-wasm ABI 0.2.1 (and 0.2.0) plugins built with the public
//! proxy-wasm SDKs (Rust, Go, C++, AssemblyScript) on wasmtime, with a synchronous per-request API.
//!
//! Lifecycle for the proxy:
//! 1. [`PluginEngine::new`] once at startup.
//! 2. [`Plugin::load`] on a blocking thread for every plugin version (compile + instantiate + configure).
//! 3. Per request: [`Plugin::new_stream`], then the `on_*` methods of [`HttpStream`] from the request path.
//!    A [`PluginFailure`] means: apply [`Plugin::fail_policy`].
//! 4. One task per plugin calls [`Plugin::run_ticks`] for `proxy_on_tick` and deferred queue notifications.
//!
//! See `plugins/README.md` for the ABI coverage table and the upstream-selection extension. Bundled plugins
//! (`builtin:router`, `builtin:balancer`) are available through [`builtin`].

mod builtin;
mod codec;
mod engine;
mod error;
mod host;
pub mod limits;
mod memory;
mod plugin;
mod services;
mod types;

pub use builtin::{builtin, router_upstreams, BUILTIN_NAMES};
pub use codec::{deserialize_map, encode_candidates, serialize_map};
pub use engine::{AbiVersion, CompiledModule, PluginEngine};
pub use error::{FailureKind, PluginError, PluginFailure};
pub use plugin::{prefer_instance, CalloutResponder, HttpStream, Plugin, PluginHandle, PluginSpec};
pub use services::{DefaultHostServices, HostServices};
pub use types::{
    address_hash, candidate_fingerprint, candidates_version, Candidate, CandidateList, CandidateLoad, CandidateSource,
    FailPolicy, FilterAction, HeaderMap, HttpCallRejected, HttpCallRequest, HttpCallResponse, LocalResponse, LogLevel,
    RequestInfo, Resumption, TrafficDirection,
};
