//! One Portico node's membership in the cluster: starts openraft over the durable log and state machine,
//! serves peers, takes writes (forwarding them to the leader), changes membership, reports status, and runs the
//! leader hooks once leadership is confirmed by a quorum.

use crate::hooks::LeaderHooks;
use crate::log_store::LogStore;
use crate::network::{Network, Transport};
use crate::state_machine::StateMachine;
use crate::types::{Applied, ClusterState, Command, NodeId, Proposal, TypeConfig};
use crate::ClusterError;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The `[cluster]` settings, validated by the proxy's config loader.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// This node's id (unique, non-zero).
    pub node_id: NodeId,
    /// Address for Raft and node-to-node traffic; also what peers dial, so it must be reachable.
    pub listen: String,
    /// The other nodes of the initial membership.
    pub peers: BTreeMap<NodeId, String>,
    /// Where the log, vote and snapshots live.
    pub data_dir: PathBuf,
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// Base election timeout; each node draws from its own slice above it (see [`raft_config`]).
    pub election_timeout: Duration,
    /// Shared secret between nodes.
    pub token: Option<String>,
    /// How long a write may wait to commit before the caller is told it did not.
    pub write_timeout: Duration,
    /// Run when this node becomes leader, once a quorum has acknowledged it.
    pub on_become_leader: Vec<String>,
    /// Run when this node stops being a confirmed leader.
    pub on_lose_leadership: Vec<String>,
    /// Time limit for each leader hook.
    pub hook_timeout: Duration,
    /// A node added to a running cluster: it never forms a cluster itself, it waits to be added
    /// (`POST /cluster/members` on a member). Founding nodes leave it off.
    pub join: bool,
    /// Build a snapshot (and purge the log before it) every this many applied entries.
    pub snapshot_every: u64,
}

/// A membership change requested through the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MembershipChange {
    /// Add a node: it catches up as a learner, then becomes a voter.
    Add {
        /// Its id.
        node_id: NodeId,
        /// Its cluster address.
        address: String,
    },
    /// Remove a voter.
    Remove {
        /// Its id.
        node_id: NodeId,
    },
}

/// A leader's answer to a forwarded call.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ForwardedAnswer {
    Applied(Applied),
    Refused { kind: String, message: String },
}

impl From<Result<Applied, ClusterError>> for ForwardedAnswer {
    fn from(result: Result<Applied, ClusterError>) -> Self {
        match result {
            Ok(applied) => ForwardedAnswer::Applied(applied),
            Err(e) => {
                let kind = match &e {
                    ClusterError::NoLeader => "no_leader",
                    ClusterError::NoQuorum(_) => "no_quorum",
                    ClusterError::Timeout(_) => "timeout",
                    ClusterError::Rejected(_) => "rejected",
                    _ => "failed",
                };
                ForwardedAnswer::Refused { kind: kind.into(), message: e.to_string() }
            }
        }
    }
}

impl ForwardedAnswer {
    fn into_result(self, write_timeout: Duration) -> Result<Applied, ClusterError> {
        match self {
            ForwardedAnswer::Applied(a) => Ok(a),
            ForwardedAnswer::Refused { kind, message } => Err(match kind.as_str() {
                "no_leader" => ClusterError::NoLeader,
                "no_quorum" => ClusterError::NoQuorum(0),
                "timeout" => ClusterError::Timeout(write_timeout.as_millis() as u64),
                "rejected" => ClusterError::Rejected(message),
                _ => ClusterError::Raft(message),
            }),
        }
    }
}

/// What `GET /cluster` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// This node.
    pub node_id: NodeId,
    /// Leader, Follower, Candidate or Learner.
    pub state: String,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Whether this node is leader and a quorum acknowledged it recently.
    pub leader_confirmed: bool,
    /// Current term.
    pub term: u64,
    /// Last log index appended here.
    pub last_log_index: Option<u64>,
    /// Last index applied to the state here.
    pub applied_index: Option<u64>,
    /// On the leader: the highest index a majority holds.
    pub commit_index: Option<u64>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Members with their address, role and (on the leader) replication lag in entries.
    pub members: Vec<MemberStatus>,
    /// Set by the fault-injection switch.
    pub isolated: bool,
}

/// One member in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    /// Node id.
    pub node_id: NodeId,
    /// Cluster address.
    pub address: String,
    /// Voter (counts for quorum) or learner.
    pub voter: bool,
    /// Entries behind the leader's log (known on the leader only).
    pub lag: Option<u64>,
}

