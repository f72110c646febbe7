//! [`PluginSpec`]: everything needed to load one plugin version.

use std::time::Duration;

use crate::types::FailPolicy;

/// Everything needed to load one plugin version.
#[derive(Clone)]
pub struct PluginSpec {
    /// Plugin name: metrics/log label and default root_id/vm_id.
    pub name: String,
    /// Where the bytes came from (file path, URL): for logs only.
    pub source: String,
    /// Module bytes (wasm binary; WAT text only in this crate's tests, which enable wasmtime's `wat` feature).
    pub wasm: Vec<u8>,
    /// Plugin configuration (JSON or plain), readable as PLUGIN_CONFIGURATION and passed to `proxy_on_configure`.
    pub config: String,
    /// Root context id, answered verbatim as the `plugin_root_id` property: SDKs register their root context
    /// factories under it (the C++ SDK under `""` unless told otherwise) and build the root context the id
    /// names, so an empty id stays empty. [`PluginSpec::new`] sets it to the plugin's name.
    pub root_id: String,
    /// VM id: scope of shared data and queues; empty = `name`.
    pub vm_id: String,
    /// VM configuration, readable as VM_CONFIGURATION in `proxy_on_vm_start`.
    pub vm_config: String,
    /// What the proxy does when this plugin fails at request time.
    pub fail: FailPolicy,
    /// Linear memory cap per instance, bytes.
    pub memory_limit: usize,
    /// CPU time one callback may use (enforced with epoch interruption and the thread's CPU clock, ~1 ms
    /// granularity; see `CpuBudget` in this module).
    pub cpu_limit: Duration,
    /// Instances (VMs) in the pool; 0 = number of CPUs. Each serves one callback at a time.
    pub instances: usize,
    /// Instance recreations allowed per minute before the plugin is marked broken.
    pub max_restarts_per_minute: usize,
    /// How long a broken plugin rests before one instance is tried again; doubles each time it breaks again
    /// (up to 5 minutes). A crash loop is rate-limited, not final: a plugin that only timed out while the
    /// machine was starved of CPU comes back by itself.
    pub broken_cooloff: Duration,
    /// How long a stream paused in its request or response headers waits to be resumed before the plugin has
    /// failed it (a timeout, answered by `fail`).
    pub pause_timeout: Duration,
}

impl std::fmt::Debug for PluginSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSpec")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("wasm_len", &self.wasm.len())
            .field("root_id", &self.root_id)
            .field("vm_id", &self.vm_id)
            .field("fail", &self.fail)
            .field("memory_limit", &self.memory_limit)
            .field("cpu_limit", &self.cpu_limit)
            .field("instances", &self.instances)
            .finish_non_exhaustive()
    }
}

impl PluginSpec {
    /// A spec with Portico's defaults: root id = name, fail closed, 64 MiB memory, 50 ms per callback, one
    /// instance per CPU.
    pub fn new(name: impl Into<String>, wasm: impl Into<Vec<u8>>) -> Self {
        let name = name.into();
        PluginSpec {
            root_id: name.clone(),
            name,
            source: String::new(),
            wasm: wasm.into(),
            config: String::new(),
            vm_id: String::new(),
            vm_config: String::new(),
            fail: FailPolicy::Closed,
            memory_limit: 64 << 20,
            cpu_limit: Duration::from_millis(50),
            instances: 0,
            max_restarts_per_minute: 10,
            broken_cooloff: Duration::from_secs(10),
            pause_timeout: Duration::from_secs(30),
        }
    }
}
