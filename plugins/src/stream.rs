//! [`HttpStream`]: one request flowing through one plugin, a stream context in one instance. The phases, in
//! the order a request meets them: request headers, body, trailers; upstream selection (`select.rs`); response
//! headers, body, trailers; `on_log`; drop (`proxy_on_done`, `proxy_on_delete`). Each runs one callback
//! synchronously; a Pause is resumed by another callback (a callout answer, a tick, a queue) through the
//! stream's signal (`pause.rs`).
//!
//! A phase whose callback the module does not export returns Continue without touching the instance, unless a
//! later callback could read what the phase would have stored. Header maps are not copied into the stream: the
//! caller's map is swapped in for the callback and back out after it, and copied only for a plugin whose later
//! callbacks may read it (see [`crate::module::Callbacks`]).

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::TypedFunc;

use crate::abi;
use crate::context::{Routed, StreamSignal};
use crate::error::{FailureKind, PluginFailure};
use crate::instance::{invoke, Exports, Instance, Slot};
use crate::phase_data::{Body, Headers, LentHead, PhaseData};
use crate::pool::{Pending, Plugin, PluginHandle};
use crate::request_head::Head;
use crate::types::{FilterAction, HeaderMap, RequestFacts};

/// One request flowing through one plugin: a stream context in one instance.
///
/// Each method runs at most one callback synchronously. Streams opened on a worker thread (see
/// [`crate::enter_worker`]) must be used on it. Drop runs `proxy_on_done` (unless [`HttpStream::on_log`] did)
/// and `proxy_on_delete`.
pub struct HttpStream {
    pub(crate) handle: Arc<PluginHandle>,
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) context: u32,
    /// The request's facts until the stream's context is made (by its first callback): `Some` means the
    /// stream has no context yet, and `slot`, `generation` and `context` mean nothing.
    pub(crate) unopened: Option<Arc<dyn RequestFacts>>,
    /// The stream's signal once it paused (or was asked for one): most streams never need it.
    pub(crate) signal: Option<Arc<StreamSignal>>,
    pub(crate) done: bool,
    pub(crate) dead: bool,
    /// Its context was deleted when its last possible callback returned (see
    /// [`crate::module::Callbacks::ends_with_request_headers`]): dropping it has nothing left to do.
    pub(crate) deleted: bool,
    /// The last phase wrote the plugin's changes into the caller's data (see [`HttpStream::data_changed`]).
    pub(crate) changed: bool,
    /// `portico.route.upstream` as the request headers phase (or a resumption) left it: read back without
    /// touching the instance again.
    pub(crate) routed: Option<Routed>,
    /// The plugin set `portico.upstream.selected` in its request headers phase.
    pub(crate) preselected: bool,
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
    /// Start a request. Its stream context is made by the stream's first callback, in the instance the thread
    /// uses then (its own on a worker, see [`crate::enter_worker`]), with `proxy_on_context_create(ctx, root)`;
    /// a failure to make it is that callback's failure. (The `Result` is kept for hosts that treat opening as
    /// a step that may fail; today it always succeeds.)
    ///
    /// `facts` may be shared (`Arc`) by every plugin of a request's chain: the host reads them only when a
    /// guest asks for a property that needs them.
    pub fn new_stream(self: &Arc<Self>, facts: impl Into<Arc<dyn RequestFacts>>) -> Result<HttpStream, PluginFailure> {
        self.handle().new_stream(facts)
    }

    /// A stream whose context is made lazily, in the same visit to the instance as its first callback (see
    /// [`HttpStream::with_instance`]): a request's plugins cost one visit fewer each, and a plugin with nothing
    /// to do for a request (a balancer when the request was answered before balancing) costs none. A failure to
    /// make the context (no instance, a broken plugin, too many streams) surfaces there, as that phase's
    /// failure, handled by the same policy.
    pub(crate) fn open_stream(handle: Arc<PluginHandle>, facts: Arc<dyn RequestFacts>) -> HttpStream {
        HttpStream {
            handle,
            slot: 0,
            generation: 0,
            context: 0,
            unopened: Some(facts),
            signal: None,
            done: false,
            dead: false,
            deleted: false,
            changed: false,
            routed: None,
            preselected: false,
        }
    }

    /// Makes a stream context in slot `i`'s instance (creating the instance if need be) and runs
    /// `proxy_on_context_create(ctx, root)` when the module exports it. Returns the context.
    fn open_context<'s>(
        &self,
        slot: &'s mut Slot,
        i: usize,
        facts: Arc<dyn RequestFacts>,
    ) -> Result<(&'s mut Instance, u32), PluginFailure> {
        let inst = self.ensure_instance(slot, i)?;
        let st = inst.store.data_mut();
        let Some(ctx) = st.streams.open(facts) else {
            return Err(st.core.failure(FailureKind::Unavailable, "too many streams on one instance"));
        };
        st.current = ctx;
        if self.callbacks.context_create {
            let root = st.root_context as i32;
            inst.call("proxy_on_context_create", |f| f.on_context_create.as_ref(), (ctx as i32, root))?;
        }
        Ok((inst, ctx))
    }
}