/// The openraft configuration for these settings.
///
/// Two openraft 0.9 behaviours shape it:
/// - A follower that knew a leader waits `election_timeout_max` (the leader lease) *plus* its drawn election
///   timeout before it campaigns. Portico's `election_timeout` means what operators expect — a follower
///   campaigns within about that long without hearing from the leader — so openraft gets about a third of it.
/// - openraft 0.9 draws a node's timeout once and reuses it every term, so two survivors with close draws can
///   split votes forever (fixed upstream only in 0.10). Each node therefore draws from its own slice:
///   `[E/3 + k·E/24, E/3 + (k+1)·E/24)` with `k = id mod 8`, so no two of up to eight nodes tie. Node `k`
///   campaigns `2·E/3 + k·E/12` or a little later after the leader's last heartbeat; by then every voter's
///   lease (at most `2·E/3`) has expired. If the first candidate's log is behind, the survivor with the longer
///   log campaigns one drawn timeout (about `E/3`) later: a new leader within about `1.5·E` even then.
pub fn raft_config(settings: &ClusterSettings) -> Result<openraft::Config, ClusterError> {
    let base = settings.election_timeout.as_millis() as u64;
    let step = (base / 24).max(1);
    let k = settings.node_id % 8;
    let config = openraft::Config {
        cluster_name: "portico".into(),
        heartbeat_interval: settings.heartbeat_interval.as_millis() as u64,
        election_timeout_min: base / 3 + k * step,
        election_timeout_max: base / 3 + (k + 1) * step,
        install_snapshot_timeout: base.max(1000),
        // Module pieces are 64 KiB: a few per RPC keeps each append well inside `heartbeat_interval`.
        max_payload_entries: 4,
        snapshot_max_chunk_size: 256 * 1024,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every.max(1)),
        max_in_snapshot_log_to_keep: settings.snapshot_every.clamp(1, 100),
        ..Default::default()
    };
    config.validate().map_err(|e| ClusterError::Settings(e.to_string()))
}

