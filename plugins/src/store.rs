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
use crate::budget::{CpuBudget, EpochClock};
use crate::callout::{CalloutSink, HttpCallResponse};
use crate::context::{StreamState, Streams};
use crate::error::{FailureKind, HostTrap, PluginFailure};
use crate::metrics::{EngineMetrics, GuestMetric, GuestMetrics};
use crate::request_head::MapRef;
use crate::services::HostServices;
use crate::shared::{QueueSink, SharedState};
use crate::types::HeaderMap;

/// Memory cap for one instance. A `memory.grow` past it returns -1, as the wasm spec has a refused grow do,
/// so a guest can free memory (a garbage collector runs) or fail its own way; the refusal is remembered, so a
/// trap that follows in the same callback counts as a `memory` failure. A module that asks for more than the
/// cap up front is refused at instantiation with [`HostTrap::MemoryLimit`].
pub(crate) struct MemLimiter {
    pub limit: usize,
    /// The size a grow asked for and was refused, in the callback running now.
    pub refused: Option<usize>,
    /// The module is instantiated: a grow past the cap is refused (-1) from now on, not a failed start.
    pub instantiated: bool,
}

impl ResourceLimiter for MemLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        if desired > self.limit {
            if !self.instantiated {
                return Err(HostTrap::MemoryLimit { limit: self.limit, desired }.into());
            }
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        Ok(desired <= 1_000_000)
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
    pub streams: Streams,
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
    pub scratch_path: Vec<u8>,
    pub scratch_value: Vec<u8>,
    pub scratch_out: Vec<u8>,
    /// Last message the guest logged at error level or above: quoted in load errors so a refused
    /// configuration says why (plugins explain with `proxy_log` before returning false).
    pub last_error_log: Option<String>,
    /// The running callback's CPU budget (see [`crate::budget`]).
    pub cpu_budget: CpuBudget,
    /// Where returned values go without the guest allocator, if the guest registered one.
    pub arena: Option<Arena>,
    /// Where the host writes `portico.upstream.candidates_version` before each `portico_on_upstream_select`,
    /// if the guest registered a place (`portico_set_select_version_slot`): a balancer reads its tables'
    /// version there instead of asking for the property on every pick.
    pub select_version_slot: Option<u32>,
    /// Handles on the metrics the plugin defined, by id - 1, fetched once per instance so that updating
    /// one takes no lock.
    pub metric_handles: Vec<Option<GuestMetric>>,
}

/// Portico's extension to the memory protocol: a region of guest memory the guest registered with
/// `portico_set_return_arena(ptr, len)`, where hostcalls write the values they return instead of calling the
/// guest's allocator for each (a re-entrant call into the guest, and a `free` the guest must make). Values are
/// laid out from the start of the region within each callback and stay valid until the callback returns; one
/// that does not fit is allocated as usual. SDK plugins never register one, and see the ABI unchanged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arena {
    pub base: u32,
    pub len: u32,
    pub used: u32,
}

