//! The linker: every host function ([`crate::host`]) registered once per engine, since they depend only on the
//! store's data. Each plugin version resolves its imports against it once, into an `InstancePre`.

use std::collections::HashSet;

use wasmtime::{Engine, Linker, Result};

use crate::host;
use crate::store::HostState;

/// Linker plus the (module, name) pairs it defines, so unknown imports can be named in logs.
pub(crate) struct HostLinker {
    pub linker: Linker<HostState>,
    pub known: HashSet<(String, String)>,
}

impl HostLinker {
    /// Whether the host provides this import.
    pub fn provides(&self, module: &str, name: &str) -> bool {
        self.known.contains(&(module.to_string(), name.to_string()))
    }
}

/// Build the linker once per engine.
pub(crate) fn build_linker(engine: &Engine) -> Result<HostLinker> {
    let mut linker = Linker::new(engine);
    let mut known = HashSet::new();
    host::link_all(&mut host::Imports { linker: &mut linker, known: &mut known })?;
    Ok(HostLinker { linker, known })
}
