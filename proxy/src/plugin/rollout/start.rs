//! Starting, promoting and ending a slot's rollout: the version changes, under the plugin set's change lock
//! like any upload.

use super::{Action, Rollout, State, TICK};
use crate::plugin::{sha256_hex, PluginLoadError, PluginSet, PluginSlot, VersionInfo};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

impl PluginSlot {
    /// The latest rollout, running or ended.
    pub fn rollout(&self) -> Option<Arc<Rollout>> {
        self.rollout.load_full()
    }

    /// The rollout whose candidate the data path may choose: loaded once per request start, and only when the
    /// slot has one. (A request that starts while a rollout is being stored may miss it: it then meets the
    /// stable version, as one that started a moment earlier would.)
    pub(crate) fn rollout_guard(&self) -> Option<arc_swap::Guard<Option<Arc<Rollout>>>> {
        self.has_rollout.load(Ordering::Acquire).then(|| self.rollout.load())
    }

    /// Whether `rollout` is this slot's latest.
    pub(crate) fn runs(&self, rollout: &Arc<Rollout>) -> bool {
        self.rollout.load().as_ref().is_some_and(|r| Arc::ptr_eq(r, rollout))
    }

    /// Makes the candidate the stable version (the old one becomes "previous", for `POST .../rollback`), if the
    /// rollout is still running: the state changes first, so a rollout aborted or promoted meanwhile (the driver
    /// and the admin API may race) is promoted at most once and never after an abort.
    pub(crate) fn promote(&self, rollout: &Rollout, reason: &str) -> bool {
        if !rollout.finish(State::Promoted, reason) {
            return false;
        }
        let (plugin, info) = rollout.candidate();
        self.swap_in(plugin, info);
        true
    }

    /// Ends and forgets the rollout, dropping its candidate.
    pub(crate) fn end_rollout(&self, reason: &str) {
        self.has_rollout.store(false, Ordering::Release);
        if let Some(old) = self.rollout.swap(None) {
            old.finish(State::Aborted, reason);
        }
    }
}

impl PluginSet {
    /// Rollbacks as they happen, for raising alerts.
    pub fn rolled_back_events(&self) -> tokio::sync::broadcast::Receiver<super::RolledBack> {
        self.rollout_reporting.rolled_back()
    }

    /// Compiles and starts `bytes` as the candidate of a new rollout of `slot` at `percent` % (which replaces
    /// the first configured step), beside the current version. A module that fails to start is refused and
    /// nothing changes; a rollout already there (running or ended) is replaced.
    pub async fn start_rollout(
        &self,
        slot: &Arc<PluginSlot>,
        bytes: Vec<u8>,
        percent: f64,
    ) -> Result<Arc<Rollout>, PluginLoadError> {
        let rollout = self.begin_rollout(slot, bytes, percent, None).await?;
        tokio::spawn(drive(Arc::downgrade(slot), rollout.clone(), self.changing.clone()));
        Ok(rollout)
    }

    /// Starts this node's copy of the cluster's rollout `serial`: like [`PluginSet::start_rollout`], but nothing
    /// drives it here; the cluster's decisions do (`crate::cluster::rollout`).
    pub async fn start_replicated_rollout(
        &self,
        slot: &Arc<PluginSlot>,
        bytes: Vec<u8>,
        percent: f64,
        serial: u64,
    ) -> Result<Arc<Rollout>, PluginLoadError> {
        self.begin_rollout(slot, bytes, percent, Some(serial)).await
    }

    async fn begin_rollout(
        &self,
        slot: &Arc<PluginSlot>,
        bytes: Vec<u8>,
        percent: f64,
        serial: Option<u64>,
    ) -> Result<Arc<Rollout>, PluginLoadError> {
        let _guard = self.changing.lock().await;
        let sha256 = sha256_hex(&bytes);
        let plugin = self.load(&slot.config, bytes).await?;
        self.spawn_tickers(&plugin);
        let config = slot.config.rollout.clone();
        let steps = config.starting_at(percent);
        let info = VersionInfo { origin: "upload (rollout candidate)".into(), sha256, since: SystemTime::now() };
        let stable_sha256 = slot.info.lock().sha256.clone();
        let rollout = Arc::new(
            Rollout::new(&slot.config.name, config, steps, plugin, info, stable_sha256, self.rollout_reporting.clone())
                .replicating(serial),
        );
        slot.end_rollout("replaced by a new rollout");
        slot.rollout.store(Some(rollout.clone()));
        slot.has_rollout.store(true, Ordering::Release);
        tracing::info!(plugin = %slot.config.name, percent, candidate_sha256 = %rollout.candidate_info.sha256, "rollout started");
        Ok(rollout)
    }

    /// Promotes `rollout`'s candidate if it is the slot's running rollout (a cluster member applying the
    /// cluster's decision); `false` when it is not.
    pub async fn promote_replicated(&self, slot: &PluginSlot, rollout: &Arc<Rollout>, reason: &str) -> bool {
        let _guard = self.changing.lock().await;
        slot.runs(rollout) && slot.promote(rollout, reason)
    }

    /// Promotes a running rollout's candidate now.
    pub async fn promote_rollout(&self, slot: &PluginSlot) -> Result<Arc<Rollout>, PluginLoadError> {
        let _guard = self.changing.lock().await;
        let rollout = running(slot)?;
        if !slot.promote(&rollout, "promoted through the admin API") {
            return Err(PluginLoadError::RolloutEnded {
                plugin: slot.config.name.clone(),
                state: rollout.state().name(),
            });
        }
        Ok(rollout)
    }
}

/// The slot's rollout if it is running.
pub fn running(slot: &PluginSlot) -> Result<Arc<Rollout>, PluginLoadError> {
    let rollout = slot.rollout().ok_or_else(|| PluginLoadError::NoRollout(slot.config.name.clone()))?;
    match rollout.state() {
        State::Running => Ok(rollout),
        state => Err(PluginLoadError::RolloutEnded { plugin: slot.config.name.clone(), state: state.name() }),
    }
}

/// Watches `rollout` once a [`TICK`] until it ends, promoting it (under the plugin set's change lock) when its
/// last step passes. Ends early when the slot is gone or runs another rollout.
async fn drive(slot: std::sync::Weak<PluginSlot>, rollout: Arc<Rollout>, changing: Arc<tokio::sync::Mutex<()>>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut last = Instant::now();
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let elapsed = now - last;
        last = now;
        let Some(slot) = slot.upgrade() else { return };
        if !slot.runs(&rollout) {
            return;
        }
        match rollout.tick(elapsed) {
            Action::Continue => {}
            Action::Done => return,
            Action::Promote => {
                let _guard = changing.lock().await;
                if slot.runs(&rollout) {
                    slot.promote(&rollout, "every step passed its guards");
                }
                // (Not running any more, or promoted now: either way this driver is done.)
                return;
            }
        }
    }
}
