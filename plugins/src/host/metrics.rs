//! Metrics plugins define: `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`,
//! `proxy_get_metric` (counters, gauges, histograms in the engine's registry; see [`crate::metrics`]).

use wasmtime::Result;

use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::memory::{self as mem, Ctx};

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
    wrap!(l, E, "proxy_define_metric", |mut c: Ctx<'_>, t: i32, np: i32, nn: i32, ret: i32| -> Result<i32> {
        let name = mem::read_str(&mut c, np, nn, "proxy_define_metric")?;
        mem::check(&mut c, ret, 4, "proxy_define_metric")?;
        let core = &c.data().core;
        let Some(id) = core.guest_metrics.define(&core.metrics, &core.name, t, &name) else { return Ok(BAD_ARGUMENT) };
        mem::write_u32(&mut c, ret, id, "proxy_define_metric")?;
        Ok(OK)
    });
    wrap!(l, E, "proxy_increment_metric", |c: Ctx<'_>, id: i32, delta: i64| -> i32 {
        c.data().core.guest_metrics.increment(id as u32, delta)
    });
    wrap!(l, E, "proxy_record_metric", |c: Ctx<'_>, id: i32, value: i64| -> i32 {
        c.data().core.guest_metrics.record(id as u32, value as u64)
    });
    wrap!(l, E, "proxy_get_metric", |mut c: Ctx<'_>, id: i32, ret: i32| -> Result<i32> {
        match c.data().core.guest_metrics.get(id as u32) {
            Ok(v) => {
                mem::write_u64(&mut c, ret, v, "proxy_get_metric")?;
                Ok(OK)
            }
            Err(s) => Ok(s),
        }
    });
    Ok(())
}
