//! The demo's fourth act: a release of the router that breaks one route (every request under `/checkout`
//! answers 503) is rolled out beside the bundled router to a share of the requests. Nobody intervenes: the
//! rollout's guards see the candidate fail where the stable router does not and roll it back by themselves.
//! The act tells when that happened and what it cost.

use crate::plugin::rollout::{Rollout, State};
use crate::server::Server;
use std::sync::Arc;
use std::time::Duration;

/// The faulty release, in WAT (assembled when the act starts).
const BROKEN_ROUTER: &str = include_str!("broken_router.wat");

/// The share of requests the faulty release starts with.
pub const PERCENT: f64 = 10.0;

/// The act as it unfolds.
#[derive(Debug)]
pub struct RolloutAct {
    rollout: Arc<Rollout>,
    /// When it started, from the demo's start.
    started: Duration,
    /// When the demo first saw it rolled back.
    seen_rolled_back: Option<Duration>,
    /// Whether the load windows now start after the rollback.
    counting_after: bool,
    /// Failed requests in the windows after the rollback.
    failed_after: u64,
}

impl RolloutAct {
    /// Rolls the faulty release of the `router` plugin out at [`PERCENT`] %, `at` into the demo.
    pub async fn start(server: &Server, at: Duration) -> Result<RolloutAct, String> {
        let bytes = wat::parse_str(BROKEN_ROUTER).map_err(|e| format!("the demo's router release: {e}"))?;
        let slot = server.shared.snapshot.load().plugins.get("router").cloned().ok_or("no router plugin")?;
        let rollout = server.shared.plugins.start_rollout(&slot, bytes, PERCENT).await.map_err(|e| e.to_string())?;
        Ok(RolloutAct { rollout, started: at, seen_rolled_back: None, counting_after: false, failed_after: 0 })
    }

    /// Called once a second before the load window is taken: returns the line to print when the rollback is
    /// first seen. Windows taken after that one hold only requests sent after the rollback.
    pub fn before_window(&mut self, now: Duration) -> Option<String> {
        if self.seen_rolled_back.is_some() {
            self.counting_after = true;
            return None;
        }
        if self.rollout.state() == State::Running {
            return None;
        }
        self.seen_rolled_back = Some(now);
        let view = self.rollout.describe();
        Some(format!(
            "      -- router v2 {} by itself after {:.1} s: {} --",
            if self.rollout.state() == State::RolledBack { "rolled back" } else { "ended" },
            took(&view).unwrap_or_default(),
            view["reason"].as_str().unwrap_or("")
        ))
    }

    /// Failed requests in a window taken after [`RolloutAct::before_window`].
    pub fn window(&mut self, failed: u64) {
        if self.counting_after {
            self.failed_after += failed;
        }
    }

    /// Requests the faulty release failed.
    pub fn failed(&self) -> u64 {
        self.rollout.describe()["totals"]["candidate"]["errors"].as_u64().unwrap_or(0)
    }

    /// The act's lines in the closing summary.
    pub fn summary(&self) {
        let view = self.rollout.describe();
        let count = |v: &str, k: &str| view["totals"][v][k].as_u64().unwrap_or(0);
        let (met, failed) = (count("candidate", "requests"), count("candidate", "errors"));
        let during = met + count("stable", "requests");
        println!("Rollout of router v2 (breaks /checkout) at {PERCENT} %:");
        println!("  rolled out       {:.0}s", self.started.as_secs_f64());
        match (self.rollout.state(), took(&view)) {
            (State::RolledBack, Some(took)) => println!(
                "  rolled back      {:.0}s, {took:.1} s after it started, by itself: {}",
                (self.started.as_secs_f64() + took),
                view["reason"].as_str().unwrap_or("")
            ),
            (state, _) => {
                println!("  rolled back      —  (state {} at the end; try a longer --duration)", state.name())
            }
        }
        println!(
            "  failed requests  {failed} of the {met} it met, {:.2} % of the {during} requests during the rollout; {} after the rollback",
            if during == 0 { 0.0 } else { 100.0 * failed as f64 / during as f64 },
            self.failed_after
        );
    }
}

/// Seconds from the rollout's start to its end.
fn took(view: &serde_json::Value) -> Option<f64> {
    Some(view["ended"].as_f64()? - view["started"].as_f64()?)
}
