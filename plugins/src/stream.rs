//! [`HttpStream`]: one request flowing through one plugin, a stream context in one instance. The phases, in
//! the order a request meets them: request headers, body, trailers; upstream selection; response headers,
//! body, trailers; `on_log`; drop (`proxy_on_delete`). Each runs one callback synchronously; a Pause is
//! resumed by another callback (a callout answer, a tick, a queue) through the stream's signal.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::TypedFunc;

use crate::abi;
use crate::error::{FailureKind, PluginFailure};
use crate::instance::{invoke, Exports, Instance};
use crate::pool::{Plugin, PluginHandle};
use crate::store::{copy_headers, HostState, StreamSignal, StreamState};
use crate::types::{FilterAction, HeaderMap, RequestInfo, Resumption};

/// One request flowing through one plugin: a stream context in one instance.
///
/// Each method runs a single callback synchronously under the instance lock. Drop runs `proxy_on_done`
/// (unless [`HttpStream::on_log`] did) and `proxy_on_delete`.
pub struct HttpStream {
    pub(crate) handle: Arc<PluginHandle>,
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) context: u32,
    pub(crate) signal: Arc<StreamSignal>,
    pub(crate) done: bool,
    pub(crate) dead: bool,
    /// The last phase wrote the plugin's changes into the caller's data (see [`HttpStream::data_changed`]).
    pub(crate) changed: bool,
}

impl std::fmt::Debug for HttpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStream")
            .field("plugin", &self.handle.plugin.core.name)
            .field("context", &self.context)
            .finish()
    }
}

impl Plugin {
    /// Start a request: pick an instance (this thread's preferred one, see [`prefer_instance`], else round
    /// robin; an idle one over a busy one), create a stream context and run
    /// `proxy_on_context_create(ctx, root)`. An `Err` means "apply [`Plugin::fail_policy`]".
    ///
    /// `info` may be shared (`Arc`) by every plugin of a request's chain: it is never changed.
    pub fn new_stream(self: &Arc<Self>, info: impl Into<Arc<RequestInfo>>) -> Result<HttpStream, PluginFailure> {
        self.handle().new_stream(info)
    }

    pub(crate) fn open_stream(
        &self,
        handle: &Arc<PluginHandle>,
        info: Arc<RequestInfo>,
    ) -> Result<HttpStream, PluginFailure> {
        let (i, mut slot) = self.pick_slot();
        let result = (|| -> Result<(u32, Arc<StreamSignal>), PluginFailure> {
            let inst = self.ensure_instance(&mut slot, i)?;
            let ctx = inst.next_context;
            inst.next_context = inst.next_context.checked_add(1).unwrap_or(2);
            let signal = Arc::new(StreamSignal::default());
            let root = inst.root();
            let st = inst.store.data_mut();
            st.streams.insert(ctx, StreamState::new(info, signal.clone()));
            st.current = ctx;
            inst.call("proxy_on_context_create", |f| f.on_context_create.as_ref(), (ctx as i32, root as i32))?;
            Ok((ctx, signal))
        })();
        let generation = slot.generation;
        match result {
            Ok((context, signal)) => Ok(HttpStream {
                handle: handle.clone(),
                slot: i,
                generation,
                context,
                signal,
                done: false,
                dead: false,
                changed: false,
            }),
            Err(e) => {
                if e.kind != FailureKind::Unavailable {
                    self.poison(&mut slot, &e);
                }
                Err(e)
            }
        }
    }
}

impl PluginHandle {
    /// [`Plugin::new_stream`], counted on this handle.
    pub fn new_stream(self: &Arc<Self>, info: impl Into<Arc<RequestInfo>>) -> Result<HttpStream, PluginFailure> {
        self.plugin.open_stream(self, info.into())
    }
}

/// Load a phase's headers into the stream's copy (a spare map's buffers reused, no allocation once warm)
/// and clear its modified bit. The caller keeps its own map: most plugins only read headers, and then
/// [`unload_headers`] has nothing to do. Returns the number of headers (the callback's argument).
fn load_headers(spare: &mut Vec<HeaderMap>, map: &mut HeaderMap, modified: &mut u8, t: i32, from: &HeaderMap) -> usize {
    if map.capacity() == 0 {
        *map = spare.pop().unwrap_or_default();
    }
    copy_headers(map, from);
    *modified &= !(1 << t);
    from.len()
}

/// Give the plugin's changes back to the caller, only if a hostcall changed the map during the callback.
/// Returns whether it did.
fn unload_headers(map: &HeaderMap, modified: u8, t: i32, to: &mut HeaderMap) -> bool {
    let changed = modified & (1 << t) != 0;
    if changed {
        copy_headers(to, map);
    }
    changed
}

