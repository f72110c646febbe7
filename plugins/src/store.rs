//! The state of one wasmtime `Store` (one plugin instance): its root and stream contexts, what hostcalls read
//! and write, and the plugin-wide part every instance of a version shares ([`PluginCore`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus::{Histogram, IntCounter};
use wasmtime::{Memory, ResourceLimiter, Result, Trap, TypedFunc};

use crate::abi::*;
use crate::budget::CpuBudget;
use crate::callout::{CalloutSink, HttpCallResponse};
use crate::candidates::CandidateSource;
use crate::error::{FailureKind, HostTrap, PluginFailure};
use crate::metrics::{EngineMetrics, GuestMetrics};
use crate::services::HostServices;
use crate::shared::{QueueSink, SharedState};
use crate::types::{HeaderMap, LocalResponse, RequestInfo, Resumption};

/// Memory cap for one instance. Exceeding it traps with [`HostTrap::MemoryLimit`] so the failure is
/// classified as `Memory` (instead of the guest seeing -1 and aborting with an unrelated trap).
pub(crate) struct MemLimiter {
    pub limit: usize,
}

impl ResourceLimiter for MemLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        if desired > self.limit {
            return Err(HostTrap::MemoryLimit { limit: self.limit, desired }.into());
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Shared between an [`crate::HttpStream`] and its context inside the store: how a paused stream resumes.
#[derive(Default)]
pub(crate) struct StreamSignal {
    pub state: Mutex<Option<Resumption>>,
    pub notify: tokio::sync::Notify,
}

impl StreamSignal {
    pub fn post(&self, r: Resumption) {
        let mut s = self.state.lock();
        // A local response or close wins over a plain continue.
        if !matches!((&*s, &r), (Some(Resumption::LocalResponse(_) | Resumption::Close), Resumption::Continue)) {
            *s = Some(r);
        }
        drop(s);
        self.notify.notify_one();
    }
}

/// Inputs for the upstream selection callback.
pub(crate) struct SelectInput {
    pub group: String,
    /// Where the candidates come from; encoded only if the plugin reads them.
    pub source: Arc<dyn CandidateSource>,
    pub failed: Option<String>,
}

/// Hasher for context ids. They are assigned by the host (sequential per instance); a guest can only look
/// one up (`proxy_set_effective_context`), never insert one, so the map needs no flood-resistant SipHash,
/// which cost ~2 % of a request in `perf` (a phase and every stream hostcall look the context up).
#[derive(Default, Clone, Copy)]
pub(crate) struct ContextIdHasher(u64);

impl std::hash::Hasher for ContextIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        // Fibonacci hashing: spreads sequential ids over the high bits hashbrown uses for its tags.
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Map keyed by context id (see [`ContextIdHasher`]).
pub(crate) type ContextMap<V> = HashMap<u32, V, std::hash::BuildHasherDefault<ContextIdHasher>>;

/// Per-stream (HTTP context) state visible to hostcalls.
pub(crate) struct StreamState {
    /// Shared by every plugin of the request's chain.
    pub info: Arc<RequestInfo>,
    pub request_headers: HeaderMap,
    pub request_trailers: HeaderMap,
    pub response_headers: HeaderMap,
    pub response_trailers: HeaderMap,
    /// Bit `1 << map type` set when a hostcall changed that header map (cleared when a phase loads it), so a
    /// phase copies the map back to the caller only when the plugin changed it.
    pub modified: u8,
    pub request_body: Bytes,
    pub request_eos: bool,
    pub response_body: Bytes,
    pub response_eos: bool,
    pub properties: HashMap<String, Vec<u8>>,
    /// True while an `HttpStream` method is running a callback for this context.
    pub in_band: bool,
    pub local_response: Option<LocalResponse>,
    pub close: bool,
    /// `proxy_continue_stream` called during the callback itself: a returned Pause is already resumed.
    pub continued: bool,
    pub selected_upstream: Option<String>,
    pub routed_upstream: Option<String>,
    pub select: Option<SelectInput>,
    pub signal: Arc<StreamSignal>,
    /// Set by `proxy_http_call` made in this context: only then does deleting the stream have callouts to
    /// forget (the callout table is shared by every worker, so it is not locked for nothing).
    pub called_out: bool,
}

impl StreamState {
    pub fn new(info: Arc<RequestInfo>, signal: Arc<StreamSignal>) -> Self {
        StreamState {
            info,
            request_headers: Vec::new(),
            request_trailers: Vec::new(),
            response_headers: Vec::new(),
            response_trailers: Vec::new(),
            modified: 0,
            request_body: Bytes::new(),
            request_eos: false,
            response_body: Bytes::new(),
            response_eos: false,
            properties: HashMap::new(),
            in_band: false,
            local_response: None,
            close: false,
            continued: false,
            selected_upstream: None,
            routed_upstream: None,
            select: None,
            signal,
            called_out: false,
        }
    }
}

/// The data of one wasmtime `Store`: one plugin instance (VM) with its root context and stream contexts.
pub(crate) struct HostState {
    pub limiter: MemLimiter,
    pub core: Arc<PluginCore>,
    pub memory: Option<Memory>,
    /// The guest allocator, shared so a hostcall can call it without cloning the `TypedFunc`.
    pub alloc: Option<Arc<TypedFunc<i32, i32>>>,
    pub slot: usize,
    pub generation: u64,
    pub root_context: u32,
    /// Context hostcalls act on (`proxy_set_effective_context` changes it).
    pub current: u32,
    pub streams: ContextMap<StreamState>,
    /// Header maps of deleted streams, kept so the next streams' copies reuse their strings' buffers (see
    /// [`copy_headers`]). Never visible to a guest: a map leaves this list only by being overwritten.
    pub spare_maps: Vec<HeaderMap>,
    pub root_properties: HashMap<String, Vec<u8>>,
    /// Callout response while `proxy_on_http_call_response` runs.
    pub callout: Option<HttpCallResponse>,
    pub tick_period: Option<Duration>,
    /// xorshift64 state choosing which callbacks are timed (see [`HostState::sample_timing`]); never zero.
    pub timing_rng: u64,
    /// Set by WASI `proc_exit`: `_start` ending in `proc_exit(0)` is a normal exit for WASI commands.
    pub exit_code: Option<i32>,
    /// `portico_plugin_callbacks_total` for this instance (see [`crate::engine`]: a counter per instance).
    pub callbacks: prometheus::IntCounter,
    /// Buffers the hot hostcalls reuse instead of allocating per call: the key or property path a guest
    /// passes in, a value it passes in, and the answer handed back (see [`crate::memory::return_scratch`]).
    /// Taken out of the state for the length of one hostcall and put back.
    pub scratch_key: String,
    pub scratch_value: Vec<u8>,
    pub scratch_out: Vec<u8>,
    /// Last message the guest logged at error level or above: quoted in load errors so a refused
    /// configuration says why (plugins explain with `proxy_log` before returning false).
    pub last_error_log: Option<String>,
    /// The running callback's CPU budget (see [`crate::budget`]).
    pub cpu_budget: CpuBudget,
}

/// One callback in this many (on average) is timed for `portico_plugin_callback_seconds`. A power of two.
pub(crate) const TIMING_SAMPLE: u64 = 8;

impl HostState {
    /// Whether to time the next callback. Reading the clock twice per callback (~2 x 30 ns of vDSO
    /// `clock_gettime` here) plus the histogram's shared atomics cost ~10 % of a short request, more than the
    /// guest's own work for simple filters; a random 1 in [`TIMING_SAMPLE`] keeps the distribution (random,
    /// so it cannot alias with the fixed number of callbacks per request) at an eighth of the cost. The
    /// callbacks counter still counts every callback.
    pub fn sample_timing(&mut self) -> bool {
        let mut x = self.timing_rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.timing_rng = x;
        x & (TIMING_SAMPLE - 1) == 0
    }

