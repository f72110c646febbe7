//! A progressive plugin rollout on a cluster member. The rollout is replicated like an upload: the candidate
//! module and the first step travel in one `StartRollout` entry, and every node runs its own copy of the
//! rollout from the replicated record (same steps from the same replicated `rollout` table, same share, same
//! step). The decisions are log entries, so every node applies each one:
//!
//! - **rollback**: any node whose own guards trip stops sending its requests to the candidate at once and
//!   proposes the rollback, which every other node then applies; so the rollback is decided from every node's
//!   figures, each node judging its own traffic.
//! - **step and promotion**: proposed by the confirmed leader when its copy of the step has lasted its interval
//!   under its guards. The leader judges its own traffic only (the other nodes' figures count through their
//!   rollbacks, not through the step decisions).
//! - **promote, abort, pause, resume** through the admin API of any node.
//!
//! A node that joins or restarts mid-rollout starts its copy from the record, at the recorded step. A leader that
//! dies leaves the record as the last committed decision made it; the next leader's copy keeps stepping from it.

use super::ClusterLink;
use crate::plugin::rollout::{Judgement, Rollout, State, TICK};
use crate::plugin::PluginSlot;
use crate::server::Server;
use portico_cluster::{ClusterState, Command, Proposal, RolloutDecision, RolloutRecord, RolloutState};
use std::sync::{Arc, Weak};
use std::time::Instant;

/// This node's copy of the rollout `record`, if the slot runs it.
fn local_copy(slot: &PluginSlot, record: &RolloutRecord) -> Option<Arc<Rollout>> {
    slot.rollout().filter(|r| r.serial() == Some(record.serial))
}

/// Before a new configuration is applied: ends this node's copy of each rollout the cluster ended (a promotion
/// swaps the candidate in here first, so the reload that follows finds it promoted, not cut short).
pub(super) async fn settle(server: &Server, state: &ClusterState) {
    let snapshot = server.shared.snapshot.load_full();
    for (name, record) in &state.rollouts {
        let Some(slot) = snapshot.plugins.get(name) else { continue };
        let Some(local) = local_copy(slot, record) else { continue };
        if local.state() != State::Running {
            continue;
        }
        let reason = record.reason.clone().unwrap_or_default();
        match record.state {
            RolloutState::Running => {}
            RolloutState::Promoted => {
                server.shared.plugins.promote_replicated(slot, &local, &reason).await;
            }
            RolloutState::RolledBack => {
                local.finish(State::RolledBack, reason);
            }
            RolloutState::Aborted => {
                local.finish(State::Aborted, reason);
            }
        }
    }
}

/// After a new configuration is applied: starts this node's copy of each running rollout it does not run yet (a
/// new rollout, this node joined or restarted mid-rollout, or a reload rebuilt the slot), and follows the
/// recorded step and pause.
pub(super) async fn follow(server: &Server, link: &Arc<ClusterLink>, state: &ClusterState) {
    let snapshot = server.shared.snapshot.load_full();
    for (name, record) in &state.rollouts {
        if record.state != RolloutState::Running {
            continue;
        }
        let Some(slot) = snapshot.plugins.get(name) else { continue };
        let local = match local_copy(slot, record) {
            Some(local) => local,
            None => {
                let percent = f64::from(record.first_share) / 100.0;
                let bytes = record.candidate.wasm.to_vec();
                match server.shared.plugins.start_replicated_rollout(slot, bytes, percent, record.serial).await {
                    Ok(local) => {
                        tokio::spawn(drive(link.clone(), Arc::downgrade(slot), local.clone()));
                        local
                    }
                    Err(e) => {
                        tracing::error!(plugin = %name, error = %e, "this node cannot start the cluster's rollout candidate; it keeps the stable version");
                        continue;
                    }
                }
            }
        };
        local.set_step(record.step as usize);
        if local.paused() != record.paused {
            let _ = local.pause(record.paused);
        }
    }
}

/// Watches this node's copy of a replicated rollout once a [`TICK`] until it ends: a breach here stops the
/// candidate here at once and is proposed as the cluster's rollback; a step that lasted its interval is proposed
/// as the next step (or the promotion) when this node is the confirmed leader.
async fn drive(link: Arc<ClusterLink>, slot: Weak<PluginSlot>, rollout: Arc<Rollout>) {
    let name = rollout.plugin().to_string();
    let serial = rollout.serial().unwrap_or_default();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut last = Instant::now();
    let mut pending: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let elapsed = now - last;
        last = now;
        match slot.upgrade() {
            Some(slot) if slot.runs(&rollout) => {}
            _ => return,
        }
        match rollout.judge(elapsed) {
            Judgement::Ended => return,
            Judgement::Hold => {}
            Judgement::Breach(reason) => {
                let reason = format!("node {}: {reason}", link.cluster.node_id());
                rollout.finish(State::RolledBack, reason.clone());
                propose_rollback(&link, &name, serial, reason).await;
                return;
            }
            Judgement::StepDue { step, last } => {
                let busy = pending.as_ref().is_some_and(|p| !p.is_finished());
                if busy || !link.cluster.status().leader_confirmed {
                    continue;
                }
                let decision = if last {
                    RolloutDecision::Promote { reason: "every step passed its guards".into() }
                } else {
                    RolloutDecision::Step { step: step as u32 + 1 }
                };
                let command = Command::Rollout { name: name.clone(), serial, decision };
                let link = link.clone();
                pending = Some(tokio::spawn(async move {
                    if let Err(e) = link.cluster.propose(Proposal::plain(command)).await {
                        tracing::debug!(error = %e, "a rollout step was not committed; the next tick proposes it again");
                    }
                }));
            }
        }
    }
}

/// Proposes the rollback until it is committed or the cluster's record says the rollout is no longer running
/// (another node's rollback, an abort, a promotion got in first).
async fn propose_rollback(link: &ClusterLink, name: &str, serial: u64, reason: String) {
    let decision = RolloutDecision::RollBack { reason };
    loop {
        let command = Command::Rollout { name: name.to_string(), serial, decision: decision.clone() };
        match link.cluster.propose(Proposal::plain(command)).await {
            Ok(_) | Err(portico_cluster::ClusterError::Rejected(_)) => return,
            Err(e) => tracing::warn!(plugin = %name, error = %e, "the rollback is not committed yet; trying again"),
        }
        let state = link.cluster.state();
        let running = state.rollouts.get(name).is_some_and(|r| r.serial == serial && r.state == RolloutState::Running);
        if !running {
            return;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// The admin API's view of a replicated rollout this node does not run a copy of (it ended before this node
/// started, or the slot was rebuilt by the promotion).
/// `stable_sha256` is the module the candidate was judged against, as this node knows it.
pub fn describe_record(name: &str, record: &RolloutRecord, stable_sha256: Option<&str>) -> serde_json::Value {
    let state = match record.state {
        RolloutState::Running => "running",
        RolloutState::Promoted => "promoted",
        RolloutState::RolledBack => "rolled_back",
        RolloutState::Aborted => "aborted",
    };
    let percent = match record.state {
        RolloutState::Promoted => 100.0,
        RolloutState::Running => f64::from(record.first_share) / 100.0,
        _ => 0.0,
    };
    serde_json::json!({
        "plugin": name,
        "state": state,
        "paused": record.paused,
        "percent": percent,
        "step": record.step + 1,
        "candidate_sha256": record.candidate.sha256,
        "stable_sha256": stable_sha256,
        "reason": record.reason,
        "replicated": true,
    })
}