/// The callback a phase runs and how its return value reads.
struct PhaseCallback {
    /// The export's name, for failures.
    name: &'static str,
    /// The export, if the module has it.
    pick: fn(&Exports) -> Option<Cb<'_>>,
    /// Whether a returned value lets the stream go on: [`abi::headers_continue`] or [`abi::data_continue`].
    continues: fn(i32) -> bool,
}

/// A phase's callback, borrowed from the instance's exports (see [`Instance::call`] for why not cloned).
enum Cb<'a> {
    Three(&'a TypedFunc<(i32, i32, i32), i32>),
    Two(&'a TypedFunc<(i32, i32), i32>),
}

impl HttpStream {
    /// The plugin this stream runs in.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.handle.plugin
    }

    /// Context id given to the guest (unique within its instance).
    pub fn context_id(&self) -> u32 {
        self.context
    }

    pub(crate) fn with_instance<T>(
        &mut self,
        f: impl FnOnce(&mut Instance, u32) -> Result<T, PluginFailure>,
    ) -> Result<T, PluginFailure> {
        if self.dead {
            return Err(self
                .handle
                .plugin
                .core
                .failure(FailureKind::Unavailable, "stream's plugin instance failed earlier"));
        }
        // Borrowed, not cloned (an `Arc` clone is a contended atomic on the plugin shared by every worker).
        let plugin = &self.handle.plugin;
        let mut slot = plugin.lock_slot(self.slot);
        let same_generation = slot.generation == self.generation;
        let r = match slot.instance.as_mut() {
            Some(inst) if same_generation => {
                inst.store.data_mut().current = self.context;
                f(inst, self.context)
            }
            _ => Err(plugin.core.failure(FailureKind::Unavailable, "stream's plugin instance was recreated")),
        };
        if let Err(e) = &r {
            if e.kind != FailureKind::Unavailable {
                plugin.poison(&mut slot, e);
            }
        }
        drop(slot);
        plugin.dispatch_pending();
        if r.is_err() {
            self.dead = true;
        }
        r
    }

    /// Common path for header/body/trailer callbacks: load caller data into the context, run, copy back.
    fn phase<D>(
        &mut self,
        callback: PhaseCallback,
        data: &mut D,
        eos: bool,
        load: impl FnOnce(&mut Vec<HeaderMap>, &mut StreamState, &mut D) -> usize,
        unload: impl FnOnce(&mut StreamState, &mut D) -> bool,
    ) -> Result<FilterAction, PluginFailure> {
        let PhaseCallback { name, pick, continues } = callback;
        self.signal.state.lock().take();
        let mut changed = false;
        let r = self.with_instance(|inst, ctx| {
            let HostState { streams, spare_maps, core, .. } = inst.store.data_mut();
            let Some(s) = streams.get_mut(&ctx) else {
                return Err(core.failure(FailureKind::Unavailable, "stream context is gone"));
            };
            let n = load(spare_maps, s, data);
            s.in_band = true;
            s.local_response = None;
            s.close = false;
            s.continued = false;
            let Instance { store, f, tick, cpu_limit, .. } = &mut *inst;
            let r = match pick(f) {
                Some(Cb::Three(f)) => invoke(store, tick, name, f, (ctx as i32, n as i32, i32::from(eos)), *cpu_limit),
                Some(Cb::Two(f)) => invoke(store, tick, name, f, (ctx as i32, n as i32), *cpu_limit),
                None => Ok(abi::ACTION_CONTINUE),
            };
            let s = inst.stream(ctx)?;
            s.in_band = false;
            changed = unload(s, data);
            let action = r?;
            Ok(if let Some(resp) = s.local_response.take() {
                FilterAction::LocalResponse(resp)
            } else if s.close {
                FilterAction::Close
            } else if continues(action) || s.continued {
                FilterAction::Continue
            } else {
                FilterAction::Pause
            })
        });
        self.changed = changed;
        r
    }

    /// Whether the last header, body or trailer phase wrote the plugin's changes into the caller's data (for
    /// headers: a map hostcall changed them; `run_*_headers` also after a resumption re-read them). When no
    /// plugin of a chain changed the headers, the proxy keeps its own request or response as it was instead
    /// of rebuilding it from the list.
    pub fn data_changed(&self) -> bool {
        self.changed
    }

    /// `proxy_on_request_headers`. `headers` must include `:method`, `:path`, `:authority`, `:scheme`; the
    /// plugin's changes (including `:path`/`:authority` rewrites) are written back into it.
    pub fn on_request_headers(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_request_headers",
                pick: |f| f.on_request_headers.as_ref().map(Cb::Three),
                continues: abi::headers_continue,
            },
            headers,
            end_of_stream,
            |st, s, h| load_headers(st, &mut s.request_headers, &mut s.modified, abi::MAP_REQUEST_HEADERS, h),
            |s, h| unload_headers(&s.request_headers, s.modified, abi::MAP_REQUEST_HEADERS, h),
        )
    }

    /// `proxy_on_request_body` with the body buffered so far. `Pause` without end_of_stream = buffer more and
    /// call again; modifications (`proxy_set_buffer_bytes`) are written back into `body`.
    pub fn on_request_body(&mut self, body: &mut Bytes, end_of_stream: bool) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_request_body",
                pick: |f| f.on_request_body.as_ref().map(Cb::Three),
                continues: abi::data_continue,
            },
            body,
            end_of_stream,
            |_, s, b| {
                s.request_body = b.clone();
                s.request_eos = end_of_stream;
                b.len()
            },
            |s, b| {
                b.clone_from(&s.request_body);
                true
            },
        )
    }

    /// `proxy_on_request_trailers`.
    pub fn on_request_trailers(&mut self, trailers: &mut HeaderMap) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_request_trailers",
                pick: |f| f.on_request_trailers.as_ref().map(Cb::Two),
                continues: abi::data_continue,
            },
            trailers,
            true,
            |st, s, t| load_headers(st, &mut s.request_trailers, &mut s.modified, abi::MAP_REQUEST_TRAILERS, t),
            |s, t| unload_headers(&s.request_trailers, s.modified, abi::MAP_REQUEST_TRAILERS, t),
        )
    }

    /// `proxy_on_response_headers`; `headers` must include `:status`.
    pub fn on_response_headers(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_response_headers",
                pick: |f| f.on_response_headers.as_ref().map(Cb::Three),
                continues: abi::headers_continue,
            },
            headers,
            end_of_stream,
            |st, s, h| load_headers(st, &mut s.response_headers, &mut s.modified, abi::MAP_RESPONSE_HEADERS, h),
            |s, h| unload_headers(&s.response_headers, s.modified, abi::MAP_RESPONSE_HEADERS, h),
        )
    }

    /// `proxy_on_response_body` with the body buffered so far (see [`HttpStream::on_request_body`]).
    pub fn on_response_body(&mut self, body: &mut Bytes, end_of_stream: bool) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_response_body",
                pick: |f| f.on_response_body.as_ref().map(Cb::Three),
                continues: abi::data_continue,
            },
            body,
            end_of_stream,
            |_, s, b| {
                s.response_body = b.clone();
                s.response_eos = end_of_stream;
                b.len()
            },
            |s, b| {
                b.clone_from(&s.response_body);
                true
            },
        )
    }

    /// `proxy_on_response_trailers`.
    pub fn on_response_trailers(&mut self, trailers: &mut HeaderMap) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_response_trailers",
                pick: |f| f.on_response_trailers.as_ref().map(Cb::Two),
                continues: abi::data_continue,
            },
            trailers,
            true,
            |st, s, t| load_headers(st, &mut s.response_trailers, &mut s.modified, abi::MAP_RESPONSE_TRAILERS, t),
            |s, t| unload_headers(&s.response_trailers, s.modified, abi::MAP_RESPONSE_TRAILERS, t),
        )
    }

    /// End of the stream in spec order: `proxy_on_done` then `proxy_on_log` (headers still readable).
    /// Call it after the response is sent, before dropping the stream (Drop then only runs `proxy_on_delete`).
    pub fn on_log(&mut self) -> Result<(), PluginFailure> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        if !self.handle.plugin.callbacks.done_or_log {
            return Ok(());
        }
        self.with_instance(|inst, ctx| {
            inst.call("proxy_on_done", |f| f.on_done.as_ref(), ctx as i32)?;
            inst.call("proxy_on_log", |f| f.on_log.as_ref(), ctx as i32)?;
            Ok(())
        })
    }

    /// Wait until a paused stream is resumed by an out-of-band callback (`proxy_continue_stream`,
    /// `proxy_send_local_response`, `proxy_close_stream` from `on_http_call_response`, a tick or a queue).
    /// Holds no lock; wrap it in `tokio::time::timeout` to bound the pause.
    pub async fn resumed(&self) -> Resumption {
        loop {
            let notified = self.signal.notify.notified();
            if let Some(r) = self.signal.state.lock().take() {
                return r;
            }
            notified.await;
        }
    }

    /// Non-blocking check for a resumption posted since the last callback.
    pub fn try_resumed(&self) -> Option<Resumption> {
        self.signal.state.lock().take()
    }

    /// Current request headers as the plugin left them (re-read after a resumption).
    pub fn request_headers(&mut self) -> Result<HeaderMap, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.request_headers.clone()))
    }

    /// Current response headers as the plugin left them.
    pub fn response_headers(&mut self) -> Result<HeaderMap, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.response_headers.clone()))
    }

    /// The request body as the plugin left it: re-read after a body callback that paused at end of stream was
    /// resumed, since the plugin may have replaced it (`proxy_set_buffer_bytes`) from another callback.
    pub fn request_body(&mut self) -> Result<Bytes, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.request_body.clone()))
    }

    /// The response body as the plugin left it (see [`HttpStream::request_body`]).
    pub fn response_body(&mut self) -> Result<Bytes, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.response_body.clone()))
    }

    /// Request headers callback plus, on `Pause`, waiting for the resumption; returns Continue (with `headers`
    /// refreshed), LocalResponse or Close — never Pause.
    pub async fn run_request_headers(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        let action = self.on_request_headers(headers, end_of_stream)?;
        self.finish_pause(action, headers, true).await
    }

    /// Response-side twin of [`HttpStream::run_request_headers`].
    pub async fn run_response_headers(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        let action = self.on_response_headers(headers, end_of_stream)?;
        self.finish_pause(action, headers, false).await
    }

    async fn finish_pause(
        &mut self,
        action: FilterAction,
        headers: &mut HeaderMap,
        request: bool,
    ) -> Result<FilterAction, PluginFailure> {
        if action != FilterAction::Pause {
            return Ok(action);
        }
        match self.resumed().await {
            Resumption::Continue => {
                *headers = if request { self.request_headers()? } else { self.response_headers()? };
                self.changed = true;
                Ok(FilterAction::Continue)
            }
            Resumption::LocalResponse(r) => Ok(FilterAction::LocalResponse(r)),
            Resumption::Close => Ok(FilterAction::Close),
            Resumption::Failed(f) => Err(f),
        }
    }

    /// Set a property for this stream (e.g. `upstream.address` once connected, or any custom name), readable by
    /// the plugin through `proxy_get_property`. `name` is dotted (`upstream.address`).
    pub fn set_property(&mut self, name: &str, value: impl Into<Vec<u8>>) -> Result<(), PluginFailure> {
        let value = value.into();
        self.with_instance(|inst, ctx| {
            inst.stream(ctx)?.properties.insert(name.to_string(), value);
            Ok(())
        })
    }

    /// Read a custom property the plugin set on this stream with `proxy_set_property` (e.g. a value it wants
    /// logged), or one the host set with [`HttpStream::set_property`]. Built-in attributes are not returned.
    pub fn property(&mut self, name: &str) -> Result<Option<Vec<u8>>, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.properties.get(name).cloned()))
    }

    /// Upstream group the plugin chose with `proxy_set_property("portico.route.upstream", group)`; call after
    /// the request headers phase and before routing.
    pub fn routed_upstream(&mut self) -> Result<Option<String>, PluginFailure> {
        self.with_instance(|inst, ctx| Ok(inst.stream(ctx)?.routed_upstream.clone()))
    }
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        if self.dead {
            return;
        }
        // Borrowed, not cloned (an `Arc` clone is a contended atomic on the plugin shared by every worker).
        let plugin = &self.handle.plugin;
        let mut slot = plugin.lock_slot(self.slot);
        if slot.generation != self.generation {
            return;
        }
        let Some(inst) = slot.instance.as_mut() else { return };
        let ctx = self.context;
        inst.store.data_mut().current = ctx;
        let mut r = Ok(());
        if !self.done {
            r = inst.call("proxy_on_done", |f| f.on_done.as_ref(), ctx as i32).map(|_| ());
        }
        if r.is_ok() {
            r = inst.call("proxy_on_delete", |f| f.on_delete.as_ref(), ctx as i32).map(|_| ());
        }
        let st = inst.store.data_mut();
        let called_out = st.streams.get(&ctx).is_some_and(|s| s.called_out);
        st.remove_stream(ctx);
        st.current = st.root_context;
        if called_out {
            let (s, g) = (self.slot, self.generation);
            plugin.core.callouts.lock().retain(|_, o| !(o.slot == s && o.generation == g && o.context == ctx));
        }
        if let Err(e) = r {
            plugin.poison(&mut slot, &e);
        }
    }
}
