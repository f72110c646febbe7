//! A compiled module: Cranelift's output for one plugin's bytes, the ABI version its marker export declares,
//! and which per-request callbacks it exports. Cheap to clone; cached by the engine by content hash.

use wasmtime::Module;

use crate::error::PluginError;

/// A compiled, ABI-checked module, cheap to clone. Produced by [`PluginEngine::compile`].
#[derive(Clone)]
pub struct CompiledModule {
    pub(crate) module: Module,
    pub(crate) sha256: [u8; 32],
    pub(crate) abi: AbiVersion,
}

impl CompiledModule {
    /// Hex sha256 of the module bytes, for logs and the admin API.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The ABI version the module declared through its marker export.
    pub fn abi_version(&self) -> AbiVersion {
        self.abi
    }
}

impl std::fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModule").field("sha256", &self.sha256_hex()).field("abi", &self.abi).finish()
    }
}

/// proxy-wasm ABI version declared by a module's `proxy_abi_version_*` export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    /// `proxy_abi_version_0_2_0` (Go SDKs): identical to 0.2.1 minus `proxy_get_log_level`.
    V0_2_0,
    /// `proxy_abi_version_0_2_1` (Rust, C++, AssemblyScript SDKs).
    V0_2_1,
}

/// Which per-request callbacks the module exports, read once from its export section. The proxy skips what a
/// module cannot observe: bodies stream untouched through plugins that only look at headers, and a plugin with
/// no response-side callback costs nothing once its upstream is chosen. Each skipped callback is a wasm call,
/// a lock and a header copy fewer per request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Callbacks {
    pub request_body: bool,
    pub response_body: bool,
    /// Any callback that runs once the response has begun and may read response headers or properties such
    /// as `upstream.address`: response headers, body or trailers, `proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete`.
    pub response_side: bool,
    pub upstream_select: bool,
    pub done_or_log: bool,
}

impl Callbacks {
    pub(crate) fn of(module: &wasmtime::Module) -> Self {
        let exported = |name: &str| module.get_export(name).is_some_and(|e| e.func().is_some());
        let done_or_log = exported("proxy_on_done") || exported("proxy_on_log");
        Callbacks {
            request_body: exported("proxy_on_request_body"),
            response_body: exported("proxy_on_response_body"),
            response_side: done_or_log
                || exported("proxy_on_delete")
                || exported("proxy_on_response_headers")
                || exported("proxy_on_response_body")
                || exported("proxy_on_response_trailers"),
            upstream_select: exported("portico_on_upstream_select"),
            done_or_log,
        }
    }
}

pub(crate) fn detect_abi(plugin: &str, module: &Module) -> Result<AbiVersion, PluginError> {
    let mut found_010 = false;
    let mut other = None;
    for export in module.exports() {
        match export.name() {
            "proxy_abi_version_0_2_1" => return Ok(AbiVersion::V0_2_1),
            "proxy_abi_version_0_2_0" => return Ok(AbiVersion::V0_2_0),
            "proxy_abi_version_0_1_0" => found_010 = true,
            n if n.starts_with("proxy_abi_version_") => other = Some(n.to_string()),
            _ => {}
        }
    }
    let message = if found_010 {
        "module declares proxy-wasm ABI 0.1.0 (proxy_abi_version_0_1_0), which Portico does not support; \
         rebuild it with a current SDK (ABI 0.2.0 or 0.2.1)"
            .to_string()
    } else if let Some(name) = other {
        format!("module declares unknown proxy-wasm ABI version {name}; supported: 0.2.0, 0.2.1")
    } else {
        "missing proxy-wasm ABI version marker: module must export proxy_abi_version_0_2_1 or \
         proxy_abi_version_0_2_0 (is this a proxy-wasm plugin?)"
            .to_string()
    };
    Err(PluginError::AbiVersion { plugin: plugin.to_string(), message })
}