impl Arena {
    /// Room for `n` bytes (8-aligned), or `None` when the rest of the region is too small.
    pub fn take(&mut self, n: usize) -> Option<u32> {
        let n = u32::try_from(n).ok()?;
        let end = self.used.checked_add(n)?;
        if end > self.len {
            return None;
        }
        let at = self.base.checked_add(self.used)?;
        self.used = end.checked_add(7).map_or(self.len, |e| e & !7).min(self.len);
        Some(at)
    }
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
        self.streams.get_mut(self.current)
    }

    /// The map a hostcall reads; `Ok(None)` reads as empty (the spec's advice for a map not available now).
    pub(crate) fn map(&self, t: i32) -> Result<Option<MapRef<'_>>, i32> {
        Ok(match t {
            MAP_REQUEST_HEADERS..=MAP_RESPONSE_TRAILERS => self.streams.get(self.current).and_then(|s| s.map(t)),
            MAP_GRPC_INITIAL_METADATA | MAP_GRPC_TRAILING_METADATA => None,
            MAP_HTTP_CALL_RESPONSE_HEADERS => self.callout.as_ref().map(|c| MapRef::List(&c.headers)),
            MAP_HTTP_CALL_RESPONSE_TRAILERS => self.callout.as_ref().map(|c| MapRef::List(&c.trailers)),
            _ => return Err(BAD_ARGUMENT),
        })
    }

    /// The map a hostcall is about to change; a stream's map is marked modified (see [`StreamState::modified`]).
    /// A map that was not present (a phase that had no copy of it) starts empty.
    pub(crate) fn map_mut(&mut self, t: i32) -> Result<&mut HeaderMap, i32> {
        match t {
            MAP_REQUEST_HEADERS..=MAP_RESPONSE_TRAILERS => {
                let s = self.streams.get_mut(self.current).ok_or(NOT_FOUND)?;
                let bit = 1 << t;
                let present = s.present & bit != 0;
                s.present |= bit;
                s.modified |= bit;
                if t == MAP_REQUEST_HEADERS && s.lent {
                    return Ok(s.request_list_mut());
                }
                let map = s.map_mut(t).ok_or(BAD_ARGUMENT)?;
                if !present {
                    map.clear();
                }
                Ok(map)
            }
            MAP_HTTP_CALL_RESPONSE_HEADERS => self.callout.as_mut().map(|c| &mut c.headers).ok_or(NOT_FOUND),
            MAP_HTTP_CALL_RESPONSE_TRAILERS => self.callout.as_mut().map(|c| &mut c.trailers).ok_or(NOT_FOUND),
            MAP_GRPC_INITIAL_METADATA | MAP_GRPC_TRAILING_METADATA => Err(NOT_FOUND),
            _ => Err(BAD_ARGUMENT),
        }
    }

    pub(crate) fn buffer(&self, t: i32) -> Result<(Bytes, bool), i32> {
        let s = self.streams.get(self.current);
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

/// Make `dst` equal to `src`, reusing the buffers of `dst`'s strings: copying a request's headers into a
/// recycled map is then a few `memcpy`s instead of two allocations (and later two frees) per header.
/// Returns the bytes copied (names and values).
pub(crate) fn copy_headers(dst: &mut HeaderMap, src: &[(String, String)]) -> usize {
    dst.truncate(src.len());
    let mut bytes = 0;
    for ((dk, dv), (sk, sv)) in dst.iter_mut().zip(src) {
        dk.clone_from(sk);
        dv.clone_from(sv);
        bytes += sk.len() + sv.len();
    }
    let n = dst.len();
    dst.extend_from_slice(&src[n..]);
    bytes + src[n..].iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
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
    /// The engine's epoch clock, which a callback being counted speeds up (see [`crate::budget`]).
    pub clock: Arc<EpochClock>,
    /// Wakes the version's tickers (see [`crate::WorkSignal`]).
    pub tickers: Arc<tokio::sync::Notify>,
    /// The version started (all its first instances did): its failures count from then on. A version that
    /// fails to start is refused with the reason, and its failures are not added to the running version's
    /// (`portico_plugin_failures_total` is by plugin name).
    pub loaded: std::sync::atomic::AtomicBool,
    pub callout_sink: Weak<dyn CalloutSink>,
    pub queue_sink: Weak<dyn QueueSink>,
    pub callouts: Mutex<HashMap<u32, CalloutOwner>>,
    pub next_token: AtomicU32,
    pub guest_metrics: GuestMetrics,
    pub m_seconds: Histogram,
    pub m_restarts: IntCounter,
}

impl Drop for PluginCore {
    fn drop(&mut self) {
        // The version is gone: its metrics' series go with it, unless another loaded version defined them.
        self.guest_metrics.release(&self.metrics, &self.name);
    }
}

impl PluginCore {
    pub fn next_token(&self) -> u32 {
        self.next_token.fetch_add(1, Ordering::Relaxed).wrapping_add(1).max(1)
    }

    pub fn failure(&self, kind: FailureKind, message: impl Into<String>) -> PluginFailure {
        PluginFailure { plugin: self.name.clone(), kind, message: message.into() }
    }

    /// The failure a callback's error is; `refused_grow` is the size a `memory.grow` asked for and was refused
    /// during it (see [`MemLimiter`]): a trap after that is the memory limit's doing.
    pub fn classify(&self, callback: &str, e: &wasmtime::Error, refused_grow: Option<(usize, usize)>) -> PluginFailure {
        let kind = if let Some(t) = e.downcast_ref::<HostTrap>() {
            match t {
                HostTrap::BadPointer(_) => FailureKind::BadPointer,
                HostTrap::MemoryLimit { .. } => FailureKind::Memory,
                HostTrap::Exit(_) => FailureKind::Trap,
            }
        } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            FailureKind::Timeout
        } else if let Some((limit, desired)) = refused_grow {
            let detail = format!("memory limit of {limit} bytes exceeded (a grow to {desired} was refused), then");
            return self.failure(FailureKind::Memory, format!("{callback}: {detail} {e}"));
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