/// A running cluster member.
pub struct Cluster {
    pub(crate) settings: ClusterSettings,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) transport: Transport,
    state: StateMachine,
    bootstrap: parking_lot::Mutex<Option<Proposal>>,
    confirmed: std::sync::atomic::AtomicBool,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    address: std::net::SocketAddr,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node_id", &self.settings.node_id).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Opens `data_dir`, rebuilds the last known state from it (no quorum needed), binds the cluster listener,
    /// and joins or forms the cluster. `bootstrap` is proposed by the first confirmed leader if the cluster has
    /// no configuration yet.
    pub async fn start(settings: ClusterSettings, bootstrap: Option<Proposal>) -> Result<Arc<Cluster>, ClusterError> {
        if settings.node_id == 0 {
            return Err(ClusterError::Settings("node_id must be at least 1".into()));
        }
        if settings.peers.contains_key(&settings.node_id) {
            return Err(ClusterError::Settings(format!("peers must not list this node ({})", settings.node_id)));
        }
        let config = Arc::new(raft_config(&settings)?);
        let dir = settings.data_dir.clone();
        let (log, state) = tokio::task::spawn_blocking(move || {
            Ok::<_, ClusterError>((LogStore::open(&dir)?, StateMachine::open(&dir)?))
        })
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))??;
        let listener = tokio::net::TcpListener::bind(&settings.listen)
            .await
            .map_err(|error| ClusterError::Bind { address: settings.listen.clone(), error })?;
        let address =
            listener.local_addr().map_err(|error| ClusterError::Bind { address: settings.listen.clone(), error })?;
        let transport = Transport::new(settings.token.clone());
        let network = Network { transport: transport.clone() };
        let raft = Raft::new(settings.node_id, config, network, log, state.clone())
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let cluster = Arc::new(Cluster {
            settings,
            raft,
            transport,
            state,
            bootstrap: parking_lot::Mutex::new(bootstrap),
            confirmed: std::sync::atomic::AtomicBool::new(false),
            tasks: parking_lot::Mutex::new(Vec::new()),
            address,
        });
        cluster.tasks.lock().push(tokio::spawn(crate::rpc::serve(listener, Arc::downgrade(&cluster))));
        let initialized = cluster.raft.is_initialized().await.map_err(|e| ClusterError::Raft(e.to_string()))?;
        if !initialized && !cluster.settings.join {
            // Every founding node initialises with the same member set: safe in openraft, and the cluster forms
            // even when some founders are down at first boot.
            let mut members = BTreeMap::new();
            members.insert(cluster.settings.node_id, BasicNode::new(cluster.settings.listen.clone()));
            for (id, addr) in &cluster.settings.peers {
                members.insert(*id, BasicNode::new(addr.clone()));
            }
            match cluster.raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(ClusterError::Raft(e.to_string())),
            }
        }
        let watcher = tokio::spawn(watch_leadership(Arc::downgrade(&cluster)));
        cluster.tasks.lock().push(watcher);
        Ok(cluster)
    }

    /// The cluster listener's bound address.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.settings.node_id
    }

    /// The state applied on this node.
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.state()
    }

    /// Follows the state applied on this node.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.subscribe()
    }

    /// Cuts this node off from its peers (or reconnects it): the fault-injection switch for partition tests.
    pub fn set_isolated(&self, isolated: bool) {
        self.transport.isolated.store(isolated, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(isolated, "cluster fault-injection switch changed");
    }

    fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        // Clone and drop the guard at once: holding it across an await can deadlock openraft.
        self.raft.metrics().borrow().clone()
    }

    fn election_ms(&self) -> u64 {
        self.settings.election_timeout.as_millis() as u64
    }

    /// Commits `command` through the leader (forwarding it if this node is not the leader). Returns once the
    /// entry is committed; a node that cannot reach a quorum refuses.
    pub async fn write(&self, command: Command) -> Result<Applied, ClusterError> {
        let deadline = Instant::now() + self.settings.write_timeout;
        loop {
            let metrics = self.metrics();
            match metrics.current_leader {
                Some(leader) if leader == self.settings.node_id => return self.write_as_leader(command).await,
                Some(leader) => {
                    let answer = self.forward(leader, &metrics, "/cluster/write", &command).await;
                    match answer {
                        Err(ClusterError::Forward { .. }) if Instant::now() < deadline => {}
                        other => return other,
                    }
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stages the modules a proposal names (those the state does not hold yet), piece by piece, then commits
    /// its command. Returns the command's outcome.
    pub async fn propose(&self, proposal: Proposal) -> Result<Applied, ClusterError> {
        for module in &proposal.modules {
            if self.state().has_module(&module.sha256) {
                continue;
            }
            for piece in Proposal::stage_commands(module) {
                self.write(piece).await?;
            }
        }
        self.write(proposal.command).await
    }

    /// Waits until this node's state has applied `index` (so an admin answer reflects the node it came from).
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> bool {
        let mut rx = self.subscribe();
        let reached = tokio::time::timeout(limit, rx.wait_for(|s| s.applied_index >= index)).await;
        matches!(reached, Ok(Ok(_)))
    }

    async fn forward<T: Serialize>(
        &self,
        leader: NodeId,
        metrics: &RaftMetrics<NodeId, BasicNode>,
        path: &str,
        body: &T,
    ) -> Result<Applied, ClusterError> {
        let Some(node) = metrics.membership_config.membership().get_node(&leader).cloned() else {
            // A leader that was just removed from the membership: an election follows; retry until then.
            return Err(ClusterError::Forward {
                leader,
                address: "-".into(),
                message: "the known leader is no longer a member".into(),
            });
        };
        let mut conn = None;
        let answer: Result<ForwardedAnswer, _> = self
            .transport
            .call(&mut conn, &node.addr, path, body, self.settings.write_timeout + Duration::from_secs(1))
            .await;
        match answer {
            Ok(a) => a.into_result(self.settings.write_timeout),
            Err(e) => Err(ClusterError::Forward { leader, address: node.addr, message: e.to_string() }),
        }
    }

    /// Refuses unless a quorum acknowledged this leader within one election timeout: a leader cut off from the
    /// others still believes it leads (openraft does not step down by itself), and must not accept writes.
    async fn ensure_quorum(&self) -> Result<(), ClusterError> {
        let limit = self.election_ms();
        let deadline = Instant::now() + self.settings.election_timeout;
        loop {
            let metrics = self.metrics();
            if metrics.current_leader != Some(self.settings.node_id) {
                return Err(ClusterError::NoLeader);
            }
            match metrics.millis_since_quorum_ack {
                Some(ms) if ms <= limit => return Ok(()),
                seen if Instant::now() >= deadline => return Err(ClusterError::NoQuorum(seen.unwrap_or(limit))),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub(crate) async fn write_as_leader(&self, command: Command) -> Result<Applied, ClusterError> {
        if self.transport.isolated.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ClusterError::NoQuorum(self.election_ms()));
        }
        self.ensure_quorum().await?;
        let limit = self.settings.write_timeout;
        match tokio::time::timeout(limit, self.raft.client_write(command)).await {
            Err(_) => Err(ClusterError::Timeout(limit.as_millis() as u64)),
            Ok(Ok(resp)) => match resp.data.rejected {
                Some(reason) => Err(ClusterError::Rejected(reason)),
                None => Ok(resp.data),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(ClusterError::NoLeader),
            Ok(Err(e)) => Err(ClusterError::Raft(e.to_string())),
        }
    }

    /// Adds or removes a node, through the leader. Like [`Cluster::write`], it waits out an election (no leader
    /// known, or the leader stepped down while asked) for up to the write timeout instead of failing at once:
    /// an operator's call that lands mid-election would otherwise be refused for no reason they can act on.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<Applied, ClusterError> {
        let deadline = Instant::now() + self.settings.write_timeout;
        loop {
            let metrics = self.metrics();
            let answer = match metrics.current_leader {
                Some(leader) if leader == self.settings.node_id => {
                    self.change_membership_as_leader(change.clone()).await
                }
                Some(leader) => self.forward(leader, &metrics, "/cluster/membership", &change).await,
                None => Err(ClusterError::NoLeader),
            };
            match answer {
                Err(ClusterError::NoLeader | ClusterError::Forward { .. }) if Instant::now() < deadline => {}
                other => return other,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn change_membership_as_leader(&self, change: MembershipChange) -> Result<Applied, ClusterError> {
        self.ensure_quorum().await?;
        // Leadership lost between the check and the change: an election is under way, and the caller waits it out.
        let raft_err = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ClusterError::NoLeader,
            e => ClusterError::Raft(e.to_string()),
        };
        let resp = match change {
            MembershipChange::Add { node_id, address } => {
                self.raft.add_learner(node_id, BasicNode::new(address), true).await.map_err(raft_err)?;
                self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false).await
            }
            MembershipChange::Remove { node_id } => {
                self.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node_id])), false).await
            }
        }
        .map_err(raft_err)?;
        Ok(Applied { index: resp.log_id.index, rejected: None })
    }

    /// Node, leader, term, indices, members and lag.
    pub fn status(&self) -> ClusterStatus {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched = |id: &NodeId| -> Option<u64> {
            if *id == self.settings.node_id {
                return m.last_log_index;
            }
            m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index)
        };
        let commit_index = m.replication.as_ref().map(|_| {
            let mut indices: Vec<u64> = voters.iter().map(|v| matched(v).unwrap_or(0)).collect();
            indices.sort_unstable_by(|a, b| b.cmp(a));
            indices.get(voters.len() / 2).copied().unwrap_or(0)
        });
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                node_id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
                lag: m
                    .replication
                    .as_ref()
                    .map(|_| m.last_log_index.unwrap_or(0).saturating_sub(matched(id).unwrap_or(0))),
            })
            .collect();
        ClusterStatus {
            node_id: self.settings.node_id,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            leader_confirmed: self.confirmed.load(std::sync::atomic::Ordering::Relaxed),
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            commit_index,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            members,
            isolated: self.transport.isolated.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Stops Raft and the listener.
    pub async fn shutdown(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        let _ = self.raft.shutdown().await;
    }
}

