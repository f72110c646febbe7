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
//! The modules follow wasmtime's Engine / Module / Linker / Store split, and depend on each other one way:
//! the data types at the bottom (`limits`, `error`, `types`, `abi`, `candidates`, `codec`, `callout`,
//! `services`, `budget`, `metrics`, `shared`), then `context` (an instance's stream contexts) and `store` (its
//! host state), `memory` (guest memory access), `host` (one file per hostcall group), `linker`, `module`,
//! `engine`, `instance` (one VM), `spec`, `worker` (the instances a worker thread owns), `pool` (a plugin
//! version's instances), `deliver` (work outside the phases: callouts, queues, ticks), `stream` (a request's
//! phases), `pause` and `select`. `LIFECYCLE.md` beside them tells how contexts, instance generations, ownership,
//! failures, restarts and pauses fit together.
//!
//! See `plugins/README.md` for the ABI coverage table and the upstream-selection extension. Bundled plugins
//! (`builtin:router`, `builtin:balancer`) are available through [`builtin`].

mod abi;
mod budget;
mod builtin;
mod callout;
mod candidates;
mod codec;
mod context;
mod deliver;
mod engine;
mod error;
mod host;
mod instance;
pub mod limits;
mod linker;
mod memory;
mod metrics;
mod module;
mod pause;
mod phase_data;
mod pool;
mod request_head;
mod select;
mod services;
mod shared;
mod spec;
mod store;
mod stream;
mod types;
mod worker;

pub use builtin::{builtin, router_upstreams, BUILTIN_NAMES};
pub use callout::{CalloutResponder, HttpCallRejected, HttpCallRequest, HttpCallResponse};
pub use candidates::{
    address_hash, candidate_fingerprint, candidates_version, AddressHasher, AddressMap, Candidate, CandidateList,
    CandidateLoad, CandidateSource,
};
pub use codec::{deserialize_map, encode_candidates, serialize_map};
pub use deliver::WorkSignal;
pub use engine::PluginEngine;
pub use error::{Cause, FailureKind, PluginError, PluginFailure};
pub use module::{AbiVersion, CompiledModule};
pub use pool::{Plugin, PluginHandle};
pub use request_head::Head;
pub use services::{DefaultHostServices, HostServices};
pub use spec::PluginSpec;
pub use stream::HttpStream;
pub use types::{
    FailPolicy, FilterAction, HeaderMap, LocalResponse, LogLevel, RequestFacts, RequestInfo, Resumption,
    TrafficDirection,
};
pub use worker::{enter_worker, forget_unloaded};
