//! Routing and endpoint selection (Portico's extension, shaped after proxy-wasm spec PR #105): a plugin routes
//! with `proxy_set_property("portico.route.upstream", group)` in its request headers callback, and picks an
//! endpoint in `portico_on_upstream_select` (or already in its request headers callback) with
//! `portico.upstream.selected`. The candidates are offered on demand (see [`crate::CandidateSource`]). Also the
//! host's own per-stream properties (`upstream.address`, ...).

use std::sync::Arc;

use crate::abi::MAP_REQUEST_HEADERS;
use crate::candidates::{group_version, Candidate, CandidateList, CandidateSource};
use crate::context::Routed;
use crate::error::PluginFailure;
use crate::request_head::Head;
use crate::stream::HttpStream;
use crate::types::HeaderMap;

/// The request headers an endpoint selection lends its callback.
enum Loan<'a> {
    List(&'a mut HeaderMap),
    Head(&'a mut Head),
}

impl HttpStream {
    /// Upstream group the plugin chose with `proxy_set_property("portico.route.upstream", group)` in its request
    /// headers callback (or the callback that resumed it); read after that phase and before routing. Kept by
    /// the stream, so reading it does not touch the instance.
    pub fn routed_upstream(&self) -> Option<&str> {
        self.routed.as_ref().map(Routed::as_str)
    }

    /// Whether the plugin chose an endpoint in its request headers callback: a plugin without
    /// `portico_on_upstream_select` takes part in endpoint selection only then.
    pub fn preselected(&self) -> bool {
        self.preselected
    }

    /// Ask the plugin to pick an endpoint of `group` (Portico extension `portico_on_upstream_select`). `attempt`
    /// is 0 first, then 1, 2, ... on retries with `failed` = the address that just failed. Returns the chosen
    /// address if the plugin set `portico.upstream.selected` to one of `candidates` (in this callback, or in
    /// request headers for attempt 0); `None` = no decision, use native balancing. `request_headers` are the
    /// request's headers as the chain left them, readable by the callback (a hash on a header or the path).
    pub fn select_endpoint(
        &mut self,
        request_headers: &mut HeaderMap,
        group: &str,
        candidates: &[Candidate],
        attempt: u32,
        failed: Option<&str>,
    ) -> Result<Option<String>, PluginFailure> {
        let source: Arc<dyn CandidateSource> = Arc::new(CandidateList::new(candidates.to_vec()));
        let chosen = self.select_endpoint_from(request_headers, group, &source, attempt, failed)?;
        Ok(chosen.and_then(|i| candidates.get(i)).map(|c| c.address.clone()))
    }

    /// [`HttpStream::select_endpoint`] with candidates produced on demand: the list is built and encoded only
    /// if the plugin reads `portico.upstream.candidates` (see [`CandidateSource`]). Returns the chosen
    /// endpoint's index as the source numbers it ([`CandidateSource::index_of`]).
    pub fn select_endpoint_from(
        &mut self,
        request_headers: &mut HeaderMap,
        group: &str,
        candidates: &Arc<dyn CandidateSource>,
        attempt: u32,
        failed: Option<&str>,
    ) -> Result<Option<usize>, PluginFailure> {
        self.select(Loan::List(request_headers), group, candidates, attempt, failed)
    }

    /// [`HttpStream::select_endpoint_from`] with the request's head lent to the callback and read in place
    /// (see [`crate::request_head`]): the request as the proxy holds it then. Changes the plugin makes to the
    /// request headers in this callback are not applied, as with the list.
    pub fn select_endpoint_for(
        &mut self,
        head: &mut Head,
        group: &str,
        candidates: &Arc<dyn CandidateSource>,
        attempt: u32,
        failed: Option<&str>,
    ) -> Result<Option<usize>, PluginFailure> {
        self.select(Loan::Head(head), group, candidates, attempt, failed)
    }

    fn select(
        &mut self,
        mut request: Loan<'_>,
        group: &str,
        candidates: &Arc<dyn CandidateSource>,
        attempt: u32,
        failed: Option<&str>,
    ) -> Result<Option<usize>, PluginFailure> {
        let selects = self.handle.plugin.callbacks.upstream_select;
        // A plugin without the callback can only have chosen in its request headers callback.
        if !(selects || attempt == 0 && self.preselected) {
            return Ok(None);
        }
        let ends = self.handle.plugin.callbacks.ends_with_upstream_select();
        let mut reopen = None;
        let chosen = self.with_instance(|inst, ctx| {
            let s = inst.stream(ctx)?;
            // A choice made in the request headers callback stands for attempt 0 unless this one makes another.
            let preselected = attempt == 0 && s.selected_upstream.get().is_some();
            s.selected_upstream.clear();
            let writes = s.selected_upstream.writes();
            if selects {
                // The inputs are readable only during the callback; the request headers are the caller's.
                s.select.active = true;
                s.select.group.clear();
                s.select.group.push_str(group);
                s.select.source = Some(candidates.clone());
                s.select.failed = failed.map(str::to_string);
                let slot = inst.store.data().select_version_slot;
                if let Some(at) = slot {
                    let version = group_version(group, candidates.version()).to_le_bytes();
                    inst.write_guest(at, &version)?;
                }
                let s = inst.stream(ctx)?;
                let (bit, present) = (1 << MAP_REQUEST_HEADERS, s.present);
                // The stream's own copy of the map (kept for a later callback) steps aside for the callback.
                let mut kept = HeaderMap::new();
                match &mut request {
                    Loan::List(list) => std::mem::swap(&mut s.request_headers, list),
                    Loan::Head(head) => {
                        kept = std::mem::take(&mut s.request_headers);
                        std::mem::swap(&mut s.request_head.0, *head);
                        (s.lent, s.listed) = (true, false);
                    }
                }
                s.present |= bit;
                s.in_band = true;
                let args = (ctx as i32, attempt as i32);
                let r = inst.call("portico_on_upstream_select", |f| f.on_upstream_select.as_ref(), args);
                let s = inst.stream(ctx)?;
                s.in_band = false;
                match &mut request {
                    Loan::List(list) => std::mem::swap(&mut s.request_headers, list),
                    Loan::Head(head) => {
                        std::mem::swap(&mut s.request_head.0, *head);
                        s.request_headers = kept;
                        (s.lent, s.listed) = (false, false);
                    }
                }
                s.present = (s.present & !bit) | (present & bit);
                s.select.active = false;
                s.select.source = None;
                s.select.failed = None;
                r?;
            }
            let s = inst.stream(ctx)?;
            if preselected && s.selected_upstream.writes() == writes {
                s.selected_upstream.restore();
            }
            let (chosen, stray) = match s.selected_upstream.get() {
                None => (None, None),
                Some(address) => match candidates.index_of(address) {
                    Some(index) => (Some(index), None),
                    None => (None, Some(address.to_string())),
                },
            };
            // Nothing can reach this context again: close it now rather than in a second visit on drop, and keep
            // the facts for a retry's selection to open another.
            if ends && !s.called_out {
                reopen = s.facts.take();
                let st = inst.store.data_mut();
                st.streams.close(ctx);
                st.current = st.root_context;
            }
            if let Some(address) = stray {
                let core = &inst.store.data().core;
                tracing::warn!(plugin = %core.name, address, group, "plugin selected an address that is not a candidate; ignoring");
            }
            Ok(chosen)
        })?;
        if reopen.is_some() {
            (self.unopened, self.context) = (reopen, 0);
        }
        Ok(chosen)
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
}
