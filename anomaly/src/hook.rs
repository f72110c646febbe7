//! Remediation hooks: run operator-provided programs when matching alerts fire.
//!
//! Safety properties, all tested:
//! * programs run from an argv list via `tokio::process` — never through a shell — so alert data
//!   (series names come from config and upstream names) cannot inject commands;
//! * alert JSON goes to stdin and a few `PORTICO_ALERT_*` env vars, never into argv;
//! * each run has a timeout after which its whole process group is killed;
//! * each hook has a cooldown and all hooks share a concurrency limit;
//! * every decision (ran, skipped, timed out, dry run) lands in a bounded audit log.

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::alert::Alert;
use crate::config::{HookConfig, HookRole};
use crate::incident::{Incident, Scope};
use crate::sample::now_ms;

/// Bytes of stdout/stderr kept per run in the audit log.
pub const TAIL_BYTES: usize = 2048;

/// `*` matches any run of characters (including `.`); everything else matches literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether `hook` should run for `alert` (severity at least the hook's, series glob matches).
pub fn hook_matches(hook: &HookConfig, alert: &Alert) -> bool {
    hook.on.severity.is_none_or(|min| alert.severity >= min)
        && hook.on.series.as_deref().is_none_or(|g| glob_match(g, &alert.series))
}

/// The alert of `incident` that `hook` acts on: its cause when the cause matches, else (for `role = "any"`) the
/// first member that does; `None` when the hook does not run for this incident.
pub fn incident_match<'a>(hook: &HookConfig, incident: &'a Incident) -> Option<&'a Alert> {
    if hook_matches(hook, &incident.cause.alert) {
        return Some(&incident.cause.alert);
    }
    match hook.on.role {
        HookRole::Cause => None,
        HookRole::Any => incident.symptoms.iter().map(|m| &m.alert).find(|a| hook_matches(hook, a)),
    }
}

/// How a hook invocation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exited with status 0.
    Ok,
    /// Exited with a non-zero status.
    ExitCode(i32),
    /// Terminated by a signal (not ours).
    Signal(i32),
    /// Ran past its timeout; its process group was killed.
    Timeout,
    /// Not run: the hook ran less than `cooldown` ago.
    SkippedCooldown,
    /// Not run: the hook is in dry-run mode.
    DryRun,
    /// The program could not be started (missing, not executable...).
    SpawnError(String),
}

/// One audit-log entry, served by `GET /anomaly/actions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// Hook name.
    pub hook: String,
    /// Alert that triggered it.
    pub alert_id: String,
    /// The incident it acted on (`None` for a hook run by hand for a single alert).
    #[serde(default)]
    pub incident_id: Option<String>,
    /// Alert series (for quick reading).
    pub series: String,
    /// argv that was (or, for dry runs and skips, would have been) executed.
    pub argv: Vec<String>,
    /// Unix ms when the decision was made / the process started.
    pub started_at: i64,
    /// Wall time of the run (0 when not run).
    pub duration_ms: u64,
    /// Result.
    pub outcome: Outcome,
    /// Last [`TAIL_BYTES`] of stdout.
    pub stdout_tail: String,
    /// Last [`TAIL_BYTES`] of stderr.
    pub stderr_tail: String,
}

#[derive(Debug)]
struct Inner {
    hooks: Vec<HookConfig>,
    permits: Arc<Semaphore>,
    last_start: Mutex<HashMap<String, Instant>>,
    audit: Mutex<VecDeque<ActionRecord>>,
    audit_capacity: usize,
    admin_url: String,
}

/// Runs hooks; cheap to clone (shared state), usable from sync and async code.
#[derive(Debug, Clone)]
pub struct HookRunner {
    inner: Arc<Inner>,
}

impl HookRunner {
    /// Runner for `hooks` with at most `max_concurrent` processes at once. `admin_url` is
    /// passed to hooks as `PORTICO_ADMIN_URL` so scripts can call back into the proxy.
    pub fn new(hooks: Vec<HookConfig>, max_concurrent: usize, admin_url: impl Into<String>) -> Self {
        HookRunner {
            inner: Arc::new(Inner {
                hooks,
                permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
                last_start: Mutex::new(HashMap::new()),
                audit: Mutex::new(VecDeque::new()),
                audit_capacity: 256,
                admin_url: admin_url.into(),
            }),
        }
    }

    /// Configured hooks.
    pub fn hooks(&self) -> &[HookConfig] {
        &self.inner.hooks
    }