impl PluginHandle {
    /// [`Plugin::new_stream`], counted on this handle.
    pub fn new_stream(self: &Arc<Self>, facts: impl Into<Arc<dyn RequestFacts>>) -> Result<HttpStream, PluginFailure> {
        Ok(Plugin::open_stream(self.clone(), facts.into()))
    }

    /// A stream counted on this handle, which it takes (a request's chain opens one per plugin: a clone of
    /// the handle and the drop of the caller's are two atomic operations it need not make). Its context is
    /// made by its first callback, whose failure that phase handles, so opening cannot fail.
    pub fn into_stream(self: Arc<Self>, facts: Arc<dyn RequestFacts>) -> HttpStream {
        Plugin::open_stream(self, facts)
    }
}

/// The callback a phase runs and how its return value reads.
struct PhaseCallback {
    /// The export's name, for failures.
    name: &'static str,
    /// The export, if the module has it.
    pick: fn(&Exports) -> Option<Cb<'_>>,
    /// Whether a returned value lets the stream go on: [`abi::headers_continue`] or [`abi::data_continue`].
    continues: fn(i32) -> bool,
    /// The request headers phase: where a plugin routes and may choose an endpoint.
    routes: bool,
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

    /// Context id given to the guest (unique among the live contexts of its instance); 0 until the stream's
    /// first callback made its context.
    pub fn context_id(&self) -> u32 {
        self.context
    }

    pub(crate) fn with_instance<T>(
        &mut self,
        f: impl FnOnce(&mut Instance, u32) -> Result<T, PluginFailure>,
    ) -> Result<T, PluginFailure> {
        // Borrowed, not cloned (an `Arc` clone is a contended atomic on the plugin shared by every worker).
        let plugin = &self.handle.plugin;
        if self.dead {
            return Err(plugin.core.failure(FailureKind::Unavailable, "stream's plugin instance failed earlier"));
        }
        // A stream not opened yet gets its context in this same visit, in the instance this thread uses.
        let opening = self.unopened.take();
        if opening.is_some() {
            self.slot = plugin.slot_for_new_stream();
        }
        let (i, generation, ctx) = (self.slot, self.generation, self.context);
        let (mut opened, mut opened_generation) = (None, generation);
        let mut reached = true;
        let r = plugin
            .with_slot(i, (f, opening), |slot, (f, opening)| {
                let r = match opening {
                    Some(facts) => plugin.open_context(slot, i, facts).and_then(|(inst, ctx)| {
                        opened = Some(ctx);
                        f(inst, ctx)
                    }),
                    None => match slot.instance.as_mut() {
                        Some(inst) if slot.generation == generation => {
                            inst.store.data_mut().current = ctx;
                            f(inst, ctx)
                        }
                        _ => {
                            Err(plugin.core.failure(FailureKind::Unavailable, "stream's plugin instance was recreated"))
                        }
                    },
                };
                if opened.is_some() {
                    opened_generation = slot.generation;
                }
                if let Err(e) = &r {
                    if e.kind != FailureKind::Unavailable {
                        plugin.poison(slot, e);
                    }
                }
                r
            })
            .unwrap_or_else(|(_, opening)| {
                reached = false;
                let why = match opening {
                    Some(_) => "no instance this thread can use",
                    None => "stream used off the worker thread that owns its plugin instance",
                };
                Err(plugin.core.failure(FailureKind::Unavailable, why))
            });
        if let Some(ctx) = opened {
            (self.context, self.generation) = (ctx, opened_generation);
        }
        plugin.dispatch_slot(i);
        // Unreached, the instance and the context are fine: dropping the stream still deletes it, on its owner.
        // Never opened, there is nothing to delete.
        if r.is_err() && (reached || self.context == 0) {
            self.dead = true;
        }
        r
    }

