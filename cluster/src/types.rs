//! What the cluster agrees on: the commands in the Raft log and the state they build.
//!
//! Applying a command is a pure function of the state, so every node that applies the same log holds the same
//! state. Rejections (a rollback with nothing to roll back to) are part of that function too: they are
//! recorded in the result, never a divergence.

pub use crate::rollout::{RolloutDecision, RolloutRecord, RolloutState};
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
/// decide whether anything changed. The bytes are shared, so each published state does not copy megabytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// Hex sha256 of `wasm`.
    pub sha256: String,
    /// The module bytes.
    #[serde(with = "base64_shared")]
    pub wasm: std::sync::Arc<Vec<u8>>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Module({}, {} bytes)", self.sha256, self.wasm.len())
    }
}

impl Module {
    /// Wraps module bytes, computing their digest once.
    pub fn new(wasm: Vec<u8>) -> Module {
        Module { sha256: sha256_hex(&wasm), wasm: std::sync::Arc::new(wasm) }
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

/// How an admin call changes one registered endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationChange {
    /// Add it, or renew it (a heartbeat): its TTL restarts on every node.
    Register {
        /// Share of traffic.
        weight: u32,
        /// Ends unless renewed within this many milliseconds.
        ttl_ms: Option<u64>,
    },
    /// Remove it.
    Deregister,
    /// Remove it if its last renewal is still `serial` (the leader collecting a registration whose TTL ran
    /// out; a renewal that got in first wins, and this changes nothing).
    Expire {
        /// The renewal the leader saw expire.
        serial: u64,
    },
}

/// An endpoint registered through the admin API, as replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredEndpoint {
    /// Share of traffic.
    pub weight: u32,
    /// Ends unless renewed within this many milliseconds (each node counts from when it applied `serial`).
    pub ttl_ms: Option<u64>,
    /// Log index of the last registration or renewal: a node restarts the TTL when this changes.
    pub serial: u64,
}

/// Largest piece of a module in one log entry. openraft gives one append RPC `heartbeat_interval` to finish,
/// so modules (often megabytes) travel as many small entries rather than one large one.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// One change to the replicated state, as written in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Replace the shared configuration (TOML without the node-local `[admin]` and `[cluster]` tables) and the
    /// modules of its file-sourced plugins, by sha256 (staged first, or already in the state). Plugins absent
    /// from `modules` use their builtin source.
    SetConfig {
        /// The configuration text.
        config: String,
        /// Module sha256 by plugin name.
        modules: BTreeMap<String, String>,
    },
    /// Hot-swap one plugin's module (the admin `PUT /plugins/{name}`), staged first.
    PutPlugin {
        /// Plugin name.
        name: String,
        /// The new module's sha256.
        sha256: String,
    },
    /// One piece of a module on its way into the state; the command that names the module assembles it.
    StageChunk {
        /// The whole module's sha256.
        sha256: String,
        /// This piece's position.
        index: u32,
        /// How many pieces the module has.
        total: u32,
        /// The bytes.
        #[serde(with = "base64_bytes")]
        bytes: Vec<u8>,
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
    /// Register, renew or deregister an endpoint of an upstream (the admin API's registration calls).
    Registration {
        /// Upstream group.
        upstream: String,
        /// `ip:port`.
        address: String,
        /// What to do.
        change: RegistrationChange,
    },
    /// Start a progressive rollout of a plugin's module (the admin `PUT /plugins/{name}?rollout=PERCENT`), staged
    /// first; it replaces the plugin's previous rollout.
    StartRollout {
        /// Plugin name.
        name: String,
        /// The candidate module's sha256.
        sha256: String,
        /// The first step, in hundredths of a percent.
        first_share: u32,
    },
    /// A decision about a running rollout, taken once for the whole cluster.
    Rollout {
        /// Plugin name.
        name: String,
        /// The rollout it is about (the log index that started it).
        serial: u64,
        /// What to do.
        decision: RolloutDecision,
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

/// A module arriving piece by piece.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// Pieces expected.
    pub total: u32,
    /// Pieces received, base64 in JSON.
    pub chunks: BTreeMap<u32, Chunk>,
    /// Log index of the first piece (the oldest staging is dropped first).
    pub since: u64,
}

/// Bytes of one staged piece.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk(#[serde(with = "base64_bytes")] pub Vec<u8>);

/// Modules being staged at once, at most; an abandoned upload (its proposer died) is dropped past this.
const MAX_STAGED: usize = 8;

/// The state every node converges on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Shared configuration text; `None` until the first leader proposes its bootstrap file.
    pub config: Option<String>,
    /// Replicated modules by plugin name.
    pub plugins: BTreeMap<String, PluginVersions>,
    /// Endpoint overrides keyed by `upstream/endpoint`.
    pub endpoints: BTreeMap<String, EndpointOverride>,
    /// Modules arriving in pieces, by sha256.
    #[serde(default)]
    pub staged: BTreeMap<String, Staged>,
    /// Registered endpoints by upstream group, then by address.
    #[serde(default)]
    pub registrations: BTreeMap<String, BTreeMap<String, RegisteredEndpoint>>,
    /// Each plugin's latest rollout, running or ended.
    #[serde(default)]
    pub rollouts: BTreeMap<String, RolloutRecord>,
    /// Index of the last log entry applied.
    pub applied_index: u64,
}

