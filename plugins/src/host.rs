//! Store state and every host function linked into plugin instances (`env.proxy_*` and WASI preview1).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime::{Engine, IntoFunc, Linker, Memory, ResourceLimiter, Result, TypedFunc};

use crate::codec;
use crate::error::HostTrap;
use crate::memory::{self as mem, Ctx};
use crate::plugin::{CalloutOwner, PluginCore};
use crate::types::abi::*;
use crate::types::{
    HeaderMap, HttpCallRejected, HttpCallRequest, HttpCallResponse, LocalResponse, LogLevel, RequestInfo, Resumption,
};

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
    pub source: std::sync::Arc<dyn crate::types::CandidateSource>,
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
    /// The running callback's CPU budget (see [`crate::plugin::CpuBudget`]).
    pub cpu_budget: crate::plugin::CpuBudget,
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

    fn stream(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.current)
    }

    fn map(&self, t: i32) -> Result<Option<&HeaderMap>, i32> {
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
    fn map_mut(&mut self, t: i32) -> Result<&mut HeaderMap, i32> {
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

    fn buffer(&self, t: i32) -> Result<(Bytes, bool), i32> {
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

    fn plugin_name(&self) -> &str {
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

/// Reject header names/values that could smuggle extra headers or break framing (CR, LF, NUL).
fn valid_header(key: &str, value: &str) -> bool {
    let bad = |c: char| matches!(c, '\r' | '\n' | '\0');
    !key.is_empty() && !key.contains(bad) && !value.contains(bad)
}

fn header_get<'a>(map: &'a HeaderMap, key: &str) -> Option<&'a str> {
    map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
}

pub(crate) fn header_replace(map: &mut HeaderMap, key: &str, value: &str) {
    let mut found = false;
    map.retain_mut(|(k, v)| {
        if k.eq_ignore_ascii_case(key) {
            if found {
                return false;
            }
            found = true;
            *v = value.to_string();
        }
        true
    });
    if !found {
        map.push((key.to_ascii_lowercase(), value.to_string()));
    }
}

/// A routing or balancing choice a plugin set (`portico.route.upstream`, `portico.upstream.selected`): the
/// value trimmed; empty clears it. The string's buffer is reused when the choice is already set.
fn set_choice(choice: &mut Option<String>, value: &[u8]) {
    let text = String::from_utf8_lossy(value);
    let text = text.trim();
    match choice {
        _ if text.is_empty() => *choice = None,
        Some(current) => {
            current.clear();
            current.push_str(text);
        }
        None => *choice = Some(text.to_string()),
    }
}

/// What a plugin reads as `portico.upstream.candidates_version`: the set's version mixed with the group's
/// name, so that two groups offering the same endpoints still differ and a balancer can find its tables by
/// the version alone, without reading the group's name too (one hostcall and one allocation fewer per pick).
fn group_version(group: &str, set_version: u64) -> u64 {
    crate::types::candidate_fingerprint(crate::types::address_hash(group), 0) ^ set_version
}

/// Where the per-candidate load properties start: `portico.upstream.active_requests.<address>` and
/// `portico.upstream.latency_us.<address>`.
const LOAD_PREFIX: &str = "portico.upstream.";

/// `portico.upstream.active_requests.<address>` or `portico.upstream.latency_us.<address>` during an upstream
/// selection, when the address is a candidate. A balancer that compares a few endpoints' loads (power of two
/// choices) reads two of these instead of the whole candidate list.
fn candidate_load(s: &StreamState, path: &str) -> Option<i64> {
    let select = s.select.as_ref()?;
    let rest = path.strip_prefix(LOAD_PREFIX)?;
    if let Some(address) = rest.strip_prefix("active_requests.") {
        return select.source.load(address).map(|l| i64::from(l.active_requests));
    }
    let address = rest.strip_prefix("latency_us.")?;
    select.source.load(address).map(|l| i64::try_from(l.latency.as_micros()).unwrap_or(i64::MAX))
}

/// Resolve a property path (segments already joined with '.') into `out`; false when there is no such
/// property.
fn get_property(st: &HostState, path: &str, out: &mut Vec<u8>) -> bool {
    // Appends a value and says it was found.
    let mut put = |bytes: &[u8]| {
        out.extend_from_slice(bytes);
        true
    };
    let int = |v: i64| v.to_le_bytes();
    let core = &st.core;
    match path {
        "plugin_name" => return put(core.name.as_bytes()),
        "plugin_root_id" => return put(core.root_id.as_bytes()),
        "plugin_vm_id" => return put(core.vm_id.as_bytes()),
        "node.id" => return put(core.services.node_id().as_bytes()),
        _ => {}
    }
    let Some(s) = st.streams.get(&st.current) else {
        return st.root_properties.get(path).is_some_and(|v| put(v));
    };
    let info = &s.info;
    let request = |name: &str| header_get(&s.request_headers, name);
    let path_value = || request(":path").unwrap_or(&info.path);
    let found = match path {
        "request.path" => put(path_value().as_bytes()),
        "request.url_path" => put(path_value().split('?').next().unwrap_or("").as_bytes()),
        "request.query" => put(path_value().split_once('?').map(|(_, q)| q).unwrap_or("").as_bytes()),
        "request.method" => put(request(":method").unwrap_or(&info.method).as_bytes()),
        "request.host" => put(request(":authority").unwrap_or(&info.authority).as_bytes()),
        "request.scheme" => put(request(":scheme").unwrap_or(&info.scheme).as_bytes()),
        "request.protocol" => put(info.protocol.as_bytes()),
        "request.id" => {
            let id = if info.request_id.is_empty() { request("x-request-id").unwrap_or("") } else { &info.request_id };
            !id.is_empty() && put(id.as_bytes())
        }
        "request.time" => info
            .start_time
            .duration_since(UNIX_EPOCH)
            .is_ok_and(|d| put(&int(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)))),
        "source.address" => info.source_address.is_some_and(|a| put(a.to_string().as_bytes())),
        "source.port" => info.source_address.is_some_and(|a| put(&int(i64::from(a.port())))),
        "destination.address" => info.destination_address.is_some_and(|a| put(a.to_string().as_bytes())),
        "destination.port" => info.destination_address.is_some_and(|a| put(&int(i64::from(a.port())))),
        "listener_direction" => put(&int(info.direction as i64)),
        "response.code" => {
            header_get(&s.response_headers, ":status").and_then(|c| c.parse::<i64>().ok()).is_some_and(|c| put(&int(c)))
        }
        "portico.upstream" => s.select.as_ref().is_some_and(|x| put(x.group.as_bytes())),
        "portico.upstream.candidates" => {
            s.select.as_ref().is_some_and(|x| put(&crate::codec::encode_candidates(&x.source.candidates())))
        }
        "portico.upstream.candidates_version" => {
            s.select.as_ref().is_some_and(|x| put(&group_version(&x.group, x.source.version()).to_le_bytes()))
        }
        "portico.upstream.failed" => {
            s.select.as_ref().and_then(|x| x.failed.as_deref()).is_some_and(|v| put(v.as_bytes()))
        }
        "portico.upstream.selected" => s.selected_upstream.as_deref().is_some_and(|v| put(v.as_bytes())),
        "portico.route.upstream" => s.routed_upstream.as_deref().is_some_and(|v| put(v.as_bytes())),
        _ if path.starts_with(LOAD_PREFIX) => candidate_load(s, path).is_some_and(|v| put(&int(v))),
        _ => [
            ("request.headers.", &s.request_headers),
            ("response.headers.", &s.response_headers),
            ("response.trailers.", &s.response_trailers),
        ]
        .into_iter()
        .find_map(|(prefix, map)| header_get(map, path.strip_prefix(prefix)?))
        .is_some_and(|v| put(v.as_bytes())),
    };
    found
        || s.properties.get(path).is_some_and(|v| put(v))
        || info.properties.iter().find(|(k, _)| k == path).is_some_and(|(_, v)| put(v))
        || st.root_properties.get(path).is_some_and(|v| put(v))
}

fn monotonic_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn realtime_nanos(st: &HostState) -> u64 {
    st.core.services.now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(0)).unwrap_or(0)
}