    /// Audit log, oldest first.
    pub fn actions(&self) -> Vec<ActionRecord> {
        self.inner.audit.lock().iter().cloned().collect()
    }

    fn record(&self, r: ActionRecord) {
        tracing::info!(hook = %r.hook, alert = %r.alert_id, outcome = ?r.outcome, ms = r.duration_ms, "anomaly hook");
        let mut log = self.inner.audit.lock();
        if log.len() >= self.inner.audit_capacity {
            log.pop_front();
        }
        log.push_back(r);
    }

    /// Decide synchronously which hooks run for a settled `incident` (matching, cooldown, dry run) and spawn
    /// the runs on `rt`: each matching hook runs once, for the incident's cause (or, with `role = "any"`, the
    /// member it matched). Callable from a non-async thread such as the detector's; returns the spawned runs
    /// so callers may await them (the detector ignores them).
    pub fn dispatch_incident(&self, rt: &Handle, incident: &Incident) -> Vec<JoinHandle<ActionRecord>> {
        let runs: Vec<(&HookConfig, &Alert)> =
            self.inner.hooks.iter().filter_map(|h| incident_match(h, incident).map(|a| (h, a))).collect();
        self.start(rt, runs, Some(incident)).1
    }

    /// Decide which hooks run for one `alert` outside any incident and spawn them on `rt`.
    pub fn dispatch(&self, rt: &Handle, alert: &Alert) -> Vec<JoinHandle<ActionRecord>> {
        self.dispatch_inner(rt, alert).1
    }

    fn dispatch_inner(&self, rt: &Handle, alert: &Alert) -> (Vec<ActionRecord>, Vec<JoinHandle<ActionRecord>>) {
        let runs: Vec<(&HookConfig, &Alert)> =
            self.inner.hooks.iter().filter(|h| hook_matches(h, alert)).map(|h| (h, alert)).collect();
        self.start(rt, runs, None)
    }

    fn start(
        &self,
        rt: &Handle,
        runs: Vec<(&HookConfig, &Alert)>,
        incident: Option<&Incident>,
    ) -> (Vec<ActionRecord>, Vec<JoinHandle<ActionRecord>>) {
        let mut immediate = Vec::new();
        let mut handles = Vec::new();
        for (hook, alert) in runs {
            let base = ActionRecord {
                hook: hook.name.clone(),
                alert_id: alert.id.clone(),
                incident_id: incident.map(|i| i.id.clone()),
                series: alert.series.clone(),
                argv: hook.exec.clone(),
                started_at: now_ms(),
                duration_ms: 0,
                outcome: Outcome::Ok,
                stdout_tail: String::new(),
                stderr_tail: String::new(),
            };
            let cooling = {
                let mut last = self.inner.last_start.lock();
                let now = Instant::now();
                match last.get(&hook.name) {
                    Some(prev) if now.duration_since(*prev) < hook.cooldown.0 => true,
                    _ => {
                        last.insert(hook.name.clone(), now);
                        false
                    }
                }
            };
            if cooling || hook.dry_run {
                let outcome = if cooling { Outcome::SkippedCooldown } else { Outcome::DryRun };
                let r = ActionRecord { outcome, ..base };
                self.record(r.clone());
                immediate.push(r);
                continue;
            }
            let this = self.clone();
            let hook = hook.clone();
            let alert = alert.clone();
            let incident = incident.cloned();
            handles.push(rt.spawn(async move {
                let r = this.execute(&hook, &alert, incident.as_ref(), base).await;
                this.record(r.clone());
                r
            }));
        }
        (immediate, handles)
    }

    /// Dispatch on the current runtime and wait for every run; returns one record per matching
    /// hook (useful for a CLI "test this hook" command and for tests).
    pub async fn run(&self, alert: &Alert) -> Vec<ActionRecord> {
        let (mut out, handles) = self.dispatch_inner(&Handle::current(), alert);
        for h in handles {
            if let Ok(r) = h.await {
                out.push(r);
            }
        }
        out
    }

