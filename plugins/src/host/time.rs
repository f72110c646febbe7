//! Time and timers: `proxy_get_current_time_nanoseconds` (the [`crate::HostServices::now`] clock) and
//! `proxy_set_tick_period_milliseconds` (the root context's `proxy_on_tick` period).

use std::sync::OnceLock;
use std::time::{Duration, Instant, UNIX_EPOCH};

use wasmtime::Result;

use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::memory::{self as mem, Ctx};
use crate::store::HostState;

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
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
    Ok(())
}

pub(super) fn monotonic_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

pub(super) fn realtime_nanos(st: &HostState) -> u64 {
    st.core.services.now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(0)).unwrap_or(0)
}
