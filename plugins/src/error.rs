//! Error types: [`PluginError`] for load-time refusals, [`PluginFailure`] for per-request failures.

use std::fmt;

/// Why a plugin version was refused at load time.
///
/// Every variant means "do not swap this version in": the caller keeps serving with the previous version.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not a valid WebAssembly module, or Cranelift refused them.
    #[error("plugin {plugin}: module failed to compile: {message}")]
    Compile {
        /// Plugin name from the spec.
        plugin: String,
        /// Compiler message.
        message: String,
    },
    /// The module exports no `proxy_abi_version_*` marker, or one this host does not speak.
    #[error("plugin {plugin}: {message}")]
    AbiVersion {
        /// Plugin name from the spec.
        plugin: String,
        /// Which marker was found (or that none was).
        message: String,
    },
    /// A required export (memory, allocator, context callbacks) is missing or has the wrong signature.
    #[error("plugin {plugin}: missing or mistyped export {export}: {message}")]
    Export {
        /// Plugin name from the spec.
        plugin: String,
        /// Name of the export.
        export: String,
        /// Details (expected signature).
        message: String,
    },
    /// Linking or instantiating failed (import signature mismatch, start function trapped, memory cap too small).
    #[error("plugin {plugin}: instantiation failed: {message}")]
    Instantiate {
        /// Plugin name from the spec.
        plugin: String,
        /// wasmtime's message.
        message: String,
    },
    /// `_initialize`/`_start`, `proxy_on_context_create` or `proxy_on_vm_start` failed or returned false.
    #[error("plugin {plugin}: VM start failed: {message}")]
    Start {
        /// Plugin name from the spec.
        plugin: String,
        /// What failed.
        message: String,
    },
    /// `proxy_on_configure` returned false or trapped: the plugin rejected its configuration.
    #[error("plugin {plugin}: configuration rejected: {message}")]
    Configure {
        /// Plugin name from the spec.
        plugin: String,
        /// What failed.
        message: String,
    },
    /// The spec itself is unusable (empty name, zero limits).
    #[error("plugin spec invalid: {0}")]
    InvalidSpec(String),
}

/// Classification of a failure while running a plugin callback for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The guest trapped (unreachable, panic, proc_exit, stack overflow, ...).
    Trap,
    /// The callback exceeded the plugin's CPU deadline (`cpu_limit`).
    Timeout,
    /// The guest passed an out-of-bounds pointer/length to a hostcall.
    BadPointer,
    /// The guest tried to grow its memory beyond `memory_limit`.
    Memory,
    /// No usable instance: the plugin is marked broken after a crash loop, or the stream's instance was
    /// recreated after another request crashed it (its context is gone).
    Unavailable,
}

impl FailureKind {
    /// Stable lowercase label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::BadPointer => "bad_pointer",
            FailureKind::Memory => "memory",
            FailureKind::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plugin callback failed for this request; the caller applies the plugin's [`crate::FailPolicy`].
///
/// The instance that failed has already been discarded (it is recreated on next use, rate-limited).
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin} {kind}: {message}")]
pub struct PluginFailure {
    /// Plugin name, for the log line and the 503 body.
    pub plugin: String,
    /// What went wrong.
    pub kind: FailureKind,
    /// Human-readable detail (trap message, callback name).
    pub message: String,
}

/// Errors raised from inside hostcalls to abort the guest; downcast when classifying a trap.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostTrap {
    #[error("out-of-bounds pointer passed to {0}")]
    BadPointer(&'static str),
    #[error("memory limit of {limit} bytes exceeded (wanted {desired})")]
    MemoryLimit { limit: usize, desired: usize },
    #[error("guest called proc_exit({0})")]
    Exit(i32),
}
