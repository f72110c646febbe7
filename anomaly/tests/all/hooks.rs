use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portico_anomaly::config::{HookMatch, HumanDuration};
use portico_anomaly::{Alert, AlertState, HookConfig, HookRunner, Outcome, Severity};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn alert(series: &str, severity: Severity) -> Alert {
    Alert {
        id: format!("{series}@1700000000000"),
        series: series.into(),
        severity,
        state: AlertState::Firing,
        score: 0.97,
        peak_score: 0.97,
        value: 812.5,
        predicted: Some(40.0),
        started_at: 1_700_000_000_000,
        resolved_at: None,
    }
}

fn hook(name: &str, exec: Vec<String>) -> HookConfig {
    HookConfig {
        name: name.into(),
        on: HookMatch::default(),
        exec,
        timeout: HumanDuration(Duration::from_secs(10)),
        cooldown: HumanDuration(Duration::ZERO),
        dry_run: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_gets_json_env_and_verbatim_argv_without_shell_interpretation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let s = script(
        dir.path(),
        "record.sh",
        r#"out="$1"; shift
cat > "$out/stdin.json"
printf '%s\n' "$PORTICO_ALERT_SERIES" "$PORTICO_ALERT_SEVERITY" "$PORTICO_ALERT_SCORE" "$PORTICO_ALERT_VALUE" "$PORTICO_ALERT_ID" "$PORTICO_ADMIN_URL" > "$out/env.txt"
for a in "$@"; do printf '[%s]\n' "$a"; done > "$out/argv.txt"
echo hello-from-hook; echo oops >&2; exit 0"#,
    );
    let pwned = dir.path().join("PWNED");
    let evil = format!("upstream.$(touch {p}).latency_p99;touch {p}`touch {p}`", p = pwned.display());
    let tricky_arg = format!("$(touch {}) ; | & * \"q\" 'x'", pwned.display());
    let runner = HookRunner::new(
        vec![hook(
            "rec",
            vec![s.display().to_string(), out.display().to_string(), tricky_arg.clone(), "two words".into()],
        )],
        2,
        "http://127.0.0.1:9901",
    );
    let recs = runner.run(&alert(&evil, Severity::Critical)).await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].outcome, Outcome::Ok, "{recs:?}");
    assert_eq!(recs[0].stdout_tail.trim(), "hello-from-hook");
    assert_eq!(recs[0].stderr_tail.trim(), "oops");

    let stdin: Alert = serde_json::from_str(&std::fs::read_to_string(out.join("stdin.json")).unwrap()).unwrap();
    assert_eq!(stdin.series, evil);
    let env = std::fs::read_to_string(out.join("env.txt")).unwrap();
    let env: Vec<&str> = env.lines().collect();
    assert_eq!(
        env,
        [evil.as_str(), "critical", "0.9700", "812.5", &format!("{evil}@1700000000000"), "http://127.0.0.1:9901"]
    );
    let argv = std::fs::read_to_string(out.join("argv.txt")).unwrap();
    assert_eq!(argv, format!("[{tricky_arg}]\n[two words]\n"));
    assert!(!pwned.exists(), "shell metacharacters were interpreted");
    assert_eq!(runner.actions().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sleep.pid");
    let s = script(dir.path(), "slow.sh", &format!("sleep 30 & echo $! > {}\nwait", pidfile.display()));
    let mut h = hook("slow", vec![s.display().to_string()]);
    h.timeout = HumanDuration(Duration::from_millis(500));
    let runner = HookRunner::new(vec![h], 1, "");
    let t0 = Instant::now();
    let recs = runner.run(&alert("x", Severity::Warning)).await;
    assert_eq!(recs[0].outcome, Outcome::Timeout);
    // The script would run 30 s; only a kill ends it sooner. The bound is loose so a busy machine cannot trip it.
    assert!(t0.elapsed() < Duration::from_secs(20), "took {:?}", t0.elapsed());
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        // A killed-but-unreaped child shows as zombie (Z); either way it no longer runs.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => s.rsplit(')').next().unwrap().trim_start().starts_with('Z'),
        }
    });
    assert!(gone, "sleep {pid} survived the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldown_skips_and_dry_run_does_not_execute() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let s = script(dir.path(), "touch.sh", &format!("echo x >> {}", marker.display()));
    let mut cool = hook("cool", vec![s.display().to_string()]);
    cool.cooldown = HumanDuration(Duration::from_secs(3600));
    let runner = HookRunner::new(vec![cool], 1, "");
    let a = alert("upstream.app.latency_p99", Severity::Critical);
    assert_eq!(runner.run(&a).await[0].outcome, Outcome::Ok);
    assert_eq!(runner.run(&a).await[0].outcome, Outcome::SkippedCooldown);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "x\n", "ran exactly once");

    let marker2 = dir.path().join("dry");
    let s2 = script(dir.path(), "touch2.sh", &format!("touch {}", marker2.display()));
    let mut dry = hook("dry", vec![s2.display().to_string()]);
    dry.dry_run = true;
    let runner = HookRunner::new(vec![dry], 1, "");
    let recs = runner.run(&a).await;
    assert_eq!(recs[0].outcome, Outcome::DryRun);
    assert_eq!(recs[0].argv, vec![s2.display().to_string()]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!marker2.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_exit_codes_and_spawn_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fail = script(dir.path(), "fail.sh", "exit 3");
    let mut crit = hook("crit-latency", vec![fail.display().to_string()]);
    crit.on = HookMatch {
        severity: Some(Severity::Critical),
        series: Some("upstream.*.latency_p99".into()),
        ..Default::default()
    };
    let missing = hook("missing", vec![dir.path().join("nope").display().to_string()]);
    let runner = HookRunner::new(vec![crit, missing], 2, "");
    // Warning alert: only the unfiltered hook runs, and it cannot spawn.
    let recs = runner.run(&alert("upstream.app.latency_p99", Severity::Warning)).await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].hook, "missing");
    assert!(matches!(recs[0].outcome, Outcome::SpawnError(_)));
    let recs = runner.run(&alert("upstream.app.latency_p99", Severity::Critical)).await;
    let crit = recs.iter().find(|r| r.hook == "crit-latency").unwrap();
    assert_eq!(crit.outcome, Outcome::ExitCode(3));
    let recs = runner.run(&alert("upstream.app.error_ratio", Severity::Critical)).await;
    assert!(recs.iter().all(|r| r.hook != "crit-latency"));
}