    pub(crate) fn stream(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.current)
    }

    pub(crate) fn map(&self, t: i32) -> Result<Option<&HeaderMap>, i32> {
        let s = self.streams.get(&self.current);
        Ok(match t {
            MAP_REQUEST_HEADERS => s.map(|s| &s.request_headers),
            MAP_REQUEST_TRAILERS => s.map(|s| &s.request_trailers),
            MAP_RESPONSE_HEADERS => s.map(|s| &s.response_headers),
            MAP_RESPONSE_TRAILERS => s.map(|s| &s.response_trailers),
            MAP_GRPC_INITIAL_METADATA | MAP_GRPC_TRAILING_METADATA => None,
            MAP_HTTP_CALL_RESPONSE_HEADERS => self.callout.as_ref().map(|c| &c.headers),
            MAP_HTTP_CALL_RESPONSE_TRAILERS => self.callout.as_ref().map(|c| &c.trailers),
            _ => return Err(BAD_ARGUMENT),
        })
    }

    /// The map a hostcall is about to change; a stream's map is marked modified (see [`StreamState::modified`]).
    pub(crate) fn map_mut(&mut self, t: i32) -> Result<&mut HeaderMap, i32> {
        let current = self.current;
        let mut s = self.streams.get_mut(&current);
        if let Some(s) = s.as_deref_mut() {
            if (MAP_REQUEST_HEADERS..=MAP_RESPONSE_TRAILERS).contains(&t) {
                s.modified |= 1 << t;
            }
        }
        match t {
            MAP_REQUEST_HEADERS => s.map(|s| &mut s.request_headers).ok_or(NOT_FOUND),
            MAP_REQUEST_TRAILERS => s.map(|s| &mut s.request_trailers).ok_or(NOT_FOUND),
            MAP_RESPONSE_HEADERS => s.map(|s| &mut s.response_headers).ok_or(NOT_FOUND),
            MAP_RESPONSE_TRAILERS => s.map(|s| &mut s.response_trailers).ok_or(NOT_FOUND),
            MAP_HTTP_CALL_RESPONSE_HEADERS => self.callout.as_mut().map(|c| &mut c.headers).ok_or(NOT_FOUND),
            MAP_HTTP_CALL_RESPONSE_TRAILERS => self.callout.as_mut().map(|c| &mut c.trailers).ok_or(NOT_FOUND),
            MAP_GRPC_INITIAL_METADATA | MAP_GRPC_TRAILING_METADATA => Err(NOT_FOUND),
            _ => Err(BAD_ARGUMENT),
        }
    }

