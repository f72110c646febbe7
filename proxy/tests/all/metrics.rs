//! Prometheus metrics: the exposition passes `promtool check metrics` and counts what happened.

use crate::support::*;
use std::io::Write;
use std::process::{Command, Stdio};

#[tokio::test]
async fn metrics_pass_promtool_and_count_requests() -> TestResult {
    let (a, b) = (TestUpstream::start("a").await, TestUpstream::start_with("b", Behavior::Status(500)).await);
    let p = Portico::start(&reverse_config(&quoted(&[&a, &b]), "retries = 0")).await;
    let web = p.addr("web").await;
    for _ in 0..10 {
        get(web, "/").await?;
    }
    let scrape = get(p.admin, "/metrics").await?;
    assert_eq!(scrape.status, 200);
    let text = String::from_utf8(scrape.body.to_vec())?;
    for needle in [
        r#"portico_requests_total{class="2xx",listener="web",upstream="app"} 5"#,
        r#"portico_requests_total{class="5xx",listener="web",upstream="app"} 5"#,
        "portico_request_duration_seconds_bucket",
        "portico_active_connections",
        "portico_upstream_endpoint_available",
        r#"portico_connections_total{listener="web"} 10"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    check_with_promtool(&text)?;
    Ok(())
}

/// Runs `promtool check metrics` on an exposition; fails clearly when promtool is missing.
pub fn check_with_promtool(text: &str) -> TestResult {
    let mut promtool = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return Err(
                format!("promtool is needed (Debian package `prometheus`; scripts/test.sh installs it): {e}").into()
            )
        }
    };
    promtool.stdin.take().ok_or("stdin")?.write_all(text.as_bytes())?;
    let out = promtool.wait_with_output()?;
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool rejected the exposition:\n{report}");
    assert!(!report.contains("error"), "{report}");
    Ok(())
}
