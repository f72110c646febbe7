//! The Raft log on disk: one JSON line per entry in `raft-log.jsonl`, the vote, the committed id and the purge
//! point in small files replaced atomically. Appends are fsynced before openraft is told they are durable.
//!
//! The log is small (configuration changes, not requests), so it is also kept in memory; truncation and purge
//! rewrite the file. A torn last line (power loss mid-append) is dropped on open: that entry was never
//! acknowledged.

use crate::durable::{read_json, write_json_atomic, write_lines_atomic};
use crate::types::{NodeId, TypeConfig};
use crate::ClusterError;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Default)]
struct LogData {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// The durable Raft log; cheap to clone (readers share it).
#[derive(Debug, Clone)]
pub struct LogStore {
    dir: PathBuf,
    data: Arc<Mutex<LogData>>,
}

impl LogStore {
    /// Opens (or creates) the log under `dir`.
    pub fn open(dir: &Path) -> Result<LogStore, ClusterError> {
        std::fs::create_dir_all(dir).map_err(|e| ClusterError::io(dir, e))?;
        let mut data = LogData {
            vote: read_json(&dir.join("vote.json"))?,
            committed: read_json(&dir.join("committed.json"))?,
            purged: read_json(&dir.join("purged.json"))?,
            entries: BTreeMap::new(),
        };
        let path = dir.join("raft-log.jsonl");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                for (n, line) in lines.iter().enumerate() {
                    match serde_json::from_str::<Entry<TypeConfig>>(line) {
                        Ok(entry) => {
                            data.entries.insert(entry.log_id.index, entry);
                        }
                        Err(e) if n + 1 == lines.len() => {
                            tracing::warn!(error = %e, "dropping a torn last entry of the raft log");
                        }
                        Err(e) => return Err(ClusterError::Corrupt { path, message: format!("line {}: {e}", n + 1) }),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ClusterError::io(path, e)),
        }
        Ok(LogStore { dir: dir.to_path_buf(), data: Arc::new(Mutex::new(data)) })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("raft-log.jsonl")
    }

    /// Rewrites the whole log file from memory (after truncate or purge).
    async fn rewrite(&self) -> Result<(), StorageError<NodeId>> {
        let lines = {
            let data = self.data.lock();
            data.entries.values().map(serde_json::to_string).collect::<Result<Vec<_>, _>>()
        }
        .map_err(|e| StorageIOError::write_logs(&e))?;
        let path = self.log_path();
        blocking(move || write_lines_atomic(&path, &lines)).await.map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

/// Runs file I/O on the blocking pool: never on a tokio worker.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.data.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let data = self.data.lock();
        let last = data.entries.values().next_back().map(|e| e.log_id).or(data.purged);
        Ok(LogState { last_purged_log_id: data.purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let path = self.dir.join("vote.json");
        let value = *vote;
        blocking(move || write_json_atomic(&path, &value)).await.map_err(|e| StorageIOError::write_vote(&e))?;
        self.data.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.data.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Persisted so a restarted node re-applies what it knew was committed, even without a quorum.
        let path = self.dir.join("committed.json");
        blocking(move || write_json_atomic(&path, &committed)).await.map_err(|e| StorageIOError::write(&e))?;
        self.data.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.data.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut text = String::new();
        for entry in &entries {
            text.push_str(&serde_json::to_string(entry).map_err(|e| StorageIOError::write_logs(&e))?);
            text.push('\n');
        }
        let path = self.log_path();
        let written = blocking(move || {
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            file.write_all(text.as_bytes())?;
            file.sync_data()
        })
        .await;
        match written {
            Ok(()) => {
                let mut data = self.data.lock();
                for entry in entries {
                    data.entries.insert(entry.log_id.index, entry);
                }
                drop(data);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageIOError::write_logs(&e);
                callback.log_io_completed(Err(e));
                Err(err.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.data.lock().entries.retain(|index, _| *index < log_id.index);
        self.rewrite().await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let path = self.dir.join("purged.json");
        let value = Some(log_id);
        blocking(move || write_json_atomic(&path, &value)).await.map_err(|e| StorageIOError::write(&e))?;
        {
            let mut data = self.data.lock();
            data.purged = Some(log_id);
            data.entries.retain(|index, _| *index > log_id.index);
        }
        self.rewrite().await
    }
}