impl ClusterState {
    /// Whether a module with this digest is already in the state (so it need not be staged again).
    pub fn has_module(&self, sha256: &str) -> bool {
        self.plugins
            .values()
            .any(|v| v.current.sha256 == sha256 || v.previous.as_ref().is_some_and(|p| p.sha256 == sha256))
            || self.rollouts.values().any(|r| r.candidate.sha256 == sha256)
    }

    /// The module with this digest: from the state, or assembled from its staged pieces (checked against the
    /// digest).
    pub(crate) fn resolve(&self, sha256: &str) -> Result<Module, String> {
        for v in self.plugins.values() {
            for m in std::iter::once(&v.current).chain(v.previous.as_ref()) {
                if m.sha256 == sha256 {
                    return Ok(m.clone());
                }
            }
        }
        if let Some(r) = self.rollouts.values().find(|r| r.candidate.sha256 == sha256) {
            return Ok(r.candidate.clone());
        }
        let staged = self.staged.get(sha256).ok_or_else(|| format!("module {sha256} was not staged"))?;
        if staged.chunks.len() != staged.total as usize {
            return Err(format!("module {sha256}: {} of {} pieces staged", staged.chunks.len(), staged.total));
        }
        let wasm: Vec<u8> = staged.chunks.values().flat_map(|c| c.0.iter().copied()).collect();
        let module = Module::new(wasm);
        if module.sha256 != sha256 {
            return Err(format!("module {sha256}: the staged pieces do not match the digest"));
        }
        Ok(module)
    }