/// Follows leadership every heartbeat. Leadership counts only when a quorum acknowledged it within one election
/// timeout (openraft lets a cut-off or restarted node believe it leads); the hooks fire on those edges, and a
/// newly confirmed leader proposes the bootstrap configuration if the cluster has none.
async fn watch_leadership(cluster: std::sync::Weak<Cluster>) {
    let (period, hooks) = match cluster.upgrade() {
        Some(c) => (
            c.settings.heartbeat_interval,
            LeaderHooks::new(
                c.settings.node_id,
                c.settings.on_become_leader.clone(),
                c.settings.on_lose_leadership.clone(),
                c.settings.hook_timeout,
            ),
        ),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else { return };
        let m = cluster.metrics();
        let confirmed = m.state == ServerState::Leader
            && !cluster.transport.isolated.load(std::sync::atomic::Ordering::Relaxed)
            && m.millis_since_quorum_ack.is_some_and(|ms| ms <= cluster.election_ms());
        let was = cluster.confirmed.swap(confirmed, std::sync::atomic::Ordering::Relaxed);
        if confirmed && !was {
            tracing::info!(term = m.current_term, "leadership confirmed by a quorum");
            hooks.fire(true, m.current_term);
            if cluster.state().config.is_none() {
                if let Some(proposal) = cluster.bootstrap.lock().clone() {
                    let c = cluster.clone();
                    tokio::spawn(async move {
                        match c.propose(proposal).await {
                            Ok(a) => tracing::info!(index = a.index, "bootstrap configuration committed"),
                            Err(e) => tracing::warn!(error = %e, "bootstrap configuration not committed"),
                        }
                    });
                }
            }
        } else if was && !confirmed {
            tracing::warn!(term = m.current_term, "leadership lost or no longer confirmed by a quorum");
            hooks.fire(false, m.current_term);
        }
    }
}
