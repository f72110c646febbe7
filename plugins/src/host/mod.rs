//! Every host function linked into plugin instances, one file per hostcall group: `env.proxy_*` (the proxy-wasm
//! ABI 0.2.1, the 0.1.0-era names SDKs still import, and Portico's extensions) and WASI preview1.
//!
//! Hostcalls run inside a guest callback on the instance's store: they read and write [`crate::store::HostState`]
//! through the `Caller`, and guest memory through [`crate::memory`]. An out-of-bounds pointer traps the guest
//! (`FailureKind::BadPointer`); everything else answers with an ABI status.

use std::collections::HashSet;

use wasmtime::{IntoFunc, Linker, Result};

use crate::abi::OK;
use crate::store::HostState;

mod arena;
mod buffers;
mod foreign;
pub(crate) mod headers;
mod http_call;
mod log;
mod metrics;
mod properties;
mod queues;
mod shared_data;
mod stream_control;
mod time;
mod wasi;

/// Where a hostcall group registers its functions: the linker, plus the (module, name) pairs defined so far,
/// so that imports the host does not provide can be named in logs.
pub(crate) struct Imports<'a> {
    pub linker: &'a mut Linker<HostState>,
    pub known: &'a mut HashSet<(String, String)>,
}

impl Imports<'_> {
    pub(crate) fn func_wrap<P, A>(
        &mut self,
        module: &str,
        name: &str,
        f: impl IntoFunc<HostState, P, A>,
    ) -> Result<()> {
        self.linker.func_wrap(module, name, f)?;
        self.known.insert((module.to_string(), name.to_string()));
        Ok(())
    }
}

/// Registers a host function (a shorter line per hostcall).
macro_rules! wrap {
    ($l:expr, $m:expr, $name:expr, $f:expr) => {
        $l.func_wrap($m, $name, $f)?;
    };
}
pub(crate) use wrap;

/// The module proxy-wasm hostcalls are imported from.
const ENV: &str = "env";

/// An ABI status from a result whose error is the status.
fn status(r: Result<(), i32>) -> i32 {
    match r {
        Ok(()) => OK,
        Err(s) => s,
    }
}

/// Links every group: `env.proxy_*`, and WASI under both module names SDKs import it from.
pub(crate) fn link_all(l: &mut Imports<'_>) -> Result<()> {
    log::link(l)?;
    time::link(l)?;
    buffers::link(l)?;
    headers::link(l)?;
    properties::link(l)?;
    shared_data::link(l)?;
    queues::link(l)?;
    stream_control::link(l)?;
    http_call::link(l)?;
    foreign::link(l)?;
    metrics::link(l)?;
    arena::link(l)?;
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        wasi::link(l, module)?;
    }
    wasi::link_emscripten(l)
}