    fn stage(&mut self, sha256: &str, index: u32, total: u32, bytes: &[u8], at: u64) -> Option<String> {
        if index >= total {
            return Some(format!("piece {index} of a {total}-piece module"));
        }
        let entry =
            self.staged.entry(sha256.to_string()).or_insert_with(|| Staged { total, since: at, ..Staged::default() });
        entry.total = total;
        entry.chunks.insert(index, Chunk(bytes.to_vec()));
        while self.staged.len() > MAX_STAGED {
            let oldest = self.staged.iter().min_by_key(|(_, s)| s.since).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.staged.remove(&k),
                None => break,
            };
        }
        None
    }

    /// Applies one command; the returned text says why it was refused, if it was.
    pub fn apply(&mut self, command: &Command) -> Option<String> {
        match command {
            Command::StageChunk { sha256, index, total, bytes } => {
                let at = self.applied_index;
                self.stage(sha256, *index, *total, bytes, at)
            }
            Command::SetConfig { config, modules } => {
                let mut resolved = BTreeMap::new();
                for (name, sha) in modules {
                    match self.resolve(sha) {
                        Ok(m) => resolved.insert(name.clone(), m),
                        Err(e) => return Some(format!("plugin {name:?}: {e}")),
                    };
                }
                for sha in modules.values() {
                    self.staged.remove(sha);
                }
                let modules = resolved;
                let changed: Vec<String> = self
                    .rollouts
                    .keys()
                    .filter(|name| {
                        self.plugins.get(*name).map(|v| &v.current.sha256) != modules.get(*name).map(|m| &m.sha256)
                    })
                    .cloned()
                    .collect();
                for name in changed {
                    self.end_rollout(&name, "a new configuration changed the plugin's module");
                }
                self.config = Some(config.clone());
                let old = std::mem::take(&mut self.plugins);
                for (name, module) in modules {
                    let previous = old.get(&name).and_then(|v| {
                        if v.current.sha256 == module.sha256 {
                            v.previous.clone()
                        } else {
                            Some(v.current.clone())
                        }
                    });
                    self.plugins.insert(name, PluginVersions { current: module, previous });
                }
                None
            }
            Command::PutPlugin { name, sha256 } => {
                let module = match self.resolve(sha256) {
                    Ok(m) => m,
                    Err(e) => return Some(e),
                };
                self.staged.remove(sha256);
                self.end_rollout(name, "another version was uploaded");
                let previous = self.plugins.get(name).map(|v| v.current.clone());
                if previous.as_ref().is_some_and(|p| p.sha256 == module.sha256) {
                    return None;
                }
                self.plugins.insert(name.clone(), PluginVersions { current: module, previous });
                None
            }
            Command::RollbackPlugin { name } => match self.plugins.get_mut(name) {
                Some(versions) => match versions.previous.take() {
                    Some(previous) => {
                        versions.previous = Some(std::mem::replace(&mut versions.current, previous));
                        self.end_rollout(name, "the plugin was rolled back to its previous version");
                        None
                    }
                    None => Some(format!("plugin {name:?} has no previous version to roll back to")),
                },
                None => Some(format!("plugin {name:?} has no replicated module to roll back")),
            },
            Command::StartRollout { name, sha256, first_share } => self.start_rollout(name, sha256, *first_share),
            Command::Rollout { name, serial, decision } => self.decide(name, *serial, decision),
            Command::Endpoint { upstream, endpoint, change } => {
                let entry = self.endpoints.entry(format!("{upstream}/{endpoint}")).or_default();
                match change {
                    EndpointChange::Drain => entry.drained = true,
                    EndpointChange::Undrain => entry.drained = false,
                    EndpointChange::Weight(w) => entry.weight = Some(*w),
                }
                None
            }
            Command::Registration { upstream, address, change } => {
                match change {
                    RegistrationChange::Register { weight, ttl_ms } => {
                        let serial = self.applied_index;
                        let group = self.registrations.entry(upstream.clone()).or_default();
                        group.insert(address.clone(), RegisteredEndpoint { weight: *weight, ttl_ms: *ttl_ms, serial });
                    }
                    RegistrationChange::Expire { serial } => {
                        let group = self.registrations.get_mut(upstream);
                        if let Some(group) = group {
                            if group.get(address).is_some_and(|r| r.serial == *serial) {
                                group.remove(address);
                            }
                            if group.is_empty() {
                                self.registrations.remove(upstream);
                            }
                        }
                    }
                    RegistrationChange::Deregister => {
                        let Some(group) = self.registrations.get_mut(upstream) else {
                            return Some(format!("{address} is not registered in {upstream:?}"));
                        };
                        if group.remove(address).is_none() {
                            return Some(format!("{address} is not registered in {upstream:?}"));
                        }
                        if group.is_empty() {
                            self.registrations.remove(upstream);
                        }
                    }
                }
                None
            }
        }
    }
}