    async fn execute(
        &self,
        hook: &HookConfig,
        alert: &Alert,
        incident: Option<&Incident>,
        base: ActionRecord,
    ) -> ActionRecord {
        let permits = self.inner.permits.clone();
        let _permit = permits.acquire_owned().await;
        let t0 = Instant::now();
        let started_at = now_ms();
        // The alert as stdin JSON, with the incident it belongs to (cause and symptoms) beside its own fields.
        let mut doc = serde_json::to_value(alert).unwrap_or_default();
        if let (Some(obj), Some(inc)) = (doc.as_object_mut(), incident) {
            obj.insert("incident".into(), serde_json::to_value(inc).unwrap_or_default());
        }
        let json = serde_json::to_vec(&doc).unwrap_or_default();
        let mut cmd = tokio::process::Command::new(&hook.exec[0]);
        cmd.args(&hook.exec[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .env("PORTICO_ALERT_ID", &alert.id)
            .env("PORTICO_ALERT_SERIES", &alert.series)
            .env("PORTICO_ALERT_SEVERITY", alert.severity.as_str())
            .env("PORTICO_ALERT_SCORE", format!("{:.4}", alert.score))
            .env("PORTICO_ALERT_VALUE", format!("{}", alert.value))
            .env("PORTICO_ADMIN_URL", &self.inner.admin_url);
        match Scope::of(&alert.series) {
            Scope::Endpoint { upstream, endpoint } => {
                cmd.env("PORTICO_ALERT_UPSTREAM", upstream).env("PORTICO_ALERT_ENDPOINT", endpoint);
            }
            Scope::Upstream { upstream } => {
                cmd.env("PORTICO_ALERT_UPSTREAM", upstream);
            }
            Scope::Listener { listener } => {
                cmd.env("PORTICO_ALERT_LISTENER", listener);
            }
            Scope::Host => {}
        }
        if let Some(inc) = incident {
            let symptoms: Vec<&str> = inc.symptoms.iter().map(|m| m.alert.series.as_str()).collect();
            cmd.env("PORTICO_INCIDENT_ID", &inc.id)
                .env("PORTICO_INCIDENT_CAUSE", &inc.cause.alert.series)
                .env("PORTICO_INCIDENT_SYMPTOMS", symptoms.join(","));
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return ActionRecord { started_at, outcome: Outcome::SpawnError(e.to_string()), ..base };
            }
        };
        let pid = child.id();
        if let Some(mut stdin) = child.stdin.take() {
            tokio::spawn(async move {
                // The script may exit without reading stdin; a broken pipe is not an error here.
                let _ = stdin.write_all(&json).await;
                let _ = stdin.shutdown().await;
            });
        }
        let out_task = child.stdout.take().map(|s| tokio::spawn(read_tail(s)));
        let err_task = child.stderr.take().map(|s| tokio::spawn(read_tail(s)));
        let outcome = match tokio::time::timeout(hook.timeout.0, child.wait()).await {
            Ok(Ok(status)) => {
                use std::os::unix::process::ExitStatusExt;
                match (status.code(), status.signal()) {
                    (Some(0), _) => Outcome::Ok,
                    (Some(c), _) => Outcome::ExitCode(c),
                    (None, Some(s)) => Outcome::Signal(s),
                    (None, None) => Outcome::ExitCode(-1),
                }
            }
            Ok(Err(e)) => Outcome::SpawnError(e.to_string()),
            Err(_) => {
                if let Some(pid) = pid {
                    kill_group(pid).await;
                }
                let _ = child.kill().await;
                Outcome::Timeout
            }
        };
        let collect = |t: Option<JoinHandle<String>>| async move {
            match t {
                Some(t) => {
                    tokio::time::timeout(Duration::from_secs(1), t).await.ok().and_then(|r| r.ok()).unwrap_or_default()
                }
                None => String::new(),
            }
        };
        let stdout_tail = collect(out_task).await;
        let stderr_tail = collect(err_task).await;
        ActionRecord {
            started_at,
            duration_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            outcome,
            stdout_tail,
            stderr_tail,
            ..base
        }
    }
}

/// SIGKILL the whole process group (the hook was started as its own group leader), so children
/// such as `sleep` in a shell script die too. Uses `kill(1)` to stay free of `unsafe` libc calls.
async fn kill_group(pid: u32) {
    let r = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(e) = r {
        tracing::warn!(pid, error = %e, "could not kill hook process group");
    }
}

async fn read_tail<R: AsyncRead + Unpin>(mut r: R) -> String {
    let mut keep: VecDeque<u8> = VecDeque::with_capacity(TAIL_BYTES);
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        keep.extend(&buf[..n]);
        let excess = keep.len().saturating_sub(TAIL_BYTES);
        keep.drain(..excess);
    }
    String::from_utf8_lossy(&Vec::from(keep)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("upstream.*.latency_p99", "upstream.app.latency_p99"));
        assert!(glob_match("upstream.*.latency_p99", "upstream.a.b.latency_p99"));
        assert!(!glob_match("upstream.*.latency_p99", "upstream.app.latency_p95"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXbY"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }
}
