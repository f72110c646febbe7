//! What the cluster agrees on: the commands in the Raft log and the state they build.
//!
//! Applying a command is a pure function of the state, so every node that applies the same log holds the same
//! state. Rejections (a rollback with nothing to roll back to) are part of that function too: they are
//! recorded in the result, never a divergence.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;

openraft::declare_raft_types!(
    /// Portico's Raft types: commands in, [`Applied`] out, nodes addressed by `host:port`.
    pub TypeConfig:
        D = Command,
        R = Applied,
);

/// A node id as the configuration writes it.
pub type NodeId = u64;

/// A WebAssembly module as replicated: its bytes (base64 in JSON) and their sha256, which nodes compare to
/// decide whether anything changed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// Hex sha256 of `wasm`.
    pub sha256: String,
    /// The module bytes.
    #[serde(with = "base64_bytes")]
    pub wasm: Vec<u8>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Module({}, {} bytes)", self.sha256, self.wasm.len())
    }
}

impl Module {
    /// Wraps module bytes, computing their digest once.
    pub fn new(wasm: Vec<u8>) -> Module {
        Module { sha256: sha256_hex(&wasm), wasm }
    }
}

/// Hex sha256, the identity of a module everywhere in Portico (`GET /plugins` shows the same digest).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// How an admin call changes one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointChange {
    /// Take it out of rotation.
    Drain,
    /// Put it back.
    Undrain,
    /// Set its weight.
    Weight(u32),
}

/// One change to the replicated state, as written in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Replace the shared configuration (TOML without the node-local `[admin]` and `[cluster]` tables) and the
    /// modules of its file-sourced plugins. Plugins absent from `modules` use their builtin source.
    SetConfig {
        /// The configuration text.
        config: String,
        /// Module bytes by plugin name.
        modules: BTreeMap<String, Module>,
    },
    /// Hot-swap one plugin's module (the admin `PUT /plugins/{name}`).
    PutPlugin {
        /// Plugin name.
        name: String,
        /// The new module.
        module: Module,
    },
    /// Go back to a plugin's previous module.
    RollbackPlugin {
        /// Plugin name.
        name: String,
    },
    /// Drain, undrain or reweight one endpoint of an upstream.
    Endpoint {
        /// Upstream group.
        upstream: String,
        /// Endpoint address as configured.
        endpoint: String,
        /// What to do.
        change: EndpointChange,
    },
}

/// The outcome of applying one log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Log index of the entry.
    pub index: u64,
    /// Why the state machine refused the command (the entry is still committed, and changed nothing).
    pub rejected: Option<String>,
}

/// A plugin's replicated module and the one before it (for rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginVersions {
    /// The module in force.
    pub current: Module,
    /// The module before it.
    pub previous: Option<Module>,
}

/// An operator's override of one endpoint, kept across config changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointOverride {
    /// Drained by the operator.
    pub drained: bool,
    /// Weight set by the operator.
    pub weight: Option<u32>,
}

/// The state every node converges on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Shared configuration text; `None` until the first leader proposes its bootstrap file.
    pub config: Option<String>,
    /// Replicated modules by plugin name.
    pub plugins: BTreeMap<String, PluginVersions>,
    /// Endpoint overrides keyed by `upstream/endpoint`.
    pub endpoints: BTreeMap<String, EndpointOverride>,
    /// Index of the last log entry applied.
    pub applied_index: u64,
}

impl ClusterState {
    /// Applies one command; the returned text says why it was refused, if it was.
    pub fn apply(&mut self, command: &Command) -> Option<String> {
        match command {
            Command::SetConfig { config, modules } => {
                self.config = Some(config.clone());
                let old = std::mem::take(&mut self.plugins);
                for (name, module) in modules {
                    let previous = old.get(name).and_then(|v| {
                        if v.current.sha256 == module.sha256 {
                            v.previous.clone()
                        } else {
                            Some(v.current.clone())
                        }
                    });
                    self.plugins.insert(name.clone(), PluginVersions { current: module.clone(), previous });
                }
                None
            }
            Command::PutPlugin { name, module } => {
                let previous = self.plugins.get(name).map(|v| v.current.clone());
                if previous.as_ref().is_some_and(|p| p.sha256 == module.sha256) {
                    return None;
                }
                self.plugins.insert(name.clone(), PluginVersions { current: module.clone(), previous });
                None
            }
            Command::RollbackPlugin { name } => match self.plugins.get_mut(name) {
                Some(versions) => match versions.previous.take() {
                    Some(previous) => {
                        versions.previous = Some(std::mem::replace(&mut versions.current, previous));
                        None
                    }
                    None => Some(format!("plugin {name:?} has no previous version to roll back to")),
                },
                None => Some(format!("plugin {name:?} has no replicated module to roll back")),
            },
            Command::Endpoint { upstream, endpoint, change } => {
                let entry = self.endpoints.entry(format!("{upstream}/{endpoint}")).or_default();
                match change {
                    EndpointChange::Drain => entry.drained = true,
                    EndpointChange::Undrain => entry.drained = false,
                    EndpointChange::Weight(w) => entry.weight = Some(*w),
                }
                None
            }
        }
    }
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_swaps_current_and_previous_and_refuses_without_one() {
        let mut state = ClusterState::default();
        let a = Module::new(b"a".to_vec());
        let b = Module::new(b"b".to_vec());
        assert!(state.apply(&Command::RollbackPlugin { name: "p".into() }).is_some());
        state.apply(&Command::PutPlugin { name: "p".into(), module: a.clone() });
        assert!(state.apply(&Command::RollbackPlugin { name: "p".into() }).is_some());
        state.apply(&Command::PutPlugin { name: "p".into(), module: b.clone() });
        assert_eq!(state.apply(&Command::RollbackPlugin { name: "p".into() }), None);
        assert_eq!(state.plugins["p"].current, a);
        assert_eq!(state.plugins["p"].previous, Some(b));
    }

    #[test]
    fn set_config_keeps_history_of_changed_modules_and_drops_plugins_no_longer_replicated() {
        let mut state = ClusterState::default();
        let a = Module::new(b"a".to_vec());
        let b = Module::new(b"b".to_vec());
        let modules = BTreeMap::from([("p".to_string(), a.clone()), ("q".to_string(), a.clone())]);
        state.apply(&Command::SetConfig { config: "x".into(), modules });
        let modules = BTreeMap::from([("p".to_string(), b.clone())]);
        state.apply(&Command::SetConfig { config: "y".into(), modules });
        assert_eq!(state.plugins["p"].previous, Some(a));
        assert!(!state.plugins.contains_key("q"));
        assert_eq!(state.config.as_deref(), Some("y"));
    }

    #[test]
    fn commands_round_trip_through_json_with_base64_modules() {
        let command = Command::PutPlugin { name: "p".into(), module: Module::new(vec![0, 1, 2, 255]) };
        let text = serde_json::to_string(&command).unwrap_or_default();
        assert!(text.contains("\"AAEC/w==\""), "{text}");
        let back: Command = serde_json::from_str(&text).unwrap_or(Command::RollbackPlugin { name: String::new() });
        assert_eq!(back, command);
    }
}