    /// Common path for header/body/trailer callbacks: put the caller's data where hostcalls find it, run the
    /// callback (if exported), take the data back. `needed`: whether the phase must touch the instance at all
    /// (its callback is exported, or a later callback could read what it stores).
    fn phase(
        &mut self,
        callback: PhaseCallback,
        needed: bool,
        mut data: impl PhaseData,
        eos: bool,
    ) -> Result<FilterAction, PluginFailure> {
        self.changed = false;
        if !needed {
            return Ok(FilterAction::Continue);
        }
        if let Some(signal) = &self.signal {
            // A resumption posted before this phase is stale.
            signal.state.lock().take();
        }
        let PhaseCallback { name, pick, continues, routes } = callback;
        let ends_here = routes && self.handle.plugin.callbacks.ends_with_request_headers();
        let mut changed = false;
        let mut flags = (None, false);
        let mut signal = None;
        let mut deleted = false;
        let r = self.with_instance(|inst, ctx| {
            let s = inst.stream(ctx)?;
            let n = data.load(s, eos);
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
            let action = match &r {
                Ok(_) if s.local_response.is_some() || s.close => None,
                Ok(action) if continues(*action) || s.continued => None,
                Ok(_) => Some(FilterAction::Pause),
                Err(_) => None,
            };
            let pause = action.is_some();
            changed = data.unload(s, pause);
            if routes {
                flags = (s.routed_upstream.get().map(Routed::new), s.selected_upstream.get().is_some());
            }
            r?;
            if pause {
                signal = Some(s.signal().clone());
            }
            let verdict = if let Some(resp) = s.local_response.take() {
                FilterAction::LocalResponse(resp)
            } else if s.close {
                FilterAction::Close
            } else {
                action.unwrap_or(FilterAction::Continue)
            };
            // Nothing can reach this stream again: delete it now rather than in a second visit on drop.
            if ends_here && verdict == FilterAction::Continue && !s.called_out && s.selected_upstream.get().is_none() {
                let st = inst.store.data_mut();
                st.streams.close(ctx);
                st.current = st.root_context;
                deleted = true;
            }
            Ok(verdict)
        });
        self.changed = changed;
        if deleted {
            (self.deleted, self.done) = (true, true);
        }
        if routes {
            (self.routed, self.preselected) = flags;
        }
        if signal.is_some() {
            self.signal = signal;
        }
        r
    }

    /// Whether the last header, body or trailer phase wrote the plugin's changes into the caller's data (for
    /// headers: a map hostcall changed them; `run_*_headers` also after a resumption re-read them). When no
    /// plugin of a chain changed the headers, the proxy keeps its own request or response as it was instead
    /// of rebuilding it from the list.
    pub fn data_changed(&self) -> bool {
        self.changed
    }

    /// `proxy_on_request_headers` with the caller's request head lent to the callback and read in place (see
    /// [`crate::request_head`]); the plugin's changes are written back into it.
    pub fn on_request_head(&mut self, head: &mut Head, end_of_stream: bool) -> Result<FilterAction, PluginFailure> {
        let keep = self.handle.plugin.callbacks.keeps_request_maps();
        self.request_headers_phase(LentHead { head, keep }, keep, end_of_stream)
    }

    /// `proxy_on_request_headers`. `headers` must include `:method`, `:path`, `:authority`, `:scheme`; the
    /// plugin's changes (including `:path`/`:authority` rewrites) are written back into it.
    pub fn on_request_headers(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        let keep = self.handle.plugin.callbacks.keeps_request_maps();
        self.request_headers_phase(Headers { map: headers, t: abi::MAP_REQUEST_HEADERS, keep }, keep, end_of_stream)
    }