    pub(crate) fn buffer(&self, t: i32) -> Result<(Bytes, bool), i32> {
        let s = self.streams.get(&self.current);
        match t {
            BUF_REQUEST_BODY => s.map(|s| (s.request_body.clone(), s.request_eos)).ok_or(NOT_FOUND),
            BUF_RESPONSE_BODY => s.map(|s| (s.response_body.clone(), s.response_eos)).ok_or(NOT_FOUND),
            BUF_HTTP_CALL_RESPONSE_BODY => self.callout.as_ref().map(|c| (c.body.clone(), true)).ok_or(NOT_FOUND),
            BUF_VM_CONFIGURATION => Ok((self.core.vm_config.clone(), true)),
            BUF_PLUGIN_CONFIGURATION => Ok((self.core.config.clone(), true)),
            // Known types with nothing behind them in an HTTP filter (TCP data, gRPC, foreign args).
            2 | 3 | 5 | BUF_FOREIGN_FUNCTION_ARGUMENTS => Err(NOT_FOUND),
            _ => Err(BAD_ARGUMENT),
        }
    }

    pub(crate) fn plugin_name(&self) -> &str {
        &self.core.name
    }
}

/// How many spare header maps an instance keeps, and the most string capacity (bytes) one may hold: enough
/// for the request and response maps of the streams a busy instance interleaves, without pinning the memory
/// of an occasional huge header.
const SPARE_MAPS: usize = 16;
const SPARE_MAP_BYTES: usize = 16 << 10;

impl HostState {
    /// Remove a deleted stream's context, keeping its header maps as spares.
    pub fn remove_stream(&mut self, ctx: u32) {
        let Some(s) = self.streams.remove(&ctx) else { return };
        for m in [s.request_headers, s.response_headers, s.request_trailers, s.response_trailers] {
            if self.spare_maps.len() >= SPARE_MAPS {
                break;
            }
            let bytes: usize = m.iter().map(|(k, v)| k.capacity() + v.capacity()).sum();
            if m.capacity() > 0 && bytes <= SPARE_MAP_BYTES {
                self.spare_maps.push(m);
            }
        }
    }
}

/// Make `dst` equal to `src`, reusing the buffers of `dst`'s strings: copying a request's headers into a
/// recycled map is then a few `memcpy`s instead of two allocations (and later two frees) per header.
pub(crate) fn copy_headers(dst: &mut HeaderMap, src: &[(String, String)]) {
    dst.truncate(src.len());
    for ((dk, dv), (sk, sv)) in dst.iter_mut().zip(src) {
        dk.clone_from(sk);
        dv.clone_from(sv);
    }
    let n = dst.len();
    dst.extend_from_slice(&src[n..]);
}

/// Which context a callout belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CalloutOwner {
    pub slot: usize,
    pub generation: u64,
    pub context: u32,
}

/// Plugin-wide state reachable from hostcalls. It reaches the instance pool only through weak trait objects
/// (where callout answers and queue notifications go), so there is no `Arc` cycle and no dependency on it.
pub(crate) struct PluginCore {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    pub config: Bytes,
    pub vm_config: Bytes,
    pub services: Arc<dyn HostServices>,
    pub shared: Arc<SharedState>,
    pub metrics: Arc<EngineMetrics>,
    pub callout_sink: Weak<dyn CalloutSink>,
    pub queue_sink: Weak<dyn QueueSink>,
    pub callouts: Mutex<HashMap<u32, CalloutOwner>>,
    pub next_token: AtomicU32,
    pub guest_metrics: GuestMetrics,
    pub m_seconds: Histogram,
    pub m_restarts: IntCounter,
}

impl PluginCore {
    pub fn next_token(&self) -> u32 {
        self.next_token.fetch_add(1, Ordering::Relaxed).wrapping_add(1).max(1)
    }

    pub fn failure(&self, kind: FailureKind, message: impl Into<String>) -> PluginFailure {
        PluginFailure { plugin: self.name.clone(), kind, message: message.into() }
    }

    pub fn classify(&self, callback: &str, e: &wasmtime::Error) -> PluginFailure {
        let kind = if let Some(t) = e.downcast_ref::<HostTrap>() {
            match t {
                HostTrap::BadPointer(_) => FailureKind::BadPointer,
                HostTrap::MemoryLimit { .. } => FailureKind::Memory,
                HostTrap::Exit(_) => FailureKind::Trap,
            }
        } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            FailureKind::Timeout
        } else {
            FailureKind::Trap
        };
        let detail = match kind {
            FailureKind::Timeout => "exceeded its CPU deadline".to_string(),
            _ => {
                let root = e.root_cause().to_string();
                let top = e.to_string();
                if root == top {
                    top
                } else {
                    format!("{top}: {root}")
                }
            }
        };
        self.failure(kind, format!("{callback}: {detail}"))
    }
}
