use std::time::Duration;

use portico_anomaly::config::History;
use portico_anomaly::{AnomalyConfig, Severity};

#[derive(serde::Deserialize)]
struct Root {
    anomaly: AnomalyConfig,
}

fn parse(s: &str) -> Result<AnomalyConfig, String> {
    toml::from_str::<Root>(s).map(|r| r.anomaly).map_err(|e| e.to_string())
}

#[test]
fn full_example_parses() {
    let c = parse(
        r#"
[anomaly]
interval = "250ms"
history = "1h"
store_dir = "/var/lib/portico/anomaly"
store_max_bytes = 1048576
warmup = 30
webhooks = ["http://127.0.0.1:9093/api/v2/alerts"]
max_concurrent_hooks = 3
[anomaly.thresholds]
warning = 0.6
critical = 0.95
for_ticks = 4
resolve_ticks = 10
[[anomaly.hook]]
name = "drain"
on = { severity = "critical", series = "upstream.*.latency_p99" }
exec = ["/etc/portico/drain-slowest.sh", "--dry"]
timeout = "10s"
cooldown = "5m"
dry_run = true
"#,
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.interval.get(), Duration::from_millis(250));
    assert_eq!(c.history, History::Span(Duration::from_secs(3600)));
    assert_eq!(c.history_ticks(), 14_400);
    assert_eq!(c.thresholds.for_ticks, 4);
    assert_eq!(c.hooks[0].on.severity, Some(Severity::Critical));
    assert_eq!(c.hooks[0].cooldown.get(), Duration::from_secs(300));
    assert!(c.hooks[0].dry_run);
    let ticks = parse("[anomaly]\nhistory = 500\n").unwrap();
    assert_eq!(ticks.history_ticks(), 500);
    assert_eq!(parse("[anomaly]\n").unwrap(), AnomalyConfig::default());
}

#[test]
fn unknown_keys_are_rejected_everywhere() {
    let e = parse("[anomaly]\nintervall = \"1s\"\n").unwrap_err();
    assert!(e.contains("intervall"), "{e}");
    let e = parse("[anomaly.thresholds]\nwarnin = 0.5\n").unwrap_err();
    assert!(e.contains("warnin"), "{e}");
    let e = parse("[[anomaly.hook]]\nname = \"x\"\nexec = [\"/bin/true\"]\nshell = \"rm -rf /\"\n").unwrap_err();
    assert!(e.contains("shell"), "{e}");
    let e =
        parse("[[anomaly.hook]]\nname = \"x\"\nexec = [\"/bin/true\"]\non = { sevrity = \"critical\" }\n").unwrap_err();
    assert!(e.contains("sevrity"), "{e}");
}

#[test]
fn bad_values_are_rejected() {
    assert!(parse("[anomaly]\ninterval = \"1 second\"\n").unwrap_err().contains("unit"));
    assert!(parse("[anomaly]\ninterval = \"5\"\n").unwrap_err().contains("missing unit"));
    let c = parse("[[anomaly.hook]]\nname = \"x\"\nexec = []\n").unwrap();
    assert!(c.validate().unwrap_err().to_string().contains("exec"));
    let c = parse("[anomaly]\nwebhooks = [\"ftp://x\"]\n").unwrap();
    assert!(c.validate().is_err());
}