fn fill_random(buf: &mut [u8]) -> bool {
    use std::io::Read;
    static URANDOM: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    match URANDOM.get_or_init(|| std::fs::File::open("/dev/urandom").ok().map(Mutex::new)) {
        Some(f) => f.lock().read_exact(buf).is_ok(),
        None => false,
    }
}

macro_rules! wrap {
    ($l:expr, $m:expr, $name:expr, $f:expr) => {
        $l.func_wrap($m, $name, $f)?;
    };
}

/// Linker plus the (module, name) pairs it defines, so unknown imports can be named in logs.
pub(crate) struct HostLinker {
    pub linker: Linker<HostState>,
    pub known: HashSet<(String, String)>,
}

impl HostLinker {
    fn func_wrap<P, A>(&mut self, module: &str, name: &str, f: impl IntoFunc<HostState, P, A>) -> Result<()> {
        self.linker.func_wrap(module, name, f)?;
        self.known.insert((module.to_string(), name.to_string()));
        Ok(())
    }

    /// Whether the host provides this import.
    pub fn provides(&self, module: &str, name: &str) -> bool {
        self.known.contains(&(module.to_string(), name.to_string()))
    }
}

/// Build the linker once per engine: host functions only depend on the store data.
pub(crate) fn build_linker(engine: &Engine) -> Result<HostLinker> {
    let mut l = HostLinker { linker: Linker::new(engine), known: HashSet::new() };
    link_proxy(&mut l)?;
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        link_wasi(&mut l, module)?;
    }
    // Emscripten-era extras cpp-host provides.
    wrap!(l, "env", "pthread_equal", |_c: Ctx<'_>, a: i32, b: i32| -> i32 { i32::from(a == b) });
    wrap!(l, "env", "emscripten_notify_memory_growth", |_c: Ctx<'_>, _i: i32| {});
    Ok(l)
}

fn status(r: Result<(), i32>) -> i32 {
    match r {
        Ok(()) => OK,
        Err(s) => s,
    }
}

#[allow(clippy::too_many_lines)]
fn link_proxy(l: &mut HostLinker) -> Result<()> {
    const E: &str = "env";

    // ---- logging, time, timers ----
    wrap!(l, E, "proxy_log", |mut c: Ctx<'_>, level: i32, p: i32, n: i32| -> Result<i32> {
        let msg = mem::read_str(&mut c, p, n, "proxy_log")?;
        if !(0..=5).contains(&level) {
            return Ok(BAD_ARGUMENT);
        }
        let level = LogLevel::from_abi(level);
        let st = c.data();
        st.core.services.log(&st.core.name, level, &msg);
        if level >= LogLevel::Error {
            c.data_mut().last_error_log = Some(msg);
        }
        Ok(OK)
    });
    wrap!(l, E, "proxy_get_log_level", |mut c: Ctx<'_>, ret: i32| -> Result<i32> {
        let level = c.data().core.services.log_level();
        mem::write_u32(&mut c, ret, level.as_abi() as u32, "proxy_get_log_level")?;
        Ok(OK)
    });
    wrap!(l, E, "proxy_get_current_time_nanoseconds", |mut c: Ctx<'_>, ret: i32| -> Result<i32> {
        let now = realtime_nanos(c.data());
        mem::write_u64(&mut c, ret, now, "proxy_get_current_time_nanoseconds")?;
        Ok(OK)
    });
    wrap!(l, E, "proxy_set_tick_period_milliseconds", |mut c: Ctx<'_>, ms: i32| -> i32 {
        let ms = ms as u32;
        c.data_mut().tick_period = (ms != 0).then(|| Duration::from_millis(u64::from(ms)));
        OK
    });

    // ---- configuration and buffers ----
    wrap!(l, E, "proxy_get_configuration", |mut c: Ctx<'_>, rp: i32, rs: i32| -> Result<i32> {
        let cfg = c.data().core.config.clone();
        mem::return_bytes(&mut c, &cfg, rp, rs, "proxy_get_configuration")
    });
    wrap!(l, E, "proxy_get_buffer_bytes", |mut c: Ctx<'_>,
                                           t: i32,
                                           start: i32,
                                           max: i32,
                                           rp: i32,
                                           rs: i32|
     -> Result<i32> {
        let (buf, _) = match c.data().buffer(t) {
            Ok(b) => b,
            Err(s) => return Ok(s),
        };
        // Clamp instead of BAD_ARGUMENT: the Rust SDK asks for (0, usize::MAX) and panics on errors.
        let start = (start as u32 as usize).min(buf.len());
        let end = start.saturating_add(max as u32 as usize).min(buf.len());
        mem::return_bytes(&mut c, &buf[start..end], rp, rs, "proxy_get_buffer_bytes")
    });
    wrap!(l, E, "proxy_get_buffer_status", |mut c: Ctx<'_>, t: i32, rlen: i32, rflags: i32| -> Result<i32> {
        let (buf, eos) = match c.data().buffer(t) {
            Ok(b) => b,
            Err(s) => return Ok(s),
        };
        mem::write_u32(&mut c, rlen, buf.len() as u32, "proxy_get_buffer_status")?;
        mem::write_u32(&mut c, rflags, u32::from(eos), "proxy_get_buffer_status")?;
        Ok(OK)
    });
    wrap!(l, E, "proxy_set_buffer_bytes", |mut c: Ctx<'_>,
                                           t: i32,
                                           start: i32,
                                           size: i32,
                                           p: i32,
                                           n: i32|
     -> Result<i32> {
        let data = mem::read(&mut c, p, n, "proxy_set_buffer_bytes")?;
        let st = c.data_mut();
        let target = match (t, st.callout.as_mut()) {
            (BUF_HTTP_CALL_RESPONSE_BODY, Some(co)) => &mut co.body,
            (BUF_HTTP_CALL_RESPONSE_BODY, None) => return Ok(NOT_FOUND),
            _ => {
                let Some(s) = st.stream() else { return Ok(NOT_FOUND) };
                match t {
                    BUF_REQUEST_BODY => &mut s.request_body,
                    BUF_RESPONSE_BODY => &mut s.response_body,
                    2..=8 => return Ok(NOT_FOUND),
                    _ => return Ok(BAD_ARGUMENT),
                }
            }
        };
        // Splice [start, start+size) with the new bytes (covers Envoy's prepend/replace/append cases).
        let start = (start as u32 as usize).min(target.len());
        let end = start.saturating_add(size as u32 as usize).min(target.len());
        let mut out = Vec::with_capacity(target.len() - (end - start) + data.len());
        out.extend_from_slice(&target[..start]);
        out.extend_from_slice(&data);
        out.extend_from_slice(&target[end..]);
        *target = Bytes::from(out);
        Ok(OK)
    });

    // ---- header maps ----
    wrap!(l, E, "proxy_get_header_map_pairs", |mut c: Ctx<'_>, t: i32, rp: i32, rs: i32| -> Result<i32> {
        let bytes = match c.data().map(t) {
            Ok(Some(m)) => codec::serialize_map(m),
            Ok(None) => codec::serialize_map(&[]),
            Err(s) => return Ok(s),
        };
        mem::return_bytes(&mut c, &bytes, rp, rs, "proxy_get_header_map_pairs")
    });
    wrap!(l, E, "proxy_get_header_map_size", |mut c: Ctx<'_>, t: i32, rs: i32| -> Result<i32> {
        let size = match c.data().map(t) {
            Ok(Some(m)) => codec::serialized_map_size(m),
            Ok(None) => 4,
            Err(s) => return Ok(s),
        };
        mem::write_u32(&mut c, rs, size as u32, "proxy_get_header_map_size")?;
        Ok(OK)
    });
    wrap!(l, E, "proxy_set_header_map_pairs", |mut c: Ctx<'_>, t: i32, p: i32, n: i32| -> Result<i32> {
        let raw = mem::read(&mut c, p, n, "proxy_set_header_map_pairs")?;
        let Some(pairs) = codec::deserialize_map(&raw) else { return Ok(BAD_ARGUMENT) };
        if !pairs.iter().all(|(k, v)| valid_header(k, v)) {
            return Ok(BAD_ARGUMENT);
        }
        let st = c.data_mut();
        Ok(status(st.map_mut(t).map(|m| {
            *m = pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        })))
    });
    wrap!(l, E, "proxy_get_header_map_value", |mut c: Ctx<'_>,
                                               t: i32,
                                               kp: i32,
                                               kn: i32,
                                               rp: i32,
                                               rs: i32|
     -> Result<i32> {
        const WHAT: &str = "proxy_get_header_map_value";
        let mut key = std::mem::take(&mut c.data_mut().scratch_key);
        mem::read_str_into(&c, kp, kn, WHAT, &mut key)?;
        let r = mem::return_scratch(&mut c, rp, rs, WHAT, |st, out| {
            let value = st.map(t)?.and_then(|m| header_get(m, &key)).ok_or(NOT_FOUND)?;
            out.extend_from_slice(value.as_bytes());
            Ok(())
        });
        c.data_mut().scratch_key = key;
        r
    });
    wrap!(l, E, "proxy_add_header_map_value", |mut c: Ctx<'_>,
                                               t: i32,
                                               kp: i32,
                                               kn: i32,
                                               vp: i32,
                                               vn: i32|
     -> Result<i32> {
        let key = mem::read_str(&mut c, kp, kn, "proxy_add_header_map_value")?;
        let value = mem::read_str(&mut c, vp, vn, "proxy_add_header_map_value")?;
        if !valid_header(&key, &value) {
            return Ok(BAD_ARGUMENT);
        }
        Ok(status(c.data_mut().map_mut(t).map(|m| m.push((key.to_ascii_lowercase(), value)))))
    });
    wrap!(l, E, "proxy_replace_header_map_value", |mut c: Ctx<'_>,
                                                   t: i32,
                                                   kp: i32,
                                                   kn: i32,
                                                   vp: i32,
                                                   vn: i32|
     -> Result<i32> {
        let key = mem::read_str(&mut c, kp, kn, "proxy_replace_header_map_value")?;
        let value = mem::read_str(&mut c, vp, vn, "proxy_replace_header_map_value")?;
        if !valid_header(&key, &value) {
            return Ok(BAD_ARGUMENT);
        }
        Ok(status(c.data_mut().map_mut(t).map(|m| header_replace(m, &key, &value))))
    });
    wrap!(l, E, "proxy_remove_header_map_value", |mut c: Ctx<'_>, t: i32, kp: i32, kn: i32| -> Result<i32> {
        let key = mem::read_str(&mut c, kp, kn, "proxy_remove_header_map_value")?;
        Ok(status(c.data_mut().map_mut(t).map(|m| m.retain(|(k, _)| !k.eq_ignore_ascii_case(&key)))))
    });

    // ---- properties ----
    wrap!(l, E, "proxy_get_property", |mut c: Ctx<'_>, pp: i32, pn: i32, rp: i32, rs: i32| -> Result<i32> {
        const WHAT: &str = "proxy_get_property";
        let mut path = std::mem::take(&mut c.data_mut().scratch_key);
        mem::read_property_path(&c, pp, pn, WHAT, &mut path)?;
        let r = mem::return_scratch(&mut c, rp, rs, WHAT, |st, out| {
            if get_property(st, &path, out) {
                Ok(())
            } else {
                Err(NOT_FOUND)
            }
        });
        c.data_mut().scratch_key = path;
        r
    });
    wrap!(l, E, "proxy_set_property", |mut c: Ctx<'_>, pp: i32, pn: i32, vp: i32, vn: i32| -> Result<i32> {
        const WHAT: &str = "proxy_set_property";
        let st = c.data_mut();
        let (mut path, mut value) = (std::mem::take(&mut st.scratch_key), std::mem::take(&mut st.scratch_value));
        mem::read_property_path(&c, pp, pn, WHAT, &mut path)?;
        mem::read_into(&c, vp, vn, WHAT, &mut value)?;
        let st = c.data_mut();
        if let Some(s) = st.streams.get_mut(&st.current) {
            match path.as_str() {
                "portico.upstream.selected" => set_choice(&mut s.selected_upstream, &value),
                "portico.route.upstream" => set_choice(&mut s.routed_upstream, &value),
                _ => {
                    s.properties.insert(path.clone(), value.clone());
                }
            }
        } else {
            st.root_properties.insert(path.clone(), value.clone());
        }
        (st.scratch_key, st.scratch_value) = (path, value);
        Ok(OK)
    });

    // ---- shared data ----
    wrap!(l, E, "proxy_get_shared_data", |mut c: Ctx<'_>,
                                          kp: i32,
                                          kn: i32,
                                          rp: i32,
                                          rs: i32,
                                          rcas: i32|
     -> Result<i32> {
        let key = mem::read_str(&mut c, kp, kn, "proxy_get_shared_data")?;
        let st = c.data();
        let Some((value, cas)) = st.core.engine.get_shared(&st.core.vm_id, &key) else { return Ok(NOT_FOUND) };
        mem::check(&mut c, rcas, 4, "proxy_get_shared_data")?;
        let s = mem::return_bytes(&mut c, &value, rp, rs, "proxy_get_shared_data")?;
        if s == OK {
            mem::write_u32(&mut c, rcas, cas, "proxy_get_shared_data")?;
        }
        Ok(s)
    });
    wrap!(l, E, "proxy_set_shared_data", |mut c: Ctx<'_>,
                                          kp: i32,
                                          kn: i32,
                                          vp: i32,
                                          vn: i32,
                                          cas: i32|
     -> Result<i32> {
        let key = mem::read_str(&mut c, kp, kn, "proxy_set_shared_data")?;
        let value = mem::read(&mut c, vp, vn, "proxy_set_shared_data")?;
        let st = c.data();
        let (len, plugin) = (value.len(), &st.core.name);
        Ok(match st.core.engine.set_shared(&st.core.vm_id, &key, value, cas as u32) {
            crate::engine::SetShared::Ok => OK,
            crate::engine::SetShared::CasMismatch => CAS_MISMATCH,
            crate::engine::SetShared::TooLarge => {
                crate::limits::refused(
                    plugin,
                    format_args!(
                        "proxy_set_shared_data refused: key ({} bytes) or value ({len} bytes) over its cap",
                        key.len()
                    ),
                );
                BAD_ARGUMENT
            }
            crate::engine::SetShared::Full => {
                crate::limits::refused(
                    plugin,
                    format_args!("proxy_set_shared_data refused: shared data is full (keys or bytes)"),
                );
                INTERNAL_FAILURE
            }
        })
    });

    // ---- shared queues ----
    wrap!(l, E, "proxy_register_shared_queue", |mut c: Ctx<'_>, np: i32, nn: i32, ret: i32| -> Result<i32> {
        let name = mem::read_str(&mut c, np, nn, "proxy_register_shared_queue")?;
        mem::check(&mut c, ret, 4, "proxy_register_shared_queue")?;
        let st = c.data();
        let owner = crate::engine::QueueOwner {
            plugin: st.core.plugin.clone(),
            slot: st.slot,
            generation: st.generation,
            root_context: st.root_context,
        };
        let Some(id) = st.core.engine.register_queue(&st.core.vm_id, &name, owner) else {
            crate::limits::refused(
                &st.core.name,
                format_args!(
                    "proxy_register_shared_queue refused: name ({} bytes) too long or too many queues",
                    name.len()
                ),
            );
            return Ok(if name.len() > crate::limits::MAX_QUEUE_NAME { BAD_ARGUMENT } else { INTERNAL_FAILURE });
        };
        mem::write_u32(&mut c, ret, id, "proxy_register_shared_queue")?;
        Ok(OK)
    });
    wrap!(l, E, "proxy_resolve_shared_queue", |mut c: Ctx<'_>,
                                               vp: i32,
                                               vn: i32,
                                               np: i32,
                                               nn: i32,
                                               ret: i32|
     -> Result<i32> {
        let vm = mem::read_str(&mut c, vp, vn, "proxy_resolve_shared_queue")?;
        let name = mem::read_str(&mut c, np, nn, "proxy_resolve_shared_queue")?;
        let st = c.data();
        let vm = if vm.is_empty() { st.core.vm_id.clone() } else { vm };
        match st.core.engine.resolve_queue(&vm, &name) {
            Some(id) => {
                mem::write_u32(&mut c, ret, id, "proxy_resolve_shared_queue")?;
                Ok(OK)
            }
            None => Ok(NOT_FOUND),
        }
    });
    wrap!(l, E, "proxy_enqueue_shared_queue", |mut c: Ctx<'_>, id: i32, vp: i32, vn: i32| -> Result<i32> {
        let value = mem::read(&mut c, vp, vn, "proxy_enqueue_shared_queue")?;
        let core = &c.data().core;
        let owner = match core.engine.enqueue(id as u32, value) {
            crate::engine::Enqueue::Ok(owner) => owner,
            crate::engine::Enqueue::NotFound => return Ok(NOT_FOUND),
            crate::engine::Enqueue::TooLarge => {
                crate::limits::refused(
                    &core.name,
                    format_args!("proxy_enqueue_shared_queue refused: entry over queue {id}'s byte cap"),
                );
                return Ok(BAD_ARGUMENT);
            }
            crate::engine::Enqueue::Full => {
                crate::limits::refused(
                    &core.name,
                    format_args!("proxy_enqueue_shared_queue refused: queue {id} is full (entries or bytes)"),
                );
                return Ok(INTERNAL_FAILURE);
            }
        };
        // proxy_on_queue_ready runs later on the owning root context (never re-entrantly into this store).
        if let Some(owner) = owner {
            if let Some(p) = owner.plugin.upgrade() {
                p.queue_ready(owner.slot, owner.generation, owner.root_context, id as u32);
            }
        }
        Ok(OK)
    });
    wrap!(l, E, "proxy_dequeue_shared_queue", |mut c: Ctx<'_>, id: i32, rp: i32, rs: i32| -> Result<i32> {
        let item = match c.data().core.engine.dequeue(id as u32) {
            Ok(Some(item)) => item,
            Ok(None) => return Ok(EMPTY),
            Err(()) => return Ok(NOT_FOUND),
        };
        mem::return_bytes(&mut c, &item, rp, rs, "proxy_dequeue_shared_queue")
    });

    // ---- stream control ----
    fn cont(c: &mut Ctx<'_>) -> i32 {
        if let Some(s) = c.data_mut().stream() {
            if s.in_band {
                s.continued = true;
            } else {
                s.signal.post(Resumption::Continue);
            }
            OK
        } else {
            NOT_FOUND
        }
    }
    fn close(c: &mut Ctx<'_>) -> i32 {
        if let Some(s) = c.data_mut().stream() {
            s.close = true;
            if !s.in_band {
                s.signal.post(Resumption::Close);
            }
            OK
        } else {
            NOT_FOUND
        }
    }
    wrap!(l, E, "proxy_continue_stream", |mut c: Ctx<'_>, t: i32| -> i32 {
        if t != STREAM_HTTP_REQUEST && t != STREAM_HTTP_RESPONSE {
            return BAD_ARGUMENT;
        }
        cont(&mut c)
    });
    wrap!(l, E, "proxy_close_stream", |mut c: Ctx<'_>, t: i32| -> i32 {
        if t != STREAM_HTTP_REQUEST && t != STREAM_HTTP_RESPONSE {
            return BAD_ARGUMENT;
        }
        close(&mut c)
    });
    wrap!(l, E, "proxy_continue_request", |mut c: Ctx<'_>| -> i32 { cont(&mut c) });
    wrap!(l, E, "proxy_continue_response", |mut c: Ctx<'_>| -> i32 { cont(&mut c) });
    // Portico computes the route after the plugin's header phase, so there is no cached route to clear.
    wrap!(l, E, "proxy_clear_route_cache", |_c: Ctx<'_>| -> i32 { OK });
    wrap!(l, E, "proxy_done", |_c: Ctx<'_>| -> i32 { OK });
    wrap!(l, E, "proxy_set_effective_context", |mut c: Ctx<'_>, id: i32| -> i32 {
        let st = c.data_mut();
        let id = id as u32;
        if id == st.root_context || st.streams.contains_key(&id) {
            st.current = id;
            OK
        } else {
            BAD_ARGUMENT
        }
    });
    wrap!(l, E, "proxy_send_local_response", |mut c: Ctx<'_>,
                                              code: i32,
                                              dp: i32,
                                              dn: i32,
                                              bp: i32,
                                              bn: i32,
                                              hp: i32,
                                              hn: i32,
                                              grpc: i32|
     -> Result<i32> {
        let details = mem::read_str(&mut c, dp, dn, "proxy_send_local_response")?;
        let body = mem::read(&mut c, bp, bn, "proxy_send_local_response")?;
        let raw = mem::read(&mut c, hp, hn, "proxy_send_local_response")?;
        let Some(headers) = codec::deserialize_map(&raw) else { return Ok(BAD_ARGUMENT) };
        let Ok(status) = u16::try_from(code) else { return Ok(BAD_ARGUMENT) };
        if !(100..=999).contains(&status) {
            return Ok(BAD_ARGUMENT);
        }
        // Pseudo-headers are not response headers: the status is the `code` argument. Plugins built for Envoy
        // pass `:status` among the extra headers (Google's Service Extensions local-reply sample does).
        let resp = LocalResponse {
            status,
            headers: headers
                .into_iter()
                .filter(|(k, _)| !k.starts_with(':'))
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            body: Bytes::from(body),
            grpc_status: (grpc >= 0).then_some(grpc),
            details,
        };
        let Some(s) = c.data_mut().stream() else { return Ok(NOT_FOUND) };
        if s.in_band {
            s.local_response = Some(resp);
        } else {
            s.signal.post(Resumption::LocalResponse(resp));
        }
        Ok(OK)
    });

    // ---- HTTP callouts ----
    wrap!(l, E, "proxy_http_call", |mut c: Ctx<'_>,
                                    up: i32,
                                    un: i32,
                                    hp: i32,
                                    hn: i32,
                                    bp: i32,
                                    bn: i32,
                                    tp: i32,
                                    tn: i32,
                                    timeout: i32,
                                    ret: i32|
     -> Result<i32> {
        let upstream = mem::read_str(&mut c, up, un, "proxy_http_call")?;
        let hraw = mem::read(&mut c, hp, hn, "proxy_http_call")?;
        let body = mem::read(&mut c, bp, bn, "proxy_http_call")?;
        let traw = mem::read(&mut c, tp, tn, "proxy_http_call")?;
        mem::check(&mut c, ret, 4, "proxy_http_call")?;
        let (Some(headers), Some(trailers)) = (codec::deserialize_map(&hraw), codec::deserialize_map(&traw)) else {
            return Ok(BAD_ARGUMENT);
        };
        for required in [":method", ":path", ":authority"] {
            if header_get(&headers, required).is_none() {
                return Ok(BAD_ARGUMENT);
            }
        }
        let st = c.data();
        let core = st.core.clone();
        let token = core.next_token();
        let owner = CalloutOwner { slot: st.slot, generation: st.generation, context: st.current };
        core.callouts.lock().insert(token, owner);
        if let Some(s) = c.data_mut().streams.get_mut(&owner.context) {
            s.called_out = true;
        }
        let request = HttpCallRequest {
            plugin: core.name.clone(),
            token,
            upstream,
            headers,
            body: Bytes::from(body),
            trailers,
            timeout: Duration::from_millis(u64::from(timeout as u32)),
            responder: crate::plugin::CalloutResponder::new(core.plugin.clone(), token),
        };
        match core.services.http_call(request) {
            Ok(()) => {
                mem::write_u32(&mut c, ret, token, "proxy_http_call")?;
                Ok(OK)
            }
            Err(e) => {
                core.callouts.lock().remove(&token);
                tracing::debug!(plugin = %core.name, error = %e, "proxy_http_call refused");
                Ok(match e {
                    HttpCallRejected::UnknownUpstream(_) => BAD_ARGUMENT,
                    HttpCallRejected::Internal(_) => INTERNAL_FAILURE,
                })
            }
        }
    });
    wrap!(l, E, "proxy_get_status", |mut c: Ctx<'_>, rcode: i32, rp: i32, rs: i32| -> Result<i32> {
        let code = match c.data().callout.as_ref() {
            Some(co) => header_get(&co.headers, ":status").and_then(|s| s.parse::<u32>().ok()).unwrap_or(0),
            None => return Ok(NOT_FOUND),
        };
        mem::write_u32(&mut c, rcode, code, "proxy_get_status")?;
        mem::return_bytes(&mut c, &[], rp, rs, "proxy_get_status")
    });
    // gRPC callouts are not supported by Portico's HostServices: statuses the SDKs handle without panicking.
    wrap!(l, E, "proxy_grpc_call", |c: Ctx<'_>,
                                    _a: i32,
                                    _b: i32,
                                    _d: i32,
                                    _e: i32,
                                    _f: i32,
                                    _g: i32,
                                    _h: i32,
                                    _i: i32,
                                    _j: i32,
                                    _k: i32,
                                    _t: i32,
                                    _r: i32|
     -> i32 {
        tracing::warn!(plugin = %c.data().plugin_name(), "proxy_grpc_call is not supported");
        INTERNAL_FAILURE
    });
    wrap!(l, E, "proxy_grpc_stream", |c: Ctx<'_>,
                                      _a: i32,
                                      _b: i32,
                                      _d: i32,
                                      _e: i32,
                                      _f: i32,
                                      _g: i32,
                                      _h: i32,
                                      _i: i32,
                                      _r: i32|
     -> i32 {
        tracing::warn!(plugin = %c.data().plugin_name(), "proxy_grpc_stream is not supported");
        INTERNAL_FAILURE
    });
    wrap!(l, E, "proxy_grpc_send", |_c: Ctx<'_>, _t: i32, _p: i32, _n: i32, _e: i32| -> i32 { NOT_FOUND });
    wrap!(l, E, "proxy_grpc_cancel", |_c: Ctx<'_>, _t: i32| -> i32 { NOT_FOUND });
    wrap!(l, E, "proxy_grpc_close", |_c: Ctx<'_>, _t: i32| -> i32 { NOT_FOUND });

    // ---- foreign functions ----
    wrap!(l, E, "proxy_call_foreign_function", |mut c: Ctx<'_>,
                                                np: i32,
                                                nn: i32,
                                                ap: i32,
                                                an: i32,
                                                rp: i32,
                                                rs: i32|
     -> Result<i32> {
        let name = mem::read_str(&mut c, np, nn, "proxy_call_foreign_function")?;
        let args = mem::read(&mut c, ap, an, "proxy_call_foreign_function")?;
        let result = if name == "clear_route_cache" {
            Some(Ok(Vec::new()))
        } else {
            let st = c.data();
            st.core.services.foreign_function(&st.core.name, &name, &args)
        };
        match result {
            None => Ok(NOT_FOUND),
            Some(Err(e)) => {
                tracing::debug!(plugin = %c.data().plugin_name(), function = %name, error = %e, "foreign function failed");
                Ok(INTERNAL_FAILURE)
            }
            Some(Ok(v)) => mem::return_bytes(&mut c, &v, rp, rs, "proxy_call_foreign_function"),
        }
    });

    // ---- metrics ----
    wrap!(l, E, "proxy_define_metric", |mut c: Ctx<'_>, t: i32, np: i32, nn: i32, ret: i32| -> Result<i32> {
        let name = mem::read_str(&mut c, np, nn, "proxy_define_metric")?;
        mem::check(&mut c, ret, 4, "proxy_define_metric")?;
        let id = match c.data().core.define_metric(t, &name) {
            Ok(id) => id,
            Err(status) => return Ok(status),
        };
        mem::write_u32(&mut c, ret, id, "proxy_define_metric")?;
        Ok(OK)
    });
    wrap!(l, E, "proxy_increment_metric", |c: Ctx<'_>, id: i32, delta: i64| -> i32 {
        c.data().core.increment_metric(id as u32, delta)
    });
    wrap!(l, E, "proxy_record_metric", |c: Ctx<'_>, id: i32, value: i64| -> i32 {
        c.data().core.record_metric(id as u32, value as u64)
    });
    wrap!(l, E, "proxy_get_metric", |mut c: Ctx<'_>, id: i32, ret: i32| -> Result<i32> {
        match c.data().core.get_metric(id as u32) {
            Ok(v) => {
                mem::write_u64(&mut c, ret, v, "proxy_get_metric")?;
                Ok(OK)
            }
            Err(s) => Ok(s),
        }
    });
    Ok(())
}

