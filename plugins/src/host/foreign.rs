//! Foreign functions: `proxy_call_foreign_function`. `clear_route_cache` is built in (Portico routes after
//! the header phase, so there is no cache); the rest go to [`crate::HostServices::foreign_function`].

use wasmtime::Result;

use super::{wrap, Imports, ENV};
use crate::abi::*;
use crate::memory::{self as mem, Ctx};

pub(super) fn link(l: &mut Imports<'_>) -> Result<()> {
    const E: &str = ENV;
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
    Ok(())
}
