//! Metrics plugins define: `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`,
//! `proxy_get_metric` (counters, gauges, histograms in the engine's registry; see [`crate::metrics`]).

use wasmtime::Result;

use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::memory::{self as mem, Ctx};
use crate::metrics::GuestMetric;
use crate::store::HostState;

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
    wrap!(l, E, "proxy_define_metric", |mut c: Ctx<'_>, t: i32, np: i32, nn: i32, ret: i32| -> Result<i32> {
        let name = mem::read_str(&mut c, np, nn, "proxy_define_metric")?;
        mem::check(&mut c, ret, 4, "proxy_define_metric")?;
        let core = &c.data().core;
        let id = match core.guest_metrics.define(&core.metrics, &core.name, t, &name) {
            Ok(id) => id,
            Err(status) => return Ok(status),
        };
        mem::write_u32(&mut c, ret, id, "proxy_define_metric")?;
        Ok(OK)
    });
    wrap!(l, E, "proxy_increment_metric", |mut c: Ctx<'_>, id: i32, delta: i64| -> i32 {
        metric(c.data_mut(), id).map_or(NOT_FOUND, |m| m.increment(delta))
    });
    wrap!(l, E, "proxy_record_metric", |mut c: Ctx<'_>, id: i32, value: i64| -> i32 {
        metric(c.data_mut(), id).map_or(NOT_FOUND, |m| m.record(value as u64))
    });
    wrap!(l, E, "proxy_get_metric", |mut c: Ctx<'_>, id: i32, ret: i32| -> Result<i32> {
        match metric(c.data_mut(), id).map_or(Err(NOT_FOUND), GuestMetric::get) {
            Ok(v) => {
                mem::write_u64(&mut c, ret, v, "proxy_get_metric")?;
                Ok(OK)
            }
            Err(s) => Ok(s),
        }
    });
    Ok(())
}

/// The instance's handle on metric `id`, fetched from the plugin's list on first use (so updates take no lock);
/// `None` for an id the plugin never got.
fn metric(st: &mut HostState, id: i32) -> Option<&GuestMetric> {
    let index = (id as u32 as usize).checked_sub(1)?;
    if st.metric_handles.get(index).is_none_or(Option::is_none) {
        // Only ids the plugin got back are cached, so the cache is as long as its list of metrics at most.
        let handle = st.core.guest_metrics.handle(id as u32)?;
        if st.metric_handles.len() <= index {
            st.metric_handles.resize(index + 1, None);
        }
        st.metric_handles[index] = Some(handle);
    }
    st.metric_handles[index].as_ref()
}
