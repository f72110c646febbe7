//! Portico's cluster: two or three nodes agree, through Raft (the openraft engine, pinned to 0.9.25), on the
//! shared configuration, the plugin modules (by sha256), progressive rollouts of plugin modules and their
//! decisions, and operators' endpoint overrides. Writes made on any node are forwarded to the leader and
//! acknowledged once committed; each node follows the applied state and hot-reloads from it. The log, vote and
//! snapshots live under `data_dir`, so a node restarts with its last known state even when it cannot reach a
//! quorum.

mod durable;
mod error;
pub mod hooks;
mod log_store;
pub mod network;
mod node;
mod rollout;
mod rpc;
mod state_machine;
pub mod types;

pub use error::ClusterError;
pub use node::{raft_config, Cluster, ClusterSettings, ClusterStatus, MemberStatus, MembershipChange};
pub use types::{
    Applied, ClusterState, Command, EndpointChange, EndpointOverride, Module, NodeId, PluginVersions, Proposal,
    RegisteredEndpoint, RegistrationChange, RolloutDecision, RolloutRecord, RolloutState, CHUNK_BYTES,
};