    /// The request headers phase with the request's headers as a lent head or a list; `keep`: a later callback
    /// could read them.
    fn request_headers_phase(
        &mut self,
        data: impl PhaseData,
        keep: bool,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        let needed = self.handle.plugin.callbacks.request_headers || keep;
        self.phase(
            PhaseCallback {
                name: "proxy_on_request_headers",
                pick: |f| f.on_request_headers.as_ref().map(Cb::Three),
                continues: abi::headers_continue,
                routes: true,
            },
            needed,
            data,
            end_of_stream,
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
                routes: false,
            },
            self.handle.plugin.callbacks.request_body,
            Body { body, request: true },
            end_of_stream,
        )
    }

    /// `proxy_on_request_trailers`.
    pub fn on_request_trailers(&mut self, trailers: &mut HeaderMap) -> Result<FilterAction, PluginFailure> {
        let cb = self.handle.plugin.callbacks;
        let keep = cb.keeps_request_maps();
        self.phase(
            PhaseCallback {
                name: "proxy_on_request_trailers",
                pick: |f| f.on_request_trailers.as_ref().map(Cb::Two),
                continues: abi::data_continue,
                routes: false,
            },
            cb.request_trailers || keep,
            Headers { map: trailers, t: abi::MAP_REQUEST_TRAILERS, keep },
            true,
        )
    }

    /// `proxy_on_response_headers`; `headers` must include `:status`.
    pub fn on_response_headers(
        &mut self,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Result<FilterAction, PluginFailure> {
        let cb = self.handle.plugin.callbacks;
        let keep = cb.keeps_response_maps();
        self.phase(
            PhaseCallback {
                name: "proxy_on_response_headers",
                pick: |f| f.on_response_headers.as_ref().map(Cb::Three),
                continues: abi::headers_continue,
                routes: false,
            },
            cb.response_headers || keep,
            Headers { map: headers, t: abi::MAP_RESPONSE_HEADERS, keep },
            end_of_stream,
        )
    }

    /// `proxy_on_response_body` with the body buffered so far (see [`HttpStream::on_request_body`]).
    pub fn on_response_body(&mut self, body: &mut Bytes, end_of_stream: bool) -> Result<FilterAction, PluginFailure> {
        self.phase(
            PhaseCallback {
                name: "proxy_on_response_body",
                pick: |f| f.on_response_body.as_ref().map(Cb::Three),
                continues: abi::data_continue,
                routes: false,
            },
            self.handle.plugin.callbacks.response_body,
            Body { body, request: false },
            end_of_stream,
        )
    }

    /// `proxy_on_response_trailers`.
    pub fn on_response_trailers(&mut self, trailers: &mut HeaderMap) -> Result<FilterAction, PluginFailure> {
        let cb = self.handle.plugin.callbacks;
        let keep = cb.keeps_response_maps();
        self.phase(
            PhaseCallback {
                name: "proxy_on_response_trailers",
                pick: |f| f.on_response_trailers.as_ref().map(Cb::Two),
                continues: abi::data_continue,
                routes: false,
            },
            cb.response_trailers || keep,
            Headers { map: trailers, t: abi::MAP_RESPONSE_TRAILERS, keep },
            true,
        )
    }

    /// End of the stream in spec order: `proxy_on_done` then `proxy_on_log` (headers still readable).
    /// Call it after the response is sent, before dropping the stream (Drop then only runs `proxy_on_delete`).
    pub fn on_log(&mut self) -> Result<(), PluginFailure> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        if !self.handle.plugin.callbacks.done_or_log() {
            return Ok(());
        }
        self.with_instance(|inst, ctx| {
            inst.call("proxy_on_done", |f| f.on_done.as_ref(), ctx as i32)?;
            inst.call("proxy_on_log", |f| f.on_log.as_ref(), ctx as i32)?;
            Ok(())
        })
    }
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        // No callback reached it: there is no context, unless the plugin must meet every request's context.
        if self.unopened.is_some()
            && !(self.handle.plugin.callbacks.sees_stream_life() && self.with_instance(|_, _| Ok(())).is_ok())
        {
            return;
        }
        if self.dead || self.deleted {
            return;
        }
        let plugin = &self.handle.plugin;
        let i = self.slot;
        let end = (self.generation, self.context, !self.done);
        // On a thread that cannot reach the instance (the stream left its worker), its owner deletes it.
        let deleted = plugin.with_slot(i, end, |slot, (generation, context, done)| {
            // A failure discards the instance (and is logged there); the request has been answered.
            let _ = plugin.delete_stream(i, slot, generation, context, done);
        });
        if let Err((generation, context, done)) = deleted {
            plugin.post(i, Pending::Delete { generation, context, done });
        }
        plugin.dispatch_slot(i);
    }
}
