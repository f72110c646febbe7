//! The upstream selection phase (Portico's extension, shaped after proxy-wasm spec PR #105): the proxy asks a
//! stream's plugin for an endpoint of a group through `portico_on_upstream_select`, offering the candidates on
//! demand (see [`crate::CandidateSource`]).

use std::sync::Arc;

use crate::candidates::{Candidate, CandidateList, CandidateSource};
use crate::error::PluginFailure;
use crate::store::SelectInput;
use crate::stream::HttpStream;

impl HttpStream {
    /// Ask the plugin to pick an endpoint of `group` (Portico extension `portico_on_upstream_select`). `attempt`
    /// is 0 first, then 1, 2, ... on retries with `failed` = the address that just failed. Returns the chosen
    /// address if the plugin set `portico.upstream.selected` to one of `candidates` (in this callback, or in
    /// request headers for attempt 0); `None` = no decision, use native balancing.
    pub fn select_endpoint(
        &mut self,
        group: &str,
        candidates: &[Candidate],
        attempt: u32,
        failed: Option<&str>,
    ) -> Result<Option<String>, PluginFailure> {
        let source: Arc<dyn CandidateSource> = Arc::new(CandidateList::new(candidates.to_vec()));
        self.select_endpoint_from(group, &source, attempt, failed)
    }

    /// [`HttpStream::select_endpoint`] with candidates produced on demand: the list is built and encoded only
    /// if the plugin reads `portico.upstream.candidates` (see [`CandidateSource`]).
    pub fn select_endpoint_from(
        &mut self,
        group: &str,
        candidates: &Arc<dyn CandidateSource>,
        attempt: u32,
        failed: Option<&str>,
    ) -> Result<Option<String>, PluginFailure> {
        let selects = self.handle.plugin.callbacks.upstream_select;
        self.with_instance(|inst, ctx| {
            let s = inst.stream(ctx)?;
            // The candidates are only readable during `portico_on_upstream_select`: a module without it can
            // only have chosen in its request headers callback.
            if selects {
                s.select = Some(SelectInput {
                    group: group.to_string(),
                    source: candidates.clone(),
                    failed: failed.map(str::to_string),
                });
            }
            let preselected = if attempt == 0 { s.selected_upstream.take() } else { None };
            s.selected_upstream = None;
            let r = if selects {
                inst.stream(ctx)?.in_band = true;
                let args = (ctx as i32, attempt as i32);
                let r = inst.call("portico_on_upstream_select", |f| f.on_upstream_select.as_ref(), args);
                inst.stream(ctx)?.in_band = false;
                r.map(|_| ())
            } else {
                Ok(())
            };
            let s = inst.stream(ctx)?;
            s.select = None;
            r?;
            if s.selected_upstream.is_none() {
                s.selected_upstream = preselected;
            }
            Ok(match s.selected_upstream.clone() {
                Some(addr) if candidates.contains(&addr) => Some(addr),
                Some(addr) => {
                    let core = &inst.store.data().core;
                    tracing::warn!(plugin = %core.name, address = %addr, group, "plugin selected an address that is not a candidate; ignoring");
                    None
                }
                None => None,
            })
        })
    }
}
