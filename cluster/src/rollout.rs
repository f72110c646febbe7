//! A progressive plugin rollout as the cluster agrees on it: the candidate module, where it stands, and the
//! decisions that move it. Every node runs its own copy of the rollout (same share, same step) from this record;
//! the decisions (a step, promotion, rollback, abort, pause) are log entries, so every node applies each one, and
//! a leader that dies leaves no decision half-applied: the record is what the next leader continues from.

use crate::types::{ClusterState, Module, PluginVersions};
use serde::{Deserialize, Serialize};

/// Where a replicated rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Stepping through its shares.
    Running,
    /// The candidate became the plugin's module.
    Promoted,
    /// A guard tripped on some node; the candidate meets no request anywhere.
    RolledBack,
    /// Stopped by an operator or by another version change.
    Aborted,
}

/// A plugin's latest rollout, running or ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The candidate module.
    pub candidate: Module,
    /// The first step, in hundredths of a percent (the later ones come from the plugin's `rollout` table).
    pub first_share: u32,
    /// Log index of the entry that started it: decisions name it, so one about an older rollout changes nothing.
    pub serial: u64,
    /// Index of the current step (0 = the first).
    pub step: u32,
    /// Where it stands.
    pub state: RolloutState,
    /// Stepping stopped by an operator (the guards keep watching).
    pub paused: bool,
    /// Why it ended.
    pub reason: Option<String>,
}

/// A decision about a running rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum RolloutDecision {
    /// Move to this step (an older or equal step changes nothing, so a decision proposed twice is harmless).
    Step {
        /// Index of the step.
        step: u32,
    },
    /// Make the candidate the plugin's module.
    Promote {
        /// Why.
        reason: String,
    },
    /// A guard tripped.
    RollBack {
        /// The guard and its figures.
        reason: String,
    },
    /// An operator stopped it.
    Abort {
        /// Why.
        reason: String,
    },
    /// Stop (`true`) or resume stepping.
    Pause {
        /// Paused or not.
        paused: bool,
    },
}

impl ClusterState {
    /// Starts a rollout of `name` with the module `sha256` (staged first, or already in the state).
    pub(crate) fn start_rollout(&mut self, name: &str, sha256: &str, first_share: u32) -> Option<String> {
        let candidate = match self.resolve(sha256) {
            Ok(m) => m,
            Err(e) => return Some(e),
        };
        self.staged.remove(sha256);
        let serial = self.applied_index;
        let record = RolloutRecord {
            candidate,
            first_share,
            serial,
            step: 0,
            state: RolloutState::Running,
            paused: false,
            reason: None,
        };
        self.rollouts.insert(name.to_string(), record);
        None
    }

    /// Applies a decision about the rollout `serial` of `name`.
    pub(crate) fn decide(&mut self, name: &str, serial: u64, decision: &RolloutDecision) -> Option<String> {
        let Some(record) = self.rollouts.get_mut(name) else {
            return Some(format!("plugin {name:?} has no rollout"));
        };
        if record.serial != serial {
            return Some(format!("plugin {name:?}: rollout {serial} was replaced by rollout {}", record.serial));
        }
        if record.state != RolloutState::Running {
            return Some(format!("plugin {name:?}: the rollout has ended ({:?})", record.state));
        }
        match decision {
            RolloutDecision::Step { step } => record.step = record.step.max(*step),
            RolloutDecision::Pause { paused } => record.paused = *paused,
            RolloutDecision::RollBack { reason } => {
                record.state = RolloutState::RolledBack;
                record.reason = Some(reason.clone());
            }
            RolloutDecision::Abort { reason } => {
                record.state = RolloutState::Aborted;
                record.reason = Some(reason.clone());
            }
            RolloutDecision::Promote { reason } => {
                record.state = RolloutState::Promoted;
                record.reason = Some(reason.clone());
                let candidate = record.candidate.clone();
                let previous = self.plugins.get(name).map(|v| v.current.clone());
                self.plugins.insert(name.to_string(), PluginVersions { current: candidate, previous });
            }
        }
        None
    }

    /// Another version change of `name` (an upload, a rollback, a new configuration) ends its running rollout.
    pub(crate) fn end_rollout(&mut self, name: &str, reason: &str) {
        if let Some(record) = self.rollouts.get_mut(name) {
            if record.state == RolloutState::Running {
                record.state = RolloutState::Aborted;
                record.reason = Some(reason.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Command;

    fn started() -> (ClusterState, u64) {
        let mut state = ClusterState { applied_index: 7, ..ClusterState::default() };
        let module = Module::new(b"candidate".to_vec());
        for piece in crate::types::Proposal::stage_commands(&module) {
            assert_eq!(state.apply(&piece), None);
        }
        let start = Command::StartRollout { name: "p".into(), sha256: module.sha256.clone(), first_share: 500 };
        assert_eq!(state.apply(&start), None);
        (state, 7)
    }

    #[test]
    fn decisions_apply_once_and_only_to_their_rollout() {
        let (mut state, serial) = started();
        let decide = |serial, decision| Command::Rollout { name: "p".into(), serial, decision };
        assert_eq!(state.apply(&decide(serial, RolloutDecision::Step { step: 2 })), None);
        assert_eq!(state.apply(&decide(serial, RolloutDecision::Step { step: 1 })), None);
        assert_eq!(state.rollouts["p"].step, 2, "an older step changes nothing");
        assert!(state.apply(&decide(serial + 1, RolloutDecision::Pause { paused: true })).is_some());
        let back = RolloutDecision::RollBack { reason: "5xx".into() };
        assert_eq!(state.apply(&decide(serial, back)), None);
        assert_eq!(state.rollouts["p"].state, RolloutState::RolledBack);
        let promote = RolloutDecision::Promote { reason: "late".into() };
        assert!(state.apply(&decide(serial, promote)).is_some(), "an ended rollout is never promoted");
        assert!(!state.plugins.contains_key("p"));
    }

    #[test]
    fn promotion_makes_the_candidate_the_module_and_an_upload_ends_a_running_rollout() {
        let (mut state, serial) = started();
        let candidate = state.rollouts["p"].candidate.clone();
        let promote = RolloutDecision::Promote { reason: "steps passed".into() };
        assert_eq!(state.apply(&Command::Rollout { name: "p".into(), serial, decision: promote }), None);
        assert_eq!(state.plugins["p"].current, candidate);

        let (mut state, _) = started();
        assert_eq!(state.apply(&Command::PutPlugin { name: "p".into(), sha256: candidate.sha256.clone() }), None);
        assert_eq!(state.rollouts["p"].state, RolloutState::Aborted);
    }
}
