//! The state machine: applies committed commands to [`ClusterState`] and publishes each new state on a watch
//! channel, which the proxy follows to hot-reload. Snapshots are the state as JSON, kept in `snapshot.json`;
//! with the committed log id persisted by the log store, a restarted node rebuilds its last known state
//! without talking to anyone.

use crate::durable::{read_json, write_json_atomic};
use crate::log_store::blocking;
use crate::types::{Applied, ClusterState, NodeId, TypeConfig};
use crate::ClusterError;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// What `snapshot.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    state: ClusterState,
}

#[derive(Debug)]
struct Machine {
    state: ClusterState,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The replicated state and its snapshots; cheap to clone.
#[derive(Debug, Clone)]
pub struct StateMachine {
    path: PathBuf,
    machine: Arc<Mutex<Machine>>,
    published: Arc<watch::Sender<Arc<ClusterState>>>,
}

impl StateMachine {
    /// Opens the snapshot under `dir`, if any, and starts publishing from it.
    pub fn open(dir: &Path) -> Result<StateMachine, ClusterError> {
        let path = dir.join("snapshot.json");
        let stored: Option<StoredSnapshot> = read_json(&path)?;
        let machine = match &stored {
            Some(s) => Machine {
                state: s.state.clone(),
                last_applied: s.meta.last_log_id,
                membership: s.meta.last_membership.clone(),
                snapshot: stored.clone(),
                snapshots_built: 0,
            },
            None => Machine {
                state: ClusterState::default(),
                last_applied: None,
                membership: StoredMembership::default(),
                snapshot: None,
                snapshots_built: 0,
            },
        };
        let (published, _) = watch::channel(Arc::new(machine.state.clone()));
        Ok(StateMachine { path, machine: Arc::new(Mutex::new(machine)), published: Arc::new(published) })
    }

    /// Follows the applied state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.published.subscribe()
    }

    /// The applied state now.
    pub fn state(&self) -> Arc<ClusterState> {
        self.published.borrow().clone()
    }

    fn publish(&self, state: ClusterState) {
        self.published.send_replace(Arc::new(state));
    }

    async fn persist(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError<NodeId>> {
        let path = self.path.clone();
        let value = snapshot.clone();
        blocking(move || write_json_atomic(&path, &value))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(snapshot.meta.signature()), &e).into())
    }
}

// openraft's own error type is large; this only mirrors the trait methods' signatures.
#[allow(clippy::result_large_err)]
fn to_snapshot(stored: &StoredSnapshot) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
    let bytes = serde_json::to_vec(&stored.state)
        .map_err(|e| StorageIOError::read_snapshot(Some(stored.meta.signature()), &e))?;
    Ok(Snapshot { meta: stored.meta.clone(), snapshot: Box::new(Cursor::new(bytes)) })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let stored = {
            let mut m = self.machine.lock();
            m.snapshots_built += 1;
            let id = match m.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, m.snapshots_built),
                None => format!("empty-{}", m.snapshots_built),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: m.last_applied,
                    last_membership: m.membership.clone(),
                    snapshot_id: id,
                },
                state: m.state.clone(),
            }
        };
        self.persist(&stored).await?;
        let snapshot = to_snapshot(&stored)?;
        self.machine.lock().snapshot = Some(stored);
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let m = self.machine.lock();
        Ok((m.last_applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let (results, state) = {
            let mut m = self.machine.lock();
            let mut results = Vec::new();
            for entry in entries {
                m.last_applied = Some(entry.log_id);
                m.state.applied_index = entry.log_id.index;
                let rejected = match &entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(command) => m.state.apply(command),
                    EntryPayload::Membership(membership) => {
                        m.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                        None
                    }
                };
                results.push(Applied { index: entry.log_id.index, rejected });
            }
            (results, m.state.clone())
        };
        self.publish(state);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let state: ClusterState = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = StoredSnapshot { meta: meta.clone(), state: state.clone() };
        self.persist(&stored).await?;
        {
            let mut m = self.machine.lock();
            m.state = state.clone();
            m.last_applied = meta.last_log_id;
            m.membership = meta.last_membership.clone();
            m.snapshot = Some(stored);
        }
        self.publish(state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored = self.machine.lock().snapshot.clone();
        stored.as_ref().map(to_snapshot).transpose()
    }
}