mod base64_shared {
    use serde::{Deserializer, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(bytes: &Arc<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        super::base64_bytes::serialize(bytes.as_slice(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Vec<u8>>, D::Error> {
        super::base64_bytes::deserialize(d).map(Arc::new)
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

/// A write together with the modules it names, staged in pieces before the write itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// The command.
    pub command: Command,
    /// Modules the command names by sha256.
    pub modules: Vec<Module>,
}

impl Proposal {
    /// A command that names no module.
    pub fn plain(command: Command) -> Proposal {
        Proposal { command, modules: Vec::new() }
    }

    /// The commands that stage `module` in pieces of at most [`CHUNK_BYTES`].
    pub fn stage_commands(module: &Module) -> Vec<Command> {
        let pieces: Vec<&[u8]> =
            if module.wasm.is_empty() { vec![&[][..]] } else { module.wasm.chunks(CHUNK_BYTES).collect() };
        let total = pieces.len() as u32;
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| Command::StageChunk {
                sha256: module.sha256.clone(),
                index: i as u32,
                total,
                bytes: bytes.to_vec(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(state: &mut ClusterState, name: &str, module: &Module) -> Option<String> {
        for c in Proposal::stage_commands(module) {
            assert_eq!(state.apply(&c), None);
        }
        state.apply(&Command::PutPlugin { name: name.into(), sha256: module.sha256.clone() })
    }

    #[test]
    fn rollback_swaps_current_and_previous_and_refuses_without_one() {
        let mut state = ClusterState::default();
        let a = Module::new(b"a".to_vec());
        let b = Module::new(b"b".to_vec());
        assert!(state.apply(&Command::RollbackPlugin { name: "p".into() }).is_some());
        put(&mut state, "p", &a);
        assert!(state.apply(&Command::RollbackPlugin { name: "p".into() }).is_some());
        put(&mut state, "p", &b);
        assert_eq!(state.apply(&Command::RollbackPlugin { name: "p".into() }), None);
        assert_eq!(state.plugins["p"].current, a);
        assert_eq!(state.plugins["p"].previous, Some(b));
    }

    #[test]
    fn set_config_keeps_history_of_changed_modules_and_drops_plugins_no_longer_replicated() {
        let mut state = ClusterState::default();
        let a = Module::new(b"a".to_vec());
        let b = Module::new(b"b".to_vec());
        for c in Proposal::stage_commands(&a) {
            state.apply(&c);
        }
        let modules = BTreeMap::from([("p".to_string(), a.sha256.clone()), ("q".to_string(), a.sha256.clone())]);
        assert_eq!(state.apply(&Command::SetConfig { config: "x".into(), modules }), None);
        for c in Proposal::stage_commands(&b) {
            state.apply(&c);
        }
        let modules = BTreeMap::from([("p".to_string(), b.sha256.clone())]);
        assert_eq!(state.apply(&Command::SetConfig { config: "y".into(), modules }), None);
        assert_eq!(state.plugins["p"].previous, Some(a));
        assert!(!state.plugins.contains_key("q"));
        assert_eq!(state.config.as_deref(), Some("y"));
        assert!(state.staged.is_empty(), "staged pieces are dropped once used");
    }

    #[test]
    fn large_modules_are_assembled_from_pieces_and_checked_against_their_digest() {
        let mut state = ClusterState::default();
        let big = Module::new((0..(3 * CHUNK_BYTES + 17)).map(|i| (i % 251) as u8).collect());
        let pieces = Proposal::stage_commands(&big);
        assert_eq!(pieces.len(), 4);
        // Missing a piece: refused, nothing changes.
        for c in &pieces[..3] {
            state.apply(c);
        }
        let put_big = Command::PutPlugin { name: "p".into(), sha256: big.sha256.clone() };
        assert!(state.apply(&put_big).is_some_and(|e| e.contains("3 of 4")));
        assert!(state.plugins.is_empty());
        state.apply(&pieces[3]);
        assert_eq!(state.apply(&put_big), None);
        assert_eq!(state.plugins["p"].current, big);
        // Pieces that do not add up to the digest are refused.
        let liar = Command::StageChunk { sha256: "00".repeat(32), index: 0, total: 1, bytes: b"x".to_vec() };
        state.apply(&liar);
        let refused = state.apply(&Command::PutPlugin { name: "q".into(), sha256: "00".repeat(32) });
        assert!(refused.is_some_and(|e| e.contains("do not match")));
        // A module already in the state needs no staging.
        assert!(state.has_module(&big.sha256));
        assert_eq!(state.apply(&Command::PutPlugin { name: "r".into(), sha256: big.sha256.clone() }), None);
    }

    #[test]
    fn registrations_record_their_renewal_index_and_deregistering_the_unknown_is_refused() {
        let mut state = ClusterState::default();
        let register = |ttl_ms| Command::Registration {
            upstream: "app".into(),
            address: "127.0.0.1:80".into(),
            change: RegistrationChange::Register { weight: 2, ttl_ms },
        };
        state.applied_index = 7;
        assert_eq!(state.apply(&register(Some(1000))), None);
        assert_eq!(
            state.registrations["app"]["127.0.0.1:80"],
            RegisteredEndpoint { weight: 2, ttl_ms: Some(1000), serial: 7 }
        );
        state.applied_index = 9;
        assert_eq!(state.apply(&register(None)), None);
        assert_eq!(state.registrations["app"]["127.0.0.1:80"].serial, 9, "a renewal is a new serial");
        let expire = |serial| Command::Registration {
            upstream: "app".into(),
            address: "127.0.0.1:80".into(),
            change: RegistrationChange::Expire { serial },
        };
        assert_eq!(state.apply(&expire(7)), None);
        assert!(state.registrations["app"].contains_key("127.0.0.1:80"), "a renewal got in before the expiry");
        let deregister = Command::Registration {
            upstream: "app".into(),
            address: "127.0.0.1:80".into(),
            change: RegistrationChange::Deregister,
        };
        assert_eq!(state.apply(&deregister), None);
        assert!(state.registrations.is_empty());
        assert!(state.apply(&deregister).is_some_and(|e| e.contains("not registered")));
    }

    #[test]
    fn commands_round_trip_through_json_with_base64_bytes() {
        let command = Command::StageChunk { sha256: "ab".into(), index: 0, total: 1, bytes: vec![0, 1, 2, 255] };
        let text = serde_json::to_string(&command).unwrap_or_default();
        assert!(text.contains("\"AAEC/w==\""), "{text}");
        let back: Command = serde_json::from_str(&text).unwrap_or(Command::RollbackPlugin { name: String::new() });
        assert_eq!(back, command);
    }
}