// ---- WASI preview1 ----
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;
const ERRNO_IO: i32 = 29;
const ERRNO_NOSYS: i32 = 52;
const ERRNO_NOTSUP: i32 = 58;

#[allow(clippy::too_many_lines)]
fn link_wasi(l: &mut HostLinker, m: &str) -> Result<()> {
    wrap!(l, m, "fd_write", |mut c: Ctx<'_>, fd: i32, iovs: i32, n: i32, ret: i32| -> Result<i32> {
        if fd != 1 && fd != 2 {
            return Ok(ERRNO_BADF);
        }
        let n = (n as u32).min(1024) as i32;
        let table = mem::read(&mut c, iovs, n.saturating_mul(8), "fd_write")?;
        let mut out = Vec::new();
        for iov in table.chunks_exact(8) {
            let p = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
            out.extend(mem::read(&mut c, p, len, "fd_write")?);
        }
        let text = String::from_utf8_lossy(&out);
        let text = text.trim_end_matches('\n');
        if !text.is_empty() {
            let st = c.data();
            let level = if fd == 1 { LogLevel::Info } else { LogLevel::Error };
            st.core.services.log(&st.core.name, level, text);
        }
        mem::write_u32(&mut c, ret, out.len() as u32, "fd_write")?;
        Ok(ERRNO_SUCCESS)
    });
    wrap!(l, m, "fd_read", |_c: Ctx<'_>, fd: i32, _i: i32, _n: i32, _r: i32| -> i32 {
        if fd == 0 {
            ERRNO_NOSYS
        } else {
            ERRNO_BADF
        }
    });
    wrap!(l, m, "fd_close", |_c: Ctx<'_>, _fd: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_seek", |_c: Ctx<'_>, _fd: i32, _o: i64, _w: i32, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_fdstat_get", |mut c: Ctx<'_>, fd: i32, ret: i32| -> Result<i32> {
        if !(0..=2).contains(&fd) {
            return Ok(ERRNO_BADF);
        }
        // filetype u8 (2 = character device), flags u16 @2, rights_base u64 @8, rights_inheriting u64 @16.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 }; // fd_read / fd_write
        stat[8..16].copy_from_slice(&rights.to_le_bytes());
        mem::write(&mut c, ret, &stat, "fd_fdstat_get")?;
        Ok(ERRNO_SUCCESS)
    });
    wrap!(l, m, "fd_fdstat_set_flags", |_c: Ctx<'_>, _fd: i32, _f: i32| -> i32 { ERRNO_NOSYS });
    wrap!(l, m, "fd_fdstat_set_rights", |_c: Ctx<'_>, _fd: i32, _a: i64, _b: i64| -> i32 { ERRNO_NOSYS });
    wrap!(l, m, "fd_prestat_get", |_c: Ctx<'_>, _fd: i32, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_prestat_dir_name", |_c: Ctx<'_>, _fd: i32, _p: i32, _n: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_advise", |_c: Ctx<'_>, _fd: i32, _o: i64, _n: i64, _a: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_allocate", |_c: Ctx<'_>, _fd: i32, _o: i64, _n: i64| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_datasync", |_c: Ctx<'_>, _fd: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_sync", |_c: Ctx<'_>, _fd: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_filestat_get", |_c: Ctx<'_>, _fd: i32, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_filestat_set_size", |_c: Ctx<'_>, _fd: i32, _s: i64| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_filestat_set_times", |_c: Ctx<'_>, _fd: i32, _a: i64, _b: i64, _f: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_pread", |_c: Ctx<'_>, _fd: i32, _i: i32, _n: i32, _o: i64, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_pwrite", |_c: Ctx<'_>, _fd: i32, _i: i32, _n: i32, _o: i64, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_readdir", |_c: Ctx<'_>, _fd: i32, _b: i32, _n: i32, _k: i64, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_renumber", |_c: Ctx<'_>, _a: i32, _b: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "fd_tell", |_c: Ctx<'_>, _fd: i32, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_create_directory", |_c: Ctx<'_>, _fd: i32, _p: i32, _n: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_filestat_get", |_c: Ctx<'_>, _fd: i32, _f: i32, _p: i32, _n: i32, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_filestat_set_times", |_c: Ctx<'_>,
                                            _fd: i32,
                                            _f: i32,
                                            _p: i32,
                                            _n: i32,
                                            _a: i64,
                                            _b: i64,
                                            _g: i32|
     -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_link", |_c: Ctx<'_>, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32, _g: i32, _h: i32| -> i32 {
        ERRNO_BADF
    });
    wrap!(l, m, "path_open", |_c: Ctx<'_>,
                              _fd: i32,
                              _df: i32,
                              _p: i32,
                              _n: i32,
                              _o: i32,
                              _rb: i64,
                              _ri: i64,
                              _ff: i32,
                              _r: i32|
     -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_readlink", |_c: Ctx<'_>, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32, _g: i32| -> i32 {
        ERRNO_BADF
    });
    wrap!(l, m, "path_remove_directory", |_c: Ctx<'_>, _fd: i32, _p: i32, _n: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_rename", |_c: Ctx<'_>, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32, _g: i32| -> i32 {
        ERRNO_BADF
    });
    wrap!(l, m, "path_symlink", |_c: Ctx<'_>, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "path_unlink_file", |_c: Ctx<'_>, _fd: i32, _p: i32, _n: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "poll_oneoff", |mut c: Ctx<'_>, inp: i32, outp: i32, n: i32, ret: i32| -> Result<i32> {
        // Never block a proxy worker: clock subscriptions fire immediately, fd subscriptions report EBADF.
        let n = n as u32;
        if n == 0 || n > 1024 {
            return Ok(ERRNO_INVAL);
        }
        let subs = mem::read(&mut c, inp, (n * 48) as i32, "poll_oneoff")?;
        let mut events = vec![0u8; (n * 32) as usize];
        for (sub, ev) in subs.chunks_exact(48).zip(events.chunks_exact_mut(32)) {
            ev[0..8].copy_from_slice(&sub[0..8]);
            let tag = sub[8];
            let errno: u16 = if tag == 0 { 0 } else { ERRNO_BADF as u16 };
            ev[8..10].copy_from_slice(&errno.to_le_bytes());
            ev[10] = tag;
        }
        mem::write(&mut c, outp, &events, "poll_oneoff")?;
        mem::write_u32(&mut c, ret, n, "poll_oneoff")?;
        Ok(ERRNO_SUCCESS)
    });
    wrap!(l, m, "proc_exit", |mut c: Ctx<'_>, code: i32| -> Result<()> {
        c.data_mut().exit_code = Some(code);
        Err(HostTrap::Exit(code).into())
    });
    wrap!(l, m, "proc_raise", |_c: Ctx<'_>, _s: i32| -> i32 { ERRNO_NOSYS });
    wrap!(l, m, "sched_yield", |_c: Ctx<'_>| -> i32 { ERRNO_SUCCESS });
    wrap!(l, m, "random_get", |mut c: Ctx<'_>, p: i32, n: i32| -> Result<i32> {
        let n = n as u32 as usize;
        if n > 64 * 1024 {
            return Ok(ERRNO_INVAL);
        }
        let mut buf = vec![0u8; n];
        if !fill_random(&mut buf) {
            return Ok(ERRNO_IO);
        }
        mem::write(&mut c, p, &buf, "random_get")?;
        Ok(ERRNO_SUCCESS)
    });
    wrap!(l, m, "clock_time_get", |mut c: Ctx<'_>, id: i32, _precision: i64, ret: i32| -> Result<i32> {
        let t = match id {
            0 => realtime_nanos(c.data()),
            1..=3 => monotonic_nanos(),
            _ => return Ok(ERRNO_NOTSUP),
        };
        mem::write_u64(&mut c, ret, t, "clock_time_get")?;
        Ok(ERRNO_SUCCESS)
    });
    wrap!(l, m, "clock_res_get", |mut c: Ctx<'_>, id: i32, ret: i32| -> Result<i32> {
        if !(0..=3).contains(&id) {
            return Ok(ERRNO_NOTSUP);
        }
        mem::write_u64(&mut c, ret, 1_000, "clock_res_get")?;
        Ok(ERRNO_SUCCESS)
    });
    for (name, what) in [("environ_sizes_get", "environ_sizes_get"), ("args_sizes_get", "args_sizes_get")] {
        l.func_wrap(m, name, move |mut c: Ctx<'_>, count: i32, size: i32| -> Result<i32> {
            mem::write_u32(&mut c, count, 0, what)?;
            mem::write_u32(&mut c, size, 0, what)?;
            Ok(ERRNO_SUCCESS)
        })?;
    }
    wrap!(l, m, "environ_get", |_c: Ctx<'_>, _a: i32, _b: i32| -> i32 { ERRNO_SUCCESS });
    wrap!(l, m, "args_get", |_c: Ctx<'_>, _a: i32, _b: i32| -> i32 { ERRNO_SUCCESS });
    wrap!(l, m, "sock_accept", |_c: Ctx<'_>, _fd: i32, _f: i32, _r: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "sock_recv", |_c: Ctx<'_>, _fd: i32, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32| -> i32 {
        ERRNO_BADF
    });
    wrap!(l, m, "sock_send", |_c: Ctx<'_>, _fd: i32, _a: i32, _b: i32, _d: i32, _e: i32| -> i32 { ERRNO_BADF });
    wrap!(l, m, "sock_shutdown", |_c: Ctx<'_>, _fd: i32, _h: i32| -> i32 { ERRNO_BADF });
    Ok(())
}
