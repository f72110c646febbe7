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

/// Which per-request callbacks the module exports, read once from its export section. The host and the proxy
/// skip what a module cannot observe: a phase whose callback is missing touches no instance, bodies stream
/// untouched through plugins that only look at headers, a plugin with no response-side callback costs nothing
/// once its upstream is chosen, and a header map is copied into a stream only when a later callback could
/// read it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Callbacks {
    pub context_create: bool,
    pub request_headers: bool,
    pub request_body: bool,
    pub request_trailers: bool,
    pub response_headers: bool,
    pub response_body: bool,
    pub response_trailers: bool,
    pub done: bool,
    pub log: bool,
    pub delete: bool,
    pub upstream_select: bool,
    /// `proxy_on_http_call_response`, `proxy_on_tick` or `proxy_on_queue_ready`: a callback that runs outside
    /// the stream's phases and may read any stream's maps (after `proxy_set_effective_context`).
    pub out_of_band: bool,
}

impl Callbacks {
    pub(crate) fn of(module: &wasmtime::Module) -> Self {
        let exported = |name: &str| module.get_export(name).is_some_and(|e| e.func().is_some());
        Callbacks {
            context_create: exported("proxy_on_context_create"),
            request_headers: exported("proxy_on_request_headers"),
            request_body: exported("proxy_on_request_body"),
            request_trailers: exported("proxy_on_request_trailers"),
            response_headers: exported("proxy_on_response_headers"),
            response_body: exported("proxy_on_response_body"),
            response_trailers: exported("proxy_on_response_trailers"),
            done: exported("proxy_on_done"),
            log: exported("proxy_on_log"),
            delete: exported("proxy_on_delete"),
            upstream_select: exported("portico_on_upstream_select"),
            out_of_band: exported("proxy_on_http_call_response")
                || exported("proxy_on_tick")
                || exported("proxy_on_queue_ready"),
        }
    }

    /// Whether the plugin sees a stream's life apart from its phases (its creation, end or deletion): then a
    /// stream no phase reached is still opened and closed, when it is dropped, so that the plugin meets every
    /// request (see [`crate::HttpStream`]'s lazy opening).
    pub(crate) fn sees_stream_life(&self) -> bool {
        self.context_create || self.done_or_log() || self.delete
    }

    pub(crate) fn done_or_log(&self) -> bool {
        self.done || self.log
    }

    /// Any callback that runs once the response has begun and may read response headers or properties such
    /// as `upstream.address`: response headers, body or trailers, `proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete`.
    pub(crate) fn response_side(&self) -> bool {
        self.response_headers || self.response_body || self.response_trailers || self.done_or_log() || self.delete
    }

    /// Whether a callback after the request headers (or trailers) phase could read that map: then the phase
    /// keeps a copy in the stream. (The upstream selection gets the caller's request headers again.)
    pub(crate) fn keeps_request_maps(&self) -> bool {
        self.request_body || self.request_trailers || self.response_side() || self.out_of_band
    }

    /// Whether nothing after the request headers callback can reach the stream: no later phase, no endpoint
    /// selection, nothing on the response side, no callback outside the phases that could name the context.
    /// Such a stream (the bundled router's) is deleted at the end of that callback, in the same visit to the
    /// instance, unless it paused, answered, chose an endpoint there or made a callout.
    pub(crate) fn ends_with_request_headers(&self) -> bool {
        !(self.request_body
            || self.request_trailers
            || self.upstream_select
            || self.response_side()
            || self.out_of_band)
    }

    /// Whether nothing after an endpoint selection can reach the stream, and nothing shows the guest a
    /// stream's life (no `proxy_on_context_create`, `proxy_on_done`, `proxy_on_log` or `proxy_on_delete`): a
    /// balancer that only picks (the bundled one). Its context is closed at the end of the selection, in the
    /// same visit to the instance, and the stream goes back to unopened: a retry's selection opens a new one,
    /// and dropping it touches nothing. The guest cannot tell: it never sees a context begin or end.
    pub(crate) fn ends_with_upstream_select(&self) -> bool {
        self.upstream_select
            && !(self.request_body
                || self.request_trailers
                || self.response_side()
                || self.out_of_band
                || self.sees_stream_life())
    }

    /// The same for the response headers and trailers.
    pub(crate) fn keeps_response_maps(&self) -> bool {
        self.response_body || self.response_trailers || self.done_or_log() || self.delete || self.out_of_band
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
