//! Error types: [`PluginError`] for load-time refusals, [`PluginFailure`] for per-request failures.

use std::fmt;

/// The underlying error of a [`PluginError`] (wasmtime's, a callback's [`PluginFailure`], serde's, the OS's),
/// kept as the error's `source()`.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a plugin version was refused at load time.
///
/// Every variant means "do not swap this version in": the caller keeps serving with the previous version.
///
/// A variant's message says what failed at this level and never repeats its cause, which is its `source()`:
/// print the error with its chain (`{:#}` through `anyhow`, or by walking `source()`) to see each cause once.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not a valid WebAssembly module, or Cranelift refused them.
    #[error("plugin {plugin}: module failed to compile")]
    Compile {
        /// Plugin name from the spec.
        plugin: String,
        /// wasmtime's error.
        #[source]
        source: Cause,
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
        /// What was expected.
        message: String,
        /// wasmtime's type check, for a mistyped export.
        #[source]
        source: Option<Cause>,
    },
    /// Linking or instantiating failed (import signature mismatch, start function trapped, memory cap too small).
    #[error("plugin {plugin}: instantiation failed")]
    Instantiate {
        /// Plugin name from the spec.
        plugin: String,
        /// wasmtime's error.
        #[source]
        source: Cause,
    },
    /// `_initialize`/`_start`, `main`, `proxy_on_context_create` or `proxy_on_vm_start` failed, or
    /// `proxy_on_vm_start` returned false.
    #[error("plugin {plugin}: VM start failed: {message}")]
    Start {
        /// Plugin name from the spec.
        plugin: String,
        /// What failed.
        message: String,
        /// The callback's failure (trap, timeout, ...); `None` when it returned false.
        #[source]
        source: Option<Cause>,
    },
    /// The plugin rejected its configuration: `proxy_on_configure` returned false or failed, or (for the
    /// bundled router) the configuration is not what it reads.
    #[error("plugin {plugin}: configuration rejected: {message}")]
    Configure {
        /// Plugin name from the spec.
        plugin: String,
        /// Why: "proxy_on_configure returned false" and the last line the plugin logged at error level, or
        /// what is wrong with the configuration.
        message: String,
        /// The callback's failure, or the parser's error; `None` when the plugin refused by returning false.
        #[source]
        source: Option<Cause>,
    },
    /// The wasm engine could not be set up (Cranelift settings, host functions, metrics, the epoch thread).
    #[error("{what}")]
    Engine {
        /// Which step.
        what: &'static str,
        /// The step's error.
        #[source]
        source: Cause,
    },
    /// The spec itself is unusable (empty name, zero limits).
    #[error("plugin spec invalid: {0}")]
    InvalidSpec(String),
}

/// An error followed by its causes, `: `-separated, for a log line that must say everything on its own.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
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
